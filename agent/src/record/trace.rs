//! `--format trace`: Chrome trace event JSON (opens in Perfetto and chrome://tracing). Every
//! asyncio task gets a track of its run slices; every CPU sample is an instant event on its
//! thread's track, carrying its stack and the task that was running on that thread then.
//! Slices and samples name their task alike: `args.task` is its name, `args.task_id` its id
//! (names repeat, ids do not).

use std::collections::HashMap;
use std::io::Write;

use serde_json::{json, Value};

use crate::aggregate::view::{default_view, ViewOptions};
use crate::export::{ExportError, Meta};
use crate::sampling::Pipeline;
use crate::symbolize::{Frame, SymbolTable};
use crate::tasks::timeline::Timeline;

/// Per thread, (start, end, task) of every slice, in time order.
type SlicesByThread = HashMap<u64, Vec<(i64, i64, u32)>>;

/// Task tracks get thread ids above any real tid.
const TASK_TRACK_BASE: u64 = 1 << 32;

fn us(ns: i64) -> f64 {
    ns as f64 / 1000.0
}

/// The task running on `thread` at `time`, if any: its name and id.
fn task_at(timeline: &Timeline, index: &SlicesByThread, thread: u64, time: i64) -> Option<(String, u32)> {
    let slices = index.get(&thread)?;
    let i = slices.partition_point(|s| s.0 <= time);
    let (start, end, task) = *slices.get(i.checked_sub(1)?)?;
    (time >= start && time <= end).then(|| timeline.tasks.get(&task).map(|t| (t.name.clone(), task))).flatten()
}

pub fn write(
    pipeline: &Pipeline,
    symbols: &SymbolTable,
    view: ViewOptions,
    meta: &Meta,
    out: &mut dyn Write,
) -> Result<(), ExportError> {
    let profile = &pipeline.profile;
    let mut events: Vec<Value> = Vec::new();
    let mut timelines: HashMap<u32, &Timeline> = HashMap::new();
    if let Some(tasks) = &pipeline.tasks {
        for (pid, timeline) in tasks.timelines() {
            timelines.insert(pid.0, timeline);
            for task in timeline.tasks.values() {
                let track = TASK_TRACK_BASE + u64::from(task.id);
                events.push(json!({"ph": "M", "name": "thread_name", "pid": pid.0, "tid": track,
                    "args": {"name": format!("task {} ({})", task.name, task.coro)}}));
                for slice in &task.slices {
                    events.push(json!({"ph": "X", "cat": "task", "name": task.name, "pid": pid.0, "tid": track,
                        "ts": us(slice.start), "dur": us(slice.end - slice.start),
                        "args": {"task": task.name, "task_id": task.id, "coro": task.coro, "thread": slice.thread,
                            "parent": task.parent}}));
                }
            }
        }
    }
    // Per process: each thread's slices in time order, to find the running task of a sample.
    let mut slice_index: HashMap<u32, SlicesByThread> = HashMap::new();
    for (&pid, timeline) in &timelines {
        let by_thread = slice_index.entry(pid).or_default();
        for task in timeline.tasks.values() {
            for s in &task.slices {
                by_thread.entry(s.thread).or_default().push((s.start, s.end, task.id));
            }
        }
        for slices in by_thread.values_mut() {
            slices.sort_unstable();
        }
    }
    for (&(pid, tid), name) in &profile.thread_names {
        events.push(json!({"ph": "M", "name": "thread_name", "pid": pid.0, "tid": tid.0, "args": {"name": name}}));
    }
    for (pid, name) in &profile.process_names {
        events.push(
            json!({"ph": "M", "name": "process_name", "pid": pid.0, "args": {"name": format!("{name} (PID {pid})")}}),
        );
    }
    let mut stack_text: HashMap<u32, (String, String)> = HashMap::new();
    for sample in profile.timeline() {
        let (leaf, folded) = stack_text.entry(sample.stack.0).or_insert_with(|| {
            let keys = profile.stack(sample.stack);
            let mut frames: Vec<&Frame> = keys.iter().rev().flat_map(|k| symbols.frames(k)).collect();
            if !view.native {
                frames = default_view(frames);
            }
            let leaf = frames.last().map_or_else(String::new, |f| f.text.clone());
            (leaf, frames.iter().map(|f| f.text.as_str()).collect::<Vec<_>>().join(";"))
        });
        let time = sample.time as i64;
        let task = timelines
            .get(&sample.owner.pid.0)
            .and_then(|t| task_at(t, slice_index.get(&sample.owner.pid.0)?, u64::from(sample.owner.tid.0), time));
        let (task, task_id) = task.unzip();
        events.push(json!({"ph": "i", "s": "t", "cat": "sample", "name": leaf, "pid": sample.owner.pid.0,
            "tid": sample.owner.tid.0, "ts": us(time), "args": {"stack": folded, "task": task, "task_id": task_id}}));
    }
    let file = json!({
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {"title": meta.title(profile.total()), "clock": "CLOCK_MONOTONIC", "rate_hz": meta.rate_hz},
    });
    serde_json::to_writer(&mut *out, &file)?;
    Ok(())
}
