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

/// Deepest nesting kept: a task deeper than this is shown as a root of its own, so printing,
/// serializing and dropping the tree never recurse further (a chain of awaits can be as long
/// as a target makes it).
const MAX_DEPTH: usize = 64;

/// The tasks with no parent, each holding its children; siblings by name, then id.
pub fn tree(tasks: Vec<AsyncTask>) -> Vec<TaskDump> {
    let names: HashMap<u64, String> = tasks.iter().map(|t| (t.id, t.name.clone())).collect();
    let mut parent_of: HashMap<u64, Option<u64>> =
        tasks.iter().map(|t| (t.id, t.parent.filter(|p| names.contains_key(p) && *p != t.id))).collect();
    let depth = depths(&mut parent_of);
    let mut nodes: HashMap<u64, TaskDump> = tasks.into_iter().map(|task| (task.id, node(task, &names))).collect();
    // Deepest first: a node is complete once every task below it has been attached.
    let mut order: Vec<u64> = nodes.keys().copied().collect();
    order.sort_by_key(|id| std::cmp::Reverse(depth.get(id).copied().unwrap_or(0)));
    for id in order {
        let Some(Some(parent)) = parent_of.get(&id).copied() else { continue };
        let Some(mut child) = nodes.remove(&id) else { continue };
        sort(&mut child.children);
        if let Some(up) = nodes.get_mut(&parent) {
            up.children.push(child);
        }
    }
    let mut roots: Vec<TaskDump> = nodes.into_values().collect();
    for root in &mut roots {
        sort(&mut root.children);
    }
    sort(&mut roots);
    roots
}

/// Each task's depth under its root; a link that would nest a task deeper than [`MAX_DEPTH`],
/// or close a loop, is cut (the task becomes a root).
fn depths(parent_of: &mut HashMap<u64, Option<u64>>) -> HashMap<u64, usize> {
    let mut depth: HashMap<u64, usize> = HashMap::new();
    let ids: Vec<u64> = parent_of.keys().copied().collect();
    for start in ids {
        // Up to a task whose depth is known, or a root; then back down, assigning depths.
        let mut path = vec![start];
        let mut on_path = std::collections::HashSet::from([start]);
        let mut at = start;
        while let Some(Some(up)) = parent_of.get(&at).copied() {
            if depth.contains_key(&up) {
                break;
            }
            if !on_path.insert(up) {
                // A loop (interp's tree breaks them; a dump does not rely on it): cut it at
                // the task that closes it.
                parent_of.insert(at, None);
                break;
            }
            path.push(up);
            at = up;
        }
        for id in path.into_iter().rev() {
            if depth.contains_key(&id) {
                continue;
            }
            let above = parent_of.get(&id).copied().flatten().and_then(|p| depth.get(&p).copied());
            let d = match above {
                Some(d) if d < MAX_DEPTH => d + 1,
                Some(_) => {
                    parent_of.insert(id, None);
                    0
                }
                None => 0,
            };
            depth.insert(id, d);
        }
    }
    depth
}

fn node(task: AsyncTask, names: &HashMap<u64, String>) -> TaskDump {
    let (awaiting, awaiting_task) = match &task.awaiting {
        Awaiting::Task(id) => (format!("task {}", names.get(id).map_or("?", String::as_str)), Some(*id)),
        Awaiting::Object(type_name) => (type_name.clone(), None),
        Awaiting::Running => ("running".into(), None),
        Awaiting::NotStarted => ("not started".into(), None),
    };
    TaskDump {
        id: task.id,
        name: task.name,
        awaiting,
        awaiting_task,
        coroutine_stack: task.frames.iter().map(FrameDump::from).collect(),
        children: Vec::new(),
    }
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

    /// A chain of awaits as long as a target likes, and a loop: the tree is cut into pieces no
    /// deeper than MAX_DEPTH, and built without recursion.
    #[test]
    fn long_chains_are_cut_and_loops_broken() {
        let n = 100_000u64;
        let mut tasks: Vec<AsyncTask> =
            (0..n).map(|i| task(i + 1, &format!("t{i}"), (i > 0).then_some(i), Awaiting::Running)).collect();
        tasks.push(task(n + 1, "a", Some(n + 2), Awaiting::Running));
        tasks.push(task(n + 2, "b", Some(n + 1), Awaiting::Running));
        let roots = tree(tasks);
        let mut deepest = 0;
        let mut stack: Vec<(&TaskDump, usize)> = roots.iter().map(|r| (r, 0)).collect();
        let mut count = 0;
        while let Some((node, d)) = stack.pop() {
            count += 1;
            deepest = deepest.max(d);
            stack.extend(node.children.iter().map(|c| (c, d + 1)));
        }
        assert_eq!(count, n as usize + 2, "every task once");
        assert!(deepest <= MAX_DEPTH, "{deepest}");
        assert!(roots.len() >= (n as usize) / (MAX_DEPTH + 1), "{} roots", roots.len());
    }
}
