#!/usr/bin/env python3
"""Overhead of ember's asyncio task monitor (agent/python/ember_monitor/).

    python3.12 bench/tasks_bench.py [--rounds 7] [--instructions] [--agent target/release/ember-agent]

The monitor is taken from the agent (`ember-agent export-monitor`), so the native fast path
(_ember_accel) is measured as the agent ships it; "pure Python" turns it off
(EMBER_MONITOR_ACCEL=0), as for a program that imports the ember_monitor package alone.

Each configuration runs in a fresh interpreter pinned to one CPU; the time is the minimum of N
rounds, plain and monitored interleaved, as in ../shared/reference/asyncio-monitoring.md, where
the same worst case measured 1.44x (normal) / 1.54x (eager) for the best prototype. The time is
the CPU time of the thread running the loop (these workloads never wait), so that other work on
the machine does not count; the reference measured wall time.

Wall time on a shared VM moves 10-20% between runs, so --instructions also counts instructions
with valgrind (callgrind), which is deterministic: per task, from runs with N and 2N tasks, so
interpreter start-up cancels out. Workloads run with the current directory at /, because
`python -c` puts the current directory first on sys.path."""

import argparse
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKLOAD = r"""
import asyncio, os, sys, time
os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
mode, kind = sys.argv[1], sys.argv[2]
N = int(os.environ.get("EMBER_BENCH_TASKS", "10000"))
if mode != "plain":
    import ember_monitor
    ember_monitor.start(lag=mode != "monitor-nolag", accel=mode != "python")

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
    start = time.thread_time()
    async with asyncio.TaskGroup() as tg:
        for _ in range(count):
            tg.create_task(body())
    print(time.thread_time() - start)

if kind == "no-asyncio":
    start = time.thread_time()
    for _ in range(300):
        work(1500)
    print(time.thread_time() - start)
else:
    asyncio.run(main())
"""

MODES = ["plain", "monitor", "monitor-nolag", "python"]
LABELS = {
    "worst": "10,000 tasks × 10 trivial awaits",
    "worst-eager": "the same, eager_task_factory",
    "service": "300 tasks × 10 steps of ~100 µs",
    "service-eager": "the same, eager_task_factory",
    "no-asyncio": "a program that never uses asyncio",
}
TARGETS = {
    "worst": "≤ 1.25×",
    "worst-eager": "≤ 1.25×",
    "service": "≤ 1.02×",
    "service-eager": "≤ 1.02×",
    "no-asyncio": "nothing measurable",
}


MONITOR_DIR = None  # where the agent exported the monitor


def env(tasks=None):
    e = dict(os.environ, PYTHONPATH=MONITOR_DIR, PYTHONHASHSEED="0")
    if tasks:
        e["EMBER_BENCH_TASKS"] = str(tasks)
    return e


def run(python, mode, kind):
    out = subprocess.run(
        [python, "-c", WORKLOAD, mode, kind], capture_output=True, text=True, env=env(), check=True, cwd="/"
    )
    return float(out.stdout.strip())


def instructions(python, mode, kind, tasks):
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", python, "-c", WORKLOAD, mode, kind],
        capture_output=True,
        text=True,
        env=env(tasks),
        check=True,
        cwd="/",
    )
    return int(re.search(r"Collected : (\d+)", out.stderr).group(1))


def per_task(python, mode, kind):
    tasks = (lambda n: n) if kind.startswith("worst") else (lambda n: n // 33)
    return (instructions(python, mode, kind, 4000) - instructions(python, mode, kind, 2000)) / (
        tasks(4000) - tasks(2000)
    )


def export_monitor(agent, into):
    """The monitor files as the agent ships them."""
    if not os.access(agent, os.X_OK):
        sys.exit(f"no agent at {agent}: build it first (cargo build --release -p ember-agent) or pass --agent")
    subprocess.run([agent, "export-monitor", into], check=True, stdout=subprocess.DEVNULL)


def main():
    global MONITOR_DIR
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--agent", default=os.path.join(ROOT, "target/release/ember-agent"))
    ap.add_argument("--instructions", action="store_true", help="also count instructions with valgrind")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ember-bench-") as MONITOR_DIR:
        export_monitor(args.agent, MONITOR_DIR)
        report(args)


def report(args):
    header = (
        "| workload | plain | monitor | slowdown | lag off | slowdown | pure Python | slowdown | target |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    print(f"python {args.python}, {args.rounds} rounds, minimum, pinned to one CPU; CPU seconds\n")
    print(header)
    for kind, label in LABELS.items():
        times = {m: [] for m in MODES}
        for _ in range(args.rounds):
            for m in MODES:
                times[m].append(run(args.python, m, kind))
        b, m, n, p = (min(times[x]) for x in MODES)
        print(
            f"| {label} | {b:.3f} | {m:.3f} | {m / b:.3f}× | {n:.3f} | {n / b:.3f}× | {p:.3f} | {p / b:.3f}× "
            f"| {TARGETS[kind]} |"
        )
    if args.instructions:
        print("\nInstructions per task (callgrind, N = 4000 minus N = 2000 tasks):\n")
        print(header)
        for kind in ["worst", "worst-eager", "service", "service-eager"]:
            b, m, n, p = (per_task(args.python, x, kind) for x in MODES)
            print(
                f"| {LABELS[kind]} | {b:,.0f} | {m:,.0f} | {m / b:.3f}× | {n:,.0f} | {n / b:.3f}× | {p:,.0f} "
                f"| {p / b:.3f}× | {TARGETS[kind]} |"
            )


if __name__ == "__main__":
    main()
