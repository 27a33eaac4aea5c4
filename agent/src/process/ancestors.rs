//! The processes a target was forked from, for their perf maps.
//!
//! A pre-fork server's worker (gunicorn, multiprocessing's fork) runs frames that were on the
//! stack when its master forked it: `<module>`, the arbiter loop, the worker's `run`. They
//! return into trampolines the master made before the fork, which only the master's
//! `/tmp/perf-MASTER.map` names. A worker attached on its own therefore needs its ancestors'
//! maps too. Every line of them is still checked against the bytes in the worker itself, and
//! the worker's own lines win wherever they overlap (see `ProcessState::read_ancestor_maps`).

use super::ids::Pid;
use super::procfs;
use super::target_file::Owner;
use crate::symbolize::perf_map::MapLocation;

/// How far up the process tree ember looks: a master, its master, and a little more.
const MAX_ANCESTORS: usize = 8;

/// The perf maps of the ancestors of `pid` that run the same executable (the interpreter
/// that made the trampolines), nearest first. The walk stops at the first ancestor that runs
/// something else (a shell, a supervisor), at init, or after [`MAX_ANCESTORS`].
pub fn perf_maps(pid: Pid) -> Vec<MapLocation> {
    let Some(exe) = procfs::exe(pid) else { return Vec::new() };
    let mut maps = Vec::new();
    let mut current = pid;
    while maps.len() < MAX_ANCESTORS {
        let Some(parent) = procfs::ppid(current).filter(|p| p.0 > 1 && *p != current) else { break };
        if procfs::exe(parent).as_ref() != Some(&exe) {
            break;
        }
        let Ok((ns_pid, uids)) = procfs::identity(parent) else { break };
        // Named by the pid the ancestor sees, inside its own root, owned by its own uids.
        maps.push(MapLocation { pid: parent, file_name: format!("perf-{ns_pid}.map"), owner: Owner::OneOf(uids) });
        current = parent;
    }
    maps
}
