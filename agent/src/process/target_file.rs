//! Opening files that a target (or another local user) controls, from an agent that may run
//! as root. See docs/SECURITY.md.
//!
//! Every path is resolved inside the target's root (`/proc/PID/root`), one component at a
//! time with `O_NOFOLLOW`, so no symlink anywhere on the way is followed: a planted
//! `/tmp/perf-N.map -> /etc/shadow` fails to open instead of being read. The last component
//! is first opened `O_PATH`, which opens nothing (no FIFO blocks, no device driver runs), and
//! only a regular file is then opened for reading, non-blocking, through that descriptor.
//! Where the caller asks for it, the owner must be one of the target's uids (or root), the
//! file must have a single link (no hard link to someone else's file) and sit on the same
//! mount as its directory (no file bind-mounted over the name from a user namespace).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;

use super::ids::Pid;

#[derive(Debug, thiserror::Error)]
pub enum TargetFileError {
    #[error("it does not exist")]
    Missing,
    #[error("a component of its path is a symbolic link, and ember follows no links in a target's files")]
    Symlink,
    #[error("it is not a regular file")]
    NotRegular,
    #[error("it is owned by uid {owner}, neither the target (uids {expected:?}) nor root")]
    Owner { owner: u32, expected: Vec<u32> },
    #[error("it has {0} hard links, where a file the target wrote itself has one")]
    Links(u64),
    #[error("it is a mount point (a file mounted over the name), not a file the target wrote")]
    Mounted,
    #[error("{0}")]
    Io(#[source] io::Error),
}

impl From<Errno> for TargetFileError {
    fn from(errno: Errno) -> Self {
        match errno {
            Errno::ENOENT => TargetFileError::Missing,
            // O_NOFOLLOW on a link gives ELOOP; O_DIRECTORY on one gives ENOTDIR.
            Errno::ELOOP => TargetFileError::Symlink,
            other => TargetFileError::Io(io::Error::from(other)),
        }
    }
}

/// Who may own a file before ember reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// Anyone: files the target merely maps (shared libraries), whose content only names
    /// code and never reaches the user as text beyond symbol names.
    Anyone,
    /// One of these uids, or root; and a single link.
    OneOf(Vec<u32>),
}

/// Opens `components` (e.g. `["tmp", "perf-42.map"]`) inside the root of `pid`, read-only.
pub fn open_in_root(pid: Pid, components: &[&str], owner: &Owner) -> Result<File, TargetFileError> {
    let root: OwnedFd = nix::fcntl::open(
        format!("/proc/{pid}/root").as_str(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    open_beneath(root, components, owner)
}

/// Opens a path as it appears in `/proc/PID/maps` (absolute, already free of links when the
/// kernel printed it) inside the root of `pid`.
pub fn open_mapped_path(pid: Pid, path: &str) -> Result<File, TargetFileError> {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    if components.is_empty() || components.contains(&"..") {
        return Err(TargetFileError::Missing);
    }
    open_in_root(pid, &components, &Owner::Anyone)
}

/// Opens `path`, as `/proc/PID/maps` printed it, in ember's own root, if it is the very file
/// mapped there (`dev_inode`: major, minor, inode): a target chroot'ed inside ember's root has
/// its maps printed relative to ember's root, which its own root does not hold.
pub fn open_mapped_here(path: &str, dev_inode: (u32, u32, u64)) -> Result<File, TargetFileError> {
    use std::os::unix::fs::MetadataExt;
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    if components.is_empty() || components.contains(&"..") {
        return Err(TargetFileError::Missing);
    }
    let root: OwnedFd = nix::fcntl::open("/", OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
    let file = open_beneath(root, &components, &Owner::Anyone)?;
    let meta = file.metadata().map_err(TargetFileError::Io)?;
    let dev = meta.dev();
    let here = (nix::sys::stat::major(dev) as u32, nix::sys::stat::minor(dev) as u32, meta.ino());
    if here != dev_inode {
        return Err(TargetFileError::Missing);
    }
    Ok(file)
}

/// Walks `components` from the directory `dir` without following any link, then checks the
/// file. Split from [`open_in_root`] so tests can run it on their own directories.
pub fn open_beneath(mut dir: OwnedFd, components: &[&str], owner: &Owner) -> Result<File, TargetFileError> {
    let Some((last, parents)) = components.split_last() else { return Err(TargetFileError::Missing) };
    for component in parents {
        if component.contains('/') || *component == ".." {
            return Err(TargetFileError::Missing);
        }
        dir = openat(
            dir.as_fd(),
            *component,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| if e == Errno::ENOTDIR { TargetFileError::Symlink } else { e.into() })?;
    }
    if last.contains('/') || *last == ".." {
        return Err(TargetFileError::Missing);
    }
    // O_PATH opens nothing: a FIFO does not block and a device's driver never runs.
    let path = openat(dir.as_fd(), *last, OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())?;
    let path = File::from(path);
    let meta = path.metadata().map_err(TargetFileError::Io)?;
    if meta.file_type().is_symlink() {
        return Err(TargetFileError::Symlink);
    }
    if !meta.file_type().is_file() {
        return Err(TargetFileError::NotRegular);
    }
    if let Owner::OneOf(uids) = owner {
        if meta.uid() != 0 && !uids.contains(&meta.uid()) {
            return Err(TargetFileError::Owner { owner: meta.uid(), expected: uids.clone() });
        }
        if meta.nlink() != 1 {
            return Err(TargetFileError::Links(meta.nlink()));
        }
        if mount_id(&path) != mount_id(&dir) {
            return Err(TargetFileError::Mounted);
        }
    }
    reopen_for_reading(&path)
}

/// Opens a `/proc` magic link (`/proc/PID/fd/N`, `/proc/PID/map_files/…`), which must be
/// followed, to a regular file only: the link is resolved `O_PATH` first, so whatever the
/// target has put there, no device is opened and no FIFO blocks.
pub fn open_magic_link(path: &str) -> Result<File, TargetFileError> {
    let fd = nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())?;
    let fd = File::from(fd);
    if !fd.metadata().map_err(TargetFileError::Io)?.file_type().is_file() {
        return Err(TargetFileError::NotRegular);
    }
    reopen_for_reading(&fd)
}

/// Opens for reading the very file an `O_PATH` descriptor holds, never blocking.
pub fn reopen_for_reading(path: &File) -> Result<File, TargetFileError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(format!("/proc/self/fd/{}", path.as_raw_fd()))
        .map_err(TargetFileError::Io)?;
    Ok(file)
}

/// The id of the mount a descriptor's file is on (`statx`, Linux 5.8+); `None` where the
/// kernel cannot say, which then passes (an older kernel loses only this one check).
fn mount_id(fd: &impl AsFd) -> Option<u64> {
    use std::os::fd::AsRawFd;
    // SAFETY: `buf` is a valid statx buffer, the path is an empty NUL-terminated string used
    // with AT_EMPTY_PATH, and the descriptor stays open for the call.
    let (rc, buf) = unsafe {
        let mut buf: libc::statx = std::mem::zeroed();
        let rc = libc::statx(fd.as_fd().as_raw_fd(), c"".as_ptr(), libc::AT_EMPTY_PATH, libc::STATX_MNT_ID, &mut buf);
        (rc, buf)
    };
    (rc == 0 && buf.stx_mask & libc::STATX_MNT_ID != 0).then_some(buf.stx_mnt_id)
}

/// A short, escaped excerpt of bytes read from a target, safe to put in a log line.
pub fn excerpt(bytes: &[u8]) -> String {
    const MAX: usize = 48;
    let shown = &bytes[..bytes.len().min(MAX)];
    let mut text: String = shown.escape_ascii().to_string();
    if bytes.len() > MAX {
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_fd(path: &std::path::Path) -> OwnedFd {
        nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).expect("dir opens")
    }

    #[test]
    fn refuses_links_fifos_and_foreign_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).expect("mkdir");
        std::fs::write(tmp.join("ok.map"), b"1000 b py::f:x.py\n").expect("write");
        let me = std::fs::metadata(dir.path()).expect("stat").uid();
        let mine = Owner::OneOf(vec![me]);
        assert!(open_beneath(dir_fd(dir.path()), &["tmp", "ok.map"], &mine).is_ok());

        std::os::unix::fs::symlink(tmp.join("ok.map"), tmp.join("link.map")).expect("symlink");
        let err = open_beneath(dir_fd(dir.path()), &["tmp", "link.map"], &mine).expect_err("link refused");
        assert!(matches!(err, TargetFileError::Symlink), "{err}");

        // A link in a parent component is refused too.
        std::os::unix::fs::symlink(&tmp, dir.path().join("tmp2")).expect("symlink");
        let err = open_beneath(dir_fd(dir.path()), &["tmp2", "ok.map"], &mine).expect_err("dir link refused");
        assert!(matches!(err, TargetFileError::Symlink), "{err}");

        nix::unistd::mkfifo(&tmp.join("fifo.map"), Mode::from_bits_truncate(0o600)).expect("mkfifo");
        let err = open_beneath(dir_fd(dir.path()), &["tmp", "fifo.map"], &mine).expect_err("fifo refused");
        assert!(matches!(err, TargetFileError::NotRegular), "{err}");

        std::fs::hard_link(tmp.join("ok.map"), tmp.join("hard.map")).expect("hard link");
        let err = open_beneath(dir_fd(dir.path()), &["tmp", "hard.map"], &mine).expect_err("2 links refused");
        assert!(matches!(err, TargetFileError::Links(2)), "{err}");
        assert!(open_beneath(dir_fd(dir.path()), &["tmp", "hard.map"], &Owner::Anyone).is_ok());

        let err = open_beneath(dir_fd(dir.path()), &["tmp", "..", "tmp", "ok.map"], &mine).expect_err("..");
        assert!(matches!(err, TargetFileError::Missing), "{err}");
        let err = open_beneath(dir_fd(dir.path()), &["tmp", "none.map"], &mine).expect_err("missing");
        assert!(matches!(err, TargetFileError::Missing), "{err}");
    }

    #[test]
    fn excerpts_are_short_and_escaped() {
        assert_eq!(excerpt(b"root:$6$abc\n\x1b[31m"), "root:$6$abc\\n\\x1b[31m");
        let long = excerpt(&[b'a'; 100]);
        assert!(long.ends_with('…') && long.len() < 60, "{long}");
    }
}
