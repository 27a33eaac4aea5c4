//! The target's memory as read during one walk, by block. A chain's frames sit next to each
//! other (the data stack, the C stack), so one read serves many of them, and reading every
//! block again in one system call gives a view of the target at nearly one moment.

use std::sync::Arc;

/// Block size: a page.
pub const BLOCK: u64 = 4096;
/// Blocks kept per walk: 16 MiB, the stacks of a recursion some 10,000 frames deep. A walk
/// that needs more never sees one moment, and is not used.
const MAX_BLOCKS: usize = 4096;

/// Blocks by start address (`None`: unreadable), sorted: few per walk, so a binary search
/// beats hashing, and the last hit is tried first.
#[derive(Debug, Default)]
pub struct Blocks {
    known: Vec<(u64, Option<Arc<[u8]>>)>,
    last: usize,
}

impl Blocks {
    pub fn clear(&mut self) {
        self.known.clear();
        self.last = 0;
    }

    pub fn get(&mut self, start: u64) -> Option<&Option<Arc<[u8]>>> {
        if self.known.get(self.last).is_some_and(|(s, _)| *s == start) {
            return self.known.get(self.last).map(|(_, b)| b);
        }
        let i = self.known.binary_search_by_key(&start, |(s, _)| *s).ok()?;
        self.last = i;
        self.known.get(i).map(|(_, b)| b)
    }

    /// Adds a block read one by one; past [`MAX_BLOCKS`] the list starts over.
    pub fn insert(&mut self, start: u64, bytes: Option<Arc<[u8]>>) {
        if self.known.len() >= MAX_BLOCKS {
            self.clear();
        }
        match self.known.binary_search_by_key(&start, |(s, _)| *s) {
            Ok(i) => self.known[i].1 = bytes,
            Err(i) => self.known.insert(i, (start, bytes)),
        }
    }

    pub fn starts(&self) -> Vec<u64> {
        self.known.iter().map(|(s, _)| *s).collect()
    }

    /// Replaces every block with `fresh`, in the order of [`Blocks::starts`].
    pub fn replace_all(&mut self, fresh: Vec<Option<Vec<u8>>>) {
        for ((_, bytes), new) in self.known.iter_mut().zip(fresh) {
            *bytes = new.map(Arc::from);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_blocks_and_starts_over_when_full() {
        let mut blocks = Blocks::default();
        blocks.insert(0x1000, Some(Arc::from(vec![1u8])));
        blocks.insert(0x2000, None);
        assert_eq!(blocks.get(0x1000), Some(&Some(Arc::from(vec![1u8]))));
        assert_eq!(blocks.get(0x2000), Some(&None));
        assert_eq!(blocks.get(0x3000), None);
        blocks.replace_all(vec![None, Some(vec![2])]);
        assert_eq!(blocks.get(0x2000), Some(&Some(Arc::from(vec![2u8]))));
        for i in 0..MAX_BLOCKS as u64 {
            blocks.insert(0x10_0000 + i * BLOCK, None);
        }
        assert_eq!(blocks.get(0x1000), None, "started over");
        assert_eq!(blocks.starts().len(), 2, "the blocks inserted since");
    }
}
