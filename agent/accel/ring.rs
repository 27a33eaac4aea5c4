//! The ring writer (docs/TASK_RING.md): the process's one ring, its write position, and the
//! objects the entry points need to find the running task.

use std::cell::UnsafeCell;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::ffi::{
    none_ptr, raise, PyBuffer, PyBuffer_Release, PyExc_ValueError, PyObject, PyObject_GetBuffer, Py_DecRef, Py_IncRef,
    PYBUF_WRITABLE,
};

use crate::format::{self, LAP, PUBLISHED};

// The format's constants in the types the writer computes with.
pub const RING_VERSION: i64 = format::VERSION as i64;
const HEADER_WORDS: usize = format::HEADER_SIZE as usize / 8;
const RECORD_WORDS: usize = format::RECORD_SIZE as usize / 8;
const MIN_SLOTS: i64 = format::MIN_SLOTS as i64;
const MAX_SLOTS: i64 = format::MAX_SLOTS as i64;
const SLOTS: usize = format::SLOTS;
const LAYOUT: usize = format::LAYOUT;
pub const START: i64 = format::START as i64;
pub const STOP: i64 = format::STOP as i64;
pub const READY: i64 = format::READY as i64;

pub struct Ring {
    buffer: PyBuffer,
    words: *const AtomicI64,
    slots: usize,
    /// The next slot; `slots` means the next reservation wraps around.
    next: usize,
    lap: i64,
    pub current_task: *mut PyObject,
    pub adopt: *mut PyObject,
    /// Tasks are instances of these (asyncio's C Future, and the pure-Python one).
    pub future_types: [*mut PyObject; 2],
    /// Callback types that have no `__self__` (strong references; null: free).
    pub selfless_types: [*mut PyObject; 8],
}

impl Ring {
    fn header(&self, index: usize) -> &AtomicI64 {
        // SAFETY: `words` covers the header and `slots` records (checked by `open`), and the
        // buffer export keeps the mapping alive and unresizable until `close`.
        unsafe { &*self.words.add(index) }
    }

    fn word(&self, slot: usize, index: usize) -> &AtomicI64 {
        // SAFETY: as above; `slot < slots`.
        unsafe { &*self.words.add(HEADER_WORDS + slot * RECORD_WORDS + index) }
    }

    /// The next slot, wrapping around: PUBLISHED is reset before LAP moves, so a reader never
    /// takes a position of the previous lap for one of this lap.
    fn reserve(&mut self) -> usize {
        if self.next == self.slots {
            self.header(PUBLISHED).store(-1, Ordering::Release);
            self.lap += 1;
            self.header(LAP).store(self.lap, Ordering::Release);
            self.next = 1;
            return 0;
        }
        self.next += 1;
        self.next - 1
    }

    /// Stores one record without publishing it (a bare STOP, or the first of a block).
    pub fn store(&mut self, first: i64, second: i64) -> usize {
        let slot = self.reserve();
        self.word(slot, 0).store(first, Ordering::Relaxed);
        self.word(slot, 1).store(second, Ordering::Relaxed);
        slot
    }

    pub fn publish(&self, slot: usize) {
        self.header(PUBLISHED).store(slot as i64, Ordering::Release);
    }

    /// Publishes everything stored so far (the bare STOPs since the last published record).
    pub fn publish_all(&self) {
        self.header(PUBLISHED).store(self.next as i64 - 1, Ordering::Release);
    }

    pub fn put(&mut self, first: i64, second: i64) {
        let slot = self.store(first, second);
        self.publish(slot);
    }

    pub fn remember_selfless(&mut self, callback_type: *mut PyObject) {
        if let Some(free) = self.selfless_types.iter_mut().find(|t| t.is_null()) {
            // SAFETY: GIL held; a live type, referenced until `close`.
            unsafe { Py_IncRef(callback_type) };
            *free = callback_type;
        }
    }
}

/// The one ring of this process. Only ever touched with the GIL held; a `&mut Ring` never lives
/// across a call into Python, which could re-enter this module.
struct Global(UnsafeCell<Option<Ring>>);

// SAFETY: every access happens with the GIL held, which serializes them.
unsafe impl Sync for Global {}

static RING: Global = Global(UnsafeCell::new(None));

/// Runs `f` on the ring, if there is one. `f` must not call into Python.
pub fn with_ring<T>(f: impl FnOnce(&mut Ring) -> T) -> Option<T> {
    // SAFETY: the GIL is held (we are called from Python) and no other `&mut` is live: callers
    // never nest with_ring, and `f` does not call Python.
    unsafe { (*RING.0.get()).as_mut().map(f) }
}

/// Takes over writing the ring in `buffer` (writable, header already written, no record yet)
/// with the callables `objects` = [current_task, adopt, future_type, py_future_type]; the
/// future types may be None. Replaces any earlier ring. An invalid buffer raises (returns
/// false) and leaves the earlier ring as it was.
///
/// # Safety
/// GIL held; the objects are live.
pub unsafe fn open(buffer_object: *mut PyObject, objects: &[*mut PyObject; 4]) -> bool {
    // SAFETY: per the function's contract; the buffer struct is filled by PyObject_GetBuffer
    // before it is read, and its length is checked before any word past the header is read.
    unsafe {
        let mut buffer: PyBuffer = std::mem::zeroed();
        if PyObject_GetBuffer(buffer_object, &mut buffer, PYBUF_WRITABLE) != 0 {
            return false;
        }
        let words = buffer.buf as *const AtomicI64;
        let header_bytes = (HEADER_WORDS * 8) as isize;
        let valid = buffer.len >= header_bytes && words.is_aligned() && {
            let version = (*words.add(LAYOUT)).load(Ordering::Relaxed) & 0xFFFF_FFFF;
            let slots = (*words.add(SLOTS)).load(Ordering::Relaxed);
            version == RING_VERSION
                && (MIN_SLOTS..=MAX_SLOTS).contains(&slots)
                && header_bytes + slots as isize * (RECORD_WORDS * 8) as isize <= buffer.len
        };
        if !valid {
            PyBuffer_Release(&mut buffer);
            raise(PyExc_ValueError, c"init: not an ember ring of version 2");
            return false;
        }
        let slots = (*words.add(SLOTS)).load(Ordering::Relaxed) as usize;
        close();
        for &object in objects {
            Py_IncRef(object);
        }
        let none = none_ptr();
        let future_type = |object: *mut PyObject| if object == none { null_mut() } else { object };
        *RING.0.get() = Some(Ring {
            buffer,
            words,
            slots,
            next: 0,
            lap: 0,
            current_task: objects[0],
            adopt: objects[1],
            future_types: [future_type(objects[2]), future_type(objects[3])],
            selfless_types: [null_mut(); 8],
        });
    }
    true
}

/// Stops writing and lets go of the buffer and of every object the ring held.
pub fn close() {
    // SAFETY: GIL held; the ring is taken out first, so nothing can reach it while the
    // references it held are released (which may run Python code).
    unsafe {
        if let Some(mut ring) = (*RING.0.get()).take() {
            PyBuffer_Release(&mut ring.buffer);
            let none = none_ptr();
            for object in [ring.current_task, ring.adopt, ring.future_types[0], ring.future_types[1]] {
                Py_DecRef(if object.is_null() { none } else { object });
            }
            for object in ring.selfless_types.into_iter().filter(|t| !t.is_null()) {
                Py_DecRef(object);
            }
        }
    }
}
