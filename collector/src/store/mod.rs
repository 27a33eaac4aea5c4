//! Storage: what the collector keeps and how it is queried, behind the [`Store`] trait so a
//! larger backend (ClickHouse) can replace the embedded one. The embedded backend's schema is
//! documented in `docs/STORAGE.md`.

pub(crate) mod budget;
pub mod clickhouse;
pub(crate) mod codec;
pub mod embedded;
pub(crate) mod tasks;

use std::sync::Arc;

use ember_profile::Frame;

pub use crate::query::Labels;
use crate::query::{Selector, TimeRange};
pub use codec::RawSample;
pub use tasks::{NewTasks, SeriesTasks, TaskRecord, TaskSlice, TaskState};

/// Width of an aggregation bucket. Profiles over any range are sums of whole buckets.
pub const BUCKET_MS: i64 = 10_000;

pub fn bucket_of(ms: i64) -> i64 {
    ms.div_euclid(BUCKET_MS) * BUCKET_MS
}

/// Sample counts per step of a time series: one point per `step_ms` (at least a bucket) from the
/// bucket holding the range's start. The aggregated and the task-filtered series both fill it.
#[derive(Debug)]
pub struct Steps {
    start: i64,
    step: i64,
    points: Vec<(i64, u64)>,
}

impl Steps {
    pub fn new(range: TimeRange, step_ms: i64) -> Self {
        let step = step_ms.max(BUCKET_MS);
        let start = bucket_of(range.from_ms);
        let count = ((range.to_ms - start + step - 1) / step).max(1) as usize;
        Self { start, step, points: (0..count).map(|i| (start + i as i64 * step, 0)).collect() }
    }

    /// The first bucket the series covers.
    pub fn start(&self) -> i64 {
        self.start
    }

    /// Adds `count` to the step holding `ms`, if there is one.
    pub fn add(&mut self, ms: i64, count: u64) {
        let slot = (ms - self.start).div_euclid(self.step);
        if let Some(point) = usize::try_from(slot).ok().and_then(|i| self.points.get_mut(i)) {
            point.1 += count;
        }
    }

    pub fn points(self) -> Vec<(i64, u64)> {
        self.points
    }
}

/// A validated batch, with batch-local frame and stack indexes.
#[derive(Debug, Clone, Default)]
pub struct NewBatch {
    pub agent_id: String,
    pub sequence: u64,
    pub frames: Vec<Frame>,
    /// Root first, as indexes into `frames`.
    pub stacks: Vec<Vec<u32>>,
    pub series: Vec<NewSeries>,
}

#[derive(Debug, Clone, Default)]
pub struct NewSeries {
    pub labels: Labels,
    pub samples: Vec<NewSample>,
    /// asyncio task activity of the process, if its task monitor runs.
    pub tasks: NewTasks,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewSample {
    /// Index into the batch's stacks.
    pub stack: u32,
    pub tid: u32,
    pub time_unix_ns: i64,
    pub weight: u32,
}

impl NewBatch {
    pub fn sample_count(&self) -> u64 {
        self.series.iter().flat_map(|s| &s.samples).map(|s| u64::from(s.weight)).sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestOutcome {
    Stored {
        samples: u64,
    },
    /// Already stored under the same (agent id, sequence); nothing was added.
    Duplicate,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SeriesInfo {
    pub id: u32,
    pub labels: Labels,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub samples: u64,
}

/// Stack counts of a query, with the frames they refer to.
#[derive(Debug, Clone, Default)]
pub struct StackCounts {
    pub frames: Arc<Vec<Frame>>,
    /// Root first, as indexes into `frames`, with their sample counts.
    pub stacks: Vec<(Arc<[u32]>, u64)>,
}

impl StackCounts {
    pub fn total(&self) -> u64 {
        self.stacks.iter().map(|s| s.1).sum()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub blobs_removed: u64,
    pub raw_blobs_removed: u64,
    pub tasks_removed: u64,
    pub batches_forgotten: u64,
    pub series_removed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store is full ({used} bytes used of --max-disk {max}); raise --max-disk or shorten --retention")]
    Full { used: u64, max: u64 },
    #[error("the disk is full")]
    DiskFull(#[source] EngineError),
    /// The storage engine failed; its error is kept as the source, for the log.
    #[error("the storage engine failed")]
    Engine(#[source] EngineError),
    /// The store's own bookkeeping failed (a poisoned lock, ids exhausted).
    #[error("{0}")]
    Internal(String),
    /// The file at the store's path is not a store this collector may use.
    #[error("{0}")]
    NotAStore(String),
    /// A query bound is reached; the query may be retried later.
    #[error("{0}")]
    Busy(String),
    /// This store cannot take the batch as it is, now or later; resending will not help.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Corrupt(#[from] codec::CodecError),
}

/// An error of whichever engine backs the store, kept whole.
pub type EngineError = Box<dyn std::error::Error + Send + Sync>;

impl StoreError {
    /// The error with every cause, for the log (never for a response).
    pub fn detail(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }

    pub fn is_full(&self) -> bool {
        matches!(self, StoreError::Full { .. } | StoreError::DiskFull(_))
    }
}

/// Damage the store has found since it opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreHealth {
    /// Distinct records that failed their checksum and are left out of answers.
    pub corrupt_records: u64,
    /// The storage engine failed (panicked); writes are refused until a restart.
    pub failed: bool,
}

impl StoreHealth {
    pub fn is_degraded(&self) -> bool {
        self.corrupt_records > 0 || self.failed
    }
}

/// What every backend provides.
pub trait Store: Send + Sync + 'static {
    /// Stores a batch durably, or recognises it as a repeat. Returns only once the batch is
    /// on disk (or was already).
    fn ingest(&self, batch: &NewBatch) -> Result<IngestOutcome, StoreError>;
    /// The series matching `selector` that have samples in `range`.
    fn series(&self, selector: &Selector, range: TimeRange) -> Result<Vec<SeriesInfo>, StoreError>;
    /// Summed stack counts of the matching series over the buckets that overlap `range`.
    fn stack_counts(&self, selector: &Selector, range: TimeRange) -> Result<StackCounts, StoreError>;
    /// Sample counts per `step_ms` (a multiple of [`BUCKET_MS`]) from `range.from_ms`.
    fn timeseries(&self, selector: &Selector, range: TimeRange, step_ms: i64) -> Result<Vec<(i64, u64)>, StoreError>;
    /// Raw samples (exact times and threads) of the matching series, where still kept.
    fn raw_samples(&self, selector: &Selector, range: TimeRange) -> Result<Vec<(u32, RawSample)>, StoreError>;
    /// The asyncio tasks of the matching series that were alive in `range`, with their run
    /// slices that overlap it (kept as long as raw samples).
    fn tasks(&self, selector: &Selector, range: TimeRange) -> Result<Vec<SeriesTasks>, StoreError>;
    /// Stack counts keyed by the store's stack ids (as in [`RawSample::stack`]), expanded.
    fn expand_stacks(&self, counts: &[(u32, u64)]) -> Result<StackCounts, StoreError>;
    /// Drops aggregated data older than `keep_before_ms` and raw samples older than
    /// `raw_keep_before_ms`.
    fn apply_retention(&self, keep_before_ms: i64, raw_keep_before_ms: i64) -> Result<RetentionReport, StoreError>;
    /// Bytes the store occupies on disk.
    fn disk_bytes(&self) -> u64;
    /// Damage found so far.
    fn health(&self) -> StoreHealth {
        StoreHealth::default()
    }
}
