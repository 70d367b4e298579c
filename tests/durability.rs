//! Durability with real processes and real files: write-ahead log, fsync,
//! snapshots, recovery, catch-up after downtime, data-dir locking.

mod common;

use common::*;
use serde_json::json;
use std::path::PathBuf;
use std::process::Command;

fn data_dir(c: &Cluster, i: usize) -> PathBuf {
    let args = &c.nodes[i].args;
    let at = args
        .iter()
        .position(|a| a == "--data-dir")
        .expect("node has a data dir");
    PathBuf::from(&args[at + 1])
}

fn wal_files(dir: &PathBuf) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("wal-"))
        .collect();
    v.sort();
    v
}

#[test]
fn with_fsync_always_killing_every_process_loses_no_acknowledged_write() {
    kill_everything_mid_load("always");
}

/// `never` promises survival of process crashes (the OS keeps what was
/// written): replicas write their log in the follower thread before they
/// acknowledge, the coordinator through its wal thread.
#[test]
fn with_fsync_never_killing_every_process_loses_no_acknowledged_write() {
    kill_everything_mid_load("never");
}

fn kill_everything_mid_load(fsync: &str) {
    let mut c = Cluster::start(&format!("crash-all-{fsync}"), 0, json!({ "fsync": fsync }));
    for _ in 0..3 {
        c.add_node_with_data_dir();
    }
    c.wait_for_isr(3);
    let writers = Writers::start(&c.server_addr(), 8, "crash");
    writers.wait_acked(500);
    // Everything dies at once, mid-load.
    for n in &mut c.nodes {
        n.kill();
    }
    c.kill_server();
    let log = writers.stop();
    assert!(
        log.acked.len() > 10,
        "the load was running: {}",
        log.acked.len()
    );
    c.start_server_again();
    for i in 0..3 {
        c.restart_node(i);
    }
    wait_for_progress(&c.server_addr(), "p2");
    assert_all_read_back(&c.server_addr(), &log);
    c.wait_for_isr(3);
    c.wait_converged(&[0, 1, 2]);
}

#[test]
fn a_torn_last_record_is_cut_and_a_flipped_byte_refuses_to_start() {
    let mut c = Cluster::start("torn", 0, json!({}));
    c.add_node_with_data_dir();
    c.wait_for_isr(1);
    let mut cl = c.client();
    for i in 0..100 {
        cl.put(format!("k{i}").as_bytes(), b"v").unwrap();
    }
    c.nodes[0].kill();
    let dir = data_dir(&c, 0);
    let wal = wal_files(&dir).pop().unwrap();
    let len = std::fs::metadata(&wal).unwrap().len();

    // Torn tail: the last record loses its final bytes.
    let f = std::fs::OpenOptions::new().write(true).open(&wal).unwrap();
    f.set_len(len - 3).unwrap();
    drop(f);
    c.restart_node(0);
    let log = c.nodes[0].log_text();
    assert!(
        log.contains("torn record at offset") && log.contains(&wal.display().to_string()),
        "{log}"
    );
    wait_for_progress(&c.server_addr(), "after-torn");
    let mut cl = c.client();
    let present = (0..100)
        .filter(|i| cl.get(format!("k{i}").as_bytes()).unwrap().is_some())
        .count();
    // The cut record is the last one written: at most one write is missing,
    // and only the last.
    assert!(present >= 99, "recovered {present} of 100");
    for i in 0..99 {
        assert!(
            cl.get(format!("k{i}").as_bytes()).unwrap().is_some(),
            "k{i} lost"
        );
    }

    // Corruption in the middle: the node refuses to start and names the file.
    c.nodes[0].kill();
    let wal = wal_files(&dir)[0].clone();
    let mut bytes = std::fs::read(&wal).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&wal, &bytes).unwrap();
    let out = Command::new(NODE_BIN)
        .args(&c.nodes[0].args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&wal.display().to_string()) && err.contains("offset"),
        "{err}"
    );
    assert!(err.contains("refusing to start"), "{err}");
}

fn rejoin_after_writes(name: &str, settings: serde_json::Value, writes: usize, expect: &str) {
    let mut c = Cluster::start(name, 0, settings);
    for _ in 0..3 {
        c.add_node_with_data_dir();
    }
    c.wait_for_isr(3);
    let coord = c.coordinator();
    let down = (coord + 1) % 3;
    let down_id = c.nodes[down].id;
    c.nodes[down].kill();
    wait_until("the stopped node to leave the in-sync set", || {
        !c.view().isr.contains(&down_id)
    });
    let c = std::sync::Arc::new(c);
    let per = writes / 8;
    let hs: Vec<_> = (0..8)
        .map(|w| {
            let c = c.clone();
            std::thread::spawn(move || {
                let mut cl = c.client();
                for i in 0..per {
                    cl.put(format!("key-{w}-{i}").as_bytes(), b"0123456789")
                        .unwrap();
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let mut c = std::sync::Arc::try_unwrap(c).ok().unwrap();
    c.restart_node(down);
    wait_until("the node to rejoin the in-sync set", || {
        c.view().isr.contains(&down_id)
    });
    let d = c.wait_converged(&[0, 1, 2]);
    assert_eq!(c.status(down).unwrap().digest, d);
    assert_eq!(c.status(down).unwrap().keys, (per * 8) as u64);
    let coord = c.coordinator();
    let line = format!("node {down_id} (");
    let log = c.nodes[coord].log_text();
    assert!(
        log.lines().any(|l| l.contains(&line) && l.contains(expect)),
        "expected node {down_id} to catch up by {expect}:\n{log}"
    );
}

#[test]
fn a_node_down_during_50000_writes_catches_up_by_log_suffix() {
    rejoin_after_writes("suffix", json!({"fsync": "never"}), 50_000, "log suffix");
}

#[test]
fn a_node_behind_the_compacted_log_catches_up_by_snapshot() {
    rejoin_after_writes(
        "snapshot",
        json!({"fsync": "never", "log-retention-entries": 100}),
        2_000,
        "snapshot",
    );
}

#[test]
fn snapshots_compact_the_log_and_a_restart_recovers_from_them() {
    let mut c = Cluster::start(
        "compact",
        0,
        json!({"fsync": "never", "snapshot-threshold-bytes": 65536, "wal-segment-bytes": 16384}),
    );
    c.add_node_with_data_dir();
    c.wait_for_isr(1);
    let mut cl = c.client();
    for i in 0..3000 {
        cl.put(
            format!("k{}", i % 700).as_bytes(),
            format!("v{i}").as_bytes(),
        )
        .unwrap();
    }
    let dir = data_dir(&c, 0);
    wait_until("a snapshot to be written", || {
        std::fs::read_dir(&dir).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("snap-")
        })
    });
    let before = c.status(0).unwrap();
    c.nodes[0].kill();
    assert!(wal_files(&dir).len() < 10, "old segments were deleted");
    c.restart_node(0);
    assert!(c.nodes[0].log_text().contains("loaded snapshot"));
    wait_for_progress(&c.server_addr(), "after");
    let mut cl = c.client();
    for i in 2300..3000 {
        assert_eq!(
            cl.get(format!("k{}", i % 700).as_bytes()).unwrap(),
            Some(format!("v{i}").into_bytes())
        );
    }
    assert_eq!(
        c.status(0).unwrap().keys,
        before.keys + 1,
        "700 keys plus the probe"
    );
}

#[test]
fn a_second_node_on_the_same_data_dir_fails_clearly() {
    let mut c = Cluster::start("lock", 0, json!({}));
    c.add_node_with_data_dir();
    let out = Command::new(NODE_BIN)
        .args(&c.nodes[0].args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("in use by another dkv-node"), "{err}");
    // The first node is unaffected.
    assert!(c.status(0).is_ok());
    let file = c.dir.join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let out = Command::new(NODE_BIN)
        .args([&c.server_addr(), "--data-dir", file.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("cannot create data directory"), "{err}");
    let _ = &mut c;
}

/// Unmounts a tmpfs when dropped, also when the test panics.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_refuses_writes_clearly_and_keeps_every_acknowledged_one() {
    let mut c = Cluster::start("disk-full", 0, json!({}));
    let mnt = c.dir.join("small-disk");
    std::fs::create_dir_all(&mnt).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !require(
        ok,
        "mounting a small tmpfs failed (it needs root with CAP_SYS_ADMIN)",
        "run the tests as root, as CI does",
    ) {
        return;
    }
    let _mount = Mount(mnt.clone());
    let dir = mnt.join("node");
    c.add_node_with(&["--data-dir", dir.to_str().unwrap()]);
    c.wait_for_isr(1);
    let mut cl = c.client();
    let value = vec![b'x'; 2048];
    let mut acked = Vec::new();
    let mut first_error = None;
    for i in 0..1000 {
        let k = format!("k{i}");
        match cl.put(k.as_bytes(), &value) {
            Ok(()) => acked.push(k),
            Err(e) => {
                first_error = Some(e.to_string());
                break;
            }
        }
    }
    let first_error = first_error.expect("a 256 KiB disk fills up");
    assert!(acked.len() > 10, "{first_error}");
    // Later writes are refused with a sentence that says why.
    let (code, _, err) = client_proto(&c.server_addr(), &["W,after,full"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("storage failed") && err.contains("No space left"),
        "{err}"
    );
    // Everything acknowledged is still readable.
    for k in &acked {
        assert_eq!(
            cl.get(k.as_bytes()).unwrap().as_deref(),
            Some(&value[..]),
            "{k}"
        );
    }
    assert_eq!(cl.get(b"after").unwrap(), None);
    let log = c.nodes[0].log_text();
    assert!(log.contains("write-ahead log failed"), "{log}");
}
