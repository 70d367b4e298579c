//! The node's RESP introspection and protocol commands: `HELLO`, `CLIENT`,
//! `COMMAND`, `INFO`, `CONFIG`, `TIME`, `ROLE`, `WAIT`, `OBJECT`, answered
//! as Redis 7 answers them, with DKV's content. The data commands are
//! elsewhere; [`COMMANDS`] is the one table of every command the RESP port
//! knows (what `COMMAND` reports, what [`lookup`] finds for the data path).
//!
//! Per-port state lives in [`RespStats`] (in the node's `Shared`): counters
//! for INFO's stats and the registry of live RESP connections that
//! `CLIENT LIST` shows and `CLIENT KILL` ends.
//!
//! Differences from Redis, on purpose:
//! * `WAIT` never blocks: a DKV write is acknowledged only once every
//!   in-sync node has it, so the coordinator answers at once with the number
//!   of in-sync replicas. A replica refuses it (as a Redis replica does): it
//!   does not know the in-sync set.
//! * `CONFIG GET` reports DKV's settings under Redis's names; `CONFIG SET`
//!   and `CONFIG REWRITE` are refused (settings come from config.json and
//!   flags).
//! * `OBJECT ENCODING` reads the node's own copy (a debugging command: no
//!   lease, no forwarding), and names the encoding Redis would use for the
//!   value.

use super::resp_data::{upper, wrong_args};
use super::Shared;
use crate::net::Stream;
use crate::resp::{Reply, RESP2, RESP3};
use crate::types::Role;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Counters and live connections of a node's RESP port.
pub(crate) struct RespStats {
    started: Instant,
    /// Connections accepted (INFO `total_connections_received`).
    connections_received: AtomicU64,
    /// Commands received, admitted or not (INFO `total_commands_processed`).
    commands_processed: AtomicU64,
    /// Live connections by id.
    clients: Mutex<BTreeMap<u64, Arc<ClientInfo>>>,
    /// (when, commands then, ops/s computed then) for
    /// `instantaneous_ops_per_sec`.
    ops_sample: Mutex<(Instant, u64, u64)>,
}

impl Default for RespStats {
    fn default() -> Self {
        let now = Instant::now();
        RespStats {
            started: now,
            connections_received: AtomicU64::new(0),
            commands_processed: AtomicU64::new(0),
            clients: Mutex::new(BTreeMap::new()),
            ops_sample: Mutex::new((now, 0, 0)),
        }
    }
}

impl RespStats {
    pub fn connected(&self) -> usize {
        self.clients.lock().len()
    }

    /// Commands per second over the last second or more (computed when
    /// asked, at most once a second: INFO is the only reader).
    fn ops_per_sec(&self) -> u64 {
        let now = Instant::now();
        let total = self.commands_processed.load(Ordering::Relaxed);
        let mut s = self.ops_sample.lock();
        let elapsed = now.duration_since(s.0);
        if elapsed >= Duration::from_secs(1) {
            let rate = total.saturating_sub(s.1) as f64 / elapsed.as_secs_f64();
            *s = (now, total, rate.round() as u64);
        }
        s.2
    }
}

/// What `CLIENT LIST` shows of one connection.
pub(crate) struct ClientInfo {
    pub id: u64,
    addr: String,
    laddr: String,
    fd: i32,
    created: Instant,
    /// A clone of the socket, so `CLIENT KILL` from another connection can
    /// shut it down.
    stream: Option<Stream>,
    state: Mutex<ClientState>,
}

struct ClientState {
    name: Option<Vec<u8>>,
    lib_name: Vec<u8>,
    lib_ver: Vec<u8>,
    proto: u8,
    last: Instant,
    /// The last command's name, as sent (bounded).
    cmd: Vec<u8>,
}

/// One connection's entry in [`RespStats`]; leaves it when dropped.
pub(crate) struct Client<'a> {
    pub info: Arc<ClientInfo>,
    stats: &'a RespStats,
}

impl<'a> Client<'a> {
    /// Registers a new connection, with an id from the process-wide counter.
    pub fn register(stats: &'a RespStats, stream: &Stream) -> Client<'a> {
        use std::os::fd::AsRawFd;
        let info = Arc::new(ClientInfo {
            id: crate::resp::next_client_id(),
            addr: stream
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            laddr: stream
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            fd: stream.socket().as_raw_fd(),
            created: Instant::now(),
            stream: stream.try_clone().ok(),
            state: Mutex::new(ClientState {
                name: None,
                lib_name: Vec::new(),
                lib_ver: Vec::new(),
                proto: RESP2,
                last: Instant::now(),
                cmd: Vec::new(),
            }),
        });
        stats.connections_received.fetch_add(1, Ordering::Relaxed);
        stats.clients.lock().insert(info.id, info.clone());
        Client { info, stats }
    }

    /// Counts one command and remembers it for `CLIENT LIST` (`idle`, `cmd`).
    pub fn touch(&self, cmd: &[u8]) {
        self.stats
            .commands_processed
            .fetch_add(1, Ordering::Relaxed);
        let mut st = self.info.state.lock();
        st.last = Instant::now();
        st.cmd.clear();
        st.cmd.extend_from_slice(&cmd[..cmd.len().min(32)]);
    }
}

impl Drop for Client<'_> {
    fn drop(&mut self) {
        self.stats.clients.lock().remove(&self.info.id);
    }
}

impl ClientInfo {
    /// One line of `CLIENT LIST` / `CLIENT INFO`, in Redis 7's fields.
    fn line(&self) -> String {
        let st = self.state.lock();
        let now = Instant::now();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let cmd = text(&st.cmd).to_ascii_lowercase();
        format!(
            "id={} addr={} laddr={} fd={} name={} age={} idle={} flags=N db=0 sub=0 psub=0 ssub=0 \
             multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 \
             tot-mem=0 events=r cmd={} user=default redir=-1 resp={} lib-name={} lib-ver={}\n",
            self.id,
            self.addr,
            self.laddr,
            self.fd,
            st.name.as_deref().map(text).unwrap_or_default(),
            now.duration_since(self.created).as_secs(),
            now.duration_since(st.last).as_secs(),
            if cmd.is_empty() { "NULL".into() } else { cmd },
            st.proto,
            text(&st.lib_name),
            text(&st.lib_ver),
        )
    }

    fn kill(&self) {
        if let Some(s) = &self.stream {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// What an admin command may touch of its connection.
pub(crate) struct Session<'s, 'a> {
    pub sh: &'a Shared,
    /// The connection's protocol version (`HELLO` changes it).
    pub proto: &'s mut u8,
    pub client: &'s Client<'a>,
}

/// Answers `args` when it is one of this module's commands: the reply and
/// whether to close the connection after it. `None`: not an admin command.
/// The caller has let it past the password gate.
pub(crate) fn answer(s: &mut Session<'_, '_>, args: &[Vec<u8>]) -> Option<(Reply, bool)> {
    const MINE: [&str; 9] = [
        "HELLO", "CLIENT", "COMMAND", "INFO", "CONFIG", "TIME", "ROLE", "WAIT", "OBJECT",
    ];
    // Every data command passes here first: no allocation to say no.
    if !MINE
        .iter()
        .any(|c| args[0].eq_ignore_ascii_case(c.as_bytes()))
    {
        return None;
    }
    let cmd = upper(&args[0]);
    let reply = match cmd.as_str() {
        "HELLO" => hello(s, args),
        "CLIENT" => return Some(client(s, args)),
        "COMMAND" => command(args),
        "INFO" => {
            let text = info(s, &args[1..]);
            if *s.proto == RESP3 {
                Reply::Verbatim(text)
            } else {
                Reply::Bulk(text.into_bytes())
            }
        }
        "CONFIG" => config(s, args),
        "TIME" if args.len() == 1 => {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            Reply::Array(vec![
                Reply::text(t.as_secs().to_string()),
                Reply::text(t.subsec_micros().to_string()),
            ])
        }
        "ROLE" if args.len() == 1 => role(s.sh),
        "WAIT" if args.len() == 3 => wait(s.sh, args),
        "OBJECT" => object(s.sh, args),
        "TIME" | "ROLE" | "WAIT" => wrong_args(&cmd),
        _ => return None,
    };
    Some((reply, false))
}

fn unknown_sub(cmd: &str, sub: &[u8]) -> Reply {
    Reply::err(format!(
        "ERR unknown subcommand '{}'. Try {cmd} HELP.",
        String::from_utf8_lossy(sub)
            .chars()
            .take(64)
            .collect::<String>()
    ))
}

fn not_integer() -> Reply {
    Reply::err("ERR value is not an integer or out of range")
}

fn int_arg(a: &[u8]) -> Option<i64> {
    std::str::from_utf8(a).ok()?.parse().ok()
}

fn hello(s: &mut Session<'_, '_>, args: &[Vec<u8>]) -> Reply {
    // The gate checked the syntax already and admitted any AUTH.
    let h = match crate::resp::parse_hello(args) {
        Ok(h) => h,
        Err(e) => return e,
    };
    let mut st = s.client.info.state.lock();
    if let Some(p) = h.proto {
        *s.proto = p;
        st.proto = p;
    }
    if let Some(n) = h.setname {
        st.name = (!n.is_empty()).then_some(n);
    }
    drop(st);
    let role = if s.sh.serving.read().role == Role::Coordinator {
        "master"
    } else {
        "replica"
    };
    crate::resp::hello_reply(*s.proto, s.client.info.id, "standalone", Some(role))
}

/// `CLIENT ID|INFO|LIST|SETNAME|GETNAME|SETINFO|NO-EVICT|NO-TOUCH|KILL|HELP`.
fn client(s: &mut Session<'_, '_>, args: &[Vec<u8>]) -> (Reply, bool) {
    let Some(sub) = args.get(1) else {
        return (wrong_args("client"), false);
    };
    let me = &s.client.info;
    let n = args.len();
    let reply = match upper(sub).as_str() {
        "ID" if n == 2 => Reply::Int(me.id as i64),
        "INFO" if n == 2 => Reply::Verbatim(me.line()).downgrade(*s.proto),
        "LIST" => match client_filter(&args[2..]) {
            Err(e) => e,
            Ok(f) => {
                let all: Vec<Arc<ClientInfo>> =
                    s.client.stats.clients.lock().values().cloned().collect();
                let text: String = all
                    .iter()
                    .filter(|c| f.matches(c, me.id))
                    .map(|c| c.line())
                    .collect();
                Reply::Verbatim(text).downgrade(*s.proto)
            }
        },
        "SETNAME" if n == 3 => match crate::resp::check_client_name(&args[2]) {
            Err(e) => e,
            Ok(()) => {
                me.state.lock().name = (!args[2].is_empty()).then(|| args[2].clone());
                Reply::ok()
            }
        },
        "GETNAME" if n == 2 => me
            .state
            .lock()
            .name
            .clone()
            .map(Reply::Bulk)
            .unwrap_or(Reply::Nil),
        "SETINFO" if n == 4 => {
            let v = &args[3];
            let ok = v.iter().all(|&c| (b'!'..=b'~').contains(&c));
            match upper(&args[2]).as_str() {
                attr @ ("LIB-NAME" | "LIB-VER") if !ok => Reply::err(format!(
                    "ERR {} cannot contain spaces, newlines or special characters.",
                    attr.to_ascii_lowercase()
                )),
                "LIB-NAME" => {
                    me.state.lock().lib_name = v.clone();
                    Reply::ok()
                }
                "LIB-VER" => {
                    me.state.lock().lib_ver = v.clone();
                    Reply::ok()
                }
                _ => Reply::err(format!(
                    "ERR Unrecognized option '{}'",
                    String::from_utf8_lossy(&args[2])
                )),
            }
        }
        "NO-EVICT" | "NO-TOUCH" if n == 3 => match upper(&args[2]).as_str() {
            // Nothing is evicted (noeviction) and no access time is kept.
            "ON" | "OFF" => Reply::ok(),
            _ => Reply::err("ERR syntax error"),
        },
        "KILL" if n >= 3 => return client_kill(s, &args[2..]),
        "HELP" if n == 2 => Reply::Array(
            [
                "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "ID", "    Return the ID of the current connection.",
                "INFO", "    Return information about the current client connection.",
                "LIST [TYPE normal|pubsub|master|replica] [ID <id> ...]",
                "    Return information about client connections.",
                "KILL <ip:port> | [ID <id>] [ADDR <ip:port>] [LADDR <ip:port>] [TYPE <type>] [USER <name>] [SKIPME yes|no]",
                "    Kill connections.",
                "SETNAME <name>", "    Assign the name <name> to the current connection.",
                "GETNAME", "    Return the name of the current connection.",
                "SETINFO <LIB-NAME|LIB-VER> <value>", "    Set client library name or version.",
                "NO-EVICT (ON|OFF)", "    Accepted; DKV never evicts.",
                "HELP", "    Print this help.",
            ]
            .into_iter()
            .map(|l| Reply::Simple(l.into()))
            .collect(),
        ),
        "ID" | "INFO" | "SETNAME" | "GETNAME" | "SETINFO" | "NO-EVICT" | "NO-TOUCH" | "KILL"
        | "HELP" => Reply::err(format!(
            "ERR wrong number of arguments for 'client|{}' command",
            String::from_utf8_lossy(sub).to_ascii_lowercase()
        )),
        _ => unknown_sub("CLIENT", sub),
    };
    (reply, false)
}

/// Which connections `CLIENT LIST` / `CLIENT KILL` mean.
#[derive(Default)]
struct ClientFilter {
    ids: Option<Vec<u64>>,
    addr: Option<String>,
    laddr: Option<String>,
    /// `TYPE`: only "normal" connections exist on this port.
    kind_normal: Option<bool>,
    user_default: Option<bool>,
    skip_me: bool,
}

impl ClientFilter {
    fn matches(&self, c: &ClientInfo, me: u64) -> bool {
        self.ids.as_ref().is_none_or(|ids| ids.contains(&c.id))
            && self.addr.as_ref().is_none_or(|a| *a == c.addr)
            && self.laddr.as_ref().is_none_or(|a| *a == c.laddr)
            && self.kind_normal.unwrap_or(true)
            && self.user_default.unwrap_or(true)
            && !(self.skip_me && c.id == me)
    }
}

/// `[TYPE t] [ID id ...]` of `CLIENT LIST`.
fn client_filter(args: &[Vec<u8>]) -> Result<ClientFilter, Reply> {
    let mut f = ClientFilter::default();
    let mut i = 0;
    while i < args.len() {
        match upper(&args[i]).as_str() {
            "TYPE" if i + 1 < args.len() => {
                f.kind_normal = Some(client_type(&args[i + 1])?);
                i += 2;
            }
            "ID" if i + 1 < args.len() => {
                let mut ids = Vec::new();
                for a in &args[i + 1..] {
                    match int_arg(a) {
                        Some(id) if id > 0 => ids.push(id as u64),
                        _ => return Err(Reply::err("ERR Invalid client ID")),
                    }
                }
                f.ids = Some(ids);
                i = args.len();
            }
            _ => return Err(Reply::err("ERR syntax error")),
        }
    }
    Ok(f)
}

/// Whether a `TYPE` names the connections this port has (normal ones).
fn client_type(t: &[u8]) -> Result<bool, Reply> {
    match upper(t).as_str() {
        "NORMAL" => Ok(true),
        "MASTER" | "REPLICA" | "SLAVE" | "PUBSUB" => Ok(false),
        _ => Err(Reply::err(format!(
            "ERR Unknown client type '{}'",
            String::from_utf8_lossy(t)
        ))),
    }
}

/// `CLIENT KILL ip:port` (old form: `+OK` or an error) or
/// `CLIENT KILL <filter> <value> ...` (the number killed). A connection
/// that kills itself is closed after the reply, as in Redis.
fn client_kill(s: &Session<'_, '_>, args: &[Vec<u8>]) -> (Reply, bool) {
    let me = s.client.info.id;
    let old_form = args.len() == 1;
    let mut f = ClientFilter {
        skip_me: !old_form,
        ..Default::default()
    };
    if old_form {
        f.addr = Some(String::from_utf8_lossy(&args[0]).into_owned());
    } else {
        if !args.len().is_multiple_of(2) {
            return (Reply::err("ERR syntax error"), false);
        }
        for kv in args.chunks(2) {
            let v = String::from_utf8_lossy(&kv[1]).into_owned();
            match upper(&kv[0]).as_str() {
                "ID" => match int_arg(&kv[1]) {
                    Some(id) if id > 0 => f.ids = Some(vec![id as u64]),
                    _ => return (Reply::err("ERR client-id should be greater than 0"), false),
                },
                "ADDR" => f.addr = Some(v),
                "LADDR" => f.laddr = Some(v),
                "TYPE" => match client_type(&kv[1]) {
                    Ok(t) => f.kind_normal = Some(t),
                    Err(e) => return (e, false),
                },
                "USER" => f.user_default = Some(v == "default"),
                "SKIPME" => match upper(&kv[1]).as_str() {
                    "YES" => f.skip_me = true,
                    "NO" => f.skip_me = false,
                    _ => return (Reply::err("ERR syntax error"), false),
                },
                "MAXAGE" => return (Reply::err("ERR syntax error"), false),
                _ => return (Reply::err("ERR syntax error"), false),
            }
        }
    }
    let all: Vec<Arc<ClientInfo>> = s.client.stats.clients.lock().values().cloned().collect();
    let mut killed = 0;
    let mut me_too = false;
    for c in all.iter().filter(|c| f.matches(c, me)) {
        if c.id == me {
            // Closed after the reply is written.
            me_too = true;
        } else {
            c.kill();
            // Gone from CLIENT LIST at once, as in Redis (its thread leaves
            // when its read returns).
            s.client.stats.clients.lock().remove(&c.id);
        }
        killed += 1;
    }
    let reply = match (old_form, killed) {
        (true, 0) => Reply::err("ERR No such client"),
        (true, _) => Reply::ok(),
        (false, n) => Reply::Int(n),
    };
    (reply, me_too)
}

trait Downgrade {
    /// A verbatim string for RESP3, a bulk string for RESP2 (as Redis 7
    /// answers CLIENT LIST / INFO).
    fn downgrade(self, proto: u8) -> Reply;
}

impl Downgrade for Reply {
    fn downgrade(self, proto: u8) -> Reply {
        match self {
            Reply::Verbatim(s) if proto != RESP3 => Reply::Bulk(s.into_bytes()),
            r => r,
        }
    }
}

// ---- INFO ----------------------------------------------------------------

/// INFO's sections, in Redis's order; all are in `default`.
const SECTIONS: [&str; 8] = [
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "replication",
    "security",
    "keyspace",
];

/// `INFO [section ...]`: `default`, `all`, `everything` or section names
/// (any case); unknown names add nothing, as in Redis.
fn info(s: &Session<'_, '_>, asked: &[Vec<u8>]) -> String {
    let wanted: Vec<&str> = if asked.is_empty() {
        SECTIONS.to_vec()
    } else {
        let asked: Vec<String> = asked
            .iter()
            .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
            .collect();
        if asked
            .iter()
            .any(|a| matches!(a.as_str(), "all" | "everything" | "default"))
        {
            SECTIONS.to_vec()
        } else {
            SECTIONS
                .iter()
                .copied()
                .filter(|sec| asked.iter().any(|a| a == sec))
                .collect()
        }
    };
    let mut parts = Vec::new();
    for sec in wanted {
        parts.push(section(s, sec));
    }
    parts.join("\r\n")
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn section(s: &Session<'_, '_>, name: &str) -> String {
    let sh = s.sh;
    let mut out = String::new();
    let mut kv = |k: &str, v: &dyn std::fmt::Display| {
        out += &format!("{k}:{v}\r\n");
    };
    match name {
        "server" => {
            let up = sh.resp.started.elapsed().as_secs();
            let port = s
                .client
                .info
                .laddr
                .rsplit_once(':')
                .map_or("0", |(_, p)| p)
                .to_string();
            kv("redis_version", &crate::resp::REDIS_VERSION);
            kv("redis_mode", &"standalone");
            kv(
                "os",
                &format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
            );
            kv("arch_bits", &(usize::BITS));
            kv("process_id", &std::process::id());
            kv("run_id", &run_id(sh));
            kv("tcp_port", &port);
            kv("uptime_in_seconds", &up);
            kv("uptime_in_days", &(up / 86400));
            kv("dkv_node_id", &sh.id);
            kv("dkv_incarnation", &sh.incarnation);
            kv("dkv_epoch", &sh.serving.read().epoch);
        }
        "clients" => {
            kv("connected_clients", &sh.resp.connected());
            kv("maxclients", &sh.conns.max());
            kv("blocked_clients", &0);
            kv("tracking_clients", &0);
            kv("pubsub_clients", &0);
        }
        "memory" => {
            let meta = sh.store.meta();
            kv("used_memory", &meta.bytes);
            kv("maxmemory", &sh.settings.max_memory);
            kv("maxmemory_policy", &"noeviction");
        }
        "persistence" => {
            let persisted = sh.storage.is_some();
            kv("loading", &0);
            kv("async_loading", &0);
            kv("rdb_bgsave_in_progress", &0);
            kv("aof_enabled", &(persisted as u8));
            kv("aof_rewrite_in_progress", &0);
            kv("dkv_data_dir", &yes_no(persisted));
            kv("dkv_fsync", &sh.settings.fsync);
        }
        "stats" => {
            let st = &sh.resp;
            kv(
                "total_connections_received",
                &st.connections_received.load(Ordering::Relaxed),
            );
            kv(
                "total_commands_processed",
                &st.commands_processed.load(Ordering::Relaxed),
            );
            kv("instantaneous_ops_per_sec", &st.ops_per_sec());
            // Not counted: expiry is a log entry like any delete.
            kv("expired_keys", &0);
            kv("evicted_keys", &0);
        }
        "replication" => replication(sh, &mut kv),
        "security" => {
            let a = sh.auth_stats();
            kv("dkv_cluster_secret", &yes_no(a.cluster_secret));
            kv(
                "dkv_client_password",
                &yes_no(sh.security.password.is_some()),
            );
            kv("dkv_forged_beacons", &a.forged_beacons);
            kv("dkv_replayed_beacons", &a.replayed_beacons);
            kv("dkv_rejected_peers", &a.rejected_peers);
            kv("dkv_failed_client_auth", &a.failed_client_auth);
        }
        "keyspace" => {
            let m = sh.store.meta();
            if m.keys > 0 {
                // avg_ttl is not tracked (Redis's is an estimate too).
                kv(
                    "db0",
                    &format!("keys={},expires={},avg_ttl=0", m.keys, m.expiring),
                );
            }
        }
        _ => unreachable!("INFO section {name} not in SECTIONS"),
    }
    let title = match name {
        "server" => "Server",
        "clients" => "Clients",
        "memory" => "Memory",
        "persistence" => "Persistence",
        "stats" => "Stats",
        "replication" => "Replication",
        "security" => "Security",
        _ => "Keyspace",
    };
    format!("# {title}\r\n{out}")
}

/// A 40-hex-digit id of this node process, new at every start (as Redis's
/// run_id): node id, incarnation and process id.
fn run_id(sh: &Shared) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(format!(
        "{} {} {}",
        sh.id,
        sh.incarnation,
        std::process::id()
    ));
    d.iter().take(20).map(|b| format!("{b:02x}")).collect()
}

fn split_addr(addr: &str) -> (&str, &str) {
    addr.rsplit_once(':').unwrap_or((addr, "0"))
}

/// The in-sync replicas at the coordinator, with their RESP addresses when
/// they serve one.
fn replicas(sh: &Shared, serving: &crate::core::node::Serving) -> Vec<(u64, Option<String>)> {
    sh.log
        .commit_set()
        .into_iter()
        .filter(|&id| id != sh.id)
        .map(|id| {
            let addr = serving
                .resp_addrs
                .iter()
                .find(|(n, _)| *n == id)
                .map(|(_, a)| a.clone());
            (id, addr)
        })
        .collect()
}

fn replication(sh: &Shared, kv: &mut dyn FnMut(&str, &dyn std::fmt::Display)) {
    let s = sh.serving.read().clone();
    let st = sh.log.state();
    if s.role == Role::Coordinator {
        let reps = replicas(sh, &s);
        kv("role", &"master");
        kv("connected_slaves", &reps.len());
        for (i, (id, addr)) in reps.iter().enumerate() {
            let (ip, port) = split_addr(addr.as_deref().unwrap_or(""));
            kv(
                &format!("slave{i}"),
                &format!(
                    "ip={ip},port={port},state=online,offset={},lag=0,dkv_id={id}",
                    st.commit
                ),
            );
        }
        kv("master_repl_offset", &st.last.index);
    } else {
        let meta = sh.store.meta();
        let (host, port) = split_addr(s.coordinator_resp_addr.as_deref().unwrap_or(":0"));
        kv("role", &"slave");
        kv("master_host", &host);
        kv("master_port", &port);
        kv(
            "master_link_status",
            &if s.role == Role::Replica {
                "up"
            } else {
                "down"
            },
        );
        kv(
            "master_sync_in_progress",
            &((s.role != Role::Replica) as u8),
        );
        kv("slave_repl_offset", &meta.applied.index);
    }
}

// ---- ROLE, WAIT, CONFIG, OBJECT -------------------------------------------

/// `ROLE`: `["master", offset, [[ip, port, offset], ...]]` at the
/// coordinator, `["slave", ip, port, state, offset]` elsewhere.
fn role(sh: &Shared) -> Reply {
    let s = sh.serving.read().clone();
    let st = sh.log.state();
    if s.role == Role::Coordinator {
        let reps = replicas(sh, &s)
            .into_iter()
            .map(|(_, addr)| {
                let (ip, port) = split_addr(addr.as_deref().unwrap_or(""));
                Reply::Array(vec![
                    Reply::text(ip),
                    Reply::text(port),
                    Reply::text(st.commit.to_string()),
                ])
            })
            .collect();
        Reply::Array(vec![
            Reply::text("master"),
            Reply::Int(st.last.index as i64),
            Reply::Array(reps),
        ])
    } else {
        let (ip, port) = split_addr(s.coordinator_resp_addr.as_deref().unwrap_or(":0"));
        let state = match (s.role, s.coordinator) {
            (Role::Replica, _) => "connected",
            (_, Some(_)) => "sync",
            (_, None) => "connect",
        };
        Reply::Array(vec![
            Reply::text("slave"),
            Reply::text(ip),
            Reply::Int(port.parse().unwrap_or(0)),
            Reply::text(state),
            Reply::Int(sh.store.meta().applied.index as i64),
        ])
    }
}

/// `WAIT numreplicas timeout`: never blocks (see the module doc).
fn wait(sh: &Shared, args: &[Vec<u8>]) -> Reply {
    if int_arg(&args[1]).is_none() {
        return not_integer();
    }
    let Some(timeout) = int_arg(&args[2]) else {
        return Reply::err("ERR timeout is not an integer or out of range");
    };
    if timeout < 0 {
        return Reply::err("ERR timeout is negative");
    }
    if sh.serving.read().role != Role::Coordinator {
        return Reply::err(
            "ERR WAIT cannot be used with replica instances: DKV acknowledges a write only once \
             every in-sync node has it; ask the coordinator for the number of in-sync replicas",
        );
    }
    let n = sh
        .log
        .commit_set()
        .into_iter()
        .filter(|&id| id != sh.id)
        .count();
    Reply::Int(n as i64)
}

/// What `CONFIG GET` reports: Redis's names, DKV's values.
fn config_values(s: &Session<'_, '_>) -> Vec<(&'static str, String)> {
    let set = &s.sh.settings;
    let (bind, port) = split_addr(&s.client.info.laddr);
    let fsync = match set.fsync.as_str() {
        "always" => "always",
        "interval" => "everysec",
        _ => "no",
    };
    vec![
        ("maxmemory", set.max_memory.to_string()),
        ("maxmemory-policy", "noeviction".into()),
        ("databases", "1".into()),
        ("save", String::new()),
        ("appendonly", yes_no(s.sh.storage.is_some()).into()),
        ("appendfsync", fsync.into()),
        ("timeout", (set.client_idle_timeout / 1000).to_string()),
        ("maxclients", s.sh.conns.max().to_string()),
        ("port", port.to_string()),
        (
            "bind",
            bind.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
        ),
        ("proto-max-bulk-len", set.max_value_bytes.to_string()),
        ("cluster-enabled", "no".into()),
        ("replica-read-only", "yes".into()),
        ("slave-read-only", "yes".into()),
        ("notify-keyspace-events", String::new()),
        (
            "min-replicas-to-write",
            set.min_in_sync.saturating_sub(1).to_string(),
        ),
    ]
}

/// `CONFIG GET pattern [pattern ...]`, `CONFIG SET` (refused),
/// `CONFIG RESETSTAT`, `CONFIG HELP`.
fn config(s: &Session<'_, '_>, args: &[Vec<u8>]) -> Reply {
    let Some(sub) = args.get(1) else {
        return wrong_args("config");
    };
    match upper(sub).as_str() {
        "GET" if args.len() >= 3 => {
            let found = config_values(s)
                .into_iter()
                .filter(|(name, _)| {
                    args[2..]
                        .iter()
                        .any(|p| crate::resp::glob_match(p, name.as_bytes(), true))
                })
                .map(|(name, v)| (name, Reply::text(v)));
            Reply::map(found)
        }
        "SET" | "REWRITE" => Reply::err(
            "ERR DKV's configuration is set in config.json and by command-line flags, \
             not with CONFIG SET / CONFIG REWRITE; change it there and restart the node",
        ),
        "RESETSTAT" if args.len() == 2 => {
            let st = &s.sh.resp;
            st.connections_received.store(0, Ordering::Relaxed);
            st.commands_processed.store(0, Ordering::Relaxed);
            *st.ops_sample.lock() = (Instant::now(), 0, 0);
            Reply::ok()
        }
        "HELP" if args.len() == 2 => Reply::Array(
            [
                "CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "GET <pattern>",
                "    Return parameters matching the glob-like <pattern> and their values.",
                "SET <directive> <value>",
                "    Refused: DKV is configured in config.json and by flags.",
                "RESETSTAT",
                "    Reset statistics reported by the INFO command.",
                "HELP",
                "    Print this help.",
            ]
            .into_iter()
            .map(|l| Reply::Simple(l.into()))
            .collect(),
        ),
        "GET" | "RESETSTAT" | "HELP" => Reply::err(format!(
            "ERR wrong number of arguments for 'config|{}' command",
            String::from_utf8_lossy(sub).to_ascii_lowercase()
        )),
        _ => unknown_sub("CONFIG", sub),
    }
}

/// The encoding Redis would give a string value.
pub fn encoding_of(value: &[u8]) -> &'static str {
    let canonical_int = value.len() <= 20
        && std::str::from_utf8(value)
            .ok()
            .and_then(|t| t.parse::<i64>().ok())
            .is_some_and(|n| n.to_string().as_bytes() == value);
    if canonical_int {
        "int"
    } else if value.len() <= 44 {
        "embstr"
    } else {
        "raw"
    }
}

/// `OBJECT ENCODING|FREQ|IDLETIME|REFCOUNT key`, `OBJECT HELP`. Reads this
/// node's copy of the key (see the module doc).
fn object(sh: &Shared, args: &[Vec<u8>]) -> Reply {
    let Some(sub) = args.get(1) else {
        return wrong_args("object");
    };
    let sub_up = upper(sub);
    if sub_up == "HELP" && args.len() == 2 {
        return Reply::Array(
            [
                "OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "ENCODING <key>",
                "    Return the kind of internal representation used in order to store the value associated with a <key>.",
                "FREQ <key>",
                "    Refused: access frequency is not tracked (maxmemory-policy is noeviction).",
                "IDLETIME <key>",
                "    Always 0: DKV keeps no access time.",
                "REFCOUNT <key>",
                "    Always 1.",
                "HELP",
                "    Print this help.",
            ]
            .into_iter()
            .map(|l| Reply::Simple(l.into()))
            .collect(),
        );
    }
    if !matches!(
        sub_up.as_str(),
        "ENCODING" | "FREQ" | "IDLETIME" | "REFCOUNT"
    ) {
        return unknown_sub("OBJECT", sub);
    }
    if args.len() != 3 {
        return Reply::err(format!(
            "ERR wrong number of arguments for 'object|{}' command",
            sub_up.to_ascii_lowercase()
        ));
    }
    let Some(value) = sh.store.get(&args[2]) else {
        return Reply::Nil;
    };
    match sub_up.as_str() {
        "ENCODING" => Reply::text(encoding_of(&value)),
        "FREQ" => Reply::err(
            "ERR An LFU maxmemory policy is not selected, access frequency not tracked. Please \
             note that when switching between policies at runtime LRU and LFU data will take \
             some time to adjust.",
        ),
        "IDLETIME" => Reply::Int(0),
        _ => Reply::Int(1),
    }
}

// ---- COMMAND ---------------------------------------------------------------

/// One command as `COMMAND INFO` / `COMMAND DOCS` describe it (Redis 7's
/// arity, flags, key positions and ACL categories).
#[derive(Debug)]
pub struct CommandSpec {
    /// Lower case, as Redis reports it.
    pub name: &'static str,
    /// `n`: exactly n arguments counting the name; `-n`: at least n.
    pub arity: i32,
    pub flags: &'static [&'static str],
    pub first_key: i32,
    pub last_key: i32,
    pub step: i32,
    /// Without the `@`.
    pub acl: &'static [&'static str],
    pub tips: &'static [&'static str],
    pub group: &'static str,
    pub since: &'static str,
    pub summary: &'static str,
}

impl CommandSpec {
    /// Whether `argc` arguments (the name included) fit the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        if self.arity >= 0 {
            argc == self.arity as usize
        } else {
            argc >= self.arity.unsigned_abs() as usize
        }
    }

    /// The key arguments of `args` (the name first), by first/last/step.
    pub fn keys<'v>(&self, args: &'v [Vec<u8>]) -> Vec<&'v [u8]> {
        if self.first_key <= 0 || args.len() <= self.first_key as usize {
            return Vec::new();
        }
        let last = if self.last_key < 0 {
            args.len() as i32 + self.last_key
        } else {
            self.last_key.min(args.len() as i32 - 1)
        };
        (self.first_key..=last)
            .step_by(self.step.max(1) as usize)
            .map(|i| args[i as usize].as_slice())
            .collect()
    }

    /// The 10-element entry of `COMMAND` / `COMMAND INFO`.
    fn info(&self) -> Reply {
        let status = |xs: &[&str], prefix: &str| {
            Reply::Set(
                xs.iter()
                    .map(|x| Reply::Simple(format!("{prefix}{x}")))
                    .collect(),
            )
        };
        Reply::Array(vec![
            Reply::text(self.name),
            Reply::Int(self.arity as i64),
            status(self.flags, ""),
            Reply::Int(self.first_key as i64),
            Reply::Int(self.last_key as i64),
            Reply::Int(self.step as i64),
            status(self.acl, "@"),
            Reply::Set(self.tips.iter().map(|t| Reply::text(*t)).collect()),
            Reply::Array(vec![]),
            Reply::Array(vec![]),
        ])
    }

    fn docs(&self) -> Reply {
        Reply::map([
            ("summary", Reply::text(self.summary)),
            ("since", Reply::text(self.since)),
            ("group", Reply::text(self.group)),
        ])
    }
}

/// The command named `name` (any case), if the RESP port knows it.
pub fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    COMMANDS
        .iter()
        .find(|c| c.name.as_bytes().eq_ignore_ascii_case(name))
}

/// Whether the RESP port knows the command `name` (any case).
pub fn is_known(name: &[u8]) -> bool {
    lookup(name).is_some()
}

#[allow(clippy::too_many_arguments)]
const fn cmd(
    name: &'static str,
    arity: i32,
    flags: &'static [&'static str],
    keys: (i32, i32, i32),
    acl: &'static [&'static str],
    tips: &'static [&'static str],
    group: &'static str,
    since: &'static str,
    summary: &'static str,
) -> CommandSpec {
    CommandSpec {
        name,
        arity,
        flags,
        first_key: keys.0,
        last_key: keys.1,
        step: keys.2,
        acl,
        tips,
        group,
        since,
        summary,
    }
}

const NOKEY: (i32, i32, i32) = (0, 0, 0);
const KEY1: (i32, i32, i32) = (1, 1, 1);
const KEYS: (i32, i32, i32) = (1, -1, 1);
const TWO_KEYS: (i32, i32, i32) = (1, 2, 1);

const RO_FAST: &[&str] = &["readonly", "fast"];
const W: &[&str] = &["write"];
const W_FAST: &[&str] = &["write", "fast"];
const W_OOM: &[&str] = &["write", "denyoom"];
const W_OOM_FAST: &[&str] = &["write", "denyoom", "fast"];
const CONN_FLAGS: &[&str] = &[
    "noscript",
    "loading",
    "stale",
    "fast",
    "no_auth",
    "allow_busy",
];
const TX_FLAGS: &[&str] = &["noscript", "loading", "stale", "fast", "allow_busy"];

const FAST_CONN: &[&str] = &["fast", "connection"];
const STR_R_FAST: &[&str] = &["read", "string", "fast"];
const STR_W_FAST: &[&str] = &["write", "string", "fast"];
const STR_W_SLOW: &[&str] = &["write", "string", "slow"];
const KS_R_FAST: &[&str] = &["keyspace", "read", "fast"];
const KS_W_FAST: &[&str] = &["keyspace", "write", "fast"];
const KS_W_SLOW: &[&str] = &["keyspace", "write", "slow"];
const FAST_TX: &[&str] = &["fast", "transaction"];

/// Every command of the RESP port, the data commands included.
pub static COMMANDS: &[CommandSpec] = &[
    // connection
    cmd("ping", -1, &["fast"], NOKEY, FAST_CONN, &["request_policy:all_shards", "response_policy:all_succeeded"], "connection", "1.0.0", "Returns the server's liveliness response."),
    cmd("echo", 2, &["fast"], NOKEY, FAST_CONN, &[], "connection", "1.0.0", "Returns the given string."),
    cmd("quit", -1, CONN_FLAGS, NOKEY, FAST_CONN, &[], "connection", "1.0.0", "Closes the connection."),
    cmd("select", 2, &["loading", "stale", "fast"], NOKEY, FAST_CONN, &[], "connection", "1.0.0", "Changes the selected database (DKV has database 0 only)."),
    cmd("hello", -1, CONN_FLAGS, NOKEY, FAST_CONN, &[], "connection", "6.0.0", "Handshakes with the server: protocol version (RESP2 or RESP3), authentication, connection name."),
    cmd("auth", -2, CONN_FLAGS, NOKEY, FAST_CONN, &[], "connection", "1.0.0", "Authenticates the connection."),
    cmd("client", -2, &["noscript", "loading", "stale"], NOKEY, &["slow", "connection"], &[], "connection", "2.4.0", "A container for client connection commands (ID, INFO, LIST, SETNAME, GETNAME, SETINFO, NO-EVICT, KILL)."),
    // server
    cmd("command", -1, &["loading", "stale"], NOKEY, &["slow", "connection"], &["nondeterministic_output_order"], "server", "2.8.13", "Returns detailed information about all commands."),
    cmd("info", -1, &["loading", "stale"], NOKEY, &["slow", "dangerous"], &["nondeterministic_output", "request_policy:all_shards", "response_policy:special"], "server", "1.0.0", "Returns information and statistics about the server."),
    cmd("config", -2, &[], NOKEY, &["slow"], &[], "server", "2.0.0", "A container for server configuration commands (GET, RESETSTAT)."),
    cmd("time", 1, &["loading", "stale", "fast"], NOKEY, &["fast"], &["nondeterministic_output"], "server", "2.6.0", "Returns the server time."),
    cmd("role", 1, &["noscript", "loading", "stale", "fast"], NOKEY, &["admin", "fast", "dangerous"], &[], "server", "2.8.12", "Returns the replication role."),
    cmd("dbsize", 1, RO_FAST, NOKEY, KS_R_FAST, &["request_policy:all_shards", "response_policy:agg_sum"], "server", "1.0.0", "Returns the number of keys in the database."),
    cmd("flushall", -1, W, NOKEY, &["keyspace", "write", "slow", "dangerous"], &["request_policy:all_shards", "response_policy:all_succeeded"], "server", "1.0.0", "Removes all keys from all databases."),
    cmd("flushdb", -1, W, NOKEY, &["keyspace", "write", "slow", "dangerous"], &["request_policy:all_shards", "response_policy:all_succeeded"], "server", "1.0.0", "Remove all keys from the current database."),
    // generic
    cmd("wait", 3, &["noscript"], NOKEY, &["slow", "connection"], &["request_policy:all_shards", "response_policy:agg_min"], "generic", "3.0.0", "Returns the number of in-sync replicas; never blocks in DKV (writes are synchronous)."),
    cmd("object", -2, &[], NOKEY, &["slow"], &[], "generic", "2.2.3", "A container for object introspection commands (ENCODING, FREQ, IDLETIME, REFCOUNT)."),
    cmd("del", -2, W, KEYS, KS_W_SLOW, &["request_policy:multi_shard", "response_policy:agg_sum"], "generic", "1.0.0", "Deletes one or more keys."),
    cmd("unlink", -2, W_FAST, KEYS, KS_W_FAST, &["request_policy:multi_shard", "response_policy:agg_sum"], "generic", "4.0.0", "Asynchronously deletes one or more keys."),
    cmd("exists", -2, RO_FAST, KEYS, KS_R_FAST, &["request_policy:multi_shard", "response_policy:agg_sum"], "generic", "1.0.0", "Determines whether one or more keys exist."),
    cmd("expire", -3, W_FAST, KEY1, KS_W_FAST, &[], "generic", "1.0.0", "Sets the expiration time of a key in seconds."),
    cmd("pexpire", -3, W_FAST, KEY1, KS_W_FAST, &[], "generic", "2.6.0", "Sets the expiration time of a key in milliseconds."),
    cmd("expireat", -3, W_FAST, KEY1, KS_W_FAST, &[], "generic", "1.2.0", "Sets the expiration time of a key to a Unix timestamp."),
    cmd("pexpireat", -3, W_FAST, KEY1, KS_W_FAST, &[], "generic", "2.6.0", "Sets the expiration time of a key to a Unix milliseconds timestamp."),
    cmd("ttl", 2, RO_FAST, KEY1, KS_R_FAST, &["nondeterministic_output"], "generic", "1.0.0", "Returns the expiration time in seconds of a key."),
    cmd("pttl", 2, RO_FAST, KEY1, KS_R_FAST, &["nondeterministic_output"], "generic", "2.6.0", "Returns the expiration time in milliseconds of a key."),
    cmd("expiretime", 2, RO_FAST, KEY1, KS_R_FAST, &[], "generic", "7.0.0", "Returns the expiration time of a key as a Unix timestamp."),
    cmd("pexpiretime", 2, RO_FAST, KEY1, KS_R_FAST, &[], "generic", "7.0.0", "Returns the expiration time of a key as a Unix milliseconds timestamp."),
    cmd("persist", 2, W_FAST, KEY1, KS_W_FAST, &[], "generic", "2.2.0", "Removes the expiration time of a key."),
    cmd("scan", -2, &["readonly"], NOKEY, &["keyspace", "read", "slow"], &["nondeterministic_output", "request_policy:special", "response_policy:special"], "generic", "2.8.0", "Iterates over the key names in the database."),
    cmd("keys", 2, &["readonly"], NOKEY, &["keyspace", "read", "slow", "dangerous"], &["request_policy:all_shards", "nondeterministic_output_order"], "generic", "1.0.0", "Returns all key names that match a pattern."),
    cmd("type", 2, RO_FAST, KEY1, KS_R_FAST, &[], "generic", "1.0.0", "Determines the type of value stored at a key."),
    cmd("rename", 3, W, TWO_KEYS, KS_W_SLOW, &[], "generic", "1.0.0", "Renames a key and overwrites the destination."),
    cmd("renamenx", 3, W_FAST, TWO_KEYS, KS_W_FAST, &[], "generic", "1.0.0", "Renames a key only when the target key name doesn't exist."),
    cmd("copy", -3, W_OOM, TWO_KEYS, KS_W_SLOW, &[], "generic", "6.2.0", "Copies the value of a key to a new key."),
    cmd("randomkey", 1, &["readonly"], NOKEY, &["keyspace", "read", "slow"], &["request_policy:all_shards", "nondeterministic_output"], "generic", "1.0.0", "Returns a random key name from the database."),
    // string
    cmd("get", 2, RO_FAST, KEY1, STR_R_FAST, &[], "string", "1.0.0", "Returns the string value of a key."),
    cmd("set", -3, W_OOM, KEY1, STR_W_SLOW, &[], "string", "1.0.0", "Sets the string value of a key, ignoring its type. The key is created if it doesn't exist."),
    cmd("mget", -2, RO_FAST, KEYS, STR_R_FAST, &["request_policy:multi_shard"], "string", "1.0.0", "Atomically returns the string values of one or more keys."),
    cmd("mset", -3, W_OOM, (1, -1, 2), STR_W_SLOW, &["request_policy:multi_shard", "response_policy:all_succeeded"], "string", "1.0.1", "Atomically creates or modifies the string values of one or more keys."),
    cmd("msetnx", -3, W_OOM, (1, -1, 2), STR_W_SLOW, &["request_policy:multi_shard", "response_policy:agg_min"], "string", "1.0.1", "Atomically modifies the string values of one or more keys only when all keys don't exist."),
    cmd("setnx", 3, W_OOM_FAST, KEY1, STR_W_FAST, &[], "string", "1.0.0", "Set the string value of a key only when the key doesn't exist."),
    cmd("setex", 4, W_OOM, KEY1, STR_W_SLOW, &[], "string", "2.0.0", "Sets the string value and expiration time of a key. Creates the key if it doesn't exist."),
    cmd("psetex", 4, W_OOM, KEY1, STR_W_SLOW, &[], "string", "2.6.0", "Sets both string value and expiration time in milliseconds of a key. The key is created if it doesn't exist."),
    cmd("getset", 3, W_OOM_FAST, KEY1, STR_W_FAST, &[], "string", "1.0.0", "Returns the previous string value of a key after setting it to a new value."),
    cmd("getdel", 2, W_FAST, KEY1, STR_W_FAST, &[], "string", "6.2.0", "Returns the string value of a key after deleting the key."),
    cmd("getex", -2, W_FAST, KEY1, STR_W_FAST, &[], "string", "6.2.0", "Returns the string value of a key after setting its expiration time."),
    cmd("incr", 2, W_OOM_FAST, KEY1, STR_W_FAST, &[], "string", "1.0.0", "Increments the integer value of a key by one. Uses 0 as initial value if the key doesn't exist."),
    cmd("decr", 2, W_OOM_FAST, KEY1, STR_W_FAST, &[], "string", "1.0.0", "Decrements the integer value of a key by one. Uses 0 as initial value if the key doesn't exist."),
    cmd("incrby", 3, W_OOM_FAST, KEY1, STR_W_FAST, &[], "string", "1.0.0", "Increments the integer value of a key by a number. Uses 0 as initial value if the key doesn't exist."),
    cmd("decrby", 3, W_OOM_FAST, KEY1, STR_W_FAST, &[], "string", "1.0.0", "Decrements a number from the integer value of a key. Uses 0 as initial value if the key doesn't exist."),
    cmd("incrbyfloat", 3, W_OOM_FAST, KEY1, STR_W_FAST, &[], "string", "2.6.0", "Increment the floating point value of a key by a number. Uses 0 as initial value if the key doesn't exist."),
    cmd("append", 3, W_OOM_FAST, KEY1, STR_W_FAST, &[], "string", "2.0.0", "Appends a string to the value of a key. Creates the key if it doesn't exist."),
    cmd("strlen", 2, RO_FAST, KEY1, STR_R_FAST, &[], "string", "2.2.0", "Returns the length of a string value."),
    cmd("getrange", 4, &["readonly"], KEY1, &["read", "string", "slow"], &[], "string", "2.4.0", "Returns a substring of the string stored at a key."),
    cmd("setrange", 4, W_OOM, KEY1, STR_W_SLOW, &[], "string", "2.2.0", "Overwrites a part of a string value with another by an offset. Creates the key if it doesn't exist."),
    // transactions
    cmd("multi", 1, TX_FLAGS, NOKEY, FAST_TX, &[], "transactions", "1.2.0", "Starts a transaction."),
    cmd("exec", 1, &["noscript", "loading", "stale", "skip_slowlog"], NOKEY, &["slow", "transaction"], &[], "transactions", "1.2.0", "Executes all commands in a transaction."),
    cmd("discard", 1, TX_FLAGS, NOKEY, FAST_TX, &[], "transactions", "2.0.0", "Discards a transaction."),
    cmd("watch", -2, TX_FLAGS, KEYS, FAST_TX, &[], "transactions", "2.2.0", "Monitors changes to keys to determine the execution of a transaction."),
    cmd("unwatch", 1, TX_FLAGS, NOKEY, FAST_TX, &[], "transactions", "2.2.0", "Forgets about watched keys of a transaction."),
];

/// `COMMAND`, `COMMAND COUNT|INFO|DOCS|LIST|GETKEYS|HELP`.
fn command(args: &[Vec<u8>]) -> Reply {
    let Some(sub) = args.get(1) else {
        return Reply::Array(COMMANDS.iter().map(CommandSpec::info).collect());
    };
    let rest = &args[2..];
    match upper(sub).as_str() {
        "COUNT" if rest.is_empty() => Reply::Int(COMMANDS.len() as i64),
        "INFO" if rest.is_empty() => Reply::Array(COMMANDS.iter().map(CommandSpec::info).collect()),
        "INFO" => Reply::Array(
            rest.iter()
                .map(|n| lookup(n).map_or(Reply::Nil, CommandSpec::info))
                .collect(),
        ),
        "DOCS" if rest.is_empty() => Reply::map(COMMANDS.iter().map(|c| (c.name, c.docs()))),
        "DOCS" => Reply::map(
            rest.iter()
                .filter_map(|n| lookup(n))
                .map(|c| (c.name, c.docs())),
        ),
        "LIST" => {
            let keep: Box<dyn Fn(&CommandSpec) -> bool> = match rest {
                [] => Box::new(|_| true),
                [f, how, what] if upper(f) == "FILTERBY" => match upper(how).as_str() {
                    "MODULE" => Box::new(|_| false),
                    "ACLCAT" => {
                        let cat = String::from_utf8_lossy(what).to_ascii_lowercase();
                        Box::new(move |c| c.acl.contains(&cat.as_str()))
                    }
                    "PATTERN" => {
                        let p = what.clone();
                        Box::new(move |c| crate::resp::glob_match(&p, c.name.as_bytes(), true))
                    }
                    _ => return Reply::err("ERR syntax error"),
                },
                _ => return Reply::err("ERR syntax error"),
            };
            Reply::Array(
                COMMANDS
                    .iter()
                    .filter(|c| keep(c))
                    .map(|c| Reply::text(c.name))
                    .collect(),
            )
        }
        "GETKEYS" if !rest.is_empty() => match lookup(&rest[0]) {
            None => Reply::err("ERR Invalid command specified"),
            Some(c) if !c.arity_ok(rest.len()) => {
                Reply::err("ERR Invalid number of arguments specified for command")
            }
            Some(c) => {
                let keys = c.keys(rest);
                if keys.is_empty() {
                    Reply::err("ERR The command has no key arguments")
                } else {
                    Reply::Array(keys.into_iter().map(|k| Reply::Bulk(k.to_vec())).collect())
                }
            }
        },
        "HELP" if rest.is_empty() => Reply::Array(
            [
                "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "(no subcommand)",
                "    Return details about all commands.",
                "COUNT",
                "    Return the total number of commands.",
                "INFO [<command-name> ...]",
                "    Return details about the given commands, or all of them.",
                "DOCS [<command-name> ...]",
                "    Return documentation details about the given commands, or all of them.",
                "LIST [FILTERBY (MODULE <module-name>|ACLCAT <category>|PATTERN <pattern>)]",
                "    Return a list of all commands.",
                "GETKEYS <full-command>",
                "    Return the keys from a full command.",
                "HELP",
                "    Print this help.",
            ]
            .into_iter()
            .map(|l| Reply::Simple(l.into()))
            .collect(),
        ),
        "COUNT" | "GETKEYS" | "HELP" => Reply::err(format!(
            "ERR wrong number of arguments for 'command|{}' command",
            String::from_utf8_lossy(sub).to_ascii_lowercase()
        )),
        _ => unknown_sub("COMMAND", sub),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn the_table_has_every_command_once_with_redis_key_positions() {
        let mut names: Vec<&str> = COMMANDS.iter().map(|c| c.name).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "a command listed twice");
        for c in COMMANDS {
            assert_eq!(c.name, c.name.to_ascii_lowercase());
            assert!(c.arity != 0 && c.step >= 0, "{c:?}");
            assert_eq!(c.first_key == 0, c.last_key == 0, "{c:?}");
        }
        assert!(is_known(b"GeT") && is_known(b"FLUSHDB") && !is_known(b"HGET"));
        let mset = lookup(b"mset").unwrap();
        assert_eq!(
            mset.keys(&a(&["MSET", "a", "1", "b", "2"])),
            vec![&b"a"[..], b"b"]
        );
        assert!(mset.arity_ok(5) && !mset.arity_ok(2));
        assert_eq!(
            lookup(b"get").unwrap().keys(&a(&["GET", "k"])),
            vec![&b"k"[..]]
        );
        assert_eq!(
            lookup(b"rename")
                .unwrap()
                .keys(&a(&["RENAME", "a", "b"]))
                .len(),
            2
        );
    }

    #[test]
    fn command_info_entries_have_redis_7_shape() {
        let Reply::Array(entries) = command(&a(&["COMMAND", "INFO", "get", "nope"])) else {
            panic!()
        };
        assert_eq!(entries[1], Reply::Nil);
        let Reply::Array(get) = &entries[0] else {
            panic!()
        };
        assert_eq!(get.len(), 10);
        assert_eq!(get[0], Reply::text("get"));
        assert_eq!(get[1], Reply::Int(2));
        assert_eq!(
            get[2],
            Reply::Set(vec![
                Reply::Simple("readonly".into()),
                Reply::Simple("fast".into())
            ])
        );
        assert_eq!(
            (&get[3], &get[4], &get[5]),
            (&Reply::Int(1), &Reply::Int(1), &Reply::Int(1))
        );
        let Reply::Set(acl) = &get[6] else { panic!() };
        assert!(acl.contains(&Reply::Simple("@read".into())));
        assert_eq!(
            command(&a(&["COMMAND", "COUNT"])),
            Reply::Int(COMMANDS.len() as i64)
        );
        assert_eq!(
            command(&a(&["COMMAND", "GETKEYS", "MSET", "a", "1", "b", "2"])),
            Reply::Array(vec![Reply::text("a"), Reply::text("b")])
        );
        let Reply::Array(strings) =
            command(&a(&["COMMAND", "LIST", "FILTERBY", "ACLCAT", "string"]))
        else {
            panic!()
        };
        assert!(
            strings.contains(&Reply::text("incrbyfloat")) && !strings.contains(&Reply::text("del"))
        );
        assert!(
            matches!(command(&a(&["COMMAND", "NOPE"])), Reply::Error(e) if e.contains("Try COMMAND HELP"))
        );
    }

    #[test]
    fn object_encoding_follows_redis() {
        assert_eq!(encoding_of(b"12345"), "int");
        assert_eq!(encoding_of(b"-9223372036854775808"), "int");
        assert_eq!(encoding_of(b"007"), "embstr", "not canonical");
        assert_eq!(
            encoding_of(b"99999999999999999999"),
            "embstr",
            "overflows i64"
        );
        assert_eq!(encoding_of(&[b'x'; 44]), "embstr");
        assert_eq!(encoding_of(&[b'x'; 45]), "raw");
    }

    #[test]
    fn client_filters_parse_like_redis() {
        assert!(client_filter(&a(&["TYPE", "normal"])).is_ok());
        assert!(client_filter(&a(&["TYPE", "bogus"])).is_err());
        let f = client_filter(&a(&["ID", "3", "4"])).unwrap();
        assert_eq!(f.ids, Some(vec![3, 4]));
        assert!(client_filter(&a(&["ID", "x"])).is_err());
        assert!(client_filter(&a(&["WHAT"])).is_err());
    }
}
