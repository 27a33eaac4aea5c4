//! Tasks and their run slices, folded from [`TaskEvent`]s (docs/TASK_RING.md, "Decoding").
//!
//! The monitor writes as little as it can per step: a stop may not name its task, and no
//! record names a thread. So the timeline keeps, per OS thread, a stack of running tasks: the
//! thread of a task is its loop's thread (from LOOP records), a start of another task on top
//! of a running one (an eager child's first step) splits the running one's slice, and a stop
//! ends the slice on top.

use std::collections::{BTreeMap, HashMap};

use super::ring::{LoopInfo, Outcome, TaskEvent};

/// When a task ran: CLOCK_MONOTONIC nanoseconds and the OS thread id perf samples carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    pub start: i64,
    pub end: i64,
    pub thread: u64,
    /// When the task became ready to run this slice, if the monitor knows.
    pub ready: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub id: u32,
    pub name: String,
    pub coro: String,
    pub parent: Option<u32>,
    pub loop_id: u32,
    pub created: i64,
    pub done: Option<(i64, Outcome, Option<String>)>,
    pub slices: Vec<Slice>,
    /// The first time the task became ready since its last slice.
    ready: Option<i64>,
    /// Created, renamed or finished since the last [`Timeline::take_delta`].
    changed: bool,
}

/// What changed since the last [`Timeline::take_delta`], for streaming.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TaskDelta {
    /// Tasks created, renamed or finished, described in full (without slices).
    pub tasks: Vec<Task>,
    /// Slices that ended, with their task ids, in the order they ended.
    pub slices: Vec<(u32, Slice)>,
}

impl TaskDelta {
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty() && self.slices.is_empty()
    }
}

/// A running task on a thread's stack.
#[derive(Debug, Clone, Copy)]
struct Running {
    task: u32,
    /// Nesting of the task's root coroutine code (the same code awaited inside the task).
    depth: u32,
    since: i64,
}

#[derive(Debug, Default)]
pub struct Timeline {
    pub tasks: BTreeMap<u32, Task>,
    /// Loops that are not asyncio's (uvloop), by loop id: what the monitor cannot follow there.
    pub foreign_loops: BTreeMap<u32, LoopInfo>,
    loop_thread: HashMap<u32, u64>,
    /// The thread of the first loop: where unnamed stops happen.
    single_thread: Option<u64>,
    stacks: HashMap<u64, Vec<Running>>,
    /// Time of the last stop, which is when a following DONE happened.
    last_stop: i64,
    /// Stops that matched no running task (after lost records).
    pub unmatched: u64,
    /// A second thread runs asyncio: stops name their task.
    multi: bool,
    /// Slices closed since the last delta, when streaming.
    ended: Vec<(u32, Slice)>,
    streaming: bool,
}

impl Timeline {
    /// A timeline that hands out what changed instead of keeping everything: finished tasks
    /// are forgotten once taken, so memory follows the live tasks, not the run's length.
    pub fn streaming() -> Self {
        Self { streaming: true, ..Self::default() }
    }

    fn thread_of(&self, task: u32) -> u64 {
        self.tasks
            .get(&task)
            .and_then(|t| self.loop_thread.get(&t.loop_id))
            .copied()
            .or(self.single_thread)
            .unwrap_or(0)
    }

    pub fn apply(&mut self, events: impl IntoIterator<Item = TaskEvent>) {
        for event in events {
            match event {
                TaskEvent::Loop { loop_id, thread, .. } => {
                    self.loop_thread.insert(loop_id, thread);
                    self.single_thread.get_or_insert(thread);
                }
                TaskEvent::MultiThread => self.multi = true,
                TaskEvent::LoopInfo { loop_id, info } => {
                    self.foreign_loops.insert(loop_id, info);
                }
                TaskEvent::Created { task, time, name, coro, parent, loop_id } => {
                    self.tasks.insert(
                        task,
                        Task {
                            id: task,
                            name,
                            coro,
                            parent,
                            loop_id,
                            created: time,
                            done: None,
                            slices: Vec::new(),
                            ready: None,
                            changed: true,
                        },
                    );
                }
                TaskEvent::Renamed { task, name } => {
                    if let Some(t) = self.tasks.get_mut(&task) {
                        t.name = name;
                        t.changed = true;
                    }
                }
                TaskEvent::Ready { task, time } => {
                    if let Some(t) = self.tasks.get_mut(&task) {
                        t.ready.get_or_insert(time);
                    }
                }
                TaskEvent::Started { task, time } => self.start(task, time),
                TaskEvent::Stopped { task, time } => self.stop(task, time),
                TaskEvent::Done { task, outcome, exception } => {
                    let time = self.last_stop;
                    if let Some(t) = self.tasks.get_mut(&task) {
                        t.done = Some((time, outcome, exception));
                        t.changed = true;
                    }
                }
            }
        }
    }

    /// Records were lost: which task runs where, and pending ready times, are unknown until
    /// the next start on each thread. Better no slice than a wrong one.
    pub fn lost(&mut self) {
        self.stacks.clear();
        for t in self.tasks.values_mut() {
            t.ready = None;
        }
    }

    fn start(&mut self, task: u32, time: i64) {
        if self.multi && task != 0 && !self.tasks.contains_key(&task) {
            // Its CREATE was lost: its loop, hence its thread, is unknown.
            return;
        }
        let thread = if task != 0 { self.thread_of(task) } else { self.single_thread.unwrap_or(0) };
        let mut stack = self.stacks.remove(&thread).unwrap_or_default();
        match stack.last_mut() {
            Some(top) if top.task == task => top.depth = top.depth.saturating_add(1),
            top => {
                if let Some(top) = top {
                    // An eager child's first step runs inside its parent's: split the parent.
                    let parent = *top;
                    top.since = time;
                    self.end_slice(parent, time, thread);
                }
                stack.push(Running { task, depth: 1, since: time });
            }
        }
        self.stacks.insert(thread, stack);
    }

    fn stop(&mut self, task: Option<u32>, time: i64) {
        self.last_stop = time;
        let thread = match task {
            Some(t) => self.thread_of(t),
            None => self.single_thread.unwrap_or(0),
        };
        let Some(mut stack) = self.stacks.remove(&thread) else {
            self.unmatched += 1;
            return;
        };
        match stack.last_mut() {
            Some(top) if task.is_none_or(|t| t == top.task) => {
                top.depth = top.depth.saturating_sub(1);
                if top.depth == 0 {
                    let ended = *top;
                    stack.pop();
                    self.end_slice(ended, time, thread);
                    if let Some(below) = stack.last_mut() {
                        below.since = time; // the task below resumes
                    }
                }
            }
            _ => self.unmatched += 1,
        }
        self.stacks.insert(thread, stack);
    }

    fn end_slice(&mut self, running: Running, end: i64, thread: u64) {
        if running.task == 0 {
            return;
        }
        let Some(t) = self.tasks.get_mut(&running.task) else { return };
        let slice = Slice { start: running.since, end, thread, ready: t.ready.take().filter(|&r| r <= running.since) };
        if self.streaming {
            self.ended.push((running.task, slice));
        } else {
            t.slices.push(slice);
        }
    }

    pub fn by_name(&self, name: &str) -> Vec<&Task> {
        self.tasks.values().filter(|t| t.name == name).collect()
    }

    /// Takes what changed since the last call; when streaming, forgets finished tasks once
    /// handed out (their last slice ends before their DONE).
    pub fn take_delta(&mut self) -> TaskDelta {
        let mut delta = TaskDelta { tasks: Vec::new(), slices: std::mem::take(&mut self.ended) };
        for t in self.tasks.values_mut().filter(|t| t.changed) {
            t.changed = false;
            delta.tasks.push(Task { slices: Vec::new(), ..t.clone() });
        }
        if self.streaming {
            self.tasks.retain(|_, t| t.done.is_none());
        }
        delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created(task: u32, parent: Option<u32>) -> TaskEvent {
        TaskEvent::Created { task, time: 0, name: format!("t{task}"), coro: "c".into(), parent, loop_id: 1 }
    }

    fn life() -> Vec<TaskEvent> {
        vec![
            TaskEvent::Loop { loop_id: 1, time: 0, thread: 9 },
            created(1, None),
            TaskEvent::Ready { task: 1, time: 4 },
            TaskEvent::Started { task: 1, time: 5 },
            TaskEvent::Stopped { task: None, time: 7 },
            TaskEvent::Renamed { task: 1, name: "boss".into() },
            TaskEvent::Started { task: 1, time: 10 },
            TaskEvent::Stopped { task: Some(1), time: 12 },
            TaskEvent::Done { task: 1, outcome: Outcome::Result, exception: None },
        ]
    }

    #[test]
    fn slices_renames_lag_and_completion() {
        let mut t = Timeline::default();
        t.apply(life());
        let task = &t.by_name("boss")[0];
        assert_eq!(
            task.slices,
            vec![
                Slice { start: 5, end: 7, thread: 9, ready: Some(4) },
                Slice { start: 10, end: 12, thread: 9, ready: None }
            ]
        );
        assert_eq!(task.done, Some((12, Outcome::Result, None)), "done when its last step stopped");
    }

    #[test]
    fn an_eager_child_splits_its_parent_and_nested_code_is_one_slice() {
        let mut t = Timeline::default();
        t.apply([
            TaskEvent::Loop { loop_id: 1, time: 0, thread: 9 },
            created(1, None),
            created(2, Some(1)),
            TaskEvent::Started { task: 1, time: 10 },
            TaskEvent::Started { task: 2, time: 20 }, // eager child, inside the parent's step
            TaskEvent::Started { task: 2, time: 22 }, // the same coroutine code awaited inside
            TaskEvent::Stopped { task: None, time: 24 },
            TaskEvent::Stopped { task: None, time: 25 }, // the child yields
            TaskEvent::Stopped { task: None, time: 30 }, // the parent's step ends
        ]);
        let slices = |id| t.tasks[&id].slices.iter().map(|s| (s.start, s.end)).collect::<Vec<_>>();
        assert_eq!(slices(1), vec![(10, 20), (25, 30)]);
        assert_eq!(slices(2), vec![(20, 25)]);
        assert_eq!(t.unmatched, 0);
    }

    #[test]
    fn tasks_of_a_second_loop_land_on_its_thread() {
        let mut t = Timeline::default();
        t.apply([
            TaskEvent::Loop { loop_id: 1, time: 0, thread: 9 },
            TaskEvent::Loop { loop_id: 2, time: 0, thread: 11 },
            TaskEvent::MultiThread,
            created(1, None),
            TaskEvent::Created { task: 2, time: 0, name: "side".into(), coro: "c".into(), parent: None, loop_id: 2 },
            TaskEvent::Started { task: 1, time: 10 },
            TaskEvent::Started { task: 2, time: 11 },
            TaskEvent::Stopped { task: Some(1), time: 15 },
            TaskEvent::Stopped { task: Some(2), time: 16 },
        ]);
        assert_eq!(t.tasks[&1].slices, vec![Slice { start: 10, end: 15, thread: 9, ready: None }]);
        assert_eq!(t.tasks[&2].slices, vec![Slice { start: 11, end: 16, thread: 11, ready: None }]);
    }

    #[test]
    fn streaming_hands_out_changes_once_and_forgets_finished_tasks() {
        let mut t = Timeline::streaming();
        let events = life();
        t.apply(events[..5].to_vec());
        let first = t.take_delta();
        assert_eq!(first.tasks.len(), 1);
        assert_eq!(first.slices, vec![(1, Slice { start: 5, end: 7, thread: 9, ready: Some(4) })]);
        assert!(t.take_delta().is_empty(), "nothing new");
        t.apply(events[5..].to_vec());
        let second = t.take_delta();
        assert_eq!(second.tasks[0].name, "boss");
        assert_eq!(second.tasks[0].done, Some((12, Outcome::Result, None)));
        assert_eq!(second.slices.len(), 1);
        assert!(t.tasks.is_empty(), "finished tasks are forgotten after streaming");
    }

    #[test]
    fn after_a_loss_nothing_is_resumed_from_a_stale_stack() {
        let mut t = Timeline::default();
        let events = life();
        t.apply(events[..4].to_vec()); // task 1 started; its stop will be lost
        t.lost();
        t.apply([TaskEvent::Started { task: 1, time: 50 }, TaskEvent::Stopped { task: None, time: 60 }]);
        assert_eq!(t.tasks[&1].slices, vec![Slice { start: 50, end: 60, thread: 9, ready: None }]);
        assert_eq!(t.stacks.get(&9).map(Vec::len), Some(0), "no phantom task below");
    }
}
