//! Continuing a walk the stack copy cut short, with no trampoline in it to join the
//! interpreter's frames on, into the thread's stack read from memory.
//!
//! Code that keeps a large buffer on the stack (OpenBLAS's kernels align one of ~30 KiB;
//! numpy's generalized ufunc loop keeps 19 KiB of locals) fills the kernel's copy before the
//! walk reaches any Python call. The walk goes on in the stack read beyond the copy, up to the
//! first Python call (a trampoline frame). What it found there is taken only if the thread is
//! still in that call, as its innermost Python call, with its Python frames where they stood
//! right after the sample:
//! - the thread's frame chain, read after the stack at one moment with the stack from that
//!   call's frame up, starts with the frame that call entered, whose entry shim is where the
//!   stack read holds it, under callers that read the same byte for byte;
//! - every frame of the chain (address, code, instruction) is as the read made right after the
//!   sample found it: the call was not left and another made in between.
//!
//! The bytes of the outermost frame found in the copy tell nothing alone: a thread that
//! returned above them leaves them behind unchanged.
//!
//! A later sample whose outermost frame holds the same bytes at the same place, with its Python
//! frames where they stood for a continuation that reached the root, gets the same callers
//! without a read (its own may come after the call ended).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::join::EarlyRead;
use super::{ProcessState, Tid};
use crate::interp::{ChainSnapshot, CutSample, Place, Slot};
use crate::perf::SampleEvent;
use crate::unwind::stack::{RawFrame, UnwoundStack};
use crate::unwind::StackEnd;

/// How much stack beyond the copy is read, in total, at each step: a Python program's first
/// Python call above a native one usually fits in the first; a deep native stack gets more.
const READ_STEPS: [usize; 3] = [16 << 10, 64 << 10, 256 << 10];

/// Continuations remembered per thread, and how much of the outermost frame's bytes each
/// keeps to recognise its call by (2 KiB: 16 KiB per thread).
const REMEMBERED_PER_THREAD: usize = 8;
const KEPT_BYTES: usize = 2048;

/// Where the stack beyond the copy came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beyond {
    /// Read from the thread's memory for this sample.
    Read,
    /// Read for an earlier sample of the same call.
    Remembered,
}

/// A walk continued beyond the sample's copy.
pub struct Continued {
    /// The copy followed by the stack read beyond it, and whether that read was as long as
    /// asked (so the stack may go on); `None` when the frames beyond were remembered.
    pub stack: Option<(Vec<u8>, bool)>,
    pub unwound: UnwoundStack,
    pub beyond: Beyond,
}

/// A thread's recent continuations to the root, newest first, and whether its samples need
/// the stack beyond their copies (its last cut one had no Python call in its copy).
#[derive(Debug, Default)]
pub struct ThreadContinuations {
    remembered: VecDeque<Remembered>,
    needs_beyond: bool,
}

#[derive(Debug)]
struct Remembered {
    outermost: RawFrame,
    /// The outermost frame's bytes from its stack pointer, as copied (at most [`KEPT_BYTES`]).
    bytes: Box<[u8]>,
    /// The frames beyond it, to the root.
    callers: Arc<[RawFrame]>,
    /// Where the thread's Python frames stood just after that sample.
    place: Place,
}

impl ThreadContinuations {
    fn find(&self, outermost: RawFrame, bytes: &[u8], place: &Place) -> Option<&Remembered> {
        // As many bytes as were kept, never fewer: a copy that ends where the frame starts
        // tells nothing by its bytes.
        let kept = &bytes[..bytes.len().min(KEPT_BYTES)];
        self.remembered.iter().find(|r| r.outermost == outermost && *r.bytes == *kept && r.place == *place)
    }

    fn remember(&mut self, outermost: RawFrame, bytes: &[u8], callers: &[RawFrame], place: Place) {
        let bytes = Box::from(&bytes[..bytes.len().min(KEPT_BYTES)]);
        self.remembered.push_front(Remembered { outermost, bytes, callers: Arc::from(callers), place });
        self.remembered.truncate(REMEMBERED_PER_THREAD);
    }

    /// How much stack beyond its copy the read right after a sample takes with the chain.
    pub fn early_read(&self) -> usize {
        if self.needs_beyond {
            READ_STEPS[0]
        } else {
            0
        }
    }
}

/// The per-thread memory this stage keeps.
pub type Continuations = HashMap<Tid, ThreadContinuations>;

impl ProcessState {
    /// Walks on beyond the copy of a truncated sample whose walk found no trampoline, if the
    /// thread's Python frames were read right after it. `None` leaves the sample as it was.
    pub(super) fn continue_in_memory(
        &mut self,
        sample: &SampleEvent,
        walked: &UnwoundStack,
        early: Option<&EarlyRead>,
    ) -> Option<Continued> {
        if walked.end != StackEnd::Truncated || !sample.stack_filled {
            return None;
        }
        let needs_beyond = self.first_trampoline(walked).is_none();
        if needs_beyond || self.continuations.contains_key(&sample.tid) {
            self.continuations.entry(sample.tid).or_default().needs_beyond = needs_beyond;
        }
        let snapshot = early.and_then(EarlyRead::snapshot).filter(|_| needs_beyond)?;
        let place = snapshot.place()?;
        let sp = sample.regs?.sp;
        let outermost = *walked.frames.last()?;
        let copied = sample.stack.get(usize::try_from(outermost.sp.checked_sub(sp)?).ok()?..)?;
        // Remembered callers are frames only: a process whose calls from before the trampoline
        // came on need the stack itself (for their shims) reads every time.
        if !self.names_untrampolined {
            let thread = self.continuations.get(&sample.tid);
            if let Some(known) = thread.and_then(|t| t.find(outermost, copied, &place)) {
                let mut unwound = walked.clone();
                unwound.frames.extend_from_slice(&known.callers);
                unwound.end = StackEnd::Complete;
                return Some(Continued { stack: None, unwound, beyond: Beyond::Remembered });
            }
        }
        // The stack the read right after the sample took beyond the copy, then more if needed.
        let copy_end = sp.checked_add(sample.stack.len() as u64)?;
        let mut stack = sample.stack.clone();
        stack.extend_from_slice(snapshot.stack_from(copy_end).unwrap_or_default());
        let read_early = stack.len();
        let (stack, filled, unwound) = self.read_to_python(sample, walked, stack)?;
        let in_call = match stack.len() <= read_early {
            true => self.runs_innermost(snapshot, sample, &stack, &unwound),
            false => self.still_in_call(sample, &stack, &unwound, &place),
        };
        if !in_call {
            tracing::trace!("the thread left the sampled call before its stack was read");
            return None;
        }
        if unwound.end == StackEnd::Complete {
            let callers = &unwound.frames[walked.frames.len()..];
            self.continuations.entry(sample.tid).or_default().remember(outermost, copied, callers, place);
        }
        Some(Continued { stack: Some((stack, filled)), unwound, beyond: Beyond::Read })
    }

    /// `stack` (the copy and what was read beyond it with the chain) and more read in steps,
    /// until the walk over them reaches a Python call (or the root), and that walk.
    fn read_to_python(
        &mut self,
        sample: &SampleEvent,
        walked: &UnwoundStack,
        mut stack: Vec<u8>,
    ) -> Option<(Vec<u8>, bool, UnwoundStack)> {
        let sp = sample.regs?.sp;
        let access = self.access();
        let mut filled = stack.len() == sample.stack.len() + READ_STEPS[0];
        let early = stack.len() - sample.stack.len();
        let mut steps = READ_STEPS.into_iter().filter(|&total| total > early);
        loop {
            if stack.len() > sample.stack.len() {
                let unwound = self.walk(sample, &stack, filled);
                if matches!(unwound.end, StackEnd::Failed(_)) {
                    tracing::trace!(end = ?unwound.end, "the walk beyond the copy failed");
                    return None;
                }
                // (A frame larger than one step needs the next.)
                let further = unwound.frames.len() > walked.frames.len();
                if further && (unwound.end != StackEnd::Truncated || self.first_trampoline(&unwound).is_some()) {
                    return Some((stack, filled, unwound));
                }
                if !filled {
                    return None;
                }
            }
            let total = steps.next()?;
            let read_end = sp.checked_add(stack.len() as u64)?;
            let wanted = total.checked_sub(stack.len() - sample.stack.len())?;
            let more = access.read_memory_up_to(read_end, wanted)?;
            filled = more.len() == wanted;
            stack.extend_from_slice(&more);
        }
    }

    /// Whether the thread still runs the Python call the continued walk reached as its
    /// innermost, under the callers read, with its Python frames at `place`: a chain read now
    /// with the stack from that call up (see the module's comment).
    fn still_in_call(&mut self, sample: &SampleEvent, stack: &[u8], unwound: &UnwoundStack, place: &Place) -> bool {
        let (Some(regs), Some((trampoline_sp, _))) = (sample.regs, self.first_trampoline(unwound)) else {
            return false;
        };
        // Everything read beyond the copy is read again with the chain, at one moment: the
        // native frames between the copy and the Python call too, not only its callers.
        let Some(beyond) = stack.get(sample.stack.len()..) else { return false };
        let Some(copy_end) = regs.sp.checked_add(sample.stack.len() as u64) else { return false };
        if trampoline_sp < copy_end {
            return false;
        }
        let native_id = self.ns_tid(sample.tid);
        let Slot::Attached(interpreter) = &mut self.interpreter else { return false };
        let Ok(snapshot) = interpreter.snapshot(native_id, copy_end, beyond.len(), 0) else { return false };
        snapshot.stack_from(copy_end) == Some(beyond)
            && snapshot.place().as_ref() == Some(place)
            && self.runs_innermost(&snapshot, sample, stack, unwound)
    }

    /// Whether `snapshot` shows the thread in the Python call the continued walk reached as its
    /// innermost, under the callers `stack` holds.
    fn runs_innermost(
        &self,
        snapshot: &ChainSnapshot,
        sample: &SampleEvent,
        stack: &[u8],
        unwound: &UnwoundStack,
    ) -> bool {
        let (Some(regs), Some((trampoline_sp, trampoline))) = (sample.regs, self.first_trampoline(unwound)) else {
            return false;
        };
        let Slot::Attached(interpreter) = &self.interpreter else { return false };
        interpreter.runs_innermost(snapshot, CutSample { sp: regs.sp, stack, trampoline_sp, trampoline })
    }

    /// The innermost trampoline frame of a walk: its stack pointer and the trampoline's start.
    fn first_trampoline(&self, unwound: &UnwoundStack) -> Option<(u64, u64)> {
        unwound
            .frames
            .iter()
            .enumerate()
            .find_map(|(i, f)| Some((f.sp, self.perf_map.trampoline_at(f.lookup_addr(i == 0))?.0)))
    }

    pub(super) fn forget_continuations(&mut self, tid: Tid) {
        self.continuations.remove(&tid);
    }
}
