//! RESP (Redis protocol) endpoint of a node: one thread per connection,
//! bounded like the native port. Commands are answered in order; all the
//! complete commands of one read are answered with one write, so pipelined
//! clients (redis-benchmark -P 16) get their replies batched.
//!
//! Data commands keep DKV's rules: on the coordinator they go through the
//! same request path as the native protocol (writes are answered after every
//! in-sync node has them); on a replica they are forwarded to the
//! coordinator, so any node is a usable endpoint. When no coordinator can be
//! reached the reply is `-TRYAGAIN ...`, never a hang.

use super::requests::{Begun, DataPath, PendingWrite};
use super::{resp_admin, Shared};
use crate::net::listener::Service;
use crate::resp::{Answer, AuthGate, Gated, Handler, Limits, Pending, Reply};
use crate::wire::{ErrorKind, Request, Response};
use crate::{Client, ClientOptions, Error};
use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The RESP port, bounded by the same limit as the native port.
pub(super) fn service(sh: Arc<Shared>) -> Service {
    let id = sh.id;
    Service {
        name: format!("resp-accept-{id}"),
        conn_name: format!("resp-{id}"),
        limit: sh.conns.clone(),
        write_timeout: sh.settings.read_timeout(),
        refuse: Box::new(|stream, _| {
            let _ = (&*stream).write_all(b"-ERR max number of clients reached\r\n");
        }),
        serve: Arc::new(move |stream, _| {
            Conn {
                sh: &sh,
                forward: None,
                proto: crate::resp::RESP2,
                client: resp_admin::Client::register(&sh.resp, &stream),
                gate: AuthGate::new(sh.security.password.clone()),
                authenticated: std::rc::Rc::new(std::cell::Cell::new(
                    sh.security.password.is_none(),
                )),
                password: None,
            }
            .serve(stream)
        }),
    }
}

/// Most value bytes one MGET may return: the reply is built whole before it
/// is written, so one command must not be able to ask for gigabytes.
const MAX_MGET_REPLY: usize = 64 << 20;

struct Conn<'a> {
    sh: &'a Shared,
    /// Replica side: a client to the coordinator, opened on first use.
    forward: Option<Client>,
    /// The protocol version replies are encoded in (`HELLO` changes it).
    proto: u8,
    /// This connection in the port's registry (CLIENT LIST, INFO).
    client: resp_admin::Client<'a>,
    gate: AuthGate,
    /// Whether the gate let this client in; read by the parser's limits.
    authenticated: std::rc::Rc<std::cell::Cell<bool>>,
    /// The password this client authenticated with, for forwarding.
    password: Option<Vec<u8>>,
}

/// A write waiting for its commit; its reply in RESP.
struct PendingReply(PendingWrite);

impl Pending for PendingReply {
    fn wait(self) -> Reply {
        to_reply(self.0.wait())
    }
}

impl Handler for Conn<'_> {
    type Pending = PendingReply;

    fn handle(&mut self, args: &[Vec<u8>]) -> (Answer<PendingReply>, bool) {
        self.answer(args)
    }

    fn pipelines(&self, args: &[Vec<u8>]) -> bool {
        single_write(args).is_some()
    }

    fn proto(&self) -> u8 {
        self.proto
    }
}

/// A plain `SET key value` or `DEL key`: a write whose start depends on
/// nothing earlier writes change, so it may be appended while they wait.
fn single_write(args: &[Vec<u8>]) -> Option<Request> {
    let is = |name: &[u8]| args[0].eq_ignore_ascii_case(name);
    match args.len() {
        3 if is(b"SET") => Some(Request::Put {
            key: args[1].clone(),
            value: args[2].clone(),
        }),
        2 if is(b"DEL") => Some(Request::Delete {
            key: args[1].clone(),
        }),
        _ => None,
    }
}

fn upper(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

fn wrong_args(cmd: &str) -> Reply {
    Reply::err(format!(
        "ERR wrong number of arguments for '{}' command",
        cmd.to_ascii_lowercase()
    ))
}

impl Conn<'_> {
    fn serve(mut self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let max_bulk = self
            .sh
            .settings
            .max_value_bytes
            .max(self.sh.settings.max_key_bytes);
        let limits = Limits {
            max_bulk,
            // SET of a maximal key and value always fits.
            max_command: Limits::default().max_command.max(2 * max_bulk + 64 * 1024),
            ..Limits::default()
        };
        let sh = self.sh;
        let deadlines = sh.settings.client_deadlines();
        let authenticated = self.authenticated.clone();
        let limits = move || {
            if authenticated.get() {
                limits
            } else {
                crate::resp::UNAUTHENTICATED
            }
        };
        if let Err(e) = crate::resp::serve(&stream, limits, deadlines, &mut self, || sh.stopping())
        {
            log::info!("RESP client: protocol error: {}; told it and closed", e.0);
        }
    }

    /// One command; the flag closes the connection after the reply.
    fn answer(&mut self, args: &[Vec<u8>]) -> (Answer<PendingReply>, bool) {
        self.client.touch(&args[0]);
        let gate = self.gate.check(args, &self.sh.counters, || {
            "client (RESP): wrong password".into()
        });
        self.authenticated.set(self.gate.is_authenticated());
        if self.gate.password != self.password {
            // Authenticated (again): forward to the coordinator with this password.
            self.password = self.gate.password.clone();
            self.forward = None;
        }
        if let Gated::Answer { reply, close } = gate {
            return (Answer::Now(reply), close);
        }
        if let Some(req) = single_write(args) {
            return (self.write(req), false);
        }
        let mut session = resp_admin::Session {
            sh: self.sh,
            proto: &mut self.proto,
            client: &self.client,
        };
        if let Some((reply, close)) = resp_admin::answer(&mut session, args) {
            return (Answer::Now(reply), close);
        }
        let cmd = upper(&args[0]);
        let n = args.len();
        let reply = match cmd.as_str() {
            "PING" => match n {
                1 => Reply::Simple("PONG".into()),
                2 => Reply::Bulk(args[1].clone()),
                _ => wrong_args(&cmd),
            },
            "ECHO" if n == 2 => Reply::Bulk(args[1].clone()),
            "QUIT" => return (Answer::Now(Reply::ok()), true),
            "SELECT" if n == 2 => {
                if args[1] == b"0" {
                    Reply::ok()
                } else {
                    Reply::err("ERR DB index is out of range")
                }
            }
            "DBSIZE" if n == 1 => Reply::Int(self.sh.store.meta().keys as i64),
            "GET" if n == 2 => self.data(Request::Get {
                key: args[1].clone(),
            }),
            "SET" if n >= 3 => {
                if let Some(opt) = args.get(3) {
                    let o = upper(opt);
                    return (
                        Answer::Now(Reply::err(format!(
                            "ERR SET option '{o}' is not supported by DKV (no expiry and no conditional writes)"
                        ))),
                        false,
                    );
                }
                self.data(Request::Put {
                    key: args[1].clone(),
                    value: args[2].clone(),
                })
            }
            "DEL" if n >= 2 => {
                let mut count = 0;
                for k in &args[1..] {
                    match self.data(Request::Delete { key: k.clone() }) {
                        Reply::Int(c) => count += c,
                        err => return (Answer::Now(err), false),
                    }
                }
                Reply::Int(count)
            }
            "EXISTS" if n >= 2 => {
                let mut count = 0;
                for k in &args[1..] {
                    match self.data(Request::Get { key: k.clone() }) {
                        Reply::Bulk(_) => count += 1,
                        Reply::Nil => {}
                        err => return (Answer::Now(err), false),
                    }
                }
                Reply::Int(count)
            }
            "MGET" if n >= 2 => {
                let mut items = Vec::with_capacity(n - 1);
                let mut bytes = 0;
                for k in &args[1..] {
                    match self.data(Request::Get { key: k.clone() }) {
                        r @ (Reply::Bulk(_) | Reply::Nil) => {
                            if let Reply::Bulk(v) = &r {
                                bytes += v.len();
                            }
                            if bytes > MAX_MGET_REPLY {
                                return (
                                    Answer::Now(Reply::err(format!(
                                        "ERR MGET reply exceeds {MAX_MGET_REPLY} bytes; ask for fewer keys"
                                    ))),
                                    false,
                                );
                            }
                            items.push(r)
                        }
                        err => return (Answer::Now(err), false),
                    }
                }
                Reply::Array(items)
            }
            "MSET" if n >= 3 && n % 2 == 1 => {
                for kv in args[1..].chunks(2) {
                    match self.data(Request::Put {
                        key: kv[0].clone(),
                        value: kv[1].clone(),
                    }) {
                        Reply::Simple(_) => {}
                        err => return (Answer::Now(err), false),
                    }
                }
                Reply::ok()
            }
            "ECHO" | "SELECT" | "DBSIZE" | "GET" | "SET" | "DEL" | "EXISTS" | "MGET" | "MSET" => {
                wrong_args(&cmd)
            }
            _ => {
                let shown: String = String::from_utf8_lossy(&args[0]).chars().take(64).collect();
                Reply::err(format!("ERR unknown command '{shown}'"))
            }
        };
        (Answer::Now(reply), false)
    }

    /// A data request, answered before the next command is handled.
    fn data(&mut self, req: Request) -> Reply {
        match self.write(req) {
            Answer::Now(r) => r,
            Answer::Later(p) => p.wait(),
        }
    }

    /// A data request: locally when this node is the serving coordinator
    /// (a write is started, its reply comes once it commits), forwarded to
    /// the coordinator otherwise.
    fn write(&mut self, req: Request) -> Answer<PendingReply> {
        let serving = self.sh.serving.read().clone();
        let dp = DataPath {
            store: &self.sh.store,
            log: &self.sh.log,
            serving: &serving,
            settings: &self.sh.settings,
        };
        match dp.begin(req.clone(), Instant::now()) {
            Begun::Done(Response::NotCoordinator { .. }) => Answer::Now(self.forward(req)),
            Begun::Done(r) => Answer::Now(to_reply(r)),
            Begun::Wait(rx) => Answer::Later(PendingReply(PendingWrite::new(
                rx,
                self.sh.settings.write_timeout(),
            ))),
        }
    }

    fn forward(&mut self, req: Request) -> Reply {
        if self.forward.is_none() {
            let opts = ClientOptions {
                op_timeout: Duration::from_secs(3),
                io_timeout: Duration::from_secs(3),
                max_key_bytes: self.sh.settings.max_key_bytes,
                max_value_bytes: self.sh.settings.max_value_bytes,
                password: self.password.clone(),
            };
            match Client::with_servers(self.sh.server.clone(), opts) {
                Ok(c) => self.forward = Some(c),
                Err(e) => return client_error(&e),
            }
        }
        let c = self.forward.as_mut().expect("client");
        let res = match req {
            Request::Get { key } => c
                .get(&key)
                .map(|v| v.map(Reply::Bulk).unwrap_or(Reply::Nil)),
            Request::Put { key, value } => c.put(&key, &value).map(|()| Reply::ok()),
            Request::Delete { key } => c.delete(&key).map(|e| Reply::Int(e as i64)),
            Request::Status | Request::Auth { .. } => Ok(Reply::err("ERR not a data request")),
        };
        res.unwrap_or_else(|e| client_error(&e))
    }
}

fn to_reply(r: Response) -> Reply {
    match r {
        Response::Value(Some(v)) => Reply::Bulk(v),
        Response::Value(None) => Reply::Nil,
        Response::Written => Reply::ok(),
        Response::Deleted(e) => Reply::Int(e as i64),
        Response::NotCoordinator { .. } => {
            Reply::err("TRYAGAIN no coordinator could serve the request; retry")
        }
        Response::Status(_) | Response::Authenticated => Reply::err("ERR not a data request"),
        Response::Error { kind, message } => Reply::err(match kind {
            ErrorKind::Unavailable => format!("TRYAGAIN {message}"),
            ErrorKind::NotEnoughReplicas => format!("NOREPLICAS {message}"),
            ErrorKind::OutOfMemory => format!("OOM {message}"),
            _ => format!("ERR {message}"),
        }),
    }
}

fn client_error(e: &Error) -> Reply {
    match e {
        Error::Unavailable(m) => Reply::err(format!("TRYAGAIN no coordinator reachable: {m}")),
        Error::NotEnoughReplicas(m) => Reply::err(format!("NOREPLICAS {m}")),
        Error::OutOfMemory(m) => Reply::err(format!("OOM {m}")),
        other => Reply::err(format!("ERR {other}")),
    }
}
