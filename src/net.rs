//! Small blocking-socket helpers shared by the node, the server and the client:
//! connect with a timeout, the handshake, one request/response call, and the
//! per-process connection limit; [`listener`] runs every accept loop.

pub mod listener;
pub use crate::tls::{tls_error, Stream, TlsFailure};

use crate::auth::{self, ClusterKey};
pub use crate::config::Deadlines;
use crate::wire::{self, ConnKind, ErrorKind, Hello, HelloReply, Opener, Sealer, WireError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Raises this process's open-file limit to its hard limit: every connection
/// is a descriptor, and `max-connections` means nothing if the soft limit
/// (often 1024) refuses them first. Returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
        lim.rlim_cur
    }
}

/// What an accept loop does with one result of `accept`: a stream gets a
/// write timeout (a client that never reads cannot hold its thread in a
/// blocked write) and TCP_NODELAY (every port answers requests); an error (out of descriptors, say) is logged and followed
/// by a short pause, so the loop cannot spin.
pub fn accepted(r: io::Result<TcpStream>, write_timeout: Duration) -> Option<TcpStream> {
    match r {
        Ok(s) => {
            let _ = s.set_write_timeout(Some(write_timeout));
            // Before a TLS handshake too: its flights are several sends, and
            // Nagle would hold one back for the peer's delayed ACK (~40 ms).
            let _ = s.set_nodelay(true);
            Some(s)
        }
        Err(e) => {
            log::warn!("accept: {e}");
            std::thread::sleep(Duration::from_millis(10));
            None
        }
    }
}

/// How long a connection closed after a final reply keeps reading what the
/// client still sends (see [`close_after_reply`]).
pub const LINGER: Duration = Duration::from_secs(1);

/// The most a lingering close reads and discards.
pub const LINGER_MAX_BYTES: usize = 64 << 20;

/// Closes a connection after its final reply (a refusal, a protocol error)
/// so the client can read that reply. Closing a socket whose receive buffer
/// still holds unread bytes makes the kernel send a reset, and a client
/// still writing (the rest of an oversized value, say) then sees "connection
/// reset" instead of the reason. So: send FIN, then read and discard what
/// arrives until the client closes, `linger` passes or
/// [`LINGER_MAX_BYTES`] were read. `linger` zero only takes what is
/// already buffered, without waiting (for the accept thread).
pub fn close_after_reply(stream: &Stream, linger: Duration) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let deadline = Instant::now() + linger;
    if linger.is_zero() {
        let _ = stream.set_nonblocking(true);
    }
    let mut buf = [0u8; 64 * 1024];
    let mut read = 0usize;
    while read < LINGER_MAX_BYTES {
        if !linger.is_zero() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
                break;
            }
        }
        match (&*stream).read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// Binds a TCP listener; the error names the address.
pub fn listen(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// Resolves `addr` ("host:port") to its first socket address.
pub fn resolve(addr: &str) -> io::Result<SocketAddr> {
    addr.to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("address '{addr}' resolves to nothing"),
        )
    })
}

fn open(addr: &str, timeout: Duration) -> io::Result<TcpStream> {
    let sa = resolve(addr)?;
    let s = TcpStream::connect_timeout(&sa, timeout)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// Opens a client connection: connects with a timeout, sets TCP_NODELAY and
/// read/write timeouts, and sends the handshake. Client connections carry
/// plain frames; the client password, if any, is the first request.
pub fn connect(addr: &str, timeout: Duration) -> io::Result<Stream> {
    connect_tls(addr, timeout, None)
}

/// [`connect`], over TLS when `tls` is given.
pub fn connect_tls(
    addr: &str,
    timeout: Duration,
    tls: Option<&crate::tls::ClientTls>,
) -> io::Result<Stream> {
    let s = dial(addr, timeout, tls)?;
    wire::write_frame(&mut &s, &Hello::new(ConnKind::Client, auth::nonce()))?;
    Ok(s)
}

/// Connects (see [`open`]) and, with `tls`, runs the TLS handshake.
pub fn dial(
    addr: &str,
    timeout: Duration,
    tls: Option<&crate::tls::ClientTls>,
) -> io::Result<Stream> {
    let s = open(addr, timeout)?;
    match tls {
        None => Ok(Stream::plain(s)),
        Some(t) => {
            let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
            t.connect(host, s, timeout)
        }
    }
}

/// True when the peer has closed `s` (or sent bytes nobody asked for, which
/// is as bad): a non-blocking peek, so nothing is consumed. Checked before a
/// request is written on a connection that sat idle, so a dead peer shows up
/// as a failed connect rather than a request that may or may not have left.
pub fn peer_closed(s: &Stream) -> bool {
    s.peer_closed()
}

/// One request/response exchange on a client connection (plain frames).
pub fn call<Req: Serialize, Resp: DeserializeOwned>(
    s: &Stream,
    req: &Req,
    max_reply: usize,
) -> Result<Resp, WireError> {
    wire::write_frame(&mut &*s, req)?;
    wire::read_frame(&mut &*s, max_reply)
}

/// An authenticated connection between cluster members.
pub struct PeerConn {
    pub stream: Stream,
    pub tx: Sealer,
    pub rx: Opener,
}

impl PeerConn {
    /// One request/response exchange.
    pub fn call<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        req: &Req,
        max_reply: usize,
    ) -> Result<Resp, WireError> {
        self.tx.write(&mut &self.stream, req)?;
        self.rx.read(&mut &self.stream, max_reply)
    }
}

fn denied(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, msg)
}

/// Opens a peer connection (`kind` is not `Client`) and runs the handshake
/// of [`crate::auth`]: the acceptor must prove it knows our cluster secret,
/// and our frames prove that we do. Errors of kind `PermissionDenied` name a
/// secret mismatch; they do not heal by retrying.
pub fn connect_peer(
    addr: &str,
    kind: ConnKind,
    timeout: Duration,
    key: Option<&ClusterKey>,
    tls: Option<&crate::tls::ClientTls>,
) -> io::Result<PeerConn> {
    debug_assert!(kind.is_peer());
    let s = dial(addr, timeout, tls)?;
    let mine = auth::nonce();
    let hello = Hello::new(kind, mine);
    wire::write_frame(&mut &s, &hello)?;
    let reply: HelloReply = wire::read_frame(&mut &s, wire::MAX_HELLO_FRAME)
        .map_err(|e| io::Error::other(format!("handshake with {addr}: {e}")))?;
    let theirs = match reply {
        HelloReply::Refused { message, .. } => {
            return Err(denied(format!("{addr} refused the connection: {message}")))
        }
        HelloReply::Accept { nonce, proof } => match (key, proof) {
            (Some(k), Some(p)) if k.accept_proof_ok(&mine, &nonce, &p) => nonce,
            (Some(_), Some(_)) => {
                return Err(denied(format!(
                    "{addr} does not know this cluster's secret (cluster secret mismatch)"
                )))
            }
            (Some(_), None) => {
                return Err(denied(format!(
                    "{addr} runs without a cluster secret but this process has one"
                )))
            }
            (None, Some(_)) => {
                return Err(denied(format!(
                "{addr} requires the cluster secret: set cluster-secret-file in the config or {}",
                auth::SECRET_ENV
            )))
            }
            (None, None) => nonce,
        },
    };
    let (mut tx, rx) = match key {
        Some(k) => {
            let (to_acceptor, to_connector) = k.session(&mine, &theirs);
            (
                Sealer::new(Some(to_acceptor)),
                Opener::new(Some(to_connector)),
            )
        }
        None => (Sealer::plain(), Opener::plain()),
    };
    tx.write(&mut &s, &hello)?;
    Ok(PeerConn { stream: s, tx, rx })
}

/// Why an accepted connection's handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer does not know the cluster secret (or tampered with the handshake).
    #[error("peer failed cluster authentication (wrong or missing cluster secret)")]
    AuthFailed,
    /// Over TLS, a member link came without a client certificate.
    #[error("{0}")]
    NoCertificate(String),
    #[error("{0}")]
    Bad(String),
}

/// An accepted connection after its handshake.
pub struct Accepted {
    pub kind: ConnKind,
    pub tx: Sealer,
    pub rx: Opener,
}

/// Reads and checks the handshake of an accepted connection and, for a peer
/// connection, answers it (see [`connect_peer`]).
/// The handshake must complete within `r`'s request deadline.
pub fn accept_hello(
    s: &Stream,
    r: &mut TimedStream<'_>,
    key: Option<&ClusterKey>,
) -> Result<Accepted, HandshakeError> {
    use HandshakeError::{AuthFailed, Bad};
    r.start_request();
    let hello: Hello =
        wire::read_frame(r, wire::MAX_HELLO_FRAME).map_err(|e| Bad(e.to_string()))?;
    hello.check().map_err(Bad)?;
    if !hello.kind.is_peer() {
        r.request_done();
        return Ok(Accepted {
            kind: hello.kind,
            tx: Sealer::plain(),
            rx: Opener::plain(),
        });
    }
    if let Err(why) = crate::tls::require_member_cert(s) {
        let refusal = HelloReply::Refused {
            kind: ErrorKind::AuthFailed,
            message: why.clone(),
        };
        let _ = wire::write_frame(&mut &*s, &refusal);
        return Err(HandshakeError::NoCertificate(why));
    }
    let mine = auth::nonce();
    let proof = key.map(|k| k.accept_proof(&hello.nonce, &mine));
    wire::write_frame(&mut &*s, &HelloReply::Accept { nonce: mine, proof })
        .map_err(|e| Bad(e.to_string()))?;
    let (tx, mut rx) = match key {
        Some(k) => {
            let (to_acceptor, to_connector) = k.session(&hello.nonce, &mine);
            (
                Sealer::new(Some(to_connector)),
                Opener::new(Some(to_acceptor)),
            )
        }
        None => (Sealer::plain(), Opener::plain()),
    };
    // The connector proves it knows the secret, and that the Hello we read
    // is the one it sent, before anything else happens on this connection.
    let confirm: Hello = rx.read(r, wire::MAX_HELLO_FRAME).map_err(|e| match e {
        WireError::Forged => AuthFailed,
        e => Bad(e.to_string()),
    })?;
    if confirm != hello {
        return Err(AuthFailed);
    }
    r.request_done();
    Ok(Accepted {
        kind: hello.kind,
        tx,
        rx,
    })
}

/// The reading side of an accepted connection, enforcing [`Deadlines`]: a
/// client that trickles a request byte by byte (slowloris) is cut off once the
/// request took longer than `request`, whatever its pace; one that says
/// nothing is cut off after `idle`. The socket's own timeout stays fixed at
/// the shorter of the two, so the common case costs no extra system call;
/// limits are enforced with that granularity (at most one `request` late).
pub struct TimedStream<'a> {
    stream: &'a Stream,
    deadlines: Deadlines,
    /// When the first byte of the request being read arrived.
    pending_since: Option<Instant>,
    last_byte: Instant,
}

impl<'a> TimedStream<'a> {
    pub fn new(stream: &'a Stream, deadlines: Deadlines) -> TimedStream<'a> {
        let _ = stream.set_read_timeout(Some(deadlines.idle.min(deadlines.request)));
        TimedStream {
            stream,
            deadlines,
            pending_since: None,
            last_byte: Instant::now(),
        }
    }

    /// Starts the request deadline now, if no byte of a request is pending.
    pub fn start_request(&mut self) {
        self.pending_since.get_or_insert_with(Instant::now);
    }

    /// True while part of a request has arrived (so a timeout now is the
    /// read-timeout, not the idle timeout).
    pub fn in_request(&self) -> bool {
        self.pending_since.is_some()
    }

    /// The request read so far was complete: the next byte starts a new one.
    pub fn request_done(&mut self) {
        self.pending_since = None;
    }

    pub fn set_idle(&mut self, idle: Duration) {
        self.deadlines.idle = idle;
        let _ = self
            .stream
            .set_read_timeout(Some(idle.min(self.deadlines.request)));
    }

    fn slow(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "request not complete after read-timeout ({} ms); closing",
                self.deadlines.request.as_millis()
            ),
        )
    }
}

impl Read for TimedStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.stream.read(buf) {
                Ok(n) => {
                    let now = Instant::now();
                    if n > 0 {
                        self.last_byte = now;
                        match self.pending_since {
                            None => self.pending_since = Some(now),
                            Some(t) if now - t > self.deadlines.request => return Err(self.slow()),
                            Some(_) => {}
                        }
                    }
                    return Ok(n);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    match self.pending_since {
                        Some(t) if t.elapsed() >= self.deadlines.request => return Err(self.slow()),
                        Some(_) => {}
                        None if self.last_byte.elapsed() >= self.deadlines.idle => {
                            return Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!("idle for {} ms; closing", self.deadlines.idle.as_millis()),
                            ))
                        }
                        None => {}
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Counts live connections against a limit.
#[derive(Clone)]
pub struct ConnLimit {
    live: Arc<AtomicUsize>,
    max: usize,
}

/// Releases its connection slot when dropped.
pub struct ConnSlot(Arc<AtomicUsize>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnLimit {
    pub fn new(max: usize) -> Self {
        ConnLimit {
            live: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// Takes a slot, or `None` when `max` connections are live.
    pub fn try_acquire(&self) -> Option<ConnSlot> {
        let prev = self.live.fetch_add(1, Ordering::AcqRel);
        if prev >= self.max {
            self.live.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnSlot(self.live.clone()))
    }

    /// The limit this counter enforces.
    pub fn max(&self) -> usize {
        self.max
    }
}

/// Message for a refused connection.
pub fn too_many(max: usize) -> (ErrorKind, String) {
    (
        ErrorKind::TooManyConnections,
        format!("too many connections (limit {max}); try again later"),
    )
}
