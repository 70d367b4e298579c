//! Client <-> node messages: [`Request`], [`Response`], the node's
//! [`NodeStatus`]; and [`ErrorKind`] and [`AuthStats`], which the server's
//! messages use too.

use crate::types::{Epoch, LogPos, NodeId, Role};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Get {
        key: Vec<u8>,
    },
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// The node's own view of itself (role, epoch, log position, digest).
    Status,
    /// The client password; required first when the node has one.
    Auth {
        password: Vec<u8>,
    },
    /// Any other data command (expiry, conditional and atomic writes,
    /// transactions, scans); answered with [`Response::Reply`].
    Command(crate::commands::Command),
    /// Hand the coordinator role to `to` (or the best in-sync replica): a
    /// planned handoff (`dkv-client failover`). Answered once this node no
    /// longer coordinates (`Reply(Ok)`), or with why it could not.
    Handoff {
        to: Option<NodeId>,
    },
    /// A consistent snapshot of the whole store ([`crate::backup`]):
    /// answered by a stream of frames, [`Response::BackupBegin`], then
    /// [`Response::BackupPairs`] and [`Response::BackupEntries`] in any
    /// order, then [`Response::BackupEnd`] (or an error frame, which ends it).
    Backup,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Value(Option<Vec<u8>>),
    Written,
    Deleted(bool),
    Status(NodeStatus),
    /// This node is not the coordinator; `coordinator` is its best knowledge.
    NotCoordinator {
        epoch: Epoch,
        coordinator: Option<String>,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
    /// The password was right; the connection may send anything now.
    Authenticated,
    /// The answer to a [`Request::Command`].
    Reply(crate::commands::Value),
    /// A backup stream starts: the store's applied position `start` (every
    /// pair that follows reflects at least this position) and its key count
    /// then (for progress).
    BackupBegin {
        start: LogPos,
        keys: u64,
    },
    /// Pairs of one shard copied from the map ("fuzzy": each pair as of
    /// some position between the stream's start and end).
    BackupPairs(Vec<crate::store::Pair>),
    /// Committed entries, contiguous, continuing from the last ones sent
    /// (the first follows `start`).
    BackupEntries(Vec<crate::types::Entry>),
    /// The stream's end position (the last entry sent) and the store's
    /// digest and key count at exactly that position.
    BackupEnd {
        end: LogPos,
        digest: u64,
        keys: u64,
    },
}

/// Error classes a node or the server reports. Append-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request is malformed or violates a limit; retrying will not help.
    BadRequest,
    /// The key exceeds the node's key-size limit.
    KeyTooLarge,
    /// The value exceeds the node's value-size limit.
    ValueTooLarge,
    /// The node cannot serve now (no coordinator, failover in progress); retry.
    Unavailable,
    /// Fewer in-sync nodes than `min-in-sync`; the write was refused.
    NotEnoughReplicas,
    /// The write was accepted but not committed in time; its outcome is unknown.
    Timeout,
    /// Too many connections; the connection is closed.
    TooManyConnections,
    /// The peer speaks another protocol version.
    VersionMismatch,
    /// The node's storage failed; it accepts no writes.
    StorageFailed,
    /// The connection must authenticate (client password) first.
    AuthRequired,
    /// Wrong password, or a peer without the right cluster secret.
    AuthFailed,
    /// The data reached `max-memory`; writes that add data are refused.
    OutOfMemory,
    /// A node's data port got a server request (a client was given the
    /// node's address as the server's). Sent as a [`ServerResponse`] so that
    /// client can read it.
    ///
    /// [`ServerResponse`]: super::ServerResponse
    NotTheServer,
}

impl crate::errors::Error {
    /// Maps an error reply from a node or the server.
    pub fn from_reply(kind: ErrorKind, message: String) -> crate::errors::Error {
        use crate::errors::Error;
        match kind {
            ErrorKind::Unavailable => Error::Unavailable(message),
            ErrorKind::NotEnoughReplicas => Error::NotEnoughReplicas(message),
            ErrorKind::Timeout => Error::Indeterminate(message),
            ErrorKind::KeyTooLarge
            | ErrorKind::ValueTooLarge
            | ErrorKind::BadRequest
            | ErrorKind::TooManyConnections
            | ErrorKind::VersionMismatch
            | ErrorKind::StorageFailed => Error::Refused(message),
            ErrorKind::AuthRequired | ErrorKind::AuthFailed => Error::Auth(message),
            ErrorKind::OutOfMemory => Error::OutOfMemory(message),
            ErrorKind::NotTheServer => Error::Refused(message),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: NodeId,
    pub incarnation: u64,
    pub role: Role,
    pub epoch: Epoch,
    pub coordinator: Option<NodeId>,
    /// Last entry in the node's log.
    pub last: LogPos,
    /// Highest entry known committed.
    pub commit: u64,
    /// Position the map reflects; `digest` is taken at this position.
    pub applied: LogPos,
    pub digest: u64,
    pub keys: u64,
    /// Bytes of data accounted against `max-memory` (0 in `max_memory`: no limit).
    pub used_memory: u64,
    pub max_memory: u64,
    pub auth: AuthStats,
}

/// What the authentication layer refused since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthStats {
    /// True when a cluster secret is set.
    pub cluster_secret: bool,
    pub forged_beacons: u64,
    pub replayed_beacons: u64,
    pub rejected_peers: u64,
    pub failed_client_auth: u64,
}
