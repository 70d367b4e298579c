//! Failure detection, election and fencing with real processes: kill -9,
//! SIGSTOP/SIGCONT and server restarts under write load. Every test asserts
//! behaviour (who is coordinator, what reads back), never timing.

mod common;

use common::*;
use dkv::types::Role;
use dkv::wire::{Request, Response};
use serde_json::json;
use std::io::Write;

/// Waits until the server has granted an epoch above `epoch` and returns
/// (new epoch, index of the new coordinator).
fn wait_for_new_epoch(c: &Cluster, epoch: u64) -> (u64, usize) {
    let mut seen = 0;
    wait_until("a new epoch to be granted", || {
        let v = c.view();
        seen = v.epoch;
        v.epoch > epoch && v.coordinator.is_some()
    });
    (seen, c.coordinator())
}

#[test]
fn killing_the_coordinator_under_load_loses_no_acknowledged_write() {
    let mut c = Cluster::start("kill-coord", 3, json!({}));
    let writers = Writers::start(&c.server_addr(), 4, "a");
    writers.wait_acked(300);
    let old = c.coordinator();
    let old_id = c.nodes[old].id;
    c.nodes[old].kill();
    let (epoch, new) = wait_for_new_epoch(&c, 1);
    assert_eq!(epoch, 2);
    assert_ne!(c.nodes[new].id, old_id);
    // Writes go on after the failover (the writers' own clients find the
    // new coordinator).
    wait_for_progress(&c.server_addr(), "after-kill");
    writers.wait_acked(600);
    let log = writers.stop();
    assert!(!log.acked.is_empty());
    assert_all_read_back(&c.server_addr(), &log);
    let live: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    c.wait_converged(&live);
    let v = c.view();
    assert!(
        !v.isr.contains(&old_id),
        "the dead coordinator left the in-sync set"
    );
}

#[test]
fn killing_a_replica_shrinks_the_in_sync_set_and_a_restart_brings_it_back() {
    let mut c = Cluster::start("kill-replica", 0, json!({}));
    for _ in 0..3 {
        c.add_node_with_data_dir();
    }
    c.wait_for_isr(3);
    let writers = Writers::start(&c.server_addr(), 4, "b");
    writers.wait_acked(300);
    let coord = c.coordinator();
    let victim = (coord + 1) % 3;
    let victim_id = c.nodes[victim].id;
    c.nodes[victim].kill();
    wait_until("the dead replica to leave the in-sync set", || {
        !c.view().isr.contains(&victim_id)
    });
    // Writes continue without it.
    wait_for_progress(&c.server_addr(), "p2");
    assert_eq!(c.view().epoch, 1, "a replica's death is not a failover");
    // Restart it with its data dir: same id, catches up, back in sync.
    c.restart_node(victim);
    assert_eq!(
        c.nodes[victim].id, victim_id,
        "identity kept across restart"
    );
    wait_until("the restarted replica to rejoin the in-sync set", || {
        c.view().isr.contains(&victim_id)
    });
    let log = writers.stop();
    assert_all_read_back(&c.server_addr(), &log);
    c.wait_converged(&[0, 1, 2]);
}

#[test]
fn a_paused_coordinator_is_replaced_and_fenced_after_it_resumes() {
    let c = Cluster::start("sigstop", 3, json!({}));
    let old = c.coordinator();
    let old_addr = c.nodes[old].addr.clone();
    let mut cl = c.client();
    cl.put(b"before", b"1").unwrap();
    // A client connection to the old coordinator, opened before the pause.
    let stale = raw_client(&old_addr);

    stop_process(c.nodes[old].pid());
    // Sent while it is paused: sits in the socket buffer.
    let put = Request::Put {
        key: b"ghost".to_vec(),
        value: b"boo".to_vec(),
    };
    let mut frame = Vec::new();
    dkv::wire::encode_frame_into(&mut frame, &put);
    (&stale).write_all(&frame).unwrap();

    let (_, new) = wait_for_new_epoch(&c, 1);
    assert_ne!(new, old);
    // (`cl` still holds a connection to the paused node: a write sent there
    // could only end as "outcome unknown". A fresh client finds the new one.)
    let mut cl = c.client();
    cl.put(b"after", b"2").unwrap();

    signal(c.nodes[old].pid(), libc::SIGCONT);
    // The request buffered during the pause is refused, not acknowledged.
    let r: Response = dkv::wire::read_frame(&mut &stale, 1 << 20).unwrap();
    assert!(
        matches!(r, Response::NotCoordinator { .. } | Response::Error { .. }),
        "the resumed coordinator acknowledged a write: {r:?}"
    );
    // Fresh reads and writes to it are refused too.
    let s = raw_client(&old_addr);
    assert!(matches!(
        raw_call(
            &s,
            &Request::Get {
                key: b"before".to_vec()
            }
        ),
        Response::NotCoordinator { .. }
    ));
    assert!(matches!(
        raw_call(&s, &put),
        Response::NotCoordinator { .. } | Response::Error { .. }
    ));
    // It rejoins as a replica and converges; the ghost write exists nowhere.
    wait_until("the old coordinator to rejoin as a replica", || {
        c.status(old)
            .is_ok_and(|st| st.role == Role::Replica && st.epoch >= 2)
    });
    wait_until("the old coordinator to be back in sync", || {
        c.view().isr.contains(&c.nodes[old].id)
    });
    c.wait_converged(&[0, 1, 2]);
    assert_eq!(cl.get(b"ghost").unwrap(), None);
    assert_eq!(cl.get(b"before").unwrap(), Some(b"1".to_vec()));
    assert_eq!(cl.get(b"after").unwrap(), Some(b"2".to_vec()));
}

#[test]
fn killing_coordinators_one_after_another_keeps_every_acknowledged_write() {
    let mut c = Cluster::start("serial-kill", 3, json!({}));
    let mut cl = c.client();
    let mut written = Vec::new();
    let mut alive: Vec<usize> = vec![0, 1, 2];
    let mut epoch = 1;
    for round in 0..2 {
        for i in 0..200 {
            let k = format!("r{round}-k{i}");
            cl.put(k.as_bytes(), b"v").unwrap();
            written.push(k);
        }
        let coord = c.coordinator();
        c.nodes[coord].kill();
        alive.retain(|&i| i != coord);
        let (e, new) = wait_for_new_epoch(&c, epoch);
        assert!(alive.contains(&new));
        epoch = e;
        for k in &written {
            assert_eq!(
                cl.get(k.as_bytes()).unwrap(),
                Some(b"v".to_vec()),
                "{k} lost"
            );
        }
    }
    assert_eq!(alive.len(), 1);
    cl.put(b"last", b"standing").unwrap();
    assert_eq!(c.view().isr, vec![c.nodes[alive[0]].id]);
}

#[test]
fn restarting_the_server_never_yields_two_coordinators_or_a_lower_epoch() {
    let mut c = Cluster::start("server-restart", 3, json!({}));
    let writers = Writers::start(&c.server_addr(), 3, "s");
    wait_for_progress(&c.server_addr(), "p1");
    let mut max_epoch = c.view().epoch;
    // A short outage: the coordinator keeps its role and epoch.
    c.kill_server();
    check_single_coordinator(&c, &mut max_epoch);
    c.start_server_again();
    wait_for_progress(&c.server_addr(), "p2");
    check_single_coordinator(&c, &mut max_epoch);
    assert!(c.view().epoch >= max_epoch);

    // A long outage: the coordinator cannot renew its lease and steps down;
    // nobody may take over without the server.
    c.kill_server();
    wait_until("the coordinator to step down without the server", || {
        check_single_coordinator(&c, &mut max_epoch);
        (0..3).all(|i| c.status(i).is_ok_and(|st| st.role != Role::Coordinator))
    });
    let before = max_epoch;
    c.start_server_again();
    let v = c.view();
    assert!(
        v.epoch >= before,
        "the restarted server lost epochs: {} < {before}",
        v.epoch
    );
    wait_for_progress(&c.server_addr(), "p3");
    check_single_coordinator(&c, &mut max_epoch);
    let v = c.view();
    assert!(v.epoch > before, "writes resumed under a new grant");
    assert!(v.epoch >= max_epoch);
    let log = writers.stop();
    assert_all_read_back(&c.server_addr(), &log);
    c.wait_converged(&[0, 1, 2]);
}

/// At most one node acts as coordinator for any epoch, and epochs seen by
/// nodes never go down.
fn check_single_coordinator(c: &Cluster, max_epoch: &mut u64) {
    let mut coordinators = std::collections::HashMap::new();
    for i in 0..c.nodes.len() {
        if let Ok(st) = c.status(i) {
            if st.role == Role::Coordinator {
                if let Some(other) = coordinators.insert(st.epoch, st.node_id) {
                    panic!(
                        "nodes {other} and {} both coordinator of epoch {}",
                        st.node_id, st.epoch
                    );
                }
            }
            *max_epoch = (*max_epoch).max(st.epoch);
        }
    }
}

#[test]
fn below_min_in_sync_writes_are_refused_with_not_enough_replicas() {
    let mut c = Cluster::start("min-isr", 2, json!({"min-in-sync": 2}));
    let mut cl = c.client();
    cl.put(b"k", b"1").unwrap();
    let coord = c.coordinator();
    let replica = 1 - coord;
    let replica_id = c.nodes[replica].id;
    c.nodes[replica].kill();
    wait_until("the replica to leave the in-sync set", || {
        !c.view().isr.contains(&replica_id)
    });
    match cl.put(b"k", b"2") {
        Err(dkv::Error::NotEnoughReplicas(msg)) => assert!(msg.contains("2 required"), "{msg}"),
        other => panic!("expected NotEnoughReplicas, got {other:?}"),
    }
    let (code, _, err) = client_proto(&c.server_addr(), &["W,k,3"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("not enough in-sync replicas"), "{err}");
    // Nothing was written; reads still work.
    assert_eq!(cl.get(b"k").unwrap(), Some(b"1".to_vec()));
}

#[test]
fn restarting_the_coordinator_with_its_data_dir_hands_over_and_keeps_the_data() {
    let mut c = Cluster::start("restart-coord", 0, json!({}));
    for _ in 0..3 {
        c.add_node_with_data_dir();
    }
    c.wait_for_isr(3);
    let mut cl = c.client();
    for i in 0..300 {
        cl.put(format!("k{i}").as_bytes(), b"v").unwrap();
    }
    let old = c.coordinator();
    let old_id = c.nodes[old].id;
    c.restart_node(old);
    assert_eq!(c.nodes[old].id, old_id);
    // The restarted node holds nothing yet, so another in-sync node takes over.
    let (_, new) = wait_for_new_epoch(&c, 1);
    assert_ne!(c.nodes[new].id, old_id);
    let mut cl = c.client();
    for i in 0..300 {
        assert_eq!(
            cl.get(format!("k{i}").as_bytes()).unwrap(),
            Some(b"v".to_vec()),
            "k{i} lost"
        );
    }
    wait_until("the restarted node to be back in sync", || {
        c.view().isr.contains(&old_id)
    });
    let d = c.wait_converged(&[0, 1, 2]);
    assert_eq!(c.status(old).unwrap().digest, d);
    assert_eq!(c.status(old).unwrap().keys, 300);
}
