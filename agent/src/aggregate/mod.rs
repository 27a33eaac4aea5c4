//! Stage 5, **aggregate**: interned stacks and their sample counts, then the views users
//! choose between (Python-focused or all native frames, per thread, per process).

pub(crate) mod view;

use std::collections::HashMap;
use std::sync::Arc;

use crate::intern::Interner;
use crate::process::{FrameKey, Pid, Tid};

/// Handle of an interned stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackId(pub u32);

/// Who a sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SampleOwner {
    pub pid: Pid,
    pub tid: Tid,
}

/// One sample with its time, kept when a timeline is wanted (streaming, traces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedSample {
    /// CLOCK_MONOTONIC nanoseconds.
    pub time: u64,
    pub owner: SampleOwner,
    pub stack: StackId,
}

/// The samples since the last [`Profile::take_window`], with the stacks they refer to.
#[derive(Debug, Default)]
pub struct Window {
    pub samples: Vec<TimedSample>,
    /// Indexed by [`StackId`]; leaf first.
    pub stacks: Vec<Arc<[FrameKey]>>,
}

/// What a profile keeps of each sample: the seam between the sampling engine and the front
/// end that drives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Keep {
    /// Counts per (thread, stack) over the whole recording (`record`).
    #[default]
    Counts,
    /// Counts, and every sample's time (`record --format trace`).
    CountsAndTimes,
    /// Timed samples only, handed out a window at a time ([`Profile::take_window`]): `stream`.
    Windows,
}

/// The samples of a recording, as [`Keep`] says. Stacks are stored leaf first.
#[derive(Debug, Default)]
pub struct Profile {
    keep: Keep,
    timeline: Vec<TimedSample>,
    pub strings: Interner,
    stack_ids: HashMap<Arc<[FrameKey]>, StackId>,
    stacks: Vec<Arc<[FrameKey]>>,
    counts: HashMap<(SampleOwner, StackId), u64>,
    pub process_names: HashMap<Pid, String>,
    pub thread_names: HashMap<(Pid, Tid), String>,
    total: u64,
}

impl Profile {
    pub fn new(keep: Keep) -> Self {
        Self { keep, ..Self::default() }
    }

    pub fn intern_stack(&mut self, frames: &[FrameKey]) -> StackId {
        if let Some(&id) = self.stack_ids.get(frames) {
            return id;
        }
        let id = StackId(u32::try_from(self.stacks.len()).unwrap_or(u32::MAX));
        let shared: Arc<[FrameKey]> = Arc::from(frames);
        self.stacks.push(shared.clone());
        self.stack_ids.insert(shared, id);
        id
    }

    pub fn add(&mut self, owner: SampleOwner, frames: &[FrameKey], time: u64) {
        let id = self.intern_stack(frames);
        self.total += 1;
        if self.keep != Keep::Windows {
            *self.counts.entry((owner, id)).or_default() += 1;
        }
        if self.keep != Keep::Counts {
            self.timeline.push(TimedSample { time, owner, stack: id });
        }
    }

    /// The timed samples kept so far (empty unless the profile keeps times).
    pub fn timeline(&self) -> &[TimedSample] {
        &self.timeline
    }

    /// Hands out the samples recorded since the last call and starts a new window. Strings
    /// and names stay, because frame keys refer to them.
    pub fn take_window(&mut self) -> Window {
        let samples = std::mem::take(&mut self.timeline);
        let stacks = std::mem::take(&mut self.stacks);
        self.stack_ids.clear();
        self.counts.clear();
        self.total = 0;
        Window { samples, stacks }
    }

    pub fn stack(&self, id: StackId) -> &[FrameKey] {
        self.stacks.get(id.0 as usize).map_or(&[], |s| s)
    }

    pub fn samples(&self) -> impl Iterator<Item = (SampleOwner, &[FrameKey], u64)> {
        self.counts.iter().map(|(&(owner, id), &count)| (owner, self.stack(id), count))
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Every distinct frame key, for batch symbolization.
    pub fn frame_keys(&self) -> Vec<FrameKey> {
        let mut keys: Vec<FrameKey> = self.stacks.iter().flat_map(|s| s.iter().copied()).collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    pub fn process_count(&self) -> usize {
        let mut pids: Vec<Pid> = self.counts.keys().map(|(o, _)| o.pid).collect();
        pids.sort_unstable();
        pids.dedup();
        pids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_stacks_share_an_id_and_counts_add_up() {
        let mut p = Profile::new(Keep::CountsAndTimes);
        let owner = SampleOwner { pid: Pid(1), tid: Tid(1) };
        let a = [FrameKey::Kernel(1), FrameKey::Kernel(2)];
        p.add(owner, &a, 10);
        p.add(owner, &a, 20);
        p.add(SampleOwner { pid: Pid(1), tid: Tid(2) }, &a, 30);
        assert_eq!(p.total(), 3);
        assert_eq!(p.stacks.len(), 1);
        let mut counts: Vec<u64> = p.samples().map(|(_, _, c)| c).collect();
        counts.sort_unstable();
        assert_eq!(counts, vec![1, 2]);
        assert_eq!(p.frame_keys().len(), 2);
        let window = p.take_window();
        assert_eq!(window.samples.iter().map(|s| s.time).collect::<Vec<_>>(), vec![10, 20, 30]);
        assert_eq!(window.stacks.len(), 1);
        assert_eq!(p.total(), 0);
        p.add(owner, &a, 40);
        assert_eq!(p.take_window().samples[0].stack, StackId(0), "ids restart in a new window");
    }

    #[test]
    fn windows_keep_no_counts() {
        let mut p = Profile::new(Keep::Windows);
        let owner = SampleOwner { pid: Pid(1), tid: Tid(1) };
        p.add(owner, &[FrameKey::Kernel(1)], 10);
        assert_eq!(p.samples().count(), 0, "stream throws counts away, so it keeps none");
        assert_eq!(p.take_window().samples.len(), 1);
    }
}
