//! One client connection: read a request frame, answer it, repeat.
//!
//! Reads are answered by the coordinator while its lease is valid. Writes are
//! appended to the log and answered once every in-sync member has them and
//! the coordinator applied them. Anything else gets NotCoordinator with the
//! coordinator's address, or an error saying why.

use super::{is_serving_coordinator, Shared};
use crate::log::AppendError;
use crate::types::{Op, OpOutcome};
use crate::wire::{self, ErrorKind, NodeStatus, Request, Response, WireError};
use crossbeam_channel::RecvTimeoutError;
use std::net::TcpStream;
use std::time::Instant;

pub(super) fn serve(sh: &Shared, stream: TcpStream, peer: &str) {
    let _ = stream.set_read_timeout(Some(sh.settings.client_idle_timeout()));
    let max = sh.settings.max_client_frame();
    let mut out = Vec::with_capacity(256);
    loop {
        let req: Request = match wire::read_frame(&mut &stream, max) {
            Ok(r) => r,
            Err(WireError::Closed) => return,
            Err(e) if e.is_timeout() => {
                log::debug!("client {peer} idle, closing");
                return;
            }
            Err(e @ (WireError::TooLarge { .. } | WireError::Malformed(_))) => {
                log::warn!("client {peer}: {e}; closing connection");
                out.clear();
                wire::encode_frame_into(
                    &mut out,
                    &Response::Error {
                        kind: ErrorKind::BadRequest,
                        message: e.to_string(),
                    },
                );
                let _ = std::io::Write::write_all(&mut &stream, &out);
                return;
            }
            Err(e) => {
                log::debug!("client {peer}: {e}");
                return;
            }
        };
        let resp = handle(sh, req);
        out.clear();
        wire::encode_frame_into(&mut out, &resp);
        if std::io::Write::write_all(&mut &stream, &out).is_err() {
            return;
        }
        if sh.stopping() {
            return;
        }
    }
}

fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
    Response::Error {
        kind,
        message: message.into(),
    }
}

fn check_key(sh: &Shared, key: &[u8]) -> Result<(), Response> {
    if key.is_empty() {
        return Err(error(ErrorKind::BadRequest, "key must not be empty"));
    }
    let max = sh.settings.max_key_bytes;
    if key.len() > max {
        return Err(error(
            ErrorKind::KeyTooLarge,
            format!("key is {} bytes, above the limit of {max} bytes", key.len()),
        ));
    }
    Ok(())
}

fn not_coordinator(sh: &Shared) -> Response {
    let s = sh.serving.read();
    Response::NotCoordinator {
        epoch: s.epoch,
        coordinator: s.coordinator_addr.clone(),
    }
}

fn handle(sh: &Shared, req: Request) -> Response {
    match req {
        Request::Get { key } => {
            if let Err(r) = check_key(sh, &key) {
                return r;
            }
            if !is_serving_coordinator(&sh.serving.read(), Instant::now()) {
                return not_coordinator(sh);
            }
            if !sh.log.read_ready() {
                return error(
                    ErrorKind::Unavailable,
                    "the new coordinator is still applying its predecessor's writes; retry",
                );
            }
            Response::Value(sh.store.get(&key))
        }
        Request::Put { key, value } => {
            if let Err(r) = check_key(sh, &key) {
                return r;
            }
            let max = sh.settings.max_value_bytes;
            if value.len() > max {
                return error(
                    ErrorKind::ValueTooLarge,
                    format!(
                        "value is {} bytes, above the limit of {max} bytes",
                        value.len()
                    ),
                );
            }
            write(sh, Op::Put { key, value })
        }
        Request::Delete { key } => {
            if let Err(r) = check_key(sh, &key) {
                return r;
            }
            write(sh, Op::Delete { key })
        }
        Request::Status => Response::Status(status(sh)),
    }
}

fn write(sh: &Shared, op: Op) -> Response {
    if !is_serving_coordinator(&sh.serving.read(), Instant::now()) {
        return not_coordinator(sh);
    }
    let rx = match sh.log.append_leader(op) {
        Ok((_, rx)) => rx,
        Err(AppendError::NotLeader) => return not_coordinator(sh),
        Err(AppendError::Storage(e)) => {
            return error(
                ErrorKind::StorageFailed,
                format!("this node's storage failed ({e}); the write was not accepted"),
            )
        }
        Err(AppendError::NotEnoughReplicas { in_sync, required }) => {
            return error(
                ErrorKind::NotEnoughReplicas,
                format!(
                    "{in_sync} node(s) in sync, {required} required; the write was not accepted"
                ),
            )
        }
    };
    match rx.recv_timeout(sh.settings.write_timeout()) {
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

pub(super) fn status(sh: &Shared) -> NodeStatus {
    let st = sh.log.state();
    let meta = sh.store.meta();
    let s = sh.serving.read();
    NodeStatus {
        node_id: sh.id,
        incarnation: sh.incarnation,
        role: s.role,
        epoch: s.epoch,
        coordinator: s.coordinator,
        last: st.last,
        commit: st.commit,
        applied: meta.applied,
        digest: meta.digest,
        keys: meta.keys,
    }
}
