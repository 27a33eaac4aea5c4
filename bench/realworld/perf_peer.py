"""perf as the corpus's referee for innermost-function shares: `perf record --call-graph dwarf`
on the same processes, each sample charged to the innermost frame perf names from CPython's perf
map (`py::qualname:file`).

perf and ember both charge a sample to the function whose trampoline is innermost on the native
stack: the C frame the CPU is in. py-spy charges it to the frame CPython's thread state points
at, which CPython sets after its eval loop's prologue and, on return, moves to the caller before
it clears the returning frame's locals (GH-99729). On call-heavy code that moves a few points of
samples from callees to callers: perf tells that difference from an error of ember's.

perf samples CPU time in the kernel too, as ember does as root (`cpu-clock`, not `cpu-clock:u`):
on the servers a tenth of the time is in socket writes, which py-spy `--gil` cannot see."""

import collections
import glob
import os
import subprocess

import measure

RATE = 499
# Enough to reach the innermost trampoline above any leaf the corpus has.
STACK_BYTES = 16384
# Where perf finds a Python frame in fewer samples than ember, by more than this share, it could
# not unwind the row (code without CFI, binaries it cannot find): its shares are not compared.
MAX_COVERAGE_LOSS = 0.05


def command(out, pids=()):
    """CPU time in user mode and in the kernel, as ember samples it as root: of `pids`, or
    (none given) of the command that follows."""
    cmd = ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(RATE), "--call-graph", f"dwarf,{STACK_BYTES}"]
    return cmd + ["-o", out] + (["-p", ",".join(str(p) for p in pids)] if pids else ["--"])


def sampling(perf_pid):
    """perf has opened its events: one of its descriptors is a perf event."""
    try:
        fds = os.listdir(f"/proc/{perf_pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{perf_pid}/fd/{fd}") == "anon_inode:[perf_event]":
                return True
        except OSError:
            pass
    return False


def link_maps(root):
    """perf finds a chroot's binaries by itself but reads the maps from /tmp of the mount
    namespace, which a chroot shares: links the chroot's maps there. Returns the links."""
    made = []
    for inside in glob.glob(os.path.join(root, "tmp/perf-*.map")):
        outside = os.path.join("/tmp", os.path.basename(inside))
        if not os.path.lexists(outside):
            os.symlink(inside, outside)
            made.append(outside)
    return made


def samples(path, without_imports=False):
    """[(pid, innermost Python function or None)] of a perf.data, from `perf script`; samples
    ember's share comparisons leave out are left out here too (see measure.left_out_of_shares),
    and those in an import where asked."""
    cmd = ["perf", "script", "-F", "pid,ip,sym,dso", "-i", path]
    text = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600).stdout
    out = []
    for block in text.split("\n\n"):
        lines = block.strip().splitlines()
        if not lines or not lines[0].strip().isdigit():
            continue
        # perf lists the chain innermost first; measure's stacks are root first.
        stack = [frame(line) for line in reversed(lines[1:])]
        if measure.left_out_of_shares(stack) or (without_imports and any(measure.IMPORTING in f for f in stack)):
            continue
        python = [f for f in stack if measure.is_python(f)]
        out.append((int(lines[0]), measure.normalize(python[-1]) if python else None))
    return out


def frame(line):
    """perf's `7f12a4c0 py::qualname:/path/file.py (/tmp/perf-PID.map)` in ember's naming:
    `qualname (/path/file.py)` for Python, `symbol [/path/dso]` for the rest."""
    symbol, _, dso = line.strip().partition(" ")[2].rpartition(" (")
    if symbol.startswith("py::"):
        qualname, _, file = symbol[len("py::") :].rpartition(":")
        return f"{qualname} ({file})"
    return f"{symbol} [{dso.removesuffix(')')}]"


def shares(paths):
    """({innermost Python function: share}, share of samples that had one, PIDs attached late)
    over perf.data files. A process in a later file, attached once it had started (see
    run.spawned), is taken from there alone, and without its imports: perf missed part of them."""
    found, late = [], set()
    for i, path in enumerate(reversed(paths)):
        these = samples(path, without_imports=i < len(paths) - 1)
        found += [(pid, f) for pid, f in these if pid not in late]
        late |= {pid for pid, _ in these} if i < len(paths) - 1 else set()
    counts = collections.Counter(f for _, f in found if f)
    total = sum(counts.values())
    with_python = total / len(found) if found else 0.0
    return ({k: v / total for k, v in counts.items()} if total else {}), with_python, late
