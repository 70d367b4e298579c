//! The simulated nodes: start (with or without their data directory),
//! registration, crash; [`SimIo`], the simulator's implementation of
//! [`NodeIo`] for the shared executor; the ticker, applying committed
//! entries and answering waiting clients; the routing of a node's incoming
//! messages; and the write-ahead log writes to the modelled disk.

use super::disk::Disk;
use super::{idle_serving, Bug, Endpoint, Ev, Msg, Sim, StreamId, TICK};
use crate::core::exec::{self, Called, NodeIo};
use crate::core::node::{Action, Call, Input, LocalStatus, NodeCore, Serving};
use crate::log::ReplLog;
use crate::node::requests::{finish, Begun, DataPath};
use crate::storage::FsyncPolicy;
use crate::store::Store;
use crate::types::{Epoch, LogPos, NodeId};
use crate::wire::{ClusterView, Response, ServerRequest, ServerResponse};
use crossbeam_channel::TryRecvError;
use std::time::{Duration, Instant};

/// The simulator's way of doing node `i`'s actions: beacons and server
/// calls become network events, roles and streams change the node.
struct SimIo<'a> {
    sim: &'a mut Sim,
    i: usize,
}

impl NodeIo for SimIo<'_> {
    fn saw(&mut self, a: &Action) {
        if self.sim.trace && !matches!(a, Action::SendBeacon { .. }) {
            eprintln!("          node#{} action {a:?}", self.i);
        }
    }

    fn send_beacon(&mut self, to: Vec<String>, beacon: crate::wire::Beacon) {
        for addr in to {
            if let Some(j) = Sim::node_by_addr(&addr) {
                self.sim.send_lossy(
                    Endpoint::Node(self.i),
                    Endpoint::Node(j),
                    Msg::Beacon(beacon.clone()),
                );
            }
        }
    }

    fn call_server(&mut self, call: Call, request: ServerRequest) -> Called {
        self.sim.call_server(self.i, call, request);
        Called::Sent
    }

    fn become_coordinator(&mut self, epoch: Epoch, isr: Vec<NodeId>, required: usize) {
        let (sim, i) = (&mut *self.sim, self.i);
        if let Some(s) = sim.nodes[i].follower.take() {
            sim.close_stream(s, false);
        }
        let id = sim.nodes[i].id;
        sim.nodes[i].log.become_leader(id, epoch, &isr, required);
        sim.report.failovers += u64::from(epoch > 1);
    }

    fn step_down(&mut self) {
        let (sim, i) = (&mut *self.sim, self.i);
        sim.nodes[i].log.step_down();
        sim.nodes[i].pending.clear();
        let feeds: Vec<StreamId> = sim
            .streams
            .iter()
            .filter(|(_, s)| s.open && s.coordinator == i)
            .map(|(&id, _)| id)
            .collect();
        for s in feeds {
            sim.close_stream(s, false);
        }
    }

    fn follow(&mut self, _coordinator: NodeId, addr: String, epoch: Epoch) {
        self.sim.follow(self.i, addr, epoch);
    }

    fn add_to_commit_set(&mut self, id: NodeId) -> bool {
        self.sim.nodes[self.i].log.add_to_commit_set(id)
    }

    fn remove_from_commit_set(&mut self, id: NodeId) {
        self.sim.nodes[self.i].log.remove_from_commit_set(id);
    }

    fn release_follower(&mut self, id: NodeId) {
        self.sim.nodes[self.i].log.release(id);
    }

    fn set_required(&mut self, n: usize) {
        self.sim.nodes[self.i].log.set_required(n);
    }

    fn publish(&mut self, serving: Serving) {
        self.sim.nodes[self.i].serving = serving;
    }

    /// The simulated node refuses client requests while it holds writes
    /// (the real one makes them wait), and checks at each tick whether the
    /// target holds everything.
    fn hold_writes(&mut self, target: Option<NodeId>, _successor: Option<String>) {
        let until = self.sim.now + Duration::from_secs(2);
        self.sim.nodes[self.i].handoff = target.map(|t| (t, until));
    }
}

impl Sim {
    pub(super) fn start_node(&mut self, i: usize) {
        let keep = self.nodes[i].disk.is_some() && self.nodes[i].id != 0;
        let n = &mut self.nodes[i];
        n.incarnation += 1;
        n.alive = true;
        n.paused_until = None;
        n.leaving = None;
        n.follower = None;
        n.pending.clear();
        n.core = None;
        n.serving = idle_serving();
        n.server = 0;
        if self.servers.len() > 1 {
            // Each host may list the servers in its own order: a new process
            // starts at a server of its own.
            self.nodes[i].server = self.rng.below(self.servers.len() as u64) as usize;
        }
        let n = &mut self.nodes[i];
        n.calls.clear();
        if keep {
            // Restart with its data directory: what recovery finds there.
            let disk = n.disk.as_mut().expect("durable");
            disk.busy = false;
            match disk.recover() {
                Ok(r) => {
                    let log = ReplLog::new(50, true);
                    log.restore(r.base, r.entries, r.commit);
                    n.log = log;
                    n.store = r.store;
                }
                Err(e) => {
                    let id = n.id;
                    return self.fail(format!("node {id} cannot recover its data: {e}"));
                }
            }
            if let Some(FsyncPolicy::Interval(every)) = n.disk.as_ref().map(|d| d.policy) {
                let inc = n.incarnation;
                self.at(every, Ev::DiskSync(i, inc));
            }
        } else {
            n.id = 0;
            let durable = n.disk.is_some();
            if let Some(d) = n.disk.as_mut() {
                *d = Disk::new(d.policy);
            }
            n.log = ReplLog::new(50, durable);
            n.store = Store::new();
            if let Some(FsyncPolicy::Interval(every)) = n.disk.as_ref().map(|d| d.policy) {
                let inc = n.incarnation;
                self.at(every, Ev::DiskSync(i, inc));
            }
        }
        if self.cfg.bug == Some(Bug::AckBeforeReplication) {
            self.nodes[i].log.inject_ack_before_replication();
        }
        if std::mem::take(&mut self.nodes[i].forgets_epoch) {
            self.nodes[i].max_epoch = self.nodes[i].log.state().last.epoch;
        }
        self.register(i, 0);
    }

    /// One registration attempt, as the node's `register`: it walks the
    /// servers from the current one (where the process started) and stops
    /// at the first that registers it; a refusal ends the process.
    /// A walk that fails is tried again after a growing pause,
    /// `reconnection-attempts` + 2 walks in all; then the process exits.
    pub(super) fn register(&mut self, i: usize, attempt: u32) {
        let last = self.nodes[i].log.state().last;
        let req = ServerRequest::Register {
            node_id: (self.nodes[i].id != 0).then_some(self.nodes[i].id),
            incarnation: self.nodes[i].incarnation,
            data_addr: format!("n{i}"),
            beacon_addr: format!("n{i}"),
            last,
            resp_addr: None,
        };
        let n = self.servers.len();
        let first = self.nodes[i].server;
        let order = std::iter::once(first).chain((0..n).filter(|&k| k != first));
        for k in order.collect::<Vec<_>>() {
            let (to, from) = (Endpoint::Server(k), Endpoint::Node(i));
            if self.net.blocked(from, to) || self.net.blocked(to, from) || !self.server_up(k) {
                continue;
            }
            let sent = self.local(i);
            match self.server_handle(k, req.clone()) {
                ServerResponse::Registered { node_id, view } => {
                    self.nodes[i].server = k;
                    return self.registered(i, node_id, view, sent);
                }
                ServerResponse::Rejected { reason, .. } => {
                    if self.trace {
                        eprintln!("          node#{i}: registration refused ({reason}); the process exits");
                    }
                    self.nodes[i].alive = false;
                    return;
                }
                _ => {}
            }
        }
        if attempt + 1 >= self.settings.reconnection_attempts.max(1) + 2 {
            if self.trace {
                eprintln!("          node#{i}: no server registered it; the process exits");
            }
            self.nodes[i].alive = false;
            return;
        }
        let pause = (Duration::from_millis(100) * 2u32.pow(attempt)).min(Duration::from_secs(2));
        let inc = self.nodes[i].incarnation;
        self.at(
            pause,
            Ev::Register {
                node: i,
                inc,
                attempt: attempt + 1,
            },
        );
    }

    fn registered(&mut self, i: usize, node_id: NodeId, view: ClusterView, sent: Instant) {
        self.nodes[i].id = node_id;
        let (core, actions) = NodeCore::new(
            node_id,
            self.nodes[i].incarnation,
            &self.settings,
            view,
            sent,
        );
        self.nodes[i].serving = core.serving();
        self.nodes[i].core = Some(core);
        self.execute(i, actions);
        let inc = self.nodes[i].incarnation;
        self.at(TICK, Ev::Tick(i, inc));
    }

    pub(super) fn node_by_id(&self, id: NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    pub(super) fn node_by_addr(addr: &str) -> Option<usize> {
        addr.strip_prefix('n')?.parse().ok()
    }

    pub(super) fn crash(&mut self, i: usize) {
        if !self.nodes[i].alive {
            return;
        }
        self.nodes[i].alive = false;
        self.nodes[i].core = None;
        self.nodes[i].pending.clear();
        self.nodes[i].calls.clear();
        self.nodes[i].log.step_down();
        let ids: Vec<StreamId> = self
            .streams
            .iter()
            .filter(|(_, s)| s.open && (s.follower == i || s.coordinator == i))
            .map(|(&id, _)| id)
            .collect();
        for s in ids {
            self.close_stream(s, true);
        }
    }

    pub(super) fn input(&mut self, i: usize, input: Input) {
        if !self.nodes[i].alive {
            return;
        }
        let now = self.local(i);
        let Some(core) = self.nodes[i].core.as_mut() else {
            return;
        };
        let actions = core.handle(now, input);
        self.execute(i, actions);
    }

    /// Runs node `i`'s actions through the shared executor
    /// ([`exec::execute`]), with [`SimIo`] doing each one.
    fn execute(&mut self, i: usize, actions: Vec<Action>) {
        let Some(mut core) = self.nodes[i].core.take() else {
            return;
        };
        let now = self.local(i);
        exec::execute(&mut core, now, actions, &mut SimIo { sim: self, i });
        // A crash during execution (none happens today) drops the core.
        if self.nodes[i].alive && self.nodes[i].core.is_none() {
            self.nodes[i].core = Some(core);
        }
    }

    pub(super) fn tick(&mut self, i: usize) {
        if !self.nodes[i].alive {
            return;
        }
        let inc = self.nodes[i].incarnation;
        self.at(TICK, Ev::Tick(i, inc));
        if self.nodes[i].paused_until.is_some_and(|t| self.now < t) {
            return;
        }
        self.nodes[i].paused_until = None;
        if self.nodes[i].leaving.is_some_and(|t| self.now >= t) {
            return self.crash(i); // not released in time: it stops anyway
        }
        self.persist_log(i);
        self.apply(i);
        self.feed(i);
        if let Some((target, until)) = self.nodes[i].handoff {
            if self.nodes[i].log.handoff_ready_now(target) {
                self.nodes[i].handoff = None;
                self.input(i, Input::HandoffReady(true));
            } else if self.now >= until {
                self.nodes[i].handoff = None;
                self.input(i, Input::HandoffReady(false));
            }
        }
        let meta = self.nodes[i].store.meta();
        let local = LocalStatus {
            last: self.nodes[i].log.state().last,
            applied: meta.applied,
            digest: meta.digest,
        };
        self.input(i, Input::Tick(local));
    }

    pub(super) fn apply(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        while n.log.apply_committed(&n.store, 64).is_some() {}
        let mut done = Vec::new();
        n.pending
            .retain(|(client, attempt, rx, pos, reply)| match rx.try_recv() {
                Ok(o) => {
                    done.push((*client, *attempt, finish(Ok(o), reply.clone()), Some(*pos)));
                    false
                }
                Err(TryRecvError::Empty) => true,
                Err(TryRecvError::Disconnected) => {
                    let r = finish(
                        Err(crossbeam_channel::RecvTimeoutError::Disconnected),
                        reply.clone(),
                    );
                    done.push((*client, *attempt, r, None));
                    false
                }
            });
        for (client, attempt, resp, pos) in done {
            if let (Some(pos), Response::Written | Response::Deleted(_) | Response::Reply(_)) =
                (pos, &resp)
            {
                self.acked.push((pos, format!("{:?}", resp)));
                if self.probe.is_some_and(|(from, _)| self.now >= from) {
                    self.report.acked_after_heal += 1;
                }
            }
            self.send_client(Endpoint::Node(i), client, attempt, resp);
        }
    }

    pub(super) fn node_receive(&mut self, i: usize, from: Endpoint, msg: Msg) {
        match msg {
            Msg::Beacon(b) => self.input(i, Input::Beacon(b)),
            Msg::ServerReply {
                link,
                reply,
                refused,
            } => self.link_reply(i, link, reply, refused),
            Msg::LinkTimeout { link } => self.link_timed_out(i, link),
            Msg::Open { stream, req } => self.open_stream(i, stream, req),
            Msg::Data { stream, msg } => self.follower_receive(i, stream, msg),
            Msg::Ack {
                stream,
                last,
                leaving,
            } => {
                let Some(s) = self.streams.get_mut(&stream) else {
                    return;
                };
                if !s.open {
                    return;
                }
                let Some(feeder) = s.feeder.as_ref() else {
                    return;
                };
                let id = feeder.replica();
                let told = leaving && !s.leaving;
                s.leaving |= leaving;
                let was_leaving = s.leaving;
                let effect = feeder.on_ack(&self.nodes[i].log, last);
                if told {
                    self.input(i, Input::FollowerLeaving(id, stream));
                }
                if effect.committed {
                    self.apply(i);
                }
                if effect.caught_up && !was_leaving {
                    self.input(i, Input::FollowerCaughtUp(id));
                }
            }
            Msg::Closed { stream, refused } => {
                let Some(s) = self.streams.get(&stream) else {
                    return;
                };
                if s.follower == i {
                    if self.nodes[i].leaving.is_some() {
                        self.crash(i); // its stream ended: the process exits
                    } else if self.nodes[i].follower == Some(stream) {
                        self.nodes[i].follower = None;
                        self.input(
                            i,
                            Input::FollowLost {
                                reason: "stream closed".into(),
                                refused,
                                expected: false,
                            },
                        );
                    }
                } else if let Some(feeder) = s.feeder.as_ref() {
                    let id = feeder.replica();
                    feeder.close(&self.nodes[i].log);
                    self.input(i, Input::FollowerGone(id, stream));
                }
            }
            Msg::ClientReq {
                client,
                attempt,
                req,
            } if self.nodes[i].handoff.is_some() => {
                let resp = Response::Error {
                    kind: crate::wire::ErrorKind::Unavailable,
                    message: "handing over".into(),
                };
                let _ = req;
                self.send_client(Endpoint::Node(i), client, attempt, resp);
            }
            Msg::ClientReq {
                client,
                attempt,
                req,
            } => {
                let now = self.local(i);
                let wall = self.wall_ms(i);
                let n = &self.nodes[i];
                let dp = DataPath {
                    store: &n.store,
                    log: &n.log,
                    serving: &n.serving,
                    settings: &self.settings,
                };
                match dp.begin(req, now, wall) {
                    Begun::Done(r) => self.send_client(Endpoint::Node(i), client, attempt, r),
                    Begun::Wait(rx, r) => {
                        let pos = self.nodes[i].log.state().last;
                        self.nodes[i].pending.push((client, attempt, rx, pos, r));
                    }
                }
            }
            Msg::ServerCall { .. } | Msg::ClientResp { .. } => {}
        }
        let _ = from;
    }

    /// The wal thread: takes what the write-ahead log has not recorded and
    /// writes it, one write at a time; a slow disk takes milliseconds.
    pub(super) fn persist_log(&mut self, i: usize) {
        let slow = self.nodes[i].disk_slow_until.is_some_and(|t| self.now < t);
        let n = &mut self.nodes[i];
        let Some(disk) = n.disk.as_mut() else {
            return;
        };
        if disk.busy {
            return;
        }
        let batch = n.log.take_unwritten();
        if batch.entries.is_empty() && batch.truncate.is_none() && batch.commit.is_none() {
            return;
        }
        disk.write(&batch);
        disk.busy = true;
        let sync = disk.policy == FsyncPolicy::Always
            && (!batch.entries.is_empty() || batch.truncate.is_some());
        let took = if slow {
            Duration::from_millis(5 + self.rng.below(40))
        } else {
            Duration::from_micros(50 + self.rng.below(450))
        };
        let (inc, last) = (n.incarnation, batch.last);
        self.at(
            took,
            Ev::DiskDone {
                node: i,
                inc,
                last,
                sync,
            },
        );
    }

    /// A write-ahead log write returned: mark it persisted (the
    /// coordinator's own acknowledgement), acknowledge what a replica now
    /// holds, and write what arrived meanwhile.
    pub(super) fn disk_done(&mut self, i: usize, last: LogPos, sync: bool) {
        let n = &mut self.nodes[i];
        let disk = n.disk.as_mut().expect("durable");
        if sync {
            disk.sync();
        }
        disk.busy = false;
        n.log.set_persisted(last);
        if let (Some(stream), Some(p)) = (n.follower, n.log.ack_position()) {
            if self.streams.get(&stream).is_some_and(|s| s.open) {
                self.send_ack(i, stream, p);
            }
        }
        self.apply(i);
        self.persist_log(i);
    }

    /// An installed snapshot is made durable (`persist_installed_snapshot`).
    pub(super) fn persist_snapshot(&mut self, i: usize, pos: LogPos) {
        let n = &mut self.nodes[i];
        if let Some(d) = n.disk.as_mut() {
            d.install_snapshot(pos, &n.store);
        }
    }
}
