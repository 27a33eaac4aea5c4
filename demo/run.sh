#!/usr/bin/env bash
# The whole product in one step: build ember, start a collector on the embedded store, run
# the bundled demo app under the agent, write a flame graph SVG, and print the web view's URL.
#   ./demo/run.sh          keeps the collector serving until Ctrl-C
#   ./demo/run.sh --once   exits when the SVG is written
set -euo pipefail
cd "$(dirname "$0")/.."
source demo/find-python.sh

cargo build --release -p ember-agent -p ember-collector
mkdir -p demo/out
rm -rf demo/out/data
HTTP="${EMBER_DEMO_HTTP:-127.0.0.1:7080}"
GRPC="${EMBER_DEMO_GRPC:-127.0.0.1:7070}"
./target/release/ember-collector --data-dir demo/out/data --grpc-listen "$GRPC" --http-listen "$HTTP" 2> demo/out/collector.log &
COLLECTOR=$!
trap 'kill $COLLECTOR 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    grep -q "listening" demo/out/collector.log 2>/dev/null && break
    kill -0 $COLLECTOR 2>/dev/null || { cat demo/out/collector.log >&2; exit 1; }
    sleep 0.1
done

echo "ember demo: profiling demo/app.py with $PYTHON into the collector" >&2
./target/release/ember-agent stream --collector "http://$GRPC" --flush-interval 2s --service demo-shop \
    -- "$PYTHON" demo/app.py
# Fetched with the demo's own Python, so curl is not needed.
"$PYTHON" - "$HTTP" <<'PY'
import sys, urllib.parse, urllib.request
query = urllib.parse.urlencode({"query": '{service="demo-shop"}', "format": "svg", "from": "now-15m"})
with urllib.request.urlopen(f"http://{sys.argv[1]}/api/v1/profile?{query}") as r, open("demo/out/cpu.svg", "wb") as f:
    f.write(r.read())
PY
echo "ember demo: flame graph SVG at $(pwd)/demo/out/cpu.svg" >&2
echo "ember demo: web view at http://$HTTP/?query=%7Bservice%3D%22demo-shop%22%7D&from=now-15m" >&2
echo "ember demo: its asyncio tasks at http://$HTTP/?query=%7Bservice%3D%22demo-shop%22%7D&from=now-15m&tab=tasks" >&2
if [[ "${1:-}" != "--once" ]]; then
    echo "ember demo: the collector keeps serving; press Ctrl-C to stop" >&2
    wait $COLLECTOR
fi
