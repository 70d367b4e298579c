//! Sentinel-style discovery on the server: a RESP port that answers the
//! subset of Redis Sentinel commands clients use to find the primary, so
//! Sentinel-aware Redis libraries (redis-py's `Sentinel`, ioredis, Lettuce,
//! ...) find the coordinator's RESP address, and the new one after a
//! failover.
//!
//! Commands: `SENTINEL get-master-addr-by-name|masters|master|replicas|slaves|sentinels`,
//! `PING`, `INFO`, `HELLO [2|3]` (RESP3 per connection, as on a node),
//! `CLIENT`, and pub/sub: `SUBSCRIBE` / `PSUBSCRIBE` / `UNSUBSCRIBE` /
//! `PUNSUBSCRIBE` / `PING` / `RESET` / `QUIT`. The coordinator is flagged
//! `s_down` while its lease has run out (a failover is under way), which
//! makes clients ask again.
//! `SENTINEL sentinels` lists the Sentinel ports of the *other* servers of the
//! registry ([`Context::peers`]), as Redis Sentinel lists the other sentinels,
//! so a client given one sentinel can learn the rest.
//!
//! ## `+switch-master`
//!
//! Clients that keep a connection to a Sentinel (ioredis, Lettuce) subscribe
//! to `+switch-master` and reconnect when it says
//! `<name> <old-ip> <old-port> <new-ip> <new-port>`. Delivery, with blocking
//! connection threads:
//!
//! * a connection that subscribes puts a clone of its socket, under a mutex
//!   of its own, into [`Subscribers`]; from then on the connection thread
//!   writes its replies under that mutex too ([`Handler::write_out`]), so a
//!   message never lands inside a reply;
//! * the registry's [`Arbiter`](crate::registry::Arbiter) calls a hook after
//!   every change of the view it adopts (a grant this server decided, or one
//!   another server of an HA registry decided and this one read); the hook
//!   only wakes the [`Notifier`] thread (a bounded channel of one, so wakes
//!   coalesce and the registry never waits);
//! * the notifier reads the view, and when the coordinator's RESP address
//!   differs from the one it last announced, writes the message to every
//!   subscriber whose channels or patterns match, one after the other. Each
//!   socket has the port's write timeout, so a subscriber that stopped
//!   reading delays the others by at most that once: its write fails, its
//!   socket is shut down and it leaves the registry (its client reconnects).
//!
//! A subscribed connection has no idle timeout (as in Redis); it ends when
//! the client closes it, unsubscribes from everything and goes idle, or the
//! server stops.

use crate::core::server::ServerCore;
use crate::net::listener::Service;
use crate::resp::{AuthGate, Gated, Handler, Limits, Reply, RESP2};
use crate::types::Role;
use crate::wire::{ClusterView, MemberInfo};
use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the Sentinel port shares with the server.
pub(crate) struct Context {
    pub core: Arc<Mutex<ServerCore>>,
    pub name: String,
    pub conns: crate::net::ConnLimit,
    pub password: Option<crate::auth::Password>,
    pub tls: Option<Arc<crate::tls::Tls>>,
    pub counters: Arc<crate::auth::AuthCounters>,
    pub deadlines: crate::net::Deadlines,
    /// "host:port" Sentinel addresses of the other servers sharing this
    /// registry (empty for a single server); replaced as servers come and go.
    pub peers: Arc<RwLock<Vec<String>>>,
    /// The connections in subscribed mode.
    pub subscribers: Subscribers,
}

/// The Sentinel port (see [`crate::net::listener`]).
pub(crate) fn service(ctx: Arc<Context>) -> Service {
    Service {
        name: "sentinel-accept".into(),
        conn_name: "sentinel-conn".into(),
        limit: ctx.conns.clone(),
        write_timeout: ctx.deadlines.request,
        refuse: Box::new(|stream, _| {
            let _ =
                std::io::Write::write_all(&mut &*stream, b"-ERR max number of clients reached\r\n");
        }),
        tls: ctx.tls.clone(),
        serve: Arc::new(move |stream, _| serve(&ctx, stream)),
    }
}

fn serve(ctx: &Context, stream: crate::net::Stream) {
    let limits = Limits {
        max_bulk: 4096,
        max_args: 64,
        max_inline: 4096,
        max_command: 64 * 1024,
    };
    let mut conn = Conn {
        ctx,
        stream: &stream,
        gate: AuthGate::new(ctx.password.clone()),
        proto: RESP2,
        id: crate::resp::next_client_id(),
        name: None,
        sub: None,
        subscribed: false,
    };
    let _ = crate::resp::serve(&stream, || limits, ctx.deadlines, &mut conn, || false);
}

/// The channel Redis Sentinel announces a new primary on.
pub const SWITCH_MASTER: &[u8] = b"+switch-master";

/// The connections in subscribed mode, by connection id.
#[derive(Default)]
pub(crate) struct Subscribers(Mutex<HashMap<u64, Arc<Subscriber>>>);

/// One subscribed connection.
pub(crate) struct Subscriber {
    /// A clone of the connection's socket; whoever writes to the connection
    /// (its own thread or the notifier) holds this lock.
    out: Mutex<crate::net::Stream>,
    state: Mutex<Subscriptions>,
}

#[derive(Default)]
struct Subscriptions {
    proto: u8,
    channels: BTreeSet<Vec<u8>>,
    patterns: BTreeSet<Vec<u8>>,
}

impl Subscriptions {
    fn count(&self) -> usize {
        self.channels.len() + self.patterns.len()
    }

    /// The messages that `payload` on `channel` makes for this connection.
    fn messages(&self, channel: &[u8], payload: &[u8]) -> Vec<Reply> {
        let b = |x: &[u8]| Reply::Bulk(x.to_vec());
        let mut out = Vec::new();
        if self.channels.contains(channel) {
            out.push(Reply::Push(vec![b(b"message"), b(channel), b(payload)]));
        }
        for p in &self.patterns {
            if crate::resp::glob_match(p, channel, false) {
                out.push(Reply::Push(vec![
                    b(b"pmessage"),
                    b(p),
                    b(channel),
                    b(payload),
                ]));
            }
        }
        out
    }
}

impl Subscribers {
    /// Sends `payload` on `channel` to every subscriber of it; one whose
    /// write fails is shut down and removed. Returns how many got it.
    pub fn publish(&self, channel: &[u8], payload: &[u8]) -> usize {
        let all: Vec<(u64, Arc<Subscriber>)> = self
            .0
            .lock()
            .iter()
            .map(|(&id, s)| (id, s.clone()))
            .collect();
        let mut delivered = 0;
        for (id, s) in all {
            let bytes = {
                let st = s.state.lock();
                Reply::Many(st.messages(channel, payload)).to_bytes(st.proto)
            };
            if bytes.is_empty() {
                continue;
            }
            let mut out = s.out.lock();
            if out.write_all(&bytes).is_ok() {
                delivered += 1;
            } else {
                log::info!("Sentinel subscriber {id} does not take messages; closing it");
                let _ = out.shutdown(std::net::Shutdown::Both);
                drop(out);
                self.0.lock().remove(&id);
            }
        }
        delivered
    }
}

/// The thread that announces `+switch-master` (see the module doc).
pub(crate) struct Notifier {
    stop: Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Notifier {
    /// Starts the thread; returns it and the hook that wakes it, for
    /// [`crate::registry::Arbiter::on_view_change`].
    pub fn start(ctx: Arc<Context>) -> (Notifier, Box<dyn Fn() + Send + Sync>) {
        let (wake_tx, wake_rx) = bounded::<()>(1);
        let (stop_tx, stop_rx) = bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("sentinel-notify".into())
            .spawn(move || notify_loop(&ctx, &wake_rx, &stop_rx))
            .expect("spawn the Sentinel notifier");
        let hook = Box::new(move || {
            // Full: a wake is pending already, which reads the newest view.
            let _ = wake_tx.try_send(());
        });
        (
            Notifier {
                stop: stop_tx,
                thread: Some(thread),
            },
            hook,
        )
    }

    /// Stops the thread and waits for it (as dropping it does).
    pub fn stop(self) {}
}

impl Drop for Notifier {
    fn drop(&mut self) {
        let _ = self.stop.try_send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The coordinator's RESP address in the core's view now.
fn current_master(core: &Mutex<ServerCore>) -> Option<String> {
    let view = core.lock().view(Instant::now());
    coordinator(&view).and_then(|m| m.resp_addr.clone())
}

fn notify_loop(ctx: &Context, wake: &Receiver<()>, stop: &Receiver<()>) {
    let mut announced = current_master(&ctx.core);
    loop {
        crossbeam_channel::select! {
            recv(stop) -> _ => return,
            recv(wake) -> r => if r.is_err() { return },
        }
        let Some(now) = current_master(&ctx.core) else {
            continue;
        };
        if let Some(old) = announced.as_deref().filter(|&old| old != now) {
            let (oh, op) = split(old);
            let (nh, np) = split(&now);
            let msg = format!("{} {oh} {op} {nh} {np}", ctx.name);
            let n = ctx.subscribers.publish(SWITCH_MASTER, msg.as_bytes());
            log::info!("+switch-master {msg} (to {n} subscribers)");
        }
        announced = Some(now);
    }
}

/// One Sentinel connection.
struct Conn<'a> {
    ctx: &'a Context,
    stream: &'a crate::net::Stream,
    gate: AuthGate,
    proto: u8,
    id: u64,
    name: Option<Vec<u8>>,
    /// The connection's entry for the notifier, from its first SUBSCRIBE
    /// on; kept after it unsubscribed, so its writes stay under the lock a
    /// notifier still writing holds.
    sub: Option<Arc<Subscriber>>,
    /// Whether it is in subscribed mode (in [`Subscribers`]).
    subscribed: bool,
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if self.subscribed {
            self.ctx.subscribers.0.lock().remove(&self.id);
        }
    }
}

impl Handler for Conn<'_> {
    type Pending = std::convert::Infallible;

    fn handle(&mut self, args: &[Vec<u8>]) -> (crate::resp::Answer<Self::Pending>, bool) {
        let (reply, close) = self.answer(args);
        (crate::resp::Answer::Now(reply), close)
    }

    fn proto(&self) -> u8 {
        self.proto
    }

    fn write_out(&mut self, stream: &crate::net::Stream, bytes: &[u8]) -> std::io::Result<()> {
        match &self.sub {
            Some(s) => s.out.lock().write_all(bytes),
            None => (&*stream).write_all(bytes),
        }
    }

    fn idle(&self) -> Option<Duration> {
        // Subscribers wait for messages as long as they like.
        self.subscribed
            .then_some(Duration::from_secs(365 * 24 * 3600))
    }
}

impl Conn<'_> {
    /// `SENTINEL FAILOVER <name>`: the coordinator hands its role to its most
    /// up-to-date in-sync replica (a planned handoff); `+OK` once it did, as
    /// Redis Sentinel answers once a failover started.
    fn failover(&self) -> Reply {
        let view = self.ctx.core.lock().view(Instant::now());
        let Some(addr) = view.coordinator_addr().map(str::to_string) else {
            return Reply::err("NOGOODSLAVE No coordinator to fail over from");
        };
        let opts = crate::ClientOptions {
            password: self.gate.password.clone(),
            tls: self.ctx.tls.as_ref().map(|t| t.client()),
            ..Default::default()
        };
        match crate::Client::hand_over_at(&addr, None, opts) {
            Ok(()) => Reply::ok(),
            Err(e) => Reply::err(format!("NOGOODSLAVE {e}")),
        }
    }

    fn answer(&mut self, args: &[Vec<u8>]) -> (Reply, bool) {
        let ctx = self.ctx;
        let wrong = || "Sentinel client: wrong password".to_string();
        if let Gated::Answer { reply, close } = self.gate.check(args, &ctx.counters, wrong) {
            return (reply, close);
        }
        let cmd = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
        if cmd == "SENTINEL"
            && args.len() == 3
            && args[1].eq_ignore_ascii_case(b"FAILOVER")
            && args[2] == ctx.name.as_bytes()
        {
            return (self.failover(), false);
        }
        let subscribed = self.subscribed;
        if subscribed
            && self.proto == RESP2
            && !matches!(
                cmd.as_str(),
                "SUBSCRIBE"
                    | "PSUBSCRIBE"
                    | "UNSUBSCRIBE"
                    | "PUNSUBSCRIBE"
                    | "PING"
                    | "QUIT"
                    | "RESET"
            )
        {
            return (
                Reply::err(format!(
                    "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
                    cmd.to_ascii_lowercase()
                )),
                false,
            );
        }
        let reply = match cmd.as_str() {
            "QUIT" => return (Reply::ok(), true),
            "PING" if subscribed && self.proto == RESP2 => Reply::Array(vec![
                Reply::text("pong"),
                Reply::Bulk(args.get(1).cloned().unwrap_or_default()),
            ]),
            "PING" if args.len() == 2 => Reply::Bulk(args[1].clone()),
            "HELLO" => match crate::resp::parse_hello(args) {
                Err(e) => e,
                Ok(h) => {
                    if let Some(p) = h.proto {
                        self.set_proto(p);
                    }
                    if let Some(n) = h.setname {
                        self.name = (!n.is_empty()).then_some(n);
                    }
                    crate::resp::hello_reply(self.proto, self.id, "sentinel", None)
                }
            },
            "CLIENT" => self.client(args),
            "RESET" => {
                self.unsubscribe(false, &[]);
                self.unsubscribe(true, &[]);
                self.set_proto(RESP2);
                self.name = None;
                Reply::Simple("RESET".into())
            }
            "SUBSCRIBE" | "PSUBSCRIBE" if args.len() < 2 => wrong_args(&cmd),
            "SUBSCRIBE" => self.subscribe(false, &args[1..]),
            "PSUBSCRIBE" => self.subscribe(true, &args[1..]),
            "UNSUBSCRIBE" => self.unsubscribe(false, &args[1..]),
            "PUNSUBSCRIBE" => self.unsubscribe(true, &args[1..]),
            _ => {
                let (view, down) = {
                    let c = ctx.core.lock();
                    let now = Instant::now();
                    (c.view(now), c.lease_expired(now))
                };
                let peers = ctx.peers.read().clone();
                handle(args, &ctx.name, &view, down, &peers)
            }
        };
        (reply, false)
    }

    fn set_proto(&mut self, p: u8) {
        self.proto = p;
        if let Some(s) = &self.sub {
            s.state.lock().proto = p;
        }
    }

    fn client(&mut self, args: &[Vec<u8>]) -> Reply {
        let sub = args
            .get(1)
            .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase());
        match (sub.as_deref(), args.len()) {
            (Some("ID"), 2) => Reply::Int(self.id as i64),
            (Some("GETNAME"), 2) => self.name.clone().map(Reply::Bulk).unwrap_or(Reply::Nil),
            (Some("SETNAME"), 3) => match crate::resp::check_client_name(&args[2]) {
                Err(e) => e,
                Ok(()) => {
                    self.name = (!args[2].is_empty()).then(|| args[2].clone());
                    Reply::ok()
                }
            },
            // SETINFO, NO-EVICT and the like change nothing here.
            _ => Reply::ok(),
        }
    }

    /// `SUBSCRIBE` / `PSUBSCRIBE`: one confirmation per name, with the
    /// connection's count of subscriptions after it.
    fn subscribe(&mut self, pattern: bool, names: &[Vec<u8>]) -> Reply {
        let sub = match &self.sub {
            Some(s) => s.clone(),
            None => {
                let out = match self.stream.try_clone() {
                    Ok(o) => o,
                    Err(e) => return Reply::err(format!("ERR cannot subscribe: {e}")),
                };
                let s = Arc::new(Subscriber {
                    out: Mutex::new(out),
                    state: Mutex::new(Subscriptions {
                        proto: self.proto,
                        ..Default::default()
                    }),
                });
                self.sub = Some(s.clone());
                s
            }
        };
        if !self.subscribed {
            self.ctx.subscribers.0.lock().insert(self.id, sub.clone());
            self.subscribed = true;
        }
        let kind: &[u8] = if pattern { b"psubscribe" } else { b"subscribe" };
        let mut st = sub.state.lock();
        let mut replies = Vec::new();
        for n in names {
            if pattern {
                st.patterns.insert(n.clone());
            } else {
                st.channels.insert(n.clone());
            }
            replies.push(Reply::Push(vec![
                Reply::Bulk(kind.to_vec()),
                Reply::Bulk(n.clone()),
                Reply::Int(st.count() as i64),
            ]));
        }
        Reply::Many(replies)
    }

    /// `UNSUBSCRIBE` / `PUNSUBSCRIBE` of `names`, or of everything; leaves
    /// subscribed mode when nothing is left. Each confirmation carries the
    /// count left after it, as in Redis.
    fn unsubscribe(&mut self, pattern: bool, names: &[Vec<u8>]) -> Reply {
        let kind: &[u8] = if pattern {
            b"punsubscribe"
        } else {
            b"unsubscribe"
        };
        let confirm = |name: Reply, count: usize| {
            Reply::Push(vec![
                Reply::Bulk(kind.to_vec()),
                name,
                Reply::Int(count as i64),
            ])
        };
        let none = Mutex::new(Subscriptions::default());
        let mut st = match &self.sub {
            Some(s) => s.state.lock(),
            None => none.lock(),
        };
        let names: Vec<Vec<u8>> = match (names.is_empty(), pattern) {
            (true, true) => st.patterns.iter().cloned().collect(),
            (true, false) => st.channels.iter().cloned().collect(),
            (false, _) => names.to_vec(),
        };
        let mut replies = Vec::new();
        if names.is_empty() {
            replies.push(confirm(Reply::Nil, st.count()));
        }
        for n in names {
            if pattern {
                st.patterns.remove(&n);
            } else {
                st.channels.remove(&n);
            }
            replies.push(confirm(Reply::Bulk(n), st.count()));
        }
        let left = st.count();
        drop(st);
        if left == 0 && self.subscribed {
            self.ctx.subscribers.0.lock().remove(&self.id);
            self.subscribed = false;
        }
        Reply::Many(replies)
    }
}

fn wrong_args(cmd: &str) -> Reply {
    Reply::err(format!(
        "ERR wrong number of arguments for '{}' command",
        cmd.to_ascii_lowercase()
    ))
}

fn split(addr: &str) -> (String, String) {
    match addr.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.to_string()),
        None => (addr.to_string(), "0".into()),
    }
}

/// A Sentinel state entry: a map in RESP3, field/value pairs in RESP2.
fn flat(pairs: Vec<(&str, String)>) -> Reply {
    Reply::map(pairs.into_iter().map(|(k, v)| (k, Reply::text(v))))
}

fn coordinator(view: &ClusterView) -> Option<&MemberInfo> {
    view.coordinator
        .and_then(|c| view.member(c))
        .filter(|m| m.resp_addr.is_some())
}

fn replicas(view: &ClusterView) -> Vec<&MemberInfo> {
    view.members
        .iter()
        .filter(|m| Some(m.node_id) != view.coordinator && m.resp_addr.is_some())
        .collect()
}

fn master_info(name: &str, view: &ClusterView, down: bool, peers: &[String]) -> Option<Reply> {
    let m = coordinator(view)?;
    let (ip, port) = split(m.resp_addr.as_deref().expect("filtered"));
    let flags = if down { "master,s_down" } else { "master" };
    Some(flat(vec![
        ("name", name.to_string()),
        ("ip", ip),
        ("port", port),
        ("runid", format!("dkv-node-{}", m.node_id)),
        ("flags", flags.into()),
        ("num-slaves", replicas(view).len().to_string()),
        ("num-other-sentinels", peers.len().to_string()),
        ("quorum", "1".into()),
        ("config-epoch", view.epoch.to_string()),
    ]))
}

/// A stable 40-hex-digit run id for a Sentinel address (Redis Sentinel names
/// its peers by run id; we do not know the peers' own, so derive one).
fn peer_runid(addr: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(format!("dkv-sentinel {addr}").as_bytes());
    d.iter().take(20).map(|b| format!("{b:02x}")).collect()
}

/// One entry of `SENTINEL sentinels`, with the fields Redis Sentinel gives
/// (name, ip, port, runid, flags, link and ping state, last hello, vote).
fn sentinel_info(addr: &str) -> Reply {
    let (ip, port) = split(addr);
    let runid = peer_runid(addr);
    flat(vec![
        ("name", runid.clone()),
        ("ip", ip),
        ("port", port),
        ("runid", runid),
        ("flags", "sentinel".into()),
        ("link-pending-commands", "0".into()),
        ("link-refcount", "1".into()),
        ("last-ping-sent", "0".into()),
        ("last-ok-ping-reply", "0".into()),
        ("last-ping-reply", "0".into()),
        ("last-hello-message", "0".into()),
        ("voted-leader", "?".into()),
        ("voted-leader-epoch", "0".into()),
    ])
}

fn handle(args: &[Vec<u8>], name: &str, view: &ClusterView, down: bool, peers: &[String]) -> Reply {
    let up = |b: &[u8]| String::from_utf8_lossy(b).to_ascii_uppercase();
    match up(&args[0]).as_str() {
        "PING" => Reply::Simple("PONG".into()),
        "INFO" => {
            let addr = coordinator(view)
                .and_then(|m| m.resp_addr.clone())
                .unwrap_or_default();
            let status = if down || addr.is_empty() {
                "sdown"
            } else {
                "ok"
            };
            Reply::Verbatim(
                format!(
                    "# Sentinel\r\nsentinel_masters:1\r\nsentinel_tilt:0\r\nsentinel_running_scripts:0\r\n\
                     master0:name={name},status={status},address={addr},slaves={},sentinels={}\r\n",
                    replicas(view).len(),
                    peers.len() + 1
                ),
            )
        }
        "SENTINEL" if args.len() >= 2 => {
            let sub = up(&args[1]);
            let asked = args.get(2).map(|a| String::from_utf8_lossy(a).into_owned());
            let known = asked.as_deref() == Some(name);
            match sub.as_str() {
                "MASTERS" => {
                    Reply::Array(master_info(name, view, down, peers).into_iter().collect())
                }
                "MASTER" if known => master_info(name, view, down, peers)
                    .unwrap_or_else(|| Reply::err("ERR No such master with that name")),
                "GET-MASTER-ADDR-BY-NAME" if known => match coordinator(view) {
                    Some(m) => {
                        let (ip, port) = split(m.resp_addr.as_deref().expect("filtered"));
                        Reply::Array(vec![
                            Reply::Bulk(ip.into_bytes()),
                            Reply::Bulk(port.into_bytes()),
                        ])
                    }
                    None => Reply::Nil,
                },
                "GET-MASTER-ADDR-BY-NAME" => Reply::Nil,
                "REPLICAS" | "SLAVES" if known => {
                    let master = coordinator(view)
                        .and_then(|m| m.resp_addr.clone())
                        .unwrap_or_default();
                    let (mh, mp) = split(&master);
                    Reply::Array(
                        replicas(view)
                            .into_iter()
                            .map(|r| {
                                let addr = r.resp_addr.clone().expect("filtered");
                                let (ip, port) = split(&addr);
                                let flags = if r.in_sync || r.role == Role::Replica {
                                    "slave"
                                } else {
                                    "slave,s_down"
                                };
                                flat(vec![
                                    ("name", addr.clone()),
                                    ("ip", ip),
                                    ("port", port),
                                    ("runid", format!("dkv-node-{}", r.node_id)),
                                    ("flags", flags.into()),
                                    ("master-link-status", "ok".into()),
                                    ("master-host", mh.clone()),
                                    ("master-port", mp.clone()),
                                    ("slave-repl-offset", r.log_position.index.to_string()),
                                ])
                            })
                            .collect(),
                    )
                }
                "SENTINELS" if known => {
                    Reply::Array(peers.iter().map(|p| sentinel_info(p)).collect())
                }
                "MASTER" | "REPLICAS" | "SLAVES" | "SENTINELS" | "FAILOVER" => {
                    Reply::err("ERR No such master with that name")
                }
                other => Reply::err(format!(
                    "ERR unknown sentinel subcommand '{}'",
                    other.to_ascii_lowercase()
                )),
            }
        }
        _ => {
            let shown: String = String::from_utf8_lossy(&args[0]).chars().take(64).collect();
            Reply::err(format!("ERR unknown command '{shown}'"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    /// The field/value pairs of one flat entry.
    fn pairs(r: &Reply) -> Vec<(String, String)> {
        let Reply::Map(items) = r else {
            panic!("not a map: {r:?}")
        };
        let text = |r: &Reply| match r {
            Reply::Bulk(b) => String::from_utf8(b.clone()).unwrap(),
            other => panic!("not a bulk string: {other:?}"),
        };
        items.iter().map(|(k, v)| (text(k), text(v))).collect()
    }

    fn field<'a>(p: &'a [(String, String)], k: &str) -> &'a str {
        &p.iter()
            .find(|(f, _)| f == k)
            .unwrap_or_else(|| panic!("{k}"))
            .1
    }

    #[test]
    fn sentinels_lists_the_other_servers_in_redis_format() {
        let view = ClusterView::default();
        let peers = vec!["10.0.0.2:26379".to_string(), "[::1]:26380".to_string()];
        let r = handle(
            &cmd(&["SENTINEL", "sentinels", "dkv"]),
            "dkv",
            &view,
            false,
            &peers,
        );
        let Reply::Array(entries) = r else {
            panic!("{r:?}")
        };
        assert_eq!(entries.len(), 2);
        let a = pairs(&entries[0]);
        let b = pairs(&entries[1]);
        assert_eq!(
            a.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>()[..5],
            ["name", "ip", "port", "runid", "flags"],
            "Redis's field order"
        );
        assert_eq!(field(&a, "ip"), "10.0.0.2");
        assert_eq!(field(&a, "port"), "26379");
        assert_eq!(field(&a, "flags"), "sentinel");
        assert_eq!(field(&b, "ip"), "[::1]");
        assert_eq!(field(&b, "port"), "26380");
        let runid = field(&a, "runid");
        assert_eq!(runid.len(), 40);
        assert!(runid.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(
            field(&a, "name"),
            runid,
            "Redis names a sentinel by its run id"
        );
        assert_ne!(runid, field(&b, "runid"));
        assert_eq!(runid, peer_runid("10.0.0.2:26379"), "stable across calls");

        // Alone, the list is empty; another name is unknown.
        let alone = handle(
            &cmd(&["SENTINEL", "sentinels", "dkv"]),
            "dkv",
            &view,
            false,
            &[],
        );
        assert_eq!(alone, Reply::Array(vec![]));
        let other = handle(
            &cmd(&["sentinel", "SENTINELS", "x"]),
            "dkv",
            &view,
            false,
            &peers,
        );
        assert_eq!(other, Reply::err("ERR No such master with that name"));
    }

    #[test]
    fn info_counts_this_sentinel_and_its_peers() {
        let view = ClusterView::default();
        let peers = vec!["a:1".to_string(), "b:2".to_string()];
        let Reply::Verbatim(info) = handle(&cmd(&["INFO"]), "dkv", &view, false, &peers) else {
            panic!()
        };
        assert!(info.contains("sentinels=3"));
    }

    /// A subscriber registered as a connection's first SUBSCRIBE does.
    fn subscriber(subs: &Subscribers, id: u64, stream: crate::net::Stream, channel: &[u8]) {
        let mut st = Subscriptions {
            proto: RESP2,
            ..Default::default()
        };
        st.channels.insert(channel.to_vec());
        subs.0.lock().insert(
            id,
            Arc::new(Subscriber {
                out: Mutex::new(stream),
                state: Mutex::new(st),
            }),
        );
    }

    #[test]
    fn a_subscriber_that_stops_reading_is_dropped_and_the_others_still_get_messages() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let subs = Subscribers::default();
        // Connection 1 never reads; its socket's write timeout is short.
        let stuck_client = std::net::TcpStream::connect(addr).unwrap();
        let (stuck, _) = l.accept().unwrap();
        stuck
            .set_write_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        subscriber(&subs, 1, crate::net::Stream::plain(stuck), SWITCH_MASTER);
        // Connection 2 reads everything.
        let reader = std::net::TcpStream::connect(addr).unwrap();
        let (live, _) = l.accept().unwrap();
        live.set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        subscriber(&subs, 2, crate::net::Stream::plain(live), SWITCH_MASTER);
        // Connection 3 listens elsewhere.
        let _other_client = std::net::TcpStream::connect(addr).unwrap();
        let (other, _) = l.accept().unwrap();
        subscriber(&subs, 3, crate::net::Stream::plain(other), b"+sdown");
        let drain = std::thread::spawn(move || {
            let mut r = reader;
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0usize;
            while let Ok(n) = std::io::Read::read(&mut r, &mut buf) {
                if n == 0 {
                    break;
                }
                total += n;
            }
            total
        });
        let payload = vec![b'x'; 16 * 1024];
        let one = Reply::Array(vec![
            Reply::text("message"),
            Reply::Bulk(SWITCH_MASTER.to_vec()),
            Reply::Bulk(payload.clone()),
        ])
        .to_bytes(RESP2)
        .len();
        let mut sent = 0;
        // Until the stuck one's buffers fill and its write times out (a few
        // MiB at most); bounded, so a bug fails instead of hanging.
        while subs.0.lock().contains_key(&1) {
            assert!(sent < 10_000, "the stuck subscriber was never dropped");
            let n = subs.publish(SWITCH_MASTER, &payload);
            assert!(n >= 1, "the reading subscriber got every message");
            sent += 1;
        }
        assert!(subs.0.lock().contains_key(&2) && subs.0.lock().contains_key(&3));
        assert_eq!(subs.publish(SWITCH_MASTER, &payload), 1);
        sent += 1;
        subs.0.lock().clear();
        assert_eq!(drain.join().unwrap(), sent * one, "every message, whole");
        drop(stuck_client);
    }
}
