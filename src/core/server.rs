//! The server's registry and arbiter logic (sans-IO).
//!
//! `handle(now, request)` returns the reply and whether the durable part of
//! the state changed (the runtime then persists it before replying, so a
//! grant or in-sync change the server acknowledged survives its restart).
//!
//! Rules kept here:
//! * epochs only go up, and only this core grants them;
//! * the coordinator's lease is renewed only by its own status pushes at its
//!   current epoch;
//! * the in-sync set is changed only by the coordinator of the current epoch,
//!   and always contains it.

use crate::types::{Epoch, LogPos, NodeId, Role};
use crate::wire::{ClusterView, MemberInfo, MemberReport, ServerRequest, ServerResponse};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// The part of the server's state that must survive a restart.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DurableView {
    pub epoch: Epoch,
    pub coordinator: Option<NodeId>,
    pub isr: BTreeSet<NodeId>,
    /// Grows with every change of `isr`, so a coordinator can tell a view
    /// older than its own last change from a newer one.
    #[serde(default)]
    pub isr_version: u64,
    pub members: BTreeMap<NodeId, MemberRecord>,
    pub next_id: NodeId,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub incarnation: u64,
    pub data_addr: String,
    pub beacon_addr: String,
    #[serde(default)]
    pub resp_addr: Option<String>,
}

#[derive(Clone, Debug, Default)]
struct Reported {
    role: Option<Role>,
    applied: LogPos,
    digest: u64,
    at: Option<Instant>,
}

pub struct ServerCore {
    view: DurableView,
    /// How long a status push keeps the coordinator's lease, as the server
    /// counts it (already lengthened by the drift bound).
    lease: Duration,
    lease_until: Option<Instant>,
    reports: HashMap<NodeId, Reported>,
}

impl ServerCore {
    /// A server starting from `view` (empty, or reloaded from disk). A
    /// reloaded coordinator is given a full lease from now: it may still be
    /// serving under the lease it had before the restart.
    pub fn new(view: DurableView, lease: Duration, now: Instant) -> Self {
        let lease_until = view.coordinator.map(|_| now + lease);
        ServerCore {
            view,
            lease,
            lease_until,
            reports: HashMap::new(),
        }
    }

    pub fn durable(&self) -> &DurableView {
        &self.view
    }

    /// Puts back a durable state the runtime could not store.
    pub fn restore(&mut self, view: DurableView) {
        self.view = view;
    }

    pub fn epoch(&self) -> Epoch {
        self.view.epoch
    }

    pub fn handle(&mut self, now: Instant, req: ServerRequest) -> (ServerResponse, bool) {
        match req {
            ServerRequest::Register {
                node_id,
                incarnation,
                data_addr,
                beacon_addr,
                last,
                resp_addr,
            } => self.register(
                now,
                node_id,
                incarnation,
                MemberRecord {
                    incarnation,
                    data_addr,
                    beacon_addr,
                    resp_addr,
                },
                last,
            ),
            ServerRequest::WhoIsCoordinator => (self.who_is_coordinator(), false),
            ServerRequest::View => (ServerResponse::View(self.view(now)), false),
            ServerRequest::Status {
                from,
                epoch,
                reports,
            } => (self.status(now, from, epoch, reports), false),
            ServerRequest::SetIsr { from, epoch, isr } => self.set_isr(now, from, epoch, isr),
            ServerRequest::RequestGrant {
                candidate,
                epoch,
                last,
            } => self.grant(now, candidate, epoch, last),
            // Checked by the connection before it reaches the core.
            ServerRequest::Auth { .. } => (ServerResponse::Authenticated, false),
        }
    }

    fn register(
        &mut self,
        now: Instant,
        node_id: Option<NodeId>,
        incarnation: u64,
        record: MemberRecord,
        last: LogPos,
    ) -> (ServerResponse, bool) {
        let mut restarted = false;
        let id = match node_id {
            Some(id) => {
                if let Some(rec) = self.view.members.get(&id) {
                    restarted = incarnation > rec.incarnation;
                    if incarnation < rec.incarnation {
                        return (
                            ServerResponse::Rejected {
                                epoch: self.view.epoch,
                                reason: format!(
                                    "node {id} incarnation {incarnation} is older than the registered {}",
                                    rec.incarnation
                                ),
                            },
                            false,
                        );
                    }
                }
                id
            }
            None => self.view.next_id.max(1),
        };
        self.view.next_id = self.view.next_id.max(id + 1);
        self.view.members.insert(id, record);
        let rep = self.reports.entry(id).or_default();
        rep.applied = last;
        rep.role = None;
        if restarted {
            // A new life of a known node: whatever it held before, it must
            // catch up before it counts as in sync again, and if it was the
            // coordinator, that coordinator is gone (its process died).
            if self.view.coordinator == Some(id) {
                self.view.coordinator = None;
                self.lease_until = None;
            }
            if self.view.isr.len() > 1 && self.view.isr.remove(&id) {
                self.view.isr_version += 1;
            }
        }
        // Epochs only go up, also past what nodes already saw (a server that
        // lost its state file must not grant an epoch a log already holds).
        let first = self.view.epoch == 0;
        if last.epoch > self.view.epoch {
            log::warn!(
                "node {id} holds entries of epoch {}, above this server's epoch {}: raising it",
                last.epoch,
                self.view.epoch
            );
            self.view.epoch = last.epoch;
        }
        if first {
            // The very first node: coordinator of the next epoch.
            self.view.epoch += 1;
            self.view.coordinator = Some(id);
            self.view.isr = BTreeSet::from([id]);
            self.view.isr_version += 1;
            self.lease_until = Some(now + self.lease);
        }
        (
            ServerResponse::Registered {
                node_id: id,
                view: self.view(now),
            },
            true,
        )
    }

    fn who_is_coordinator(&self) -> ServerResponse {
        match self
            .view
            .coordinator
            .and_then(|c| self.view.members.get(&c).map(|m| (c, m)))
        {
            Some((id, m)) => ServerResponse::Coordinator {
                epoch: self.view.epoch,
                node_id: id,
                addr: m.data_addr.clone(),
            },
            None => ServerResponse::NoCoordinator {
                epoch: self.view.epoch,
            },
        }
    }

    fn is_current_coordinator(&self, from: NodeId, epoch: Epoch) -> Result<(), ServerResponse> {
        if epoch != self.view.epoch || self.view.coordinator != Some(from) {
            return Err(ServerResponse::Rejected {
                epoch: self.view.epoch,
                reason: format!(
                    "node {from} is not the coordinator of epoch {epoch} (current epoch {}, coordinator {:?})",
                    self.view.epoch, self.view.coordinator
                ),
            });
        }
        Ok(())
    }

    fn status(
        &mut self,
        now: Instant,
        from: NodeId,
        epoch: Epoch,
        reports: Vec<MemberReport>,
    ) -> ServerResponse {
        if let Err(rej) = self.is_current_coordinator(from, epoch) {
            return rej;
        }
        self.lease_until = Some(now + self.lease);
        for r in reports {
            if self.view.members.contains_key(&r.node_id) {
                let rep = self.reports.entry(r.node_id).or_default();
                rep.role = Some(r.role);
                rep.applied = r.applied;
                rep.digest = r.digest;
                rep.at = Some(now);
            }
        }
        ServerResponse::Ok(self.view(now))
    }

    fn set_isr(
        &mut self,
        now: Instant,
        from: NodeId,
        epoch: Epoch,
        isr: Vec<NodeId>,
    ) -> (ServerResponse, bool) {
        if let Err(rej) = self.is_current_coordinator(from, epoch) {
            return (rej, false);
        }
        let isr: BTreeSet<NodeId> = isr.into_iter().collect();
        if !isr.contains(&from) {
            return (
                ServerResponse::Rejected {
                    epoch: self.view.epoch,
                    reason: "the in-sync set must contain the coordinator".into(),
                },
                false,
            );
        }
        if let Some(bad) = isr.iter().find(|id| !self.view.members.contains_key(id)) {
            return (
                ServerResponse::Rejected {
                    epoch: self.view.epoch,
                    reason: format!("node {bad} is not a member"),
                },
                false,
            );
        }
        let changed = isr != self.view.isr;
        if changed {
            self.view.isr = isr;
            self.view.isr_version += 1;
        }
        (ServerResponse::Ok(self.view(now)), changed)
    }

    /// Grants epoch `epoch + 1` to `candidate` if it is in sync, the current
    /// coordinator's lease has run out (or there is none), and nobody got
    /// that epoch yet. The old coordinator leaves the in-sync set: it must
    /// catch up from the new one before it counts again.
    fn grant(
        &mut self,
        now: Instant,
        candidate: NodeId,
        epoch: Epoch,
        last: LogPos,
    ) -> (ServerResponse, bool) {
        let reject = |reason: String| {
            (
                ServerResponse::Rejected {
                    epoch: self.view.epoch,
                    reason,
                },
                false,
            )
        };
        if epoch != self.view.epoch {
            return reject(format!(
                "epoch {epoch} is over: epoch {} is current",
                self.view.epoch
            ));
        }
        if !self.view.isr.contains(&candidate) {
            return reject(format!(
                "node {candidate} is not in the in-sync set {:?}",
                self.view.isr
            ));
        }
        if let Some(c) = self.view.coordinator {
            if let Some(until) = self.lease_until.filter(|&t| now < t) {
                return reject(format!(
                    "coordinator {c} still holds its lease for {} ms",
                    (until - now).as_millis()
                ));
            }
        }
        let old = self.view.coordinator;
        self.view.epoch += 1;
        self.view.coordinator = Some(candidate);
        if let Some(o) = old.filter(|&o| o != candidate) {
            self.view.isr.remove(&o);
            self.view.isr_version += 1;
        }
        self.lease_until = Some(now + self.lease);
        if let Some(rep) = self.reports.get_mut(&candidate) {
            rep.applied = last;
        }
        log::info!(
            "granted epoch {} to node {candidate} (previous coordinator {old:?}, in sync {:?})",
            self.view.epoch,
            self.view.isr
        );
        (ServerResponse::Ok(self.view(now)), true)
    }

    /// The cluster view as clients and nodes see it.
    pub fn view(&self, now: Instant) -> ClusterView {
        let members = self
            .view
            .members
            .iter()
            .map(|(&id, m)| {
                let rep = self.reports.get(&id).cloned().unwrap_or_default();
                let role = if self.view.coordinator == Some(id) {
                    Role::Coordinator
                } else {
                    match rep.role {
                        Some(Role::Coordinator) | None => Role::Joining,
                        Some(r) => r,
                    }
                };
                MemberInfo {
                    node_id: id,
                    incarnation: m.incarnation,
                    data_addr: m.data_addr.clone(),
                    beacon_addr: m.beacon_addr.clone(),
                    resp_addr: m.resp_addr.clone(),
                    role,
                    in_sync: self.view.isr.contains(&id),
                    log_position: rep.applied,
                    digest: rep.digest,
                    last_status_ms: rep
                        .at
                        .map(|t| now.saturating_duration_since(t).as_millis() as u64),
                }
            })
            .collect();
        ClusterView {
            epoch: self.view.epoch,
            coordinator: self.view.coordinator,
            isr: self.view.isr.iter().copied().collect(),
            isr_version: self.view.isr_version,
            members,
            auth: Default::default(),
        }
    }

    /// Whether the current coordinator's lease has run out at `now`.
    pub fn lease_expired(&self, now: Instant) -> bool {
        self.lease_until.is_none_or(|t| now >= t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(core: &mut ServerCore, now: Instant, id: Option<NodeId>, inc: u64) -> ServerResponse {
        core.handle(
            now,
            ServerRequest::Register {
                node_id: id,
                incarnation: inc,
                data_addr: format!("127.0.0.1:{}", 1000 + inc),
                beacon_addr: "127.0.0.1:1".into(),
                last: LogPos::ZERO,
                resp_addr: None,
            },
        )
        .0
    }

    fn core() -> (ServerCore, Instant) {
        let now = Instant::now();
        (
            ServerCore::new(DurableView::default(), Duration::from_millis(400), now),
            now,
        )
    }

    #[test]
    fn first_node_becomes_coordinator_of_epoch_1() {
        let (mut c, now) = core();
        let ServerResponse::Registered { node_id, view } = reg(&mut c, now, None, 1) else {
            panic!()
        };
        assert_eq!(node_id, 1);
        assert_eq!(view.epoch, 1);
        assert_eq!(view.coordinator, Some(1));
        assert_eq!(view.isr, vec![1]);
        let ServerResponse::Registered { node_id, view } = reg(&mut c, now, None, 1) else {
            panic!()
        };
        assert_eq!(node_id, 2);
        assert_eq!(view.coordinator, Some(1));
        assert_eq!(view.isr, vec![1]);
        assert!(!view.member(2).unwrap().in_sync);
    }

    #[test]
    fn only_the_current_coordinator_changes_isr_and_renews_lease() {
        let (mut c, now) = core();
        reg(&mut c, now, None, 1);
        reg(&mut c, now, None, 1);
        let (r, changed) = c.handle(
            now,
            ServerRequest::SetIsr {
                from: 2,
                epoch: 1,
                isr: vec![1, 2],
            },
        );
        assert!(matches!(r, ServerResponse::Rejected { .. }));
        assert!(!changed);
        let (r, _) = c.handle(
            now,
            ServerRequest::SetIsr {
                from: 1,
                epoch: 0,
                isr: vec![1, 2],
            },
        );
        assert!(matches!(r, ServerResponse::Rejected { .. }));
        let (r, _) = c.handle(
            now,
            ServerRequest::SetIsr {
                from: 1,
                epoch: 1,
                isr: vec![2],
            },
        );
        assert!(
            matches!(r, ServerResponse::Rejected { .. }),
            "must contain coordinator"
        );
        let (r, changed) = c.handle(
            now,
            ServerRequest::SetIsr {
                from: 1,
                epoch: 1,
                isr: vec![1, 2],
            },
        );
        assert!(matches!(r, ServerResponse::Ok(ref v) if v.isr == vec![1, 2]));
        assert!(changed);

        let later = now + Duration::from_secs(1);
        assert!(c.lease_expired(later));
        let (r, _) = c.handle(
            later,
            ServerRequest::Status {
                from: 2,
                epoch: 1,
                reports: vec![],
            },
        );
        assert!(matches!(r, ServerResponse::Rejected { .. }));
        assert!(c.lease_expired(later));
        c.handle(
            later,
            ServerRequest::Status {
                from: 1,
                epoch: 1,
                reports: vec![],
            },
        );
        assert!(!c.lease_expired(later));
    }

    fn grant(c: &mut ServerCore, now: Instant, candidate: NodeId, epoch: Epoch) -> ServerResponse {
        c.handle(
            now,
            ServerRequest::RequestGrant {
                candidate,
                epoch,
                last: LogPos::ZERO,
            },
        )
        .0
    }

    fn three_in_sync() -> (ServerCore, Instant) {
        let (mut c, now) = core();
        for _ in 0..3 {
            reg(&mut c, now, None, 1);
        }
        c.handle(
            now,
            ServerRequest::SetIsr {
                from: 1,
                epoch: 1,
                isr: vec![1, 2, 3],
            },
        );
        (c, now)
    }

    #[test]
    fn grant_waits_for_the_lease_and_goes_to_one_candidate_per_epoch() {
        let (mut c, now) = three_in_sync();
        // Lease still valid: refused.
        assert!(matches!(
            grant(&mut c, now, 2, 1),
            ServerResponse::Rejected { .. }
        ));
        let later = now + Duration::from_millis(500);
        let ServerResponse::Ok(v) = grant(&mut c, later, 2, 1) else {
            panic!("grant after the lease ran out")
        };
        assert_eq!((v.epoch, v.coordinator), (2, Some(2)));
        assert_eq!(
            v.isr,
            vec![2, 3],
            "the old coordinator leaves the in-sync set"
        );
        // A second candidate for the same epoch is refused, and so is any
        // candidate while the new lease runs.
        assert!(matches!(
            grant(&mut c, later, 3, 1),
            ServerResponse::Rejected { epoch: 2, .. }
        ));
        assert!(matches!(
            grant(&mut c, later, 3, 2),
            ServerResponse::Rejected { .. }
        ));
        // The old coordinator can no longer renew a lease or change the set.
        let (r, _) = c.handle(
            later,
            ServerRequest::Status {
                from: 1,
                epoch: 1,
                reports: vec![],
            },
        );
        assert!(matches!(r, ServerResponse::Rejected { epoch: 2, .. }));
    }

    #[test]
    fn only_in_sync_members_can_be_granted() {
        let (mut c, now) = core();
        reg(&mut c, now, None, 1);
        reg(&mut c, now, None, 1); // node 2, not in sync
        let later = now + Duration::from_secs(1);
        assert!(matches!(
            grant(&mut c, later, 2, 1),
            ServerResponse::Rejected { .. }
        ));
        assert!(matches!(
            grant(&mut c, later, 9, 1),
            ServerResponse::Rejected { .. }
        ));
        assert_eq!(c.epoch(), 1);
    }

    #[test]
    fn restarted_coordinator_loses_its_role_and_restarted_replica_its_sync() {
        let (mut c, now) = three_in_sync();
        let ServerResponse::Registered { view, .. } = reg(&mut c, now, Some(3), 2) else {
            panic!()
        };
        assert_eq!(view.isr, vec![1, 2]);
        let ServerResponse::Registered { view, .. } = reg(&mut c, now, Some(1), 2) else {
            panic!()
        };
        assert_eq!(
            view.coordinator, None,
            "a restarted coordinator is not coordinator"
        );
        assert_eq!(view.isr, vec![2]);
        assert_eq!(view.epoch, 1);
        // Nobody holds a lease now: the in-sync node can be granted at once.
        let ServerResponse::Ok(v) = grant(&mut c, now, 2, 1) else {
            panic!()
        };
        assert_eq!((v.epoch, v.coordinator), (2, Some(2)));
    }

    #[test]
    fn reloaded_server_keeps_epoch_and_gives_the_coordinator_a_full_lease() {
        let (mut c, now) = three_in_sync();
        let later = now + Duration::from_secs(1);
        grant(&mut c, later, 2, 1);
        let saved = c.durable().clone();
        let restart = later + Duration::from_secs(5);
        let mut c2 = ServerCore::new(saved, Duration::from_millis(400), restart);
        assert_eq!(c2.epoch(), 2);
        assert!(!c2.lease_expired(restart));
        assert!(matches!(
            grant(&mut c2, restart, 3, 2),
            ServerResponse::Rejected { .. }
        ));
    }

    #[test]
    fn restarted_node_keeps_its_id_and_old_incarnations_are_refused() {
        let (mut c, now) = core();
        reg(&mut c, now, None, 1);
        reg(&mut c, now, None, 1);
        let ServerResponse::Registered { node_id, view } = reg(&mut c, now, Some(2), 2) else {
            panic!()
        };
        assert_eq!(node_id, 2);
        assert_eq!(view.members.len(), 2);
        assert!(matches!(
            reg(&mut c, now, Some(2), 1),
            ServerResponse::Rejected { .. }
        ));
    }
}
