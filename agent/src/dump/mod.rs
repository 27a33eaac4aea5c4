//! The `dump` front end: what every thread of a Python process is running right now, read from
//! the interpreter's memory (stage **interp**) without stopping the process, as `py-spy dump`
//! does.

mod tasks;
mod text;

use serde::Serialize;

use crate::interp::{AttachError, Interpreter, ObjectError, PyFrame, WalkEnd};
use crate::process::{procfs, Pid, ProcessState, Tid};
use crate::unwind::ElfCache;

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("cannot read process {pid}")]
    Process { pid: Pid, source: procfs::ProcfsError },
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error("reading the threads of process {pid} failed")]
    Read { pid: Pid, source: ObjectError },
    #[error("cannot write the dump: {0}")]
    Write(#[from] std::io::Error),
}

#[derive(Debug, Clone, Copy)]
pub struct DumpConfig {
    pub pid: Pid,
    pub json: bool,
}

/// One process's threads, as printed (text) or serialized (`--json`).
#[derive(Debug, Serialize)]
pub struct Dump {
    pub pid: u32,
    pub command: String,
    pub python: String,
    /// The file the interpreter was found in.
    pub interpreter: String,
    /// Whether the process was stopped while read (never: reads race with it, and each object
    /// is checked instead).
    pub stopped: bool,
    /// Whether the threads, and then the tasks, were each read at (nearly) one moment: every
    /// memory block a walk needed copied in one system call. `false` when they kept changing
    /// over several tries, so a stack may mix two moments.
    pub at_one_moment: bool,
    pub threads: Vec<ThreadDump>,
    /// asyncio's tasks as a tree: each task holds the tasks it waits for.
    pub tasks: Vec<tasks::TaskDump>,
    /// Why the tasks could not be read, if they could not (the threads still are).
    pub tasks_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ThreadDump {
    /// The thread id as ember's PID namespace sees it, when the thread still exists.
    pub tid: Option<u32>,
    /// The id the interpreter recorded, in the target's own PID namespace.
    pub native_id: u64,
    pub name: Option<String>,
    pub holds_gil: bool,
    /// Innermost first.
    pub frames: Vec<FrameDump>,
    /// `null` when the walk reached the outermost frame, else why the frames stop.
    pub incomplete: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct FrameDump {
    pub function: String,
    pub file: String,
    pub line: Option<u32>,
}

impl From<&PyFrame> for FrameDump {
    fn from(frame: &PyFrame) -> Self {
        FrameDump { function: frame.code.qualname.clone(), file: frame.code.filename.clone(), line: frame.line() }
    }
}

/// Reads the process and writes its dump to stdout.
pub fn run(config: DumpConfig) -> Result<(), DumpError> {
    let dump = read(config.pid)?;
    let mut out = std::io::stdout().lock();
    if config.json {
        serde_json::to_writer_pretty(&mut out, &dump).map_err(std::io::Error::from)?;
        std::io::Write::write_all(&mut out, b"\n")?;
    } else {
        text::write(&mut out, &dump)?;
    }
    Ok(())
}

pub fn read(pid: Pid) -> Result<Dump, DumpError> {
    let mut elf = ElfCache::default();
    let process = ProcessState::from_proc(pid, &mut elf).map_err(|source| DumpError::Process { pid, source })?;
    let mut interpreter = Interpreter::attach(&process)?;
    let (threads, at_one_moment) = interpreter.threads().map_err(|source| DumpError::Read { pid, source })?;
    let host_tids = host_tids(pid);
    let mut threads: Vec<ThreadDump> = threads
        .into_iter()
        .map(|t| {
            let tid = host_tids.iter().find(|(ns, _)| u64::from(*ns) == t.native_id).map(|(_, tid)| *tid);
            ThreadDump {
                tid: tid.map(|t| t.0),
                native_id: t.native_id,
                name: tid.and_then(|tid| procfs::comm(pid, tid)),
                holds_gil: t.holds_gil,
                frames: t.frames.iter().map(FrameDump::from).collect(),
                incomplete: match t.end {
                    WalkEnd::Root => None,
                    WalkEnd::Broken(e) => Some(format!("the frame chain could not be read further: {e}")),
                    WalkEnd::TooDeep => Some(format!("deeper than {} frames", crate::interp::MAX_FRAMES)),
                    WalkEnd::Loop => {
                        Some("the frame chain loops back on itself (it changed while read, or is corrupt)".into())
                    }
                },
            }
        })
        .collect();
    // The main thread first, then by id, rather than CPython's newest-first list.
    threads.sort_by_key(|t| (t.tid != Some(pid.0), t.tid, t.native_id));
    let (tasks, tasks_error, tasks_at_once) = match interpreter.tasks() {
        Ok((found, at_once)) => (tasks::tree(found), None, at_once),
        Err(e) => (Vec::new(), Some(e.to_string()), true),
    };
    Ok(Dump {
        pid: pid.0,
        command: procfs::cmdline(pid).map(|c| c.join(" ")).unwrap_or_else(|| process.comm.clone()),
        python: interpreter.version().to_string(),
        interpreter: interpreter.image().to_string(),
        stopped: false,
        at_one_moment: at_one_moment && tasks_at_once,
        threads,
        tasks,
        tasks_error,
    })
}

/// Each thread's id in the target's PID namespace with its id in ours.
fn host_tids(pid: Pid) -> Vec<(u32, Tid)> {
    let tids = procfs::threads(pid).unwrap_or_default();
    tids.into_iter().filter_map(|tid| Some((procfs::task_ns_tid(pid, tid)?, tid))).collect()
}
