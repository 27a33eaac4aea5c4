//! The script a target runs to turn its trampoline on, placed where the target can read it: its
//! own `/tmp`, reached through `/proc/PID/root` (so a container's, or a private /tmp). The
//! directory is opened without following a link, and the file created new (`O_EXCL`, no link
//! followed) under a random name: nothing the target's users planted is written or followed.

use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::os::fd::OwnedFd;

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::process::Pid;

/// Turns the trampoline on unless it is already on (activating twice crashes some versions at
/// exit, cpython#146522), binding no name in the module the target runs it in.
pub const ACTIVATE_TRAMPOLINE: &str = "__import__('sys').is_stack_trampoline_active() or \
     __import__('sys').activate_stack_trampoline('perf')\n";

#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("cannot open the target's /tmp ({path}) without following a link: {cause}")]
    Directory { path: String, cause: nix::Error },
    #[error("cannot create {path} in the target's /tmp: {cause}")]
    Create { path: String, cause: nix::Error },
    #[error("cannot write {path}: {cause}")]
    Write { path: String, cause: std::io::Error },
}

/// A script file in the target's `/tmp`, removed when dropped.
#[derive(Debug)]
pub struct PlacedScript {
    dir: OwnedFd,
    name: String,
    /// The path as the target sees it.
    pub target_path: String,
}

impl PlacedScript {
    /// Writes `text` to a new file in process `pid`'s `/tmp`.
    pub fn place(pid: Pid, text: &str) -> Result<Self, ScriptError> {
        let dir_path = format!("/proc/{pid}/root/tmp");
        let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
        let dir = nix::fcntl::open(dir_path.as_str(), flags, Mode::empty())
            .map_err(|cause| ScriptError::Directory { path: dir_path.clone(), cause })?;
        let name = format!("ember-activate-{:016x}.py", random_u64());
        let path = format!("{dir_path}/{name}");
        let create = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(&dir, name.as_str(), create, Mode::from_bits_truncate(0o644))
            .map_err(|cause| ScriptError::Create { path: path.clone(), cause })?;
        let placed = PlacedScript { dir, name: name.clone(), target_path: format!("/tmp/{name}") };
        // The target's user must read it whatever ember's umask.
        fchmod(&fd, Mode::from_bits_truncate(0o644))
            .map_err(|cause| ScriptError::Create { path: path.clone(), cause })?;
        File::from(fd).write_all(text.as_bytes()).map_err(|cause| ScriptError::Write { path, cause })?;
        Ok(placed)
    }
}

impl Drop for PlacedScript {
    fn drop(&mut self) {
        let _ = unlinkat(&self.dir, self.name.as_str(), UnlinkatFlags::NoRemoveDir);
    }
}

/// 64 random bits from the standard library's randomly keyed hasher.
fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn places_a_readable_script_in_the_target_s_tmp_and_removes_it() {
        let me = Pid(std::process::id());
        let placed = PlacedScript::place(me, ACTIVATE_TRAMPOLINE).expect("placed");
        assert!(placed.target_path.starts_with("/tmp/ember-activate-"), "{}", placed.target_path);
        let on_disk = std::path::PathBuf::from(&placed.target_path);
        assert_eq!(std::fs::read_to_string(&on_disk).expect("written"), ACTIVATE_TRAMPOLINE);
        let mode = std::fs::metadata(&on_disk).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "readable by the target's user whatever the umask");
        let other = PlacedScript::place(me, "x").expect("a second one");
        assert_ne!(other.target_path, placed.target_path, "names are random");
        drop(placed);
        assert!(!on_disk.exists(), "removed when dropped");
    }
}
