//! The brute-force defence: failures are charged to the source that made
//! them, never to the user name they named.
//!
//! Blocking a user for everyone would let anyone lock a real user out with
//! a few wrong guesses from anywhere (and every phone behind a NAT with
//! them); blocking the source stops the guessing without that lever. An
//! IPv6 source is charged per /64, because one host commonly owns a whole
//! /64 and could otherwise rotate addresses to escape the count.
//!
//! A user name guessed at from many sources is only slowed down: once it
//! has collected `max_failures` failures within the window, from wherever,
//! each further wrong guess for it is answered `user_delay` later. The
//! right password is never delayed, so the user's own phone is not
//! affected. Names are kept as a keyed 64-bit hash (keys drawn per process),
//! never as the attacker's bytes.
//!
//! The tables are bounded in entries and in age: each insertion first
//! forgets the oldest entries whose window or cool-down has passed, and
//! when a table is still full the oldest entry gives way. Keys are fixed-size ([`SourceKey`]), so nothing
//! the attacker writes is stored and each entry costs the same few bytes.
//! Time is passed in; nothing here reads a clock.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

/// Brute-force defence settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutConfig {
    /// Failures from one source that block it.
    pub max_failures: usize,
    /// The window in which they are counted.
    pub window: Duration,
    /// How long a block lasts.
    pub cool_down: Duration,
    /// Most sources (or user names) tracked in each table; the oldest
    /// entry is forgotten to make room.
    pub max_sources: usize,
    /// How much later a wrong guess for a user name that has collected
    /// `max_failures` failures in the window is answered; zero: at once.
    pub user_delay: Duration,
}

impl Default for LockoutConfig {
    fn default() -> Self {
        Self {
            max_failures: 5,
            window: Duration::from_secs(60),
            cool_down: Duration::from_secs(300),
            max_sources: 4096,
            user_delay: Duration::from_secs(2),
        }
    }
}

/// The unit failures are charged to: an IPv4 address, or the /64 network
/// of an IPv6 address (an IPv4-mapped IPv6 address counts as IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKey {
    /// One IPv4 address.
    V4(Ipv4Addr),
    /// The upper 64 bits of an IPv6 address.
    V6Prefix(u64),
}

impl SourceKey {
    /// The key `ip` is charged to.
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::V4(v4),
            IpAddr::V6(v6) => Self::V6Prefix((u128::from(v6) >> 64) as u64),
        }
    }
}

/// A map bounded in entries that forgets its oldest-inserted entry first.
///
/// Insertion order is kept in a queue of `(generation, key)`; an entry
/// removed early leaves a stale queue item that is skipped (its generation
/// no longer matches) and swept once the queue holds twice the bound.
#[derive(Debug)]
pub(crate) struct BoundedMap<K, V> {
    cap: usize,
    generation: u64,
    entries: HashMap<K, (u64, V)>,
    order: VecDeque<(u64, K)>,
}

impl<K: Copy + Eq + Hash, V> BoundedMap<K, V> {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            generation: 0,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|(_, v)| v)
    }

    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.entries.get_mut(key).map(|(_, v)| v)
    }

    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        self.entries.remove(key).map(|(_, v)| v)
    }

    /// Forgets entries from the oldest on while `expired` holds for them;
    /// stops at the first that is still live.
    pub(crate) fn forget_expired(&mut self, expired: impl Fn(&V) -> bool) {
        while let Some((generation, oldest)) = self.order.front().copied() {
            match self.entries.get(&oldest) {
                Some((g, value)) if *g == generation => {
                    if !expired(value) {
                        break;
                    }
                    self.entries.remove(&oldest);
                }
                // A stale queue item: its entry was removed or replaced.
                _ => {}
            }
            self.order.pop_front();
        }
    }

    /// Inserts or replaces; a new key may push out the oldest one.
    pub(crate) fn insert(&mut self, key: K, value: V) {
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.1 = value;
            return;
        }
        while self.entries.len() >= self.cap {
            let Some((generation, oldest)) = self.order.pop_front() else {
                break;
            };
            if self
                .entries
                .get(&oldest)
                .is_some_and(|(g, _)| *g == generation)
            {
                self.entries.remove(&oldest);
            }
        }
        self.generation += 1;
        self.entries.insert(key, (self.generation, value));
        self.order.push_back((self.generation, key));
        if self.order.len() > self.cap.saturating_mul(2) {
            let entries = &self.entries;
            self.order
                .retain(|(g, k)| entries.get(k).is_some_and(|(live, _)| live == g));
        }
    }
}

/// Failure counts and blocks per source. See the [module documentation](self).
#[derive(Debug)]
pub(crate) struct Lockout {
    config: LockoutConfig,
    /// Times of the recent failures of each source, at most `max_failures`.
    failures: BoundedMap<SourceKey, VecDeque<SystemTime>>,
    /// When each blocked source is let in again.
    blocked: BoundedMap<SourceKey, SystemTime>,
    /// Times of the recent failures per user-name hash, at most `max_failures`.
    users: BoundedMap<u64, VecDeque<SystemTime>>,
    /// Keys the user-name hash, so that names cannot be chosen to collide.
    hasher: RandomState,
}

impl Lockout {
    pub(crate) fn new(config: LockoutConfig) -> Self {
        Self {
            config,
            failures: BoundedMap::new(config.max_sources),
            blocked: BoundedMap::new(config.max_sources),
            users: BoundedMap::new(config.max_sources),
            hasher: RandomState::new(),
        }
    }

    /// Charges a wrong guess to the user name `username`; returns how much
    /// later the answer should go (zero until the name has collected
    /// `max_failures` failures within the window).
    pub(crate) fn record_user_failure(&mut self, now: SystemTime, username: &str) -> Duration {
        let LockoutConfig {
            max_failures,
            window,
            user_delay,
            ..
        } = self.config;
        let key = self.hasher.hash_one(username);
        let earlier = match self.users.get_mut(&key) {
            Some(times) => {
                while times.front().is_some_and(|first| *first + window <= now) {
                    times.pop_front();
                }
                let earlier = times.len();
                // Only the last `max_failures` matter: the deque stays bounded.
                if earlier >= max_failures {
                    times.pop_front();
                }
                times.push_back(now);
                earlier
            }
            None => {
                self.users
                    .forget_expired(|times| times.back().is_none_or(|last| *last + window <= now));
                self.users.insert(key, VecDeque::from([now]));
                0
            }
        };
        if earlier >= max_failures {
            user_delay
        } else {
            Duration::ZERO
        }
    }

    /// Whether `source` is blocked at `now`; an ended block is forgotten.
    pub(crate) fn is_blocked(&mut self, now: SystemTime, source: SourceKey) -> bool {
        match self.blocked.get(&source) {
            Some(until) if now < *until => true,
            Some(_) => {
                self.blocked.remove(&source);
                false
            }
            None => false,
        }
    }

    /// Charges a failure to `source`; returns whether it is now blocked.
    pub(crate) fn record_failure(&mut self, now: SystemTime, source: SourceKey) -> bool {
        let LockoutConfig {
            max_failures,
            window,
            cool_down,
            ..
        } = self.config;
        let count = match self.failures.get_mut(&source) {
            Some(times) => {
                while times.front().is_some_and(|first| *first + window <= now) {
                    times.pop_front();
                }
                times.push_back(now);
                times.len()
            }
            None => {
                self.failures
                    .forget_expired(|times| times.back().is_none_or(|last| *last + window <= now));
                self.failures.insert(source, VecDeque::from([now]));
                1
            }
        };
        if count >= max_failures {
            self.failures.remove(&source);
            self.blocked.forget_expired(|until| *until <= now);
            self.blocked.insert(source, now + cool_down);
            return true;
        }
        false
    }

    /// Entries in the failure and block tables.
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> (usize, usize) {
        (self.failures.len(), self.blocked.len())
    }

    /// Entries in the user-name table.
    #[cfg(test)]
    pub(crate) fn tracked_users(&self) -> usize {
        self.users.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_map_forgets_the_oldest_and_never_exceeds_its_cap() {
        let mut map = BoundedMap::new(3);
        for key in 0..10u32 {
            map.insert(key, key * 10);
            assert!(map.len() <= 3);
        }
        assert_eq!(
            (map.get(&6), map.get(&7), map.get(&9)),
            (None, Some(&70), Some(&90))
        );
        // Replacing keeps the slot; a removed key's stale queue item is skipped.
        map.insert(9, 99);
        assert_eq!(map.remove(&8), Some(80));
        for key in 100..1000u32 {
            map.insert(key, 0);
            map.remove(&key);
        }
        assert!(map.order.len() <= 6, "the order queue is swept");
        assert_eq!(map.get(&9), Some(&99));
    }

    #[test]
    fn expired_entries_are_forgotten_oldest_first_up_to_the_first_live_one() {
        let mut map = BoundedMap::new(100);
        for (key, until) in [(1u32, 10u32), (2, 20), (3, 5), (4, 40)] {
            map.insert(key, until);
        }
        map.forget_expired(|until| *until <= 25);
        // 1, 2 and 3 (all before the live 4 in insertion order) go; 4 stops the sweep.
        assert_eq!((map.get(&1), map.get(&2), map.get(&3)), (None, None, None));
        assert_eq!(map.get(&4), Some(&40));
        map.insert(5, 1);
        map.forget_expired(|until| *until <= 25);
        assert_eq!(
            map.get(&5),
            Some(&1),
            "behind a live entry, kept until it fails or is evicted"
        );
    }

    #[test]
    fn a_quiet_source_is_forgotten_once_its_window_has_passed() {
        let t = |secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let mut lockout = Lockout::new(LockoutConfig {
            max_failures: 3,
            ..LockoutConfig::default()
        });
        let a = SourceKey::of("192.0.2.1".parse().expect("address"));
        let b = SourceKey::of("192.0.2.2".parse().expect("address"));
        assert!(!lockout.record_failure(t(0), a));
        assert!(!lockout.record_failure(t(30), a));
        assert_eq!(lockout.tracked(), (1, 0));
        // 60 s after a's last failure another source's failure sweeps it.
        assert!(!lockout.record_failure(t(90), b));
        assert_eq!(lockout.tracked(), (1, 0));
        assert!(!lockout.record_failure(t(91), a), "a starts again from one");
    }
}
