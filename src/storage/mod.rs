//! Durability: a node's data directory.
//!
//! ```text
//! DIR/LOCK              held (flock) while a node runs on DIR
//! DIR/identity.json     node id and incarnation
//! DIR/wal-*.log         write-ahead log segments (see `wal`)
//! DIR/snap-*.snap       the latest snapshot (see `snapshot`)
//! ```
//!
//! Start-up recovery: take the lock, load the newest snapshot, replay the log
//! after it (a torn last record is cut off; any other damage stops the node
//! with the file and offset), apply everything recorded as committed.

pub mod record;
pub mod snapshot;
pub mod wal;

pub use crate::config::FsyncPolicy;
use crate::config::NodeSettings;
use crate::errors::{Error, Result};
use crate::identity::Identity;
use crate::store::{Delta, Store};
use crate::types::{Entry, LogPos};
use parking_lot::Mutex;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct Storage {
    pub dir: PathBuf,
    /// Held for the node's lifetime: the lock on DIR/LOCK.
    _lock: File,
    pub wal: Mutex<wal::Wal>,
    pub policy: FsyncPolicy,
    /// WAL bytes after which a snapshot is taken and older segments deleted.
    pub snapshot_bytes: u64,
}

/// What recovery found.
#[derive(Debug)]
pub struct Recovered {
    pub identity: Identity,
    /// Position of the snapshot loaded (ZERO when none).
    pub base: LogPos,
    /// Log entries after the snapshot, committed or not.
    pub entries: Vec<Entry>,
    /// Everything up to here is applied to the store.
    pub commit: u64,
    pub took: Duration,
}

/// Applies the recovered entries through `commit` to `store`, which holds
/// the snapshot at `base`; returns the position applied. Shared with the
/// simulator's model of a data directory.
pub fn apply_recovered(store: &Store, base: LogPos, entries: &[Entry], commit: u64) -> LogPos {
    let mut delta = Delta::default();
    let mut applied = base;
    for e in entries.iter().take_while(|e| e.pos.index <= commit) {
        store.apply(&e.op, &mut delta);
        applied = e.pos;
    }
    store.commit(applied, delta);
    applied
}

fn err(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::storage_io(format!("{what} {}", path.display()), e)
}

impl Storage {
    /// Opens (creating if needed) and locks `dir`, and recovers its contents
    /// into the empty `store`.
    pub fn open(
        dir: &Path,
        settings: &NodeSettings,
        store: &Store,
    ) -> Result<(Storage, Recovered)> {
        let started = Instant::now();
        fs::create_dir_all(dir).map_err(|e| err(dir, "cannot create data directory", e))?;
        let lock_path = dir.join("LOCK");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| err(dir, "data directory is not writable:", e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::Storage(format!(
                    "data directory {} is in use by another dkv-node ({} is locked)",
                    dir.display(),
                    lock_path.display()
                )))
            }
            Err(fs::TryLockError::Error(e)) => return Err(err(&lock_path, "cannot lock", e)),
        }
        let identity = Identity::load_or_create(dir)?;
        let base = match snapshot::latest(dir)? {
            Some((_, path)) => {
                let pos = snapshot::load(&path, store)?;
                log::info!(
                    "loaded snapshot {} ({} keys)",
                    path.display(),
                    store.meta().keys
                );
                pos
            }
            None => LogPos::ZERO,
        };
        let replay = wal::replay(dir, base)?;
        let applied = apply_recovered(store, base, &replay.entries, replay.commit);
        let last = replay.entries.last().map(|e| e.pos).unwrap_or(base);
        let policy = FsyncPolicy::parse(&settings.fsync, settings.fsync_interval())
            .map_err(Error::Config)?;
        let wal = wal::Wal::open(dir, &replay, last, settings.wal_segment_bytes)?;
        let recovered = Recovered {
            identity,
            base,
            commit: applied.index,
            entries: replay.entries,
            took: started.elapsed(),
        };
        log::info!(
            "recovered {}: snapshot at {base}, {} log entries after it, applied through {}, last {last} ({} ms)",
            dir.display(),
            recovered.entries.len(),
            applied,
            recovered.took.as_millis()
        );
        Ok((
            Storage {
                dir: dir.to_path_buf(),
                _lock: lock,
                wal: Mutex::new(wal),
                policy,
                snapshot_bytes: settings.snapshot_threshold_bytes,
            },
            recovered,
        ))
    }
}
