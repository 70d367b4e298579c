//! Harnesses for every DKV decoder, shared by the fuzz targets
//! (`fuzz_targets/*.rs`, one line each) and by `tests/props.rs`, which
//! includes this file with `#[path]`. Each function takes arbitrary bytes,
//! feeds them to one decoder, and panics only when the decoder itself panics
//! or breaks one of the properties checked below:
//!
//! * `frames`: a decoded message re-encodes to bytes that decode to the same
//!   message; a frame stream is consumed exactly frame by frame; sealed
//!   (authenticated) streams are read without panicking.
//! * `resp`: every parsed command consumed at least one byte and at most the
//!   buffer, respects the limits, re-encodes as a RESP array that parses back
//!   to the same arguments, and every prefix of it asks for more bytes.
//! * `beacon`: an accepted beacon, with or without a cluster key, has our
//!   magic and version and round-trips.
//! * `record`: the in-memory reader and the streaming reader agree record by
//!   record, and on where and how a file goes bad.
//! * `config`: a config that parses is valid, its derived settings compute,
//!   and what it serializes to loads again.
//!
//! The first input byte of `frames`, `resp`, `beacon` and `record` picks the
//! message type, framing, limits or key; the rest is the input proper.
//! `config` takes the whole input as the file's text.

use dkv::auth::{ClusterKey, SessionKey};
use dkv::config::Config;
use dkv::resp::{self, Limits};
use dkv::storage::record::{self, BadRecord};
use dkv::storage::snapshot::SnapRecord;
use dkv::storage::wal::WalRecord;
use dkv::wire::{self, Beacon, Opener, WireError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use std::sync::OnceLock;

/// The names of the fuzz targets, which are also the folder names under
/// `fuzz/corpus/` and `fuzz/regressions/`.
pub const TARGETS: [&str; 5] = ["frames", "resp", "beacon", "record", "config"];

/// Runs the harness of target `name` on `data`.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "frames" => frames(data),
        "resp" => resp(data),
        "beacon" => beacon(data),
        "record" => record(data),
        "config" => config(data),
        other => panic!("unknown fuzz target {other}"),
    }
}

// ---------------------------------------------------------------------------
// Native frames
// ---------------------------------------------------------------------------

/// The cluster secret of sealed frames and keyed beacons in fuzz inputs and
/// seeds (a fuzzer cannot forge a tag, but it can mangle everything around
/// one).
pub const FUZZ_SECRET: &[u8] = b"dkv fuzz cluster secret";
/// The handshake nonces the sealed frames' session key is derived from.
pub const FUZZ_NONCES: ([u8; 16], [u8; 16]) = ([1; 16], [2; 16]);

/// The cluster key of keyed beacons.
pub fn fuzz_cluster_key() -> &'static ClusterKey {
    static KEY: OnceLock<ClusterKey> = OnceLock::new();
    KEY.get_or_init(|| ClusterKey::new(FUZZ_SECRET))
}

/// The session key (connector to acceptor) of sealed frames.
pub fn fuzz_session_key() -> SessionKey {
    let (c, a) = FUZZ_NONCES;
    fuzz_cluster_key().session(&c, &a).0
}

/// Message types of the native protocol, as picked by `data[0] & 7` in the
/// `frames` target.
pub const FRAME_TYPES: [&str; 8] = [
    "Hello",
    "HelloReply",
    "Request",
    "Response",
    "ReplMsg",
    "ReplAck",
    "ServerRequest",
    "ServerResponse",
];

/// Bit of `data[0]` in the `frames` target: the frames are sealed (tagged
/// with [`fuzz_session_key`]) rather than plain.
pub const FRAME_SEALED: u8 = 8;

/// `data[0] & 7` picks the message type (see [`FRAME_TYPES`]) and
/// `data[0] & FRAME_SEALED` the framing. Plain: the rest is decoded as one
/// bare body and as a stream of length-prefixed frames. Sealed: the rest is
/// read as an authenticated connection's stream.
pub fn frames(data: &[u8]) {
    use dkv::wire::{
        Hello, HelloReply, ReplAck, ReplMsg, Request, Response, ServerRequest, ServerResponse,
    };
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let settings = dkv::config::NodeSettings::default();
    let sealed = sel & FRAME_SEALED != 0;
    match sel & 7 {
        0 => frames_of::<Hello>(rest, wire::MAX_HELLO_FRAME, sealed),
        1 => frames_of::<HelloReply>(rest, wire::MAX_HELLO_FRAME, sealed),
        2 => frames_of::<Request>(rest, settings.max_client_frame(), sealed),
        3 => frames_of::<Response>(rest, settings.max_client_frame(), sealed),
        4 => frames_of::<ReplMsg>(rest, settings.max_repl_frame(), sealed),
        5 => frames_of::<ReplAck>(rest, settings.max_repl_frame(), sealed),
        6 => frames_of::<ServerRequest>(rest, wire::MAX_SERVER_FRAME, sealed),
        _ => frames_of::<ServerResponse>(rest, wire::MAX_SERVER_FRAME, sealed),
    }
}

fn frames_of<T>(bytes: &[u8], max: usize, sealed: bool)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    if sealed {
        let mut opener = Opener::new(Some(fuzz_session_key()));
        let mut r = bytes;
        while let Ok(msg) = opener.read::<_, T>(&mut r, max) {
            check_message(&msg, max);
        }
        return;
    }
    body_of::<T>(bytes, max);
    let mut r = bytes;
    loop {
        let before = r.len();
        match wire::read_frame_bytes(&mut r, max) {
            Ok(body) => {
                assert!(body.len() <= max, "frame of {} > {max} bytes", body.len());
                assert_eq!(
                    before - r.len(),
                    4 + body.len(),
                    "frame not consumed exactly"
                );
                body_of::<T>(&body, max);
            }
            Err(WireError::Closed) => {
                assert!(before < 4, "Closed with {before} bytes left");
                return;
            }
            Err(WireError::TooLarge { len, max: m }) => {
                assert!(len > m && m == max, "TooLarge {len} > {m}");
                return;
            }
            Err(WireError::Malformed(_)) => return,
            Err(e) => panic!("unexpected error reading a slice: {e}"),
        }
    }
}

fn body_of<T>(body: &[u8], max: usize)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    if let Ok(msg) = wire::decode::<T>(body, max) {
        check_message(&msg, max);
    }
}

/// A decoded message encodes to a body and a frame that decode to it again.
fn check_message<T>(msg: &T, max: usize)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let again = wire::encode(msg);
    let back: T = wire::decode(&again, max.max(again.len()))
        .unwrap_or_else(|e| panic!("{msg:?} re-encoded as {again:02x?} does not decode: {e}"));
    assert_eq!(&back, msg, "re-encoded message differs");
    let mut frame = Vec::new();
    wire::encode_frame_into(&mut frame, msg);
    assert_eq!(frame[..4], (again.len() as u32).to_be_bytes());
    assert_eq!(frame[4..], again[..]);
}

// ---------------------------------------------------------------------------
// RESP
// ---------------------------------------------------------------------------

/// Limits picked by the first input byte of the `resp` target: even bytes
/// the server's defaults, odd ones small limits so their edges are reached.
pub fn resp_limits(sel: u8) -> Limits {
    if sel & 1 == 0 {
        Limits::default()
    } else {
        Limits {
            max_bulk: 1 + ((sel as usize >> 1) & 0x1f),
            max_args: 1 + (sel as usize >> 6),
            max_inline: 64,
            max_command: 96,
        }
    }
}

/// `data[0]` picks the limits ([`resp_limits`]); the rest is a client's byte
/// stream, parsed command after command as a connection does.
pub fn resp(data: &[u8]) {
    let Some((&sel, buf)) = data.split_first() else {
        return;
    };
    let limits = resp_limits(sel);
    let mut pos = 0;
    while let Ok(Some((args, used))) = resp::parse_command(&buf[pos..], limits) {
        assert!(
            used > 0 && used <= buf.len() - pos,
            "consumed {used} of {} bytes",
            buf.len() - pos
        );
        let cmd = &buf[pos..pos + used];
        if !args.is_empty() {
            // AUTH / HELLO ... AUTH argument parsing, as a connection does.
            let _ = resp::auth_password(&args);
        }
        assert!(args.len() <= limits.max_args, "{} args", args.len());
        if cmd[0] == b'*' {
            assert!(used <= limits.max_command, "command of {used} bytes");
            for a in &args {
                assert!(a.len() <= limits.max_bulk, "bulk of {} bytes", a.len());
            }
            // The canonical encoding of the same arguments parses back.
            let enc = resp_array(&args);
            assert_eq!(
                resp::parse_command(&enc, limits),
                Ok(Some((args.clone(), enc.len()))),
                "canonical re-encoding of {args:?} does not parse back"
            );
        }
        // However TCP splits a command, the parser asks for more bytes
        // rather than answering differently. Cut a few places, and just
        // before every line end (the longest unfinished length lines).
        let line_ends = cmd.iter().enumerate().filter(|(_, &b)| b == b'\n');
        let cuts = [0, 1, used / 2, used - 1]
            .into_iter()
            .chain(line_ends.map(|(i, _)| i));
        for cut in cuts {
            if cut < used {
                assert_eq!(
                    resp::parse_command(&cmd[..cut], limits),
                    Ok(None),
                    "the first {cut} bytes of the command \"{}\" are not 'need more'",
                    cmd.escape_ascii()
                );
            }
        }
        pos += used;
    }
}

/// The RESP array of bulk strings a client sends for `args`.
pub fn resp_array(args: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

// ---------------------------------------------------------------------------
// Beacons
// ---------------------------------------------------------------------------

/// Bit of `data[0]` in the `beacon` target: the node has a cluster key
/// ([`fuzz_cluster_key`]), so datagrams must carry its tag.
pub const BEACON_KEYED: u8 = 1;

/// `data[0] & BEACON_KEYED` picks whether the receiver has a cluster key; the
/// rest is one UDP datagram.
pub fn beacon(data: &[u8]) {
    let Some((&sel, datagram)) = data.split_first() else {
        return;
    };
    let key = (sel & BEACON_KEYED != 0).then(fuzz_cluster_key);
    let Ok(b) = Beacon::decode(datagram, key) else {
        return;
    };
    assert_eq!((b.magic, b.version), (wire::MAGIC, wire::PROTOCOL_VERSION));
    let again = b.encode(key);
    assert_eq!(
        Beacon::decode(&again, key).ok(),
        Some(b),
        "beacon does not round-trip"
    );
}

// ---------------------------------------------------------------------------
// Log records (write-ahead log segments and snapshots)
// ---------------------------------------------------------------------------

/// `data[0]` even: a write-ahead log segment, odd: a snapshot file; the rest
/// is the file's bytes.
pub fn record(data: &[u8]) {
    let Some((&sel, image)) = data.split_first() else {
        return;
    };
    if sel & 1 == 0 {
        records_of::<WalRecord>(image)
    } else {
        records_of::<SnapRecord>(image)
    }
}

/// Reads a whole file image with `Reader` (WAL replay) and `read_from`
/// (snapshot loading) side by side.
fn records_of<T>(image: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let mut reader = record::Reader::new(image);
    let mut stream = image;
    let mut offset = 0u64;
    loop {
        let at = reader.offset();
        assert_eq!(at, offset, "the readers drifted apart");
        let a = reader.next_record::<T>();
        let b = record::read_from::<_, T>(&mut stream, &mut offset);
        match (a, b) {
            (Ok(Some(x)), Ok(Some(y))) => {
                assert_eq!(x, y, "the readers decoded record at {at} differently");
                assert!(reader.offset() > at, "no progress at {at}");
                let mut buf = Vec::new();
                record::encode_into(&mut buf, &x);
                let back = record::Reader::new(&buf).next_record::<T>();
                assert_eq!(back, Ok(Some(x)), "record at {at} does not round-trip");
            }
            (Ok(None), Ok(None)) => {
                assert_eq!(at, image.len() as u64, "clean end before the end");
                return;
            }
            (Err(a), Err(b)) => {
                let off = |e: &BadRecord| match e {
                    BadRecord::Torn { offset } | BadRecord::Corrupt { offset, .. } => *offset,
                };
                assert_eq!((off(&a), off(&b)), (at, at), "{a:?} / {b:?} not at {at}");
                // What the stream reader calls torn, the file reader does too
                // (the file reader also calls some damaged tails torn).
                if matches!(b, BadRecord::Torn { .. }) {
                    assert!(matches!(a, BadRecord::Torn { .. }), "{a:?} / {b:?}");
                }
                assert_eq!(reader.offset(), at, "advanced past a bad record");
                assert_eq!(reader.next_record::<T>().err(), Some(a), "not repeatable");
                return;
            }
            (a, b) => panic!("at offset {at} the readers disagree: {a:?} / {b:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------

/// A config file's text.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = Config::parse(text) else {
        return;
    };
    if let Err(e) = cfg.validate() {
        panic!("Config::parse accepted a config that validate() rejects: {e}");
    }
    // Every derived setting a node computes from a validated config.
    let n = &cfg.node_settings;
    let _ = (
        n.heartbeat(),
        n.failure_timeout(),
        n.voting_wait(),
        n.election_wait(),
        n.server_update_interval(),
        n.lease(),
        n.lease_at_coordinator(),
        n.lease_at_server(),
        n.client_idle_timeout(),
        n.client_deadlines(),
        n.fsync_interval(),
        n.write_timeout(),
        n.max_client_frame(),
        n.max_repl_frame(),
        n.required_in_sync(1),
        n.required_in_sync(1000),
    );
    let _ = cfg.warnings();
    // What the config serializes to loads as the same config.
    let json = serde_json::to_string(&cfg).expect("a config serializes");
    // (Not compared byte for byte: serde_json may parse a float 1 ulp off.)
    if let Err(e) = Config::parse(&json) {
        panic!("serialized config {json} does not load: {e}");
    }
}
