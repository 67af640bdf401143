//! The driver of one playback: paces a [`Playout`] on tokio's timer and
//! sends its frames through an [`Injector`].

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::media::g711::Law;
use crate::media::resample::FRAME_SAMPLES;
use crate::relay::LegShared;

use super::inject::{Injector, Packet};
use super::playout::{Clip, Pacer, Playout, Step, FRAME};
use super::registry::{Injections, StopReason, Ticket};
use super::LegControl;

/// What a playback reports, in order: `Started`/`Progress` while it runs,
/// then exactly one of `Completed`, `Stopped` or `Error`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlayUpdate {
    Started {
        file: String,
        codec: &'static str,
    },
    Progress {
        file: String,
        position_ms: u64,
        duration_ms: u64,
    },
    Completed,
    Stopped(StopReason),
    Error {
        file: String,
        reason: String,
    },
}

/// A playback ready to run.
#[derive(Debug)]
pub struct PlayJob {
    pub shared: Arc<LegShared>,
    pub law: Law,
    pub clips: Arc<[Clip]>,
    /// Passes over the playlist; `None` loops until stopped.
    pub passes: Option<u32>,
}

fn codec_name(law: Law) -> &'static str {
    match law {
        Law::Ulaw => "PCMU",
        Law::Alaw => "PCMA",
    }
}

/// Runs `job` until it completes or is stopped, then hands the leg back
/// (forwarding resumes when this was still the leg's current injection) and
/// reports the terminal update.
pub async fn run<C: LegControl>(
    control: C,
    injections: Arc<Injections>,
    job: PlayJob,
    ticket: Ticket,
    updates: mpsc::Sender<PlayUpdate>,
) {
    let leg = job.shared.leg.clone();
    let terminal = play(job, ticket.stop, &updates).await;
    if injections.finish(&leg, ticket.id) {
        control.set_inbound_paused(&leg, false);
    }
    tracing::debug!(call = %leg.call_id, leg = %leg.leg_id, outcome = ?terminal, "playback ended");
    let _ = updates.send(terminal).await;
}

async fn play(
    job: PlayJob,
    mut stop: oneshot::Receiver<StopReason>,
    updates: &mpsc::Sender<PlayUpdate>,
) -> PlayUpdate {
    const CLOCK_RATE: u32 = 8000;
    let codec = codec_name(job.law);
    let payload_type = job.law.payload_type();
    let mut playout = Playout::new(job.clips, job.passes);
    let started = Instant::now();
    let (mut injector, first) = Injector::begin(job.shared, started, CLOCK_RATE);
    let mut pacer = Pacer::new(started, FRAME);
    let mut n: u64 = 0;
    loop {
        match playout.next_step() {
            Step::Started { file } => {
                let update = PlayUpdate::Started {
                    file: file.to_owned(),
                    codec,
                };
                if updates.send(update).await.is_err() {
                    return PlayUpdate::Stopped(StopReason::ClientGone);
                }
            }
            Step::Progress {
                file,
                position_ms,
                duration_ms,
            } => {
                // A reader too slow for one notice a second misses some;
                // the terminal update is never dropped.
                let _ = updates.try_send(PlayUpdate::Progress {
                    file: file.to_owned(),
                    position_ms,
                    duration_ms,
                });
            }
            Step::Frame(payload) => {
                let payload: [u8; FRAME_SAMPLES] = *payload;
                let due = tokio::time::Instant::from_std(pacer.due(n));
                tokio::select! {
                    biased;
                    reason = &mut stop => {
                        return PlayUpdate::Stopped(reason.unwrap_or(StopReason::Shutdown));
                    }
                    () = updates.closed() => return PlayUpdate::Stopped(StopReason::ClientGone),
                    () = tokio::time::sleep_until(due) => {}
                }
                let now = Instant::now();
                if pacer.resync(n, now) {
                    tracing::debug!(frame = n, "playback fell behind; schedule restarted");
                }
                let timestamp = first
                    .timestamp
                    .wrapping_add((n as u32).wrapping_mul(FRAME_SAMPLES as u32));
                let packet = Packet {
                    marker: n == 0,
                    payload_type,
                    sequence: first.sequence.wrapping_add(n as u16),
                    timestamp,
                    media_clock: timestamp,
                };
                if !injector.send(now, packet, &payload) {
                    return PlayUpdate::Stopped(StopReason::Replaced);
                }
                n += 1;
            }
            Step::Completed => return PlayUpdate::Completed,
        }
    }
}
