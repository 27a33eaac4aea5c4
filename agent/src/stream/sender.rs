//! The sending side of `stream`: numbers batches, keeps them until acked, and resends after
//! failures with exponential backoff and jitter. The collector drops repeats by
//! (agent id, sequence), so resending is always safe.

use std::sync::Arc;
use std::time::Duration;

use ember_proto::v1;
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Code;

use super::buffer::SendBuffer;
use super::client;
use super::collectors::Collectors;
use super::metrics::AgentMetrics;

const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Exponential backoff with "equal jitter": half fixed, half random, so that many agents
/// that lost the same collector do not come back in step.
#[derive(Debug)]
pub struct Backoff {
    current: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { current: BACKOFF_START }
    }
}

impl Backoff {
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(BACKOFF_MAX);
        let half = base / 2;
        half + Duration::from_millis(rand::rng().random_range(0..=half.as_millis() as u64))
    }

    pub fn reset(&mut self) {
        self.current = BACKOFF_START;
    }
}

/// What to do with a batch the collector answered with an error.
fn retry(code: Code) -> bool {
    // Invalid batches would be refused forever; everything else may pass later (a restart,
    // a full disk freed, a token being rotated).
    !matches!(code, Code::InvalidArgument | Code::ResourceExhausted)
}

#[derive(Debug)]
pub struct SenderConfig {
    pub agent_id: String,
    pub buffer_bytes: usize,
    /// After the last batch arrives, how long to keep trying to deliver what is left.
    pub final_flush: Duration,
}

/// Takes a batch from the sampler into the buffer, counting what a full buffer drops.
fn accept(buffer: &mut SendBuffer, config: &SenderConfig, metrics: &AgentMetrics, batch: v1::Batch) {
    let (dropped, samples) = buffer.push(&config.agent_id, batch);
    if dropped > 0 {
        metrics.dropped_samples.inc_by(samples);
        for _ in 0..dropped {
            metrics.batch("dropped");
        }
        tracing::warn!(dropped, samples, "send buffer full (--buffer-mb): dropped the oldest unacknowledged batches");
    }
    metrics.buffer_bytes.set(buffer.bytes() as i64);
}

/// Takes batches from the sampler and delivers them until the sampler is done and every batch
/// is acknowledged, or the final-flush deadline passes. One loop holding all the state
/// (buffer, backoff, deadline, the request in flight), which is why it is long: the
/// branches share that state and each is short.
pub async fn run(
    config: SenderConfig,
    mut collectors: Collectors,
    mut batches: mpsc::Receiver<v1::Batch>,
    metrics: Arc<AgentMetrics>,
) {
    collectors.resolve().await;
    let mut buffer = SendBuffer::new(config.buffer_bytes);
    let mut backoff = Backoff::default();
    let mut next_attempt = Instant::now();
    let mut closed_at: Option<Instant> = None;
    let mut failing = false;
    let (mut acked_batches, mut acked_samples) = (0u64, 0u64);
    loop {
        if closed_at.is_some() && buffer.is_empty() {
            break;
        }
        // Once the sampler is done, nothing may wait past the final-flush deadline: not a
        // backoff delay, not a connection attempt, not a request in flight.
        let deadline = closed_at.map(|t| t + config.final_flush);
        if deadline.is_some_and(|d| Instant::now() >= d) {
            tracing::error!(
                batches = buffer.len(),
                "giving up on {} unacknowledged batches after {:?}: the collector did not take them",
                buffer.len(),
                config.final_flush
            );
            break;
        }
        tokio::select! {
            received = batches.recv(), if closed_at.is_none() => match received {
                Some(batch) => accept(&mut buffer, &config, &metrics, batch),
                None => closed_at = Some(Instant::now()),
            },
            _ = tokio::time::sleep_until(deadline.unwrap_or(next_attempt)), if deadline.is_some_and(|d| d < next_attempt) => {}
            _ = tokio::time::sleep_until(next_attempt), if !buffer.is_empty() => {
                let Some(front) = buffer.front() else { continue };
                let batch = front.batch.clone();
                let (sequence, bytes) = (batch.sequence, front.bytes);
                // While the request is out, the sampler may finish: from then on the request
                // may only take until the final-flush deadline. Batches that arrive meanwhile
                // join the buffer once it is answered, so the one in flight stays its front.
                let (collector, mut client) = collectors.current();
                let collector = collector.to_string();
                let push = client::push(&mut client, batch);
                tokio::pin!(push);
                let mut arrived = Vec::new();
                let pushed = loop {
                    let deadline = closed_at.map(|t| t + config.final_flush);
                    tokio::select! {
                        pushed = &mut push => break Some(pushed),
                        _ = tokio::time::sleep_until(deadline.unwrap_or(next_attempt)), if deadline.is_some() => break None,
                        received = batches.recv(), if closed_at.is_none() => match received {
                            Some(batch) => arrived.push(batch),
                            None => closed_at = Some(Instant::now()),
                        },
                    }
                };
                // The buffer takes what arrived meanwhile only now: taking it earlier could drop
                // the batch in flight from a full buffer, and the ack would then remove another.
                if let Some(pushed) = pushed {
                    match pushed {
                        Ok(ack) => {
                            if failing {
                                tracing::info!(%collector, "collector reachable again; resending what it has not acknowledged");
                                failing = false;
                            }
                            collectors.succeeded();
                            if let Some(done) = buffer.ack_front() {
                                acked_batches += 1;
                                acked_samples += done.samples;
                            }
                            metrics.batch(if ack.duplicate { "duplicate" } else { "acked" });
                            metrics.bytes.inc_by(bytes as u64);
                            metrics.buffer_bytes.set(buffer.bytes() as i64);
                            backoff.reset();
                            next_attempt = Instant::now();
                        }
                        Err(status) if retry(status.code()) => {
                            metrics.reconnects.inc();
                            // The next collector at once; a pause only when all have failed.
                            let all_failed = collectors.failed();
                            let delay = if all_failed { backoff.next_delay() } else { Duration::ZERO };
                            if !failing || status.code() == Code::Unauthenticated {
                                let next = collectors.current().0.to_string();
                                tracing::warn!(sequence, %collector, "collector did not take the batch ({}: {}); retrying in {delay:?} with {next}", status.code(), status.message());
                            }
                            if all_failed {
                                collectors.resolve().await;
                            }
                            failing = true;
                            next_attempt = Instant::now() + delay;
                        }
                        Err(status) => {
                            tracing::error!(sequence, "collector refused the batch ({}: {}); dropping it", status.code(), status.message());
                            let _ = buffer.ack_front();
                            metrics.batch("rejected");
                            next_attempt = Instant::now();
                        }
                    }
                }
                for batch in arrived {
                    accept(&mut buffer, &config, &metrics, batch);
                }
            }
        }
    }
    // A stable line for scripts and tests.
    eprintln!(
        "ember-agent: sent {acked_samples} samples in {acked_batches} acknowledged batches; {} samples dropped (buffer full); {} batches unacknowledged",
        buffer.dropped_samples,
        buffer.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(first >= BACKOFF_START / 2 && first <= BACKOFF_START);
        let mut last = first;
        for _ in 0..20 {
            last = b.next_delay();
        }
        assert!(last >= BACKOFF_MAX / 2 && last <= BACKOFF_MAX);
        b.reset();
        assert!(b.next_delay() <= BACKOFF_START);
    }

    #[test]
    fn only_invalid_batches_are_given_up() {
        assert!(retry(Code::Unavailable));
        assert!(retry(Code::Unauthenticated));
        assert!(retry(Code::DeadlineExceeded));
        assert!(!retry(Code::InvalidArgument));
        assert!(!retry(Code::ResourceExhausted));
    }
}
