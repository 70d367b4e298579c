//! A real etcd cluster for tests: N members of `/usr/bin/etcd` (or `etcd`
//! on PATH) on free loopback ports, in a temp directory, each member's
//! output in its own log file. Members are SIGKILLed when the cluster is
//! dropped, and die with the test process (PR_SET_PDEATHSIG).
//!
//! Timing: `--heartbeat-interval 100 --election-timeout 1000` (etcd's
//! defaults; loopback round trips are far below them, and a 2-core machine
//! running several clusters at once must not see spurious elections).

#![allow(dead_code)]

use super::{die_with_parent, wait_until_ok, Proc, PATIENCE};
use dkv::etcd::{Etcd, EtcdOptions, MemberStatus};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub use super::skip::find_program;

pub const INSTALL_HINT: &str = "apt-get install etcd-server (Debian's etcd-server package)";
pub const OPENSSL_HINT: &str = "apt-get install openssl";

/// Whether an etcd test may run: etcd is installed. If not, fails the test
/// under CI and records a skip elsewhere (`super::skip`); the test returns
/// when this is false.
pub fn require_etcd() -> bool {
    super::require_tool("etcd", INSTALL_HINT)
}

/// [`require_etcd`] and openssl, for the TLS tests.
pub fn require_etcd_and_openssl() -> bool {
    require_etcd() && super::require_tool("openssl", OPENSSL_HINT)
}

/// The etcd binary; panics (failing the test) when etcd is not installed.
/// Tests call [`require_etcd`] first.
pub fn etcd_bin() -> PathBuf {
    find_program("etcd", "/usr/bin/etcd")
        .unwrap_or_else(|| panic!("etcd is not installed: {INSTALL_HINT}"))
}

/// Certificates made by `openssl` for a TLS cluster: a CA, a server
/// certificate for 127.0.0.1/localhost (also usable as a client
/// certificate, which etcd's gateway needs to reach its own gRPC server
/// under `--client-cert-auth`) and a client certificate.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let bin = find_program("openssl", "/usr/bin/openssl")
        .unwrap_or_else(|| panic!("openssl is not installed: {OPENSSL_HINT}"));
    let out = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TlsFiles {
    /// Makes a fresh CA and certificates in `dir` (EC P-256, valid 2 days).
    pub fn generate(dir: &Path) -> TlsFiles {
        std::fs::create_dir_all(dir).unwrap();
        let ext = "basicConstraints=critical,CA:FALSE\n\
                   keyUsage=critical,digitalSignature,keyEncipherment\n";
        std::fs::write(
            dir.join("server.ext"),
            format!(
                "{ext}extendedKeyUsage=serverAuth,clientAuth\n\
                 subjectAltName=IP:127.0.0.1,DNS:localhost\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("client.ext"),
            format!("{ext}extendedKeyUsage=clientAuth\n"),
        )
        .unwrap();
        let key = |name: &str| {
            openssl(
                dir,
                &[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-out",
                    name,
                ],
            )
        };
        key("ca.key");
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                "ca.key",
                "-subj",
                "/CN=dkv test CA",
                "-days",
                "2",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-out",
                "ca.pem",
            ],
        );
        for (name, cn) in [("server", "127.0.0.1"), ("client", "root")] {
            key(&format!("{name}.key"));
            openssl(
                dir,
                &[
                    "req",
                    "-new",
                    "-key",
                    &format!("{name}.key"),
                    "-subj",
                    &format!("/CN={cn}"),
                    "-out",
                    &format!("{name}.csr"),
                ],
            );
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    &format!("{name}.ext"),
                    "-out",
                    &format!("{name}.pem"),
                ],
            );
        }
        TlsFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }
}

struct Member {
    name: String,
    url: String,
    args: Vec<String>,
    log: PathBuf,
    proc: Option<Proc>,
    starts: usize,
}

pub struct EtcdCluster {
    pub dir: PathBuf,
    members: Vec<Member>,
    tls: Option<TlsFiles>,
    /// What the harness itself uses to ask members for their status.
    probe: Etcd,
    /// Credentials once a test enabled auth (see [`EtcdCluster::set_auth`]).
    auth: Option<(String, String)>,
}

fn temp_dir(name: &str) -> PathBuf {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    let dir = std::env::temp_dir().join(format!(
        "dkv-etcd-{name}-{}-{:x}",
        std::process::id(),
        h.finish()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `n` distinct free loopback ports: all bound at once, then released.
fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

impl EtcdCluster {
    /// `n` members over plain HTTP, healthy (a leader every member knows).
    pub fn start(n: usize) -> EtcdCluster {
        Self::start_with(n, None, &[])
    }

    /// Like [`EtcdCluster::start`] with extra etcd flags for every member.
    pub fn start_with_flags(n: usize, flags: &[&str]) -> EtcdCluster {
        Self::start_with(n, None, flags)
    }

    /// `n` members whose client URLs are HTTPS with `--client-cert-auth`,
    /// with certificates generated by openssl in the cluster's directory.
    pub fn start_tls(n: usize) -> EtcdCluster {
        Self::start_with(n, Some(()), &[])
    }

    fn start_with(n: usize, tls: Option<()>, flags: &[&str]) -> EtcdCluster {
        assert!(n >= 1);
        let bin = etcd_bin();
        let mut last_failure = String::new();
        // Ports are released before etcd binds them: another process may
        // take one in between. Such a start is retried from scratch.
        for attempt in 0..5 {
            let dir = temp_dir(&format!("{n}m"));
            let tls = tls.map(|_| TlsFiles::generate(&dir.join("tls")));
            let mut c = EtcdCluster::configure(&bin, dir, n, tls, flags);
            for i in 0..n {
                c.spawn(i);
            }
            match c.wait_until_healthy() {
                Ok(()) => return c,
                Err(why) => {
                    let logs = c.dump_logs();
                    if logs.contains("address already in use") {
                        eprintln!("etcd start attempt {attempt} lost a port race; retrying");
                        last_failure = why;
                        continue; // Drop kills the members and removes the dir.
                    }
                    c.keep_dir();
                    panic!("etcd cluster of {n} did not become healthy: {why}\n{logs}");
                }
            }
        }
        panic!("etcd cluster of {n} could not start in 5 attempts: {last_failure}");
    }

    fn configure(
        bin: &Path,
        dir: PathBuf,
        n: usize,
        tls: Option<TlsFiles>,
        flags: &[&str],
    ) -> EtcdCluster {
        let ports = free_ports(2 * n);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let token = dir.file_name().unwrap().to_string_lossy().to_string();
        let peers: Vec<String> = (0..n)
            .map(|i| format!("m{i}=http://127.0.0.1:{}", ports[2 * i + 1]))
            .collect();
        let initial_cluster = peers.join(",");
        let members: Vec<Member> = (0..n)
            .map(|i| {
                let name = format!("m{i}");
                let url = format!("{scheme}://127.0.0.1:{}", ports[2 * i]);
                let peer = format!("http://127.0.0.1:{}", ports[2 * i + 1]);
                let data = dir.join(format!("{name}.etcd"));
                let mut args: Vec<String> = vec![
                    bin.to_string_lossy().to_string(),
                    "--name".into(),
                    name.clone(),
                    "--data-dir".into(),
                    data.to_string_lossy().to_string(),
                    "--listen-client-urls".into(),
                    url.clone(),
                    "--advertise-client-urls".into(),
                    url.clone(),
                    "--listen-peer-urls".into(),
                    peer.clone(),
                    "--initial-advertise-peer-urls".into(),
                    peer,
                    "--initial-cluster".into(),
                    initial_cluster.clone(),
                    "--initial-cluster-state".into(),
                    "new".into(),
                    "--initial-cluster-token".into(),
                    token.clone(),
                    "--heartbeat-interval".into(),
                    "100".into(),
                    "--election-timeout".into(),
                    "1000".into(),
                    "--logger".into(),
                    "zap".into(),
                    "--log-outputs".into(),
                    "stderr".into(),
                ];
                if let Some(t) = &tls {
                    for (flag, path) in [
                        ("--cert-file", &t.server_cert),
                        ("--key-file", &t.server_key),
                        ("--trusted-ca-file", &t.ca),
                    ] {
                        args.push(flag.into());
                        args.push(path.to_string_lossy().to_string());
                    }
                    args.push("--client-cert-auth".into());
                }
                args.extend(flags.iter().map(|f| f.to_string()));
                Member {
                    log: dir.join(format!("{name}.log")),
                    name,
                    url,
                    args,
                    proc: None,
                    starts: 0,
                }
            })
            .collect();
        let mut opts = EtcdOptions::new(members.iter().map(|m| m.url.clone()));
        opts.timeout = Duration::from_secs(1);
        if let Some(t) = &tls {
            opts.ca_file = Some(t.ca.clone());
            opts.cert_file = Some(t.client_cert.clone());
            opts.key_file = Some(t.client_key.clone());
        }
        EtcdCluster {
            probe: Etcd::new(opts).expect("harness etcd client"),
            dir,
            members,
            tls,
            auth: None,
        }
    }

    fn spawn(&mut self, i: usize) {
        let m = &mut self.members[i];
        m.starts += 1;
        let log = if m.starts == 1 {
            m.log.clone()
        } else {
            m.log.with_extension(format!("{}.log", m.starts))
        };
        let f = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(&m.args[0]);
        die_with_parent(&mut cmd);
        let child = cmd
            .args(&m.args[1..])
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e} ({INSTALL_HINT})", m.args[0]));
        m.proc = Some(Proc {
            child,
            args: m.args.clone(),
            addr: m.url.clone(),
            beacon_addr: String::new(),
            resp_addr: String::new(),
            metrics_addr: String::new(),
            id: i as u64,
            log,
        });
    }

    /// Client URLs, in member order (`http://127.0.0.1:port`).
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.url.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// Client options for every member (with the CA and client certificate
    /// on a TLS cluster).
    pub fn options(&self) -> EtcdOptions {
        let mut o = EtcdOptions::new(self.endpoints());
        if let Some(t) = &self.tls {
            o.ca_file = Some(t.ca.clone());
            o.cert_file = Some(t.client_cert.clone());
            o.key_file = Some(t.client_key.clone());
        }
        o
    }

    /// Makes the harness authenticate, once a test has enabled auth.
    pub fn set_auth(&mut self, user: &str, password: &str) {
        self.auth = Some((user.to_string(), password.to_string()));
        let mut o = self.options();
        o.timeout = Duration::from_secs(1);
        o.user = Some(user.to_string());
        o.password = Some(password.to_string());
        self.probe = Etcd::new(o).expect("harness etcd client");
    }

    pub fn is_alive(&self, i: usize) -> bool {
        self.members[i].proc.is_some()
    }

    /// SIGKILLs member `i` (and reaps it).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].proc.take() {
            p.kill();
        }
    }

    /// Kills member `i` if alive and starts it again on its data directory
    /// and ports. Does not wait: call [`EtcdCluster::wait_healthy`].
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    /// What member `i` says about itself.
    pub fn status(&self, i: usize) -> Result<MemberStatus, dkv::etcd::EtcdError> {
        self.probe.status(&self.members[i].url)
    }

    /// Index of the current leader: a live member that says it leads, and
    /// that every live member answering names as leader.
    pub fn leader(&self) -> Option<usize> {
        let st: Vec<(usize, MemberStatus)> = (0..self.len())
            .filter(|&i| self.is_alive(i))
            .filter_map(|i| self.status(i).ok().map(|s| (i, s)))
            .collect();
        let (idx, lead) = st
            .iter()
            .find(|(_, s)| s.leader != 0 && s.leader == s.member_id)
            .map(|(i, s)| (*i, s.leader))?;
        st.iter().all(|(_, s)| s.leader == lead).then_some(idx)
    }

    /// Waits until every live member answers and all name the same live
    /// leader; panics (with every log) after [`PATIENCE`].
    pub fn wait_healthy(&self) {
        if let Err(why) = self.wait_until_healthy() {
            self.keep_dir();
            panic!(
                "etcd cluster did not become healthy: {why}\n{}",
                self.dump_logs()
            );
        }
    }

    fn wait_until_healthy(&self) -> Result<(), String> {
        let mut last = String::from("no member was asked yet");
        let ok = wait_until_ok(|| {
            for m in &self.members {
                if let Some(p) = &m.proc {
                    // A member that exited will never become healthy.
                    if std::fs::metadata(format!("/proc/{}", p.pid())).is_err()
                        || is_zombie(p.pid())
                    {
                        last = format!("member {} exited", m.name);
                        return Some(false);
                    }
                }
            }
            let live: Vec<usize> = (0..self.len()).filter(|&i| self.is_alive(i)).collect();
            let answers: Vec<_> = live.iter().map(|&i| (i, self.status(i))).collect();
            if let Some((i, Err(e))) = answers.iter().find(|(_, r)| r.is_err()) {
                last = format!("member m{i} does not answer: {e}");
                return None;
            }
            let st: Vec<&MemberStatus> = answers
                .iter()
                .filter_map(|(_, r)| r.as_ref().ok())
                .collect();
            let lead = st.first().map(|s| s.leader).unwrap_or(0);
            if lead == 0 || st.iter().any(|s| s.leader != lead) {
                last = format!(
                    "members disagree on the leader: {:?}",
                    st.iter().map(|s| s.leader).collect::<Vec<_>>()
                );
                return None;
            }
            if !st.iter().any(|s| s.member_id == lead) {
                last = format!("the leader {lead:x} is not a live member");
                return None;
            }
            Some(true)
        });
        match ok {
            Some(true) => Ok(()),
            Some(false) => Err(last),
            None => Err(format!("not healthy within {PATIENCE:?}: {last}")),
        }
    }

    pub fn dump_logs(&self) -> String {
        let mut s = String::new();
        for m in &self.members {
            for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if name.starts_with(&format!("{}.", m.name)) && name.ends_with(".log") {
                    let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(40).collect();
                    s += &format!("--- {name} (last 40 lines) ---\n");
                    for l in tail.iter().rev() {
                        s += l;
                        s += "\n";
                    }
                }
            }
        }
        s
    }

    fn keep_dir(&self) {
        let _ = std::fs::write(self.dir.join(".keep"), b"");
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(true)
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        if std::thread::panicking() || self.dir.join(".keep").exists() {
            eprintln!("etcd test logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
