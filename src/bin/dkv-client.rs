//! `dkv-client demo SERVER` and `dkv-client status SERVER [--json]`.

use clap::{Parser, Subcommand};
use dkv::cli::exit;
use dkv::wire::ClusterView;
use dkv::{Client, Error};
use std::process::ExitCode;

/// DKV test and operations client.
#[derive(Parser)]
#[command(name = "dkv-client", version)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a scripted write / read / delete sequence and check every answer.
    Demo {
        /// The server's HOST:PORT.
        server: String,
        /// Number of keys to write.
        #[arg(long, default_value_t = 10)]
        keys: usize,
        /// Prefix of the keys written.
        #[arg(long, default_value = "demo")]
        prefix: String,
    },
    /// Print the cluster view: epoch, coordinator, and every member's role,
    /// in-sync flag, log position and digest (asked from each node directly).
    Status {
        /// The server's HOST:PORT.
        server: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    dkv::init_logging_quiet();
    let args = Args::parse();
    let res = match args.cmd {
        Cmd::Demo {
            server,
            keys,
            prefix,
        } => demo(&server, keys, &prefix),
        Cmd::Status { server, json } => status(&server, json),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dkv-client: {e}");
            ExitCode::from(match e {
                Error::Indeterminate(_) => exit::UNKNOWN,
                _ => exit::FAILED,
            })
        }
    }
}

fn demo(server: &str, keys: usize, prefix: &str) -> Result<(), Error> {
    let mut c = Client::connect(server)?;
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
                "read {k}: expected {want}, got {:?}",
                got.map(|v| String::from_utf8_lossy(&v).into_owned())
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
}

fn rows(c: &Client, view: &ClusterView) -> Vec<Row> {
    view.members
        .iter()
        .map(|m| match c.node_status(&m.data_addr) {
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
            },
            Err(_) => Row {
                id: m.node_id,
                address: m.data_addr.clone(),
                role: "unreachable".into(),
                in_sync: m.in_sync,
                log_epoch: m.log_position.epoch,
                log_position: m.log_position.index,
                digest: m.digest,
                keys: None,
                reachable: false,
            },
        })
        .collect()
}

fn status(server: &str, json: bool) -> Result<(), Error> {
    let c = Client::connect(server)?;
    let view = c.cluster_view()?;
    let rows = rows(&c, &view);
    if json {
        let members: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.id,
                    "address": r.address,
                    "role": r.role,
                    "in_sync": r.in_sync,
                    "log_position": r.log_position,
                    "log_epoch": r.log_epoch,
                    "digest": format!("{:016x}", r.digest),
                    "keys": r.keys,
                    "reachable": r.reachable,
                })
            })
            .collect();
        let out = serde_json::json!({
            "epoch": view.epoch,
            "coordinator": view.coordinator,
            "isr": view.isr,
            "members": members,
        });
        println!("{}", serde_json::to_string_pretty(&out).expect("json"));
        return Ok(());
    }
    println!(
        "epoch {}  coordinator {}  in sync {:?}",
        view.epoch,
        view.coordinator
            .map(|c| c.to_string())
            .unwrap_or_else(|| "none".into()),
        view.isr
    );
    println!(
        "{:<4} {:<22} {:<12} {:<8} {:<14} {:<17} KEYS",
        "ID", "ADDRESS", "ROLE", "IN-SYNC", "LOG-POSITION", "DIGEST"
    );
    for r in rows {
        println!(
            "{:<4} {:<22} {:<12} {:<8} {:<14} {:<17} {}",
            r.id,
            r.address,
            r.role,
            if r.in_sync { "yes" } else { "no" },
            format!("{}.{}", r.log_epoch, r.log_position),
            format!("{:016x}", r.digest),
            r.keys.map(|k| k.to_string()).unwrap_or_else(|| "-".into())
        );
    }
    Ok(())
}
