//! [`Stream`]: one TCP connection, in clear text or TLS, with the blocking
//! `Read`/`Write` of a `TcpStream` and a cheap [`Stream::try_clone`], so the
//! threads of one connection (a replication stream's sender and ack reader,
//! a replica's follower and the thread that acknowledges) each hold one.
//!
//! A rustls session is one state machine for both directions, so the clones
//! of a TLS stream share it under a short lock that is never held across a
//! blocking call: the socket is non-blocking, a reader waits in `poll(2)`
//! for bytes without the lock, then takes it to decrypt what arrived; a
//! writer takes it to encrypt and send, and if the socket's buffer is full
//! it lets the lock go while it waits for room. So a sender blocked on a slow
//! peer never stops its connection's reader, as with two halves of a
//! `TcpStream`. The read and write timeouts are this type's own (the socket
//! is non-blocking), with the errors a `TcpStream` gives (`WouldBlock`).

use parking_lot::Mutex;
use rustls::Connection;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A connection (see the module doc). Clones share the socket and session.
#[derive(Clone)]
pub struct Stream {
    inner: Arc<Inner>,
}

struct Inner {
    sock: TcpStream,
    tls: Option<Tls>,
}

struct Tls {
    conn: Mutex<Connection>,
    /// Timeouts in microseconds (0: none), and the caller's non-blocking
    /// mode: the socket itself is always non-blocking.
    read_timeout: AtomicU64,
    write_timeout: AtomicU64,
    nonblocking: AtomicBool,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("sock", &self.inner.sock)
            .field("tls", &self.inner.tls.is_some())
            .finish()
    }
}

fn micros(d: Option<Duration>) -> u64 {
    d.map_or(0, |d| (d.as_micros() as u64).max(1))
}

fn duration(us: u64) -> Option<Duration> {
    (us > 0).then(|| Duration::from_micros(us))
}

/// A TLS failure as an io error whose text is rustls's reason.
pub fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, TlsFailure(e))
}

/// The rustls error inside an io error made by [`tls_error`].
#[derive(Debug)]
pub struct TlsFailure(pub rustls::Error);

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TLS: {}", self.0)
    }
}

impl std::error::Error for TlsFailure {}

impl Stream {
    /// A clear-text stream.
    pub fn plain(sock: TcpStream) -> Stream {
        Stream {
            inner: Arc::new(Inner { sock, tls: None }),
        }
    }

    /// A TLS stream over `sock` whose handshake is run at once, within
    /// `timeout` (a client's `conn` sends its hello first).
    pub fn tls(sock: TcpStream, conn: Connection, timeout: Duration) -> io::Result<Stream> {
        let read_timeout = micros(sock.read_timeout()?);
        let write_timeout = micros(sock.write_timeout()?);
        sock.set_nonblocking(true)?;
        let s = Stream {
            inner: Arc::new(Inner {
                sock,
                tls: Some(Tls {
                    conn: Mutex::new(conn),
                    read_timeout: AtomicU64::new(read_timeout),
                    write_timeout: AtomicU64::new(write_timeout),
                    nonblocking: AtomicBool::new(false),
                }),
            }),
        };
        s.handshake(Instant::now() + timeout)?;
        Ok(s)
    }

    fn handshake(&self, deadline: Instant) -> io::Result<()> {
        let tls = self.inner.tls.as_ref().expect("tls");
        loop {
            let mut c = tls.conn.lock();
            self.send_pending(&mut c, Some(deadline))?;
            if !c.is_handshaking() {
                return Ok(());
            }
            drop(c);
            self.wait(libc::POLLIN, Some(deadline))?;
            let mut c = tls.conn.lock();
            if self.read_records(&mut c)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection during the TLS handshake",
                ));
            }
        }
    }

    pub fn is_tls(&self) -> bool {
        self.inner.tls.is_some()
    }

    /// The peer's certificate chain, verified against the CA (TLS only,
    /// and only when the peer presented one).
    pub fn peer_certificates(&self) -> Option<usize> {
        let tls = self.inner.tls.as_ref()?;
        let c = tls.conn.lock();
        c.peer_certificates().map(|c| c.len()).filter(|&n| n > 0)
    }

    /// Looks at the next bytes without taking them (clear text only).
    pub fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.inner.tls {
            None => self.inner.sock.peek(buf),
            Some(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "peek on a TLS stream",
            )),
        }
    }

    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(self.clone())
    }

    /// The raw socket (to shut it down from outside, or for its options).
    pub fn socket(&self) -> &TcpStream {
        &self.inner.sock
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.sock.peer_addr()
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.sock.local_addr()
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.inner.sock.set_nodelay(on)
    }

    pub fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match &self.inner.tls {
            None => self.inner.sock.set_read_timeout(d),
            Some(t) => {
                if d == Some(Duration::ZERO) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "cannot set a 0 duration timeout",
                    ));
                }
                t.read_timeout.store(micros(d), Ordering::Relaxed);
                Ok(())
            }
        }
    }

    pub fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match &self.inner.tls {
            None => self.inner.sock.set_write_timeout(d),
            Some(t) => {
                t.write_timeout.store(micros(d), Ordering::Relaxed);
                Ok(())
            }
        }
    }

    pub fn read_timeout(&self) -> io::Result<Option<Duration>> {
        match &self.inner.tls {
            None => self.inner.sock.read_timeout(),
            Some(t) => Ok(duration(t.read_timeout.load(Ordering::Relaxed))),
        }
    }

    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match &self.inner.tls {
            None => self.inner.sock.set_nonblocking(on),
            Some(t) => {
                t.nonblocking.store(on, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// Shuts the connection down; a TLS stream first tells the peer it
    /// will send no more (`close_notify`) when its writing side closes.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        if how != Shutdown::Read {
            if let Some(t) = &self.inner.tls {
                if let Some(mut c) = t.conn.try_lock_for(Duration::from_millis(10)) {
                    c.send_close_notify();
                    while c.wants_write() {
                        if c.write_tls(&mut &self.inner.sock).is_err() {
                            break;
                        }
                    }
                }
            }
        }
        self.inner.sock.shutdown(how)
    }

    /// True when the peer has closed the connection or sent bytes nobody
    /// asked for (see `net::peer_closed`); consumes nothing a reader wants.
    pub fn peer_closed(&self) -> bool {
        let Some(t) = &self.inner.tls else {
            let s = &self.inner.sock;
            if s.set_nonblocking(true).is_err() {
                return true;
            }
            let mut b = [0u8; 1];
            let closed = match s.peek(&mut b) {
                Ok(_) => true, // 0: closed; more: unsolicited bytes
                Err(e) => e.kind() != io::ErrorKind::WouldBlock,
            };
            return s.set_nonblocking(false).is_err() || closed;
        };
        let mut c = t.conn.lock();
        match self.read_records(&mut c) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return true,
        }
        let mut b = [0u8; 1];
        !matches!(c.reader().read(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Reads the TLS records the socket holds (without blocking) and
    /// processes them; answers the session needs (alerts, key updates) are
    /// sent. `Ok(0)`: the peer closed the socket. `WouldBlock`: nothing there.
    fn read_records(&self, c: &mut Connection) -> io::Result<usize> {
        // One read: rustls bounds what it buffers, and the caller reads on
        // while records are incomplete.
        let n = loop {
            match c.read_tls(&mut &self.inner.sock) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return Ok(0);
        }
        if let Err(e) = c.process_new_packets() {
            // Tell the peer why (the alert rustls queued).
            let _ = c.write_tls(&mut &self.inner.sock);
            return Err(tls_error(e));
        }
        if c.wants_write() {
            // Handshake messages, alerts, key updates: short, sent at once.
            while c.wants_write() {
                match c.write_tls(&mut &self.inner.sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait(
                        libc::POLLOUT,
                        Some(Instant::now() + Duration::from_secs(10)),
                    )?,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(n)
    }

    /// Sends what the session holds for the peer. Called with the lock
    /// held; when the socket is full it waits for room without the lock
    /// (`c` is re-taken), until `deadline` or the write timeout.
    fn send_pending(
        &self,
        c: &mut parking_lot::MutexGuard<'_, Connection>,
        deadline: Option<Instant>,
    ) -> io::Result<()> {
        let t = self.inner.tls.as_ref().expect("tls");
        let deadline = deadline.or_else(|| {
            duration(t.write_timeout.load(Ordering::Relaxed)).map(|d| Instant::now() + d)
        });
        while c.wants_write() {
            match c.write_tls(&mut &self.inner.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    parking_lot::MutexGuard::unlocked(c, || self.wait(libc::POLLOUT, deadline))?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Waits until the socket is readable (`POLLIN`) or writable
    /// (`POLLOUT`), or `deadline` passes (`WouldBlock`, as a timed-out
    /// `TcpStream` read says).
    fn wait(&self, events: libc::c_short, deadline: Option<Instant>) -> io::Result<()> {
        loop {
            let ms = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(io::Error::new(
                            io::ErrorKind::WouldBlock,
                            "timed out waiting for the peer",
                        ));
                    }
                    left.as_millis().clamp(1, i32::MAX as u128) as i32
                }
            };
            let mut fd = libc::pollfd {
                fd: self.inner.sock.as_raw_fd(),
                events,
                revents: 0,
            };
            // SAFETY: one pollfd that lives for the call.
            let rc = unsafe { libc::poll(&mut fd, 1, ms) };
            if rc > 0 {
                return Ok(());
            }
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }

    fn tls_read(&self, t: &Tls, buf: &mut [u8]) -> io::Result<usize> {
        let deadline = duration(t.read_timeout.load(Ordering::Relaxed)).map(|d| Instant::now() + d);
        loop {
            {
                let mut c = t.conn.lock();
                match c.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                match self.read_records(&mut c) {
                    Ok(0) => {
                        // The socket closed: rustls says whether cleanly.
                        return c.reader().read(buf);
                    }
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            if t.nonblocking.load(Ordering::Relaxed) {
                return Err(io::Error::from(io::ErrorKind::WouldBlock));
            }
            self.wait(libc::POLLIN, deadline)?;
        }
    }

    fn tls_write(&self, t: &Tls, buf: &[u8]) -> io::Result<usize> {
        let mut c = t.conn.lock();
        let n = c.writer().write(buf)?;
        self.send_pending(&mut c, None)?;
        Ok(n)
    }
}

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.inner.tls {
            None => (&self.inner.sock).read(buf),
            Some(t) => self.tls_read(t, buf),
        }
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &self.inner.tls {
            None => (&self.inner.sock).write(buf),
            Some(t) => self.tls_write(t, buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
