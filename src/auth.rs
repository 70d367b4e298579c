//! Who may speak: the cluster secret and the client password.
//!
//! **Cluster secret.** Server and nodes share a secret (`cluster-secret-file`
//! in config.json, or `DKV_CLUSTER_SECRET`). With it:
//!
//! * every beacon carries `HMAC-SHA256(beacon key, datagram)` and a sequence
//!   number; a receiver drops beacons whose tag is wrong (*forged*) and those
//!   whose (incarnation, sequence) is not newer than the last one it accepted
//!   from that node (*replayed*), and counts both;
//! * every node-to-node and node-to-server TCP connection starts with a nonce
//!   exchange: the connector sends a nonce in its `Hello`, the acceptor answers
//!   with its own nonce and a proof `HMAC(K, "accept" ‖ nonce_c ‖ nonce_a)`, and
//!   both derive a session key `HMAC(K, "session" ‖ nonce_c ‖ nonce_a)`. Every
//!   later frame in either direction carries `HMAC(session key, direction ‖
//!   sequence ‖ body)`, with the sequence implicit (a counter per direction), so
//!   a frame cannot be forged, replayed, reordered or moved to another
//!   connection. The connector's first frame proves it knows the secret.
//!
//! Without a secret the cluster runs open: frames and beacons carry no tag and
//! anyone who can reach the ports can join. Server and nodes say so at start.
//!
//! **Client password.** Optional (`client-password-file`, or `DKV_PASSWORD`).
//! A client connection must send `Auth` (native) or `AUTH` (RESP) first;
//! everything else is refused with "authentication required". One [`Gate`]
//! per connection decides, for every front-end that takes the password: the
//! node's native and RESP ports, the server's client port and its Sentinel
//! port. It counts and logs (sampled) wrong passwords and says when a
//! connection has tried too many.
//!
//! Nothing here encrypts: traffic can be read by anyone on the path.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

type HmacSha256 = Hmac<Sha256>;

/// Bytes of every tag.
pub const TAG_LEN: usize = 32;
/// Bytes of a handshake nonce.
pub const NONCE_LEN: usize = 16;
/// Shortest secret accepted (a passphrase shorter than this is guessable).
pub const MIN_SECRET_BYTES: usize = 16;
/// Environment variable holding the cluster secret.
pub const SECRET_ENV: &str = "DKV_CLUSTER_SECRET";
/// Environment variable holding the client password.
pub const PASSWORD_ENV: &str = "DKV_PASSWORD";

/// Largest frame a client connection may send before it authenticated
/// (an `Auth` request with a password of at most 4 KiB fits).
pub const MAX_UNAUTHENTICATED_FRAME: usize = 8 * 1024;
/// The refusal of a frame too large for a connection that has not
/// authenticated: says why the limit is so small.
pub fn unauthenticated_too_large(e: &impl std::fmt::Display) -> String {
    format!(
        "{e}: before AUTH a client may send at most {MAX_UNAUTHENTICATED_FRAME} bytes per frame"
    )
}

/// Wrong passwords one connection may try before it is closed.
pub const MAX_AUTH_FAILURES: u32 = 3;

pub type Tag = [u8; TAG_LEN];
pub type Nonce = [u8; NONCE_LEN];

/// The cluster secret, as the keys derived from it.
#[derive(Clone)]
pub struct ClusterKey {
    beacon: HmacSha256,
    handshake: HmacSha256,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

fn mac_of(key: &[u8]) -> HmacSha256 {
    <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes keys of any length")
}

fn tag_of(mac: &HmacSha256, parts: &[&[u8]]) -> Tag {
    let mut m = mac.clone();
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

fn verify(mac: &HmacSha256, parts: &[&[u8]], tag: &[u8]) -> bool {
    let mut m = mac.clone();
    for p in parts {
        m.update(p);
    }
    m.verify_slice(tag).is_ok()
}

impl ClusterKey {
    /// Derives the keys from the secret's bytes.
    pub fn new(secret: &[u8]) -> ClusterKey {
        let root = mac_of(secret);
        ClusterKey {
            beacon: mac_of(&tag_of(&root, &[b"dkv beacon key v1"])),
            handshake: mac_of(&tag_of(&root, &[b"dkv handshake key v1"])),
        }
    }

    /// Tag for a beacon datagram body.
    pub fn beacon_tag(&self, body: &[u8]) -> Tag {
        tag_of(&self.beacon, &[body])
    }

    pub fn beacon_ok(&self, body: &[u8], tag: &[u8]) -> bool {
        verify(&self.beacon, &[body], tag)
    }

    /// The acceptor's proof that it knows the secret.
    pub fn accept_proof(&self, connector: &Nonce, acceptor: &Nonce) -> Tag {
        tag_of(&self.handshake, &[b"accept", connector, acceptor])
    }

    pub fn accept_proof_ok(&self, connector: &Nonce, acceptor: &Nonce, proof: &[u8]) -> bool {
        verify(&self.handshake, &[b"accept", connector, acceptor], proof)
    }

    /// The two halves of a session: (what the connector sends with, what it reads with).
    pub fn session(&self, connector: &Nonce, acceptor: &Nonce) -> (SessionKey, SessionKey) {
        let key = tag_of(&self.handshake, &[b"session", connector, acceptor]);
        let mac = mac_of(&key);
        (
            SessionKey {
                mac: mac.clone(),
                direction: b'c',
            },
            SessionKey {
                mac,
                direction: b'a',
            },
        )
    }
}

/// One direction of an authenticated connection's key.
#[derive(Clone)]
pub struct SessionKey {
    mac: HmacSha256,
    direction: u8,
}

impl SessionKey {
    pub fn tag(&self, seq: u64, body: &[u8]) -> Tag {
        tag_of(&self.mac, &[&[self.direction], &seq.to_le_bytes(), body])
    }

    pub fn ok(&self, seq: u64, body: &[u8], tag: &[u8]) -> bool {
        verify(
            &self.mac,
            &[&[self.direction], &seq.to_le_bytes(), body],
            tag,
        )
    }
}

/// A fresh random nonce.
pub fn nonce() -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).expect("the OS random source works");
    n
}

/// Reads the cluster secret: `DKV_CLUSTER_SECRET` wins over the file named in
/// config. `None` means the cluster runs open.
pub fn load_cluster_key(file: Option<&str>) -> Result<Option<ClusterKey>, String> {
    let secret = match std::env::var_os(SECRET_ENV) {
        Some(v) => Some((v.into_encoded_bytes(), SECRET_ENV.to_string())),
        None => match file {
            Some(f) => Some((read_secret_file(Path::new(f))?, f.to_string())),
            None => None,
        },
    };
    match secret {
        None => Ok(None),
        Some((bytes, from)) => {
            if bytes.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "the cluster secret from {from} is {} bytes; it needs at least {MIN_SECRET_BYTES}",
                    bytes.len()
                ));
            }
            Ok(Some(ClusterKey::new(&bytes)))
        }
    }
}

/// A client password, kept only as its SHA-256 digest.
#[derive(Clone)]
pub struct Password([u8; 32]);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

impl Password {
    pub fn new(password: &[u8]) -> Password {
        Password(Sha256::digest(password).into())
    }

    /// Compares in time independent of where the guess differs.
    pub fn matches(&self, guess: &[u8]) -> bool {
        let g: [u8; 32] = Sha256::digest(guess).into();
        g.iter()
            .zip(self.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// Reads the password a server or node requires: `DKV_PASSWORD` wins over the
/// file named in config. `None`: no password.
pub fn load_password(file: Option<&str>) -> Result<Option<Password>, String> {
    let bytes = match std::env::var_os(PASSWORD_ENV) {
        Some(v) => v.into_encoded_bytes(),
        None => match file {
            Some(f) => read_secret_file(Path::new(f))?,
            None => return Ok(None),
        },
    };
    if bytes.is_empty() {
        return Err("the client password is empty".into());
    }
    Ok(Some(Password::new(&bytes)))
}

/// The password a client sends: `--password` wins over `DKV_PASSWORD`.
pub fn client_password(flag: Option<String>) -> Option<Vec<u8>> {
    flag.map(String::into_bytes).or_else(|| {
        std::env::var_os(PASSWORD_ENV)
            .map(|v| v.into_encoded_bytes())
            .filter(|v| !v.is_empty())
    })
}

/// A secret file's text (mode 600, at most 4 KiB, trailing newline cut).
pub fn read_secret_text(path: &Path) -> Result<String, String> {
    let bytes = read_secret_file(path)?;
    String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8 text", path.display()))
}

/// A secret file's contents without a trailing newline. Refuses files others
/// can read, as ssh does for keys.
fn read_secret_file(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > 4096 {
        return Err(format!(
            "{}: {} bytes; a secret file holds at most 4096",
            path.display(),
            meta.len()
        ));
    }
    crate::tls::owner_only(path, &meta, "the secret")?;
    let mut bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    Ok(bytes)
}

/// Why a beacon was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BeaconVerdict {
    Accept,
    /// Not newer than one already accepted from the same node.
    Replayed,
}

/// Remembers the newest (incarnation, sequence) accepted from each node, so a
/// captured beacon cannot be played back later (to keep a dead node "alive",
/// say). Holds at most `capacity` nodes; beyond that unknown senders are
/// refused, so a flood of invented node ids cannot grow it.
pub struct ReplayGuard {
    seen: HashMap<u64, (u64, u64)>,
    capacity: usize,
}

impl ReplayGuard {
    pub fn new(capacity: usize) -> ReplayGuard {
        ReplayGuard {
            seen: HashMap::new(),
            capacity,
        }
    }

    /// Forgets every node `keep` rejects (members that left), when full.
    pub fn prune_when_full(&mut self, keep: impl Fn(u64) -> bool) {
        if self.seen.len() >= self.capacity {
            self.seen.retain(|id, _| keep(*id));
        }
    }

    pub fn check(&mut self, from: u64, incarnation: u64, seq: u64) -> BeaconVerdict {
        match self.seen.get_mut(&from) {
            Some(last) => {
                if (incarnation, seq) <= *last {
                    return BeaconVerdict::Replayed;
                }
                *last = (incarnation, seq);
            }
            None => {
                if self.seen.len() >= self.capacity {
                    return BeaconVerdict::Replayed;
                }
                self.seen.insert(from, (incarnation, seq));
            }
        }
        BeaconVerdict::Accept
    }
}

/// Counters of what the authentication layer refused, for `status` and INFO.
#[derive(Debug, Default)]
pub struct AuthCounters {
    pub forged_beacons: AtomicU64,
    pub replayed_beacons: AtomicU64,
    /// Peer connections refused: failed handshake proof or a frame tag.
    pub rejected_peers: AtomicU64,
    /// Client AUTH attempts with a wrong password.
    pub failed_auth: AtomicU64,
}

impl AuthCounters {
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

pub use crate::tls::log_sampled;

/// The refusal of a request sent before the client authenticated (native
/// protocol, node and server).
pub const AUTH_REQUIRED: &str = "authentication required: send the client password (AUTH) first";
/// The refusal of a wrong password (native protocol).
pub const WRONG_PASSWORD: &str = "invalid password";
/// The refusal of a password sent where none is configured (native protocol).
pub const NO_PASSWORD_SET: &str = "AUTH sent but no client password is configured";

/// What [`Gate::admit`] decided about one password.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The password is right: the connection may send anything now.
    Admitted,
    /// A wrong password: counted in [`AuthCounters::failed_auth`] and logged
    /// (sampled). The connection keeps the state it had (one that was
    /// authenticated stays so); [`Gate::exhausted`] says when to close it.
    Refused,
    /// A password was sent but none is configured. Not counted.
    NoPasswordSet,
}

/// Who may speak on one client connection: the client password check shared
/// by every front-end (native protocol at the node and the server, RESP,
/// Sentinel). The front-end keeps one per connection, parses its protocol's
/// AUTH, asks [`admit`](Gate::admit), and refuses everything else while
/// [`is_authenticated`](Gate::is_authenticated) is false.
#[derive(Clone, Debug)]
pub struct Gate {
    expected: Option<Password>,
    authenticated: bool,
    failures: u32,
}

impl Gate {
    /// A connection to a process that requires `expected` (`None`: no
    /// password, the connection is authenticated from the start).
    pub fn new(expected: Option<Password>) -> Gate {
        Gate {
            authenticated: expected.is_none(),
            expected,
            failures: 0,
        }
    }

    /// A connection that proved itself otherwise (a cluster member, by the
    /// handshake with the cluster secret).
    pub fn trusted() -> Gate {
        Gate {
            expected: None,
            authenticated: true,
            failures: 0,
        }
    }

    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// Checks a password. A wrong one bumps `counters.failed_auth` and logs
    /// `what()` for the 1st, 2nd, 4th, ... failure of the process (see
    /// [`log_sampled`]).
    pub fn admit(
        &mut self,
        password: &[u8],
        counters: &AuthCounters,
        what: impl FnOnce() -> String,
    ) -> Verdict {
        let Some(expected) = &self.expected else {
            return Verdict::NoPasswordSet;
        };
        if expected.matches(password) {
            self.authenticated = true;
            return Verdict::Admitted;
        }
        self.failures += 1;
        AuthCounters::bump(&counters.failed_auth);
        log_sampled(AuthCounters::get(&counters.failed_auth), what);
        Verdict::Refused
    }

    /// True once the connection tried [`MAX_AUTH_FAILURES`] wrong passwords:
    /// the front-end closes it after its reply.
    pub fn exhausted(&self) -> bool {
        self.failures >= MAX_AUTH_FAILURES
    }

    /// The largest frame the connection may send now: `authenticated` once
    /// it is, [`MAX_UNAUTHENTICATED_FRAME`] before.
    pub fn max_frame(&self, authenticated: usize) -> usize {
        if self.authenticated {
            authenticated
        } else {
            MAX_UNAUTHENTICATED_FRAME
        }
    }
}

/// The TLS material the config names, loaded and watched for changes.
fn load_tls(
    cfg: &crate::config::Config,
) -> Result<Option<std::sync::Arc<crate::tls::Tls>>, String> {
    let (cert, key, ca) = (&cfg.tls_cert_file, &cfg.tls_key_file, &cfg.tls_ca_file);
    match (cert, key, ca) {
        (None, None, None) => {
            if cfg.tls_auth_clients {
                return Err(
                    "tls-auth-clients is set without tls-cert-file, tls-key-file and tls-ca-file"
                        .into(),
                );
            }
            Ok(None)
        }
        (Some(cert), Some(key), Some(ca)) => {
            let tls = crate::tls::Tls::load(crate::tls::TlsFiles {
                cert: cert.into(),
                key: key.into(),
                ca: ca.into(),
                auth_clients: cfg.tls_auth_clients,
            })?;
            tls.watch();
            Ok(Some(tls))
        }
        _ => Err("TLS needs all three of tls-cert-file, tls-key-file and tls-ca-file".into()),
    }
}

/// What a server or node checks of the processes that talk to it.
#[derive(Clone, Debug, Default)]
pub struct Security {
    /// None: the cluster runs open.
    pub cluster_key: Option<ClusterKey>,
    /// None: clients need no password.
    pub password: Option<Password>,
    /// None: clear text (see `tls-cert-file`).
    pub tls: Option<std::sync::Arc<crate::tls::Tls>>,
}

impl Security {
    /// Loads the secret and the password named by the config (or the
    /// environment variables that override it).
    pub fn from_config(cfg: &crate::config::Config) -> Result<Security, String> {
        Ok(Security {
            cluster_key: load_cluster_key(cfg.cluster_secret_file.as_deref())?,
            password: load_password(cfg.client_password_file.as_deref())?,
            tls: load_tls(cfg)?,
        })
    }

    /// Logs, once at start, what an open configuration lets strangers do.
    pub fn warn_if_open(&self, who: &str) {
        if self.cluster_key.is_none() {
            log::warn!(
                "{who}: no cluster secret (cluster-secret-file or {SECRET_ENV}): anyone who can \
                 reach this cluster's ports can join it, send beacons and take part in elections"
            );
            if self.password.is_some() {
                log::warn!(
                    "{who}: a client password without a cluster secret protects little: a \
                     stranger can register as a node and receive the replication stream"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_others_can_read_is_refused_with_a_sentence() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("dkv-secret-{}", std::process::id()));
        std::fs::write(&path, "0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret_file(&path).unwrap_err();
        assert!(
            err.contains("let other users read the secret; chmod 600 it"),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret_file(&path).unwrap(), b"0123456789abcdef");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn tags_depend_on_secret_direction_and_sequence() {
        let k = ClusterKey::new(b"0123456789abcdef");
        let other = ClusterKey::new(b"0123456789abcdeF");
        let t = k.beacon_tag(b"body");
        assert!(k.beacon_ok(b"body", &t));
        assert!(!other.beacon_ok(b"body", &t));
        assert!(!k.beacon_ok(b"bodY", &t));

        let (c, a) = (nonce(), nonce());
        assert_ne!(c, a);
        let proof = k.accept_proof(&c, &a);
        assert!(k.accept_proof_ok(&c, &a, &proof));
        assert!(!other.accept_proof_ok(&c, &a, &proof));
        assert!(!k.accept_proof_ok(&a, &c, &proof));

        let (to_acceptor, to_connector) = k.session(&c, &a);
        let tag = to_acceptor.tag(0, b"frame");
        assert!(to_acceptor.ok(0, b"frame", &tag));
        assert!(!to_acceptor.ok(1, b"frame", &tag), "sequence is bound");
        assert!(!to_connector.ok(0, b"frame", &tag), "direction is bound");
        let (other_session, _) = k.session(&nonce(), &a);
        assert!(!other_session.ok(0, b"frame", &tag), "session is bound");
    }

    #[test]
    fn replay_guard_accepts_only_newer_beacons() {
        let mut g = ReplayGuard::new(2);
        assert_eq!(g.check(1, 1, 5), BeaconVerdict::Accept);
        assert_eq!(g.check(1, 1, 5), BeaconVerdict::Replayed);
        assert_eq!(g.check(1, 1, 4), BeaconVerdict::Replayed);
        assert_eq!(g.check(1, 1, 6), BeaconVerdict::Accept);
        // A restart (higher incarnation) starts its sequence again.
        assert_eq!(g.check(1, 2, 1), BeaconVerdict::Accept);
        assert_eq!(g.check(1, 1, 100), BeaconVerdict::Replayed);
        assert_eq!(g.check(2, 1, 1), BeaconVerdict::Accept);
        assert_eq!(
            g.check(3, 1, 1),
            BeaconVerdict::Replayed,
            "bounded: a third sender does not fit"
        );
        // Once node 2 is no longer a member, node 3 fits.
        g.prune_when_full(|id| id != 2);
        assert_eq!(g.check(3, 1, 1), BeaconVerdict::Accept);
        assert_eq!(
            g.check(1, 2, 1),
            BeaconVerdict::Replayed,
            "node 1 is remembered"
        );
    }

    #[test]
    fn gate_without_password_admits_everyone_and_refuses_auth() {
        let c = AuthCounters::default();
        let mut g = Gate::new(None);
        assert!(g.is_authenticated());
        assert_eq!(g.max_frame(1 << 20), 1 << 20);
        assert_eq!(
            g.admit(b"x", &c, || unreachable!("nothing to log")),
            Verdict::NoPasswordSet
        );
        assert!(g.is_authenticated() && !g.exhausted());
        assert_eq!(AuthCounters::get(&c.failed_auth), 0);
        let mut t = Gate::trusted();
        assert!(t.is_authenticated());
        assert_eq!(t.admit(b"x", &c, String::new), Verdict::NoPasswordSet);
    }

    #[test]
    fn gate_counts_wrong_passwords_and_closes_after_the_last_allowed() {
        let c = AuthCounters::default();
        let mut g = Gate::new(Some(Password::new(b"hunter2")));
        assert!(!g.is_authenticated());
        assert_eq!(g.max_frame(1 << 20), MAX_UNAUTHENTICATED_FRAME);
        for i in 1..MAX_AUTH_FAILURES {
            assert_eq!(g.admit(b"guess", &c, String::new), Verdict::Refused);
            assert!(!g.is_authenticated());
            assert!(!g.exhausted(), "{i} failures");
        }
        assert_eq!(
            AuthCounters::get(&c.failed_auth),
            (MAX_AUTH_FAILURES - 1) as u64
        );
        assert_eq!(g.admit(b"hunter2", &c, String::new), Verdict::Admitted);
        assert!(g.is_authenticated());
        assert_eq!(g.max_frame(1 << 20), 1 << 20);
        // A wrong password after success is counted but does not log out.
        assert_eq!(g.admit(b"guess", &c, String::new), Verdict::Refused);
        assert!(g.is_authenticated());
        assert!(g.exhausted());
        assert_eq!(AuthCounters::get(&c.failed_auth), MAX_AUTH_FAILURES as u64);
        // Another connection starts with a clean slate; the counter is the process's.
        let g2 = Gate::new(Some(Password::new(b"hunter2")));
        assert!(!g2.exhausted() && !g2.is_authenticated());
    }

    #[test]
    fn password_matches_only_itself() {
        let p = Password::new(b"hunter2");
        assert!(p.matches(b"hunter2"));
        assert!(!p.matches(b"hunter3"));
        assert!(!p.matches(b""));
    }
}
