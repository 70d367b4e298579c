//! The durability threads of a node with a data directory.
//!
//! * **wal** — takes every log change the write-ahead log has not recorded
//!   (truncations, entries, the commit index), writes them with one `write`,
//!   and with `fsync: always` one fsync for the whole batch: writes that
//!   arrive while an fsync runs share the next one (group commit). Then it
//!   marks them persisted, which is the coordinator's own acknowledgement
//!   and what a replica waits for before acknowledging.
//! * **snapshot** — when the log has grown past `snapshot-threshold-bytes`,
//!   writes a snapshot of the map and deletes the log segments before it.
//! * **fsync** — with `fsync: interval`, forces the log to disk periodically.
//!
//! A storage error stops the wal thread; the log then refuses writes.

use super::Shared;
use crate::storage::wal::WalRecordRef;
use crate::storage::{record, snapshot, FsyncPolicy, Storage};
use crate::types::LogPos;
use crossbeam_channel::{Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

pub(super) fn wal_loop(sh: Arc<Shared>, storage: Arc<Storage>, snap_tx: Sender<()>) {
    let mut buf = Vec::with_capacity(1 << 20);
    while !sh.stopping() {
        if !sh.log.wait_unwritten(Duration::from_millis(200)) {
            // A replica's follower may be doing the writing: look at the
            // snapshot threshold anyway.
            if storage.wal.lock().bytes_since_snapshot >= storage.snapshot_bytes {
                let _ = snap_tx.try_send(());
            }
            continue;
        }
        match write_pending(&sh, &storage, &mut buf) {
            Ok(true) => {
                let _ = snap_tx.try_send(());
            }
            Ok(false) => {}
            Err(_) => return,
        }
        if buf.capacity() > 8 << 20 {
            buf = Vec::with_capacity(1 << 20);
        }
    }
}

/// Writes every log change the write-ahead log has not recorded (one
/// `write`, and one fsync with `fsync: always`), marks it persisted — the
/// coordinator's own acknowledgement — and acknowledges what a replica now
/// holds. The wal thread calls it; so does a replica's follower thread when
/// the policy is not `always` (no fsync to share, so writing in place saves a
/// thread hand-off per batch). Returns whether the log grew past the snapshot
/// threshold. A storage error stops this node's writes (and is returned).
pub(super) fn write_pending(
    sh: &Shared,
    storage: &Storage,
    buf: &mut Vec<u8>,
) -> crate::Result<bool> {
    let res = (|| -> crate::Result<(LogPos, bool)> {
        let mut wal = storage.wal.lock();
        let batch = sh.log.take_unwritten();
        buf.clear();
        if let Some(to) = batch.truncate {
            record::encode_into(buf, &WalRecordRef::Truncate { to });
        }
        for e in &batch.entries {
            record::encode_into(buf, &WalRecordRef::Entry(e));
        }
        if let Some(c) = batch.commit {
            record::encode_into(buf, &WalRecordRef::Commit(c));
        }
        wal.append(buf)?;
        if storage.policy == FsyncPolicy::Always
            && (!batch.entries.is_empty() || batch.truncate.is_some())
        {
            wal.sync()?;
        }
        wal.maybe_rotate(batch.last)?;
        Ok((
            batch.last,
            wal.bytes_since_snapshot >= storage.snapshot_bytes,
        ))
    })();
    match res {
        Ok((last, snapshot_due)) => {
            sh.log.set_persisted(last);
            // A replica acknowledges what is now persisted and confirmed.
            if let Some(p) = sh.log.ack_position() {
                sh.send_ack(p);
            }
            Ok(snapshot_due)
        }
        Err(e) => {
            log::error!("write-ahead log failed, this node accepts no more writes: {e}");
            sh.log.fail_storage(e.to_string());
            Err(e)
        }
    }
}

pub(super) fn snapshot_loop(sh: Arc<Shared>, storage: Arc<Storage>, rx: Receiver<()>) {
    while !sh.stopping() {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(()) => {}
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
            Err(_) => return,
        }
        if let Err(e) = take_snapshot(&sh, &storage) {
            log::error!("snapshot failed (the log keeps growing until one succeeds): {e}");
        }
    }
}

fn take_snapshot(sh: &Shared, storage: &Storage) -> crate::Result<()> {
    let pos = sh.store.meta().applied;
    let started = std::time::Instant::now();
    let path = snapshot::write(&storage.dir, pos, &sh.store)?;
    sh.metrics.snapshot.since(started);
    let dropped = {
        let mut wal = storage.wal.lock();
        wal.bytes_since_snapshot = 0;
        wal.drop_through(pos.index)?
    };
    snapshot::remove_older(&storage.dir, pos)?;
    log::info!(
        "snapshot at {pos} written to {} in {} ms; {dropped} log segment(s) deleted",
        path.display(),
        started.elapsed().as_millis()
    );
    Ok(())
}

pub(super) fn fsync_loop(sh: Arc<Shared>, storage: Arc<Storage>) {
    let FsyncPolicy::Interval(every) = storage.policy else {
        return;
    };
    while !sh.stopping() {
        std::thread::sleep(every);
        // Take a handle under the lock, force it outside: the wal thread keeps
        // appending during the fsync. (After a rotation the old segment was
        // already forced by the rotation itself.)
        let handle = storage.wal.lock().file_handle();
        let started = std::time::Instant::now();
        let res = handle.and_then(|f| {
            f.sync_data()
                .map_err(|e| crate::Error::Storage(format!("fsync: {e}")))
        });
        if let Some(h) = &sh.metrics.fsync {
            h.since(started);
        }
        if let Err(e) = res {
            log::error!("background fsync failed, this node accepts no more writes: {e}");
            sh.log.fail_storage(e.to_string());
            return;
        }
    }
}

/// Makes an installed snapshot durable: writes it at `pos` and starts a new
/// log after it. Called with the apply guard held (the store is quiet).
pub(super) fn persist_installed_snapshot(
    storage: &Storage,
    sh: &Shared,
    pos: LogPos,
) -> crate::Result<()> {
    let mut wal = storage.wal.lock();
    let started = std::time::Instant::now();
    snapshot::write(&storage.dir, pos, &sh.store)?;
    sh.metrics.snapshot.since(started);
    wal.reset(pos)?;
    snapshot::remove_older(&storage.dir, pos)?;
    Ok(())
}
