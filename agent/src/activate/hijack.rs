//! One thread of a target borrowed with ptrace for a system call or a function call of the
//! target's own, then handed back exactly as it was (3.12/3.13 activation).
//!
//! - `PTRACE_SEIZE` + `PTRACE_INTERRUPT`: no signal is sent, and nothing else of the target
//!   stops.
//! - Every register is saved, the vector state included, and written back before the thread
//!   goes. A system call the stop interrupted restarts as the kernel would have restarted it.
//! - A signal that arrives meanwhile is held and raised again once the thread is back, so none
//!   runs its handler on borrowed registers; a stop signal (SIGSTOP, ^Z) the same way.
//! - A call returns to address 0: its fault is the tracer's sign that the call is done, and is
//!   never delivered.
//!
//! x86-64 only. If ember dies while it holds a thread, the kernel lets the thread go: harmless
//! before or after a call, but in the microseconds of a call the thread would return to 0. The
//! caller keeps those windows short, and ember's exit waits them out ([`settle`]).

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::interp::AddressSpace;
use std::time::{Duration, Instant};

/// Threads whose registers are ember's right now.
static CHANGED: AtomicUsize = AtomicUsize::new(0);

/// Waits, up to `limit`, until no borrowed thread runs on changed registers: called before
/// ember exits, as the kernel would let such a thread go mid-call.
pub fn settle(limit: Duration) {
    let start = Instant::now();
    while CHANGED.load(Ordering::SeqCst) > 0 && start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HijackError {
    #[error("ptrace {what} on thread {tid} failed: {cause}")]
    Ptrace { what: &'static str, tid: i32, cause: nix::Error },
    #[error("thread {0} exited")]
    Gone(i32),
    #[error("thread {0} is in a job-control stop (SIGSTOP or ^Z); a stopped program is left stopped")]
    JobStopped(i32),
    #[error("thread {tid} did not stop within {waited:?}")]
    NoStop { tid: i32, waited: Duration },
    #[error("the borrowed call in thread {tid} faulted at {ip:#x} instead of returning")]
    Fault { tid: i32, ip: u64 },
    #[error("ember borrows x86-64 threads only")]
    Architecture,
}

/// How a traced thread stopped (`waitpid` decoded by hand: nix refuses real-time signals, and a
/// status it refuses is lost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Our `PTRACE_INTERRUPT`.
    Interrupt,
    /// A job-control stop of the whole process.
    Job(i32),
    /// A signal about to be delivered to it.
    Signal(i32),
    Gone,
}

const PTRACE_EVENT_STOP: i32 = 128;
/// The x86 extended state (x87, SSE, AVX, ...) for PTRACE_GETREGSET.
const NT_X86_XSTATE: usize = 0x202;
/// Room for the largest extended state (AMX tiles included).
const XSTATE_BYTES: usize = 16 * 1024;
/// Below the stack pointer: the red zone the interrupted function may use, and a margin.
const STACK_GAP: u64 = 128 + 256;

/// A thread of the target, stopped and traced. Dropping it hands it back: registers as they
/// were, held signals raised again.
pub struct Borrowed {
    tid: i32,
    /// The thread group, for raising held signals at the thread again.
    tgid: i32,
    saved: libc::user_regs_struct,
    xstate: Vec<u8>,
    /// Registers changed since they were saved.
    changed: bool,
    held_signals: Vec<i32>,
}

impl Borrowed {
    /// Seizes thread `tid` of process `tgid` (host ids) and waits up to `deadline` for it to
    /// stop. A thread that does not stop in time stays traced until it does, or until ember
    /// exits; the caller runs this on a thread of its own, which waits that out ([`Self::release_late`]).
    pub fn seize(tgid: i32, tid: i32, deadline: Duration) -> Result<Self, (HijackError, Option<Late>)> {
        if !cfg!(target_arch = "x86_64") {
            return Err((HijackError::Architecture, None));
        }
        let target = nix::unistd::Pid::from_raw(tid);
        nix::sys::ptrace::seize(target, nix::sys::ptrace::Options::empty())
            .map_err(|cause| (HijackError::Ptrace { what: "seize", tid, cause }, None))?;
        let mut late = Late { tid, tgid, held_signals: Vec::new() };
        if let Err(cause) = nix::sys::ptrace::interrupt(target) {
            let _ = nix::sys::ptrace::detach(target, None);
            return Err((HijackError::Ptrace { what: "interrupt", tid, cause }, None));
        }
        let start = Instant::now();
        loop {
            let Some(stop) = wait(tid, start, deadline) else {
                let waited = start.elapsed();
                return Err((HijackError::NoStop { tid, waited }, Some(late)));
            };
            match stop {
                Stop::Interrupt => break,
                // A signal came first: held, and the interrupt's stop still comes.
                Stop::Signal(signal) => {
                    late.held_signals.push(signal);
                    if let Err(cause) = resume(libc::PTRACE_CONT, tid, 0) {
                        return Err((HijackError::Ptrace { what: "cont", tid, cause }, Some(late)));
                    }
                }
                Stop::Job(_) => {
                    late.detach();
                    return Err((HijackError::JobStopped(tid), None));
                }
                Stop::Gone => return Err((HijackError::Gone(tid), None)),
            }
        }
        let mut borrowed = Borrowed {
            tid,
            tgid,
            saved: unsafe_zeroed_regs(),
            xstate: Vec::new(),
            changed: false,
            held_signals: std::mem::take(&mut late.held_signals),
        };
        borrowed.saved = get_regs(tid)?;
        borrowed.xstate = get_xstate(tid).map_err(|e| (e, None))?;
        Ok(borrowed)
    }

    /// The registers it stopped with.
    pub fn regs(&self) -> &libc::user_regs_struct {
        &self.saved
    }

    /// Whether it stopped inside a system call (which restarts when it goes), and which.
    pub fn in_syscall(&self) -> Option<u64> {
        (self.saved.orig_rax as i64 >= 0).then_some(self.saved.orig_rax)
    }

    /// Runs system call `number` with `args` from the `syscall` instruction at `at` (two bytes,
    /// `0f 05`, anywhere in the target's code); its return value.
    pub fn syscall(&mut self, at: u64, number: u64, args: [u64; 6]) -> Result<u64, HijackError> {
        let mut regs = self.entry_regs();
        regs.rip = at;
        regs.rax = number;
        [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9] = args;
        self.set(&regs)?;
        loop {
            resume(libc::PTRACE_SINGLESTEP, self.tid, 0).map_err(|cause| self.failed("singlestep", cause))?;
            match wait(self.tid, Instant::now(), Duration::MAX) {
                Some(Stop::Signal(libc::SIGTRAP)) => {}
                Some(Stop::Signal(signal)) => {
                    self.held_signals.push(signal);
                    continue;
                }
                Some(Stop::Job(signal)) => {
                    self.held_signals.push(signal);
                    continue;
                }
                Some(Stop::Interrupt) => continue,
                Some(Stop::Gone) | None => return Err(HijackError::Gone(self.tid)),
            }
            let now = get_regs(self.tid).map_err(|(e, _)| e)?;
            if now.rip == at.wrapping_add(2) {
                return Ok(now.rax);
            }
            if now.rip != at {
                return Err(HijackError::Fault { tid: self.tid, ip: now.rip });
            }
        }
    }

    /// Calls the function at `function` with `args` (System V: rdi, rsi, rdx), on the thread's
    /// own stack below what it was using; its return value. Waits as long as the call takes.
    pub fn call(
        &mut self,
        function: u64,
        args: [u64; 3],
        memory: &crate::process::memory::ProcMem,
    ) -> Result<u64, HijackError> {
        let mut regs = self.entry_regs();
        // 16-byte aligned before the return address is pushed, as a call leaves it.
        let sp = (self.saved.rsp.wrapping_sub(STACK_GAP) & !0xf).wrapping_sub(8);
        if !memory.write(sp, &0u64.to_ne_bytes()) {
            return Err(HijackError::Fault { tid: self.tid, ip: sp });
        }
        regs.rsp = sp;
        regs.rip = function;
        regs.rax = 0;
        [regs.rdi, regs.rsi, regs.rdx] = args;
        self.set(&regs)?;
        loop {
            resume(libc::PTRACE_CONT, self.tid, 0).map_err(|cause| self.failed("cont", cause))?;
            match wait(self.tid, Instant::now(), Duration::MAX) {
                Some(Stop::Signal(libc::SIGSEGV)) => {
                    let now = get_regs(self.tid).map_err(|(e, _)| e)?;
                    if now.rip == 0 {
                        return Ok(now.rax);
                    }
                    return Err(HijackError::Fault { tid: self.tid, ip: now.rip });
                }
                Some(Stop::Signal(signal)) | Some(Stop::Job(signal)) => self.held_signals.push(signal),
                Some(Stop::Interrupt) => {}
                Some(Stop::Gone) | None => return Err(HijackError::Gone(self.tid)),
            }
        }
    }

    /// The saved registers, made ready for code entered from outside: no system call to
    /// restart, the direction and trap flags clear (the ABI's state at a call).
    fn entry_regs(&self) -> libc::user_regs_struct {
        let mut regs = self.saved;
        regs.orig_rax = u64::MAX;
        regs.eflags &= !(0x400 | 0x100);
        regs
    }

    fn set(&mut self, regs: &libc::user_regs_struct) -> Result<(), HijackError> {
        if !self.changed {
            self.changed = true;
            CHANGED.fetch_add(1, Ordering::SeqCst);
        }
        nix::sys::ptrace::setregs(nix::unistd::Pid::from_raw(self.tid), *regs).map_err(|cause| HijackError::Ptrace {
            what: "setregs",
            tid: self.tid,
            cause,
        })
    }

    fn failed(&self, what: &'static str, cause: nix::Error) -> HijackError {
        if cause == nix::Error::ESRCH {
            HijackError::Gone(self.tid)
        } else {
            HijackError::Ptrace { what, tid: self.tid, cause }
        }
    }
}

impl Drop for Borrowed {
    fn drop(&mut self) {
        let target = nix::unistd::Pid::from_raw(self.tid);
        if self.changed {
            let _ = nix::sys::ptrace::setregs(target, self.saved);
            let _ = set_xstate(self.tid, &mut self.xstate);
        }
        let _ = nix::sys::ptrace::detach(target, None);
        if self.changed {
            CHANGED.fetch_sub(1, Ordering::SeqCst);
        }
        raise_again(self.tgid, self.tid, &self.held_signals);
    }
}

/// A thread that did not stop in time: still traced, with an interrupt on its way. Its owner
/// waits for the stop and lets it go untouched.
pub struct Late {
    tid: i32,
    tgid: i32,
    held_signals: Vec<i32>,
}

impl Late {
    /// Waits (as long as it takes: the thread is in the kernel, and ember's exit also lets it
    /// go) for the stop, then detaches the thread unchanged.
    pub fn release(mut self) {
        loop {
            match wait(self.tid, Instant::now(), Duration::MAX) {
                Some(Stop::Interrupt) | Some(Stop::Job(_)) => break,
                Some(Stop::Signal(signal)) => {
                    self.held_signals.push(signal);
                    if resume(libc::PTRACE_CONT, self.tid, 0).is_err() {
                        break;
                    }
                }
                Some(Stop::Gone) | None => return,
            }
        }
        self.detach();
    }

    /// Detaches the stopped thread unchanged (a job-control stop stays a stop).
    fn detach(self) {
        let _ = nix::sys::ptrace::detach(nix::unistd::Pid::from_raw(self.tid), None);
        raise_again(self.tgid, self.tid, &self.held_signals);
    }
}

/// Sends the signals held during a borrow to the thread again, now that it is itself.
fn raise_again(tgid: i32, tid: i32, signals: &[i32]) {
    for &signal in signals {
        // SAFETY: tgkill takes plain integers; a thread that exited meanwhile gives ESRCH.
        unsafe { libc::syscall(libc::SYS_tgkill, tgid, tid, signal) };
    }
}

/// Waits for a stop of traced thread `tid` until `deadline` has passed since `start`; `None`
/// when none came in time.
fn wait(tid: i32, start: Instant, deadline: Duration) -> Option<Stop> {
    let mut pause = Duration::from_micros(20);
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only `status`.
        let got = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
        if got == tid {
            return Some(decode(status));
        }
        if got < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Some(Stop::Gone);
        }
        if start.elapsed() >= deadline {
            return None;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(2));
    }
}

fn decode(status: i32) -> Stop {
    if !libc::WIFSTOPPED(status) {
        return Stop::Gone;
    }
    let signal = libc::WSTOPSIG(status);
    if status >> 16 == PTRACE_EVENT_STOP {
        if signal == libc::SIGTRAP {
            Stop::Interrupt
        } else {
            Stop::Job(signal)
        }
    } else {
        Stop::Signal(signal)
    }
}

fn resume(request: libc::c_uint, tid: i32, signal: i32) -> Result<(), nix::Error> {
    // SAFETY: CONT/SINGLESTEP take no pointers; `data` is the signal number.
    let rc = unsafe { libc::ptrace(request, tid, std::ptr::null_mut::<libc::c_void>(), signal as libc::c_long) };
    if rc < 0 {
        Err(nix::Error::last())
    } else {
        Ok(())
    }
}

fn get_regs(tid: i32) -> Result<libc::user_regs_struct, (HijackError, Option<Late>)> {
    nix::sys::ptrace::getregs(nix::unistd::Pid::from_raw(tid))
        .map_err(|cause| (HijackError::Ptrace { what: "getregs", tid, cause }, None))
}

fn get_xstate(tid: i32) -> Result<Vec<u8>, HijackError> {
    let mut buffer = vec![0u8; XSTATE_BYTES];
    let mut iov = libc::iovec { iov_base: buffer.as_mut_ptr().cast(), iov_len: buffer.len() };
    // SAFETY: the kernel writes at most `iov_len` bytes into `buffer` and sets `iov_len`.
    let rc = unsafe { libc::ptrace(libc::PTRACE_GETREGSET, tid, NT_X86_XSTATE as *mut libc::c_void, &mut iov) };
    if rc < 0 {
        return Err(HijackError::Ptrace { what: "getregset", tid, cause: nix::Error::last() });
    }
    buffer.truncate(iov.iov_len);
    Ok(buffer)
}

fn set_xstate(tid: i32, xstate: &mut [u8]) -> Result<(), nix::Error> {
    let mut iov = libc::iovec { iov_base: xstate.as_mut_ptr().cast(), iov_len: xstate.len() };
    // SAFETY: the kernel reads `iov_len` bytes from `xstate`.
    let rc = unsafe { libc::ptrace(libc::PTRACE_SETREGSET, tid, NT_X86_XSTATE as *mut libc::c_void, &mut iov) };
    if rc < 0 {
        Err(nix::Error::last())
    } else {
        Ok(())
    }
}

fn unsafe_zeroed_regs() -> libc::user_regs_struct {
    // SAFETY: user_regs_struct is plain integers; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}
