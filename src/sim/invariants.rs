//! The rules checked after every event (one coordinator per epoch, no lost
//! acknowledged write, epochs never go down) and at the end (a
//! linearizable history, converged in-sync nodes), and the liveness
//! figure: why the cluster is not served at the end.

use super::Sim;
use crate::types::{NodeId, Role};
use std::collections::{BTreeMap, BTreeSet};

impl Sim {
    pub(super) fn check_invariants(&mut self) {
        // 1. One coordinator per epoch.
        for i in 0..self.cfg.nodes {
            let n = &self.nodes[i];
            let Some(core) = n.core.as_ref().filter(|_| n.alive) else {
                continue;
            };
            if core.role() == Role::Coordinator {
                let e = core.epoch();
                match self.coordinators.get(&e) {
                    Some(&other) if other != n.id => {
                        let msg = format!(
                            "nodes {other} and {} are both coordinator of epoch {e}",
                            n.id
                        );
                        return self.fail(msg);
                    }
                    _ => {
                        self.coordinators.insert(e, n.id);
                    }
                }
            }
            // 3. Epochs never go down at a node (across its restarts too,
            // unless a server lost its state meanwhile: see `forgets_epoch`).
            let e = core.epoch();
            if e < self.nodes[i].max_epoch && self.nodes[i].disk.is_some() {
                let msg = format!(
                    "node {} went from epoch {} back to {e}",
                    self.nodes[i].id, self.nodes[i].max_epoch
                );
                return self.fail(msg);
            }
            self.nodes[i].max_epoch = self.nodes[i].max_epoch.max(e);
        }
        // 3. Epochs never go down at a server (until it loses its state).
        for k in 0..self.servers.len() {
            let Some(a) = self.servers[k].arbiter.as_ref() else {
                continue;
            };
            let se = a.core().lock().epoch();
            if se < self.servers[k].max_epoch {
                let msg = format!(
                    "server {k} epoch went from {} back to {se}",
                    self.servers[k].max_epoch
                );
                return self.fail(msg);
            }
            self.servers[k].max_epoch = se;
        }
        // 3 and 4, as the store saw every committed view.
        let broke = self.store.lock().violation().map(str::to_string);
        if let Some(b) = broke {
            return self.fail(b);
        }
        // 2. Every acknowledged write is held by every recorded in-sync member.
        let isr = self.recorded_isr();
        for id in isr {
            let Some(i) = self.node_by_id(id) else {
                continue;
            };
            let n = &self.nodes[i];
            if !n.alive && n.disk.is_none() {
                continue;
            }
            let st = n.log.state();
            for (pos, what) in &self.acked {
                let held = n.log.pos_at(pos.index) == Some(*pos)
                    || (pos.index <= st.base.index && st.base.epoch >= pos.epoch);
                if !held {
                    let msg = format!(
                        "acknowledged write {what} at {pos} is missing from in-sync node {id} (log {}..{}, base {})",
                        st.base, st.last, st.base
                    );
                    return self.fail(msg);
                }
            }
        }
    }

    /// The in-sync set the store records.
    pub(super) fn recorded_isr(&self) -> BTreeSet<NodeId> {
        let st = self.store.lock();
        st.view().map(|v| v.isr.clone()).unwrap_or_default()
    }

    /// `None` when the coordinator the store records acts as coordinator
    /// (its lease may lapse for a moment when one status push is lost);
    /// otherwise why not, for the liveness figures.
    pub(super) fn why_unserved(&self) -> Option<&'static str> {
        let view = self.store.lock().view().cloned().unwrap_or_default();
        let serving = view
            .coordinator
            .and_then(|c| self.node_by_id(c))
            .is_some_and(|i| {
                let n = &self.nodes[i];
                n.alive && n.serving.role == Role::Coordinator && n.serving.epoch == view.epoch
            });
        if serving && self.report.acked_after_heal > 0 {
            None
        } else if serving {
            Some("writes did not resume after the heal")
        } else if view.recovery.is_some() {
            // A server that lost its state and cannot prove a choice safe
            // waits for an operator, by design.
            Some("recovery waits for an operator")
        } else if !view.isr.iter().any(|&id| self.node_by_id(id).is_some()) {
            // Every in-sync member restarted without its data (under a new
            // id): nobody may safely take over, by design.
            Some("every in-sync member lost its data")
        } else {
            Some("no coordinator")
        }
    }

    pub(super) fn final_checks(&mut self) -> Result<(), String> {
        let seed = self.cfg.seed;
        self.history
            .check()
            .map_err(|e| format!("seed {seed}: history is not linearizable: {e}"))?;
        // All in-sync live nodes converged.
        let isr = self.recorded_isr();
        let mut digests = BTreeMap::new();
        for id in isr {
            if let Some(i) = self.node_by_id(id) {
                let n = &self.nodes[i];
                if n.alive {
                    digests.insert(id, (n.store.meta().applied, n.store.meta().digest));
                }
            }
        }
        let distinct: BTreeSet<_> = digests.values().map(|(_, d)| *d).collect();
        if distinct.len() > 1 {
            return Err(format!(
                "seed {seed}: in-sync nodes differ after healing: {digests:?}"
            ));
        }
        Ok(())
    }
}
