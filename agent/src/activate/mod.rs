//! Stage **activate**: turning the perf trampoline on in a Python process started without it,
//! when ember attaches to it (`record --pid`, `stream --pid`). Without the trampoline the
//! process's Python frames have no names in a native stack.
//!
//! CPython 3.14+ has PEP 768's remote execution: ember places a short script in the target's
//! `/tmp` and asks the interpreter, through its own published offsets, to run it at its next
//! safe point (`interp::remote_exec`). Nothing is stopped; the script is the target's own
//! `sys.activate_stack_trampoline("perf")`, run by the target's interpreter. 3.12 and 3.13 have
//! no such mechanism; they are left as they are, with advice.

mod script;

use std::time::{Duration, Instant};

use crate::interp::{AddressSpace, PyVersion, RemoteExecError, Requested};
use crate::process::memory::ProcMem;
use crate::process::{Pid, ProcessState};
use script::{activation_script, Placed, ScriptError};

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("its interpreter cannot be read: {0}")]
    NoInterpreter(String),
    #[error(
        "Python {0} has no remote execution (it came with 3.14), and ember does not inject code into \
         3.12 or 3.13"
    )]
    NoRemoteExec(PyVersion),
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
    pub requested: Requested,
    pub script_path: String,
    /// Whether the script also starts the task monitor (if the program runs asyncio).
    pub with_monitor: bool,
    pub asked_at: Instant,
    pid: Pid,
    /// The address space the request was written into; `None` once the program asked is gone.
    memory: Option<ProcMem>,
    placed: Option<Placed>,
}

impl Activation {
    /// Whether the target has taken the request up (it clears the pending flag before it reads
    /// the script): until then the script must stay, even if a perf map appeared meanwhile.
    pub fn taken_up(&self) -> bool {
        let flag = self.requested.pending_flag;
        self.memory.as_ref().is_some_and(|m| m.read(flag, 4).is_some_and(|b| b.iter().all(|&x| x == 0)))
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
    }
}

impl Drop for Activation {
    /// Withdraws a request the target has not taken up before what was placed goes, so the
    /// target never looks for a script that is gone. One it has taken up (the flag is clear:
    /// it may be reading the script right now) keeps its files, which is said.
    fn drop(&mut self) {
        let (Some(memory), Some(_)) = (&self.memory, &self.placed) else { return };
        let pending = memory.read(self.requested.pending_flag, 4).is_some_and(|b| b.iter().any(|&x| x != 0));
        if pending && !remote_exec_withdraw(&self.requested, memory) {
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
    let version = interpreter.version();
    if version.minor() < 14 {
        return Err(ActivateError::NoRemoteExec(version));
    }
    // "/tmp/ember-activate-" + 16 hex digits + ".py"
    let prepared = interpreter.prepare_remote_exec("/tmp/ember-activate-0000000000000000.py".len())?;
    let mut placed = Placed::in_tmp_of(pid)?;
    let monitor_dir = if tasks { Some(placed.monitor()?) } else { None };
    let script_path = placed.script("ember-activate", &activation_script(monitor_dir.as_deref()))?;
    let requested = crate::interp::send_remote_exec(&prepared, &memory, &script_path)?;
    Ok(Activation {
        requested,
        script_path,
        with_monitor: tasks,
        asked_at: Instant::now(),
        pid,
        memory: Some(memory),
        placed: Some(placed),
    })
}
