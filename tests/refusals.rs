//! What a user sees when the system refuses something, and what its logs
//! say while it runs normally: every refusal reaches the client in its own
//! protocol (not only the node's log), and normal operation logs no alarms.

mod common;

use common::*;
use std::io::Write;

#[test]
fn an_oversized_resp_value_is_refused_with_the_limit_before_the_connection_closes() {
    let c = Cluster::start("refusals-oversized", 1, default_settings());
    let resp = c.nodes[0].resp_addr.clone();
    // 32 MiB against the default max-value-bytes of 1 MiB: more than the
    // socket buffers hold, so the node refuses it while it still arrives.
    let value = vec![b'x'; 32 << 20];
    let reply = send_then_read(&resp, &resp_command(&[b"SET", b"big", &value]));
    assert!(
        reply.starts_with(
            "-ERR Protocol error: bulk length 33554432 exceeds the limit of 1048576 bytes\r\n"
        ),
        "the client must be told why: {reply:?}"
    );
    // Nothing was stored, and the node serves on.
    let mut cmds = resp_command(&[b"GET", b"big"]);
    cmds.extend(resp_command(&[b"QUIT"]));
    assert_eq!(send_then_read(&resp, &cmds), "$-1\r\n+OK\r\n");
}

/// The native protocol too: a client that sends a whole oversized frame
/// (as a library writes its request, then reads) reads the error frame.
#[test]
fn an_oversized_native_frame_is_refused_with_the_limit_before_the_connection_closes() {
    let c = Cluster::start("refusals-native", 1, default_settings());
    let s = raw_client(&c.nodes[0].addr);
    let frame = encode_frame(&vec![0u8; 32 << 20]);
    (&s).write_all(&frame)
        .expect("the node reset the connection before the client could read why");
    let r: dkv::wire::Response = dkv::wire::read_frame(&mut &s, 1 << 20).unwrap();
    assert!(
        matches!(&r, dkv::wire::Response::Error { kind: dkv::wire::ErrorKind::BadRequest, message } if message.contains("exceeds the limit")),
        "{r:?}"
    );
}

/// `dkv-client status` as a user runs it: exit code, stdout, stderr.
fn status(server: &str) -> (i32, String, String) {
    let out = std::process::Command::new(CLIENT_BIN)
        .args(["status", server])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn member_ids(c: &Cluster) -> Vec<u64> {
    c.view().members.iter().map(|m| m.node_id).collect()
}

/// A replica (not the coordinator), by index.
fn a_replica(c: &Cluster) -> usize {
    let coord = c.coordinator();
    (0..c.nodes.len()).find(|&i| i != coord).unwrap()
}

#[test]
fn a_node_restarted_without_data_at_a_dead_members_address_takes_its_place() {
    let mut c = Cluster::start("members-replace", 3, default_settings());
    c.wait_for_isr(3);
    let r = a_replica(&c);
    let (old_id, addr) = (c.nodes[r].id, c.nodes[r].addr.clone());
    c.nodes[r].kill();
    wait_until(
        "the coordinator to drop the dead replica from the in-sync set",
        || !c.view().isr.contains(&old_id),
    );
    let new = c.add_node_with(&["--listen", &addr]);
    let new_id = c.nodes[new].id;
    assert_ne!(new_id, old_id, "a node without data is a new member");
    wait_until("the new node to replace the old member", || {
        let ids = member_ids(&c);
        !ids.contains(&old_id) && ids.contains(&new_id)
    });
    c.wait_for_isr(3);
    let (code, out, err) = status(&c.server_addr());
    assert_eq!(code, 0, "healthy again: {out}{err}");
    assert!(
        !out.lines().any(|l| l.starts_with(&format!("{old_id} "))),
        "the replaced member is not listed:\n{out}"
    );
    let server_log = c.server.log_text();
    assert!(
        server_log.contains(&format!(
            "removed node {old_id} from the members: its address {addr} is now node {new_id}'s"
        )),
        "{server_log}"
    );
}

#[test]
fn a_silent_member_shows_when_it_was_last_heard_then_expires() {
    let mut settings = default_settings();
    settings["member-expiry"] = 10_000.into();
    let mut c = Cluster::start("members-expire", 3, settings);
    c.wait_for_isr(3);
    let r = a_replica(&c);
    let (id, addr) = (c.nodes[r].id, c.nodes[r].addr.clone());
    c.nodes[r].kill();
    wait_until("the dead replica to leave the in-sync set", || {
        !c.view().isr.contains(&id)
    });
    // Until it expires: listed as unreachable, with when it was last heard
    // and no figures it did not give.
    let (code, out, err) = status(&c.server_addr());
    {
        assert_eq!(
            code, 1,
            "degraded while a member is unreachable: {out}{err}"
        );
        let row = out
            .lines()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("a row for {id}:\n{out}"));
        assert!(row.contains(&addr) && row.contains("unreachable"), "{row}");
        assert!(row.contains("last heard ") && row.contains(" ago"), "{row}");
        assert!(!row.contains("0000000000000000"), "no stale digest: {row}");
        assert!(
            err.contains(&format!("member {id} ({addr}) is unreachable (last heard ")),
            "{err}"
        );
    }
    wait_until("the silent member to expire", || {
        !member_ids(&c).contains(&id)
    });
    let (code, out, err) = status(&c.server_addr());
    assert_eq!(code, 0, "healthy with the two members left: {out}{err}");
}

/// What a newcomer sees in the logs of a normal start, join and stop: no
/// alarms, no Rust debug text.
#[test]
fn normal_operation_logs_no_alarms_and_no_debug_text() {
    let mut c = Cluster::start("logs-quiet", 3, default_settings());
    c.wait_for_isr(3);
    c.client().put(b"k", b"v").unwrap();
    let added = c.add_node();
    c.wait_for_isr(4);
    let _ = added;
    let logs = c.dump_logs();
    for bad in [
        "replication stream lost",
        "is not a registered member",
        "replayed beacon",
        "Some(",
        "Rejected {",
        "{:?}",
    ] {
        assert!(!logs.contains(bad), "a normal join logs {bad:?}:\n{logs}");
    }
    assert!(
        !logs.contains(" WARN ") || only_expected_warnings(&logs),
        "{logs}"
    );
}

/// The warnings an open test cluster gives by design (no cluster secret).
fn only_expected_warnings(logs: &str) -> bool {
    logs.lines()
        .filter(|l| l.contains(" WARN "))
        .all(|l| l.contains("no cluster secret") || l.contains("no state file"))
}

/// While the server is down, a node warns once, then once per 10 s with
/// counts, and says when the server answers again.
#[test]
fn a_server_outage_is_one_warning_and_a_summary_not_a_flood() {
    let mut c = Cluster::start("logs-outage", 2, default_settings());
    c.wait_for_isr(2);
    c.kill_server();
    // A call every 50 ms fails for 10 s: one summary line, not 200 warnings.
    wait_until("every node to summarise the outage", || {
        c.nodes
            .iter()
            .all(|n| n.log_text().contains("server unreachable for "))
    });
    c.start_server_again();
    wait_until("every node to say the server answers again", || {
        c.nodes
            .iter()
            .all(|n| n.log_text().contains("server answers again after"))
    });
    for n in &c.nodes {
        let log = n.log_text();
        let failures = log.lines().filter(|l| l.contains("server call (")).count();
        assert_eq!(
            failures, 1,
            "one warning for the outage's first failure:\n{log}"
        );
        let summary = log
            .lines()
            .find(|l| l.contains("server unreachable for "))
            .unwrap();
        assert!(summary.contains(" calls failed (last: "), "{summary}");
        let again = log
            .lines()
            .find(|l| l.contains("server answers again after"))
            .unwrap();
        assert!(again.contains(" calls failed)"), "{again}");
    }
}
