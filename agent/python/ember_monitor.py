"""ember's asyncio task monitor: records when every asyncio task runs, for ember-agent.

Standard library only, CPython 3.12+ (GIL builds). It turns on sys.monitoring (PEP 669) *local*
events for each task's root coroutine only, so code outside tasks pays nothing, and writes
16-byte records into a shared-memory ring: a sealed memfd named "ember-task-ring", so no file of
any file system is involved, and the ring can neither be planted nor truncated (which would kill
this process with SIGBUS). The agent reads it through /proc/PID/fd, or passes in one it made for
a command it launches (EMBER_TASK_RING_FD). Writing never blocks: when nobody reads, the ring wraps, and a reader that falls
behind counts what it missed. docs/TASK_RING.md describes the ring exactly;
agent/src/tasks/ring.rs decodes it.

    import ember_monitor
    ember_monitor.start()

The per-step work has a native fast path, _ember_accel (agent/accel/ember_accel.rs), which the
agent writes next to this file (`ember-agent export-monitor DIR` for in-code use). When it
imports, it writes every record; otherwise the pure-Python writers below write the same records
at about 1.6x the worst-case cost (docs/BENCHMARKS.md).

Why the pure-Python hot path looks the way it does (each point was measured):
- Callbacks are plain closures over cells: no method call, no attribute of an object, no
  threading.local, no dict.
- A task's id lives on the task (`task._ember` is its precomputed START record word): as cheap
  as a dict lookup, it never keeps a task alive and is never stale.
- A slot is two 8-byte words, stored through two strided memoryviews (word 0 and word 1 of each
  slot), so no index arithmetic. The views are 'l' (C long, 8 bytes on LP64): CPython converts a
  multi-digit int to a long with a fast loop, to a long long through _PyLong_AsByteArray.
- The next slot comes from `succ`, a tuple mapping each slot to the next one: a tuple subscript
  allocates nothing, where `pos += 1; pos & mask` allocates ints. The last slot maps to None;
  the TypeError that follows is the (rare) wrap-around path, inline.
- Reserving a slot, storing and publishing involve no call, so under the GIL no other thread
  runs in between (the eval breaker is only checked at calls, function entry and backward
  jumps): every slot up to the published one is complete.
- Record words that are not times are "tagged" (bit 62 set; times stay below 2**62). A step's
  end in single-thread mode is then one store: a bare time in word 0.
- Only START publishes the position; a step's end is published by the next START, by the loop
  before it waits for I/O (selector.select), when run_forever returns, or at exit.
- While only one thread runs asyncio, a step's end carries no task: the reader knows which task
  runs on that thread. When a second thread runs a loop or monitored code, a MODE record is
  written and PY_YIELD switches to a callback whose STOP names its task.
- Records carry no thread: a LOOP record says which OS thread runs a loop from then on, and each
  task's CREATE record names its loop.
"""
import _thread
import os
import sys

__all__ = ["start", "stop"]

MEMFD_NAME = "ember-task-ring"
RING_FD_ENV = "EMBER_TASK_RING_FD"  # a ring the agent made for this process
MAGIC = b"EMBRING2"
VERSION = 2
HEADER_SIZE = 64
RECORD_SIZE = 16
DEFAULT_CAPACITY = 2 << 20  # bytes of records: 131072 slots (pure Python: ~5 MiB of heap, see succ)
LAG = True  # record READY (event-loop lag) unless start(lag=False)

# Header words (little-endian i64): 0 magic, 1 version | record size << 32, 2 slots,
# 3 published slot (-1: none yet in this lap), 4 lap, 5 pid, 6 flags (bit 0: READY recorded,
# bit 1: written by _ember_accel),
# 7 monotonic_ns when the ring was created (a new value means the ring was recreated).
PUBLISHED, LAP = 3, 4
LAG_RECORDED, NATIVE = 1, 2  # header word 6 (flags)

# A tagged word: bit 62 set, kind in bits 0-7, flags 8-15, a task (or other) id 16-47, 48-61 per
# kind. Word 1 ("value") follows the kind. A word 0 below 2**62 (a time: monotonic_ns stays below
# it for 146 years of uptime) is a bare STOP (see STOP). Positive: Python's bitwise operations
# on negative ints allocate temporaries.
TAG = 1 << 62
START = 1  # the task starts a step; value = time. Flag THROWN: resumed by throw() (cancellation)
STOP = 2  # a step ends; value = time. Flags: 0 yield, 1 return, 2 raise. In single-thread mode a
#           yield is written as a bare time in word 0 (word 1 is stale): the running task stops.
DONE = 3  # the task finished: flags 0 result, 1 exception, 2 cancelled; value = exception type
#           string id (flags 1) else 0. Right after the STOP of its root coroutine's last step.
CREATE = 4  # a task was created; value = time; bits 48-61: loop id. Flag DEFAULT_NAME.
TASK = 5  # right after CREATE: id = parent task (0: none); value = name | coro << 32: coro is
#           the string id of the coroutine's __qualname__; name is the string id of the task
#           name, or with CREATE's DEFAULT_NAME the N of asyncio's default name "Task-N"
NAME = 7  # the task was renamed; value = name string id
STRING = 8  # id = string id; value = length in bytes; then ceil(length / 8) STRING_DATA
STRING_DATA = 9  # id = string id; value = the next 8 bytes of UTF-8 (zero padded)
LOOP = 10  # id = loop id; value = time: the loop runs on the OS thread of the THREAD record that
#            follows from now on
THREAD = 11  # id = loop id; value = OS thread id (threading.get_native_id)
MODE = 12  # value 1: from here on every STOP names its task (more than one asyncio thread)
READY = 13  # the task became ready to run (its step or wakeup was scheduled); value = time

THROWN = 1 << 8
DEFAULT_NAME = 1 << 8
HOW_RETURN = 1 << 8
HOW_RAISE = 2 << 8
OUT_EXCEPTION = 1 << 8
OUT_CANCELLED = 2 << 8
ID_MASK = 0xFFFFFFFF << 16

_E = sys.monitoring.events
_LOCAL_EVENTS = _E.PY_START | _E.PY_RESUME | _E.PY_YIELD | _E.PY_RETURN
_GLOBAL_EVENTS = _E.PY_THROW | _E.PY_UNWIND
_EVENTS = (_E.PY_START, _E.PY_RESUME, _E.PY_YIELD, _E.PY_RETURN, _E.PY_THROW, _E.PY_UNWIND)
# Tasks' START words, in order of task id. Module-wide: a restarted monitor reuses no id.


def _task_infos():
    """START words with task ids 1 .. 2**32-1, then again from 1: after four billion tasks an
    id is reused (the agent replaces the old task) rather than create_task failing."""
    while True:
        yield from range(TAG | 1 << 16 | START, TAG | 1 << 48, 1 << 16)


_next_task_info = _task_infos().__next__


_memory = None  # (fd, mmap, pid): this process's ring memory, kept for its life
_agent_fd = None  # the agent's ring for this process, claimed by start()


def _claim_agent_ring():
    """The descriptor of a ring ember-agent made for this process, if it is one: a memfd
    sealed against shrinking, with the ring's layout and this process's pid in its header.
    The variable is removed, so programs this one starts do not look for it."""
    import fcntl

    text = os.environ.pop(RING_FD_ENV, None)
    if text is None:
        return None
    try:
        fd = int(text)
        sealed = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
        if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & sealed != sealed:
            return None
        header = os.pread(fd, HEADER_SIZE, 0)
        if len(header) != HEADER_SIZE or header[:8] != MAGIC:
            return None
        word = [int.from_bytes(header[i:i + 8], "little", signed=True) for i in range(0, HEADER_SIZE, 8)]
        slots = word[2]
        if (word[1] != VERSION | RECORD_SIZE << 32 or not 64 <= slots <= 1 << 24 or slots & (slots - 1)
                or word[5] != os.getpid() or os.fstat(fd).st_size != HEADER_SIZE + slots * RECORD_SIZE):
            return None
        os.set_inheritable(fd, False)
        return fd
    except (ValueError, OSError):  # not a number, not open, not a memfd: not ours to use
        return None


def _ring_memory(capacity):
    """The ring's memory: the agent's, or a new memfd sealed so it never changes size."""
    global _memory
    if _memory is not None and _memory[2] == os.getpid():
        return _memory[1]
    import fcntl
    import mmap

    global _agent_fd
    fd, _agent_fd = _agent_fd, None
    if fd is None:
        slots = 64
        while slots * 2 * RECORD_SIZE <= capacity:
            slots *= 2
        fd = os.memfd_create(MEMFD_NAME, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, HEADER_SIZE + slots * RECORD_SIZE)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
        except OSError:
            os.close(fd)
            raise
    _memory = (fd, mmap.mmap(fd, os.fstat(fd).st_size), os.getpid())
    return _memory[1]


def _forget_memory_in_child():
    """A forked child must not write to, or show the agent, its parent's ring."""
    global _memory
    if _memory is not None and _memory[2] != os.getpid():
        try:
            os.close(_memory[0])
        except OSError:
            pass
        _memory = None


class _Ring:
    """The ring: its memory, and views of the header and of the two words of every slot."""

    def __init__(self, capacity):
        import struct
        import time

        self.map = _ring_memory(capacity)
        self.slots = slots = (len(self.map) - HEADER_SIZE) // RECORD_SIZE
        view = memoryview(self.map)
        self.header = view[:HEADER_SIZE].cast("q")
        words = view[HEADER_SIZE:].cast("l" if struct.calcsize("l") == 8 else "q")
        self.first, self.second = words[0::2], words[1::2]
        h = self.header
        h[7] = 0  # not a ring until complete: the reader waits
        h[0] = int.from_bytes(MAGIC, "little")
        h[1] = VERSION | RECORD_SIZE << 32
        h[2] = slots
        h[PUBLISHED] = -1
        h[LAP] = 0
        h[5] = os.getpid()
        h[6] = 0
        h[7] = time.monotonic_ns()


def _python_hot_path(ring, mon):
    """The ring's writers in pure Python, as closures over one ring: the sys.monitoring
    callbacks of every step, the record writers, and READY for `call_soon`.

    `k` is the next slot, `lap` how many times the ring wrapped. Every reservation is
        w = k; k = succ[w]     (TypeError when w is None: wrap around, inline, no call)
    followed by the stores and, for what must be seen at once, publishing `w`; no call in
    between. On wrap-around PUBLISHED is reset before LAP moves, so that a reader never sees a
    position ahead of what is written. `succ` costs 8 bytes of tuple and one int object (32
    bytes) per slot: the price of a slot reservation that allocates nothing."""
    import time

    first, second, header = ring.first, ring.second, ring.header
    # A tuple of ints is not tracked by the cyclic GC; a list would be traversed by every
    # full collection.
    succ = tuple(range(1, ring.slots)) + (None,)
    now = time.monotonic_ns
    ct = mon.current_task
    adopt = mon.adopt
    k = 0
    lap = 0

    # ---- the hot path: one callback per step start and end
    def on_start(code, offset):
        nonlocal k, lap
        task = ct()
        try:
            info = task._ember
        except AttributeError:
            info = adopt(task)
            if not info:
                return
        t = now()
        w = k
        try:
            k = succ[w]
        except TypeError:
            w = 0
            k = 1
            header[3] = -1
            lap += 1
            header[4] = lap
        first[w] = info
        second[w] = t
        header[3] = w

    def on_yield(code, offset, value):
        # Single-thread mode: a bare time; the reader knows which task runs on that thread.
        nonlocal k, lap
        t = now()
        w = k
        try:
            k = succ[w]
        except TypeError:
            w = 0
            k = 1
            header[3] = -1
            lap += 1
            header[4] = lap
        first[w] = t

    def on_yield_multi(code, offset, value):
        nonlocal k, lap
        try:
            info = ct()._ember + (STOP - START)
        except AttributeError:
            return  # no START was written for it either
        t = now()
        w = k
        try:
            k = succ[w]
        except TypeError:
            w = 0
            k = 1
            header[3] = -1
            lap += 1
            header[4] = lap
        first[w] = info
        second[w] = t
        header[3] = w

    # ---- slow-path writers, each atomic on its own
    def put1(i0, v0):
        nonlocal k, lap
        w = k
        try:
            k = succ[w]
        except TypeError:
            w = 0
            k = 1
            header[3] = -1
            lap += 1
            header[4] = lap
        first[w] = i0
        second[w] = v0
        header[3] = w

    def put2(i0, v0, i1, v1):
        nonlocal k, lap
        w = k
        try:
            k = succ[w]
        except TypeError:
            w = 0
            k = 1
            header[3] = -1
            lap += 1
            header[4] = lap
        first[w] = i0
        second[w] = v0
        w = k
        try:
            k = succ[w]
        except TypeError:
            w = 0
            k = 1
            header[3] = -1
            lap += 1
            header[4] = lap
        first[w] = i1
        second[w] = v1
        header[3] = w

    def publish():
        """Publishes the bare STOPs written since the last START."""
        w = k
        header[3] = ring.slots - 1 if w is None else w - 1

    # ---- READY: the event-loop lag, from BaseEventLoop.call_soon (see _Monitor.ensure_ring)
    def make_call_soon(original):
        from asyncio.events import Handle

        def call_soon(self, callback, *args, context=None):
            nonlocal k, lap
            # BaseEventLoop.call_soon and _call_soon inlined; debug mode keeps the original.
            if self._closed or self._debug:
                handle = original(self, callback, *args, context=context)
            else:
                handle = Handle(callback, args, self, context)
                self._ready.append(handle)
            # A C task schedules its step (a TaskStepMethWrapper) and its wakeup (the builtin
            # task_wakeup, bound) through here; both have the task as __self__. getattr with a
            # default: raising AttributeError for every other callback would cost a microsecond.
            info = getattr(getattr(callback, "__self__", None), "_ember", 0)
            if not info:
                return handle
            t = now()
            w = k
            try:
                k = succ[w]
            except TypeError:
                w = 0
                k = 1
                header[3] = -1
                lap += 1
                header[4] = lap
            first[w] = info + (READY - START)
            second[w] = t
            # Published at once: one step can wake thousands of tasks, and a reader checks
            # for overwritten records against the published position.
            header[3] = w
            return handle

        return call_soon

    return dict(on_start=on_start, on_yield=on_yield, on_yield_multi=on_yield_multi, put1=put1, put2=put2,
                publish=publish, make_call_soon=make_call_soon)


def _native_hot_path(ring, mon, accel):
    """The same writers from _ember_accel (agent/accel/ember_accel.rs), which from here on owns
    the ring's write position: every record goes through it."""
    import asyncio.futures

    accel.init(ring.map, mon.current_task, mon.adopt, asyncio.futures.Future,
               getattr(asyncio.futures, "_PyFuture", None))
    ready = accel.ready

    def make_call_soon(original):
        from asyncio.events import Handle

        def call_soon(self, callback, *args, context=None):
            if self._closed or self._debug:
                handle = original(self, callback, *args, context=context)
            else:
                handle = Handle(callback, args, self, context)
                self._ready.append(handle)
            ready(callback)
            return handle

        return call_soon

    return dict(on_start=accel.on_start, on_yield=accel.on_yield, on_yield_multi=accel.on_yield_multi,
                put1=accel.put, put2=accel.put2, publish=accel.publish, make_call_soon=make_call_soon)


def _load_accel():
    """_ember_accel if it can be used here, else None (the pure-Python writers are used)."""
    if os.environ.get("EMBER_MONITOR_ACCEL", "1") == "0":
        return None
    try:
        import _ember_accel
    except ImportError:
        return None
    return _ember_accel if getattr(_ember_accel, "RING_VERSION", None) == VERSION else None


def _writer(ring, mon, hot):
    """The sys.monitoring callbacks and record writers: the per-step ones from `hot` (see
    _python_hot_path), the rest, which run once per task, written in terms of them."""
    import time

    now = time.monotonic_ns
    ct = mon.current_task
    getframe = sys._getframe
    watched = mon.watched
    adopt = mon.adopt
    string = mon.string
    cancelled_error = mon.cancelled_error
    next_task_info = _next_task_info
    put1, put2 = hot["put1"], hot["put2"]
    multi = False  # see MODE

    # ---- once per task or per coroutine, not per step
    def on_throw(code, offset, exc):
        # A step resumed by throw() (cancellation) starts with PY_THROW, not PY_RESUME. PY_THROW
        # is global: filter by the watched code objects, by id (hashing a code object is slow).
        if id(code) not in watched:
            return
        task = ct()
        try:
            info = task._ember
        except AttributeError:
            info = adopt(task)
            if not info:
                return
        put1(info | THROWN, now())

    def on_return(code, offset, value):
        task = ct()
        try:
            info = task._ember
        except AttributeError:
            if task is None and not multi:
                put1(TAG | STOP | HOW_RETURN, now())  # pairs with adopt()'s START of "no task"
            return
        # The task's root coroutine, or the same code awaited inside it? While a nested
        # coroutine returns, the root's frame is at an await, never at a return instruction, so
        # comparing offsets is exact (and cheaper than sys._getframe, which is audited).
        coro = task.get_coro()
        if coro.cr_code is not code or coro.cr_frame.f_lasti != offset:
            put1(info + (STOP - START) | HOW_RETURN, now())
            return
        put2(info + (STOP - START) | HOW_RETURN, now(), info + (DONE - START), 0)

    def on_unwind(code, offset, exc):
        if id(code) not in watched:
            return
        task = ct()
        try:
            info = task._ember
        except AttributeError:
            if task is None and not multi:
                put1(TAG | STOP | HOW_RAISE, now())
            return
        stop = info + (STOP - START) | HOW_RAISE
        # An exception can unwind a nested coroutine and its root at the same offset (one await
        # expression awaiting either), so compare frames here; exceptions are rare.
        if task.get_coro().cr_frame is not getframe(1):
            put1(stop, now())
            return
        if isinstance(exc, cancelled_error):
            put2(stop, now(), info + (DONE - START) | OUT_CANCELLED, 0)
        else:
            sid = string(type(exc).__qualname__)
            put2(stop, now(), info + (DONE - START) | OUT_EXCEPTION, sid)

    # ---- task creation
    def create(task, parent_info, loop_id, coro_sid=None):
        """Gives a task its id and writes CREATE+TASK. Returns its START word (0: cannot)."""
        info = next_task_info()
        try:
            task._ember = info
        except AttributeError:
            return 0  # a task type without a __dict__: its steps are not recorded
        if coro_sid is None:
            coro = task.get_coro()
            entry = watched.get(id(getattr(coro, "cr_code", None)))
            coro_sid = entry[1] if entry else string(getattr(coro, "__qualname__", type(coro).__name__))
        name = task.get_name()
        create = info + (CREATE - START) | loop_id << 48
        if name[:5] == "Task-" and name[5:].isascii() and name[5:].isdecimal():
            # asyncio's default name: its number, not one more string per task.
            create |= DEFAULT_NAME
            name_field = int(name[5:]) & 0xFFFFFFFF
        else:
            name_field = string(name)
        put2(create, now(), TAG | TASK | parent_info & ID_MASK, name_field | coro_sid << 32)
        return info

    def make_factory(previous, loop_id):
        """A task factory that gives each task its id and watches its root coroutine's code,
        creating the task with `previous` (the factory installed before, e.g.
        asyncio.eager_task_factory), or as asyncio.Task when there is none."""
        task_type = mon.task_type
        watch = mon.watch
        loop_bits = loop_id << 48

        if previous is None:
            def factory(loop, coro, **kwargs):
                # No `previous`: the task cannot run before we return, so register it after,
                # with create()'s work inline (this runs once per task).
                task = task_type(coro, loop=loop, **kwargs) if kwargs else task_type(coro, loop=loop)
                if not mon.active:
                    return task
                try:
                    entry = watched[id(coro.cr_code)]
                except KeyError:
                    entry = watch(coro.cr_code)
                except AttributeError:
                    create(task, getattr(ct(loop), "_ember", 0), loop_id)  # not a coroutine
                    return task
                info = next_task_info()
                task._ember = info
                name = task.get_name()
                if not kwargs:
                    # Created without a name: asyncio's default "Task-N". Recording N, not one
                    # more string per task; int() alone, as a prefix test costs as much again.
                    try:
                        name_field = int(name[5:]) & 0xFFFFFFFF
                        c = info + (CREATE - START) | loop_bits | DEFAULT_NAME
                    except ValueError:  # a Task subclass naming its tasks
                        name_field = string(name)
                        c = info + (CREATE - START) | loop_bits
                elif name[:5] == "Task-" and name[5:].isascii() and name[5:].isdecimal():
                    c = info + (CREATE - START) | loop_bits | DEFAULT_NAME
                    name_field = int(name[5:]) & 0xFFFFFFFF
                else:
                    c = info + (CREATE - START) | loop_bits
                    name_field = string(name)
                parent = getattr(ct(loop), "_ember", 0) & ID_MASK | (TAG | TASK)
                put2(c, now(), parent, name_field | entry[1] << 32)
                return task
        else:
            def factory(loop, coro, **kwargs):
                if not mon.active:
                    return previous(loop, coro, **kwargs)
                code = getattr(coro, "cr_code", None)
                coro_sid = None
                if code is not None:
                    entry = watched.get(id(code)) or watch(code)
                    coro_sid = entry[1]
                # An eager task's first step runs inside `previous`: adopt() registers it there,
                # with the parent, loop and coroutine from `creating`, and clears `creating`.
                mon.creating = creating = (coro, getattr(ct(loop), "_ember", 0), loop_id, coro_sid)
                task = previous(loop, coro, **kwargs)
                if mon.creating is creating:
                    mon.creating = None
                    create(task, creating[1], loop_id, coro_sid)
                elif not hasattr(task, "_ember"):  # another thread replaced `creating`
                    create(task, creating[1], loop_id, coro_sid)
                return task

        factory._ember = True
        factory._ember_previous = previous
        return factory

    def go_multi():
        nonlocal multi
        if not multi:
            multi = True
            sys.monitoring.register_callback(mon.tool, _E.PY_YIELD, hot["on_yield_multi"])
            put1(TAG | MODE, 1)

    def is_multi():
        return multi

    return dict(put1=put1, put2=put2, publish=hot["publish"], on_start=hot["on_start"],
                on_yield=hot["on_yield"], on_throw=on_throw, on_return=on_return, on_unwind=on_unwind,
                go_multi=go_multi, is_multi=is_multi, make_call_soon=hot["make_call_soon"], create=create,
                make_factory=make_factory)


class _Monitor:
    def __init__(self, ring_args, tool_id, lag, use_accel):
        import asyncio.exceptions
        import asyncio.tasks
        import time

        self.ring_args = ring_args
        self.lag = lag
        self.use_accel = use_accel
        self.accel = None  # _ember_accel, when it writes the records
        self.ring = None  # created when a loop is first used, so other programs leave no file
        self.tool = tool_id
        self.active = True
        self.watched = {}  # id(code) -> [code, qualname string id]: root coroutines' code
        self.strings = {}
        self.next_string = iter(range(1, 1 << 32)).__next__
        self.creating = None  # (coro, parent's START word, loop id, coro string id) in a factory
        self.loops = {}  # id(loop) -> (loop id, weak reference)
        self.next_loop = iter(range(1, 1 << 14)).__next__
        self.loop_thread = None  # _thread.get_ident() of the first thread that ran a loop
        # asyncio may still be being imported: use its submodules, which are complete.
        self.current_task = asyncio.tasks.current_task
        self.cancelled_error = asyncio.exceptions.CancelledError
        self.task_type = asyncio.tasks.Task
        self.now = time.monotonic_ns
        self.w = None
        self.undo = []  # functions that undo the patches, for stop()

    def ensure_ring(self):
        if self.ring is not None:
            return
        import atexit

        self.ring = _Ring(*self.ring_args)
        hot = None
        self.accel = _load_accel() if self.use_accel else None
        if self.accel is not None:
            try:
                hot = _native_hot_path(self.ring, self, self.accel)
                self.ring.header[6] |= NATIVE
            except (RuntimeError, ValueError, TypeError, BufferError):  # e.g. a subinterpreter
                self.accel = None
        if hot is None:
            hot = _python_hot_path(self.ring, self)
        self.w = w = _writer(self.ring, self, hot)
        if self.lag:
            # C tasks schedule their steps and wakeups with loop.call_soon, looked up by name.
            # The copy that writes READY replaces BaseEventLoop.call_soon on the class: an
            # instance attribute would turn every attribute access on the loop into a dict lookup
            # (measured: twice the cost).
            import asyncio.base_events as base_events

            cls = base_events.BaseEventLoop
            original = cls.__dict__["call_soon"]
            cls.call_soon = w["make_call_soon"](original)
            self.undo.append(lambda: setattr(cls, "call_soon", original))
            self.ring.header[6] |= LAG_RECORDED
        names = ("on_start", "on_start", "on_yield", "on_return", "on_throw", "on_unwind")
        for event, name in zip(_EVENTS, names):
            sys.monitoring.register_callback(self.tool, event, w[name])
        atexit.register(self.publish)

    def publish(self):
        if self.w is not None and self.active:
            self.w["publish"]()

    # ---- strings
    def string(self, text):
        """Interns a string: written once, then named by its id."""
        sid = self.strings.get(text)
        if sid is not None:
            return sid
        sid = self.next_string()
        data = text.encode("utf-8", "replace")[:4096]
        put1 = self.w["put1"]
        tag = TAG | sid << 16
        put1(tag | STRING, len(data))
        # Each STRING_DATA names its string: another thread's records may come in between.
        for i in range(0, len(data), 8):
            put1(tag | STRING_DATA, int.from_bytes(data[i:i + 8].ljust(8, b"\0"), "little", signed=True))
        # Only now may other threads use the id: a string is complete before anything names it.
        # (Two threads interning the same text at once get two ids; both are valid.)
        self.strings[text] = sid
        return sid

    # ---- tasks
    def watch(self, code):
        """Turns on the local events of a root coroutine's code object."""
        entry = self.watched.get(id(code))
        if entry is not None:
            return entry
        if not self.watched:
            # THROW and UNWIND can only be global: turn them on with the first task.
            sys.monitoring.set_events(self.tool, _GLOBAL_EVENTS)
        entry = self.watched[id(code)] = [code, self.string(code.co_qualname)]
        sys.monitoring.set_local_events(self.tool, code, _LOCAL_EVENTS)
        return entry

    def adopt(self, task):
        """START of a task without an id: an eager task's first step (it runs inside its
        factory), a task of a loop without our factory, or no task at all. Returns the START
        word to write, or 0 to write nothing."""
        if not self.active:
            return 0
        ident = _thread.get_ident()
        if ident != self.loop_thread:
            if self.loop_thread is None:
                self.loop_thread = ident
            else:
                self.w["go_multi"]()
        if task is None:
            # A monitored coroutine driven outside any task. In single-thread mode its STOP is
            # written anyway, so a START of "no task" (task 0) keeps them paired.
            return 0 if self.w["is_multi"]() else TAG | START
        creating = self.creating
        if creating is not None and creating[0] is task.get_coro():
            self.creating = None  # tells the factory the task is registered
            info = self.w["create"](task, creating[1], creating[2], creating[3])
        else:
            info = self.w["create"](task, 0, self.loop_id(task.get_loop(), running=True))
        return info or (0 if self.w["is_multi"]() else TAG | START)

    def renamed(self, task):
        """Records a name given right after the factory (by create_task or TaskGroup)."""
        info = getattr(task, "_ember", 0)
        if info and self.w is not None:
            self.w["put1"](TAG | NAME | info & ID_MASK, self.string(task.get_name()))

    # ---- loops
    def loop_id(self, loop, running=False):
        entry = self.loops.get(id(loop))
        if entry is not None and entry[1]() is loop:
            return entry[0]
        import weakref

        try:
            lid = self.next_loop()
        except StopIteration:  # 16383 loops: ids are reused, only the thread mapping suffers
            self.next_loop = iter(range(1, 1 << 14)).__next__
            lid = self.next_loop()
        self.loops[id(loop)] = (lid, weakref.ref(loop))
        if running:
            self.loop_runs(loop)
        return lid

    def loop_runs(self, loop):
        """A LOOP record: `loop` runs on this thread from now on."""
        self.ensure_ring()
        lid = self.loop_id(loop)
        ident = _thread.get_ident()
        if self.loop_thread is None:
            self.loop_thread = ident
        elif self.loop_thread != ident:
            self.w["go_multi"]()
        tag = TAG | lid << 16
        self.w["put2"](tag | LOOP, self.now(), tag | THREAD, _thread.get_native_id())

    def wrap(self, previous, loop):
        """Our task factory for `loop`, chaining `previous`."""
        if getattr(previous, "_ember", False):
            return previous
        self.ensure_ring()
        return self.w["make_factory"](previous, self.loop_id(loop))

    def install(self, loop):
        """Puts our factory on a loop and records the tasks it already has."""
        factory = loop._task_factory
        if getattr(factory, "_ember", False):
            return
        import asyncio

        _orig_set_task_factory(loop, self.wrap(factory, loop))
        self.hook_select(loop)
        lid = self.loop_id(loop)
        running = loop.is_running()
        if running:
            self.loop_runs(loop)
        # Tasks that existed before start(), such as asyncio.run's main task.
        current = asyncio.current_task(loop) if running else None
        tasks = asyncio.all_tasks(loop)
        if current is not None:
            tasks.add(current)
        create = self.w["create"]
        for task in tasks:
            code = getattr(task.get_coro(), "cr_code", None)
            if code is not None:
                self.watch(code)
            if not hasattr(task, "_ember"):
                create(task, 0, lid)
        if current is not None and getattr(current, "_ember", 0) and _thread.get_ident() == self.loop_thread:
            # start() was called from inside a task's step: that step is running now.
            self.w["put1"](current._ember, self.now())

    def hook_select(self, loop):
        """Publishes the bare STOP records before the loop waits for I/O."""
        selector = getattr(loop, "_selector", None)
        if selector is None or "select" in getattr(selector, "__dict__", ()):
            return
        original = selector.select
        publish = self.publish

        def select(timeout=None):
            publish()
            return original(timeout)

        try:
            selector.select = select
        except AttributeError:
            pass


_monitor = None
_orig_set_task_factory = None


def _free_tool_id():
    # 0 debugger, 1 coverage, 2 profiler, 5 optimizer are named; 3 and 4 are free for tools.
    for tool in (4, 3, 5, 0):
        if sys.monitoring.get_tool(tool) is None:
            return tool
    raise RuntimeError("ember_monitor: every sys.monitoring tool id is taken")


def start(capacity=DEFAULT_CAPACITY, lag=None, accel=True):
    """Starts recording asyncio tasks of this process. Safe to call more than once. Costs
    nothing until the program imports asyncio: the hooks are installed by an import hook.
    `capacity`: bytes of records in the ring (a ring the agent passed in keeps its own size).
    `lag`: also record when each task became ready to run (READY); default LAG.
    `accel`: write records with _ember_accel, the native fast path ember-agent puts next to
    this module, when it can be imported (environment EMBER_MONITOR_ACCEL=0 turns it off)."""
    global _monitor
    if _monitor is not None:
        return _monitor
    if hasattr(sys, "_is_gil_enabled") and not sys._is_gil_enabled():
        # Records are atomic because of the GIL; without it they could interleave.
        return None
    global _agent_fd
    if _agent_fd is None:
        _agent_fd = _claim_agent_ring()
    _monitor = _Pending((capacity,), LAG if lag is None else lag, accel)
    if "asyncio.base_events" in sys.modules:
        _hook_asyncio()
    else:
        sys.meta_path.insert(0, _AfterImport("asyncio.base_events", _hook_asyncio))
    return _monitor


class _Pending:
    """start() was called, asyncio is not imported yet."""

    def __init__(self, ring_args, lag, accel):
        self.ring_args = ring_args
        self.lag = lag
        self.accel = accel


class _AfterImport:
    """A meta path finder that runs `then` right after module `name` has executed."""

    def __init__(self, name, then):
        self.name = name
        self.then = then

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader, then = spec.loader, self.then

        class Loader:
            def create_module(self, spec):
                return loader.create_module(spec)

            def exec_module(self, module):
                loader.exec_module(module)
                then()

        spec.loader = Loader()
        return spec


def _hook_asyncio():
    # asyncio itself may still be being imported here: only its events, base_events, tasks and
    # futures modules are complete, so touch nothing else.
    global _monitor, _orig_set_task_factory
    pending = _monitor
    if not isinstance(pending, _Pending):
        return
    import asyncio.base_events as base_events
    import asyncio.events as events
    import asyncio.tasks as tasks

    tool = _free_tool_id()
    sys.monitoring.use_tool_id(tool, "ember")
    monitor = _Monitor(pending.ring_args, tool, pending.lag, pending.accel)
    _monitor = monitor
    BaseEventLoop = base_events.BaseEventLoop

    def patch(owner, name, value):
        old = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        setattr(owner, name, value)
        monitor.undo.append(lambda: setattr(owner, name, old))
        return old

    # A factory the program installs later (set_task_factory) is chained, not lost, and the
    # program still sees its own factory (get_task_factory).
    _orig_set_task_factory = BaseEventLoop.set_task_factory

    def set_task_factory(loop, factory):
        if monitor.active:
            factory = monitor.wrap(factory, loop)
        _orig_set_task_factory(loop, factory)

    def get_task_factory(loop):
        factory = loop._task_factory
        return getattr(factory, "_ember_previous", factory)

    patch(BaseEventLoop, "set_task_factory", set_task_factory)
    patch(BaseEventLoop, "get_task_factory", get_task_factory)

    # Every loop that runs gets the factory (loops made before start() or by a loop_factory
    # too), and a LOOP record: which OS thread runs it from now on.
    original_run_forever = BaseEventLoop.run_forever

    def run_forever(self):
        if monitor.active:
            monitor.install(self)
            monitor.loop_runs(self)
        try:
            return original_run_forever(self)
        finally:
            monitor.publish()

    patch(BaseEventLoop, "run_forever", run_forever)

    # Loops made from now on get the factory before any task (asyncio.run's main task).
    original_new = events.new_event_loop

    def new_event_loop():
        loop = original_new()
        if monitor.active:
            monitor.install(loop)
        return loop

    patch(events, "new_event_loop", new_event_loop)
    if "asyncio" in sys.modules and hasattr(sys.modules["asyncio"], "new_event_loop"):
        patch(sys.modules["asyncio"], "new_event_loop", new_event_loop)

    # Names given at creation (TaskGroup.create_task, create_task(name=...)) are set after the
    # factory returns: 3.12 does it in tasks._set_task_name, 3.13 in create_task itself.
    if "_set_task_name" in BaseEventLoop.create_task.__code__.co_names:
        original_set_name = tasks._set_task_name

        def _set_task_name(task, name):
            if name is not None:  # the common case, no name, costs what it did
                original_set_name(task, name)
                monitor.renamed(task)

        patch(tasks, "_set_task_name", _set_task_name)
    else:
        original_create_task = BaseEventLoop.create_task

        def create_task(self, coro, *, name=None, context=None):
            task = original_create_task(self, coro, name=name, context=context)
            if name is not None:
                monitor.renamed(task)
            return task

        patch(BaseEventLoop, "create_task", create_task)

    # A forked child shares the ring's pages with its parent: it must not write to them.
    os.register_at_fork(after_in_child=_after_fork)
    try:
        loop = events.get_running_loop()
    except RuntimeError:
        return
    monitor.install(loop)


def _after_fork():
    if isinstance(_monitor, _Monitor) and _monitor.active:
        stop(_forked=True)
    _forget_memory_in_child()


def stop(_forked=False):
    """Stops recording; the ring stays for the agent to finish reading."""
    global _monitor
    monitor, _monitor = _monitor, None
    if not isinstance(monitor, _Monitor):
        return
    if not _forked:
        monitor.publish()
    monitor.active = False
    for undo in reversed(monitor.undo):
        undo()
    sys.monitoring.set_events(monitor.tool, 0)
    for code, _ in monitor.watched.values():
        sys.monitoring.set_local_events(monitor.tool, code, 0)
    for event in _EVENTS:
        sys.monitoring.register_callback(monitor.tool, event, None)
    sys.monitoring.free_tool_id(monitor.tool)
    if monitor.accel is not None:
        monitor.accel.close()
