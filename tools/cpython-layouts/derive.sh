#!/usr/bin/env bash
# Prints what derive.c finds in one CPython install's headers: derive.sh INCLUDE_DIR
# (e.g. ~/.pyenv/versions/3.12.1/include/python3.12). The Rust tables in
# agent/src/interp/layout.rs were written from its output; agent's tests run it again.
set -euo pipefail
include=$1
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cc -I "$include" -I "$include/internal" -o "$out/derive" "$(dirname "$0")/derive.c"
"$out/derive"
