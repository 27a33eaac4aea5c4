//! The frame and stack dictionaries. They live on disk only: ingest looks keys up in the
//! write transaction, behind small bounded caches of recently used keys, and queries read just
//! the stacks and frames they found. So memory does not grow with the number of distinct
//! frames ever seen (it did: 150–300 MB per batch of 300k new frames).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use ember_profile::Frame;
use redb::{ReadTransaction, ReadableTable, Table, WriteTransaction};

use super::file::{storage_error, FRAMES, FRAME_IDS, STACKS, STACK_IDS};
use super::seal::{seal, unseal, Health};
use crate::store::budget;
use crate::store::{codec, StackCounts, StoreError};

/// Keys per cache. A full cache is emptied rather than tracked for recency: cheap, bounded
/// (a few MB each), and the keys an agent sends in every batch are back after one batch.
const CACHE_ENTRIES: usize = 65_536;

#[derive(Debug)]
struct Bounded(HashMap<Vec<u8>, u32>);

impl Bounded {
    fn insert(&mut self, key: Vec<u8>, id: u32) {
        if self.0.len() >= CACHE_ENTRIES {
            self.0.clear();
        }
        self.0.insert(key, id);
    }
}

/// Committed dictionary keys recently used, and the next free ids.
#[derive(Debug)]
pub struct Dictionary {
    frames: Mutex<Bounded>,
    stacks: Mutex<Bounded>,
    next: Mutex<(u32, u32)>,
}

#[derive(Clone, Copy)]
enum Kind {
    Frame,
    Stack,
}

impl Dictionary {
    /// Continues after the last ids in the file.
    pub fn load(txn: &ReadTransaction) -> Result<Self, StoreError> {
        let next_of = |table: redb::TableDefinition<u32, &[u8]>| -> Result<u32, StoreError> {
            match txn.open_table(table) {
                Ok(t) => Ok(t.last().map_err(storage_error)?.map_or(0, |(k, _)| k.value().saturating_add(1u32))),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
                Err(e) => Err(storage_error(e)),
            }
        };
        Ok(Self {
            frames: Mutex::new(Bounded(HashMap::new())),
            stacks: Mutex::new(Bounded(HashMap::new())),
            next: Mutex::new((next_of(FRAMES)?, next_of(STACKS)?)),
        })
    }

    fn cache(&self, kind: Kind) -> std::sync::MutexGuard<'_, Bounded> {
        match kind {
            Kind::Frame => self.frames.lock(),
            Kind::Stack => self.stacks.lock(),
        }
        .unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts interning for one write transaction.
    pub fn interner<'t>(&'t self, txn: &'t WriteTransaction, health: &'t Health) -> Result<Interner<'t>, StoreError> {
        let (next_frame, next_stack) = *self.next.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(Interner {
            dict: self,
            health,
            frame_ids: txn.open_table(FRAME_IDS).map_err(storage_error)?,
            frames: txn.open_table(FRAMES).map_err(storage_error)?,
            stack_ids: txn.open_table(STACK_IDS).map_err(storage_error)?,
            stacks: txn.open_table(STACKS).map_err(storage_error)?,
            next_frame,
            next_stack,
            new: Vec::new(),
            new_index: [HashMap::new(), HashMap::new()],
        })
    }

    /// Makes what a committed transaction added visible.
    pub fn committed(&self, added: Added) {
        *self.next.lock().unwrap_or_else(PoisonError::into_inner) = (added.next_frame, added.next_stack);
        for (kind, key, id) in added.keys {
            self.cache(kind).insert(key, id);
        }
    }
}

/// Keys one transaction used or added, for the caches once it commits.
pub struct Added {
    next_frame: u32,
    next_stack: u32,
    keys: Vec<(Kind, Vec<u8>, u32)>,
}

pub struct Interner<'t> {
    dict: &'t Dictionary,
    health: &'t Health,
    frame_ids: Table<'t, &'static [u8], &'static [u8]>,
    frames: Table<'t, u32, &'static [u8]>,
    stack_ids: Table<'t, &'static [u8], &'static [u8]>,
    stacks: Table<'t, u32, &'static [u8]>,
    next_frame: u32,
    next_stack: u32,
    new: Vec<(Kind, Vec<u8>, u32)>,
    /// Keys added in this transaction (not in the caches until it commits), by kind.
    new_index: [HashMap<Vec<u8>, u32>; 2],
}

impl Interner<'_> {
    pub fn frame(&mut self, frame: &Frame) -> Result<u32, StoreError> {
        self.intern(Kind::Frame, codec::encode_frame(frame))
    }

    /// `ids` are dictionary frame ids, root first.
    pub fn stack(&mut self, ids: &[u32]) -> Result<u32, StoreError> {
        self.intern(Kind::Stack, codec::encode_ids(ids))
    }

    fn intern(&mut self, kind: Kind, key: Vec<u8>) -> Result<u32, StoreError> {
        let tag = kind as usize;
        if let Some(&id) = self.new_index[tag].get(key.as_slice()) {
            return Ok(id);
        }
        if let Some(&id) = self.dict.cache(kind).0.get(&key) {
            return Ok(id);
        }
        let (ids, table) = match kind {
            Kind::Frame => (&self.frame_ids, "frame_ids"),
            Kind::Stack => (&self.stack_ids, "stack_ids"),
        };
        let stored = ids
            .get(key.as_slice())
            .map_err(storage_error)?
            .map(|v| unseal(&key, v.value()).and_then(|b| Some(u32::from_le_bytes(b.try_into().ok()?))));
        match stored {
            Some(Some(id)) => {
                self.new.push((kind, key, id));
                return Ok(id);
            }
            // A damaged index entry is replaced by a fresh id below; the old id's data stays.
            Some(None) => self.health.corrupt(table, &key),
            None => {}
        }
        let id = match kind {
            Kind::Frame => {
                let id = self.next_frame;
                self.next_frame = id.checked_add(1).ok_or(StoreError::Internal("frame ids exhausted".into()))?;
                self.frames.insert(id, seal(&id.to_le_bytes(), &key).as_slice()).map_err(storage_error)?;
                self.frame_ids
                    .insert(key.as_slice(), seal(&key, &id.to_le_bytes()).as_slice())
                    .map_err(storage_error)?;
                id
            }
            Kind::Stack => {
                let id = self.next_stack;
                self.next_stack = id.checked_add(1).ok_or(StoreError::Internal("stack ids exhausted".into()))?;
                self.stacks.insert(id, seal(&id.to_le_bytes(), &key).as_slice()).map_err(storage_error)?;
                self.stack_ids
                    .insert(key.as_slice(), seal(&key, &id.to_le_bytes()).as_slice())
                    .map_err(storage_error)?;
                id
            }
        };
        self.new_index[tag].insert(key.clone(), id);
        self.new.push((kind, key, id));
        Ok(id)
    }

    /// Ends interning (the tables are released so the transaction can commit).
    pub fn finish(self) -> Added {
        Added { next_frame: self.next_frame, next_stack: self.next_stack, keys: self.new }
    }
}

/// Stack counts keyed by stack id, expanded with only the frames they use, renumbered densely.
/// A stack or frame that fails its checksum is left out, with its samples.
pub fn expand(
    txn: &ReadTransaction,
    health: &Health,
    counts: impl Iterator<Item = (u32, u64)>,
) -> Result<StackCounts, StoreError> {
    let open = |def| match txn.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(storage_error(e)),
    };
    let (Some(stacks), Some(frame_table)) = (open(STACKS)?, open(FRAMES)?) else {
        return Ok(StackCounts::default());
    };
    let mut frames = Vec::new();
    // dictionary id → local id, or None when the frame is damaged
    let mut local: HashMap<u32, Option<u32>> = HashMap::new();
    let mut out = Vec::new();
    'stacks: for (id, count) in counts {
        if count == 0 {
            continue;
        }
        let Some(guard) = stacks.get(id).map_err(storage_error)? else { continue };
        let Some(ids) = unseal(&id.to_le_bytes(), guard.value()).and_then(|b| codec::decode_ids(b).ok()) else {
            health.corrupt("stacks", id);
            continue;
        };
        budget::charge(ids.len() * 4 + 64)?;
        let mut mapped = Vec::with_capacity(ids.len());
        for g in ids {
            let l = match local.get(&g) {
                Some(&l) => l,
                None => {
                    let frame = frame_table
                        .get(g)
                        .map_err(storage_error)?
                        .and_then(|v| unseal(&g.to_le_bytes(), v.value()).and_then(|b| codec::decode_frame(b).ok()));
                    let l = match frame {
                        Some(f) => {
                            budget::charge(f.text.len() + f.function.len() + f.file.len() + 96)?;
                            frames.push(f);
                            Some((frames.len() - 1) as u32)
                        }
                        None => {
                            health.corrupt("frames", g);
                            None
                        }
                    };
                    local.insert(g, l);
                    l
                }
            };
            let Some(l) = l else { continue 'stacks };
            mapped.push(l);
        }
        out.push((Arc::from(mapped), count));
    }
    Ok(StackCounts { frames: Arc::new(frames), stacks: out })
}
