//! Election and failure-detector scenarios for [`NodeCore`].
//!
//! Time is simulated: every scenario starts at `t0` and advances in
//! milliseconds; nothing sleeps. A small harness, [`Sim`], ticks a few cores,
//! carries their beacons to one another (unless a link is cut) and, when it
//! has a [`ServerCore`], answers their server calls at once, except the kinds
//! of call a test holds back to answer by hand. Nodes that are not simulated
//! (typically the old coordinator) are heard only through beacons a test
//! injects.

use super::*;
use crate::core::server::{DurableView, ServerCore};
use crate::wire::MemberInfo;
use std::collections::VecDeque;

/// Default timings (ms) the scenarios are written against; see
/// `default_timings_are_the_ones_the_scenarios_assume`.
const HEARTBEAT: u64 = 50;
const FAILURE_TIMEOUT: u64 = 250;
const VOTING_WAIT: u64 = 100;
const ELECTION_WAIT: u64 = 250;
const UPDATE_INTERVAL: u64 = 50;
/// The harness ticks every node this often (ms).
const TICK: u64 = 10;

fn settings() -> NodeSettings {
    NodeSettings::default()
}

fn pos(epoch: Epoch, index: u64) -> LogPos {
    LogPos::new(epoch, index)
}

fn data_addr(id: NodeId) -> String {
    format!("127.0.0.1:{}", 7000 + id)
}

fn beacon_addr(id: NodeId) -> String {
    format!("127.0.0.1:{}", 8000 + id)
}

/// The node a beacon address of [`beacon_addr`] belongs to.
fn beacon_addr_owner(addr: &str) -> NodeId {
    let port: NodeId = addr.rsplit(':').next().unwrap().parse().unwrap();
    port - 8000
}

fn member(id: NodeId) -> MemberInfo {
    MemberInfo {
        node_id: id,
        incarnation: 1,
        data_addr: data_addr(id),
        beacon_addr: beacon_addr(id),
        resp_addr: None,
        role: Role::Replica,
        in_sync: false,
        log_position: LogPos::ZERO,
        digest: 0,
        last_status_ms: None,
    }
}

fn view(epoch: Epoch, coordinator: NodeId, isr: &[NodeId], ids: &[NodeId]) -> ClusterView {
    ClusterView {
        epoch,
        coordinator: Some(coordinator),
        isr: isr.to_vec(),
        isr_version: 0,
        members: ids
            .iter()
            .map(|&id| MemberInfo {
                in_sync: isr.contains(&id),
                ..member(id)
            })
            .collect(),
        auth: Default::default(),
        recovery: None,
    }
}

fn beacon(from: NodeId, epoch: Epoch, role: Role, last: LogPos) -> Beacon {
    Beacon {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        from,
        incarnation: 1,
        epoch,
        role,
        last,
        applied: last,
        digest: 0,
        seq: 0,
    }
}

fn is_grant_request(a: &Action) -> bool {
    matches!(
        a,
        Action::CallServer {
            call: Call::Grant,
            request: ServerRequest::RequestGrant { .. },
        }
    )
}

/// A server on which `ids` registered at `t0` (the first one became the
/// coordinator of epoch 1, with a lease from `t0`) and that recorded `isr`
/// as the in-sync set. Returns the server and its view.
fn server_with(t0: Instant, ids: &[NodeId], isr: &[NodeId]) -> (ServerCore, ClusterView) {
    let mut server = ServerCore::new(DurableView::default(), settings().lease_at_server(), t0);
    for &id in ids {
        let (resp, _) = server.handle(
            t0,
            ServerRequest::Register {
                node_id: Some(id),
                incarnation: 1,
                data_addr: data_addr(id),
                beacon_addr: beacon_addr(id),
                last: LogPos::ZERO,
                resp_addr: None,
            },
        );
        assert!(
            matches!(resp, ServerResponse::Registered { node_id, .. } if node_id == id),
            "{resp:?}"
        );
    }
    let (resp, _) = server.handle(
        t0,
        ServerRequest::SetIsr {
            from: ids[0],
            epoch: 1,
            isr: isr.to_vec(),
        },
    );
    let ServerResponse::Ok(view) = resp else {
        panic!("{resp:?}")
    };
    assert_eq!((view.epoch, view.coordinator), (1, Some(ids[0])));
    assert_eq!(view.isr, isr);
    (server, view)
}

/// A server call a test chose to answer by hand.
struct Held {
    ms: u64,
    node: NodeId,
    call: Call,
    request: ServerRequest,
}

/// A few node cores on a simulated clock and network.
struct Sim {
    t0: Instant,
    now_ms: u64,
    nodes: BTreeMap<NodeId, NodeCore>,
    local: BTreeMap<NodeId, LocalStatus>,
    /// Beacons from `.0` to `.1` are lost.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Answers server calls at once when present; without it calls stay
    /// unanswered (in flight).
    server: Option<ServerCore>,
    /// Calls of these kinds are kept in `held` instead of being answered.
    hold: BTreeSet<Call>,
    held: Vec<Held>,
    /// Every action any node emitted: (ms, node, action).
    log: Vec<(u64, NodeId, Action)>,
    /// Every reply the harness's server gave: (ms, node, call, reply).
    replies: Vec<(u64, NodeId, Call, ServerResponse)>,
    /// When a beacon from `.0` last reached `.1` (ms).
    heard: BTreeMap<(NodeId, NodeId), u64>,
}

/// The harness's way of doing one node's actions.
struct HarnessIo<'a> {
    from: NodeId,
    now: Instant,
    now_ms: u64,
    server: Option<&'a mut ServerCore>,
    hold: &'a BTreeSet<Call>,
    held: &'a mut Vec<Held>,
    log: &'a mut Vec<(u64, NodeId, Action)>,
    replies: &'a mut Vec<(u64, NodeId, Call, ServerResponse)>,
    /// Beacons to deliver once the batch ran: (to, beacon).
    beacons: Vec<(NodeId, Beacon)>,
}

impl crate::core::exec::NodeIo for HarnessIo<'_> {
    fn hold_writes(&mut self, _target: Option<NodeId>, _successor: Option<String>) {}

    fn saw(&mut self, a: &Action) {
        self.log.push((self.now_ms, self.from, a.clone()));
    }

    fn send_beacon(&mut self, to: Vec<String>, beacon: Beacon) {
        for addr in &to {
            self.beacons.push((beacon_addr_owner(addr), beacon.clone()));
        }
    }

    fn call_server(&mut self, call: Call, request: ServerRequest) -> crate::core::exec::Called {
        use crate::core::exec::Called;
        if self.hold.contains(&call) {
            self.held.push(Held {
                ms: self.now_ms,
                node: self.from,
                call,
                request,
            });
            return Called::Sent;
        }
        let Some(server) = self.server.as_mut() else {
            return Called::Sent; // in flight forever
        };
        let (reply, _) = server.handle(self.now, request);
        self.replies
            .push((self.now_ms, self.from, call, reply.clone()));
        Called::Answered(reply)
    }

    fn become_coordinator(&mut self, _: Epoch, _: Vec<NodeId>, _: usize) {}
    fn step_down(&mut self) {}
    fn follow(&mut self, _: NodeId, _: String, _: Epoch) {}
    fn add_to_commit_set(&mut self, _: NodeId) -> bool {
        true // no data path: every replica is caught up
    }
    fn remove_from_commit_set(&mut self, _: NodeId) {}
    fn release_follower(&mut self, _: NodeId) {}
    fn set_required(&mut self, _: usize) {}
    fn publish(&mut self, _: Serving) {}
}

impl Sim {
    fn new(t0: Instant) -> Self {
        Sim {
            t0,
            now_ms: 0,
            nodes: BTreeMap::new(),
            local: BTreeMap::new(),
            cut: BTreeSet::new(),
            server: None,
            hold: BTreeSet::new(),
            held: Vec::new(),
            log: Vec::new(),
            replies: Vec::new(),
            heard: BTreeMap::new(),
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    fn now(&self) -> Instant {
        self.at(self.now_ms)
    }

    fn advance_to(&mut self, ms: u64) {
        assert!(
            ms >= self.now_ms,
            "time goes forward: {ms} < {}",
            self.now_ms
        );
        self.now_ms = ms;
    }

    /// Starts node `id` from `view` now; its log ends at `last`.
    fn add(&mut self, id: NodeId, view: ClusterView, last: LogPos) {
        let (core, out) = NodeCore::new(id, 1, &settings(), view, self.now());
        self.nodes.insert(id, core);
        self.local.insert(
            id,
            LocalStatus {
                last,
                applied: last,
                digest: 0,
            },
        );
        self.process(id, out);
    }

    fn node(&self, id: NodeId) -> &NodeCore {
        &self.nodes[&id]
    }

    /// The node's process dies: it neither ticks nor hears beacons any more.
    fn kill(&mut self, id: NodeId) {
        self.nodes.remove(&id);
    }

    /// Ticks every node at `ms`; returns what was emitted meanwhile.
    fn step(&mut self, ms: u64) -> Vec<(NodeId, Action)> {
        self.advance_to(ms);
        let start = self.log.len();
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            let local = self.local[&id];
            let now = self.now();
            let out = self
                .nodes
                .get_mut(&id)
                .unwrap()
                .handle(now, Input::Tick(local));
            self.process(id, out);
        }
        self.log[start..]
            .iter()
            .map(|(_, id, a)| (*id, a.clone()))
            .collect()
    }

    /// Steps every `TICK` ms up to and including `ms`.
    fn run_until(&mut self, ms: u64) {
        while self.now_ms + TICK <= ms {
            self.step(self.now_ms + TICK);
        }
    }

    /// Like [`Sim::run_until`]; returns every node node `id` deferred to on
    /// the way (as seen after each step).
    fn run_watching_deferrals(&mut self, ms: u64, id: NodeId) -> BTreeSet<NodeId> {
        let mut to_seen = BTreeSet::new();
        while self.now_ms + TICK <= ms {
            self.step(self.now_ms + TICK);
            if let Election::Deferred { to, .. } = self.node(id).election() {
                to_seen.insert(to);
            }
        }
        to_seen
    }

    /// Feeds `input` to node `id` at `ms`; returns what node `id` emitted
    /// (including after replies the harness's server gave meanwhile).
    fn input(&mut self, ms: u64, id: NodeId, input: Input) -> Vec<Action> {
        self.advance_to(ms);
        let start = self.log.len();
        let now = self.now();
        let out = self.nodes.get_mut(&id).unwrap().handle(now, input);
        self.process(id, out);
        self.log[start..]
            .iter()
            .filter(|(_, n, _)| *n == id)
            .map(|(_, _, a)| a.clone())
            .collect()
    }

    /// A beacon from a node outside the simulation reaches `to` at `ms`.
    fn inject(&mut self, ms: u64, to: NodeId, b: Beacon) {
        self.input(ms, to, Input::Beacon(b));
    }

    /// Hands a held request to the server now and returns its answer.
    fn answer(&mut self, held: &Held) -> ServerResponse {
        let now = self.now();
        self.server
            .as_mut()
            .expect("a server")
            .handle(now, held.request.clone())
            .0
    }

    /// Executes actions through the driver's own executor
    /// ([`crate::core::exec::execute`]) with [`HarnessIo`]: beacons travel
    /// (each delivery's actions run next), server calls are answered (or
    /// held, or left in flight).
    fn process(&mut self, id: NodeId, out: Vec<Action>) {
        let now = self.now();
        let mut queue: VecDeque<(NodeId, Vec<Action>)> = VecDeque::from([(id, out)]);
        while let Some((from, actions)) = queue.pop_front() {
            let Some(mut core) = self.nodes.remove(&from) else {
                continue;
            };
            let mut io = HarnessIo {
                from,
                now,
                now_ms: self.now_ms,
                server: self.server.as_mut(),
                hold: &self.hold,
                held: &mut self.held,
                log: &mut self.log,
                replies: &mut self.replies,
                beacons: Vec::new(),
            };
            crate::core::exec::execute(&mut core, now, actions, &mut io);
            let beacons = std::mem::take(&mut io.beacons);
            self.nodes.insert(from, core);
            for (target, beacon) in beacons {
                if self.cut.contains(&(from, target)) {
                    continue;
                }
                if let Some(core) = self.nodes.get_mut(&target) {
                    let more = core.handle(now, Input::Beacon(beacon));
                    self.heard.insert((from, target), self.now_ms);
                    queue.push_back((target, more));
                }
            }
        }
    }

    /// Everything node `id` emitted, with the ms.
    fn actions_of(&self, id: NodeId) -> impl Iterator<Item = (u64, &Action)> + '_ {
        self.log
            .iter()
            .filter(move |(_, n, _)| *n == id)
            .map(|(ms, _, a)| (*ms, a))
    }

    /// The grant requests node `id` emitted: (ms, request).
    fn grant_requests(&self, id: NodeId) -> Vec<(u64, ServerRequest)> {
        self.actions_of(id)
            .filter_map(|(ms, a)| match a {
                Action::CallServer {
                    call: Call::Grant,
                    request,
                } => Some((ms, request.clone())),
                _ => None,
            })
            .collect()
    }
}

/// The scenarios below count in the default timings; if a default changes,
/// this fails first and says which.
#[test]
fn default_timings_are_the_ones_the_scenarios_assume() {
    let t = Timing::from_settings(&settings());
    let ms = Duration::from_millis;
    assert_eq!(t.heartbeat, ms(HEARTBEAT));
    assert_eq!(t.failure_timeout, ms(FAILURE_TIMEOUT));
    assert_eq!(t.voting_wait, ms(VOTING_WAIT));
    assert_eq!(t.election_wait, ms(ELECTION_WAIT));
    assert_eq!(t.update_interval, ms(UPDATE_INTERVAL));
    assert_eq!(settings().lease(), ms(250));
}

/// Failure detector. Replica 2 (coordinator 1, ISR [1,2,3]) hears 1's beacon
/// every heartbeat for 2 s and never starts an election. Then the beacons
/// stop: 2 stays a replica until exactly failure-timeout after the last
/// beacon, becomes a candidate at that instant, and beacons its candidacy at
/// the next tick.
#[test]
fn replica_suspects_the_coordinator_only_after_failure_timeout_of_silence() {
    let mut sim = Sim::new(Instant::now());
    sim.add(2, view(1, 1, &[1, 2, 3], &[1, 2, 3]), pos(1, 5));
    assert_eq!(sim.node(2).role(), Role::Replica);

    let mut last_beacon = 0;
    for ms in (TICK..=2000).step_by(TICK as usize) {
        if ms % HEARTBEAT == 0 {
            sim.inject(ms, 2, beacon(1, 1, Role::Coordinator, pos(1, 5)));
            last_beacon = ms;
        }
        sim.step(ms);
        assert_eq!(sim.node(2).role(), Role::Replica, "at {ms} ms");
        assert_eq!(sim.node(2).election(), Election::Idle, "at {ms} ms");
    }
    assert!(sim.grant_requests(2).is_empty());
    assert!(!sim
        .actions_of(2)
        .any(|(_, a)| matches!(a, Action::Publish(s) if s.role == Role::Candidate)));

    // Silence, ticking every millisecond.
    let suspect_at = last_beacon + FAILURE_TIMEOUT;
    for ms in last_beacon + 1..suspect_at {
        sim.step(ms);
        assert_eq!(
            sim.node(2).role(),
            Role::Replica,
            "candidate only {} ms after the last beacon",
            ms - last_beacon
        );
        assert_eq!(sim.node(2).election(), Election::Idle);
    }
    let out = sim.step(suspect_at);
    assert_eq!(sim.node(2).role(), Role::Candidate);
    assert_eq!(
        sim.node(2).election(),
        Election::Voting {
            until: sim.at(suspect_at + VOTING_WAIT)
        }
    );
    assert!(
        out.iter()
            .any(|(_, a)| matches!(a, Action::Publish(s) if s.role == Role::Candidate)),
        "{out:?}"
    );
    assert!(!out.iter().any(|(_, a)| is_grant_request(a)), "{out:?}");
    let out = sim.step(suspect_at + 1);
    assert!(
        out.iter().any(|(_, a)| matches!(
            a,
            Action::SendBeacon { beacon, .. } if beacon.role == Role::Candidate && beacon.from == 2
        )),
        "the candidacy is beaconed at once: {out:?}"
    );
}

/// Ranking with a tie. Coordinator 1 goes silent; in-sync replicas 2 and 3
/// hear each other and have the same last log position. The tie goes to the
/// higher id: 3 asks the server for epoch 2 after voting-wait, 2 defers to 3
/// and, while 3 keeps beaconing its candidacy, never asks itself.
#[test]
fn equal_log_positions_rank_the_higher_id_first() {
    let mut sim = Sim::new(Instant::now());
    let v = view(1, 1, &[1, 2, 3], &[1, 2, 3]);
    sim.add(2, v.clone(), pos(1, 7));
    sim.add(3, v, pos(1, 7));

    let decide_at = FAILURE_TIMEOUT + VOTING_WAIT;
    sim.run_until(decide_at - TICK);
    assert!(sim.grant_requests(3).is_empty(), "not before voting-wait");
    assert_eq!(sim.node(2).role(), Role::Candidate);
    assert_eq!(sim.node(3).role(), Role::Candidate);

    sim.run_until(decide_at + TICK);
    assert_eq!(
        sim.grant_requests(3),
        vec![(
            decide_at,
            ServerRequest::RequestGrant {
                candidate: 3,
                epoch: 1,
                last: pos(1, 7),
            }
        )]
    );
    assert_eq!(sim.node(3).election(), Election::Requesting);
    assert!(
        matches!(sim.node(2).election(), Election::Deferred { to: 3, .. }),
        "{:?}",
        sim.node(2).election()
    );

    // 3 is alive (its grant is simply slow): 2 keeps deferring to it.
    let deferred_to = sim.run_watching_deferrals(2000, 2);
    assert!(sim.grant_requests(2).is_empty());
    assert_eq!(deferred_to, BTreeSet::from([3]));
    assert_eq!(sim.node(2).role(), Role::Candidate);
    assert_eq!(
        sim.grant_requests(3).len(),
        1,
        "one request, still in flight"
    );
}

/// Ranking by log position. Epoch 2's coordinator 1 goes silent; in-sync 2
/// holds entries up to 2.3, in-sync 3 up to 1.9. Positions order by
/// (epoch, index), so 2 is ahead despite the smaller index, and the lower id
/// wins: 2 asks for epoch 3 and 3 defers to 2.
#[test]
fn the_most_complete_log_ranks_first_regardless_of_id() {
    let mut sim = Sim::new(Instant::now());
    let v = view(2, 1, &[1, 2, 3], &[1, 2, 3]);
    sim.add(2, v.clone(), pos(2, 3));
    sim.add(3, v, pos(1, 9));
    let deferred_to = sim.run_watching_deferrals(1500, 3);
    assert_eq!(
        sim.grant_requests(2),
        vec![(
            FAILURE_TIMEOUT + VOTING_WAIT,
            ServerRequest::RequestGrant {
                candidate: 2,
                epoch: 2,
                last: pos(2, 3),
            }
        )]
    );
    assert!(sim.grant_requests(3).is_empty());
    assert_eq!(deferred_to, BTreeSet::from([2]));
}

/// A member outside the in-sync set cannot take over. Coordinator 1 goes
/// silent; 4 is a member but not in the ISR [1,2,3], with the longest log of
/// all. 4 never becomes a candidate nor asks for the grant, and the in-sync
/// replicas do not rank it either: 3 asks, 2 defers to 3.
#[test]
fn a_member_outside_the_isr_never_runs_for_coordinator() {
    let mut sim = Sim::new(Instant::now());
    let v = view(1, 1, &[1, 2, 3], &[1, 2, 3, 4]);
    sim.add(2, v.clone(), pos(1, 7));
    sim.add(3, v.clone(), pos(1, 7));
    sim.add(4, v, pos(1, 99));
    let mut deferred_to = BTreeSet::new();
    for ms in (TICK..=2000).step_by(TICK as usize) {
        sim.step(ms);
        assert_eq!(sim.node(4).role(), Role::Replica, "at {ms} ms");
        assert_eq!(sim.node(4).election(), Election::Idle, "at {ms} ms");
        if let Election::Deferred { to, .. } = sim.node(2).election() {
            deferred_to.insert(to);
        }
    }
    assert!(sim.grant_requests(4).is_empty());
    assert!(!sim
        .actions_of(4)
        .any(|(_, a)| matches!(a, Action::Publish(s) if s.role == Role::Candidate)));
    assert_eq!(sim.grant_requests(3).len(), 1);
    assert!(sim.grant_requests(2).is_empty());
    assert_eq!(deferred_to, BTreeSet::from([3]), "2 defers to 3 only");
}

/// A higher-ranked node that answers and then dies. Coordinator 1 goes
/// silent; 2 defers to 3 (3's candidate beacons arrive, it ranks higher by
/// id). 3 then dies while its grant is still unanswered. When the deferral
/// (election-wait) runs out 2 votes again, and once 3 is suspected
/// (failure-timeout after its last beacon) 2 asks for the grant itself — not
/// before, and without another full round of waiting beyond that.
#[test]
fn deferring_node_takes_over_when_the_higher_ranked_candidate_dies() {
    let mut sim = Sim::new(Instant::now());
    let v = view(1, 1, &[1, 2, 3], &[1, 2, 3]);
    sim.add(2, v.clone(), pos(1, 7));
    sim.add(3, v, pos(1, 7));

    sim.run_until(FAILURE_TIMEOUT + VOTING_WAIT);
    let Election::Deferred { until, to: 3 } = sim.node(2).election() else {
        panic!("2 defers to 3: {:?}", sim.node(2).election())
    };
    let deferred_at = sim.now_ms;
    assert_eq!(until, sim.at(deferred_at + ELECTION_WAIT));
    assert!(
        sim.actions_of(3).any(|(_, a)| matches!(
            a,
            Action::SendBeacon { beacon, .. } if beacon.role == Role::Candidate
        )),
        "3 beaconed its candidacy"
    );

    // 3 dies shortly before 2's deferral runs out.
    sim.run_until(deferred_at + ELECTION_WAIT - 2 * TICK);
    sim.kill(3);
    let last_heard = sim.heard[&(3, 2)];
    let suspected_at = last_heard + FAILURE_TIMEOUT;
    assert!(
        suspected_at > deferred_at + ELECTION_WAIT,
        "3 is still trusted when 2 first votes again"
    );

    // 2 votes again once its deferral is over.
    sim.run_until(deferred_at + ELECTION_WAIT + TICK);
    assert!(
        matches!(sim.node(2).election(), Election::Voting { .. }),
        "{:?}",
        sim.node(2).election()
    );

    sim.run_until(suspected_at + ELECTION_WAIT + VOTING_WAIT + 2 * TICK);
    let requests = sim.grant_requests(2);
    let Some((asked_at, request)) = requests.first() else {
        panic!("2 never asked for the grant");
    };
    assert_eq!(
        request,
        &ServerRequest::RequestGrant {
            candidate: 2,
            epoch: 1,
            last: pos(1, 7),
        }
    );
    assert!(
        *asked_at >= suspected_at,
        "asked at {asked_at} ms while 3 (last heard at {last_heard} ms) was not yet suspected"
    );
    assert!(
        *asked_at <= suspected_at + ELECTION_WAIT + VOTING_WAIT,
        "asked only at {asked_at} ms; 3 was suspected from {suspected_at} ms"
    );
    assert_eq!(sim.node(2).election(), Election::Requesting);
    assert_eq!(requests.len(), 1);
}

/// Two candidates at once. Coordinator 1 goes silent and 2 and 3 stop
/// hearing each other, so each ranks itself highest and both ask for epoch 2.
/// The server (whose lease for 1 has run out) grants it to exactly one. The
/// winner becomes coordinator of epoch 2; the loser, after its Rejected
/// reply and a later view, follows the winner at epoch 2 and stays a replica
/// once they hear each other again. Run with both arrival orders.
#[test]
fn of_two_simultaneous_candidates_the_server_makes_exactly_one_coordinator() {
    for first in [2, 3] {
        let t0 = Instant::now();
        let (server, v) = server_with(t0, &[1, 2, 3], &[1, 2, 3]);
        let mut sim = Sim::new(t0);
        sim.server = Some(server);
        sim.hold.insert(Call::Grant);
        sim.cut.insert((2, 3));
        sim.cut.insert((3, 2));
        sim.add(2, v.clone(), pos(1, 7));
        sim.add(3, v, pos(1, 7));

        sim.run_until(FAILURE_TIMEOUT + VOTING_WAIT + 5 * TICK);
        let mut held = std::mem::take(&mut sim.held);
        assert_eq!(held.len(), 2, "both ask");
        for h in &held {
            assert_eq!(
                h.request,
                ServerRequest::RequestGrant {
                    candidate: h.node,
                    epoch: 1,
                    last: pos(1, 7),
                }
            );
        }
        assert!(sim.server.as_ref().unwrap().lease_expired(sim.now()));
        held.sort_by_key(|h| h.node != first);

        let answers: Vec<(NodeId, ServerResponse)> =
            held.iter().map(|h| (h.node, sim.answer(h))).collect();
        let winners: Vec<NodeId> = answers
            .iter()
            .filter(|(_, r)| matches!(r, ServerResponse::Ok(_)))
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(winners.len(), 1, "{answers:?}");
        let winner = winners[0];
        let loser = if winner == 2 { 3 } else { 2 };
        for (id, answer) in &answers {
            if *id == winner {
                let ServerResponse::Ok(v) = answer else {
                    unreachable!()
                };
                assert_eq!((v.epoch, v.coordinator), (2, Some(winner)));
            } else {
                assert!(
                    matches!(answer, ServerResponse::Rejected { epoch: 2, .. }),
                    "{answer:?}"
                );
            }
        }

        // The replies come back (in the order the server answered).
        let now_ms = sim.now_ms;
        for (h, (id, answer)) in held.iter().zip(answers) {
            let out = sim.input(
                now_ms,
                id,
                Input::ServerReply {
                    call: h.call,
                    sent: sim.at(h.ms),
                    reply: Ok(answer),
                },
            );
            if id == winner {
                assert!(
                    out.iter().any(|a| matches!(
                        a,
                        Action::BecomeCoordinator { epoch: 2, isr, .. } if isr.contains(&winner)
                    )),
                    "{out:?}"
                );
                assert_eq!(sim.node(winner).role(), Role::Coordinator);
                assert_eq!(sim.node(winner).epoch(), 2);
            } else {
                assert!(
                    !out.iter()
                        .any(|a| matches!(a, Action::BecomeCoordinator { .. })),
                    "{out:?}"
                );
                assert_ne!(sim.node(loser).role(), Role::Coordinator);
            }
        }

        // The loser learns the new view from the server at its next calls.
        // It turns replica as it adopts that view, not a tick later.
        sim.cut.clear();
        let follows = |out: &[(NodeId, Action)]| {
            out.iter().any(|(id, a)| {
                *id == loser
                    && matches!(
                        a,
                        Action::Follow { coordinator, epoch: 2, .. } if *coordinator == winner
                    )
            })
        };
        loop {
            let out = sim.step(sim.now_ms + TICK);
            if follows(&out) {
                assert_eq!(sim.node(loser).role(), Role::Replica);
                assert_eq!(sim.node(loser).election(), Election::Idle);
                assert!(
                    out.iter().any(|(id, a)| *id == loser
                        && matches!(a, Action::Publish(s) if s.role == Role::Replica && s.epoch == 2)),
                    "{out:?}"
                );
                break;
            }
            assert!(
                sim.now_ms <= now_ms + 3 * UPDATE_INTERVAL,
                "loser {loser} does not follow winner {winner}"
            );
        }
        sim.run_until(now_ms + 1000);
        assert!(!sim
            .actions_of(loser)
            .any(|(_, a)| matches!(a, Action::BecomeCoordinator { .. })));
        assert_eq!(sim.node(loser).role(), Role::Replica);
        assert_eq!(sim.node(loser).epoch(), 2);
        assert_eq!(sim.node(loser).election(), Election::Idle);
        assert_eq!(sim.node(winner).role(), Role::Coordinator);
        assert_eq!(sim.server.as_ref().unwrap().epoch(), 2);
        assert!(
            sim.held.iter().all(|h| h.request
                == ServerRequest::RequestGrant {
                    candidate: loser,
                    epoch: 1,
                    last: pos(1, 7),
                }),
            "no grant asked for any later epoch: a stale retry at most"
        );
    }
}

/// A late beacon from an old epoch. Replica 2 has adopted epoch 2 with
/// coordinator 3 from a View reply. Old coordinator 1 (cut off, still
/// thinking it leads epoch 1) keeps beaconing "coordinator of epoch 1". 2
/// neither follows 1 nor starts an election, and keeps following 3 while 3
/// beacons.
#[test]
fn beacons_from_an_old_epoch_coordinator_are_not_followed() {
    let mut sim = Sim::new(Instant::now());
    sim.add(2, view(1, 1, &[1, 2, 3], &[1, 2, 3]), pos(1, 7));
    for ms in (TICK..=200).step_by(TICK as usize) {
        if ms % HEARTBEAT == 0 {
            sim.inject(ms, 2, beacon(1, 1, Role::Coordinator, pos(1, 7)));
        }
        sim.step(ms);
    }
    let out = sim.input(
        200,
        2,
        Input::ServerReply {
            call: Call::View,
            sent: sim.at(190),
            reply: Ok(ServerResponse::View(view(2, 3, &[2, 3], &[1, 2, 3]))),
        },
    );
    assert!(
        out.iter().any(|a| matches!(
            a,
            Action::Follow {
                coordinator: 3,
                epoch: 2,
                ..
            }
        )),
        "{out:?}"
    );
    assert_eq!(sim.node(2).epoch(), 2);
    let adopted = sim.log.len();

    // The late beacon, then both keep beaconing.
    sim.inject(205, 2, beacon(1, 1, Role::Coordinator, pos(1, 8)));
    for ms in (210..=2200).step_by(TICK as usize) {
        if ms % HEARTBEAT == 0 {
            sim.inject(ms, 2, beacon(1, 1, Role::Coordinator, pos(1, 8)));
            sim.inject(ms, 2, beacon(3, 2, Role::Coordinator, pos(2, 1)));
        }
        sim.step(ms);
        assert_eq!(sim.node(2).role(), Role::Replica, "at {ms} ms");
        assert_eq!(sim.node(2).election(), Election::Idle, "at {ms} ms");
        assert_eq!(sim.node(2).epoch(), 2, "at {ms} ms");
        assert_eq!(sim.node(2).serving().coordinator, Some(3), "at {ms} ms");
    }
    for (_, id, a) in &sim.log[adopted..] {
        assert_eq!(*id, 2);
        match a {
            Action::Follow { coordinator, .. } => panic!("re-follows {coordinator}: {a:?}"),
            Action::Publish(s) => {
                assert_eq!(
                    (s.coordinator, s.epoch, s.role),
                    (Some(3), 2, Role::Replica)
                )
            }
            a if is_grant_request(a) => panic!("starts an election: {a:?}"),
            _ => {}
        }
    }
}

/// A grant refused because the old lease still runs is retried. Coordinator
/// 1 is cut off from the replicas but still pushes its status to the server
/// until 300 ms (its lease at the server then runs 262.5 ms more). Candidate
/// 3 asks at 350 ms and is refused for the lease; after each refusal it asks
/// again within a few heartbeats, and the first request after the lease ran
/// out is granted: 3 becomes coordinator of epoch 2.
#[test]
fn a_grant_refused_for_the_old_lease_is_retried_until_granted() {
    let t0 = Instant::now();
    let (server, v) = server_with(t0, &[1, 2, 3], &[1, 2, 3]);
    let lease_at_server = settings().lease_at_server();
    let mut sim = Sim::new(t0);
    sim.server = Some(server);
    sim.add(3, v, pos(1, 7));

    let last_push = 300;
    for ms in (TICK..=1500).step_by(TICK as usize) {
        if ms <= last_push && ms % UPDATE_INTERVAL == 0 {
            let now = sim.at(ms);
            let (resp, _) = sim.server.as_mut().unwrap().handle(
                now,
                ServerRequest::Status {
                    from: 1,
                    epoch: 1,
                    reports: vec![],
                },
            );
            assert!(matches!(resp, ServerResponse::Ok(_)), "{resp:?}");
        }
        sim.step(ms);
    }
    let lease_end = sim.at(last_push) + lease_at_server;

    let grants: Vec<(u64, ServerResponse)> = sim
        .replies
        .iter()
        .filter(|(_, id, call, _)| *id == 3 && *call == Call::Grant)
        .map(|(ms, _, _, r)| (*ms, r.clone()))
        .collect();
    let requests = sim.grant_requests(3);
    assert_eq!(requests.len(), grants.len());
    assert!(grants.len() >= 2, "{grants:?}");
    match &grants[0] {
        (_, ServerResponse::Rejected { epoch: 1, reason }) => {
            assert!(reason.contains("lease"), "{reason}")
        }
        other => panic!("the first request is refused for the lease: {other:?}"),
    }
    let (last_ms, last) = grants.last().unwrap();
    assert!(
        matches!(last, ServerResponse::Ok(v) if v.epoch == 2 && v.coordinator == Some(3)),
        "{last:?}"
    );
    assert!(sim.at(*last_ms) >= lease_end);
    for pair in grants.windows(2) {
        let (refused_ms, refused) = &pair[0];
        let (next_ms, _) = &pair[1];
        assert!(
            matches!(refused, ServerResponse::Rejected { .. }),
            "only the last reply grants: {grants:?}"
        );
        assert!(
            *next_ms > *refused_ms && *next_ms <= *refused_ms + 3 * HEARTBEAT,
            "refused at {refused_ms} ms, asked again only at {next_ms} ms"
        );
    }
    assert!(
        sim.at(*last_ms) < lease_end + Duration::from_millis(3 * HEARTBEAT),
        "granted at {last_ms} ms, long after the lease ended"
    );
    assert!(sim
        .actions_of(3)
        .any(|(_, a)| matches!(a, Action::BecomeCoordinator { epoch: 2, .. })));
    assert_eq!(sim.node(3).role(), Role::Coordinator);
    assert_eq!(sim.node(3).epoch(), 2);
}

/// The coordinator removes a silent in-sync replica. Coordinator 1 with ISR
/// [1,2,3] (both replicas connected) hears beacons from 2 but never from 3.
/// At failure-timeout it asks the server to record ISR [1,2]; the commit set
/// keeps 3 (no RemoveFromCommitSet) until the server's Ok arrives, and only
/// 3 is removed then.
#[test]
fn coordinator_drops_a_silent_replica_from_the_isr_after_the_server_agrees() {
    let t0 = Instant::now();
    let (server, v) = server_with(t0, &[1, 2, 3], &[1, 2, 3]);
    let mut sim = Sim::new(t0);
    sim.server = Some(server);
    sim.hold.insert(Call::SetIsr);
    sim.add(1, v, pos(1, 7));
    assert_eq!(sim.node(1).role(), Role::Coordinator);
    sim.input(0, 1, Input::FollowerConnected(2, 1));
    sim.input(0, 1, Input::FollowerConnected(3, 2));

    let removals = |sim: &Sim| {
        sim.actions_of(1)
            .filter(|(_, a)| matches!(a, Action::RemoveFromCommitSet(_)))
            .count()
    };
    for ms in (TICK..=500).step_by(TICK as usize) {
        if ms % HEARTBEAT == 0 {
            sim.inject(ms, 1, beacon(2, 1, Role::Replica, pos(1, 7)));
        }
        sim.step(ms);
        if ms < FAILURE_TIMEOUT {
            assert!(sim.held.is_empty(), "3 suspected at {ms} ms already");
        } else {
            assert_eq!(sim.held.len(), 1, "one SetIsr call at {ms} ms");
        }
        assert_eq!(removals(&sim), 0, "removed before the server agreed");
        assert_eq!(sim.node(1).role(), Role::Coordinator);
    }
    let held = sim.held.pop().unwrap();
    assert_eq!(held.ms, FAILURE_TIMEOUT);
    assert_eq!(
        held.request,
        ServerRequest::SetIsr {
            from: 1,
            epoch: 1,
            isr: vec![1, 2],
        }
    );

    let answer = sim.answer(&held);
    assert!(
        matches!(&answer, ServerResponse::Ok(v) if v.isr == vec![1, 2]),
        "{answer:?}"
    );
    let out = sim.input(
        500,
        1,
        Input::ServerReply {
            call: Call::SetIsr,
            sent: sim.at(held.ms),
            reply: Ok(answer),
        },
    );
    assert_eq!(
        out.first(),
        Some(&Action::RemoveFromCommitSet(3)),
        "{out:?}"
    );
    assert_eq!(removals(&sim), 1);

    // 2 keeps beaconing: nothing more changes.
    for ms in (510..=1500).step_by(TICK as usize) {
        if ms % HEARTBEAT == 0 {
            sim.inject(ms, 1, beacon(2, 1, Role::Replica, pos(1, 7)));
        }
        sim.step(ms);
    }
    assert!(sim.held.is_empty(), "no further SetIsr");
    assert_eq!(removals(&sim), 1);
    assert_eq!(sim.node(1).role(), Role::Coordinator);
}

/// A refused replication connection means the coordinator's process is gone:
/// the replica suspects it at once instead of waiting for failure-timeout. A
/// stream that merely broke, with beacons still arriving, starts no election
/// and is re-established after a heartbeat.
#[test]
fn a_refused_follow_connection_suspects_the_coordinator_at_once() {
    let mut sim = Sim::new(Instant::now());
    sim.add(2, view(1, 1, &[1, 2, 3], &[1, 2, 3]), pos(1, 7));
    for ms in (TICK..=100).step_by(TICK as usize) {
        if ms % HEARTBEAT == 0 {
            sim.inject(ms, 2, beacon(1, 1, Role::Coordinator, pos(1, 7)));
        }
        sim.step(ms);
    }
    let out = sim.input(
        100,
        2,
        Input::FollowLost {
            reason: "connection reset".into(),
            refused: false,
            expected: false,
        },
    );
    assert!(!out
        .iter()
        .any(|a| matches!(a, Action::Publish(s) if s.role == Role::Candidate)));
    assert_eq!(sim.node(2).role(), Role::Replica);
    let lost = sim.log.len();
    sim.inject(150, 2, beacon(1, 1, Role::Coordinator, pos(1, 7)));
    sim.step(150);
    assert!(
        sim.log[lost..].iter().any(|(_, _, a)| matches!(
            a,
            Action::Follow {
                coordinator: 1,
                epoch: 1,
                ..
            }
        )),
        "re-follows after a heartbeat"
    );
    assert_eq!(sim.node(2).election(), Election::Idle);

    // 10 ms after the last beacon, the port refuses: suspected now.
    let out = sim.input(
        160,
        2,
        Input::FollowLost {
            reason: "connection refused".into(),
            refused: true,
            expected: false,
        },
    );
    assert_eq!(sim.node(2).role(), Role::Candidate);
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::Publish(s) if s.role == Role::Candidate)),
        "{out:?}"
    );
}

/// The coordinator's process restarts. Coordinator 1 (ISR [1,2,3]) crashes
/// and re-registers with a new incarnation at 100 ms; the server then clears
/// the coordinator of epoch 1 (and drops 1 from the ISR). Replicas 2 and 3,
/// which keep polling the server's view every update interval, must still
/// elect a new coordinator: one of them gets epoch 2 and the other follows it.
#[test]
fn replicas_elect_a_new_coordinator_after_the_old_one_restarted() {
    let t0 = Instant::now();
    let (server, v) = server_with(t0, &[1, 2, 3], &[1, 2, 3]);
    let mut sim = Sim::new(t0);
    sim.server = Some(server);
    sim.add(2, v.clone(), pos(1, 7));
    sim.add(3, v, pos(1, 7));
    sim.run_until(100);

    let now = sim.at(100);
    let (resp, _) = sim.server.as_mut().unwrap().handle(
        now,
        ServerRequest::Register {
            node_id: Some(1),
            incarnation: 2,
            data_addr: data_addr(1),
            beacon_addr: beacon_addr(1),
            last: pos(1, 7),
            resp_addr: None,
        },
    );
    let ServerResponse::Registered { view, .. } = resp else {
        panic!("{resp:?}")
    };
    assert_eq!((view.epoch, view.coordinator), (1, None));
    assert_eq!(view.isr, vec![2, 3]);

    sim.run_until(2000);
    assert_eq!(
        sim.server.as_ref().unwrap().epoch(),
        2,
        "no coordinator was elected; grant requests: 2: {:?}, 3: {:?}; elections now: 2: {:?}, 3: {:?}",
        sim.grant_requests(2),
        sim.grant_requests(3),
        sim.node(2).election(),
        sim.node(3).election(),
    );
    // Equal logs: the higher id wins.
    assert_eq!(sim.node(3).role(), Role::Coordinator);
    assert_eq!(sim.node(2).role(), Role::Replica);
    assert!(sim.actions_of(2).any(|(_, a)| matches!(
        a,
        Action::Follow {
            coordinator: 3,
            epoch: 2,
            ..
        }
    )));
}
