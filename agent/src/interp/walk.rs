//! Walking the interpreter's state: interpreters → thread states → frame chains. Each list is
//! bounded and checked for loops, since the target changes it while ember reads and a hostile
//! one can point anywhere.

use std::collections::HashSet;
use std::sync::Arc;

use super::layout::{CurrentFrame, GilLayout, FIRST_SHIM_OWNER, GENERATOR_OWNER};
use super::objects::{word_in, CodeInfo, ObjectError, ObjectReader};

/// More interpreters than any program makes: a longer list is a loop or garbage.
const MAX_INTERPRETERS: usize = 256;
pub(super) const MAX_THREADS: usize = 16_384;
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
    /// The chain's entry shims, innermost first: each one's address, on the C stack of the
    /// `_PyEval_EvalFrameDefault` call it belongs to, and how many of `frames` come before it
    /// (so the frames after the previous shim's count run in that call).
    pub shims: Vec<(u64, usize)>,
}

#[derive(Debug, Clone)]
pub struct PyFrame {
    pub code: Arc<CodeInfo>,
    /// Code units from the first instruction to the current one; `None` before the first
    /// (3.12's `prev_instr` starts one unit before it).
    pub unit: Option<u64>,
}

impl PyFrame {
    /// The line running, as CPython's `PyFrame_GetLineNumber` gives it (decoded when asked:
    /// a join needs no lines).
    pub fn line(&self) -> Option<u32> {
        match self.unit {
            Some(unit) => self.code.line_at(unit),
            None => u32::try_from(self.code.first_line).ok(),
        }
    }
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
    let mut interp = reader.word(runtime.wrapping_add(layout.interpreters_head))?;
    let mut seen_interps = HashSet::new();
    while interp != 0 && seen_interps.len() < MAX_INTERPRETERS && seen_interps.insert(interp) {
        let holder = gil_holder(reader, interp)?;
        let mut tstate = reader.word(interp.wrapping_add(layout.interp_threads_head))?;
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
            let innermost = current_frame(reader, &head)?;
            let (chain, end) = chain(reader, innermost);
            let (mut frames, mut shims) = (Vec::new(), Vec::new());
            for frame in chain {
                match frame.python {
                    Some(python) => frames.push(python),
                    None => shims.push((frame.addr, frames.len())),
                }
            }
            out.push(PyThread {
                native_id: word_in(&head, layout.thread_native_id as usize),
                holds_gil: holder == Some(tstate),
                frames,
                end,
                shims,
            });
            tstate = word_in(&head, layout.thread_next as usize);
        }
        interp = reader.word(interp.wrapping_add(layout.interp_next))?;
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
pub(super) fn gil_holder(reader: &ObjectReader, interp: u64) -> Result<Option<u64>, ObjectError> {
    let (gil, locked, last_holder) = match reader.layout().gil {
        GilLayout::Inline { locked, last_holder } => (interp, locked, last_holder),
        GilLayout::Pointer { ceval_gil, locked, last_holder } => {
            (reader.word(interp.wrapping_add(ceval_gil))?, locked, last_holder)
        }
    };
    if gil == 0 {
        return Ok(None);
    }
    let is_locked = reader.bytes_at(gil.wrapping_add(locked), 4)?.iter().any(|&b| b != 0);
    Ok(is_locked.then_some(reader.word(gil.wrapping_add(last_holder))?))
}

/// One frame of the chain as it sits in memory: a Python frame, or an entry shim (which lives
/// on the C stack of the `_PyEval_EvalFrameDefault` call it belongs to, so a perf sample's
/// stack copy holds it too: that is what joins the two).
#[derive(Debug, Clone)]
pub struct ChainFrame {
    pub addr: u64,
    pub previous: u64,
    pub owner: u8,
    /// `None` for a shim.
    pub python: Option<PyFrame>,
    /// The code object's address (0 for a shim).
    pub code_addr: u64,
}

/// Every frame from `innermost` outwards, shims included.
pub fn chain(reader: &mut ObjectReader, innermost: u64) -> (Vec<ChainFrame>, WalkEnd) {
    let layout = reader.layout().clone();
    let header = frame_header_len(&layout);
    let mut out = Vec::new();
    let mut loops = LoopCheck::new(innermost);
    let mut frame = innermost;
    while frame != 0 {
        if out.len() >= MAX_FRAMES {
            return (out, WalkEnd::TooDeep);
        }
        if !out.is_empty() && loops.seen_again(frame) {
            // Found a lap or so late: keep each frame once.
            let mut once = HashSet::new();
            let first_repeat = out.iter().position(|f| !once.insert(f.addr)).unwrap_or(out.len());
            out.truncate(first_repeat);
            return (out, WalkEnd::Loop);
        }
        let bytes = match reader.view(frame, header) {
            Ok(bytes) => bytes,
            Err(e) => return (out, WalkEnd::Broken(e)),
        };
        let previous = word_in(&bytes, layout.frame_previous as usize);
        let owner = bytes.get(layout.frame_owner as usize).copied().unwrap_or(u8::MAX);
        let mut entry = ChainFrame { addr: frame, previous, owner, python: None, code_addr: 0 };
        if owner < FIRST_SHIM_OWNER {
            match python_frame(reader, &bytes) {
                Ok((python, code_addr)) => (entry.python, entry.code_addr) = (Some(python), code_addr),
                Err(e) => return (out, WalkEnd::Broken(e)),
            }
        }
        out.push(entry);
        if previous == 0 && owner == GENERATOR_OWNER {
            // A running chain ends at its thread's entry frame; one ending at a generator's
            // frame was read across that generator's suspension (its caller link cleared).
            let why = "it ends at a suspended generator's frame: the thread moved while it was read";
            return (out, WalkEnd::Broken(ObjectError::Malformed { what: "frame chain", addr: frame, why }));
        }
        frame = previous;
    }
    (out, WalkEnd::Root)
}

/// The code and instruction of the Python frame whose header is `bytes`, and the code
/// object's address.
fn python_frame(reader: &mut ObjectReader, bytes: &[u8]) -> Result<(PyFrame, u64), ObjectError> {
    let layout = reader.layout();
    // 3.14+ keeps the code as a tagged stack reference: the low bits are flags.
    let code_addr = word_in(bytes, layout.frame_code as usize) & !7;
    let first_instruction = code_addr.wrapping_add(layout.code_adaptive);
    let instr = word_in(bytes, layout.frame_instr as usize);
    let unit = instr.checked_sub(first_instruction).map(|offset| offset / 2);
    let code = reader.code(code_addr)?;
    Ok((PyFrame { code, unit }, code_addr))
}

/// The Python frame at `frame`: one a coroutine embeds, outside any thread's chain.
pub fn frame_at(reader: &mut ObjectReader, frame: u64) -> Result<PyFrame, ObjectError> {
    let bytes = reader.view(frame, frame_header_len(reader.layout()))?;
    python_frame(reader, &bytes).map(|(python, _)| python)
}

/// Brent's cycle check: no memory per frame, and a loop is found within twice its length.
struct LoopCheck {
    mark: u64,
    steps: usize,
    power: usize,
}

impl LoopCheck {
    fn new(start: u64) -> Self {
        LoopCheck { mark: start, steps: 0, power: 1 }
    }

    fn seen_again(&mut self, next: u64) -> bool {
        if next == self.mark {
            return true;
        }
        self.steps += 1;
        if self.steps == self.power {
            (self.mark, self.steps, self.power) = (next, 0, self.power * 2);
        }
        false
    }
}

/// The bytes of a frame the walk reads: up to the last field it uses.
pub fn frame_header_len(layout: &super::layout::Layout) -> usize {
    let words = [layout.frame_previous, layout.frame_code, layout.frame_instr].into_iter().max().unwrap_or(0) + 8;
    words.max(layout.frame_owner + 1) as usize
}

/// The innermost frame of the thread whose id (in the target's namespace) is `native_id`, or
/// `None` if the interpreter has no such thread.
pub fn innermost_of(reader: &ObjectReader, runtime: u64, native_id: u64) -> Result<Option<u64>, ObjectError> {
    let layout = reader.layout().clone();
    let mut interp = reader.word(runtime.wrapping_add(layout.interpreters_head))?;
    let mut seen = HashSet::new();
    while interp != 0 && seen.len() < MAX_INTERPRETERS + MAX_THREADS && seen.insert(interp) {
        let mut tstate = reader.word(interp.wrapping_add(layout.interp_threads_head))?;
        while tstate != 0 && seen.len() < MAX_INTERPRETERS + MAX_THREADS && seen.insert(tstate) {
            let head = reader.bytes_at(tstate, thread_header_len(&layout))?;
            if word_in(&head, layout.thread_native_id as usize) == native_id {
                return current_frame(reader, &head).map(Some);
            }
            tstate = word_in(&head, layout.thread_next as usize);
        }
        interp = reader.word(interp.wrapping_add(layout.interp_next))?;
    }
    Ok(None)
}

fn current_frame(reader: &ObjectReader, thread_head: &[u8]) -> Result<u64, ObjectError> {
    match reader.layout().current_frame {
        CurrentFrame::Direct(at) => Ok(word_in(thread_head, at as usize)),
        CurrentFrame::ViaCFrame { cframe, current_frame } => match word_in(thread_head, cframe as usize) {
            0 => Ok(0),
            cframe => reader.word(cframe.wrapping_add(current_frame)),
        },
    }
}

#[cfg(test)]
#[path = "walk_tests.rs"]
mod tests;
