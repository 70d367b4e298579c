//! The replication stream: the replica's [`FollowRequest`] (in its `Hello`),
//! then [`ReplMsg`] from the coordinator and [`ReplAck`] back.

use crate::types::{Entry, Epoch, LogPos, NodeId};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowRequest {
    pub node_id: NodeId,
    pub incarnation: u64,
    /// The epoch the replica believes current.
    pub epoch: Epoch,
    /// The last entry of the replica's log.
    pub last: LogPos,
    /// The replica's last committed entry: never divergent, so a stream can
    /// always resume after it when the coordinator still holds it.
    pub committed: LogPos,
}

/// Coordinator -> replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplMsg {
    /// The replica must discard its state; a snapshot taken at `pos` follows.
    SnapshotBegin {
        epoch: Epoch,
        pos: LogPos,
    },
    SnapshotChunk {
        pairs: Vec<crate::store::Pair>,
    },
    SnapshotEnd {
        epoch: Epoch,
    },
    /// Entries following `prev`, and the coordinator's commit index.
    Append {
        epoch: Epoch,
        prev: LogPos,
        entries: Vec<Arc<Entry>>,
        commit: u64,
    },
    /// The coordinator will not feed this replica.
    Refused {
        epoch: Epoch,
        why: Refusal,
    },
}

/// Why a coordinator will not feed a replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The node asked is not the coordinator (any more, or not yet).
    NotCoordinator,
    /// The replica has seen an epoch newer than the coordinator's.
    NewerEpoch { replica: Epoch, coordinator: Epoch },
    /// A node asked to follow itself.
    OwnStream,
    /// The coordinator's view does not list the replica (yet: a node that
    /// just registered asks before the coordinator's next view).
    NotMember(NodeId),
    /// The replica said it is leaving (it is shutting down) and is out of
    /// the recorded in-sync set now: it may stop without the commit waiting
    /// for it.
    Released,
}

impl Refusal {
    /// Whether normal operation produces this refusal (a join, a change of
    /// coordinator), so it is worth no more than a debug line; the replica
    /// asks again at its next try.
    pub fn expected(&self) -> bool {
        matches!(
            self,
            Refusal::NotCoordinator | Refusal::NotMember(_) | Refusal::Released
        )
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotCoordinator => write!(f, "this node is not the coordinator"),
            Refusal::NewerEpoch {
                replica,
                coordinator,
            } => write!(
                f,
                "the replica knows epoch {replica}, newer than this coordinator's {coordinator}"
            ),
            Refusal::OwnStream => write!(f, "a node cannot follow itself"),
            Refusal::NotMember(id) => {
                write!(f, "node {id} is not a member in this coordinator's view")
            }
            Refusal::Released => f.write_str("the replica left the in-sync set; it may stop"),
        }
    }
}

/// Replica -> coordinator, after each applied batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplAck {
    pub epoch: Epoch,
    /// Last entry now in the replica's log.
    pub last: LogPos,
    /// The replica is shutting down: the coordinator takes it out of the
    /// in-sync set (it keeps acknowledging meanwhile, so no write waits),
    /// then ends the stream with [`Refusal::Released`].
    pub leaving: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Op;
    use crate::wire::{decode, encode};

    #[test]
    fn append_roundtrip_shares_entries() {
        let e = Arc::new(Entry {
            pos: LogPos::new(1, 7),
            op: Op::Delete { key: b"x".to_vec() },
        });
        let msg = ReplMsg::Append {
            epoch: 1,
            prev: LogPos::new(1, 6),
            entries: vec![e.clone()],
            commit: 6,
        };
        let back: ReplMsg = decode(&encode(&msg), 1 << 20).unwrap();
        assert_eq!(back, msg);
    }
}
