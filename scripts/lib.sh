# Shared helpers for the cluster scripts (sourced, not run).
# Starts processes from $BIN, keeps their pids in PIDS, and stops them all
# on exit. Callers set BIN and WORK.

PIDS=()
# etcd members (see start_etcd): killed with SIGKILL, their data is thrown
# away with $WORK (a member asked to stop waits for its peers for seconds).
ETCD_PIDS=()
declare -A NODE_PID NODE_ADDR

# KEEP=1 (any value but empty, 0, no or false) keeps $WORK, the logs and
# data of every process, after the script ends.
keep_logs() {
  case "${KEEP:-}" in "" | 0 | no | false) return 1 ;; esac
}

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${ETCD_PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  # Each process stops cleanly (a coordinator hands over, a replica leaves
  # the in-sync set) and writes its log until it exits: wait for that (at
  # most 5 s) before the directory goes.
  local p _
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 500); do
      [ -e "/proc/$p" ] && ! grep -q '^State:[[:space:]]*[ZX]' "/proc/$p/status" 2>/dev/null || break
      sleep 0.01
    done
  done
  local work=${WORK_ROOT:-${WORK:-}}
  [ -n "$work" ] || return 0
  if keep_logs; then
    echo "logs kept in $work" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'echo; echo "interrupted (SIGINT): stopping the cluster"; exit 130' INT
trap 'echo; echo "terminated (SIGTERM): stopping the cluster"; exit 143' TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# quote ARG...: the words as one line that a shell reads back as the same
# words: plain ones as they are, others in single quotes.
quote() {
  local a q="'" out=()
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
      out+=("$a")
    else
      out+=("$q${a//$q/$q\\$q$q}$q")
    fi
  done
  printf '%s\n' "${out[*]}"
}
# run CMD ARG...: prints the command as it can be pasted into a shell (from
# the repository root: $BIN is relative to it unless absolute), then runs it.
run() { printf '$ %s\n' "$(quote "$@")"; "$@"; }

# show_status: `dkv-client status` as a user runs it. Exit 1 (degraded: a
# member unreachable, the in-sync set smaller than the members) is expected
# right after a kill; it is said, not fatal. Other codes are errors.
show_status() {
  local rc=0
  printf '$ %s\n' "$(quote "$BIN/dkv-client" status "$SERVER")"
  "$BIN/dkv-client" status "$SERVER" || rc=$?
  if [ "$rc" -eq 1 ]; then echo "(exit 1: degraded, for the reasons above)"; fi
  [ "$rc" -le 1 ]
}

# status_json: the server's view as JSON, whatever the cluster's health
# (exit 1 only means degraded; the document is complete).
status_json() {
  local rc=0 err
  err=$(mktemp)
  "$BIN/dkv-client" status "$SERVER" --json 2>"$err" || rc=$?
  # The reasons of a degraded cluster are in the document; only an error is
  # worth showing.
  if [ "$rc" -gt 1 ]; then cat "$err" >&2; fi
  rm -f "$err"
  [ "$rc" -le 1 ]
}
# Reads numbers (ms), one per line; prints "median M ms, max X ms, min N ms".
median_max_min() {
  sort -n | awk '
    { v[NR] = $1 }
    END {
      med = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
      printf "median %.1f ms, max %.1f ms, min %.1f ms\n", med, v[NR], v[1]
    }'
}

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# explain_probe FILE [WHY]: prints `dkv-client probe`'s summary line, then,
# when some writes were of unknown outcome, what that means; WHY says what
# caused it in this run (default: the answer never came, or was a timeout).
explain_probe() {
  local line unknown why=${2:-"the client sent the write but got no answer, or a timeout"}
  line=$(cat "$1")
  echo "probe: $line"
  unknown=$(sed -n 's/.* \([0-9][0-9]*\) of unknown outcome.*/\1/p' <<<"$line")
  if [ "${unknown:-0}" -gt 0 ]; then
    echo "(unknown outcome: $why; such a write may or may not have been applied and the client cannot know which, so it is counted apart: neither acknowledged nor failed)"
  fi
}

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
  rm -f "$WORK/server.out"
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
  rm -f "$WORK/node$n.out"
  "$BIN/dkv-node" "$SERVER" -c "${CONFIG:-config.json}" "$@" >"$WORK/node$n.out" 2>>"$WORK/node$n.log" &
  PIDS+=($!)
  disown $!
  NODE_PID[$n]=$!
  local line
  line=$(banner "$WORK/node$n.out" "$WORK/node$n.log")
  NODE_ADDR[$n]=$(awk '{print $5}' <<<"$line")
  NODE_ID[$n]=$(awk '{print $2}' <<<"$line")
  NODE_RESP[$n]=$(awk '{print $9}' <<<"$line")
  [ -n "${QUIET:-}" ] || echo "node $n: $line (pid ${NODE_PID[$n]})"
}
declare -A NODE_ID NODE_RESP

# Waits (up to 10 s) until the server lists $1 members in sync.
wait_in_sync() {
  for _ in $(seq 1 200); do
    local n
    n=$(status_json | grep -c '"in_sync": true' || true)
    [ "$n" -ge "$1" ] && return 0
    sleep 0.05
  done
  echo "the in-sync set did not reach $1 members" >&2
  return 1
}

# Prints the cluster's epoch according to the server.
cluster_epoch() {
  status_json | sed -n 's/^  "epoch": \([0-9]*\),*$/\1/p'
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
  id=$(status_json | sed -n 's/^  "coordinator": \([0-9]*\),*$/\1/p')
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

# --- HA registry: an etcd cluster on loopback and servers over it ---------

# Installs etcd (Debian's etcd-server, etcdctl) and curl when missing; the
# project's other set-up does the same, as root.
need_etcd() {
  command -v etcd >/dev/null && command -v etcdctl >/dev/null && command -v curl >/dev/null && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "etcd, etcdctl and curl are needed: apt-get install etcd-server etcd-client curl (as root)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client curl
}

# free_ports N: N distinct free TCP ports on loopback, one a line.
free_ports() {
  python3 -c 'import socket,sys
ss=[socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss: s.bind(("127.0.0.1",0))
print("\n".join(str(s.getsockname()[1]) for s in ss))' "$1"
}

declare -A ETCD_PID ETCD_URL

# start_etcd N: starts an N-member etcd cluster on free loopback ports, data
# in $WORK/etcdI, logs in $WORK/etcdI.log (zap: millisecond timestamps).
# Sets ETCD_URL[I], ETCD_PID[I] (I = 1..N) and ETCD_ENDPOINTS (the client
# URLs, comma-separated); returns once a leader is elected (up to 30 s).
# etcd's own timing stays at its defaults (heartbeat 100 ms, election
# timeout 1000 ms).
start_etcd() {
  local n=$1 ports cluster="" i token="dkv-$$-$RANDOM"
  mapfile -t ports < <(free_ports $((2 * n)))
  for i in $(seq 1 "$n"); do
    cluster+="${cluster:+,}e$i=http://127.0.0.1:${ports[$((2 * i - 1))]}"
  done
  ETCD_ENDPOINTS=""
  for i in $(seq 1 "$n"); do
    local c=${ports[$((2 * i - 2))]} p=${ports[$((2 * i - 1))]}
    ETCD_URL[$i]="http://127.0.0.1:$c"
    ETCD_ENDPOINTS+="${ETCD_ENDPOINTS:+,}${ETCD_URL[$i]}"
    etcd --name "e$i" --data-dir "$WORK/etcd$i" --logger zap --log-outputs stderr \
      --listen-client-urls "${ETCD_URL[$i]}" --advertise-client-urls "${ETCD_URL[$i]}" \
      --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --initial-cluster-token "$token" >"$WORK/etcd$i.log" 2>&1 &
    ETCD_PID[$i]=$!
    ETCD_PIDS+=($!)
    disown $!
  done
  for _ in $(seq 1 600); do
    etcd_leader >/dev/null && return 0
    sleep 0.05
  done
  echo "etcd elected no leader within 30 s; its logs are in $WORK/etcd*.log" >&2
  return 1
}

# etcd_status URL: the member's status (JSON), straight from its gateway.
etcd_status() { curl -s -m 1 -XPOST "$1/v3/maintenance/status" -d '{}'; }

# etcd_leader: prints I of the member that says it is the leader (its
# member_id equals the leader it reports); fails when none does.
etcd_leader() {
  local i s me ld
  for i in "${!ETCD_URL[@]}"; do
    s=$(etcd_status "${ETCD_URL[$i]}") || continue
    me=$(sed -n 's/.*"member_id":"\([0-9]*\)".*/\1/p' <<<"$s")
    ld=$(sed -n 's/.*"leader":"\([0-9]*\)".*/\1/p' <<<"$s")
    if [ -n "$me" ] && [ "$me" = "$ld" ]; then echo "$i"; return 0; fi
  done
  return 1
}

# etcd_leader_id URL: the leader's member id as member URL sees it (0: none).
etcd_leader_id() {
  etcd_status "$1" | sed -n 's/.*"leader":"\([0-9]*\)".*/\1/p'
}

declare -A SERVER_PID SERVER_ADDR SERVER_SENTINEL

# start_ha_server N [ARGS...]: dkv-server number N over $ETCD_ENDPOINTS under
# the prefix $ETCD_PREFIX, on a free loopback port, output in $WORK/serverN.*.
# Sets SERVER_PID[N], SERVER_ADDR[N] (and SERVER_SENTINEL[N] when ARGS turn
# Sentinel on) and appends the address to SERVER, the list nodes and clients
# are given.
start_ha_server() {
  local n=$1
  shift
  rm -f "$WORK/server$n.out"
  "$BIN/dkv-server" -c "${CONFIG:-config.json}" --etcd-endpoints "$ETCD_ENDPOINTS" \
    --etcd-prefix "${ETCD_PREFIX:-/dkv/demo/}" --listen 127.0.0.1:0 "$@" \
    >"$WORK/server$n.out" 2>"$WORK/server$n.log" &
  PIDS+=($!)
  disown $!
  SERVER_PID[$n]=$!
  local line
  line=$(banner "$WORK/server$n.out" "$WORK/server$n.log")
  SERVER_ADDR[$n]=$(awk '{print $4}' <<<"$line")
  SERVER_SENTINEL[$n]=$(awk '{print $6}' <<<"$line")
  SERVER="${SERVER:+$SERVER,}${SERVER_ADDR[$n]}"
  [ -n "${QUIET:-}" ] || echo "server $n: $line (pid ${SERVER_PID[$n]})"
}

# wait_gone PID: waits (up to 5 s) until a killed process has exited.
wait_gone() {
  for _ in $(seq 1 500); do
    grep -q '^State:[[:space:]]*[ZX]' "/proc/$1/status" 2>/dev/null || [ ! -e "/proc/$1" ] && return 0
    sleep 0.01
  done
}

# forget PID: drops a process this script killed (and that has exited) from
# PIDS and ETCD_PIDS, so cleanup never signals a pid the system reused.
forget() {
  local p keep=() keep_etcd=()
  for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  for p in "${ETCD_PIDS[@]}"; do [ "$p" = "$1" ] || keep_etcd+=("$p"); done
  PIDS=("${keep[@]}")
  ETCD_PIDS=("${keep_etcd[@]}")
}

# kill9 PID: kill -9, wait until it has exited, forget it.
kill9() {
  kill -9 "$1" 2>/dev/null || true
  wait_gone "$1"
  forget "$1"
}
