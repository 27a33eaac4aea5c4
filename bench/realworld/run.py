#!/usr/bin/env python3
"""The real-world corpus: third-party workloads profiled by ember and py-spy at once.

    python3 bench/realworld/run.py [--only NAME,...] [--check] [--keep DIR]

Each workload starts behind `gate.py` (so start-up is not profiled), both profilers attach to
it by PID, then it does a fixed amount of work and exits. Prints a Markdown table; with
`--check`, exits 1 unless every workload meets the bar of issue 12 (complete stacks ≥ 99%,
`[truncated]` < 0.5%, no garbage frames, no `_init`, innermost-function shares within 3 points
of py-spy's). Needs root, the agent built (`cargo build -p ember-agent`), and pyenv's 3.12."""

import argparse
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time

import measure
import workloads

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
EMBER_RATE, PYSPY_RATE = 499, 250


def wait_for_line(proc, stream, wanted, timeout, what):
    """Reads `stream` until a line containing `wanted`; fails on exit or timeout."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 0.2)
        if ready:
            line = stream.readline()
            if not line and proc.poll() is not None:
                break
            seen.append(line)
            if wanted in line:
                return
        elif proc.poll() is not None:
            break
    raise RuntimeError(f"{what} did not say {wanted!r}: {''.join(seen)[-2000:]}")


def profile(w, ember, tmp):
    """Runs workload `w` under both profilers; returns (ember stacks, py-spy stacks)."""
    env = dict(os.environ, PYTHONPERFSUPPORT="1", OPENBLAS_NUM_THREADS="1", **w.env)
    target = subprocess.Popen(
        [*w.python, w.path(w.script), *w.args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=w.cwd,
    )
    profilers = []
    try:
        wait_for_line(target, target.stdout, "ready", 120, w.name)
        pid = str(target.pid)
        ember_out, pyspy_out = os.path.join(tmp, f"{w.name}.ember"), os.path.join(tmp, f"{w.name}.pyspy")
        sub = ["--subprocesses"] if w.subprocesses else []
        ember_cmd = [ember, "record", "-r", str(EMBER_RATE), "-f", "collapsed", "-o", ember_out, "--pid", pid, *sub]
        pyspy_cmd = [workloads.venv_tool("py-spy"), "record", "-r", str(PYSPY_RATE), "--nolineno", "-f", "raw"]
        pyspy_cmd += ["-o", pyspy_out, "--pid", pid, *sub, *w.pyspy_args]
        # ember says it is recording on stderr, py-spy that it samples on stdout.
        for cmd, says in ((ember_cmd, "recording"), (pyspy_cmd, "Sampling process")):
            p = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            profilers.append(p)
            wait_for_line(p, p.stderr if cmd is ember_cmd else p.stdout, says, 60, cmd[0])
            for stream in (p.stdout, p.stderr):
                # Keep draining, so a chatty profiler never blocks on a full pipe.
                threading.Thread(target=stream.read, daemon=True).start()
        target.stdin.write("go\n")
        target.stdin.flush()
        if w.client:
            subprocess.run([*workloads.venv_python(), w.path(w.client)], env=env, check=True, timeout=600)
        target.wait(timeout=600)
        for p in profilers:
            p.wait(timeout=120)
        return measure.read_folded(ember_out), measure.read_folded(pyspy_out)
    finally:
        for p in [target, *profilers]:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()


def row(w, ember_stacks, pyspy_stacks):
    m = measure.ember_measures(ember_stacks)
    ember_shares = measure.innermost_shares(ember_stacks, python_only_frames=False)
    pyspy_shares = measure.innermost_shares(pyspy_stacks, python_only_frames=True)
    (gap, worst), compared = measure.top_differences(ember_shares, pyspy_shares)
    passed = (
        m["complete"] >= 0.99
        and m["truncated"] < 0.005
        and m["garbage"] == 0
        and m["plt_init"] == 0
        and gap <= 3.0
        and compared > 0
    )
    text = (
        f"| {w.name} | {m['samples']} | {100 * m['complete']:.1f}% | {100 * m['truncated']:.2f}% | "
        f"{100 * m['garbage']:.2f}% | {m['plt_init']} | {gap:.1f} ({worst}) | {'yes' if passed else '**no**'} |"
    )
    return passed, text, m


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="comma-separated workload names")
    parser.add_argument("--check", action="store_true", help="exit 1 unless every workload passes")
    parser.add_argument("--keep", help="keep the profiles in this directory")
    args = parser.parse_args()
    ember = os.environ.get("EMBER_AGENT", os.path.join(ROOT, "target/debug/ember-agent"))
    chosen = workloads.all_workloads()
    if args.only:
        names = set(args.only.split(","))
        chosen = [w for w in chosen if w.name in names]
    tmp = args.keep or tempfile.mkdtemp(prefix="ember-realworld-")
    os.makedirs(tmp, exist_ok=True)
    print(f"ember at {EMBER_RATE} Hz and py-spy {workloads.pyspy_version()} at {PYSPY_RATE} Hz, attached together\n")
    columns = ["workload", "ember samples", "complete stacks", "`[truncated]`", "garbage frames", "`_init`"]
    columns += ["largest top-10 gap vs py-spy, points", "passes"]
    print("| " + " | ".join(columns) + " |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    failed = []
    for w in chosen:
        try:
            passed, text, m = row(w, *profile(w, ember, tmp))
        except (RuntimeError, subprocess.SubprocessError, OSError) as e:
            passed, text, m = False, f"| {w.name} | error: {str(e)[:200]} | | | | | | **no** |", {}
        print(text, flush=True)
        if not passed:
            failed.append((w.name, m.get("incomplete_examples", [])))
    for name, examples in failed:
        print(f"\n{name}: incomplete stacks, most common first:", file=sys.stderr)
        for stack, n in examples:
            print(f"  {n:6d} {stack}", file=sys.stderr)
    if args.check and failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
