"""The corpus's workloads, and the venv of pinned third-party packages they run in."""

import dataclasses
import glob
import os
import shutil
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
VENV = os.path.join(ROOT, "target/venv-realworld-3.12")
REQUIREMENTS = os.path.join(HERE, "requirements.txt")


def pyenv_python(version):
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = sorted(glob.glob(f"{root}/versions/{version}*/bin/python{version}"), reverse=True)
    if not found:
        raise RuntimeError(f"pyenv's python{version} not found under {root}/versions")
    return found[0]


def ensure_venv():
    """Creates the venv from requirements.txt once; a changed lock file re-creates it."""
    stamp = os.path.join(VENV, "requirements.txt")
    with open(REQUIREMENTS, encoding="utf-8") as f:
        wanted = f.read()
    if os.path.exists(stamp) and open(stamp, encoding="utf-8").read() == wanted:
        return
    shutil.rmtree(VENV, ignore_errors=True)
    python = os.environ.get("EMBER_PYTHON") or pyenv_python("3.12")
    subprocess.run([python, "-m", "venv", VENV], check=True)
    subprocess.run([venv_tool("pip"), "install", "-q", "-r", REQUIREMENTS], check=True)
    shutil.copy(REQUIREMENTS, stamp)


def venv_python():
    return [os.path.join(VENV, "bin/python")]


def venv_tool(name):
    return os.path.join(VENV, "bin", name)


def pyspy_version():
    out = subprocess.run([venv_tool("py-spy"), "--version"], capture_output=True, text=True)
    return out.stdout.strip().replace("py-spy ", "")


def benchmark_script(name):
    found = glob.glob(
        f"{VENV}/lib/python3*/site-packages/pyperformance/data-files/benchmarks/bm_{name}/run_benchmark.py"
    )
    if not found:
        raise RuntimeError(f"pyperformance's {name} benchmark is not in {VENV}")
    return found[0]


@dataclasses.dataclass
class Workload:
    name: str
    script: str
    args: list = dataclasses.field(default_factory=list)
    python: list = dataclasses.field(default_factory=venv_python)
    env: dict = dataclasses.field(default_factory=dict)
    # Run once the target is ready, e.g. a load generator; the target exits when it is served.
    client: str = ""
    client_args: list = dataclasses.field(default_factory=list)
    subprocesses: bool = False
    cwd: str = ROOT
    # A root directory the target runs in (a Debian chroot): its files are copied there.
    root: str = ""
    # py-spy samples wall-clock time: for a server that waits, `--gil` keeps the samples of
    # threads running Python, as ember's on-CPU samples do.
    pyspy_args: list = dataclasses.field(default_factory=list)
    # ember starts the target (`record -- CMD`) instead of attaching to it; py-spy attaches.
    # Only a launched interpreter gets the asyncio task monitor, so task workloads launch.
    launch: bool = False
    # Behind gate.py (start-up not profiled); otherwise `script` is a module run by `-m` that
    # is ready once it serves HTTP on EMBER_PORT.
    gate: bool = True
    # Whom the profilers attach to: the target, or its first child (a pre-forked worker).
    attach: str = "target"
    # With tasks, ember writes a Chrome trace (stacks and task slices) and the row checks that
    # every request handler ran as a task.
    tasks: bool = False
    # Why this workload's innermost-function shares cannot yet match py-spy's: the row still
    # reports the gap, and every stack measure still must pass.
    known_gap: str = ""
    # perf, the referee for shares, runs too (see perf_peer.py).
    perf: bool = True
    # How many children the target spawns (fork, then exec: a spawn pool's workers and resource
    # tracker) that perf attaches to by PID. Following them from their parent, perf 6.1 often
    # unwinds their samples no further than the first frame.
    perf_spawned: int = 0

    def path(self, script):
        """The gate runs the workload's script; relative names are files of this directory.
        In a chroot, files are copied to /opt/ember-realworld there."""
        source = script if os.path.isabs(script) else os.path.join(HERE, script)
        if not self.root:
            return source
        # pyperformance names every script run_benchmark.py: keep its directory's name too.
        parent = os.path.basename(os.path.dirname(source))
        inside = os.path.join(CHROOT_DIR, f"{parent}-{os.path.basename(source)}")
        shutil.copy(source, self.root + inside)
        return inside

    def command(self):
        if self.gate:
            return [*self.python, self.path("gate.py"), self.path(self.script), *self.args]
        return [*self.python, "-m", self.script, *self.args]


# Loops per benchmark: 1.6-3.6 s of CPU each on the 2-core machines CI runs on (fixed work, not
# time): ~1,600-3,600 ember and ~800-1,800 perf samples, whose noise in a 30% share is σ ≈ 1.5-2
# points (run.py's PERF_GATE).
PYPERFORMANCE = {"raytrace": (3, 4), "richards": (16, 5), "deltablue": (200, 5), "nbody": (10, 5), "go": (6, 5)}
# CPython 3.13 enters `__init__` through CALL_ALLOC_AND_ENTER_INIT, which skips the perf
# trampoline (3.12 does not specialise it; 3.14 checks for the trampoline): such frames are
# on no native stack, so their time goes to the caller. Reading the frame chain from memory
# (issue 13) is what shows them.
INIT_WITHOUT_TRAMPOLINE = "3.13 runs `__init__` without a trampoline (issue 13)"
# py-spy's `--gil` samples give aiohttp's `_writelines` (it writes through uvloop's C transport)
# shares up to 6 points from ember's, run to run, either way; perf's, over the same seconds,
# agree with ember's within 3 points. Not explained; perf referees the row.
UVLOOP_WRITELINES = "py-spy's `_writelines` share strays from ember's and perf's (unexplained)"
# py-spy `--gil` samples a thread only while it holds the GIL, so it misses the system calls that
# run without it, where ember and perf count CPU time in the kernel. Measured 2026-12-07 (ember,
# perf, py-spy): aiohttp's `write (selector_events.py)` 12.2, 14.5, 0.6%; gunicorn's
# `write (util.py)` 10.3, 9.3, 0.2% and `close_graceful` 6.7, 6.3, 0.1%; the spawn pool's
# threads waiting in the parent 3.3, 3.6, 0%. The rest gains what these lose: `iterencode`
# 22.8, 20.9, 29.0% (aiohttp) and 26.8, 26.5, 35.2% (gunicorn). perf referees these rows.
SYSCALLS_WITHOUT_GIL = "py-spy --gil misses system calls run without the GIL (see workloads.py)"


def pyperformance(name, suffix="", **kwargs):
    loops, values = PYPERFORMANCE[name]
    args = ["--worker", "-l", str(loops), "-n", str(values), "-w", "0", "-q"]
    return Workload(f"pyperformance {name}{suffix}", benchmark_script(name), args, **kwargs)


SERVER = {"client": "load_client.py", "pyspy_args": ["--gil"], "env": {"EMBER_REQUESTS": "20000"}}
# Sync workers: one connection per request; /quit stops the master from a worker.
GUNICORN = dict(
    script="gunicorn",
    args=["-w", "2", "-b", "127.0.0.1:8088", "--chdir", HERE, "gunicorn_app:app"],
    gate=False,
    client="load_client.py",
    client_args=["/items/200"],
    env={"EMBER_REQUESTS": "16000"},
    pyspy_args=["--gil"],
)


def all_workloads():
    """(name, factory) of every workload: factories install what a workload needs (the venv,
    the chroot) only when it is chosen."""
    out = [(f"pyperformance {n}", lambda n=n: pyperformance(n)) for n in PYPERFORMANCE]
    out.append(
        ("numpy + OpenBLAS", lambda: Workload("numpy + OpenBLAS", "numpy_work.py", env={"EMBER_ROUNDS": "1000"}))
    )
    for loop, args in (("asyncio", []), ("uvloop", ["--uvloop"])):
        name = f"aiohttp ({loop})"
        server = dict(
            SERVER, launch=True, tasks=True, known_gap=UVLOOP_WRITELINES if loop == "uvloop" else SYSCALLS_WITHOUT_GIL
        )
        out.append((name, lambda n=name, a=args, k=server: Workload(n, "aiohttp_server.py", a, **k)))
    gunicorn = {
        "gunicorn (launched)": dict(launch=True, subprocesses=True),
        "gunicorn (--pid worker)": dict(attach="worker"),
        "gunicorn (--pid master --subprocesses)": dict(subprocesses=True),
    }
    for name, how in gunicorn.items():
        how = dict(how, known_gap=SYSCALLS_WITHOUT_GIL)
        out.append((name, lambda n=name, h=how: Workload(n, **GUNICORN, **h)))
    for start in ("fork", "spawn"):
        name = f"multiprocessing ({start})"
        pool = {"subprocesses": True, "pyspy_args": ["--gil"], "known_gap": SYSCALLS_WITHOUT_GIL}
        pool["perf_spawned"] = 3 if start == "spawn" else 0
        out.append((name, lambda n=name, s=start, k=pool: Workload(n, "mp_work.py", ["--start", s], **k)))
    out.append(("pytest (numpy.polynomial)", lambda: Workload("pytest (numpy.polynomial)", "pytest_run.py")))
    for n in PYPERFORMANCE:
        out.append((f"pyperformance {n} (pyenv 3.13)", lambda n=n: pyenv313_pyperformance(n)))
    for version in DEBIAN_PYTHONS:
        for n in PYPERFORMANCE:
            name = f"pyperformance {n} (Debian python{version})"
            out.append((name, lambda n=n, v=version: debian_pyperformance(n, v)))
    return out


DEBIAN_ROOT = os.path.join(ROOT, "target/debian-sid")
DEBIAN_PYTHONS = ("3.13", "3.14", "3.15")
CHROOT_DIR = "/opt/ember-realworld"


def ensure_debian_root():
    """Debian sid's stock interpreters (non-PIE, stripped), in a chroot made once (~40 s)."""
    subprocess.run([os.path.join(ROOT, "tools/debian-sid.sh"), DEBIAN_ROOT], check=True)
    # pyperf is pure Python: the benchmarks import it from here.
    inside = DEBIAN_ROOT + CHROOT_DIR
    os.makedirs(inside, exist_ok=True)
    shutil.copytree(os.path.join(site_packages(), "pyperf"), os.path.join(inside, "pyperf"), dirs_exist_ok=True)


def pyenv313_pyperformance(name):
    python, env = [pyenv_python("3.13")], {"PYTHONPATH": site_packages()}
    return pyperformance(name, " (pyenv 3.13)", python=python, env=env, known_gap=INIT_WITHOUT_TRAMPOLINE)


def debian_pyperformance(name, version):
    ensure_debian_root()
    return pyperformance(
        name,
        f" (Debian python{version})",
        python=["chroot", DEBIAN_ROOT, f"python{version}"],
        env={"PYTHONPATH": CHROOT_DIR},
        root=DEBIAN_ROOT,
        known_gap=INIT_WITHOUT_TRAMPOLINE if version == "3.13" else "",
    )


def site_packages():
    return glob.glob(f"{VENV}/lib/python3*/site-packages")[0]
