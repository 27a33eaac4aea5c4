//! A profile ready to show or export: a frame table and distinct stacks with counts.

use std::collections::HashMap;

use crate::{Frame, FrameKind};

/// One distinct stack of the view, root first, as indices into [`View::frames`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewStack {
    pub frames: Vec<u32>,
    pub count: u64,
    pub pid: u32,
    pub tid: u32,
}

/// A profile ready for export.
#[derive(Debug, Default)]
pub struct View {
    pub frames: Vec<Frame>,
    pub stacks: Vec<ViewStack>,
    pub total: u64,
}

impl View {
    pub fn frame(&self, index: u32) -> &Frame {
        &self.frames[index as usize]
    }

    /// Folded text of a stack, `;`-separated, root first.
    pub fn folded(&self, stack: &ViewStack) -> String {
        let mut out = String::new();
        for (i, &f) in stack.frames.iter().enumerate() {
            if i > 0 {
                out.push(';');
            }
            // `;` separates frames and a newline ends the record, so neither may appear inside.
            out.extend(self.frame(f).text.chars().map(|c| if c == ';' || c == '\n' { ':' } else { c }));
        }
        out
    }
}

/// Keeps the frames of the default view: every Python frame, and below the innermost one the
/// native frames of the C code it called (without CPython's call plumbing). A stack without
/// any Python frame is shown whole, so non-Python targets still get native stacks. Python
/// frames marked as plumbing (ember's task monitor in the target) are dropped where they only
/// pass a call on (a wrapper between two of the program's frames); where the sample is in
/// them, the outermost one stays as the leaf, without what it called (kernel frames aside).
pub fn default_view(frames: Vec<&Frame>) -> Vec<&Frame> {
    default_view_by(&frames, |f| *f).copied().collect()
}

/// [`default_view`] over anything that leads to a frame, such as indexes into a frame table.
pub fn default_view_by<'a, 'f: 'a, T>(
    items: &'a [T],
    frame_of: impl Fn(&T) -> &'f Frame + 'a,
) -> impl Iterator<Item = &'a T> + 'a {
    let program = |f: &Frame| f.kind == FrameKind::Python && !f.interpreter_plumbing;
    let innermost = items.iter().rposition(|t| program(frame_of(t)));
    // The sample is in ember's own code when a plumbing Python frame lies below the program's
    // (or, in a stack without the program's Python, anywhere).
    let from = innermost.map_or(0, |inner| inner + 1);
    let ember_leaf = items[from..].iter().position(|t| frame_of(t).kind == FrameKind::Python).map(|p| from + p);
    items
        .iter()
        .enumerate()
        .filter(move |(i, t)| {
            let f = frame_of(t);
            if ember_leaf.is_some_and(|leaf| *i >= leaf) {
                // What ember's code called is ember's cost, shown as that one frame.
                return Some(*i) == ember_leaf || matches!(f.kind, FrameKind::Marker | FrameKind::Kernel);
            }
            let Some(innermost) = innermost else { return true };
            match f.kind {
                FrameKind::Python => !f.interpreter_plumbing,
                FrameKind::Marker | FrameKind::Kernel => true,
                FrameKind::Native => *i > innermost && !f.interpreter_plumbing,
            }
        })
        .map(|(_, t)| t)
}

impl View {
    /// A view over a table of distinct frames and stacks of indexes into it, which need no
    /// interning: identical stacks are merged, frames are taken as they are.
    pub fn from_indexed(frames: Vec<Frame>, stacks: impl IntoIterator<Item = (Vec<u32>, u64)>) -> View {
        let mut builder = ViewBuilder { view: View { frames, ..View::default() }, ..ViewBuilder::default() };
        for (ids, count) in stacks {
            builder.add_ids(ids, count, 0, 0);
        }
        builder.view
    }
}

/// Builds a [`View`]: interns frames and merges identical stacks of the same thread.
#[derive(Debug, Default)]
pub struct ViewBuilder {
    view: View,
    frame_ids: HashMap<Frame, u32>,
    stack_ids: HashMap<(Vec<u32>, u32, u32), usize>,
}

impl ViewBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn intern(&mut self, frame: &Frame) -> u32 {
        if let Some(&id) = self.frame_ids.get(frame) {
            return id;
        }
        let id = self.view.frames.len() as u32;
        self.view.frames.push(frame.clone());
        self.frame_ids.insert(frame.clone(), id);
        id
    }

    /// Adds `count` samples of a stack given as frame ids, root first.
    pub fn add_ids(&mut self, frames: Vec<u32>, count: u64, pid: u32, tid: u32) {
        let key = (frames, pid, tid);
        match self.stack_ids.get(&key) {
            Some(&i) => self.view.stacks[i].count += count,
            None => {
                self.stack_ids.insert(key.clone(), self.view.stacks.len());
                self.view.stacks.push(ViewStack { frames: key.0, count, pid: key.1, tid: key.2 });
            }
        }
        self.view.total += count;
    }

    /// Adds `count` samples of a stack of frames, root first.
    pub fn add<'a>(&mut self, frames: impl IntoIterator<Item = &'a Frame>, count: u64, pid: u32, tid: u32) {
        let ids = frames.into_iter().map(|f| self.intern(f)).collect();
        self.add_ids(ids, count, pid, tid);
    }

    pub fn finish(self) -> View {
        self.view
    }
}
