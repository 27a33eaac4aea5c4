//! `GET /api/v1/timeline`: the asyncio tasks of the matching processes, with their run slices
//! and how many CPU samples each ran. Documented in `docs/API.md`.

use std::collections::HashMap;
use std::time::Instant;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::api::{param, range, selector, AppState, Params};
use super::error::ApiError;
use crate::query::tasks::{Attribution, TaskFilter};
use crate::store::{SeriesTasks, TaskState};

const DEFAULT_LIMIT: usize = 5_000;
const MAX_LIMIT: usize = 100_000;

fn us(ns: i64) -> i64 {
    ns.div_euclid(1_000)
}

#[derive(Serialize)]
struct TimelineTask {
    /// The store's id of the process (series) the task belongs to; task ids are per process.
    process: u32,
    pid: String,
    id: u64,
    name: String,
    coro: String,
    parent: Option<u64>,
    created: i64,
    done: Option<i64>,
    state: TaskState,
    exception: Option<String>,
    /// [start, end, tid] in Unix microseconds.
    slices: Vec<[i64; 3]>,
    /// When the task became ready for each slice (Unix µs), or null if not known.
    ready: Vec<Option<i64>>,
    /// CPU samples taken while the task ran.
    samples: u64,
    /// Microseconds spent running, summed over the slices in range.
    running: i64,
}

pub async fn timeline(State(state): State<AppState>, Query(params): Params) -> Result<Response, ApiError> {
    let started = Instant::now();
    let mut selector = selector(&params, "query")?;
    let range = range(&params, "from", "to")?;
    let limit = match param(&params, "limit") {
        None => DEFAULT_LIMIT,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|&n| (1..=MAX_LIMIT).contains(&n))
            .ok_or_else(|| ApiError::bad("limit", format!("must be a whole number from 1 to {MAX_LIMIT}")))?,
    };
    let filter = TaskFilter::split(&mut selector);
    let store = state.store.clone();
    let slot = state.enter("timeline")?;
    let (found, samples) = slot
        .run(move || {
            let found = store.tasks(&selector, range)?;
            let samples = if found.is_empty() { Vec::new() } else { store.raw_samples(&selector, range)? };
            Ok((found, samples))
        })
        .await?;
    let mut tasks = build(&found);
    let attribution = Attribution::new(found);
    let index: HashMap<(u32, u64), usize> = tasks.iter().enumerate().map(|(i, t)| ((t.process, t.id), i)).collect();
    let mut outside = 0u64;
    for (series, s) in &samples {
        match attribution.task_at(*series, s.tid, s.time_ns).and_then(|t| index.get(&(*series, t.id))) {
            Some(&i) => tasks[i].samples += u64::from(s.weight),
            None => outside += u64::from(s.weight),
        }
    }
    if let Some(filter) = &filter {
        tasks.retain(|t| {
            let record = attribution.task_at_id(t.process, t.id);
            filter.matches(record)
        });
    }
    let total = tasks.len();
    if total > limit {
        // Keep the tasks that ran longest; a timeline of the busiest work.
        tasks.sort_by_key(|t| std::cmp::Reverse((t.running, t.samples)));
        tasks.truncate(limit);
    }
    tasks.sort_by_key(|t| (t.created, t.process, t.id));
    state.metrics.observe_query("timeline", started.elapsed().as_secs_f64());
    Ok(Json(serde_json::json!({
        "from": range.from_ms,
        "to": range.to_ms,
        "time_unit": "us",
        "total_tasks": total,
        "truncated": total > limit,
        "samples_outside_tasks": outside,
        "tasks": tasks,
    }))
    .into_response())
}

fn build(found: &[SeriesTasks]) -> Vec<TimelineTask> {
    let mut out = Vec::new();
    for s in found {
        let pid = s.labels.get("pid").cloned().unwrap_or_default();
        let mut slices: HashMap<u64, Vec<_>> = HashMap::new();
        for slice in &s.slices {
            slices.entry(slice.task).or_default().push(slice);
        }
        for t in &s.tasks {
            let mine = slices.remove(&t.id).unwrap_or_default();
            out.push(TimelineTask {
                process: s.series,
                pid: pid.clone(),
                id: t.id,
                name: t.name.clone(),
                coro: t.coro.clone(),
                parent: (t.parent != 0).then_some(t.parent),
                created: us(t.created_ns),
                done: t.done_ns.map(us),
                state: t.state,
                exception: (!t.exception.is_empty()).then(|| t.exception.clone()),
                slices: mine.iter().map(|sl| [us(sl.start_ns), us(sl.end_ns), i64::from(sl.tid)]).collect(),
                ready: mine.iter().map(|sl| sl.ready_ns.map(us)).collect(),
                samples: 0,
                running: mine.iter().map(|sl| us(sl.end_ns) - us(sl.start_ns)).sum(),
            });
        }
    }
    out
}
