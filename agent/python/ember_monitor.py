"""ember's asyncio task monitor: records when every asyncio task runs, for ember-agent.

Standard library only, CPython 3.12+. It turns on sys.monitoring (PEP 669) *local* events
for each task's root coroutine only, so code outside tasks pays nothing, and writes fixed-size
records with struct.pack_into into a shared-memory ring, /tmp/ember-<pid>.ring, which the
agent reads through /proc/PID/root. Writing never blocks: when nobody reads, the ring simply
wraps, and a reader that falls behind counts what it missed.

    import ember_monitor
    ember_monitor.start()

Record layout (little endian, 32 bytes): kind u8, flags u8, length u16, task u32,
time i64 (time.monotonic_ns, i.e. CLOCK_MONOTONIC), a i64, b i64.
"""
import itertools
import mmap
import os
import struct
import sys
import threading
import time

__all__ = ["start", "stop", "RING_PATH_TEMPLATE"]

RING_PATH_TEMPLATE = "/tmp/ember-{pid}.ring"
MAGIC = b"EMBRING1"
VERSION = 1
HEADER_SIZE = 64
# magic, version, capacity, write position (bytes ever written), pid
HEADER = struct.Struct("<8sIIQQ")
WRITE_POS_OFFSET = 16
RECORD = struct.Struct("<BBHIqqq")
RECORD_SIZE = RECORD.size
DEFAULT_CAPACITY = 4 << 20

STRING = 1  # task = string id, length = byte length; the bytes follow in record-sized chunks
CREATE = 2  # task, a = name | coroutine string id << 32, b = parent task (0 = none); the name
#            is a string id, or with flag DEFAULT_NAME the N of asyncio's default "Task-N"
DEFAULT_NAME = 1
START = 3  # task, a = OS thread id (threading.get_native_id, the tid perf samples carry)
STOP = 4  # task, a = thread id, b = how: 0 yield (waiting), 1 returned, 2 raised
DONE = 5  # task, a = 0 result, 1 exception, 2 cancelled; b = exception type string id.
#          Derived from the root coroutine's last RETURN or UNWIND, so no done callback is
#          needed (a task cancelled before its first step has no DONE).
NAME = 6  # task, a = name string id: the task was renamed after creation (TaskGroup does that)

_E = sys.monitoring.events
_LOCAL_EVENTS = _E.PY_START | _E.PY_RESUME | _E.PY_YIELD | _E.PY_RETURN
_GLOBAL_EVENTS = _E.PY_THROW | _E.PY_UNWIND


class _Ring:
    def __init__(self, path, capacity):
        capacity -= capacity % RECORD_SIZE
        self.capacity = capacity
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, HEADER_SIZE + capacity)
            self.map = mmap.mmap(fd, HEADER_SIZE + capacity)
        finally:
            os.close(fd)
        HEADER.pack_into(self.map, 0, MAGIC, VERSION, capacity, 0, os.getpid())
        # Slots are handed out by a C iterator, which the GIL makes atomic: no lock on the
        # hot path, and records from several threads never share a slot.
        self.slots = itertools.count()
        self.slot_count = capacity // RECORD_SIZE
        self.lock = threading.Lock()
        self.strings = {}
        self._pack = RECORD.pack_into
        self._publish = struct.Struct("<Q").pack_into

    def write(self, kind, task, a=0, b=0, flags=0, length=0, now=None):
        slot = next(self.slots)
        self._pack(self.map, HEADER_SIZE + (slot % self.slot_count) * RECORD_SIZE, kind, flags, length, task,
                   time.monotonic_ns() if now is None else now, a, b)
        self._publish(self.map, WRITE_POS_OFFSET, (slot + 1) * RECORD_SIZE)

    def string(self, text):
        """Interns a string: written once, then named by its id."""
        sid = self.strings.get(text)
        if sid is not None:
            return sid
        sid = len(self.strings) + 1
        self.strings[text] = sid
        data = text.encode("utf-8", "replace")[:4096]
        chunks = (len(data) + RECORD_SIZE - 1) // RECORD_SIZE
        with self.lock:
            # A string takes consecutive slots, so it is allocated in one go.
            first = next(self.slots)
            for _ in range(chunks):
                next(self.slots)
        self._pack(self.map, HEADER_SIZE + (first % self.slot_count) * RECORD_SIZE, STRING, 0, len(data), sid, 0, 0, 0)
        for i in range(chunks):
            chunk = data[i * RECORD_SIZE:(i + 1) * RECORD_SIZE].ljust(RECORD_SIZE, b"\0")
            at = HEADER_SIZE + ((first + 1 + i) % self.slot_count) * RECORD_SIZE
            self.map[at:at + RECORD_SIZE] = chunk
        self._publish(self.map, WRITE_POS_OFFSET, (first + 1 + chunks) * RECORD_SIZE)
        return sid


class _Monitor:
    def __init__(self, ring_args, tool_id):
        self.ring_args = ring_args
        self.ring = None  # created when asyncio is first used, so other programs leave no file
        self.tool = tool_id
        self.ids = {}  # id(task) -> ember task id, while the task lives
        self.names = {}  # ember task id -> the name last recorded
        self.started = set()  # tasks whose name was checked at their first step
        self.next_id = 1
        self.codes = set()  # root coroutine code objects with local events on
        self.parents = {}  # id(coroutine) -> parent task id, from the factory
        self.local = threading.local()  # per thread: stack of [task id, nesting depth]
        self.previous_factories = {}

    # ---- task identity
    def register(self, task, parent=0):
        key = id(task)
        tid = self.ids.get(key)
        if tid is not None:
            return tid
        tid = self.next_id
        self.next_id += 1
        self.ids[key] = tid
        coro = task.get_coro()
        parent = self.parents.pop(id(coro), parent)
        name = task.get_name()
        self.names[tid] = name
        flags = 0
        if name.startswith("Task-") and name[5:].isdigit():
            # asyncio's default name: a number, not one more string per task.
            flags, name_field = DEFAULT_NAME, int(name[5:]) & 0xFFFFFFFF
        else:
            name_field = self.ring.string(name)
        qualname = self.ring.string(getattr(coro, "__qualname__", type(coro).__name__))
        self.ring.write(CREATE, tid, name_field | (qualname << 32), parent, flags)
        return tid

    def check_name(self, task, tid):
        name = task.get_name()
        if self.names.get(tid) != name:
            self.names[tid] = name
            self.ring.write(NAME, tid, self.ring.string(name))

    def watch(self, coro):
        code = getattr(coro, "cr_code", None)
        if code is not None and code not in self.codes:
            if not self.codes:
                # THROW and UNWIND can only be global; turn them on once asyncio is in use,
                # so a program without tasks pays nothing.
                sys.monitoring.set_events(self.tool, _GLOBAL_EVENTS)
            self.codes.add(code)
            sys.monitoring.set_local_events(self.tool, code, _LOCAL_EVENTS)

    # ---- factory
    def wrap(self, previous):
        """A task factory that watches each task's root coroutine, then creates the task with
        `previous` (the factory installed before, e.g. asyncio.eager_task_factory)."""
        if getattr(previous, "_ember", False):
            return previous

        def factory(loop, coro, **kwargs):
            self.watch(coro)
            try:
                current = _current_task(loop)
            except RuntimeError:
                current = None
            parent = self.ids.get(id(current), 0) if current is not None else 0
            self.parents[id(coro)] = parent
            if previous is not None:
                task = previous(loop, coro, **kwargs)
            else:
                import asyncio

                task = asyncio.Task(coro, loop=loop, **kwargs)
            self.parents.pop(id(coro), None)
            self.register(task, parent)
            return task

        factory._ember = True
        return factory

    def factory_for(self, loop):
        return self.wrap(loop.get_task_factory())

    def install(self, loop):
        global _current_task
        if self.ring is None:
            self.ring = _Ring(*self.ring_args)
        if _current_task is None:
            import asyncio

            _current_task = asyncio.current_task
        loop.set_task_factory(self.factory_for(loop))
        # Tasks that existed before start(), such as asyncio.run's main task.
        import asyncio

        for task in asyncio.all_tasks(loop):
            self.watch(task.get_coro())
            self.register(task)

    # ---- events
    def thread_state(self):
        state = getattr(self.local, "state", None)
        if state is None:
            # Running tasks, their nesting depths and id(task) as lists of ints: pushing an
            # int allocates nothing the cyclic GC tracks, which a list per step would.
            state = self.local.state = ([], [], [], threading.get_native_id())
        return state

    def begin(self, code, offset):
        try:
            task = _current_task()
        except RuntimeError:
            return
        if task is None:
            return
        tasks, depths, keys, thread = self.thread_state()
        key = id(task)
        tid = self.ids.get(key)
        if tasks and tid is not None and tasks[-1] == tid:
            depths[-1] += 1  # the same code, nested inside the task: not a new slice
            return
        if tid is None:
            tid = self.register(task, tasks[-1] if tasks else 0)
        elif tid not in self.started:
            self.started.add(tid)
            self.check_name(task, tid)
        now = _now()
        write = self.ring.write
        if tasks:
            # An eager child runs inside its parent's step: split the parent's slice.
            write(STOP, tasks[-1], thread, 0, 0, 0, now)
        tasks.append(tid)
        depths.append(1)
        keys.append(key)
        write(START, tid, thread, 0, 0, 0, now)

    def end(self, how, exc=None):
        tasks, depths, keys, thread = self.thread_state()
        if not tasks:
            return
        depths[-1] -= 1
        if depths[-1] > 0:
            return
        depths.pop()
        tid = tasks.pop()
        key = keys.pop()
        now = _now()
        write = self.ring.write
        write(STOP, tid, thread, how, 0, 0, now)
        if how:
            # The root coroutine returned or raised: the task is done.
            self.ids.pop(key, None)
            self.names.pop(tid, None)
            self.started.discard(tid)
            if how == 1:
                write(DONE, tid, 0, 0, 0, 0, now)
            elif type(exc).__name__ == "CancelledError":
                write(DONE, tid, 2, 0, 0, 0, now)
            else:
                write(DONE, tid, 1, self.ring.string(type(exc).__qualname__), 0, 0, now)
        if tasks:
            write(START, tasks[-1], thread, 0, 0, 0, now)

    def on_start(self, code, offset):
        self.begin(code, offset)

    def on_yield(self, code, offset, value):
        self.end(0)

    def on_return(self, code, offset, value):
        self.end(1)

    def on_throw(self, code, offset, exc):
        # A step resumed by throw() (cancellation): PY_THROW instead of PY_RESUME.
        if code in self.codes:
            self.begin(code, offset)

    def on_unwind(self, code, offset, exc):
        if code in self.codes:
            self.end(2, exc)


_monitor = None
_current_task = None  # asyncio.current_task, bound once asyncio is imported
_now = time.monotonic_ns


def _free_tool_id():
    # 0 debugger, 1 coverage, 2 profiler, 5 optimizer are named; 3 and 4 are free for tools.
    for tool in (4, 3, 5, 0):
        if sys.monitoring.get_tool(tool) is None:
            return tool
    raise RuntimeError("ember_monitor: every sys.monitoring tool id is taken")


def start(path=None, capacity=DEFAULT_CAPACITY):
    """Starts recording asyncio tasks of this process. Safe to call more than once. Costs
    nothing until the program imports asyncio: the hooks are installed by an import hook."""
    global _monitor
    if _monitor is not None:
        return _monitor
    tool = _free_tool_id()
    sys.monitoring.use_tool_id(tool, "ember")
    monitor = _Monitor((path or RING_PATH_TEMPLATE.format(pid=os.getpid()), capacity), tool)
    m = sys.monitoring
    m.register_callback(tool, _E.PY_START, monitor.on_start)
    m.register_callback(tool, _E.PY_RESUME, monitor.on_start)
    m.register_callback(tool, _E.PY_YIELD, monitor.on_yield)
    m.register_callback(tool, _E.PY_RETURN, monitor.on_return)
    m.register_callback(tool, _E.PY_THROW, monitor.on_throw)
    m.register_callback(tool, _E.PY_UNWIND, monitor.on_unwind)
    _monitor = monitor
    if "asyncio.base_events" in sys.modules:
        _hook_asyncio(monitor)
    else:
        sys.meta_path.insert(0, _AfterImport("asyncio.base_events", lambda: _hook_asyncio(monitor)))
    return monitor


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


def _hook_asyncio(monitor):
    # asyncio itself is still being imported here: only its events and base_events modules
    # are complete, so touch nothing else.
    import asyncio
    import asyncio.base_events as base_events
    import asyncio.events as events

    # Loops made from now on (asyncio.run, new_event_loop) get the factory before any task.
    original = events.new_event_loop

    def new_event_loop():
        loop = original()
        monitor.install(loop)
        return loop

    events.new_event_loop = new_event_loop
    if hasattr(asyncio, "new_event_loop"):
        asyncio.new_event_loop = new_event_loop
    # A factory the program installs later (set_task_factory) is chained, not lost.
    original_set = base_events.BaseEventLoop.set_task_factory

    def set_task_factory(loop, factory):
        original_set(loop, monitor.wrap(factory))

    base_events.BaseEventLoop.set_task_factory = set_task_factory
    try:
        monitor.install(events.get_running_loop())
    except RuntimeError:
        pass


def stop():
    """Stops recording; the ring file stays for the agent to finish reading."""
    global _monitor
    if _monitor is None:
        return
    sys.monitoring.set_events(_monitor.tool, 0)
    for code in _monitor.codes:
        sys.monitoring.set_local_events(_monitor.tool, code, 0)
    sys.monitoring.free_tool_id(_monitor.tool)
    _monitor = None
