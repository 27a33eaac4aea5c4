//! The asyncio task tree of a dump: each task under the task that waits for it, as
//! `python -m asyncio pstree` prints it on 3.14.

use std::collections::HashMap;

use serde::Serialize;

use super::FrameDump;
use crate::interp::{AsyncTask, Awaiting};

#[derive(Debug, Serialize)]
pub struct TaskDump {
    /// The task's address, which is its `id()` while it lives.
    pub id: u64,
    pub name: String,
    /// What it is blocked on: `"task NAME"`, a future's type name, `"running"` or `"not started"`.
    pub awaiting: String,
    /// The id of the task it awaits, when that is a task.
    pub awaiting_task: Option<u64>,
    /// Its coroutine chain, innermost first.
    pub coroutine_stack: Vec<FrameDump>,
    /// The tasks it waits for (TaskGroup members, gathered or awaited tasks), by name.
    pub children: Vec<TaskDump>,
}

/// The tasks with no parent, each holding its children; siblings by name, then id.
pub fn tree(tasks: Vec<AsyncTask>) -> Vec<TaskDump> {
    let names: HashMap<u64, String> = tasks.iter().map(|t| (t.id, t.name.clone())).collect();
    let mut children: HashMap<Option<u64>, Vec<TaskDump>> = HashMap::new();
    let mut parent_of = HashMap::new();
    for task in tasks {
        let parent = task.parent.filter(|p| names.contains_key(p));
        parent_of.insert(task.id, parent);
        let (awaiting, awaiting_task) = match &task.awaiting {
            Awaiting::Task(id) => (format!("task {}", names.get(id).map_or("?", String::as_str)), Some(*id)),
            Awaiting::Object(type_name) => (type_name.clone(), None),
            Awaiting::Running => ("running".into(), None),
            Awaiting::NotStarted => ("not started".into(), None),
        };
        let node = TaskDump {
            id: task.id,
            name: task.name,
            awaiting,
            awaiting_task,
            coroutine_stack: task.frames.iter().map(FrameDump::from).collect(),
            children: Vec::new(),
        };
        children.entry(parent).or_default().push(node);
    }
    // Attach deepest first: a node is complete once every task below it has been attached.
    let depth = |mut id: u64| {
        let mut n = 0usize;
        while let Some(Some(up)) = parent_of.get(&id) {
            id = *up;
            n += 1;
            if n > parent_of.len() {
                break;
            }
        }
        n
    };
    let mut parents: Vec<u64> = children.keys().filter_map(|p| *p).collect();
    parents.sort_by_key(|&p| std::cmp::Reverse(depth(p)));
    for parent in parents {
        let Some(mut kids) = children.remove(&Some(parent)) else { continue };
        sort(&mut kids);
        if let Some(node) = children.values_mut().flatten().find(|n| n.id == parent) {
            node.children = kids;
        }
    }
    let mut roots = children.remove(&None).unwrap_or_default();
    sort(&mut roots);
    roots
}

fn sort(nodes: &mut [TaskDump]) {
    nodes.sort_by(|a, b| (&a.name, a.id).cmp(&(&b.name, b.id)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: u64, name: &str, parent: Option<u64>, awaiting: Awaiting) -> AsyncTask {
        AsyncTask { id, name: name.into(), frames: Vec::new(), awaiting, parent }
    }

    fn shape(nodes: &[TaskDump]) -> String {
        let parts: Vec<String> = nodes
            .iter()
            .map(|n| if n.children.is_empty() { n.name.clone() } else { format!("{}[{}]", n.name, shape(&n.children)) })
            .collect();
        parts.join(",")
    }

    #[test]
    fn nests_tasks_under_their_parents_at_any_depth() {
        let tasks = vec![
            task(5, "inner-2", Some(3), Awaiting::Object("_asyncio.Future".into())),
            task(4, "inner-1", Some(3), Awaiting::Running),
            task(3, "outer-a", Some(1), Awaiting::NotStarted),
            task(1, "main", None, Awaiting::Task(3)),
            task(2, "outer-b", Some(1), Awaiting::Running),
            task(9, "orphan", Some(77), Awaiting::Running),
        ];
        let roots = tree(tasks);
        assert_eq!(shape(&roots), "main[outer-a[inner-1,inner-2],outer-b],orphan");
        assert_eq!(roots[0].awaiting, "task outer-a");
        assert_eq!(roots[0].awaiting_task, Some(3));
    }
}
