//! Talking to the server: the periodic status push (coordinator) or view
//! request (everyone else), the lease the pushes renew, the replies to every
//! server call, and rejoining a server that does not know this node.

use super::{Action, Call, Election, NodeCore, Outage, OUTAGE_WARN_EVERY};
use crate::types::Role;
use crate::wire::{ClusterView, MemberReport, RejoinReport, ServerRequest, ServerResponse};
use std::time::Instant;

impl NodeCore {
    /// The coordinator steps down once its lease ran out and the pushes that
    /// would have renewed it kept failing.
    pub(super) fn check_lease(&mut self, now: Instant, out: &mut Vec<Action>) {
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

    /// Once per update interval: the coordinator pushes its status (which
    /// renews its lease), everyone else asks for the view.
    pub(super) fn poll_server(&mut self, now: Instant, out: &mut Vec<Action>) {
        if now >= self.next_server {
            self.next_server = now + self.timing.update_interval;
            if self.role == Role::Coordinator {
                self.call(
                    Call::Status,
                    ServerRequest::Status {
                        from: self.id,
                        epoch: self.epoch,
                        reports: self.reports(now),
                    },
                    out,
                );
            } else {
                self.call(Call::View, ServerRequest::View, out);
            }
        }
    }

    /// This node and the members it hears from (a silent one is left out,
    /// so the server's "last heard" of it stays when it was last heard).
    pub(super) fn reports(&self, now: Instant) -> Vec<MemberReport> {
        let mut v = vec![MemberReport {
            node_id: self.id,
            role: self.role,
            applied: self.local.applied,
            digest: self.local.digest,
        }];
        for (&id, p) in &self.peers {
            if id == self.id || self.suspected(id, now) {
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
    /// Whether a view shows that its server does not know this node (it
    /// restarted without its state, or is a new machine at the address),
    /// or knows an older epoch than this node has seen.
    pub(super) fn view_forgot_us(&self, view: &ClusterView) -> bool {
        view.epoch < self.epoch
            || view
                .member(self.id)
                .is_none_or(|m| m.incarnation < self.incarnation)
    }

    /// Tells the server who this node is and what it knows.
    pub(super) fn rejoin(&mut self, now: Instant, out: &mut Vec<Action>) {
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
    /// Counts failed server calls: the first failure is a warning, then one
    /// summary per [`OUTAGE_WARN_EVERY`], and the first answer after them
    /// says how long the server was unreachable.
    fn track_outage(&mut self, now: Instant, call: Call, reply: &Result<ServerResponse, String>) {
        match (reply, self.server_outage.as_mut()) {
            (Err(e), None) => {
                log::warn!("node {}: server call ({call}) failed: {e}", self.id);
                self.server_outage = Some(Outage {
                    since: now,
                    failed: 1,
                    warned: now,
                });
            }
            (Err(e), Some(o)) => {
                o.failed += 1;
                if now.saturating_duration_since(o.warned) >= OUTAGE_WARN_EVERY {
                    o.warned = now;
                    log::warn!(
                        "node {}: server unreachable for {} s, {} calls failed (last: {e})",
                        self.id,
                        now.saturating_duration_since(o.since).as_secs(),
                        o.failed
                    );
                }
            }
            (Ok(_), Some(o)) => {
                if o.failed > 1 {
                    log::info!(
                        "node {}: server answers again after {:.1} s ({} calls failed)",
                        self.id,
                        now.saturating_duration_since(o.since).as_secs_f64(),
                        o.failed
                    );
                }
                self.server_outage = None;
            }
            (Ok(_), None) => {}
        }
    }

    /// Takes in the server's answer to a call (or its failure).
    pub(super) fn on_server_reply(
        &mut self,
        now: Instant,
        call: Call,
        sent: Instant,
        reply: Result<ServerResponse, String>,
        out: &mut Vec<Action>,
    ) {
        self.track_outage(now, call, &reply);
        if call == Call::Handoff {
            return self.handoff_answered(now, sent, reply, out);
        }
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
                    Call::View | Call::Rejoin | Call::Handoff => {}
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
                if self.role == Role::Coordinator && view.epoch == self.epoch && self.may_renew() {
                    let until = sent + self.timing.lease;
                    if self.lease_until.is_none_or(|t| until > t) {
                        self.lease_until = Some(until);
                        out.push(Action::Publish(self.serving()));
                    }
                }
                self.adopt_view(now, view, sent, out);
            }
            (Call::SetIsr, Ok(ServerResponse::Ok(view))) => {
                self.isr_recorded(view.isr_version, out);
                self.adopt_view(now, view, sent, out);
                self.reconcile_isr(out);
            }
            (Call::Grant, Ok(ServerResponse::Ok(view))) => {
                self.election = Election::Idle;
                self.grant_answer = true;
                self.adopt_view(now, view, sent, out);
                self.grant_answer = false;
            }
            (Call::View, Ok(ServerResponse::View(view))) => self.adopt_view(now, view, sent, out),
            (Call::Grant, Ok(ServerResponse::Rejected { epoch, reason })) => {
                if self.election_tries <= 1 {
                    log::info!("node {}: grant refused: {reason}", self.id);
                } else {
                    log::debug!("node {}: grant refused: {reason}", self.id);
                }
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
                log::warn!("node {}: server refused the {call}: {reason}", self.id);
                if call == Call::SetIsr {
                    self.isr_pending = None;
                }
                if self.role == Role::Coordinator && epoch >= self.epoch {
                    self.step_down(now, out);
                }
                self.next_server = now;
            }
            (Call::SetIsr, Ok(ServerResponse::Error { message, .. })) => {
                // A member the change names left the view meanwhile.
                log::info!("node {}: in-sync set change refused: {message}", self.id);
                self.isr_pending = None;
                self.drop_departed(out);
                self.next_server = now;
            }
            (_, Ok(other)) => {
                log::warn!(
                    "node {}: the server answered the {call} with {}",
                    self.id,
                    other.name()
                );
            }
            (_, Err(_)) => {
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
                    Call::View | Call::Rejoin | Call::Handoff => {}
                }
            }
        }
    }
}
