//! The HA registry with real processes: three `dkv-server`s over a real
//! 3-member etcd cluster, nodes and clients given the whole server list.
//! Servers are killed (-9), paused (SIGSTOP) past the coordinator's lease and
//! resumed; etcd loses its leader, then every member. Each test asserts what
//! a user relies on: no acknowledged write is lost, at most one coordinator
//! per epoch (from the nodes' own statuses, polled throughout), and a server's
//! death alone is no failover. Nothing here asserts timing. The cluster runs
//! with a longer status-push interval than the default, so that a slow etcd
//! on a busy machine does not cause failovers of its own (see
//! `common::ha::UPDATE_INTERVAL_MS`).

mod common;

use common::etcd::require_etcd;
use common::ha::*;
use common::*;
use dkv::types::{LogPos, Role};
use dkv::wire::{ConnKind, ErrorKind, ServerRequest, ServerResponse};
use dkv::{Client, ClientOptions};
use serde_json::json;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Waits until a live server (other than `skip`) shows an epoch above
/// `epoch` with a coordinator; returns (epoch, coordinator id).
fn wait_for_grant_after(c: &HaCluster, epoch: u64, skip: Option<usize>) -> (u64, u64) {
    let mut last = None;
    wait_until_ok(|| {
        for s in c.live_servers().into_iter().filter(|&s| Some(s) != skip) {
            if let Ok(v) = c.view_from(s) {
                last = Some((v.epoch, v.coordinator));
                if let (true, Some(id)) = (v.epoch > epoch, v.coordinator) {
                    return Some((v.epoch, id));
                }
            }
        }
        None
    })
    .unwrap_or_else(|| panic!("no epoch after {epoch} was granted; last view {last:?}"))
}

/// Every node in `live` is at `epoch` under coordinator `coordinator`, and
/// every live server's view says the same.
fn assert_settled(c: &HaCluster, live: &[usize], epoch: u64, coordinator: u64) {
    c.wait_views_agree(epoch, coordinator);
    for &i in live {
        let st = c.status(i).expect("a live node answers");
        assert_eq!(
            (st.epoch, st.coordinator),
            (epoch, Some(coordinator)),
            "node {} disagrees: {st:?}",
            st.node_id
        );
    }
}

/// Resumes the stopped server `paused` and sends it `req` on a Member
/// connection opened while it was still stopped (the kernel completes the
/// TCP handshake and queues it), so the request is among the first things
/// it handles once it runs. Returns its answer.
fn resume_and_ask(c: &HaCluster, paused: usize, req: ServerRequest) -> ServerResponse {
    let me = std::process::id() as i32;
    let addr = c.servers[paused].addr.clone();
    let port: u16 = addr.rsplit_once(':').unwrap().1.parse().unwrap();
    let mine = || -> BTreeSet<u16> {
        established_conns(me)
            .into_iter()
            .filter(|&(_, r)| r == port)
            .map(|(l, _)| l)
            .collect()
    };
    let before = mine();
    let asker = std::thread::spawn(move || server_call(&addr, ConnKind::Member, &req));
    wait_until(
        "the request's connection to be queued at the paused server",
        || mine().difference(&before).next().is_some(),
    );
    c.cont_server(paused);
    asker.join().unwrap().expect("the resumed server answers")
}

/// One line on what the writers and the watch saw (shown with --no-capture).
fn report(log: &WriterLog, claims: &Claims) {
    eprintln!(
        "writes: {} acknowledged, {} failed, {} unknown; coordinators by epoch {:?}",
        log.acked.len(),
        log.failed,
        log.unknown,
        claims.coordinators
    );
}

/// Waits for `more` acknowledged writes past the current count.
fn wait_more_acked(w: &Writers, more: usize) {
    let n = w.acked();
    w.wait_acked(n + more);
}

/// (a) kill -9 of one server, first one the nodes do not use, then the one
/// they use, under write load: the nodes and clients move to the others, the
/// epoch never moves, and every acknowledged write is there.
#[test]
fn killing_any_one_server_under_load_is_no_failover_and_loses_nothing() {
    if !require_etcd() {
        return;
    }
    let mut c = HaCluster::start("ha-kill-server", 3, 3, json!({}));
    let list = c.server_list();
    let v = c.view();
    let (e0, coord_id) = (v.epoch, v.coordinator.unwrap());
    let coord = c.node_index(coord_id);
    let watch = c.watch_coordinators();
    let writers = Writers::start(&list, 4, "a");
    writers.wait_acked(200);

    // A server the coordinator does not use.
    let used = c.server_used_by(coord);
    let other = (used + 1) % 3;
    c.kill_server(other);
    wait_more_acked(&writers, 200);
    wait_for_progress(&list, "after-other");
    assert_settled(&c, &[0, 1, 2], e0, coord_id);
    c.restart_server(other);
    c.wait_views_agree(e0, coord_id);

    // The server the coordinator uses: its status pushes (lease renewals)
    // must move to another server without the lease lapsing into a failover.
    c.kill_server(used);
    wait_until(
        "the coordinator to use another server",
        || matches!(c.servers_used_by(coord)[..], [s] if s != used),
    );
    wait_more_acked(&writers, 200);
    wait_for_progress(&list, "after-used");
    let log = writers.stop();
    let claims = watch.stop();
    report(&log, &claims);

    assert_settled(&c, &[0, 1, 2], e0, coord_id);
    claims.assert_one_coordinator_per_epoch();
    assert_eq!(
        claims.epochs,
        BTreeSet::from([e0]),
        "a node saw another epoch: a server's death caused a failover ({claims:?})"
    );
    assert_eq!(
        claims.coordinators.get(&e0),
        Some(&BTreeSet::from([coord_id]))
    );
    assert_all_read_back(&list, &log);
}

/// (b) The coordinator killed while one server (the one it used) is down:
/// the usual failover, granted by a surviving server.
#[test]
fn killing_the_coordinator_while_a_server_is_down_fails_over_as_usual() {
    if !require_etcd() {
        return;
    }
    let mut c = HaCluster::start("ha-coord-down", 3, 3, json!({}));
    let list = c.server_list();
    let v = c.view();
    let (e0, old_id) = (v.epoch, v.coordinator.unwrap());
    let old = c.node_index(old_id);
    let watch = c.watch_coordinators();
    let writers = Writers::start(&list, 4, "b");
    writers.wait_acked(200);

    let down = c.server_used_by(old);
    c.kill_server(down);
    wait_more_acked(&writers, 100);
    c.nodes[old].kill();
    let (e1, new_id) = wait_for_grant_after(&c, e0, None);
    assert_ne!(new_id, old_id);
    wait_for_progress(&list, "after-failover");
    wait_more_acked(&writers, 200);
    let log = writers.stop();
    let claims = watch.stop();
    report(&log, &claims);

    assert_eq!(e1, e0 + 1, "one failover, one new epoch");
    let live: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    assert_settled(&c, &live, e1, new_id);
    claims.assert_one_coordinator_per_epoch();
    assert_eq!(
        claims.coordinators.get(&e1),
        Some(&BTreeSet::from([new_id]))
    );
    assert!(
        !c.view().isr.contains(&old_id),
        "the dead coordinator left the in-sync set"
    );
    assert_all_read_back(&list, &log);
}

/// (c) The server the nodes use is paused past the coordinator's lease; the
/// coordinator dies meanwhile and another server grants the next epoch.
/// Resumed, the paused server holds an old view and an old lease reading
/// that says the lease ran out long ago: asked at once for the old epoch's
/// successor, it must refuse, and it must catch up.
#[test]
fn a_server_paused_past_the_lease_grants_nothing_stale_when_it_resumes() {
    if !require_etcd() {
        return;
    }
    let mut c = HaCluster::start("ha-sigstop", 3, 3, json!({}));
    let list = c.server_list();
    let v = c.view();
    let (e0, old_id) = (v.epoch, v.coordinator.unwrap());
    let old = c.node_index(old_id);
    let watch = c.watch_coordinators();
    let writers = Writers::start(&list, 4, "c");
    writers.wait_acked(200);

    let paused = c.server_used_by(old);
    c.stop_server(paused);
    // The coordinator's status pushes time out there and go to another server.
    wait_until(
        "the coordinator to use another server",
        || matches!(c.servers_used_by(old)[..], [s] if s != paused),
    );
    wait_more_acked(&writers, 100);

    // The coordinator dies; a running server grants the next epoch. That
    // takes longer than the lease (a grant waits for it), so the paused
    // server is now stopped past the lease.
    c.nodes[old].kill();
    let (e1, new_id) = wait_for_grant_after(&c, e0, Some(paused));
    assert_eq!(e1, e0 + 1);
    let new = c.node_index(new_id);
    // The candidate of the stale request: the other survivor, in sync in e0.
    let cand = (0..3).find(|&i| i != old && i != new).unwrap();
    let cand_id = c.nodes[cand].id;
    assert!(
        v.isr.contains(&cand_id),
        "the candidate was in sync in epoch {e0}"
    );
    let last = c.status(cand).unwrap().last;

    let stale = ServerRequest::RequestGrant {
        candidate: cand_id,
        epoch: e0,
        last,
    };
    let answer = resume_and_ask(&c, paused, stale);
    eprintln!("the resumed server answered the stale grant request: {answer:?}");
    match &answer {
        ServerResponse::Rejected { epoch, .. } => assert!(*epoch >= e1, "{answer:?}"),
        other => panic!("the resumed server did not reject a grant for epoch {e0}: {other:?}"),
    }
    wait_until("the resumed server's view to catch up", || {
        c.view_from(paused)
            .is_ok_and(|v| v.epoch == e1 && v.coordinator == Some(new_id))
    });

    wait_for_progress(&list, "after-resume");
    wait_more_acked(&writers, 200);
    let log = writers.stop();
    let claims = watch.stop();
    report(&log, &claims);
    let live: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    assert_settled(&c, &live, e1, new_id);
    claims.assert_one_coordinator_per_epoch();
    assert_eq!(
        claims.coordinators.get(&e1),
        Some(&BTreeSet::from([new_id]))
    );
    assert_all_read_back(&list, &log);
}

/// A variant of (c) without a failover: the server the coordinator uses is
/// paused past the lease while the coordinator goes on renewing it through
/// another server. By its own clock the resumed server saw no renewal for
/// longer than a lease; asked at once to grant the next epoch to a replica,
/// it must refuse (the lease record moved in etcd), and nothing fails over.
#[test]
fn a_server_paused_past_the_lease_grants_nothing_while_the_lease_is_renewed_elsewhere() {
    if !require_etcd() {
        return;
    }
    let c = HaCluster::start("ha-sigstop-renewed", 3, 3, json!({}));
    let list = c.server_list();
    let v = c.view();
    let (e0, coord_id) = (v.epoch, v.coordinator.unwrap());
    let coord = c.node_index(coord_id);
    let watch = c.watch_coordinators();
    let writers = Writers::start(&list, 4, "g");
    writers.wait_acked(200);

    let paused = c.server_used_by(coord);
    c.stop_server(paused);
    wait_until(
        "the coordinator to use another server",
        || matches!(c.servers_used_by(coord)[..], [s] if s != paused),
    );
    wait_more_acked(&writers, 100);
    // A fixed wait, only to let a time-based property elapse: the paused
    // server must stay stopped past the lease as it counts it after the
    // last renewal it saw (twice that, to be sure).
    std::thread::sleep(lease_at_server() * 2);
    let replica = (0..3).find(|&i| i != coord).unwrap();
    let grant = ServerRequest::RequestGrant {
        candidate: c.nodes[replica].id,
        epoch: e0,
        last: c.status(replica).unwrap().last,
    };
    let answer = resume_and_ask(&c, paused, grant);
    eprintln!("the resumed server answered the grant request: {answer:?}");
    assert!(
        matches!(answer, ServerResponse::Rejected { epoch, .. } if epoch == e0),
        "the resumed server did not refuse a grant while the lease is renewed elsewhere: {answer:?}"
    );

    wait_more_acked(&writers, 200);
    let log = writers.stop();
    let claims = watch.stop();
    report(&log, &claims);
    assert_settled(&c, &[0, 1, 2], e0, coord_id);
    claims.assert_one_coordinator_per_epoch();
    assert_eq!(
        claims.epochs,
        BTreeSet::from([e0]),
        "no failover: {claims:?}"
    );
    assert_all_read_back(&list, &log);
}

/// (d) The etcd leader is killed under load: once etcd has elected another,
/// writes succeed again and nothing acknowledged is lost.
#[test]
fn killing_the_etcd_leader_under_load_loses_nothing() {
    if !require_etcd() {
        return;
    }
    let mut c = HaCluster::start("ha-etcd-leader", 3, 3, json!({}));
    let list = c.server_list();
    let watch = c.watch_coordinators();
    let writers = Writers::start(&list, 4, "d");
    writers.wait_acked(200);

    let leader = c.etcd.leader().expect("etcd has a leader");
    c.etcd.kill(leader);
    wait_until("etcd to elect another leader", || {
        c.etcd.leader().is_some_and(|l| l != leader)
    });
    wait_for_progress(&list, "after-etcd-leader");
    wait_more_acked(&writers, 200);
    let log = writers.stop();
    let claims = watch.stop();
    report(&log, &claims);
    claims.assert_one_coordinator_per_epoch();
    assert_all_read_back(&list, &log);
    let v = c.view();
    assert_settled(&c, &[0, 1, 2], v.epoch, v.coordinator.unwrap());
}

/// (d) With every etcd member dead the coordinator's lease cannot be
/// renewed: writes stop, and a server asked for a change says etcd is
/// unreachable. With etcd back, the cluster serves every acknowledged write.
#[test]
fn with_etcd_down_changes_are_refused_and_the_cluster_comes_back_with_it() {
    if !require_etcd() {
        return;
    }
    let mut c = HaCluster::start("ha-etcd-down", 3, 3, json!({}));
    let list = c.server_list();
    let coord = c.coordinator();
    let watch = c.watch_coordinators();
    let writers = Writers::start(&list, 4, "e");
    writers.wait_acked(200);

    for i in 0..c.etcd.len() {
        c.etcd.kill(i);
    }
    let opts = ClientOptions {
        op_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let mut cl = Client::with_options(&list, opts).expect("servers answer lookups from cache");
    wait_until("writes to be refused", || cl.put(b"probe", b"x").is_err());
    wait_until("the coordinator to step down without renewals", || {
        c.status(coord).is_ok_and(|st| st.role != Role::Coordinator)
    });
    let register = ServerRequest::Register {
        node_id: None,
        incarnation: 1,
        data_addr: "127.0.0.1:1".into(),
        beacon_addr: "127.0.0.1:1".into(),
        last: LogPos::ZERO,
        resp_addr: None,
    };
    for s in 0..3 {
        match server_call(&c.servers[s].addr, ConnKind::Member, &register) {
            Ok(ServerResponse::Error {
                kind: ErrorKind::Unavailable,
                message,
            }) => {
                eprintln!("server {s} refused a registration: {message}");
                assert!(
                    message.contains("etcd") && !message.contains('\n'),
                    "server {s}: {message}"
                )
            }
            other => panic!("server {s} answered a registration without etcd: {other:?}"),
        }
    }

    for i in 0..c.etcd.len() {
        c.etcd.restart(i);
    }
    c.etcd.wait_healthy();
    wait_for_progress(&list, "after-etcd");
    wait_more_acked(&writers, 200);
    let log = writers.stop();
    let claims = watch.stop();
    report(&log, &claims);
    claims.assert_one_coordinator_per_epoch();
    assert_all_read_back(&list, &log);
    // The coordinator stepped down while etcd was away and may be elected
    // again only now: wait for every server to show the same coordinator
    // (one server's cached view may still be the old one).
    let mut v = c.view();
    wait_until("every server to show the same coordinator", || {
        v = c.view();
        v.coordinator.is_some()
            && c.live_servers().into_iter().all(|i| {
                c.view_from(i)
                    .is_ok_and(|w| (w.epoch, w.coordinator) == (v.epoch, v.coordinator))
            })
    });
    assert_eq!(v.members.len(), 3, "the refused registration left no trace");
    assert_settled(&c, &[0, 1, 2], v.epoch, v.coordinator.unwrap());
}

/// (e) `SENTINEL sentinels dkv` lists the other running servers, and
/// redis-py's Sentinel client given every server keeps finding the
/// coordinator while one server is killed.
#[test]
fn sentinel_lists_the_other_servers_and_redis_py_survives_a_server_kill() {
    if !(require_etcd() && require_redis_py()) {
        return;
    }
    let mut c = HaCluster::start("ha-sentinel", 3, 3, json!({}));
    let sentinels = c.sentinel_addrs();
    // Waits until server `i` lists exactly the sentinels of `alive` but itself.
    let expect_peers = |i: usize, alive: &[usize]| {
        let mut want: Vec<String> = alive
            .iter()
            .filter(|&&j| j != i)
            .map(|&j| sentinels[j].clone())
            .collect();
        want.sort();
        let mut got = Vec::new();
        let ok = wait_until_ok(|| {
            got = sentinel_peers(&sentinels[i], "dkv").unwrap_or_default();
            (got == want).then_some(())
        });
        assert!(ok.is_some(), "server {i} lists {got:?}, not {want:?}");
    };
    for i in 0..3 {
        expect_peers(i, &[0, 1, 2]);
    }
    let e0 = c.view().epoch;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/sentinel_ha.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args(&sentinels)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "killing", "phase 1 of the script");
    // The first sentinel of the script's list (the one it asks first).
    c.kill_server(0);
    writeln!(child.stdin.as_mut().unwrap()).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success() && line.starts_with("ok 200"),
        "script said {line:?}"
    );
    assert_eq!(c.view().epoch, e0, "a server's death is no failover");

    // The dead server's presence record expires with its etcd lease: the
    // others stop listing it.
    for i in [1, 2] {
        expect_peers(i, &[1, 2]);
    }
}

/// Two servers register six brand-new nodes at once, each node given the
/// servers in the other order than the last: every decision is a
/// compare-and-swap on the view, so no id is handed out twice and there is
/// one coordinator.
#[test]
fn two_servers_racing_to_register_new_nodes_never_hand_out_the_same_id() {
    if !require_etcd() {
        return;
    }
    let mut c = HaCluster::start_servers("ha-register-race", 2, json!({}));
    let lists = [c.list_of(&[0, 1]), c.list_of(&[1, 0])];
    // A fixed wait, only to let a time-based property elapse: a server that
    // starts without a view refuses to let a brand-new node found a cluster
    // for failure-timeout + 2 x server-update-interval. Nodes that started
    // inside it would all retry on the same backoff schedule and mostly end
    // at whichever server's wait ended first: no race.
    std::thread::sleep(bootstrap_wait() + Duration::from_millis(200));
    // All six start at once, then their banners are read.
    let starting: Vec<StartingNode> = (0..6)
        .map(|k| {
            let args = c.node_args(&lists[k % 2]);
            let log = c.next_node_log();
            start_node(args, log)
        })
        .collect();
    for s in starting {
        c.nodes.push(s.ready());
    }
    // Each node's server link starts at the server that registered it:
    // both servers took registrations.
    let used: BTreeSet<usize> = (0..6).map(|i| c.server_used_by(i)).collect();
    assert_eq!(
        used,
        BTreeSet::from([0, 1]),
        "registrations went through both servers"
    );
    let ids: BTreeSet<u64> = c.nodes.iter().map(|n| n.id).collect();
    assert_eq!(
        ids.len(),
        6,
        "ids handed out: {:?}",
        c.nodes.iter().map(|n| n.id).collect::<Vec<_>>()
    );
    c.wait_for_isr(6);
    let v = c.view();
    let coordinator = v.coordinator.expect("a coordinator");
    assert_eq!(
        v.epoch, 1,
        "the first registration founded epoch 1, nobody else"
    );
    let listed: BTreeSet<u64> = v.members.iter().map(|m| m.node_id).collect();
    assert_eq!(
        listed, ids,
        "the view lists exactly the running nodes (an extra member would be a registration \
         recorded in etcd although its answer was lost, and the node registered again)"
    );
    assert_settled(&c, &[0, 1, 2, 3, 4, 5], 1, coordinator);
    let acting: Vec<u64> = c
        .statuses()
        .into_iter()
        .filter_map(|s| s.ok())
        .filter(|s| s.role == Role::Coordinator)
        .map(|s| s.node_id)
        .collect();
    assert_eq!(acting, vec![coordinator]);
}
