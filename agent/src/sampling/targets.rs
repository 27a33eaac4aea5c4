//! Starting what the engine samples: attaching to running processes, or launching a command
//! held at a gate until its events are open, with the task monitor bootstrapped into it.

use crate::perf::{PerfError, SamplingSession};
use crate::process::launch;
use crate::process::target_file::Owner;
use crate::process::{procfs, Pid, ProcessState};
use crate::symbolize::perf_map::{MapLocation, PerfMapReader};

use super::pipeline::Pipeline;
use super::SamplingError;

/// What to profile.
#[derive(Debug, Clone)]
pub enum Targets {
    Pids(Vec<Pid>),
    Command(Vec<String>),
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
) -> Result<Started, SamplingError> {
    match targets {
        Targets::Pids(pids) => {
            for &pid in pids {
                if !procfs::process_exists(pid) {
                    return Err(SamplingError::NoSuchProcess(pid.0));
                }
            }
            for &pid in pids {
                // Listed before the target's events exist: a child forked after that inherits
                // them, and must not be attached a second time.
                let children = if pipeline.follows_children() {
                    procfs::descendants(pid, MAX_EXISTING_CHILDREN)
                } else {
                    Vec::new()
                };
                session.attach_process(pid).map_err(|e| match e {
                    PerfError::NoSuchProcess(_) => SamplingError::NoSuchProcess(pid.0),
                    other => SamplingError::Perf(other),
                })?;
                pipeline.track(pid).map_err(|_| SamplingError::NoSuchProcess(pid.0))?;
                // Memory samples need no trampoline.
                if !session.memory_only {
                    pipeline.activate_or_warn(pid);
                }
                attach_existing_children(&children, session, pipeline)?;
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
            let owner = procfs::identity(child.pid).map_or(Owner::OneOf(Vec::new()), |(_, uids)| Owner::OneOf(uids));
            let map = MapLocation { pid: child.pid, file_name: format!("perf-{}.map", child.pid), owner };
            pipeline.expect_launched(child.pid, PerfMapReader::new(map).stale_part());
            if let Err(e) = session.attach_thread(crate::process::Tid(child.pid.0), true) {
                child.abort();
                return Err(e.into());
            }
            if session.memory_only {
                child.abort();
                return Err(SamplingError::MemoryLaunch);
            }
            let pid = child.release()?;
            Ok(Started { pids: vec![pid], launched: Some(pid), text: format!("{} (PID {pid})", command.join(" ")) })
        }
    }
}

/// Most children of a `--pid` target that `--subprocesses` attaches to at start.
const MAX_EXISTING_CHILDREN: usize = 4096;

/// `--subprocesses` with `--pid`: the children that already run (a pre-fork server's workers)
/// are followed like those forked later. A child that exits meanwhile is skipped.
fn attach_existing_children(
    children: &[Pid],
    session: &mut SamplingSession,
    pipeline: &mut Pipeline,
) -> Result<(), SamplingError> {
    for &child in children {
        match session.attach_process(child) {
            Ok(_) => {}
            Err(PerfError::NoSuchProcess(_)) => continue,
            Err(e) => return Err(e.into()),
        }
        if pipeline.track(child).is_ok() {
            tracing::info!("following {}, which already ran", describe(child));
            // Each pre-forked worker has its own interpreter to turn the trampoline on in.
            if !session.memory_only {
                pipeline.activate_or_warn(child);
            }
        }
    }
    Ok(())
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
    } else if !state.perf_map_reader.has_own_map() {
        tracing::warn!(
            "PID {pid} runs {runtime} but its perf trampoline is off (no {}), so Python frames cannot be named. \
             Start it with `python -X perf`, or with PYTHONPERFSUPPORT=1 in its environment, or call \
             `sys.activate_stack_trampoline(\"perf\")` inside it. Recording native stacks meanwhile; \
             ember picks the map up if it appears",
            state.perf_map_reader.display_path()
        );
    }
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
