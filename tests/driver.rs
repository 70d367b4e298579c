//! The node's driver never waits on IO: a follower stuck connecting does not
//! hold up beacons, status pushes or the coordinator role.

mod common;

use common::*;
use serde_json::json;
use socket2::{Domain, Socket, Type};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A TCP forwarder in front of a node's data port that can turn into a
/// black hole: it cuts every forwarded connection, stops accepting and
/// fills its accept queue, so the kernel drops new SYNs and every connect
/// hangs for its whole timeout.
struct Proxy {
    addr: SocketAddr,
    /// Kept open: once the accept thread has stopped, its full accept queue
    /// is what drops new SYNs.
    _listener: Arc<Socket>,
    hole: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    fillers: Vec<TcpStream>,
}

impl Proxy {
    fn start(target: SocketAddr) -> Proxy {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        s.listen(1).unwrap();
        let addr = s.local_addr().unwrap().as_socket().unwrap();
        s.set_nonblocking(true).unwrap();
        let listener = Arc::new(s);
        let hole = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (l, h, cs) = (listener.clone(), hole.clone(), conns.clone());
        std::thread::spawn(move || {
            while !h.load(Ordering::Acquire) {
                let Ok((c, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                let c: TcpStream = c.into();
                c.set_nonblocking(false).unwrap();
                let Ok(up) = TcpStream::connect(target) else {
                    continue;
                };
                let mut guard = cs.lock().unwrap();
                guard.push(c.try_clone().unwrap());
                guard.push(up.try_clone().unwrap());
                drop(guard);
                for (mut from, mut to) in
                    [(c.try_clone().unwrap(), up.try_clone().unwrap()), (up, c)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy {
            addr,
            _listener: listener,
            hole,
            conns,
            fillers: Vec::new(),
        }
    }

    /// Cuts every connection and drops every new one's SYN.
    fn black_hole(&mut self) {
        self.hole.store(true, Ordering::Release);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        // Fill the accept queue until a connect no longer completes.
        for _ in 0..64 {
            match TcpStream::connect_timeout(&self.addr, Duration::from_millis(300)) {
                Ok(c) => self.fillers.push(c),
                Err(_) => return,
            }
        }
        panic!("the accept queue of {} never filled", self.addr);
    }
}

impl Drop for Proxy {
    /// Ends the accept thread; the listener closes with the proxy.
    fn drop(&mut self) {
        self.hole.store(true, Ordering::Release);
    }
}

/// Every replica follows the coordinator through the proxy. When the
/// coordinator dies and the proxy turns into a black hole,
/// both replicas' followers hang in connect (2 s each try) while one of them
/// wins the election. Its driver must not wait for its follower: it keeps
/// sending beacons and status pushes, so the other replica never suspects
/// it, and the failover takes exactly one epoch. (A driver that joined its
/// follower thread before taking the role went silent for up to the connect
/// timeout, eight failure timeouts.)
#[test]
fn a_follower_stuck_connecting_does_not_hold_up_the_driver() {
    let mut c = Cluster::start("stuck-follower", 0, json!({}));
    let listen = dead_addrs(1).remove(0);
    let mut proxy = Proxy::start(listen.parse().unwrap());
    let first = c.add_node_with(&["--listen", &listen, "--advertise", &proxy.addr.to_string()]);
    wait_until("the first node to be coordinator", || {
        c.view().coordinator == Some(c.nodes[first].id)
    });
    c.add_node();
    c.add_node();
    c.wait_for_isr(3);
    let writers = Writers::start(&c.server_addr(), 2, "stuck");
    writers.wait_acked(100);

    // The coordinator dies first (so it cannot drop the replicas from the
    // in-sync set when their streams break), then its address goes dark.
    c.nodes[first].kill();
    proxy.black_hole();
    let mut epoch = 0;
    wait_until("a new coordinator", || {
        let v = c.view();
        epoch = v.epoch;
        v.epoch > 1 && v.coordinator.is_some_and(|id| id != c.nodes[first].id)
    });
    assert_eq!(epoch, 2, "one failover, one epoch");
    wait_for_progress(&c.server_addr(), "after-black-hole");
    writers.wait_acked(writers.acked() + 100);
    let log = writers.stop();
    assert_all_read_back(&c.server_addr(), &log);
    c.wait_converged(&[1, 2]);
    let v = c.view();
    assert_eq!(v.epoch, 2, "the new coordinator was never suspected");
    assert_eq!(v.isr.len(), 2, "both survivors are in sync: {v:?}");
}
