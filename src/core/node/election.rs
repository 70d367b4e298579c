//! The bully election with a data-aware rank.
//!
//! When an in-sync replica suspects the coordinator it becomes a candidate
//! and beacons that. After `voting-wait` it ranks the in-sync members it
//! still hears from by `(last log position, node id)`; if it ranks highest it
//! asks the server for the next epoch, otherwise it defers to the higher one
//! for `election-wait` and then votes again (the higher one may have died
//! meanwhile). The server grants an epoch to at most one candidate, only to
//! an in-sync member, and only once the old coordinator's lease has run out:
//! the election picks a good candidate, the server makes it safe.

use super::{Action, Call, NodeCore};
use crate::types::{NodeId, Role};
use crate::wire::ServerRequest;
use std::time::Instant;

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

impl NodeCore {
    /// Runs the election on a node that is not the coordinator.
    pub(super) fn election_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
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
                    "node {}: coordinator ({}) of epoch {} suspected; starting an election",
                    self.id,
                    crate::types::fmt_coordinator(self.view.coordinator),
                    self.epoch
                );
                self.role = Role::Candidate;
                self.election_tries = 0;
                self.election = Election::Voting {
                    until: now + self.timing.voting_wait,
                };
                self.next_beacon = now; // tell the others at once
                out.push(Action::Publish(self.serving()));
            }
            Election::Voting { until } if now >= until => {
                let best = self.best_candidate(now);
                self.election_tries += 1;
                // The first try of an election is news; its retries (each
                // heartbeat until the old lease runs out) are not.
                let level = if self.election_tries == 1 {
                    log::Level::Info
                } else {
                    log::Level::Debug
                };
                if best == self.id {
                    log::log!(
                        level,
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
                    log::log!(
                        level,
                        "node {}: deferring to higher-ranked node {best}",
                        self.id
                    );
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
    pub(super) fn best_candidate(&self, now: Instant) -> NodeId {
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
}
