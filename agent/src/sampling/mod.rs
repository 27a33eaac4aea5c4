//! The sampling engine that `record` and `stream` both drive: targets started, perf events
//! drained as the kernel wakes the loop, perf maps and task rings read, events sorted and fed
//! through the [`Pipeline`] (process tracking, unwinding, completion), until a stop condition
//! holds.
//!
//! What happens to unwound samples is the front end's choice ([`Keep`]): whole-profile
//! counts for `record`, timed windows handed out at each flush for `stream`.

mod memory;
pub(crate) mod pipeline;
pub(crate) mod stats;
pub(crate) mod targets;

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::aggregate::Keep;
use crate::perf::{PerfError, PerfEvent, SamplingConfig, SamplingSession};
use crate::process::launch::{self, ChildExit, LaunchError};
use crate::process::{procfs, Pid};
use crate::tasks::{bootstrap::Bootstrap, TaskMode, TaskTracker};
pub use pipeline::Pipeline;
pub use stats::Stats;
pub use targets::{describe, Started, Targets};

/// How often the loop checks its stop conditions, and processes what it drained when nothing
/// asks for sooner. Events ask for a wakeup per sample while the interpreter may be read (else
/// when a quarter of a ring is full), and what each wakeup drains is processed at once: the
/// read that completes a cut-off sample, or gives `--lines` the running frame's line, then comes
/// a fraction of a millisecond after it, while the thread is most likely still where it was
/// sampled.
const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum SamplingError {
    #[error("no process with PID {0} exists; check the PID with `ps -p {0}`")]
    NoSuchProcess(u32),
    #[error(transparent)]
    Perf(#[from] PerfError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("cannot read the target's /proc entries: {0}")]
    Procfs(#[from] procfs::ProcfsError),
    #[error("cannot install the Ctrl-C handler: {0}")]
    Signals(std::io::Error),
    #[error(
        "sampling from memory (--memory-only, or perf events refused) reads a running interpreter: start \
         the program, then attach with --pid"
    )]
    MemoryLaunch,
}

/// SIGINT and SIGTERM, as flags the loop checks every tick.
#[derive(Debug, Clone)]
pub struct Signals {
    pub interrupt: Arc<AtomicBool>,
    pub terminate: Arc<AtomicBool>,
}

impl Signals {
    pub fn install() -> Result<Self, SamplingError> {
        let interrupt = Arc::new(AtomicBool::new(false));
        let terminate = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGINT, interrupt.clone()).map_err(SamplingError::Signals)?;
        signal_hook::flag::register(signal_hook::consts::SIGTERM, terminate.clone()).map_err(SamplingError::Signals)?;
        Ok(Self { interrupt, terminate })
    }
}

/// Why sampling stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Interrupted,
    Terminated,
    Duration,
    TargetsExited,
    /// The front end asked (e.g. `stream`'s sender went away).
    FrontEnd,
}

/// The engine: one sampling session, one pipeline, and the targets it started.
#[derive(Debug)]
pub struct Engine {
    pub session: SamplingSession,
    pub pipeline: Pipeline,
    events: Vec<PerfEvent>,
    /// The task monitor's files and ring, for a launched command.
    bootstrap: Option<Bootstrap>,
    started: Started,
    /// How the launched command ended, once it has.
    pub child_exit: Option<ChildExit>,
    rate_hz: u64,
}

impl Engine {
    /// Opens the session and starts `targets` (none for `--all-python`, which attaches later
    /// through [`Engine::attach`]).
    pub fn start(
        sampling: &SamplingConfig,
        keep: Keep,
        tasks: TaskMode,
        targets: Option<&Targets>,
    ) -> Result<Self, SamplingError> {
        let mut session = SamplingSession::new(sampling.clone())?;
        let rate_hz = sampling.rate_hz;
        let mut pipeline = Pipeline::new(sampling.follow_children, keep);
        pipeline.read_interpreter = sampling.read_interpreter;
        pipeline.lines = sampling.lines;
        pipeline.activate = sampling.activate;
        if tasks != TaskMode::Off {
            let streaming = keep == Keep::Windows;
            pipeline.tasks = Some(if streaming { TaskTracker::streaming() } else { TaskTracker::default() });
        }
        let bootstrap = targets.and_then(|t| targets::task_bootstrap(t, tasks));
        let started = match targets {
            Some(t) => targets::start_targets(t, &mut session, &mut pipeline, bootstrap.as_ref())?,
            None => Started { pids: Vec::new(), launched: None, text: "all Python 3.12+ processes".into() },
        };
        Ok(Self { session, pipeline, events: Vec::new(), bootstrap, started, child_exit: None, rate_hz })
    }

    pub fn started(&self) -> &Started {
        &self.started
    }

    /// Starts sampling a process found after start-up.
    pub fn attach(&mut self, pid: Pid) -> Result<(), SamplingError> {
        self.session.attach_process(pid)?;
        self.pipeline.track(pid)?;
        if !self.session.memory_only {
            self.pipeline.activate_or_warn(pid);
        }
        Ok(())
    }

    /// Samples until SIGINT or SIGTERM, until `duration` has passed, until every target has
    /// exited, or until `tick` (called every [`TICK`]) breaks.
    pub fn run(
        &mut self,
        signals: &Signals,
        duration: Option<Duration>,
        mut tick: impl FnMut(&mut Self) -> ControlFlow<()>,
    ) -> StopReason {
        let started = Instant::now();
        let mut next_tick = started + TICK;
        let period = Duration::from_nanos(1_000_000_000 / self.rate_hz.max(1));
        let mut next_sample = started;
        loop {
            let memory = self.session.memory_only;
            let wake = if memory { next_tick.min(next_sample) } else { next_tick };
            self.session.wait(wake.saturating_duration_since(Instant::now()));
            if memory && Instant::now() >= next_sample {
                self.pipeline.sample_from_memory(procfs::monotonic_ns());
                // Intervals drawn from 0.5-1.5 periods: a fixed one aliases with a program that
                // repeats at a multiple of it. A round that ran late is not made up for.
                let interval = period.mul_f64(rand::random_range(0.5..1.5));
                next_sample = (next_sample + interval).max(Instant::now());
            }
            self.process_batch();
            let now = Instant::now();
            if now < next_tick {
                continue;
            }
            next_tick = now + TICK;
            if tick(self).is_break() {
                return StopReason::FrontEnd;
            }
            if signals.interrupt.load(Ordering::Relaxed) {
                return StopReason::Interrupted;
            }
            if signals.terminate.load(Ordering::Relaxed) {
                return StopReason::Terminated;
            }
            if duration.is_some_and(|d| started.elapsed() >= d) {
                return StopReason::Duration;
            }
            if self.targets_exited() {
                return StopReason::TargetsExited;
            }
        }
    }

    fn targets_exited(&mut self) -> bool {
        match self.started.launched {
            Some(pid) => {
                self.child_exit = launch::try_wait(pid);
                self.child_exit.is_some()
            }
            // `--all-python` started with no targets and runs until a signal.
            None => !self.started.pids.is_empty() && self.started.pids.iter().all(|&p| !procfs::process_exists(p)),
        }
    }

    /// Drains the rings, reads new perf-map lines and task records, then feeds the events
    /// through the pipeline in time order.
    pub fn process_batch(&mut self) {
        self.session.drain(&mut self.events);
        self.pipeline.poll_perf_maps();
        self.pipeline.poll_tasks();
        // Each CPU's buffer is in time order, but the buffers are not in order with each other.
        self.events.sort_by_key(PerfEvent::time);
        for event in self.events.drain(..) {
            self.pipeline.handle(event);
        }
    }

    /// Stops sampling and takes in what is left: the last events, perf-map lines and task
    /// records.
    pub fn finish(&mut self) {
        // A thread borrowed to queue an activation must be handed back before ember can exit.
        crate::activate::settle(std::time::Duration::from_secs(10));
        self.session.disable();
        self.process_batch();
        self.pipeline.finish();
        self.pipeline.stats.decode_errors = self.session.stats().decode_errors;
    }

    /// Passes a signal on to the launched command, if it still runs.
    pub fn forward_to_command(&self, signal: nix::sys::signal::Signal) {
        if let (Some(pid), None) = (self.started.launched, self.child_exit) {
            launch::forward_signal(pid, signal);
        }
    }

    /// The launched command's exit, waiting for it if it still runs (after `forward`, if
    /// given, is sent to it). The task monitor's files are removed only then: processes the
    /// command starts later load them too.
    pub fn wait_for_command(&mut self, forward: Option<nix::sys::signal::Signal>) -> Option<ChildExit> {
        if let (Some(pid), None) = (self.started.launched, self.child_exit) {
            if let Some(signal) = forward {
                launch::forward_signal(pid, signal);
            }
            self.child_exit = Some(launch::wait(pid));
        }
        self.bootstrap = None;
        self.child_exit
    }
}
