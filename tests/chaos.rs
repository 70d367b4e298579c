//! Chaos against real processes: a server and five nodes, each in its own
//! Linux network namespace joined by veth pairs to a bridge, under a nemesis
//! (kill -9 and restart, SIGSTOP/SIGCONT, partitions, packet loss and delay
//! with tc netem, server restarts) while clients record every call. At the
//! end every fault is healed and the history must be linearizable, every
//! acknowledged write present, and every in-sync node hold the same data.
//!
//! Needs root (ip netns). `make chaos DURATION=60 SEED=n`; `make test` runs a
//! short one. Environment: DKV_CHAOS_SECONDS, DKV_CHAOS_SEED, DKV_CHAOS_TAG.

use dkv::history::{History, KvOp, Ret};
use dkv::types::Role;
use dkv::{Client, ClientOptions, Error};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NODES: usize = 5;
const PORT: u16 = 7000;
const KEYS: usize = 5;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The child gets SIGKILL if this test process dies without cleaning up.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn must(args: &[&str]) {
    assert!(sh(args), "command failed: {}", args.join(" "));
}

struct Net {
    tag: String,
    subnet: u8,
    /// Blackhole routes we added: (namespace, destination).
    holes: Vec<(String, String)>,
    netem: Vec<String>,
}

impl Net {
    fn ns(&self, i: usize) -> String {
        if i == 0 {
            format!("dkv{}s", self.tag)
        } else {
            format!("dkv{}n{i}", self.tag)
        }
    }
    fn ip(&self, i: usize) -> String {
        // 0 = server, 1..=NODES = nodes; 198.18.0.0/15 is the benchmarking range.
        format!("198.18.{}.{}", self.subnet, if i == 0 { 100 } else { i })
    }
    fn bridge(&self) -> String {
        format!("dkv{}b", self.tag)
    }

    fn setup(tag: &str, subnet: u8) -> Net {
        let net = Net {
            tag: tag.to_string(),
            subnet,
            holes: Vec::new(),
            netem: Vec::new(),
        };
        let br = net.bridge();
        must(&["ip", "link", "add", &br, "type", "bridge"]);
        must(&[
            "ip",
            "addr",
            "add",
            &format!("198.18.{subnet}.254/24"),
            "dev",
            &br,
        ]);
        must(&["ip", "link", "set", &br, "up"]);
        for i in 0..=NODES {
            let ns = net.ns(i);
            let veth = format!("dkv{}v{i}", net.tag);
            let peer = format!("dkv{}p{i}", net.tag);
            must(&["ip", "netns", "add", &ns]);
            must(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", &peer,
            ]);
            must(&["ip", "link", "set", &peer, "netns", &ns]);
            must(&["ip", "link", "set", &veth, "master", &br]);
            must(&["ip", "link", "set", &veth, "up"]);
            must(&[
                "ip", "netns", "exec", &ns, "ip", "link", "set", &peer, "name", "eth0",
            ]);
            must(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "ip",
                "addr",
                "add",
                &format!("{}/24", net.ip(i)),
                "dev",
                "eth0",
            ]);
            must(&[
                "ip", "netns", "exec", &ns, "ip", "link", "set", "eth0", "up",
            ]);
            must(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        }
        net
    }

    fn block(&mut self, from: usize, to: usize) {
        let (ns, dst) = (self.ns(from), format!("{}/32", self.ip(to)));
        if sh(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "ip",
            "route",
            "add",
            "blackhole",
            &dst,
        ]) {
            self.holes.push((ns, dst));
        }
    }

    fn cut(&mut self, a: usize, b: usize) {
        self.block(a, b);
        self.block(b, a);
    }

    fn netem(&mut self, i: usize, spec: &str) {
        let ns = self.ns(i);
        let mut args = vec![
            "ip", "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "eth0", "root", "netem",
        ];
        args.extend(spec.split_whitespace());
        if sh(&args) {
            self.netem.push(ns);
        }
    }

    fn heal(&mut self) {
        for (ns, dst) in self.holes.drain(..) {
            sh(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "ip",
                "route",
                "del",
                "blackhole",
                &dst,
            ]);
        }
        for ns in self.netem.drain(..) {
            sh(&[
                "ip", "netns", "exec", &ns, "tc", "qdisc", "del", "dev", "eth0", "root",
            ]);
        }
    }

    fn teardown(&mut self) {
        for i in 0..=NODES {
            sh(&["ip", "netns", "del", &self.ns(i)]);
            sh(&["ip", "link", "del", &format!("dkv{}v{i}", self.tag)]);
        }
        sh(&["ip", "link", "del", &self.bridge()]);
    }
}

struct Cluster {
    net: Net,
    dir: PathBuf,
    config: PathBuf,
    server: Option<Child>,
    nodes: Vec<Option<Child>>,
    paused: Vec<bool>,
}

impl Cluster {
    fn server_addr(&self) -> String {
        format!("{}:{PORT}", self.net.ip(0))
    }

    /// Starts `bin args` inside host `i`'s namespace, logging to `log`.
    fn spawn_in(&self, i: usize, bin: &str, args: &[String], log: &str) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(log))
            .unwrap();
        let mut cmd = Command::new("ip");
        die_with_parent(&mut cmd);
        cmd.args(["netns", "exec", &self.net.ns(i), bin])
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn start_server(&mut self) {
        let args = [
            "-c".to_string(),
            self.config.display().to_string(),
            "--listen".into(),
            self.server_addr(),
            "--state-file".into(),
            self.dir.join("server-state.json").display().to_string(),
        ];
        let child = self.spawn_in(0, env!("CARGO_BIN_EXE_dkv-server"), &args, "server.log");
        self.server = Some(child);
    }

    fn start_node(&mut self, i: usize) {
        let args = [
            self.server_addr(),
            "-c".into(),
            self.config.display().to_string(),
            "--listen".into(),
            format!("{}:{PORT}", self.net.ip(i)),
            "--data-dir".into(),
            self.dir.join(format!("data{i}")).display().to_string(),
        ];
        let child = self.spawn_in(
            i,
            env!("CARGO_BIN_EXE_dkv-node"),
            &args,
            &format!("node{i}.log"),
        );
        self.nodes[i - 1] = Some(child);
        self.paused[i - 1] = false;
    }

    fn kill_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i - 1].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&mut self, i: usize, sig: i32) {
        if let Some(c) = &self.nodes[i - 1] {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(c.id() as i32, sig) };
            self.paused[i - 1] = sig == libc::SIGSTOP;
        }
    }

    fn coordinator(&self) -> Option<usize> {
        let c = Client::connect(&self.server_addr()).ok()?;
        let v = c.cluster_view().ok()?;
        let id = v.coordinator?;
        let m = v.member(id)?;
        (1..=NODES).find(|&i| m.data_addr == format!("{}:{PORT}", self.net.ip(i)))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 1..=NODES {
            self.signal(i, libc::SIGCONT);
            self.kill_node(i);
        }
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        self.net.heal();
        self.net.teardown();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("chaos logs kept in {}", self.dir.display());
        }
    }
}

#[derive(Default)]
struct Log {
    history: History,
    successes: Vec<Instant>,
    ok: u64,
    unknown: u64,
    failed: u64,
}

fn client_loop(server: String, id: u64, stop: Arc<AtomicBool>, log: Arc<Mutex<Log>>, seed: u64) {
    let mut rng = Rng(seed ^ id.wrapping_mul(0xA24B_AED4_963E_E407));
    let opts = ClientOptions {
        op_timeout: Duration::from_secs(3),
        io_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let mut thread = id;
    let mut next_value = id << 32;
    let mut client: Option<Client> = None;
    while !stop.load(Ordering::Acquire) {
        if client.is_none() {
            client = Client::with_options(&server, opts.clone()).ok();
            if client.is_none() {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        }
        let c = client.as_mut().unwrap();
        let key = format!("k{}", rng.below(KEYS as u64));
        let op = match rng.below(10) {
            0..=4 => KvOp::Read(key.clone()),
            5..=8 => {
                next_value += 1;
                KvOp::Write(key.clone(), next_value)
            }
            _ => KvOp::Delete(key.clone()),
        };
        let start = Instant::now();
        let h = log
            .lock()
            .unwrap()
            .history
            .invoke(thread, op.clone(), start);
        let res: Result<Ret, Error> = match &op {
            KvOp::Read(k) => c
                .get(k.as_bytes())
                .map(|v| Ret::Value(v.map(|b| String::from_utf8(b).unwrap().parse().unwrap()))),
            KvOp::Write(k, v) => c
                .put(k.as_bytes(), v.to_string().as_bytes())
                .map(|()| Ret::Ok),
            KvOp::Delete(k) => c.delete(k.as_bytes()).map(Ret::Deleted),
        };
        let end = Instant::now();
        // Pace the clients so the history stays small enough to check.
        std::thread::sleep(Duration::from_millis(20));
        let mut l = log.lock().unwrap();
        match res {
            Ok(r) => {
                l.history.ret(h, r, end);
                l.successes.push(end);
                l.ok += 1;
            }
            Err(Error::Indeterminate(_)) => {
                l.unknown += 1;
                thread += 1_000; // this op stays in flight forever
            }
            Err(_) if matches!(op, KvOp::Read(_)) => {
                l.history.cancel(h);
                l.failed += 1;
            }
            Err(Error::Unavailable(_) | Error::NotEnoughReplicas(_)) => {
                // Surely not applied: the client never got a write through.
                l.history.cancel(h);
                l.failed += 1;
            }
            Err(_) => {
                l.unknown += 1;
                thread += 1_000;
            }
        }
    }
}

#[test]
fn chaos_history_is_linearizable_and_nothing_acknowledged_is_lost() {
    if unsafe { libc::geteuid() } != 0 || !sh(&["ip", "netns", "list"]) {
        eprintln!("SKIPPED: chaos needs root and ip netns (CI runs as root)");
        return;
    }
    let seconds: u64 = std::env::var("DKV_CHAOS_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let seed: u64 = std::env::var("DKV_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::process::id() as u64);
    let tag = std::env::var("DKV_CHAOS_TAG")
        .unwrap_or_else(|_| format!("{}", std::process::id() % 10000));
    let subnet = (10 + (tag.parse::<u64>().unwrap_or(0) % 240)) as u8;
    println!("chaos: seed {seed}, {seconds} s, namespaces dkv{tag}*");
    let dir = std::env::temp_dir().join(format!("dkv-chaos-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The cluster runs with a secret, so every beacon and replication frame
    // under these faults goes through the authenticated path.
    let secret = dir.join("cluster.secret");
    std::fs::write(&secret, format!("chaos-secret-{seed:016x}")).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "server-ip-port": "127.0.0.1:12345",
            "cluster-secret-file": secret,
            "node-settings": {},
        })
        .to_string(),
    )
    .unwrap();
    let mut c = Cluster {
        net: Net::setup(&tag, subnet),
        dir,
        config,
        server: None,
        nodes: (0..NODES).map(|_| None).collect(),
        paused: vec![false; NODES],
    };
    c.start_server();
    let ready = |c: &Cluster| Client::connect(&c.server_addr()).is_ok();
    let t0 = Instant::now();
    while !ready(&c) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "server did not come up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in 1..=NODES {
        c.start_node(i);
    }
    let in_sync = |c: &Cluster, n: usize| {
        Client::connect(&c.server_addr())
            .and_then(|cl| cl.cluster_view())
            .is_ok_and(|v| v.isr.len() >= n)
    };
    while !in_sync(&c, NODES) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "cluster did not form"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let epoch0 = Client::connect(&c.server_addr())
        .unwrap()
        .cluster_view()
        .unwrap()
        .epoch;

    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Log::default()));
    let clients: Vec<_> = (0..4u64)
        .map(|id| {
            let (server, stop, log) = (c.server_addr(), stop.clone(), log.clone());
            std::thread::spawn(move || client_loop(server, id, stop, log, seed))
        })
        .collect();

    let mut rng = Rng(seed);
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut fault_times: Vec<(Instant, &'static str)> = Vec::new();
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    while Instant::now() < end {
        let began = Instant::now();
        let kind = match rng.below(8) {
            0 => {
                let any = 1 + rng.below(NODES as u64) as usize;
                let i = if rng.below(2) == 0 {
                    c.coordinator().unwrap_or(any)
                } else {
                    any
                };
                c.kill_node(i);
                std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
                c.start_node(i);
                "kill -9 + restart"
            }
            1 => {
                let i = 1 + rng.below(NODES as u64) as usize;
                c.signal(i, libc::SIGSTOP);
                std::thread::sleep(Duration::from_millis(300 + rng.below(1500)));
                c.signal(i, libc::SIGCONT);
                "SIGSTOP/SIGCONT"
            }
            2 => {
                if let Some(k) = c.coordinator() {
                    for j in 1..=NODES {
                        if j != k {
                            c.net.cut(k, j);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
                c.net.heal();
                "isolate coordinator"
            }
            3 => {
                for a in 1..=2 {
                    for b in 3..=NODES {
                        c.net.cut(a, b);
                    }
                }
                std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
                c.net.heal();
                "split halves"
            }
            4 => {
                let i = 1 + rng.below(NODES as u64) as usize;
                c.net.cut(i, 0);
                std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
                c.net.heal();
                "cut node from server"
            }
            5 => {
                let i = 1 + rng.below(NODES as u64) as usize;
                c.net.netem(i, "loss 20% delay 20ms 10ms");
                std::thread::sleep(Duration::from_millis(1000 + rng.below(2000)));
                c.net.heal();
                "netem loss+delay"
            }
            6 => {
                if let Some(mut s) = c.server.take() {
                    let _ = s.kill();
                    let _ = s.wait();
                }
                std::thread::sleep(Duration::from_millis(200 + rng.below(1000)));
                c.start_server();
                "server restart"
            }
            _ => {
                std::thread::sleep(Duration::from_millis(500));
                "quiet"
            }
        };
        fault_times.push((began, kind));
        *faults.entry(kind).or_default() += 1;
        std::thread::sleep(Duration::from_millis(200 + rng.below(800)));
    }
    // Heal everything; let clients run briefly on a healthy cluster.
    c.net.heal();
    for i in 1..=NODES {
        c.signal(i, libc::SIGCONT);
        if c.nodes[i - 1].is_none() {
            c.start_node(i);
        }
    }
    let healed = Instant::now();
    while !in_sync(&c, NODES) && healed.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Release);
    for h in clients {
        h.join().unwrap();
    }

    // Final reads of every key join the history.
    let mut log = Arc::try_unwrap(log).ok().unwrap().into_inner().unwrap();
    let mut cl = Client::connect(&c.server_addr()).unwrap();
    for k in 0..KEYS {
        let key = format!("k{k}");
        let at = Instant::now();
        let h = log.history.invoke(9_999_999, KvOp::Read(key.clone()), at);
        let v = cl.get(key.as_bytes()).expect("final read");
        let v = v.map(|b| String::from_utf8(b).unwrap().parse().unwrap());
        log.history.ret(h, Ret::Value(v), Instant::now());
    }

    // Unavailability windows: longest gap between successful ops, per fault.
    log.successes.sort();
    let mut worst: BTreeMap<&str, Duration> = BTreeMap::new();
    for w in log.successes.windows(2) {
        let gap = w[1] - w[0];
        let kind = fault_times
            .iter()
            .rev()
            .find(|(t, _)| *t <= w[1])
            .map(|(_, k)| *k)
            .unwrap_or("none");
        let e = worst.entry(kind).or_default();
        *e = (*e).max(gap);
    }
    let view = cl.cluster_view().unwrap();
    println!(
        "chaos summary: {} ops ok, {} unknown, {} failed; faults {faults:?}; epochs {} -> {} ({} failovers)",
        log.ok,
        log.unknown,
        log.failed,
        epoch0,
        view.epoch,
        view.epoch - epoch0
    );
    println!(
        "longest unavailability by fault kind (ms): {:?}",
        worst
            .iter()
            .map(|(k, d)| (*k, d.as_millis()))
            .collect::<Vec<_>>()
    );

    // The checker searches recursively: give it a deep stack.
    let history = std::mem::take(&mut log.history);
    let checked = Instant::now();
    let lin = std::thread::Builder::new()
        .stack_size(1 << 30)
        .spawn(move || history.check())
        .unwrap()
        .join()
        .unwrap();
    println!(
        "linearizability checked in {} ms",
        checked.elapsed().as_millis()
    );
    // Every in-sync node converged to the same data.
    let mut digests = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        digests.clear();
        let v = cl.cluster_view().unwrap();
        for id in &v.isr {
            let m = v.member(*id).unwrap();
            if let Ok(st) = cl.node_status(&m.data_addr) {
                digests.insert(*id, (st.applied, st.digest, st.role));
            }
        }
        let distinct: std::collections::BTreeSet<_> =
            digests.values().map(|(a, d, _)| (*a, *d)).collect();
        if distinct.len() == 1 && digests.len() == v.isr.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "in-sync nodes did not converge: {digests:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let coordinators = digests
        .values()
        .filter(|(_, _, r)| *r == Role::Coordinator)
        .count();
    println!("anomalies: {}", if lin.is_ok() { 0 } else { 1 });
    lin.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    assert_eq!(coordinators, 1, "{digests:?}");
    assert!(log.ok > 0);
}
