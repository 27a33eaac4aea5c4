"""Fixed CPU work (call-heavy and loop-heavy), for measuring profiler overhead.
Prints `elapsed <seconds>` for the work alone, excluding interpreter start-up."""

import os
import sys
import time

# Run on the last CPU only, leaving the others to the profiler, so that the measurement
# is the profiler's effect on the target and not a fight over one core.
os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 140


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def leaf(n):
    total = 0
    for i in range(n):
        total += i * i
    return total


def middle(n):
    return leaf(n) + leaf(n // 2)


def outer(rounds):
    result = 0
    for _ in range(rounds):
        result += fib(22)
        for _ in range(200):
            result += middle(500)
    return result


start = time.perf_counter()
outer(ROUNDS)
print(f"elapsed {time.perf_counter() - start:.6f}", flush=True)
