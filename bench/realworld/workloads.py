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
    # perf, the referee for shares, runs too: on the pure-Python benchmarks, where it unwinds
    # every sample. Through the servers' C extensions and ember's memfd'd monitor it loses a
    # few percent of samples, all from the same functions, which skews its shares.
    perf: bool = False

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


# Loops per benchmark: about 2-3 s of CPU each on this machine (fixed work, not time): ~2,500
# ember and ~1,200 py-spy samples, whose noise in a 30% share is under 2 points.
PYPERFORMANCE = {"raytrace": (1, 4), "richards": (8, 5), "deltablue": (100, 5), "nbody": (5, 5), "go": (3, 5)}
# CPython 3.13 enters `__init__` through CALL_ALLOC_AND_ENTER_INIT, which skips the perf
# trampoline (3.12 does not specialise it; 3.14 checks for the trampoline): such frames are
# on no native stack, so their time goes to the caller. Reading the frame chain from memory
# (issue 13) is what shows them.
INIT_WITHOUT_TRAMPOLINE = "3.13 runs `__init__` without a trampoline (issue 13)"
# Measured, not yet explained: py-spy's `--gil` samples give aiohttp's `_writelines`, which
# writes through uvloop's C transport, 4-11% where ember's give 5% (perf, which loses samples
# in uvloop, 2%). The server spends 3% of its CPU in the kernel and waits 2% runnable.
UVLOOP_WRITELINES = "py-spy gives `_writelines` up to twice ember's share (unexplained)"
# Measured 2026-12-06 on a fresh 2-core machine: py-spy's `--gil` samples give `iterencode`
# (the C JSON encoder, run under the GIL) 4-10 points more than ember's, run to run, with the
# agent of the last landing (420298a) too (4.8, 5.2), where an earlier machine measured 2.8.
# ember's samples are CPU time, in the kernel too (socket writes and closes: 13% of ember's, 1%
# of py-spy's, which sees no GIL holder there); py-spy counts a thread that holds the GIL while it
# waits for a CPU, and two workers, the load client and two profilers share two cores. Not yet
# settled which side is off by how much: no referee here samples servers without losing samples.
GIL_UNDER_CONTENTION = "py-spy --gil gives `iterencode` 4-10 points more, run to run (see workloads.py)"


def pyperformance(name, suffix="", **kwargs):
    loops, values = PYPERFORMANCE[name]
    args = ["--worker", "-l", str(loops), "-n", str(values), "-w", "0", "-q"]
    return Workload(f"pyperformance {name}{suffix}", benchmark_script(name), args, perf=True, **kwargs)


SERVER = {"client": "load_client.py", "pyspy_args": ["--gil"], "env": {"EMBER_REQUESTS": "10000"}}
# Sync workers: one connection per request; /quit stops the master from a worker.
GUNICORN = dict(
    script="gunicorn",
    args=["-w", "2", "-b", "127.0.0.1:8088", "--chdir", HERE, "gunicorn_app:app"],
    gate=False,
    client="load_client.py",
    client_args=["/items/200"],
    env={"EMBER_REQUESTS": "8000"},
    pyspy_args=["--gil"],
)


def all_workloads():
    """(name, factory) of every workload: factories install what a workload needs (the venv,
    the chroot) only when it is chosen."""
    out = [(f"pyperformance {n}", lambda n=n: pyperformance(n)) for n in PYPERFORMANCE]
    out.append(("numpy + OpenBLAS", lambda: Workload("numpy + OpenBLAS", "numpy_work.py", env={"EMBER_ROUNDS": "500"})))
    for loop, args in (("asyncio", []), ("uvloop", ["--uvloop"])):
        name = f"aiohttp ({loop})"
        server = dict(SERVER, launch=True, tasks=True, known_gap=UVLOOP_WRITELINES if loop == "uvloop" else "")
        out.append((name, lambda n=name, a=args, k=server: Workload(n, "aiohttp_server.py", a, **k)))
    gunicorn = {
        "gunicorn (launched)": dict(launch=True, subprocesses=True),
        "gunicorn (--pid worker)": dict(attach="worker"),
        "gunicorn (--pid master --subprocesses)": dict(subprocesses=True),
    }
    for name, how in gunicorn.items():
        how = dict(how, known_gap=GIL_UNDER_CONTENTION)
        out.append((name, lambda n=name, h=how: Workload(n, **GUNICORN, **h)))
    for start in ("fork", "spawn"):
        name = f"multiprocessing ({start})"
        pool = {"subprocesses": True, "pyspy_args": ["--gil"]}
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
