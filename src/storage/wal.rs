//! The write-ahead log: numbered segment files of checksummed records.
//!
//! ```text
//! wal-0000000001.log  [SegmentStart{prev}] [Entry] [Entry] [Commit] [Truncate] ...
//! ```
//!
//! A segment starts with the log position just before its first entry. A new
//! segment is started when the current one passes `wal-segment-bytes`; after a
//! snapshot at position P, every segment whose entries are all at or below P
//! is deleted. `Truncate` records drop a divergent uncommitted suffix;
//! `Commit` records remember how far the log was committed, so a restarted
//! node applies exactly that much.

use super::record::{self, BadRecord};
use crate::errors::{Error, Result};
use crate::types::{Entry, LogPos};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One record of the write-ahead log. Append-only enum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WalRecord {
    SegmentStart {
        prev: LogPos,
    },
    Entry(Entry),
    /// Entries after `to` are gone.
    Truncate {
        to: LogPos,
    },
    /// Entries up to this index are committed.
    Commit(u64),
}

/// The same records, borrowed, for writing without copying entries. Must
/// list the variants in the same order as [`WalRecord`].
#[derive(Serialize)]
pub enum WalRecordRef<'a> {
    SegmentStart { prev: LogPos },
    Entry(&'a Entry),
    Truncate { to: LogPos },
    Commit(u64),
}

#[derive(Clone, Debug)]
pub struct Segment {
    pub seq: u64,
    pub path: PathBuf,
    /// Position just before the segment's first entry.
    pub prev: LogPos,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("wal-{seq:010}.log"))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What replaying the log found.
#[derive(Debug, Default)]
pub struct Replay {
    /// Entries after the snapshot position, in order.
    pub entries: Vec<Entry>,
    /// Highest committed index recorded.
    pub commit: u64,
    pub segments: Vec<Segment>,
    /// Bytes of log after the snapshot (drives the next snapshot).
    pub bytes: u64,
}

/// Reads every segment in `dir`, keeping entries after `base`. A torn record
/// at the very end of the last segment is cut off (with a log line); anything
/// else that does not check out is an error naming the file and offset.
pub fn replay(dir: &Path, base: LogPos) -> Result<Replay> {
    let mut segs: Vec<Segment> = Vec::new();
    for ent in fs::read_dir(dir).map_err(|e| storage_err(dir, e))? {
        let ent = ent.map_err(|e| storage_err(dir, e))?;
        let name = ent.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = name
            .strip_prefix("wal-")
            .and_then(|r| r.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            segs.push(Segment {
                seq,
                path: ent.path(),
                prev: LogPos::ZERO,
            });
        }
    }
    segs.sort_by_key(|s| s.seq);
    let mut fold = ReplayFold::new(base);
    let mut bytes_after = 0;
    let n = segs.len();
    for (i, seg) in segs.iter_mut().enumerate() {
        let bytes = fs::read(&seg.path).map_err(|e| storage_err(&seg.path, e))?;
        let mut r = record::Reader::new(&bytes);
        let is_last = i + 1 == n;
        let mut first = true;
        loop {
            let rec: WalRecord = match r.next_record() {
                Ok(Some(rec)) => rec,
                Ok(None) => break,
                Err(BadRecord::Torn { offset }) if is_last => {
                    log::warn!(
                        "write-ahead log {}: torn record at offset {offset} (of {} bytes) cut off; recovering up to it",
                        seg.path.display(),
                        bytes.len()
                    );
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&seg.path)
                        .map_err(|e| storage_err(&seg.path, e))?;
                    f.set_len(offset).map_err(|e| storage_err(&seg.path, e))?;
                    f.sync_all().map_err(|e| storage_err(&seg.path, e))?;
                    break;
                }
                Err(BadRecord::Torn { offset }) => {
                    return Err(Error::Storage(format!(
                        "write-ahead log {} is cut short at offset {offset}, but later segments exist; refusing to start",
                        seg.path.display()
                    )))
                }
                Err(BadRecord::Corrupt { offset, reason }) => {
                    return Err(Error::Storage(format!(
                        "corrupt write-ahead log record in {} at offset {offset}: {reason}; refusing to start",
                        seg.path.display()
                    )))
                }
            };
            let corrupt = |what: String| {
                Error::Storage(format!(
                    "write-ahead log {} at offset {}: {what}; refusing to start",
                    seg.path.display(),
                    r.offset()
                ))
            };
            match rec {
                WalRecord::SegmentStart { prev } if first => seg.prev = prev,
                _ if first => {
                    return Err(corrupt("segment does not start with its position".into()))
                }
                WalRecord::SegmentStart { .. } => {
                    return Err(corrupt("second segment header".into()))
                }
                rec => fold.record(rec).map_err(corrupt)?,
            }
            first = false;
        }
        if seg.prev.index >= base.index || i + 1 == n {
            bytes_after += bytes.len() as u64;
        }
    }
    let (entries, commit) = fold.finish();
    Ok(Replay {
        entries,
        commit,
        segments: segs,
        bytes: bytes_after,
    })
}

/// The rules of recovery, record by record: entries after the snapshot at
/// `base` must follow one another, a truncation drops a divergent suffix,
/// the commit is the highest recorded (never past the last entry). Shared
/// by [`replay`] and the simulator's model of the data directory.
pub struct ReplayFold {
    base: LogPos,
    last: LogPos,
    entries: Vec<Entry>,
    commit: u64,
}

impl ReplayFold {
    pub fn new(base: LogPos) -> Self {
        ReplayFold {
            base,
            last: base,
            entries: Vec::new(),
            commit: 0,
        }
    }

    /// Takes one record (not a segment header); `Err` says what is wrong.
    pub fn record(&mut self, rec: WalRecord) -> std::result::Result<(), String> {
        match rec {
            WalRecord::Entry(e) => {
                if e.pos.index <= self.base.index {
                    // Covered by the snapshot.
                } else if e.pos.index == self.last.index + 1 && e.pos.epoch >= self.last.epoch {
                    self.last = e.pos;
                    self.entries.push(e);
                } else {
                    return Err(format!("entry {} cannot follow {}", e.pos, self.last));
                }
            }
            WalRecord::Truncate { to } => {
                if to.index < self.last.index {
                    let keep = to.index.saturating_sub(self.base.index) as usize;
                    self.entries.truncate(keep);
                    self.last = self.entries.last().map(|e| e.pos).unwrap_or(self.base);
                }
            }
            WalRecord::Commit(c) => self.commit = self.commit.max(c),
            WalRecord::SegmentStart { .. } => return Err("second segment header".into()),
        }
        Ok(())
    }

    /// The entries after the base, and the commit index.
    pub fn finish(self) -> (Vec<Entry>, u64) {
        let commit = self.commit.min(self.last.index).max(self.base.index);
        (self.entries, commit)
    }
}

fn storage_err(path: &Path, e: std::io::Error) -> Error {
    Error::storage_io(path.display().to_string(), e)
}

/// The open log, appended to by the WAL thread.
pub struct Wal {
    dir: PathBuf,
    segments: Vec<Segment>,
    file: File,
    file_len: u64,
    segment_bytes: u64,
    /// Bytes appended since the last snapshot.
    pub bytes_since_snapshot: u64,
    /// Duration of each fsync of the log (a shared handle: metrics read it).
    pub fsync_seconds: crate::metrics::Histogram,
}

impl Wal {
    /// Opens the log for appending after a replay: continues the last
    /// segment, or starts the first one after `last`.
    pub fn open(dir: &Path, replay: &Replay, last: LogPos, segment_bytes: u64) -> Result<Wal> {
        let mut segments = replay.segments.clone();
        let (file, file_len) = match segments.last() {
            Some(seg) => {
                let f = OpenOptions::new()
                    .append(true)
                    .open(&seg.path)
                    .map_err(|e| storage_err(&seg.path, e))?;
                let len = f.metadata().map_err(|e| storage_err(&seg.path, e))?.len();
                (f, len)
            }
            None => {
                let seg = Segment {
                    seq: 1,
                    path: segment_path(dir, 1),
                    prev: last,
                };
                let (f, len) = create_segment(&seg)?;
                segments.push(seg);
                (f, len)
            }
        };
        Ok(Wal {
            dir: dir.to_path_buf(),
            segments,
            file,
            file_len,
            segment_bytes: segment_bytes.max(4096),
            bytes_since_snapshot: replay.bytes,
            fsync_seconds: crate::metrics::Histogram::new(crate::metrics::LATENCY_BUCKETS),
        })
    }

    /// Appends encoded records (one `write` call).
    pub fn append(&mut self, buf: &[u8]) -> Result<()> {
        let path = &self.segments.last().expect("a segment").path;
        self.file.write_all(buf).map_err(|e| storage_err(path, e))?;
        self.file_len += buf.len() as u64;
        self.bytes_since_snapshot += buf.len() as u64;
        Ok(())
    }

    /// Makes everything appended so far durable.
    pub fn sync(&self) -> Result<()> {
        let started = std::time::Instant::now();
        let r = self.file.sync_data();
        self.fsync_seconds.since(started);
        r.map_err(|e| storage_err(&self.segments.last().expect("a segment").path, e))
    }

    /// A handle for background fsync (`fsync: interval`).
    pub fn file_handle(&self) -> Result<File> {
        self.file.try_clone().map_err(|e| storage_err(&self.dir, e))
    }

    /// Starts a new segment when the current one is full.
    pub fn maybe_rotate(&mut self, last: LogPos) -> Result<bool> {
        if self.file_len < self.segment_bytes {
            return Ok(false);
        }
        self.sync()?;
        let seq = self.segments.last().map(|s| s.seq + 1).unwrap_or(1);
        let seg = Segment {
            seq,
            path: segment_path(&self.dir, seq),
            prev: last,
        };
        let (f, len) = create_segment(&seg)?;
        self.file = f;
        self.file_len = len;
        self.segments.push(seg);
        Ok(true)
    }

    /// Throws the whole log away: a snapshot at `pos` replaced the state.
    pub fn reset(&mut self, pos: LogPos) -> Result<()> {
        let seq = self.segments.last().map(|s| s.seq + 1).unwrap_or(1);
        let seg = Segment {
            seq,
            path: segment_path(&self.dir, seq),
            prev: pos,
        };
        let (f, len) = create_segment(&seg)?;
        for old in self.segments.drain(..) {
            fs::remove_file(&old.path).map_err(|e| storage_err(&old.path, e))?;
        }
        sync_dir(&self.dir).map_err(|e| storage_err(&self.dir, e))?;
        self.file = f;
        self.file_len = len;
        self.segments.push(seg);
        self.bytes_since_snapshot = 0;
        Ok(())
    }

    /// Deletes segments whose entries are all at or below `index`.
    pub fn drop_through(&mut self, index: u64) -> Result<usize> {
        let mut n = 0;
        while self.segments.len() > 1 && self.segments[1].prev.index <= index {
            let old = self.segments.remove(0);
            fs::remove_file(&old.path).map_err(|e| storage_err(&old.path, e))?;
            n += 1;
        }
        if n > 0 {
            sync_dir(&self.dir).map_err(|e| storage_err(&self.dir, e))?;
        }
        Ok(n)
    }
}

fn create_segment(seg: &Segment) -> Result<(File, u64)> {
    let mut f = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&seg.path)
        .map_err(|e| storage_err(&seg.path, e))?;
    let mut buf = Vec::new();
    record::encode_into(&mut buf, &WalRecord::SegmentStart { prev: seg.prev });
    f.write_all(&buf).map_err(|e| storage_err(&seg.path, e))?;
    f.sync_all().map_err(|e| storage_err(&seg.path, e))?;
    if let Some(dir) = seg.path.parent() {
        sync_dir(dir).map_err(|e| storage_err(dir, e))?;
    }
    Ok((f, buf.len() as u64))
}
