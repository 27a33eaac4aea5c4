#!/usr/bin/env python3
"""Overhead of ember's asyncio task monitor (agent/python/ember_monitor.py).

    python3.12 bench/tasks_bench.py [--rounds 7] [--instructions]

Each configuration runs in a fresh interpreter pinned to one CPU; the time is the minimum of N
rounds, plain and monitored interleaved, as in ../shared/reference/asyncio-monitoring.md, where
the same worst case measured 1.44x (normal) / 1.54x (eager) for the best prototype.

Wall time on a shared VM moves 10-20% between runs, so --instructions also counts instructions
with valgrind (callgrind), which is deterministic: per task, from runs with N and 2N tasks, so
interpreter start-up cancels out. Workloads run with the current directory at /, because
`python -c` puts the current directory first on sys.path."""
import argparse
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKLOAD = r'''
import asyncio, os, sys, time
os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
mode, kind = sys.argv[1], sys.argv[2]
N = int(os.environ.get("EMBER_BENCH_TASKS", "10000"))
if mode != "plain":
    import atexit, ember_monitor
    path = f"/tmp/ember-bench-{os.getpid()}.ring"
    ember_monitor.start(path=path, lag=mode != "monitor-nolag")
    atexit.register(lambda: os.path.exists(path) and os.unlink(path))

async def leaf():
    await asyncio.sleep(0)

async def trivial_task():
    for _ in range(10):
        await leaf()

def work(n):
    # A service-like step: about 100 us of pure Python.
    total = 0
    for i in range(n):
        total += i * i
    return total

async def service_task():
    for _ in range(10):
        work(1500)
        await asyncio.sleep(0)

async def main():
    if kind.endswith("eager"):
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
    body = trivial_task if kind.startswith("worst") else service_task
    count = N if kind.startswith("worst") else N // 33
    start = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(count):
            tg.create_task(body())
    print(time.perf_counter() - start)

if kind == "no-asyncio":
    start = time.perf_counter()
    for _ in range(300):
        work(1500)
    print(time.perf_counter() - start)
else:
    asyncio.run(main())
'''

MODES = ["plain", "monitor", "monitor-nolag"]
LABELS = {
    "worst": "10,000 tasks × 10 trivial awaits",
    "worst-eager": "the same, eager_task_factory",
    "service": "300 tasks × 10 steps of ~100 µs",
    "service-eager": "the same, eager_task_factory",
    "no-asyncio": "a program that never uses asyncio",
}
TARGETS = {"worst": "≤ 1.25×", "worst-eager": "≤ 1.25×", "service": "≤ 1.02×", "service-eager": "≤ 1.02×",
           "no-asyncio": "nothing measurable"}


def env(tasks=None):
    e = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "agent/python"), PYTHONHASHSEED="0")
    if tasks:
        e["EMBER_BENCH_TASKS"] = str(tasks)
    return e


def run(python, mode, kind):
    out = subprocess.run([python, "-c", WORKLOAD, mode, kind], capture_output=True, text=True, env=env(),
                         check=True, cwd="/")
    return float(out.stdout.strip())


def instructions(python, mode, kind, tasks):
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", python, "-c", WORKLOAD,
                          mode, kind], capture_output=True, text=True, env=env(tasks), check=True, cwd="/")
    return int(re.search(r"Collected : (\d+)", out.stderr).group(1))


def per_task(python, mode, kind):
    tasks = (lambda n: n) if kind.startswith("worst") else (lambda n: n // 33)
    return (instructions(python, mode, kind, 4000) - instructions(python, mode, kind, 2000)) / (tasks(4000) - tasks(2000))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--instructions", action="store_true", help="also count instructions with valgrind")
    args = ap.parse_args()
    print(f"python {args.python}, {args.rounds} rounds, minimum, pinned to one CPU\n")
    print("| workload | plain (s) | monitor (s) | slowdown | lag off (s) | slowdown | target |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind, label in LABELS.items():
        times = {m: [] for m in MODES}
        for _ in range(args.rounds):
            for m in MODES:
                times[m].append(run(args.python, m, kind))
        b, m, n = (min(times[x]) for x in MODES)
        print(f"| {label} | {b:.3f} | {m:.3f} | {m / b:.3f}× | {n:.3f} | {n / b:.3f}× | {TARGETS[kind]} |")
    if args.instructions:
        print("\nInstructions per task (callgrind, N = 4000 minus N = 2000 tasks):\n")
        print("| workload | plain | monitor | slowdown | lag off | slowdown | target |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for kind in ["worst", "worst-eager", "service", "service-eager"]:
            b, m, n = (per_task(args.python, x, kind) for x in MODES)
            print(f"| {LABELS[kind]} | {b:,.0f} | {m:,.0f} | {m / b:.3f}× | {n:,.0f} | {n / b:.3f}× | {TARGETS[kind]} |")


if __name__ == "__main__":
    main()
