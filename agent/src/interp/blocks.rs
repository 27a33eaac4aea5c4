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

    /// The starts of the blocks that could be read (one that could not stays so: reading it
    /// again with the others would cut their one system call short there).
    pub fn readable_starts(&self) -> Vec<u64> {
        self.known.iter().filter(|(_, b)| b.is_some()).map(|(s, _)| *s).collect()
    }

    /// Replaces every readable block with `fresh`, in the order of [`Blocks::readable_starts`].
    pub fn replace_readable(&mut self, fresh: Vec<Option<Vec<u8>>>) {
        let readable = self.known.iter_mut().filter(|(_, b)| b.is_some());
        for ((_, bytes), new) in readable.zip(fresh) {
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
        assert_eq!(blocks.readable_starts(), [0x1000]);
        blocks.replace_readable(vec![Some(vec![2])]);
        assert_eq!(blocks.get(0x1000), Some(&Some(Arc::from(vec![2u8]))));
        assert_eq!(blocks.get(0x2000), Some(&None), "left unreadable");
        for i in 0..MAX_BLOCKS as u64 {
            blocks.insert(0x10_0000 + i * BLOCK, None);
        }
        assert_eq!(blocks.get(0x1000), None, "started over");
        assert_eq!(blocks.readable_starts().len(), 0, "the blocks inserted since");
    }
}
