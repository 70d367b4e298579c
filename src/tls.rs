//! TLS for every TCP port and member link (rustls, blocking, over
//! [`Stream`]).
//!
//! Crypto provider: *ring*. It builds from C and assembly with the `cc`
//! crate alone, in about 20 s on two cores, and the etcd client (ureq)
//! already pulls it in; aws-lc-rs, rustls's default, needs cmake (and takes
//! minutes to build) for nothing this project uses.
//!
//! One [`Tls`] per process, built from `tls-cert-file`, `tls-key-file` and
//! `tls-ca-file`:
//! * as a server (every accepted connection): its certificate; a client
//!   certificate is verified against the CA when presented, and required
//!   when `tls-auth-clients` is set. A member link (registration, status,
//!   replication, snapshots) must present one: see [`require_member_cert`];
//! * as a client of other members: the CA as the only root, and its own
//!   certificate as client certificate (mutual TLS).
//!
//! The files are read again when they change (checked every second) or on
//! SIGHUP; connections opened after that use them. A reload that fails
//! (a half-written file) keeps the previous certificates and says why.

mod stream;

use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
pub use stream::{tls_error, Stream, TlsFailure};

/// The largest certificate or key file read (a CA bundle included).
const MAX_PEM_BYTES: u64 = 1 << 20;

/// Where a process's TLS material is (config keys and flags of the same names).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// Clients must present a certificate signed by the CA.
    pub auth_clients: bool,
}

/// A client's TLS setting: the CA to trust, and optionally a client
/// certificate (`--tls-ca`, `--tls-cert`, `--tls-key`).
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

impl ClientTls {
    /// Trust the CA certificates in `ca`; present `cert`/`key` if given.
    pub fn from_files(ca: &Path, cert_key: Option<(&Path, &Path)>) -> Result<ClientTls, String> {
        let roots = roots(ca)?;
        let config = match cert_key {
            Some((cert, key)) => {
                let (chain, key) = cert_and_key(cert, key)?;
                client_builder(roots)?
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("{}: {e}", cert.display()))?
            }
            None => client_builder(roots)?.with_no_client_auth(),
        };
        Ok(ClientTls {
            config: Arc::new(config),
        })
    }

    /// Runs the client handshake with `host` (the name or address the
    /// certificate must carry) over `sock`, within `timeout`.
    pub fn connect(
        &self,
        host: &str,
        sock: TcpStream,
        timeout: Duration,
    ) -> std::io::Result<Stream> {
        let name = server_name(host)?;
        let conn = ClientConnection::new(self.config.clone(), name).map_err(tls_error)?;
        Stream::tls(sock, conn.into(), timeout).map_err(|e| explain_client(host, e))
    }
}

/// The host part of "host:port" as a TLS server name.
fn server_name(host: &str) -> std::io::Result<ServerName<'static>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("'{host}' is not a name or address TLS can check: {e}"),
        )
    })
}

/// A client-side handshake error in words an operator can act on.
fn explain_client(host: &str, e: std::io::Error) -> std::io::Error {
    let hint = match e
        .get_ref()
        .and_then(|i| i.downcast_ref::<TlsFailure>())
        .map(|f| &f.0)
    {
        Some(rustls::Error::InvalidCertificate(c)) => match c {
            rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature => {
                format!("{host}'s certificate is not signed by a CA this client trusts ({c:?}); pass the cluster's CA with --tls-ca")
            }
            rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. } => {
                format!("{host}'s certificate has expired")
            }
            rustls::CertificateError::NotValidForName
            | rustls::CertificateError::NotValidForNameContext { .. } => {
                format!("{host}'s certificate is not issued for the name or address '{host}'")
            }
            other => format!("{host}'s certificate is refused: {other:?}"),
        },
        Some(rustls::Error::AlertReceived(a)) => {
            format!("{host} refused this client's TLS handshake ({a:?}): does it require a client certificate (--tls-cert, --tls-key) from its CA?")
        }
        Some(other) => format!("TLS handshake with {host} failed: {other}"),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            format!("{host} closed the connection during the TLS handshake: is TLS on there?")
        }
        None if e.kind() == std::io::ErrorKind::WouldBlock => {
            format!("{host} did not answer the TLS handshake in time: is TLS on there?")
        }
        None => format!("TLS handshake with {host} failed: {e}"),
    };
    std::io::Error::new(std::io::ErrorKind::PermissionDenied, hint)
}

/// A process's TLS: what it serves and how it connects to other members.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Loaded>,
}

struct Loaded {
    server: Arc<ServerConfig>,
    client: ClientTls,
    stamps: Vec<Option<SystemTime>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

impl Tls {
    /// Loads the files; errors are sentences naming the file.
    pub fn load(files: TlsFiles) -> Result<Arc<Tls>, String> {
        let loaded = load(&files)?;
        Ok(Arc::new(Tls {
            files,
            current: RwLock::new(loaded),
        }))
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Runs the server handshake over an accepted socket, within `timeout`.
    pub fn accept(&self, sock: TcpStream, timeout: Duration) -> std::io::Result<Stream> {
        let config = self.current.read().server.clone();
        let conn = ServerConnection::new(config).map_err(tls_error)?;
        Stream::tls(sock, conn.into(), timeout)
    }

    /// How this process connects to other members (mutual TLS).
    pub fn client(&self) -> ClientTls {
        self.current.read().client.clone()
    }

    /// Reads the files again if any changed since they were loaded (or
    /// always, with `force`: SIGHUP). Returns whether new ones are in use.
    pub fn reload(&self, force: bool) -> bool {
        let stamps = stamps(&self.files);
        if !force && stamps == self.current.read().stamps {
            return false;
        }
        match load(&self.files) {
            Ok(l) => {
                *self.current.write() = l;
                log::info!(
                    "TLS: reloaded {} and {}",
                    self.files.cert.display(),
                    self.files.ca.display()
                );
                true
            }
            Err(e) => {
                // Keep serving with the old ones; say so once per change.
                self.current.write().stamps = stamps;
                log::error!("TLS: cannot reload the certificates, keeping the previous ones: {e}");
                false
            }
        }
    }

    /// Checks the files every second and reloads them when they change.
    pub fn watch(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name("tls-reload".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(1));
                match me.upgrade() {
                    Some(t) => {
                        t.reload(false);
                    }
                    None => return,
                }
            });
    }
}

/// TLS handshakes refused because the peer's certificate was bad (another
/// CA, expired): counted with the refused peers in `status`.
pub static REFUSED_CERTS: AtomicU64 = AtomicU64::new(0);
/// Connections that did not speak TLS to a TLS port (or broke the handshake).
pub static NOT_TLS: AtomicU64 = AtomicU64::new(0);

/// Handshakes refused for a bad certificate so far.
pub fn refused_certs() -> u64 {
    REFUSED_CERTS.load(Ordering::Relaxed)
}

/// Runs the server handshake on an accepted socket; a failure is counted,
/// logged (sampled) and the connection closed.
pub fn accept(tls: &Tls, sock: TcpStream, timeout: Duration) -> Option<Stream> {
    let peer = sock
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    // On failure the socket is closed: dropped here, and its listener's
    // record of it goes when the connection thread returns.
    match tls.accept(sock, timeout) {
        Ok(s) => Some(s),
        Err(e) => {
            let bad_cert = matches!(
                e.get_ref().and_then(|i| i.downcast_ref::<TlsFailure>()),
                Some(TlsFailure(
                    rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
                ))
            );
            let counter = if bad_cert { &REFUSED_CERTS } else { &NOT_TLS };
            let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
            log_sampled(n, || {
                if bad_cert {
                    format!("TLS connection from {peer} refused: {e}")
                } else {
                    format!("connection from {peer} closed: TLS handshake failed ({e})")
                }
            });
            None
        }
    }
}

/// Logs the 1st, 2nd, 4th, 8th, ... and every 1000th occurrence of
/// something an attacker can repeat at will, so a flood cannot fill the log.
/// (Here, at the bottom of the module graph, so TLS can use it; re-exported
/// as `auth::log_sampled`.)
pub fn log_sampled(count: u64, msg: impl FnOnce() -> String) {
    if count.is_power_of_two() || count.is_multiple_of(1000) {
        log::warn!("{} ({count} so far)", msg());
    }
}

/// A member link's acceptor: the connector must have presented a
/// certificate the CA signed (the handshake verified it).
pub fn require_member_cert(s: &Stream) -> Result<(), String> {
    if !s.is_tls() || s.peer_certificates().is_some() {
        Ok(())
    } else {
        Err("a member link must present a certificate signed by the cluster's CA (tls-cert-file, tls-key-file)".into())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_builder(
    roots: RootCertStore,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, String> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots))
}

fn stamps(f: &TlsFiles) -> Vec<Option<SystemTime>> {
    [&f.cert, &f.key, &f.ca]
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

fn load(f: &TlsFiles) -> Result<Loaded, String> {
    let stamps = stamps(f);
    let roots = roots(&f.ca)?;
    let (chain, key) = cert_and_key(&f.cert, &f.key)?;
    let verifier = {
        let b = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots.clone()),
            provider(),
        );
        let b = if f.auth_clients {
            b
        } else {
            b.allow_unauthenticated()
        };
        b.build().map_err(|e| format!("{}: {e}", f.ca.display()))?
    };
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| format!("{} and {}: {e}", f.cert.display(), f.key.display()))?;
    // No session resumption: tickets would be bytes nobody asked for on an
    // idle connection (see `Stream::peer_closed`).
    server.send_tls13_tickets = 0;
    let client = client_builder(roots)?
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("{}: {e}", f.cert.display()))?;
    Ok(Loaded {
        server: Arc::new(server),
        client: ClientTls {
            config: Arc::new(client),
        },
        stamps,
    })
}

/// Refuses a file others can read (as ssh does for keys): "PATH:
/// permissions 644 let other users read `what`; chmod 600 it".
pub fn owner_only(path: &Path, meta: &std::fs::Metadata, what: &str) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "{}: permissions {:o} let other users read {what}; chmod 600 it",
                path.display(),
                mode & 0o777
            ));
        }
    }
    Ok(())
}

fn read_pem(what: &str, path: &Path, private: bool) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if private {
        owner_only(path, &meta, "the private key").map_err(|e| format!("{what} {e}"))?;
    }
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM_BYTES + 1).read_to_end(&mut buf))
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if buf.len() as u64 > MAX_PEM_BYTES {
        return Err(format!("{what} {}: larger than 1 MiB", path.display()));
    }
    Ok(buf)
}

fn certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read_pem(what, path, false)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {}: not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

fn roots(ca: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for c in certs("tls-ca-file", ca)? {
        roots
            .add(c)
            .map_err(|e| format!("tls-ca-file {}: {e}", ca.display()))?;
    }
    Ok(roots)
}

fn cert_and_key(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain = certs("tls-cert-file", cert)?;
    let bytes = read_pem("tls-key-file", key, true)?;
    let key = PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| format!("tls-key-file {}: no PEM private key: {e}", key.display()))?;
    Ok((chain, key))
}
