#!/usr/bin/env bash
# Makes, once, a Debian sid root with Debian's stock python3.13, 3.14 and 3.15 (non-PIE,
# stripped, libpython linked in), for the tests and the real-world corpus, and the 3.14 and
# 3.15 headers the layout tests derive offsets from: debian-sid.sh DIR.
# About 40 s; concurrent callers wait for the first.
set -euo pipefail
root=$1
pythons=(3.13 3.14 3.15)
headers=(3.14 3.15)
complete() {
    local v
    for v in "${pythons[@]}"; do [[ -x "$root/usr/bin/python$v" ]] || return 1; done
    for v in "${headers[@]}"; do [[ -f "$root/usr/include/python$v/internal/pycore_debug_offsets.h" ]] || return 1; done
}
mkdir -p "$(dirname "$root")"
exec 9>"$root.lock"
flock 9
if ! complete; then
    rm -rf "$root"
    mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    include=$(printf 'python%s,' "${pythons[@]}")$(printf 'libpython%s-dev,' "${headers[@]}")
    debootstrap --variant=minbase --include="${include%,}" sid "$root" "${mirror:-http://deb.debian.org/debian}" >&2
fi
