#!/usr/bin/env bash
# `make ha-bench RUNS=5`: figures for the HA registry, measured with the
# project's own tools (dkv-client probe / bench, client_proto) on loopback.
# Each run starts a fresh 3-member etcd cluster and, for every figure, fresh
# dkv-servers and nodes (a fresh etcd prefix each):
#   A. a control probe with nothing killed; kill -9 the server the
#      coordinator uses: longest write gap, epoch checked before and after;
#      then kill -9 the coordinator with that server gone (failover time:
#      the probe's longest gap);
#   B. the same coordinator kill with every server up;
#   C. standalone server (state file): kill -9 and restart with the nodes
#      running, state file kept / deleted: process start to first write;
#   D. write throughput, dkv-client bench write-only, standalone vs HA;
#   E. kill -9 the etcd leader: longest write gap, etcd's own election time.
# Prints one line per run and measurement (with where the time went, from
# the logs), then a table of median / max over RUNS with each goal. BENCH_SECS
# (5) and CLIENTS (32) set the throughput rows; KEEP=1 keeps the logs. Nothing
# is written outside the temp directory, which is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
RUNS=${RUNS:-5}
CONFIG=${CONFIG:-config.json}
BENCH_SECS=${BENCH_SECS:-5}
CLIENTS=${CLIENTS:-32}
QUIET=1
WORK=$(mktemp -d -t dkv-ha-bench.XXXXXX)
WORK_ROOT=$WORK
. scripts/lib.sh
need_etcd

# The coordinator's lease (lease-timeout, default 5 x server-update-interval).
LEASE_MS=$(sed -n 's/.*"lease-timeout" *: *\([0-9]*\).*/\1/p' "$CONFIG" | head -n1)
LEASE_MS=${LEASE_MS:-250}

json_field() { sed -n "s/.*\"$1\":\\([0-9.a-z]*\\).*/\\1/p" "$2"; }

# Log timestamps (env_logger, UTC, ms) against T_KILL (ms since the epoch).
iso_ms() { date -u -d "@$(($1 / 1000)).$(printf %03d $(($1 % 1000)))" +%Y-%m-%dT%H:%M:%S.%3NZ; }
# since_kill PATTERN FILES...: ms from T_KILL to the first log line matching
# PATTERN at or after it; "-" when there is none.
since_kill() {
  local pat=$1 t ts
  shift
  t=$(iso_ms "$T_KILL")
  ts=$({ grep -h -- "$pat" "$@" 2>/dev/null || true; } | sed -n 's/^\[\([0-9T:.-]*Z\) .*/\1/p' |
    awk -v t="$t" '$0 >= t' | sort | head -n1)
  if [ -n "$ts" ]; then echo $(($(date -u -d "$ts" +%s%3N) - T_KILL)); else echo -; fi
}
# count_since_kill PATTERN FILES...: log lines matching PATTERN after T_KILL.
count_since_kill() {
  local pat=$1 t
  shift
  t=$(iso_ms "$T_KILL")
  { grep -h -- "$pat" "$@" 2>/dev/null || true; } | sed -n 's/^\[\([0-9T:.-]*Z\) .*/\1/p' | awk -v t="$t" '$0 >= t' | wc -l
}

# node_server N: the server node N talks to now, from its log (the last
# "using ADDR" / "server ADDR answers; using it"); server 1 if none.
node_server() {
  local l
  l=$({ grep -oE 'using [0-9.]+:[0-9]+$|server [0-9.]+:[0-9]+ answers; using it' "$WORK/node$1.log" || true; } | tail -n1)
  case $l in
    using*) echo "${l#using }" ;;
    server*) l=${l#server }; echo "${l%% *}" ;;
    *) echo "${SERVER_ADDR[1]}" ;;
  esac
}

# retry CMD...: CMD's output, tried for up to 5 s (a status call may fail
# while the cluster fails over or the machine is busy); "?" if it never works.
retry() {
  local out
  for _ in $(seq 1 50); do
    if out=$("$@" 2>/dev/null) && [ -n "$out" ]; then echo "$out"; return 0; fi
    sleep 0.1
  done
  echo "?"
}

# cpu_ticks PID...: user + system clock ticks the processes used so far.
cpu_ticks() {
  local t=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}
# machine_ticks: "busy total cores" from /proc/stat (every process on it).
machine_ticks() {
  awk -v n="$(nproc)" '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t, n }' /proc/stat
}

# Stops every dkv-server and dkv-node of the current scenario (kill -9:
# nothing of theirs is kept), leaving etcd running.
stop_dkv() {
  local p
  for p in "${SERVER_PID[@]}" "${NODE_PID[@]}"; do kill9 "$p"; done
  SERVER_PID=(); SERVER_ADDR=(); NODE_PID=(); NODE_ID=(); NODE_ADDR=()
  SERVER=""
}

# ha_cluster NAME: two servers over the run's etcd under a fresh prefix,
# three nodes given both, all in sync.
ha_cluster() {
  ETCD_PREFIX="/dkv/ha-bench/r$r-$1/"
  SERVER=""
  start_ha_server 1
  start_ha_server 2
  for n in 1 2 3; do start_node "$n"; done
  wait_in_sync 3
}

# standalone_cluster: one server with its state file, three nodes.
standalone_cluster() {
  rm -f "$WORK/server-state.json"
  start_server
  SERVER_PID[1]=${PIDS[-1]}
  for n in 1 2 3; do start_node "$n"; done
  wait_in_sync 3
}

# probe_bg SECS FILE: dkv-client probe in the background (pid in PROBE,
# start time in PROBE_T0).
probe_bg() {
  PROBE_T0=$(now_ms)
  PROBE_OUT=$2
  "$BIN/dkv-client" probe "$SERVER" --duration "$1" --json >"$2" 2>>"$WORK/probe.log" &
  PROBE=$!
  PIDS+=($PROBE)
}

# probe_wait: waits for the probe and forgets its pid. A probe that failed
# (its stderr is in probe.log) counts as a 99999 ms gap, and says so.
probe_wait() {
  local rc=0
  wait "$PROBE" || rc=$?
  forget "$PROBE"
  if [ "$rc" != 0 ]; then
    echo "  the probe exited with code $rc: $(tail -n1 "$WORK/probe.log")"
    [ -s "$PROBE_OUT" ] || echo '{"last_ack_reads_back":false,"max_gap_at_s":0,"max_gap_ms":99999}' >"$PROBE_OUT"
  fi
}

# coordinator_kill FILE: probe across a kill -9 of the coordinator; sets GAP.
coordinator_kill() {
  probe_bg 2.5 "$1"
  sleep 1
  local c logs=()
  c=$(retry coordinator_label)
  T_KILL=$(now_ms)
  kill9 "${NODE_PID[$c]}"
  unset "NODE_PID[$c]"
  probe_wait
  GAP=$(json_field max_gap_ms "$1")
  GAP_REL=$(awk -v a="$(json_field max_gap_at_s "$1")" -v k=$((T_KILL - PROBE_T0)) 'BEGIN { printf "%+.0f", a * 1000 - k }')
  [ "$(json_field last_ack_reads_back "$1")" = true ] || echo "  LAST ACK DOES NOT READ BACK ($1)"
  for n in "${!NODE_PID[@]}"; do logs+=("$WORK/node$n.log"); done
  # Where the time goes, from the surviving nodes' logs.
  STEPS="suspected +$(since_kill 'suspected; starting an election' "${logs[@]}") ms, grant asked +$(since_kill 'asking the server for epoch' "${logs[@]}") ms, $(count_since_kill 'grant refused' "${logs[@]}") refused (old lease), granted +$(since_kill ': coordinator of epoch' "${logs[@]}") ms"
}

# restart_server_after_kill VARIANT: kill -9 the standalone server, restart
# it on the same port (VARIANT deleted: without its state file); sets
# UP_MS (spawn to its listening line) and FIRST_MS (spawn to the first
# acknowledged write by a new client_proto).
restart_server_after_kill() {
  "$BIN/client_proto" "$SERVER" W,before-restart,1 >/dev/null
  kill9 "${SERVER_PID[1]}"
  [ "$1" = deleted ] && rm -f "$WORK/server-state.json"
  local out="$WORK/server-restart-$1.out" t0 t_up="" t1
  t0=$(now_ms)
  "$BIN/dkv-server" -c "$CONFIG" --listen "$SERVER" --state-file "$WORK/server-state.json" \
    >"$out" 2>"$WORK/server-restart-$1.log" &
  SERVER_PID[1]=$!
  PIDS+=($!)
  disown $!
  while :; do
    [ -z "$t_up" ] && [ -s "$out" ] && t_up=$(now_ms)
    if "$BIN/client_proto" --timeout 200 "$SERVER" W,after-restart,1 >/dev/null 2>&1; then break; fi
    [ $(($(now_ms) - t0)) -lt 30000 ] || { echo "no write within 30 s of the restart" >&2; return 1; }
  done
  t1=$(now_ms)
  [ -n "$t_up" ] || t_up=$t1
  UP_MS=$((t_up - t0))
  FIRST_MS=$((t1 - t0))
}

# throughput LABEL FILE: write-only bench; sets OPS; flags a failover.
throughput() {
  local e0 e1 t0 t1 c0 c1 m0 m1
  e0=$(retry cluster_epoch)
  t0=$(now_ms)
  c0=$(cpu_ticks "${ETCD_PID[@]}")/$(cpu_ticks "${SERVER_PID[@]}")/$(cpu_ticks "${NODE_PID[@]}")
  m0=$(machine_ticks)
  "$BIN/dkv-client" bench "$SERVER" --clients "$CLIENTS" --duration "$BENCH_SECS" --warmup 1 \
    --read-ratio 0 --json >"$2" 2>>"$WORK/bench.log" || echo "  the $1 bench exited with code $?"
  t1=$(now_ms)
  c1=$(cpu_ticks "${ETCD_PID[@]}")/$(cpu_ticks "${SERVER_PID[@]}")/$(cpu_ticks "${NODE_PID[@]}")
  m1=$(machine_ticks)
  e1=$(retry cluster_epoch)
  OPS=$(sed -n 's/.*"ops_per_sec":\([0-9.]*\).*/\1/p' "$2" | cut -d. -f1)
  OPS=${OPS:-0}
  # CPU over the bench (warm-up included), in % of one core.
  read -r CPU_ETCD CPU_SRV CPU_NODES CPU_ALL < <(awk -v a="$c0" -v b="$c1" -v m0="$m0" -v m1="$m1" \
    -v ms=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" 'BEGIN {
    split(a, x, "/"); split(b, y, "/"); split(m0, p, " "); split(m1, q, " ")
    f = 100000 / (ms * hz)
    printf "%.0f %.0f %.0f %.0f\n", (y[1] - x[1]) * f, (y[2] - x[2]) * f, (y[3] - x[3]) * f,
      100 * (q[1] - p[1]) / (q[2] - p[2]) * p[3] }')
  CPU="etcd ${CPU_ETCD}%, servers ${CPU_SRV}%, nodes ${CPU_NODES}% of one core; whole machine ${CPU_ALL}% busy of $((100 * $(nproc)))%"
  if [ "$e0" != "$e1" ]; then
    echo "  FAILOVER during the $1 throughput row (epoch $e0 -> $e1)"
    BENCH_FAILOVERS=$((BENCH_FAILOVERS + 1))
  fi
}

declare -a CTRL_GAP SRV_GAP SRV_REL SRV_SAME FO_DOWN FO_UP ETCD_GAP ETCD_ELECT ETCD_SAME ETCD_OK
declare -a UP_KEPT FIRST_KEPT UP_DEL FIRST_DEL OPS_SA OPS_HA COST CPU_ETCD_SA CPU_ETCD_HA CPU_SRV_HA
BENCH_FAILOVERS=0
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
echo "ha-bench: $RUNS runs on $(nproc) cores, $(date -u '+%Y-%m-%d %H:%M UTC'); lease-timeout $LEASE_MS ms; load average $(loadavg); logs under $WORK/run* (KEEP=1 keeps them)" >&2
for r in $(seq 1 "$RUNS"); do
  WORK="$WORK_ROOT/run$r"
  mkdir -p "$WORK"
  echo "run $r: load average $(loadavg)"
  start_etcd 3

  # A. A server dies, then the coordinator (through the remaining server).
  ha_cluster A
  # Control: the same probe with nothing killed (this machine's noise floor).
  probe_bg 3 "$WORK/A-control.json"
  probe_wait
  CTRL_GAP+=("$(json_field max_gap_ms "$WORK/A-control.json")")
  printf 'run %d  control, nothing killed:  longest write gap %7.1f ms\n' "$r" "${CTRL_GAP[-1]}"
  e0=$(retry cluster_epoch)
  probe_bg 3 "$WORK/A-server-kill.json"
  sleep 1
  # The server the coordinator talks to (server 1 unless a call failed over).
  c=$(retry coordinator_label)
  used=$(node_server "$c")
  k=1; [ "$used" = "${SERVER_ADDR[2]}" ] && k=2
  T_KILL=$(now_ms)
  kill9 "${SERVER_PID[$k]}"
  unset "SERVER_PID[$k]"
  probe_wait
  e1=$(retry cluster_epoch)
  SRV_GAP+=("$(json_field max_gap_ms "$WORK/A-server-kill.json")")
  if [ "$e0" = "$e1" ]; then SRV_SAME+=(1); else SRV_SAME+=(0); fi
  at=$(json_field max_gap_at_s "$WORK/A-server-kill.json")
  rel=$(awk -v a="$at" -v k=$((T_KILL - PROBE_T0)) 'BEGIN { printf "%+.0f", a * 1000 - k }')
  SRV_REL+=("$rel")
  switched=$({ grep -l "server ${SERVER_ADDR[$k]} unreachable" "$WORK"/node*.log 2>/dev/null || true; } | wc -l)
  slow=$(count_since_kill 'etcd .* got no answer' "$WORK"/server*.log)
  printf 'run %d  server kill -9:           longest write gap %7.1f ms, beginning %s ms from the kill; epoch %s -> %s; killed server %d, %d/3 nodes logged the switch; %s etcd calls timed out after the kill\n' \
    "$r" "${SRV_GAP[-1]}" "$rel" "$e0" "$e1" "$k" "$switched" "$slow"
  coordinator_kill "$WORK/A-failover.json"
  FO_DOWN+=("$GAP")
  printf 'run %d  failover, 1 server down:  longest write gap %7.1f ms, beginning %s ms from the kill; epoch now %s; %s\n' "$r" "$GAP" "$GAP_REL" "$(retry cluster_epoch)" "$STEPS"
  mkdir -p "$WORK/A"; mv "$WORK"/node*.* "$WORK"/server*.* "$WORK/A/" 2>/dev/null || true
  stop_dkv

  # B. The same coordinator kill with every server up.
  ha_cluster B
  coordinator_kill "$WORK/B-failover.json"
  FO_UP+=("$GAP")
  printf 'run %d  failover, all servers up: longest write gap %7.1f ms, beginning %s ms from the kill; epoch now %s; %s\n' "$r" "$GAP" "$GAP_REL" "$(retry cluster_epoch)" "$STEPS"
  mkdir -p "$WORK/B"; mv "$WORK"/node*.* "$WORK"/server*.* "$WORK/B/" 2>/dev/null || true
  stop_dkv

  # C. Standalone server restarted after kill -9, state file kept / deleted.
  for variant in kept deleted; do
    standalone_cluster
    restart_server_after_kill "$variant"
    e=$(retry cluster_epoch)
    if [ "$variant" = kept ]; then UP_KEPT+=("$UP_MS"); FIRST_KEPT+=("$FIRST_MS"); else UP_DEL+=("$UP_MS"); FIRST_DEL+=("$FIRST_MS"); fi
    printf 'run %d  standalone restart, state %-7s process start -> listening %4d ms, -> first acknowledged write %5d ms; epoch now %s\n' \
      "$r" "$variant:" "$UP_MS" "$FIRST_MS" "$e"
    mkdir -p "$WORK/C-$variant"; mv "$WORK"/node*.* "$WORK"/server*.* "$WORK/C-$variant/" 2>/dev/null || true
    stop_dkv
  done

  # D. Write throughput: standalone vs HA, same load (order alternates).
  if [ $((r % 2)) -eq 1 ]; then order="sa ha"; else order="ha sa"; fi
  for kind in $order; do
    if [ "$kind" = sa ]; then
      standalone_cluster
      throughput standalone "$WORK/D-standalone.json"
      OPS_SA+=("$OPS")
      CPU_ETCD_SA+=("$CPU_ETCD")
      printf 'run %d  standalone row CPU: %s (etcd idle)\n' "$r" "$CPU"
    else
      ha_cluster D
      throughput HA "$WORK/D-ha.json"
      OPS_HA+=("$OPS")
      CPU_ETCD_HA+=("$CPU_ETCD"); CPU_SRV_HA+=("$CPU_SRV")
      printf 'run %d  HA row CPU:         %s\n' "$r" "$CPU"
    fi
    mkdir -p "$WORK/D-$kind"; mv "$WORK"/node*.* "$WORK"/server*.* "$WORK/D-$kind/" 2>/dev/null || true
    stop_dkv
  done
  COST+=("$(awk -v a="${OPS_HA[-1]}" -v b="${OPS_SA[-1]}" 'BEGIN { printf "%.1f", (1 - a / b) * 100 }')")
  printf 'run %d  writes/s, %d clients:  standalone %6d, HA %6d (HA costs %s%%)\n' \
    "$r" "$CLIENTS" "${OPS_SA[-1]}" "${OPS_HA[-1]}" "${COST[-1]}"

  # E. The etcd leader dies (last: etcd keeps 2 of 3 members afterwards).
  ha_cluster E
  e0=$(retry cluster_epoch)
  probe_bg 6 "$WORK/E-etcd-leader.json"
  sleep 1.5
  L=$(retry etcd_leader)
  old=$(etcd_status "${ETCD_URL[$L]}" | sed -n 's/.*"member_id":"\([0-9]*\)".*/\1/p')
  T_KILL=$(now_ms)
  kill9 "${ETCD_PID[$L]}"
  unset "ETCD_URL[$L]" "ETCD_PID[$L]"
  probe_wait
  # etcd's own election: from the kill to the first "became leader" a
  # surviving member logged (zap timestamps, ms).
  ts=$({ grep -h 'became leader at term' "$WORK"/etcd*.log || true; } | sed -n 's/.*"ts":"\([^"]*\)".*/\1/p' |
    awk -v t="$(iso_ms "$T_KILL")" '$0 >= t' | sort | head -n1)
  elect=""
  [ -n "$ts" ] && elect=$(($(date -u -d "$ts" +%s%3N) - T_KILL))
  # Cross-check through the gateway: a surviving member names a new leader.
  now_leader=""
  for i in "${!ETCD_URL[@]}"; do
    id=$(etcd_leader_id "${ETCD_URL[$i]}")
    if [ -n "$id" ] && [ "$id" != 0 ] && [ "$id" != "$old" ]; then now_leader=$id; fi
  done
  [ -n "$now_leader" ] || echo "  etcd names no new leader after the probe"
  e1=$(retry cluster_epoch)
  g=$(json_field max_gap_ms "$WORK/E-etcd-leader.json")
  ETCD_GAP+=("$g"); ETCD_ELECT+=("${elect:-99999}")
  if [ "$e0" = "$e1" ]; then ETCD_SAME+=(1); else ETCD_SAME+=(0); fi
  ETCD_OK+=("$(awk -v g="$g" -v e="${elect:-99999}" -v l="$LEASE_MS" 'BEGIN { print (g <= e + l) ? 1 : 0 }')")
  at=$(json_field max_gap_at_s "$WORK/E-etcd-leader.json")
  rel=$(awk -v a="$at" -v k=$((T_KILL - PROBE_T0)) 'BEGIN { printf "%+.0f", a * 1000 - k }')
  printf 'run %d  etcd leader kill -9:      longest write gap %7.1f ms, beginning %s ms from the kill; etcd elected a new leader after %s ms; epoch %s -> %s\n' \
    "$r" "$g" "$rel" "${elect:-(none logged)}" "$e0" "$e1"
  printf '        failed status pushes %s (first +%s ms), coordinator stepped down +%s ms, new grant +%s ms\n' \
    "$(count_since_kill 'server call Status failed' "$WORK"/node*.log)" "$(since_kill 'server call Status failed' "$WORK"/node*.log)" \
    "$(since_kill 'stepping down' "$WORK"/node*.log)" "$(since_kill ': coordinator of epoch' "$WORK"/node*.log)"
  mkdir -p "$WORK/E"; mv "$WORK"/node*.* "$WORK"/server*.* "$WORK/E/" 2>/dev/null || true
  stop_dkv
  for p in "${ETCD_PID[@]}"; do kill9 "$p"; done
  ETCD_PID=(); ETCD_URL=()
  rm -rf "$WORK"/etcd[0-9]
  WORK=$WORK_ROOT
done

# --- the table ------------------------------------------------------------
# med / max of the arguments.
# med / max VALUES...: one decimal (FMT=%.0f for whole numbers).
med() { printf '%s\n' "$@" | sort -g | awk -v f="${FMT:-%.1f}" '{ v[NR] = $1 } END { printf f, (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
max() { printf '%s\n' "$@" | sort -g | tail -n1 | awk -v f="${FMT:-%.1f}" '{ printf f, $1 }'; }
sum() { local s=0 v; for v in "$@"; do s=$((s + v)); done; echo "$s"; }
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }
verdict() { # value goal unit
  if le "$1" "$2"; then echo "met"; else awk -v a="$1" -v b="$2" -v u="$3" 'BEGIN { printf "MISSED by %.0f %s", a - b, u }'; fi
}
row() { printf '%-64s %9s %9s  %-36s %s\n' "$@"; }

n=$RUNS
srv_max=$(max "${SRV_GAP[@]}")
same=$(sum "${SRV_SAME[@]}")
fo_med=$(med "${FO_DOWN[@]}")
el_med=$(med "${ETCD_ELECT[@]}")
etcd_ok=$(sum "${ETCD_OK[@]}")
excess=(); for i in "${!ETCD_GAP[@]}"; do excess+=("$(awk -v g="${ETCD_GAP[$i]}" -v e="${ETCD_ELECT[$i]}" 'BEGIN { printf "%.1f", g - e }')"); done
first_kept_max=$(max "${FIRST_KEPT[@]}")
first_del_max=$(max "${FIRST_DEL[@]}")
sa_med=$(FMT=%.0f med "${OPS_SA[@]}"); ha_med=$(FMT=%.0f med "${OPS_HA[@]}")
cost_med=$(med "${COST[@]}")

echo
echo "HA registry figures: $n runs, $(nproc) cores, loopback, $(date -u '+%Y-%m-%d'); lease-timeout $LEASE_MS ms; etcd $(etcd --version | sed -n 's/^etcd Version: //p') at its default timing; load average now $(loadavg)"
row "figure" "median" "max" "goal" "result"
row "server kill -9 (the nodes' server): longest write gap, ms" "$(med "${SRV_GAP[@]}")" "$srv_max" "<= 50 ms in every run" "$(verdict "$srv_max" 50 ms)"
row "  runs with the epoch unchanged (no failover)" "$same/$n" "" "$n/$n" "$([ "$same" = "$n" ] && echo met || echo "MISSED: $((n - same)) failovers")"
near=0; for v in "${SRV_REL[@]}"; do [ "${v#[-+]}" -le 150 ] && near=$((near + 1)); done
row "  runs whose longest gap began within 150 ms of the kill" "$near/$n" "" "(attribution)" ""
row "  control: the same probe with nothing killed, ms" "$(med "${CTRL_GAP[@]}")" "$(max "${CTRL_GAP[@]}")" "(this machine's noise floor)" ""
row "failover, one server down (kill server, then coordinator), ms" "$fo_med" "$(max "${FO_DOWN[@]}")" "median <= 300 ms" "$(verdict "$fo_med" 300 ms)"
row "failover, every server up (kill coordinator), ms" "$(med "${FO_UP[@]}")" "$(max "${FO_UP[@]}")" "(same runs, side by side)" ""
row "etcd leader kill -9: longest write gap, ms" "$(med "${ETCD_GAP[@]}")" "$(max "${ETCD_GAP[@]}")" "<= etcd election + $LEASE_MS ms, each run" "$([ "$etcd_ok" = "$n" ] && echo met || echo "MISSED in $((n - etcd_ok))/$n runs")"
row "  etcd's own election: kill to a new leader, ms" "$el_med" "$(max "${ETCD_ELECT[@]}")" "(reference)" ""
row "  write gap minus etcd's election, ms" "$(med "${excess[@]}")" "$(max "${excess[@]}")" "<= $LEASE_MS ms" "$(verdict "$(max "${excess[@]}")" "$LEASE_MS" ms)"
row "  runs with the epoch unchanged" "$(sum "${ETCD_SAME[@]}")/$n" "" "(reported)" ""
row "standalone restart, state kept: start -> first write, ms" "$(med "${FIRST_KEPT[@]}")" "$first_kept_max" "<= 1000 ms" "$(verdict "$first_kept_max" 1000 ms)"
row "standalone restart, state deleted: start -> first write, ms" "$(med "${FIRST_DEL[@]}")" "$first_del_max" "<= 1000 ms" "$(verdict "$first_del_max" 1000 ms)"
row "  of which process start -> listening line, ms" "$(med "${UP_KEPT[@]}" "${UP_DEL[@]}")" "$(max "${UP_KEPT[@]}" "${UP_DEL[@]}")" "(reference)" ""
row "writes/s, $CLIENTS clients, ${BENCH_SECS}s: standalone server" "$sa_med" "$(FMT=%.0f max "${OPS_SA[@]}")" "" ""
row "writes/s, $CLIENTS clients, ${BENCH_SECS}s: HA (2 servers, 3 etcd)" "$ha_med" "$(FMT=%.0f max "${OPS_HA[@]}")" "" ""
row "  cost of HA on writes/s (1 - HA/standalone, per run), %" "$cost_med" "$(max "${COST[@]}")" "median <= 5%" "$(verdict "$cost_med" 5 points)"
row "  cost from the medians (1 - median HA / median standalone), %" "$(awk -v a="$ha_med" -v b="$sa_med" 'BEGIN { printf "%.1f", (1 - a / b) * 100 }')" "" "(reference)" ""
row "  etcd CPU, % of one core: HA rows / standalone rows (idle)" "$(FMT=%.0f med "${CPU_ETCD_HA[@]}") / $(FMT=%.0f med "${CPU_ETCD_SA[@]}")" "" "(where the cost goes)" ""
row "  servers' CPU in the HA rows, % of one core" "$(FMT=%.0f med "${CPU_SRV_HA[@]}")" "$(FMT=%.0f max "${CPU_SRV_HA[@]}")" "" ""
row "  failovers during the throughput rows" "$BENCH_FAILOVERS" "" "0" "$([ "$BENCH_FAILOVERS" = 0 ] && echo met || echo MISSED)"
