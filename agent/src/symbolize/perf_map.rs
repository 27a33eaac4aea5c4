//! CPython's perf map (`/tmp/perf-<pid>.map`): parsing, incremental reading, and the
//! address table built from it.
//!
//! Facts this code relies on (see ARCHITECTURE.md): the file is appended to, one line per
//! code object; it is never truncated or deleted, so a reused PID appends to stale content;
//! re-activating the trampoline names the same function again at a new address; arenas are
//! never freed, so an address is never reused within one process.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::intern::{Interner, StrId};
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
}

impl crate::unwind::stack::TrampolineLookup for PerfMapTable {
    fn trampoline_at(&self, addr: u64) -> Option<(u64, TrampolineKind)> {
        let (start, entry) = self.lookup(addr)?;
        entry.trampoline.map(|kind| (start, kind))
    }
}

/// Reads a perf map as it grows: only complete lines are consumed, a partial last line waits
/// for the next read.
#[derive(Debug)]
pub struct PerfMapReader {
    path: PathBuf,
    file: Option<File>,
    offset: u64,
    partial: Vec<u8>,
    pub corrupt_lines: u64,
    pub lines_read: u64,
}

impl PerfMapReader {
    pub fn new(path: PathBuf) -> Self {
        Self { path, file: None, offset: 0, partial: Vec::new(), corrupt_lines: 0, lines_read: 0 }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_open(&self) -> bool {
        self.file.is_some()
    }

    /// Opens the file if it exists. Keeping the descriptor lets ember finish reading after the
    /// target exits and its `/proc/PID/root` disappears.
    pub fn try_open(&mut self) -> bool {
        if self.file.is_none() {
            self.file = File::open(&self.path).ok();
        }
        self.file.is_some()
    }

    /// Starts reading at `offset`: the length the file had before the process started.
    pub fn start_at(&mut self, offset: u64) {
        self.offset = offset;
    }

    /// Skips whatever the file holds now: for a process ember launched itself, any existing
    /// content was written by an earlier process with the same PID.
    pub fn skip_existing(&mut self) {
        if self.try_open() {
            if let Some(len) = self.file.as_ref().and_then(|f| f.metadata().ok()).map(|m| m.len()) {
                self.offset = len;
            }
        }
    }

    /// Reads new complete lines into `table`. Returns how many entries were added.
    pub fn poll(&mut self, table: &mut PerfMapTable, strings: &mut Interner) -> io::Result<usize> {
        if !self.try_open() {
            return Ok(0);
        }
        let Some(file) = self.file.as_mut() else { return Ok(0) };
        let len = file.metadata()?.len();
        if len <= self.offset {
            return Ok(0);
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut chunk = Vec::with_capacity((len - self.offset) as usize);
        file.take(len - self.offset).read_to_end(&mut chunk)?;
        self.offset += chunk.len() as u64;
        Ok(self.consume(&chunk, table, strings))
    }

    /// Parses bytes that follow what was consumed before. Split from `poll` so it can be
    /// tested and fuzzed on byte strings.
    pub fn consume(&mut self, bytes: &[u8], table: &mut PerfMapTable, strings: &mut Interner) -> usize {
        self.partial.extend_from_slice(bytes);
        let Some(last_newline) = self.partial.iter().rposition(|&b| b == b'\n') else { return 0 };
        let complete: Vec<u8> = self.partial.drain(..=last_newline).collect();
        let mut added = 0;
        for raw in complete.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            self.lines_read += 1;
            let parsed = std::str::from_utf8(raw).map_err(|_| LineError::MissingFields).and_then(parse_line);
            match parsed {
                Ok(line) => {
                    let name = strings.intern(line.name);
                    table.insert(line.start, line.size, name);
                    added += 1;
                }
                Err(e) => {
                    if self.corrupt_lines == 0 {
                        tracing::warn!(
                            path = %self.path.display(),
                            "skipping corrupt perf-map line ({e}): {:?}; further corrupt lines are only counted",
                            String::from_utf8_lossy(raw)
                        );
                    }
                    self.corrupt_lines += 1;
                }
            }
        }
        added
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
        let mut reader = PerfMapReader::new(PathBuf::from("/nonexistent"));
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
        let mut reader = PerfMapReader::new(PathBuf::from("/nonexistent"));
        let mut table = PerfMapTable::default();
        let mut strings = Interner::default();
        let added =
            reader.consume(b"garbage\n1000 b py::a:x.py\n\xff\xfe 1 2\n3000 0 py::c:y\n", &mut table, &mut strings);
        assert_eq!(added, 1);
        assert_eq!(reader.corrupt_lines, 3);
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
}
