//! Planned handoff with real processes: `dkv-client failover` and SIGTERM to
//! the coordinator move the role to an in-sync replica while writers run;
//! every acknowledged write reads back and none is left with an unknown
//! outcome. (How long writes pause is measured, not asserted: see the
//! README's figures.)

mod common;

use common::*;
use serde_json::json;
use std::process::Command;

fn failover(server: &str, extra: &[&str]) -> String {
    let (ok, text) = run_output(
        Command::new(CLIENT_BIN)
            .args(["failover", server])
            .args(extra),
    );
    assert!(ok, "dkv-client failover: {text}");
    text
}

#[test]
fn failover_moves_the_role_under_load_and_loses_nothing() {
    let c = Cluster::start("failover", 3, json!({}));
    c.wait_for_isr(3);
    let writers = Writers::start(&c.server_addr(), 4, "fo");
    writers.wait_acked(200);
    let first = c.view();
    let out = failover(&c.server_addr(), &[]);
    let second = c.view();
    assert_eq!(second.epoch, first.epoch + 1, "{out}");
    assert_ne!(second.coordinator, first.coordinator, "{out}");
    assert!(out.contains("handed over to node"), "{out}");
    // Back to the first coordinator, by name, once it is in sync again.
    let back = first.coordinator.unwrap();
    wait_until("the old coordinator to be in sync again", || {
        c.view().isr.contains(&back)
    });
    let n = writers.acked();
    writers.wait_acked(n + 200);
    let out = failover(&c.server_addr(), &["--to", &back.to_string()]);
    assert_eq!(c.view().coordinator, Some(back), "{out}");
    let n = writers.acked();
    writers.wait_acked(n + 200);
    let log = writers.stop();
    assert_eq!(log.unknown, 0, "a handoff left writes of unknown outcome");
    assert_all_read_back(&c.server_addr(), &log);
    c.wait_converged(&[0, 1, 2]);
}

#[test]
fn sigterm_to_the_coordinator_hands_over_and_it_exits_0() {
    let mut c = Cluster::start("sigterm-handoff", 3, json!({}));
    c.wait_for_isr(3);
    let writers = Writers::start(&c.server_addr(), 4, "term");
    writers.wait_acked(200);
    let before = c.view();
    let old = c.coordinator();
    unsafe {
        libc::kill(c.nodes[old].pid(), libc::SIGTERM);
    }
    let status = c.nodes[old].child.wait().expect("wait");
    assert!(status.success(), "the coordinator exited with {status}");
    let after = c.view();
    assert_eq!(
        after.epoch,
        before.epoch + 1,
        "handed over: one epoch, no election"
    );
    assert_ne!(after.coordinator, Some(c.nodes[old].id));
    let n = writers.acked();
    writers.wait_acked(n + 200);
    let log = writers.stop();
    assert_eq!(log.unknown, 0, "a handoff left writes of unknown outcome");
    assert_all_read_back(&c.server_addr(), &log);
    let log_text = c.nodes[old].log_text();
    assert!(log_text.contains("handed over to node"), "{log_text}");
}

#[test]
fn sentinel_failover_hands_the_role_over() {
    if !skip::require_tool("redis-cli", "apt-get install redis-tools") {
        return;
    }
    let c = Cluster::start("sentinel-failover", 3, json!({}));
    c.wait_for_isr(3);
    let (host, port) = c.server.resp_addr.rsplit_once(':').unwrap();
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-h", host, "-p", port])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = c.view();
    let master = cli(&["SENTINEL", "get-master-addr-by-name", "dkv"]);
    assert_eq!(cli(&["SENTINEL", "FAILOVER", "dkv"]).trim(), "OK");
    let after = c.view();
    assert_eq!(after.epoch, before.epoch + 1);
    assert_ne!(after.coordinator, before.coordinator);
    assert_ne!(cli(&["SENTINEL", "get-master-addr-by-name", "dkv"]), master);
    assert!(cli(&["SENTINEL", "FAILOVER", "other"]).contains("No such master"));
}

/// SIGTERM to a replica: it says on its stream that it is leaving, the
/// coordinator has the server record it out of the in-sync set while it
/// still acknowledges, then releases it; it exits 0. The coordinator never
/// treats it as failed, no election runs, and nothing is lost.
#[test]
fn sigterm_to_a_replica_leaves_the_in_sync_set_first() {
    let mut c = Cluster::start("sigterm-replica", 3, json!({}));
    c.wait_for_isr(3);
    let writers = Writers::start(&c.server_addr(), 4, "leave");
    writers.wait_acked(200);
    let before = c.view();
    let coord = c.coordinator();
    let replica = (0..3).find(|&i| i != coord).expect("a replica");
    let id = c.nodes[replica].id;
    unsafe {
        libc::kill(c.nodes[replica].pid(), libc::SIGTERM);
    }
    let status = c.nodes[replica].child.wait().expect("wait");
    assert!(status.success(), "the replica exited with {status}");
    // Released only once the server recorded the removal: the view says so
    // as soon as the process is gone.
    let after = c.view();
    assert!(!after.isr.contains(&id), "{after:?}");
    assert_eq!(
        after.epoch, before.epoch,
        "a replica's stop caused an election"
    );
    let n = writers.acked();
    writers.wait_acked(n + 200);
    let log = writers.stop();
    assert_eq!(
        log.unknown, 0,
        "a replica's stop left writes of unknown outcome"
    );
    assert_eq!(log.failed, 0, "a replica's stop failed writes");
    assert_all_read_back(&c.server_addr(), &log);
    let replica_log = c.nodes[replica].log_text();
    assert!(
        replica_log.contains("the coordinator released it"),
        "{replica_log}"
    );
    let coord_log = c.nodes[coord].log_text();
    assert!(
        coord_log.contains(&format!("replica {id} is leaving")),
        "{coord_log}"
    );
    assert!(
        !coord_log.contains(&format!("replica {id} unreachable")),
        "the coordinator waited for the failure detector: {coord_log}"
    );
}
