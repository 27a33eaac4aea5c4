//! Retention: dropping data older than `--retention` (and raw times older than
//! `--raw-retention`), and giving freed pages back when they are a large share of the file.

use redb::{Database, ReadableTableMetadata};

use super::file::{storage_error, AGG, BATCHES, PENDING, RAW, SERIES, SLICES, TASKS};
use crate::store::{bucket_of, RetentionReport, SeriesInfo, StoreError};

/// Below this, free space in the file is not worth a compaction.
const COMPACT_MIN_BYTES: u64 = 64 << 20;

/// Deletes what is older than the cutoffs; returns the series removed whole.
pub fn apply(
    db: &Database,
    series: &[SeriesInfo],
    keep_before_ms: i64,
    raw_keep_before_ms: i64,
    report: &mut RetentionReport,
) -> Result<Vec<SeriesInfo>, StoreError> {
    let cutoff = bucket_of(keep_before_ms);
    let raw_cutoff = bucket_of(raw_keep_before_ms);
    let mut dropped = Vec::new();
    let txn = db.begin_write().map_err(storage_error)?;
    {
        let mut agg = txn.open_table(AGG).map_err(storage_error)?;
        let mut raw = txn.open_table(RAW).map_err(storage_error)?;
        let mut slices = txn.open_table(SLICES).map_err(storage_error)?;
        let mut task_table = txn.open_table(TASKS).map_err(storage_error)?;
        for s in series {
            let old_slices = slices
                .extract_from_if((s.id, i64::MIN, 0)..(s.id, raw_cutoff.max(cutoff), 0), |_, _| true)
                .map_err(storage_error)?;
            report.raw_blobs_removed += old_slices.count() as u64;
            // Finished tasks go with their slices; live ones stay while their series does.
            let end = if s.last_seen_ms < keep_before_ms { (s.id, PENDING, u64::MAX) } else { (s.id, raw_cutoff, 0) };
            let old_tasks = task_table.extract_from_if((s.id, i64::MIN, 0)..end, |_, _| true).map_err(storage_error)?;
            report.tasks_removed += old_tasks.count() as u64;
            let old =
                agg.extract_from_if((s.id, i64::MIN, 0)..(s.id, cutoff, 0), |_, _| true).map_err(storage_error)?;
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
        for s in series.iter().filter(|s| s.last_seen_ms < keep_before_ms) {
            series_table.remove(s.id).map_err(storage_error)?;
            dropped.push(s.clone());
        }
    }
    txn.commit().map_err(storage_error)?;
    report.series_removed = dropped.len() as u64;
    Ok(dropped)
}

/// Copy-on-write leaves freed pages in the file; when they are a large share of it, give
/// them back. Queries and ingest wait meanwhile, so this only runs with retention.
pub fn compact_if_fragmented(db: &mut Database, size: impl Fn() -> u64) {
    let fragmented = (|| {
        let txn = db.begin_write().map_err(storage_error)?;
        let stats = txn.stats().map_err(storage_error)?;
        let free = stats.fragmented_bytes();
        txn.abort().map_err(storage_error)?;
        Ok::<_, StoreError>(free)
    })();
    let Ok(free) = fragmented else { return };
    let before = size();
    if before < COMPACT_MIN_BYTES || free * 4 < before {
        return;
    }
    let started = std::time::Instant::now();
    match db.compact() {
        Ok(_) => tracing::info!(before, after = size(), elapsed = ?started.elapsed(), "compacted the store"),
        Err(e) => tracing::warn!("compacting the store failed: {e}"),
    }
}
