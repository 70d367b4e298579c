//! A node's data directory, modelled: the write-ahead log's records as
//! written (the page cache) and as synced (stable storage), and the last
//! snapshot. The node's write path is `node::persist::write_pending`; this
//! model takes the same [`WalBatch`]es and records, and recovers with the
//! same [`ReplayFold`] and [`apply_recovered`] as `Storage::open`.

use crate::log::WalBatch;
use crate::storage::wal::{ReplayFold, WalRecord};
use crate::storage::{apply_recovered, FsyncPolicy};
use crate::store::Store;
use crate::types::{Entry, LogPos};

/// Keys and values, as a snapshot file holds them.
type Pairs = Vec<crate::store::Pair>;

pub struct Disk {
    pub policy: FsyncPolicy,
    /// The snapshot (written with fsync and rename: always durable).
    snapshot: (LogPos, Pairs),
    records: Vec<WalRecord>,
    /// `records[..synced]` are on stable storage.
    synced: usize,
    /// A write is in progress (the wal thread is busy until it is done).
    pub busy: bool,
}

/// The positions stable storage holds.
pub struct Synced {
    base: LogPos,
    entries: std::collections::HashSet<LogPos>,
}

impl Synced {
    pub fn holds(&self, pos: LogPos) -> bool {
        (pos.index <= self.base.index && self.base.epoch >= pos.epoch)
            || self.entries.contains(&pos)
    }
}

/// What a restart finds.
pub struct Recovered {
    pub base: LogPos,
    pub store: Store,
    pub entries: Vec<Entry>,
    pub commit: u64,
}

impl Disk {
    pub fn new(policy: FsyncPolicy) -> Self {
        Disk {
            policy,
            snapshot: (LogPos::ZERO, Vec::new()),
            records: Vec::new(),
            synced: 0,
            busy: false,
        }
    }

    /// One `write` of the wal thread (and, with `fsync: always`, its fsync
    /// when the batch holds entries or a truncation).
    pub fn write(&mut self, batch: &WalBatch) {
        if let Some(to) = batch.truncate {
            self.records.push(WalRecord::Truncate { to });
        }
        for e in &batch.entries {
            self.records.push(WalRecord::Entry((**e).clone()));
        }
        if let Some(c) = batch.commit {
            self.records.push(WalRecord::Commit(c));
        }
        if self.policy == FsyncPolicy::Always
            && (!batch.entries.is_empty() || batch.truncate.is_some())
        {
            self.sync();
        }
    }

    /// An fsync: everything written is on stable storage.
    pub fn sync(&mut self) {
        self.synced = self.records.len();
    }

    /// An installed snapshot is made durable and the log restarts after it.
    pub fn install_snapshot(&mut self, pos: LogPos, store: &Store) {
        let pairs = (0..store.shard_count())
            .flat_map(|s| store.shard_pairs(s))
            .collect();
        self.snapshot = (pos, pairs);
        self.records.clear();
        self.synced = 0;
    }

    /// The machine lost power: the page cache is gone. Returns how many
    /// records were lost.
    pub fn power_loss(&mut self) -> usize {
        let lost = self.records.len() - self.synced;
        self.records.truncate(self.synced);
        lost
    }

    /// What stable storage holds: a restart after power loss finds this.
    pub fn synced(&self) -> Synced {
        let mut fold = ReplayFold::new(self.snapshot.0);
        for r in &self.records[..self.synced] {
            if fold.record(r.clone()).is_err() {
                break;
            }
        }
        Synced {
            base: self.snapshot.0,
            entries: fold.finish().0.iter().map(|e| e.pos).collect(),
        }
    }

    /// What `Storage::open` would find.
    pub fn recover(&self) -> Result<Recovered, String> {
        let (base, pairs) = &self.snapshot;
        let store = Store::new();
        let mut delta = crate::store::Delta::default();
        for p in pairs.iter().cloned() {
            store.apply(&p.into_op(), &mut delta);
        }
        store.commit(*base, delta);
        let mut fold = ReplayFold::new(*base);
        for r in &self.records {
            fold.record(r.clone())?;
        }
        let (entries, commit) = fold.finish();
        let applied = apply_recovered(&store, *base, &entries, commit);
        Ok(Recovered {
            base: *base,
            store,
            entries,
            commit: applied.index,
        })
    }
}
