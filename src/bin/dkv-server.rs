//! `dkv-server -c config.json [--listen HOST:PORT] [--state-file PATH] [--recover-from-nodes]`

use clap::Parser;
use dkv::config::Config;
use dkv::server::{Server, ServerOptions};
use std::path::PathBuf;
use std::process::ExitCode;

/// DKV registry and arbiter: nodes register here, clients ask it for the
/// coordinator, and it grants every coordinator epoch.
#[derive(Parser)]
#[command(name = "dkv-server", version)]
struct Args {
    /// Config file (JSON, see README).
    #[arg(short, long, default_value = "config.json")]
    config: PathBuf,
    /// Listen address; defaults to the config's server-ip-port (required
    /// when that key lists several servers).
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Where to keep the cluster view across restarts; defaults to the
    /// config's server-state-file (itself dkv-server-state.json by default).
    #[arg(long, value_name = "PATH")]
    state_file: Option<PathBuf>,
    /// When this server lost its state and the nodes' reports cannot prove
    /// which of them holds every acknowledged write (the last coordinator
    /// is gone), appoint the most complete reporting node. Writes
    /// acknowledged only by nodes that do not report may be lost.
    #[arg(long)]
    recover_from_nodes: bool,
    /// HA registry: keep the cluster view in etcd (3.4+, its v3 JSON
    /// gateway), shared by every server given the same endpoints and
    /// prefix, e.g. http://h1:2379,http://h2:2379,http://h3:2379. Defaults
    /// to the config's etcd-endpoints, else the state file is used.
    #[arg(long, value_name = "URLS")]
    etcd_endpoints: Option<String>,
    /// Key prefix in etcd; defaults to the config's etcd-prefix, else
    /// /dkv/<cluster-name>/.
    #[arg(long, value_name = "PREFIX")]
    etcd_prefix: Option<String>,
    /// Where to answer Sentinel discovery commands (RESP), e.g.
    /// 127.0.0.1:26379; defaults to the config's sentinel-listen, else off.
    #[arg(long, value_name = "HOST:PORT")]
    sentinel_listen: Option<String>,
    /// Where to serve Prometheus metrics on GET /metrics, e.g.
    /// 127.0.0.1:9101; defaults to the config's metrics-listen, else off.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
    #[command(flatten)]
    tls: dkv::cli::TlsArgs,
}

fn main() -> ExitCode {
    // Before any thread exists, so every thread inherits the mask.
    let signals = match dkv::signals::Termination::block() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dkv-server: cannot block SIGTERM/SIGINT: {e}");
            return ExitCode::from(3);
        }
    };
    dkv::init_logging();
    let args = Args::parse();
    let mut cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dkv-server: {e}");
            return ExitCode::from(2);
        }
    };
    args.tls.apply(&mut cfg);
    cfg.log_warnings();
    let listen = match args.listen {
        Some(l) => l,
        // Config::load checked that server-ip-port is a valid list.
        None => match dkv::ServerList::parse(&cfg.server_ip_port) {
            Ok(l) if l.len() == 1 => l.addrs()[0].clone(),
            _ => {
                eprintln!(
                    "dkv-server: server-ip-port lists several servers ({}); give --listen HOST:PORT to say which one this is",
                    cfg.server_ip_port
                );
                return ExitCode::from(2);
            }
        },
    };
    let listen = match dkv::net::resolve(&listen) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("dkv-server: bad listen address '{listen}': {e}");
            return ExitCode::from(2);
        }
    };
    let state_file = args
        .state_file
        .or_else(|| cfg.server_state_file.as_ref().map(PathBuf::from));
    let sentinel = args.sentinel_listen.or_else(|| cfg.sentinel_listen.clone());
    let sentinel_listen = match sentinel.as_deref().map(dkv::net::resolve).transpose() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("dkv-server: bad sentinel address: {e}");
            return ExitCode::from(2);
        }
    };
    let metrics = args.metrics_listen.or_else(|| cfg.metrics_listen.clone());
    let metrics_listen = match metrics.as_deref().map(dkv::net::resolve).transpose() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("dkv-server: bad metrics address: {e}");
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
            eprintln!("dkv-server: {e}");
            return ExitCode::from(2);
        }
    };
    let etcd = match etcd_registry(&cfg, args.etcd_endpoints, args.etcd_prefix) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("dkv-server: {e}");
            return ExitCode::from(2);
        }
    };
    if etcd.is_none() && state_file.is_none() {
        log::warn!("no state file: the cluster view is kept in memory only");
    }
    let opts = ServerOptions {
        etcd,
        security,
        sentinel_listen,
        metrics_listen,
        cluster_name: cfg.cluster_name.clone(),
        listen,
        settings: cfg.node_settings.clone(),
        state_file,
        max_connections: cfg.node_settings.max_connections,
        recover_from_nodes: args.recover_from_nodes,
    };
    match Server::start(opts) {
        Ok(server) => {
            // Scripts read the bound address from this line.
            let mut line = format!("dkv-server listening on {}", server.addr());
            if let Some(s) = server.sentinel_addr() {
                line.push_str(&format!(" sentinel {s}"));
            }
            if let Some(m) = server.metrics_addr() {
                line.push_str(&format!(" metrics {m}"));
            }
            println!("{line}");
            let sig = signals.wait();
            log::info!("{sig}: stopping");
            signals.exit_on_second(1);
            server.shutdown();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dkv-server: {e}");
            ExitCode::from(3)
        }
    }
}

/// The etcd registry named by flags or config, if any.
fn etcd_registry(
    cfg: &Config,
    endpoints: Option<String>,
    prefix: Option<String>,
) -> Result<Option<dkv::server::EtcdRegistry>, String> {
    let Some(endpoints) = endpoints.or_else(|| cfg.etcd_endpoints.clone()) else {
        return Ok(None);
    };
    let list: Vec<String> = endpoints
        .split(',')
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    if list.is_empty() {
        return Err("--etcd-endpoints is empty".into());
    }
    let password = match std::env::var("DKV_ETCD_PASSWORD") {
        Ok(p) => Some(p),
        Err(_) => match &cfg.etcd_password_file {
            Some(f) => Some(
                dkv::auth::read_secret_text(std::path::Path::new(f))
                    .map_err(|e| format!("etcd-password-file: {e}"))?,
            ),
            None => None,
        },
    };
    if password.is_some() && cfg.etcd_user.is_none() {
        return Err("an etcd password is set but etcd-user is not".into());
    }
    let opts = dkv::etcd::EtcdOptions {
        endpoints: list,
        user: cfg.etcd_user.clone(),
        password,
        ca_file: cfg.etcd_ca_file.as_ref().map(PathBuf::from),
        cert_file: cfg.etcd_cert_file.as_ref().map(PathBuf::from),
        key_file: cfg.etcd_key_file.as_ref().map(PathBuf::from),
        timeout: std::time::Duration::from_millis(cfg.etcd_timeout),
    };
    let etcd = dkv::etcd::Etcd::new(opts).map_err(|e| e.to_string())?;
    let prefix = match prefix {
        Some(p) if p.ends_with('/') => p,
        Some(p) => format!("{p}/"),
        None => cfg.etcd_prefix(),
    };
    Ok(Some(dkv::server::EtcdRegistry {
        etcd: std::sync::Arc::new(etcd),
        prefix,
    }))
}
