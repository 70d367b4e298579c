//! Replication streams: a node follows a coordinator (opens a stream), the
//! coordinator's end ([`Feeder`]) serves it and is polled each tick, the
//! replica's end ([`Follower`]) takes frames and its steps are executed
//! (persist, acknowledge, apply).

use super::{Endpoint, Msg, Sim, Stream, StreamId};
use crate::core::node::Input;
use crate::repl::{Feeder, Follower, Poll, Step, IDLE_WAIT};
use crate::types::{Epoch, LogPos};
use crate::wire::{FollowRequest, ReplMsg};
use std::time::Duration;

impl Sim {
    /// Node `i` follows the coordinator at `addr` (a new stream).
    pub(super) fn follow(&mut self, i: usize, addr: String, epoch: Epoch) {
        if let Some(s) = self.nodes[i].follower.take() {
            self.close_stream(s, false);
        }
        let Some(j) = Self::node_by_addr(&addr) else {
            return;
        };
        if self.nodes[i].leaving.is_some() {
            return; // shutting down: no new stream
        }
        let n = &self.nodes[i];
        let durable = n.disk.is_some();
        let Ok((replica, req)) = Follower::start(&n.log, n.id, n.incarnation, epoch, durable)
        else {
            return;
        };
        let id = self.next_stream;
        self.next_stream += 1;
        self.streams.insert(
            id,
            Stream {
                follower: i,
                coordinator: j,
                open: true,
                feeder: None,
                replica,
                last_send: self.now,
                fifo_at: self.now,
                leaving: false,
            },
        );
        self.nodes[i].follower = Some(id);
        self.send_stream(
            id,
            Endpoint::Node(i),
            Endpoint::Node(j),
            Msg::Open { stream: id, req },
        );
    }

    /// The coordinator's senders: one poll of each stream's feeder.
    pub(super) fn feed(&mut self, i: usize) {
        let ids: Vec<StreamId> = self
            .streams
            .iter()
            .filter(|(_, s)| s.open && s.coordinator == i && s.feeder.is_some())
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            let s = self.streams.get_mut(&id).expect("stream");
            let feeder = s.feeder.as_mut().expect("feeder");
            match feeder.poll(&self.nodes[i].log, 1 << 20, Duration::ZERO) {
                Poll::Send(msg) => {
                    s.last_send = self.now;
                    let follower = s.follower;
                    self.send_stream(
                        id,
                        Endpoint::Node(i),
                        Endpoint::Node(follower),
                        Msg::Data { stream: id, msg },
                    );
                }
                Poll::Idle => {
                    if self.now - s.last_send >= IDLE_WAIT {
                        feeder.on_idle();
                    }
                }
                Poll::End(_) => self.close_stream(id, false),
                Poll::Release(msg) => {
                    // The last frame, then the coordinator's end is done (the
                    // replica closes the stream once the frame arrived, as
                    // TCP delivers it before the close).
                    let follower = s.follower;
                    let feeder = s.feeder.take().expect("feeder");
                    self.send_stream(
                        id,
                        Endpoint::Node(i),
                        Endpoint::Node(follower),
                        Msg::Data { stream: id, msg },
                    );
                    feeder.close(&self.nodes[i].log);
                    self.input(i, Input::FollowerGone(feeder.replica(), id));
                }
            }
        }
    }

    pub(super) fn open_stream(&mut self, c: usize, stream: StreamId, req: FollowRequest) {
        let n = &self.nodes[c];
        let member = n.serving.members.contains(&req.node_id);
        let feeder = match Feeder::open(&n.log, &n.store, n.id, member, &req, stream) {
            Ok(f) => f,
            Err(_refused) => {
                self.close_stream(stream, false);
                return;
            }
        };
        let f = self.streams[&stream].follower;
        let frames: Vec<ReplMsg> = feeder
            .snapshot_frames(&self.nodes[c].store, 1 << 20)
            .map(|it| it.collect())
            .unwrap_or_default();
        for msg in frames {
            self.send_stream(
                stream,
                Endpoint::Node(c),
                Endpoint::Node(f),
                Msg::Data { stream, msg },
            );
        }
        let id = feeder.replica();
        match self.streams.get_mut(&stream) {
            Some(s) if s.open => s.feeder = Some(feeder),
            // Cut while the snapshot went out.
            _ => {
                feeder.close(&self.nodes[c].log);
                return;
            }
        }
        self.input(c, Input::FollowerConnected(id, stream));
    }

    /// A frame reaches the replica's end of `stream`.
    pub(super) fn follower_receive(&mut self, i: usize, stream: StreamId, msg: ReplMsg) {
        if self.nodes[i].follower != Some(stream)
            || !self.streams.get(&stream).is_some_and(|s| s.open)
        {
            return;
        }
        let s = self.streams.get_mut(&stream).expect("stream");
        let n = &self.nodes[i];
        match s.replica.on_msg(&n.log, &n.store, msg) {
            Ok(step) => self.run_step(i, stream, step),
            Err(end) => {
                self.close_stream(stream, false);
                if self.nodes[i].leaving.is_some() {
                    if end == crate::repl::StreamEnd::Refused(crate::wire::Refusal::Released) {
                        *self
                            .report
                            .faults
                            .entry("graceful stop released")
                            .or_default() += 1;
                    }
                    self.crash(i); // released (or cut): the process exits
                }
            }
        }
    }

    /// Node `i` shuts down as a replica does on SIGTERM: it tells its
    /// coordinator it is leaving and stops once released (see `tick` for
    /// the deadline), or at once when it follows nobody.
    pub(super) fn leave(&mut self, i: usize) {
        self.nodes[i].leaving = Some(self.now + Duration::from_secs(2));
        self.input(i, Input::Leave);
        match self.nodes[i].follower {
            Some(stream) if self.streams.get(&stream).is_some_and(|s| s.open) => {
                let last = self.nodes[i].log.ack_position().unwrap_or_default();
                self.send_ack(i, stream, last);
            }
            _ => self.crash(i),
        }
    }

    /// Executes a replica's [`Step`], as the node's follower thread does.
    fn run_step(&mut self, i: usize, stream: StreamId, mut step: Step) {
        while let Some(pos) = step.persist_snapshot {
            self.persist_snapshot(i, pos);
            let s = self.streams.get_mut(&stream).expect("stream");
            match s.replica.snapshot_persisted(&self.nodes[i].log) {
                Ok(next) => step = next,
                Err(_) => return self.close_stream(stream, false),
            }
        }
        if step.persist_log {
            self.persist_log(i);
        }
        if let Some(last) = step.ack {
            self.send_ack(i, stream, last);
        }
        if step.apply {
            self.apply(i);
        }
    }

    pub(super) fn send_ack(&mut self, i: usize, stream: StreamId, last: LogPos) {
        let c = self.streams[&stream].coordinator;
        self.send_stream(
            stream,
            Endpoint::Node(i),
            Endpoint::Node(c),
            Msg::Ack {
                stream,
                last,
                leaving: self.nodes[i].leaving.is_some(),
            },
        );
    }
}
