//! A leg's media statistics as the manager reports them: the relay's
//! counters and RFC 3550 figures, to which the kernel's are added
//! ([`crate::offload::kernel::KernelOffload::merge`]). The gRPC edge turns
//! them into the control protocol's `LegStats`.

use std::sync::atomic::AtomicU64;

use crate::relay::{LegCounters, LegShared, LegSnapshot};

/// Packets and bytes of one stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamCounters {
    pub packets: u64,
    pub bytes: u64,
}

/// What the leg's peer reported about the stream it receives (RTCP RR).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerReport {
    pub fraction_lost: u32,
    pub cumulative_lost: i64,
    pub jitter_us: u32,
}

/// The statistics of one leg.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LegStats {
    pub call_id: String,
    pub leg_id: String,
    /// Received from the leg's peer.
    pub rtp_in: StreamCounters,
    pub rtcp_in: StreamCounters,
    /// Sent to the leg's peer.
    pub rtp_out: StreamCounters,
    pub rtcp_out: StreamCounters,
    pub source_mismatch_drops: u64,
    pub overload_drops: u64,
    pub rtp_lost: i64,
    pub jitter_us: u32,
    /// Milliseconds since the Unix epoch of the last packet received.
    pub last_packet_ms: u64,
    pub peer_report: PeerReport,
    /// Of `rtp_in`, the packets the kernel forwarded.
    pub kernel_packets: u64,
}

/// A leg's statistics from the relay: the shared counters plus the relay's
/// RFC 3550 snapshot.
pub fn leg_stats(shared: &LegShared, snapshot: Option<&LegSnapshot>) -> LegStats {
    let c = &shared.counters;
    let counters = |packets: &AtomicU64, bytes: &AtomicU64| StreamCounters {
        packets: LegCounters::get(packets),
        bytes: LegCounters::get(bytes),
    };
    let snapshot = snapshot.cloned().unwrap_or_default();
    LegStats {
        call_id: shared.leg.call_id.to_string(),
        leg_id: shared.leg.leg_id.to_string(),
        rtp_in: counters(&c.rtp_in_packets, &c.rtp_in_bytes),
        rtcp_in: counters(&c.rtcp_in_packets, &c.rtcp_in_bytes),
        rtp_out: counters(&c.rtp_out_packets, &c.rtp_out_bytes),
        rtcp_out: counters(&c.rtcp_out_packets, &c.rtcp_out_bytes),
        source_mismatch_drops: LegCounters::get(&c.source_mismatch_drops),
        overload_drops: LegCounters::get(&c.overload_drops),
        rtp_lost: snapshot.rtp_lost,
        jitter_us: snapshot.jitter_us,
        last_packet_ms: LegCounters::get(&c.last_packet_ms),
        peer_report: PeerReport {
            fraction_lost: snapshot.peer_fraction_lost.into(),
            cumulative_lost: snapshot.peer_cumulative_lost.into(),
            jitter_us: snapshot.peer_jitter_us,
        },
        kernel_packets: 0,
    }
}

/// The packets the relay received on a leg, RTP and RTCP.
pub fn received_packets(c: &LegCounters) -> u64 {
    LegCounters::get(&c.rtp_in_packets) + LegCounters::get(&c.rtcp_in_packets)
}
