//! The main thread's pending-call queue of CPython 3.12/3.13, seen from outside: the lock that
//! `Py_AddPendingCall` takes, so ember calls it only in a thread that cannot be holding that lock
//! (3.12/3.13 activation), and 3.12's recursion limit, which the trampoline changes the meaning
//! of. Neither version publishes these offsets; they come from each version's internal headers
//! (`tools/cpython-layouts/derive.c`), and every read is checked against what the interpreter
//! itself puts there, so a build laid out otherwise is refused, not misread.

use super::objects::{ObjectError, ObjectReader};
use super::AddressSpace;
#[cfg(test)]
use super::PyVersion;

/// Where each version's headers put the queue (`offsetof(_PyRuntimeState,
/// ceval.pending_mainthread)` and the fields after it): pyenv's 3.12.1 and 3.13.0. Patch releases
/// move it (Debian's 3.13.18 has it 24 bytes later), so the reader looks for the queue's shape
/// in the runtime rather than trusting one number; the test checks the shape's fields against
/// the headers.
/// 3.12: `busy`, then the lock pointer 8 bytes on, then `calls_to_do`, `async_exc`, the calls,
/// and `first` and `last`.
const LOCK_AFTER_BUSY_3_12: u64 = 8;
const FIRST_AFTER_BUSY_3_12: u64 = 8 + 8 + 4 + 4 + 32 * 16;
/// 3.13: `handling_thread`, then the mutex 8 bytes on, then `npending`, `max`, `maxloop`, the
/// calls, and `first` and `next`.
const NPENDING_AFTER_MUTEX_3_13: u64 = 4;
const MAX_AFTER_MUTEX_3_13: u64 = 8;
const FIRST_AFTER_MUTEX_3_13: u64 = 16 + ARRAY_3_13 as u64 * 24;
/// 3.13's queues share one array size (`PENDINGCALLSARRAYSIZE`) of 24-byte calls; the main
/// thread's uses 32 of them.
const ARRAY_3_13: i32 = 300;
/// `offsetof(PyInterpreterState, ceval.recursion_limit)` in 3.12.1 (used for a warning only,
/// and only when what it reads is a plausible limit).
const RECURSION_LIMIT_3_12: u64 = 376;
/// Pending calls the main thread's queue holds, in both versions.
const QUEUE_LENGTH: i32 = 32;
/// How far into the runtime the queue is looked for: it comes long before the main
/// interpreter, which the runtime holds too (with a queue of its own, of another shape).
const SEARCH_BYTES: u64 = 16 * 1024;
/// Where the headers of pyenv's 3.12.1 (`pending.busy`) and 3.13.0 (`pending.mutex`) put the
/// queue: tried first, and taken if it has the shape, as a second place with the shape exists
/// in 3.12's runtime.
const AT_3_12: u64 = 2016;
const AT_3_13: u64 = 2648;

/// The lock guarding the main thread's pending calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingLock {
    /// 3.12: a semaphore whose 32-bit count is 1 when free, 0 when held.
    Semaphore(u64),
    /// 3.13: a `PyMutex`, bit 0 set while held, bit 1 while a thread waits for it.
    Mutex(u64),
}

impl PendingLock {
    /// Whether nobody holds it now; `None` when it cannot be read or holds what the
    /// interpreter never puts there.
    pub fn is_free(&self, memory: &dyn AddressSpace) -> Option<bool> {
        match *self {
            PendingLock::Semaphore(at) => {
                let bytes: [u8; 4] = memory.read(at, 4)?.try_into().ok()?;
                match u32::from_ne_bytes(bytes) {
                    1 => Some(true),
                    0 => Some(false),
                    _ => None,
                }
            }
            // Free only with nobody waiting either: a waiter would send the call down the slow
            // path, which parks (and may let the GIL go) in the borrowed thread.
            PendingLock::Mutex(at) => {
                let byte = *memory.read(at, 1)?.first()?;
                (byte <= 3).then_some(byte == 0)
            }
        }
    }
}

fn malformed(addr: u64, why: &'static str) -> ObjectError {
    ObjectError::Malformed { what: "pending-call queue", addr, why }
}

fn int_in(bytes: &[u8], at: u64) -> Option<i32> {
    let at = usize::try_from(at).ok()?;
    Some(i32::from_ne_bytes(bytes.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

/// Finds the main thread's pending-call lock of the runtime at `runtime`: the one place in the
/// runtime, before its main interpreter, that has the queue's shape (limits, ring indices, and
/// for 3.12 a pointer to a free or held semaphore). None, or more than one, is an error.
pub fn lock(reader: &ObjectReader, runtime: u64) -> Result<PendingLock, ObjectError> {
    reader.new_walk();
    let layout = reader.layout();
    let minor = layout.version.minor();
    let interp = reader.word(runtime.wrapping_add(layout.interpreters_head))?;
    let window = interp.wrapping_sub(runtime).min(SEARCH_BYTES);
    let bytes = reader.bytes_at(runtime, window as usize)?;
    let shaped = |at: u64| queue_shape(reader, &bytes, minor, runtime, at);
    let known = match minor {
        12 => AT_3_12,
        13 => AT_3_13,
        _ => return Err(malformed(runtime, "only 3.12 and 3.13 are read this way")),
    };
    if let Some(lock) = shaped(known) {
        return Ok(lock);
    }
    let found: Vec<PendingLock> = (8..window).step_by(8).filter_map(shaped).collect();
    match found[..] {
        [lock] => Ok(lock),
        [] => Err(malformed(runtime, "nothing in the runtime has the main thread's queue's shape")),
        _ => Err(malformed(runtime, "more than one place in the runtime has the queue's shape")),
    }
}

/// The lock of the queue at `at` in the runtime's first bytes, if the queue has its shape there.
fn queue_shape(reader: &ObjectReader, bytes: &[u8], minor: u32, runtime: u64, at: u64) -> Option<PendingLock> {
    let ring_length = if minor == 12 { QUEUE_LENGTH } else { ARRAY_3_13 };
    let ring = |at: u64| int_in(bytes, at).is_some_and(|i| (0..ring_length).contains(&i));
    let lock = match minor {
        12 => {
            let busy_ok = int_in(bytes, at).is_some_and(|b| b == 0 || b == 1) && int_in(bytes, at + 4) == Some(0);
            let flags_ok = [16, 20].iter().all(|&o| int_in(bytes, at + o).is_some_and(|f| f == 0 || f == 1));
            let first = at + FIRST_AFTER_BUSY_3_12;
            if !(busy_ok && flags_ok && ring(first) && ring(first + 4)) {
                return None;
            }
            let pointer = bytes.get(at as usize + 8..at as usize + 16)?;
            let semaphore = super::objects::word_in(pointer, 0);
            if semaphore < 4096 || semaphore % 8 != 0 {
                return None;
            }
            let count = reader.bytes_at(semaphore, 4).ok().and_then(|b| int_in(&b, 0));
            if !count.is_some_and(|c| c == 0 || c == 1) {
                return None;
            }
            debug_assert_eq!(LOCK_AFTER_BUSY_3_12, 8);
            PendingLock::Semaphore(semaphore)
        }
        _ => {
            let &mutex = bytes.get(at as usize)?;
            let padding_ok = bytes.get(at as usize + 1..at as usize + 4).is_some_and(|p| p == [0, 0, 0]);
            let queued = int_in(bytes, at + NPENDING_AFTER_MUTEX_3_13);
            let limits = (int_in(bytes, at + MAX_AFTER_MUTEX_3_13), int_in(bytes, at + MAX_AFTER_MUTEX_3_13 + 4));
            let first = at + FIRST_AFTER_MUTEX_3_13;
            if mutex > 3
                || !padding_ok
                || !queued.is_some_and(|q| (0..=QUEUE_LENGTH).contains(&q))
                || limits != (Some(QUEUE_LENGTH), Some(0))
                || !(ring(first) && ring(first + 4))
            {
                return None;
            }
            PendingLock::Mutex(runtime + at)
        }
    };
    Some(lock)
}

/// 3.12's recursion limit (`sys.getrecursionlimit()`) of the first interpreter; `None` on other
/// versions.
pub fn recursion_limit(reader: &ObjectReader, runtime: u64) -> Result<Option<i32>, ObjectError> {
    let layout = reader.layout();
    if layout.version.minor() != 12 {
        return Ok(None);
    }
    reader.new_walk();
    let interp = reader.word(runtime.wrapping_add(layout.interpreters_head))?;
    let bytes = reader.bytes_at(interp.wrapping_add(RECURSION_LIMIT_3_12), 4)?;
    let Some(limit) = int_in(&bytes, 0) else { return Ok(None) };
    // Another 3.12 patch release may keep it elsewhere: then there is no warning, not a wrong one.
    Ok((limit >= 1).then_some(limit))
}

/// The fields the shape is made of, relative to the headers' own names, for the test that
/// derives them again (the base is `pending.busy` in 3.12, `pending.mutex` in 3.13).
#[cfg(test)]
pub(crate) fn shape(version: PyVersion) -> Vec<(&'static str, u64)> {
    match version.minor() {
        12 => vec![
            ("pending.lock", LOCK_AFTER_BUSY_3_12),
            ("pending.first", FIRST_AFTER_BUSY_3_12),
            ("pending.last", FIRST_AFTER_BUSY_3_12 + 4),
        ],
        _ => vec![
            ("pending.npending", NPENDING_AFTER_MUTEX_3_13),
            ("pending.max", MAX_AFTER_MUTEX_3_13),
            ("pending.maxloop", MAX_AFTER_MUTEX_3_13 + 4),
            ("pending.first", FIRST_AFTER_MUTEX_3_13),
            ("pending.next", FIRST_AFTER_MUTEX_3_13 + 4),
        ],
    }
}

/// 3.12's recursion-limit offset, for the same test.
#[cfg(test)]
pub(crate) const RECURSION_LIMIT_OFFSET_3_12: u64 = RECURSION_LIMIT_3_12;
