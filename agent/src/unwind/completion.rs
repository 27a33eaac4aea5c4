//! Completing stacks that were cut off by the kernel's user-stack copy limit.
//!
//! perf copies at most 65432 bytes of stack (`perf::MAX_STACK_COPY`) and a Python frame costs
//! about 528 bytes of C stack, so deep Python stacks lose their outermost frames. The outer frames of a thread
//! change slowly, though: if a truncated sample's outermost unwound frame has the same return
//! address and stack pointer as a frame of an earlier complete sample of the same thread,
//! both are the same activation, and the earlier sample's frames beyond it are the missing
//! part.
//!
//! A stack cut short that was joined with the interpreter's frames (`interp`) is remembered
//! with those Python frames beyond its copy, so a later sample of the same activation whose
//! own read came too late (the thread had moved on) is completed as deep.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::stack::RawFrame;
use crate::interp::PyFrame;
use crate::process::ids::Tid;

/// How many complete stacks to remember per thread: on stacks whose depth changes every few
/// milliseconds, 16 left 1% of refused reads uncompleted, 128 a third of that
/// (docs/BENCHMARKS.md)...
const REFERENCES_PER_THREAD: usize = 128;
/// ...within this many frames in all (16 bytes each: 1 MiB per thread), so very deep stacks
/// keep fewer.
const FRAMES_PER_THREAD: usize = 1 << 16;
/// How far inward from the cut the two stacks are compared. The frame at the cut agreeing is
/// not enough: a C call path whose stack use varies (CPython's calls change path as the
/// interpreter specializes them) can put another activation's return at the same address and
/// stack pointer, and splice in another depth's callers.
const CHECKED_FRAMES: usize = 16;

/// A stack remembered whole: its native frames, leaf first, and the Python frames read from
/// the interpreter beyond them when its copy was cut short (innermost first).
#[derive(Debug, Clone)]
pub struct Reference {
    pub frames: Arc<[RawFrame]>,
    pub beyond: Option<Arc<[PyFrame]>>,
}

#[derive(Debug, Default)]
pub struct StackCompleter {
    references: HashMap<Tid, VecDeque<Reference>>,
}

impl StackCompleter {
    /// Remembers a whole stack, newest first: complete, completed, or joined (`beyond`).
    pub fn remember(&mut self, tid: Tid, frames: &[RawFrame], beyond: Option<Arc<[PyFrame]>>) {
        let refs = self.references.entry(tid).or_default();
        refs.push_front(Reference { frames: Arc::from(frames), beyond });
        let mut total = 0;
        let within = refs.iter().take_while(|r| {
            total += r.frames.len();
            total <= FRAMES_PER_THREAD
        });
        let keep = within.count().clamp(1, REFERENCES_PER_THREAD);
        refs.truncate(keep);
    }

    /// Extends a truncated stack (leaf first) with the outer frames of a remembered stack of
    /// the same thread. Returns the remembered stack it took them from, if it found a frame
    /// both agree on; its `beyond` frames, if any, follow the extended stack.
    pub fn complete(&self, tid: Tid, frames: &mut Vec<RawFrame>) -> Option<Reference> {
        let last = frames.last().copied()?;
        for reference in self.references.get(&tid)? {
            let Some(at) = reference.frames.iter().position(|f| *f == last) else { continue };
            if same_activation(frames, &reference.frames[..=at]) {
                frames.extend_from_slice(&reference.frames[at + 1..]);
                return Some(reference.clone());
            }
        }
        None
    }

    pub fn forget_thread(&mut self, tid: Tid) {
        self.references.remove(&tid);
    }
}

/// Whether two stacks that end at the same frame (return address and stack pointer) hold the
/// same activation there: they must agree on every frame inward from it, as far as both reach
/// (up to [`CHECKED_FRAMES`]). Measured on stacks whose depth changes every few milliseconds,
/// agreeing at the cut alone spliced in another depth's callers in ~1% of completions, and so
/// did letting paths that part inside the cut pass; this rule spliced none (docs/BENCHMARKS.md).
/// A stack whose inner frames went another way stays `[truncated]` instead.
fn same_activation(ours: &[RawFrame], theirs: &[RawFrame]) -> bool {
    ours.iter().rev().zip(theirs.iter().rev()).take(CHECKED_FRAMES).all(|(a, b)| a == b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(addr: u64, sp: u64) -> RawFrame {
        RawFrame { addr, sp }
    }

    #[test]
    fn splices_at_the_agreeing_frame() {
        let mut c = StackCompleter::default();
        let tid = Tid(7);
        // A complete stack: leaf .. root.
        c.remember(tid, &[f(0x98, 50), f(0x20, 200), f(0x30, 300), f(0x40, 400)], None);
        // A deeper sample, cut off after reaching the frame (0x20, 200).
        let mut truncated = vec![f(0x99, 10), f(0x98, 50), f(0x20, 200)];
        assert!(c.complete(tid, &mut truncated).is_some());
        assert_eq!(truncated, vec![f(0x99, 10), f(0x98, 50), f(0x20, 200), f(0x30, 300), f(0x40, 400)]);
    }

    #[test]
    fn same_address_at_another_depth_does_not_match() {
        let mut c = StackCompleter::default();
        c.remember(Tid(1), &[f(0x20, 200), f(0x40, 400)], None);
        let mut truncated = vec![f(0x99, 10), f(0x20, 250)];
        assert!(c.complete(Tid(1), &mut truncated).is_none());
        assert_eq!(truncated.len(), 2);
    }

    #[test]
    fn frames_before_the_cut_must_agree_too() {
        let mut c = StackCompleter::default();
        // Another activation happens to return to the same address at the same stack pointer:
        // its callee, called from the same site, sits elsewhere.
        c.remember(Tid(1), &[f(0x10, 100), f(0x55, 140), f(0x20, 200), f(0x40, 400)], None);
        let mut truncated = vec![f(0x99, 10), f(0x55, 150), f(0x20, 200)];
        assert!(c.complete(Tid(1), &mut truncated).is_none());
        let mut truncated = vec![f(0x10, 100), f(0x55, 140), f(0x20, 200)];
        assert!(c.complete(Tid(1), &mut truncated).is_some(), "the same activation");
        let mut truncated = vec![f(0x99, 10), f(0x66, 150), f(0x20, 200)];
        assert!(c.complete(Tid(1), &mut truncated).is_none(), "paths that part inside the cut are not trusted");
    }

    #[test]
    fn memory_per_thread_is_bounded_in_stacks_and_frames() {
        let mut c = StackCompleter::default();
        for i in 0..(REFERENCES_PER_THREAD as u64 + 10) {
            c.remember(Tid(1), &[f(i, 1)], None);
        }
        assert_eq!(c.references[&Tid(1)].len(), REFERENCES_PER_THREAD);
        let deep: Vec<RawFrame> = (0..FRAMES_PER_THREAD as u64 / 3).map(|i| f(i, i)).collect();
        for _ in 0..5 {
            c.remember(Tid(1), &deep, None);
        }
        assert_eq!(c.references[&Tid(1)].len(), 3, "as many deep stacks as fit");
        let huge: Vec<RawFrame> = (0..FRAMES_PER_THREAD as u64 * 2).map(|i| f(i, i)).collect();
        c.remember(Tid(1), &huge, None);
        assert_eq!(c.references[&Tid(1)].len(), 1, "the newest is always kept");
    }

    #[test]
    fn other_threads_are_never_used() {
        let mut c = StackCompleter::default();
        c.remember(Tid(1), &[f(0x20, 200), f(0x40, 400)], None);
        let mut truncated = vec![f(0x20, 200)];
        assert!(c.complete(Tid(2), &mut truncated).is_none());
    }

    #[test]
    fn chains_through_completed_stacks() {
        let mut c = StackCompleter::default();
        let tid = Tid(3);
        c.remember(tid, &[f(5, 1), f(2, 20), f(3, 30)], None);
        let mut middle = vec![f(8, 0), f(5, 1), f(2, 20)];
        assert!(c.complete(tid, &mut middle).is_some());
        c.remember(tid, &middle, None);
        let mut deep = vec![f(9, 0), f(8, 0), f(5, 1)];
        assert!(c.complete(tid, &mut deep).is_some());
        assert_eq!(deep, vec![f(9, 0), f(8, 0), f(5, 1), f(2, 20), f(3, 30)]);
    }

    #[test]
    fn a_joined_stack_completes_later_samples_with_the_python_frames_read_beyond_it() {
        use crate::interp::CodeInfo;
        let mut c = StackCompleter::default();
        let tid = Tid(4);
        let beyond: Arc<[PyFrame]> = Arc::from(vec![
            PyFrame { code: CodeInfo::named("caller"), unit: None },
            PyFrame { code: CodeInfo::named("<module>"), unit: None },
        ]);
        // Cut at (0x30, 300); the interpreter's frames beyond it were read.
        c.remember(tid, &[f(0x98, 50), f(0x20, 200), f(0x30, 300)], Some(beyond.clone()));
        // A deeper sample of the same activation, cut at (0x20, 200): the read came too late.
        let mut truncated = vec![f(0x99, 10), f(0x98, 50), f(0x20, 200)];
        let from = c.complete(tid, &mut truncated).expect("completed");
        assert_eq!(truncated, vec![f(0x99, 10), f(0x98, 50), f(0x20, 200), f(0x30, 300)]);
        let names: Vec<&str> = from.beyond.iter().flat_map(|b| b.iter()).map(|f| f.code.qualname.as_str()).collect();
        assert_eq!(names, ["caller", "<module>"]);
    }
}
