//! The DKV client library.
//!
//! ```no_run
//! let mut c = dkv::Client::connect("127.0.0.1:12345")?;
//! c.put(b"k", b"v")?;
//! assert_eq!(c.get(b"k")?, Some(b"v".to_vec()));
//! assert!(c.delete(b"k")?);
//! # Ok::<(), dkv::Error>(())
//! ```
//!
//! The client asks the server who the coordinator is, keeps one connection to
//! it, follows `NotCoordinator` redirects and re-asks the server when a
//! connection fails, all within the operation deadline.
//!
//! The server may be a list (`"h1:p1,h2:p2"`, see [`ServerList`]): every
//! server call starts at the server that answered last and moves to the next
//! one when a server cannot be connected to, times out, or answers that it
//! is unavailable, within the same deadline.
//!
//! Retries never apply a write twice: a write is retried only when it surely
//! was not applied (the connection could not be opened or the request not
//! sent, or a node answered that it is not the coordinator). When a write was
//! sent and no answer came, the client returns [`Error::Indeterminate`].
//! (Writes go to nodes, never to a server, so walking the server list does
//! not touch this rule.)
//!
//! Every wait (connect, handshake, each read and write) is bounded by the
//! operation's deadline, `op_timeout` after it started. Errors are one
//! sentence naming the cause: a server that refused the connection, one that
//! did not answer within how many milliseconds, an address that is not a DKV
//! server at all ([`Error::NotAServer`]: a node's data port, which answers
//! with a typed refusal, or a RESP, Sentinel or HTTP port, recognised by its
//! answer or by its answer to a probe, see [`probe`]).

use crate::cli::io_text;
use crate::commands::{Command, Cond, SetExpiry, TtlKind, Value, When};
use crate::errors::{Error, NotAServer, Result};
use crate::net;
use crate::net::Stream;
use crate::servers::ServerList;
use crate::wire::{
    self, ClusterView, ErrorKind, NodeStatus, Request, Response, ServerRequest, ServerResponse,
    WireError,
};
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod pipeline;
pub use pipeline::{Op, OpResult, MAX_PIPELINE_BYTES, MAX_PIPELINE_OPS};

/// How long a lookup waits for one server when others are left to try.
const LOOKUP_PATIENCE: Duration = Duration::from_millis(300);

/// A server answers a lookup from memory at once. When its first byte takes
/// longer than this, the client probes the address with another connection
/// to learn what listens there (see [`probe`]).
const PROBE_AFTER: Duration = Duration::from_millis(200);

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Total time one operation may take, retries included.
    pub op_timeout: Duration,
    /// Time to open one connection or wait for one reply.
    pub io_timeout: Duration,
    /// Checked before sending; the node checks its own limits again.
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Sent first on every connection when set (the cluster's client password).
    pub password: Option<Vec<u8>>,
    /// TLS to the servers and nodes (their CA, maybe a client
    /// certificate); None: clear text.
    pub tls: Option<crate::tls::ClientTls>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            op_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(6),
            max_key_bytes: 4 * 1024,
            max_value_bytes: 1024 * 1024,
            password: None,
            tls: None,
        }
    }
}

struct Conn {
    addr: String,
    stream: Stream,
    last_used: Instant,
    /// The socket's read and write timeout now (see [`Bounded`]).
    timeout: Option<Duration>,
}

pub struct Client {
    servers: Arc<ServerList>,
    opts: ClientOptions,
    conn: Option<Conn>,
}

/// Why one server could not be used for a server call. All but `Stop` move
/// the call to the next server.
enum ServerFailure {
    /// Nothing listens there.
    Refused,
    /// The connection was not accepted within this time.
    ConnectTimeout(Duration),
    /// Accepted, but no answer came within this time (and no answer to a
    /// probe either).
    Silent(Duration),
    /// Something that is not a DKV server answered.
    Foreign(NotAServer),
    /// Another reason, as a clause that follows the address ("answered
    /// that it cannot serve: ...").
    Other(String),
    /// An answer the next server would give too (wrong password, ...).
    Stop(Error),
}

impl ServerFailure {
    /// The failure as a clause that follows the server's address.
    fn clause(&self) -> String {
        match self {
            ServerFailure::Refused => "refused the connection".into(),
            ServerFailure::ConnectTimeout(d) => {
                format!("did not accept the connection within {} ms", ms(*d))
            }
            ServerFailure::Silent(d) => format!(
                "accepted the connection but sent no answer within {} ms",
                ms(*d)
            ),
            ServerFailure::Foreign(what) => what.to_string(),
            ServerFailure::Other(why) => why.clone(),
            ServerFailure::Stop(e) => e.to_string(),
        }
    }

    /// The failure of a connection, as a clause.
    fn from_io(e: &io::Error, waited: Duration) -> ServerFailure {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => ServerFailure::Refused,
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                ServerFailure::ConnectTimeout(waited)
            }
            _ => ServerFailure::Other(io_clause(e, waited)),
        }
    }
}

/// A time allowed, in whole milliseconds, rounded up: a deadline of 1000 ms
/// taken a few microseconds before the wait began still reads 1000.
fn ms(d: Duration) -> u128 {
    d.as_micros().div_ceil(1000)
}

/// The error of a server call that no server could answer: one sentence
/// naming every server tried and what each did. `untried` servers were not
/// reached before the deadline (`budget` after the call began).
fn no_server(tried: Vec<(&str, ServerFailure)>, untried: &[&str], budget: Duration) -> Error {
    use ServerFailure::*;
    let names = |v: &[&str]| match v {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    };
    let hint = "(is dkv-server running?)";
    let mut tried = tried;
    if untried.is_empty() && tried.len() == 1 {
        let (addr, why) = tried.pop().expect("one server");
        return match why {
            Foreign(what) => Error::NotAServer {
                addr: addr.to_string(),
                what,
            },
            Refused => Error::Unavailable(format!(
                "no server answered: {addr} refused the connection {hint}"
            )),
            ConnectTimeout(_) => Error::Unavailable(format!(
                "no server answered: {addr} {} (is the host up and the port open?)",
                why.clause()
            )),
            Silent(_) => Error::Unavailable(format!(
                "no server answered: {addr} {} (is it the server's address, and is the \
                 server stopped or overloaded?)",
                why.clause()
            )),
            Other(_) => Error::Unavailable(format!("the server at {addr} {}", why.clause())),
            Stop(e) => e,
        };
    }
    if untried.is_empty() && tried.iter().all(|(_, w)| matches!(w, Refused)) {
        let addrs: Vec<&str> = tried.iter().map(|(a, _)| *a).collect();
        return Error::Unavailable(format!(
            "no server answered: {} refused the connection {hint}",
            names(&addrs)
        ));
    }
    let mut text = format!(
        "no server could be used: {}",
        tried
            .iter()
            .map(|(a, w)| format!("{a} {}", w.clause()))
            .collect::<Vec<_>>()
            .join("; ")
    );
    if !untried.is_empty() {
        text.push_str(&format!(
            "; {} not tried: the {} ms allowed ran out",
            names(untried),
            ms(budget)
        ));
    }
    Error::Unavailable(text)
}

/// An IO failure on a connection as a clause that follows the address.
fn io_clause(e: &io::Error, waited: Duration) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "refused the connection".into(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("did not answer within {} ms", ms(waited))
        }
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => "closed the connection".into(),
        _ => format!("failed: {}", io_text(e)),
    }
}

/// A frame that could not be read, as a clause that follows the address.
fn wire_clause(e: &WireError, waited: Duration) -> String {
    match e {
        WireError::Io(e) => io_clause(e, waited),
        WireError::Closed => "closed the connection without answering".into(),
        e => format!("sent an answer that is not DKV's ({e})"),
    }
}

/// Reads and writes on a socket that never wait past `deadline`: before each
/// system call the socket's timeout is lowered to the time left, or raised
/// again when a new deadline leaves much more time than the timeout set.
/// `set` remembers the timeout in force, so a connection used for many short
/// operations rarely pays a `setsockopt`.
struct Bounded<'a> {
    stream: &'a Stream,
    deadline: Instant,
    set: &'a mut Option<Duration>,
}

impl<'a> Bounded<'a> {
    fn new(stream: &'a Stream, deadline: Instant, set: &'a mut Option<Duration>) -> Self {
        Bounded {
            stream,
            deadline,
            set,
        }
    }

    fn fit(&mut self) -> io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        // Allowed: a timeout at most 5 ms past the deadline, and at most an
        // eighth (or 50 ms) short of it.
        let slack = (left / 8).max(Duration::from_millis(50));
        let fits = self
            .set
            .is_some_and(|t| t <= left + Duration::from_millis(5) && t + slack >= left);
        if !fits {
            self.stream.set_read_timeout(Some(left))?;
            self.stream.set_write_timeout(Some(left))?;
            *self.set = Some(left);
        }
        Ok(())
    }
}

impl Read for Bounded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.fit()?;
        (&mut &*self.stream).read(buf)
    }
}

impl Write for Bounded<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.fit()?;
        (&mut &*self.stream).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The probe sent to an address that accepted a connection but did not
/// answer the DKV handshake: a line that RESP servers (Redis, Sentinel, a
/// node's RESP port) answer as an inline `PING` with arguments, and HTTP
/// servers as a request with an unknown method, both at once. A DKV server
/// reads its first four bytes as a frame length far above its limit and
/// closes the connection (logging a bad handshake).
pub const PROBE: &[u8] = b"PING / HTTP/1.0\r\n\r\n";

/// What answered `first`, the first bytes a peer sent (to our handshake or
/// to [`PROBE`]) when they cannot start a DKV frame; `None` if they can
/// (a frame's length is below 16 MiB, so its first byte is 0).
pub fn classify(first: &[u8]) -> Option<NotAServer> {
    let &b0 = first.first()?;
    if b0 == 0 {
        return None;
    }
    let line = first.split(|&b| b == b'\n').next().unwrap_or_default();
    let shown = |bytes: &[u8]| {
        let t = crate::cli::escape(&bytes[..bytes.len().min(60)]);
        t.trim_end_matches("\\x0d").to_string()
    };
    Some(if first.starts_with(b"HTTP/") {
        NotAServer::Http(shown(line))
    } else if matches!(first, [0x15 | 0x16, 0x03, ..]) {
        // A TLS record (an alert, or a handshake) answering clear text.
        NotAServer::Tls
    } else if b"+-:$*_%#,(!=|~>".contains(&b0) {
        NotAServer::Resp
    } else {
        NotAServer::Unknown(shown(&first[..first.len().min(16)]))
    })
}

/// Reads what a non-DKV peer sent, up to a line or 256 bytes, within
/// `deadline` (at most 200 ms more: it has started answering).
fn read_answer(s: &Stream, deadline: Instant) -> Vec<u8> {
    let deadline = deadline.min(Instant::now() + Duration::from_millis(200));
    let mut set = None;
    let mut r = Bounded::new(s, deadline, &mut set);
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < 256 && !got.contains(&b'\n') {
        match r.read(&mut buf[..256 - got.len()]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

/// Opens a second connection to `addr`, sends [`PROBE`] and classifies the
/// answer; `None` when nothing conclusive answered before `deadline` (a DKV
/// server closes the probe at once).
pub fn probe(addr: &str, deadline: Instant) -> Option<NotAServer> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return None;
    }
    let s =
        Stream::plain(std::net::TcpStream::connect_timeout(&net::resolve(addr).ok()?, left).ok()?);
    let mut set = None;
    Bounded::new(&s, deadline, &mut set).write_all(PROBE).ok()?;
    classify(&read_answer(&s, deadline))
}

/// Waits until the first byte of an answer arrives on `s` (without reading
/// it), at most until `deadline`. When it takes longer than [`PROBE_AFTER`],
/// [`probe`] finds out whether something else than a DKV server listens.
/// `budget` is the time this call allowed, for the error.
fn await_answer(
    s: &Stream,
    addr: &str,
    deadline: Instant,
    budget: Duration,
) -> std::result::Result<(), ServerFailure> {
    if s.is_tls() {
        // The handshake showed a TLS server; it answers or times out.
        return Ok(());
    }
    let mut probed = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ServerFailure::Silent(budget));
        }
        let wait = if probed { left } else { left.min(PROBE_AFTER) };
        s.set_read_timeout(Some(wait))
            .map_err(|e| ServerFailure::Other(io_clause(&e, budget)))?;
        let mut b = [0u8; 1];
        match s.peek(&mut b) {
            Ok(0) => {
                return Err(ServerFailure::Other(
                    "closed the connection without answering (a DKV server of another \
                     version does that)"
                        .into(),
                ))
            }
            Ok(_) if b[0] == 0 => return Ok(()),
            Ok(_) => {
                let answer = read_answer(s, deadline);
                let what = classify(&answer).unwrap_or(NotAServer::Unknown(String::new()));
                return Err(ServerFailure::Foreign(what));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if !probed {
                    probed = true;
                    if let Some(what) = probe(addr, deadline) {
                        return Err(ServerFailure::Foreign(what));
                    }
                }
            }
            Err(e) => return Err(ServerFailure::Other(io_clause(&e, budget))),
        }
    }
}

impl Client {
    /// A client for the cluster whose server is at `servers`: one
    /// "host:port", or a comma-separated list of them (see [`ServerList`]).
    /// Fails if the list is malformed or no server can be reached.
    pub fn connect(servers: &str) -> Result<Client> {
        Client::with_options(servers, ClientOptions::default())
    }

    /// [`Client::connect`] with options.
    pub fn with_options(servers: &str, opts: ClientOptions) -> Result<Client> {
        let list = ServerList::parse(servers).map_err(|e| Error::Config(e.to_string()))?;
        Client::with_servers(Arc::new(list), opts)
    }

    /// A client over a server list shared with others (a node's RESP
    /// forwarding shares the node's list, so all of them start at the server
    /// that answered last).
    pub fn with_servers(servers: Arc<ServerList>, opts: ClientOptions) -> Result<Client> {
        let c = Client {
            servers,
            opts,
            conn: None,
        };
        c.server_call(&ServerRequest::WhoIsCoordinator, c.deadline())?;
        Ok(c)
    }

    /// The servers this client uses.
    pub fn servers(&self) -> &ServerList {
        &self.servers
    }

    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.check_key(key)?;
        match self.request(Request::Get { key: key.to_vec() }, true)? {
            Response::Value(v) => Ok(v),
            other => Err(unexpected(&other, "the coordinator")),
        }
    }

    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.check_key(key)?;
        if value.len() > self.opts.max_value_bytes {
            return Err(Error::ValueTooLarge {
                len: value.len(),
                max: self.opts.max_value_bytes,
            });
        }
        match self.request(
            Request::Put {
                key: key.to_vec(),
                value: value.to_vec(),
            },
            false,
        )? {
            Response::Written => Ok(()),
            other => Err(unexpected(&other, "the coordinator")),
        }
    }

    /// Deletes `key`; returns whether it existed.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool> {
        self.check_key(key)?;
        match self.request(Request::Delete { key: key.to_vec() }, false)? {
            Response::Deleted(existed) => Ok(existed),
            other => Err(unexpected(&other, "the coordinator")),
        }
    }

    /// Runs any data command ([`crate::commands`]) at the coordinator and
    /// gives its reply as Redis would ([`Value::Error`] for a command error
    /// such as INCR of a non-integer). Reads are retried across failovers;
    /// a write whose answer was lost is [`Error::Indeterminate`].
    pub fn command(&mut self, cmd: Command) -> Result<Value> {
        let mut bad = None;
        cmd.for_each_key(&mut |k| {
            if bad.is_none() {
                bad = self.check_key(k).err();
            }
        });
        if let Some(e) = bad {
            return Err(e);
        }
        let idempotent = cmd.is_read();
        match self.request(Request::Command(cmd), idempotent)? {
            Response::Reply(v) => Ok(v),
            other => Err(unexpected(&other, "the coordinator")),
        }
    }

    /// Sends `req`, a request answered by a stream of frames (a backup), to
    /// the coordinator (following a redirect, as any request) and hands
    /// every frame to `each` until it returns `Ok(false)`. Each frame is at
    /// most `frame_limit` bytes and must arrive within the io timeout;
    /// reading is the stream's back-pressure. The connection is closed
    /// afterwards.
    pub fn stream(
        &mut self,
        req: &Request,
        frame_limit: usize,
        mut each: impl FnMut(Response) -> Result<bool>,
    ) -> Result<()> {
        let deadline = self.deadline();
        let mut redirect: Option<String> = None;
        loop {
            self.connect_coordinator(&mut redirect, deadline)?;
            let c = self.conn.take().expect("connected");
            let addr = c.addr.clone();
            let lost = |e: WireError, what: &str| {
                Error::Unavailable(format!("the coordinator at {addr} {what}: {e}"))
            };
            let _ = c.stream.set_read_timeout(Some(self.opts.io_timeout));
            let _ = c.stream.set_write_timeout(Some(self.opts.io_timeout));
            wire::write_frame(&mut &c.stream, req)
                .map_err(|e| lost(e.into(), "could not be sent the request"))?;
            let mut first = true;
            loop {
                let r: Response = wire::read_frame(&mut &c.stream, frame_limit)
                    .map_err(|e| lost(e, "stopped the stream"))?;
                match r {
                    Response::NotCoordinator { coordinator, .. } if first => {
                        redirect = coordinator.filter(|a| *a != addr);
                        if Instant::now() >= deadline {
                            return Err(Error::Unavailable(format!(
                                "{addr} is not the coordinator, and no coordinator \
                                 answered within {} ms",
                                self.opts.op_timeout.as_millis()
                            )));
                        }
                        std::thread::sleep(Duration::from_millis(20));
                        break;
                    }
                    r => {
                        first = false;
                        if !each(r)? {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    /// [`Client::command`], with a command error as [`Error::Refused`].
    fn command_ok(&mut self, cmd: Command) -> Result<Value> {
        match self.command(cmd)? {
            Value::Error(e) => Err(Error::Refused(e)),
            v => Ok(v),
        }
    }

    /// Writes `key` with a time to live: it reads as absent once `ttl` has
    /// passed by the coordinator's clock.
    pub fn put_with_ttl(&mut self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()> {
        self.command_ok(Command::Set {
            key: key.to_vec(),
            value: value.to_vec(),
            cond: Cond::Always,
            expiry: SetExpiry::Set(When::In(ttl.as_millis().min(i64::MAX as u128) as i64)),
            get: false,
        })
        .map(drop)
    }

    /// The time `key` has left; `None` when it has no deadline or does not
    /// exist ([`Client::get`] tells those apart).
    pub fn ttl(&mut self, key: &[u8]) -> Result<Option<Duration>> {
        match self.command_ok(Command::Ttl {
            key: key.to_vec(),
            kind: TtlKind::Millis,
        })? {
            Value::Int(ms) if ms >= 0 => Ok(Some(Duration::from_millis(ms as u64))),
            _ => Ok(None),
        }
    }

    /// Adds `by` to the integer at `key` (absent counts as 0); the new value.
    pub fn incr_by(&mut self, key: &[u8], by: i64) -> Result<i64> {
        match self.command_ok(Command::IncrBy {
            key: key.to_vec(),
            by,
        })? {
            Value::Int(n) => Ok(n),
            other => Err(Error::Protocol(format!("INCRBY answered {other:?}"))),
        }
    }

    /// Sets `key` to `new` (deletes it for `None`) only if it holds
    /// `expected` (is absent for `None`); whether it did.
    pub fn compare_and_set(
        &mut self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool> {
        Ok(self.command_ok(Command::CompareAndSet {
            key: key.to_vec(),
            expected: expected.map(<[u8]>::to_vec),
            value: new.map(<[u8]>::to_vec),
            ttl_ms: None,
        })? == Value::Int(1))
    }

    /// Runs `commands` as one atomic batch (MULTI/EXEC): every replica
    /// applies all of their writes or none. One reply per command; a command
    /// that fails (INCR of a non-integer) gives [`Value::Error`] and the
    /// others still apply, as in Redis.
    pub fn atomic(&mut self, commands: Vec<Command>) -> Result<Vec<Value>> {
        match self.command_ok(Command::Exec {
            watched: Vec::new(),
            commands,
        })? {
            Value::Array(v) => Ok(v),
            other => Err(Error::Protocol(format!("EXEC answered {other:?}"))),
        }
    }

    /// One page of an iteration over the keys matching `pattern` (a Redis
    /// glob): start at cursor 0, stop when the returned cursor is 0. Every
    /// key present for the whole iteration is returned once.
    pub fn scan(
        &mut self,
        cursor: u64,
        pattern: Option<&[u8]>,
        count: usize,
    ) -> Result<(u64, Vec<Vec<u8>>)> {
        let page = self.command_ok(Command::Scan {
            cursor,
            pattern: pattern.map(<[u8]>::to_vec),
            count,
            type_name: None,
        })?;
        if let Value::Array(mut v) = page {
            if let (Some(Value::Array(keys)), Some(Value::Bulk(c))) = (v.pop(), v.pop()) {
                let cursor = std::str::from_utf8(&c).ok().and_then(|c| c.parse().ok());
                let keys: Option<Vec<_>> = keys
                    .into_iter()
                    .map(|k| {
                        if let Value::Bulk(k) = k {
                            Some(k)
                        } else {
                            None
                        }
                    })
                    .collect();
                if let (Some(cursor), Some(keys)) = (cursor, keys) {
                    return Ok((cursor, keys));
                }
            }
        }
        Err(Error::Protocol(
            "SCAN answered something else than a page".into(),
        ))
    }

    /// The cluster view held by the server.
    pub fn cluster_view(&self) -> Result<ClusterView> {
        self.cluster_view_before(self.deadline())
    }

    /// [`Client::cluster_view`], giving up at `deadline`.
    pub fn cluster_view_before(&self, deadline: Instant) -> Result<ClusterView> {
        match self.server_call(&ServerRequest::View, deadline)? {
            ServerResponse::View(v) => Ok(v),
            other => Err(unexpected_server(&other, "a view request")),
        }
    }

    /// Moves the coordinator role, on purpose and without stopping anything,
    /// to `to` or (`None`) the most up-to-date in-sync replica: a planned
    /// handoff. The coordinator holds new writes, lets those under way
    /// commit, waits for the target to hold them all, and asks the server to
    /// grant the target the next epoch; held writes are then redirected.
    /// Gives the view after it.
    pub fn failover(&mut self, to: Option<crate::types::NodeId>) -> Result<ClusterView> {
        match self.request(Request::Handoff { to }, false)? {
            Response::Reply(Value::Ok) => self.cluster_view(),
            other => Err(unexpected(&other, "the coordinator")),
        }
    }

    /// Asks the coordinator at `addr` directly (no server involved) to hand
    /// its role over, as [`Client::failover`] does; the server's `SENTINEL
    /// FAILOVER` uses it. `opts.password` authenticates to the node.
    pub fn hand_over_at(
        addr: &str,
        to: Option<crate::types::NodeId>,
        opts: ClientOptions,
    ) -> Result<()> {
        let c = Client {
            servers: Arc::new(ServerList::parse(addr).map_err(|e| Error::Config(e.to_string()))?),
            opts,
            conn: None,
        };
        let deadline = Instant::now() + c.opts.op_timeout;
        let start = Instant::now();
        let (s, mut set) = c.connect_node(addr, deadline)?;
        let mut io = Bounded::new(&s, deadline, &mut set);
        let reply = wire::write_frame(&mut io, &Request::Handoff { to })
            .map_err(WireError::from)
            .and_then(|()| wire::read_frame::<_, Response>(&mut io, 64 * 1024));
        match reply {
            Ok(Response::Reply(Value::Ok)) => Ok(()),
            Ok(Response::Error { kind, message }) => Err(Error::from_reply(kind, message)),
            Ok(Response::NotCoordinator { .. }) => {
                Err(Error::Unavailable(format!("{addr} is not the coordinator")))
            }
            Ok(other) => Err(unexpected(&other, addr)),
            Err(e) => Err(Error::Indeterminate(format!(
                "the node at {addr} {}",
                wire_clause(&e, start.elapsed())
            ))),
        }
    }

    /// Removes member `node_id` (neither the coordinator nor in sync) from
    /// the cluster; its id is refused from then on. The new view.
    pub fn remove_member(&self, node_id: crate::types::NodeId) -> Result<ClusterView> {
        match self.server_call(&ServerRequest::RemoveMember { node_id }, self.deadline())? {
            ServerResponse::Ok(v) => Ok(v),
            ServerResponse::Error { message, .. }
            | ServerResponse::Rejected {
                reason: message, ..
            } => Err(Error::Refused(message)),
            other => Err(unexpected_server(&other, "a member removal")),
        }
    }

    /// Asks one node directly for its own status.
    pub fn node_status(&self, addr: &str) -> Result<NodeStatus> {
        self.node_status_before(addr, self.deadline())
    }

    /// [`Client::node_status`], giving up at `deadline`.
    pub fn node_status_before(&self, addr: &str, deadline: Instant) -> Result<NodeStatus> {
        let start = Instant::now();
        let (s, mut set) = self.connect_node(addr, deadline)?;
        let mut io = Bounded::new(&s, deadline, &mut set);
        let reply = wire::write_frame(&mut io, &Request::Status)
            .map_err(WireError::from)
            .and_then(|()| wire::read_frame::<_, Response>(&mut io, self.max_reply()));
        match reply {
            Ok(Response::Status(st)) => Ok(st),
            Ok(Response::Error { kind, message }) => {
                Err(Error::from_reply(kind, format!("{addr}: {message}")))
            }
            Ok(other) => Err(unexpected(&other, addr)),
            Err(e) => Err(Error::Unavailable(format!(
                "the node at {addr} {}",
                wire_clause(&e, start.elapsed())
            ))),
        }
    }

    fn check_key(&self, key: &[u8]) -> Result<()> {
        if key.is_empty() {
            return Err(Error::EmptyKey);
        }
        if key.len() > self.opts.max_key_bytes {
            return Err(Error::KeyTooLarge {
                len: key.len(),
                max: self.opts.max_key_bytes,
            });
        }
        Ok(())
    }

    fn max_reply(&self) -> usize {
        self.opts.max_value_bytes + self.opts.max_key_bytes + 64 * 1024
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.opts.op_timeout
    }

    /// One server request: tries the servers in [`ServerList::order`] until
    /// one answers, before `deadline`. The time left is shared among the
    /// servers not yet tried, so one that swallows connections cannot use up
    /// the others' time. The first server is always tried.
    fn server_call(&self, req: &ServerRequest, deadline: Instant) -> Result<ServerResponse> {
        let start = Instant::now();
        let order = self.servers.order();
        let n = order.len();
        let mut tried: Vec<(&str, ServerFailure)> = Vec::new();
        let mut untried: Vec<&str> = Vec::new();
        for (k, (i, addr)) in order.into_iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            if k > 0 && left.is_zero() {
                untried.push(addr);
                continue;
            }
            let mut share = (left / (n - k) as u32)
                .max(left.min(Duration::from_millis(100)))
                .min(self.opts.io_timeout);
            if k + 1 < n {
                // A server answers lookups from memory: one that is silent
                // this long is stopped or cut off, and another one is left.
                share = share.min(LOOKUP_PATIENCE);
            }
            match self.call_server(addr, req, share.max(Duration::from_millis(1))) {
                Ok(r) => {
                    self.servers.succeeded(i);
                    return Ok(r);
                }
                Err(ServerFailure::Stop(e)) => return Err(e),
                Err(why) => {
                    log::debug!("server {addr}: {}", why.clause());
                    tried.push((addr, why));
                }
            }
        }
        Err(no_server(
            tried,
            &untried,
            deadline.saturating_duration_since(start),
        ))
    }

    /// One request to one server, all of it (connect, handshake, password,
    /// request, answer) within `budget`.
    fn call_server(
        &self,
        addr: &str,
        req: &ServerRequest,
        budget: Duration,
    ) -> std::result::Result<ServerResponse, ServerFailure> {
        use ServerFailure::{Foreign, Other, Stop};
        let start = Instant::now();
        let deadline = start + budget;
        let s = net::connect_tls(addr, budget, self.opts.tls.as_ref())
            .map_err(|e| ServerFailure::from_io(&e, budget))?;
        let mut set = Some(budget);
        let mut first = true;
        let mut call = |req: &ServerRequest| -> std::result::Result<ServerResponse, ServerFailure> {
            let mut io = Bounded::new(&s, deadline, &mut set);
            wire::write_frame(&mut io, req).map_err(|e| Other(io_clause(&e, budget)))?;
            if std::mem::take(&mut first) {
                await_answer(&s, addr, deadline, budget)?;
            }
            let mut io = Bounded::new(&s, deadline, &mut set);
            match wire::read_frame(&mut io, wire::MAX_SERVER_FRAME) {
                Err(e) if e.is_timeout() => Err(ServerFailure::Silent(budget)),
                Err(e) => Err(Other(wire_clause(&e, start.elapsed()))),
                Ok(ServerResponse::Error {
                    kind: ErrorKind::Unavailable | ErrorKind::TooManyConnections,
                    message,
                }) => Err(Other(format!("answered that it cannot serve: {message}"))),
                Ok(ServerResponse::Error {
                    kind: ErrorKind::AuthRequired | ErrorKind::AuthFailed,
                    message,
                }) => Err(Stop(Error::Auth(format!("server {addr}: {message}")))),
                Ok(ServerResponse::Error {
                    kind: ErrorKind::NotTheServer,
                    ..
                }) => Err(Foreign(NotAServer::NodeDataPort)),
                Ok(r) => Ok(r),
            }
        };
        if let Some(p) = &self.opts.password {
            let auth = ServerRequest::Auth {
                password: p.clone(),
            };
            match call(&auth)? {
                ServerResponse::Authenticated => {}
                ServerResponse::Error { kind, message } => {
                    return Err(Stop(Error::from_reply(
                        kind,
                        format!("server {addr}: {message}"),
                    )))
                }
                other => {
                    return Err(Stop(unexpected_server(&other, "the password")));
                }
            }
        }
        call(req)
    }

    /// Opens a connection to a node and authenticates it when a password is
    /// set, before `deadline`. Returns the stream and the timeout set on it.
    fn connect_node(&self, addr: &str, deadline: Instant) -> Result<(Stream, Option<Duration>)> {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .min(self.opts.io_timeout)
            .max(Duration::from_millis(1));
        let s = net::connect_tls(addr, left, self.opts.tls.as_ref()).map_err(|e| {
            Error::Unavailable(format!("the node at {addr} {}", io_clause(&e, left)))
        })?;
        let mut set = Some(left);
        if let Some(p) = &self.opts.password {
            let auth = Request::Auth {
                password: p.clone(),
            };
            let start = Instant::now();
            let mut io = Bounded::new(&s, deadline, &mut set);
            let reply = wire::write_frame(&mut io, &auth)
                .map_err(WireError::from)
                .and_then(|()| wire::read_frame::<_, Response>(&mut io, 64 * 1024));
            match reply {
                Ok(Response::Authenticated) => {}
                Ok(Response::Error { kind, message }) => {
                    return Err(Error::from_reply(kind, format!("{addr}: {message}")))
                }
                Ok(other) => return Err(unexpected(&other, addr)),
                Err(e) => {
                    return Err(Error::Unavailable(format!(
                        "the node at {addr} {}",
                        wire_clause(&e, start.elapsed())
                    )))
                }
            }
        }
        Ok((s, set))
    }

    /// The coordinator's address according to the server.
    fn ask_coordinator(&self, deadline: Instant) -> Result<String> {
        match self.server_call(&ServerRequest::WhoIsCoordinator, deadline)? {
            ServerResponse::Coordinator { addr, .. } => Ok(addr),
            ServerResponse::NoCoordinator { epoch } => Err(Error::Unavailable(format!(
                "the server knows no coordinator (epoch {epoch}; an election may be under way)"
            ))),
            other => Err(unexpected_server(&other, "a coordinator lookup")),
        }
    }

    fn open(&mut self, addr: String, deadline: Instant) -> Result<()> {
        self.conn = None;
        let (stream, timeout) = self.connect_node(&addr, deadline)?;
        self.conn = Some(Conn {
            addr,
            stream,
            last_used: Instant::now(),
            timeout,
        });
        Ok(())
    }

    /// Sends one request, following redirects and failovers until the deadline.
    /// Makes sure a live connection to the coordinator is open: to the
    /// address a `NotCoordinator` answer redirected to, else to the one the
    /// server names.
    pub(crate) fn connect_coordinator(
        &mut self,
        redirect: &mut Option<String>,
        deadline: Instant,
    ) -> Result<()> {
        if self.conn.as_ref().is_some_and(|c| !alive(c)) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let addr = match redirect.take() {
                Some(a) => a,
                None => self.ask_coordinator(deadline)?,
            };
            self.open(addr, deadline)?;
        }
        Ok(())
    }

    fn request(&mut self, req: Request, idempotent: bool) -> Result<Response> {
        let deadline = Instant::now() + self.opts.op_timeout;
        // Short at first: after a planned handoff the new coordinator serves
        // within milliseconds; doubling keeps a long failover cheap.
        let mut backoff = Duration::from_millis(2);
        let mut redirect: Option<String> = None;
        let mut last_err: Error;
        loop {
            let attempt = (|| -> Result<Response> {
                self.connect_coordinator(&mut redirect, deadline)?;
                let c = self.conn.as_mut().expect("connected");
                let mut io = Bounded::new(&c.stream, deadline, &mut c.timeout);
                if let Err(e) = wire::write_frame(&mut io, &req) {
                    let addr = c.addr.clone();
                    self.conn = None;
                    return Err(Error::Unavailable(format!(
                        "the request could not be sent to the coordinator at {addr}: {}",
                        io_text(&e)
                    )));
                }
                let sent = Instant::now();
                match wire::read_frame::<_, Response>(
                    &mut io,
                    self.opts.max_value_bytes + 64 * 1024,
                ) {
                    Ok(r) => {
                        c.last_used = Instant::now();
                        Ok(r)
                    }
                    Err(e) => {
                        let addr = c.addr.clone();
                        self.conn = None;
                        let why = wire_clause(&e, sent.elapsed());
                        if idempotent {
                            Err(Error::Unavailable(format!(
                                "the coordinator at {addr} {why}"
                            )))
                        } else {
                            Err(Error::Indeterminate(format!(
                                "the coordinator at {addr} {why} after the write was sent"
                            )))
                        }
                    }
                }
            })();
            match attempt {
                Ok(Response::NotCoordinator { coordinator, .. }) => {
                    let from = self.conn.take().map(|c| c.addr);
                    // Follow the hint unless it points back where we were.
                    redirect = coordinator.filter(|a| Some(a) != from.as_ref());
                    last_err = Error::Unavailable(format!(
                        "{} is not the coordinator",
                        from.unwrap_or_default()
                    ));
                    if redirect.is_some() {
                        continue;
                    }
                }
                Ok(Response::Error { kind, message }) => {
                    let e = Error::from_reply(kind, message);
                    match e {
                        Error::Unavailable(_) => last_err = e,
                        _ => return Err(e),
                    }
                }
                Ok(r) => return Ok(r),
                Err(e @ Error::Unavailable(_)) => last_err = e,
                Err(Error::Io(e)) => last_err = Error::Unavailable(io_text(&e)),
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            if now + backoff >= deadline {
                return Err(match last_err {
                    Error::Unavailable(m) => Error::Unavailable(format!(
                        "no coordinator could be reached within {} ms: {m}",
                        self.opts.op_timeout.as_millis()
                    )),
                    other => other,
                });
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
    }
}

/// A connection idle for a while may have been closed by a node that went
/// away; peek at it so a write is not sent into a dead socket.
fn alive(c: &Conn) -> bool {
    c.last_used.elapsed() < Duration::from_millis(100) || !net::peer_closed(&c.stream)
}

/// A node's reply that does not fit the request (a bug, or another version).
fn unexpected(r: &Response, addr: &str) -> Error {
    let name = match r {
        Response::Value(_) => "a value",
        Response::Written => "a write confirmation",
        Response::Deleted(_) => "a delete confirmation",
        Response::Status(_) => "a status",
        Response::NotCoordinator { .. } => "a redirect",
        Response::Error { .. } => "an error",
        Response::Authenticated => "a password confirmation",
        Response::Reply(_) => "a command reply",
        Response::BackupBegin { .. }
        | Response::BackupPairs(_)
        | Response::BackupEntries(_)
        | Response::BackupEnd { .. } => "a backup frame",
    };
    Error::Protocol(format!(
        "{addr} answered with {name}, which does not fit the request (is it a DKV node of this version?)"
    ))
}

/// A server's reply that does not fit the request `to`.
fn unexpected_server(r: &ServerResponse, to: &str) -> Error {
    let name = match r {
        ServerResponse::Registered { .. } => "Registered",
        ServerResponse::Coordinator { .. } => "Coordinator",
        ServerResponse::NoCoordinator { .. } => "NoCoordinator",
        ServerResponse::View(_) => "View",
        ServerResponse::Ok(_) => "Ok",
        ServerResponse::Rejected { .. } => "Rejected",
        ServerResponse::Error { .. } => "Error",
        ServerResponse::Authenticated => "Authenticated",
        ServerResponse::NotRegistered { .. } => "NotRegistered",
    };
    Error::Protocol(format!(
        "the server answered {to} with {name}, which does not fit (is it a DKV server of this version?)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_names_what_answered() {
        assert_eq!(classify(b"+PONG\r\n"), Some(NotAServer::Resp));
        assert_eq!(
            classify(b"\x15\x03\x03\x00\x02\x02\x32"),
            Some(NotAServer::Tls)
        );
        assert_eq!(
            classify(b"-NOAUTH Authentication required.\r\n"),
            Some(NotAServer::Resp)
        );
        assert_eq!(
            classify(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n"),
            Some(NotAServer::Http("HTTP/1.1 404 Not Found".into()))
        );
        assert_eq!(
            classify(b"SSH-2.0-OpenSSH_9.2\r\n"),
            Some(NotAServer::Unknown("SSH-2.0-OpenSSH_".into()))
        );
        // The first byte of a DKV frame's length is 0.
        assert_eq!(classify(&[0, 0, 0, 3, 1, 2, 3]), None);
        assert_eq!(classify(b""), None);
    }

    #[test]
    fn one_failed_server_is_one_sentence_naming_it() {
        let one = |why| no_server(vec![("h:1", why)], &[], Duration::from_secs(1)).to_string();
        assert_eq!(
            one(ServerFailure::Refused),
            "no server answered: h:1 refused the connection (is dkv-server running?)"
        );
        assert!(one(ServerFailure::Silent(Duration::from_millis(2000)))
            .contains("h:1 accepted the connection but sent no answer within 2000 ms"));
        assert_eq!(
            one(ServerFailure::Foreign(NotAServer::NodeDataPort)),
            "h:1 is a DKV node's data port, not the server: give the server's address (server-ip-port)"
        );
        let two = no_server(
            vec![
                ("a:1", ServerFailure::Refused),
                ("b:2", ServerFailure::Refused),
            ],
            &[],
            Duration::from_secs(1),
        );
        assert_eq!(
            two.to_string(),
            "no server answered: a:1 and b:2 refused the connection (is dkv-server running?)"
        );
        let cut = no_server(
            vec![("a:1", ServerFailure::Silent(Duration::from_millis(300)))],
            &["b:2"],
            Duration::from_millis(300),
        );
        assert!(cut
            .to_string()
            .ends_with("b:2 not tried: the 300 ms allowed ran out"));
    }
}
