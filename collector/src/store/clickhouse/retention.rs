//! Retention: whole days go (`ALTER TABLE … DROP PARTITION`), since ClickHouse 18.16 has no
//! TTL and dropping a partition is cheap on every version. Data is kept up to a day longer than
//! asked. The sums (`ember_counts`, `ember_seen`) and series labels follow `--retention`; every
//! sample with its exact time, task records and slices `--raw-retention`, never longer than the
//! labels that find them; batch markers the longer of the two, as long as any row they count.
//!
//! A task record is placed on the day it was written, so a record goes `--raw-retention` after
//! the task's last change. The record of a task that still runs is carried to today before its
//! day goes, while its process is seen within `--retention`: the embedded store keeps live
//! tasks' records too, and a service's long-lived tasks would otherwise lose their names.

use super::ids::{content_id, day_of_ms, literal, LAST_DAY};
use super::read::{counted, date};
use super::{engine, ClickHouseStore, RetentionReport, StoreError};

impl ClickHouseStore {
    pub(super) fn drop_old_days(&self, keep_before_ms: i64, raw_keep_before_ms: i64) -> RetentionReport {
        let day = |ms: i64| date(i64::from(day_of_ms(ms)));
        let raw_keep_before_ms = raw_keep_before_ms.max(keep_before_ms);
        let drop = |table: &str, before_ms: i64| match self.drop_days_before(table, &day(before_ms)) {
            Ok(n) => n,
            Err(e) => {
                // A table that cannot be cut (a partition over `max_partition_size_to_drop`)
                // does not stop the others.
                tracing::warn!(table, "retention could not drop old days: {}", e.detail());
                0
            }
        };
        let tasks_removed =
            self.carry_and_drop_tasks(&day(raw_keep_before_ms), &day(keep_before_ms)).unwrap_or_else(|e| {
                tracing::warn!(
                    table = "ember_tasks",
                    "retention could not carry running tasks and drop old days: {}",
                    e.detail()
                );
                0
            });
        RetentionReport {
            blobs_removed: drop("ember_counts", keep_before_ms)
                + drop("ember_seen", keep_before_ms)
                + drop("ember_series", keep_before_ms),
            raw_blobs_removed: drop("ember_samples", raw_keep_before_ms) + drop("ember_slices", raw_keep_before_ms),
            tasks_removed,
            batches_forgotten: drop("ember_batches", keep_before_ms),
            series_removed: 0,
        }
    }

    /// Carrying reads every task record and batch marker, so it runs only when a day of records
    /// is due to go (about once a day); if it fails, the day stays for the next pass.
    fn carry_and_drop_tasks(&self, keep_from_day: &str, series_from_day: &str) -> Result<u64, StoreError> {
        let old = self.old_partitions("ember_tasks", keep_from_day)?;
        if old.is_empty() {
            return Ok(0);
        }
        self.carry_live_tasks(keep_from_day, series_from_day)?;
        self.drop_partitions("ember_tasks", &old)
    }

    /// Writes today a copy of the latest record of each task whose records are all on days
    /// before `keep_from_day`, none of them finished, and whose series has labels from
    /// `series_from_day` on. The copy is counted under its own batch marker, as the original's
    /// may go first; two collectors carrying at once write the same rows, which queries fold.
    fn carry_live_tasks(&self, keep_from_day: &str, series_from_day: &str) -> Result<(), StoreError> {
        let now_ms = super::ingest::now_ms();
        let today_day = day_of_ms(now_ms as i64);
        let today = date(i64::from(today_day));
        let batch_id = content_id(b"carried-tasks", today.as_bytes());
        let batch = literal(&batch_id);
        let every_day = counted(&date(0), &date(LAST_DAY));
        self.client
            .execute(&format!(
                "INSERT INTO ember_tasks (day, series_id, task_id, name, coro, parent, created_ns, done_ns, state, \
                 exception, sequence, batch, attempt) \
                 SELECT toDate({today}), series_id, task_id, argMax(name, sequence), argMax(coro, sequence), \
                 argMax(parent, sequence), min(created_ns), CAST(NULL AS Nullable(Int64)), argMax(state, sequence), \
                 argMax(exception, sequence), max(sequence), toFixedString({batch}, 16), toUInt64(0) \
                 FROM ember_tasks WHERE day < {keep_from_day} AND {every_day} \
                 AND series_id GLOBAL IN (SELECT series_id FROM ember_series WHERE day >= {series_from_day}) \
                 AND (series_id, task_id) GLOBAL NOT IN (SELECT series_id, task_id FROM ember_tasks \
                 WHERE day >= {keep_from_day} AND {every_day}) \
                 GROUP BY series_id, task_id HAVING countIf(done_ns IS NOT NULL) = 0"
            ))
            .map_err(engine)?;
        // The marker after the rows, as for a batch: rows without it are never counted.
        let mut marker = super::ids::Rows::default();
        marker.u16(today_day).id(&batch_id).u64(0).str("").u64(0).u64(0).u64(now_ms);
        self.insert("ember_batches", "day, batch, attempt, agent_id, sequence, samples, stored_ms", &marker)
    }

    /// Drops every day of `table` before `keep_from_day` (a `Date` literal), on every shard;
    /// returns how many.
    fn drop_days_before(&self, table: &str, keep_from_day: &str) -> Result<u64, StoreError> {
        let old = self.old_partitions(table, keep_from_day)?;
        self.drop_partitions(table, &old)
    }

    /// The partitions (days) of `table` wholly before `keep_from_day`, on every shard.
    fn old_partitions(&self, table: &str, keep_from_day: &str) -> Result<Vec<String>, StoreError> {
        let (database, parts, table) = (&self.layout.database, self.layout.parts(), self.layout.storage(table));
        let partitions = self.query_text(&format!(
            "SELECT DISTINCT partition FROM {parts} WHERE database = '{database}' AND table = '{table}' \
             AND active AND min_date < {keep_from_day} AND max_date < {keep_from_day} FORMAT TabSeparated"
        ))?;
        // `partition` is ClickHouse's own text for a Date partition: digits and dashes.
        Ok(partitions
            .lines()
            .map(|p| p.trim().trim_matches('\''))
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit() || b == b'-'))
            .map(str::to_string)
            .collect())
    }

    fn drop_partitions(&self, table: &str, partitions: &[String]) -> Result<u64, StoreError> {
        let (on_cluster, table) = (self.layout.on_cluster(), self.layout.qualified(&self.layout.storage(table)));
        for name in partitions {
            self.client.execute(&format!("ALTER TABLE {table}{on_cluster} DROP PARTITION '{name}'")).map_err(engine)?;
        }
        Ok(partitions.len() as u64)
    }
}
