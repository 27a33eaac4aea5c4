"""The records written once per task or per coroutine, not per step (creation, the last step's
end, throws), the task factories, and the sys.monitoring callbacks for them; all written in
terms of a HotPath's `put1` and `put2`."""

import sys

from ._ring import (
    CREATE,
    DEFAULT_NAME,
    DONE,
    EXTRA_SHIFT,
    HOW_RAISE,
    HOW_RETURN,
    ID_MASK,
    MODE,
    OUT_CANCELLED,
    OUT_EXCEPTION,
    START,
    STOP,
    TAG,
    TASK,
    THROWN,
    task_number,
    task_start_words,
)

_events = sys.monitoring.events
LOCAL_EVENTS = _events.PY_START | _events.PY_RESUME | _events.PY_YIELD | _events.PY_RETURN
GLOBAL_EVENTS = _events.PY_THROW | _events.PY_UNWIND
# The events a monitor registers callbacks for, in the order of Writer.callbacks().
ALL_EVENTS = (
    _events.PY_START,
    _events.PY_RESUME,
    _events.PY_YIELD,
    _events.PY_RETURN,
    _events.PY_THROW,
    _events.PY_UNWIND,
)

# Tasks' START words, in order of task id. Module-wide: a restarted monitor reuses no id.
_next_start_word = task_start_words().__next__


class Writer:
    """Every writer and sys.monitoring callback of one ring: the per-step ones from its HotPath,
    the others from writer()."""

    __slots__ = (
        "put1",
        "put2",
        "publish",
        "on_start",
        "on_yield",
        "on_return",
        "on_throw",
        "on_unwind",
        "make_call_soon",
        "create",
        "make_factory",
        "go_multi",
        "is_multi",
    )

    def __init__(self, hot_path, on_throw, on_return, on_unwind, create, make_factory, go_multi, is_multi):
        self.put1 = hot_path.put1
        self.put2 = hot_path.put2
        self.publish = hot_path.publish
        self.on_start = hot_path.on_start
        self.on_yield = hot_path.on_yield
        self.make_call_soon = hot_path.make_call_soon
        self.on_return = on_return
        self.on_throw = on_throw
        self.on_unwind = on_unwind
        self.create = create  # create(task, parent's START word, loop id[, coro string id]): START word
        self.make_factory = make_factory  # make_factory(previous, loop id): a task factory
        self.go_multi = go_multi  # go_multi(): a second thread runs asyncio
        self.is_multi = is_multi

    def callbacks(self):
        """The sys.monitoring callbacks, in the order of ALL_EVENTS."""
        return (self.on_start, self.on_start, self.on_yield, self.on_return, self.on_throw, self.on_unwind)


def writer(monitor, hot_path):
    """The once-per-task writers, as closures (like the hot path's, and for the same reason:
    they run for every task; so this function is longer than usual)."""
    import time

    now = time.monotonic_ns
    current_task = monitor.current_task
    getframe = sys._getframe
    watched = monitor.watched
    adopt = monitor.adopt
    string = monitor.string
    cancelled_error = monitor.cancelled_error
    next_start_word = _next_start_word
    put1, put2 = hot_path.put1, hot_path.put2
    multi = False  # see MODE

    def on_throw(code, offset, exc):
        # A step resumed by throw() (cancellation) starts with PY_THROW, not PY_RESUME. PY_THROW
        # is global: filter by the watched code objects, by id (hashing a code object is slow).
        if id(code) not in watched:
            return
        task = current_task()
        try:
            start_word = task._ember
        except AttributeError:
            start_word = adopt(task)
            if not start_word:
                return
        put1(start_word | THROWN, now())

    def on_return(code, offset, value):
        task = current_task()
        try:
            start_word = task._ember
        except AttributeError:
            if task is None and not multi:
                put1(TAG | STOP | HOW_RETURN, now())  # pairs with adopt()'s START of "no task"
            return
        # The task's root coroutine, or the same code awaited inside it? While a nested
        # coroutine returns, the root's frame is at an await, never at a return instruction, so
        # comparing offsets is exact (and cheaper than sys._getframe, which is audited).
        coro = task.get_coro()
        if coro.cr_code is not code or coro.cr_frame.f_lasti != offset:
            put1(start_word + (STOP - START) | HOW_RETURN, now())
            return
        put2(start_word + (STOP - START) | HOW_RETURN, now(), start_word + (DONE - START), 0)

    def on_unwind(code, offset, exc):
        if id(code) not in watched:
            return
        task = current_task()
        try:
            start_word = task._ember
        except AttributeError:
            if task is None and not multi:
                put1(TAG | STOP | HOW_RAISE, now())
            return
        stop_word = start_word + (STOP - START) | HOW_RAISE
        # An exception can unwind a nested coroutine and its root at the same offset (one await
        # expression awaiting either), so compare frames here; exceptions are rare.
        if task.get_coro().cr_frame is not getframe(1):
            put1(stop_word, now())
            return
        if isinstance(exc, cancelled_error):
            put2(stop_word, now(), start_word + (DONE - START) | OUT_CANCELLED, 0)
        else:
            string_id = string(type(exc).__qualname__)
            put2(stop_word, now(), start_word + (DONE - START) | OUT_EXCEPTION, string_id)

    def create(task, parent_start_word, loop_id, coro_string_id=None):
        """Gives a task its id and writes CREATE+TASK. Returns its START word (0: cannot)."""
        start_word = next_start_word()
        try:
            task._ember = start_word
        except AttributeError:
            return 0  # a task type without a __dict__: its steps are not recorded
        if coro_string_id is None:
            coro = task.get_coro()
            entry = watched.get(id(getattr(coro, "cr_code", None)))
            coro_string_id = entry[1] if entry else string(getattr(coro, "__qualname__", type(coro).__name__))
        create_word = start_word + (CREATE - START) | loop_id << EXTRA_SHIFT
        name = task.get_name()
        number = task_number(name)
        if number < 0:
            name = string(name)
        else:
            create_word |= DEFAULT_NAME
            name = number
        put2(create_word, now(), TAG | TASK | parent_start_word & ID_MASK, name | coro_string_id << 32)
        return start_word

    def make_factory(previous, loop_id):
        """A task factory chaining `previous` (the factory installed before, e.g.
        asyncio.eager_task_factory), that watches the root coroutine's code before the task
        can run, so an eager first step is seen and charged to the new task. Without
        `previous`, it builds an asyncio.Task: only where asyncio's registry cannot tell us about
        the tasks a loop makes itself (_discover)."""
        watch = monitor.watch
        build = previous
        if previous is None:
            task_type = monitor.task_type

            def build(loop, coro, **kwargs):
                return task_type(coro, loop=loop, **kwargs)

        def factory(loop, coro, **kwargs):
            if not monitor.active:
                return build(loop, coro, **kwargs)
            code = getattr(coro, "cr_code", None)
            coro_string_id = None
            if code is not None:
                entry = watched.get(id(code)) or watch(code)
                coro_string_id = entry[1]
            # An eager task's first step runs inside `previous`: adopt() registers it there,
            # with the parent, loop and coroutine from `creating`, and clears `creating`; a
            # task that is not started eagerly is registered by asyncio's registry, likewise.
            monitor.creating = creating = (coro, getattr(current_task(loop), "_ember", 0), loop_id, coro_string_id)
            task = build(loop, coro, **kwargs)
            if monitor.creating is creating:
                monitor.creating = None
            if not getattr(task, "_ember", 0):  # finished eagerly unseen, or another thread
                create(task, creating[1], loop_id, coro_string_id)
            return task

        factory._ember = True
        factory._ember_previous = previous
        return factory

    def go_multi():
        nonlocal multi
        if not multi:
            multi = True
            sys.monitoring.register_callback(monitor.tool, _events.PY_YIELD, hot_path.on_yield_multi)
            put1(TAG | MODE, 1)

    def is_multi():
        return multi

    return Writer(hot_path, on_throw, on_return, on_unwind, create, make_factory, go_multi, is_multi)
