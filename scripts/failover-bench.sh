#!/usr/bin/env bash
# `make failover-bench RUNS=10`: measures failover time with default settings.
# Each run starts a fresh server and three nodes, runs `dkv-client probe`
# (a tight write loop), kills the coordinator with kill -9, and takes the
# probe's longest gap between two acknowledged writes: an upper bound of the
# time from the kill to the first successful write.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
RUNS=${RUNS:-10}
QUIET=1
. scripts/lib.sh
gaps=()
for r in $(seq 1 "$RUNS"); do
  WORK=$(mktemp -d -t dkv-failover.XXXXXX)
  PIDS=(); NODE_PID=(); NODE_ID=()
  start_server
  for n in 1 2 3; do start_node "$n"; done
  wait_in_sync 3
  "$BIN/dkv-client" probe "$SERVER" --duration 2.5 --json >"$WORK/probe.json" &
  probe=$!
  sleep 1
  c=$(coordinator_label)
  kill -9 "${NODE_PID[$c]}"
  wait "$probe"
  gap=$(sed -n 's/.*"max_gap_ms":\([0-9.]*\).*/\1/p' "$WORK/probe.json")
  ok=$(sed -n 's/.*"last_ack_reads_back":\([a-z]*\).*/\1/p' "$WORK/probe.json")
  printf 'run %2d: killed coordinator (node %s); longest write gap %7.1f ms; last ack reads back: %s\n' \
    "$r" "${NODE_ID[$c]}" "$gap" "$ok"
  gaps+=("$gap")
  cleanup
done
trap - EXIT
echo "failover over ${#gaps[@]} runs (kill -9 to first acknowledged write): $(printf '%s\n' "${gaps[@]}" | median_max_min)"
