//! The library's pipeline ([`dkv::Client::pipeline`]) and client_proto's
//! batches against real processes: answers in order, reads that see the
//! pipeline's own earlier writes, and a pipeline cut by a killed coordinator
//! that never reports an applied write as failed.

mod common;

use common::*;
use dkv::{Client, ClientOptions, Error, Op, OpResult};
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

/// `ops` applied one after another to a map: the answers a correct pipeline
/// gives, in order.
fn model(ops: &[Op], data: &mut HashMap<Vec<u8>, Vec<u8>>) -> Vec<OpResult> {
    ops.iter()
        .map(|op| match op {
            Op::Get(k) => OpResult::Value(data.get(k).cloned()),
            Op::Put(k, v) => {
                data.insert(k.clone(), v.clone());
                OpResult::Written
            }
            Op::Delete(k) => OpResult::Deleted(data.remove(k).is_some()),
        })
        .collect()
}

/// Reads `keys` with pipelines until every read got an answer (a new
/// coordinator may answer "unavailable" while it applies its predecessor's
/// writes).
fn read_all(cl: &mut Client, keys: &[Vec<u8>]) -> Vec<Option<Vec<u8>>> {
    let mut got: Vec<Option<Option<Vec<u8>>>> = vec![None; keys.len()];
    wait_until("every read to be answered", || {
        let todo: Vec<usize> = (0..keys.len()).filter(|&i| got[i].is_none()).collect();
        let ops: Vec<Op> = todo.iter().map(|&i| Op::Get(keys[i].clone())).collect();
        if let Ok(res) = cl.pipeline(&ops) {
            for (&i, r) in todo.iter().zip(res) {
                match r {
                    Ok(OpResult::Value(v)) => got[i] = Some(v),
                    Ok(other) => panic!("a read answered {other:?}"),
                    Err(Error::Unavailable(_)) => {}
                    Err(e) => panic!("read of {:?}: {e}", keys[i]),
                }
            }
        }
        got.iter().all(Option::is_some)
    });
    got.into_iter().map(Option::unwrap).collect()
}

#[test]
fn a_long_mixed_pipeline_answers_in_order_and_reads_its_own_writes() {
    let c = Cluster::start("cpipe-mixed", 3, default_settings());
    c.wait_for_isr(3);
    let key = |i: usize| format!("m{}", i % 97).into_bytes();
    let ops: Vec<Op> = (0..2000)
        .map(|i| match i % 6 {
            0 | 3 => Op::put(key(i), format!("v{i}")),
            1 | 4 => Op::get(key(i)),
            2 => Op::delete(key(i + 5)),
            _ => Op::put(key(i), vec![b'x'; i]),
        })
        .collect();
    let mut data = HashMap::new();
    let want = model(&ops, &mut data);
    let mut cl = c.client();
    let got = cl.pipeline(&ops).expect("the pipeline is sent");
    assert_eq!(got.len(), ops.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.as_ref().ok(), Some(w), "op {i} ({:?})", ops[i]);
    }
    // The reads saw writes of the same pipeline, and found some keys
    // missing after a delete: both kinds of answer were checked.
    assert!(want
        .iter()
        .any(|r| matches!(r, OpResult::Value(Some(v)) if v.starts_with(b"v"))));
    assert!(want.contains(&OpResult::Value(None)));
    // Everything reads back, one op at a time, and a second pipeline.
    let keys: Vec<Vec<u8>> = (0..97).map(key).collect();
    for k in &keys {
        assert_eq!(cl.get(k).unwrap(), data.get(k).cloned(), "{k:?}");
    }
    let again = read_all(&mut c.client(), &keys);
    for (k, v) in keys.iter().zip(again) {
        assert_eq!(v, data.get(k).cloned(), "{k:?}");
    }
    c.wait_converged(&[0, 1, 2]);
}

#[test]
fn a_pipeline_cut_by_a_killed_coordinator_never_reports_an_applied_write_as_failed() {
    let mut c = Cluster::start("cpipe-kill", 3, default_settings());
    c.wait_for_isr(3);
    let old = c.coordinator();
    let old_id = c.nodes[old].id;
    let base = c.status(old).unwrap().keys;
    // Long enough that the kill lands while it is sent (the test holds
    // whatever the split is): 3000 writes of 4 KiB, about 12 round trips of
    // 255, killed once 100 are applied, mostly in the first round trip (or,
    // at a node that commits a round trip at once, while the next one is
    // sent).
    let n = 3000;
    let value = |i: usize| {
        let mut v = format!("{i}:").into_bytes();
        v.resize(4096, b'a' + (i % 26) as u8);
        v
    };
    let keys: Vec<Vec<u8>> = (0..n).map(|i| format!("cut-{i}").into_bytes()).collect();
    let ops: Vec<Op> = (0..n).map(|i| Op::Put(keys[i].clone(), value(i))).collect();
    let server = c.server_addr();
    let writer = std::thread::spawn(move || {
        let opts = ClientOptions {
            op_timeout: Duration::from_secs(120),
            ..ClientOptions::default()
        };
        let mut cl = Client::with_options(&server, opts).expect("client connects");
        cl.pipeline(&ops).expect("the first round trip is sent")
    });
    wait_until("the pipeline to be under way", || {
        c.status(old).is_ok_and(|s| s.keys >= base + 100)
    });
    c.nodes[old].kill();
    let results = writer.join().expect("the pipeline returns");
    assert_eq!(results.len(), n);
    wait_until("another node to become coordinator", || {
        c.view().coordinator.is_some_and(|id| id != old_id)
    });
    let mut cl = c.client();
    let stored = read_all(&mut cl, &keys);
    let (mut acked, mut unknown, mut not_applied) = (0, 0, 0);
    for (i, (res, got)) in results.iter().zip(&stored).enumerate() {
        match res {
            Ok(OpResult::Written) => {
                acked += 1;
                assert_eq!(
                    got.as_deref(),
                    Some(&value(i)[..]),
                    "acknowledged write {i} lost"
                );
            }
            Ok(other) => panic!("write {i} answered {other:?}"),
            Err(Error::Indeterminate(_)) => {
                unknown += 1;
                assert!(
                    got.is_none() || got.as_deref() == Some(&value(i)[..]),
                    "write {i} of unknown outcome holds another value"
                );
            }
            Err(e) => {
                not_applied += 1;
                assert!(
                    got.is_none(),
                    "write {i} was reported as not applied ({e}) but is there"
                );
            }
        }
    }
    eprintln!("acknowledged {acked}, unknown {unknown}, not applied {not_applied}");
    let live: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    c.wait_converged(&live);
}

/// client_proto's expected stdout and exit code for `cmds`, run one by one.
fn expected_output(cmds: &[String]) -> (String, i32) {
    let mut data: HashMap<String, String> = HashMap::new();
    let mut out = String::new();
    let mut code = 0;
    for c in cmds {
        let parts: Vec<&str> = c.splitn(3, ',').collect();
        match parts[0] {
            "W" => {
                data.insert(parts[1].into(), parts[2].into());
                out.push_str("OK\n");
            }
            "R" => match data.get(parts[1]) {
                Some(v) => out.push_str(&format!("{v}\n")),
                None => {
                    out.push('\n');
                    code = 1;
                }
            },
            "D" => match data.remove(parts[1]) {
                Some(_) => out.push_str("OK\n"),
                None => {
                    out.push('\n');
                    code = 1;
                }
            },
            "T" => out.push_str("OK\n"),
            other => panic!("{other}"),
        }
    }
    (out, code)
}

#[test]
fn client_proto_prints_one_line_per_command_in_order_when_batching() {
    let c = Cluster::start("cpipe-proto", 3, default_settings());
    c.wait_for_isr(3);
    let mut cmds: Vec<String> = Vec::new();
    for i in 0..1500 {
        let k = i % 41;
        cmds.push(format!("W,p{k},v{i}"));
        if i % 3 == 0 {
            cmds.push(format!("R,p{}", (i * 7) % 41));
        }
        if i % 17 == 0 {
            cmds.push(format!("D,p{}", (i + 1) % 41));
        }
        if i == 700 {
            cmds.push("T,1".into());
        }
    }
    cmds.push("R,never-written".into());
    cmds.push("W,last,done".into());
    cmds.push("R,last".into());
    let (want, want_code) = expected_output(&cmds);
    assert_eq!(want_code, 1, "the list reads a missing key");
    let args: Vec<&str> = cmds.iter().map(String::as_str).collect();
    let (code, out, err) = client_proto(&c.server_addr(), &args);
    assert_eq!(code, want_code, "{err}");
    assert_eq!(out.lines().count(), cmds.len());
    assert_eq!(out, want);
    assert!(err.contains("key 'never-written' not found"), "{err}");
    // Escapes are unchanged by batching.
    let (code, out, err) = client_proto(
        &c.server_addr(),
        &[r"W,a\,b,one\ntwo\\three", r"R,a\,b", r"D,a\,b", r"R,a\,b"],
    );
    assert_eq!(
        (code, out.as_str()),
        (1, "OK\none\\ntwo\\\\three\nOK\n\n"),
        "{err}"
    );
}

#[test]
fn client_proto_lists_what_became_of_the_commands_sent_after_a_failed_one() {
    let mut c = Cluster::start("cpipe-refused", 2, json!({"min-in-sync": 2}));
    let coord = c.coordinator();
    let replica = 1 - coord;
    let replica_id = c.nodes[replica].id;
    c.client().put(b"there", b"1").unwrap();
    c.nodes[replica].kill();
    wait_until("the replica to leave the in-sync set", || {
        !c.view().isr.contains(&replica_id)
    });
    let (code, out, err) = client_proto(
        &c.server_addr(),
        &["R,there", "W,b,1", "R,there", "D,there", "W,c,2"],
    );
    // As one by one: the read printed, the refused write ends the run with
    // exit code 3; the commands sent with it are accounted for on stderr.
    assert_eq!(code, 3, "{err}");
    assert_eq!(out, "1\n");
    assert!(err.contains("not enough in-sync replicas"), "{err}");
    assert!(
        err.contains("commands 3 to 5 had been sent in one batch with command 2"),
        "{err}"
    );
    assert!(err.contains("writes and deletes not applied: 4-5"), "{err}");
    assert!(err.contains("reads not printed: 3"), "{err}");
    let mut cl = c.client();
    assert_eq!(cl.get(b"there").unwrap(), Some(b"1".to_vec()));
    assert_eq!(cl.get(b"c").unwrap(), None);
}
