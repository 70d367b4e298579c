//! The server runtime: a TCP accept thread and one thread per connection
//! ([`crate::net::listener`]; the Sentinel port, when on, is another) around
//! the [`Arbiter`], which runs every request through the sans-IO
//! [`ServerCore`] and records its decisions in the registry store (the state
//! file by default) before the reply leaves, so nothing the server
//! acknowledged is forgotten by a restart. A ticker thread lets time-driven
//! decisions happen and, with a shared store, reads what other servers
//! decided.

use crate::auth::{AuthCounters, Gate, Security, Verdict};
use crate::config::NodeSettings;
use crate::errors::{Error, Result};
use crate::net::listener::{Listener, Service};
use crate::net::{self, ConnLimit, Deadlines, HandshakeError, TimedStream};
use crate::registry::etcd::{Presence, ServerPresence};
use crate::registry::{etcd::EtcdStore, file::FileStore, Arbiter, RegistryStore};
use crate::wire::{self, AuthStats, ConnKind, ErrorKind, ServerRequest, ServerResponse, WireError};
use parking_lot::RwLock;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub listen: SocketAddr,
    pub settings: NodeSettings,
    /// Where the view is kept across restarts; `None` keeps it in memory.
    pub state_file: Option<PathBuf>,
    pub max_connections: usize,
    /// Where to answer Sentinel commands (RESP); `None` turns it off.
    pub sentinel_listen: Option<SocketAddr>,
    /// Where to serve Prometheus metrics (`GET /metrics`); `None`: off.
    pub metrics_listen: Option<SocketAddr>,
    /// The name Sentinel clients ask for (`master_for('dkv')`).
    pub cluster_name: String,
    /// Cluster secret and client password.
    pub security: Security,
    /// The operator's choice for a server that lost its state and cannot
    /// prove a coordinator safe: appoint the most complete reporting node.
    pub recover_from_nodes: bool,
    /// HA: keep the registry in etcd (shared with other servers) instead of
    /// the state file.
    pub etcd: Option<EtcdRegistry>,
}

/// Where an HA registry lives.
#[derive(Clone)]
pub struct EtcdRegistry {
    pub etcd: Arc<crate::etcd::Etcd>,
    /// Key prefix, ending in `/`.
    pub prefix: String,
}

impl std::fmt::Debug for EtcdRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "etcd {} under {}",
            self.etcd.endpoints().join(","),
            self.prefix
        )
    }
}

struct Shared {
    arbiter: Arbiter,
    shutdown: AtomicBool,
    conns: ConnLimit,
    security: Security,
    counters: Arc<AuthCounters>,
    deadlines: Deadlines,
    metrics: Arc<crate::metrics::ServerCounters>,
}

impl Shared {
    fn auth_stats(&self) -> AuthStats {
        AuthStats {
            cluster_secret: self.security.cluster_key.is_some(),
            forged_beacons: 0,
            replayed_beacons: 0,
            rejected_peers: AuthCounters::get(&self.counters.rejected_peers)
                + crate::tls::refused_certs(),
            failed_client_auth: AuthCounters::get(&self.counters.failed_auth),
        }
    }
}

pub struct Server {
    shared: Arc<Shared>,
    addr: SocketAddr,
    sentinel_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    /// The other servers' Sentinel addresses (`SENTINEL sentinels`).
    sentinel_peers: Arc<RwLock<Vec<String>>>,
    /// The server port and, when on, the Sentinel port.
    listeners: Vec<Listener>,
    ticker: Option<JoinHandle<()>>,
    /// With the Sentinel port: the thread announcing `+switch-master`.
    notifier: Option<crate::sentinel::Notifier>,
}

/// Longest a stopping server lets requests under way finish before it cuts
/// every connection.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

impl Server {
    pub fn start(opts: ServerOptions) -> Result<Server> {
        let store: Box<dyn RegistryStore> = match &opts.etcd {
            Some(reg) => Box::new(EtcdStore::new(reg.etcd.clone(), &reg.prefix)),
            None => Box::new(
                FileStore::open(opts.state_file.clone())
                    .map_err(|e| Error::Config(e.to_string()))?,
            ),
        };
        Server::start_with(opts, store)
    }

    /// Starts a server over `store` (the state file, or a shared store).
    pub fn start_with(opts: ServerOptions, store: Box<dyn RegistryStore>) -> Result<Server> {
        let settings = opts.settings.clone();
        let recover = opts.recover_from_nodes;
        let shared_store = store.shared();
        let mut store = Some(store);
        let mut arbiter = None;
        // A shared store may be electing a leader just now: keep trying.
        let give_up = Instant::now() + Duration::from_secs(if shared_store { 15 } else { 0 });
        while arbiter.is_none() {
            match Arbiter::open(store.take().expect("store"), Instant::now, |view, now| {
                crate::registry::new_core(&settings, recover, view, now)
            }) {
                Ok(a) => arbiter = Some(a),
                Err((e, back)) if Instant::now() < give_up => {
                    log::warn!("{e}; trying again");
                    store = Some(back);
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err((e, _)) => return Err(Error::Config(e.to_string())),
            }
        }
        let arbiter = arbiter.expect("opened");
        log::info!("registry: {}", arbiter.describe());
        let listener = net::listen(opts.listen)?;
        let addr = listener.local_addr()?;
        let metrics_listener = opts.metrics_listen.map(net::listen).transpose()?;
        let shared = Arc::new(Shared {
            arbiter,
            shutdown: AtomicBool::new(false),
            conns: ConnLimit::new(opts.max_connections),
            counters: Arc::new(AuthCounters::default()),
            deadlines: Deadlines {
                idle: Duration::from_secs(300),
                request: Duration::from_millis(opts.settings.read_timeout),
            },
            security: opts.security.clone(),
            metrics: Default::default(),
        });
        opts.security.warn_if_open("server");
        net::raise_fd_limit();
        let mut listeners = vec![Listener::start(listener, service(shared.clone()))?];
        log::info!("server listening on {addr}");
        let sentinel_peers = Arc::new(RwLock::new(Vec::new()));
        let mut notifier = None;
        let sentinel_addr = match opts.sentinel_listen {
            Some(a) => {
                let l = net::listen(a)?;
                let sa = l.local_addr()?;
                let ctx = Arc::new(crate::sentinel::Context {
                    core: shared.arbiter.core(),
                    name: opts.cluster_name.clone(),
                    conns: shared.conns.clone(),
                    password: opts.security.password.clone(),
                    tls: opts.security.tls.clone(),
                    counters: shared.counters.clone(),
                    deadlines: shared.deadlines,
                    peers: sentinel_peers.clone(),
                    subscribers: Default::default(),
                });
                let (n, hook) = crate::sentinel::Notifier::start(ctx.clone());
                shared.arbiter.on_view_change(hook);
                notifier = Some(n);
                listeners.push(Listener::start(l, crate::sentinel::service(ctx))?);
                log::info!(
                    "sentinel discovery on {sa} for cluster '{}'",
                    opts.cluster_name
                );
                Some(sa)
            }
            None => None,
        };
        let metrics_addr = match metrics_listener {
            Some(l) => {
                let a = l.local_addr()?;
                let reg = crate::metrics::registry(crate::metrics::ServerCollector {
                    core: shared.arbiter.core(),
                    counters: shared.metrics.clone(),
                    conns: listeners[0].live_count(),
                    sentinel: sentinel_addr.map(|_| listeners[1].live_count()),
                });
                let tls = opts.security.tls.clone();
                let scheme = if tls.is_some() { "https" } else { "http" };
                listeners.push(crate::metrics::start(l, "server", reg, tls)?);
                log::info!("metrics on {scheme}://{a}/metrics");
                Some(a)
            }
            None => None,
        };
        let presence = opts.etcd.as_ref().map(|reg| {
            Presence::new(
                reg.etcd.clone(),
                &reg.prefix,
                ServerPresence {
                    addr: addr.to_string(),
                    sentinel: sentinel_addr.map(|a| a.to_string()),
                },
            )
        });
        let sh = shared.clone();
        let every = (opts.settings.heartbeat() / 2).max(Duration::from_millis(5));
        let refresh_every = crate::registry::refresh_interval(&opts.settings);
        let peers = sentinel_peers.clone();
        let ticker = std::thread::Builder::new()
            .name("server-tick".into())
            .spawn(move || tick_loop(sh, every, refresh_every, presence, peers))
            .expect("spawn ticker");
        Ok(Server {
            shared,
            addr,
            sentinel_addr,
            metrics_addr,
            sentinel_peers,
            listeners,
            ticker: Some(ticker),
            notifier,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn sentinel_addr(&self) -> Option<SocketAddr> {
        self.sentinel_addr
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Replaces the Sentinel addresses ("host:port") of the other servers
    /// sharing this registry, which `SENTINEL sentinels` lists.
    pub fn set_sentinel_peers(&self, peers: Vec<String>) {
        *self.sentinel_peers.write() = peers;
    }

    /// Stops every thread and waits for them: the server and Sentinel
    /// ports stop accepting; each connection answers the request it is
    /// serving and ends (idle ones at once), for at most [`DRAIN_GRACE`];
    /// then every connection left is shut down, and the connection threads
    /// and the ticker are joined. With etcd, the ticker withdraws this
    /// server's presence record as it ends.
    pub fn shutdown(mut self) {
        log::info!("server {}: shutting down", self.addr);
        for l in &mut self.listeners {
            l.stop_accepting();
        }
        let deadline = Instant::now() + DRAIN_GRACE;
        for l in &self.listeners {
            l.drain();
        }
        for l in &self.listeners {
            if !l.wait_drained(deadline) {
                log::info!(
                    "connections still busy after {} ms; closing them",
                    DRAIN_GRACE.as_millis()
                );
            }
        }
        self.shared.shutdown.store(true, Ordering::Release);
        for l in &mut self.listeners {
            l.close();
        }
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        if let Some(n) = self.notifier.take() {
            n.stop();
        }
        log::info!("server {}: stopped", self.addr);
    }
}

/// Lets the arbiter decide what time decides and read what other servers
/// decided; with etcd, also keeps this server's presence record and the
/// list of the other servers' Sentinel ports up to date (every second).
fn tick_loop(
    sh: Arc<Shared>,
    every: Duration,
    refresh_every: Duration,
    mut presence: Option<Presence>,
    peers: Arc<RwLock<Vec<String>>>,
) {
    let mut failing = false;
    let mut next_presence = Instant::now();
    let mut next_refresh = Instant::now();
    while !sh.shutdown.load(Ordering::Acquire) {
        std::thread::sleep(every);
        // Other servers' decisions are read every `refresh_every`; grants
        // and rejoins read the store themselves, and every decision is a
        // compare-and-swap, so this only bounds how stale lookups are.
        let refresh = Instant::now() >= next_refresh;
        if refresh {
            next_refresh = Instant::now() + refresh_every;
        }
        let ticked = if refresh {
            sh.arbiter.tick(&Instant::now)
        } else {
            sh.arbiter.tick_local(&Instant::now)
        };
        match ticked {
            Ok(()) => {
                if failing {
                    log::info!("registry reachable again");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    log::warn!("{e}; changes are refused until it answers again");
                }
                failing = true;
            }
        }
        if let Some(p) = presence
            .as_mut()
            .filter(|_| Instant::now() >= next_presence)
        {
            next_presence = Instant::now() + Duration::from_secs(1);
            match p.refresh() {
                Ok(others) => {
                    let list: Vec<String> = others.into_iter().filter_map(|o| o.sentinel).collect();
                    *peers.write() = list;
                }
                Err(e) => log::debug!("server presence in etcd: {e}"),
            }
        }
    }
    if let Some(mut p) = presence {
        p.withdraw();
    }
}

/// The server port: members (nodes, other servers' peers) and clients.
fn service(sh: Arc<Shared>) -> Service {
    Service {
        name: "server-accept".into(),
        conn_name: "server-conn".into(),
        limit: sh.conns.clone(),
        write_timeout: sh.deadlines.request,
        refuse: Box::new(|stream, max| {
            let (kind, message) = net::too_many(max);
            let _ = wire::write_frame(&mut &*stream, &ServerResponse::Error { kind, message });
        }),
        tls: sh.security.tls.clone(),
        serve: Arc::new(move |stream, _| serve(&sh, stream)),
    }
}

fn serve(sh: &Shared, stream: crate::net::Stream) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let _ = stream.set_nodelay(true);
    let mut reader = TimedStream::new(
        &stream,
        Deadlines {
            idle: sh.deadlines.request,
            ..sh.deadlines
        },
    );
    let key = sh.security.cluster_key.as_ref();
    let net::Accepted {
        kind,
        mut tx,
        mut rx,
    } = match net::accept_hello(&stream, &mut reader, key) {
        Ok(a) => a,
        Err(e @ (HandshakeError::AuthFailed | HandshakeError::NoCertificate(_))) => {
            AuthCounters::bump(&sh.counters.rejected_peers);
            let c = AuthCounters::get(&sh.counters.rejected_peers);
            crate::auth::log_sampled(c, || format!("server connection from {peer} refused: {e}"));
            return;
        }
        Err(e) => {
            if !sh.shutdown.load(Ordering::Acquire) {
                log::warn!("server connection from {peer} dropped: bad handshake: {e}");
            }
            return;
        }
    };
    let member = match kind {
        ConnKind::Client => false,
        ConnKind::Member => true,
        ConnKind::Follow(req) => {
            log::warn!(
                "server connection from {peer}: node {} asked for a replication stream, which only a coordinator serves; this is the server's port",
                req.node_id
            );
            return;
        }
    };
    // A member proved the cluster secret; a client proves the password.
    // Until then it gets small frames and no more silence than read-timeout.
    let mut gate = if member {
        Gate::trusted()
    } else {
        Gate::new(sh.security.password.clone())
    };
    if gate.is_authenticated() {
        reader.set_idle(sh.deadlines.idle);
    }
    loop {
        let max = gate.max_frame(wire::MAX_SERVER_FRAME);
        let req: ServerRequest = match rx.read(&mut reader, max) {
            Ok(r) => r,
            Err(WireError::Closed) => return,
            Err(WireError::Forged) => {
                AuthCounters::bump(&sh.counters.rejected_peers);
                log::warn!(
                    "server connection from {peer}: {}; closing",
                    WireError::Forged
                );
                return;
            }
            Err(e @ (WireError::TooLarge { .. } | WireError::Malformed(_))) => {
                log::warn!("server connection from {peer}: {e}; closing");
                let message = match &e {
                    WireError::TooLarge { .. } if !gate.is_authenticated() => {
                        crate::auth::unauthenticated_too_large(&e)
                    }
                    e => e.to_string(),
                };
                let _ = tx.write(
                    &mut &stream,
                    &ServerResponse::Error {
                        kind: ErrorKind::BadRequest,
                        message,
                    },
                );
                return;
            }
            Err(e) => {
                log::debug!("server connection from {peer}: {e}");
                if e.is_timeout() && reader.in_request() {
                    let message = e.to_string();
                    let kind = ErrorKind::BadRequest;
                    let _ = tx.write(&mut &stream, &ServerResponse::Error { kind, message });
                }
                return;
            }
        };
        reader.request_done();
        let refusal = |kind, message: &str| ServerResponse::Error {
            kind,
            message: message.to_string(),
        };
        let resp = match req {
            ServerRequest::Auth { .. } if member => ServerResponse::Authenticated,
            ServerRequest::Auth { password } => {
                let wrong = || format!("server connection from {peer}: wrong client password");
                match gate.admit(&password, &sh.counters, wrong) {
                    Verdict::NoPasswordSet => {
                        refusal(ErrorKind::BadRequest, crate::auth::NO_PASSWORD_SET)
                    }
                    Verdict::Admitted => {
                        reader.set_idle(sh.deadlines.idle);
                        ServerResponse::Authenticated
                    }
                    Verdict::Refused => refusal(ErrorKind::AuthFailed, crate::auth::WRONG_PASSWORD),
                }
            }
            req if req.is_member_only() && !member => refusal(
                ErrorKind::AuthFailed,
                "only cluster members may send this request (a Member connection, with the cluster secret when one is set)",
            ),
            _ if !gate.is_authenticated() => refusal(ErrorKind::AuthRequired, crate::auth::AUTH_REQUIRED),
            req => handle(sh, req),
        };
        if tx.write(&mut &stream, &resp).is_err() || gate.exhausted() {
            return;
        }
    }
}

fn handle(sh: &Shared, req: ServerRequest) -> ServerResponse {
    let kind = crate::metrics::ServerCounters::kind(&req);
    sh.metrics.counted(
        kind,
        match sh.arbiter.handle(&Instant::now, req) {
            ServerResponse::View(mut v) => {
                v.auth = sh.auth_stats();
                ServerResponse::View(v)
            }
            other => other,
        },
    )
}
