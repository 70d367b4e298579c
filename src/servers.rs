//! The registry servers a client or node may talk to: a list parsed from
//! `"h1:p1,h2:p2"`, with a memory of which server answered last.
//!
//! Two ways to walk it:
//! * [`ServerList::order`] — one pass for one operation (the client): the
//!   server that answered last first, then the others in list order;
//! * [`ServerList::failed`] — a long-lived link (the node's server link) that
//!   uses [`ServerList::current`] for each call and, when a call fails, moves
//!   to the next server in the list (wrapping), so every server gets its turn
//!   however many are down.
//!
//! The index is an atomic, so one list can be shared (`Arc<ServerList>`) by
//! threads that all learn from each other which server answers.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A non-empty list of distinct server addresses ("host:port").
#[derive(Debug)]
pub struct ServerList {
    addrs: Vec<String>,
    /// Index of the server that answered last (or the first, initially).
    good: AtomicUsize,
}

/// Why a server list was refused; the message is one sentence.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ServerListError(String);

impl ServerList {
    /// Parses `"h1:p1,h2:p2"`: entries are trimmed; an empty entry, an
    /// entry that is not HOST:PORT with a numeric port, or an address named
    /// twice is refused. Names are not resolved here (that happens at each
    /// connect, so a DNS change is picked up).
    pub fn parse(text: &str) -> Result<ServerList, ServerListError> {
        let mut addrs: Vec<String> = Vec::new();
        for (i, raw) in text.split(',').enumerate() {
            let a = raw.trim();
            if a.is_empty() {
                return Err(ServerListError(if text.trim().is_empty() {
                    "the server list is empty: give HOST:PORT[,HOST:PORT...]".into()
                } else {
                    format!(
                        "the server list '{text}' has an empty entry (entry {})",
                        i + 1
                    )
                }));
            }
            match a.rsplit_once(':') {
                None | Some((_, "")) if !a.starts_with(':') => {
                    let host = a.trim_end_matches(':');
                    return Err(ServerListError(format!(
                        "'{a}' has no port: give the server as HOST:PORT, e.g. {host}:12345"
                    )));
                }
                Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {}
                _ => {
                    return Err(ServerListError(format!(
                        "'{a}' in the server list is not HOST:PORT"
                    )))
                }
            }
            if addrs.iter().any(|x| x == a) {
                return Err(ServerListError(format!(
                    "the server list '{text}' names {a} twice"
                )));
            }
            addrs.push(a.to_string());
        }
        Ok(ServerList {
            addrs,
            good: AtomicUsize::new(0),
        })
    }

    /// Every address, in list order.
    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Always false: a list has at least one server.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// The server to use now: the one that answered last, or the one the
    /// last failure moved to. Returns its index and address.
    pub fn current(&self) -> (usize, &str) {
        let i = self.good.load(Ordering::Acquire) % self.addrs.len();
        (i, &self.addrs[i])
    }

    /// The order in which one operation tries the servers: the one that
    /// answered last first, then the others in list order.
    pub fn order(&self) -> Vec<(usize, &str)> {
        let (first, addr) = self.current();
        let mut v = Vec::with_capacity(self.addrs.len());
        v.push((first, addr));
        v.extend(
            self.addrs
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != first)
                .map(|(i, a)| (i, a.as_str())),
        );
        v
    }

    /// Server `i` answered: start there next time.
    pub fn succeeded(&self, i: usize) {
        self.good.store(i % self.addrs.len(), Ordering::Release);
    }

    /// Server `i` failed: if it is still the current one, the next server in
    /// the list (wrapping) becomes current. Returns the index now current.
    /// A failure reported by a thread that was behind (another thread already
    /// moved on) does not move the list again.
    pub fn failed(&self, i: usize) -> usize {
        let n = self.addrs.len();
        let next = (i + 1) % n;
        match self
            .good
            .compare_exchange(i % n, next, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => next,
            Err(now) => now % n,
        }
    }
}

impl Clone for ServerList {
    /// A copy with its own memory, starting at this list's current server.
    fn clone(&self) -> Self {
        ServerList {
            addrs: self.addrs.clone(),
            good: AtomicUsize::new(self.good.load(Ordering::Acquire)),
        }
    }
}

impl PartialEq for ServerList {
    /// Same addresses in the same order (the memory does not count).
    fn eq(&self, other: &Self) -> bool {
        self.addrs == other.addrs
    }
}

impl Eq for ServerList {}

impl FromStr for ServerList {
    type Err = ServerListError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ServerList::parse(s)
    }
}

impl fmt::Display for ServerList {
    /// The list as it would be given: `h1:p1,h2:p2`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addrs.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(l: &ServerList) -> Vec<&str> {
        l.order().into_iter().map(|(_, a)| a).collect()
    }

    #[test]
    fn parses_trims_and_keeps_list_order() {
        let l = ServerList::parse(" a:1 ,b:2,  [::1]:3").unwrap();
        assert_eq!(l.addrs(), ["a:1", "b:2", "[::1]:3"]);
        assert_eq!(l.to_string(), "a:1,b:2,[::1]:3");
        assert_eq!(l.current(), (0, "a:1"));
        let one: ServerList = "127.0.0.1:12345".parse().unwrap();
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn refuses_empty_entries_duplicates_and_non_addresses() {
        let err = |s: &str| ServerList::parse(s).unwrap_err().to_string();
        assert_eq!(
            err("a:1,,b:2"),
            "the server list 'a:1,,b:2' has an empty entry (entry 2)"
        );
        assert_eq!(
            err("a:1,"),
            "the server list 'a:1,' has an empty entry (entry 2)"
        );
        assert!(err("").contains("the server list is empty"));
        assert!(err("  ").contains("the server list is empty"));
        assert_eq!(
            err("a:1, b:2 ,a:1"),
            "the server list 'a:1, b:2 ,a:1' names a:1 twice"
        );
        assert_eq!(
            err("a:1,b"),
            "'b' has no port: give the server as HOST:PORT, e.g. b:12345"
        );
        assert_eq!(
            err("127.0.0.1:"),
            "'127.0.0.1:' has no port: give the server as HOST:PORT, e.g. 127.0.0.1:12345"
        );
        assert_eq!(err(":80"), "':80' in the server list is not HOST:PORT");
        assert_eq!(
            err("h:99999"),
            "'h:99999' in the server list is not HOST:PORT"
        );
    }

    #[test]
    fn order_starts_at_the_last_good_server_then_list_order() {
        let l = ServerList::parse("a:1,b:2,c:3").unwrap();
        assert_eq!(order(&l), ["a:1", "b:2", "c:3"]);
        l.succeeded(1);
        assert_eq!(order(&l), ["b:2", "a:1", "c:3"]);
        l.succeeded(2);
        assert_eq!(order(&l), ["c:3", "a:1", "b:2"]);
        assert_eq!(l.current(), (2, "c:3"));
    }

    #[test]
    fn failures_walk_every_server_in_turn_and_wrap() {
        let l = ServerList::parse("a:1,b:2,c:3").unwrap();
        // With a and b down, a link that moves on each failure reaches c
        // (it never ping-pongs between the first two).
        assert_eq!(l.failed(0), 1);
        assert_eq!(l.failed(1), 2);
        assert_eq!(l.current(), (2, "c:3"));
        assert_eq!(l.failed(2), 0, "wraps around");
        // A stale report (server 1 failed, but the list already moved past
        // it) does not move the list again.
        assert_eq!(l.failed(1), 0);
        assert_eq!(l.current(), (0, "a:1"));
        // A single server stays current.
        let one = ServerList::parse("a:1").unwrap();
        assert_eq!(one.failed(0), 0);
        assert_eq!(one.current(), (0, "a:1"));
    }

    #[test]
    fn shared_list_learns_across_threads_and_clones_are_independent() {
        let l = std::sync::Arc::new(ServerList::parse("a:1,b:2").unwrap());
        let l2 = l.clone();
        std::thread::spawn(move || l2.succeeded(1)).join().unwrap();
        assert_eq!(l.current(), (1, "b:2"));
        let copy = (*l).clone();
        copy.succeeded(0);
        assert_eq!(l.current(), (1, "b:2"), "a clone has its own memory");
        assert_eq!(copy, *l, "same addresses compare equal");
    }
}
