//! Stage **activate**: turning the perf trampoline on in a Python process started without it,
//! when ember attaches to it (`record --pid`, `stream --pid`). Without the trampoline the
//! process's Python frames have no names in a native stack.
//!
//! CPython 3.14+ has PEP 768's remote execution: ember places a short script in the target's
//! `/tmp` and asks the interpreter, through its own published offsets, to run it at its next
//! safe point (`interp::remote_exec`). Nothing is stopped; the script is the target's own
//! `sys.activate_stack_trampoline("perf")`, run by the target's interpreter. 3.12 and 3.13 have
//! no such mechanism: the same script is queued as a pending call of the main thread, from a
//! thread borrowed with ptrace for microseconds (`inject`, `hijack`).

mod hijack;
mod inject;
mod script;

use std::time::{Duration, Instant};

use crate::interp::{AddressSpace, ObjectError, RemoteExecError, Requested};
use crate::process::memory::ProcMem;
use crate::process::{Pid, ProcessState};
pub use hijack::settle;
use inject::{InjectError, Plan, Queued};
use script::{activation_script, pending_call_code, Placed, ScriptError};

/// How long activation may hold up the pipeline while it looks for a safe moment (3.12/3.13).
const INJECT_WAIT: Duration = Duration::from_secs(3);
/// CPython's default recursion limit: a 3.12 target above it was raised by its program.
const DEFAULT_RECURSION_LIMIT: i32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("its interpreter cannot be read: {0}")]
    NoInterpreter(String),
    #[error("its pending-call queue cannot be read: {0}")]
    Pending(ObjectError),
    #[error("its interpreter ({0}) exports no Py_AddPendingCall or PyRun_SimpleString")]
    NoFunctions(String),
    #[error("queueing the activation as a pending call failed: {0}")]
    Inject(#[from] InjectError),
    #[error("PEP 768 remote execution failed: {0}")]
    Remote(#[from] RemoteExecError),
    #[error("cannot place the activation script: {0}")]
    Script(#[from] ScriptError),
    #[error("cannot open its memory (/proc/PID/mem needs what ptrace needs): {0}")]
    Memory(std::io::Error),
}

/// A request the target has been sent: what ember placed stays until the target has taken the
/// request up (the target reads the script when it gets to it, and reports a missing one on its
/// stderr).
#[derive(Debug)]
pub struct Activation {
    pub method: Method,
    /// The script placed (PEP 768), or the monitor's directory (pending call; empty without).
    pub script_path: String,
    /// Whether the script also starts the task monitor (if the program runs asyncio).
    pub with_monitor: bool,
    pub asked_at: Instant,
    /// A 3.12 target's recursion limit, when its program raised it above the default.
    pub raised_recursion_limit: Option<i32>,
    pid: Pid,
    /// The address space a PEP 768 request was written into; `None` once the program asked is
    /// gone, and for a pending call.
    memory: Option<ProcMem>,
    placed: Option<Placed>,
}

/// How the target was asked.
#[derive(Debug)]
pub enum Method {
    /// PEP 768 remote execution (3.14+).
    RemoteExec(Requested),
    /// A pending call of the main thread, queued from a borrowed thread (3.12/3.13).
    PendingCall(Queued),
}

impl Activation {
    /// Whether the target has taken the request up: until then the script must stay, even if a
    /// perf map appeared meanwhile. A PEP 768 request clears its pending flag before the script
    /// is read; a pending call's script turns the trampoline on last, so its perf map says it.
    pub fn taken_up(&self) -> bool {
        let Method::RemoteExec(requested) = &self.method else { return true };
        let flag = requested.pending_flag;
        self.memory.as_ref().is_some_and(|m| m.read(flag, 4).is_some_and(|b| b.iter().all(|&x| x == 0)))
    }

    /// What was done to the target, for the one line that says so.
    pub fn describe(&self) -> String {
        match &self.method {
            Method::RemoteExec(r) => {
                let when = if r.held_gil { "now" } else { "when that thread next runs Python" };
                format!("PEP 768 remote execution of {}, in thread {}, {when}", self.script_path, r.native_id)
            }
            Method::PendingCall(q) => format!(
                "a pending call of its main thread, the script in a page it mapped, queued from thread {}, which \
                 ptrace stopped for {:.0} µs ({} stop(s) to find the queue's lock free); it runs at the main \
                 thread's next bytecode",
                q.tid,
                q.stopped_for.as_secs_f64() * 1e6,
                q.attempts
            ),
        }
    }

    /// How long the target took to turn the trampoline on, now that its perf map appeared.
    pub fn done(mut self) -> Duration {
        self.placed.take();
        self.asked_at.elapsed()
    }

    /// The program that was asked is gone (it exec'd): what was placed goes, and nothing is
    /// written to what runs now (its address space is another one anyway).
    pub fn abandon(mut self) {
        self.memory = None;
        // A queued call went with the address space it was queued in.
        self.placed.take();
    }
}

impl Drop for Activation {
    /// Withdraws a request the target has not taken up before what was placed goes, so the
    /// target never looks for a script that is gone. One it has taken up (the flag is clear:
    /// it may be reading the script right now) keeps its files, which is said.
    fn drop(&mut self) {
        if let (Method::PendingCall(_), Some(placed)) = (&self.method, self.placed.take()) {
            // A queued call cannot be withdrawn, and may run after ember is gone: its monitor
            // directory stays for it (ember's own, which the script checks before using it),
            // unless the process is gone too.
            let alive = std::path::Path::new(&format!("/proc/{}", self.pid)).exists();
            if alive && !self.script_path.is_empty() {
                tracing::warn!(
                    "PID {}: its main thread has not run ember's pending call yet; leaving {} in its /tmp for \
                     when it does",
                    self.pid,
                    self.script_path
                );
                std::mem::forget(placed);
            }
            return;
        }
        let (Some(memory), Some(_), Method::RemoteExec(requested)) = (&self.memory, &self.placed, &self.method) else {
            return;
        };
        let pending = memory.read(requested.pending_flag, 4).is_some_and(|b| b.iter().any(|&x| x != 0));
        if pending && !remote_exec_withdraw(requested, memory) {
            if let Some(placed) = self.placed.take() {
                tracing::warn!(
                    "PID {}: its activation request could not be withdrawn; leaving {} in its /tmp",
                    self.pid,
                    self.script_path
                );
                std::mem::forget(placed);
            }
        }
    }
}

fn remote_exec_withdraw(requested: &Requested, memory: &ProcMem) -> bool {
    crate::interp::withdraw_remote_exec(requested, memory)
}

/// Asks the target to turn its perf trampoline on, and with `tasks` to start the asyncio task
/// monitor first if it runs asyncio. Everything that can be checked by reading is checked
/// before anything is placed or written.
pub fn activate(state: &mut ProcessState, tasks: bool) -> Result<Activation, ActivateError> {
    let pid = state.pid;
    // Opened before the interpreter is read, so the request goes into the address space that
    // was read, or nowhere.
    let memory = ProcMem::open(pid).map_err(ActivateError::Memory)?;
    let interpreter = state.interpreter().map_err(ActivateError::NoInterpreter)?;
    if interpreter.version().minor() < 14 {
        return queue_pending_call(state, memory, tasks);
    }
    // "/tmp/ember-activate-" + 16 hex digits + ".py"
    let prepared = interpreter.prepare_remote_exec("/tmp/ember-activate-0000000000000000.py".len())?;
    let (placed, script_path) = place(pid, tasks)?;
    let requested = crate::interp::send_remote_exec(&prepared, &memory, &script_path)?;
    Ok(Activation {
        method: Method::RemoteExec(requested),
        script_path,
        with_monitor: tasks,
        asked_at: Instant::now(),
        raised_recursion_limit: None,
        pid,
        memory: Some(memory),
        placed: Some(placed),
    })
}

/// The activation script (and the task monitor's files, with `tasks`) in the target's `/tmp`.
fn place(pid: Pid, tasks: bool) -> Result<(Placed, String), ScriptError> {
    let (mut placed, _, script) = script_and_monitor(pid, tasks)?;
    let script_path = placed.script("ember-activate", &script)?;
    Ok((placed, script_path))
}

/// The activation script's text, and with `tasks` the task monitor's files placed in the
/// target's `/tmp` for it (their directory, as the target sees it).
fn script_and_monitor(pid: Pid, tasks: bool) -> Result<(Placed, Option<String>, String), ScriptError> {
    let mut placed = Placed::in_tmp_of(pid)?;
    let monitor_dir = if tasks { Some(placed.monitor()?) } else { None };
    let script = activation_script(monitor_dir.as_deref(), owner_uid());
    Ok((placed, monitor_dir, script))
}

/// 3.12/3.13: the script as a pending call of the main thread (`inject`).
fn queue_pending_call(state: &mut ProcessState, memory: ProcMem, tasks: bool) -> Result<Activation, ActivateError> {
    let pid = state.pid;
    let interpreter = state.interpreter().map_err(ActivateError::NoInterpreter)?;
    let lock = interpreter.pending_lock().map_err(ActivateError::Pending)?;
    let recursion_limit = interpreter.recursion_limit().map_err(ActivateError::Pending)?;
    let image = interpreter.image().to_string();
    let [Some(add_pending_call), Some(run_simple_string)] =
        crate::interp::functions(state, &image, ["Py_AddPendingCall", "PyRun_SimpleString"])
    else {
        return Err(ActivateError::NoFunctions(image));
    };
    // The script travels in the call's own page; only the monitor's files are placed.
    let (placed, monitor_dir, script) = script_and_monitor(pid, tasks)?;
    let plan = Plan { pid, add_pending_call, run_simple_string, lock, code: pending_call_code(&script) };
    let queued = match inject::queue(plan, memory, INJECT_WAIT) {
        Ok(queued) => queued,
        Err(e) => {
            // Still at work, the injection thread may yet queue the call, which must then find
            // the monitor's files; any other error queued nothing.
            if monitor_dir.is_some() && matches!(e, InjectError::StillRunning(..)) {
                std::mem::forget(placed);
            }
            return Err(e.into());
        }
    };
    Ok(Activation {
        method: Method::PendingCall(queued),
        script_path: monitor_dir.unwrap_or_default(),
        with_monitor: tasks,
        asked_at: Instant::now(),
        raised_recursion_limit: recursion_limit.filter(|&l| l > DEFAULT_RECURSION_LIMIT),
        pid,
        memory: None,
        placed: Some(placed),
    })
}

/// ember's effective uid: the owner of everything it places.
fn owner_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
