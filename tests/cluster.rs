//! A working cluster: data path, membership and catch-up, with real processes.

mod common;

use common::*;
use dkv::wire::{ErrorKind, Request, Response};
use dkv::Error;
use serde_json::json;
use std::sync::Arc;
use std::thread;

#[test]
fn three_nodes_serve_read_write_delete_through_client_proto_and_library() {
    let c = Cluster::start("wrd", 3, json!({}));
    let server = c.server_addr();

    let (code, out, err) = client_proto(
        &server,
        &["W,colour,blue", r"W,csv,a\,b\,c", "R,colour", "R,csv"],
    );
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(out, "OK\nOK\nblue\na,b,c\n");

    let (code, out, _) = client_proto(&server, &["D,colour"]);
    assert_eq!((code, out.as_str()), (0, "OK\n"));
    let (code, out, err) = client_proto(&server, &["R,colour"]);
    assert_eq!((code, out.as_str()), (1, "\n"), "a missing key exits 1");
    assert!(err.contains("not found"), "{err}");
    let (code, _, _) = client_proto(&server, &["D,colour"]);
    assert_eq!(code, 1, "deleting a missing key exits 1");

    // The library, with binary keys and values.
    let mut cl = c.client();
    let key = [0u8, 255, 10, 13, b','];
    let value: Vec<u8> = (0..=255u8).collect();
    cl.put(&key, &value).unwrap();
    assert_eq!(cl.get(&key).unwrap(), Some(value.clone()));
    assert_eq!(cl.get(b"csv").unwrap(), Some(b"a,b,c".to_vec()));
    assert!(cl.delete(&key).unwrap());
    assert!(!cl.delete(&key).unwrap());
    assert_eq!(cl.get(&key).unwrap(), None);

    // A value written by the library reads back through client_proto.
    cl.put(b"greeting", b"hello world").unwrap();
    let (code, out, _) = client_proto(&server, &["R,greeting"]);
    assert_eq!((code, out.as_str()), (0, "hello world\n"));

    c.wait_converged(&[0, 1, 2]);
}

#[test]
fn concurrent_writers_every_acknowledged_value_reads_back_and_digests_match() {
    let c = Arc::new(Cluster::start("concurrent", 3, json!({})));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let c = c.clone();
            thread::spawn(move || {
                let mut cl = c.client();
                let mut acked = Vec::new();
                for i in 0..1000 {
                    let k = format!("w{w}-k{}", i % 250);
                    let v = format!("w{w}-v{i}");
                    cl.put(k.as_bytes(), v.as_bytes())
                        .expect("write acknowledged");
                    acked.push((k, v));
                }
                acked
            })
        })
        .collect();
    let mut last = std::collections::HashMap::new();
    for h in writers {
        for (k, v) in h.join().unwrap() {
            last.insert(k, v); // keys are per-writer, so the last ack wins
        }
    }
    let mut cl = c.client();
    for (k, v) in &last {
        assert_eq!(
            cl.get(k.as_bytes()).unwrap().as_deref(),
            Some(v.as_bytes()),
            "key {k}"
        );
    }
    c.wait_converged(&[0, 1, 2]);
    let st = c.status(0).unwrap();
    assert_eq!(st.keys, 8 * 250);
    assert_eq!(st.applied.index, 8000);
}

fn write_keys(c: &Arc<Cluster>, n: usize) {
    let per = n / 8;
    let hs: Vec<_> = (0..8)
        .map(|w| {
            let c = c.clone();
            thread::spawn(move || {
                let mut cl = c.client();
                for i in 0..per {
                    cl.put(format!("key-{w}-{i}").as_bytes(), format!("{i}").as_bytes())
                        .unwrap();
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}

fn late_joiner_catches_up(name: &str, settings: serde_json::Value, expect: &str) {
    let c = Arc::new(Cluster::start(name, 3, settings));
    write_keys(&c, 10_000);
    let mut c = Arc::try_unwrap(c).ok().unwrap();
    c.add_node();
    c.wait_for_isr(4);
    let digest = c.wait_converged(&[0, 1, 2, 3]);
    let st = c.status(3).unwrap();
    assert_eq!(st.keys, 10_000);
    assert_eq!(st.digest, digest);
    let coord = c.coordinator();
    assert!(
        c.nodes[coord].log_text().contains(expect),
        "coordinator should have streamed a {expect}:\n{}",
        c.dump_logs()
    );
    // And `dkv-client status` shows it in sync with the same digest.
    let out = std::process::Command::new(CLIENT_BIN)
        .args(["status", &c.server_addr(), "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let members = v["members"].as_array().unwrap();
    assert_eq!(members.len(), 4);
    let want = format!("{digest:016x}");
    for m in members {
        assert_eq!(m["in_sync"], true, "{m}");
        assert_eq!(m["digest"], want.as_str(), "{m}");
    }
}

#[test]
fn fourth_node_joining_after_10000_keys_catches_up_by_log_suffix() {
    late_joiner_catches_up("join-suffix", json!({}), "log suffix");
}

#[test]
fn fourth_node_joining_after_compaction_catches_up_by_snapshot() {
    late_joiner_catches_up(
        "join-snapshot",
        json!({"log-retention-entries": 100}),
        "snapshot",
    );
}

#[test]
fn request_sent_to_a_replica_is_redirected_and_succeeds() {
    let c = Cluster::start("redirect", 3, json!({}));
    let coord = c.coordinator();
    let replica = (coord + 1) % 3;
    let s = raw_client(&c.nodes[replica].addr);
    let req = Request::Put {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
    };
    let Response::NotCoordinator { coordinator, epoch } = raw_call(&s, &req) else {
        panic!("a replica must redirect");
    };
    assert_eq!(epoch, 1);
    let coord_addr = coordinator.expect("the replica names the coordinator");
    assert_eq!(coord_addr, c.nodes[coord].addr);
    let Response::NotCoordinator { .. } = raw_call(&s, &Request::Get { key: b"k".to_vec() }) else {
        panic!("reads are redirected too");
    };
    let s2 = raw_client(&coord_addr);
    assert_eq!(raw_call(&s2, &req), Response::Written);
    assert_eq!(
        raw_call(&s2, &Request::Get { key: b"k".to_vec() }),
        Response::Value(Some(b"v".to_vec()))
    );
}

#[test]
fn oversized_keys_and_values_get_clear_errors_and_change_nothing() {
    let c = Cluster::start(
        "oversize",
        3,
        json!({"max-key-bytes": 64, "max-value-bytes": 1024}),
    );
    let mut cl = c.client();
    cl.put(b"keep", b"me").unwrap();
    let before = c.wait_converged(&[0, 1, 2]);

    // The library refuses before sending (default client limits).
    let big_key = vec![b'k'; 5000];
    assert!(matches!(
        cl.put(&big_key, b"v"),
        Err(Error::KeyTooLarge {
            len: 5000,
            max: 4096
        })
    ));
    let big_value = vec![b'v'; 2 << 20];
    assert!(matches!(
        cl.put(b"k", &big_value),
        Err(Error::ValueTooLarge { .. })
    ));

    // The node refuses what passes the client's (larger) limits.
    let coord = c.coordinator();
    let s = raw_client(&c.nodes[coord].addr);
    let r = raw_call(
        &s,
        &Request::Put {
            key: vec![b'k'; 65],
            value: b"v".to_vec(),
        },
    );
    assert!(
        matches!(r, Response::Error { kind: ErrorKind::KeyTooLarge, ref message } if message.contains("64")),
        "{r:?}"
    );
    let r = raw_call(
        &s,
        &Request::Put {
            key: b"k".to_vec(),
            value: vec![b'v'; 1025],
        },
    );
    assert!(
        matches!(r, Response::Error { kind: ErrorKind::ValueTooLarge, ref message } if message.contains("1024")),
        "{r:?}"
    );
    let r = raw_call(
        &s,
        &Request::Put {
            key: vec![],
            value: b"v".to_vec(),
        },
    );
    assert!(
        matches!(
            r,
            Response::Error {
                kind: ErrorKind::BadRequest,
                ..
            }
        ),
        "{r:?}"
    );

    // client_proto refuses too, with a usage exit code.
    let (code, _, err) = client_proto(&c.server_addr(), &[&format!("W,{},v", "k".repeat(5000))]);
    assert_eq!(code, 2);
    assert!(err.contains("limit"), "{err}");

    let after = c.wait_converged(&[0, 1, 2]);
    assert_eq!(before, after, "nothing was written");
    assert_eq!(c.status(coord).unwrap().keys, 1);
    assert_eq!(cl.get(b"k").unwrap(), None);
}

#[test]
fn malformed_client_proto_commands_are_usage_errors_and_run_nothing() {
    let c = Cluster::start("cli-usage", 1, json!({}));
    let server = c.server_addr();
    for bad in [
        vec!["W,a,1", "X,b"],
        vec!["W,a,1", "W,b"],
        vec!["W,a,1", "R,"],
        vec!["W,a,1", "D,a,b"],
        vec!["W,a,1", "T,soon"],
        vec!["W,a,1", "R"],
        vec![],
    ] {
        let (code, out, err) = client_proto(&server, &bad);
        assert_eq!(code, 2, "{bad:?}: {err}");
        assert!(out.is_empty(), "{bad:?} printed {out}");
        assert!(err.contains("usage"), "{err}");
    }
    let (code, _, err) = client_proto("not-an-address", &["R,a"]);
    assert_eq!(code, 2, "{err}");
    // Nothing was executed: "a" was never written.
    assert_eq!(c.client().get(b"a").unwrap(), None);
    assert_eq!(c.status(0).unwrap().applied.index, 0);
    // A well-formed run works, and T sleeps then prints OK.
    let (code, out, _) = client_proto(&server, &["W,a,1", "T,1", "R,a"]);
    assert_eq!((code, out.as_str()), (0, "OK\nOK\n1\n"));
}

#[test]
fn unreachable_server_is_a_clear_failure() {
    // Bind and drop a port so nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let out = std::process::Command::new(CLIENT_PROTO_BIN)
        .args(["--timeout", "200", &port, "R,a"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!(
            "no server answered: {port} refused the connection"
        )),
        "{err}"
    );
    // Options may come after the address too.
    let (code, _, err) = client_proto(&port, &["--timeout", "200", "R,a"]);
    assert_eq!(code, 3, "{err}");
}
