//! Python objects read from the target: strings, bytes and code objects. Everything is checked
//! before it is believed: the object's type pointer must be the exact type's address, lengths
//! are bounded, and strings must be CPython's compact form. A failed check is an error, never a
//! guess.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::blocks::{Blocks, BLOCK};
use super::layout::Layout;
use super::linetable;
use crate::process::access::TargetAccess;

/// Addresses of the type objects that prove what an object is (exported by libpython).
#[derive(Debug, Clone, Copy)]
pub struct Types {
    pub code: u64,
    pub unicode: u64,
    pub bytes: u64,
}

/// Longest name or path read (CPython's are far shorter; a longer one is a wrong pointer).
const MAX_STRING_CHARS: u64 = 4096;
/// Largest location table read: 1 MiB covers a code object of ~500k instructions.
const MAX_LINETABLE: u64 = 1 << 20;
/// Most `co_extra` slots CPython hands out (`MAX_CO_EXTRA_USERS`).
const MAX_CODE_EXTRAS: u64 = 255;
/// Code objects remembered per process before the cache starts over.
const MAX_CACHED_CODE: usize = 1 << 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    #[error("cannot read {len} bytes at {addr:#x} of the target")]
    Unreadable { addr: u64, len: usize },
    #[error("the object at {addr:#x} is not a {expected} (its type is at {found:#x})")]
    WrongType { addr: u64, expected: &'static str, found: u64 },
    #[error("the {what} at {addr:#x} is not one CPython makes ({why})")]
    Malformed { what: &'static str, addr: u64, why: &'static str },
}

/// What ember keeps of a code object: immutable in CPython once made.
#[derive(Debug, PartialEq, Eq)]
pub struct CodeInfo {
    pub qualname: String,
    pub filename: String,
    pub first_line: i32,
    linetable: Vec<u8>,
    /// The pointers a code object at this address held when read: a different object later
    /// made at the same address has other ones.
    identity: [u64; 3],
}

impl CodeInfo {
    /// A code object whose first 16 code units are all on line 1, for tests.
    #[cfg(test)]
    pub fn named(qualname: &str) -> Arc<Self> {
        let filename = "/srv/app.py".into();
        Arc::new(CodeInfo {
            qualname: qualname.into(),
            filename,
            first_line: 1,
            linetable: vec![0x80 | (13 << 3) | 7, 0, 0x80 | (13 << 3) | 7, 0],
            identity: [0; 3],
        })
    }

    /// The source line of the instruction `unit` code units into the code.
    pub fn line_at(&self, unit: u64) -> Option<u32> {
        linetable::line_of(&self.linetable, self.first_line, unit)
    }
}

/// Reads objects from one target with one layout.
pub struct ObjectReader {
    access: Arc<dyn TargetAccess>,
    layout: Layout,
    types: Types,
    codes: HashMap<u64, Arc<CodeInfo>>,
    /// The code object read last: a recursion reads the same one frame after frame.
    last_code: Option<(u64, Arc<CodeInfo>)>,
    /// The target's memory by block, as read since [`ObjectReader::new_walk`] (`None`:
    /// unreadable).
    blocks: RefCell<Blocks>,
    /// Blocks read one by one (not by [`ObjectReader::reread_blocks`]).
    misses: Cell<u64>,
    /// The blocks used since [`ObjectReader::new_walk`].
    touched: RefCell<HashSet<u64>>,
}

/// Blocks remembered as used by one walk: a hint beyond this is not worth its read.
const MAX_TOUCHED: usize = 1024;

/// Walks tried after the first before giving up on one that sees the target at one moment.
const MAX_SETTLE: usize = 3;

impl ObjectReader {
    pub fn new(access: Arc<dyn TargetAccess>, layout: Layout, types: Types) -> Self {
        ObjectReader {
            access,
            layout,
            types,
            codes: HashMap::new(),
            last_code: None,
            blocks: RefCell::default(),
            misses: Cell::new(0),
            touched: RefCell::default(),
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Forgets the memory read so far: the target has run since.
    pub fn new_walk(&self) {
        self.blocks.borrow_mut().clear();
        self.touched.borrow_mut().clear();
    }

    /// Runs `walk` over a view of the target at (nearly) one moment, and says whether it got
    /// one. A first walk reads the blocks it needs one after another while the target runs, so
    /// it can follow a pointer read before the thread returned into frames it left behind (the
    /// memory of popped frames stays as it was). So every block is read again in one system
    /// call and the walk repeated; a repeat that needed no other block saw that one moment.
    pub fn at_once<T>(&mut self, walk: impl FnMut(&mut Self) -> T) -> (T, bool) {
        self.at_once_from(&[], walk)
    }

    /// [`at_once`](Self::at_once), starting from the blocks `hint` names read in one call (the
    /// blocks the last walk of the same thread needed, see [`touched`](Self::touched)): a walk
    /// that then needs no other block saw that one moment, with one system call instead of one
    /// per block and a re-read.
    pub fn at_once_from<T>(&mut self, hint: &[u64], mut walk: impl FnMut(&mut Self) -> T) -> (T, bool) {
        self.new_walk();
        if !hint.is_empty() {
            let ranges: Vec<(u64, usize)> = hint.iter().map(|&start| (start, BLOCK as usize)).collect();
            let read = self.access.read_memory_at_once(&ranges);
            let mut blocks = self.blocks.borrow_mut();
            for (&start, bytes) in hint.iter().zip(read) {
                blocks.insert(start, bytes.map(Arc::from));
            }
        }
        let misses = self.misses.get();
        let mut result = walk(self);
        if !hint.is_empty() && self.misses.get() == misses {
            return (result, true);
        }
        for _ in 0..MAX_SETTLE {
            self.reread_blocks();
            let misses = self.misses.get();
            result = walk(self);
            if self.misses.get() == misses {
                return (result, true);
            }
        }
        (result, false)
    }

    /// The blocks the last walk used, sorted: the hint for the next walk of the same thread.
    pub fn touched(&self) -> Vec<u64> {
        let mut touched: Vec<u64> = self.touched.borrow().iter().copied().collect();
        touched.sort_unstable();
        touched
    }

    /// Reads every block this walk has read once more, all in one call: a walk over them then
    /// sees the target at nearly one moment, where the first walk's blocks were read one after
    /// another while the target ran.
    pub fn reread_blocks(&self) {
        let mut blocks = self.blocks.borrow_mut();
        let ranges: Vec<(u64, usize)> = blocks.readable_starts().into_iter().map(|s| (s, BLOCK as usize)).collect();
        blocks.replace_readable(self.access.read_memory_at_once(&ranges));
    }

    /// `len` bytes at `addr`, without a copy when one block holds them all (a frame or an
    /// object header, read once per frame of every walk).
    pub fn view(&self, addr: u64, len: usize) -> Result<View, ObjectError> {
        let start = addr - addr % BLOCK;
        let from = (addr - start) as usize;
        if len <= BLOCK as usize - from {
            let block = self.block(start).ok_or(ObjectError::Unreadable { addr, len })?;
            return Ok(View::Block(block, from..from + len));
        }
        self.bytes_at(addr, len).map(View::Owned)
    }

    pub fn bytes_at(&self, addr: u64, len: usize) -> Result<Vec<u8>, ObjectError> {
        let unreadable = ObjectError::Unreadable { addr, len };
        let end = addr.checked_add(len as u64).ok_or(unreadable.clone())?;
        // A location table can be 1 MiB: read at its own; a stack region (64 KiB at most)
        // goes through the blocks, so it is read again with them.
        if len as u64 > 16 * BLOCK {
            return self.access.read_memory(addr, len).ok_or(unreadable);
        }
        let mut out = Vec::with_capacity(len);
        let mut at = addr;
        while at < end {
            let start = at - at % BLOCK;
            let block = self.block(start).ok_or(unreadable.clone())?;
            let upto = end.min(start.saturating_add(BLOCK));
            out.extend_from_slice(&block[(at - start) as usize..(upto - start) as usize]);
            at = upto;
        }
        Ok(out)
    }

    fn block(&self, start: u64) -> Option<Arc<[u8]>> {
        {
            let mut touched = self.touched.borrow_mut();
            if touched.len() < MAX_TOUCHED {
                touched.insert(start);
            }
        }
        let mut blocks = self.blocks.borrow_mut();
        if let Some(known) = blocks.get(start) {
            return known.clone();
        }
        self.misses.set(self.misses.get() + 1);
        let read: Option<Arc<[u8]>> = self.access.read_memory(start, BLOCK as usize).map(Arc::from);
        blocks.insert(start, read.clone());
        read
    }

    pub fn word(&self, addr: u64) -> Result<u64, ObjectError> {
        let bytes = self.bytes_at(addr, 8)?;
        Ok(word_in(&bytes, 0))
    }

    fn check_type(&self, addr: u64, head: &[u8], expected: u64, name: &'static str) -> Result<(), ObjectError> {
        let found = word_in(head, self.layout.ob_type as usize);
        if found == expected {
            Ok(())
        } else {
            Err(ObjectError::WrongType { addr, expected: name, found })
        }
    }

    /// A `str`: compact (its characters follow the header), as every name and path CPython
    /// keeps in a code object is.
    pub fn string(&self, addr: u64) -> Result<String, ObjectError> {
        let l = &self.layout;
        let head = self.bytes_at(addr, l.unicode_ascii_size as usize)?;
        self.check_type(addr, &head, self.types.unicode, "str")?;
        let length = word_in(&head, l.unicode_length as usize);
        let state = u32::from_le_bytes(slice4(&head, l.unicode_state as usize));
        let malformed = |why| ObjectError::Malformed { what: "str", addr, why };
        if length > MAX_STRING_CHARS {
            return Err(malformed("longer than any name"));
        }
        // interned:2, kind:3, compact:1, ascii:1 (every GIL build, 3.12-3.15).
        let (kind, compact, ascii) = ((state >> 2) & 7, (state >> 5) & 1 == 1, (state >> 6) & 1 == 1);
        if !compact {
            return Err(malformed("not compact"));
        }
        // A non-ASCII compact string's characters follow PyCompactUnicodeObject, which adds
        // utf8_length and utf8 to the ASCII header.
        let data = addr.wrapping_add(l.unicode_ascii_size + if ascii { 0 } else { 16 });
        let bytes = match kind {
            1 | 2 | 4 => self.bytes_at(data, (length * u64::from(kind)) as usize)?,
            _ => return Err(malformed("unknown kind")),
        };
        let chars: Option<String> = match kind {
            1 => Some(bytes.iter().map(|&b| char::from(b)).collect()),
            2 => bytes.chunks_exact(2).map(|c| char::from_u32(u32::from(u16::from_le_bytes([c[0], c[1]])))).collect(),
            _ => bytes.chunks_exact(4).map(|c| char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect(),
        };
        chars.ok_or_else(|| malformed("not Unicode"))
    }

    /// A `bytes` object's contents, at most `max` long.
    fn bytes_object(&self, addr: u64, max: u64) -> Result<Vec<u8>, ObjectError> {
        let l = &self.layout;
        let head = self.bytes_at(addr, l.bytes_data as usize)?;
        self.check_type(addr, &head, self.types.bytes, "bytes")?;
        let size = word_in(&head, l.bytes_size as usize);
        if size > max {
            return Err(ObjectError::Malformed { what: "bytes", addr, why: "larger than a location table" });
        }
        self.bytes_at(addr.wrapping_add(l.bytes_data), size as usize)
    }

    /// The code object at `addr`, from the cache when the object there is still the one read.
    pub fn code(&mut self, addr: u64) -> Result<Arc<CodeInfo>, ObjectError> {
        let l = &self.layout;
        let head = self.view(addr, l.code_adaptive as usize)?;
        self.check_type(addr, &head, self.types.code, "code object")?;
        let identity = [l.code_qualname, l.code_filename, l.code_linetable].map(|at| word_in(&head, at as usize));
        if let Some((_, known)) = self.last_code.as_ref().filter(|(a, c)| *a == addr && c.identity == identity) {
            return Ok(known.clone());
        }
        if let Some(known) = self.codes.get(&addr).filter(|c| c.identity == identity) {
            self.last_code = Some((addr, known.clone()));
            return Ok(known.clone());
        }
        let [qualname, filename, linetable] = identity;
        let info = Arc::new(CodeInfo {
            qualname: self.string(qualname)?,
            filename: self.string(filename)?,
            first_line: i32::from_le_bytes(slice4(&head, l.code_firstlineno as usize)),
            linetable: self.bytes_object(linetable, MAX_LINETABLE)?,
            identity,
        });
        if self.codes.len() >= MAX_CACHED_CODE {
            self.codes.clear();
        }
        self.codes.insert(addr, info.clone());
        Ok(info)
    }
}

impl ObjectReader {
    /// The pointers in a code object's `co_extra` slots (`_PyCodeObjectExtra`): one of them is
    /// its perf trampoline once the trampoline has run it. Read each time, as slots are filled
    /// after the code object is made.
    pub fn code_extras(&self, code_addr: u64) -> Result<Vec<u64>, ObjectError> {
        let extra = self.word(code_addr.wrapping_add(self.layout.code_extra))?;
        if extra == 0 {
            return Ok(Vec::new());
        }
        let size = self.word(extra)?;
        if size > MAX_CODE_EXTRAS {
            return Err(ObjectError::Malformed { what: "co_extra", addr: extra, why: "more slots than CPython gives" });
        }
        let bytes = self.bytes_at(extra.wrapping_add(8), size as usize * 8)?;
        Ok(bytes.chunks_exact(8).map(|w| word_in(w, 0)).collect())
    }
}

/// Bytes read from the target: a part of a cached block, or a copy.
pub enum View {
    Block(Arc<[u8]>, std::ops::Range<usize>),
    Owned(Vec<u8>),
}

impl std::ops::Deref for View {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            View::Block(block, range) => block.get(range.clone()).unwrap_or_default(),
            View::Owned(bytes) => bytes,
        }
    }
}

/// The little-endian word at `at`, or 0 past the end (callers read whole headers first).
pub fn word_in(bytes: &[u8], at: usize) -> u64 {
    bytes.get(at..at + 8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes)
}

fn slice4(bytes: &[u8], at: usize) -> [u8; 4] {
    bytes.get(at..at + 4).and_then(|b| b.try_into().ok()).unwrap_or_default()
}

#[cfg(test)]
#[path = "objects_tests.rs"]
mod tests;
