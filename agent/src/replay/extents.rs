//! Which bytes of an ELF image a replay needs. Parsing the image (headers, section table,
//! notes for the build-id) is done once more through a reader that logs every range it
//! reads; those ranges plus the CFI sections are what a case keeps. A replay puts them back
//! at their offsets in a sparse file, so the image goes through the very loader the live
//! agent uses, and symbols, debug info and nearly all code stay out of the corpus. The code
//! kept is what the walk checks: the bytes before each return address (a call?), and the
//! prologue of a function without CFI, whose symbol the case lists.
//!
//! With an `.eh_frame_hdr` (its sorted table is all framehop searches), only the FDEs for the
//! sampled addresses and their CIEs are kept of `.eh_frame`, a few KiB instead of the
//! megabyte of libpython's.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::Range;

use memmap2::Mmap;
use object::{Object, ObjectSection, ReadRef};

use super::format::{Extent, FunctionRecord};
use crate::unwind::coverage::cfi_covers;
use crate::unwind::elf::CFI_SECTIONS;
use crate::unwind::prologue::PROLOGUE_BYTES;
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

/// The file length and the extents of `image` a replay needs to unwind at `svmas` (addresses
/// in the file's own address space), and the function symbols it looked up.
pub fn image_extents(image: &ElfImage, svmas: &[u64]) -> Result<(u64, Vec<Extent>, Vec<FunctionRecord>), ExtentError> {
    let path = image.path.clone();
    // SAFETY: the image's file is, by construction of the cache, writable by root alone or a
    // sealed memfd, so the mapping cannot shrink under us (see `unwind::elf::stable`).
    let map = unsafe { Mmap::map(&image.file) }.map_err(|source| ExtentError::Map { path: path.clone(), source })?;
    let logged = Logged { data: &map, reads: RefCell::new(Vec::new()) };
    let obj = object::File::parse(&logged).map_err(|source| ExtentError::Parse { path, source })?;
    // What the image loader reads: sections by name, their compression headers, segments
    // and the build-id note.
    let mut keep = Vec::new();
    let mut cfi = HashMap::new();
    for name in [".text", ".got"].iter().chain(CFI_SECTIONS.iter()) {
        if let Some(section) = obj.section_by_name(name) {
            let _ = section.compressed_file_range();
            if let (true, Some((offset, size))) = (CFI_SECTIONS.contains(name), section.file_range()) {
                cfi.insert(*name, (offset, size, section.address()));
            }
        }
    }
    let fdes = match (cfi.get(".eh_frame_hdr"), cfi.get(".eh_frame")) {
        (Some(&hdr), Some(&eh)) => fde_ranges(&map, hdr, eh, svmas),
        _ => None,
    };
    for (name, (offset, size, _)) in &cfi {
        match (&fdes, *name) {
            (Some(fdes), ".eh_frame") => keep.extend(fdes.iter().cloned()),
            _ => keep.push(*offset..offset + size),
        }
    }
    // The code before each return address, which the walk checks for a call.
    let call_bytes = crate::unwind::call_site::LONGEST_CALL as u64;
    keep.extend(
        svmas.iter().filter_map(|&svma| image.offset_of_svma(svma)).map(|o| o.saturating_sub(call_bytes - 1)..o + 1),
    );
    // Code without CFI: its function's symbol and prologue (see `unwind::no_cfi`).
    let mut functions: Vec<FunctionRecord> = Vec::new();
    for &svma in svmas.iter().filter(|&&svma| !cfi_covers(image, svma)) {
        let Some(f) = image.function_at(svma) else { continue };
        if let (Some(from), Some(to)) = (image.offset_of_svma(f.start), image.offset_of_svma(svma)) {
            keep.push(from..to.min(from + PROLOGUE_BYTES) + 1);
        }
        if !functions.iter().any(|r| r.start == f.start) {
            functions.push(FunctionRecord { start: f.start, size: f.size, name: f.name.to_string() });
        }
    }
    // A direct call's target in a PLT stub: the stubs' names, as the image loader read them.
    let in_plt = |svma: u64| {
        [".plt", ".plt.sec", ".plt.got"]
            .iter()
            .filter_map(|n| obj.section_by_name(n))
            .any(|s| svma >= s.address() && svma - s.address() < s.size())
    };
    let plt_used = svmas.iter().any(|&svma| in_plt(svma));
    if plt_used {
        let _ = crate::symbolize::plt::PltStubs::parse(&obj);
    }
    // Parsing takes the symbol tables' whole slices, but unwinding reads no symbol, except the
    // dynamic ones that name PLT stubs: those tables stay out (a megabyte in some libraries).
    let unread_tables: Vec<Range<u64>> = [".symtab", ".dynsym"]
        .iter()
        .filter(|&&name| !(plt_used && name == ".dynsym"))
        .filter_map(|name| obj.section_by_name(name)?.file_range())
        .map(|(offset, size)| offset..offset + size)
        .collect();
    let _ = obj.segments().count();
    let _ = obj.build_id();
    drop(obj);
    keep.extend(logged.reads.into_inner().into_iter().filter(|r| !unread_tables.contains(r)));
    let len = map.len() as u64;
    let extents = merge(keep, len)
        .into_iter()
        .filter_map(|r| {
            let bytes = map.get(usize::try_from(r.start).ok()?..usize::try_from(r.end).ok()?)?;
            Some(Extent { offset: r.start, bytes: bytes.to_vec() })
        })
        .collect();
    Ok((len, extents, functions))
}

/// File ranges of the FDEs (and their CIEs) that cover `svmas`, found through the binary
/// search table of `.eh_frame_hdr` as framehop finds them. `None` if the table is in a form
/// this does not read: then all of `.eh_frame` is kept.
fn fde_ranges(map: &[u8], hdr: (u64, u64, u64), eh: (u64, u64, u64), svmas: &[u64]) -> Option<Vec<Range<u64>>> {
    const DW_EH_PE_UDATA4: u8 = 0x03;
    const DW_EH_PE_SDATA4: u8 = 0x0b;
    const DW_EH_PE_DATAREL_SDATA4: u8 = 0x3b;
    let (hdr_offset, hdr_size, hdr_svma) = hdr;
    let (eh_offset, eh_size, eh_svma) = eh;
    let at = |offset: u64| -> Option<u32> {
        let start = usize::try_from(offset).ok()?;
        Some(u32::from_le_bytes(map.get(start..start.checked_add(4)?)?.try_into().ok()?))
    };
    let head = map.get(usize::try_from(hdr_offset).ok()?..)?.get(..4)?;
    let [1, ptr_enc, count_enc, table_enc] = *head else { return None };
    if ptr_enc & 0x0f != DW_EH_PE_SDATA4 && ptr_enc & 0x0f != DW_EH_PE_UDATA4 {
        return None;
    }
    if count_enc != DW_EH_PE_UDATA4 || table_enc != DW_EH_PE_DATAREL_SDATA4 {
        return None;
    }
    let count = u64::from(at(hdr_offset + 8)?);
    let table = hdr_offset + 12;
    if table + count * 8 > hdr_offset + hdr_size {
        return None;
    }
    // Entries are (initial location, FDE address), both relative to the header's address.
    let entry = |i: u64| -> Option<(u64, u64)> {
        let rel = |v: u32| hdr_svma.wrapping_add(i64::from(v as i32) as u64);
        Some((rel(at(table + i * 8)?), rel(at(table + i * 8 + 4)?)))
    };
    let eh_end = eh_offset + eh_size;
    // The CIE or FDE starting at file offset `pos`: its length word and body.
    let record = |pos: u64| -> Option<Range<u64>> {
        let len = at(pos)?;
        (len != u32::MAX).then_some(pos..(pos + 4 + u64::from(len)).min(eh_end))
    };
    let mut out = Vec::new();
    for &svma in svmas {
        // The last entry starting at or below the address, as a binary search finds it.
        let (mut lo, mut hi) = (0, count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if entry(mid)?.0 <= svma {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        // Below the first entry, a lookup still parses the first FDE to find it does not cover.
        let i = lo.saturating_sub(1);
        if count == 0 {
            continue;
        }
        let fde = entry(i)?.1.checked_sub(eh_svma)?.checked_add(eh_offset)?;
        if fde >= eh_end {
            return None;
        }
        let fde_range = record(fde)?;
        // The CIE pointer counts back from its own position.
        let cie = (fde + 4).checked_sub(u64::from(at(fde + 4)?))?;
        out.push(fde_range);
        out.push(record(cie)?);
    }
    Some(out)
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
        // One address inside the text: its FDE and CIE are kept of .eh_frame, nothing else.
        let text = image.text.as_ref().expect("text").svma.clone();
        let svmas = [text.start + (text.end - text.start) / 2];
        let (len, extents, _) = image_extents(&image, &svmas).expect("extents");
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
        assert!(same(&copy.eh_frame_hdr, &image.eh_frame_hdr) && same(&copy.debug_frame, &image.debug_frame));
        let (orig, sparse) =
            (&image.eh_frame.as_ref().expect("eh_frame").bytes, &copy.eh_frame.as_ref().expect("copy").bytes);
        assert_eq!(orig.len(), sparse.len());
        assert!(orig.iter().zip(sparse.iter()).all(|(o, s)| s == o || *s == 0), "only zeros where bytes were left out");
        let nonzero = sparse.iter().filter(|&&b| b != 0).count();
        assert!(nonzero > 16 && nonzero < orig.len() / 8, "one FDE and its CIE: {nonzero} of {} bytes", orig.len());
        assert_eq!(copy.text.as_ref().map(|t| t.svma.clone()), image.text.as_ref().map(|t| t.svma.clone()));
        assert_eq!(copy.got, image.got);
        assert_eq!(copy.load_bias(0x1000, 0), image.load_bias(0x1000, 0));
    }
}
