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
    subprocesses: bool = False
    cwd: str = ROOT
    # A root directory the target runs in (a Debian chroot): its files are copied there.
    root: str = ""
    # py-spy samples wall-clock time: for a server that waits, `--gil` keeps the samples of
    # threads running Python, as ember's on-CPU samples do.
    pyspy_args: list = dataclasses.field(default_factory=list)

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

    def __post_init__(self):
        # Everything starts behind the gate, which then runs the real script.
        self.args = [self.path(self.script), *self.args]
        self.script = "gate.py"
        if self.client:
            self.client = self.path(self.client)


# Loops per benchmark: about 2-3 s of CPU each on this machine (fixed work, not time).
PYPERFORMANCE = {"raytrace": (1, 4), "richards": (8, 5), "deltablue": (100, 5), "nbody": (5, 5), "go": (3, 5)}


def pyperformance(name, python=None, suffix=""):
    loops, values = PYPERFORMANCE[name]
    args = ["--worker", "-l", str(loops), "-n", str(values), "-w", "0", "-q"]
    extra = {"python": python} if python else {}
    return Workload(f"pyperformance {name}{suffix}", benchmark_script(name), args, **extra)


def all_workloads():
    ensure_venv()
    out = [pyperformance(name) for name in PYPERFORMANCE]
    out.append(Workload("numpy + OpenBLAS", "numpy_work.py"))
    server = {"client": "load_client.py", "pyspy_args": ["--gil"]}
    out.append(Workload("aiohttp (asyncio)", "aiohttp_server.py", **server))
    out.append(Workload("aiohttp (uvloop)", "aiohttp_server.py", ["--uvloop"], **server))
    out.append(
        Workload(
            "pyperformance raytrace, pyenv 3.13",
            benchmark_script("raytrace"),
            ["--worker", "-l", "1", "-n", "4", "-w", "0", "-q"],
            python=[pyenv_python("3.13")],
            env={"PYTHONPATH": site_packages()},
        )
    )
    return out


DEBIAN_ROOT = os.path.join(ROOT, "target/debian-sid")
DEBIAN_PYTHONS = ("3.13", "3.14", "3.15")
CHROOT_DIR = "/opt/ember-realworld"


def ensure_debian_root():
    """Debian sid's stock interpreters (non-PIE, stripped), in a chroot made once (~40 s)."""
    if not all(os.path.exists(f"{DEBIAN_ROOT}/usr/bin/python{v}") for v in DEBIAN_PYTHONS):
        shutil.rmtree(DEBIAN_ROOT, ignore_errors=True)
        packages = ",".join(f"python{v}" for v in DEBIAN_PYTHONS)
        mirror = "http://deb.debian.org/debian"
        command = ["debootstrap", "--variant=minbase", f"--include={packages}", "sid", DEBIAN_ROOT, mirror]
        subprocess.run(command, check=True)
    # pyperf is pure Python: the benchmarks import it from here.
    inside = DEBIAN_ROOT + CHROOT_DIR
    os.makedirs(inside, exist_ok=True)
    shutil.copytree(os.path.join(site_packages(), "pyperf"), os.path.join(inside, "pyperf"), dirs_exist_ok=True)


def debian_pyperformance(name, version):
    loops, values = PYPERFORMANCE[name]
    args = ["--worker", "-l", str(loops), "-n", str(values), "-w", "0", "-q"]
    return Workload(
        f"pyperformance {name}, Debian python{version}",
        benchmark_script(name),
        args,
        python=["chroot", DEBIAN_ROOT, f"python{version}"],
        env={"PYTHONPATH": CHROOT_DIR},
        root=DEBIAN_ROOT,
    )


def site_packages():
    return glob.glob(f"{VENV}/lib/python3*/site-packages")[0]
