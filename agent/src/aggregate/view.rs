//! Turning stored stacks into the stacks a user sees: symbolized, filtered for the chosen
//! view, with optional thread and process roots, merged and counted.

use super::Profile;
use crate::symbolize::{Frame, SymbolTable};
pub use ember_profile::view::{default_view, View, ViewBuilder};

/// What the user asked to see.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ViewOptions {
    /// Interleave every native frame instead of only those below the innermost Python frame.
    pub native: bool,
    /// Add a `thread TID (name)` root frame.
    pub threads: bool,
    /// Add a `process PID (comm)` root frame (automatic with more than one process).
    pub processes: bool,
}

pub fn build(profile: &Profile, symbols: &SymbolTable, options: ViewOptions) -> View {
    let mut builder = ViewBuilder::new();
    let process_roots = options.processes || profile.process_count() > 1;
    let mut samples: Vec<_> = profile.samples().collect();
    samples.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    for (owner, keys, count) in samples {
        // Stored leaf first; each key expands outermost-inline first.
        let mut frames: Vec<&Frame> = keys.iter().rev().flat_map(|k| symbols.frames(k)).collect();
        if !options.native {
            frames = default_view(frames);
        }
        let mut roots = Vec::new();
        if process_roots {
            let comm = profile.process_names.get(&owner.pid).map_or("?", String::as_str);
            roots.push(Frame::marker(format!("process {} ({comm})", owner.pid)));
        }
        if options.threads {
            let name = profile.thread_names.get(&(owner.pid, owner.tid)).map_or("?", String::as_str);
            roots.push(Frame::marker(format!("thread {} ({name})", owner.tid)));
        }
        builder.add(roots.iter().chain(frames), count, owner.pid.0, owner.tid.0);
    }
    builder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbolize::FrameKind;

    fn py(name: &str) -> Frame {
        Frame {
            text: name.into(),
            kind: FrameKind::Python,
            function: name.into(),
            file: "a.py".into(),
            interpreter_plumbing: false,
            line: None,
        }
    }

    fn native(name: &str, plumbing: bool) -> Frame {
        Frame {
            text: format!("{name} [lib]"),
            kind: FrameKind::Native,
            function: name.into(),
            file: "lib".into(),
            interpreter_plumbing: plumbing,
            line: None,
        }
    }

    #[test]
    fn default_view_keeps_python_and_leaf_natives() {
        let frames = [
            native("_start", false),
            native("Py_RunMain", false),
            py("<module>"),
            native("_PyEval_EvalFrameDefault", true),
            py("work"),
            native("_PyEval_EvalFrameDefault", true),
            native("builtin_sum", false),
            native("PyNumber_Add", false),
        ];
        let kept: Vec<&str> = default_view(frames.iter().collect()).iter().map(|f| f.function.as_str()).collect();
        assert_eq!(kept, ["<module>", "work", "builtin_sum", "PyNumber_Add"]);
    }

    fn monitor(name: &str) -> Frame {
        Frame { interpreter_plumbing: true, ..py(name) }
    }

    #[test]
    fn the_task_monitor_is_dropped_between_frames_and_one_leaf_when_the_sample_is_in_it() {
        let through = [
            py("<module>"),
            monitor("run_forever"),
            py("BaseEventLoop.run_forever"),
            py("work"),
            native("builtin_sum", false),
        ];
        let kept: Vec<&str> = default_view(through.iter().collect()).iter().map(|f| f.function.as_str()).collect();
        assert_eq!(kept, ["<module>", "BaseEventLoop.run_forever", "work", "builtin_sum"]);
        let inside = [
            py("<module>"),
            py("main"),
            native("_PyEval_EvalFrameDefault", true),
            monitor("on_call"),
            monitor("watch"),
            native("PyDict_SetItem", false),
        ];
        let kept: Vec<&str> = default_view(inside.iter().collect()).iter().map(|f| f.function.as_str()).collect();
        assert_eq!(kept, ["<module>", "main", "on_call"], "the outermost monitor frame, alone, as the leaf");
    }

    #[test]
    fn stacks_without_python_stay_whole() {
        let frames = [native("main", false), native("spin", false)];
        assert_eq!(default_view(frames.iter().collect()).len(), 2);
    }
}
