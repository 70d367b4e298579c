//! What a node does with one client request, independent of sockets and
//! threads, so the connection threads and the simulator share it.
//!
//! Reads are answered by the coordinator while its lease is valid and once it
//! applied its predecessor's log. Writes are appended to the log; the answer
//! comes when the op is committed and applied ([`finish`]).

use crate::commands::{Command, Cond, Env, SetExpiry, Value};
use crate::config::NodeSettings;
use crate::core::node::Serving;
use crate::log::{AppendError, Outcome, ReplLog};
use crate::store::Store;
use crate::types::{OpOutcome, Role};
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

/// A request either answered at once, or a write waiting for its commit
/// (then the answer it gets once committed).
pub enum Begun {
    Done(Response),
    Wait(Outcome, Response),
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

    fn check_value(&self, value: &[u8]) -> Result<(), Response> {
        let max = self.settings.max_value_bytes;
        if value.len() > max {
            return Err(error(
                ErrorKind::ValueTooLarge,
                format!(
                    "value is {} bytes, above the limit of {max} bytes",
                    value.len()
                ),
            ));
        }
        Ok(())
    }

    fn env(&self, now_ms: u64) -> Env {
        Env {
            now_ms,
            max_value_bytes: self.settings.max_value_bytes,
        }
    }

    /// Starts a data request (Status and Auth are the caller's). `now_ms`
    /// is this node's wall clock (ms since the UNIX epoch), which decides
    /// expiry while it is coordinator.
    pub fn begin(&self, req: Request, now: Instant, now_ms: u64) -> Begun {
        match req {
            Request::Get { key } => {
                self.command(Command::Get { key }, now, now_ms)
                    .map(|v| match v {
                        Value::Bulk(v) => Response::Value(Some(v)),
                        _ => Response::Value(None),
                    })
            }
            Request::Put { key, value } => {
                let cmd = Command::Set {
                    key,
                    value,
                    cond: Cond::Always,
                    expiry: SetExpiry::Clear,
                    get: false,
                };
                self.command(cmd, now, now_ms).map(|_| Response::Written)
            }
            Request::Delete { key } => self
                .command(Command::Del { keys: vec![key] }, now, now_ms)
                .map(|v| Response::Deleted(v == Value::Int(1))),
            Request::Command(cmd) => self.command(cmd, now, now_ms),
            Request::Status | Request::Auth { .. } | Request::Handoff { .. } | Request::Backup => {
                Begun::Done(error(ErrorKind::BadRequest, "not a data request"))
            }
        }
    }

    /// Starts a command: a read is answered from the map, a write is
    /// evaluated and appended ([`ReplLog::append_command`]).
    fn command(&self, cmd: Command, now: Instant, now_ms: u64) -> Begun {
        let mut bad = None;
        cmd.for_each_key(&mut |k| {
            if bad.is_none() {
                bad = self.check_key(k).err();
            }
        });
        cmd.for_each_value(&mut |v| {
            if bad.is_none() {
                bad = self.check_value(v).err();
            }
        });
        if let Some(r) = bad {
            return Begun::Done(r);
        }
        if !is_serving_coordinator(self.serving, now) {
            return Begun::Done(self.not_coordinator());
        }
        if cmd.is_read() {
            if !self.log.read_ready() {
                return Begun::Done(error(
                    ErrorKind::Unavailable,
                    "the new coordinator is still applying its predecessor's writes; retry",
                ));
            }
            let (value, expired) = if cmd.is_keyspace_read() {
                crate::commands::keyspace(&cmd, self.store, now_ms)
            } else {
                let eval = || crate::commands::eval(&cmd, self.store, self.env(now_ms));
                // Readers of several keys see a batch whole or not at all.
                let e = match &cmd {
                    Command::MGet { .. } | Command::Exists { .. } | Command::Fingerprint { .. } => {
                        self.store.consistent(eval)
                    }
                    _ => eval(),
                };
                (e.value, e.expired)
            };
            // A key seen expired: its deletion commits before the answer.
            return match self.reap(expired, now_ms) {
                Some(rx) => Begun::Wait(rx, Response::Reply(value)),
                None => Begun::Done(Response::Reply(value)),
            };
        }
        if cmd.may_grow() {
            if let Some(r) = self.over_max_memory() {
                return Begun::Done(r);
            }
        }
        match self.log.append_command(self.store, &cmd, self.env(now_ms)) {
            Ok(a) => match a.wait {
                Some(rx) => Begun::Wait(rx, Response::Reply(a.value)),
                None => Begun::Done(Response::Reply(a.value)),
            },
            Err(AppendError::NotLeader) => Begun::Done(self.not_coordinator()),
            Err(AppendError::HandedOff(to)) => Begun::Done(Response::NotCoordinator {
                epoch: self.serving.epoch,
                coordinator: to,
            }),
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

    /// Appends the deletion of keys whose deadline passed; the outcome to
    /// wait for, if anything was appended. A refusal (no longer coordinator,
    /// too few in sync) leaves them to the next coordinator's pass, and the
    /// read that saw them is answered at once: it read committed state.
    pub fn reap(&self, keys: Vec<Vec<u8>>, now_ms: u64) -> Option<Outcome> {
        if keys.is_empty() {
            return None;
        }
        self.log
            .append_command(self.store, &Command::Reap { keys }, self.env(now_ms))
            .ok()
            .and_then(|a| a.wait)
    }
}

impl Begun {
    /// Maps the answer (now or once committed).
    fn map(self, f: impl FnOnce(Value) -> Response) -> Begun {
        let g = |r: Response| match r {
            Response::Reply(v) => f(v),
            other => other,
        };
        match self {
            Begun::Done(r) => Begun::Done(g(r)),
            Begun::Wait(rx, r) => Begun::Wait(rx, g(r)),
        }
    }
}

/// A write appended to the log and not yet answered: a connection that
/// pipelines appends every write it has read, then waits for each in order
/// (one replication batch and one fsync can carry them all).
pub struct PendingWrite {
    outcome: Outcome,
    reply: Response,
    deadline: Instant,
    /// Where its latency is observed when it is answered (metrics).
    timer: Option<(crate::metrics::Histogram, Instant)>,
}

impl PendingWrite {
    /// A write whose answer is due within `timeout` (`write-timeout`).
    pub fn new(outcome: Outcome, reply: Response, timeout: std::time::Duration) -> Self {
        PendingWrite {
            outcome,
            reply,
            deadline: Instant::now() + timeout,
            timer: None,
        }
    }

    /// Observes the time from `started` to the answer into the histogram.
    pub fn timed(mut self, timer: (crate::metrics::Histogram, Instant)) -> Self {
        self.timer = Some(timer);
        self
    }

    /// Waits for the commit (until the deadline) and gives the answer: a
    /// write not committed by then is of unknown outcome, never failed.
    pub fn wait(self) -> Response {
        let left = self.deadline.saturating_duration_since(Instant::now());
        let r = finish(self.outcome.recv_timeout(left), self.reply);
        if let Some((h, started)) = self.timer {
            h.since(started);
        }
        r
    }
}

/// The answer to a write, from what its wait for the commit gave.
pub fn finish(res: Result<OpOutcome, RecvTimeoutError>, reply: Response) -> Response {
    match res {
        Ok(_) => reply,
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
