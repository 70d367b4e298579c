//! A node's control plane as a sans-IO state machine: role, epoch, membership,
//! beacons, failure detection, the bully election, status pushes, lease and
//! in-sync-set bookkeeping.
//!
//! The driver thread owns one [`NodeCore`]. It feeds [`Input`]s (beacons,
//! server replies, replication-link events, ticks carrying `now` and the local
//! log position) and executes the returned [`Action`]s **in order**. The order
//! inside one returned batch is meaningful:
//!
//! * `AddToCommitSet(id)` comes *before* the `SetIsr` call that records `id`
//!   as in sync, so the server never lists a member the commit does not wait
//!   for; if the log says `id` no longer holds every committed entry when it
//!   is added (the commit moved on since `id` caught up), the driver does not
//!   send that `SetIsr` and answers the core with a failure, so the core asks
//!   again at a later tick;
//! * `RemoveFromCommitSet(id)` comes only *after* the server confirmed the
//!   removal, so no write is acknowledged without a member the server still
//!   lists as in sync;
//! * `Publish` (what the data path may serve) follows the role change it
//!   reflects; `StepDown` precedes `Follow`.
//!
//! Failure detection: a peer is *suspected* when nothing was heard from it for
//! `failure-timeout`. The coordinator is also suspected when its beacons say
//! it no longer acts as coordinator, or when its port refuses connections.
//!
//! Election (bully, with a data-aware rank): when an in-sync replica suspects
//! the coordinator it becomes a candidate and beacons that. After
//! `voting-wait` it ranks the in-sync members it still hears from by
//! `(last log position, node id)`; if it ranks highest it asks the server for
//! the next epoch, otherwise it defers to the higher one for `election-wait`
//! and then votes again (the higher one may have died meanwhile). The server
//! grants an epoch to at most one candidate, only to an in-sync member, and
//! only once the old coordinator's lease has run out: the election picks a
//! good candidate, the server makes it safe.
//!
//! The core never reads the clock, opens a socket or touches the data path.

use crate::config::NodeSettings;
use crate::types::{Epoch, LogPos, NodeId, Role};
use crate::wire::{
    Beacon, ClusterView, MemberReport, RejoinReport, ServerRequest, ServerResponse, MAGIC,
    PROTOCOL_VERSION,
};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Timing knobs the core uses, taken from [`NodeSettings`].
#[derive(Clone, Debug)]
pub struct Timing {
    pub heartbeat: Duration,
    pub failure_timeout: Duration,
    pub voting_wait: Duration,
    pub election_wait: Duration,
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
            voting_wait: s.voting_wait(),
            election_wait: s.election_wait(),
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
    Grant,
    /// Tell a server that does not know this node who it is (it restarted
    /// without its state).
    Rejoin,
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
    /// A replica opened its stream from this coordinator.
    /// A replica opened replication stream number `.1` to this coordinator.
    FollowerConnected(NodeId, u64),
    /// A replica's acknowledgements reached the commit index.
    FollowerCaughtUp(NodeId),
    /// A replica's stream from this coordinator ended.
    /// Replication stream `.1` of a replica ended (ignored when the replica
    /// is already on a newer stream: the old stream's end can arrive late).
    FollowerGone(NodeId, u64),
    /// This replica's stream from the coordinator ended. `refused`: the
    /// coordinator's port refused the connection (its process is gone).
    FollowLost {
        reason: String,
        refused: bool,
    },
}

/// What the data path may do, published after every role change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Serving {
    pub role: Role,
    pub epoch: Epoch,
    pub coordinator: Option<NodeId>,
    pub coordinator_addr: Option<String>,
    /// The coordinator's RESP address, if it serves one.
    pub coordinator_resp_addr: Option<String>,
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

#[derive(Clone, Debug)]
struct Peer {
    beacon_addr: String,
    incarnation: u64,
    /// Last time we heard from it (or learned of it: a grace period).
    last_heard: Instant,
    /// Last beacon's role and epoch.
    role: Option<Role>,
    epoch: Epoch,
    last: LogPos,
    applied: LogPos,
    digest: u64,
}

/// Where this node stands in an election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Election {
    /// The coordinator is alive (or this node is not eligible).
    Idle,
    /// Candidate, collecting beacons until the instant.
    Voting { until: Instant },
    /// Asked the server for the grant; waiting for the answer.
    Requesting,
    /// A higher-ranked candidate should win; vote again at the instant.
    Deferred { until: Instant, to: NodeId },
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
    /// The server's version of `isr` when we last took it over.
    isr_version: u64,
    isr_pending: Option<BTreeSet<NodeId>>,
    want_in: BTreeSet<NodeId>,
    gone: BTreeSet<NodeId>,
    /// Replicas with a replication stream to this coordinator, and its number.
    connected: BTreeMap<NodeId, u64>,
    coordinator_since: Instant,
    lease_until: Option<Instant>,
    push_failures: u32,
    /// The last epoch this node coordinated and its in-sync set then
    /// (pending additions included): reported when it rejoins a server.
    coordinated: Option<(Epoch, BTreeSet<NodeId>)>,
    /// The epoch this node took the coordinator role in.
    lead_epoch: Epoch,
    // replica
    following: Option<(NodeId, Epoch)>,
    follow_retry_at: Option<Instant>,
    follow_failures: u32,
    election: Election,
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
            isr_version: 0,
            isr_pending: None,
            want_in: BTreeSet::new(),
            gone: BTreeSet::new(),
            connected: BTreeMap::new(),
            coordinator_since: registered_at,
            lease_until: None,
            push_failures: 0,
            coordinated: None,
            lead_epoch: 0,
            following: None,
            follow_retry_at: None,
            follow_failures: 0,
            election: Election::Idle,
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

    pub fn election(&self) -> Election {
        self.election
    }

    /// When the driver must call again at the latest.
    pub fn next_deadline(&self) -> Instant {
        let mut d = self.next_beacon.min(self.next_server);
        if let Some(t) = self.follow_retry_at {
            d = d.min(t);
        }
        match self.election {
            Election::Voting { until } | Election::Deferred { until, .. } => d = d.min(until),
            _ => {}
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
            Input::FollowerConnected(id, stream) => {
                self.connected.insert(id, stream);
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
            Input::FollowerGone(id, stream) => {
                if self.connected.get(&id).is_some_and(|&s| s != stream) {
                    return out; // a late end of an older stream
                }
                self.connected.remove(&id);
                if self.role == Role::Coordinator {
                    self.want_in.remove(&id);
                    self.gone.insert(id);
                    self.reconcile_isr(&mut out);
                }
            }
            Input::FollowLost { reason, refused } => {
                if self.follow_failures == 0 {
                    log::info!("node {}: replication stream lost: {reason}", self.id);
                } else {
                    log::debug!("node {}: replication stream lost: {reason}", self.id);
                }
                self.follow_failures += 1;
                if refused {
                    // Nobody listens on the coordinator's port: its process is gone.
                    if let Some((c, _)) = self.following {
                        if let Some(p) = self.peers.get_mut(&c) {
                            p.last_heard = now - self.timing.failure_timeout;
                        }
                    }
                }
                self.following = None;
                self.follow_retry_at = Some(now + self.timing.follow_retry);
                self.election_tick(now, &mut out);
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
            self.detect_replica_failures(now);
            // Also retries an in-sync change whose server call failed.
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
        if self.role != Role::Coordinator {
            self.election_tick(now, out);
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
            seq: 0,
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
        p.last_heard = now;
        p.role = Some(b.role);
        p.epoch = b.epoch;
        p.last = b.last;
        p.applied = b.applied;
        p.digest = b.digest;
        if b.epoch > self.epoch {
            // Something changed we have not heard of: ask the server now.
            self.next_server = now;
        }
    }

    /// A peer is suspected when it has been silent for the failure timeout.
    fn suspected(&self, id: NodeId, now: Instant) -> bool {
        self.peers.get(&id).is_none_or(|p| {
            now.saturating_duration_since(p.last_heard) >= self.timing.failure_timeout
        })
    }

    /// Whether the coordinator in our view looks alive and acting.
    fn coordinator_alive(&self, now: Instant) -> bool {
        let Some(c) = self.view.coordinator else {
            return false;
        };
        if c == self.id {
            return false; // we are not acting as coordinator, so nobody is
        }
        if self.suspected(c, now) {
            return false;
        }
        // Its own beacon says it stepped down at our epoch or later.
        !self.peers.get(&c).is_some_and(|p| {
            p.role.is_some_and(|r| r != Role::Coordinator) && p.epoch >= self.epoch
        })
    }

    /// The coordinator stops waiting for in-sync replicas it no longer hears
    /// from, or that have not opened their stream within the failure timeout.
    fn detect_replica_failures(&mut self, now: Instant) {
        let settled =
            now.saturating_duration_since(self.coordinator_since) >= self.timing.failure_timeout;
        let failed: Vec<NodeId> = self
            .isr
            .iter()
            .copied()
            .filter(|&id| id != self.id)
            .filter(|&id| self.suspected(id, now) || (settled && !self.connected.contains_key(&id)))
            .collect();
        for id in failed {
            if self.gone.insert(id) {
                log::warn!(
                    "node {}: replica {id} unreachable; removing it from the in-sync set",
                    self.id
                );
                self.want_in.remove(&id);
            }
        }
    }

    /// Runs the election on a node that is not the coordinator.
    fn election_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.role == Role::Coordinator || self.role == Role::Joining {
            return;
        }
        if self.coordinator_alive(now) {
            if self.election != Election::Idle {
                self.election = Election::Idle;
                if self.role == Role::Candidate {
                    self.role = Role::Replica;
                    out.push(Action::Publish(self.serving()));
                }
            }
            return;
        }
        let eligible = self.view.isr.contains(&self.id);
        if !eligible {
            // Not in sync: cannot take over; keep asking the server who won.
            if self.next_server > now + self.timing.heartbeat {
                self.next_server = now + self.timing.heartbeat;
            }
            return;
        }
        match self.election {
            Election::Idle => {
                log::warn!(
                    "node {}: coordinator {:?} of epoch {} suspected; starting an election",
                    self.id,
                    self.view.coordinator,
                    self.epoch
                );
                self.role = Role::Candidate;
                self.election = Election::Voting {
                    until: now + self.timing.voting_wait,
                };
                self.next_beacon = now; // tell the others at once
                out.push(Action::Publish(self.serving()));
            }
            Election::Voting { until } if now >= until => {
                let best = self.best_candidate(now);
                if best == self.id {
                    log::info!(
                        "node {}: ranks highest at {}; asking the server for epoch {}",
                        self.id,
                        self.local.last,
                        self.epoch + 1
                    );
                    self.election = Election::Requesting;
                    self.call(
                        Call::Grant,
                        ServerRequest::RequestGrant {
                            candidate: self.id,
                            epoch: self.epoch,
                            last: self.local.last,
                        },
                        out,
                    );
                } else {
                    log::info!("node {}: deferring to higher-ranked node {best}", self.id);
                    self.election = Election::Deferred {
                        until: now + self.timing.election_wait,
                        to: best,
                    };
                }
            }
            Election::Deferred { until, .. } if now >= until => {
                self.election = Election::Voting {
                    until: now + self.timing.voting_wait,
                };
            }
            _ => {}
        }
    }

    /// The in-sync member we still hear from with the highest
    /// (last log position, id). The suspected coordinator is excluded.
    fn best_candidate(&self, now: Instant) -> NodeId {
        let mut best = (self.local.last, self.id);
        for &id in &self.view.isr {
            if id == self.id || Some(id) == self.view.coordinator || self.suspected(id, now) {
                continue;
            }
            let Some(p) = self.peers.get(&id) else {
                continue;
            };
            let rank = (p.last, id);
            if rank > best {
                best = rank;
            }
        }
        best.1
    }

    /// Whether a view shows that its server does not know this node (it
    /// restarted without its state, or is a new machine at the address),
    /// or knows an older epoch than this node has seen.
    fn view_forgot_us(&self, view: &ClusterView) -> bool {
        view.epoch < self.epoch
            || view
                .member(self.id)
                .is_none_or(|m| m.incarnation < self.incarnation)
    }

    /// Tells the server who this node is and what it knows.
    fn rejoin(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(me) = self.view.member(self.id).cloned() else {
            log::warn!(
                "node {}: the server does not know this node, and its own record is lost too",
                self.id
            );
            return;
        };
        if !self.in_flight.contains(&Call::Rejoin) {
            log::warn!(
                "node {}: the server does not know this node (it restarted without its state?); rejoining with epoch {}, log at {}",
                self.id,
                self.epoch,
                self.local.last
            );
        }
        let coordinated = if self.role == Role::Coordinator {
            Some((self.lead_epoch, self.isr_with_pending()))
        } else {
            self.coordinated.clone()
        };
        let report = RejoinReport {
            node_id: self.id,
            incarnation: self.incarnation,
            data_addr: me.data_addr,
            beacon_addr: me.beacon_addr,
            resp_addr: me.resp_addr,
            epoch: self.epoch,
            role: self.role,
            last: self.local.last,
            holds_lease: self.role == Role::Coordinator
                && self.lease_until.is_some_and(|t| now < t),
            coordinated: coordinated.map(|(e, isr)| (e, isr.into_iter().collect())),
            view: self.view.clone(),
        };
        self.call(Call::Rejoin, ServerRequest::Rejoin(Box::new(report)), out);
    }

    fn isr_with_pending(&self) -> BTreeSet<NodeId> {
        let mut isr = self.isr.clone();
        if let Some(p) = &self.isr_pending {
            isr.extend(p.iter().copied());
        }
        isr
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
            (_, Ok(ServerResponse::NotRegistered { .. })) => {
                match call {
                    Call::Status => self.push_failures += 1,
                    Call::SetIsr => self.isr_pending = None,
                    Call::Grant => {
                        self.election = Election::Voting {
                            until: now + self.timing.heartbeat,
                        }
                    }
                    Call::View | Call::Rejoin => {}
                }
                if call == Call::Rejoin {
                    log::warn!(
                        "node {}: the server asked a rejoining node to rejoin",
                        self.id
                    );
                } else {
                    self.rejoin(now, out);
                }
            }
            (Call::Rejoin, Ok(ServerResponse::Registered { view, .. })) => {
                self.next_server = now;
                if view.member(self.id).is_some() {
                    self.adopt_view(now, view, sent, out);
                }
            }
            (Call::View, Ok(ServerResponse::View(view))) if self.view_forgot_us(&view) => {
                self.rejoin(now, out);
            }
            (Call::Status, Ok(ServerResponse::Ok(view))) => {
                self.push_failures = 0;
                if self.role == Role::Coordinator && view.epoch == self.epoch {
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
                    self.isr_version = self.isr_version.max(view.isr_version);
                }
                self.adopt_view(now, view, sent, out);
                self.reconcile_isr(out);
            }
            (Call::Grant, Ok(ServerResponse::Ok(view))) => {
                self.election = Election::Idle;
                self.adopt_view(now, view, sent, out);
            }
            (Call::View, Ok(ServerResponse::View(view))) => self.adopt_view(now, view, sent, out),
            (Call::Grant, Ok(ServerResponse::Rejected { epoch, reason })) => {
                log::info!("node {}: grant refused: {reason}", self.id);
                if epoch > self.epoch {
                    self.next_server = now;
                }
                // Most often the old lease has not run out yet: rank again
                // and ask again after one heartbeat.
                self.election = Election::Voting {
                    until: now + self.timing.heartbeat,
                };
            }
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
                match call {
                    Call::Status => self.push_failures += 1,
                    Call::SetIsr => {
                        // Retried at a later tick; nothing changed at the server
                        // that we know of, so the commit set stays as it is.
                        self.isr_pending = None;
                    }
                    Call::Grant => {
                        self.election = Election::Voting {
                            until: now + self.timing.heartbeat,
                        };
                    }
                    Call::View | Call::Rejoin => {}
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
        // Membership. A member we learn of gets a grace period before it can
        // be suspected.
        let ids: BTreeSet<NodeId> = view.members.iter().map(|m| m.node_id).collect();
        let members_changed = !self.peers.keys().copied().eq(ids.iter().copied());
        self.peers.retain(|id, _| ids.contains(id));
        for m in &view.members {
            let p = self.peers.entry(m.node_id).or_insert_with(|| Peer {
                beacon_addr: String::new(),
                incarnation: 0,
                last_heard: now,
                role: None,
                epoch: 0,
                last: m.log_position,
                applied: m.log_position,
                digest: m.digest,
            });
            p.beacon_addr = m.beacon_addr.clone();
            if m.incarnation > p.incarnation {
                // Restarted: forget what the old incarnation said.
                p.incarnation = m.incarnation;
                p.last_heard = now;
                p.role = None;
            }
        }
        let required = self.settings.required_in_sync(view.members.len());
        let epoch_changed = view.epoch > self.epoch;
        let coordinator = view.coordinator;
        self.view = view;
        if members_changed {
            out.push(Action::Publish(self.serving()));
        }
        if self.role == Role::Coordinator && !epoch_changed && coordinator == Some(self.id) {
            // The server may have dropped a member on its own (it restarted):
            // follow it, never the other way round. Only a view newer than
            // our own last change counts: a reply can be older than it.
            if self.isr_pending.is_none() && self.view.isr_version > self.isr_version {
                self.isr_version = self.view.isr_version;
                let recorded: BTreeSet<NodeId> = self.view.isr.iter().copied().collect();
                for &id in self.isr.difference(&recorded) {
                    out.push(Action::RemoveFromCommitSet(id));
                }
                self.isr = recorded;
            }
            out.push(Action::SetRequired(required));
            return;
        }
        if !epoch_changed && self.role != Role::Joining && coordinator.is_some() {
            if self.role != Role::Coordinator
                && self.following.is_none()
                && self.follow_retry_at.is_none()
            {
                self.follow_coordinator(now, out);
            }
            return;
        }
        self.epoch = self.view.epoch;
        if coordinator == Some(self.id) && epoch_changed && self.role == Role::Coordinator {
            // Granted a new epoch while coordinating an older one (a server
            // that rebuilt its view re-appointed this node): start afresh.
            self.step_down(now, out);
        }
        if coordinator == Some(self.id) {
            if self.role != Role::Coordinator {
                self.role = Role::Coordinator;
                self.lead_epoch = self.epoch;
                self.election = Election::Idle;
                self.isr = self.view.isr.iter().copied().collect();
                self.isr_version = self.view.isr_version;
                self.isr_pending = None;
                self.want_in.clear();
                self.gone.clear();
                self.connected.clear();
                self.coordinator_since = now;
                self.following = None;
                self.lease_until = Some(sent + self.timing.lease);
                self.push_failures = 0;
                self.next_beacon = now; // announce the new epoch at once
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
            // A candidate stays one while the view shows no new epoch: a view
            // without a coordinator is exactly when an election must finish.
            if self.role == Role::Joining || epoch_changed {
                self.role = Role::Replica;
                self.election = Election::Idle;
            }
            if epoch_changed {
                // A new coordinator: give it a grace period before suspicion.
                if let Some(p) = coordinator.and_then(|c| self.peers.get_mut(&c)) {
                    p.last_heard = now;
                }
                self.following = None;
            }
            self.follow_coordinator(now, out);
        }
    }

    fn follow_coordinator(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(c) = self.view.coordinator.filter(|&c| c != self.id) else {
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
        if self.following.is_none() && self.follow_failures == 0 {
            log::debug!("node {}: following {c} at epoch {}", self.id, self.epoch);
        }
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
        self.coordinated = Some((self.lead_epoch, self.isr_with_pending()));
        self.role = Role::Replica;
        self.lease_until = None;
        self.isr_pending = None;
        self.following = None;
        self.connected.clear();
        self.follow_retry_at = Some(now + self.timing.follow_retry);
        self.next_server = now;
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
            coordinator_resp_addr: coordinator
                .and_then(|c| self.view.member(c))
                .and_then(|m| m.resp_addr.clone()),
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
            resp_addr: None,
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
            isr_version: 0,
            members: ids.iter().map(|&i| member(i)).collect(),
            auth: Default::default(),
            recovery: None,
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
    fn the_late_end_of_an_old_stream_does_not_remove_a_reconnected_replica() {
        let now = Instant::now();
        let (mut core, _) = NodeCore::new(1, 1, &settings(), view(1, 1, &[1, 2], &[1, 2]), now);
        let removes = |out: &[Action]| {
            out.iter().any(|a| {
                matches!(a, Action::CallServer { request: ServerRequest::SetIsr { isr, .. }, .. } if isr == &vec![1])
            })
        };
        core.handle(now, Input::FollowerConnected(2, 7));
        // The replica reconnected before its old stream's end was reported.
        core.handle(now, Input::FollowerConnected(2, 8));
        let out = core.handle(now, Input::FollowerGone(2, 7));
        assert!(!removes(&out), "stale end removed the replica: {out:?}");
        // The current stream's end does.
        let out = core.handle(now, Input::FollowerGone(2, 8));
        assert!(removes(&out), "{out:?}");
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
        let out = core.handle(now, Input::FollowerGone(2, 1));
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
    fn a_server_that_forgot_this_node_gets_a_rejoin_with_what_it_knows() {
        let now = Instant::now();
        let (mut core, _) = NodeCore::new(1, 1, &settings(), view(3, 1, &[1, 2], &[1, 2]), now);
        // The coordinator's push is answered by a server that lost its state.
        let out = core.handle(
            now,
            Input::ServerReply {
                call: Call::Status,
                sent: now,
                reply: Ok(ServerResponse::NotRegistered { epoch: 0 }),
            },
        );
        assert_eq!(
            core.role(),
            Role::Coordinator,
            "it does not step down for that"
        );
        let report = out
            .iter()
            .find_map(|a| match a {
                Action::CallServer {
                    call: Call::Rejoin,
                    request: ServerRequest::Rejoin(r),
                } => Some(r.clone()),
                _ => None,
            })
            .expect("rejoins");
        assert_eq!(
            (report.node_id, report.epoch, report.role),
            (1, 3, Role::Coordinator)
        );
        assert!(report.holds_lease);
        assert_eq!(report.coordinated, Some((3, vec![1, 2])));
        assert_eq!(report.data_addr, "127.0.0.1:7001");

        // A replica sees a view without itself.
        let (mut replica, _) = NodeCore::new(2, 1, &settings(), view(3, 1, &[1, 2], &[1, 2]), now);
        let out = replica.handle(
            now,
            Input::ServerReply {
                call: Call::View,
                sent: now,
                reply: Ok(ServerResponse::View(ClusterView::default())),
            },
        );
        assert!(
            out.iter().any(|a| matches!(
                a,
                Action::CallServer {
                    call: Call::Rejoin,
                    ..
                }
            )),
            "{out:?}"
        );
        assert_eq!(replica.epoch(), 3, "the forgetful view is not adopted");
    }

    #[test]
    fn a_coordinator_granted_a_new_epoch_starts_it_afresh() {
        let now = Instant::now();
        let (mut core, _) = NodeCore::new(1, 1, &settings(), view(3, 1, &[1, 2], &[1, 2]), now);
        let out = core.handle(
            now,
            Input::ServerReply {
                call: Call::Status,
                sent: now,
                reply: Ok(ServerResponse::Ok(view(4, 1, &[1, 2], &[1, 2]))),
            },
        );
        let down = out
            .iter()
            .position(|a| *a == Action::StepDown)
            .expect("steps down");
        let up = out
            .iter()
            .position(|a| matches!(a, Action::BecomeCoordinator { epoch: 4, .. }))
            .expect("takes epoch 4");
        assert!(down < up);
        assert_eq!((core.role(), core.epoch()), (Role::Coordinator, 4));
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
            seq: 1,
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

#[cfg(test)]
#[path = "node_election_tests.rs"]
mod election_tests;
