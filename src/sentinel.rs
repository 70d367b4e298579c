//! Sentinel-style discovery on the server: a RESP port that answers the
//! subset of Redis Sentinel commands clients use to find the primary, so
//! Sentinel-aware Redis libraries (redis-py's `Sentinel`, ...) find the
//! coordinator's RESP address, and the new one after a failover.
//!
//! Commands: `SENTINEL get-master-addr-by-name|masters|master|replicas|slaves|sentinels`,
//! `PING`, `INFO`. The coordinator is flagged `s_down` while its lease has run
//! out (a failover is under way), which makes clients ask again.

use crate::core::server::ServerCore;
use crate::resp::{AuthGate, Gate, Limits, Reply};
use crate::types::Role;
use crate::wire::{ClusterView, MemberInfo};
use parking_lot::Mutex;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
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
}

pub(crate) fn accept_loop(ctx: Arc<Context>, listener: TcpListener, stop: Arc<AtomicBool>) {
    for stream in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let Some(stream) = crate::net::accepted(stream, ctx.deadlines.request) else {
            continue;
        };
        let Some(slot) = ctx.conns.try_acquire() else {
            let _ =
                std::io::Write::write_all(&mut &stream, b"-ERR max number of clients reached\r\n");
            continue;
        };
        let ctx = ctx.clone();
        let _ = std::thread::Builder::new()
            .name("sentinel-conn".into())
            .spawn(move || {
                let _slot = slot;
                serve(&ctx, stream)
            });
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
    let mut failures = 0;
    let answer = |args: &[Vec<u8>]| {
        match gate.check(args) {
            Gate::Run => {}
            Gate::Answer(reply) => return (reply, false),
            Gate::Failed(reply) => {
                failures += 1;
                let c = &ctx.counters.failed_auth;
                crate::auth::AuthCounters::bump(c);
                crate::auth::log_sampled(crate::auth::AuthCounters::get(c), || {
                    "Sentinel client: wrong password".to_string()
                });
                return (reply, failures >= crate::auth::MAX_AUTH_FAILURES);
            }
        }
        let (view, down) = {
            let c = ctx.core.lock();
            let now = Instant::now();
            (c.view(now), c.lease_expired(now))
        };
        (handle(args, &ctx.name, &view, down), false)
    };
    let _ = crate::resp::serve(&stream, || limits, ctx.deadlines, answer, || false);
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

fn master_info(name: &str, view: &ClusterView, down: bool) -> Option<Reply> {
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
        ("num-other-sentinels", "0".into()),
        ("quorum", "1".into()),
        ("config-epoch", view.epoch.to_string()),
    ]))
}

fn handle(args: &[Vec<u8>], name: &str, view: &ClusterView, down: bool) -> Reply {
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
                     master0:name={name},status={status},address={addr},slaves={},sentinels=1\r\n",
                    replicas(view).len()
                )
                .into_bytes(),
            )
        }
        "SENTINEL" if args.len() >= 2 => {
            let sub = up(&args[1]);
            let asked = args.get(2).map(|a| String::from_utf8_lossy(a).into_owned());
            let known = asked.as_deref() == Some(name);
            match sub.as_str() {
                "MASTERS" => Reply::Array(master_info(name, view, down).into_iter().collect()),
                "MASTER" if known => master_info(name, view, down)
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
                "SENTINELS" if known => Reply::Array(vec![]),
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
