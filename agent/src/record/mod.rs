//! `ember-agent record`: sample targets for a while, then write one profile.

pub mod output;
pub mod pipeline;
pub mod stats;
pub mod trace;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::aggregate::view::{self, ViewOptions};
use crate::export::{self, Format, Meta};
use crate::perf::{PerfError, SamplingConfig, SamplingSession};
use crate::process::launch::{self, ChildExit, LaunchError};
use crate::process::target_file::Owner;
use crate::process::{procfs, Pid, ProcessState};
use crate::symbolize::perf_map::{MapLocation, PerfMapReader};
use crate::symbolize::SymbolTable;
use output::{Output, OutputError};
use pipeline::Pipeline;
pub use stats::Stats;

/// What to profile.
#[derive(Debug, Clone)]
pub enum Targets {
    Pids(Vec<Pid>),
    Command(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct RecordConfig {
    pub targets: Targets,
    pub duration: Option<Duration>,
    pub sampling: SamplingConfig,
    pub view: ViewOptions,
    pub output: Option<std::path::PathBuf>,
    pub format: Format,
    /// Whether to record asyncio tasks.
    pub tasks: crate::tasks::TaskMode,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("no process with PID {0} exists; check the PID with `ps -p {0}`")]
    NoSuchProcess(u32),
    #[error(transparent)]
    Perf(#[from] PerfError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("cannot read the target's /proc entries: {0}")]
    Procfs(#[from] procfs::ProcfsError),
    #[error("cannot install the Ctrl-C handler: {0}")]
    Signals(std::io::Error),
}

/// How a recording ended.
#[derive(Debug)]
pub struct RecordOutcome {
    pub stats: Stats,
    /// The launched command's exit, when ember started it.
    pub child_exit: Option<ChildExit>,
}

impl RecordOutcome {
    /// The exit status for ember: the launched command's, or 0.
    pub fn exit_code(&self) -> i32 {
        self.child_exit.map_or(0, ChildExit::shell_status)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Interrupted,
    Terminated,
    Duration,
    TargetsExited,
}

struct Signals {
    interrupt: Arc<AtomicBool>,
    terminate: Arc<AtomicBool>,
}

impl Signals {
    fn install() -> Result<Self, RecordError> {
        let interrupt = Arc::new(AtomicBool::new(false));
        let terminate = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGINT, interrupt.clone()).map_err(RecordError::Signals)?;
        signal_hook::flag::register(signal_hook::consts::SIGTERM, terminate.clone()).map_err(RecordError::Signals)?;
        Ok(Self { interrupt, terminate })
    }
}

pub fn describe(pid: Pid) -> String {
    let cmd = procfs::cmdline(pid).map(|c| c.join(" ")).unwrap_or_default();
    if cmd.is_empty() {
        format!("PID {pid}")
    } else {
        format!("{cmd} (PID {pid})")
    }
}

/// The targets once sampling is set up.
#[derive(Debug)]
pub struct Started {
    pub pids: Vec<Pid>,
    /// The launched command's PID, when ember started it.
    pub launched: Option<Pid>,
    /// What is being profiled, for titles and logs.
    pub text: String,
}

/// Attaches to `--pid` targets or launches the command, with events open before it runs.
pub fn start_targets(
    targets: &Targets,
    session: &mut SamplingSession,
    pipeline: &mut Pipeline,
    bootstrap: Option<&crate::tasks::bootstrap::Bootstrap>,
) -> Result<Started, RecordError> {
    match targets {
        Targets::Pids(pids) => {
            for &pid in pids {
                if !procfs::process_exists(pid) {
                    return Err(RecordError::NoSuchProcess(pid.0));
                }
            }
            for &pid in pids {
                session.attach_process(pid).map_err(|e| match e {
                    PerfError::NoSuchProcess(_) => RecordError::NoSuchProcess(pid.0),
                    other => RecordError::Perf(other),
                })?;
                let state = pipeline.track(pid).map_err(|_| RecordError::NoSuchProcess(pid.0))?;
                warn_about_runtime(state);
            }
            let text = pids.iter().map(|&p| describe(p)).collect::<Vec<_>>().join(", ");
            Ok(Started { pids: pids.clone(), launched: None, text })
        }
        Targets::Command(command) => {
            let monitor_env = bootstrap.map(|b| b.env());
            let mut env = vec![("PYTHONPERFSUPPORT", "1")];
            for (key, value) in monitor_env.iter().flatten() {
                env.push((key, value.as_str()));
            }
            let child = match bootstrap {
                Some(b) => launch::spawn_gated(command, &env, &|| b.ring.prepare_child())?,
                None => launch::spawn_gated(command, &env, &|| {})?,
            };
            if let (Some(b), Some(tasks)) = (bootstrap, pipeline.tasks.as_mut()) {
                match b.ring.reader() {
                    Ok(reader) => tasks.adopt(child.pid, reader, false),
                    Err(e) => tracing::warn!("cannot read the task ring made for the command: {e}"),
                }
            }
            // What a map of an earlier process with this PID already holds is stale.
            let owner = procfs::uids(child.pid).map_or(Owner::OneOf(Vec::new()), Owner::OneOf);
            let map = MapLocation { pid: child.pid, file_name: format!("perf-{}.map", child.pid), owner };
            pipeline.expect_launched(child.pid, PerfMapReader::new(map).current_len());
            if let Err(e) = session.attach_thread(crate::process::Tid(child.pid.0), true) {
                child.abort();
                return Err(e.into());
            }
            let pid = child.release()?;
            Ok(Started { pids: vec![pid], launched: Some(pid), text: format!("{} (PID {pid})", command.join(" ")) })
        }
    }
}

/// Tells the user, once per process, what ember can and cannot see in it.
pub fn warn_about_runtime(state: &ProcessState) {
    let pid = state.pid;
    let runtime = state.runtime;
    if !runtime.is_python() {
        tracing::warn!("PID {pid} ({}) is not a Python process; recording native stacks only", state.comm);
    } else if !runtime.has_perf_trampoline() {
        tracing::warn!(
            "PID {pid} runs {runtime}, which has no perf trampoline; recording native stacks only. \
             Python frames need CPython 3.12 or newer"
        );
    } else if !state.perf_map_reader.is_open() {
        tracing::warn!(
            "PID {pid} runs {runtime} but its perf trampoline is off (no {}), so Python frames cannot be named. \
             Start it with `python -X perf`, or with PYTHONPERFSUPPORT=1 in its environment, or call \
             `sys.activate_stack_trampoline(\"perf\")` inside it. Recording native stacks meanwhile; \
             ember picks the map up if it appears",
            state.perf_map_reader.display_path()
        );
    }
}

pub fn run(config: RecordConfig) -> Result<RecordOutcome, RecordError> {
    // Fail before recording, not after, if the result could not be written.
    let output = Output::open(config.output.as_deref(), config.format)?;
    let signals = Signals::install()?;
    let mut session = SamplingSession::new(config.sampling.clone())?;
    let mut pipeline = Pipeline::new(config.sampling.follow_children);

    let bootstrap = task_bootstrap(&config.targets, config.tasks);
    if config.tasks != crate::tasks::TaskMode::Off {
        pipeline.tasks = Some(crate::tasks::TaskTracker::default());
    }
    if config.format == Format::Trace {
        pipeline.profile.keep_timeline();
    }
    let Started { pids: target_pids, launched, text: target_text } =
        start_targets(&config.targets, &mut session, &mut pipeline, bootstrap.as_ref())?;
    tracing::info!(threads = session.thread_count(), "recording {target_text}");

    let started = Instant::now();
    let start_unix_nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
    let mut events = Vec::new();
    let mut child_exit = None;
    let reason = loop {
        session.wait(Duration::from_millis(100));
        process_batch(&mut session, &mut pipeline, &mut events);
        if signals.interrupt.load(Ordering::Relaxed) {
            break StopReason::Interrupted;
        }
        if signals.terminate.load(Ordering::Relaxed) {
            break StopReason::Terminated;
        }
        if config.duration.is_some_and(|d| started.elapsed() >= d) {
            break StopReason::Duration;
        }
        match launched {
            Some(pid) => {
                if let Some(exit) = launch::try_wait(pid) {
                    child_exit = Some(exit);
                    break StopReason::TargetsExited;
                }
            }
            None => {
                if target_pids.iter().all(|&p| !procfs::process_exists(p)) {
                    break StopReason::TargetsExited;
                }
            }
        }
    };
    let elapsed = started.elapsed();
    session.disable();
    process_batch(&mut session, &mut pipeline, &mut events);
    pipeline.finish();
    pipeline.stats.decode_errors = session.stats().decode_errors;
    if let Some(tasks) = &pipeline.tasks {
        for (_, timeline) in tasks.timelines() {
            pipeline.stats.tasks += timeline.tasks.len() as u64;
            pipeline.stats.task_slices += timeline.tasks.values().map(|t| t.slices.len() as u64).sum::<u64>();
        }
        pipeline.stats.lost_task_records = tasks.lost_records;
    }
    match reason {
        StopReason::Interrupted => tracing::info!("interrupted; writing what was recorded"),
        StopReason::TargetsExited if launched.is_none() => {
            tracing::info!("the target exited; writing what was recorded")
        }
        _ => {}
    }
    if let Some(state) = launched.and_then(|pid| pipeline.process(pid)) {
        if !state.runtime.has_perf_trampoline() || state.perf_map.is_empty() {
            warn_about_runtime(state);
        }
    }

    let symbols = SymbolTable::resolve(pipeline.profile.frame_keys().iter(), &pipeline.profile.strings, &pipeline.elf);
    let view = view::build(&pipeline.profile, &symbols, config.view);
    let meta = Meta {
        target: target_text,
        duration_secs: elapsed.as_secs_f64(),
        rate_hz: config.sampling.rate_hz,
        start_unix_nanos,
    };
    let stats = pipeline.stats;
    eprint!("{}", stats.summary(meta.duration_secs, meta.rate_hz));
    let written = if config.format == Format::Trace {
        output.write(|out| trace::write(&pipeline, &symbols, config.view, &meta, out), &view)
    } else {
        output.write(|out| export::write(config.format, &view, &meta, out), &view)
    };
    drop(bootstrap);

    // A launched command keeps running after --duration or Ctrl-C ends the recording;
    // its exit status is still ember's.
    if let (Some(pid), None) = (launched, child_exit) {
        if reason == StopReason::Terminated {
            launch::forward_signal(pid, nix::sys::signal::Signal::SIGTERM);
        }
        child_exit = Some(launch::wait(pid));
    }
    written?;
    Ok(RecordOutcome { stats, child_exit })
}

/// The task monitor's files, for a launched command when tasks are wanted.
pub fn task_bootstrap(targets: &Targets, mode: crate::tasks::TaskMode) -> Option<crate::tasks::bootstrap::Bootstrap> {
    use crate::tasks::TaskMode;
    if mode == TaskMode::Off {
        return None;
    }
    if !matches!(targets, Targets::Command(_)) {
        if mode == TaskMode::Explicit {
            tracing::warn!(
                "--tasks starts the task monitor only in commands ember launches (attaching it to running \
                 processes comes later); targets that call ember_monitor.start() themselves are still read"
            );
        }
        return None;
    }
    match crate::tasks::bootstrap::Bootstrap::prepare() {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!("cannot prepare the asyncio task monitor ({e}); recording without task data");
            None
        }
    }
}

pub fn process_batch(session: &mut SamplingSession, pipeline: &mut Pipeline, events: &mut Vec<crate::perf::PerfEvent>) {
    session.drain(events);
    pipeline.poll_perf_maps();
    pipeline.poll_tasks();
    // Each CPU's buffer is in time order, but the buffers are not in order with each other.
    events.sort_by_key(crate::perf::PerfEvent::time);
    for event in events.drain(..) {
        pipeline.handle(event);
    }
}
