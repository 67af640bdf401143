//! Per-stream statistics of forwarded packets: packets, bytes, last seen,
//! and for RTP the RFC 3550 A.1/A.3 sequence tracking and A.8 jitter.
//!
//! The kernel keeps raw state only; userspace derives loss and jitter from
//! it (see `StreamStats` in rtpmanager-common). There is no probation and
//! no restart on a large jump: a sequence number ahead by less than 2^15 is
//! an advance, anything else a late or duplicate packet.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use rtpmanager_common::{arrival_ticks, ForwardEntry, StreamStats, FLAG_RTP, STATS_STARTED};

use crate::packet::Packet;
use crate::STREAM_STATS;

/// Records a forwarded packet, arrived at `now` (bpf_ktime_get_ns), in the
/// entry's stats slot; a slot out of range records nothing (the loader
/// rejects such entries).
#[inline(always)]
pub fn record(entry: &ForwardEntry, packet: &Packet, now: u64) {
    let Some(stats) = STREAM_STATS.get_ptr_mut(entry.stats_slot) else {
        return;
    };
    // SAFETY: `stats` points at a live array element for the whole program
    // run; packets and bytes may be updated from several CPUs at once, so
    // they use atomic adds (BPF_ATOMIC; the bpf target has no AtomicU64
    // fetch_add, hence the intrinsic), the rest plain stores.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*stats).packets, 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
            &raw mut (*stats).bytes,
            u64::from(packet.payload_len),
        );
        (*stats).last_seen_ns = now;
        if entry.flags & FLAG_RTP != 0 {
            sent(&mut *stats, packet);
            rtp(&mut *stats, entry.clock_mult, now, packet);
        }
    }
}

/// Counts a packet a strict entry dropped for its source.
#[inline(always)]
pub fn record_source_drop(entry: &ForwardEntry) {
    let Some(stats) = STREAM_STATS.get_ptr_mut(entry.stats_slot) else {
        return;
    };
    // SAFETY: as in `record`; several CPUs may drop for one entry at once.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*stats).source_drops, 1);
    }
}

#[inline(always)]
fn rtp(stats: &mut StreamStats, clock_mult: u32, now_ns: u64, packet: &Packet) {
    let seq = packet.rtp_seq;
    // Arrival in RTP clock units by a multiply and shifts: two 64-bit
    // divisions per packet were a measurable part of its cost.
    let arrival = arrival_ticks(now_ns, clock_mult);
    let transit = arrival.wrapping_sub(packet.rtp_timestamp);
    if !sequence(stats, seq) {
        stats.transit = transit;
        return;
    }
    if clock_mult != 0 {
        let d = transit.wrapping_sub(stats.transit) as i32;
        let d = d.unsigned_abs();
        // J += (|D| − J)/16 with J kept scaled by 16 (RFC 3550 A.8).
        stats.jitter_x16 = stats
            .jitter_x16
            .wrapping_add(d)
            .wrapping_sub((stats.jitter_x16 + 8) >> 4);
    }
    stats.transit = transit;
}

/// Counts `seq` in the stream's sequence tracking (RFC 3550 A.1/A.3);
/// false when it was the stream's first packet.
#[inline(always)]
fn sequence(stats: &mut StreamStats, seq: u16) -> bool {
    if stats.state & STATS_STARTED == 0 {
        stats.state = STATS_STARTED;
        stats.base_seq = u32::from(seq);
        stats.highest_seq = u32::from(seq);
        stats.received = 1;
        return false;
    }
    let highest = stats.highest_seq as u16;
    let delta = seq.wrapping_sub(highest);
    if delta != 0 && delta < 0x8000 {
        let mut cycles = stats.highest_seq & 0xFFFF_0000;
        if seq < highest {
            cycles = cycles.wrapping_add(0x1_0000);
        }
        stats.highest_seq = cycles | u32::from(seq);
    }
    stats.received = stats.received.wrapping_add(1);
    true
}

/// Counts a packet passed to userspace in the stream's sequence tracking
/// only: it is not forwarded (no packets, bytes or last seen) and its
/// timestamp (a telephone-event's start) says nothing about jitter.
#[inline(always)]
pub fn record_passed(entry: &ForwardEntry, seq: u16) {
    let Some(stats) = STREAM_STATS.get_ptr_mut(entry.stats_slot) else {
        return;
    };
    // SAFETY: as in `record`: plain stores on a live array element.
    let stats = unsafe { &mut *stats };
    // The stream starts with a forwarded packet, whose transit time the
    // jitter estimate needs.
    if stats.state & STATS_STARTED != 0 {
        sequence(stats, seq);
    }
}

/// Remembers the header fields the packet left with.
#[inline(always)]
fn sent(stats: &mut StreamStats, packet: &Packet) {
    stats.sent_ssrc = u32::from_be(packet.sent_ssrc);
    stats.sent_sequence = u32::from(packet.sent_seq);
    stats.sent_timestamp = packet.sent_timestamp;
}
