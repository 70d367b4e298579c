//! The load generator behind `dkv-client bench`: closed-loop clients, each on
//! its own thread and connection, doing reads and writes on a key space for a
//! duration or an op count, with per-op latency in an HDR histogram.
//!
//! A [`Target`] is what the clients talk to, so every system is measured by
//! the same generator.

use crate::errors::Error;
use crate::{Client, ClientOptions};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One client's connection to the system under test.
pub trait Target: Send {
    fn get(&mut self, key: &[u8]) -> Result<(), String>;
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), String>;
}

/// DKV's native protocol, through the server.
pub struct NativeTarget(Client);

impl NativeTarget {
    pub fn connect(
        server: &str,
        password: Option<Vec<u8>>,
        tls: Option<crate::tls::ClientTls>,
    ) -> Result<Self, Error> {
        let opts = ClientOptions {
            op_timeout: Duration::from_secs(10),
            password,
            tls,
            ..Default::default()
        };
        Ok(NativeTarget(Client::with_options(server, opts)?))
    }
}

fn kind(e: &Error) -> String {
    match e {
        Error::Unavailable(_) => "unavailable",
        Error::NotEnoughReplicas(_) => "not enough replicas",
        Error::Indeterminate(_) => "outcome unknown",
        Error::Refused(_) => "refused",
        _ => "other",
    }
    .to_string()
}

impl Target for NativeTarget {
    fn get(&mut self, key: &[u8]) -> Result<(), String> {
        self.0.get(key).map(|_| ()).map_err(|e| kind(&e))
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        self.0.put(key, value).map_err(|e| kind(&e))
    }
}

/// Any RESP endpoint (a DKV node or a Redis server), one connection.
/// With `wait_replicas`, every SET is followed by `WAIT n timeout`, which is
/// how Redis is made to wait for its replicas (synchronous replication).
pub struct RespTarget {
    stream: std::io::BufReader<crate::net::Stream>,
    out: Vec<u8>,
    wait_replicas: Option<u32>,
}

impl RespTarget {
    /// Over TLS when `tls` is given (`redis-benchmark --tls` does the same).
    pub fn connect(
        addr: &str,
        wait_replicas: Option<u32>,
        tls: Option<&crate::tls::ClientTls>,
    ) -> Result<Self, String> {
        let s = crate::net::dial(addr, Duration::from_secs(10), tls)
            .map_err(|e| format!("{addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        Ok(RespTarget {
            stream: std::io::BufReader::new(s),
            out: Vec::with_capacity(256),
            wait_replicas,
        })
    }

    fn command(&mut self, args: &[&[u8]]) -> Result<(), String> {
        use std::io::Write;
        self.out.clear();
        self.out
            .extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            self.out
                .extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            self.out.extend_from_slice(a);
            self.out.extend_from_slice(b"\r\n");
        }
        self.stream
            .get_mut()
            .write_all(&self.out)
            .map_err(|_| "connection".to_string())?;
        self.read_reply()
    }

    /// Reads one reply; an error reply becomes `Err(its first word)`.
    fn read_reply(&mut self) -> Result<(), String> {
        use std::io::{BufRead, Read};
        let mut line = Vec::new();
        self.stream
            .read_until(b'\n', &mut line)
            .map_err(|_| "connection".to_string())?;
        if line.len() < 3 {
            return Err("connection".into());
        }
        let body = &line[1..line.len() - 2];
        match line[0] {
            b'+' | b':' => Ok(()),
            b'-' => Err(String::from_utf8_lossy(body)
                .split_whitespace()
                .next()
                .unwrap_or("ERR")
                .to_string()),
            b'$' => {
                let n: i64 = std::str::from_utf8(body)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .ok_or("protocol")?;
                if n >= 0 {
                    let mut data = vec![0u8; n as usize + 2];
                    self.stream
                        .read_exact(&mut data)
                        .map_err(|_| "connection".to_string())?;
                }
                Ok(())
            }
            _ => Err("protocol".into()),
        }
    }
}

impl Target for RespTarget {
    fn get(&mut self, key: &[u8]) -> Result<(), String> {
        self.command(&[b"GET", key])
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        self.command(&[b"SET", key, value])?;
        if let Some(n) = self.wait_replicas {
            let n = n.to_string();
            self.command(&[b"WAIT", n.as_bytes(), b"1000"])?;
        }
        Ok(())
    }
}

/// etcd v3 through its JSON gateway (`POST /v3/kv/put`, `/v3/kv/range`) on
/// one keep-alive HTTP/1.1 connection: no client library, no gRPC stack, so
/// the client's own overhead is a few microseconds per request.
pub struct EtcdTarget {
    stream: std::io::BufReader<crate::net::Stream>,
    host: String,
    out: Vec<u8>,
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = ((b[0] as u32) << 16) | ((b[1] as u32) << 8) | b[2] as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

impl EtcdTarget {
    pub fn connect(addr: &str) -> Result<Self, String> {
        let s = std::net::TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        Ok(EtcdTarget {
            stream: std::io::BufReader::new(crate::net::Stream::plain(s)),
            host: addr.to_string(),
            out: Vec::with_capacity(512),
        })
    }

    fn post(&mut self, path: &str, body: &str) -> Result<(), String> {
        use std::io::{BufRead, Read, Write};
        self.out.clear();
        self.out.extend_from_slice(
            format!(
                "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                self.host,
                body.len()
            )
            .as_bytes(),
        );
        self.stream
            .get_mut()
            .write_all(&self.out)
            .map_err(|_| "connection".to_string())?;
        let mut line = String::new();
        self.stream
            .read_line(&mut line)
            .map_err(|_| "connection".to_string())?;
        let ok = line.split_whitespace().nth(1) == Some("200");
        let mut len = 0usize;
        loop {
            line.clear();
            self.stream
                .read_line(&mut line)
                .map_err(|_| "connection".to_string())?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; len];
        self.stream
            .read_exact(&mut body)
            .map_err(|_| "connection".to_string())?;
        if ok {
            Ok(())
        } else {
            Err("http error".into())
        }
    }
}

impl Target for EtcdTarget {
    fn get(&mut self, key: &[u8]) -> Result<(), String> {
        let body = format!("{{\"key\":\"{}\"}}", base64(key));
        self.post("/v3/kv/range", &body)
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let body = format!(
            "{{\"key\":\"{}\",\"value\":\"{}\"}}",
            base64(key),
            base64(value)
        );
        self.post("/v3/kv/put", &body)
    }
}

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub clients: usize,
    /// Run for this long (after warm-up) ...
    pub duration: Option<Duration>,
    /// ... or until this many ops were done in total.
    pub ops: Option<u64>,
    pub keys: u64,
    pub value_size: usize,
    /// Share of reads, 0.0 to 1.0.
    pub read_ratio: f64,
    pub warmup: Duration,
    pub progress: bool,
    /// Write every key of the key space exactly once, then stop (loading a
    /// dataset); ignores the duration, op count and read ratio.
    pub fill: bool,
}

#[derive(Clone, Debug)]
pub struct BenchResult {
    pub ops: u64,
    pub elapsed: Duration,
    pub ops_per_sec: f64,
    /// Microseconds.
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub errors: BTreeMap<String, u64>,
}

impl BenchResult {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "ops": self.ops,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "ops_per_sec": self.ops_per_sec,
            "latency_us": {"p50": self.p50, "p90": self.p90, "p99": self.p99, "p99_9": self.p999, "max": self.max},
            "errors": self.errors,
        })
    }

    pub fn print(&self) {
        let ms = |us: u64| us as f64 / 1000.0;
        println!(
            "{} ops in {:.2} s: {:.0} ops/s; latency ms p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}",
            self.ops,
            self.elapsed.as_secs_f64(),
            self.ops_per_sec,
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.p999),
            ms(self.max)
        );
        if !self.errors.is_empty() {
            let e: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            println!("errors: {}", e.join(", "));
        }
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Runs the benchmark: `connect(i)` opens client `i`'s target.
pub fn run<T: Target + 'static>(
    cfg: &BenchConfig,
    connect: impl Fn(usize) -> Result<T, String> + Sync,
) -> Result<BenchResult, String> {
    let targets: Vec<T> = (0..cfg.clients).map(&connect).collect::<Result<_, _>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    let recording = Arc::new(AtomicBool::new(cfg.warmup.is_zero() || cfg.fill));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let value = vec![b'v'; cfg.value_size];
    let budget = cfg.ops.map(|n| Arc::new(AtomicU64::new(n)));
    let next_key = Arc::new(AtomicU64::new(0));
    let fill = cfg.fill;
    let mut handles = Vec::new();
    for (i, mut t) in targets.into_iter().enumerate() {
        let (stop, recording, done, failed, errors, value, budget) = (
            stop.clone(),
            recording.clone(),
            done.clone(),
            failed.clone(),
            errors.clone(),
            value.clone(),
            budget.clone(),
        );
        let next_key = next_key.clone();
        let keys = cfg.keys.max(1);
        let read_ratio = cfg.read_ratio;
        handles.push(std::thread::spawn(move || {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut rng =
                Rng(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93));
            let mut key = Vec::with_capacity(24);
            while !stop.load(Ordering::Relaxed) {
                let rec = recording.load(Ordering::Relaxed);
                if rec {
                    if let Some(b) = &budget {
                        if b.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                            .is_err()
                        {
                            break;
                        }
                    }
                }
                let r = rng.next();
                let k = if fill {
                    let k = next_key.fetch_add(1, Ordering::Relaxed);
                    if k >= keys {
                        break;
                    }
                    k
                } else {
                    r % keys
                };
                key.clear();
                key.extend_from_slice(format!("key:{k:012}").as_bytes());
                let read = !fill && ((r >> 32) as f64 / u32::MAX as f64) < read_ratio;
                let t0 = Instant::now();
                let res = if read {
                    t.get(&key)
                } else {
                    t.put(&key, &value)
                };
                let us = t0.elapsed().as_micros() as u64;
                if !rec {
                    continue;
                }
                match res {
                    Ok(()) => {
                        let _ = hist.record(us.max(1));
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(kind) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        *errors.lock().expect("errors").entry(kind).or_default() += 1;
                    }
                }
            }
            hist
        }));
    }
    let bar = if cfg.progress {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .expect("style"),
        );
        Some(b)
    } else {
        None
    };
    if !cfg.warmup.is_zero() && !cfg.fill {
        if let Some(b) = &bar {
            b.set_message("warming up");
        }
        std::thread::sleep(cfg.warmup);
        recording.store(true, Ordering::Release);
    }
    let start = Instant::now();
    let mut last = (start, 0u64);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = Instant::now();
        let n = done.load(Ordering::Relaxed);
        if let Some(b) = &bar {
            if now - last.0 >= Duration::from_millis(500) {
                let rate = (n - last.1) as f64 / (now - last.0).as_secs_f64();
                b.set_message(format!(
                    "{rate:.0} ops/s, {n} ops, {} errors",
                    failed.load(Ordering::Relaxed)
                ));
                b.tick();
                last = (now, n);
            }
        }
        let time_up = !fill && cfg.duration.is_some_and(|d| now - start >= d);
        let ops_done = budget
            .as_ref()
            .is_some_and(|b| b.load(Ordering::Acquire) == 0);
        if time_up || ops_done || handles.iter().all(|h| h.is_finished()) {
            break;
        }
    }
    stop.store(true, Ordering::Release);
    let elapsed = start.elapsed();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    for h in handles {
        let part = h
            .join()
            .map_err(|_| "a client thread panicked".to_string())?;
        hist.add(&part).map_err(|e| e.to_string())?;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let ops = hist.len();
    let errors = errors.lock().expect("errors").clone();
    Ok(BenchResult {
        ops,
        elapsed,
        ops_per_sec: ops as f64 / elapsed.as_secs_f64(),
        p50: hist.value_at_quantile(0.5),
        p90: hist.value_at_quantile(0.9),
        p99: hist.value_at_quantile(0.99),
        p999: hist.value_at_quantile(0.999),
        max: hist.max(),
        errors,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc_4648() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"foobar"), "Zm9vYmFy");
    }
}
