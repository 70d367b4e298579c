#!/usr/bin/env bash
# `make demo`: a local DKV cluster doing real work on loopback.
# Starts a server and three nodes, writes / reads / deletes through
# client_proto, adds a fourth node and shows that it caught up, then kills
# the coordinator with kill -9 and shows the failover: the new coordinator,
# the time from the kill to the first acknowledged write, and every key.
# Every process it starts is stopped on exit, also on Ctrl-C; its logs are
# removed then unless KEEP=1 (`make demo KEEP=1`). Commands are printed as
# they can be pasted into a shell at the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
WORK=$(mktemp -d -t dkv-demo.XXXXXX)
. scripts/lib.sh

# The cluster runs as it should on any shared network: with a cluster secret
# (generated here, handed over in the environment, never on a command line),
# so every beacon and every node-to-node message is authenticated.
if [ -z "${DKV_CLUSTER_SECRET:-}" ]; then
  DKV_CLUSTER_SECRET=$(head -c 32 /dev/urandom | base64)
  export DKV_CLUSTER_SECRET
fi

# And with TLS on every port: a throw-away CA and one certificate for the
# processes on this machine (scripts/make-certs.sh), named in the environment
# for the server and nodes (DKV_TLS_*_FILE) and for the clients (DKV_TLS_CA).
if [ -z "${DKV_TLS_CERT_FILE:-}" ]; then
  bash scripts/make-certs.sh "$WORK/certs" node
  export DKV_TLS_CERT_FILE=$WORK/certs/node.pem DKV_TLS_KEY_FILE=$WORK/certs/node.key
  export DKV_TLS_CA_FILE=$WORK/certs/ca.pem DKV_TLS_CA=$WORK/certs/ca.pem
fi

logs=""
if keep_logs; then logs=" (logs in $WORK, kept after the demo: KEEP=$KEEP)"; fi
say "starting a server and three nodes on loopback, with a cluster secret and TLS$logs"
start_server
echo "server: $SERVER"
for n in 1 2 3; do start_node "$n"; done
wait_in_sync 3

say "writing, reading and deleting with client_proto"
run "$BIN/client_proto" "$SERVER" W,city,Lisbon 'W,note,hello\, world' R,city R,note
run "$BIN/client_proto" "$SERVER" D,city
set +e
run "$BIN/client_proto" "$SERVER" R,city
echo "(exit code $? — 1 means: key not found)"
set -e
echo "\$ value=\$($(quote "$BIN/client_proto" "$SERVER" R,note))"
value=$("$BIN/client_proto" "$SERVER" R,note)
echo "a script reads a value: note=\"$value\""

say "the scripted client: write 20 keys, read them back, delete half"
echo "\$ $(quote "$BIN/dkv-client" demo "$SERVER" --keys 20) | tail -n 3"
"$BIN/dkv-client" demo "$SERVER" --keys 20 | tail -n 3

say "writing 500 more keys in one client_proto call"
echo "\$ $(quote "$BIN/client_proto" "$SERVER") \$(for i in \$(seq 1 500); do echo W,bulk-\$i,value-\$i; done) | sort | uniq -c"
args=()
for i in $(seq 1 500); do args+=("W,bulk-$i,value-$i"); done
"$BIN/client_proto" "$SERVER" "${args[@]}" | sort | uniq -c

say "cluster status: every node at the same log position with the same digest"
show_status

say "adding a fourth node: it gets a copy, then joins the in-sync set"
start_node 4
wait_in_sync 4
show_status

say "failover: kill -9 the coordinator while a client keeps writing"
"$BIN/dkv-client" probe "$SERVER" --duration 2 >"$WORK/probe.txt" &
probe=$!
sleep 0.5
c=$(coordinator_label)
echo "killing the coordinator, node ${NODE_ID[$c]} (pid ${NODE_PID[$c]})"
kill -9 "${NODE_PID[$c]}"
t0=$(now_ms)
until "$BIN/client_proto" --timeout 200 "$SERVER" W,after-failover,yes >/dev/null 2>&1; do :; done
t1=$(now_ms)
wait "$probe"
echo "first write acknowledged $((t1 - t0)) ms after the kill (measured from this script, process start-up included)"
explain_probe "$WORK/probe.txt" "the probe sent the write as the coordinator was killed, and no answer came"
show_status

say "every key written before the kill is still there"
missing=0
for i in $(seq 1 500); do
  v=$("$BIN/client_proto" "$SERVER" "R,bulk-$i" 2>/dev/null || true)
  [ "$v" = "value-$i" ] || missing=$((missing + 1))
done
echo "read back 500 bulk keys from the new coordinator: $((500 - missing)) present, $missing missing"
[ "$missing" -eq 0 ]
run "$BIN/client_proto" "$SERVER" R,note R,after-failover

say "demo finished; stopping every process"
