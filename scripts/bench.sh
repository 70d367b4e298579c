#!/usr/bin/env bash
# `make bench`: the standard matrix on a local 3-node cluster with data
# directories: 1 and 32 clients; write-only, read-only and 50/50; fsync never
# and always. Prints one table and writes bench/results-<date>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
DURATION=${DURATION:-5}
WORK=$(mktemp -d -t dkv-bench.XXXXXX)
QUIET=1
. scripts/lib.sh
mkdir -p bench
OUT="bench/results-$(date +%Y-%m-%dT%H%M%S).json"

rows=()
printf '%-8s %-8s %-10s %12s %10s %10s %10s %10s\n' fsync clients mix "ops/s" "p50 ms" "p90 ms" "p99 ms" "max ms"
for policy in never always; do
  for n in 1 2 3; do [ -n "${NODE_PID[$n]:-}" ] && kill_node "$n"; done
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  PIDS=(); NODE_PID=(); NODE_ID=()
  rm -rf "$WORK"/d* "$WORK/server-state.json"
  start_server
  for n in 1 2 3; do start_node "$n" --data-dir "$WORK/d$n" --fsync "$policy"; done
  wait_in_sync 3
  epoch0=$(cluster_epoch)
  for clients in 1 32; do
    for mix in write read 50/50; do
      case $mix in write) r=0 ;; read) r=1 ;; *) r=0.5 ;; esac
      out=$("$BIN/dkv-client" bench "$SERVER" --clients "$clients" --read-ratio "$r" \
              --duration "$DURATION" --warmup 1 --keys 100000 --value-size 16 --json)
      get() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" <<<"$out"; }
      printf '%-8s %-8s %-10s %12.0f %10.3f %10.3f %10.3f %10.3f\n' "$policy" "$clients" "$mix" \
        "$(get ops_per_sec)" "$(awk "BEGIN{print $(get p50)/1000}")" "$(awk "BEGIN{print $(get p90)/1000}")" \
        "$(awk "BEGIN{print $(get p99)/1000}")" "$(awk "BEGIN{print $(get max)/1000}")"
      rows+=("{\"fsync\":\"$policy\",\"clients\":$clients,\"mix\":\"$mix\",\"result\":$out}")
    done
  done
  check_no_failover "$epoch0"
done
(IFS=,; echo "{\"machine\":\"$(nproc) cores\",\"date\":\"$(date -Iseconds)\",\"rows\":[${rows[*]}]}") >"$OUT"
echo "results written to $OUT"
