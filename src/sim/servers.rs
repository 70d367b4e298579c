//! The registry servers' glue: start (built from the store) and kill, the
//! ticker, requests through each server's arbiter, a slow store's late
//! commits; and the node's side of it, its server link (`ServerLink` over
//! `ServerList`: the current server, failing over to the next).

use super::registry::StoreHandle;
use super::{Endpoint, Ev, LinkCall, Msg, Sim};
use crate::core::node::{Call, Input};
use crate::registry::Arbiter;
use crate::wire::{ErrorKind, ServerRequest, ServerResponse};
use std::time::Duration;

impl Sim {
    pub(super) fn server_tick_interval(&self) -> Duration {
        (self.settings.heartbeat() / 2).max(Duration::from_millis(5))
    }

    /// Whether server `k` runs and is not paused.
    pub(super) fn server_up(&self, k: usize) -> bool {
        let s = &self.servers[k];
        s.arbiter.is_some() && s.paused_until.is_none_or(|t| self.now >= t)
    }

    /// Starts server `k`'s process: its core is built from the store, as
    /// `Server::start_with` builds it. A store it cannot read fails the
    /// start; the process is started again a little later (a supervisor).
    pub(super) fn start_server(&mut self, k: usize) {
        if self.servers[k].arbiter.is_some() {
            return;
        }
        let t = self.server_clock(k);
        let settings = self.settings.clone();
        let handle = StoreHandle::new(self.store.clone(), k);
        let opened = Arbiter::open(
            Box::new(handle),
            move || t,
            |view, now| crate::registry::new_core(&settings, false, view, now),
        );
        self.store_calls_done();
        match opened {
            Ok(a) => {
                self.servers[k].arbiter = Some(a);
                self.servers[k].paused_until = None;
            }
            Err(_) => self.at(Duration::from_millis(500), Ev::ServerStart(k)),
        }
    }

    pub(super) fn kill_server(&mut self, k: usize) {
        self.servers[k].arbiter = None;
        self.servers[k].paused_until = None;
    }

    /// One request through server `k`'s arbiter, at its clock.
    pub(super) fn server_handle(&mut self, k: usize, req: ServerRequest) -> ServerResponse {
        let t = self.server_clock(k);
        let arbiter = self.servers[k].arbiter.as_ref().expect("server runs");
        let resp = arbiter.handle(&|| t, req);
        self.store_calls_done();
        resp
    }

    /// Commits a slow store took but did not apply yet land a little later.
    fn store_calls_done(&mut self) {
        let late = self.store.lock().take_in_flight();
        for c in late {
            let d = Duration::from_millis(1 + self.rng.below(400));
            self.at(d, Ev::StoreApply(c));
        }
    }

    /// The runtime's ticker: every heartbeat / 2 (a paused server ticks
    /// when it wakes).
    pub(super) fn server_tick(&mut self, k: usize) {
        if let Some(t) = self.servers[k].paused_until.filter(|&t| self.now < t) {
            self.at(t - self.now + Duration::from_micros(1), Ev::ServerTick(k));
            return;
        }
        let every = self.server_tick_interval();
        self.at(every, Ev::ServerTick(k));
        let t = self.server_clock(k);
        let refresh = self.now >= self.servers[k].next_refresh;
        if refresh {
            self.servers[k].next_refresh =
                self.now + crate::registry::refresh_interval(&self.settings);
        }
        if let Some(a) = self.servers[k].arbiter.as_ref() {
            let _ = if refresh {
                a.tick(&|| t)
            } else {
                a.tick_local(&|| t)
            };
            self.store_calls_done();
        }
    }

    pub(super) fn server_receive(&mut self, k: usize, from: Endpoint, msg: Msg) {
        let Msg::ServerCall { link, req } = msg else {
            return;
        };
        if self.servers[k].arbiter.is_none() {
            // Nobody listens on the port: the connection is refused at once.
            let d = self.rng.delay(false);
            let msg = Msg::ServerReply {
                link,
                reply: Err("connection refused".into()),
                refused: true,
            };
            let to = from;
            let from = Endpoint::Server(k);
            self.at(d, Ev::Deliver { to, from, msg });
            return;
        }
        let decides = !matches!(
            req,
            ServerRequest::View | ServerRequest::WhoIsCoordinator | ServerRequest::Auth { .. }
        );
        let resp = self.server_handle(k, req);
        let slow = decides && self.store.lock().faults.slow;
        let extra = if slow {
            Duration::from_millis(self.rng.below(300))
        } else {
            Duration::ZERO
        };
        let msg = Msg::ServerReply {
            link,
            reply: Ok(resp),
            refused: false,
        };
        self.send_lossy_after(Endpoint::Server(k), from, msg, extra);
    }

    // -- the node's server link -------------------------------------------

    /// A call of the node's core, sent to the link's current server. The
    /// link gives up after its timeout (`server-update-interval` × 2, at
    /// least 200 ms); an answer after that is dropped with the connection.
    pub(super) fn call_server(&mut self, i: usize, call: Call, req: ServerRequest) {
        let link = self.next_link;
        self.next_link += 1;
        let at = self.nodes[i].server;
        let sent = self.local(i);
        let lc = LinkCall {
            call,
            sent,
            at,
            retried: false,
            req: req.clone(),
        };
        self.nodes[i].calls.insert(link, lc);
        let (me, to) = (Endpoint::Node(i), Endpoint::Server(at));
        self.send_lossy(me, to, Msg::ServerCall { link, req });
        let msg = Msg::LinkTimeout { link };
        let t = self.link_timeout;
        self.at(
            t,
            Ev::Deliver {
                to: me,
                from: me,
                msg,
            },
        );
    }

    /// Server `k` failed a call: if it is still current, the next server
    /// becomes current (`ServerList::failed`). Returns the current one.
    fn link_failed(&mut self, i: usize, k: usize) -> usize {
        if self.nodes[i].server == k {
            self.nodes[i].server = (k + 1) % self.servers.len();
        }
        self.nodes[i].server
    }

    pub(super) fn link_reply(
        &mut self,
        i: usize,
        link: u64,
        reply: Result<ServerResponse, String>,
        refused: bool,
    ) {
        let Some(at) = self.nodes[i].calls.get(&link).map(|c| c.at) else {
            return; // the link gave up on it
        };
        // As `ServerLink::call_at`: an `Unavailable` answer is a failure.
        let reply = match reply {
            Ok(ServerResponse::Error {
                kind: ErrorKind::Unavailable,
                message,
            }) => Err(format!("unavailable: {message}")),
            r => r,
        };
        if reply.is_err() {
            let next = self.link_failed(i, at);
            let lc = self.nodes[i].calls.get_mut(&link).expect("call");
            if refused && !lc.retried && next != at {
                // Nothing was sent: the same call goes to the next server.
                lc.retried = true;
                lc.at = next;
                let req = lc.req.clone();
                let (me, to) = (Endpoint::Node(i), Endpoint::Server(next));
                self.send_lossy(me, to, Msg::ServerCall { link, req });
                return;
            }
        } else {
            self.nodes[i].server = at;
        }
        let lc = self.nodes[i].calls.remove(&link).expect("call");
        let reply = reply.map_err(|e| format!("server {at}: {e}"));
        let (call, sent) = (lc.call, lc.sent);
        self.input(i, Input::ServerReply { call, sent, reply });
    }

    pub(super) fn link_timed_out(&mut self, i: usize, link: u64) {
        let Some(lc) = self.nodes[i].calls.remove(&link) else {
            return;
        };
        self.link_failed(i, lc.at);
        let reply = Err(format!("server {}: timed out", lc.at));
        let (call, sent) = (lc.call, lc.sent);
        self.input(i, Input::ServerReply { call, sent, reply });
    }
}
