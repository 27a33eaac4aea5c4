//! Completing a sample whose stack copy was cut short with the Python frames the interpreter
//! holds, read from the process's memory (stage **interp**, `interp/join.rs`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::{ProcessState, Tid};
use crate::intern::{Interner, StrId};
use crate::interp::{
    CallersCheck, ChainSnapshot, CodeInfo, CutSample, Interpreter, JoinOutcome, OuterFrames, PyFrame, Refusal,
    SampledCall, Slot,
};
use crate::perf::SampleEvent;
use crate::process::procfs;
use crate::unwind::stack::RawFrame;

/// A join tried for one sample: what it gave and how long after the sample the read began
/// (`None`: taken from the thread's last join, without a read).
#[derive(Debug, Clone)]
pub struct Join {
    pub outcome: JoinOutcome,
    pub latency_ns: Option<u64>,
    /// The completion from history gave the same Python frames, and is what the stack shows.
    pub confirmed_completion: bool,
}

/// Joins remembered per thread: a thread spinning deep down is sampled at many places, each
/// with its own outermost trampoline in the copy. Entries with the same frames share them.
const RECENT_JOINS: usize = 32;

/// A thread's recent joins, and whether its last cut sample was answered from them.
#[derive(Debug, Default)]
pub struct ThreadJoins {
    recent: VecDeque<RecentJoin>,
    last_reused: bool,
    /// The frames outside the sampled call the thread's last read found, whether it joined
    /// or not: what a read shim by shim must agree with.
    last_outer: Option<OuterFrames>,
}

/// The thread's chain read right after a cut sample arrived, before the sample was walked:
/// the walk takes time (milliseconds for a deep stack in a debug build) in which the thread
/// may leave the sampled call.
pub struct EarlyRead {
    snapshot: Result<ChainSnapshot, JoinOutcome>,
    latency_ns: u64,
}

/// A thread's recent join: while its samples show the same call under the same callers, the
/// same frames lie beyond the copy.
#[derive(Debug)]
pub struct RecentJoin {
    trampoline: u64,
    trampoline_sp: u64,
    /// The copy from the trampoline's frame to its end, by length and keyed hash: up to 64 KiB
    /// each, kept whole it would cost a process of many threads too much.
    callers: (usize, u64),
    frames: OuterFrames,
}

/// The length and hash (keyed per process, so a target cannot aim for a collision) of the
/// callers' part of a copy.
fn callers_key(hasher: &std::collections::hash_map::RandomState, callers: &[u8]) -> (usize, u64) {
    use std::hash::BuildHasher;
    (callers.len(), hasher.hash_one(callers))
}

impl EarlyRead {
    /// The chain read, if it was read at one moment.
    pub(super) fn snapshot(&self) -> Option<&ChainSnapshot> {
        self.snapshot.as_ref().ok()
    }
}

impl Join {
    pub fn succeeded(&self) -> bool {
        matches!(self.outcome, JoinOutcome::Joined(_))
    }
}

impl ProcessState {
    /// Reads the thread's chain at once if the sample's copy is full, so the stack may go on
    /// beyond it, and the interpreter is being read; not while the thread's samples are
    /// answered from its recent joins (a thread spinning deep down), where a read is wasted.
    pub(super) fn read_first(&mut self, sample: &SampleEvent) -> Option<EarlyRead> {
        let reused = self.recent_joins.get(&sample.tid).is_some_and(|t| t.last_reused);
        if !(sample.stack_filled || self.lines || self.names_untrampolined) || reused || !self.reads_interpreter() {
            return None;
        }
        let sp = sample.regs?.sp;
        let native_id = self.ns_tid(sample.tid);
        let Slot::Attached(interpreter) = &mut self.interpreter else { return None };
        let latency_ns = procfs::monotonic_ns().saturating_sub(sample.time);
        let beyond =
            if sample.stack_filled { self.continuations.get(&sample.tid).map_or(0, |t| t.early_read()) } else { 0 };
        Some(EarlyRead { snapshot: interpreter.snapshot(native_id, sp, sample.stack.len(), beyond), latency_ns })
    }

    /// Joins a cut-short sample with the thread's chain (read first, or now), if the
    /// process's interpreter can be read and the walk found a trampoline to anchor on.
    pub(super) fn join_with_interpreter(
        &mut self,
        sample: &SampleEvent,
        frames: &[RawFrame],
        early: Option<EarlyRead>,
        whole: bool,
    ) -> Option<Join> {
        let sp = sample.regs?.sp;
        let outermost_trampoline = frames
            .iter()
            .enumerate()
            .rev()
            .find_map(|(i, f)| Some((f.sp, self.perf_map.trampoline_at(f.lookup_addr(i == 0))?.0)));
        // A whole stack with no trampoline at all runs Python only in calls entered before the
        // trampoline was on: all of them lie outside the sample's own stack pointer.
        let untrampolined = whole && self.names_untrampolined;
        let (trampoline_sp, trampoline) = match outermost_trampoline {
            Some(found) => found,
            None if untrampolined => (sp, 0),
            None => return None,
        };
        if matches!(self.interpreter, Slot::NotTried) {
            self.interpreter = self.attach_interpreter();
        }
        let native_id = self.ns_tid(sample.tid);
        let Slot::Attached(interpreter) = &mut self.interpreter else { return None };
        let cut = CutSample { sp, stack: &sample.stack, trampoline_sp, trampoline };
        // Two samples that hold the same call at the same place, under callers whose stack is
        // the same byte for byte, were taken in one call: both copies show it live. (The read
        // that joined the first proved what lies beyond.)
        let callers = cut.callers().map(|c| callers_key(&self.callers_hasher, c));
        let thread = self.recent_joins.entry(sample.tid).or_default();
        let same = |r: &&RecentJoin| {
            r.trampoline == trampoline && r.trampoline_sp == trampoline_sp && Some(r.callers) == callers
        };
        thread.last_reused = false;
        if let Some(known) = thread.recent.iter().find(same) {
            thread.last_reused = true;
            return Some(Join {
                outcome: JoinOutcome::Joined(known.frames.clone()),
                latency_ns: None,
                confirmed_completion: false,
            });
        }
        // A first read that failed is tried again now; one that was refused is not, as the
        // thread had already left the sampled call.
        let (snapshot, latency_ns) = match early {
            Some(EarlyRead { snapshot: Ok(snapshot), latency_ns }) => (Ok(snapshot), latency_ns),
            _ => {
                let latency_ns = procfs::monotonic_ns().saturating_sub(sample.time);
                let len = cut.callers().map_or(0, <[u8]>::len);
                (interpreter.snapshot(native_id, trampoline_sp, len, 0), latency_ns)
            }
        };
        // A whole stack's calls outside the sampled one (entered before the trampoline was on)
        // are checked shim by shim when the sampled call itself was left and made again: its
        // callers' frames hold per-call values. Their frames must then also be what the
        // thread's previous read found, so a read on each side of the sample agrees.
        let mut relaxed = false;
        let mut outcome = match &snapshot {
            Err(outcome) => outcome.clone(),
            Ok(snapshot) if trampoline == 0 => {
                relaxed = true;
                interpreter.join_snapshot(snapshot, cut, CallersCheck::Shims)
            }
            Ok(snapshot) => match interpreter.join_snapshot(snapshot, cut, CallersCheck::Bytes) {
                JoinOutcome::Refused(Refusal::CallersChanged) if untrampolined => {
                    relaxed = true;
                    interpreter.join_snapshot(snapshot, cut, CallersCheck::Shims)
                }
                other => other,
            },
        };
        let last_outer = match &outcome {
            JoinOutcome::Joined(read) => thread.last_outer.replace(read.clone()),
            _ => thread.last_outer.clone(),
        };
        if let (true, JoinOutcome::Joined(read)) = (relaxed, &outcome) {
            let bracketed = last_outer.is_some_and(|last| {
                last.shims == read.shims
                    && last.frames.len() == read.frames.len()
                    && last.frames.iter().zip(read.frames.iter()).all(|(a, b)| Arc::ptr_eq(&a.code, &b.code))
            });
            if !bracketed {
                outcome = JoinOutcome::Refused(Refusal::CallersChanged);
            }
            return Some(Join { outcome, latency_ns: Some(latency_ns), confirmed_completion: false });
        }
        if let (JoinOutcome::Joined(frames), Some(callers)) = (&outcome, callers) {
            let same_frames = |r: &RecentJoin| {
                r.frames.shims == frames.shims
                    && r.frames.frames.len() == frames.frames.len()
                    && r.frames
                        .frames
                        .iter()
                        .zip(frames.frames.iter())
                        .all(|(a, b)| Arc::ptr_eq(&a.code, &b.code) && a.unit == b.unit)
            };
            let recent = &mut thread.recent;
            let frames = recent.iter().find(|r| same_frames(r)).map_or_else(|| frames.clone(), |r| r.frames.clone());
            recent.push_front(RecentJoin { trampoline, trampoline_sp, callers, frames });
            recent.truncate(RECENT_JOINS);
        }
        Some(Join { outcome, latency_ns: Some(latency_ns), confirmed_completion: false })
    }

    /// Whether completed frames (those after the sample's own, then the Python frames read
    /// beyond them for the stack they came from) name the same Python functions, in order, as
    /// a join read them.
    pub(super) fn same_python_frames(
        &self,
        completed: &[RawFrame],
        beyond: Option<&[PyFrame]>,
        join: &Join,
        strings: &mut Interner,
    ) -> bool {
        let JoinOutcome::Joined(OuterFrames { frames: read, .. }) = &join.outcome else { return false };
        let mut name = |f: &PyFrame| strings.intern(&format!("py::{}:{}", f.code.qualname, f.code.filename));
        let beyond: Vec<StrId> = beyond.unwrap_or_default().iter().map(&mut name).collect();
        let named = completed.iter().filter_map(|f| self.perf_map.lookup(f.addr).map(|(_, entry)| entry.name));
        let read_names: Vec<StrId> = read.iter().map(&mut name).collect();
        named.chain(beyond).eq(read_names)
    }

    /// Forgets a thread that exited.
    pub fn forget_thread(&mut self, tid: Tid) {
        self.completer.forget_thread(tid);
        self.recent_joins.remove(&tid);
        self.forget_continuations(tid);
        self.ns_tids.remove(&tid);
    }

    /// The process's interpreter reader, attached now if it was not tried yet; `Err` says why
    /// there is none (the attach failure was logged when it was tried).
    pub fn interpreter(&mut self) -> Result<&mut Interpreter, String> {
        if matches!(self.interpreter, Slot::NotTried) {
            self.interpreter = self.attach_interpreter();
        }
        match &mut self.interpreter {
            Slot::Attached(interpreter) => Ok(interpreter),
            _ if !self.runtime.has_perf_trampoline() => Err(format!("{} has no perf trampoline", self.runtime)),
            _ => Err("it could not be read (see the warning above)".into()),
        }
    }

    fn attach_interpreter(&self) -> Slot {
        if !self.runtime.has_perf_trampoline() {
            return Slot::Unavailable;
        }
        match Interpreter::attach(self) {
            Ok(interpreter) => {
                tracing::debug!(pid = %self.pid, version = %interpreter.version(), "reading the interpreter's frames");
                Slot::Attached(Box::new(interpreter))
            }
            Err(e) => {
                tracing::warn!(
                    "process {}: {e}; stacks deeper than the stack copy are completed from earlier samples instead",
                    self.pid
                );
                Slot::Unavailable
            }
        }
    }

    /// The thread's id in the process's own PID namespace, which the interpreter records.
    pub(super) fn ns_tid(&mut self, tid: Tid) -> u64 {
        if self.ns_pid.0 == self.pid.0 {
            return u64::from(tid.0);
        }
        let pid = self.pid;
        let known: &mut HashMap<Tid, u64> = &mut self.ns_tids;
        *known.entry(tid).or_insert_with(|| procfs::task_ns_tid(pid, tid).map_or(0, u64::from))
    }

    /// The line of each Python frame the sample's own walk found (by index in `frames`, of the
    /// first `own` of them), read from the interpreter right after the sample (`--lines`).
    pub(super) fn python_lines(
        &mut self,
        sample: &SampleEvent,
        frames: &[RawFrame],
        own: usize,
        early: Option<&EarlyRead>,
    ) -> Vec<(usize, u32)> {
        let Some(sp) = sample.regs.map(|r| r.sp) else { return Vec::new() };
        let calls: Vec<(usize, SampledCall)> = frames[..own.min(frames.len())]
            .iter()
            .enumerate()
            .filter_map(|(i, f)| {
                let (trampoline, _) = self.perf_map.trampoline_at(f.lookup_addr(i == 0))?;
                Some((i, SampledCall { sp: f.sp, trampoline }))
            })
            .collect();
        if calls.is_empty() {
            return Vec::new();
        }
        if matches!(self.interpreter, Slot::NotTried) {
            self.interpreter = self.attach_interpreter();
        }
        let native_id = self.ns_tid(sample.tid);
        let Slot::Attached(interpreter) = &mut self.interpreter else { return Vec::new() };
        let just_calls: Vec<SampledCall> = calls.iter().map(|(_, c)| *c).collect();
        let lines = match early.map(|e| &e.snapshot) {
            Some(Ok(snapshot)) => interpreter.lines_from(snapshot, sp, &sample.stack, &just_calls),
            _ => interpreter.lines(native_id, sp, &sample.stack, &just_calls).unwrap_or_default(),
        };
        calls.iter().zip(lines).filter_map(|((i, _), line)| Some((*i, line?))).collect()
    }

    /// Turns the reads off (`--no-interpreter-reads`), for this program and any it execs.
    pub fn without_interpreter_reads(&mut self) {
        self.interpreter = Slot::Unavailable;
        self.interpreter_reads_off = true;
    }

    /// Whether this process's interpreter is being read, so samples should be processed soon
    /// after they are taken.
    pub fn reads_interpreter(&self) -> bool {
        matches!(self.interpreter, Slot::Attached(_))
    }
}

/// Code objects by identity, each with the frame text its trampoline's perf-map line gives
/// the same function, so frames read from memory and frames named by trampolines aggregate
/// together. Holding the `Arc` keeps its address from being reused while it is a key.
#[derive(Debug, Default)]
pub struct PythonNames(HashMap<usize, (Arc<CodeInfo>, StrId)>);

/// Names kept per process before the table starts over.
const MAX_NAMES: usize = 1 << 16;

impl PythonNames {
    pub(super) fn of(&mut self, frame: &PyFrame, strings: &mut Interner) -> StrId {
        let key = Arc::as_ptr(&frame.code) as usize;
        if let Some((_, id)) = self.0.get(&key) {
            return *id;
        }
        if self.0.len() >= MAX_NAMES {
            self.0.clear();
        }
        let id = strings.intern(&format!("py::{}:{}", frame.code.qualname, frame.code.filename));
        self.0.insert(key, (frame.code.clone(), id));
        id
    }
}
