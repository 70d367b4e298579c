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
//! This file holds the core's state, its inputs and outputs, and the
//! dispatch of inputs; each concept has its own file:
//! * `detector.rs`: the peers table, beacons, who is suspected;
//! * `election.rs`: the bully election with a data-aware rank;
//! * `isr.rs`: the in-sync set at the coordinator and its commit-set actions;
//! * `status.rs`: status pushes, the lease, server replies, rejoining;
//! * `view.rs`: adopting the server's view, and the role changes it implies.
//!
//! The core never reads the clock, opens a socket or touches the data path.

use crate::config::NodeSettings;
use crate::types::{Epoch, LogPos, NodeId, Role};
use crate::wire::{Beacon, ClusterView, ServerRequest, ServerResponse};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
// The tests (`election_tests` too) build beacons through `use super::*`.
#[cfg(test)]
use crate::wire::{MAGIC, PROTOCOL_VERSION};

mod detector;
mod election;
mod handoff;
mod isr;
mod status;
mod view;

pub use election::Election;

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
    /// Hand the coordinator role to an in-sync replica (see `handoff.rs`).
    Handoff,
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Call::Status => "status push",
            Call::View => "view request",
            Call::SetIsr => "in-sync set change",
            Call::Grant => "grant request",
            Call::Rejoin => "rejoin",
            Call::Handoff => "handoff request",
        })
    }
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
    /// Replica `.0` said on its stream `.1` that it is leaving (shutting
    /// down): take it out of the in-sync set, then release it.
    FollowerLeaving(NodeId, u64),
    /// This node is shutting down: it starts no election and follows no new
    /// coordinator (a replica's stream says it is leaving).
    Leave,
    /// This replica's stream from the coordinator ended. `refused`: the
    /// coordinator's port refused the connection (its process is gone).
    /// `expected`: normal operation ends streams this way (the coordinator
    /// did not list this node yet, or is no longer coordinator).
    FollowLost {
        reason: String,
        refused: bool,
        expected: bool,
    },
    /// Hand the coordinator role over (to `to`, or the best in-sync
    /// replica): SIGTERM, `dkv-client failover`.
    Handoff {
        to: Option<NodeId>,
    },
    /// The data path held new writes and saw the ones appended committed
    /// and the handoff's target holding them all (`true`), or gave up.
    HandoffReady(bool),
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
    /// The RESP addresses of the members that serve one (ROLE, INFO
    /// replication); shared, so copying a `Serving` per request stays cheap.
    pub resp_addrs: std::sync::Arc<[(NodeId, String)]>,
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
    /// End the stream of a replica that is leaving and is out of the
    /// recorded in-sync set (after its `RemoveFromCommitSet`, if any).
    ReleaseFollower(NodeId),
    SetRequired(usize),
    Publish(Serving),
    /// `target: Some`: make new writes wait, and report
    /// [`Input::HandoffReady`] once every appended write is committed and
    /// `target` holds them all. `target: None`: let the held writes go; they
    /// are answered "not the coordinator, try `successor`" if this node no
    /// longer coordinates.
    HoldWrites {
        target: Option<NodeId>,
        successor: Option<String>,
    },
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
    /// Members added to the commit set whose in-sync membership the server
    /// has not confirmed (their `SetIsr` is pending, or failed).
    commit_extra: BTreeSet<NodeId>,
    /// Replicas with a replication stream to this coordinator, and its number.
    connected: BTreeMap<NodeId, u64>,
    /// Connected replicas that said they are leaving: released once neither
    /// the recorded nor a pending in-sync set holds them.
    leaving: BTreeSet<NodeId>,
    /// This node is shutting down (see [`Input::Leave`]).
    leaving_self: bool,
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
    /// Streams refused in a row as "expected" (the new coordinator did not
    /// know it was one yet) since the coordinator last changed: they are
    /// retried quickly at first, so a handoff's replicas follow within
    /// milliseconds.
    follow_refusals: u32,
    election: Election,
    /// Grant requests and deferrals of the current election: the first is
    /// logged at info, the rest at debug.
    election_tries: u32,
    /// Set while the answer to this node's grant request is adopted: only
    /// that answer carries a lease (see `become_coordinator`).
    grant_answer: bool,
    /// The in-sync replica this coordinator is handing its role to.
    handoff: Option<NodeId>,
    /// Server calls failing since this instant, and how many (for one
    /// warning per [`OUTAGE_WARN_EVERY`], not one per call).
    server_outage: Option<Outage>,
}

/// A run of failed server calls.
#[derive(Clone, Copy, Debug)]
struct Outage {
    since: Instant,
    failed: u64,
    warned: Instant,
}

/// While the server stays unreachable, one warning this often.
const OUTAGE_WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

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
            commit_extra: BTreeSet::new(),
            connected: BTreeMap::new(),
            leaving: BTreeSet::new(),
            leaving_self: false,
            coordinator_since: registered_at,
            lease_until: None,
            push_failures: 0,
            coordinated: None,
            lead_epoch: 0,
            following: None,
            follow_retry_at: None,
            follow_failures: 0,
            follow_refusals: 0,
            election: Election::Idle,
            election_tries: 0,
            grant_answer: false,
            handoff: None,
            server_outage: None,
        };
        let mut out = Vec::new();
        // A registration that names this node coordinator founded the
        // cluster: the server granted epoch 1 when it got the request sent
        // at `registered_at`, as for a grant.
        core.grant_answer = true;
        core.adopt_view(registered_at, view, registered_at, &mut out);
        core.grant_answer = false;
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

    /// The cluster view this node last adopted (metrics read its sizes).
    pub fn view(&self) -> &ClusterView {
        &self.view
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
                self.leaving.remove(&id);
            }
            Input::FollowerLeaving(id, stream) => self.follower_leaving(id, stream, &mut out),
            Input::Leave => self.leaving_self = true,
            Input::FollowerCaughtUp(id) => self.follower_caught_up(id, &mut out),
            Input::FollowerGone(id, stream) => self.follower_gone(id, stream, &mut out),
            Input::FollowLost {
                reason,
                refused,
                expected,
            } => self.follow_lost(now, reason, refused, expected, &mut out),
            Input::Handoff { to } => self.start_handoff(now, to, &mut out),
            Input::HandoffReady(ready) => self.handoff_ready(ready, &mut out),
        }
        out
    }

    /// Time passed: beacons, failure detection and the in-sync set at the
    /// coordinator, the lease, the server, the election, following.
    fn tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.send_beacons(now, out);
        if self.role == Role::Coordinator {
            self.detect_replica_failures(now);
            // Also retries an in-sync change whose server call failed.
            self.reconcile_isr(out);
            self.check_lease(now, out);
        }
        self.poll_server(now, out);
        if self.role != Role::Coordinator && !self.leaving_self {
            self.election_tick(now, out);
        }
        self.retry_follow(now, out);
    }

    /// Sends a server call unless one of its kind is in flight.
    fn call(&mut self, call: Call, request: ServerRequest, out: &mut Vec<Action>) {
        if self.in_flight.insert(call) {
            out.push(Action::CallServer { call, request });
        }
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
            resp_addrs: self
                .view
                .members
                .iter()
                .filter_map(|m| Some((m.node_id, m.resp_addr.clone()?)))
                .collect(),
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

    /// The server keeps it (and asserts it there); the node checks it in
    /// debug builds when it takes the role.
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "not in the recorded in-sync set")]
    fn a_coordinator_outside_its_recorded_in_sync_set_is_a_bug() {
        let now = Instant::now();
        let _ = NodeCore::new(1, 1, &settings(), view(1, 1, &[2], &[1, 2]), now);
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
    fn a_leaving_replica_is_released_only_after_the_server_recorded_it_out() {
        let now = Instant::now();
        let (mut core, _) =
            NodeCore::new(1, 1, &settings(), view(1, 1, &[1, 2, 3], &[1, 2, 3]), now);
        core.handle(now, Input::FollowerConnected(2, 5));
        core.handle(now, Input::FollowerConnected(3, 6));
        // A leave on an old stream counts for nothing.
        assert!(core.handle(now, Input::FollowerLeaving(2, 4)).is_empty());
        let out = core.handle(now, Input::FollowerLeaving(2, 5));
        assert!(
            matches!(
                &out[..],
                [Action::CallServer { call: Call::SetIsr, request: ServerRequest::SetIsr { isr, .. } }] if isr == &vec![1, 3]
            ),
            "{out:?}"
        );
        // Still acknowledging: a caught-up signal does not bring it back.
        assert!(core.handle(now, Input::FollowerCaughtUp(2)).is_empty());
        let out = core.handle(
            now,
            Input::ServerReply {
                call: Call::SetIsr,
                sent: now,
                reply: Ok(ServerResponse::Ok(view(1, 1, &[1, 3], &[1, 2, 3]))),
            },
        );
        let remove = out
            .iter()
            .position(|a| *a == Action::RemoveFromCommitSet(2));
        let release = out.iter().position(|a| *a == Action::ReleaseFollower(2));
        assert!(
            matches!((remove, release), (Some(r), Some(l)) if r < l),
            "{out:?}"
        );
        // Its stream ends; when it comes back it may be caught up again.
        core.handle(now, Input::FollowerGone(2, 5));
        core.handle(now, Input::FollowerConnected(2, 9));
        let out = core.handle(now, Input::FollowerCaughtUp(2));
        assert_eq!(out[0], Action::AddToCommitSet(2));
    }

    #[test]
    fn a_replica_outside_the_in_sync_set_is_released_at_once() {
        let now = Instant::now();
        let (mut core, _) = NodeCore::new(1, 1, &settings(), view(1, 1, &[1], &[1, 2]), now);
        core.handle(now, Input::FollowerConnected(2, 5));
        let out = core.handle(now, Input::FollowerLeaving(2, 5));
        assert_eq!(out, vec![Action::ReleaseFollower(2)]);
    }

    #[test]
    fn a_leaving_node_starts_no_election() {
        let now = Instant::now();
        let (mut core, _) = NodeCore::new(2, 1, &settings(), view(1, 1, &[1, 2], &[1, 2]), now);
        core.handle(now, Input::Leave);
        // The coordinator falls silent far past the failure timeout.
        let later = now + Duration::from_secs(30);
        let out = core.handle(later, Input::Tick(LocalStatus::default()));
        assert!(
            !out.iter().any(|a| matches!(
                a,
                Action::CallServer {
                    call: Call::Grant,
                    ..
                }
            )),
            "{out:?}"
        );
        assert_eq!(core.election(), Election::Idle);
    }

    #[test]
    fn a_view_naming_this_node_coordinator_gives_no_lease_until_a_push_renews_one() {
        let now = Instant::now();
        let (mut core, _) = NodeCore::new(2, 1, &settings(), view(1, 1, &[1, 2], &[1, 2]), now);
        // The grant's answer was lost; a later view call finds this node
        // coordinator of epoch 2, granted at some earlier, unknown time.
        let later = now + Duration::from_millis(300);
        let out = core.handle(
            later,
            Input::ServerReply {
                call: Call::View,
                sent: later,
                reply: Ok(ServerResponse::View(view(2, 2, &[2], &[1, 2]))),
            },
        );
        assert_eq!(core.role(), Role::Coordinator);
        let published: Vec<_> = out
            .iter()
            .filter_map(|a| match a {
                Action::Publish(s) => Some(s.lease_until),
                _ => None,
            })
            .collect();
        assert!(
            published.iter().all(|l| l.is_none()),
            "served on a lease the server may not have: {published:?}"
        );
        // It pushes its status at once; the answer renews a lease.
        let out = core.handle(later, Input::Tick(LocalStatus::default()));
        assert!(out.iter().any(|a| matches!(
            a,
            Action::CallServer {
                call: Call::Status,
                ..
            }
        )));
        let out = core.handle(
            later,
            Input::ServerReply {
                call: Call::Status,
                sent: later,
                reply: Ok(ServerResponse::Ok(view(2, 2, &[2], &[1, 2]))),
            },
        );
        assert!(out
            .iter()
            .any(|a| matches!(a, Action::Publish(s) if s.lease_until.is_some_and(|t| t > later))));
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
#[path = "../node_election_tests.rs"]
mod election_tests;
