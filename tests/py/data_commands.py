"""The data commands applications use, through redis-py with its defaults
(RESP3), against one DKV node's RESP port (a replica forwards to the
coordinator). Replies and error texts are checked against what Redis gives.
Usage: data_commands.py HOST:PORT KEY-PREFIX [PROTOCOL]: without PROTOCOL,
redis-py's default. Prints "ok" on success."""

import sys
import time

import redis

host, port = sys.argv[1].rsplit(":", 1)
p = sys.argv[2]
kwargs = {"protocol": int(sys.argv[3])} if len(sys.argv) > 3 else {}
r = redis.Redis(host=host, port=int(port), socket_timeout=5, **kwargs)


def k(name):
    return f"{p}{name}"


def expect_error(text, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except redis.ResponseError as e:
        assert text in str(e), f"{fn.__name__}: {e!r} lacks {text!r}"
        return
    raise AssertionError(f"{fn.__name__}{args} did not fail")


# SET options, sessions and locks.
assert r.set(k("s"), "v", ex=60)
assert 55 <= r.ttl(k("s")) <= 60
assert r.set(k("lock"), "me", nx=True, px=30000)
assert r.set(k("lock"), "you", nx=True, px=30000) is None
assert r.get(k("lock")) == b"me"
assert r.set(k("lock"), "me2", xx=True, keepttl=True)
assert r.pttl(k("lock")) > 25000
assert r.set(k("lock"), "me3", get=True) == b"me2"
assert r.ttl(k("lock")) == -1
assert r.ttl(k("nothing")) == -2
assert r.setnx(k("nx"), "1") is True
assert r.setnx(k("nx"), "2") is False
assert r.setex(k("sx"), 100, "v") and 95 <= r.ttl(k("sx")) <= 100
assert r.psetex(k("psx"), 100000, "v") and r.pttl(k("psx")) > 90000
assert r.getset(k("nx"), "3") == b"1"
assert r.getdel(k("nx")) == b"3" and r.get(k("nx")) is None
assert r.getex(k("sx"), persist=True) == b"v" and r.ttl(k("sx")) == -1
expect_error("invalid expire time", r.set, k("bad"), "v", ex=0)

# Expiry.
r.set(k("e"), "v")
assert r.expire(k("e"), 100) is True
assert r.expire(k("e"), 50, gt=True) is False
assert r.expire(k("e"), 200, gt=True) is True
assert r.expire(k("e"), 10, nx=True) is False
assert r.persist(k("e")) is True and r.ttl(k("e")) == -1
assert r.expireat(k("e"), int(time.time()) + 100) and r.ttl(k("e")) > 90
assert r.expiretime(k("e")) > time.time()
r.set(k("gone"), "v", px=50)
deadline = time.time() + 10
while r.get(k("gone")) is not None:
    assert time.time() < deadline, "a key with a 50 ms TTL never expired"
    time.sleep(0.02)
assert r.exists(k("gone")) == 0

# Counters.
assert r.incr(k("n")) == 1
assert r.incrby(k("n"), 10) == 11
assert r.decr(k("n")) == 10
assert r.decrby(k("n"), 5) == 5
assert r.incrbyfloat(k("f"), 10.5) == 10.5
assert r.incrbyfloat(k("f"), 0.1) == 10.6
r.set(k("str"), "abc")
expect_error("value is not an integer or out of range", r.incr, k("str"))
r.set(k("big"), str(2**63 - 1))
expect_error("increment or decrement would overflow", r.incr, k("big"))

# Strings.
assert r.append(k("str"), "def") == 6
assert r.strlen(k("str")) == 6
assert r.getrange(k("str"), 1, -2) == b"bcde"
assert r.setrange(k("str"), 3, "XY") == 6 and r.get(k("str")) == b"abcXYf"
assert r.mset({k("m1"): "1", k("m2"): "2"})
assert r.mget(k("m1"), k("m2"), k("none")) == [b"1", b"2", None]
assert r.msetnx({k("m1"): "x", k("m3"): "3"}) is False and r.get(k("m3")) is None

# Keyspace.
assert r.type(k("m1")) == b"string" and r.type(k("none")) == b"none"
assert r.rename(k("m1"), k("m1r")) and r.get(k("m1r")) == b"1"
assert r.renamenx(k("m1r"), k("m2")) is False
expect_error("no such key", r.rename, k("none"), k("x"))
assert r.copy(k("m2"), k("m2c")) and r.get(k("m2c")) == b"2"
assert r.unlink(k("m2c")) == 1
assert r.delete(k("m1r"), k("none")) == 1
for i in range(50):
    r.set(k(f"scan:{i}"), i)
found = set(r.scan_iter(match=k("scan:*"), count=7))
assert found == {k(f"scan:{i}").encode() for i in range(50)}, len(found)
assert len(r.keys(k("scan:1*"))) == 11
assert r.randomkey() is not None
assert r.dbsize() >= 50

# Transactions: MULTI/EXEC, WATCH as a compare-and-set.
with r.pipeline() as pipe:
    pipe.incr(k("t1")).incr(k("t2")).set(k("t3"), "x")
    assert pipe.execute() == [1, 1, True]
with r.pipeline() as pipe:
    pipe.watch(k("t1"))
    r.incr(k("t1"))  # another client changes it
    pipe.multi()
    pipe.incr(k("t1"))
    try:
        pipe.execute()
        raise AssertionError("EXEC ran although a watched key changed")
    except redis.WatchError:
        pass
with r.pipeline() as pipe:
    pipe.watch(k("t1"))
    v = int(pipe.get(k("t1")))
    pipe.multi()
    pipe.set(k("t1"), v + 10)
    assert pipe.execute() == [True]
assert int(r.get(k("t1"))) == 12
# A runtime error inside EXEC fails that command only, as in Redis.
with r.pipeline() as pipe:
    pipe.incr(k("str")).incr(k("t2"))
    res = pipe.execute(raise_on_error=False)
    assert isinstance(res[0], redis.ResponseError) and res[1] == 2, res
# A syntax error while queueing discards the transaction.
conn = r.connection_pool.get_connection()
conn.send_command("MULTI")
assert conn.read_response() in (b"OK", "OK")
conn.send_command("SET", k("x"))
try:
    conn.read_response()
    raise AssertionError("SET with one argument was queued")
except redis.ResponseError:
    pass
conn.send_command("EXEC")
try:
    conn.read_response()
    raise AssertionError("EXEC ran after a queueing error")
except redis.ResponseError as e:
    assert isinstance(e, redis.exceptions.ExecAbortError), repr(e)
r.connection_pool.release(conn)
assert r.get(k("x")) is None

expect_error("unknown command", r.execute_command, "LPUSH", k("l"), "x")
print("ok", flush=True)
