#!/usr/bin/env bash
# `make rolling-restart RUNS=3`: restarts every node of a live cluster, one
# after the other, as an upgrade does, while a writer runs. Each run starts a
# fresh server and three nodes with data directories, runs `dkv-client
# probe` (a tight write loop) throughout, and for each node in turn sends
# SIGTERM (a coordinator hands its role over first), checks it exits 0,
# starts it again on its data directory and waits until it is in sync again.
# Prints, per run, the probe's longest gap between two acknowledged writes,
# the writes failed and of unknown outcome, whether the last acknowledged
# write reads back, and the epochs the restarts took; then medians.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
RUNS=${RUNS:-3}
QUIET=1
. scripts/lib.sh

# Waits (up to 10 s) until node $1 (a label) has exited; prints "clean"
# when its log ends with its orderly stop, else what happened.
wait_stopped() {
  local pid=${NODE_PID[$1]}
  for _ in $(seq 1 1000); do
    if [ ! -e "/proc/$pid" ] || grep -q '^State:[[:space:]]*[ZX]' "/proc/$pid/status" 2>/dev/null; then
      if tail -n 3 "$WORK/node$1.log" | grep -q ': stopped$'; then echo clean; else echo "no orderly stop"; fi
      return 0
    fi
    sleep 0.01
  done
  echo "still running after 10 s"
}

gaps=()
bad=0
for r in $(seq 1 "$RUNS"); do
  WORK=$(mktemp -d -t dkv-rolling.XXXXXX)
  PIDS=(); NODE_PID=(); NODE_ID=()
  start_server
  for n in 1 2 3; do start_node "$n" --data-dir "$WORK/data$n"; done
  wait_in_sync 3
  e0=$(cluster_epoch)
  "$BIN/dkv-client" probe "$SERVER" --duration "${DURATION:-6}" --json >"$WORK/probe.json" &
  probe=$!
  sleep 0.5
  codes=()
  for n in 1 2 3; do
    kill -TERM "${NODE_PID[$n]}"
    how=$(wait_stopped "$n")
    codes+=("node ${NODE_ID[$n]} $how")
    [ "$how" = clean ] || bad=1
    start_node "$n" --data-dir "$WORK/data$n"
    wait_in_sync 3
    sleep 0.3
  done
  wait "$probe" || true
  e1=$(cluster_epoch)
  json=$(cat "$WORK/probe.json")
  get() { sed -n "s/.*\"$1\":\([0-9.a-z]*\).*/\1/p" <<<"$json"; }
  printf 'run %d: %s writes acknowledged, %s failed, %s of unknown outcome; longest write gap %.1f ms; last ack reads back: %s; epochs %s -> %s; %s\n' \
    "$r" "$(get writes_ok)" "$(get writes_failed)" "$(get writes_unknown)" "$(get max_gap_ms)" \
    "$(get last_ack_reads_back)" "$e0" "$e1" "$(IFS=,; echo "${codes[*]}")"
  [ "$(get writes_unknown)" = 0 ] && [ "$(get last_ack_reads_back)" = true ] || bad=1
  gaps+=("$(get max_gap_ms)")
  # Every process gone before its directory goes.
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    while [ -e "/proc/$p" ] && ! grep -q '^State:[[:space:]]*[ZX]' "/proc/$p/status" 2>/dev/null; do sleep 0.01; done
  done
  cleanup
done
trap - EXIT
printf '%s\n' "${gaps[@]}" | sort -n | awk '
  { v[NR] = $1 }
  END {
    med = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "rolling restart of 3 nodes over %d runs: longest write gap median %.1f ms, max %.1f ms\n", NR, med, v[NR]
  }'
exit "$bad"
