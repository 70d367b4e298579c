//! The accept loop of every TCP port (node data and RESP ports, server and
//! Sentinel ports): one thread accepts, one thread serves each connection,
//! connections are bounded by a [`ConnLimit`], and every live connection is
//! recorded so that shutdown can end it and join its thread.
//!
//! Stopping is in three steps, so a process can let requests under way
//! finish before it cuts anything:
//! 1. [`Listener::stop_accepting`]: the accept thread notices its stop flag
//!    (it waits in `poll(2)` with a [`POLL`] timeout, so an incoming
//!    connection is accepted at once and a stop is seen within [`POLL`]),
//!    ends, and the listening socket is closed;
//! 2. [`Listener::drain`]: every connection that did not ask to be kept
//!    ([`Conn::keep_through_drain`], the replication streams) has its
//!    reading side shut down: a request being served is answered, then the
//!    next read sees end of file and the thread ends; an idle connection
//!    ends at once. [`Listener::wait_drained`] waits for that, up to a
//!    deadline;
//! 3. [`Listener::close`]: every connection left is shut down both ways
//!    (any blocked read or write returns) and its thread is joined.

use super::{accepted, ConnLimit, ConnSlot, Stream};
use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the accept thread waits for a connection before it looks at its
/// stop flag again.
pub const POLL: Duration = Duration::from_millis(50);

/// Tells a refused connection why (given the limit).
pub type Refuse = Box<dyn Fn(&Stream, usize) + Send>;

/// Serves one connection.
pub type Serve = Arc<dyn Fn(Stream, &Conn) + Send + Sync>;

/// What a port does with its connections.
pub struct Service {
    /// Name of the accept thread.
    pub name: String,
    /// Name of each connection thread.
    pub conn_name: String,
    /// Shared by the ports of one process (a node's data and RESP ports).
    pub limit: ConnLimit,
    /// Write timeout of every accepted socket (see [`accepted`]).
    pub write_timeout: Duration,
    /// Tells a connection over the limit why it is refused (in the port's
    /// protocol); called with a 100 ms write timeout set, then it is closed.
    pub refuse: Refuse,
    /// Serves one connection, on its own thread.
    pub serve: Serve,
    /// TLS only: each connection's handshake runs on its thread (within
    /// `write_timeout`) before `serve`; one that fails is closed, and a
    /// connection over the limit is closed without a word.
    pub tls: Option<Arc<crate::tls::Tls>>,
}

/// A listening port and its connections. Dropping it does not stop it
/// (as with the node and server that own one); call [`Listener::close`].
pub struct Listener {
    addr: SocketAddr,
    reg: Arc<Registry>,
    accept: Option<JoinHandle<()>>,
}

struct Registry {
    stop: AtomicBool,
    live: Mutex<Live>,
    /// Signalled whenever a connection ends.
    ended: Condvar,
}

#[derive(Default)]
struct Live {
    next_id: u64,
    /// Every connection whose thread has not ended, by id.
    conns: HashMap<u64, Tracked>,
    /// The threads not yet joined, by connection id.
    threads: HashMap<u64, JoinHandle<()>>,
    /// Connections whose thread ended (or is ending) and is not yet joined.
    finished: Vec<u64>,
}

struct Tracked {
    /// A clone of the connection's socket, to shut it down from outside.
    stream: TcpStream,
    /// Whether [`Listener::drain`] shuts its reading side down.
    drain: bool,
}

/// Tells how many connections a [`Listener`] has live.
#[derive(Clone)]
pub struct LiveCount(Arc<Registry>);

impl LiveCount {
    pub fn live(&self) -> usize {
        self.0.live.lock().conns.len()
    }
}

/// What a connection thread holds while it runs: its connection slot and
/// its entry in the registry, both released when it is dropped (when the
/// thread's work is done).
pub struct Conn {
    reg: Arc<Registry>,
    id: u64,
    /// Released first, so a connection seen gone has its slot back.
    slot: Option<ConnSlot>,
}

impl Conn {
    /// Leaves this connection alone when the listener drains: it is only
    /// shut down by [`Listener::close`]. For a connection the requests of
    /// others depend on (a coordinator's replication stream: writes under
    /// way wait for its acknowledgements).
    pub fn keep_through_drain(&self) {
        if let Some(t) = self.reg.live.lock().conns.get_mut(&self.id) {
            t.drain = false;
        }
    }

    /// True once the listener stopped accepting.
    pub fn stopping(&self) -> bool {
        self.reg.stop.load(Ordering::Acquire)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        drop(self.slot.take());
        let mut live = self.reg.live.lock();
        live.conns.remove(&self.id);
        live.finished.push(self.id);
        drop(live);
        self.reg.ended.notify_all();
    }
}

impl Listener {
    /// Starts the accept thread of `listener`.
    pub fn start(listener: TcpListener, service: Service) -> io::Result<Listener> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let reg = Arc::new(Registry {
            stop: AtomicBool::new(false),
            live: Mutex::new(Live::default()),
            ended: Condvar::new(),
        });
        let r = reg.clone();
        let accept = std::thread::Builder::new()
            .name(service.name.clone())
            .spawn(move || accept_loop(r, listener, service))?;
        Ok(Listener {
            addr,
            reg,
            accept: Some(accept),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Live connections.
    pub fn live(&self) -> usize {
        self.reg.live.lock().conns.len()
    }

    /// A handle that tells the live connections (for metrics).
    pub fn live_count(&self) -> LiveCount {
        LiveCount(self.reg.clone())
    }

    /// Stops accepting and joins the accept thread; the port is closed when
    /// this returns. Connections already accepted go on.
    pub fn stop_accepting(&mut self) {
        self.reg.stop.store(true, Ordering::Release);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }

    /// Shuts down the reading side of every connection not kept through the
    /// drain: each ends after answering what it is serving. Call after
    /// [`Listener::stop_accepting`].
    pub fn drain(&self) {
        for t in self.reg.live.lock().conns.values().filter(|t| t.drain) {
            let _ = t.stream.shutdown(Shutdown::Read);
        }
    }

    /// Waits until every drained connection ended, or `deadline`; true if
    /// they did.
    pub fn wait_drained(&self, deadline: Instant) -> bool {
        let mut live = self.reg.live.lock();
        while live.conns.values().any(|t| t.drain) {
            if self.reg.ended.wait_until(&mut live, deadline).timed_out() {
                return !live.conns.values().any(|t| t.drain);
            }
        }
        true
    }

    /// Stops accepting (if not done yet), shuts every connection down both
    /// ways and joins every connection thread.
    pub fn close(&mut self) {
        self.stop_accepting();
        for t in self.reg.live.lock().conns.values() {
            let _ = t.stream.shutdown(Shutdown::Both);
        }
        // The accept thread is gone: nothing adds a thread any more.
        let threads: Vec<_> = self.reg.live.lock().threads.drain().collect();
        for (_, t) in threads {
            let _ = t.join();
        }
    }
}

fn accept_loop(reg: Arc<Registry>, listener: TcpListener, service: Service) {
    let fd = listener.as_raw_fd();
    let poll_ms = POLL.as_millis() as libc::c_int;
    while !reg.stop.load(Ordering::Acquire) {
        reap(&reg);
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, owned by this frame, for the call.
        let n = unsafe { libc::poll(&mut p, 1, poll_ms) };
        if n <= 0 {
            // Timeout, or EINTR: look at the stop flag again.
            continue;
        }
        // Take every connection that is waiting.
        while !reg.stop.load(Ordering::Acquire) {
            let r = match listener.accept() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => r.map(|(s, _)| s),
            };
            let Some(stream) = accepted(r, service.write_timeout) else {
                break;
            };
            admit(&reg, &service, stream);
        }
    }
}

/// Serves one accepted connection, or refuses it when the limit is reached.
fn admit(reg: &Arc<Registry>, service: &Service, stream: TcpStream) {
    // The listener is non-blocking; on some systems accepted sockets
    // inherit that.
    let _ = stream.set_nonblocking(false);
    let Some(slot) = service.limit.try_acquire() else {
        let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
        let stream = Stream::plain(stream);
        if service.tls.is_none() {
            (service.refuse)(&stream, service.limit.max());
        }
        // On the accept thread: take what the client already sent (so
        // closing does not reset the refusal away), never wait for more.
        super::close_after_reply(&stream, Duration::ZERO);
        return;
    };
    let clone = match stream.try_clone() {
        Ok(c) => c,
        Err(e) => {
            log::warn!("{}: cannot track a connection: {e}", service.name);
            return;
        }
    };
    let conn = {
        let mut live = reg.live.lock();
        let id = live.next_id;
        live.next_id += 1;
        live.conns.insert(
            id,
            Tracked {
                stream: clone,
                drain: true,
            },
        );
        Conn {
            reg: reg.clone(),
            id,
            slot: Some(slot),
        }
    };
    let id = conn.id;
    let serve = service.serve.clone();
    let tls = service.tls.clone();
    let handshake = service.write_timeout;
    let res = std::thread::Builder::new()
        .name(service.conn_name.clone())
        .spawn(move || {
            let stream = match &tls {
                None => Some(Stream::plain(stream)),
                Some(t) => crate::tls::accept(t, stream, handshake),
            };
            if let Some(stream) = stream {
                serve(stream, &conn);
            }
            drop(conn);
        });
    match res {
        // Only this thread adds threads and reaps them, so the handle is
        // in place before `reap` can look for it.
        Ok(h) => {
            reg.live.lock().threads.insert(id, h);
        }
        // The closure was dropped with its Conn: the entry is gone.
        Err(e) => log::warn!("{}: cannot spawn a connection thread: {e}", service.name),
    }
}

/// Joins the threads of connections that ended.
fn reap(reg: &Registry) {
    let done: Vec<JoinHandle<()>> = {
        let mut live = reg.live.lock();
        let ids = std::mem::take(&mut live.finished);
        ids.iter()
            .filter_map(|id| live.threads.remove(id))
            .collect()
    };
    for t in done {
        let _ = t.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn echo(limit: usize) -> Listener {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        Listener::start(
            l,
            Service {
                name: "test-accept".into(),
                conn_name: "test-conn".into(),
                limit: ConnLimit::new(limit),
                write_timeout: Duration::from_secs(1),
                tls: None,
                refuse: Box::new(|s, _| {
                    let _ = (&*s).write_all(b"full");
                }),
                serve: Arc::new(|s, _| {
                    let mut b = [0u8; 64];
                    while let Ok(n @ 1..) = (&s).read(&mut b) {
                        if (&s).write_all(&b[..n]).is_err() {
                            break;
                        }
                    }
                }),
            },
        )
        .unwrap()
    }

    fn roundtrip(s: &mut TcpStream) -> Vec<u8> {
        let _ = s.write_all(b"hi");
        let mut b = [0u8; 4];
        let n = s.read(&mut b).unwrap_or(0);
        b[..n].to_vec()
    }

    #[test]
    fn close_ends_idle_connections_and_joins_their_threads() {
        let mut l = echo(8);
        let mut a = TcpStream::connect(l.addr()).unwrap();
        let mut b = TcpStream::connect(l.addr()).unwrap();
        assert_eq!(roundtrip(&mut a), b"hi");
        assert_eq!(roundtrip(&mut b), b"hi");
        assert_eq!(l.live(), 2);
        l.stop_accepting();
        assert!(
            TcpStream::connect(l.addr()).is_err(),
            "the port is closed once stop_accepting returns"
        );
        l.drain();
        assert!(l.wait_drained(Instant::now() + Duration::from_secs(5)));
        l.close();
        assert_eq!(l.live(), 0);
        let mut buf = [0u8; 1];
        assert_eq!(a.read(&mut buf).unwrap_or(0), 0, "closed by the listener");
    }

    #[test]
    fn kept_connections_outlive_the_drain_until_close() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut l = Listener::start(
            l,
            Service {
                name: "test-accept".into(),
                conn_name: "test-conn".into(),
                limit: ConnLimit::new(8),
                write_timeout: Duration::from_secs(1),
                tls: None,
                refuse: Box::new(|_, _| {}),
                serve: Arc::new(|s, c| {
                    c.keep_through_drain();
                    let _ = (&s).write_all(b"k");
                    let mut b = [0u8; 8];
                    while let Ok(1..) = (&s).read(&mut b) {}
                }),
            },
        )
        .unwrap();
        let mut a = TcpStream::connect(l.addr()).unwrap();
        let mut b = [0u8; 1];
        a.read_exact(&mut b).unwrap();
        l.stop_accepting();
        l.drain();
        assert!(l.wait_drained(Instant::now() + Duration::from_secs(1)));
        assert_eq!(l.live(), 1, "kept through the drain");
        l.close();
        assert_eq!(l.live(), 0);
    }

    #[test]
    fn the_limit_refuses_and_frees_slots() {
        let mut l = echo(1);
        let mut a = TcpStream::connect(l.addr()).unwrap();
        assert_eq!(roundtrip(&mut a), b"hi");
        let mut b = TcpStream::connect(l.addr()).unwrap();
        let mut got = Vec::new();
        let _ = b.read_to_end(&mut got);
        assert_eq!(got, b"full");
        drop(a);
        // The slot comes back once the first connection's thread ends.
        {
            let mut live = l.reg.live.lock();
            while !live.conns.is_empty() {
                let t = Instant::now() + Duration::from_secs(5);
                assert!(!l.reg.ended.wait_until(&mut live, t).timed_out());
            }
        }
        let mut c = TcpStream::connect(l.addr()).unwrap();
        assert_eq!(roundtrip(&mut c), b"hi");
        l.close();
    }
}
