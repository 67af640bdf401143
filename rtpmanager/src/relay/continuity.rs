//! Continuity of the RTP stream a leg's peer receives from the manager.
//!
//! The peer of a leg hears one RTP stream from the manager's port of that
//! leg, made of packets the relay forwards from the bridged leg and packets
//! the manager injects itself (playback, RFC 4733 DTMF). [`OutboundStream`]
//! keeps it one stream, the way rtpengine does once a media player has run:
//!
//! - until the first injection, forwarded packets pass unchanged (so the
//!   kernel fast path may carry them) and the stream only remembers the
//!   newest one;
//! - an injection continues from there: the same SSRC, the next sequence
//!   number, and a timestamp advanced by the wall-clock time since that
//!   packet (at least one 20 ms frame). A leg that never sent anything gets a
//!   fresh random SSRC, sequence number and timestamp (RFC 3550 §5.1);
//! - while an injection runs, forwarded packets are dropped (the injection
//!   owns the stream; the session table pauses the bridge as well, but the
//!   pause reaches the relay asynchronously and this flag closes the gap);
//! - once any injection happened, every forwarded packet is rewritten to the
//!   stream's SSRC with sequence-number and timestamp offsets. The offsets are
//!   fixed on the first forwarded packet after an injection, and again when
//!   the source's SSRC changes, so the peer sees the next sequence number and
//!   a timestamp that moved on with the wall clock.
//!
//! The kernel fast path is a cache of this: it may carry the stream while
//! forwarded packets pass unchanged, and while they are rewritten once the
//! offsets are fixed ([`OutboundStream::rewrite`] says which, and
//! [`OutboundStream::take_anchored`] tells the relay when offsets were fixed,
//! so the offload decision can install them). What the kernel forwarded
//! comes back with [`OutboundStream::forwarded_elsewhere`] when the stream
//! leaves the kernel, so an injection continues after the packets the peer
//! really received.
//!
//! Sans-IO: every input carries `now`; the caller supplies the random values
//! of a fresh stream.

use std::time::{Duration, Instant};

use crate::media::rtp::{RtpTimestamp, SeqNum, Ssrc};

/// The identity and position of one RTP packet in a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamPosition {
    pub ssrc: Ssrc,
    pub sequence: SeqNum,
    pub timestamp: RtpTimestamp,
}

/// Names one injection; a later injection on the same stream supersedes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InjectionToken(u64);

/// What the relay does with a packet it would forward into the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardVerdict {
    /// An injection owns the stream right now.
    Drop,
    /// Send the packet as it is.
    Unchanged,
    /// Send it with these header fields.
    Rewrite(StreamPosition),
}

#[derive(Clone, Copy, Debug)]
struct Sent {
    position: StreamPosition,
    at: Instant,
}

/// How forwarded packets are rewritten, for a path other than the relay's
/// (the kernel) that must forward them exactly as the relay would.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rewrite {
    /// Forwarded packets pass unchanged.
    Unchanged,
    /// Forwarded packets are rewritten, but the offsets are fixed only by
    /// the next one the relay forwards (or an injection owns the stream).
    Unanchored,
    /// Packets of SSRC `source` leave with SSRC `ssrc`, the sequence number
    /// plus `sequence_offset` and the timestamp plus `timestamp_offset`.
    Anchored {
        source: Ssrc,
        ssrc: Ssrc,
        sequence_offset: u16,
        timestamp_offset: u32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Offsets {
    source: Ssrc,
    sequence: u16,
    timestamp: u32,
}

/// The stream towards one leg's peer; see the module documentation.
#[derive(Debug, Default)]
pub struct OutboundStream {
    last: Option<Sent>,
    /// Set by the first injection: forwarded packets are rewritten to it.
    rewrite_ssrc: Option<Ssrc>,
    offsets: Option<Offsets>,
    injecting: Option<InjectionToken>,
    next_token: u64,
    /// Offsets were fixed since the last [`OutboundStream::take_anchored`].
    anchored: bool,
}

/// Media clock ticks in `elapsed` at `clock_rate` Hz, at least one 20 ms
/// frame: the packet sent last occupied at least that much media time.
fn ticks_since(elapsed: Duration, clock_rate: u32) -> u32 {
    let frame = clock_rate / 50;
    let ticks = elapsed.as_micros() * u128::from(clock_rate) / 1_000_000;
    u32::try_from(ticks).unwrap_or(u32::MAX).max(frame)
}

impl OutboundStream {
    /// Decides what happens to a packet with header fields `packet` that the
    /// relay forwards into the stream at `now`.
    pub fn forward(
        &mut self,
        now: Instant,
        clock_rate: u32,
        packet: StreamPosition,
    ) -> ForwardVerdict {
        if self.injecting.is_some() {
            return ForwardVerdict::Drop;
        }
        let Some(ssrc) = self.rewrite_ssrc else {
            self.record(now, packet);
            return ForwardVerdict::Unchanged;
        };
        let offsets = match self.offsets {
            Some(o) if o.source == packet.ssrc => o,
            _ => {
                let next = self.continuation(now, clock_rate).unwrap_or(packet);
                Offsets {
                    source: packet.ssrc,
                    sequence: next.sequence.0.wrapping_sub(packet.sequence.0),
                    timestamp: next.timestamp.0.wrapping_sub(packet.timestamp.0),
                }
            }
        };
        if self.offsets != Some(offsets) {
            self.anchored = true;
        }
        self.offsets = Some(offsets);
        let out = StreamPosition {
            ssrc,
            sequence: packet.sequence.wrapping_add(offsets.sequence),
            timestamp: packet.timestamp.wrapping_add(offsets.timestamp),
        };
        self.record(now, out);
        ForwardVerdict::Rewrite(out)
    }

    /// Starts an injection at `now` and returns where its first packet
    /// continues the stream; `fresh` is used when nothing was sent yet.
    /// Forwarding stops until [`OutboundStream::end_injection`].
    pub fn begin_injection(
        &mut self,
        now: Instant,
        clock_rate: u32,
        fresh: StreamPosition,
    ) -> (InjectionToken, StreamPosition) {
        let token = InjectionToken(self.next_token);
        self.next_token += 1;
        self.injecting = Some(token);
        let start = self.continuation(now, clock_rate).unwrap_or(fresh);
        self.rewrite_ssrc = Some(start.ssrc);
        self.offsets = None;
        (token, start)
    }

    /// Records a packet the injection `token` sent at `now`; `position.timestamp`
    /// is the media clock at `now` (the packet's own timestamp for audio).
    /// False when a newer injection superseded this one: it must stop.
    pub fn injected(
        &mut self,
        token: InjectionToken,
        now: Instant,
        position: StreamPosition,
    ) -> bool {
        if self.injecting != Some(token) {
            return false;
        }
        self.last = Some(Sent { position, at: now });
        true
    }

    /// Ends the injection `token`, letting forwarded packets through again;
    /// false (and no effect) when a newer injection superseded it.
    pub fn end_injection(&mut self, token: InjectionToken) -> bool {
        if self.injecting != Some(token) {
            return false;
        }
        self.injecting = None;
        self.offsets = None;
        true
    }

    /// Whether forwarded packets are rewritten (an injection happened).
    pub fn rewriting(&self) -> bool {
        self.rewrite_ssrc.is_some()
    }

    /// How forwarded packets are rewritten now.
    pub fn rewrite(&self) -> Rewrite {
        match (self.rewrite_ssrc, self.offsets) {
            (None, _) => Rewrite::Unchanged,
            (Some(ssrc), Some(o)) if self.injecting.is_none() => Rewrite::Anchored {
                source: o.source,
                ssrc,
                sequence_offset: o.sequence,
                timestamp_offset: o.timestamp,
            },
            (Some(_), _) => Rewrite::Unanchored,
        }
    }

    /// Takes back the anchored rewrite of a previous run of the manager
    /// (whose kernel entries still rewrite with it), so the relay and the
    /// re-installed entries go on with the same offsets.
    pub fn resume(&mut self, rewrite: Rewrite) {
        if let Rewrite::Anchored {
            source,
            ssrc,
            sequence_offset,
            timestamp_offset,
        } = rewrite
        {
            self.rewrite_ssrc = Some(ssrc);
            self.offsets = Some(Offsets {
                source,
                sequence: sequence_offset,
                timestamp: timestamp_offset,
            });
        }
    }

    /// Whether [`OutboundStream::forward`] fixed new offsets since the last
    /// call: [`OutboundStream::rewrite`] changed to a new anchor.
    pub fn take_anchored(&mut self) -> bool {
        std::mem::take(&mut self.anchored)
    }

    /// Records a packet another path (the kernel) forwarded into the stream
    /// at `at`, with the header fields it left with: a later injection
    /// continues after it unless the relay sent a newer one.
    pub fn forwarded_elsewhere(&mut self, at: Instant, sent: StreamPosition) {
        self.record(at, sent);
    }

    /// Whether an injection owns the stream.
    pub fn injecting(&self) -> bool {
        self.injecting.is_some()
    }

    /// The position that follows the last packet sent, at `now`.
    fn continuation(&self, now: Instant, clock_rate: u32) -> Option<StreamPosition> {
        let last = self.last?;
        Some(StreamPosition {
            ssrc: last.position.ssrc,
            sequence: last.position.sequence.wrapping_add(1),
            timestamp: last.position.timestamp.wrapping_add(ticks_since(
                now.saturating_duration_since(last.at),
                clock_rate,
            )),
        })
    }

    /// Remembers `sent` unless it is older than the newest packet of the same
    /// SSRC (a reordered packet must not move the continuation point back).
    fn record(&mut self, now: Instant, sent: StreamPosition) {
        let newer = self.last.is_none_or(|l| {
            l.position.ssrc != sent.ssrc || sent.sequence.delta_from(l.position.sequence) > 0
        });
        if newer {
            self.last = Some(Sent {
                position: sent,
                at: now,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(ssrc: u32, sequence: u16, timestamp: u32) -> StreamPosition {
        StreamPosition {
            ssrc: Ssrc(ssrc),
            sequence: SeqNum(sequence),
            timestamp: RtpTimestamp(timestamp),
        }
    }

    const FRESH: StreamPosition = StreamPosition {
        ssrc: Ssrc(0xF00D),
        sequence: SeqNum(5000),
        timestamp: RtpTimestamp(777_000),
    };

    #[test]
    fn forwarded_packets_pass_unchanged_until_an_injection() {
        let mut s = OutboundStream::default();
        let t0 = Instant::now();
        for i in 0..3u16 {
            let p = pos(0xAA, 100 + i, 1600 + u32::from(i) * 160);
            assert_eq!(
                s.forward(t0 + Duration::from_millis(20) * u32::from(i), 8000, p),
                ForwardVerdict::Unchanged,
                "packet {i} passes"
            );
        }
        assert!(!s.rewriting(), "nothing injected yet");
    }

    #[test]
    fn an_injection_continues_the_forwarded_stream_and_forwarding_resumes_after_it() {
        let mut s = OutboundStream::default();
        let t0 = Instant::now();
        s.forward(t0, 8000, pos(0xAA, 100, 16_000));
        // 40 ms later: two frames of media time passed.
        let (token, start) = s.begin_injection(t0 + Duration::from_millis(40), 8000, FRESH);
        assert_eq!(
            start,
            pos(0xAA, 101, 16_320),
            "same SSRC, next seq, ts by wall clock"
        );
        assert_eq!(
            s.forward(t0 + Duration::from_millis(45), 8000, pos(0xAA, 101, 16_160)),
            ForwardVerdict::Drop,
            "the injection owns the stream"
        );
        let mut at = t0 + Duration::from_millis(40);
        for k in 0..10u16 {
            let p = pos(0xAA, 101 + k, 16_320 + u32::from(k) * 160);
            assert!(s.injected(token, at, p), "injection {k} recorded");
            at += Duration::from_millis(20);
        }
        assert!(s.end_injection(token), "the current injection ends");
        // The source kept its own numbering: seq 112 at ts 17_920, arriving
        // 20 ms after the last injected packet (seq 110, ts 17_760).
        let resumed = s.forward(at, 8000, pos(0xAA, 112, 17_920));
        assert_eq!(resumed, ForwardVerdict::Rewrite(pos(0xAA, 111, 17_920)));
        assert_eq!(
            s.forward(at + Duration::from_millis(20), 8000, pos(0xAA, 113, 18_080)),
            ForwardVerdict::Rewrite(pos(0xAA, 112, 18_080)),
            "the offsets hold for the following packets"
        );
        assert!(s.rewriting());
    }

    #[test]
    fn a_leg_that_never_sent_starts_fresh_and_later_sources_are_mapped_onto_it() {
        let mut s = OutboundStream::default();
        let t0 = Instant::now();
        let (token, start) = s.begin_injection(t0, 8000, FRESH);
        assert_eq!(start, FRESH);
        assert!(s.injected(token, t0, FRESH));
        assert!(s.end_injection(token));
        // A bridged source with its own SSRC, 100 ms later: mapped onto the
        // stream's SSRC, next seq, timestamp 800 ticks on.
        assert_eq!(
            s.forward(t0 + Duration::from_millis(100), 8000, pos(0xBB, 9, 90)),
            ForwardVerdict::Rewrite(pos(0xF00D, 5001, 777_800))
        );
        // The source changes SSRC (a re-INVITE to another phone): re-anchored.
        assert_eq!(
            s.forward(t0 + Duration::from_millis(120), 8000, pos(0xCC, 60_000, 5)),
            ForwardVerdict::Rewrite(pos(0xF00D, 5002, 777_960))
        );
        // A reordered older packet maps below and does not move the anchor.
        assert_eq!(
            s.forward(t0 + Duration::from_millis(121), 8000, pos(0xCC, 59_999, 0)),
            ForwardVerdict::Rewrite(pos(0xF00D, 5001, 777_955))
        );
        assert_eq!(
            s.forward(
                t0 + Duration::from_millis(140),
                8000,
                pos(0xCC, 60_001, 165)
            ),
            ForwardVerdict::Rewrite(pos(0xF00D, 5003, 778_120))
        );
    }

    #[test]
    fn a_superseded_injection_can_neither_send_nor_reopen_forwarding() {
        let mut s = OutboundStream::default();
        let t0 = Instant::now();
        let (old, _) = s.begin_injection(t0, 8000, FRESH);
        assert!(s.injected(old, t0, FRESH));
        let (new, start) = s.begin_injection(t0 + Duration::from_millis(20), 8000, FRESH);
        assert_eq!(start, pos(0xF00D, 5001, 777_160), "the new one continues");
        assert!(
            !s.injected(old, t0 + Duration::from_millis(20), FRESH),
            "the old one is told to stop"
        );
        assert!(!s.end_injection(old), "the old one cannot end the new one");
        assert!(s.injecting());
        assert!(s.end_injection(new));
        assert!(!s.injecting());
    }

    #[test]
    fn the_rewrite_is_anchored_by_the_first_forwarded_packet_after_an_injection() {
        let mut s = OutboundStream::default();
        let t0 = Instant::now();
        assert_eq!(s.rewrite(), Rewrite::Unchanged);
        s.forward(t0, 8000, pos(0xAA, 100, 16_000));
        assert!(!s.take_anchored(), "unchanged forwarding fixes nothing");
        let (token, start) = s.begin_injection(t0 + Duration::from_millis(20), 8000, FRESH);
        assert_eq!(s.rewrite(), Rewrite::Unanchored, "injecting");
        assert!(s.injected(token, t0 + Duration::from_millis(20), start));
        assert!(s.end_injection(token));
        assert_eq!(s.rewrite(), Rewrite::Unanchored, "no forwarded packet yet");
        // Injected seq 101 ts 16_160; the source is at seq 150 ts 24_000, 20 ms on.
        assert_eq!(
            s.forward(t0 + Duration::from_millis(40), 8000, pos(0xAA, 150, 24_000)),
            ForwardVerdict::Rewrite(pos(0xAA, 102, 16_320))
        );
        assert!(s.take_anchored(), "offsets fixed");
        assert!(!s.take_anchored(), "reported once");
        assert_eq!(
            s.rewrite(),
            Rewrite::Anchored {
                source: Ssrc(0xAA),
                ssrc: Ssrc(0xAA),
                sequence_offset: 102u16.wrapping_sub(150),
                timestamp_offset: 16_320u32.wrapping_sub(24_000),
            }
        );
        s.forward(t0 + Duration::from_millis(60), 8000, pos(0xAA, 151, 24_160));
        assert!(!s.take_anchored(), "the same offsets are no new anchor");
    }

    #[test]
    fn an_injection_continues_after_what_the_kernel_forwarded() {
        let mut s = OutboundStream::default();
        let t0 = Instant::now();
        s.forward(t0, 8000, pos(0xAA, 100, 16_000));
        // The kernel carried seq 101..=300; its last left 4 s later.
        s.forwarded_elsewhere(t0 + Duration::from_secs(4), pos(0xAA, 300, 48_000));
        // An older report (the relay forwarded something newer) is ignored.
        s.forwarded_elsewhere(t0 + Duration::from_secs(5), pos(0xAA, 299, 47_840));
        let (_, start) = s.begin_injection(
            t0 + Duration::from_secs(4) + Duration::from_millis(20),
            8000,
            FRESH,
        );
        assert_eq!(start, pos(0xAA, 301, 48_160));
    }

    #[test]
    fn a_resumed_rewrite_applies_the_saved_offsets() {
        let mut s = OutboundStream::default();
        let anchored = Rewrite::Anchored {
            source: Ssrc(0xAA),
            ssrc: Ssrc(0xBB),
            sequence_offset: 10,
            timestamp_offset: 1600,
        };
        s.resume(anchored);
        assert_eq!(s.rewrite(), anchored);
        assert_eq!(
            s.forward(Instant::now(), 8000, pos(0xAA, 100, 16_000)),
            ForwardVerdict::Rewrite(pos(0xBB, 110, 17_600))
        );
        assert!(!s.take_anchored(), "the same anchor, nothing new");
    }

    #[test]
    fn sequence_and_timestamp_offsets_wrap() {
        let mut s = OutboundStream::default();
        let t0 = Instant::now();
        let fresh = pos(1, 65_535, u32::MAX - 10);
        let (token, start) = s.begin_injection(t0, 8000, fresh);
        assert!(s.injected(token, t0, start));
        assert!(s.end_injection(token));
        assert_eq!(
            s.forward(t0 + Duration::from_millis(20), 8000, pos(2, 10, 1000)),
            ForwardVerdict::Rewrite(pos(1, 0, 149)),
            "seq wraps to 0, timestamp wraps past 2^32"
        );
    }

    use switchboard_testkit::Rng;

    /// Two sources (the bridged leg before and after a transfer, say) each
    /// send a packet every 20 ms whether forwarded or not; the relay
    /// forwards the active one; switches and injections (one packet per 20
    /// ms while they run) come in random order. From the packet before the
    /// first injection on, the peer must see one SSRC, every sequence
    /// number once and in order, and the timestamp advancing with the wall
    /// clock (160 ticks per 20 ms at 8 kHz), whatever happened in between.
    #[test]
    fn the_stream_stays_continuous_across_random_source_switches_and_injections() {
        for seed in 0..300 {
            let mut rng = Rng(seed);
            let mut s = OutboundStream::default();
            let mut now = Instant::now();
            let first = rng.next_u64() as u32;
            let mut sources = [
                pos(first, rng.next_u64() as u16, rng.next_u64() as u32),
                pos(first ^ 1, rng.next_u64() as u16, rng.next_u64() as u32),
            ];
            let fresh = pos(
                rng.next_u64() as u32,
                rng.next_u64() as u16,
                rng.next_u64() as u32,
            );
            let mut active = 0;
            let mut injection: Option<(InjectionToken, StreamPosition)> = None;
            let mut sent: Vec<StreamPosition> = Vec::new();
            let mut first_injected: Option<usize> = None;
            for step in 0..400 {
                now += Duration::from_millis(20);
                for source in &mut sources {
                    source.sequence = source.sequence.wrapping_add(1);
                    source.timestamp = source.timestamp.wrapping_add(160);
                }
                match rng.below(16) {
                    0 => active = 1 - active,
                    1 => {
                        // A new injection may supersede a running one.
                        let superseded = injection.take();
                        let (token, start) = s.begin_injection(now, 8000, fresh);
                        if let Some((old, _)) = superseded {
                            assert!(!s.end_injection(old), "seed {seed} step {step}");
                        }
                        first_injected.get_or_insert(sent.len());
                        injection = Some((token, start));
                    }
                    2 | 3 => {
                        if let Some((token, _)) = injection.take() {
                            assert!(s.end_injection(token), "seed {seed} step {step}");
                        }
                    }
                    _ => {}
                }
                let verdict = s.forward(now, 8000, sources[active]);
                match &mut injection {
                    Some((token, next)) => {
                        assert_eq!(verdict, ForwardVerdict::Drop, "seed {seed} step {step}");
                        assert!(s.injected(*token, now, *next));
                        sent.push(*next);
                        next.sequence = next.sequence.wrapping_add(1);
                        next.timestamp = next.timestamp.wrapping_add(160);
                    }
                    None => match verdict {
                        ForwardVerdict::Unchanged => {
                            assert_eq!(first_injected, None, "seed {seed} step {step}");
                            sent.push(sources[active]);
                        }
                        ForwardVerdict::Rewrite(out) => sent.push(out),
                        ForwardVerdict::Drop => panic!("seed {seed} step {step}: dropped"),
                    },
                }
            }
            let Some(from) = first_injected else {
                continue;
            };
            for (i, pair) in sent[from.saturating_sub(1)..].windows(2).enumerate() {
                let (a, b) = (pair[0], pair[1]);
                let at = format!("seed {seed}, packet {i} after the first injection");
                assert_eq!(b.ssrc, a.ssrc, "{at}: one SSRC");
                assert_eq!(b.sequence, a.sequence.wrapping_add(1), "{at}: no gap");
                assert_eq!(b.timestamp.delta_from(a.timestamp), 160, "{at}: timestamp");
            }
        }
    }
}
