//! Sending RFC 4733 DTMF into a leg: a digit string becomes a plan of
//! [`DtmfGenerator`] runs (sans-IO), and a driver sends their packets at the
//! generator's instants through an [`Injector`].
//!
//! Digits follow each other `gap` apart (end of one digit's last end packet
//! to the next digit, rounded up to the packet interval); each `,` adds one
//! more `gap`. No audio goes to the peer while the digits are sent: the
//! bridged leg's media into this leg is paused, as during a playback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::media::dtmf::{Digit, DtmfError, DtmfGenerator, DtmfPacket, DtmfSendParams};
use crate::media::rtp::{PayloadType, RtpTimestamp, SeqNum};
use crate::relay::LegShared;

use super::inject::{Injector, Packet};
use super::registry::{Injections, StopReason, Ticket};
use super::LegControl;

/// Why a SendDtmf request cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DtmfPlanError {
    /// No digit in the string.
    #[error("digits is empty")]
    Empty,
    /// A character that is neither a digit nor a pause.
    #[error("'{0}' is not a DTMF digit (0-9 * # A-D) or a pause (,)")]
    NotADigit(char),
    /// Duration, volume or pacing out of range.
    #[error(transparent)]
    Generator(#[from] DtmfError),
}

/// Digits sent together by one generator, after an extra pause.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Run {
    extra_pause: Duration,
    digits: Vec<Digit>,
}

/// A validated SendDtmf request.
#[derive(Clone, Debug)]
pub struct DtmfPlan {
    runs: Vec<Run>,
    duration: Duration,
    gap: Duration,
    volume: u8,
    payload_type: PayloadType,
    clock_rate: u32,
    ptime: Duration,
}

/// Rounds `d` up to whole packet intervals.
fn whole_slots(d: Duration, ptime: Duration) -> Duration {
    let slots = d.as_nanos().div_ceil(ptime.as_nanos().max(1));
    ptime * u32::try_from(slots).unwrap_or(u32::MAX)
}

impl DtmfPlan {
    /// Validates a request: `digits` among 0-9 * # A-D and `,`; the generator's
    /// limits on duration (up to 65535 clock ticks) and volume (0-63).
    pub fn new(
        digits: &str,
        duration: Duration,
        gap: Duration,
        volume: u8,
        payload_type: PayloadType,
        clock_rate: u32,
        ptime: Duration,
    ) -> Result<DtmfPlan, DtmfPlanError> {
        let mut runs = Vec::new();
        let mut current = Run {
            extra_pause: Duration::ZERO,
            digits: Vec::new(),
        };
        for c in digits.chars() {
            if c == ',' {
                if !current.digits.is_empty() {
                    runs.push(std::mem::replace(
                        &mut current,
                        Run {
                            extra_pause: Duration::ZERO,
                            digits: Vec::new(),
                        },
                    ));
                }
                current.extra_pause += gap;
            } else {
                current
                    .digits
                    .push(Digit::from_char(c).ok_or(DtmfPlanError::NotADigit(c))?);
            }
        }
        if !current.digits.is_empty() {
            runs.push(current);
        }
        if runs.is_empty() {
            return Err(DtmfPlanError::Empty);
        }
        let plan = DtmfPlan {
            runs,
            duration,
            gap,
            volume,
            payload_type,
            clock_rate,
            ptime,
        };
        // The generator checks duration, volume and pacing.
        plan.generator(0, Instant::now(), RtpTimestamp(0), SeqNum(0))?;
        Ok(plan)
    }

    fn generator(
        &self,
        run: usize,
        start_at: Instant,
        start_timestamp: RtpTimestamp,
        start_seq: SeqNum,
    ) -> Result<DtmfGenerator, DtmfError> {
        DtmfGenerator::new(DtmfSendParams {
            digits: self.runs[run].digits.clone(),
            duration: self.duration,
            pause: self.gap,
            volume: self.volume,
            ptime: self.ptime,
            clock_rate: self.clock_rate,
            start_timestamp,
            start_seq,
            start_at,
        })
    }

    /// Every packet of the plan, for a stream continuing at `start` at
    /// instant `start_at`: runs follow each other like digits within a run,
    /// plus their extra pauses, on one media clock.
    pub fn packets(
        &self,
        start_at: Instant,
        start_timestamp: RtpTimestamp,
        start_seq: SeqNum,
    ) -> Result<Vec<DtmfPacket>, DtmfError> {
        let mut packets = Vec::new();
        let mut at = start_at;
        let mut seq = start_seq;
        for (i, run) in self.runs.iter().enumerate() {
            at += whole_slots(run.extra_pause, self.ptime);
            let ts = start_timestamp.wrapping_add(self.ticks(at - start_at));
            let mut generator = self.generator(i, at, ts, seq)?;
            let mut last = at;
            for packet in generator.by_ref() {
                last = packet.send_at;
                packets.push(packet);
            }
            seq = generator.next_sequence();
            at = last + self.ptime + whole_slots(self.gap, self.ptime);
        }
        Ok(packets)
    }

    /// Media clock ticks in `d`.
    fn ticks(&self, d: Duration) -> u32 {
        (d.as_micros() * u128::from(self.clock_rate) / 1_000_000) as u32
    }
}

/// Sends `plan` into the leg of `shared` and hands the leg back; Ok when
/// every packet went out, the stop reason otherwise.
pub async fn run<C: LegControl>(
    control: C,
    injections: Arc<Injections>,
    shared: Arc<LegShared>,
    plan: DtmfPlan,
    ticket: Ticket,
) -> Result<(), StopReason> {
    let leg = shared.leg.clone();
    let result = send(shared, &plan, ticket.stop).await;
    if injections.finish(&leg, ticket.id) {
        control.set_inbound_paused(&leg, false);
    }
    result
}

async fn send(
    shared: Arc<LegShared>,
    plan: &DtmfPlan,
    mut stop: oneshot::Receiver<StopReason>,
) -> Result<(), StopReason> {
    let start_at = Instant::now();
    let (mut injector, first) = Injector::begin(shared, start_at, plan.clock_rate);
    // The plan was validated when it was built, with the same parameters.
    let packets = plan
        .packets(start_at, first.timestamp, first.sequence)
        .map_err(|_| StopReason::Shutdown)?;
    for p in packets {
        tokio::select! {
            biased;
            reason = &mut stop => return Err(reason.unwrap_or(StopReason::Shutdown)),
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(p.send_at)) => {}
        }
        let packet = Packet {
            marker: p.marker,
            payload_type: plan.payload_type,
            sequence: p.sequence,
            timestamp: p.timestamp,
            media_clock: first
                .timestamp
                .wrapping_add(plan.ticks(p.send_at.saturating_duration_since(start_at))),
        };
        if !injector.send(Instant::now(), packet, &p.event.encode()) {
            return Err(StopReason::Replaced);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PT: u8 = 101;

    fn plan(digits: &str) -> Result<DtmfPlan, DtmfPlanError> {
        DtmfPlan::new(
            digits,
            Duration::from_millis(100),
            Duration::from_millis(100),
            10,
            PayloadType::new(PT).expect("pt"),
            8000,
            Duration::from_millis(20),
        )
    }

    #[test]
    fn digits_become_rfc4733_packets_with_end_retransmissions() {
        let t0 = Instant::now();
        let packets = plan("12#")
            .expect("valid digits")
            .packets(t0, RtpTimestamp(1000), SeqNum(65_534))
            .expect("packets");
        // 100 ms at 20 ms: 5 packets, the 5th with the E bit, plus 2 more end packets.
        assert_eq!(packets.len(), 21);
        let events: Vec<(u8, bool, u16)> = packets[..7]
            .iter()
            .map(|p| (p.event.event, p.event.end, p.event.duration))
            .collect();
        assert_eq!(
            events,
            [
                (1, false, 160),
                (1, false, 320),
                (1, false, 480),
                (1, false, 640),
                (1, true, 800),
                (1, true, 800),
                (1, true, 800)
            ]
        );
        assert!(packets[0].marker && !packets[1].marker);
        assert_eq!(packets[0].sequence, SeqNum(65_534));
        assert_eq!(packets[2].sequence, SeqNum(0), "sequence numbers wrap");
        assert_eq!(
            (packets[7].event.event, packets[14].event.event),
            (2, 11),
            "then 2 and # (event 11)"
        );
        // The second digit starts one ptime after the last end packet plus 100 ms.
        assert_eq!(
            packets[7].send_at - packets[6].send_at,
            Duration::from_millis(120)
        );
        assert_eq!(
            packets[7].timestamp,
            RtpTimestamp(1000 + 12 * 160),
            "its timestamp follows the media clock: 12 packet slots later"
        );
    }

    #[test]
    fn commas_add_pauses_between_runs_on_the_same_clock() {
        let t0 = Instant::now();
        let packets = plan(",1,,2")
            .expect("valid digits")
            .packets(t0, RtpTimestamp(0), SeqNum(10))
            .expect("packets");
        assert_eq!(packets.len(), 14);
        assert_eq!(
            packets[0].send_at - t0,
            Duration::from_millis(100),
            "leading pause"
        );
        // Last end packet of 1 at 100 + 120 ms; then 20 + 100 + 2 × 100 ms.
        assert_eq!(packets[7].send_at - t0, Duration::from_millis(540));
        assert_eq!(packets[7].timestamp, RtpTimestamp(540 * 8));
        assert_eq!(
            packets[7].sequence,
            SeqNum(17),
            "sequence continues across runs"
        );
        assert!(packets[7].marker);
    }

    #[test]
    fn bad_requests_are_refused_with_the_reason() {
        assert_eq!(plan("").expect_err("empty"), DtmfPlanError::Empty);
        assert_eq!(plan(",,").expect_err("only pauses"), DtmfPlanError::Empty);
        assert_eq!(
            plan("12x").expect_err("x").to_string(),
            "'x' is not a DTMF digit (0-9 * # A-D) or a pause (,)"
        );
        let loud = DtmfPlan::new(
            "1",
            Duration::from_millis(100),
            Duration::from_millis(100),
            64,
            PayloadType::new(PT).expect("pt"),
            8000,
            Duration::from_millis(20),
        );
        assert_eq!(
            loud.expect_err("volume").to_string(),
            "volume 64 out of range 0-63 (-dBm0)"
        );
    }
}
