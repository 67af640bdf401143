//! RFC 4733 telephone events: the DTMF payload, a receiver-side detector and a
//! sender-side packet generator.
//!
//! API:
//! - [`Digit`] (event codes 0–15: `0`–`9`, `*`, `#`, `A`–`D`) and the 4-byte
//!   [`TelephoneEvent`] payload ([`TelephoneEvent::encode`], [`TelephoneEvent::decode`]);
//! - [`DtmfDetector`], sans-IO: feed every telephone-event packet with
//!   [`DtmfDetector::handle_packet`]`(now, timestamp, marker, payload)`, call
//!   [`DtmfDetector::handle_timeout`] at [`DtmfDetector::poll_timeout`], and drain
//!   finished digits with [`DtmfDetector::poll_event`];
//! - [`DtmfGenerator`], an iterator of [`DtmfPacket`]s, each with the instant it
//!   is due, built from [`DtmfSendParams`].
//!
//! An event is identified by its RTP timestamp (RFC 4733 §2.5.1.1): all its
//! packets share it and only the duration grows. The detector therefore
//! reports a digit once, on the first end packet, ignores the retransmitted end
//! packets and anything older, ends a digit whose end packets were all lost when
//! the next event starts or when no packet arrived for the end timeout, and
//! starts a digit whose first packets (and marker) were lost on whatever packet
//! comes first. A long event split into segments (§2.5.1.3) is joined back when
//! the next segment follows on without a marker.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::rtp::{RtpTimestamp, SeqNum};

/// Events 0–15 are the DTMF digits (RFC 4733 §3.2).
const DIGITS: &[u8; 16] = b"0123456789*#ABCD";

/// A DTMF digit, stored as its RFC 4733 event code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Digit(u8);

impl Digit {
    /// The digit for `0`–`9`, `*`, `#`, `A`–`D` (letters in either case).
    pub fn from_char(c: char) -> Option<Digit> {
        let upper = c.to_ascii_uppercase();
        DIGITS
            .iter()
            .position(|d| char::from(*d) == upper)
            .map(|i| Digit(i as u8))
    }

    /// The digit of an event code, if it is one of 0–15.
    pub fn from_event(code: u8) -> Option<Digit> {
        (code < 16).then_some(Digit(code))
    }

    /// The RFC 4733 event code.
    pub fn event(self) -> u8 {
        self.0
    }

    /// The digit as a character (`A`–`D` upper case).
    pub fn as_char(self) -> char {
        char::from(DIGITS[usize::from(self.0)])
    }
}

/// Errors of telephone-event decoding and generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DtmfError {
    /// The payload is shorter than one 4-byte event.
    #[error("telephone-event payload of {0} bytes, at least 4 needed")]
    PayloadTooShort(usize),
    /// The event is not a DTMF digit (e.g. 16, flash).
    #[error("telephone event {0} is not a DTMF digit")]
    NotADigit(u8),
    /// A volume outside 0–63 (-dBm0) was requested.
    #[error("volume {0} out of range 0-63 (-dBm0)")]
    InvalidVolume(u8),
    /// The requested digit duration is zero or beyond one event's 16-bit duration.
    #[error("digit duration {0:?} must be above zero and fit in 65535 clock ticks")]
    InvalidDuration(Duration),
    /// The packet interval or clock rate is zero.
    #[error("packet interval {ptime:?} and clock rate {clock_rate} must be above zero")]
    InvalidPacing {
        /// The requested packet interval.
        ptime: Duration,
        /// The requested clock rate.
        clock_rate: u32,
    },
}

/// One RFC 4733 §2.3 event block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// Event code (0–15 for DTMF).
    pub event: u8,
    /// E bit: the event has ended.
    pub end: bool,
    /// Power level in -dBm0, 0–63.
    pub volume: u8,
    /// Duration so far, in clock ticks from the event's timestamp.
    pub duration: u16,
}

impl TelephoneEvent {
    /// Length of an event block.
    pub const LEN: usize = 4;

    /// The event block as sent (R bit zero, volume masked to 6 bits).
    pub fn encode(&self) -> [u8; 4] {
        let [hi, lo] = self.duration.to_be_bytes();
        let end = if self.end { 0x80 } else { 0 };
        [self.event, end | (self.volume & 0x3f), hi, lo]
    }

    /// Reads the first event block of `payload`; the reserved bit is ignored.
    pub fn decode(payload: &[u8]) -> Result<TelephoneEvent, DtmfError> {
        let [event, flags, hi, lo, ..] = *payload else {
            return Err(DtmfError::PayloadTooShort(payload.len()));
        };
        Ok(TelephoneEvent {
            event,
            end: flags & 0x80 != 0,
            volume: flags & 0x3f,
            duration: u16::from_be_bytes([hi, lo]),
        })
    }
}

/// How the detector decided a digit was over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// A packet with the E bit arrived.
    EndPacket,
    /// A newer event started before any end packet arrived.
    NextEvent,
    /// No packet arrived for the end timeout.
    Timeout,
}

/// A digit received in full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DigitEvent {
    /// The digit.
    pub digit: Digit,
    /// RTP timestamp of the event (of its first segment).
    pub timestamp: RtpTimestamp,
    /// Longest duration reported, in clock ticks, summed over segments.
    pub duration: u32,
    /// Volume of the last packet, -dBm0.
    pub volume: u8,
    /// How the end was recognised.
    pub reason: EndReason,
}

impl DigitEvent {
    /// The duration as time, for a clock of `clock_rate` Hz.
    pub fn duration_at(&self, clock_rate: u32) -> Duration {
        Duration::from_micros(u64::from(self.duration) * 1_000_000 / u64::from(clock_rate.max(1)))
    }
}

/// The event in progress.
#[derive(Clone, Copy, Debug)]
struct Active {
    digit: Digit,
    timestamp: RtpTimestamp,
    segment_start: RtpTimestamp,
    segment_duration: u16,
    earlier_segments: u32,
    volume: u8,
    last_packet_at: Instant,
}

/// Receiver-side RFC 4733 digit detector; see the module documentation.
#[derive(Debug)]
pub struct DtmfDetector {
    end_timeout: Duration,
    current: Option<Active>,
    /// Segment timestamp of the last finished event; packets at or before it are stale.
    last_ended: Option<RtpTimestamp>,
    events: VecDeque<DigitEvent>,
}

impl DtmfDetector {
    /// A detector that ends a digit after `end_timeout` without packets.
    pub fn new(end_timeout: Duration) -> DtmfDetector {
        DtmfDetector {
            end_timeout,
            current: None,
            last_ended: None,
            events: VecDeque::new(),
        }
    }

    /// Feeds a telephone-event packet that arrived at `now`.
    pub fn handle_packet(
        &mut self,
        now: Instant,
        timestamp: RtpTimestamp,
        marker: bool,
        payload: &[u8],
    ) -> Result<(), DtmfError> {
        let ev = TelephoneEvent::decode(payload)?;
        let digit = Digit::from_event(ev.event).ok_or(DtmfError::NotADigit(ev.event))?;
        if self
            .last_ended
            .is_some_and(|last| timestamp.delta_from(last) <= 0)
        {
            // A retransmitted end packet, or a late packet of a finished event.
            return Ok(());
        }
        if let Some(mut active) = self.current {
            let delta = timestamp.delta_from(active.segment_start);
            if delta < 0 || (delta == 0 && digit != active.digit) {
                // Older than the event in progress, or contradicting it.
                return Ok(());
            }
            let same_segment = delta == 0 && digit == active.digit;
            let next_segment = !marker
                && digit == active.digit
                && delta > 0
                && delta == i32::from(active.segment_duration);
            if same_segment || next_segment {
                if next_segment {
                    active.earlier_segments += u32::from(active.segment_duration);
                    active.segment_start = timestamp;
                    active.segment_duration = 0;
                }
                active.segment_duration = active.segment_duration.max(ev.duration);
                active.volume = ev.volume;
                active.last_packet_at = now;
                self.current = Some(active);
                if ev.end {
                    self.finish(EndReason::EndPacket);
                }
                return Ok(());
            }
            self.finish(EndReason::NextEvent);
        }
        self.current = Some(Active {
            digit,
            timestamp,
            segment_start: timestamp,
            segment_duration: ev.duration,
            earlier_segments: 0,
            volume: ev.volume,
            last_packet_at: now,
        });
        if ev.end {
            self.finish(EndReason::EndPacket);
        }
        Ok(())
    }

    /// Ends the digit in progress if its end timeout has passed at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_some_and(|at| now >= at) {
            self.finish(EndReason::Timeout);
        }
    }

    /// When [`DtmfDetector::handle_timeout`] next needs to run, if a digit is in progress.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.current.map(|a| a.last_packet_at + self.end_timeout)
    }

    /// The next finished digit, oldest first.
    pub fn poll_event(&mut self) -> Option<DigitEvent> {
        self.events.pop_front()
    }

    fn finish(&mut self, reason: EndReason) {
        if let Some(a) = self.current.take() {
            self.last_ended = Some(a.segment_start);
            self.events.push_back(DigitEvent {
                digit: a.digit,
                timestamp: a.timestamp,
                duration: a.earlier_segments + u32::from(a.segment_duration),
                volume: a.volume,
                reason,
            });
        }
    }
}

/// What to send and how to pace it.
#[derive(Clone, Debug)]
pub struct DtmfSendParams {
    /// Digits, sent one after the other.
    pub digits: Vec<Digit>,
    /// Tone duration of each digit.
    pub duration: Duration,
    /// Silence between the last end packet of a digit and the next digit, rounded up to `ptime`.
    pub pause: Duration,
    /// Volume in -dBm0, 0–63.
    pub volume: u8,
    /// Packet interval (20 ms for G.711 streams).
    pub ptime: Duration,
    /// RTP clock rate of the telephone-event payload type (8000).
    pub clock_rate: u32,
    /// RTP timestamp of the first digit; later digits continue the media clock from it.
    pub start_timestamp: RtpTimestamp,
    /// Sequence number of the first packet.
    pub start_seq: SeqNum,
    /// When the first packet is due.
    pub start_at: Instant,
}

/// One telephone-event packet to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DtmfPacket {
    /// When the packet is due.
    pub send_at: Instant,
    /// Marker bit: set on the first packet of each digit.
    pub marker: bool,
    /// RTP sequence number.
    pub sequence: SeqNum,
    /// RTP timestamp: the digit's start, the same for all its packets.
    pub timestamp: RtpTimestamp,
    /// The event block to carry as payload.
    pub event: TelephoneEvent,
}

/// Number of packets carrying the E bit (RFC 4733 §2.5.1.4 sends the end three times).
const END_PACKETS: u32 = 3;

/// Sender-side RFC 4733 §2.5 packet sequence.
///
/// For each digit of `n = ceil(duration / ptime)` intervals it yields `n + 2`
/// packets one `ptime` apart, all with the digit's timestamp: packet `k` reports
/// duration `(k + 1) × ptime` in clock ticks (capped at the digit's duration) and
/// the first has the marker; packet `n - 1` and the two after it carry the E bit
/// and the full duration. Sequence numbers increase by one per packet, end
/// retransmissions included. The next digit starts one `ptime` after the last
/// end packet plus `pause`, its timestamp advanced by the elapsed media time.
#[derive(Clone, Debug)]
pub struct DtmfGenerator {
    params: DtmfSendParams,
    ticks_per_packet: u32,
    duration_ticks: u32,
    packets_per_tone: u32,
    pause_slots: u32,
    digit_index: usize,
    packet_in_digit: u32,
    /// Packet slots (of `ptime`) from the start to the current digit's first packet.
    digit_slot: u32,
    next_seq: SeqNum,
}

impl DtmfGenerator {
    /// Validates `params` and prepares the sequence.
    pub fn new(params: DtmfSendParams) -> Result<DtmfGenerator, DtmfError> {
        if params.volume > 63 {
            return Err(DtmfError::InvalidVolume(params.volume));
        }
        if params.ptime.is_zero() || params.clock_rate == 0 {
            return Err(DtmfError::InvalidPacing {
                ptime: params.ptime,
                clock_rate: params.clock_rate,
            });
        }
        let ticks = |d: Duration| d.as_micros() * u128::from(params.clock_rate) / 1_000_000;
        let duration_ticks = ticks(params.duration);
        if duration_ticks == 0 || duration_ticks > u128::from(u16::MAX) {
            return Err(DtmfError::InvalidDuration(params.duration));
        }
        let ticks_per_packet = ticks(params.ptime);
        if ticks_per_packet == 0 || ticks_per_packet > u128::from(u16::MAX) {
            return Err(DtmfError::InvalidPacing {
                ptime: params.ptime,
                clock_rate: params.clock_rate,
            });
        }
        let slots = |d: Duration| d.as_nanos().div_ceil(params.ptime.as_nanos()) as u32;
        Ok(DtmfGenerator {
            ticks_per_packet: ticks_per_packet as u32,
            duration_ticks: duration_ticks as u32,
            packets_per_tone: slots(params.duration).max(1),
            pause_slots: slots(params.pause),
            digit_index: 0,
            packet_in_digit: 0,
            digit_slot: 0,
            next_seq: params.start_seq,
            params,
        })
    }

    /// Sequence number the stream continues with after the packets yielded so far.
    pub fn next_sequence(&self) -> SeqNum {
        self.next_seq
    }
}

impl Iterator for DtmfGenerator {
    type Item = DtmfPacket;

    fn next(&mut self) -> Option<DtmfPacket> {
        let digit = *self.params.digits.get(self.digit_index)?;
        let k = self.packet_in_digit;
        let end = k + 1 >= self.packets_per_tone;
        let duration = ((k + 1) * self.ticks_per_packet).min(self.duration_ticks);
        let slot = self.digit_slot + k;
        let packet = DtmfPacket {
            send_at: self.params.start_at + self.params.ptime * slot,
            marker: k == 0,
            sequence: self.next_seq,
            timestamp: self
                .params
                .start_timestamp
                .wrapping_add(self.digit_slot.wrapping_mul(self.ticks_per_packet)),
            event: TelephoneEvent {
                event: digit.event(),
                end,
                volume: self.params.volume,
                duration: if end { self.duration_ticks } else { duration } as u16,
            },
        };
        self.next_seq = self.next_seq.wrapping_add(1);
        self.packet_in_digit += 1;
        let packets_per_digit = self.packets_per_tone + END_PACKETS - 1;
        if self.packet_in_digit == packets_per_digit {
            self.digit_index += 1;
            self.packet_in_digit = 0;
            self.digit_slot += packets_per_digit + self.pause_slots;
        }
        Some(packet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits(s: &str) -> Vec<Digit> {
        s.chars()
            .map(|c| Digit::from_char(c).expect("DTMF character"))
            .collect()
    }

    fn payload(event: u8, end: bool, duration: u16) -> [u8; 4] {
        TelephoneEvent {
            event,
            end,
            volume: 10,
            duration,
        }
        .encode()
    }

    #[test]
    fn digits_map_to_event_codes() {
        let all = digits("0123456789*#ABCd");
        let codes: Vec<u8> = all.iter().map(|d| d.event()).collect();
        assert_eq!(codes, (0..16).collect::<Vec<u8>>());
        let text: String = all.iter().map(|d| d.as_char()).collect();
        assert_eq!(text, "0123456789*#ABCD");
        assert_eq!(Digit::from_char('E'), None);
        assert_eq!(Digit::from_event(16), None);
    }

    #[test]
    fn event_block_encodes_and_decodes() {
        let ev = TelephoneEvent {
            event: 11,
            end: true,
            volume: 10,
            duration: 800,
        };
        assert_eq!(ev.encode(), [11, 0x8a, 0x03, 0x20]);
        assert_eq!(
            TelephoneEvent::decode(&[11, 0xca, 0x03, 0x20, 0xff]),
            Ok(ev),
            "R bit ignored"
        );
        assert_eq!(
            TelephoneEvent::decode(&[1, 2, 3]),
            Err(DtmfError::PayloadTooShort(3))
        );
    }

    #[test]
    fn detector_reports_once_and_ignores_end_retransmissions() {
        let t0 = Instant::now();
        let mut d = DtmfDetector::new(Duration::from_millis(200));
        let ts = RtpTimestamp(4000);
        let ms = |n: u64| t0 + Duration::from_millis(n);
        for (i, dur) in [160u16, 320, 480, 640].iter().enumerate() {
            d.handle_packet(ms(20 * i as u64), ts, i == 0, &payload(5, false, *dur))
                .expect("digit 5");
            assert_eq!(d.poll_event(), None);
        }
        assert_eq!(d.poll_timeout(), Some(ms(60 + 200)));
        for i in 4..7 {
            d.handle_packet(ms(20 * i), ts, false, &payload(5, true, 800))
                .expect("digit 5");
        }
        assert_eq!(
            d.poll_event(),
            Some(DigitEvent {
                digit: Digit(5),
                timestamp: ts,
                duration: 800,
                volume: 10,
                reason: EndReason::EndPacket,
            })
        );
        assert_eq!(d.poll_event(), None, "end retransmissions de-duplicated");
        assert_eq!(d.poll_timeout(), None);
        assert_eq!(
            d.handle_packet(ms(200), RtpTimestamp(9000), true, &payload(16, false, 160)),
            Err(DtmfError::NotADigit(16))
        );
    }

    #[test]
    fn detector_handles_lost_start_and_lost_end() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut d = DtmfDetector::new(Duration::from_millis(200));
        // Digit 1: first packets lost (no marker seen), end lost, then digit 2 starts.
        d.handle_packet(ms(0), RtpTimestamp(1000), false, &payload(1, false, 480))
            .expect("digit 1");
        d.handle_packet(ms(20), RtpTimestamp(1000), false, &payload(1, false, 640))
            .expect("digit 1");
        d.handle_packet(ms(100), RtpTimestamp(2600), true, &payload(2, false, 160))
            .expect("digit 2");
        let first = d.poll_event().expect("digit 1 ended by digit 2");
        assert_eq!(
            (first.digit.as_char(), first.duration, first.reason),
            ('1', 640, EndReason::NextEvent)
        );
        // Digit 2's end is lost: the timeout ends it, not earlier.
        d.handle_timeout(ms(299));
        assert_eq!(d.poll_event(), None);
        assert_eq!(d.poll_timeout(), Some(ms(300)));
        d.handle_timeout(ms(300));
        let second = d.poll_event().expect("digit 2 ended by timeout");
        assert_eq!(
            (
                second.digit.as_char(),
                second.timestamp,
                second.duration,
                second.reason
            ),
            ('2', RtpTimestamp(2600), 160, EndReason::Timeout)
        );
        assert_eq!(second.duration_at(8000), Duration::from_millis(20));
        // A late end packet of digit 2 after the timeout is not a new digit.
        d.handle_packet(ms(320), RtpTimestamp(2600), false, &payload(2, true, 800))
            .expect("digit 2");
        assert_eq!(d.poll_event(), None);
        // Only the end packets of digit 3 arrive: reported at once.
        d.handle_packet(ms(400), RtpTimestamp(4000), false, &payload(3, true, 800))
            .expect("digit 3");
        let third = d.poll_event().expect("digit 3 from its end packet");
        assert_eq!((third.digit.as_char(), third.duration), ('3', 800));
    }

    #[test]
    fn detector_joins_long_event_segments() {
        let t0 = Instant::now();
        let mut d = DtmfDetector::new(Duration::from_millis(200));
        let start = RtpTimestamp(u32::MAX - 100);
        d.handle_packet(t0, start, true, &payload(0, false, 0xffff))
            .expect("segment 1");
        d.handle_packet(
            t0,
            start.wrapping_add(0xffff),
            false,
            &payload(0, true, 1600),
        )
        .expect("segment 2");
        let ev = d.poll_event().expect("joined event");
        assert_eq!(
            (ev.timestamp, ev.duration, ev.reason),
            (start, 0xffff + 1600, EndReason::EndPacket)
        );
        assert_eq!(d.poll_event(), None);
    }

    fn params(digit_str: &str, duration_ms: u64, pause_ms: u64, t0: Instant) -> DtmfSendParams {
        DtmfSendParams {
            digits: digits(digit_str),
            duration: Duration::from_millis(duration_ms),
            pause: Duration::from_millis(pause_ms),
            volume: 10,
            ptime: Duration::from_millis(20),
            clock_rate: 8000,
            start_timestamp: RtpTimestamp(1_000),
            start_seq: SeqNum(65534),
            start_at: t0,
        }
    }

    #[test]
    fn generator_follows_rfc4733_packet_sequence() {
        let t0 = Instant::now();
        let mut g = DtmfGenerator::new(params("1#", 100, 60, t0)).expect("valid params");
        let packets: Vec<DtmfPacket> = g.by_ref().collect();
        let summary: Vec<(u64, bool, u16, u32, u8, bool, u16)> = packets
            .iter()
            .map(|p| {
                (
                    (p.send_at - t0).as_millis() as u64,
                    p.marker,
                    p.sequence.0,
                    p.timestamp.0,
                    p.event.event,
                    p.event.end,
                    p.event.duration,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (0, true, 65534, 1000, 1, false, 160),
                (20, false, 65535, 1000, 1, false, 320),
                (40, false, 0, 1000, 1, false, 480),
                (60, false, 1, 1000, 1, false, 640),
                (80, false, 2, 1000, 1, true, 800),
                (100, false, 3, 1000, 1, true, 800),
                (120, false, 4, 1000, 1, true, 800),
                // Next digit: one ptime after the last end packet plus 60 ms.
                (200, true, 5, 2600, 11, false, 160),
                (220, false, 6, 2600, 11, false, 320),
                (240, false, 7, 2600, 11, false, 480),
                (260, false, 8, 2600, 11, false, 640),
                (280, false, 9, 2600, 11, true, 800),
                (300, false, 10, 2600, 11, true, 800),
                (320, false, 11, 2600, 11, true, 800),
            ]
        );
        assert!(packets.iter().all(|p| p.event.volume == 10));
        assert_eq!(g.next_sequence(), SeqNum(12));
    }

    #[test]
    fn generator_caps_a_partial_last_interval() {
        let t0 = Instant::now();
        let packets: Vec<DtmfPacket> = DtmfGenerator::new(params("9", 50, 0, t0))
            .expect("valid params")
            .collect();
        let durations: Vec<(u16, bool)> = packets
            .iter()
            .map(|p| (p.event.duration, p.event.end))
            .collect();
        assert_eq!(
            durations,
            [
                (160, false),
                (320, false),
                (400, true),
                (400, true),
                (400, true)
            ]
        );
    }

    #[test]
    fn generator_output_is_detected_back() {
        let t0 = Instant::now();
        let mut d = DtmfDetector::new(Duration::from_millis(200));
        for p in DtmfGenerator::new(params("*7", 120, 40, t0)).expect("valid params") {
            d.handle_packet(p.send_at, p.timestamp, p.marker, &p.event.encode())
                .expect("generated digit");
        }
        let got: Vec<(char, u32, EndReason)> = std::iter::from_fn(|| d.poll_event())
            .map(|e| (e.digit.as_char(), e.duration, e.reason))
            .collect();
        assert_eq!(
            got,
            [
                ('*', 960, EndReason::EndPacket),
                ('7', 960, EndReason::EndPacket)
            ]
        );
    }

    #[test]
    fn generator_rejects_bad_params() {
        let t0 = Instant::now();
        let mut p = params("1", 100, 0, t0);
        p.volume = 64;
        assert_eq!(
            DtmfGenerator::new(p).expect_err("volume").to_string(),
            "volume 64 out of range 0-63 (-dBm0)"
        );
        let p = params("1", 0, 0, t0);
        assert_eq!(
            DtmfGenerator::new(p).expect_err("zero duration"),
            DtmfError::InvalidDuration(Duration::ZERO)
        );
        let p = params("1", 9000, 0, t0);
        assert_eq!(
            DtmfGenerator::new(p).expect_err("too long"),
            DtmfError::InvalidDuration(Duration::from_secs(9))
        );
        let mut p = params("1", 100, 0, t0);
        p.ptime = Duration::ZERO;
        assert!(matches!(
            DtmfGenerator::new(p),
            Err(DtmfError::InvalidPacing {
                clock_rate: 8000,
                ..
            })
        ));
    }
}
