#!/usr/bin/env bash
# `make durability-bench KEYS=1000000`: restart and catch-up times for a node
# holding KEYS keys of 100 bytes, and write throughput with 32 clients under
# each fsync policy, on a local 3-node cluster with data directories.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
KEYS=${KEYS:-1000000}
CLIENTS=${CLIENTS:-32}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
QUIET=1
WORK=$(mktemp -d -t dkv-dbench.XXXXXX)
. scripts/lib.sh

config() { # retention fsync
  sed -e "s/\"log-retention-entries\": [0-9]*/\"log-retention-entries\": $1/" \
      -e "s/\"write-timeout\": [0-9]*/\"write-timeout\": 30000/" config.json >"$WORK/config-$1.json"
  CONFIG="$WORK/config-$1.json"
}

# Waits until node N is in the in-sync set; prints the ms it took.
wait_node_in_sync() {
  local id=${NODE_ID[$1]} t0
  t0=$(now_ms)
  until status_json | tr -d ' \n' | grep -q "\"id\":$id,[^}]*\"in_sync\":true"; do
    sleep 0.02
  done
  echo $(( $(now_ms) - t0 ))
}

cluster() { # retention
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  PIDS=(); NODE_PID=(); NODE_ID=()
  rm -rf "$WORK"/d* "$WORK"/server-state.json
  config "$1"
  start_server
  for n in 1 2 3; do start_node "$n" --data-dir "$WORK/d$n" --fsync "${2:-never}"; done
  wait_in_sync 3
}

fill() {
  "$BIN/dkv-client" bench "$SERVER" --fill --keys "$KEYS" --value-size 100 --clients "$CLIENTS" --json
}

declare -A R

# 1. Catch-up by log suffix: node 3 is down while the dataset is written.
cluster $((KEYS * 2)) never
kill_node 3
echo "loading $KEYS keys of 100 bytes with node 3 down..." >&2
fill >/dev/null
start_node 3 --data-dir "$WORK/d3" --fsync never
R[suffix]=$(wait_node_in_sync 3)
grep -h "follows from" "$WORK/node1.log" | tail -n1 >&2

echo "$(date +%T) catch-up by suffix: ${R[suffix]} ms" >&2

# 2. Restart of a node holding the dataset (recovery from its own disk).
kill_node 2
t0=$(now_ms)
start_node 2 --data-dir "$WORK/d2" --fsync never
R[restart_serving]=$(( $(now_ms) - t0 ))
R[recovery]=$(grep -h "recovered" "$WORK/node2.log" | tail -n1 | sed -n 's/.*(\([0-9]*\) ms).*/\1/p')
R[restart_in_sync]=$(( $(wait_node_in_sync 2) + R[restart_serving] ))

echo "$(date +%T) restart: recovery ${R[recovery]} ms" >&2

# 3. Catch-up by snapshot: the log kept in memory is far shorter than the gap.
cluster 10000 never
kill_node 3
echo "loading $KEYS keys again with node 3 down (short log retention)..." >&2
fill >/dev/null
rm -rf "$WORK/d3"
start_node 3 --data-dir "$WORK/d3" --fsync never
R[snapshot]=$(wait_node_in_sync 3)
grep -h "follows from" "$WORK/node1.log" | tail -n1 >&2

echo "$(date +%T) catch-up by snapshot: ${R[snapshot]} ms" >&2

# 4. Write throughput per fsync policy, 3 nodes, CLIENTS clients, 16-byte values.
for policy in never interval always; do
  cluster 100000 "$policy"
  out=$("$BIN/dkv-client" bench "$SERVER" --clients "$CLIENTS" --duration "$SECONDS_PER_RUN" --warmup 1 \
          --keys 100000 --value-size 16 --json)
  R[tput_$policy]=$(sed -n 's/.*"ops_per_sec":\([0-9.]*\).*/\1/p' <<<"$out" | cut -d. -f1)
  R[p50_$policy]=$(sed -n 's/.*"p50":\([0-9]*\).*/\1/p' <<<"$out")
  R[p99_$policy]=$(sed -n 's/.*"p99":\([0-9]*\).*/\1/p' <<<"$out")
  echo "$(date +%T) fsync $policy: ${R[tput_$policy]} ops/s" >&2
done

echo
echo "dataset: $KEYS keys x 100 bytes; $(nproc) cores; loopback; release build"
printf '%-58s %10s\n' "measure" "result"
printf '%-58s %8s ms\n' "node restart: recovery from its data dir (snapshot + log)" "${R[recovery]}"
printf '%-58s %8s ms\n' "node restart: process start to serving (registered)" "${R[restart_serving]}"
printf '%-58s %8s ms\n' "node restart: process start to back in the in-sync set" "${R[restart_in_sync]}"
printf '%-58s %8s ms\n' "catch-up by log suffix ($KEYS entries behind)" "${R[suffix]}"
printf '%-58s %8s ms\n' "catch-up by snapshot (empty node, $KEYS keys)" "${R[snapshot]}"
for policy in never interval always; do
  printf '%-58s %8s ops/s (p50 %s us, p99 %s us)\n' "writes, $CLIENTS clients, fsync $policy" \
    "${R[tput_$policy]}" "${R[p50_$policy]}" "${R[p99_$policy]}"
done
