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
/// only after the monitor's files were read); the trampoline last. The directory is used only
/// if it is still ember's (`owner`, ember's uid, not a link): a directory of that name made by
/// someone else once ember's was gone is never imported from. A monitor that fails to start
/// leaves the program as it was and says nothing in it: ember notices no ring appears.
pub fn activation_script(monitor_dir: Option<&str>, owner: u32) -> String {
    let Some(dir) = monitor_dir else { return ACTIVATE_TRAMPOLINE.into() };
    format!(
        "import sys\n\
         if 'asyncio' in sys.modules:\n    \
             import os, stat\n    \
             try:\n        \
                 found = os.stat({dir:?}, follow_symlinks=False)\n        \
                 if stat.S_ISDIR(found.st_mode) and found.st_uid == {owner}:\n            \
                     sys.path.insert(0, {dir:?})\n            \
                     try:\n                \
                         import ember_monitor\n                \
                         ember_monitor.start()\n            \
                     finally:\n                \
                         sys.path.remove({dir:?})\n    \
             except Exception:\n        \
                 pass\n\
         {ACTIVATE_TRAMPOLINE}"
    )
}

/// What 3.12/3.13 run as a pending call (`PyRun_SimpleString`, in `__main__`): `script` itself,
/// carried in the call's own page, so no file of ember's is read by path. It runs in a namespace
/// of its own, reached only through `__builtins__`, so nothing of `__main__` is read or changed.
/// Nothing may escape it: a pending call that fails fails the bytecode the main thread was at.
/// A KeyboardInterrupt that lands in it is handed back to the main thread; SystemExit goes on
/// and exits, as it would have. (An exception a signal handler raises in the few milliseconds
/// it runs is dropped; the handler itself ran.)
pub fn pending_call_code(script: &str) -> String {
    // The script is ASCII (ember's own text and names), so Rust's escapes are Python's.
    format!(
        "try:\n    \
             __builtins__.exec({script:?}, {{'__name__': '__ember_activate__'}})\n\
         except KeyboardInterrupt:\n    \
             __builtins__.__import__('_thread').interrupt_main()\n\
         except SystemExit:\n    \
             raise\n\
         except BaseException:\n    \
             pass\n"
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

/// Files and directories ember made in a target's `/tmp`, removed when dropped. Every one is
/// made, opened and removed by a single name relative to the descriptor of the directory it is
/// in (itself opened without following a link): a link put in place of one of ember's
/// directories leads nowhere, as no path of more than one name is ever resolved.
#[derive(Debug)]
pub struct Placed {
    /// `/tmp`, then each directory made, in order.
    dirs: Vec<OwnedFd>,
    tmp_path: String,
    /// What was made, in order (removed in reverse): the index in `dirs` of the directory it
    /// is in, its name, and for a directory its own index in `dirs`.
    made: Vec<(usize, String, Option<usize>)>,
}

const DIR_FLAGS: OFlag = OFlag::O_DIRECTORY.union(OFlag::O_NOFOLLOW).union(OFlag::O_RDONLY).union(OFlag::O_CLOEXEC);

impl Placed {
    /// Opens process `pid`'s `/tmp` to place things in.
    pub fn in_tmp_of(pid: Pid) -> Result<Self, ScriptError> {
        let tmp_path = format!("/proc/{pid}/root/tmp");
        let tmp = nix::fcntl::open(tmp_path.as_str(), DIR_FLAGS, Mode::empty())
            .map_err(|cause| ScriptError::Directory { path: tmp_path.clone(), cause })?;
        Ok(Placed { dirs: vec![tmp], tmp_path, made: Vec::new() })
    }

    /// A new file `PREFIX-RANDOM.py` in `/tmp` holding `text`; its path as the target sees it.
    pub fn script(&mut self, prefix: &str, text: &str) -> Result<String, ScriptError> {
        let name = format!("{prefix}-{:016x}.py", rand::random::<u64>());
        self.file(0, &name, text.as_bytes())?;
        Ok(format!("/tmp/{name}"))
    }

    /// A new directory `ember-monitor-RANDOM` in `/tmp` with the task monitor's package and
    /// native fast path; its path as the target sees it.
    pub fn monitor(&mut self) -> Result<String, ScriptError> {
        let top_name = format!("ember-monitor-{:016x}", rand::random::<u64>());
        let top = self.dir(0, &top_name)?;
        let mut subdirs: Vec<(String, usize)> = Vec::new();
        for (path, source) in MONITOR_FILES {
            let (parent, name) = match path.rsplit_once('/') {
                Some((sub, name)) => {
                    let known = subdirs.iter().find(|(made, _)| made == sub).map(|(_, at)| *at);
                    let at = match known {
                        Some(at) => at,
                        None => {
                            // The package is one level deep; a deeper path would need a walk.
                            let at = self.dir(top, sub)?;
                            subdirs.push((sub.to_string(), at));
                            at
                        }
                    };
                    (at, name)
                }
                None => (top, *path),
            };
            self.file(parent, name, source.as_bytes())?;
        }
        self.file(top, ACCEL_FILE_NAME, ACCEL_LIBRARY)?;
        Ok(format!("/tmp/{top_name}"))
    }

    /// A new directory `name` in `self.dirs[parent]`; its index in `dirs`.
    fn dir(&mut self, parent: usize, name: &str) -> Result<usize, ScriptError> {
        let full = format!("{}/.../{name}", self.tmp_path);
        if name.contains('/') {
            return Err(ScriptError::Create { path: full, cause: nix::Error::EINVAL });
        }
        mkdirat(&self.dirs[parent], name, Mode::from_bits_truncate(0o700))
            .map_err(|cause| ScriptError::Create { path: full.clone(), cause })?;
        let index = self.dirs.len();
        self.made.push((parent, name.to_string(), Some(index)));
        let dir = openat(&self.dirs[parent], name, DIR_FLAGS, Mode::empty())
            .map_err(|cause| ScriptError::Create { path: full.clone(), cause })?;
        // The target's user must read it whatever ember's umask.
        fchmod(&dir, Mode::from_bits_truncate(0o755)).map_err(|cause| ScriptError::Create { path: full, cause })?;
        self.dirs.push(dir);
        Ok(index)
    }

    /// A new file `name` in `self.dirs[parent]` holding `bytes`.
    fn file(&mut self, parent: usize, name: &str, bytes: &[u8]) -> Result<(), ScriptError> {
        let full = format!("{}/.../{name}", self.tmp_path);
        if name.contains('/') {
            return Err(ScriptError::Create { path: full, cause: nix::Error::EINVAL });
        }
        let create = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(&self.dirs[parent], name, create, Mode::from_bits_truncate(0o600))
            .map_err(|cause| ScriptError::Create { path: full.clone(), cause })?;
        self.made.push((parent, name.to_string(), None));
        let mut file = File::from(fd);
        file.write_all(bytes).map_err(|cause| ScriptError::Write { path: full.clone(), cause })?;
        // Readable by the target's user only once whole.
        fchmod(&file, Mode::from_bits_truncate(0o644)).map_err(|cause| ScriptError::Create { path: full, cause })
    }
}

impl Drop for Placed {
    fn drop(&mut self) {
        for (parent, name, is_dir) in self.made.iter().rev() {
            let how = if is_dir.is_some() { UnlinkatFlags::RemoveDir } else { UnlinkatFlags::NoRemoveDir };
            let _ = unlinkat(&self.dirs[*parent], name.as_str(), how);
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

    /// The owner of the target's /tmp swaps ember's monitor directory for a link to a directory
    /// with the same file names: removing what ember placed touches nothing through the link.
    #[test]
    fn a_directory_swapped_for_a_link_leads_nowhere() {
        let me = Pid(std::process::id());
        let decoy = tempfile::tempdir().expect("decoy dir");
        std::fs::create_dir(decoy.path().join("ember_monitor")).expect("decoy package");
        std::fs::write(decoy.path().join("ember_monitor/__init__.py"), "decoy").expect("decoy file");
        std::fs::write(decoy.path().join(ACCEL_FILE_NAME), "decoy").expect("decoy file");
        let mut placed = Placed::in_tmp_of(me).expect("the target's /tmp");
        let monitor = PathBuf::from(placed.monitor().expect("the monitor"));
        let moved = monitor.with_extension("moved");
        std::fs::rename(&monitor, &moved).expect("moved away");
        std::os::unix::fs::symlink(decoy.path(), &monitor).expect("a link in its place");
        drop(placed);
        assert_eq!(
            std::fs::read_to_string(decoy.path().join("ember_monitor/__init__.py")).ok().as_deref(),
            Some("decoy")
        );
        assert!(decoy.path().join(ACCEL_FILE_NAME).exists(), "nothing removed through the link");
        assert!(!moved.join("ember_monitor/__init__.py").exists(), "ember's own files removed where they are");
        let _ = std::fs::remove_file(&monitor);
        let _ = std::fs::remove_dir_all(&moved);
    }

    #[test]
    fn the_script_starts_the_monitor_only_in_programs_that_run_asyncio_then_the_trampoline() {
        let script = activation_script(Some("/tmp/ember-monitor-1"), 0);
        let monitor = script.find("ember_monitor.start()").expect("starts the monitor");
        assert!(script.find("activate_stack_trampoline").is_some_and(|t| t > monitor), "{script}");
        assert!(script.contains("if 'asyncio' in sys.modules:"), "{script}");
        assert!(!activation_script(None, 0).contains("ember_monitor"));
        let pending = pending_call_code(&script);
        assert!(pending.is_ascii() && pending.len() < 4096, "{pending}");
        for text in [script, activation_script(None, 0), pending] {
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

    /// The pending call's code run as `PyRun_SimpleString` runs it, in `__main__`'s namespace,
    /// where the program shadows `exec`: the trampoline comes on, `__main__` keeps exactly its
    /// names, and nothing is printed.
    #[test]
    fn the_pending_call_leaves_main_as_it_was_and_turns_the_trampoline_on() {
        let code = pending_call_code(&activation_script(None, 0));
        let check = "import sys, __main__\n\
                     code = sys.stdin.read()\n\
                     exec = 'the program has its own exec'\n\
                     before = None\n\
                     before = sorted(vars(__main__))\n\
                     __builtins__.exec(code, vars(__main__))\n\
                     assert sorted(vars(__main__)) == before, sorted(vars(__main__))\n\
                     assert sys.is_stack_trampoline_active()\n";
        let mut python = std::process::Command::new(ember_testkit::python312())
            .args(["-c", check])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python3.12 runs");
        python.stdin.take().expect("stdin").write_all(code.as_bytes()).expect("written");
        let out = python.wait_with_output().expect("exits");
        let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && printed.is_empty(), "{printed}");
    }
}
