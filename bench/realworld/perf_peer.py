"""perf as the corpus's referee for innermost-function shares: `perf record --call-graph dwarf`
on the same processes, each sample charged to the innermost frame perf names from CPython's perf
map (`py::qualname:file`).

perf and ember both charge a sample to the function whose trampoline is innermost on the native
stack: the C frame the CPU is in. py-spy charges it to the frame CPython's thread state points
at, which CPython sets after its eval loop's prologue and, on return, moves to the caller before
it clears the returning frame's locals (GH-99729). On call-heavy code that moves a few points of
samples from callees to callers: perf tells that difference from an error of ember's."""

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


def command(pids, out):
    """User-only CPU time, as ember samples it."""
    return ["perf", "record", "-q", "-e", "cpu-clock:u", "-F", str(RATE), "--call-graph", f"dwarf,{STACK_BYTES}"] + [
        "-o",
        out,
        "-p",
        ",".join(str(p) for p in pids),
    ]


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


def samples(path):
    """[(pid, innermost Python function or None)] of a perf.data, from `perf script`."""
    cmd = ["perf", "script", "-F", "pid,ip,sym", "-i", path]
    text = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600).stdout
    out = []
    for block in text.split("\n\n"):
        lines = block.strip().splitlines()
        if not lines or not lines[0].strip().isdigit():
            continue
        function = None
        for line in lines[1:]:
            # "    7f12a4c0 py::qualname:/path/file.py" (the call chain: innermost first).
            symbol = line.strip().partition(" ")[2]
            if symbol.startswith("py::"):
                qualname, _, file = symbol[len("py::") :].rpartition(":")
                function = measure.normalize(f"{qualname} ({file})")
                break
        out.append((int(lines[0]), function))
    return out


def shares(path):
    """({innermost Python function: share}, share of samples that had one)."""
    found = samples(path)
    counts = collections.Counter(f for _, f in found if f)
    total = sum(counts.values())
    with_python = total / len(found) if found else 0.0
    return ({k: v / total for k, v in counts.items()} if total else {}), with_python
