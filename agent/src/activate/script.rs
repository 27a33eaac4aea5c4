//! What a target runs when ember activates it, placed where the target can read it: its own
//! `/tmp`, reached through `/proc/PID/root` (so a container's, or a private /tmp). The directory
//! is opened without following a link, and everything is created new (`O_EXCL`, no link
//! followed) under a random name: nothing the target's users planted is written or followed.
//! Everything placed is removed when the placement is dropped.

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, mkdirat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::process::Pid;
use crate::tasks::{ACCEL_FILE_NAME, ACCEL_LIBRARY, MONITOR_FILES};

/// Turns the trampoline on unless it is already on (activating twice crashes some versions at
/// exit, cpython#146522). The target runs it in a fresh namespace.
const ACTIVATE_TRAMPOLINE: &str = "import sys\n\
     sys.is_stack_trampoline_active() or sys.activate_stack_trampoline('perf')\n";

/// The activation script: the task monitor first, from `monitor_dir` (as the target sees it),
/// if the program runs asyncio (then the perf map, which tells ember the script has run, comes
/// only after the monitor's files were read); the trampoline last. A monitor that fails to
/// start leaves the program as it was and says nothing in it: ember notices no ring appears.
pub fn activation_script(monitor_dir: Option<&str>) -> String {
    let Some(dir) = monitor_dir else { return ACTIVATE_TRAMPOLINE.into() };
    format!(
        "import sys\n\
         if 'asyncio' in sys.modules:\n    \
             sys.path.insert(0, {dir:?})\n    \
             try:\n        \
                 import ember_monitor\n        \
                 ember_monitor.start()\n    \
             except Exception:\n        \
                 pass\n    \
             finally:\n        \
                 sys.path.remove({dir:?})\n\
         {ACTIVATE_TRAMPOLINE}"
    )
}

#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("cannot open the target's /tmp ({path}) without following a link: {cause}")]
    Directory { path: String, cause: nix::Error },
    #[error("cannot create {path} in the target's /tmp: {cause}")]
    Create { path: String, cause: nix::Error },
    #[error("cannot write {path}: {cause}")]
    Write { path: String, cause: std::io::Error },
}

/// Files and directories ember made in a target's `/tmp`, removed when dropped.
#[derive(Debug)]
pub struct Placed {
    tmp: OwnedFd,
    tmp_path: String,
    /// Paths relative to `/tmp`, in the order made (removed in reverse), and whether each is a
    /// directory.
    made: Vec<(String, bool)>,
}

impl Placed {
    /// Opens process `pid`'s `/tmp` to place things in.
    pub fn in_tmp_of(pid: Pid) -> Result<Self, ScriptError> {
        let tmp_path = format!("/proc/{pid}/root/tmp");
        let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
        let tmp = nix::fcntl::open(tmp_path.as_str(), flags, Mode::empty())
            .map_err(|cause| ScriptError::Directory { path: tmp_path.clone(), cause })?;
        Ok(Placed { tmp, tmp_path, made: Vec::new() })
    }

    /// A new file `PREFIX-RANDOM.py` holding `text`; its path as the target sees it.
    pub fn script(&mut self, prefix: &str, text: &str) -> Result<String, ScriptError> {
        let name = format!("{prefix}-{:016x}.py", rand::random::<u64>());
        self.file(&name, text.as_bytes())?;
        Ok(format!("/tmp/{name}"))
    }

    /// A new directory `ember-monitor-RANDOM` with the task monitor's package and native fast
    /// path; its path as the target sees it.
    pub fn monitor(&mut self) -> Result<String, ScriptError> {
        let dir = format!("ember-monitor-{:016x}", rand::random::<u64>());
        self.dir(&dir)?;
        for (name, source) in MONITOR_FILES {
            if let Some((sub, _)) = name.rsplit_once('/') {
                let sub = format!("{dir}/{sub}");
                if !self.made.iter().any(|(made, _)| *made == sub) {
                    self.dir(&sub)?;
                }
            }
            self.file(&format!("{dir}/{name}"), source.as_bytes())?;
        }
        self.file(&format!("{dir}/{ACCEL_FILE_NAME}"), ACCEL_LIBRARY)?;
        Ok(format!("/tmp/{dir}"))
    }

    fn dir(&mut self, path: &str) -> Result<(), ScriptError> {
        mkdirat(&self.tmp, path, Mode::from_bits_truncate(0o755))
            .map_err(|cause| ScriptError::Create { path: format!("{}/{path}", self.tmp_path), cause })?;
        self.made.push((path.to_string(), true));
        // mkdirat follows no link at the last component, and an earlier one is ours: made new.
        let opened = openat(&self.tmp, path, OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY, Mode::empty());
        let dir = opened.map_err(|cause| ScriptError::Create { path: path.into(), cause })?;
        // The target's user must read it whatever ember's umask.
        fchmod(&dir, Mode::from_bits_truncate(0o755)).map_err(|cause| ScriptError::Create { path: path.into(), cause })
    }

    fn file(&mut self, path: &str, bytes: &[u8]) -> Result<(), ScriptError> {
        let full = format!("{}/{path}", self.tmp_path);
        let create = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(&self.tmp, path, create, Mode::from_bits_truncate(0o644))
            .map_err(|cause| ScriptError::Create { path: full.clone(), cause })?;
        self.made.push((path.to_string(), false));
        fchmod(&fd, Mode::from_bits_truncate(0o644))
            .map_err(|cause| ScriptError::Create { path: full.clone(), cause })?;
        File::from(fd).write_all(bytes).map_err(|cause| ScriptError::Write { path: full, cause })
    }
}

impl Drop for Placed {
    fn drop(&mut self) {
        for (path, is_dir) in self.made.iter().rev() {
            let how = if *is_dir { UnlinkatFlags::RemoveDir } else { UnlinkatFlags::NoRemoveDir };
            let _ = unlinkat(&self.tmp, path.as_str(), how);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn places_a_readable_script_and_the_monitor_in_the_target_s_tmp_and_removes_them() {
        let me = Pid(std::process::id());
        let mut placed = Placed::in_tmp_of(me).expect("the target's /tmp");
        let script = PathBuf::from(placed.script("ember-activate", ACTIVATE_TRAMPOLINE).expect("placed"));
        assert!(script.starts_with("/tmp") && script.to_string_lossy().contains("ember-activate-"), "{script:?}");
        assert_eq!(std::fs::read_to_string(&script).expect("written"), ACTIVATE_TRAMPOLINE);
        let mode = std::fs::metadata(&script).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "readable by the target's user whatever the umask");
        let monitor = PathBuf::from(placed.monitor().expect("the monitor"));
        assert!(monitor.join("ember_monitor/__init__.py").is_file());
        assert!(monitor.join(ACCEL_FILE_NAME).is_file());
        let other = placed.script("ember-activate", "x").expect("a second one");
        assert_ne!(PathBuf::from(other), script, "names are random");
        drop(placed);
        assert!(!script.exists() && !monitor.exists(), "removed when dropped");
    }

    #[test]
    fn the_script_starts_the_monitor_only_in_programs_that_run_asyncio_then_the_trampoline() {
        let script = activation_script(Some("/tmp/ember-monitor-1"));
        let monitor = script.find("ember_monitor.start()").expect("starts the monitor");
        assert!(script.find("activate_stack_trampoline").is_some_and(|t| t > monitor), "{script}");
        assert!(script.contains("if 'asyncio' in sys.modules:"), "{script}");
        assert!(!activation_script(None).contains("ember_monitor"));
        for text in [script, activation_script(None)] {
            let check = "import sys; compile(sys.stdin.read(), 'activation', 'exec')";
            let mut python = std::process::Command::new(ember_testkit::python312())
                .args(["-c", check])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .expect("python3.12 runs");
            python.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("written");
            assert!(python.wait().expect("exits").success(), "not Python: {text}");
        }
    }
}
