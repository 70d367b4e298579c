#!/usr/bin/env bash
# `make demo-ha`: the HA registry on loopback. Starts a 3-member etcd
# cluster, two dkv-servers over it and three nodes given both servers;
# writes keys with client_proto; kills one server with kill -9 and shows that
# writes and reads go on with no failover (same epoch); then kills the
# coordinator and shows the failover through the remaining server (new
# epoch, new coordinator) and that every key written reads back.
# Every process it starts is stopped on exit, also on Ctrl-C; etcd's data
# and every log live in a temp directory, removed on exit unless KEEP=1
# (`make demo-ha KEEP=1`). Commands are printed as they can be pasted into
# a shell at the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
WORK=$(mktemp -d -t dkv-demo-ha.XXXXXX)
. scripts/lib.sh
need_etcd

# As in `make demo`: a cluster secret, generated for the run and handed over
# in the environment, so servers and nodes authenticate each other.
if [ -z "${DKV_CLUSTER_SECRET:-}" ]; then
  DKV_CLUSTER_SECRET=$(head -c 32 /dev/urandom | base64)
  export DKV_CLUSTER_SECRET
fi
ETCD_PREFIX=/dkv/demo-ha/

logs=""
if keep_logs; then logs=" (data and logs in $WORK, kept after the demo: KEEP=$KEEP)"; fi
say "starting a 3-member etcd cluster on loopback$logs"
start_etcd 3
for i in 1 2 3; do echo "etcd member e$i: ${ETCD_URL[$i]} (pid ${ETCD_PID[$i]})"; done
echo "etcd leader: e$(etcd_leader)"

say "starting two dkv-servers over etcd, sharing the registry under $ETCD_PREFIX"
SERVER=""
for s in 1 2; do start_ha_server "$s" --sentinel-listen 127.0.0.1:0; done
echo "server list given to nodes and clients: $SERVER"

say "starting three nodes, each given both servers"
for n in 1 2 3; do start_node "$n"; done
wait_in_sync 3
show_status

say "writing and reading with client_proto (through either server)"
run "$BIN/client_proto" "$SERVER" W,city,Lisbon 'W,note,hello\, world' R,city R,note
run "$BIN/client_proto" "${SERVER_ADDR[2]}" R,city
args=()
for i in $(seq 1 300); do args+=("W,bulk-$i,value-$i"); done
echo "\$ $(quote "$BIN/client_proto" "$SERVER") \$(for i in \$(seq 1 300); do echo W,bulk-\$i,value-\$i; done) | sort | uniq -c"
"$BIN/client_proto" "$SERVER" "${args[@]}" | sort | uniq -c

say "what the servers keep in etcd"
echo "\$ $(quote env ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINTS" get --prefix --keys-only "$ETCD_PREFIX") | sed '/^\$/d'"
env ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINTS" get --prefix --keys-only "$ETCD_PREFIX" | sed '/^$/d'
echo "the view record (epoch, coordinator, members, in-sync set):"
echo "\$ $(quote env ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINTS" get --print-value-only "${ETCD_PREFIX}view") | cut -c1-300"
ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINTS" get --print-value-only "${ETCD_PREFIX}view" | cut -c1-300

if command -v redis-cli >/dev/null; then
  # With TLS on (the DKV_TLS_* variables), redis-cli speaks it too.
  rcli=(redis-cli ${DKV_TLS_CA:+--tls --cacert "$DKV_TLS_CA"} -p "${SERVER_SENTINEL[2]##*:}")
  say "Sentinel users are given every server's Sentinel port; each lists the others"
  run "${rcli[@]}" SENTINEL get-master-addr-by-name dkv
  echo "its ip and port fields: server 1's Sentinel port"
  echo "\$ $(quote "${rcli[@]}" SENTINEL sentinels dkv) | paste -d' ' - - | grep -E '^(ip|port) '"
  "${rcli[@]}" SENTINEL sentinels dkv | paste -d' ' - - | grep -E '^(ip|port) ' || true
fi

say "kill -9 server 1 (${SERVER_ADDR[1]}), the server every node talks to, while a client keeps writing"
epoch0=$(cluster_epoch)
coord0=$(coordinator_label)
"$BIN/dkv-client" probe "$SERVER" --duration 2 --key probe-server >"$WORK/probe1.txt" &
probe=$!
PIDS+=($probe)
sleep 0.7
kill9 "${SERVER_PID[1]}"
echo "killed server 1 (pid ${SERVER_PID[1]})"
run "$BIN/client_proto" "$SERVER" W,after-server-kill,yes R,after-server-kill R,city
wait "$probe"
forget "$probe"
explain_probe "$WORK/probe1.txt"
echo "what the nodes logged:"
grep -h "server ${SERVER_ADDR[1]} unreachable" "$WORK"/node*.log | sed 's/^/  /' || true
show_status
epoch1=$(cluster_epoch)
if [ "$epoch1" = "$epoch0" ] && [ "$(coordinator_label)" = "$coord0" ]; then
  echo "epoch $epoch0 before the kill, $epoch1 after, same coordinator (node ${NODE_ID[$coord0]}): no failover"
else
  echo "UNEXPECTED: epoch went from $epoch0 to $epoch1 when only a server died" >&2
  exit 1
fi

say "failover through the remaining server: kill -9 the coordinator while a client keeps writing"
"$BIN/dkv-client" probe "$SERVER" --duration 2 --key probe-failover >"$WORK/probe2.txt" &
probe=$!
PIDS+=($probe)
sleep 0.5
c=$(coordinator_label)
echo "killing the coordinator, node ${NODE_ID[$c]} (pid ${NODE_PID[$c]}); only server 2 is left"
kill -9 "${NODE_PID[$c]}"
t0=$(now_ms)
forget "${NODE_PID[$c]}"
until "$BIN/client_proto" --timeout 200 "$SERVER" W,after-failover,yes >/dev/null 2>&1; do :; done
t1=$(now_ms)
wait "$probe"
forget "$probe"
echo "first write acknowledged $((t1 - t0)) ms after the kill (measured from this script, process start-up included)"
explain_probe "$WORK/probe2.txt" "the probe sent the write as the coordinator was killed, and no answer came"
echo "what server 2 logged:"
grep -h "granted epoch" "$WORK/server2.log" | sed 's/^/  /' || true
show_status
epoch2=$(cluster_epoch)
c2=$(coordinator_label)
if [ "$epoch2" -gt "$epoch1" ] && [ "$c2" != "$c" ]; then
  echo "epoch $epoch1 -> $epoch2, coordinator node ${NODE_ID[$c]} -> node ${NODE_ID[$c2]}, granted through server 2"
else
  echo "UNEXPECTED: no new epoch after the coordinator died (epoch $epoch2)" >&2
  exit 1
fi

say "every key written so far reads back"
missing=0
for i in $(seq 1 300); do
  v=$("$BIN/client_proto" "$SERVER" "R,bulk-$i" 2>/dev/null || true)
  [ "$v" = "value-$i" ] || missing=$((missing + 1))
done
echo "read back 300 bulk keys from the new coordinator: $((300 - missing)) present, $missing missing"
run "$BIN/client_proto" "$SERVER" R,city R,note R,after-server-kill R,after-failover
[ "$missing" -eq 0 ]

say "demo finished; stopping every process"
