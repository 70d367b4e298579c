//! The one wire module: every byte DKV puts on a socket is produced and parsed here.
//!
//! * TCP: length-prefixed frames, a big-endian `u32` length followed by a bincode
//!   body. Every connection starts with a [`Hello`] frame carrying a magic number
//!   and the protocol version. Frames above the caller's limit are refused
//!   *before* any buffer is allocated for them.
//! * UDP: one [`Beacon`] per datagram, bincode, at most [`MAX_BEACON_BYTES`].
//!
//! Encoding is bincode 1.3 with varint integers, decoded with a size limit and
//! with trailing bytes rejected. To stay compatible, enums here are
//! append-only: bincode encodes a variant by its index, so never reorder or
//! remove a variant, only add new ones at the end.

use crate::types::{Entry, Epoch, LogPos, NodeId, Role};
use bincode::Options;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::sync::Arc;

/// "DKV1" — first field of every handshake and beacon.
pub const MAGIC: u32 = 0x444B_5631;
/// Bumped on any incompatible change of the messages below.
pub const PROTOCOL_VERSION: u16 = 1;
/// Largest beacon datagram we send or accept.
pub const MAX_BEACON_BYTES: usize = 512;
/// Largest frame on a server connection (views of large clusters fit easily).
pub const MAX_SERVER_FRAME: usize = 1 << 20;
/// Largest handshake frame.
pub const MAX_HELLO_FRAME: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection closed")]
    Closed,
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl WireError {
    /// True for read timeouts (the peer said nothing for the timeout period).
    pub fn is_timeout(&self) -> bool {
        matches!(self, WireError::Io(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }
}

fn codec(limit: usize) -> impl Options {
    bincode::DefaultOptions::new()
        .with_varint_encoding()
        .with_little_endian()
        .reject_trailing_bytes()
        .with_limit(limit as u64)
}

/// Encodes `msg` as a body (no length prefix).
pub fn encode<T: Serialize + ?Sized>(msg: &T) -> Vec<u8> {
    codec(usize::MAX)
        .serialize(msg)
        .expect("bincode serialization of DKV messages cannot fail")
}

/// Decodes a body, refusing anything larger than `limit` or with trailing bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, WireError> {
    if bytes.len() > limit {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            max: limit,
        });
    }
    codec(limit)
        .deserialize(bytes)
        .map_err(|e| WireError::Malformed(e.to_string()))
}

/// Appends one frame (length prefix + body) for `msg` to `buf`.
pub fn encode_frame_into<T: Serialize + ?Sized>(buf: &mut Vec<u8>, msg: &T) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; 4]);
    codec(usize::MAX)
        .serialize_into(&mut *buf, msg)
        .expect("bincode serialization of DKV messages cannot fail");
    let len = (buf.len() - start - 4) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Writes one frame with a single `write_all`.
pub fn write_frame<W: Write, T: Serialize + ?Sized>(w: &mut W, msg: &T) -> io::Result<()> {
    let mut buf = Vec::with_capacity(64);
    encode_frame_into(&mut buf, msg);
    w.write_all(&buf)?;
    w.flush()
}

/// Reads one frame body of at most `max` bytes. The buffer grows only as bytes
/// actually arrive, so a huge length prefix alone costs nothing.
pub fn read_frame_bytes<R: Read>(r: &mut R, max: usize) -> Result<Vec<u8>, WireError> {
    let mut len_buf = [0u8; 4];
    match r.read_exact(&mut len_buf) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(WireError::Closed),
        Err(e) => return Err(WireError::Io(e)),
    }
    let len = u32::from_be_bytes(len_buf) as usize;
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    let mut body = Vec::with_capacity(len.min(64 * 1024));
    let got = r.take(len as u64).read_to_end(&mut body)?;
    if got != len {
        return Err(WireError::Malformed(format!(
            "truncated frame: expected {len} bytes, got {got}"
        )));
    }
    Ok(body)
}

/// Reads and decodes one frame of at most `max` bytes.
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R, max: usize) -> Result<T, WireError> {
    let body = read_frame_bytes(r, max)?;
    decode(&body, max)
}

// ---------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------

/// First frame on every TCP connection, to a node or to the server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub magic: u32,
    pub version: u16,
    pub kind: ConnKind,
}

impl Hello {
    pub fn new(kind: ConnKind) -> Self {
        Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            kind,
        }
    }

    /// Checks magic and version; the error is a sentence for the peer.
    pub fn check(&self) -> Result<(), String> {
        if self.magic != MAGIC {
            return Err("not a DKV peer (bad magic number)".into());
        }
        if self.version != PROTOCOL_VERSION {
            return Err(format!(
                "protocol version {} is not supported (this peer speaks {})",
                self.version, PROTOCOL_VERSION
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnKind {
    /// A client: [`Request`] frames in, [`Response`] frames out. On the server
    /// port the frames are [`ServerRequest`] / [`ServerResponse`].
    Client,
    /// A replica asking the coordinator for the replication stream.
    Follow(FollowRequest),
}

// ---------------------------------------------------------------------------
// Client <-> node
// ---------------------------------------------------------------------------

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
}

// ---------------------------------------------------------------------------
// Replication (replica -> coordinator handshake, then both directions)
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Node / client <-> server
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerRequest {
    /// A node joins (or rejoins with its id).
    Register {
        node_id: Option<NodeId>,
        incarnation: u64,
        data_addr: String,
        beacon_addr: String,
        last: LogPos,
        /// Where the node serves RESP (Redis protocol), if it does.
        resp_addr: Option<String>,
    },
    /// Who is the coordinator?
    WhoIsCoordinator,
    /// The whole cluster view.
    View,
    /// The coordinator's periodic push; renews its lease.
    Status {
        from: NodeId,
        epoch: Epoch,
        reports: Vec<MemberReport>,
    },
    /// The coordinator records a new in-sync set.
    SetIsr {
        from: NodeId,
        epoch: Epoch,
        isr: Vec<NodeId>,
    },
    /// An election winner asks for epoch `epoch + 1`.
    RequestGrant {
        candidate: NodeId,
        /// The epoch the candidate saw fail.
        epoch: Epoch,
        last: LogPos,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerResponse {
    Registered {
        node_id: NodeId,
        view: ClusterView,
    },
    Coordinator {
        epoch: Epoch,
        node_id: NodeId,
        addr: String,
    },
    NoCoordinator {
        epoch: Epoch,
    },
    View(ClusterView),
    /// Accepted; carries the current view.
    Ok(ClusterView),
    /// Refused because the sender's epoch or role is stale.
    Rejected {
        epoch: Epoch,
        reason: String,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
}

/// What the coordinator reports about one member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberReport {
    pub node_id: NodeId,
    pub role: Role,
    pub applied: LogPos,
    pub digest: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub epoch: Epoch,
    pub coordinator: Option<NodeId>,
    pub isr: Vec<NodeId>,
    /// Version of `isr` at the server; grows with every change.
    pub isr_version: u64,
    pub members: Vec<MemberInfo>,
}

impl ClusterView {
    pub fn member(&self, id: NodeId) -> Option<&MemberInfo> {
        self.members.iter().find(|m| m.node_id == id)
    }

    pub fn coordinator_addr(&self) -> Option<&str> {
        self.coordinator
            .and_then(|c| self.member(c))
            .map(|m| m.data_addr.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub node_id: NodeId,
    pub incarnation: u64,
    pub data_addr: String,
    pub beacon_addr: String,
    /// The node's RESP (Redis protocol) address, if it serves one.
    pub resp_addr: Option<String>,
    pub role: Role,
    pub in_sync: bool,
    pub log_position: LogPos,
    pub digest: u64,
    /// Milliseconds since the coordinator last reported this member.
    pub last_status_ms: Option<u64>,
}

// ---------------------------------------------------------------------------
// Beacons (UDP)
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beacon {
    pub magic: u32,
    pub version: u16,
    pub from: NodeId,
    /// Grows at every restart of `from`; beacons of an older incarnation are stale.
    pub incarnation: u64,
    pub epoch: Epoch,
    pub role: Role,
    pub last: LogPos,
    pub applied: LogPos,
    pub digest: u64,
}

impl Beacon {
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Parses a datagram; anything but a well-formed beacon of our version is an error.
    pub fn decode(bytes: &[u8]) -> Result<Beacon, WireError> {
        let b: Beacon = decode(bytes, MAX_BEACON_BYTES)?;
        if b.magic != MAGIC || b.version != PROTOCOL_VERSION {
            return Err(WireError::Malformed(
                "beacon with wrong magic or version".into(),
            ));
        }
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Op;

    #[test]
    fn frame_roundtrip() {
        let req = Request::Put {
            key: b"k".to_vec(),
            value: vec![0, 1, 2, 255],
        };
        let mut buf = Vec::new();
        encode_frame_into(&mut buf, &req);
        let got: Request = read_frame(&mut buf.as_slice(), 1024).unwrap();
        assert_eq!(got, req);
    }

    #[test]
    fn huge_length_prefix_is_refused_without_allocating() {
        let bytes = [0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        let err = read_frame_bytes(&mut &bytes[..], 1 << 20).unwrap_err();
        assert!(matches!(err, WireError::TooLarge { len, .. } if len == u32::MAX as usize));
    }

    #[test]
    fn truncated_frame_is_malformed() {
        let mut buf = Vec::new();
        encode_frame_into(&mut buf, &Request::Status);
        buf.extend_from_slice(&[0, 0, 0, 10, 1, 2]);
        let mut r = buf.as_slice();
        let _: Request = read_frame(&mut r, 1024).unwrap();
        assert!(matches!(
            read_frame::<_, Request>(&mut r, 1024),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn unknown_variant_and_trailing_bytes_are_malformed() {
        // Variant index 200 does not exist.
        assert!(decode::<Request>(&[200], 1024).is_err());
        let mut body = encode(&Request::Status);
        body.push(0);
        assert!(decode::<Request>(&body, 1024).is_err());
    }

    #[test]
    fn declared_vec_length_beyond_limit_is_refused() {
        // A Get whose key claims 2^40 bytes: the limit stops it before allocation.
        let mut body = vec![0u8]; // variant Get
        body.push(253); // varint u64 marker
        body.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(decode::<Request>(&body, 1 << 20).is_err());
    }

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

    #[test]
    fn beacon_rejects_garbage() {
        assert!(Beacon::decode(b"hello world").is_err());
        assert!(Beacon::decode(&[0u8; 600]).is_err());
    }
}
