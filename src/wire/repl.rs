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
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
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
        reason: String,
    },
}

/// Replica -> coordinator, after each applied batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplAck {
    pub epoch: Epoch,
    /// Last entry now in the replica's log.
    pub last: LogPos,
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
