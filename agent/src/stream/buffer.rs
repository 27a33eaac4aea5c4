//! Batches waiting for the collector's ack, bounded by bytes: when full, the oldest unacked
//! batch goes first, and the loss is counted.

use std::collections::VecDeque;

use ember_proto::v1::Batch;
use prost::Message;

#[derive(Debug)]
pub struct Pending {
    pub batch: Batch,
    pub bytes: usize,
    pub samples: u64,
}

#[derive(Debug)]
pub struct SendBuffer {
    queue: VecDeque<Pending>,
    bytes: usize,
    max_bytes: usize,
    next_sequence: u64,
    pub dropped_batches: u64,
    pub dropped_samples: u64,
}

fn sample_count(batch: &Batch) -> u64 {
    batch
        .samples
        .iter()
        .map(|b| if b.weight.is_empty() { b.stack.len() as u64 } else { b.weight.iter().map(|&w| u64::from(w)).sum() })
        .sum()
}

impl SendBuffer {
    pub fn new(max_bytes: usize) -> Self {
        Self { queue: VecDeque::new(), bytes: 0, max_bytes, next_sequence: 1, dropped_batches: 0, dropped_samples: 0 }
    }

    /// Numbers the batch and queues it. Returns what had to be dropped to make room.
    pub fn push(&mut self, agent_id: &str, mut batch: Batch) -> (u64, u64) {
        batch.agent_id = agent_id.to_string();
        batch.sequence = self.next_sequence;
        self.next_sequence += 1;
        let bytes = batch.encoded_len();
        let samples = sample_count(&batch);
        self.queue.push_back(Pending { batch, bytes, samples });
        self.bytes += bytes;
        let (mut batches, mut samples) = (0, 0);
        while self.bytes > self.max_bytes && self.queue.len() > 1 {
            if let Some(old) = self.queue.pop_front() {
                self.bytes -= old.bytes;
                batches += 1;
                samples += old.samples;
            }
        }
        self.dropped_batches += batches;
        self.dropped_samples += samples;
        (batches, samples)
    }

    pub fn front(&self) -> Option<&Pending> {
        self.queue.front()
    }

    /// Removes the front batch once the collector has acked it.
    pub fn ack_front(&mut self) -> Option<Pending> {
        let p = self.queue.pop_front()?;
        self.bytes -= p.bytes;
        Some(p)
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_proto::v1::SampleBlock;

    fn batch(samples: usize) -> Batch {
        Batch {
            samples: vec![SampleBlock {
                stack: vec![0; samples],
                tid: vec![1; samples],
                time_delta: vec![7; samples],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn sequences_and_acks() {
        let mut b = SendBuffer::new(1 << 20);
        b.push("a", batch(1));
        b.push("a", batch(1));
        assert_eq!(b.front().map(|p| p.batch.sequence), Some(1));
        assert_eq!(b.ack_front().map(|p| p.batch.sequence), Some(1));
        assert_eq!(b.front().map(|p| (p.batch.sequence, p.batch.agent_id.as_str())), Some((2, "a")));
    }

    #[test]
    fn drops_the_oldest_when_full() {
        let one = batch(100).encoded_len() + 10;
        let mut b = SendBuffer::new(one * 2);
        b.push("a", batch(100));
        b.push("a", batch(100));
        assert_eq!(b.push("a", batch(100)), (1, 100));
        assert_eq!(b.len(), 2);
        assert_eq!(b.front().map(|p| p.batch.sequence), Some(2), "the oldest went");
        assert_eq!((b.dropped_batches, b.dropped_samples), (1, 100));
        assert!(b.bytes() <= one * 2);
    }
}
