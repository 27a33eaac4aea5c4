//! Queries: every blob read is checked, and a damaged one is left out and reported rather than
//! failing the query or, worse, changing its answer silently.

use std::collections::{BTreeMap, HashMap};

use redb::{Database, ReadTransaction, ReadableDatabase, TableDefinition, TableHandle};

use super::dict;
use super::file::{storage_error, AGG, PENDING, RAW, SLICES, TASKS};
use super::seal::{blob_key, unseal, Health};
use crate::query::TimeRange;
use crate::store::budget;
use crate::store::codec::{self, RawSample};
use crate::store::tasks::{self, SeriesTasks};
use crate::store::{bucket_of, SeriesInfo, StackCounts, Steps, StoreError, TaskRecord};

/// How far before a range the slices that run into it are looked for: one step of an asyncio
/// task longer than this (a minute of blocking the loop) is missed by queries starting later.
const SLICE_LOOKBACK_MS: i64 = 60_000;

type BlobTable = TableDefinition<'static, (u32, i64, u64), &'static [u8]>;

fn read_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    table: TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, StoreError> {
    match txn.open_table(table) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(storage_error(e)),
    }
}

/// Calls `f(key, value)` for every intact blob with keys in `from..=to`; damaged ones are
/// reported and skipped, as are those whose contents do not decode.
fn for_each_blob(
    txn: &ReadTransaction,
    health: &Health,
    table: BlobTable,
    from: (u32, i64, u64),
    to: (u32, i64, u64),
    mut f: impl FnMut((u32, i64, u64), &[u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let Some(t) = read_table(txn, table)? else { return Ok(()) };
    for item in t.range(from..=to).map_err(storage_error)? {
        let (key, blob) = item.map_err(storage_error)?;
        let key = key.value();
        let Some(value) = unseal(&blob_key(key), blob.value()) else {
            health.corrupt(table.name(), key);
            continue;
        };
        match f(key, value) {
            Err(StoreError::Corrupt(_)) => health.corrupt(table.name(), key),
            other => other?,
        }
    }
    Ok(())
}

pub fn stack_counts(
    db: &Database,
    health: &Health,
    series: &[SeriesInfo],
    range: TimeRange,
) -> Result<StackCounts, StoreError> {
    let txn = db.begin_read().map_err(storage_error)?;
    let mut counts: HashMap<u32, u64> = HashMap::new();
    let (first, last) = (bucket_of(range.from_ms), bucket_of(range.to_ms - 1));
    for s in series {
        for_each_blob(&txn, health, AGG, (s.id, first, 0), (s.id, last, u64::MAX), |_, blob| {
            // Decode into a scratch list first, so a blob that turns out damaged adds nothing.
            let mut pairs = Vec::new();
            codec::for_each_count(blob, |id, c| pairs.push((id, c)))?;
            for (id, c) in pairs {
                let slot = counts.entry(id).or_insert_with(|| 0);
                if *slot == 0 {
                    budget::charge(48)?;
                }
                *slot += c;
            }
            Ok(())
        })?;
    }
    let mut counts: Vec<(u32, u64)> = counts.into_iter().collect();
    counts.sort_unstable();
    dict::expand(&txn, health, counts.into_iter())
}

pub fn expand(db: &Database, health: &Health, counts: &[(u32, u64)]) -> Result<StackCounts, StoreError> {
    let txn = db.begin_read().map_err(storage_error)?;
    dict::expand(&txn, health, counts.iter().copied())
}

pub fn timeseries(
    db: &Database,
    health: &Health,
    series: &[SeriesInfo],
    range: TimeRange,
    step_ms: i64,
) -> Result<Vec<(i64, u64)>, StoreError> {
    let mut steps = Steps::new(range, step_ms);
    let start = steps.start();
    let txn = db.begin_read().map_err(storage_error)?;
    for s in series {
        for_each_blob(
            &txn,
            health,
            AGG,
            (s.id, start, 0),
            (s.id, bucket_of(range.to_ms - 1), u64::MAX),
            |key, blob| {
                let mut sum = 0u64;
                codec::for_each_count(blob, |_, c| sum = sum.saturating_add(c))?;
                steps.add(key.1, sum);
                Ok(())
            },
        )?;
    }
    Ok(steps.points())
}

pub fn raw_samples(
    db: &Database,
    health: &Health,
    series: &[SeriesInfo],
    range: TimeRange,
) -> Result<Vec<(u32, RawSample)>, StoreError> {
    let mut out = Vec::new();
    let txn = db.begin_read().map_err(storage_error)?;
    let (from_ns, to_ns) = (range.from_ms.saturating_mul(1_000_000), range.to_ms.saturating_mul(1_000_000));
    for s in series {
        let (first, last) = (bucket_of(range.from_ms), bucket_of(range.to_ms - 1));
        for_each_blob(&txn, health, RAW, (s.id, first, 0), (s.id, last, u64::MAX), |_, blob| {
            let samples = codec::decode_raw(blob)?;
            budget::charge(samples.len() * std::mem::size_of::<(u32, RawSample)>())?;
            out.extend(samples.into_iter().filter(|x| x.time_ns >= from_ns && x.time_ns < to_ns).map(|x| (s.id, x)));
            Ok(())
        })?;
    }
    out.sort_by_key(|(_, s)| s.time_ns);
    Ok(out)
}

pub fn tasks(
    db: &Database,
    health: &Health,
    series: &[SeriesInfo],
    range: TimeRange,
) -> Result<Vec<SeriesTasks>, StoreError> {
    let (from_ns, to_ns) = (range.from_ms.saturating_mul(1_000_000), range.to_ms.saturating_mul(1_000_000));
    let mut out = Vec::new();
    let txn = db.begin_read().map_err(storage_error)?;
    for s in series {
        let mut found = SeriesTasks { series: s.id, labels: s.labels.clone(), ..SeriesTasks::default() };
        // Slices are filed under the bucket they start in; looking a minute back catches those
        // that started before the range and run into it.
        let first = bucket_of(range.from_ms).saturating_sub(SLICE_LOOKBACK_MS);
        for_each_blob(
            &txn,
            health,
            SLICES,
            (s.id, first, 0),
            (s.id, bucket_of(range.to_ms - 1), u64::MAX),
            |_, blob| {
                let slices = tasks::decode_slices(blob)?;
                budget::charge(slices.len() * std::mem::size_of::<tasks::TaskSlice>())?;
                found.slices.extend(slices.into_iter().filter(|sl| sl.end_ns >= from_ns && sl.start_ns < to_ns));
                Ok(())
            },
        )?;
        found.slices.sort_by_key(|sl| sl.start_ns);
        // Tasks with slices in range, and when each first ran (slices are in start order).
        let mut ran: BTreeMap<u64, i64> = BTreeMap::new();
        for sl in &found.slices {
            ran.entry(sl.task).or_insert(sl.start_ns);
        }
        for_each_blob(
            &txn,
            health,
            TASKS,
            (s.id, bucket_of(range.from_ms), 0),
            (s.id, PENDING, u64::MAX),
            |key, bytes| {
                let task = tasks::decode_task(key.2, bytes)?;
                let alive = task.created_ns < to_ns && task.done_ns.is_none_or(|d| d >= from_ns);
                if ran.remove(&task.id).is_some() || alive {
                    budget::charge(task.name.len() + task.coro.len() + task.exception.len() + 128)?;
                    found.tasks.push(task);
                }
                Ok(())
            },
        )?;
        for (id, first) in ran {
            found.tasks.push(TaskRecord::lost(id, first));
        }
        if !found.tasks.is_empty() || !found.slices.is_empty() {
            out.push(found);
        }
    }
    Ok(out)
}
