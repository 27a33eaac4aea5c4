//! Which code unwind info describes. Code no FDE covers (hand-written assembly, such as
//! OpenBLAS's kernels) gets its caller from a checked scan, not from framehop's guess.

use gimli::{BaseAddresses, EhFrame, EhFrameHdr, LittleEndian, UnwindSection};

use super::elf::ElfImage;

/// Whether an FDE of `image` covers `svma`. Where ember cannot tell (no binary search table,
/// only `.debug_frame`, a table it cannot parse), `true`: framehop then decides, as before.
pub fn cfi_covers(image: &ElfImage, svma: u64) -> bool {
    let (Some(hdr), Some(eh)) = (&image.eh_frame_hdr, &image.eh_frame) else {
        return image.debug_frame.is_some();
    };
    let mut bases = BaseAddresses::default().set_eh_frame_hdr(hdr.svma.start).set_eh_frame(eh.svma.start);
    if let Some(text) = &image.text {
        bases = bases.set_text(text.svma.start);
    }
    let Ok(parsed) = EhFrameHdr::new(&hdr.bytes, LittleEndian).parse(&bases, 8) else { return true };
    let Some(table) = parsed.table() else { return true };
    let eh_frame = EhFrame::new(&eh.bytes, LittleEndian);
    match table.fde_for_address(&eh_frame, &bases, svma, EhFrame::cie_from_offset) {
        Ok(_) => true,
        Err(gimli::Error::NoUnwindInfoForAddress) => image.debug_frame.is_some(),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unwind::{ElfCache, ElfError, FileIdentity};
    use object::{Object, ObjectSymbol};

    #[test]
    fn functions_are_covered_and_gaps_are_not() {
        let exe = std::env::current_exe().expect("current exe");
        let mut cache = ElfCache::default();
        let open = || std::fs::File::open(&exe).map_err(|source| ElfError::Open { path: exe.clone(), source });
        let image = cache.load(FileIdentity::Path("self".into()), "self", open).expect("own ELF loads");
        let bytes = std::fs::read(&exe).expect("read");
        let obj = object::File::parse(&*bytes).expect("parse");
        let function = obj
            .symbols()
            .find(|s| s.name().is_ok_and(|n| n.contains("functions_are_covered_and_gaps_are_not")) && s.size() > 0)
            .expect("this test's own symbol");
        assert!(cfi_covers(&image, function.address()), "rustc emits an FDE for every function");
        assert!(cfi_covers(&image, function.address() + function.size() - 1));
        assert!(!cfi_covers(&image, 0), "address 0 is below every FDE");
        assert!(!cfi_covers(&image, u64::MAX - 1), "nor past the last one");
    }
}
