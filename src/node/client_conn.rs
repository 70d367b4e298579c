//! One client connection: read a request frame, answer it, repeat.
//!
//! Reads are answered by the coordinator while its lease is valid. Writes are
//! appended to the log and answered once every in-sync member has them and
//! the coordinator applied them. Anything else gets NotCoordinator with the
//! coordinator's address, or an error saying why.

use super::requests::{finish, Begun, DataPath};
use super::Shared;
use crate::auth::{self, Gate, Verdict};
use crate::net::TimedStream;
use crate::wire::{self, ErrorKind, NodeStatus, Request, Response, WireError};
use std::net::TcpStream;
use std::time::Instant;

pub(super) fn serve(sh: &Shared, stream: &TcpStream, mut reader: TimedStream<'_>, peer: &str) {
    let mut out = Vec::with_capacity(256);
    let mut gate = Gate::new(sh.security.password.clone());
    if !gate.is_authenticated() {
        // Until it authenticates a client gets little: small frames, and no
        // more silence than the read-timeout.
        reader.set_idle(sh.settings.read_timeout());
    }
    loop {
        let max = gate.max_frame(sh.settings.max_client_frame());
        let req: Request = match wire::read_frame_bytes(&mut reader, max).and_then(|body| {
            wire::decode(&body, max).map_err(|e| match wire::server_request_on_node(&body) {
                true => WireError::NotTheServer,
                false => e,
            })
        }) {
            Ok(r) => r,
            Err(WireError::Closed) => return,
            Err(WireError::NotTheServer) => {
                // A client given this node's address as the server's: answer
                // in the server protocol, which that client reads, with the
                // typed refusal it turns into "... is a DKV node's data port".
                log::info!("client {peer} sent a server request to this data port; refusing it");
                out.clear();
                let refusal = wire::ServerResponse::Error {
                    kind: ErrorKind::NotTheServer,
                    message: "this is a DKV node's data port, not the server".into(),
                };
                wire::encode_frame_into(&mut out, &refusal);
                if std::io::Write::write_all(&mut &*stream, &out).is_ok() {
                    crate::net::close_after_reply(stream, crate::net::LINGER);
                }
                return;
            }
            Err(e) => {
                // A malformed or oversized frame, or a request that took
                // longer than read-timeout (a slow client, not a crash): say
                // why before closing. Anything else just closes.
                let explain = match &e {
                    WireError::TooLarge { .. } | WireError::Malformed(_) => {
                        log::info!("client {peer}: {e}; told it and closed the connection");
                        true
                    }
                    e => {
                        log::debug!("client {peer}: {e}");
                        e.is_timeout() && reader.in_request()
                    }
                };
                if explain {
                    out.clear();
                    let message = match &e {
                        WireError::TooLarge { .. } if !gate.is_authenticated() => {
                            auth::unauthenticated_too_large(&e)
                        }
                        e => e.to_string(),
                    };
                    let error = Response::Error {
                        kind: ErrorKind::BadRequest,
                        message,
                    };
                    wire::encode_frame_into(&mut out, &error);
                    // The rest of an oversized frame may still be arriving:
                    // take it in, so the client reads why instead of a reset.
                    if std::io::Write::write_all(&mut &*stream, &out).is_ok() {
                        crate::net::close_after_reply(stream, crate::net::LINGER);
                    }
                }
                return;
            }
        };
        reader.request_done();
        let resp = match req {
            Request::Auth { password } => {
                let wrong = || format!("client {peer}: wrong password");
                match gate.admit(&password, &sh.counters, wrong) {
                    Verdict::NoPasswordSet => Response::Error {
                        kind: ErrorKind::BadRequest,
                        message: auth::NO_PASSWORD_SET.into(),
                    },
                    Verdict::Admitted => {
                        reader.set_idle(sh.settings.client_idle_timeout());
                        Response::Authenticated
                    }
                    Verdict::Refused => Response::Error {
                        kind: ErrorKind::AuthFailed,
                        message: auth::WRONG_PASSWORD.into(),
                    },
                }
            }
            _ if !gate.is_authenticated() => Response::Error {
                kind: ErrorKind::AuthRequired,
                message: auth::AUTH_REQUIRED.into(),
            },
            req => handle(sh, req),
        };
        out.clear();
        wire::encode_frame_into(&mut out, &resp);
        if std::io::Write::write_all(&mut &*stream, &out).is_err() {
            return;
        }
        if sh.stopping() || gate.exhausted() {
            return;
        }
    }
}

fn handle(sh: &Shared, req: Request) -> Response {
    if req == Request::Status {
        return Response::Status(status(sh));
    }
    let serving = sh.serving.read().clone();
    let parts = DataPath {
        store: &sh.store,
        log: &sh.log,
        serving: &serving,
        settings: &sh.settings,
    };
    match parts.begin(req, Instant::now()) {
        Begun::Done(r) => r,
        Begun::Wait(rx) => finish(rx.recv_timeout(sh.settings.write_timeout())),
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
        used_memory: meta.bytes,
        max_memory: sh.settings.max_memory,
        auth: sh.auth_stats(),
    }
}
