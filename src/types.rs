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

/// A state-changing operation, as the log carries it. Every op states the
/// *result* for the keys it touches (a value and its deadline, or absence),
/// never a computation on what was there: INCR is logged as the Put of the
/// new value, EXPIRE as the Put of the value with its deadline. So applying
/// is deterministic on every replica and in the simulator, and every op is
/// an idempotent overwrite, which is what lets a snapshot taken while writes
/// continue ("fuzzy") be repaired by replaying the log from the position
/// where the snapshot started.
///
/// Deadlines are absolute wall-clock times in milliseconds since the UNIX
/// epoch, chosen by the coordinator that evaluated the command. Replicas
/// never expire keys themselves: the coordinator appends their deletion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// A Put whose key expires at `expires_at` (ms since the UNIX epoch).
    PutExpiring {
        key: Vec<u8>,
        value: Vec<u8>,
        expires_at: u64,
    },
    /// Several ops applied as one: every replica applies all or none, and
    /// readers of several keys see all or none of them.
    Batch(Vec<Op>),
    /// Deletes every key.
    Flush,
}

impl Op {
    /// Bytes this op carries, used to bound replication batches.
    pub fn payload_len(&self) -> usize {
        match self {
            Op::Put { key, value } | Op::PutExpiring { key, value, .. } => key.len() + value.len(),
            Op::Delete { key } => key.len(),
            Op::Batch(ops) => ops.iter().map(|o| o.payload_len() + 16).sum(),
            Op::Flush => 0,
        }
    }

    /// The op that gives `key` its value or absence, with `expires_at` when set.
    pub fn put(key: Vec<u8>, value: Vec<u8>, expires_at: Option<u64>) -> Op {
        match expires_at {
            None => Op::Put { key, value },
            Some(expires_at) => Op::PutExpiring {
                key,
                value,
                expires_at,
            },
        }
    }

    /// What this op leaves at `key`: `None` when it does not touch it,
    /// `Some(None)` when it leaves the key absent, `Some(Some(..))` the value
    /// and deadline. The last op of a batch that touches the key decides.
    pub fn effect_on(&self, key: &[u8]) -> Option<Option<(&[u8], Option<u64>)>> {
        match self {
            Op::Put { key: k, value } if k == key => Some(Some((value, None))),
            Op::PutExpiring {
                key: k,
                value,
                expires_at,
            } if k == key => Some(Some((value, Some(*expires_at)))),
            Op::Delete { key: k } if k == key => Some(None),
            Op::Flush => Some(None),
            Op::Batch(ops) => ops.iter().rev().find_map(|o| o.effect_on(key)),
            _ => None,
        }
    }

    /// Calls `f` with every key this op names (not a flush's).
    pub fn for_each_key(&self, f: &mut impl FnMut(&[u8])) {
        match self {
            Op::Put { key, .. } | Op::PutExpiring { key, .. } | Op::Delete { key } => f(key),
            Op::Batch(ops) => ops.iter().for_each(|o| o.for_each_key(f)),
            Op::Flush => {}
        }
    }

    /// Whether this op is or holds a flush.
    pub fn has_flush(&self) -> bool {
        match self {
            Op::Flush => true,
            Op::Batch(ops) => ops.iter().any(Op::has_flush),
            _ => false,
        }
    }
}

/// This machine's wall clock in ms since the UNIX epoch: what a coordinator
/// chooses and checks deadlines by.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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
