//! How ember reads a target: its executable mappings, its memory (to check trampolines and
//! copy the vDSO) and the files it maps. The live target goes through `/proc` and
//! `process_vm_readv`; a replay case (see [`crate::replay`]) answers from its recording, so
//! the same process state and unwind code run on both.

use std::fmt::Debug;
use std::fs::File;

use super::ids::Pid;
use super::procfs::{self, MapsLine, ProcfsError};
use super::{memory, target_file};
use crate::unwind::ElfError;

pub trait TargetAccess: Debug + Send + Sync {
    /// The target's mappings, as `/proc/PID/maps` lists them.
    fn maps(&self) -> Result<Vec<MapsLine>, ProcfsError>;
    /// `len` bytes of the target's memory at `addr`, or `None` if they cannot be read.
    fn read_memory(&self, addr: u64, len: usize) -> Option<Vec<u8>>;
    /// Up to `len` bytes at `addr`, ending where the mapped memory does.
    fn read_memory_up_to(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        self.read_memory(addr, len)
    }
    /// Several ranges at once: a live target copies them in one system call, so together
    /// they show the target at (nearly) one moment. `None` for a range that cannot be read.
    fn read_memory_at_once(&self, ranges: &[(u64, usize)]) -> Vec<Option<Vec<u8>>> {
        ranges.iter().map(|&(addr, len)| self.read_memory(addr, len)).collect()
    }
    /// The file mapped at `start..end` under `path`.
    fn open_mapped(&self, path: &str, start: u64, end: u64) -> Result<File, ElfError>;
    /// Whether the target still runs (when not, perf-map lines are trusted by their size).
    fn alive(&self) -> bool;
}

/// A running process, read through `/proc` and `process_vm_readv`.
#[derive(Debug, Clone, Copy)]
pub struct LiveTarget(pub Pid);

impl TargetAccess for LiveTarget {
    fn maps(&self) -> Result<Vec<MapsLine>, ProcfsError> {
        procfs::maps(self.0)
    }

    fn read_memory(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        memory::read(self.0, addr, len)
    }

    fn read_memory_up_to(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        memory::read_up_to(self.0, addr, len)
    }

    fn read_memory_at_once(&self, ranges: &[(u64, usize)]) -> Vec<Option<Vec<u8>>> {
        memory::read_many(self.0, ranges)
    }

    fn open_mapped(&self, path: &str, start: u64, end: u64) -> Result<File, ElfError> {
        let pid = self.0;
        // The path as the kernel printed it, resolved in the target's root without following
        // links; else the mapped file itself (needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE).
        target_file::open_mapped_path(pid, path).or_else(|first| {
            let exact = format!("/proc/{pid}/map_files/{start:x}-{end:x}");
            target_file::open_magic_link(&exact)
                .or_else(|_| {
                    // A target chroot'ed inside ember's root: the maps name the file as ember
                    // sees it. Taken only if it is the file mapped (device and inode).
                    let maps = procfs::maps(pid).map_err(|_| target_file::TargetFileError::Missing)?;
                    let mapped = maps.iter().find(|m| m.start == start && m.end == end && m.path == path);
                    let dev_inode = mapped.and_then(|m| m.dev_inode).ok_or(target_file::TargetFileError::Missing)?;
                    target_file::open_mapped_here(path, dev_inode)
                })
                .map_err(|_| ElfError::Target { path: path.into(), source: first })
        })
    }

    fn alive(&self) -> bool {
        procfs::process_exists(self.0)
    }
}
