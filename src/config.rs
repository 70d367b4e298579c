//! `config.json`: one validated configuration with commented defaults.
//!
//! The file keeps the 2018 design's shape and keys (`server-ip-port`,
//! `node-settings` with `heartbeat`, `voting-wait`, `election-wait`,
//! `server-update-interval`, `reconnection-attempts`, `majority-threshold`);
//! all durations are milliseconds. New keys use the same kebab-case style.
//! Unknown keys produce a warning, never a failure, so the original file loads.

use crate::errors::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Default server address, as in the original file.
pub const DEFAULT_SERVER_ADDR: &str = "127.0.0.1:12345";
/// Default server state file, relative to the server's working directory.
pub const DEFAULT_STATE_FILE: &str = "dkv-server-state.json";

/// When the write-ahead log is forced to stable storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Before any acknowledgement: an acknowledged write survives power loss
    /// of every node. Concurrent writes share one fsync (group commit).
    Always,
    /// In the background every interval: a crash of the machine may lose the
    /// last interval of writes on that node (a process crash loses nothing).
    Interval(Duration),
    /// Never explicitly: the operating system writes when it likes.
    Never,
}

impl FsyncPolicy {
    pub fn parse(s: &str, interval: Duration) -> std::result::Result<Self, String> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "interval" => Ok(FsyncPolicy::Interval(interval)),
            "never" => Ok(FsyncPolicy::Never),
            other => Err(format!(
                "fsync must be always, interval or never, not '{other}'"
            )),
        }
    }
}

/// How long a connection may stay silent between requests, and how long one
/// request (or the handshake) may take to arrive once its first byte did.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    pub idle: Duration,
    pub request: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Config {
    /// Where the server listens and where nodes and clients find it: one
    /// HOST:PORT, or a comma-separated list of servers (nodes then try them
    /// in turn; a server given a list needs `--listen` to know which it is).
    #[serde(default = "default_server_addr")]
    pub server_ip_port: String,
    /// File where the server keeps its view (epoch, members, in-sync set).
    /// Relative paths are relative to the server's working directory.
    /// Default `dkv-server-state.json`, so a restarted server keeps its view
    /// without any configuration; `null` keeps it in memory only.
    #[serde(default = "default_state_file")]
    pub server_state_file: Option<String>,
    /// Where the server answers Sentinel commands (RESP); `--sentinel-listen`
    /// overrides it. None: off.
    #[serde(default)]
    pub sentinel_listen: Option<String>,
    /// Where the server serves Prometheus metrics (`GET /metrics`);
    /// `--metrics-listen` overrides it. None: off.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// The cluster's name for Sentinel clients.
    #[serde(default = "default_cluster_name")]
    pub cluster_name: String,
    /// File holding the cluster secret shared by the server and every node
    /// (at least 16 bytes; mode 600). `DKV_CLUSTER_SECRET` overrides it.
    /// None: the cluster runs open (see README, Security).
    #[serde(default)]
    pub cluster_secret_file: Option<String>,
    /// File holding the password clients must send (AUTH) before anything
    /// else, at the server and at every node. `DKV_PASSWORD` overrides it.
    #[serde(default)]
    pub client_password_file: Option<String>,
    /// TLS: this process's certificate (PEM, its chain), its private key
    /// (mode 600) and the cluster's CA. With `tls-cert-file` set, every TCP
    /// port of the process speaks TLS only, and member links are mutual TLS
    /// against the CA (on top of the cluster secret). The three go together.
    #[serde(default)]
    pub tls_cert_file: Option<String>,
    #[serde(default)]
    pub tls_key_file: Option<String>,
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    /// TLS: clients must present a certificate signed by the CA.
    #[serde(default)]
    pub tls_auth_clients: bool,
    /// HA registry: etcd endpoints (`http://h1:2379,http://h2:2379`). When
    /// set, every server keeps the registry in etcd instead of its state
    /// file, and several servers may serve one cluster. `--etcd-endpoints`
    /// overrides it.
    #[serde(default)]
    pub etcd_endpoints: Option<String>,
    /// Key prefix in etcd; default `/dkv/<cluster-name>/`.
    #[serde(default)]
    pub etcd_prefix: Option<String>,
    /// etcd user (with `etcd-password-file` or `DKV_ETCD_PASSWORD`).
    #[serde(default)]
    pub etcd_user: Option<String>,
    /// File holding the etcd user's password (mode 600).
    #[serde(default)]
    pub etcd_password_file: Option<String>,
    /// TLS to etcd: CA to trust, and a client certificate and key.
    #[serde(default)]
    pub etcd_ca_file: Option<String>,
    #[serde(default)]
    pub etcd_cert_file: Option<String>,
    #[serde(default)]
    pub etcd_key_file: Option<String>,
    /// Time for one etcd request (ms). A status push waits for its renewal
    /// to be recorded, so this must be well under the lease.
    #[serde(default = "d_etcd_timeout")]
    pub etcd_timeout: u64,
    #[serde(default)]
    pub node_settings: NodeSettings,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

/// Node timing and limits. `Option` fields are derived from others when absent,
/// so a file that sets only the original keys still validates.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NodeSettings {
    /// Beacon interval (ms). 50 ms lets a dead node be noticed within a few
    /// hundred ms while costing one small datagram per peer per interval.
    #[serde(default = "d_heartbeat")]
    pub heartbeat: u64,
    /// Silence (ms) after which a peer is suspected dead. Default: 5 heartbeats,
    /// so one or two lost datagrams never cause a false suspicion.
    #[serde(default)]
    pub failure_timeout: Option<u64>,
    /// Bully election: how long (ms) a candidate waits for a higher-ranked
    /// node to answer before it asks the server for the grant. Default: 2 heartbeats.
    #[serde(default)]
    pub voting_wait: Option<u64>,
    /// How long (ms) a node that deferred to a higher-ranked one waits for the
    /// new coordinator to be announced before it starts a new election.
    /// Default: failure-timeout.
    #[serde(default)]
    pub election_wait: Option<u64>,
    /// How often (ms) the coordinator pushes member status to the server.
    /// Every push renews the coordinator's lease.
    #[serde(default = "d_update_interval")]
    pub server_update_interval: u64,
    /// Consecutive failed pushes to the server after which a coordinator steps
    /// down (it also stops serving as soon as its lease runs out).
    #[serde(default = "d_reconnection_attempts")]
    pub reconnection_attempts: u32,
    /// Share of the members that must be in sync for writes to be accepted:
    /// writes need at least max(min-in-sync, ceil(threshold × members)) in-sync
    /// nodes. 0 disables the share rule.
    #[serde(default)]
    pub majority_threshold: f64,
    /// Minimum in-sync nodes (coordinator included) for a write to be accepted.
    #[serde(default = "d_min_in_sync")]
    pub min_in_sync: usize,
    /// Coordinator lease (ms) granted by the server at each status push.
    /// Default: 5 update intervals, so a few lost pushes do not cost the lease.
    #[serde(default)]
    pub lease_timeout: Option<u64>,
    /// Bound on clock-rate difference between machines, as a fraction. The
    /// coordinator treats its lease as `lease × (1 − drift)`, the server as
    /// `lease × (1 + drift)`.
    #[serde(default = "d_clock_drift")]
    pub clock_drift: f64,
    /// Largest key, in bytes.
    #[serde(default = "d_max_key")]
    pub max_key_bytes: usize,
    /// Largest value, in bytes.
    #[serde(default = "d_max_value")]
    pub max_value_bytes: usize,
    /// Concurrent TCP connections a node accepts (clients plus replicas);
    /// beyond it a connection gets a TooManyConnections error and is closed.
    #[serde(default = "d_max_connections")]
    pub max_connections: usize,
    /// Committed log entries kept in memory for replicas that fall behind;
    /// a replica further behind is sent a snapshot.
    #[serde(default = "d_log_retention")]
    pub log_retention_entries: usize,
    /// Most bytes of ops in one replication batch.
    #[serde(default = "d_batch_bytes")]
    pub max_batch_bytes: usize,
    /// A client connection idle (ms) this long is closed.
    #[serde(default = "d_idle_timeout")]
    pub client_idle_timeout: u64,
    /// Once the first byte of a request (or of a connection's handshake)
    /// arrived, the whole of it must arrive within this many ms, or the
    /// connection is closed: a client trickling bytes cannot hold a thread.
    #[serde(default = "d_read_timeout")]
    pub read_timeout: u64,
    /// Bytes of keys and values (plus 64 bytes per key) the coordinator
    /// holds before it refuses writes that add data with an out-of-memory
    /// error (deletes still work). 0: no limit.
    #[serde(default)]
    pub max_memory: u64,
    /// How long (ms) a write may wait for replication before the client gets
    /// a Timeout error (outcome unknown).
    #[serde(default = "d_write_timeout")]
    pub write_timeout: u64,
    /// How long (ms) the server keeps a member it has not heard of (no
    /// status report from the coordinator names it as reachable) before it
    /// removes it from the view; 0 keeps members until they are replaced.
    /// Only members outside the in-sync set are removed, and a removed node
    /// that comes back rejoins with its id. A member whose address a newer
    /// member took (a node restarted without its data directory) is removed
    /// as soon as it is outside the in-sync set.
    #[serde(default = "d_member_expiry")]
    pub member_expiry: u64,
    /// Where nodes serve RESP (the Redis protocol); `--resp-listen`
    /// overrides it. Default: the node's listen address with an ephemeral
    /// port. "off" turns it off.
    #[serde(default)]
    pub resp_listen: Option<String>,
    /// Where nodes serve Prometheus metrics (`GET /metrics`);
    /// `--metrics-listen` overrides it. None: off (a port per node, so
    /// several nodes on one host need the flag or port 0).
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// Directory for the node's identity, write-ahead log and snapshots;
    /// `--data-dir` overrides it. None: data in memory only.
    #[serde(default)]
    pub data_dir: Option<String>,
    /// When the write-ahead log reaches stable storage: `always` (before
    /// every acknowledgement, group-committed), `interval` (every
    /// `fsync-interval` ms in the background) or `never` (left to the OS).
    #[serde(default = "d_fsync")]
    pub fsync: String,
    /// Background fsync period (ms) for `fsync: interval`.
    #[serde(default = "d_fsync_interval")]
    pub fsync_interval: u64,
    /// Write-ahead log bytes after which a snapshot is written and the log
    /// before it deleted.
    #[serde(default = "d_snapshot_bytes")]
    pub snapshot_threshold_bytes: u64,
    /// Size at which a new log segment file is started.
    #[serde(default = "d_segment_bytes")]
    pub wal_segment_bytes: u64,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

fn d_fsync() -> String {
    "always".into()
}
fn d_fsync_interval() -> u64 {
    100
}
fn d_snapshot_bytes() -> u64 {
    256 << 20
}
fn d_segment_bytes() -> u64 {
    64 << 20
}

fn d_etcd_timeout() -> u64 {
    // Loopback etcd answers a transaction in a few ms (one fsync); 150 ms
    // leaves room for a slow disk and still lets a node try another server
    // within its 200 ms call timeout.
    150
}

fn default_state_file() -> Option<String> {
    Some(DEFAULT_STATE_FILE.to_string())
}

fn default_cluster_name() -> String {
    "dkv".into()
}

fn default_server_addr() -> String {
    DEFAULT_SERVER_ADDR.to_string()
}
fn d_heartbeat() -> u64 {
    50
}
fn d_update_interval() -> u64 {
    50
}
fn d_reconnection_attempts() -> u32 {
    3
}
fn d_min_in_sync() -> usize {
    1
}
fn d_clock_drift() -> f64 {
    0.05
}
fn d_max_key() -> usize {
    4 * 1024
}
fn d_max_value() -> usize {
    1024 * 1024
}
fn d_max_connections() -> usize {
    10_000
}
fn d_log_retention() -> usize {
    100_000
}
fn d_batch_bytes() -> usize {
    1024 * 1024
}
fn d_idle_timeout() -> u64 {
    300_000
}
fn d_read_timeout() -> u64 {
    10_000
}
fn d_write_timeout() -> u64 {
    5_000
}
fn d_member_expiry() -> u64 {
    600_000
}

impl Default for NodeSettings {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults deserialize")
    }
}

impl Default for Config {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults deserialize")
    }
}

impl NodeSettings {
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat)
    }
    pub fn failure_timeout(&self) -> Duration {
        Duration::from_millis(
            self.failure_timeout
                .unwrap_or(self.heartbeat.saturating_mul(5)),
        )
    }
    pub fn voting_wait(&self) -> Duration {
        Duration::from_millis(self.voting_wait.unwrap_or(self.heartbeat.saturating_mul(2)))
    }
    pub fn election_wait(&self) -> Duration {
        self.election_wait
            .map(Duration::from_millis)
            .unwrap_or_else(|| self.failure_timeout())
    }
    pub fn server_update_interval(&self) -> Duration {
        Duration::from_millis(self.server_update_interval)
    }
    pub fn lease(&self) -> Duration {
        Duration::from_millis(
            self.lease_timeout
                .unwrap_or(self.server_update_interval.saturating_mul(5)),
        )
    }
    /// The lease as the coordinator counts it (shortened by the drift bound).
    pub fn lease_at_coordinator(&self) -> Duration {
        self.lease().mul_f64(1.0 - self.clock_drift)
    }
    /// The lease as the server counts it (lengthened by the drift bound).
    pub fn lease_at_server(&self) -> Duration {
        self.lease().mul_f64(1.0 + self.clock_drift)
    }
    pub fn client_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.client_idle_timeout)
    }
    pub fn read_timeout(&self) -> Duration {
        Duration::from_millis(self.read_timeout)
    }
    /// Deadlines of a client connection.
    pub fn client_deadlines(&self) -> Deadlines {
        Deadlines {
            idle: self.client_idle_timeout(),
            request: self.read_timeout(),
        }
    }
    pub fn fsync_interval(&self) -> Duration {
        Duration::from_millis(self.fsync_interval)
    }
    /// `None`: members are never removed for silence.
    pub fn member_expiry(&self) -> Option<Duration> {
        (self.member_expiry > 0).then(|| Duration::from_millis(self.member_expiry))
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout)
    }
    /// Largest client frame: a maximal key and value plus envelope.
    pub fn max_client_frame(&self) -> usize {
        self.max_key_bytes + self.max_value_bytes + 1024
    }
    /// Largest replication frame: a full batch, or one maximal op, plus envelope.
    pub fn max_repl_frame(&self) -> usize {
        self.max_batch_bytes.max(self.max_client_frame()) + self.max_client_frame() + 64 * 1024
    }
    /// In-sync nodes needed for a write with `members` registered members.
    pub fn required_in_sync(&self, members: usize) -> usize {
        let share = (self.majority_threshold * members as f64).ceil() as usize;
        self.min_in_sync.max(share).max(1)
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config_io(format!("cannot read config file {}", path.display()), e)
        })?;
        let cfg =
            Config::parse(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        Ok(cfg)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> std::result::Result<Config, String> {
        let cfg: Config = serde_json::from_str(text).map_err(|e| e.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Rejects impossible combinations with a sentence saying which keys clash.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if let Err(e) = crate::servers::ServerList::parse(&self.server_ip_port) {
            return Err(format!("server-ip-port: {e}"));
        }
        if self.etcd_timeout == 0 || self.etcd_timeout > 60_000 {
            return Err("etcd-timeout must be between 1 and 60000 ms".into());
        }
        if let Some(e) = &self.etcd_endpoints {
            if e.split(',').any(|x| x.trim().is_empty()) {
                return Err(format!("etcd-endpoints '{e}' has an empty entry"));
            }
        }
        let n = &self.node_settings;
        // Bounds first, so the arithmetic below and deadlines computed from
        // these values (instant + duration) cannot overflow.
        const DAY_MS: u64 = 24 * 3600 * 1000;
        let durations = [
            ("heartbeat", Some(n.heartbeat)),
            ("failure-timeout", n.failure_timeout),
            ("voting-wait", n.voting_wait),
            ("election-wait", n.election_wait),
            ("server-update-interval", Some(n.server_update_interval)),
            ("lease-timeout", n.lease_timeout),
            ("client-idle-timeout", Some(n.client_idle_timeout)),
            ("read-timeout", Some(n.read_timeout)),
            ("write-timeout", Some(n.write_timeout)),
            ("fsync-interval", Some(n.fsync_interval)),
            ("member-expiry", Some(n.member_expiry)),
        ];
        for (key, v) in durations {
            if v.is_some_and(|v| v > DAY_MS) {
                return Err(format!(
                    "node-settings.{key} must be at most {DAY_MS} ms (one day)"
                ));
            }
        }
        if n.max_batch_bytes > 1 << 30 {
            return Err("node-settings.max-batch-bytes must be at most 1 GiB".into());
        }
        if n.reconnection_attempts > 1_000_000 {
            return Err("node-settings.reconnection-attempts must be at most 1000000".into());
        }
        if n.heartbeat == 0 {
            return Err("node-settings.heartbeat must be at least 1 ms".into());
        }
        if n.failure_timeout() < 3 * n.heartbeat() {
            return Err(format!(
                "node-settings.failure-timeout ({} ms) must be at least 3 heartbeats ({} ms)",
                n.failure_timeout().as_millis(),
                3 * n.heartbeat
            ));
        }
        if n.server_update_interval == 0 {
            return Err("node-settings.server-update-interval must be at least 1 ms".into());
        }
        if n.lease() < 2 * n.server_update_interval() {
            return Err(format!(
                "node-settings.lease-timeout ({} ms) must be at least 2 server-update-intervals ({} ms)",
                n.lease().as_millis(),
                2 * n.server_update_interval
            ));
        }
        if !(0.0..0.5).contains(&n.clock_drift) {
            return Err("node-settings.clock-drift must be in [0, 0.5)".into());
        }
        if !(0.0..=1.0).contains(&n.majority_threshold) {
            return Err("node-settings.majority-threshold must be in [0, 1]".into());
        }
        if n.reconnection_attempts == 0 {
            return Err("node-settings.reconnection-attempts must be at least 1".into());
        }
        if n.max_key_bytes == 0 || n.max_key_bytes > 64 * 1024 * 1024 {
            return Err("node-settings.max-key-bytes must be in 1..=64 MiB".into());
        }
        if n.max_value_bytes > 512 * 1024 * 1024 {
            return Err("node-settings.max-value-bytes must be at most 512 MiB".into());
        }
        if n.max_connections == 0 {
            return Err("node-settings.max-connections must be at least 1".into());
        }
        if n.max_batch_bytes == 0 {
            return Err("node-settings.max-batch-bytes must be at least 1".into());
        }
        if n.min_in_sync == 0 {
            return Err("node-settings.min-in-sync must be at least 1".into());
        }
        FsyncPolicy::parse(&n.fsync, n.fsync_interval())
            .map_err(|e| format!("node-settings.{e}"))?;
        if n.fsync_interval == 0 {
            return Err("node-settings.fsync-interval must be at least 1 ms".into());
        }
        if n.wal_segment_bytes < 4096 || n.snapshot_threshold_bytes < n.wal_segment_bytes {
            return Err(
                "node-settings.wal-segment-bytes must be at least 4096 and at most snapshot-threshold-bytes"
                    .into(),
            );
        }
        if n.write_timeout == 0 || n.client_idle_timeout == 0 || n.read_timeout == 0 {
            return Err(
                "node-settings.write-timeout, client-idle-timeout and read-timeout must be positive"
                    .into(),
            );
        }
        Ok(())
    }

    /// Keys that were present but are not understood; worth a warning.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for k in self.unknown.keys() {
            out.push(format!("config key '{k}' is not known and is ignored"));
        }
        for k in self.node_settings.unknown.keys() {
            out.push(format!(
                "config key 'node-settings.{k}' is not known and is ignored"
            ));
        }
        out
    }

    /// The etcd key prefix: `etcd-prefix`, else `/dkv/<cluster-name>/`.
    pub fn etcd_prefix(&self) -> String {
        let p = self
            .etcd_prefix
            .clone()
            .unwrap_or_else(|| format!("/dkv/{}/", self.cluster_name));
        if p.ends_with('/') {
            p
        } else {
            format!("{p}/")
        }
    }

    /// Logs the warnings.
    pub fn log_warnings(&self) {
        for w in self.warnings() {
            log::warn!("{w}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGINAL: &str = r#"{"server-ip-port": "127.0.0.1:12345", "node-settings": {"heartbeat": 5000, "voting-wait": 20000, "election-wait": 5000, "server-update-interval": 1000, "reconnection-attempts": 5, "majority-threshold": 0.50}}"#;

    #[test]
    fn original_2018_file_loads() {
        let cfg = Config::parse(ORIGINAL).unwrap();
        assert_eq!(cfg.server_ip_port, "127.0.0.1:12345");
        let n = &cfg.node_settings;
        assert_eq!(n.heartbeat(), Duration::from_secs(5));
        assert_eq!(n.voting_wait(), Duration::from_secs(20));
        assert_eq!(n.election_wait(), Duration::from_secs(5));
        assert_eq!(n.failure_timeout(), Duration::from_secs(25));
        assert_eq!(n.lease(), Duration::from_secs(5));
        assert_eq!(n.reconnection_attempts, 5);
        assert_eq!(n.required_in_sync(3), 2);
        assert!(cfg.warnings().is_empty());
    }

    #[test]
    fn server_ip_port_may_be_a_list_and_a_bad_one_is_refused() {
        let cfg = Config::parse(r#"{"server-ip-port": "127.0.0.1:1, 127.0.0.1:2"}"#).unwrap();
        assert_eq!(cfg.server_ip_port, "127.0.0.1:1, 127.0.0.1:2");
        let err = Config::parse(r#"{"server-ip-port": "127.0.0.1:1,,127.0.0.1:2"}"#).unwrap_err();
        assert_eq!(
            err,
            "server-ip-port: the server list '127.0.0.1:1,,127.0.0.1:2' has an empty entry (entry 2)"
        );
        let err = Config::parse(r#"{"server-ip-port": "a:1,a:1"}"#).unwrap_err();
        assert!(err.contains("names a:1 twice"), "{err}");
    }

    #[test]
    fn defaults_are_sub_second() {
        let cfg = Config::parse("{}").unwrap();
        let n = &cfg.node_settings;
        assert!(n.heartbeat() < Duration::from_secs(1));
        assert!(n.failure_timeout() < Duration::from_secs(1));
        assert!(n.lease() < Duration::from_secs(1));
        assert_eq!(n.required_in_sync(3), 1);
    }

    #[test]
    fn unknown_keys_warn() {
        let cfg = Config::parse(r#"{"colour": 1, "node-settings": {"speed": 2}}"#).unwrap();
        assert_eq!(cfg.warnings().len(), 2);
    }

    #[test]
    fn impossible_combinations_are_rejected() {
        let e = Config::parse(r#"{"node-settings": {"heartbeat": 100, "failure-timeout": 150}}"#)
            .unwrap_err();
        assert!(e.contains("failure-timeout"), "{e}");
        let e = Config::parse(
            r#"{"node-settings": {"server-update-interval": 100, "lease-timeout": 150}}"#,
        )
        .unwrap_err();
        assert!(e.contains("lease-timeout"), "{e}");
        assert!(Config::parse(r#"{"node-settings": {"heartbeat": "fast"}}"#).is_err());
    }
}
