//! `dkv-client backup / restore / verify` against real processes: a backup
//! taken under write load restores into a new cluster with the backup's
//! digest; bad files and non-empty clusters are refused before anything is
//! written.

mod common;

use common::*;
use dkv::commands::{Command, Value};
use std::path::Path;
use std::process::Command as Proc;
use std::time::Duration;

fn dkv_client(args: &[&str]) -> (i32, String, String) {
    let out = Proc::new(CLIENT_BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn dbsize(c: &mut dkv::Client) -> i64 {
    match c.command(Command::DbSize).unwrap() {
        Value::Int(n) => n,
        v => panic!("DBSIZE answered {v:?}"),
    }
}

fn file_pairs(path: &Path) -> (dkv::backup::Info, Vec<dkv::store::Pair>) {
    let mut all = Vec::new();
    let info = dkv::backup::read(path, |c| {
        all.extend(c);
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    (info, all)
}

#[test]
fn a_backup_under_write_load_restores_into_a_new_cluster_with_its_digest() {
    let src = Cluster::start("backup-src", 3, default_settings());
    src.wait_for_isr(3);
    let server = src.server_addr();
    let mut c = src.client();
    for i in 0..2000 {
        c.put(
            format!("base-{i}").as_bytes(),
            format!("value-{i}").as_bytes(),
        )
        .unwrap();
    }
    c.put_with_ttl(b"with-ttl", b"soon", Duration::from_secs(3600))
        .unwrap();
    let ttl_before = c.ttl(b"with-ttl").unwrap().expect("a deadline");
    let writers = Writers::start(&server, 4, "load");
    writers.wait_acked(300);
    let file = src.dir.join("b.dkv");
    let f = file.to_str().unwrap();
    let (code, out, err) = dkv_client(&["backup", &server, f, "--quiet"]);
    let acked_during = writers.acked();
    let log = writers.stop();
    assert_eq!(code, 0, "backup failed: {out}{err}\n{}", src.dump_logs());
    assert!(out.contains("keys"), "{out}");
    eprintln!("{out}");
    assert!(acked_during >= 300 && log.acked.len() >= 300);

    let (code, out, err) = dkv_client(&["verify", f]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": OK: position"), "{out}");

    let (info, pairs) = file_pairs(&file);
    assert_eq!(info.keys as usize, pairs.len());
    assert!(
        pairs.len() > 2001,
        "the writers' keys are in it: {}",
        pairs.len()
    );
    let ttl_pair = pairs
        .iter()
        .find(|p| p.key == b"with-ttl")
        .expect("ttl key");
    assert!(ttl_pair.expires_at.is_some());
    for i in 0..2000 {
        let k = format!("base-{i}");
        assert!(pairs.iter().any(|p| p.key == k.as_bytes()), "{k} missing");
    }

    let dst = Cluster::start("backup-dst", 3, default_settings());
    dst.wait_for_isr(3);
    let dserver = dst.server_addr();
    let (code, out, err) = dkv_client(&["restore", &dserver, f, "--quiet"]);
    assert_eq!(code, 0, "restore failed: {out}{err}\n{}", dst.dump_logs());
    assert!(out.contains("equals the backup's digest"), "{out}");
    // Every replica has it: all three nodes converge on the file's digest.
    let digest = dst.wait_converged(&[0, 1, 2]);
    assert_eq!(digest, info.digest, "restored digest vs the backup's");
    let mut d = dst.client();
    assert_eq!(dbsize(&mut d) as u64, info.keys);
    for p in &pairs {
        assert_eq!(d.get(&p.key).unwrap().as_deref(), Some(&p.value[..]));
    }
    let ttl_after = d.ttl(b"with-ttl").unwrap().expect("the deadline kept");
    assert!(ttl_after <= ttl_before && ttl_after > ttl_before - Duration::from_secs(120));
}

#[test]
fn bad_files_and_non_empty_clusters_are_refused_before_anything_is_written() {
    let src = Cluster::start("backup-bad-src", 1, default_settings());
    let mut c = src.client();
    for i in 0..300 {
        c.put(format!("k{i}").as_bytes(), &[b'x'; 100]).unwrap();
    }
    let good = src.dir.join("good.dkv");
    let g = good.to_str().unwrap();
    let (code, out, err) = dkv_client(&["backup", &src.server_addr(), g, "--quiet"]);
    assert_eq!(code, 0, "{out}{err}");
    let bytes = std::fs::read(&good).unwrap();

    let flipped = src.dir.join("flipped.dkv");
    let mut b = bytes.clone();
    let at = bytes.len() / 2;
    b[at] ^= 0x20;
    std::fs::write(&flipped, &b).unwrap();
    let truncated = src.dir.join("truncated.dkv");
    std::fs::write(&truncated, &bytes[..bytes.len() - 10]).unwrap();

    let (code, out, _) = dkv_client(&["verify", g]);
    assert_eq!(code, 0, "{out}");
    for (bad, word) in [(&flipped, "corrupt"), (&truncated, "truncated")] {
        let p = bad.to_str().unwrap();
        let (code, _, err) = dkv_client(&["verify", p]);
        assert_eq!(code, 5, "{err}");
        assert!(
            err.contains(p) && err.contains("at offset") && err.contains(word),
            "{err}"
        );
    }

    let dst = Cluster::start("backup-bad-dst", 1, default_settings());
    let ds = dst.server_addr();
    let mut d = dst.client();
    for bad in [&flipped, &truncated] {
        let p = bad.to_str().unwrap();
        let (code, _, err) = dkv_client(&["restore", &ds, p, "--quiet"]);
        assert_eq!(code, 5, "{err}");
        assert!(err.contains(p) && err.contains("at offset"), "{err}");
        assert_eq!(dbsize(&mut d), 0, "nothing written from {p}");
    }

    d.put(b"already-here", b"1").unwrap();
    let (code, _, err) = dkv_client(&["restore", &ds, g, "--quiet"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("--force") && err.contains("holds 1 keys"),
        "{err}"
    );
    assert_eq!(dbsize(&mut d), 1);

    let (code, out, err) = dkv_client(&["restore", &ds, g, "--force", "--quiet"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("digest not compared"), "{out}");
    assert_eq!(
        dbsize(&mut d),
        301,
        "the file's keys and the one already there"
    );
    assert_eq!(d.get(b"already-here").unwrap().as_deref(), Some(&b"1"[..]));
}
