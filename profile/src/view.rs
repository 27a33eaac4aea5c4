//! A profile ready to show or export: a frame table and distinct stacks with counts.

use crate::Frame;

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
