//! Stage 5, **aggregate**: interned stacks and their sample counts, then the views users
//! choose between (Python-focused or all native frames, per thread, per process).

pub mod view;

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

/// All samples of a recording, as counts per (thread, stack). Stacks are stored leaf first.
#[derive(Debug, Default)]
pub struct Profile {
    pub strings: Interner,
    stack_ids: HashMap<Arc<[FrameKey]>, StackId>,
    stacks: Vec<Arc<[FrameKey]>>,
    counts: HashMap<(SampleOwner, StackId), u64>,
    pub process_names: HashMap<Pid, String>,
    pub thread_names: HashMap<(Pid, Tid), String>,
    total: u64,
}

impl Profile {
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

    pub fn add(&mut self, owner: SampleOwner, frames: &[FrameKey]) {
        let id = self.intern_stack(frames);
        *self.counts.entry((owner, id)).or_default() += 1;
        self.total += 1;
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
        let mut p = Profile::default();
        let owner = SampleOwner { pid: Pid(1), tid: Tid(1) };
        let a = [FrameKey::Kernel(1), FrameKey::Kernel(2)];
        p.add(owner, &a);
        p.add(owner, &a);
        p.add(SampleOwner { pid: Pid(1), tid: Tid(2) }, &a);
        assert_eq!(p.total(), 3);
        assert_eq!(p.stacks.len(), 1);
        let mut counts: Vec<u64> = p.samples().map(|(_, _, c)| c).collect();
        counts.sort_unstable();
        assert_eq!(counts, vec![1, 2]);
        assert_eq!(p.frame_keys().len(), 2);
    }
}
