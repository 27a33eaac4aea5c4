//! Reading the ring that `ember_monitor` (agent/python) writes in the target:
//! `/tmp/ember-<pid>.ring`, a 64-byte header and 32-byte records. The writer never waits for
//! us; if we fall more than a ring behind, the records in between are lost and counted.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

pub const MAGIC: &[u8; 8] = b"EMBRING1";
pub const HEADER_SIZE: u64 = 64;
pub const RECORD_SIZE: u64 = 32;

const STRING: u8 = 1;
const CREATE: u8 = 2;
const START: u8 = 3;
const STOP: u8 = 4;
const DONE: u8 = 5;
const NAME: u8 = 6;
/// CREATE flag: the name is asyncio's default `Task-N`, and `a` holds N.
const DEFAULT_NAME: u8 = 1;

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Result,
    Exception,
    Cancelled,
}

/// One event of the target's tasks, with CLOCK_MONOTONIC times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEvent {
    Created {
        task: u32,
        time: i64,
        name: String,
        coro: String,
        parent: Option<u32>,
    },
    Renamed {
        task: u32,
        name: String,
    },
    /// The task started running on thread `tid` (pthread id, as Python's threading.get_ident).
    Started {
        task: u32,
        time: i64,
        thread: u64,
        /// When the task became ready to run, if known (event-loop lag is time minus ready).
        ready: Option<i64>,
    },
    /// The task stopped running: it awaits something (`finished` false) or it returned or raised.
    Stopped {
        task: u32,
        time: i64,
        thread: u64,
        finished: bool,
    },
    Done {
        task: u32,
        time: i64,
        outcome: Outcome,
        exception: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0} is not an ember task ring")]
    NotARing(PathBuf),
}

/// Decodes records from a contiguous byte run, carrying string state between calls.
#[derive(Debug, Default)]
pub struct Decoder {
    strings: HashMap<u32, String>,
    /// A string record whose bytes have not all arrived yet.
    pending: Option<(u32, usize, Vec<u8>)>,
    pub unknown_records: u64,
}

fn field<const N: usize>(r: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&r[at..at + N]);
    out
}

impl Decoder {
    fn string(&self, id: u64) -> String {
        u32::try_from(id).ok().and_then(|id| self.strings.get(&id)).cloned().unwrap_or_default()
    }

    /// Decodes whole 32-byte records.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<TaskEvent>) {
        for r in bytes.chunks_exact(RECORD_SIZE as usize) {
            if let Some((id, len, mut data)) = self.pending.take() {
                let take = (len - data.len()).min(r.len());
                data.extend_from_slice(&r[..take]);
                if data.len() == len {
                    self.strings.insert(id, String::from_utf8_lossy(&data).into_owned());
                } else {
                    self.pending = Some((id, len, data));
                }
                continue;
            }
            let kind = r[0];
            let flags = r[1];
            let length = u16::from_le_bytes(field(r, 2)) as usize;
            let task = u32::from_le_bytes(field(r, 4));
            let time = i64::from_le_bytes(field(r, 8));
            let a = i64::from_le_bytes(field(r, 16));
            let b = i64::from_le_bytes(field(r, 24));
            match kind {
                STRING if length == 0 => {
                    self.strings.insert(task, String::new());
                }
                STRING => self.pending = Some((task, length, Vec::with_capacity(length))),
                CREATE => out.push(TaskEvent::Created {
                    task,
                    time,
                    name: if flags & DEFAULT_NAME != 0 {
                        format!("Task-{}", a as u64 & 0xffff_ffff)
                    } else {
                        self.string(a as u64 & 0xffff_ffff)
                    },
                    coro: self.string((a as u64) >> 32),
                    parent: u32::try_from(b).ok().filter(|&p| p != 0),
                }),
                NAME => out.push(TaskEvent::Renamed { task, name: self.string(a as u64) }),
                START => out.push(TaskEvent::Started { task, time, thread: a as u64, ready: None }),
                STOP => out.push(TaskEvent::Stopped { task, time, thread: a as u64, finished: b != 0 }),
                DONE => out.push(TaskEvent::Done {
                    task,
                    time,
                    outcome: match a {
                        1 => Outcome::Exception,
                        2 => Outcome::Cancelled,
                        _ => Outcome::Result,
                    },
                    exception: (a == 1).then(|| self.string(b as u64)),
                }),
                _ => self.unknown_records += 1,
            }
        }
    }
}

/// Tails one target's ring.
#[derive(Debug)]
pub struct RingReader {
    path: PathBuf,
    file: File,
    capacity: u64,
    read_pos: u64,
    decoder: Decoder,
    /// Bytes of records overwritten before we read them.
    pub lost_bytes: u64,
}

impl RingReader {
    pub fn open(path: PathBuf) -> Result<Self, RingError> {
        let file = File::open(&path).map_err(|source| RingError::Io { path: path.clone(), source })?;
        let mut header = [0u8; HEADER_SIZE as usize];
        file.read_exact_at(&mut header, 0).map_err(|source| RingError::Io { path: path.clone(), source })?;
        if &header[..8] != MAGIC {
            return Err(RingError::NotARing(path));
        }
        let capacity = u64::from(u32::from_le_bytes(field(&header, 12)));
        if capacity == 0 || capacity % RECORD_SIZE != 0 {
            return Err(RingError::NotARing(path));
        }
        Ok(Self { path, file, capacity, read_pos: 0, decoder: Decoder::default(), lost_bytes: 0 })
    }

    fn write_pos(&self) -> Result<u64, RingError> {
        let mut pos = [0u8; 8];
        self.file.read_exact_at(&mut pos, 16).map_err(|source| RingError::Io { path: self.path.clone(), source })?;
        Ok(u64::from_le_bytes(pos))
    }

    /// Reads every record written since the last call.
    pub fn poll(&mut self, out: &mut Vec<TaskEvent>) -> Result<(), RingError> {
        let write_pos = self.write_pos()?;
        if write_pos < self.read_pos {
            // The target restarted its ring: start over.
            self.read_pos = 0;
            self.decoder = Decoder::default();
        }
        if write_pos - self.read_pos > self.capacity {
            let skip = write_pos - self.capacity - self.read_pos;
            self.lost_bytes += skip;
            self.read_pos += skip;
            // A string's bytes may have been lost; resynchronise at a record boundary.
            self.decoder.pending = None;
        }
        let mut bytes = vec![0u8; (write_pos - self.read_pos) as usize];
        let mut filled = 0;
        while filled < bytes.len() {
            let at = (self.read_pos + filled as u64) % self.capacity;
            let run = ((self.capacity - at) as usize).min(bytes.len() - filled);
            self.file
                .read_exact_at(&mut bytes[filled..filled + run], HEADER_SIZE + at)
                .map_err(|source| RingError::Io { path: self.path.clone(), source })?;
            filled += run;
        }
        // The writer may have lapped us while we copied; what it overwrote is not trusted.
        let after = self.write_pos()?;
        let overwritten = after.saturating_sub(self.read_pos + self.capacity).min(bytes.len() as u64);
        let usable = &bytes[overwritten as usize..];
        self.lost_bytes += overwritten;
        self.decoder.feed(usable, out);
        self.read_pos = write_pos;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u8, length: u16, task: u32, time: i64, a: i64, b: i64) -> Vec<u8> {
        let mut r = vec![kind, 0];
        r.extend(length.to_le_bytes());
        r.extend(task.to_le_bytes());
        r.extend(time.to_le_bytes());
        r.extend(a.to_le_bytes());
        r.extend(b.to_le_bytes());
        r
    }

    fn string(id: u32, text: &str) -> Vec<u8> {
        let mut r = record(STRING, text.len() as u16, id, 0, 0, 0);
        let mut data = text.as_bytes().to_vec();
        data.resize(text.len().div_ceil(32) * 32, 0);
        r.extend(data);
        r
    }

    #[test]
    fn decodes_a_task_life() {
        let mut bytes = string(1, "worker-0");
        bytes.extend(string(2, "a_coroutine_with_a_long_qualified_name_over_32_bytes"));
        bytes.extend(record(CREATE, 0, 7, 100, 1 | (2 << 32), 3));
        bytes.extend(record(START, 0, 7, 110, 42, 0));
        bytes.extend(record(STOP, 0, 7, 120, 42, 1));
        bytes.extend(string(3, "ValueError"));
        bytes.extend(record(DONE, 0, 7, 121, 1, 3));
        let mut events = Vec::new();
        let mut d = Decoder::default();
        // Feed in two pieces, split inside the long string.
        let (a, b) = bytes.split_at(64);
        d.feed(a, &mut events);
        d.feed(b, &mut events);
        assert_eq!(
            events,
            vec![
                TaskEvent::Created {
                    task: 7,
                    time: 100,
                    name: "worker-0".into(),
                    coro: "a_coroutine_with_a_long_qualified_name_over_32_bytes".into(),
                    parent: Some(3)
                },
                TaskEvent::Started { task: 7, time: 110, thread: 42, ready: None },
                TaskEvent::Stopped { task: 7, time: 120, thread: 42, finished: true },
                TaskEvent::Done {
                    task: 7,
                    time: 121,
                    outcome: Outcome::Exception,
                    exception: Some("ValueError".into())
                },
            ]
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut d = Decoder::default();
        let mut events = Vec::new();
        let junk: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        d.feed(&junk, &mut events);
        d.feed(&junk[..31], &mut events);
    }

    #[test]
    fn a_reader_that_falls_behind_counts_the_loss() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.ring");
        let capacity = 4 * RECORD_SIZE;
        let mut file = vec![0u8; (HEADER_SIZE + capacity) as usize];
        file[..8].copy_from_slice(MAGIC);
        file[12..16].copy_from_slice(&(capacity as u32).to_le_bytes());
        // Six START records written into a four-record ring: the first two were overwritten.
        for i in 0..6u64 {
            let at = (HEADER_SIZE + (i * RECORD_SIZE) % capacity) as usize;
            file[at..at + 32].copy_from_slice(&record(START, 0, i as u32 + 1, i as i64, 9, 0));
        }
        file[16..24].copy_from_slice(&(6 * RECORD_SIZE).to_le_bytes());
        std::fs::write(&path, &file).expect("write ring");
        let mut reader = RingReader::open(path).expect("opens");
        let mut events = Vec::new();
        reader.poll(&mut events).expect("reads");
        let tasks: Vec<u32> =
            events.iter().map(|e| if let TaskEvent::Started { task, .. } = e { *task } else { 0 }).collect();
        assert_eq!(tasks, vec![3, 4, 5, 6]);
        assert_eq!(reader.lost_bytes, 2 * RECORD_SIZE);
    }
}
