# Shared helpers for the cluster scripts (sourced, not run).
# Starts processes from $BIN, keeps their pids in PIDS, and stops them all
# on exit. Callers set BIN and WORK.

PIDS=()
declare -A NODE_PID NODE_ADDR

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo; echo "interrupted (SIGINT): stopping the cluster"; exit 130' INT
trap 'echo; echo "terminated (SIGTERM): stopping the cluster"; exit 143' TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# Waits (up to 10 s) for the first line a process prints on stdout.
banner() {
  local out=$1 log=$2
  for _ in $(seq 1 200); do
    if [ -s "$out" ]; then head -n1 "$out"; return 0; fi
    sleep 0.05
  done
  echo "process did not start; its log:" >&2
  cat "$log" >&2
  return 1
}

# start_server: sets SERVER to its address.
start_server() {
  "$BIN/dkv-server" -c "${CONFIG:-config.json}" --listen 127.0.0.1:0 \
    --state-file "$WORK/server-state.json" >"$WORK/server.out" 2>"$WORK/server.log" &
  PIDS+=($!)
  disown $!
  SERVER=$(banner "$WORK/server.out" "$WORK/server.log" | awk '{print $4}')
}

# start_node N [ARGS...]: starts node number N (a label) with extra ARGS,
# records its pid and address.
start_node() {
  local n=$1
  shift
  "$BIN/dkv-node" "$SERVER" -c "${CONFIG:-config.json}" "$@" >"$WORK/node$n.out" 2>>"$WORK/node$n.log" &
  PIDS+=($!)
  disown $!
  NODE_PID[$n]=$!
  local line
  line=$(banner "$WORK/node$n.out" "$WORK/node$n.log")
  NODE_ADDR[$n]=$(awk '{print $5}' <<<"$line")
  NODE_ID[$n]=$(awk '{print $2}' <<<"$line")
  [ -n "${QUIET:-}" ] || echo "node $n: $line (pid ${NODE_PID[$n]})"
}
declare -A NODE_ID

# Waits (up to 10 s) until the server lists $1 members in sync.
wait_in_sync() {
  for _ in $(seq 1 200); do
    local n
    n=$("$BIN/dkv-client" status "$SERVER" --json | grep -c '"in_sync": true' || true)
    [ "$n" -ge "$1" ] && return 0
    sleep 0.05
  done
  echo "the in-sync set did not reach $1 members" >&2
  return 1
}

# Prints the cluster's epoch according to the server.
cluster_epoch() {
  "$BIN/dkv-client" status "$SERVER" --json | sed -n 's/^  "epoch": \([0-9]*\),*$/\1/p'
}

# Fails (and says so) when the epoch moved since $1: a failover happened.
check_no_failover() {
  local now
  now=$(cluster_epoch)
  if [ "$now" != "$1" ]; then
    echo "FALSE FAILOVER: epoch went from $1 to $now during the benchmark" >&2
    return 1
  fi
}

# Prints the label N of the node that is coordinator now.
coordinator_label() {
  local id
  id=$("$BIN/dkv-client" status "$SERVER" --json | sed -n 's/^  "coordinator": \([0-9]*\),*$/\1/p')
  for n in "${!NODE_ID[@]}"; do
    if [ "${NODE_ID[$n]}" = "$id" ]; then echo "$n"; return 0; fi
  done
  return 1
}

# kill_node N: kill -9 node N and wait until it has exited (a zombie or gone),
# so its data directory lock is free again.
kill_node() {
  local pid=${NODE_PID[$1]}
  kill -9 "$pid" 2>/dev/null || true
  for _ in $(seq 1 500); do
    grep -q '^State:[[:space:]]*[ZX]' "/proc/$pid/status" 2>/dev/null || [ ! -e "/proc/$pid" ] && return 0
    sleep 0.01
  done
}
