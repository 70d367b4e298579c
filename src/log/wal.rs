//! The hand-off to the write-ahead log thread: what it has not written yet
//! (entries, a truncation, a newer commit index), what is persisted (the
//! coordinator's own acknowledgement waits for it), and a storage failure.

use super::ReplLog;
use crate::types::{Entry, LogPos};
use std::sync::Arc;
use std::time::Duration;

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

impl ReplLog {
    /// Whether the follower thread writes appended entries to the write-ahead
    /// log itself (see `node::persist::write_pending`).
    pub fn set_follower_writes(&self, on: bool) {
        self.inner.lock().follower_writes = on;
    }

    /// Whether entries through `index` are persisted.
    pub fn is_persisted(&self, index: u64) -> bool {
        self.inner.lock().persisted >= index
    }

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
}
