#!/usr/bin/env bash
# `make soak DURATION=60 CLIENTS=32`: a saturating write load against a
# 3-node cluster with default settings. Checks that no failover happened
# (a busy node must not be mistaken for a dead one) and that every client's
# last acknowledged write reads back.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
DURATION=${DURATION:-60}
CLIENTS=${CLIENTS:-32}
WORK=$(mktemp -d -t dkv-soak.XXXXXX)
QUIET=1
. scripts/lib.sh

start_server
for n in 1 2 3; do start_node "$n"; done
wait_in_sync 3
epoch0=$(status_json | sed -n 's/^  "epoch": \([0-9]*\),*$/\1/p')
echo "3 nodes in sync at epoch $epoch0; $CLIENTS writers for $DURATION s"
probes=()
for i in $(seq 1 "$CLIENTS"); do
  "$BIN/dkv-client" probe "$SERVER" --duration "$DURATION" --key "soak-$i" --json >"$WORK/probe-$i.json" &
  probes+=($!)
done
fail=0
for p in "${probes[@]}"; do wait "$p" || fail=1; done
epoch1=$(status_json | sed -n 's/^  "epoch": \([0-9]*\),*$/\1/p')
total=$(cat "$WORK"/probe-*.json | sed -n 's/.*"writes_ok":\([0-9]*\).*/\1/p' | awk '{s+=$1} END {print s}')
worst=$(cat "$WORK"/probe-*.json | sed -n 's/.*"max_gap_ms":\([0-9.]*\).*/\1/p' | sort -n | tail -n1)
echo "acknowledged writes: $total ($(( total / DURATION )) per second); longest gap seen by any client: $worst ms"
show_status
if [ "$epoch1" != "$epoch0" ]; then
  echo "FALSE FAILOVER: epoch went from $epoch0 to $epoch1 under load" >&2
  grep -h "suspected\|stepping down\|granted" "$WORK"/*.log >&2 || true
  exit 1
fi
[ "$fail" -eq 0 ] || { echo "a client's last acknowledged write did not read back" >&2; exit 1; }
echo "no failover under load; every client's last acknowledged write reads back"
