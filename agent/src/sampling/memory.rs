//! Sampling without perf events (`--memory-only`, or when perf events are refused): at the
//! requested rate, every running thread of every tracked Python process is sampled by reading
//! its frame chain from the interpreter's memory, as py-spy does. Nothing is stopped; each walk
//! is checked and read at (nearly) one moment (`interp`). There are no native frames, and a
//! thread counts as running when the kernel says it is runnable (state R).

use crate::aggregate::SampleOwner;
use crate::interp::WalkEnd;
use crate::process::{procfs, FrameKey, Pid, Tid};

use super::pipeline::Pipeline;

impl Pipeline {
    /// One round of memory samples, stamped `time` (CLOCK_MONOTONIC nanoseconds).
    pub fn sample_from_memory(&mut self, time: u64) {
        let pids: Vec<Pid> = self.processes.keys().copied().collect();
        for pid in pids {
            self.sample_process_from_memory(pid, time);
        }
    }

    fn sample_process_from_memory(&mut self, pid: Pid, time: u64) {
        let Some(state) = self.processes.get_mut(&pid) else { return };
        if !state.runtime.has_perf_trampoline() || state.exited {
            return;
        }
        let threads = match state.interpreter().map(|interpreter| interpreter.threads()) {
            Ok(Ok((threads, true))) => threads,
            // The threads kept changing while read: no stack of this round is known to be one
            // moment's, so none is taken.
            Ok(Ok((_, false))) => {
                self.stats.memory_unreadable += 1;
                return;
            }
            Ok(Err(e)) => {
                self.stats.memory_unreadable += 1;
                tracing::debug!(%pid, "reading the threads failed: {e}");
                return;
            }
            Err(_) => return,
        };
        let host_tids = host_tids(pid, state.ns_pid.0);
        let mut keys: Vec<FrameKey> = Vec::new();
        for thread in threads.iter().filter(|t| !t.frames.is_empty()) {
            let Some(tid) = host_tids(thread.native_id) else { continue };
            // cpu-clock samples a thread while it runs; so does this, as closely as /proc says.
            if procfs::thread_state(pid, tid) != Some('R') {
                continue;
            }
            keys.clear();
            keys.extend(thread.frames.iter().map(|f| state.python_key(f, &mut self.profile.strings)));
            if thread.end != WalkEnd::Root {
                keys.push(FrameKey::Truncated);
            }
            if self.threads_seen.insert((pid, tid)) {
                self.stats.threads += 1;
                self.profile
                    .thread_names
                    .entry((pid, tid))
                    .or_insert_with(|| procfs::comm(pid, tid).unwrap_or_default());
            }
            self.stats.samples += 1;
            self.stats.memory_samples += 1;
            self.profile.add(SampleOwner { pid, tid }, &keys, time);
        }
    }
}

/// The host thread id of a thread the interpreter knows by its id in the process's own PID
/// namespace.
fn host_tids(pid: Pid, ns_pid: u32) -> impl Fn(u64) -> Option<Tid> {
    // Read from /proc only for a process in a namespace of its own: this runs every round.
    let map = if ns_pid == pid.0 { Vec::new() } else { procfs::ns_tids(pid) };
    move |native_id| match map.is_empty() {
        true => u32::try_from(native_id).ok().map(Tid),
        false => map.iter().find(|(ns, _)| u64::from(*ns) == native_id).map(|(_, tid)| *tid),
    }
}
