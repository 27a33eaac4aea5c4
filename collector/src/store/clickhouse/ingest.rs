//! Writing a batch: dictionaries first (frames, stacks, series: content-keyed, so a repeat
//! only adds a row the next merge folds), then the batch's samples (each one, and their sums per
//! 10 s bucket and stack, and per series and day), tasks and slices under a random attempt
//! number, and last one marker per day the batch writes on.
//!
//! Exactly once across collectors: a query counts, for each batch, only the attempt with the
//! smallest number among those with a marker (`read.rs`). A marker is written only after every
//! row of its attempt was acknowledged, so an attempt cut short (a collector killed mid-way,
//! ClickHouse refusing a part) has none and is never counted, and a batch resent to another
//! collector adds a complete attempt that is counted instead of, never with, the first.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use ring::rand::SecureRandom;

use super::ids::{content_id, day_of_ms, literal, Id, Rows};
use super::ClickHouseStore;
use crate::store::codec::{encode_frame, encode_labels};
use crate::store::{bucket_of, IngestOutcome, NewBatch, NewSeries, StoreError};

impl ClickHouseStore {
    pub(super) fn write_batch(&self, batch: &NewBatch) -> Result<IngestOutcome, StoreError> {
        let mut key = batch.agent_id.as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(&batch.sequence.to_le_bytes());
        let batch_id = content_id(b"batch", &key);
        let today = day_of_ms(now_ms() as i64);
        let mut days = days_of(batch, Some(today));
        if days.is_empty() {
            // An empty batch still gets a marker, so its repeat is recognised.
            days.insert(today);
        }
        if days.len() > MAX_DAYS_PER_BATCH {
            return Err(StoreError::Refused(format!(
                "its samples and task slices fall on {} different days, more than the {MAX_DAYS_PER_BATCH} a batch \
                 may touch in ClickHouse (a partition per day); an agent's batch covers its flush interval: check \
                 the agent host's clock",
                days.len()
            )));
        }
        // Stored means some attempt has its marker on every day of the batch's samples and
        // slices (a marker insert spanning days writes one part per day, and may have stopped
        // after some); the day its task records were written differs between attempts.
        let data_days = days_of(batch, None);
        let covers = match data_days.is_empty() {
            true => String::new(),
            false => {
                let list = data_days.iter().map(|&d| super::read::date(i64::from(d))).collect::<Vec<_>>().join(",");
                format!(" HAVING uniqExactIf(day, day IN ({list})) = {}", data_days.len())
            }
        };
        let seen = self.query_text(&format!(
            "SELECT count() FROM (SELECT attempt FROM ember_batches WHERE batch = {} GROUP BY attempt{covers}) \
             FORMAT TabSeparated",
            literal(&batch_id)
        ))?;
        if seen.trim() != "0" {
            return Ok(IngestOutcome::Duplicate);
        }
        self.check_size()?;
        let frame_ids = self.write_frames(batch)?;
        let stack_ids = self.write_stacks(batch, &frame_ids)?;
        let series_days: Vec<BTreeSet<u16>> = batch.series.iter().map(|s| days_of_series(s, &days, today)).collect();
        let series_ids = self.write_series(batch, &series_days)?;
        let attempt = random_attempt()?;
        self.write_samples(batch, &series_days, &stack_ids, &series_ids, &batch_id, attempt)?;
        self.write_tasks(batch, &series_ids, &batch_id, attempt, today)?;
        let stored_ms = now_ms();
        let mut markers = Rows::default();
        for &day in &days {
            markers.u16(day).id(&batch_id).u64(attempt).str(&batch.agent_id).u64(batch.sequence);
            markers.u64(batch.sample_count()).u64(stored_ms);
        }
        self.insert("ember_batches", "day, batch, attempt, agent_id, sequence, samples, stored_ms", &markers)?;
        Ok(IngestOutcome::Stored { samples: batch.sample_count() })
    }

    fn write_frames(&self, batch: &NewBatch) -> Result<Vec<Id>, StoreError> {
        let mut rows = Rows::default();
        let ids: Vec<Id> = batch.frames.iter().map(|f| content_id(b"frame", &encode_frame(f))).collect();
        let mut new = HashSet::new();
        for (frame, id) in batch.frames.iter().zip(&ids) {
            if !self.written.has(id) && new.insert(*id) {
                rows.id(id).u8(frame.kind as u8).u8(u8::from(frame.interpreter_plumbing));
                rows.str(&frame.text).str(&frame.function).str(&frame.file).nullable_u32(frame.line);
            }
        }
        if !rows.0.is_empty() {
            self.insert("ember_frames", "frame_id, kind, plumbing, text, function, file, line", &rows)?;
            self.written.add(new);
        }
        Ok(ids)
    }

    fn write_stacks(&self, batch: &NewBatch, frame_ids: &[Id]) -> Result<Vec<Id>, StoreError> {
        let mut rows = Rows::default();
        let mut ids = Vec::with_capacity(batch.stacks.len());
        let mut new = HashSet::new();
        for stack in &batch.stacks {
            let frames: Vec<&Id> = stack.iter().filter_map(|&i| frame_ids.get(i as usize)).collect();
            let bytes: Vec<u8> = frames.iter().flat_map(|id| id.iter().copied()).collect();
            let id = content_id(b"stack", &bytes);
            if !self.written.has(&id) && new.insert(id) {
                rows.id(&id).ids(frames.into_iter());
            }
            ids.push(id);
        }
        if !rows.0.is_empty() {
            self.insert("ember_stacks", "stack_id, frames", &rows)?;
            self.written.add(new);
        }
        Ok(ids)
    }

    /// A row per series and day it has data on: queries read only the series of their days,
    /// and retention drops a series' row with its last day, so processes long gone (a `pid`
    /// label makes a series per process) cost nothing.
    fn write_series(&self, batch: &NewBatch, series_days: &[BTreeSet<u16>]) -> Result<Vec<Id>, StoreError> {
        let mut rows = Rows::default();
        let mut ids = Vec::with_capacity(batch.series.len());
        let mut new = HashSet::new();
        for (series, days) in batch.series.iter().zip(series_days) {
            let id = content_id(b"series", &encode_labels(&series.labels));
            for &day in days {
                let written = content_id(b"series-day", &[&id[..], &day.to_le_bytes()].concat());
                if !self.written.has(&written) && new.insert(written) {
                    rows.u16(day).id(&id);
                    rows.strs(series.labels.keys().map(String::as_str));
                    rows.strs(series.labels.values().map(String::as_str));
                }
            }
            ids.push(id);
        }
        if !rows.0.is_empty() {
            self.insert("ember_series", "day, series_id, label_names, label_values", &rows)?;
            self.written.add(new);
        }
        Ok(ids)
    }

    fn write_samples(
        &self,
        batch: &NewBatch,
        series_days: &[BTreeSet<u16>],
        stack_ids: &[Id],
        series_ids: &[Id],
        batch_id: &Id,
        attempt: u64,
    ) -> Result<(), StoreError> {
        let mut rows = Rows::default();
        // Per series: (bucket, stack) → weight, and (day) → first, last, samples.
        let mut counts: BTreeMap<(usize, i64, u32), u64> = BTreeMap::new();
        let mut seen: BTreeMap<(usize, u16), (i64, i64, u64)> = BTreeMap::new();
        for (i, ((series, series_id), days)) in batch.series.iter().zip(series_ids).zip(series_days).enumerate() {
            // A series is seen while its tasks run too, as the embedded store counts it (one
            // that only awaited still shows): their span goes to the series' day it starts on.
            if let Some((first_ns, last_ns)) = series.tasks.time_span() {
                let starts = day_of_ms(first_ns.div_euclid(1_000_000));
                if let Some(&on) = days.range(..=starts).next_back().or(days.first()) {
                    let day = seen.entry((i, on)).or_insert((first_ns, last_ns, 0));
                    *day = (day.0.min(first_ns), day.1.max(last_ns), day.2);
                }
            }
            for s in &series.samples {
                let Some(stack_id) = stack_ids.get(s.stack as usize) else { continue };
                let ms = s.time_unix_ns.div_euclid(1_000_000);
                rows.u16(day_of_ms(ms)).id(series_id).i64(s.time_unix_ns);
                rows.id(stack_id).u32(s.tid).u32(s.weight).id(batch_id).u64(attempt);
                *counts.entry((i, bucket_of(ms), s.stack)).or_default() += u64::from(s.weight);
                let day = seen.entry((i, day_of_ms(ms))).or_insert((s.time_unix_ns, s.time_unix_ns, 0));
                *day = (day.0.min(s.time_unix_ns), day.1.max(s.time_unix_ns), day.2 + u64::from(s.weight));
            }
        }
        if !rows.0.is_empty() {
            self.insert("ember_samples", "day, series_id, time_ns, stack_id, tid, weight, batch, attempt", &rows)?;
        }
        let mut aggregated = Rows::default();
        for ((series, bucket, stack), weight) in counts {
            let (Some(series_id), Some(stack_id)) = (series_ids.get(series), stack_ids.get(stack as usize)) else {
                continue;
            };
            aggregated.u16(day_of_ms(bucket)).id(series_id).i64(bucket).id(stack_id).u64(weight);
            aggregated.id(batch_id).u64(attempt);
        }
        if !aggregated.0.is_empty() {
            self.insert("ember_counts", "day, series_id, bucket_ms, stack_id, weight, batch, attempt", &aggregated)?;
        }
        let mut summaries = Rows::default();
        for ((series, day), (first_ns, last_ns, samples)) in seen {
            let Some(series_id) = series_ids.get(series) else { continue };
            summaries.u16(day).id(series_id).i64(first_ns).i64(last_ns).u64(samples).id(batch_id).u64(attempt);
        }
        if summaries.0.is_empty() {
            return Ok(());
        }
        self.insert("ember_seen", "day, series_id, first_ns, last_ns, samples, batch, attempt", &summaries)
    }

    /// A task record goes on `today`, the day it is written: it lives --raw-retention from the
    /// task's last change, and retention carries a running task's record on (`retention.rs`).
    fn write_tasks(
        &self,
        batch: &NewBatch,
        series_ids: &[Id],
        batch_id: &Id,
        attempt: u64,
        today: u16,
    ) -> Result<(), StoreError> {
        let (mut tasks, mut slices) = (Rows::default(), Rows::default());
        for (series, series_id) in batch.series.iter().zip(series_ids) {
            for t in &series.tasks.tasks {
                tasks.u16(today).id(series_id).u64(t.id);
                tasks.str(&t.name).str(&t.coro).u64(t.parent).i64(t.created_ns);
                match t.done_ns {
                    Some(done) => tasks.u8(0).i64(done),
                    None => tasks.u8(1),
                };
                tasks.u8(super::read::state_code(t.state)).str(&t.exception).u64(batch.sequence);
                tasks.id(batch_id).u64(attempt);
            }
            for s in &series.tasks.slices {
                slices.u16(day_of_ms(s.start_ns.div_euclid(1_000_000))).id(series_id).i64(s.start_ns).i64(s.end_ns);
                match s.ready_ns {
                    Some(ready) => slices.u8(0).i64(ready),
                    None => slices.u8(1),
                };
                slices.u64(s.task).u32(s.tid).id(batch_id).u64(attempt);
            }
        }
        if !tasks.0.is_empty() {
            let columns =
                "day, series_id, task_id, name, coro, parent, created_ns, done_ns, state, exception, sequence, batch, attempt";
            self.insert("ember_tasks", columns, &tasks)?;
        }
        if !slices.0.is_empty() {
            let columns = "day, series_id, start_ns, end_ns, ready_ns, task_id, tid, batch, attempt";
            self.insert("ember_slices", columns, &slices)?;
        }
        Ok(())
    }
}

/// The most days one batch may touch: each is a partition of every table written, and current
/// servers refuse an insert into more than 100 (`max_partitions_per_insert_block`), which an
/// agent would then resend for ever.
const MAX_DAYS_PER_BATCH: usize = 32;

/// The days (ClickHouse `Date`) a batch writes on: those of its samples and slices, and
/// `records_day` if it has task records (written on the day they arrive, whenever the task was
/// created). Without `records_day`, the days every attempt to store the batch shares.
fn days_of(batch: &NewBatch, records_day: Option<u16>) -> BTreeSet<u16> {
    let mut days = BTreeSet::new();
    for series in &batch.series {
        days.extend(own_days(series, records_day));
        if days.len() > MAX_DAYS_PER_BATCH {
            break;
        }
    }
    days
}

/// The days of one series' data; the batch's first day for a series with none, so its labels
/// are still found.
fn days_of_series(series: &NewSeries, batch_days: &BTreeSet<u16>, today: u16) -> BTreeSet<u16> {
    let mut days = own_days(series, Some(today));
    if days.is_empty() {
        days.extend(batch_days.first());
    }
    days
}

/// The days of a series' samples and slices, and `records_day` if it has task records.
fn own_days(series: &NewSeries, records_day: Option<u16>) -> BTreeSet<u16> {
    let day = |ns: i64| day_of_ms(ns.div_euclid(1_000_000));
    let mut days: BTreeSet<u16> = series.samples.iter().map(|s| day(s.time_unix_ns)).collect();
    days.extend(series.tasks.slices.iter().map(|s| day(s.start_ns)));
    if !series.tasks.tasks.is_empty() {
        days.extend(records_day);
    }
    days
}

fn random_attempt() -> Result<u64, StoreError> {
    let mut bytes = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| StoreError::Internal("no randomness for the batch's attempt number".into()))?;
    Ok(u64::from_le_bytes(bytes))
}

pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Content ids this process has written and ClickHouse acknowledged, so a dictionary row is
/// sent once per process, not once per batch. An id is added only after its insert succeeded:
/// a batch written meanwhile by another thread writes the row again rather than trust one that
/// may never arrive. Bounded: when full it starts over (a row sent again only costs a merge).
#[derive(Debug, Default)]
pub(super) struct Written {
    seen: std::sync::Mutex<HashSet<Id>>,
}

const WRITTEN_MAX: usize = 1 << 20;

impl Written {
    fn has(&self, id: &Id) -> bool {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).contains(id)
    }

    fn add(&self, ids: HashSet<Id>) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() + ids.len() > WRITTEN_MAX {
            seen.clear();
        }
        seen.extend(ids);
    }
}
