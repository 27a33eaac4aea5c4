//! The ClickHouse backend: `--store clickhouse://HOST:PORT/DATABASE`. Collectors keep no state
//! of their own, so any number of them can write to one database and any of them answers
//! queries. Schema and its evolution: docs/STORAGE.md.
//!
//! Stages: [`client`] (the HTTP interface), [`schema`] (creation and migration), [`ids`]
//! (content ids and the row encoding), [`ingest`], [`read`] (queries), [`retention`].

pub mod client;
mod ids;
mod ingest;
mod read;
mod retention;
mod schema;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use client::Client;
pub use client::{ClientError, Endpoint};
pub use schema::SchemaError;

use super::codec::RawSample;
use super::tasks::SeriesTasks;
use super::{IngestOutcome, NewBatch, RetentionReport, SeriesInfo, StackCounts, Store, StoreError};
use crate::query::{Selector, TimeRange};

/// How long one statement may take before the collector gives up on it.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(120);
/// The most SQL text a query may have (its `IN` lists of ids); ClickHouse's default is 256 KiB.
const MAX_QUERY_BYTES: &str = "67108864";
/// How long the database's size is reused before it is asked again.
const SIZE_TTL: Duration = Duration::from_secs(10);

/// The database's size on disk, asked of ClickHouse from threads that may block (a batch's
/// write, retention), never from a request handler's: a slow server must not hold up `/metrics`
/// or the async runtime.
#[derive(Debug, Default)]
struct Size {
    bytes: AtomicU64,
    asked: Mutex<Option<Instant>>,
}

pub struct ClickHouseStore {
    client: Client,
    layout: schema::Layout,
    written: ingest::Written,
    stack_local: ids::LocalIds,
    series_local: ids::LocalIds,
    size: Size,
    /// `--max-disk`: batches are refused while the database is larger.
    max_disk: Option<u64>,
}

impl std::fmt::Debug for ClickHouseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseStore").field("endpoint", self.client.endpoint()).finish()
    }
}

fn engine(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::Engine(e.into())
}

impl ClickHouseStore {
    /// Connects, checks the server's version, and creates or migrates the schema.
    pub fn open(endpoint: Endpoint, max_disk: Option<u64>) -> Result<Self, StoreError> {
        let layout = schema::Layout { cluster: endpoint.cluster.clone(), database: endpoint.database.clone() };
        let client = Client::new(endpoint, STATEMENT_TIMEOUT).map_err(engine)?;
        let version = schema::server_version(&client).map_err(engine)?;
        schema::migrate(&client, version, &layout).map_err(engine)?;
        tracing::info!(server = version.0, cluster = layout.cluster.as_deref().unwrap_or(""), "ClickHouse store ready");
        let store = Self {
            client,
            layout,
            written: ingest::Written::default(),
            stack_local: ids::LocalIds::default(),
            series_local: ids::LocalIds::default(),
            size: Size::default(),
            max_disk,
        };
        match (max_disk, store.ask_size()) {
            // --max-disk is not to be off without a word: without the size at start, stop.
            (Some(_), Err(e)) => {
                return Err(engine(format!(
                    "--max-disk needs the database's size from {}: {}",
                    store.layout.parts(),
                    e.detail()
                )))
            }
            (_, Ok(bytes)) => store.size.bytes.store(bytes, Ordering::Relaxed),
            (None, Err(e)) => tracing::warn!("cannot ask ClickHouse for the database's size: {}", e.detail()),
        }
        Ok(store)
    }

    fn ask_size(&self) -> Result<u64, StoreError> {
        let (database, parts) = (&self.layout.database, self.layout.parts());
        let answer = self.query_text(&format!(
            "SELECT sum(bytes_on_disk) FROM {parts} WHERE database = '{database}' AND active FORMAT TabSeparated"
        ))?;
        answer
            .trim()
            .parse::<u64>()
            .map_err(|_| StoreError::Internal("ClickHouse's answer to the database's size is not a number".into()))
    }

    /// Asks ClickHouse for the database's size if the last answer is older than [`SIZE_TTL`]
    /// and no other thread is asking. Blocks: only for writes and retention.
    fn refresh_size(&self) {
        let Ok(mut asked) = self.size.asked.try_lock() else { return };
        if asked.is_some_and(|at| at.elapsed() < SIZE_TTL) {
            return;
        }
        *asked = Some(Instant::now());
        match self.ask_size() {
            Ok(bytes) => self.size.bytes.store(bytes, Ordering::Relaxed),
            Err(e) => tracing::warn!("cannot ask ClickHouse for the database's size: {}", e.detail()),
        }
    }

    /// Refuses a batch while the database is over `--max-disk` (as of its last size).
    fn check_size(&self) -> Result<(), StoreError> {
        self.refresh_size();
        let used = self.size.bytes.load(Ordering::Relaxed);
        match self.max_disk {
            Some(max) if used >= max => Err(StoreError::Full { used, max }),
            _ => Ok(()),
        }
    }

    fn insert(&self, table: &str, columns: &str, rows: &ids::Rows) -> Result<(), StoreError> {
        self.client.insert(table, columns, &rows.0).map_err(engine)
    }

    fn query_rows(&self, sql: &str) -> Result<Vec<u8>, StoreError> {
        // The answer counts against the query's memory bound as it arrives, before it is parsed.
        let mut take = |n: usize| super::budget::charge(n).is_ok();
        match self.client.query_with(sql, &[("max_query_size", MAX_QUERY_BYTES)], &mut take) {
            Err(ClientError::OverBudget) => Err(StoreError::Busy(
                "queries in progress already hold the query memory limit (--query-memory); retry later".into(),
            )),
            other => other.map_err(engine),
        }
    }

    fn query_text(&self, sql: &str) -> Result<String, StoreError> {
        Ok(String::from_utf8_lossy(&self.query_rows(sql)?).into_owned())
    }
}

impl Store for ClickHouseStore {
    fn ingest(&self, batch: &NewBatch) -> Result<IngestOutcome, StoreError> {
        self.write_batch(batch)
    }

    fn series(&self, selector: &Selector, range: TimeRange) -> Result<Vec<SeriesInfo>, StoreError> {
        self.read_series(selector, range)
    }

    fn stack_counts(&self, selector: &Selector, range: TimeRange) -> Result<StackCounts, StoreError> {
        self.read_stack_counts(selector, range)
    }

    fn timeseries(&self, selector: &Selector, range: TimeRange, step_ms: i64) -> Result<Vec<(i64, u64)>, StoreError> {
        self.read_timeseries(selector, range, step_ms)
    }

    fn raw_samples(&self, selector: &Selector, range: TimeRange) -> Result<Vec<(u32, RawSample)>, StoreError> {
        self.read_raw_samples(selector, range)
    }

    fn tasks(&self, selector: &Selector, range: TimeRange) -> Result<Vec<SeriesTasks>, StoreError> {
        self.read_tasks(selector, range)
    }

    fn expand_stacks(&self, counts: &[(u32, u64)]) -> Result<StackCounts, StoreError> {
        self.expand_local(counts)
    }

    fn apply_retention(&self, keep_before_ms: i64, raw_keep_before_ms: i64) -> Result<RetentionReport, StoreError> {
        let report = self.drop_old_days(keep_before_ms, raw_keep_before_ms);
        self.refresh_size();
        Ok(report)
    }

    /// As of the last write or retention pass (at most [`SIZE_TTL`] old while batches arrive).
    fn disk_bytes(&self) -> u64 {
        self.size.bytes.load(Ordering::Relaxed)
    }
}
