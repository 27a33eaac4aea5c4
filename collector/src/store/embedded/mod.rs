//! The embedded backend: one redb file under `--data-dir`, crash-safe (copy-on-write B-trees,
//! fsync on commit), every value sealed with a checksum. Schema: `docs/STORAGE.md`.
//!
//! Stages: [`file`] (opening and the format), [`seal`] (checksums, damage found), [`dict`]
//! (frame and stack dictionaries), [`series`] (the in-memory series index), [`ingest`],
//! [`read`] (queries), [`retention`].

mod dict;
mod file;
mod ingest;
mod read;
mod retention;
mod seal;
mod series;
#[cfg(test)]
mod tests;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use redb::Database;

pub use file::FORMAT_VERSION;

use super::codec::RawSample;
use super::tasks::SeriesTasks;
use super::{IngestOutcome, NewBatch, RetentionReport, SeriesInfo, StackCounts, Store, StoreError, StoreHealth};
use crate::query::{Selector, TimeRange};
use series::SeriesIndex;

#[derive(Debug)]
pub struct EmbeddedStore {
    path: PathBuf,
    /// `None` only while the database is being reopened after an I/O failure.
    db: RwLock<Option<Database>>,
    index: RwLock<SeriesIndex>,
    dictionary: dict::Dictionary,
    health: seal::Health,
    writer: Mutex<()>,
    max_disk: Option<u64>,
    cache_bytes: usize,
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic.downcast_ref::<&str>().copied().or_else(|| panic.downcast_ref::<String>().map(String::as_str)).unwrap_or("?")
}

impl EmbeddedStore {
    /// Opens the store in `dir`, creating it if the directory holds none. An empty, foreign,
    /// damaged or older-format file is an error, never replaced.
    pub fn open(dir: &Path, max_disk: Option<u64>) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, max_disk, file::DEFAULT_CACHE_BYTES)
    }

    /// [`Self::open`] with `cache_bytes` of redb page cache.
    pub fn open_with_cache(dir: &Path, max_disk: Option<u64>, cache_bytes: usize) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Internal(format!("cannot create the data directory {}: {e}", dir.display())))?;
        let path = dir.join(file::FILE_NAME);
        let db = file::open(&path, cache_bytes)?;
        let health = seal::Health::default();
        let index = series::load(&db, &health)?;
        let dictionary = {
            let txn = redb::ReadableDatabase::begin_read(&db).map_err(file::storage_error)?;
            dict::Dictionary::load(&txn)?
        };
        Ok(Self {
            path,
            db: RwLock::new(Some(db)),
            index: RwLock::new(index),
            dictionary,
            health,
            writer: Mutex::new(()),
            max_disk,
            cache_bytes,
        })
    }

    /// Runs `f` on the database. A panic inside the storage engine (a damaged file can cause
    /// one) becomes a logged error and marks the store failed; its text goes nowhere else.
    fn with_db<T>(&self, what: &str, f: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let guard = self.db.read().map_err(|_| StoreError::Internal("database lock poisoned".into()))?;
        let db = guard.as_ref().ok_or_else(|| StoreError::Internal("the database is being reopened".into()))?;
        match std::panic::catch_unwind(AssertUnwindSafe(|| f(db))) {
            Ok(result) => result,
            Err(panic) => {
                tracing::error!(
                    "the storage engine panicked during {what} ({}); the store is marked failed: restart the collector",
                    panic_text(panic.as_ref())
                );
                self.health.fail();
                Err(StoreError::Internal(format!("the storage engine failed during {what}")))
            }
        }
    }

    /// After an I/O error redb refuses further writes; reopening recovers from the last
    /// committed state, so freeing disk space is enough to resume.
    fn reopen(&self) {
        let Ok(mut guard) = self.db.write() else { return };
        *guard = None;
        match file::reopen(&self.path, self.cache_bytes) {
            Ok(db) => *guard = Some(db),
            Err(e) => tracing::error!("reopening the store failed: {e}"),
        }
    }

    fn series_index(&self) -> Result<RwLockReadGuard<'_, SeriesIndex>, StoreError> {
        self.index.read().map_err(|_| StoreError::Internal("series index lock poisoned".into()))
    }

    fn matching_series(&self, selector: &Selector, range: TimeRange) -> Result<Vec<SeriesInfo>, StoreError> {
        Ok(self
            .series_index()?
            .series
            .values()
            .filter(|s| s.last_seen_ms >= range.from_ms && s.first_seen_ms < range.to_ms && selector.matches(&s.labels))
            .cloned()
            .collect())
    }

    fn apply(&self, committed: ingest::Committed) -> u64 {
        self.dictionary.committed(committed.added);
        if let Ok(mut index) = self.index.write() {
            for (sid, info) in committed.series {
                index.ids.insert(info.labels.clone(), sid);
                index.series.insert(sid, info);
            }
            index.next_series = committed.next_series;
            index.next_blob = committed.next_blob;
        }
        committed.samples
    }
}

impl Store for EmbeddedStore {
    fn ingest(&self, batch: &NewBatch) -> Result<IngestOutcome, StoreError> {
        let _writer = self.writer.lock().map_err(|_| StoreError::Internal("writer lock poisoned".into()))?;
        if self.health.has_failed() {
            return Err(StoreError::Internal("the storage engine failed earlier; restart the collector".into()));
        }
        if let Some(max) = self.max_disk {
            let used = self.disk_bytes();
            if used > max {
                return Err(StoreError::Full { used, max });
            }
        }
        match self.with_db("ingest", |db| ingest::write(self, db, batch)) {
            Ok(None) => Ok(IngestOutcome::Duplicate),
            Ok(Some(committed)) => Ok(IngestOutcome::Stored { samples: self.apply(committed) }),
            Err(e) => {
                if !matches!(e, StoreError::Corrupt(_)) && !self.health.has_failed() {
                    // The commit failed: memory was not touched; start the next write from the
                    // last committed state.
                    self.reopen();
                }
                Err(e)
            }
        }
    }

    fn series(&self, selector: &Selector, range: TimeRange) -> Result<Vec<SeriesInfo>, StoreError> {
        self.matching_series(selector, range)
    }

    fn stack_counts(&self, selector: &Selector, range: TimeRange) -> Result<StackCounts, StoreError> {
        let series = self.matching_series(selector, range)?;
        self.with_db("a profile query", |db| read::stack_counts(db, &self.health, &series, range))
    }

    fn timeseries(&self, selector: &Selector, range: TimeRange, step_ms: i64) -> Result<Vec<(i64, u64)>, StoreError> {
        let series = self.matching_series(selector, range)?;
        self.with_db("a series query", |db| read::timeseries(db, &self.health, &series, range, step_ms))
    }

    fn raw_samples(&self, selector: &Selector, range: TimeRange) -> Result<Vec<(u32, RawSample)>, StoreError> {
        let series = self.matching_series(selector, range)?;
        self.with_db("a raw sample query", |db| read::raw_samples(db, &self.health, &series, range))
    }

    fn tasks(&self, selector: &Selector, range: TimeRange) -> Result<Vec<SeriesTasks>, StoreError> {
        // A process whose tasks all wait sends nothing, so its series may look unseen in a
        // range where its tasks are alive: only the start of the series bounds the search.
        let series = self.matching_series(selector, TimeRange { from_ms: i64::MIN, to_ms: range.to_ms })?;
        self.with_db("a task query", |db| read::tasks(db, &self.health, &series, range))
    }

    fn expand_stacks(&self, counts: &[(u32, u64)]) -> Result<StackCounts, StoreError> {
        self.with_db("a profile query", |db| read::expand(db, &self.health, counts))
    }

    fn apply_retention(&self, keep_before_ms: i64, raw_keep_before_ms: i64) -> Result<RetentionReport, StoreError> {
        let _writer = self.writer.lock().map_err(|_| StoreError::Internal("writer lock poisoned".into()))?;
        let series: Vec<SeriesInfo> = self.series_index()?.series.values().cloned().collect();
        let mut report = RetentionReport::default();
        let dropped = self.with_db("retention", |db| {
            retention::apply(db, &series, keep_before_ms, raw_keep_before_ms, &mut report)
        })?;
        if let Ok(mut guard) = self.db.write() {
            if let Some(db) = guard.as_mut() {
                retention::compact_if_fragmented(db, || self.disk_bytes());
            }
        }
        if let Ok(mut index) = self.index.write() {
            for s in dropped {
                index.series.remove(&s.id);
                index.ids.remove(&s.labels);
            }
        }
        Ok(report)
    }

    fn disk_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    fn health(&self) -> StoreHealth {
        self.health.report()
    }
}
