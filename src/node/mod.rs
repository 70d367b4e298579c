//! The node runtime: the IO threads around the sans-IO [`NodeCore`].
//!
//! Threads, one job each:
//! * **driver** — owns the [`NodeCore`]; waits on its inbox or its next
//!   deadline, feeds inputs, executes actions in order;
//! * **beacon-rx** — receives UDP beacons, drops garbage, forwards the rest;
//! * **server-link** — performs the core's server calls one at a time;
//! * **accept** and **resp-accept** — accept TCP connections, one thread per
//!   connection, bounded ([`net::listener`], which records every connection so
//!   shutdown can end it and join its thread);
//! * **apply** — applies committed entries to the store, answers waiting writes;
//! * at the coordinator, per replica: a **sender** (the connection thread) and
//!   an **ack reader**; at a replica, one **follower** thread.
//!
//! The driver and beacon threads never take the data path's locks: the data
//! path publishes its position on a separate [`StatusBoard`].

mod client_conn;
mod metrics;
mod persist;
mod replication;
pub mod requests;
pub mod resp_admin;
mod resp_conn;
mod resp_data;

use crate::auth::{log_sampled, AuthCounters, BeaconVerdict, ReplayGuard, Security};
use crate::config::NodeSettings;
use crate::core::exec::{self, Called, NodeIo};
use crate::core::node::{Action, Call, Input, LocalStatus, NodeCore, Serving};
use crate::errors::{Error, Result};
use crate::log::ReplLog;
use crate::net::listener::{Conn, Listener, Service};
use crate::net::{self, ConnLimit, HandshakeError, PeerConn, TimedStream};
use crate::servers::ServerList;
use crate::storage::Storage;
use crate::store::Store;
use crate::types::{Epoch, NodeId};
use crate::wire::{
    self, AuthStats, Beacon, ConnKind, ErrorKind, ServerRequest, ServerResponse, WireError,
};
use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::{Mutex, RwLock};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How a node is started.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// The servers (one or more, tried in turn when one fails).
    pub server: ServerList,
    /// TCP address for clients and replication; UDP beacons use the same port
    /// when it is free, an ephemeral one otherwise.
    pub listen: SocketAddr,
    /// Address other nodes and clients use to reach this node (defaults to `listen`).
    pub advertise: Option<String>,
    /// Keeps the node's identity across restarts.
    pub data_dir: Option<PathBuf>,
    /// Where to serve RESP (the Redis protocol); `None` turns it off.
    pub resp_listen: Option<SocketAddr>,
    /// Where to serve Prometheus metrics (`GET /metrics`); `None`: off.
    pub metrics_listen: Option<SocketAddr>,
    pub settings: NodeSettings,
    /// Cluster secret and client password.
    pub security: Security,
}

/// Position of the local data path, published for the control plane.
#[derive(Default)]
pub struct StatusBoard(Mutex<LocalStatus>);

impl StatusBoard {
    pub fn get(&self) -> LocalStatus {
        *self.0.lock()
    }
    fn update(&self, f: impl FnOnce(&mut LocalStatus)) {
        f(&mut self.0.lock())
    }
}

/// Everything the IO threads share.
pub(crate) struct Shared {
    pub id: NodeId,
    pub incarnation: u64,
    pub settings: NodeSettings,
    pub store: Store,
    pub log: ReplLog,
    pub storage: Option<Arc<Storage>>,
    /// The stream a replica acknowledges on (see `replication`).
    pub acker: Mutex<Option<replication::Acker>>,
    pub board: StatusBoard,
    pub serving: RwLock<Serving>,
    pub inbox: Sender<Input>,
    /// The servers, shared by the server link and the RESP connections that
    /// forward through them (on replicas), so all start at the one that
    /// answered last.
    pub server: Arc<ServerList>,
    pub shutdown: AtomicBool,
    /// Shutting down: a replica's acknowledgements say it is leaving, and
    /// it opens no new stream (see [`Node::shutdown`]).
    pub leaving: AtomicBool,
    pub conns: ConnLimit,
    pub security: Security,
    pub counters: AuthCounters,
    /// Sequence number of the next beacon this process sends.
    pub beacon_seq: AtomicU64,
    /// Number of the next replication stream this node feeds.
    pub next_stream: AtomicU64,
    /// What the follower thread follows (a replica's one stream).
    follower: replication::FollowerCtl,
    /// The RESP port's counters and live connections (INFO, CLIENT LIST).
    pub resp: resp_admin::RespStats,
    /// What the metrics port reports that no other state records.
    pub metrics: metrics::NodeMetrics,
}

impl Shared {
    /// Sends an input to the driver without blocking; a full inbox drops it
    /// (every input is either repeated or recovered by the next tick).
    pub fn notify(&self, input: Input) {
        if self.inbox.try_send(input).is_err() {
            log::debug!("node {}: driver inbox full, input dropped", self.id);
        }
    }

    /// Sends an input the core must see (it is not repeated: a stream's
    /// start and end, a replica caught up), waiting while the inbox is full.
    /// The driver never waits for the threads that call this, so the wait
    /// is short; it ends at once when the driver has stopped.
    pub fn notify_surely(&self, input: Input) {
        let _ = self.inbox.send(input);
    }

    /// Asks the driver to hand the coordinator role over (to `to`, or the
    /// best in-sync replica) and waits until this node no longer coordinates
    /// or `wait` passed; whether it handed over.
    pub fn hand_over(&self, to: Option<NodeId>, wait: Duration) -> bool {
        if self.serving.read().role != crate::types::Role::Coordinator {
            return false;
        }
        self.notify_surely(Input::Handoff { to });
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if self.serving.read().role != crate::types::Role::Coordinator {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    pub fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    pub fn leaving(&self) -> bool {
        self.leaving.load(Ordering::Acquire)
    }

    /// A replica that is shutting down leaves the in-sync set first, so the
    /// coordinator's writes do not wait a failure timeout for it: its
    /// stream says it is leaving, and it keeps acknowledging until the
    /// coordinator, once the server recorded it out of the in-sync set,
    /// ends the stream (or until `deadline`). Returns whether it was
    /// released (false also when it followed nobody).
    fn leave(&self, deadline: Instant) -> bool {
        self.leaving.store(true, Ordering::Release);
        self.notify_surely(Input::Leave);
        if !self.announce_leaving() {
            return false;
        }
        let released = self.follower.wait_stream_end(deadline);
        if !released {
            log::info!(
                "node {}: the coordinator did not release this replica in time; stopping anyway",
                self.id
            );
        }
        released
    }

    pub fn auth_stats(&self) -> AuthStats {
        let c = &self.counters;
        AuthStats {
            cluster_secret: self.security.cluster_key.is_some(),
            forged_beacons: AuthCounters::get(&c.forged_beacons),
            replayed_beacons: AuthCounters::get(&c.replayed_beacons),
            rejected_peers: AuthCounters::get(&c.rejected_peers) + crate::tls::refused_certs(),
            failed_client_auth: AuthCounters::get(&c.failed_auth),
        }
    }

    /// Opens an authenticated connection to another cluster member.
    pub fn connect_peer(
        &self,
        addr: &str,
        kind: ConnKind,
        timeout: Duration,
    ) -> std::io::Result<PeerConn> {
        let tls = self.security.tls.as_ref().map(|t| t.client());
        net::connect_peer(
            addr,
            kind,
            timeout,
            self.security.cluster_key.as_ref(),
            tls.as_ref(),
        )
    }
}

/// A running node. Dropping it does not stop it; call [`Node::shutdown`].
pub struct Node {
    shared: Arc<Shared>,
    data_addr: SocketAddr,
    beacon_addr: SocketAddr,
    resp_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    threads: Vec<JoinHandle<()>>,
    /// The data port and, when on, the RESP and metrics ports.
    listeners: Vec<Listener>,
}

/// Longest a stopping node waits for requests under way (writes waiting for
/// their commit among them) before it cuts every connection; a write not
/// committed by then is answered "may or may not be applied".
const DRAIN_GRACE: Duration = Duration::from_secs(2);

impl Node {
    pub fn id(&self) -> NodeId {
        self.shared.id
    }

    pub fn data_addr(&self) -> SocketAddr {
        self.data_addr
    }

    pub fn beacon_addr(&self) -> SocketAddr {
        self.beacon_addr
    }

    pub fn resp_addr(&self) -> Option<SocketAddr> {
        self.resp_addr
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Binds, registers with the server and starts every thread.
    pub fn start(opts: NodeOptions) -> Result<Node> {
        opts.security.warn_if_open("node");
        net::raise_fd_limit();
        let listener = net::listen(opts.listen)?;
        let data_addr = listener.local_addr()?;
        let udp = bind_udp(data_addr)?;
        let beacon_addr = udp.local_addr()?;
        let advertise = opts
            .advertise
            .clone()
            .unwrap_or_else(|| data_addr.to_string());
        if data_addr.ip().is_unspecified() && opts.advertise.is_none() {
            return Err(Error::Config(format!(
                "listening on {data_addr} needs --advertise HOST:PORT so others can reach this node"
            )));
        }
        let beacon_advertise = {
            let host = advertise
                .rsplit_once(':')
                .map(|(h, _)| h)
                .unwrap_or("127.0.0.1");
            format!("{host}:{}", beacon_addr.port())
        };

        let store = Store::new();
        let data_dir = opts
            .data_dir
            .clone()
            .or_else(|| opts.settings.data_dir.as_ref().map(PathBuf::from));
        let (storage, recovered) = match &data_dir {
            Some(dir) => {
                let (st, rec) = Storage::open(dir, &opts.settings, &store)?;
                (Some(Arc::new(st)), Some(rec))
            }
            None => {
                log::info!("no data directory: this node keeps its data in memory only");
                (None, None)
            }
        };
        let log = ReplLog::new(opts.settings.log_retention_entries, storage.is_some());
        let identity = recovered.map(|r| {
            log.restore(r.base, r.entries, r.commit);
            r.identity
        });
        // Without a data dir, a fresh node is a new member at each start.
        let incarnation = identity.as_ref().map(|i| i.incarnation).unwrap_or(1);
        let last = log.state().last;

        let resp_listener = opts.resp_listen.map(net::listen).transpose()?;
        let resp_addr = resp_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let metrics_listener = opts.metrics_listen.map(net::listen).transpose()?;
        let metrics_addr = metrics_listener
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()?;
        let resp_advertise = resp_addr.map(|a| {
            let host = advertise
                .rsplit_once(':')
                .map(|(h, _)| h)
                .unwrap_or("127.0.0.1");
            format!("{host}:{}", a.port())
        });
        let (id, view, registered_at) = register(
            &opts.server,
            identity.as_ref().and_then(|i| i.node_id),
            incarnation,
            &advertise,
            &beacon_advertise,
            resp_advertise.clone(),
            last,
            &opts.settings,
            &opts.security,
        )?;
        if let (Some(dir), Some(mut ident)) = (data_dir.as_ref(), identity) {
            ident.node_id = Some(id);
            ident.save(dir)?;
        }
        log::info!(
            "node {id} (incarnation {incarnation}) up: data {advertise}, beacons {beacon_advertise}, server {}",
            opts.server
        );

        let (inbox_tx, inbox_rx) = bounded(4096);
        let settings = opts.settings.clone();
        let (core, initial) = NodeCore::new(id, incarnation, &settings, view, registered_at);
        let meta = store.meta();
        let board = StatusBoard::default();
        board.update(|b| {
            b.last = last;
            b.applied = meta.applied;
            b.digest = meta.digest;
        });
        let shared = Arc::new(Shared {
            id,
            incarnation,
            store,
            log,
            storage: storage.clone(),
            acker: Mutex::new(None),
            board,
            serving: RwLock::new(core.serving()),
            inbox: inbox_tx,
            server: Arc::new(opts.server.clone()),
            shutdown: AtomicBool::new(false),
            leaving: AtomicBool::new(false),
            conns: ConnLimit::new(settings.max_connections),
            settings,
            security: opts.security.clone(),
            counters: AuthCounters::default(),
            beacon_seq: AtomicU64::new(1),
            next_stream: AtomicU64::new(1),
            follower: Default::default(),
            resp: Default::default(),
            metrics: metrics::NodeMetrics::new(
                storage
                    .as_ref()
                    .map(|st| st.wal.lock().fsync_seconds.clone()),
            ),
        });

        let (server_tx, server_rx) = bounded(64);
        let mut threads = Vec::new();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(format!("{name}-{id}"))
                .spawn(f)
                .expect("spawn thread")
        };
        {
            let sh = shared.clone();
            threads.push(spawn(
                "server-link",
                Box::new(move || ServerLink::new(sh).run(server_rx)),
            ));
        }
        {
            let sh = shared.clone();
            let udp = udp.try_clone()?;
            threads.push(spawn("beacon-rx", Box::new(move || beacon_rx(sh, udp))));
        }
        {
            let sh = shared.clone();
            threads.push(spawn("apply", Box::new(move || apply_loop(sh))));
        }
        {
            let sh = shared.clone();
            threads.push(spawn("expire", Box::new(move || expire_loop(sh))));
        }
        {
            let sh = shared.clone();
            threads.push(spawn(
                "follower",
                Box::new(move || replication::follower_loop(sh)),
            ));
        }
        if let Some(st) = storage {
            let (snap_tx, snap_rx) = bounded(1);
            let (sh, st2) = (shared.clone(), st.clone());
            threads.push(spawn(
                "wal",
                Box::new(move || persist::wal_loop(sh, st2, snap_tx)),
            ));
            let (sh, st2) = (shared.clone(), st.clone());
            threads.push(spawn(
                "snapshot",
                Box::new(move || persist::snapshot_loop(sh, st2, snap_rx)),
            ));
            if matches!(st.policy, crate::storage::FsyncPolicy::Interval(_)) {
                let sh = shared.clone();
                threads.push(spawn(
                    "fsync",
                    Box::new(move || persist::fsync_loop(sh, st)),
                ));
            }
        }
        let mut listeners = vec![Listener::start(listener, data_service(shared.clone()))?];
        if let Some(l) = resp_listener {
            listeners.push(Listener::start(l, resp_conn::service(shared.clone()))?);
        }
        if let Some(l) = metrics_listener {
            let c = metrics::NodeCollector {
                sh: Arc::downgrade(&shared),
                native: listeners[0].live_count(),
                resp: listeners.get(1).map(|l| l.live_count()),
            };
            let reg = crate::metrics::registry(c);
            listeners.push(crate::metrics::start(
                l,
                &id.to_string(),
                reg,
                shared.security.tls.clone(),
            )?);
        }
        {
            let sh = shared.clone();
            threads.push(spawn(
                "driver",
                Box::new(move || {
                    Driver {
                        shared: sh,
                        core,
                        inbox: inbox_rx,
                        server_tx,
                        udp,
                    }
                    .run(initial)
                }),
            ));
        }
        Ok(Node {
            shared,
            data_addr,
            beacon_addr,
            resp_addr,
            metrics_addr,
            threads,
            listeners,
        })
    }

    /// Stops every thread and waits for them, connection threads included:
    /// 1. the data and RESP ports stop accepting (and close);
    /// 2. client connections are drained: each answers the request it is
    ///    serving, then ends; idle ones end at once. Replication streams go
    ///    on, so a write under way can still commit. This lasts until every
    ///    client connection ended, or [`DRAIN_GRACE`];
    /// 3. the node stops: the log wakes every waiter (a write still
    ///    waiting is answered "may or may not be applied", and its
    ///    connection gets up to 500 ms more to send that), every
    ///    connection left is shut down and every thread is joined (the
    ///    driver stops a replica's follower thread as it exits).
    ///
    /// A coordinator first hands its role to an in-sync replica (a planned
    /// handoff, see `core::node::handoff`), so clients see a pause of
    /// milliseconds instead of a failover; if that cannot be done (no live
    /// in-sync replica, the server refuses) it stops as before, and is
    /// replaced as after a crash once its lease ran out.
    pub fn shutdown(mut self) {
        log::info!("node {}: shutting down", self.shared.id);
        if self.shared.serving.read().role == crate::types::Role::Coordinator
            && self
                .shared
                .hand_over(None, HANDOFF_CATCH_UP + Duration::from_secs(1))
        {
            // Keep answering for a moment: a client's next request gets "the
            // coordinator is now ..." instead of a connection closed under
            // it (which would leave that write's outcome unknown). The
            // library does not send on a connection idle this long without
            // checking it is still open.
            std::thread::sleep(HANDOFF_LINGER);
        }
        self.shared.leave(Instant::now() + LEAVE_WAIT);
        for l in &mut self.listeners {
            l.stop_accepting();
        }
        let deadline = Instant::now() + self.shared.settings.write_timeout().min(DRAIN_GRACE);
        for l in &self.listeners {
            l.drain();
        }
        for l in &self.listeners {
            if !l.wait_drained(deadline) {
                log::info!(
                    "node {}: client connections still busy after {} ms; closing them",
                    self.shared.id,
                    DRAIN_GRACE.as_millis()
                );
            }
        }
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.log.shutdown();
        // Wake the driver and the beacon receiver, so they see the flag now.
        self.shared.notify(Input::Tick(self.shared.board.get()));
        if let Ok(s) = UdpSocket::bind("127.0.0.1:0") {
            let _ = s.send_to(b"stop", self.beacon_addr);
        }
        // A write that was still waiting now has its answer: let it out.
        let deadline = Instant::now() + Duration::from_millis(500);
        for l in &self.listeners {
            l.wait_drained(deadline);
        }
        for l in &mut self.listeners {
            l.close();
        }
        for t in self.threads {
            let _ = t.join();
        }
        log::info!("node {}: stopped", self.shared.id);
    }
}

fn bind_udp(data_addr: SocketAddr) -> Result<UdpSocket> {
    let make = |addr: SocketAddr| -> std::io::Result<UdpSocket> {
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        s.bind(&addr.into())?;
        Ok(s.into())
    };
    match make(data_addr) {
        Ok(s) => Ok(s),
        Err(_) => Ok(make(SocketAddr::new(data_addr.ip(), 0))?),
    }
}

/// Registers with a server: each attempt walks the server list (the last
/// good server first), and the walk is retried `reconnection-attempts` + 2
/// times with a growing pause. A server that refuses the registration
/// (`Rejected`) ends it: every server shares one registry. One whose cluster
/// secret differs is skipped; if every server of a walk refuses us that way,
/// registration fails at once, since retrying does not heal a secret
/// mismatch.
#[allow(clippy::too_many_arguments)]
fn register(
    servers: &ServerList,
    node_id: Option<NodeId>,
    incarnation: u64,
    data_addr: &str,
    beacon_addr: &str,
    resp_addr: Option<String>,
    last: crate::types::LogPos,
    settings: &NodeSettings,
    security: &Security,
) -> Result<(NodeId, crate::wire::ClusterView, Instant)> {
    let mut delay = Duration::from_millis(100);
    let mut last_err = String::new();
    let key = security.cluster_key.as_ref();
    // A server that answers `Unavailable` (it just started without a view
    // and lets running nodes rejoin first, or its registry store is briefly
    // unreachable) is asked again soon, without using up an attempt.
    let patience = Instant::now() + Duration::from_secs(10);
    let mut busy = false;
    let mut attempt = 0;
    while attempt < settings.reconnection_attempts.max(1) + 2 {
        if busy && Instant::now() < patience {
            std::thread::sleep(Duration::from_millis(50));
        } else if attempt > 0 {
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        if !busy || Instant::now() >= patience {
            attempt += 1;
        }
        busy = false;
        let mut denied = None;
        let mut all_denied = true;
        for (i, server) in servers.order() {
            let sent = Instant::now();
            let tls = security.tls.as_ref().map(|t| t.client());
            let conn = match net::connect_peer(
                server,
                ConnKind::Member,
                Duration::from_secs(2),
                key,
                tls.as_ref(),
            ) {
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    let msg = format!("server {server} refused registration: {e}");
                    log::warn!("{msg}");
                    denied = Some(msg);
                    continue;
                }
                other => other,
            };
            all_denied = false;
            let res = conn.and_then(|mut c| {
                c.call::<_, ServerResponse>(
                    &ServerRequest::Register {
                        node_id,
                        incarnation,
                        data_addr: data_addr.to_string(),
                        beacon_addr: beacon_addr.to_string(),
                        last,
                        resp_addr: resp_addr.clone(),
                    },
                    wire::MAX_SERVER_FRAME,
                )
                .map_err(|e| std::io::Error::other(e.to_string()))
            });
            match res {
                Ok(ServerResponse::Registered { node_id, view }) => {
                    servers.succeeded(i);
                    return Ok((node_id, view, sent));
                }
                Ok(ServerResponse::Rejected { reason, .. }) => {
                    return Err(Error::Refused(format!(
                        "server {server} refused registration: {reason}"
                    )))
                }
                Ok(ServerResponse::Error { kind, message }) => {
                    busy |= kind == crate::wire::ErrorKind::Unavailable;
                    last_err = format!("{server} answered: {message}")
                }
                Ok(other) => {
                    last_err = format!("{server}: answered a registration with {}", other.name())
                }
                Err(e) => last_err = format!("{server}: {e}"),
            }
            if busy {
                log::debug!("registration with server {last_err}");
            } else {
                log::warn!("registration with server {last_err}");
            }
        }
        if let (true, Some(msg)) = (all_denied, denied) {
            return Err(Error::Refused(msg));
        }
    }
    Err(Error::Unavailable(if servers.len() == 1 {
        format!("cannot register with server {last_err}")
    } else {
        format!("cannot register with any server of {servers}; last failure: {last_err}")
    }))
}

struct Driver {
    shared: Arc<Shared>,
    core: NodeCore,
    inbox: Receiver<Input>,
    server_tx: Sender<(Call, ServerRequest)>,
    udp: UdpSocket,
}

impl Driver {
    fn run(mut self, initial: Vec<Action>) {
        self.execute(initial);
        while !self.shared.stopping() {
            let deadline = self.core.next_deadline();
            let input = match self.inbox.recv_deadline(deadline) {
                Ok(input) => input,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    Input::Tick(self.shared.board.get())
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            };
            let now = Instant::now();
            let mut actions = self.core.handle(now, input);
            if now >= self.core.next_deadline() {
                actions.extend(self.core.handle(now, Input::Tick(self.shared.board.get())));
            }
            self.execute(actions);
            self.shared.metrics.observe_core(&self.core);
        }
        self.shared.follower.set(None);
    }

    fn execute(&mut self, actions: Vec<Action>) {
        let mut io = DriverIo {
            sh: &self.shared,
            udp: &self.udp,
            server_tx: &self.server_tx,
        };
        exec::execute(&mut self.core, Instant::now(), actions, &mut io);
    }
}

/// The node runtime's way of doing the core's actions.
struct DriverIo<'a> {
    sh: &'a Arc<Shared>,
    udp: &'a UdpSocket,
    server_tx: &'a Sender<(Call, ServerRequest)>,
}

impl NodeIo for DriverIo<'_> {
    fn send_beacon(&mut self, to: Vec<String>, mut beacon: Beacon) {
        let sh = self.sh;
        beacon.seq = sh.beacon_seq.fetch_add(1, Ordering::Relaxed);
        let bytes = beacon.encode(sh.security.cluster_key.as_ref());
        for addr in to {
            match net::resolve(&addr) {
                Ok(sa) => {
                    if let Err(e) = self.udp.send_to(&bytes, sa) {
                        log::debug!("beacon to {addr}: {e}");
                    }
                }
                Err(e) => log::debug!("beacon to {addr}: {e}"),
            }
        }
    }

    fn call_server(&mut self, call: Call, request: ServerRequest) -> Called {
        match self.server_tx.try_send((call, request)) {
            Ok(()) => Called::Sent,
            Err(_) => Called::Failed("server link busy".into()),
        }
    }

    fn become_coordinator(&mut self, epoch: Epoch, isr: Vec<NodeId>, required: usize) {
        // The follower thread ends its stream by itself; the log refuses
        // that stream's changes from here on.
        self.sh.follower.set(None);
        self.sh.log.become_leader(self.sh.id, epoch, &isr, required);
        crate::metrics::inc(&self.sh.metrics.became_coordinator);
    }

    fn step_down(&mut self) {
        self.sh.log.step_down();
    }

    fn follow(&mut self, _coordinator: NodeId, addr: String, epoch: Epoch) {
        self.sh.follower.set(Some((addr, epoch)));
    }

    fn add_to_commit_set(&mut self, id: NodeId) -> bool {
        self.sh.log.add_to_commit_set(id)
    }

    fn remove_from_commit_set(&mut self, id: NodeId) {
        self.sh.log.remove_from_commit_set(id);
    }

    fn release_follower(&mut self, id: NodeId) {
        self.sh.log.release(id);
    }

    fn set_required(&mut self, n: usize) {
        self.sh.log.set_required(n);
    }

    fn publish(&mut self, serving: Serving) {
        *self.sh.serving.write() = serving;
    }

    fn hold_writes(&mut self, target: Option<NodeId>, successor: Option<String>) {
        let Some(target) = target else {
            self.sh.log.release_appends(successor);
            return;
        };
        // New writes wait; those appended commit. A handoff that cannot
        // finish within this gives up and the writes go on here.
        let wait = HANDOFF_CATCH_UP.min(self.sh.settings.write_timeout());
        self.sh.log.hold_appends(wait + Duration::from_secs(1));
        let sh = self.sh.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("handoff-{}", sh.id))
            .spawn(move || {
                let ready = sh.log.wait_handoff_ready(target, Instant::now() + wait);
                sh.notify_surely(Input::HandoffReady(ready));
            });
        if spawned.is_err() {
            self.sh.notify(Input::HandoffReady(false));
        }
    }
}

/// How long a planned handoff waits for its target to hold every write.
const HANDOFF_CATCH_UP: Duration = Duration::from_secs(2);

/// How long a replica that shuts down waits for the coordinator to take it
/// out of the in-sync set (one server call, normally a millisecond).
const LEAVE_WAIT: Duration = Duration::from_secs(2);

/// How long a coordinator that handed over at shutdown keeps redirecting
/// clients before its ports close: more than the library's idle check
/// (`client::alive`, 100 ms).
const HANDOFF_LINGER: Duration = Duration::from_millis(150);

/// Performs server calls for the driver, one at a time, over one connection
/// that is re-opened after any error.
///
/// Each call goes to the list's current server. A call that fails (cannot
/// connect, IO error or timeout, or an `Unavailable` answer) moves the list
/// to the next server for the next call. When the failure was at connect
/// time, nothing was sent, so the same call is retried at once on the next
/// server: a coordinator's status push is not lost when one server dies. A
/// call that may have reached a server is never sent twice.
struct ServerLink {
    sh: Arc<Shared>,
    timeout: Duration,
    /// The open connection and the index of the server it goes to.
    conn: Option<(usize, PeerConn)>,
    /// Server switches since the last call that succeeded (the first is
    /// logged, the others while every server fails only at debug level).
    switches: usize,
}

/// Why one server call failed.
enum LinkFailure {
    /// Could not connect (or the handshake failed): the request was not sent.
    NotSent(String),
    /// The request may have reached the server.
    Failed(String),
}

impl ServerLink {
    fn new(sh: Arc<Shared>) -> ServerLink {
        let timeout = (sh.settings.server_update_interval() * 2).max(Duration::from_millis(200));
        ServerLink {
            sh,
            timeout,
            conn: None,
            switches: 0,
        }
    }

    fn run(mut self, rx: Receiver<(Call, ServerRequest)>) {
        while !self.sh.stopping() {
            let (call, req) = match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(x) => x,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                Err(_) => break,
            };
            // The lease counts from the first send, even after a retry.
            let sent = Instant::now();
            let reply = self.call(&req);
            if self
                .sh
                .inbox
                .send(Input::ServerReply { call, sent, reply })
                .is_err()
            {
                break;
            }
        }
    }

    /// One call at the current server and, if that one could not even be
    /// connected to, once more at the next.
    fn call(&mut self, req: &ServerRequest) -> std::result::Result<ServerResponse, String> {
        let servers = self.sh.server.clone();
        let (i, addr) = servers.current();
        let why = match self.call_at(i, addr, req) {
            Ok(r) => return Ok(self.answered(i, addr, r)),
            Err(f) => f,
        };
        let next = self.failed(i, addr, &why);
        let LinkFailure::NotSent(first) = why else {
            return Err(format!("server {addr}: {}", why.text()));
        };
        if next == i {
            return Err(format!("server {addr}: {first}"));
        }
        let addr2 = &servers.addrs()[next];
        match self.call_at(next, addr2, req) {
            Ok(r) => Ok(self.answered(next, addr2, r)),
            Err(f) => {
                self.failed(next, addr2, &f);
                Err(format!(
                    "server {addr}: {first}; server {addr2}: {}",
                    f.text()
                ))
            }
        }
    }

    fn answered(&mut self, i: usize, addr: &str, r: ServerResponse) -> ServerResponse {
        if self.switches > 1 {
            log::info!("server {addr} answers; using it");
        }
        self.switches = 0;
        self.sh.server.succeeded(i);
        r
    }

    /// Records a failure at server `i`: drops the connection and moves the
    /// list on. Returns the index now current.
    fn failed(&mut self, i: usize, addr: &str, why: &LinkFailure) -> usize {
        self.conn = None;
        let servers = &self.sh.server;
        let next = servers.failed(i);
        if next != i {
            self.switches += 1;
            let to = &servers.addrs()[next];
            if self.switches == 1 {
                log::warn!("server {addr} unreachable ({}); using {to}", why.text());
            } else {
                log::debug!("server {addr} unreachable ({}); using {to}", why.text());
            }
        }
        next
    }

    fn call_at(
        &mut self,
        i: usize,
        addr: &str,
        req: &ServerRequest,
    ) -> std::result::Result<ServerResponse, LinkFailure> {
        // A connection the server closed (it restarted or died) is dropped
        // before anything is written to it, so the reconnect, not the call,
        // fails.
        if self
            .conn
            .as_ref()
            .is_some_and(|(at, c)| *at != i || net::peer_closed(&c.stream))
        {
            self.conn = None;
        }
        if self.conn.is_none() {
            let c = self
                .sh
                .connect_peer(addr, ConnKind::Member, self.timeout)
                .map_err(|e| LinkFailure::NotSent(e.to_string()))?;
            self.conn = Some((i, c));
        }
        let (_, c) = self.conn.as_mut().expect("connected");
        match c.call::<_, ServerResponse>(req, wire::MAX_SERVER_FRAME) {
            Ok(ServerResponse::Error {
                kind: ErrorKind::Unavailable,
                message,
            }) => Err(LinkFailure::Failed(format!("unavailable: {message}"))),
            Ok(r) => Ok(r),
            Err(e) => Err(LinkFailure::Failed(e.to_string())),
        }
    }
}

impl LinkFailure {
    fn text(&self) -> &str {
        match self {
            LinkFailure::NotSent(s) | LinkFailure::Failed(s) => s,
        }
    }
}

fn beacon_rx(sh: Arc<Shared>, udp: UdpSocket) {
    let mut buf = [0u8; wire::MAX_BEACON_BYTES + 1];
    let key = sh.security.cluster_key.clone();
    let mut replay = ReplayGuard::new(4096);
    let mut malformed = 0u64;
    while !sh.stopping() {
        match udp.recv_from(&mut buf) {
            Ok((n, from)) => {
                let verdict = if n > wire::MAX_BEACON_BYTES {
                    Err(format!("oversized datagram ({n}+ bytes)"))
                } else {
                    admit_beacon(&sh, key.as_ref(), &mut replay, &buf[..n])
                };
                if let Err(why) = verdict {
                    malformed += 1;
                    if !sh.stopping() {
                        log_sampled(malformed, || format!("{why} from {from} dropped"));
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                log::debug!("beacon socket: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Passes one datagram to the driver if it is a beacon from a member, tagged
/// with our cluster key (when we have one) and newer than the last one from
/// that member. Forged and replayed beacons are counted; `Err` names any
/// other kind of garbage.
fn admit_beacon(
    sh: &Shared,
    key: Option<&crate::auth::ClusterKey>,
    replay: &mut ReplayGuard,
    datagram: &[u8],
) -> std::result::Result<(), String> {
    let b = match Beacon::decode(datagram, key) {
        Ok(b) => b,
        Err(WireError::Forged) => {
            let c = &sh.counters.forged_beacons;
            AuthCounters::bump(c);
            log_sampled(AuthCounters::get(c), || {
                "forged beacon dropped (wrong or missing cluster secret)".to_string()
            });
            return Ok(());
        }
        Err(e) => return Err(format!("bad datagram ({e})")),
    };
    // Only members are tracked (the core ignores anyone else), so invented
    // ids cannot fill the replay guard; members that left are forgotten.
    let is_member = |id: NodeId| sh.serving.read().members.contains(&id);
    if !is_member(b.from) {
        return Ok(());
    }
    replay.prune_when_full(is_member);
    match replay.check(b.from, b.incarnation, b.seq) {
        BeaconVerdict::Accept => sh.notify(Input::Beacon(b)),
        // Without a cluster secret anyone can send any beacon, so an old
        // sequence number proves no replay (a duplicated or reordered
        // datagram has one too): dropped, but no security alarm.
        BeaconVerdict::Replayed if key.is_none() => {
            log::debug!("stale beacon of node {} dropped", b.from);
        }
        BeaconVerdict::Replayed => {
            let c = &sh.counters.replayed_beacons;
            AuthCounters::bump(c);
            log_sampled(AuthCounters::get(c), || {
                format!("replayed beacon claiming node {} dropped", b.from)
            });
        }
    }
    Ok(())
}

/// Keys deleted by one pass of the coordinator's expiry: a bounded amount of
/// work (one entry) per pass, so expiry never crowds out client writes.
const EXPIRE_PER_PASS: usize = 256;

/// The coordinator's active expiry: every 100 ms it looks through the next
/// shard of the map for keys whose deadline passed by its clock and appends
/// their deletion ([`crate::commands::Command::Reap`], which checks each key
/// again against the latest state of the log). A pass that hit its bound
/// goes on at once. Replicas never expire keys themselves: they apply the
/// deletions as any other entry, so every replica and every restart agrees.
fn expire_loop(sh: Arc<Shared>) {
    let mut shard = 0;
    while !sh.stopping() {
        let serving = sh.serving.read().clone();
        let now = Instant::now();
        let busy = if requests::is_serving_coordinator(&serving, now)
            && sh.log.read_ready()
            && sh.store.meta().expiring > 0
        {
            let now_ms = crate::types::wall_ms();
            let keys = sh.store.expired_in_shard(shard, now_ms, EXPIRE_PER_PASS);
            let full = keys.len() == EXPIRE_PER_PASS;
            let dp = requests::DataPath {
                store: &sh.store,
                log: &sh.log,
                serving: &serving,
                settings: &sh.settings,
            };
            // Nobody waits for the deletion: the next pass finds what a
            // refused one left.
            drop(dp.reap(keys, now_ms));
            if !full {
                shard = (shard + 1) % sh.store.shard_count();
            }
            full
        } else {
            false
        };
        if !busy {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn apply_loop(sh: Arc<Shared>) {
    while !sh.stopping() {
        if !sh.log.wait_committed(Duration::from_millis(200)) {
            continue;
        }
        let _guard = sh.log.apply_guard();
        apply_available(&sh);
    }
}

/// Applies every committed entry not yet applied, answers their writers and
/// publishes the new position. Call with the apply guard held. At the
/// coordinator the ack reader that moved the commit index calls it directly,
/// and at a replica the follower thread does, saving a thread hand-off per
/// commit; the apply thread calls it when woken for what they could not take
/// (another thread held the guard, or the wal thread moved the commit).
pub(crate) fn apply_available(sh: &Shared) {
    let mut applied = false;
    while sh.log.apply_committed(&sh.store, 4096).is_some() {
        applied = true;
    }
    if applied {
        let meta = sh.store.meta();
        let last_pos = sh.log.state().last;
        sh.board.update(|b| {
            b.applied = meta.applied;
            b.digest = meta.digest;
            b.last = last_pos;
        });
    }
}

/// The data port: native clients and replication streams.
fn data_service(sh: Arc<Shared>) -> Service {
    let id = sh.id;
    Service {
        name: format!("accept-{id}"),
        conn_name: format!("conn-{id}"),
        limit: sh.conns.clone(),
        write_timeout: sh.settings.read_timeout(),
        refuse: Box::new(|stream, max| {
            let (kind, message) = net::too_many(max);
            let _ = wire::write_frame(
                &mut &*stream,
                &crate::wire::Response::Error { kind, message },
            );
        }),
        tls: sh.security.tls.clone(),
        serve: Arc::new(move |stream, conn| serve_connection(sh.clone(), stream, conn)),
    }
}

fn serve_connection(sh: Arc<Shared>, stream: net::Stream, conn: &Conn) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let _ = stream.set_nodelay(true);
    let deadlines = sh.settings.client_deadlines();
    // Until the handshake is done, silence counts against the read timeout.
    let mut reader = TimedStream::new(
        &stream,
        net::Deadlines {
            idle: deadlines.request,
            ..deadlines
        },
    );
    let accepted = match net::accept_hello(&stream, &mut reader, sh.security.cluster_key.as_ref()) {
        Ok(a) => a,
        Err(e @ (HandshakeError::AuthFailed | HandshakeError::NoCertificate(_))) => {
            let c = &sh.counters.rejected_peers;
            AuthCounters::bump(c);
            log_sampled(AuthCounters::get(c), || {
                format!("connection from {peer} refused: {e}")
            });
            return;
        }
        Err(e) => {
            if !sh.stopping() {
                log::warn!("connection from {peer} dropped: bad handshake: {e}");
            }
            return;
        }
    };
    reader.set_idle(deadlines.idle);
    match accepted.kind {
        ConnKind::Client => client_conn::serve(&sh, &stream, reader, &peer),
        ConnKind::Follow(req) => {
            // Writes under way wait for this stream's acks: a drain leaves it.
            conn.keep_through_drain();
            replication::feed(&sh, stream, req, &peer, accepted.tx, accepted.rx)
        }
        ConnKind::Member => {
            log::warn!("connection from {peer}: a node does not serve Member connections")
        }
    }
}
