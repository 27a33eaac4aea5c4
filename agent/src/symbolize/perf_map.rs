//! CPython's perf map (`/tmp/perf-<pid>.map`): parsing, incremental reading, and the
//! address table built from it.
//!
//! Facts this code relies on (see ARCHITECTURE.md): the file is appended to, one line per
//! code object; it is never truncated or deleted, so a reused PID appends to stale content;
//! re-activating the trampoline names the same function again at a new address; arenas are
//! never freed, so an address is never reused within one process.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime};

use crate::intern::{Interner, StrId};
use crate::process::target_file::{self, Owner, TargetFileError};
use crate::process::Pid;
use crate::unwind::trampoline::TrampolineKind;

/// One parsed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerfMapLine<'a> {
    pub start: u64,
    pub size: u64,
    pub name: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("missing fields")]
    MissingFields,
    #[error("bad hex address")]
    BadAddress,
    #[error("bad hex size")]
    BadSize,
    #[error("zero size or range overflows")]
    BadRange,
    #[error("line too long")]
    TooLong,
}

/// Parses `<hex addr> <hex size> <name>`; the name may contain spaces.
pub fn parse_line(line: &str) -> Result<PerfMapLine<'_>, LineError> {
    let line = line.trim_end_matches(['\r', '\n']);
    let mut parts = line.splitn(3, ' ');
    let addr = parts.next().filter(|s| !s.is_empty()).ok_or(LineError::MissingFields)?;
    let size = parts.next().filter(|s| !s.is_empty()).ok_or(LineError::MissingFields)?;
    let name = parts.next().filter(|s| !s.is_empty()).ok_or(LineError::MissingFields)?;
    let start = u64::from_str_radix(addr.trim_start_matches("0x"), 16).map_err(|_| LineError::BadAddress)?;
    let size = u64::from_str_radix(size.trim_start_matches("0x"), 16).map_err(|_| LineError::BadSize)?;
    if size == 0 || start.checked_add(size).is_none() {
        return Err(LineError::BadRange);
    }
    Ok(PerfMapLine { start, size, name })
}

/// Splits CPython's `py::<qualname>:<filename>` into its parts. A qualname never contains
/// ':', so the first ':' after the prefix separates them.
pub fn split_python_name(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix("py::")?;
    match rest.split_once(':') {
        Some((qualname, filename)) => Some((qualname, filename)),
        None => Some((rest, "")),
    }
}

/// The display text of a perf-map symbol: `qualname (filename)` for Python code.
pub fn display_name(name: &str) -> String {
    match split_python_name(name) {
        Some((qualname, "")) => qualname.to_string(),
        Some((qualname, filename)) => format!("{qualname} ({filename})"),
        None => name.to_string(),
    }
}

/// An entry of the address table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapEntry {
    pub end: u64,
    /// The raw perf-map name, interned.
    pub name: StrId,
    /// Set once the bytes at this address have been checked against the known trampolines.
    pub trampoline: Option<TrampolineKind>,
    pub verified: bool,
}

/// Address → name table of one process. Later lines win over earlier overlapping ones, so a
/// reused PID's stale lines are replaced by the new process's own.
#[derive(Debug, Clone, Default)]
pub struct PerfMapTable {
    entries: BTreeMap<u64, MapEntry>,
}

impl PerfMapTable {
    pub fn insert(&mut self, start: u64, size: u64, name: StrId) {
        let end = start.saturating_add(size);
        // Drop every entry that overlaps [start, end).
        let overlapping: Vec<u64> =
            self.entries.range(..end).rev().take_while(|(_, e)| e.end > start).map(|(&s, _)| s).collect();
        for s in overlapping {
            self.entries.remove(&s);
        }
        self.entries.insert(start, MapEntry { end, name, trampoline: None, verified: false });
    }

    pub fn lookup(&self, addr: u64) -> Option<(u64, &MapEntry)> {
        let (&start, entry) = self.entries.range(..=addr).next_back()?;
        (addr < entry.end).then_some((start, entry))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries whose bytes have not been checked yet.
    pub fn unverified(&self) -> impl Iterator<Item = (u64, &MapEntry)> {
        self.entries.iter().filter(|(_, e)| !e.verified).map(|(&s, e)| (s, e))
    }

    pub fn set_trampoline(&mut self, start: u64, kind: Option<TrampolineKind>) {
        if let Some(entry) = self.entries.get_mut(&start) {
            entry.trampoline = kind;
            entry.verified = true;
        }
    }

    /// The start and variant of the verified trampoline containing `addr`.
    pub fn trampoline_at(&self, addr: u64) -> Option<(u64, TrampolineKind)> {
        let (start, entry) = self.lookup(addr)?;
        entry.trampoline.map(|kind| (start, kind))
    }
}

/// Most bytes one poll reads: a map that grows faster is read over several polls.
const MAX_READ_PER_POLL: u64 = 4 << 20;
/// Most bytes read from one process's map. CPython writes one ~100-byte line per code
/// object, so this is millions of functions; a map past it is not CPython's.
pub const MAX_MAP_BYTES: u64 = 256 << 20;
/// Most entries one process's table may hold: far more functions than any program has, and
/// a bound on memory however short a hostile map's lines are.
pub const MAX_MAP_ENTRIES: usize = 1 << 21;
/// Longest line kept: a qualname plus a file path (PATH_MAX), with room to spare.
const MAX_LINE: usize = 16 << 10;

/// Where a perf map is, and who may own it: inside the target's root, opened by
/// [`target_file`](crate::process::target_file) (no links, no FIFOs, owned by the target).
#[derive(Debug, Clone)]
pub struct MapLocation {
    pub pid: Pid,
    /// The file name, with the pid the target sees: `perf-<nspid>.map`.
    pub file_name: String,
    pub owner: Owner,
}

impl MapLocation {
    pub fn open(&self) -> Result<File, TargetFileError> {
        target_file::open_in_root(self.pid, &["tmp", &self.file_name], &self.owner)
    }

    /// The path as the user would look for it, for messages.
    pub fn display(&self) -> String {
        format!("/proc/{}/root/tmp/{}", self.pid, self.file_name)
    }
}

/// Reads a perf map as it grows: only complete lines are consumed, a partial last line waits
/// for the next read. The file is hostile input: reads are bounded per poll and in total.
#[derive(Debug)]
pub struct PerfMapReader {
    location: Option<MapLocation>,
    file: Option<File>,
    offset: u64,
    partial: Vec<u8>,
    /// The current line grew past [`MAX_LINE`]: drop bytes up to the next newline.
    skipping_line: bool,
    /// Why the map was last refused, so each reason is logged once.
    refused: Option<String>,
    /// The map reached [`MAX_MAP_BYTES`]; nothing more is read.
    pub capped: bool,
    pub corrupt_lines: u64,
    pub lines_read: u64,
    /// What an earlier process with this PID left in the map, skipped if the map opened is
    /// that same file.
    stale: Option<StaleMap>,
    /// When the process started: a map last written before then was left by an earlier
    /// process with this PID (CPython never deletes its map), and what it holds is stale.
    process_start: Option<SystemTime>,
}

/// How much older than the process a map must be to be taken for an earlier process's: the
/// start time is good to a tick and file times to the kernel's coarse clock, and the wall
/// clock may have been slewed since. A PID is not reused within a second.
const STALE_MARGIN: Duration = Duration::from_secs(1);

/// A perf map as it was before a launched command started: its file and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleMap {
    device: u64,
    inode: u64,
    len: u64,
}

impl PerfMapReader {
    pub fn new(location: MapLocation) -> Self {
        Self::with_location(Some(location))
    }

    /// A reader fed only through [`PerfMapReader::consume`] (tests, replay).
    pub fn detached() -> Self {
        Self::with_location(None)
    }

    fn with_location(location: Option<MapLocation>) -> Self {
        Self {
            location,
            file: None,
            offset: 0,
            partial: Vec::new(),
            skipping_line: false,
            refused: None,
            capped: false,
            corrupt_lines: 0,
            lines_read: 0,
            stale: None,
            process_start: None,
        }
    }

    /// The process started at `start`: a map not written since then is an earlier process's.
    pub fn set_process_start(&mut self, start: SystemTime) {
        self.process_start = Some(start);
    }

    pub fn owner(&self) -> Option<&Owner> {
        self.location.as_ref().map(|l| &l.owner)
    }

    pub fn display_path(&self) -> String {
        self.location.as_ref().map_or_else(String::new, MapLocation::display)
    }

    /// Whether the process has written a map of its own: its trampoline is, or was, on.
    pub fn has_own_map(&self) -> bool {
        let Some(file) = &self.file else { return false };
        match self.stale {
            Some(stale) => file.metadata().is_ok_and(|m| m.len() > stale.len),
            None => true,
        }
    }

    /// Opens the file if it exists and may be read. Keeping the descriptor lets ember finish
    /// reading after the target exits and its `/proc/PID/root` disappears.
    pub fn try_open(&mut self) -> bool {
        if self.file.is_some() {
            return true;
        }
        let Some(location) = &self.location else { return false };
        match location.open() {
            Ok(file) => {
                let meta = file.metadata().ok();
                if self.stale.is_none() {
                    self.stale = meta.as_ref().and_then(|m| self.left_before_start(m));
                }
                // The command may have changed its root (chroot, a container) since the stale
                // length was taken: only that very file has a stale start.
                self.stale =
                    self.stale.filter(|s| meta.as_ref().is_some_and(|m| (m.dev(), m.ino()) == (s.device, s.inode)));
                if let Some(stale) = self.stale {
                    self.offset = self.offset.max(stale.len);
                }
                self.file = Some(file);
            }
            Err(TargetFileError::Missing) => {}
            Err(e) => {
                let reason = e.to_string();
                if self.refused.as_deref() != Some(reason.as_str()) {
                    tracing::warn!(pid = %location.pid, "not reading the perf map {}: {reason}", location.display());
                    self.refused = Some(reason);
                }
            }
        }
        self.file.is_some()
    }

    /// The whole map, if it was last written well before the process started.
    fn left_before_start(&self, meta: &std::fs::Metadata) -> Option<StaleMap> {
        let written = meta.modified().ok()?;
        let start = self.process_start?;
        if written + STALE_MARGIN >= start {
            return None;
        }
        if let Some(location) = &self.location {
            tracing::info!(
                pid = %location.pid,
                "skipping what {} holds: it was written before the process started, by an earlier process with its PID",
                location.display()
            );
        }
        Some(StaleMap { device: meta.dev(), inode: meta.ino(), len: meta.len() })
    }

    /// The map as it is now, if it exists and may be read: what a process that takes this PID
    /// later must not read as its own.
    pub fn stale_part(&mut self) -> Option<StaleMap> {
        if !self.try_open() {
            return None;
        }
        let meta = self.file.as_ref()?.metadata().ok()?;
        Some(StaleMap { device: meta.dev(), inode: meta.ino(), len: meta.len() })
    }

    /// Skips `stale` if the map this reader opens is the same file.
    pub fn skip_stale(&mut self, stale: StaleMap) {
        self.stale = Some(stale);
    }

    /// Reads new complete lines into `table`. Returns how many entries were added.
    pub fn poll(&mut self, table: &mut PerfMapTable, strings: &mut Interner) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        if self.capped || !self.try_open() {
            return Ok(0);
        }
        let Some(file) = self.file.as_ref() else { return Ok(0) };
        let len = file.metadata()?.len();
        if len <= self.offset {
            return Ok(0);
        }
        if self.offset >= MAX_MAP_BYTES {
            self.capped = true;
            tracing::warn!(
                "the perf map {} passed {} MiB; ignoring the rest (CPython writes ~100 bytes per function)",
                self.display_path(),
                MAX_MAP_BYTES >> 20
            );
            return Ok(0);
        }
        let want = (len - self.offset).min(MAX_READ_PER_POLL).min(MAX_MAP_BYTES - self.offset);
        let mut chunk = vec![0u8; want as usize];
        let mut filled = 0;
        while filled < chunk.len() {
            match file.read_at(&mut chunk[filled..], self.offset + filled as u64) {
                Ok(0) => break, // truncated under us
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        chunk.truncate(filled);
        self.offset += filled as u64;
        Ok(self.consume(&chunk, table, strings))
    }

    /// Reads the whole map as it is now, poll by poll (each bounded), up to [`MAX_MAP_BYTES`].
    /// Returns how many entries were added.
    pub fn read_to_end(&mut self, table: &mut PerfMapTable, strings: &mut Interner) -> io::Result<usize> {
        let mut added = 0;
        loop {
            let before = self.offset;
            added += self.poll(table, strings)?;
            if self.offset == before {
                return Ok(added);
            }
        }
    }

    /// Parses bytes that follow what was consumed before. Split from `poll` so it can be
    /// tested and fuzzed on byte strings.
    pub fn consume(&mut self, bytes: &[u8], table: &mut PerfMapTable, strings: &mut Interner) -> usize {
        let mut added = 0;
        let mut rest = bytes;
        while !rest.is_empty() {
            let newline = rest.iter().position(|&b| b == b'\n');
            let (piece, ended) = match newline {
                Some(i) => (&rest[..i], true),
                None => (rest, false),
            };
            rest = newline.map_or(&[][..], |i| &rest[i + 1..]);
            if self.skipping_line {
                self.skipping_line = !ended;
                continue;
            }
            if self.partial.len() + piece.len() > MAX_LINE {
                self.partial.clear();
                self.skipping_line = !ended;
                self.corrupt(b"", LineError::TooLong);
                continue;
            }
            if !ended {
                self.partial.extend_from_slice(piece);
                break;
            }
            let line = if self.partial.is_empty() {
                piece.to_vec()
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(piece);
                line
            };
            if line.is_empty() {
                continue;
            }
            self.lines_read += 1;
            match std::str::from_utf8(&line).map_err(|_| LineError::MissingFields).and_then(parse_line) {
                Ok(parsed) if table.len() < MAX_MAP_ENTRIES => {
                    let name = strings.intern(parsed.name);
                    table.insert(parsed.start, parsed.size, name);
                    added += 1;
                }
                Ok(_) => {
                    if !self.capped {
                        tracing::warn!(
                            "the perf map {} names more than {MAX_MAP_ENTRIES} functions; ignoring the rest",
                            self.display_path()
                        );
                    }
                    self.capped = true;
                }
                Err(e) => self.corrupt(&line, e),
            }
        }
        added
    }

    fn corrupt(&mut self, line: &[u8], e: LineError) {
        if self.corrupt_lines == 0 {
            tracing::warn!(
                "skipping corrupt perf-map line in {} ({e}): \"{}\"; further corrupt lines are only counted",
                self.display_path(),
                target_file::excerpt(line)
            );
        }
        self.corrupt_lines += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpython_lines() {
        let l = parse_line("7f64e41ac7c7 b py::K.meth:/app/x.py").expect("valid line");
        assert_eq!((l.start, l.size, l.name), (0x7f64e41ac7c7, 11, "py::K.meth:/app/x.py"));
        let l = parse_line("7f64e41ac7d2 f py::<module>:<frozen importlib._bootstrap>").expect("valid");
        assert_eq!(l.name, "py::<module>:<frozen importlib._bootstrap>");
        assert_eq!(split_python_name(l.name), Some(("<module>", "<frozen importlib._bootstrap>")));
        assert_eq!(display_name("py::outer.<locals>.inner:/a b/c.py"), "outer.<locals>.inner (/a b/c.py)");
        assert_eq!(display_name("some_jit_fn"), "some_jit_fn");
    }

    #[test]
    fn rejects_corrupt_lines() {
        assert_eq!(parse_line(""), Err(LineError::MissingFields));
        assert_eq!(parse_line("7f00 b"), Err(LineError::MissingFields));
        assert_eq!(parse_line("zz b py::f:x"), Err(LineError::BadAddress));
        assert_eq!(parse_line("7f00 q py::f:x"), Err(LineError::BadSize));
        assert_eq!(parse_line("7f00 0 py::f:x"), Err(LineError::BadRange));
        assert_eq!(parse_line("ffffffffffffffff 2 py::f:x"), Err(LineError::BadRange));
    }

    #[test]
    fn partial_last_line_waits_for_the_rest() {
        let mut reader = PerfMapReader::detached();
        let mut table = PerfMapTable::default();
        let mut strings = Interner::default();
        assert_eq!(reader.consume(b"1000 b py::a:x.py\n2000 b py::b", &mut table, &mut strings), 1);
        assert!(table.lookup(0x2000).is_none());
        assert_eq!(reader.consume(b":x.py\n", &mut table, &mut strings), 1);
        let (_, e) = table.lookup(0x2005).expect("entry");
        assert_eq!(strings.get(e.name), "py::b:x.py");
    }

    #[test]
    fn corrupt_lines_are_counted_and_skipped() {
        let mut reader = PerfMapReader::detached();
        let mut table = PerfMapTable::default();
        let mut strings = Interner::default();
        let added =
            reader.consume(b"garbage\n1000 b py::a:x.py\n\xff\xfe 1 2\n3000 0 py::c:y\n", &mut table, &mut strings);
        assert_eq!(added, 1);
        assert_eq!(reader.corrupt_lines, 3);
        assert!(table.lookup(0x1000).is_some());
    }

    #[test]
    fn an_endless_line_is_dropped_without_growing() {
        let mut reader = PerfMapReader::detached();
        let mut table = PerfMapTable::default();
        let mut strings = Interner::default();
        // A sparse file reads as zeros without a newline: never more than one line is kept.
        for _ in 0..64 {
            assert_eq!(reader.consume(&[0u8; 4096], &mut table, &mut strings), 0);
            assert!(reader.partial.len() <= MAX_LINE);
        }
        assert_eq!(reader.corrupt_lines, 1, "one overlong line");
        // The line ends; the next one is read again.
        assert_eq!(reader.consume(b"\n1000 b py::a:x.py\n", &mut table, &mut strings), 1);
        assert!(table.lookup(0x1000).is_some());
    }

    #[test]
    fn later_lines_replace_overlapping_stale_ones() {
        let mut table = PerfMapTable::default();
        let mut strings = Interner::default();
        let stale = strings.intern("py::old:a.py");
        let fresh = strings.intern("py::new:b.py");
        table.insert(0x1000, 0xb, stale);
        table.insert(0x1005, 0xb, fresh);
        assert!(table.lookup(0x1000).is_none(), "stale overlapping entry removed");
        assert_eq!(table.lookup(0x1006).map(|(s, e)| (s, e.name)), Some((0x1005, fresh)));
        // Re-activation: same name, new address; both stay.
        table.insert(0x9000, 0xb, fresh);
        assert_eq!(table.len(), 2);
        assert!(table.lookup(0x9000 + 0xb).is_none(), "end is exclusive");
    }

    /// A map named `<prefix>-<pid>.map` in /tmp, owned by this test process, and its path.
    fn map_of_this_process(prefix: &str) -> (MapLocation, std::path::PathBuf) {
        let pid = Pid(std::process::id());
        let file_name = format!("{prefix}-{pid}.map");
        let path = std::path::Path::new("/tmp").join(&file_name);
        let uid = crate::process::procfs::identity(pid).expect("own identity").1;
        (MapLocation { pid, file_name, owner: Owner::OneOf(uid) }, path)
    }

    #[test]
    fn a_stale_start_is_skipped_only_in_the_same_file() {
        // The command may chroot, so the map it writes is another file than the one that
        // held an earlier process's lines under the same name (that bug hid every Python frame).
        let (location, path) = map_of_this_process("ember-stale-test");
        let location = || location.clone();
        let read_all = |stale| {
            let mut reader = PerfMapReader::new(location());
            reader.skip_stale(stale);
            let (mut table, mut strings) = (PerfMapTable::default(), Interner::default());
            reader.poll(&mut table, &mut strings).expect("readable")
        };
        std::fs::write(&path, "1000 b py::old:a.py\n").expect("write");
        let stale = PerfMapReader::new(location()).stale_part().expect("the old map");
        std::fs::write(&path, "1000 b py::old:a.py\n2000 b py::new:a.py\n").expect("append");
        assert_eq!(read_all(stale), 1, "same file: only what came after");
        let replacement = path.with_extension("new");
        std::fs::write(&replacement, "3000 b py::x:a.py\n4000 b py::y:a.py\n").expect("write");
        std::fs::rename(&replacement, &path).expect("replace");
        let all = read_all(stale);
        let _ = std::fs::remove_file(&path);
        assert_eq!(all, 2, "another file: read from its start");
    }

    #[test]
    fn a_map_written_before_the_process_started_is_an_earlier_process_s() {
        let (location, path) = map_of_this_process("ember-reused-pid-test");
        let mut reader = PerfMapReader::new(location);
        let now = SystemTime::now();
        reader.set_process_start(now);
        std::fs::write(&path, "1000 b py::old:a.py\n").expect("write");
        let file = std::fs::File::options().append(true).open(&path).expect("open");
        file.set_modified(now - Duration::from_secs(3600)).expect("age the map");
        let (mut table, mut strings) = (PerfMapTable::default(), Interner::default());
        let stale_lines = reader.poll(&mut table, &mut strings);
        let own_before = reader.has_own_map();
        std::io::Write::write_all(&mut &file, b"2000 b py::new:a.py\n").expect("append");
        let own_lines = reader.poll(&mut table, &mut strings);
        let _ = std::fs::remove_file(&path);
        assert_eq!(stale_lines.expect("readable"), 0, "the earlier process's lines are skipped");
        assert!(!own_before, "a stale map is not the trampoline being on");
        assert_eq!(own_lines.expect("readable"), 1, "lines the process appends are read");
        assert!(reader.has_own_map());
    }
}
