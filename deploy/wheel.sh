#!/usr/bin/env bash
# Builds the `ember-profiler` wheel (pyproject.toml, maturin) into target/wheels, installs it
# into a fresh virtualenv, and checks that `ember-agent` is on that environment's PATH and
# records a Python program. Needs a Python 3 with venv; maturin comes from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${EMBER_PYTHON:-python3}
maturin_version=1.16.0
tools=target/ci-maturin
if [[ "$("$tools/bin/maturin" --version 2>/dev/null)" != "maturin $maturin_version" ]]; then
    rm -rf "$tools"
    "$python" -m venv "$tools"
    "$tools/bin/pip" install -q "maturin==$maturin_version"
fi
rm -rf target/wheels
"$tools/bin/maturin" build --release --locked --out target/wheels >&2
wheel=$(ls target/wheels/ember_profiler-*.whl)
venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
"$python" -m venv "$venv"
"$venv/bin/pip" install -q "$wheel"
# On the venv's PATH, as a console command is:
PATH="$venv/bin:$PATH" command -v ember-agent | grep -q "^$venv/bin/ember-agent$"
PATH="$venv/bin:$PATH" ember-agent record --duration 1 -o "$venv/out.folded" -- "$python" -c "sum(range(10**7))" 2>/dev/null
[[ -s "$venv/out.folded" ]]
echo "wheel: $(basename "$wheel") installs ember-agent into a virtualenv's bin, and it records" >&2
