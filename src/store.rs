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
use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

const SHARDS: usize = 64;

/// A shard: its pairs, each one [`Item`], found by key.
type Shard = HashSet<Item>;

/// One pair in one allocation: the key's length (4 bytes, little-endian),
/// the key, the value. Against a map of two `Vec`s this saves an allocation
/// and 32 bytes of headers per pair, and the table's slots shrink from 48
/// bytes to 16 (`make bench-compare`, memory row). Hashed and compared by
/// its key, so the set is looked up with the key alone.
struct Item(Box<[u8]>);

impl Item {
    fn new(key: &[u8], value: &[u8]) -> Item {
        // Keys are at most max-key-bytes (64 MiB): the length fits.
        let mut b = Vec::with_capacity(4 + key.len() + value.len());
        b.extend_from_slice(&(key.len() as u32).to_le_bytes());
        b.extend_from_slice(key);
        b.extend_from_slice(value);
        Item(b.into_boxed_slice())
    }

    fn key_len(&self) -> usize {
        u32::from_le_bytes([self.0[0], self.0[1], self.0[2], self.0[3]]) as usize
    }

    fn key(&self) -> &[u8] {
        &self.0[4..4 + self.key_len()]
    }

    fn value(&self) -> &[u8] {
        &self.0[4 + self.key_len()..]
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
    /// Bytes of keys and values plus [`ENTRY_OVERHEAD`] per key: what
    /// `max-memory` is checked against.
    pub bytes: u64,
}

/// Bytes counted per key beyond its key and value: the map slot and the two
/// buffers' headers and allocator rounding, roughly.
pub const ENTRY_OVERHEAD: u64 = 64;

fn pair_bytes(key: &[u8], value: &[u8]) -> i64 {
    (key.len() + value.len()) as i64 + ENTRY_OVERHEAD as i64
}

pub struct Store {
    shards: Box<[RwLock<Shard>]>,
    meta: Mutex<StoreMeta>,
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

/// Accumulated effect of applying ops, committed to the meta in one step.
#[derive(Default)]
pub struct Delta {
    digest: u64,
    keys: i64,
    bytes: i64,
}

impl Store {
    pub fn new() -> Self {
        Store {
            shards: (0..SHARDS).map(|_| RwLock::new(HashSet::new())).collect(),
            meta: Mutex::new(StoreMeta::default()),
        }
    }

    fn shard(&self, key: &[u8]) -> &RwLock<Shard> {
        &self.shards[(xxh3_64(key) as usize) % SHARDS]
    }

    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.shard(key)
            .read()
            .get(key)
            .map(|it| it.value().to_vec())
    }

    pub fn meta(&self) -> StoreMeta {
        *self.meta.lock()
    }

    /// Applies one op; the caller commits `delta` with [`Store::commit`].
    pub fn apply(&self, op: &Op, delta: &mut Delta) -> OpOutcome {
        match op {
            Op::Put { key, value } => {
                let h_new = pair_hash(key, value);
                let item = Item::new(key, value);
                match self.shard(key).write().replace(item) {
                    Some(old) => {
                        let old = old.value();
                        delta.digest = delta
                            .digest
                            .wrapping_sub(pair_hash(key, old))
                            .wrapping_add(h_new);
                        delta.bytes += value.len() as i64 - old.len() as i64;
                    }
                    None => {
                        delta.digest = delta.digest.wrapping_add(h_new);
                        delta.keys += 1;
                        delta.bytes += pair_bytes(key, value);
                    }
                }
                OpOutcome::Written
            }
            Op::Delete { key } => {
                let removed = self.shard(key).write().take(key.as_slice());
                if let Some(old) = &removed {
                    let old = old.value();
                    delta.digest = delta.digest.wrapping_sub(pair_hash(key, old));
                    delta.keys -= 1;
                    delta.bytes -= pair_bytes(key, old);
                }
                OpOutcome::Deleted(removed.is_some())
            }
        }
    }

    /// Publishes the effect of the ops applied since the last commit.
    pub fn commit(&self, applied: LogPos, delta: Delta) {
        let mut m = self.meta.lock();
        m.applied = applied;
        m.digest = m.digest.wrapping_add(delta.digest);
        m.keys = (m.keys as i64 + delta.keys) as u64;
        m.bytes = (m.bytes as i64 + delta.bytes) as u64;
    }

    /// Empties the map (before installing a snapshot).
    pub fn clear(&self, applied: LogPos) {
        for s in self.shards.iter() {
            *s.write() = HashSet::new();
        }
        *self.meta.lock() = StoreMeta {
            applied,
            digest: 0,
            keys: 0,
            bytes: 0,
        };
    }

    /// Number of shards, for snapshot iteration.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// A copy of one shard's pairs, for streaming a snapshot one shard at a time.
    pub fn shard_pairs(&self, i: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.shards[i]
            .read()
            .iter()
            .map(|it| (it.key().to_vec(), it.value().to_vec()))
            .collect()
    }

    /// Recomputes the digest from scratch (tests and consistency checks).
    pub fn recompute_digest(&self) -> u64 {
        let mut d = 0u64;
        for s in self.shards.iter() {
            for it in s.read().iter() {
                d = d.wrapping_add(pair_hash(it.key(), it.value()));
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
}
