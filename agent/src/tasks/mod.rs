//! asyncio task activity, recorded inside the target by `agent/python/ember_monitor/`
//! (sys.monitoring) and read here from its shared-memory ring. See ARCHITECTURE.md.
//!
//! The package is embedded in the agent ([`MONITOR_FILES`]) so nothing has to be installed in
//! the target's environment, with its optional native fast path ([`ACCEL_LIBRARY`]);
//! [`bootstrap`] starts it in commands ember launches.

pub mod bootstrap;
pub mod format;
#[cfg(test)]
mod format_check;
pub mod ring;
pub mod shared;
pub mod timeline;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::process::Pid;

/// The monitor's Python package (`ember_monitor/`), as shipped inside the agent binary: each
/// file's path under the directory that goes on `PYTHONPATH`, and its source.
pub const MONITOR_FILES: &[(&str, &str)] = &[
    ("ember_monitor/__init__.py", include_str!("../../python/ember_monitor/__init__.py")),
    ("ember_monitor/_ring.py", include_str!("../../python/ember_monitor/_ring.py")),
    ("ember_monitor/_hot_path.py", include_str!("../../python/ember_monitor/_hot_path.py")),
    ("ember_monitor/_writer.py", include_str!("../../python/ember_monitor/_writer.py")),
    ("ember_monitor/_monitor.py", include_str!("../../python/ember_monitor/_monitor.py")),
    ("ember_monitor/_discover.py", include_str!("../../python/ember_monitor/_discover.py")),
];

/// The text of the frame that stands for the monitor's code in the default view.
pub const MONITOR_FRAME: &str = "[ember task monitor]";

/// Whether a Python frame's file is one of the monitor's (wherever the package was put: the
/// agent's private directory, or `export-monitor DIR`): ember's own code, not the program's.
pub fn is_monitor_file(file: &str) -> bool {
    let mut parts = file.rsplit('/');
    let (Some(name), Some(dir)) = (parts.next(), parts.next()) else { return false };
    MONITOR_FILES.iter().any(|(path, _)| path.strip_prefix("ember_monitor/") == Some(name)) && dir == "ember_monitor"
}

/// `_ember_accel`, the monitor's per-step work in native code (agent/accel/ember_accel.rs,
/// built by build.rs for the CPython 3.12+ stable ABI). The monitor uses it when it imports,
/// and works the same, only slower, without it.
pub const ACCEL_LIBRARY: &[u8] = include_bytes!(env!("EMBER_ACCEL_LIBRARY"));

/// The file name CPython imports `_ember_accel` from.
pub const ACCEL_FILE_NAME: &str = "_ember_accel.abi3.so";

/// Whether to track asyncio tasks, from `--tasks` / `--no-tasks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TaskMode {
    /// Start the monitor in launched commands; read the ring of any target that has one
    /// (a program that called `ember_monitor.start()` itself).
    #[default]
    Default,
    /// Asked for explicitly: as the default, and say so when the monitor cannot be started.
    Explicit,
    Off,
}

/// How often to look again for a ring that is not there yet.
const RETRY_OPEN: Duration = Duration::from_secs(1);

/// The task timelines of every process that has a ring.
#[derive(Debug, Default)]
pub struct TaskTracker {
    readers: BTreeMap<Pid, Reader>,
    /// Processes without a ring yet, and when we last looked.
    absent: BTreeMap<Pid, Instant>,
    streaming: bool,
    /// Task records overwritten before they were read, over every ring.
    pub lost_records: u64,
}

#[derive(Debug)]
struct Reader {
    ring: ring::RingReader,
    timeline: timeline::Timeline,
    lost_taken: u64,
    /// The process had exited at the last sweep.
    gone: bool,
    /// The process lives in another PID namespace, so its thread ids need translating.
    namespaced: bool,
    /// Which writer the monitor uses has been logged (once records arrive: the monitor sets
    /// that flag before its first record).
    announced: bool,
}

/// The host thread id of the thread that process `pid` knows as `ns_tid` (the last `NSpid`
/// field of each thread's status).
fn host_tid(pid: Pid, ns_tid: u64) -> Option<u64> {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    threads.flatten().find_map(|entry| {
        let host: u64 = entry.file_name().to_str()?.parse().ok()?;
        let status = std::fs::read_to_string(entry.path().join("status")).ok()?;
        let ns = crate::process::procfs::parse_ns_pid(&status)?;
        (u64::from(ns.0) == ns_tid).then_some(host)
    })
}

impl TaskTracker {
    /// A tracker whose timelines hand out deltas ([`TaskTracker::take_deltas`]).
    pub fn streaming() -> Self {
        Self { streaming: true, ..Self::default() }
    }

    /// Opens the rings of `targets` (pid, pid in its namespace) that have appeared, then
    /// reads what is new in every open ring, including those of processes that have exited:
    /// their last records are still to be read.
    pub fn poll(&mut self, targets: impl Iterator<Item = (Pid, u32)>) {
        for (pid, ns_pid) in targets {
            self.open(pid, ns_pid);
        }
        for (pid, reader) in &mut self.readers {
            let mut events = Vec::new();
            let before = reader.ring.lost_records;
            if let Err(e) = reader.ring.poll(&mut events) {
                tracing::debug!(%pid, "task ring read failed: {e}");
            }
            if !events.is_empty() && !reader.announced {
                reader.announced = true;
                match reader.ring.native() {
                    Ok(true) => tracing::info!(%pid, "asyncio task monitor running, native fast path"),
                    Ok(false) => tracing::info!(%pid, "asyncio task monitor running in pure Python (slower per step)"),
                    Err(e) => tracing::debug!(%pid, "task ring header: {e}"),
                }
            }
            let lost = reader.ring.lost_records - before;
            self.lost_records += lost;
            if lost > 0 {
                reader.timeline.lost();
            }
            for event in &events {
                if let ring::TaskEvent::LoopInfo { info, .. } = event {
                    tracing::warn!(%pid, "asyncio loop {info}");
                }
            }
            if reader.namespaced {
                // The monitor sees thread ids of its own PID namespace; samples carry the host's.
                for event in &mut events {
                    if let ring::TaskEvent::Loop { thread, .. } = event {
                        match host_tid(*pid, *thread) {
                            Some(host) => *thread = host,
                            None => tracing::debug!(%pid, "no host thread id for namespace thread {thread}"),
                        }
                    }
                }
            }
            reader.timeline.apply(events);
        }
    }

    fn open(&mut self, pid: Pid, ns_pid: u32) {
        if self.readers.contains_key(&pid) || self.absent.get(&pid).is_some_and(|t| t.elapsed() < RETRY_OPEN) {
            return;
        }
        match shared::find(pid, ns_pid) {
            Some(ring) => self.adopt(pid, ring, ns_pid != pid.0),
            None => {
                self.absent.insert(pid, Instant::now());
            }
        }
    }

    /// Reads `ring` as the ring of `pid` (one ember made for a command it launched).
    pub fn adopt(&mut self, pid: Pid, ring: ring::RingReader, namespaced: bool) {
        self.absent.remove(&pid);
        let timeline = if self.streaming { timeline::Timeline::streaming() } else { timeline::Timeline::default() };
        self.readers.insert(pid, Reader { ring, timeline, lost_taken: 0, gone: false, namespaced, announced: false });
    }

    pub fn timelines(&self) -> impl Iterator<Item = (Pid, &timeline::Timeline)> {
        self.readers.iter().map(|(pid, r)| (*pid, &r.timeline))
    }

    pub fn is_reading(&self, pid: Pid) -> bool {
        self.readers.contains_key(&pid)
    }

    pub fn pids(&self) -> Vec<Pid> {
        self.readers.keys().copied().collect()
    }

    /// What changed in each process since the last call, with the records lost meanwhile.
    pub fn take_deltas(&mut self) -> BTreeMap<Pid, (timeline::TaskDelta, u64)> {
        let mut out = BTreeMap::new();
        for (pid, r) in &mut self.readers {
            let delta = r.timeline.take_delta();
            let lost = r.ring.lost_records - r.lost_taken;
            r.lost_taken = r.ring.lost_records;
            if !delta.is_empty() || lost > 0 {
                out.insert(*pid, (delta, lost));
            }
        }
        out
    }

    /// Looks for missing rings at the next poll whenever it last looked, for a final read.
    pub fn look_again(&mut self) {
        self.absent.clear();
    }

    /// Stops reading the rings of processes that had already exited at the previous sweep,
    /// so each gets one more read and delta after its exit is noticed.
    pub fn sweep(&mut self) -> Vec<Pid> {
        let mut removed = Vec::new();
        self.readers.retain(|pid, r| {
            let keep = !r.gone;
            r.gone = !crate::process::procfs::process_exists(*pid);
            if !keep {
                removed.push(*pid);
            }
            keep
        });
        self.absent.retain(|pid, _| crate::process::procfs::process_exists(*pid));
        removed
    }
}
