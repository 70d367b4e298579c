//! Deterministic simulation of a whole cluster: the real sans-IO cores
//! (`ServerCore`, `NodeCore`), the real registry [`Arbiter`], log, store and
//! request handling, with a simulated clock and network, all driven by one
//! seeded RNG.
//!
//! The network delays, drops, duplicates and reorders beacons and server
//! calls, keeps replication streams and client connections FIFO (as TCP
//! does) but breaks them on crashes and partitions, and supports one-way
//! and partial partitions. Nodes crash and restart (with or without their
//! log), pause, and run on clocks whose rates differ within the configured
//! drift.
//!
//! The registry is `SimConfig::servers` servers, each an [`Arbiter`] with
//! its own core (built by [`crate::registry::new_core`], as the binary builds
//! it) over one modelled store ([`registry`]): with one server a
//! state-file-like store, with several an etcd-like shared one. Each server
//! is ticked every heartbeat / 2, as the runtime's ticker does. Server
//! faults: one server restarts with its state or without it (standalone);
//! servers are killed and restarted (rebuilt from the store), paused past a
//! lease, cut from the store, and the store goes down or turns slow (HA).
//!
//! Nodes and clients take the list of servers. The glue in
//! `Sim::call_server` and `Sim::register` mirrors the node's
//! `ServerLink` and registration (src/node/mod.rs) over `ServerList`
//! (src/servers.rs): a call goes to the current server; a failure (no
//! answer within the link's timeout, or an `Unavailable` answer) moves the
//! next call to the next server; a call whose server refused the connection
//! is retried at once on the next one. Clients walk the list from the server
//! that answered last, as `dkv::Client` does.
//!
//! After every event the simulator checks:
//!
//! 1. at most one node acts as coordinator for any epoch;
//! 2. every acknowledged write is in the log of every member of the in-sync
//!    set the store records (no acknowledged write can be lost);
//! 3. epochs never go down: at any server (until it loses its state), in
//!    the store, or at any node (across its restarts too, until a server
//!    lost its state: nodes do not persist the epochs they saw);
//! 4. at most one coordinator is ever committed to the store for an epoch
//!    (the recovery path may commit the same one again), and a grant goes to
//!    a member of the in-sync set it replaces.
//!
//! At the end it heals everything, lets the cluster settle, and checks the
//! client history for linearizability per key (`consistency_model`'s
//! `LinearizabilityTester`) and that every in-sync node holds the same data.
//! A failure names its seed; the same seed replays the same run.
//!
//! This file holds the configuration, the report, the simulator's state
//! (processes, messages, events) and the run loop. The rest, each an
//! `impl Sim` block: `delivery.rs` (datagrams, streams, delivery),
//! `nodes.rs` (node lifecycle, `NodeIo` for the executor, message
//! routing, write-ahead log writes), `streams.rs` (replication streams),
//! `servers.rs` (the registry servers and the node's server link),
//! `clients.rs`, `faults.rs` (fault injection and the final heal) and
//! `invariants.rs` (the checks); `net.rs` models the network, `disk.rs` a
//! data directory, `registry.rs` the registry's store.

mod clients;
mod delivery;
mod disk;
mod faults;
mod invariants;
mod net;
mod nodes;
mod registry;
mod servers;
mod streams;

use crate::config::NodeSettings;
use crate::core::node::{Call, NodeCore, Serving};
use crate::history::{History, KvOp};
use crate::log::ReplLog;
use crate::registry::Arbiter;
use crate::repl::{Feeder, Follower};
use crate::storage::FsyncPolicy;
use crate::store::Store;
use crate::types::{Epoch, LogPos, NodeId, Role};
use crate::wire::{FollowRequest, ReplMsg, Request, Response, ServerRequest, ServerResponse};
use disk::Disk;
use net::{Net, Rng};
use parking_lot::Mutex;
use registry::{InFlight, ModelStore, StoreStats};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Deliberate protocol bugs, to show the simulator catches them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// The coordinator acknowledges writes once it holds them itself.
    AckBeforeReplication,
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: usize,
    /// Registry servers: 1 is the standalone server over a state-file-like
    /// store; more share one etcd-like store (the HA schedules).
    pub servers: usize,
    /// Virtual time with faults and client load.
    pub duration: Duration,
    pub clients: usize,
    pub faults: bool,
    pub bug: Option<Bug>,
}

impl SimConfig {
    /// The standalone schedule: one server.
    pub fn new(seed: u64) -> Self {
        SimConfig {
            seed,
            nodes: 3,
            servers: 1,
            duration: Duration::from_secs(20),
            clients: 3,
            faults: true,
            bug: None,
        }
    }

    /// The HA schedule: three servers over one shared store.
    pub fn ha(seed: u64) -> Self {
        SimConfig {
            servers: 3,
            ..SimConfig::new(seed)
        }
    }

    /// What the seed loop runs: odd seeds HA, even seeds standalone.
    pub fn for_seed(seed: u64) -> Self {
        if seed % 2 == 1 {
            SimConfig::ha(seed)
        } else {
            SimConfig::new(seed)
        }
    }
}

#[derive(Debug, Default)]
pub struct SimReport {
    pub steps: u64,
    pub ops_ok: u64,
    pub ops_unknown: u64,
    /// Writes and deletes acknowledged to a client.
    pub acked_writes: u64,
    pub failovers: u64,
    pub faults: BTreeMap<&'static str, u64>,
    pub store: StoreStats,
    /// After the final heal and settle: `None` when the coordinator the
    /// store records acts as coordinator, else why not.
    pub unserved: Option<&'static str>,
    /// Writes and deletes acknowledged to the probing client after the
    /// final heal: service came back.
    pub acked_after_heal: u64,
    /// Hash of every event processed: equal for equal seeds.
    pub trace: u64,
}

type StreamId = u64;

#[derive(Debug)]
enum Msg {
    Beacon(crate::wire::Beacon),
    /// One server call of a node's link; `link` names it at the node.
    ServerCall {
        link: u64,
        req: ServerRequest,
    },
    /// `refused`: the server's port refused the connection (nothing sent).
    ServerReply {
        link: u64,
        reply: Result<ServerResponse, String>,
        refused: bool,
    },
    /// The node's link gave up waiting for call `link`.
    LinkTimeout {
        link: u64,
    },
    Open {
        stream: StreamId,
        req: FollowRequest,
    },
    Data {
        stream: StreamId,
        msg: ReplMsg,
    },
    Ack {
        stream: StreamId,
        last: LogPos,
        /// The replica is shutting down (see `wire::ReplAck::leaving`).
        leaving: bool,
    },
    Closed {
        stream: StreamId,
        refused: bool,
    },
    /// `attempt` tags the request like a connection would: a client drops
    /// its connection after a timeout, so late answers never reach it.
    ClientReq {
        client: usize,
        attempt: u64,
        req: Request,
    },
    ClientResp {
        attempt: u64,
        resp: Response,
    },
}

#[derive(Debug)]
enum Ev {
    /// Node `.0`'s ticker, in incarnation `.1`.
    Tick(usize, u64),
    /// Registration attempt `attempt` of node `node` in incarnation `inc`.
    Register {
        node: usize,
        inc: u64,
        attempt: u32,
    },
    ServerTick(usize),
    /// A killed server's process is started again.
    ServerStart(usize),
    /// A store fault ends (unless a newer one of the same kind began).
    StoreHeal {
        fault: StoreFault,
        server: usize,
        gen: u64,
    },
    /// A slow store applies a commit it took earlier.
    StoreApply(InFlight),
    Deliver {
        to: Endpoint,
        from: Endpoint,
        msg: Msg,
    },
    ClientStep(usize),
    Fault,
    ClientTimeout {
        client: usize,
        attempt: u64,
    },
    /// Node `node`'s write-ahead log write (incarnation `inc`) is done; the
    /// log ends at `last`; `sync`: the write is forced (fsync: always).
    DiskDone {
        node: usize,
        inc: u64,
        last: LogPos,
        sync: bool,
    },
    /// Node `.0`'s background fsync (fsync: interval), incarnation `.1`.
    DiskSync(usize, u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    Server(usize),
    Node(usize),
    Client(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum StoreFault {
    Unavailable,
    Cut,
    Slow,
}

/// One replication stream: the shipped state machines at both ends
/// (`crate::repl`), with `streams.rs` as their driver.
struct Stream {
    follower: usize,
    coordinator: usize,
    open: bool,
    /// The coordinator's end, once it served the request.
    feeder: Option<Feeder>,
    /// The replica's end.
    replica: Follower,
    last_send: Instant,
    fifo_at: Instant,
    /// The coordinator heard that the replica is leaving.
    leaving: bool,
}

struct SimNode {
    id: NodeId,
    incarnation: u64,
    alive: bool,
    paused_until: Option<Instant>,
    core: Option<NodeCore>,
    store: Store,
    log: ReplLog,
    serving: Serving,
    /// Clock rate relative to true time.
    rate: f64,
    follower: Option<StreamId>,
    pending: Vec<(usize, u64, crate::log::Outcome, LogPos, Response)>,
    /// A planned handoff holds client writes: its target and when it gives up.
    handoff: Option<(NodeId, Instant)>,
    /// Shutting down as a replica does on SIGTERM: it stops once its
    /// coordinator released it, or at this instant.
    leaving: Option<Instant>,
    /// A data directory (write-ahead log and snapshot), for durable nodes.
    disk: Option<Disk>,
    /// A slow disk: writes take milliseconds until then.
    disk_slow_until: Option<Instant>,
    max_epoch: Epoch,
    /// A server lost its state since this node started: a node does not
    /// persist the epochs it saw, so its next life knows only its log's
    /// epochs and what the (recovering) server tells it.
    forgets_epoch: bool,
    /// The server link: the index of the current server...
    server: usize,
    /// ...and the calls waiting for an answer, by link number.
    calls: BTreeMap<u64, LinkCall>,
}

/// One call of a node's server link.
struct LinkCall {
    call: Call,
    /// The node's clock when it was first sent (leases count from there).
    sent: Instant,
    /// The server it went to last.
    at: usize,
    /// Already retried on the next server after a refused connection.
    retried: bool,
    req: ServerRequest,
}

/// One registry server: its process (an arbiter) when it runs.
struct SimServer {
    arbiter: Option<Arbiter>,
    paused_until: Option<Instant>,
    /// Like the runtime's ticker, a shared store is read only every lease.
    next_refresh: Instant,
    /// Clock rate relative to true time.
    rate: f64,
    max_epoch: Epoch,
}

struct Client {
    target: Option<usize>,
    /// The server that answered last.
    server: usize,
    op: Option<(KvOp, u64)>,
    sent: bool,
    attempt: u64,
    deadline: Instant,
    thread: u64,
}

pub struct Sim {
    cfg: SimConfig,
    settings: NodeSettings,
    rng: Rng,
    base: Instant,
    now: Instant,
    seq: u64,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    events: HashMap<u64, Ev>,
    servers: Vec<SimServer>,
    store: Arc<Mutex<ModelStore>>,
    /// The generation of the last store fault of each kind (and server).
    store_faults: BTreeMap<(StoreFault, usize), u64>,
    next_link: u64,
    link_timeout: Duration,
    /// After the final heal, client 0 keeps working in this window to show
    /// that service came back.
    probe: Option<(Instant, Instant)>,
    nodes: Vec<SimNode>,
    clients: Vec<Client>,
    net: Net,
    streams: BTreeMap<StreamId, Stream>,
    next_stream: StreamId,
    history: History,
    acked: Vec<(LogPos, String)>,
    coordinators: BTreeMap<Epoch, NodeId>,
    next_value: u64,
    report: SimReport,
    failure: Option<String>,
    /// `DKV_SIM_TRACE=1`: print every event (for replaying a failing seed).
    trace: bool,
    /// No new fault before this instant (a server's rejoin window).
    faults_held_until: Option<Instant>,
}

const TICK: Duration = Duration::from_millis(10);
const KEYS: [&str; 3] = ["a", "b", "c"];

impl Sim {
    pub fn new(cfg: SimConfig) -> Sim {
        let settings = NodeSettings::default();
        let mut rng = Rng::new(cfg.seed);
        let base = Instant::now();
        let drift = settings.clock_drift;
        let nodes = (0..cfg.nodes)
            .map(|i| SimNode {
                id: 0,
                incarnation: 0,
                alive: false,
                paused_until: None,
                core: None,
                store: Store::new(),
                log: ReplLog::new(50, false),
                serving: idle_serving(),
                // Rates within ±drift/2 of true time: any two differ by < drift.
                rate: 1.0 + drift * (rng.f64() - 0.5),
                follower: None,
                pending: Vec::new(),
                handoff: None,
                leaving: None,
                disk: (i % 2 == 0).then(|| {
                    Disk::new(match rng.below(4) {
                        0 | 1 => FsyncPolicy::Always,
                        2 => FsyncPolicy::Interval(settings.fsync_interval()),
                        _ => FsyncPolicy::Never,
                    })
                }),
                disk_slow_until: None,
                max_epoch: 0,
                forgets_epoch: false,
                server: 0,
                calls: BTreeMap::new(),
            })
            .collect();
        let clients = (0..cfg.clients)
            .map(|i| Client {
                target: None,
                server: 0,
                op: None,
                sent: false,
                attempt: 0,
                deadline: base,
                thread: i as u64,
            })
            .collect();
        // The standalone server keeps true time; HA servers run on clocks
        // within the same drift bound as the nodes'.
        let servers = (0..cfg.servers.max(1))
            .map(|_| SimServer {
                arbiter: None,
                paused_until: None,
                next_refresh: base,
                rate: if cfg.servers > 1 {
                    1.0 + drift * (rng.f64() - 0.5)
                } else {
                    1.0
                },
                max_epoch: 0,
            })
            .collect();
        let store = ModelStore::new(cfg.servers > 1, rng.next());
        let link_timeout = (settings.server_update_interval() * 2).max(Duration::from_millis(200));
        let mut sim = Sim {
            net: Net::new(cfg.nodes),
            cfg,
            settings,
            rng,
            base,
            now: base,
            seq: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            servers,
            store: Arc::new(Mutex::new(store)),
            store_faults: BTreeMap::new(),
            next_link: 1,
            link_timeout,
            probe: None,
            nodes,
            clients,
            streams: BTreeMap::new(),
            next_stream: 1,
            history: History::default(),
            acked: Vec::new(),
            coordinators: BTreeMap::new(),
            next_value: 1,
            report: SimReport::default(),
            failure: None,
            trace: std::env::var("DKV_SIM_TRACE").is_ok_and(|v| v == "1"),
            faults_held_until: None,
        };
        if sim.servers.len() > 1 {
            for c in 0..sim.cfg.clients {
                sim.clients[c].server = sim.rng.below(sim.servers.len() as u64) as usize;
            }
        }
        let every = sim.server_tick_interval();
        for k in 0..sim.servers.len() {
            sim.start_server(k);
            sim.at(every, Ev::ServerTick(k));
        }
        for i in 0..sim.cfg.nodes {
            sim.start_node(i);
        }
        for c in 0..sim.cfg.clients {
            sim.at(Duration::from_millis(300 + 7 * c as u64), Ev::ClientStep(c));
        }
        if sim.cfg.faults {
            sim.at(Duration::from_millis(1000), Ev::Fault);
        }
        sim
    }

    fn at(&mut self, after: Duration, ev: Ev) {
        self.seq += 1;
        let t = self.now + after;
        self.queue.push(Reverse((t, self.seq)));
        self.events.insert(self.seq, ev);
    }

    fn local(&self, i: usize) -> Instant {
        let d = self.now - self.base;
        self.base + d.mul_f64(self.nodes[i].rate)
    }

    /// Node `i`'s wall clock (ms since the UNIX epoch): it runs at the
    /// node's rate, so the nodes' wall clocks drift apart as the run goes.
    fn wall_ms(&self, i: usize) -> u64 {
        1_800_000_000_000 + (self.local(i) - self.base).as_millis() as u64
    }

    /// Server `k`'s clock.
    fn server_clock(&self, k: usize) -> Instant {
        let d = self.now - self.base;
        self.base + d.mul_f64(self.servers[k].rate)
    }

    fn fail(&mut self, what: String) {
        if self.failure.is_none() {
            self.failure = Some(format!(
                "seed {}: at {:?}: {what}",
                self.cfg.seed,
                self.now - self.base
            ));
        }
    }

    /// Runs to the end; `Err` describes the first violated rule.
    pub fn run(mut self) -> Result<SimReport, String> {
        let load_end = self.base + self.cfg.duration;
        let end = load_end + Duration::from_secs(6);
        let mut healed = false;
        while let Some(Reverse((t, seq))) = self.queue.pop() {
            if t > end {
                break;
            }
            self.now = t;
            if !healed && t >= load_end {
                healed = true;
                self.heal();
            }
            let ev = self.events.remove(&seq).expect("event");
            self.report.trace = self
                .report
                .trace
                .wrapping_mul(0x100_0000_01B3)
                .wrapping_add(seq ^ (t - self.base).as_nanos() as u64);
            self.step(ev, t < load_end);
            self.report.steps += 1;
            self.check_invariants();
            if let Some(f) = self.failure.take() {
                return Err(f);
            }
        }
        self.report.unserved = self.why_unserved();
        self.report.acked_writes = self.acked.len() as u64;
        self.report.store = self.store.lock().stats.clone();
        self.final_checks()?;
        Ok(self.report)
    }

    fn step(&mut self, ev: Ev, loading: bool) {
        if self.trace && !matches!(ev, Ev::Tick(..) | Ev::ServerTick(_)) {
            eprintln!(
                "{:>8.3}ms {ev:?}",
                (self.now - self.base).as_secs_f64() * 1000.0
            );
        }
        match ev {
            Ev::Tick(i, inc) => {
                if self.nodes[i].incarnation == inc {
                    self.tick(i)
                }
            }
            Ev::Register { node, inc, attempt } => {
                let n = &self.nodes[node];
                if n.incarnation != inc || !n.alive {
                    return;
                }
                if let Some(t) = n.paused_until.filter(|&t| self.now < t) {
                    let wait = t - self.now + Duration::from_micros(1);
                    self.at(wait, Ev::Register { node, inc, attempt });
                    return;
                }
                self.register(node, attempt);
            }
            Ev::ServerTick(k) => self.server_tick(k),
            Ev::ServerStart(k) => self.start_server(k),
            Ev::StoreHeal { fault, server, gen } => {
                if self.store_faults.get(&(fault, server)) == Some(&gen) {
                    self.store_faults.remove(&(fault, server));
                    let mut st = self.store.lock();
                    match fault {
                        StoreFault::Unavailable => st.faults.unavailable = false,
                        StoreFault::Cut => {
                            st.faults.cut.remove(&server);
                        }
                        StoreFault::Slow => st.faults.slow = false,
                    }
                }
            }
            Ev::StoreApply(c) => self.store.lock().apply_late(&c),
            Ev::Deliver { to, from, msg } => self.deliver(to, from, msg),
            Ev::ClientStep(c) => {
                let probing = self
                    .probe
                    .is_some_and(|(from, to)| c == 0 && self.now >= from && self.now < to);
                if loading || probing {
                    self.client_step(c)
                }
            }
            Ev::ClientTimeout { client, attempt } => self.client_timeout(client, attempt),
            Ev::DiskDone {
                node,
                inc,
                last,
                sync,
            } => {
                if self.nodes[node].incarnation == inc && self.nodes[node].alive {
                    self.disk_done(node, last, sync);
                }
            }
            Ev::DiskSync(i, inc) => {
                let n = &mut self.nodes[i];
                if n.incarnation == inc && n.alive {
                    if let Some(d) = n.disk.as_mut() {
                        d.sync();
                        if let FsyncPolicy::Interval(every) = d.policy {
                            self.at(every, Ev::DiskSync(i, inc));
                        }
                    }
                }
            }
            Ev::Fault => {
                if loading {
                    self.fault();
                    let mut d = Duration::from_millis(300 + self.rng.below(1500));
                    if let Some(until) = self.faults_held_until.take() {
                        d = d.max(until - self.now);
                    }
                    self.at(d, Ev::Fault);
                }
            }
        }
    }
}

fn idle_serving() -> Serving {
    Serving {
        role: Role::Joining,
        epoch: 0,
        coordinator: None,
        coordinator_addr: None,
        coordinator_resp_addr: None,
        lease_until: None,
        members: Vec::new(),
        resp_addrs: Default::default(),
    }
}

/// Runs one seed; used by tests and `make sim`.
pub fn run_seed(cfg: SimConfig) -> Result<SimReport, String> {
    Sim::new(cfg).run()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_u64(name: &str) -> Option<u64> {
        std::env::var(name).ok().and_then(|v| v.parse().ok())
    }

    /// `DKV_SIM_SEED=n` replays one seed; `DKV_SIM_SEEDS=N` runs seeds 1..=N
    /// (default 40, about a minute in a debug build on two cores). Odd
    /// seeds run the HA schedule (three servers over one store), even seeds
    /// the standalone one.
    #[test]
    fn simulated_cluster_keeps_every_rule_under_faults() {
        let seeds: Vec<u64> = match env_u64("DKV_SIM_SEED") {
            Some(s) => vec![s],
            // `DKV_SIM_FIRST`: start there (to split a long run over cores).
            None => (env_u64("DKV_SIM_FIRST").unwrap_or(1)
                ..=env_u64("DKV_SIM_SEEDS").unwrap_or(40))
                .collect(),
        };
        let started = std::time::Instant::now();
        // Per schedule (standalone, HA): seeds, steps, answered, unknown,
        // acknowledged writes, failovers, seeds not served at the end, the
        // fewest acknowledged writes of a seed.
        let mut by = [[0u64; 7]; 2];
        let mut fewest = [(u64::MAX, 0u64); 2];
        let mut unserved: [BTreeMap<&str, Vec<u64>>; 2] = Default::default();
        let mut faults: BTreeMap<&str, u64> = BTreeMap::new();
        let mut store = StoreStats::default();
        // `DKV_SIM_KEEP_GOING=1`: run every seed, then list the failures.
        let keep_going = std::env::var("DKV_SIM_KEEP_GOING").is_ok_and(|v| v == "1");
        let mut failed = Vec::new();
        for &seed in &seeds {
            let cfg = SimConfig::for_seed(seed);
            let m = usize::from(cfg.servers > 1);
            match run_seed(cfg) {
                Ok(r) => {
                    let f = &mut by[m];
                    f[0] += 1;
                    f[1] += r.steps;
                    f[2] += r.ops_ok;
                    f[3] += r.ops_unknown;
                    f[4] += r.acked_writes;
                    f[5] += r.failovers;
                    if let Some(why) = r.unserved {
                        f[6] += 1;
                        unserved[m].entry(why).or_default().push(seed);
                    }
                    if r.acked_writes < fewest[m].0 {
                        fewest[m] = (r.acked_writes, seed);
                    }
                    for (k, v) in r.faults {
                        *faults.entry(k).or_default() += v;
                    }
                    store.commits += r.store.commits;
                    store.conflicts += r.store.conflicts;
                    store.lease_conflicts += r.store.lease_conflicts;
                    store.refused += r.store.refused;
                    store.answer_lost += r.store.answer_lost;
                    store.request_lost += r.store.request_lost;
                    store.applied_late += r.store.applied_late;
                }
                Err(e) if keep_going => {
                    println!("FAILED {e}");
                    failed.push(seed);
                }
                Err(e) => panic!("{e}\nreplay with: make sim SEED={seed}"),
            }
        }
        println!(
            "simulated {} seeds in {:.1} s; faults {faults:?}",
            seeds.len(),
            started.elapsed().as_secs_f64()
        );
        for (m, name) in ["standalone", "HA"].iter().enumerate() {
            let f = by[m];
            if f[0] == 0 {
                continue;
            }
            println!(
                "{name}: {} seeds, {} steps, {} ops answered, {} of unknown outcome, {} writes acknowledged (fewest {} in seed {}), {} failovers, {} seeds without a serving coordinator at the end: {:?}",
                f[0], f[1], f[2], f[3], f[4], fewest[m].0, fewest[m].1, f[5], f[6], unserved[m]
            );
        }
        println!("store: {store:?}");
        assert!(failed.is_empty(), "failing seeds: {failed:?}");
        let ops = by[0][2] + by[1][2];
        let failovers = by[0][5] + by[1][5];
        assert!(
            ops > 0 && failovers > 0,
            "the runs did work and failed over"
        );
    }

    /// Seeds that found real bugs, kept as regression cases. 9, 13 and 126
    /// were found before the simulator ran its server through the registry
    /// arbiter (which changed every schedule), so they no longer replay
    /// those runs:
    /// 9: a coordinator took a stale view's in-sync set (a reply older than
    ///    its own last change) and stopped waiting for in-sync replicas;
    /// 126: a returning replica's ack covered its divergent uncommitted entry,
    ///    which the coordinator counted as a copy of its own entry there.
    /// Found with the registry schedules:
    /// 6, 38, 56: a replica that caught up while another member held the
    ///    commit back was added to the commit set after that member left and
    ///    the commit moved past it, and recorded in sync without the newest
    ///    acknowledged write.
    #[test]
    fn seeds_that_found_bugs_stay_fixed() {
        for seed in [9, 13, 126, 6, 38, 56] {
            if let Err(e) = run_seed(SimConfig::new(seed)) {
                panic!("{e}");
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_trace() {
        for make in [SimConfig::new, SimConfig::ha] {
            let a = run_seed(make(7)).unwrap();
            let b = run_seed(make(7)).unwrap();
            assert_eq!((a.trace, a.steps, a.ops_ok), (b.trace, b.steps, b.ops_ok));
            let c = run_seed(make(8)).unwrap();
            assert_ne!(a.trace, c.trace);
        }
    }

    #[test]
    fn the_simulator_catches_a_coordinator_that_acknowledges_too_early() {
        let caught = (1..=30).find_map(|seed| {
            let mut cfg = SimConfig::new(seed);
            cfg.bug = Some(Bug::AckBeforeReplication);
            run_seed(cfg).err()
        });
        let e = caught.expect("the injected bug must be caught within 30 seeds");
        assert!(
            e.contains("acknowledged write") || e.contains("linearizable"),
            "{e}"
        );
    }
}
