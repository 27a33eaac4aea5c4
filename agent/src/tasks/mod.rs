//! asyncio task activity, recorded inside the target by `agent/python/ember_monitor.py`
//! (sys.monitoring) and read here from its shared-memory ring. See ARCHITECTURE.md.
//!
//! The module is embedded in the agent ([`MONITOR_SOURCE`]) so nothing has to be installed in
//! the target's environment; [`bootstrap`] starts it in commands ember launches.

pub mod bootstrap;
pub mod ring;
pub mod timeline;

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::process::Pid;

/// The monitor's Python source, as shipped inside the agent binary.
pub const MONITOR_SOURCE: &str = include_str!("../../python/ember_monitor.py");

/// Where a process's ring is: `/tmp/ember-<nspid>.ring` in its own mount namespace.
pub fn ring_paths(pid: Pid, ns_pid: u32) -> [PathBuf; 2] {
    [
        PathBuf::from(format!("/proc/{pid}/root/tmp/ember-{ns_pid}.ring")),
        // A process ember launched shares its /tmp, and this path outlives the process.
        PathBuf::from(format!("/tmp/ember-{ns_pid}.ring")),
    ]
}

/// The task timelines of every process that has a ring.
#[derive(Debug, Default)]
pub struct TaskTracker {
    readers: BTreeMap<Pid, (ring::RingReader, timeline::Timeline)>,
    pub lost_bytes: u64,
}

impl TaskTracker {
    /// Opens the process's ring if it has appeared, and reads what is new.
    pub fn poll(&mut self, pid: Pid, ns_pid: u32, launched_here: bool) {
        if let std::collections::btree_map::Entry::Vacant(slot) = self.readers.entry(pid) {
            let [in_root, local] = ring_paths(pid, ns_pid);
            let opened = ring::RingReader::open(in_root)
                .ok()
                .or_else(|| launched_here.then(|| ring::RingReader::open(local).ok()).flatten());
            match opened {
                Some(reader) => {
                    slot.insert((reader, timeline::Timeline::default()));
                }
                None => return,
            }
        }
        if let Some((reader, timeline)) = self.readers.get_mut(&pid) {
            let mut events = Vec::new();
            let before = reader.lost_bytes;
            if let Err(e) = reader.poll(&mut events) {
                tracing::debug!(%pid, "task ring read failed: {e}");
            }
            self.lost_bytes += reader.lost_bytes - before;
            timeline.apply(events);
        }
    }

    pub fn timelines(&self) -> impl Iterator<Item = (Pid, &timeline::Timeline)> {
        self.readers.iter().map(|(pid, (_, t))| (*pid, t))
    }

    pub fn pids(&self) -> Vec<Pid> {
        self.readers.keys().copied().collect()
    }
}
