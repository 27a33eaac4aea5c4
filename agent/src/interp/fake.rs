//! A target made of byte regions, for the reader's unit tests: objects are laid out as CPython
//! would, then changed to what a hostile or racing target could show.

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::Mutex;

use crate::process::access::TargetAccess;
use crate::process::procfs::{MapsLine, ProcfsError};
use crate::unwind::ElfError;

#[derive(Debug, Default)]
pub struct FakeTarget {
    regions: Mutex<BTreeMap<u64, Vec<u8>>>,
}

impl FakeTarget {
    /// Writes `bytes` at `addr`: into the region that holds the whole range, else as a new
    /// region (which must not overlap another).
    pub fn put(&self, addr: u64, bytes: &[u8]) {
        let mut regions = self.regions.lock().expect("not poisoned");
        if let Some((&start, region)) = regions.range_mut(..=addr).next_back() {
            let from = (addr - start) as usize;
            if let Some(dest) = region.get_mut(from..from + bytes.len()) {
                dest.copy_from_slice(bytes);
                return;
            }
        }
        regions.insert(addr, bytes.to_vec());
    }

    pub fn put_word(&self, addr: u64, value: u64) {
        self.put(addr, &value.to_le_bytes());
    }
}

impl TargetAccess for FakeTarget {
    fn maps(&self) -> Result<Vec<MapsLine>, ProcfsError> {
        Ok(Vec::new())
    }

    /// Memory is mapped by 4 KiB page: a page holding any region's byte is mapped (zeros
    /// elsewhere), and a read touching any other page fails, as `process_vm_readv` does.
    fn read_memory(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        const PAGE: u64 = 4096;
        let regions = self.regions.lock().ok()?;
        let end = addr.checked_add(len as u64)?;
        let mapped = |page: u64| {
            regions.range(..page + PAGE).next_back().is_some_and(|(&start, b)| start + b.len() as u64 > page)
                || regions.range(page..page + PAGE).next().is_some()
        };
        let mut page = addr - addr % PAGE;
        while page < end {
            if !mapped(page) {
                return None;
            }
            page += PAGE;
        }
        let mut out = vec![0u8; len];
        for (&start, bytes) in regions.range(..end) {
            let (from, to) = (start.max(addr), (start + bytes.len() as u64).min(end));
            if from < to {
                out[(from - addr) as usize..(to - addr) as usize]
                    .copy_from_slice(&bytes[(from - start) as usize..(to - start) as usize]);
            }
        }
        Some(out)
    }

    fn open_mapped(&self, path: &str, _start: u64, _end: u64) -> Result<File, ElfError> {
        Err(ElfError::NotRegular { path: path.into() })
    }

    fn alive(&self) -> bool {
        true
    }
}

/// Writes where reads succeed (a mapped page), as a remote-execution request is written.
impl super::remote_exec::AddressSpace for FakeTarget {
    fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        self.read_memory(addr, len)
    }

    fn write(&self, addr: u64, bytes: &[u8]) -> bool {
        if self.read_memory(addr, bytes.len()).is_none() {
            return false;
        }
        self.put(addr, bytes);
        true
    }
}

/// Addresses of the fake type objects.
pub const CODE_TYPE: u64 = 0x1000;
pub const STR_TYPE: u64 = 0x2000;
pub const BYTES_TYPE: u64 = 0x3000;

pub fn types() -> super::objects::Types {
    super::objects::Types { code: CODE_TYPE, unicode: STR_TYPE, bytes: BYTES_TYPE }
}

/// Objects laid out as 3.12 lays them out (`LAYOUT_3_12`).
impl FakeTarget {
    /// A compact `str`: ASCII, or the smallest kind that holds `text`.
    pub fn string(&self, addr: u64, text: &str) {
        let chars: Vec<u32> = text.chars().map(u32::from).collect();
        let widest = chars.iter().copied().max().unwrap_or(0);
        let (kind, ascii) = match widest {
            0..=0x7f => (1u32, true),
            0x80..=0xff => (1, false),
            0x100..=0xffff => (2, false),
            _ => (4, false),
        };
        let mut bytes = vec![0u8; if ascii { 40 } else { 56 }];
        bytes[8..16].copy_from_slice(&STR_TYPE.to_le_bytes());
        bytes[16..24].copy_from_slice(&(chars.len() as u64).to_le_bytes());
        let state = (kind << 2) | (1 << 5) | (u32::from(ascii) << 6);
        bytes[32..36].copy_from_slice(&state.to_le_bytes());
        for c in chars {
            bytes.extend_from_slice(&c.to_le_bytes()[..kind as usize]);
        }
        self.put(addr, &bytes);
    }

    pub fn bytes_object(&self, addr: u64, data: &[u8]) {
        let mut bytes = vec![0u8; 32];
        bytes[8..16].copy_from_slice(&BYTES_TYPE.to_le_bytes());
        bytes[16..24].copy_from_slice(&(data.len() as u64).to_le_bytes());
        bytes.extend_from_slice(data);
        self.put(addr, &bytes);
    }

    /// A code object at `addr` with its strings and table just after it, and `units` of
    /// instructions.
    pub fn code(&self, addr: u64, qualname: &str, first_line: i32, linetable: &[u8]) {
        let mut bytes = vec![0u8; 192 + 64];
        bytes[8..16].copy_from_slice(&CODE_TYPE.to_le_bytes());
        bytes[68..72].copy_from_slice(&first_line.to_le_bytes());
        for (at, value) in [(112, addr + 0x400), (120, addr + 0x200), (128, addr + 0x200), (136, addr + 0x600)] {
            bytes[at..at + 8].copy_from_slice(&u64::to_le_bytes(value));
        }
        self.put(addr, &bytes);
        self.string(addr + 0x200, qualname);
        self.string(addr + 0x400, "/srv/app.py");
        self.bytes_object(addr + 0x600, linetable);
    }

    /// A `_PyInterpreterFrame` running `code` at instruction `unit`.
    pub fn frame(&self, addr: u64, code: u64, previous: u64, unit: u64, owner: u8) {
        let mut bytes = vec![0u8; 72];
        bytes[0..8].copy_from_slice(&code.to_le_bytes());
        bytes[8..16].copy_from_slice(&previous.to_le_bytes());
        bytes[56..64].copy_from_slice(&(code + 192 + 2 * unit).to_le_bytes());
        bytes[70] = owner;
        self.put(addr, &bytes);
    }
}
