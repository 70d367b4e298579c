//! Adopting the server's view, and the role changes it implies: becoming
//! coordinator of a granted epoch, stepping down, and following (or losing)
//! the coordinator's replication stream.
//!
//! A view is taken in named steps, in this order: drop it if it is older than
//! what this node knows; take its membership (the failure detector's peers);
//! then exactly one of
//! * the coordinator of the view's epoch follows the in-sync set the server
//!   recorded and the required size;
//! * anyone else at an unchanged epoch makes sure it follows the coordinator;
//! * otherwise the node enters the view's epoch (`enter_epoch`):
//!   it becomes coordinator if the view names it (stepping down first from an
//!   older epoch it coordinated), else a replica that follows the new one.

use super::{Action, Election, NodeCore};
use crate::types::{NodeId, Role};
use crate::wire::ClusterView;
use std::time::Instant;

impl NodeCore {
    /// Takes in a view from the server: membership, epoch and coordinator.
    /// `sent`: when the request it answers was sent (a granted lease counts
    /// from there).
    pub(super) fn adopt_view(
        &mut self,
        now: Instant,
        view: ClusterView,
        sent: Instant,
        out: &mut Vec<Action>,
    ) {
        if view.epoch < self.epoch {
            return; // an answer from before something newer we already know
        }
        let members_changed = self.adopt_membership(now, &view);
        let required = self.settings.required_in_sync(view.members.len());
        let epoch_changed = view.epoch > self.epoch;
        let coordinator = view.coordinator;
        self.view = view;
        if members_changed {
            out.push(Action::Publish(self.serving()));
        }
        if self.role == Role::Coordinator && !epoch_changed && coordinator == Some(self.id) {
            self.follow_recorded_isr(out);
            self.drop_departed(out);
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
        self.enter_epoch(now, sent, coordinator, epoch_changed, required, out);
    }

    /// Takes the epoch of the view just adopted (`self.view`), with the role
    /// it gives this node.
    fn enter_epoch(
        &mut self,
        now: Instant,
        sent: Instant,
        coordinator: Option<NodeId>,
        epoch_changed: bool,
        required: usize,
        out: &mut Vec<Action>,
    ) {
        self.epoch = self.view.epoch;
        if coordinator == Some(self.id) && epoch_changed && self.role == Role::Coordinator {
            // Granted a new epoch while coordinating an older one (a server
            // that rebuilt its view re-appointed this node): start afresh.
            self.step_down(now, out);
        }
        if coordinator == Some(self.id) {
            if self.role != Role::Coordinator {
                self.become_coordinator(now, sent, required, out);
            }
        } else {
            self.become_replica(now, coordinator, epoch_changed, out);
        }
    }

    /// Takes the coordinator role for the current epoch, with the in-sync
    /// set the server recorded and a lease counted from `sent`.
    fn become_coordinator(
        &mut self,
        now: Instant,
        sent: Instant,
        required: usize,
        out: &mut Vec<Action>,
    ) {
        self.role = Role::Coordinator;
        self.lead_epoch = self.epoch;
        self.election = Election::Idle;
        self.isr = self.view.isr.iter().copied().collect();
        // Kept by the server (core::server): the coordinator it records is
        // in the in-sync set it records. Checked here too, in debug builds:
        // the node trusts that view, it does not keep it.
        debug_assert!(
            self.isr.contains(&self.id),
            "node {}: coordinator of epoch {} but not in the recorded in-sync set {:?}",
            self.id,
            self.epoch,
            self.isr
        );
        self.isr_version = self.view.isr_version;
        self.isr_pending = None;
        self.want_in.clear();
        self.gone.clear();
        self.commit_extra.clear();
        self.connected.clear();
        self.coordinator_since = now;
        self.following = None;
        // The server granted the lease when it got the grant request, after
        // `sent`: counting from `sent` never outlasts the server's count. Any
        // other answer naming this node coordinator (the grant's answer was
        // lost and a view call found it; a server re-appointed it) comes
        // after a grant made at an unknown earlier time, so it gives no
        // lease: the first status push, sent at once, renews one.
        self.lease_until = if self.grant_answer {
            Some(sent + self.timing.lease)
        } else {
            self.next_server = now;
            None
        };
        self.push_failures = 0;
        self.next_beacon = now; // announce the new epoch at once
        log::info!(
            "node {}: coordinator of epoch {} (in sync: {})",
            self.id,
            self.epoch,
            crate::types::fmt_ids(&self.isr)
        );
        out.push(Action::BecomeCoordinator {
            epoch: self.epoch,
            isr: self.isr.iter().copied().collect(),
            required,
        });
        out.push(Action::Publish(self.serving()));
    }

    /// The view names another coordinator (or none): be a replica of it.
    fn become_replica(
        &mut self,
        now: Instant,
        coordinator: Option<NodeId>,
        epoch_changed: bool,
        out: &mut Vec<Action>,
    ) {
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
            self.follow_refusals = 0;
            // A new coordinator: give it a grace period before suspicion.
            if let Some(p) = coordinator.and_then(|c| self.peers.get_mut(&c)) {
                p.last_heard = now;
            }
            self.following = None;
        }
        self.follow_coordinator(now, out);
    }

    /// Streams the log from the view's coordinator, unless already doing so.
    pub(super) fn follow_coordinator(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(c) = self.view.coordinator.filter(|&c| c != self.id) else {
            self.following = None;
            out.push(Action::Publish(self.serving()));
            return;
        };
        if self.following == Some((c, self.epoch)) {
            return;
        }
        if self.leaving_self {
            return; // shutting down: no new stream
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

    /// Gives up the coordinator role; remembers what it coordinated.
    pub(super) fn step_down(&mut self, now: Instant, out: &mut Vec<Action>) {
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

    /// This replica's stream from the coordinator ended; `refused`: nobody
    /// listens on the coordinator's port, so its process is gone and it is
    /// suspected at once.
    pub(super) fn follow_lost(
        &mut self,
        now: Instant,
        reason: String,
        refused: bool,
        expected: bool,
        out: &mut Vec<Action>,
    ) {
        if self.follow_failures == 0 && !expected {
            log::info!("node {}: replication stream lost: {reason}", self.id);
        } else {
            log::debug!("node {}: replication stream lost: {reason}", self.id);
        }
        self.follow_failures += 1;
        let retry = if expected {
            // 2, 4, 8 ... ms, up to follow-retry.
            let quick = std::time::Duration::from_millis(2 << self.follow_refusals.min(10));
            self.follow_refusals += 1;
            quick.min(self.timing.follow_retry)
        } else {
            self.timing.follow_retry
        };
        if refused {
            // Nobody listens on the coordinator's port: its process is gone.
            if let Some((c, _)) = self.following {
                if let Some(p) = self.peers.get_mut(&c) {
                    p.last_heard = now - self.timing.failure_timeout;
                }
            }
        }
        self.following = None;
        self.follow_retry_at = Some(now + retry);
        self.election_tick(now, out);
    }

    /// A replica that lost its stream tries again once the retry is due.
    pub(super) fn retry_follow(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.role != Role::Coordinator && self.following.is_none() {
            if let Some(t) = self.follow_retry_at {
                if now >= t {
                    self.follow_retry_at = None;
                    self.follow_coordinator(now, out);
                }
            }
        }
    }
}
