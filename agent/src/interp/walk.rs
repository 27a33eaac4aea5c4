//! Walking the interpreter's state: interpreters → thread states → frame chains. Each list is
//! bounded and checked for loops, since the target changes it while ember reads and a hostile
//! one can point anywhere.

use std::collections::HashSet;
use std::sync::Arc;

use super::layout::{CurrentFrame, GilLayout, FIRST_SHIM_OWNER};
use super::objects::{word_in, CodeInfo, ObjectError, ObjectReader};

/// More interpreters than any program makes: a longer list is a loop or garbage.
const MAX_INTERPRETERS: usize = 256;
const MAX_THREADS: usize = 16_384;
/// Deeper than `sys.setrecursionlimit` is ever set in practice (3.13's default C stack allows
/// ~4,500 trampolined frames; an untrampolined 3.12 recursion can go deeper).
pub const MAX_FRAMES: usize = 100_000;

/// One Python thread's state as read.
#[derive(Debug)]
pub struct PyThread {
    /// The thread's id as its own PID namespace sees it (`gettid()` in the target).
    pub native_id: u64,
    pub holds_gil: bool,
    /// Innermost first.
    pub frames: Vec<PyFrame>,
    pub end: WalkEnd,
}

#[derive(Debug, Clone)]
pub struct PyFrame {
    pub code: Arc<CodeInfo>,
    pub line: Option<u32>,
}

/// How a frame chain ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalkEnd {
    /// The outermost frame was reached.
    Root,
    /// A read or check failed: the frames before it are right, the rest is unknown.
    Broken(ObjectError),
    /// More than [`MAX_FRAMES`] frames.
    TooDeep,
    /// A frame's caller was a frame already seen.
    Loop,
}

/// Every thread of every interpreter in the runtime at `runtime` (`_PyRuntime`).
pub fn threads(reader: &mut ObjectReader, runtime: u64) -> Result<Vec<PyThread>, ObjectError> {
    let layout = reader.layout().clone();
    let mut out = Vec::new();
    let mut interp = reader.word(runtime + layout.interpreters_head)?;
    let mut seen_interps = HashSet::new();
    while interp != 0 && seen_interps.len() < MAX_INTERPRETERS && seen_interps.insert(interp) {
        let holder = gil_holder(reader, interp)?;
        let mut tstate = reader.word(interp + layout.interp_threads_head)?;
        let mut seen_threads = HashSet::new();
        while tstate != 0 && seen_threads.len() < MAX_THREADS && seen_threads.insert(tstate) {
            let head = reader.bytes_at(tstate, thread_header_len(&layout))?;
            if word_in(&head, layout.thread_interp as usize) != interp {
                // The layout is wrong, or the thread state was freed and reused while read.
                return Err(ObjectError::Malformed {
                    what: "thread state",
                    addr: tstate,
                    why: "it belongs to another interpreter",
                });
            }
            let innermost = match layout.current_frame {
                CurrentFrame::Direct(at) => word_in(&head, at as usize),
                CurrentFrame::ViaCFrame { cframe, current_frame } => match word_in(&head, cframe as usize) {
                    0 => 0,
                    cframe => reader.word(cframe + current_frame)?,
                },
            };
            let (frames, end) = frames(reader, innermost);
            out.push(PyThread {
                native_id: word_in(&head, layout.thread_native_id as usize),
                holds_gil: holder == Some(tstate),
                frames,
                end,
            });
            tstate = word_in(&head, layout.thread_next as usize);
        }
        interp = reader.word(interp + layout.interp_next)?;
    }
    Ok(out)
}

fn thread_header_len(layout: &super::layout::Layout) -> usize {
    let current = match layout.current_frame {
        CurrentFrame::Direct(at) => at,
        CurrentFrame::ViaCFrame { cframe, .. } => cframe,
    };
    [layout.thread_next, layout.thread_interp, layout.thread_native_id, current].into_iter().max().unwrap_or(0) as usize
        + 8
}

/// The thread state holding the interpreter's GIL, if it is held.
fn gil_holder(reader: &ObjectReader, interp: u64) -> Result<Option<u64>, ObjectError> {
    let (gil, locked, last_holder) = match reader.layout().gil {
        GilLayout::Inline { locked, last_holder } => (interp, locked, last_holder),
        GilLayout::Pointer { ceval_gil, locked, last_holder } => {
            (reader.word(interp + ceval_gil)?, locked, last_holder)
        }
    };
    if gil == 0 {
        return Ok(None);
    }
    let is_locked = reader.bytes_at(gil + locked, 4)?.iter().any(|&b| b != 0);
    Ok(is_locked.then_some(reader.word(gil + last_holder)?))
}

/// The Python frames from `innermost` outwards, skipping the interpreter's entry shims.
pub fn frames(reader: &mut ObjectReader, innermost: u64) -> (Vec<PyFrame>, WalkEnd) {
    let layout = reader.layout().clone();
    let header = [layout.frame_previous, layout.frame_code, layout.frame_instr].into_iter().max().unwrap_or(0) + 8;
    let header = header.max(layout.frame_owner + 1) as usize;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut frame = innermost;
    while frame != 0 {
        if out.len() >= MAX_FRAMES {
            return (out, WalkEnd::TooDeep);
        }
        if !seen.insert(frame) {
            return (out, WalkEnd::Loop);
        }
        let bytes = match reader.bytes_at(frame, header) {
            Ok(bytes) => bytes,
            Err(e) => return (out, WalkEnd::Broken(e)),
        };
        let previous = word_in(&bytes, layout.frame_previous as usize);
        let owner = bytes.get(layout.frame_owner as usize).copied().unwrap_or(u8::MAX);
        if owner < FIRST_SHIM_OWNER {
            // 3.14+ keeps the code as a tagged stack reference: the low bits are flags.
            let code_addr = word_in(&bytes, layout.frame_code as usize) & !7;
            let code = match reader.code(code_addr) {
                Ok(code) => code,
                Err(e) => return (out, WalkEnd::Broken(e)),
            };
            let first_instruction = code_addr + layout.code_adaptive;
            let instr = word_in(&bytes, layout.frame_instr as usize);
            // 3.12's prev_instr starts one unit before the first instruction: CPython gives
            // that the first line too.
            let line = match instr.checked_sub(first_instruction) {
                Some(offset) => code.line_at(offset / 2),
                None => u32::try_from(code.first_line).ok(),
            };
            out.push(PyFrame { code, line });
        }
        frame = previous;
    }
    (out, WalkEnd::Root)
}

#[cfg(test)]
#[path = "walk_tests.rs"]
mod tests;
