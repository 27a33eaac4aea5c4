#!/usr/bin/env python3
"""What reading the interpreter's frames costs and gives, against py-spy on the same deep
workload (issue 13), interleaved round by round.

    python3 bench/deep_stacks.py [--rounds N] [--rate HZ] [--seconds S] [--depth D]

Each round starts `agent/tests/fixtures/deep_spin.py` (a recursion D deep spinning at its
bottom, with the perf trampoline on) and attaches, in turn: ember-agent record (release
build), the same with --no-interpreter-reads, the same with --lines (every sample read), and
py-spy record. For each it prints the
profiler's CPU per sample (user+sys of its process), its peak RSS, and the share of samples
that are whole (<module> and all D levels); for ember also the read latency (median and p99
from its summary). Needs root and py-spy beside the Python used (pip install py-spy)."""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import record_bench  # noqa: E402

DEEP = os.path.join(record_bench.ROOT, "agent/tests/fixtures/deep_spin.py")


def whole_share(stacks, depth):
    """Share of the samples in `spin` whose stack is <module>, `depth` times down, spin."""
    total = whole = 0
    for line in stacks.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        names = [f.split(" (")[0].split(" ")[0] for f in stack.split(";")]
        python = [n for n in names if n in ("<module>", "down", "spin")]
        if "spin" not in python:
            continue
        total += int(count)
        if python == ["<module>"] + ["down"] * depth + ["spin"]:
            whole += int(count)
    return whole / total if total else 0.0


def run_one(command, python, depth, seconds):
    """Attaches `command(pid, out)` to a fresh deep_spin.py; returns cpu s, RSS MB, samples,
    whole share, stderr."""
    env = dict(os.environ, PYTHONPERFSUPPORT="1")
    target = subprocess.Popen(
        [python, DEEP, str(depth), str(seconds + 30), "ready"], stdout=subprocess.PIPE, text=True, env=env
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.folded")
        try:
            assert target.stdout.readline().startswith("ready")
            proc = subprocess.Popen(
                command(target.pid, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            _, _, usage = os.wait4(proc.pid, 0)
            err = proc.stderr.read()
        finally:
            target.kill()
            target.wait()
        stacks = open(out).read() if os.path.exists(out) else ""
    samples = re.search(r"(\d+) samples in", err)
    samples = (
        int(samples.group(1)) if samples else sum(int(line.rpartition(" ")[2]) for line in stacks.splitlines() if line)
    )
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, samples, whole_share(stacks, depth), err


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=int, default=99)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--depth", type=int, default=150)
    ap.add_argument("--python")
    args = ap.parse_args()
    python = record_bench.find_python(args.python)
    pyspy = record_bench.tool("py-spy", python)
    if not pyspy:
        sys.exit("py-spy not found (pip install py-spy)")
    ember = record_bench.ember_binary()
    rate, secs = str(args.rate), str(args.seconds)

    def ember_with(*extra):
        return lambda pid, out: [ember, "record", "-r", rate, "-d", secs, "-p", str(pid), "-o", out, *extra]

    tools = {
        "ember": ember_with(),
        "ember, no reads": ember_with("--no-interpreter-reads"),
        "ember --lines": ember_with("--lines"),
        "py-spy": lambda pid, out: [pyspy, "record", "-r", rate, "-d", secs, "-p", str(pid), "-f", "raw", "-o", out],
    }
    rows = {name: [] for name in tools}
    latencies = []
    for _ in range(args.rounds):
        for name, command in tools.items():
            cpu, rss, samples, whole, err = run_one(command, python, args.depth, args.seconds)
            rows[name].append((1e6 * cpu / max(samples, 1), rss, whole, samples))
            m = re.search(r"read ([0-9.]+) ms median, ([0-9.]+) ms p99", err)
            if name == "ember" and m:
                latencies.append((float(m.group(1)), float(m.group(2))))
    spy = statistics.median(r[0] for r in rows["py-spy"])
    print(f"depth {args.depth}, {args.rate} Hz, {args.seconds} s, {args.rounds} interleaved rounds ({python})")
    print("| profiler | CPU per sample (median) | vs py-spy | peak RSS | whole stacks | samples |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        cpu = statistics.median(x[0] for x in r)
        rss = max(x[1] for x in r)
        whole = statistics.median(x[2] for x in r)
        n = statistics.median(x[3] for x in r)
        print(f"| {name} | {cpu:.0f} µs | {cpu / spy:.2f}× | {rss:.0f} MB | {100 * whole:.1f}% | {n:.0f} |")
    if latencies:
        med = statistics.median(m for m, _ in latencies)
        p99 = max(p for _, p in latencies)
        print(f"ember's read latency after the sample: {med:.1f} ms median, {p99:.1f} ms p99 (worst round)")


if __name__ == "__main__":
    main()
