//! Python objects read from the target: strings, bytes and code objects. Everything is checked
//! before it is believed: the object's type pointer must be the exact type's address, lengths
//! are bounded, and strings must be CPython's compact form. A failed check is an error, never a
//! guess.

use std::collections::HashMap;
use std::sync::Arc;

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
}

impl ObjectReader {
    pub fn new(access: Arc<dyn TargetAccess>, layout: Layout, types: Types) -> Self {
        ObjectReader { access, layout, types, codes: HashMap::new() }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn bytes_at(&self, addr: u64, len: usize) -> Result<Vec<u8>, ObjectError> {
        self.access.read_memory(addr, len).ok_or(ObjectError::Unreadable { addr, len })
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
        let data = addr + l.unicode_ascii_size + if ascii { 0 } else { 16 };
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
        self.bytes_at(addr + l.bytes_data, size as usize)
    }

    /// The code object at `addr`, from the cache when the object there is still the one read.
    pub fn code(&mut self, addr: u64) -> Result<Arc<CodeInfo>, ObjectError> {
        let l = &self.layout;
        let head = self.bytes_at(addr, l.code_adaptive as usize)?;
        self.check_type(addr, &head, self.types.code, "code object")?;
        let identity = [l.code_qualname, l.code_filename, l.code_linetable].map(|at| word_in(&head, at as usize));
        if let Some(known) = self.codes.get(&addr).filter(|c| c.identity == identity) {
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
