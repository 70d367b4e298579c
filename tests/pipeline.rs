//! Pipelined writes: a connection appends every write that arrived before it
//! waits for the first commit, and answers in command order; a read waits
//! for the connection's own earlier writes.

mod common;

use common::*;
use std::io::Write;

/// Sends every command in one write, then reads until the node closes
/// (the last command is QUIT).
fn pipeline(addr: &str, cmds: &[&[&[u8]]]) -> String {
    let mut bytes = Vec::new();
    for c in cmds {
        bytes.extend(resp_command(c));
    }
    bytes.extend(resp_command(&[b"QUIT"]));
    send_then_read(addr, &bytes)
}

#[test]
fn a_resp_pipeline_of_writes_and_reads_answers_in_order_and_reads_its_own_writes() {
    let c = Cluster::start("pipeline-resp", 3, default_settings());
    c.wait_for_isr(3);
    let coord = c.coordinator();
    let replica = (coord + 1) % 3;
    // At the coordinator (writes started together) and at a replica
    // (forwarded one by one): the same answers.
    for (i, who) in [(0, coord), (1, replica)] {
        let key = format!("k{i}");
        let k = key.as_bytes();
        let got = pipeline(
            &c.nodes[who].resp_addr,
            &[
                &[b"SET", k, b"1"],
                &[b"SET", k, b"2"],
                &[b"GET", k],
                &[b"DEL", k],
                &[b"DEL", k],
                &[b"GET", k],
                &[b"SET", k, b"3"],
                &[b"EXISTS", k],
            ],
        );
        assert_eq!(
            got, "+OK\r\n+OK\r\n$1\r\n2\r\n:1\r\n:0\r\n$-1\r\n+OK\r\n:1\r\n+OK\r\n",
            "node {who}"
        );
    }
    // A long pipeline of writes: every one acknowledged, in order, and
    // every one there afterwards.
    let n = 3000;
    let keys: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
    let cmds: Vec<Vec<&[u8]>> = keys
        .iter()
        .map(|k| vec![&b"SET"[..], k.as_bytes(), k.as_bytes()])
        .collect();
    let cmd_refs: Vec<&[&[u8]]> = cmds.iter().map(|c| c.as_slice()).collect();
    let got = pipeline(&c.nodes[coord].resp_addr, &cmd_refs);
    assert_eq!(got, "+OK\r\n".repeat(n + 1));
    let mut cl = c.client();
    for k in keys.iter().step_by(97) {
        assert_eq!(cl.get(k.as_bytes()).unwrap(), Some(k.as_bytes().to_vec()));
    }
    c.wait_converged(&[0, 1, 2]);
}

#[test]
fn a_native_pipeline_answers_in_order_and_reads_its_own_writes() {
    use dkv::wire::{Request, Response};
    let c = Cluster::start("pipeline-native", 3, default_settings());
    c.wait_for_isr(3);
    let coord = c.coordinator();
    let n = 2000usize;
    let mut reqs = Vec::new();
    for i in 0..n {
        reqs.push(Request::Put {
            key: format!("n{}", i % 100).into_bytes(),
            value: i.to_string().into_bytes(),
        });
        if i % 250 == 249 {
            // A read in the middle sees the writes before it.
            reqs.push(Request::Get {
                key: format!("n{}", i % 100).into_bytes(),
            });
        }
    }
    reqs.push(Request::Delete {
        key: b"n0".to_vec(),
    });
    reqs.push(Request::Get {
        key: b"n0".to_vec(),
    });
    let mut bytes = Vec::new();
    for r in &reqs {
        dkv::wire::encode_frame_into(&mut bytes, r);
    }
    let s = raw_client(&c.nodes[coord].addr);
    (&s).write_all(&bytes).unwrap();
    for (i, req) in reqs.iter().enumerate() {
        let got: Response = dkv::wire::read_frame(&mut &s, 1 << 20).unwrap();
        let want = match req {
            Request::Put { .. } => Response::Written,
            Request::Get { key } if key == b"n0" && i == reqs.len() - 1 => Response::Value(None),
            Request::Get { .. } => {
                // The Put just before it, in request order.
                let Request::Put { value, .. } = &reqs[i - 1] else {
                    unreachable!()
                };
                Response::Value(Some(value.clone()))
            }
            Request::Delete { .. } => Response::Deleted(true),
            _ => unreachable!(),
        };
        assert_eq!(got, want, "answer {i} to {req:?}");
    }
    c.wait_converged(&[0, 1, 2]);
}
