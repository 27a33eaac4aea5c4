"""Tasks that no factory of ours sees being made: `asyncio.Task(coro, loop=...)` built directly
(aiohttp builds every request handler and connection task this way, with eager_start=True),
and the tasks of loops whose factory is not ours to wrap (uvloop's create_task builds an
asyncio.Task itself). Two hooks, both cheap, both in 3.12 and 3.13:

- The registry. CPython adds every task that is not started eagerly to one WeakSet,
  `asyncio.tasks._scheduled_tasks`, whose `add` the C Task's init looks up by name. Its class
  is swapped for a subclass whose `add` also records the task (with its parent, the loop's
  current task, and its loop); the set behaves as before. An eager task is added only after its
  first step, and only if that step did not finish it.
- Eager call sites. A C Task built with eager_start=True asks its loop `is_running()` right
  before it runs its first step, and that call's Python caller is the frame that built it. That
  first step cannot be seen (its coroutine's code is not watched yet), but the monitor turns on
  local CALL events for the calling code: from then on each call made there reports its
  callable and first argument. A call of a Task class watches the coroutine's code and says
  who creates it (`Monitor.creating`, as our factories do), so its eager first step is
  recorded, with its parent, by `Monitor.adopt`; any other call site turns itself off
  (sys.monitoring.DISABLE) at its first call. So only the first task built at each such call
  site has its first step charged to its parent.

Loops of classes other than asyncio's (uvloop) get a LOOP_INFO record naming their class and
what cannot be followed there, which the agent reports (docs/TASK_RING.md)."""

import sys

from ._ring import ID_SHIFT, LOOP_INFO, NO_EAGER, NO_LAG, TAG

CALL = sys.monitoring.events.CALL
DISABLE = sys.monitoring.DISABLE


def hook_registry(monitor, patch_undo):
    """Swaps the class of asyncio's task registry; False when this Python has none to swap."""
    import asyncio.tasks as tasks

    registry = getattr(tasks, "_scheduled_tasks", None)
    base = type(registry)
    if registry is None or base.__module__ != "_weakrefset" or "add" not in base.__dict__:
        return False
    from weakref import ref

    register = registrar(monitor)

    def add(self, task):
        # WeakSet.add (the same in 3.12 and 3.13), inlined: this runs for every task.
        if self._pending_removals:
            self._commit_removals()
        self.data.add(ref(task, self._remove))
        if not getattr(task, "_ember", 0) and monitor.active:
            try:
                register(task)
            except Exception:  # noqa: BLE001 - a failure here would fail the program's Task()
                pass

    # No __slots__ of its own and no new fields: the layout is WeakSet's, so the instance can
    # take the class, and give it back on stop().
    registering = type(base.__name__, (base,), {"__slots__": (), "add": add, "__module__": base.__module__})
    registry.__class__ = registering
    patch_undo(lambda: setattr(registry, "__class__", base))
    return True


def registrar(monitor):
    """register(task): records a task no factory of ours made, as asyncio registers it; with
    its parent and coroutine from `Monitor.creating` when a factory or call site said so."""
    current_task = monitor.current_task
    watched = monitor.watched
    loops = monitor.loops

    def register(task):
        coro = task.get_coro()
        if monitor.writer is None:
            monitor.ensure_ring()
        create = monitor.writer.create
        creating = monitor.creating
        if creating is not None and creating[0] is coro:
            monitor.creating = None
            create(task, creating[1], creating[2], creating[3])
            return
        code = getattr(coro, "cr_code", None)
        entry = (watched.get(id(code)) or monitor.watch(code)) if code is not None else None
        loop = task.get_loop()
        known = loops.get(id(loop))
        loop_id = known[0] if known is not None and known[1]() is loop else monitor.loop_id(loop, running=True)
        create(task, getattr(current_task(loop), "_ember", 0), loop_id, entry[1] if entry else None)

    return register


def eager_site_hook(monitor, original=None):
    """An `is_running` that watches the code calling it (the code that builds an eager task, when
    the caller is a C Task's init); `original` is the loop class's own, None for BaseEventLoop's
    (inlined: `self._thread_id is not None`)."""
    getframe = sys._getframe
    sites = monitor.call_sites
    watch_calls = monitor.watch_calls

    # A task our factory is building is already known (Monitor.creating): its caller (e.g.
    # asyncio's eager_task_factory) need not be watched.
    if original is None:

        def is_running(self):
            if monitor.creating is None and monitor.active:
                try:
                    code = getframe(1).f_code
                except ValueError:  # called from C with no Python frame below
                    code = None
                if code is not None and id(code) not in sites:
                    watch_calls(code)
            return self._thread_id is not None

    else:

        def is_running(self):
            if monitor.creating is None and monitor.active:
                try:
                    code = getframe(1).f_code
                except ValueError:
                    code = None
                if code is not None and id(code) not in sites:
                    watch_calls(code)
            return original(self)

    is_running._ember = True
    return is_running


def on_call_factory(monitor):
    """The CALL callback of the watched call sites."""
    import asyncio.events as events
    import asyncio.tasks as tasks

    task_types = tuple({tasks.Task, getattr(tasks, "_PyTask", tasks.Task)})
    get_running_loop = events._get_running_loop
    current_task = monitor.current_task
    watched = monitor.watched
    watch = monitor.watch
    loop_id = monitor.loop_id

    def on_call(code, offset, callable, arg0):
        if not (isinstance(callable, type) and issubclass(callable, task_types)):
            return DISABLE
        creating = monitor.creating
        if creating is not None and creating[0] is arg0:
            return None  # our factory already said who creates it
        try:
            coro_code = arg0.cr_code
        except AttributeError:
            return None  # not a coroutine: nothing to watch
        loop = get_running_loop()
        if loop is None:
            return None  # no running loop: the task cannot start eagerly here
        entry = watched.get(id(coro_code)) or watch(coro_code)
        parent = getattr(current_task(loop), "_ember", 0)
        monitor.creating = (arg0, parent, loop_id(loop), entry[1])
        return None

    return on_call


def describe_loop(monitor, loop, loop_id):
    """For a loop that is not one of asyncio's (uvloop): hooks its class's `is_running` where
    the class can take it (uvloop.Loop is a Python subclass of its C loop), and writes a
    LOOP_INFO record naming the class and what is not followed there: NO_LAG always (READY
    comes from BaseEventLoop.call_soon, which such a loop does not use), NO_EAGER when
    `is_running` could not be hooked."""
    cls = type(loop)
    flags = NO_LAG
    current = getattr(cls, "is_running", None)
    if not getattr(current, "_ember", False):
        own = cls.__dict__.get("is_running")
        try:
            cls.is_running = eager_site_hook(monitor, current)
        except (TypeError, AttributeError):  # an immutable (C) class
            flags |= NO_EAGER
        else:
            monitor.undo.append(lambda: setattr(cls, "is_running", own) if own else delattr(cls, "is_running"))
    name = monitor.string(f"{cls.__module__}.{cls.__qualname__}")
    monitor.writer.put1(TAG | LOOP_INFO | flags | loop_id << ID_SHIFT, name)
