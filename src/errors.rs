//! Typed errors of the DKV library. The CLIs print them as one sentence.
//!
//! This module imports nothing else of the crate: conversions from other
//! modules' errors live with those errors (`impl From<WireError> for Error`
//! and `Error::from_reply` in `wire`), so the dependency points at `errors`.
//!
//! Where a lower error caused this one (an IO error, a message that could not
//! be decoded), the variant keeps it as its [`source`](std::error::Error::source),
//! so a caller can act on it (`io::ErrorKind`, a downcast to
//! `crate::wire::WireError`). The Display text stays the one sentence it was,
//! source included, because the CLIs print only Display.

use std::io;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("key is {len} bytes, above the limit of {max} bytes")]
    KeyTooLarge { len: usize, max: usize },
    #[error("value is {len} bytes, above the limit of {max} bytes")]
    ValueTooLarge { len: usize, max: usize },
    #[error("key must not be empty")]
    EmptyKey,
    /// The cluster cannot serve now: no server answered, none knows a
    /// coordinator, the coordinator did not answer in time. Retrying later
    /// may help. The message is the whole sentence, cause included ("no
    /// server answered: h:p refused the connection (...)", "no coordinator
    /// could be reached within 5000 ms: ..."), because the same variant
    /// carries an immediate failure and one that waited for a deadline.
    #[error("{0}")]
    Unavailable(String),
    /// The address given as a DKV server's is something else: a node's data
    /// port, a RESP or Sentinel port, an HTTP server... Retrying will not
    /// help; the fix is another address.
    #[error("{addr} {what}")]
    NotAServer { addr: String, what: NotAServer },
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
    /// A message that could not be read (malformed, too large, forged, or a
    /// connection closed in the middle); the source is the
    /// `crate::wire::WireError`. Built by `From<WireError>`, which turns
    /// `WireError::Io` into [`Error::Io`] instead.
    #[error("protocol error: {source}")]
    Wire {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A configuration or identity file could not be read or written.
    #[error("invalid configuration: {context}: {source}")]
    ConfigIo {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("storage: {0}")]
    Storage(String),
    /// A file of the data directory could not be read, written or synced.
    #[error("storage: {context}: {source}")]
    StorageIo {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// What answered at an address given as a DKV server's (see
/// [`Error::NotAServer`]). The Display text completes the sentence that
/// starts with the address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotAServer {
    /// A DKV node's data port: the node answered a server request with its
    /// typed refusal.
    NodeDataPort,
    /// Something answering in the Redis protocol (RESP): a node's RESP port,
    /// the server's Sentinel port, Redis itself.
    Resp,
    /// An HTTP server; holds its status line.
    Http(String),
    /// A TLS port (its alert to a clear-text hello): the client needs TLS.
    Tls,
    /// Bytes of no protocol DKV knows; holds the first ones, escaped.
    Unknown(String),
}

impl std::fmt::Display for NotAServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const FIX: &str = "give the server's address (server-ip-port)";
        match self {
            NotAServer::NodeDataPort => {
                write!(f, "is a DKV node's data port, not the server: {FIX}")
            }
            NotAServer::Tls => write!(
                f,
                "speaks TLS: this client needs the cluster's CA (--tls-ca FILE or DKV_TLS_CA)"
            ),
            NotAServer::Resp => write!(
                f,
                "answered in the Redis protocol (RESP): it is a RESP or Sentinel port, \
                 not the DKV server; {FIX}"
            ),
            NotAServer::Http(line) => write!(
                f,
                "answered in HTTP (\"{line}\"): it is a web server (etcd's client port, say), \
                 not the DKV server; {FIX}"
            ),
            NotAServer::Unknown(bytes) => write!(
                f,
                "answered in a protocol that is not DKV's (it sent \"{bytes}\"): \
                 it is not the DKV server; {FIX}"
            ),
        }
    }
}

impl Error {
    /// A storage error caused by `source` (`context` names the file).
    pub fn storage_io(context: impl Into<String>, source: io::Error) -> Error {
        Error::StorageIo {
            context: context.into(),
            source,
        }
    }

    /// A configuration error caused by `source` (`context` names the file).
    pub fn config_io(context: impl Into<String>, source: io::Error) -> Error {
        Error::ConfigIo {
            context: context.into(),
            source,
        }
    }

    /// The IO error behind this one, if an IO error caused it.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            Error::Io(e) => Some(e),
            Error::ConfigIo { source, .. } | Error::StorageIo { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn io_causes_are_kept_and_printed_as_before() {
        let e = Error::storage_io(
            "/d/wal-1.log",
            io::Error::new(io::ErrorKind::PermissionDenied, "denied"),
        );
        assert_eq!(e.to_string(), "storage: /d/wal-1.log: denied");
        assert_eq!(
            e.io_error().unwrap().kind(),
            io::ErrorKind::PermissionDenied
        );
        assert!(e.source().unwrap().downcast_ref::<io::Error>().is_some());

        let e = Error::config_io(
            "cannot read config file c.json",
            io::ErrorKind::NotFound.into(),
        );
        assert!(e
            .to_string()
            .starts_with("invalid configuration: cannot read config file c.json: "));
        assert_eq!(e.io_error().unwrap().kind(), io::ErrorKind::NotFound);
        assert!(Error::Config("x".into()).source().is_none());
    }
}
