//! ELF images of mapped files: opened once per file identity and shared by every process
//! that maps them. An image keeps its descriptor open, so it can still be read (for unwind
//! tables and symbols) after the process that mapped it exits.

use std::collections::HashMap;
use std::fs::File;
use std::ops::{Deref, Range};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use memmap2::Mmap;
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SymbolKind};

/// A slice of a memory-mapped file that framehop can hold on to.
#[derive(Debug, Clone)]
pub struct SectionBytes {
    map: Arc<Mmap>,
    range: Range<usize>,
}

impl Deref for SectionBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.map.get(self.range.clone()).unwrap_or(&[])
    }
}

/// Handle of a loaded image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageId(pub u32);

/// What makes two mappings the same file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FileIdentity {
    DevInode(u32, u32, u64),
    Path(String),
}

#[derive(Debug)]
pub struct Section {
    pub svma: Range<u64>,
    pub bytes: SectionBytes,
}

/// A PT_LOAD segment: file offset range and its address in the file's own address space.
#[derive(Debug, Clone, Copy)]
pub struct LoadSegment {
    pub file_offset: u64,
    pub file_size: u64,
    pub svma: u64,
    pub executable: bool,
}

#[derive(Debug)]
pub struct ElfImage {
    pub id: ImageId,
    /// The path as the target sees it; shown as the module name.
    pub path: String,
    pub build_id: Option<Vec<u8>>,
    /// Held open so the file stays readable through `/proc/self/fd/N`.
    pub file: File,
    pub text: Option<Section>,
    pub eh_frame: Option<Section>,
    pub eh_frame_hdr: Option<Section>,
    pub debug_frame: Option<Section>,
    pub got: Option<Range<u64>>,
    pub segments: Vec<LoadSegment>,
    /// Its PLT stubs' names, which no symbol table holds.
    pub plt: crate::symbolize::plt::PltStubs,
    /// The ELF entry point (`e_entry`, an svma), where a program's first instruction is.
    pub entry: Option<u64>,
    /// The whole file, for the code bytes before return addresses.
    map: Arc<Mmap>,
    /// Function symbols, read the first time code without CFI is unwound (see [`functions`]).
    ///
    /// [`functions`]: ElfImage::function_at
    functions: OnceLock<Vec<Function>>,
}

/// A function symbol: start svma, size (0 if unknown) and name.
#[derive(Debug)]
pub struct Function {
    pub start: u64,
    pub size: u64,
    pub name: Box<str>,
}

/// Most function symbols kept per image, bounding what a hostile file can make ember hold.
const MAX_FUNCTIONS: usize = 1 << 20;

impl ElfImage {
    /// The base name, as frame text shows it.
    pub fn basename(&self) -> &str {
        let base = self.path.rsplit('/').next().unwrap_or(&self.path);
        base.strip_prefix('[').and_then(|b| b.strip_suffix(']')).unwrap_or(base)
    }

    pub fn has_cfi(&self) -> bool {
        self.eh_frame.is_some() || self.debug_frame.is_some()
    }

    /// The file's bytes at `offsets`, cut to what the file holds.
    pub fn file_bytes(&self, offsets: Range<u64>) -> &[u8] {
        let len = self.map.len() as u64;
        let (start, end) = (offsets.start.min(len), offsets.end.min(len));
        self.map.get(start as usize..end.max(start) as usize).unwrap_or(&[])
    }

    /// The function symbol (`.symtab`, else `.dynsym`) containing `svma`: the nearest one at or
    /// below it, if its size reaches `svma` (or it has none).
    pub fn function_at(&self, svma: u64) -> Option<&Function> {
        let functions = self.functions.get_or_init(|| read_functions(&self.map));
        let i = functions.partition_point(|f| f.start <= svma).checked_sub(1)?;
        let f = &functions[i];
        (f.size == 0 || svma - f.start < f.size).then_some(f)
    }

    /// Sets the function symbols instead of reading them from the file (a replay case's file
    /// holds no symbol table); ignored once they are known.
    pub(crate) fn set_functions(&self, mut functions: Vec<Function>) {
        functions.sort_unstable_by_key(|f| f.start);
        let _ = self.functions.set(functions);
    }

    /// The svma of each named symbol, from `.dynsym` (which stripped builds keep), then
    /// `.symtab`; `None` for a name the file does not define.
    pub fn symbol_addresses<const N: usize>(&self, names: [&str; N]) -> [Option<u64>; N] {
        let mut found = [None; N];
        let Ok(obj) = object::File::parse(&**self.map) else { return found };
        for symbol in obj.dynamic_symbols().chain(obj.symbols()) {
            if symbol.is_undefined() {
                continue;
            }
            let Ok(name) = symbol.name() else { continue };
            if let Some(i) = names.iter().position(|n| *n == name) {
                found[i].get_or_insert(symbol.address());
            }
        }
        found
    }

    /// The file offset of `svma`, through the PT_LOAD segment that holds it.
    pub fn offset_of_svma(&self, svma: u64) -> Option<u64> {
        let s = self.segments.iter().find(|s| svma >= s.svma && svma - s.svma < s.file_size)?;
        Some(s.file_offset + (svma - s.svma))
    }

    /// A path through which this process can read the file, whatever happens to the target.
    pub fn fd_path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// Where the file's address 0 lands for an executable mapping of `pgoff` at `start`.
    pub fn load_bias(&self, start: u64, pgoff: u64) -> u64 {
        load_bias(&self.segments, start, pgoff)
    }
}

/// Mappings start at page boundaries; segments need not.
const PAGE: u64 = 4096;

/// See [`ElfImage::load_bias`]. One page can hold the end of one segment and the start of the
/// next, at addresses a page apart (GNU ld's layout for Rust and C shared objects often does
/// this), so the executable segment whose pages hold `pgoff` is taken first.
fn load_bias(segments: &[LoadSegment], start: u64, pgoff: u64) -> u64 {
    let holds = |s: &&LoadSegment| pgoff >= s.file_offset & !(PAGE - 1) && pgoff < s.file_offset + s.file_size.max(1);
    let segment = segments
        .iter()
        .filter(holds)
        .find(|s| s.executable)
        .or_else(|| segments.iter().find(holds))
        .or_else(|| segments.first());
    match segment {
        Some(s) => start.wrapping_sub(s.svma.wrapping_add(pgoff.wrapping_sub(s.file_offset))),
        None => start.wrapping_sub(pgoff),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("cannot open {path}: {source}")]
    Target { path: PathBuf, source: crate::process::target_file::TargetFileError },
    #[error("{path} is not a regular file")]
    NotRegular { path: PathBuf },
    #[error("{path} is {len} bytes: larger than ember copies, or past what it copies in all")]
    TooLarge { path: PathBuf, len: u64 },
    #[error("cannot copy an image into memory: {source}")]
    Copy { source: std::io::Error },
    #[error("the bytes of an in-memory image could not be read")]
    Unreadable,
    #[error("cannot map {path}: {source}")]
    Map { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a readable ELF file: {source}")]
    Parse { path: PathBuf, source: object::Error },
}

/// All images loaded during a recording.
#[derive(Debug, Default)]
pub struct ElfCache {
    images: Vec<Arc<ElfImage>>,
    by_identity: HashMap<FileIdentity, Option<ImageId>>,
    by_build_id: HashMap<Vec<u8>, ImageId>,
    /// Bytes of images copied into memory so far (see [`stable`]), bounded by
    /// [`MAX_COPIED_TOTAL`] so targets mapping many large files cannot exhaust memory.
    copied_bytes: u64,
}

impl ElfCache {
    pub fn get(&self, id: ImageId) -> Option<&Arc<ElfImage>> {
        self.images.get(id.0 as usize)
    }

    pub fn images(&self) -> &[Arc<ElfImage>] {
        &self.images
    }

    /// Loads the file behind a mapping once. A file that failed to load is remembered, so it
    /// is not retried for every sample.
    pub fn load(
        &mut self,
        identity: FileIdentity,
        display_path: &str,
        open: impl FnOnce() -> Result<File, ElfError>,
    ) -> Option<Arc<ElfImage>> {
        if let Some(known) = self.by_identity.get(&identity) {
            return known.and_then(|id| self.get(id).cloned());
        }
        let id = ImageId(self.images.len() as u32);
        let loaded = match open().and_then(|file| open_image(id, display_path, file, &mut self.copied_bytes)) {
            Ok(image) => {
                let reuse = image.build_id.as_ref().and_then(|b| self.by_build_id.get(b)).copied();
                match reuse {
                    Some(id) => Some(id),
                    None => {
                        let id = image.id;
                        if let Some(build_id) = &image.build_id {
                            self.by_build_id.insert(build_id.clone(), id);
                        }
                        self.images.push(Arc::new(image));
                        Some(id)
                    }
                }
            }
            Err(e) => {
                tracing::debug!("no unwind info or symbols for {display_path}: {e}");
                None
            }
        };
        self.by_identity.insert(identity, loaded);
        loaded.and_then(|id| self.get(id).cloned())
    }

    /// Loads an image that exists only in memory, such as the kernel's vDSO, by copying its
    /// bytes into an anonymous memory file.
    pub fn load_bytes(
        &mut self,
        identity: FileIdentity,
        display_path: &str,
        bytes: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Option<Arc<ElfImage>> {
        if let Some(known) = self.by_identity.get(&identity) {
            return known.and_then(|id| self.get(id).cloned());
        }
        self.load(identity, display_path, || {
            let bytes = bytes().ok_or(ElfError::Unreadable)?;
            sealed_copy(&mut &bytes[..], bytes.len() as u64).map_err(|source| ElfError::Copy { source })
        })
    }
}

/// Largest image ember copies (see [`stable`]); larger untrusted files get no unwind info or
/// symbols.
const MAX_COPIED_IMAGE: u64 = 1 << 30;
/// Most bytes copied over all images of a recording.
const MAX_COPIED_TOTAL: u64 = 2 << 30;

/// A file that cannot change under the mapping ember reads it through. A file only root can
/// write is used as it is; any other (a library in a user's virtualenv, a file in /tmp) could
/// be truncated by its owner while mapped, and reading a truncated mapping kills the reader
/// with SIGBUS. Those are copied into a sealed memory file, which can never shrink.
fn stable(file: File, path: &str, copied_bytes: &mut u64) -> Result<File, ElfError> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().map_err(|source| ElfError::Open { path: path.into(), source })?;
    if !meta.file_type().is_file() {
        return Err(ElfError::NotRegular { path: path.into() });
    }
    let only_root_writes = meta.uid() == 0 && meta.mode() & 0o022 == 0;
    if only_root_writes || cannot_shrink(&file) {
        return Ok(file);
    }
    if meta.len() > MAX_COPIED_IMAGE || copied_bytes.saturating_add(meta.len()) > MAX_COPIED_TOTAL {
        return Err(ElfError::TooLarge { path: path.into(), len: meta.len() });
    }
    let mut from_start = std::io::BufReader::new(&file);
    std::io::Seek::rewind(&mut from_start).map_err(|source| ElfError::Copy { source })?;
    let copy = sealed_copy(&mut from_start, meta.len()).map_err(|source| ElfError::Copy { source })?;
    *copied_bytes += copy.metadata().map_or(meta.len(), |m| m.len());
    Ok(copy)
}

/// A memfd sealed against shrinking (one of ours, such as the vDSO's copy).
fn cannot_shrink(file: &File) -> bool {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    fcntl(file, FcntlArg::F_GET_SEALS).is_ok_and(|s| SealFlag::from_bits_truncate(s).contains(SealFlag::F_SEAL_SHRINK))
}

/// Copies at most [`MAX_COPIED_IMAGE`] bytes into a memfd sealed against any change.
fn sealed_copy(source: &mut impl std::io::Read, expected_len: u64) -> std::io::Result<File> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let fd = memfd_create(c"ember-image", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    let mut file = File::from(fd);
    let copied = std::io::copy(&mut std::io::Read::take(source, MAX_COPIED_IMAGE), &mut file)?;
    if copied < expected_len.min(MAX_COPIED_IMAGE) {
        tracing::debug!("image shrank while copied ({copied} of {expected_len} bytes)");
    }
    let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SEAL;
    fcntl(&file, FcntlArg::F_ADD_SEALS(seals))?;
    Ok(file)
}

/// A memfd of `len` bytes holding `extents` at their offsets and zeros elsewhere, sealed as a
/// copied image is: how a replay case's image, recorded in part, is opened.
pub(crate) fn sealed_sparse<'a>(len: u64, extents: impl IntoIterator<Item = (u64, &'a [u8])>) -> std::io::Result<File> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MFdFlags};
    use std::os::unix::fs::FileExt;
    if len > MAX_COPIED_IMAGE {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "image larger than ember copies"));
    }
    let fd = memfd_create(c"ember-replay-image", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    let file = File::from(fd);
    // tmpfs keeps the holes sparse: only the recorded extents take memory.
    file.set_len(len)?;
    for (offset, bytes) in extents {
        let fits = offset.checked_add(bytes.len() as u64).is_some_and(|end| end <= len);
        if !fits {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "extent past the end of the image"));
        }
        file.write_all_at(bytes, offset)?;
    }
    let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SEAL;
    fcntl(&file, FcntlArg::F_ADD_SEALS(seals))?;
    Ok(file)
}

/// The sections whose bytes unwinding reads (framehop's DWARF CFI). `.text` and `.got` are
/// used only for their addresses: framehop reads code bytes only for Mach-O and PE.
pub(crate) const CFI_SECTIONS: [&str; 3] = [".eh_frame", ".eh_frame_hdr", ".debug_frame"];

fn open_image(id: ImageId, display_path: &str, file: File, copied_bytes: &mut u64) -> Result<ElfImage, ElfError> {
    let file = stable(file, display_path, copied_bytes)?;
    // SAFETY: the mapping is read-only, and the file is either writable by root alone or a
    // sealed memfd that cannot shrink, so no page of the mapping can disappear under us.
    let map = unsafe { Mmap::map(&file) }.map_err(|source| ElfError::Map { path: display_path.into(), source })?;
    let map = Arc::new(map);
    let obj = object::File::parse(&**map).map_err(|source| ElfError::Parse { path: display_path.into(), source })?;

    let section = |name: &str| -> Option<Section> {
        let s = obj.section_by_name(name)?;
        let (offset, size) = s.file_range()?;
        if s.compressed_file_range().ok()?.format != object::CompressionFormat::None {
            return None;
        }
        let range = usize::try_from(offset).ok()?..usize::try_from(offset + size).ok()?;
        (range.end <= map.len()).then(|| Section {
            svma: s.address()..s.address() + s.size(),
            bytes: SectionBytes { map: map.clone(), range },
        })
    };
    let segments = obj
        .segments()
        .filter_map(|s| {
            let (file_offset, file_size) = s.file_range();
            let executable =
                matches!(s.flags(), object::SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0);
            Some(LoadSegment { file_offset, file_size, svma: s.address(), executable }).filter(|_| file_size > 0)
        })
        .collect();
    let got = obj.section_by_name(".got").map(|s| s.address()..s.address() + s.size());
    Ok(ElfImage {
        id,
        path: display_path.to_string(),
        build_id: obj.build_id().ok().flatten().map(<[u8]>::to_vec),
        text: section(".text"),
        eh_frame: section(".eh_frame"),
        eh_frame_hdr: section(".eh_frame_hdr"),
        debug_frame: section(".debug_frame"),
        got,
        segments,
        plt: crate::symbolize::plt::PltStubs::parse(&obj),
        entry: Some(obj.entry()).filter(|&e| e != 0),
        file,
        map,
        functions: OnceLock::new(),
    })
}

/// The function symbols of an ELF file, sorted by address; on a parse error, none.
pub(crate) fn read_functions(bytes: &[u8]) -> Vec<Function> {
    let Ok(obj) = object::File::parse(bytes) else { return Vec::new() };
    let symbols = if obj.symbol_table().is_some() { obj.symbols() } else { obj.dynamic_symbols() };
    let mut functions: Vec<Function> = symbols
        .filter(|s| s.kind() == SymbolKind::Text && s.is_definition())
        .take(MAX_FUNCTIONS)
        .filter_map(|s| Some(Function { start: s.address(), size: s.size(), name: s.name().ok()?.into() }))
        .collect();
    functions.sort_unstable_by_key(|f| (f.start, std::cmp::Reverse(f.size)));
    functions.dedup_by_key(|f| f.start);
    functions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_executable_segment_sets_the_bias_of_a_page_it_shares() {
        // ember's own task-monitor module, as GNU ld laid it out: the read-only segment ends
        // and the executable one starts in file page 0x11000, mapped a page higher.
        let segment =
            |file_offset, file_size, svma, executable| LoadSegment { file_offset, file_size, svma, executable };
        let segments = [segment(0, 0x112dc, 0, false), segment(0x112dc, 0x38fb4, 0x122dc, true)];
        let start = 0x7f00_0001_2000;
        assert_eq!(load_bias(&segments, start, 0x11000), 0x7f00_0000_0000);
        // Where offsets and addresses agree, the page's own segment gives the bias.
        let flat = [segment(0, 0x1000, 0, false), segment(0x1000, 0x5000, 0x1000, true)];
        assert_eq!(load_bias(&flat, 0x7f00_0000_1000, 0x1000), 0x7f00_0000_0000);
    }

    #[test]
    fn loads_our_own_executable_once() {
        let exe = std::env::current_exe().expect("current exe");
        let mut cache = ElfCache::default();
        let identity = FileIdentity::Path(exe.display().to_string());
        let open = || File::open(&exe).map_err(|source| ElfError::Open { path: exe.clone(), source });
        let a = cache.load(identity.clone(), "self", open).expect("own ELF loads");
        let b = cache.load(identity, "self", open).expect("cached");
        assert_eq!(a.id, b.id);
        assert_eq!(cache.images().len(), 1);
        assert!(a.has_cfi(), "Rust binaries carry .eh_frame");
        assert!(a.eh_frame_hdr.is_some());
    }

    #[test]
    fn an_image_others_could_truncate_is_copied_and_loads() {
        use std::os::unix::fs::PermissionsExt;
        let exe = std::env::current_exe().expect("current exe");
        let dir = tempfile::tempdir().expect("tempdir");
        let copy = dir.path().join("exe");
        std::fs::copy(&exe, &copy).expect("copy");
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let mut cache = ElfCache::default();
        let open = || File::open(&copy).map_err(|source| ElfError::Open { path: copy.clone(), source });
        let image = cache.load(FileIdentity::Path("copy".into()), "copy", open).expect("loads from its sealed copy");
        assert!(cannot_shrink(&image.file), "mapped through a sealed memfd");
        // Truncating the original no longer reaches the mapping.
        std::fs::OpenOptions::new().write(true).open(&copy).expect("open").set_len(0).expect("truncate");
        assert!(image.eh_frame.as_ref().is_some_and(|s| s.bytes.iter().any(|&b| b != 0)), "still readable");
        // A copy made in memory (the vDSO's) is used as it is.
        let bytes = std::fs::read(&exe).expect("read");
        let vdso = cache.load_bytes(FileIdentity::Path("bytes".into()), "bytes", || Some(bytes)).expect("loads");
        assert!(vdso.has_cfi());
    }

    #[test]
    fn a_missing_file_is_remembered_as_missing() {
        let mut cache = ElfCache::default();
        let id = FileIdentity::Path("/nonexistent".into());
        let open =
            || File::open("/nonexistent").map_err(|source| ElfError::Open { path: "/nonexistent".into(), source });
        assert!(cache.load(id.clone(), "/nonexistent", open).is_none());
        assert!(cache.load(id, "/nonexistent", open).is_none());
        assert!(cache.images().is_empty());
    }
}
