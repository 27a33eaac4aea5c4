//! Feeds decoded perf events through process tracking, unwinding and stack completion into
//! the aggregated profile.

use std::collections::{HashMap, HashSet};

use crate::aggregate::{Keep, Profile, SampleOwner};
use crate::interp::JoinOutcome;
use crate::perf::{PerfEvent, SampleEvent};
use crate::process::{procfs, Beyond, FrameKey, Pid, ProcessState, Tid};
use crate::replay::Capture;
use crate::symbolize::perf_map::StaleMap;
use crate::tasks::TaskTracker;
use crate::unwind::{ElfCache, StackEnd};

use super::stats::Stats;

#[derive(Debug)]
pub struct Pipeline {
    pub(super) processes: HashMap<Pid, ProcessState>,
    pub elf: ElfCache,
    pub profile: Profile,
    pub stats: Stats,
    follow_children: bool,
    /// Launched commands not tracked yet, with what their PID's perf map held before they
    /// started (stale lines of an earlier process).
    launched: HashMap<Pid, Option<StaleMap>>,
    pub(super) threads_seen: HashSet<(Pid, Tid)>,
    keys: Vec<FrameKey>,
    /// asyncio task timelines, when the task monitor runs in the targets.
    pub tasks: Option<TaskTracker>,
    /// Samples kept for a replay case (`record --capture-replay`).
    pub capture: Option<Capture>,
    /// Whether truncated stacks are joined with the interpreter's frames (`interp`).
    pub read_interpreter: bool,
    /// Whether every Python frame gets its line (`record --lines`).
    pub lines: bool,
    /// Whether attached targets without the trampoline are asked to turn it on.
    pub activate: bool,
}

impl Pipeline {
    pub fn new(follow_children: bool, keep: Keep) -> Self {
        Self {
            processes: HashMap::new(),
            elf: ElfCache::default(),
            profile: Profile::new(keep),
            stats: Stats::default(),
            follow_children,
            launched: HashMap::new(),
            threads_seen: HashSet::new(),
            keys: Vec::new(),
            tasks: None,
            capture: None,
            read_interpreter: true,
            lines: false,
            activate: true,
        }
    }

    pub fn process(&self, pid: Pid) -> Option<&ProcessState> {
        self.processes.get(&pid)
    }

    pub fn processes(&self) -> impl Iterator<Item = &ProcessState> {
        self.processes.values()
    }

    /// Forgets processes that have exited, once their samples have been handed out.
    pub fn forget_exited(&mut self) -> Vec<Pid> {
        let gone: Vec<Pid> = self.processes.values().filter(|p| p.exited).map(|p| p.pid).collect();
        for pid in &gone {
            self.processes.remove(pid);
        }
        gone
    }

    pub fn follows_children(&self) -> bool {
        self.follow_children
    }

    pub fn is_tracked(&self, pid: Pid) -> bool {
        self.processes.contains_key(&pid)
    }

    /// Starts tracking a running process.
    pub fn track(&mut self, pid: Pid) -> Result<&ProcessState, procfs::ProcfsError> {
        if !self.processes.contains_key(&pid) {
            let mut state = ProcessState::from_proc(pid, &mut self.elf)?;
            if !self.read_interpreter {
                state.without_interpreter_reads();
            }
            state.lines = self.lines;
            if let Some(stale) = self.launched.remove(&pid).flatten() {
                state.perf_map_reader.skip_stale(stale);
            }
            state.read_ancestor_maps(&mut self.profile.strings, &mut self.elf);
            state.poll_perf_map(&mut self.profile.strings, &mut self.elf);
            self.profile.process_names.insert(pid, state.comm.clone());
            self.stats.processes += 1;
            self.processes.insert(pid, state);
        }
        self.processes.get(&pid).ok_or(procfs::ProcfsError::Parse { path: "/proc".into(), what: "process" })
    }

    /// Remembers a launched command whose state is created once it has exec'd.
    pub fn expect_launched(&mut self, pid: Pid, stale_map: Option<StaleMap>) {
        self.launched.insert(pid, stale_map);
    }

    /// Reads the task rings of every process (the monitor writes one per process).
    pub fn poll_tasks(&mut self) {
        let Some(tasks) = &mut self.tasks else { return };
        tasks.poll(self.processes.values().map(|s| (s.pid, s.ns_pid.0)));
    }

    fn is_expected(&self, pid: Pid) -> bool {
        self.launched.contains_key(&pid)
    }

    /// Reads what every perf map gained since the last call. Called before each batch of
    /// events, so every sample's trampolines are named by the time it is processed.
    pub fn poll_perf_maps(&mut self) {
        for state in self.processes.values_mut() {
            state.poll_perf_map(&mut self.profile.strings, &mut self.elf);
            state.new_in_batch = false;
            if let Some(after) = state.activated_after.take() {
                self.stats.activations_done += 1;
                self.stats.activation_slowest = self.stats.activation_slowest.max(Some(after));
            }
        }
    }

    /// Asks an attached process started without the perf trampoline to turn it on
    /// (`activate`), or says why its Python frames will lack names.
    pub fn activate_or_warn(&mut self, pid: Pid) {
        let Some(state) = self.processes.get_mut(&pid) else { return };
        let wants = state.runtime.has_perf_trampoline() && !state.perf_map_reader.has_own_map();
        if !wants || !self.activate {
            super::targets::warn_about_runtime(state);
            return;
        }
        let tasks = self.tasks.is_some();
        match crate::activate::activate(state, tasks) {
            Ok(activation) => {
                let monitor =
                    if activation.with_monitor { " and, if it runs asyncio, to start the task monitor" } else { "" };
                tracing::info!(
                    "PID {pid}: asked its interpreter to turn the perf trampoline on{monitor} ({}); --no-activate \
                     leaves it alone",
                    activation.describe(),
                );
                if let Some(limit) = activation.raised_recursion_limit {
                    tracing::warn!(
                        "PID {pid}: its recursion limit is {limit}, raised above the default; with the perf \
                         trampoline on, Python 3.12 also counts Python calls against its C recursion limit (about \
                         745 frames), so recursion deeper than that now raises RecursionError"
                    );
                }
                self.stats.activations_asked += 1;
                state.activation = Some(activation);
                state.names_untrampolined = true;
            }
            Err(e) => {
                tracing::warn!("PID {pid}: cannot turn its perf trampoline on: {e}");
                super::targets::warn_about_runtime(state);
            }
        }
    }

    pub fn handle(&mut self, event: PerfEvent) {
        match event {
            PerfEvent::Sample(sample) => self.on_sample(sample),
            PerfEvent::Mmap(m) => {
                if let Some(state) = self.processes.get_mut(&m.pid) {
                    state.add_mapping(m.start, m.start + m.len, m.pgoff, &m.path, m.dev_inode, &mut self.elf);
                }
            }
            PerfEvent::Comm { pid, tid, name, exec, .. } => {
                if exec {
                    if let Some(state) = self.processes.get_mut(&pid) {
                        state.exec(&mut self.elf);
                        state.comm = name.clone();
                        self.profile.process_names.insert(pid, name.clone());
                    }
                }
                if pid.0 == tid.0 {
                    if let Some(state) = self.processes.get_mut(&pid) {
                        state.comm = name.clone();
                    }
                    self.profile.process_names.insert(pid, name.clone());
                }
                self.profile.thread_names.insert((pid, tid), name);
            }
            PerfEvent::Fork { pid, ppid, .. } => {
                if pid != ppid && self.follow_children && !self.processes.contains_key(&pid) {
                    if let Some(parent) = self.processes.get_mut(&ppid) {
                        tracing::debug!(%pid, %ppid, "following forked child");
                        // The trampolines of the frames that called fork were often made just
                        // before it: their lines must be in the table the child copies.
                        parent.poll_perf_map(&mut self.profile.strings, &mut self.elf);
                        let mut child = ProcessState::forked_from(parent, pid, &mut self.elf);
                        if !self.read_interpreter {
                            child.without_interpreter_reads();
                        }
                        child.lines = self.lines;
                        self.profile.process_names.insert(pid, child.comm.clone());
                        self.stats.processes += 1;
                        self.processes.insert(pid, child);
                    }
                }
            }
            PerfEvent::Exit { pid, tid, .. } => {
                if let Some(state) = self.processes.get_mut(&pid) {
                    if pid.0 == tid.0 {
                        state.poll_perf_map(&mut self.profile.strings, &mut self.elf);
                        state.exited = true;
                    } else {
                        state.forget_thread(tid);
                    }
                }
            }
            PerfEvent::Lost { count, .. } => self.stats.lost_records += count,
        }
    }

    /// Finds the state for a sample's process, creating it for a launched command after its
    /// exec, or for a child whose fork record is still in another CPU's buffer.
    fn ensure_state(&mut self, pid: Pid) -> bool {
        if self.processes.contains_key(&pid) {
            return true;
        }
        let adopt = self.is_expected(pid) || (self.follow_children && self.parent_tracked(pid));
        tracing::debug!(%pid, adopt, "sample from a process not tracked yet");
        adopt && self.track(pid).is_ok()
    }

    fn parent_tracked(&self, pid: Pid) -> bool {
        procfs::ppid(pid).is_some_and(|ppid| self.processes.contains_key(&ppid))
    }

    fn on_sample(&mut self, sample: SampleEvent) {
        let pid = sample.pid;
        let tid = sample.tid;
        if !self.ensure_state(pid) {
            self.stats.untracked_samples += 1;
            return;
        }
        let Self { processes, profile, stats, keys, threads_seen, capture, elf, .. } = self;
        let Some(state) = processes.get_mut(&pid) else { return };
        if state.new_in_batch {
            state.poll_perf_map(&mut profile.strings, elf);
        }
        keys.clear();
        let unwound = state.unwind_sample(&sample, &mut profile.strings, keys);
        match unwound.end {
            StackEnd::Complete if unwound.continued.is_some() => {
                stats.truncated += 1;
                stats.continued += 1;
                stats.continued_whole += 1;
                stats.continued_remembered += u64::from(unwound.continued == Some(Beyond::Remembered));
            }
            StackEnd::Complete => {}
            StackEnd::Truncated => {
                stats.truncated += 1;
                stats.continued += u64::from(unwound.continued.is_some());
                stats.completed += u64::from(unwound.completed_from.is_some());
            }
            StackEnd::Failed(_) => stats.unwind_failures += 1,
        }
        stats.without_cfi += u64::from(unwound.without_cfi > 0);
        if let Some(join) = unwound.joined.as_ref().filter(|_| unwound.end == StackEnd::Complete) {
            // Outer frames of a whole stack, entered before the trampoline was on.
            match join.outcome {
                JoinOutcome::Joined(_) => stats.outer_named += 1,
                JoinOutcome::Refused(why) => {
                    stats.outer_refused += 1;
                    tracing::trace!(?why, "frames outside the trampolines not named");
                }
                JoinOutcome::Unreadable => {}
            }
        } else if let Some(join) = &unwound.joined {
            if let Some(latency) = join.latency_ns {
                stats.read_latency.add(latency);
            }
            match join.outcome {
                JoinOutcome::Joined(_) => {
                    stats.joined += 1;
                    stats.join_reused += u64::from(join.latency_ns.is_none());
                }
                JoinOutcome::Refused(why) => {
                    stats.join_moved_on += 1;
                    tracing::trace!(?why, "interpreter frames not joined");
                }
                JoinOutcome::Unreadable => stats.join_unreadable += 1,
            }
        }
        // A replay case holds no interpreter memory: a stack with frames read from it could not
        // be replayed as found.
        let from_memory = unwound.continued.is_some()
            || unwound.joined.as_ref().is_some_and(|j| j.succeeded() && !j.confirmed_completion)
            || unwound.completed_from.as_ref().is_some_and(|from| from.beyond.is_some());
        if let Some(capture) = capture.as_mut().filter(|_| !from_memory && !state.lines) {
            capture.offer(state, &sample, &unwound, keys, &profile.strings, elf);
        }
        if threads_seen.insert((pid, tid)) {
            stats.threads += 1;
            profile.thread_names.entry((pid, tid)).or_insert_with(|| procfs::comm(pid, tid).unwrap_or_default());
        }
        stats.samples += 1;
        profile.add(SampleOwner { pid, tid }, keys, sample.time);
    }

    /// Final reads once sampling has stopped.
    pub fn finish(&mut self) {
        self.poll_perf_maps();
        if let Some(tasks) = &mut self.tasks {
            tasks.look_again();
        }
        self.poll_tasks();
        self.stats.corrupt_map_lines = self.processes.values().map(|p| p.perf_map_reader.corrupt_lines).sum();
    }
}
