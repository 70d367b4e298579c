//! Failure detection: the peers table fed by beacons and by the server's
//! membership, the beacons this node sends, and who is suspected.
//!
//! A peer is *suspected* when nothing was heard from it for
//! `failure-timeout`. The coordinator is also suspected when its beacons say
//! it no longer acts as coordinator, or when its port refuses connections
//! (see `NodeCore::follow_lost`). A member learned of (or restarted) gets a
//! grace period: it counts as heard from at that moment.

use super::{Action, NodeCore, Peer};
use crate::types::{NodeId, Role};
use crate::wire::{Beacon, ClusterView, MAGIC, PROTOCOL_VERSION};
use std::collections::BTreeSet;
use std::time::Instant;

impl NodeCore {
    /// Beacons every known peer once per heartbeat: each address once, even
    /// when a dead member's address is now a new member's.
    pub(super) fn send_beacons(&mut self, now: Instant, out: &mut Vec<Action>) {
        if now >= self.next_beacon {
            self.next_beacon = now + self.timing.heartbeat;
            let to: Vec<String> = self
                .peers
                .iter()
                .filter(|(&id, _)| id != self.id)
                .map(|(_, p)| p.beacon_addr.clone())
                .collect::<BTreeSet<String>>()
                .into_iter()
                .collect();
            if !to.is_empty() {
                out.push(Action::SendBeacon {
                    to,
                    beacon: self.beacon(),
                });
            }
        }
    }

    pub(super) fn beacon(&self) -> Beacon {
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
    pub(super) fn on_beacon(&mut self, now: Instant, b: Beacon) {
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

    /// Takes the membership of a server's view into the peers table; true
    /// when the set of members changed. A member we learn of gets a grace
    /// period before it can be suspected.
    pub(super) fn adopt_membership(&mut self, now: Instant, view: &ClusterView) -> bool {
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
        members_changed
    }

    /// A peer is suspected when it has been silent for the failure timeout.
    pub(super) fn suspected(&self, id: NodeId, now: Instant) -> bool {
        self.peers.get(&id).is_none_or(|p| {
            now.saturating_duration_since(p.last_heard) >= self.timing.failure_timeout
        })
    }

    /// Whether the coordinator in our view looks alive and acting.
    pub(super) fn coordinator_alive(&self, now: Instant) -> bool {
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
    pub(super) fn detect_replica_failures(&mut self, now: Instant) {
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
}
