//! `--all-python`: finds Python 3.12+ processes on the host, by executable name or by a
//! mapped libpython, so new ones are attached as they start.

use std::collections::HashMap;

use crate::process::{procfs, python, Pid};

#[derive(Debug, Default)]
pub struct Discovery {
    /// Processes already found not to be Python 3.12+, with their start time, so a reused PID
    /// is looked at again.
    not_python: HashMap<Pid, u64>,
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
            alive.insert(pid, started);
            if self.not_python.get(&pid) == Some(&started) {
                continue;
            }
            let exe = procfs::exe(pid).map(|p| p.display().to_string());
            let maps = procfs::maps(pid).unwrap_or_default();
            let runtime = python::detect(exe.as_deref(), maps.iter().map(|m| m.path.as_str()));
            if runtime.has_perf_trampoline() && procfs::process_exists(pid) {
                found.push(pid);
            } else {
                self.not_python.insert(pid, started);
            }
        }
        self.not_python.retain(|pid, started| alive.get(pid) == Some(started));
        found.sort();
        found
    }
}
