//! `stream` symbolizes the new frames of every flush. This measures a flush's symbolization
//! with a fresh symbolizer each time (before: every image's ELF and DWARF parsed again) and
//! with one kept for the whole run (now), in the same run, on the interpreter's own library.
//!
//! `cargo bench -p ember-agent --bench symbolize`

use std::fs::File;
use std::time::{Duration, Instant};

use ember_agent::intern::Interner;
use ember_agent::process::FrameKey;
use ember_agent::symbolize::native::NativeSymbolizer;
use ember_agent::symbolize::SymbolTable;
use ember_agent::unwind::{ElfCache, ElfError, FileIdentity};
use object::{Object, ObjectSymbol};

const FLUSHES: usize = 20;
const NEW_FRAMES_PER_FLUSH: usize = 200;

fn main() {
    let python = ember_testkit::python312();
    let lib = python.parent().and_then(|bin| bin.parent()).map(|prefix| prefix.join("lib/libpython3.12.so.1.0"));
    let path = lib.filter(|p| p.exists()).unwrap_or(python);
    let bytes = std::fs::read(&path).expect("read the interpreter");
    let obj = object::File::parse(&*bytes).expect("an ELF file");
    // Function starts become file offsets through the PT_LOAD segment that holds them.
    let segments: Vec<(u64, u64, u64)> = object::read::elf::ElfFile64::<object::Endianness>::parse(&*bytes)
        .map(|elf| {
            use object::read::ObjectSegment;
            elf.segments().map(|s| (s.address(), s.size(), s.file_range().0)).collect()
        })
        .unwrap_or_default();
    let mut offsets: Vec<u64> = obj
        .symbols()
        .chain(obj.dynamic_symbols())
        .filter(|s| s.kind() == object::SymbolKind::Text && s.size() > 16)
        .filter_map(|s| {
            let addr = s.address() + 4;
            segments
                .iter()
                .find(|(start, size, _)| (*start..start + size).contains(&addr))
                .map(|(start, _, off)| addr - start + off)
        })
        .collect();
    offsets.sort_unstable();
    offsets.dedup();
    assert!(offsets.len() >= FLUSHES * NEW_FRAMES_PER_FLUSH, "only {} functions in {}", offsets.len(), path.display());

    let mut elf = ElfCache::default();
    let open = || File::open(&path).map_err(|source| ElfError::Open { path: path.clone(), source });
    let image = elf.load(FileIdentity::Path(path.display().to_string()), "libpython", open).expect("loads");
    let strings = Interner::default();
    let step = offsets.len() / (FLUSHES * NEW_FRAMES_PER_FLUSH);
    let flush_keys: Vec<Vec<FrameKey>> = (0..FLUSHES)
        .map(|f| {
            (0..NEW_FRAMES_PER_FLUSH)
                .map(|i| FrameKey::Native {
                    image: image.id,
                    file_offset: offsets[(f * NEW_FRAMES_PER_FLUSH + i) * step],
                })
                .collect()
        })
        .collect();

    let run = |fresh_each_flush: bool| -> Duration {
        let kept = NativeSymbolizer::new();
        let start = Instant::now();
        for keys in &flush_keys {
            let table = if fresh_each_flush {
                SymbolTable::resolve(keys, &strings, &elf, &NativeSymbolizer::new())
            } else {
                SymbolTable::resolve(keys, &strings, &elf, &kept)
            };
            assert!(!table.frames(&keys[0]).is_empty());
        }
        start.elapsed() / FLUSHES as u32
    };
    // Interleaved rounds; the minimum of each is the least disturbed by the machine.
    let (mut fresh, mut kept) = (Duration::MAX, Duration::MAX);
    for _ in 0..3 {
        fresh = fresh.min(run(true));
        kept = kept.min(run(false));
    }
    println!("image: {} ({} functions)", path.display(), offsets.len());
    println!("per flush of {NEW_FRAMES_PER_FLUSH} new native frames, best of 3 rounds of {FLUSHES} flushes:");
    println!("  new symbolizer each flush (before): {:>9.2} ms", fresh.as_secs_f64() * 1e3);
    println!("  one symbolizer kept (now):          {:>9.2} ms", kept.as_secs_f64() * 1e3);
    println!("  ratio before / now:                 {:>9.1}x", fresh.as_secs_f64() / kept.as_secs_f64().max(1e-9));
}
