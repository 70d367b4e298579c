"""Writes through redis-py's Sentinel support to a DKV cluster across a
failover. Phase 1: 200 acknowledged writes, then prints "killing" and waits
for a line on stdin (the test kills the coordinator). Phase 2: keeps writing,
retrying connection errors, until 200 more writes are acknowledged. Then
every acknowledged write must read back. Prints "ok N" on success.

Usage: sentinel_failover.py HOST:PORT [resp2|default]. `resp2` (the
default mode) asks for RESP2 everywhere; `default` passes no protocol
argument, so redis-py 8 speaks RESP3 (HELLO 3) to the Sentinel port and to
the nodes."""

import sys
import time

from redis.exceptions import ConnectionError, ReadOnlyError, ResponseError, TimeoutError
from redis.sentinel import MasterNotFoundError, Sentinel

host, port = sys.argv[1].rsplit(":", 1)
mode = sys.argv[2] if len(sys.argv) > 2 else "resp2"
if mode == "resp2":
    sentinel = Sentinel(
        [(host, int(port))], socket_timeout=2.0, protocol=2, sentinel_kwargs={"protocol": 2}
    )
    master = sentinel.master_for("dkv", socket_timeout=2.0, protocol=2)
elif mode == "default":
    # redis-py's defaults: RESP3 (HELLO 3) on every connection.
    sentinel = Sentinel([(host, int(port))], socket_timeout=2.0)
    master = sentinel.master_for("dkv", socket_timeout=2.0)
else:
    sys.exit(f"unknown mode {mode!r}")
acked = {}
i = 0


def write_until(n):
    global i
    deadline = time.time() + 30
    while len(acked) < n:
        if time.time() > deadline:
            sys.exit(f"only {len(acked)} writes acknowledged")
        i += 1
        key, value = f"py-{i}", f"v{i}"
        try:
            if master.set(key, value):
                acked[key] = value
        except (ConnectionError, TimeoutError, MasterNotFoundError, ReadOnlyError, ResponseError):
            time.sleep(0.02)


write_until(200)
print("killing", flush=True)
sys.stdin.readline()
write_until(400)
for key, value in acked.items():
    for _ in range(100):
        try:
            got = master.get(key)
            break
        except (ConnectionError, TimeoutError, MasterNotFoundError):
            time.sleep(0.05)
    if got is None or got.decode() != value:
        sys.exit(f"acknowledged write {key}={value} reads back as {got!r}")
print(f"ok {len(acked)}", flush=True)
