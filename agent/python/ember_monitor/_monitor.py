"""The monitor of one process: the ring and its writers (made when a loop is first used), the
watched code objects, interned strings, loop ids, and what asyncio's hooks call."""

import _thread
import sys

from ._discover import CALL, describe_loop, on_call_factory
from ._hot_path import load_accel, native_hot_path, python_hot_path
from ._ring import (
    FLAGS,
    ID_MASK,
    ID_SHIFT,
    LAG_RECORDED,
    LOOP,
    MAX_LOOP_ID,
    MAX_STRING,
    NAME,
    NATIVE,
    START,
    STRING,
    STRING_DATA,
    TAG,
    THREAD,
    VERSION,
    Ring,
)
from ._writer import ALL_EVENTS, GLOBAL_EVENTS, LOCAL_EVENTS, writer


class Monitor:
    def __init__(self, ring_args, tool_id, lag, use_accel, set_task_factory):
        import asyncio.exceptions
        import asyncio.tasks
        import time
        import weakref

        self.ring_args = ring_args
        self.lag = lag
        self.use_accel = use_accel
        self.accel = None  # _ember_accel, when it writes the records
        self.ring = None  # created when a loop is first used, so other programs leave no file
        self.tool = tool_id
        self.active = True
        self.watched = {}  # id(code) -> [code, qualname string id]: root coroutines' code
        self.call_sites = {}  # id(code) -> code: code whose calls are watched (_discover)
        self.strings = {}
        self.next_string = iter(range(1, 1 << 32)).__next__
        self.creating = None  # (coro, parent's START word, loop id, coro string id) in a factory
        self.loops = {}  # id(loop) -> (loop id, weak reference)
        self.next_loop = iter(range(1, MAX_LOOP_ID + 1)).__next__
        self.loop_thread = None  # _thread.get_ident() of the first thread that ran a loop
        # asyncio may still be being imported: use its submodules, which are complete.
        self.current_task = asyncio.tasks.current_task
        self.cancelled_error = asyncio.exceptions.CancelledError
        self.task_type = asyncio.tasks.Task
        self.base_loop = None  # BaseEventLoop: loops of other classes get a LOOP_INFO record
        self.registry = False  # asyncio's task registry reports tasks to us (_discover)
        self.now = time.monotonic_ns
        self.set_task_factory = set_task_factory  # BaseEventLoop's own, unpatched
        self.writer = None
        self.installed = weakref.WeakSet()  # loops install() has seen
        self.undo = []  # functions that undo the patches, for stop()

    def ensure_ring(self):
        if self.ring is not None:
            return
        import atexit

        self.ring = Ring(*self.ring_args)
        hot_path = None
        self.accel = load_accel(VERSION) if self.use_accel else None
        if self.accel is not None:
            try:
                hot_path = native_hot_path(self.ring, self, self.accel)
                self.ring.header[FLAGS] |= NATIVE
            except (RuntimeError, ValueError, TypeError, BufferError):  # e.g. a subinterpreter
                self.accel = None
        if hot_path is None:
            hot_path = python_hot_path(self.ring, self)
        self.writer = writer(self, hot_path)
        if self.lag:
            # C tasks schedule their steps and wakeups with loop.call_soon, looked up by name.
            # The copy that writes READY replaces BaseEventLoop.call_soon on the class: an
            # instance attribute would turn every attribute access on the loop into a dict lookup
            # (measured: twice the cost).
            import asyncio.base_events as base_events

            cls = base_events.BaseEventLoop
            original = cls.__dict__["call_soon"]
            cls.call_soon = self.writer.make_call_soon(original)
            self.undo.append(lambda: setattr(cls, "call_soon", original))
            self.ring.header[FLAGS] |= LAG_RECORDED
        for event, callback in zip(ALL_EVENTS, self.writer.callbacks(), strict=True):
            sys.monitoring.register_callback(self.tool, event, callback)
        atexit.register(self.publish)

    def publish(self):
        if self.writer is not None and self.active:
            self.writer.publish()

    # ---- strings
    def string(self, text):
        """Interns a string: written once, then named by its id."""
        string_id = self.strings.get(text)
        if string_id is not None:
            return string_id
        string_id = self.next_string()
        data = text.encode("utf-8", "replace")[:MAX_STRING]
        put1 = self.writer.put1
        tag = TAG | string_id << ID_SHIFT
        put1(tag | STRING, len(data))
        # Each STRING_DATA names its string: another thread's records may come in between.
        for i in range(0, len(data), 8):
            put1(tag | STRING_DATA, int.from_bytes(data[i : i + 8].ljust(8, b"\0"), "little", signed=True))
        # Only now may other threads use the id: a string is complete before anything names it.
        # (Two threads interning the same text at once get two ids; both are valid.)
        self.strings[text] = string_id
        return string_id

    # ---- tasks
    def watch(self, code):
        """Turns on the local events of a root coroutine's code object."""
        entry = self.watched.get(id(code))
        if entry is not None:
            return entry
        if not self.watched:
            # THROW and UNWIND can only be global: turn them on with the first task.
            sys.monitoring.set_events(self.tool, GLOBAL_EVENTS)
        entry = self.watched[id(code)] = [code, self.string(code.co_qualname)]
        events = sys.monitoring.get_local_events(self.tool, code)
        sys.monitoring.set_local_events(self.tool, code, events | LOCAL_EVENTS)
        return entry

    def watch_calls(self, code):
        """Turns on local CALL events for code that builds eager tasks (_discover)."""
        if id(code) in self.call_sites:
            return
        self.ensure_ring()
        if not self.call_sites:
            sys.monitoring.register_callback(self.tool, CALL, on_call_factory(self))
        self.call_sites[id(code)] = code
        events = sys.monitoring.get_local_events(self.tool, code)
        sys.monitoring.set_local_events(self.tool, code, events | CALL)

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
                self.writer.go_multi()
        if task is None:
            # A monitored coroutine driven outside any task. In single-thread mode its STOP is
            # written anyway, so a START of "no task" (task 0) keeps them paired.
            return 0 if self.writer.is_multi() else TAG | START
        creating = self.creating
        if creating is not None and creating[0] is task.get_coro():
            self.creating = None  # tells the factory the task is registered
            start_word = self.writer.create(task, creating[1], creating[2], creating[3])
        else:
            start_word = self.writer.create(task, 0, self.loop_id(task.get_loop(), running=True))
        return start_word or (0 if self.writer.is_multi() else TAG | START)

    def renamed(self, task):
        """Records a name given right after the factory (by create_task or TaskGroup)."""
        start_word = getattr(task, "_ember", 0)
        if start_word and self.writer is not None:
            self.writer.put1(TAG | NAME | start_word & ID_MASK, self.string(task.get_name()))

    # ---- loops
    def loop_id(self, loop, running=False):
        entry = self.loops.get(id(loop))
        if entry is not None and entry[1]() is loop:
            return entry[0]
        import weakref

        try:
            loop_id = self.next_loop()
        except StopIteration:  # 16383 loops: ids are reused, only the thread mapping suffers
            self.next_loop = iter(range(1, MAX_LOOP_ID + 1)).__next__
            loop_id = self.next_loop()
        self.loops[id(loop)] = (loop_id, weakref.ref(loop))
        if running:
            self.loop_runs(loop)
        if self.base_loop is not None and not isinstance(loop, self.base_loop):
            self.ensure_ring()
            describe_loop(self, loop, loop_id)
        return loop_id

    def loop_runs(self, loop):
        """A LOOP record: `loop` runs on this thread from now on."""
        self.ensure_ring()
        loop_id = self.loop_id(loop)
        ident = _thread.get_ident()
        if self.loop_thread is None:
            self.loop_thread = ident
        elif self.loop_thread != ident:
            self.writer.go_multi()
        tag = TAG | loop_id << ID_SHIFT
        self.writer.put2(tag | LOOP, self.now(), tag | THREAD, _thread.get_native_id())

    def wrap(self, previous, loop):
        """Our task factory for `loop`, chaining `previous`; None for none (asyncio's registry
        tells us about the tasks a loop makes itself, _discover)."""
        if (previous is None and self.registry) or getattr(previous, "_ember", False):
            return previous
        self.ensure_ring()
        return self.writer.make_factory(previous, self.loop_id(loop))

    def install(self, loop):
        """Puts our factory on a loop and records the tasks it already has."""
        if loop in self.installed:
            return
        self.installed.add(loop)
        import asyncio

        self.ensure_ring()
        factory = loop._task_factory
        if (factory is not None or not self.registry) and not getattr(factory, "_ember", False):
            self.set_task_factory(loop, self.wrap(factory, loop))
        self.hook_select(loop)
        loop_id = self.loop_id(loop)
        running = loop.is_running()
        if running:
            self.loop_runs(loop)
        # Tasks that existed before start(), such as asyncio.run's main task.
        current = asyncio.current_task(loop) if running else None
        tasks = asyncio.all_tasks(loop)
        if current is not None:
            tasks.add(current)
        create = self.writer.create
        for task in tasks:
            code = getattr(task.get_coro(), "cr_code", None)
            if code is not None:
                self.watch(code)
            if not hasattr(task, "_ember"):
                create(task, 0, loop_id)
        if current is not None and getattr(current, "_ember", 0) and _thread.get_ident() == self.loop_thread:
            # start() was called from inside a task's step: that step is running now.
            self.writer.put1(current._ember, self.now())

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

    def close(self):
        """Turns every event and callback off and frees the tool id; the ring stays."""
        self.active = False
        for undo in reversed(self.undo):
            undo()
        sys.monitoring.set_events(self.tool, 0)
        for code, _ in self.watched.values():
            sys.monitoring.set_local_events(self.tool, code, 0)
        for code in self.call_sites.values():
            sys.monitoring.set_local_events(self.tool, code, 0)
        sys.monitoring.register_callback(self.tool, CALL, None)
        for event in ALL_EVENTS:
            sys.monitoring.register_callback(self.tool, event, None)
        sys.monitoring.free_tool_id(self.tool)
        if self.accel is not None:
            self.accel.close()
