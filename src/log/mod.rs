//! The replicated log held in memory: the retained tail of entries, the commit
//! index, the applied index, and (at the coordinator) replication progress and
//! the clients waiting for their writes to commit.
//!
//! Threads that share it:
//! * client connections append (coordinator) and wait for their entry's
//!   outcome ([`Outcome`]);
//! * per-replica senders wait for new entries / commit changes and stream
//!   them ([`ReplLog::fetch`]);
//! * ack readers (coordinator) record acknowledgements, which may advance the
//!   commit; the one whose acknowledgement moved it applies the newly
//!   committed entries itself when it can take the apply guard;
//! * the follower thread (replica) appends what the coordinator streams and
//!   applies what became committed, again when it can take the apply guard;
//! * the write-ahead log thread takes what is not written yet and records
//!   what is persisted, which can move the coordinator's commit too;
//! * the driver thread takes and gives up the coordinator role and changes
//!   the commit set, which can move the commit too;
//! * the apply thread applies only what those could not: the commit moved
//!   while another thread held the apply guard, or on a thread that never
//!   applies (the write-ahead log thread, the driver).
//!
//! Lock order: `apply_lock` before `inner`. Whoever applies holds
//! `apply_lock` while it applies a batch; installing a snapshot holds it for
//! the whole install, so no stale batch can land on the new state.
//!
//! One file per side of it: `outcome.rs` (the write's oneshot), `leader.rs`
//! (coordinator), `follower.rs` (replica), `wal.rs` (the write-ahead log
//! hand-off), `apply.rs` (applying and trimming); this file holds the state
//! they share.
//!
//! Invariants, asserted where they are kept: the commit index never goes down
//! (except when a snapshot install replaces the whole log), the applied index
//! never exceeds it, and the base never exceeds the applied index.

use crate::types::{Entry, Epoch, LogPos};
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::Arc;

mod apply;
mod follower;
mod leader;
mod outcome;
mod wal;

use leader::Leader;
pub use leader::{AckEffect, AppendError, Appended, Fetch};
pub use outcome::Outcome;
pub use wal::WalBatch;

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
    /// A planned handoff holds new appends until this instant (or release).
    hold_until: Option<std::time::Instant>,
    /// Where the coordinator is after a handoff: told to the appends that
    /// were held.
    successor: Option<String>,
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

    /// Raises the commit index; true when it moved (wake the applier).
    /// Never lowers it: this guard is what keeps the commit index from going
    /// down (a replica hears commits from a coordinator that may be behind
    /// what it already knows, and a coordinator's `Progress` never reports
    /// a lower one).
    fn set_commit(&mut self, c: u64) -> bool {
        if c > self.commit {
            self.commit = c;
            return true;
        }
        false
    }

    /// The order of the log's positions: base ≤ applied ≤ commit. Checked
    /// where applied, commit or base are set other than by raising the
    /// commit (which only widens the gap): `finish_apply` and its trim,
    /// `restore`, `reset`. O(1).
    fn assert_positions(&self) {
        assert!(
            self.applied <= self.commit,
            "applied index {} exceeds the commit index {}",
            self.applied,
            self.commit
        );
        assert!(
            self.base.index <= self.applied,
            "log base {} is past the applied index {}",
            self.base,
            self.applied
        );
    }
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
                hold_until: None,
                successor: None,
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
        assert!(
            commit >= g.commit,
            "restore would lower the commit index from {} to {commit}",
            g.commit
        );
        g.base = base;
        g.entries = entries.into_iter().map(Arc::new).collect();
        let last = g.last().index;
        assert!(
            commit <= last,
            "restored commit index {commit} is past the log's last entry {last}"
        );
        g.epoch = g.epoch.max(g.last().epoch);
        g.commit = commit;
        g.applied = commit;
        g.written = last;
        g.persisted = last;
        g.commit_written = commit;
        g.assert_positions();
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

    /// The position of the entry at `index`, if retained.
    pub fn pos_at(&self, index: u64) -> Option<LogPos> {
        self.inner.lock().pos_at(index)
    }
}

#[cfg(test)]
fn test_put(k: &str) -> crate::types::Op {
    crate::types::Op::Put {
        key: k.into(),
        value: b"v".to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "restore would lower the commit index")]
    fn restoring_a_lower_commit_panics() {
        let log = ReplLog::new(10, false);
        log.become_leader(1, 1, &[1], 1);
        log.append_leader(test_put("a")).unwrap();
        assert_eq!(log.state().commit, 1);
        log.restore(LogPos::ZERO, vec![], 0);
    }

    #[test]
    #[should_panic(expected = "past the log's last entry")]
    fn restoring_a_commit_past_the_log_panics() {
        ReplLog::new(10, false).restore(LogPos::ZERO, vec![], 1);
    }

    #[test]
    #[should_panic(expected = "is past the applied index")]
    fn restoring_a_base_past_the_commit_panics() {
        ReplLog::new(10, false).restore(LogPos::new(1, 5), vec![], 3);
    }
}
