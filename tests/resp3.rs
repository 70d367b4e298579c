//! RESP3 and the introspection commands, with clients nobody here wrote:
//! redis-py 8 with its defaults (RESP3) and with `protocol=2` against the
//! node's RESP port, redis-py's and ioredis's Sentinel support across a
//! coordinator kill -9 (ioredis listening for `+switch-master`), and raw
//! sockets for the exact bytes of RESP3 and the unchanged RESP2. A missing
//! tool fails under CI and is a recorded skip elsewhere
//! (`tests/common/skip.rs`); `.ci/run` installs them (`npm ci --prefix
//! tests/js` for ioredis).

mod common;

use common::*;
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

/// One RESP2 or RESP3 value, as read off a socket.
#[derive(Clone, Debug, PartialEq)]
enum V {
    Simple(String),
    Err(String),
    Int(i64),
    Bulk(Vec<u8>),
    /// `$-1` (RESP2)
    NilBulk,
    /// `_` (RESP3)
    Null,
    Array(Vec<V>),
    Map(Vec<(V, V)>),
    Set(Vec<V>),
    Double(String),
    Bool(bool),
    Verbatim(String),
    Push(Vec<V>),
}

impl V {
    fn text(&self) -> String {
        match self {
            V::Simple(s) | V::Err(s) | V::Double(s) | V::Verbatim(s) => s.clone(),
            V::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("not text: {other:?}"),
        }
    }

    /// The value under `key` in a map.
    fn get(&self, key: &str) -> &V {
        let V::Map(pairs) = self else {
            panic!("not a map: {self:?}")
        };
        &pairs
            .iter()
            .find(|(k, _)| k.text() == key)
            .unwrap_or_else(|| panic!("no {key} in {self:?}"))
            .1
    }
}

/// Parses one value at the front of `b`: the value and its length, or
/// `None` while it is incomplete.
fn parse(b: &[u8]) -> Option<(V, usize)> {
    let nl = b.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&b[1..nl]).expect("a RESP line is text");
    let after = nl + 2;
    let n = || line.parse::<i64>().expect("a RESP length");
    let items = |count: usize| -> Option<(Vec<V>, usize)> {
        let mut pos = after;
        let mut out = Vec::new();
        for _ in 0..count {
            let (v, used) = parse(&b[pos..])?;
            out.push(v);
            pos += used;
        }
        Some((out, pos))
    };
    Some(match b[0] {
        b'+' => (V::Simple(line.into()), after),
        b'-' => (V::Err(line.into()), after),
        b':' => (V::Int(n()), after),
        b',' => (V::Double(line.into()), after),
        b'#' => (V::Bool(line == "t"), after),
        b'_' => (V::Null, after),
        b'$' if n() < 0 => (V::NilBulk, after),
        b'$' | b'=' => {
            let len = n() as usize;
            if b.len() < after + len + 2 {
                return None;
            }
            let body = b[after..after + len].to_vec();
            let v = if b[0] == b'$' {
                V::Bulk(body)
            } else {
                V::Verbatim(String::from_utf8(body).unwrap())
            };
            (v, after + len + 2)
        }
        b'*' if n() < 0 => (V::NilBulk, after),
        b'*' => {
            let (v, used) = items(n() as usize)?;
            (V::Array(v), used)
        }
        b'~' => {
            let (v, used) = items(n() as usize)?;
            (V::Set(v), used)
        }
        b'>' => {
            let (v, used) = items(n() as usize)?;
            (V::Push(v), used)
        }
        b'%' => {
            let (v, used) = items(2 * n() as usize)?;
            let mut it = v.into_iter();
            let mut pairs = Vec::new();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((k, v));
            }
            (V::Map(pairs), used)
        }
        other => panic!("unknown RESP type byte {:?}", other as char),
    })
}

/// A raw RESP connection.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    fn open(addr: &str) -> Raw {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        Raw { s, buf: Vec::new() }
    }

    fn send(&mut self, args: &[&str]) {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.s.write_all(&resp_command(&args)).unwrap();
    }

    /// The exact bytes of the next reply (waits for it).
    fn next_bytes(&mut self) -> Vec<u8> {
        loop {
            if let Some((_, used)) = parse(&self.buf) {
                return self.buf.drain(..used).collect();
            }
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk).expect("a reply before PATIENCE");
            assert!(
                n > 0,
                "connection closed; had {:?}",
                self.buf.escape_ascii()
            );
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn next(&mut self) -> V {
        parse(&self.next_bytes()).unwrap().0
    }

    fn raw(&mut self, args: &[&str]) -> Vec<u8> {
        self.send(args);
        self.next_bytes()
    }

    fn call(&mut self, args: &[&str]) -> V {
        self.send(args);
        self.next()
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn port_of(addr: &str) -> &str {
    addr.rsplit_once(':').unwrap().1
}

#[test]
fn raw_resp3_encodings_and_resp2_unchanged() {
    let c = Cluster::start("resp3-raw", 1, json!({}));
    let addr = &c.nodes[0].resp_addr;

    // A connection that never says HELLO stays RESP2, byte for byte.
    let mut two = Raw::open(addr);
    assert_eq!(two.raw(&["GET", "nope"]), b"$-1\r\n");
    assert_eq!(
        two.raw(&["CONFIG", "GET", "databases"]),
        b"*2\r\n$9\r\ndatabases\r\n$1\r\n1\r\n"
    );
    let info = two.raw(&["COMMAND", "INFO", "get"]);
    assert!(
        info.starts_with(b"*1\r\n*10\r\n$3\r\nget\r\n:2\r\n*2\r\n+readonly\r\n+fast\r\n"),
        "{}",
        info.escape_ascii()
    );
    assert!(two.raw(&["INFO", "server"]).starts_with(b"$"));
    let hello = two.raw(&["HELLO"]);
    assert!(
        hello.starts_with(b"*14\r\n$6\r\nserver\r\n"),
        "{}",
        hello.escape_ascii()
    );
    assert!(contains(&hello, b"$5\r\nproto\r\n:2\r\n"));

    // HELLO 3: a map, then RESP3 types.
    let mut three = Raw::open(addr);
    let hello = three.raw(&["HELLO", "3", "SETNAME", "raw3"]);
    assert!(hello.starts_with(b"%7\r\n"), "{}", hello.escape_ascii());
    let h = parse(&hello).unwrap().0;
    assert_eq!(h.get("proto"), &V::Int(3));
    assert_eq!(h.get("mode").text(), "standalone");
    assert_eq!(h.get("role").text(), "master");
    assert_eq!(h.get("modules"), &V::Array(vec![]));
    let V::Int(id) = h.get("id") else { panic!() };
    assert_eq!(three.call(&["CLIENT", "ID"]), V::Int(*id));
    assert_eq!(
        three.call(&["CLIENT", "GETNAME"]),
        V::Bulk(b"raw3".to_vec())
    );
    assert_eq!(three.raw(&["GET", "nope"]), b"_\r\n", "RESP3 null");
    assert_eq!(
        three.raw(&["CONFIG", "GET", "databases"]),
        b"%1\r\n$9\r\ndatabases\r\n$1\r\n1\r\n",
        "RESP3 map"
    );
    let info = three.raw(&["INFO", "server"]);
    assert!(info.starts_with(b"="), "{}", info.escape_ascii());
    let V::Verbatim(text) = parse(&info).unwrap().0 else {
        panic!()
    };
    assert!(text.starts_with("txt:# Server\r\n"), "{text}");
    let cmd = three.raw(&["COMMAND", "INFO", "get"]);
    assert!(
        contains(&cmd, b"~2\r\n+readonly\r\n+fast\r\n"),
        "RESP3 set: {}",
        cmd.escape_ascii()
    );
    let client = three.call(&["CLIENT", "INFO"]);
    assert!(matches!(&client, V::Verbatim(t) if t.contains(" resp=3 ") && t.contains("name=raw3")));
    assert_eq!(
        three.call(&["HELLO", "4"]),
        V::Err("NOPROTO unsupported protocol version".into())
    );
    // Back to RESP2.
    let hello = three.raw(&["HELLO", "2"]);
    assert!(hello.starts_with(b"*14\r\n"), "{}", hello.escape_ascii());
    assert_eq!(three.raw(&["GET", "nope"]), b"$-1\r\n");
    // The RESP2 connection never saw any of it.
    assert_eq!(two.raw(&["GET", "nope"]), b"$-1\r\n");
}

#[test]
fn sentinel_speaks_resp3_and_publishes_switch_master_on_a_failover() {
    let mut c = Cluster::start("resp3-sentinel", 3, json!({}));
    let sentinel = c.server.resp_addr.clone();

    let mut three = Raw::open(&sentinel);
    let h = three.call(&["HELLO", "3"]);
    assert_eq!(h.get("mode").text(), "sentinel");
    assert_eq!(h.get("proto"), &V::Int(3));
    let V::Map(fields) = &h else { panic!() };
    assert!(
        !fields.iter().any(|(k, _)| k.text() == "role"),
        "a Sentinel's HELLO has no role: {h:?}"
    );
    let masters = three.call(&["SENTINEL", "masters"]);
    let V::Array(m) = &masters else {
        panic!("{masters:?}")
    };
    assert_eq!(m[0].get("name").text(), "dkv");
    assert_eq!(
        three.raw(&["SUBSCRIBE", "+switch-master"]),
        b">3\r\n$9\r\nsubscribe\r\n$14\r\n+switch-master\r\n:1\r\n"
    );
    // RESP3 allows other commands while subscribed.
    assert_eq!(three.call(&["PING"]), V::Simple("PONG".into()));

    let mut two = Raw::open(&sentinel);
    two.send(&["SUBSCRIBE", "+switch-master", "+sdown"]);
    let mut both = two.next_bytes();
    both.extend(two.next_bytes());
    assert_eq!(
        both,
        b"*3\r\n$9\r\nsubscribe\r\n$14\r\n+switch-master\r\n:1\r\n\
          *3\r\n$9\r\nsubscribe\r\n$6\r\n+sdown\r\n:2\r\n"
    );
    assert!(
        matches!(two.call(&["SENTINEL", "masters"]), V::Err(e) if e.contains("only (P|S)SUBSCRIBE"))
    );
    assert_eq!(
        two.raw(&["PING"]),
        b"*2\r\n$4\r\npong\r\n$0\r\n\r\n",
        "RESP2 PING while subscribed"
    );
    assert_eq!(
        two.raw(&["UNSUBSCRIBE", "+sdown"]),
        b"*3\r\n$11\r\nunsubscribe\r\n$6\r\n+sdown\r\n:1\r\n"
    );

    let mut pattern = Raw::open(&sentinel);
    assert_eq!(
        pattern.call(&["PSUBSCRIBE", "+switch-*"]),
        V::Array(vec![
            V::Bulk(b"psubscribe".to_vec()),
            V::Bulk(b"+switch-*".to_vec()),
            V::Int(1)
        ])
    );
    // Subscribed and left again: gets nothing, and commands work again.
    let mut left = Raw::open(&sentinel);
    left.call(&["SUBSCRIBE", "+switch-master"]);
    assert_eq!(
        left.call(&["UNSUBSCRIBE"]),
        V::Array(vec![
            V::Bulk(b"unsubscribe".to_vec()),
            V::Bulk(b"+switch-master".to_vec()),
            V::Int(0)
        ])
    );
    assert!(matches!(left.call(&["SENTINEL", "masters"]), V::Array(_)));

    let old = c.coordinator();
    let old_port = port_of(&c.nodes[old].resp_addr).to_string();
    c.nodes[old].kill();
    // The messages are the event to wait for (read timeout: PATIENCE).
    let msg3 = three.next();
    let msg2 = two.next();
    let pmsg = pattern.next();
    let new = c.coordinator();
    assert_ne!(new, old);
    let expected = format!(
        "dkv 127.0.0.1 {old_port} 127.0.0.1 {}",
        port_of(&c.nodes[new].resp_addr)
    );
    let b = |s: &str| V::Bulk(s.as_bytes().to_vec());
    assert_eq!(
        msg3,
        V::Push(vec![b("message"), b("+switch-master"), b(&expected)])
    );
    assert_eq!(
        msg2,
        V::Array(vec![b("message"), b("+switch-master"), b(&expected)])
    );
    assert_eq!(
        pmsg,
        V::Array(vec![
            b("pmessage"),
            b("+switch-*"),
            b("+switch-master"),
            b(&expected)
        ])
    );
    // The one that left got nothing: its next reply is its own.
    assert_eq!(left.call(&["PING"]), V::Simple("PONG".into()));
    // And what a client asks next names the new coordinator.
    let addr = three.call(&["SENTINEL", "get-master-addr-by-name", "dkv"]);
    assert_eq!(
        addr,
        V::Array(vec![b("127.0.0.1"), b(port_of(&c.nodes[new].resp_addr))])
    );
}

fn run_py(script: &str, args: &[&str]) -> (bool, String) {
    let path = format!("{}/tests/py/{script}", env!("CARGO_MANIFEST_DIR"));
    run_output(Command::new("python3").arg(path).args(args))
}

#[test]
fn redis_py_admin_commands_with_resp3_defaults_and_with_resp2() {
    if !require_redis_py() {
        return;
    }
    let c = Cluster::start("resp3-py-admin", 3, json!({}));
    let coord = c.coordinator();
    let replica = (coord + 1) % 3;
    let (a, r) = (&c.nodes[coord].resp_addr, &c.nodes[replica].resp_addr);
    for mode in ["default", "2"] {
        let (ok, text) = run_py("resp3_admin.py", &[a, r, mode]);
        assert!(ok && text.trim_end().ends_with("ok"), "mode {mode}: {text}");
    }
}

/// Runs a failover script (phase 1, "killing", kill -9 of the coordinator,
/// phase 2) and returns its last line and the killed node's index.
fn failover_script(c: &mut Cluster, mut cmd: Command) -> (String, usize) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "killing", "phase 1 of the script");
    let old = c.coordinator();
    c.nodes[old].kill();
    writeln!(child.stdin.as_mut().unwrap()).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "script said {line:?}");
    (line.trim().to_string(), old)
}

#[test]
fn redis_py_sentinel_with_default_resp3_writes_across_a_coordinator_kill() {
    if !require_redis_py() {
        return;
    }
    let mut c = Cluster::start("resp3-py-sentinel", 3, json!({}));
    let mut cmd = Command::new("python3");
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/py/sentinel_failover.py"
    ))
    .arg(&c.server.resp_addr)
    .arg("default");
    let (line, old) = failover_script(&mut c, cmd);
    assert!(line.starts_with("ok 400"), "script said {line:?}");
    let v = c.view();
    assert!(
        v.epoch >= 2 && v.coordinator != Some(c.nodes[old].id),
        "a failover happened"
    );
}

#[test]
fn ioredis_sentinel_follows_switch_master_across_a_coordinator_kill() {
    if !require_ioredis() {
        return;
    }
    let mut c = Cluster::start("resp3-ioredis", 3, json!({}));
    let mut cmd = Command::new("node");
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/js/sentinel_failover.js"
    ))
    .arg(&c.server.resp_addr);
    let old_port = port_of(&c.nodes[c.coordinator()].resp_addr).to_string();
    let (line, old) = failover_script(&mut c, cmd);
    let new = c.coordinator();
    assert_ne!(new, old);
    assert_eq!(
        line,
        format!(
            "ok 200 dkv 127.0.0.1 {old_port} 127.0.0.1 {}",
            port_of(&c.nodes[new].resp_addr)
        ),
        "every write read back, and +switch-master named the old and new coordinator"
    );
}
