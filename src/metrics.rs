//! Prometheus metrics: the `/metrics` HTTP port of nodes and servers, the
//! lock-free [`Histogram`] the hot paths observe into, and helpers to write
//! metric families from state read at scrape time.
//!
//! The format is produced by `prometheus-client` (Prometheus text 0.0.4 by
//! default, OpenMetrics 1.0 when the scraper's `Accept` asks for it). What a
//! scrape reports is mostly read from the process's existing state (the log's
//! positions, the store's size, the serving view, the auth counters) by a
//! [`Collector`] the node and the server register; only what has no state to
//! read (latencies, failovers, refusals) is counted, with atomics.
//!
//! HTTP: one request per connection, answered and closed, on the listener
//! every other port uses ([`crate::net::listener`]: bounded, joined at
//! shutdown). A minimal blocking handler instead of an HTTP server crate: the
//! port serves one path to one method, and a crate (tiny_http, and more so a
//! framework) would bring its own accept thread and connection handling that
//! the node's shutdown could neither drain nor join, plus its dependency tree
//! to build; the handler is ~150 lines with every limit stated below.

use crate::core::server::ServerCore;
use crate::net::listener::{Listener, Service};
use crate::net::ConnLimit;
use crate::wire::{ServerRequest, ServerResponse};
pub use prometheus_client::collector::Collector;
pub use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::encoding::{EncodeGaugeValue, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Upper bounds (seconds) for request and fsync latencies: 50 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Upper bounds (seconds) for slow operations (snapshots): 10 ms to 10 min.
pub const SLOW_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// A histogram of durations: one atomic counter per bucket and an atomic
/// sum in nanoseconds. Observing is two relaxed `fetch_add`s and no lock
/// (prometheus-client's own histogram takes a mutex per observation, which
/// every connection thread would contend on). Cloning shares it.
#[derive(Clone)]
pub struct Histogram(Arc<HistogramInner>);

struct HistogramInner {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Histogram({} observations)", self.count())
    }
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        Histogram(Arc::new(HistogramInner {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }))
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = self.0.bounds.partition_point(|&b| b < s);
        self.0.counts[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.0.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observes the time since `started`.
    pub fn since(&self, started: Instant) {
        self.observe(started.elapsed());
    }

    pub fn count(&self) -> u64 {
        self.0
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// (sum in seconds, count, per-bucket counts with their upper bounds).
    /// The count is the buckets' total, so a scrape is self-consistent even
    /// while observations go on.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = self
            .0
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.0.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|b| b.1).sum();
        let sum = self.0.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (sum, count, buckets)
    }
}

/// Bumps a counter.
pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Writes metric families from a [`Collector`]. Names should start with
/// `dkv_` and end in their unit; counters get `_total` from the encoder.
pub struct Out<'a, 'b>(pub &'a mut DescriptorEncoder<'b>);

impl Out<'_, '_> {
    pub fn gauge(&mut self, name: &str, help: &str, v: impl EncodeGaugeValue) -> fmt::Result {
        let mut e = self
            .0
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        e.encode_gauge(&v)
    }

    pub fn counter(&mut self, name: &str, help: &str, v: u64) -> fmt::Result {
        let mut e = self
            .0
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        e.encode_counter::<NoLabelSet, _, u64>(&v, None)
    }

    /// One gauge per value of label `label`.
    pub fn gauges<V: EncodeGaugeValue>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (String, V)>,
    ) -> fmt::Result {
        let mut e = self
            .0
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (l, v) in values {
            let labels = [(label, l)];
            e.encode_family(&labels)?.encode_gauge(&v)?;
        }
        Ok(())
    }

    /// One counter per value of label `label`.
    pub fn counters(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (String, u64)>,
    ) -> fmt::Result {
        let mut e = self
            .0
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (l, v) in values {
            let labels = [(label, l)];
            e.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
        Ok(())
    }

    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) -> fmt::Result {
        let (sum, count, buckets) = h.snapshot();
        let mut e = self
            .0
            .encode_descriptor(name, help, None, MetricType::Histogram)?;
        e.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// What a scrape renders: the process's registry (its collectors read
/// state when called).
pub type Render = Arc<Registry>;

/// A registry holding one collector.
pub fn registry(c: impl Collector) -> Render {
    let mut r = Registry::default();
    r.register_collector(Box::new(c));
    Arc::new(r)
}

/// The two formats a scraper may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text 0.0.4 (the default).
    Prometheus,
    /// OpenMetrics 1.0 text, when `Accept` names `application/openmetrics-text`.
    OpenMetrics,
}

/// Encodes the registry; (content type, body).
pub fn render(reg: &Registry, format: Format) -> (&'static str, String) {
    let mut body = String::with_capacity(8 * 1024);
    let r = match format {
        Format::Prometheus => prometheus_client::encoding::prometheus_text::encode(&mut body, reg),
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut body, reg),
    };
    if let Err(e) = r {
        log::warn!("metrics: encoding failed: {e}");
    }
    let ct = match format {
        Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
    };
    (ct, body)
}

/// The longest request head (request line and headers) accepted; a longer
/// one gets 431.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Time for a whole request head to arrive, from the connection; then 408.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Concurrent metrics connections; more are answered 503 and closed. Its
/// own limit: scrapes never take a client's connection slot, nor clients a
/// scrape's.
pub const MAX_CONNECTIONS: usize = 16;

/// Starts serving `GET /metrics` on `listener`; `who` names the threads.
/// With `tls`, HTTPS only, as every port of a process with TLS.
pub fn start(
    listener: TcpListener,
    who: &str,
    reg: Render,
    tls: Option<Arc<crate::tls::Tls>>,
) -> io::Result<Listener> {
    Listener::start(
        listener,
        Service {
            name: format!("metrics-accept-{who}"),
            conn_name: format!("metrics-conn-{who}"),
            limit: ConnLimit::new(MAX_CONNECTIONS),
            write_timeout: READ_TIMEOUT,
            refuse: Box::new(|s, _| {
                let _ = reply(
                    s,
                    503,
                    "Service Unavailable",
                    &[],
                    "too many metrics connections\n",
                );
            }),
            tls,
            serve: Arc::new(move |s, _| serve(&s, &reg)),
        },
    )
}

/// A request the handler could not serve: status and reason.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpError(pub u16, pub &'static str, pub String);

/// What a request head asks for: the format, or the error to answer.
pub fn parse_head(head: &[u8]) -> Result<Format, HttpError> {
    let bad = |m: &str| HttpError(400, "Bad Request", m.to_string());
    let text = std::str::from_utf8(head).map_err(|_| bad("the request is not text"))?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !token(method) || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Err(bad("malformed request line (this port speaks HTTP/1.x)"));
    }
    let mut format = Format::Prometheus;
    for h in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = h.split_once(':') else {
            return Err(bad("malformed header line"));
        };
        if !token(name) {
            return Err(bad("malformed header name"));
        }
        if name.eq_ignore_ascii_case("accept")
            && value
                .to_ascii_lowercase()
                .contains("application/openmetrics-text")
        {
            format = Format::OpenMetrics;
        }
    }
    let path = target.split('?').next().unwrap_or("");
    if path != "/metrics" {
        return Err(HttpError(
            404,
            "Not Found",
            format!("no such path: {path}; try /metrics"),
        ));
    }
    if method != "GET" && method != "HEAD" {
        return Err(HttpError(
            405,
            "Method Not Allowed",
            format!("{method} is not allowed; use GET"),
        ));
    }
    Ok(format)
}

/// Reads the request head (through the blank line) within the limits.
fn read_head(s: &crate::net::Stream) -> Result<Option<Vec<u8>>, HttpError> {
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end);
            return Ok(Some(buf));
        }
        if buf.len() > MAX_HEAD_BYTES {
            let m = format!("request head above {MAX_HEAD_BYTES} bytes");
            return Err(HttpError(431, "Request Header Fields Too Large", m));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = || HttpError(408, "Request Timeout", "the request took too long".into());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            return Err(timeout());
        }
        match (&mut &*s).read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => return Err(HttpError(400, "Bad Request", "incomplete request".into())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timeout())
            }
            Err(_) => return Ok(None),
        }
    }
}

fn reply(
    s: &crate::net::Stream,
    code: u16,
    reason: &str,
    extra: &[&str],
    body: &str,
) -> io::Result<()> {
    reply_with(
        s,
        code,
        reason,
        "text/plain; charset=utf-8",
        extra,
        body,
        true,
    )
}

fn reply_with(
    s: &crate::net::Stream,
    code: u16,
    reason: &str,
    content_type: &str,
    extra: &[&str],
    body: &str,
    with_body: bool,
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for h in extra {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut w = s;
    w.write_all(head.as_bytes())?;
    if with_body {
        w.write_all(body.as_bytes())?;
    }
    w.flush()
}

/// One request: answered, then the connection is closed.
fn serve(s: &crate::net::Stream, reg: &Registry) {
    let _ = s.set_nodelay(true);
    let head = match read_head(s) {
        Ok(Some(h)) => h,
        Ok(None) => return,
        Err(HttpError(code, reason, m)) => {
            log::debug!("metrics: {code} {reason}: {m}");
            if reply(s, code, reason, &[], &format!("{m}\n")).is_ok() {
                crate::net::close_after_reply(s, crate::net::LINGER);
            }
            return;
        }
    };
    match parse_head(&head) {
        Ok(format) => {
            let started = Instant::now();
            let (ct, body) = render(reg, format);
            log::trace!(
                "metrics: rendered {} bytes in {:?}",
                body.len(),
                started.elapsed()
            );
            let with_body = !head.starts_with(b"HEAD ");
            let _ = reply_with(s, 200, "OK", ct, &[], &body, with_body);
        }
        Err(HttpError(code, reason, m)) => {
            let allow: &[&str] = if code == 405 {
                &["Allow: GET, HEAD"]
            } else {
                &[]
            };
            let _ = reply(s, code, reason, allow, &format!("{m}\n"));
        }
    }
    // A request body (none is expected) is read and dropped, so closing
    // does not reset the answer away.
    crate::net::close_after_reply(s, Duration::from_millis(100));
}

/// The server's request kinds (label `kind` of `dkv_server_requests_total`).
const REQUEST_KINDS: [&str; 10] = [
    "register",
    "who_is_coordinator",
    "view",
    "status",
    "set_isr",
    "request_grant",
    "auth",
    "rejoin",
    "remove_member",
    "handoff",
];

/// What a server counts: requests by kind, grants, registrations (the rest
/// is read from its core at scrape time).
#[derive(Debug, Default)]
pub struct ServerCounters {
    requests: [AtomicU64; REQUEST_KINDS.len()],
    grants: AtomicU64,
    registrations: AtomicU64,
}

impl ServerCounters {
    /// The request's kind, taken before the request is handled.
    pub fn kind(req: &ServerRequest) -> usize {
        match req {
            ServerRequest::Register { .. } => 0,
            ServerRequest::WhoIsCoordinator => 1,
            ServerRequest::View => 2,
            ServerRequest::Status { .. } => 3,
            ServerRequest::SetIsr { .. } => 4,
            ServerRequest::RequestGrant { .. } => 5,
            ServerRequest::Auth { .. } => 6,
            ServerRequest::Rejoin(_) => 7,
            ServerRequest::RemoveMember { .. } => 8,
            ServerRequest::Handoff { .. } => 9,
        }
    }

    /// Counts a handled request of `kind` and gives its response back.
    pub fn counted(&self, kind: usize, resp: ServerResponse) -> ServerResponse {
        inc(&self.requests[kind]);
        match (kind, &resp) {
            (0, ServerResponse::Registered { .. }) => inc(&self.registrations),
            // An election's grant, or a planned handoff's.
            (5 | 9, ServerResponse::Ok(_)) => inc(&self.grants),
            _ => {}
        }
        resp
    }
}

/// Reads a server's state at scrape time: its core (locked only to copy a
/// few numbers), its counters, its ports' connections.
pub struct ServerCollector {
    pub core: Arc<parking_lot::Mutex<ServerCore>>,
    pub counters: Arc<ServerCounters>,
    pub conns: crate::net::listener::LiveCount,
    pub sentinel: Option<crate::net::listener::LiveCount>,
}

impl fmt::Debug for ServerCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerCollector")
    }
}

impl Collector for ServerCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let (epoch, coordinator, members, isr, lease_live) = {
            let c = self.core.lock();
            let v = c.durable();
            let live = v.coordinator.is_some() && !c.lease_expired(Instant::now());
            (v.epoch, v.coordinator, v.members.len(), v.isr.len(), live)
        };
        let mut o = Out(&mut enc);
        o.gauge(
            "dkv_server_epoch",
            "The cluster's epoch at this server (one coordinator per epoch).",
            epoch,
        )?;
        o.gauge(
            "dkv_server_coordinator_id",
            "The coordinator this server granted the epoch to (0: none).",
            coordinator.unwrap_or(0),
        )?;
        o.gauge("dkv_server_members", "Registered members.", members)?;
        o.gauge(
            "dkv_server_isr_size",
            "Members of the in-sync set as recorded at this server.",
            isr,
        )?;
        o.gauge(
            "dkv_server_lease_live",
            "1 while a coordinator holds an unexpired lease from this server, else 0.",
            lease_live as i64,
        )?;
        let c = &self.counters;
        o.counter(
            "dkv_server_grants",
            "Epochs granted to an election winner.",
            get(&c.grants),
        )?;
        o.counter(
            "dkv_server_registrations",
            "Registrations accepted.",
            get(&c.registrations),
        )?;
        o.counters(
            "dkv_server_requests",
            "Requests handled, by kind.",
            "kind",
            REQUEST_KINDS
                .iter()
                .zip(&c.requests)
                .map(|(k, n)| (k.to_string(), get(n))),
        )?;
        o.gauge(
            "dkv_server_open_connections",
            "Open connections on the server port (nodes and clients).",
            self.conns.live(),
        )?;
        if let Some(s) = &self.sentinel {
            o.gauge(
                "dkv_server_sentinel_connections",
                "Open connections on the Sentinel port.",
                s.live(),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_by_upper_bound() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(1));
        let (sum, count, b) = h.snapshot();
        assert_eq!(count, 4);
        assert_eq!(b, vec![(0.001, 2), (0.01, 1), (f64::INFINITY, 1)]);
        assert!((sum - 1.0065).abs() < 1e-9);
    }

    #[test]
    fn request_heads() {
        let ok = |h: &str| parse_head(h.as_bytes());
        assert_eq!(
            ok("GET /metrics HTTP/1.1\r\nHost: x"),
            Ok(Format::Prometheus)
        );
        assert_eq!(ok("GET /metrics?x=1 HTTP/1.0"), Ok(Format::Prometheus));
        assert_eq!(
            ok("GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0"),
            Ok(Format::OpenMetrics)
        );
        assert_eq!(ok("GET / HTTP/1.1").unwrap_err().0, 404);
        assert_eq!(ok("POST /metrics HTTP/1.1").unwrap_err().0, 405);
        assert_eq!(ok("GET /metrics HTTP/2.0").unwrap_err().0, 400);
        assert_eq!(ok("\u{1}\u{2} garbage").unwrap_err().0, 400);
        assert_eq!(ok("GET /metrics HTTP/1.1\r\nno colon").unwrap_err().0, 400);
        assert_eq!(parse_head(&[0xff, 0xfe]).unwrap_err().0, 400);
    }
}
