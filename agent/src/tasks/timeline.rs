//! Tasks and their run slices, folded from [`TaskEvent`]s.

use std::collections::BTreeMap;

use super::ring::{Outcome, TaskEvent};

/// When a task ran: CLOCK_MONOTONIC nanoseconds and the Python thread id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    pub start: i64,
    pub end: i64,
    pub thread: u64,
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
    open: Option<(i64, u64)>,
}

#[derive(Debug, Default)]
pub struct Timeline {
    pub tasks: BTreeMap<u32, Task>,
}

impl Timeline {
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
                        },
                    );
                }
                TaskEvent::Renamed { task, name } => {
                    if let Some(t) = self.tasks.get_mut(&task) {
                        t.name = name;
                    }
                }
                TaskEvent::Started { task, time, thread } => {
                    if let Some(t) = self.tasks.get_mut(&task) {
                        t.open = Some((time, thread));
                    }
                }
                TaskEvent::Stopped { task, time, .. } => {
                    if let Some(t) = self.tasks.get_mut(&task) {
                        if let Some((start, thread)) = t.open.take() {
                            t.slices.push(Slice { start, end: time, thread });
                        }
                    }
                }
                TaskEvent::Done { task, time, outcome, exception } => {
                    if let Some(t) = self.tasks.get_mut(&task) {
                        t.done = Some((time, outcome, exception));
                    }
                }
            }
        }
    }

    pub fn by_name(&self, name: &str) -> Vec<&Task> {
        self.tasks.values().filter(|t| t.name == name).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_and_renames() {
        let mut t = Timeline::default();
        t.apply([
            TaskEvent::Created { task: 1, time: 0, name: "Task-1".into(), coro: "main".into(), parent: None },
            TaskEvent::Started { task: 1, time: 5, thread: 9 },
            TaskEvent::Stopped { task: 1, time: 7, thread: 9, finished: false },
            TaskEvent::Renamed { task: 1, name: "boss".into() },
            TaskEvent::Started { task: 1, time: 10, thread: 9 },
            TaskEvent::Stopped { task: 1, time: 12, thread: 9, finished: true },
            TaskEvent::Done { task: 1, time: 13, outcome: Outcome::Result, exception: None },
        ]);
        let task = &t.by_name("boss")[0];
        assert_eq!(task.slices, vec![Slice { start: 5, end: 7, thread: 9 }, Slice { start: 10, end: 12, thread: 9 }]);
        assert_eq!(task.done, Some((13, Outcome::Result, None)));
    }
}
