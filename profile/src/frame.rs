//! A frame as users see it.

/// What a frame is, for colouring and for choosing what the default view shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrameKind {
    Python,
    Native,
    Kernel,
    /// Synthetic frames: `[truncated]`, `thread …`, `process …`.
    Marker,
}

impl FrameKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FrameKind::Python => "python",
            FrameKind::Native => "native",
            FrameKind::Kernel => "kernel",
            FrameKind::Marker => "marker",
        }
    }
}

/// A frame ready to show.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Frame {
    /// The full frame text, e.g. `fib (app.py)` or `memcpy [libc.so.6]`.
    pub text: String,
    pub kind: FrameKind,
    /// The function name alone.
    pub function: String,
    /// The Python filename or the native module path.
    pub file: String,
    /// CPython's own call machinery, which the default view hides below Python frames; on a
    /// Python frame, ember's own code running in the target (its asyncio task monitor), which
    /// the default view drops, or shows as one frame where a sample is in it.
    pub interpreter_plumbing: bool,
    /// The source line of a Python frame, when lines are asked for (`record --lines`) and known.
    pub line: Option<u32>,
}

impl Frame {
    pub fn marker(text: impl Into<String>) -> Self {
        let text = text.into();
        Frame {
            function: text.clone(),
            text,
            kind: FrameKind::Marker,
            file: String::new(),
            interpreter_plumbing: false,
            line: None,
        }
    }
}
