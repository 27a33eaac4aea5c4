/* Prints, as `name value` lines, what ember's frame reader needs to know about one CPython
 * build's layouts, from that build's internal headers:
 *   3.12: the offsets themselves (3.12 publishes none);
 *   3.13+: where in _Py_DebugOffsets each needed offset is published ("at.*"), so the reader
 *          takes the values from the target itself.
 * Build: cc -I INCLUDE -I INCLUDE/internal derive.c (see derive.sh). */
#define Py_BUILD_CORE 1
#include <Python.h>
#include <stddef.h>
#include <stdio.h>
#include "internal/pycore_runtime.h"
#include "internal/pycore_interp.h"
#include "internal/pycore_frame.h"
#include "internal/pycore_code.h"
#if PY_VERSION_HEX >= 0x030e0000
#include "internal/pycore_ceval.h"
#endif

#define P(name, expr) printf("%s %zu\n", name, (size_t)(expr))

int main(void) {
    P("version_hex", PY_VERSION_HEX);
#if PY_VERSION_HEX < 0x030d0000
    P("runtime.interpreters_head", offsetof(_PyRuntimeState, interpreters.head));
    P("interp.next", offsetof(PyInterpreterState, next));
    P("interp.threads_head", offsetof(PyInterpreterState, threads.head));
    P("interp.ceval_gil", offsetof(PyInterpreterState, ceval.gil));
    P("gil.last_holder", offsetof(struct _gil_runtime_state, last_holder));
    P("gil.locked", offsetof(struct _gil_runtime_state, locked));
    P("thread.next", offsetof(PyThreadState, next));
    P("thread.interp", offsetof(PyThreadState, interp));
    P("thread.cframe", offsetof(PyThreadState, cframe));
    P("thread.native_thread_id", offsetof(PyThreadState, native_thread_id));
    P("cframe.current_frame", offsetof(_PyCFrame, current_frame));
    P("frame.previous", offsetof(_PyInterpreterFrame, previous));
    P("frame.code", offsetof(_PyInterpreterFrame, f_code));
    P("frame.instr", offsetof(_PyInterpreterFrame, prev_instr));
    P("frame.owner", offsetof(_PyInterpreterFrame, owner));
    P("code.filename", offsetof(PyCodeObject, co_filename));
    P("code.name", offsetof(PyCodeObject, co_name));
    P("code.qualname", offsetof(PyCodeObject, co_qualname));
    P("code.linetable", offsetof(PyCodeObject, co_linetable));
    P("code.firstlineno", offsetof(PyCodeObject, co_firstlineno));
    P("code.code_adaptive", offsetof(PyCodeObject, co_code_adaptive));
    P("object.ob_type", offsetof(PyObject, ob_type));
    P("bytes.ob_size", offsetof(PyBytesObject, ob_base.ob_size));
    P("bytes.ob_sval", offsetof(PyBytesObject, ob_sval));
    P("unicode.state", offsetof(PyASCIIObject, state));
    P("unicode.length", offsetof(PyASCIIObject, length));
    P("unicode.ascii_size", sizeof(PyASCIIObject));
#else
#define AT(name, field) P("at." name, offsetof(_Py_DebugOffsets, field))
    P("debug_offsets.size", sizeof(_Py_DebugOffsets));
    AT("free_threaded", free_threaded);
    AT("runtime.interpreters_head", runtime_state.interpreters_head);
    AT("interp.next", interpreter_state.next);
    AT("interp.threads_head", interpreter_state.threads_head);
    AT("interp.gil_locked", interpreter_state.gil_runtime_state_locked);
    AT("interp.gil_holder", interpreter_state.gil_runtime_state_holder);
    AT("thread.next", thread_state.next);
    AT("thread.interp", thread_state.interp);
    AT("thread.current_frame", thread_state.current_frame);
    AT("thread.native_thread_id", thread_state.native_thread_id);
    AT("frame.previous", interpreter_frame.previous);
    AT("frame.code", interpreter_frame.executable);
    AT("frame.instr", interpreter_frame.instr_ptr);
    AT("frame.owner", interpreter_frame.owner);
    AT("code.filename", code_object.filename);
    AT("code.name", code_object.name);
    AT("code.qualname", code_object.qualname);
    AT("code.linetable", code_object.linetable);
    AT("code.firstlineno", code_object.firstlineno);
    AT("code.code_adaptive", code_object.co_code_adaptive);
    AT("object.ob_type", pyobject.ob_type);
    AT("bytes.ob_size", bytes_object.ob_size);
    AT("bytes.ob_sval", bytes_object.ob_sval);
    AT("unicode.state", unicode_object.state);
    AT("unicode.length", unicode_object.length);
    AT("unicode.ascii_size", unicode_object.asciiobject_size);
#if PY_VERSION_HEX >= 0x030e0000
    /* PEP 768 remote execution (record --pid turns the trampoline on through it). */
    AT("debugger.eval_breaker", debugger_support.eval_breaker);
    AT("debugger.remote_support", debugger_support.remote_debugger_support);
    AT("debugger.enabled", debugger_support.remote_debugging_enabled);
    AT("debugger.pending_call", debugger_support.debugger_pending_call);
    AT("debugger.script_path", debugger_support.debugger_script_path);
    AT("debugger.script_path_size", debugger_support.debugger_script_path_size);
    P("debugger.please_stop_bit", _PY_EVAL_PLEASE_STOP_BIT);
#endif
#endif
#if PY_VERSION_HEX < 0x030e0000
    /* Not published: the main thread's pending calls (3.12/3.13 activation queues one). */
#if PY_VERSION_HEX < 0x030d0000
    P("pending.busy", offsetof(_PyRuntimeState, ceval.pending_mainthread.busy));
    P("pending.lock", offsetof(_PyRuntimeState, ceval.pending_mainthread.lock));
    P("pending.first", offsetof(_PyRuntimeState, ceval.pending_mainthread.first));
    P("pending.last", offsetof(_PyRuntimeState, ceval.pending_mainthread.last));
    P("interp.recursion_limit", offsetof(PyInterpreterState, ceval.recursion_limit));
#else
    P("pending.mutex", offsetof(_PyRuntimeState, ceval.pending_mainthread.mutex));
    P("pending.npending", offsetof(_PyRuntimeState, ceval.pending_mainthread.npending));
    P("pending.max", offsetof(_PyRuntimeState, ceval.pending_mainthread.max));
    P("pending.maxloop", offsetof(_PyRuntimeState, ceval.pending_mainthread.maxloop));
    P("pending.first", offsetof(_PyRuntimeState, ceval.pending_mainthread.first));
    P("pending.next", offsetof(_PyRuntimeState, ceval.pending_mainthread.next));
#endif
#endif
    /* Not published, and the same in every default (GIL) build so far; checked here. */
    P("code.extra_before_adaptive", offsetof(PyCodeObject, co_code_adaptive) - offsetof(PyCodeObject, co_extra));
    P("owner.generator", FRAME_OWNED_BY_GENERATOR);
    return 0;
}
