//! The key-value map: a sharded, parking_lot-guarded `HashMap`, plus the
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
use std::collections::HashMap;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

const SHARDS: usize = 64;

type Shard = HashMap<Vec<u8>, Vec<u8>>;

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
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            meta: Mutex::new(StoreMeta::default()),
        }
    }

    fn shard(&self, key: &[u8]) -> &RwLock<Shard> {
        &self.shards[(xxh3_64(key) as usize) % SHARDS]
    }

    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.shard(key).read().get(key).cloned()
    }

    pub fn meta(&self) -> StoreMeta {
        *self.meta.lock()
    }

    /// Applies one op; the caller commits `delta` with [`Store::commit`].
    pub fn apply(&self, op: &Op, delta: &mut Delta) -> OpOutcome {
        match op {
            Op::Put { key, value } => {
                let h_new = pair_hash(key, value);
                let mut shard = self.shard(key).write();
                match shard.get_mut(key.as_slice()) {
                    Some(old) => {
                        delta.digest = delta
                            .digest
                            .wrapping_sub(pair_hash(key, old))
                            .wrapping_add(h_new);
                        delta.bytes += value.len() as i64 - old.len() as i64;
                        old.clear();
                        old.extend_from_slice(value);
                    }
                    None => {
                        shard.insert(key.clone(), value.clone());
                        delta.digest = delta.digest.wrapping_add(h_new);
                        delta.keys += 1;
                        delta.bytes += pair_bytes(key, value);
                    }
                }
                OpOutcome::Written
            }
            Op::Delete { key } => {
                let removed = self.shard(key).write().remove(key.as_slice());
                if let Some(old) = &removed {
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
            *s.write() = HashMap::new();
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
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Recomputes the digest from scratch (tests and consistency checks).
    pub fn recompute_digest(&self) -> u64 {
        let mut d = 0u64;
        for s in self.shards.iter() {
            for (k, v) in s.read().iter() {
                d = d.wrapping_add(pair_hash(k, v));
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
    fn pair_boundaries_matter() {
        assert_ne!(pair_hash(b"ab", b"c"), pair_hash(b"a", b"bc"));
    }
}
