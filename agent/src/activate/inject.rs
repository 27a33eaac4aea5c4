//! 3.12/3.13 activation: these versions have no remote execution, so ember queues the script
//! as a pending call of the main thread, the way a signal handler is run:
//! `Py_AddPendingCall(PyRun_SimpleString, code)`, called in one borrowed thread
//! ([`super::hijack`]). The interpreter runs it at its next safe point, with the GIL, between
//! two bytecodes of the main thread: no code of ember's runs there, and nothing is stopped but
//! the one thread, for microseconds.
//!
//! The hazards, and what answers each:
//! - *A thread stopped inside malloc or holding an allocator lock*: nothing ember calls
//!   allocates. The code's page comes from an `mmap` system call made in the borrowed thread,
//!   and `Py_AddPendingCall` takes only the queue's own lock.
//! - *That lock held by the borrowed thread itself* (it was stopped between taking and
//!   releasing it): the lock is read while the thread is stopped, and a held lock means
//!   letting the thread go and trying again a moment later.
//! - *The GIL held elsewhere, for seconds in a C call*: `Py_AddPendingCall` needs no GIL; the
//!   call runs whenever the main thread next runs bytecode, however late.
//! - *Threads blocked in system calls*: a borrowed thread's interrupted call restarts as if
//!   nothing had happened (the kernel's own restart, on the registers it was stopped with).
//! - *Signals mid-injection*: held and raised again once the thread is handed back.
//! - *seccomp*: the only system call the target is made to run is `mmap` of one anonymous
//!   read-write page, which every C library's malloc runs too; a refusal is an error and
//!   nothing else.

use std::time::{Duration, Instant};

use super::hijack::{Borrowed, HijackError};
use crate::interp::{AddressSpace, PendingLock};
use crate::process::memory::ProcMem;
use crate::process::{procfs, Pid};

/// How long ember looks for a moment when the lock is free before it gives up.
const SAFE_MOMENT_WINDOW: Duration = Duration::from_secs(2);
/// How long one thread may take to stop.
const STOP_WAIT: Duration = Duration::from_millis(250);
/// The page the code goes into.
const PAGE: u64 = 4096;
/// Bytes of the C library's code searched for a `syscall` instruction.
const SYSCALL_SEARCH: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("no thread could be borrowed with the pending-call lock free within {0:?} ({1})")]
    NoSafeMoment(Duration, String),
    #[error("the pending-call lock at {0:#x} no longer reads as a lock")]
    LockUnreadable(u64),
    #[error("no `syscall` instruction found in the target's C library to make its mmap from")]
    NoSyscallInstruction,
    #[error("mmap of one page in the target failed with errno {0} (a seccomp filter may refuse it)")]
    Mmap(i64),
    #[error("cannot write the code into the page mapped in the target at {0:#x}")]
    Write(u64),
    #[error("Py_AddPendingCall returned {0}: the main thread's queue of pending calls is full")]
    QueueFull(i32),
    #[error("{0}")]
    Hijack(#[from] HijackError),
    #[error("the code is {0} bytes; one page holds it with its NUL")]
    TooLong(usize),
    #[error("ember's injection thread could not start: {0}")]
    Spawn(std::io::Error),
    #[error("still at work on PID {0} after {1:?}; its thread is handed back when done")]
    StillRunning(u32, Duration),
}

/// What to call, where, and the lock that must be free.
pub struct Plan {
    pub pid: Pid,
    pub add_pending_call: u64,
    pub run_simple_string: u64,
    pub lock: PendingLock,
    /// Python source for `PyRun_SimpleString`.
    pub code: String,
}

/// A pending call queued in the target.
#[derive(Debug, Clone, Copy)]
pub struct Queued {
    /// The thread borrowed (host id).
    pub tid: u32,
    /// Threads stopped until one could be used.
    pub attempts: u32,
    /// How long the borrowed thread was stopped (everything else ran on).
    pub stopped_for: Duration,
}

/// Queues the plan's code as a pending call, on a thread of ember's own (it is the tracer, and
/// finishes its work on the target however long that takes); waits up to `wait` for it.
pub fn queue(plan: Plan, memory: ProcMem, wait: Duration) -> Result<Queued, InjectError> {
    if plan.code.len() as u64 >= PAGE {
        return Err(InjectError::TooLong(plan.code.len()));
    }
    let (sender, receiver) = std::sync::mpsc::channel();
    let pid = plan.pid;
    std::thread::Builder::new()
        .name("ember-inject".into())
        .spawn(move || {
            let _ = sender.send(run(&plan, &memory));
        })
        .map_err(InjectError::Spawn)?;
    receiver.recv_timeout(wait).unwrap_or(Err(InjectError::StillRunning(pid.0, wait)))
}

fn run(plan: &Plan, memory: &ProcMem) -> Result<Queued, InjectError> {
    let pid = plan.pid.0 as i32;
    let start = Instant::now();
    let mut attempts = 0;
    let mut why = String::from("no thread was found");
    // Found before any thread stops: a stopped thread waits for nothing but the work on it.
    let syscall_in_libc = find_syscall(plan.pid, memory);
    while start.elapsed() < SAFE_MOMENT_WINDOW {
        for tid in usable_threads(plan.pid) {
            attempts += 1;
            let mut borrowed = match Borrowed::seize(pid, tid as i32, STOP_WAIT) {
                Ok(borrowed) => borrowed,
                Err((cause, late)) => {
                    if let Some(late) = late {
                        late.release();
                    }
                    match cause {
                        HijackError::Gone(_)
                        | HijackError::NotOurs(_)
                        | HijackError::Unsuitable(..)
                        | HijackError::NoStop { .. } => {
                            why = cause.to_string();
                            continue;
                        }
                        _ => return Err(cause.into()),
                    }
                }
            };
            let stopped_at = Instant::now();
            match plan.lock.is_free(memory) {
                Some(true) => {}
                Some(false) => {
                    why = "the pending-call lock was held each time".into();
                    continue;
                }
                None => return Err(InjectError::LockUnreadable(lock_address(plan.lock))),
            }
            let at = match interrupted_syscall(&borrowed, memory) {
                Some(at) => at,
                None => syscall_in_libc.ok_or(InjectError::NoSyscallInstruction)?,
            };
            let page = mmap_page(&mut borrowed, at)?;
            let mut code = plan.code.clone().into_bytes();
            code.push(0);
            if !memory.write(page, &code) {
                return Err(InjectError::Write(page));
            }
            // Once more right before the call (the page is left to the target either way).
            if plan.lock.is_free(memory) != Some(true) {
                why = "the pending-call lock was held each time".into();
                continue;
            }
            let status = borrowed.call(plan.add_pending_call, [plan.run_simple_string, page, 0], memory)? as u32 as i32;
            drop(borrowed);
            let stopped_for = stopped_at.elapsed();
            if status != 0 {
                return Err(InjectError::QueueFull(status));
            }
            return Ok(Queued { tid, attempts, stopped_for });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(InjectError::NoSafeMoment(SAFE_MOMENT_WINDOW, why))
}

fn lock_address(lock: PendingLock) -> u64 {
    match lock {
        PendingLock::Semaphore(at) | PendingLock::Mutex(at) => at,
    }
}

fn mmap_page(borrowed: &mut Borrowed, at: u64) -> Result<u64, InjectError> {
    let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let page = borrowed.syscall(at, libc::SYS_mmap as u64, [0, PAGE, prot, flags, u64::MAX, 0])?;
    // A failed system call returns -errno.
    if (page as i64) < 0 && (page as i64) >= -4095 {
        return Err(InjectError::Mmap(-(page as i64)));
    }
    Ok(page)
}

/// The `syscall` instruction a thread stopped in a system call came from.
fn interrupted_syscall(borrowed: &Borrowed, memory: &ProcMem) -> Option<u64> {
    borrowed.in_syscall()?;
    let at = borrowed.regs().rip.checked_sub(2)?;
    (memory.read(at, 2)? == [0x0f, 0x05]).then_some(at)
}

/// A `syscall` instruction (`0f 05`) in the C library's code: the two bytes are all a single
/// step executes, wherever they are.
fn find_syscall(pid: Pid, memory: &ProcMem) -> Option<u64> {
    let maps = procfs::maps(pid).ok()?;
    let libc_code = maps.iter().find(|m| {
        let name = m.path.rsplit('/').next().unwrap_or("");
        m.executable && m.readable && (name.starts_with("libc.so") || name.starts_with("libc-"))
    })?;
    let end = libc_code.end.min(libc_code.start + SYSCALL_SEARCH);
    let mut at = libc_code.start;
    while at < end {
        let len = (end - at).min(64 * 1024);
        let bytes = memory.read(at, len as usize)?;
        if let Some(i) = bytes.windows(2).position(|w| w == [0x0f, 0x05]) {
            return Some(at + i as u64);
        }
        // One byte back: an instruction may straddle two reads.
        at += len.saturating_sub(1).max(1);
    }
    None
}

/// The process's threads in the order they are best borrowed: those running in user space (a
/// stop there interrupts no system call), then those in a system call the kernel restarts by
/// itself after a stop, then the rest (whose call may return EINTR, which Python's own calls
/// retry); the main thread first within each.
fn usable_threads(pid: Pid) -> Vec<u32> {
    let mut tids: Vec<(u8, bool, u32)> = procfs::threads(pid)
        .unwrap_or_default()
        .into_iter()
        .map(|t| (borrow_rank(pid, t.0), t.0 != pid.0, t.0))
        .collect();
    tids.sort();
    tids.into_iter().map(|(_, _, tid)| tid).collect()
}

/// System calls the kernel restarts after a ptrace stop without the caller seeing EINTR.
const RESTARTED: [i64; 9] = [
    libc::SYS_futex,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_select,
    libc::SYS_pselect6,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_read,
    libc::SYS_wait4,
];

fn borrow_rank(pid: Pid, tid: u32) -> u8 {
    if procfs::thread_state(pid, crate::process::Tid(tid)) == Some('R') {
        return 0;
    }
    let syscall = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).unwrap_or_default();
    let number = syscall.split_whitespace().next().and_then(|n| n.parse::<i64>().ok());
    if number.is_some_and(|n| RESTARTED.contains(&n)) {
        1
    } else {
        2
    }
}
