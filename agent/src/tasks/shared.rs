//! Where task rings live: in sealed memory files (memfd), never in a file system.
//!
//! A ring in `/tmp` could be planted by another user (a symlink to a root file that the
//! monitor would then overwrite), read by anyone, or truncated under the target's mapping,
//! which kills the target with SIGBUS. A memfd has no name anyone can reach, is readable only
//! through `/proc/PID/fd` (which needs the same rights as reading the target's memory), and
//! is sealed against shrinking and growing, so no mapping of it can ever fault.
//!
//! - For a command ember launches, the agent makes the ring ([`SharedRing`]) and the command
//!   inherits it (`EMBER_TASK_RING_FD`); the agent reads it from its own descriptor, so it
//!   reads every record even of a process that has already exited.
//! - A program that starts the monitor itself makes its own; the agent finds it among the
//!   process's descriptors ([`find`]).

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};

use super::format::WRITER_PID;
use super::ring::{RingError, RingReader, HEADER_SIZE, MAGIC, RECORD_SIZE, VERSION};
use crate::process::Pid;

/// The memfd's name, as `/proc/PID/fd` shows it: `/memfd:ember-task-ring (deleted)`.
pub const MEMFD_NAME: &str = "ember-task-ring";
/// The variable that tells the monitor which descriptor is its ring.
pub const RING_FD_ENV: &str = "EMBER_TASK_RING_FD";
/// Byte offset of the writer's pid in the header.
const PID_OFFSET: u64 = WRITER_PID as u64 * 8;
/// Slots of a ring the agent makes: 2 MiB of records, the monitor's own default.
pub const DEFAULT_SLOTS: u64 = 1 << 17;
/// Descriptors looked at per process when searching for its ring.
const MAX_FDS_SCANNED: usize = 1 << 16;

/// The seals every ring carries: its size can never change.
fn size_seals() -> SealFlag {
    SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW
}

/// A ring the agent made for a command it launches.
#[derive(Debug)]
pub struct SharedRing {
    file: File,
}

impl SharedRing {
    pub fn create(slots: u64) -> std::io::Result<Self> {
        use std::os::unix::fs::FileExt;
        let fd = memfd_create(MEMFD_NAME, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
        let file = File::from(fd);
        file.set_len(HEADER_SIZE + slots * RECORD_SIZE)?;
        let created = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| (t.tv_sec() as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec() as u64))?;
        // The pid (word 5) is written by the child itself, before it runs the command.
        let header: [u64; 8] =
            [u64::from_le_bytes(*MAGIC), VERSION | RECORD_SIZE << 32, slots, u64::MAX, 0, 0, 0, created];
        let bytes: Vec<u8> = header.iter().flat_map(|w| w.to_le_bytes()).collect();
        file.write_all_at(&bytes, 0)?;
        fcntl(&file, FcntlArg::F_ADD_SEALS(size_seals() | SealFlag::F_SEAL_SEAL))?;
        Ok(Self { file })
    }

    /// The descriptor number, the same in the parent and (inherited) in the child.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Runs in the forked child before exec, so it may only make async-signal-safe calls:
    /// marks the ring with the child's pid and lets the descriptor survive exec.
    pub fn prepare_child(&self) {
        let fd = self.file.as_raw_fd();
        // SAFETY: getpid, pwrite and fcntl are async-signal-safe; the buffer lives on this
        // stack and `fd` stays open for the duration of the calls.
        unsafe {
            let pid = (libc::getpid() as u64).to_le_bytes();
            libc::pwrite(fd, pid.as_ptr().cast(), pid.len(), PID_OFFSET as libc::off_t);
            libc::fcntl(fd, libc::F_SETFD, 0);
        }
    }

    /// A reader of this ring, on a descriptor of its own.
    pub fn reader(&self) -> Result<RingReader, RingError> {
        let path = PathBuf::from(format!("memfd:{MEMFD_NAME}"));
        let file = self.file.try_clone().map_err(|source| RingError::Io { path: path.clone(), source })?;
        RingReader::from_file(file, path)
    }
}

/// The ring that process `pid` (`ns_pid` in its own namespace) made itself, if it has one.
/// Only a sealed memfd whose header names the process as its writer is taken, so a forked
/// child's inherited copy of its parent's ring is not read twice.
pub fn find(pid: Pid, ns_pid: u32) -> Option<RingReader> {
    // Most processes have no ring: one read of their maps says so without a look at each fd.
    let maps = crate::process::procfs::maps(pid).ok()?;
    let wanted = format!("/memfd:{MEMFD_NAME}");
    if !maps.iter().any(|m| m.path.starts_with(&wanted)) {
        return None;
    }
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    for entry in dir.flatten().take(MAX_FDS_SCANNED) {
        let is_ring = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.as_os_str().as_encoded_bytes().starts_with(wanted.as_bytes()));
        if !is_ring {
            continue;
        }
        match open_found(entry.path(), ns_pid) {
            Ok(reader) => return Some(reader),
            Err(e) => tracing::debug!(%pid, "not a task ring: {e}"),
        }
    }
    None
}

fn open_found(path: PathBuf, ns_pid: u32) -> Result<RingReader, RingError> {
    // The target may have swapped the descriptor for a FIFO or a device since we read its
    // link: it is resolved without being opened first, and only a regular file is opened.
    let file = crate::process::target_file::open_magic_link(&path.to_string_lossy())
        .map_err(|e| RingError::Io { path: path.clone(), source: std::io::Error::other(e.to_string()) })?;
    let seals = fcntl(&file, FcntlArg::F_GET_SEALS).map(SealFlag::from_bits_truncate);
    if !seals.is_ok_and(|s| s.contains(size_seals())) {
        return Err(RingError::NotSealed(path));
    }
    let reader = RingReader::from_file(file, path.clone())?;
    if reader.writer_pid()? != u64::from(ns_pid) {
        return Err(RingError::OtherWriter(path));
    }
    Ok(reader)
}
