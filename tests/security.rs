//! Strangers and hostile clients: cluster secret, replay protection, client
//! password, connection limits and timeouts, max-memory. Real processes on
//! loopback; the replay test captures real beacons with a packet socket
//! (needs root, as CI runs).

mod common;

use common::*;
use dkv::auth::ClusterKey;
use dkv::types::{LogPos, Role};
use dkv::wire::{
    self, Beacon, ConnKind, ErrorKind, Hello, HelloReply, Request, Response, Sealer, ServerRequest,
    MAGIC, PROTOCOL_VERSION,
};
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SECRET: &str = "correct horse battery staple";
const WRONG: &str = "incorrect horse battery staple";

fn secured(name: &str, n: usize) -> Cluster {
    Cluster::start_secured(
        name,
        n,
        default_settings(),
        Secrets {
            cluster_secret: Some(SECRET),
            password: None,
            tls: false,
        },
    )
}

/// Runs `dkv-node` against the cluster with `env` set and waits for it to
/// exit; returns (exit code, stderr).
fn node_exit(c: &Cluster, config: &std::path::Path, env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(NODE_BIN);
    die_with_parent(&mut cmd);
    cmd.args([&c.server_addr(), "-c", config.to_str().unwrap()])
        .env_remove("DKV_CLUSTER_SECRET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn beacon(from: u64, epoch: u64, role: Role, last: LogPos, seq: u64) -> Beacon {
    Beacon {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        from,
        incarnation: 1_000,
        epoch,
        role,
        last,
        applied: last,
        digest: 0,
        seq,
    }
}

/// Opens a peer connection the way a stranger would: it ignores the
/// acceptor's proof and seals its frames with the key it has.
fn rogue_peer(addr: &str, kind: ConnKind, key: &ClusterKey) -> (TcpStream, Sealer) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mine = dkv::auth::nonce();
    let hello = Hello::new(kind, mine);
    wire::write_frame(&mut &s, &hello).unwrap();
    let reply: HelloReply = wire::read_frame(&mut &s, 1024).unwrap();
    let HelloReply::Accept { nonce, proof } = reply else {
        panic!("unexpected {reply:?}")
    };
    assert!(proof.is_some(), "a secured acceptor proves itself");
    let mut tx = Sealer::new(Some(key.session(&mine, &nonce).0));
    tx.write(&mut &s, &hello).unwrap();
    (s, tx)
}

/// True once the peer closed the connection (reads EOF or an error).
fn closed_by_peer(s: &TcpStream) -> bool {
    let mut b = [0u8; 64];
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    loop {
        match (&*s).read(&mut b) {
            Ok(0) | Err(_) => return true,
            Ok(_) => continue, // an error reply; the close follows
        }
    }
}

#[test]
fn a_node_with_the_wrong_secret_cannot_register_or_act() {
    let c = secured("wrong-secret", 3);
    let coord = c.coordinator();
    let epoch = c.view().epoch;

    // A node whose secret (from the environment, overriding the file) is wrong.
    let (code, err) = node_exit(&c, &c.config, &[("DKV_CLUSTER_SECRET", WRONG)]);
    assert_ne!(code, 0);
    assert!(err.contains("cluster secret mismatch"), "stderr: {err}");
    // A node without any secret.
    let open_cfg = c.dir.join("open.json");
    std::fs::write(
        &open_cfg,
        format!(r#"{{"server-ip-port": "{}"}}"#, c.server_addr()),
    )
    .unwrap();
    let (code, err) = node_exit(&c, &open_cfg, &[]);
    assert_ne!(code, 0);
    assert!(err.contains("requires the cluster secret"), "stderr: {err}");
    // The library refuses the same way.
    let wrong = ClusterKey::new(WRONG.as_bytes());
    let e = dkv::net::connect_peer(
        &c.server_addr(),
        ConnKind::Member,
        Duration::from_secs(5),
        Some(&wrong),
        None,
    )
    .err()
    .expect("refused");
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);

    // A stranger that ignores the proof cannot register, ask for a grant or
    // push a status: the server closes on its first frame and counts it.
    let requests = [
        ServerRequest::Register {
            node_id: None,
            incarnation: 1,
            data_addr: "127.0.0.1:1".into(),
            beacon_addr: "127.0.0.1:1".into(),
            last: LogPos::new(1_000, 1_000),
            resp_addr: None,
        },
        ServerRequest::RequestGrant {
            candidate: 4242,
            epoch,
            last: LogPos::new(1_000, 1_000),
        },
    ];
    for req in &requests {
        let (s, mut tx) = rogue_peer(&c.server_addr(), ConnKind::Member, &wrong);
        let _ = tx.write(&mut &s, req);
        assert!(closed_by_peer(&s));
    }
    // Member-only requests on a client connection are refused too.
    let s = dkv::net::connect(&c.server_addr(), Duration::from_secs(5)).unwrap();
    match dkv::net::call::<_, wire::ServerResponse>(&s, &requests[1], 1 << 20).unwrap() {
        wire::ServerResponse::Error { kind, .. } => assert_eq!(kind, ErrorKind::AuthFailed),
        other => panic!("grant on a client connection: {other:?}"),
    }
    // The same for the replication stream at the coordinator.
    let follow = ConnKind::Follow(wire::FollowRequest {
        node_id: c.nodes[(coord + 1) % 3].id,
        incarnation: 99,
        epoch,
        last: LogPos::ZERO,
        committed: LogPos::ZERO,
    });
    let (s, mut tx) = rogue_peer(&c.nodes[coord].addr, follow, &wrong);
    let _ = tx.write(
        &mut &s,
        &wire::ReplAck {
            epoch,
            last: LogPos::ZERO,
            leaving: false,
        },
    );
    assert!(closed_by_peer(&s));

    let view = c.view();
    assert_eq!(view.members.len(), 3, "nobody joined");
    assert_eq!(view.epoch, epoch, "no grant was given");
    assert!(view.auth.cluster_secret);
    assert!(
        view.auth.rejected_peers >= 2,
        "server counts refused peers: {:?}",
        view.auth
    );
    wait_until("the coordinator to count the refused stream", || {
        c.status(coord).unwrap().auth.rejected_peers >= 1
    });

    // Forged beacons: the coordinator "stepping down" (which would start an
    // election at once) and a stranger with the best log. Dropped, counted.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let coord_id = c.nodes[coord].id;
    let claims = [
        beacon(
            coord_id,
            epoch,
            Role::Replica,
            LogPos::new(epoch, 1),
            1 << 40,
        ),
        beacon(
            4242,
            epoch + 5,
            Role::Coordinator,
            LogPos::new(epoch + 5, 1 << 30),
            1,
        ),
    ];
    let sent = 50u64;
    for n in &c.nodes {
        for i in 0..sent {
            let b = &claims[(i % 2) as usize];
            udp.send_to(&b.encode(Some(&wrong)), &n.beacon_addr)
                .unwrap();
        }
    }
    for i in 0..3 {
        wait_until("every node to count the forged beacons", || {
            c.status(i).unwrap().auth.forged_beacons >= sent
        });
    }
    let view = c.view();
    assert_eq!(view.epoch, epoch, "a forged beacon started an election");
    assert_eq!(view.coordinator, Some(coord_id));

    // Killing the coordinator while a stranger keeps sending beacons in its
    // name ("alive, coordinator, best log"): the members elect a new one.
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        let targets: Vec<String> = c.nodes.iter().map(|n| n.beacon_addr.clone()).collect();
        std::thread::spawn(move || {
            let mut seq = 1u64 << 41;
            while !stop.load(Ordering::Acquire) {
                seq += 1;
                let last = LogPos::new(epoch, 1 << 30);
                let claim = beacon(coord_id, epoch, Role::Coordinator, last, seq);
                for t in &targets {
                    let _ = udp.send_to(&claim.encode(Some(&wrong)), t);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let mut c = c;
    c.nodes[coord].kill();
    wait_until("a member to win the election", || {
        c.client()
            .cluster_view()
            .is_ok_and(|v| v.epoch > epoch && v.coordinator.is_some_and(|id| id != coord_id))
    });
    stop.store(true, Ordering::Release);
    flood.join().unwrap();
    let v = c.view();
    let winner = v.coordinator.unwrap();
    assert!(c.nodes.iter().any(|n| n.id == winner));
    let mut cl = c.client();
    cl.put(b"after", b"election").unwrap();
    assert_eq!(cl.get(b"after").unwrap(), Some(b"election".to_vec()));
}

/// Captures UDP datagrams sent from `port` on the loopback interface.
struct Capture(i32);

impl Capture {
    fn open() -> Option<Capture> {
        loopback_packet_socket(
            libc::SOCK_DGRAM,
            libc::ETH_P_IP as u16,
            std::time::Duration::from_secs(1),
        )
        .map(Capture)
    }

    /// The next UDP payload sent from `port`, if one comes within [`PATIENCE`].
    fn next_from(&self, port: u16) -> Option<Vec<u8>> {
        let mut buf = [0u8; 2048];
        let deadline = std::time::Instant::now() + PATIENCE;
        while std::time::Instant::now() < deadline {
            // SAFETY: recv into a buffer we own, bounded by its length.
            let n = unsafe { libc::recv(self.0, buf.as_mut_ptr() as *mut _, buf.len(), 0) };
            if n <= 0 {
                continue;
            }
            let p = &buf[..n as usize];
            if p.len() < 28 || p[0] >> 4 != 4 || p[9] != 17 {
                continue;
            }
            let ihl = (p[0] & 0x0f) as usize * 4;
            let udp = &p[ihl..];
            if udp.len() < 8 || u16::from_be_bytes([udp[0], udp[1]]) != port {
                continue;
            }
            return Some(udp[8..].to_vec());
        }
        None
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // SAFETY: closing the descriptor we opened.
        unsafe { libc::close(self.0) };
    }
}

#[test]
fn replayed_beacons_of_a_killed_coordinator_do_not_keep_it_alive() {
    let cap = Capture::open();
    if !require(
        cap.is_some(),
        "capturing beacons needs a packet socket (AF_PACKET, CAP_NET_RAW)",
        "run the tests as root, as CI does",
    ) {
        return;
    }
    let cap = cap.expect("checked");
    let mut c = secured("replay", 3);
    let coord = c.coordinator();
    let epoch = c.view().epoch;
    let port: u16 = c.nodes[coord]
        .beacon_addr
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap();
    // Record a few seconds' worth of the coordinator's real beacons.
    let mut captured = Vec::new();
    while captured.len() < 40 {
        let b = cap.next_from(port).expect("the coordinator sends beacons");
        if !captured.contains(&b) {
            captured.push(b);
        }
    }
    drop(cap);
    c.nodes[coord].kill();

    // Play them back to the replicas, in order and over again, until they
    // elect a new coordinator. Accepted, they would keep the dead one alive.
    let stop = Arc::new(AtomicBool::new(false));
    let replayer = {
        let stop = stop.clone();
        let targets: Vec<String> = (0..3)
            .filter(|&i| i != coord)
            .map(|i| c.nodes[i].beacon_addr.clone())
            .collect();
        std::thread::spawn(move || {
            let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut sent = 0u64;
            while !stop.load(Ordering::Acquire) {
                for b in &captured {
                    for t in &targets {
                        let _ = udp.send_to(b, t);
                        sent += 1;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            sent
        })
    };
    wait_until("a new coordinator despite the replayed beacons", || {
        c.client()
            .cluster_view()
            .is_ok_and(|v| v.epoch > epoch && v.coordinator != Some(c.nodes[coord].id))
    });
    stop.store(true, Ordering::Release);
    let sent = replayer.join().unwrap();
    assert!(sent > 0);
    let replayed: u64 = (0..3)
        .filter(|&i| i != coord)
        .map(|i| c.status(i).unwrap().auth.replayed_beacons)
        .sum();
    assert!(replayed > 0, "replays were dropped and counted");
    let mut cl = c.client();
    cl.put(b"k", b"v").unwrap();
}

fn resp_roundtrip(s: &mut TcpStream, cmd: &str) -> String {
    s.write_all(cmd.as_bytes()).unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn clients_without_the_password_are_refused_on_both_protocols() {
    let c = Cluster::start_secured(
        "password",
        3,
        default_settings(),
        Secrets {
            cluster_secret: Some(SECRET),
            password: Some("s3cret-pw"),
            tls: false,
        },
    );
    let coord = c.coordinator();
    c.client().put(b"k", b"v").unwrap();

    // Native protocol, raw: nothing but AUTH before authenticating.
    let s = raw_client(&c.nodes[coord].addr);
    for req in [
        Request::Get { key: b"k".to_vec() },
        Request::Put {
            key: b"stranger".to_vec(),
            value: b"x".to_vec(),
        },
        Request::Status,
    ] {
        match raw_call(&s, &req) {
            Response::Error { kind, message } => {
                assert_eq!(kind, ErrorKind::AuthRequired);
                assert!(message.contains("authentication required"), "{message}");
            }
            other => panic!("{req:?} without password: {other:?}"),
        }
    }
    let wrong = Request::Auth {
        password: b"guess".to_vec(),
    };
    assert!(matches!(
        raw_call(&s, &wrong),
        Response::Error {
            kind: ErrorKind::AuthFailed,
            ..
        }
    ));
    let right = Request::Auth {
        password: b"s3cret-pw".to_vec(),
    };
    assert_eq!(raw_call(&s, &right), Response::Authenticated);
    assert_eq!(
        raw_call(&s, &Request::Get { key: b"k".to_vec() }),
        Response::Value(Some(b"v".to_vec()))
    );
    // The server's lookups need it too; the library says so.
    match dkv::Client::connect(&c.server_addr()) {
        Err(dkv::Error::Auth(m)) => assert!(m.contains("authentication required"), "{m}"),
        other => panic!("client without password: {:?}", other.map(|_| ())),
    }

    // client_proto: the flag or DKV_PASSWORD.
    let run = |args: &[&str], env: Option<&str>| {
        let mut cmd = Command::new(CLIENT_PROTO_BIN);
        cmd.args(args).env_remove("DKV_PASSWORD");
        if let Some(p) = env {
            cmd.env("DKV_PASSWORD", p);
        }
        cmd.output().unwrap()
    };
    let srv = c.server_addr();
    let out = run(&[&srv, "R,k"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("authentication"));
    let out = run(&[&srv, "R,k"], Some("s3cret-pw"));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v");
    let out = run(&["--password", "s3cret-pw", &srv, "W,k2,v2"], None);
    assert!(out.status.success(), "{out:?}");

    // RESP, on a replica and on the coordinator.
    for i in [coord, (coord + 1) % 3] {
        let mut r = TcpStream::connect(&c.nodes[i].resp_addr).unwrap();
        r.set_read_timeout(Some(PATIENCE)).unwrap();
        assert!(resp_roundtrip(&mut r, "GET k\r\n").starts_with("-NOAUTH"));
        assert!(resp_roundtrip(&mut r, "SET stranger x\r\n").starts_with("-NOAUTH"));
        assert!(resp_roundtrip(&mut r, "AUTH guess\r\n").starts_with("-WRONGPASS"));
        assert!(resp_roundtrip(&mut r, "AUTH default s3cret-pw\r\n").starts_with("+OK"));
        assert_eq!(resp_roundtrip(&mut r, "GET k\r\n"), "$1\r\nv\r\n");
        let info = resp_roundtrip(&mut r, "INFO\r\n");
        assert!(info.contains("dkv_failed_client_auth:"), "{info}");
        assert!(!info.contains("dkv_failed_client_auth:0"), "{info}");
    }
    // Before it authenticated a client cannot make a node buffer a large
    // command (native: 8 KiB frames; RESP: 16 KiB commands).
    let s = raw_client(&c.nodes[coord].addr);
    let big = Request::Put {
        key: b"big".to_vec(),
        value: vec![b'x'; 20_000],
    };
    match raw_call(&s, &big) {
        Response::Error { kind, message } => {
            assert_eq!(kind, ErrorKind::BadRequest);
            assert!(message.contains("exceeds"), "{message}");
            assert!(message.contains("before AUTH"), "{message}");
        }
        other => panic!("large frame before AUTH: {other:?}"),
    }
    assert!(closed_by_peer(s.socket()));
    let mut r = TcpStream::connect(&c.nodes[coord].resp_addr).unwrap();
    r.set_read_timeout(Some(PATIENCE)).unwrap();
    let cmd = format!(
        "*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$20000\r\n{}\r\n",
        "x".repeat(20_000)
    );
    let reply = resp_roundtrip(&mut r, &cmd);
    assert!(reply.starts_with("-ERR Protocol error"), "{reply}");
    assert!(closed_by_peer(&r));

    // Guessing is cut short: the third wrong password closes the connection.
    let s = raw_client(&c.nodes[coord].addr);
    for _ in 0..3 {
        assert!(matches!(
            raw_call(&s, &wrong),
            Response::Error {
                kind: ErrorKind::AuthFailed,
                ..
            }
        ));
    }
    assert!(closed_by_peer(s.socket()));
    // Also when the guesses come pipelined, many in one write.
    let s = raw_client(&c.nodes[coord].addr);
    let mut guesses = Vec::new();
    for _ in 0..50 {
        dkv::wire::encode_frame_into(&mut guesses, &wrong);
    }
    (&s).write_all(&guesses).unwrap();
    let mut answered = 0;
    while let Ok(r) = dkv::wire::read_frame::<_, Response>(&mut &s, 1 << 20) {
        assert!(matches!(
            r,
            Response::Error {
                kind: ErrorKind::AuthFailed,
                ..
            }
        ));
        answered += 1;
    }
    assert_eq!(
        answered, 3,
        "the third wrong password closes the connection"
    );
    let mut r = TcpStream::connect(&c.nodes[coord].resp_addr).unwrap();
    r.set_read_timeout(Some(PATIENCE)).unwrap();
    for _ in 0..3 {
        assert!(resp_roundtrip(&mut r, "AUTH guess\r\n").starts_with("-WRONGPASS"));
    }
    assert!(closed_by_peer(&r));

    // The server's Sentinel port too.
    let mut r = TcpStream::connect(&c.server.resp_addr).unwrap();
    r.set_read_timeout(Some(PATIENCE)).unwrap();
    let ask = "SENTINEL get-master-addr-by-name dkv\r\n";
    assert!(resp_roundtrip(&mut r, ask).starts_with("-NOAUTH"));
    assert!(resp_roundtrip(&mut r, "AUTH guess\r\n").starts_with("-WRONGPASS"));
    assert!(resp_roundtrip(&mut r, "AUTH s3cret-pw\r\n").starts_with("+OK"));
    assert!(resp_roundtrip(&mut r, ask).starts_with("*2\r\n"));
    // Its wrong passwords are counted with the server's.
    assert!(c.view().auth.failed_client_auth >= 1);
    // Nothing the strangers sent was written.
    assert_eq!(c.client().get(b"stranger").unwrap(), None);
}

/// Raises this test process's open-file limit for many sockets.
fn raise_fd_limit(need: u64) {
    let got = dkv::net::raise_fd_limit();
    assert!(got >= need, "open-file limit {got} is below {need}");
}

#[test]
fn two_thousand_idle_connections_do_not_stop_a_client() {
    raise_fd_limit(4200);
    let c = Cluster::start("idle-conns", 3, default_settings());
    let coord = c.coordinator();
    let targets = [
        c.nodes[coord].addr.clone(),
        c.nodes[coord].resp_addr.clone(),
    ];
    let idle: Vec<TcpStream> = (0..2000)
        .map(|i| TcpStream::connect(&targets[i % 2]).expect("connect"))
        .collect();
    let mut cl = c.client();
    cl.put(b"busy", b"yes").unwrap();
    assert_eq!(cl.get(b"busy").unwrap(), Some(b"yes".to_vec()));
    let out = Command::new(CLIENT_PROTO_BIN)
        .args([&c.server_addr(), "W,a,1", "R,a"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut r = TcpStream::connect(&c.nodes[coord].resp_addr).unwrap();
    r.set_read_timeout(Some(PATIENCE)).unwrap();
    assert_eq!(resp_roundtrip(&mut r, "GET busy\r\n"), "$3\r\nyes\r\n");
    drop(idle);
    // An open cluster says so at start.
    assert!(c.server.log_text().contains("no cluster secret"));
    assert!(c.nodes[0].log_text().contains("no cluster secret"));
}

#[test]
fn a_slowloris_client_is_disconnected() {
    let c = Cluster::start("slowloris", 1, serde_json::json!({ "read-timeout": 500 }));
    let node = &c.nodes[0];
    // Each attack trickles one byte every 100 ms: far slower than a request
    // should take, but never silent long enough for an idle timeout.
    let mut hello = Vec::new();
    wire::encode_frame_into(&mut hello, &Hello::new(ConnKind::Client, [1; 16]));
    let mut frame = Vec::new();
    wire::encode_frame_into(
        &mut frame,
        &Request::Put {
            key: b"slow".to_vec(),
            value: vec![b'x'; 4000],
        },
    );
    let attacks: Vec<(&str, &str, Vec<u8>, Vec<u8>)> = vec![
        ("handshake", node.addr.as_str(), vec![], hello.clone()),
        ("native request", node.addr.as_str(), hello, frame),
        (
            "RESP command",
            node.resp_addr.as_str(),
            vec![],
            format!(
                "*3\r\n$3\r\nSET\r\n$4\r\nslow\r\n$4000\r\n{}\r\n",
                "x".repeat(4000)
            )
            .into_bytes(),
        ),
    ];
    for (what, addr, prefix, body) in attacks {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&prefix).unwrap();
        let mut cut = false;
        let mut said = Vec::new();
        for b in &body {
            if s.write_all(std::slice::from_ref(b)).is_err() {
                cut = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            s.set_nonblocking(true).unwrap();
            let mut probe = [0u8; 256];
            let gone = match s.read(&mut probe) {
                Ok(n) => {
                    said.extend_from_slice(&probe[..n]);
                    true // EOF, or the explanation before the close
                }
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            };
            s.set_nonblocking(false).unwrap();
            if gone {
                cut = true;
                break;
            }
        }
        assert!(cut, "{what}: a trickling client was never disconnected");
        if what != "handshake" {
            // The close comes with a reason (the rest of it may still be in flight).
            s.set_read_timeout(Some(PATIENCE)).unwrap();
            let _ = s.read_to_end(&mut said);
            let said = String::from_utf8_lossy(&said);
            assert!(
                said.contains("read-timeout"),
                "{what}: closed without a reason: {said:?}"
            );
        }
    }
    // A client that is quiet after its handshake is idle, not slow: it is
    // served after waiting longer than the read-timeout.
    let s = raw_client(&node.addr);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        raw_call(&s, &Request::Get { key: b"x".to_vec() }),
        Response::Value(None)
    );
    // A RESP client pipelining without pause for several read-timeouts, its
    // stream cut at arbitrary points, is served: every completed command
    // restarts the deadline.
    let n = 4000;
    let stream: Vec<u8> = (0..n)
        .flat_map(|i| format!("SET pipe{i} value-{i}\r\n").into_bytes())
        .collect();
    let mut w = TcpStream::connect(&node.resp_addr).unwrap();
    let mut r = w.try_clone().unwrap();
    r.set_read_timeout(Some(PATIENCE)).unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        while got.iter().filter(|&&b| b == b'\n').count() < n {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => got.extend_from_slice(&buf[..k]),
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    });
    for chunk in stream.chunks(997) {
        w.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(20)); // the pace of a slow producer
    }
    let replies = reader.join().unwrap();
    assert_eq!(
        replies.matches("+OK\r\n").count(),
        n,
        "{}",
        &replies[replies.len().saturating_sub(300)..]
    );

    // The node still serves, and the slow write never happened.
    let mut cl = c.client();
    assert_eq!(cl.get(b"slow").unwrap(), None);
    cl.put(b"fast", b"ok").unwrap();
}

#[test]
fn max_memory_refuses_writes_and_keeps_reads() {
    let c = Cluster::start(
        "max-memory",
        3,
        serde_json::json!({ "max-memory": 200 * 1024 }),
    );
    let mut cl = c.client();
    let value = vec![b'v'; 1000];
    let mut written = Vec::new();
    let refusal = loop {
        let k = format!("key-{}", written.len());
        match cl.put(k.as_bytes(), &value) {
            Ok(()) => written.push(k),
            Err(e) => break e,
        }
        assert!(written.len() < 1000, "max-memory never reached");
    };
    match &refusal {
        dkv::Error::OutOfMemory(m) => assert!(m.contains("max-memory"), "{m}"),
        other => panic!("expected an out-of-memory error, got {other}"),
    }
    assert!(written.len() >= 150, "refused too early: {}", written.len());
    // Reads still work, nothing acknowledged is lost.
    for k in &written {
        assert_eq!(cl.get(k.as_bytes()).unwrap().as_deref(), Some(&value[..]));
    }
    let coord = c.coordinator();
    let st = c.status(coord).unwrap();
    assert!(st.used_memory >= 200 * 1024 && st.max_memory == 200 * 1024);
    // RESP says OOM, like Redis.
    let mut r = TcpStream::connect(&c.nodes[coord].resp_addr).unwrap();
    r.set_read_timeout(Some(PATIENCE)).unwrap();
    assert!(resp_roundtrip(&mut r, "SET more x\r\n").starts_with("-OOM"));
    assert!(resp_roundtrip(&mut r, "GET key-0\r\n").starts_with("$1000"));
    // Deleting frees room: writes work again.
    for k in written.iter().take(20) {
        assert!(cl.delete(k.as_bytes()).unwrap());
    }
    cl.put(b"fits-again", b"yes").unwrap();
    c.wait_converged(&[0, 1, 2]);
}
