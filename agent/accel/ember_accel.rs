//! `_ember_accel`: the asyncio task monitor's per-step work in native code, an optional fast
//! path for `agent/python/ember_monitor.py`, which works the same without it.
//!
//! Why it exists: in pure Python, a sys.monitoring callback costs a Python call, and every
//! step of every task fires two of them (start and end), plus a `call_soon` wrapper for the
//! event-loop lag. That puts the worst case (tasks that do nothing but await) at ~1.45-1.6x
//! (docs/BENCHMARKS.md). Callbacks that are builtin functions cost a fraction of that.
//!
//! What it is: a CPython extension module for the stable ABI (abi3) of 3.12+, GIL builds only.
//! `agent/build.rs` compiles this one file with rustc (no crates: a build script cannot link
//! a dependency into a second artifact without a nested cargo build), the agent embeds the
//! library and writes it next to the monitor. It declares the few stable-ABI functions it
//! calls itself; Python is not linked, the interpreter provides them when it loads the module.
//!
//! It writes exactly the records the pure-Python writer writes (docs/TASK_RING.md) and owns
//! the ring's write position, so once `init` is called every record goes through here.
//! All state is global and touched only with the GIL held (every entry point is called by
//! Python); between reserving a slot and publishing it no Python code runs, so records from
//! different threads never interleave. Nothing here raises into the monitored program: the
//! sys.monitoring callbacks swallow errors and record nothing instead.

use std::cell::UnsafeCell;
use std::ffi::{c_char, c_int, c_long, c_void};
use std::ptr::{addr_of_mut, null, null_mut};
use std::sync::atomic::{AtomicI64, Ordering};

// ---- the stable ABI, as much of it as we use (Include/object.h, pybuffer.h, moduleobject.h)

#[repr(C)]
pub struct PyObject {
    refcnt: isize,
    ob_type: *mut PyObject,
}

#[repr(C)]
struct PyBuffer {
    buf: *mut c_void,
    obj: *mut PyObject,
    len: isize,
    itemsize: isize,
    readonly: c_int,
    ndim: c_int,
    format: *mut c_char,
    shape: *mut isize,
    strides: *mut isize,
    suboffsets: *mut isize,
    internal: *mut c_void,
}

type FastCall = unsafe extern "C" fn(*mut PyObject, *const *mut PyObject, isize) -> *mut PyObject;

#[repr(C)]
struct PyMethodDef {
    name: *const c_char,
    meth: Option<FastCall>,
    flags: c_int,
    doc: *const c_char,
}

#[repr(C)]
struct PyModuleDef {
    ob_base: PyObject,
    m_init: Option<unsafe extern "C" fn() -> *mut PyObject>,
    m_index: isize,
    m_copy: *mut PyObject,
    name: *const c_char,
    doc: *const c_char,
    size: isize,
    methods: *mut PyMethodDef,
    slots: *mut c_void,
    traverse: *mut c_void,
    clear: *mut c_void,
    free: *mut c_void,
}

// Record words are i64 and go through PyLong_AsLong: CPython converts a multi-digit int to a
// long with a fast loop, to a long long through _PyLong_AsByteArray (~4x the instructions).
const _: () = assert!(std::mem::size_of::<c_long>() == 8, "LP64 only");

const METH_FASTCALL: c_int = 0x80;
const PYBUF_WRITABLE: c_int = 0x0001;
const PYTHON_ABI_VERSION: c_int = 3;

extern "C" {
    static mut _Py_NoneStruct: PyObject;
    static mut PyExc_TypeError: *mut PyObject;
    static mut PyExc_ValueError: *mut PyObject;
    fn PyModule_Create2(def: *mut PyModuleDef, apiver: c_int) -> *mut PyObject;
    fn PyModule_AddIntConstant(module: *mut PyObject, name: *const c_char, value: c_long) -> c_int;
    fn Py_IncRef(o: *mut PyObject);
    fn Py_DecRef(o: *mut PyObject);
    fn PyLong_AsLong(o: *mut PyObject) -> c_long;
    fn PyErr_Occurred() -> *mut PyObject;
    fn PyErr_Clear();
    fn PyErr_SetString(kind: *mut PyObject, message: *const c_char);
    fn PyObject_GetAttr(o: *mut PyObject, name: *mut PyObject) -> *mut PyObject;
    fn PyObject_GenericGetDict(o: *mut PyObject, context: *mut c_void) -> *mut PyObject;
    fn PyDict_GetItemWithError(dict: *mut PyObject, key: *mut PyObject) -> *mut PyObject;
    fn PyObject_CallNoArgs(callable: *mut PyObject) -> *mut PyObject;
    fn PyObject_Vectorcall(
        callable: *mut PyObject,
        args: *const *mut PyObject,
        nargsf: usize,
        kwnames: *mut PyObject,
    ) -> *mut PyObject;
    fn PyObject_GetBuffer(o: *mut PyObject, view: *mut PyBuffer, flags: c_int) -> c_int;
    fn PyBuffer_Release(view: *mut PyBuffer);
    fn PyType_IsSubtype(a: *mut PyObject, b: *mut PyObject) -> c_int;
    fn PyUnicode_InternFromString(s: *const c_char) -> *mut PyObject;
    fn PyInterpreterState_Get() -> *mut c_void;
    fn PyInterpreterState_GetID(interpreter: *mut c_void) -> i64;
    static mut PyExc_RuntimeError: *mut PyObject;
    fn clock_gettime(clock: c_int, ts: *mut Timespec) -> c_int;
}

#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}

const CLOCK_MONOTONIC: c_int = 1;

// ---- the ring (docs/TASK_RING.md; the constants match ember_monitor.py)

const RING_VERSION: i64 = 2;
const HEADER_WORDS: usize = 8;
const RECORD_WORDS: usize = 2;
const PUBLISHED: usize = 3;
const LAP: usize = 4;
const START: i64 = 1;
const STOP: i64 = 2;
const READY: i64 = 13;

struct Ring {
    buffer: PyBuffer,
    words: *const AtomicI64,
    slots: usize,
    /// The next slot; `slots` means the next reservation wraps around.
    next: usize,
    lap: i64,
    current_task: *mut PyObject,
    adopt: *mut PyObject,
    /// Tasks are instances of these (asyncio's C Future, and the pure-Python one).
    future_types: [*mut PyObject; 2],
    /// Callback types that have no `__self__` (strong references; null: free).
    selfless_types: [*mut PyObject; 8],
}

impl Ring {
    fn header(&self, index: usize) -> &AtomicI64 {
        // SAFETY: `words` covers the header and `slots` records (checked by init), and the
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

    fn store(&mut self, first: i64, second: i64) -> usize {
        let slot = self.reserve();
        self.word(slot, 0).store(first, Ordering::Relaxed);
        self.word(slot, 1).store(second, Ordering::Relaxed);
        slot
    }

    fn publish(&self, slot: usize) {
        self.header(PUBLISHED).store(slot as i64, Ordering::Release);
    }

    fn put(&mut self, first: i64, second: i64) {
        let slot = self.store(first, second);
        self.publish(slot);
    }

    fn remember_selfless(&mut self, callback_type: *mut PyObject) {
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
fn with_ring<T>(f: impl FnOnce(&mut Ring) -> T) -> Option<T> {
    // SAFETY: the GIL is held (we are called from Python) and no other `&mut` is live: callers
    // never nest with_ring, and `f` does not call Python.
    unsafe { (*RING.0.get()).as_mut().map(f) }
}

struct Names {
    ember: *mut PyObject,
    self_: *mut PyObject,
}

struct GlobalNames(UnsafeCell<Names>);

// SAFETY: written once at module init, under the GIL; read-only afterwards.
unsafe impl Sync for GlobalNames {}

static NAMES: GlobalNames = GlobalNames(UnsafeCell::new(Names { ember: null_mut(), self_: null_mut() }));

fn names() -> &'static Names {
    // SAFETY: see GlobalNames.
    unsafe { &*NAMES.0.get() }
}

fn now() -> i64 {
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { clock_gettime(CLOCK_MONOTONIC, &mut ts) };
    ts.sec * 1_000_000_000 + ts.nsec
}

fn none() -> *mut PyObject {
    // SAFETY: None is a static object; returning it needs a reference.
    unsafe {
        let none = addr_of_mut!(_Py_NoneStruct);
        Py_IncRef(none);
        none
    }
}

/// An owned reference, released on drop: to keep a callable of the ring alive across a call
/// into Python (which might reach `close`), or a call's result until we are done with it.
struct Held(*mut PyObject);

impl Held {
    fn new(object: *mut PyObject) -> Self {
        // SAFETY: a live object owned by the ring.
        unsafe { Py_IncRef(object) };
        Held(object)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // SAFETY: the reference taken in `new`.
        unsafe { Py_DecRef(self.0) };
    }
}

/// `object.<name>` from the instance's own dict, as an i64; None if it is missing, not an int,
/// or the object has no dict (the error is cleared). Reading the dict directly costs about
/// half of PyObject_GetAttr, and a missing name raises no AttributeError (which costs
/// thousands of instructions, as on an eager task's first step).
///
/// # Safety
/// GIL held, `object` and `name` live.
unsafe fn instance_int(object: *mut PyObject, name: *mut PyObject) -> Option<i64> {
    // SAFETY: per the function's contract; `value` is borrowed from `dict`, which `object`
    // keeps alive while we convert it.
    unsafe {
        let dict = PyObject_GenericGetDict(object, null_mut());
        if dict.is_null() {
            PyErr_Clear();
            return None;
        }
        let value = PyDict_GetItemWithError(dict, name);
        let number = if value.is_null() { None } else { as_i64(value) };
        Py_DecRef(dict);
        if number.is_none() && !PyErr_Occurred().is_null() {
            PyErr_Clear();
        }
        number
    }
}

/// An int as i64; None (with an error set) if it is not one or does not fit.
///
/// # Safety
/// GIL held, `value` live.
unsafe fn as_i64(value: *mut PyObject) -> Option<i64> {
    // SAFETY: per the function's contract.
    unsafe {
        let number = PyLong_AsLong(value);
        (number != -1 || PyErr_Occurred().is_null()).then_some(number)
    }
}

/// The START word of the task running now: `current_task()._ember`, or what `adopt(task)`
/// returns for a task without one (an eager task's first step, a task from before start(),
/// None for a coroutine driven outside any task). 0: record nothing.
fn current_start_word() -> i64 {
    let Some((current_task, adopt)) = with_ring(|ring| (Held::new(ring.current_task), Held::new(ring.adopt))) else {
        return 0;
    };
    let Some((task, known)) = running_task(&current_task) else {
        return 0;
    };
    // SAFETY: GIL held; `task` is live (`Held`), `adopt` is kept alive by `Held`.
    known.unwrap_or_else(|| unsafe {
        let args = [task.0];
        let result = PyObject_Vectorcall(adopt.0, args.as_ptr(), 1, null_mut());
        let word = if result.is_null() { None } else { as_i64(result) };
        if !result.is_null() {
            Py_DecRef(result);
        }
        word.unwrap_or_else(|| {
            PyErr_Clear();
            0
        })
    })
}

/// The running task (None if there is none, or asking failed: the error is cleared) and its
/// START word, if it has one.
fn running_task(current_task: &Held) -> Option<(Held, Option<i64>)> {
    // SAFETY: GIL held; the callable is kept alive by `Held`.
    unsafe {
        let task = PyObject_CallNoArgs(current_task.0);
        if task.is_null() {
            PyErr_Clear();
            return None;
        }
        // `task` is a new reference: `Held` owns it from here on.
        let task = Held(task);
        let word = if task.0 == addr_of_mut!(_Py_NoneStruct) { None } else { instance_int(task.0, names().ember) };
        Some((task, word))
    }
}

// ---- entry points

/// sys.monitoring PY_START / PY_RESUME of a root coroutine: the running task starts a step.
unsafe extern "C" fn on_start(_: *mut PyObject, _: *const *mut PyObject, _: isize) -> *mut PyObject {
    let word = current_start_word();
    if word != 0 {
        let time = now();
        with_ring(|ring| ring.put(word, time));
    }
    none()
}

/// PY_YIELD while one thread runs asyncio: a bare time, published by the next START.
unsafe extern "C" fn on_yield(_: *mut PyObject, _: *const *mut PyObject, _: isize) -> *mut PyObject {
    let time = now();
    with_ring(|ring| ring.store(time, 0));
    none()
}

/// PY_YIELD with more than one asyncio thread: the STOP names its task.
unsafe extern "C" fn on_yield_multi(_: *mut PyObject, _: *const *mut PyObject, _: isize) -> *mut PyObject {
    let Some(current_task) = with_ring(|ring| Held::new(ring.current_task)) else {
        return none();
    };
    // No word: no START was written for it either.
    if let Some((_, Some(word))) = running_task(&current_task) {
        let time = now();
        with_ring(|ring| ring.put(word + (STOP - START), time));
    }
    none()
}

/// READY for a callback the loop schedules: a task's step or wakeup (both have the task as
/// `__self__`). Other callbacks record nothing. Callback types without `__self__` (plain
/// functions, partials) are remembered, so that they raise AttributeError once, not per call.
unsafe extern "C" fn ready(_: *mut PyObject, args: *const *mut PyObject, nargs: isize) -> *mut PyObject {
    if nargs != 1 {
        return type_error(c"ready(callback)");
    }
    // SAFETY: GIL held; one argument, checked above.
    let callback = unsafe { *args };
    // SAFETY: a live object's header.
    let callback_type = unsafe { (*callback).ob_type };
    let Some((future_types, skip)) =
        with_ring(|ring| (ring.future_types, ring.selfless_types.contains(&callback_type)))
    else {
        return none();
    };
    if skip {
        return none();
    }
    // SAFETY: GIL held; `callback` is live for the call.
    unsafe {
        let owner = PyObject_GetAttr(callback, names().self_);
        if owner.is_null() {
            PyErr_Clear();
            with_ring(|ring| ring.remember_selfless(callback_type));
            return none();
        }
        let owner_type = (*owner).ob_type;
        let is_task = future_types.iter().any(|&base| !base.is_null() && PyType_IsSubtype(owner_type, base) != 0);
        let word = if is_task { instance_int(owner, names().ember) } else { None };
        Py_DecRef(owner);
        if let Some(word) = word.filter(|&word| word != 0) {
            let time = now();
            with_ring(|ring| ring.put(word + (READY - START), time));
        }
    }
    none()
}

/// put(first, second): one record, published.
unsafe extern "C" fn put(_: *mut PyObject, args: *const *mut PyObject, nargs: isize) -> *mut PyObject {
    // SAFETY: `args` holds `nargs` objects.
    let Some(words) = (unsafe { int_args::<2>(args, nargs) }) else {
        return type_error(c"put(first: int, second: int)");
    };
    with_ring(|ring| ring.put(words[0], words[1]));
    none()
}

/// put2(first, second, first, second): two records, published together.
unsafe extern "C" fn put2(_: *mut PyObject, args: *const *mut PyObject, nargs: isize) -> *mut PyObject {
    // SAFETY: `args` holds `nargs` objects.
    let Some(words) = (unsafe { int_args::<4>(args, nargs) }) else {
        return type_error(c"put2(first: int, second: int, first: int, second: int)");
    };
    with_ring(|ring| {
        ring.store(words[0], words[1]);
        let slot = ring.store(words[2], words[3]);
        ring.publish(slot);
    });
    none()
}

/// publish(): makes the bare STOPs written since the last published record visible.
unsafe extern "C" fn publish(_: *mut PyObject, _: *const *mut PyObject, _: isize) -> *mut PyObject {
    with_ring(|ring| ring.header(PUBLISHED).store(ring.next as i64 - 1, Ordering::Release));
    none()
}

/// init(buffer, current_task, adopt, future_type, py_future_type): takes over writing the ring
/// in `buffer` (writable, header already written, no record yet). Replaces any earlier ring;
/// an invalid buffer raises and leaves the earlier ring as it was.
unsafe extern "C" fn init(_: *mut PyObject, args: *const *mut PyObject, nargs: isize) -> *mut PyObject {
    if nargs != 5 {
        return type_error(c"init(buffer, current_task, adopt, future_type, py_future_type)");
    }
    // The ring and the callables are process-wide: a second interpreter (which has its own
    // objects and its own sys.monitoring) must not take them over.
    // SAFETY: GIL held, so there is a current interpreter.
    if unsafe { PyInterpreterState_GetID(PyInterpreterState_Get()) } != 0 {
        // SAFETY: GIL held; a static message.
        unsafe { PyErr_SetString(PyExc_RuntimeError, c"_ember_accel: main interpreter only".as_ptr()) };
        return null_mut();
    }
    // SAFETY: GIL held; five arguments, checked above; the buffer struct is filled by
    // PyObject_GetBuffer before it is read.
    unsafe {
        let args = std::slice::from_raw_parts(args, 5);
        let mut buffer: PyBuffer = std::mem::zeroed();
        if PyObject_GetBuffer(args[0], &mut buffer, PYBUF_WRITABLE) != 0 {
            return null_mut();
        }
        let words = buffer.buf as *const AtomicI64;
        let header_bytes = (HEADER_WORDS * 8) as isize;
        let valid = buffer.len >= header_bytes && words.is_aligned() && {
            let version = (*words.add(1)).load(Ordering::Relaxed) & 0xFFFF_FFFF;
            let slots = (*words.add(2)).load(Ordering::Relaxed);
            version == RING_VERSION
                && (64..=1 << 24).contains(&slots)
                && header_bytes + slots as isize * (RECORD_WORDS * 8) as isize <= buffer.len
        };
        if !valid {
            PyBuffer_Release(&mut buffer);
            PyErr_SetString(PyExc_ValueError, c"init: not an ember ring of version 2".as_ptr());
            return null_mut();
        }
        let slots = (*words.add(2)).load(Ordering::Relaxed) as usize;
        close_ring();
        for &object in &args[1..] {
            Py_IncRef(object);
        }
        let none = addr_of_mut!(_Py_NoneStruct);
        let future_type = |object: *mut PyObject| if object == none { null_mut() } else { object };
        *RING.0.get() = Some(Ring {
            buffer,
            words,
            slots,
            next: 0,
            lap: 0,
            current_task: args[1],
            adopt: args[2],
            future_types: [future_type(args[3]), future_type(args[4])],
            selfless_types: [null_mut(); 8],
        });
    }
    none()
}

/// close(): stops writing and lets go of the buffer (the mapping can be closed after this).
unsafe extern "C" fn close(_: *mut PyObject, _: *const *mut PyObject, _: isize) -> *mut PyObject {
    close_ring();
    none()
}

fn close_ring() {
    // SAFETY: GIL held; the ring is taken out first, so nothing can reach it while the
    // references it held are released (which may run Python code).
    unsafe {
        if let Some(mut ring) = (*RING.0.get()).take() {
            PyBuffer_Release(&mut ring.buffer);
            let none = addr_of_mut!(_Py_NoneStruct);
            for object in [ring.current_task, ring.adopt, ring.future_types[0], ring.future_types[1]] {
                Py_DecRef(if object.is_null() { none } else { object });
            }
            for object in ring.selfless_types.into_iter().filter(|t| !t.is_null()) {
                Py_DecRef(object);
            }
        }
    }
}

/// The first N arguments as i64s, if there are exactly N ints.
///
/// # Safety
/// GIL held; `args` holds `nargs` live objects.
unsafe fn int_args<const N: usize>(args: *const *mut PyObject, nargs: isize) -> Option<[i64; N]> {
    if nargs != N as isize {
        return None;
    }
    let mut words = [0i64; N];
    for (i, word) in words.iter_mut().enumerate() {
        // SAFETY: i < nargs.
        unsafe {
            let Some(value) = as_i64(*args.add(i)) else {
                PyErr_Clear();
                return None;
            };
            *word = value;
        }
    }
    Some(words)
}

fn type_error(message: &std::ffi::CStr) -> *mut PyObject {
    // SAFETY: GIL held; the message is a static C string.
    unsafe { PyErr_SetString(PyExc_TypeError, message.as_ptr()) };
    null_mut()
}

// ---- the module

macro_rules! method {
    ($name:ident, $doc:literal) => {
        PyMethodDef {
            name: concat!(stringify!($name), "\0").as_ptr().cast(),
            meth: Some($name),
            flags: METH_FASTCALL,
            doc: concat!($doc, "\0").as_ptr().cast(),
        }
    };
}

struct ModuleTables(UnsafeCell<(PyModuleDef, [PyMethodDef; 10])>);

// SAFETY: handed to CPython once, at import, under the GIL.
unsafe impl Sync for ModuleTables {}

static MODULE: ModuleTables = ModuleTables(UnsafeCell::new((
    PyModuleDef {
        ob_base: PyObject { refcnt: 1, ob_type: null_mut() },
        m_init: None,
        m_index: 0,
        m_copy: null_mut(),
        name: c"_ember_accel".as_ptr(),
        doc: c"ember's asyncio task monitor, per-step work in native code.".as_ptr(),
        size: -1,
        methods: null_mut(),
        slots: null_mut(),
        traverse: null_mut(),
        clear: null_mut(),
        free: null_mut(),
    },
    [
        method!(init, "init(buffer, current_task, adopt, future_type, py_future_type)"),
        method!(close, "close()"),
        method!(on_start, "sys.monitoring PY_START/PY_RESUME callback"),
        method!(on_yield, "sys.monitoring PY_YIELD callback, one asyncio thread"),
        method!(on_yield_multi, "sys.monitoring PY_YIELD callback, several asyncio threads"),
        method!(ready, "ready(callback): READY if callback belongs to a task"),
        method!(put, "put(first, second)"),
        method!(put2, "put2(first, second, first, second)"),
        method!(publish, "publish()"),
        PyMethodDef { name: null(), meth: None, flags: 0, doc: null() },
    ],
)));

/// # Safety
/// Called by CPython's import machinery, with the GIL held.
#[no_mangle]
pub unsafe extern "C" fn PyInit__ember_accel() -> *mut PyObject {
    // SAFETY: GIL held; the tables are static and handed over once.
    unsafe {
        let names = &mut *NAMES.0.get();
        if names.ember.is_null() {
            names.ember = PyUnicode_InternFromString(c"_ember".as_ptr());
            names.self_ = PyUnicode_InternFromString(c"__self__".as_ptr());
            if names.ember.is_null() || names.self_.is_null() {
                return null_mut();
            }
        }
        let tables = &mut *MODULE.0.get();
        tables.0.methods = tables.1.as_mut_ptr();
        let module = PyModule_Create2(&mut tables.0, PYTHON_ABI_VERSION);
        if !module.is_null() && PyModule_AddIntConstant(module, c"RING_VERSION".as_ptr(), RING_VERSION as _) != 0 {
            Py_DecRef(module);
            return null_mut();
        }
        module
    }
}
