//! Sentinel-style discovery on the server: a RESP port that answers the
//! subset of Redis Sentinel commands clients use to find the primary, so
//! Sentinel-aware Redis libraries (redis-py's `Sentinel`, ...) find the
//! coordinator's RESP address, and the new one after a failover.
//!
//! Commands: `SENTINEL get-master-addr-by-name|masters|master|replicas|slaves|sentinels`,
//! `PING`, `INFO`. The coordinator is flagged `s_down` while its lease has run
//! out (a failover is under way), which makes clients ask again.
//! `SENTINEL sentinels` lists the Sentinel ports of the *other* servers of the
//! registry ([`Context::peers`]), as Redis Sentinel lists the other sentinels,
//! so a client given one sentinel can learn the rest.

use crate::core::server::ServerCore;
use crate::net::listener::Service;
use crate::resp::{AuthGate, Gated, Limits, Reply};
use crate::types::Role;
use crate::wire::{ClusterView, MemberInfo};
use parking_lot::{Mutex, RwLock};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

/// What the Sentinel port shares with the server.
pub(crate) struct Context {
    pub core: Arc<Mutex<ServerCore>>,
    pub name: String,
    pub conns: crate::net::ConnLimit,
    pub password: Option<crate::auth::Password>,
    pub counters: Arc<crate::auth::AuthCounters>,
    pub deadlines: crate::net::Deadlines,
    /// "host:port" Sentinel addresses of the other servers sharing this
    /// registry (empty for a single server); replaced as servers come and go.
    pub peers: Arc<RwLock<Vec<String>>>,
}

/// The Sentinel port (see [`crate::net::listener`]).
pub(crate) fn service(ctx: Arc<Context>) -> Service {
    Service {
        name: "sentinel-accept".into(),
        conn_name: "sentinel-conn".into(),
        limit: ctx.conns.clone(),
        write_timeout: ctx.deadlines.request,
        refuse: Box::new(|stream, _| {
            let _ =
                std::io::Write::write_all(&mut &*stream, b"-ERR max number of clients reached\r\n");
        }),
        serve: Arc::new(move |stream, _| serve(&ctx, stream)),
    }
}

fn serve(ctx: &Context, stream: TcpStream) {
    let limits = Limits {
        max_bulk: 4096,
        max_args: 64,
        max_inline: 4096,
        max_command: 64 * 1024,
    };
    let mut gate = AuthGate::new(ctx.password.clone());
    let answer = |args: &[Vec<u8>]| {
        let wrong = || "Sentinel client: wrong password".to_string();
        if let Gated::Answer { reply, close } = gate.check(args, &ctx.counters, wrong) {
            return (reply, close);
        }
        let (view, down) = {
            let c = ctx.core.lock();
            let now = Instant::now();
            (c.view(now), c.lease_expired(now))
        };
        let peers = ctx.peers.read().clone();
        (handle(args, &ctx.name, &view, down, &peers), false)
    };
    let mut handler = crate::resp::Immediate(answer);
    let _ = crate::resp::serve(&stream, || limits, ctx.deadlines, &mut handler, || false);
}

fn split(addr: &str) -> (String, String) {
    match addr.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.to_string()),
        None => (addr.to_string(), "0".into()),
    }
}

fn flat(pairs: Vec<(&str, String)>) -> Reply {
    Reply::Array(
        pairs
            .into_iter()
            .flat_map(|(k, v)| {
                [
                    Reply::Bulk(k.as_bytes().to_vec()),
                    Reply::Bulk(v.into_bytes()),
                ]
            })
            .collect(),
    )
}

fn coordinator(view: &ClusterView) -> Option<&MemberInfo> {
    view.coordinator
        .and_then(|c| view.member(c))
        .filter(|m| m.resp_addr.is_some())
}

fn replicas(view: &ClusterView) -> Vec<&MemberInfo> {
    view.members
        .iter()
        .filter(|m| Some(m.node_id) != view.coordinator && m.resp_addr.is_some())
        .collect()
}

fn master_info(name: &str, view: &ClusterView, down: bool, peers: &[String]) -> Option<Reply> {
    let m = coordinator(view)?;
    let (ip, port) = split(m.resp_addr.as_deref().expect("filtered"));
    let flags = if down { "master,s_down" } else { "master" };
    Some(flat(vec![
        ("name", name.to_string()),
        ("ip", ip),
        ("port", port),
        ("runid", format!("dkv-node-{}", m.node_id)),
        ("flags", flags.into()),
        ("num-slaves", replicas(view).len().to_string()),
        ("num-other-sentinels", peers.len().to_string()),
        ("quorum", "1".into()),
        ("config-epoch", view.epoch.to_string()),
    ]))
}

/// A stable 40-hex-digit run id for a Sentinel address (Redis Sentinel names
/// its peers by run id; we do not know the peers' own, so derive one).
fn peer_runid(addr: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(format!("dkv-sentinel {addr}").as_bytes());
    d.iter().take(20).map(|b| format!("{b:02x}")).collect()
}

/// One entry of `SENTINEL sentinels`, with the fields Redis Sentinel gives
/// (name, ip, port, runid, flags, link and ping state, last hello, vote).
fn sentinel_info(addr: &str) -> Reply {
    let (ip, port) = split(addr);
    let runid = peer_runid(addr);
    flat(vec![
        ("name", runid.clone()),
        ("ip", ip),
        ("port", port),
        ("runid", runid),
        ("flags", "sentinel".into()),
        ("link-pending-commands", "0".into()),
        ("link-refcount", "1".into()),
        ("last-ping-sent", "0".into()),
        ("last-ok-ping-reply", "0".into()),
        ("last-ping-reply", "0".into()),
        ("last-hello-message", "0".into()),
        ("voted-leader", "?".into()),
        ("voted-leader-epoch", "0".into()),
    ])
}

fn handle(args: &[Vec<u8>], name: &str, view: &ClusterView, down: bool, peers: &[String]) -> Reply {
    let up = |b: &[u8]| String::from_utf8_lossy(b).to_ascii_uppercase();
    match up(&args[0]).as_str() {
        "PING" => Reply::Simple("PONG".into()),
        "HELLO" => crate::resp::hello(args, "sentinel", "sentinel"),
        "CLIENT" => Reply::ok(),
        "INFO" => {
            let addr = coordinator(view)
                .and_then(|m| m.resp_addr.clone())
                .unwrap_or_default();
            let status = if down || addr.is_empty() {
                "sdown"
            } else {
                "ok"
            };
            Reply::Bulk(
                format!(
                    "# Sentinel\r\nsentinel_masters:1\r\nsentinel_tilt:0\r\nsentinel_running_scripts:0\r\n\
                     master0:name={name},status={status},address={addr},slaves={},sentinels={}\r\n",
                    replicas(view).len(),
                    peers.len() + 1
                )
                .into_bytes(),
            )
        }
        "SENTINEL" if args.len() >= 2 => {
            let sub = up(&args[1]);
            let asked = args.get(2).map(|a| String::from_utf8_lossy(a).into_owned());
            let known = asked.as_deref() == Some(name);
            match sub.as_str() {
                "MASTERS" => {
                    Reply::Array(master_info(name, view, down, peers).into_iter().collect())
                }
                "MASTER" if known => master_info(name, view, down, peers)
                    .unwrap_or_else(|| Reply::err("ERR No such master with that name")),
                "GET-MASTER-ADDR-BY-NAME" if known => match coordinator(view) {
                    Some(m) => {
                        let (ip, port) = split(m.resp_addr.as_deref().expect("filtered"));
                        Reply::Array(vec![
                            Reply::Bulk(ip.into_bytes()),
                            Reply::Bulk(port.into_bytes()),
                        ])
                    }
                    None => Reply::Nil,
                },
                "GET-MASTER-ADDR-BY-NAME" => Reply::Nil,
                "REPLICAS" | "SLAVES" if known => {
                    let master = coordinator(view)
                        .and_then(|m| m.resp_addr.clone())
                        .unwrap_or_default();
                    let (mh, mp) = split(&master);
                    Reply::Array(
                        replicas(view)
                            .into_iter()
                            .map(|r| {
                                let addr = r.resp_addr.clone().expect("filtered");
                                let (ip, port) = split(&addr);
                                let flags = if r.in_sync || r.role == Role::Replica {
                                    "slave"
                                } else {
                                    "slave,s_down"
                                };
                                flat(vec![
                                    ("name", addr.clone()),
                                    ("ip", ip),
                                    ("port", port),
                                    ("runid", format!("dkv-node-{}", r.node_id)),
                                    ("flags", flags.into()),
                                    ("master-link-status", "ok".into()),
                                    ("master-host", mh.clone()),
                                    ("master-port", mp.clone()),
                                    ("slave-repl-offset", r.log_position.index.to_string()),
                                ])
                            })
                            .collect(),
                    )
                }
                "SENTINELS" if known => {
                    Reply::Array(peers.iter().map(|p| sentinel_info(p)).collect())
                }
                "MASTER" | "REPLICAS" | "SLAVES" | "SENTINELS" => {
                    Reply::err("ERR No such master with that name")
                }
                other => Reply::err(format!(
                    "ERR unknown sentinel subcommand '{}'",
                    other.to_ascii_lowercase()
                )),
            }
        }
        _ => {
            let shown: String = String::from_utf8_lossy(&args[0]).chars().take(64).collect();
            Reply::err(format!("ERR unknown command '{shown}'"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    /// The field/value pairs of one flat entry.
    fn pairs(r: &Reply) -> Vec<(String, String)> {
        let Reply::Array(items) = r else {
            panic!("not an array: {r:?}")
        };
        let text = |r: &Reply| match r {
            Reply::Bulk(b) => String::from_utf8(b.clone()).unwrap(),
            other => panic!("not a bulk string: {other:?}"),
        };
        items
            .chunks(2)
            .map(|kv| (text(&kv[0]), text(&kv[1])))
            .collect()
    }

    fn field<'a>(p: &'a [(String, String)], k: &str) -> &'a str {
        &p.iter()
            .find(|(f, _)| f == k)
            .unwrap_or_else(|| panic!("{k}"))
            .1
    }

    #[test]
    fn sentinels_lists_the_other_servers_in_redis_format() {
        let view = ClusterView::default();
        let peers = vec!["10.0.0.2:26379".to_string(), "[::1]:26380".to_string()];
        let r = handle(
            &cmd(&["SENTINEL", "sentinels", "dkv"]),
            "dkv",
            &view,
            false,
            &peers,
        );
        let Reply::Array(entries) = r else {
            panic!("{r:?}")
        };
        assert_eq!(entries.len(), 2);
        let a = pairs(&entries[0]);
        let b = pairs(&entries[1]);
        assert_eq!(
            a.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>()[..5],
            ["name", "ip", "port", "runid", "flags"],
            "Redis's field order"
        );
        assert_eq!(field(&a, "ip"), "10.0.0.2");
        assert_eq!(field(&a, "port"), "26379");
        assert_eq!(field(&a, "flags"), "sentinel");
        assert_eq!(field(&b, "ip"), "[::1]");
        assert_eq!(field(&b, "port"), "26380");
        let runid = field(&a, "runid");
        assert_eq!(runid.len(), 40);
        assert!(runid.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(
            field(&a, "name"),
            runid,
            "Redis names a sentinel by its run id"
        );
        assert_ne!(runid, field(&b, "runid"));
        assert_eq!(runid, peer_runid("10.0.0.2:26379"), "stable across calls");

        // Alone, the list is empty; another name is unknown.
        let alone = handle(
            &cmd(&["SENTINEL", "sentinels", "dkv"]),
            "dkv",
            &view,
            false,
            &[],
        );
        assert_eq!(alone, Reply::Array(vec![]));
        let other = handle(
            &cmd(&["sentinel", "SENTINELS", "x"]),
            "dkv",
            &view,
            false,
            &peers,
        );
        assert_eq!(other, Reply::err("ERR No such master with that name"));
    }

    #[test]
    fn info_counts_this_sentinel_and_its_peers() {
        let view = ClusterView::default();
        let peers = vec!["a:1".to_string(), "b:2".to_string()];
        let Reply::Bulk(info) = handle(&cmd(&["INFO"]), "dkv", &view, false, &peers) else {
            panic!()
        };
        assert!(String::from_utf8(info).unwrap().contains("sentinels=3"));
    }
}
