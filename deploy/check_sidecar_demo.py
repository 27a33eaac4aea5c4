"""Polls the sidecar demo's collector (HTTP address argv[1]) until it holds whole stacks of the
demo app labelled with the pod's name and namespace: the app's series carries pod
`ember-sidecar-demo` and namespace `demo`, and at least 300 samples in the app's own functions
have come, 95% of them from `<module>` down with nothing marked unknown or truncated. Fails after
180 s with what it saw."""

import json
import sys
import time
import urllib.parse
import urllib.request

POD, NAMESPACE = "ember-sidecar-demo", "demo"
APP_FUNCTIONS = ("parse_request", "price_item", "price_order", "render_receipt", "handle_order")
DEADLINE = 180.0


def get(address, path, **params):
    url = f"http://{address}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def app_series(address):
    targets = json.loads(get(address, "/api/v1/targets"))["targets"]
    return [t["labels"] for t in targets if t["labels"].get("comm", "").startswith("python3")]


def stacks(address):
    query = f'{{pod="{POD}",namespace="{NAMESPACE}"}}'
    folded = get(address, "/api/v1/profile", query=query, format="collapsed", **{"from": "now-15m"})
    for line in folded.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            yield stack.split(";"), int(count)


def whole(frames):
    names = [f.split(" (")[0] for f in frames]
    bad = any(n in ("[unknown]", "[truncated]") for n in names)
    return "<module>" in names and not bad


def main(address):
    start, seen = time.monotonic(), "nothing yet"
    while time.monotonic() - start < DEADLINE:
        try:
            series = app_series(address)
            labelled = [s for s in series if s.get("pod") == POD and s.get("namespace") == NAMESPACE]
            in_app = [(f, n) for f, n in stacks(address) if any(a in " ".join(f) for a in APP_FUNCTIONS)]
            total = sum(n for _, n in in_app)
            good = sum(n for f, n in in_app if whole(f))
            seen = f"python series {series}; {good} of {total} samples in the app whole"
            if labelled and total >= 300 and good >= 0.95 * total:
                print(f"sidecar demo: {seen}")
                return 0
        except OSError as e:
            seen = f"collector not answering: {e}"
        time.sleep(2)
    print(f"sidecar demo: no whole, labelled stacks of the app within {DEADLINE:.0f} s: {seen}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
