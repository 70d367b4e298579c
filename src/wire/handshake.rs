//! The handshake: the [`Hello`] frame that opens every TCP connection (what
//! kind of connection it is, magic, version, nonce) and the acceptor's
//! [`HelloReply`] to a peer connection.

use super::client::ErrorKind;
use super::repl::FollowRequest;
use super::{MAGIC, PROTOCOL_VERSION};
use crate::auth::{Nonce, Tag};
use serde::{Deserialize, Serialize};

/// Largest handshake frame.
pub const MAX_HELLO_FRAME: usize = 1024;

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
