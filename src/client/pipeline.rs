//! Pipelined requests on the native protocol: [`Client::pipeline`] sends
//! many Get / Put / Delete requests in one write and reads their answers in
//! order, one round trip for up to [`MAX_PIPELINE_OPS`] requests or
//! [`MAX_PIPELINE_BYTES`] of frames.
//!
//! What a node guarantees and this relies on: it handles the requests of one
//! connection in the order they arrived and answers them in that order (a
//! node that pipelines on its side too still answers in order, and a read
//! waits for the connection's earlier writes). Nothing else: a node that
//! answers one frame at a time serves a pipeline correctly, only slower.

use super::{ms, unexpected, wire_clause, Bounded, Client};
use crate::cli::io_text;
use crate::errors::{Error, Result};
use crate::net::Stream;
use crate::wire::{self, Request, Response};
use std::io::{self, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

/// Most requests sent in one round trip of a pipeline.
pub const MAX_PIPELINE_OPS: usize = 1024;

/// Most bytes of request frames sent in one round trip of a pipeline (a
/// single request larger than this goes alone).
pub const MAX_PIPELINE_BYTES: usize = 1024 * 1024;

/// Request bytes up to this are written by the calling thread before it reads
/// the answers: so few always fit in the two sockets' buffers, so the write
/// cannot wait for the node, which may itself wait for us to read its
/// answers. Above it a helper thread writes while the caller reads.
const WRITE_INLINE_BYTES: usize = 64 * 1024;

/// One request of a pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// [`Client::get`].
    Get(Vec<u8>),
    /// [`Client::put`]: key, value.
    Put(Vec<u8>, Vec<u8>),
    /// [`Client::delete`].
    Delete(Vec<u8>),
}

impl Op {
    pub fn get(key: impl Into<Vec<u8>>) -> Op {
        Op::Get(key.into())
    }

    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Op {
        Op::Put(key.into(), value.into())
    }

    pub fn delete(key: impl Into<Vec<u8>>) -> Op {
        Op::Delete(key.into())
    }

    pub fn key(&self) -> &[u8] {
        match self {
            Op::Get(k) | Op::Put(k, _) | Op::Delete(k) => k,
        }
    }

    /// True for Put and Delete: an unanswered one has an unknown outcome.
    pub fn is_write(&self) -> bool {
        !matches!(self, Op::Get(_))
    }

    fn request(&self) -> Request {
        match self {
            Op::Get(key) => Request::Get { key: key.clone() },
            Op::Put(key, value) => Request::Put {
                key: key.clone(),
                value: value.clone(),
            },
            Op::Delete(key) => Request::Delete { key: key.clone() },
        }
    }
}

/// The answer to one [`Op`], as the single-op methods give it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResult {
    /// A Get's value ([`Client::get`]).
    Value(Option<Vec<u8>>),
    /// A Put was committed ([`Client::put`]).
    Written,
    /// A Delete was committed; whether the key existed ([`Client::delete`]).
    Deleted(bool),
}

/// What one round trip on a connection gave.
enum Exchange {
    /// Not a byte of the requests left: nothing was applied.
    NotSent(io::Error),
    /// The answers that came, in order, and why the rest did not (the
    /// connection broke or the deadline passed), if any is missing.
    Answered(Vec<Response>, Option<String>),
}

impl Client {
    /// Sends `ops` pipelined to the coordinator and returns one result per
    /// op, in the order of `ops`.
    ///
    /// - Requests go out in one write per round trip, and answers are read in
    ///   order. The node handles one connection's requests in order, so a
    ///   Get after a Put of the same key in one pipeline sees that Put.
    /// - Every key and value is checked against the limits first; an op over
    ///   a limit fails the whole call with nothing sent.
    /// - `op_timeout` bounds the whole call (see [`Client::pipeline_before`]
    ///   to give another deadline).
    /// - A long pipeline is cut into round trips of at most
    ///   [`MAX_PIPELINE_OPS`] requests and [`MAX_PIPELINE_BYTES`] of frames,
    ///   so neither side buffers without bound: the next round trip is sent
    ///   once every answer of the previous one arrived.
    /// - A refusal (not the coordinator, unavailable, not enough replicas,
    ///   out of memory, ...) is that op's error, and the op was not applied;
    ///   the other ops keep their own answers. Ops are never retried one by
    ///   one: resending op k after op k+1 was applied would reorder writes.
    ///   Only a round trip that applied nothing is resent whole, after
    ///   finding the coordinator again: one whose every answer was "not the
    ///   coordinator" or "unavailable", or one that could not be sent at all
    ///   (no connection), within the deadline, as single ops are retried.
    /// - When the connection breaks or the deadline passes before every
    ///   answer came, each unanswered Put or Delete is
    ///   [`Error::Indeterminate`] (it may or may not have been applied, never
    ///   reported as failed) and each unanswered Get an ordinary
    ///   [`Error::Unavailable`]. The ops of later round trips are not sent
    ///   and are [`Error::Unavailable`] ("not sent": surely not applied).
    ///
    /// `Err` for the whole call means nothing was sent, so nothing was
    /// applied: an op over a limit, or no coordinator reachable in time for
    /// the first round trip.
    ///
    /// ```no_run
    /// use dkv::client::{Op, OpResult};
    /// let mut c = dkv::Client::connect("127.0.0.1:12345")?;
    /// let answers = c.pipeline(&[Op::put("k", "v"), Op::get("k"), Op::delete("k")])?;
    /// assert_eq!(answers[1].as_ref().ok(), Some(&OpResult::Value(Some(b"v".to_vec()))));
    /// # Ok::<(), dkv::Error>(())
    /// ```
    pub fn pipeline(&mut self, ops: &[Op]) -> Result<Vec<Result<OpResult>>> {
        self.pipeline_before(ops, self.deadline())
    }

    /// [`Client::pipeline`], giving up at `deadline` instead of
    /// `op_timeout` after the call.
    pub fn pipeline_before(
        &mut self,
        ops: &[Op],
        deadline: Instant,
    ) -> Result<Vec<Result<OpResult>>> {
        for op in ops {
            self.check_key(op.key())?;
            if let Op::Put(_, value) = op {
                if value.len() > self.opts.max_value_bytes {
                    return Err(Error::ValueTooLarge {
                        len: value.len(),
                        max: self.opts.max_value_bytes,
                    });
                }
            }
        }
        let start = Instant::now();
        let mut results: Vec<Result<OpResult>> = Vec::with_capacity(ops.len());
        let mut buf = Vec::new();
        while results.len() < ops.len() {
            let first = results.len();
            let end = encode_round(ops, first, &mut buf);
            let round = &ops[first..end];
            match self.round_trip(round, &buf, start, deadline) {
                Ok((answers, complete)) => {
                    results.extend(answers);
                    if !complete {
                        not_sent(
                            &mut results,
                            ops.len(),
                            "an earlier request of the pipeline went unanswered",
                        );
                    }
                }
                Err(e) if first == 0 => return Err(e),
                Err(e) => not_sent(&mut results, ops.len(), &e.to_string()),
            }
        }
        Ok(results)
    }

    /// One round trip of `round` (encoded in `frames`) to the coordinator:
    /// finds it, sends, reads the answers. Returns one result per op and
    /// whether every answer came. `Err`: not sent within the deadline.
    fn round_trip(
        &mut self,
        round: &[Op],
        frames: &[u8],
        start: Instant,
        deadline: Instant,
    ) -> Result<(Vec<Result<OpResult>>, bool)> {
        let mut backoff = Duration::from_millis(10);
        let mut redirect: Option<String> = None;
        let mut last_err: Error;
        loop {
            if Instant::now() >= deadline {
                return Err(Error::Unavailable(format!(
                    "the {} ms allowed ran out before this request of the pipeline was sent",
                    ms(deadline.saturating_duration_since(start))
                )));
            }
            let attempt = (|| -> Result<(String, Exchange)> {
                self.connect_coordinator(&mut redirect, deadline)?;
                let max = self.opts.max_value_bytes + 64 * 1024;
                let c = self.conn.as_mut().expect("connected");
                let got = exchange(
                    &c.stream,
                    &mut c.timeout,
                    round.len(),
                    frames,
                    deadline,
                    max,
                );
                c.last_used = Instant::now();
                Ok((c.addr.clone(), got))
            })();
            match attempt {
                Ok((addr, Exchange::NotSent(e))) => {
                    self.conn = None;
                    last_err = Error::Unavailable(format!(
                        "the requests could not be sent to the coordinator at {addr}: {}",
                        io_text(&e)
                    ));
                }
                Ok((addr, Exchange::Answered(answers, broken))) => {
                    let refused = broken.is_none()
                        && answers.iter().all(|r| {
                            matches!(
                                r,
                                Response::NotCoordinator { .. }
                                    | Response::Error {
                                        kind: wire::ErrorKind::Unavailable,
                                        ..
                                    }
                            )
                        });
                    if !refused {
                        if broken.is_some() {
                            self.conn = None;
                        }
                        return Ok(answer_all(round, answers, broken, &addr));
                    }
                    // Nothing of this round trip was applied: resend it whole.
                    self.conn = None;
                    match &answers[0] {
                        Response::NotCoordinator { coordinator, .. } => {
                            redirect = coordinator.clone().filter(|a| *a != addr);
                            last_err = Error::Unavailable(format!("{addr} is not the coordinator"));
                            if redirect.is_some() {
                                continue;
                            }
                        }
                        Response::Error { message, .. } => {
                            last_err = Error::Unavailable(message.clone())
                        }
                        _ => unreachable!("a refusal"),
                    }
                }
                Err(e @ Error::Unavailable(_)) => last_err = e,
                Err(Error::Io(e)) => last_err = Error::Unavailable(io_text(&e)),
                Err(e) => return Err(e),
            }
            if Instant::now() + backoff >= deadline {
                return Err(match last_err {
                    Error::Unavailable(m) => Error::Unavailable(format!(
                        "no coordinator could be reached within {} ms: {m}",
                        ms(deadline.saturating_duration_since(start))
                    )),
                    other => other,
                });
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
    }
}

/// Encodes the requests of the round trip that starts at `ops[first]` into
/// `buf` (cleared first); returns the index after its last op.
fn encode_round(ops: &[Op], first: usize, buf: &mut Vec<u8>) -> usize {
    buf.clear();
    let mut end = first;
    while end < ops.len() && end - first < MAX_PIPELINE_OPS {
        let before = buf.len();
        wire::encode_frame_into(buf, &ops[end].request());
        if buf.len() > MAX_PIPELINE_BYTES && end > first {
            buf.truncate(before);
            break;
        }
        end += 1;
    }
    end
}

/// Fills `results` up to `n` with "not sent" errors.
fn not_sent(results: &mut Vec<Result<OpResult>>, n: usize, why: &str) {
    while results.len() < n {
        results.push(Err(Error::Unavailable(format!(
            "not sent (so not applied): {why}"
        ))));
    }
}

/// Writes `frames` and reads up to `n` answers on `s`, all before
/// `deadline`. `timeout` is the connection's timeout in force (see
/// [`Bounded`]).
fn exchange(
    s: &Stream,
    timeout: &mut Option<Duration>,
    n: usize,
    frames: &[u8],
    deadline: Instant,
    max: usize,
) -> Exchange {
    let sent = Instant::now();
    let read_all = |timeout: &mut Option<Duration>| {
        let mut io = Bounded::new(s, deadline, timeout);
        let mut answers = Vec::with_capacity(n);
        while answers.len() < n {
            match wire::read_frame::<_, Response>(&mut io, max) {
                Ok(r) => answers.push(r),
                Err(e) => return (answers, Some(wire_clause(&e, sent.elapsed()))),
            }
        }
        (answers, None)
    };
    if frames.len() <= WRITE_INLINE_BYTES {
        let (written, res) = write_counting(&mut Bounded::new(s, deadline, timeout), frames);
        match res {
            Err(e) if written == 0 => return Exchange::NotSent(e),
            Err(e) => {
                // Part of the requests left: those the node got may be
                // applied; collect what answers there are.
                log::debug!("pipeline: write failed after {written} bytes: {e}");
            }
            Ok(()) => {}
        }
        let (answers, broken) = read_all(timeout);
        return Exchange::Answered(answers, broken);
    }
    let (answers, broken, (written, res)) = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut set = None;
            write_counting(&mut Bounded::new(s, deadline, &mut set), frames)
        });
        let (answers, broken) = read_all(timeout);
        if broken.is_some() {
            // Unblock a writer still waiting for the node.
            let _ = s.shutdown(Shutdown::Both);
        }
        let wrote = writer.join().unwrap_or_else(|_| {
            (
                0,
                Err(io::Error::other("the pipeline's writer thread panicked")),
            )
        });
        (answers, broken, wrote)
    });
    // The writer set the socket's timeouts too: refit them next time.
    *timeout = None;
    match res {
        Err(e) if written == 0 && answers.is_empty() => Exchange::NotSent(e),
        _ => Exchange::Answered(answers, broken),
    }
}

/// `write_all` that tells how many bytes left before an error.
fn write_counting<W: Write>(w: &mut W, mut buf: &[u8]) -> (usize, io::Result<()>) {
    let mut written = 0;
    while !buf.is_empty() {
        match w.write(buf) {
            Ok(0) => return (written, Err(io::ErrorKind::WriteZero.into())),
            Ok(k) => {
                written += k;
                buf = &buf[k..];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (written, Err(e)),
        }
    }
    (written, Ok(()))
}

/// One result per op of `round` from the answers that came (in order) and,
/// when some did not, why (`broken`, a clause after the address).
fn answer_all(
    round: &[Op],
    answers: Vec<Response>,
    broken: Option<String>,
    addr: &str,
) -> (Vec<Result<OpResult>>, bool) {
    let complete = broken.is_none();
    let got = answers.len();
    let mut out: Vec<Result<OpResult>> = round
        .iter()
        .zip(answers)
        .map(|(op, r)| answer(op, r, addr))
        .collect();
    if let Some(why) = broken {
        for op in &round[got..] {
            out.push(Err(if op.is_write() {
                Error::Indeterminate(format!(
                    "the coordinator at {addr} {why} after the write was sent in a pipeline"
                ))
            } else {
                Error::Unavailable(format!(
                    "the coordinator at {addr} {why} before answering this read"
                ))
            }));
        }
    }
    (out, complete)
}

/// The result of `op` from its answer `r`, as the single-op methods give it.
fn answer(op: &Op, r: Response, addr: &str) -> Result<OpResult> {
    match (op, r) {
        (Op::Get(_), Response::Value(v)) => Ok(OpResult::Value(v)),
        (Op::Put(..), Response::Written) => Ok(OpResult::Written),
        (Op::Delete(_), Response::Deleted(existed)) => Ok(OpResult::Deleted(existed)),
        (_, Response::NotCoordinator { .. }) => {
            Err(Error::Unavailable(format!("{addr} is not the coordinator")))
        }
        (_, Response::Error { kind, message }) => Err(Error::from_reply(kind, message)),
        (_, other) => Err(unexpected(&other, addr)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_are_bounded_in_requests_and_bytes() {
        let small: Vec<Op> = (0..2500).map(|i| Op::get(format!("k{i}"))).collect();
        let mut buf = Vec::new();
        assert_eq!(encode_round(&small, 0, &mut buf), MAX_PIPELINE_OPS);
        assert_eq!(encode_round(&small, 2048, &mut buf), 2500);
        let big: Vec<Op> = (0..10)
            .map(|i| Op::put(format!("k{i}"), vec![7u8; 300 * 1024]))
            .collect();
        let end = encode_round(&big, 0, &mut buf);
        assert_eq!(end, 3);
        assert!(buf.len() <= MAX_PIPELINE_BYTES);
        // One request above the byte bound goes alone.
        let huge = [
            Op::put("h", vec![1u8; MAX_PIPELINE_BYTES + 1]),
            Op::get("h"),
        ];
        assert_eq!(encode_round(&huge, 0, &mut buf), 1);
        // The frames are the single-op frames, back to back.
        let ops = [Op::put("a", "1"), Op::delete("a")];
        encode_round(&ops, 0, &mut buf);
        let mut r = buf.as_slice();
        for op in &ops {
            let got: Request = wire::read_frame(&mut r, 1024).unwrap();
            assert_eq!(got, op.request());
        }
        assert!(r.is_empty());
    }

    #[test]
    fn unanswered_writes_are_of_unknown_outcome_and_reads_retryable() {
        let round = [
            Op::put("a", "1"),
            Op::get("a"),
            Op::put("b", "2"),
            Op::get("b"),
            Op::delete("c"),
        ];
        let answers = vec![
            Response::Written,
            Response::Error {
                kind: wire::ErrorKind::Unavailable,
                message: "busy".into(),
            },
        ];
        let (out, complete) =
            answer_all(&round, answers, Some("closed the connection".into()), "n:1");
        assert!(!complete);
        assert_eq!(out.len(), 5);
        assert_eq!(out[0].as_ref().unwrap(), &OpResult::Written);
        assert!(matches!(out[1], Err(Error::Unavailable(_))));
        assert!(matches!(out[2], Err(Error::Indeterminate(_))));
        assert!(matches!(out[3], Err(Error::Unavailable(_))));
        assert!(matches!(out[4], Err(Error::Indeterminate(_))));
        let refused = answer(
            &Op::put("a", "1"),
            Response::Error {
                kind: wire::ErrorKind::NotEnoughReplicas,
                message: "1 node(s) in sync, 2 required".into(),
            },
            "n:1",
        );
        assert!(matches!(refused, Err(Error::NotEnoughReplicas(_))));
    }
}
