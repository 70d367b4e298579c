//! Process-level test harness: real `dkv-server` and `dkv-node` binaries on
//! ephemeral loopback ports, each test in its own temp directory. Every
//! process is killed when the harness is dropped, also when a test panics.

#![allow(dead_code)]

pub mod etcd;
pub mod ha;
pub mod skip;

#[allow(unused_imports)]
pub use skip::{require, require_for_part, require_ioredis, require_redis_py, require_tool};

use dkv::wire::{self, ClusterView, NodeStatus, Request, Response};
use dkv::{Client, ClientOptions};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SERVER_BIN: &str = env!("CARGO_BIN_EXE_dkv-server");
pub const NODE_BIN: &str = env!("CARGO_BIN_EXE_dkv-node");
pub const CLIENT_PROTO_BIN: &str = env!("CARGO_BIN_EXE_client_proto");
pub const CLIENT_BIN: &str = env!("CARGO_BIN_EXE_dkv-client");

/// Generous bound for anything a test waits for; reaching it is a failure.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub struct Proc {
    pub child: Child,
    /// Arguments it was started with, for restarts.
    pub args: Vec<String>,
    pub addr: String,
    pub beacon_addr: String,
    /// RESP address ("off" when disabled).
    pub resp_addr: String,
    /// Metrics address (`GET /metrics`); empty when off.
    pub metrics_addr: String,
    pub id: u64,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Cluster {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub server: Proc,
    pub nodes: Vec<Proc>,
    next_log: usize,
    /// The client password the cluster requires, if any.
    pub password: Option<Vec<u8>>,
    /// With TLS on: the directory of `scripts/make-certs.sh`'s files
    /// (`ca.pem`, `node.pem`, `node.key`) and how clients connect.
    pub tls: Option<(PathBuf, dkv::tls::ClientTls)>,
}

/// A cluster secret and client password for [`Cluster::start_secured`].
#[derive(Clone, Copy, Default)]
pub struct Secrets<'a> {
    pub cluster_secret: Option<&'a str>,
    pub password: Option<&'a str>,
    /// TLS on every port, with certificates from `scripts/make-certs.sh`.
    pub tls: bool,
}

/// Makes a CA and certificates `names` in `dir` with `scripts/make-certs.sh`
/// (`env`: its knobs, such as `EXPIRED=1`).
pub fn make_certs(dir: &Path, names: &[&str], env: &[(&str, &str)]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-certs.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(dir)
        .args(names)
        .envs(env.iter().copied())
        .output()
        .expect("run scripts/make-certs.sh");
    assert!(
        out.status.success(),
        "make-certs.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes a secret file readable by its owner only, as the nodes require.
pub fn write_secret(path: &Path, secret: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Test defaults: the shipped defaults, written out so a test can override keys.
pub fn default_settings() -> serde_json::Value {
    serde_json::json!({})
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "dkv-test-{name}-{}-{}",
        std::process::id(),
        rand_u64()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

/// Makes the child get SIGKILL if the test process dies without cleaning
/// up (an abort skips every Drop). The kernel ties this to the *thread*
/// that spawned the child: spawn from a thread that outlives the child (the
/// test's own), never from a short-lived helper thread.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Spawns `bin args`, waits for its first stdout line, and returns it.
pub fn spawn(bin: &str, args: &[&str], log: &Path) -> (Child, String) {
    try_spawn(bin, args, log).unwrap_or_else(|why| panic!("{why}"))
}

/// Like [`spawn`], but a process that exits before its first line is an
/// `Err` with its log, for callers that may retry (a port taken meanwhile).
pub fn try_spawn(bin: &str, args: &[&str], log: &Path) -> Result<(Child, String), String> {
    start_process(bin, args, log).ready()
}

/// A process started by [`start_process`] whose first stdout line has not
/// been read yet: several can be started at once, then waited for.
pub struct Starting {
    child: Child,
    reader: BufReader<std::process::ChildStdout>,
    what: String,
    log: PathBuf,
}

/// Starts `bin args` (stderr to `log`, `RUST_LOG` from `DKV_TEST_LOG`,
/// default `info`) without waiting for it.
pub fn start_process(bin: &str, args: &[&str], log: &Path) -> Starting {
    let logf = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(bin);
    die_with_parent(&mut cmd);
    let mut child = cmd
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("DKV_TEST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(logf)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    let stdout = child.stdout.take().unwrap();
    Starting {
        child,
        reader: BufReader::new(stdout),
        what: format!("{bin} {args:?}"),
        log: log.to_path_buf(),
    }
}

impl Starting {
    /// Waits for the first stdout line and returns it; `Err` (with the log)
    /// when the process exits first.
    pub fn ready(self) -> Result<(Child, String), String> {
        let Starting {
            mut child,
            mut reader,
            what,
            log,
        } = self;
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.is_empty() {
            let _ = child.wait();
            return Err(format!(
                "{what} exited before it was ready:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ));
        }
        // Keep draining so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        Ok((child, line.trim().to_string()))
    }
}

impl Cluster {
    /// A server and `n` nodes with the given node-settings overrides.
    pub fn start(name: &str, n: usize, settings: serde_json::Value) -> Cluster {
        Self::start_secured(name, n, settings, Secrets::default())
    }

    /// A cluster whose config names a cluster secret file and a client
    /// password file (written into the test directory).
    pub fn start_secured(
        name: &str,
        n: usize,
        settings: serde_json::Value,
        secrets: Secrets,
    ) -> Cluster {
        let dir = temp_dir(name);
        let config = dir.join("config.json");
        let mut cfg = serde_json::json!({
            "server-ip-port": "127.0.0.1:0",
            "node-settings": settings,
        });
        if let Some(secret) = secrets.cluster_secret {
            let f = dir.join("cluster.secret");
            write_secret(&f, secret);
            cfg["cluster-secret-file"] = f.to_str().unwrap().into();
        }
        if let Some(pw) = secrets.password {
            let f = dir.join("client.password");
            write_secret(&f, pw);
            cfg["client-password-file"] = f.to_str().unwrap().into();
        }
        let tls = secrets.tls.then(|| {
            let certs = dir.join("certs");
            make_certs(&certs, &["node"], &[]);
            let f = |n: &str| certs.join(n).to_str().unwrap().to_string();
            cfg["tls-cert-file"] = f("node.pem").into();
            cfg["tls-key-file"] = f("node.key").into();
            cfg["tls-ca-file"] = f("ca.pem").into();
            let client =
                dkv::tls::ClientTls::from_files(&certs.join("ca.pem"), None).expect("client TLS");
            (certs, client)
        });
        std::fs::write(&config, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        let server = Self::start_server_at(&dir, &config, "127.0.0.1:0", 0);
        let mut c = Cluster {
            dir,
            config,
            server,
            nodes: Vec::new(),
            next_log: 0,
            password: secrets.password.map(|p| p.as_bytes().to_vec()),
            tls,
        };
        for _ in 0..n {
            c.add_node();
        }
        c.wait_for_isr(n);
        c
    }

    fn start_server_at(dir: &Path, config: &Path, listen: &str, gen: usize) -> Proc {
        Self::start_server_with(dir, config, listen, gen, &[])
    }

    fn start_server_with(
        dir: &Path,
        config: &Path,
        listen: &str,
        gen: usize,
        extra: &[&str],
    ) -> Proc {
        let log = dir.join(format!("server-{gen}.log"));
        let state = dir.join("server-state.json");
        let mut args = vec![
            "-c",
            config.to_str().unwrap(),
            "--listen",
            listen,
            "--state-file",
            state.to_str().unwrap(),
            "--sentinel-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let (child, line) = spawn(SERVER_BIN, &args, &log);
        // "dkv-server listening on ADDR [sentinel ADDR] [metrics ADDR]"
        let metrics_addr = word_after(&line, "metrics");
        let rest = line
            .strip_prefix("dkv-server listening on ")
            .unwrap_or_else(|| panic!("unexpected server banner: {line}"));
        let mut words = rest.split_whitespace();
        let addr = words.next().unwrap_or_default().to_string();
        let sentinel = words.nth(1).unwrap_or_default().to_string();
        Proc {
            child,
            args: vec![],
            addr,
            beacon_addr: String::new(),
            // The server's RESP endpoint is its Sentinel port.
            resp_addr: sentinel,
            metrics_addr,
            id: 0,
            log,
        }
    }

    pub fn server_addr(&self) -> String {
        self.server.addr.clone()
    }

    /// Starts one more node with no flags but the server address.
    pub fn add_node(&mut self) -> usize {
        self.add_node_with(&[])
    }

    pub fn add_node_with(&mut self, extra: &[&str]) -> usize {
        let server = self.server.addr.clone();
        let config = self.config.to_str().unwrap().to_string();
        let mut args: Vec<String> = vec![server, "-c".into(), config];
        args.extend(extra.iter().map(|s| s.to_string()));
        let p = self.spawn_node(args);
        self.nodes.push(p);
        self.nodes.len() - 1
    }

    /// A node that keeps its identity in its own data directory.
    pub fn add_node_with_data_dir(&mut self) -> usize {
        let dir = self.dir.join(format!("data-{}", self.next_log + 1));
        let d = dir.to_str().unwrap().to_string();
        self.add_node_with(&["--data-dir", &d])
    }

    fn spawn_node(&mut self, args: Vec<String>) -> Proc {
        self.next_log += 1;
        let log = self.dir.join(format!("node-{}.log", self.next_log));
        spawn_node_proc(args, log)
    }

    /// Kills node `i` (if alive) and starts it again with the same arguments.
    pub fn restart_node(&mut self, i: usize) {
        self.nodes[i].kill();
        let args = self.nodes[i].args.clone();
        let p = self.spawn_node(args);
        self.nodes[i] = p;
    }

    /// Kills the server and starts it again on the same address and state file.
    pub fn restart_server(&mut self) {
        self.server.kill();
        self.next_log += 1;
        let addr = self.server.addr.clone();
        self.server = Self::start_server_at(&self.dir, &self.config, &addr, self.next_log);
    }

    /// Kills the server and starts it again on `listen` (another address)
    /// with the same state file, as a second server of a list would take over.
    pub fn restart_server_on(&mut self, listen: &str) {
        self.server.kill();
        self.next_log += 1;
        self.server = Self::start_server_at(&self.dir, &self.config, listen, self.next_log);
    }

    /// Starts one more node whose server argument is `servers` (a list).
    pub fn add_node_to(&mut self, servers: &str, extra: &[&str]) -> usize {
        let config = self.config.to_str().unwrap().to_string();
        let mut args: Vec<String> = vec![servers.to_string(), "-c".into(), config];
        args.extend(extra.iter().map(|s| s.to_string()));
        let p = self.spawn_node(args);
        self.nodes.push(p);
        self.nodes.len() - 1
    }

    pub fn kill_server(&mut self) {
        self.server.kill();
    }

    /// The server's state file.
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("server-state.json")
    }

    /// Starts the server again on its address with extra flags.
    pub fn start_server_again_with(&mut self, extra: &[&str]) {
        self.next_log += 1;
        let addr = self.server.addr.clone();
        self.server = Self::start_server_with(&self.dir, &self.config, &addr, self.next_log, extra);
    }

    pub fn start_server_again(&mut self) {
        self.next_log += 1;
        let addr = self.server.addr.clone();
        self.server = Self::start_server_at(&self.dir, &self.config, &addr, self.next_log);
    }

    pub fn client(&self) -> Client {
        self.client_with(ClientOptions::default())
    }

    /// A client with `opts`, carrying the cluster's password.
    pub fn client_with(&self, opts: ClientOptions) -> Client {
        let opts = ClientOptions {
            password: opts.password.or_else(|| self.password.clone()),
            tls: opts.tls.or_else(|| self.tls.as_ref().map(|t| t.1.clone())),
            ..opts
        };
        Client::with_options(&self.server.addr, opts).expect("client connects")
    }

    pub fn view(&self) -> ClusterView {
        self.client().cluster_view().expect("view")
    }

    pub fn status(&self, i: usize) -> dkv::Result<NodeStatus> {
        if self.password.is_none() && self.tls.is_none() {
            node_status(&self.nodes[i].addr)
        } else {
            self.client().node_status(&self.nodes[i].addr)
        }
    }

    /// Index of the node that is coordinator according to the server.
    pub fn coordinator(&self) -> usize {
        let v = self.view();
        let id = v.coordinator.expect("a coordinator");
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .expect("coordinator is one of ours")
    }

    /// Index of the node acting as coordinator, asked of the nodes
    /// themselves (works while the server is down).
    pub fn coordinator_by_status(&self) -> usize {
        let mut found = None;
        wait_until("a node to act as coordinator", || {
            found = (0..self.nodes.len()).find(|&i| {
                self.status(i)
                    .is_ok_and(|st| st.role == dkv::types::Role::Coordinator)
            });
            found.is_some()
        });
        found.unwrap()
    }

    /// Waits until the server lists `n` in-sync members.
    pub fn wait_for_isr(&self, n: usize) {
        wait_until("in-sync set to reach the expected size", || {
            self.view().isr.len() == n
        });
    }

    /// Waits until every live node reports the same applied position and
    /// digest, and returns that digest.
    pub fn wait_converged(&self, live: &[usize]) -> u64 {
        let mut last = Vec::new();
        let ok = wait_until_ok(|| {
            let st: Vec<_> = live.iter().map(|&i| self.status(i)).collect();
            if st.iter().any(|s| s.is_err()) {
                return None;
            }
            let st: Vec<NodeStatus> = st.into_iter().map(|s| s.unwrap()).collect();
            last = st
                .iter()
                .map(|s| (s.node_id, s.applied, s.digest))
                .collect();
            let first = &st[0];
            let same = st
                .iter()
                .all(|s| s.applied == first.applied && s.digest == first.digest);
            same.then_some(first.digest)
        });
        ok.unwrap_or_else(|| panic!("nodes did not converge: {last:?}"))
    }

    /// Dumps every log, for post-mortems of a failing test.
    pub fn dump_logs(&self) -> String {
        let mut s = format!("--- server ---\n{}\n", self.server.log_text());
        for n in &self.nodes {
            s += &format!("--- node {} ({}) ---\n{}\n", n.id, n.addr, n.log_text());
        }
        s
    }
}

/// Starts `dkv-node args` with its stderr in `log` and reads its banner.
pub fn spawn_node_proc(args: Vec<String>, log: PathBuf) -> Proc {
    start_node(args, log).ready()
}

/// The word after `key` in a start-up line ("metrics 127.0.0.1:9101"), or
/// "" when it is absent or "off".
pub fn word_after(line: &str, key: &str) -> String {
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == key {
            return words
                .next()
                .filter(|a| *a != "off")
                .unwrap_or("")
                .to_string();
        }
    }
    String::new()
}

/// A node started by [`start_node`], its banner not read yet.
pub struct StartingNode {
    starting: Starting,
    args: Vec<String>,
    log: PathBuf,
}

/// Starts `dkv-node args` without waiting for it, so several nodes can
/// start (and register) at the same moment.
pub fn start_node(args: Vec<String>, log: PathBuf) -> StartingNode {
    let argv: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    StartingNode {
        starting: start_process(NODE_BIN, &argv, &log),
        args,
        log,
    }
}

impl StartingNode {
    /// Waits for the banner; panics if the node exits first.
    pub fn ready(self) -> Proc {
        let (child, line) = self.starting.ready().unwrap_or_else(|why| panic!("{why}"));
        // "dkv-node ID listening on ADDR beacons ADDR resp ADDR metrics ADDR"
        let parts: Vec<&str> = line.split_whitespace().collect();
        assert!(
            parts.len() >= 7 && parts[0] == "dkv-node",
            "unexpected node banner: {line}"
        );
        Proc {
            child,
            id: parts[1].parse().unwrap(),
            addr: parts[4].to_string(),
            beacon_addr: parts[6].to_string(),
            resp_addr: parts.get(8).map(|s| s.to_string()).unwrap_or_default(),
            metrics_addr: word_after(&line, "metrics"),
            args: self.args,
            log: self.log,
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        self.server.kill();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("test logs kept in {}", self.dir.display());
        }
    }
}

/// Sends a signal (SIGSTOP, SIGCONT, ...) to a process.
pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// SIGSTOPs a process and waits until the kernel shows it stopped (the
/// signal is delivered asynchronously).
pub fn stop_process(pid: i32) {
    signal(pid, libc::SIGSTOP);
    wait_until("the process to be stopped", || {
        std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("State:") && l.contains("T (stopped)"))
        })
    });
}

/// Writer threads that write unique keys until stopped and remember every
/// write that was acknowledged.
pub struct Writers {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    handles: Vec<std::thread::JoinHandle<WriterLog>>,
}

#[derive(Default, Debug)]
pub struct WriterLog {
    pub acked: Vec<(String, String)>,
    pub failed: usize,
    pub unknown: usize,
}

impl Writers {
    pub fn start(server: &str, n: usize, prefix: &str) -> Writers {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let handles = (0..n)
            .map(|t| {
                let stop = stop.clone();
                let counter = acked.clone();
                let server = server.to_string();
                let prefix = prefix.to_string();
                std::thread::spawn(move || {
                    let mut log = WriterLog::default();
                    let opts = ClientOptions {
                        op_timeout: Duration::from_secs(3),
                        ..Default::default()
                    };
                    let mut cl = None;
                    let mut i = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Acquire) {
                        if cl.is_none() {
                            cl = Client::with_options(&server, opts.clone()).ok();
                            if cl.is_none() {
                                std::thread::sleep(Duration::from_millis(20));
                                continue;
                            }
                        }
                        i += 1;
                        let k = format!("{prefix}-{t}-{i}");
                        let v = format!("v{i}");
                        match cl.as_mut().unwrap().put(k.as_bytes(), v.as_bytes()) {
                            Ok(()) => {
                                log.acked.push((k, v));
                                counter.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                            }
                            Err(dkv::Error::Indeterminate(_)) => log.unknown += 1,
                            Err(_) => log.failed += 1,
                        }
                    }
                    log
                })
            })
            .collect();
        Writers {
            stop,
            acked,
            handles,
        }
    }

    /// Waits until at least `n` writes have been acknowledged in total.
    pub fn wait_acked(&self, n: usize) {
        wait_until("writers to make progress", || {
            self.acked.load(std::sync::atomic::Ordering::Acquire) >= n
        });
    }

    /// Writes acknowledged so far, in total.
    pub fn acked(&self) -> usize {
        self.acked.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Stops the writers and returns what they saw.
    pub fn stop(self) -> WriterLog {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        let mut all = WriterLog::default();
        for h in self.handles {
            let l = h.join().unwrap();
            all.acked.extend(l.acked);
            all.failed += l.failed;
            all.unknown += l.unknown;
        }
        all
    }
}

/// Checks that every acknowledged write reads back through `server`.
pub fn assert_all_read_back(server: &str, log: &WriterLog) {
    let mut cl = Client::connect(server).unwrap();
    let mut missing = Vec::new();
    for (k, v) in &log.acked {
        let got = cl.get(k.as_bytes()).unwrap();
        if got.as_deref() != Some(v.as_bytes()) {
            missing.push(k.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost, e.g. {:?}",
        missing.len(),
        log.acked.len(),
        &missing[..missing.len().min(5)]
    );
}

/// Waits until a write through a fresh client succeeds: proof that the
/// cluster serves writes again after an event.
pub fn wait_for_progress(server: &str, probe_key: &str) {
    let mut cl = Client::connect(server).unwrap();
    wait_until("a write to succeed", || {
        cl.put(probe_key.as_bytes(), b"x").is_ok()
    });
}

pub fn node_status(addr: &str) -> dkv::Result<NodeStatus> {
    let s = dkv::net::connect(addr, Duration::from_secs(2))?;
    match dkv::net::call::<_, Response>(&s, &Request::Status, 1 << 20)? {
        Response::Status(st) => Ok(st),
        other => Err(dkv::Error::Protocol(format!("{other:?}"))),
    }
}

/// A raw connection to a node that has sent the client handshake.
pub fn raw_client(addr: &str) -> dkv::net::Stream {
    dkv::net::connect(addr, Duration::from_secs(5)).unwrap()
}

pub fn raw_call(s: &dkv::net::Stream, req: &Request) -> Response {
    dkv::net::call::<_, Response>(s, req, 4 << 20).unwrap()
}

/// Sends `cmd` whole, as a client library does (it writes the command, then
/// reads the reply), and returns everything the node answered until it
/// closed the connection.
pub fn send_then_read(addr: &str, cmd: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    // A client library that cannot write its command reports the reset,
    // not the node's reply: the node must take the command in, even when
    // it refuses it at the first bytes.
    s.write_all(cmd)
        .expect("the node reset the connection before the client could read why");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

/// One RESP command as a client library sends it.
pub fn resp_command(args: &[&[u8]]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        v.extend_from_slice(a);
        v.extend_from_slice(b"\r\n");
    }
    v
}

pub fn encode_frame(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

pub fn wire_encode<T: serde::Serialize>(t: &T) -> Vec<u8> {
    wire::encode(t)
}

/// `n` distinct loopback addresses with nothing listening: ports bound
/// together (so they differ) and released.
pub fn dead_addrs(n: usize) -> Vec<String> {
    let ls: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect()
}

/// Polls `cond` until it holds; panics after [`PATIENCE`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    if wait_until_ok(|| cond().then_some(())).is_none() {
        panic!("timed out waiting for {what}");
    }
}

/// Polls `f` until it returns `Some`; `None` after [`PATIENCE`].
pub fn wait_until_ok<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + PATIENCE;
    let mut delay = Duration::from_millis(5);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

/// Runs `client_proto SERVER args...`; returns (exit code, stdout, stderr).
pub fn client_proto(server: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(CLIENT_PROTO_BIN)
        .arg(server)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `cmd` to its end: whether it succeeded, and its stdout then stderr.
pub fn run_output(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// An AF_PACKET socket (root only) of `kind` (`SOCK_RAW`: whole frames,
/// `SOCK_DGRAM`: from the network header) for `ethertype`, bound to the
/// loopback interface, whose reads give up after `timeout`. The caller
/// closes the descriptor.
pub fn loopback_packet_socket(
    kind: i32,
    ethertype: u16,
    timeout: std::time::Duration,
) -> Option<i32> {
    // SAFETY: plain socket calls on a descriptor this function owns until
    // it returns it.
    unsafe {
        let proto = ethertype.to_be();
        let fd = libc::socket(libc::AF_PACKET, kind, proto as i32);
        if fd < 0 {
            return None;
        }
        let name = std::ffi::CString::new("lo").unwrap();
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        let bound = libc::bind(
            fd,
            &addr as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) == 0;
        let timed = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        ) == 0;
        if !(bound && timed) {
            libc::close(fd);
            return None;
        }
        Some(fd)
    }
}
