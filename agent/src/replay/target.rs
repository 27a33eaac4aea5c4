//! A recorded process: what one sample of a case saw of its target, answered through the
//! same [`TargetAccess`] the live agent reads `/proc` through.

use std::fs::File;
use std::sync::Arc;

use super::format::{Case, MappingRecord};
use crate::process::access::TargetAccess;
use crate::process::procfs::{MapsLine, ProcfsError};
use crate::unwind::ElfError;

#[derive(Debug)]
pub struct RecordedTarget {
    case: Arc<Case>,
    sample: usize,
}

impl RecordedTarget {
    pub fn new(case: Arc<Case>, sample: usize) -> Self {
        Self { case, sample }
    }

    fn mappings(&self) -> impl Iterator<Item = &MappingRecord> {
        let indices = self.case.samples.get(self.sample).map_or(&[][..], |s| &s.mappings[..]);
        indices.iter().filter_map(|&i| self.case.mappings.get(i))
    }

    /// `(address, bytes)` pieces of memory the recording holds for this sample: code at
    /// perf-map addresses, and the vDSO's extents where it was mapped.
    fn pieces(&self) -> impl Iterator<Item = (u64, &[u8])> {
        let indices = self.case.samples.get(self.sample).map_or(&[][..], |s| &s.memory[..]);
        let code = indices.iter().filter_map(|&i| self.case.memory.get(i)).map(|m| (m.addr, &m.bytes[..]));
        let vdso = self.mappings().filter(|m| m.path == "[vdso]").flat_map(|m| {
            let image = m.image.and_then(|i| self.case.images.get(i));
            image
                .into_iter()
                .flat_map(|image| &image.extents)
                .filter_map(move |e| Some((m.start.checked_add(e.offset)?.checked_sub(m.pgoff)?, &e.bytes[..])))
        });
        code.chain(vdso)
    }
}

impl TargetAccess for RecordedTarget {
    fn maps(&self) -> Result<Vec<MapsLine>, ProcfsError> {
        Ok(self
            .mappings()
            .map(|m| MapsLine {
                start: m.start,
                end: m.end,
                readable: true,
                executable: true,
                offset: m.pgoff,
                dev_inode: m.dev_inode,
                path: m.path.clone(),
            })
            .collect())
    }

    /// Recorded bytes at their addresses, zeros elsewhere (zeros are no trampoline); `None`
    /// when the range holds no recorded byte at all.
    fn read_memory(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        let end = addr.checked_add(len as u64)?;
        let mut buf = vec![0u8; len];
        let mut found = false;
        for (at, bytes) in self.pieces() {
            let from = at.max(addr);
            let to = at.saturating_add(bytes.len() as u64).min(end);
            if from >= to {
                continue;
            }
            let src = bytes.get((from - at) as usize..(to - at) as usize)?;
            buf.get_mut((from - addr) as usize..(to - addr) as usize)?.copy_from_slice(src);
            found = true;
        }
        found.then_some(buf)
    }

    fn open_mapped(&self, path: &str, start: u64, end: u64) -> Result<File, ElfError> {
        let image = self
            .mappings()
            .find(|m| m.start == start && m.end == end && m.path == path)
            .and_then(|m| m.image)
            .and_then(|i| self.case.images.get(i))
            .ok_or(ElfError::Unreadable)?;
        crate::unwind::elf::sealed_sparse(image.file_len, image.extents.iter().map(|e| (e.offset, &e.bytes[..])))
            .map_err(|source| ElfError::Copy { source })
    }

    /// The recording holds the bytes the live check read; lines without them are no
    /// trampoline, rather than trusted by their size.
    fn alive(&self) -> bool {
        true
    }
}
