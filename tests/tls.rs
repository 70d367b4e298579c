//! TLS on every port with real processes and certificates made by
//! `scripts/make-certs.sh`: a cluster that replicates, fails over and
//! catches up by log suffix and by snapshot over TLS; clear-text clients,
//! untrusted, foreign and expired certificates refused with a reason;
//! redis-cli and redis-py with TLS on the RESP and Sentinel ports; and a
//! capture of loopback traffic in which a marker value never appears.

mod common;

use common::*;
use dkv::wire::ConnKind;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

fn tls_cluster(name: &str, n: usize, settings: serde_json::Value) -> Cluster {
    Cluster::start_secured(
        name,
        n,
        settings,
        Secrets {
            tls: true,
            ..Secrets::default()
        },
    )
}

fn certs(c: &Cluster) -> std::path::PathBuf {
    c.tls.as_ref().expect("a TLS cluster").0.clone()
}

fn path(p: std::path::PathBuf) -> String {
    p.to_str().unwrap().to_string()
}

#[test]
fn a_tls_cluster_replicates_fails_over_and_catches_up_by_suffix_and_snapshot() {
    let mut c = tls_cluster("tls-cluster", 2, json!({"log-retention-entries": 100}));
    let mut client = c.client();
    for i in 0..50 {
        client.put(format!("a{i}").as_bytes(), b"v").unwrap();
    }
    // A third node joins while the log holds everything: a log suffix.
    c.add_node();
    c.wait_for_isr(3);
    let coord = c.coordinator();
    assert!(
        c.nodes[coord].log_text().contains("(log suffix)"),
        "{}",
        c.dump_logs()
    );
    for i in 0..300 {
        client.put(format!("b{i}").as_bytes(), b"v").unwrap();
    }
    // Failover over TLS links.
    let before = c.view();
    c.nodes[coord].kill();
    wait_until("a new coordinator", || {
        c.client()
            .cluster_view()
            .is_ok_and(|v| v.epoch > before.epoch && v.coordinator.is_some())
    });
    let mut client = c.client();
    for i in 0..300 {
        client.put(format!("c{i}").as_bytes(), b"v").unwrap();
    }
    // A new node joins after the log was compacted: a snapshot.
    c.add_node();
    c.wait_for_isr(3);
    let coord = c.coordinator();
    assert!(
        c.nodes[coord].log_text().contains("(snapshot)"),
        "{}",
        c.dump_logs()
    );
    let live: Vec<usize> = (0..c.nodes.len())
        .filter(|&i| i != before_coord(&c, &before))
        .collect();
    let digest = c.wait_converged(&live);
    for &i in &live {
        assert_eq!(c.status(i).unwrap().digest, digest);
        assert_eq!(c.status(i).unwrap().keys, 650);
    }
    // client_proto as a user runs it.
    let ca = path(certs(&c).join("ca.pem"));
    let (code, out, err) = client_proto(&c.server_addr(), &["--tls-ca", &ca, "R,b7", "W,z,1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "v\nOK\n");
}

/// The index of the node that coordinated `view`.
fn before_coord(c: &Cluster, view: &dkv::wire::ClusterView) -> usize {
    let id = view.coordinator.unwrap();
    c.nodes.iter().position(|n| n.id == id).unwrap()
}

/// Starts `dkv-node` against the cluster with these TLS files and waits for
/// it to exit (it must: its registration is refused); returns its stderr.
fn refused_node(c: &Cluster, cert: &str, key: &str, ca: &str) -> String {
    let out = Command::new(NODE_BIN)
        .args([&c.server_addr(), "-c", c.config.to_str().unwrap()])
        .args([
            "--tls-cert-file",
            cert,
            "--tls-key-file",
            key,
            "--tls-ca-file",
            ca,
        ])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run dkv-node");
    assert!(!out.status.success(), "the node was not refused");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn clear_text_and_bad_certificates_are_refused_with_a_reason() {
    let c = tls_cluster("tls-refusals", 1, json!({}));
    let dir = certs(&c);
    let ca = path(dir.join("ca.pem"));

    // A clear-text client is closed, and told why.
    let (code, _, err) = client_proto(&c.server_addr(), &["--timeout", "3000", "R,k"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("speaks TLS"), "{err}");
    wait_until("the server to log the clear-text connection", || {
        c.server.log_text().contains("TLS handshake failed")
    });

    // A client that does not trust the cluster's CA.
    let other = c.dir.join("other-ca");
    make_certs(&other, &["node"], &[]);
    let other_ca = path(other.join("ca.pem"));
    let (code, _, err) = client_proto(&c.server_addr(), &["--tls-ca", &other_ca, "R,k"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("not signed by a CA this client trusts"),
        "{err}"
    );

    // A member link without a certificate.
    let no_cert = dkv::tls::ClientTls::from_files(&dir.join("ca.pem"), None).unwrap();
    let e = dkv::net::connect_peer(
        &c.server_addr(),
        ConnKind::Member,
        Duration::from_secs(5),
        None,
        Some(&no_cert),
    )
    .err()
    .expect("refused");
    assert!(
        e.to_string()
            .contains("must present a certificate signed by the cluster's CA"),
        "{e}"
    );

    // A member whose certificate another CA signed: refused and counted.
    let refused_before = c.view().auth.rejected_peers;
    let err = refused_node(
        &c,
        &path(other.join("node.pem")),
        &path(other.join("node.key")),
        &ca,
    );
    assert!(err.contains("TLS"), "{err}");
    assert!(c.view().auth.rejected_peers > refused_before);

    // An expired certificate from the right CA.
    make_certs(&dir, &["old"], &[("EXPIRED", "1")]);
    let err = refused_node(
        &c,
        &path(dir.join("old.pem")),
        &path(dir.join("old.key")),
        &ca,
    );
    assert!(err.contains("CertificateExpired"), "{err}");
    assert!(c.server.log_text().contains("certificate expired"));

    // A key file others can read stops the process with a sentence.
    let loose = c.dir.join("loose.key");
    std::fs::copy(dir.join("node.key"), &loose).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = refused_node(&c, &path(dir.join("node.pem")), &path(loose), &ca);
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn redis_cli_and_redis_py_speak_tls_to_the_resp_and_sentinel_ports() {
    if !skip::require_tool("redis-cli", "apt-get install redis-tools") || !skip::require_redis_py()
    {
        return;
    }
    let c = tls_cluster("tls-redis", 2, json!({}));
    let coord = c.coordinator();
    let ca = path(certs(&c).join("ca.pem"));
    let cli = |addr: &str, args: &[&str]| {
        let (host, port) = addr.rsplit_once(':').unwrap();
        let out = Command::new("redis-cli")
            .args(["--tls", "--cacert", &ca, "-h", host, "-p", port])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(cli(&c.nodes[coord].resp_addr, &["SET", "k", "v1"]), "OK");
    // Through a replica, which forwards to the coordinator over TLS.
    let replica = 1 - coord;
    assert_eq!(cli(&c.nodes[replica].resp_addr, &["SET", "k2", "v2"]), "OK");
    assert_eq!(cli(&c.nodes[coord].resp_addr, &["GET", "k2"]), "v2");
    let master = cli(
        &c.server.resp_addr,
        &["SENTINEL", "get-master-addr-by-name", "dkv"],
    );
    assert!(
        master.contains(c.nodes[coord].resp_addr.rsplit_once(':').unwrap().1),
        "{master}"
    );
    // Clear text to the RESP port gets nothing served.
    let (host, port) = c.nodes[coord].resp_addr.rsplit_once(':').unwrap();
    let plain = Command::new("redis-cli")
        .args(["-h", host, "-p", port, "GET", "k"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("v1"));

    let script = format!(
        "import redis\n\
         r = redis.Redis(host='{host}', port={port}, ssl=True, ssl_ca_certs='{ca}')\n\
         r.set('py', 'tls')\n\
         print(r.get('py').decode())\n"
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "tls");
}

/// Captures every frame on the loopback interface (AF_PACKET, root).
struct Capture {
    fd: i32,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Capture {
    fn start() -> Option<Capture> {
        let fd = loopback_packet_socket(
            libc::SOCK_RAW,
            libc::ETH_P_ALL as u16,
            Duration::from_millis(100),
        )?;
        // SAFETY: reads into a buffer it owns on the descriptor it owns.
        unsafe {
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let (s2, seen2) = (stop.clone(), seen.clone());
            let thread = std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                    let n = libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0);
                    if n > 0 {
                        seen2.lock().unwrap().extend_from_slice(&buf[..n as usize]);
                    }
                }
            });
            Some(Capture {
                fd,
                stop,
                seen,
                thread: Some(thread),
            })
        }
    }

    fn holds(&self, marker: &[u8]) -> bool {
        let seen = self.seen.lock().unwrap();
        seen.windows(marker.len()).any(|w| w == marker)
    }

    fn stop(mut self) -> Vec<u8> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // SAFETY: the descriptor is ours and no longer read.
        unsafe { libc::close(self.fd) };
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

#[test]
fn a_marker_written_through_every_path_never_crosses_loopback_in_clear_text() {
    let root = unsafe { libc::geteuid() } == 0;
    if !skip::require(
        root,
        "capturing loopback traffic needs root",
        "run the tests as root",
    ) || !skip::require_tool("redis-cli", "apt-get install redis-tools")
    {
        return;
    }
    let mut c = tls_cluster("tls-capture", 2, json!({"log-retention-entries": 50}));
    let cap = Capture::start().expect("an AF_PACKET socket on lo");
    // Positive control: a marker sent in clear text on loopback is seen.
    let control = b"dkv-capture-control-7d1f3a";
    {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut a, _) = l.accept().unwrap();
        std::io::Write::write_all(&mut s, control).unwrap();
        let mut got = vec![0u8; control.len()];
        std::io::Read::read_exact(&mut a, &mut got).unwrap();
    }
    wait_until("the capture to see the clear-text control", || {
        cap.holds(control)
    });

    let marker = b"SECRET-MARKER-5c2e9b81";
    let marker_s = std::str::from_utf8(marker).unwrap();
    // Native client (and replication to the replica).
    let mut client = c.client();
    client.put(b"m1", marker).unwrap();
    // RESP, on the coordinator and forwarded by the replica.
    let coord = c.coordinator();
    let ca = path(certs(&c).join("ca.pem"));
    for i in 0..2 {
        let (host, port) = c.nodes[i].resp_addr.rsplit_once(':').unwrap();
        let out = Command::new("redis-cli")
            .args(["--tls", "--cacert", &ca, "-h", host, "-p", port])
            .args(["SET", &format!("m-resp-{i}"), marker_s])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    }
    // Enough writes for the log to be compacted, then a joiner by snapshot.
    for i in 0..100 {
        client.put(format!("fill{i}").as_bytes(), b"x").unwrap();
    }
    c.add_node();
    c.wait_for_isr(3);
    assert!(c.nodes[coord].log_text().contains("(snapshot)"));
    c.wait_converged(&[0, 1, 2]);
    assert_eq!(client.get(b"m1").unwrap().as_deref(), Some(&marker[..]));
    let seen = cap.stop();
    assert!(
        !seen.windows(marker.len()).any(|w| w == marker),
        "the marker crossed loopback in clear text ({} bytes captured)",
        seen.len()
    );
}

#[test]
fn certificates_are_reloaded_when_their_files_change_and_on_sighup() {
    let c = tls_cluster("tls-reload", 1, json!({}));
    let dir = certs(&c);
    let fresh = c.dir.join("rotated");
    make_certs(&fresh, &["node"], &[]);
    let new_client = |ca: &std::path::Path| {
        let tls = dkv::tls::ClientTls::from_files(ca, None).unwrap();
        let opts = dkv::ClientOptions {
            tls: Some(tls),
            op_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        dkv::Client::with_options(&c.server_addr(), opts).and_then(|cl| cl.cluster_view())
    };
    assert!(new_client(&fresh.join("ca.pem")).is_err());
    // Replace the files (each by a rename, as a deployment tool does).
    for f in ["node.pem", "node.key", "ca.pem"] {
        let tmp = dir.join(format!("{f}.new"));
        std::fs::copy(fresh.join(f), &tmp).unwrap();
        std::fs::rename(&tmp, dir.join(f)).unwrap();
    }
    wait_until("the server to serve the new certificate", || {
        new_client(&fresh.join("ca.pem")).is_ok()
    });
    assert!(c.server.log_text().contains("TLS: reloaded"));
    // SIGHUP reloads at once, and does not stop the process.
    unsafe {
        libc::kill(c.nodes[0].pid(), libc::SIGHUP);
    }
    wait_until("the node to log the SIGHUP reload", || {
        c.nodes[0]
            .log_text()
            .contains("SIGHUP: reloading the TLS certificates")
    });
    let mut cl = c.client_with(dkv::ClientOptions {
        tls: Some(dkv::tls::ClientTls::from_files(&fresh.join("ca.pem"), None).unwrap()),
        ..Default::default()
    });
    cl.put(b"after", b"reload").unwrap();
    assert_eq!(cl.get(b"after").unwrap().as_deref(), Some(&b"reload"[..]));
}

#[test]
fn metrics_are_served_over_https_only() {
    let c = tls_cluster("tls-metrics", 1, json!({}));
    let addr = c.server.metrics_addr.clone();
    let get = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let tls = dkv::tls::ClientTls::from_files(&certs(&c).join("ca.pem"), None).unwrap();
    let s = dkv::net::dial(&addr, Duration::from_secs(5), Some(&tls)).unwrap();
    std::io::Write::write_all(&mut &s, get).unwrap();
    let mut body = String::new();
    let _ = std::io::Read::read_to_string(&mut &s, &mut body);
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("dkv_server_epoch"), "{body}");
    // Clear text gets no metrics.
    let mut p = std::net::TcpStream::connect(&addr).unwrap();
    p.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    std::io::Write::write_all(&mut p, get).unwrap();
    let mut raw = Vec::new();
    let _ = std::io::Read::read_to_end(&mut p, &mut raw);
    assert!(!String::from_utf8_lossy(&raw).contains("dkv_server_epoch"));
}
