#!/usr/bin/env python3
"""Whole stacks through code without unwind info: numpy's OpenBLAS kernels (hand-written
assembly, no CFI) under several ember-agent builds, per OpenBLAS kernel family.

    python3 bench/no_cfi_bench.py [--python VENV_PYTHON] LABEL=BINARY...

Runs `bench/realworld/numpy_work.py` under `record` with OPENBLAS_CORETYPE forcing each kernel
family (the CPU must support it) and one BLAS thread, and prints, per build and family, the
samples whose leaf is an OpenBLAS kernel and the share of them that are whole: rooted at
`<module>`, with no `[truncated]` and no unknown address. The venv is the real-world corpus's
(bench/realworld/run.py makes it). Needs root."""

import argparse
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKLOAD = os.path.join(HERE, "realworld", "numpy_work.py")
FAMILIES = ("Haswell", "SandyBridge", "SkylakeX")


def kernel_shares(folded):
    kernel = whole = 0
    with open(folded, encoding="utf-8", errors="replace") as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            frames = stack.split(";")
            leaf = frames[-1]
            if not (leaf.startswith(("dgemm_", "dtrsm_", "ddot_", "daxpy_")) and "openblas" in leaf):
                continue
            n = int(count)
            kernel += n
            broken = any(fr == "[truncated]" or "[unknown]" in fr for fr in frames)
            whole += n * (frames[0].startswith("<module> (") and not broken)
    return kernel, whole


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", default=os.path.join(ROOT, "target/venv-realworld-3.12/bin/python"))
    ap.add_argument("--rounds", default="600", help="EMBER_ROUNDS of the workload")
    ap.add_argument("builds", nargs="+", help="LABEL=PATH of an ember-agent binary")
    args = ap.parse_args()
    if not os.path.exists(args.python):
        sys.exit(f"no {args.python}: run bench/realworld/run.py once to make the venv")
    print("| build | OpenBLAS kernels | samples in a kernel | whole |")
    print("| --- | --- | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for family in FAMILIES:
            for label, binary in (b.split("=", 1) for b in args.builds):
                out = os.path.join(tmp, f"{label}-{family}.folded")
                env = dict(os.environ, OPENBLAS_CORETYPE=family, OPENBLAS_NUM_THREADS="1", EMBER_ROUNDS=args.rounds)
                cmd = [binary, "record", "--rate", "499", "-o", out, "--", args.python, "-X", "perf", WORKLOAD]
                subprocess.run(cmd, env=env, check=True, capture_output=True)
                kernel, whole = kernel_shares(out)
                share = f"{100 * whole / kernel:.1f}%" if kernel else "—"
                print(f"| {label} | {family} | {kernel} | {share} |")


if __name__ == "__main__":
    main()
