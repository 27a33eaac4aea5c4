//! Queries. Series are matched against their labels here, as the embedded store does; the
//! sums run in ClickHouse over each batch's counted attempt (`ingest.rs`): flame graphs and
//! time series over the per-bucket stack counts, series over the per-batch summaries, raw
//! samples over every sample kept; stacks and frames are read for the ids the sums name.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ember_profile::{Frame, FrameKind};

use super::ids::{day_of_ms, literal, Id, LAST_DAY};
use super::ClickHouseStore;
use crate::query::{Selector, TimeRange};
use crate::store::{
    bucket_of, budget, Labels, RawSample, SeriesInfo, SeriesTasks, StackCounts, Steps, StoreError, TaskRecord,
    TaskSlice, TaskState,
};

/// Ids per `IN (…)` list, so a statement stays well under the query size we allow.
const IDS_PER_STATEMENT: usize = 20_000;

/// A day as ClickHouse's `Date` literal.
pub(super) fn date(days: i64) -> String {
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("'{y:04}-{m:02}-{d:02}'")
}

/// The days a range covers, clamped to what `Date` holds.
fn days(range: TimeRange) -> (String, String) {
    let day = |ms: i64| date(i64::from(day_of_ms(ms)));
    (day(range.from_ms), day(range.to_ms.saturating_sub(1)))
}

/// The counted attempt of each batch with rows on the given days.
pub(super) fn counted(first_day: &str, last_day: &str) -> String {
    format!(
        "(batch, attempt) IN (SELECT batch, min(attempt) FROM ember_batches \
         WHERE day BETWEEN {first_day} AND {last_day} GROUP BY batch)"
    )
}

pub(super) fn state_code(s: TaskState) -> u8 {
    match s {
        TaskState::Pending => 0,
        TaskState::Finished => 1,
        TaskState::Failed => 2,
        TaskState::Cancelled => 3,
    }
}

fn state_of(code: u8) -> TaskState {
    match code {
        1 => TaskState::Finished,
        2 => TaskState::Failed,
        3 => TaskState::Cancelled,
        _ => TaskState::Pending,
    }
}

/// A RowBinary answer, read field by field.
struct Answer<'a> {
    bytes: &'a [u8],
    at: usize,
}

fn short() -> StoreError {
    StoreError::Internal("ClickHouse's answer ended early".into())
}

impl<'a> Answer<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }
    fn more(&self) -> bool {
        self.at < self.bytes.len()
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        let end = self.at.checked_add(n).ok_or_else(short)?;
        let out = self.bytes.get(self.at..end).ok_or_else(short)?;
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, StoreError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| short())?))
    }
    fn u64(&mut self) -> Result<u64, StoreError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| short())?))
    }
    fn i64(&mut self) -> Result<i64, StoreError> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().map_err(|_| short())?))
    }
    fn id(&mut self) -> Result<Id, StoreError> {
        self.take(16)?.try_into().map_err(|_| short())
    }
    fn varint(&mut self) -> Result<u64, StoreError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            value |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err(StoreError::Internal("a varint in ClickHouse's answer is too long".into()))
    }
    fn string(&mut self) -> Result<String, StoreError> {
        let len = usize::try_from(self.varint()?).map_err(|_| short())?;
        Ok(String::from_utf8_lossy(self.take(len)?).into_owned())
    }
    fn strings(&mut self) -> Result<Vec<String>, StoreError> {
        let n = self.varint()?;
        (0..n).map(|_| self.string()).collect()
    }
    fn ids(&mut self) -> Result<Vec<Id>, StoreError> {
        let n = self.varint()?;
        (0..n).map(|_| self.id()).collect()
    }
    fn nullable_i64(&mut self) -> Result<Option<i64>, StoreError> {
        if self.u8()? != 0 {
            return Ok(None);
        }
        self.i64().map(Some)
    }
    fn nullable_u32(&mut self) -> Result<Option<u32>, StoreError> {
        if self.u8()? != 0 {
            return Ok(None);
        }
        self.u32().map(Some)
    }
}

fn id_list<'a>(ids: impl Iterator<Item = &'a Id>) -> String {
    ids.map(literal).collect::<Vec<_>>().join(",")
}

/// The series a query reads: those with data on its days whose labels match.
struct Matched {
    series: Vec<(Id, Labels)>,
    /// The selector is empty: no id list is needed. (Not "every series read matched": one
    /// written after the read would then slip into a filtered answer.)
    all: bool,
}

impl Matched {
    fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// ` AND series_id IN (…)`, or nothing for an empty selector.
    fn filter(&self) -> String {
        match self.all {
            true => String::new(),
            false => format!(" AND series_id IN ({})", id_list(self.series.iter().map(|(id, _)| id))),
        }
    }
}

impl ClickHouseStore {
    /// The series with rows on the days `range` touches whose labels match, with their
    /// content ids. Labels are matched here, as the embedded store matches its index.
    fn matching(&self, selector: &Selector, range: TimeRange) -> Result<Matched, StoreError> {
        self.matching_days(selector, days(range))
    }

    /// As [`Self::matching`], over every day up to the range's end: for answers about series
    /// that may have no row in the range itself (one seen before and after it, one whose tasks
    /// have only waited since an earlier day), as the embedded store searches its whole index.
    fn matching_up_to(&self, selector: &Selector, range: TimeRange) -> Result<Matched, StoreError> {
        self.matching_days(selector, (date(0), days(range).1))
    }

    fn matching_days(&self, selector: &Selector, (first, last): (String, String)) -> Result<Matched, StoreError> {
        let answer = self.query_rows(&format!(
            "SELECT DISTINCT series_id, label_names, label_values FROM ember_series \
             WHERE day BETWEEN {first} AND {last} FORMAT RowBinary"
        ))?;
        let mut a = Answer::new(&answer);
        let mut found = BTreeMap::new();
        while a.more() {
            let (id, names, values) = (a.id()?, a.strings()?, a.strings()?);
            let labels: Labels = names.into_iter().zip(values).collect();
            budget::charge(labels.iter().map(|(k, v)| k.len() + v.len() + 48).sum::<usize>() + 64)?;
            if selector.matches(&labels) {
                found.insert(id, labels);
            }
        }
        Ok(Matched { series: found.into_iter().collect(), all: selector.matchers.is_empty() })
    }

    /// The sample filter of a query: its range, its series, the counted attempts.
    fn sample_filter(&self, series: &Matched, range: TimeRange) -> String {
        let (first, last) = days(range);
        let (from_ns, to_ns) = (range.from_ms.saturating_mul(1_000_000), range.to_ms.saturating_mul(1_000_000));
        format!(
            "day BETWEEN {first} AND {last} AND time_ns >= {from_ns} AND time_ns < {to_ns}{} AND {}",
            series.filter(),
            counted(&first, &last)
        )
    }

    /// The days of the per-bucket sums a range reads: from `first_bucket`'s to the one
    /// holding the range's end.
    fn bucket_days(first_bucket: i64, range: TimeRange) -> TimeRange {
        TimeRange { from_ms: first_bucket, to_ms: bucket_of(range.to_ms.saturating_sub(1)).saturating_add(1) }
    }

    /// The filter of the per-bucket sums: the buckets from `first_bucket` to the one holding
    /// the range's end, as the embedded store reads its aggregates.
    fn bucket_filter(&self, series: &Matched, first_bucket: i64, range: TimeRange) -> String {
        let last_bucket = bucket_of(range.to_ms.saturating_sub(1));
        let (first, last) = days(Self::bucket_days(first_bucket, range));
        format!(
            "day BETWEEN {first} AND {last} AND bucket_ms BETWEEN {first_bucket} AND {last_bucket}{} AND {}",
            series.filter(),
            counted(&first, &last)
        )
    }

    pub(super) fn read_series(&self, selector: &Selector, range: TimeRange) -> Result<Vec<SeriesInfo>, StoreError> {
        let series = self.matching_up_to(selector, range)?;
        if series.is_empty() {
            return Ok(Vec::new());
        }
        // First and last seen and the count over the whole history, as the embedded store
        // keeps them, from one summary row per batch and day; the range only selects the
        // series seen in it.
        let answer = self.query_rows(&format!(
            "SELECT series_id, min(first_ns), max(last_ns), sum(samples) FROM ember_seen \
             WHERE {}{} GROUP BY series_id FORMAT RowBinary",
            counted(&date(0), &date(LAST_DAY)),
            series.filter()
        ))?;
        let labels: HashMap<Id, &Labels> = series.series.iter().map(|(id, l)| (*id, l)).collect();
        let mut a = Answer::new(&answer);
        let mut out = Vec::new();
        while a.more() {
            let (id, first_ns, last_ns, samples) = (a.id()?, a.i64()?, a.i64()?, a.u64()?);
            let (first_seen_ms, last_seen_ms) = (first_ns.div_euclid(1_000_000), last_ns.div_euclid(1_000_000));
            let Some(labels) = labels.get(&id) else { continue };
            if last_seen_ms >= range.from_ms && first_seen_ms < range.to_ms {
                let id = self.series_local.local(id);
                out.push(SeriesInfo { id, labels: (*labels).clone(), first_seen_ms, last_seen_ms, samples });
            }
        }
        out.sort_by_key(|s| s.id);
        Ok(out)
    }

    pub(super) fn read_stack_counts(&self, selector: &Selector, range: TimeRange) -> Result<StackCounts, StoreError> {
        let first_bucket = bucket_of(range.from_ms);
        let series = self.matching(selector, Self::bucket_days(first_bucket, range))?;
        if series.is_empty() {
            return Ok(StackCounts::default());
        }
        let answer = self.query_rows(&format!(
            "SELECT stack_id, sum(weight) FROM ember_counts WHERE {} GROUP BY stack_id FORMAT RowBinary",
            self.bucket_filter(&series, first_bucket, range)
        ))?;
        let mut a = Answer::new(&answer);
        let mut counts = Vec::new();
        while a.more() {
            counts.push((a.id()?, a.u64()?));
        }
        budget::charge(counts.len() * 64)?;
        self.expand(&counts)
    }

    pub(super) fn read_timeseries(
        &self,
        selector: &Selector,
        range: TimeRange,
        step_ms: i64,
    ) -> Result<Vec<(i64, u64)>, StoreError> {
        let mut steps = Steps::new(range, step_ms);
        let series = self.matching(selector, Self::bucket_days(steps.start(), range))?;
        if series.is_empty() {
            return Ok(steps.points());
        }
        let answer = self.query_rows(&format!(
            "SELECT bucket_ms, sum(weight) FROM ember_counts WHERE {} GROUP BY bucket_ms FORMAT RowBinary",
            self.bucket_filter(&series, steps.start(), range)
        ))?;
        let mut a = Answer::new(&answer);
        while a.more() {
            let (bucket, count) = (a.i64()?, a.u64()?);
            steps.add(bucket, count);
        }
        Ok(steps.points())
    }

    pub(super) fn read_raw_samples(
        &self,
        selector: &Selector,
        range: TimeRange,
    ) -> Result<Vec<(u32, RawSample)>, StoreError> {
        let series = self.matching(selector, range)?;
        if series.is_empty() {
            return Ok(Vec::new());
        }
        let answer = self.query_rows(&format!(
            "SELECT series_id, time_ns, tid, stack_id, weight FROM ember_samples WHERE {} \
             ORDER BY series_id, time_ns FORMAT RowBinary",
            self.sample_filter(&series, range)
        ))?;
        let mut a = Answer::new(&answer);
        let mut out = Vec::new();
        while a.more() {
            let (series, time_ns, tid, stack, weight) = (a.id()?, a.i64()?, a.u32()?, a.id()?, a.u32()?);
            let sample = RawSample { time_ns, tid, stack: self.stack_local.local(stack), weight };
            out.push((self.series_local.local(series), sample));
        }
        budget::charge(out.len() * std::mem::size_of::<(u32, RawSample)>())?;
        Ok(out)
    }

    pub(super) fn expand_local(&self, counts: &[(u32, u64)]) -> Result<StackCounts, StoreError> {
        let content: Vec<(Id, u64)> = counts
            .iter()
            .map(|&(local, n)| {
                self.stack_local.content(local).map(|id| (id, n)).ok_or_else(|| {
                    StoreError::Busy("the collector named too many stacks while this query ran; retry it".into())
                })
            })
            .collect::<Result<_, _>>()?;
        self.expand(&content)
    }

    /// The stacks and frames of `counts`' stack ids.
    fn expand(&self, counts: &[(Id, u64)]) -> Result<StackCounts, StoreError> {
        let mut stacks: HashMap<Id, Vec<Id>> = HashMap::new();
        for chunk in counts.chunks(IDS_PER_STATEMENT) {
            let answer = self.query_rows(&format!(
                "SELECT stack_id, frames FROM ember_stacks WHERE stack_id IN ({}) FORMAT RowBinary",
                id_list(chunk.iter().map(|(id, _)| id))
            ))?;
            let mut a = Answer::new(&answer);
            while a.more() {
                let (id, frames) = (a.id()?, a.ids()?);
                budget::charge(frames.len() * 20)?;
                stacks.insert(id, frames);
            }
        }
        let mut wanted: Vec<Id> = stacks.values().flatten().copied().collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut frame_index: HashMap<Id, u32> = HashMap::new();
        let mut frames = Vec::new();
        for chunk in wanted.chunks(IDS_PER_STATEMENT) {
            let answer = self.query_rows(&format!(
                "SELECT frame_id, kind, plumbing, text, function, file, line FROM ember_frames \
                 WHERE frame_id IN ({}) FORMAT RowBinary",
                id_list(chunk.iter())
            ))?;
            let mut a = Answer::new(&answer);
            while a.more() {
                let id = a.id()?;
                let kind = match a.u8()? {
                    0 => FrameKind::Python,
                    1 => FrameKind::Native,
                    2 => FrameKind::Kernel,
                    _ => FrameKind::Marker,
                };
                let plumbing = a.u8()? != 0;
                let (text, function, file, line) = (a.string()?, a.string()?, a.string()?, a.nullable_u32()?);
                if frame_index.contains_key(&id) {
                    continue;
                }
                budget::charge(text.len() + function.len() + file.len() + 64)?;
                frame_index.insert(id, frames.len() as u32);
                frames.push(Frame { text, kind, function, file, interpreter_plumbing: plumbing, line });
            }
        }
        let mut out = Vec::with_capacity(counts.len());
        for (id, n) in counts {
            let Some(ids) = stacks.get(id) else {
                return Err(StoreError::Internal("a stack the samples name is not in ember_stacks".into()));
            };
            let indexes: Option<Vec<u32>> = ids.iter().map(|f| frame_index.get(f).copied()).collect();
            let indexes =
                indexes.ok_or_else(|| StoreError::Internal("a frame a stack names is not in ember_frames".into()))?;
            out.push((Arc::from(indexes), *n));
        }
        Ok(StackCounts { frames: Arc::new(frames), stacks: out })
    }

    pub(super) fn read_tasks(&self, selector: &Selector, range: TimeRange) -> Result<Vec<SeriesTasks>, StoreError> {
        let (from_ns, to_ns) = (range.from_ms.saturating_mul(1_000_000), range.to_ms.saturating_mul(1_000_000));
        // Slices that start up to a day before the range and run into it.
        let with_day_before = TimeRange { from_ms: range.from_ms.saturating_sub(86_400_000), to_ms: range.to_ms };
        // Every series up to the range's end: a process whose tasks all wait sends nothing.
        let series = self.matching_up_to(selector, range)?;
        if series.is_empty() {
            return Ok(Vec::new());
        }
        let (first, last) = days(with_day_before);
        // No id list for an empty selector: rows of series without labels are left out below.
        let ids = series.filter();
        let answer = self.query_rows(&format!(
            "SELECT series_id, task_id, tid, start_ns, end_ns, ready_ns FROM ember_slices \
             WHERE day BETWEEN {first} AND {last}{ids} AND end_ns >= {from_ns} \
             AND start_ns < {to_ns} AND {} ORDER BY start_ns FORMAT RowBinary",
            counted(&first, &last)
        ))?;
        let mut found: BTreeMap<Id, SeriesTasks> = BTreeMap::new();
        let mut a = Answer::new(&answer);
        while a.more() {
            let (series, task, tid, start_ns, end_ns, ready_ns) =
                (a.id()?, a.u64()?, a.u32()?, a.i64()?, a.i64()?, a.nullable_i64()?);
            budget::charge(std::mem::size_of::<TaskSlice>())?;
            found.entry(series).or_default().slices.push(TaskSlice { task, tid, start_ns, end_ns, ready_ns });
        }
        // Every record of the tasks alive in the range or with slices in it; a task's latest
        // record is its finished one if it has one. GLOBAL: on a cluster, a task's records and
        // slices come in different batches, so they may be on different shards.
        let answer = self.query_rows(&format!(
            "SELECT series_id, task_id, name, coro, parent, created_ns, done_ns, state, exception, sequence \
             FROM ember_tasks WHERE {}{ids} AND (series_id, task_id) GLOBAL IN \
             (SELECT series_id, task_id FROM ember_tasks \
             WHERE created_ns < {to_ns} AND (done_ns IS NULL OR done_ns >= {from_ns}){ids} \
             UNION ALL SELECT series_id, task_id FROM ember_slices WHERE day BETWEEN {first} AND {last}{ids} \
             AND end_ns >= {from_ns} AND start_ns < {to_ns}) FORMAT RowBinary",
            counted(&date(0), &date(LAST_DAY))
        ))?;
        // A task's record is resent as it is renamed or finishes: the finished one wins, else
        // the one from the agent's latest batch.
        let mut records: BTreeMap<(Id, u64), ((bool, u64), TaskRecord)> = BTreeMap::new();
        let mut a = Answer::new(&answer);
        while a.more() {
            let (series, id) = (a.id()?, a.u64()?);
            let (name, coro, parent, created_ns) = (a.string()?, a.string()?, a.u64()?, a.i64()?);
            let (done_ns, state, exception, sequence) = (a.nullable_i64()?, state_of(a.u8()?), a.string()?, a.u64()?);
            budget::charge(name.len() + coro.len() + exception.len() + 128)?;
            let rank = (done_ns.is_some(), sequence);
            let record =
                TaskRecord { id, name, coro, parent, created_ns, done_ns, state, exception, record_lost: false };
            if records.get(&(series, id)).is_none_or(|(kept, _)| *kept < rank) {
                records.insert((series, id), (rank, record));
            }
        }
        let records = records.into_iter().map(|(key, (_, record))| (key, record));
        let mut ran: HashMap<(Id, u64), i64> = HashMap::new();
        for (series, tasks) in &found {
            for sl in &tasks.slices {
                ran.entry((*series, sl.task)).or_insert(sl.start_ns);
            }
        }
        for ((series, id), task) in records {
            let alive = task.created_ns < to_ns && task.done_ns.is_none_or(|d| d >= from_ns);
            if ran.remove(&(series, id)).is_some() || alive {
                found.entry(series).or_default().tasks.push(task);
            }
        }
        for ((series, id), first) in ran {
            found.entry(series).or_default().tasks.push(TaskRecord::lost(id, first));
        }
        let labels: HashMap<Id, &Labels> = series.series.iter().map(|(id, l)| (*id, l)).collect();
        Ok(found
            .into_iter()
            .filter_map(|(id, mut tasks)| {
                tasks.labels = (*labels.get(&id)?).clone();
                tasks.series = self.series_local.local(id);
                tasks.tasks.sort_by_key(|t| t.id);
                Some(tasks)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        assert_eq!(date(0), "'1970-01-01'");
        assert_eq!(date(20_429), "'2025-12-07'");
        assert_eq!(date(11_016), "'2000-02-29'");
    }
}
