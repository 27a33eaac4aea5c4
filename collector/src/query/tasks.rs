//! Joining CPU samples to the asyncio task that was running on their thread at their time,
//! for `task="NAME"` / `task_id="N"` matchers and the timeline.

use std::collections::HashMap;

use super::{Labels, Selector, TimeRange};
use crate::store::{SeriesTasks, StackCounts, Steps, Store, StoreError, TaskRecord, BUCKET_MS};

/// The labels that select samples by task rather than series.
pub const TASK_LABELS: [&str; 3] = ["task", "task_id", "task_coro"];

/// Matchers on `task` (the task's name), `task_id` and `task_coro` (its root coroutine). A
/// sample outside any task has none of them, so `task=""` selects exactly the samples that
/// ran outside tasks.
#[derive(Debug, Clone)]
pub struct TaskFilter(Selector);

impl TaskFilter {
    /// Takes the task matchers out of `selector`; `None` if it has none.
    pub fn split(selector: &mut Selector) -> Option<TaskFilter> {
        let taken = selector.take_labels(&TASK_LABELS);
        (!taken.matchers.is_empty()).then_some(TaskFilter(taken))
    }

    pub fn matches(&self, task: Option<&TaskRecord>) -> bool {
        let mut labels = Labels::new();
        if let Some(t) = task {
            labels.insert("task".into(), t.name.clone());
            labels.insert("task_id".into(), t.id.to_string());
            labels.insert("task_coro".into(), t.coro.clone());
        }
        self.0.matches(&labels)
    }
}

/// (start µs, end µs, task id) of one slice.
type Span = (i64, i64, u64);

/// Per series and thread, the slices in start order, to find the task running at a time.
#[derive(Debug, Default)]
pub struct Attribution {
    tasks: HashMap<(u32, u64), TaskRecord>,
    /// (series, tid) → (start µs, end µs, task id), sorted by start.
    threads: HashMap<(u32, u32), Vec<Span>>,
}

impl Attribution {
    pub fn new(found: Vec<SeriesTasks>) -> Self {
        let mut a = Attribution::default();
        for s in found {
            for slice in &s.slices {
                // Raw sample times are kept in microseconds; compare at that precision.
                let span = (slice.start_ns.div_euclid(1_000), slice.end_ns.div_euclid(1_000), slice.task);
                a.threads.entry((s.series, slice.tid)).or_default().push(span);
            }
            for mut t in s.tasks {
                if t.record_lost {
                    t.name = format!("(task {}, record lost)", t.id);
                }
                a.tasks.insert((s.series, t.id), t);
            }
        }
        for slices in a.threads.values_mut() {
            slices.sort_unstable();
        }
        a
    }

    pub fn task_at_id(&self, series: u32, id: u64) -> Option<&crate::store::TaskRecord> {
        self.tasks.get(&(series, id))
    }

    /// Whether `filter` accepts what ran on thread `tid` of `series` at `time_ns`. The
    /// filter's matchers run once per task met, not once per sample, and never for the tasks
    /// no sample fell in (a busy service has more tasks than samples).
    pub fn accepted_by<'s>(&'s self, filter: &'s TaskFilter) -> impl FnMut(u32, u32, i64) -> bool + 's {
        let mut seen: HashMap<(u32, u64), bool> = HashMap::new();
        let outside = filter.matches(None);
        move |series, tid, time_ns| match self.task_at(series, tid, time_ns) {
            Some(t) => *seen.entry((series, t.id)).or_insert_with(|| filter.matches(Some(t))),
            None => outside,
        }
    }

    /// The task running on thread `tid` of `series` at `time_ns`.
    pub fn task_at(&self, series: u32, tid: u32, time_ns: i64) -> Option<&TaskRecord> {
        let slices = self.threads.get(&(series, tid))?;
        let us = time_ns.div_euclid(1_000);
        let i = slices.partition_point(|s| s.0 <= us).checked_sub(1)?;
        let (_, end, task) = slices[i];
        (us <= end).then(|| self.tasks.get(&(series, task))).flatten()
    }
}

/// Samples of the matching series in `range` that ran in a task the filter accepts, as
/// (time, weight, stack id).
fn task_samples(
    store: &dyn Store,
    selector: &Selector,
    filter: &TaskFilter,
    range: TimeRange,
) -> Result<Vec<(i64, u64, u32)>, StoreError> {
    let attribution = Attribution::new(store.tasks(selector, range)?);
    let mut accepted = attribution.accepted_by(filter);
    let samples = store.raw_samples(selector, range)?;
    Ok(samples
        .into_iter()
        .filter(|(series, s)| accepted(*series, s.tid, s.time_ns))
        .map(|(_, s)| (s.time_ns, u64::from(s.weight), s.stack))
        .collect())
}

/// The flame graph of the samples that ran in the selected tasks.
pub fn stack_counts(
    store: &dyn Store,
    selector: &Selector,
    filter: &TaskFilter,
    range: TimeRange,
) -> Result<StackCounts, StoreError> {
    let mut counts: HashMap<u32, u64> = HashMap::new();
    for (_, weight, stack) in task_samples(store, selector, filter, range)? {
        *counts.entry(stack).or_default() += weight;
    }
    let mut counts: Vec<(u32, u64)> = counts.into_iter().collect();
    counts.sort_unstable();
    store.expand_stacks(&counts)
}

/// Samples of the selected tasks per `step_ms`, from the range's first bucket, as
/// [`Store::timeseries`] counts them.
pub fn timeseries(
    store: &dyn Store,
    selector: &Selector,
    filter: &TaskFilter,
    range: TimeRange,
    step_ms: i64,
) -> Result<Vec<(i64, u64)>, StoreError> {
    let mut steps = Steps::new(range, step_ms);
    // Whole buckets, as the unfiltered series is.
    let whole = TimeRange { from_ms: steps.start(), to_ms: crate::store::bucket_of(range.to_ms - 1) + BUCKET_MS };
    for (time_ns, weight, _) in task_samples(store, selector, filter, whole)? {
        steps.add(time_ns.div_euclid(1_000_000), weight);
    }
    Ok(steps.points())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{TaskSlice, TaskState};

    fn task(id: u64, name: &str) -> TaskRecord {
        TaskRecord {
            id,
            name: name.into(),
            coro: "c".into(),
            parent: 0,
            created_ns: 0,
            done_ns: None,
            state: TaskState::Pending,
            exception: String::new(),
            record_lost: false,
        }
    }

    fn slice(task: u64, tid: u32, start_us: i64, end_us: i64) -> TaskSlice {
        TaskSlice { task, tid, start_ns: start_us * 1_000, end_ns: end_us * 1_000 + 999, ready_ns: None }
    }

    /// Series 1: task `a` runs on thread 10 at 100–200 µs, `b` at 300–400 µs and on thread 11
    /// at 100–200 µs.
    fn two_tasks() -> Attribution {
        Attribution::new(vec![SeriesTasks {
            series: 1,
            labels: Labels::new(),
            tasks: vec![task(1, "a"), task(2, "b")],
            slices: vec![slice(1, 10, 100, 200), slice(2, 10, 300, 400), slice(2, 11, 100, 200)],
        }])
    }

    #[test]
    fn a_sample_belongs_to_the_slice_on_its_thread_at_its_time() {
        let a = two_tasks();
        let name = |series, tid, us: i64| a.task_at(series, tid, us * 1_000).map(|t| t.name.clone());
        assert_eq!(name(1, 10, 150), Some("a".into()));
        assert_eq!(name(1, 10, 200), Some("a".into()), "the end microsecond is inside");
        assert_eq!(name(1, 10, 250), None, "between slices: no task");
        assert_eq!(name(1, 10, 50), None);
        assert_eq!(name(1, 11, 150), Some("b".into()), "per thread");
        assert_eq!(name(2, 10, 150), None, "per series");
    }

    #[test]
    fn accepted_by_agrees_with_the_filter_for_tasks_and_gaps() {
        let a = two_tasks();
        for query in [r#"{task="a"}"#, r#"{task=""}"#, r#"{task_id="2"}"#, r#"{task!="a"}"#] {
            let filter = TaskFilter::split(&mut Selector::parse(query).expect("valid")).expect("matcher");
            let mut accepted = a.accepted_by(&filter);
            for us in [50, 150, 250, 350, 450] {
                let expected = filter.matches(a.task_at(1, 10, us * 1_000));
                assert_eq!(accepted(1, 10, us * 1_000), expected, "{query} at {us} µs");
            }
        }
    }

    #[test]
    fn filters_by_name_id_and_no_task() {
        let mut selector = Selector::parse(r#"{service="x",task="a"}"#).expect("valid");
        let filter = TaskFilter::split(&mut selector).expect("has a task matcher");
        assert_eq!(selector.matchers.len(), 1);
        assert!(filter.matches(Some(&task(1, "a"))));
        assert!(!filter.matches(Some(&task(2, "b"))));
        assert!(!filter.matches(None));
        let outside = TaskFilter::split(&mut Selector::parse(r#"{task=""}"#).expect("valid")).expect("matcher");
        assert!(outside.matches(None));
        assert!(!outside.matches(Some(&task(1, "a"))));
        let by_id = TaskFilter::split(&mut Selector::parse(r#"{task_id="2"}"#).expect("valid")).expect("matcher");
        assert!(by_id.matches(Some(&task(2, "b"))));
        let unnamed = TaskFilter::split(&mut Selector::parse(r#"{task=~"Task-[0-9]+",task_coro="c"}"#).expect("valid"))
            .expect("matcher");
        assert!(unnamed.matches(Some(&task(3, "Task-3"))));
        assert!(!unnamed.matches(Some(&task(1, "a"))));
        assert!(TaskFilter::split(&mut Selector::parse(r#"{service="x"}"#).expect("valid")).is_none());
    }
}
