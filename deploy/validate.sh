#!/usr/bin/env bash
# Checks every Kubernetes manifest in deploy/kubernetes against the Kubernetes schemas
# (kubernetes-validate from PyPI, strict: unknown fields fail), and that every Kustomization
# lists files that exist. Used by .ci/run; needs a Python 3 with venv.
set -euo pipefail
cd "$(dirname "$0")/.."
version=1.37.0
venv=target/ci-kubernetes-validate
if [[ "$("$venv/bin/kubernetes-validate" --version 2>/dev/null)" != "$version" ]]; then
    rm -rf "$venv"
    "${EMBER_PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/pip" install -q "kubernetes-validate==$version"
fi
mapfile -d '' manifests < <(find deploy/kubernetes -name '*.yaml' ! -name kustomization.yaml -print0 | sort -z)
"$venv/bin/kubernetes-validate" --strict --quiet "${manifests[@]}"
# Kustomize has no schema there: its resources must at least exist.
while IFS= read -r -d '' kustomization; do
    dir=$(dirname "$kustomization")
    for resource in $(awk '/^resources:/ { on = 1; next } /^[a-z]/ { on = 0 } on && /^  - / { print $2 }' "$kustomization"); do
        [[ -e "$dir/$resource" ]] || { echo "$kustomization lists $resource, which does not exist" >&2; exit 1; }
    done
done < <(find deploy/kubernetes -name kustomization.yaml -print0)
echo "deploy: ${#manifests[@]} manifests valid against Kubernetes $version's schemas"
