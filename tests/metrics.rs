//! The `/metrics` port of real nodes and a real server, parsed by the
//! Prometheus client's own parsers (Python `prometheus_client`: the
//! Prometheus text parser, and the stricter OpenMetrics one for the
//! OpenMetrics rendering), with values that prove behaviour; and hostile
//! HTTP input answered with an error while the port keeps serving.

mod common;

use common::skip::require_prometheus_client;
use common::Cluster;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Sends raw bytes, returns the whole answer (the port closes after one).
fn http_raw(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status_code(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// GET /metrics: (content type, body).
fn scrape(addr: &str, accept: Option<&str>) -> (String, String) {
    let mut req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n");
    if let Some(a) = accept {
        req.push_str(&format!("Accept: {a}\r\n"));
    }
    req.push_str("\r\n");
    let resp = http_raw(addr, req.as_bytes());
    assert_eq!(status_code(&resp), 200, "scrape of {addr}: {resp}");
    let (head, body) = resp.split_once("\r\n\r\n").expect("a head");
    let ct = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap_or("")
        .to_string();
    (ct, body.to_string())
}

/// Parses exposition text with prometheus_client's parser ("prometheus" or
/// "openmetrics"); every sample as (name, labels, value). Panics with the
/// parser's message when the text does not parse.
fn parse(text: &str, parser: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let script = format!(
        r#"
import sys, json
from prometheus_client.{module} import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    if not fam.documentation:
        raise SystemExit("metric %s has no HELP text" % fam.name)
    for s in fam.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#,
        module = if parser == "openmetrics" {
            "openmetrics.parser"
        } else {
            "parser"
        }
    );
    let mut child = Command::new("python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the {parser} parser refused the text: {}\n--- text ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    v.into_iter()
        .map(|s| {
            let labels = s[1]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            let value = match &s[2] {
                Value::Number(n) => n.as_f64().unwrap(),
                other => panic!("sample value {other}"),
            };
            (s[0].as_str().unwrap().to_string(), labels, value)
        })
        .collect()
}

struct Samples(Vec<(String, BTreeMap<String, String>, f64)>);

impl Samples {
    fn of(addr: &str) -> Samples {
        let (ct, body) = scrape(addr, None);
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        Samples(parse(&body, "prometheus"))
    }

    /// The value of `name` with every label in `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(|x| x.as_str()) == Some(*v))
            })
            .map(|s| s.2)
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {:?}", self.names()))
    }

    fn names(&self) -> Vec<&str> {
        self.0.iter().map(|s| s.0.as_str()).collect()
    }
}

#[test]
fn nodes_and_server_serve_prometheus_metrics() {
    if !require_prometheus_client() {
        return;
    }
    let settings = serde_json::json!({ "metrics-listen": "127.0.0.1:0", "fsync": "always" });
    let mut c = Cluster::start("metrics", 0, settings);
    for _ in 0..3 {
        c.add_node_with_data_dir();
    }
    c.wait_for_isr(3);
    for n in &c.nodes {
        assert!(
            !n.metrics_addr.is_empty(),
            "the node prints its metrics address"
        );
    }
    assert!(
        !c.server.metrics_addr.is_empty(),
        "the server prints its metrics address"
    );

    const WRITES: usize = 50;
    const READS: usize = 20;
    let mut client = c.client();
    for i in 0..WRITES {
        client
            .put(format!("k{i}").as_bytes(), b"value")
            .expect("write");
    }
    for i in 0..READS {
        assert!(client.get(format!("k{i}").as_bytes()).unwrap().is_some());
    }

    let coord = c.coordinator();
    let replica = (coord + 1) % 3;
    let cid = c.nodes[coord].id;
    let rid = c.nodes[replica].id;
    let m = Samples::of(&c.nodes[coord].metrics_addr);
    assert_eq!(m.value("dkv_node_role", &[("role", "coordinator")]), 1.0);
    assert_eq!(m.value("dkv_node_role", &[("role", "replica")]), 0.0);
    assert_eq!(m.value("dkv_node_id", &[]), cid as f64);
    let epoch = m.value("dkv_epoch", &[]);
    assert!(epoch >= 1.0);
    assert!(m.value("dkv_commit_index", &[]) >= WRITES as f64);
    assert!(m.value("dkv_applied_index", &[]) >= WRITES as f64);
    assert!(m.value("dkv_log_last_index", &[]) >= m.value("dkv_commit_index", &[]));
    assert_eq!(m.value("dkv_isr_size", &[]), 3.0);
    assert_eq!(m.value("dkv_members", &[]), 3.0);
    assert!(m.value("dkv_lease_remaining_seconds", &[]) > 0.0);
    assert!(m.value("dkv_write_latency_seconds_count", &[]) >= WRITES as f64);
    assert!(m.value("dkv_read_latency_seconds_count", &[]) >= READS as f64);
    assert!(m.value("dkv_write_latency_seconds_sum", &[]) > 0.0);
    assert_eq!(
        m.value("dkv_write_latency_seconds_bucket", &[("le", "+Inf")]),
        m.value("dkv_write_latency_seconds_count", &[])
    );
    assert!(m.value("dkv_wal_fsync_duration_seconds_count", &[]) >= 1.0);
    let lag = m.value("dkv_replica_lag_entries", &[("replica", &rid.to_string())]);
    assert!(lag >= 0.0);
    let lag_bytes = m.value("dkv_replica_lag_bytes", &[("replica", &rid.to_string())]);
    assert!(lag_bytes >= 0.0);
    assert!(m.value("dkv_became_coordinator_total", &[]) >= 1.0);
    assert!(m.value("dkv_memory_used_bytes", &[]) > 0.0);
    assert_eq!(m.value("dkv_memory_max_bytes", &[]), 0.0);
    assert_eq!(
        m.value(
            "dkv_refused_writes_total",
            &[("reason", "not_enough_replicas")]
        ),
        0.0
    );
    assert!(m.value("dkv_open_connections", &[("port", "native")]) >= 1.0);
    assert!(m.get("dkv_open_connections", &[("port", "resp")]).is_some());
    assert_eq!(m.value("dkv_forged_beacons_total", &[]), 0.0);

    let r = Samples::of(&c.nodes[replica].metrics_addr);
    assert_eq!(r.value("dkv_node_role", &[("role", "replica")]), 1.0);
    assert_eq!(r.value("dkv_node_role", &[("role", "coordinator")]), 0.0);
    assert_eq!(r.value("dkv_epoch", &[]), epoch);
    assert_eq!(r.value("dkv_coordinator_id", &[]), cid as f64);
    assert_eq!(r.value("dkv_isr_size", &[]), 3.0);
    assert_eq!(r.value("dkv_lease_remaining_seconds", &[]), 0.0);
    assert!(r.value("dkv_applied_index", &[]) >= WRITES as f64 - 1.0);
    assert_eq!(r.value("dkv_write_latency_seconds_count", &[]), 0.0);
    assert!(r.get("dkv_replica_lag_entries", &[]).is_none());
    assert!(r.get("dkv_replica_lag_bytes", &[]).is_none());

    let s = Samples::of(&c.server.metrics_addr);
    assert_eq!(s.value("dkv_server_epoch", &[]), epoch);
    assert_eq!(s.value("dkv_server_coordinator_id", &[]), cid as f64);
    assert_eq!(s.value("dkv_server_members", &[]), 3.0);
    assert_eq!(s.value("dkv_server_isr_size", &[]), 3.0);
    assert_eq!(s.value("dkv_server_lease_live", &[]), 1.0);
    assert!(s.value("dkv_server_registrations_total", &[]) >= 3.0);
    assert!(s.value("dkv_server_grants_total", &[]) >= 0.0);
    assert!(s.value("dkv_server_requests_total", &[("kind", "status")]) >= 1.0);
    assert!(s.get("dkv_server_sentinel_connections", &[]).is_some());

    // promtool's linter (names, units, HELP), where Prometheus is installed.
    if common::skip::have_tool("promtool") {
        for addr in [&c.nodes[coord].metrics_addr, &c.server.metrics_addr] {
            let (_, body) = scrape(addr, None);
            let mut child = Command::new("promtool")
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(body.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    // The OpenMetrics rendering, for scrapers that ask for it, passes the
    // stricter parser.
    for addr in [&c.nodes[coord].metrics_addr, &c.server.metrics_addr] {
        let (ct, body) = scrape(addr, Some("application/openmetrics-text; version=1.0.0"));
        assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
        assert!(body.ends_with("# EOF\n"));
        assert!(!parse(&body, "openmetrics").is_empty());
    }
}

#[test]
fn hostile_http_gets_an_error_and_the_port_keeps_serving() {
    if !require_prometheus_client() {
        return;
    }
    let c = Cluster::start(
        "metrics-hostile",
        1,
        serde_json::json!({ "metrics-listen": "127.0.0.1:0" }),
    );
    for addr in [
        c.nodes[0].metrics_addr.clone(),
        c.server.metrics_addr.clone(),
    ] {
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            ("garbage", b"\x00\x01\x02 garbage\r\n\r\n".to_vec(), 400),
            (
                "HTTP/2 preface",
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
                400,
            ),
            (
                "bad header",
                b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n".to_vec(),
                400,
            ),
            ("wrong path", b"GET / HTTP/1.1\r\n\r\n".to_vec(), 404),
            (
                "wrong method",
                b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
                405,
            ),
            (
                "huge header",
                format!(
                    "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
                    "a".repeat(1 << 20)
                )
                .into_bytes(),
                431,
            ),
        ];
        for (what, req, want) in cases {
            let resp = http_raw(&addr, &req);
            assert_eq!(status_code(&resp), want, "{what} at {addr}: {resp:.200}");
            assert!(resp.contains("Connection: close"), "{what}: {resp:.200}");
        }
        let resp = http_raw(&addr, b"DELETE /metrics HTTP/1.1\r\n\r\n");
        assert!(resp.contains("Allow: GET, HEAD"), "{resp}");
        // A client that connects and sends nothing, or half a request, does
        // not stop others from scraping.
        let _idle = TcpStream::connect(&addr).unwrap();
        let mut half = TcpStream::connect(&addr).unwrap();
        half.write_all(b"GET /metr").unwrap();
        let t = Instant::now();
        let s = Samples::of(&addr);
        assert!(t.elapsed() < Duration::from_secs(2));
        assert!(!s.0.is_empty(), "still serving after hostile input");
    }
    // The node keeps serving its clients too.
    let mut client = c.client();
    client.put(b"after", b"ok").unwrap();
    assert_eq!(client.get(b"after").unwrap().as_deref(), Some(&b"ok"[..]));
}
