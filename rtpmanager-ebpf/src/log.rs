//! Diagnostics of the unusual paths through aya-log, at debug level only.
//!
//! The manager sets `AYA_LOG_LEVEL` at load: to debug when its own log
//! filter enables debug for `switchboard_rtpmanager::fastpath::kernel`,
//! else to off, and then each call below costs one global load. Records are
//! rate-limited to one per CPU every [`INTERVAL_NS`]: the paths they report
//! (a route that does not resolve, a strict entry under a flood) repeat per
//! packet, and a log line per packet would cost more than the packet.
//!
//! Each is its own BPF subprogram: the record is built on a stack frame of
//! its own, not on the programs' main frame (the verifier's 512 bytes).

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::PerCpuArray};
use aya_log_ebpf::debug;

/// At most one record per CPU per this many nanoseconds.
const INTERVAL_NS: u64 = 100_000_000;

/// Per CPU: `bpf_ktime_get_ns` of the last record.
#[map(name = "SB_LOG_LIMIT")]
static LAST_RECORD: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Whether a record may be written now (and if so, counts it as written).
#[inline(always)]
fn allowed() -> bool {
    let Some(last) = LAST_RECORD.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: per-CPU slot, only this CPU touches it during the run.
    unsafe {
        if now.wrapping_sub(*last) < INTERVAL_NS && *last != 0 {
            return false;
        }
        *last = now;
    }
    true
}

/// The route/neighbour lookup for an entry's destination failed (XDP
/// passes the packet to the stack; TC hands an unresolved neighbour to
/// bpf_redirect_neigh). `why` is the lookup's counter name.
#[inline(never)]
pub fn no_next_hop(dst_port: u16, ingress: u32, why: &'static str) {
    if allowed() {
        debug!(
            &(),
            "no next hop towards port {} (ingress ifindex {}): {}", dst_port, ingress, why
        );
    }
}

/// A TC rewrite helper failed half-way; the packet was dropped.
#[inline(never)]
pub fn tc_rewrite_failed(error: i64) {
    if allowed() {
        debug!(
            &(),
            "TC rewrite helper failed with {}; packet dropped", error
        );
    }
}

/// A strict entry dropped a packet from another source than its peer.
#[inline(never)]
pub fn strict_source_drop(port: u16) {
    if allowed() {
        debug!(
            &(),
            "strict entry on port {} dropped a packet from another source", port
        );
    }
}
