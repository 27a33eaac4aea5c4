//! State that Python modules keep, read from the target's memory through `sys.modules` or the
//! interpreter's own lists: asyncio's tasks and who awaits whom (`tasks.rs`), and the names
//! `threading` gives its threads (`threading.rs`). Everything goes through the checked
//! containers of `containers.rs`.

mod containers;
mod coro;
mod layout;
mod tasks;
mod threading;
mod tree;

pub use containers::BuiltinTypes;
pub use tasks::{tasks, AsyncTask, Awaiting, TasksError};
pub use threading::thread_names;

use std::collections::HashSet;

use crate::interp::objects::ObjectError;
use containers::Containers;

/// Longest linked list followed: far more interpreters, threads or tasks than any process has.
const MAX_LIST: usize = 1 << 20;

/// The nodes of a NULL-ended linked list whose first pointer is at `head`, up to a loop.
fn list(c: &Containers, head: u64, next: u64) -> Result<Vec<u64>, ObjectError> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut node = c.reader.word(head)?;
    while node != 0 && out.len() < MAX_LIST && seen.insert(node) {
        out.push(node);
        node = c.reader.word(node.wrapping_add(next))?;
    }
    Ok(out)
}

/// The globals of the module `name` in the interpreter at `interp`, if it is imported (and
/// ember knows where this version keeps `sys.modules`).
fn module_globals(c: &Containers, interp: u64, name: &str) -> Result<Option<u64>, ObjectError> {
    let Some(at) = c.layout.interp_modules else { return Ok(None) };
    let modules = c.reader.word(interp.wrapping_add(at))?;
    if modules == 0 {
        return Ok(None);
    }
    let Some(module) = c.dict_get(modules, name)? else { return Ok(None) };
    if !c.is(module, c.types.module) {
        return Ok(None);
    }
    // `PyModuleObject.md_dict`, after the object header.
    c.reader.word(module.wrapping_add(16)).map(Some)
}
