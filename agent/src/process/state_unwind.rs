//! Unwinding one sample of a process: the walk over its stack copy, the completion from the
//! thread's earlier stacks or the interpreter's frames (`state_join.rs`), and the frame keys.

use std::cell::RefCell;

use super::extend::Beyond;
use super::join::Join;
use super::{FrameKey, ProcessState};
use crate::intern::Interner;
use crate::interp::{JoinOutcome, PyFrame};
use crate::perf::SampleEvent;
use crate::process::code::ProcessCode;
use crate::unwind::stack::{RawFrame, UnwoundStack};
use crate::unwind::{unwind_stack, Reference, StackEnd};

/// One sample unwound, completed and turned into frame keys.
#[derive(Debug, Clone)]
pub struct SampleUnwind {
    /// Leaf first, including frames taken from an earlier stack.
    pub frames: Vec<RawFrame>,
    /// How the walk over this sample's own stack copy ended (with `continued`, over the copy
    /// and the stack read beyond it).
    pub end: StackEnd,
    /// The copy ended before any Python call, and the walk went on in the thread's stack read
    /// from memory (see `state_extend.rs`).
    pub continued: Option<Beyond>,
    /// The earlier stack of the thread whose outer frames completed this one.
    pub completed_from: Option<Reference>,
    /// Bytes at the start of the stack copy the walk read.
    pub stack_read: usize,
    /// Frames of code without unwind info whose caller was found.
    pub without_cfi: usize,
    /// The join with the interpreter's frames, for a truncated stack of a readable process.
    pub joined: Option<Join>,
}

impl SampleUnwind {
    /// Whether the stack reaches its root, by itself or completed.
    pub fn is_whole(&self) -> bool {
        let joined = self.joined.as_ref().is_some_and(Join::succeeded);
        // A whole native stack whose Python frames outside its trampolines were asked for
        // (the trampoline came on while they ran) and refused lacks them.
        let refused = self.joined.as_ref().is_some_and(|j| matches!(j.outcome, JoinOutcome::Refused(_)));
        (self.end == StackEnd::Complete && !refused) || self.completed_from.is_some() || joined
    }
}

impl ProcessState {
    /// Whether `addr` is in the code at an image's entry point: the dynamic loader's `_start`
    /// (or a program's), which has no caller and, in ld.so, no CFI to say so.
    /// A walk that failed in a process's entry code (ld.so's `_start`, which has no CFI, while
    /// the loader runs before the program) with the copy reaching the top of the stack: that
    /// frame is the root, so the stack is complete, not cut.
    fn ends_in_entry_code(&self, unwound: &UnwoundStack, stack_filled: bool) -> bool {
        let outermost = unwound.frames.len().checked_sub(1);
        let root = outermost.and_then(|i| unwound.frames.get(i).map(|f| f.lookup_addr(i == 0)));
        matches!(unwound.end, StackEnd::Failed(_)) && !stack_filled && root.is_some_and(|addr| self.is_entry_code(addr))
    }

    /// The walk over `stack`, the sample's copy or a longer one.
    pub(super) fn walk(&mut self, sample: &SampleEvent, stack: &[u8], filled: bool) -> UnwoundStack {
        let mut consulted = std::mem::take(&mut self.consulted);
        consulted.clear();
        let code = ProcessCode {
            mappings: &self.mappings,
            perf_map: &self.perf_map,
            consulted: RefCell::new(consulted),
            facts: RefCell::new(std::mem::take(&mut self.code_facts)),
        };
        let mut unwound = unwind_stack(&self.unwinder, &mut self.cache, &code, sample.regs, stack, filled);
        self.consulted = code.consulted.into_inner();
        self.code_facts = code.facts.into_inner();
        if self.ends_in_entry_code(&unwound, filled) {
            unwound.end = StackEnd::Complete;
        }
        unwound
    }

    /// Unwinds one sample of this process, completes it from the thread's earlier stacks if
    /// the walk stopped short, and appends its frame keys (root last) to `keys`.
    pub fn unwind_sample(
        &mut self,
        sample: &SampleEvent,
        strings: &mut Interner,
        keys: &mut Vec<FrameKey>,
    ) -> SampleUnwind {
        let tid = sample.tid;
        let mut early = self.read_first(sample);
        let mut continued_from = None;
        let mut unwound = self.walk(sample, &sample.stack, sample.stack_filled);
        // Past the copy, the sample is the copy and the stack read beyond it; a read made
        // before that holds too little of the stack for a join.
        let continued = self.continue_in_memory(sample, &unwound, early.as_ref());
        let mut longer = None;
        if let Some(c) = continued {
            unwound = c.unwound;
            continued_from = Some(c.beyond);
            if let Some((stack, stack_filled)) = c.stack {
                early = None;
                let SampleEvent { pid, tid, time, cpu, regs, ref kernel_chain, .. } = *sample;
                let kernel_chain = kernel_chain.clone();
                longer = Some(SampleEvent { pid, tid, time, cpu, regs, stack, stack_filled, kernel_chain });
            }
        }
        let sample = longer.as_ref().unwrap_or(sample);
        let mut frames = unwound.frames;
        let own = frames.len();
        let lines = if self.lines { self.python_lines(sample, &frames, own, early.as_ref()) } else { Vec::new() };
        let mut completed_from = None;
        let mut joined = match unwound.end {
            StackEnd::Truncated => self.join_with_interpreter(sample, &frames, early, false),
            // Calls entered before the trampoline was on have no trampoline frame to name them.
            StackEnd::Complete if self.names_untrampolined => self.join_with_interpreter(sample, &frames, early, true),
            _ => None,
        };
        match unwound.end {
            StackEnd::Complete => self.completer.remember(tid, &frames, None),
            StackEnd::Truncated | StackEnd::Failed(_) => {
                // Completed either way, so the history later completions start from stays deep.
                // Frames read from the interpreter beat frames inferred from history; where
                // both give the same Python frames, the completion is shown, as it also has the
                // native frames between and outside them (unless lines were asked for, which
                // only the read has).
                let mut completed = frames.clone();
                let from = self.completer.complete(tid, &mut completed);
                let read = joined.as_ref().and_then(|j| match &j.outcome {
                    JoinOutcome::Joined(outer) => Some(outer.frames.clone()),
                    _ => None,
                });
                let agree = match (&from, &joined) {
                    (Some(from), Some(join)) if join.succeeded() && !self.lines => {
                        self.same_python_frames(&completed[own..], from.beyond.as_deref(), join, strings)
                    }
                    _ => false,
                };
                match (&from, read) {
                    (Some(from), None) => self.completer.remember(tid, &completed, from.beyond.clone()),
                    (Some(from), Some(_)) if agree => self.completer.remember(tid, &completed, from.beyond.clone()),
                    (_, Some(outer)) => self.completer.remember(tid, &frames, Some(outer)),
                    (None, None) => {}
                }
                let show_completion = match joined.as_mut() {
                    Some(join) if join.succeeded() => {
                        join.confirmed_completion = agree;
                        agree
                    }
                    _ => true,
                };
                if show_completion {
                    (frames, completed_from) = (completed, from);
                }
            }
        }
        let outcome = SampleUnwind {
            frames,
            end: unwound.end,
            continued: continued_from,
            completed_from,
            stack_read: unwound.stack_read,
            without_cfi: unwound.without_cfi,
            joined,
        };
        keys.extend(sample.kernel_chain.iter().map(|&a| FrameKey::Kernel(a)));
        let mut lines = lines.into_iter().peekable();
        // Python frames read from memory: a join's go where their eval calls' entry shims are
        // (before the native frame whose stack holds the shim), the rest after the last frame.
        let (beyond, shims): (&[PyFrame], &[u64]) = match &outcome.joined {
            Some(Join { outcome: JoinOutcome::Joined(outer), confirmed_completion: false, .. }) => {
                (&outer.frames, &outer.shims)
            }
            _ => (outcome.completed_from.as_ref().and_then(|from| from.beyond.as_deref()).unwrap_or_default(), &[]),
        };
        let copy_end = sample.regs.map_or(0, |r| r.sp.saturating_add(sample.stack.len() as u64));
        let mut placed = 0;
        for (i, frame) in outcome.frames.iter().enumerate() {
            let caller_sp = match outcome.frames.get(i + 1) {
                Some(caller) => caller.sp,
                None if outcome.end == StackEnd::Complete => u64::MAX,
                None => copy_end,
            };
            while placed < shims.len() && shims[placed] != 0 && shims[placed] < caller_sp {
                keys.push(self.python_key(&beyond[placed], strings));
                placed += 1;
            }
            let key = self.frame_key(frame.addr, frame.lookup_addr(i == 0), strings);
            match (key, lines.next_if(|(at, _)| *at == i)) {
                (FrameKey::MapSymbol(name), Some((_, line))) => keys.push(FrameKey::PythonLine { name, line }),
                (key, _) => keys.push(key),
            }
        }
        for f in &beyond[placed..] {
            keys.push(self.python_key(f, strings));
        }
        if !outcome.is_whole() || keys.is_empty() {
            keys.push(FrameKey::Truncated);
        }
        outcome
    }

    /// A Python frame read from memory, with its line under `--lines`.
    pub(crate) fn python_key(&mut self, frame: &PyFrame, strings: &mut Interner) -> FrameKey {
        let name = self.python_names.of(frame, strings);
        match frame.line().filter(|_| self.lines) {
            Some(line) => FrameKey::PythonLine { name, line },
            None => FrameKey::MapSymbol(name),
        }
    }

    /// The code addresses the last [`unwind_sample`](Self::unwind_sample) asked about: return
    /// addresses checked (scan candidates too) and, one past, the addresses whose unwind info
    /// it looked up.
    pub(crate) fn consulted(&self) -> &[u64] {
        &self.consulted
    }

    /// Classifies an address of this process.
    pub fn frame_key(&self, addr: u64, lookup_addr: u64, strings: &mut Interner) -> FrameKey {
        if let Some((_, entry)) = self.perf_map.lookup(addr) {
            return FrameKey::MapSymbol(entry.name);
        }
        match self.mapping_at(lookup_addr) {
            Some((start, m)) => match &m.image {
                Some(image) => FrameKey::Native { image: image.id, file_offset: lookup_addr - start + m.pgoff },
                None => {
                    let region = if m.path.is_empty() || m.path.starts_with("//anon") { "[anon]" } else { &m.path };
                    FrameKey::Unknown { region: strings.intern(region), addr }
                }
            },
            None => FrameKey::Unknown { region: strings.intern("[unknown]"), addr },
        }
    }
}
