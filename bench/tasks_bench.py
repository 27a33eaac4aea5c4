#!/usr/bin/env python3
"""Overhead of ember's asyncio task monitor (agent/python/ember_monitor.py).

    python3.12 bench/tasks_bench.py [--rounds 7]

Each configuration runs in a fresh interpreter pinned to one CPU; the figure is the minimum of
N rounds, as in ../shared/reference/asyncio-monitoring.md, where the same worst case measured
1.44x (normal) / 1.54x (eager) for the best prototype."""
import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKLOAD = r'''
import asyncio, os, sys, time
os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
mode, kind = sys.argv[1], sys.argv[2]
if mode == "monitor":
    import ember_monitor
    ember_monitor.start(path=f"/tmp/ember-bench-{os.getpid()}.ring")

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
    count = 10_000 if kind.startswith("worst") else 300
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


def run(python, mode, kind):
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "agent/python"))
    out = subprocess.run([python, "-c", WORKLOAD, mode, kind], capture_output=True, text=True, env=env, check=True)
    return float(out.stdout.strip())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()
    print(f"python {args.python}, {args.rounds} rounds, minimum, pinned to one CPU\n")
    print("| workload | without monitor (s) | with monitor (s) | slowdown | target |")
    print("| --- | ---: | ---: | ---: | ---: |")
    targets = {"worst": "≤ 1.25×", "worst-eager": "≤ 1.25×", "service": "≤ 1.02×", "service-eager": "≤ 1.02×", "no-asyncio": "nothing measurable"}
    labels = {
        "worst": "10,000 tasks × 10 trivial awaits",
        "worst-eager": "the same, eager_task_factory",
        "service": "300 tasks × 10 steps of ~100 µs",
        "service-eager": "the same, eager_task_factory",
        "no-asyncio": "a program that never uses asyncio",
    }
    for kind in labels:
        base, monitored = [], []
        for _ in range(args.rounds):
            base.append(run(args.python, "plain", kind))
            monitored.append(run(args.python, "monitor", kind))
        b, m = min(base), min(monitored)
        print(f"| {labels[kind]} | {b:.3f} | {m:.3f} | {m / b:.3f}× | {targets[kind]} |")


if __name__ == "__main__":
    main()
