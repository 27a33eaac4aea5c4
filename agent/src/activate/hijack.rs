//! One thread of a target borrowed with ptrace for a system call or a function call of the
//! target's own, then handed back exactly as it was (3.12/3.13 activation).
//!
//! - `PTRACE_SEIZE` + `PTRACE_INTERRUPT`: no signal is sent, and nothing else of the target
//!   stops. A signal that arrives before the stop is delivered as usual.
//! - Every register is saved, the vector state and the signal mask included, and written back
//!   before the thread goes. A system call the stop interrupted restarts as the kernel would
//!   have restarted it.
//! - While borrowed, the thread blocks every signal but the fault that ends a call: signals for
//!   it stay pending, with their own information, until it is itself again.
//! - A call returns to address 0: the kernel's fault there (`SEGV_MAPERR` at 0, with the
//!   instruction pointer at 0) is the tracer's sign that the call is done, and is never
//!   delivered. Any other fault ends the borrow, registers restored.
//! - A thread inside an rseq critical section is not borrowed (a changed instruction pointer
//!   would cancel the section's protection rather than abort it).
//!
//! x86-64 only. If ember dies while it holds a thread, the kernel lets the thread go: harmless
//! before or after a call, but in the call itself the thread would return to 0. The call is
//! a few microseconds, and ember's exit waits such windows out ([`settle`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::interp::AddressSpace;

/// Threads whose registers are ember's right now.
static CHANGED: AtomicUsize = AtomicUsize::new(0);

/// Waits, up to `limit`, until no borrowed thread runs on changed registers: called before
/// ember exits, as the kernel would let such a thread go mid-call.
pub fn settle(limit: Duration) {
    let start = Instant::now();
    while CHANGED.load(Ordering::SeqCst) > 0 && start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(1));
    }
    if CHANGED.load(Ordering::SeqCst) > 0 {
        tracing::warn!("a thread borrowed for activation is still in its call after {limit:?}; exiting anyway");
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
    #[error("thread {0} is not the target's (its id was reused)")]
    NotOurs(i32),
    #[error("thread {0} cannot be borrowed now ({1})")]
    Unsuitable(i32, &'static str),
    #[error("the borrowed code in thread {tid} faulted (signal {signal}) at {ip:#x}; its registers were restored")]
    Fault { tid: i32, signal: i32, ip: u64 },
    #[error("the target's seccomp filter refused the system call")]
    Seccomp,
    #[error("thread {0} stopped too often during one borrowed call")]
    TooManyStops(i32),
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
    Job,
    /// A signal about to be delivered to it.
    Signal(i32),
    Gone,
}

const PTRACE_EVENT_STOP: i32 = 128;
const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
/// The x86 extended state (x87, SSE, AVX, ...) for PTRACE_GETREGSET.
const NT_X86_XSTATE: usize = 0x202;
/// Room for the largest extended state (AMX tiles included).
const XSTATE_BYTES: usize = 16 * 1024;
/// Below the stack pointer: the red zone the interrupted function may use, and a margin.
const STACK_GAP: u64 = 128 + 256;
/// `SEGV_MAPERR`: the fault of an unmapped address.
const SEGV_MAPERR: i32 = 1;
/// Stops one borrowed call or system call may take (signals let through, job stops).
const MAX_STOPS: u32 = 64;

fn bit(signal: i32) -> u64 {
    1 << (signal - 1)
}

/// A thread of the target, stopped and traced. Dropping it hands it back: registers, vector
/// state and signal mask as they were.
pub struct Borrowed {
    tid: i32,
    tgid: i32,
    saved: libc::user_regs_struct,
    xstate: Vec<u8>,
    mask: u64,
    /// Registers or mask changed since they were saved.
    changed: bool,
    /// Faults sent by someone (not the kernel's) while borrowed: sent again once it is back.
    sent_faults: Vec<i32>,
}

impl Borrowed {
    /// Seizes thread `tid` of process `tgid` (host ids) and waits up to `deadline` for it to
    /// stop. A thread that does not stop in time stays traced until it does, or until ember
    /// exits: the caller runs this on a thread of its own, which waits that out ([`Late`]).
    pub fn seize(tgid: i32, tid: i32, deadline: Duration) -> Result<Self, (HijackError, Option<Late>)> {
        if !cfg!(target_arch = "x86_64") {
            return Err((HijackError::Architecture, None));
        }
        let target = nix::unistd::Pid::from_raw(tid);
        nix::sys::ptrace::seize(target, nix::sys::ptrace::Options::empty())
            .map_err(|cause| (HijackError::Ptrace { what: "seize", tid, cause }, None))?;
        if let Err(cause) = nix::sys::ptrace::interrupt(target) {
            let _ = nix::sys::ptrace::detach(target, None);
            return Err((HijackError::Ptrace { what: "interrupt", tid, cause }, None));
        }
        let start = Instant::now();
        loop {
            match wait(tid, start, deadline) {
                None => return Err((HijackError::NoStop { tid, waited: start.elapsed() }, Some(Late { tid }))),
                Some(Stop::Interrupt) => break,
                // A signal came first: delivered as it would have been; the interrupt's stop
                // still comes.
                Some(Stop::Signal(signal)) => {
                    if let Err(cause) = resume(libc::PTRACE_CONT, tid, signal) {
                        return Err((HijackError::Ptrace { what: "cont", tid, cause }, Some(Late { tid })));
                    }
                }
                Some(Stop::Job) => {
                    let _ = nix::sys::ptrace::detach(target, None);
                    return Err((HijackError::JobStopped(tid), None));
                }
                Some(Stop::Gone) => return Err((HijackError::Gone(tid), None)),
            }
        }
        let mut borrowed = Borrowed {
            tid,
            tgid,
            saved: zeroed_regs(),
            xstate: Vec::new(),
            mask: 0,
            changed: false,
            sent_faults: Vec::new(),
        };
        borrowed.check_and_save().map_err(|e| (e, None))?;
        Ok(borrowed)
    }

    /// Saves what the thread has, after checking it is the target's and can be borrowed; then
    /// blocks every signal but SIGSEGV (a call's end) and SIGTRAP (a step's) for the borrow.
    fn check_and_save(&mut self) -> Result<(), HijackError> {
        let tid = self.tid;
        // Stopped and traced, its id cannot be reused until ember lets it go.
        let status = std::fs::read_to_string(format!("/proc/{tid}/status")).map_err(|_| HijackError::Gone(tid))?;
        let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
        if field("Tgid:").and_then(|t| t.parse::<i32>().ok()) != Some(self.tgid) {
            return Err(HijackError::NotOurs(tid));
        }
        // An ignored SIGSEGV would be reset to its default for the whole process by the fault.
        let ignored = field("SigIgn:").and_then(|m| u64::from_str_radix(m, 16).ok());
        if ignored.is_none_or(|m| m & bit(libc::SIGSEGV) != 0) {
            return Err(HijackError::Unsuitable(tid, "the process ignores SIGSEGV"));
        }
        self.saved = nix::sys::ptrace::getregs(nix::unistd::Pid::from_raw(tid))
            .map_err(|cause| HijackError::Ptrace { what: "getregs", tid, cause })?;
        if in_rseq_critical_section(tid, self.saved.rip) {
            return Err(HijackError::Unsuitable(tid, "inside an rseq critical section"));
        }
        self.xstate = get_xstate(tid)?;
        self.mask = sigmask(tid, PTRACE_GETSIGMASK, None)?;
        self.changed = true;
        CHANGED.fetch_add(1, Ordering::SeqCst);
        let borrow_mask = !(bit(libc::SIGSEGV) | bit(libc::SIGTRAP));
        sigmask(tid, PTRACE_SETSIGMASK, Some(borrow_mask))?;
        Ok(())
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
        let mut signal = 0;
        for _ in 0..MAX_STOPS {
            resume(libc::PTRACE_SINGLESTEP, self.tid, signal).map_err(|cause| self.failed("singlestep", cause))?;
            signal = 0;
            match self.next_stop()? {
                Next::Trap => {}
                Next::Deliver(through) => {
                    signal = through;
                    continue;
                }
                Next::Again => continue,
                Next::AtZero => return Err(self.fault(libc::SIGSEGV)),
            }
            let now = self.regs_now()?;
            if now.rip == at.wrapping_add(2) {
                return Ok(now.rax);
            }
            if now.rip != at {
                return Err(HijackError::Fault { tid: self.tid, signal: libc::SIGTRAP, ip: now.rip });
            }
        }
        Err(HijackError::TooManyStops(self.tid))
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
            return Err(HijackError::Fault { tid: self.tid, signal: 0, ip: sp });
        }
        regs.rsp = sp;
        regs.rip = function;
        regs.rax = 0;
        [regs.rdi, regs.rsi, regs.rdx] = args;
        self.set(&regs)?;
        let mut signal = 0;
        for _ in 0..MAX_STOPS {
            resume(libc::PTRACE_CONT, self.tid, signal).map_err(|cause| self.failed("cont", cause))?;
            signal = 0;
            match self.next_stop()? {
                Next::AtZero => {
                    let now = self.regs_now()?;
                    if now.rip != 0 {
                        return Err(self.fault(libc::SIGSEGV));
                    }
                    return Ok(now.rax);
                }
                Next::Deliver(through) => signal = through,
                Next::Again => {}
                Next::Trap => return Err(self.fault(libc::SIGTRAP)),
            }
        }
        Err(HijackError::TooManyStops(self.tid))
    }

    /// Decides what a stop during a borrowed step or call means.
    fn next_stop(&mut self) -> Result<Next, HijackError> {
        let tid = self.tid;
        match wait(tid, Instant::now(), Duration::MAX) {
            Some(Stop::Signal(signal)) => {
                let (code, address) = siginfo(tid)?;
                match signal {
                    // Stop signals cannot be blocked: let them stop the thread as they would.
                    libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU => Ok(Next::Deliver(signal)),
                    libc::SIGSYS if code > 0 => Err(HijackError::Seccomp),
                    libc::SIGTRAP if code > 0 => Ok(Next::Trap),
                    libc::SIGSEGV if code == SEGV_MAPERR && address == 0 => Ok(Next::AtZero),
                    // A fault the kernel raised in the borrowed code.
                    _ if code > 0 => Err(self.fault(signal)),
                    // Sent by someone (kill, tgkill): SIGSEGV and SIGTRAP cannot wait blocked.
                    _ => {
                        if !self.sent_faults.contains(&signal) {
                            self.sent_faults.push(signal);
                        }
                        Ok(Next::Again)
                    }
                }
            }
            Some(Stop::Job) | Some(Stop::Interrupt) => Ok(Next::Again),
            Some(Stop::Gone) | None => Err(HijackError::Gone(tid)),
        }
    }

    fn fault(&self, signal: i32) -> HijackError {
        let ip = self.regs_now().map(|r| r.rip).unwrap_or(0);
        HijackError::Fault { tid: self.tid, signal, ip }
    }

    fn regs_now(&self) -> Result<libc::user_regs_struct, HijackError> {
        nix::sys::ptrace::getregs(nix::unistd::Pid::from_raw(self.tid)).map_err(|cause| HijackError::Ptrace {
            what: "getregs",
            tid: self.tid,
            cause,
        })
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

/// What a stop during a borrowed step or call means.
enum Next {
    /// A trap: a single step done.
    Trap,
    /// The fault of a jump to address 0: a call come back.
    AtZero,
    /// A signal to let through on the next resume.
    Deliver(i32),
    /// Nothing for the borrow: resume.
    Again,
}

impl Drop for Borrowed {
    fn drop(&mut self) {
        let target = nix::unistd::Pid::from_raw(self.tid);
        if self.changed {
            let restored = nix::sys::ptrace::setregs(target, self.saved).is_ok()
                && set_xstate(self.tid, &mut self.xstate).is_ok()
                && sigmask(self.tid, PTRACE_SETSIGMASK, Some(self.mask)).is_ok();
            if !restored {
                tracing::warn!("thread {} could not be given all its state back (it exited meanwhile?)", self.tid);
            }
        }
        let gone = nix::sys::ptrace::detach(target, None).is_err();
        if self.changed {
            CHANGED.fetch_sub(1, Ordering::SeqCst);
        }
        if !gone {
            for &signal in &self.sent_faults {
                // SAFETY: tgkill takes plain integers; the pair is checked by the kernel.
                unsafe { libc::syscall(libc::SYS_tgkill, self.tgid, self.tid, signal) };
            }
        }
    }
}

/// A thread that did not stop in time: still traced, with an interrupt on its way. Its owner
/// waits for the stop and lets it go untouched.
pub struct Late {
    tid: i32,
}

impl Late {
    /// Waits (as long as it takes: the thread is in the kernel, and ember's exit also lets it
    /// go) for the stop, delivering signals that come first, then detaches the thread unchanged.
    pub fn release(self) {
        loop {
            match wait(self.tid, Instant::now(), Duration::MAX) {
                Some(Stop::Interrupt) | Some(Stop::Job) => break,
                Some(Stop::Signal(signal)) => {
                    if resume(libc::PTRACE_CONT, self.tid, signal).is_err() {
                        break;
                    }
                }
                Some(Stop::Gone) | None => return,
            }
        }
        let _ = nix::sys::ptrace::detach(nix::unistd::Pid::from_raw(self.tid), None);
    }
}

/// Waits for a stop of traced thread `tid` until `deadline` has passed since `start`; `None`
/// when none came in time. With no deadline it blocks in `waitpid` (on ember's injection
/// thread only).
fn wait(tid: i32, start: Instant, deadline: Duration) -> Option<Stop> {
    let mut pause = Duration::from_micros(20);
    let flags = if deadline == Duration::MAX { libc::__WALL } else { libc::__WALL | libc::WNOHANG };
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only `status`.
        let got = unsafe { libc::waitpid(tid, &mut status, flags) };
        if got == tid {
            return Some(decode(status));
        }
        if got < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Some(Stop::Gone);
        }
        if start.elapsed() >= deadline {
            return None;
        }
        if got == 0 {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(2));
        }
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
            Stop::Job
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

/// The `si_code` and `si_addr` of the signal a thread is stopped with. `si_code` > 0 means the
/// kernel raised it (a fault, a trap); <= 0, a process sent it.
fn siginfo(tid: i32) -> Result<(i32, u64), HijackError> {
    // SAFETY: siginfo_t is plain data; all-zero is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes one siginfo_t into `info`.
    let rc = unsafe {
        libc::ptrace(libc::PTRACE_GETSIGINFO, tid, std::ptr::null_mut::<libc::c_void>(), &mut info as *mut _)
    };
    if rc < 0 {
        return Err(HijackError::Ptrace { what: "getsiginfo", tid, cause: nix::Error::last() });
    }
    // SAFETY: si_addr is read from the fault union, which every SIGSEGV/SIGBUS/SIGILL/SIGFPE/SIGTRAP
    // fills; for other signals it holds other plain integers, only compared here.
    let address = unsafe { info.si_addr() } as u64;
    Ok((info.si_code, address))
}

/// Reads (`set` = None) or sets a thread's signal mask.
fn sigmask(tid: i32, request: libc::c_uint, set: Option<u64>) -> Result<u64, HijackError> {
    let mut mask = set.unwrap_or(0);
    // SAFETY: the kernel reads or writes one 8-byte sigset at `mask`; `addr` is its size.
    let rc = unsafe { libc::ptrace(request, tid, 8usize as *mut libc::c_void, &mut mask as *mut u64) };
    if rc < 0 {
        return Err(HijackError::Ptrace { what: "sigmask", tid, cause: nix::Error::last() });
    }
    Ok(mask)
}

/// Whether the thread, stopped at `ip`, is inside the rseq critical section it registered
/// (kernels without PTRACE_GET_RSEQ_CONFIGURATION, or threads without rseq: no).
fn in_rseq_critical_section(tid: i32, ip: u64) -> bool {
    let mut config = [0u64; 3];
    // SAFETY: the kernel writes at most `addr` (24) bytes of its configuration into `config`.
    let rc =
        unsafe { libc::ptrace(PTRACE_GET_RSEQ_CONFIGURATION, tid, 24usize as *mut libc::c_void, config.as_mut_ptr()) };
    if rc < 0 || config[0] == 0 {
        return false;
    }
    let read = |addr: u64, len: usize| crate::process::memory::read(crate::process::Pid(tid as u32), addr, len);
    // struct rseq: u32 cpu_id_start, u32 cpu_id, u64 rseq_cs.
    let Some(cs) = read(config[0] + 8, 8).and_then(|b| b.try_into().ok()).map(u64::from_ne_bytes) else {
        return false;
    };
    if cs == 0 {
        return false;
    }
    // struct rseq_cs: u32 version, u32 flags, u64 start_ip, u64 post_commit_offset, u64 abort_ip.
    // Unreadable: assume the worst.
    let Some(bytes) = read(cs + 8, 16) else { return true };
    let start = u64::from_ne_bytes(bytes[..8].try_into().unwrap_or_default());
    let length = u64::from_ne_bytes(bytes[8..].try_into().unwrap_or_default());
    ip >= start && ip - start < length
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

fn zeroed_regs() -> libc::user_regs_struct {
    // SAFETY: user_regs_struct is plain integers; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}
