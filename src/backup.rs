//! Backups: a consistent snapshot of the whole store as one file, taken
//! from the live coordinator while writes go on, and loaded back through
//! the replicated write path (`dkv-client backup / restore / verify`).
//!
//! Three parts, each usable alone:
//!
//! * [`Feed`] — the coordinator's side of a [`Request::Backup`]: the frames
//!   to send, one at a time (the connection thread writes each before it
//!   asks for the next, so the socket is the back-pressure). No lock is held
//!   between frames; memory is one shard's copy and one chunk.
//! * [`take`] — the client's side: reads the stream, repairs the fuzzy copy
//!   with the log entries that came with it, checks the result against the
//!   coordinator's digest at the end position, and writes the file.
//! * [`read`] / [`restore`] — the file's reader (every byte hostile, every
//!   limit explicit) and the restore in batches of [`Command::Restore`].
//!
//! ## The file
//!
//! A sequence of checksummed records (`storage::record`: `[u32 len][u32
//! CRC32][bincode body]`), each a [`Record`]:
//!
//! ```text
//! Header { magic, version, position, keys, digest, created_ms }
//! Pairs([Pair; ≤ 1024, ≤ 1 MiB of keys and values, or one larger pair])   × n
//! End { keys, digest, records }
//! ```
//!
//! `position` is the committed log position the pairs are exactly as of;
//! `digest` is the store's content digest there (`store::StoreMeta::digest`,
//! the wrapping sum of `store::item_hash` over every pair), so a restored
//! cluster can be checked against it. The trailer repeats the count and
//! digest: a file cut at a record boundary is caught as truncated.
//!
//! ## Consistency
//!
//! See docs/ARCHITECTURE.md, "Backup and restore": the copy of each shard
//! reflects, for each key, its state at some position p with start ≤ p ≤
//! end; ops are idempotent full-state overwrites; so replaying every entry
//! in (start, end] over the copy gives each key its state at `end`, and the
//! coordinator's digest at `end` checks it.

use crate::client::Client;
use crate::commands::{Command, Value};
use crate::errors::Error;
use crate::log::ReplLog;
use crate::storage::record::{self, BadRecord};
use crate::store::{item_hash, Pair, Store};
use crate::types::{Entry, LogPos, Op};
use crate::wire::{Request, Response};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The file's first eight bytes of the header record's magic.
pub const MAGIC: [u8; 8] = *b"DKVBACK\x01";
/// Format version; a reader refuses any other.
pub const VERSION: u32 = 1;
/// Most pairs in one record (and in one restore batch).
pub const MAX_PAIRS_PER_RECORD: usize = 1024;
/// Key and value bytes per record or stream chunk, unless one pair is larger.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Largest frame a backup stream may send (one maximal entry or chunk);
/// the client refuses a larger one before allocating it.
pub const MAX_STREAM_FRAME: usize = record::MAX_RECORD;

/// One record of a backup file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    Header(Header),
    Pairs(Vec<Pair>),
    End(Trailer),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub magic: [u8; 8],
    pub version: u32,
    /// The committed log position the pairs are exactly as of.
    pub position: LogPos,
    pub keys: u64,
    /// The store's digest at `position`.
    pub digest: u64,
    /// When the backup was taken, ms since the UNIX epoch (client clock).
    pub created_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trailer {
    pub keys: u64,
    pub digest: u64,
    /// Pairs records between the header and this trailer.
    pub records: u64,
}

/// Why a backup file cannot be used: the file, the offset, what is wrong.
#[derive(Debug, PartialEq, Eq)]
pub struct FileError {
    pub path: PathBuf,
    pub offset: u64,
    pub what: String,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is not a usable backup: at offset {}, {}",
            self.path.display(),
            self.offset,
            self.what
        )
    }
}

impl std::error::Error for FileError {}

/// What a backup command failed on.
#[derive(Debug)]
pub enum BackupError {
    /// The file is corrupt, truncated or not a backup; nothing was written
    /// to the cluster.
    BadFile(FileError),
    /// The file could not be opened, read or written.
    Io(String),
    /// The cluster refused or could not be used.
    Cluster(Error),
    /// The restore refused a non-empty cluster (no `--force`).
    NotEmpty(String),
    /// The backup stream was inconsistent (a bug, or another version).
    Stream(String),
}

impl std::fmt::Display for BackupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackupError::BadFile(e) => e.fmt(f),
            BackupError::Io(m) | BackupError::NotEmpty(m) | BackupError::Stream(m) => {
                f.write_str(m)
            }
            BackupError::Cluster(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for BackupError {}

impl From<Error> for BackupError {
    fn from(e: Error) -> Self {
        BackupError::Cluster(e)
    }
}

/// What a whole, checked file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    pub position: LogPos,
    pub keys: u64,
    pub digest: u64,
    pub created_ms: u64,
    /// File size.
    pub bytes: u64,
    /// Bytes of keys and values.
    pub data_bytes: u64,
}

// ---------------------------------------------------------------------
// Reading a file.

fn bad(path: &Path, offset: u64, what: impl Into<String>) -> BackupError {
    BackupError::BadFile(FileError {
        path: path.to_path_buf(),
        offset,
        what: what.into(),
    })
}

/// Reads and checks the whole file at `path`, calling `each` with every
/// chunk of pairs in file order. Checks: the header's magic and version,
/// every record's length (at most `record::MAX_RECORD`) and CRC, that each
/// decodes, pairs per record (at most [`MAX_PAIRS_PER_RECORD`]), no empty
/// key, the key count and the recomputed digest against the header and the
/// trailer, and that nothing follows the trailer. `each` sees chunks before
/// the file is known whole: a caller that acts on them verifies first.
pub fn read(
    path: &Path,
    mut each: impl FnMut(Vec<Pair>) -> Result<(), BackupError>,
) -> Result<Info, BackupError> {
    let f = File::open(path)
        .map_err(|e| BackupError::Io(format!("cannot open {}: {e}", path.display())))?;
    let bytes = f.metadata().map(|m| m.len()).unwrap_or(0);
    read_from(path, bytes, BufReader::with_capacity(1 << 20, f), &mut each)
}

/// [`read`] over any reader of `bytes` bytes; `path` names it in errors.
pub fn read_from<R: std::io::Read>(
    path: &Path,
    bytes: u64,
    mut r: R,
    each: &mut dyn FnMut(Vec<Pair>) -> Result<(), BackupError>,
) -> Result<Info, BackupError> {
    let mut offset = 0u64;
    let mut next = |offset: &mut u64| -> Result<Option<Record>, BackupError> {
        record::read_from(&mut r, offset).map_err(|e| match e {
            BadRecord::Torn { offset } => bad(
                path,
                offset,
                "the file is truncated: the record there is incomplete",
            ),
            BadRecord::Corrupt { offset, reason } => bad(
                path,
                offset,
                format!("the record there is corrupt ({reason})"),
            ),
        })
    };
    let header = match next(&mut offset)? {
        Some(Record::Header(h)) => h,
        Some(_) => return Err(bad(path, 0, "the file does not start with a backup header")),
        None => return Err(bad(path, 0, "the file is empty")),
    };
    if header.magic != MAGIC {
        return Err(bad(path, 0, "not a DKV backup (wrong magic)"));
    }
    if header.version != VERSION {
        return Err(bad(
            path,
            0,
            format!(
                "backup format version {} (this dkv-client reads version {VERSION})",
                header.version
            ),
        ));
    }
    let (mut keys, mut digest, mut records, mut data_bytes) = (0u64, 0u64, 0u64, 0u64);
    loop {
        let at = offset;
        match next(&mut offset)? {
            None => {
                return Err(bad(
                    path,
                    at,
                    "the file is truncated: it ends before its end record",
                ))
            }
            Some(Record::Header(_)) => return Err(bad(path, at, "a second header")),
            Some(Record::Pairs(pairs)) => {
                if pairs.len() > MAX_PAIRS_PER_RECORD {
                    return Err(bad(
                        path,
                        at,
                        format!(
                            "a record of {} pairs (at most {MAX_PAIRS_PER_RECORD})",
                            pairs.len()
                        ),
                    ));
                }
                for p in &pairs {
                    if p.key.is_empty() {
                        return Err(bad(path, at, "a pair with an empty key"));
                    }
                    keys += 1;
                    digest = digest.wrapping_add(item_hash(&p.key, &p.value, p.expires_at));
                    data_bytes += (p.key.len() + p.value.len()) as u64;
                }
                if keys > header.keys {
                    return Err(bad(
                        path,
                        at,
                        format!("more keys than the {} the header states", header.keys),
                    ));
                }
                records += 1;
                each(pairs)?;
            }
            Some(Record::End(t)) => {
                if t.records != records || t.keys != keys || keys != header.keys {
                    return Err(bad(
                        path,
                        at,
                        format!(
                            "the file holds {keys} keys in {records} records; its header \
                             states {} keys, its end record {} keys in {} records",
                            header.keys, t.keys, t.records
                        ),
                    ));
                }
                if t.digest != digest || header.digest != digest {
                    return Err(bad(
                        path,
                        at,
                        format!(
                            "the pairs' digest is {digest:#018x}, the header states {:#018x} \
                             and the end record {:#018x}",
                            header.digest, t.digest
                        ),
                    ));
                }
                if offset != bytes {
                    return Err(bad(
                        path,
                        offset,
                        format!(
                            "{} bytes follow the end record",
                            bytes.saturating_sub(offset)
                        ),
                    ));
                }
                return Ok(Info {
                    position: header.position,
                    keys,
                    digest,
                    created_ms: header.created_ms,
                    bytes,
                    data_bytes,
                });
            }
        }
    }
}

// ---------------------------------------------------------------------
// The coordinator's side of a backup stream.

enum Stage {
    Begin,
    Shards,
    End,
    Done,
}

/// The frames of one backup stream, produced one at a time at the
/// coordinator. Each call takes the locks it needs only for its own copy:
/// a shard's read lock while that shard is copied, the log's lock per entry
/// read, the apply guard for the instant the end position and digest are
/// read. Memory: one shard's copy (a 64th of the data) and one frame.
pub struct Feed<'a> {
    store: &'a Store,
    log: &'a ReplLog,
    generation: u64,
    stage: Stage,
    shard: usize,
    /// Pairs of the current shard not yet sent.
    pairs: Vec<Pair>,
    /// Index of the next entry to send.
    next: u64,
    /// Entries up to this index are to be sent before the next shard.
    upto: u64,
    end: Option<crate::store::StoreMeta>,
}

impl<'a> Feed<'a> {
    /// A stream over `store` and the coordinator's `log`. The caller checked
    /// that this node serves as coordinator and applied its predecessor's log.
    pub fn new(store: &'a Store, log: &'a ReplLog) -> Self {
        Feed {
            store,
            log,
            generation: log.state().generation,
            stage: Stage::Begin,
            shard: 0,
            pairs: Vec::new(),
            next: 0,
            upto: 0,
            end: None,
        }
    }

    /// The next frame, `Ok(None)` after the end, or why the stream must stop
    /// (then the caller sends it as an error frame).
    pub fn next_frame(&mut self) -> Result<Option<Response>, String> {
        let st = self.log.state();
        if !st.leader || st.generation != self.generation {
            return Err(
                "this node stopped being the coordinator during the backup; \
                        nothing was written: run the backup again"
                    .into(),
            );
        }
        loop {
            match self.stage {
                Stage::Begin => {
                    let meta = self.store.meta();
                    self.next = meta.applied.index + 1;
                    self.upto = meta.applied.index;
                    self.stage = Stage::Shards;
                    return Ok(Some(Response::BackupBegin {
                        start: meta.applied,
                        keys: meta.keys,
                    }));
                }
                Stage::Shards => {
                    if self.next <= self.upto {
                        return self.entries().map(Some);
                    }
                    if !self.pairs.is_empty() {
                        let rest = split_chunk(&mut self.pairs);
                        let chunk = std::mem::replace(&mut self.pairs, rest);
                        return Ok(Some(Response::BackupPairs(chunk)));
                    }
                    if self.shard == self.store.shard_count() {
                        self.stage = Stage::End;
                        continue;
                    }
                    // Entries applied while the last shard was sent go out
                    // now, so the stream never needs more of the log than
                    // what is applied during one shard's copy and send.
                    self.upto = self.store.meta().applied.index;
                    self.pairs = self.store.shard_pairs(self.shard);
                    self.shard += 1;
                }
                Stage::End => {
                    let end = match self.end {
                        Some(m) => m,
                        None => {
                            // No apply is under way while the guard is held:
                            // the map is exactly the meta's position, and it
                            // holds every effect a shard copy could have seen.
                            let m = {
                                let _g = self.log.apply_guard();
                                self.store.meta()
                            };
                            self.upto = m.applied.index;
                            self.end = Some(m);
                            m
                        }
                    };
                    if self.next <= self.upto {
                        return self.entries().map(Some);
                    }
                    self.stage = Stage::Done;
                    return Ok(Some(Response::BackupEnd {
                        end: end.applied,
                        digest: end.digest,
                        keys: end.keys,
                    }));
                }
                Stage::Done => return Ok(None),
            }
        }
    }

    /// The next entries through `upto`, at most [`CHUNK_BYTES`] of payload
    /// (or one larger entry).
    fn entries(&mut self) -> Result<Response, String> {
        let mut out: Vec<Entry> = Vec::new();
        let mut bytes = 0;
        while self.next <= self.upto && (out.is_empty() || bytes < CHUNK_BYTES) {
            let Some(e) = self.log.entry_at(self.next) else {
                return Err(format!(
                    "the log no longer holds entry {} (trimmed past log-retention-entries) \
                     before the backup could send it: the backup fell behind the writes; \
                     nothing was written: retry, or raise log-retention-entries",
                    self.next
                ));
            };
            bytes += e.op.payload_len();
            out.push(e);
            self.next += 1;
        }
        Ok(Response::BackupEntries(out))
    }
}

/// Splits `pairs` after the first chunk (at most [`MAX_PAIRS_PER_RECORD`]
/// pairs and [`CHUNK_BYTES`], at least one pair); returns the rest.
fn split_chunk(pairs: &mut Vec<Pair>) -> Vec<Pair> {
    let (mut bytes, mut n) = (0, 0);
    for p in pairs.iter() {
        let len = p.key.len() + p.value.len();
        if n > 0 && (n == MAX_PAIRS_PER_RECORD || bytes + len > CHUNK_BYTES) {
            break;
        }
        bytes += len;
        n += 1;
    }
    pairs.split_off(n)
}

// ---------------------------------------------------------------------
// Progress.

/// A progress bar on a terminal (stderr), a line every few seconds otherwise.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    what: &'static str,
    last_line: Instant,
    done: u64,
    total: u64,
    quiet: bool,
}

impl Progress {
    /// `quiet`: show nothing (tests, scripts that want only the result).
    pub fn new(what: &'static str, total: u64, quiet: bool) -> Progress {
        use std::io::IsTerminal;
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:40}] {pos}/{len} keys {per_sec} eta {eta}",
                )
                .expect("style")
                .progress_chars("=> "),
            );
            b.set_message(what);
            b
        });
        Progress {
            bar,
            what,
            last_line: Instant::now(),
            done: 0,
            total,
            quiet,
        }
    }

    pub fn add(&mut self, n: u64) {
        self.done += n;
        if let Some(b) = &self.bar {
            if self.done > b.length().unwrap_or(0) {
                b.set_length(self.done);
            }
            b.set_position(self.done);
        } else if !self.quiet && self.last_line.elapsed() >= Duration::from_secs(2) {
            self.last_line = Instant::now();
            eprintln!("{}: {} of about {} keys", self.what, self.done, self.total);
        }
    }

    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

// ---------------------------------------------------------------------
// Taking a backup (client).

/// What [`take`] wrote.
#[derive(Clone, Debug)]
pub struct Taken {
    pub info: Info,
    /// The stream's start position and how many entries repaired the copy.
    pub start: LogPos,
    pub entries: u64,
}

/// The final state of the keys the log entries of the stream touched.
#[derive(Default)]
struct Overlay {
    keys: HashMap<Vec<u8>, Option<crate::commands::Stored>>,
    /// A flush was among the entries: the copy counts for nothing, only the
    /// overlay (the effects after the last flush) does.
    flushed: bool,
}

impl Overlay {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Put { key, value } => {
                self.keys.insert(key.clone(), Some((value.clone(), None)));
            }
            Op::PutExpiring {
                key,
                value,
                expires_at,
            } => {
                self.keys
                    .insert(key.clone(), Some((value.clone(), Some(*expires_at))));
            }
            Op::Delete { key } => {
                self.keys.insert(key.clone(), None);
            }
            Op::Batch(ops) => ops.iter().for_each(|o| self.apply(o)),
            Op::Flush => {
                self.keys.clear();
                self.flushed = true;
            }
        }
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> BackupError {
    BackupError::Io(format!("cannot {what} {}: {e}", path.display()))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Takes a backup through `client` into `path` (written as `path.partial`,
/// fsynced, then renamed, so `path` is whole or absent). The copy's pairs
/// wait in `path.pairs` until the end position is known; memory holds the
/// keys the stream's log entries touched.
pub fn take(client: &mut Client, path: &Path, quiet: bool) -> Result<Taken, BackupError> {
    let pairs_path = with_suffix(path, ".pairs");
    let res = take_inner(client, path, &pairs_path, quiet);
    let _ = std::fs::remove_file(&pairs_path);
    if res.is_err() {
        let _ = std::fs::remove_file(with_suffix(path, ".partial"));
    }
    res
}

fn take_inner(
    client: &mut Client,
    path: &Path,
    pairs_path: &Path,
    quiet: bool,
) -> Result<Taken, BackupError> {
    let tmp = File::create(pairs_path).map_err(|e| io_err("create", pairs_path, e))?;
    let mut tmp = BufWriter::with_capacity(1 << 20, tmp);
    let mut overlay = Overlay::default();
    let mut start = None;
    let mut next = 0u64;
    let mut last = LogPos::ZERO;
    let mut end = None;
    let mut entries = 0u64;
    let mut progress: Option<Progress> = None;
    let mut buf = Vec::new();
    let mut failure: Option<BackupError> = None;
    let stream_err = |m: String| BackupError::Stream(format!("the backup stream was invalid: {m}"));
    client
        .stream(&Request::Backup, MAX_STREAM_FRAME, |resp| {
            let r: Result<bool, BackupError> = (|| match resp {
                Response::BackupBegin { start: s, keys } if start.is_none() => {
                    start = Some(s);
                    last = s;
                    next = s.index + 1;
                    progress = Some(Progress::new("backup", keys, quiet));
                    Ok(true)
                }
                Response::BackupPairs(pairs) if start.is_some() && end.is_none() => {
                    if let Some(p) = &mut progress {
                        p.add(pairs.len() as u64);
                    }
                    buf.clear();
                    record::encode_into(&mut buf, &pairs);
                    tmp.write_all(&buf)
                        .map_err(|e| io_err("write", pairs_path, e))?;
                    Ok(true)
                }
                Response::BackupEntries(es) if start.is_some() && end.is_none() => {
                    for e in es {
                        if e.pos.index != next || e.pos < last {
                            return Err(stream_err(format!(
                                "entry {} where entry {next} was due",
                                e.pos
                            )));
                        }
                        overlay.apply(&e.op);
                        last = e.pos;
                        next += 1;
                        entries += 1;
                    }
                    Ok(true)
                }
                Response::BackupEnd {
                    end: e,
                    digest,
                    keys,
                } if start.is_some() && end.is_none() => {
                    if e != last {
                        return Err(stream_err(format!(
                            "it ended at {e} after entries through {last}"
                        )));
                    }
                    end = Some((e, digest, keys));
                    Ok(false)
                }
                Response::Error { kind, message } => Err(BackupError::Cluster(Error::from_reply(
                    kind,
                    format!("the coordinator ended the backup: {message}"),
                ))),
                other => Err(stream_err(format!(
                    "unexpected frame {}",
                    frame_name(&other)
                ))),
            })();
            r.map_err(|e| {
                let text = e.to_string();
                failure = Some(e);
                Error::Protocol(text)
            })
        })
        .map_err(|e| failure.take().unwrap_or(BackupError::Cluster(e)))?;
    if let Some(p) = progress {
        p.finish();
    }
    let (Some(start), Some((end, digest, keys))) = (start, end) else {
        return Err(stream_err("it ended without its end frame".into()));
    };
    tmp.flush().map_err(|e| io_err("write", pairs_path, e))?;
    drop(tmp);
    let partial = with_suffix(path, ".partial");
    let info = write_file(pairs_path, &partial, &overlay, end, keys, digest)?;
    std::fs::rename(&partial, path).map_err(|e| io_err("rename the backup to", path, e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(Taken {
        info: Info {
            bytes: info.bytes,
            ..info
        },
        start,
        entries,
    })
}

fn frame_name(r: &Response) -> &'static str {
    match r {
        Response::BackupBegin { .. } => "BackupBegin",
        Response::BackupPairs(_) => "BackupPairs",
        Response::BackupEntries(_) => "BackupEntries",
        Response::BackupEnd { .. } => "BackupEnd",
        _ => "that is not part of a backup",
    }
}

/// Merges the copy in `pairs_path` with the overlay into the backup file
/// `out`: the copy's pairs whose key no entry touched (none after a flush),
/// then the overlay's present keys. Checks the count and digest against the
/// coordinator's at `end` before anything is renamed into place.
fn write_file(
    pairs_path: &Path,
    out: &Path,
    overlay: &Overlay,
    end: LogPos,
    want_keys: u64,
    want_digest: u64,
) -> Result<Info, BackupError> {
    // Pass 1: count and digest, so the header can state them.
    let mut keys = 0u64;
    let mut digest = 0u64;
    let mut data_bytes = 0u64;
    let mut count = |p: (&[u8], &[u8], Option<u64>)| {
        keys += 1;
        digest = digest.wrapping_add(item_hash(p.0, p.1, p.2));
        data_bytes += (p.0.len() + p.1.len()) as u64;
    };
    each_copied(pairs_path, overlay, &mut |chunk| {
        chunk
            .iter()
            .for_each(|p| count((&p.key, &p.value, p.expires_at)));
        Ok(())
    })?;
    for (k, v) in &overlay.keys {
        if let Some((v, t)) = v {
            count((k, v, *t));
        }
    }
    if keys != want_keys || digest != want_digest {
        return Err(BackupError::Stream(format!(
            "the backup does not match the coordinator at {end}: {keys} keys with digest \
             {digest:#018x}, where the coordinator reported {want_keys} keys with digest \
             {want_digest:#018x}; nothing was written"
        )));
    }
    // Pass 2: write.
    let f = File::create(out).map_err(|e| io_err("create", out, e))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let mut buf = Vec::new();
    let mut records = 0u64;
    let mut emit = |w: &mut BufWriter<File>, rec: &Record| -> Result<(), BackupError> {
        buf.clear();
        record::encode_into(&mut buf, rec);
        w.write_all(&buf).map_err(|e| io_err("write", out, e))
    };
    emit(
        &mut w,
        &Record::Header(Header {
            magic: MAGIC,
            version: VERSION,
            position: end,
            keys,
            digest,
            created_ms: crate::types::wall_ms(),
        }),
    )?;
    each_copied(pairs_path, overlay, &mut |chunk| {
        records += 1;
        emit(&mut w, &Record::Pairs(chunk))
    })?;
    let mut chunk: Vec<Pair> = overlay
        .keys
        .iter()
        .filter_map(|(k, v)| {
            v.as_ref().map(|(v, t)| Pair {
                key: k.clone(),
                value: v.clone(),
                expires_at: *t,
            })
        })
        .collect();
    while !chunk.is_empty() {
        let rest = split_chunk(&mut chunk);
        records += 1;
        emit(&mut w, &Record::Pairs(std::mem::replace(&mut chunk, rest)))?;
    }
    emit(
        &mut w,
        &Record::End(Trailer {
            keys,
            digest,
            records,
        }),
    )?;
    let f = w
        .into_inner()
        .map_err(|e| io_err("write", out, e.into_error()))?;
    f.sync_all().map_err(|e| io_err("fsync", out, e))?;
    let bytes = f.metadata().map(|m| m.len()).unwrap_or(0);
    Ok(Info {
        position: end,
        keys,
        digest,
        created_ms: crate::types::wall_ms(),
        bytes,
        data_bytes,
    })
}

/// Calls `f` with the copy's pairs that stand in the backup, in chunks.
fn each_copied(
    pairs_path: &Path,
    overlay: &Overlay,
    f: &mut dyn FnMut(Vec<Pair>) -> Result<(), BackupError>,
) -> Result<(), BackupError> {
    if overlay.flushed {
        return Ok(());
    }
    let file = File::open(pairs_path).map_err(|e| io_err("open", pairs_path, e))?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut offset = 0;
    loop {
        let chunk: Vec<Pair> = match record::read_from(&mut r, &mut offset) {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(()),
            Err(e) => {
                return Err(BackupError::Io(format!(
                    "the temporary file {} changed under the backup: {e:?}",
                    pairs_path.display()
                )))
            }
        };
        let kept: Vec<Pair> = chunk
            .into_iter()
            .filter(|p| !overlay.keys.contains_key(&p.key))
            .collect();
        if !kept.is_empty() {
            f(kept)?;
        }
    }
}

// ---------------------------------------------------------------------
// Restoring (client).

/// What [`restore`] did.
#[derive(Clone, Debug)]
pub struct Restored {
    pub info: Info,
    /// Keys written; `skipped_expired` pairs had a deadline that had passed.
    pub written: u64,
    pub skipped_expired: u64,
    pub batches: u64,
    /// Whether the cluster was empty before the restore.
    pub was_empty: bool,
    /// The digest of the pairs written (the file's when none was skipped).
    pub expected_digest: u64,
    /// The coordinator's digest and key count after the restore.
    pub cluster_digest: u64,
    pub cluster_keys: u64,
}

/// Key count of the cluster (at the coordinator).
fn dbsize(client: &mut Client) -> Result<u64, BackupError> {
    match client.command(Command::DbSize)? {
        Value::Int(n) => Ok(n.max(0) as u64),
        other => Err(BackupError::Stream(format!(
            "DBSIZE answered {other:?}, not a number"
        ))),
    }
}

/// Restores the backup at `path` through `client`: verifies the whole file
/// first (nothing is written to a bad file's cluster), refuses a cluster
/// that holds keys unless `force` (then the file's keys overwrite, other
/// keys stay), then writes batches of at most [`MAX_PAIRS_PER_RECORD`]
/// pairs and about `max_key_bytes + max_value_bytes` of data, each one
/// [`Command::Restore`] through the replicated write path. Pairs whose
/// deadline passed are skipped (by this client's clock before sending, by
/// the coordinator's when it evaluates the batch).
pub fn restore(
    client: &mut Client,
    path: &Path,
    force: bool,
    quiet: bool,
) -> Result<Restored, BackupError> {
    let info = read(path, |_| Ok(()))?;
    let before = dbsize(client)?;
    if before > 0 && !force {
        return Err(BackupError::NotEmpty(format!(
            "the cluster holds {before} keys; restore loads only into an empty cluster \
             unless --force (then the file's keys overwrite and the other keys stay); \
             nothing was written"
        )));
    }
    let budget = client.options().max_key_bytes + client.options().max_value_bytes;
    let mut progress = Progress::new("restore", info.keys, quiet);
    let (mut written, mut skipped, mut batches, mut expected) = (0u64, 0u64, 0u64, 0u64);
    let mut batch: Vec<Pair> = Vec::new();
    let mut bytes = 0usize;
    let mut send = |client: &mut Client, batch: &mut Vec<Pair>| -> Result<u64, BackupError> {
        let n = batch.len() as u64;
        let pairs = std::mem::take(batch);
        let w = match client.command(Command::Restore { pairs })? {
            Value::Int(w) => w.max(0) as u64,
            Value::Error(e) => {
                return Err(BackupError::Cluster(Error::Refused(format!(
                    "the coordinator refused a restore batch: {e}"
                ))))
            }
            other => {
                return Err(BackupError::Stream(format!(
                    "a restore batch was answered {other:?}"
                )))
            }
        };
        batches += 1;
        Ok(n.saturating_sub(w))
    };
    let second = read(path, |chunk| {
        let now = crate::types::wall_ms();
        for p in chunk {
            if p.expires_at.is_some_and(|t| t <= now) {
                skipped += 1;
                progress.add(1);
                continue;
            }
            let len = p.key.len() + p.value.len() + 32;
            if !batch.is_empty() && (batch.len() == MAX_PAIRS_PER_RECORD || bytes + len > budget) {
                let n = batch.len() as u64;
                let late = send(client, &mut batch)?;
                written += n - late;
                skipped += late;
                progress.add(n);
                bytes = 0;
            }
            expected = expected.wrapping_add(item_hash(&p.key, &p.value, p.expires_at));
            bytes += len;
            batch.push(p);
        }
        Ok(())
    })?;
    if !batch.is_empty() {
        let n = batch.len() as u64;
        let late = send(client, &mut batch)?;
        written += n - late;
        skipped += late;
        progress.add(n);
    }
    progress.finish();
    if second != info {
        return Err(BackupError::Io(format!(
            "{} changed during the restore",
            path.display()
        )));
    }
    let view = client.cluster_view()?;
    let addr = view
        .coordinator_addr()
        .ok_or_else(|| Error::Unavailable("the server names no coordinator".into()))?
        .to_string();
    let st = client.node_status(&addr)?;
    Ok(Restored {
        info,
        written,
        skipped_expired: skipped,
        batches,
        was_empty: before == 0,
        expected_digest: expected,
        cluster_digest: st.digest,
        cluster_keys: st.keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(i: u64) -> Pair {
        Pair {
            key: format!("k{i}").into_bytes(),
            value: format!("v{i}").into_bytes(),
            expires_at: i.is_multiple_of(3).then_some(1_000 + i),
        }
    }

    fn image(pairs: &[Pair], per_record: usize) -> Vec<u8> {
        let digest = pairs.iter().fold(0u64, |d, p| {
            d.wrapping_add(item_hash(&p.key, &p.value, p.expires_at))
        });
        let mut b = Vec::new();
        record::encode_into(
            &mut b,
            &Record::Header(Header {
                magic: MAGIC,
                version: VERSION,
                position: LogPos::new(2, 7),
                keys: pairs.len() as u64,
                digest,
                created_ms: 5,
            }),
        );
        let chunks: Vec<_> = pairs.chunks(per_record).collect();
        for c in &chunks {
            record::encode_into(&mut b, &Record::Pairs(c.to_vec()));
        }
        record::encode_into(
            &mut b,
            &Record::End(Trailer {
                keys: pairs.len() as u64,
                digest,
                records: chunks.len() as u64,
            }),
        );
        b
    }

    fn check(bytes: &[u8]) -> Result<(Info, Vec<Pair>), BackupError> {
        let mut got = Vec::new();
        let info = read_from(Path::new("b.dkv"), bytes.len() as u64, bytes, &mut |c| {
            got.extend(c);
            Ok(())
        })?;
        Ok((info, got))
    }

    fn what(bytes: &[u8]) -> FileError {
        match check(bytes) {
            Err(BackupError::BadFile(e)) => e,
            other => panic!("expected a bad file, got {other:?}"),
        }
    }

    #[test]
    fn a_whole_file_reads_back_with_its_position_and_digest() {
        let pairs: Vec<_> = (0..50).map(pair).collect();
        let (info, got) = check(&image(&pairs, 7)).unwrap();
        assert_eq!(got, pairs);
        assert_eq!(info.position, LogPos::new(2, 7));
        assert_eq!(info.keys, 50);
        let (info0, _) = check(&image(&[], 7)).unwrap();
        assert_eq!((info0.keys, info0.digest), (0, 0));
    }

    #[test]
    fn every_truncation_is_refused_with_its_offset() {
        let img = image(&(0..20).map(pair).collect::<Vec<_>>(), 6);
        for cut in 0..img.len() {
            let e = what(&img[..cut]);
            assert!(e.offset <= cut as u64, "cut {cut}: {e}");
            assert!(
                e.what.contains("truncated") || e.what.contains("empty"),
                "cut {cut}: {e}"
            );
        }
    }

    #[test]
    fn every_flipped_byte_is_refused_without_panic() {
        let img = image(&(0..20).map(pair).collect::<Vec<_>>(), 6);
        for i in 0..img.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = img.clone();
                b[i] ^= bit;
                let e = what(&b);
                assert!(e
                    .to_string()
                    .starts_with("b.dkv is not a usable backup: at offset"));
            }
        }
    }

    #[test]
    fn hostile_records_are_refused_by_name() {
        let ok = image(&[pair(1)], 1);
        // Garbage after the end record.
        let mut b = ok.clone();
        b.extend_from_slice(b"xx");
        assert!(
            what(&b).what.contains("follow the end record"),
            "{}",
            what(&b)
        );
        // A record claiming 4 GiB, and one above the limit.
        for len in [u32::MAX, (record::MAX_RECORD + 1) as u32] {
            let mut b = ok[..].to_vec();
            let mut rec = len.to_le_bytes().to_vec();
            rec.extend_from_slice(&[0; 4]);
            rec.extend_from_slice(&[7; 100]);
            b.splice(0..0, rec);
            let e = what(&b);
            assert_eq!(e.offset, 0);
            assert!(e.what.contains("exceeds the limit"), "{e}");
        }
        // A pairs record whose vector length claims 2^60 pairs.
        let mut body = vec![1u8]; // variant Pairs
        body.push(0xfd); // varint u64 follows
        body.extend_from_slice(&(1u64 << 60).to_le_bytes());
        let mut b = Vec::new();
        record::encode_into(
            &mut b,
            &Record::Header(Header {
                magic: MAGIC,
                version: VERSION,
                position: LogPos::ZERO,
                keys: 0,
                digest: 0,
                created_ms: 0,
            }),
        );
        let at = b.len() as u64;
        b.extend_from_slice(&(body.len() as u32).to_le_bytes());
        b.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        b.extend_from_slice(&body);
        let e = what(&b);
        assert_eq!(e.offset, at);
        assert!(e.what.contains("corrupt"), "{e}");
        // Too many pairs in one record; an empty key; wrong magic, version.
        let many: Vec<_> = (0..MAX_PAIRS_PER_RECORD as u64 + 1).map(pair).collect();
        assert!(what(&image(&many, many.len()))
            .what
            .contains("pairs (at most"));
        let mut empty = pair(1);
        empty.key.clear();
        assert!(what(&image(&[empty], 1)).what.contains("empty key"));
        let mut b = Vec::new();
        record::encode_into(
            &mut b,
            &Record::Header(Header {
                magic: *b"NOTABACK",
                version: VERSION,
                position: LogPos::ZERO,
                keys: 0,
                digest: 0,
                created_ms: 0,
            }),
        );
        assert!(what(&b).what.contains("wrong magic"));
        assert!(what(b"hello, world, not a backup at all").offset == 0);
        assert!(what(&[]).what.contains("empty"));
    }

    #[test]
    fn counts_and_digests_that_disagree_are_refused() {
        let pairs: Vec<_> = (0..5).map(pair).collect();
        let mut b = Vec::new();
        let digest = pairs.iter().fold(0u64, |d, p| {
            d.wrapping_add(item_hash(&p.key, &p.value, p.expires_at))
        });
        let header = |keys, digest| {
            Record::Header(Header {
                magic: MAGIC,
                version: VERSION,
                position: LogPos::new(1, 1),
                keys,
                digest,
                created_ms: 0,
            })
        };
        record::encode_into(&mut b, &header(5, digest ^ 1));
        record::encode_into(&mut b, &Record::Pairs(pairs.clone()));
        record::encode_into(
            &mut b,
            &Record::End(Trailer {
                keys: 5,
                digest,
                records: 1,
            }),
        );
        assert!(what(&b).what.contains("digest"), "{}", what(&b));
        b.clear();
        record::encode_into(&mut b, &header(4, digest));
        record::encode_into(&mut b, &Record::Pairs(pairs));
        assert!(what(&b).what.contains("more keys than"), "{}", what(&b));
    }

    #[test]
    fn the_overlay_gives_each_key_its_last_state_and_a_flush_drops_the_copy() {
        let mut o = Overlay::default();
        o.apply(&Op::put(b"a".to_vec(), b"1".to_vec(), None));
        o.apply(&Op::Batch(vec![
            Op::Delete { key: b"a".to_vec() },
            Op::put(b"b".to_vec(), b"2".to_vec(), Some(9)),
        ]));
        assert_eq!(o.keys[&b"a"[..]], None);
        assert_eq!(o.keys[&b"b"[..]], Some((b"2".to_vec(), Some(9))));
        assert!(!o.flushed);
        o.apply(&Op::Flush);
        o.apply(&Op::put(b"c".to_vec(), b"3".to_vec(), None));
        assert!(o.flushed);
        assert_eq!(o.keys.len(), 1);
    }

    #[test]
    fn chunks_are_bounded_in_pairs_and_bytes_but_take_one_large_pair() {
        let mut v: Vec<_> = (0..3000).map(pair).collect();
        let rest = split_chunk(&mut v);
        assert_eq!((v.len(), rest.len()), (MAX_PAIRS_PER_RECORD, 3000 - 1024));
        let big = |n| Pair {
            key: b"k".to_vec(),
            value: vec![0; n],
            expires_at: None,
        };
        let mut v = vec![big(CHUNK_BYTES * 2), big(1)];
        let rest = split_chunk(&mut v);
        assert_eq!((v.len(), rest.len()), (1, 1));
    }

    /// The coordinator's stream, with writes applied between every two
    /// frames, replays to exactly the store at the end position: the
    /// consistency argument, run.
    #[test]
    fn the_stream_replayed_over_the_fuzzy_copy_is_the_store_at_its_end() {
        let store = Store::new();
        let log = ReplLog::new(1_000_000, false);
        log.become_leader(1, 1, &[1], 1);
        let write = |i: u64| {
            let op = match i % 5 {
                0 => Op::Delete {
                    key: format!("k{}", i % 700).into_bytes(),
                },
                1 => Op::Batch(vec![
                    Op::put(format!("k{}", i % 300).into_bytes(), b"b".to_vec(), Some(i)),
                    Op::put(format!("n{i}").into_bytes(), b"n".to_vec(), None),
                ]),
                _ => Op::put(
                    format!("k{}", i % 1000).into_bytes(),
                    i.to_le_bytes().to_vec(),
                    None,
                ),
            };
            log.append_leader(op).unwrap();
            let _g = log.apply_guard();
            log.apply_committed(&store, 1000);
        };
        for i in 0..3000 {
            write(i);
        }
        let mut feed = Feed::new(&store, &log);
        let mut copy: HashMap<Vec<u8>, Pair> = HashMap::new();
        let mut overlay = Overlay::default();
        let mut i = 3000;
        let (mut next, mut end) = (0, None);
        while let Some(f) = feed.next_frame().unwrap() {
            match f {
                Response::BackupBegin { start, .. } => next = start.index + 1,
                Response::BackupPairs(ps) => {
                    for p in ps {
                        assert!(copy.insert(p.key.clone(), p).is_none(), "a key twice");
                    }
                }
                Response::BackupEntries(es) => {
                    for e in es {
                        assert_eq!(e.pos.index, next);
                        next += 1;
                        overlay.apply(&e.op);
                    }
                }
                Response::BackupEnd {
                    end: e,
                    digest,
                    keys,
                } => {
                    assert_eq!(e.index + 1, next);
                    end = Some((digest, keys));
                }
                other => panic!("{other:?}"),
            }
            for _ in 0..7 {
                write(i);
                i += 1;
            }
        }
        let (digest, keys) = end.expect("an end frame");
        let mut merged: Vec<(Vec<u8>, Vec<u8>, Option<u64>)> = copy
            .into_values()
            .filter(|p| !overlay.keys.contains_key(&p.key))
            .map(|p| (p.key, p.value, p.expires_at))
            .collect();
        merged.extend(
            overlay
                .keys
                .into_iter()
                .filter_map(|(k, v)| v.map(|(v, t)| (k, v, t))),
        );
        let got = merged
            .iter()
            .fold(0u64, |d, (k, v, t)| d.wrapping_add(item_hash(k, v, *t)));
        assert_eq!((got, merged.len() as u64), (digest, keys));
        assert!(i > 3100, "writes went on during the stream");
    }
}
