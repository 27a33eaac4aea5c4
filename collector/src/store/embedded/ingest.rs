//! Writing one batch: dictionaries, series, and one sealed blob per (series, bucket) of each
//! kind, all in one transaction.

use std::collections::{BTreeMap, HashMap};

use redb::{Database, ReadableTable};

use super::dict::Added;
use super::file::{storage_error, AGG, BATCHES, META, PENDING, RAW, SERIES, SLICES, TASKS};
use super::seal::{blob_key, seal, seal_u64};
use super::series::encode_series;
use super::EmbeddedStore;
use crate::store::codec::{self, RawSample};
use crate::store::tasks::{self, TaskSlice};
use crate::store::{bucket_of, Labels, NewBatch, SeriesInfo, StoreError};

/// What a committed batch changes in memory.
pub struct Committed {
    pub added: Added,
    pub series: BTreeMap<u32, SeriesInfo>,
    pub next_series: u32,
    pub next_blob: u64,
    pub samples: u64,
}

fn sealed_blob(key: (u32, i64, u64), value: &[u8]) -> Vec<u8> {
    seal(&blob_key(key), value)
}

/// Stores `batch`, or returns `None` if it is a repeat. One write transaction, so the dedup
/// key, dictionaries, series, blobs and tasks commit together or not at all; that is why
/// its stages share one function body.
pub fn write(store: &EmbeddedStore, db: &Database, batch: &NewBatch) -> Result<Option<Committed>, StoreError> {
    let now = crate::query::now_ms();
    let txn = db.begin_write().map_err(storage_error)?;
    {
        let mut batches = txn.open_table(BATCHES).map_err(storage_error)?;
        if batches.get((batch.agent_id.as_str(), batch.sequence)).map_err(storage_error)?.is_some() {
            return Ok(None);
        }
        batches.insert((batch.agent_id.as_str(), batch.sequence), now).map_err(storage_error)?;
    }
    let index = store.series_index()?;
    let (mut next_series, mut next_blob) = (index.next_series, index.next_blob);
    let mut series_out: BTreeMap<u32, SeriesInfo> = BTreeMap::new();
    let mut new_ids: HashMap<&Labels, u32> = HashMap::new();
    let mut samples = 0u64;
    let added;
    {
        let mut interner = store.dictionary.interner(&txn, &store.health)?;
        let mut global_frames = Vec::with_capacity(batch.frames.len());
        for frame in &batch.frames {
            global_frames.push(interner.frame(frame)?);
        }
        let mut global_stacks = Vec::with_capacity(batch.stacks.len());
        for stack in &batch.stacks {
            let ids: Vec<u32> = stack.iter().map(|&f| global_frames[f as usize]).collect();
            global_stacks.push(interner.stack(&ids)?);
        }
        added = interner.finish();

        let mut series_table = txn.open_table(SERIES).map_err(storage_error)?;
        let mut agg = txn.open_table(AGG).map_err(storage_error)?;
        let mut raw = txn.open_table(RAW).map_err(storage_error)?;
        let mut task_table = txn.open_table(TASKS).map_err(storage_error)?;
        let mut slice_table = txn.open_table(SLICES).map_err(storage_error)?;
        for series in &batch.series {
            if series.samples.is_empty() && series.tasks.is_empty() {
                continue;
            }
            let sid = match index.ids.get(&series.labels).or_else(|| new_ids.get(&series.labels)) {
                Some(&sid) => sid,
                None => {
                    let sid = next_series;
                    next_series = sid.checked_add(1).ok_or(StoreError::Internal("series ids exhausted".into()))?;
                    new_ids.insert(&series.labels, sid);
                    sid
                }
            };
            let mut info = series_out.get(&sid).or_else(|| index.series.get(&sid)).cloned().unwrap_or(SeriesInfo {
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
                let key = (sid, ended, task.id);
                task_table
                    .insert(key, sealed_blob(key, &tasks::encode_task(task)).as_slice())
                    .map_err(storage_error)?;
            }
            let mut slice_buckets: BTreeMap<i64, Vec<TaskSlice>> = BTreeMap::new();
            for slice in &series.tasks.slices {
                slice_buckets.entry(bucket_of(slice.start_ns.div_euclid(1_000_000))).or_default().push(*slice);
            }
            for (bucket, slices) in slice_buckets {
                let key = (sid, bucket, next_blob);
                next_blob += 1;
                slice_table
                    .insert(key, sealed_blob(key, &tasks::encode_slices(&slices)).as_slice())
                    .map_err(storage_error)?;
            }
            for (bucket, (counts, mut raws)) in buckets {
                let key = (sid, bucket, next_blob);
                next_blob += 1;
                let mut pairs: Vec<(u32, u64)> = counts.into_iter().collect();
                agg.insert(key, sealed_blob(key, &codec::encode_counts(&mut pairs)).as_slice())
                    .map_err(storage_error)?;
                raws.sort_by_key(|r| r.time_ns);
                raw.insert(key, sealed_blob(key, &codec::encode_raw(&raws)).as_slice()).map_err(storage_error)?;
            }
            series_table
                .insert(sid, seal(&sid.to_le_bytes(), &encode_series(&info)).as_slice())
                .map_err(storage_error)?;
            series_out.insert(sid, info);
        }
        let mut meta = txn.open_table(META).map_err(storage_error)?;
        meta.insert("next_blob", seal_u64("next_blob", next_blob).as_slice()).map_err(storage_error)?;
        meta.insert("next_series", seal_u64("next_series", u64::from(next_series)).as_slice())
            .map_err(storage_error)?;
    }
    drop(index);
    txn.commit().map_err(storage_error)?;
    Ok(Some(Committed { added, series: series_out, next_series, next_blob, samples }))
}
