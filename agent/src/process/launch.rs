//! Starting the command to profile. The child is forked, then held at a gate until ember has
//! opened its perf events (with enable-on-exec), and only then executes the command, so not
//! a single sample of the command is missed.

use std::ffi::{CString, NulError};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, pipe2, read, write, ForkResult};

use super::ids::Pid;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("no command given")]
    Empty,
    #[error("the command or its environment contains a NUL byte: {0}")]
    Nul(#[from] NulError),
    #[error("could not start the command: {0}")]
    Fork(Errno),
    #[error("could not run `{command}`: {errno}. Check that it exists and is executable (PATH is searched)")]
    Exec { command: String, errno: Errno },
}

/// A forked child waiting at the gate.
#[derive(Debug)]
pub struct GatedChild {
    pub pid: Pid,
    command: String,
    gate: OwnedFd,
    exec_error: OwnedFd,
}

/// How a launched command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildExit {
    Code(i32),
    Signal(i32),
}

impl ChildExit {
    /// The exit status a shell would report.
    pub fn shell_status(self) -> i32 {
        match self {
            ChildExit::Code(code) => code,
            ChildExit::Signal(signal) => 128 + signal,
        }
    }
}

/// Forks a child that will run `command` with `extra_env` added once [`GatedChild::release`]
/// is called. It inherits stdin, stdout and stderr. `before_exec` runs in the child right
/// before exec, so it may only make async-signal-safe calls.
pub fn spawn_gated(
    command: &[String],
    extra_env: &[(&str, &str)],
    before_exec: &dyn Fn(),
) -> Result<GatedChild, LaunchError> {
    let program = command.first().ok_or(LaunchError::Empty)?;
    let argv: Vec<CString> = command.iter().map(|a| CString::new(a.as_bytes())).collect::<Result<_, _>>()?;
    let mut envp: Vec<CString> = Vec::new();
    for (key, value) in std::env::vars_os() {
        let key_str = key.to_string_lossy();
        if extra_env.iter().any(|(k, _)| *k == key_str) {
            continue;
        }
        let mut entry = key.into_encoded_bytes();
        entry.push(b'=');
        entry.extend(value.into_encoded_bytes());
        envp.push(CString::new(entry)?);
    }
    for (key, value) in extra_env {
        envp.push(CString::new(format!("{key}={value}"))?);
    }
    let program_c = CString::new(program.as_bytes())?;

    let (gate_read, gate_write) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(LaunchError::Fork)?;
    let (err_read, err_write) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(LaunchError::Fork)?;

    // SAFETY: between fork and exec the child only calls async-signal-safe functions (read,
    // execvpe, write, _exit) on memory prepared before the fork.
    match unsafe { fork() }.map_err(LaunchError::Fork)? {
        ForkResult::Child => {
            drop(gate_write);
            drop(err_read);
            let mut byte = [0u8; 1];
            // Wait at the gate; EOF (ember died) means: do not run the command at all.
            match read(&gate_read, &mut byte) {
                Ok(1) => {}
                _ => unsafe { libc::_exit(127) },
            }
            before_exec();
            let errno = match nix::unistd::execvpe(&program_c, &argv, &envp) {
                Err(errno) => errno,
                Ok(never) => match never {},
            };
            let _ = write(&err_write, &(errno as i32).to_ne_bytes());
            // SAFETY: _exit is async-signal-safe and skips the parent's atexit handlers.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => {
            drop(gate_read);
            drop(err_write);
            Ok(GatedChild {
                pid: Pid(child.as_raw() as u32),
                command: program.clone(),
                gate: gate_write,
                exec_error: err_read,
            })
        }
    }
}

impl GatedChild {
    /// Lets the child run its command, and reports a failure to execute it.
    pub fn release(self) -> Result<Pid, LaunchError> {
        let _ = write(&self.gate, &[1u8]);
        drop(self.gate);
        let mut buf = [0u8; 4];
        // The error pipe closes on a successful exec (CLOEXEC) or carries the errno.
        match read(&self.exec_error, &mut buf) {
            Ok(4) => {
                let errno = Errno::from_raw(i32::from_ne_bytes(buf));
                let _ = waitpid(nix::unistd::Pid::from_raw(self.pid.0 as i32), None);
                Err(LaunchError::Exec { command: self.command, errno })
            }
            _ => Ok(self.pid),
        }
    }

    /// Gives up on the child before it ran anything.
    pub fn abort(self) {
        let pid = nix::unistd::Pid::from_raw(self.pid.0 as i32);
        drop(self.gate);
        let _ = waitpid(pid, None);
        let _ = self.exec_error.as_raw_fd();
    }
}

/// Reaps the child if it has exited.
pub fn try_wait(pid: Pid) -> Option<ChildExit> {
    match waitpid(nix::unistd::Pid::from_raw(pid.0 as i32), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => Some(ChildExit::Code(code)),
        Ok(WaitStatus::Signaled(_, signal, _)) => Some(ChildExit::Signal(signal as i32)),
        Ok(_) => None,
        // Already reaped or not our child: treat as gone with an unknown status.
        Err(_) => Some(ChildExit::Code(0)),
    }
}

/// Blocks until the child exits.
pub fn wait(pid: Pid) -> ChildExit {
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid.0 as i32), None) {
            Ok(WaitStatus::Exited(_, code)) => return ChildExit::Code(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => return ChildExit::Signal(signal as i32),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => return ChildExit::Code(0),
        }
    }
}

/// Passes a termination signal on to the child.
pub fn forward_signal(pid: Pid, signal: Signal) {
    let _ = kill(nix::unistd::Pid::from_raw(pid.0 as i32), signal);
}
