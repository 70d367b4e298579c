//! Fault injection: one random fault per fault event (node crash, power
//! loss, restart, pause, slow disk, partitions; server restarts, kills and
//! pauses; store cuts, outages and slowness), the end of store faults, and
//! the final heal.

use super::{Endpoint, Ev, Sim, StoreFault, StreamId};
use crate::storage::FsyncPolicy;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

impl Sim {
    /// Whether node `i`'s machine may lose power within what its fsync
    /// policy promises: with `always` at any time; with `interval` or
    /// `never` (which may lose the unsynced tail) only while it holds no
    /// write the cluster counts on: outside the recorded in-sync set and
    /// every coordinator's commit set.
    fn may_lose_power(&self, i: usize) -> bool {
        let n = &self.nodes[i];
        if n.disk
            .as_ref()
            .is_some_and(|d| d.policy == FsyncPolicy::Always)
        {
            return true;
        }
        let id = n.id;
        !self.recorded_isr().contains(&id)
            && !self
                .nodes
                .iter()
                .any(|m| m.alive && m.log.commit_set().contains(&id))
    }

    /// Node `i` (already crashed) lost power: its unsynced log tail is gone.
    /// Durability rule checked here: with `fsync: always`, every
    /// acknowledged write an in-sync node held was on stable storage.
    fn power_loss(&mut self, i: usize) {
        let n = &self.nodes[i];
        let disk = n.disk.as_ref().expect("durable");
        if disk.policy == FsyncPolicy::Always && self.recorded_isr().contains(&n.id) {
            let synced = disk.synced();
            for (pos, what) in &self.acked {
                if n.log.pos_at(pos.index) == Some(*pos) && !synced.holds(*pos) {
                    let msg = format!(
                        "fsync always: acknowledged write {what} at {pos} was not on stable storage of in-sync node {} when it lost power",
                        n.id
                    );
                    return self.fail(msg);
                }
            }
        }
        let lost = self.nodes[i].disk.as_mut().expect("durable").power_loss();
        *self
            .report
            .faults
            .entry("records lost to power loss")
            .or_default() += lost as u64;
    }

    pub(super) fn fault(&mut self) {
        let n = self.cfg.nodes;
        let ha = self.servers.len() > 1;
        // Standalone: 0-6 node and network faults, 7 a server restart, 8
        // heal. HA: the same node faults, 7-11 server and store faults, 12
        // heal.
        let kind = match self.rng.below(if ha { 13 } else { 9 }) {
            8 if !ha => 12,
            k => k,
        };
        let name = match kind {
            0 => {
                let i = self.rng.below(n as u64) as usize;
                let power = self.nodes[i].disk.is_some()
                    && self.nodes[i].alive
                    && self.rng.chance(0.5)
                    && self.may_lose_power(i);
                // About one crash of a replica in three is a SIGTERM instead:
                // it leaves the in-sync set, then stops (chosen by the step
                // count, not an RNG draw, so other seeds' schedules stay).
                if !power
                    && self.nodes[i].alive
                    && self.nodes[i].leaving.is_none()
                    && self.nodes[i].serving.role == crate::types::Role::Replica
                    && self.report.steps.is_multiple_of(3)
                {
                    self.leave(i);
                    "graceful stop"
                } else {
                    self.crash(i);
                    if power {
                        self.power_loss(i);
                        "power loss"
                    } else {
                        "crash"
                    }
                }
            }
            1 => {
                let dead: Vec<usize> = (0..n).filter(|&i| !self.nodes[i].alive).collect();
                if dead.is_empty() {
                    return;
                }
                let i = dead[self.rng.below(dead.len() as u64) as usize];
                self.start_node(i);
                "restart"
            }
            2 => {
                let i = self.rng.below(n as u64) as usize;
                let d = Duration::from_millis(100 + self.rng.below(900));
                if self.nodes[i].disk.is_some() && self.rng.chance(0.5) {
                    self.nodes[i].disk_slow_until = Some(self.now + 2 * d);
                    "slow disk"
                } else if self.nodes[i].alive
                    && self.nodes[i].serving.role == crate::types::Role::Coordinator
                    && d.as_millis().is_multiple_of(3)
                {
                    // A planned handoff of the coordinator's role (no RNG
                    // draw of its own, so other seeds' schedules stay).
                    self.input(i, crate::core::node::Input::Handoff { to: None });
                    "handoff"
                } else {
                    self.nodes[i].paused_until = Some(self.now + d);
                    "pause"
                }
            }
            3 => {
                let i = self.rng.below(n as u64) as usize;
                self.net.isolate(i);
                "isolate node"
            }
            4 => {
                let i = self.rng.below(n as u64) as usize;
                let k = self.rng.below(self.servers.len() as u64) as usize;
                self.net.cut(Endpoint::Node(i), Endpoint::Server(k));
                "cut node from server"
            }
            5 => {
                let a = self.rng.below(n as u64) as usize;
                let b = (a + 1 + self.rng.below(n as u64 - 1) as usize) % n;
                self.net.one_way(Endpoint::Node(a), Endpoint::Node(b));
                "one-way partition"
            }
            6 => {
                let split = 1 + self.rng.below(n as u64 - 1) as usize;
                self.net.split(split);
                "split"
            }
            7 if !ha => {
                self.kill_server(0);
                // Recovery from lost state is promised when the running nodes
                // can reach the restarted server within the rejoin window: a
                // server that hears from nobody cannot tell a lost cluster
                // from none, and lets a new node found one after the window
                // (README, "Server restarts"). So state is lost only while
                // every running node reaches the server, and no new fault
                // comes before the window has passed.
                let reachable = (0..n).all(|i| {
                    let nd = &self.nodes[i];
                    !nd.alive
                        || (nd.paused_until.is_none_or(|t| self.now >= t)
                            && !self.net.blocked(Endpoint::Node(i), Endpoint::Server(0))
                            && !self.net.blocked(Endpoint::Server(0), Endpoint::Node(i)))
                });
                if self.rng.chance(1.0 / 3.0) && reachable {
                    let window = self.settings.failure_timeout()
                        + 2 * self.settings.server_update_interval();
                    self.faults_held_until = Some(self.now + window * 2);
                    // It lost its state file: an empty store. The nodes
                    // rejoin and the server recovers from their reports.
                    let seed = self.rng.next();
                    let empty = self.store.lock().emptied(seed);
                    self.store = Arc::new(Mutex::new(empty));
                    self.servers[0].max_epoch = 0;
                    for n in &mut self.nodes {
                        n.forgets_epoch = true;
                    }
                    self.start_server(0);
                    "server restart without its state"
                } else {
                    // Crash and restart with its state file.
                    self.start_server(0);
                    "server restart"
                }
            }
            7 => {
                let up: Vec<usize> = (0..self.servers.len())
                    .filter(|&k| self.servers[k].arbiter.is_some())
                    .collect();
                if up.is_empty() {
                    return;
                }
                let k = up[self.rng.below(up.len() as u64) as usize];
                self.kill_server(k);
                let d = Duration::from_millis(300 + self.rng.below(2700));
                self.at(d, Ev::ServerStart(k));
                "kill server"
            }
            8 => {
                let up: Vec<usize> = (0..self.servers.len())
                    .filter(|&k| self.server_up(k))
                    .collect();
                if up.is_empty() {
                    return;
                }
                let k = up[self.rng.below(up.len() as u64) as usize];
                let d = self.settings.lease_at_server()
                    + Duration::from_millis(50 + self.rng.below(1500));
                self.servers[k].paused_until = Some(self.now + d);
                "pause server past a lease"
            }
            9 => {
                let k = self.rng.below(self.servers.len() as u64) as usize;
                self.store.lock().faults.cut.insert(k);
                let d = Duration::from_millis(300 + self.rng.below(2700));
                self.store_fault_ends(StoreFault::Cut, k, d);
                "cut server from store"
            }
            10 => {
                self.store.lock().faults.unavailable = true;
                let d = Duration::from_millis(100 + self.rng.below(1400));
                self.store_fault_ends(StoreFault::Unavailable, 0, d);
                "store unavailable"
            }
            11 => {
                self.store.lock().faults.slow = true;
                let d = Duration::from_millis(500 + self.rng.below(2500));
                self.store_fault_ends(StoreFault::Slow, 0, d);
                "slow store"
            }
            _ => {
                self.net.heal();
                "heal"
            }
        };
        if self.trace {
            eprintln!("          fault: {name}");
        }
        *self.report.faults.entry(name).or_default() += 1;
        // Breaking a link breaks the streams across it.
        let cut: Vec<StreamId> = self
            .streams
            .iter()
            .filter(|(_, s)| {
                s.open
                    && (self
                        .net
                        .blocked(Endpoint::Node(s.follower), Endpoint::Node(s.coordinator))
                        || self
                            .net
                            .blocked(Endpoint::Node(s.coordinator), Endpoint::Node(s.follower)))
            })
            .map(|(&id, _)| id)
            .collect();
        for s in cut {
            self.close_stream(s, false);
        }
    }

    /// Ends store fault `fault` (at `server`) after `d`, unless another of
    /// the same kind begins meanwhile.
    fn store_fault_ends(&mut self, fault: StoreFault, server: usize, d: Duration) {
        let gen = self.seq;
        self.store_faults.insert((fault, server), gen);
        self.at(d, Ev::StoreHeal { fault, server, gen });
    }

    pub(super) fn heal(&mut self) {
        let settle = Duration::from_secs(2);
        self.probe = Some((self.now + settle, self.now + Duration::from_secs(5)));
        self.at(settle, Ev::ClientStep(0));
        self.net.heal();
        self.store.lock().faults = Default::default();
        self.store_faults.clear();
        for k in 0..self.servers.len() {
            self.servers[k].paused_until = None;
            self.start_server(k);
        }
        for i in 0..self.cfg.nodes {
            self.nodes[i].paused_until = None;
            if !self.nodes[i].alive {
                self.start_node(i);
            }
        }
    }
}
