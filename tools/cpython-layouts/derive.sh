#!/usr/bin/env bash
# Prints what derive.c finds in one CPython install's headers: derive.sh INCLUDE_DIR
# (e.g. ~/.pyenv/versions/3.12.1/include/python3.12). The Rust tables in
# agent/src/interp/layout.rs were written from its output; agent's tests run it again.
set -euo pipefail
include=$1
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# -idirafter: Debian's python3.x/pyconfig.h includes <x86_64-linux-gnu/python3.x/pyconfig.h>,
# found next to the include directory, after the host's own headers.
cc -I "$include" -I "$include/internal" -idirafter "$(dirname "$include")" -o "$out/derive" "$(dirname "$0")/derive.c"
"$out/derive"
