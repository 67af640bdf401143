//! Per-source receiver statistics (RFC 3550 Appendix A.1, A.3 and A.8).
//!
//! API: [`ReceiverStats::new`] with the stream's clock rate, then
//! [`ReceiverStats::handle_packet`] for every RTP packet of the source with its
//! arrival instant; read [`ReceiverStats::extended_highest_seq`],
//! [`ReceiverStats::expected`], [`ReceiverStats::received`],
//! [`ReceiverStats::cumulative_lost`], [`ReceiverStats::jitter`] /
//! [`ReceiverStats::jitter_micros`] and the plain counters; close a reporting
//! interval with [`ReceiverStats::take_fraction_lost`] or build a whole
//! [`ReportBlock`] with [`ReceiverStats::report_block`].
//!
//! The sequence rules are exactly those of Appendix A.1: a new source is on
//! probation until [`MIN_SEQUENTIAL`] packets arrive in sequence, and the packet
//! that ends probation becomes the base sequence number, so the probation
//! packets before it are in the plain packet counter but not in
//! `received`/`expected`. A jump of more than [`MAX_DROPOUT`] ahead (or more than
//! [`MAX_MISORDER`] behind) is discarded unless the next packet follows it, in
//! which case the source is assumed to have restarted and the counts are reset.

use std::time::Instant;

use super::rtp::{ReportBlock, RtpTimestamp, SeqNum, Ssrc};

/// Packets in sequence needed before a new source is validated.
pub const MIN_SEQUENTIAL: u32 = 2;
/// Largest forward jump still taken as loss rather than a restart.
pub const MAX_DROPOUT: u16 = 3000;
/// Largest backward step still taken as reordering rather than a restart.
pub const MAX_MISORDER: u16 = 100;

const RTP_SEQ_MOD: u32 = 1 << 16;

/// What the sequence tracker made of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqVerdict {
    /// Counted: in sequence, after a gap, reordered, duplicated, or confirming a restart.
    Accepted,
    /// The source is still on probation; the packet is not counted.
    Probation,
    /// A large jump not (yet) confirmed by the following packet; not counted.
    Discarded,
}

/// Appendix A.1 `source` state, after the first packet.
#[derive(Clone, Copy, Debug)]
struct SeqState {
    max_seq: u16,
    /// Wrap count shifted left by 16, as in the RFC.
    cycles: u32,
    base_seq: u32,
    bad_seq: u32,
    probation: u32,
    received: u32,
    expected_prior: u32,
    received_prior: u32,
}

impl SeqState {
    fn new(seq: u16) -> SeqState {
        let mut s = SeqState {
            max_seq: 0,
            cycles: 0,
            base_seq: 0,
            bad_seq: 0,
            probation: MIN_SEQUENTIAL,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
        };
        s.init(seq);
        s.max_seq = seq.wrapping_sub(1);
        s
    }

    fn init(&mut self, seq: u16) {
        self.base_seq = u32::from(seq);
        self.max_seq = seq;
        // One past the sequence space, so no packet matches it.
        self.bad_seq = RTP_SEQ_MOD + 1;
        self.cycles = 0;
        self.received = 0;
        self.received_prior = 0;
        self.expected_prior = 0;
    }

    fn update(&mut self, seq: u16) -> SeqVerdict {
        let udelta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init(seq);
                    self.received += 1;
                    return SeqVerdict::Accepted;
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return SeqVerdict::Probation;
        }
        if udelta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles = self.cycles.wrapping_add(RTP_SEQ_MOD);
            }
            self.max_seq = seq;
        } else if u32::from(udelta) <= RTP_SEQ_MOD - u32::from(MAX_MISORDER) {
            if u32::from(seq) == self.bad_seq {
                self.init(seq);
            } else {
                self.bad_seq = (u32::from(seq) + 1) & (RTP_SEQ_MOD - 1);
                return SeqVerdict::Discarded;
            }
        }
        // Otherwise a duplicate or a reordered packet: counted, max_seq kept.
        self.received += 1;
        SeqVerdict::Accepted
    }

    fn validated(&self) -> bool {
        self.probation == 0
    }

    fn extended_max(&self) -> u32 {
        self.cycles.wrapping_add(u32::from(self.max_seq))
    }

    fn expected(&self) -> u32 {
        self.extended_max()
            .wrapping_sub(self.base_seq)
            .wrapping_add(1)
    }
}

/// Reception statistics of one synchronisation source.
#[derive(Clone, Debug)]
pub struct ReceiverStats {
    clock_rate: u32,
    seq: Option<SeqState>,
    /// Arrival and RTP timestamp of the previous counted packet, the jitter reference.
    previous: Option<(Instant, RtpTimestamp)>,
    /// Interarrival jitter estimate in timestamp units, unrounded.
    jitter: f64,
    packets: u64,
    bytes: u64,
    last_packet_at: Option<Instant>,
}

impl ReceiverStats {
    /// Statistics for a source whose RTP clock runs at `clock_rate` Hz (8000 for G.711).
    pub fn new(clock_rate: u32) -> ReceiverStats {
        ReceiverStats {
            clock_rate,
            seq: None,
            previous: None,
            jitter: 0.0,
            packets: 0,
            bytes: 0,
            last_packet_at: None,
        }
    }

    /// Accounts a packet of `bytes` bytes with sequence `seq` and timestamp `ts`
    /// that arrived at `now`.
    pub fn handle_packet(
        &mut self,
        now: Instant,
        seq: SeqNum,
        ts: RtpTimestamp,
        bytes: usize,
    ) -> SeqVerdict {
        self.packets += 1;
        self.bytes += bytes as u64;
        self.last_packet_at = Some(now);
        let verdict = match &mut self.seq {
            None => {
                let mut state = SeqState::new(seq.0);
                let verdict = state.update(seq.0);
                self.seq = Some(state);
                verdict
            }
            Some(state) => state.update(seq.0),
        };
        if verdict == SeqVerdict::Accepted {
            self.update_jitter(now, ts);
        }
        verdict
    }

    /// Appendix A.8, computed from consecutive differences so that neither the
    /// RTP timestamp wrap nor an arbitrary arrival epoch matters.
    fn update_jitter(&mut self, now: Instant, ts: RtpTimestamp) {
        if let Some((prev_at, prev_ts)) = self.previous {
            let elapsed_nanos = now.saturating_duration_since(prev_at).as_nanos() as f64;
            // Multiplying before dividing keeps whole-tick intervals exact.
            let arrival_ticks = elapsed_nanos * f64::from(self.clock_rate) / 1e9;
            let d = arrival_ticks - f64::from(ts.delta_from(prev_ts));
            self.jitter += (d.abs() - self.jitter) / 16.0;
        }
        self.previous = Some((now, ts));
    }

    /// Whether the source has passed probation.
    pub fn validated(&self) -> bool {
        self.seq.is_some_and(|s| s.validated())
    }

    /// Extended highest sequence number received (wrap count × 2^16 + highest seq);
    /// 0 while on probation.
    pub fn extended_highest_seq(&self) -> u32 {
        self.validated_seq().map_or(0, |s| s.extended_max())
    }

    /// Number of times the sequence number wrapped past 65535.
    pub fn cycles(&self) -> u32 {
        self.validated_seq().map_or(0, |s| s.cycles >> 16)
    }

    /// Packets expected from the base sequence number to the extended highest.
    pub fn expected(&self) -> u32 {
        self.validated_seq().map_or(0, |s| s.expected())
    }

    /// Packets counted since the base sequence number, duplicates included.
    pub fn received(&self) -> u32 {
        self.validated_seq().map_or(0, |s| s.received)
    }

    /// Expected minus received, clamped to the 24-bit signed range of a report
    /// block; negative when duplicates outnumber losses.
    pub fn cumulative_lost(&self) -> i32 {
        let lost = i64::from(self.expected()) - i64::from(self.received());
        lost.clamp(-0x80_0000, 0x7f_ffff) as i32
    }

    /// Fraction lost (in 1/256) since the previous call, and starts a new interval.
    ///
    /// Zero when nothing was expected or duplicates made up for the losses.
    pub fn take_fraction_lost(&mut self) -> u8 {
        let Some(s) = self.seq.as_mut().filter(|s| s.validated()) else {
            return 0;
        };
        let expected = s.expected();
        let expected_interval = expected.wrapping_sub(s.expected_prior);
        s.expected_prior = expected;
        let received_interval = s.received.wrapping_sub(s.received_prior);
        s.received_prior = s.received;
        let lost_interval = i64::from(expected_interval) - i64::from(received_interval);
        if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / i64::from(expected_interval)) as u8
        }
    }

    /// Interarrival jitter in timestamp units, as carried in a report block.
    pub fn jitter(&self) -> u32 {
        self.jitter as u32
    }

    /// Interarrival jitter in microseconds.
    pub fn jitter_micros(&self) -> f64 {
        self.jitter * 1e6 / f64::from(self.clock_rate)
    }

    /// Every packet handed in, including probation and discarded ones.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Bytes of every packet handed in.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Arrival of the latest packet.
    pub fn last_packet_at(&self) -> Option<Instant> {
        self.last_packet_at
    }

    /// A report block on `ssrc`, closing the fraction-lost interval.
    ///
    /// `lsr` and `dlsr` come from the session's SR bookkeeping (0 when no SR was received).
    pub fn report_block(&mut self, ssrc: Ssrc, lsr: u32, dlsr: u32) -> ReportBlock {
        ReportBlock {
            ssrc,
            fraction_lost: self.take_fraction_lost(),
            cumulative_lost: self.cumulative_lost(),
            highest_seq: self.extended_highest_seq(),
            jitter: self.jitter(),
            lsr,
            dlsr,
        }
    }

    fn validated_seq(&self) -> Option<&SeqState> {
        self.seq.as_ref().filter(|s| s.validated())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Feeds `seqs` paced 20 ms apart with timestamps 160 apart (from the seq).
    fn feed(stats: &mut ReceiverStats, start: Instant, seqs: &[u16]) -> Vec<SeqVerdict> {
        seqs.iter()
            .enumerate()
            .map(|(i, &seq)| {
                let at = start + Duration::from_millis(20 * i as u64);
                stats.handle_packet(at, SeqNum(seq), RtpTimestamp(u32::from(seq) * 160), 172)
            })
            .collect()
    }

    #[test]
    fn in_order_stream_after_probation() {
        let mut s = ReceiverStats::new(8000);
        let start = Instant::now();
        let seqs: Vec<u16> = (100..110).collect();
        let verdicts = feed(&mut s, start, &seqs);
        assert_eq!(verdicts[0], SeqVerdict::Probation);
        assert!(verdicts[1..].iter().all(|v| *v == SeqVerdict::Accepted));
        assert!(s.validated());
        // 101 ended probation and is the base: 101..=109.
        assert_eq!(s.extended_highest_seq(), 109);
        assert_eq!(s.expected(), 9);
        assert_eq!(s.received(), 9);
        assert_eq!(s.cumulative_lost(), 0);
        assert_eq!(s.take_fraction_lost(), 0);
        assert_eq!(s.packets(), 10);
        assert_eq!(s.bytes(), 1720);
        assert_eq!(s.last_packet_at(), Some(start + Duration::from_millis(180)));
        assert_eq!(s.jitter(), 0);
        assert_eq!(s.jitter_micros(), 0.0);
    }

    #[test]
    fn probation_restarts_on_a_gap() {
        let mut s = ReceiverStats::new(8000);
        let verdicts = feed(&mut s, Instant::now(), &[10, 12, 13, 14]);
        assert_eq!(
            verdicts,
            [
                SeqVerdict::Probation,
                SeqVerdict::Probation,
                SeqVerdict::Accepted,
                SeqVerdict::Accepted
            ]
        );
        assert_eq!((s.expected(), s.received()), (2, 2));
    }

    #[test]
    fn losses_are_counted_and_fraction_is_per_interval() {
        let mut s = ReceiverStats::new(8000);
        let seqs: Vec<u16> = (100..=120)
            .filter(|q| ![105, 110, 111].contains(q))
            .collect();
        feed(&mut s, Instant::now(), &seqs);
        assert_eq!(s.extended_highest_seq(), 120);
        assert_eq!(s.expected(), 20);
        assert_eq!(s.received(), 17);
        assert_eq!(s.cumulative_lost(), 3);
        // 3 of 20 lost: 3 * 256 / 20 = 38.4, truncated.
        assert_eq!(s.take_fraction_lost(), 38);
        assert_eq!(s.take_fraction_lost(), 0, "empty interval");
        let later = Instant::now() + Duration::from_secs(1);
        // Next interval: 121 received, 122 lost, 123 received ⇒ 1 of 3.
        s.handle_packet(later, SeqNum(121), RtpTimestamp(121 * 160), 172);
        s.handle_packet(later, SeqNum(123), RtpTimestamp(123 * 160), 172);
        let block = s.report_block(Ssrc(9), 0x1234_5678, 0x10);
        assert_eq!(
            block,
            ReportBlock {
                ssrc: Ssrc(9),
                fraction_lost: 85,
                cumulative_lost: 4,
                highest_seq: 123,
                jitter: s.jitter(),
                lsr: 0x1234_5678,
                dlsr: 0x10,
            }
        );
    }

    #[test]
    fn reordering_is_not_loss() {
        let mut s = ReceiverStats::new(8000);
        let verdicts = feed(&mut s, Instant::now(), &[100, 101, 102, 104, 103, 105]);
        assert_eq!(verdicts[4], SeqVerdict::Accepted, "reordered 103");
        assert_eq!(s.extended_highest_seq(), 105);
        assert_eq!((s.expected(), s.received()), (5, 5));
        assert_eq!(s.cumulative_lost(), 0);
    }

    #[test]
    fn duplicates_make_loss_negative() {
        let mut s = ReceiverStats::new(8000);
        feed(&mut s, Instant::now(), &[100, 101, 102, 102, 103, 103]);
        assert_eq!((s.expected(), s.received()), (3, 5));
        assert_eq!(s.cumulative_lost(), -2);
        assert_eq!(s.take_fraction_lost(), 0);
    }

    #[test]
    fn sequence_wraps_at_65535() {
        let mut s = ReceiverStats::new(8000);
        feed(&mut s, Instant::now(), &[65533, 65534, 65535, 0, 1, 2]);
        assert_eq!(s.cycles(), 1);
        assert_eq!(s.extended_highest_seq(), 65536 + 2);
        assert_eq!((s.expected(), s.received()), (5, 5));
        assert_eq!(s.cumulative_lost(), 0);
    }

    #[test]
    fn a_confirmed_large_jump_restarts_the_source() {
        let mut s = ReceiverStats::new(8000);
        let verdicts = feed(
            &mut s,
            Instant::now(),
            &[100, 101, 102, 20000, 20001, 20002],
        );
        assert_eq!(
            verdicts[3..],
            [
                SeqVerdict::Discarded,
                SeqVerdict::Accepted,
                SeqVerdict::Accepted
            ]
        );
        assert_eq!(s.extended_highest_seq(), 20002);
        assert_eq!((s.expected(), s.received()), (2, 2));
        let verdicts = feed(&mut s, Instant::now(), &[30000, 20003]);
        assert_eq!(verdicts, [SeqVerdict::Discarded, SeqVerdict::Accepted]);
        assert_eq!(s.extended_highest_seq(), 20003);
    }

    #[test]
    fn jitter_matches_hand_computed_values() {
        let mut s = ReceiverStats::new(8000);
        let start = Instant::now();
        // Packets 20 ms apart in media time; the third arrives 5 ms late.
        let arrivals_ms = [0u64, 20, 45, 60, 80];
        for (i, ms) in arrivals_ms.iter().enumerate() {
            s.handle_packet(
                start + Duration::from_millis(*ms),
                SeqNum(i as u16),
                RtpTimestamp(1000 + 160 * i as u32),
                172,
            );
        }
        // Counted packets start at seq 1 (probation). D: 40, -40, 0 ticks.
        // J = 40/16 = 2.5; 2.5 + (40 - 2.5)/16 = 4.84375; 4.84375 * 15/16 = 4.541015625.
        assert_eq!(s.jitter(), 4);
        assert_eq!(s.jitter_micros(), 567.626953125);
    }

    #[test]
    fn jitter_survives_timestamp_wrap() {
        let mut s = ReceiverStats::new(8000);
        let start = Instant::now();
        for i in 0..5u32 {
            s.handle_packet(
                start + Duration::from_millis(20 * u64::from(i)),
                SeqNum(i as u16),
                RtpTimestamp(u32::MAX - 300).wrapping_add(160 * i),
                172,
            );
        }
        assert_eq!(s.jitter_micros(), 0.0);
    }
}
