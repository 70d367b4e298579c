//! Server lists: clients, `client_proto` and nodes given several servers
//! ("h1:p1,h2:p2") move past servers that are down or unavailable, and say
//! which servers they tried when none works.

mod common;

use common::*;
use dkv::net::{self, Deadlines, TimedStream};
use dkv::wire::{self, ErrorKind, ServerRequest, ServerResponse};
use dkv::{Client, ClientOptions, Error};
use serde_json::json;
use std::net::TcpListener;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A stand-in server that completes every handshake (client or member, no
/// cluster secret) and answers every request `Unavailable`, as an HA server
/// does when its registry is unreachable. Counts the requests it refused.
struct UnavailableServer {
    addr: String,
    refused: Arc<AtomicUsize>,
}

impl UnavailableServer {
    fn start() -> UnavailableServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let refused = Arc::new(AtomicUsize::new(0));
        let count = refused.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                let count = count.clone();
                std::thread::spawn(move || {
                    let d = Deadlines {
                        idle: Duration::from_secs(30),
                        request: Duration::from_secs(30),
                    };
                    let s = dkv::net::Stream::plain(s);
                    let mut r = TimedStream::new(&s, d);
                    let Ok(mut conn) = net::accept_hello(&s, &mut r, None) else {
                        return;
                    };
                    while let Ok(_req) = conn
                        .rx
                        .read::<_, ServerRequest>(&mut r, wire::MAX_SERVER_FRAME)
                    {
                        r.request_done();
                        count.fetch_add(1, Ordering::AcqRel);
                        let no = ServerResponse::Error {
                            kind: ErrorKind::Unavailable,
                            message: "registry unreachable".into(),
                        };
                        if conn.tx.write(&mut &s, &no).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        UnavailableServer { addr, refused }
    }

    fn refused(&self) -> usize {
        self.refused.load(Ordering::Acquire)
    }
}

#[test]
fn client_proto_and_the_library_skip_dead_and_unavailable_servers() {
    let c = Cluster::start("sl-client", 1, json!({}));
    let live = c.server_addr();
    let dead = dead_addrs(1).remove(0);

    let list = format!("{dead},{live}");
    let (code, out, err) = client_proto(&list, &["W,k,v", "R,k"]);
    assert_eq!((code, out.as_str()), (0, "OK\nv\n"), "{err}");
    // Spaces after the commas are allowed (in one argument).
    let (code, out, err) = client_proto(&format!("{dead}, {live}"), &["R,k"]);
    assert_eq!((code, out.as_str()), (0, "v\n"), "{err}");

    let mut cl = Client::connect(&list).unwrap();
    assert_eq!(
        cl.servers().current().1,
        live,
        "the client remembers the server that answered"
    );
    cl.put(b"k2", b"v2").unwrap();
    assert_eq!(cl.get(b"k2").unwrap(), Some(b"v2".to_vec()));
    assert_eq!(cl.cluster_view().unwrap().members.len(), 1);

    // A server that answers Unavailable is skipped too.
    let unavailable = UnavailableServer::start();
    let list = format!("{},{live}", unavailable.addr);
    let (code, out, err) = client_proto(&list, &["R,k2"]);
    assert_eq!((code, out.as_str()), (0, "v2\n"), "{err}");
    assert!(
        unavailable.refused() >= 1,
        "the first server was asked first"
    );
    let cl = Client::connect(&list).unwrap();
    assert_eq!(cl.servers().current().1, live);
}

#[test]
fn with_every_server_down_the_error_names_each_one_and_the_last_failure() {
    let d = dead_addrs(2);
    let list = format!("{},{}", d[0], d[1]);
    let out = Command::new(CLIENT_PROTO_BIN)
        .args(["--timeout", "2000", &list, "R,a"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(out.stdout.is_empty());
    assert!(
        err.contains(&format!(
            "no server answered: {} and {} refused the connection (is dkv-server running?)",
            d[0], d[1]
        )),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one sentence: {err}");

    // The library says the same, and an unavailable server's answer is the
    // failure it reports when that server was the last one tried.
    let unavailable = UnavailableServer::start();
    let list = format!("{},{}", d[0], unavailable.addr);
    let opts = ClientOptions {
        op_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    match Client::with_options(&list, opts) {
        Err(Error::Unavailable(m)) => {
            assert!(m.contains(&d[0]) && m.contains(&unavailable.addr), "{m}");
            assert!(m.contains("registry unreachable"), "{m}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("connected to a dead cluster"),
    }

    // Malformed lists are usage errors that name the problem.
    for (bad, says) in [
        ("127.0.0.1:1,,127.0.0.1:2", "has an empty entry (entry 2)"),
        ("127.0.0.1:1,127.0.0.1:1", "names 127.0.0.1:1 twice"),
        (
            "127.0.0.1:1,nowhere",
            "'nowhere' has no port: give the server as HOST:PORT",
        ),
    ] {
        let (code, _, err) = client_proto(bad, &["R,a"]);
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains(says), "{bad}: {err}");
        let out = Command::new(NODE_BIN).arg(bad).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "dkv-node {bad}: {err}");
        assert!(err.contains(says), "dkv-node {bad}: {err}");
    }
}

#[test]
fn a_node_registers_past_dead_and_unavailable_servers_and_serves() {
    let mut c = Cluster::start("sl-node", 0, json!({}));
    let live = c.server_addr();
    let dead = dead_addrs(1).remove(0);
    let unavailable = UnavailableServer::start();
    let list = format!("{dead},{},{live}", unavailable.addr);
    let i = c.add_node_to(&list, &[]);
    c.wait_for_isr(1);
    assert!(unavailable.refused() >= 1, "registration asked it first");
    let (code, out, err) = client_proto(&list, &["W,k,v", "R,k"]);
    assert_eq!((code, out.as_str()), (0, "OK\nv\n"), "{err}");
    let log = c.nodes[i].log_text();
    assert!(
        log.contains(&format!("registration with server {dead}")),
        "{log}"
    );
}

#[test]
fn the_server_link_moves_to_the_next_server_when_its_server_dies() {
    let mut c = Cluster::start("sl-link", 0, json!({}));
    let first = c.server_addr();
    let second = dead_addrs(1).remove(0);
    let list = format!("{first},{second}");
    c.add_node_to(&list, &[]);
    c.add_node_to(&list, &[]);
    c.wait_for_isr(2);
    let (code, _, err) = client_proto(&list, &["W,before,1"]);
    assert_eq!(code, 0, "{err}");

    // The server moves to the second address of the list, keeping its state.
    c.restart_server_on(&second);
    let mut cl = Client::connect(&list).unwrap();
    wait_until("a write through the list to succeed", || {
        cl.put(b"after", b"2").is_ok()
    });
    let written = c.status(c.coordinator()).unwrap().applied.index;
    // The coordinator's status pushes reach the new address: its report of
    // a position at or past that write is only known there through a push.
    wait_until("the coordinator's status push at the second server", || {
        let v = c.view();
        let m = v.member(v.coordinator.unwrap()).unwrap().clone();
        m.last_status_ms.is_some() && m.log_position.index >= written
    });
    assert_eq!(cl.get(b"before").unwrap(), Some(b"1".to_vec()));
    // Each node (the replica at its next view fetch) says once that it
    // switched, not once per failed call.
    let line = format!("server {first} unreachable (");
    for n in &c.nodes {
        wait_until("the node to log its switch", || {
            n.log_text().contains(&line)
        });
    }
    c.wait_converged(&[0, 1]);
    for n in &c.nodes {
        let log = n.log_text();
        let switched: Vec<_> = log.lines().filter(|l| l.contains(&line)).collect();
        assert_eq!(switched.len(), 1, "node {}: {log}", n.id);
        assert!(switched[0].contains(&format!("; using {second}")), "{log}");
    }

    // The replica's link reached the new server too: when the coordinator
    // dies, the replica can only take over with a grant from `second`.
    let old = c.coordinator();
    let old_id = c.nodes[old].id;
    c.nodes[old].kill();
    wait_until("the replica to be granted the next epoch", || {
        let v = c.view();
        v.coordinator.is_some_and(|id| id != old_id)
    });
    wait_for_progress(&list, "after-failover");
    assert_eq!(cl.get(b"before").unwrap(), Some(b"1".to_vec()));
    assert_eq!(cl.get(b"after").unwrap(), Some(b"2".to_vec()));
}

#[test]
fn sentinel_sentinels_lists_the_peers_set_on_the_server() {
    if !require_tool("redis-cli", "apt-get install redis-tools") {
        return;
    }
    let server = dkv::server::Server::start(dkv::server::ServerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        settings: dkv::config::NodeSettings::default(),
        state_file: None,
        max_connections: 64,
        sentinel_listen: Some("127.0.0.1:0".parse().unwrap()),
        metrics_listen: None,
        cluster_name: "dkv".into(),
        security: Default::default(),
        recover_from_nodes: false,
        etcd: None,
    })
    .unwrap();
    let port = server.sentinel_addr().unwrap().port().to_string();
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        cli(&["SENTINEL", "sentinels", "dkv"]).trim(),
        "",
        "alone: no peers"
    );
    server.set_sentinel_peers(vec!["127.0.0.1:26390".into(), "127.0.0.1:26391".into()]);
    let out = cli(&["SENTINEL", "sentinels", "dkv"]);
    let lines: Vec<&str> = out.lines().collect();
    // Two flat entries of field/value pairs: name, ip, port, runid, flags, ...
    let entries: Vec<&[&str]> = lines
        .split(|l| *l == "name")
        .filter(|e| !e.is_empty())
        .collect();
    assert_eq!(entries.len(), 2, "{out}");
    for (e, port) in entries.iter().zip(["26390", "26391"]) {
        assert_eq!(
            e[1..8],
            ["ip", "127.0.0.1", "port", port, "runid", e[0], "flags"],
            "{out}"
        );
        assert_eq!(e[8], "sentinel", "{out}");
    }
    assert!(cli(&["INFO"]).contains("sentinels=3"));
    server.set_sentinel_peers(vec![]);
    assert_eq!(cli(&["SENTINEL", "sentinels", "dkv"]).trim(), "");
    server.shutdown();
}
