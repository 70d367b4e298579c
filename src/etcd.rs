//! A blocking etcd v3 client over etcd's JSON gRPC gateway (etcd 3.4+).
//!
//! Every call is one `POST /v3/...` with a JSON body, sent with a [`ureq`]
//! agent that keeps connections alive. Keys and values travel as base64;
//! etcd answers int64 fields as JSON strings (numbers are accepted too).
//!
//! **Failover.** A call goes to the endpoint that answered last. When that
//! endpoint cannot be reached, times out, answers HTTP 5xx or says it has no
//! leader (or that its leader changed, or that the request timed out), the
//! call moves on to the next endpoint; each endpoint is tried at most once
//! per call. Reads and idempotent calls (`get`, `get_prefix`, the lease
//! calls, `status`) are retried that way whatever happened. Writes (`put`,
//! `delete`, `txn`) are only retried when the request certainly did not take
//! effect (the connection was never established, or etcd refused it before
//! proposing it, e.g. "no leader"); once a write has been sent and its answer
//! is lost the call returns [`EtcdError::Indeterminate`]: the caller
//! re-reads and compares revisions instead of resending blindly.
//!
//! **Auth.** With a user and password the client authenticates once, sends
//! the token in the `Authorization` header, and re-authenticates once per
//! call when etcd says the token is invalid (tokens of etcd's default
//! `simple` provider live in memory and die with a restart or after their
//! TTL).
//!
//! **Hostile answers.** Every response body is read with the limit
//! [`MAX_RESPONSE_BYTES`]; anything that is not the JSON we expect gives
//! [`EtcdError::Protocol`], never a panic.
//!
//! **Timeouts.** [`EtcdOptions::timeout`] bounds connecting to one endpoint
//! (TCP and TLS) and, separately, waiting for its answer; one attempt never
//! takes longer than twice that, and a call makes at most one attempt per
//! endpoint (plus one re-authentication).

use base64::Engine as _;
use log::{debug, warn};
use parking_lot::Mutex;
use serde_json::{json, Map, Value};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Largest response body read from etcd (16 MiB). A larger answer is a
/// [`EtcdError::Protocol`] error; the connection is dropped, not drained.
pub const MAX_RESPONSE_BYTES: u64 = 16 << 20;

/// Default for [`EtcdOptions::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);

/// Largest TLS file (CA, certificate or key) read by [`Etcd::new`].
const MAX_PEM_BYTES: u64 = 1 << 20;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// How to reach etcd.
#[derive(Clone)]
pub struct EtcdOptions {
    /// `http://host:port` or `https://host:port`; a bare `host:port` means
    /// `http://host:port`.
    pub endpoints: Vec<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// TLS: trust this CA (PEM). Without it, `https` endpoints are checked
    /// against the public web roots (webpki-roots).
    pub ca_file: Option<PathBuf>,
    /// TLS client certificate chain (PEM), for `--client-cert-auth`.
    pub cert_file: Option<PathBuf>,
    /// TLS client private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// Limit for connecting to one endpoint and, separately, for its answer.
    pub timeout: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            endpoints: Vec::new(),
            user: None,
            password: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl EtcdOptions {
    /// Options for these endpoints with every other field at its default.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> EtcdOptions {
        EtcdOptions {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ..EtcdOptions::default()
        }
    }
}

impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Every error is one plain sentence naming the endpoint(s) involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered (connect refused, timeout, 5xx, "etcdserver: no
    /// leader", ...). Names the endpoints and what each did.
    #[error("{0}")]
    Unavailable(String),
    /// A write was sent and no answer came: it may or may not have been
    /// applied. Re-read and compare revisions.
    #[error("{0}")]
    Indeterminate(String),
    /// Wrong user or password, authentication required, or permission denied.
    #[error("{0}")]
    Auth(String),
    /// The gateway answered something we cannot parse, or refused the
    /// request with an etcd error (HTTP 4xx).
    #[error("{0}")]
    Protocol(String),
    /// Bad options (no endpoint, bad URL, unreadable TLS file, every endpoint
    /// failing the TLS handshake, ...).
    #[error("{0}")]
    Config(String),
}

/// One key as etcd stores it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    /// Lease the key is attached to; 0 = none.
    pub lease: i64,
}

/// The answer to a read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeResult {
    /// The store revision the read saw (`header.revision`).
    pub revision: i64,
    pub kvs: Vec<KeyValue>,
}

/// A transaction guard: all compares must hold for the success branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's mod_revision equals `equals` (0 = the key does not exist).
    ModRevision { key: Vec<u8>, equals: i64 },
    /// The key's create_revision equals `equals` (0 = the key does not exist).
    CreateRevision { key: Vec<u8>, equals: i64 },
    /// The key exists and holds exactly `equals`.
    Value { key: Vec<u8>, equals: Vec<u8> },
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `lease` 0 = no lease.
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
    },
    Delete {
        key: Vec<u8>,
    },
    Get {
        key: Vec<u8>,
    },
    GetPrefix {
        prefix: Vec<u8>,
    },
}

/// The answer to [`Etcd::txn`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TxnResult {
    /// Whether every compare held (the success branch ran).
    pub succeeded: bool,
    /// Store revision after the transaction.
    pub revision: i64,
    /// Results of the `Get`/`GetPrefix` ops of the branch taken, in order.
    pub ranges: Vec<RangeResult>,
}

/// What one member says about itself (`/v3/maintenance/status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// The endpoint asked, normalised (`http://host:port`).
    pub endpoint: String,
    pub member_id: u64,
    /// Member id of the leader this member follows; 0 = none.
    pub leader: u64,
    pub raft_term: u64,
}

/// A blocking etcd v3 client. `Send + Sync`: share one behind an `Arc`; it
/// holds one HTTP agent, so connections are reused across calls and threads.
pub struct Etcd {
    endpoints: Vec<String>,
    agent: ureq::Agent,
    timeout: Duration,
    credentials: Option<(String, String)>,
    /// Auth token once authenticated. `Some("")`: etcd has auth disabled.
    token: Mutex<Option<String>>,
    /// Index of the endpoint that answered last.
    current: AtomicUsize,
    /// Whether a TLS client certificate is configured (for error hints).
    has_client_cert: bool,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.endpoints)
            .field("current", &self.current.load(Ordering::Relaxed))
            .field("timeout", &self.timeout)
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .finish_non_exhaustive()
    }
}

/// Whether a call may be resent to another endpoint after its request left.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Retry {
    /// Reads and idempotent calls: always.
    Always,
    /// Writes: only if the request certainly did not take effect.
    IfNotApplied,
}

/// What one HTTP exchange with one endpoint gave.
#[derive(Debug)]
enum Reply {
    /// HTTP 200 with a JSON object.
    Ok(Value),
    /// etcd answered with an error (`{"error", "message", "code"}`).
    Etcd {
        status: u16,
        code: i64,
        message: String,
    },
    /// No (complete) answer. `sent`: the request may have reached etcd.
    Transport {
        sent: bool,
        tls: bool,
        reason: String,
    },
    /// An answer that is not what etcd's gateway sends.
    Garbage(String),
}

/// Why one endpoint did not serve a call.
enum Failure {
    /// Try the next endpoint (`tls`: the failure was the TLS handshake).
    Next { reason: String, tls: bool },
    /// Stop: the call fails with this error.
    Stop(EtcdError),
    /// etcd refused the request itself (4xx); methods may give some of
    /// these a meaning (e.g. revoking a lease that is already gone).
    Refused { endpoint: String, message: String },
}

impl Etcd {
    /// Checks the options and reads the TLS files; does not contact etcd.
    pub fn new(opts: EtcdOptions) -> Result<Etcd, EtcdError> {
        if opts.endpoints.is_empty() {
            return Err(EtcdError::Config(
                "etcd options name no endpoint".to_string(),
            ));
        }
        let endpoints = opts
            .endpoints
            .iter()
            .map(|e| normalize_endpoint(e))
            .collect::<Result<Vec<_>, _>>()?;
        if opts.timeout.is_zero() {
            return Err(EtcdError::Config(
                "the etcd request timeout must be greater than zero".to_string(),
            ));
        }
        let credentials = match (opts.user, opts.password) {
            (None, None) => None,
            (Some(u), Some(p)) if !u.is_empty() => Some((u, p)),
            (Some(_), Some(_)) => {
                return Err(EtcdError::Config("the etcd user name is empty".to_string()))
            }
            (Some(u), None) => {
                return Err(EtcdError::Config(format!(
                    "etcd user '{u}' is configured without a password"
                )))
            }
            (None, Some(_)) => {
                return Err(EtcdError::Config(
                    "an etcd password is configured without a user".to_string(),
                ))
            }
        };
        let tls = tls_config(
            opts.ca_file.as_deref(),
            opts.cert_file.as_deref(),
            opts.key_file.as_deref(),
        )?;
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(opts.timeout))
            .timeout_recv_response(Some(opts.timeout))
            .timeout_global(Some(opts.timeout * 2))
            .max_redirects(0)
            .max_idle_connections_per_host(8)
            .user_agent("dkv-etcd-client")
            .tls_config(tls)
            .build();
        Ok(Etcd {
            endpoints,
            agent: config.new_agent(),
            timeout: opts.timeout,
            credentials,
            token: Mutex::new(None),
            current: AtomicUsize::new(0),
            has_client_cert: opts.cert_file.is_some(),
        })
    }

    /// The endpoints, normalised (`http://host:port`), in the order given.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Reads one key; `kvs` is empty when it does not exist.
    pub fn get(&self, key: &[u8]) -> Result<RangeResult, EtcdError> {
        let body = json!({ "key": B64.encode(key) });
        self.request("get", "/v3/kv/range", &body, Retry::Always, |v| {
            parse_range(v, None)
        })
    }

    /// Reads every key starting with `prefix` (all keys for an empty one),
    /// in key order.
    pub fn get_prefix(&self, prefix: &[u8]) -> Result<RangeResult, EtcdError> {
        let body = prefix_range(prefix);
        self.request("get_prefix", "/v3/kv/range", &body, Retry::Always, |v| {
            parse_range(v, None)
        })
    }

    /// Writes a key (`lease` 0 = no lease) and returns the new revision.
    pub fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let body = put_body(key, value, lease);
        self.request(
            "put",
            "/v3/kv/put",
            &body,
            Retry::IfNotApplied,
            header_revision,
        )
    }

    /// Deletes a key and returns the store revision after the delete.
    pub fn delete(&self, key: &[u8]) -> Result<i64, EtcdError> {
        let body = json!({ "key": B64.encode(key) });
        self.request(
            "delete",
            "/v3/kv/deleterange",
            &body,
            Retry::IfNotApplied,
            header_revision,
        )
    }

    /// Runs `success` if every compare holds, else `failure`, atomically.
    pub fn txn(
        &self,
        compares: &[Compare],
        success: &[Op],
        failure: &[Op],
    ) -> Result<TxnResult, EtcdError> {
        let body = json!({
            "compare": compares.iter().map(compare_json).collect::<Vec<_>>(),
            "success": success.iter().map(op_json).collect::<Vec<_>>(),
            "failure": failure.iter().map(op_json).collect::<Vec<_>>(),
        });
        self.request("txn", "/v3/kv/txn", &body, Retry::IfNotApplied, |v| {
            parse_txn(v, success, failure)
        })
    }

    /// Grants a lease of `ttl_secs` seconds and returns its id. Retried like
    /// a read: a grant whose answer was lost leaves an unused lease behind,
    /// which expires by itself after its TTL.
    pub fn lease_grant(&self, ttl_secs: i64) -> Result<i64, EtcdError> {
        let body = json!({ "TTL": ttl_secs.to_string(), "ID": "0" });
        self.request(
            "lease_grant",
            "/v3/lease/grant",
            &body,
            Retry::Always,
            |v| {
                if let Some(err) = v.get("error").and_then(Value::as_str) {
                    if !err.is_empty() {
                        return Err(format!("a refusal: {}", clip(err)));
                    }
                }
                match int_field(v, "ID")? {
                    0 => Err("no lease id".to_string()),
                    id => Ok(id),
                }
            },
        )
    }

    /// Refreshes a lease; returns its remaining TTL in seconds, 0 when the
    /// lease is gone (expired or revoked).
    pub fn lease_keepalive(&self, id: i64) -> Result<i64, EtcdError> {
        let what = "lease_keepalive";
        let body = json!({ "ID": id.to_string() });
        match self.call_refusable(what, "/v3/lease/keepalive", &body, Retry::Always) {
            Ok((ep, v)) => {
                let result = v.get("result").unwrap_or(&v);
                int_field(result, "TTL").map_err(|e| unexpected(what, ep, &e))
            }
            Err(Failure::Refused { message, .. }) if is_lease_not_found(&message) => Ok(0),
            Err(f) => Err(refused_to_error(what, f)),
        }
    }

    /// Revokes a lease, deleting every key attached to it. Revoking a lease
    /// that is already gone succeeds (so the call can be retried).
    pub fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        let what = "lease_revoke";
        let body = json!({ "ID": id.to_string() });
        match self.call_refusable(what, "/v3/lease/revoke", &body, Retry::Always) {
            Ok(_) => Ok(()),
            Err(Failure::Refused { message, .. }) if is_lease_not_found(&message) => Ok(()),
            Err(f) => Err(refused_to_error(what, f)),
        }
    }

    /// Asks one endpoint (any, not only the configured ones) about itself.
    pub fn status(&self, endpoint: &str) -> Result<MemberStatus, EtcdError> {
        let ep = normalize_endpoint(endpoint)?;
        let body = json!({});
        let v = match self.call_one(
            "status",
            &ep,
            "/v3/maintenance/status",
            &body,
            Retry::Always,
        ) {
            Ok(v) => v,
            Err(Failure::Next { reason, tls }) => {
                let msg = format!("etcd status of {ep} failed: {reason}");
                return Err(if tls {
                    EtcdError::Config(format!("{msg}; check ca_file, cert_file and key_file"))
                } else {
                    EtcdError::Unavailable(msg)
                });
            }
            Err(f) => return Err(refused_to_error("status", f)),
        };
        let parsed = (|| -> Result<MemberStatus, String> {
            let header = v.get("header").ok_or("the answer has no header")?;
            let raft_term = match v.get("raftTerm").or_else(|| v.get("raft_term")) {
                Some(_) => uint_field(&v, &["raftTerm", "raft_term"])?,
                None => uint_field(header, &["raft_term"])?,
            };
            Ok(MemberStatus {
                endpoint: ep.clone(),
                member_id: uint_field(header, &["member_id"])?,
                leader: uint_field(&v, &["leader"])?,
                raft_term,
            })
        })();
        parsed.map_err(|e| unexpected("status", &ep, &e))
    }

    // ---- the call machinery -------------------------------------------

    /// One call with failover whose answer `parse` turns into the result;
    /// etcd refusals and unexpected answers become errors.
    fn request<T>(
        &self,
        what: &str,
        path: &str,
        body: &Value,
        retry: Retry,
        parse: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Result<T, EtcdError> {
        let (ep, v) = self
            .call_refusable(what, path, body, retry)
            .map_err(|f| refused_to_error(what, f))?;
        parse(&v).map_err(|e| unexpected(what, ep, &e))
    }

    /// One call with failover over the endpoints, starting with the one
    /// that answered last. Returns `Refused` untouched for the caller.
    fn call_refusable(
        &self,
        what: &str,
        path: &str,
        body: &Value,
        retry: Retry,
    ) -> Result<(&str, Value), Failure> {
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed) % n;
        let mut failures = Vec::new();
        let mut all_tls = true;
        for k in 0..n {
            let i = (start + k) % n;
            let ep = &self.endpoints[i];
            match self.call_one(what, ep, path, body, retry) {
                Ok(v) => {
                    if k > 0 {
                        self.current.store(i, Ordering::Relaxed);
                    }
                    return Ok((ep, v));
                }
                Err(Failure::Next { reason, tls }) => {
                    if k + 1 < n {
                        debug!("etcd {what} via {ep} failed ({reason}); trying the next endpoint");
                    } else {
                        debug!("etcd {what} via {ep} failed ({reason}); no endpoint left");
                    }
                    all_tls &= tls;
                    failures.push(format!("{ep}: {reason}"));
                }
                Err(f) => {
                    // An endpoint that answered works, even if it refused
                    // the request; one whose answer was lost does not.
                    let answered = !matches!(f, Failure::Stop(EtcdError::Indeterminate(_)));
                    if k > 0 && answered {
                        self.current.store(i, Ordering::Relaxed);
                    }
                    return Err(f);
                }
            }
        }
        let list = failures.join("; ");
        Err(Failure::Stop(if all_tls {
            EtcdError::Config(format!(
                "etcd {what} failed: the TLS handshake failed with every endpoint ({list}); \
                 check ca_file, cert_file and key_file"
            ))
        } else {
            EtcdError::Unavailable(format!(
                "etcd {what} failed: no endpoint could serve it ({list})"
            ))
        }))
    }

    /// One call against one endpoint, authenticating (and re-authenticating
    /// once) as needed.
    fn call_one(
        &self,
        what: &str,
        ep: &str,
        path: &str,
        body: &Value,
        retry: Retry,
    ) -> Result<Value, Failure> {
        let bytes = body.to_string().into_bytes();
        let mut reauthenticated = false;
        loop {
            let token = match &self.credentials {
                Some(_) => Some(self.token(ep)?),
                None => None,
            };
            match self.post(ep, path, &bytes, token.as_deref()) {
                Reply::Ok(v) => return Ok(v),
                Reply::Etcd {
                    status,
                    code,
                    message,
                } => {
                    if self.credentials.is_some() && is_token_error(&message) && !reauthenticated {
                        debug!("etcd {what} via {ep}: {message}; authenticating again");
                        self.forget_token(token.as_deref());
                        reauthenticated = true;
                        continue;
                    }
                    return Err(self.etcd_failure(what, ep, status, code, message, retry));
                }
                Reply::Transport { sent, tls, reason } => {
                    if sent && retry == Retry::IfNotApplied {
                        return Err(Failure::Stop(EtcdError::Indeterminate(format!(
                            "etcd {what} sent to {ep} got no answer ({reason}); \
                             it may or may not have been applied"
                        ))));
                    }
                    return Err(Failure::Next { reason, tls });
                }
                Reply::Garbage(reason) => {
                    return Err(Failure::Stop(EtcdError::Protocol(format!(
                        "etcd at {ep} gave a bad answer to the {what}: {reason}"
                    ))))
                }
            }
        }
    }

    /// Classifies an error answer from etcd.
    fn etcd_failure(
        &self,
        what: &str,
        ep: &str,
        status: u16,
        code: i64,
        message: String,
        retry: Retry,
    ) -> Failure {
        if is_auth_error(code, &message) {
            let hint = if self.credentials.is_none() && message.contains("user name is empty") {
                " (etcd requires authentication and no user is configured)"
            } else {
                ""
            };
            return Failure::Stop(EtcdError::Auth(format!(
                "etcd at {ep} rejected the {what}: {message}{hint}"
            )));
        }
        if status >= 500 || is_unavailable_error(code, &message) {
            let reason = format!("{message} (HTTP {status})");
            if retry == Retry::IfNotApplied && !is_not_applied_error(&message) {
                return Failure::Stop(EtcdError::Indeterminate(format!(
                    "etcd {what} sent to {ep} failed with '{message}'; \
                     it may or may not have been applied"
                )));
            }
            return Failure::Next { reason, tls: false };
        }
        Failure::Refused {
            endpoint: ep.to_string(),
            message,
        }
    }

    /// The auth token, authenticating against `ep` if there is none yet.
    fn token(&self, ep: &str) -> Result<String, Failure> {
        let Some((user, password)) = &self.credentials else {
            return Ok(String::new());
        };
        let mut guard = self.token.lock();
        if let Some(t) = guard.as_ref() {
            return Ok(t.clone());
        }
        let body = json!({ "name": user, "password": password }).to_string();
        let token = match self.post(ep, "/v3/auth/authenticate", body.as_bytes(), None) {
            Reply::Ok(v) => match v.get("token").and_then(Value::as_str) {
                Some(t) if !t.is_empty() && t.len() < 4096 => t.to_string(),
                _ => {
                    return Err(Failure::Stop(EtcdError::Protocol(format!(
                        "etcd at {ep} answered the authentication without a usable token"
                    ))))
                }
            },
            Reply::Etcd {
                status,
                code,
                message,
            } => {
                if message.contains("authentication is not enabled") {
                    warn!("etcd at {ep} has authentication disabled; user '{user}' is not used");
                    String::new()
                } else if is_auth_error(code, &message) || message.contains("authentication failed")
                {
                    return Err(Failure::Stop(EtcdError::Auth(format!(
                        "etcd at {ep} rejected user '{user}': {message}"
                    ))));
                } else if status >= 500 || is_unavailable_error(code, &message) {
                    return Err(Failure::Next {
                        reason: format!("authentication failed: {message} (HTTP {status})"),
                        tls: false,
                    });
                } else {
                    return Err(Failure::Stop(EtcdError::Protocol(format!(
                        "etcd at {ep} refused to authenticate user '{user}': {message}"
                    ))));
                }
            }
            Reply::Transport { tls, reason, .. } => {
                return Err(Failure::Next {
                    reason: format!("authentication failed: {reason}"),
                    tls,
                })
            }
            Reply::Garbage(reason) => {
                return Err(Failure::Stop(EtcdError::Protocol(format!(
                    "etcd at {ep} answered the authentication with {reason}"
                ))))
            }
        };
        debug!("etcd: authenticated as '{user}' at {ep}");
        *guard = Some(token.clone());
        Ok(token)
    }

    /// Drops the token if it is still the one that etcd rejected.
    fn forget_token(&self, used: Option<&str>) {
        let mut guard = self.token.lock();
        if guard.as_deref() == used {
            *guard = None;
        }
    }

    /// One HTTP exchange.
    fn post(&self, ep: &str, path: &str, body: &[u8], token: Option<&str>) -> Reply {
        let tls = ep.starts_with("https://");
        let url = format!("{ep}{path}");
        let mut req = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json");
        if let Some(t) = token.filter(|t| !t.is_empty()) {
            req = req.header("Authorization", t);
        }
        let mut resp = match req.send(body) {
            Ok(r) => r,
            Err(e) => return self.transport_failure(e, tls, false),
        };
        let status = resp.status().as_u16();
        let bytes = match resp
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_vec()
        {
            Ok(b) => b,
            Err(e) => return self.transport_failure(e, tls, true),
        };
        parse_reply(status, &bytes)
    }

    fn transport_failure(&self, e: ureq::Error, tls: bool, answering: bool) -> Reply {
        let ms = self.timeout.as_millis();
        let not_sent = |reason: String, tls: bool| Reply::Transport {
            sent: false,
            tls,
            reason,
        };
        let sent = |reason: String| Reply::Transport {
            sent: true,
            tls: false,
            reason,
        };
        match e {
            ureq::Error::Io(io) => {
                use io::ErrorKind as K;
                match io.kind() {
                    K::ConnectionRefused => not_sent("connection refused".into(), false),
                    // EPIPE: our bytes hit a connection the server had
                    // already closed; it reset them unread. (A TLS server
                    // that rejects the client certificate after the
                    // handshake closes this way too.)
                    K::BrokenPipe if !answering => {
                        let hint = if tls && !self.has_client_cert {
                            " (does etcd require a client certificate? set cert_file and key_file)"
                        } else {
                            ""
                        };
                        not_sent(
                            format!(
                                "the connection was closed before the request reached etcd{hint}"
                            ),
                            false,
                        )
                    }
                    K::AddrNotAvailable
                    | K::NetworkUnreachable
                    | K::HostUnreachable
                    | K::NetworkDown
                    | K::AddrInUse => not_sent(format!("cannot connect: {io}"), false),
                    // rustls reports its errors (certificate checks, alerts
                    // such as a rejected client certificate) as InvalidData.
                    // A connection it rejects never carries a request to
                    // etcd's gateway.
                    K::InvalidData if tls && !answering => {
                        not_sent(format!("TLS handshake failed: {}", io_detail(&io)), true)
                    }
                    _ if answering => {
                        sent(format!("connection lost while reading the answer: {io}"))
                    }
                    _ => sent(format!("connection lost: {io}")),
                }
            }
            ureq::Error::Timeout(t) => match t {
                ureq::Timeout::Resolve | ureq::Timeout::Connect => {
                    not_sent(format!("could not connect within {ms} ms"), false)
                }
                _ => sent(format!("no answer within {ms} ms")),
            },
            ureq::Error::HostNotFound => not_sent("host name not found".into(), false),
            ureq::Error::ConnectionFailed => not_sent("connection failed".into(), false),
            ureq::Error::Rustls(e) => not_sent(format!("TLS handshake failed: {e}"), true),
            ureq::Error::Tls(e) => not_sent(format!("TLS failed: {e}"), true),
            ureq::Error::Pem(e) => not_sent(format!("TLS failed: {e}"), true),
            ureq::Error::BodyExceedsLimit(_) => Reply::Garbage(format!(
                "the answer is larger than {} MiB",
                MAX_RESPONSE_BYTES >> 20
            )),
            ureq::Error::LargeResponseHeader(..) => {
                Reply::Garbage("the answer's HTTP header is too large".into())
            }
            ureq::Error::Protocol(e) => {
                Reply::Garbage(format!("the answer is not valid HTTP ({e})"))
            }
            ureq::Error::Http(e) => Reply::Garbage(format!("cannot build the request ({e})")),
            ureq::Error::BadUri(e) => Reply::Garbage(format!("bad URL ({e})")),
            ureq::Error::TooManyRedirects | ureq::Error::RedirectFailed => {
                Reply::Garbage("the answer is a redirect".into())
            }
            other if answering => sent(format!("reading the answer failed: {other}")),
            other => sent(format!("request failed: {other}")),
        }
    }
}

/// The innermost message of an io error (rustls's reason, not "io error").
fn io_detail(e: &io::Error) -> String {
    match e.get_ref() {
        Some(inner) => inner.to_string(),
        None => e.to_string(),
    }
}

fn unexpected(what: &str, ep: &str, detail: &str) -> EtcdError {
    EtcdError::Protocol(format!(
        "etcd at {ep} answered the {what} with something unexpected: {detail}"
    ))
}

fn refused_to_error(what: &str, f: Failure) -> EtcdError {
    match f {
        Failure::Stop(e) => e,
        Failure::Refused { endpoint, message } => {
            EtcdError::Protocol(format!("etcd at {endpoint} refused the {what}: {message}"))
        }
        Failure::Next { reason, .. } => {
            EtcdError::Unavailable(format!("etcd {what} failed: {reason}"))
        }
    }
}

// ---- classification of etcd's error messages ---------------------------

/// gRPC status codes as the gateway reports them.
const GRPC_DEADLINE_EXCEEDED: i64 = 4;
const GRPC_PERMISSION_DENIED: i64 = 7;
const GRPC_UNAVAILABLE: i64 = 14;
const GRPC_UNAUTHENTICATED: i64 = 16;

/// The token is unknown to this member (restart, TTL, failover) or stale.
fn is_token_error(message: &str) -> bool {
    message.contains("invalid auth token")
        || message.contains("revision of auth store is old")
        || message.contains("user name is empty")
}

fn is_auth_error(code: i64, message: &str) -> bool {
    code == GRPC_UNAUTHENTICATED
        || code == GRPC_PERMISSION_DENIED
        || message.contains("permission denied")
        || message.contains("authentication failed")
        || message.contains("user name is empty")
        || message.contains("user name not found")
        || message.contains("invalid auth token")
        || message.contains("revision of auth store is old")
}

/// etcd cannot serve the request right now; another member may.
fn is_unavailable_error(code: i64, message: &str) -> bool {
    code == GRPC_UNAVAILABLE
        || code == GRPC_DEADLINE_EXCEEDED
        || is_not_applied_error(message)
        || message.contains("leader changed")
        || message.contains("timed out")
        || message.contains("server stopped")
        || message.contains("connection lost")
}

/// Refusals that etcd gives before proposing a request: it was not applied.
fn is_not_applied_error(message: &str) -> bool {
    message.contains("no leader")
        || message.contains("too many requests")
        || message.contains("proposal dropped")
        || message.contains("not capable")
        || message.contains("not enough started members")
        || message.contains("unhealthy cluster")
        // The gateway could not reach its own gRPC server.
        || message.contains("error while dialing")
}

fn is_lease_not_found(message: &str) -> bool {
    message.contains("requested lease not found")
}

// ---- endpoints and TLS -------------------------------------------------

/// `host:port` → `http://host:port`; checks the scheme and that there is a
/// host and no path.
fn normalize_endpoint(raw: &str) -> Result<String, EtcdError> {
    let s = raw.trim().trim_end_matches('/');
    let bad = |why: &str| EtcdError::Config(format!("etcd endpoint '{raw}' is invalid: {why}"));
    if s.is_empty() {
        return Err(bad("it is empty"));
    }
    let (scheme, rest) = match s.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => ("http".to_string(), s),
    };
    if scheme != "http" && scheme != "https" {
        return Err(bad("the scheme must be http or https"));
    }
    if rest.is_empty() {
        return Err(bad("it has no host"));
    }
    if rest
        .chars()
        .any(|c| matches!(c, '/' | '?' | '#' | '@') || c.is_whitespace() || c.is_control())
    {
        return Err(bad("only scheme://host:port is allowed"));
    }
    let url = format!("{scheme}://{rest}");
    let uri: ureq::http::Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
    match uri.host() {
        Some(h) if !h.is_empty() => {}
        _ => return Err(bad("it has no host")),
    }
    if let Some(p) = rest.rsplit_once(':').map(|(_, p)| p) {
        if !rest.ends_with(']') && p.parse::<u16>().is_err() {
            return Err(bad("the port is not a number from 0 to 65535"));
        }
    }
    Ok(url)
}

fn read_pem(what: &str, path: &Path) -> Result<Vec<u8>, EtcdError> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| {
        EtcdError::Config(format!(
            "cannot read the etcd {what} {}: {e}",
            path.display()
        ))
    })?;
    let mut buf = Vec::new();
    f.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| {
            EtcdError::Config(format!(
                "cannot read the etcd {what} {}: {e}",
                path.display()
            ))
        })?;
    if buf.len() as u64 > MAX_PEM_BYTES {
        return Err(EtcdError::Config(format!(
            "the etcd {what} {} is larger than 1 MiB",
            path.display()
        )));
    }
    Ok(buf)
}

type PemContents = (
    Vec<ureq::tls::Certificate<'static>>,
    Vec<ureq::tls::PrivateKey<'static>>,
);

fn parse_pem_file(what: &str, path: &Path) -> Result<PemContents, EtcdError> {
    let bytes = read_pem(what, path)?;
    let mut certs = Vec::new();
    let mut keys = Vec::new();
    for item in ureq::tls::parse_pem(&bytes) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(ureq::tls::PemItem::PrivateKey(k)) => keys.push(k),
            Ok(_) => {}
            Err(e) => {
                return Err(EtcdError::Config(format!(
                    "the etcd {what} {} is not valid PEM: {e}",
                    path.display()
                )))
            }
        }
    }
    Ok((certs, keys))
}

fn tls_config(
    ca_file: Option<&Path>,
    cert_file: Option<&Path>,
    key_file: Option<&Path>,
) -> Result<ureq::tls::TlsConfig, EtcdError> {
    use ureq::tls::{ClientCert, RootCerts, TlsConfig, TlsProvider};
    let mut b = TlsConfig::builder().provider(TlsProvider::Rustls);
    if let Some(ca) = ca_file {
        let (certs, _) = parse_pem_file("CA file", ca)?;
        if certs.is_empty() {
            return Err(EtcdError::Config(format!(
                "the etcd CA file {} holds no PEM certificate",
                ca.display()
            )));
        }
        b = b.root_certs(RootCerts::new_with_certs(&certs));
    }
    match (cert_file, key_file) {
        (None, None) => {}
        (Some(cert), Some(key)) => {
            let (chain, _) = parse_pem_file("client certificate", cert)?;
            if chain.is_empty() {
                return Err(EtcdError::Config(format!(
                    "the etcd client certificate {} holds no PEM certificate",
                    cert.display()
                )));
            }
            let (_, mut keys) = parse_pem_file("client key", key)?;
            if keys.len() != 1 {
                return Err(EtcdError::Config(format!(
                    "the etcd client key {} must hold exactly one PEM private key, not {}",
                    key.display(),
                    keys.len()
                )));
            }
            let key = keys.pop().expect("one key");
            b = b.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
        }
        (Some(_), None) => {
            return Err(EtcdError::Config(
                "an etcd client certificate is configured without its key_file".to_string(),
            ))
        }
        (None, Some(_)) => {
            return Err(EtcdError::Config(
                "an etcd client key is configured without its cert_file".to_string(),
            ))
        }
    }
    Ok(b.build())
}

// ---- request bodies ----------------------------------------------------

/// The smallest key greater than every key starting with `prefix`; `[0]`
/// (etcd's "to the end") when there is none.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn prefix_range(prefix: &[u8]) -> Value {
    // An empty prefix is every key: key "\0", range_end "\0".
    let key: &[u8] = if prefix.is_empty() { &[0] } else { prefix };
    json!({ "key": B64.encode(key), "range_end": B64.encode(prefix_end(prefix)) })
}

fn put_body(key: &[u8], value: &[u8], lease: i64) -> Value {
    let mut m = Map::new();
    m.insert("key".into(), B64.encode(key).into());
    m.insert("value".into(), B64.encode(value).into());
    if lease != 0 {
        m.insert("lease".into(), lease.to_string().into());
    }
    Value::Object(m)
}

fn compare_json(c: &Compare) -> Value {
    match c {
        Compare::ModRevision { key, equals } => json!({
            "result": "EQUAL", "target": "MOD", "key": B64.encode(key),
            "mod_revision": equals.to_string(),
        }),
        Compare::CreateRevision { key, equals } => json!({
            "result": "EQUAL", "target": "CREATE", "key": B64.encode(key),
            "create_revision": equals.to_string(),
        }),
        Compare::Value { key, equals } => json!({
            "result": "EQUAL", "target": "VALUE", "key": B64.encode(key),
            "value": B64.encode(equals),
        }),
    }
}

fn op_json(op: &Op) -> Value {
    match op {
        Op::Put { key, value, lease } => json!({ "request_put": put_body(key, value, *lease) }),
        Op::Delete { key } => json!({ "request_delete_range": { "key": B64.encode(key) } }),
        Op::Get { key } => json!({ "request_range": { "key": B64.encode(key) } }),
        Op::GetPrefix { prefix } => json!({ "request_range": prefix_range(prefix) }),
    }
}

// ---- response parsing (hostile input: never panic) ---------------------

/// Turns an HTTP answer into a [`Reply`].
fn parse_reply(status: u16, body: &[u8]) -> Reply {
    // Streaming endpoints (lease keepalive) answer newline-separated JSON
    // objects; the first one is ours.
    let first = serde_json::Deserializer::from_slice(body)
        .into_iter::<Value>()
        .next();
    let v = match first {
        Some(Ok(v @ Value::Object(_))) => v,
        _ if status >= 500 => {
            return Reply::Transport {
                sent: true,
                tls: false,
                reason: format!("HTTP {status} without an etcd error"),
            }
        }
        Some(Ok(_)) => {
            return Reply::Garbage(format!(
                "HTTP {status} and a JSON body that is not an object"
            ))
        }
        Some(Err(e)) => {
            return Reply::Garbage(format!("HTTP {status} and a body that is not JSON ({e})"))
        }
        None => return Reply::Garbage(format!("HTTP {status} and an empty body")),
    };
    // Unary errors: {"error": "...", "message": "...", "code": N}. Stream
    // errors: {"error": {"grpc_code": N, "http_code": N, "message": "..."}}.
    let err = match v.get("error") {
        Some(Value::String(s)) if status != 200 || !s.is_empty() => Some((
            v.get("message")
                .and_then(Value::as_str)
                .unwrap_or(s)
                .to_string(),
            v.get("code").and_then(Value::as_i64).unwrap_or(0),
            status,
        )),
        Some(Value::Object(e)) => Some((
            e.get("message")
                .and_then(Value::as_str)
                .unwrap_or("unknown error")
                .to_string(),
            e.get("grpc_code").and_then(Value::as_i64).unwrap_or(0),
            e.get("http_code")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .filter(|_| status == 200)
                .unwrap_or(status),
        )),
        _ => None,
    };
    match err {
        Some((message, code, status)) => Reply::Etcd {
            status,
            code,
            message: clip(&message),
        },
        None if status == 200 => Reply::Ok(v),
        None => Reply::Garbage(format!("HTTP {status} without an etcd error message")),
    }
}

/// Keeps error messages from a hostile server to one short line.
fn clip(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    s
}

/// An int64 field: etcd sends a JSON string, plain numbers are accepted;
/// absent means 0 (proto3 leaves zero values out).
fn int_field(v: &Value, name: &str) -> Result<i64, String> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| format!("field '{name}' is not an integer ('{}')", clip(s))),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| format!("field '{name}' is not a 64-bit integer")),
        Some(_) => Err(format!("field '{name}' is not an integer")),
    }
}

/// A uint64 field under the first of `names` present; absent means 0.
fn uint_field(v: &Value, names: &[&str]) -> Result<u64, String> {
    let Some((name, field)) = names.iter().find_map(|n| v.get(*n).map(|f| (*n, f))) else {
        return Ok(0);
    };
    match field {
        Value::Null => Ok(0),
        Value::String(s) => s
            .parse()
            .map_err(|_| format!("field '{name}' is not an unsigned integer ('{}')", clip(s))),
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| format!("field '{name}' is not an unsigned 64-bit integer")),
        _ => Err(format!("field '{name}' is not an unsigned integer")),
    }
}

fn bytes_field(v: &Value, name: &str) -> Result<Vec<u8>, String> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => B64
            .decode(s)
            .map_err(|e| format!("field '{name}' is not valid base64 ({e})")),
        Some(_) => Err(format!("field '{name}' is not a base64 string")),
    }
}

fn header_revision(v: &Value) -> Result<i64, String> {
    match v.get("header") {
        Some(h @ Value::Object(_)) => int_field(h, "revision"),
        Some(_) => Err("a header that is not an object".to_string()),
        None => Err("no header".to_string()),
    }
}

fn parse_kv(v: &Value) -> Result<KeyValue, String> {
    if !v.is_object() {
        return Err("a key-value that is not an object".to_string());
    }
    Ok(KeyValue {
        key: bytes_field(v, "key")?,
        value: bytes_field(v, "value")?,
        create_revision: int_field(v, "create_revision")?,
        mod_revision: int_field(v, "mod_revision")?,
        version: int_field(v, "version")?,
        lease: int_field(v, "lease")?,
    })
}

/// A RangeResponse; `default_revision` is used when it has no header (as
/// inside some transaction answers).
fn parse_range(v: &Value, default_revision: Option<i64>) -> Result<RangeResult, String> {
    let revision = match (v.get("header"), default_revision) {
        (None, Some(r)) => r,
        _ => header_revision(v)?,
    };
    let kvs = match v.get("kvs") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.iter().map(parse_kv).collect::<Result<_, _>>()?,
        Some(_) => return Err("'kvs' that is not a list".to_string()),
    };
    Ok(RangeResult { revision, kvs })
}

fn parse_txn(v: &Value, success: &[Op], failure: &[Op]) -> Result<TxnResult, String> {
    let revision = header_revision(v)?;
    let succeeded = match v.get("succeeded") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("'succeeded' that is not a boolean".to_string()),
    };
    let branch = if succeeded { success } else { failure };
    let responses: &[Value] = match v.get("responses") {
        None | Some(Value::Null) => &[],
        Some(Value::Array(a)) => a,
        Some(_) => return Err("'responses' that is not a list".to_string()),
    };
    if responses.len() != branch.len() {
        return Err(format!(
            "{} responses for a branch of {} operations",
            responses.len(),
            branch.len()
        ));
    }
    let mut ranges = Vec::new();
    for (op, r) in branch.iter().zip(responses) {
        let expected = match op {
            Op::Put { .. } => "response_put",
            Op::Delete { .. } => "response_delete_range",
            Op::Get { .. } | Op::GetPrefix { .. } => "response_range",
        };
        let Some(inner) = r.get(expected) else {
            return Err(format!("a response without the expected '{expected}'"));
        };
        if expected == "response_range" {
            ranges.push(parse_range(inner, Some(revision))?);
        }
    }
    Ok(TxnResult {
        succeeded,
        revision,
        ranges,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn etcd_client_is_send_and_sync() {
        assert_send_sync::<Etcd>();
    }

    #[test]
    fn endpoints_are_normalised_and_checked() {
        assert_eq!(
            normalize_endpoint("127.0.0.1:2379").unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(normalize_endpoint(" http://h:1/ ").unwrap(), "http://h:1");
        assert_eq!(normalize_endpoint("HTTPS://h:1").unwrap(), "https://h:1");
        assert_eq!(
            normalize_endpoint("[::1]:2379").unwrap(),
            "http://[::1]:2379"
        );
        for bad in [
            "",
            "ftp://h:1",
            "http://",
            "http://h:1/v3",
            "h:port",
            "u@h:1",
            "h:99999",
        ] {
            match normalize_endpoint(bad) {
                Err(EtcdError::Config(msg)) => assert!(msg.contains("etcd endpoint"), "{msg}"),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn options_are_validated_without_contacting_etcd() {
        let ok = Etcd::new(EtcdOptions::new(["127.0.0.1:1"])).unwrap();
        assert_eq!(ok.endpoints(), ["http://127.0.0.1:1"]);
        let cases = [
            EtcdOptions::default(),
            EtcdOptions {
                timeout: Duration::ZERO,
                ..EtcdOptions::new(["h:1"])
            },
            EtcdOptions {
                user: Some("root".into()),
                ..EtcdOptions::new(["h:1"])
            },
            EtcdOptions {
                password: Some("pw".into()),
                ..EtcdOptions::new(["h:1"])
            },
            EtcdOptions {
                ca_file: Some("/nonexistent/ca.pem".into()),
                ..EtcdOptions::new(["https://h:1"])
            },
            EtcdOptions {
                cert_file: Some("/nonexistent/c.pem".into()),
                ..EtcdOptions::new(["https://h:1"])
            },
        ];
        for opts in cases {
            let shown = format!("{opts:?}");
            match Etcd::new(opts) {
                Err(EtcdError::Config(_)) => {}
                Err(e) => panic!("{shown}: {e:?}"),
                Ok(_) => panic!("{shown} was accepted"),
            }
        }
    }

    #[test]
    fn a_ca_file_without_certificates_is_a_config_error() {
        let dir = std::env::temp_dir().join(format!("dkv-etcd-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("empty.pem");
        std::fs::write(&f, "not a certificate\n").unwrap();
        let r = Etcd::new(EtcdOptions {
            ca_file: Some(f.clone()),
            ..EtcdOptions::new(["https://h:1"])
        });
        let _ = std::fs::remove_dir_all(&dir);
        match r {
            Err(EtcdError::Config(m)) => assert!(m.contains("no PEM certificate"), "{m}"),
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn the_password_is_not_shown_by_debug() {
        let o = EtcdOptions {
            user: Some("root".into()),
            password: Some("s3cret".into()),
            ..EtcdOptions::new(["h:1"])
        };
        assert!(!format!("{o:?}").contains("s3cret"));
        let e = Etcd::new(o).unwrap();
        assert!(!format!("{e:?}").contains("s3cret"));
        assert!(format!("{e:?}").contains("root"));
    }

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"a"), b"b");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), [0]);
        assert_eq!(prefix_end(b""), [0]);
        assert_eq!(prefix_end(&[1, 0xfe]), [1, 0xff]);
    }

    #[test]
    fn a_range_answer_is_parsed() {
        let v: Value = serde_json::from_str(
            r#"{"header":{"revision":"7"},"kvs":[{"key":"Zm9v","create_revision":"2",
               "mod_revision":"5","version":"3","value":"YmFy","lease":"9"}],"count":"1"}"#,
        )
        .unwrap();
        let r = parse_range(&v, None).unwrap();
        assert_eq!(r.revision, 7);
        assert_eq!(
            r.kvs,
            [KeyValue {
                key: b"foo".to_vec(),
                value: b"bar".to_vec(),
                create_revision: 2,
                mod_revision: 5,
                version: 3,
                lease: 9
            }]
        );
    }

    #[test]
    fn hostile_answers_are_errors_not_panics() {
        let bad = [
            r#"{"header":{"revision":"x"}}"#,
            r#"{"header":{"revision":"1"},"kvs":[{"key":"!!!"}]}"#,
            r#"{"header":{"revision":"1"},"kvs":{"key":"Zm9v"}}"#,
            r#"{"header":{"revision":"1"},"kvs":[7]}"#,
            r#"{"header":{"revision":99999999999999999999999}}"#,
            r#"{"header":[]}"#,
            r#"{}"#,
        ];
        for b in bad {
            let v: Value = serde_json::from_str(b).unwrap();
            assert!(parse_range(&v, None).is_err(), "{b} was accepted");
        }
        for (status, body) in [
            (200, &b"not json"[..]),
            (200, b"[1,2]"),
            (200, b""),
            (400, b"<html>"),
            (200, b"\xff\xfe"),
        ] {
            assert!(
                matches!(parse_reply(status, body), Reply::Garbage(_)),
                "{body:?}"
            );
        }
        assert!(matches!(
            parse_reply(502, b"bad gateway"),
            Reply::Transport { sent: true, .. }
        ));
    }

    #[test]
    fn etcd_errors_are_recognised() {
        match parse_reply(
            503,
            br#"{"error":"etcdserver: no leader","message":"etcdserver: no leader","code":14}"#,
        ) {
            Reply::Etcd {
                status,
                code,
                message,
            } => {
                assert_eq!((status, code), (503, 14));
                assert!(is_unavailable_error(code, &message));
                assert!(is_not_applied_error(&message));
            }
            other => panic!("{other:?}"),
        }
        match parse_reply(200, br#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: request timed out"}}"#) {
            Reply::Etcd { status, code, message } => {
                assert_eq!((status, code), (503, 14));
                assert!(is_unavailable_error(code, &message));
                assert!(!is_not_applied_error(&message));
            }
            other => panic!("{other:?}"),
        }
        assert!(is_token_error("etcdserver: invalid auth token"));
        assert!(is_auth_error(
            3,
            "etcdserver: authentication failed, invalid user ID or password"
        ));
        assert!(is_auth_error(7, "etcdserver: permission denied"));
        assert!(!is_auth_error(5, "etcdserver: requested lease not found"));
    }

    #[test]
    fn txn_answers_are_matched_to_the_branch() {
        let get = Op::Get { key: b"k".to_vec() };
        let put = Op::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            lease: 0,
        };
        let v: Value = serde_json::from_str(
            r#"{"header":{"revision":"3"},"succeeded":true,"responses":[
                {"response_put":{"header":{"revision":"3"}}},
                {"response_range":{"header":{"revision":"3"},"kvs":[{"key":"aw==","value":"dg=="}]}}]}"#,
        )
        .unwrap();
        let t = parse_txn(&v, &[put.clone(), get.clone()], &[]).unwrap();
        assert!(t.succeeded);
        assert_eq!(t.revision, 3);
        assert_eq!(t.ranges.len(), 1);
        assert_eq!(t.ranges[0].kvs[0].value, b"v");
        // The failure branch was taken ("succeeded" left out) with no ops.
        let v: Value = serde_json::from_str(r#"{"header":{"revision":"4"}}"#).unwrap();
        let t = parse_txn(&v, std::slice::from_ref(&put), &[]).unwrap();
        assert!(!t.succeeded);
        // Responses that do not match the branch.
        assert!(parse_txn(&v, &[], std::slice::from_ref(&get)).is_err());
        let v: Value = serde_json::from_str(
            r#"{"header":{"revision":"3"},"succeeded":true,"responses":[{"response_put":{}}]}"#,
        )
        .unwrap();
        assert!(parse_txn(&v, &[get], &[]).is_err());
    }

    #[test]
    fn request_bodies_follow_the_gateway_mapping() {
        let c = compare_json(&Compare::ModRevision {
            key: b"k".to_vec(),
            equals: 0,
        });
        assert_eq!(
            c,
            json!({"result":"EQUAL","target":"MOD","key":"aw==","mod_revision":"0"})
        );
        assert_eq!(
            op_json(&Op::GetPrefix { prefix: Vec::new() }),
            json!({"request_range":{"key":"AA==","range_end":"AA=="}})
        );
        assert_eq!(put_body(b"k", b"", 0), json!({"key":"aw==","value":""}));
        assert_eq!(put_body(b"k", b"v", 5)["lease"], "5");
    }
}
