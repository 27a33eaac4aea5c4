//! Content ids and the row encoding.
//!
//! Collectors share no counter, so frames, stacks, series and batches are keyed by what they
//! are: the first 16 bytes of the SHA-256 of their canonical bytes. Any collector computes the
//! same id for the same thing, and finding two things with one id takes ~2^64 hashes, so an
//! agent cannot make its frames or batches stand in for another's. The `Store` trait's answers
//! use small numbers for stacks and series; [`LocalIds`] hands them out per collector process.

use std::collections::HashMap;
use std::sync::Mutex;

pub type Id = [u8; 16];

pub fn content_id(domain: &[u8], bytes: &[u8]) -> Id {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    // The domain keeps a frame's bytes from ever naming a stack or a series.
    ctx.update(&(domain.len() as u64).to_le_bytes());
    ctx.update(domain);
    ctx.update(bytes);
    let digest = ctx.finish();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest.as_ref()[..16]);
    id
}

/// An id as a ClickHouse string literal (`'\x..'` escapes), which compares with FixedString(16).
pub fn literal(id: &Id) -> String {
    let mut out = String::with_capacity(66);
    out.push('\'');
    for b in id {
        out.push_str(&format!("\\x{b:02X}"));
    }
    out.push('\'');
    out
}

/// Small numbers for content ids (a query's answers refer to each other by them: raw samples
/// to stacks, tasks to series). Bounded: numbers are handed out in generations of at most
/// [`PER_GENERATION`]; an id of the current generation or the one before keeps its number, and
/// numbers of the generation before those still resolve, so a number stays good while at least
/// [`PER_GENERATION`] others are handed out after it was last given (even one given again from
/// the previous generation). A query that outlives that is told to retry.
#[derive(Debug, Default)]
pub struct LocalIds {
    inner: Mutex<Generations>,
}

/// Ids per generation: with the previous generation kept, the maps hold at most twice this
/// (about 50 bytes each), and the one before that 16 bytes each.
const PER_GENERATION: usize = if cfg!(test) { 4 } else { 1 << 21 };
/// The top bits of a local number name its generation, the rest its index. 2,048 generations
/// (4G ids) go by before a number could name another id: a number that old is long let go.
const INDEX_BITS: u32 = 21;
const GENERATIONS: u32 = 1 << (32 - INDEX_BITS);
const _: () = assert!(PER_GENERATION <= 1 << INDEX_BITS);

#[derive(Debug, Default)]
struct Generations {
    number: u32,
    current: Generation,
    previous: Generation,
    /// Only resolves numbers: a number found in `previous` may be handed out until the
    /// rollover that makes its generation this one.
    older: Vec<Id>,
}

#[derive(Debug, Default)]
struct Generation {
    of: HashMap<Id, u32>,
    ids: Vec<Id>,
}

impl LocalIds {
    pub fn local(&self, id: Id) -> u32 {
        let mut map = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // One id, one number while its generation can be looked up: a query that named it
        // before a new generation began finds the same number after. An id last given two
        // generations ago gets a new number while the old one still resolves; an answer that
        // spans that names one stack twice, which the tree it is merged into folds.
        if let Some(&n) = map.current.of.get(&id).or_else(|| map.previous.of.get(&id)) {
            return n;
        }
        if map.current.ids.len() >= PER_GENERATION {
            let current = std::mem::take(&mut map.current);
            map.older = std::mem::replace(&mut map.previous, current).ids;
            map.number = (map.number + 1) % GENERATIONS;
        }
        let n = (map.number << INDEX_BITS) | map.current.ids.len() as u32;
        map.current.ids.push(id);
        map.current.of.insert(id, n);
        n
    }

    /// The content id of a local number, unless its generation was let go.
    pub fn content(&self, local: u32) -> Option<Id> {
        let map = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (generation, index) = (local >> INDEX_BITS, (local & ((1 << INDEX_BITS) - 1)) as usize);
        if generation == map.number {
            map.current.ids.get(index).copied()
        } else if generation == (map.number + GENERATIONS - 1) % GENERATIONS {
            map.previous.ids.get(index).copied()
        } else if generation == (map.number + GENERATIONS - 2) % GENERATIONS {
            map.older.get(index).copied()
        } else {
            None
        }
    }
}

/// RowBinary: little-endian integers, strings as varint length then bytes, arrays as varint
/// count then elements, FixedString as its bytes, Nullable as a null byte then the value.
#[derive(Debug, Default)]
pub struct Rows(pub Vec<u8>);

impl Rows {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn id(&mut self, id: &Id) -> &mut Self {
        self.0.extend_from_slice(id);
        self
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.varint(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    pub fn strs<'a>(&mut self, items: impl ExactSizeIterator<Item = &'a str>) -> &mut Self {
        self.varint(items.len() as u64);
        for s in items {
            self.str(s);
        }
        self
    }
    pub fn ids<'a>(&mut self, items: impl ExactSizeIterator<Item = &'a Id>) -> &mut Self {
        self.varint(items.len() as u64);
        for id in items {
            self.id(id);
        }
        self
    }
    pub fn nullable_u32(&mut self, v: Option<u32>) -> &mut Self {
        match v {
            Some(v) => self.u8(0).u32(v),
            None => self.u8(1),
        }
    }
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
}

/// The last day ClickHouse 18.16 reads from a `Date` literal (2105-12-31; current servers go
/// on to 2149): days are clamped to it on both sides.
pub const LAST_DAY: i64 = 49_672;

/// Days since 1970-01-01 (ClickHouse's `Date` in RowBinary), of a time in ms.
pub fn day_of_ms(ms: i64) -> u16 {
    u16::try_from(ms.div_euclid(86_400_000).clamp(0, LAST_DAY)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_numbers_live_while_a_generation_of_others_is_handed_out() {
        let ids = LocalIds::default();
        let first: Vec<u32> = (0..4u8).map(|i| ids.local([i; 16])).collect();
        assert_eq!(first, vec![0, 1, 2, 3]);
        assert_eq!(ids.local([2; 16]), 2, "the same id, the same number");
        let second = ids.local([9; 16]);
        assert_eq!(second, 1 << INDEX_BITS, "a new generation");
        assert_eq!((ids.content(first[3]), ids.content(second)), (Some([3; 16]), Some([9; 16])));
        assert_eq!(ids.local([1; 16]), first[1], "an id of the previous generation keeps its number");
        for i in 10..14u8 {
            ids.local([i; 16]);
        }
        assert_eq!(ids.content(first[1]), Some([1; 16]), "a generation's worth of ids after it was given again");
        for i in 14..18u8 {
            ids.local([i; 16]);
        }
        assert_eq!(ids.content(first[0]), None, "three generations later, let go");
        assert_eq!(ids.content(second), Some([9; 16]));
        assert_eq!(ids.content(u32::MAX), None);
    }

    #[test]
    fn ids_depend_on_domain_and_bytes() {
        assert_eq!(content_id(b"frame", b"x"), content_id(b"frame", b"x"));
        assert_ne!(content_id(b"frame", b"x"), content_id(b"stack", b"x"));
        assert_ne!(content_id(b"frame", b"x"), content_id(b"frame", b"y"));
        assert_eq!(literal(&[0xab; 16]).len(), 66);
    }

    #[test]
    fn local_ids_are_stable() {
        let ids = LocalIds::default();
        let (a, b) = ([1u8; 16], [2u8; 16]);
        assert_eq!((ids.local(a), ids.local(b), ids.local(a)), (0, 1, 0));
        assert_eq!(ids.content(1), Some(b));
        assert_eq!(ids.content(7), None);
    }

    #[test]
    fn row_binary_matches_clickhouse() {
        let mut rows = Rows::default();
        rows.str("ab").u32(1).nullable_u32(None).strs(["x"].into_iter());
        assert_eq!(rows.0, [2, b'a', b'b', 1, 0, 0, 0, 1, 1, 1, b'x']);
        assert_eq!(day_of_ms(86_400_000 * 3 + 5), 3);
    }
}
