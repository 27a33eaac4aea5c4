//! `ember-agent record`: sample targets for a while with the [`sampling`](crate::sampling)
//! engine, then write one profile.

pub(crate) mod output;
pub(crate) mod trace;

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::aggregate::view::{self, ViewOptions};
use crate::export::{self, Format, Meta};
use crate::perf::SamplingConfig;
use crate::process::launch::ChildExit;
use crate::sampling::targets::warn_about_runtime;
use crate::sampling::{Engine, Keep, SamplingError, Signals, StopReason};
pub use crate::sampling::{Stats, Targets};
use crate::symbolize::native::NativeSymbolizer;
use crate::symbolize::SymbolTable;
use output::{Output, OutputError};

#[derive(Debug, Clone)]
pub struct RecordConfig {
    pub targets: Targets,
    pub duration: Option<std::time::Duration>,
    pub sampling: SamplingConfig,
    pub view: ViewOptions,
    pub output: Option<std::path::PathBuf>,
    pub format: Format,
    /// Whether to record asyncio tasks.
    pub tasks: crate::tasks::TaskMode,
    /// Keep a replay case of at most this many samples in this directory.
    pub capture_replay: Option<(std::path::PathBuf, usize)>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(transparent)]
    Capture(#[from] crate::replay::CaptureError),
    #[error("{0} already holds a replay case; name a new directory")]
    CaptureExists(std::path::PathBuf),
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

pub fn run(config: RecordConfig) -> Result<RecordOutcome, RecordError> {
    // Fail before recording, not after, if the result could not be written.
    let output = Output::open(config.output.as_deref(), config.format)?;
    if let Some((dir, _)) = &config.capture_replay {
        let case = dir.join(crate::replay::CASE_FILE);
        if case.symlink_metadata().is_ok() {
            return Err(RecordError::CaptureExists(case));
        }
    }
    let signals = Signals::install()?;
    let keep = if config.format == Format::Trace { Keep::CountsAndTimes } else { Keep::Counts };
    let mut engine = Engine::start(&config.sampling, keep, config.tasks, Some(&config.targets))?;
    engine.pipeline.capture = config.capture_replay.clone().map(|(dir, n)| crate::replay::Capture::new(dir, n));
    let target_text = engine.started().text.clone();
    let launched = engine.started().launched;
    tracing::info!(threads = engine.session.thread_count(), "recording {target_text}");

    let started = Instant::now();
    let start_unix_nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
    let reason = engine.run(&signals, config.duration, |_| std::ops::ControlFlow::Continue(()));
    let elapsed = started.elapsed();
    engine.finish();
    let pipeline = &mut engine.pipeline;
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

    let symbols = SymbolTable::resolve(
        pipeline.profile.frame_keys().iter(),
        &pipeline.profile.strings,
        &pipeline.elf,
        &NativeSymbolizer::new(),
    );
    let view = view::build(&pipeline.profile, &symbols, config.view);
    let meta = Meta {
        target: target_text.clone(),
        duration_secs: elapsed.as_secs_f64(),
        rate_hz: config.sampling.rate_hz,
        start_unix_nanos,
    };
    let stats = pipeline.stats;
    eprint!("{}", stats.summary(meta.duration_secs, meta.rate_hz));
    if let Some(tasks) = &pipeline.tasks {
        // Loops the task monitor cannot follow fully (uvloop) are named, not silently thinner.
        for (pid, timeline) in tasks.timelines() {
            for info in timeline.foreign_loops.values() {
                eprintln!("ember: asyncio: PID {pid}: loop {info}");
            }
        }
    }
    let written = if config.format == Format::Trace {
        output.write(|out| trace::write(pipeline, &symbols, config.view, &meta, out), &view)
    } else {
        output.write(|out| export::write(config.format, &view, &meta, out), &view)
    };

    // A launched command keeps running after --duration or Ctrl-C ends the recording;
    // its exit status is still ember's.
    let forward = (reason == StopReason::Terminated).then_some(nix::sys::signal::Signal::SIGTERM);
    let child_exit = engine.wait_for_command(forward);
    let captured = engine.pipeline.capture.take().map(|c| c.write(&target_text, &engine.pipeline.elf));
    written?;
    if let Some(path) = captured.transpose()? {
        eprintln!("replay case: {}", path.display());
    }
    Ok(RecordOutcome { stats, child_exit })
}
