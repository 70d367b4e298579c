//! Shutdown is a tested path: SIGTERM and SIGINT stop `dkv-node` and
//! `dkv-server` cleanly (exit status 0, within a few seconds) with clients
//! connected and idle on every port, a live replication stream and writes
//! under way; in-process, `Node::shutdown` and `Server::shutdown` return
//! with connections open, having joined every thread they started.

mod common;

use common::*;
use dkv::net::Stream;
use dkv::wire::{Request, Response, ServerRequest, ServerResponse};
use std::io::{Read, Write};
use std::process::ExitStatus;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a signalled process may take to exit.
const EXIT_WITHIN: Duration = Duration::from_secs(5);

/// Waits for `p` to exit, at most `EXIT_WITHIN`, and returns its status.
fn exit_status(p: &mut Proc, what: &str) -> ExitStatus {
    let deadline = Instant::now() + EXIT_WITHIN;
    loop {
        if let Some(st) = p.child.try_wait().unwrap() {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "{what} still running {EXIT_WITHIN:?} after the signal:\n{}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_clean_exit(p: &mut Proc, what: &str) {
    let st = exit_status(p, what);
    assert!(
        st.success(),
        "{what} exited with {st:?}, not 0:\n{}",
        p.log_text()
    );
}

/// A RESP connection that answered PING, so its connection thread runs.
fn resp_conn(addr: &str) -> Stream {
    let mut s = Stream::plain(std::net::TcpStream::connect(addr).unwrap());
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    let mut b = [0u8; 7];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"+PONG\r\n");
    s
}

/// A native connection to a node that answered a Status request.
fn node_conn(addr: &str) -> Stream {
    let s = raw_client(addr);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    match raw_call(&s, &Request::Status) {
        Response::Status(_) => s,
        other => panic!("status from {addr}: {other:?}"),
    }
}

/// A client connection to a server that answered a View request.
fn server_conn(addr: &str) -> Stream {
    let s = dkv::net::connect(addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    match dkv::net::call::<_, ServerResponse>(&s, &ServerRequest::View, 4 << 20) {
        Ok(ServerResponse::View(_)) => s,
        other => panic!("view from {addr}: {other:?}"),
    }
}

/// True when the peer closed `s` (end of file or a reset), waiting at most
/// its read timeout.
fn closed_by_peer(mut s: &Stream) -> bool {
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn sigterm_stops_every_process_with_idle_clients_on_every_port() {
    let mut c = Cluster::start("shutdown-sigterm", 2, default_settings());
    let mut client = c.client();
    client.put(b"k", b"v").unwrap();
    c.wait_converged(&[0, 1]);
    let coord = c.coordinator();
    let replica = 1 - coord;
    assert_ne!(c.nodes[coord].resp_addr, "off");

    // Idle clients on every port of every process.
    let idle: Vec<(usize, Stream)> = [coord, replica]
        .into_iter()
        .flat_map(|i| {
            [
                (i, node_conn(&c.nodes[i].addr)),
                (i, resp_conn(&c.nodes[i].resp_addr)),
            ]
        })
        .collect();
    let server_idle = [server_conn(&c.server.addr), resp_conn(&c.server.resp_addr)];

    // The coordinator first, while the replica follows it.
    signal(c.nodes[coord].pid(), libc::SIGTERM);
    assert_clean_exit(&mut c.nodes[coord], "the coordinator");
    for (_, s) in idle.iter().filter(|(i, _)| *i == coord) {
        assert!(closed_by_peer(s), "the coordinator closed its connections");
    }

    signal(c.nodes[replica].pid(), libc::SIGTERM);
    assert_clean_exit(&mut c.nodes[replica], "the replica");
    for (_, s) in idle.iter().filter(|(i, _)| *i == replica) {
        assert!(closed_by_peer(s), "the replica closed its connections");
    }

    signal(c.server.pid(), libc::SIGTERM);
    assert_clean_exit(&mut c.server, "the server");
    for s in &server_idle {
        assert!(closed_by_peer(s), "the server closed its connections");
    }
}

#[test]
fn sigint_stops_a_node_and_the_server_signalled_together() {
    let mut c = Cluster::start("shutdown-sigint", 1, default_settings());
    let _idle = [
        node_conn(&c.nodes[0].addr),
        resp_conn(&c.nodes[0].resp_addr),
        server_conn(&c.server.addr),
        resp_conn(&c.server.resp_addr),
    ];
    signal(c.nodes[0].pid(), libc::SIGINT);
    signal(c.server.pid(), libc::SIGINT);
    assert_clean_exit(&mut c.nodes[0], "the node");
    assert_clean_exit(&mut c.server, "the server");
    assert!(c.nodes[0].log_text().contains("SIGINT: stopping"));
}

/// Writes under way when the coordinator gets SIGTERM are each answered
/// (written, or an error saying the outcome is unknown) or cut, never left
/// hanging, and the process still exits 0 in time.
#[test]
fn writes_under_way_at_sigterm_are_answered_and_the_node_exits_0() {
    let mut c = Cluster::start("shutdown-writes", 2, default_settings());
    let coord = c.coordinator();
    let addr = c.nodes[coord].addr.clone();
    let (done_tx, done_rx) = mpsc::channel();
    let (started_tx, started_rx) = mpsc::channel();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (addr, done_tx, started_tx) = (addr.clone(), done_tx.clone(), started_tx.clone());
            std::thread::spawn(move || {
                let s = raw_client(&addr);
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let (mut written, mut refused) = (0u64, 0u64);
                for n in 0u64.. {
                    let req = Request::Put {
                        key: format!("w{w}-{n}").into_bytes(),
                        value: b"x".to_vec(),
                    };
                    match dkv::net::call::<_, Response>(&s, &req, 4 << 20) {
                        Ok(Response::Written) => written += 1,
                        Ok(Response::Error { .. }) | Ok(Response::NotCoordinator { .. }) => {
                            refused += 1
                        }
                        Ok(other) => panic!("unexpected answer to a write: {other:?}"),
                        // The node closed the connection.
                        Err(_) => break,
                    }
                    if n == 10 {
                        let _ = started_tx.send(());
                    }
                }
                let _ = done_tx.send((written, refused));
            })
        })
        .collect();
    for _ in 0..writers.len() {
        started_rx
            .recv_timeout(PATIENCE)
            .expect("writers under way");
    }
    signal(c.nodes[coord].pid(), libc::SIGTERM);
    assert_clean_exit(&mut c.nodes[coord], "the coordinator");
    let mut written = 0;
    for _ in 0..writers.len() {
        let (w, _) = done_rx
            .recv_timeout(EXIT_WITHIN)
            .expect("every writer's connection ends with the node");
        written += w;
    }
    for w in writers {
        w.join().unwrap();
    }
    assert!(written >= 40, "writes were acknowledged before the stop");
    let replica = 1 - coord;
    signal(c.nodes[replica].pid(), libc::SIGTERM);
    assert_clean_exit(&mut c.nodes[replica], "the replica");
}

/// Names of this process's threads (from /proc, at most 15 bytes each).
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect()
}

/// Runs `f` on a thread and fails unless it returns within `EXIT_WITHIN`.
fn returns_in_time(what: &str, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    rx.recv_timeout(EXIT_WITHIN)
        .unwrap_or_else(|_| panic!("{what} did not return within {EXIT_WITHIN:?}"));
    t.join().unwrap();
}

#[test]
fn node_and_server_shutdown_join_every_thread_with_connections_open() {
    let any = "127.0.0.1:0".parse().unwrap();
    let server = dkv::server::Server::start(dkv::server::ServerOptions {
        listen: any,
        settings: dkv::config::NodeSettings::default(),
        state_file: None,
        max_connections: 64,
        sentinel_listen: Some(any),
        metrics_listen: Some(any),
        cluster_name: "dkv".into(),
        security: Default::default(),
        recover_from_nodes: false,
        etcd: None,
    })
    .unwrap();
    let server_addr = server.addr().to_string();
    let start_node = || {
        dkv::node::Node::start(dkv::node::NodeOptions {
            server: dkv::ServerList::parse(&server_addr).unwrap(),
            listen: any,
            advertise: None,
            data_dir: None,
            resp_listen: Some(any),
            metrics_listen: Some(any),
            settings: dkv::config::NodeSettings::default(),
            security: Default::default(),
        })
        .unwrap()
    };
    let a = start_node();
    let b = start_node();
    let client = dkv::Client::connect(&server_addr).unwrap();
    wait_until("both nodes in sync", || {
        client.cluster_view().is_ok_and(|v| v.isr.len() == 2)
    });
    let (coord, replica) = match client.cluster_view().unwrap().coordinator {
        Some(id) if id == a.id() => (a, b),
        _ => (b, a),
    };
    let ids = [coord.id(), replica.id()];
    // The replica's follower and the coordinator's sender and ack reader.
    wait_until("the replication stream", || {
        let names = thread_names();
        names.iter().any(|n| n.starts_with("follower-"))
            && names.iter().any(|n| n.starts_with("acks-"))
    });
    let idle = [
        node_conn(&coord.data_addr().to_string()),
        resp_conn(&coord.resp_addr().unwrap().to_string()),
        node_conn(&replica.data_addr().to_string()),
        resp_conn(&replica.resp_addr().unwrap().to_string()),
        server_conn(&server_addr),
        resp_conn(&server.sentinel_addr().unwrap().to_string()),
    ];

    returns_in_time("the replica's Node::shutdown", move || replica.shutdown());
    returns_in_time("the coordinator's Node::shutdown", move || coord.shutdown());
    returns_in_time("Server::shutdown", move || server.shutdown());
    for s in &idle {
        assert!(closed_by_peer(s), "every connection was closed");
    }

    // Every thread they started was joined. A joined thread may linger in
    // /proc for an instant after its exit, hence the wait.
    let ours = |n: &str| {
        ids.iter()
            .any(|id| n.ends_with(&format!("-{id}")) || n.starts_with(&format!("acks-{id}-")))
            || n.starts_with("server-")
            || n.starts_with("sentinel-")
    };
    let mut left = Vec::new();
    let joined = wait_until_ok(|| {
        left = thread_names().into_iter().filter(|n| ours(n)).collect();
        left.is_empty().then_some(())
    });
    assert!(joined.is_some(), "threads still running: {left:?}");
}
