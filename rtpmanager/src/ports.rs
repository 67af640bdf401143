//! The media port pool: even RTP ports with RTCP on the next odd one.
//!
//! API: [`PortPool::new`]`(bind_address, min, max)` over the configured range;
//! [`PortPool::allocate`]`(rtcp_mux)` picks a pair, has its [`Binder`] bind
//! it and returns the pair's [`RtpPort`]; [`PortPool::release`] gives the
//! pair back (the binder closes sockets not handed out); [`PortPool::retry_unbindable`]
//! makes pairs that failed to bind eligible again; [`PortPool::total_pairs`] and
//! [`PortPool::free_pairs`] feed health/info. Exhaustion is [`PortError::Exhausted`],
//! which the gRPC layer maps to `RESOURCE_EXHAUSTED`.
//!
//! Allocation picks a random free pair anywhere in the range (a scan from a
//! random pair), so a leg's ports cannot be guessed from the previous call's
//! (a hijacker would otherwise know where the next call's media lands). A
//! released pair *cools* for a while: it is handed out again only when no
//! other pair is free, until [`COOLING_PAIRS`] later releases, so stray
//! packets from its previous call have died out. A pair whose sockets cannot be bound
//! (another process holds a port) is skipped and set aside until
//! [`PortPool::retry_unbindable`] or a release of that pair. The pool is not
//! shared by itself: the owner wraps it in a mutex.
//!
//! The pool is bookkeeping; the sockets are the [`Binder`]'s. The manager's
//! driver hands every pool one [`SocketBinder`], which binds the pair while
//! the pool chooses (so an unbindable pair is skipped within the same
//! allocation, as it must be before the SDP names the port) and keeps the
//! sockets until the driver gives them to the relay
//! ([`SocketBinder::take`]). The session engine owning the pools therefore
//! sees port numbers only, and its tests use a binder without sockets.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};

/// Binds the sockets of the pairs a [`PortPool`] picks.
pub trait Binder: Send + fmt::Debug {
    /// Binds RTP port `port` on `bind`, and its RTCP port unless
    /// `rtcp_mux`; an error makes the pool skip the pair.
    fn bind(&mut self, bind: IpAddr, port: RtpPort, rtcp_mux: bool) -> io::Result<()>;
    /// The pair was released: sockets not handed out yet are closed.
    fn unbind(&mut self, bind: IpAddr, port: RtpPort);
}

/// The sockets of one bound pair, non-blocking.
#[derive(Debug)]
pub struct BoundPair {
    pub rtp: UdpSocket,
    /// `None` with rtcp-mux.
    pub rtcp: Option<UdpSocket>,
}

/// The real [`Binder`]: binds UDP sockets and keeps them, by the RTP
/// socket's address, until [`SocketBinder::take`]. Clones share the
/// sockets, so the driver keeps one and the pools get the others.
#[derive(Clone, Debug, Default)]
pub struct SocketBinder {
    bound: Arc<Mutex<HashMap<SocketAddr, BoundPair>>>,
}

impl SocketBinder {
    /// The sockets bound for the RTP address `rtp`, once.
    pub fn take(&self, rtp: SocketAddr) -> Option<BoundPair> {
        self.bound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&rtp)
    }
}

impl Binder for SocketBinder {
    fn bind(&mut self, bind: IpAddr, port: RtpPort, rtcp_mux: bool) -> io::Result<()> {
        let rtp = bind_nonblocking(SocketAddr::new(bind, port.get()))?;
        let rtcp = if rtcp_mux {
            None
        } else {
            Some(bind_nonblocking(SocketAddr::new(bind, port.rtcp()))?)
        };
        self.bound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(SocketAddr::new(bind, port.get()), BoundPair { rtp, rtcp });
        Ok(())
    }

    fn unbind(&mut self, bind: IpAddr, port: RtpPort) {
        self.take(SocketAddr::new(bind, port.get()));
    }
}

/// An even UDP port carrying RTP; RTCP is on the next port unless rtcp-mux is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RtpPort(u16);

impl RtpPort {
    /// The RTP port `port`, or `None` when it is odd or 65535.
    pub fn new(port: u16) -> Option<RtpPort> {
        (port.is_multiple_of(2) && port < u16::MAX).then_some(RtpPort(port))
    }

    /// The RTP port number.
    pub fn get(self) -> u16 {
        self.0
    }

    /// The RTCP port number paired with it (RTP + 1).
    pub fn rtcp(self) -> u16 {
        self.0 + 1
    }
}

impl fmt::Display for RtpPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<RtpPort> for crate::sdp::MediaPort {
    fn from(port: RtpPort) -> Self {
        crate::sdp::MediaPort::new(port.get())
    }
}

/// How the pool's pairs are used when allocation fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exhaustion {
    /// Lowest port of the range.
    pub min: u16,
    /// Highest port of the range.
    pub max: u16,
    /// Pairs in the range.
    pub total: usize,
    /// Pairs allocated to legs.
    pub in_use: usize,
    /// Pairs skipped because a port could not be bound.
    pub unbindable: usize,
}

impl fmt::Display for Exhaustion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no free RTP port pair in {}-{} ({} pairs",
            self.min, self.max, self.total
        )?;
        if self.unbindable == 0 {
            write!(f, ", all in use)")
        } else {
            write!(
                f,
                ": {} in use, {} could not be bound)",
                self.in_use, self.unbindable
            )
        }
    }
}

/// Port pool errors.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The configured range holds no even/odd pair or starts on an odd port.
    #[error("invalid media port range {min}-{max}: {reason}")]
    InvalidRange {
        /// Lowest port.
        min: u16,
        /// Highest port.
        max: u16,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Every pair is in use or could not be bound.
    #[error("{0}")]
    Exhausted(Exhaustion),
    /// The port released is not an allocated pair of this pool.
    #[error("RTP port {0} is not allocated from this pool")]
    NotAllocated(RtpPort),
    /// A re-adopted leg's pair is outside the range, in use or not bindable.
    #[error("RTP port {0} cannot be taken again: outside the range, in use or not bindable")]
    Unavailable(u16),
}

/// Released pairs kept out of use (unless nothing else is free) until this
/// many later releases, at most a quarter of the range.
pub const COOLING_PAIRS: usize = 256;

/// The state of one pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Free,
    /// Released recently; free, but taken only when no `Free` pair is left.
    Cooling,
    InUse,
    Unbindable,
}

/// A small xorshift64* generator: port choice needs unpredictability
/// from outside, not cryptographic strength, and the seed comes from the
/// kernel's random source.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn from_os() -> Rng {
        let mut seed = [0u8; 8];
        // SAFETY: getrandom(2) writes at most `seed.len()` bytes into the
        // buffer it is given.
        let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
        let seed = if n == 8 {
            u64::from_ne_bytes(seed)
        } else {
            // No kernel randomness (very old kernel): time and pid still
            // differ per start.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            nanos ^ (u64::from(std::process::id()) << 32)
        };
        Rng::seeded(seed)
    }

    fn seeded(seed: u64) -> Rng {
        // xorshift must not start at 0.
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` > 0); the modulo bias is irrelevant for a
    /// range of at most 32768 pairs.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The pool of RTP/RTCP port pairs; see the module documentation.
#[derive(Debug)]
pub struct PortPool {
    bind: IpAddr,
    min: u16,
    max: u16,
    slots: Vec<Slot>,
    /// Released pairs, oldest first, still cooling.
    cooling: std::collections::VecDeque<usize>,
    rng: Rng,
    binder: Box<dyn Binder>,
}

fn bind_nonblocking(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

impl PortPool {
    /// A pool over `min..=max` whose sockets bind to `bind`.
    pub fn new(bind: IpAddr, min: u16, max: u16) -> Result<PortPool, PortError> {
        Self::with_binder(bind, min, max, Box::new(SocketBinder::default()))
    }

    /// A pool whose pairs `binder` binds.
    pub fn with_binder(
        bind: IpAddr,
        min: u16,
        max: u16,
        binder: Box<dyn Binder>,
    ) -> Result<PortPool, PortError> {
        Self::with_rng(bind, min, max, Rng::from_os(), binder)
    }

    fn with_rng(
        bind: IpAddr,
        min: u16,
        max: u16,
        rng: Rng,
        binder: Box<dyn Binder>,
    ) -> Result<PortPool, PortError> {
        let invalid = |reason| Err(PortError::InvalidRange { min, max, reason });
        if !min.is_multiple_of(2) {
            return invalid("the lowest port must be even");
        }
        if max <= min {
            return invalid("the highest port must be above the lowest");
        }
        let pairs = (usize::from(max) - usize::from(min)).div_ceil(2);
        Ok(PortPool {
            bind,
            min,
            max,
            slots: vec![Slot::Free; pairs],
            cooling: std::collections::VecDeque::new(),
            rng,
            binder,
        })
    }

    /// The address the sockets bind to.
    pub fn bind_address(&self) -> IpAddr {
        self.bind
    }

    /// Whether `port` is in the pool's range.
    pub fn contains(&self, port: u16) -> bool {
        (self.min..=self.max).contains(&port)
    }

    /// The lowest and highest port of the range.
    pub fn range(&self) -> (u16, u16) {
        (self.min, self.max)
    }

    /// Pairs in the range.
    pub fn total_pairs(&self) -> usize {
        self.slots.len()
    }

    /// Pairs available for allocation (neither in use nor set aside as unbindable).
    pub fn free_pairs(&self) -> usize {
        self.count(Slot::Free) + self.count(Slot::Cooling)
    }

    /// Pairs set aside because a port could not be bound.
    pub fn unbindable_pairs(&self) -> usize {
        self.count(Slot::Unbindable)
    }

    fn count(&self, state: Slot) -> usize {
        self.slots.iter().filter(|s| **s == state).count()
    }

    fn port_of(&self, index: usize) -> RtpPort {
        // In range by construction: index < pairs, so the port is at most max - 1.
        RtpPort(self.min + 2 * index as u16)
    }

    /// Binds a random free pair (a cooling one only when no other is
    /// free); with `rtcp_mux` only the RTP port is bound, though the RTCP
    /// port stays reserved with it.
    pub fn allocate(&mut self, rtcp_mux: bool) -> Result<RtpPort, PortError> {
        let pairs = self.slots.len();
        for wanted in [Slot::Free, Slot::Cooling] {
            let start = self.rng.below(pairs);
            for offset in 0..pairs {
                let index = (start + offset) % pairs;
                if self.slots[index] != wanted {
                    continue;
                }
                let port = self.port_of(index);
                match self.binder.bind(self.bind, port, rtcp_mux) {
                    Ok(()) => {
                        self.slots[index] = Slot::InUse;
                        return Ok(port);
                    }
                    Err(error) => {
                        tracing::debug!(%port, %error, "media port pair cannot be bound, skipped");
                        self.slots[index] = Slot::Unbindable;
                    }
                }
            }
        }
        let pairs = self.slots.len();
        Err(PortError::Exhausted(Exhaustion {
            min: self.min,
            max: self.max,
            total: pairs,
            in_use: self.count(Slot::InUse),
            unbindable: self.count(Slot::Unbindable),
        }))
    }

    /// Binds the pair of RTP port `port` (a restarted manager re-adopting a
    /// leg); fails when it is outside the range, in use, or cannot be bound.
    pub fn allocate_port(&mut self, port: u16) -> Result<RtpPort, PortError> {
        let index = port
            .checked_sub(self.min)
            .filter(|d| d % 2 == 0)
            .map(|d| usize::from(d / 2))
            .filter(|i| *i < self.slots.len() && self.slots[*i] != Slot::InUse)
            .ok_or(PortError::Unavailable(port))?;
        let pair = self.port_of(index);
        self.binder
            .bind(self.bind, pair, false)
            .map_err(|_| PortError::Unavailable(port))?;
        self.slots[index] = Slot::InUse;
        Ok(pair)
    }

    /// Returns an allocated pair to the pool; sockets the binder still holds
    /// are closed, the relay's must have been dropped.
    pub fn release(&mut self, port: RtpPort) -> Result<(), PortError> {
        let index = port
            .get()
            .checked_sub(self.min)
            .map(|d| usize::from(d / 2))
            .filter(|i| *i < self.slots.len() && self.slots[*i] == Slot::InUse)
            .ok_or(PortError::NotAllocated(port))?;
        self.binder.unbind(self.bind, port);
        self.slots[index] = Slot::Cooling;
        self.cooling.push_back(index);
        let limit = COOLING_PAIRS.min(self.slots.len() / 4);
        while self.cooling.len() > limit {
            let Some(cooled) = self.cooling.pop_front() else {
                break;
            };
            // Taken again meanwhile (nothing else was free): leave it.
            if self.slots[cooled] == Slot::Cooling {
                self.slots[cooled] = Slot::Free;
            }
        }
        Ok(())
    }

    /// Makes every pair set aside as unbindable eligible again; returns how many.
    pub fn retry_unbindable(&mut self) -> usize {
        let mut count = 0;
        for slot in &mut self.slots {
            if *slot == Slot::Unbindable {
                *slot = Slot::Free;
                count += 1;
            }
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// An even base port in `from..from + 1000` whose next `2 * pairs` ports all
    /// bind right now, so tests cope with ports other processes hold.
    fn free_range(from: u16, pairs: u16) -> u16 {
        let mut base = from;
        while base < from + 1000 {
            let held: io::Result<Vec<UdpSocket>> = (base..base + 2 * pairs)
                .map(|p| UdpSocket::bind((LOCALHOST, p)))
                .collect();
            if held.is_ok() {
                return base;
            }
            base += 2 * pairs;
        }
        panic!(
            "no {pairs} free port pairs on 127.0.0.1 in {from}-{}",
            from + 1000
        );
    }

    fn pool(from: u16, pairs: u16) -> (PortPool, u16) {
        let (pool, base, _) = pool_with_sockets(from, pairs);
        (pool, base)
    }

    /// A pool and its binder, which holds the sockets of allocated pairs.
    fn pool_with_sockets(from: u16, pairs: u16) -> (PortPool, u16, SocketBinder) {
        let base = free_range(from, pairs);
        let sockets = SocketBinder::default();
        let pool =
            PortPool::with_binder(LOCALHOST, base, base + 2 * pairs, Box::new(sockets.clone()))
                .expect("valid range");
        (pool, base, sockets)
    }

    fn take(sockets: &SocketBinder, port: RtpPort) -> BoundPair {
        sockets
            .take(SocketAddr::new(LOCALHOST, port.get()))
            .expect("the binder holds the allocated pair's sockets")
    }

    #[test]
    fn allocates_every_pair_then_reports_exhaustion() {
        let (mut pool, base, sockets) = pool_with_sockets(40000, 5);
        assert_eq!((pool.total_pairs(), pool.free_pairs()), (5, 5));
        let held: Vec<RtpPort> = (0..5)
            .map(|_| pool.allocate(false).expect("pair available"))
            .collect();
        let mut ports: Vec<u16> = held.iter().map(|p| p.get()).collect();
        ports.sort_unstable();
        assert_eq!(ports, [base, base + 2, base + 4, base + 6, base + 8]);
        for port in &held {
            let a = take(&sockets, *port);
            let rtp = a.rtp.local_addr().expect("bound RTP socket");
            assert_eq!(rtp, SocketAddr::new(LOCALHOST, port.get()));
            let rtcp = a.rtcp.as_ref().expect("RTCP socket without rtcp-mux");
            assert_eq!(
                rtcp.local_addr().expect("bound RTCP socket").port(),
                port.get() + 1
            );
        }
        assert_eq!(pool.free_pairs(), 0);
        let err = pool.allocate(false).expect_err("pool exhausted");
        assert_eq!(
            err.to_string(),
            format!(
                "no free RTP port pair in {base}-{} (5 pairs, all in use)",
                base + 10
            )
        );
    }

    #[test]
    fn allocations_are_spread_over_the_range_not_sequential() {
        let (mut pool, base) = pool(45000, 40);
        let mut pool_b = PortPool::with_rng(
            LOCALHOST,
            base,
            base + 80,
            Rng::seeded(7),
            Box::new(SocketBinder::default()),
        )
        .expect("valid range");
        let held: Vec<RtpPort> = (0..10)
            .map(|_| pool.allocate(false).expect("pair"))
            .collect();
        let ports: Vec<u16> = held.iter().map(|p| p.get()).collect();
        let steps = ports.windows(2).filter(|w| w[1] == w[0] + 2).count();
        assert!(
            steps < 5,
            "successive allocations do not follow each other: {ports:?}"
        );
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 10, "no pair handed out twice while held");
        assert!(
            unique.iter().any(|p| *p >= base + 20),
            "not only the start of the range: {ports:?}"
        );
        for port in held {
            pool.release(port).expect("allocated pair");
        }
        // The same over the whole range, with a fixed seed: every pair once.
        let all: Vec<u16> = (0..40)
            .map(|_| pool_b.allocate(false).expect("pair").get())
            .collect();
        let mut sorted = all.clone();
        sorted.sort_unstable();
        let want: Vec<u16> = (0..40).map(|i| base + 2 * i).collect();
        assert_eq!(sorted, want, "every pair, each once");
        assert_ne!(all, want, "not in order");
        assert!(pool_b.allocate(false).is_err(), "then exhausted");
    }

    #[test]
    fn a_released_pair_cools_while_others_are_free() {
        let (mut pool, _) = pool(46000, 8);
        for _ in 0..50 {
            let port = pool.allocate(false).expect("pair");
            pool.release(port).expect("allocated pair");
            let next = pool.allocate(false).expect("pair");
            assert_ne!(next, port, "the pair just released is not reused at once");
            pool.release(next).expect("allocated pair");
        }
        assert_eq!(pool.free_pairs(), 8, "cooling pairs count as free");
        assert!(matches!(
            pool.release(RtpPort(1)),
            Err(PortError::NotAllocated(_))
        ));
    }

    #[test]
    fn a_cooling_pair_is_taken_when_nothing_else_is_free() {
        let (mut pool, _) = pool(47000, 4);
        let held: Vec<RtpPort> = (0..3)
            .map(|_| pool.allocate(false).expect("pair"))
            .collect();
        let port = held[0];
        pool.release(port).expect("allocated");
        let last_free = pool.allocate(false).expect("the free pair first");
        assert_ne!(last_free, port);
        let again = pool.allocate(false).expect("then the cooling pair");
        assert_eq!(again, port);
        assert!(pool.allocate(false).is_err());
    }

    #[test]
    fn busy_ports_are_skipped_until_retried() {
        let (mut pool, base) = pool(42000, 3);
        // Another process holds the RTCP port of the second pair.
        let blocker = UdpSocket::bind((LOCALHOST, base + 3)).expect("blocker binds");
        let a = pool.allocate(false).expect("first pair");
        let b = pool.allocate(false).expect("third pair");
        let mut got = [a.get(), b.get()];
        got.sort_unstable();
        assert_eq!(got, [base, base + 4], "the second pair never binds");
        // By the time the pool is exhausted it tried the second pair too.
        let err = pool.allocate(false).expect_err("exhausted");
        assert_eq!(pool.unbindable_pairs(), 1);
        assert_eq!(pool.free_pairs(), 0);
        assert_eq!(
            err.to_string(),
            format!(
                "no free RTP port pair in {base}-{} (3 pairs: 2 in use, 1 could not be bound)",
                base + 6
            )
        );
        drop(blocker);
        assert_eq!(pool.retry_unbindable(), 1);
        let c = pool.allocate(false).expect("second pair after retry");
        assert_eq!(c.get(), base + 2);
    }

    #[test]
    fn rtcp_mux_binds_only_rtp() {
        let (mut pool, base, sockets) = pool_with_sockets(43000, 2);
        let allocated = pool.allocate(true).expect("pair");
        let a = take(&sockets, allocated);
        assert!(a.rtcp.is_none());
        let port = allocated.get();
        assert_eq!(a.rtp.local_addr().expect("bound").port(), port, "RTP bound");
        // The RTCP port stays reserved: the next allocation takes the other pair.
        let other = if port == base { base + 2 } else { base };
        assert_eq!(pool.allocate(true).expect("pair").get(), other);
    }

    #[test]
    fn sockets_are_nonblocking() {
        let (mut pool, _, sockets) = pool_with_sockets(44000, 1);
        let a = take(&sockets, pool.allocate(false).expect("pair"));
        let mut buf = [0u8; 16];
        let err = a.rtp.recv_from(&mut buf).expect_err("nothing to read");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn rejects_invalid_ranges() {
        let err = PortPool::new(LOCALHOST, 10001, 10010).expect_err("odd min");
        assert_eq!(
            err.to_string(),
            "invalid media port range 10001-10010: the lowest port must be even"
        );
        assert!(matches!(
            PortPool::new(LOCALHOST, 10000, 10000),
            Err(PortError::InvalidRange { .. })
        ));
        let pool = PortPool::new(LOCALHOST, 10000, 10011).expect("valid");
        assert_eq!(pool.total_pairs(), 6);
        assert_eq!(RtpPort::new(10001), None);
        assert_eq!(RtpPort::new(10000).map(RtpPort::rtcp), Some(10001));
    }
}
