//! The replicated log held in memory: the retained tail of entries, the commit
//! index, the applied index, and (at the coordinator) replication progress and
//! the clients waiting for their writes to commit.
//!
//! Threads that share it:
//! * client connections append (coordinator) and wait for their entry's outcome;
//! * per-replica senders wait for new entries / commit changes and stream them;
//! * ack readers record acknowledgements, which may advance the commit; the
//!   one that moved it applies the newly committed entries itself;
//! * the follower thread (replica) appends what the coordinator streams and
//!   applies what became committed;
//! * the apply thread applies committed entries to the
//!   [`Store`](crate::store::Store) whenever the thread that moved the commit
//!   could not (another held the apply guard; the write-ahead log thread).
//!
//! Lock order: `apply_lock` before `inner`. Whoever applies holds
//! `apply_lock` while it applies a batch; installing a snapshot holds it for
//! the whole install, so no stale batch can land on the new state.

use crate::core::progress::Progress;
use crate::types::{Entry, Epoch, LogPos, NodeId, Op, OpOutcome};
use crossbeam_channel::{RecvTimeoutError, TryRecvError};
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// The outcome of one write, delivered once by whichever thread applies it. A write
/// whose promise is dropped unfulfilled (the coordinator stepped down) reads
/// as `Disconnected`: its outcome is unknown. Waiting parks the thread; unlike
/// a channel it never spins, which matters with many writers on few cores.
pub struct Outcome(Arc<(Mutex<Slot>, Condvar)>);

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Outcome")
    }
}

struct Promise(Arc<(Mutex<Slot>, Condvar)>);

enum Slot {
    Pending,
    Done(OpOutcome),
    Abandoned,
}

fn oneshot() -> (Promise, Outcome) {
    let shared = Arc::new((Mutex::new(Slot::Pending), Condvar::new()));
    (Promise(shared.clone()), Outcome(shared))
}

impl Promise {
    fn fulfil(self, outcome: OpOutcome) {
        *self.0 .0.lock() = Slot::Done(outcome);
        self.0 .1.notify_one();
    }
}

impl Drop for Promise {
    fn drop(&mut self) {
        let mut slot = self.0 .0.lock();
        if matches!(*slot, Slot::Pending) {
            *slot = Slot::Abandoned;
            self.0 .1.notify_one();
        }
    }
}

impl Outcome {
    /// Waits up to `timeout` for the write's outcome.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<OpOutcome, RecvTimeoutError> {
        let deadline = std::time::Instant::now() + timeout;
        let mut slot = self.0 .0.lock();
        loop {
            match *slot {
                Slot::Done(o) => return Ok(o),
                Slot::Abandoned => return Err(RecvTimeoutError::Disconnected),
                Slot::Pending => {
                    if self.0 .1.wait_until(&mut slot, deadline).timed_out() {
                        return match *slot {
                            Slot::Done(o) => Ok(o),
                            Slot::Abandoned => Err(RecvTimeoutError::Disconnected),
                            Slot::Pending => Err(RecvTimeoutError::Timeout),
                        };
                    }
                }
            }
        }
    }

    /// The outcome if it is already known.
    pub fn try_recv(&self) -> Result<OpOutcome, TryRecvError> {
        match *self.0 .0.lock() {
            Slot::Done(o) => Ok(o),
            Slot::Abandoned => Err(TryRecvError::Disconnected),
            Slot::Pending => Err(TryRecvError::Empty),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendError {
    /// This node does not hold the coordinator role (or stepped down).
    NotLeader,
    /// Fewer in-sync members than required.
    NotEnoughReplicas { in_sync: usize, required: usize },
    /// The write-ahead log failed; this node accepts no more writes.
    Storage(String),
}

/// Work for the write-ahead log thread, taken in log order.
#[derive(Debug, Default)]
pub struct WalBatch {
    /// Entries after this position are gone (a divergent suffix).
    pub truncate: Option<LogPos>,
    pub entries: Vec<Arc<Entry>>,
    /// A newer commit index to record.
    pub commit: Option<u64>,
    /// The log's last position once the batch is written.
    pub last: LogPos,
}

/// What a replica-stream sender should do next.
#[derive(Debug)]
pub enum Fetch {
    /// Send these entries (possibly none, to carry a commit change).
    Entries {
        prev: LogPos,
        entries: Vec<Arc<Entry>>,
        commit: u64,
    },
    /// The entries the replica needs are no longer retained.
    NeedSnapshot,
    /// Role or log changed under the sender; it must stop.
    Stale,
    /// Nothing new before the timeout.
    Idle,
}

/// A consistent copy of the log's positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogState {
    pub base: LogPos,
    pub last: LogPos,
    pub commit: u64,
    pub applied: u64,
    pub epoch: Epoch,
    pub leader: bool,
    pub generation: u64,
}

struct Leader {
    epoch: Epoch,
    /// Last index when this node took over: reads wait until it is applied,
    /// so they see every write an earlier coordinator acknowledged.
    barrier: u64,
    self_id: NodeId,
    progress: Progress,
    waiters: HashMap<u64, Promise>,
    required: usize,
    /// The replication stream each tracked replica is on, so the end of an
    /// old stream cannot untrack the replica's newer one.
    streams: HashMap<NodeId, u64>,
}

struct Inner {
    /// Position just before the first retained entry.
    base: LogPos,
    entries: VecDeque<Arc<Entry>>,
    commit: u64,
    applied: u64,
    /// Highest epoch this node has seen; replication from below is refused.
    epoch: Epoch,
    leader: Option<Leader>,
    /// Bumped whenever the log is reset or the role changes.
    generation: u64,
    retention: usize,
    shutdown: bool,
    /// A write-ahead log persists this log (acks wait for it).
    durable: bool,
    /// The follower thread writes what it appends to the write-ahead log
    /// itself (no fsync policy to wait for), so the wal thread is not woken.
    follower_writes: bool,
    /// Entries up to here were handed to the write-ahead log thread.
    written: u64,
    /// A truncation the write-ahead log has not recorded yet.
    pending_truncate: Option<LogPos>,
    /// Entries up to here are on stable storage (as the fsync policy defines).
    persisted: u64,
    /// Highest commit index handed to the write-ahead log.
    commit_written: u64,
    /// Replica: the last position the current stream confirmed this log
    /// shares with the coordinator's. Entries after it may be a divergent
    /// suffix: they are never acknowledged or committed on its word.
    confirmed: LogPos,
    /// The replica stream allowed to change this log: bumped when a stream
    /// begins and when this node becomes coordinator, so a stream that was
    /// superseded (its thread not yet ended) cannot touch the log.
    stream_token: u64,
    storage_error: Option<String>,
    #[cfg(test)]
    bug_ack_early: bool,
}

impl Inner {
    fn last(&self) -> LogPos {
        self.entries.back().map(|e| e.pos).unwrap_or(self.base)
    }

    fn pos_at(&self, index: u64) -> Option<LogPos> {
        if index == self.base.index {
            return Some(self.base);
        }
        if index < self.base.index {
            return None;
        }
        self.entries
            .get((index - self.base.index - 1) as usize)
            .map(|e| e.pos)
    }

    /// Only the current stream of a replica changes its log.
    fn check_stream(&self, token: u64) -> Result<(), String> {
        if self.leader.is_some() {
            return Err("this node is the coordinator now".into());
        }
        if token != self.stream_token {
            return Err("a newer replication stream replaced this one".into());
        }
        Ok(())
    }

    /// Raises the commit index; true when it moved (wake the applier).
    fn set_commit(&mut self, c: u64) -> bool {
        if c > self.commit {
            self.commit = c;
            return true;
        }
        false
    }
}

/// What one acknowledgement changed at the coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckEffect {
    /// The replica now holds every committed entry and is not yet in the commit set.
    pub caught_up: bool,
    /// The commit index advanced.
    pub committed: bool,
}

pub struct ReplLog {
    inner: Mutex<Inner>,
    /// Senders wait here for new entries, commit changes and resets.
    changed: Condvar,
    /// The apply thread waits here for the commit to advance.
    committed: Condvar,
    /// The write-ahead log thread waits here for work; followers wait here
    /// for their entries to be persisted.
    wal: Condvar,
    persisted: Condvar,
    apply_lock: Mutex<()>,
}

impl ReplLog {
    /// An empty log; `durable` when a write-ahead log thread persists it.
    pub fn new(retention: usize, durable: bool) -> Self {
        ReplLog {
            inner: Mutex::new(Inner {
                base: LogPos::ZERO,
                entries: VecDeque::new(),
                commit: 0,
                applied: 0,
                epoch: 0,
                leader: None,
                generation: 0,
                retention: retention.max(1),
                shutdown: false,
                durable,
                follower_writes: false,
                written: 0,
                pending_truncate: None,
                persisted: 0,
                commit_written: 0,
                confirmed: LogPos::ZERO,
                stream_token: 0,
                storage_error: None,
                #[cfg(test)]
                bug_ack_early: false,
            }),
            changed: Condvar::new(),
            committed: Condvar::new(),
            wal: Condvar::new(),
            persisted: Condvar::new(),
            apply_lock: Mutex::new(()),
        }
    }

    pub fn state(&self) -> LogState {
        let g = self.inner.lock();
        LogState {
            base: g.base,
            last: g.last(),
            commit: g.commit,
            applied: g.applied,
            epoch: g.epoch,
            leader: g.leader.is_some(),
            generation: g.generation,
        }
    }

    /// Wakes every waiter and makes them return; used at shutdown.
    pub fn shutdown(&self) {
        let mut g = self.inner.lock();
        g.shutdown = true;
        g.leader = None;
        g.generation += 1;
        self.changed.notify_all();
        self.committed.notify_all();
        self.wal.notify_all();
        self.persisted.notify_all();
    }

    /// Loads what recovery found: entries after `base`, committed (and
    /// already applied to the store) through `commit`. All of it is on disk.
    pub fn restore(&self, base: LogPos, entries: Vec<Entry>, commit: u64) {
        let mut g = self.inner.lock();
        g.base = base;
        g.entries = entries.into_iter().map(Arc::new).collect();
        let last = g.last().index;
        g.epoch = g.epoch.max(g.last().epoch);
        g.commit = commit;
        g.applied = commit;
        g.written = last;
        g.persisted = last;
        g.commit_written = commit;
    }

    /// Raises the known epoch; returns false if `epoch` is below it.
    pub fn observe_epoch(&self, epoch: Epoch) -> bool {
        let mut g = self.inner.lock();
        if epoch < g.epoch {
            return false;
        }
        g.epoch = epoch;
        true
    }

    // -- coordinator ------------------------------------------------------

    /// Takes the coordinator role for `epoch`. The commit initially waits for
    /// every member of `in_sync` (the set the server recorded).
    pub fn become_leader(
        &self,
        self_id: NodeId,
        epoch: Epoch,
        in_sync: &[NodeId],
        required: usize,
    ) {
        let mut g = self.inner.lock();
        let last = g.last().index;
        let own = if g.durable { g.persisted } else { last };
        let mut progress = Progress::new(self_id, own, g.commit);
        for &id in in_sync {
            if id != self_id {
                progress.add_to_commit_set(id);
            }
        }
        if let Some(c) = progress.on_ack(self_id, own) {
            if g.set_commit(c) {
                self.committed.notify_all();
            }
        }
        g.epoch = g.epoch.max(epoch);
        g.stream_token += 1;
        g.leader = Some(Leader {
            epoch,
            barrier: last,
            self_id,
            progress,
            waiters: HashMap::new(),
            required,
            streams: HashMap::new(),
        });
        g.generation += 1;
        self.changed.notify_all();
    }

    /// True when this node is coordinator and has applied everything its
    /// log held when it took over.
    pub fn read_ready(&self) -> bool {
        let g = self.inner.lock();
        g.leader.as_ref().is_some_and(|l| g.applied >= l.barrier)
    }

    /// Gives up the coordinator role. Clients waiting for their writes get a
    /// closed channel: the outcome of those writes is unknown.
    pub fn step_down(&self) {
        let mut g = self.inner.lock();
        if g.leader.take().is_some() {
            g.generation += 1;
            self.changed.notify_all();
        }
    }

    pub fn set_required(&self, required: usize) {
        if let Some(l) = self.inner.lock().leader.as_mut() {
            l.required = required;
        }
    }

    /// Appends a client op at the coordinator. The receiver yields the op's
    /// outcome once it is committed and applied.
    pub fn append_leader(&self, op: Op) -> Result<(u64, Outcome), AppendError> {
        let (tx, rx) = oneshot();
        let mut g = self.inner.lock();
        if let Some(e) = &g.storage_error {
            return Err(AppendError::Storage(e.clone()));
        }
        let index = g.last().index + 1;
        let durable = g.durable;
        let leader = g.leader.as_mut().ok_or(AppendError::NotLeader)?;
        let in_sync = leader.progress.commit_set().len();
        if in_sync < leader.required {
            return Err(AppendError::NotEnoughReplicas {
                in_sync,
                required: leader.required,
            });
        }
        let pos = LogPos::new(leader.epoch, index);
        leader.waiters.insert(index, tx);
        let self_id = leader.self_id;
        // With a write-ahead log, the coordinator's own ack waits for it.
        let advanced = if durable {
            None
        } else {
            leader.progress.on_ack(self_id, index)
        };
        g.entries.push_back(Arc::new(Entry { pos, op }));
        #[cfg(test)]
        let advanced = if g.bug_ack_early {
            Some(index)
        } else {
            advanced
        };
        if let Some(c) = advanced {
            if g.set_commit(c) {
                self.committed.notify_all();
            }
        }
        self.changed.notify_all();
        if durable {
            self.wal.notify_one();
        }
        Ok((index, rx))
    }

    /// Starts tracking a replica, on replication stream `stream`, whose log
    /// holds everything up to `index`.
    pub fn track(&self, id: NodeId, index: u64, stream: u64) {
        if let Some(l) = self.inner.lock().leader.as_mut() {
            l.streams.insert(id, stream);
            l.progress.track(id, index);
        }
    }

    /// Stops tracking a replica when its stream `stream` ended; nothing if
    /// the replica is already on a newer stream.
    pub fn untrack(&self, id: NodeId, stream: u64) {
        if let Some(l) = self.inner.lock().leader.as_mut() {
            if l.streams.get(&id) == Some(&stream) {
                l.streams.remove(&id);
                l.progress.untrack(id);
            }
        }
    }

    /// Records a replica's acknowledgement that its log matches ours through
    /// `pos`. Returns true when the replica holds every committed entry but
    /// is not yet in the commit set. An ack for a position this log does not
    /// hold (a replica's divergent entry) counts for nothing.
    pub fn on_ack(&self, id: NodeId, pos: LogPos) -> bool {
        let ack = self.on_ack_deferred(id, pos);
        if ack.committed {
            self.wake_applier();
        }
        ack.caught_up
    }

    /// [`ReplLog::on_ack`] without waking the apply thread: when
    /// `committed`, the caller applies the newly committed entries itself
    /// (saving a thread hand-off per commit) or calls
    /// [`ReplLog::wake_applier`] when it cannot take the apply guard.
    pub fn on_ack_deferred(&self, id: NodeId, pos: LogPos) -> AckEffect {
        let none = AckEffect {
            caught_up: false,
            committed: false,
        };
        let mut g = self.inner.lock();
        if g.pos_at(pos.index).is_some_and(|p| p != pos) || pos.index > g.last().index {
            return none;
        }
        let Some(l) = g.leader.as_mut() else {
            return none;
        };
        let advanced = l.progress.on_ack(id, pos.index);
        let caught_up = l.progress.caught_up(id) && !l.progress.commit_set().contains(&id);
        let committed = advanced.is_some_and(|c| g.set_commit(c));
        if committed {
            // Senders carry the new commit index to the replicas at once, so
            // they apply (and show the same digest) promptly. Measured: not
            // waking them for it changed write throughput by less than the
            // run-to-run noise.
            self.changed.notify_all();
        }
        AckEffect {
            caught_up,
            committed,
        }
    }

    /// Wakes the apply thread (see [`ReplLog::on_ack_deferred`]).
    pub fn wake_applier(&self) {
        self.committed.notify_all();
    }

    /// Makes the commit wait for `id` too. Returns whether `id` holds every
    /// committed entry now: it was caught up when the core decided to add it,
    /// but the commit may have moved on since (another member left the
    /// commit set, or more acks arrived). If not, `id` must not be recorded
    /// in sync yet: the driver fails the `SetIsr` call of the same batch and
    /// the core asks again at a later tick, once `id` caught up (the commit
    /// now waits for it, so it cannot run away again).
    pub fn add_to_commit_set(&self, id: NodeId) -> bool {
        match self.inner.lock().leader.as_mut() {
            Some(l) => {
                l.progress.add_to_commit_set(id);
                l.progress.caught_up(id)
            }
            None => false,
        }
    }

    pub fn remove_from_commit_set(&self, id: NodeId) {
        let mut g = self.inner.lock();
        let Some(l) = g.leader.as_mut() else { return };
        if let Some(c) = l.progress.remove_from_commit_set(id) {
            if g.set_commit(c) {
                self.committed.notify_all();
            }
            self.changed.notify_all();
        }
    }

    pub fn commit_set(&self) -> Vec<NodeId> {
        let g = self.inner.lock();
        g.leader
            .as_ref()
            .map(|l| l.progress.commit_set().iter().copied().collect())
            .unwrap_or_default()
    }

    /// Whether the log holds exactly `pos` (or `pos` is the base).
    pub fn contains(&self, pos: LogPos) -> bool {
        self.inner.lock().pos_at(pos.index) == Some(pos)
    }

    /// A copy of the entry at `index`, if retained.
    pub fn entry_at(&self, index: u64) -> Option<Entry> {
        let g = self.inner.lock();
        if index <= g.base.index {
            return None;
        }
        g.entries
            .get((index - g.base.index - 1) as usize)
            .map(|e| (**e).clone())
    }

    /// Test-only protocol bug: the coordinator commits on its own copy,
    /// acknowledging writes the in-sync replicas do not hold yet.
    #[cfg(test)]
    pub fn inject_ack_before_replication(&self) {
        self.inner.lock().bug_ack_early = true;
    }

    /// The position of the entry at `index`, if retained.
    pub fn pos_at(&self, index: u64) -> Option<LogPos> {
        self.inner.lock().pos_at(index)
    }

    /// Where a replica whose log ends at `last`, committed through
    /// `committed`, can resume: the end of the longest prefix both logs
    /// share, if this log still holds it. Else nowhere: it needs a snapshot.
    ///
    /// Entries are unique by (epoch, index): one coordinator per epoch
    /// appends them, contiguously. So if this log holds entries of
    /// `last.epoch`, the replica's log matches ours through the smaller of
    /// `last.index` and our last entry of that epoch (the log matching
    /// property). Otherwise every entry of that epoch the replica holds is
    /// divergent, and its commit is the longest prefix known to match. The
    /// replica drops its divergent suffix as the new entries arrive.
    pub fn resume_point(&self, last: LogPos, committed: LogPos) -> Option<LogPos> {
        let g = self.inner.lock();
        if g.pos_at(last.index) == Some(last) {
            return Some(last);
        }
        let n = g.entries.partition_point(|e| e.pos.epoch <= last.epoch);
        if let Some(end) = n.checked_sub(1).map(|i| g.entries[i].pos) {
            if end.epoch == last.epoch {
                let shared = end.index.min(last.index);
                if let Some(p) = g.pos_at(shared).filter(|p| p.epoch == last.epoch) {
                    return Some(p);
                }
            }
        }
        if g.pos_at(committed.index) == Some(committed) {
            Some(committed)
        } else {
            None
        }
    }

    /// Blocks until there is something to send to a replica whose next entry
    /// is `next` and which last heard commit `sent_commit` (`None`: nothing
    /// sent yet, so answer at once, even with no entries).
    pub fn fetch(
        &self,
        generation: u64,
        next: u64,
        sent_commit: Option<u64>,
        max_bytes: usize,
        timeout: Duration,
    ) -> Fetch {
        let mut g = self.inner.lock();
        loop {
            if g.shutdown || g.generation != generation || g.leader.is_none() {
                return Fetch::Stale;
            }
            if next <= g.base.index {
                return Fetch::NeedSnapshot;
            }
            if g.last().index >= next || sent_commit.is_none_or(|c| g.commit > c) {
                break;
            }
            if self.changed.wait_for(&mut g, timeout).timed_out() {
                return Fetch::Idle;
            }
        }
        let prev = g.pos_at(next - 1).expect("next-1 is retained");
        let start = (next - g.base.index - 1) as usize;
        let mut bytes = 0;
        let mut entries = Vec::new();
        for e in g.entries.range(start..) {
            if !entries.is_empty() && bytes + e.op.payload_len() > max_bytes {
                break;
            }
            bytes += e.op.payload_len();
            entries.push(e.clone());
        }
        Fetch::Entries {
            prev,
            entries,
            commit: g.commit,
        }
    }

    // -- replica ----------------------------------------------------------

    /// Appends entries streamed by the coordinator after `prev`, dropping any
    /// uncommitted suffix that conflicts. Returns the new last position, or
    /// `Err` when `prev` is not in this log (the stream must restart).
    pub fn append_follower(
        &self,
        epoch: Epoch,
        prev: LogPos,
        entries: Vec<Arc<Entry>>,
        commit: u64,
    ) -> Result<LogPos, String> {
        let token = self.inner.lock().stream_token;
        let (confirmed, committed) =
            self.append_follower_deferred(token, epoch, prev, entries, commit)?;
        if committed {
            self.wake_applier();
        }
        Ok(confirmed)
    }

    /// [`ReplLog::append_follower`] by the stream holding `token` (see
    /// [`ReplLog::begin_stream`]), without waking the apply thread; the
    /// flag says the commit index moved, and the caller applies or calls
    /// [`ReplLog::wake_applier`].
    pub fn append_follower_deferred(
        &self,
        token: u64,
        epoch: Epoch,
        prev: LogPos,
        entries: Vec<Arc<Entry>>,
        commit: u64,
    ) -> Result<(LogPos, bool), String> {
        let mut g = self.inner.lock();
        g.check_stream(token)?;
        if epoch < g.epoch {
            return Err(format!(
                "replication from epoch {epoch} refused: epoch {} is current",
                g.epoch
            ));
        }
        g.epoch = epoch;
        if g.pos_at(prev.index) != Some(prev) {
            return Err(format!(
                "stream position {prev} is not in this log (last {})",
                g.last()
            ));
        }
        let end = prev.index + entries.len() as u64;
        for (next, e) in (prev.index + 1..).zip(entries) {
            if e.pos.index != next {
                return Err(format!(
                    "entry {} out of order, expected index {next}",
                    e.pos
                ));
            }
            match g.pos_at(next) {
                Some(p) if p == e.pos => {} // already have it
                Some(_) => {
                    if next <= g.commit {
                        return Err(format!("conflict at committed index {next}"));
                    }
                    let keep = (next - g.base.index - 1) as usize;
                    g.entries.truncate(keep);
                    if g.written >= next {
                        let to = g.pos_at(next - 1).expect("retained");
                        g.pending_truncate = Some(to);
                        g.written = next - 1;
                        g.persisted = g.persisted.min(next - 1);
                    }
                    g.entries.push_back(e);
                }
                None => g.entries.push_back(e),
            }
        }
        // What this batch proves we share with the coordinator: through its
        // last entry. Anything after that may still be ours alone.
        let confirmed = g.pos_at(end).expect("just checked or appended");
        g.confirmed = g.confirmed.max(confirmed);
        let committed = g.set_commit(commit.min(confirmed.index));
        if g.durable {
            if !g.follower_writes {
                self.wal.notify_one();
            }
        } else {
            g.persisted = g.last().index;
        }
        Ok((confirmed, committed))
    }

    /// Whether the follower thread writes appended entries to the write-ahead
    /// log itself (see `node::persist::write_pending`).
    pub fn set_follower_writes(&self, on: bool) {
        self.inner.lock().follower_writes = on;
    }

    /// A new stream starts: nothing beyond the base is confirmed yet. The
    /// token it returns is what the stream's changes carry; any earlier
    /// stream's are refused from now on.
    pub fn begin_stream(&self) -> u64 {
        let mut g = self.inner.lock();
        g.confirmed = g.base;
        g.stream_token += 1;
        g.stream_token
    }

    /// What a replica may acknowledge: confirmed by its stream and persisted.
    pub fn ack_position(&self) -> Option<LogPos> {
        let g = self.inner.lock();
        g.pos_at(g.confirmed.index.min(g.persisted))
    }

    /// Whether entries through `index` are persisted.
    pub fn is_persisted(&self, index: u64) -> bool {
        self.inner.lock().persisted >= index
    }

    // -- write-ahead log thread -------------------------------------------

    /// Blocks until there is something to write; false on timeout/shutdown.
    pub fn wait_unwritten(&self, timeout: Duration) -> bool {
        let mut g = self.inner.lock();
        loop {
            if g.shutdown || g.storage_error.is_some() {
                return false;
            }
            if g.written < g.last().index
                || g.pending_truncate.is_some()
                || g.commit > g.commit_written
            {
                return true;
            }
            if self.wal.wait_for(&mut g, timeout).timed_out() {
                return false;
            }
        }
    }

    /// Takes everything the write-ahead log has not recorded yet.
    pub fn take_unwritten(&self) -> WalBatch {
        let mut g = self.inner.lock();
        let start = (g.written.max(g.base.index) - g.base.index) as usize;
        let entries: Vec<Arc<Entry>> = g.entries.range(start..).cloned().collect();
        let last = g.last();
        let commit = (g.commit > g.commit_written).then_some(g.commit);
        let batch = WalBatch {
            truncate: g.pending_truncate.take(),
            entries,
            commit,
            last,
        };
        g.written = last.index;
        if let Some(c) = commit {
            g.commit_written = c;
        }
        batch
    }

    /// Records that the write-ahead log holds everything through `last`
    /// (if the log still ends there).
    pub fn set_persisted(&self, last: LogPos) {
        let mut g = self.inner.lock();
        if g.pos_at(last.index) != Some(last) || last.index <= g.persisted {
            return; // truncated or reset meanwhile
        }
        g.persisted = last.index;
        if let Some(l) = g.leader.as_mut() {
            let id = l.self_id;
            if let Some(c) = l.progress.on_ack(id, last.index) {
                if g.set_commit(c) {
                    self.committed.notify_all();
                }
                self.changed.notify_all();
            }
        }
        self.persisted.notify_all();
    }

    /// The write-ahead log failed: no more writes are accepted here.
    pub fn fail_storage(&self, error: String) {
        let mut g = self.inner.lock();
        g.storage_error = Some(error);
        // Clients waiting on writes: their outcome is unknown.
        if let Some(l) = g.leader.as_mut() {
            l.waiters.clear();
        }
        self.persisted.notify_all();
        self.changed.notify_all();
    }

    pub fn storage_error(&self) -> Option<String> {
        self.inner.lock().storage_error.clone()
    }

    /// Drops everything: a snapshot taken at `pos` is being installed by
    /// the stream holding `token`. Caller holds the apply guard.
    pub fn reset(&self, token: u64, pos: LogPos) -> Result<(), String> {
        let mut g = self.inner.lock();
        g.check_stream(token)?;
        g.entries.clear();
        g.base = pos;
        g.commit = pos.index;
        g.applied = pos.index;
        g.written = pos.index;
        g.persisted = pos.index;
        g.commit_written = pos.index;
        g.confirmed = pos;
        g.pending_truncate = None;
        g.generation += 1;
        self.changed.notify_all();
        Ok(())
    }

    // -- apply thread -----------------------------------------------------

    /// Held while applying, and while installing a snapshot.
    /// The apply guard if no other thread holds it.
    pub fn try_apply_guard(&self) -> Option<MutexGuard<'_, ()>> {
        self.apply_lock.try_lock()
    }

    pub fn apply_guard(&self) -> MutexGuard<'_, ()> {
        self.apply_lock.lock()
    }

    /// Blocks until some entry is committed but not applied. False on timeout
    /// or shutdown.
    pub fn wait_committed(&self, timeout: Duration) -> bool {
        let mut g = self.inner.lock();
        while g.commit <= g.applied {
            if g.shutdown || self.committed.wait_for(&mut g, timeout).timed_out() {
                return false;
            }
        }
        true
    }

    /// Committed entries not yet applied (at most `max`). Call with the apply
    /// guard held, so a snapshot install cannot interleave.
    pub fn committed_unapplied(&self, max: usize) -> Vec<Arc<Entry>> {
        let g = self.inner.lock();
        if g.commit <= g.applied {
            return Vec::new();
        }
        let start = (g.applied - g.base.index) as usize;
        let n = ((g.commit - g.applied) as usize).min(max);
        g.entries.range(start..start + n).cloned().collect()
    }

    /// Applies up to `max` committed entries to `store` and answers their
    /// waiting writers; returns the last position applied, if any. Call with
    /// the apply guard held.
    pub fn apply_committed(&self, store: &crate::store::Store, max: usize) -> Option<LogPos> {
        let batch = self.committed_unapplied(max);
        let last = batch.last()?.pos;
        let mut delta = crate::store::Delta::default();
        let outcomes: Vec<_> = batch
            .iter()
            .map(|e| (e.pos.index, store.apply(&e.op, &mut delta)))
            .collect();
        store.commit(last, delta);
        self.finish_apply(last, &outcomes);
        Some(last)
    }

    /// Records that entries up to `pos` are applied, hands outcomes to waiting
    /// clients, and trims the retained tail.
    pub fn finish_apply(&self, pos: LogPos, outcomes: &[(u64, OpOutcome)]) {
        let mut g = self.inner.lock();
        if pos.index <= g.applied {
            return; // a reset happened meanwhile
        }
        g.applied = pos.index;
        if let Some(l) = g.leader.as_mut() {
            for (index, outcome) in outcomes {
                if let Some(tx) = l.waiters.remove(index) {
                    tx.fulfil(*outcome);
                }
            }
        }
        // Trim: keep `retention` entries, and everything a tracked replica needs.
        let mut floor = match &g.leader {
            Some(l) => g.applied.min(l.progress.min_matched()),
            None => g.applied,
        };
        if g.durable {
            floor = floor.min(g.written); // the write-ahead log still needs them
        }
        while g.entries.len() > g.retention {
            match g.entries.front() {
                Some(e) if e.pos.index <= floor => {
                    g.base = e.pos;
                    g.entries.pop_front();
                }
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str) -> Op {
        Op::Put {
            key: k.into(),
            value: b"v".to_vec(),
        }
    }

    #[test]
    fn an_outcome_is_delivered_or_abandoned_never_lost() {
        let (p, o) = oneshot();
        assert_eq!(o.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(
            o.recv_timeout(Duration::ZERO),
            Err(RecvTimeoutError::Timeout)
        );
        p.fulfil(OpOutcome::Deleted(true));
        assert_eq!(o.recv_timeout(Duration::ZERO), Ok(OpOutcome::Deleted(true)));
        let (p, o) = oneshot();
        let t = std::thread::spawn(move || o.recv_timeout(Duration::from_secs(30)));
        drop(p); // the coordinator stepped down
        assert_eq!(t.join().unwrap(), Err(RecvTimeoutError::Disconnected));
    }

    #[test]
    fn leader_alone_commits_immediately() {
        let log = ReplLog::new(10, false);
        log.become_leader(1, 1, &[1], 1);
        let (i, _rx) = log.append_leader(put("a")).unwrap();
        assert_eq!(i, 1);
        assert_eq!(log.state().commit, 1);
        assert!(log.wait_committed(Duration::ZERO));
        assert_eq!(log.committed_unapplied(10).len(), 1);
    }

    #[test]
    fn not_leader_and_not_enough_replicas() {
        let log = ReplLog::new(10, false);
        assert_eq!(
            log.append_leader(put("a")).unwrap_err(),
            AppendError::NotLeader
        );
        log.become_leader(1, 1, &[1], 2);
        assert!(matches!(
            log.append_leader(put("a")),
            Err(AppendError::NotEnoughReplicas {
                in_sync: 1,
                required: 2
            })
        ));
    }

    #[test]
    fn commit_waits_for_in_sync_replica() {
        let log = ReplLog::new(10, false);
        log.become_leader(1, 1, &[1, 2], 1);
        log.append_leader(put("a")).unwrap();
        log.append_leader(put("b")).unwrap();
        assert_eq!(log.state().commit, 0);
        assert!(!log.on_ack(2, LogPos::new(1, 1)));
        assert_eq!(log.state().commit, 1);
        log.on_ack(2, LogPos::new(1, 2));
        assert_eq!(log.state().commit, 2);
    }

    /// Simulator seed 6: replica 3 caught up while replica 2 held the commit
    /// back; removing 2 moved the commit past 3, which was then added (and
    /// recorded in sync) without the newest committed entry.
    #[test]
    fn a_member_added_behind_the_commit_is_reported_behind() {
        let log = ReplLog::new(10, false);
        log.become_leader(1, 1, &[1, 2], 1);
        log.track(3, 0, 7);
        log.append_leader(put("a")).unwrap();
        log.on_ack(2, LogPos::new(1, 1));
        assert!(log.on_ack(3, LogPos::new(1, 1)), "3 caught up at commit 1");
        log.append_leader(put("b")).unwrap();
        log.remove_from_commit_set(2);
        assert_eq!(log.state().commit, 2, "2 no longer holds the commit back");
        assert!(!log.add_to_commit_set(3), "3 lacks committed entry 2");
        log.append_leader(put("c")).unwrap();
        assert_eq!(log.state().commit, 2, "the commit now waits for 3");
        log.on_ack(3, LogPos::new(1, 2));
        assert!(log.add_to_commit_set(3), "3 holds every committed entry");
    }

    #[test]
    fn follower_appends_truncates_conflicts_and_refuses_old_epochs() {
        let log = ReplLog::new(10, false);
        let e = |ep, i, k: &str| {
            Arc::new(Entry {
                pos: LogPos::new(ep, i),
                op: put(k),
            })
        };
        let last = log
            .append_follower(
                1,
                LogPos::ZERO,
                vec![e(1, 1, "a"), e(1, 2, "b"), e(1, 3, "c")],
                1,
            )
            .unwrap();
        assert_eq!(last, LogPos::new(1, 3));
        assert_eq!(log.state().commit, 1);
        // A new coordinator at epoch 2 overwrites the uncommitted index 3.
        let last = log
            .append_follower(2, LogPos::new(1, 2), vec![e(2, 3, "x")], 3)
            .unwrap();
        assert_eq!(last, LogPos::new(2, 3));
        assert_eq!(log.state().commit, 3);
        // Epoch 1 is now stale.
        assert!(log
            .append_follower(1, LogPos::new(2, 3), vec![], 3)
            .is_err());
        // A prev that is not in the log is an error.
        assert!(log
            .append_follower(2, LogPos::new(2, 9), vec![], 3)
            .is_err());
    }

    #[test]
    fn a_divergent_replica_resumes_after_its_commit_and_drops_its_suffix() {
        let e = |ep, i, k: &str| {
            Arc::new(Entry {
                pos: LogPos::new(ep, i),
                op: put(k),
            })
        };
        // The replica holds 1.1..1.4, committed through 1.2; 1.3 and 1.4 never
        // committed. The new coordinator (epoch 2) holds 1.1, 1.2, 2.3.
        let coord = ReplLog::new(10, false);
        coord
            .append_follower(1, LogPos::ZERO, vec![e(1, 1, "a"), e(1, 2, "b")], 2)
            .unwrap();
        coord.become_leader(9, 2, &[9], 1);
        coord.append_leader(put("x")).unwrap();
        let replica = ReplLog::new(10, false);
        replica
            .append_follower(
                1,
                LogPos::ZERO,
                vec![e(1, 1, "a"), e(1, 2, "b"), e(1, 3, "c"), e(1, 4, "d")],
                2,
            )
            .unwrap();
        let start = coord.resume_point(LogPos::new(1, 4), LogPos::new(1, 2));
        assert_eq!(start, Some(LogPos::new(1, 2)));
        let Fetch::Entries {
            prev,
            entries,
            commit,
        } = coord.fetch(coord.state().generation, 3, None, 1 << 20, Duration::ZERO)
        else {
            panic!()
        };
        let last = replica.append_follower(2, prev, entries, commit).unwrap();
        assert_eq!(last, LogPos::new(2, 3), "1.3 and 1.4 were dropped");
        // Nothing in common beyond the base: a snapshot is needed.
        assert_eq!(
            coord.resume_point(LogPos::new(1, 4), LogPos::new(7, 2)),
            None
        );
    }

    #[test]
    fn fetch_reports_snapshot_need_after_trim() {
        let log = ReplLog::new(2, false);
        log.become_leader(1, 1, &[1], 1);
        for k in ["a", "b", "c", "d"] {
            log.append_leader(put(k)).unwrap();
        }
        let batch = log.committed_unapplied(10);
        let outcomes: Vec<_> = batch
            .iter()
            .map(|e| (e.pos.index, OpOutcome::Written))
            .collect();
        log.finish_apply(batch.last().unwrap().pos, &outcomes);
        let st = log.state();
        assert_eq!(st.base.index, 2);
        assert!(matches!(
            log.fetch(st.generation, 1, Some(0), 1 << 20, Duration::ZERO),
            Fetch::NeedSnapshot
        ));
        match log.fetch(st.generation, 3, Some(0), 1 << 20, Duration::ZERO) {
            Fetch::Entries {
                prev,
                entries,
                commit,
            } => {
                assert_eq!(prev, LogPos::new(1, 2));
                assert_eq!(entries.len(), 2);
                assert_eq!(commit, 4);
            }
            other => panic!("{other:?}"),
        }
    }
}
