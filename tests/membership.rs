//! Membership by an operator, with real processes: `dkv-client member list`
//! and `member remove`. A removed member stops counting, and a node that
//! comes back with its id is refused with a sentence saying why, also after
//! the server restarts.

mod common;

use common::*;
use serde_json::json;
use std::process::Command;

fn dkv_client(args: &[&str]) -> (bool, String) {
    let out = Command::new(CLIENT_BIN)
        .args(args)
        .output()
        .expect("dkv-client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn an_operator_removes_a_dead_member_and_it_is_refused_when_it_comes_back() {
    let mut c = Cluster::start("member-remove", 0, json!({}));
    for _ in 0..3 {
        c.add_node_with_data_dir();
    }
    c.wait_for_isr(3);
    let server = c.server_addr();
    let coord = c.coordinator();
    let victim = (coord + 1) % 3;
    let (coord_id, victim_id) = (c.nodes[coord].id, c.nodes[victim].id);

    let (ok, out) = dkv_client(&["member", "list", &server]);
    assert!(ok, "{out}");
    for n in &c.nodes {
        assert!(out.contains(&n.addr), "member list lacks {}: {out}", n.addr);
    }

    // Neither the coordinator nor a live in-sync member can be removed.
    let (ok, out) = dkv_client(&["member", "remove", &server, &coord_id.to_string()]);
    assert!(!ok && out.contains("is the coordinator"), "{out}");
    let (ok, out) = dkv_client(&["member", "remove", &server, &victim_id.to_string()]);
    assert!(!ok && out.contains("in-sync set"), "{out}");
    let (ok, out) = dkv_client(&["member", "remove", &server, "999"]);
    assert!(!ok && out.contains("not a member"), "{out}");

    // Dead, it leaves the in-sync set; then it can be removed.
    c.nodes[victim].kill();
    wait_until("the dead member to leave the in-sync set", || {
        !c.view().isr.contains(&victim_id)
    });
    let (ok, out) = dkv_client(&["member", "remove", &server, &victim_id.to_string()]);
    assert!(ok, "{out}");
    let v = c.view();
    assert!(v.members.iter().all(|m| m.node_id != victim_id), "{v:?}");
    let (_, out) = dkv_client(&["member", "list", &server, "--json"]);
    let listed: serde_json::Value = serde_json::from_str(out.trim()).expect(&out);
    assert_eq!(listed["members"].as_array().unwrap().len(), 2, "{out}");

    // The cluster keeps serving.
    let mut cl = c.client();
    cl.put(b"after-removal", b"1").unwrap();

    // It comes back with its data directory (so its id): refused, and told why.
    let owned = c.nodes[victim].args.clone();
    let args: Vec<&str> = owned.iter().map(String::as_str).collect();
    let log = c.dir.join("removed-node.log");
    let err = try_spawn(NODE_BIN, &args, &log).expect_err("a removed member was let back in");
    assert!(
        err.contains("was removed from the cluster by an operator"),
        "{err}"
    );
    // Also after the server restarts: the removal is part of its state.
    c.restart_server();
    let log = c.dir.join("removed-node-2.log");
    let err = try_spawn(NODE_BIN, &args, &log).expect_err("let back in after a server restart");
    assert!(err.contains("was removed"), "{err}");
    assert!(c.view().members.iter().all(|m| m.node_id != victim_id));
    assert_eq!(cl.get(b"after-removal").unwrap(), Some(b"1".to_vec()));
}
