//! Node / client <-> server messages: [`ServerRequest`], [`ServerResponse`],
//! and the [`ClusterView`] the server hands out.

use super::client::{AuthStats, ErrorKind};
use crate::types::{Epoch, LogPos, NodeId, Role};
use serde::{Deserialize, Serialize};

/// Largest frame on a server connection (views of large clusters fit easily).
pub const MAX_SERVER_FRAME: usize = 1 << 20;

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
    /// An operator removes a member that is neither the coordinator nor in
    /// the in-sync set (`dkv-client member remove`); the id is refused from
    /// then on. Answered with the new view.
    RemoveMember { node_id: NodeId },
    /// The coordinator of `epoch` hands its role to `to`, an in-sync member
    /// holding everything it holds (a planned handoff): the server grants
    /// `epoch + 1` to `to` at once, without waiting for the lease, which the
    /// resigning coordinator gave up before asking.
    Handoff {
        from: NodeId,
        epoch: Epoch,
        to: NodeId,
    },
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
                | ServerRequest::Handoff { .. }
        )
    }
}

/// True when `body`, which failed to decode as a client [`Request`], is a
/// request a client sends the server: a client given a node's data port as
/// the server's address. The node answers it with
/// `ServerResponse::Error { kind: ErrorKind::NotTheServer, .. }`.
///
/// [`Request`]: super::Request
pub fn server_request_on_node(body: &[u8]) -> bool {
    super::decode::<ServerRequest>(body, MAX_SERVER_FRAME).is_ok_and(|r| !r.is_member_only())
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

impl ServerResponse {
    /// What kind of answer this is, for messages about an answer that does
    /// not fit the question.
    pub fn name(&self) -> &'static str {
        match self {
            ServerResponse::Registered { .. } => "a registration",
            ServerResponse::Coordinator { .. } => "a coordinator's address",
            ServerResponse::NoCoordinator { .. } => "\"no coordinator\"",
            ServerResponse::View(_) => "a cluster view",
            ServerResponse::Ok(_) => "an acceptance",
            ServerResponse::Rejected { .. } => "a refusal",
            ServerResponse::Error { .. } => "an error",
            ServerResponse::Authenticated => "\"authenticated\"",
            ServerResponse::NotRegistered { .. } => "\"not registered\"",
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode, encode, Request};

    #[test]
    fn a_node_recognises_a_client_server_request_and_nothing_else() {
        for req in [ServerRequest::WhoIsCoordinator, ServerRequest::View] {
            let body = encode(&req);
            assert!(decode::<Request>(&body, 1024).is_err());
            assert!(server_request_on_node(&body));
        }
        let auth = encode(&ServerRequest::Auth {
            password: b"pw".to_vec(),
        });
        assert!(server_request_on_node(&auth));
        // Member requests and client requests are not it.
        let grant = encode(&ServerRequest::RequestGrant {
            candidate: 1,
            epoch: 1,
            last: LogPos::new(1, 1),
        });
        assert!(!server_request_on_node(&grant));
        assert!(!server_request_on_node(&encode(&Request::Status)));
    }
}
