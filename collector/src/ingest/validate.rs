//! Turns a wire batch into a [`NewBatch`], refusing anything inconsistent with a message that
//! names the offending field. Nothing from outside can make the collector panic.

use ember_profile::{Frame, FrameKind};
use ember_proto::v1;

use crate::store::{Labels, NewBatch, NewSample, NewSeries, NewTasks, TaskRecord, TaskSlice, TaskState};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidBatch {
    pub field: String,
    pub problem: String,
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> InvalidBatch {
    InvalidBatch { field: field.into(), problem: problem.into() }
}

const MAX_AGENT_ID: usize = 256;

/// The deepest stack kept whole. A deeper one keeps its leaf-most `MAX_STACK_DEPTH - 1` frames
/// under a [`DEPTH_LIMIT_MARKER`] root, as the agent marks a stack it could not finish with
/// `[truncated]`: the leaf end is where the time is spent.
pub const MAX_STACK_DEPTH: usize = 16_384;
pub const DEPTH_LIMIT_MARKER: &str = "[depth limit]";

/// A sample's weight counts the samples merged into it; more than this in one is refused.
pub const MAX_SAMPLE_WEIGHT: u32 = 1_000_000;
/// Times (of samples, tasks, slices) must fall from 2000-01-01T00:00:00Z…
pub const MIN_TIME_NS: i64 = 946_684_800_000_000_000;
/// …to this far ahead of the collector's clock (agents' clocks may run a little ahead).
pub const MAX_AHEAD_NS: i64 = 24 * 3_600_000_000_000;
pub use ember_profile::grammar::RESERVED_LABELS;

fn string(strings: &[String], index: u32, field: impl Fn() -> String) -> Result<&str, InvalidBatch> {
    strings.get(index as usize).map(String::as_str).ok_or_else(|| {
        invalid(field(), format!("string index {index} outside the string table ({} entries)", strings.len()))
    })
}

fn kind(k: i32, field: impl Fn() -> String) -> Result<FrameKind, InvalidBatch> {
    match v1::FrameKind::try_from(k) {
        Ok(v1::FrameKind::Python) => Ok(FrameKind::Python),
        Ok(v1::FrameKind::Native) => Ok(FrameKind::Native),
        Ok(v1::FrameKind::Kernel) => Ok(FrameKind::Kernel),
        Ok(v1::FrameKind::Marker) => Ok(FrameKind::Marker),
        // Unknown (newer) kinds are shown as native code rather than refused.
        Ok(v1::FrameKind::Unspecified) | Err(_) => {
            let _ = field;
            Ok(FrameKind::Native)
        }
    }
}

/// The series labels of a process descriptor; empty values are left out.
pub fn process_labels(p: &v1::Process) -> Labels {
    let mut labels = Labels::new();
    let mut put = |k: &str, v: String| {
        if !v.is_empty() {
            labels.insert(k.to_string(), v);
        }
    };
    put("host", p.host.clone());
    put("pid", if p.pid == 0 { String::new() } else { p.pid.to_string() });
    put("ns_pid", if p.ns_pid == 0 || p.ns_pid == p.pid { String::new() } else { p.ns_pid.to_string() });
    put("comm", p.comm.clone());
    put("exe", p.exe.clone());
    put("cmdline", p.cmdline.clone());
    put("service", p.service.clone());
    put("container", p.container_id.clone());
    put("pod", p.pod.clone());
    put("namespace", p.namespace.clone());
    for (k, v) in &p.labels {
        put(k, v.clone());
    }
    labels
}

/// The window of accepted times, as of now.
#[derive(Debug, Clone, Copy)]
struct Window {
    max_ns: i64,
}

impl Window {
    fn now() -> Self {
        let now_ns = crate::query::now_ms().saturating_mul(1_000_000);
        Window { max_ns: now_ns.saturating_add(MAX_AHEAD_NS) }
    }

    fn check(&self, ns: i64, field: impl Fn() -> String) -> Result<i64, InvalidBatch> {
        if (MIN_TIME_NS..=self.max_ns).contains(&ns) {
            Ok(ns)
        } else {
            Err(invalid(
                field(),
                format!(
                    "time {ns} ns is outside the accepted window: from 2000-01-01 to 24 h ahead of the collector's \
                     clock; check the agent host's clock"
                ),
            ))
        }
    }
}

/// Checks every index, time and name of a batch from the network and turns it into what the
/// store takes. One pass over the batch's tables in wire order, so it is long: each check
/// names the field it refuses, and splitting it would scatter the indexes it carries along.
pub fn validate(batch: &v1::Batch) -> Result<NewBatch, InvalidBatch> {
    let window = Window::now();
    if batch.agent_id.is_empty() || batch.agent_id.len() > MAX_AGENT_ID {
        return Err(invalid("agent_id", format!("must be 1 to {MAX_AGENT_ID} bytes")));
    }
    if batch.sequence == 0 {
        return Err(invalid("sequence", "must start at 1"));
    }
    if batch.strings.first().is_some_and(|s| !s.is_empty()) {
        return Err(invalid("strings[0]", "must be the empty string"));
    }
    let strings = &batch.strings;
    let mut frames = Vec::with_capacity(batch.frames.len());
    for (i, f) in batch.frames.iter().enumerate() {
        let field = |name: &str| format!("frames[{i}].{name}");
        frames.push(Frame {
            text: string(strings, f.text, || field("text"))?.to_string(),
            function: string(strings, f.function, || field("function"))?.to_string(),
            file: string(strings, f.file, || field("file"))?.to_string(),
            kind: kind(f.kind, || field("kind"))?,
            interpreter_plumbing: f.interpreter_plumbing,
            line: (f.line != 0).then_some(f.line),
        });
    }
    let mut stacks = Vec::with_capacity(batch.stacks.len());
    for (i, s) in batch.stacks.iter().enumerate() {
        if let Some(bad) = s.frames.iter().find(|&&f| f as usize >= batch.frames.len()) {
            return Err(invalid(
                format!("stacks[{i}].frames"),
                format!("frame index {bad} outside the frame table ({} entries)", batch.frames.len()),
            ));
        }
        stacks.push(cut_to_depth(&s.frames, &mut frames, batch.frames.len()));
    }
    let mut series: Vec<NewSeries> = Vec::new();
    let mut process_index = std::collections::HashMap::new();
    for (i, p) in batch.processes.iter().enumerate() {
        if process_index.insert(p.id, i).is_some() {
            return Err(invalid(format!("processes[{i}].id"), format!("id {} used twice", p.id)));
        }
        if let Some(bad) = p.labels.keys().find(|k| !ember_profile::grammar::is_label_name(k)) {
            return Err(invalid(format!("processes[{i}].labels"), format!("{bad:?} is not a valid label name")));
        }
        if let Some(bad) = p.labels.keys().find(|k| RESERVED_LABELS.contains(&k.as_str())) {
            return Err(invalid(
                format!("processes[{i}].labels"),
                format!(
                    "{bad:?} is reserved (the collector sets it from the process, or uses it to select asyncio \
                     tasks); give the label another name"
                ),
            ));
        }
        series.push(NewSeries { labels: process_labels(p), ..NewSeries::default() });
    }
    for (i, block) in batch.samples.iter().enumerate() {
        let field = |name: &str| format!("samples[{i}].{name}");
        let Some(&p) = process_index.get(&block.process) else {
            return Err(invalid(field("process"), format!("no process with id {}", block.process)));
        };
        let n = block.stack.len();
        if block.tid.len() != n || block.time_delta.len() != n || !(block.weight.is_empty() || block.weight.len() == n)
        {
            return Err(invalid(
                field("stack"),
                "columns stack, tid, time_delta (and weight, if set) differ in length",
            ));
        }
        let mut mono = block.base_time_nanos;
        let target = &mut series[p].samples;
        target.reserve(n);
        for j in 0..n {
            mono =
                mono.checked_add(block.time_delta[j]).ok_or_else(|| invalid(field("time_delta"), "time overflows"))?;
            let unix = i64::try_from(mono)
                .ok()
                .and_then(|m| m.checked_add(batch.monotonic_to_unix_nanos))
                .ok_or_else(|| invalid(field("time_delta"), "time outside the representable range"))?;
            let unix = window.check(unix, || field("time_delta"))?;
            let stack = block.stack[j];
            if stack as usize >= stacks.len() {
                return Err(invalid(
                    field("stack"),
                    format!("stack index {stack} outside the stack table ({} entries)", stacks.len()),
                ));
            }
            let weight = block.weight.get(j).copied().unwrap_or(1);
            if weight == 0 || weight > MAX_SAMPLE_WEIGHT {
                return Err(invalid(field("weight"), format!("weights must be from 1 to {MAX_SAMPLE_WEIGHT}")));
            }
            target.push(NewSample { stack, tid: block.tid[j], time_unix_ns: unix, weight });
        }
    }
    for (i, block) in batch.tasks.iter().enumerate() {
        let Some(&p) = process_index.get(&block.process) else {
            return Err(invalid(format!("tasks[{i}].process"), format!("no process with id {}", block.process)));
        };
        let tasks = task_block(block, i, strings, batch.monotonic_to_unix_nanos, window)?;
        let target = &mut series[p].tasks;
        target.tasks.extend(tasks.tasks);
        target.slices.extend(tasks.slices);
        target.lost_records = target.lost_records.saturating_add(tasks.lost_records);
    }
    Ok(NewBatch { agent_id: batch.agent_id.clone(), sequence: batch.sequence, frames, stacks, series })
}

/// The stack whole, or cut to [`MAX_STACK_DEPTH`] under a marker frame added to `frames` once.
fn cut_to_depth(stack: &[u32], frames: &mut Vec<Frame>, sent: usize) -> Vec<u32> {
    if stack.len() <= MAX_STACK_DEPTH {
        return stack.to_vec();
    }
    // The marker follows the frames the agent sent.
    if frames.len() == sent {
        frames.push(Frame::marker(DEPTH_LIMIT_MARKER));
    }
    let at = sent;
    let mut cut = Vec::with_capacity(MAX_STACK_DEPTH);
    cut.push(at as u32);
    cut.extend_from_slice(&stack[stack.len() - (MAX_STACK_DEPTH - 1)..]);
    cut
}

/// Monotonic nanoseconds from the agent → Unix nanoseconds in the accepted window.
fn unix_ns(mono: u64, offset: i64, window: Window, field: impl Fn() -> String) -> Result<i64, InvalidBatch> {
    let ns = i64::try_from(mono)
        .ok()
        .and_then(|m| m.checked_add(offset))
        .ok_or_else(|| invalid(field(), "time outside the representable range"))?;
    window.check(ns, field)
}

fn task_block(
    block: &v1::TaskBlock,
    i: usize,
    strings: &[String],
    offset: i64,
    window: Window,
) -> Result<NewTasks, InvalidBatch> {
    let mut out = NewTasks { lost_records: block.lost_records, ..NewTasks::default() };
    for (j, t) in block.tasks.iter().enumerate() {
        let field = |name: &str| format!("tasks[{i}].tasks[{j}].{name}");
        if t.id == 0 {
            return Err(invalid(field("id"), "task ids start at 1"));
        }
        let state = match v1::TaskState::try_from(t.state) {
            Ok(v1::TaskState::Finished) => TaskState::Finished,
            Ok(v1::TaskState::Failed) => TaskState::Failed,
            Ok(v1::TaskState::Cancelled) => TaskState::Cancelled,
            // Unknown (newer) states are treated as still pending.
            Ok(v1::TaskState::Pending | v1::TaskState::Unspecified) | Err(_) => TaskState::Pending,
        };
        let done_ns = match t.done_nanos {
            0 => None,
            d => Some(unix_ns(d, offset, window, || field("done_nanos"))?),
        };
        out.tasks.push(TaskRecord {
            id: t.id,
            name: string(strings, t.name, || field("name"))?.to_string(),
            coro: string(strings, t.coro, || field("coro"))?.to_string(),
            parent: t.parent,
            created_ns: unix_ns(t.created_nanos, offset, window, || field("created_nanos"))?,
            done_ns,
            state,
            exception: string(strings, t.exception, || field("exception"))?.to_string(),
            record_lost: false,
        });
    }
    let n = block.slice_task.len();
    let ready = &block.slice_ready_nanos;
    if block.slice_tid.len() != n
        || block.slice_start_nanos.len() != n
        || block.slice_duration_nanos.len() != n
        || !(ready.is_empty() || ready.len() == n)
    {
        return Err(invalid(
            format!("tasks[{i}].slice_task"),
            "columns slice_task, slice_tid, slice_start_nanos, slice_duration_nanos (and slice_ready_nanos, if set) \
             differ in length",
        ));
    }
    for j in 0..n {
        let field = |name: &str| format!("tasks[{i}].{name}[{j}]");
        let start_ns = unix_ns(block.slice_start_nanos[j], offset, window, || field("slice_start_nanos"))?;
        let end_ns = i64::try_from(block.slice_duration_nanos[j])
            .ok()
            .and_then(|d| start_ns.checked_add(d))
            .ok_or_else(|| invalid(field("slice_duration_nanos"), "time outside the representable range"))?;
        let end_ns = window.check(end_ns, || field("slice_duration_nanos"))?;
        let ready_ns = match ready.get(j).copied().unwrap_or(0) {
            0 => None,
            r => Some(unix_ns(r, offset, window, || field("slice_ready_nanos"))?),
        };
        out.slices.push(TaskSlice { task: block.slice_task[j], tid: block.slice_tid[j], start_ns, end_ns, ready_ns });
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn valid() -> v1::Batch {
        v1::Batch {
            agent_id: "agent".into(),
            sequence: 1,
            strings: vec!["".into(), "main (a.py)".into(), "main".into(), "a.py".into()],
            frames: vec![v1::Frame {
                text: 1,
                function: 2,
                file: 3,
                kind: v1::FrameKind::Python as i32,
                interpreter_plumbing: false,
                line: 0,
            }],
            stacks: vec![v1::Stack { frames: vec![0] }],
            processes: vec![v1::Process { id: 1, pid: 42, service: "svc".into(), ..Default::default() }],
            samples: vec![v1::SampleBlock {
                process: 1,
                base_time_nanos: 1_000,
                stack: vec![0, 0],
                tid: vec![42, 42],
                time_delta: vec![0, 10_000_000],
                weight: vec![],
            }],
            monotonic_to_unix_nanos: 1_700_000_000_000_000_000,
            rate_hz: 99,
            tasks: vec![v1::TaskBlock {
                process: 1,
                tasks: vec![v1::TaskInfo {
                    id: 1,
                    name: 2,
                    coro: 2,
                    parent: 0,
                    created_nanos: 500,
                    done_nanos: 0,
                    state: v1::TaskState::Pending as i32,
                    exception: 0,
                }],
                slice_task: vec![1],
                slice_tid: vec![42],
                slice_start_nanos: vec![900],
                slice_duration_nanos: vec![200],
                slice_ready_nanos: vec![800],
                lost_records: 0,
            }],
        }
    }

    #[test]
    fn accepts_a_valid_batch() {
        let b = validate(&valid()).expect("valid");
        assert_eq!(b.series.len(), 1);
        assert_eq!(b.series[0].labels["service"], "svc");
        assert_eq!(b.series[0].labels["pid"], "42");
        assert_eq!(b.series[0].samples[1].time_unix_ns, 1_700_000_000_000_000_000 + 1_000 + 10_000_000);
        assert_eq!(b.sample_count(), 2);
        let tasks = &b.series[0].tasks;
        assert_eq!(tasks.tasks[0].name, "main");
        assert_eq!(tasks.tasks[0].created_ns, 1_700_000_000_000_000_500);
        let slice = tasks.slices[0];
        assert_eq!((slice.end_ns - slice.start_ns, slice.start_ns - slice.ready_ns.unwrap_or(0)), (200, 100));
    }

    #[test]
    fn names_the_bad_field() {
        type Mutation = Box<dyn Fn(&mut v1::Batch)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|b| b.agent_id.clear()), "agent_id"),
            (Box::new(|b| b.sequence = 0), "sequence"),
            (Box::new(|b| b.strings[0] = "x".into()), "strings[0]"),
            (Box::new(|b| b.frames[0].text = 99), "frames[0].text"),
            (Box::new(|b| b.stacks[0].frames.push(5)), "stacks[0].frames"),
            (Box::new(|b| b.samples[0].stack[1] = 3), "samples[0].stack"),
            (Box::new(|b| b.samples[0].process = 9), "samples[0].process"),
            (Box::new(|b| b.samples[0].tid.pop().map(drop).unwrap_or(())), "samples[0].stack"),
            (Box::new(|b| b.samples[0].weight = vec![1, 0]), "samples[0].weight"),
            (Box::new(|b| b.samples[0].time_delta[1] = u64::MAX), "samples[0].time_delta"),
            (Box::new(|b| b.processes.push(b.processes[0].clone())), "processes[1].id"),
            (Box::new(|b| b.tasks[0].process = 9), "tasks[0].process"),
            (Box::new(|b| b.tasks[0].tasks[0].id = 0), "tasks[0].tasks[0].id"),
            (Box::new(|b| b.tasks[0].tasks[0].name = 99), "tasks[0].tasks[0].name"),
            (Box::new(|b| b.tasks[0].tasks[0].created_nanos = u64::MAX), "tasks[0].tasks[0].created_nanos"),
            (Box::new(|b| b.tasks[0].slice_tid.clear()), "tasks[0].slice_task"),
            (Box::new(|b| b.tasks[0].slice_duration_nanos[0] = u64::MAX), "tasks[0].slice_duration_nanos[0]"),
            (
                Box::new(|b| {
                    b.processes[0].labels.insert("bad-name".into(), "x".into());
                }),
                "processes[0].labels",
            ),
        ];
        for (mutate, field) in cases {
            let mut b = valid();
            mutate(&mut b);
            let e = validate(&b).expect_err(field);
            assert_eq!(e.field, field, "{e}");
        }
    }
}
