//! `dkv-node [SERVER_LIST] [--listen HOST:PORT] [--advertise HOST:PORT] [--data-dir DIR] [-c config.json]`

use clap::Parser;
use dkv::config::Config;
use dkv::node::{Node, NodeOptions};
use std::path::PathBuf;
use std::process::ExitCode;

/// A DKV node: holds a full copy of the data; the coordinator serves clients
/// and replicates to the others.
#[derive(Parser)]
#[command(name = "dkv-node", version)]
struct Args {
    /// The server's HOST:PORT, or a comma-separated list of servers
    /// (h1:p1,h2:p2): registration and every server call move to the next
    /// server when one fails. Default: the config's server-ip-port.
    #[arg(value_name = "SERVER_LIST")]
    server: Option<String>,
    /// TCP address for clients and replication (UDP beacons use the same
    /// port when free). Default: an ephemeral port on 127.0.0.1.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:0")]
    listen: String,
    /// Address others use to reach this node, when it differs from --listen.
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// Directory for the node's identity, write-ahead log and snapshots
    /// (overrides the config's data-dir). Without one, data is in memory only.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// When the write-ahead log is forced to disk: always, interval or never
    /// (overrides the config's fsync).
    #[arg(long, value_name = "POLICY")]
    fsync: Option<String>,
    /// Where to serve RESP, the Redis protocol (overrides the config's
    /// resp-listen; "off" turns it off). Default: an ephemeral port on the
    /// --listen address.
    #[arg(long, value_name = "HOST:PORT")]
    resp_listen: Option<String>,
    /// Where to serve Prometheus metrics on GET /metrics (overrides the
    /// config's metrics-listen; "off" turns it off). Default: off.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
    /// Config file; when absent, ./config.json is used if it exists.
    #[arg(short, long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    tls: dkv::cli::TlsArgs,
}

fn main() -> ExitCode {
    // Before any thread exists, so every thread inherits the mask.
    let signals = match dkv::signals::Termination::block() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dkv-node: cannot block SIGTERM/SIGINT: {e}");
            return ExitCode::from(3);
        }
    };
    dkv::init_logging();
    let args = Args::parse();
    let cfg = match &args.config {
        Some(p) => Config::load(p),
        None if std::path::Path::new("config.json").exists() => {
            Config::load(std::path::Path::new("config.json"))
        }
        None => Ok(Config::default()),
    };
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dkv-node: {e}");
            return ExitCode::from(2);
        }
    };
    cfg.log_warnings();
    let mut cfg = cfg;
    args.tls.apply(&mut cfg);
    if let Some(p) = args.fsync {
        cfg.node_settings.fsync = p;
        if let Err(e) = cfg.validate() {
            eprintln!("dkv-node: --fsync: {e}");
            return ExitCode::from(2);
        }
    }
    let listen = match dkv::net::resolve(&args.listen) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("dkv-node: bad --listen address '{}': {e}", args.listen);
            return ExitCode::from(2);
        }
    };
    let resp = args
        .resp_listen
        .clone()
        .or_else(|| cfg.node_settings.resp_listen.clone())
        .unwrap_or_else(|| format!("{}:0", listen.ip()));
    let resp_listen = if resp == "off" {
        None
    } else {
        match dkv::net::resolve(&resp) {
            Ok(a) => Some(a),
            Err(e) => {
                eprintln!("dkv-node: bad --resp-listen address '{resp}': {e}");
                return ExitCode::from(2);
            }
        }
    };
    let metrics = args
        .metrics_listen
        .clone()
        .or_else(|| cfg.node_settings.metrics_listen.clone())
        .filter(|m| m != "off");
    let metrics_listen = match metrics.as_deref().map(dkv::net::resolve).transpose() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("dkv-node: bad --metrics-listen address: {e}");
            return ExitCode::from(2);
        }
    };
    let security = match dkv::auth::Security::from_config(&cfg) {
        Ok(s) => {
            if let Some(t) = s.tls.clone() {
                dkv::signals::on_hangup(move || {
                    log::info!("SIGHUP: reloading the TLS certificates");
                    t.reload(true);
                });
            }
            s
        }
        Err(e) => {
            eprintln!("dkv-node: {e}");
            return ExitCode::from(2);
        }
    };
    let servers = args.server.unwrap_or_else(|| cfg.server_ip_port.clone());
    let server = match dkv::ServerList::parse(&servers) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("dkv-node: bad server address: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = NodeOptions {
        security,
        resp_listen,
        metrics_listen,
        server,
        listen,
        advertise: args.advertise,
        data_dir: args.data_dir,
        settings: cfg.node_settings.clone(),
    };
    match Node::start(opts) {
        Ok(node) => {
            // Scripts and tests read the node's addresses from this line.
            let off = |a: Option<std::net::SocketAddr>| {
                a.map(|a| a.to_string()).unwrap_or_else(|| "off".into())
            };
            println!(
                "dkv-node {} listening on {} beacons {} resp {} metrics {}",
                node.id(),
                node.data_addr(),
                node.beacon_addr(),
                off(node.resp_addr()),
                off(node.metrics_addr())
            );
            let sig = signals.wait();
            log::info!("{sig}: stopping");
            signals.exit_on_second(1);
            node.shutdown();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dkv-node: {e}");
            ExitCode::from(3)
        }
    }
}
