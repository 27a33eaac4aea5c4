//! The sampling thread of `stream`: the same perf → unwind → aggregate loop as `record`, cut
//! into windows every flush interval, each turned into a batch for the sender.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_proto::v1;
use tokio::sync::mpsc;

use super::batch::{BatchBuilder, FrameCache, TaskDeltas};
use super::describe::{describe, CommonLabels};
use super::discovery::Discovery;
use super::metrics::AgentMetrics;
use crate::perf::{SamplingConfig, SamplingSession};
use crate::process::launch::{self, ChildExit};
use crate::process::{procfs, Pid};
use crate::record::pipeline::Pipeline;
use crate::record::{process_batch, start_targets, task_bootstrap, warn_about_runtime, RecordError, Started, Targets};
use crate::symbolize::SymbolTable;

/// What the sampling thread samples.
#[derive(Debug, Clone)]
pub enum StreamTargets {
    Fixed(Targets),
    AllPython,
}

#[derive(Debug)]
pub struct SamplerConfig {
    pub targets: StreamTargets,
    pub sampling: SamplingConfig,
    pub flush_interval: Duration,
    pub tasks: crate::tasks::TaskMode,
    pub labels: CommonLabels,
    pub interrupt: Arc<AtomicBool>,
    pub terminate: Arc<AtomicBool>,
}

const DISCOVERY_INTERVAL: Duration = Duration::from_secs(2);

fn monotonic_to_unix_nanos() -> i64 {
    let now = |clock| {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid timespec for clock_gettime to fill.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec * 1_000_000_000 + ts.tv_nsec
    };
    now(libc::CLOCK_REALTIME) - now(libc::CLOCK_MONOTONIC)
}

struct Flusher {
    cache: FrameCache,
    descriptors: BTreeMap<Pid, v1::Process>,
    labels: CommonLabels,
    rate_hz: u32,
}

impl Flusher {
    fn flush(&mut self, pipeline: &mut Pipeline) -> Option<v1::Batch> {
        let window = pipeline.profile.take_window();
        let tasks: TaskDeltas = pipeline.tasks.as_mut().map(|t| t.take_deltas()).unwrap_or_default();
        if window.samples.is_empty() && tasks.is_empty() {
            return None;
        }
        let mut new_keys: Vec<_> =
            window.stacks.iter().flat_map(|s| s.iter().copied()).filter(|k| !self.cache.contains_key(k)).collect();
        new_keys.sort_unstable();
        new_keys.dedup();
        let resolved = SymbolTable::resolve(new_keys.iter(), &pipeline.profile.strings, &pipeline.elf);
        for key in new_keys {
            self.cache.insert(key, resolved.frames(&key).into());
        }
        let mut processes = BTreeMap::new();
        for pid in window.samples.iter().map(|s| s.owner.pid).chain(tasks.keys().copied()) {
            if processes.contains_key(&pid) {
                continue;
            }
            let descriptor = self.descriptors.entry(pid).or_insert_with(|| {
                let ns_pid = pipeline.process(pid).map_or(pid.0, |s| s.ns_pid.0);
                let comm = pipeline.profile.process_names.get(&pid).map_or("", String::as_str);
                describe(pid, ns_pid, comm, &self.labels)
            });
            processes.insert(pid, descriptor.clone());
        }
        let cache = &self.cache;
        Some(BatchBuilder::default().build(
            &window,
            |k| cache.get(k).map_or(&[][..], |f| &f[..]),
            processes,
            &pipeline.profile.thread_names,
            &tasks,
            monotonic_to_unix_nanos(),
            self.rate_hz,
        ))
    }
}

fn count_tasks(metrics: &AgentMetrics, batch: &v1::Batch) {
    metrics.task_slices.inc_by(batch.tasks.iter().map(|b| b.slice_task.len() as u64).sum());
    metrics.lost_task_records.inc_by(batch.tasks.iter().map(|b| b.lost_records).sum());
}

/// Runs until the targets exit or a signal arrives. Reports start-up success or failure on
/// `ready` before sampling, and returns the launched command's exit.
pub fn run(
    config: SamplerConfig,
    batches: mpsc::Sender<v1::Batch>,
    metrics: Arc<AgentMetrics>,
    ready: std::sync::mpsc::Sender<Result<String, RecordError>>,
) -> Option<ChildExit> {
    let bootstrap = match &config.targets {
        StreamTargets::Fixed(t) => task_bootstrap(t, config.tasks),
        StreamTargets::AllPython => None,
    };
    let setup = || -> Result<(SamplingSession, Pipeline, Started), RecordError> {
        let mut session = SamplingSession::new(config.sampling.clone())?;
        let mut pipeline = Pipeline::new(config.sampling.follow_children);
        pipeline.profile.keep_timeline();
        if config.tasks != crate::tasks::TaskMode::Off {
            pipeline.tasks = Some(crate::tasks::TaskTracker::streaming());
        }
        let started = match &config.targets {
            StreamTargets::Fixed(t) => start_targets(t, &mut session, &mut pipeline, bootstrap.as_ref())?,
            StreamTargets::AllPython => {
                Started { pids: Vec::new(), launched: None, text: "all Python 3.12+ processes".into() }
            }
        };
        Ok((session, pipeline, started))
    };
    let (mut session, mut pipeline, started) = match setup() {
        Ok(ok) => ok,
        Err(e) => {
            let _ = ready.send(Err(e));
            return None;
        }
    };
    let _ = ready.send(Ok(started.text.clone()));
    let all_python = matches!(config.targets, StreamTargets::AllPython);
    let mut discovery = Discovery::default();
    let mut last_discovery: Option<Instant> = None;
    let mut flusher = Flusher {
        cache: FrameCache::new(),
        descriptors: BTreeMap::new(),
        labels: config.labels,
        rate_hz: config.sampling.rate_hz as u32,
    };
    let mut last_flush = Instant::now();
    let mut events = Vec::new();
    let mut child_exit = None;
    let mut lost_reported = 0;
    let mut samples_reported = 0;
    loop {
        if all_python && last_discovery.is_none_or(|t| t.elapsed() >= DISCOVERY_INTERVAL) {
            last_discovery = Some(Instant::now());
            for pid in discovery.scan(|p| pipeline.is_tracked(p)) {
                match session
                    .attach_process(pid)
                    .map_err(RecordError::from)
                    .and_then(|_| pipeline.track(pid).map(warn_about_runtime).map_err(RecordError::from))
                {
                    Ok(()) => tracing::info!("attached to {}", crate::record::describe(pid)),
                    Err(e) => tracing::warn!("could not attach to PID {pid}: {e}"),
                }
            }
        }
        session.wait(Duration::from_millis(100));
        process_batch(&mut session, &mut pipeline, &mut events);
        metrics.samples.inc_by(pipeline.stats.samples - samples_reported);
        samples_reported = pipeline.stats.samples;
        metrics.lost_records.inc_by(pipeline.stats.lost_records - lost_reported);
        lost_reported = pipeline.stats.lost_records;
        metrics.targets.set(pipeline.processes().filter(|p| !p.exited).count() as i64);
        if last_flush.elapsed() >= config.flush_interval {
            last_flush = Instant::now();
            if let Some(batch) = flusher.flush(&mut pipeline) {
                count_tasks(&metrics, &batch);
                if batches.blocking_send(batch).is_err() {
                    break;
                }
            }
            for pid in pipeline.forget_exited() {
                session.detach_process(pid);
                // A process whose task ring is still being read keeps its descriptor until
                // the tracker lets go, so its last task data lands in the same series.
                if !pipeline.tasks.as_ref().is_some_and(|t| t.is_reading(pid)) {
                    flusher.descriptors.remove(&pid);
                }
            }
            if let Some(tasks) = &mut pipeline.tasks {
                for pid in tasks.sweep() {
                    flusher.descriptors.remove(&pid);
                }
            }
        }
        if config.interrupt.load(Ordering::Relaxed) || config.terminate.load(Ordering::Relaxed) {
            if let (Some(pid), true) = (started.launched, config.terminate.load(Ordering::Relaxed)) {
                launch::forward_signal(pid, nix::sys::signal::Signal::SIGTERM);
            }
            break;
        }
        if let Some(pid) = started.launched {
            if let Some(exit) = launch::try_wait(pid) {
                child_exit = Some(exit);
                break;
            }
        } else if !all_python && started.pids.iter().all(|&p| !procfs::process_exists(p)) {
            tracing::info!("every target has exited");
            break;
        }
    }
    session.disable();
    process_batch(&mut session, &mut pipeline, &mut events);
    pipeline.finish();
    if let Some(batch) = flusher.flush(&mut pipeline) {
        count_tasks(&metrics, &batch);
        let _ = batches.blocking_send(batch);
    }
    drop(bootstrap);
    if let (Some(pid), None) = (started.launched, child_exit) {
        child_exit = Some(launch::wait(pid));
    }
    child_exit
}
