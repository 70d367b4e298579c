//! One client connection: read request frames, answer them in order.
//!
//! Reads are answered by the coordinator while its lease is valid. Writes are
//! appended to the log and answered once every in-sync member has them and
//! the coordinator applied them. Anything else gets NotCoordinator with the
//! coordinator's address, or an error saying why.

use super::requests::{Begun, DataPath, PendingWrite};
use super::Shared;
use crate::auth::{self, Gate, Verdict};
use crate::net::Stream;
use crate::net::TimedStream;
use crate::resp::MAX_PIPELINED;
use crate::wire::{self, ErrorKind, NodeStatus, Request, Response, WireError};
use std::collections::VecDeque;
use std::io::BufReader;
use std::time::{Duration, Instant};

/// A reply not yet written: known, or a write waiting for its commit.
enum Reply {
    Now(Response),
    Later(PendingWrite),
}

/// Replies of one connection in request order, and how many wait.
#[derive(Default)]
struct Replies {
    queue: VecDeque<Reply>,
    waiting: usize,
}

impl Replies {
    fn push(&mut self, r: Reply) {
        if matches!(r, Reply::Later(_)) {
            self.waiting += 1;
        }
        self.queue.push_back(r);
    }

    /// Waits for every started write, in order, and encodes every reply.
    fn flush(&mut self, out: &mut Vec<u8>) {
        for r in self.queue.drain(..) {
            let resp = match r {
                Reply::Now(resp) => resp,
                Reply::Later(p) => p.wait(),
            };
            wire::encode_frame_into(out, &resp);
        }
        self.waiting = 0;
    }
}

/// Whether `buf` starts with a whole frame: the next request can be taken
/// without waiting for the network.
fn frame_buffered(buf: &[u8]) -> bool {
    buf.len() >= 4 && buf.len() - 4 >= u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize
}

/// Reads ahead at most this much of a pipelining client's requests.
const READ_AHEAD: usize = 64 * 1024;

/// Serves one client connection. A client that pipelines (sends requests
/// without waiting for answers) has every write that already arrived
/// appended before the first is waited for, so they share replication
/// batches and fsyncs; answers keep request order, and any other request
/// waits for the connection's earlier writes first (a read sees them).
pub(super) fn serve(sh: &Shared, stream: &Stream, reader: TimedStream<'_>, peer: &str) {
    let mut out = Vec::with_capacity(256);
    let mut gate = Gate::new(sh.security.password.clone());
    let mut reader = BufReader::with_capacity(READ_AHEAD, reader);
    let mut replies = Replies::default();
    if !gate.is_authenticated() {
        // Until it authenticates a client gets little: small frames, and no
        // more silence than the read-timeout.
        reader.get_mut().set_idle(sh.settings.read_timeout());
    }
    loop {
        if !replies.queue.is_empty()
            && (replies.waiting >= MAX_PIPELINED || !frame_buffered(reader.buffer()))
        {
            // Nothing more has arrived: answer what is in.
            replies.flush(&mut out);
            if std::io::Write::write_all(&mut &*stream, &out).is_err() {
                return;
            }
            out.clear();
            if sh.stopping() || gate.exhausted() {
                return;
            }
        }
        let max = gate.max_frame(sh.settings.max_client_frame());
        let req: Request = match wire::read_frame_bytes(&mut reader, max).and_then(|body| {
            wire::decode(&body, max).map_err(|e| match wire::server_request_on_node(&body) {
                true => WireError::NotTheServer,
                false => e,
            })
        }) {
            Ok(r) => r,
            Err(WireError::Closed) => return,
            Err(e) => {
                // Earlier requests are answered first, in order.
                replies.flush(&mut out);
                refuse(stream, &gate, reader.get_ref(), peer, e, &mut out);
                return;
            }
        };
        reader.get_mut().request_done();
        let pipelined = match &req {
            Request::Put { .. } | Request::Delete { .. } => true,
            // A write is evaluated against every entry appended before it.
            Request::Command(c) => !c.is_read(),
            _ => false,
        } && gate.is_authenticated();
        if !pipelined && replies.waiting > 0 {
            replies.flush(&mut out);
        }
        if req == Request::Backup && gate.is_authenticated() {
            // A stream of frames: everything before it is answered first.
            replies.flush(&mut out);
            if std::io::Write::write_all(&mut &*stream, &out).is_err() || !backup(sh, stream) {
                return;
            }
            out.clear();
            continue;
        }
        let reply = match req {
            Request::Auth { password } => {
                let wrong = || format!("client {peer}: wrong password");
                Reply::Now(match gate.admit(&password, &sh.counters, wrong) {
                    Verdict::NoPasswordSet => Response::Error {
                        kind: ErrorKind::BadRequest,
                        message: auth::NO_PASSWORD_SET.into(),
                    },
                    Verdict::Admitted => {
                        reader.get_mut().set_idle(sh.settings.client_idle_timeout());
                        Response::Authenticated
                    }
                    Verdict::Refused => Response::Error {
                        kind: ErrorKind::AuthFailed,
                        message: auth::WRONG_PASSWORD.into(),
                    },
                })
            }
            r if !gate.is_authenticated() => Reply::Now(Response::Error {
                kind: sh.metrics.unauthenticated(&r),
                message: auth::AUTH_REQUIRED.into(),
            }),
            req => handle(sh, req),
        };
        replies.push(reply);
        if gate.exhausted() {
            // The last wrong password closes the connection now, however
            // many more guesses a pipelining client already sent.
            replies.flush(&mut out);
            let _ = std::io::Write::write_all(&mut &*stream, &out);
            return;
        }
    }
}

/// Answers a request that could not be read, when the client should learn
/// why, and closes.
fn refuse(
    stream: &Stream,
    gate: &Gate,
    reader: &TimedStream<'_>,
    peer: &str,
    e: WireError,
    out: &mut Vec<u8>,
) {
    if let WireError::NotTheServer = e {
        // A client given this node's address as the server's: answer in
        // the server protocol, which that client reads, with the typed
        // refusal it turns into "... is a DKV node's data port".
        log::info!("client {peer} sent a server request to this data port; refusing it");
        let refusal = wire::ServerResponse::Error {
            kind: ErrorKind::NotTheServer,
            message: "this is a DKV node's data port, not the server".into(),
        };
        wire::encode_frame_into(out, &refusal);
    } else {
        // A malformed or oversized frame, or a request that took longer
        // than read-timeout (a slow client, not a crash): say why before
        // closing. Anything else just closes.
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
            let message = match &e {
                WireError::TooLarge { .. } if !gate.is_authenticated() => {
                    auth::unauthenticated_too_large(&e)
                }
                e => e.to_string(),
            };
            wire::encode_frame_into(
                out,
                &Response::Error {
                    kind: ErrorKind::BadRequest,
                    message,
                },
            );
        }
    }
    if out.is_empty() {
        return;
    }
    // The rest of an oversized frame may still be arriving: take it in, so
    // the client reads why instead of a reset.
    if std::io::Write::write_all(&mut &*stream, out).is_ok() {
        crate::net::close_after_reply(stream, crate::net::LINGER);
    }
}

/// How long a backup stream waits for a client that reads nothing.
const BACKUP_STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// Streams a backup ([`crate::backup::Feed`]) frame by frame: each frame is
/// written (the socket's back-pressure) before the next is taken. False
/// when the connection must close.
fn backup(sh: &Shared, stream: &Stream) -> bool {
    let serving = sh.serving.read().clone();
    let refusal = if !super::requests::is_serving_coordinator(&serving, Instant::now()) {
        Some(Response::NotCoordinator {
            epoch: serving.epoch,
            coordinator: serving.coordinator_addr.clone(),
        })
    } else if !sh.log.read_ready() {
        Some(super::requests::error(
            ErrorKind::Unavailable,
            "the new coordinator is still applying its predecessor's writes; retry",
        ))
    } else {
        None
    };
    let mut buf = Vec::new();
    if let Some(r) = refusal {
        wire::encode_frame_into(&mut buf, &r);
        return std::io::Write::write_all(&mut &*stream, &buf).is_ok();
    }
    let _ = stream.set_write_timeout(Some(BACKUP_STALL));
    let mut feed = crate::backup::Feed::new(&sh.store, &sh.log);
    let started = Instant::now();
    let ok = loop {
        let (frame, last) = if sh.stopping() {
            let m = "the node is shutting down; the backup was cut short: run it again";
            (super::requests::error(ErrorKind::Unavailable, m), true)
        } else {
            match feed.next_frame() {
                Ok(Some(f)) => {
                    let end = matches!(f, Response::BackupEnd { .. });
                    (f, end)
                }
                Ok(None) => break true,
                Err(m) => (super::requests::error(ErrorKind::Unavailable, m), true),
            }
        };
        if let Response::Error { message, .. } = &frame {
            log::warn!("backup stream stopped: {message}");
        }
        buf.clear();
        wire::encode_frame_into(&mut buf, &frame);
        if std::io::Write::write_all(&mut &*stream, &buf).is_err() {
            log::info!("backup stream: the client stopped reading; closed");
            break false;
        }
        if last {
            break !sh.stopping();
        }
    };
    log::info!("backup stream served in {:?}", started.elapsed());
    let _ = stream.set_write_timeout(None);
    ok
}

fn handle(sh: &Shared, req: Request) -> Reply {
    if req == Request::Status {
        return Reply::Now(Response::Status(status(sh)));
    }
    if let Request::Handoff { to } = req {
        let serving = sh.serving.read().clone();
        if serving.role != crate::types::Role::Coordinator {
            return Reply::Now(Response::NotCoordinator {
                epoch: serving.epoch,
                coordinator: serving.coordinator_addr,
            });
        }
        return Reply::Now(if sh.hand_over(to, Duration::from_secs(4)) {
            Response::Reply(crate::commands::Value::Ok)
        } else {
            Response::Error {
                kind: ErrorKind::BadRequest,
                message: "the coordinator could not hand over (no live in-sync replica caught up, \
                          or the server refused: see its log); it keeps the role"
                    .into(),
            }
        });
    }
    let serving = sh.serving.read().clone();
    let parts = DataPath {
        store: &sh.store,
        log: &sh.log,
        serving: &serving,
        settings: &sh.settings,
    };
    let t = sh.metrics.start(&req);
    match parts.begin(req, Instant::now(), crate::types::wall_ms()) {
        Begun::Done(r) => Reply::Now(sh.metrics.done(t, r)),
        Begun::Wait(rx, r) => Reply::Later(
            PendingWrite::new(rx, r, sh.settings.write_timeout()).timed(sh.metrics.latency(t)),
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
        used_memory: meta.bytes,
        max_memory: sh.settings.max_memory,
        auth: sh.auth_stats(),
    }
}
