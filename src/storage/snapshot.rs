//! Snapshot files: the whole map at a log position, as checksummed records.
//!
//! ```text
//! snap-<epoch>-<index>.snap   [Header{pos}] [Pairs] [Pairs] ... [End{keys}]
//! ```
//!
//! Written to a temporary name, fsynced, renamed and the directory fsynced,
//! so a snapshot file is complete or absent. The map is copied one shard at a
//! time while writes may continue: such a "fuzzy" snapshot may already hold
//! some effects of entries after `pos`, which replaying the log from `pos`
//! repairs (every op is an idempotent overwrite).

use super::record;
use crate::errors::{Error, Result};
use crate::store::{Delta, Store};
use crate::types::{LogPos, Op};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

const MAGIC: u32 = 0x444B_5353; // "DKSS"
/// Version 2 writes [`SnapRecord::Items`] (pairs with their deadlines);
/// version 1 files (only [`SnapRecord::Pairs`]) are still read.
const VERSION: u16 = 2;
const CHUNK_BYTES: usize = 1 << 20;

/// The records of a snapshot file: a header, chunks of pairs, an end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapRecord {
    Header {
        magic: u32,
        version: u16,
        pos: LogPos,
    },
    /// Version 1: pairs without deadlines.
    Pairs(Vec<(Vec<u8>, Vec<u8>)>),
    End {
        keys: u64,
    },
    Items(Vec<crate::store::Pair>),
}

fn name(pos: LogPos) -> String {
    format!("snap-{:020}-{:020}.snap", pos.epoch, pos.index)
}

fn parse_name(name: &str) -> Option<LogPos> {
    let rest = name.strip_prefix("snap-")?.strip_suffix(".snap")?;
    let (e, i) = rest.split_once('-')?;
    Some(LogPos::new(e.parse().ok()?, i.parse().ok()?))
}

fn err(path: &Path, e: std::io::Error) -> Error {
    Error::storage_io(path.display().to_string(), e)
}

/// Writes a snapshot of `store` taken at `pos` into `dir`; returns its path.
pub fn write(dir: &Path, pos: LogPos, store: &Store) -> Result<PathBuf> {
    let target = dir.join(name(pos));
    let tmp = dir.join(format!("{}.tmp", name(pos)));
    let f = File::create(&tmp).map_err(|e| err(&tmp, e))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let mut buf = Vec::with_capacity(CHUNK_BYTES + 4096);
    record::encode_into(
        &mut buf,
        &SnapRecord::Header {
            magic: MAGIC,
            version: VERSION,
            pos,
        },
    );
    let mut keys = 0u64;
    for shard in 0..store.shard_count() {
        let mut pairs = Vec::new();
        let mut bytes = 0;
        for p in store.shard_pairs(shard) {
            bytes += p.key.len() + p.value.len() + 24;
            pairs.push(p);
            if bytes >= CHUNK_BYTES {
                keys += pairs.len() as u64;
                record::encode_into(&mut buf, &SnapRecord::Items(std::mem::take(&mut pairs)));
                w.write_all(&buf).map_err(|e| err(&tmp, e))?;
                buf.clear();
                bytes = 0;
            }
        }
        if !pairs.is_empty() {
            keys += pairs.len() as u64;
            record::encode_into(&mut buf, &SnapRecord::Items(pairs));
        }
        w.write_all(&buf).map_err(|e| err(&tmp, e))?;
        buf.clear();
    }
    record::encode_into(&mut buf, &SnapRecord::End { keys });
    w.write_all(&buf).map_err(|e| err(&tmp, e))?;
    let f = w.into_inner().map_err(|e| err(&tmp, e.into_error()))?;
    f.sync_all().map_err(|e| err(&tmp, e))?;
    drop(f);
    fs::rename(&tmp, &target).map_err(|e| err(&target, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err(dir, e))?;
    Ok(target)
}

/// The newest snapshot in `dir`, if any.
pub fn latest(dir: &Path) -> Result<Option<(LogPos, PathBuf)>> {
    let mut best: Option<(LogPos, PathBuf)> = None;
    for ent in fs::read_dir(dir).map_err(|e| err(dir, e))? {
        let ent = ent.map_err(|e| err(dir, e))?;
        let n = ent.file_name();
        let n = n.to_string_lossy();
        if n.ends_with(".tmp") {
            // A snapshot that never finished: not ours to trust.
            let _ = fs::remove_file(ent.path());
            continue;
        }
        if let Some(pos) = parse_name(&n) {
            if best.as_ref().is_none_or(|(b, _)| pos > *b) {
                best = Some((pos, ent.path()));
            }
        }
    }
    Ok(best)
}

/// Deletes every snapshot older than `keep`.
pub fn remove_older(dir: &Path, keep: LogPos) -> Result<()> {
    for ent in fs::read_dir(dir).map_err(|e| err(dir, e))? {
        let ent = ent.map_err(|e| err(dir, e))?;
        if let Some(pos) = parse_name(&ent.file_name().to_string_lossy()) {
            if pos < keep {
                fs::remove_file(ent.path()).map_err(|e| err(&ent.path(), e))?;
            }
        }
    }
    Ok(())
}

/// Loads a snapshot into an empty `store`, streaming it record by record.
pub fn load(path: &Path, store: &Store) -> Result<LogPos> {
    let f = File::open(path).map_err(|e| err(path, e))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut offset = 0u64;
    let bad = |offset: u64, why: String| {
        Error::Storage(format!(
            "snapshot {} is damaged at offset {offset}: {why}; refusing to start",
            path.display()
        ))
    };
    let next = |r: &mut BufReader<File>, offset: &mut u64| -> Result<Option<SnapRecord>> {
        record::read_from(r, offset).map_err(|e| match e {
            record::BadRecord::Torn { offset } => bad(offset, "cut short".into()),
            record::BadRecord::Corrupt { offset, reason } => bad(offset, reason),
        })
    };
    let pos = match next(&mut r, &mut offset)? {
        Some(SnapRecord::Header {
            magic: MAGIC,
            version: 1 | VERSION,
            pos,
        }) => pos,
        _ => return Err(bad(0, "no valid header".into())),
    };
    store.clear(pos);
    let mut delta = Delta::default();
    let mut keys = 0u64;
    loop {
        let at = offset;
        match next(&mut r, &mut offset)? {
            Some(SnapRecord::Pairs(pairs)) => {
                keys += pairs.len() as u64;
                for (key, value) in pairs {
                    store.apply(&Op::Put { key, value }, &mut delta);
                }
            }
            Some(SnapRecord::Items(items)) => {
                keys += items.len() as u64;
                for p in items {
                    store.apply(&p.into_op(), &mut delta);
                }
            }
            Some(SnapRecord::End { keys: n }) if n == keys => break,
            Some(SnapRecord::End { keys: n }) => {
                return Err(bad(
                    at,
                    format!("holds {keys} keys, its end record says {n}"),
                ))
            }
            Some(SnapRecord::Header { .. }) => return Err(bad(at, "second header".into())),
            None => return Err(bad(at, "no end record".into())),
        }
    }
    store.commit(pos, delta);
    Ok(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_roundtrip_and_damage_is_detected() {
        let dir = std::env::temp_dir().join(format!("dkv-snap-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let s = Store::new();
        let mut d = Delta::default();
        for i in 0..5000u32 {
            s.apply(
                &Op::Put {
                    key: i.to_be_bytes().to_vec(),
                    value: vec![i as u8; 300],
                },
                &mut d,
            );
        }
        // Some keys carry a deadline: it is part of the snapshot.
        let mut d2 = Delta::default();
        s.apply(
            &Op::PutExpiring {
                key: b"ttl".to_vec(),
                value: b"v".to_vec(),
                expires_at: 1_800_000_000_000,
            },
            &mut d2,
        );
        s.commit(LogPos::new(3, 4999), d);
        s.commit(LogPos::new(3, 5000), d2);
        let path = write(&dir, LogPos::new(3, 5000), &s).unwrap();
        assert_eq!(latest(&dir).unwrap().unwrap().0, LogPos::new(3, 5000));
        let t = Store::new();
        assert_eq!(load(&path, &t).unwrap(), LogPos::new(3, 5000));
        assert_eq!(t.meta().digest, s.meta().digest);
        assert_eq!(t.meta().keys, 5001);
        assert_eq!(t.meta().expiring, 1);
        assert_eq!(
            t.get_pair(b"ttl"),
            Some((b"v".to_vec(), Some(1_800_000_000_000)))
        );

        let mut bytes = fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let e = load(&path, &Store::new()).unwrap_err().to_string();
        assert!(e.contains("damaged") && e.contains("snap-"), "{e}");
        let _ = fs::remove_dir_all(&dir);
    }
}
