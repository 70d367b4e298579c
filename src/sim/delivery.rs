//! How messages travel between the simulated processes: datagram-like
//! sends (beacons, server calls and replies: dropped, duplicated, delayed),
//! FIFO streams (replication; broken by blocked links and crashes), and the
//! delivery of an event to its endpoint (held while the process is paused,
//! refused while it is down).

use super::{Endpoint, Ev, Msg, Sim, StreamId};
use std::time::Duration;

impl Sim {
    /// Datagram-like delivery: may be dropped, duplicated or delayed.
    pub(super) fn send_lossy(&mut self, from: Endpoint, to: Endpoint, msg: Msg) {
        self.send_lossy_after(from, to, msg, Duration::ZERO);
    }

    /// `send_lossy`, `extra` later (a server slowed by its store).
    pub(super) fn send_lossy_after(
        &mut self,
        from: Endpoint,
        to: Endpoint,
        msg: Msg,
        extra: Duration,
    ) {
        if self.net.blocked(from, to) || (self.cfg.faults && self.rng.chance(0.02)) {
            // A lost server call or reply: the caller's link times out.
            return;
        }
        let delay = self.rng.delay(self.cfg.faults) + extra;
        if let Msg::Beacon(b) = &msg {
            if self.cfg.faults && self.rng.chance(0.02) {
                let d2 = self.rng.delay(true);
                self.at(
                    d2,
                    Ev::Deliver {
                        to,
                        from,
                        msg: Msg::Beacon(b.clone()),
                    },
                );
            }
        }
        self.at(delay, Ev::Deliver { to, from, msg });
    }

    /// Stream delivery: in order; a blocked link breaks the stream.
    pub(super) fn send_stream(&mut self, id: StreamId, from: Endpoint, to: Endpoint, msg: Msg) {
        if self.net.blocked(from, to) || self.net.blocked(to, from) {
            self.close_stream(id, false);
            return;
        }
        let delay = self.rng.delay(false);
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let t = (self.now + delay).max(s.fifo_at);
        s.fifo_at = t;
        self.at(t - self.now, Ev::Deliver { to, from, msg });
    }

    pub(super) fn close_stream(&mut self, id: StreamId, crashed: bool) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if !s.open {
            return;
        }
        s.open = false;
        let (f, c) = (s.follower, s.coordinator);
        let delay = self.rng.delay(false);
        self.at(
            delay,
            Ev::Deliver {
                to: Endpoint::Node(f),
                from: Endpoint::Node(c),
                msg: Msg::Closed {
                    stream: id,
                    refused: crashed && !self.nodes[c].alive,
                },
            },
        );
        self.at(
            delay,
            Ev::Deliver {
                to: Endpoint::Node(c),
                from: Endpoint::Node(f),
                msg: Msg::Closed {
                    stream: id,
                    refused: false,
                },
            },
        );
    }

    pub(super) fn deliver(&mut self, to: Endpoint, from: Endpoint, msg: Msg) {
        match to {
            Endpoint::Server(k) => {
                if let Some(t) = self.servers[k].paused_until.filter(|&t| self.now < t) {
                    // A paused process: requests wait in the socket buffers.
                    let wait = t - self.now + Duration::from_micros(1);
                    self.at(wait, Ev::Deliver { to, from, msg });
                    return;
                }
                self.server_receive(k, from, msg);
            }
            Endpoint::Client(c) => {
                if let Msg::ClientResp { attempt, resp } = msg {
                    if attempt == self.clients[c].attempt {
                        self.client_response(c, from, resp);
                    }
                }
            }
            Endpoint::Node(i) => {
                if !self.nodes[i].alive {
                    if let Msg::ClientReq { .. } = msg {
                        // Connection refused: the client sees it at once.
                        self.send_client_refused(i, &msg);
                    }
                    return;
                }
                if self.nodes[i].paused_until.is_some_and(|t| self.now < t) {
                    // A paused process: its messages wait in the socket buffers.
                    let wait = self.nodes[i].paused_until.expect("paused") - self.now;
                    self.at(
                        wait + Duration::from_micros(1),
                        Ev::Deliver { to, from, msg },
                    );
                    return;
                }
                self.node_receive(i, from, msg);
            }
        }
    }
}
