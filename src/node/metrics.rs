//! A node's Prometheus metrics (`--metrics-listen`, see `crate::metrics`).
//!
//! Most are read at scrape time from state the node keeps anyway: the log's
//! positions (`ReplLog::state`, one short lock the write path also takes,
//! held only to copy six numbers), the store's size (`Store::meta`), the
//! serving view, the per-replica acknowledged positions, the auth counters.
//! Counted here, because nothing else records them: request latencies, WAL
//! fsync and snapshot durations, times this node became coordinator,
//! elections started, refused writes by reason; and, published by the
//! driver after each input (it owns the core), the in-sync set and member
//! count the core last adopted. All are relaxed atomics; no scrape holds a
//! lock a request waits for while it encodes.

use super::Shared;
use crate::core::node::Election;
use crate::core::node::NodeCore;
use crate::metrics::{self, Collector, DescriptorEncoder, Histogram, Out};
use crate::types::Role;
use crate::wire::{ErrorKind, Request, Response};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Weak;
use std::time::Instant;

/// Why a write was refused (label `reason` of `dkv_refused_writes_total`).
#[derive(Clone, Copy, Debug)]
pub enum Refused {
    NotEnoughReplicas = 0,
    OutOfMemory = 1,
    Auth = 2,
    Other = 3,
}

const REASONS: [&str; 4] = ["not_enough_replicas", "out_of_memory", "auth", "other"];

/// What the node counts (the rest is read at scrape time).
pub(crate) struct NodeMetrics {
    pub write_latency: Histogram,
    pub read_latency: Histogram,
    /// The write-ahead log's (shared with it), with a data directory.
    pub fsync: Option<Histogram>,
    pub snapshot: Histogram,
    pub became_coordinator: AtomicU64,
    pub elections_started: AtomicU64,
    refused: [AtomicU64; 4],
    /// The in-sync set and members of the view the core last adopted.
    isr: AtomicU64,
    members: AtomicU64,
    voting: AtomicBool,
}

/// A data request being timed: when it started and which histogram it
/// goes to.
#[derive(Clone, Copy)]
pub struct Timer {
    started: Instant,
    write: bool,
}

impl NodeMetrics {
    pub fn new(fsync: Option<Histogram>) -> NodeMetrics {
        NodeMetrics {
            write_latency: Histogram::new(metrics::LATENCY_BUCKETS),
            read_latency: Histogram::new(metrics::LATENCY_BUCKETS),
            fsync,
            snapshot: Histogram::new(metrics::SLOW_BUCKETS),
            became_coordinator: AtomicU64::new(0),
            elections_started: AtomicU64::new(0),
            refused: Default::default(),
            isr: AtomicU64::new(0),
            members: AtomicU64::new(0),
            voting: AtomicBool::new(false),
        }
    }

    /// Starts timing a data request.
    pub fn start(&self, req: &Request) -> Timer {
        let write = match req {
            Request::Put { .. } | Request::Delete { .. } => true,
            Request::Command(c) => !c.is_read(),
            _ => false,
        };
        Timer {
            started: Instant::now(),
            write,
        }
    }

    /// A request answered at once: its latency, and a refused write's
    /// reason. A redirect (not the coordinator) was not served here and is
    /// not counted.
    pub fn done(&self, t: Timer, r: Response) -> Response {
        if matches!(r, Response::NotCoordinator { .. }) {
            return r;
        }
        self.latency(t).0.since(t.started);
        if let (true, Response::Error { kind, .. }) = (t.write, &r) {
            let reason = match kind {
                ErrorKind::NotEnoughReplicas => Some(Refused::NotEnoughReplicas),
                ErrorKind::OutOfMemory => Some(Refused::OutOfMemory),
                ErrorKind::AuthRequired | ErrorKind::AuthFailed => Some(Refused::Auth),
                // Outcome unknown, not refused.
                ErrorKind::Timeout => None,
                _ => Some(Refused::Other),
            };
            if let Some(reason) = reason {
                self.refused(reason);
            }
        }
        r
    }

    /// The histogram a waiting request is observed into when it is answered.
    pub fn latency(&self, t: Timer) -> (Histogram, Instant) {
        let h = if t.write {
            &self.write_latency
        } else {
            &self.read_latency
        };
        (h.clone(), t.started)
    }

    pub fn refused(&self, reason: Refused) {
        metrics::inc(&self.refused[reason as usize]);
    }

    /// A request refused before it reached the data path because the
    /// client has not authenticated: counted when it was a write. Gives the
    /// refusal's kind.
    pub fn unauthenticated(&self, req: &Request) -> ErrorKind {
        if self.start(req).write {
            self.refused(Refused::Auth);
        }
        ErrorKind::AuthRequired
    }

    /// A RESP command the auth gate answered (refused, or AUTH itself):
    /// counted when it was a write refused for want of authentication.
    pub fn resp_gated(&self, cmd: &[u8], authenticated: bool) {
        if !authenticated && super::resp_data::is_write(cmd) {
            self.refused(Refused::Auth);
        }
    }

    /// Called by the driver after every input the core handled.
    pub fn observe_core(&self, core: &NodeCore) {
        let view = core.view();
        self.isr.store(view.isr.len() as u64, Ordering::Relaxed);
        self.members
            .store(view.members.len() as u64, Ordering::Relaxed);
        let voting = matches!(core.election(), Election::Voting { .. });
        if voting && !self.voting.swap(true, Ordering::Relaxed) {
            metrics::inc(&self.elections_started);
        } else if !voting {
            self.voting.store(false, Ordering::Relaxed);
        }
    }
}

/// Reads the node's state at scrape time. Holds the node weakly: a scrape
/// racing shutdown renders nothing rather than keeping it alive.
pub(crate) struct NodeCollector {
    pub sh: Weak<Shared>,
    /// Live connections of the data port (replication streams included)
    /// and of the RESP port.
    pub native: crate::net::listener::LiveCount,
    pub resp: Option<crate::net::listener::LiveCount>,
}

impl fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeCollector")
    }
}

impl Collector for NodeCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let Some(sh) = self.sh.upgrade() else {
            return Ok(());
        };
        let mut o = Out(&mut enc);
        let m = &sh.metrics;
        let s = sh.serving.read().clone();
        let st = sh.log.state();
        let meta = sh.store.meta();
        let now = Instant::now();
        o.gauge("dkv_node_id", "This node's id.", sh.id)?;
        let roles = [
            (Role::Coordinator, "coordinator"),
            (Role::Replica, "replica"),
            (Role::Candidate, "candidate"),
            (Role::Joining, "joining"),
        ];
        o.gauges(
            "dkv_node_role",
            "1 for the role this node has now (coordinator, replica, candidate, joining), 0 for the others.",
            "role",
            roles.map(|(r, n)| (n.to_string(), (s.role == r) as i64)),
        )?;
        o.gauge(
            "dkv_epoch",
            "The epoch this node is in (granted by the server; one coordinator per epoch).",
            s.epoch,
        )?;
        o.gauge(
            "dkv_coordinator_id",
            "The coordinator this node knows of (0: none).",
            s.coordinator.unwrap_or(0),
        )?;
        o.gauge(
            "dkv_isr_size",
            "Members of the in-sync set in the view this node last adopted.",
            metrics::get(&m.isr),
        )?;
        o.gauge(
            "dkv_members",
            "Registered members in the view this node last adopted.",
            metrics::get(&m.members),
        )?;
        o.gauge(
            "dkv_min_in_sync",
            "The min-in-sync setting: fewer in-sync nodes than this and writes are refused.",
            sh.settings.min_in_sync,
        )?;
        o.gauge(
            "dkv_commit_set_size",
            "Coordinator only: members whose acknowledgement a commit waits for (itself included); 0 elsewhere.",
            sh.log.commit_set().len(),
        )?;
        let lease = s
            .lease_until
            .map(|t| t.saturating_duration_since(now).as_secs_f64())
            .unwrap_or(0.0);
        o.gauge(
            "dkv_lease_remaining_seconds",
            "Coordinator only: time left on its lease from the server; 0 when none or expired (reads and writes are refused).",
            lease,
        )?;
        o.gauge(
            "dkv_log_last_index",
            "Index of the last entry in this node's log.",
            st.last.index,
        )?;
        o.gauge(
            "dkv_commit_index",
            "Index of the last entry known committed (held by every in-sync member).",
            st.commit,
        )?;
        o.gauge(
            "dkv_applied_index",
            "Index of the last entry applied to this node's data.",
            st.applied,
        )?;
        let lag: Vec<(crate::types::NodeId, u64, u64)> = sh
            .log
            .replica_lag()
            .into_iter()
            .filter(|&(id, _, _)| id != sh.id)
            .collect();
        o.gauges(
            "dkv_replica_lag_entries",
            "Coordinator only: entries of its log a connected replica has not acknowledged, by replica id.",
            "replica",
            lag.iter().map(|&(id, n, _)| (id.to_string(), n)),
        )?;
        o.gauges(
            "dkv_replica_lag_bytes",
            "Coordinator only: bytes of keys and values in the entries a connected replica has not acknowledged, by replica id.",
            "replica",
            lag.iter().map(|&(id, _, b)| (id.to_string(), b)),
        )?;
        o.histogram(
            "dkv_write_latency_seconds",
            "Time from a write's arrival to its answer (committed on every in-sync member and applied, or refused), at the coordinator.",
            &m.write_latency,
        )?;
        o.histogram(
            "dkv_read_latency_seconds",
            "Time from a read's arrival to its answer, at the coordinator.",
            &m.read_latency,
        )?;
        if let Some(h) = &m.fsync {
            o.histogram(
                "dkv_wal_fsync_duration_seconds",
                "Duration of each fsync of the write-ahead log.",
                h,
            )?;
        }
        o.histogram(
            "dkv_snapshot_write_duration_seconds",
            "Duration of writing a snapshot of the data to disk.",
            &m.snapshot,
        )?;
        o.counter(
            "dkv_became_coordinator",
            "Times this node took the coordinator role (a grant from the server).",
            metrics::get(&m.became_coordinator),
        )?;
        o.counter(
            "dkv_elections_started",
            "Elections this node started as a candidate (coordinator suspected failed).",
            metrics::get(&m.elections_started),
        )?;
        o.counters(
            "dkv_refused_writes",
            "Writes refused, by reason: too few in sync (not_enough_replicas), max-memory reached (out_of_memory), not authenticated (auth), any other refusal (other).",
            "reason",
            REASONS
                .iter()
                .zip(&m.refused)
                .map(|(r, c)| (r.to_string(), metrics::get(c))),
        )?;
        let mut conns = vec![("native".to_string(), self.native.live())];
        if let Some(r) = &self.resp {
            conns.push(("resp".to_string(), r.live()));
        }
        o.gauges(
            "dkv_open_connections",
            "Open connections by port: native (the data port, replication streams included) and resp.",
            "port",
            conns,
        )?;
        o.gauge(
            "dkv_memory_used_bytes",
            "Bytes of keys and values plus a per-key overhead: what max-memory is checked against.",
            meta.bytes,
        )?;
        o.gauge(
            "dkv_memory_max_bytes",
            "The max-memory setting (0: no limit).",
            sh.settings.max_memory,
        )?;
        o.gauge("dkv_keys", "Keys held.", meta.keys)?;
        let a = sh.auth_stats();
        o.counter(
            "dkv_forged_beacons",
            "Beacons dropped because their tag did not verify (wrong or no cluster secret).",
            a.forged_beacons,
        )?;
        o.counter(
            "dkv_replayed_beacons",
            "Beacons dropped as replays (a sequence number already seen).",
            a.replayed_beacons,
        )?;
        o.counter(
            "dkv_rejected_peers",
            "Peer connections refused: a failed handshake proof or a forged frame.",
            a.rejected_peers,
        )?;
        o.counter(
            "dkv_failed_client_auth",
            "Client AUTH attempts with a wrong password.",
            a.failed_client_auth,
        )?;
        Ok(())
    }
}
