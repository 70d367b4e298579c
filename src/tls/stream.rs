//! [`Stream`]: one TCP connection, in clear text or TLS, with the blocking
//! `Read`/`Write` of a `TcpStream` and a cheap [`Stream::try_clone`], so the
//! threads of one connection (a replication stream's sender and ack reader,
//! a replica's follower and the thread that acknowledges) each hold one.
//!
//! A rustls session is one state machine for both directions, so the clones
//! of a TLS stream share it under a short lock that is never held across a
//! blocking call. A reader waits for bytes in `recv(2)` without the lock
//! (the socket stays blocking, so its own read timeout applies), then takes
//! the lock to hand them to the session and take the plaintext out. A
//! writer takes the lock to encrypt and sends with `MSG_DONTWAIT`; when the
//! socket's buffer is full it lets the lock go while it waits for room. So
//! a sender blocked on a slow peer never stops its connection's reader, as
//! with two halves of a `TcpStream`, and a request costs the same system
//! calls as in clear text: one `recv`, one `send`.

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
    session: Mutex<Session>,
    /// The write timeout in microseconds (0: none): sends do not block.
    write_timeout: AtomicU64,
    /// The caller's non-blocking mode: reads then use `MSG_DONTWAIT`.
    nonblocking: AtomicBool,
}

struct Session {
    conn: Connection,
    /// Bytes received and not yet taken by rustls (it bounds what it
    /// buffers: the rest waits here).
    raw: Vec<u8>,
    /// The peer closed the socket (rustls was told).
    eof: bool,
}

/// The largest TLS record, with room for its header and tag.
const RECORD: usize = 16 * 1024 + 512;

/// Sends without blocking (`MSG_DONTWAIT`), without SIGPIPE.
struct DontWait<'a>(&'a TcpStream);

impl Write for DontWait<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        // SAFETY: sends from a live slice on a descriptor we hold.
        let n = unsafe {
            libc::send(
                self.0.as_raw_fd(),
                b.as_ptr() as *const libc::c_void,
                b.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One `recv` into `buf`; `dontwait`: without blocking.
fn recv(sock: &TcpStream, buf: &mut [u8], dontwait: bool) -> io::Result<usize> {
    loop {
        // SAFETY: receives into a live buffer on a descriptor we hold.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                if dontwait { libc::MSG_DONTWAIT } else { 0 },
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
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
        let write_timeout = micros(sock.write_timeout()?);
        sock.set_nonblocking(false)?;
        let s = Stream {
            inner: Arc::new(Inner {
                sock,
                tls: Some(Tls {
                    session: Mutex::new(Session {
                        conn,
                        raw: Vec::new(),
                        eof: false,
                    }),
                    write_timeout: AtomicU64::new(write_timeout),
                    nonblocking: AtomicBool::new(false),
                }),
            }),
        };
        s.handshake(Instant::now() + timeout)?;
        Ok(s)
    }

    fn tls_state(&self) -> &Tls {
        self.inner.tls.as_ref().expect("a TLS stream")
    }

    fn handshake(&self, deadline: Instant) -> io::Result<()> {
        let t = self.tls_state();
        let mut buf = vec![0u8; RECORD];
        loop {
            let mut s = t.session.lock();
            self.send_pending(&mut s, Some(deadline))?;
            if !s.conn.is_handshaking() {
                return Ok(());
            }
            if s.eof {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection during the TLS handshake",
                ));
            }
            drop(s);
            self.wait(libc::POLLIN, Some(deadline))?;
            let n = match recv(&self.inner.sock, &mut buf, true) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            };
            let mut s = t.session.lock();
            self.received(&mut s, &buf[..n])?;
        }
    }

    pub fn is_tls(&self) -> bool {
        self.inner.tls.is_some()
    }

    /// The number of certificates the peer presented, verified against the
    /// CA (TLS only; `None` when it presented none).
    pub fn peer_certificates(&self) -> Option<usize> {
        let t = self.inner.tls.as_ref()?;
        let s = t.session.lock();
        s.conn
            .peer_certificates()
            .map(|c| c.len())
            .filter(|&n| n > 0)
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
        self.inner.sock.set_read_timeout(d)
    }

    pub fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        if let Some(t) = &self.inner.tls {
            t.write_timeout.store(micros(d), Ordering::Relaxed);
        }
        self.inner.sock.set_write_timeout(d)
    }

    pub fn read_timeout(&self) -> io::Result<Option<Duration>> {
        self.inner.sock.read_timeout()
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
                if let Some(mut s) = t.session.try_lock_for(Duration::from_millis(10)) {
                    s.conn.send_close_notify();
                    while s.conn.wants_write() {
                        if s.conn.write_tls(&mut DontWait(&self.inner.sock)).is_err() {
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
        let mut buf = vec![0u8; RECORD];
        let mut s = t.session.lock();
        match recv(&self.inner.sock, &mut buf, true) {
            Ok(n) => {
                if self.received(&mut s, &buf[..n]).is_err() {
                    return true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return true,
        }
        if s.eof {
            return true;
        }
        let mut b = [0u8; 1];
        !matches!(s.conn.reader().read(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Hands `bytes` (all of a `recv`; empty: the peer closed the socket)
    /// to the session, after what was left over from before.
    fn received(&self, s: &mut Session, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            s.eof = true;
            return self.absorb(s);
        }
        if !s.raw.is_empty() {
            s.raw.extend_from_slice(bytes);
            return self.absorb(s);
        }
        // The common case: nothing left over, no copy.
        let mut src = bytes;
        let fed = self.feed(s, &mut src);
        if !src.is_empty() {
            s.raw.extend_from_slice(src);
        }
        fed?;
        self.answer(s)
    }

    /// Gives rustls the bytes waiting in `raw`, as many as it takes.
    fn absorb(&self, s: &mut Session) -> io::Result<()> {
        let raw = std::mem::take(&mut s.raw);
        let mut src = &raw[..];
        let fed = self.feed(s, &mut src);
        s.raw = src.to_vec();
        fed?;
        if s.eof && s.raw.is_empty() {
            let _ = s.conn.read_tls(&mut &[][..]);
        }
        self.answer(s)
    }

    /// Feeds `src` to rustls and processes the records, until it is all
    /// taken or rustls holds as much plaintext as it buffers.
    fn feed(&self, s: &mut Session, src: &mut &[u8]) -> io::Result<()> {
        while !src.is_empty() {
            match s.conn.read_tls(src) {
                Ok(_) => {}
                // Full of plaintext nobody read yet: the rest waits.
                Err(_)
                    if s.conn
                        .process_new_packets()
                        .is_ok_and(|st| st.plaintext_bytes_to_read() > 0) =>
                {
                    return Ok(())
                }
                Err(e) => return Err(e),
            }
            if let Err(e) = s.conn.process_new_packets() {
                // Tell the peer why (the alert rustls queued).
                let _ = s.conn.write_tls(&mut DontWait(&self.inner.sock));
                return Err(tls_error(e));
            }
        }
        Ok(())
    }

    /// Sends what the session owes the peer after reading (handshake
    /// messages, alerts, key updates) as far as the socket takes it now;
    /// the rest goes with the next send (the handshake and every write call
    /// [`Stream::send_pending`]), so the lock is never held in a wait.
    fn answer(&self, s: &mut Session) -> io::Result<()> {
        while s.conn.wants_write() {
            match s.conn.write_tls(&mut DontWait(&self.inner.sock)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends what the session holds for the peer. When the socket is full
    /// it waits for room without the lock (`s` is re-taken), until
    /// `deadline` or the write timeout.
    fn send_pending(
        &self,
        s: &mut parking_lot::MutexGuard<'_, Session>,
        deadline: Option<Instant>,
    ) -> io::Result<()> {
        let t = self.tls_state();
        let deadline = deadline.or_else(|| {
            duration(t.write_timeout.load(Ordering::Relaxed)).map(|d| Instant::now() + d)
        });
        while s.conn.wants_write() {
            match s.conn.write_tls(&mut DontWait(&self.inner.sock)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    parking_lot::MutexGuard::unlocked(s, || self.wait(libc::POLLOUT, deadline))?;
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
        thread_local! {
            /// Where this thread's reads land before rustls takes them (one
            /// buffer per thread: no zeroing of a record's worth per read).
            static RAW: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; RECORD]);
        }
        RAW.with(|raw| match raw.try_borrow_mut() {
            Ok(mut raw) => self.tls_read_into(t, buf, &mut raw),
            Err(_) => self.tls_read_into(t, buf, &mut vec![0u8; RECORD]),
        })
    }

    fn tls_read_into(&self, t: &Tls, buf: &mut [u8], raw: &mut [u8]) -> io::Result<usize> {
        loop {
            {
                let mut s = t.session.lock();
                if !s.raw.is_empty() {
                    self.absorb(&mut s)?;
                }
                match s.conn.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if s.eof {
                    return Ok(0);
                }
            }
            // Without the lock: the socket's own read timeout applies.
            let n = recv(&self.inner.sock, raw, t.nonblocking.load(Ordering::Relaxed))?;
            let mut s = t.session.lock();
            self.received(&mut s, &raw[..n])?;
        }
    }

    fn tls_write(&self, t: &Tls, buf: &[u8]) -> io::Result<usize> {
        let mut s = t.session.lock();
        let n = s.conn.writer().write(buf)?;
        self.send_pending(&mut s, None)?;
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
