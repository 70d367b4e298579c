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

use crate::auth::{ClusterKey, Nonce, SessionKey, Tag, TAG_LEN};
use crate::types::{Entry, Epoch, LogPos, NodeId, Role};
use bincode::Options;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::sync::Arc;

/// "DKV1" — first field of every handshake and beacon.
pub const MAGIC: u32 = 0x444B_5631;
/// Bumped on any incompatible change of the messages below.
pub const PROTOCOL_VERSION: u16 = 3;
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
    /// The message's authentication tag is wrong: forged, replayed or
    /// sent with another secret.
    #[error("message authentication failed (wrong cluster secret, forged or replayed)")]
    Forged,
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

/// The sending half of a connection: frames carry an HMAC tag over a
/// per-direction sequence number when the connection is authenticated
/// (see [`crate::auth`]), and are plain frames otherwise.
pub struct Sealer {
    key: Option<SessionKey>,
    seq: u64,
}

impl Sealer {
    /// Plain frames, no tag.
    pub fn plain() -> Sealer {
        Sealer { key: None, seq: 0 }
    }

    pub fn new(key: Option<SessionKey>) -> Sealer {
        Sealer { key, seq: 0 }
    }

    /// Appends one frame for `msg` to `buf`: length prefix, body, tag.
    pub fn frame_into<T: Serialize + ?Sized>(&mut self, buf: &mut Vec<u8>, msg: &T) {
        let start = buf.len();
        encode_frame_into(buf, msg);
        if let Some(k) = &self.key {
            let tag = k.tag(self.seq, &buf[start + 4..]);
            self.seq += 1;
            buf.extend_from_slice(&tag);
            let len = (buf.len() - start - 4) as u32;
            buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
        }
    }

    /// Writes one frame with a single `write_all`.
    pub fn write<W: Write, T: Serialize + ?Sized>(&mut self, w: &mut W, msg: &T) -> io::Result<()> {
        let mut buf = Vec::with_capacity(64);
        self.frame_into(&mut buf, msg);
        w.write_all(&buf)?;
        w.flush()
    }
}

/// The receiving half matching [`Sealer`]: checks and strips the tag.
pub struct Opener {
    key: Option<SessionKey>,
    seq: u64,
}

impl Opener {
    pub fn plain() -> Opener {
        Opener { key: None, seq: 0 }
    }

    pub fn new(key: Option<SessionKey>) -> Opener {
        Opener { key, seq: 0 }
    }

    /// Reads, authenticates and decodes one frame whose body is at most `max` bytes.
    pub fn read<R: Read, T: DeserializeOwned>(
        &mut self,
        r: &mut R,
        max: usize,
    ) -> Result<T, WireError> {
        let Some(k) = &self.key else {
            return read_frame(r, max);
        };
        let mut body = read_frame_bytes(r, max.saturating_add(TAG_LEN))?;
        if body.len() < TAG_LEN {
            return Err(WireError::Forged);
        }
        let tag: Tag = body[body.len() - TAG_LEN..].try_into().expect("tag length");
        body.truncate(body.len() - TAG_LEN);
        if !k.ok(self.seq, &body, &tag) {
            return Err(WireError::Forged);
        }
        self.seq += 1;
        decode(&body, max)
    }
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
    /// The connector's handshake nonce (used by peer connections).
    pub nonce: Nonce,
}

impl Hello {
    pub fn new(kind: ConnKind, nonce: Nonce) -> Self {
        Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            kind,
            nonce,
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
    /// A node talking to the server (registration, status, elections).
    Member,
}

impl ConnKind {
    /// Peer connections (node to node, node to server) are authenticated with
    /// the cluster secret, and answered with a [`HelloReply`].
    pub fn is_peer(&self) -> bool {
        !matches!(self, ConnKind::Client)
    }
}

/// The acceptor's answer to a peer connection's [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    /// The acceptor's nonce and, when it has a cluster secret, its proof.
    Accept {
        nonce: Nonce,
        proof: Option<Tag>,
    },
    Refused {
        kind: ErrorKind,
        message: String,
    },
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
    /// The client password; required first when the node has one.
    Auth {
        password: Vec<u8>,
    },
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
    /// The client password; required first when the server has one.
    Auth { password: Vec<u8> },
    /// A running node tells a server that does not know it (restarted
    /// without its state, or a new machine at the same address) who it is
    /// and what it knows, so the server can rebuild its view safely.
    Rejoin(Box<RejoinReport>),
}

/// What a running node reports when it rejoins (see `ServerRequest::Rejoin`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejoinReport {
    pub node_id: NodeId,
    pub incarnation: u64,
    pub data_addr: String,
    pub beacon_addr: String,
    pub resp_addr: Option<String>,
    /// The node's current epoch and role.
    pub epoch: Epoch,
    pub role: Role,
    /// The end of its log.
    pub last: LogPos,
    /// It is the coordinator and its lease had not run out when it sent this.
    pub holds_lease: bool,
    /// The last epoch it coordinated and that epoch's in-sync set, pending
    /// additions included (`None` if it never was coordinator).
    pub coordinated: Option<(Epoch, Vec<NodeId>)>,
    /// The last view it adopted.
    pub view: ClusterView,
}

impl ServerRequest {
    /// Requests only a cluster member may send (on a `Member` connection).
    pub fn is_member_only(&self) -> bool {
        matches!(
            self,
            ServerRequest::Register { .. }
                | ServerRequest::Status { .. }
                | ServerRequest::SetIsr { .. }
                | ServerRequest::RequestGrant { .. }
                | ServerRequest::Rejoin(_)
        )
    }
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
    Authenticated,
    /// The server does not know the sender, or knows less than it does (it
    /// restarted without its state): send `Rejoin`.
    NotRegistered {
        epoch: Epoch,
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
    /// What the server's authentication refused since it started.
    pub auth: AuthStats,
    /// Why the server grants nothing right now (it is rebuilding its view
    /// from the nodes' reports), as a sentence for operators.
    pub recovery: Option<String>,
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
    /// Grows with every beacon `from` sends in this incarnation; with the
    /// incarnation it lets receivers drop replayed beacons.
    pub seq: u64,
}

impl Beacon {
    /// The datagram: the body, followed by its tag when there is a cluster key.
    pub fn encode(&self, key: Option<&ClusterKey>) -> Vec<u8> {
        let mut bytes = encode(self);
        if let Some(k) = key {
            let tag = k.beacon_tag(&bytes);
            bytes.extend_from_slice(&tag);
        }
        bytes
    }

    /// Parses a datagram; anything but a well-formed beacon of our version,
    /// tagged with our cluster key when we have one, is an error.
    pub fn decode(bytes: &[u8], key: Option<&ClusterKey>) -> Result<Beacon, WireError> {
        let bytes = match key {
            None => bytes,
            Some(k) => {
                if bytes.len() < TAG_LEN {
                    return Err(WireError::Forged);
                }
                let (body, tag) = bytes.split_at(bytes.len() - TAG_LEN);
                if !k.beacon_ok(body, tag) {
                    return Err(WireError::Forged);
                }
                body
            }
        };
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
        assert!(Beacon::decode(b"hello world", None).is_err());
        assert!(Beacon::decode(&[0u8; 600], None).is_err());
    }

    fn beacon() -> Beacon {
        Beacon {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            from: 3,
            incarnation: 2,
            epoch: 7,
            role: Role::Replica,
            last: LogPos::new(7, 10),
            applied: LogPos::new(7, 9),
            digest: 42,
            seq: 5,
        }
    }

    #[test]
    fn beacon_tag_is_checked() {
        let k = ClusterKey::new(b"0123456789abcdef");
        let b = beacon();
        let bytes = b.encode(Some(&k));
        assert_eq!(Beacon::decode(&bytes, Some(&k)).unwrap(), b);
        // Wrong secret, no tag, a flipped bit: all forged.
        let other = ClusterKey::new(b"0123456789abcdeX");
        assert!(matches!(
            Beacon::decode(&bytes, Some(&other)),
            Err(WireError::Forged)
        ));
        assert!(matches!(
            Beacon::decode(&b.encode(None), Some(&k)),
            Err(WireError::Forged)
        ));
        let mut flipped = bytes.clone();
        flipped[4] ^= 1;
        assert!(matches!(
            Beacon::decode(&flipped, Some(&k)),
            Err(WireError::Forged)
        ));
        // An open node refuses a tagged beacon (trailing bytes).
        assert!(Beacon::decode(&bytes, None).is_err());
    }

    #[test]
    fn sealed_frames_authenticate_order_and_content() {
        let k = ClusterKey::new(b"0123456789abcdef");
        let (c, a) = (crate::auth::nonce(), crate::auth::nonce());
        let (to_acceptor, _) = k.session(&c, &a);
        let mut tx = Sealer::new(Some(to_acceptor.clone()));
        let mut buf = Vec::new();
        tx.frame_into(&mut buf, &Request::Status);
        let first = buf.len();
        tx.frame_into(&mut buf, &Request::Get { key: b"k".to_vec() });

        let mut rx = Opener::new(Some(to_acceptor.clone()));
        let mut r = buf.as_slice();
        assert_eq!(
            rx.read::<_, Request>(&mut r, 1024).unwrap(),
            Request::Status
        );
        assert!(matches!(
            rx.read::<_, Request>(&mut r, 1024).unwrap(),
            Request::Get { .. }
        ));

        // Replaying the first frame, or dropping it, fails the sequence.
        let mut rx = Opener::new(Some(to_acceptor.clone()));
        let mut replay = [&buf[..first], &buf[..first]].concat();
        let mut r = replay.as_slice();
        rx.read::<_, Request>(&mut r, 1024).unwrap();
        assert!(matches!(
            rx.read::<_, Request>(&mut r, 1024),
            Err(WireError::Forged)
        ));
        let mut rx = Opener::new(Some(to_acceptor));
        assert!(matches!(
            rx.read::<_, Request>(&mut &buf[first..], 1024),
            Err(WireError::Forged)
        ));
        // A flipped body bit.
        replay[5] ^= 1;
        let mut rx = Opener::new(Some(k.session(&c, &a).0));
        assert!(matches!(
            rx.read::<_, Request>(&mut replay.as_slice(), 1024),
            Err(WireError::Forged)
        ));
        // A plain frame where a sealed one is expected.
        let mut plain = Vec::new();
        encode_frame_into(&mut plain, &Request::Status);
        let mut rx = Opener::new(Some(k.session(&c, &a).0));
        assert!(rx.read::<_, Request>(&mut plain.as_slice(), 1024).is_err());
    }
}
