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

use crate::errors::{Error, Result};
use crate::net;
use crate::servers::ServerList;
use crate::wire::{
    self, ClusterView, ErrorKind, NodeStatus, Request, Response, ServerRequest, ServerResponse,
};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a lookup waits for one server when others are left to try.
const LOOKUP_PATIENCE: Duration = Duration::from_millis(300);

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
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            op_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(6),
            max_key_bytes: 4 * 1024,
            max_value_bytes: 1024 * 1024,
            password: None,
        }
    }
}

struct Conn {
    addr: String,
    stream: TcpStream,
    last_used: Instant,
}

pub struct Client {
    servers: Arc<ServerList>,
    opts: ClientOptions,
    conn: Option<Conn>,
}

/// What one server's failure means for a server call.
enum ServerFailure {
    /// This server cannot serve now (unreachable, timed out, unavailable):
    /// try the next one. Holds the reason, without the address.
    Next(String),
    /// An answer the next server would give too (wrong password, ...).
    Stop(Error),
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
            other => Err(unexpected(other)),
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
            other => Err(unexpected(other)),
        }
    }

    /// Deletes `key`; returns whether it existed.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool> {
        self.check_key(key)?;
        match self.request(Request::Delete { key: key.to_vec() }, false)? {
            Response::Deleted(existed) => Ok(existed),
            other => Err(unexpected(other)),
        }
    }

    /// The cluster view held by the server.
    pub fn cluster_view(&self) -> Result<ClusterView> {
        match self.server_call(&ServerRequest::View, self.deadline())? {
            ServerResponse::View(v) => Ok(v),
            other => Err(Error::Protocol(format!(
                "unexpected server reply {other:?}"
            ))),
        }
    }

    /// Asks one node directly for its own status.
    pub fn node_status(&self, addr: &str) -> Result<NodeStatus> {
        let s = self.connect_node(addr)?;
        match net::call::<_, Response>(&s, &Request::Status, self.max_reply())? {
            Response::Status(st) => Ok(st),
            other => Err(unexpected(other)),
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
        let order = self.servers.order();
        let n = order.len();
        let mut tried: Vec<&str> = Vec::new();
        let mut last = String::new();
        for (k, (i, addr)) in order.into_iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            if k > 0 && left.is_zero() {
                break;
            }
            let mut share = (left / (n - k) as u32)
                .min(self.opts.io_timeout)
                .max(Duration::from_millis(100));
            if k + 1 < n {
                // A server answers lookups from memory: one that is silent
                // this long is stopped or cut off, and another one is left.
                share = share.min(LOOKUP_PATIENCE);
            }
            tried.push(addr);
            match self.call_server(addr, req, share) {
                Ok(r) => {
                    self.servers.succeeded(i);
                    return Ok(r);
                }
                Err(ServerFailure::Stop(e)) => return Err(e),
                Err(ServerFailure::Next(why)) => {
                    log::debug!("server {addr}: {why}");
                    last = why;
                }
            }
        }
        let at = tried.last().copied().unwrap_or_default();
        Err(Error::Unavailable(if n == 1 {
            format!("cannot reach the server at {at}: {last}")
        } else {
            format!(
                "no server could be used (tried {}); the last, {at}, failed with: {last}",
                tried.join(", ")
            )
        }))
    }

    /// One request to one server, with `timeout` for the connect and for
    /// each reply.
    fn call_server(
        &self,
        addr: &str,
        req: &ServerRequest,
        timeout: Duration,
    ) -> std::result::Result<ServerResponse, ServerFailure> {
        use ServerFailure::{Next, Stop};
        let s = net::connect(addr, timeout).map_err(|e| Next(e.to_string()))?;
        let call = |req: &ServerRequest| -> std::result::Result<ServerResponse, ServerFailure> {
            match net::call(&s, req, wire::MAX_SERVER_FRAME) {
                Err(e) => Err(Next(e.to_string())),
                Ok(ServerResponse::Error {
                    kind: ErrorKind::Unavailable | ErrorKind::TooManyConnections,
                    message,
                }) => Err(Next(format!("answered: {message}"))),
                Ok(ServerResponse::Error {
                    kind: ErrorKind::AuthRequired | ErrorKind::AuthFailed,
                    message,
                }) => Err(Stop(Error::Auth(format!("server {addr}: {message}")))),
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
                    return Err(Stop(Error::Protocol(format!(
                        "unexpected reply from server {addr}: {other:?}"
                    ))))
                }
            }
        }
        call(req)
    }

    /// Opens a connection to a node and authenticates it when a password is set.
    fn connect_node(&self, addr: &str) -> Result<TcpStream> {
        let s = net::connect(addr, self.opts.io_timeout)
            .map_err(|e| Error::Unavailable(format!("cannot reach {addr}: {e}")))?;
        if let Some(p) = &self.opts.password {
            let auth = Request::Auth {
                password: p.clone(),
            };
            match net::call(&s, &auth, 64 * 1024)? {
                Response::Authenticated => {}
                Response::Error { kind, message } => {
                    return Err(Error::from_reply(kind, format!("{addr}: {message}")))
                }
                other => return Err(unexpected(other)),
            }
        }
        Ok(s)
    }

    /// The coordinator's address according to the server.
    fn ask_coordinator(&self, deadline: Instant) -> Result<String> {
        match self.server_call(&ServerRequest::WhoIsCoordinator, deadline)? {
            ServerResponse::Coordinator { addr, .. } => Ok(addr),
            ServerResponse::NoCoordinator { epoch } => Err(Error::Unavailable(format!(
                "the server knows no coordinator (epoch {epoch})"
            ))),
            other => Err(Error::Protocol(format!(
                "unexpected server reply {other:?}"
            ))),
        }
    }

    fn open(&mut self, addr: String) -> Result<()> {
        self.conn = None;
        let stream = self.connect_node(&addr)?;
        self.conn = Some(Conn {
            addr,
            stream,
            last_used: Instant::now(),
        });
        Ok(())
    }

    /// Sends one request, following redirects and failovers until the deadline.
    fn request(&mut self, req: Request, idempotent: bool) -> Result<Response> {
        let deadline = Instant::now() + self.opts.op_timeout;
        let mut backoff = Duration::from_millis(10);
        let mut redirect: Option<String> = None;
        let mut last_err: Error;
        loop {
            let attempt = (|| -> Result<Response> {
                if self.conn.as_ref().is_some_and(|c| !alive(c)) {
                    self.conn = None;
                }
                if self.conn.is_none() {
                    let addr = match redirect.take() {
                        Some(a) => a,
                        None => self.ask_coordinator(deadline)?,
                    };
                    self.open(addr)?;
                }
                let c = self.conn.as_mut().expect("connected");
                if let Err(e) = wire::write_frame(&mut &c.stream, &req) {
                    self.conn = None;
                    return Err(Error::Unavailable(format!("send failed: {e}")));
                }
                match wire::read_frame::<_, Response>(
                    &mut &c.stream,
                    self.opts.max_value_bytes + 64 * 1024,
                ) {
                    Ok(r) => {
                        c.last_used = Instant::now();
                        Ok(r)
                    }
                    Err(e) => {
                        let addr = c.addr.clone();
                        self.conn = None;
                        if idempotent {
                            Err(Error::Unavailable(format!("{addr}: {e}")))
                        } else {
                            Err(Error::Indeterminate(format!(
                                "no answer from {addr} after the write was sent: {e}"
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
                Err(e @ Error::Io(_)) => last_err = Error::Unavailable(e.to_string()),
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            if now + backoff >= deadline {
                return Err(match last_err {
                    Error::Unavailable(m) => Error::Unavailable(m),
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

fn unexpected(r: Response) -> Error {
    Error::Protocol(format!("unexpected reply {r:?}"))
}
