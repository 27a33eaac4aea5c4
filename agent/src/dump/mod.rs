//! The `dump` front end: what every thread of a Python process is running right now, read from
//! the interpreter's memory (stage **interp**) without stopping the process, as `py-spy dump`
//! does.

mod native;
mod tasks;
mod text;

use serde::Serialize;

use crate::interp::{AttachError, Interpreter, ObjectError, PyFrame, PyThread, WalkEnd};
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
    #[error(transparent)]
    Native(#[from] native::NativeError),
    #[error("cannot write the dump: {0}")]
    Write(#[from] std::io::Error),
}

#[derive(Debug, Clone, Copy)]
pub struct DumpConfig {
    pub pid: Pid,
    pub json: bool,
    /// Native frames too: stops the process for a moment (ptrace).
    pub native: bool,
}

/// One process's threads, as printed (text) or serialized (`--json`).
#[derive(Debug, Serialize)]
pub struct Dump {
    pub pid: u32,
    pub command: String,
    pub python: String,
    /// The file the interpreter was found in.
    pub interpreter: String,
    /// Whether the process was stopped while read: only with `--native`, to take each thread's
    /// registers and stack (memory reads race with the process, and each object is checked).
    pub stopped: bool,
    /// For how long, from stopping the first thread to letting the last go.
    pub stopped_for_us: Option<u64>,
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
    /// Whether the interpreter has a state for the thread; `false` for a thread that never ran
    /// Python (listed with `--native` only).
    pub python: bool,
    pub holds_gil: bool,
    /// Innermost first.
    pub frames: Vec<FrameDump>,
    /// `null` when the walk reached the outermost frame, else why the frames stop.
    pub incomplete: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FrameDump {
    pub function: String,
    /// The source file of a Python frame; the image (or source file, with debug info) of a
    /// native one.
    pub file: String,
    pub line: Option<u32>,
    /// A native frame (`--native`), not a Python one.
    pub native: bool,
}

impl FrameDump {
    fn marker(text: &str) -> Self {
        FrameDump { function: text.into(), file: String::new(), line: None, native: false }
    }
}

impl From<&PyFrame> for FrameDump {
    fn from(frame: &PyFrame) -> Self {
        FrameDump {
            function: frame.code.qualname.clone(),
            file: frame.code.filename.clone(),
            line: frame.line(),
            native: false,
        }
    }
}

/// Reads the process and writes its dump to stdout.
pub fn run(config: DumpConfig) -> Result<(), DumpError> {
    let dump = read(config.pid, config.native)?;
    let mut out = std::io::stdout().lock();
    if config.json {
        serde_json::to_writer_pretty(&mut out, &dump).map_err(std::io::Error::from)?;
        std::io::Write::write_all(&mut out, b"\n")?;
    } else {
        text::write(&mut out, &dump)?;
    }
    Ok(())
}

/// Reads the process: from memory only, or with `native` also each thread's registers and
/// stack, taken while it is stopped for a moment.
pub fn read(pid: Pid, native: bool) -> Result<Dump, DumpError> {
    let mut elf = ElfCache::default();
    let mut process = ProcessState::from_proc(pid, &mut elf).map_err(|source| DumpError::Process { pid, source })?;
    let mut interpreter = Interpreter::attach(&process)?;
    let (taken, read, stopped_for) = if native {
        let (taken, read, stopped_for) = native::while_stopped(pid, || interpreter.threads())?;
        (taken, read, Some(stopped_for))
    } else {
        (Vec::new(), interpreter.threads(), None)
    };
    let (threads, at_one_moment) = read.map_err(|source| DumpError::Read { pid, source })?;
    // 3.12/3.13 keep the names `threading` gives in Python only; 3.14+ also give the OS
    // their first 15 bytes, so threading's whole name is preferred where it can be read.
    let python_names = interpreter.thread_names();
    let host_tids = procfs::ns_tids(pid);
    if native {
        process.without_interpreter_reads();
    }
    let mut threads: Vec<ThreadDump> = threads
        .into_iter()
        .map(|t| {
            let tid = host_tids.iter().find(|(ns, _)| u64::from(*ns) == t.native_id).map(|(_, tid)| *tid);
            let frames = match native {
                true => native::merge(&mut process, &mut elf, &taken, &t, tid),
                false => None,
            };
            ThreadDump {
                tid: tid.map(|t| t.0),
                native_id: t.native_id,
                name: python_names.get(&t.native_id).cloned().or_else(|| tid.and_then(|tid| procfs::comm(pid, tid))),
                python: true,
                holds_gil: t.holds_gil,
                frames: frames.unwrap_or_else(|| t.frames.iter().map(FrameDump::from).collect()),
                incomplete: incomplete(&t.end),
            }
        })
        .collect();
    // With `--native`, the threads that never ran Python too (a C library's worker can be what
    // a stuck process waits for).
    let native_only: Vec<Tid> =
        taken.iter().map(|t| t.tid).filter(|tid| !threads.iter().any(|d| d.tid == Some(tid.0))).collect();
    for tid in native_only {
        let native_id = host_tids.iter().find(|(_, host)| *host == tid).map_or(0, |(ns, _)| u64::from(*ns));
        let none = PyThread { native_id, holds_gil: false, frames: Vec::new(), end: WalkEnd::Root, shims: Vec::new() };
        threads.push(ThreadDump {
            tid: Some(tid.0),
            native_id,
            name: procfs::comm(pid, tid),
            python: false,
            holds_gil: false,
            frames: native::merge(&mut process, &mut elf, &taken, &none, Some(tid)).unwrap_or_default(),
            incomplete: None,
        });
    }
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
        stopped: stopped_for.is_some(),
        stopped_for_us: stopped_for.map(|d| d.as_micros() as u64),
        at_one_moment: at_one_moment && tasks_at_once,
        threads,
        tasks,
        tasks_error,
    })
}

/// Why a thread's Python frames stop short, if they do.
fn incomplete(end: &WalkEnd) -> Option<String> {
    match end {
        WalkEnd::Root => None,
        WalkEnd::Broken(e) => Some(format!("the frame chain could not be read further: {e}")),
        WalkEnd::TooDeep => Some(format!("deeper than {} frames", crate::interp::MAX_FRAMES)),
        WalkEnd::Loop => Some("the frame chain loops back on itself (it changed while read, or is corrupt)".into()),
    }
}
