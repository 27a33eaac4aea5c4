"""Finds, inside a running CPython, where the objects `ember-agent dump` reads for asyncio tasks
keep their fields: the C Task, coroutines and their frames, and (3.14+) the per-thread task list.

The asyncio structs are private to `Modules/_asynciomodule.c`, so no header gives them. This
program makes objects whose field values it knows and looks for those values in their memory.
It prints `name value` lines; `agent/src/interp/tasks/layout.rs` holds what it printed for each
minor version, and an agent test runs it again on every interpreter it has.
"""

import asyncio
import ctypes
import sys
import types

WORD = 8


def words(addr, count):
    return list((ctypes.c_uint64 * count).from_address(addr))


def offset_of(addr, value, count=None, start=2, tag_bits=0):
    count = count or ctypes.cast(addr, ctypes.py_object).value.__class__.__basicsize__ // WORD
    mask = ~((1 << tag_bits) - 1)
    found = [i * WORD for i, w in enumerate(words(addr, count)) if i >= start and w & mask == value]
    if len(found) != 1:
        raise SystemExit(f"probe: {value:#x} found at {found} of {addr:#x}")
    return found[0]


def frame_of(coro):
    """The interpreter frame a coroutine embeds: `PyFrameObject.f_frame` (after f_back)."""
    return words(id(coro.cr_frame), 4)[3]


async def leaf(event):
    await event.wait()


async def middle(event):
    await leaf(event)


def report(name, value):
    print(name, value)


async def main():
    loop = asyncio.get_running_loop()
    event = asyncio.Event()
    coro = middle(event)
    task = asyncio.Task(coro, loop=loop, name="probe-task")
    task_addr = id(task)
    report("task.loop", offset_of(task_addr, id(loop)))
    report("task.coro", offset_of(task_addr, id(coro)))
    report("task.name", offset_of(task_addr, id(task.get_name())))

    def first(_):
        pass

    def second(_):
        pass

    before = words(task_addr, type(task).__basicsize__ // WORD)
    task.add_done_callback(first)
    report("task.callback0", offset_of(task_addr, id(first)))
    task.add_done_callback(second)
    after = words(task_addr, type(task).__basicsize__ // WORD)
    changed = [i * WORD for i, (b, a) in enumerate(zip(before, after, strict=True)) if b == 0 and a != 0]
    callbacks = [o for o in changed if o != offset_of(task_addr, id(first))]
    report("task.callbacks", callbacks[0])
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    waiter = event._waiters[0]
    report("task.fut_waiter", offset_of(task_addr, id(waiter)))

    iframe = frame_of(coro)
    report("coro.iframe", iframe - id(coro))
    # The frame-state byte: read with the coroutine suspended, created and (below) running.
    report_frame_state()
    report_stack_top(coro, iframe)

    if sys.version_info >= (3, 14):
        report_task_list(task_addr)
    event.set()
    await task


def report_frame_state():
    """The frame-state byte: the one byte below the embedded frame that tells apart one
    coroutine's three moments: created, running, and suspended in an await."""
    snapshots = []

    @types.coroutine
    def pause():
        yield

    async def probe():
        snapshots.append(bytes(ctypes.string_at(id(me), size)))
        await pause()

    me = probe()
    size = frame_of(me) - id(me)
    created = bytes(ctypes.string_at(id(me), size))
    me.send(None)
    suspended = bytes(ctypes.string_at(id(me), size))
    me.close()
    running = snapshots[0]
    at = [i for i in range(16, size) if len({created[i], running[i], suspended[i]}) == 3]
    if len(at) != 1:
        raise SystemExit(f"probe: frame state byte candidates {at}")
    report("coro.frame_state", at[0])
    for name, snapshot in (("created", created), ("running", running), ("awaiting", suspended)):
        report(f"state.{name}", ctypes.c_int8(snapshot[at[0]]).value)


def report_stack_top(coro, iframe):
    """Where the value a suspended coroutine awaits sits: the top of its frame's stack."""
    awaited = coro.cr_await
    # 3.14+ tags stack references in their low bits.
    at = offset_of(iframe, id(awaited), count=40, start=9, tag_bits=3)
    if sys.version_info >= (3, 14):
        # _PyStackRef *stackpointer, pointing just past the top; 3.15 keeps a NULL above the
        # awaited value.
        head = words(iframe, 12)
        found = [(i * WORD, w - iframe - at) for i, w in enumerate(head) if 0 < w - iframe - at <= 2 * WORD]
        if len(found) != 1:
            raise SystemExit(f"probe: stack pointer candidates {found}")
        report("frame.stackpointer", found[0][0])
        report("frame.awaited_below_top", found[0][1] // WORD)
    else:
        top_index = (at - frame_localsplus()) // WORD + 1
        ints = list((ctypes.c_int32 * 24).from_address(iframe))
        report("frame.stacktop", [i * 4 for i, v in enumerate(ints) if v == top_index][0])
    report("frame.localsplus", frame_localsplus())


def frame_localsplus():
    return {12: 72, 13: 72}.get(sys.version_info[1], 80)


def report_task_list(task_addr):
    """3.14+: each C task is linked (`task_node`) into its thread's list head."""
    tstate = ctypes.pythonapi.PyThreadState_Get
    tstate.restype = ctypes.c_void_p
    thread = tstate()
    task_words = words(task_addr, 30)
    for i, w in enumerate(task_words):
        if thread <= w < thread + 16384 and (w - thread) % WORD == 0:
            head = w - thread
            report("task.node", i * WORD)
            report("thread.asyncio_tasks_head", head)
            return
    raise SystemExit("probe: no task list link into the thread state")


def report_interpreter():
    """Where `sys.modules` hangs off the interpreter (3.12/3.13 find tasks through it), and
    where a class keeps the keys its instances' attribute values are stored under."""
    interp = ctypes.pythonapi.PyInterpreterState_Get
    interp.restype = ctypes.c_void_p
    report("interp.modules", offset_of(interp(), id(sys.modules), count=4096))

    class Probe:
        def __init__(self):
            self.first = 1
            self.second = 2

    Probe()
    # PyHeapTypeObject: ..., ht_name, ht_slots, ht_qualname, ht_cached_keys.
    at = offset_of(id(Probe), id(Probe.__qualname__), count=160) + WORD
    keys = words(id(Probe) + at, 1)[0]
    # PyDictKeysObject: log2 of the index bytes at +9, indices from +32, then the entries.
    log2_index_bytes = ctypes.c_uint8.from_address(keys + 9).value
    entries = keys + 32 + (1 << log2_index_bytes)
    if id(sys.intern("second")) != words(entries, 4)[2]:
        raise SystemExit("probe: ht_cached_keys is not after ht_qualname")
    report("type.cached_keys", at)


report_interpreter()
asyncio.run(main())
