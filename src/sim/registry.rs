//! The simulated registry store: one linearizable store shared by every
//! simulated server, each reaching it through a [`StoreHandle`] that knows
//! the server's index, and the store faults the schedules inject.
//!
//! Revisions behave like etcd's `mod_revision`: one counter for the whole
//! store, bumped once per transaction that writes; a record's revision is
//! the counter value of the transaction that last wrote it; an absent
//! record has revision 0. A commit compares the view's revision and, when
//! asked, the lease record's, exactly as the etcd transaction does. With
//! `shared == false` the store behaves like the state file ([`FileStore`]):
//! renewals are not written and only the view's revision is compared.
//!
//! Faults (switched on and off by the simulator, from its seeded RNG):
//! * `unavailable`: every call fails with [`StoreError::Unavailable`];
//! * `cut`: the servers in the set cannot reach the store (the same error);
//! * `slow`: reads may time out, and a commit may be applied with its answer
//!   lost, lost before it was applied, or left in flight and applied later
//!   (each answered [`StoreError::Indeterminate`]).
//!
//! The store sees every committed view, so it checks what only it can: the
//! view's epoch never goes down, at most one coordinator is ever recorded
//! for an epoch (the recovery path may record the same coordinator at the
//! same epoch again), and a grant goes to a member of the in-sync set the
//! view it replaces recorded.
//!
//! [`FileStore`]: crate::registry::file::FileStore

use super::net::Rng;
use crate::core::server::{DurableView, Renewal};
use crate::registry::{Change, Committed, Records, RegistryStore, Revisions, StoreError};
use crate::types::{Epoch, NodeId};
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Which store faults are on.
#[derive(Clone, Debug, Default)]
pub struct StoreFaults {
    pub unavailable: bool,
    /// Servers (by index) cut from the store.
    pub cut: BTreeSet<usize>,
    pub slow: bool,
}

/// A commit the store took but has not applied yet (a slow store).
#[derive(Clone, Debug)]
pub struct InFlight {
    pub server: usize,
    expect: Revisions,
    compare_lease: bool,
    view: Option<DurableView>,
    renewal: Option<Renewal>,
}

/// What happened at the store, for the run's report.
#[derive(Clone, Debug, Default)]
pub struct StoreStats {
    pub commits: u64,
    pub conflicts: u64,
    /// Conflicts of a grant with a renewal committed after the grant's
    /// decision read the lease record.
    pub lease_conflicts: u64,
    pub refused: u64,
    pub answer_lost: u64,
    pub request_lost: u64,
    pub applied_late: u64,
}

pub struct ModelStore {
    shared: bool,
    counter: i64,
    view: Option<DurableView>,
    view_rev: i64,
    renewal: Option<Renewal>,
    lease_rev: i64,
    pub faults: StoreFaults,
    rng: Rng,
    /// Commits of a slow store still on their way; the simulator takes them
    /// ([`ModelStore::take_in_flight`]) and applies them later.
    in_flight: Vec<InFlight>,
    /// Every (epoch → coordinator) ever committed, kept across a store
    /// that is replaced by an empty one (a server that lost its state).
    grants: BTreeMap<Epoch, NodeId>,
    violation: Option<String>,
    pub stats: StoreStats,
}

impl ModelStore {
    /// An empty store; `shared`: several servers use it (etcd-like), or one
    /// (state-file-like). `seed` seeds the store's own fault draws.
    pub fn new(shared: bool, seed: u64) -> ModelStore {
        ModelStore {
            shared,
            counter: 0,
            view: None,
            view_rev: 0,
            renewal: None,
            lease_rev: 0,
            faults: StoreFaults::default(),
            rng: Rng::new(seed),
            in_flight: Vec::new(),
            grants: BTreeMap::new(),
            violation: None,
            stats: StoreStats::default(),
        }
    }

    /// An empty store replacing this one (its records are lost), which
    /// still remembers every grant committed so far, for the check.
    pub fn emptied(&self, seed: u64) -> ModelStore {
        let mut s = ModelStore::new(self.shared, seed);
        s.grants = self.grants.clone();
        s.stats = self.stats.clone();
        s
    }

    /// The view as committed.
    pub fn view(&self) -> Option<&DurableView> {
        self.view.as_ref()
    }

    /// The first rule a committed view broke, if any.
    pub fn violation(&self) -> Option<&str> {
        self.violation.as_deref()
    }

    /// Commits taken by a slow store and not applied yet.
    pub fn take_in_flight(&mut self) -> Vec<InFlight> {
        std::mem::take(&mut self.in_flight)
    }

    /// Applies a commit that was in flight (nobody hears the answer).
    pub fn apply_late(&mut self, c: &InFlight) {
        self.stats.applied_late += 1;
        let _ = self.apply(c);
    }

    fn reachable(&mut self, server: usize) -> Result<(), StoreError> {
        if self.faults.unavailable {
            self.stats.refused += 1;
            return Err(StoreError::Unavailable("the store is down".into()));
        }
        if self.faults.cut.contains(&server) {
            self.stats.refused += 1;
            return Err(StoreError::Unavailable(format!(
                "server {server} is cut from the store"
            )));
        }
        Ok(())
    }

    fn revs(&self) -> Revisions {
        Revisions {
            view: self.view_rev,
            lease: self.lease_rev,
        }
    }

    fn read(&mut self, server: usize) -> Result<Records, StoreError> {
        self.reachable(server)?;
        if self.faults.slow && self.rng.chance(0.15) {
            self.stats.refused += 1;
            return Err(StoreError::Unavailable("the read timed out".into()));
        }
        Ok(Records {
            view: self.view.clone(),
            renewal: self.renewal.clone(),
            revs: self.revs(),
        })
    }

    fn commit(&mut self, server: usize, change: Change<'_>) -> Result<Committed, StoreError> {
        self.reachable(server)?;
        let c = InFlight {
            server,
            expect: change.expect,
            compare_lease: change.compare_lease,
            view: change.view.cloned(),
            renewal: change.renewal.cloned(),
        };
        if self.faults.slow {
            let x = self.rng.f64();
            if x < 0.15 {
                self.stats.answer_lost += 1;
                let _ = self.apply(&c);
                return Err(StoreError::Indeterminate("applied, answer lost".into()));
            } else if x < 0.25 {
                self.stats.request_lost += 1;
                return Err(StoreError::Indeterminate("request lost".into()));
            } else if x < 0.40 {
                self.in_flight.push(c);
                return Err(StoreError::Indeterminate("still in flight".into()));
            }
        }
        Ok(self.apply(&c))
    }

    /// The transaction: compare, then write everything with one revision.
    fn apply(&mut self, c: &InFlight) -> Committed {
        let lease_moved = self.shared && c.compare_lease && c.expect.lease != self.lease_rev;
        if c.expect.view != self.view_rev || lease_moved {
            self.stats.conflicts += 1;
            if c.expect.view == self.view_rev {
                self.stats.lease_conflicts += 1;
            }
            return Committed::Conflict;
        }
        let renewal = c.renewal.as_ref().filter(|_| self.shared);
        if c.view.is_some() || renewal.is_some() {
            self.counter += 1;
            self.stats.commits += 1;
        }
        if let Some(v) = &c.view {
            self.check(c.server, v);
            self.view = Some(v.clone());
            self.view_rev = self.counter;
        }
        if let Some(r) = renewal {
            self.renewal = Some(r.clone());
            self.lease_rev = self.counter;
        }
        Committed::Done(self.revs())
    }

    /// The rules only the store can see: every committed view passes here.
    fn check(&mut self, server: usize, new: &DurableView) {
        let prev = self.view.as_ref();
        let prev_epoch = prev.map(|p| p.epoch).unwrap_or(0);
        let mut broke = None;
        if new.epoch < prev_epoch {
            broke = Some(format!(
                "server {server} committed epoch {} over epoch {prev_epoch}",
                new.epoch
            ));
        }
        if let Some(c) = new.coordinator {
            match self.grants.get(&new.epoch) {
                Some(&g) if g != c => {
                    broke = Some(format!(
                        "server {server} committed node {c} as coordinator of epoch {}, already granted to node {g}",
                        new.epoch
                    ));
                }
                Some(_) => {}
                None => {
                    // A grant (not the founding, not the end of a recovery)
                    // goes to a member of the in-sync set it replaces.
                    let granted =
                        prev.filter(|p| p.epoch > 0 && p.recovery.is_none() && new.epoch > p.epoch);
                    if let Some(p) = granted.filter(|p| !p.isr.contains(&c)) {
                        broke = Some(format!(
                            "server {server} granted epoch {} to node {c}, outside the in-sync set {:?} of epoch {}",
                            new.epoch, p.isr, p.epoch
                        ));
                    }
                    self.grants.insert(new.epoch, c);
                }
            }
        }
        if let Some(b) = broke {
            if self.violation.is_none() {
                self.violation = Some(b);
            }
        }
    }
}

/// One server's connection to the shared store.
pub struct StoreHandle {
    store: Arc<Mutex<ModelStore>>,
    server: usize,
}

impl StoreHandle {
    pub fn new(store: Arc<Mutex<ModelStore>>, server: usize) -> StoreHandle {
        StoreHandle { store, server }
    }
}

impl RegistryStore for StoreHandle {
    fn read(&mut self) -> Result<Records, StoreError> {
        self.store.lock().read(self.server)
    }

    fn commit(&mut self, change: Change<'_>) -> Result<Committed, StoreError> {
        self.store.lock().commit(self.server, change)
    }

    fn shared(&self) -> bool {
        self.store.lock().shared
    }

    fn describe(&self) -> String {
        format!("simulated store (server {})", self.server)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(epoch: Epoch, coordinator: Option<NodeId>, isr: &[NodeId]) -> DurableView {
        DurableView {
            epoch,
            coordinator,
            isr: isr.iter().copied().collect(),
            ..Default::default()
        }
    }

    fn change<'a>(
        expect: Revisions,
        compare_lease: bool,
        view: Option<&'a DurableView>,
        renewal: Option<&'a Renewal>,
    ) -> Change<'a> {
        Change {
            expect,
            compare_lease,
            view,
            renewal,
        }
    }

    #[test]
    fn revisions_are_one_counter_and_commits_compare_them() {
        let store = Arc::new(Mutex::new(ModelStore::new(true, 1)));
        let mut a = StoreHandle::new(store.clone(), 0);
        let mut b = StoreHandle::new(store.clone(), 1);
        let r = a.read().unwrap();
        assert_eq!(r.revs, Revisions::default());
        let v1 = view(1, Some(1), &[1]);
        let Committed::Done(revs) = a.commit(change(r.revs, false, Some(&v1), None)).unwrap()
        else {
            panic!()
        };
        assert_eq!(revs, Revisions { view: 1, lease: 0 });
        // b decided on what it read before: conflict.
        assert_eq!(
            b.commit(change(r.revs, false, Some(&v1), None)).unwrap(),
            Committed::Conflict
        );
        let ren = Renewal {
            epoch: 1,
            coordinator: 1,
            reports: vec![],
        };
        let Committed::Done(revs) = b.commit(change(revs, false, None, Some(&ren))).unwrap() else {
            panic!()
        };
        assert_eq!(revs, Revisions { view: 1, lease: 2 });
        // A grant comparing the old lease revision fails; a renewal (not
        // comparing it) passes.
        let old = Revisions { view: 1, lease: 0 };
        let v2 = view(2, Some(1), &[1]);
        assert_eq!(
            a.commit(change(old, true, Some(&v2), None)).unwrap(),
            Committed::Conflict
        );
        assert!(matches!(
            a.commit(change(old, false, None, Some(&ren))).unwrap(),
            Committed::Done(Revisions { view: 1, lease: 3 })
        ));
    }

    #[test]
    fn two_coordinators_for_one_epoch_and_grants_outside_the_isr_are_caught() {
        let store = Arc::new(Mutex::new(ModelStore::new(true, 1)));
        let mut a = StoreHandle::new(store.clone(), 0);
        let v1 = view(1, Some(1), &[1, 2]);
        a.commit(change(Revisions::default(), false, Some(&v1), None))
            .unwrap();
        let v1b = view(1, Some(2), &[1, 2]);
        a.commit(change(
            Revisions { view: 1, lease: 0 },
            false,
            Some(&v1b),
            None,
        ))
        .unwrap();
        assert!(store
            .lock()
            .violation()
            .unwrap()
            .contains("already granted"));

        let store = Arc::new(Mutex::new(ModelStore::new(true, 1)));
        let mut a = StoreHandle::new(store.clone(), 0);
        a.commit(change(Revisions::default(), false, Some(&v1), None))
            .unwrap();
        let v2 = view(2, Some(3), &[2, 3]);
        a.commit(change(
            Revisions { view: 1, lease: 0 },
            false,
            Some(&v2),
            None,
        ))
        .unwrap();
        assert!(store.lock().violation().unwrap().contains("outside"));
    }

    #[test]
    fn faults_refuse_or_leave_the_outcome_unknown() {
        let store = Arc::new(Mutex::new(ModelStore::new(true, 1)));
        let mut a = StoreHandle::new(store.clone(), 0);
        let mut b = StoreHandle::new(store.clone(), 1);
        store.lock().faults.cut.insert(0);
        assert!(matches!(a.read(), Err(StoreError::Unavailable(_))));
        assert!(b.read().is_ok());
        store.lock().faults = StoreFaults {
            unavailable: true,
            ..Default::default()
        };
        assert!(matches!(b.read(), Err(StoreError::Unavailable(_))));
        store.lock().faults = StoreFaults {
            slow: true,
            ..Default::default()
        };
        let v = view(1, Some(1), &[1]);
        let mut unknown = 0;
        for _ in 0..50 {
            let revs = store.lock().revs();
            if let Err(StoreError::Indeterminate(_)) = b.commit(change(revs, false, Some(&v), None))
            {
                unknown += 1;
            }
        }
        assert!(unknown > 0);
        let late = store.lock().take_in_flight();
        assert!(!late.is_empty(), "some commits stay in flight");
        // Applied late, they compare revisions that have moved.
        let before = store.lock().stats.conflicts;
        for c in &late {
            store.lock().apply_late(c);
        }
        assert!(store.lock().stats.conflicts > before);
    }
}
