//! A replica's side of the log: appending what the coordinator streams
//! (dropping a divergent suffix), the stream tokens that let only the
//! current stream change the log, what the replica may acknowledge, and the
//! reset before a snapshot is installed.

use super::{Inner, ReplLog};
use crate::types::{Entry, Epoch, LogPos};
use std::sync::Arc;

impl Inner {
    /// Only the current stream of a replica changes its log.
    pub(super) fn check_stream(&self, token: u64) -> Result<(), String> {
        if self.leader.is_some() {
            return Err("this node is the coordinator now".into());
        }
        if token != self.stream_token {
            return Err("a newer replication stream replaced this one".into());
        }
        Ok(())
    }
}

impl ReplLog {
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

    /// Drops everything: a snapshot taken at `pos` is being installed by
    /// the stream holding `token`. Caller holds the apply guard.
    ///
    /// The one place the commit index may go down: the whole log and store
    /// are replaced by the coordinator's. Normally `pos` is at or past this
    /// replica's commit (a committed entry is in every later coordinator's
    /// log, so the replica would have resumed instead); after an operator's
    /// `--recover-from-nodes` appointed a less complete node it can be below.
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
        g.assert_positions();
        self.changed.notify_all();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::test_put as put;
    use crate::log::Fetch;
    use std::time::Duration;

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
        } = coord.fetch(
            (2, 0),
            coord.state().generation,
            3,
            None,
            1 << 20,
            Duration::ZERO,
        )
        else {
            panic!()
        };
        let last = replica.append_follower(2, prev, entries, commit).unwrap();
        assert_eq!(last, LogPos::new(2, 3), "1.3 and 1.4 were dropped");
        // Entries are unique by (epoch, index): a replica ending at 1.4
        // shares 1.2, the coordinator's last entry of epoch 1, whatever
        // commit it reports.
        assert_eq!(
            coord.resume_point(LogPos::new(1, 4), LogPos::new(7, 2)),
            Some(LogPos::new(1, 2))
        );
        // Nothing in common beyond the base: a snapshot is needed.
        assert_eq!(
            coord.resume_point(LogPos::new(3, 4), LogPos::new(7, 2)),
            None
        );
    }
}
