//! The simulated clients: each picks an op, asks the servers for the
//! coordinator, sends the request, retries, times out, and records every
//! op in the history that the final check tests for linearizability.

use super::{Endpoint, Ev, Msg, Sim, KEYS};
use crate::commands::{Command, Cond, SetExpiry, Value, When};
use crate::history::{self, KvOp};
use crate::wire::{Request, Response, ServerRequest, ServerResponse};
use std::time::Duration;

impl Sim {
    pub(super) fn send_client(
        &mut self,
        from: Endpoint,
        client: usize,
        attempt: u64,
        resp: Response,
    ) {
        if self.net.blocked(from, Endpoint::Client(client)) {
            return; // lost with the connection: the client times out
        }
        let d = self.rng.delay(false);
        self.at(
            d,
            Ev::Deliver {
                to: Endpoint::Client(client),
                from,
                msg: Msg::ClientResp { attempt, resp },
            },
        );
    }

    pub(super) fn send_client_refused(&mut self, i: usize, msg: &Msg) {
        if let Msg::ClientReq {
            client, attempt, ..
        } = msg
        {
            let resp = Response::Error {
                kind: crate::wire::ErrorKind::Unavailable,
                message: "refused".into(),
            };
            self.send_client(Endpoint::Node(i), *client, *attempt, resp);
        }
    }

    pub(super) fn client_step(&mut self, c: usize) {
        if self.clients[c].op.is_some() {
            return;
        }
        let key = KEYS[self.rng.below(KEYS.len() as u64) as usize].to_string();
        let v = self.next_value;
        let op = match self.rng.below(20) {
            0..=6 => KvOp::Read(key),
            7..=10 => KvOp::Write(key, v),
            11 => KvOp::WriteTtl(key, v, 20 + self.rng.below(400)),
            12..=14 => KvOp::Incr(key),
            15..=16 => KvOp::SetNx(key, v),
            _ => KvOp::Delete(key),
        };
        self.next_value += 1;
        let id = self
            .history
            .invoke(self.clients[c].thread, op.clone(), self.now);
        self.clients[c].op = Some((op, id));
        self.clients[c].deadline = self.now + Duration::from_secs(3);
        self.clients[c].sent = false;
        self.client_send(c);
    }

    fn client_send(&mut self, c: usize) {
        let Some((op, _)) = self.clients[c].op.clone() else {
            return;
        };
        if self.clients[c].target.is_none() {
            // Ask the servers (a direct look-up, subject to partitions), from
            // the one that answered last, as `Client::server_call` does.
            let n = self.servers.len();
            let first = self.clients[c].server;
            let order: Vec<usize> = std::iter::once(first)
                .chain((0..n).filter(|&k| k != first))
                .collect();
            let mut view = None;
            for k in order {
                let (me, to) = (Endpoint::Client(c), Endpoint::Server(k));
                if self.net.blocked(me, to) || self.net.blocked(to, me) || !self.server_up(k) {
                    continue;
                }
                if let ServerResponse::View(v) = self.server_handle(k, ServerRequest::View) {
                    self.clients[c].server = k;
                    view = Some(v);
                    break;
                }
            }
            let Some(view) = view else {
                return self.client_retry(c);
            };
            self.clients[c].target = view.coordinator.and_then(|id| self.node_by_id(id));
            if self.clients[c].target.is_none() {
                return self.client_retry(c);
            }
        }
        let t = self.clients[c].target.expect("target");
        let req = match op {
            KvOp::Read(k) => Request::Get {
                key: k.into_bytes(),
            },
            KvOp::Write(k, v) => Request::Put {
                key: k.into_bytes(),
                value: v.to_string().into_bytes(),
            },
            KvOp::Delete(k) => Request::Delete {
                key: k.into_bytes(),
            },
            KvOp::WriteTtl(k, v, ms) => Request::Command(Command::Set {
                key: k.into_bytes(),
                value: v.to_string().into_bytes(),
                cond: Cond::Always,
                expiry: SetExpiry::Set(When::In(ms as i64)),
                get: false,
            }),
            KvOp::Incr(k) => Request::Command(Command::IncrBy {
                key: k.into_bytes(),
                by: 1,
            }),
            KvOp::SetNx(k, v) => Request::Command(Command::Set {
                key: k.into_bytes(),
                value: v.to_string().into_bytes(),
                cond: Cond::Absent,
                expiry: SetExpiry::Clear,
                get: false,
            }),
        };
        self.clients[c].attempt += 1;
        let attempt = self.clients[c].attempt;
        if !self.net.blocked(Endpoint::Client(c), Endpoint::Node(t)) {
            let d = self.rng.delay(false);
            let msg = Msg::ClientReq {
                client: c,
                attempt,
                req,
            };
            self.at(
                d,
                Ev::Deliver {
                    to: Endpoint::Node(t),
                    from: Endpoint::Client(c),
                    msg,
                },
            );
            self.clients[c].sent = true;
        }
        self.at(
            Duration::from_millis(1000),
            Ev::ClientTimeout { client: c, attempt },
        );
    }

    /// Tries the op again at a coordinator asked anew from the server.
    fn client_retry(&mut self, c: usize) {
        self.client_resend(c, Duration::from_millis(20), true);
    }

    /// Sends the op again after `delay` (a marked attempt, so the timeout
    /// event resends instead of timing out), unless its deadline passed.
    fn client_resend(&mut self, c: usize, delay: Duration, forget_target: bool) {
        if self.now >= self.clients[c].deadline {
            self.client_done(c, None, false);
            return;
        }
        if forget_target {
            self.clients[c].target = None;
        }
        self.clients[c].attempt += 1;
        let attempt = self.clients[c].attempt;
        self.at(
            delay,
            Ev::ClientTimeout {
                client: c,
                attempt: attempt | (1 << 63),
            },
        );
    }

    pub(super) fn client_timeout(&mut self, c: usize, attempt: u64) {
        if attempt & (1 << 63) != 0 {
            if self.clients[c].attempt == attempt & !(1 << 63) && self.clients[c].op.is_some() {
                self.client_send(c);
            }
            return;
        }
        if self.clients[c].attempt != attempt || self.clients[c].op.is_none() {
            return;
        }
        // No answer: a read is retried; a write sent may have happened.
        let is_read = matches!(self.clients[c].op, Some((KvOp::Read(_), _)));
        if is_read || !self.clients[c].sent {
            self.client_retry(c);
        } else {
            self.client_done(c, None, true);
        }
    }

    pub(super) fn client_response(&mut self, c: usize, from: Endpoint, resp: Response) {
        let Some((op, _)) = self.clients[c].op.clone() else {
            return;
        };
        if let Endpoint::Node(n) = from {
            if self.clients[c].target != Some(n) {
                return; // an answer to an attempt we gave up on
            }
        }
        match resp {
            Response::Value(v) => {
                let v = v.map(|b| String::from_utf8(b).expect("utf8").parse().expect("number"));
                self.client_done(c, Some(history::Ret::Value(v)), false)
            }
            Response::Written => self.client_done(c, Some(history::Ret::Ok), false),
            Response::Deleted(e) => self.client_done(c, Some(history::Ret::Deleted(e)), false),
            Response::Reply(v) => {
                let ret = match (&op, v) {
                    (KvOp::Incr(_), Value::Int(n)) => history::Ret::Value(Some(n as u64)),
                    (KvOp::SetNx(..), Value::Ok) => history::Ret::Applied(true),
                    (KvOp::SetNx(..), Value::Nil) => history::Ret::Applied(false),
                    (KvOp::WriteTtl(..), Value::Ok) => history::Ret::Ok,
                    (op, v) => {
                        self.fail(format!("{op:?} was answered {v:?}"));
                        return;
                    }
                };
                self.client_done(c, Some(ret), false)
            }
            Response::NotCoordinator { coordinator, .. } => {
                self.clients[c].target = coordinator.as_deref().and_then(Self::node_by_addr);
                if self.clients[c].target.is_none()
                    || self.clients[c].target
                        == Some(match from {
                            Endpoint::Node(n) => n,
                            _ => usize::MAX,
                        })
                {
                    self.clients[c].target = None;
                }
                self.clients[c].sent = false;
                self.client_resend(c, Duration::from_millis(10), false);
            }
            Response::Error {
                kind: crate::wire::ErrorKind::Timeout,
                ..
            } => {
                let _ = op;
                self.client_done(c, None, true)
            }
            Response::Error { .. }
            | Response::Status(_)
            | Response::Authenticated
            | Response::BackupBegin { .. }
            | Response::BackupPairs(_)
            | Response::BackupEntries(_)
            | Response::BackupEnd { .. } => {
                self.clients[c].sent = false;
                self.clients[c].target = None;
                self.client_resend(c, Duration::from_millis(10), false);
            }
        }
    }

    /// Ends the client's op: `ret` when answered, `unknown` when a write's
    /// outcome cannot be known, neither when it surely did not happen.
    fn client_done(&mut self, c: usize, ret: Option<history::Ret>, unknown: bool) {
        let Some((_, id)) = self.clients[c].op.take() else {
            return;
        };
        match ret {
            Some(r) => {
                self.history.ret(id, r, self.now);
                self.report.ops_ok += 1;
            }
            None if unknown => {
                self.report.ops_unknown += 1;
                // Leave it in flight: it may take effect at any later time.
                self.clients[c].thread += 1000;
            }
            None => self.history.cancel(id),
        }
        self.clients[c].attempt += 1;
        let d = Duration::from_millis(5 + self.rng.below(30));
        self.at(d, Ev::ClientStep(c));
    }
}
