//! Where the server's durable view lives, and the one way a decision is made
//! and recorded.
//!
//! A [`RegistryStore`] holds two records: the durable view and the
//! coordinator's last lease renewal, each with a revision. The
//! [`Arbiter`] runs every request through the sans-IO [`ServerCore`] and
//! commits what it decided as **one** store transaction comparing the
//! revisions the decision read; when another server changed either record
//! meanwhile, the transaction fails and the arbiter reads again and decides
//! again. The reply leaves only after the commit. See docs/ARCHITECTURE.md,
//! "The registry", for the safety argument.
//!
//! Stores: [`file::FileStore`] (one server, its state file; the default) and
//! `etcd::EtcdStore` (several servers over one etcd cluster). The
//! simulator has its own in-memory linearizable store with faults.

pub mod etcd;
pub mod file;

use crate::config::NodeSettings;
use crate::core::server::{DurableView, Renewal, ServerCore};
use crate::wire::{ErrorKind, ServerRequest, ServerResponse};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Instant;

/// The revisions of the two records as last read or written. A record that
/// does not exist has revision 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Revisions {
    pub view: i64,
    pub lease: i64,
}

/// What a store holds.
#[derive(Clone, Debug, Default)]
pub struct Records {
    pub view: Option<DurableView>,
    pub renewal: Option<Renewal>,
    pub revs: Revisions,
}

/// What the arbiter asks a store to write.
#[derive(Clone, Copy, Debug)]
pub struct Change<'a> {
    /// The records must still have these revisions...
    pub expect: Revisions,
    /// ...the lease record too (a grant must not race a renewal).
    pub compare_lease: bool,
    pub view: Option<&'a DurableView>,
    pub renewal: Option<&'a Renewal>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Committed {
    /// Written; the records' new revisions.
    Done(Revisions),
    /// A compared revision moved: nothing was written.
    Conflict,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached: nothing was written.
    #[error("the registry store is unreachable: {0}")]
    Unavailable(String),
    /// The request was sent and no answer came: it may have been written.
    #[error("the registry store did not answer: {0}")]
    Indeterminate(String),
    /// The store holds something this server cannot read.
    #[error("the registry store holds an unreadable record: {0}")]
    Corrupt(String),
}

pub trait RegistryStore: Send {
    /// Reads both records.
    fn read(&mut self) -> Result<Records, StoreError>;
    /// Writes `change` atomically if the compared revisions still hold.
    fn commit(&mut self, change: Change<'_>) -> Result<Committed, StoreError>;
    /// True when other servers share the store (the arbiter then refreshes
    /// its records in the background and before grants and rejoins).
    fn shared(&self) -> bool;
    /// One line for logs: which store this is.
    fn describe(&self) -> String;
}

/// The server core for a view read from the store (`None`: the store holds
/// none: a first start, or a lost state). The server binary and the
/// simulator build it the same way.
pub fn new_core(
    settings: &NodeSettings,
    recover_from_nodes: bool,
    view: Option<DurableView>,
    now: Instant,
) -> ServerCore {
    let lease = settings.lease_at_server();
    let core = match view {
        Some(view) => {
            if view.epoch > 0 {
                log::info!(
                    "reloaded view: epoch {}, coordinator {}, {} members, in sync {}",
                    view.epoch,
                    crate::types::fmt_coordinator(view.coordinator),
                    view.members.len(),
                    crate::types::fmt_ids(&view.isr)
                );
            }
            ServerCore::new(view, lease, now)
        }
        None => {
            // Running nodes rejoin before a brand-new node may found a cluster.
            let wait = settings.failure_timeout() + settings.server_update_interval() * 2;
            ServerCore::new(DurableView::default(), lease, now).with_bootstrap_wait(now + wait)
        }
    };
    let core = core.with_member_expiry(settings.member_expiry());
    if recover_from_nodes {
        core.with_recover_from_nodes(settings.failure_timeout())
    } else {
        core
    }
}

/// How often a server over a shared store reads what other servers decided
/// (the server's ticker and the simulator's). Grants and rejoins read the
/// store anyway and every decision compares revisions, so this only bounds
/// how stale a lookup may be; a few reads a second keep the store's load low.
pub fn refresh_interval(settings: &NodeSettings) -> std::time::Duration {
    settings
        .lease_at_server()
        .max(std::time::Duration::from_millis(200))
}

/// How often one decision is tried against a store whose records keep
/// changing under it before the arbiter gives up with `Unavailable`.
const MAX_ATTEMPTS: usize = 4;

/// Runs decisions through the core and records them in the store.
pub struct Arbiter {
    /// The core as of the last read or commit. Read-only requests (lookups,
    /// Sentinel) answer from it without waiting for a decision in progress.
    core: Arc<Mutex<ServerCore>>,
    /// Decisions, refreshes and ticks, one at a time.
    decide: Mutex<Decider>,
    /// Called after the core adopted a changed view (see
    /// [`Arbiter::on_view_change`]).
    on_change: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

struct Decider {
    store: Box<dyn RegistryStore>,
    revs: Revisions,
}

impl Arbiter {
    /// Reads the store and builds the core from it. `make_core` gets the
    /// view read (`None`: the store holds none) and builds the core.
    /// On failure the store is handed back, to try again.
    #[allow(clippy::type_complexity)]
    pub fn open(
        mut store: Box<dyn RegistryStore>,
        now: impl Fn() -> Instant,
        make_core: impl FnOnce(Option<DurableView>, Instant) -> ServerCore,
    ) -> Result<Arbiter, (StoreError, Box<dyn RegistryStore>)> {
        let records = match store.read() {
            Ok(r) => r,
            Err(e) => return Err((e, store)),
        };
        let mut core = make_core(records.view, now());
        if let Some(r) = &records.renewal {
            core.observe_renewal(now(), r);
        }
        Ok(Arbiter {
            core: Arc::new(Mutex::new(core)),
            decide: Mutex::new(Decider {
                store,
                revs: records.revs,
            }),
            on_change: std::sync::OnceLock::new(),
        })
    }

    /// Sets the hook called after every change of the view the core holds:
    /// a decision of this server that changed it (a grant, a registration,
    /// an in-sync change) or a change another server of a shared store made
    /// and this one read. It runs while decisions wait, so it must only
    /// signal (the Sentinel port's notifier: a `try_send`). Set once; later
    /// calls are ignored.
    pub fn on_view_change(&self, hook: Box<dyn Fn() + Send + Sync>) {
        let _ = self.on_change.set(hook);
    }

    fn view_changed(&self) {
        if let Some(hook) = self.on_change.get() {
            hook();
        }
    }

    /// The core, for read-only uses (Sentinel, status).
    pub fn core(&self) -> Arc<Mutex<ServerCore>> {
        self.core.clone()
    }

    pub fn describe(&self) -> String {
        self.decide.lock().store.describe()
    }

    pub fn shared(&self) -> bool {
        self.decide.lock().store.shared()
    }

    /// Answers one request. `now` is read again after every store read, so
    /// what the core observes is never dated before it happened.
    pub fn handle(&self, now: &dyn Fn() -> Instant, req: ServerRequest) -> ServerResponse {
        if matches!(
            req,
            ServerRequest::View | ServerRequest::WhoIsCoordinator | ServerRequest::Auth { .. }
        ) {
            return self.core.lock().handle(now(), req).0;
        }
        let mut d = self.decide.lock();
        let fresh = matches!(
            req,
            ServerRequest::RequestGrant { .. }
                | ServerRequest::Rejoin(_)
                | ServerRequest::Handoff { .. }
        );
        if fresh && d.store.shared() {
            if let Err(e) = self.refresh_locked(&mut d, now) {
                return unavailable(&e);
            }
        }
        for _ in 0..MAX_ATTEMPTS {
            let mut work = self.core.lock().clone();
            let (reply, changed) = work.handle(now(), req.clone());
            let renewal = work.poll_renewal();
            match self.commit_locked(&mut d, work, changed, renewal, &req) {
                Ok(true) => return reply,
                Ok(false) => {
                    // Another server decided first: read what it decided.
                    if let Err(e) = self.refresh_locked(&mut d, now) {
                        return unavailable(&e);
                    }
                }
                Err(e) => {
                    log::warn!("{e}");
                    if matches!(e, StoreError::Indeterminate(_)) {
                        // The next read tells what happened.
                        if self.refresh_locked(&mut d, now).is_ok()
                            && registered(&self.core.lock(), &req, &reply)
                        {
                            log::info!("the registration was recorded after all");
                            return reply;
                        }
                    }
                    return unavailable(&e);
                }
            }
        }
        ServerResponse::Error {
            kind: ErrorKind::Unavailable,
            message: "the registry kept changing under this server's decision; ask again".into(),
        }
    }

    /// Lets time-driven decisions happen (recovery's settle period) and, with
    /// a shared store, reads what other servers decided.
    pub fn tick(&self, now: &dyn Fn() -> Instant) -> Result<(), StoreError> {
        self.tick_with(now, true)
    }

    /// [`Arbiter::tick`] without reading the store first: time-driven
    /// decisions only. The runtime reads a shared store less often than it
    /// ticks (grants and rejoins read it anyway, and every decision compares
    /// revisions), which keeps the store's load to a few reads a second.
    pub fn tick_local(&self, now: &dyn Fn() -> Instant) -> Result<(), StoreError> {
        self.tick_with(now, false)
    }

    fn tick_with(&self, now: &dyn Fn() -> Instant, refresh: bool) -> Result<(), StoreError> {
        let mut d = self.decide.lock();
        if refresh && d.store.shared() {
            self.refresh_locked(&mut d, now)?;
        }
        for _ in 0..MAX_ATTEMPTS {
            let mut work = self.core.lock().clone();
            if !work.tick(now()) {
                *self.core.lock() = work;
                return Ok(());
            }
            let req = ServerRequest::View;
            if self.commit_locked(&mut d, work, true, None, &req)? {
                return Ok(());
            }
            self.refresh_locked(&mut d, now)?;
        }
        Ok(())
    }

    /// Writes what `work` decided; on success it becomes the core. `false`:
    /// a compared revision moved and nothing was written.
    fn commit_locked(
        &self,
        d: &mut Decider,
        work: ServerCore,
        changed: bool,
        renewal: Option<Renewal>,
        req: &ServerRequest,
    ) -> Result<bool, StoreError> {
        if !changed && (renewal.is_none() || !d.store.shared()) {
            *self.core.lock() = work;
            return Ok(true);
        }
        let change = Change {
            expect: d.revs,
            compare_lease: matches!(
                req,
                ServerRequest::RequestGrant { .. } | ServerRequest::Handoff { .. }
            ),
            view: changed.then(|| work.durable()),
            renewal: renewal.as_ref(),
        };
        match d.store.commit(change)? {
            Committed::Done(revs) => {
                d.revs = revs;
                *self.core.lock() = work;
                if changed {
                    self.view_changed();
                }
                Ok(true)
            }
            Committed::Conflict => Ok(false),
        }
    }

    fn refresh_locked(&self, d: &mut Decider, now: &dyn Fn() -> Instant) -> Result<(), StoreError> {
        let records = d.store.read()?;
        let seen = now();
        let mut core = self.core.lock();
        let mut changed = false;
        if records.revs.view != d.revs.view {
            if let Some(v) = records.view {
                core.observe_view(seen, v);
                changed = true;
            }
        }
        if records.revs.lease != d.revs.lease {
            if let Some(r) = &records.renewal {
                core.observe_renewal(seen, r);
            }
        }
        d.revs = records.revs;
        drop(core);
        if changed {
            self.view_changed();
        }
        Ok(())
    }
}

/// Whether the view read after a commit with an unknown outcome holds the
/// registration `req` decided as `reply`: the member record under the id it
/// handed out. Ids are handed out by compare-and-swap and the record names
/// the node's own addresses and incarnation, so only this registration's
/// transaction (atomic: with all its other effects) can have written it.
/// Telling the node then avoids its registering again under another id,
/// which would leave a member that never runs in the view. (A renewal cannot
/// be resolved this way: two pushes may carry identical records.)
fn registered(core: &ServerCore, req: &ServerRequest, reply: &ServerResponse) -> bool {
    let (
        ServerRequest::Register {
            incarnation,
            data_addr,
            beacon_addr,
            resp_addr,
            ..
        },
        ServerResponse::Registered { node_id, .. },
    ) = (req, reply)
    else {
        return false;
    };
    core.durable().members.get(node_id).is_some_and(|m| {
        m.incarnation == *incarnation
            && m.data_addr == *data_addr
            && m.beacon_addr == *beacon_addr
            && m.resp_addr == *resp_addr
    })
}

fn unavailable(e: &StoreError) -> ServerResponse {
    let message = match e {
        StoreError::Indeterminate(_) => {
            format!("{e}; the change may have been recorded, ask again")
        }
        _ => format!("{e}; nothing was changed, ask again"),
    };
    ServerResponse::Error {
        kind: ErrorKind::Unavailable,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{LogPos, NodeId};
    use std::time::Duration;

    #[derive(Default)]
    struct FakeState {
        records: Records,
        last_rev: i64,
        /// The next commit's answer is lost: `Some(true)` after it was
        /// applied, `Some(false)` before.
        lose_next: Option<bool>,
    }

    /// A shared store in memory whose answers the test can lose.
    struct FakeStore(Arc<Mutex<FakeState>>);

    impl RegistryStore for FakeStore {
        fn read(&mut self) -> Result<Records, StoreError> {
            Ok(self.0.lock().records.clone())
        }

        fn commit(&mut self, c: Change<'_>) -> Result<Committed, StoreError> {
            let mut st = self.0.lock();
            let lose = st.lose_next.take();
            if lose == Some(false) {
                return Err(StoreError::Indeterminate("lost on the way".into()));
            }
            let revs = st.records.revs;
            if c.expect.view != revs.view || (c.compare_lease && c.expect.lease != revs.lease) {
                return Ok(Committed::Conflict);
            }
            st.last_rev += 1;
            let rev = st.last_rev;
            if let Some(v) = c.view {
                st.records.view = Some(v.clone());
                st.records.revs.view = rev;
            }
            if let Some(r) = c.renewal {
                st.records.renewal = Some(r.clone());
                st.records.revs.lease = rev;
            }
            if lose == Some(true) {
                return Err(StoreError::Indeterminate("applied, answer lost".into()));
            }
            Ok(Committed::Done(st.records.revs))
        }

        fn shared(&self) -> bool {
            true
        }

        fn describe(&self) -> String {
            "fake".into()
        }
    }

    fn register(addr: &str) -> ServerRequest {
        ServerRequest::Register {
            node_id: None,
            incarnation: 1,
            data_addr: addr.into(),
            beacon_addr: addr.into(),
            last: LogPos::ZERO,
            resp_addr: None,
        }
    }

    fn registered_as(r: &ServerResponse) -> Option<NodeId> {
        match r {
            ServerResponse::Registered { node_id, .. } => Some(*node_id),
            _ => None,
        }
    }

    #[test]
    fn a_registration_whose_answer_was_lost_is_settled_by_the_next_read() {
        let state = Arc::new(Mutex::new(FakeState::default()));
        let t0 = Instant::now();
        let lease = Duration::from_millis(250);
        let arbiter = Arbiter::open(
            Box::new(FakeStore(state.clone())),
            || t0,
            |view, now| ServerCore::new(view.unwrap_or_default(), lease, now),
        )
        .unwrap_or_else(|(e, _)| panic!("{e}"));
        let now = || t0;
        assert_eq!(
            registered_as(&arbiter.handle(&now, register("a:1"))),
            Some(1)
        );

        // Applied, its answer lost: the read shows the member; the node is
        // told its id instead of registering again under another one.
        state.lock().lose_next = Some(true);
        assert_eq!(
            registered_as(&arbiter.handle(&now, register("b:1"))),
            Some(2)
        );

        // Lost before it was applied: unavailable; the retry gets the id.
        state.lock().lose_next = Some(false);
        let r = arbiter.handle(&now, register("c:1"));
        assert!(
            matches!(
                r,
                ServerResponse::Error {
                    kind: ErrorKind::Unavailable,
                    ..
                }
            ),
            "{r:?}"
        );
        assert_eq!(
            registered_as(&arbiter.handle(&now, register("c:1"))),
            Some(3)
        );
        let st = state.lock();
        let members: Vec<NodeId> = st
            .records
            .view
            .as_ref()
            .unwrap()
            .members
            .keys()
            .copied()
            .collect();
        assert_eq!(members, [1, 2, 3], "every member is a running node");
    }
}
