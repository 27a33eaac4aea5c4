//! `--all-python`: finds Python 3.12+ processes on the host, by executable name or by a
//! mapped libpython, so new ones are attached as they start.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::process::{procfs, python, Pid};

#[derive(Debug, Default)]
pub struct Discovery {
    /// Processes already found not to be Python 3.12+, with their start time and executable, so
    /// a reused PID is looked at again, and so is a process that has since exec'd (a container's
    /// `runc init` becoming its Python, or a shell script's `exec python3`).
    not_python: HashMap<Pid, (u64, Option<PathBuf>)>,
}

impl Discovery {
    /// Python 3.12+ processes not yet known to `is_known`.
    pub fn scan(&mut self, is_known: impl Fn(Pid) -> bool) -> Vec<Pid> {
        let me = Pid(std::process::id());
        let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
        let mut found = Vec::new();
        let mut alive = HashMap::new();
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()).map(Pid) else { continue };
            if pid == me || is_known(pid) {
                continue;
            }
            let Some(started) = procfs::start_time(pid) else { continue };
            let seen = (started, procfs::exe(pid));
            if self.not_python.get(&pid) == Some(&seen) {
                alive.insert(pid, seen);
                continue;
            }
            let exe = seen.1.as_ref().map(|p| p.display().to_string());
            let maps = procfs::maps(pid).unwrap_or_default();
            let runtime = python::detect(exe.as_deref(), maps.iter().map(|m| m.path.as_str()));
            if runtime.has_perf_trampoline() && procfs::process_exists(pid) {
                found.push(pid);
            } else {
                self.not_python.insert(pid, seen.clone());
            }
            alive.insert(pid, seen);
        }
        self.not_python.retain(|pid, seen| alive.get(pid) == Some(seen));
        found.sort();
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// A process first seen as a shell, which then execs a program named like an interpreter
    /// (a copy of `sleep`: discovery goes by the executable's name), is found after the exec.
    #[test]
    fn a_process_that_execs_python_after_a_scan_is_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let python = dir.path().join("python3.12");
        std::fs::copy("/bin/sleep", &python).expect("a copy of sleep");
        let mut child = Command::new("/bin/sh")
            .args(["-c", "read line; exec \"$0\" 30"])
            .arg(&python)
            .stdin(Stdio::piped())
            .spawn()
            .expect("sh starts");
        let pid = Pid(child.id());
        let mut discovery = Discovery::default();
        assert!(!discovery.scan(|_| false).contains(&pid), "a shell is not Python");
        child.stdin.take().expect("stdin").write_all(b"go\n").expect("the shell reads");
        let deadline = Instant::now() + Duration::from_secs(30);
        while procfs::exe(pid).as_deref() != Some(python.as_path()) {
            assert!(Instant::now() < deadline, "the shell did not exec");
            std::thread::sleep(Duration::from_millis(10));
        }
        let found = discovery.scan(|_| false);
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&pid), "the same PID, now Python, is found");
    }
}
