#!/usr/bin/env python3
"""What sampling from memory costs (issue 14, item 5: `--memory-only`, what ember does when perf
events are refused), against py-spy at the same rate, interleaved round by round.

    python3 bench/memory_sampling.py [--rounds N] [--rate HZ] [--python PY]

Per round, with ember-agent record --memory-only (release build) and py-spy record, each
attached by PID at --rate (default 100 Hz):
- target slowdown: bench/fixed_work.py (fixed work, pinned to one CPU) timed alone and attached;
- profiler CPU per sample and peak RSS: attached for 10 s to agent/tests/fixtures/serve.py,
  samples counted from each profiler's own output.
Needs root (or ptrace rights) and py-spy beside the Python used (pip install py-spy)."""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import record_bench  # noqa: E402

SECONDS = 10


def fixed_work_elapsed(python, profiler_for_pid):
    """fixed_work.py's own elapsed time, with `profiler_for_pid` attached (None: alone)."""
    target = subprocess.Popen([python, record_bench.FIXED], stdout=subprocess.PIPE, text=True)
    profiler = None
    if profiler_for_pid:
        profiler = subprocess.Popen(profiler_for_pid(target.pid), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = target.communicate()[0]
    if profiler:
        profiler.wait()
    return float(re.search(r"elapsed ([0-9.]+)", out).group(1))


def attached_cost(python, command, samples_of):
    """(CPU seconds per sample in µs, peak RSS in MB) of `command(pid, out)` attached to serve.py."""
    target = subprocess.Popen([python, record_bench.SERVE, str(SECONDS + 10)], stdout=subprocess.PIPE, text=True)
    try:
        assert target.stdout.readline().startswith("ready")
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "stacks.txt")
            proc = subprocess.Popen(command(target.pid, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _, _, usage = os.wait4(proc.pid, 0)
            samples = samples_of(out)
        cpu = usage.ru_utime + usage.ru_stime
        return cpu / max(samples, 1) * 1e6, usage.ru_maxrss / 1024, samples
    finally:
        target.kill()
        target.wait()


def folded_count(path):
    total = 0
    for line in open(path):
        _, _, count = line.rstrip("\n").rpartition(" ")
        total += int(count) if count.isdigit() else 0
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--python")
    args = parser.parse_args()
    python = record_bench.find_python(args.python)
    pyspy = record_bench.tool("py-spy", python)
    if not (python and pyspy):
        sys.exit(f"need python3.12 ({python}) and py-spy ({pyspy}): python3.12 -m pip install py-spy")
    ember = record_bench.ember_binary()
    rate = str(args.rate)

    def ember_cmd(pid, out="/dev/null"):
        return [ember, "record", "--memory-only", "--rate", rate, "--pid", str(pid), "-o", out, "-d", f"{SECONDS}s"]

    def pyspy_cmd(pid, out="/dev/null"):
        return [pyspy, "record", "-r", rate, "-f", "raw", "-o", out, "-d", str(SECONDS), "--pid", str(pid)]

    def ember_attach(pid):
        return [ember, "record", "--memory-only", "--rate", rate, "--pid", str(pid), "-o", "/dev/null"]

    def pyspy_attach(pid):
        return [pyspy, "record", "-r", rate, "-f", "raw", "-o", "/dev/null", "--pid", str(pid)]

    slow = {"alone": [], "ember --memory-only": [], "py-spy": []}
    cost = {"ember --memory-only": [], "py-spy": []}
    for _ in range(args.rounds):
        slow["alone"].append(fixed_work_elapsed(python, None))
        slow["ember --memory-only"].append(fixed_work_elapsed(python, ember_attach))
        slow["py-spy"].append(fixed_work_elapsed(python, pyspy_attach))
        cost["ember --memory-only"].append(attached_cost(python, ember_cmd, folded_count))
        cost["py-spy"].append(attached_cost(python, pyspy_cmd, folded_count))
    alone = statistics.median(slow["alone"])
    print(f"python {python}, {args.rate} Hz, {args.rounds} interleaved rounds, medians\n")
    print("| profiler | fixed_work.py elapsed | slowdown | CPU per sample | peak RSS | samples in 10 s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(f"| alone | {alone:.3f} s | 1.00x | | | |")
    for name in cost:
        t = statistics.median(slow[name])
        us = statistics.median(c[0] for c in cost[name])
        rss = statistics.median(c[1] for c in cost[name])
        samples = statistics.median(c[2] for c in cost[name])
        print(f"| {name} | {t:.3f} s | {t / alone:.2f}x | {us:.0f} µs | {rss:.0f} MB | {samples:.0f} |")


if __name__ == "__main__":
    main()
