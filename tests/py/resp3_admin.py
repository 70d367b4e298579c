"""redis-py against a DKV node's RESP port: the handshake and the
introspection commands clients and exporters use.

Usage: resp3_admin.py COORDINATOR REPLICA MODE, with MODE `default`
(redis-py 8's defaults: RESP3 after HELLO 3) or `2` (protocol=2). Prints
"ok" when every check holds; the first one that fails exits non-zero with
a sentence."""

import sys
import time

import redis
from redis.exceptions import ResponseError


def addr(a):
    host, port = a.rsplit(":", 1)
    return host, int(port)


(chost, cport), (rhost, rport) = addr(sys.argv[1]), addr(sys.argv[2])
mode = sys.argv[3]
kw = {} if mode == "default" else {"protocol": 2}
proto = 3 if mode == "default" else 2


def check(cond, what):
    if not cond:
        sys.exit(f"{mode}: {what}")


def text(v):
    return v.decode() if isinstance(v, bytes) else v


r = redis.Redis(chost, cport, socket_timeout=5, **kw)
check(r.ping(), "PING")
check(r.set("greeting", "hello"), "SET")
check(r.get("greeting") == b"hello", "GET")
check(r.get("missing") is None, "GET of a missing key is nil")
r.set("n", 12345)

# HELLO: the handshake redis-py made, and one more by hand.
hello = r.execute_command("HELLO", proto)
if isinstance(hello, list):  # RESP2 has no maps: field/value pairs
    hello = dict(zip(hello[0::2], hello[1::2]))
hello = {text(k): text(v) if isinstance(v, bytes) else v for k, v in hello.items()}
check(hello["proto"] == proto, f"HELLO proto {hello}")
check(hello["mode"] == "standalone" and hello["role"] == "master", f"HELLO {hello}")
check(hello["version"].startswith("7."), f"HELLO version {hello}")
check(isinstance(hello["id"], int) and hello["id"] > 0, f"HELLO id {hello}")
try:
    r.execute_command("HELLO", 4)
    check(False, "HELLO 4 is refused")
except ResponseError as e:
    check("unsupported protocol version" in str(e), f"HELLO 4: {e}")

# CONFIG GET with globs; CONFIG SET refused.
cfg = r.config_get("maxmemory*")
check(cfg.get("maxmemory-policy") == "noeviction" and "maxmemory" in cfg, f"CONFIG GET {cfg}")
many = r.config_get("databases", "save", "appendonly", "cluster-enabled", "port")
check(many == {"databases": "1", "save": "", "appendonly": "no", "cluster-enabled": "no",
               "port": str(cport)}, f"CONFIG GET several {many}")
check(r.config_get("no-such-thing") == {}, "CONFIG GET of nothing")
try:
    r.config_set("maxmemory", "1")
    check(False, "CONFIG SET is refused")
except ResponseError as e:
    check("config.json" in str(e), f"CONFIG SET: {e}")

# INFO, by section.
repl = r.info("replication")
check(repl["role"] == "master" and repl["connected_slaves"] == 2, f"INFO replication {repl}")
check(repl["slave0"]["state"] == "online" and "port" in repl["slave0"], f"slave0 {repl}")
check("redis_version" not in repl, "INFO replication has the replication section only")
server = r.info("server")
check(server["redis_version"].startswith("7.0.0-dkv"), f"INFO server {server}")
check(server["tcp_port"] == cport, f"INFO tcp_port {server}")
everything = r.info("everything")
for field in ["connected_clients", "total_commands_processed", "instantaneous_ops_per_sec",
              "total_connections_received", "aof_enabled", "used_memory", "db0"]:
    check(field in everything, f"INFO everything lacks {field}")
check(everything["db0"]["keys"] >= 2, f"keyspace {everything['db0']}")
check(r.info("nosuchsection") == {}, "an unknown section is empty")
several = r.info("clients", "keyspace")
check("connected_clients" in several and "db0" in several
      and "redis_version" not in several, f"INFO of two sections {several}")

# CLIENT.
my_id = r.client_id()
check(isinstance(my_id, int) and my_id > 0, "CLIENT ID")
check(r.client_setname("py-admin"), "CLIENT SETNAME")
check(r.client_getname() in ("py-admin", b"py-admin"), "CLIENT GETNAME")
info = r.client_info()
check(int(info["id"]) == my_id and info["name"] == "py-admin", f"CLIENT INFO {info}")
check(info["resp"] == str(proto), f"CLIENT INFO resp {info}")
check(info["lib-name"].startswith("redis-py"), f"CLIENT SETINFO lib-name from redis-py: {info}")
listing = r.client_list()
mine = [c for c in listing if c["name"] == "py-admin"]
check(len(mine) == 1 and mine[0]["addr"] and mine[0]["laddr"].endswith(f":{cport}"),
      f"CLIENT LIST {listing}")
check(int(mine[0]["id"]) == my_id and mine[0]["db"] == "0", f"CLIENT LIST entry {mine}")

# CLIENT KILL ends another connection; its client reconnects with a new id.
victim = redis.Redis(chost, cport, socket_timeout=5, **kw)
victim.client_setname("victim")
vid = victim.client_id()
check(r.client_kill_filter(_id=vid) == 1, "CLIENT KILL ID")
check(not [c for c in r.client_list() if int(c["id"]) == vid], "the killed connection is gone")
check(victim.client_id() != vid, "a reconnect gets a new id")
try:
    r.client_kill("1.2.3.4:5")
    check(False, "CLIENT KILL of an unknown address")
except ResponseError as e:
    check("No such client" in str(e), f"CLIENT KILL addr: {e}")

# COMMAND.
cmds = r.command()
check(cmds["get"]["arity"] == 2 and cmds["get"]["first_key_pos"] == 1, f"COMMAND get {cmds['get']}")
check(cmds["mset"]["step_count"] == 2 and cmds["mset"]["last_key_pos"] == -1, "COMMAND mset")
check("readonly" in cmds["get"]["flags"], f"COMMAND get flags {cmds['get']}")
check(r.command_count() == len(cmds), "COMMAND COUNT")
check([text(k) for k in r.command_getkeys("MSET", "a", "1", "b", "2")] == ["a", "b"], "GETKEYS")
info = r.execute_command("COMMAND", "INFO", "incr", "expire")
check(info["incr"]["arity"] == 2 and info["expire"]["arity"] == -3, f"COMMAND INFO {info}")
strings = [text(n) for n in r.command_list(category="string")]
check("incrbyfloat" in strings and "del" not in strings, f"COMMAND LIST FILTERBY ACLCAT {strings}")
check([text(n) for n in r.command_list(pattern="pexpire*")] == ["pexpire", "pexpireat", "pexpiretime"],
      "COMMAND LIST FILTERBY PATTERN")

# ROLE, WAIT, TIME, OBJECT, DBSIZE.
role = r.role()
check(text(role[0]) == "master" and isinstance(role[1], int) and len(role[2]) == 2, f"ROLE {role}")
rep_host, rep_port, _ = (text(x) for x in role[2][0])
check(rep_host == "127.0.0.1" and int(rep_port) > 0, f"ROLE replica {role}")
check(r.wait(2, 1000) == 2, "WAIT counts the in-sync replicas")
secs, micros = r.time()
check(abs(secs - time.time()) < 3600 and 0 <= micros < 1_000_000, "TIME")
check(text(r.object("encoding", "n")) == "int", "OBJECT ENCODING int")
check(text(r.object("encoding", "greeting")) == "embstr", "OBJECT ENCODING embstr")
check(r.object("encoding", "missing") is None, "OBJECT ENCODING of a missing key")
check(r.dbsize() >= 2, "DBSIZE")

# The replica answers as a replica.
rep = redis.Redis(rhost, rport, socket_timeout=5, **kw)
role = rep.role()
check(text(role[0]) == "slave" and text(role[1]) == chost and role[2] == cport, f"replica ROLE {role}")
check(text(role[3]) == "connected", f"replica ROLE state {role}")
check(rep.info("replication")["role"] == "slave", "replica INFO")
try:
    rep.wait(1, 0)
    check(False, "WAIT on a replica")
except ResponseError as e:
    check("replica" in str(e), f"replica WAIT: {e}")
check(rep.get("greeting") == b"hello", "a replica forwards reads")

print("ok", flush=True)
