"""redis-py's Sentinel client given every DKV server's Sentinel port, while
one server is killed.

argv: the Sentinel addresses (host:port ...), the first being the one the
test kills. Phase 1: 100 writes acknowledged through master_for, then prints
"killing" and waits for a line on stdin. Phase 2: 100 more writes, each
after a fresh discover_master, which must skip the dead server and name the
same coordinator as before (a server's death is no failover), and a fresh
master_for connection pool every 20 writes. Then every acknowledged write
must read back. Write errors are retried until a 30 s deadline. Prints
"ok N errors E ..." on success; any failure exits non-zero with a
sentence."""

import sys
import time

from redis.exceptions import ConnectionError, ReadOnlyError, ResponseError, TimeoutError
from redis.sentinel import MasterNotFoundError, Sentinel

addrs = []
for a in sys.argv[1:]:
    host, port = a.rsplit(":", 1)
    addrs.append((host, int(port)))
# Pinned to RESP2 (redis-py 8's default is RESP3, which sentinel_failover.py
# runs in its `default` mode).
sentinel = Sentinel(
    addrs, socket_timeout=2.0, protocol=2, sentinel_kwargs={"protocol": 2, "socket_timeout": 2.0}
)


def master():
    return sentinel.master_for("dkv", socket_timeout=2.0, protocol=2)


db = master()
acked = {}
errors = []
i = 0


def write(n_more, rediscover):
    global i, db
    target = len(acked) + n_more
    deadline = time.time() + 30
    while len(acked) < target:
        if time.time() > deadline:
            sys.exit(f"only {len(acked)} writes acknowledged; errors {errors[-3:]}")
        if rediscover:
            try:
                now = sentinel.discover_master("dkv")
            except MasterNotFoundError as e:
                sys.exit(f"no sentinel named the master after the kill: {e}")
            if now != first:
                sys.exit(f"the master moved from {first} to {now}: a failover happened")
            if len(acked) % 20 == 0:
                db = master()
        i += 1
        key, value = f"py-{i}", f"v{i}"
        try:
            if db.set(key, value):
                acked[key] = value
        except (ConnectionError, TimeoutError, ReadOnlyError, ResponseError) as e:
            # Counted and retried (with a new key) until the deadline.
            errors.append(repr(e))
            time.sleep(0.02)


first = sentinel.discover_master("dkv")
write(100, False)
print("killing", flush=True)
sys.stdin.readline()
write(100, True)
for key, value in acked.items():
    got = db.get(key)
    if got is None or got.decode() != value:
        sys.exit(f"acknowledged write {key}={value} reads back as {got!r}")
print(f"ok {len(acked)} errors {len(errors)} {errors[:3]}", flush=True)
