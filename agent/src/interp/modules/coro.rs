//! A task's coroutine stack: its coroutine's frame, then the coroutine that one awaits, and so
//! on inwards until an object that is not a coroutine (the future the task waits for). A
//! suspended coroutine's frame keeps what it awaits on top of its value stack, which is where
//! CPython's own `cr_await` reads it.

use super::containers::Containers;
use super::layout::StackTop;
use crate::interp::objects::{word_in, ObjectError};

/// More nested awaits than any program has: a longer chain is a loop or garbage.
const MAX_AWAIT_DEPTH: usize = 1024;
/// Most value-stack slots read from one frame.
const MAX_SLOTS: u64 = 4096;

/// What state the outermost coroutine was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoroState {
    NotStarted,
    /// Suspended in an `await` of a non-coroutine (its innermost awaited object).
    Awaiting(u64),
    /// Running now, or finished: its frame is not suspended.
    Running,
}

#[derive(Debug)]
pub struct CoroStack {
    /// The embedded frames, outermost (the task's own coroutine) first.
    pub frames: Vec<u64>,
    /// Every object the frames' locals and value stacks hold.
    pub held: Vec<u64>,
    pub state: CoroState,
}

/// Follows `coro` inwards through what each suspended coroutine awaits.
pub fn read(c: &Containers, coro: u64) -> Result<CoroStack, ObjectError> {
    let l = c.layout;
    let mut stack = CoroStack { frames: Vec::new(), held: Vec::new(), state: CoroState::Running };
    let mut current = coro;
    for _ in 0..MAX_AWAIT_DEPTH {
        let ty = c.type_of(current)?;
        if ty != c.types.coroutine && ty != c.types.generator {
            stack.state = CoroState::Awaiting(current);
            return Ok(stack);
        }
        let frame_state = c.reader.bytes_at(current.wrapping_add(l.coro_frame_state), 1)?[0] as i8;
        let frame = current.wrapping_add(l.coro_iframe);
        stack.frames.push(frame);
        if frame_state == l.state_created {
            stack.state = if stack.frames.len() == 1 { CoroState::NotStarted } else { CoroState::Running };
            return Ok(stack);
        }
        if frame_state != l.state_awaiting {
            return Ok(stack);
        }
        let slots = slots(c, frame)?;
        let below = match l.stack_top {
            StackTop::Count { .. } => 1,
            StackTop::Pointer { below, .. } => below as usize,
        };
        let awaited = slots.len().checked_sub(below).and_then(|i| slots.get(i)).copied();
        stack.held.extend_from_slice(&slots);
        match awaited {
            Some(next) if next != 0 => current = next,
            _ => return Err(ObjectError::Malformed { what: "coroutine", addr: current, why: "awaits nothing" }),
        }
    }
    Err(ObjectError::Malformed { what: "coroutine", addr: coro, why: "awaits deeper than any program" })
}

/// A suspended frame's locals and value stack, up to its top.
fn slots(c: &Containers, frame: u64) -> Result<Vec<u64>, ObjectError> {
    let l = c.layout;
    let base = frame.wrapping_add(l.frame_localsplus);
    let (count, tag_mask) = match l.stack_top {
        StackTop::Count { at } => {
            let top = i32::from_le_bytes(slice4(&c.reader.bytes_at(frame.wrapping_add(at), 4)?));
            (u64::try_from(top).unwrap_or(u64::MAX), !0)
        }
        // 3.14+ stack references carry flags in their low bits.
        StackTop::Pointer { at, .. } => (c.reader.word(frame.wrapping_add(at))?.wrapping_sub(base) / 8, !7),
    };
    if count > MAX_SLOTS {
        return Err(ObjectError::Malformed { what: "frame", addr: frame, why: "stack deeper than any" });
    }
    let bytes = c.reader.bytes_at(base, count as usize * 8)?;
    Ok(bytes.chunks_exact(8).map(|w| word_in(w, 0) & tag_mask).collect())
}

fn slice4(bytes: &[u8]) -> [u8; 4] {
    bytes.get(..4).and_then(|b| b.try_into().ok()).unwrap_or_default()
}
