"""Reading folded stacks of ember (`--native`) and py-spy (`--nolineno -f raw`), and the
corpus's measures: complete stacks, markers, garbage frames, innermost-function shares."""

import collections
import json
import re

# A walk that reached the root ends at the process's entry point or a thread's start: what
# ember's native view shows as its outermost frame (a `[truncated]` marker shows otherwise).
NATIVE_ROOTS = ("_start [", "clone3 [", "__clone3 [", "clone [", "__clone [")
# A stack deeper than the kernel's copy, joined with the frames the interpreter holds (issue 13),
# starts at the outermost Python frame: ember reads no native frames beyond the copy.
PYTHON_ROOTS = ("<module> (", "Thread._bootstrap (", "BaseProcess._bootstrap (")
GARBAGE = re.compile(r"^0x[0-9a-f]+ \[(unknown|anon)\]$")
# Native-only stacks that never ran Python code are interpreter start-up and shutdown (or a
# thread of a C library); with these in them, a native-only stack lost its Python frames.
# A walk cut short may have lost them all: `[truncated]` counts too.
RAN_PYTHON = ("PyEval_EvalCode", "[anon]", "[jit]", "_PyEval_EvalFrame", "[truncated]")
# Interpreter start-up and shutdown, which the corpus leaves out: the C initialisation (which
# runs frozen importlib before the trampolines are on, and imports `site`) and finalisation.
STARTUP = ("Py_InitializeFromConfig [", "Py_FinalizeEx [")
# `--subprocesses` roots each stack at its process: ember's `process PID (comm)`, py-spy's
# `process PID:"cmdline"` for each process from the one attached to down.
PROCESS_ROOT = re.compile(r'^process \d+( \(|:")')


# ember's own asyncio task monitor in the target: its Python callbacks (ember folds them into one
# frame, py-spy and perf name them from the agent's temporary directory) and its C accelerator.
MONITOR = ("[ember task monitor]", "_ember_accel.abi3.so]", "ember_monitor/")
# A frame of an import in progress, in ember's and perf's naming alike.
IMPORTING = "_find_and_load"


def is_monitor(frame):
    return any(m in frame for m in MONITOR)


def left_out_of_shares(stack):
    """A sample in ember's task monitor, called from the application's innermost Python frame
    (the monitor also wraps the event loop's run_forever, on every loop stack). Its cost is
    measured on its own (docs/BENCHMARKS.md), and each profiler charges it differently (ember to
    the coroutine that raised the event), so share comparisons leave such samples out."""
    for frame in reversed(stack):
        if is_monitor(frame):
            return True
        if is_python(frame):
            return False
    return False


def read_folded(path):
    """{stack tuple (root first): count}"""
    stacks = collections.Counter()
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if stack and count.isdigit():
                stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def process_of(stack):
    """The PID of ember's innermost `process PID (comm)` root, or None."""
    pids = [int(f.split()[1]) for f in stack if PROCESS_ROOT.match(f)]
    return pids[-1] if pids else None


def without_process(stack):
    skip = 0
    while skip < len(stack) and PROCESS_ROOT.match(stack[skip]):
        skip += 1
    return stack[skip:]


def is_python(frame):
    """ember's Python frames are `qualname (file)`; native ones `name [module]`."""
    return frame.endswith(")") and " (" in frame and not frame.startswith("[")


def normalize(frame):
    """`Class.meth (/a/b/file.py)` → `meth (file.py)`: py-spy names co_name, ember qualname."""
    name, _, file = frame.rpartition(" (")
    return f"{name.rsplit('.', 1)[-1]} ({file.rstrip(')').rsplit('/', 1)[-1]})"


def ember_measures(stacks):
    total = sum(stacks.values())
    counted = complete = truncated = garbage = plt_init = startup = 0
    incomplete = collections.Counter()
    for stack, n in stacks.items():
        stack = without_process(stack)
        truncated += n * ("[truncated]" in stack)
        garbage += n * any(GARBAGE.match(f) for f in stack)
        # `_init` called by the loader's call_init is the real one (.init); elsewhere it is a
        # PLT stub misnamed after the symbol before it.
        plt_init += n * any(
            f.startswith("_init [") and not stack[i - 1].startswith("call_init [") for i, f in enumerate(stack) if i > 0
        )
        has_python = any(is_python(f) for f in stack)
        text = ";".join(stack)
        if any(marker in text for marker in STARTUP) or (
            not has_python and not any(marker in text for marker in RAN_PYTHON)
        ):
            startup += n
            continue
        counted += n
        ok = (
            has_python
            and (stack[0].startswith(NATIVE_ROOTS) or stack[0].startswith(PYTHON_ROOTS))
            and "[truncated]" not in stack
            and not any(GARBAGE.match(f) for f in stack)
        )
        if ok:
            complete += n
        else:
            incomplete[text[:240]] += n
    return {
        "samples": total,
        "counted": counted,
        "startup": startup,
        "complete": complete / counted if counted else 0.0,
        "truncated": truncated / total if total else 0.0,
        "garbage": garbage / total if total else 0.0,
        "plt_init": plt_init,
        "incomplete_examples": incomplete.most_common(3),
    }


def innermost_shares(stacks, python_only_frames):
    """Share of each innermost Python function among samples that have one."""
    shares = collections.Counter()
    for stack, n in stacks.items():
        stack = without_process(stack)
        if left_out_of_shares(stack):
            continue
        frames = stack if python_only_frames else [f for f in stack if is_python(f)]
        if frames:
            shares[normalize(frames[-1])] += n
    total = sum(shares.values())
    return {k: v / total for k, v in shares.items()} if total else {}


def top_differences(ember, pyspy, n=10):
    """The largest gap, in points, over py-spy's top-n innermost functions."""
    top = sorted(pyspy, key=pyspy.get, reverse=True)[:n]
    gaps = [(abs(100 * (ember.get(f, 0.0) - pyspy[f])), f) for f in top]
    return max(gaps, default=(0.0, "")), len(top)


def read_trace(path):
    """ember's Chrome trace: ({stack tuple: count} of its samples, {task id: coroutine})."""
    with open(path, encoding="utf-8") as f:
        events = json.load(f)["traceEvents"]
    stacks = collections.Counter()
    tasks = {}
    for e in events:
        if e.get("cat") == "sample" and e["args"]["stack"]:
            stacks[tuple(e["args"]["stack"].split(";"))] += 1
        elif e.get("cat") == "task":
            tasks[e["args"]["task_id"]] = e["args"]["coro"]
    return stacks, tasks
