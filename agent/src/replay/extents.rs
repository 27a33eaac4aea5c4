//! Which bytes of an ELF image a replay needs. Parsing the image (headers, section table,
//! notes for the build-id) is done once more through a reader that logs every range it
//! reads; those ranges plus the CFI sections are what a case keeps. A replay puts them back
//! at their offsets in a sparse file, so the image goes through the very loader the live
//! agent uses, and code, symbols and debug info stay out of the corpus.

use std::cell::RefCell;
use std::ops::Range;

use memmap2::Mmap;
use object::{Object, ObjectSection, ReadRef};

use super::format::Extent;
use crate::unwind::elf::CFI_SECTIONS;
use crate::unwind::ElfImage;

/// Reads closer than this are kept as one extent: fewer, slightly larger pieces.
const MERGE_GAP: u64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum ExtentError {
    #[error("cannot map {path}: {source}")]
    Map { path: String, source: std::io::Error },
    #[error("{path} is not a readable ELF file: {source}")]
    Parse { path: String, source: object::Error },
}

/// A byte slice that remembers which ranges were read from it.
struct Logged<'a> {
    data: &'a [u8],
    reads: RefCell<Vec<Range<u64>>>,
}

impl<'a> ReadRef<'a> for &'a Logged<'a> {
    fn len(self) -> Result<u64, ()> {
        Ok(self.data.len() as u64)
    }

    fn read_bytes_at(self, offset: u64, size: u64) -> Result<&'a [u8], ()> {
        let bytes = self.data.read_bytes_at(offset, size)?;
        self.reads.borrow_mut().push(offset..offset + bytes.len() as u64);
        Ok(bytes)
    }

    fn read_bytes_at_until(self, range: Range<u64>, delimiter: u8) -> Result<&'a [u8], ()> {
        let bytes = self.data.read_bytes_at_until(range.clone(), delimiter)?;
        // The delimiter was read too.
        let end = (range.start + bytes.len() as u64 + 1).min(self.data.len() as u64);
        self.reads.borrow_mut().push(range.start..end);
        Ok(bytes)
    }
}

/// The file length and the extents of `image` a replay needs.
pub fn image_extents(image: &ElfImage) -> Result<(u64, Vec<Extent>), ExtentError> {
    let path = image.path.clone();
    // SAFETY: the image's file is, by construction of the cache, writable by root alone or a
    // sealed memfd, so the mapping cannot shrink under us (see `unwind::elf::stable`).
    let map = unsafe { Mmap::map(&image.file) }.map_err(|source| ExtentError::Map { path: path.clone(), source })?;
    let logged = Logged { data: &map, reads: RefCell::new(Vec::new()) };
    let obj = object::File::parse(&logged).map_err(|source| ExtentError::Parse { path, source })?;
    // What the image loader reads: sections by name, their compression headers, segments
    // and the build-id note.
    let mut keep = Vec::new();
    for name in [".text", ".got"].iter().chain(CFI_SECTIONS.iter()) {
        if let Some(section) = obj.section_by_name(name) {
            let _ = section.compressed_file_range();
            if CFI_SECTIONS.contains(name) {
                if let Some((offset, size)) = section.file_range() {
                    keep.push(offset..offset + size);
                }
            }
        }
    }
    let _ = obj.segments().count();
    let _ = obj.build_id();
    drop(obj);
    keep.extend(logged.reads.into_inner());
    let len = map.len() as u64;
    let extents = merge(keep, len)
        .into_iter()
        .filter_map(|r| {
            let bytes = map.get(usize::try_from(r.start).ok()?..usize::try_from(r.end).ok()?)?;
            Some(Extent { offset: r.start, bytes: bytes.to_vec() })
        })
        .collect();
    Ok((len, extents))
}

/// Sorts, clamps to `len` and joins ranges that overlap or nearly touch.
fn merge(mut ranges: Vec<Range<u64>>, len: u64) -> Vec<Range<u64>> {
    ranges.retain(|r| r.start < r.end.min(len));
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::new();
    for r in ranges {
        let r = r.start..r.end.min(len);
        match merged.last_mut() {
            Some(last) if r.start <= last.end.saturating_add(MERGE_GAP) => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unwind::{ElfCache, ElfError, FileIdentity};

    #[test]
    fn merges_close_ranges() {
        assert_eq!(merge(vec![10..20, 0..5, 300..310, 18..40], 305), vec![0..40, 300..305]);
    }

    #[test]
    fn a_sparse_copy_of_the_extents_loads_with_the_same_unwind_sections() {
        let exe = std::env::current_exe().expect("current exe");
        let mut cache = ElfCache::default();
        let open = || std::fs::File::open(&exe).map_err(|source| ElfError::Open { path: exe.clone(), source });
        let image = cache.load(FileIdentity::Path("exe".into()), "exe", open).expect("own ELF loads");
        let (len, extents) = image_extents(&image).expect("extents");
        let kept: u64 = extents.iter().map(|e| e.bytes.len() as u64).sum();
        assert!(kept < len / 2, "keeps {kept} of {len} bytes: not the code");
        let sparse = crate::unwind::elf::sealed_sparse(len, extents.iter().map(|e| (e.offset, &e.bytes[..])))
            .expect("sparse copy");
        let copy = cache.load(FileIdentity::Path("copy".into()), "copy", || Ok(sparse)).expect("loads");
        // The same build-id makes the cache hand back the original: compare sections by hand.
        assert_eq!(copy.id, image.id, "found by its build-id");
        let sparse = crate::unwind::elf::sealed_sparse(len, extents.iter().map(|e| (e.offset, &e.bytes[..])))
            .expect("sparse copy");
        let mut fresh = ElfCache::default();
        let copy = fresh.load(FileIdentity::Path("copy".into()), "copy", || Ok(sparse)).expect("loads");
        assert_eq!(copy.build_id, image.build_id);
        let same = |a: &Option<crate::unwind::elf::Section>, b: &Option<crate::unwind::elf::Section>| match (a, b) {
            (Some(a), Some(b)) => a.svma == b.svma && a.bytes[..] == b.bytes[..],
            (None, None) => true,
            _ => false,
        };
        assert!(image.eh_frame.is_some());
        assert!(same(&copy.eh_frame, &image.eh_frame) && same(&copy.eh_frame_hdr, &image.eh_frame_hdr));
        assert!(same(&copy.debug_frame, &image.debug_frame));
        assert_eq!(copy.text.as_ref().map(|t| t.svma.clone()), image.text.as_ref().map(|t| t.svma.clone()));
        assert_eq!(copy.got, image.got);
        assert_eq!(copy.load_bias(0x1000, 0), image.load_bias(0x1000, 0));
    }
}
