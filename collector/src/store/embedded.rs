//! The embedded backend: one redb file under `--data-dir`, crash-safe (copy-on-write B-trees,
//! fsync on commit), with the dictionaries mirrored in memory. Schema: `docs/STORAGE.md`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use ember_profile::Frame;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::codec::{self, RawSample};
use super::tasks::{self, SeriesTasks, TaskSlice};
use super::{bucket_of, IngestOutcome, Labels, NewBatch, RetentionReport, SeriesInfo, StackCounts, Store, StoreError};
use crate::query::{Selector, TimeRange};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const FRAME_IDS: TableDefinition<&[u8], u32> = TableDefinition::new("frame_ids");
const FRAMES: TableDefinition<u32, &[u8]> = TableDefinition::new("frames");
const STACK_IDS: TableDefinition<&[u8], u32> = TableDefinition::new("stack_ids");
const STACKS: TableDefinition<u32, &[u8]> = TableDefinition::new("stacks");
const SERIES_IDS: TableDefinition<&[u8], u32> = TableDefinition::new("series_ids");
const SERIES: TableDefinition<u32, &[u8]> = TableDefinition::new("series");
/// (series, bucket start ms, blob id) → aggregated stack counts.
const AGG: TableDefinition<(u32, i64, u64), &[u8]> = TableDefinition::new("agg");
/// (series, bucket start ms, blob id) → raw samples with exact times.
const RAW: TableDefinition<(u32, i64, u64), &[u8]> = TableDefinition::new("raw");
/// (agent id, sequence) → when it was stored: how repeats are recognised.
const BATCHES: TableDefinition<(&str, u64), i64> = TableDefinition::new("batches");
/// (series, bucket the task finished in or [`PENDING`], task id) → task record. Keyed by end,
/// so a query reads only tasks that finished in or after its range, and retention drops
/// finished tasks by range.
const TASKS: TableDefinition<(u32, i64, u64), &[u8]> = TableDefinition::new("tasks");
const PENDING: i64 = i64::MAX;
/// How far before a range the slices that run into it are looked for: one step of an asyncio
/// task longer than this (a minute of blocking the loop) is missed by queries starting later.
const SLICE_LOOKBACK_MS: i64 = 60_000;
/// (series, bucket start ms, blob id) → run slices starting in that bucket.
const SLICES: TableDefinition<(u32, i64, u64), &[u8]> = TableDefinition::new("slices");

const FILE_NAME: &str = "ember.redb";

/// Below this, free space in the file is not worth a compaction.
const COMPACT_MIN_BYTES: u64 = 64 << 20;

fn storage_error(e: impl Into<redb::Error>) -> StoreError {
    let e: redb::Error = e.into();
    if let redb::Error::Io(io) = &e {
        if io.raw_os_error() == Some(libc_enospc()) {
            return StoreError::DiskFull(io.to_string());
        }
    }
    let text = e.to_string();
    if text.contains("No space left") {
        return StoreError::DiskFull(text);
    }
    StoreError::Storage(text)
}

const fn libc_enospc() -> i32 {
    28
}

#[derive(Debug, Default)]
struct Dictionaries {
    frames: Vec<Frame>,
    frame_ids: HashMap<Vec<u8>, u32>,
    stacks: Vec<Arc<[u32]>>,
    stack_ids: HashMap<Arc<[u32]>, u32>,
    series: BTreeMap<u32, SeriesInfo>,
    series_ids: HashMap<Labels, u32>,
    next_series: u32,
    next_blob: u64,
}

/// What one ingest adds to the dictionaries; applied to memory only after the commit.
#[derive(Default)]
struct Pending {
    frames: Vec<(Vec<u8>, Frame)>,
    frame_ids: HashMap<Vec<u8>, u32>,
    stacks: Vec<Arc<[u32]>>,
    stack_ids: HashMap<Arc<[u32]>, u32>,
    series: BTreeMap<u32, SeriesInfo>,
    /// Series first seen in this batch, so each process's lookup is O(1), not a scan.
    series_ids: HashMap<Labels, u32>,
    next_blob: u64,
}

#[derive(Debug)]
pub struct EmbeddedStore {
    path: PathBuf,
    /// `None` only while the database is being reopened after an I/O failure.
    db: RwLock<Option<Database>>,
    dict: RwLock<Dictionaries>,
    writer: Mutex<()>,
    max_disk: Option<u64>,
}

fn encode_series(info: &SeriesInfo) -> Vec<u8> {
    let mut out = Vec::new();
    codec::put_varint(&mut out, info.first_seen_ms as u64);
    codec::put_varint(&mut out, info.last_seen_ms as u64);
    codec::put_varint(&mut out, info.samples);
    out.extend(codec::encode_labels(&info.labels));
    out
}

fn decode_series(id: u32, bytes: &[u8]) -> Result<SeriesInfo, StoreError> {
    let mut at = 0;
    let first_seen_ms = codec::get_varint(bytes, &mut at)? as i64;
    let last_seen_ms = codec::get_varint(bytes, &mut at)? as i64;
    let samples = codec::get_varint(bytes, &mut at)?;
    let labels = codec::decode_labels(&bytes[at..])?;
    Ok(SeriesInfo { id, labels, first_seen_ms, last_seen_ms, samples })
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path, max_disk: Option<u64>) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Storage(format!("cannot create the data directory {}: {e}", dir.display())))?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(storage_error)?;
        let dict = load_dictionaries(&db)?;
        Ok(Self { path, db: RwLock::new(Some(db)), dict: RwLock::new(dict), writer: Mutex::new(()), max_disk })
    }

    fn with_db<T>(&self, f: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let guard = self.db.read().map_err(|_| StoreError::Storage("database lock poisoned".into()))?;
        let db = guard.as_ref().ok_or_else(|| StoreError::Storage("the database is being reopened".into()))?;
        f(db)
    }

    /// After an I/O error redb refuses further writes; reopening recovers from the last
    /// committed state, so freeing disk space is enough to resume.
    fn reopen(&self) {
        let Ok(mut guard) = self.db.write() else { return };
        *guard = None;
        match Database::create(&self.path) {
            Ok(db) => *guard = Some(db),
            Err(e) => tracing::error!("reopening the store failed: {e}"),
        }
    }

    /// Copy-on-write leaves freed pages in the file; when they are a large share of it, give
    /// them back. Queries and ingest wait meanwhile, so this only runs with retention.
    fn compact_if_fragmented(&self) {
        let fragmented = self.with_db(|db| {
            let txn = db.begin_write().map_err(storage_error)?;
            let stats = txn.stats().map_err(storage_error)?;
            let free = stats.fragmented_bytes();
            txn.abort().map_err(storage_error)?;
            Ok(free)
        });
        let Ok(free) = fragmented else { return };
        let size = self.disk_bytes();
        if size < COMPACT_MIN_BYTES || free * 4 < size {
            return;
        }
        let Ok(mut guard) = self.db.write() else { return };
        if let Some(db) = guard.as_mut() {
            let started = std::time::Instant::now();
            match db.compact() {
                Ok(_) => {
                    tracing::info!(before = size, after = self.disk_bytes(), elapsed = ?started.elapsed(), "compacted the store")
                }
                Err(e) => tracing::warn!("compacting the store failed: {e}"),
            }
        }
    }

    fn dict(&self) -> Result<std::sync::RwLockReadGuard<'_, Dictionaries>, StoreError> {
        self.dict.read().map_err(|_| StoreError::Storage("dictionary lock poisoned".into()))
    }

    fn matching_series(&self, selector: &Selector, range: TimeRange) -> Result<Vec<SeriesInfo>, StoreError> {
        Ok(self
            .dict()?
            .series
            .values()
            .filter(|s| s.last_seen_ms >= range.from_ms && s.first_seen_ms < range.to_ms && selector.matches(&s.labels))
            .cloned()
            .collect())
    }

    fn ingest_inner(&self, batch: &NewBatch) -> Result<IngestOutcome, StoreError> {
        let now = crate::query::now_ms();
        self.with_db(|db| {
            let txn = db.begin_write().map_err(storage_error)?;
            {
                let mut batches = txn.open_table(BATCHES).map_err(storage_error)?;
                if batches.get((batch.agent_id.as_str(), batch.sequence)).map_err(storage_error)?.is_some() {
                    return Ok(None);
                }
                batches.insert((batch.agent_id.as_str(), batch.sequence), now).map_err(storage_error)?;
            }
            let dict = self.dict()?;
            let mut pending = Pending { next_blob: dict.next_blob, ..Pending::default() };
            let mut samples = 0u64;
            {
                let mut frame_ids = txn.open_table(FRAME_IDS).map_err(storage_error)?;
                let mut frames = txn.open_table(FRAMES).map_err(storage_error)?;
                let mut stack_ids = txn.open_table(STACK_IDS).map_err(storage_error)?;
                let mut stacks = txn.open_table(STACKS).map_err(storage_error)?;
                let mut series_ids = txn.open_table(SERIES_IDS).map_err(storage_error)?;
                let mut series_table = txn.open_table(SERIES).map_err(storage_error)?;
                let mut agg = txn.open_table(AGG).map_err(storage_error)?;
                let mut raw = txn.open_table(RAW).map_err(storage_error)?;

                let mut global_frames = Vec::with_capacity(batch.frames.len());
                for frame in &batch.frames {
                    let key = codec::encode_frame(frame);
                    let id = match dict.frame_ids.get(&key).or_else(|| pending.frame_ids.get(&key)) {
                        Some(&id) => id,
                        None => {
                            let id = (dict.frames.len() + pending.frames.len()) as u32;
                            frames.insert(id, key.as_slice()).map_err(storage_error)?;
                            frame_ids.insert(key.as_slice(), id).map_err(storage_error)?;
                            pending.frame_ids.insert(key.clone(), id);
                            pending.frames.push((key, frame.clone()));
                            id
                        }
                    };
                    global_frames.push(id);
                }
                let mut global_stacks = Vec::with_capacity(batch.stacks.len());
                for stack in &batch.stacks {
                    let ids: Arc<[u32]> = stack.iter().map(|&f| global_frames[f as usize]).collect();
                    let id = match dict.stack_ids.get(&ids).or_else(|| pending.stack_ids.get(&ids)) {
                        Some(&id) => id,
                        None => {
                            let id = (dict.stacks.len() + pending.stacks.len()) as u32;
                            let bytes = codec::encode_ids(&ids);
                            stacks.insert(id, bytes.as_slice()).map_err(storage_error)?;
                            stack_ids.insert(bytes.as_slice(), id).map_err(storage_error)?;
                            pending.stack_ids.insert(ids.clone(), id);
                            pending.stacks.push(ids);
                            id
                        }
                    };
                    global_stacks.push(id);
                }
                let mut next_series = dict.next_series;
                let mut task_table = txn.open_table(TASKS).map_err(storage_error)?;
                let mut slice_table = txn.open_table(SLICES).map_err(storage_error)?;
                for series in &batch.series {
                    if series.samples.is_empty() && series.tasks.is_empty() {
                        continue;
                    }
                    let known =
                        dict.series_ids.get(&series.labels).or_else(|| pending.series_ids.get(&series.labels)).copied();
                    let sid = match known {
                        Some(sid) => sid,
                        None => {
                            let sid = next_series;
                            next_series += 1;
                            pending.series_ids.insert(series.labels.clone(), sid);
                            series_ids
                                .insert(codec::encode_labels(&series.labels).as_slice(), sid)
                                .map_err(storage_error)?;
                            sid
                        }
                    };
                    let mut info =
                        pending.series.get(&sid).or_else(|| dict.series.get(&sid)).cloned().unwrap_or(SeriesInfo {
                            id: sid,
                            labels: series.labels.clone(),
                            first_seen_ms: i64::MAX,
                            last_seen_ms: i64::MIN,
                            samples: 0,
                        });
                    let mut buckets: BTreeMap<i64, (HashMap<u32, u64>, Vec<RawSample>)> = BTreeMap::new();
                    for s in &series.samples {
                        let ms = s.time_unix_ns.div_euclid(1_000_000);
                        let stack = global_stacks[s.stack as usize];
                        let entry = buckets.entry(bucket_of(ms)).or_default();
                        *entry.0.entry(stack).or_default() += u64::from(s.weight);
                        entry.1.push(RawSample { time_ns: s.time_unix_ns, tid: s.tid, stack, weight: s.weight });
                        info.first_seen_ms = info.first_seen_ms.min(ms);
                        info.last_seen_ms = info.last_seen_ms.max(ms);
                        info.samples += u64::from(s.weight);
                        samples += u64::from(s.weight);
                    }
                    if let Some((first, last)) = series.tasks.time_span() {
                        info.first_seen_ms = info.first_seen_ms.min(first.div_euclid(1_000_000));
                        info.last_seen_ms = info.last_seen_ms.max(last.div_euclid(1_000_000));
                    }
                    for task in &series.tasks.tasks {
                        let ended = match task.done_ns {
                            Some(done) => {
                                task_table.remove((sid, PENDING, task.id)).map_err(storage_error)?;
                                bucket_of(done.div_euclid(1_000_000))
                            }
                            None => PENDING,
                        };
                        task_table
                            .insert((sid, ended, task.id), tasks::encode_task(task).as_slice())
                            .map_err(storage_error)?;
                    }
                    let mut slice_buckets: BTreeMap<i64, Vec<TaskSlice>> = BTreeMap::new();
                    for slice in &series.tasks.slices {
                        slice_buckets.entry(bucket_of(slice.start_ns.div_euclid(1_000_000))).or_default().push(*slice);
                    }
                    for (bucket, slices) in slice_buckets {
                        let blob = pending.next_blob;
                        pending.next_blob += 1;
                        slice_table
                            .insert((sid, bucket, blob), tasks::encode_slices(&slices).as_slice())
                            .map_err(storage_error)?;
                    }
                    for (bucket, (counts, mut raws)) in buckets {
                        let blob = pending.next_blob;
                        pending.next_blob += 1;
                        let mut pairs: Vec<(u32, u64)> = counts.into_iter().collect();
                        agg.insert((sid, bucket, blob), codec::encode_counts(&mut pairs).as_slice())
                            .map_err(storage_error)?;
                        raws.sort_by_key(|r| r.time_ns);
                        raw.insert((sid, bucket, blob), codec::encode_raw(&raws).as_slice()).map_err(storage_error)?;
                    }
                    series_table.insert(sid, encode_series(&info).as_slice()).map_err(storage_error)?;
                    pending.series.insert(sid, info);
                }
                let mut meta = txn.open_table(META).map_err(storage_error)?;
                meta.insert("next_blob", pending.next_blob).map_err(storage_error)?;
                meta.insert("next_series", u64::from(next_series)).map_err(storage_error)?;
            }
            drop(dict);
            txn.commit().map_err(storage_error)?;
            Ok(Some((pending, samples)))
        })
        .map(|committed| match committed {
            None => IngestOutcome::Duplicate,
            Some((pending, samples)) => {
                self.apply(pending);
                IngestOutcome::Stored { samples }
            }
        })
    }

    fn apply(&self, pending: Pending) {
        let Ok(mut dict) = self.dict.write() else { return };
        for (key, frame) in pending.frames {
            let id = dict.frames.len() as u32;
            dict.frames.push(frame);
            dict.frame_ids.insert(key, id);
        }
        for ids in pending.stacks {
            let id = dict.stacks.len() as u32;
            dict.stacks.push(ids.clone());
            dict.stack_ids.insert(ids, id);
        }
        for (sid, info) in pending.series {
            dict.series_ids.insert(info.labels.clone(), sid);
            dict.next_series = dict.next_series.max(sid + 1);
            dict.series.insert(sid, info);
        }
        dict.next_blob = pending.next_blob;
    }
}

/// Stack counts keyed by stack id, with only the frames they use, renumbered densely.
fn expand(dict: &Dictionaries, counts: impl Iterator<Item = (u32, u64)>) -> StackCounts {
    let mut frames = Vec::new();
    let mut local: HashMap<u32, u32> = HashMap::new();
    let mut stacks = Vec::new();
    for (id, count) in counts {
        if count == 0 {
            continue;
        }
        let Some(global) = dict.stacks.get(id as usize) else { continue };
        let ids: Arc<[u32]> = global
            .iter()
            .map(|&g| {
                *local.entry(g).or_insert_with(|| {
                    frames.push(dict.frames.get(g as usize).cloned().unwrap_or_else(|| Frame::marker("[unknown]")));
                    (frames.len() - 1) as u32
                })
            })
            .collect();
        stacks.push((ids, count));
    }
    StackCounts { frames: Arc::new(frames), stacks }
}

/// A table for reading, or `None` if nothing was ever written to it.
fn read_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, StoreError> {
    match txn.open_table(table) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(storage_error(e)),
    }
}

fn load_dictionaries(db: &Database) -> Result<Dictionaries, StoreError> {
    let mut dict = Dictionaries::default();
    let txn = db.begin_read().map_err(storage_error)?;
    macro_rules! open_or_empty {
        ($table:expr) => {
            match txn.open_table($table) {
                Ok(t) => Some(t),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(storage_error(e)),
            }
        };
    }
    if let Some(frames) = open_or_empty!(FRAMES) {
        for item in frames.iter().map_err(storage_error)? {
            let (id, bytes) = item.map_err(storage_error)?;
            if id.value() as usize != dict.frames.len() {
                return Err(StoreError::Storage("frame ids are not dense".into()));
            }
            dict.frame_ids.insert(bytes.value().to_vec(), id.value());
            dict.frames.push(codec::decode_frame(bytes.value())?);
        }
    }
    if let Some(stacks) = open_or_empty!(STACKS) {
        for item in stacks.iter().map_err(storage_error)? {
            let (id, bytes) = item.map_err(storage_error)?;
            if id.value() as usize != dict.stacks.len() {
                return Err(StoreError::Storage("stack ids are not dense".into()));
            }
            let ids: Arc<[u32]> = codec::decode_ids(bytes.value())?.into();
            dict.stack_ids.insert(ids.clone(), id.value());
            dict.stacks.push(ids);
        }
    }
    if let Some(series) = open_or_empty!(SERIES) {
        for item in series.iter().map_err(storage_error)? {
            let (id, bytes) = item.map_err(storage_error)?;
            let info = decode_series(id.value(), bytes.value())?;
            dict.series_ids.insert(info.labels.clone(), info.id);
            dict.series.insert(info.id, info);
        }
    }
    if let Some(meta) = open_or_empty!(META) {
        dict.next_blob = meta.get("next_blob").map_err(storage_error)?.map_or(0, |v| v.value());
        dict.next_series = meta.get("next_series").map_err(storage_error)?.map_or(0, |v| v.value() as u32);
    }
    Ok(dict)
}

impl Store for EmbeddedStore {
    fn ingest(&self, batch: &NewBatch) -> Result<IngestOutcome, StoreError> {
        let _writer = self.writer.lock().map_err(|_| StoreError::Storage("writer lock poisoned".into()))?;
        if let Some(max) = self.max_disk {
            let used = self.disk_bytes();
            if used > max {
                return Err(StoreError::Full { used, max });
            }
        }
        let result = self.ingest_inner(batch);
        if let Err(e) = &result {
            if !matches!(e, StoreError::Corrupt(_)) {
                // The commit failed: memory was not touched; start the next write from the
                // last committed state.
                self.reopen();
            }
        }
        result
    }

    fn series(&self, selector: &Selector, range: TimeRange) -> Result<Vec<SeriesInfo>, StoreError> {
        self.matching_series(selector, range)
    }

    fn stack_counts(&self, selector: &Selector, range: TimeRange) -> Result<StackCounts, StoreError> {
        let series = self.matching_series(selector, range)?;
        let stack_count = self.dict()?.stacks.len();
        let mut counts = vec![0u64; stack_count];
        self.with_db(|db| {
            let txn = db.begin_read().map_err(storage_error)?;
            let Some(agg) = read_table(&txn, AGG)? else { return Ok(()) };
            let (first, last) = (bucket_of(range.from_ms), bucket_of(range.to_ms - 1));
            for s in &series {
                for item in agg.range((s.id, first, 0)..=(s.id, last, u64::MAX)).map_err(storage_error)? {
                    let (_, blob) = item.map_err(storage_error)?;
                    codec::for_each_count(blob.value(), |id, c| {
                        if let Some(slot) = counts.get_mut(id as usize) {
                            *slot += c;
                        }
                    })?;
                }
            }
            Ok(())
        })?;
        let dict = self.dict()?;
        Ok(expand(&dict, counts.iter().enumerate().map(|(id, &count)| (id as u32, count))))
    }

    fn timeseries(&self, selector: &Selector, range: TimeRange, step_ms: i64) -> Result<Vec<(i64, u64)>, StoreError> {
        let series = self.matching_series(selector, range)?;
        let mut steps = super::Steps::new(range, step_ms);
        let start = steps.start();
        self.with_db(|db| {
            let txn = db.begin_read().map_err(storage_error)?;
            let Some(agg) = read_table(&txn, AGG)? else { return Ok(()) };
            for s in &series {
                let range_keys = (s.id, start, 0)..=(s.id, bucket_of(range.to_ms - 1), u64::MAX);
                for item in agg.range(range_keys).map_err(storage_error)? {
                    let (key, blob) = item.map_err(storage_error)?;
                    let mut sum = 0;
                    codec::for_each_count(blob.value(), |_, c| sum += c)?;
                    steps.add(key.value().1, sum);
                }
            }
            Ok(())
        })?;
        Ok(steps.points())
    }

    fn raw_samples(&self, selector: &Selector, range: TimeRange) -> Result<Vec<(u32, RawSample)>, StoreError> {
        let series = self.matching_series(selector, range)?;
        let mut out = Vec::new();
        self.with_db(|db| {
            let txn = db.begin_read().map_err(storage_error)?;
            let Some(raw) = read_table(&txn, RAW)? else { return Ok(()) };
            let (from_ns, to_ns) = (range.from_ms * 1_000_000, range.to_ms * 1_000_000);
            for s in &series {
                let keys = (s.id, bucket_of(range.from_ms), 0)..=(s.id, bucket_of(range.to_ms - 1), u64::MAX);
                for item in raw.range(keys).map_err(storage_error)? {
                    let (_, blob) = item.map_err(storage_error)?;
                    for sample in codec::decode_raw(blob.value())? {
                        if sample.time_ns >= from_ns && sample.time_ns < to_ns {
                            out.push((s.id, sample));
                        }
                    }
                }
            }
            Ok(())
        })?;
        out.sort_by_key(|(_, s)| s.time_ns);
        Ok(out)
    }

    fn tasks(&self, selector: &Selector, range: TimeRange) -> Result<Vec<SeriesTasks>, StoreError> {
        // A process whose tasks all wait sends nothing, so its series may look unseen in a
        // range where its tasks are alive: only the start of the series bounds the search.
        let series = self.matching_series(selector, TimeRange { from_ms: i64::MIN, to_ms: range.to_ms })?;
        let (from_ns, to_ns) = (range.from_ms.saturating_mul(1_000_000), range.to_ms.saturating_mul(1_000_000));
        let mut out = Vec::new();
        self.with_db(|db| {
            let txn = db.begin_read().map_err(storage_error)?;
            let (Some(task_table), Some(slice_table)) = (read_table(&txn, TASKS)?, read_table(&txn, SLICES)?) else {
                return Ok(());
            };
            for s in &series {
                let mut found = SeriesTasks { series: s.id, labels: s.labels.clone(), ..SeriesTasks::default() };
                // Slices are filed under the bucket they start in; looking a minute back catches
                // those that started before the range and run into it.
                let first = bucket_of(range.from_ms).saturating_sub(SLICE_LOOKBACK_MS);
                let keys = (s.id, first, 0)..=(s.id, bucket_of(range.to_ms - 1), u64::MAX);
                for item in slice_table.range(keys).map_err(storage_error)? {
                    let (_, blob) = item.map_err(storage_error)?;
                    let slices = tasks::decode_slices(blob.value())?;
                    found.slices.extend(slices.into_iter().filter(|sl| sl.end_ns >= from_ns && sl.start_ns < to_ns));
                }
                found.slices.sort_by_key(|sl| sl.start_ns);
                // Tasks with slices in range, and when each first ran (slices are in start order).
                let mut ran: BTreeMap<u64, i64> = BTreeMap::new();
                for sl in &found.slices {
                    ran.entry(sl.task).or_insert(sl.start_ns);
                }
                let keys = (s.id, bucket_of(range.from_ms), 0)..=(s.id, PENDING, u64::MAX);
                for item in task_table.range(keys).map_err(storage_error)? {
                    let (key, bytes) = item.map_err(storage_error)?;
                    let task = tasks::decode_task(key.value().2, bytes.value())?;
                    let alive = task.created_ns < to_ns && task.done_ns.is_none_or(|d| d >= from_ns);
                    if ran.remove(&task.id).is_some() || alive {
                        found.tasks.push(task);
                    }
                }
                // Slices whose task record never arrived (a batch the agent had to drop) still
                // show, under a placeholder, rather than vanish with their samples.
                for (id, first) in ran {
                    found.tasks.push(super::TaskRecord {
                        id,
                        name: format!("(task {id}, record lost)"),
                        coro: String::new(),
                        parent: 0,
                        created_ns: first,
                        done_ns: None,
                        state: super::TaskState::Pending,
                        exception: String::new(),
                    });
                }
                if !found.tasks.is_empty() || !found.slices.is_empty() {
                    out.push(found);
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    fn expand_stacks(&self, counts: &[(u32, u64)]) -> Result<StackCounts, StoreError> {
        let dict = self.dict()?;
        Ok(expand(&dict, counts.iter().copied()))
    }

    fn apply_retention(&self, keep_before_ms: i64, raw_keep_before_ms: i64) -> Result<RetentionReport, StoreError> {
        let _writer = self.writer.lock().map_err(|_| StoreError::Storage("writer lock poisoned".into()))?;
        let series: Vec<SeriesInfo> = self.dict()?.series.values().cloned().collect();
        let mut report = RetentionReport::default();
        let cutoff = bucket_of(keep_before_ms);
        let raw_cutoff = bucket_of(raw_keep_before_ms);
        let mut dropped = Vec::new();
        self.with_db(|db| {
            let txn = db.begin_write().map_err(storage_error)?;
            {
                let mut agg = txn.open_table(AGG).map_err(storage_error)?;
                let mut raw = txn.open_table(RAW).map_err(storage_error)?;
                let mut slices = txn.open_table(SLICES).map_err(storage_error)?;
                let mut task_table = txn.open_table(TASKS).map_err(storage_error)?;
                for s in &series {
                    let old_slices = slices
                        .extract_from_if((s.id, i64::MIN, 0)..(s.id, raw_cutoff.max(cutoff), 0), |_, _| true)
                        .map_err(storage_error)?;
                    report.raw_blobs_removed += old_slices.count() as u64;
                    // Finished tasks go with their slices; live ones stay while their series does.
                    let end =
                        if s.last_seen_ms < keep_before_ms { (s.id, PENDING, u64::MAX) } else { (s.id, raw_cutoff, 0) };
                    let old_tasks =
                        task_table.extract_from_if((s.id, i64::MIN, 0)..end, |_, _| true).map_err(storage_error)?;
                    report.tasks_removed += old_tasks.count() as u64;
                    let old = agg
                        .extract_from_if((s.id, i64::MIN, 0)..(s.id, cutoff, 0), |_, _| true)
                        .map_err(storage_error)?;
                    report.blobs_removed += old.count() as u64;
                    let old_raw = raw
                        .extract_from_if((s.id, i64::MIN, 0)..(s.id, raw_cutoff.max(cutoff), 0), |_, _| true)
                        .map_err(storage_error)?;
                    report.raw_blobs_removed += old_raw.count() as u64;
                }
                let mut batches = txn.open_table(BATCHES).map_err(storage_error)?;
                let before = batches.len().map_err(storage_error)?;
                batches.retain(|_, stored_ms| stored_ms >= keep_before_ms).map_err(storage_error)?;
                report.batches_forgotten = before - batches.len().map_err(storage_error)?;
                let mut series_table = txn.open_table(SERIES).map_err(storage_error)?;
                let mut series_ids = txn.open_table(SERIES_IDS).map_err(storage_error)?;
                for s in series.iter().filter(|s| s.last_seen_ms < keep_before_ms) {
                    series_table.remove(s.id).map_err(storage_error)?;
                    series_ids.remove(codec::encode_labels(&s.labels).as_slice()).map_err(storage_error)?;
                    dropped.push(s.clone());
                }
            }
            txn.commit().map_err(storage_error)?;
            Ok(())
        })?;
        report.series_removed = dropped.len() as u64;
        self.compact_if_fragmented();
        if let Ok(mut dict) = self.dict.write() {
            for s in dropped {
                dict.series.remove(&s.id);
                dict.series_ids.remove(&s.labels);
            }
        }
        Ok(report)
    }

    fn disk_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewSample, NewSeries};
    use ember_profile::FrameKind;

    fn frame(name: &str) -> Frame {
        Frame {
            text: format!("{name} (app.py)"),
            function: name.into(),
            file: "app.py".into(),
            kind: FrameKind::Python,
            interpreter_plumbing: false,
        }
    }

    fn labels(service: &str) -> Labels {
        [("service".to_string(), service.to_string()), ("pid".into(), "1".into())].into()
    }

    /// `n` samples 10 ms apart from `start_ms`: stack 0 (main;a) twice as often as 1 (main;b).
    fn batch(agent: &str, seq: u64, service: &str, start_ms: i64, n: usize) -> NewBatch {
        let samples = (0..n)
            .map(|i| NewSample {
                stack: u32::from(i % 3 == 2),
                tid: 7,
                time_unix_ns: (start_ms + 10 * i as i64) * 1_000_000,
                weight: 1,
            })
            .collect();
        NewBatch {
            agent_id: agent.into(),
            sequence: seq,
            frames: vec![frame("main"), frame("a"), frame("b")],
            stacks: vec![vec![0, 1], vec![0, 2]],
            series: vec![NewSeries { labels: labels(service), samples, ..NewSeries::default() }],
        }
    }

    fn all() -> Selector {
        Selector::default()
    }

    const T0: i64 = 1_700_000_000_000;

    #[test]
    fn ingest_then_query() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path(), None).expect("opens");
        assert_eq!(
            store.ingest(&batch("a", 1, "checkout", T0, 300)).expect("stores"),
            IngestOutcome::Stored { samples: 300 }
        );
        let range = TimeRange { from_ms: T0 - 60_000, to_ms: T0 + 60_000 };
        let counts = store.stack_counts(&all(), range).expect("query");
        assert_eq!(counts.total(), 300);
        let by_leaf: HashMap<String, u64> = counts
            .stacks
            .iter()
            .map(|(ids, c)| (counts.frames[*ids.last().expect("leaf") as usize].function.clone(), *c))
            .collect();
        assert_eq!(by_leaf["a"], 200);
        assert_eq!(by_leaf["b"], 100);
        let series = store.series(&Selector::parse(r#"{service="checkout"}"#).expect("sel"), range).expect("series");
        assert_eq!(series.len(), 1);
        assert_eq!(series[0].samples, 300);
        assert!(store
            .stack_counts(&Selector::parse(r#"{service="other"}"#).expect("sel"), range)
            .expect("q")
            .stacks
            .is_empty());
    }

    #[test]
    fn repeats_are_recognised_and_not_counted_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path(), None).expect("opens");
        let b = batch("agent-1", 5, "s", T0, 50);
        assert!(matches!(store.ingest(&b), Ok(IngestOutcome::Stored { .. })));
        assert_eq!(store.ingest(&b).expect("ok"), IngestOutcome::Duplicate);
        // Same sequence from another agent is a different batch.
        assert!(matches!(store.ingest(&batch("agent-2", 5, "s", T0, 50)), Ok(IngestOutcome::Stored { .. })));
        let range = TimeRange { from_ms: T0, to_ms: T0 + 60_000 };
        assert_eq!(store.stack_counts(&all(), range).expect("q").total(), 100);
    }

    #[test]
    fn everything_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = EmbeddedStore::open(dir.path(), None).expect("opens");
            store.ingest(&batch("a", 1, "s", T0, 90)).expect("stores");
            store.ingest(&batch("a", 2, "t", T0 + 20_000, 30)).expect("stores");
        }
        let store = EmbeddedStore::open(dir.path(), None).expect("reopens");
        let range = TimeRange { from_ms: T0, to_ms: T0 + 60_000 };
        assert_eq!(store.stack_counts(&all(), range).expect("q").total(), 120);
        assert_eq!(store.ingest(&batch("a", 2, "t", T0, 30)).expect("ok"), IngestOutcome::Duplicate);
        store.ingest(&batch("a", 3, "t", T0, 30)).expect("stores after reopen");
        assert_eq!(store.series(&all(), range).expect("series").len(), 2);
    }

    #[test]
    fn time_ranges_select_whole_buckets_and_series_counts_per_step() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path(), None).expect("opens");
        // 100 samples in each of three consecutive buckets.
        for i in 0..3 {
            store.ingest(&batch("a", i + 1, "s", T0 + i as i64 * 10_000, 100)).expect("stores");
        }
        let second = TimeRange { from_ms: T0 + 10_000, to_ms: T0 + 20_000 };
        assert_eq!(store.stack_counts(&all(), second).expect("q").total(), 100);
        let points = store.timeseries(&all(), TimeRange { from_ms: T0, to_ms: T0 + 30_000 }, 10_000).expect("ts");
        assert_eq!(points.iter().map(|p| p.1).collect::<Vec<_>>(), vec![100, 100, 100]);
        let raw = store.raw_samples(&all(), TimeRange { from_ms: T0 + 10_000, to_ms: T0 + 10_500 }).expect("raw");
        assert_eq!(raw.len(), 50, "exact times, 10 ms apart");
    }

    #[test]
    fn retention_removes_old_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path(), None).expect("opens");
        store.ingest(&batch("a", 1, "old", T0, 100)).expect("stores");
        store.ingest(&batch("a", 2, "new", T0 + 3_600_000, 100)).expect("stores");
        let report = store.apply_retention(T0 + 1_800_000, T0 + 1_800_000).expect("retention");
        assert_eq!(report.series_removed, 1);
        assert!(report.blobs_removed >= 1);
        let everything = TimeRange { from_ms: 0, to_ms: i64::MAX / 2 };
        assert_eq!(store.stack_counts(&all(), everything).expect("q").total(), 100);
        assert_eq!(store.series(&all(), everything).expect("s").len(), 1);
    }

    fn task(id: u64, done_ms: Option<i64>) -> crate::store::TaskRecord {
        crate::store::TaskRecord {
            id,
            name: format!("worker-{id}"),
            coro: "worker".into(),
            parent: 0,
            created_ns: T0 * 1_000_000,
            done_ns: done_ms.map(|d| d * 1_000_000),
            state: if done_ms.is_some() { crate::store::TaskState::Finished } else { crate::store::TaskState::Pending },
            exception: String::new(),
        }
    }

    fn with_tasks(seq: u64, tasks: Vec<crate::store::TaskRecord>, slices: Vec<(u64, i64)>) -> NewBatch {
        let mut b = batch("a", seq, "s", T0, 0);
        b.series[0].tasks = crate::store::NewTasks {
            tasks,
            slices: slices
                .into_iter()
                .map(|(task, ms)| TaskSlice {
                    task,
                    tid: 7,
                    start_ns: ms * 1_000_000,
                    end_ns: ms * 1_000_000 + 500_000,
                    ready_ns: None,
                })
                .collect(),
            lost_records: 0,
        };
        b
    }

    #[test]
    fn tasks_are_updated_in_place_and_expire_with_raw_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path(), None).expect("opens");
        // A batch with task activity and no samples still makes a series.
        store.ingest(&with_tasks(1, vec![task(1, None), task(2, None)], vec![(1, T0 + 5), (2, T0 + 6)])).expect("ok");
        store.ingest(&with_tasks(2, vec![task(1, Some(T0 + 20))], vec![(1, T0 + 15)])).expect("ok");
        let range = TimeRange { from_ms: T0, to_ms: T0 + 60_000 };
        let found = store.tasks(&all(), range).expect("tasks");
        assert_eq!(found.len(), 1, "one series");
        let first = found[0].tasks.iter().find(|t| t.id == 1).expect("task 1");
        assert_eq!(first.done_ns, Some((T0 + 20) * 1_000_000), "the later record replaced the first");
        assert_eq!(found[0].slices.iter().filter(|s| s.task == 1).count(), 2);
        // A range after task 1 finished shows only the live task 2 (no slices there).
        let later = store.tasks(&all(), TimeRange { from_ms: T0 + 30, to_ms: T0 + 60_000 }).expect("tasks");
        assert_eq!(later[0].tasks.iter().map(|t| t.id).collect::<Vec<_>>(), vec![2]);
        // Raw retention drops finished tasks and slices; live tasks stay with their series.
        // A slice of a task whose record was lost still shows, under a placeholder.
        store.ingest(&with_tasks(3, vec![], vec![(9, T0 + 16)])).expect("ok");
        let found = store.tasks(&all(), range).expect("tasks");
        let orphan = found[0].tasks.iter().find(|t| t.id == 9).expect("placeholder for task 9");
        assert_eq!(orphan.name, "(task 9, record lost)");
        let report = store.apply_retention(T0 - 1, T0 + 20_000).expect("retention");
        assert_eq!(report.tasks_removed, 1);
        let left = store.tasks(&all(), range).expect("tasks");
        assert_eq!(left[0].tasks.iter().map(|t| t.id).collect::<Vec<_>>(), vec![2]);
        assert!(left[0].slices.is_empty());
    }

    #[test]
    fn max_disk_stops_writes_with_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path(), Some(1)).expect("opens");
        let err = store.ingest(&batch("a", 1, "s", T0, 10)).expect_err("full");
        assert!(err.is_full(), "{err}");
        assert!(err.to_string().contains("--max-disk"), "{err}");
    }
}
