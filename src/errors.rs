//! Typed errors of the DKV library. The CLIs print them as one sentence.

use crate::wire::{ErrorKind, WireError};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("key is {len} bytes, above the limit of {max} bytes")]
    KeyTooLarge { len: usize, max: usize },
    #[error("value is {len} bytes, above the limit of {max} bytes")]
    ValueTooLarge { len: usize, max: usize },
    #[error("key must not be empty")]
    EmptyKey,
    #[error("no coordinator could be reached before the deadline: {0}")]
    Unavailable(String),
    #[error("not enough in-sync replicas: {0}")]
    NotEnoughReplicas(String),
    #[error("the write may or may not have been applied: {0}")]
    Indeterminate(String),
    #[error("the node refused the request: {0}")]
    Refused(String),
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("{0}")]
    OutOfMemory(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Maps an error reply from a node or the server.
    pub fn from_reply(kind: ErrorKind, message: String) -> Error {
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
        }
    }
}

impl From<WireError> for Error {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Io(e) => Error::Io(e),
            other => Error::Protocol(other.to_string()),
        }
    }
}
