#!/usr/bin/env python3
"""ember-agent record against `perf record --call-graph dwarf` and py-spy, in one run.

    python3 bench/record_bench.py [--reps N] [--python PATH]

Prints three tables (stack completeness, target slowdown, agent cost) as Markdown, with
ratios against the peers measured in the same run. Needs root (or CAP_PERFMON +
CAP_SYS_PTRACE), `perf` (Debian: linux-perf) and py-spy (pip install py-spy)."""

import argparse
import glob
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NESTED = os.path.join(ROOT, "agent/tests/fixtures/nested.py")
SERVE = os.path.join(ROOT, "agent/tests/fixtures/serve.py")
FIXED = os.path.join(ROOT, "bench/fixed_work.py")


def find_python(explicit):
    if explicit:
        return explicit
    if os.environ.get("EMBER_PYTHON"):
        return os.environ["EMBER_PYTHON"]
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = sorted(glob.glob(f"{root}/versions/3.12*/bin/python3.12"), reverse=True)
    return found[0] if found else shutil.which("python3.12")


def tool(name, python):
    beside = os.path.join(os.path.dirname(python), name)
    return beside if os.path.exists(beside) else shutil.which(name)


def ember_binary():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "ember-agent"], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target/release/ember-agent")


# ---------------------------------------------------------------- completeness


def complete_share(stacks):
    """stacks: list of (python frame names root first, count). A stack is complete when it
    goes from <module> through outer and middle, as every sample of the program does."""
    program = [
        (names, n) for names, n in stacks if any(x in names for x in ("outer", "middle", "spin", "leaf_a", "leaf_b"))
    ]
    total = sum(n for _, n in program)
    complete = sum(n for names, n in program if names[:3] == ["<module>", "outer", "middle"])
    per_sample = sum(len(names) * n for names, n in program) / max(total, 1)
    return 100.0 * complete / max(total, 1), per_sample, total


def ember_stacks(ember, python, rate, tmp):
    out = os.path.join(tmp, "ember.folded")
    env = dict(os.environ, EMBER_FIXTURE_SECONDS="4")
    subprocess.run(
        [ember, "record", "-r", str(rate), "-o", out, "--", python, NESTED],
        env=env,
        check=True,
        stderr=subprocess.DEVNULL,
    )
    stacks = []
    for line in open(out):
        stack, n = line.rstrip("\n").rsplit(" ", 1)
        names = [f.split(" (")[0] for f in stack.split(";") if f.endswith(".py)")]
        stacks.append((names, int(n)))
    return stacks


def perf_stacks(perf, python, rate, tmp):
    data = os.path.join(tmp, "perf.data")
    env = dict(os.environ, EMBER_FIXTURE_SECONDS="4")
    subprocess.run(
        [
            perf,
            "record",
            "-q",
            "-F",
            str(rate),
            "--call-graph",
            "dwarf",
            "-o",
            data,
            "--",
            python,
            "-X",
            "perf",
            NESTED,
        ],
        env=env,
        check=True,
        stderr=subprocess.DEVNULL,
    )
    text = subprocess.run([perf, "script", "-i", data], capture_output=True, text=True, check=True).stdout
    stacks = []
    for block in text.split("\n\n"):
        names = []
        for line in block.splitlines()[1:]:
            m = re.search(r"py::([^:]+):", line)
            if m:
                names.append(m.group(1))
        stacks.append((list(reversed(names)), 1))
    return stacks


def pyspy_stacks(pyspy, python, rate, tmp):
    out = os.path.join(tmp, "pyspy.txt")
    env = dict(os.environ, EMBER_FIXTURE_SECONDS="4")
    subprocess.run(
        [pyspy, "record", "-r", str(rate), "-f", "raw", "-o", out, "--", python, NESTED],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stacks = []
    for line in open(out):
        stack, n = line.rstrip("\n").rsplit(" ", 1)
        names = [f.split(" (")[0] for f in stack.split(";")]
        stacks.append((names, int(n)))
    return stacks


# ---------------------------------------------------------------- slowdown


def elapsed(cmd, env=None):
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    m = re.search(r"elapsed ([0-9.]+)", out)
    if not m:
        raise RuntimeError(f"no elapsed line from {cmd}: {out!r}")
    return float(m.group(1))


# ---------------------------------------------------------------- agent cost


def attach_cost(cmd_for_pid, python, seconds):
    """Runs a profiler attached to a fresh serve.py for `seconds`; returns (cpu s, max RSS MB)."""
    env = dict(os.environ, PYTHONPERFSUPPORT="1")
    target = subprocess.Popen([python, SERVE, str(seconds + 10)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = target.stdout.readline()
        assert line.startswith("ready"), line
        proc = subprocess.Popen(cmd_for_pid(target.pid), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        err = proc.stderr.read()
        samples = re.search(r"(\d+) samples in", err)
        return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, int(samples.group(1)) if samples else None
    finally:
        target.kill()
        target.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--python")
    args = ap.parse_args()
    python = find_python(args.python)
    perf = shutil.which("perf")
    pyspy = tool("py-spy", python)
    if not (python and perf and pyspy):
        sys.exit(
            f"need python3.12 ({python}), perf ({perf}) and py-spy ({pyspy}); "
            "install with: apt-get install linux-perf; python3.12 -m pip install py-spy"
        )
    ember = ember_binary()
    print(
        f"python {python}\nperf {subprocess.run([perf, '--version'], capture_output=True, text=True).stdout.strip()}\n"
        f"py-spy {subprocess.run([pyspy, '--version'], capture_output=True, text=True).stdout.strip()}\n"
        f"host {os.uname().release}, {os.cpu_count()} CPUs, reps {args.reps}\n"
    )

    with tempfile.TemporaryDirectory() as tmp:
        print("## Stack completeness (nested.py, 99 Hz, 4 s)\n")
        print("| profiler | samples | complete Python stacks | Python frames per sample |")
        print("| --- | ---: | ---: | ---: |")
        rows = [
            ("ember-agent record", ember_stacks(ember, python, 99, tmp)),
            ("perf record --call-graph dwarf (-X perf)", perf_stacks(perf, python, 99, tmp)),
            ("py-spy record", pyspy_stacks(pyspy, python, 99, tmp)),
        ]
        for name, stacks in rows:
            share, per_sample, total = complete_share(stacks)
            print(f"| {name} | {total} | {share:.1f}% | {per_sample:.2f} |")

        print(f"\n## Target slowdown (bench/fixed_work.py pinned to one CPU; {args.reps} interleaved rounds)\n")
        tramp_env = dict(os.environ, PYTHONPERFSUPPORT="1")
        configs = [
            ("plain python3.12", [python, FIXED], None),
            ("trampoline on (PYTHONPERFSUPPORT=1)", [python, FIXED], tramp_env),
        ]
        for rate in (99, 999):
            configs += [
                (
                    f"ember-agent record {rate} Hz",
                    [ember, "record", "-r", str(rate), "-o", os.path.join(tmp, "e.folded"), "--", python, FIXED],
                    None,
                ),
                (
                    f"py-spy record {rate} Hz",
                    [
                        pyspy,
                        "record",
                        "-r",
                        str(rate),
                        "-o",
                        os.path.join(tmp, "p.txt"),
                        "-f",
                        "raw",
                        "--",
                        python,
                        FIXED,
                    ],
                    None,
                ),
                (
                    f"perf record --call-graph dwarf {rate} Hz (-X perf)",
                    [
                        perf,
                        "record",
                        "-q",
                        "-F",
                        str(rate),
                        "--call-graph",
                        "dwarf",
                        "-o",
                        os.path.join(tmp, "p.data"),
                        "--",
                        python,
                        "-X",
                        "perf",
                        FIXED,
                    ],
                    None,
                ),
            ]
        # Interleave: every repetition runs every configuration once, so slow drifts of the
        # machine's speed affect all of them alike.
        times = {name: [] for name, _, _ in configs}
        for _ in range(args.reps):
            for name, cmd, env in configs:
                times[name].append(elapsed(cmd, env))
        # Noise only ever adds time, so the minimum is the estimate; the median is shown too.
        best = {name: min(ts) for name, ts in times.items()}
        med = {name: statistics.median(ts) for name, ts in times.items()}
        tramp_name = "trampoline on (PYTHONPERFSUPPORT=1)"
        print(
            "| run | best (s) | median (s) | best vs trampoline on, no profiler | median vs same "
            "| best vs plain python3.12 |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for name, _, _ in configs:
            print(
                f"| {name} | {best[name]:.3f} | {med[name]:.3f} | {best[name] / best[tramp_name]:.3f} | "
                f"{med[name] / med[tramp_name]:.3f} | {best[name] / best['plain python3.12']:.3f} |"
            )

        print("\n## Agent cost (attached to serve.py for 10 s)\n")
        print("| profiler | rate | samples | CPU (s) | CPU per sample, all costs (µs) | peak RSS (MB) |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        ember_rows = {}
        for rate in (99, 999):
            cpu, rss, samples = attach_cost(
                lambda pid, rate=rate: [
                    ember,
                    "record",
                    "-r",
                    str(rate),
                    "-d",
                    "10",
                    "-p",
                    str(pid),
                    "-o",
                    os.path.join(tmp, "a.folded"),
                ],
                python,
                10,
            )
            ember_rows[rate] = (cpu, samples)
            print(f"| ember-agent | {rate} | {samples} | {cpu:.3f} | {1e6 * cpu / samples:.1f} | {rss:.1f} |")
            cpu_s, rss_s, _ = attach_cost(
                lambda pid, rate=rate: [
                    pyspy,
                    "record",
                    "-r",
                    str(rate),
                    "-d",
                    "10",
                    "-p",
                    str(pid),
                    "-f",
                    "raw",
                    "-o",
                    os.path.join(tmp, "b.txt"),
                ],
                python,
                10,
            )
            est = rate * 10
            print(f"| py-spy | {rate} | ~{est} | {cpu_s:.3f} | {1e6 * cpu_s / est:.1f} | {rss_s:.1f} |")
        (c1, s1), (c2, s2) = ember_rows[99], ember_rows[999]
        marginal = (c2 - c1) / max(s2 - s1, 1)
        print(
            f"\nember marginal CPU per sample (999 Hz run minus 99 Hz run): {1e6 * marginal:.1f} µs; "
            f"fixed cost (start-up, symbolization): {1e3 * (c1 - (c2 - c1) / max(s2 - s1, 1) * s1):.0f} ms"
        )


if __name__ == "__main__":
    main()
