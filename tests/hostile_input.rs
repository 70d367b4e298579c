//! Bad input on every TCP and UDP port: the connection or datagram is dropped
//! with a log line, the process keeps serving, memory stays bounded, and no
//! data changes.

mod common;

use common::*;
use dkv::wire::{ConnKind, Hello, Request, Response};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

/// Deterministic pseudo-random bytes.
fn garbage(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `bytes` on a fresh connection and reads until the peer closes;
/// returns what the peer sent back.
fn send_raw(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut back = Vec::new();
    let _ = s.read_to_end(&mut back);
    back
}

fn hello(kind: ConnKind) -> Vec<u8> {
    encode_frame(&wire_encode(&Hello::new(kind, [7; 16])))
}

/// Every kind of bad TCP input we throw at a port that speaks the DKV framing.
fn tcp_attacks() -> Vec<(&'static str, Vec<u8>)> {
    let client_hello = hello(ConnKind::Client);
    let mut v: Vec<(&'static str, Vec<u8>)> = vec![
        ("random garbage", garbage(1, 4096)),
        (
            "4 GiB length prefix",
            vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4],
        ),
        ("truncated hello", {
            let mut h = client_hello.clone();
            h.truncate(h.len() - 2);
            h
        }),
        ("hello with bad magic", {
            let mut h = Hello::new(ConnKind::Client, [7; 16]);
            h.magic = 0x1234_5678;
            encode_frame(&wire_encode(&h))
        }),
        ("hello with future version", {
            let mut h = Hello::new(ConnKind::Client, [7; 16]);
            h.version = 999;
            encode_frame(&wire_encode(&h))
        }),
    ];
    let mut after_hello = |name: &'static str, tail: Vec<u8>| {
        let mut b = client_hello.clone();
        b.extend_from_slice(&tail);
        v.push((name, b));
    };
    after_hello(
        "4 GiB frame after hello",
        vec![0xff, 0xff, 0xff, 0xff, 0, 0],
    );
    after_hello("unknown message type", encode_frame(&[200, 1, 2, 3]));
    after_hello("truncated frame", {
        let mut f = encode_frame(&wire_encode(&Request::Put {
            key: b"evil".to_vec(),
            value: vec![7; 100],
        }));
        f.truncate(f.len() - 10);
        f
    });
    after_hello("vector length beyond limit", {
        let mut body = vec![1u8, 253];
        body.extend_from_slice(&(1u64 << 40).to_le_bytes());
        encode_frame(&body)
    });
    after_hello("random frames", {
        let mut b = Vec::new();
        for i in 0..50 {
            b.extend(encode_frame(&garbage(100 + i, (i as usize * 37) % 300)));
        }
        b
    });
    v
}

#[test]
fn garbage_on_every_port_is_dropped_and_changes_nothing() {
    let c = Cluster::start("hostile", 3, json!({}));
    let mut cl = c.client();
    for i in 0..100 {
        cl.put(format!("k{i}").as_bytes(), b"v").unwrap();
    }
    let digest = c.wait_converged(&[0, 1, 2]);
    let rss_before: Vec<u64> = c.nodes.iter().map(|n| n.rss_kib()).collect();

    // TCP: every node's data port and the server port, many times over.
    let mut targets: Vec<String> = c.nodes.iter().map(|n| n.addr.clone()).collect();
    targets.push(c.server_addr());
    for round in 0..20 {
        for (name, bytes) in tcp_attacks() {
            for t in &targets {
                let back = send_raw(t, &bytes);
                // Whatever came back is at most one small error frame.
                assert!(
                    back.len() < 4096,
                    "{name} on {t} produced {} bytes",
                    back.len()
                );
            }
        }
        // A follower handshake from a stranger claiming a bogus position
        // must not disturb anything either.
        if round == 0 {
            let f = hello(ConnKind::Follow(dkv::wire::FollowRequest {
                node_id: 999,
                incarnation: 1,
                epoch: 99,
                last: dkv::types::LogPos::new(99, 99),
                committed: dkv::types::LogPos::new(99, 9),
            }));
            for n in &c.nodes {
                send_raw(&n.addr, &f);
            }
        }
    }
    // UDP: garbage, oversized datagrams and forged beacons from a stranger.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    for n in &c.nodes {
        for i in 0..200 {
            let _ = udp.send_to(&garbage(i, (i as usize * 13) % 1400 + 1), &n.beacon_addr);
        }
        let _ = udp.send_to(&vec![0u8; 60_000], &n.beacon_addr);
        let forged = dkv::wire::Beacon {
            magic: dkv::wire::MAGIC,
            version: dkv::wire::PROTOCOL_VERSION,
            from: 4242,
            incarnation: 1,
            epoch: 1_000_000,
            role: dkv::types::Role::Coordinator,
            last: dkv::types::LogPos::new(1_000_000, 1),
            applied: dkv::types::LogPos::new(1_000_000, 1),
            digest: 0,
            seq: 1,
        };
        let _ = udp.send_to(&forged.encode(None), &n.beacon_addr);
    }

    // Still serving, same data, same epoch, no process died.
    for n in &c.nodes {
        let st = node_status(&n.addr).expect("node still answers");
        assert_eq!(st.digest, digest, "node {} data changed", n.id);
        assert_eq!(st.epoch, 1);
    }
    assert_eq!(c.view().epoch, 1);
    assert_eq!(cl.get(b"k7").unwrap(), Some(b"v".to_vec()));
    cl.put(b"after", b"attack").unwrap();
    assert_eq!(cl.get(b"after").unwrap(), Some(b"attack".to_vec()));
    c.wait_converged(&[0, 1, 2]);
    for (i, n) in c.nodes.iter().enumerate() {
        let grown = n.rss_kib().saturating_sub(rss_before[i]);
        assert!(grown < 64 * 1024, "node {} grew by {grown} KiB", n.id);
    }
    // Each drop left a log line saying why.
    let coord = c.coordinator();
    let log = c.nodes[coord].log_text();
    assert!(log.contains("bad handshake"), "{log}");
    assert!(
        log.contains("malformed") || log.contains("exceeds the limit"),
        "{log}"
    );
    assert!(log.contains("bad datagram"), "{log}");
    assert!(c.server.log_text().contains("bad handshake"));
    // A stranger that asked to follow was told no (or fed nothing), not panicked on.
    for n in &c.nodes {
        assert!(!n.log_text().contains("panicked"), "{}", n.log_text());
    }
}

#[test]
fn a_client_over_the_frame_limit_gets_an_error_frame() {
    let c = Cluster::start("frame-limit", 1, json!({"max-value-bytes": 1024}));
    let s = raw_client(&c.nodes[0].addr);
    // Declares a frame larger than max key + max value + envelope.
    let mut bytes = (10u32 << 20).to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0; 16]);
    (&s).write_all(&bytes).unwrap();
    let r: Response = dkv::wire::read_frame(&mut &s, 1 << 20).unwrap();
    assert!(
        matches!(r, Response::Error { kind: dkv::wire::ErrorKind::BadRequest, ref message } if message.contains("exceeds the limit")),
        "{r:?}"
    );
    assert_eq!(node_status(&c.nodes[0].addr).unwrap().keys, 0);
}
