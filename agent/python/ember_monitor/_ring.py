"""The ring: its format's constants (docs/TASK_RING.md), the sealed memfd it lives in, and the
views the writers store through.

These constants are the Python copy of the ring format. agent/src/tasks/format.rs is their Rust
home (the agent's reader and _ember_accel share it); agent/src/tasks/format_check.rs fails when
any of them, or the table in docs/TASK_RING.md, differs."""

import os

MEMFD_NAME = "ember-task-ring"
RING_FD_ENV = "EMBER_TASK_RING_FD"  # a ring the agent made for this process
MAGIC = b"EMBRING2"
VERSION = 2
HEADER_SIZE = 64
RECORD_SIZE = 16
MIN_SLOTS = 64
MAX_SLOTS = 1 << 24
DEFAULT_CAPACITY = 2 << 20  # bytes of records: 131072 slots (pure Python: ~5 MiB of heap, see succ)

# Header words (little-endian i64): 0 magic, 1 version | record size << 32, 2 slots,
# 3 published slot (-1: none yet in this lap), 4 lap, 5 pid, 6 flags,
# 7 monotonic_ns when the ring was created (a new value means the ring was recreated).
MAGIC_WORD, LAYOUT, SLOTS, PUBLISHED, LAP, WRITER_PID, FLAGS, CREATED = range(8)
LAG_RECORDED, NATIVE = 1, 2  # FLAGS: READY records are written; written by _ember_accel

# A tagged word: bit 62 set, kind in bits 0-7, flags 8-15, a task (or other) id 16-47, 48-61 per
# kind. Word 1 ("value") follows the kind. A word 0 below 2**62 (a time: monotonic_ns stays below
# it for 146 years of uptime) is a bare STOP (see STOP). Positive: Python's bitwise operations
# on negative ints allocate temporaries.
TAG = 1 << 62
FLAGS_SHIFT = 8
ID_SHIFT = 16
EXTRA_SHIFT = 48  # CREATE: the loop id
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
LOOP_INFO = 14  # id = loop id; value = string id of the loop's class: a loop that is not one of
#                 asyncio's (uvloop). Flags: NO_LAG, NO_EAGER, what the monitor cannot follow there
MAX_STRING = 4096  # bytes of UTF-8 a string keeps

# Flags, already shifted into bits 8-15.
THROWN = 1 << FLAGS_SHIFT  # START
DEFAULT_NAME = 1 << FLAGS_SHIFT  # CREATE
HOW_RETURN = 1 << FLAGS_SHIFT  # STOP
HOW_RAISE = 2 << FLAGS_SHIFT  # STOP
OUT_EXCEPTION = 1 << FLAGS_SHIFT  # DONE
OUT_CANCELLED = 2 << FLAGS_SHIFT  # DONE
NO_LAG = 1 << FLAGS_SHIFT  # LOOP_INFO: no READY records for its tasks
NO_EAGER = 2 << FLAGS_SHIFT  # LOOP_INFO: eager first steps of tasks built with Task() are not seen
ID_MASK = 0xFFFFFFFF << ID_SHIFT
MAX_LOOP_ID = (1 << 14) - 1  # bits 48-61


def task_start_words():
    """START words with task ids 1 .. 2**32-1, then again from 1: after four billion tasks an
    id is reused (the agent replaces the old task) rather than create_task failing."""
    while True:
        yield from range(TAG | 1 << ID_SHIFT | START, TAG | 1 << EXTRA_SHIFT, 1 << ID_SHIFT)


def task_number(name):
    """N of asyncio's default task name "Task-N", which the TASK record holds instead of one more
    string per task (with CREATE's DEFAULT_NAME); -1 for any other name."""
    number = name[5:]
    if name[:5] == "Task-" and number.isascii() and number.isdecimal():
        return int(number) & 0xFFFFFFFF
    return -1


_memory = None  # (fd, mmap, pid): this process's ring memory, kept for its life
_agent_fd = None  # (fd, pid): the agent's ring, claimed by start() in process `pid`
_fork_handler = False


def claim_agent_ring():
    """Takes the ring ember-agent made for this process, if there is one (once)."""
    global _agent_fd, _fork_handler
    if _agent_fd is None:
        fd = _agent_ring()
        _agent_fd = None if fd is None else (fd, os.getpid())
    if not _fork_handler:
        # From now on, a child forked at any time (before asyncio too) drops what is its
        # parent's: a ring it would otherwise write into alongside the parent.
        _fork_handler = True
        os.register_at_fork(after_in_child=forget_memory_in_child)


def _agent_ring():
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
        word = [int.from_bytes(header[i : i + 8], "little", signed=True) for i in range(0, HEADER_SIZE, 8)]
        slots = word[SLOTS]
        if (
            word[LAYOUT] != VERSION | RECORD_SIZE << 32
            or not MIN_SLOTS <= slots <= MAX_SLOTS
            or slots & (slots - 1)
            or os.fstat(fd).st_size != HEADER_SIZE + slots * RECORD_SIZE
        ):
            return None
        if word[WRITER_PID] != os.getpid():
            # An ember ring made for another process (this one runs under a wrapper such as
            # `sh -c`): not ours to write, nor to pass on to our own children.
            os.close(fd)
            return None
        os.set_inheritable(fd, False)
        return fd
    except (ValueError, OSError):  # not a number, not open, not a memfd: not ours to use
        return None


def _ring_memory(capacity):
    """The ring's memory: the agent's, or a new memfd sealed so it never changes size."""
    global _memory, _agent_fd
    if _memory is not None and _memory[2] == os.getpid():
        return _memory[1]
    import fcntl
    import mmap

    claimed, _agent_fd = _agent_fd, None
    fd = claimed[0] if claimed is not None and claimed[1] == os.getpid() else None
    if fd is None:
        slots = MIN_SLOTS
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


def forget_memory_in_child():
    """A forked child must not write to, or show the agent, its parent's ring, whether its
    parent had mapped it yet or only claimed it."""
    global _memory, _agent_fd
    for held in (_memory, _agent_fd):
        if held is not None and held[-1] != os.getpid():
            try:
                os.close(held[0])
            except OSError:
                pass
    if _memory is not None and _memory[2] != os.getpid():
        _memory = None
    if _agent_fd is not None and _agent_fd[1] != os.getpid():
        _agent_fd = None


class Ring:
    """The ring: its memory, and views of the header and of the two words of every slot."""

    def __init__(self, capacity):
        import struct
        import time

        self.map = _ring_memory(capacity)
        self.slots = slots = (len(self.map) - HEADER_SIZE) // RECORD_SIZE
        view = memoryview(self.map)
        self.header = header = view[:HEADER_SIZE].cast("q")
        # 'l' (C long): see the writers' notes in _hot_path.
        words = view[HEADER_SIZE:].cast("l" if struct.calcsize("l") == 8 else "q")
        self.words, self.values = words[0::2], words[1::2]
        header[CREATED] = 0  # not a ring until complete: the reader waits
        header[MAGIC_WORD] = int.from_bytes(MAGIC, "little")
        header[LAYOUT] = VERSION | RECORD_SIZE << 32
        header[SLOTS] = slots
        header[PUBLISHED] = -1
        header[LAP] = 0
        header[WRITER_PID] = os.getpid()
        header[FLAGS] = 0
        header[CREATED] = time.monotonic_ns()
