//! Applying committed entries to the [`Store`](crate::store::Store): the
//! apply guard, the batch of committed but unapplied entries, answering the
//! writers waiting for them, and trimming the retained tail.
//!
//! The thread whose acknowledgement moved the commit applies when it can
//! take the apply guard (an ack reader at the coordinator, the follower
//! thread at a replica); the apply thread waits in
//! [`ReplLog::wait_committed`] and applies only what those could not (the
//! guard was taken, or the commit moved on a thread that never applies: the
//! write-ahead log thread, the driver).

use super::ReplLog;
use crate::types::{Entry, LogPos, OpOutcome};
use parking_lot::MutexGuard;
use std::sync::Arc;
use std::time::Duration;

impl ReplLog {
    /// Wakes the apply thread (see [`ReplLog::on_ack_deferred`]).
    pub fn wake_applier(&self) {
        self.committed.notify_all();
    }

    /// The apply guard if no other thread holds it. Whoever applies holds
    /// it while it applies a batch; installing a snapshot holds it for the
    /// whole install.
    pub fn try_apply_guard(&self) -> Option<MutexGuard<'_, ()>> {
        self.apply_lock.try_lock()
    }

    /// The apply guard, waiting for it.
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
        assert!(
            pos.index <= g.commit,
            "applying {pos} past the commit index {}",
            g.commit
        );
        let before = g.applied;
        g.applied = pos.index;
        let inner = &mut *g;
        if let Some(l) = inner.leader.as_mut() {
            let start = (before - inner.base.index) as usize;
            let end = (pos.index - inner.base.index) as usize;
            l.note_applied(pos.index, inner.entries.range(start..end).map(|e| &**e));
        }
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
        g.assert_positions();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::test_put as put;
    use crate::log::Fetch;

    #[test]
    #[should_panic(expected = "past the commit index")]
    fn applying_past_the_commit_panics() {
        let log = ReplLog::new(10, false);
        log.become_leader(1, 1, &[1, 2], 1);
        log.append_leader(put("a")).unwrap(); // not committed: 2 has not acked
        log.finish_apply(LogPos::new(1, 1), &[]);
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
            log.fetch((2, 0), st.generation, 1, Some(0), 1 << 20, Duration::ZERO),
            Fetch::NeedSnapshot
        ));
        match log.fetch((2, 0), st.generation, 3, Some(0), 1 << 20, Duration::ZERO) {
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
