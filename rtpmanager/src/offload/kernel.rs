//! The offload's map side: writes the [`Offload`] decision's commands
//! (which the [`engine`](crate::engine) owns and feeds) to the fast path's
//! maps, and keeps the kernel's per-stream figures so statistics read the
//! same whichever path carried the packets. The driver calls it with the
//! engine's decision for the reads that need it.
//!
//! Statistics: the kernel's stats slot of a direction counts one *episode*
//! (one stay in the kernel); when the direction leaves the kernel the
//! episode's figures are folded into the direction's account before the
//! slot is reused. Loss merges with the relay's RFC 3550 figures: the relay
//! sees the stream before and between episodes, and counts a whole episode
//! as a sequence gap once it receives again, so the packets the kernel
//! received in that episode are taken back out of the relay's loss.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtpmanager_common::STATS_STARTED;

use super::{Direction, Offload, OffloadCommand, StreamKind};
use crate::clock::{monotonic_ns, unix_millis};
use crate::fastpath::{FastPath, StreamStats};
use crate::media::rtp::{RtpTimestamp, SeqNum, Ssrc};
use crate::relay::continuity::StreamPosition;
use crate::relay::{LegCounters, LegParams, LegRef, LegShared, Slot};
use crate::stats::LegStats;

/// One closed stay of a direction in the kernel.
#[derive(Clone, Copy, Debug, Default)]
struct Episode {
    received: u32,
    lost: i64,
    /// The relay's received-packet count of the leg when the episode
    /// closed: once it grows, the relay has counted the episode as a gap.
    relay_packets_at_close: u64,
}

/// The kernel's figures of one direction over the leg's lifetime.
#[derive(Clone, Debug, Default)]
struct Account {
    packets: u64,
    bytes: u64,
    /// Packets strict-source entries dropped for their source.
    source_drops: u64,
    episodes: Vec<Episode>,
    /// The leg the direction forwarded to, for the receiving leg's `*_out`.
    to: Option<Slot>,
}

/// What the driver keeps per leg.
#[derive(Debug)]
struct LegRecord {
    shared: Arc<LegShared>,
    media_timeout: Option<Duration>,
    forward_to: Option<Slot>,
    clock_rate: u32,
    timeout_reported: bool,
}

/// The live kernel figures of the installed directions of one leg.
#[derive(Clone, Copy, Debug, Default)]
struct Live {
    stats: StreamStats,
    installed: bool,
}

/// The kernel side of the offload: map writes and figures.
#[derive(Debug, Default)]
pub struct KernelOffload {
    legs: HashMap<Slot, LegRecord>,
    by_ref: HashMap<LegRef, Slot>,
    accounts: HashMap<Direction, Account>,
    /// What the kernel's closed episodes sent into each leg (its `*_out`),
    /// packets and bytes by receiving leg and kind. Kept with the
    /// receiving leg, not the sending one: a Delete removes a call's legs
    /// one by one, and the sender's figures go with it.
    sent_into: HashMap<(Slot, StreamKind), (u64, u64)>,
}

impl KernelOffload {
    pub fn new() -> KernelOffload {
        KernelOffload::default()
    }

    /// A leg was added to the relay or got new params.
    pub fn leg_params(&mut self, slot: Slot, shared: &Arc<LegShared>, params: &LegParams) {
        let record = self.legs.entry(slot).or_insert_with(|| LegRecord {
            shared: Arc::clone(shared),
            media_timeout: None,
            forward_to: None,
            clock_rate: 8000,
            timeout_reported: false,
        });
        record.media_timeout = params.media_timeout;
        record.forward_to = params.forward_to;
        record.clock_rate = params.clock_rate.max(1);
        self.by_ref.insert(shared.leg.clone(), slot);
    }

    /// The shared state of a leg seen by [`Self::leg_params`].
    pub fn shared(&self, slot: Slot) -> Option<Arc<LegShared>> {
        self.legs.get(&slot).map(|r| Arc::clone(&r.shared))
    }

    /// Every leg the relay has, by slot.
    pub fn legs(&self) -> Vec<(Slot, Arc<LegShared>)> {
        self.legs
            .iter()
            .map(|(slot, r)| (*slot, Arc::clone(&r.shared)))
            .collect()
    }

    /// Forgets a removed leg's figures, once its final stats were read.
    pub fn forget(&mut self, slot: Slot) {
        if let Some(record) = self.legs.remove(&slot) {
            self.by_ref.remove(&record.shared.leg);
        }
        for kind in [StreamKind::Rtp, StreamKind::Rtcp] {
            self.accounts.remove(&Direction { from: slot, kind });
            self.sent_into.remove(&(slot, kind));
        }
    }

    /// Applies one map write. A write the kernel refuses leaves the
    /// direction in userspace, which is always correct: the error names
    /// the direction, for the decision to forget
    /// ([`crate::engine::Engine::handle_install_failed`]).
    pub fn execute(
        &mut self,
        fast_path: &FastPath,
        command: OffloadCommand,
    ) -> Result<(), Direction> {
        {
            match command {
                OffloadCommand::Remove {
                    direction,
                    key,
                    stats_slot,
                } => {
                    if let Err(e) = fast_path.remove(&key) {
                        tracing::warn!(slot = direction.from, kind = ?direction.kind, error = %e, "kernel entry not removed");
                    }
                    self.set_kernel_inbound(direction, false);
                    self.close_episode(fast_path, direction, stats_slot);
                }
                OffloadCommand::Install {
                    direction,
                    key,
                    entry,
                    fresh,
                } => {
                    if fresh {
                        if let Err(e) = fast_path.reset_stream_stats(entry.stats_slot) {
                            tracing::warn!(slot = direction.from, error = %e, "stats slot not reset");
                        }
                    }
                    let to = self.legs.get(&direction.from).and_then(|r| r.forward_to);
                    self.accounts.entry(direction).or_default().to = to;
                    match fast_path.install(key, entry) {
                        Ok(()) => {
                            self.set_kernel_inbound(direction, true);
                            tracing::debug!(
                                slot = direction.from,
                                kind = ?direction.kind,
                                key = %key.socket_addr(),
                                destination = %entry.destination(),
                                "stream in the kernel"
                            )
                        }
                        Err(e) => {
                            tracing::warn!(slot = direction.from, kind = ?direction.kind, error = %e, "kernel entry not installed; stays in userspace");
                            return Err(direction);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Tells the relay whether the kernel carries a leg's inbound RTP.
    fn set_kernel_inbound(&self, direction: Direction, on: bool) {
        if direction.kind != StreamKind::Rtp {
            return;
        }
        if let Some(record) = self.legs.get(&direction.from) {
            record.shared.kernel_inbound.store(on, Ordering::Relaxed);
        }
    }

    fn close_episode(&mut self, fast_path: &FastPath, direction: Direction, stats_slot: u32) {
        let Some(stats) = fast_path.stream_stats(stats_slot) else {
            return;
        };
        let relay_packets = self.legs.get(&direction.from).map_or(0, |r| {
            let c = &r.shared.counters;
            match direction.kind {
                StreamKind::Rtp => LegCounters::get(&c.rtp_in_packets),
                StreamKind::Rtcp => LegCounters::get(&c.rtcp_in_packets),
            }
        });
        let account = self.accounts.entry(direction).or_default();
        if direction.kind == StreamKind::Rtp && stats.state & STATS_STARTED != 0 {
            // The peer's stream continues after what the kernel sent, not
            // after what the relay last saw.
            if let Some(to) = account.to.and_then(|to| self.legs.get(&to)) {
                let ago = Duration::from_nanos(monotonic_ns().saturating_sub(stats.last_seen_ns));
                let at = Instant::now().checked_sub(ago).unwrap_or_else(Instant::now);
                to.shared.outbound().forwarded_elsewhere(
                    at,
                    StreamPosition {
                        ssrc: Ssrc(stats.sent_ssrc),
                        sequence: SeqNum(stats.sent_sequence as u16),
                        timestamp: RtpTimestamp(stats.sent_timestamp),
                    },
                );
            }
        }
        account.packets += stats.packets;
        account.bytes += stats.bytes;
        account.source_drops += stats.source_drops;
        if let Some(to) = account.to {
            let sent = self.sent_into.entry((to, direction.kind)).or_default();
            sent.0 += stats.packets;
            sent.1 += stats.bytes;
        }
        account.episodes.push(Episode {
            received: stats.received,
            lost: stats.lost(),
            relay_packets_at_close: relay_packets,
        });
    }

    fn live(fast_path: &FastPath, decision: &Offload, direction: Direction) -> Live {
        match decision.stats_slot(direction) {
            Some(slot) => Live {
                stats: fast_path.stream_stats(slot).unwrap_or_default(),
                installed: true,
            },
            None => Live::default(),
        }
    }

    /// Adds the kernel's figures to a leg's userspace statistics.
    pub fn merge(
        &self,
        fast_path: &FastPath,
        decision: &Offload,
        slot: Slot,
        stats: &mut LegStats,
    ) {
        let Some(record) = self.legs.get(&slot) else {
            return;
        };
        let counters = &record.shared.counters;
        let mono_now = monotonic_ns();
        let now_ms = unix_millis(std::time::SystemTime::now());
        let mut kernel_last_ms = 0u64;
        let mut note_seen = |live: &Live| {
            if live.stats.last_seen_ns != 0 {
                let ago_ms = mono_now.saturating_sub(live.stats.last_seen_ns) / 1_000_000;
                kernel_last_ms = kernel_last_ms.max(now_ms.saturating_sub(ago_ms));
            }
        };

        // Inbound: the directions from this leg.
        for kind in [StreamKind::Rtp, StreamKind::Rtcp] {
            let direction = Direction { from: slot, kind };
            let live = Self::live(fast_path, decision, direction);
            note_seen(&live);
            let account = self.accounts.get(&direction);
            let packets = account.map_or(0, |a| a.packets) + live.stats.packets;
            let bytes = account.map_or(0, |a| a.bytes) + live.stats.bytes;
            let counters_of = match kind {
                StreamKind::Rtp => &mut stats.rtp_in,
                StreamKind::Rtcp => &mut stats.rtcp_in,
            };
            let c = counters_of;
            c.packets += packets;
            c.bytes += bytes;
            // The kernel drops what the relay would drop with strict-source.
            stats.source_mismatch_drops +=
                account.map_or(0, |a| a.source_drops) + live.stats.source_drops;
            if kind == StreamKind::Rtp {
                stats.kernel_packets = packets;
                let relay_packets = LegCounters::get(&counters.rtp_in_packets);
                let mut lost = stats.rtp_lost;
                for e in account.map_or(&[][..], |a| &a.episodes[..]) {
                    if relay_packets > e.relay_packets_at_close {
                        lost -= i64::from(e.received);
                    } else {
                        lost += e.lost;
                    }
                }
                if live.installed {
                    lost += live.stats.lost();
                    if live.stats.received > 0 {
                        let us = u64::from(live.stats.jitter()) * 1_000_000
                            / u64::from(record.clock_rate);
                        stats.jitter_us = u32::try_from(us).unwrap_or(u32::MAX);
                    }
                }
                stats.rtp_lost = lost;
            }
        }

        // Outbound: the closed episodes that sent into this leg, and the
        // live directions of the bridged leg into it. Bridges are
        // symmetric: the leg forwarding here is the one this leg forwards
        // to (a lookup, not a scan, for Watch's all-legs stats).
        for kind in [StreamKind::Rtp, StreamKind::Rtcp] {
            let closed = self
                .sent_into
                .get(&(slot, kind))
                .copied()
                .unwrap_or_default();
            let live = record
                .forward_to
                .map(|from| Direction { from, kind })
                .filter(|d| self.accounts.get(d).is_some_and(|a| a.to == Some(slot)))
                .map(|d| Self::live(fast_path, decision, d))
                .unwrap_or_default();
            let packets = closed.0 + live.stats.packets;
            let bytes = closed.1 + live.stats.bytes;
            let c = match kind {
                StreamKind::Rtp => &mut stats.rtp_out,
                StreamKind::Rtcp => &mut stats.rtcp_out,
            };
            c.packets += packets;
            c.bytes += bytes;
        }
        stats.last_packet_ms = stats.last_packet_ms.max(kernel_last_ms);
    }

    /// Periodic work: copies the kernel's last-seen times into the legs'
    /// counters (so idle reaping sees offloaded media) and reports media
    /// timeouts of offloaded streams, which the relay cannot see.
    pub fn tick(&mut self, fast_path: &FastPath, decision: &Offload) -> Vec<(LegRef, Duration)> {
        let mono_now = monotonic_ns();
        let now_ms = unix_millis(std::time::SystemTime::now());
        let mut timeouts = Vec::new();
        for (direction, stats_slot) in decision.installed() {
            if direction.kind != StreamKind::Rtp {
                continue;
            }
            let Some(record) = self.legs.get_mut(&direction.from) else {
                continue;
            };
            let Some(stats) = fast_path.stream_stats(stats_slot) else {
                continue;
            };
            if stats.last_seen_ns == 0 {
                continue;
            }
            let idle = Duration::from_nanos(mono_now.saturating_sub(stats.last_seen_ns));
            let seen_ms =
                now_ms.saturating_sub(u64::try_from(idle.as_millis()).unwrap_or(u64::MAX));
            record
                .shared
                .counters
                .last_packet_ms
                .fetch_max(seen_ms, Ordering::Relaxed);
            match record.media_timeout {
                Some(limit) if idle >= limit => {
                    if !record.timeout_reported {
                        record.timeout_reported = true;
                        timeouts.push((record.shared.leg.clone(), idle));
                    }
                }
                _ => record.timeout_reported = false,
            }
        }
        timeouts
    }

    /// Whether a media timeout the relay reports for `leg` is wrong because
    /// the kernel carries (or just carried) its media.
    pub fn carries(&self, fast_path: &FastPath, decision: &Offload, leg: &LegRef) -> bool {
        let Some(&slot) = self.by_ref.get(leg) else {
            return false;
        };
        if decision.offloaded(slot) {
            return true;
        }
        let Some(record) = self.legs.get(&slot) else {
            return false;
        };
        let limit = record.media_timeout.unwrap_or(Duration::MAX);
        let direction = Direction {
            from: slot,
            kind: StreamKind::Rtp,
        };
        let Some(stats) = decision
            .last_stats_slot(direction)
            .and_then(|s| fast_path.stream_stats(s))
        else {
            return false;
        };
        stats.last_seen_ns != 0
            && Duration::from_nanos(monotonic_ns().saturating_sub(stats.last_seen_ns)) < limit
    }
}
