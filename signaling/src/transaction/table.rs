//! A hash table that never stalls the core to grow.
//!
//! A busy server holds hundreds of thousands of transactions: a non-INVITE
//! server transaction lives on for Timer J (32 s on UDP) after its answer,
//! so 14,000 REGISTERs a second keep some 450,000 alive. One `HashMap` of
//! them doubles by copying every entry at once, and with them the core's
//! whole input queue waits: measured, a REGISTER storm's p99 was 1.5 s,
//! with a third of the core's time in `reserve_rehash` and the page faults
//! of the new table. Split into [`SHARDS`] tables chosen by the key's hash,
//! a growth copies one shard, 1/256 of the entries, and the pauses vanish
//! into the noise. Kamailio's transaction table (fixed buckets, never
//! rehashed) avoids the same pause another way.
//!
//! Each look-up hashes the key once, with SipHash under a random key (the
//! keys come off the wire: a flood of chosen branches must not pile into
//! one shard or one probe chain): bits of the middle pick the shard, and
//! the shard's [`HashTable`] probes with the same hash. A `HashMap` per
//! shard hashed every key twice, 9 % of the core's time in a REGISTER
//! storm. (A [`TransactionKey`](super::TransactionKey) feeds the hasher
//! its own hash, computed once when it is made, so this is 8 bytes.)
//!
//! Which bits matter: hashbrown places an entry by the low bits and tags
//! it with the top seven, and a probe compares keys only where the tag
//! matches. Shards picked by the top eight bits gave every entry of a
//! shard the same tag, so each look-up compared the key with every entry
//! of its group: measured, 10 % of the core's time at 1,000 calls/s in
//! `TransactionKey::eq` and `memcmp`.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};

use hashbrown::hash_table::Entry;
use hashbrown::HashTable;

/// Shards of a table: a power of two.
pub const SHARDS: usize = 256;

/// Where the shard's bits start in the hash (see [`ShardedMap::locate`]).
const SHARD_SHIFT: u32 = 32;

/// A map of `K` to `V` in [`SHARDS`] hash tables.
pub struct ShardedMap<K, V> {
    shards: Box<[HashTable<(K, V)>]>,
    hasher: RandomState,
    len: usize,
}

impl<K, V> std::fmt::Debug for ShardedMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedMap")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
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
            shards: (0..SHARDS).map(|_| HashTable::new()).collect(),
            hasher: RandomState::new(),
            len: 0,
        }
    }

    /// The key's hash and its shard: bits 32 to 39, which a shard's table
    /// uses neither to place (the low bits, while it holds under 2^32
    /// buckets) nor to tag (the top seven); SipHash mixes them all alike.
    fn locate(&self, key: &K) -> (u64, usize) {
        let hash = self.hasher.hash_one(key);
        (hash, (hash >> SHARD_SHIFT) as usize & (SHARDS - 1))
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
        let (hash, shard) = self.locate(key);
        self.shards[shard]
            .find(hash, |(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// The value of `key`, to change.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let (hash, shard) = self.locate(key);
        self.shards[shard]
            .find_mut(hash, |(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Whether `key` has a value.
    pub fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// Sets the value of `key`, returning the previous one.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let (hash, shard) = self.locate(&key);
        let hasher = &self.hasher;
        match self.shards[shard].entry(hash, |(k, _)| *k == key, |(k, _)| hasher.hash_one(k)) {
            Entry::Occupied(mut entry) => Some(std::mem::replace(&mut entry.get_mut().1, value)),
            Entry::Vacant(entry) => {
                entry.insert((key, value));
                self.len += 1;
                None
            }
        }
    }

    /// Sets the value of `key` unless it has one; returns the value it has.
    pub fn get_or_insert(&mut self, key: K, value: V) -> &mut V {
        let (hash, shard) = self.locate(&key);
        let hasher = &self.hasher;
        match self.shards[shard].entry(hash, |(k, _)| *k == key, |(k, _)| hasher.hash_one(k)) {
            Entry::Occupied(entry) => &mut entry.into_mut().1,
            Entry::Vacant(entry) => {
                self.len += 1;
                &mut entry.insert((key, value)).into_mut().1
            }
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let (hash, shard) = self.locate(key);
        let entry = self.shards[shard]
            .find_entry(hash, |(k, _)| k == key)
            .ok()?;
        let ((_, value), _) = entry.remove();
        self.len -= 1;
        Some(value)
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
        let fullest = map.shards.iter().map(HashTable::len).max().unwrap_or(0);
        let emptiest = map.shards.iter().map(HashTable::len).min().unwrap_or(0);
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
        let held: usize = map.shards.iter().map(HashTable::len).sum();
        assert_eq!(held, 5_001);
    }

    thread_local! {
        static COMPARED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    /// A key that counts how often it is compared.
    struct Counted(u32);

    impl Hash for Counted {
        fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
            self.0.hash(state);
        }
    }

    impl PartialEq for Counted {
        fn eq(&self, other: &Self) -> bool {
            COMPARED.with(|c| c.set(c.get() + 1));
            self.0 == other.0
        }
    }
    impl Eq for Counted {}

    #[test]
    fn a_look_up_compares_about_one_key_however_full_the_shard() {
        let mut map = ShardedMap::new();
        // 200 a shard: several full groups of 16 in each.
        for n in 0..51_200 {
            map.insert(Counted(n), n);
        }
        COMPARED.with(|c| c.set(0));
        for n in 0..51_200 {
            assert_eq!(map.get(&Counted(n)), Some(&n));
        }
        for n in 51_200..102_400 {
            assert_eq!(map.get(&Counted(n)), None);
        }
        let compared = COMPARED.with(std::cell::Cell::get);
        // Ideally 51,200 (one per hit, none per miss); a tag of seven bits
        // lets 1 in 128 of the others through. Tags shared within a shard
        // made it 922,886.
        assert!(
            compared < 60_000,
            "{compared} comparisons for 102,400 look-ups"
        );
    }
}
