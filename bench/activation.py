#!/usr/bin/env python3
"""How long ember takes to turn the perf trampoline on in a process started without it, and to
give its first whole stack (issue 14): pyenv's 3.12 and 3.13 and Debian's 3.13 (a pending call
queued from a thread borrowed with ptrace), Debian's 3.14 and 3.15 (PEP 768).

    python3 bench/activation.py [--rounds N]

Each round starts `agent/tests/fixtures/activate_work.py` (no -X perf) under each interpreter
in turn, waits for it to print `ready`, and runs `ember-agent record --pid` (release build) with
`-f trace` until the target exits. It prints, per interpreter, the time from ember's request to
the perf map's first line (ember's own summary), how long the borrowed thread was stopped
(3.12/3.13), and the time from the first sample to the first whole stack (<module>, main and a
work function): what a user waits before Python frames appear. Needs root (the chroot) and
`tools/debian-sid.sh`."""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import record_bench  # noqa: E402
from realworld.workloads import pyenv_python  # noqa: E402

ROOT = record_bench.ROOT
DEBIAN = os.path.join(ROOT, "target/debian-sid")
FIXTURE = os.path.join(ROOT, "agent/tests/fixtures/activate_work.py")


INTERPRETERS = {
    "pyenv 3.12": lambda: [pyenv_python("3.12"), FIXTURE],
    "pyenv 3.13": lambda: [pyenv_python("3.13"), FIXTURE],
    "Debian 3.13": lambda: ["chroot", DEBIAN, "python3.13", "/opt/ember-tests/activate_work.py"],
    "Debian 3.14": lambda: ["chroot", DEBIAN, "python3.14", "/opt/ember-tests/activate_work.py"],
    "Debian 3.15": lambda: ["chroot", DEBIAN, "python3.15", "/opt/ember-tests/activate_work.py"],
}


def one_round(ember, label, tmp):
    shutil.copy(FIXTURE, os.path.join(DEBIAN, "opt/ember-tests/activate_work.py"))
    target = subprocess.Popen(INTERPRETERS[label]() + ["2"], stdout=subprocess.PIPE, text=True)
    assert target.stdout.readline().strip() == "ready"
    trace = os.path.join(tmp, "activation.trace.json")
    run = subprocess.run(
        [ember, "record", "--rate", "997", "--pid", str(target.pid), "-o", trace],
        capture_output=True,
        text=True,
        check=True,
    )
    target.wait()
    asked_to_on = float(re.search(r"perf trampoline on, (\d+) ms after ember asked", run.stderr).group(1))
    stopped = re.search(r"ptrace stopped for (\d+) µs", run.stderr)
    samples = [e for e in json.load(open(trace))["traceEvents"] if e.get("cat") == "sample"]
    samples.sort(key=lambda e: e["ts"])

    def whole(e):
        names = [f.split(" (")[0] for f in e["args"]["stack"].split(";")]
        return names[:2] == ["<module>", "main"] and any(n.startswith("work_") for n in names)

    first_whole = next(e["ts"] for e in samples if whole(e))
    return asked_to_on, (first_whole - samples[0]["ts"]) / 1000.0, stopped and float(stopped.group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    subprocess.run([os.path.join(ROOT, "tools/debian-sid.sh"), DEBIAN], check=True)
    ember = record_bench.ember_binary()
    results = {label: [] for label in INTERPRETERS}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for label in INTERPRETERS:
                results[label].append(one_round(ember, label, tmp))
    print(
        "| interpreter | rounds | request to trampoline on (ms): median, max "
        "| thread stopped (µs): median, max | first sample to first whole stack (ms): median, max |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, rows in results.items():
        on = [r[0] for r in rows]
        whole = [r[1] for r in rows]
        stops = [r[2] for r in rows if r[2] is not None]
        stopped = f"{statistics.median(stops):.0f}, {max(stops):.0f}" if stops else "none (PEP 768)"
        print(
            f"| {label} | {len(rows)} | {statistics.median(on):.0f}, {max(on):.0f} | {stopped} "
            f"| {statistics.median(whole):.1f}, {max(whole):.1f} |"
        )


if __name__ == "__main__":
    main()
