#!/usr/bin/env bash
# `make bench-compare`: DKV, Redis 7 (a primary and 2 replicas) and a 3-member
# etcd 3.4 cluster measured side by side, in one run on this machine, by the
# same load generator (dkv-client bench), plus rows driven by redis-benchmark
# (a generator neither side wrote) against DKV's RESP port and Redis. Redis
# and etcd come from Debian's
# packages and are installed here if missing. etcd is driven through its v3
# JSON gateway on keep-alive HTTP/1.1 connections (no client library), the
# least client overhead available without a gRPC stack.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
DURATION=${DURATION:-5}
MEMKEYS=${MEMKEYS:-1000000}
WORK=$(mktemp -d -t dkv-compare.XXXXXX)
QUIET=1
. scripts/lib.sh

if ! command -v redis-server >/dev/null || ! command -v etcd >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools etcd-server etcd-client
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
bg() { "$@" >>"$WORK/bg.log" 2>&1 & PIDS+=($!); disown $!; }
rss_kib() { sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$1/status"; }

# bench LABEL TARGET ADDR CLIENTS READ_RATIO -> "ops_per_sec p50_us"
bench() {
  local out
  out=$("$BIN/dkv-client" bench "$3" --target "$2" --clients "$4" --read-ratio "$5" \
          --duration "$DURATION" --warmup 1 --keys 100000 --value-size 16 --json)
  echo "$(sed -n 's/.*"ops_per_sec":\([0-9.]*\).*/\1/p' <<<"$out" | cut -d. -f1) $(sed -n 's/.*"p50":\([0-9]*\).*/\1/p' <<<"$out")"
  echo "$(date +%T) $1: $out" >&2
}

# rb LABEL HOST:PORT TEST PIPELINE -> "ops_per_sec p50_us": redis-benchmark,
# 32 clients, 16-byte values over 100,000 keys.
rb() {
  local host=${2%:*} port=${2##*:} n out
  n=$(( $4 > 1 ? 400000 : 100000 ))
  out=$(redis-benchmark -h "$host" -p "$port" -t "$3" -c 32 -d 16 -P "$4" -n "$n" -r 100000 --csv 2>/dev/null | tail -n 1)
  echo "$(awk -F'","' '{printf "%d", $2}' <<<"$out") $(awk -F'","' '{printf "%d", $5 * 1000}' <<<"$out")"
  echo "$(date +%T) $1: $out" >&2
}

# rb_rows WHO HOST:PORT: the four redis-benchmark rows (SET, GET at -P 1 and
# -P 16) into R[WHO_rb_TEST_P].
rb_rows() {
  local t p
  for t in set get; do
    for p in 1 16; do
      R[$1_rb_${t}_$p]=$(rb "$1 redis-benchmark $t -P $p" "$2" "$t" "$p")
    done
  done
}

echo "starting Redis (1 primary, 2 replicas), etcd (3 members) and DKV (3 nodes)..." >&2
RP=$(free_port); bg redis-server --port "$RP" --dir "$WORK" --save "" --appendonly no
for _ in 1 2; do bg redis-server --port "$(free_port)" --dir "$WORK" --save "" --appendonly no --replicaof 127.0.0.1 "$RP"; done
until redis-cli -p "$RP" INFO replication 2>/dev/null | grep -q connected_slaves:2; do sleep 0.1; done
RPID=$(pgrep -f "redis-server.*:$RP" | head -n1)

C=(); P=(); for i in 1 2 3; do C+=("$(free_port)"); P+=("$(free_port)"); done
CLUSTER="e1=http://127.0.0.1:${P[0]},e2=http://127.0.0.1:${P[1]},e3=http://127.0.0.1:${P[2]}"
for i in 0 1 2; do
  bg etcd --name "e$((i+1))" --data-dir "$WORK/etcd$i" \
    --listen-client-urls "http://127.0.0.1:${C[$i]}" --advertise-client-urls "http://127.0.0.1:${C[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${P[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${P[$i]}" \
    --initial-cluster "$CLUSTER" --initial-cluster-state new
done
until ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:${C[0]}" put probe x >/dev/null 2>&1; do sleep 0.2; done
ETCD_LEADER=""
for c in "${C[@]}"; do
  if ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$c" endpoint status 2>/dev/null | grep -q ", true,"; then ETCD_LEADER=$c; fi
done
ETCD_LEADER=${ETCD_LEADER:-${C[0]}}

dkv_cluster() { # fsync policy
  for n in 1 2 3; do [ -n "${NODE_PID[$n]:-}" ] && kill_node "$n"; done
  NODE_PID=(); NODE_ID=()
  rm -rf "$WORK"/d* "$WORK/server-state.json"
  start_server
  for n in 1 2 3; do
    if [ "$1" = memory ]; then start_node "$n"; else start_node "$n" --data-dir "$WORK/d$n" --fsync "$1"; fi
  done
  wait_in_sync 3
  EPOCH0=$(cluster_epoch)
}

declare -A R
dkv_cluster never
R[dkv_w32]=$(bench "DKV write 32c fsync never" native "$SERVER" 32 0)
R[dkv_r32]=$(bench "DKV read 32c" native "$SERVER" 32 1)
R[dkv_w1]=$(bench "DKV write 1c" native "$SERVER" 1 0)
check_no_failover "$EPOCH0"
R[redis_wait32]=$(bench "Redis SET+WAIT 2 32c" resp-wait "127.0.0.1:$RP" 32 0)
R[redis_wait1]=$(bench "Redis SET+WAIT 2 1c" resp-wait "127.0.0.1:$RP" 1 0)
R[redis_r32]=$(bench "Redis GET 32c" resp "127.0.0.1:$RP" 32 1)
R[etcd_w32]=$(bench "etcd put 32c" etcd "127.0.0.1:$ETCD_LEADER" 32 0)
rb_rows redis "127.0.0.1:$RP"
# The same write row with nothing on disk, as the Redis peer runs (no RDB, no AOF).
dkv_cluster memory
R[dkv_w32_mem]=$(bench "DKV write 32c in memory" native "$SERVER" 32 0)
# The RESP rows, in memory too: the Redis peer keeps nothing on disk.
DKV_RESP=${NODE_RESP[$(coordinator_label)]}
R[dkv_resp_w32]=$(bench "DKV RESP write 32c" resp "$DKV_RESP" 32 0)
rb_rows dkv "$DKV_RESP"
check_no_failover "$EPOCH0"
dkv_cluster always
R[dkv_w32_always]=$(bench "DKV write 32c fsync always" native "$SERVER" 32 0)
R[dkv_rb_always_16]=$(rb "DKV redis-benchmark set -P 16 fsync always" "${NODE_RESP[$(coordinator_label)]}" set 16)
check_no_failover "$EPOCH0"

# Memory per key: MEMKEYS keys of 16 bytes, resident memory growth per key.
echo "$(date +%T) loading $MEMKEYS keys into DKV and Redis for the memory row..." >&2
dkv_cluster never
c=$(coordinator_label); base=$(rss_kib "${NODE_PID[$c]}")
"$BIN/dkv-client" bench "$SERVER" --fill --keys "$MEMKEYS" --value-size 16 --clients 32 --json >/dev/null
R[dkv_mem]=$(( ( $(rss_kib "${NODE_PID[$c]}") - base ) * 1024 / MEMKEYS ))
check_no_failover "$EPOCH0"
redis-cli -p "$RP" FLUSHALL >/dev/null; base=$(rss_kib "$RPID")
"$BIN/dkv-client" bench "127.0.0.1:$RP" --target resp --fill --keys "$MEMKEYS" --value-size 16 --clients 32 --json >/dev/null
R[redis_mem]=$(( ( $(rss_kib "$RPID") - base ) * 1024 / MEMKEYS ))

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'; }
f() { cut -d' ' -f"$2" <<<"$1"; }
echo
echo "side by side on $(nproc) cores, loopback, 16-byte values, ${DURATION}s per row, $(date -I)"
printf '%-46s %12s %14s %10s %s\n' "row" "DKV" "peer" "ratio" "goal"
printf '%-46s %12s %14s %10s %s\n' "writes/s, 32 clients (fsync never)" "$(f "${R[dkv_w32]}" 1)" "$(f "${R[redis_wait32]}" 1) Redis WAIT" "$(ratio "$(f "${R[dkv_w32]}" 1)" "$(f "${R[redis_wait32]}" 1)")" ">= 1.5x"
printf '%-46s %12s %14s %10s %s\n' "writes/s, 32 clients (in memory, no disk)" "$(f "${R[dkv_w32_mem]}" 1)" "$(f "${R[redis_wait32]}" 1) Redis WAIT" "$(ratio "$(f "${R[dkv_w32_mem]}" 1)" "$(f "${R[redis_wait32]}" 1)")" "(like for like)"
printf '%-46s %12s %14s %10s %s\n' "reads/s, 32 clients" "$(f "${R[dkv_r32]}" 1)" "$(f "${R[redis_r32]}" 1) Redis GET" "$(ratio "$(f "${R[dkv_r32]}" 1)" "$(f "${R[redis_r32]}" 1)")" ">= 1.2x"
printf '%-46s %12s %14s %10s %s\n' "write p50 us, 1 client (lower is better)" "$(f "${R[dkv_w1]}" 2)" "$(f "${R[redis_wait1]}" 2) Redis WAIT" "$(ratio "$(f "${R[dkv_w1]}" 2)" "$(f "${R[redis_wait1]}" 2)")" "<= 0.7x"
printf '%-46s %12s %14s %10s %s\n' "writes/s, 32 clients, RESP, in memory" "$(f "${R[dkv_resp_w32]}" 1)" "$(f "${R[redis_wait32]}" 1) Redis WAIT" "$(ratio "$(f "${R[dkv_resp_w32]}" 1)" "$(f "${R[redis_wait32]}" 1)")" ">= 1.5x"
for t in set get; do
  for p in 1 16; do
    case "$t-$p" in
      set-16) goal=">= 0.5x (DKV: every write synchronous; Redis: async replicas)" ;;
      get-1) goal=">= 1.2x" ;;
      get-16) goal=">= 0.8x" ;;
      *) goal="(Redis: async replicas)" ;;
    esac
    printf '%-46s %12s %14s %10s %s\n' "redis-benchmark ${t^^} -P $p, 32c, in memory" "$(f "${R[dkv_rb_${t}_$p]}" 1)" "$(f "${R[redis_rb_${t}_$p]}" 1) Redis" "$(ratio "$(f "${R[dkv_rb_${t}_$p]}" 1)" "$(f "${R[redis_rb_${t}_$p]}" 1)")" "$goal"
  done
done
printf '%-46s %12s %14s %10s %s\n' "writes/s, 32 clients, fsync always" "$(f "${R[dkv_w32_always]}" 1)" "$(f "${R[etcd_w32]}" 1) etcd put" "$(ratio "$(f "${R[dkv_w32_always]}" 1)" "$(f "${R[etcd_w32]}" 1)")" ">= 5x"
printf '%-46s %12s %14s %10s %s\n' "redis-benchmark SET -P 16, fsync always" "$(f "${R[dkv_rb_always_16]}" 1)" "$(f "${R[etcd_w32]}" 1) etcd put" "$(ratio "$(f "${R[dkv_rb_always_16]}" 1)" "$(f "${R[etcd_w32]}" 1)")" "(group commit; etcd unpipelined)"
printf '%-46s %12s %14s %10s %s\n' "bytes of RSS per key, $MEMKEYS keys (lower)" "${R[dkv_mem]}" "${R[redis_mem]} Redis" "$(ratio "${R[dkv_mem]}" "${R[redis_mem]}")" "<= 1.2x"
printf '%-46s %12s %14s %10s %s\n' "false failovers during the DKV rows" "0" "" "" "= 0 (checked; a failover stops the run)"
