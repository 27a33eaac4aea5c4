#!/usr/bin/env bash
# The sidecar example end to end (issue 15): runs deploy/kubernetes/examples/sidecar-demo.yaml
# with `podman kube play` (images from deploy/images.sh), waits until the collector, on host port
# 7080, holds whole stacks of the app labelled with the pod's name and namespace, and tears the
# pod down on every path. Needs root and podman.
set -euo pipefail
cd "$(dirname "$0")/.."
yaml=deploy/kubernetes/examples/sidecar-demo.yaml
down() { podman kube down "$yaml" >/dev/null 2>&1 || true; }
down
trap down EXIT
# The agent's Localhost seccomp profile: this podman's default, with perf_event_open allowed to
# CAP_PERFMON.
profiles=target/seccomp
mkdir -p "$profiles"
"${EMBER_PYTHON:-python3}" deploy/seccomp/allow_perfmon.py /usr/share/containers/seccomp.json "$profiles/ember-agent.json"
podman kube play --seccomp-profile-root "$profiles" "$yaml" >/dev/null
"${EMBER_PYTHON:-python3}" deploy/check_sidecar_demo.py 127.0.0.1:7080 || {
    for container in ember collector app; do
        echo "--- ember-sidecar-demo-$container" >&2
        podman logs --tail 30 "ember-sidecar-demo-$container" >&2 || true
    done
    exit 1
}
