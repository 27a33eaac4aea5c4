//! The ClickHouse backend: `--store clickhouse://HOST:PORT/DATABASE`. Collectors keep no state
//! of their own, so any number of them can write to one database and any of them answers
//! queries. Schema and its evolution: docs/STORAGE.md.
//!
//! Stages: [`client`] (the HTTP interface), [`schema`] (creation and migration), [`ids`]
//! (content ids and the row encoding), [`ingest`], [`read`] (queries), retention below.

pub mod client;
mod ids;
mod ingest;
mod read;
mod schema;

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
/// How long the database's size is reused before it is asked again (it is reported per batch).
const SIZE_TTL: Duration = Duration::from_secs(10);

pub struct ClickHouseStore {
    client: Client,
    layout: schema::Layout,
    written: ingest::Written,
    stack_local: ids::LocalIds,
    series_local: ids::LocalIds,
    size: Mutex<Option<(Instant, u64)>>,
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
    pub fn open(endpoint: Endpoint) -> Result<Self, StoreError> {
        let layout = schema::Layout { cluster: endpoint.cluster.clone(), database: endpoint.database.clone() };
        let client = Client::new(endpoint, STATEMENT_TIMEOUT).map_err(engine)?;
        let version = schema::server_version(&client).map_err(engine)?;
        schema::migrate(&client, version, &layout).map_err(engine)?;
        tracing::info!(server = version.0, cluster = layout.cluster.as_deref().unwrap_or(""), "ClickHouse store ready");
        Ok(Self {
            client,
            layout,
            written: ingest::Written::default(),
            stack_local: ids::LocalIds::default(),
            series_local: ids::LocalIds::default(),
            size: Mutex::new(None),
        })
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

    /// Drops every day of `table` before `keep_from_day` (a `Date` literal), on every shard;
    /// returns how many.
    fn drop_days_before(&self, table: &str, keep_from_day: &str) -> Result<u64, StoreError> {
        let (database, parts, table) = (&self.layout.database, self.layout.parts(), self.layout.storage(table));
        let partitions = self.query_text(&format!(
            "SELECT DISTINCT partition FROM {parts} WHERE database = '{database}' AND table = '{table}' \
             AND active AND min_date < {keep_from_day} AND max_date < {keep_from_day} FORMAT TabSeparated"
        ))?;
        let mut dropped = 0;
        for partition in partitions.lines().map(str::trim).filter(|p| !p.is_empty()) {
            // `partition` is ClickHouse's own text for a Date partition: digits and dashes.
            let name = partition.trim_matches('\'');
            if !name.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
                continue;
            }
            let (on_cluster, table) = (self.layout.on_cluster(), self.layout.qualified(&table));
            self.client.execute(&format!("ALTER TABLE {table}{on_cluster} DROP PARTITION '{name}'")).map_err(engine)?;
            dropped += 1;
        }
        Ok(dropped)
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

    /// Whole days go: ClickHouse 18.16 has no TTL, and dropping a partition is cheap on any
    /// version. Data is kept up to a day longer than asked. As in the embedded store, the
    /// per-bucket stack counts and series summaries follow `--retention`; every sample with its
    /// exact time, tasks and slices, `--raw-retention`; batch markers the longer of the two, as
    /// long as any row they count. A table that cannot be cut (a partition over ClickHouse's
    /// `max_partition_size_to_drop`) does not stop the others.
    fn apply_retention(&self, keep_before_ms: i64, raw_keep_before_ms: i64) -> Result<RetentionReport, StoreError> {
        let day = |ms: i64| read::date(i64::from(ids::day_of_ms(ms)));
        let drop = |table: &str, before_ms: i64| match self.drop_days_before(table, &day(before_ms)) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(table, "retention could not drop old days: {}", e.detail());
                0
            }
        };
        Ok(RetentionReport {
            blobs_removed: drop("ember_counts", keep_before_ms) + drop("ember_seen", keep_before_ms),
            raw_blobs_removed: drop("ember_samples", raw_keep_before_ms) + drop("ember_slices", raw_keep_before_ms),
            tasks_removed: drop("ember_tasks", raw_keep_before_ms),
            batches_forgotten: drop("ember_batches", keep_before_ms.min(raw_keep_before_ms)),
            series_removed: 0,
        })
    }

    fn disk_bytes(&self) -> u64 {
        let mut size = self.size.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, bytes)) = *size {
            if at.elapsed() < SIZE_TTL {
                return bytes;
            }
        }
        let (database, parts) = (&self.layout.database, self.layout.parts());
        let bytes = self
            .query_text(&format!(
                "SELECT sum(bytes_on_disk) FROM {parts} WHERE database = '{database}' AND active FORMAT TabSeparated"
            ))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        *size = Some((Instant::now(), bytes));
        bytes
    }
}
