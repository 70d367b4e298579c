//! The replica's end of one replication stream.

use crate::log::ReplLog;
use crate::store::{Delta, Store};
use crate::types::{Entry, Epoch, LogPos, NodeId};
use crate::wire::{FollowRequest, Refusal, ReplMsg};
use std::sync::Arc;

/// Why a stream ended at the replica's end (it reconnects either way;
/// nothing it held is lost).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The coordinator refused to feed this replica.
    Refused(Refusal),
    /// The stream broke or carried something this replica cannot take.
    Broken(String),
}

impl StreamEnd {
    /// Whether normal operation ends streams this way (see
    /// [`Refusal::expected`]).
    pub fn expected(&self) -> bool {
        matches!(self, StreamEnd::Refused(r) if r.expected())
    }
}

impl From<String> for StreamEnd {
    fn from(s: String) -> Self {
        StreamEnd::Broken(s)
    }
}

impl From<&str> for StreamEnd {
    fn from(s: &str) -> Self {
        StreamEnd::Broken(s.to_string())
    }
}

impl std::fmt::Display for StreamEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamEnd::Refused(r) => write!(f, "refused: {r}"),
            StreamEnd::Broken(s) => f.write_str(s),
        }
    }
}

/// What the driver does after a frame, in this order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// A snapshot at this position replaced the log and the store: make it
    /// durable (with a data directory), then call
    /// [`Follower::snapshot_persisted`], which continues the stream.
    pub persist_snapshot: Option<LogPos>,
    /// The log has changes the write-ahead log has not recorded: write them;
    /// once persisted, acknowledge [`ReplLog::ack_position`].
    pub persist_log: bool,
    /// The commit index moved: apply the newly committed entries.
    pub apply: bool,
    /// Acknowledge this position now (it is confirmed and persisted).
    pub ack: Option<LogPos>,
}

/// A snapshot being received, beside the data the replica still holds.
#[derive(Debug)]
struct Staging {
    pos: LogPos,
    pairs: Vec<crate::store::Pair>,
    /// `SnapshotEnd` arrived.
    ended: bool,
    /// The replica's log end when the snapshot began: it may have
    /// acknowledged anything up to here, so it swaps only once the staged
    /// data reach it (or the coordinator has nothing more).
    must_reach: u64,
    /// Entries streamed after the snapshot, and the commit they came with.
    entries: Vec<Arc<Entry>>,
    commit: u64,
}

impl Staging {
    fn last(&self) -> LogPos {
        self.entries.last().map(|e| e.pos).unwrap_or(self.pos)
    }
}

/// One stream at a replica.
#[derive(Debug)]
pub struct Follower {
    epoch: Epoch,
    /// This stream's right to change the log (see `ReplLog::begin_stream`).
    token: u64,
    /// A write-ahead log persists the log: acknowledgements wait for it.
    durable: bool,
    staging: Option<Staging>,
    /// Installed, waiting for `snapshot_persisted`: the entries to append.
    installed: Option<Staging>,
}

impl Follower {
    /// Starts following the coordinator of `epoch`: the request to send.
    pub fn start(
        log: &ReplLog,
        node_id: NodeId,
        incarnation: u64,
        epoch: Epoch,
        durable: bool,
    ) -> Result<(Follower, FollowRequest), String> {
        if let Some(e) = log.storage_error() {
            return Err(format!("storage failed, not following: {e}"));
        }
        if !log.observe_epoch(epoch) {
            return Err(format!("epoch {epoch} is older than one already seen"));
        }
        let token = log.begin_stream();
        let st = log.state();
        let committed = log.pos_at(st.commit).unwrap_or(st.base);
        let req = FollowRequest {
            node_id,
            incarnation,
            epoch,
            last: st.last,
            committed,
        };
        let f = Follower {
            epoch,
            token,
            durable,
            staging: None,
            installed: None,
        };
        Ok((f, req))
    }

    /// A snapshot is being received (not yet swapped in).
    pub fn staging(&self) -> bool {
        self.staging.is_some()
    }

    /// Takes one frame from the coordinator. `Err` ends the stream (the
    /// replica reconnects); nothing it held is lost.
    pub fn on_msg(
        &mut self,
        log: &ReplLog,
        store: &Store,
        msg: ReplMsg,
    ) -> Result<Step, StreamEnd> {
        if self.installed.is_some() {
            return Err("frame before the installed snapshot was persisted".into());
        }
        match msg {
            ReplMsg::SnapshotBegin { epoch, pos } => {
                if epoch < self.epoch || self.staging.is_some() {
                    return Err("unexpected snapshot".into());
                }
                self.staging = Some(Staging {
                    pos,
                    pairs: Vec::new(),
                    ended: false,
                    must_reach: log.state().last.index,
                    entries: Vec::new(),
                    commit: pos.index,
                });
                Ok(Step::default())
            }
            ReplMsg::SnapshotChunk { pairs } => match self.staging.as_mut() {
                Some(s) if !s.ended => {
                    s.pairs.extend(pairs);
                    Ok(Step::default())
                }
                _ => Err("snapshot chunk outside a snapshot".into()),
            },
            ReplMsg::SnapshotEnd { .. } => match self.staging.as_mut() {
                Some(s) if !s.ended => {
                    s.ended = true;
                    self.maybe_install(log, store, false)
                }
                _ => Err("snapshot end outside a snapshot".into()),
            },
            ReplMsg::Append {
                epoch,
                prev,
                entries,
                commit,
            } => {
                if let Some(s) = self.staging.as_mut() {
                    if !s.ended {
                        return Err("entries inside a snapshot".into());
                    }
                    if epoch < self.epoch {
                        return Err(format!("replication from epoch {epoch} refused").into());
                    }
                    if prev != s.last() {
                        return Err(format!(
                            "stream position {prev} does not follow the snapshot's {}",
                            s.last()
                        )
                        .into());
                    }
                    let nothing_more = entries.is_empty();
                    s.entries.extend(entries);
                    s.commit = s.commit.max(commit);
                    return self.maybe_install(log, store, nothing_more);
                }
                let (confirmed, committed) =
                    log.append_follower_deferred(self.token, epoch, prev, entries, commit)?;
                Ok(self.appended(log, confirmed, committed))
            }
            ReplMsg::Refused { why, .. } => Err(StreamEnd::Refused(why)),
        }
    }

    /// The installed snapshot is durable: append the entries that followed
    /// it and go on.
    pub fn snapshot_persisted(&mut self, log: &ReplLog) -> Result<Step, StreamEnd> {
        let Some(s) = self.installed.take() else {
            return Ok(Step::default());
        };
        let (confirmed, committed) =
            log.append_follower_deferred(self.token, self.epoch, s.pos, s.entries, s.commit)?;
        Ok(self.appended(log, confirmed, committed))
    }

    fn appended(&self, log: &ReplLog, confirmed: LogPos, committed: bool) -> Step {
        // Entries, a truncation or a new commit index: the write-ahead log
        // records them (cheap when there is nothing).
        let persist_log = self.durable;
        // Without a write-ahead log, nothing waits for the disk; with one,
        // whoever persists acknowledges, unless nothing new arrived.
        let ack = (!self.durable || log.is_persisted(confirmed.index)).then_some(confirmed);
        Step {
            persist_snapshot: None,
            persist_log,
            apply: committed,
            ack,
        }
    }

    /// Swaps the staged snapshot in once it holds everything the replica
    /// may have acknowledged: the staged log reaches the old log's end, or
    /// an empty batch showed the coordinator has nothing more.
    fn maybe_install(
        &mut self,
        log: &ReplLog,
        store: &Store,
        nothing_more: bool,
    ) -> Result<Step, StreamEnd> {
        let ready = self
            .staging
            .as_ref()
            .is_some_and(|s| s.ended && (nothing_more || s.last().index >= s.must_reach));
        if !ready {
            return Ok(Step::default());
        }
        let mut s = self.staging.take().expect("staging");
        {
            // No stale apply batch may land on the new state.
            let _guard = log.apply_guard();
            log.reset(self.token, s.pos)?;
            store.clear(s.pos);
            let mut delta = Delta::default();
            for p in std::mem::take(&mut s.pairs) {
                store.apply(&p.into_op(), &mut delta);
            }
            store.commit(s.pos, delta);
        }
        let pos = s.pos;
        self.installed = Some(s);
        Ok(Step {
            persist_snapshot: Some(pos),
            ..Step::default()
        })
    }
}
