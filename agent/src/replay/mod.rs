//! Replay cases for the unwinder (docs/REPLAY.md): real samples recorded with what unwinding
//! them needs, replayed without perf or a live process through the same process state,
//! unwind loop, completion and frame keys as a live recording.
//!
//! `record --capture-replay DIR` keeps a few samples ([`Capture`]); [`replay`] runs a case
//! again and [`differences`] compares the outcome with what the live agent found.

pub(crate) mod capture;
pub(crate) mod extents;
pub(crate) mod format;
pub(crate) mod keys;
pub(crate) mod target;

use std::sync::Arc;

pub use capture::{Capture, CaptureError, DEFAULT_SAMPLES};
pub use format::{Case, Expected, FormatError, SampleRecord, CASE_FILE, FORMAT_VERSION};

use crate::intern::Interner;
use crate::perf::{SampleEvent, UserRegs};
use crate::process::{Pid, ProcessState, Tid};
use crate::unwind::elf::Function;
use crate::unwind::stack::RawFrame;
use crate::unwind::ElfCache;
use keys::{end_text, frame_text};
use target::RecordedTarget;

/// Unwinds every sample of `case` again, each in a process state rebuilt from what the
/// sample recorded. Returns one outcome per sample, in the form of [`Expected`].
pub fn replay(case: &Arc<Case>) -> Vec<Expected> {
    // Images are loaded once per case, as a live recording loads them once per run.
    let mut elf = ElfCache::default();
    let mut strings = Interner::default();
    let mut out = Vec::with_capacity(case.samples.len());
    for (i, sample) in case.samples.iter().enumerate() {
        let access = Arc::new(RecordedTarget::new(case.clone(), i));
        let mut state = ProcessState::recorded(Pid(sample.pid), String::new(), access);
        if let Err(e) = state.refresh_maps(&mut elf) {
            tracing::warn!("replay: no mappings: {e}");
        }
        give_functions(case, &elf);
        let mut lines = Vec::new();
        for line in sample.perf_map.iter().filter_map(|&l| case.perf_map.get(l)) {
            lines.extend_from_slice(line.as_bytes());
            lines.push(b'\n');
        }
        state.add_perf_map_lines(&lines, &mut strings, &mut elf);
        if let Some(history) = &sample.history {
            let frames: Vec<RawFrame> = history.iter().map(|&[addr, sp]| RawFrame { addr, sp }).collect();
            state.completer.remember(Tid(sample.tid), &frames, None);
        }
        let event = SampleEvent {
            pid: Pid(sample.pid),
            tid: Tid(sample.tid),
            time: 0,
            cpu: 0,
            regs: Some(UserRegs { ip: sample.ip, sp: sample.sp, bp: sample.bp, bx: sample.bx }),
            stack: sample.stack.clone(),
            stack_filled: sample.stack_filled,
            kernel_chain: Vec::new(),
        };
        let mut keys = Vec::new();
        let unwound = state.unwind_sample(&event, &mut strings, &mut keys);
        out.push(Expected {
            end: end_text(unwound.end),
            completed: unwound.completed_from.is_some(),
            frames: keys.iter().map(|k| frame_text(k, &strings, &elf)).collect(),
        });
    }
    out
}

/// Gives the loaded images the function symbols their records list: a case keeps those, not
/// the symbol tables (images are matched by path and build-id, as they were recorded).
fn give_functions(case: &Case, elf: &ElfCache) {
    for image in elf.images() {
        let build_id = image.build_id.as_deref().map(keys::hex);
        let record = case.images.iter().find(|r| r.path == image.path && r.build_id == build_id);
        if let Some(record) = record.filter(|r| !r.functions.is_empty()) {
            image.set_functions(
                record
                    .functions
                    .iter()
                    .map(|f| Function { start: f.start, size: f.size, name: f.name.as_str().into() })
                    .collect(),
            );
        }
    }
}

/// Where `replayed` differs from what `case` expects, one line per difference (empty when
/// they agree).
pub fn differences(case: &Case, replayed: &[Expected]) -> Vec<String> {
    let mut out = Vec::new();
    if case.samples.len() != replayed.len() {
        out.push(format!("{} samples expected, {} replayed", case.samples.len(), replayed.len()));
    }
    for (i, (sample, got)) in case.samples.iter().zip(replayed).enumerate() {
        let want = &sample.expected;
        if want.end != got.end || want.completed != got.completed {
            out.push(format!(
                "sample {i} (tid {}): ended {} (completed: {}), expected {} (completed: {})",
                sample.tid, got.end, got.completed, want.end, want.completed
            ));
        }
        if let Some(at) =
            (0..want.frames.len().max(got.frames.len())).find(|&f| want.frames.get(f) != got.frames.get(f))
        {
            out.push(format!(
                "sample {i} (tid {}): frame {at} of {} is {:?}, expected {:?} (of {})",
                sample.tid,
                got.frames.len(),
                got.frames.get(at),
                want.frames.get(at),
                want.frames.len()
            ));
        }
    }
    out
}
