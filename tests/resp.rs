//! DKV speaks Redis: real tools nobody here wrote (redis-cli, redis-benchmark,
//! redis-server, redis-py's Sentinel client) against real nodes. `.ci/run`
//! installs them. A test whose tool is missing fails under CI (`CI=true`, as
//! `.ci/run` sets) and names what to install; elsewhere it is skipped, and
//! `make test` ends with a line naming every skipped test and why (see
//! `tests/common/skip.rs`).

mod common;

use common::*;
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A real redis-server on a free loopback port, stopped on drop.
struct RealRedis {
    child: std::process::Child,
    addr: String,
}

impl RealRedis {
    /// None when redis-server is not installed (a skipped part, recorded).
    fn start() -> Option<RealRedis> {
        if !require_for_part(
            common::skip::have_tool("redis-server"),
            "redis-server is not installed",
            "apt-get install redis-server",
            "the comparison with a real Redis (compared with Redis 7's known replies instead)",
        ) {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let mut cmd = Command::new("redis-server");
        die_with_parent(&mut cmd);
        let child = cmd
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                std::env::temp_dir().to_str().unwrap_or("/tmp"),
            ])
            .stdout(Stdio::null())
            .spawn()
            .ok()?;
        let r = RealRedis {
            child,
            addr: format!("127.0.0.1:{port}"),
        };
        wait_until("redis-server to start", || {
            redis_cli(&r.addr, &["PING"]) == "PONG\n"
        });
        Some(r)
    }
}

impl Drop for RealRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis_cli(addr: &str, args: &[&str]) -> String {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let out = Command::new("redis-cli")
        .args(["-h", host, "-p", port])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn redis_cli_works_against_coordinator_and_replica() {
    if !require_tool("redis-cli", "apt-get install redis-tools") {
        return;
    }
    let c = Cluster::start("redis-cli", 3, json!({}));
    let coord = c.coordinator();
    let replica = (coord + 1) % 3;
    let (r, p) = (&c.nodes[coord].resp_addr, &c.nodes[replica].resp_addr);
    // The same commands against a real Redis, when one is installed, must
    // print the same; otherwise against what Redis 7 is known to print.
    let script: Vec<(Vec<&str>, &str)> = vec![
        (vec!["PING"], "PONG\n"),
        (vec!["SET", "greeting", "hello world"], "OK\n"),
        (vec!["GET", "greeting"], "hello world\n"),
        (vec!["MSET", "a", "1", "b", "2"], "OK\n"),
        (vec!["MGET", "a", "b", "nope"], "1\n2\n\n"),
        (vec!["DEL", "a", "b", "nope"], "2\n"),
        (vec!["EXISTS", "a", "greeting"], "1\n"),
        (vec!["GET", "a"], "\n"),
        (vec!["SELECT", "0"], "OK\n"),
        (vec!["DBSIZE"], "1\n"),
        (vec!["ECHO", "hi"], "hi\n"),
    ];
    let real = RealRedis::start();
    for (cmd, known) in &script {
        let ours = redis_cli(r, cmd);
        match &real {
            Some(redis) => assert_eq!(
                ours,
                redis_cli(&redis.addr, cmd),
                "{cmd:?} differs from Redis"
            ),
            None => assert_eq!(ours, *known, "{cmd:?}"),
        }
    }
    assert_eq!(
        redis_cli(p, &["GET", "greeting"]),
        "hello world\n",
        "a replica forwards reads"
    );
    assert_eq!(
        redis_cli(p, &["SET", "via", "replica"]),
        "OK\n",
        "and writes"
    );
    assert_eq!(redis_cli(r, &["GET", "via"]), "replica\n");
    assert_eq!(redis_cli(r, &["DEL", "via"]), "1\n");
    let info = redis_cli(r, &["INFO", "replication"]);
    assert!(
        info.contains("# Replication") && info.contains("role:master"),
        "{info}"
    );
    assert!(info.contains("connected_slaves:2"), "{info}");
    let info = redis_cli(p, &["INFO", "replication"]);
    assert!(
        info.contains("role:slave")
            && info.contains(&format!("master_port:{}", r.rsplit_once(':').unwrap().1)),
        "{info}"
    );
    assert_eq!(redis_cli(r, &["SET", "k", "v", "EX", "100"]), "OK\n");
    let ttl: u64 = redis_cli(p, &["TTL", "k"]).trim().parse().unwrap();
    assert!((90..=100).contains(&ttl), "{ttl}");
    assert!(redis_cli(r, &["LPUSH", "l", "x"]).contains("unknown command 'LPUSH'"));
    assert_eq!(
        c.client().get(b"greeting").unwrap(),
        Some(b"hello world".to_vec())
    );
    c.wait_converged(&[0, 1, 2]);
}

#[test]
fn redis_benchmark_pipelined_against_coordinator_and_replica() {
    if !require_tool("redis-benchmark", "apt-get install redis-tools") {
        return;
    }
    let c = Cluster::start("redis-bench", 3, json!({}));
    let coord = c.coordinator();
    for i in [coord, (coord + 1) % 3] {
        let (host, port) = c.nodes[i].resp_addr.rsplit_once(':').unwrap();
        let out = Command::new("redis-benchmark")
            .args([
                "-h", host, "-p", port, "-t", "set,get", "-n", "20000", "-c", "16", "-P", "16",
                "-q",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        let summary: Vec<&str> = text
            .split(['\r', '\n'])
            .filter(|l| l.contains("requests per second"))
            .collect();
        assert_eq!(summary.len(), 2, "SET and GET completed: {text}");
        assert!(!text.contains("ERR") && !text.contains("rror"), "{text}");
    }
    let d = c.wait_converged(&[0, 1, 2]);
    assert!(c.status(0).unwrap().keys > 0);
    assert_eq!(c.status(1).unwrap().digest, d);
}

#[test]
fn redis_py_sentinel_client_writes_across_a_failover() {
    if !require_redis_py() {
        return;
    }
    let mut c = Cluster::start("sentinel", 3, json!({}));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/sentinel_failover.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(&c.server.resp_addr)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "killing", "phase 1 of the script");
    let old = c.coordinator();
    let old_id = c.nodes[old].id;
    c.nodes[old].kill();
    writeln!(child.stdin.as_mut().unwrap()).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success() && line.starts_with("ok 400"),
        "script said {line:?}"
    );
    let v = c.view();
    assert!(
        v.epoch >= 2 && v.coordinator != Some(old_id),
        "a failover happened"
    );
}

#[test]
fn malformed_resp_gets_an_error_or_a_close_and_the_node_keeps_serving() {
    let c = Cluster::start("resp-garbage", 1, json!({}));
    let addr = c.nodes[0].resp_addr.clone();
    let mut cl = c.client();
    cl.put(b"keep", b"me").unwrap();
    let rss = c.nodes[0].rss_kib();
    let attacks: Vec<Vec<u8>> = vec![
        b"*2\r\n$3\r\nGET\r\n$10\r\nshort\r\n".to_vec(),
        b"*1\r\n$-7\r\n".to_vec(),
        b"*1\r\n$99999999999\r\n".to_vec(),
        b"*-5\r\n".to_vec(),
        b"*1\r\n$4\r\nPINGxx".to_vec(),
        b"*abc\r\n".to_vec(),
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect(),
        vec![b'*'; 1 << 20],
        vec![b'a'; 200 * 1024],
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2000000\r\n".to_vec(),
    ];
    for a in &attacks {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(a);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut back = Vec::new();
        let _ = s.read_to_end(&mut back);
        let text = String::from_utf8_lossy(&back);
        assert!(
            back.is_empty() || text.starts_with('-') || text.contains("\r\n-"),
            "{text}"
        );
    }
    // Still serving both protocols, data unchanged, memory bounded.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(b"*2\r\n$3\r\nGET\r\n$4\r\nkeep\r\n").unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"$2\r\nme\r\n");
    assert_eq!(cl.get(b"keep").unwrap(), Some(b"me".to_vec()));
    assert_eq!(c.status(0).unwrap().keys, 1);
    let grown = c.nodes[0].rss_kib().saturating_sub(rss);
    assert!(grown < 64 * 1024, "grew by {grown} KiB");
    assert!(c.nodes[0].log_text().contains("protocol error"));
}
