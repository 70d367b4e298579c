//! `dkv-client demo SERVER` and `dkv-client status SERVER [--json]`; SERVER
//! may be a comma-separated list of servers.
//!
//! `status` exits 0 when the cluster is healthy, 1 when it answered but is
//! degraded (the reasons on stderr), 2 on a usage error, 3 when the server
//! cannot be used; with `--json` stdout always holds one JSON document.

use clap::{Parser, Subcommand};
use dkv::cli::exit;
use dkv::wire::ClusterView;
use dkv::{Client, Error, ServerList};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

const STATUS_HELP: &str = "Exit codes: 0 healthy; 1 degraded (a member unreachable, \
fewer in sync than members, no coordinator, or the server recovering; the reasons on \
stderr); 2 usage error; 3 the server could not be used (unreachable, or not a DKV \
server). With --json, stdout holds one JSON document in every case: the status (with \
\"healthy\" and \"problems\"), or {\"error\": \"...\"}.";

const BACKUP_HELP: &str = "Exit codes: 0 written; 2 usage error; 3 the cluster could not \
be used or ended the stream (no coordinator, a failover, the backup fell behind the \
retained log, the file could not be written): nothing is left at FILE, run it again.";

const RESTORE_HELP: &str = "The whole file is verified before anything is written. \
Without --force the cluster must hold no keys. With --force the file's keys overwrite \
the cluster's and the cluster's other keys stay (to replace everything, FLUSHALL \
first). Keys whose deadline has passed are skipped. Exit codes: 0 restored (and, into \
an empty cluster, the cluster's digest equals the backup's); 1 restored but the \
digests differ (another client wrote meanwhile, or keys expired); 2 usage error; 3 the \
cluster could not be used, refused a batch, or holds keys (no --force); 4 a batch's \
outcome is unknown (restore again with --force: batches are idempotent overwrites); \
5 the file is corrupt, truncated or not a backup (nothing was written).";

const VERIFY_HELP: &str = "Exit codes: 0 the file is whole and its digest matches; 3 \
the file could not be read; 5 the file is corrupt, truncated or not a backup (the \
offset and the problem on stderr).";

/// Exit code of backup, restore and verify for a bad backup file.
const BAD_FILE: u8 = 5;

/// DKV test and operations client.
#[derive(Parser)]
#[command(name = "dkv-client", version)]
struct Args {
    /// The cluster's client password, when it has one. Prefer the
    /// DKV_PASSWORD environment variable: ps shows command lines.
    #[arg(long, global = true, value_name = "PASS")]
    password: Option<String>,
    /// How long one operation may take in all (connecting, retries, every
    /// wait for an answer); for status, the whole command. Default 5000
    /// (probe: 2000 per write).
    #[arg(long, global = true, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout: Option<u64>,
    #[command(flatten)]
    tls: dkv::cli::ClientTlsArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Client options carrying the password from --password or DKV_PASSWORD
/// and the --timeout (or `default_ms`).
fn options(
    (password, tls): &(Option<Vec<u8>>, Option<dkv::tls::ClientTls>),
    timeout: Option<u64>,
    default_ms: u64,
) -> dkv::ClientOptions {
    let t = Duration::from_millis(timeout.unwrap_or(default_ms));
    dkv::ClientOptions {
        password: password.clone(),
        tls: tls.clone(),
        op_timeout: t,
        io_timeout: t,
        ..Default::default()
    }
}

/// The server list argument, or the usage error's sentence.
fn server_list(arg: &str) -> Result<Arc<ServerList>, String> {
    ServerList::parse(arg)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a scripted write / read / delete sequence and check every answer.
    Demo {
        /// The server's HOST:PORT, or a comma-separated list of servers
        /// (h1:p1,h2:p2): when one fails the client tries the next.
        server: String,
        /// Number of keys to write.
        #[arg(long, default_value_t = 10)]
        keys: usize,
        /// Prefix of the keys written.
        #[arg(long, default_value = "demo")]
        prefix: String,
    },
    /// Write one key in a tight loop and report the longest time between two
    /// successful writes: run it across a failover to measure unavailability.
    Probe {
        /// The server's HOST:PORT, or a comma-separated list of servers
        /// (h1:p1,h2:p2): when one fails the client tries the next.
        server: String,
        /// How long to run, in seconds.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Key to write.
        #[arg(long, default_value = "probe")]
        key: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Closed-loop load: N clients doing reads and writes; prints throughput
    /// and latency percentiles.
    Bench {
        /// The server's HOST:PORT or a comma-separated list of servers
        /// (native), or a RESP endpoint (resp, resp-wait).
        server: String,
        /// What to drive: native (DKV through the server), resp (any RESP
        /// endpoint: a DKV node or Redis), resp-wait (SET then WAIT N: Redis
        /// with synchronous replication), etcd (an etcd v3 JSON gateway).
        #[arg(long, default_value = "native")]
        target: String,
        /// For resp-wait: how many replicas WAIT waits for.
        #[arg(long, default_value_t = 2)]
        wait: u32,
        /// Concurrent clients, one connection and thread each.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Seconds to measure (after warm-up).
        #[arg(long, conflicts_with = "ops")]
        duration: Option<f64>,
        /// Total ops to measure instead of a duration.
        #[arg(long)]
        ops: Option<u64>,
        /// Size of the key space.
        #[arg(long, default_value_t = 100_000)]
        keys: u64,
        /// Bytes per value written.
        #[arg(long, default_value_t = 16)]
        value_size: usize,
        /// Share of reads, from 0 (write-only) to 1 (read-only).
        #[arg(long, default_value_t = 0.0)]
        read_ratio: f64,
        /// Seconds of load before measuring.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Load a dataset: write each of the --keys keys once, then stop.
        #[arg(long)]
        fill: bool,
    },
    /// Write a consistent backup of the whole cluster to FILE while writes go
    /// on: every key with its value and deadline exactly as of one committed
    /// log position, with that position, the key count and the digest.
    #[command(after_help = BACKUP_HELP)]
    Backup {
        /// The server's HOST:PORT, or a comma-separated list of servers.
        server: String,
        /// The backup file (written as FILE.partial, then renamed).
        file: std::path::PathBuf,
        /// No progress output.
        #[arg(long)]
        quiet: bool,
    },
    /// Load a backup FILE into an empty cluster through the replicated write
    /// path (every replica gets it); the file is verified first.
    #[command(after_help = RESTORE_HELP)]
    Restore {
        /// The server's HOST:PORT, or a comma-separated list of servers.
        server: String,
        /// The backup file.
        file: std::path::PathBuf,
        /// Restore into a cluster that holds keys: the file's keys overwrite
        /// the cluster's, every other key stays (nothing is flushed).
        #[arg(long)]
        force: bool,
        /// No progress output.
        #[arg(long)]
        quiet: bool,
    },
    /// Check a backup FILE (records, checksums, key count, digest) and print
    /// its position, keys and bytes.
    #[command(after_help = VERIFY_HELP)]
    Verify {
        /// The backup file.
        file: std::path::PathBuf,
    },
    /// Print the cluster view: epoch, coordinator, and every member's role,
    /// in-sync flag, log position and digest (asked from each node directly).
    #[command(after_help = STATUS_HELP)]
    Status {
        /// The server's HOST:PORT, or a comma-separated list of servers
        /// (h1:p1,h2:p2): when one fails the client tries the next.
        server: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the cluster's members, or remove one.
    #[command(subcommand)]
    Member(MemberCmd),
    /// Move the coordinator role to another in-sync member without stopping
    /// anything (a planned handoff): writes pause for milliseconds, none is
    /// lost or left with an unknown outcome.
    Failover {
        /// The server's HOST:PORT, or a comma-separated list of servers.
        server: String,
        /// The member to hand over to (default: the most up-to-date
        /// in-sync replica).
        #[arg(long)]
        to: Option<dkv::types::NodeId>,
    },
}

#[derive(Subcommand)]
enum MemberCmd {
    /// Every member: id, role, in sync or not, addresses, when last heard of.
    List {
        /// The server's HOST:PORT, or a comma-separated list of servers.
        server: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a member that is neither the coordinator nor in the in-sync
    /// set (stop it first: it leaves the in-sync set within failure-timeout).
    /// It stops counting toward majority-threshold, and a node that comes
    /// back with its id is refused.
    Remove {
        /// The server's HOST:PORT, or a comma-separated list of servers.
        server: String,
        /// The member's node id (see `member list`).
        id: dkv::types::NodeId,
    },
}

fn main() -> ExitCode {
    dkv::cli::restore_sigpipe();
    dkv::init_logging_quiet();
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // A usage error of `status --json` still writes a JSON document.
            let usage_error = !matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            );
            if usage_error && std::env::args().any(|a| a == "--json") {
                let rendered = e.to_string();
                let first = rendered.lines().next().unwrap_or_default();
                let text = first.trim_start_matches("error: ").to_string();
                println!("{}", serde_json::json!({ "error": text }));
            }
            e.exit();
        }
    };
    let tls = match args.tls.load() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("dkv-client: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let pw = (dkv::auth::client_password(args.password), tls);
    let timeout = args.timeout;
    let res = match args.cmd {
        Cmd::Demo {
            server,
            keys,
            prefix,
        } => match server_list(&server) {
            Ok(list) => demo(list, options(&pw, timeout, 5000), keys, &prefix),
            Err(e) => return usage(&e),
        },
        Cmd::Backup {
            server,
            file,
            quiet,
        } => match server_list(&server) {
            Ok(list) => return backup(list, options(&pw, timeout, 30_000), &file, quiet),
            Err(e) => return usage(&e),
        },
        Cmd::Restore {
            server,
            file,
            force,
            quiet,
        } => match server_list(&server) {
            Ok(list) => return restore(list, options(&pw, timeout, 30_000), &file, force, quiet),
            Err(e) => return usage(&e),
        },
        Cmd::Verify { file } => return verify(&file),
        Cmd::Status { server, json } => return status(&server, options(&pw, timeout, 5000), json),
        Cmd::Bench {
            server,
            target,
            wait,
            clients,
            duration,
            ops,
            keys,
            value_size,
            read_ratio,
            warmup,
            json,
            fill,
        } => {
            if !(0.0..=1.0).contains(&read_ratio) || clients == 0 {
                eprintln!("dkv-client: --read-ratio must be in [0, 1] and --clients at least 1");
                return ExitCode::from(exit::USAGE);
            }
            let cfg = dkv::bench::BenchConfig {
                clients,
                duration: Some(std::time::Duration::from_secs_f64(duration.unwrap_or(10.0)))
                    .filter(|_| ops.is_none()),
                ops,
                keys,
                value_size,
                read_ratio,
                warmup: std::time::Duration::from_secs_f64(warmup),
                progress: !json,
                fill,
            };
            let res = match target.as_str() {
                "native" => dkv::bench::run(&cfg, |_| {
                    dkv::bench::NativeTarget::connect(&server, pw.0.clone(), pw.1.clone())
                        .map_err(|e| e.to_string())
                }),
                "resp" => dkv::bench::run(&cfg, |_| {
                    dkv::bench::RespTarget::connect(&server, None, pw.1.as_ref())
                }),
                "resp-wait" => dkv::bench::run(&cfg, |_| {
                    dkv::bench::RespTarget::connect(&server, Some(wait), pw.1.as_ref())
                }),
                "etcd" => dkv::bench::run(&cfg, |_| dkv::bench::EtcdTarget::connect(&server)),
                other => {
                    eprintln!(
                        "dkv-client: --target must be native, resp, resp-wait or etcd, not '{other}'"
                    );
                    return ExitCode::from(exit::USAGE);
                }
            };
            match res {
                Ok(r) => {
                    if json {
                        println!("{}", r.to_json());
                    } else {
                        r.print();
                    }
                    Ok(())
                }
                Err(e) => Err(Error::Unavailable(e)),
            }
        }
        Cmd::Probe {
            server,
            duration,
            key,
            json,
        } => match server_list(&server) {
            Ok(list) => probe(list, options(&pw, timeout, 2000), duration, &key, json),
            Err(e) => return usage(&e),
        },
        Cmd::Failover { server, to } => match server_list(&server) {
            Ok(list) => failover(list, options(&pw, timeout, 5000), to),
            Err(e) => return usage(&e),
        },
        Cmd::Member(cmd) => {
            let server = match &cmd {
                MemberCmd::List { server, .. } | MemberCmd::Remove { server, .. } => server.clone(),
            };
            return match server_list(&server) {
                Ok(list) => member(list, options(&pw, timeout, 5000), cmd),
                Err(e) => usage(&e),
            };
        }
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dkv-client: {e}");
            ExitCode::from(match e {
                Error::Indeterminate(_) => exit::UNKNOWN,
                // A malformed server list.
                Error::Config(_) => exit::USAGE,
                _ => exit::FAILED,
            })
        }
    }
}

/// The exit code and sentence for a failed backup, restore or verify.
fn backup_failed(e: &dkv::backup::BackupError) -> ExitCode {
    use dkv::backup::BackupError;
    eprintln!("dkv-client: {e}");
    ExitCode::from(match e {
        BackupError::BadFile(_) => BAD_FILE,
        BackupError::Cluster(Error::Indeterminate(_)) => exit::UNKNOWN,
        BackupError::Cluster(Error::Config(_)) => exit::USAGE,
        _ => exit::FAILED,
    })
}

fn backup(
    server: Arc<ServerList>,
    opts: dkv::ClientOptions,
    file: &std::path::Path,
    quiet: bool,
) -> ExitCode {
    let start = Instant::now();
    let res = Client::with_servers(server, opts)
        .map_err(dkv::backup::BackupError::from)
        .and_then(|mut c| dkv::backup::take(&mut c, file, quiet));
    match res {
        Ok(t) => {
            println!(
                "backup {}: position {}, {} keys, {} bytes, digest {:#018x} \
                 (copied from {} and repaired with {} log entries) in {:.2} s",
                file.display(),
                t.info.position,
                t.info.keys,
                t.info.bytes,
                t.info.digest,
                t.start,
                t.entries,
                start.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => backup_failed(&e),
    }
}

fn restore(
    server: Arc<ServerList>,
    opts: dkv::ClientOptions,
    file: &std::path::Path,
    force: bool,
    quiet: bool,
) -> ExitCode {
    let start = Instant::now();
    let res = Client::with_servers(server, opts)
        .map_err(dkv::backup::BackupError::from)
        .and_then(|mut c| dkv::backup::restore(&mut c, file, force, quiet));
    let r = match res {
        Ok(r) => r,
        Err(e) => return backup_failed(&e),
    };
    println!(
        "restored {}: {} keys written in {} batches, {} skipped (deadline passed), from \
         position {} in {:.2} s",
        file.display(),
        r.written,
        r.batches,
        r.skipped_expired,
        r.info.position,
        start.elapsed().as_secs_f64()
    );
    if !r.was_empty {
        println!("digest not compared: the cluster held keys before the restore (--force)");
        return ExitCode::SUCCESS;
    }
    let what = if r.skipped_expired == 0 {
        "the backup's digest"
    } else {
        "the digest of the keys written"
    };
    if r.cluster_digest == r.expected_digest && r.cluster_keys == r.written {
        println!(
            "cluster digest {:#018x} with {} keys equals {what}",
            r.cluster_digest, r.cluster_keys
        );
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "dkv-client: the cluster's digest {:#018x} with {} keys differs from {what} \
             {:#018x} with {} keys (another client wrote, or keys expired, during the restore)",
            r.cluster_digest, r.cluster_keys, r.expected_digest, r.written
        );
        ExitCode::from(exit::DEGRADED)
    }
}

fn verify(file: &std::path::Path) -> ExitCode {
    match dkv::backup::read(file, |_| Ok(())) {
        Ok(i) => {
            println!(
                "{}: OK: position {}, {} keys, {} bytes ({} of keys and values), digest {:#018x}",
                file.display(),
                i.position,
                i.keys,
                i.bytes,
                i.data_bytes,
                i.digest
            );
            ExitCode::SUCCESS
        }
        Err(e) => backup_failed(&e),
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("dkv-client: {msg}");
    ExitCode::from(exit::USAGE)
}

fn demo(
    server: Arc<ServerList>,
    opts: dkv::ClientOptions,
    keys: usize,
    prefix: &str,
) -> Result<(), Error> {
    let mut c = Client::with_servers(server, opts)?;
    println!("writing {keys} keys");
    for i in 0..keys {
        let (k, v) = (format!("{prefix}-{i}"), format!("value-{i}"));
        c.put(k.as_bytes(), v.as_bytes())?;
        println!("  W {k} = {v}");
    }
    println!("reading them back");
    for i in 0..keys {
        let k = format!("{prefix}-{i}");
        let got = c.get(k.as_bytes())?;
        let want = format!("value-{i}");
        if got.as_deref() != Some(want.as_bytes()) {
            return Err(Error::Protocol(format!(
                "read {k}: expected '{want}', got {}",
                got.map(|v| format!("'{}'", dkv::cli::escape(&v)))
                    .unwrap_or_else(|| "no value".into())
            )));
        }
        println!("  R {k} -> {want}");
    }
    println!("deleting the even keys");
    for i in (0..keys).step_by(2) {
        let k = format!("{prefix}-{i}");
        if !c.delete(k.as_bytes())? {
            return Err(Error::Protocol(format!("delete {k}: key did not exist")));
        }
        if c.get(k.as_bytes())?.is_some() {
            return Err(Error::Protocol(format!("{k} still readable after delete")));
        }
        println!("  D {k}");
    }
    println!("demo ok");
    Ok(())
}

fn probe(
    server: Arc<ServerList>,
    opts: dkv::ClientOptions,
    duration: f64,
    key: &str,
    json: bool,
) -> Result<(), Error> {
    let mut c = Client::with_servers(server, opts)?;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(duration);
    let (mut ok, mut failed, mut unknown) = (0u64, 0u64, 0u64);
    let mut last_ok = start;
    let mut worst = (Duration::ZERO, 0.0f64);
    let mut last_value = None;
    let mut i = 0u64;
    while Instant::now() < end {
        i += 1;
        let v = i.to_string();
        match c.put(key.as_bytes(), v.as_bytes()) {
            Ok(()) => {
                let now = Instant::now();
                let gap = now - last_ok;
                if gap > worst.0 {
                    worst = (gap, (last_ok - start).as_secs_f64());
                }
                last_ok = now;
                ok += 1;
                last_value = Some(v);
            }
            Err(Error::Indeterminate(_)) => unknown += 1,
            Err(_) => failed += 1,
        }
    }
    // The last acknowledged value must be what the cluster holds now.
    let held = c.get(key.as_bytes())?;
    let consistent = held.as_deref() == last_value.as_deref().map(str::as_bytes) || unknown > 0; // a later write of unknown outcome may have landed
    if json {
        println!(
            "{}",
            serde_json::json!({
                "writes_ok": ok,
                "writes_failed": failed,
                "writes_unknown": unknown,
                "max_gap_ms": worst.0.as_secs_f64() * 1000.0,
                "max_gap_at_s": worst.1,
                "last_ack_reads_back": consistent,
            })
        );
    } else {
        println!(
            "{ok} writes acknowledged, {failed} failed, {unknown} of unknown outcome; \
             longest gap between acknowledged writes: {:.1} ms (starting at {:.3} s); \
             last acknowledged value reads back: {}",
            worst.0.as_secs_f64() * 1000.0,
            worst.1,
            if consistent { "yes" } else { "NO" }
        );
    }
    if !consistent {
        return Err(Error::Protocol(format!(
            "the last acknowledged value '{}' does not read back (got {})",
            last_value.unwrap_or_default(),
            held.map(|v| format!("'{}'", dkv::cli::escape(&v)))
                .unwrap_or_else(|| "no value".into())
        )));
    }
    Ok(())
}

struct Row {
    id: u64,
    address: String,
    role: String,
    in_sync: bool,
    log_epoch: u64,
    log_position: u64,
    digest: u64,
    keys: Option<u64>,
    reachable: bool,
    auth: Option<dkv::wire::AuthStats>,
    memory: Option<(u64, u64)>,
    /// Why the member did not answer.
    why: Option<String>,
    /// How long ago the coordinator last reported hearing from it (as the
    /// server counts); `None`: not since the server started.
    last_heard_ms: Option<u64>,
}

/// Every member's row, asking the members at once, all before `deadline`.
fn rows(c: &Client, view: &ClusterView, deadline: Instant) -> Vec<Row> {
    let answers: Vec<_> = std::thread::scope(|s| {
        let asks: Vec<_> = view
            .members
            .iter()
            .map(|m| s.spawn(move || c.node_status_before(&m.data_addr, deadline)))
            .collect();
        asks.into_iter()
            .map(|a| a.join().expect("status thread"))
            .collect()
    });
    view.members
        .iter()
        .zip(answers)
        .map(|(m, answer)| {
            let unreachable = |why: String| Row {
                id: m.node_id,
                address: m.data_addr.clone(),
                role: "unreachable".into(),
                in_sync: m.in_sync,
                log_epoch: 0,
                log_position: 0,
                digest: 0,
                keys: None,
                reachable: false,
                auth: None,
                memory: None,
                why: Some(why),
                last_heard_ms: m.last_status_ms,
            };
            match answer {
                // Its address answers as another node: a node restarted
                // there without its data directory, under a new id.
                Ok(st) if st.node_id != m.node_id => {
                    unreachable(format!("its address now answers as node {}", st.node_id))
                }
                Ok(st) => Row {
                    id: m.node_id,
                    address: m.data_addr.clone(),
                    role: st.role.to_string(),
                    in_sync: m.in_sync,
                    log_epoch: st.applied.epoch,
                    log_position: st.applied.index,
                    digest: st.digest,
                    keys: Some(st.keys),
                    reachable: true,
                    auth: Some(st.auth),
                    memory: Some((st.used_memory, st.max_memory)),
                    why: None,
                    last_heard_ms: m.last_status_ms,
                },
                Err(e) => unreachable(e.to_string()),
            }
        })
        .collect()
}

/// What keeps the cluster from being healthy, one sentence each.
fn problems(view: &ClusterView, rows: &[Row]) -> Vec<String> {
    let mut p = Vec::new();
    if view.coordinator.is_none() {
        p.push(format!("no coordinator (epoch {})", view.epoch));
    }
    if let Some(why) = &view.recovery {
        p.push(format!("the server is recovering its view: {why}"));
    }
    for r in rows.iter().filter(|r| !r.reachable) {
        p.push(format!(
            "member {} ({}) is unreachable ({}): {}",
            r.id,
            r.address,
            last_heard(r.last_heard_ms),
            r.why.as_deref().unwrap_or("no answer")
        ));
    }
    if view.isr.len() < view.members.len() {
        let ids: Vec<String> = view.isr.iter().map(|i| i.to_string()).collect();
        p.push(format!(
            "only {} of {} members are in sync (in sync: {})",
            view.isr.len(),
            view.members.len(),
            if ids.is_empty() {
                "none".into()
            } else {
                ids.join(", ")
            }
        ));
    }
    p
}

/// When the cluster last heard from a member, as people read it.
fn last_heard(ms: Option<u64>) -> String {
    match ms {
        Some(ms) if ms < 1000 => format!("last heard {ms} ms ago"),
        Some(ms) if ms < 120_000 => format!("last heard {:.1} s ago", ms as f64 / 1000.0),
        Some(ms) => format!("last heard {} min ago", ms / 60_000),
        None => "not heard from since the server started".into(),
    }
}

/// `dkv-client status`: see the module doc for its exit codes.
fn status(server: &str, opts: dkv::ClientOptions, json: bool) -> ExitCode {
    let fail = |code: u8, msg: String| {
        if json {
            println!("{}", serde_json::json!({ "error": msg }));
        }
        eprintln!("dkv-client: {msg}");
        ExitCode::from(code)
    };
    let list = match server_list(server) {
        Ok(l) => l,
        Err(e) => return fail(exit::USAGE, e),
    };
    let deadline = Instant::now() + opts.op_timeout;
    let view = Client::with_servers(list, opts).and_then(|c| {
        let view = c.cluster_view_before(deadline)?;
        Ok((c, view))
    });
    let (c, view) = match view {
        Ok(v) => v,
        Err(e) => return fail(exit::FAILED, e.to_string()),
    };
    let rows = rows(&c, &view, deadline);
    let problems = problems(&view, &rows);
    show_status(&view, rows, json, &problems);
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "dkv-client: the cluster is degraded: {}",
            problems.join("; ")
        );
        ExitCode::from(exit::DEGRADED)
    }
}

fn show_status(view: &ClusterView, rows: Vec<Row>, json: bool, problems: &[String]) {
    if json {
        let members: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.id,
                    "address": r.address,
                    "role": r.role,
                    "in_sync": r.in_sync,
                    "log_position": r.reachable.then_some(r.log_position),
                    "log_epoch": r.reachable.then_some(r.log_epoch),
                    "digest": r.reachable.then(|| format!("{:016x}", r.digest)),
                    "last_heard_ms": r.last_heard_ms,
                    "keys": r.keys,
                    "reachable": r.reachable,
                    "used_memory": r.memory.map(|m| m.0),
                    "max_memory": r.memory.map(|m| m.1),
                    "forged_beacons": r.auth.map(|a| a.forged_beacons),
                    "replayed_beacons": r.auth.map(|a| a.replayed_beacons),
                    "rejected_peers": r.auth.map(|a| a.rejected_peers),
                    "failed_client_auth": r.auth.map(|a| a.failed_client_auth),
                })
            })
            .collect();
        let out = serde_json::json!({
            "epoch": view.epoch,
            "coordinator": view.coordinator,
            "isr": view.isr,
            "cluster_secret": view.auth.cluster_secret,
            "server_rejected_peers": view.auth.rejected_peers,
            "server_failed_client_auth": view.auth.failed_client_auth,
            "recovery": view.recovery,
            "healthy": problems.is_empty(),
            "problems": problems,
            "members": members,
        });
        println!("{}", serde_json::to_string_pretty(&out).expect("json"));
        return;
    }
    println!(
        "epoch {}  coordinator {}  in sync {}",
        view.epoch,
        view.coordinator
            .map(|c| c.to_string())
            .unwrap_or_else(|| "none".into()),
        dkv::types::fmt_ids(&view.isr)
    );
    if let Some(why) = &view.recovery {
        println!("RECOVERING: the server grants nothing until it can: {why}");
    }
    println!(
        "cluster secret {}  server refused: {} peers, {} client logins",
        if view.auth.cluster_secret {
            "set"
        } else {
            "NOT SET (open cluster)"
        },
        view.auth.rejected_peers,
        view.auth.failed_client_auth
    );
    println!(
        "{:<4} {:<22} {:<12} {:<8} {:<14} {:<17} {:<9} REFUSED (forged/replayed/peers/logins)",
        "ID", "ADDRESS", "ROLE", "IN-SYNC", "LOG-POSITION", "DIGEST", "KEYS"
    );
    for r in rows {
        if !r.reachable {
            // No figures it did not give: when it was last heard, and why
            // it does not answer.
            println!(
                "{:<4} {:<22} {:<12} {:<8} {}: {}",
                r.id,
                r.address,
                r.role,
                if r.in_sync { "yes" } else { "no" },
                last_heard(r.last_heard_ms),
                r.why.as_deref().unwrap_or("no answer")
            );
            continue;
        }
        println!(
            "{:<4} {:<22} {:<12} {:<8} {:<14} {:<17} {:<9} {}",
            r.id,
            r.address,
            r.role,
            if r.in_sync { "yes" } else { "no" },
            format!("{}.{}", r.log_epoch, r.log_position),
            format!("{:016x}", r.digest),
            r.keys.map(|k| k.to_string()).unwrap_or_else(|| "-".into()),
            r.auth
                .map(|a| format!(
                    "{}/{}/{}/{}",
                    a.forged_beacons, a.replayed_beacons, a.rejected_peers, a.failed_client_auth
                ))
                .unwrap_or_else(|| "-".into())
        );
    }
}

/// `member list` and `member remove`: 0 done, 1 refused or failed.
fn member(server: Arc<ServerList>, opts: dkv::ClientOptions, cmd: MemberCmd) -> ExitCode {
    match member_run(server, opts, cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dkv-client: {e}");
            ExitCode::from(exit::FAILED)
        }
    }
}

fn member_run(
    server: Arc<ServerList>,
    opts: dkv::ClientOptions,
    cmd: MemberCmd,
) -> Result<(), String> {
    let c = Client::with_servers(server, opts).map_err(|e| e.to_string())?;
    match cmd {
        MemberCmd::List { json, .. } => {
            let v = c.cluster_view().map_err(|e| e.to_string())?;
            if json {
                let members: Vec<_> = v
                    .members
                    .iter()
                    .map(|m| {
                        serde_json::json!({
                            "id": m.node_id,
                            "role": m.role.to_string(),
                            "in_sync": m.in_sync,
                            "data_addr": m.data_addr,
                            "resp_addr": m.resp_addr,
                            "last_heard_ms": m.last_status_ms,
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({ "epoch": v.epoch, "coordinator": v.coordinator, "members": members })
                );
                return Ok(());
            }
            println!(
                "{:<4} {:<12} {:<8} {:<22} {:<22} last heard",
                "id", "role", "in sync", "data address", "RESP address"
            );
            for m in &v.members {
                println!(
                    "{:<4} {:<12} {:<8} {:<22} {:<22} {}",
                    m.node_id,
                    m.role.to_string(),
                    if m.in_sync { "yes" } else { "no" },
                    m.data_addr,
                    m.resp_addr.as_deref().unwrap_or("-"),
                    last_heard(m.last_status_ms).trim_start_matches("last heard "),
                );
            }
            Ok(())
        }
        MemberCmd::Remove { id, .. } => {
            let v = c.remove_member(id).map_err(|e| match e {
                Error::Refused(why) => format!("cannot remove node {id}: {why}"),
                e => e.to_string(),
            })?;
            println!(
                "removed node {id}; members now {} (in sync {})",
                dkv::types::fmt_ids(v.members.iter().map(|m| &m.node_id)),
                dkv::types::fmt_ids(&v.isr)
            );
            Ok(())
        }
    }
}

/// `failover`: hands the coordinator role over and says to whom.
fn failover(
    server: Arc<ServerList>,
    opts: dkv::ClientOptions,
    to: Option<dkv::types::NodeId>,
) -> Result<(), Error> {
    let mut c = Client::with_servers(server, opts)?;
    let before = c.cluster_view()?;
    let start = Instant::now();
    let after = c.failover(to)?;
    println!(
        "coordinator {} (epoch {}) handed over to {} (epoch {}) in {} ms",
        dkv::types::fmt_coordinator(before.coordinator),
        before.epoch,
        dkv::types::fmt_coordinator(after.coordinator),
        after.epoch,
        start.elapsed().as_millis()
    );
    Ok(())
}
