//! What one peer may take from the transports: TCP connections (in all and
//! per source) and messages per second per source.
//!
//! Sans-IO: the tables below read no clock and touch no socket; the
//! transports pass `now` and act on the verdicts. A source is an IPv4
//! address or an IPv6 /64 ([`Source`]), since one IPv6 host usually holds a
//! whole /64 and could otherwise step around any per-address limit.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::auth::Cidr;

/// The unit every per-source limit counts by: an IPv4 address, or the /64
/// of an IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    /// The source of `ip` (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Source(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Limits on TCP connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections in all, accepted and opened by us.
    pub max_total: usize,
    /// Accepted connections from one source.
    pub max_per_source: usize,
}

/// One in this many connection slots is kept for connections the server
/// opens itself (to phones registered over TCP, to trunks), so peers that
/// fill the accepted slots cannot stop calls from reaching them.
pub const OUTGOING_SHARE: usize = 16;

impl ConnectionLimits {
    /// Accepted connections at most: the total less the outgoing share.
    pub fn max_accepted(&self) -> usize {
        self.max_total - self.max_total / OUTGOING_SHARE
    }
}

/// Why a connection was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Already [`ConnectionLimits::max_total`] connections are open.
    Total,
    /// The source already holds [`ConnectionLimits::max_per_source`].
    PerSource,
}

/// Counts open TCP connections in all and accepted ones per source.
#[derive(Debug, Default)]
pub struct ConnectionCount {
    total: usize,
    per_source: HashMap<Source, usize>,
}

impl ConnectionCount {
    /// Takes a slot for a connection accepted from `source` (`Some`), or
    /// opened by us (`None`: counted in the total only), or says which
    /// limit refuses it.
    pub fn open(
        &mut self,
        limits: ConnectionLimits,
        source: Option<Source>,
    ) -> Result<(), Refusal> {
        let cap = match source {
            Some(_) => limits.max_accepted(),
            None => limits.max_total,
        };
        if self.total >= cap {
            return Err(Refusal::Total);
        }
        if let Some(source) = source {
            let held = self.per_source.entry(source).or_default();
            if *held >= limits.max_per_source {
                return Err(Refusal::PerSource);
            }
            *held += 1;
        }
        self.total += 1;
        Ok(())
    }

    /// Gives back the slot of a closed connection.
    pub fn close(&mut self, source: Option<Source>) {
        self.total = self.total.saturating_sub(1);
        if let Some(source) = source {
            if let Some(held) = self.per_source.get_mut(&source) {
                *held = held.saturating_sub(1);
                if *held == 0 {
                    self.per_source.remove(&source);
                }
            }
        }
    }

    /// Open connections.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Connections accepted from `source` and still open.
    pub fn of(&self, source: Source) -> usize {
        self.per_source.get(&source).copied().unwrap_or(0)
    }
}

/// What the rate limiter says about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Within the source's rate: hand it on.
    Admit,
    /// Over the rate: drop it without an answer. `report` is `Some(n)` at
    /// most once per [`REPORT_INTERVAL`] per source, with the messages
    /// dropped from it since the last report (this one included), so a
    /// blocked source is logged without a log line per message.
    Drop {
        /// Drops to log now, if it is time to.
        report: Option<u64>,
    },
}

/// Least time between two reports of one blocked source.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Sources remembered at most; beyond, sources whose bucket has refilled
/// are forgotten, and if none has, a new source passes unmetered (a table
/// that refused new sources would shut out legitimate peers instead).
pub const MAX_SOURCES: usize = 65_536;

/// Per-source message rate, as a token bucket per [`Source`] (Kamailio's
/// `pike` module counts requests per sampling window; a bucket gives the
/// same bound without the window edge, where twice the rate can pass).
#[derive(Debug)]
pub struct RateLimiter {
    /// Messages per second; 0 is no limit.
    rate: u32,
    /// Bucket size: the burst a quiet source may send at once.
    burst: f64,
    max_sources: usize,
    buckets: HashMap<Source, Bucket>,
    /// No pruning before this time, so a table full of active sources is
    /// not scanned for every new one.
    next_prune: Option<Instant>,
    /// Networks never limited (a trunk, a proxy or SBC in front).
    exempt: Vec<Cidr>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
    dropped: u64,
    reported: Option<Instant>,
}

impl RateLimiter {
    /// A limiter of `rate` messages per second per source, with bursts of
    /// two seconds' worth; `rate` 0 admits everything.
    pub fn new(rate: u32) -> RateLimiter {
        RateLimiter::with_table(rate, MAX_SOURCES)
    }

    /// As [`new`](Self::new), remembering at most `max_sources` sources.
    pub fn with_table(rate: u32, max_sources: usize) -> RateLimiter {
        RateLimiter {
            rate,
            burst: 2.0 * f64::from(rate),
            max_sources,
            buckets: HashMap::new(),
            next_prune: None,
            exempt: Vec::new(),
        }
    }

    /// The same limiter, admitting everything from `networks`.
    pub fn exempting(mut self, networks: Vec<Cidr>) -> RateLimiter {
        self.exempt = networks;
        self
    }

    /// Whether a message from `ip` received at `now` may pass.
    pub fn admit(&mut self, now: Instant, ip: IpAddr) -> Admission {
        if self.rate == 0 || self.exempt.iter().any(|n| n.contains(ip)) {
            return Admission::Admit;
        }
        let source = Source::of(ip);
        let rate = f64::from(self.rate);
        if !self.buckets.contains_key(&source) && self.buckets.len() >= self.max_sources {
            self.prune(now);
            if self.buckets.len() >= self.max_sources {
                return Admission::Admit;
            }
        }
        let burst = self.burst;
        let bucket = self.buckets.entry(source).or_insert(Bucket {
            tokens: burst,
            updated: now,
            dropped: 0,
            reported: None,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Admission::Admit;
        }
        bucket.dropped += 1;
        let due = bucket
            .reported
            .is_none_or(|at| now.saturating_duration_since(at) >= REPORT_INTERVAL);
        let report = due.then(|| {
            bucket.reported = Some(now);
            std::mem::take(&mut bucket.dropped)
        });
        Admission::Drop { report }
    }

    /// Sources currently remembered.
    pub fn sources(&self) -> usize {
        self.buckets.len()
    }

    /// Forgets sources whose bucket is full again: they are
    /// indistinguishable from a source never seen.
    fn prune(&mut self, now: Instant) {
        if self.next_prune.is_some_and(|at| now < at) {
            return;
        }
        let refill = Duration::from_secs_f64(self.burst / f64::from(self.rate));
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.updated) < refill);
        self.next_prune = Some(now + Duration::from_secs(1));
    }
}

/// Counters of the transports and the core's input queue, for the
/// metrics endpoint and the periodic warning.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// TCP connections refused because the total limit was reached.
    pub tcp_refused_total: AtomicU64,
    /// TCP connections refused because their source held its share.
    pub tcp_refused_per_source: AtomicU64,
    /// Failed `accept` calls (out of descriptors and the like).
    pub tcp_accept_errors: AtomicU64,
    /// TCP connections closed for idleness (no complete message).
    pub tcp_idle_closed: AtomicU64,
    /// TCP connections closed because a message was not complete in time.
    pub tcp_message_timeouts: AtomicU64,
    /// TCP connections closed holding part of a message while all
    /// connections together held more than the buffer budget.
    pub tcp_buffer_closed: AtomicU64,
    /// Messages dropped by the per-source rate limit.
    pub rate_limited: AtomicU64,
    /// Messages dropped because the core's input queue was full.
    pub queue_full: AtomicU64,
    /// Messages dropped because their source held its share of the queue.
    pub queue_source_share: AtomicU64,
}

/// A copy of [`TransportStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`TransportStats::tcp_refused_total`].
    pub tcp_refused_total: u64,
    /// See [`TransportStats::tcp_refused_per_source`].
    pub tcp_refused_per_source: u64,
    /// See [`TransportStats::tcp_accept_errors`].
    pub tcp_accept_errors: u64,
    /// See [`TransportStats::tcp_idle_closed`].
    pub tcp_idle_closed: u64,
    /// See [`TransportStats::tcp_message_timeouts`].
    pub tcp_message_timeouts: u64,
    /// See [`TransportStats::tcp_buffer_closed`].
    pub tcp_buffer_closed: u64,
    /// See [`TransportStats::rate_limited`].
    pub rate_limited: u64,
    /// See [`TransportStats::queue_full`].
    pub queue_full: u64,
    /// See [`TransportStats::queue_source_share`].
    pub queue_source_share: u64,
}

impl TransportStats {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            tcp_refused_total: get(&self.tcp_refused_total),
            tcp_refused_per_source: get(&self.tcp_refused_per_source),
            tcp_accept_errors: get(&self.tcp_accept_errors),
            tcp_idle_closed: get(&self.tcp_idle_closed),
            tcp_message_timeouts: get(&self.tcp_message_timeouts),
            tcp_buffer_closed: get(&self.tcp_buffer_closed),
            rate_limited: get(&self.rate_limited),
            queue_full: get(&self.queue_full),
            queue_source_share: get(&self.queue_source_share),
        }
    }
}

impl StatsSnapshot {
    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &StatsSnapshot) -> StatsSnapshot {
        StatsSnapshot {
            tcp_refused_total: self.tcp_refused_total - earlier.tcp_refused_total,
            tcp_refused_per_source: self.tcp_refused_per_source - earlier.tcp_refused_per_source,
            tcp_accept_errors: self.tcp_accept_errors - earlier.tcp_accept_errors,
            tcp_idle_closed: self.tcp_idle_closed - earlier.tcp_idle_closed,
            tcp_message_timeouts: self.tcp_message_timeouts - earlier.tcp_message_timeouts,
            tcp_buffer_closed: self.tcp_buffer_closed - earlier.tcp_buffer_closed,
            rate_limited: self.rate_limited - earlier.rate_limited,
            queue_full: self.queue_full - earlier.queue_full,
            queue_source_share: self.queue_source_share - earlier.queue_source_share,
        }
    }

    /// Whether anything was refused or dropped (idle closes are normal).
    pub fn has_losses(&self) -> bool {
        self.tcp_refused_total
            + self.tcp_refused_per_source
            + self.tcp_accept_errors
            + self.tcp_message_timeouts
            + self.tcp_buffer_closed
            + self.rate_limited
            + self.queue_full
            + self.queue_source_share
            > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    fn v4(last: u8) -> Source {
        Source::of(ip(last))
    }

    #[test]
    fn an_ipv6_source_is_its_slash_64_and_mapped_ipv4_is_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::7".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(Source::of(a), Source::of(b));
        assert_ne!(Source::of(a), Source::of(c));
        assert_eq!(Source::of(a).to_string(), "2001:db8:1:2::/64");
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().expect("ip");
        assert_eq!(Source::of(mapped), v4(9));
        assert_eq!(v4(9).to_string(), "192.0.2.9");
    }

    #[test]
    fn connections_over_the_per_source_limit_are_refused_others_still_taken() {
        let limits = ConnectionLimits {
            max_total: 10,
            max_per_source: 3,
        };
        let mut count = ConnectionCount::default();
        for _ in 0..3 {
            assert_eq!(count.open(limits, Some(v4(1))), Ok(()));
        }
        assert_eq!(count.open(limits, Some(v4(1))), Err(Refusal::PerSource));
        assert_eq!(count.open(limits, Some(v4(2))), Ok(()));
        assert_eq!(count.of(v4(1)), 3);
        assert_eq!(count.total(), 4);
        count.close(Some(v4(1)));
        assert_eq!(count.open(limits, Some(v4(1))), Ok(()));
        assert_eq!(count.total(), 4);
    }

    #[test]
    fn the_total_limit_counts_our_own_connections_too() {
        let limits = ConnectionLimits {
            max_total: 3,
            max_per_source: 3,
        };
        let mut count = ConnectionCount::default();
        assert_eq!(count.open(limits, None), Ok(()));
        assert_eq!(count.open(limits, None), Ok(()));
        assert_eq!(count.open(limits, Some(v4(1))), Ok(()));
        assert_eq!(count.open(limits, Some(v4(2))), Err(Refusal::Total));
        assert_eq!(count.open(limits, None), Err(Refusal::Total));
        // A refusal takes no slot: the counts are unchanged.
        assert_eq!(count.of(v4(2)), 0);
        count.close(None);
        assert_eq!(count.open(limits, Some(v4(2))), Ok(()));
        count.close(Some(v4(1)));
        count.close(Some(v4(2)));
        count.close(None);
        assert_eq!(count.total(), 0);
        assert_eq!(count.of(v4(1)), 0);
    }

    #[test]
    fn a_sixteenth_of_the_slots_is_kept_for_our_own_connections() {
        let limits = ConnectionLimits {
            max_total: 32,
            max_per_source: 32,
        };
        assert_eq!(limits.max_accepted(), 30);
        let mut count = ConnectionCount::default();
        let accepted = (0..40)
            .filter(|_| count.open(limits, Some(v4(1))).is_ok())
            .count();
        assert_eq!(accepted, 30);
        assert_eq!(count.open(limits, None), Ok(()));
        assert_eq!(count.open(limits, None), Ok(()));
        assert_eq!(count.open(limits, None), Err(Refusal::Total));
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate_and_others_are_unaffected() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(100);
        let admitted = (0..1000)
            .filter(|_| limiter.admit(start, ip(1)) == Admission::Admit)
            .count();
        assert_eq!(admitted, 200, "the burst is two seconds' worth");
        assert_eq!(limiter.admit(start, ip(2)), Admission::Admit);
        // One second later, one second's worth passes again.
        let later = start + Duration::from_secs(1);
        let admitted = (0..1000)
            .filter(|_| limiter.admit(later, ip(1)) == Admission::Admit)
            .count();
        assert_eq!(admitted, 100);
    }

    #[test]
    fn a_blocked_source_is_reported_once_per_interval_with_its_drop_count() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(1);
        assert_eq!(limiter.admit(start, ip(1)), Admission::Admit);
        assert_eq!(limiter.admit(start, ip(1)), Admission::Admit);
        assert_eq!(
            limiter.admit(start, ip(1)),
            Admission::Drop { report: Some(1) }
        );
        for _ in 0..4 {
            assert_eq!(
                limiter.admit(start, ip(1)),
                Admission::Drop { report: None }
            );
        }
        // Over the next interval the source refills to at most two tokens.
        let later = start + REPORT_INTERVAL;
        assert_eq!(limiter.admit(later, ip(1)), Admission::Admit);
        assert_eq!(limiter.admit(later, ip(1)), Admission::Admit);
        assert_eq!(
            limiter.admit(later, ip(1)),
            Admission::Drop { report: Some(5) }
        );
    }

    #[test]
    fn exempt_networks_are_never_limited_nor_remembered() {
        let now = Instant::now();
        let network = Cidr::parse("192.0.2.0/28").expect("CIDR");
        let mut limiter = RateLimiter::new(1).exempting(vec![network]);
        assert!((0..1000).all(|_| limiter.admit(now, ip(5)) == Admission::Admit));
        assert_eq!(limiter.sources(), 0);
        // Outside the /28: limited as usual.
        let admitted = (0..10)
            .filter(|_| limiter.admit(now, ip(20)) == Admission::Admit)
            .count();
        assert_eq!(admitted, 2);
    }

    #[test]
    fn rate_zero_admits_everything() {
        let now = Instant::now();
        let mut limiter = RateLimiter::new(0);
        assert!((0..10_000).all(|_| limiter.admit(now, ip(1)) == Admission::Admit));
        assert_eq!(limiter.sources(), 0);
    }

    #[test]
    fn the_table_stays_bounded_and_forgets_refilled_sources() {
        let start = Instant::now();
        let mut limiter = RateLimiter::with_table(10, 4);
        for last in 1..=4 {
            let _ = limiter.admit(start, ip(last));
        }
        // Full of active sources: a new one passes unmetered, untracked.
        for _ in 0..100 {
            assert_eq!(limiter.admit(start, ip(5)), Admission::Admit);
        }
        assert_eq!(limiter.sources(), 4);
        // Once the old buckets have refilled they are forgotten.
        let later = start + Duration::from_secs(3);
        let admitted = (0..100)
            .filter(|_| limiter.admit(later, ip(6)) == Admission::Admit)
            .count();
        assert_eq!(limiter.sources(), 1);
        assert_eq!(admitted, 20, "the new source is metered");
    }

    #[test]
    fn a_snapshot_difference_shows_what_happened_in_between() {
        let stats = TransportStats::default();
        TransportStats::bump(&stats.rate_limited);
        let before = stats.snapshot();
        assert!(before.has_losses());
        TransportStats::bump(&stats.tcp_idle_closed);
        let delta = stats.snapshot().since(&before);
        assert_eq!(delta.tcp_idle_closed, 1);
        assert_eq!(delta.rate_limited, 0);
        assert!(!delta.has_losses(), "idle closes are normal");
        TransportStats::bump(&stats.queue_full);
        assert_eq!(stats.snapshot().since(&before).queue_full, 1);
    }
}
