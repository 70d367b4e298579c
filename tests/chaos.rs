//! Chaos against real processes, each in its own Linux network namespace
//! joined by veth pairs to a bridge, under a seeded nemesis while clients
//! record every call. Two topologies:
//!
//! * **standalone**: one server (with its state file) and five nodes; the
//!   nemesis kills (-9) and restarts nodes, pauses them (SIGSTOP/SIGCONT),
//!   partitions them, shapes their traffic with tc netem, and restarts the
//!   server;
//! * **HA**: three etcd members and two servers over them, each in its own
//!   namespace, and five nodes given both servers; the nemesis adds kill -9
//!   and restart of a server, pausing a server past a lease, kill -9 and
//!   restart of an etcd member (sometimes the leader), and cutting a server
//!   from the etcd members, never taking down more than one server or more
//!   than one etcd member at a time.
//!
//! At the end every fault is healed and the history must be linearizable
//! (final reads of every key join it, so a lost acknowledged write shows),
//! no two nodes may have been seen coordinating one epoch (nodes' and
//! servers' answers are polled during the run), the cluster must serve a
//! write again, and every in-sync node must hold the same data.
//!
//! Needs root (ip netns) and iproute2 (`ip`, `tc`), and etcd for HA; without
//! them the tests fail under CI and are skipped elsewhere, `make test` naming
//! them (`tests/common/skip.rs`). `make chaos DURATION=60 SEED=n` runs both;
//! `make test` runs a short one of each. Environment: DKV_CHAOS_SECONDS,
//! DKV_CHAOS_SEED, DKV_CHAOS_TAG. The logs of every process, the nemesis's
//! actions (`nemesis.log`) and the client history (`history.txt`) are kept
//! in the test's temp dir when a check fails.

// Only the prerequisite checks of the shared harness: this test has its own.
#[allow(dead_code)]
#[path = "common/skip.rs"]
mod skip;

use dkv::etcd::{Etcd, EtcdOptions};
use dkv::history::{History, KvOp, Ret};
use dkv::types::Role;
use dkv::{Client, ClientOptions, Error};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const NODES: usize = 5;
const PORT: u16 = 7000;
/// Keys per run: 5, and one more per 5 s beyond 25 s (at most 64). The
/// checker (a depth-first search per key, memory quadratic in the key's
/// ops, exponential in its unknown outcomes) stays fast when each key holds
/// a few hundred ops; a 180 s run on 5 keys ran it out of memory.
fn keys_for(seconds: u64) -> usize {
    (seconds / 5).clamp(5, 64) as usize
}
/// HA topology: servers and etcd members.
const SERVERS_HA: usize = 2;
const ETCD_MEMBERS: usize = 3;

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

/// Wall-clock time as the processes' logs print it (env_logger, UTC, ms).
fn stamp() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let (secs, ms) = (d.as_secs(), d.subsec_millis());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
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

/// Hosts are numbered: 0 the standalone server, 1..=NODES the nodes, and
/// above NODES the HA registry's hosts (servers, then etcd members).
struct Net {
    /// Prefix of every namespace, link and bridge name (`dkv<tag>`, plus
    /// `x` for the HA topology, so both can run at once).
    prefix: String,
    subnet: u8,
    hosts: Vec<usize>,
    /// Blackhole routes we added: (namespace, destination).
    holes: Vec<(String, String)>,
    netem: Vec<String>,
}

impl Net {
    fn ns(&self, i: usize) -> String {
        match i {
            0 => format!("{}s", self.prefix),
            i if i <= NODES => format!("{}n{i}", self.prefix),
            i => format!("{}h{i}", self.prefix),
        }
    }
    fn ip(&self, i: usize) -> String {
        // 198.18.0.0/15 is the benchmarking range.
        let last = match i {
            0 => 100,
            i if i <= NODES => i,
            i => 100 + (i - NODES),
        };
        format!("198.18.{}.{last}", self.subnet)
    }
    fn bridge(&self) -> String {
        format!("{}b", self.prefix)
    }

    /// A /24 no interface on this machine uses yet, from `preferred` on
    /// (other chaos runs may be going on).
    fn free_subnet(preferred: u8) -> u8 {
        let out = Command::new("ip")
            .args(["-o", "addr", "show"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        (0..240u16)
            .map(|k| (10 + (u16::from(preferred) - 10 + k) % 240) as u8)
            .find(|s| !out.contains(&format!("198.18.{s}.")))
            .unwrap_or(preferred)
    }

    fn setup(prefix: &str, subnet: u8, hosts: Vec<usize>) -> Net {
        let net = Net {
            prefix: prefix.to_string(),
            subnet: Net::free_subnet(subnet),
            hosts,
            holes: Vec::new(),
            netem: Vec::new(),
        };
        let subnet = net.subnet;
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
        for &i in &net.hosts {
            let ns = net.ns(i);
            let veth = format!("{}v{i}", net.prefix);
            let peer = format!("{}p{i}", net.prefix);
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
        for &i in &self.hosts {
            sh(&["ip", "netns", "del", &self.ns(i)]);
            sh(&["ip", "link", "del", &format!("{}v{i}", self.prefix)]);
        }
        sh(&["ip", "link", "del", &self.bridge()]);
    }
}

/// A process we run in a namespace, and whether we stopped it.
#[derive(Default)]
struct Slot {
    child: Option<Child>,
    paused: bool,
    starts: u32,
}

impl Slot {
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused = false;
    }
    fn signal(&mut self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(c.id() as i32, sig) };
            self.paused = sig == libc::SIGSTOP;
        }
    }
}

struct Cluster {
    net: Net,
    dir: PathBuf,
    config: PathBuf,
    ha: bool,
    servers: Vec<Slot>,
    etcd: Vec<Slot>,
    nodes: Vec<Slot>,
    /// Asks etcd members about themselves (HA only).
    probe: Option<Etcd>,
    etcd_bin: PathBuf,
    nemesis_log: std::fs::File,
    /// Keep the test dir even without a panic.
    keep_logs: bool,
}

/// Short timeouts for the harness's own calls, so a paused process cannot
/// hold the nemesis up.
fn quick() -> ClientOptions {
    ClientOptions {
        op_timeout: Duration::from_secs(2),
        io_timeout: Duration::from_millis(500),
        ..Default::default()
    }
}

impl Cluster {
    fn server_host(&self, k: usize) -> usize {
        if self.ha {
            NODES + 1 + k
        } else {
            0
        }
    }
    fn etcd_host(&self, k: usize) -> usize {
        NODES + 1 + SERVERS_HA + k
    }
    fn server_addr(&self, k: usize) -> String {
        format!("{}:{PORT}", self.net.ip(self.server_host(k)))
    }
    /// Every server, comma-separated: what nodes and clients are given.
    fn server_list(&self) -> String {
        (0..self.servers.len())
            .map(|k| self.server_addr(k))
            .collect::<Vec<_>>()
            .join(",")
    }
    fn node_addr(&self, i: usize) -> String {
        format!("{}:{PORT}", self.net.ip(i))
    }
    fn etcd_url(&self, k: usize) -> String {
        format!("http://{}:2379", self.net.ip(self.etcd_host(k)))
    }
    fn etcd_peer_url(&self, k: usize) -> String {
        format!("http://{}:2380", self.net.ip(self.etcd_host(k)))
    }

    /// One line in nemesis.log, stamped like the processes' logs.
    fn note(&mut self, what: &str) {
        let _ = writeln!(self.nemesis_log, "{} {what}", stamp());
    }

    /// Starts `bin args` inside host `i`'s namespace, logging to `log`.
    fn spawn_in(&self, i: usize, bin: &Path, args: &[String], log: &str) -> Child {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(log))
            .unwrap();
        let _ = writeln!(log, "==== {} chaos harness: start", stamp());
        let mut cmd = Command::new("ip");
        die_with_parent(&mut cmd);
        cmd.args(["netns", "exec", &self.net.ns(i)])
            .arg(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn start_server(&mut self, k: usize) {
        let mut args = vec![
            "-c".to_string(),
            self.config.display().to_string(),
            "--listen".into(),
            self.server_addr(k),
        ];
        let log = if self.ha {
            let urls: Vec<String> = (0..ETCD_MEMBERS).map(|m| self.etcd_url(m)).collect();
            args.extend(["--etcd-endpoints".to_string(), urls.join(",")]);
            format!("server{}.log", k + 1)
        } else {
            args.extend([
                "--state-file".to_string(),
                self.dir.join("server-state.json").display().to_string(),
            ]);
            "server.log".to_string()
        };
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_dkv-server"));
        let child = self.spawn_in(self.server_host(k), &bin, &args, &log);
        let s = &mut self.servers[k];
        s.child = Some(child);
        s.paused = false;
        s.starts += 1;
    }

    fn start_etcd(&mut self, k: usize) {
        let cluster: Vec<String> = (0..ETCD_MEMBERS)
            .map(|m| format!("m{}={}", m + 1, self.etcd_peer_url(m)))
            .collect();
        let (url, peer) = (self.etcd_url(k), self.etcd_peer_url(k));
        let args: Vec<String> = [
            "--name",
            &format!("m{}", k + 1),
            "--data-dir",
            &self
                .dir
                .join(format!("etcd{}", k + 1))
                .display()
                .to_string(),
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &cluster.join(","),
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            &format!("dkv-chaos-{}", self.net.prefix),
            "--heartbeat-interval",
            "100",
            "--election-timeout",
            "1000",
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let child = self.spawn_in(
            self.etcd_host(k),
            &self.etcd_bin.clone(),
            &args,
            &format!("etcd{}.log", k + 1),
        );
        let e = &mut self.etcd[k];
        e.child = Some(child);
        e.starts += 1;
    }

    fn start_node(&mut self, i: usize) {
        let args = [
            self.server_list(),
            "-c".into(),
            self.config.display().to_string(),
            "--listen".into(),
            self.node_addr(i),
            "--data-dir".into(),
            self.dir.join(format!("data{i}")).display().to_string(),
        ];
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_dkv-node"));
        let child = self.spawn_in(i, &bin, &args, &format!("node{i}.log"));
        let n = &mut self.nodes[i - 1];
        n.child = Some(child);
        n.paused = false;
        n.starts += 1;
    }

    fn kill_node(&mut self, i: usize) {
        self.nodes[i - 1].kill();
    }

    fn signal(&mut self, i: usize, sig: i32) {
        self.nodes[i - 1].signal(sig);
    }

    /// The node (1..=NODES) the servers name coordinator.
    fn coordinator(&self) -> Option<usize> {
        let c = Client::with_options(&self.server_list(), quick()).ok()?;
        let v = c.cluster_view().ok()?;
        let id = v.coordinator?;
        let m = v.member(id)?;
        (1..=NODES).find(|&i| m.data_addr == self.node_addr(i))
    }

    /// The etcd member (0-based) every answering member follows.
    fn etcd_leader(&self) -> Option<usize> {
        let probe = self.probe.as_ref()?;
        let st: Vec<(usize, dkv::etcd::MemberStatus)> = (0..ETCD_MEMBERS)
            .filter(|&k| self.etcd[k].child.is_some())
            .filter_map(|k| probe.status(&self.etcd_url(k)).ok().map(|s| (k, s)))
            .collect();
        let lead = st
            .iter()
            .find(|(_, s)| s.leader != 0 && s.leader == s.member_id)?;
        st.iter()
            .all(|(_, s)| s.leader == lead.1.leader)
            .then_some(lead.0)
    }

    /// Why the registry is not whole yet: an etcd member that does not
    /// answer or follows another leader, or a server that does not answer.
    fn registry_trouble(&self) -> Option<String> {
        if let Some(probe) = &self.probe {
            let mut leaders = BTreeSet::new();
            let mut ids = BTreeSet::new();
            for k in 0..ETCD_MEMBERS {
                match probe.status(&self.etcd_url(k)) {
                    Ok(s) if s.leader != 0 => {
                        leaders.insert(s.leader);
                        ids.insert(s.member_id);
                    }
                    Ok(_) => return Some(format!("etcd m{} has no leader", k + 1)),
                    Err(e) => return Some(format!("etcd m{}: {e}", k + 1)),
                }
            }
            if leaders.len() != 1 || !ids.contains(leaders.first().unwrap()) {
                return Some(format!("etcd members disagree on the leader: {leaders:x?}"));
            }
        }
        for k in 0..self.servers.len() {
            if let Err(e) =
                Client::with_options(&self.server_addr(k), quick()).and_then(|c| c.cluster_view())
            {
                return Some(format!("server {}: {e}", self.server_addr(k)));
            }
        }
        None
    }

    /// Waits until every etcd member and every server answers, so the next
    /// fault never takes down a second one. Panics (keeping the logs) if
    /// the registry does not recover within `patience`.
    fn settle(&mut self, patience: Duration) {
        let t0 = Instant::now();
        loop {
            let Some(why) = self.registry_trouble() else {
                return;
            };
            if t0.elapsed() > patience {
                self.note(&format!("registry did not recover: {why}"));
                panic!("the registry did not recover within {patience:?}: {why}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for s in self
            .nodes
            .iter_mut()
            .chain(self.servers.iter_mut())
            .chain(self.etcd.iter_mut())
        {
            s.kill();
        }
        self.net.heal();
        self.net.teardown();
        if !std::thread::panicking() && !self.keep_logs {
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
    /// Every call, for history.txt: wall clock at invocation and return,
    /// client thread, op, outcome.
    calls: Vec<String>,
    ok: u64,
    acked_writes: u64,
    unknown: u64,
    failed: u64,
}

fn client_loop(
    server: String,
    id: u64,
    keys: usize,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Log>>,
    seed: u64,
) {
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
        let key = format!("k{}", rng.below(keys as u64));
        next_value += 1;
        let op = match rng.below(20) {
            0..=8 => KvOp::Read(key.clone()),
            9..=13 => KvOp::Write(key.clone(), next_value),
            14 => KvOp::WriteTtl(key.clone(), next_value, 200 + rng.below(1800)),
            15..=16 => KvOp::Incr(key.clone()),
            17 => KvOp::SetNx(key.clone(), next_value),
            _ => KvOp::Delete(key.clone()),
        };
        let (start, wall_start) = (Instant::now(), stamp());
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
            KvOp::WriteTtl(k, v, ms) => c
                .put_with_ttl(
                    k.as_bytes(),
                    v.to_string().as_bytes(),
                    Duration::from_millis(*ms),
                )
                .map(|()| Ret::Ok),
            KvOp::Incr(k) => c
                .incr_by(k.as_bytes(), 1)
                .map(|n| Ret::Value(Some(n as u64))),
            KvOp::SetNx(k, v) => c
                .compare_and_set(k.as_bytes(), None, Some(v.to_string().as_bytes()))
                .map(Ret::Applied),
        };
        let end = Instant::now();
        let line = format!(
            "{wall_start} {} t{thread} {op:?} -> {}",
            stamp(),
            match &res {
                Ok(r) => format!("{r:?}"),
                Err(e) => format!("error: {e}"),
            }
        );
        // Pace the clients so the history stays small enough to check.
        std::thread::sleep(Duration::from_millis(20));
        let mut l = log.lock().unwrap();
        l.calls.push(line);
        match res {
            Ok(r) => {
                l.history.ret(h, r, end);
                l.successes.push(end);
                l.ok += 1;
                if !matches!(op, KvOp::Read(_)) {
                    l.acked_writes += 1;
                }
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

/// Who was seen coordinating which epoch: nodes that answered a status
/// call as coordinator, and the coordinator the servers' views named.
#[derive(Default)]
struct Observed {
    samples: u64,
    /// (epoch, node id) -> first seen (wall clock) and by whom.
    nodes: BTreeMap<(u64, u64), String>,
    views: BTreeMap<(u64, u64), String>,
}

impl Observed {
    /// Epochs with more than one coordinator in `seen`, with the sightings.
    fn conflicts(seen: &BTreeMap<(u64, u64), String>) -> Vec<String> {
        let mut by_epoch: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for ((e, id), first) in seen {
            by_epoch
                .entry(*e)
                .or_default()
                .push(format!("node {id} (first {first})"));
        }
        by_epoch
            .into_iter()
            .filter(|(_, v)| v.len() > 1)
            .map(|(e, v)| format!("epoch {e}: {}", v.join(", ")))
            .collect()
    }
}

/// Polls every node's status and every server's view until `stop`.
fn start_monitor(
    c: &Cluster,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Observed>>,
) -> Vec<std::thread::JoinHandle<()>> {
    let opts = ClientOptions {
        op_timeout: Duration::from_millis(600),
        io_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let mut threads = Vec::new();
    for i in 1..=NODES {
        let client = Client::with_options(&c.server_list(), opts.clone()).expect("a server");
        let (addr, stop, seen) = (c.node_addr(i), stop.clone(), seen.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                if let Ok(st) = client.node_status(&addr) {
                    let mut s = seen.lock().unwrap();
                    s.samples += 1;
                    if st.role == Role::Coordinator {
                        s.nodes
                            .entry((st.epoch, st.node_id))
                            .or_insert_with(|| format!("{} from node{i}", stamp()));
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }));
    }
    for k in 0..c.servers.len() {
        let client = Client::with_options(&c.server_addr(k), opts.clone()).expect("the server");
        let (stop, seen) = (stop.clone(), seen.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                if let Ok(v) = client.cluster_view() {
                    let mut s = seen.lock().unwrap();
                    s.samples += 1;
                    if let Some(id) = v.coordinator {
                        s.views
                            .entry((v.epoch, id))
                            .or_insert_with(|| format!("{} from server{}", stamp(), k + 1));
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }));
    }
    threads
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    KillNode,
    PauseNode,
    IsolateCoordinator,
    SplitHalves,
    CutNodeFromServer,
    Netem,
    /// Standalone: the only server is killed and restarted.
    ServerRestart,
    KillServer,
    PauseServer,
    KillEtcd,
    CutServerFromEtcd,
    KillCoordinatorAndEtcdLeader,
    KillCoordinatorPauseServer,
    Quiet,
}

/// The standalone list keeps its order, so old seeds replay the same schedule.
const STANDALONE_FAULTS: &[Fault] = &[
    Fault::KillNode,
    Fault::PauseNode,
    Fault::IsolateCoordinator,
    Fault::SplitHalves,
    Fault::CutNodeFromServer,
    Fault::Netem,
    Fault::ServerRestart,
    Fault::Quiet,
];

const HA_FAULTS: &[Fault] = &[
    Fault::KillNode,
    Fault::PauseNode,
    Fault::IsolateCoordinator,
    Fault::SplitHalves,
    Fault::CutNodeFromServer,
    Fault::Netem,
    Fault::KillServer,
    Fault::PauseServer,
    Fault::KillEtcd,
    Fault::CutServerFromEtcd,
    Fault::KillCoordinatorAndEtcdLeader,
    Fault::KillCoordinatorPauseServer,
    Fault::Quiet,
];

/// Runs one fault to its end (healed, restarted); returns its name.
fn inject(c: &mut Cluster, rng: &mut Rng, fault: Fault) -> &'static str {
    let servers = c.servers.len() as u64;
    match fault {
        Fault::KillNode => {
            let any = 1 + rng.below(NODES as u64) as usize;
            let i = if rng.below(2) == 0 {
                c.coordinator().unwrap_or(any)
            } else {
                any
            };
            c.note(&format!("kill -9 node{i}"));
            c.kill_node(i);
            std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
            c.note(&format!("restart node{i}"));
            c.start_node(i);
            "kill -9 + restart"
        }
        Fault::PauseNode => {
            let i = 1 + rng.below(NODES as u64) as usize;
            c.note(&format!("SIGSTOP node{i}"));
            c.signal(i, libc::SIGSTOP);
            std::thread::sleep(Duration::from_millis(300 + rng.below(1500)));
            c.note(&format!("SIGCONT node{i}"));
            c.signal(i, libc::SIGCONT);
            "SIGSTOP/SIGCONT"
        }
        Fault::IsolateCoordinator => {
            if let Some(k) = c.coordinator() {
                c.note(&format!("isolate coordinator node{k} from the nodes"));
                for j in 1..=NODES {
                    if j != k {
                        c.net.cut(k, j);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
            c.note("heal");
            c.net.heal();
            "isolate coordinator"
        }
        Fault::SplitHalves => {
            c.note("split nodes 1-2 | 3-5");
            for a in 1..=2 {
                for b in 3..=NODES {
                    c.net.cut(a, b);
                }
            }
            std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
            c.note("heal");
            c.net.heal();
            "split halves"
        }
        Fault::CutNodeFromServer => {
            let i = 1 + rng.below(NODES as u64) as usize;
            let name = if c.ha && rng.below(2) == 0 {
                c.note(&format!("cut node{i} from both servers"));
                for k in 0..c.servers.len() {
                    c.net.cut(i, c.server_host(k));
                }
                "cut node from both servers"
            } else {
                let k = if c.ha { rng.below(servers) as usize } else { 0 };
                c.note(&format!("cut node{i} from server{}", k + 1));
                c.net.cut(i, c.server_host(k));
                "cut node from server"
            };
            std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
            c.note("heal");
            c.net.heal();
            name
        }
        Fault::Netem => {
            let i = 1 + rng.below(NODES as u64) as usize;
            // HA: a third of the time a registry host (server or etcd member).
            let (host, name) = if c.ha && rng.below(3) == 0 {
                let r = rng.below(servers + ETCD_MEMBERS as u64) as usize;
                if r < c.servers.len() {
                    (c.server_host(r), format!("server{}", r + 1))
                } else {
                    let m = r - c.servers.len();
                    (c.etcd_host(m), format!("etcd m{}", m + 1))
                }
            } else {
                (i, format!("node{i}"))
            };
            c.note(&format!("netem loss 20% delay 20ms on {name}"));
            c.net.netem(host, "loss 20% delay 20ms 10ms");
            std::thread::sleep(Duration::from_millis(1000 + rng.below(2000)));
            c.note("heal");
            c.net.heal();
            if host > NODES {
                "netem loss+delay (registry host)"
            } else {
                "netem loss+delay"
            }
        }
        Fault::ServerRestart => {
            c.note("kill -9 server");
            c.servers[0].kill();
            std::thread::sleep(Duration::from_millis(200 + rng.below(1000)));
            c.note("restart server");
            c.start_server(0);
            "server restart"
        }
        Fault::KillServer => {
            let k = rng.below(servers) as usize;
            c.note(&format!("kill -9 server{}", k + 1));
            c.servers[k].kill();
            std::thread::sleep(Duration::from_millis(200 + rng.below(1300)));
            c.note(&format!("restart server{}", k + 1));
            c.start_server(k);
            "kill -9 server + restart"
        }
        Fault::PauseServer => {
            let k = rng.below(servers) as usize;
            c.note(&format!("SIGSTOP server{}", k + 1));
            c.servers[k].signal(libc::SIGSTOP);
            std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
            c.note(&format!("SIGCONT server{}", k + 1));
            c.servers[k].signal(libc::SIGCONT);
            "SIGSTOP/SIGCONT server"
        }
        Fault::KillEtcd => {
            let leader = c.etcd_leader();
            let want_leader = rng.below(2) == 0;
            let pick = rng.below(ETCD_MEMBERS as u64) as usize;
            let (m, name) = match leader {
                Some(l) if want_leader => (l, "kill -9 etcd leader + restart"),
                Some(l) => {
                    let f = if pick == l {
                        (pick + 1) % ETCD_MEMBERS
                    } else {
                        pick
                    };
                    (f, "kill -9 etcd follower + restart")
                }
                None => (pick, "kill -9 etcd member + restart"),
            };
            c.note(&format!(
                "kill -9 etcd m{} (leader: {:?})",
                m + 1,
                leader.map(|l| format!("m{}", l + 1))
            ));
            c.etcd[m].kill();
            std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
            c.note(&format!("restart etcd m{}", m + 1));
            c.start_etcd(m);
            name
        }
        Fault::CutServerFromEtcd => {
            let k = rng.below(servers) as usize;
            let all = rng.below(2) == 0;
            let spared = rng.below(ETCD_MEMBERS as u64) as usize;
            let cut: Vec<usize> = (0..ETCD_MEMBERS).filter(|&m| all || m != spared).collect();
            c.note(&format!(
                "cut server{} from etcd {:?}",
                k + 1,
                cut.iter()
                    .map(|m| format!("m{}", m + 1))
                    .collect::<Vec<_>>()
            ));
            for m in cut {
                c.net.cut(c.server_host(k), c.etcd_host(m));
            }
            std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
            c.note("heal");
            c.net.heal();
            if all {
                "cut server from etcd"
            } else {
                "cut server from 2 etcd members"
            }
        }
        Fault::KillCoordinatorAndEtcdLeader => {
            let coord = c.coordinator();
            let leader = c.etcd_leader();
            c.note(&format!(
                "kill -9 coordinator {:?} and etcd leader {:?}",
                coord.map(|i| format!("node{i}")),
                leader.map(|l| format!("m{}", l + 1))
            ));
            if let Some(i) = coord {
                c.kill_node(i);
            }
            if let Some(m) = leader {
                c.etcd[m].kill();
            }
            std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
            c.note("restart them");
            if let Some(i) = coord {
                c.start_node(i);
            }
            if let Some(m) = leader {
                c.start_etcd(m);
            }
            "kill -9 coordinator + etcd leader"
        }
        Fault::KillCoordinatorPauseServer => {
            let k = rng.below(servers) as usize;
            let coord = c.coordinator();
            c.note(&format!(
                "SIGSTOP server{}, kill -9 coordinator {:?}",
                k + 1,
                coord.map(|i| format!("node{i}"))
            ));
            c.servers[k].signal(libc::SIGSTOP);
            if let Some(i) = coord {
                c.kill_node(i);
            }
            std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
            c.note(&format!("restart the coordinator, SIGCONT server{}", k + 1));
            if let Some(i) = coord {
                c.start_node(i);
            }
            c.servers[k].signal(libc::SIGCONT);
            "kill -9 coordinator + SIGSTOP server"
        }
        Fault::Quiet => {
            std::thread::sleep(Duration::from_millis(500));
            "quiet"
        }
    }
}

fn run(ha: bool) {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !(skip::require(
        root,
        "chaos needs root",
        "run the tests as root, as CI does",
    ) && skip::require_tool("ip", "apt-get install iproute2")
        && skip::require_tool("tc", "apt-get install iproute2")
        && skip::require(
            sh(&["ip", "netns", "list"]),
            "`ip netns list` fails (network namespaces unavailable)",
            "run on a Linux host or VM where root may create network namespaces",
        )
        && (!ha || skip::require_tool("etcd", "apt-get install etcd-server")))
    {
        return;
    }
    let mode = if ha { "HA" } else { "standalone" };
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
    let tag_n = tag.parse::<u64>().unwrap_or(0);
    let (prefix, subnet) = if ha {
        (format!("dkv{tag}x"), (10 + (tag_n + 120) % 240) as u8)
    } else {
        (format!("dkv{tag}"), (10 + tag_n % 240) as u8)
    };
    let etcd_bin = if ha {
        skip::find_program("etcd", "/usr/bin/etcd").expect("checked above")
    } else {
        PathBuf::new()
    };
    let keys = keys_for(seconds);
    println!("chaos {mode}: seed {seed}, {seconds} s, {keys} keys, namespaces {prefix}*");
    let dir = std::env::temp_dir().join(if ha {
        format!("dkv-chaos-ha-{tag}")
    } else {
        format!("dkv-chaos-{tag}")
    });
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
    let hosts: Vec<usize> = if ha {
        (1..=NODES + SERVERS_HA + ETCD_MEMBERS).collect()
    } else {
        (0..=NODES).collect()
    };
    let nemesis_log = std::fs::File::create(dir.join("nemesis.log")).unwrap();
    let mut c = Cluster {
        net: Net::setup(&prefix, subnet, hosts),
        dir,
        config,
        ha,
        servers: (0..if ha { SERVERS_HA } else { 1 })
            .map(|_| Slot::default())
            .collect(),
        etcd: (0..if ha { ETCD_MEMBERS } else { 0 })
            .map(|_| Slot::default())
            .collect(),
        nodes: (0..NODES).map(|_| Slot::default()).collect(),
        probe: None,
        etcd_bin,
        nemesis_log,
        keep_logs: false,
    };
    let t0 = Instant::now();
    if ha {
        let urls: Vec<String> = (0..ETCD_MEMBERS).map(|m| c.etcd_url(m)).collect();
        let mut opts = EtcdOptions::new(urls);
        opts.timeout = Duration::from_millis(500);
        c.probe = Some(Etcd::new(opts).expect("etcd probe"));
        for m in 0..ETCD_MEMBERS {
            c.start_etcd(m);
        }
    }
    for k in 0..c.servers.len() {
        c.start_server(k);
    }
    c.settle(Duration::from_secs(30));
    for i in 1..=NODES {
        c.start_node(i);
    }
    let in_sync = |c: &Cluster, n: usize| {
        Client::with_options(&c.server_list(), quick())
            .and_then(|cl| cl.cluster_view())
            .is_ok_and(|v| v.isr.len() >= n)
    };
    while !in_sync(&c, NODES) {
        assert!(
            t0.elapsed() < Duration::from_secs(45),
            "cluster did not form"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    c.note(&format!("cluster formed; servers {}", c.server_list()));
    let epoch0 = Client::connect(&c.server_list())
        .unwrap()
        .cluster_view()
        .unwrap()
        .epoch;

    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Log::default()));
    let clients: Vec<_> = (0..4u64)
        .map(|id| {
            let (server, stop, log) = (c.server_list(), stop.clone(), log.clone());
            std::thread::spawn(move || client_loop(server, id, keys, stop, log, seed))
        })
        .collect();
    let seen = Arc::new(Mutex::new(Observed::default()));
    let monitors = start_monitor(&c, stop.clone(), seen.clone());

    let kinds = if ha { HA_FAULTS } else { STANDALONE_FAULTS };
    let mut rng = Rng(seed);
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut fault_times: Vec<(Instant, &'static str)> = Vec::new();
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    while Instant::now() < end {
        let began = Instant::now();
        let fault = kinds[rng.below(kinds.len() as u64) as usize];
        let kind = inject(&mut c, &mut rng, fault);
        if ha {
            // Never a second server or etcd member down: the next fault
            // waits until every one answers again.
            c.settle(Duration::from_secs(30));
        }
        fault_times.push((began, kind));
        *faults.entry(kind).or_default() += 1;
        std::thread::sleep(Duration::from_millis(200 + rng.below(800)));
    }
    // Heal everything; let clients run briefly on a healthy cluster.
    c.note("final heal");
    c.net.heal();
    for k in 0..c.etcd.len() {
        if c.etcd[k].child.is_none() {
            c.start_etcd(k);
        }
    }
    for k in 0..c.servers.len() {
        c.servers[k].signal(libc::SIGCONT);
        if c.servers[k].child.is_none() {
            c.start_server(k);
        }
    }
    for i in 1..=NODES {
        c.signal(i, libc::SIGCONT);
        if c.nodes[i - 1].child.is_none() {
            c.start_node(i);
        }
    }
    let healed = Instant::now();
    c.settle(Duration::from_secs(30));
    while !in_sync(&c, NODES) && healed.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    // The cluster serves writes again (by a fresh client, outside the
    // checked keys).
    let mut served_after_heal = None;
    let mut last_err = String::from("no try");
    while served_after_heal.is_none() && healed.elapsed() < Duration::from_secs(40) {
        match Client::with_options(&c.server_list(), quick())
            .and_then(|mut cl| cl.put(b"after-heal", b"1"))
        {
            Ok(()) => served_after_heal = Some(healed.elapsed()),
            Err(e) => {
                last_err = e.to_string();
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    c.note(&format!("served after heal: {served_after_heal:?}"));
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Release);
    for h in clients {
        h.join().unwrap();
    }
    for h in monitors {
        h.join().unwrap();
    }

    // Final reads of every key join the history.
    let mut log = Arc::try_unwrap(log).ok().unwrap().into_inner().unwrap();
    let mut cl = Client::connect(&c.server_list()).unwrap();
    for k in 0..keys {
        let key = format!("k{k}");
        let at = Instant::now();
        let h = log.history.invoke(9_999_999, KvOp::Read(key.clone()), at);
        let v = cl.get(key.as_bytes()).expect("final read");
        log.calls
            .push(format!("{} final read {key} -> {v:?}", stamp()));
        let v = v.map(|b| String::from_utf8(b).unwrap().parse().unwrap());
        log.history.ret(h, Ret::Value(v), Instant::now());
    }
    let _ = std::fs::write(c.dir.join("history.txt"), log.calls.join("\n") + "\n");

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
        "chaos {mode} summary: {} ops ok ({} acknowledged writes), {} unknown, {} failed; faults {faults:?}; epochs {} -> {} ({} failovers)",
        log.ok,
        log.acked_writes,
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
    let checker = std::thread::Builder::new()
        .stack_size(1 << 30)
        .spawn(move || history.check())
        .unwrap();
    // The search can blow up on a pathological history; it must not take
    // the machine's memory with it. Beyond the limits the run stops here,
    // keeping its logs (the Makefile's trap removes the namespaces).
    while !checker.is_finished() {
        let rss_gib = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or(0.0, |pages| (pages * 4096) as f64 / (1u64 << 30) as f64);
        if rss_gib > 4.0 || checked.elapsed() > Duration::from_secs(600) {
            eprintln!(
                "seed {seed}: the linearizability checker gave up after {} s at {rss_gib:.1} GiB; history in {}",
                checked.elapsed().as_secs(),
                c.dir.join("history.txt").display()
            );
            c.keep_logs = true;
            drop(c);
            std::process::exit(101);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let lin = checker.join().unwrap();
    println!(
        "linearizability checked in {} ms",
        checked.elapsed().as_millis()
    );
    let seen = seen.lock().unwrap();
    let node_conflicts = Observed::conflicts(&seen.nodes);
    let view_conflicts = Observed::conflicts(&seen.views);
    println!(
        "coordinators observed: {} status samples, {} (epoch, coordinator) pairs from nodes, {} from servers' views, {} epochs with two",
        seen.samples,
        seen.nodes.len(),
        seen.views.len(),
        node_conflicts.len() + view_conflicts.len()
    );
    match served_after_heal {
        Some(d) => println!("served a write {} ms after the final heal", d.as_millis()),
        None => println!("served no write after the final heal: {last_err}"),
    }
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
    println!(
        "anomalies: {}",
        usize::from(lin.is_err()) + node_conflicts.len() + view_conflicts.len()
    );
    lin.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    assert!(
        node_conflicts.is_empty(),
        "seed {seed}: two nodes coordinated one epoch: {node_conflicts:?}"
    );
    assert!(
        view_conflicts.is_empty(),
        "seed {seed}: servers named two coordinators for one epoch: {view_conflicts:?}"
    );
    assert!(
        served_after_heal.is_some(),
        "seed {seed}: no write served within 40 s of the final heal: {last_err}"
    );
    assert_eq!(coordinators, 1, "{digests:?}");
    assert!(log.ok > 0);
}

#[test]
fn chaos_history_is_linearizable_and_nothing_acknowledged_is_lost() {
    run(false);
}

#[test]
fn chaos_ha_history_is_linearizable_and_nothing_acknowledged_is_lost() {
    run(true);
}
