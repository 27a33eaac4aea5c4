//! Reading the ring that `ember_monitor` (agent/python) writes in the target (a sealed memfd,
//! see [`super::shared`]): a 64-byte header and 16-byte records, format 2, specified in
//! docs/TASK_RING.md. The writer never waits for us; if we fall more than a ring behind, the
//! records in between are lost and counted. This module turns records into [`TaskEvent`]s;
//! [`super::timeline`] turns those into run slices.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::format::{
    CREATE, CREATED, DEFAULT_NAME, DONE, EXTRA_BITS, EXTRA_SHIFT, FLAGS, FLAGS_BITS, FLAGS_SHIFT, FLAG_NATIVE, ID_BITS,
    ID_SHIFT, KIND_BITS, LAP, LAYOUT, LOOP, LOOP_INFO, MAGIC_WORD, MAX_SLOTS, MAX_STRING, MIN_SLOTS, MODE, NAME,
    NO_EAGER, NO_LAG, OUT_CANCELLED, OUT_EXCEPTION, PUBLISHED, READY, SLOTS, START, STOP, STRING, STRING_DATA, TAG,
    TASK, THREAD, WRITER_PID,
};
pub use super::format::{HEADER_SIZE, MAGIC, RECORD_SIZE, VERSION};
/// A reader racing the writer retries the header this often before calling it "nothing new".
const HEADER_RETRIES: usize = 100;
/// Records the writer may have stored beyond the published position (bare STOPs).
const UNPUBLISHED_MARGIN: u64 = 64;
/// Records copied per read, so a large backlog is read in bounded pieces.
const CHUNK_RECORDS: u64 = 1 << 16;
/// Strings whose bytes are still arriving; more means a broken writer.
const MAX_PENDING_STRINGS: usize = 1024;

/// The bits of a tagged word's field of `bits` bits at `shift`.
const fn field(word: u64, shift: u32, bits: u32) -> u64 {
    (word >> shift) & ((1 << bits) - 1)
}

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
        /// The event loop the task belongs to; its steps run on that loop's thread.
        loop_id: u32,
    },
    Renamed {
        task: u32,
        name: String,
    },
    /// A step began. Task 0 is a watched coroutine running outside any task.
    Started {
        task: u32,
        time: i64,
    },
    /// A step ended; `None` is the task running on the only asyncio thread.
    Stopped {
        task: Option<u32>,
        time: i64,
    },
    /// The task finished; it follows the stop of its last step.
    Done {
        task: u32,
        outcome: Outcome,
        exception: Option<String>,
    },
    /// From `time` on, loop `loop_id` runs on OS thread `thread` (the tid perf samples carry).
    Loop {
        loop_id: u32,
        time: i64,
        thread: u64,
    },
    /// A second thread runs asyncio: from here on every stop names its task.
    MultiThread,
    /// The task became ready to run (its next step was scheduled).
    Ready {
        task: u32,
        time: i64,
    },
    /// Loop `loop_id` is not one of asyncio's: what the monitor cannot follow there.
    LoopInfo {
        loop_id: u32,
        info: LoopInfo,
    },
}

/// A loop of a class other than asyncio's (uvloop), as the monitor describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopInfo {
    /// `module.qualname` of the loop's class.
    pub class: String,
    /// Its tasks carry no ready times (no event-loop lag).
    pub no_lag: bool,
    /// The eager first step of a task built with `asyncio.Task()` is not seen there.
    pub no_eager: bool,
}

impl std::fmt::Display for LoopInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: tasks recorded", self.class)?;
        if self.no_lag {
            write!(f, "; event-loop lag not recorded")?;
        }
        if self.no_eager {
            write!(f, "; eager first steps of tasks built with asyncio.Task() charged to their parent")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0} is not an ember task ring (format 2)")]
    NotARing(PathBuf),
    #[error("{0} is not a regular file")]
    NotAFile(PathBuf),
    #[error("{0} is not sealed against resizing, so it is not a ring the monitor made")]
    NotSealed(PathBuf),
    #[error("{0} was made by another process (a parent this one was forked from)")]
    OtherWriter(PathBuf),
}

/// Decodes records, carrying strings and half-read blocks between calls.
#[derive(Debug, Default)]
pub struct Decoder {
    strings: HashMap<u32, String>,
    /// Strings whose bytes have not all arrived: id → (length, bytes so far).
    pending_strings: HashMap<u32, (usize, Vec<u8>)>,
    /// A CREATE waiting for its TASK record: (task, time, default name, loop).
    pending_create: Option<(u32, i64, bool, u32)>,
    /// A LOOP waiting for its THREAD record: (loop, time).
    pending_loop: Option<(u32, i64)>,
    pub unknown_records: u64,
}

fn word(bytes: &[u8], at: usize) -> u64 {
    let mut out = [0u8; 8];
    out.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(out)
}

impl Decoder {
    fn string(&self, id: u64) -> String {
        u32::try_from(id).ok().and_then(|id| self.strings.get(&id)).cloned().unwrap_or_default()
    }

    /// Records were lost: blocks whose head may be gone are dropped.
    pub fn lost(&mut self) {
        self.pending_strings.clear();
        self.pending_create = None;
        self.pending_loop = None;
    }

    /// Decodes whole 16-byte records.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<TaskEvent>) {
        for r in bytes.chunks_exact(RECORD_SIZE as usize) {
            let (info, value) = (word(r, 0), word(r, 8));
            if info < TAG {
                // A bare STOP: the running task yielded at time `info`; the value is stale.
                self.pending_create = None;
                self.pending_loop = None;
                out.push(TaskEvent::Stopped { task: None, time: info as i64 });
                continue;
            }
            let kind = field(info, 0, KIND_BITS);
            let flags = field(info, FLAGS_SHIFT, FLAGS_BITS);
            let id = field(info, ID_SHIFT, ID_BITS) as u32;
            let time = value as i64;
            if kind != TASK {
                self.pending_create = None;
            }
            if kind != THREAD {
                self.pending_loop = None;
            }
            match kind {
                START => out.push(TaskEvent::Started { task: id, time }),
                STOP => out.push(TaskEvent::Stopped { task: (id != 0).then_some(id), time }),
                DONE => out.push(TaskEvent::Done {
                    task: id,
                    outcome: match flags {
                        OUT_EXCEPTION => Outcome::Exception,
                        OUT_CANCELLED => Outcome::Cancelled,
                        _ => Outcome::Result,
                    },
                    exception: (flags == OUT_EXCEPTION).then(|| self.string(value)),
                }),
                CREATE => {
                    let loop_id = field(info, EXTRA_SHIFT, EXTRA_BITS) as u32;
                    self.pending_create = Some((id, time, flags & DEFAULT_NAME != 0, loop_id));
                }
                TASK => {
                    if let Some((task, time, default_name, loop_id)) = self.pending_create.take() {
                        let name = value & 0xffff_ffff;
                        out.push(TaskEvent::Created {
                            task,
                            time,
                            name: if default_name { format!("Task-{name}") } else { self.string(name) },
                            coro: self.string(value >> 32),
                            parent: (id != 0).then_some(id),
                            loop_id,
                        });
                    }
                }
                NAME => out.push(TaskEvent::Renamed { task: id, name: self.string(value) }),
                STRING if value == 0 => {
                    self.strings.insert(id, String::new());
                }
                STRING if value <= MAX_STRING => {
                    if self.pending_strings.len() >= MAX_PENDING_STRINGS {
                        self.pending_strings.clear();
                    }
                    self.pending_strings.insert(id, (value as usize, Vec::with_capacity(value as usize)));
                }
                STRING_DATA => {
                    if let Some((len, data)) = self.pending_strings.get_mut(&id) {
                        data.extend_from_slice(&value.to_le_bytes());
                        if data.len() >= *len {
                            let text = String::from_utf8_lossy(&data[..*len]).into_owned();
                            self.pending_strings.remove(&id);
                            self.strings.insert(id, text);
                        }
                    }
                }
                LOOP => self.pending_loop = Some((id, time)),
                THREAD => {
                    if let Some((loop_id, time)) = self.pending_loop.take().filter(|(l, _)| *l == id) {
                        out.push(TaskEvent::Loop { loop_id, time, thread: value });
                    }
                }
                MODE if value == 1 => out.push(TaskEvent::MultiThread),
                READY => out.push(TaskEvent::Ready { task: id, time }),
                LOOP_INFO => out.push(TaskEvent::LoopInfo {
                    loop_id: id,
                    info: LoopInfo {
                        class: self.string(value),
                        no_lag: flags & NO_LAG != 0,
                        no_eager: flags & NO_EAGER != 0,
                    },
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
    slots: u64,
    /// The ring's creation time; a new one means the target restarted its ring.
    created: u64,
    /// Records read so far (lap × slots + slot).
    read_pos: u64,
    decoder: Decoder,
    /// Records overwritten before we read them.
    pub lost_records: u64,
}

fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> RingError + '_ {
    move |source| RingError::Io { path: path.to_path_buf(), source }
}

impl RingReader {
    /// Opens a ring. The path comes from the target's file system, so a FIFO (which would
    /// block the open) or a symlink is refused rather than followed.
    pub fn open(path: PathBuf) -> Result<Self, RingError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(io(&path))?;
        Self::from_file(file, path)
    }

    /// Reads a ring from an open descriptor; `path` names it in errors.
    pub fn from_file(file: File, path: PathBuf) -> Result<Self, RingError> {
        if !file.metadata().map_err(io(&path))?.is_file() {
            return Err(RingError::NotAFile(path));
        }
        let mut reader =
            Self { path, file, slots: 0, created: 0, read_pos: 0, decoder: Decoder::default(), lost_records: 0 };
        reader.read_layout()?;
        Ok(reader)
    }

    fn header(&self) -> Result<[u64; 8], RingError> {
        let mut bytes = [0u8; HEADER_SIZE as usize];
        self.file.read_exact_at(&mut bytes, 0).map_err(io(&self.path))?;
        Ok(std::array::from_fn(|i| word(&bytes, i * 8)))
    }

    fn read_layout(&mut self) -> Result<(), RingError> {
        let h = self.header()?;
        let layout_ok = h[MAGIC_WORD].to_le_bytes() == *MAGIC
            && h[LAYOUT] & 0xffff_ffff == VERSION
            && h[LAYOUT] >> 32 == RECORD_SIZE
            && (MIN_SLOTS..=MAX_SLOTS).contains(&h[SLOTS])
            && h[SLOTS].is_power_of_two();
        let file_len = self.file.metadata().map_err(io(&self.path))?.len();
        if !layout_ok || file_len < HEADER_SIZE + h[SLOTS] * RECORD_SIZE {
            return Err(RingError::NotARing(self.path.clone()));
        }
        self.slots = h[SLOTS];
        self.created = h[CREATED];
        self.read_pos = 0;
        self.decoder = Decoder::default();
        Ok(())
    }

    /// Records written and published so far, or `None` if the ring was recreated. The header
    /// is read seqlock-style: lap, published slot, then the lap again.
    fn write_pos(&self) -> Result<Option<u64>, RingError> {
        for _ in 0..HEADER_RETRIES {
            let h = self.header()?;
            if h[CREATED] != self.created {
                return Ok(None);
            }
            let mut lap = [0u8; 8];
            self.file.read_exact_at(&mut lap, (LAP * 8) as u64).map_err(io(&self.path))?;
            let (lap1, lap2, published) = (h[LAP], u64::from_le_bytes(lap), h[PUBLISHED] as i64);
            if lap1 == lap2 && (-1..self.slots as i64).contains(&published) {
                return Ok(Some(lap1.saturating_mul(self.slots).saturating_add((published + 1) as u64)));
            }
        }
        // The writer kept moving under us; try again at the next poll.
        Ok(Some(self.read_pos))
    }

    /// The pid of the process that wrote the header, as it sees itself.
    pub fn writer_pid(&self) -> Result<u64, RingError> {
        Ok(self.header()?[WRITER_PID])
    }

    /// Whether the monitor writes with its native fast path (`_ember_accel`) rather than in
    /// pure Python.
    pub fn native(&self) -> Result<bool, RingError> {
        Ok(self.header()?[FLAGS] & FLAG_NATIVE != 0)
    }

    /// Reads every record published since the last call.
    pub fn poll(&mut self, out: &mut Vec<TaskEvent>) -> Result<(), RingError> {
        let pos = match self.write_pos()? {
            Some(pos) => pos,
            None => {
                // The target started a new ring (a new ember_monitor.start()): start over.
                self.read_layout()?;
                self.write_pos()?.unwrap_or(0)
            }
        };
        // A position that went back for a moment (the writer wrapping around) is "nothing new".
        if pos <= self.read_pos {
            return Ok(());
        }
        // The writer may be a few unpublished records past `pos`: keep a margin from its lap.
        let window = self.slots - UNPUBLISHED_MARGIN;
        if pos - self.read_pos > window {
            let skip = pos - window - self.read_pos;
            self.lost_records += skip;
            self.read_pos += skip;
            self.decoder.lost();
        }
        while self.read_pos < pos {
            let count = (pos - self.read_pos).min(CHUNK_RECORDS);
            let mut bytes = vec![0u8; (count * RECORD_SIZE) as usize];
            let mut filled = 0;
            while filled < count {
                let slot = (self.read_pos + filled) % self.slots;
                let run = (self.slots - slot).min(count - filled);
                let range = (filled * RECORD_SIZE) as usize..((filled + run) * RECORD_SIZE) as usize;
                self.file.read_exact_at(&mut bytes[range], HEADER_SIZE + slot * RECORD_SIZE).map_err(io(&self.path))?;
                filled += run;
            }
            // The writer may have lapped us while we copied: what it overwrote is not trusted.
            let after = self.write_pos()?.unwrap_or(pos).max(pos);
            let overwritten = (after + UNPUBLISHED_MARGIN).saturating_sub(self.read_pos + self.slots).min(count);
            if overwritten > 0 {
                self.lost_records += overwritten;
                self.decoder.lost();
            }
            self.decoder.feed(&bytes[(overwritten * RECORD_SIZE) as usize..], out);
            self.read_pos += count;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tagged(kind: u64, flags: u64, id: u32, extra: u64, value: u64) -> Vec<u8> {
        let info = TAG | kind | flags << 8 | u64::from(id) << 16 | extra << 48;
        [info.to_le_bytes(), value.to_le_bytes()].concat()
    }

    fn string(id: u32, text: &str) -> Vec<u8> {
        let mut out = tagged(STRING, 0, id, 0, text.len() as u64);
        for chunk in text.as_bytes().chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            out.extend(tagged(STRING_DATA, 0, id, 0, u64::from_le_bytes(word)));
        }
        out
    }

    #[test]
    fn decodes_a_task_life() {
        let mut bytes = string(1, "worker-0");
        bytes.extend(string(2, "a_coroutine_with_a_long_qualified_name_over_8_bytes"));
        bytes.extend(tagged(LOOP, 0, 1, 0, 90));
        bytes.extend(tagged(THREAD, 0, 1, 0, 4242));
        bytes.extend(tagged(CREATE, 0, 7, 1, 100));
        bytes.extend(tagged(TASK, 0, 3, 0, 1 | 2 << 32));
        bytes.extend(tagged(CREATE, DEFAULT_NAME, 8, 1, 101));
        bytes.extend(tagged(TASK, 0, 0, 0, 12 | 2 << 32));
        bytes.extend(tagged(READY, 0, 7, 0, 105));
        bytes.extend(tagged(START, 0, 7, 0, 110));
        bytes.extend([115u64.to_le_bytes(), 0u64.to_le_bytes()].concat()); // bare STOP
        bytes.extend(string(3, "ValueError"));
        bytes.extend(tagged(STOP, 2, 7, 0, 120));
        bytes.extend(tagged(DONE, 1, 7, 0, 3));
        bytes.extend(tagged(MODE, 0, 0, 0, 1));
        let mut events = Vec::new();
        let mut d = Decoder::default();
        // Feed in two pieces, split inside the long string.
        let (a, b) = bytes.split_at(16 * 5);
        d.feed(a, &mut events);
        d.feed(b, &mut events);
        let coro = "a_coroutine_with_a_long_qualified_name_over_8_bytes".to_string();
        assert_eq!(
            events,
            vec![
                TaskEvent::Loop { loop_id: 1, time: 90, thread: 4242 },
                TaskEvent::Created {
                    task: 7,
                    time: 100,
                    name: "worker-0".into(),
                    coro: coro.clone(),
                    parent: Some(3),
                    loop_id: 1
                },
                TaskEvent::Created { task: 8, time: 101, name: "Task-12".into(), coro, parent: None, loop_id: 1 },
                TaskEvent::Ready { task: 7, time: 105 },
                TaskEvent::Started { task: 7, time: 110 },
                TaskEvent::Stopped { task: None, time: 115 },
                TaskEvent::Stopped { task: Some(7), time: 120 },
                TaskEvent::Done { task: 7, outcome: Outcome::Exception, exception: Some("ValueError".into()) },
                TaskEvent::MultiThread,
            ]
        );
    }

    #[test]
    fn halves_of_blocks_after_a_loss_are_dropped() {
        let mut d = Decoder::default();
        let mut events = Vec::new();
        d.feed(&tagged(CREATE, 0, 7, 0, 100), &mut events);
        d.lost();
        d.feed(&tagged(TASK, 0, 0, 0, 0), &mut events);
        d.feed(&tagged(THREAD, 0, 1, 0, 4242), &mut events);
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn garbage_never_panics() {
        let mut d = Decoder::default();
        let mut events = Vec::new();
        let junk: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        d.feed(&junk, &mut events);
        d.feed(&junk[..15], &mut events);
    }

    fn ring_file(slots: u64, records: &[Vec<u8>], lap: u64, published: i64) -> Vec<u8> {
        let mut file = vec![0u8; (HEADER_SIZE + slots * RECORD_SIZE) as usize];
        let header: [u64; 8] =
            [u64::from_le_bytes(*MAGIC), VERSION | RECORD_SIZE << 32, slots, published as u64, lap, 1, 1, 777];
        for (i, w) in header.iter().enumerate() {
            file[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        for (n, r) in records.iter().enumerate() {
            let at = (HEADER_SIZE + (n as u64 % slots) * RECORD_SIZE) as usize;
            file[at..at + 16].copy_from_slice(r);
        }
        file
    }

    #[test]
    fn a_reader_that_falls_behind_counts_the_loss() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.ring");
        // 200 START records written into a 128-slot ring: the first 72 were overwritten, and
        // the reader keeps a 64-record margin from the writer, so 136 are lost.
        let records: Vec<Vec<u8>> = (0..200u32).map(|i| tagged(START, 0, i + 1, 0, u64::from(i))).collect();
        std::fs::write(&path, ring_file(128, &records, 1, 71)).expect("write ring");
        let mut reader = RingReader::open(path.clone()).expect("opens");
        let mut events = Vec::new();
        reader.poll(&mut events).expect("reads");
        let tasks: Vec<u32> =
            events.iter().map(|e| if let TaskEvent::Started { task, .. } = e { *task } else { 0 }).collect();
        assert_eq!(tasks, (137..=200).collect::<Vec<u32>>());
        assert_eq!(reader.lost_records, 136);
        // Nothing new: nothing read twice.
        events.clear();
        reader.poll(&mut events).expect("reads");
        assert!(events.is_empty());
    }

    #[test]
    fn rejects_what_is_not_a_ring() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.ring");
        let good = ring_file(64, &[], 0, -1);
        let mut bad = good.clone();
        bad[0] = b'X';
        std::fs::write(&path, &bad).expect("write");
        assert!(matches!(RingReader::open(path.clone()), Err(RingError::NotARing(_))));
        // A header claiming more slots than the file holds, or absurdly many.
        for slots in [128u64, 1 << 40] {
            let mut big = good.clone();
            big[16..24].copy_from_slice(&slots.to_le_bytes());
            std::fs::write(&path, &big).expect("write");
            assert!(matches!(RingReader::open(path.clone()), Err(RingError::NotARing(_))), "{slots}");
        }
        std::fs::write(&path, &good[..10]).expect("write");
        assert!(matches!(RingReader::open(path.clone()), Err(RingError::Io { .. })));
        // A FIFO would block a plain open; a symlink is not followed.
        let fifo = dir.path().join("fifo.ring");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        assert!(matches!(RingReader::open(fifo), Err(RingError::NotAFile(_))));
        std::fs::write(&path, &good).expect("write");
        let link = dir.path().join("link.ring");
        std::os::unix::fs::symlink(&path, &link).expect("symlink");
        assert!(RingReader::open(link).is_err());
    }
}
