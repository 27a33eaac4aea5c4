//! Finding the interpreter in a process: the image that exports `_PyRuntime` (libpython, or the
//! executable when libpython is linked in, as in Debian's builds), and the addresses of the
//! objects the reader starts from or checks against.

use std::collections::HashSet;

use super::modules::BuiltinTypes;
use super::objects::Types;
use crate::process::ProcessState;

/// Where the reader's starting points are in the target's address space.
#[derive(Debug, Clone, Copy)]
pub struct Symbols {
    /// `_PyRuntime`, the runtime state (3.13+: starting with `_Py_DebugOffsets`).
    pub runtime: u64,
    /// `Py_Version` (3.11+): `PY_VERSION_HEX` as a `const unsigned long`.
    pub version: Option<u64>,
    pub types: Types,
    /// The builtin types the asyncio task reader checks objects against, if all are exported.
    pub builtins: Option<BuiltinTypes>,
}

/// The symbols looked up, in the order [`find`] reads them back.
const NAMES: [&str; 18] = [
    "_PyRuntime",
    "Py_Version",
    "PyCode_Type",
    "PyUnicode_Type",
    "PyBytes_Type",
    "PyCoro_Type",
    "PyGen_Type",
    "PySet_Type",
    "PyDict_Type",
    "PyLong_Type",
    "PyMethod_Type",
    "PyFunction_Type",
    "PyTuple_Type",
    "PyCell_Type",
    "PyList_Type",
    "_PyWeakref_RefType",
    "PyModule_Type",
    "_Py_NoneStruct",
];

/// Looks in the images whose name says Python first, then in every other one (an embedding
/// program such as uwsgi may link libpython in). Returns the symbols and the image's path.
pub fn find(process: &ProcessState) -> Option<(Symbols, String)> {
    let mut images: Vec<_> = process.mapped_images().collect();
    images.sort_by_key(|(_, image, _)| !image.basename().contains("python"));
    let mut seen = HashSet::new();
    for (_, image, bias) in images {
        if !seen.insert(image.id) {
            continue;
        }
        let [runtime, version, code, unicode, bytes, builtins @ ..] = image.symbol_addresses(NAMES);
        let at = |svma: u64| svma.wrapping_add(bias);
        let builtins = builtins.iter().map(|a| a.map(at)).collect::<Option<Vec<u64>>>().and_then(|b| {
            let [coroutine, generator, set, dict, int, method, function, tuple, cell, list, weakref, module, none] =
                b[..]
            else {
                return None;
            };
            Some(BuiltinTypes {
                coroutine,
                generator,
                set,
                dict,
                int,
                method,
                function,
                tuple,
                cell,
                list,
                weakref,
                module,
                none,
            })
        });
        let (Some(runtime), Some(code), Some(unicode), Some(bytes)) = (runtime, code, unicode, bytes) else {
            continue;
        };
        let types = Types { code: at(code), unicode: at(unicode), bytes: at(bytes) };
        let symbols = Symbols { runtime: at(runtime), version: version.map(at), types, builtins };
        return Some((symbols, image.path.clone()));
    }
    None
}

/// The addresses of functions `names` in the image at `image_path` (the interpreter's, from
/// [`find`]), as mapped in the process.
pub fn functions<const N: usize>(process: &ProcessState, image_path: &str, names: [&str; N]) -> [Option<u64>; N] {
    let Some((_, image, bias)) = process.mapped_images().find(|(_, image, _)| image.path == image_path) else {
        return [None; N];
    };
    image.symbol_addresses(names).map(|a| a.map(|svma| svma.wrapping_add(bias)))
}
