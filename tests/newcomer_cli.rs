//! What a first-time user sees from the command-line clients (issue 14):
//! every error one sentence naming the cause and the fix, `client_proto`'s
//! values from files and stdin, its escapes and one line per command, and
//! `dkv-client status`'s exit codes. Real binaries, loopback, ephemeral ports.

mod common;

use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `bin args` with `stdin` (empty when `None`); returns (exit code,
/// stdout, stderr).
fn run(bin: &str, args: &[&str], stdin: Option<&[u8]>) -> (i32, String, String) {
    let mut child = Command::new(bin)
        .args(args)
        .env_remove("DKV_PASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    let mut input = child.stdin.take().unwrap();
    let data = stdin.unwrap_or_default().to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The error a CLI printed: exactly one line, a sentence, no Rust Debug text
/// and no bare OS error.
fn sentence(err: &str) -> &str {
    let line = err.trim_end();
    assert_eq!(line.lines().count(), 1, "one line: {err}");
    for debug in ["Some(", "{ ", " }", "os error", "Rejected"] {
        assert!(!line.contains(debug), "no Debug text ({debug}): {err}");
    }
    line
}

/// A listener that accepts connections and never answers: what a stopped
/// or wrong service looks like.
fn silent_listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap().to_string();
    (l, a)
}

/// A minimal HTTP server: answers every request (once its header ends)
/// with a 404 status line; a connection that never ends a request header
/// gets nothing.
fn http_server() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s: TcpStream = s;
                let mut got = Vec::new();
                let mut buf = [0u8; 512];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            });
        }
    });
    addr
}

const FIX: &str = "give the server's address (server-ip-port)";

#[test]
fn a_node_data_port_given_as_the_server_is_named_with_the_fix() {
    let c = Cluster::start("nc-dataport", 1, json!({}));
    let node = c.nodes[0].addr.clone();
    let want = format!("{node} is a DKV node's data port, not the server: {FIX}");
    let (code, out, err) = run(CLIENT_PROTO_BIN, &[&node, "R,a"], None);
    assert_eq!(code, 3, "{err}");
    assert!(out.is_empty());
    assert_eq!(sentence(&err), format!("client_proto: {want}"));
    // With a password the first request is the password: the same answer.
    let (code, _, err) = run(CLIENT_PROTO_BIN, &["--password", "pw", &node, "R,a"], None);
    assert_eq!(
        (code, sentence(&err)),
        (3, format!("client_proto: {want}").as_str())
    );
    let (code, _, err) = run(CLIENT_BIN, &["status", &node], None);
    assert_eq!(
        (code, sentence(&err)),
        (3, format!("dkv-client: {want}").as_str())
    );
    // Real clients of that node and of the server are unaffected.
    let (code, out, err) = run(CLIENT_PROTO_BIN, &[&c.server_addr(), "W,a,1", "R,a"], None);
    assert_eq!((code, out.as_str()), (0, "OK\n1\n"), "{err}");
    assert_eq!(c.status(0).unwrap().keys, 1);
    let node_log = c.nodes[0].log_text();
    assert!(
        node_log.contains("sent a server request to this data port"),
        "{node_log}"
    );
}

#[test]
fn resp_sentinel_and_http_ports_are_named_by_the_protocol_that_answered() {
    let c = Cluster::start("nc-foreign", 1, json!({}));
    let resp = format!(
        "answered in the Redis protocol (RESP): it is a RESP or Sentinel port, not the DKV server; {FIX}"
    );
    // A node's RESP port and the server's Sentinel port.
    for addr in [c.nodes[0].resp_addr.clone(), c.server.resp_addr.clone()] {
        let (code, _, err) = run(CLIENT_PROTO_BIN, &["--timeout", "2000", &addr, "R,a"], None);
        assert_eq!(code, 3, "{err}");
        assert_eq!(sentence(&err), format!("client_proto: {addr} {resp}"));
        let (code, out, err) = run(CLIENT_BIN, &["status", &addr, "--json"], None);
        assert_eq!(code, 3, "{err}");
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(doc["error"], format!("{addr} {resp}").as_str(), "{out}");
    }
    let http = http_server();
    let (code, _, err) = run(CLIENT_PROTO_BIN, &[&http, "R,a", "--timeout", "2000"], None);
    assert_eq!(code, 3, "{err}");
    assert_eq!(
        sentence(&err),
        format!(
            "client_proto: {http} answered in HTTP (\"HTTP/1.1 404 Not Found\"): it is a web \
             server (etcd's client port, say), not the DKV server; {FIX}"
        )
    );
}

#[test]
fn a_silent_address_times_out_saying_after_how_long() {
    let (_l, addr) = silent_listener();
    let start = Instant::now();
    let (code, _, err) = run(CLIENT_PROTO_BIN, &["--timeout", "1000", &addr, "R,a"], None);
    let took = start.elapsed();
    assert_eq!(code, 3, "{err}");
    let err = sentence(&err);
    assert!(
        err.starts_with(&format!(
            "client_proto: no server answered: {addr} accepted the connection but sent no \
             answer within 1000 ms"
        )),
        "{err}"
    );
    // --timeout bounds the whole wait (generously: it used to take 6 s).
    assert!(took < Duration::from_secs(5), "took {took:?}");

    // dkv-client too, and with --json the error is a JSON document.
    let (code, out, err) = run(
        CLIENT_BIN,
        &["--timeout", "1000", "status", &addr, "--json"],
        None,
    );
    assert_eq!(code, 3, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let msg = doc["error"].as_str().unwrap();
    assert!(msg.contains("sent no answer within 1000 ms"), "{msg}");
    assert_eq!(sentence(&err), format!("dkv-client: {msg}"));
}

#[test]
fn a_stopped_server_is_an_immediate_failure_that_says_so() {
    let dead = dead_addrs(1).remove(0);
    let want =
        format!("no server answered: {dead} refused the connection (is dkv-server running?)");
    let (code, out, err) = run(CLIENT_PROTO_BIN, &[&dead, "W,a,1"], None);
    assert_eq!((code, out.as_str()), (3, ""), "{err}");
    assert_eq!(sentence(&err), format!("client_proto: {want}"));
    assert!(!err.contains("deadline"), "{err}");
    let (code, out, err) = run(CLIENT_BIN, &["status", &dead, "--json"], None);
    assert_eq!(code, 3, "{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        json!({ "error": want })
    );
    assert_eq!(sentence(&err), format!("dkv-client: {want}"));
}

#[test]
fn a_deadline_message_states_the_time_the_deadline_allowed() {
    // A server with no node: it answers, but knows no coordinator.
    let c = Cluster::start("nc-deadline", 0, json!({}));
    let (code, _, err) = run(
        CLIENT_PROTO_BIN,
        &[&c.server_addr(), "R,a", "--timeout", "400"],
        None,
    );
    assert_eq!(code, 3, "{err}");
    let err = sentence(&err);
    assert!(
        err.starts_with(
            "client_proto: no coordinator could be reached within 400 ms: the server knows no coordinator"
        ),
        "{err}"
    );
    // status: answered, but degraded (no coordinator).
    let (code, out, err) = run(CLIENT_BIN, &["status", &c.server_addr(), "--json"], None);
    assert_eq!(code, 1, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["healthy"], false);
    assert!(
        err.contains("the cluster is degraded: no coordinator"),
        "{err}"
    );
}

#[test]
fn client_proto_takes_values_from_files_and_stdin_up_to_the_limit() {
    let c = Cluster::start("nc-values", 1, json!({}));
    let server = c.server_addr();
    let dir = temp_dir("nc-values-files");
    // Larger than one command-line argument may be (128 KiB).
    let big = vec![b'x'; 600 * 1024];
    let path = dir.join("big.txt");
    std::fs::write(&path, &big).unwrap();
    let at = format!("W,big,@{}", path.display());
    let (code, out, err) = run(
        CLIENT_PROTO_BIN,
        &[
            &server,
            &at,
            "W,piped,-",
            r"W,lit,\@home",
            r"W,dash,\-",
            "R,piped",
        ],
        Some(b"from\nstdin"),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "OK\nOK\nOK\nOK\nfrom\\nstdin\n");
    let mut cl = c.client();
    assert_eq!(cl.get(b"big").unwrap(), Some(big));
    assert_eq!(cl.get(b"piped").unwrap(), Some(b"from\nstdin".to_vec()));
    assert_eq!(cl.get(b"lit").unwrap(), Some(b"@home".to_vec()));
    assert_eq!(cl.get(b"dash").unwrap(), Some(b"-".to_vec()));

    // Over the value limit, a missing file, stdin twice: usage errors, nothing runs.
    let huge = dir.join("huge");
    std::fs::write(&huge, vec![0u8; 1024 * 1024 + 1]).unwrap();
    let over = format!("W,huge,@{}", huge.display());
    let missing = format!("W,m,@{}", dir.join("nope").display());
    for (args, says) in [
        (
            vec!["W,z,1", over.as_str()],
            "holds more than 1048576 bytes",
        ),
        (
            vec!["W,z,1", missing.as_str()],
            "cannot read the value from",
        ),
        (
            vec!["W,z,-", "W,y,-"],
            "only one command can take its value from stdin",
        ),
    ] {
        let mut all = vec![server.as_str()];
        all.extend(args);
        let (code, out, err) = run(CLIENT_PROTO_BIN, &all, None);
        assert_eq!((code, out.as_str()), (2, ""), "{err}");
        assert!(sentence(&err).contains(says), "{err}");
    }
    assert_eq!(cl.get(b"z").unwrap(), None);
    let (code, help, _) = run(CLIENT_PROTO_BIN, &["--help"], None);
    assert_eq!(code, 0);
    assert!(
        help.contains("W,key,@PATH") && help.contains("W,key,-"),
        "{help}"
    );
}

#[test]
fn client_proto_escapes_keep_one_line_per_command() {
    let c = Cluster::start("nc-escapes", 1, json!({}));
    let server = c.server_addr();
    let (code, out, err) = run(
        CLIENT_PROTO_BIN,
        &[
            &server,
            r"W,a\,b,one\ntwo\\three",
            r"R,a\,b",
            r"W,bin,\x00\xff",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "OK\none\\ntwo\\\\three\nOK\n");
    let mut cl = c.client();
    assert_eq!(cl.get(b"a,b").unwrap(), Some(b"one\ntwo\\three".to_vec()));
    assert_eq!(cl.get(b"bin").unwrap(), Some(vec![0, 0xff]));
    // --raw prints the value as stored.
    let (code, out, _) = run(CLIENT_PROTO_BIN, &[&server, "--raw", r"R,a\,b"], None);
    assert_eq!((code, out.as_str()), (0, "one\ntwo\\three\n"));
    let (_, out, _) = run(CLIENT_PROTO_BIN, &[&server, "R,bin"], None);
    assert_eq!(out, "\\x00\\xff\n");

    // An unescaped comma in a value, or an unknown escape: usage errors.
    for (bad, says) in [
        (
            "W,a,b,c",
            "'W,a,b,c': the value holds an unescaped comma; write \\, for a comma",
        ),
        (
            r"W,p,C:\temp",
            r"'\t' is not an escape: write \\ for a backslash",
        ),
    ] {
        let (code, out, err) = run(CLIENT_PROTO_BIN, &[&server, bad], None);
        assert_eq!((code, out.as_str()), (2, ""), "{err}");
        assert!(sentence(&err).contains(says), "{err}");
    }
    assert_eq!(cl.get(b"a").unwrap(), None, "W,a,b,c wrote nothing");
}

#[test]
fn client_proto_version_and_options_anywhere() {
    let c = Cluster::start("nc-options", 1, json!({}));
    let server = c.server_addr();
    let (code, out, _) = run(CLIENT_PROTO_BIN, &["--version"], None);
    assert_eq!(
        (code, out.trim()),
        (
            0,
            format!("client_proto {}", env!("CARGO_PKG_VERSION")).as_str()
        )
    );
    let (code, out, err) = run(
        CLIENT_PROTO_BIN,
        &[
            &server,
            "W,k,v",
            "--timeout",
            "3000",
            "R,k",
            "--timeout=2000",
        ],
        None,
    );
    assert_eq!((code, out.as_str()), (0, "OK\nv\n"), "{err}");
    let (code, _, err) = run(CLIENT_PROTO_BIN, &[&server, "R,k", "--tiemout", "5"], None);
    assert_eq!(code, 2);
    assert!(
        sentence(&err).contains("unknown option '--tiemout'"),
        "{err}"
    );
}

#[test]
fn status_exit_codes_healthy_degraded_usage_unreachable() {
    let mut c = Cluster::start("nc-status", 3, json!({}));
    let server = c.server_addr();
    let (code, out, err) = run(CLIENT_BIN, &["status", &server], None);
    assert_eq!(code, 0, "{err}");
    assert!(err.is_empty(), "{err}");
    assert!(out.contains("coordinator"), "{out}");
    let (code, out, _) = run(CLIENT_BIN, &["status", &server, "--json"], None);
    assert_eq!(code, 0);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (doc["healthy"].clone(), doc["problems"].clone()),
        (json!(true), json!([]))
    );

    // A bare host is a usage error that says the port is missing.
    let (code, _, err) = run(CLIENT_BIN, &["status", "127.0.0.1"], None);
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        sentence(&err),
        "dkv-client: '127.0.0.1' has no port: give the server as HOST:PORT, e.g. 127.0.0.1:12345"
    );
    let (code, out, _) = run(CLIENT_BIN, &["status", "127.0.0.1", "--json"], None);
    assert_eq!(code, 2);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        doc["error"].as_str().unwrap().contains("has no port"),
        "{out}"
    );

    // A member down: degraded, with the reason on stderr.
    let victim = (c.coordinator() + 1) % 3;
    let id = c.nodes[victim].id;
    let addr = c.nodes[victim].addr.clone();
    c.nodes[victim].kill();
    let (code, out, err) = run(CLIENT_BIN, &["status", &server, "--json"], None);
    assert_eq!(code, 1, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["healthy"], false);
    let want = format!("member {id} ({addr}) is unreachable");
    assert!(
        err.contains(&format!("dkv-client: the cluster is degraded: {want}")),
        "{err}"
    );
    assert!(
        doc["problems"][0].as_str().unwrap().starts_with(&want),
        "{out}"
    );

    // The server down: exit 3, and still a JSON document.
    c.kill_server();
    let (code, out, err) = run(CLIENT_BIN, &["status", &server, "--json"], None);
    assert_eq!(code, 3, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        doc["error"]
            .as_str()
            .unwrap()
            .starts_with("no server answered"),
        "{out}"
    );

    // --help documents the exit codes.
    let (_, help, _) = run(CLIENT_BIN, &["status", "--help"], None);
    assert!(help.contains("Exit codes: 0 healthy; 1 degraded"), "{help}");
}
