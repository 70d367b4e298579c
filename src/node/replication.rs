//! The replication stream, both ends.
//!
//! A replica connects to the coordinator and sends `Follow` with the last
//! position of its log. The coordinator streams the missing suffix when its
//! log still holds that position, or a snapshot (taken shard by shard while
//! writes continue) followed by the suffix from where the snapshot started.
//! Ops are idempotent overwrites, so replaying that suffix over the "fuzzy"
//! snapshot yields exactly the coordinator's state.
//!
//! Coordinator side: this connection thread is the *sender* — it waits for
//! new entries, writes each batch as one frame with one syscall — and a second
//! thread is the *ack reader*. Replica side: one *follower* thread appends
//! batches to the log and acknowledges the last position it holds; the apply
//! thread applies what the coordinator reports committed.

use super::Shared;
use crate::auth::AuthCounters;
use crate::core::node::Input;
use crate::log::Fetch;
use crate::store::Delta;
use crate::types::{Epoch, LogPos, Op};
use crate::wire::{ConnKind, FollowRequest, Opener, ReplAck, ReplMsg, Sealer, WireError};
pub(super) use acker::Acker;
use parking_lot::Mutex;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A sender with nothing new sends an empty batch after this long: its ack
/// shows an idle coordinator that a returning replica caught up.
const IDLE_WAIT: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------
// Coordinator side
// ---------------------------------------------------------------------------

pub(super) fn feed(
    sh: &Arc<Shared>,
    stream: TcpStream,
    req: FollowRequest,
    peer: &str,
    mut tx: Sealer,
    mut rx: Opener,
) {
    let id = req.node_id;
    let st = sh.log.state();
    let mut refuse = |reason: String| {
        log::info!("refusing replication stream to node {id} ({peer}): {reason}");
        let _ = tx.write(
            &mut &stream,
            &ReplMsg::Refused {
                epoch: st.epoch,
                reason,
            },
        );
    };
    if !st.leader {
        return refuse("this node is not the coordinator".into());
    }
    if req.epoch > st.epoch {
        return refuse(format!(
            "replica knows epoch {}, newer than this coordinator's {}",
            req.epoch, st.epoch
        ));
    }
    if id == sh.id {
        return refuse("a node cannot follow itself".into());
    }
    if !sh.serving.read().members.contains(&id) {
        return refuse(format!("node {id} is not a registered member"));
    }
    let _ = stream.set_read_timeout(None);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let generation = st.generation;

    // Pin the log before choosing the start, so nothing we need is trimmed.
    let stream_no = sh.next_stream.fetch_add(1, Ordering::Relaxed);
    sh.log.track(id, 0, stream_no);
    let (snapshot_at, next, how) = match sh.log.resume_point(req.last, req.committed) {
        Some(p) if p == req.last => (None, p.index + 1, "log suffix"),
        Some(p) => (
            None,
            p.index + 1,
            "log suffix after its commit; its divergent entries are dropped",
        ),
        None => {
            let pos = sh.store.meta().applied;
            (Some(pos), pos.index + 1, "snapshot")
        }
    };
    sh.log.track(id, next - 1, stream_no);
    sh.notify(Input::FollowerConnected(id, stream_no));
    log::info!("node {id} ({peer}) follows from {} ({how})", req.last);

    let reader = match stream.try_clone() {
        Ok(r) => r,
        Err(e) => {
            log::warn!("replication to node {id}: {e}");
            sh.log.untrack(id, stream_no);
            return;
        }
    };
    let sh2 = sh.clone();
    let max_ack = 1024;
    let acks = std::thread::Builder::new()
        .name(format!("acks-{}-{id}", sh.id))
        .spawn(move || {
            loop {
                match rx.read::<_, ReplAck>(&mut &reader, max_ack) {
                    Ok(ack) => {
                        let effect = sh2.log.on_ack_deferred(id, ack.last);
                        if effect.committed {
                            match sh2.log.try_apply_guard() {
                                Some(_guard) => super::apply_available(&sh2),
                                // Someone is applying; the apply thread
                                // picks up what it leaves.
                                None => sh2.log.wake_applier(),
                            }
                        }
                        if effect.caught_up {
                            sh2.notify(Input::FollowerCaughtUp(id));
                        }
                    }
                    Err(WireError::Closed) => break,
                    Err(WireError::Forged) => {
                        AuthCounters::bump(&sh2.counters.rejected_peers);
                        log::warn!("acks from node {id}: {}; closing", WireError::Forged);
                        break;
                    }
                    Err(e) => {
                        log::debug!("acks from node {id}: {e}");
                        break;
                    }
                }
            }
            let _ = reader.shutdown(Shutdown::Both);
        });

    let result = send_stream(sh, &stream, &mut tx, generation, snapshot_at, next);
    match &result {
        Ok(()) => log::info!("replication stream to node {id} ended"),
        Err(e) => log::info!("replication stream to node {id} ended: {e}"),
    }
    let _ = stream.shutdown(Shutdown::Both);
    if let Ok(h) = acks {
        let _ = h.join();
    }
    sh.log.untrack(id, stream_no);
    sh.notify(Input::FollowerGone(id, stream_no));
}

fn send_stream(
    sh: &Shared,
    stream: &TcpStream,
    tx: &mut Sealer,
    generation: u64,
    snapshot_at: Option<LogPos>,
    mut next: u64,
) -> Result<(), String> {
    let epoch = sh.log.state().epoch;
    let max_batch = sh.settings.max_batch_bytes;
    let mut buf = Vec::with_capacity(64 * 1024);
    let w = |buf: &mut Vec<u8>| -> Result<(), String> {
        std::io::Write::write_all(&mut &*stream, buf).map_err(|e| e.to_string())?;
        buf.clear();
        Ok(())
    };
    if let Some(pos) = snapshot_at {
        tx.frame_into(&mut buf, &ReplMsg::SnapshotBegin { epoch, pos });
        for shard in 0..sh.store.shard_count() {
            let mut pairs = sh.store.shard_pairs(shard);
            while !pairs.is_empty() {
                let mut bytes = 0;
                let mut n = 0;
                for (k, v) in &pairs {
                    if n > 0 && bytes + k.len() + v.len() > max_batch {
                        break;
                    }
                    bytes += k.len() + v.len();
                    n += 1;
                }
                let rest = pairs.split_off(n);
                tx.frame_into(&mut buf, &ReplMsg::SnapshotChunk { pairs });
                w(&mut buf)?;
                pairs = rest;
            }
            if sh.stopping() {
                return Err("shutting down".into());
            }
        }
        tx.frame_into(&mut buf, &ReplMsg::SnapshotEnd { epoch });
        w(&mut buf)?;
    }
    let mut sent_commit = None;
    loop {
        match sh
            .log
            .fetch(generation, next, sent_commit, max_batch, IDLE_WAIT)
        {
            Fetch::Entries {
                prev,
                entries,
                commit,
            } => {
                next += entries.len() as u64;
                sent_commit = Some(commit);
                tx.frame_into(
                    &mut buf,
                    &ReplMsg::Append {
                        epoch,
                        prev,
                        entries,
                        commit,
                    },
                );
                w(&mut buf)?;
            }
            // Nothing new: send an empty batch anyway. The replica's ack to it
            // lets an idle coordinator notice that a returning replica caught up.
            Fetch::Idle => sent_commit = None,
            Fetch::NeedSnapshot => return Err("replica fell behind the retained log".into()),
            Fetch::Stale => return Err("coordinator role changed".into()),
        }
    }
}

// ---------------------------------------------------------------------------
// Replica side
// ---------------------------------------------------------------------------

/// A running follower thread; `stop` ends it and waits.
pub(super) struct FollowerHandle {
    stop: Arc<AtomicBool>,
    stream: Arc<Mutex<Option<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl FollowerHandle {
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(s) = self.stream.lock().as_ref() {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub(super) fn follow(sh: Arc<Shared>, addr: String, epoch: Epoch) -> FollowerHandle {
    let stop = Arc::new(AtomicBool::new(false));
    let slot: Arc<Mutex<Option<TcpStream>>> = Arc::new(Mutex::new(None));
    let (stop2, slot2) = (stop.clone(), slot.clone());
    let id = sh.id;
    let thread = std::thread::Builder::new()
        .name(format!("follower-{id}"))
        .spawn(move || {
            let mut refused = false;
            let reason = match run_follower(&sh, &addr, epoch, &stop2, &slot2, &mut refused) {
                Ok(()) => "stream closed".to_string(),
                Err(e) => e,
            };
            if !stop2.load(Ordering::Acquire) && !sh.stopping() {
                sh.notify(Input::FollowLost {
                    reason: format!("{addr}: {reason}"),
                    refused,
                });
            }
        })
        .expect("spawn follower");
    FollowerHandle {
        stop,
        stream: slot,
        thread: Some(thread),
    }
}

fn run_follower(
    sh: &Shared,
    addr: &str,
    epoch: Epoch,
    stop: &AtomicBool,
    slot: &Mutex<Option<TcpStream>>,
    refused: &mut bool,
) -> Result<(), String> {
    if let Some(e) = sh.log.storage_error() {
        return Err(format!("storage failed, not following: {e}"));
    }
    if !sh.log.observe_epoch(epoch) {
        return Err(format!("epoch {epoch} is older than one already seen"));
    }
    sh.log.begin_stream();
    let st = sh.log.state();
    let last = st.last;
    let committed = sh.log.pos_at(st.commit).unwrap_or(st.base);
    let conn = sh
        .connect_peer(
            addr,
            ConnKind::Follow(FollowRequest {
                node_id: sh.id,
                incarnation: sh.incarnation,
                epoch,
                last,
                committed,
            }),
            Duration::from_secs(2),
        )
        .map_err(|e| {
            *refused = e.kind() == std::io::ErrorKind::ConnectionRefused;
            format!("cannot connect: {e}")
        })?;
    let (stream, mut rx) = (conn.stream, conn.rx);
    *slot.lock() = Some(stream.try_clone().map_err(|e| e.to_string())?);
    let _acker = sh.set_acker(
        stream.try_clone().map_err(|e| e.to_string())?,
        conn.tx,
        epoch,
    );
    if stop.load(Ordering::Acquire) {
        return Ok(());
    }
    let _ = stream.set_read_timeout(None);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    log::info!(
        "node {}: following {addr} at epoch {epoch} from {last}",
        sh.id
    );

    let max = sh.settings.max_repl_frame();
    let mut snapshot: Option<(LogPos, Delta, parking_lot::MutexGuard<'_, ()>)> = None;
    // Without fsync: always there is no fsync for batches to share, so this
    // thread writes the write-ahead log itself rather than wake the wal thread.
    let writes_wal = sh
        .storage
        .as_ref()
        .is_some_and(|st| st.policy != crate::storage::FsyncPolicy::Always);
    sh.log.set_follower_writes(writes_wal);
    let _wal_thread_again = WalThreadAgain(sh);
    let mut wal_buf = Vec::new();
    loop {
        let msg: ReplMsg = rx.read(&mut &stream, max).map_err(|e| {
            if matches!(e, WireError::Forged) {
                AuthCounters::bump(&sh.counters.rejected_peers);
            }
            e.to_string()
        })?;
        match msg {
            ReplMsg::SnapshotBegin { epoch: e, pos } => {
                if e < epoch || snapshot.is_some() {
                    return Err("unexpected snapshot".into());
                }
                let guard = sh.log.apply_guard();
                sh.log.reset(pos);
                sh.store.clear(pos);
                log::info!("node {}: installing snapshot at {pos}", sh.id);
                snapshot = Some((pos, Delta::default(), guard));
            }
            ReplMsg::SnapshotChunk { pairs } => {
                let Some((_, delta, _)) = snapshot.as_mut() else {
                    return Err("snapshot chunk outside a snapshot".into());
                };
                for (key, value) in pairs {
                    sh.store.apply(&Op::Put { key, value }, delta);
                }
            }
            ReplMsg::SnapshotEnd { .. } => {
                let Some((pos, delta, guard)) = snapshot.take() else {
                    return Err("snapshot end outside a snapshot".into());
                };
                sh.store.commit(pos, delta);
                if let Some(st) = &sh.storage {
                    super::persist::persist_installed_snapshot(st, sh, pos).map_err(|e| {
                        sh.log.fail_storage(e.to_string());
                        format!("cannot store the snapshot: {e}")
                    })?;
                }
                drop(guard);
                let meta = sh.store.meta();
                sh.board.update(|b| {
                    b.last = pos;
                    b.applied = meta.applied;
                    b.digest = meta.digest;
                });
                log::info!("node {}: snapshot installed ({} keys)", sh.id, meta.keys);
                // Tell the coordinator where we stand even if no entry follows.
                sh.send_ack(pos);
            }
            ReplMsg::Append {
                epoch: e,
                prev,
                entries,
                commit,
            } => {
                if snapshot.is_some() {
                    return Err("entries inside a snapshot".into());
                }
                let (confirmed, committed) =
                    sh.log.append_follower_deferred(e, prev, entries, commit)?;
                if let Some(st) = sh.storage.as_ref().filter(|_| writes_wal) {
                    super::persist::write_pending(sh, st, &mut wal_buf)
                        .map_err(|e| format!("storage failed: {e}"))?;
                }
                let last = sh.log.state().last;
                sh.board.update(|b| b.last = last);
                if sh.storage.is_none() || sh.log.is_persisted(confirmed.index) {
                    // Nothing waits for the disk (or nothing new arrived).
                    sh.send_ack(confirmed);
                }
                if committed {
                    // Apply here rather than wake the apply thread: one
                    // hand-off less per batch.
                    match sh.log.try_apply_guard() {
                        Some(_guard) => super::apply_available(sh),
                        None => sh.log.wake_applier(),
                    }
                }
                // With a write-ahead log, its thread acknowledges once the
                // entries are persisted, while this thread reads on: batches
                // that arrive during an fsync share the next one.
            }
            ReplMsg::Refused { reason, .. } => return Err(format!("refused: {reason}")),
        }
        if stop.load(Ordering::Acquire) {
            return Ok(());
        }
    }
}

/// When the follower stops, the wal thread writes everything again (the
/// node may become coordinator).
struct WalThreadAgain<'a>(&'a Shared);

impl Drop for WalThreadAgain<'_> {
    fn drop(&mut self) {
        self.0.log.set_follower_writes(false);
    }
}

mod acker {
    use super::super::Shared;
    use crate::types::{Epoch, LogPos};
    use crate::wire::{ReplAck, Sealer};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    /// Where a replica sends its acknowledgements: the stream to the
    /// coordinator it follows. Shared by the follower thread and the
    /// write-ahead log thread, which acknowledges once entries are persisted.
    pub struct Acker {
        pub stream: TcpStream,
        pub tx: Sealer,
        pub epoch: Epoch,
        /// The last position acknowledged, and when.
        pub sent: Option<(LogPos, Instant)>,
    }

    /// A position already acknowledged is acknowledged again only after this
    /// long: frames that carry only a new commit index need no answer, but
    /// an idle coordinator still hears from its replicas.
    const REPEAT_ACK_AFTER: Duration = Duration::from_millis(100);

    /// Clears the acker when the follower stops.
    pub struct AckerGuard<'a>(pub &'a Shared);

    impl Drop for AckerGuard<'_> {
        fn drop(&mut self) {
            *self.0.acker.lock() = None;
        }
    }

    impl Shared {
        pub(crate) fn set_acker(
            &self,
            stream: TcpStream,
            tx: Sealer,
            epoch: Epoch,
        ) -> AckerGuard<'_> {
            *self.acker.lock() = Some(Acker {
                stream,
                tx,
                epoch,
                sent: None,
            });
            AckerGuard(self)
        }

        /// Acknowledges `last` to the coordinator, if following one.
        pub(crate) fn send_ack(&self, last: LogPos) {
            let mut g = self.acker.lock();
            if let Some(a) = g.as_mut() {
                let now = Instant::now();
                if a.sent
                    .is_some_and(|(p, at)| p == last && now - at < REPEAT_ACK_AFTER)
                {
                    return;
                }
                a.sent = Some((last, now));
                let mut buf = Vec::with_capacity(64);
                let epoch = a.epoch;
                a.tx.frame_into(&mut buf, &ReplAck { epoch, last });
                if std::io::Write::write_all(&mut &a.stream, &buf).is_err() {
                    *g = None; // the follower thread notices the broken stream
                }
            }
        }
    }
}
