//! Joining a perf sample whose stack copy was cut short with the thread's frame chain read
//! from memory a moment later.
//!
//! Every `_PyEval_EvalFrameDefault` call keeps an entry shim frame on its C stack, and the
//! shim's `previous` is the Python frame that called into it. So the sample's own copy holds,
//! as they were at sample time, the shims of the calls it covers. The outermost trampoline the
//! walk found (call T) has its shim in the copy, just below the trampoline. If the chain read
//! now has a shim at that very address with the same bytes, whose Python frame is the code
//! that trampoline runs (its `co_extra` holds the trampoline), call T is still the one sampled,
//! and everything outside it (its callers, which cannot change while it runs) is exact.
//! Otherwise the thread has moved on, and nothing is stitched.

use super::layout::{Layout, FIRST_SHIM_OWNER};
use super::objects::word_in;
#[cfg(test)]
use super::walk::PyFrame;
use super::walk::{frame_header_len, ChainFrame, WalkEnd};

/// What the join needs of the sample.
#[derive(Debug, Clone, Copy)]
pub struct CutSample<'a> {
    /// The stack pointer the copy starts at.
    pub sp: u64,
    pub stack: &'a [u8],
    /// The outermost trampoline frame the walk found: the stack pointer while it runs and the
    /// trampoline's start address.
    pub trampoline_sp: u64,
    pub trampoline: u64,
}

impl<'a> CutSample<'a> {
    /// The copy from the trampoline's frame to its end: the sampled call's callers.
    pub fn callers(&self) -> Option<&'a [u8]> {
        let from = usize::try_from(self.trampoline_sp.checked_sub(self.sp)?).ok()?;
        self.stack.get(from..)
    }
}

/// Why a chain was not joined to a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The chain read did not reach the outermost frame.
    ChainIncomplete,
    /// No shim of the chain lies in the copy below the trampoline: the thread has returned
    /// past the sampled call.
    NoShimInCopy,
    /// The shim there is not the one the sample copied.
    ShimChanged,
    /// The shim's Python frame is not the code the trampoline runs.
    OtherCode,
    /// The thread's frames kept changing while they were read: no read saw them at one moment.
    ChangedWhileRead,
    /// The callers' part of the stack is not what the copy holds.
    CallersChanged,
    /// (Outer frames of a whole stack) an eval call outside the sampled one keeps its entry
    /// shim in the copy, but the chain's shim there differs.
    OuterShimChanged,
}

/// How much of the callers' stack must be as the copy holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallersCheck {
    /// All of it, byte for byte: the sampled call itself is still running.
    Bytes,
    /// Every eval call's entry shim in it: the calls outside the sampled one are the sampled
    /// ones, while the sampled call may have been left and made again in the same place (a
    /// whole stack's outer frames, which the copy holds every shim of).
    Shims,
}

/// Where in `chain` the callers of the sample's outermost trampoline call begin: its Python
/// frames from there on are those callers, innermost first.
///
/// `callers_now` is the stack from the trampoline's frame to the end of the copy as read with
/// the chain: the callers' C frames, which cannot change while the sampled call runs. Under
/// [`CallersCheck::Bytes`] they must be the bytes the copy holds, or the call was left and
/// another one made in its place; the sampled call's own shim must be there too, entering the
/// trampoline's code. Under [`CallersCheck::Shims`] only the eval calls outside the sampled one
/// are checked: at least one, and every one whose shim the copy holds, as the copy holds it.
pub fn anchor(
    chain: &[ChainFrame],
    end: &WalkEnd,
    layout: &Layout,
    sample: CutSample<'_>,
    callers_now: &[u8],
    check: CallersCheck,
    extras_of: impl FnOnce(u64) -> Vec<u64>,
) -> Result<usize, Refusal> {
    if *end != WalkEnd::Root {
        return Err(Refusal::ChainIncomplete);
    }
    let header = frame_header_len(layout) as u64;
    let copy_end = sample.sp.saturating_add(sample.stack.len() as u64);
    let fits = |f: &ChainFrame| f.addr.checked_add(header).is_some_and(|end| end <= copy_end);
    if check == CallersCheck::Shims {
        let outer = |f: &ChainFrame| f.owner >= FIRST_SHIM_OWNER && f.addr >= sample.trampoline_sp && fits(f);
        let first_outer = chain.iter().position(outer).ok_or(Refusal::OuterShimChanged)?;
        if !chain.iter().filter(|f| outer(f)).all(|shim| copied_shim_is(sample, layout, shim)) {
            return Err(Refusal::OuterShimChanged);
        }
        // The frames from the last shim before the outer calls' (a call inside the sampled
        // one's place) on. Shims after them need not be on this stack (3.15 keeps the
        // outermost in the thread state).
        let inner = chain[..first_outer].iter().rposition(|f| f.owner >= FIRST_SHIM_OWNER);
        return Ok(inner.map_or(0, |i| i + 1));
    }
    if sample.callers() != Some(callers_now) {
        return Err(Refusal::CallersChanged);
    }
    let in_copy =
        |f: &ChainFrame| f.owner >= FIRST_SHIM_OWNER && f.addr >= sample.sp && f.addr < sample.trampoline_sp && fits(f);
    let (at, shim) = chain
        .iter()
        .enumerate()
        .filter(|(_, f)| in_copy(f))
        .max_by_key(|(_, f)| f.addr)
        .ok_or(Refusal::NoShimInCopy)?;
    if !copied_shim_is(sample, layout, shim) {
        return Err(Refusal::ShimChanged);
    }
    let entered = at.checked_sub(1).and_then(|i| chain.get(i)).filter(|f| f.python.is_some());
    let entered = entered.ok_or(Refusal::OtherCode)?;
    if !extras_of(entered.code_addr).contains(&sample.trampoline) {
        return Err(Refusal::OtherCode);
    }
    Ok(at + 1)
}

/// Whether the copy holds `shim` as the chain read it: the same `previous` and owner at its
/// address.
fn copied_shim_is(sample: CutSample<'_>, layout: &Layout, shim: &ChainFrame) -> bool {
    let Some(copied) = shim.addr.checked_sub(sample.sp).and_then(|at| sample.stack.get(at as usize..)) else {
        return false;
    };
    word_in(copied, layout.frame_previous as usize) == shim.previous
        && copied.get(layout.frame_owner as usize) == Some(&shim.owner)
}

/// The Python frames outside the sample's outermost trampoline, innermost first.
#[cfg(test)]
pub fn outer_frames(
    chain: &[ChainFrame],
    end: &WalkEnd,
    layout: &Layout,
    sample: CutSample<'_>,
    extras_of: impl FnOnce(u64) -> Vec<u64>,
) -> Result<Vec<PyFrame>, Refusal> {
    let callers = sample.callers().unwrap_or_default();
    let from = anchor(chain, end, layout, sample, callers, CallersCheck::Bytes, extras_of)?;
    Ok(chain[from..].iter().filter_map(|f| f.python.clone()).collect())
}

#[cfg(test)]
#[path = "join_tests.rs"]
mod tests;

/// A trampoline frame of the sample: the stack pointer while it runs and the trampoline's
/// start. Its call's shim lies below that stack pointer, above the previous call's.
#[derive(Debug, Clone, Copy)]
pub struct SampledCall {
    pub sp: u64,
    pub trampoline: u64,
}

/// The line each sampled call runs, innermost first, from a chain read at once: the frame
/// entered at the call's shim, if the shim is in the copy with the bytes the copy holds and
/// that frame runs the trampoline's code. The callers are suspended in their calls, so their
/// lines are the sample's; the innermost frame's is the one it runs when read.
pub fn lines_of_calls(
    chain: &[ChainFrame],
    layout: &Layout,
    sp: u64,
    stack: &[u8],
    calls: &[SampledCall],
    mut extras_of: impl FnMut(u64) -> Vec<u64>,
) -> Vec<Option<u32>> {
    let header = frame_header_len(layout) as u64;
    let copy_end = sp.saturating_add(stack.len() as u64);
    let mut low = sp;
    calls
        .iter()
        .map(|call| {
            let window = low..call.sp;
            low = call.sp;
            let in_window = |f: &&ChainFrame| {
                f.owner >= FIRST_SHIM_OWNER
                    && window.contains(&f.addr)
                    && f.addr.checked_add(header).is_some_and(|end| end <= copy_end)
            };
            let at = chain.iter().enumerate().filter(|(_, f)| in_window(f)).max_by_key(|(_, f)| f.addr)?.0;
            let shim = &chain[at];
            let copied = &stack[(shim.addr - sp) as usize..];
            let same = word_in(copied, layout.frame_previous as usize) == shim.previous
                && copied.get(layout.frame_owner as usize) == Some(&shim.owner);
            let entered = chain.get(at.checked_sub(1)?)?;
            let python = entered.python.as_ref()?;
            (same && extras_of(entered.code_addr).contains(&call.trampoline)).then(|| python.line()).flatten()
        })
        .collect()
}
