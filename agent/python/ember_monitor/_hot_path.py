"""The per-step writers: the sys.monitoring callbacks of every step's start and end, READY from
`call_soon`, and the two record writers everything else goes through. Pure Python, or from
_ember_accel (agent/accel/), which writes the same records at a fraction of the cost.

Why the pure-Python hot path looks the way it does (each point was measured; docs/BENCHMARKS.md):
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
- Reserving a slot, storing and publishing involve no call after the reservation, so under the
  GIL no other thread runs in between (the eval breaker is only checked at calls, function entry
  and backward jumps): every slot up to the published one is complete.
- Record words that are not times are "tagged" (bit 62 set; times stay below 2**62). A step's
  end in single-thread mode is then one store: a bare time in word 0.
- Only START publishes the position; a step's end is published by the next START, by the loop
  before it waits for I/O (selector.select), when run_forever returns, or at exit.
- While only one thread runs asyncio, a step's end carries no task: the reader knows which task
  runs on that thread. When a second thread runs a loop or monitored code, a MODE record is
  written and PY_YIELD switches to a callback whose STOP names its task.
- Records carry no thread: a LOOP record says which OS thread runs a loop from then on, and each
  task's CREATE record names its loop.
- Header words are subscripted with literals (3 = PUBLISHED, 4 = LAP): a constant, not a global
  lookup per record.
"""

from ._ring import READY, START, STOP


class HotPath:
    """The per-step writers of one ring."""

    __slots__ = ("on_start", "on_yield", "on_yield_multi", "put1", "put2", "publish", "make_call_soon")

    def __init__(self, on_start, on_yield, on_yield_multi, put1, put2, publish, make_call_soon):
        self.on_start = on_start  # PY_START, PY_RESUME: START
        self.on_yield = on_yield  # PY_YIELD, one asyncio thread: a bare STOP
        self.on_yield_multi = on_yield_multi  # PY_YIELD, several asyncio threads: STOP
        self.put1 = put1  # put1(word, value): one record, published
        self.put2 = put2  # put2(word, value, word, value): two records, published together
        self.publish = publish  # publish(): makes the bare STOPs written so far visible
        self.make_call_soon = make_call_soon  # make_call_soon(original): call_soon writing READY


def python_hot_path(ring, monitor):
    """The ring's writers in pure Python, as closures over one ring.

    `next_slot` is the next slot, `lap` how many times the ring wrapped. Every reservation is
        slot = next_slot; next_slot = succ[slot]     (TypeError when slot is None: wrap around)
    followed by the stores and, for what must be seen at once, publishing `slot`; no call in
    between. On wrap-around PUBLISHED is reset before LAP moves, so that a reader never sees a
    position ahead of what is written. `succ` costs 8 bytes of tuple and one int object (32
    bytes) per slot: the price of a slot reservation that allocates nothing.

    `reserve()` is that reservation as a function. The per-step writers (on_start, on_yield,
    on_yield_multi, call_soon) inline it: calling it there costs the worst case several percent
    more instructions per task (docs/BENCHMARKS.md). One function of closures over shared cells,
    so longer than usual: splitting it would put an attribute or a call back on the hot path."""
    import time

    words, values, header = ring.words, ring.values, ring.header
    # A tuple of ints is not tracked by the cyclic GC; a list would be traversed by every
    # full collection.
    succ = tuple(range(1, ring.slots)) + (None,)
    now = time.monotonic_ns
    current_task = monitor.current_task
    adopt = monitor.adopt
    next_slot = 0
    lap = 0

    def reserve():
        """The next slot. Calling it is safe where the caller has stored nothing yet: the
        eval breaker is checked when it is entered, before it reserves."""
        nonlocal next_slot, lap
        slot = next_slot
        try:
            next_slot = succ[slot]
        except TypeError:
            slot = 0
            next_slot = 1
            header[3] = -1
            lap += 1
            header[4] = lap
        return slot

    # ---- the hot path: one callback per step start and end, reservation inlined
    def on_start(code, offset):
        nonlocal next_slot, lap
        task = current_task()
        try:
            start_word = task._ember
        except AttributeError:
            start_word = adopt(task)
            if not start_word:
                return
        when = now()
        slot = next_slot
        try:
            next_slot = succ[slot]
        except TypeError:
            slot = 0
            next_slot = 1
            header[3] = -1
            lap += 1
            header[4] = lap
        words[slot] = start_word
        values[slot] = when
        header[3] = slot

    def on_yield(code, offset, value):
        # Single-thread mode: a bare time; the reader knows which task runs on that thread.
        nonlocal next_slot, lap
        when = now()
        slot = next_slot
        try:
            next_slot = succ[slot]
        except TypeError:
            slot = 0
            next_slot = 1
            header[3] = -1
            lap += 1
            header[4] = lap
        words[slot] = when

    def on_yield_multi(code, offset, value):
        nonlocal next_slot, lap
        try:
            stop_word = current_task()._ember + (STOP - START)
        except AttributeError:
            return  # no START was written for it either
        when = now()
        slot = next_slot
        try:
            next_slot = succ[slot]
        except TypeError:
            slot = 0
            next_slot = 1
            header[3] = -1
            lap += 1
            header[4] = lap
        words[slot] = stop_word
        values[slot] = when
        header[3] = slot

    # ---- slow-path writers, each atomic on its own
    def put1(word, value):
        slot = reserve()
        words[slot] = word
        values[slot] = value
        header[3] = slot

    def put2(word, value, word2, value2):
        nonlocal next_slot, lap
        slot = reserve()
        words[slot] = word
        values[slot] = value
        # Inline, not reserve(): entering a function here could let another thread's records
        # in between the two, and a block must be contiguous.
        slot = next_slot
        try:
            next_slot = succ[slot]
        except TypeError:
            slot = 0
            next_slot = 1
            header[3] = -1
            lap += 1
            header[4] = lap
        words[slot] = word2
        values[slot] = value2
        header[3] = slot

    def publish():
        """Publishes the bare STOPs written since the last START."""
        slot = next_slot
        header[3] = ring.slots - 1 if slot is None else slot - 1

    # ---- READY: the event-loop lag, from BaseEventLoop.call_soon (see Monitor.ensure_ring)
    def make_call_soon(original):
        from asyncio.events import Handle

        def call_soon(self, callback, *args, context=None):
            nonlocal next_slot, lap
            # BaseEventLoop.call_soon and _call_soon inlined; debug mode keeps the original.
            if self._closed or self._debug:
                handle = original(self, callback, *args, context=context)
            else:
                handle = Handle(callback, args, self, context)
                self._ready.append(handle)
            # A C task schedules its step (a TaskStepMethWrapper) and its wakeup (the builtin
            # task_wakeup, bound) through here; both have the task as __self__. getattr with a
            # default: raising AttributeError for every other callback would cost a microsecond.
            start_word = getattr(getattr(callback, "__self__", None), "_ember", 0)
            if not start_word:
                return handle
            when = now()
            slot = next_slot
            try:
                next_slot = succ[slot]
            except TypeError:
                slot = 0
                next_slot = 1
                header[3] = -1
                lap += 1
                header[4] = lap
            words[slot] = start_word + (READY - START)
            values[slot] = when
            # Published at once: one step can wake thousands of tasks, and a reader checks
            # for overwritten records against the published position.
            header[3] = slot
            return handle

        return call_soon

    return HotPath(on_start, on_yield, on_yield_multi, put1, put2, publish, make_call_soon)


def native_hot_path(ring, monitor, accel):
    """The same writers from _ember_accel (agent/accel/), which from here on owns the ring's
    write position: every record goes through it."""
    import asyncio.futures

    py_future = getattr(asyncio.futures, "_PyFuture", None)
    accel.init(ring.map, monitor.current_task, monitor.adopt, asyncio.futures.Future, py_future)
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

    return HotPath(
        accel.on_start, accel.on_yield, accel.on_yield_multi, accel.put, accel.put2, accel.publish, make_call_soon
    )


def load_accel(version):
    """_ember_accel if it can be used here, else None (the pure-Python writers are used)."""
    import os

    if os.environ.get("EMBER_MONITOR_ACCEL", "1") == "0":
        return None
    try:
        import _ember_accel
    except ImportError:
        return None
    return _ember_accel if getattr(_ember_accel, "RING_VERSION", None) == version else None
