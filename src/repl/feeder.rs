//! The coordinator's end of one replication stream.

use crate::log::{AckEffect, Fetch, ReplLog};
use crate::store::Store;
use crate::types::{Epoch, LogPos, NodeId};
use crate::wire::{FollowRequest, Refusal, ReplMsg};
use std::time::Duration;

/// What the feeder wants sent next.
#[derive(Debug)]
pub enum Poll {
    /// Send this frame.
    Send(ReplMsg),
    /// Nothing to send yet (within the wait given to [`Feeder::poll`]).
    Idle,
    /// The stream must end, for this reason.
    End(String),
    /// The replica asked to leave and is out of the in-sync set: send this
    /// last frame, then end the stream.
    Release(ReplMsg),
}

/// Where one replica's acknowledgements count (see [`Feeder::acks`]).
#[derive(Clone, Copy, Debug)]
pub struct Acks {
    replica: NodeId,
}

impl Acks {
    /// The replica's log matches ours through `last`: its progress, and
    /// maybe the commit, move. A position this log does not hold (a
    /// replica's divergent entry) counts for nothing.
    pub fn on_ack(&self, log: &ReplLog, last: LogPos) -> AckEffect {
        log.on_ack_deferred(self.replica, last)
    }
}

/// One replica's stream at the coordinator: where it stands and what it
/// was sent.
#[derive(Debug)]
pub struct Feeder {
    replica: NodeId,
    stream: u64,
    epoch: Epoch,
    /// The log's generation the stream belongs to: a role change or reset
    /// ends the stream.
    generation: u64,
    /// The next index to send.
    next: u64,
    /// The commit index the replica last heard (`None`: answer the next
    /// poll at once, even with no entries).
    sent_commit: Option<u64>,
    /// A snapshot to send first, taken from the store at this position.
    snapshot: Option<LogPos>,
    /// How the stream starts, for the log.
    how: &'static str,
}

impl Feeder {
    /// Serves the `Follow` request `req` on stream number `stream`, or
    /// refuses it with the frame to send. `member`: the replica is a
    /// registered member.
    pub fn open(
        log: &ReplLog,
        store: &Store,
        self_id: NodeId,
        member: bool,
        req: &FollowRequest,
        stream: u64,
    ) -> Result<Feeder, ReplMsg> {
        let st = log.state();
        let refuse = |why: Refusal| ReplMsg::Refused {
            epoch: st.epoch,
            why,
        };
        let id = req.node_id;
        if !st.leader {
            return Err(refuse(Refusal::NotCoordinator));
        }
        if req.epoch > st.epoch {
            return Err(refuse(Refusal::NewerEpoch {
                replica: req.epoch,
                coordinator: st.epoch,
            }));
        }
        if id == self_id {
            return Err(refuse(Refusal::OwnStream));
        }
        if !member {
            return Err(refuse(Refusal::NotMember(id)));
        }
        // Pin the log before choosing the start, so nothing we need is trimmed.
        log.track(id, 0, stream);
        let (snapshot, next, how) = match log.resume_point(req.last, req.committed) {
            Some(p) if p == req.last => (None, p.index + 1, "log suffix"),
            Some(p) => (
                None,
                p.index + 1,
                "log suffix after the prefix both logs share; its divergent entries are dropped",
            ),
            None => {
                let pos = store.meta().applied;
                (Some(pos), pos.index + 1, "snapshot")
            }
        };
        log.track(id, next - 1, stream);
        Ok(Feeder {
            replica: id,
            stream,
            epoch: st.epoch,
            generation: st.generation,
            next,
            sent_commit: None,
            snapshot,
            how,
        })
    }

    pub fn replica(&self) -> NodeId {
        self.replica
    }

    pub fn stream(&self) -> u64 {
        self.stream
    }

    /// How the stream starts ("log suffix", "snapshot", ...).
    pub fn how(&self) -> &'static str {
        self.how
    }

    /// The frames of the snapshot to send before any entry, if one is due:
    /// its start, the store's pairs shard by shard in chunks of about
    /// `max_batch` bytes (taken lazily, while writes continue), its end.
    pub fn snapshot_frames<'a>(
        &self,
        store: &'a Store,
        max_batch: usize,
    ) -> Option<impl Iterator<Item = ReplMsg> + 'a> {
        let pos = self.snapshot?;
        let epoch = self.epoch;
        let chunks = (0..store.shard_count()).flat_map(move |shard| {
            let mut pairs = store.shard_pairs(shard);
            let mut out = Vec::new();
            while !pairs.is_empty() {
                let (mut bytes, mut n) = (0, 0);
                for p in &pairs {
                    let len = p.key.len() + p.value.len() + 8;
                    if n > 0 && bytes + len > max_batch {
                        break;
                    }
                    bytes += len;
                    n += 1;
                }
                let rest = pairs.split_off(n);
                out.push(ReplMsg::SnapshotChunk { pairs });
                pairs = rest;
            }
            out
        });
        Some(
            std::iter::once(ReplMsg::SnapshotBegin { epoch, pos })
                .chain(chunks)
                .chain(std::iter::once(ReplMsg::SnapshotEnd { epoch })),
        )
    }

    /// The next frame: the entries the replica lacks (at most `max_bytes`,
    /// with the commit index), an empty batch when only the commit moved or
    /// after [`Feeder::on_idle`], or the end of the stream. Waits up to
    /// `wait` for something to send (the simulator passes zero).
    pub fn poll(&mut self, log: &ReplLog, max_bytes: usize, wait: Duration) -> Poll {
        match log.fetch(
            (self.replica, self.stream),
            self.generation,
            self.next,
            self.sent_commit,
            max_bytes,
            wait,
        ) {
            Fetch::Entries {
                prev,
                entries,
                commit,
            } => {
                self.next += entries.len() as u64;
                self.sent_commit = Some(commit);
                Poll::Send(ReplMsg::Append {
                    epoch: self.epoch,
                    prev,
                    entries,
                    commit,
                })
            }
            Fetch::Idle => Poll::Idle,
            Fetch::NeedSnapshot => Poll::End("replica fell behind the retained log".into()),
            Fetch::Stale => Poll::End("coordinator role changed".into()),
            Fetch::Released => Poll::Release(ReplMsg::Refused {
                epoch: self.epoch,
                why: Refusal::Released,
            }),
        }
    }

    /// Nothing was sent for [`IDLE_WAIT`](super::IDLE_WAIT): the next poll
    /// sends an empty batch.
    pub fn on_idle(&mut self) {
        self.sent_commit = None;
    }

    /// The replica acknowledged that its log matches ours through `last`.
    pub fn on_ack(&self, log: &ReplLog, last: LogPos) -> AckEffect {
        self.acks().on_ack(log, last)
    }

    /// The acknowledgement side alone, for a driver that reads
    /// acknowledgements on another thread than it sends on.
    pub fn acks(&self) -> Acks {
        Acks {
            replica: self.replica,
        }
    }

    /// The stream ended: stop tracking the replica (unless it is on a newer
    /// stream already).
    pub fn close(&self, log: &ReplLog) {
        log.untrack(self.replica, self.stream);
    }
}
