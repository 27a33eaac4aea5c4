//! Thread names as `threading` keeps them. 3.12 and 3.13 do not give them to the OS (3.14 does,
//! cut to 15 bytes), so there the OS name of every thread is the program's.

use std::collections::HashMap;

use super::containers::{BuiltinTypes, Containers};
use super::{layout, list, module_globals};
use crate::interp::objects::{ObjectError, ObjectReader};

/// More threads than any process keeps.
const MAX_THREADS: usize = 100_000;

/// The name of each thread in `threading._active`, by its native id (`Thread.native_id`).
/// Empty where ember does not know where this version keeps `sys.modules`, or `threading` is
/// not imported; a thread whose attributes cannot be read is left out.
pub fn thread_names(
    reader: &ObjectReader,
    runtime: u64,
    types: &BuiltinTypes,
) -> Result<HashMap<u64, String>, ObjectError> {
    let layout = reader.layout().clone();
    let Some(modules_layout) = layout::for_minor(layout.version.minor()) else { return Ok(HashMap::new()) };
    let c = Containers { reader, layout: &modules_layout, types };
    let mut names = HashMap::new();
    for interp in list(&c, runtime.wrapping_add(layout.interpreters_head), layout.interp_next)? {
        let Some(globals) = module_globals(&c, interp, "threading")? else { continue };
        let Some(active) = c.dict_get(globals, "_active")? else { continue };
        for thread in c.dict_values(active)?.into_iter().take(MAX_THREADS) {
            let read = |name| c.attribute(thread, name).ok().flatten();
            let Some(native_id) = read("_native_id").and_then(|id| c.int(id).ok()) else { continue };
            if let Some(name) = read("_name").and_then(|name| reader.string(name).ok()) {
                names.insert(native_id, name);
            }
        }
    }
    Ok(names)
}
