//! The replication stream's threads, around the sans-IO [`Feeder`] and
//! [`Follower`] of [`crate::repl`] (which decide everything: where a stream
//! starts, what to send, what to persist, apply and acknowledge).
//!
//! Coordinator side: the connection thread is the *sender* — it waits for
//! new entries and writes each frame the feeder returns with one syscall —
//! and a second thread is the *ack reader*. Replica side: one long-lived
//! *follower* thread follows whichever coordinator the driver names
//! ([`FollowerCtl`]); the driver never waits for it.

use super::Shared;
use crate::auth::AuthCounters;
use crate::core::node::Input;
use crate::net::Stream;
use crate::repl::{Feeder, Follower, Poll, Step, StreamEnd, IDLE_WAIT};
use crate::types::Epoch;
use crate::wire::{ConnKind, FollowRequest, Opener, ReplAck, ReplMsg, Sealer, WireError};
pub(super) use acker::Acker;
use parking_lot::{Condvar, Mutex};
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

// ---------------------------------------------------------------------------
// Coordinator side
// ---------------------------------------------------------------------------

pub(super) fn feed(
    sh: &Arc<Shared>,
    stream: Stream,
    req: FollowRequest,
    peer: &str,
    mut tx: Sealer,
    mut rx: Opener,
) {
    let id = req.node_id;
    let stream_no = sh.next_stream.fetch_add(1, Ordering::Relaxed);
    let member = sh.serving.read().members.contains(&id);
    let mut feeder = match Feeder::open(&sh.log, &sh.store, sh.id, member, &req, stream_no) {
        Ok(f) => f,
        Err(refusal) => {
            if let ReplMsg::Refused { why, .. } = &refusal {
                if why.expected() {
                    log::debug!("refusing replication stream to node {id} ({peer}): {why}");
                } else {
                    log::info!("refusing replication stream to node {id} ({peer}): {why}");
                }
            }
            let _ = tx.write(&mut &stream, &refusal);
            return;
        }
    };
    let _ = stream.set_read_timeout(None);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    sh.notify_surely(Input::FollowerConnected(id, stream_no));
    log::info!(
        "node {id} ({peer}) follows from {} ({})",
        req.last,
        feeder.how()
    );

    let reader = match stream.try_clone() {
        Ok(r) => r,
        Err(e) => {
            log::warn!("replication to node {id}: {e}");
            feeder.close(&sh.log);
            return;
        }
    };
    let sh2 = sh.clone();
    let acks_of = feeder.acks();
    let max_ack = 1024;
    let acks = std::thread::Builder::new()
        .name(format!("acks-{}-{id}", sh.id))
        .spawn(move || {
            let mut leaving = false;
            loop {
                match rx.read::<_, ReplAck>(&mut &reader, max_ack) {
                    Ok(ack) => {
                        if ack.leaving && !leaving {
                            leaving = true;
                            sh2.notify_surely(Input::FollowerLeaving(id, stream_no));
                        }
                        let effect = acks_of.on_ack(&sh2.log, ack.last);
                        if effect.committed {
                            match sh2.log.try_apply_guard() {
                                Some(_guard) => super::apply_available(&sh2),
                                // Someone is applying; the apply thread
                                // picks up what it leaves.
                                None => sh2.log.wake_applier(),
                            }
                        }
                        if effect.caught_up && !leaving {
                            sh2.notify_surely(Input::FollowerCaughtUp(id));
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

    let result = send_stream(sh, &stream, &mut tx, &mut feeder);
    match &result {
        Ok(()) => log::info!("replication stream to node {id} ended: the replica left"),
        Err(e) => log::info!("replication stream to node {id} ended: {e}"),
    }
    let _ = stream.shutdown(Shutdown::Both);
    if let Ok(h) = acks {
        let _ = h.join();
    }
    feeder.close(&sh.log);
    sh.notify_surely(Input::FollowerGone(id, stream_no));
}

fn send_stream(
    sh: &Shared,
    stream: &Stream,
    tx: &mut Sealer,
    feeder: &mut Feeder,
) -> Result<(), String> {
    let max_batch = sh.settings.max_batch_bytes;
    let mut buf = Vec::with_capacity(64 * 1024);
    let w = |buf: &mut Vec<u8>| -> Result<(), String> {
        std::io::Write::write_all(&mut &*stream, buf).map_err(|e| e.to_string())?;
        buf.clear();
        Ok(())
    };
    if let Some(frames) = feeder.snapshot_frames(&sh.store, max_batch) {
        for msg in frames {
            tx.frame_into(&mut buf, &msg);
            w(&mut buf)?;
            if sh.stopping() {
                return Err("shutting down".into());
            }
        }
    }
    loop {
        match feeder.poll(&sh.log, max_batch, IDLE_WAIT) {
            Poll::Send(msg) => {
                tx.frame_into(&mut buf, &msg);
                w(&mut buf)?;
            }
            // Nothing new: send an empty batch next. The replica's ack to it
            // lets an idle coordinator notice that a returning replica caught up.
            Poll::Idle => feeder.on_idle(),
            Poll::End(why) => return Err(why),
            Poll::Release(msg) => {
                tx.frame_into(&mut buf, &msg);
                return w(&mut buf);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Replica side
// ---------------------------------------------------------------------------

/// What the driver wants the follower thread to follow. The driver sets it
/// and never waits: the follower thread notices between frames, and a
/// blocked read ends because the current stream is shut down.
#[derive(Default)]
pub(super) struct FollowerCtl {
    /// Bumped by every change of target.
    seq: AtomicU64,
    target: Mutex<Option<(String, Epoch)>>,
    changed: Condvar,
    /// The current stream, so a change of target can cut it.
    conn: Mutex<Option<Stream>>,
    /// Signalled when a stream ends (`conn` is cleared).
    ended: Condvar,
}

impl FollowerCtl {
    /// Follow the coordinator at `addr` for `epoch`, or nobody (`None`).
    pub fn set(&self, target: Option<(String, Epoch)>) {
        {
            let mut t = self.target.lock();
            *t = target;
            self.seq.fetch_add(1, Ordering::AcqRel);
        }
        if let Some(s) = self.conn.lock().as_ref() {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.changed.notify_all();
    }

    /// Waits until no stream is open (the current one ended), or until
    /// `deadline`; returns whether none is.
    pub fn wait_stream_end(&self, deadline: std::time::Instant) -> bool {
        let mut c = self.conn.lock();
        while c.is_some() {
            if self.ended.wait_until(&mut c, deadline).timed_out() {
                return c.is_none();
            }
        }
        true
    }

    fn superseded(&self, seq: u64) -> bool {
        self.seq.load(Ordering::Acquire) != seq
    }
}

/// The follower thread: follows whichever coordinator the driver names, one
/// stream at a time, and tells the core when a stream ends by itself.
pub(super) fn follower_loop(sh: Arc<Shared>) {
    let ctl = &sh.follower;
    let mut done = 0;
    // The coordinator and epoch last announced at info: reconnecting to the
    // same one is worth a debug line only.
    let mut announced: Option<(String, Epoch)> = None;
    while !sh.stopping() {
        let (seq, target) = {
            let mut t = ctl.target.lock();
            while ctl.seq.load(Ordering::Acquire) == done && !sh.stopping() {
                ctl.changed.wait_for(&mut t, Duration::from_millis(200));
            }
            (ctl.seq.load(Ordering::Acquire), t.clone())
        };
        done = seq;
        let Some((addr, epoch)) = target else {
            continue;
        };
        if sh.leaving() {
            continue; // shutting down: no new stream
        }
        let mut refused = false;
        let end = match run_follower(&sh, &addr, epoch, seq, &mut announced, &mut refused) {
            Ok(()) => StreamEnd::Broken("stream closed".into()),
            Err(e) => e,
        };
        *ctl.conn.lock() = None;
        ctl.ended.notify_all();
        if sh.leaving() {
            if end == StreamEnd::Refused(crate::wire::Refusal::Released) {
                log::info!(
                    "node {}: out of the in-sync set; the coordinator released it",
                    sh.id
                );
            }
            continue;
        }
        if !ctl.superseded(seq) && !sh.stopping() {
            // Must reach the core: it follows again only when told.
            sh.notify_surely(Input::FollowLost {
                reason: format!("{addr}: {end}"),
                refused,
                expected: end.expected(),
            });
        }
    }
}

fn run_follower(
    sh: &Shared,
    addr: &str,
    epoch: Epoch,
    seq: u64,
    announced: &mut Option<(String, Epoch)>,
    refused: &mut bool,
) -> Result<(), StreamEnd> {
    let ctl = &sh.follower;
    let (mut follower, req) =
        Follower::start(&sh.log, sh.id, sh.incarnation, epoch, sh.storage.is_some())?;
    let last = req.last;
    let conn = sh
        .connect_peer(addr, ConnKind::Follow(req), Duration::from_secs(2))
        .map_err(|e| {
            *refused = e.kind() == std::io::ErrorKind::ConnectionRefused;
            format!("cannot connect: {e}")
        })?;
    let (stream, mut rx) = (conn.stream, conn.rx);
    *ctl.conn.lock() = Some(stream.try_clone().map_err(|e| e.to_string())?);
    if ctl.superseded(seq) {
        return Ok(());
    }
    let _acker = sh.set_acker(
        stream.try_clone().map_err(|e| e.to_string())?,
        conn.tx,
        epoch,
    );
    let _ = stream.set_read_timeout(None);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let target = Some((addr.to_string(), epoch));

    let max = sh.settings.max_repl_frame();
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
        if matches!(msg, ReplMsg::SnapshotBegin { .. }) {
            log::info!("node {}: receiving a snapshot", sh.id);
        }
        let step = follower.on_msg(&sh.log, &sh.store, msg)?;
        // The coordinator serves this stream: say so once per coordinator
        // and epoch, however often the stream reconnects.
        if *announced != target {
            log::info!(
                "node {}: following {addr} at epoch {epoch} from {last}",
                sh.id
            );
            *announced = target.clone();
        }
        run_step(sh, &mut follower, step, writes_wal, &mut wal_buf)?;
        if ctl.superseded(seq) {
            return Ok(());
        }
    }
}

/// Executes what the follower asked for, in order.
fn run_step(
    sh: &Shared,
    follower: &mut Follower,
    mut step: Step,
    writes_wal: bool,
    wal_buf: &mut Vec<u8>,
) -> Result<(), StreamEnd> {
    while let Some(pos) = step.persist_snapshot {
        if let Some(st) = &sh.storage {
            // The store is quiet: nothing after the snapshot is in the log yet.
            let _guard = sh.log.apply_guard();
            super::persist::persist_installed_snapshot(st, sh, pos).map_err(|e| {
                sh.log.fail_storage(e.to_string());
                format!("cannot store the snapshot: {e}")
            })?;
        }
        let meta = sh.store.meta();
        log::info!(
            "node {}: snapshot at {pos} installed ({} keys)",
            sh.id,
            meta.keys
        );
        step = follower.snapshot_persisted(&sh.log)?;
    }
    if step.persist_log && writes_wal {
        if let Some(st) = &sh.storage {
            super::persist::write_pending(sh, st, wal_buf)
                .map_err(|e| format!("storage failed: {e}"))?;
        }
    }
    // Otherwise the wal thread was woken; it acknowledges once the entries
    // are persisted, while this thread reads on: batches that arrive during
    // an fsync share the next one.
    let st = sh.log.state();
    let meta = sh.store.meta();
    sh.board.update(|b| {
        b.last = st.last;
        b.applied = meta.applied;
        b.digest = meta.digest;
    });
    if let Some(p) = step.ack {
        sh.send_ack(p);
    }
    if step.apply {
        // Apply here rather than wake the apply thread: one hand-off less
        // per batch.
        match sh.log.try_apply_guard() {
            Some(_guard) => super::apply_available(sh),
            None => sh.log.wake_applier(),
        }
    }
    Ok(())
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
    use crate::net::Stream;
    use crate::types::{Epoch, LogPos};
    use crate::wire::{ReplAck, Sealer};
    use std::time::{Duration, Instant};

    /// Where a replica sends its acknowledgements: the stream to the
    /// coordinator it follows. Shared by the follower thread and the
    /// write-ahead log thread, which acknowledges once entries are persisted.
    pub struct Acker {
        pub stream: Stream,
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
        pub(crate) fn set_acker(&self, stream: Stream, tx: Sealer, epoch: Epoch) -> AckerGuard<'_> {
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
                let leaving = self.leaving();
                Self::write_ack(&mut g, last, leaving);
            }
        }

        /// Says on the stream that this replica is leaving (with its last
        /// acknowledged position); its later acknowledgements say so too.
        /// Returns whether it follows a coordinator.
        pub(crate) fn announce_leaving(&self) -> bool {
            let mut g = self.acker.lock();
            let Some(a) = g.as_mut() else {
                return false;
            };
            let last = a
                .sent
                .map(|(p, _)| p)
                .or_else(|| self.log.ack_position())
                .unwrap_or_default();
            a.sent = Some((last, Instant::now()));
            Self::write_ack(&mut g, last, true);
            g.is_some()
        }

        fn write_ack(g: &mut Option<Acker>, last: LogPos, leaving: bool) {
            if let Some(a) = g.as_mut() {
                let mut buf = Vec::with_capacity(64);
                let ack = ReplAck {
                    epoch: a.epoch,
                    last,
                    leaving,
                };
                a.tx.frame_into(&mut buf, &ack);
                if std::io::Write::write_all(&mut &a.stream, &buf).is_err() {
                    *g = None; // the follower thread notices the broken stream
                }
            }
        }
    }
}
