#!/usr/bin/env bash
# `make test`'s last line: which tests were skipped and why, from the records
# tests/common/skip.rs writes (one file per skip: the test's name on the
# first line, why on the second). Usage: scripts/test-skips.sh DIR.
# Prints "no test was skipped" when DIR holds no record (or does not exist).
set -euo pipefail
dir=${1:?usage: scripts/test-skips.sh DIR}
shopt -s nullglob
records=("$dir"/*.skip)
for f in "${records[@]}"; do
  { IFS= read -r name || true; IFS= read -r why || true; } <"$f"
  printf '%s\t%s\n' "$name" "$why"
done | sort -u | awk -F'\t' '
  # Input sorted by test name: one entry per test, its reasons joined by "; ".
  $1 != last { n++; names[n] = $1; whys[n] = $2; last = $1; next }
  { whys[n] = whys[n] "; " $2 }
  END {
    if (n == 0) { print "no test was skipped"; exit }
    line = n (n == 1 ? " test" : " tests") " skipped:"
    for (i = 1; i <= n; i++) line = line (i > 1 ? "," : "") " " names[i] " (" whys[i] ")"
    print line
  }'
