//! The etcd v3 client (src/etcd.rs) against real etcd members
//! (tests/common/etcd.rs) and against hostile fake servers.
//!
//! Needs Debian's etcd-server (and openssl for the TLS test). Without them
//! the tests that run etcd fail under CI and say what to install; elsewhere
//! they are skipped and `make test` names them (`tests/common/skip.rs`).

mod common;

use common::etcd::{require_etcd, require_etcd_and_openssl, EtcdCluster};
use common::wait_until_ok;
use dkv::etcd::{Compare, Etcd, EtcdError, EtcdOptions, Op};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn client(c: &EtcdCluster) -> Etcd {
    Etcd::new(c.options()).expect("client options")
}

fn put_op(key: &[u8], value: &[u8]) -> Op {
    Op::Put {
        key: key.to_vec(),
        value: value.to_vec(),
        lease: 0,
    }
}

fn get_op(key: &[u8]) -> Op {
    Op::Get { key: key.to_vec() }
}

fn value_of(etcd: &Etcd, key: &[u8]) -> Option<Vec<u8>> {
    let r = etcd.get(key).expect("get");
    assert!(r.kvs.len() <= 1);
    r.kvs.into_iter().next().map(|kv| kv.value)
}

#[test]
fn put_get_and_prefix_round_trip_with_binary_keys() {
    if !require_etcd() {
        return;
    }
    let c = EtcdCluster::start(1);
    let etcd = client(&c);
    let prefix: &[u8] = b"reg/\xff";
    let inside: Vec<Vec<u8>> = vec![
        b"reg/\xff".to_vec(),
        b"reg/\xff\x00".to_vec(),
        b"reg/\xff\x00zero\x00".to_vec(),
        b"reg/\xff\xff\xff".to_vec(),
    ];
    let outside: Vec<Vec<u8>> = vec![b"reg/\xfe".to_vec(), b"reg0".to_vec(), b"reh".to_vec()];
    let mut last_rev = 0;
    for (i, k) in inside.iter().chain(&outside).enumerate() {
        let value = [&[0u8, 0xff, i as u8][..], k].concat();
        let rev = etcd.put(k, &value, 0).expect("put");
        assert!(
            rev > last_rev,
            "revisions must grow: {rev} after {last_rev}"
        );
        last_rev = rev;
    }
    // An empty value is a value, not a missing key.
    let rev = etcd.put(b"empty", b"", 0).unwrap();

    let got = etcd.get(b"reg/\xff\x00zero\x00").unwrap();
    assert_eq!(got.revision, rev);
    assert_eq!(got.kvs.len(), 1);
    let kv = &got.kvs[0];
    assert_eq!(kv.key, b"reg/\xff\x00zero\x00");
    assert_eq!(kv.value, [&[0u8, 0xff, 2][..], &kv.key].concat());
    assert_eq!(kv.version, 1);
    assert_eq!(kv.create_revision, kv.mod_revision);
    assert_eq!(kv.lease, 0);
    assert_eq!(value_of(&etcd, b"empty"), Some(Vec::new()));
    assert!(etcd.get(b"missing").unwrap().kvs.is_empty());

    let r = etcd.get_prefix(prefix).unwrap();
    let keys: Vec<Vec<u8>> = r.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(
        keys, inside,
        "the prefix range is exactly the keys under it, in order"
    );
    let all = etcd.get_prefix(b"").unwrap();
    assert_eq!(all.kvs.len(), inside.len() + outside.len() + 1);

    // Overwrite bumps version and mod_revision, keeps create_revision.
    let before = etcd.get(b"reg0").unwrap().kvs[0].clone();
    let rev = etcd.put(b"reg0", b"again", 0).unwrap();
    let after = etcd.get(b"reg0").unwrap().kvs[0].clone();
    assert_eq!(after.value, b"again");
    assert_eq!(after.version, 2);
    assert_eq!(after.mod_revision, rev);
    assert_eq!(after.create_revision, before.create_revision);

    let rev = etcd.delete(b"reg0").unwrap();
    assert!(rev > after.mod_revision);
    assert!(etcd.get(b"reg0").unwrap().kvs.is_empty());
}

#[test]
fn txn_compare_on_mod_revision_succeeds_once() {
    if !require_etcd() {
        return;
    }
    let c = EtcdCluster::start(1);
    let etcd = client(&c);
    etcd.put(b"leader", b"node-1", 0).unwrap();
    let seen = etcd.get(b"leader").unwrap().kvs[0].mod_revision;

    let cas = |value: &[u8]| {
        etcd.txn(
            &[Compare::ModRevision {
                key: b"leader".to_vec(),
                equals: seen,
            }],
            &[put_op(b"leader", value), get_op(b"leader")],
            &[get_op(b"leader")],
        )
        .expect("txn")
    };
    let first = cas(b"node-2");
    assert!(first.succeeded);
    assert_eq!(first.ranges.len(), 1);
    assert_eq!(first.ranges[0].kvs[0].value, b"node-2");
    assert_eq!(first.ranges[0].kvs[0].mod_revision, first.revision);

    // The same decision a second time must lose: the revision moved on.
    let second = cas(b"node-3");
    assert!(!second.succeeded);
    assert_eq!(
        second.revision, first.revision,
        "a failed txn writes nothing"
    );
    assert_eq!(second.ranges.len(), 1);
    assert_eq!(second.ranges[0].kvs[0].value, b"node-2");
    assert_eq!(value_of(&etcd, b"leader").unwrap(), b"node-2");

    // Value and create_revision compares.
    let create = first.ranges[0].kvs[0].create_revision;
    let t = etcd
        .txn(
            &[
                Compare::Value {
                    key: b"leader".to_vec(),
                    equals: b"node-2".to_vec(),
                },
                Compare::CreateRevision {
                    key: b"leader".to_vec(),
                    equals: create,
                },
            ],
            &[Op::Delete {
                key: b"leader".to_vec(),
            }],
            &[],
        )
        .unwrap();
    assert!(t.succeeded);
    assert!(t.ranges.is_empty());
    assert_eq!(value_of(&etcd, b"leader"), None);
    let t = etcd
        .txn(
            &[Compare::Value {
                key: b"leader".to_vec(),
                equals: b"node-2".to_vec(),
            }],
            &[put_op(b"leader", b"x")],
            &[],
        )
        .unwrap();
    assert!(!t.succeeded, "a value compare on a missing key fails");
}

#[test]
fn concurrent_compare_and_swap_increments_lose_no_update() {
    if !require_etcd() {
        return;
    }
    // Four threads share one client (Send + Sync, one agent) and increment
    // a counter by read + txn on mod_revision; a lost CAS is retried. The
    // final count must equal the number of successful swaps.
    let c = EtcdCluster::start(1);
    let etcd = std::sync::Arc::new(client(&c));
    etcd.put(b"counter", b"0", 0).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let etcd = etcd.clone();
            std::thread::spawn(move || {
                let (mut won, mut lost) = (0u64, 0u64);
                while won < 15 {
                    let kv = etcd.get(b"counter").unwrap().kvs.remove(0);
                    let n: u64 = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                    let t = etcd
                        .txn(
                            &[Compare::ModRevision {
                                key: b"counter".to_vec(),
                                equals: kv.mod_revision,
                            }],
                            &[put_op(b"counter", (n + 1).to_string().as_bytes())],
                            &[],
                        )
                        .unwrap();
                    if t.succeeded {
                        won += 1;
                    } else {
                        lost += 1;
                    }
                }
                (won, lost)
            })
        })
        .collect();
    let results: Vec<(u64, u64)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let won: u64 = results.iter().map(|r| r.0).sum();
    assert_eq!(won, 60);
    assert_eq!(value_of(&etcd, b"counter").unwrap(), b"60");
}

#[test]
fn txn_on_a_missing_keys_mod_revision_zero_creates_it_once() {
    if !require_etcd() {
        return;
    }
    let c = EtcdCluster::start(1);
    let etcd = client(&c);
    let create = |value: &[u8]| {
        etcd.txn(
            &[Compare::ModRevision {
                key: b"members/\x00a".to_vec(),
                equals: 0,
            }],
            &[put_op(b"members/\x00a", value)],
            &[Op::GetPrefix {
                prefix: b"members/".to_vec(),
            }],
        )
        .expect("txn")
    };
    let t = create(b"first");
    assert!(t.succeeded, "create-if-absent on a missing key succeeds");
    assert!(t.ranges.is_empty());
    let t = create(b"second");
    assert!(!t.succeeded, "create-if-absent on an existing key fails");
    assert_eq!(t.ranges.len(), 1);
    assert_eq!(t.ranges[0].kvs.len(), 1);
    assert_eq!(t.ranges[0].kvs[0].value, b"first");
}

#[test]
fn lease_revoke_deletes_its_keys_and_keepalive_then_says_zero() {
    if !require_etcd() {
        return;
    }
    let c = EtcdCluster::start(1);
    let etcd = client(&c);
    let id = etcd.lease_grant(60).unwrap();
    assert_ne!(id, 0);
    etcd.put(b"alive/n1", b"x", id).unwrap();
    etcd.put(b"plain", b"y", 0).unwrap();
    assert_eq!(etcd.get(b"alive/n1").unwrap().kvs[0].lease, id);
    let ttl = etcd.lease_keepalive(id).unwrap();
    assert!(ttl > 0 && ttl <= 60, "ttl {ttl}");

    etcd.lease_revoke(id).unwrap();
    assert!(
        etcd.get(b"alive/n1").unwrap().kvs.is_empty(),
        "revoke deletes the key"
    );
    assert_eq!(value_of(&etcd, b"plain").unwrap(), b"y");
    assert_eq!(
        etcd.lease_keepalive(id).unwrap(),
        0,
        "a revoked lease is gone"
    );
    etcd.lease_revoke(id)
        .expect("revoking a gone lease succeeds");

    // A put on a gone lease is refused by etcd.
    match etcd.put(b"alive/n1", b"x", id) {
        Err(EtcdError::Protocol(m)) => assert!(m.contains("lease not found"), "{m}"),
        other => panic!("put with a revoked lease: {other:?}"),
    }
}

/// Member indices in an order whose first one is not the leader.
fn follower_first(c: &EtcdCluster) -> Vec<usize> {
    let leader = c.leader().expect("a leader");
    let mut order: Vec<usize> = (0..c.len()).filter(|&i| i != leader).collect();
    order.push(leader);
    order
}

#[test]
fn failover_when_the_first_endpoint_dies() {
    if !require_etcd() {
        return;
    }
    let mut c = EtcdCluster::start(3);
    let order = follower_first(&c);
    let eps = c.endpoints();
    let opts = EtcdOptions {
        endpoints: order.iter().map(|&i| eps[i].clone()).collect(),
        ..c.options()
    };
    let etcd = Etcd::new(opts).unwrap();
    let rev = etcd.put(b"k", b"v1", 0).unwrap();
    let st = c.status(order[0]).unwrap();
    assert_eq!(st.endpoint, eps[order[0]]);

    c.kill(order[0]);
    // No election is needed (a follower died): the calls succeed at once,
    // through the other members.
    let r = etcd.get(b"k").expect("read after the first endpoint died");
    assert_eq!(r.kvs[0].value, b"v1");
    let t = etcd
        .txn(
            &[Compare::ModRevision {
                key: b"k".to_vec(),
                equals: rev,
            }],
            &[put_op(b"k", b"v2")],
            &[],
        )
        .expect("txn after the first endpoint died");
    assert!(t.succeeded);
    assert_eq!(etcd.get_prefix(b"k").unwrap().kvs[0].value, b"v2");
    let id = etcd.lease_grant(30).unwrap();
    assert!(etcd.lease_keepalive(id).unwrap() > 0);
}

#[test]
fn failover_when_the_leader_dies() {
    if !require_etcd() {
        return;
    }
    let mut c = EtcdCluster::start(3);
    let etcd = client(&c);
    let rev = etcd.put(b"k", b"v1", 0).unwrap();
    let old = c.leader().expect("a leader");
    let old_id = c.status(old).unwrap().member_id;
    c.kill(old);
    c.wait_healthy();
    let new = c.leader().expect("a new leader");
    assert_ne!(new, old);
    assert_ne!(c.status(new).unwrap().leader, old_id);

    let t = etcd
        .txn(
            &[Compare::ModRevision {
                key: b"k".to_vec(),
                equals: rev,
            }],
            &[put_op(b"k", b"v2")],
            &[get_op(b"k")],
        )
        .expect("txn after a new leader was elected");
    assert!(t.succeeded, "the old revision still matched");
    assert_eq!(value_of(&etcd, b"k").unwrap(), b"v2");

    // The old leader rejoins as a follower and has the write.
    c.restart(old);
    c.wait_healthy();
    let back = Etcd::new(EtcdOptions::new([c.endpoints()[old].clone()])).unwrap();
    let got = wait_until_ok(|| {
        back.get(b"k")
            .ok()
            .filter(|r| r.revision >= t.revision)
            .map(|r| r.kvs[0].value.clone())
    });
    assert_eq!(got.as_deref(), Some(&b"v2"[..]));
}

#[test]
fn every_member_dead_is_unavailable() {
    if !require_etcd() {
        return;
    }
    let mut c = EtcdCluster::start(3);
    let etcd = Etcd::new(EtcdOptions {
        timeout: Duration::from_millis(300),
        ..c.options()
    })
    .unwrap();
    etcd.put(b"k", b"v", 0).unwrap();
    for i in 0..3 {
        c.kill(i);
    }
    for result in [
        etcd.get(b"k").map(|_| ()),
        etcd.txn(&[], &[put_op(b"k", b"w")], &[]).map(|_| ()),
        etcd.put(b"k", b"w", 0).map(|_| ()),
        etcd.lease_grant(10).map(|_| ()),
    ] {
        match result {
            Err(EtcdError::Unavailable(msg)) => {
                for ep in c.endpoints() {
                    assert!(msg.contains(&ep), "'{msg}' does not name {ep}");
                }
                assert!(msg.contains("connection refused"), "{msg}");
            }
            other => panic!("with every member dead: {other:?}"),
        }
    }
    // Restarted, the cluster still has the data.
    for i in 0..3 {
        c.restart(i);
    }
    c.wait_healthy();
    assert_eq!(value_of(&etcd, b"k").unwrap(), b"v");
}

/// A POST to the gateway by hand, for the admin calls the client lacks:
/// (HTTP status, body).
fn raw_post(endpoint: &str, token: Option<&str>, path: &str, body: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent.post(format!("{endpoint}{path}"));
    if let Some(t) = token {
        req = req.header("Authorization", t);
    }
    let mut resp = req.send(body).unwrap();
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap())
}

fn admin(endpoint: &str, token: Option<&str>, path: &str, body: &str) -> serde_json::Value {
    let (status, text) = raw_post(endpoint, token, path, body);
    assert!(status == 200, "{path} {body}: HTTP {status} {text}");
    serde_json::from_str(&text).unwrap()
}

#[test]
fn auth_wrong_or_missing_credentials_fail_and_right_ones_work() {
    if !require_etcd() {
        return;
    }
    let mut c = EtcdCluster::start(1);
    let ep = c.endpoints()[0].clone();
    for (path, body) in [
        (
            "/v3/auth/user/add",
            r#"{"name":"root","password":"rootpw"}"#,
        ),
        ("/v3/auth/role/add", r#"{"name":"root"}"#),
        ("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#),
        ("/v3/auth/user/add", r#"{"name":"nobody","password":"pw"}"#),
        ("/v3/auth/enable", "{}"),
    ] {
        admin(&ep, None, path, body);
    }
    c.set_auth("root", "rootpw");

    let with = |user: Option<&str>, password: Option<&str>| {
        Etcd::new(EtcdOptions {
            user: user.map(Into::into),
            password: password.map(Into::into),
            ..c.options()
        })
        .unwrap()
    };
    match with(None, None).get(b"k") {
        Err(EtcdError::Auth(m)) => {
            assert!(m.contains(&ep), "{m}");
            assert!(m.contains("no user is configured"), "{m}");
        }
        other => panic!("without credentials: {other:?}"),
    }
    match with(Some("root"), Some("wrong")).put(b"k", b"v", 0) {
        Err(EtcdError::Auth(m)) => assert!(m.contains("root"), "{m}"),
        other => panic!("with a wrong password: {other:?}"),
    }
    match with(Some("nobody"), Some("pw")).get(b"k") {
        Err(EtcdError::Auth(m)) => assert!(m.contains("permission denied"), "{m}"),
        other => panic!("a user without a role: {other:?}"),
    }

    let etcd = with(Some("root"), Some("rootpw"));
    let rev = etcd.put(b"k", b"v", 0).unwrap();
    assert_eq!(value_of(&etcd, b"k").unwrap(), b"v");
    let t = etcd
        .txn(
            &[Compare::ModRevision {
                key: b"k".to_vec(),
                equals: rev,
            }],
            &[put_op(b"k", b"w")],
            &[],
        )
        .unwrap();
    assert!(t.succeeded);

    // Changing a user's password (here: to the same one) drops every token
    // of that user. The client's next call meets "invalid auth token" and
    // authenticates again.
    let admin_token = admin(
        &ep,
        None,
        "/v3/auth/authenticate",
        r#"{"name":"root","password":"rootpw"}"#,
    )["token"]
        .as_str()
        .unwrap()
        .to_string();
    admin(
        &ep,
        Some(&admin_token),
        "/v3/auth/user/changepw",
        r#"{"name":"root","password":"rootpw"}"#,
    );
    let (status, text) = raw_post(&ep, Some(&admin_token), "/v3/kv/range", r#"{"key":"aw=="}"#);
    assert!(
        status == 401 && text.contains("invalid auth token"),
        "tokens must be gone after the password change: HTTP {status} {text}"
    );
    assert_eq!(value_of(&etcd, b"k").unwrap(), b"w");

    // The client keeps working across a restart of the member.
    c.restart(0);
    c.wait_healthy();
    etcd.put(b"k2", b"after restart", 0).unwrap();
    assert_eq!(value_of(&etcd, b"k2").unwrap(), b"after restart");
}

#[test]
fn tls_with_the_ca_and_a_client_certificate() {
    if !require_etcd_and_openssl() {
        return;
    }
    let c = EtcdCluster::start_tls(1);
    let tls = c.tls().unwrap().clone();
    let ep = c.endpoints()[0].clone();
    assert!(ep.starts_with("https://"));

    let etcd = client(&c);
    etcd.put(b"secure", b"yes", 0).unwrap();
    assert_eq!(value_of(&etcd, b"secure").unwrap(), b"yes");
    assert_eq!(etcd.status(&ep).unwrap().endpoint, ep);

    // Without the CA the server is not trusted.
    let no_ca = Etcd::new(EtcdOptions {
        ca_file: None,
        ..c.options()
    })
    .unwrap();
    match no_ca.get(b"secure") {
        Err(EtcdError::Config(m)) => {
            assert!(m.contains(&ep), "{m}");
            assert!(m.contains("TLS handshake failed"), "{m}");
            assert!(m.to_lowercase().contains("issuer"), "{m}");
            assert!(m.contains("ca_file"), "{m}");
        }
        other => panic!("without the CA: {other:?}"),
    }
    // Without a client certificate etcd (--client-cert-auth) refuses us.
    // Under TLS 1.3 the refusal comes after the client finished its side
    // of the handshake: it arrives either as a TLS alert (Config) or as a
    // connection that was closed before the request reached etcd
    // (Unavailable, with a hint). Never Indeterminate: etcd did not see
    // the write.
    let refused = |r: Result<i64, EtcdError>, who: &str| match r {
        Err(EtcdError::Config(m)) => {
            assert!(
                m.contains(&ep) && m.contains("TLS handshake failed"),
                "{who}: {m}"
            )
        }
        Err(EtcdError::Unavailable(m)) => {
            assert!(
                m.contains(&ep) && m.contains("closed before the request"),
                "{who}: {m}"
            )
        }
        other => panic!("{who}: {other:?}"),
    };
    let no_cert = Etcd::new(EtcdOptions {
        cert_file: None,
        key_file: None,
        ..c.options()
    })
    .unwrap();
    for _ in 0..3 {
        refused(
            no_cert.put(b"secure", b"no", 0),
            "without a client certificate",
        );
    }
    // A client certificate from another CA is refused too.
    let other = common::etcd::TlsFiles::generate(&c.dir.join("other-ca"));
    let foreign = Etcd::new(EtcdOptions {
        cert_file: Some(other.client_cert),
        key_file: Some(other.client_key),
        ..c.options()
    })
    .unwrap();
    for _ in 0..3 {
        refused(
            foreign.put(b"secure", b"no", 0),
            "with a foreign client certificate",
        );
    }
    assert_eq!(value_of(&etcd, b"secure").unwrap(), b"yes");
    // The CA is not a client certificate's key: a key file without a key.
    match Etcd::new(EtcdOptions {
        key_file: Some(tls.ca.clone()),
        ..c.options()
    }) {
        Err(EtcdError::Config(m)) => assert!(m.contains("private key"), "{m}"),
        other => panic!("a key file without a key: {:?}", other.map(|_| ())),
    }
}

// ---- hostile servers (no etcd needed) ----------------------------------

/// What a fake server does with each connection after reading a request.
#[derive(Clone)]
enum Fake {
    /// Answers these bytes and closes.
    Answer(Vec<u8>),
    /// Answers a 200 with a body of `n` bytes of JSON-looking filler.
    Huge(usize),
    /// Reads the request and closes without a word.
    Close,
    /// Reads the request and never answers (until the test ends).
    Silent,
}

/// Serves `conns` connections on a fresh loopback port in a thread.
fn fake_server(fake: Fake, conns: usize) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut parked = Vec::new();
        for _ in 0..conns {
            let Ok((mut s, _)) = l.accept() else { return };
            read_request(&mut s);
            match &fake {
                Fake::Answer(bytes) => {
                    let _ = s.write_all(bytes);
                }
                Fake::Huge(n) => {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{{\"kvs\":\"",
                        n + 10
                    );
                    let _ = s.write_all(head.as_bytes());
                    let chunk = vec![b'A'; 64 * 1024];
                    let mut left = *n;
                    while left > 0 {
                        let k = left.min(chunk.len());
                        if s.write_all(&chunk[..k]).is_err() {
                            break; // The client stopped reading: expected.
                        }
                        left -= k;
                    }
                    let _ = s.write_all(b"\"}");
                }
                Fake::Close => {}
                Fake::Silent => parked.push(s),
            }
        }
        // Keep silent connections open until the process ends.
        if !parked.is_empty() {
            std::thread::park();
        }
    });
    format!("http://{addr}")
}

/// Reads one HTTP request (headers and a Content-Length body).
fn read_request(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    let _ = s.read_exact(&mut body);
}

fn fake_client(endpoint: &str) -> Etcd {
    Etcd::new(EtcdOptions {
        timeout: Duration::from_millis(300),
        ..EtcdOptions::new([endpoint])
    })
    .unwrap()
}

fn expect_protocol(r: Result<impl std::fmt::Debug, EtcdError>, endpoint: &str, what: &str) {
    match r {
        Err(EtcdError::Protocol(m)) => {
            assert!(m.contains(endpoint), "'{m}' does not name {endpoint}");
            assert!(m.contains(what), "'{m}' does not say '{what}'");
        }
        other => panic!("expected a protocol error about '{what}': {other:?}"),
    }
}

/// A complete HTTP answer with this status line and body.
fn http(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn garbage_answers_are_protocol_errors() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (http("200 OK", "hello world"), "not JSON"),
        (http("200 OK", "[1,2]"), "not an object"),
        (http("200 OK", ""), "empty body"),
        (
            http("200 OK", r#"{"header":{"revision":"1"},"kvs":[{"key":1}]}"#),
            "base64",
        ),
        (
            http(
                "200 OK",
                r#"{"header":{"revision":"1"},"kvs":[{"key":"%%"}]}"#,
            ),
            "base64",
        ),
        (
            http("200 OK", r#"{"header":{"revision":"one"}}"#),
            "not an integer",
        ),
        (http("200 OK", r#"{"kvs":[]}"#), "no header"),
        (http("404 Not Found", "not found"), "not JSON"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec(), "not valid HTTP"),
    ];
    for (answer, what) in cases {
        let ep = fake_server(Fake::Answer(answer), 1);
        expect_protocol(fake_client(&ep).get(b"k"), &ep, what);
    }
    // A txn answer that does not match the branch it claims.
    let ep = fake_server(
        Fake::Answer(http(
            "200 OK",
            r#"{"header":{"revision":"3"},"succeeded":true}"#,
        )),
        1,
    );
    expect_protocol(
        fake_client(&ep).txn(&[], &[get_op(b"k")], &[]),
        &ep,
        "responses",
    );
}

#[test]
fn a_huge_answer_is_a_protocol_error() {
    let ep = fake_server(Fake::Huge(20 << 20), 1);
    expect_protocol(fake_client(&ep).get_prefix(b""), &ep, "larger than 16 MiB");
    // A body that merely announces a huge length is cut at the limit too.
    let ep = fake_server(
        Fake::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n{\"a\":1}".to_vec()),
        1,
    );
    let r = fake_client(&ep).get(b"k");
    assert!(r.is_err(), "a truncated answer must not be accepted: {r:?}");
}

#[test]
fn a_lost_answer_makes_writes_indeterminate_and_reads_unavailable() {
    for fake in [Fake::Close, Fake::Silent] {
        let ep = fake_server(fake.clone(), 8);
        let etcd = fake_client(&ep);
        for r in [
            etcd.txn(&[], &[put_op(b"k", b"v")], &[]).map(|_| ()),
            etcd.put(b"k", b"v", 0).map(|_| ()),
            etcd.delete(b"k").map(|_| ()),
        ] {
            match r {
                Err(EtcdError::Indeterminate(m)) => {
                    assert!(m.contains(&ep) && m.contains("may or may not"), "{m}")
                }
                other => panic!("a write whose answer was lost: {other:?}"),
            }
        }
        match etcd.get(b"k") {
            Err(EtcdError::Unavailable(m)) => assert!(m.contains(&ep), "{m}"),
            other => panic!("a read whose answer was lost: {other:?}"),
        }
    }
}

#[test]
fn a_write_fails_over_only_when_it_was_not_sent() {
    // First endpoint: nothing listens (refused before sending). Second:
    // reads the request and closes. The write moves past the first and
    // stops, indeterminate, at the second; it never reaches the third.
    let refused = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let lost = fake_server(Fake::Close, 3);
    let third = fake_server(
        Fake::Answer(http("200 OK", r#"{"header":{"revision":"9"}}"#)),
        2,
    );
    let etcd = Etcd::new(EtcdOptions {
        timeout: Duration::from_millis(300),
        ..EtcdOptions::new([refused.clone(), lost.clone(), third.clone()])
    })
    .unwrap();
    match etcd.put(b"k", b"v", 0) {
        Err(EtcdError::Indeterminate(m)) => assert!(m.contains(&lost), "{m}"),
        other => panic!("{other:?}"),
    }
    // A read goes past the lost answer to the third endpoint, which then
    // becomes the current one: the next write goes straight there (were it
    // sent to the second again, it would be indeterminate).
    assert_eq!(etcd.get(b"k").unwrap().revision, 9);
    assert_eq!(etcd.put(b"k", b"v", 0).unwrap(), 9);
}
