//! Stage 4, **symbolize**: frame keys become the text users read. Python frames come from
//! the perf map, native ones from ELF symbols and DWARF, kernel ones from kallsyms.

pub mod native;
pub mod perf_map;
pub(crate) mod plt;

use std::collections::HashMap;

use crate::intern::Interner;
use crate::process::FrameKey;
use crate::unwind::{ElfCache, ImageId};
use native::NativeSymbolizer;

pub use ember_profile::{Frame, FrameKind};

/// The text of the marker root given to stacks that could not be completed.
pub const TRUNCATED: &str = "[truncated]";

/// Functions of CPython that only move a call from one frame to the next. Between a Python
/// frame and the C function it calls they are noise, so the default view drops them.
fn is_interpreter_plumbing(function: &str) -> bool {
    const EXACT: [&str; 17] = [
        "_PyEval_EvalFrameDefault",
        "_PyEval_EvalFrame",
        "_PyEval_Vector",
        "_PyFunction_Vectorcall",
        "PyObject_Vectorcall",
        "PyObject_VectorcallMethod",
        "PyObject_VectorcallDict",
        "_PyObject_VectorcallTstate",
        "_PyObject_Call",
        "PyObject_Call",
        "_PyObject_MakeTpCall",
        "py_trampoline_evaluator",
        "method_vectorcall",
        "cfunction_call",
        "slot_tp_call",
        "vectorcall_method",
        "_PyObject_Call_Prepend",
    ];
    EXACT.contains(&function)
        || function.starts_with("cfunction_vectorcall_")
        || function.starts_with("method_vectorcall_")
}

/// Symbolized frames for every frame key of a profile.
#[derive(Debug, Default)]
pub struct SymbolTable {
    /// Each key expands to one frame, or several (outermost first) for inlined code.
    frames: HashMap<FrameKey, Vec<Frame>>,
}

impl SymbolTable {
    pub fn frames(&self, key: &FrameKey) -> &[Frame] {
        self.frames.get(key).map_or(&[], Vec::as_slice)
    }

    /// Resolves all `keys` in batches: one symbolizer call per image and one for the kernel.
    /// `symbolizer` keeps what it parsed of each image, so a caller that resolves again and
    /// again (`stream`, every flush) passes the same one. Long because it is one match over
    /// every kind of frame key, each arm building that kind's frames.
    pub fn resolve<'a>(
        keys: impl IntoIterator<Item = &'a FrameKey>,
        strings: &Interner,
        elf: &ElfCache,
        symbolizer: &NativeSymbolizer,
    ) -> Self {
        let mut table = SymbolTable::default();
        let mut by_image: HashMap<ImageId, Vec<u64>> = HashMap::new();
        let mut kernel = Vec::new();
        for key in keys {
            match *key {
                FrameKey::MapSymbol(name) => {
                    table.frames.insert(*key, vec![map_symbol_frame(strings.get(name), None)]);
                }
                FrameKey::PythonLine { name, line } => {
                    table.frames.insert(*key, vec![map_symbol_frame(strings.get(name), Some(line))]);
                }
                FrameKey::Native { image, file_offset } => by_image.entry(image).or_default().push(file_offset),
                FrameKey::Kernel(addr) => kernel.push(addr),
                FrameKey::Unknown { region, addr } => {
                    let region = strings.get(region);
                    let module =
                        region.rsplit('/').next().unwrap_or(region).trim_start_matches('[').trim_end_matches(']');
                    let text = format!("{addr:#x} [{module}]");
                    let frame = Frame {
                        function: format!("{addr:#x}"),
                        text,
                        kind: FrameKind::Native,
                        file: region.to_string(),
                        interpreter_plumbing: false,
                        line: None,
                    };
                    table.frames.insert(*key, vec![frame]);
                }
                FrameKey::Truncated => {
                    table.frames.insert(*key, vec![Frame::marker(TRUNCATED)]);
                }
            }
        }
        for (image_id, mut offsets) in by_image {
            offsets.sort_unstable();
            offsets.dedup();
            let Some(image) = elf.get(image_id) else { continue };
            let module = image.basename().to_string();
            let results = symbolizer.symbolize_image(image, &offsets);
            for (offset, names) in offsets.iter().zip(results) {
                let key = FrameKey::Native { image: image_id, file_offset: *offset };
                let frames = if names.is_empty() {
                    vec![Frame {
                        text: format!("{offset:#x} [{module}]"),
                        kind: FrameKind::Native,
                        function: format!("{offset:#x}"),
                        file: image.path.clone(),
                        interpreter_plumbing: false,
                        line: None,
                    }]
                } else {
                    let plumbing = is_interpreter_plumbing(&names[0].function);
                    names
                        .into_iter()
                        .map(|n| Frame {
                            text: format!("{} [{module}]", n.function),
                            kind: FrameKind::Native,
                            function: n.function,
                            file: image.path.clone(),
                            interpreter_plumbing: plumbing,
                            line: None,
                        })
                        .collect()
                };
                table.frames.insert(key, frames);
            }
        }
        if !kernel.is_empty() {
            kernel.sort_unstable();
            kernel.dedup();
            for (addr, name) in kernel.iter().zip(symbolizer.symbolize_kernel(&kernel)) {
                let function = name.unwrap_or_else(|| format!("{addr:#x}"));
                let frame = Frame {
                    text: format!("{function} [kernel]"),
                    kind: FrameKind::Kernel,
                    function,
                    file: String::new(),
                    interpreter_plumbing: false,
                    line: None,
                };
                table.frames.insert(FrameKey::Kernel(*addr), vec![frame]);
            }
        }
        table
    }
}

/// The frame a perf-map name stands for; a Python one at `line` when it is known.
fn map_symbol_frame(raw: &str, line: Option<u32>) -> Frame {
    match perf_map::split_python_name(raw) {
        // ember's task monitor: plumbing, which the default view leaves out.
        Some((qualname, filename)) if crate::tasks::is_monitor_file(filename) => Frame {
            text: crate::tasks::MONITOR_FRAME.to_string(),
            kind: FrameKind::Python,
            function: qualname.to_string(),
            file: filename.to_string(),
            interpreter_plumbing: true,
            line: None,
        },
        Some((qualname, filename)) => Frame {
            // `qualname (file:line)`, py-spy's convention, where the line is known.
            text: match line {
                Some(line) => format!("{qualname} ({filename}:{line})"),
                None => perf_map::display_name(raw),
            },
            kind: FrameKind::Python,
            function: qualname.to_string(),
            file: filename.to_string(),
            interpreter_plumbing: false,
            line,
        },
        None => Frame {
            text: format!("{raw} [jit]"),
            kind: FrameKind::Native,
            function: raw.to_string(),
            file: String::new(),
            interpreter_plumbing: false,
            line: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plumbing_is_recognised() {
        assert!(is_interpreter_plumbing("_PyEval_EvalFrameDefault"));
        assert!(is_interpreter_plumbing("cfunction_vectorcall_FASTCALL_KEYWORDS"));
        assert!(!is_interpreter_plumbing("builtin_sum"));
        assert!(!is_interpreter_plumbing("PyNumber_Add"));
        assert!(crate::tasks::is_monitor_file("/tmp/ember-agent-1-ab/ember_monitor/_writer.py"));
        assert!(crate::tasks::is_monitor_file("ember_monitor/__init__.py"));
        assert!(!crate::tasks::is_monitor_file("/app/ember_monitor/views.py"), "not one of its files");
        assert!(!crate::tasks::is_monitor_file("/app/monitor/_writer.py"), "not its package");
    }

    #[test]
    fn map_symbols_resolve_without_any_file() {
        let mut strings = Interner::default();
        let py = FrameKey::MapSymbol(strings.intern("py::K.meth:/app/x.py"));
        let at_line = FrameKey::PythonLine { name: strings.intern("py::K.meth:/app/x.py"), line: 12 };
        let jit = FrameKey::MapSymbol(strings.intern("some_jit_fn"));
        let unknown = FrameKey::Unknown { region: strings.intern("[anon]"), addr: 0x7f00 };
        let table = SymbolTable::resolve(
            [&py, &at_line, &jit, &unknown, &FrameKey::Truncated],
            &strings,
            &ElfCache::default(),
            &NativeSymbolizer::new(),
        );
        assert_eq!(table.frames(&py)[0].text, "K.meth (/app/x.py)");
        assert_eq!(table.frames(&py)[0].kind, FrameKind::Python);
        assert_eq!(table.frames(&at_line)[0].text, "K.meth (/app/x.py:12)");
        assert_eq!((table.frames(&at_line)[0].function.as_str(), table.frames(&at_line)[0].line), ("K.meth", Some(12)));
        assert_eq!(table.frames(&jit)[0].text, "some_jit_fn [jit]");
        assert_eq!(table.frames(&unknown)[0].text, "0x7f00 [anon]");
        assert_eq!(table.frames(&FrameKey::Truncated)[0].text, "[truncated]");
    }
}
