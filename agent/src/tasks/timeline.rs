//! Tasks and their run slices, folded from [`TaskEvent`]s.

use std::collections::BTreeMap;

use super::ring::{Outcome, TaskEvent};

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
    pub created: i64,
    pub done: Option<(i64, Outcome, Option<String>)>,
    pub slices: Vec<Slice>,
    open: Option<(i64, u64, Option<i64>)>,
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

#[derive(Debug, Default)]
pub struct Timeline {
    pub tasks: BTreeMap<u32, Task>,
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

    pub fn apply(&mut self, events: impl IntoIterator<Item = TaskEvent>) {
        for event in events {
            match event {
                TaskEvent::Created { task, time, name, coro, parent } => {
                    self.tasks.insert(
                        task,
                        Task {
                            id: task,
                            name,
                            coro,
                            parent,
                            created: time,
                            done: None,
                            slices: Vec::new(),
                            open: None,
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
                TaskEvent::Started { task, time, thread, ready } => {
                    if let Some(t) = self.tasks.get_mut(&task) {
                        t.open = Some((time, thread, ready));
                    }
                }
                TaskEvent::Stopped { task, time, .. } => {
                    if let Some(t) = self.tasks.get_mut(&task) {
                        if let Some((start, thread, ready)) = t.open.take() {
                            let slice = Slice { start, end: time, thread, ready };
                            if self.streaming {
                                self.ended.push((task, slice));
                            } else {
                                t.slices.push(slice);
                            }
                        }
                    }
                }
                TaskEvent::Done { task, time, outcome, exception } => {
                    if let Some(t) = self.tasks.get_mut(&task) {
                        t.done = Some((time, outcome, exception));
                        t.changed = true;
                    }
                }
            }
        }
    }

    pub fn by_name(&self, name: &str) -> Vec<&Task> {
        self.tasks.values().filter(|t| t.name == name).collect()
    }

    /// Takes what changed since the last call, and forgets finished tasks once handed out.
    pub fn take_delta(&mut self) -> TaskDelta {
        let mut delta = TaskDelta { tasks: Vec::new(), slices: std::mem::take(&mut self.ended) };
        for t in self.tasks.values_mut().filter(|t| t.changed) {
            t.changed = false;
            delta.tasks.push(Task { slices: Vec::new(), ..t.clone() });
        }
        if self.streaming {
            self.tasks.retain(|_, t| t.done.is_none() || t.open.is_some());
        }
        delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn life() -> Vec<TaskEvent> {
        vec![
            TaskEvent::Created { task: 1, time: 0, name: "Task-1".into(), coro: "main".into(), parent: None },
            TaskEvent::Started { task: 1, time: 5, thread: 9, ready: Some(4) },
            TaskEvent::Stopped { task: 1, time: 7, thread: 9, finished: false },
            TaskEvent::Renamed { task: 1, name: "boss".into() },
            TaskEvent::Started { task: 1, time: 10, thread: 9, ready: None },
            TaskEvent::Stopped { task: 1, time: 12, thread: 9, finished: true },
            TaskEvent::Done { task: 1, time: 13, outcome: Outcome::Result, exception: None },
        ]
    }

    #[test]
    fn slices_and_renames() {
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
        assert_eq!(task.done, Some((13, Outcome::Result, None)));
    }

    #[test]
    fn streaming_hands_out_changes_once_and_forgets_finished_tasks() {
        let mut t = Timeline::streaming();
        let events = life();
        t.apply(events[..3].to_vec());
        let first = t.take_delta();
        assert_eq!(first.tasks.len(), 1);
        assert_eq!(first.slices, vec![(1, Slice { start: 5, end: 7, thread: 9, ready: Some(4) })]);
        assert!(t.take_delta().is_empty(), "nothing new");
        t.apply(events[3..].to_vec());
        let second = t.take_delta();
        assert_eq!(second.tasks[0].name, "boss");
        assert_eq!(second.tasks[0].done, Some((13, Outcome::Result, None)));
        assert_eq!(second.slices.len(), 1);
        assert!(t.tasks.is_empty(), "finished tasks are forgotten after streaming");
    }
}
