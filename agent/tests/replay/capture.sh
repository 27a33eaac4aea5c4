#!/bin/sh
# Re-creates the seed cases of the unwinder's replay corpus (docs/REPLAY.md). Run as root
# from anywhere after `cargo build -p ember-agent`; each case directory is replaced.
#   agent/tests/replay/capture.sh             all seed cases
#   agent/tests/replay/capture.sh py312-deep  one of them
# A new case from a real-world failure is one more line like the ones below.
set -eu
cd "$(dirname "$0")/../../.."
ember=${EMBER:-target/debug/ember-agent}
corpus=agent/tests/replay
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
pyenv_root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
# The newest pyenv CPython of a minor version.
py() { ls -d "$pyenv_root"/versions/"$1".*/bin/python"$1" | sort -V | tail -1; }
wanted() { [ $# -eq 0 ] || printf '%s\n' "$@" | grep -qx "$case"; }

# capture NAME [record options] -- COMMAND...
capture() {
    case=$1
    shift
    wanted $selected || return 0
    rm -rf "${corpus:?}/$case"
    "$ember" record --rate 499 --capture-samples "$samples" --capture-replay "$corpus/$case" \
        -o "$scratch/$case.folded" "$@"
}

selected=$*
samples=16
# Fixture paths stay relative, so the perf-map names in the cases do not depend on the checkout.
export EMBER_FIXTURE_SECONDS=1
capture py312-nested -- "$(py 3.12)" -X perf agent/tests/fixtures/nested.py
capture py313-nested -- "$(py 3.13)" -X perf agent/tests/fixtures/nested.py
# 150 Python frames take ~80 KB of C stack: a 16 KiB copy cuts every deep sample short, and
# the outer frames come from the thread's earlier, shallower stacks.
capture py312-deep --stack-bytes 16384 -- "$(py 3.12)" -X perf agent/tests/fixtures/deep.py
# Assembly without CFI that keeps a double in rbp and realigns rsp (see no_cfi.c): callers
# from the prologue.
cc -O2 -shared -fPIC -o "$scratch/libnocfi.so" agent/tests/fixtures/no_cfi.c
samples=8
capture no-cfi-kernels -- "$(py 3.12)" -X perf agent/tests/fixtures/no_cfi.py "$scratch/libnocfi.so"
# OpenBLAS's Haswell DGEMM kernel (no CFI, a 28-32 KiB aligned buffer), from numpy's wheel in
# the real-world corpus's venv (bench/realworld).
venv=target/venv-realworld-3.12
if [ -x "$venv/bin/python" ]; then
    samples=6
    OPENBLAS_CORETYPE=Haswell OPENBLAS_NUM_THREADS=1 EMBER_ROUNDS=30 capture numpy-openblas-haswell \
        -- "$venv/bin/python" -X perf bench/realworld/numpy_work.py
else
    echo "no $venv (bench/realworld/run.py makes it): skipping numpy-openblas-haswell" >&2
fi
# Debian's python3.13 and 3.14: non-PIE, stripped, libpython linked in. Needs a sid chroot:
#   debootstrap --variant=minbase --include=python3.13,python3.14 sid target/debian-sid http://deb.debian.org/debian
sid=${EMBER_SID:-target/debian-sid}
samples=16
if [ -x "$sid/usr/bin/python3.14" ]; then
    cp agent/tests/fixtures/nested.py "$sid/tmp/ember_nested.py"
    capture debian-py314-nested -- chroot "$sid" python3.14 -X perf /tmp/ember_nested.py
else
    echo "no $sid/usr/bin/python3.14: skipping debian-py314-nested" >&2
fi
# 3.13 calls unspecialised binary operators through `call *table(,%rax,8)`: a SIB call form
# without a base register, whose return addresses were once refused.
if [ -x "$sid/usr/bin/python3.13" ]; then
    cp agent/tests/fixtures/float_ops.py "$sid/tmp/ember_float_ops.py"
    capture debian-py313-float-ops -- chroot "$sid" python3.13 -X perf /tmp/ember_float_ops.py
else
    echo "no $sid/usr/bin/python3.13: skipping debian-py313-float-ops" >&2
fi
