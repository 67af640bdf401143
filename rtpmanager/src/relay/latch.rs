//! Endpoint learning: which source a leg's media is accepted from and sent
//! back to (symmetric RTP), after rtpengine's "heuristic" learning and
//! Asterisk's `strictrtp`.
//!
//! A strict leg *learns* its peer's source and then *locks* it. Learning
//! (re)starts whenever the leg's remote description is settled (an answer,
//! a re-INVITE's answer). The window opens with the first packet after
//! that and lasts [`SourceLatch::new`]'s `window`; during it the best
//! source seen so far is the *candidate* (media is accepted from it and
//! sent to it), ranked against the SDP address as a hint:
//!
//! 1. the SDP address and port exactly: locked at once (nothing can do
//!    better, and a peer that is not behind a NAT pays no window);
//! 2. the SDP address with another port (a port-rewriting NAT);
//! 3. any other source (a NAT rewriting the address too).
//!
//! A better-ranked source replaces the candidate; an equal or worse one is
//! refused, so the first source of a rank wins and a stranger racing the
//! peer must do better than it. When the window ends the candidate is
//! locked: from then on every other source is refused until the next
//! remote description. A new remote description with the same SDP address
//! keeps the current source as the candidate (a session refresh does not
//! reopen the leg to anyone); a different address forgets it.
//!
//! A roaming leg (not strict) follows every new source at once: it is
//! meant for peers whose NAT binding moves during a call, and any source
//! can redirect its media.
//!
//! Sans-IO: [`SourceLatch::handle_packet`] and
//! [`SourceLatch::handle_timeout`] take `now`; changes come out of
//! [`SourceLatch::poll_event`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How a source compares with the SDP hint; higher is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    Other,
    SameAddress,
    Exact,
}

fn rank(source: SocketAddr, hint: Option<SocketAddr>) -> Rank {
    match hint {
        Some(h) if h == source => Rank::Exact,
        Some(h) if h.ip() == source.ip() => Rank::SameAddress,
        _ => Rank::Other,
    }
}

/// Whether a packet's source is accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// From the current (candidate or locked) source.
    Accept,
    /// From another source: dropped and counted.
    Reject,
}

/// A change of the source media is accepted from and sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Latched {
    pub source: SocketAddr,
    /// True when the source is locked (a strict leg after learning, or any
    /// latch of a roaming leg): the kernel fast path may expect it.
    pub locked: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Learning {
        candidate: Option<(SocketAddr, Rank)>,
        /// Set by the first packet of the window.
        deadline: Option<Instant>,
    },
    Locked(SocketAddr),
}

/// The source of one stream (RTP or RTCP) of one leg.
#[derive(Clone, Debug)]
pub struct SourceLatch {
    strict: bool,
    window: Duration,
    hint: Option<SocketAddr>,
    phase: Phase,
    event: Option<Latched>,
}

impl SourceLatch {
    /// A latch that has seen nothing. `window` is the learning window of a
    /// strict latch; zero locks the first source at once.
    pub fn new(strict: bool, window: Duration, hint: Option<SocketAddr>) -> SourceLatch {
        SourceLatch {
            strict,
            window,
            hint,
            phase: Phase::Learning {
                candidate: None,
                deadline: None,
            },
            event: None,
        }
    }

    /// The source media is sent back to: the locked one, else the
    /// candidate.
    pub fn current(&self) -> Option<SocketAddr> {
        match self.phase {
            Phase::Locked(s) => Some(s),
            Phase::Learning { candidate, .. } => candidate.map(|(s, _)| s),
        }
    }

    /// Whether the current source is locked.
    pub fn locked(&self) -> bool {
        matches!(self.phase, Phase::Locked(_))
    }

    /// A new remote description (with its address as the new hint)
    /// restarts learning; a changed policy takes effect here too.
    pub fn restart(&mut self, strict: bool, window: Duration, hint: Option<SocketAddr>) {
        let kept = if hint == self.hint {
            self.current().map(|s| (s, rank(s, hint)))
        } else {
            None
        };
        self.strict = strict;
        self.window = window;
        self.hint = hint;
        self.phase = Phase::Learning {
            candidate: kept,
            deadline: None,
        };
    }

    /// Takes a packet from `source`.
    pub fn handle_packet(&mut self, now: Instant, source: SocketAddr) -> Verdict {
        self.handle_timeout(now);
        if !self.strict {
            if self.phase != Phase::Locked(source) {
                self.lock(source);
            }
            return Verdict::Accept;
        }
        let (candidate, deadline) = match self.phase {
            Phase::Locked(s) if s == source => return Verdict::Accept,
            Phase::Locked(_) => return Verdict::Reject,
            Phase::Learning {
                candidate,
                deadline,
            } => (candidate, deadline),
        };
        let deadline = deadline.unwrap_or(now + self.window);
        let r = rank(source, self.hint);
        if r == Rank::Exact || self.window.is_zero() {
            self.lock(source);
            return Verdict::Accept;
        }
        let verdict = match candidate {
            Some((c, _)) if c == source => Verdict::Accept,
            Some((_, best)) if r <= best => Verdict::Reject,
            _ => {
                self.event = Some(Latched {
                    source,
                    locked: false,
                });
                self.phase = Phase::Learning {
                    candidate: Some((source, r)),
                    deadline: Some(deadline),
                };
                return Verdict::Accept;
            }
        };
        self.phase = Phase::Learning {
            candidate,
            deadline: Some(deadline),
        };
        verdict
    }

    /// Locks the candidate once the window is over.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Phase::Learning {
            candidate: Some((source, _)),
            deadline: Some(deadline),
        } = self.phase
        {
            if now >= deadline {
                self.lock(source);
            }
        }
    }

    /// The last change since the previous call (a lock supersedes the
    /// candidate it locks).
    pub fn poll_event(&mut self) -> Option<Latched> {
        self.event.take()
    }

    fn lock(&mut self, source: SocketAddr) {
        self.phase = Phase::Locked(source);
        self.event = Some(Latched {
            source,
            locked: true,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    const SDP: &str = "192.0.2.10:4000";
    const WINDOW: Duration = Duration::from_secs(3);

    fn strict() -> SourceLatch {
        SourceLatch::new(true, WINDOW, Some(addr(SDP)))
    }

    #[test]
    fn the_sdp_address_locks_at_once_and_strangers_are_refused() {
        let t0 = Instant::now();
        let mut l = strict();
        assert_eq!(l.handle_packet(t0, addr(SDP)), Verdict::Accept);
        assert_eq!(
            l.poll_event(),
            Some(Latched {
                source: addr(SDP),
                locked: true
            })
        );
        assert_eq!(
            l.handle_packet(t0, addr("127.0.20.66:4000")),
            Verdict::Reject
        );
        assert_eq!(l.current(), Some(addr(SDP)));
        assert_eq!(l.poll_event(), None, "a refused packet changes nothing");
    }

    #[test]
    fn a_nat_rewritten_source_is_learned_and_locked_when_the_window_ends() {
        let t0 = Instant::now();
        let mut l = strict();
        let nat = addr("203.0.113.5:61000");
        assert_eq!(l.handle_packet(t0, nat), Verdict::Accept);
        assert_eq!(
            l.poll_event(),
            Some(Latched {
                source: nat,
                locked: false
            })
        );
        assert_eq!(l.current(), Some(nat), "media goes back to the NAT");
        let stranger = addr("198.51.100.9:5000");
        assert_eq!(
            l.handle_packet(t0 + Duration::from_secs(1), stranger),
            Verdict::Reject,
            "an equal rank does not replace the first candidate"
        );
        l.handle_timeout(t0 + WINDOW - Duration::from_millis(1));
        assert!(!l.locked());
        l.handle_timeout(t0 + WINDOW);
        assert!(l.locked());
        assert_eq!(
            l.poll_event(),
            Some(Latched {
                source: nat,
                locked: true
            })
        );
        assert_eq!(
            l.handle_packet(t0 + WINDOW, nat),
            Verdict::Accept,
            "the locked source flows"
        );
    }

    #[test]
    fn a_better_ranked_source_replaces_the_candidate_during_the_window() {
        let t0 = Instant::now();
        let mut l = strict();
        l.handle_packet(t0, addr("203.0.113.5:61000"));
        let same_ip = addr("192.0.2.10:4444");
        assert_eq!(
            l.handle_packet(t0 + Duration::from_millis(10), same_ip),
            Verdict::Accept
        );
        assert_eq!(l.current(), Some(same_ip));
        assert_eq!(
            l.handle_packet(t0 + Duration::from_millis(20), addr(SDP)),
            Verdict::Accept
        );
        assert!(l.locked(), "the exact SDP address locks at once");
        assert_eq!(l.current(), Some(addr(SDP)));
    }

    #[test]
    fn the_window_opens_with_the_first_packet_not_with_the_answer() {
        let t0 = Instant::now();
        let mut l = strict();
        let nat = addr("203.0.113.5:61000");
        let later = t0 + Duration::from_secs(60);
        l.handle_timeout(later);
        l.handle_packet(later, nat);
        assert!(!l.locked(), "a peer that starts late still gets a window");
        l.handle_timeout(later + WINDOW);
        assert!(l.locked());
    }

    #[test]
    fn a_restart_with_the_same_sdp_keeps_the_source_against_equal_strangers() {
        let t0 = Instant::now();
        let mut l = strict();
        let nat = addr("203.0.113.5:61000");
        l.handle_packet(t0, nat);
        l.handle_timeout(t0 + WINDOW);
        l.restart(true, WINDOW, Some(addr(SDP)));
        assert!(!l.locked(), "learning again after the re-INVITE");
        assert_eq!(l.current(), Some(nat));
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(
            l.handle_packet(t1, addr("198.51.100.9:5000")),
            Verdict::Reject
        );
        assert_eq!(l.handle_packet(t1, nat), Verdict::Accept);
        l.handle_timeout(t1 + WINDOW);
        assert_eq!((l.current(), l.locked()), (Some(nat), true));
    }

    #[test]
    fn a_restart_with_a_new_sdp_address_forgets_the_old_source() {
        let t0 = Instant::now();
        let mut l = strict();
        l.handle_packet(t0, addr(SDP));
        let moved = addr("192.0.2.77:6000");
        l.restart(true, WINDOW, Some(moved));
        assert_eq!(l.current(), None, "media goes to the new SDP address");
        let nat = addr("203.0.113.8:7000");
        assert_eq!(
            l.handle_packet(t0 + Duration::from_secs(1), nat),
            Verdict::Accept
        );
        assert_eq!(l.current(), Some(nat));
    }

    #[test]
    fn roaming_follows_every_new_source() {
        let t0 = Instant::now();
        let mut l = SourceLatch::new(false, WINDOW, Some(addr(SDP)));
        let (first, second) = (addr("203.0.113.5:61000"), addr("203.0.113.5:61002"));
        assert_eq!(l.handle_packet(t0, first), Verdict::Accept);
        assert_eq!(
            l.poll_event(),
            Some(Latched {
                source: first,
                locked: true
            })
        );
        assert_eq!(l.handle_packet(t0, second), Verdict::Accept);
        assert_eq!(l.current(), Some(second));
        assert_eq!(l.handle_packet(t0, second), Verdict::Accept);
        assert_eq!(l.poll_event().map(|e| e.source), Some(second));
        assert_eq!(l.poll_event(), None);
    }

    #[test]
    fn a_zero_window_locks_the_first_source() {
        let t0 = Instant::now();
        let mut l = SourceLatch::new(true, Duration::ZERO, None);
        let first = addr("203.0.113.5:61000");
        l.handle_packet(t0, first);
        assert!(l.locked());
        assert_eq!(
            l.handle_packet(t0, addr("203.0.113.5:61002")),
            Verdict::Reject
        );
    }
}
