//! The stable ABI, as much of it as we use (Include/object.h, pybuffer.h, moduleobject.h),
//! declared by hand: Python is not linked, the interpreter provides these symbols when it
//! loads the module. Plus the few thin helpers every entry point shares.

use std::ffi::{c_char, c_int, c_long, c_void, CStr};
use std::ptr::{addr_of_mut, null_mut};

#[repr(C)]
pub struct PyObject {
    pub refcnt: isize,
    pub ob_type: *mut PyObject,
}

#[repr(C)]
pub struct PyBuffer {
    pub buf: *mut c_void,
    pub obj: *mut PyObject,
    pub len: isize,
    pub itemsize: isize,
    pub readonly: c_int,
    pub ndim: c_int,
    pub format: *mut c_char,
    pub shape: *mut isize,
    pub strides: *mut isize,
    pub suboffsets: *mut isize,
    pub internal: *mut c_void,
}

pub type FastCall = unsafe extern "C" fn(*mut PyObject, *const *mut PyObject, isize) -> *mut PyObject;

#[repr(C)]
pub struct PyMethodDef {
    pub name: *const c_char,
    pub meth: Option<FastCall>,
    pub flags: c_int,
    pub doc: *const c_char,
}

#[repr(C)]
pub struct PyModuleDef {
    pub ob_base: PyObject,
    pub m_init: Option<unsafe extern "C" fn() -> *mut PyObject>,
    pub m_index: isize,
    pub m_copy: *mut PyObject,
    pub name: *const c_char,
    pub doc: *const c_char,
    pub size: isize,
    pub methods: *mut PyMethodDef,
    pub slots: *mut c_void,
    pub traverse: *mut c_void,
    pub clear: *mut c_void,
    pub free: *mut c_void,
}

// Record words are i64 and go through PyLong_AsLong: CPython converts a multi-digit int to a
// long with a fast loop, to a long long through _PyLong_AsByteArray (~4x the instructions).
const _: () = assert!(std::mem::size_of::<c_long>() == 8, "LP64 only");

pub const METH_FASTCALL: c_int = 0x80;
pub const PYBUF_WRITABLE: c_int = 0x0001;
pub const PYTHON_ABI_VERSION: c_int = 3;

extern "C" {
    pub static mut _Py_NoneStruct: PyObject;
    pub static mut PyExc_TypeError: *mut PyObject;
    pub static mut PyExc_ValueError: *mut PyObject;
    pub fn PyModule_Create2(def: *mut PyModuleDef, apiver: c_int) -> *mut PyObject;
    pub fn PyModule_AddIntConstant(module: *mut PyObject, name: *const c_char, value: c_long) -> c_int;
    pub fn Py_IncRef(o: *mut PyObject);
    pub fn Py_DecRef(o: *mut PyObject);
    pub fn PyLong_AsLong(o: *mut PyObject) -> c_long;
    pub fn PyErr_Occurred() -> *mut PyObject;
    pub fn PyErr_Clear();
    pub fn PyErr_SetString(kind: *mut PyObject, message: *const c_char);
    pub fn PyObject_GetAttr(o: *mut PyObject, name: *mut PyObject) -> *mut PyObject;
    pub fn PyObject_GenericGetDict(o: *mut PyObject, context: *mut c_void) -> *mut PyObject;
    pub fn PyDict_GetItemWithError(dict: *mut PyObject, key: *mut PyObject) -> *mut PyObject;
    pub fn PyObject_CallNoArgs(callable: *mut PyObject) -> *mut PyObject;
    pub fn PyObject_Vectorcall(
        callable: *mut PyObject,
        args: *const *mut PyObject,
        nargsf: usize,
        kwnames: *mut PyObject,
    ) -> *mut PyObject;
    pub fn PyObject_GetBuffer(o: *mut PyObject, view: *mut PyBuffer, flags: c_int) -> c_int;
    pub fn PyBuffer_Release(view: *mut PyBuffer);
    pub fn PyType_IsSubtype(a: *mut PyObject, b: *mut PyObject) -> c_int;
    pub fn PyUnicode_InternFromString(s: *const c_char) -> *mut PyObject;
    pub fn PyInterpreterState_Get() -> *mut c_void;
    pub fn PyInterpreterState_GetID(interpreter: *mut c_void) -> i64;
    pub static mut PyExc_RuntimeError: *mut PyObject;
    fn clock_gettime(clock: c_int, ts: *mut Timespec) -> c_int;
}

#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}

const CLOCK_MONOTONIC: c_int = 1;

/// CLOCK_MONOTONIC in ns, the clock of `time.monotonic_ns()` and of perf samples.
pub fn now() -> i64 {
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { clock_gettime(CLOCK_MONOTONIC, &mut ts) };
    ts.sec * 1_000_000_000 + ts.nsec
}

/// The None singleton, not owned.
pub fn none_ptr() -> *mut PyObject {
    addr_of_mut!(_Py_NoneStruct)
}

/// A new reference to None, what every entry point returns.
pub fn none() -> *mut PyObject {
    let none = none_ptr();
    // SAFETY: None is a static object; returning it needs a reference.
    unsafe { Py_IncRef(none) };
    none
}

/// An owned reference, released on drop: to keep a callable of the ring alive across a call
/// into Python (which might reach `close`), or a call's result until we are done with it.
pub struct Held(pub *mut PyObject);

impl Held {
    pub fn new(object: *mut PyObject) -> Self {
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
pub unsafe fn instance_int(object: *mut PyObject, name: *mut PyObject) -> Option<i64> {
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
pub unsafe fn as_i64(value: *mut PyObject) -> Option<i64> {
    // SAFETY: per the function's contract.
    unsafe {
        let number = PyLong_AsLong(value);
        (number != -1 || PyErr_Occurred().is_null()).then_some(number)
    }
}

/// The first N arguments as i64s, if there are exactly N ints.
///
/// # Safety
/// GIL held; `args` holds `nargs` live objects.
pub unsafe fn int_args<const N: usize>(args: *const *mut PyObject, nargs: isize) -> Option<[i64; N]> {
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

/// Raises `kind(message)`; returns the null an entry point returns for it.
pub fn raise(kind: *mut PyObject, message: &CStr) -> *mut PyObject {
    // SAFETY: GIL held; `kind` is an exception type; the message is a static C string.
    unsafe { PyErr_SetString(kind, message.as_ptr()) };
    null_mut()
}

pub fn type_error(message: &CStr) -> *mut PyObject {
    // SAFETY: GIL held; reading the exception type's pointer.
    raise(unsafe { PyExc_TypeError }, message)
}
