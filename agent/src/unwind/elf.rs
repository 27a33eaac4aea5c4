//! ELF images of mapped files: opened once per file identity and shared by every process
//! that maps them. An image keeps its descriptor open, so it can still be read (for unwind
//! tables and symbols) after the process that mapped it exits.

use std::collections::HashMap;
use std::fs::File;
use std::ops::{Deref, Range};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use object::{Object, ObjectSection, ObjectSegment};

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
}

impl ElfImage {
    /// The base name, as frame text shows it.
    pub fn basename(&self) -> &str {
        let base = self.path.rsplit('/').next().unwrap_or(&self.path);
        base.strip_prefix('[').and_then(|b| b.strip_suffix(']')).unwrap_or(base)
    }

    pub fn has_cfi(&self) -> bool {
        self.eh_frame.is_some() || self.debug_frame.is_some()
    }

    /// A path through which this process can read the file, whatever happens to the target.
    pub fn fd_path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// Where the file's address 0 lands for a mapping of `pgoff` at `start`.
    pub fn load_bias(&self, start: u64, pgoff: u64) -> u64 {
        let segment = self
            .segments
            .iter()
            .find(|s| pgoff >= s.file_offset && pgoff < s.file_offset + s.file_size.max(1))
            .or_else(|| self.segments.first());
        match segment {
            Some(s) => start.wrapping_sub(s.svma.wrapping_add(pgoff.wrapping_sub(s.file_offset))),
            None => start.wrapping_sub(pgoff),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
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
    pub fn load(&mut self, identity: FileIdentity, display_path: &str, open_path: &Path) -> Option<Arc<ElfImage>> {
        if let Some(known) = self.by_identity.get(&identity) {
            return known.and_then(|id| self.get(id).cloned());
        }
        let loaded = match open_image(ImageId(self.images.len() as u32), display_path, open_path) {
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
        let memfd = bytes().and_then(|b| memfd_with(&b).ok());
        match memfd {
            Some(file) => {
                use std::os::fd::AsRawFd;
                let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
                let image = self.load(identity, display_path, &path);
                drop(file); // the image holds its own descriptor
                image
            }
            None => {
                self.by_identity.insert(identity, None);
                None
            }
        }
    }
}

fn memfd_with(bytes: &[u8]) -> std::io::Result<File> {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    // SAFETY: the name is a valid NUL-terminated string; the returned descriptor is owned here.
    let fd = unsafe { libc::memfd_create(c"ember-image".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(bytes)?;
    Ok(file)
}

fn open_image(id: ImageId, display_path: &str, open_path: &Path) -> Result<ElfImage, ElfError> {
    let file = File::open(open_path).map_err(|source| ElfError::Open { path: open_path.into(), source })?;
    // SAFETY: the mapping is read-only; if the file is truncated underneath us reads could
    // fault, which is the same contract every profiler and debugger accepts for ELF files.
    let map = unsafe { Mmap::map(&file) }.map_err(|source| ElfError::Map { path: open_path.into(), source })?;
    let map = Arc::new(map);
    let obj = object::File::parse(&**map).map_err(|source| ElfError::Parse { path: open_path.into(), source })?;

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
            Some(LoadSegment { file_offset, file_size, svma: s.address() }).filter(|_| file_size > 0)
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
        file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_our_own_executable_once() {
        let exe = std::env::current_exe().expect("current exe");
        let mut cache = ElfCache::default();
        let identity = FileIdentity::Path(exe.display().to_string());
        let a = cache.load(identity.clone(), "self", &exe).expect("own ELF loads");
        let b = cache.load(identity, "self", &exe).expect("cached");
        assert_eq!(a.id, b.id);
        assert_eq!(cache.images().len(), 1);
        assert!(a.has_cfi(), "Rust binaries carry .eh_frame");
        assert!(a.eh_frame_hdr.is_some());
    }

    #[test]
    fn a_missing_file_is_remembered_as_missing() {
        let mut cache = ElfCache::default();
        let id = FileIdentity::Path("/nonexistent".into());
        assert!(cache.load(id.clone(), "/nonexistent", Path::new("/nonexistent")).is_none());
        assert!(cache.load(id, "/nonexistent", Path::new("/nonexistent")).is_none());
        assert!(cache.images().is_empty());
    }
}
