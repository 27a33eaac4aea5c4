//! The sampling thread of `stream`: the same perf → unwind → aggregate loop as `record`, cut
//! into windows every flush interval, each turned into a batch for the sender.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_proto::v1;
use tokio::sync::mpsc;

use super::batch::{BatchBuilder, FrameCache, TaskDeltas};
use super::clock::UnixOffset;
use super::describe::{apply_kubernetes, describe, CommonLabels};
use super::discovery::Discovery;
use super::metrics::AgentMetrics;
use crate::perf::SamplingConfig;
use crate::process::launch::ChildExit;
use crate::process::Pid;
use crate::sampling::{describe as describe_pid, Engine, Keep, Pipeline, SamplingError, Signals, StopReason, Targets};
use crate::symbolize::native::NativeSymbolizer;
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
    pub signals: Signals,
    /// `--kubernetes`: the node's pods.
    pub pods: Option<super::kubernetes::PodDirectory>,
}

const DISCOVERY_INTERVAL: Duration = Duration::from_secs(2);

struct Flusher {
    cache: FrameCache,
    /// One for the whole run: it keeps what it parsed of each image between flushes.
    symbolizer: NativeSymbolizer,
    descriptors: BTreeMap<Pid, v1::Process>,
    labels: CommonLabels,
    pods: Option<super::kubernetes::PodDirectory>,
    /// Processes in a pod the directory did not know when they were described, and the
    /// directory's generation they were last looked up in.
    unresolved: BTreeSet<Pid>,
    pods_seen: u64,
    rate_hz: u32,
    unix_offset: UnixOffset,
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
        let resolved =
            SymbolTable::resolve(new_keys.iter(), &pipeline.profile.strings, &pipeline.elf, &self.symbolizer);
        for key in new_keys {
            self.cache.insert(key, resolved.frames(&key).into());
        }
        self.resolve_pods();
        let mut processes = BTreeMap::new();
        for pid in window.samples.iter().map(|s| s.owner.pid).chain(tasks.keys().copied()) {
            if processes.contains_key(&pid) {
                continue;
            }
            let descriptor = self.descriptors.entry(pid).or_insert_with(|| {
                let ns_pid = pipeline.process(pid).map_or(pid.0, |s| s.ns_pid.0);
                let comm = pipeline.profile.process_names.get(&pid).map_or("", String::as_str);
                let mut descriptor = describe(pid, ns_pid, comm, &self.labels);
                if let Some(pods) = &self.pods {
                    if !apply_kubernetes(&mut descriptor, pods.lookup(pid)) {
                        self.unresolved.insert(pid);
                    }
                }
                descriptor
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
            self.unix_offset.current(),
            self.rate_hz,
        ))
    }
}

impl Flusher {
    /// Looks the processes whose pod was unknown up again, once a new pod list came.
    fn resolve_pods(&mut self) {
        let Some(pods) = &self.pods else { return };
        let generation = pods.generation();
        if generation == self.pods_seen {
            return;
        }
        self.pods_seen = generation;
        let descriptors = &mut self.descriptors;
        self.unresolved.retain(|pid| {
            descriptors.get_mut(pid).is_some_and(|descriptor| !apply_kubernetes(descriptor, pods.lookup(*pid)))
        });
    }

    /// Flushes a window and hands it to the sender; breaks when the sender has gone.
    fn send(
        &mut self,
        pipeline: &mut Pipeline,
        metrics: &AgentMetrics,
        batches: &mpsc::Sender<v1::Batch>,
    ) -> ControlFlow<()> {
        if let Some(batch) = self.flush(pipeline) {
            count_tasks(metrics, &batch);
            if batches.blocking_send(batch).is_err() {
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
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
    ready: std::sync::mpsc::Sender<Result<String, SamplingError>>,
) -> Option<ChildExit> {
    let targets = match &config.targets {
        StreamTargets::Fixed(t) => Some(t),
        StreamTargets::AllPython => None,
    };
    let mut engine = match Engine::start(&config.sampling, Keep::Windows, config.tasks, targets) {
        Ok(engine) => engine,
        Err(e) => {
            let _ = ready.send(Err(e));
            return None;
        }
    };
    let _ = ready.send(Ok(engine.started().text.clone()));
    let all_python = targets.is_none();
    let mut discovery = Discovery::default();
    let mut last_discovery: Option<Instant> = None;
    let mut flusher = Flusher {
        cache: FrameCache::new(),
        symbolizer: NativeSymbolizer::new(),
        descriptors: BTreeMap::new(),
        labels: config.labels,
        pods: config.pods,
        unresolved: BTreeSet::new(),
        pods_seen: 0,
        rate_hz: config.sampling.rate_hz as u32,
        unix_offset: UnixOffset::new(),
    };
    let mut last_flush = Instant::now();
    let (mut lost_reported, mut samples_reported) = (0, 0);
    let reason = engine.run(&config.signals, None, |engine| {
        let pipeline = &mut engine.pipeline;
        metrics.samples.inc_by(pipeline.stats.samples - samples_reported);
        samples_reported = pipeline.stats.samples;
        metrics.lost_records.inc_by(pipeline.stats.lost_records - lost_reported);
        lost_reported = pipeline.stats.lost_records;
        metrics.targets.set(pipeline.processes().filter(|p| !p.exited).count() as i64);
        if last_flush.elapsed() >= config.flush_interval {
            last_flush = Instant::now();
            if flusher.send(pipeline, &metrics, &batches).is_break() {
                return ControlFlow::Break(());
            }
            for pid in pipeline.forget_exited() {
                engine.session.detach_process(pid);
                // A process whose task ring is still being read keeps its descriptor until
                // the tracker lets go, so its last task data lands in the same series.
                if !engine.pipeline.tasks.as_ref().is_some_and(|t| t.is_reading(pid)) {
                    flusher.descriptors.remove(&pid);
                }
            }
            if let Some(tasks) = &mut engine.pipeline.tasks {
                for pid in tasks.sweep() {
                    flusher.descriptors.remove(&pid);
                }
            }
        }
        if all_python && last_discovery.is_none_or(|t| t.elapsed() >= DISCOVERY_INTERVAL) {
            last_discovery = Some(Instant::now());
            for pid in discovery.scan(|p| engine.pipeline.is_tracked(p)) {
                match engine.attach(pid) {
                    Ok(()) => tracing::info!("attached to {}", describe_pid(pid)),
                    Err(e) => tracing::warn!("could not attach to PID {pid}: {e}"),
                }
            }
        }
        ControlFlow::Continue(())
    });
    if reason == StopReason::TargetsExited && engine.started().launched.is_none() && !all_python {
        tracing::info!("every target has exited");
    }
    // A service shut down with SIGTERM hears it at once, while the last batch is sent.
    if reason == StopReason::Terminated {
        engine.forward_to_command(nix::sys::signal::Signal::SIGTERM);
    }
    engine.finish();
    let _ = flusher.send(&mut engine.pipeline, &metrics, &batches);
    engine.wait_for_command(None)
}
