//! An HA registry for process tests: a 3-member etcd cluster, several
//! `dkv-server` processes sharing one registry in it (under a key prefix of
//! the test's own), and nodes started with the full server list.
//!
//! Servers listen on ephemeral loopback ports (native and Sentinel) and are
//! restarted on the same ports. Every process is killed when the cluster is
//! dropped, also when a test panics; the logs are then kept (the test
//! directory for servers and nodes, the etcd directory for the members).

#![allow(dead_code)]

use super::etcd::EtcdCluster;
use super::*;
use dkv::types::Role;
use dkv::wire::{ConnKind, ServerRequest, ServerResponse};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The HA tests' status-push interval (ms). Every lease renewal waits for
/// an etcd transaction, which fsyncs on a majority of members; on a 2-core
/// machine running other tests at once such a transaction was seen to take
/// more than the default etcd-timeout (150 ms), so that three pushes in a
/// row failed and the coordinator stepped down: a failover the tests did not
/// cause. These tests check what happens when a server or etcd fails, not
/// how short the lease can be, so they lengthen the path a renewal may take:
/// interval 150 ms (the default is 50), hence a lease of 750 ms and a node's
/// server call timeout of 300 ms, and etcd-timeout 250 ms below that. Every
/// other setting keeps its default.
pub const UPDATE_INTERVAL_MS: u64 = 150;
pub const ETCD_TIMEOUT_MS: u64 = 250;

/// The coordinator's lease as a server counts it: lease-timeout (5 x the
/// status-push interval) x (1 + clock-drift 0.05).
pub fn lease_at_server() -> Duration {
    Duration::from_millis(UPDATE_INTERVAL_MS * 5).mul_f64(1.05)
}

/// How long a server that started without a view keeps brand-new nodes from
/// founding a cluster: failure-timeout (5 x heartbeat 50 ms) + 2 x interval.
pub fn bootstrap_wait() -> Duration {
    Duration::from_millis(250 + 2 * UPDATE_INTERVAL_MS)
}

/// One `dkv-server` of the cluster; `proc` is `None` while it is killed.
pub struct HaServer {
    pub proc: Option<Proc>,
    /// Its native address (stays the same across restarts).
    pub addr: String,
    /// Its Sentinel (RESP) address.
    pub sentinel: String,
    starts: usize,
}

pub struct HaCluster {
    pub dir: PathBuf,
    pub config: PathBuf,
    /// The etcd key prefix of this cluster's registry.
    pub prefix: String,
    pub servers: Vec<HaServer>,
    pub nodes: Vec<Proc>,
    next_node_log: usize,
    // Dropped last: the servers are gone before etcd goes.
    pub etcd: EtcdCluster,
}

impl HaCluster {
    /// A 3-member etcd cluster, `servers` servers and `nodes` nodes (with
    /// the full server list, in server order), every node in sync.
    /// `settings` are node-settings overrides on top of the HA tests' own
    /// ([`UPDATE_INTERVAL_MS`]).
    pub fn start(name: &str, servers: usize, nodes: usize, settings: serde_json::Value) -> Self {
        let mut c = Self::start_servers(name, servers, settings);
        for _ in 0..nodes {
            c.add_node();
        }
        c.wait_for_isr(nodes);
        c
    }

    /// The etcd cluster and the servers, no node yet.
    pub fn start_servers(name: &str, servers: usize, settings: serde_json::Value) -> Self {
        assert!(servers >= 1);
        let etcd = EtcdCluster::start(3);
        let dir = temp_dir(name);
        let config = dir.join("config.json");
        let mut node_settings = serde_json::json!({
            "server-update-interval": UPDATE_INTERVAL_MS,
        });
        for (k, v) in settings.as_object().expect("settings are an object") {
            node_settings[k] = v.clone();
        }
        let cfg = serde_json::json!({
            "server-ip-port": "127.0.0.1:0",
            "etcd-timeout": ETCD_TIMEOUT_MS,
            "node-settings": node_settings,
        });
        std::fs::write(&config, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        // A prefix of the test's own: nothing it reads was written by
        // another test, even with a shared etcd.
        let prefix = format!(
            "/dkv-test/{name}-{}-{:x}/",
            std::process::id(),
            rand_u64() ^ Instant::now().elapsed().as_nanos() as u64
        );
        let mut c = HaCluster {
            dir,
            config,
            prefix,
            servers: Vec::new(),
            nodes: Vec::new(),
            next_node_log: 0,
            etcd,
        };
        for _ in 0..servers {
            let s = c.spawn_server("127.0.0.1:0", "127.0.0.1:0", c.servers.len(), 1);
            c.servers.push(s);
        }
        c
    }

    fn spawn_server(&self, listen: &str, sentinel: &str, i: usize, start: usize) -> HaServer {
        let endpoints = self.etcd.endpoints().join(",");
        let log = self.dir.join(format!("server-{i}.{start}.log"));
        let args = [
            "-c",
            self.config.to_str().unwrap(),
            "--listen",
            listen,
            "--sentinel-listen",
            sentinel,
            "--etcd-endpoints",
            &endpoints,
            "--etcd-prefix",
            &self.prefix,
        ];
        // A restart binds the ports it had; another process may hold one
        // for a moment (an outgoing connection's ephemeral port): retry.
        let mut tries = 0;
        let (child, line) = loop {
            match try_spawn(SERVER_BIN, &args, &log) {
                Ok(x) => break x,
                Err(why) if tries < 50 && why.contains("in use") => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(why) => panic!("server {i}: {why}"),
            }
        };
        // "dkv-server listening on ADDR sentinel ADDR"
        let words: Vec<&str> = line.split_whitespace().collect();
        assert!(
            words.len() == 6 && words[..3] == ["dkv-server", "listening", "on"],
            "unexpected server banner: {line}"
        );
        HaServer {
            proc: Some(Proc {
                child,
                args: args.iter().map(|s| s.to_string()).collect(),
                addr: words[3].to_string(),
                beacon_addr: String::new(),
                resp_addr: words[5].to_string(),
                metrics_addr: String::new(),
                id: i as u64,
                log,
            }),
            addr: words[3].to_string(),
            sentinel: words[5].to_string(),
            starts: start,
        }
    }

    /// Every server's address, in order: `h:p,h:p,...`.
    pub fn server_list(&self) -> String {
        self.list_of(&(0..self.servers.len()).collect::<Vec<_>>())
    }

    /// The addresses of the servers `order`, in that order.
    pub fn list_of(&self, order: &[usize]) -> String {
        let v: Vec<&str> = order
            .iter()
            .map(|&i| self.servers[i].addr.as_str())
            .collect();
        v.join(",")
    }

    /// Every server's Sentinel address, in order.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.sentinel.clone()).collect()
    }

    pub fn server_alive(&self, i: usize) -> bool {
        self.servers[i].proc.is_some()
    }

    pub fn live_servers(&self) -> Vec<usize> {
        (0..self.servers.len())
            .filter(|&i| self.server_alive(i))
            .collect()
    }

    pub fn server_pid(&self, i: usize) -> i32 {
        self.servers[i].proc.as_ref().expect("server running").pid()
    }

    /// SIGKILLs server `i` (and reaps it).
    pub fn kill_server(&mut self, i: usize) {
        if let Some(mut p) = self.servers[i].proc.take() {
            p.kill();
        }
    }

    /// Kills server `i` if it runs and starts it again on its ports.
    pub fn restart_server(&mut self, i: usize) {
        self.kill_server(i);
        let (addr, sentinel) = (
            self.servers[i].addr.clone(),
            self.servers[i].sentinel.clone(),
        );
        let start = self.servers[i].starts + 1;
        let s = self.spawn_server(&addr, &sentinel, i, start);
        assert_eq!((&s.addr, &s.sentinel), (&addr, &sentinel));
        self.servers[i] = s;
    }

    /// SIGSTOPs server `i` (returns once the kernel shows it stopped).
    pub fn stop_server(&self, i: usize) {
        stop_process(self.server_pid(i));
    }

    /// SIGCONTs server `i`.
    pub fn cont_server(&self, i: usize) {
        signal(self.server_pid(i), libc::SIGCONT);
    }

    /// Starts one more node with the full server list.
    pub fn add_node(&mut self) -> usize {
        let list = self.server_list();
        self.add_node_to(&list)
    }

    /// Starts one more node whose server argument is `servers`.
    pub fn add_node_to(&mut self, servers: &str) -> usize {
        let p = spawn_node_proc(self.node_args(servers), self.next_node_log());
        self.nodes.push(p);
        self.nodes.len() - 1
    }

    /// Arguments for a node with server list `servers`, for callers that
    /// start several nodes at once ([`start_node`]).
    pub fn node_args(&self, servers: &str) -> Vec<String> {
        vec![
            servers.to_string(),
            "-c".into(),
            self.config.to_str().unwrap().into(),
        ]
    }

    pub fn next_node_log(&mut self) -> PathBuf {
        self.next_node_log += 1;
        self.dir.join(format!("node-{}.log", self.next_node_log))
    }

    /// The view server `i` holds (asked of it alone).
    pub fn view_from(&self, i: usize) -> dkv::Result<ClusterView> {
        match server_call(
            &self.servers[i].addr,
            ConnKind::Client,
            &ServerRequest::View,
        )? {
            ServerResponse::View(v) => Ok(v),
            other => Err(dkv::Error::Protocol(format!("{other:?}"))),
        }
    }

    /// The view of the first live server that answers.
    pub fn view(&self) -> ClusterView {
        let mut last = None;
        for i in self.live_servers() {
            match self.view_from(i) {
                Ok(v) => return v,
                Err(e) => last = Some(e),
            }
        }
        panic!("no server gives a view: {last:?}")
    }

    /// Node `i`'s own status.
    pub fn status(&self, i: usize) -> dkv::Result<NodeStatus> {
        node_status(&self.nodes[i].addr)
    }

    /// Every node's status, in node order.
    pub fn statuses(&self) -> Vec<dkv::Result<NodeStatus>> {
        (0..self.nodes.len()).map(|i| self.status(i)).collect()
    }

    /// Index of the node the servers name as coordinator.
    pub fn coordinator(&self) -> usize {
        let id = self.view().coordinator.expect("a coordinator");
        self.node_index(id)
    }

    pub fn node_index(&self, id: u64) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .unwrap_or_else(|| panic!("node {id} is not one of ours"))
    }

    /// Waits until a live server lists `n` in-sync members.
    pub fn wait_for_isr(&self, n: usize) {
        if wait_until_ok(|| (self.view().isr.len() == n).then_some(())).is_none() {
            panic!(
                "the in-sync set did not reach {n} members\n{}",
                self.describe()
            );
        }
    }

    /// Every server's view and every node's status, for failure messages.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for i in 0..self.servers.len() {
            s += &format!("server {i} ({}): ", self.servers[i].addr);
            s += &match self.view_from(i) {
                Ok(v) => format!(
                    "epoch {} coordinator {:?} isr {:?} members {:?}\n",
                    v.epoch,
                    v.coordinator,
                    v.isr,
                    v.members
                        .iter()
                        .map(|m| (m.node_id, m.data_addr.as_str(), m.role, m.in_sync))
                        .collect::<Vec<_>>()
                ),
                Err(e) => format!("{e}\n"),
            };
        }
        for (i, n) in self.nodes.iter().enumerate() {
            s += &match self.status(i) {
                Ok(st) => format!(
                    "node {} ({}): {:?} epoch {} coordinator {:?} last {:?}\n",
                    st.node_id, n.addr, st.role, st.epoch, st.coordinator, st.last
                ),
                Err(e) => format!("node {} ({}): {e}\n", n.id, n.addr),
            };
        }
        s
    }

    /// Waits until every live server's view is at `epoch` with coordinator
    /// `coordinator` (the cached views follow etcd).
    pub fn wait_views_agree(&self, epoch: u64, coordinator: u64) {
        let mut seen = Vec::new();
        let ok = wait_until_ok(|| {
            seen = self
                .live_servers()
                .into_iter()
                .map(|i| (i, self.view_from(i).map(|v| (v.epoch, v.coordinator))))
                .collect();
            seen.iter()
                .all(|(_, v)| matches!(v, Ok((e, Some(c))) if *e == epoch && *c == coordinator))
                .then_some(())
        });
        assert!(
            ok.is_some(),
            "servers' views did not settle on epoch {epoch} coordinator {coordinator}: {seen:?}"
        );
    }

    /// The servers node `i` holds an established TCP connection to (its
    /// server link keeps one open to the server it uses), read from /proc.
    pub fn servers_used_by(&self, i: usize) -> Vec<usize> {
        let pid = self.nodes[i].pid();
        let remotes = established_remote_ports(pid);
        (0..self.servers.len())
            .filter(|&s| {
                let port = self.servers[s].addr.rsplit_once(':').unwrap().1;
                remotes.contains(&port.parse::<u16>().unwrap())
            })
            .collect()
    }

    /// Waits until node `i` uses exactly one server, and returns it.
    pub fn server_used_by(&self, i: usize) -> usize {
        let mut seen = Vec::new();
        wait_until_ok(|| {
            seen = self.servers_used_by(i);
            (seen.len() == 1).then(|| seen[0])
        })
        .unwrap_or_else(|| panic!("node {i} uses servers {seen:?}, not exactly one"))
    }

    /// Starts a poller of every node's status (see [`CoordinatorWatch`]).
    pub fn watch_coordinators(&self) -> CoordinatorWatch {
        CoordinatorWatch::start(self.nodes.iter().map(|n| n.addr.clone()).collect())
    }
}

impl Drop for HaCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        for s in &mut self.servers {
            if let Some(p) = s.proc.as_mut() {
                // A stopped process dies of SIGKILL too.
                p.kill();
            }
        }
        if std::thread::panicking() {
            eprintln!("test logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// One request to the server at `addr` on a fresh connection of `kind`
/// (a `Member` connection for member-only requests).
pub fn server_call(addr: &str, kind: ConnKind, req: &ServerRequest) -> dkv::Result<ServerResponse> {
    let timeout = Duration::from_secs(3);
    match kind {
        ConnKind::Client => {
            let s = dkv::net::connect(addr, timeout)?;
            Ok(dkv::net::call::<_, ServerResponse>(
                &s,
                req,
                dkv::wire::MAX_SERVER_FRAME,
            )?)
        }
        kind => {
            let mut c = dkv::net::connect_peer(addr, kind, timeout, None, None)?;
            Ok(c.call::<_, ServerResponse>(req, dkv::wire::MAX_SERVER_FRAME)?)
        }
    }
}

/// Remote ports of the established IPv4 TCP connections of process `pid`.
fn established_remote_ports(pid: i32) -> HashSet<u16> {
    established_conns(pid).into_iter().map(|(_, r)| r).collect()
}

/// (local port, remote port) of every established IPv4 TCP connection of
/// process `pid`: its socket inodes (/proc/PID/fd) looked up in
/// /proc/PID/net/tcp.
pub fn established_conns(pid: i32) -> HashSet<(u16, u16)> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().to_string();
            l.strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .map(str::to_string)
        })
        .collect();
    let port = |a: &str| {
        a.rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() > 9 && f[3] == "01" && inodes.contains(f[9]) {
                Some((port(f[1])?, port(f[2])?))
            } else {
                None
            }
        })
        .collect()
}

/// Who acted as coordinator of which epoch, as the nodes said.
#[derive(Debug, Default)]
pub struct Claims {
    /// Epoch -> ids of the nodes that reported themselves its coordinator.
    pub coordinators: BTreeMap<u64, BTreeSet<u64>>,
    /// Every epoch any node reported.
    pub epochs: BTreeSet<u64>,
    /// Status answers received.
    pub answers: usize,
}

impl Claims {
    /// Rule 2: at most one coordinator per epoch.
    pub fn assert_one_coordinator_per_epoch(&self) {
        for (epoch, ids) in &self.coordinators {
            assert!(
                ids.len() <= 1,
                "nodes {ids:?} all acted as coordinator of epoch {epoch}"
            );
        }
        assert!(self.answers > 0, "the watch got no status answer at all");
    }
}

/// Polls every node's status (one kept-open connection per node, re-opened
/// after an error) until stopped, recording which node claimed to be the
/// coordinator of which epoch. A node that is down just gives no answer.
pub struct CoordinatorWatch {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Claims>>,
}

impl CoordinatorWatch {
    pub fn start(addrs: Vec<String>) -> CoordinatorWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut claims = Claims::default();
            let mut conns: Vec<Option<dkv::net::Stream>> = addrs.iter().map(|_| None).collect();
            while !flag.load(Ordering::Acquire) {
                for (addr, conn) in addrs.iter().zip(conns.iter_mut()) {
                    if conn.is_none() {
                        *conn = dkv::net::connect(addr, Duration::from_millis(500)).ok();
                    }
                    let Some(s) = conn.as_ref() else { continue };
                    match dkv::net::call::<_, Response>(s, &Request::Status, 1 << 20) {
                        Ok(Response::Status(st)) => {
                            claims.answers += 1;
                            claims.epochs.insert(st.epoch);
                            if st.role == Role::Coordinator {
                                claims
                                    .coordinators
                                    .entry(st.epoch)
                                    .or_default()
                                    .insert(st.node_id);
                            }
                        }
                        _ => *conn = None,
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            claims
        });
        CoordinatorWatch {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops polling and returns what the nodes said.
    pub fn stop(mut self) -> Claims {
        self.stop.store(true, Ordering::Release);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for CoordinatorWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// A RESP2 value, as far as Sentinel replies need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

/// Sends one command (as a RESP array of bulk strings) to `addr` on a new
/// connection and reads one reply.
pub fn resp_command(addr: &str, args: &[&str]) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req += &format!("${}\r\n{a}\r\n", a.len());
    }
    s.write_all(req.as_bytes())?;
    read_resp(&mut BufReader::new(s))
}

fn read_resp(r: &mut impl BufRead) -> std::io::Result<Resp> {
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line
        .strip_suffix("\r\n")
        .ok_or_else(|| bad(format!("RESP line without CRLF: {line:?}")))?;
    let (kind, rest) = line.split_at(1.min(line.len()));
    let num = || {
        rest.parse::<i64>()
            .map_err(|e| bad(format!("{line:?}: {e}")))
    };
    Ok(match kind {
        "+" => Resp::Simple(rest.to_string()),
        "-" => Resp::Error(rest.to_string()),
        ":" => Resp::Int(num()?),
        "$" => match num()? {
            n if n < 0 => Resp::Bulk(None),
            n => {
                let mut b = vec![0u8; n as usize + 2];
                r.read_exact(&mut b)?;
                b.truncate(n as usize);
                Resp::Bulk(Some(b))
            }
        },
        "*" => match num()? {
            n if n < 0 => Resp::Array(None),
            n => Resp::Array(Some(
                (0..n).map(|_| read_resp(r)).collect::<Result<_, _>>()?,
            )),
        },
        _ => return Err(bad(format!("not RESP: {line:?}"))),
    })
}

/// `SENTINEL sentinels <name>` at `addr`: the other sentinels it lists, as
/// "ip:port", sorted.
pub fn sentinel_peers(addr: &str, name: &str) -> std::io::Result<Vec<String>> {
    let reply = resp_command(addr, &["SENTINEL", "sentinels", name])?;
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let Resp::Array(Some(entries)) = reply else {
        return Err(bad(format!("SENTINEL sentinels answered {reply:?}")));
    };
    let mut peers = Vec::new();
    for e in entries {
        let Resp::Array(Some(fields)) = &e else {
            return Err(bad(format!("a sentinel entry is {e:?}")));
        };
        let text: Vec<String> = fields
            .iter()
            .map(|f| match f {
                Resp::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
                other => format!("{other:?}"),
            })
            .collect();
        let field = |k: &str| {
            text.chunks(2)
                .find(|kv| kv.len() == 2 && kv[0] == k)
                .map(|kv| kv[1].clone())
        };
        match (field("ip"), field("port")) {
            (Some(ip), Some(port)) => peers.push(format!("{ip}:{port}")),
            _ => return Err(bad(format!("a sentinel entry without ip/port: {text:?}"))),
        }
    }
    peers.sort();
    Ok(peers)
}
