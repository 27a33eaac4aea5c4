#!/usr/bin/env python3
"""Agent CPU per sample of several ember-agent builds and py-spy, attached to the same kind of
target, interleaved round by round.

    python3 bench/agent_cost.py [--rounds N] [--rate HZ] [--seconds S] LABEL=BINARY...

Each round attaches every profiler in turn to a fresh `agent/tests/fixtures/serve.py` (a
Python service spinning in nested calls). CPU is the profiler process's user+sys time; the
table gives the best and median per sample and each build's ratio to py-spy's in the same
run. Build an earlier commit in a worktree to compare before and after (docs/BENCHMARKS.md).
Needs root and py-spy beside the Python used (pip install py-spy)."""

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import record_bench  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=int, default=999)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--python")
    ap.add_argument("builds", nargs="+", help="LABEL=PATH of an ember-agent binary")
    args = ap.parse_args()
    python = record_bench.find_python(args.python)
    pyspy = record_bench.tool("py-spy", python)
    if not pyspy:
        sys.exit("py-spy not found (pip install py-spy)")
    builds = [b.split("=", 1) for b in args.builds]
    per_sample = {label: [] for label, _ in builds}
    per_sample["py-spy"] = []
    runs = iter(range(1 << 30))
    with tempfile.TemporaryDirectory() as tmp:
        # A new collapsed-stacks file per run: ember refuses to overwrite one.
        def out():
            return os.path.join(tmp, f"out-{next(runs)}.folded")

        commands = {
            label: lambda pid, path=path: [
                path,
                "record",
                "-r",
                str(args.rate),
                "-d",
                str(args.seconds),
                "-p",
                str(pid),
                "-o",
                out(),
            ]
            for label, path in builds
        }
        commands["py-spy"] = lambda pid: [
            pyspy,
            "record",
            "-r",
            str(args.rate),
            "-d",
            str(args.seconds),
            "-p",
            str(pid),
            "-f",
            "raw",
            "-o",
            out(),
        ]
        for _ in range(args.rounds):
            for label, command in commands.items():
                cpu, _, samples = record_bench.attach_cost(command, python, args.seconds)
                if label != "py-spy" and not samples:
                    sys.exit(f"{label} reported no samples: did it fail?")
                # py-spy does not count its samples: take the rate times the duration.
                n = samples or args.rate * args.seconds
                per_sample[label].append(1e6 * cpu / n)
    spy = min(per_sample["py-spy"])
    print(f"rate {args.rate} Hz, {args.seconds} s per run, {args.rounds} interleaved rounds\n")
    print("| profiler | best µs/sample | median µs/sample | best vs py-spy |")
    print("| --- | ---: | ---: | ---: |")
    for label, values in per_sample.items():
        print(f"| {label} | {min(values):.1f} | {statistics.median(values):.1f} | {min(values) / spy:.2f} |")


if __name__ == "__main__":
    main()
