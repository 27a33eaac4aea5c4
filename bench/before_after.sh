#!/usr/bin/env bash
# Runs one cargo bench as built at an earlier commit and as built now, interleaved round by
# round, so "before" and "after" come from the same run on the same machine state.
#
#   bench/before_after.sh REV PACKAGE BENCH [ROUNDS] [-- BENCH ARGS]
#   bench/before_after.sh 94590c8 ember-collector store 3
#
# The earlier commit is built in a temporary worktree that shares this checkout's target dir.
set -euo pipefail
cd "$(dirname "$0")/.."
rev=$1 package=$2 bench=$3 rounds=${4:-3}
shift $(($# < 4 ? $# : 4))
[[ "${1:-}" == "--" ]] && shift
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

# The bench executable cargo builds in the current directory.
build() {
    CARGO_TARGET_DIR="$target" cargo bench -p "$package" --bench "$bench" --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$bench" | tail -1
}

worktree=$(mktemp -d)
trap 'git worktree remove --force "$worktree" >/dev/null 2>&1 || rm -rf "$worktree"' EXIT
git worktree add --detach "$worktree" "$rev" >/dev/null
before=$(cd "$worktree" && build)
after=$(build)
[[ -x "$before" && -x "$after" ]] || { echo "could not build the $bench bench at $rev and now" >&2; exit 1; }
# Copies, so the next build of either tree cannot replace a binary between rounds.
bin=$(mktemp -d)
cp "$before" "$bin/before" && cp "$after" "$bin/after"
for round in $(seq 1 "$rounds"); do
    for which in before after; do
        echo "== round $round: $which ($([[ $which == before ]] && echo "$rev" || git rev-parse --short HEAD)$([[ $which == after && -n "$(git status --porcelain)" ]] && echo ", uncommitted changes"))"
        "$bin/$which" "$@"
    done
done
rm -rf "$bin"
