//! The module's builtin functions (the sys.monitoring callbacks, READY, the record writers,
//! init/close) and its init function.

use std::cell::UnsafeCell;
use std::ptr::{null, null_mut};

use crate::ffi::{
    as_i64, instance_int, int_args, none, none_ptr, now, raise, type_error, Held, PyErr_Clear, PyExc_RuntimeError,
    PyInterpreterState_Get, PyInterpreterState_GetID, PyMethodDef, PyModuleDef, PyModule_AddIntConstant,
    PyModule_Create2, PyObject, PyObject_CallNoArgs, PyObject_GetAttr, PyObject_Vectorcall, PyType_IsSubtype,
    PyUnicode_InternFromString, Py_DecRef, METH_FASTCALL, PYTHON_ABI_VERSION,
};
use crate::ring::{self, with_ring, READY, RING_VERSION, START, STOP};

/// Attribute names, interned once at module init.
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
        let word = if task.0 == none_ptr() { None } else { instance_int(task.0, names().ember) };
        Some((task, word))
    }
}

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
    with_ring(|ring| ring.publish_all());
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
        // SAFETY: GIL held; reading the exception type's pointer.
        return raise(unsafe { PyExc_RuntimeError }, c"_ember_accel: main interpreter only");
    }
    // SAFETY: GIL held; five live arguments, checked above.
    let opened = unsafe { ring::open(*args, &*args.add(1).cast::<[*mut PyObject; 4]>()) };
    if opened {
        none()
    } else {
        null_mut()
    }
}

/// close(): stops writing and lets go of the buffer (the mapping can be closed after this).
unsafe extern "C" fn close(_: *mut PyObject, _: *const *mut PyObject, _: isize) -> *mut PyObject {
    ring::close();
    none()
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
