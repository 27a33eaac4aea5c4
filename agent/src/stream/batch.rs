//! Turns a window of samples into a self-contained `ember.v1.Batch`: its own string, frame and
//! stack tables, and per-process columns of (stack, tid, time delta).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ember_profile::{Frame, FrameKind};
use ember_proto::v1;

use crate::aggregate::Window;
use crate::process::{FrameKey, Pid};
use crate::tasks::ring::Outcome;
use crate::tasks::timeline::TaskDelta;

/// CLOCK_MONOTONIC stays below 2^62 ns (146 years of uptime); anything else is corrupt.
fn plausible(ns: i64) -> bool {
    (1..1 << 62).contains(&ns)
}

/// Per process, the task changes of a window and the monitor records lost meanwhile.
pub type TaskDeltas = BTreeMap<Pid, (TaskDelta, u64)>;

/// Turns window stack ids into frames (root first), given resolved frame keys.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    strings: Vec<String>,
    string_ids: HashMap<String, u32>,
    frames: Vec<v1::Frame>,
    frame_ids: HashMap<Frame, u32>,
}

fn kind(k: FrameKind) -> v1::FrameKind {
    match k {
        FrameKind::Python => v1::FrameKind::Python,
        FrameKind::Native => v1::FrameKind::Native,
        FrameKind::Kernel => v1::FrameKind::Kernel,
        FrameKind::Marker => v1::FrameKind::Marker,
    }
}

impl BatchBuilder {
    fn string(&mut self, s: &str) -> u32 {
        if self.strings.is_empty() {
            self.strings.push(String::new());
            self.string_ids.insert(String::new(), 0);
        }
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = self.strings.len() as u32;
        self.strings.push(s.to_string());
        self.string_ids.insert(s.to_string(), id);
        id
    }

    fn frame(&mut self, f: &Frame) -> u32 {
        if let Some(&id) = self.frame_ids.get(f) {
            return id;
        }
        let frame = v1::Frame {
            text: self.string(&f.text),
            function: self.string(&f.function),
            file: self.string(&f.file),
            kind: kind(f.kind) as i32,
            interpreter_plumbing: f.interpreter_plumbing,
            line: f.line.unwrap_or(0),
        };
        let id = self.frames.len() as u32;
        self.frames.push(frame);
        self.frame_ids.insert(f.clone(), id);
        id
    }

    fn task_block(&mut self, pid: Pid, delta: &TaskDelta, lost_records: u64) -> v1::TaskBlock {
        let mut block = v1::TaskBlock { process: pid.0, lost_records, ..Default::default() };
        for t in delta.tasks.iter().filter(|t| plausible(t.created)) {
            let (done_nanos, state, exception) = match &t.done {
                None => (0, v1::TaskState::Pending, None),
                Some((time, Outcome::Result, _)) => (*time, v1::TaskState::Finished, None),
                Some((time, Outcome::Exception, e)) => (*time, v1::TaskState::Failed, e.as_deref()),
                Some((time, Outcome::Cancelled, _)) => (*time, v1::TaskState::Cancelled, None),
            };
            block.tasks.push(v1::TaskInfo {
                id: u64::from(t.id),
                name: self.string(&t.name),
                coro: self.string(&t.coro),
                parent: t.parent.map_or(0, u64::from),
                created_nanos: t.created as u64,
                done_nanos: if plausible(done_nanos) { done_nanos as u64 } else { 0 },
                state: state as i32,
                exception: exception.map_or(0, |e| self.string(e)),
            });
        }
        // Times come from the target's memory: a slice that makes no sense is dropped here, so
        // it cannot get the whole batch (samples included) refused by the collector.
        let slices: Vec<_> =
            delta.slices.iter().filter(|(_, s)| plausible(s.start) && plausible(s.end) && s.end >= s.start).collect();
        let any_ready = slices.iter().any(|(_, s)| s.ready.is_some());
        for (task, s) in slices {
            block.slice_task.push(u64::from(*task));
            block.slice_tid.push(u32::try_from(s.thread).unwrap_or(0));
            block.slice_start_nanos.push(s.start as u64);
            block.slice_duration_nanos.push((s.end - s.start) as u64);
            if any_ready {
                block.slice_ready_nanos.push(s.ready.filter(|&r| plausible(r)).map_or(0, |r| r as u64));
            }
        }
        block
    }

    /// Builds the batch of one window. `frames_of` gives the frames of a key (outermost
    /// inline first); `processes` the descriptor of each process in the window.
    #[allow(clippy::too_many_arguments)]
    pub fn build<'a>(
        mut self,
        window: &Window,
        frames_of: impl Fn(&FrameKey) -> &'a [Frame],
        mut processes: BTreeMap<Pid, v1::Process>,
        thread_names: &HashMap<(Pid, crate::process::Tid), String>,
        tasks: &TaskDeltas,
        monotonic_to_unix_nanos: i64,
        rate_hz: u32,
    ) -> v1::Batch {
        let mut stacks: Vec<v1::Stack> = Vec::with_capacity(window.stacks.len());
        for keys in &window.stacks {
            let frames = keys.iter().rev().flat_map(&frames_of).map(|f| self.frame(f)).collect();
            stacks.push(v1::Stack { frames });
        }
        let mut blocks: BTreeMap<Pid, v1::SampleBlock> = BTreeMap::new();
        let mut last_time: HashMap<Pid, u64> = HashMap::new();
        let mut samples: Vec<_> = window.samples.iter().collect();
        samples.sort_by_key(|s| (s.owner.pid, s.time));
        for s in samples {
            let pid = s.owner.pid;
            let block = blocks.entry(pid).or_insert_with(|| v1::SampleBlock {
                process: pid.0,
                base_time_nanos: s.time,
                ..Default::default()
            });
            let prev = last_time.insert(pid, s.time).unwrap_or(s.time);
            block.stack.push(s.stack.0);
            block.tid.push(s.owner.tid.0);
            block.time_delta.push(s.time.saturating_sub(prev));
            if let Some(p) = processes.get_mut(&pid) {
                if !p.threads.iter().any(|t| t.tid == s.owner.tid.0) {
                    let name = thread_names.get(&(pid, s.owner.tid)).map_or("", String::as_str);
                    let name = self.string(name);
                    p.threads.push(v1::Thread { tid: s.owner.tid.0, name });
                }
            }
        }
        let task_blocks: Vec<v1::TaskBlock> = tasks
            .iter()
            .filter(|(pid, _)| processes.contains_key(pid))
            .map(|(pid, (delta, lost))| self.task_block(*pid, delta, *lost))
            .collect();
        processes.retain(|pid, _| blocks.contains_key(pid) || tasks.contains_key(pid));
        v1::Batch {
            agent_id: String::new(),
            sequence: 0,
            strings: std::mem::take(&mut self.strings),
            frames: std::mem::take(&mut self.frames),
            stacks,
            processes: processes.into_values().collect(),
            samples: blocks.into_values().collect(),
            monotonic_to_unix_nanos,
            rate_hz,
            tasks: task_blocks,
        }
    }
}

/// Frames resolved so far, kept across batches (a frame key's meaning never changes).
pub type FrameCache = HashMap<FrameKey, Arc<[Frame]>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{SampleOwner, StackId, TimedSample};
    use crate::process::Tid;

    #[test]
    fn slices_with_impossible_times_are_dropped_not_sent() {
        use crate::tasks::timeline::{Slice, TaskDelta};
        let ok = Slice { start: 100, end: 200, thread: 7, ready: Some(90) };
        let delta = TaskDelta {
            tasks: Vec::new(),
            slices: vec![
                (1, ok),
                (1, Slice { start: 300, end: 200, ..ok }),
                (1, Slice { start: -5, ..ok }),
                (1, Slice { end: i64::MAX, ..ok }),
            ],
        };
        let block = BatchBuilder::default().task_block(Pid(3), &delta, 0);
        assert_eq!(block.slice_start_nanos, vec![100]);
        assert_eq!(block.slice_duration_nanos, vec![100]);
        assert_eq!(block.slice_ready_nanos, vec![90]);
    }

    #[test]
    fn a_window_becomes_compact_columns() {
        let f = |n: &str| Frame {
            text: format!("{n} (a.py)"),
            function: n.into(),
            file: "a.py".into(),
            kind: FrameKind::Python,
            interpreter_plumbing: false,
            line: None,
        };
        let frames: HashMap<FrameKey, Vec<Frame>> =
            [(FrameKey::Kernel(1), vec![f("leaf")]), (FrameKey::Kernel(2), vec![f("main")])].into();
        let owner = SampleOwner { pid: Pid(10), tid: Tid(11) };
        let window = Window {
            samples: vec![
                TimedSample { time: 1_000, owner, stack: StackId(0) },
                TimedSample { time: 11_000, owner, stack: StackId(0) },
            ],
            stacks: vec![Arc::from(vec![FrameKey::Kernel(1), FrameKey::Kernel(2)])],
        };
        let processes = [(Pid(10), v1::Process { id: 10, pid: 10, ..Default::default() })].into();
        let names = [((Pid(10), Tid(11)), "worker".to_string())].into();
        let batch = BatchBuilder::default().build(
            &window,
            |k| frames.get(k).map_or(&[], Vec::as_slice),
            processes,
            &names,
            &TaskDeltas::new(),
            5,
            99,
        );
        assert_eq!(batch.strings[0], "");
        assert_eq!(batch.stacks.len(), 1);
        let root = batch.stacks[0].frames[0] as usize;
        assert_eq!(batch.strings[batch.frames[root].text as usize], "main (a.py)", "root first");
        let block = &batch.samples[0];
        assert_eq!((block.base_time_nanos, block.time_delta.clone()), (1_000, vec![0, 10_000]));
        assert_eq!(block.tid, vec![11, 11]);
        assert_eq!(batch.processes[0].threads.len(), 1);
        assert_eq!(batch.strings[batch.processes[0].threads[0].name as usize], "worker");
    }
}
