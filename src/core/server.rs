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
//!   and always contains it;
//! * a server whose view cannot be trusted (it started without one and
//!   running nodes rejoin, or a node reports a newer epoch) *recovers*: it
//!   grants nothing until the nodes' reports prove a choice safe, or an
//!   operator makes it (`recover_from_nodes`). See docs/ARCHITECTURE.md,
//!   "A server that lost its state".
//!
//! With several servers over one store (etcd), the runtime feeds what other
//! servers decided through [`ServerCore::observe_view`] and
//! [`ServerCore::observe_renewal`], and commits this core's decisions (the
//! durable view, and [`ServerCore::poll_renewal`]) as transactions on the
//! revisions it read.

use crate::types::{fmt_coordinator, fmt_ids, Epoch, LogPos, NodeId, Role};
use crate::wire::{
    ClusterView, MemberInfo, MemberReport, RejoinReport, ServerRequest, ServerResponse,
};
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
    /// Set while the server rebuilds its view from the nodes' reports.
    #[serde(default)]
    pub recovery: Option<Recovery>,
    /// Members an operator removed: refused if they come back.
    #[serde(default)]
    pub removed: BTreeSet<NodeId>,
}

/// The nodes' reports collected while recovering.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Recovery {
    pub reports: BTreeMap<NodeId, NodeReport>,
    /// Members the reporting nodes knew of that have not reported yet: they
    /// join the view when recovery ends. Until then they are not listed, so
    /// they see a view without themselves and rejoin.
    #[serde(default)]
    pub known: BTreeMap<NodeId, MemberRecord>,
}

/// What one node reported while the server recovers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    pub incarnation: u64,
    /// The highest epoch the node saw or holds entries of.
    pub epoch: Epoch,
    pub last: LogPos,
    /// The last epoch it coordinated, with that epoch's in-sync set (id and
    /// the incarnation the coordinator knew).
    pub coordinated: Option<(Epoch, Vec<(NodeId, u64)>)>,
}

/// An accepted status push: the coordinator's lease was renewed. With a
/// shared store the runtime records it before the push is answered.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Renewal {
    pub epoch: Epoch,
    pub coordinator: NodeId,
    pub reports: Vec<MemberReport>,
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

#[derive(Clone)]
pub struct ServerCore {
    view: DurableView,
    /// How long a status push keeps the coordinator's lease, as the server
    /// counts it (already lengthened by the drift bound).
    lease: Duration,
    lease_until: Option<Instant>,
    reports: HashMap<NodeId, Reported>,
    /// A server that started without a view lets a brand-new node found a
    /// cluster only after this instant, so running nodes can rejoin first.
    bootstrap_after: Option<Instant>,
    /// Operator's choice: when recovery cannot prove a coordinator safe,
    /// appoint the most complete reporting node after this long.
    recover_from_nodes: Option<Duration>,
    /// When the current recovery began (by this server's clock).
    recovery_since: Option<Instant>,
    /// Why recovery waits, for logs and views.
    recovery_note: Option<String>,
    renewal: Option<Renewal>,
    /// Members not heard of for this long leave the view (see
    /// [`ServerCore::tick`]); `None`: never for silence.
    member_expiry: Option<Duration>,
    /// When this core started: the "last heard" of a member nobody
    /// reported since.
    started: Instant,
}

impl ServerCore {
    /// A server starting from `view` (empty, or reloaded from disk). A
    /// reloaded coordinator is given a full lease from now: it may still be
    /// serving under the lease it had before the restart.
    pub fn new(view: DurableView, lease: Duration, now: Instant) -> Self {
        let lease_until = view.coordinator.map(|_| now + lease);
        let recovery_since = view.recovery.as_ref().map(|_| now);
        ServerCore {
            view,
            lease,
            lease_until,
            reports: HashMap::new(),
            bootstrap_after: None,
            recover_from_nodes: None,
            recovery_since,
            recovery_note: None,
            renewal: None,
            member_expiry: None,
            started: now,
        }
    }

    /// Members nobody reported for `expiry` leave the view (`None`: never).
    pub fn with_member_expiry(mut self, expiry: Option<Duration>) -> Self {
        self.member_expiry = expiry;
        self
    }

    /// For a server that started without any view: no brand-new node may
    /// found a cluster before `after` (running nodes rejoin first).
    pub fn with_bootstrap_wait(mut self, after: Instant) -> Self {
        self.bootstrap_after = Some(after);
        self
    }

    /// The operator's `--recover-from-nodes`: when recovery cannot prove a
    /// choice safe, appoint the most complete reporting node once reports
    /// have been collected for `settle`.
    pub fn with_recover_from_nodes(mut self, settle: Duration) -> Self {
        self.recover_from_nodes = Some(settle);
        self
    }

    /// Whether the server is rebuilding its view from the nodes.
    pub fn recovering(&self) -> bool {
        self.view.recovery.is_some()
    }

    /// The lease renewal decided by the last `handle`, if any. With a shared
    /// store the runtime must record it before it sends the reply.
    pub fn poll_renewal(&mut self) -> Option<Renewal> {
        self.renewal.take()
    }

    /// Another server (or the store's first read) changed the durable view.
    /// A new coordinator is given a full lease from now: it was granted one
    /// elsewhere, at a moment this server cannot know.
    pub fn observe_view(&mut self, now: Instant, view: DurableView) {
        if (view.epoch, view.coordinator) != (self.view.epoch, self.view.coordinator) {
            self.lease_until = view.coordinator.map(|_| now + self.lease);
        }
        if view.recovery.is_some() && self.recovery_since.is_none() {
            self.recovery_since = Some(now);
        }
        if view.recovery.is_none() {
            self.recovery_since = None;
            self.recovery_note = None;
        }
        self.view = view;
    }

    /// This server observed a lease renewal it had not seen (recorded by
    /// another server, at a moment it cannot know): the lease runs a full
    /// term from now. Carries the member reports of that push.
    pub fn observe_renewal(&mut self, now: Instant, renewal: &Renewal) {
        if renewal.epoch != self.view.epoch || Some(renewal.coordinator) != self.view.coordinator {
            return;
        }
        let until = now + self.lease;
        if self.lease_until.is_none_or(|t| until > t) {
            self.lease_until = Some(until);
        }
        self.take_reports(now, &renewal.reports);
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
        self.renewal = None;
        let (reply, changed) = self.handle_request(now, req);
        if changed {
            self.assert_coordinator_in_isr();
        }
        (reply, changed)
    }

    /// Time passed: a recovery may be decided by it (the operator's settle
    /// period), and members gone for good leave the view
    /// ([`ServerCore::reap`]). Returns whether the durable view changed. The
    /// runtime calls it every heartbeat.
    pub fn tick(&mut self, now: Instant) -> bool {
        let changed = self.try_recover(now, None) | self.reap(now);
        if changed {
            self.assert_coordinator_in_isr();
        }
        changed
    }

    /// Kept by every change this core makes (a grant goes only to an in-sync
    /// member, `SetIsr` must contain the coordinator, recovery and the first
    /// node put the coordinator in): the coordinator a view records is in the
    /// in-sync set it records. Checked whenever this core changed the view
    /// the runtime is about to commit.
    fn assert_coordinator_in_isr(&self) {
        if let Some(c) = self.view.coordinator {
            assert!(
                self.view.isr.contains(&c),
                "epoch {}: coordinator {c} is not in the in-sync set {:?} the view records",
                self.view.epoch,
                self.view.isr
            );
        }
    }

    fn handle_request(&mut self, now: Instant, req: ServerRequest) -> (ServerResponse, bool) {
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
            ServerRequest::Rejoin(report) => self.rejoin(now, *report),
            ServerRequest::RemoveMember { node_id } => self.remove_member(now, node_id),
            ServerRequest::Handoff { from, epoch, to } => self.handoff(now, from, epoch, to),
        }
    }

    /// What a removed member is told when it comes back.
    fn removed_refusal(&self, id: NodeId) -> ServerResponse {
        ServerResponse::Rejected {
            epoch: self.view.epoch,
            reason: format!(
                "node {id} was removed from the cluster by an operator (dkv-client member \
                 remove); to join again, start it with an empty data directory, as a new member"
            ),
        }
    }

    /// An operator removes member `id`: not the coordinator, not in the
    /// recorded in-sync set (a dead member leaves it once the coordinator
    /// notices, within failure-timeout), so no grant or acknowledged write
    /// depends on it. It stops counting toward `majority-threshold` at once
    /// (elections count the view's members), and its id is refused from then
    /// on.
    fn remove_member(&mut self, now: Instant, id: NodeId) -> (ServerResponse, bool) {
        let refuse = |message: String| {
            (
                ServerResponse::Error {
                    kind: crate::wire::ErrorKind::BadRequest,
                    message,
                },
                false,
            )
        };
        if self.recovering() {
            return (self.recovering_refusal(), false);
        }
        if !self.view.members.contains_key(&id) {
            return refuse(format!(
                "node {id} is not a member (members: {})",
                fmt_ids(self.view.members.keys())
            ));
        }
        if self.view.coordinator == Some(id) {
            return refuse(format!(
                "node {id} is the coordinator: stop it (another member takes over) or move \
                 the role first, then remove it"
            ));
        }
        if self.view.isr.contains(&id) {
            return refuse(format!(
                "node {id} is in the in-sync set {}: stop it first; the coordinator takes it \
                 out of the in-sync set within failure-timeout, then it can be removed",
                fmt_ids(&self.view.isr)
            ));
        }
        self.view.members.remove(&id);
        self.reports.remove(&id);
        self.view.removed.insert(id);
        log::info!("removed node {id} from the members at an operator's request");
        (ServerResponse::Ok(self.view(now)), true)
    }

    /// `NotRegistered` when this server does not know `from`, knows an
    /// older epoch than the sender, or recovers and has no report from it
    /// yet: the sender must rejoin and report.
    fn unknown(&self, from: NodeId, epoch: Epoch) -> Option<ServerResponse> {
        let unreported = self
            .view
            .recovery
            .as_ref()
            .is_some_and(|r| !r.reports.contains_key(&from));
        (!self.view.members.contains_key(&from) || epoch > self.view.epoch || unreported).then_some(
            ServerResponse::NotRegistered {
                epoch: self.view.epoch,
            },
        )
    }

    fn recovering_refusal(&self) -> ServerResponse {
        ServerResponse::Rejected {
            epoch: self.view.epoch,
            reason: format!(
                "the server is rebuilding its view from the nodes' reports: {}",
                self.recovery_note
                    .as_deref()
                    .unwrap_or("waiting for reports")
            ),
        }
    }

    /// A running node the server does not know (or knows less than) reports.
    fn rejoin(&mut self, now: Instant, r: RejoinReport) -> (ServerResponse, bool) {
        let id = r.node_id;
        if self.view.removed.contains(&id) {
            return (self.removed_refusal(id), false);
        }
        if let Some(rec) = self.view.members.get(&id) {
            if r.incarnation < rec.incarnation {
                return (
                    ServerResponse::Rejected {
                        epoch: self.view.epoch,
                        reason: format!(
                            "node {id} incarnation {} is older than the registered {}",
                            r.incarnation, rec.incarnation
                        ),
                    },
                    false,
                );
            }
            let known = r.incarnation == rec.incarnation;
            let seen = r.epoch.max(r.last.epoch);
            if known && seen <= self.view.epoch && !self.recovering() {
                // Nothing this server does not know already (a reply that
                // crossed a change): answer with the view.
                return (
                    ServerResponse::Registered {
                        node_id: id,
                        view: self.view(now),
                    },
                    false,
                );
            }
        }
        let was_empty = self.view.members.is_empty() && self.view.epoch == 0;
        let seen = r.epoch.max(r.last.epoch);
        if !self.recovering() && (was_empty || seen > self.view.epoch) {
            self.start_recovery(now, &format!("node {id} rejoined with epoch {seen}"));
        }
        // Remember the members the node knew of (they are listed once they
        // report, or when recovery ends), then list the node itself.
        if let Some(rec) = self.view.recovery.as_mut() {
            for m in &r.view.members {
                if !self.view.members.contains_key(&m.node_id) {
                    rec.known.entry(m.node_id).or_insert_with(|| MemberRecord {
                        incarnation: m.incarnation,
                        data_addr: m.data_addr.clone(),
                        beacon_addr: m.beacon_addr.clone(),
                        resp_addr: m.resp_addr.clone(),
                    });
                }
            }
            rec.known.remove(&id);
        }
        self.view.isr_version = self.view.isr_version.max(r.view.isr_version);
        self.view.members.insert(
            id,
            MemberRecord {
                incarnation: r.incarnation,
                data_addr: r.data_addr.clone(),
                beacon_addr: r.beacon_addr.clone(),
                resp_addr: r.resp_addr.clone(),
            },
        );
        // Ids of members not yet reported are taken too: a brand-new node
        // registering meanwhile must not get one of them.
        let known = self.view.recovery.iter().flat_map(|r| r.known.keys());
        let max_id = self
            .view
            .members
            .keys()
            .chain(known)
            .copied()
            .max()
            .unwrap_or(0);
        self.view.next_id = self.view.next_id.max(max_id + 1);
        let rep = self.reports.entry(id).or_default();
        rep.applied = r.last;
        rep.at = Some(now);
        let coordinated = r.coordinated.as_ref().map(|(e, isr)| {
            let inc = |m: NodeId| r.view.member(m).map(|x| x.incarnation).unwrap_or(0);
            (*e, isr.iter().map(|&m| (m, inc(m))).collect::<Vec<_>>())
        });
        self.record_report(id, r.incarnation, seen, r.last, coordinated);
        let holder = (r.holds_lease && r.role == Role::Coordinator).then_some(id);
        self.try_recover(now, holder);
        (
            ServerResponse::Registered {
                node_id: id,
                view: self.view(now),
            },
            true,
        )
    }

    fn start_recovery(&mut self, now: Instant, why: &str) {
        log::warn!(
            "the server's view cannot be trusted ({why}): rebuilding it from the nodes' reports; nothing is granted until then"
        );
        // Every member must report again: until it does it is not listed,
        // so it sees a view without itself and rejoins.
        let known = std::mem::take(&mut self.view.members);
        if let Some(&max_id) = known.keys().max() {
            self.view.next_id = self.view.next_id.max(max_id + 1);
        }
        self.view.recovery = Some(Recovery {
            reports: BTreeMap::new(),
            known,
        });
        self.view.coordinator = None;
        self.lease_until = None;
        if !self.view.isr.is_empty() {
            self.view.isr.clear();
            self.view.isr_version += 1;
        }
        self.recovery_since = Some(now);
        self.recovery_note = None;
    }

    fn record_report(
        &mut self,
        id: NodeId,
        incarnation: u64,
        epoch: Epoch,
        last: LogPos,
        coordinated: Option<(Epoch, Vec<(NodeId, u64)>)>,
    ) {
        if epoch > self.view.epoch {
            self.view.epoch = epoch;
        }
        let Some(rec) = self.view.recovery.as_mut() else {
            return;
        };
        let report = rec.reports.entry(id).or_insert(NodeReport {
            incarnation,
            epoch,
            last,
            coordinated: None,
        });
        if incarnation > report.incarnation {
            *report = NodeReport {
                incarnation,
                epoch,
                last,
                coordinated: None,
            };
        }
        report.epoch = report.epoch.max(epoch);
        report.last = report.last.max(last);
        // A node may step down between two reports: keep what it coordinated.
        if coordinated.is_some() {
            report.coordinated = coordinated;
        }
    }

    /// Leaves recovery when the reports prove a coordinator safe (see
    /// docs/ARCHITECTURE.md), or when the operator's settle period is over.
    /// `lease_holder`: a node that reported just now, as coordinator, that
    /// its lease is still valid. Returns whether the view changed.
    fn try_recover(&mut self, now: Instant, lease_holder: Option<NodeId>) -> bool {
        let Some(rec) = self.view.recovery.clone() else {
            return false;
        };
        let top = rec
            .reports
            .values()
            .map(|r| r.epoch.max(r.last.epoch))
            .max()
            .unwrap_or(0)
            .max(self.view.epoch);
        let claimant = rec
            .reports
            .iter()
            .find(|(_, r)| r.coordinated.as_ref().is_some_and(|(e, _)| *e == top));
        let mut note;
        if let Some((&c, report)) = claimant {
            let (_, isr) = report.coordinated.clone().expect("claimant coordinated");
            if lease_holder == Some(c) {
                // Still serving under its lease: no later epoch can exist.
                let keep: BTreeSet<NodeId> = isr.iter().map(|&(m, _)| m).collect();
                self.finish_recovery(
                    now,
                    c,
                    top,
                    keep,
                    "the last coordinator still holds its lease",
                );
                return true;
            }
            let missing: Vec<NodeId> = isr
                .iter()
                .map(|&(m, _)| m)
                .filter(|&m| m != c && !rec.reports.contains_key(&m))
                .collect();
            if missing.is_empty() {
                // Members that restarted since lost their in-sync place.
                let keep: BTreeSet<NodeId> = isr
                    .iter()
                    .filter(|&&(m, inc)| {
                        m == c || rec.reports.get(&m).is_some_and(|r| r.incarnation == inc)
                    })
                    .map(|&(m, _)| m)
                    .collect();
                self.finish_recovery(
                    now,
                    c,
                    top + 1,
                    keep,
                    "the last coordinator and every member of its in-sync set reported",
                );
                return true;
            }
            note = format!(
                "node {c}, coordinator of epoch {top}, reported; waiting for the rest of its in-sync set ({}) to report",
                fmt_ids(&missing)
            );
        } else {
            note = format!(
                "no reporting node coordinated epoch {top} (the last coordinator is gone or has not reported); reports from {}",
                if rec.reports.is_empty() {
                    "no node yet".to_string()
                } else {
                    fmt_ids(&rec.reports.keys().copied().collect::<Vec<_>>())
                }
            );
        }
        let since = self.recovery_since.unwrap_or(now);
        match self.recover_from_nodes {
            Some(settle) if now.saturating_duration_since(since) >= settle => {
                if let Some((&best, r)) = rec.reports.iter().max_by_key(|(&id, r)| (r.last, id)) {
                    log::warn!(
                        "--recover-from-nodes: appointing node {best} (log at {}), the most complete of the reporting nodes {}; writes acknowledged only by nodes that did not report may be lost",
                        r.last,
                        fmt_ids(&rec.reports.keys().copied().collect::<Vec<_>>())
                    );
                    self.finish_recovery(
                        now,
                        best,
                        top + 1,
                        BTreeSet::from([best]),
                        "appointed by the operator (--recover-from-nodes)",
                    );
                    return true;
                }
            }
            Some(_) => note.push_str("; --recover-from-nodes will appoint the most complete reporting node once reports settle"),
            None => note.push_str(
                "; if the last coordinator is gone for good, restart the server with --recover-from-nodes to appoint the most complete reporting node",
            ),
        }
        if self.recovery_note.as_deref() != Some(note.as_str()) {
            log::warn!("recovery waits: {note}");
            self.recovery_note = Some(note);
        }
        false
    }

    fn finish_recovery(
        &mut self,
        now: Instant,
        coordinator: NodeId,
        epoch: Epoch,
        isr: BTreeSet<NodeId>,
        why: &str,
    ) {
        debug_assert!(epoch >= self.view.epoch, "epochs only go up");
        if let Some(rec) = self.view.recovery.take() {
            for (id, m) in rec.known {
                self.view.members.entry(id).or_insert(m);
            }
            let max_id = self.view.members.keys().copied().max().unwrap_or(0);
            self.view.next_id = self.view.next_id.max(max_id + 1);
        }
        let mut isr: BTreeSet<NodeId> = isr
            .into_iter()
            .filter(|m| self.view.members.contains_key(m))
            .collect();
        isr.insert(coordinator);
        self.view.epoch = epoch;
        self.view.coordinator = Some(coordinator);
        self.view.isr = isr;
        self.view.isr_version += 1;
        self.view.recovery = None;
        self.recovery_since = None;
        self.recovery_note = None;
        self.lease_until = Some(now + self.lease);
        log::warn!(
            "recovered the view ({why}): node {coordinator} is coordinator of epoch {epoch}, in sync {}",
            fmt_ids(&self.view.isr)
        );
    }

    fn register(
        &mut self,
        now: Instant,
        node_id: Option<NodeId>,
        incarnation: u64,
        record: MemberRecord,
        last: LogPos,
    ) -> (ServerResponse, bool) {
        if let Some(id) = node_id.filter(|id| self.view.removed.contains(id)) {
            return (self.removed_refusal(id), false);
        }
        // A server that started without a view lets running nodes rejoin
        // before a brand-new node may found a cluster.
        let founding = self.view.members.is_empty() && self.view.epoch == 0;
        if founding && node_id.is_none() && last == LogPos::ZERO {
            if let Some(after) = self.bootstrap_after.filter(|&t| now < t) {
                return (
                    ServerResponse::Error {
                        kind: crate::wire::ErrorKind::Unavailable,
                        message: format!(
                            "the server started without a cluster view; it waits {} ms more for running nodes to rejoin before a new cluster may be founded",
                            (after - now).as_millis()
                        ),
                    },
                    false,
                );
            }
        }
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
        rep.at = Some(now);
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
        // A node holding entries of an epoch this server never granted: the
        // server lost its state (or holds an old copy). It must not let a
        // node found a cluster or be granted anything on its own word:
        // recovery collects the reports (and epochs only go up).
        if last.epoch > self.view.epoch && !self.recovering() {
            self.start_recovery(
                now,
                &format!(
                    "node {id} holds entries of epoch {}, above this server's epoch {}",
                    last.epoch, self.view.epoch
                ),
            );
            if let Some(m) = self
                .view
                .recovery
                .as_mut()
                .and_then(|r| r.known.remove(&id))
            {
                self.view.members.insert(id, m);
            }
        }
        self.record_report(id, incarnation, last.epoch, last, None);
        let first = founding && last == LogPos::ZERO && !self.recovering();
        if first {
            // The very first node: coordinator of the next epoch.
            self.view.epoch += 1;
            self.view.coordinator = Some(id);
            self.view.isr = BTreeSet::from([id]);
            self.view.isr_version += 1;
            self.lease_until = Some(now + self.lease);
        }
        // A member this node replaced at its address leaves at once (when
        // outside the in-sync set).
        self.reap(now);
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
        if let Some(r) = self.unknown(from, epoch) {
            return Err(r);
        }
        if self.recovering() {
            return Err(self.recovering_refusal());
        }
        if epoch != self.view.epoch || self.view.coordinator != Some(from) {
            return Err(ServerResponse::Rejected {
                epoch: self.view.epoch,
                reason: format!(
                    "node {from} is not the coordinator of epoch {epoch} (current epoch {}, coordinator {})",
                    self.view.epoch, fmt_coordinator(self.view.coordinator)
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
        self.take_reports(now, &reports);
        self.renewal = Some(Renewal {
            epoch,
            coordinator: from,
            reports,
        });
        ServerResponse::Ok(self.view(now))
    }

    /// Removes the members that are gone for good:
    /// * *replaced*: a newer member registered at its data address (a node
    ///   restarted there without its data directory), so its process is gone;
    /// * *expired*: no status report named it for `member-expiry` (the
    ///   coordinator reports only the members it hears from).
    ///
    /// Never the coordinator nor a member of the recorded in-sync set: the
    /// in-sync set and every grant stay as they are, and a member outside
    /// the recorded set is one no acknowledged write depends on. A removed
    /// member cannot be recorded in sync again (`SetIsr` names members
    /// only) unless it comes back and rejoins. See docs/ARCHITECTURE.md,
    /// "Members that leave".
    fn reap(&mut self, now: Instant) -> bool {
        if self.recovering() {
            return false;
        }
        let mut gone = Vec::new();
        for (&id, m) in &self.view.members {
            if Some(id) == self.view.coordinator || self.view.isr.contains(&id) {
                continue;
            }
            let newer = self
                .view
                .members
                .range(id + 1..)
                .find(|(_, n)| n.data_addr == m.data_addr);
            if let Some((&newer, _)) = newer {
                gone.push((
                    id,
                    format!("its address {} is now node {newer}'s", m.data_addr),
                ));
                continue;
            }
            if let Some(expiry) = self.member_expiry {
                let heard = self
                    .reports
                    .get(&id)
                    .and_then(|r| r.at)
                    .unwrap_or(self.started);
                let silent = now.saturating_duration_since(heard);
                if silent >= expiry {
                    gone.push((
                        id,
                        format!(
                            "nothing heard of it for {} s (member-expiry)",
                            silent.as_secs()
                        ),
                    ));
                }
            }
        }
        for (id, why) in &gone {
            self.view.members.remove(id);
            self.reports.remove(id);
            log::info!("removed node {id} from the members: {why}");
        }
        !gone.is_empty()
    }

    fn take_reports(&mut self, now: Instant, reports: &[MemberReport]) {
        for r in reports {
            if self.view.members.contains_key(&r.node_id) {
                let rep = self.reports.entry(r.node_id).or_default();
                rep.role = Some(r.role);
                rep.applied = r.applied;
                rep.digest = r.digest;
                rep.at = Some(now);
            }
        }
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
            // Not a stale coordinator (that is refused above): the member
            // left the view (replaced or expired) while the coordinator
            // wanted it in. It keeps its role and drops the member.
            return (
                ServerResponse::Error {
                    kind: crate::wire::ErrorKind::BadRequest,
                    message: format!("node {bad} is no longer a member"),
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
        if let Some(r) = self.unknown(candidate, epoch) {
            return (r, false);
        }
        if self.recovering() {
            return (self.recovering_refusal(), false);
        }
        if epoch != self.view.epoch {
            return reject(format!(
                "epoch {epoch} is over: epoch {} is current",
                self.view.epoch
            ));
        }
        if !self.view.isr.contains(&candidate) {
            return reject(format!(
                "node {candidate} is not in the in-sync set {}",
                fmt_ids(&self.view.isr)
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
        self.grant_epoch(now, candidate, epoch, last)
    }

    /// The coordinator of `epoch` resigns in favour of `to` (a planned
    /// handoff). Safe without waiting for the lease: only the lease holder
    /// itself can ask, and it stopped serving before it asked (a resigning
    /// coordinator drops its lease first, see `core::node`), so the lease
    /// protects nobody. Everything else is as for a grant: `to` must be in
    /// the recorded in-sync set, the epoch goes up by exactly one, and the
    /// old coordinator leaves the in-sync set.
    fn handoff(
        &mut self,
        now: Instant,
        from: NodeId,
        epoch: Epoch,
        to: NodeId,
    ) -> (ServerResponse, bool) {
        if let Err(rej) = self.is_current_coordinator(from, epoch) {
            return (rej, false);
        }
        if to == from || !self.view.isr.contains(&to) {
            return (
                ServerResponse::Rejected {
                    epoch: self.view.epoch,
                    reason: format!(
                        "node {to} cannot take over: it is not another member of the in-sync set {}",
                        fmt_ids(&self.view.isr)
                    ),
                },
                false,
            );
        }
        let last = self.reports.get(&to).map(|r| r.applied).unwrap_or_default();
        self.grant_epoch(now, to, epoch, last)
    }

    /// Grants `epoch + 1` to `candidate` (checked by the caller).
    fn grant_epoch(
        &mut self,
        now: Instant,
        candidate: NodeId,
        epoch: Epoch,
        last: LogPos,
    ) -> (ServerResponse, bool) {
        let old = self.view.coordinator;
        let granted = epoch + 1;
        // Kept by the refusals above: a grant is exactly the recorded epoch
        // plus one, so an epoch is never skipped nor granted twice.
        assert_eq!(
            granted,
            self.view.epoch + 1,
            "grant of epoch {granted} on recorded epoch {}",
            self.view.epoch
        );
        self.view.epoch = granted;
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
            "granted epoch {} to node {candidate} (previous coordinator {}, in sync {})",
            self.view.epoch,
            fmt_coordinator(old),
            fmt_ids(&self.view.isr)
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
            recovery: self.view.recovery.as_ref().map(|_| {
                self.recovery_note
                    .clone()
                    .unwrap_or_else(|| "rebuilding the view from the nodes' reports".into())
            }),
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

    /// Registers node `id` (`None`: a new node) at an address of its own.
    fn reg(core: &mut ServerCore, now: Instant, id: Option<NodeId>, inc: u64) -> ServerResponse {
        let port = 1000 + id.unwrap_or(core.durable().next_id.max(1));
        reg_at(core, now, id, inc, &format!("127.0.0.1:{port}"))
    }

    fn reg_at(
        core: &mut ServerCore,
        now: Instant,
        id: Option<NodeId>,
        inc: u64,
        addr: &str,
    ) -> ServerResponse {
        core.handle(
            now,
            ServerRequest::Register {
                node_id: id,
                incarnation: inc,
                data_addr: addr.to_string(),
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

    /// `assert_coordinator_in_isr`: this core never makes such a view, so
    /// one is put back by hand (`restore`); the next change it would have
    /// the runtime commit panics. (The grant's epoch + 1 assertion cannot be
    /// reached without a bug in `grant`: no test.)
    #[test]
    #[should_panic(expected = "is not in the in-sync set")]
    fn a_view_whose_coordinator_is_not_in_sync_is_never_committed() {
        let (mut c, now) = core();
        reg(&mut c, now, None, 1);
        reg(&mut c, now, None, 1);
        let mut v = c.durable().clone();
        assert_eq!(v.coordinator, Some(1));
        v.isr = BTreeSet::from([2]);
        c.restore(v);
        reg(&mut c, now, None, 1);
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

    fn members(c: &ServerCore) -> Vec<NodeId> {
        c.durable().members.keys().copied().collect()
    }

    fn set_isr(c: &mut ServerCore, now: Instant, isr: Vec<NodeId>) -> ServerResponse {
        c.handle(
            now,
            ServerRequest::SetIsr {
                from: 1,
                epoch: 1,
                isr,
            },
        )
        .0
    }

    /// A node restarted without its data directory registers anew at its
    /// old address: the old member leaves once outside the in-sync set.
    #[test]
    fn a_new_node_at_a_dead_members_address_replaces_it() {
        let (mut c, now) = three_in_sync();
        reg_at(&mut c, now, None, 1, "127.0.0.1:1003");
        assert_eq!(members(&c), [1, 2, 3, 4], "3 is in sync: it stays for now");
        set_isr(&mut c, now, vec![1, 2]);
        assert!(c.tick(now), "the view changed");
        assert_eq!(members(&c), [1, 2, 4], "3 was replaced by 4");
        // Outside the in-sync set, the old member goes at once.
        reg_at(&mut c, now, None, 1, "127.0.0.1:1003");
        assert_eq!(members(&c), [1, 2, 5]);
        // And a stale SetIsr naming it is an error, not a refusal that
        // would make the coordinator step down.
        assert!(matches!(
            set_isr(&mut c, now, vec![1, 2, 4]),
            ServerResponse::Error { .. }
        ));
    }

    #[test]
    fn a_silent_member_outside_the_in_sync_set_expires() {
        let (c, now) = three_in_sync();
        let mut c = c.with_member_expiry(Some(Duration::from_secs(60)));
        let later = now + Duration::from_secs(61);
        assert!(!c.tick(later), "members in sync never expire");
        set_isr(&mut c, later, vec![1, 2]);
        // The coordinator reports itself and 2 (it hears from them), not 3.
        let report = |id| MemberReport {
            node_id: id,
            role: if id == 1 {
                Role::Coordinator
            } else {
                Role::Replica
            },
            applied: LogPos::ZERO,
            digest: 0,
        };
        let push = |c: &mut ServerCore, at| {
            c.handle(
                at,
                ServerRequest::Status {
                    from: 1,
                    epoch: 1,
                    reports: vec![report(1), report(2)],
                },
            )
        };
        push(&mut c, later);
        let much_later = later + Duration::from_secs(59);
        push(&mut c, much_later);
        assert!(c.tick(much_later), "3 was last heard at registration");
        assert_eq!(members(&c), [1, 2]);
        // Back from a long partition, it rejoins under its id.
        let (rep, _) = c.handle(
            much_later,
            ServerRequest::Rejoin(Box::new(RejoinReport {
                node_id: 3,
                incarnation: 1,
                data_addr: "127.0.0.1:1003".into(),
                beacon_addr: "127.0.0.1:1".into(),
                resp_addr: None,
                epoch: 1,
                role: Role::Replica,
                last: LogPos::ZERO,
                holds_lease: false,
                coordinated: None,
                view: c.view(much_later),
            })),
        );
        assert!(matches!(rep, ServerResponse::Registered { node_id: 3, .. }));
        assert_eq!(members(&c), [1, 2, 3]);
        assert!(!c.tick(much_later + Duration::from_secs(30)));
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
        // A stranger is told to rejoin (the server does not know it).
        assert!(matches!(
            grant(&mut c, later, 9, 1),
            ServerResponse::NotRegistered { .. }
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

    fn member_info(id: NodeId, inc: u64) -> MemberInfo {
        MemberInfo {
            node_id: id,
            incarnation: inc,
            data_addr: format!("127.0.0.1:{}", 7000 + id),
            beacon_addr: format!("127.0.0.1:{}", 8000 + id),
            resp_addr: None,
            role: Role::Replica,
            in_sync: true,
            log_position: LogPos::ZERO,
            digest: 0,
            last_status_ms: None,
        }
    }

    /// What node `id` of a 3-node cluster at `epoch` (coordinator 1, all in
    /// sync) reports when it rejoins.
    fn report(id: NodeId, epoch: Epoch, role: Role, last: LogPos, lease: bool) -> ServerRequest {
        let view = ClusterView {
            epoch,
            coordinator: Some(1),
            isr: vec![1, 2, 3],
            isr_version: 5,
            members: (1..=3).map(|m| member_info(m, 1)).collect(),
            ..Default::default()
        };
        ServerRequest::Rejoin(Box::new(RejoinReport {
            node_id: id,
            incarnation: 1,
            data_addr: format!("127.0.0.1:{}", 7000 + id),
            beacon_addr: format!("127.0.0.1:{}", 8000 + id),
            resp_addr: None,
            epoch,
            role,
            last,
            holds_lease: lease,
            coordinated: (id == 1).then(|| (epoch, vec![1, 2, 3])),
            view,
        }))
    }

    fn empty_server() -> (ServerCore, Instant) {
        let now = Instant::now();
        let c = ServerCore::new(DurableView::default(), Duration::from_millis(400), now)
            .with_bootstrap_wait(now + Duration::from_millis(350));
        (c, now)
    }

    #[test]
    fn a_server_that_lost_its_state_reinstates_a_coordinator_that_holds_its_lease() {
        let (mut c, now) = empty_server();
        // A replica rejoins first: recovery starts, nothing can be granted.
        let (r, changed) = c.handle(now, report(2, 7, Role::Replica, LogPos::new(7, 90), false));
        assert!(changed);
        let ServerResponse::Registered { view, .. } = r else {
            panic!("{r:?}")
        };
        assert_eq!((view.epoch, view.coordinator), (7, None));
        assert!(view.recovery.is_some(), "the view says why it waits");
        assert!(matches!(
            grant(&mut c, now, 2, 7),
            ServerResponse::Rejected { .. }
        ));
        // The coordinator, still within its lease: back at the same epoch.
        let (r, _) = c.handle(
            now,
            report(1, 7, Role::Coordinator, LogPos::new(7, 100), true),
        );
        let ServerResponse::Registered { view, .. } = r else {
            panic!("{r:?}")
        };
        assert_eq!((view.epoch, view.coordinator), (7, Some(1)));
        assert_eq!(view.isr, vec![1, 2, 3]);
        assert_eq!(view.recovery, None);
        assert_eq!(view.members.len(), 3, "members it knew are listed again");
        assert!(!c.lease_expired(now), "and it holds a lease: no grant yet");
    }

    #[test]
    fn without_a_lease_the_last_coordinator_needs_its_whole_in_sync_set_to_report() {
        let (mut c, now) = empty_server();
        c.handle(now, report(1, 7, Role::Replica, LogPos::new(7, 100), false));
        c.handle(now, report(2, 7, Role::Replica, LogPos::new(7, 100), false));
        assert!(c.recovering(), "node 3 of its in-sync set has not reported");
        let note = c.view(now).recovery.unwrap();
        assert!(note.contains("{3}"), "{note}");
        let (r, _) = c.handle(now, report(3, 7, Role::Replica, LogPos::new(7, 95), false));
        let ServerResponse::Registered { view, .. } = r else {
            panic!("{r:?}")
        };
        assert_eq!((view.epoch, view.coordinator), (8, Some(1)), "a new epoch");
        assert_eq!(view.isr, vec![1, 2, 3]);
    }

    #[test]
    fn when_the_last_coordinator_is_gone_only_the_operator_chooses() {
        let (mut c, now) = empty_server();
        c.handle(now, report(2, 7, Role::Replica, LogPos::new(7, 90), false));
        c.handle(now, report(3, 7, Role::Replica, LogPos::new(7, 95), false));
        let later = now + Duration::from_secs(10);
        assert!(!c.tick(later));
        assert!(c.recovering());
        assert!(c
            .view(later)
            .recovery
            .unwrap()
            .contains("--recover-from-nodes"));
        // The same reports with the operator's flag: the most complete wins.
        let (mut c, now) = empty_server();
        let mut c2 = c
            .clone()
            .with_recover_from_nodes(Duration::from_millis(250));
        for core in [&mut c, &mut c2] {
            core.handle(now, report(2, 7, Role::Replica, LogPos::new(7, 90), false));
            core.handle(now, report(3, 7, Role::Replica, LogPos::new(7, 95), false));
        }
        assert!(
            !c2.tick(now + Duration::from_millis(100)),
            "reports still settle"
        );
        assert!(c2.tick(now + Duration::from_millis(300)));
        let v = c2.view(now);
        assert_eq!(
            (v.epoch, v.coordinator, v.isr.clone()),
            (8, Some(3), vec![3])
        );
    }

    #[test]
    fn a_report_of_a_later_epoch_outranks_the_old_coordinator() {
        let (mut c, now) = empty_server();
        // Node 2 holds entries of epoch 8: an epoch node 1 never coordinated.
        c.handle(now, report(2, 8, Role::Replica, LogPos::new(8, 3), false));
        c.handle(now, report(3, 7, Role::Replica, LogPos::new(7, 95), false));
        c.handle(
            now,
            report(1, 7, Role::Coordinator, LogPos::new(7, 100), true),
        );
        assert!(c.recovering());
        assert_eq!(c.view(now).coordinator, None);
    }

    #[test]
    fn a_fresh_server_lets_running_nodes_rejoin_before_a_new_cluster_is_founded() {
        let (mut c, now) = empty_server();
        assert!(matches!(
            reg(&mut c, now, None, 1),
            ServerResponse::Error {
                kind: crate::wire::ErrorKind::Unavailable,
                ..
            }
        ));
        let later = now + Duration::from_millis(400);
        let ServerResponse::Registered { view, .. } = reg(&mut c, later, None, 1) else {
            panic!()
        };
        assert_eq!((view.epoch, view.coordinator), (1, Some(1)));
        // A node with data of an epoch this server never granted starts a
        // recovery instead of founding a cluster.
        let (mut c, now) = empty_server();
        let (r, _) = c.handle(
            now + Duration::from_secs(1),
            ServerRequest::Register {
                node_id: Some(4),
                incarnation: 3,
                data_addr: "127.0.0.1:7004".into(),
                beacon_addr: "127.0.0.1:8004".into(),
                last: LogPos::new(5, 10),
                resp_addr: None,
            },
        );
        let ServerResponse::Registered { view, .. } = r else {
            panic!("{r:?}")
        };
        assert_eq!((view.epoch, view.coordinator), (5, None));
        assert!(c.recovering());
    }

    #[test]
    fn a_new_node_registering_during_recovery_gets_an_id_nobody_holds() {
        let (mut c, now) = empty_server();
        // Node 2 reports, knowing of 1 and 3, who have not reported yet.
        c.handle(now, report(2, 7, Role::Replica, LogPos::new(7, 90), false));
        let later = now + Duration::from_secs(1);
        let ServerResponse::Registered { node_id, .. } = reg(&mut c, later, None, 1) else {
            panic!()
        };
        assert_eq!(node_id, 4, "ids 1 and 3 belong to members that will rejoin");
    }

    #[test]
    fn strangers_and_senders_of_newer_epochs_are_told_to_rejoin() {
        let (mut c, now) = three_in_sync();
        let status = |from, epoch| ServerRequest::Status {
            from,
            epoch,
            reports: vec![],
        };
        assert!(matches!(
            c.handle(now, status(9, 1)).0,
            ServerResponse::NotRegistered { .. }
        ));
        assert!(matches!(
            c.handle(now, status(1, 2)).0,
            ServerResponse::NotRegistered { .. }
        ));
        assert!(matches!(
            c.handle(now, status(1, 1)).0,
            ServerResponse::Ok(_)
        ));
        assert!(c.poll_renewal().is_some(), "an accepted push is a renewal");
        // A known member rejoining with nothing new changes nothing.
        let (r, changed) = c.handle(now, report(2, 1, Role::Replica, LogPos::ZERO, false));
        assert!(matches!(r, ServerResponse::Registered { .. }));
        assert!(!changed);
        assert!(!c.recovering());
    }
}
