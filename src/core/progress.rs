//! Replication bookkeeping at the coordinator (sans-IO): how far each replica
//! has acknowledged, which members the commit waits for, and the commit index.
//!
//! Rules kept here:
//! * commit = min over the *commit set* of acknowledged indexes; the commit set
//!   always contains the coordinator itself;
//! * the commit index never goes down;
//! * a member is added to the commit set *before* the server records it in the
//!   in-sync set, and removed only *after* the server recorded its removal
//!   (the caller orders that), so the recorded set is always a subset of the
//!   members that hold every committed entry;
//! * a replica is *caught up* (may join) only once it holds every entry a
//!   client may have been told is acknowledged: every committed entry, and
//!   every entry the log held when this coordinator took over. A previous
//!   coordinator may have acknowledged those without this one knowing (its
//!   commit index can lag what the old one committed), so until this
//!   coordinator's own commit passes them, they count as acknowledged.

use crate::types::NodeId;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug)]
pub struct Progress {
    self_id: NodeId,
    /// Highest index each connected replica acknowledged (coordinator included).
    matched: BTreeMap<NodeId, u64>,
    /// Members whose acknowledgement the commit waits for.
    commit_set: BTreeSet<NodeId>,
    /// Replicas with a live stream.
    connected: BTreeSet<NodeId>,
    commit: u64,
    /// The log's last index when this coordinator took over: entries up to
    /// it may have been acknowledged under an earlier epoch.
    inherited: u64,
}

impl Progress {
    /// A fresh tracker for a coordinator that holds its log up to `last`
    /// (what it persisted), whose commit index is `commit`, and whose log
    /// ended at `inherited` when it took over.
    pub fn new(self_id: NodeId, last: u64, commit: u64, inherited: u64) -> Self {
        let mut matched = BTreeMap::new();
        matched.insert(self_id, last);
        Progress {
            self_id,
            matched,
            commit_set: BTreeSet::from([self_id]),
            connected: BTreeSet::new(),
            commit,
            inherited,
        }
    }

    pub fn commit(&self) -> u64 {
        self.commit
    }

    pub fn commit_set(&self) -> &BTreeSet<NodeId> {
        &self.commit_set
    }

    pub fn matched(&self, id: NodeId) -> Option<u64> {
        self.matched.get(&id).copied()
    }

    /// Every tracked member's acknowledged index (the coordinator's own included).
    pub fn matched_all(&self) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        self.matched.iter().map(|(&id, &i)| (id, i))
    }

    /// Lowest index any tracked replica still needs (for log truncation).
    pub fn min_matched(&self) -> u64 {
        self.matched.values().copied().min().unwrap_or(0)
    }

    /// Starts tracking a replica that holds the log up to `index`.
    pub fn track(&mut self, id: NodeId, index: u64) {
        self.matched.insert(id, index);
        self.connected.insert(id);
    }

    /// Stops tracking a replica's acknowledgements (its link is gone). If it is
    /// in the commit set it stays there, holding the commit back, until
    /// [`Progress::remove_from_commit_set`].
    pub fn untrack(&mut self, id: NodeId) {
        self.connected.remove(&id);
        if id != self.self_id && !self.commit_set.contains(&id) {
            self.matched.remove(&id);
        }
    }

    /// Records an acknowledgement; returns the new commit index if it advanced.
    pub fn on_ack(&mut self, id: NodeId, index: u64) -> Option<u64> {
        let m = self.matched.entry(id).or_insert(0);
        if index > *m {
            *m = index;
        }
        self.recompute()
    }

    /// True when `id` holds every entry that may have been acknowledged
    /// (every committed one, and the log this coordinator inherited), so it
    /// may join the commit set.
    pub fn caught_up(&self, id: NodeId) -> bool {
        self.matched
            .get(&id)
            .is_some_and(|&m| m >= self.commit.max(self.inherited))
    }

    /// Makes the commit wait for `id` too. Must happen before the server
    /// records `id` as in sync.
    pub fn add_to_commit_set(&mut self, id: NodeId) {
        self.matched.entry(id).or_insert(0);
        self.commit_set.insert(id);
    }

    /// Stops waiting for `id`. Must happen only after the server recorded its
    /// removal from the in-sync set. Returns the new commit index if it advanced.
    pub fn remove_from_commit_set(&mut self, id: NodeId) -> Option<u64> {
        if id == self.self_id {
            return None;
        }
        self.commit_set.remove(&id);
        if !self.connected.contains(&id) {
            // Nobody to wait for: it no longer pins the log either.
            self.matched.remove(&id);
        }
        self.recompute()
    }

    fn recompute(&mut self) -> Option<u64> {
        let min = self
            .commit_set
            .iter()
            .map(|id| self.matched.get(id).copied().unwrap_or(0))
            .min()
            .unwrap_or(0);
        // The commit index never goes down, and this guard is what keeps it:
        // a member added behind the commit (`add_to_commit_set`) lowers the
        // minimum, and the commit stays where it is until the member catches
        // up (an assertion after it could not fire; `commit_never_goes_down`
        // shows it).
        if min > self.commit {
            self.commit = min;
            Some(min)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_node_commits_on_own_append() {
        let mut p = Progress::new(1, 0, 0, 0);
        assert_eq!(p.on_ack(1, 1), Some(1));
        assert_eq!(p.on_ack(1, 3), Some(3));
    }

    #[test]
    fn commit_is_min_over_commit_set_only() {
        let mut p = Progress::new(1, 0, 0, 0);
        p.track(2, 0);
        // 2 is tracked but not in the commit set: it does not hold commits back.
        assert_eq!(p.on_ack(1, 5), Some(5));
        assert!(!p.caught_up(2));
        assert_eq!(p.on_ack(2, 5), None);
        assert!(p.caught_up(2));
        p.add_to_commit_set(2);
        assert_eq!(p.on_ack(1, 8), None);
        assert_eq!(p.on_ack(2, 7), Some(7));
        assert_eq!(p.on_ack(2, 9), Some(8));
    }

    #[test]
    fn gone_member_holds_commit_until_removed() {
        let mut p = Progress::new(1, 0, 0, 0);
        p.add_to_commit_set(2);
        p.on_ack(2, 3);
        assert_eq!(p.on_ack(1, 3), Some(3));
        p.on_ack(1, 6);
        p.untrack(2);
        assert_eq!(p.commit(), 3, "a gone member still holds the commit");
        assert_eq!(p.min_matched(), 3, "and pins the log");
        assert_eq!(p.remove_from_commit_set(2), Some(6));
        assert_eq!(p.min_matched(), 6, "once removed, it pins nothing");
    }

    /// Simulator seed 29: a new coordinator whose log ends at 1326 knows the
    /// commit only to 1324, but the old coordinator had acknowledged 1325.
    /// A fresh replica at 1324 must not join: it lacks an acknowledged write.
    #[test]
    fn a_replica_joins_only_with_the_whole_inherited_log() {
        let mut p = Progress::new(3, 1326, 1324, 1326);
        p.track(5, 0);
        p.on_ack(5, 1324);
        assert!(!p.caught_up(5), "1325 may have been acknowledged");
        p.on_ack(5, 1326);
        assert!(p.caught_up(5));
    }

    #[test]
    fn commit_never_goes_down() {
        let mut p = Progress::new(1, 10, 10, 10);
        p.add_to_commit_set(3);
        assert_eq!(p.on_ack(3, 2), None);
        assert_eq!(p.commit(), 10);
        assert_eq!(p.remove_from_commit_set(1), None);
        assert!(p.commit_set().contains(&1));
    }
}
