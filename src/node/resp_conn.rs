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
use super::Shared;
use crate::net::listener::Service;
use crate::resp::{Answer, AuthGate, Gated, Handler, Limits, Pending, Reply};
use crate::types::Role;
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
                name: None,
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
    name: Option<Vec<u8>>,
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
            "CLIENT" if n >= 2 => match upper(&args[1]).as_str() {
                "SETNAME" if n == 3 => {
                    self.name = Some(args[2].clone());
                    Reply::ok()
                }
                "GETNAME" => self.name.clone().map(Reply::Bulk).unwrap_or(Reply::Nil),
                "SETINFO" => Reply::ok(),
                "ID" => Reply::Int(1),
                other => Reply::err(format!(
                    "ERR unknown subcommand '{}'",
                    other.to_ascii_lowercase()
                )),
            },
            "HELLO" => {
                let role = if self.role() == Role::Coordinator {
                    "master"
                } else {
                    "replica"
                };
                crate::resp::hello(args, role, "standalone")
            }
            // redis-cli asks for command docs at start; an empty answer is valid.
            "COMMAND" => match args.get(1).map(|a| upper(a)).as_deref() {
                None | Some("DOCS") | Some("INFO") => Reply::Array(vec![]),
                Some("COUNT") => Reply::Int(0),
                Some(other) => Reply::err(format!(
                    "ERR unknown subcommand '{}'",
                    other.to_ascii_lowercase()
                )),
            },
            "INFO" => Reply::Bulk(self.info().into_bytes()),
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
            "ECHO" | "SELECT" | "CLIENT" | "DBSIZE" | "GET" | "SET" | "DEL" | "EXISTS" | "MGET"
            | "MSET" => wrong_args(&cmd),
            _ => {
                let shown: String = String::from_utf8_lossy(&args[0]).chars().take(64).collect();
                Reply::err(format!("ERR unknown command '{shown}'"))
            }
        };
        (Answer::Now(reply), false)
    }

    fn role(&self) -> Role {
        self.sh.serving.read().role
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
        match dp.begin(req.clone(), Instant::now(), crate::types::wall_ms()) {
            Begun::Done(Response::NotCoordinator { .. }) => Answer::Now(self.forward(req)),
            Begun::Done(r) => Answer::Now(to_reply(r)),
            Begun::Wait(rx, r) => Answer::Later(PendingReply(PendingWrite::new(
                rx,
                r,
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
            Request::Status | Request::Auth { .. } | Request::Command(_) => {
                Ok(Reply::err("ERR not a data request"))
            }
        };
        res.unwrap_or_else(|e| client_error(&e))
    }

    fn info(&self) -> String {
        let s = self.sh.serving.read().clone();
        let meta = self.sh.store.meta();
        let st = self.sh.log.state();
        let mut out = String::new();
        out += "# Server\r\n";
        out += &format!("redis_version:7.0.0-dkv-{}\r\n", env!("CARGO_PKG_VERSION"));
        out += "redis_mode:standalone\r\n";
        out += &format!("dkv_node_id:{}\r\n", self.sh.id);
        out += &format!("dkv_epoch:{}\r\n", s.epoch);
        out += "\r\n# Replication\r\n";
        if s.role == Role::Coordinator {
            let replicas: Vec<_> = self
                .sh
                .log
                .commit_set()
                .into_iter()
                .filter(|&id| id != self.sh.id)
                .collect();
            out += "role:master\r\n";
            out += &format!("connected_slaves:{}\r\n", replicas.len());
            for (i, id) in replicas.iter().enumerate() {
                out += &format!("slave{i}:id={id},state=online,offset={}\r\n", st.commit);
            }
            out += &format!("master_repl_offset:{}\r\n", st.last.index);
        } else {
            out += "role:slave\r\n";
            let (host, port) = s
                .coordinator_resp_addr
                .as_deref()
                .and_then(|a| a.rsplit_once(':'))
                .unwrap_or(("", "0"));
            out += &format!("master_host:{host}\r\nmaster_port:{port}\r\n");
            out += &format!(
                "master_link_status:{}\r\n",
                if s.role == Role::Replica {
                    "up"
                } else {
                    "down"
                }
            );
            out += &format!("slave_repl_offset:{}\r\n", meta.applied.index);
        }
        out += "\r\n# Memory\r\n";
        out += &format!("used_memory:{}\r\n", meta.bytes);
        out += &format!("maxmemory:{}\r\n", self.sh.settings.max_memory);
        out += "maxmemory_policy:noeviction\r\n";
        let a = self.sh.auth_stats();
        out += "\r\n# Security\r\n";
        out += &format!(
            "dkv_cluster_secret:{}\r\n",
            if a.cluster_secret { "yes" } else { "no" }
        );
        out += &format!(
            "dkv_client_password:{}\r\n",
            if self.sh.security.password.is_some() {
                "yes"
            } else {
                "no"
            }
        );
        out += &format!("dkv_forged_beacons:{}\r\n", a.forged_beacons);
        out += &format!("dkv_replayed_beacons:{}\r\n", a.replayed_beacons);
        out += &format!("dkv_rejected_peers:{}\r\n", a.rejected_peers);
        out += &format!("dkv_failed_client_auth:{}\r\n", a.failed_client_auth);
        out += "\r\n# Keyspace\r\n";
        if meta.keys > 0 {
            out += &format!("db0:keys={},expires=0,avg_ttl=0\r\n", meta.keys);
        }
        out
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
        Response::Status(_) | Response::Authenticated | Response::Reply(_) => {
            Reply::err("ERR not a data request")
        }
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
