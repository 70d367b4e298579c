//! The registry server restarted under a running cluster: with its state
//! file, without it, and when only an operator can choose.

mod common;

use common::*;
use dkv::types::Role;
use dkv::{Client, ClientOptions};
use serde_json::json;
use std::time::Duration;

/// At most one node acts as coordinator per epoch; returns the highest
/// epoch any node is at.
fn single_coordinator(c: &Cluster, live: &[usize]) -> u64 {
    let mut seen = std::collections::HashMap::new();
    let mut max = 0;
    for &i in live {
        if let Ok(st) = c.status(i) {
            if st.role == Role::Coordinator {
                if let Some(other) = seen.insert(st.epoch, st.node_id) {
                    panic!(
                        "nodes {other} and {} both coordinator of epoch {}",
                        st.node_id, st.epoch
                    );
                }
            }
            max = max.max(st.epoch);
        }
    }
    max
}

#[test]
fn a_restarted_server_serves_again_with_or_without_its_state_file() {
    let mut c = Cluster::start("restart-state", 3, json!({}));
    let writers = Writers::start(&c.server_addr(), 3, "w");
    writers.wait_acked(50);

    // kill -9 and restart with the state file, the nodes left running.
    c.kill_server();
    c.start_server_again();
    wait_for_progress(&c.server_addr(), "p1");
    let before = single_coordinator(&c, &[0, 1, 2]);

    // kill -9 and restart with the state file deleted, the coordinator alive.
    c.kill_server();
    std::fs::remove_file(c.state_file()).expect("the server wrote its state file");
    c.start_server_again();
    wait_for_progress(&c.server_addr(), "p2");
    let v = c.view();
    assert!(v.epoch >= before, "epoch went back: {} < {before}", v.epoch);
    assert_eq!(v.recovery, None, "{:?}", v.recovery);
    assert_eq!(v.members.len(), 3, "the rebuilt view lists every member");
    single_coordinator(&c, &[0, 1, 2]);

    // The same after a long outage: the coordinator has stepped down by
    // the time the state-less server comes back.
    c.kill_server();
    std::fs::remove_file(c.state_file()).expect("state file rewritten");
    wait_until("the coordinator to step down without the server", || {
        (0..3).all(|i| c.status(i).is_ok_and(|st| st.role != Role::Coordinator))
    });
    c.start_server_again();
    wait_for_progress(&c.server_addr(), "p3");
    let after = single_coordinator(&c, &[0, 1, 2]);
    assert!(after > v.epoch, "writes resumed under a new grant");
    wait_until("the in-sync set to be whole again", || {
        c.view().isr.len() == 3
    });

    let log = writers.stop();
    assert!(!log.acked.is_empty());
    assert_all_read_back(&c.server_addr(), &log);
    c.wait_converged(&[0, 1, 2]);
}

#[test]
fn without_the_last_coordinator_a_state_less_server_waits_for_the_operator() {
    let mut c = Cluster::start("restart-operator", 3, json!({}));
    let writers = Writers::start(&c.server_addr(), 2, "w");
    writers.wait_acked(50);
    let log = writers.stop();

    c.kill_server();
    std::fs::remove_file(c.state_file()).expect("the server wrote its state file");
    let coord = c.coordinator_by_status();
    c.nodes[coord].kill();
    let live: Vec<usize> = (0..3).filter(|&i| i != coord).collect();
    c.start_server_again();

    // Both survivors rejoin; nobody can prove it holds every acknowledged
    // write, so the server says why it waits and grants nothing.
    wait_until("both survivors to report", || {
        let v = c.view();
        live.iter().all(|&i| v.member(c.nodes[i].id).is_some())
            && v.recovery
                .as_deref()
                .is_some_and(|r| r.contains("reports from"))
    });
    let v = c.view();
    assert_eq!(v.coordinator, None);
    let why = v.recovery.unwrap();
    assert!(why.contains("--recover-from-nodes"), "{why}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dkv-client"))
        .args(["status", &c.server_addr()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("RECOVERING"), "{text}");
    let mut cl = Client::with_options(
        &c.server_addr(),
        ClientOptions {
            op_timeout: Duration::from_millis(500),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        cl.put(b"refused", b"x").is_err(),
        "nothing serves meanwhile"
    );

    // The operator's word: the most complete survivor is appointed.
    c.kill_server();
    c.start_server_again_with(&["--recover-from-nodes"]);
    wait_for_progress(&c.server_addr(), "p");
    single_coordinator(&c, &live);
    assert_eq!(c.view().recovery, None);
    assert_all_read_back(&c.server_addr(), &log);
    c.wait_converged(&live);
}
