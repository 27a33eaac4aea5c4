"""ember's asyncio task monitor: records when every asyncio task runs, for ember-agent.

Standard library only, CPython 3.12+ (GIL builds). It turns on sys.monitoring (PEP 669) *local*
events for each task's root coroutine only, so code outside tasks pays nothing, and writes
16-byte records into a shared-memory ring: a sealed memfd named "ember-task-ring", so no file of
any file system is involved, and the ring can neither be planted nor truncated (which would kill
this process with SIGBUS). The agent reads it through /proc/PID/fd, or passes in one it made for
a command it launches (EMBER_TASK_RING_FD). Writing never blocks: when nobody reads, the ring
wraps, and a reader that falls behind counts what it missed. docs/TASK_RING.md describes the
ring exactly; agent/src/tasks/ring.rs decodes it.

    import ember_monitor
    ember_monitor.start()

The per-step work has a native fast path, _ember_accel (agent/accel/), which the agent writes
next to this package (`ember-agent export-monitor DIR` for in-code use). When it imports, it
writes every record; otherwise the pure-Python writers write the same records at a higher cost
(docs/BENCHMARKS.md).

The package's modules:
- _ring: the ring format's constants, the memfd, the header and slot views;
- _hot_path: the per-step writers (pure Python, or _ember_accel's) and why they look as they do;
- _writer: the once-per-task records, the task factories, the other sys.monitoring callbacks;
- _monitor: one process's monitor (strings, code objects, loops, asyncio's hooks call it);
- here: start(), stop(), and the hooks into asyncio.
"""

import os
import sys

from . import _discover, _ring
from ._monitor import Monitor
from ._ring import DEFAULT_CAPACITY

__all__ = ["start", "stop"]

LAG = True  # record READY (event-loop lag) unless start(lag=False)

_monitor = None  # a _Pending until asyncio is imported, then the _monitor.Monitor


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
    _ring.claim_agent_ring()
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
    global _monitor
    pending = _monitor
    if not isinstance(pending, _Pending):
        return
    import asyncio.base_events as base_events
    import asyncio.events as events

    tool = _free_tool_id()
    sys.monitoring.use_tool_id(tool, "ember")
    BaseEventLoop = base_events.BaseEventLoop
    monitor = Monitor(pending.ring_args, tool, pending.lag, pending.accel, BaseEventLoop.set_task_factory)
    _monitor = monitor

    def patch(owner, name, value):
        old = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        setattr(owner, name, value)
        monitor.undo.append(lambda: setattr(owner, name, old))
        return old

    _patch_discovery(monitor, patch, BaseEventLoop)
    _patch_task_factories(monitor, patch, BaseEventLoop)
    _patch_loops(monitor, patch, BaseEventLoop, events)
    _patch_task_names(monitor, patch, BaseEventLoop)
    # A forked child shares the ring's pages with its parent: it must not write to them.
    os.register_at_fork(after_in_child=_after_fork)
    try:
        loop = events.get_running_loop()
    except RuntimeError:
        return
    monitor.install(loop)


def _patch_discovery(monitor, patch, BaseEventLoop):
    """Tasks built without a factory (asyncio.Task(...), uvloop's create_task): _discover."""
    monitor.base_loop = BaseEventLoop
    # 3.14 keeps C tasks in a per-thread list, not in the registry: there, a factory of ours on
    # every loop is what sees tasks (and Task() built directly is not seen).
    if sys.version_info < (3, 14):
        monitor.registry = _discover.hook_registry(monitor, monitor.undo.append)
    patch(BaseEventLoop, "is_running", _discover.eager_site_hook(monitor))


def _patch_task_factories(monitor, patch, BaseEventLoop):
    """A factory the program installs later (set_task_factory) is chained, not lost, and the
    program still sees its own factory (get_task_factory)."""
    original_set_task_factory = monitor.set_task_factory

    def set_task_factory(loop, factory):
        if monitor.active:
            factory = monitor.wrap(factory, loop)
        original_set_task_factory(loop, factory)

    def get_task_factory(loop):
        factory = loop._task_factory
        return getattr(factory, "_ember_previous", factory)

    patch(BaseEventLoop, "set_task_factory", set_task_factory)
    patch(BaseEventLoop, "get_task_factory", get_task_factory)


def _patch_loops(monitor, patch, BaseEventLoop, events):
    """Every loop that runs gets the factory (loops made before start() or by a loop_factory
    too), and a LOOP record: which OS thread runs it from now on. Loops made from now on get the
    factory before any task (asyncio.run's main task)."""
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
    original_new = events.new_event_loop

    def new_event_loop():
        loop = original_new()
        if monitor.active:
            monitor.install(loop)
        return loop

    patch(events, "new_event_loop", new_event_loop)
    if "asyncio" in sys.modules and hasattr(sys.modules["asyncio"], "new_event_loop"):
        patch(sys.modules["asyncio"], "new_event_loop", new_event_loop)


def _patch_task_names(monitor, patch, BaseEventLoop):
    """Names given at creation (TaskGroup.create_task, create_task(name=...)) are set after the
    factory returns: 3.12 does it in tasks._set_task_name, 3.13 in create_task itself."""
    import asyncio.tasks as tasks

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


def _after_fork():
    if _monitor is not None and not isinstance(_monitor, _Pending) and _monitor.active:
        stop(_forked=True)
    _ring.forget_memory_in_child()


def stop(_forked=False):
    """Stops recording; the ring stays for the agent to finish reading."""
    global _monitor
    monitor, _monitor = _monitor, None
    if monitor is None or isinstance(monitor, _Pending):
        return
    if not _forked:
        monitor.publish()
    monitor.close()
