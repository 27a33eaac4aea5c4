//! `dump --native`: each thread's native stack, unwound (stage **unwind**) from the registers
//! and stack it had while the process was stopped for a moment with ptrace. The Python frames,
//! read from memory in that same moment, go where the `_PyEval_EvalFrameDefault` call that runs
//! them is: each such call keeps its entry shim on its own C stack frame, so the shim's address
//! says which native frame it is, named or not (Debian's builds are stripped).

use std::time::{Duration, Instant};

use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

use super::FrameDump;
use crate::intern::Interner;
use crate::interp::PyThread;
use crate::perf::{SampleEvent, UserRegs};
use crate::process::{procfs, FrameKey, Pid, ProcessState, Tid};
use crate::symbolize::native::NativeSymbolizer;
use crate::symbolize::SymbolTable;
use crate::unwind::ElfCache;

/// How long the threads may take to stop before ember lets them go unread.
const STOP_DEADLINE: Duration = Duration::from_millis(200);
/// Stack read per thread: what a perf sample's copy holds at most.
const STACK_BYTES: u64 = 65_528;

#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    #[error(
        "cannot stop thread {tid} with ptrace ({cause}); `dump --native` needs CAP_SYS_PTRACE or the \
         target's user, ptrace allowed by kernel.yama.ptrace_scope and seccomp, and no other tracer \
         (gdb, strace, py-spy) attached (without --native, dump reads memory only and stops nothing)"
    )]
    // `cause`, not `source`: the message says it, and a chain printed whole would say it twice.
    Seize { tid: u32, cause: nix::Error },
    #[error("thread {0} did not stop within {STOP_DEADLINE:?}; the process was let go without a native dump")]
    NoStop(u32),
    #[error("`dump --native` reads x86-64 registers; this agent was built for another architecture")]
    Architecture,
}

/// One thread as taken while stopped.
pub struct Taken {
    pub(super) tid: Tid,
    regs: UserRegs,
    stack: Vec<u8>,
    /// The stack goes on beyond what was read.
    filled: bool,
}

/// Threads stopped with `PTRACE_SEIZE` and `PTRACE_INTERRUPT`, each with the signal that
/// stopped it instead, if one did. They are let go (detached, registers untouched, that signal
/// delivered) when this is dropped, on every path; if ember dies, the kernel detaches them.
struct Stopped {
    tids: Vec<(Tid, Option<Signal>)>,
}

impl Drop for Stopped {
    fn drop(&mut self) {
        for &(tid, signal) in &self.tids {
            let _ = ptrace::detach(nix_pid(tid), signal);
        }
    }
}

fn nix_pid(tid: Tid) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(tid.0 as i32)
}

/// Stops every thread of `pid`, takes its registers and stack, runs `read` (the interpreter's
/// read, so both show one moment), and lets them go. Also says how long the process was
/// stopped.
pub fn while_stopped<T>(pid: Pid, read: impl FnOnce() -> T) -> Result<(Vec<Taken>, T, Duration), NativeError> {
    if !cfg!(target_arch = "x86_64") {
        return Err(NativeError::Architecture);
    }
    let tids = procfs::threads(pid).unwrap_or_default();
    let start = Instant::now();
    let mut stopped = Stopped { tids: Vec::with_capacity(tids.len()) };
    for &tid in &tids {
        match ptrace::seize(nix_pid(tid), ptrace::Options::empty()) {
            Ok(()) => stopped.tids.push((tid, None)),
            // It exited since it was listed.
            Err(nix::Error::ESRCH) => continue,
            Err(cause) => return Err(NativeError::Seize { tid: tid.0, cause }),
        }
        if ptrace::interrupt(nix_pid(tid)).is_err() {
            stopped.tids.pop();
        }
    }
    let mut waiting: Vec<usize> = (0..stopped.tids.len()).collect();
    while !waiting.is_empty() {
        waiting.retain(|&i| {
            let (tid, signal) = &mut stopped.tids[i];
            match waitpid(nix_pid(*tid), Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => true,
                // A signal arrived first: it is handed back on detach.
                Ok(WaitStatus::Stopped(_, arrived)) => {
                    *signal = Some(arrived);
                    false
                }
                // Stopped by the interrupt, or gone (then detaching it does nothing).
                _ => false,
            }
        });
        if let Some(&late) = waiting.first() {
            if start.elapsed() > STOP_DEADLINE {
                return Err(NativeError::NoStop(stopped.tids[late].0 .0));
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    let maps = procfs::maps(pid).unwrap_or_default();
    let taken = stopped.tids.iter().filter_map(|&(tid, _)| take(pid, tid, &maps)).collect();
    let result = read();
    drop(stopped);
    Ok((taken, result, start.elapsed()))
}

#[cfg(target_arch = "x86_64")]
fn take(pid: Pid, tid: Tid, maps: &[procfs::MapsLine]) -> Option<Taken> {
    let r = ptrace::getregs(nix_pid(tid)).ok()?;
    let regs = UserRegs { ip: r.rip, sp: r.rsp, bp: r.rbp, bx: r.rbx };
    // Up to the end of the stack's mapping: a read across it would fail whole.
    let end = maps.iter().find(|m| m.start <= regs.sp && regs.sp < m.end).map_or(regs.sp, |m| m.end);
    let len = (end - regs.sp).min(STACK_BYTES);
    let stack = crate::process::memory::read(pid, regs.sp, len as usize).unwrap_or_default();
    Some(Taken { tid, regs, filled: end - regs.sp > STACK_BYTES, stack })
}

#[cfg(not(target_arch = "x86_64"))]
fn take(_: Pid, _: Tid, _: &[procfs::MapsLine]) -> Option<Taken> {
    None
}

/// Each thread's frames, innermost first: native frames unwound from what was taken, with the
/// Python frames of `python` in place of the eval-loop calls that run them. Python frames the
/// native walk did not reach are kept, after a marker.
pub fn merge(
    process: &mut ProcessState,
    elf: &mut ElfCache,
    taken: &[Taken],
    python: &PyThread,
    tid: Option<Tid>,
) -> Option<Vec<FrameDump>> {
    let taken = taken.iter().find(|t| Some(t.tid) == tid)?;
    let sample = SampleEvent {
        pid: process.pid,
        tid: taken.tid,
        time: 0,
        cpu: 0,
        regs: Some(taken.regs),
        stack: taken.stack.clone(),
        stack_filled: taken.filled,
        kernel_chain: Vec::new(),
    };
    let mut strings = Interner::default();
    let mut keys = Vec::new();
    let unwound = process.unwind_sample(&sample, &mut strings, &mut keys);
    let raw = &unwound.frames;
    let frame_keys: Vec<FrameKey> =
        raw.iter().enumerate().map(|(i, f)| process.frame_key(f.addr, f.lookup_addr(i == 0), &mut strings)).collect();
    let symbols = SymbolTable::resolve(&frame_keys, &strings, elf, &NativeSymbolizer::new());
    let python_frames: Vec<FrameDump> = python.frames.iter().map(FrameDump::from).collect();
    let mut out = Vec::new();
    let mut placed = 0;
    let mut shims = python.shims.iter().peekable();
    for (j, key) in frame_keys.iter().enumerate() {
        // The Python frames of each eval call whose entry frame lies in this native frame's
        // stack (that call's own frame: the shims and the native walk both go outwards).
        let caller_sp = raw.get(j + 1).map_or(u64::MAX, |f| f.sp);
        while let Some(&&(_, before)) = shims.peek().filter(|(addr, _)| *addr < caller_sp) {
            shims.next();
            let before = before.min(python_frames.len());
            if before > placed {
                out.extend(python_frames[placed..before].iter().cloned());
                placed = before;
            }
        }
        // A trampoline's name: the frame read from memory says the same, with its line.
        if matches!(key, FrameKey::MapSymbol(_)) {
            continue;
        }
        for symbol in symbols.frames(key).iter().rev().filter(|s| !s.interpreter_plumbing) {
            out.push(FrameDump {
                function: symbol.function.clone(),
                file: symbol.file.clone(),
                line: symbol.line,
                native: true,
            });
        }
    }
    if placed < python_frames.len() {
        out.push(FrameDump::marker("[Python frames the native walk did not reach]"));
        out.extend(python_frames[placed..].iter().cloned());
    }
    Some(out)
}
