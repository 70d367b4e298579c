//! Small blocking-socket helpers shared by the node, the server and the client:
//! connect with a timeout, the handshake, one request/response call, and the
//! per-process connection limit.

use crate::wire::{self, ConnKind, ErrorKind, Hello, WireError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

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

/// Connects with a timeout, sets TCP_NODELAY and read/write timeouts, and
/// sends the handshake.
pub fn connect(addr: &str, kind: ConnKind, timeout: Duration) -> io::Result<TcpStream> {
    let sa = resolve(addr)?;
    let s = TcpStream::connect_timeout(&sa, timeout)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    wire::write_frame(&mut &s, &Hello::new(kind))?;
    Ok(s)
}

/// One request/response exchange on an open connection.
pub fn call<Req: Serialize, Resp: DeserializeOwned>(
    s: &TcpStream,
    req: &Req,
    max_reply: usize,
) -> Result<Resp, WireError> {
    wire::write_frame(&mut &*s, req)?;
    wire::read_frame(&mut &*s, max_reply)
}

/// Reads and checks the handshake of an accepted connection.
pub fn accept_hello(s: &TcpStream) -> Result<ConnKind, String> {
    let hello: Hello =
        wire::read_frame(&mut &*s, wire::MAX_HELLO_FRAME).map_err(|e| e.to_string())?;
    hello.check()?;
    Ok(hello.kind)
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
