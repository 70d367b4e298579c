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
use super::resp_data::{self, Shape};
use super::resp_data::{upper, wrong_args};
use super::{resp_admin, Shared};
use crate::commands::Command;
use crate::net::listener::Service;
use crate::net::Stream;
use crate::resp::{Answer, AuthGate, Gated, Handler, Limits, Pending, Reply};
use crate::wire::{ErrorKind, Request, Response};
use crate::{Client, ClientOptions, Error};
use std::io::Write;
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
        tls: sh.security.tls.clone(),
        serve: Arc::new(move |stream, _| {
            Conn {
                sh: &sh,
                forward: None,
                tx: Default::default(),
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

struct Conn<'a> {
    sh: &'a Shared,
    /// Replica side: a client to the coordinator, opened on first use.
    forward: Option<Client>,
    tx: resp_data::Transaction,
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
struct PendingReply(PendingWrite, Shape);

impl Pending for PendingReply {
    fn wait(self) -> Reply {
        match self.0.wait() {
            Response::Reply(v) => resp_data::to_reply(v, self.1),
            r => to_reply(r),
        }
    }
}

impl Handler for Conn<'_> {
    type Pending = PendingReply;

    fn handle(&mut self, args: &[Vec<u8>]) -> (Answer<PendingReply>, bool) {
        self.answer(args)
    }

    /// Writes, and MULTI's queueing, pipeline: a write is evaluated against
    /// every entry appended before it, the connection's own included.
    fn pipelines(&self, args: &[Vec<u8>]) -> bool {
        self.tx.queued.is_some() || resp_data::is_write(&args[0])
    }

    fn proto(&self) -> u8 {
        self.proto
    }
}

impl Conn<'_> {
    fn serve(mut self, stream: Stream) {
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
            self.sh
                .metrics
                .resp_gated(&args[0], self.gate.is_authenticated());
            return (Answer::Now(reply), close);
        }
        let cmd = upper(&args[0]);
        if let Some(a) = self.transaction(&cmd, args) {
            return (a, false);
        }
        let mut session = resp_admin::Session {
            sh: self.sh,
            proto: &mut self.proto,
            client: &self.client,
        };
        if let Some((reply, close)) = resp_admin::answer(&mut session, args) {
            return (Answer::Now(reply), close);
        }
        if let Some(parsed) = resp_data::parse(args) {
            return match parsed {
                Ok((c, shape)) => (self.run(c, shape), false),
                Err(reply) => (Answer::Now(reply), false),
            };
        }
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
            "ECHO" | "SELECT" => wrong_args(&cmd),
            _ => {
                let shown: String = String::from_utf8_lossy(&args[0]).chars().take(64).collect();
                Reply::err(format!("ERR unknown command '{shown}'"))
            }
        };
        (Answer::Now(reply), false)
    }

    /// MULTI, EXEC, DISCARD, WATCH, UNWATCH, and queueing inside MULTI;
    /// `None` for a command that runs as usual.
    fn transaction(&mut self, cmd: &str, args: &[Vec<u8>]) -> Option<Answer<PendingReply>> {
        let n = args.len();
        let now = |r| Some(Answer::Now(r));
        match cmd {
            "MULTI" => {
                if self.tx.queued.is_some() {
                    return now(Reply::err("ERR MULTI calls can not be nested"));
                }
                self.tx.queued = Some(Vec::new());
                self.tx.failed = false;
                now(Reply::ok())
            }
            "DISCARD" => {
                if self.tx.queued.take().is_none() {
                    return now(Reply::err("ERR DISCARD without MULTI"));
                }
                self.tx.watched.clear();
                now(Reply::ok())
            }
            "UNWATCH" => {
                self.tx.watched.clear();
                now(Reply::ok())
            }
            "WATCH" if self.tx.queued.is_some() => {
                self.tx.failed = true;
                now(Reply::err("ERR WATCH inside MULTI is not allowed"))
            }
            "WATCH" if n < 2 => now(resp_data::wrong_args(cmd)),
            "WATCH" => {
                let keys = args[1..].to_vec();
                match self.run(Command::Fingerprint { keys: keys.clone() }, Shape::Plain) {
                    Answer::Now(Reply::Array(fps)) => {
                        for (k, f) in keys.into_iter().zip(fps) {
                            if let Reply::Int(f) = f {
                                self.tx.watched.push((k, f as u64));
                            }
                        }
                        now(Reply::ok())
                    }
                    Answer::Now(other) => now(other),
                    Answer::Later(p) => now(p.wait()),
                }
            }
            "EXEC" => {
                let Some(commands) = self.tx.queued.take() else {
                    return now(Reply::err("ERR EXEC without MULTI"));
                };
                let watched = std::mem::take(&mut self.tx.watched);
                if std::mem::take(&mut self.tx.failed) {
                    return now(Reply::err(
                        "EXECABORT Transaction discarded because of previous errors.",
                    ));
                }
                Some(self.run(Command::Exec { watched, commands }, Shape::Plain))
            }
            _ if self.tx.queued.is_some() && cmd != "QUIT" => {
                let reply = match resp_data::parse(args) {
                    Some(Ok((c, Shape::Plain))) if !c.is_keyspace_read() => {
                        self.tx.queued.as_mut().expect("in MULTI").push(c);
                        Reply::Simple("QUEUED".into())
                    }
                    Some(Err(e)) => e,
                    Some(Ok(_)) | None => Reply::err(format!(
                        "ERR DKV does not queue '{}' inside MULTI (only data commands other than \
                         SETNX, SCAN, KEYS, RANDOMKEY and DBSIZE)",
                        cmd.to_ascii_lowercase()
                    )),
                };
                if matches!(reply, Reply::Error(_)) {
                    self.tx.failed = true;
                }
                now(reply)
            }
            _ => None,
        }
    }

    /// A data command: run here when this node is the serving coordinator
    /// (a write's reply comes once it commits), forwarded to the coordinator
    /// otherwise.
    fn run(&mut self, cmd: Command, shape: Shape) -> Answer<PendingReply> {
        self.write(Request::Command(cmd), shape)
    }

    /// A data request: locally when this node is the serving coordinator
    /// (a write is started, its reply comes once it commits), forwarded to
    /// the coordinator otherwise.
    fn write(&mut self, req: Request, shape: Shape) -> Answer<PendingReply> {
        let serving = self.sh.serving.read().clone();
        let dp = DataPath {
            store: &self.sh.store,
            log: &self.sh.log,
            serving: &serving,
            settings: &self.sh.settings,
        };
        let t = self.sh.metrics.start(&req);
        match dp.begin(req.clone(), Instant::now(), crate::types::wall_ms()) {
            Begun::Done(Response::NotCoordinator { .. }) => Answer::Now(self.forward(req, shape)),
            Begun::Done(r) => match self.sh.metrics.done(t, r) {
                Response::Reply(v) => Answer::Now(resp_data::to_reply(v, shape)),
                r => Answer::Now(to_reply(r)),
            },
            Begun::Wait(rx, r) => Answer::Later(PendingReply(
                PendingWrite::new(rx, r, self.sh.settings.write_timeout())
                    .timed(self.sh.metrics.latency(t)),
                shape,
            )),
        }
    }

    fn forward(&mut self, req: Request, shape: Shape) -> Reply {
        if self.forward.is_none() {
            let opts = ClientOptions {
                op_timeout: Duration::from_secs(3),
                io_timeout: Duration::from_secs(3),
                max_key_bytes: self.sh.settings.max_key_bytes,
                max_value_bytes: self.sh.settings.max_value_bytes,
                password: self.password.clone(),
                // As a member: its own certificate (tls-auth-clients).
                tls: self.sh.security.tls.as_ref().map(|t| t.client()),
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
            Request::Command(cmd) => c.command(cmd).map(|v| resp_data::to_reply(v, shape)),
            Request::Status | Request::Auth { .. } | Request::Handoff { .. } | Request::Backup => {
                Ok(Reply::err("ERR not a data request"))
            }
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
        Response::Status(_)
        | Response::Authenticated
        | Response::Reply(_)
        | Response::BackupBegin { .. }
        | Response::BackupPairs(_)
        | Response::BackupEntries(_)
        | Response::BackupEnd { .. } => Reply::err("ERR not a data request"),
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
