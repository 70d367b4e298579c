//! In-sync-set bookkeeping at the coordinator: which replicas caught up or
//! went away, moving the set the server records toward that one change at a
//! time, and the commit-set actions that must bracket each change.
//!
//! `AddToCommitSet(id)` is emitted *before* the `SetIsr` call that records
//! `id`, and `RemoveFromCommitSet(id)` only *after* the server confirmed the
//! removal, so the recorded set is always one the commit waits for.

use super::{Action, Call, NodeCore};
use crate::types::{NodeId, Role};
use crate::wire::ServerRequest;
use std::collections::BTreeSet;

impl NodeCore {
    /// A replica's acknowledgements reached the commit index: it may join.
    pub(super) fn follower_caught_up(&mut self, id: NodeId, out: &mut Vec<Action>) {
        if self.role == Role::Coordinator
            && !self.isr.contains(&id)
            && !self.leaving.contains(&id)
            && self.view.member(id).is_some()
        {
            self.gone.remove(&id);
            self.want_in.insert(id);
            self.reconcile_isr(out);
        }
    }

    /// Replication stream `stream` of replica `id` ended: it leaves the set
    /// (unless the replica is already on a newer stream).
    pub(super) fn follower_gone(&mut self, id: NodeId, stream: u64, out: &mut Vec<Action>) {
        if self.connected.get(&id).is_some_and(|&s| s != stream) {
            return; // a late end of an older stream
        }
        self.connected.remove(&id);
        self.leaving.remove(&id);
        if self.role == Role::Coordinator {
            self.want_in.remove(&id);
            self.gone.insert(id);
            self.reconcile_isr(out);
        }
    }

    /// Replica `id` said on stream `stream` that it is shutting down. It
    /// keeps acknowledging, so the commit does not wait meanwhile; it leaves
    /// the in-sync set as a failed replica would (the server records the
    /// removal before the commit stops waiting for it), then is released.
    pub(super) fn follower_leaving(&mut self, id: NodeId, stream: u64, out: &mut Vec<Action>) {
        if self.role != Role::Coordinator || self.connected.get(&id) != Some(&stream) {
            return;
        }
        if self.leaving.insert(id) {
            log::info!(
                "node {}: replica {id} is leaving; removing it from the in-sync set",
                self.id
            );
        }
        self.want_in.remove(&id);
        self.gone.insert(id);
        self.reconcile_isr(out);
    }

    /// Leaving replicas that neither the recorded nor a pending in-sync set
    /// holds are released (their commit-set removal came first).
    fn release_departed(&mut self, out: &mut Vec<Action>) {
        let held = self.isr_with_pending();
        let free: Vec<NodeId> = self
            .leaving
            .iter()
            .copied()
            .filter(|id| !held.contains(id))
            .collect();
        for id in free {
            self.leaving.remove(&id);
            out.push(Action::ReleaseFollower(id));
        }
    }

    /// Moves the recorded in-sync set toward (recorded ∪ caught up) − gone,
    /// one server call at a time.
    pub(super) fn reconcile_isr(&mut self, out: &mut Vec<Action>) {
        if self.role != Role::Coordinator || self.isr_pending.is_some() {
            return;
        }
        self.release_departed(out);
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
            self.commit_extra.insert(id);
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

    /// The server recorded the pending change (at `isr_version`): members it
    /// dropped leave the commit set now, not before.
    pub(super) fn isr_recorded(&mut self, isr_version: u64, out: &mut Vec<Action>) {
        if let Some(pending) = self.isr_pending.take() {
            for &id in self.isr.difference(&pending) {
                out.push(Action::RemoveFromCommitSet(id));
            }
            for id in &pending {
                self.want_in.remove(id);
                self.commit_extra.remove(id);
            }
            self.isr = pending;
            self.isr_version = self.isr_version.max(isr_version);
        }
        self.release_departed(out);
    }

    /// The server may have dropped a member on its own (it restarted):
    /// follow it, never the other way round. Only a view newer than our own
    /// last change counts: a reply can be older than it.
    pub(super) fn follow_recorded_isr(&mut self, out: &mut Vec<Action>) {
        if self.isr_pending.is_none() && self.view.isr_version > self.isr_version {
            self.isr_version = self.view.isr_version;
            let recorded: BTreeSet<NodeId> = self.view.isr.iter().copied().collect();
            for &id in self.isr.difference(&recorded) {
                out.push(Action::RemoveFromCommitSet(id));
            }
            self.isr = recorded;
            self.release_departed(out);
        }
    }

    /// Members the server removed from the view leave the coordinator's
    /// sets. One the commit waits for without being recorded in sync (its
    /// addition failed) stops holding the commit: it is not in the recorded
    /// in-sync set, and as a non-member it cannot be recorded again.
    pub(super) fn drop_departed(&mut self, out: &mut Vec<Action>) {
        let view = &self.view;
        let member = |id: &NodeId| view.member(*id).is_some();
        self.want_in.retain(member);
        self.gone.retain(member);
        let pending = self.isr_pending.clone().unwrap_or_default();
        let departed: Vec<NodeId> = self
            .commit_extra
            .iter()
            .copied()
            .filter(|id| !member(id) && !pending.contains(id) && !self.isr.contains(id))
            .collect();
        for id in departed {
            self.commit_extra.remove(&id);
            out.push(Action::RemoveFromCommitSet(id));
        }
    }

    pub(super) fn isr_with_pending(&self) -> BTreeSet<NodeId> {
        let mut isr = self.isr.clone();
        if let Some(p) = &self.isr_pending {
            isr.extend(p.iter().copied());
        }
        isr
    }
}
