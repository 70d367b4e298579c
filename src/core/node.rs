//! A node's control plane as a sans-IO state machine: role, epoch, membership,
//! beacons, status pushes, lease and in-sync-set bookkeeping.
//!
//! The driver thread owns one [`NodeCore`]. It feeds [`Input`]s (beacons,
//! server replies, replication-link events, ticks carrying `now` and the local
//! log position) and executes the returned [`Action`]s **in order**. The order
//! inside one returned batch is meaningful:
//!
//! * `AddToCommitSet(id)` comes *before* the `SetIsr` call that records `id`
//!   as in sync, so the server never lists a member the commit does not wait for;
//! * `RemoveFromCommitSet(id)` comes only *after* the server confirmed the
//!   removal, so no write is acknowledged without a member the server still
//!   lists as in sync;
//! * `Publish` (what the data path may serve) follows the role change it reflects;
//!   `StepDown` precedes `Follow`.
//!
//! The core never reads the clock, opens a socket or touches the data path.

use crate::config::NodeSettings;
use crate::types::{Epoch, LogPos, NodeId, Role};
use crate::wire::{
    Beacon, ClusterView, MemberReport, ServerRequest, ServerResponse, MAGIC, PROTOCOL_VERSION,
};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Timing knobs the core uses, taken from [`NodeSettings`].
#[derive(Clone, Debug)]
pub struct Timing {
    pub heartbeat: Duration,
    pub failure_timeout: Duration,
    pub update_interval: Duration,
    pub lease: Duration,
    pub reconnection_attempts: u32,
    pub follow_retry: Duration,
}

impl Timing {
    pub fn from_settings(s: &NodeSettings) -> Self {
        Timing {
            heartbeat: s.heartbeat(),
            failure_timeout: s.failure_timeout(),
            update_interval: s.server_update_interval(),
            lease: s.lease_at_coordinator(),
            reconnection_attempts: s.reconnection_attempts,
            follow_retry: s.heartbeat(),
        }
    }
}

/// What the node's own data path looks like right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalStatus {
    pub last: LogPos,
    pub applied: LogPos,
    pub digest: u64,
}

/// Server calls are tagged so replies find their purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Call {
    Status,
    View,
    SetIsr,
}

#[derive(Clone, Debug)]
pub enum Input {
    /// Time passed; carries the data path's current position.
    Tick(LocalStatus),
    Beacon(Beacon),
    ServerReply {
        call: Call,
        /// When the request was sent (leases count from there).
        sent: Instant,
        reply: Result<ServerResponse, String>,
    },
    /// A replica's acknowledgements reached the commit index.
    FollowerCaughtUp(NodeId),
    /// A replica's stream from this coordinator ended.
    FollowerGone(NodeId),
    /// This replica's stream from the coordinator ended.
    FollowLost {
        reason: String,
    },
}

/// What the data path may do, published after every role change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Serving {
    pub role: Role,
    pub epoch: Epoch,
    pub coordinator: Option<NodeId>,
    pub coordinator_addr: Option<String>,
    /// The coordinator serves only before this instant.
    pub lease_until: Option<Instant>,
    /// Registered members; only they may follow the coordinator.
    pub members: Vec<NodeId>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    SendBeacon {
        to: Vec<String>,
        beacon: Beacon,
    },
    CallServer {
        call: Call,
        request: ServerRequest,
    },
    /// Take the coordinator role; the commit waits for all of `isr`.
    BecomeCoordinator {
        epoch: Epoch,
        isr: Vec<NodeId>,
        required: usize,
    },
    /// Give up the coordinator role (fail waiting writes, stop streams).
    StepDown,
    /// Stream the log from this coordinator (replaces any current stream).
    Follow {
        coordinator: NodeId,
        addr: String,
        epoch: Epoch,
    },
    AddToCommitSet(NodeId),
    RemoveFromCommitSet(NodeId),
    SetRequired(usize),
    Publish(Serving),
}

#[derive(Clone, Debug, Default)]
struct Peer {
    beacon_addr: String,
    incarnation: u64,
    last_beacon: Option<Instant>,
    role: Option<Role>,
    applied: LogPos,
    digest: u64,
}

pub struct NodeCore {
    id: NodeId,
    incarnation: u64,
    timing: Timing,
    settings: NodeSettings,
    role: Role,
    epoch: Epoch,
    view: ClusterView,
    peers: BTreeMap<NodeId, Peer>,
    local: LocalStatus,
    in_flight: BTreeSet<Call>,
    next_beacon: Instant,
    next_server: Instant,
    // coordinator
    isr: BTreeSet<NodeId>,
    isr_pending: Option<BTreeSet<NodeId>>,
    want_in: BTreeSet<NodeId>,
    gone: BTreeSet<NodeId>,
    lease_until: Option<Instant>,
    push_failures: u32,
    // replica
    following: Option<(NodeId, Epoch)>,
    follow_retry_at: Option<Instant>,
}

impl NodeCore {
    /// A core for node `id` that just registered and received `view`.
    pub fn new(
        id: NodeId,
        incarnation: u64,
        settings: &NodeSettings,
        view: ClusterView,
        registered_at: Instant,
    ) -> (Self, Vec<Action>) {
        let mut core = NodeCore {
            id,
            incarnation,
            timing: Timing::from_settings(settings),
            settings: settings.clone(),
            role: Role::Joining,
            epoch: 0,
            view: ClusterView::default(),
            peers: BTreeMap::new(),
            local: LocalStatus::default(),
            in_flight: BTreeSet::new(),
            next_beacon: registered_at,
            next_server: registered_at,
            isr: BTreeSet::new(),
            isr_pending: None,
            want_in: BTreeSet::new(),
            gone: BTreeSet::new(),
            lease_until: None,
            push_failures: 0,
            following: None,
            follow_retry_at: None,
        };
        let mut out = Vec::new();
        core.adopt_view(registered_at, view, registered_at, &mut out);
        (core, out)
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// When the driver must call again at the latest.
    pub fn next_deadline(&self) -> Instant {
        let mut d = self.next_beacon.min(self.next_server);
        if let Some(t) = self.follow_retry_at {
            d = d.min(t);
        }
        d
    }

    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Tick(local) => {
                self.local = local;
                self.tick(now, &mut out);
            }
            Input::Beacon(b) => self.on_beacon(now, b),
            Input::ServerReply { call, sent, reply } => {
                self.in_flight.remove(&call);
                self.on_server_reply(now, call, sent, reply, &mut out);
            }
            Input::FollowerCaughtUp(id) => {
                if self.role == Role::Coordinator
                    && !self.isr.contains(&id)
                    && self.view.member(id).is_some()
                {
                    self.gone.remove(&id);
                    self.want_in.insert(id);
                    self.reconcile_isr(&mut out);
                }
            }
            Input::FollowerGone(id) => {
                if self.role == Role::Coordinator {
                    self.want_in.remove(&id);
                    self.gone.insert(id);
                    self.reconcile_isr(&mut out);
                }
            }
            Input::FollowLost { reason } => {
                if self.following.is_some() {
                    log::info!("node {}: replication stream lost: {reason}", self.id);
                }
                self.following = None;
                self.follow_retry_at = Some(now + self.timing.follow_retry);
            }
        }
        out
    }

    fn tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        if now >= self.next_beacon {
            self.next_beacon = now + self.timing.heartbeat;
            let to: Vec<String> = self
                .peers
                .iter()
                .filter(|(&id, _)| id != self.id)
                .map(|(_, p)| p.beacon_addr.clone())
                .collect();
            if !to.is_empty() {
                out.push(Action::SendBeacon {
                    to,
                    beacon: self.beacon(),
                });
            }
        }
        if self.role == Role::Coordinator {
            // Retries an in-sync change whose server call failed.
            self.reconcile_isr(out);
            if let Some(until) = self.lease_until {
                if now >= until && self.push_failures >= self.timing.reconnection_attempts {
                    log::warn!(
                        "node {}: lease expired after {} failed status pushes; stepping down",
                        self.id,
                        self.push_failures
                    );
                    self.step_down(now, out);
                }
            }
        }
        if now >= self.next_server {
            self.next_server = now + self.timing.update_interval;
            if self.role == Role::Coordinator {
                self.call(
                    Call::Status,
                    ServerRequest::Status {
                        from: self.id,
                        epoch: self.epoch,
                        reports: self.reports(),
                    },
                    out,
                );
            } else {
                self.call(Call::View, ServerRequest::View, out);
            }
        }
        if self.role != Role::Coordinator && self.following.is_none() {
            if let Some(t) = self.follow_retry_at {
                if now >= t {
                    self.follow_retry_at = None;
                    self.follow_coordinator(now, out);
                }
            }
        }
    }

    fn call(&mut self, call: Call, request: ServerRequest, out: &mut Vec<Action>) {
        if self.in_flight.insert(call) {
            out.push(Action::CallServer { call, request });
        }
    }

    fn beacon(&self) -> Beacon {
        Beacon {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            from: self.id,
            incarnation: self.incarnation,
            epoch: self.epoch,
            role: self.role,
            last: self.local.last,
            applied: self.local.applied,
            digest: self.local.digest,
        }
    }

    fn reports(&self) -> Vec<MemberReport> {
        let mut v = vec![MemberReport {
            node_id: self.id,
            role: self.role,
            applied: self.local.applied,
            digest: self.local.digest,
        }];
        for (&id, p) in &self.peers {
            if id == self.id {
                continue;
            }
            if let Some(role) = p.role {
                v.push(MemberReport {
                    node_id: id,
                    role,
                    applied: p.applied,
                    digest: p.digest,
                });
            }
        }
        v
    }

    fn on_beacon(&mut self, now: Instant, b: Beacon) {
        if b.from == self.id {
            return;
        }
        // Only members we know of are tracked: a stranger's beacon is dropped.
        let Some(p) = self.peers.get_mut(&b.from) else {
            log::debug!(
                "node {}: beacon from unknown node {} dropped",
                self.id,
                b.from
            );
            return;
        };
        if b.incarnation < p.incarnation {
            return; // from before the peer's restart
        }
        p.incarnation = b.incarnation;
        p.last_beacon = Some(now);
        p.role = Some(b.role);
        p.applied = b.applied;
        p.digest = b.digest;
        if b.epoch > self.epoch {
            // Something changed we have not heard of: ask the server soon.
            self.next_server = now;
        }
    }

    fn on_server_reply(
        &mut self,
        now: Instant,
        call: Call,
        sent: Instant,
        reply: Result<ServerResponse, String>,
        out: &mut Vec<Action>,
    ) {
        match (call, reply) {
            (Call::Status, Ok(ServerResponse::Ok(view))) => {
                self.push_failures = 0;
                if self.role == Role::Coordinator {
                    let until = sent + self.timing.lease;
                    if self.lease_until.is_none_or(|t| until > t) {
                        self.lease_until = Some(until);
                        out.push(Action::Publish(self.serving()));
                    }
                }
                self.adopt_view(now, view, sent, out);
            }
            (Call::SetIsr, Ok(ServerResponse::Ok(view))) => {
                if let Some(pending) = self.isr_pending.take() {
                    for &id in self.isr.difference(&pending) {
                        out.push(Action::RemoveFromCommitSet(id));
                    }
                    for id in &pending {
                        self.want_in.remove(id);
                    }
                    self.isr = pending;
                }
                self.adopt_view(now, view, sent, out);
                self.reconcile_isr(out);
            }
            (Call::View, Ok(ServerResponse::View(view))) => self.adopt_view(now, view, sent, out),
            (_, Ok(ServerResponse::Rejected { epoch, reason })) => {
                log::warn!("node {}: server refused {call:?}: {reason}", self.id);
                if call == Call::SetIsr {
                    self.isr_pending = None;
                }
                if self.role == Role::Coordinator && epoch >= self.epoch {
                    self.step_down(now, out);
                }
                self.next_server = now;
            }
            (_, Ok(other)) => {
                log::warn!(
                    "node {}: unexpected server reply to {call:?}: {other:?}",
                    self.id
                );
            }
            (_, Err(e)) => {
                log::warn!("node {}: server call {call:?} failed: {e}", self.id);
                if call == Call::Status {
                    self.push_failures += 1;
                }
                if call == Call::SetIsr {
                    // Retry at the next tick; nothing changed at the server
                    // that we know of, so the commit set stays as it is.
                    self.isr_pending = None;
                    self.next_server = now + self.timing.heartbeat;
                }
            }
        }
    }

    /// Takes in a view from the server: membership, epoch and coordinator.
    fn adopt_view(
        &mut self,
        now: Instant,
        view: ClusterView,
        sent: Instant,
        out: &mut Vec<Action>,
    ) {
        if view.epoch < self.epoch {
            return; // an answer from before something newer we already know
        }
        // Membership.
        let ids: BTreeSet<NodeId> = view.members.iter().map(|m| m.node_id).collect();
        let members_changed = !self.peers.keys().copied().eq(ids.iter().copied());
        self.peers.retain(|id, _| ids.contains(id));
        for m in &view.members {
            let p = self.peers.entry(m.node_id).or_default();
            p.beacon_addr = m.beacon_addr.clone();
            p.incarnation = p.incarnation.max(m.incarnation);
        }
        let required = self.settings.required_in_sync(view.members.len());
        let epoch_changed = view.epoch > self.epoch;
        let coordinator = view.coordinator;
        self.view = view;
        if members_changed {
            out.push(Action::Publish(self.serving()));
        }
        if self.role == Role::Coordinator && !epoch_changed {
            out.push(Action::SetRequired(required));
            return;
        }
        if !epoch_changed && self.role != Role::Joining {
            return;
        }
        self.epoch = self.view.epoch;
        if coordinator == Some(self.id) {
            if self.role != Role::Coordinator {
                self.role = Role::Coordinator;
                self.isr = self.view.isr.iter().copied().collect();
                self.isr_pending = None;
                self.want_in.clear();
                self.gone.clear();
                self.following = None;
                self.lease_until = Some(sent + self.timing.lease);
                self.push_failures = 0;
                log::info!(
                    "node {}: coordinator of epoch {} (in sync: {:?})",
                    self.id,
                    self.epoch,
                    self.isr
                );
                out.push(Action::BecomeCoordinator {
                    epoch: self.epoch,
                    isr: self.isr.iter().copied().collect(),
                    required,
                });
                out.push(Action::Publish(self.serving()));
            }
        } else {
            if self.role == Role::Coordinator {
                self.step_down(now, out);
            }
            self.role = Role::Replica;
            self.follow_coordinator(now, out);
        }
    }

    fn follow_coordinator(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(c) = self.view.coordinator else {
            self.following = None;
            out.push(Action::Publish(self.serving()));
            return;
        };
        if self.following == Some((c, self.epoch)) {
            return;
        }
        let Some(addr) = self.view.member(c).map(|m| m.data_addr.clone()) else {
            return;
        };
        self.following = Some((c, self.epoch));
        self.follow_retry_at = None;
        let _ = now;
        out.push(Action::Publish(self.serving()));
        out.push(Action::Follow {
            coordinator: c,
            addr,
            epoch: self.epoch,
        });
    }

    fn step_down(&mut self, now: Instant, out: &mut Vec<Action>) {
        log::warn!(
            "node {}: stepping down as coordinator of epoch {}",
            self.id,
            self.epoch
        );
        self.role = Role::Replica;
        self.lease_until = None;
        self.isr_pending = None;
        self.following = None;
        self.follow_retry_at = Some(now + self.timing.follow_retry);
        out.push(Action::StepDown);
        out.push(Action::Publish(self.serving()));
    }

    /// Moves the recorded in-sync set toward (recorded ∪ caught up) − gone,
    /// one server call at a time.
    fn reconcile_isr(&mut self, out: &mut Vec<Action>) {
        if self.role != Role::Coordinator || self.isr_pending.is_some() {
            return;
        }
        let mut desired: BTreeSet<NodeId> = self.isr.union(&self.want_in).copied().collect();
        for id in &self.gone {
            if *id != self.id {
                desired.remove(id);
            }
        }
        self.gone.retain(|id| self.isr.contains(id));
        if desired == self.isr {
            return;
        }
        for &id in desired.difference(&self.isr) {
            out.push(Action::AddToCommitSet(id));
        }
        self.isr_pending = Some(desired.clone());
        self.in_flight.remove(&Call::SetIsr);
        self.call(
            Call::SetIsr,
            ServerRequest::SetIsr {
                from: self.id,
                epoch: self.epoch,
                isr: desired.into_iter().collect(),
            },
            out,
        );
    }

    pub fn serving(&self) -> Serving {
        let coordinator = self.view.coordinator;
        Serving {
            role: self.role,
            epoch: self.epoch,
            coordinator,
            coordinator_addr: coordinator
                .and_then(|c| self.view.member(c))
                .map(|m| m.data_addr.clone()),
            lease_until: if self.role == Role::Coordinator {
                self.lease_until
            } else {
                None
            },
            members: self.peers.keys().copied().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::MemberInfo;

    fn member(id: NodeId) -> MemberInfo {
        MemberInfo {
            node_id: id,
            incarnation: 1,
            data_addr: format!("127.0.0.1:{}", 7000 + id),
            beacon_addr: format!("127.0.0.1:{}", 8000 + id),
            role: Role::Replica,
            in_sync: false,
            log_position: LogPos::ZERO,
            digest: 0,
            last_status_ms: None,
        }
    }

    fn view(epoch: Epoch, coord: NodeId, isr: &[NodeId], ids: &[NodeId]) -> ClusterView {
        ClusterView {
            epoch,
            coordinator: Some(coord),
            isr: isr.to_vec(),
            members: ids.iter().map(|&i| member(i)).collect(),
        }
    }

    fn settings() -> NodeSettings {
        NodeSettings::default()
    }

    #[test]
    fn first_node_becomes_coordinator_and_publishes_lease() {
        let now = Instant::now();
        let (core, out) = NodeCore::new(1, 1, &settings(), view(1, 1, &[1], &[1]), now);
        assert_eq!(core.role(), Role::Coordinator);
        let become_at = out
            .iter()
            .position(|a| matches!(a, Action::BecomeCoordinator { epoch: 1, .. }))
            .expect("becomes coordinator");
        match &out[become_at + 1] {
            Action::Publish(s) => {
                assert!(s.lease_until.unwrap() > now);
                assert_eq!(s.members, vec![1]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn replica_follows_the_coordinator() {
        let now = Instant::now();
        let (core, out) = NodeCore::new(2, 1, &settings(), view(1, 1, &[1], &[1, 2]), now);
        assert_eq!(core.role(), Role::Replica);
        assert!(out.iter().any(|a| matches!(
            a,
            Action::Follow {
                coordinator: 1,
                epoch: 1,
                ..
            }
        )));
    }

    #[test]
    fn isr_add_goes_commit_set_first_and_removal_after_server() {
        let now = Instant::now();
        let (mut core, _) = NodeCore::new(1, 1, &settings(), view(1, 1, &[1], &[1, 2]), now);
        let out = core.handle(now, Input::FollowerCaughtUp(2));
        assert_eq!(out[0], Action::AddToCommitSet(2));
        assert!(matches!(
            &out[1],
            Action::CallServer { call: Call::SetIsr, request: ServerRequest::SetIsr { isr, .. } } if isr == &vec![1, 2]
        ));
        let out = core.handle(
            now,
            Input::ServerReply {
                call: Call::SetIsr,
                sent: now,
                reply: Ok(ServerResponse::Ok(view(1, 1, &[1, 2], &[1, 2]))),
            },
        );
        assert!(!out
            .iter()
            .any(|a| matches!(a, Action::RemoveFromCommitSet(_))));

        // The replica goes away: the commit set keeps it until the server agrees.
        let out = core.handle(now, Input::FollowerGone(2));
        assert!(!out
            .iter()
            .any(|a| matches!(a, Action::RemoveFromCommitSet(_))));
        assert!(out.iter().any(|a| matches!(
            a,
            Action::CallServer { request: ServerRequest::SetIsr { isr, .. }, .. } if isr == &vec![1]
        )));
        // The server is unreachable: still not removed.
        let out = core.handle(
            now,
            Input::ServerReply {
                call: Call::SetIsr,
                sent: now,
                reply: Err("connection refused".into()),
            },
        );
        assert!(!out
            .iter()
            .any(|a| matches!(a, Action::RemoveFromCommitSet(_))));
        // Next tick retries; the server confirms; only then is it removed.
        let later = now + Duration::from_secs(1);
        let out = core.handle(later, Input::Tick(LocalStatus::default()));
        assert!(
            out.iter().any(|a| matches!(
                a,
                Action::CallServer {
                    call: Call::SetIsr,
                    ..
                }
            )),
            "{out:?}"
        );
        let out = core.handle(
            later,
            Input::ServerReply {
                call: Call::SetIsr,
                sent: later,
                reply: Ok(ServerResponse::Ok(view(1, 1, &[1], &[1, 2]))),
            },
        );
        assert_eq!(out[0], Action::RemoveFromCommitSet(2));
    }

    #[test]
    fn rejected_status_push_makes_coordinator_step_down() {
        let now = Instant::now();
        let (mut core, _) = NodeCore::new(1, 1, &settings(), view(1, 1, &[1], &[1, 2]), now);
        let out = core.handle(
            now,
            Input::ServerReply {
                call: Call::Status,
                sent: now,
                reply: Ok(ServerResponse::Rejected {
                    epoch: 2,
                    reason: "not the coordinator".into(),
                }),
            },
        );
        assert_eq!(out[0], Action::StepDown);
        assert_eq!(core.role(), Role::Replica);
    }

    #[test]
    fn beacons_from_strangers_and_old_incarnations_are_ignored() {
        let now = Instant::now();
        let (mut core, _) = NodeCore::new(1, 1, &settings(), view(1, 1, &[1], &[1, 2]), now);
        let mut b = Beacon {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            from: 99,
            incarnation: 1,
            epoch: 1,
            role: Role::Replica,
            last: LogPos::ZERO,
            applied: LogPos::ZERO,
            digest: 7,
        };
        core.handle(now, Input::Beacon(b.clone()));
        assert!(!core.peers.contains_key(&99));
        b.from = 2;
        b.incarnation = 3;
        core.handle(now, Input::Beacon(b.clone()));
        assert_eq!(core.peers[&2].digest, 7);
        b.incarnation = 2;
        b.digest = 8;
        core.handle(now, Input::Beacon(b));
        assert_eq!(core.peers[&2].digest, 7);
    }
}
