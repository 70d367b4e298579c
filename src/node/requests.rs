//! What a node does with one client request, independent of sockets and
//! threads, so the connection threads and the simulator share it.
//!
//! Reads are answered by the coordinator while its lease is valid and once it
//! applied its predecessor's log. Writes are appended to the log; the answer
//! comes when the op is committed and applied ([`finish`]).

use crate::config::NodeSettings;
use crate::core::node::Serving;
use crate::log::{AppendError, Outcome, ReplLog};
use crate::store::Store;
use crate::types::{Op, OpOutcome, Role};
use crate::wire::{ErrorKind, Request, Response};
use crossbeam_channel::RecvTimeoutError;
use std::time::Instant;

/// The parts of a node a request touches.
pub struct DataPath<'a> {
    pub store: &'a Store,
    pub log: &'a ReplLog,
    pub serving: &'a Serving,
    pub settings: &'a NodeSettings,
}

/// A request either answered at once, or a write waiting for its commit.
pub enum Begun {
    Done(Response),
    Wait(Outcome),
}

/// Whether this node may serve as coordinator at `now` (role and lease).
pub fn is_serving_coordinator(s: &Serving, now: Instant) -> bool {
    s.role == Role::Coordinator && s.lease_until.is_some_and(|t| now < t)
}

pub fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
    Response::Error {
        kind,
        message: message.into(),
    }
}

impl DataPath<'_> {
    fn check_key(&self, key: &[u8]) -> Result<(), Response> {
        if key.is_empty() {
            return Err(error(ErrorKind::BadRequest, "key must not be empty"));
        }
        let max = self.settings.max_key_bytes;
        if key.len() > max {
            return Err(error(
                ErrorKind::KeyTooLarge,
                format!("key is {} bytes, above the limit of {max} bytes", key.len()),
            ));
        }
        Ok(())
    }

    /// The out-of-memory refusal, when the data reached `max-memory`.
    fn over_max_memory(&self) -> Option<Response> {
        let max = self.settings.max_memory;
        if max == 0 {
            return None;
        }
        let used = self.store.meta().bytes;
        (used >= max).then(|| {
            error(
                ErrorKind::OutOfMemory,
                format!(
                    "out of memory: the data uses {used} bytes and max-memory is {max}; \
                     writes that add data are refused, reads and deletes still work"
                ),
            )
        })
    }

    fn not_coordinator(&self) -> Response {
        Response::NotCoordinator {
            epoch: self.serving.epoch,
            coordinator: self.serving.coordinator_addr.clone(),
        }
    }

    /// Starts a Get, Put or Delete (Status is the caller's).
    pub fn begin(&self, req: Request, now: Instant) -> Begun {
        let op = match req {
            Request::Get { key } => {
                if let Err(r) = self.check_key(&key) {
                    return Begun::Done(r);
                }
                if !is_serving_coordinator(self.serving, now) {
                    return Begun::Done(self.not_coordinator());
                }
                if !self.log.read_ready() {
                    return Begun::Done(error(
                        ErrorKind::Unavailable,
                        "the new coordinator is still applying its predecessor's writes; retry",
                    ));
                }
                return Begun::Done(Response::Value(self.store.get(&key)));
            }
            Request::Put { key, value } => {
                if let Err(r) = self.check_key(&key) {
                    return Begun::Done(r);
                }
                let max = self.settings.max_value_bytes;
                if value.len() > max {
                    return Begun::Done(error(
                        ErrorKind::ValueTooLarge,
                        format!(
                            "value is {} bytes, above the limit of {max} bytes",
                            value.len()
                        ),
                    ));
                }
                if let Some(r) = self.over_max_memory() {
                    return Begun::Done(r);
                }
                Op::Put { key, value }
            }
            Request::Delete { key } => {
                if let Err(r) = self.check_key(&key) {
                    return Begun::Done(r);
                }
                Op::Delete { key }
            }
            Request::Status | Request::Auth { .. } => {
                return Begun::Done(error(ErrorKind::BadRequest, "not a data request"))
            }
        };
        if !is_serving_coordinator(self.serving, now) {
            return Begun::Done(self.not_coordinator());
        }
        match self.log.append_leader(op) {
            Ok((_, rx)) => Begun::Wait(rx),
            Err(AppendError::NotLeader) => Begun::Done(self.not_coordinator()),
            Err(AppendError::Storage(e)) => Begun::Done(error(
                ErrorKind::StorageFailed,
                format!("this node's storage failed ({e}); the write was not accepted"),
            )),
            Err(AppendError::NotEnoughReplicas { in_sync, required }) => Begun::Done(error(
                ErrorKind::NotEnoughReplicas,
                format!(
                    "{in_sync} node(s) in sync, {required} required; the write was not accepted"
                ),
            )),
        }
    }
}

/// A write appended to the log and not yet answered: a connection that
/// pipelines appends every write it has read, then waits for each in order
/// (one replication batch and one fsync can carry them all).
pub struct PendingWrite {
    outcome: Outcome,
    deadline: Instant,
}

impl PendingWrite {
    /// A write whose answer is due within `timeout` (`write-timeout`).
    pub fn new(outcome: Outcome, timeout: std::time::Duration) -> Self {
        PendingWrite {
            outcome,
            deadline: Instant::now() + timeout,
        }
    }

    /// Waits for the commit (until the deadline) and gives the answer: a
    /// write not committed by then is of unknown outcome, never failed.
    pub fn wait(self) -> Response {
        let left = self.deadline.saturating_duration_since(Instant::now());
        finish(self.outcome.recv_timeout(left))
    }
}

/// The answer to a write, from what its wait for the commit gave.
pub fn finish(res: Result<OpOutcome, RecvTimeoutError>) -> Response {
    match res {
        Ok(OpOutcome::Written) => Response::Written,
        Ok(OpOutcome::Deleted(existed)) => Response::Deleted(existed),
        Err(RecvTimeoutError::Timeout) => error(
            ErrorKind::Timeout,
            "the write was not replicated in time; it may or may not be applied",
        ),
        Err(RecvTimeoutError::Disconnected) => error(
            ErrorKind::Timeout,
            "the coordinator stepped down before the write committed; it may or may not be applied",
        ),
    }
}
