//! PEP 768's remote execution (CPython 3.14+), asked for from outside: the path of a script
//! goes into a thread's `remote_debugger_support`, its pending flag is set, and so is a bit of
//! the thread's eval breaker; the thread runs the script at its next eval-breaker check, as
//! `sys.remote_exec` would have it. Nothing is stopped: the interpreter itself reads the script
//! and runs it.

use super::layout::{RemoteDebugLayout, PLEASE_STOP_BIT};
use super::objects::{word_in, ObjectError, ObjectReader};
use super::walk::{gil_holder, MAX_THREADS};
use super::PyVersion;

#[derive(Debug, thiserror::Error)]
pub enum RemoteExecError {
    #[error("Python {0} has no remote execution (PEP 768 came with 3.14)")]
    Unsupported(PyVersion),
    #[error(
        "the target turned remote execution off (PYTHON_DISABLE_REMOTE_DEBUG in its environment, \
         -X disable-remote-debug, or a build configured --without-remote-debug)"
    )]
    Disabled,
    #[error("a script path of {length} bytes does not fit the {room} bytes the target has for it")]
    PathTooLong { length: usize, room: u64 },
    #[error("the target's interpreter has no thread to run the script")]
    NoThread,
    #[error("a request is already pending in the target's thread {0}")]
    AlreadyPending(u64),
    #[error("reading the target's interpreter failed: {0}")]
    Read(#[from] ObjectError),
    #[error(
        "cannot write the request into the target's memory at {addr:#x} through /proc/PID/mem (the \
         program exec'd or exited since it was read, or ember lacks what ptrace needs: root or \
         CAP_SYS_PTRACE, or the target's user under kernel.yama.ptrace_scope 0 or 1)"
    )]
    Write { addr: u64 },
}

/// The memory a request is written through: the target's address space as it was when ember
/// looked (`/proc/PID/mem`, which after an exec reaches nothing), not whatever its PID names
/// by the time of the write.
pub trait AddressSpace {
    fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>>;
    fn write(&self, addr: u64, bytes: &[u8]) -> bool;
}

/// A request checked and ready to send: where it goes.
#[derive(Debug, Clone, Copy)]
pub struct Prepared {
    tstate: u64,
    remote: RemoteDebugLayout,
    native_id: u64,
    held_gil: bool,
}

/// The thread a request went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requested {
    /// Its id in the target's PID namespace.
    pub native_id: u64,
    /// The request's pending flag, which the target clears before it runs the script.
    pub pending_flag: u64,
    /// The script's path: a NUL written at its start makes the target skip it.
    pub script_path: u64,
    /// Whether it held the GIL when asked (so it runs Python, and checks its eval breaker,
    /// soon); otherwise the script waits until that thread next runs Python.
    pub held_gil: bool,
}

/// Checks, reading only, that the main interpreter of the runtime at `runtime` can be asked to
/// run a script whose path is `path_len` bytes long, and picks the thread to ask: remote
/// execution on, no request pending, the path fits.
pub fn prepare(reader: &mut ObjectReader, runtime: u64, path_len: usize) -> Result<Prepared, RemoteExecError> {
    // Fresh reads: what an earlier walk left in the reader is no longer the target's state.
    reader.new_walk();
    let layout = reader.layout().clone();
    let remote = layout.remote_debug.ok_or(RemoteExecError::Unsupported(layout.version))?;
    if path_len as u64 >= remote.script_path_size {
        return Err(RemoteExecError::PathTooLong { length: path_len, room: remote.script_path_size });
    }
    let interp = reader.word(runtime.wrapping_add(layout.interpreters_head))?;
    // 1 when on; 0 when turned off, -1 before the interpreter's configuration is read.
    let enabled = reader.bytes_at(interp.wrapping_add(remote.enabled), 4)?;
    if enabled != 1i32.to_le_bytes() {
        return Err(RemoteExecError::Disabled);
    }
    let gil_holder = gil_holder(reader, interp)?;
    let tstate = chosen_thread(reader, interp, gil_holder)?;
    let native_id = reader.word(tstate.wrapping_add(layout.thread_native_id))?;
    let pending = reader.bytes_at(tstate.wrapping_add(remote.support).wrapping_add(remote.pending_call), 4)?;
    if pending.iter().any(|&b| b != 0) {
        return Err(RemoteExecError::AlreadyPending(native_id));
    }
    Ok(Prepared { tstate, remote, native_id, held_gil: gil_holder == Some(tstate) })
}

/// Writes the request: the path (NUL-terminated), then the pending flag, then the eval-breaker
/// bit, in the order CPython's own client writes them, so the thread never sees the flag
/// without the path. A request that cannot be completed is withdrawn.
pub fn send(prepared: &Prepared, memory: &dyn AddressSpace, path: &str) -> Result<Requested, RemoteExecError> {
    let Prepared { tstate, remote, native_id, held_gil } = *prepared;
    if path.len() as u64 >= remote.script_path_size || path.contains('\0') {
        return Err(RemoteExecError::PathTooLong { length: path.len(), room: remote.script_path_size });
    }
    let support = tstate.wrapping_add(remote.support);
    let requested = Requested {
        native_id,
        pending_flag: support.wrapping_add(remote.pending_call),
        script_path: support.wrapping_add(remote.script_path),
        held_gil,
    };
    let write =
        |addr: u64, bytes: &[u8]| if memory.write(addr, bytes) { Ok(()) } else { Err(RemoteExecError::Write { addr }) };
    let mut text = path.as_bytes().to_vec();
    text.push(0);
    write(requested.script_path, &text)?;
    write(requested.pending_flag, &1i32.to_le_bytes())?;
    // Read, or, written back, the low byte only: the bits above it hold the instrumentation
    // version, which the target may change meanwhile (restoring an old one would make it
    // re-instrument forever). Not atomic with the target's own updates, as with CPython's
    // client: an event bit the target sets in between can be lost (a GIL drop request is made
    // again within 5 ms; a pending signal is seen at the next check that has cause).
    let breaker_at = tstate.wrapping_add(remote.eval_breaker);
    let low = memory.read(breaker_at, 1).and_then(|b| b.first().copied());
    let sent = match low {
        Some(low) => write(breaker_at, &[low | PLEASE_STOP_BIT as u8]),
        None => Err(RemoteExecError::Write { addr: breaker_at }),
    };
    match sent {
        Ok(()) => Ok(requested),
        Err(e) => {
            withdraw(&requested, memory);
            Err(e)
        }
    }
}

/// Takes back a request the target has not taken up: an empty path first (the target skips
/// one), then the flag. Whether the flag was still set, so the request was withdrawn; if not,
/// the target has taken it (or is reading it) and its script must stay.
pub fn withdraw(requested: &Requested, memory: &dyn AddressSpace) -> bool {
    let pending = memory.read(requested.pending_flag, 4).is_some_and(|b| b.iter().any(|&x| x != 0));
    if !pending {
        return false;
    }
    memory.write(requested.script_path, &[0]) && memory.write(requested.pending_flag, &0i32.to_le_bytes())
}

/// The GIL holder's thread if there is one (it is running Python), else the oldest thread (the
/// main thread, last in the interpreter's newest-first list).
fn chosen_thread(reader: &ObjectReader, interp: u64, gil_holder: Option<u64>) -> Result<u64, RemoteExecError> {
    let layout = reader.layout();
    let mut tstate = reader.word(interp.wrapping_add(layout.interp_threads_head))?;
    let mut oldest = None;
    for _ in 0..MAX_THREADS {
        if tstate == 0 {
            break;
        }
        let head = reader.bytes_at(tstate, (layout.thread_next.max(layout.thread_interp) + 8) as usize)?;
        if word_in(&head, layout.thread_interp as usize) != interp {
            return Err(ObjectError::Malformed {
                what: "thread state",
                addr: tstate,
                why: "it belongs to another interpreter",
            }
            .into());
        }
        if Some(tstate) == gil_holder {
            return Ok(tstate);
        }
        oldest = Some(tstate);
        tstate = word_in(&head, layout.thread_next as usize);
    }
    oldest.ok_or(RemoteExecError::NoThread)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::interp::fake::{types, FakeTarget};
    use crate::interp::layout::{Layout, LAYOUT_3_12};
    use crate::process::access::TargetAccess;

    const RUNTIME: u64 = 0x10_000;
    const INTERP: u64 = 0x20_000;
    const MAIN: u64 = 0x30_000;
    const WORKER: u64 = 0x40_000;
    const REMOTE: RemoteDebugLayout = RemoteDebugLayout {
        eval_breaker: 24,
        support: 0x100,
        pending_call: 0,
        script_path: 4,
        script_path_size: 512,
        enabled: 0x200,
    };

    /// An interpreter with two threads (worker newest), remote execution on, laid out as 3.12
    /// lays out the rest.
    fn target() -> Arc<FakeTarget> {
        let t = Arc::new(FakeTarget::default());
        t.put(RUNTIME, &[0; 64]);
        t.put_word(RUNTIME + 40, INTERP);
        t.put(INTERP, &[0; 0x400]);
        t.put_word(INTERP + 72, WORKER);
        t.put(INTERP + 0x200, &1i32.to_le_bytes());
        for (tstate, next, id) in [(WORKER, MAIN, 2), (MAIN, 0, 1)] {
            t.put(tstate, &[0; 0x400]);
            t.put_word(tstate + 8, next);
            t.put_word(tstate + 16, INTERP);
            t.put_word(tstate + 144, id);
            t.put_word(tstate + 24, 0x1_0000_0001); // high bits: the instrumentation version
        }
        t
    }

    fn reader(t: &Arc<FakeTarget>) -> ObjectReader {
        let layout = Layout { remote_debug: Some(REMOTE), ..LAYOUT_3_12 };
        ObjectReader::new(t.clone(), layout, types())
    }

    fn ask(t: &Arc<FakeTarget>, path: &str) -> Result<Requested, RemoteExecError> {
        let prepared = prepare(&mut reader(t), RUNTIME, path.len())?;
        send(&prepared, t.as_ref(), path)
    }

    #[test]
    fn writes_the_path_then_the_flag_then_the_eval_breaker_bit_of_the_main_thread() {
        let t = target();
        let requested = ask(&t, "/tmp/x.py").expect("requested");
        assert_eq!((requested.native_id, requested.held_gil), (1, false), "the oldest thread, no GIL held");
        assert_eq!((requested.pending_flag, requested.script_path), (MAIN + 0x100, MAIN + 0x104));
        assert_eq!(t.read_memory(MAIN + 0x104, 10).expect("path"), b"/tmp/x.py\0");
        assert_eq!(t.read_memory(MAIN + 0x100, 4).expect("flag"), 1i32.to_le_bytes());
        let breaker = t.read_memory(MAIN + 24, 8).expect("breaker");
        assert_eq!(u64::from_le_bytes(breaker.try_into().expect("8 bytes")), 0x1_0000_0001 | PLEASE_STOP_BIT);
        assert_eq!(t.read_memory(WORKER + 0x100, 4).expect("flag"), [0; 4], "the other thread untouched");
        let again = ask(&t, "/tmp/y.py");
        assert!(matches!(again, Err(RemoteExecError::AlreadyPending(1))), "{again:?}");
        // Withdrawn: the path emptied (the target skips it), then the flag.
        assert!(withdraw(&requested, t.as_ref()));
        assert_eq!(t.read_memory(MAIN + 0x100, 5).expect("flag and path"), [0, 0, 0, 0, 0]);
        assert!(!withdraw(&requested, t.as_ref()), "nothing pending any more");
    }

    #[test]
    fn only_the_low_byte_of_the_eval_breaker_is_written() {
        let t = target();
        let prepared = prepare(&mut reader(&t), RUNTIME, 9).expect("prepared");
        // The target bumps its instrumentation version (the bits above the low byte) meanwhile.
        t.put_word(MAIN + 24, 0x7_0000_0002);
        send(&prepared, t.as_ref(), "/tmp/x.py").expect("sent");
        let breaker = t.read_memory(MAIN + 24, 8).expect("breaker");
        assert_eq!(u64::from_le_bytes(breaker.try_into().expect("8 bytes")), 0x7_0000_0002 | PLEASE_STOP_BIT);
    }

    #[test]
    fn refuses_a_target_that_turned_it_off_and_a_path_that_does_not_fit() {
        let t = target();
        let long = format!("/tmp/{}", "x".repeat(600));
        assert!(matches!(ask(&t, &long), Err(RemoteExecError::PathTooLong { .. })));
        for off in [0i32, -1] {
            t.put(INTERP + 0x200, &off.to_le_bytes());
            assert!(matches!(ask(&t, "/tmp/x.py"), Err(RemoteExecError::Disabled)));
        }
        assert_eq!(t.read_memory(MAIN + 0x100, 4).expect("flag"), [0; 4], "nothing written");
    }
}
