//! A planned handoff: the coordinator gives its role to an in-sync replica
//! on purpose (SIGTERM, `dkv-client failover`), without the lease wait and
//! the failure-timeout a crash costs.
//!
//! Steps, each an event of the core:
//! 1. `Input::Handoff { to }`: pick the target (the one asked for, else the
//!    in-sync replica heard from with the highest log position) and hold new
//!    writes (`Action::HoldWrites`): the data path makes them wait, and lets
//!    the writes already appended commit.
//! 2. `Input::HandoffReady`: the data path saw every appended write
//!    committed and the target holding all of them. The core drops its lease
//!    (it serves nothing from here on) and asks the server
//!    (`ServerRequest::Handoff`) to grant the next epoch to the target.
//! 3. The answer: granted → the core adopts the new view and follows the
//!    target; the held writes are released and told where the coordinator
//!    is now. Refused → it keeps the role and takes its lease again at its
//!    next status push. No answer → the outcome is unknown (the server may
//!    have granted it): it steps down, as after a failed push, and the
//!    view tells it who coordinates.
//!
//! Safety: the server grants without waiting for the old lease, so the old
//! coordinator must hold none by then. It drops it before it asks, takes no
//! renewal while the handoff is under way (a status push answered late
//! would otherwise renew it), and serves again only after a refusal it
//! knows was final. The target is in the recorded in-sync set and holds
//! every entry the old coordinator appended (commit = last, and the target
//! acknowledged last), so it holds every acknowledged write. It takes its
//! lease from its first status push: it learns of its epoch from a view,
//! not from a grant's answer.

use super::{Action, Call, NodeCore};
use crate::types::{NodeId, Role};
use crate::wire::{ServerRequest, ServerResponse};
use std::time::Instant;

impl NodeCore {
    /// Step 1: a handoff was asked for.
    pub(super) fn start_handoff(
        &mut self,
        now: Instant,
        to: Option<NodeId>,
        out: &mut Vec<Action>,
    ) {
        if self.role != Role::Coordinator {
            log::info!(
                "node {}: asked to hand over, but it is not the coordinator",
                self.id
            );
            return;
        }
        if self.handoff.is_some() {
            return;
        }
        let target = match to {
            Some(t) if t != self.id && self.isr.contains(&t) && !self.suspected(t, now) => Some(t),
            Some(t) => {
                log::warn!(
                    "node {}: cannot hand over to node {t}: not another live member of the in-sync set {}",
                    self.id,
                    crate::types::fmt_ids(&self.isr)
                );
                None
            }
            None => self
                .isr
                .iter()
                .copied()
                .filter(|&id| id != self.id && !self.suspected(id, now))
                .max_by_key(|id| (self.peers.get(id).map(|p| p.last), *id)),
        };
        let Some(target) = target else {
            log::warn!(
                "node {}: no live in-sync replica to hand over to; keeping the role",
                self.id
            );
            return;
        };
        log::info!(
            "node {}: handing the coordinator role of epoch {} to node {target}",
            self.id,
            self.epoch
        );
        self.handoff = Some(target);
        out.push(Action::HoldWrites {
            target: Some(target),
            successor: None,
        });
    }

    /// Step 2: the target holds everything (`ready`), or the data path gave
    /// up waiting for it.
    pub(super) fn handoff_ready(&mut self, ready: bool, out: &mut Vec<Action>) {
        let Some(target) = self.handoff else {
            return;
        };
        if self.role != Role::Coordinator {
            self.end_handoff(out);
            return;
        }
        if !ready {
            log::warn!(
                "node {}: node {target} did not catch up in time; keeping the role",
                self.id
            );
            self.end_handoff(out);
            return;
        }
        // From here on this node serves nothing: the server grants the next
        // epoch without waiting for this lease.
        self.lease_until = None;
        out.push(Action::Publish(self.serving()));
        self.in_flight.remove(&Call::Handoff);
        self.call(
            Call::Handoff,
            ServerRequest::Handoff {
                from: self.id,
                epoch: self.epoch,
                to: target,
            },
            out,
        );
    }

    /// Step 3: the server's answer to the handoff request.
    pub(super) fn handoff_answered(
        &mut self,
        now: Instant,
        sent: Instant,
        reply: Result<ServerResponse, String>,
        out: &mut Vec<Action>,
    ) {
        let target = self.handoff;
        match reply {
            Ok(ServerResponse::Ok(view)) => {
                let epoch = view.epoch;
                self.adopt_view(now, view, sent, out);
                log::info!(
                    "node {}: handed over to {} (epoch {epoch})",
                    self.id,
                    crate::types::fmt_coordinator(target)
                );
                self.next_beacon = now; // tell the new coordinator at once
                self.end_handoff(out);
            }
            Ok(ServerResponse::Rejected { reason, .. })
            | Ok(ServerResponse::Error {
                message: reason, ..
            }) => {
                log::warn!("node {}: the server refused the handoff: {reason}", self.id);
                self.end_handoff(out);
                // A final refusal: the role is still ours; the next push
                // renews the lease.
                self.next_server = now;
            }
            other => {
                let why = match other {
                    Err(e) => e,
                    Ok(r) => format!("answered {}", r.name()),
                };
                log::warn!(
                    "node {}: the handoff's outcome is unknown ({why}); stepping down",
                    self.id
                );
                self.end_handoff(out);
                if self.role == Role::Coordinator {
                    self.step_down(now, out);
                }
            }
        }
    }

    /// Releases the held writes; they learn where the coordinator is from
    /// the view this node holds now.
    fn end_handoff(&mut self, out: &mut Vec<Action>) {
        self.handoff = None;
        let successor = (self.role != Role::Coordinator)
            .then(|| self.view.coordinator.and_then(|c| self.view.member(c)))
            .flatten()
            .map(|m| m.data_addr.clone());
        out.push(Action::HoldWrites {
            target: None,
            successor,
        });
    }

    /// Whether a status push's answer may renew the lease (not while a
    /// handoff is under way: see the module doc).
    pub(super) fn may_renew(&self) -> bool {
        self.handoff.is_none()
    }
}
