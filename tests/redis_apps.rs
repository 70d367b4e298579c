//! What applications built on Redis rely on, with real processes: counters
//! that lose no increment across a coordinator kill, expiry that survives a
//! failover and a restart, transactions that stay whole when a replica
//! dies, and redis-py (RESP3, its defaults) running the data commands
//! against the coordinator and through a replica.

mod common;

use common::*;
use dkv::commands::{Command, Value};
use dkv::Error;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn wait_for_new_epoch(c: &Cluster, epoch: u64) -> usize {
    wait_until("a new epoch to be granted", || {
        let v = c.view();
        v.epoch > epoch && v.coordinator.is_some()
    });
    c.coordinator()
}

/// What concurrent clients saw: acknowledged ops, ops of unknown outcome,
/// and the values their replies carried.
#[derive(Default)]
struct Tally {
    acked: AtomicU64,
    unknown: AtomicU64,
    seen: Mutex<Vec<i64>>,
}

/// Runs `op` on `threads` clients until `stop`.
fn clients(
    server: &str,
    threads: usize,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
    op: fn(&mut dkv::Client) -> dkv::Result<Vec<i64>>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..threads)
        .map(|_| {
            let (server, stop, tally) = (server.to_string(), stop.clone(), tally.clone());
            std::thread::spawn(move || {
                let mut c = dkv::Client::connect(&server).expect("client");
                while !stop.load(Ordering::Relaxed) {
                    match op(&mut c) {
                        Ok(vals) => {
                            tally.acked.fetch_add(1, Ordering::Relaxed);
                            tally.seen.lock().unwrap().extend(vals);
                        }
                        // Surely not applied: never accepted.
                        Err(Error::Unavailable(_) | Error::NotEnoughReplicas(_)) => {}
                        Err(_) => {
                            tally.unknown.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect()
}

fn wait_acked(t: &Tally, n: u64) {
    wait_until("more acknowledged ops", || {
        t.acked.load(Ordering::Relaxed) >= n
    });
}

fn int_at(c: &mut dkv::Client, key: &[u8]) -> i64 {
    let v = c.get(key).unwrap().unwrap_or_else(|| b"0".to_vec());
    String::from_utf8(v).unwrap().parse().unwrap()
}

#[test]
fn concurrent_incr_across_a_coordinator_kill_loses_no_increment() {
    let mut c = Cluster::start("incr-kill", 3, json!({}));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let threads = clients(&c.server_addr(), 4, &stop, &tally, |c| {
        c.incr_by(b"counter", 1).map(|n| vec![n])
    });
    wait_acked(&tally, 300);
    let old = c.coordinator();
    c.nodes[old].kill();
    wait_for_new_epoch(&c, 1);
    let before = tally.acked.load(Ordering::Relaxed);
    wait_acked(&tally, before + 300);
    stop.store(true, Ordering::Relaxed);
    threads.into_iter().for_each(|t| t.join().unwrap());
    let (acked, unknown) = (
        tally.acked.load(Ordering::Relaxed) as i64,
        tally.unknown.load(Ordering::Relaxed) as i64,
    );
    let fin = int_at(&mut c.client(), b"counter");
    assert!(
        acked <= fin && fin <= acked + unknown,
        "final value {fin} outside [acked {acked}, acked + unknown {}]",
        acked + unknown
    );
    // Every acknowledged increment got its own value: none was evaluated
    // on a stale copy.
    let mut seen = tally.seen.lock().unwrap().clone();
    let n = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), n, "two increments answered the same value");
    assert!(*seen.last().unwrap() <= fin);
    let live: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    c.wait_converged(&live);
}

#[test]
fn expiry_holds_across_a_failover_and_a_restart() {
    let mut c = Cluster::start("expiry", 0, json!({}));
    for _ in 0..3 {
        c.add_node_with_data_dir();
    }
    c.wait_for_isr(3);
    let mut cl = c.client();
    cl.put_with_ttl(b"long", b"L", Duration::from_secs(600))
        .unwrap();
    let short_set = Instant::now();
    cl.put_with_ttl(b"short", b"S", Duration::from_secs(3))
        .unwrap();
    cl.put(b"plain", b"P").unwrap();
    // A key whose deadline is set, then removed.
    cl.put_with_ttl(b"persisted", b"X", Duration::from_secs(2))
        .unwrap();
    assert_eq!(
        cl.command(Command::Persist {
            key: b"persisted".to_vec()
        })
        .unwrap(),
        Value::Int(1)
    );

    let old = c.coordinator();
    c.nodes[old].kill();
    wait_for_new_epoch(&c, 1);
    let mut cl = c.client();
    // The new coordinator honours the deadline the old one chose.
    let left = cl.ttl(b"long").unwrap().expect("long keeps its deadline");
    assert!(left <= Duration::from_secs(600), "{left:?}");
    assert!(left > Duration::from_secs(300), "{left:?}");
    assert_eq!(cl.ttl(b"plain").unwrap(), None);
    assert_eq!(cl.ttl(b"persisted").unwrap(), None);
    wait_until("the short key to expire", || {
        c.client().get(b"short").unwrap().is_none()
    });
    assert!(
        short_set.elapsed() >= Duration::from_millis(2900),
        "expired after {:?}, before its 3 s",
        short_set.elapsed()
    );
    // Expiry is an entry of the log: the restarted node replays it from its
    // write-ahead log and agrees with the others, deadlines included.
    c.restart_node(old);
    let id = c.nodes[old].id;
    wait_until("the restarted node to rejoin the in-sync set", || {
        c.view().isr.contains(&id)
    });
    c.wait_converged(&[0, 1, 2]);
    let mut cl = c.client();
    assert_eq!(cl.get(b"short").unwrap(), None);
    assert_eq!(cl.get(b"long").unwrap(), Some(b"L".to_vec()));
    assert_eq!(cl.get(b"persisted").unwrap(), Some(b"X".to_vec()));
    // And after the whole cluster restarts from disk.
    for i in 0..3 {
        c.restart_node(i);
    }
    wait_until("a coordinator after the restart", || {
        c.view().coordinator.is_some()
    });
    let mut cl = c.client();
    let left = cl.ttl(b"long").unwrap().expect("deadline kept on disk");
    assert!(left <= Duration::from_secs(600) && left > Duration::from_secs(300));
    assert_eq!(cl.get(b"short").unwrap(), None);
    assert_eq!(cl.get(b"plain").unwrap(), Some(b"P".to_vec()));
}

#[test]
fn multi_stays_whole_when_a_replica_dies() {
    let mut c = Cluster::start("multi-kill", 3, json!({}));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let threads = clients(&c.server_addr(), 3, &stop, &tally, |c| {
        let incr = |k: &[u8]| Command::IncrBy {
            key: k.to_vec(),
            by: 1,
        };
        let r = c.atomic(vec![incr(b"a"), incr(b"b")])?;
        match r.as_slice() {
            [Value::Int(a), Value::Int(b)] if a == b => Ok(vec![]),
            other => panic!("EXEC answered {other:?}"),
        }
    });
    // A reader of both keys sees every transaction whole or not at all.
    let torn = Arc::new(AtomicU64::new(0));
    let reader = {
        let (server, stop, torn) = (c.server_addr(), stop.clone(), torn.clone());
        std::thread::spawn(move || {
            let mut cl = dkv::Client::connect(&server).unwrap();
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(Value::Array(v)) = cl.command(Command::MGet {
                    keys: vec![b"a".to_vec(), b"b".to_vec()],
                }) {
                    reads += 1;
                    if v[0] != v[1] {
                        torn.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            reads
        })
    };
    wait_acked(&tally, 200);
    let coord = c.coordinator();
    let victim = (coord + 1) % 3;
    let victim_id = c.nodes[victim].id;
    c.nodes[victim].kill();
    wait_until("the dead replica to leave the in-sync set", || {
        !c.view().isr.contains(&victim_id)
    });
    let before = tally.acked.load(Ordering::Relaxed);
    wait_acked(&tally, before + 200);
    stop.store(true, Ordering::Relaxed);
    threads.into_iter().for_each(|t| t.join().unwrap());
    let reads = reader.join().unwrap();
    assert!(reads > 0, "the reader never read");
    assert_eq!(
        torn.load(Ordering::Relaxed),
        0,
        "a reader saw half a transaction"
    );
    let mut cl = c.client();
    let (a, b) = (int_at(&mut cl, b"a"), int_at(&mut cl, b"b"));
    assert_eq!(a, b, "a transaction was applied in part");
    let (acked, unknown) = (
        tally.acked.load(Ordering::Relaxed) as i64,
        tally.unknown.load(Ordering::Relaxed) as i64,
    );
    assert!(
        acked <= a && a <= acked + unknown,
        "{a} vs {acked} + {unknown}"
    );
    let live: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    c.wait_converged(&live);
}

#[test]
fn redis_py_runs_the_data_commands_on_coordinator_and_replica_in_resp3_and_resp2() {
    if !skip::require_redis_py() {
        return;
    }
    let c = Cluster::start("py-data", 3, json!({}));
    c.wait_for_isr(3);
    let coord = c.coordinator();
    let replica = (coord + 1) % 3;
    for (what, i) in [("coordinator", coord), ("replica", replica)] {
        let out = std::process::Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/py/data_commands.py"
            ))
            .arg(&c.nodes[i].resp_addr)
            .arg(format!("{what}-"))
            .output()
            .expect("python3");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("ok"),
            "redis-py against the {what}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
