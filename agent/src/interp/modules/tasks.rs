//! asyncio's tasks, read from the target's memory as `python -m asyncio pstree` reads them on
//! 3.14, but for 3.12+: each task's name, coroutine stack, what it awaits, and the task that
//! waits for it (TaskGroup, gather, wait, or a plain `await task`).

use std::collections::{HashMap, HashSet};

use super::containers::{BuiltinTypes, Containers};
use super::coro::{self, CoroState};
use super::layout::{self, ModulesLayout, TaskList};
use super::{list, module_globals, tree};
use crate::interp::layout::Layout;
use crate::interp::objects::{ObjectError, ObjectReader};
use crate::interp::walk::{self, PyFrame};

/// More tasks than any program keeps: the rest are left out, and said to be.
const MAX_TASKS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TasksError {
    #[error("ember does not know where Python {0} keeps asyncio's tasks")]
    UnknownLayout(crate::interp::PyVersion),
    #[error("the interpreter does not export {0}, which proves what the task objects are")]
    NoType(&'static str),
    #[error("reading the tasks failed: {0}")]
    Read(#[from] ObjectError),
}

/// One task as read.
#[derive(Debug, Clone)]
pub struct AsyncTask {
    /// Its address: a task's identity while it lives (what `id(task)` gives).
    pub id: u64,
    pub name: String,
    /// Innermost first.
    pub frames: Vec<PyFrame>,
    pub awaiting: Awaiting,
    /// The task waiting for this one to finish.
    pub parent: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Awaiting {
    /// Another task (its id).
    Task(u64),
    /// Another object, by type name (`_asyncio.Future`, `_GatheringFuture`).
    Object(String),
    #[default]
    Running,
    NotStarted,
}

/// Every asyncio task of the runtime at `runtime`; an empty list if asyncio is not loaded.
pub fn tasks(
    reader: &mut ObjectReader,
    runtime: u64,
    types: Option<&BuiltinTypes>,
) -> Result<Vec<AsyncTask>, TasksError> {
    let layout = reader.layout().clone();
    let asyncio = layout::for_minor(layout.version.minor()).ok_or(TasksError::UnknownLayout(layout.version))?;
    let types = types.ok_or(TasksError::NoType("its builtin types"))?;
    let records = {
        let c = Containers { reader, layout: &asyncio, types };
        let addrs = task_addresses(&c, &layout, runtime)?;
        let mut task_types = HashMap::new();
        addrs
            .into_iter()
            .filter_map(|addr| read_task(&c, &mut task_types, addr).transpose())
            .collect::<Result<Vec<_>, _>>()?
    };
    let parents = tree::parents(&records);
    let ids: HashSet<u64> = records.iter().map(|r| r.addr).collect();
    let mut out = Vec::with_capacity(records.len());
    for (record, parent) in records.into_iter().zip(parents) {
        let mut frames = Vec::with_capacity(record.frames.len());
        for &frame in record.frames.iter().rev() {
            frames.push(walk::frame_at(reader, frame)?);
        }
        let awaiting = if ids.contains(&record.waiter) { Awaiting::Task(record.waiter) } else { record.awaiting };
        out.push(AsyncTask { id: record.addr, name: record.name, frames, awaiting, parent });
    }
    Ok(out)
}

/// What the tree is built from: a task and the objects that tie it to others.
#[derive(Debug, Default)]
pub struct TaskRecord {
    pub addr: u64,
    pub name: String,
    /// Its coroutines' frames, outermost first.
    pub frames: Vec<u64>,
    pub awaiting: Awaiting,
    /// `fut_waiter`: the future the task is blocked on.
    pub waiter: u64,
    /// Objects its suspended frames hold.
    pub held: Vec<u64>,
    /// Objects its done-callbacks are bound to or close over (a TaskGroup; gather's outer
    /// future).
    pub callback_refs: Vec<u64>,
    /// The `_parent_task` of a TaskGroup its callbacks are bound to.
    pub group_parent: Option<u64>,
}

fn task_addresses(c: &Containers, layout: &Layout, runtime: u64) -> Result<Vec<u64>, ObjectError> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for interp in list(c, runtime.wrapping_add(layout.interpreters_head), layout.interp_next)? {
        match c.layout.tasks {
            TaskList::ModuleSets => {
                let Some(globals) = module_globals(c, interp, "asyncio.tasks")? else { continue };
                if let Some(weak_set) = c.dict_get(globals, "_scheduled_tasks")? {
                    if let Some(data) = c.attribute(weak_set, "data")? {
                        for weakref in c.set_items(data)? {
                            if c.is(weakref, c.types.weakref) {
                                out.push(c.reader.word(weakref.wrapping_add(16))?);
                            }
                        }
                    }
                }
                if let Some(eager) = c.dict_get(globals, "_eager_tasks")? {
                    out.extend(c.set_items(eager)?);
                }
            }
            TaskList::PerThread { task_node, thread_head } => {
                for thread in list(c, interp.wrapping_add(layout.interp_threads_head), layout.thread_next)? {
                    let head = thread.wrapping_add(thread_head);
                    let mut node = c.reader.word(head)?;
                    let mut nodes = HashSet::new();
                    while node != head && node != 0 && nodes.len() < super::MAX_LIST && nodes.insert(node) {
                        out.push(node.wrapping_sub(task_node));
                        node = c.reader.word(node)?;
                    }
                }
            }
        }
    }
    out.retain(|&t| t != 0 && t != c.types.none && seen.insert(t));
    out.truncate(MAX_TASKS);
    Ok(out)
}

/// One task's fields, or `None` if the object is not a C task (a pure-Python Task subclass
/// laid out otherwise is left out).
fn read_task(
    c: &Containers,
    task_types: &mut HashMap<u64, bool>,
    addr: u64,
) -> Result<Option<TaskRecord>, ObjectError> {
    let l: &ModulesLayout = c.layout;
    let ty = c.type_of(addr)?;
    if !*task_types.entry(ty).or_insert_with(|| c.derives_from(ty, "_asyncio.Task")) {
        return Ok(None);
    }
    let name_obj = c.reader.word(addr.wrapping_add(l.task_name))?;
    let name = match c.reader.string(name_obj) {
        Ok(name) => name,
        // 3.12+ names a task lazily: an int counter until `get_name()` formats it.
        Err(_) => c.int(name_obj).map(|n| format!("Task-{n}")).unwrap_or_else(|_| "?".into()),
    };
    let coro = c.reader.word(addr.wrapping_add(l.task_coro))?;
    let stack = coro::read(c, coro)?;
    let waiter = c.reader.word(addr.wrapping_add(l.task_fut_waiter))?;
    let awaiting = match stack.state {
        CoroState::NotStarted => Awaiting::NotStarted,
        CoroState::Running => Awaiting::Running,
        CoroState::Awaiting(leaf) => {
            let blocker = if waiter != 0 && waiter != c.types.none { waiter } else { leaf };
            Awaiting::Object(c.type_of(blocker).and_then(|t| c.type_name(t)).unwrap_or_else(|_| "?".into()))
        }
    };
    let mut record =
        TaskRecord { addr, name, frames: stack.frames, awaiting, waiter, held: stack.held, ..TaskRecord::default() };
    for callback in callbacks(c, addr)? {
        if let Some(bound) = c.bound_self(callback) {
            record.callback_refs.push(bound);
            if let Ok(ty) = c.type_of(bound) {
                if c.derives_from(ty, "TaskGroup") {
                    record.group_parent = c.attribute(bound, "_parent_task")?;
                }
            }
        }
        record.callback_refs.extend(c.closure_contents(callback));
    }
    Ok(Some(record))
}

/// A future's done-callbacks: the first in `fut_callback0`, the rest as (callback, context)
/// tuples in the `fut_callbacks` list.
fn callbacks(c: &Containers, task: u64) -> Result<Vec<u64>, ObjectError> {
    let l = c.layout;
    let mut out = Vec::new();
    let first = c.reader.word(task.wrapping_add(l.task_callback0))?;
    if first != 0 {
        out.push(first);
    }
    let rest = c.reader.word(task.wrapping_add(l.task_callbacks))?;
    if c.is(rest, c.types.list) {
        for pair in c.sequence(rest)? {
            if let Some(&callback) = c.sequence(pair).ok().as_ref().and_then(|p| p.first()) {
                out.push(callback);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_supported_minor_has_a_layout() {
        for minor in 12..=15 {
            assert!(crate::interp::modules::layout::for_minor(minor).is_some(), "3.{minor}");
        }
        assert!(crate::interp::modules::layout::for_minor(16).is_none());
    }
}
