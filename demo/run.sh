#!/usr/bin/env bash
# The end-to-end demo: build ember, profile the bundled demo app, write a flame graph SVG.
set -euo pipefail
cd "$(dirname "$0")/.."
source demo/find-python.sh

cargo build --release -p ember-agent
mkdir -p demo/out
echo "ember demo: profiling demo/app.py with $PYTHON" >&2
./target/release/ember-agent record --threads -o demo/out/cpu.svg -- "$PYTHON" demo/app.py
./target/release/ember-agent record -o demo/out/cpu.folded -- "$PYTHON" demo/app.py >/dev/null
echo "ember demo: flame graph at $(pwd)/demo/out/cpu.svg (open it in a browser); folded stacks at demo/out/cpu.folded" >&2
