//! Plain data types shared by every part of DKV: ids, epochs, log positions,
//! operations and roles. Nothing here does IO.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A node's identity, assigned by the server at first registration.
pub type NodeId = u64;

/// Node ids as people read them in logs and errors: `{1, 2, 3}`.
pub fn fmt_ids<'a>(ids: impl IntoIterator<Item = &'a NodeId>) -> String {
    let v: Vec<String> = ids.into_iter().map(|i| i.to_string()).collect();
    format!("{{{}}}", v.join(", "))
}

/// A coordinator that may be unknown, as people read it: `node 3`, `none`.
pub fn fmt_coordinator(c: Option<NodeId>) -> String {
    c.map_or_else(|| "none".to_string(), |c| format!("node {c}"))
}

/// A coordinator term. Only the server grants epochs; every coordinator change
/// increments it. Epoch 0 means "no coordinator was ever granted".
pub type Epoch = u64;

/// A position in the replicated log: the epoch of the coordinator that created
/// the entry, and its index (1-based; index 0 is the empty log).
///
/// Positions order lexicographically by `(epoch, index)`. That is the "most
/// complete log" order the election uses: a log whose last entry was written
/// under a later epoch holds everything committed before that epoch.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LogPos {
    pub epoch: Epoch,
    pub index: u64,
}

impl LogPos {
    pub const ZERO: LogPos = LogPos { epoch: 0, index: 0 };

    pub fn new(epoch: Epoch, index: u64) -> Self {
        LogPos { epoch, index }
    }
}

impl fmt::Display for LogPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.epoch, self.index)
    }
}

/// A state-changing operation. Both are idempotent overwrites, which is what
/// lets a snapshot taken while writes continue ("fuzzy") be repaired by
/// replaying the log from the position where the snapshot started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
}

impl Op {
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }

    /// Bytes this op carries, used to bound replication batches.
    pub fn payload_len(&self) -> usize {
        match self {
            Op::Put { key, value } => key.len() + value.len(),
            Op::Delete { key } => key.len(),
        }
    }
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub pos: LogPos,
    pub op: Op,
}

/// The outcome of applying an op to the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpOutcome {
    Written,
    /// Delete: whether the key existed.
    Deleted(bool),
}

/// A node's role as it reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Registered, not yet following anybody.
    Joining,
    /// Following the coordinator; in the in-sync set or catching up.
    Replica,
    /// Holds the grant for the current epoch.
    Coordinator,
    /// Running an election (failure of the coordinator suspected).
    Candidate,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Joining => "joining",
            Role::Replica => "replica",
            Role::Coordinator => "coordinator",
            Role::Candidate => "candidate",
        })
    }
}
