//! The key-value map: a sharded, parking_lot-guarded hash table (a
//! std `HashSet`, which is a `HashMap` without values, of pairs keyed by their key,
//! one allocation each), plus the
//! position it reflects and a digest of its contents.
//!
//! One thread at a time writes: whoever holds the log's apply guard (the
//! thread that moved the commit, or the apply thread; see [`crate::log`]).
//! Readers take a shard read lock.
//! The digest is an order-independent sum of a hash of every (key, value)
//! pair, kept up to date at each apply, so two nodes at the same applied
//! position have equal digests exactly when their maps are equal (up to hash
//! collisions).

use crate::types::{LogPos, Op, OpOutcome};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

const SHARDS: usize = 64;

/// A shard: its pairs, each one [`Item`], found by key.
type Shard = HashSet<Item>;

/// One pair in one allocation: a 4-byte little-endian header (the key's
/// length, and in its top bit whether a deadline follows), the deadline when
/// there is one (8 bytes, ms since the UNIX epoch), the key, the value.
/// Against a map of two `Vec`s this saves an allocation and 32 bytes of
/// headers per pair, and the table's slots shrink from 48 bytes to 16
/// (`make bench-compare`, memory row); a key without a deadline pays nothing
/// for expiry. Hashed and compared by its key, so the set is looked up with
/// the key alone.
struct Item(Box<[u8]>);

const HAS_DEADLINE: u32 = 1 << 31;

impl Item {
    fn new(key: &[u8], value: &[u8], expires_at: Option<u64>) -> Item {
        // Keys are at most max-key-bytes (64 MiB): the length fits in 31 bits.
        let extra = if expires_at.is_some() { 8 } else { 0 };
        let mut b = Vec::with_capacity(4 + extra + key.len() + value.len());
        let flag = if expires_at.is_some() {
            HAS_DEADLINE
        } else {
            0
        };
        b.extend_from_slice(&(key.len() as u32 | flag).to_le_bytes());
        if let Some(t) = expires_at {
            b.extend_from_slice(&t.to_le_bytes());
        }
        b.extend_from_slice(key);
        b.extend_from_slice(value);
        Item(b.into_boxed_slice())
    }

    fn header(&self) -> u32 {
        u32::from_le_bytes([self.0[0], self.0[1], self.0[2], self.0[3]])
    }

    fn key_start(&self) -> usize {
        if self.header() & HAS_DEADLINE != 0 {
            12
        } else {
            4
        }
    }

    fn key_len(&self) -> usize {
        (self.header() & !HAS_DEADLINE) as usize
    }

    fn key(&self) -> &[u8] {
        let s = self.key_start();
        &self.0[s..s + self.key_len()]
    }

    fn value(&self) -> &[u8] {
        &self.0[self.key_start() + self.key_len()..]
    }

    fn expires_at(&self) -> Option<u64> {
        (self.header() & HAS_DEADLINE != 0)
            .then(|| u64::from_le_bytes(self.0[4..12].try_into().expect("8 bytes")))
    }

    fn hash(&self) -> u64 {
        item_hash(self.key(), self.value(), self.expires_at())
    }

    fn bytes(&self) -> i64 {
        item_bytes(self.key(), self.value(), self.expires_at())
    }
}

/// One key's contents as they leave the map: for snapshots and reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pair {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Deadline, ms since the UNIX epoch.
    pub expires_at: Option<u64>,
}

impl Pair {
    /// The op that recreates this pair.
    pub fn into_op(self) -> Op {
        Op::put(self.key, self.value, self.expires_at)
    }
}

impl Borrow<[u8]> for Item {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

impl Hash for Item {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.key().hash(h)
    }
}

impl PartialEq for Item {
    fn eq(&self, other: &Item) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Item {}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreMeta {
    /// Position of the last op applied.
    pub applied: LogPos,
    pub digest: u64,
    pub keys: u64,
    /// Keys that carry a deadline (expired or not).
    pub expiring: u64,
    /// Bytes of keys and values plus [`ENTRY_OVERHEAD`] per key: what
    /// `max-memory` is checked against.
    pub bytes: u64,
}

/// Bytes counted per key beyond its key and value: the map slot and the two
/// buffers' headers and allocator rounding, roughly.
pub const ENTRY_OVERHEAD: u64 = 64;

fn item_bytes(key: &[u8], value: &[u8], expires_at: Option<u64>) -> i64 {
    let deadline = if expires_at.is_some() { 8 } else { 0 };
    (key.len() + value.len() + deadline) as i64 + ENTRY_OVERHEAD as i64
}

pub struct Store {
    shards: Box<[RwLock<Shard>]>,
    meta: Mutex<StoreMeta>,
    /// Taken for writing while a batch of several ops or a flush is applied,
    /// for reading by readers of several keys: they see all of a batch or
    /// none of it. Single-key reads and ops do not take it.
    batch_gate: RwLock<()>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

/// Hash of one pair; the key length is mixed in so ("ab","c") != ("a","bc").
pub fn pair_hash(key: &[u8], value: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(&(key.len() as u64).to_le_bytes());
    h.update(key);
    h.update(value);
    h.digest()
}

/// Hash of one key's contents, its deadline included (a pair without one
/// hashes as [`pair_hash`]).
pub fn item_hash(key: &[u8], value: &[u8], expires_at: Option<u64>) -> u64 {
    let h = pair_hash(key, value);
    match expires_at {
        None => h,
        Some(t) => h ^ xxh3_64(&t.to_le_bytes()).rotate_left(17),
    }
}

/// The position a key takes in a [`Store::scan`]: the top 58 bits of its hash
/// (the bottom 6 pick the shard).
fn scan_rank(key: &[u8]) -> u64 {
    xxh3_64(key) >> 6
}

const RANK_BITS: u32 = 58;

/// Accumulated effect of applying ops, committed to the meta in one step.
#[derive(Default)]
pub struct Delta {
    digest: u64,
    keys: i64,
    expiring: i64,
    bytes: i64,
}

impl Delta {
    fn add(&mut self, it: &Item) {
        self.digest = self.digest.wrapping_add(it.hash());
        self.keys += 1;
        self.expiring += it.expires_at().is_some() as i64;
        self.bytes += it.bytes();
    }

    fn remove(&mut self, it: &Item) {
        self.digest = self.digest.wrapping_sub(it.hash());
        self.keys -= 1;
        self.expiring -= it.expires_at().is_some() as i64;
        self.bytes -= it.bytes();
    }
}

/// What one [`Store::scan`] call gives.
pub struct ScanPage {
    /// 0 when the iteration is complete.
    pub cursor: u64,
    pub keys: Vec<Vec<u8>>,
}

impl Store {
    pub fn new() -> Self {
        Store {
            shards: (0..SHARDS).map(|_| RwLock::new(HashSet::new())).collect(),
            meta: Mutex::new(StoreMeta::default()),
            batch_gate: RwLock::new(()),
        }
    }

    fn shard(&self, key: &[u8]) -> &RwLock<Shard> {
        &self.shards[(xxh3_64(key) as usize) % SHARDS]
    }

    /// The value at `key`, whether or not its deadline passed (the caller,
    /// who knows the time, decides).
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.shard(key)
            .read()
            .get(key)
            .map(|it| it.value().to_vec())
    }

    /// The value and deadline at `key`.
    pub fn get_pair(&self, key: &[u8]) -> Option<(Vec<u8>, Option<u64>)> {
        self.shard(key)
            .read()
            .get(key)
            .map(|it| (it.value().to_vec(), it.expires_at()))
    }

    /// Calls `f` with the value and deadline at `key`, without copying.
    pub fn with_pair<R>(&self, key: &[u8], f: impl FnOnce(Option<(&[u8], Option<u64>)>) -> R) -> R {
        let shard = self.shard(key).read();
        f(shard.get(key).map(|it| (it.value(), it.expires_at())))
    }

    /// Runs `f` so that it sees every batch whole or not at all (readers of
    /// several keys).
    pub fn consistent<R>(&self, f: impl FnOnce() -> R) -> R {
        let _g = self.batch_gate.read();
        f()
    }

    pub fn meta(&self) -> StoreMeta {
        *self.meta.lock()
    }

    /// Applies one op; the caller commits `delta` with [`Store::commit`].
    pub fn apply(&self, op: &Op, delta: &mut Delta) -> OpOutcome {
        match op {
            Op::Batch(ops) if ops.len() > 1 || op.has_flush() => {
                let _g = self.batch_gate.write();
                for o in ops {
                    self.apply_one(o, delta);
                }
                OpOutcome::Written
            }
            Op::Flush => {
                let _g = self.batch_gate.write();
                self.apply_one(op, delta)
            }
            op => self.apply_one(op, delta),
        }
    }

    fn apply_one(&self, op: &Op, delta: &mut Delta) -> OpOutcome {
        match op {
            Op::Put { key, value } => self.put(key, value, None, delta),
            Op::PutExpiring {
                key,
                value,
                expires_at,
            } => self.put(key, value, Some(*expires_at), delta),
            Op::Delete { key } => {
                let removed = self.shard(key).write().take(key.as_slice());
                if let Some(old) = &removed {
                    delta.remove(old);
                }
                OpOutcome::Deleted(removed.is_some())
            }
            Op::Batch(ops) => {
                for o in ops {
                    self.apply_one(o, delta);
                }
                OpOutcome::Written
            }
            Op::Flush => {
                for s in self.shards.iter() {
                    let old = std::mem::take(&mut *s.write());
                    for it in &old {
                        delta.remove(it);
                    }
                }
                OpOutcome::Written
            }
        }
    }

    fn put(
        &self,
        key: &[u8],
        value: &[u8],
        expires_at: Option<u64>,
        delta: &mut Delta,
    ) -> OpOutcome {
        let item = Item::new(key, value, expires_at);
        delta.add(&item);
        if let Some(old) = self.shard(key).write().replace(item) {
            delta.remove(&old);
        }
        OpOutcome::Written
    }

    /// Publishes the effect of the ops applied since the last commit.
    pub fn commit(&self, applied: LogPos, delta: Delta) {
        let mut m = self.meta.lock();
        m.applied = applied;
        m.digest = m.digest.wrapping_add(delta.digest);
        m.keys = (m.keys as i64 + delta.keys) as u64;
        m.expiring = (m.expiring as i64 + delta.expiring) as u64;
        m.bytes = (m.bytes as i64 + delta.bytes) as u64;
    }

    /// Empties the map (before installing a snapshot).
    pub fn clear(&self, applied: LogPos) {
        for s in self.shards.iter() {
            *s.write() = HashSet::new();
        }
        *self.meta.lock() = StoreMeta {
            applied,
            ..StoreMeta::default()
        };
    }

    /// Number of shards, for snapshot iteration.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// A copy of one shard's pairs, for streaming a snapshot one shard at a time.
    pub fn shard_pairs(&self, i: usize) -> Vec<Pair> {
        self.shards[i]
            .read()
            .iter()
            .map(|it| Pair {
                key: it.key().to_vec(),
                value: it.value().to_vec(),
                expires_at: it.expires_at(),
            })
            .collect()
    }

    /// Up to `max` keys of shard `i` whose deadline is at or before `now_ms`.
    pub fn expired_in_shard(&self, i: usize, now_ms: u64, max: usize) -> Vec<Vec<u8>> {
        self.shards[i % SHARDS]
            .read()
            .iter()
            .filter(|it| it.expires_at().is_some_and(|t| t <= now_ms))
            .take(max)
            .map(|it| it.key().to_vec())
            .collect()
    }

    /// One step of an iteration over every key: start with cursor 0, pass
    /// each returned cursor back, stop when it is 0. Every key present for
    /// the whole iteration is returned exactly once, however the map changes
    /// meanwhile: a cursor is a shard and a rank within it (a fixed hash of
    /// the key), and each call returns the keys of the next ranks of one
    /// shard. A call returns at least `count` keys where the shard has them
    /// (more on large shards, so a whole pass costs a bounded number of
    /// passes over each shard); `keep` filters them afterwards, so a page
    /// may be empty with a nonzero cursor, as in Redis.
    pub fn scan(
        &self,
        cursor: u64,
        count: usize,
        keep: impl Fn(&[u8], Option<u64>) -> bool,
    ) -> ScanPage {
        let mut shard = (cursor >> RANK_BITS) as usize;
        let mut from = cursor & ((1 << RANK_BITS) - 1);
        let mut keys = Vec::new();
        while shard < SHARDS {
            let set = self.shards[shard].read();
            let want = count.max(set.len() / 16).max(1);
            let mut ranked: Vec<(u64, &Item)> = set
                .iter()
                .map(|it| (scan_rank(it.key()), it))
                .filter(|(r, _)| *r >= from)
                .collect();
            let next = if ranked.len() > want {
                ranked.select_nth_unstable_by_key(want - 1, |(r, _)| *r);
                let cut = ranked[want - 1].0;
                // Keys of equal rank go together: the cursor names a rank.
                ranked.retain(|(r, _)| *r <= cut);
                cut.checked_add(1).filter(|c| *c < 1 << RANK_BITS)
            } else {
                None
            };
            keys.extend(
                ranked
                    .iter()
                    .filter(|(_, it)| keep(it.key(), it.expires_at()))
                    .map(|(_, it)| it.key().to_vec()),
            );
            let fetched = ranked.len();
            drop(set);
            match next {
                Some(rank) => {
                    return ScanPage {
                        cursor: ((shard as u64) << RANK_BITS) | rank,
                        keys,
                    }
                }
                None => {
                    shard += 1;
                    from = 0;
                    if fetched >= count && shard < SHARDS {
                        return ScanPage {
                            cursor: (shard as u64) << RANK_BITS,
                            keys,
                        };
                    }
                }
            }
        }
        ScanPage { cursor: 0, keys }
    }

    /// A key picked at random among those `keep` accepts (tries a few).
    pub fn random_key(
        &self,
        seed: u64,
        keep: impl Fn(&[u8], Option<u64>) -> bool,
    ) -> Option<Vec<u8>> {
        let mut x = seed | 1;
        for _ in 0..SHARDS * 2 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let set = self.shards[(x as usize) % SHARDS].read();
            if set.is_empty() {
                continue;
            }
            let n = (x >> 8) as usize % set.len();
            if let Some(it) = set
                .iter()
                .cycle()
                .skip(n)
                .take(set.len())
                .find(|it| keep(it.key(), it.expires_at()))
            {
                return Some(it.key().to_vec());
            }
        }
        None
    }

    /// Recomputes the digest from scratch (tests and consistency checks).
    pub fn recompute_digest(&self) -> u64 {
        let mut d = 0u64;
        for s in self.shards.iter() {
            for it in s.read().iter() {
                d = d.wrapping_add(it.hash());
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Op {
        Op::Put {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn digest_tracks_contents_in_any_order() {
        let a = Store::new();
        let b = Store::new();
        let mut d = Delta::default();
        a.apply(&put("x", "1"), &mut d);
        a.apply(&put("y", "2"), &mut d);
        a.apply(&put("x", "3"), &mut d);
        a.commit(LogPos::new(1, 3), d);
        let mut d = Delta::default();
        b.apply(&put("y", "2"), &mut d);
        b.apply(&put("z", "9"), &mut d);
        assert_eq!(
            b.apply(&Op::Delete { key: "z".into() }, &mut d),
            OpOutcome::Deleted(true)
        );
        assert_eq!(
            b.apply(&Op::Delete { key: "z".into() }, &mut d),
            OpOutcome::Deleted(false)
        );
        b.apply(&put("x", "3"), &mut d);
        b.commit(LogPos::new(1, 5), d);
        assert_eq!(a.meta().digest, b.meta().digest);
        assert_eq!(a.meta().digest, a.recompute_digest());
        assert_eq!(a.meta().keys, 2);
        assert_eq!(b.meta().keys, 2);
        assert_eq!(a.get(b"x"), Some(b"3".to_vec()));
    }

    #[test]
    fn puts_overwrites_and_deletes_read_back() {
        let s = Store::new();
        let mut d = Delta::default();
        assert_eq!(s.apply(&put("k", "v1"), &mut d), OpOutcome::Written);
        assert_eq!(
            s.apply(&put("k", "a longer value"), &mut d),
            OpOutcome::Written
        );
        assert_eq!(s.apply(&put("", ""), &mut d), OpOutcome::Written);
        assert_eq!(s.get(b"k"), Some(b"a longer value".to_vec()));
        assert_eq!(s.get(b""), Some(vec![]));
        assert_eq!(s.get(b"kk"), None);
        let del = |k: &str| Op::Delete {
            key: k.as_bytes().to_vec(),
        };
        assert_eq!(s.apply(&del("k"), &mut d), OpOutcome::Deleted(true));
        assert_eq!(s.apply(&del("k"), &mut d), OpOutcome::Deleted(false));
        s.commit(LogPos::new(1, 5), d);
        let m = s.meta();
        assert_eq!((m.keys, m.bytes), (1, ENTRY_OVERHEAD));
        assert_eq!(m.digest, s.recompute_digest());
        assert_eq!(s.get(b"k"), None);
    }

    #[test]
    fn pair_boundaries_matter() {
        assert_ne!(pair_hash(b"ab", b"c"), pair_hash(b"a", b"bc"));
    }

    #[test]
    fn scan_returns_every_key_present_throughout_once_while_the_map_grows() {
        let s = Store::new();
        let mut d = Delta::default();
        for i in 0..3000u32 {
            s.apply(&put(&format!("k{i}"), "v"), &mut d);
        }
        let (mut cursor, mut seen, mut calls) = (0, Vec::new(), 0);
        loop {
            let page = s.scan(cursor, 10, |_, _| true);
            seen.extend(page.keys);
            calls += 1;
            // Keys added (and one deleted) during the iteration.
            s.apply(&put(&format!("new{calls}"), "v"), &mut d);
            cursor = page.cursor;
            if cursor == 0 {
                break;
            }
        }
        let n = seen.len();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), n, "a key was returned twice");
        for i in 0..3000u32 {
            assert!(
                seen.binary_search(&format!("k{i}").into_bytes()).is_ok(),
                "k{i} missed"
            );
        }
        assert!(calls > 64, "pages are bounded ({calls} calls)");
    }

    #[test]
    fn deadlines_are_part_of_the_contents_and_of_the_digest() {
        let s = Store::new();
        let mut d = Delta::default();
        let ex = |t| Op::PutExpiring {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            expires_at: t,
        };
        s.apply(&ex(5), &mut d);
        s.commit(LogPos::new(1, 1), d);
        let with = s.meta();
        assert_eq!((with.keys, with.expiring), (1, 1));
        assert_eq!(s.get_pair(b"k"), Some((b"v".to_vec(), Some(5))));
        let mut d = Delta::default();
        s.apply(&put("k", "v"), &mut d);
        s.commit(LogPos::new(1, 2), d);
        let without = s.meta();
        assert_eq!((without.keys, without.expiring), (1, 0));
        assert_ne!(with.digest, without.digest);
        assert_eq!(without.digest, s.recompute_digest());
        let mut d = Delta::default();
        s.apply(&Op::Batch(vec![ex(9), put("j", "w")]), &mut d);
        s.apply(&Op::Flush, &mut d);
        s.apply(&put("z", "1"), &mut d);
        s.commit(LogPos::new(1, 3), d);
        let m = s.meta();
        assert_eq!((m.keys, m.expiring, m.bytes), (1, 0, 2 + ENTRY_OVERHEAD));
        assert_eq!(m.digest, s.recompute_digest());
        assert_eq!(s.expired_in_shard(0, u64::MAX, 10).len(), 0);
    }
}
