//! Kernel fast path of the Switchboard RTP manager.
//!
//! The XDP and TC programs forward bridged RTP/RTCP the way the userspace
//! relay would: a packet addressed to a relay (address, port) with an entry
//! in `SB_FORWARD`, coming from the entry's expected peer, leaves with the
//! relay's outgoing-leg address/port as source and the other leg's peer as
//! destination, with valid checksums. Everything else is passed to the
//! stack unchanged, where the userspace relay handles it: the kernel path is
//! a cache of the userspace path.
//!
//! Both programs share the parsing and checks ([`packet`]); they differ in
//! how they rewrite (direct writes with RFC 1624 updates in XDP, the skb
//! csum helpers in TC) and transmit. The next hop is looked up before
//! anything is written, so a pass always hands over the original packet.
//! Every packet increments exactly one `SB_COUNTERS` slot.
//!
//! Only addresses, ports, MACs and checksums change, and on a rewriting
//! entry the RTP SSRC, sequence number and timestamp (the relay's stream
//! continuity after an injection): TTL/hop limit, DSCP and the IPv4 ID are
//! kept as received, where the userspace relay would send with its socket's
//! defaults.
#![no_std]
#![no_main]
// atomic_xadd for the shared per-stream counters (see stats.rs).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod checksum;
mod packet;
mod stats;

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, xdp_action, BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_F_MARK_MANGLED_0, BPF_F_NO_PREALLOC, BPF_F_PSEUDO_HDR,
        BPF_F_RECOMPUTE_CSUM, TC_ACT_OK, TC_ACT_SHOT,
    },
    helpers::{bpf_csum_diff, bpf_fib_lookup as fib_lookup, bpf_ktime_get_ns, bpf_redirect},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use rtpmanager_common::{
    Counter, ForwardEntry, ForwardKey, ProgramConfig, StreamStats, FLAG_REWRITE, FLAG_RTP,
    MAX_FORWARDS, STREAM_SLOTS,
};

use packet::{Packet, ETH_HLEN, UDP_OFFSET_V4, UDP_OFFSET_V6};

#[map(name = "SB_CONFIG")]
static CONFIG: Array<ProgramConfig> = Array::with_max_entries(1, 0);

#[map(name = "SB_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::SLOTS, 0);

/// Not preallocated: a preallocated element replaced by userspace is
/// recycled at once and could change under a program reading it, while
/// these are freed after an RCU grace period. Updates are control-plane
/// rare; lookups cost the same.
#[map(name = "SB_FORWARD")]
static FORWARD: HashMap<ForwardKey, ForwardEntry> =
    HashMap::with_max_entries(MAX_FORWARDS, BPF_F_NO_PREALLOC);

/// Scratch space for the route lookup's 64-byte parameters: the XDP
/// program's stack (512 bytes) has no room left for them once the RTP
/// rewrite is inlined.
#[map(name = "SB_SCRATCH")]
static SCRATCH: PerCpuArray<bpf_fib_lookup> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "SB_STREAM_STATS")]
static STREAM_STATS: Array<StreamStats> = Array::with_max_entries(STREAM_SLOTS, 0);

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_UDP: u8 = 17;

/// Why a packet is not forwarded. Each variant has its counter and verdict.
#[derive(Clone, Copy)]
pub enum Error {
    NotIp,
    NotUdp,
    Truncated,
    Fragment,
    IpOptions,
    Ipv6ExtensionHeader,
    OtherPort,
    NoEntry,
    SourceMismatchPass,
    SourceMismatchDrop,
    NotRtp,
    FamilyMismatch,
    Ipv6ZeroChecksum,
    FibNoNeigh,
    FibForwardingDisabled,
    FibOther,
    RewriteFailed,
    RewriteSsrcMismatch,
    PassedPayloadType,
    MuxedRtcp,
}

impl Error {
    #[inline(always)]
    fn counter(self) -> Counter {
        match self {
            Error::NotIp => Counter::NotIp,
            Error::NotUdp => Counter::NotUdp,
            Error::Truncated => Counter::Truncated,
            Error::Fragment => Counter::Fragment,
            Error::IpOptions => Counter::IpOptions,
            Error::Ipv6ExtensionHeader => Counter::Ipv6ExtensionHeader,
            Error::OtherPort => Counter::OtherPort,
            Error::NoEntry => Counter::NoEntry,
            Error::SourceMismatchPass => Counter::SourceMismatchPass,
            Error::SourceMismatchDrop => Counter::SourceMismatchDrop,
            Error::NotRtp => Counter::NotRtp,
            Error::FamilyMismatch => Counter::FamilyMismatch,
            Error::Ipv6ZeroChecksum => Counter::Ipv6ZeroChecksum,
            Error::FibNoNeigh => Counter::FibNoNeigh,
            Error::FibForwardingDisabled => Counter::FibForwardingDisabled,
            Error::FibOther => Counter::FibOther,
            Error::RewriteFailed => Counter::RewriteFailed,
            Error::RewriteSsrcMismatch => Counter::RewriteSsrcMismatch,
            Error::PassedPayloadType => Counter::PassedPayloadType,
            Error::MuxedRtcp => Counter::MuxedRtcp,
        }
    }

    /// Whether the packet is dropped rather than passed to the stack.
    #[inline(always)]
    fn drops(self) -> bool {
        match self {
            // A strict entry refuses other sources outright (media
            // injection protection configured by the session table).
            Error::SourceMismatchDrop => true,
            // A half-rewritten packet must not reach anyone.
            Error::RewriteFailed => true,
            Error::NotIp
            | Error::NotUdp
            | Error::Truncated
            | Error::Fragment
            | Error::IpOptions
            | Error::Ipv6ExtensionHeader
            | Error::OtherPort
            | Error::NoEntry
            | Error::SourceMismatchPass
            | Error::NotRtp
            | Error::FamilyMismatch
            | Error::Ipv6ZeroChecksum
            | Error::FibNoNeigh
            | Error::FibForwardingDisabled
            | Error::FibOther
            | Error::RewriteSsrcMismatch
            | Error::PassedPayloadType
            | Error::MuxedRtcp => false,
        }
    }
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

#[xdp]
pub fn switchboard_xdp(ctx: XdpContext) -> u32 {
    match try_xdp(&ctx) {
        Ok(action) => action,
        Err(e) => {
            count(e.counter());
            if e.drops() {
                xdp_action::XDP_DROP
            } else {
                xdp_action::XDP_PASS
            }
        }
    }
}

#[classifier]
pub fn switchboard_tc(ctx: TcContext) -> i32 {
    match try_tc(&ctx) {
        Ok(action) => action,
        Err(e) => {
            count(e.counter());
            if e.drops() {
                TC_ACT_SHOT
            } else {
                TC_ACT_OK
            }
        }
    }
}

/// The egress of a successful route and neighbour lookup.
struct NextHop {
    ifindex: u32,
    smac: [u8; 6],
    dmac: [u8; 6],
}

/// The next hop of a packet of `entry` that arrived on `ingress`: the
/// entry's cached hop while it is fresh, else a route and neighbour lookup
/// (cached for the configured TTL when it succeeds).
#[inline(always)]
fn next_hop(
    ctx: *mut c_void,
    ingress: u32,
    now: u64,
    packet: &Packet,
    entry: *mut ForwardEntry,
) -> Result<NextHop, Error> {
    // SAFETY: `entry` points at a live SB_FORWARD value for the program
    // run (see packet::admit); the hop is plain data this program owns.
    let cached = unsafe { &mut (*entry).hop };
    if cached.usable(now, ingress) {
        return Ok(NextHop {
            ifindex: cached.ifindex,
            smac: cached.smac,
            dmac: cached.dmac,
        });
    }
    // SAFETY: as above, read only.
    let hop = lookup_next_hop(ctx, ingress, packet, unsafe { &*entry })?;
    let ttl = CONFIG.get(0).map_or(0, |c| c.next_hop_ttl_ns);
    if ttl != 0 {
        cached.expires_ns = now + ttl;
        cached.ingress = ingress;
        cached.ifindex = hop.ifindex;
        cached.smac = hop.smac;
        cached.dmac = hop.dmac;
        cached.tag = cached.tag_of();
    }
    Ok(hop)
}

/// Looks up the route to the entry's destination as the stack would when
/// forwarding a packet received on `ingress`, neighbour included.
///
/// A BPF subprogram rather than inlined: it is the cache-miss path, and
/// its own stack frame keeps the programs' main frame under 512 bytes.
#[inline(never)]
fn lookup_next_hop(
    ctx: *mut c_void,
    ingress: u32,
    packet: &Packet,
    entry: &ForwardEntry,
) -> Result<NextHop, Error> {
    let params = SCRATCH.get_ptr_mut(0).ok_or(Error::FibOther)?;
    // SAFETY: the per-CPU slot is this program run's alone; bpf_fib_lookup
    // is plain data and all-zero is its neutral value.
    let params = unsafe {
        *params = core::mem::zeroed();
        &mut *params
    };
    params.l4_protocol = IPPROTO_UDP;
    params.sport = u16::from_ne_bytes(entry.src_port);
    params.dport = u16::from_ne_bytes(entry.dst_port);
    params.__bindgen_anon_1.tot_len = packet.ip_len;
    params.ifindex = ingress;
    let (s, d) = (&entry.src_addr, &entry.dst_addr);
    if packet.v6 {
        params.family = AF_INET6;
        let word =
            |a: &[u8; 16], i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
        params.__bindgen_anon_3.ipv6_src = [word(s, 0), word(s, 4), word(s, 8), word(s, 12)];
        params.__bindgen_anon_4.ipv6_dst = [word(d, 0), word(d, 4), word(d, 8), word(d, 12)];
    } else {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([s[12], s[13], s[14], s[15]]);
        params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([d[12], d[13], d[14], d[15]]);
    }
    // SAFETY: `params` is a valid, writable bpf_fib_lookup of the size passed.
    let rc = unsafe {
        fib_lookup(
            ctx,
            params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc < 0 {
        return Err(Error::FibOther);
    }
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => Ok(NextHop {
            ifindex: params.ifindex,
            smac: params.smac,
            dmac: params.dmac,
        }),
        // The stack resolves the neighbour and the userspace relay sends
        // this packet; later ones find the neighbour.
        BPF_FIB_LKUP_RET_NO_NEIGH => Err(Error::FibNoNeigh),
        BPF_FIB_LKUP_RET_FWD_DISABLED => Err(Error::FibForwardingDisabled),
        _ => Err(Error::FibOther),
    }
}

#[inline(always)]
fn try_xdp(ctx: &XdpContext) -> Result<u32, Error> {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let mut packet = packet::parse(data, data_end)?;
    let entry_ptr = packet::admit(data, data_end, &mut packet)?;
    let ingress = ctx.ingress_ifindex() as u32;
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let hop = next_hop(ctx.ctx as *mut c_void, ingress, now, &packet, entry_ptr)?;
    // SAFETY: see packet::admit; read only from here on.
    let entry = unsafe { &*entry_ptr };
    if packet.v6 {
        rewrite_xdp_v6(data, data_end, &packet, entry, &hop)?;
    } else {
        rewrite_xdp_v4(data, data_end, &packet, entry, &hop)?;
    }
    stats::record(entry, &packet, now);
    if hop.ifindex == ingress {
        count(Counter::Forwarded);
        Ok(xdp_action::XDP_TX)
    } else {
        count(Counter::Redirected);
        // SAFETY: bpf_redirect only records the target for after the program.
        Ok(unsafe { bpf_redirect(hop.ifindex, 0) } as u32)
    }
}

/// Writes `N` bytes at `p`.
///
/// # Safety
/// `N` bytes at `p` are inside the packet.
#[inline(always)]
unsafe fn write<const N: usize>(p: *mut u8, bytes: &[u8; N]) {
    let mut i = 0;
    while i < N {
        // SAFETY: the caller guarantees N writable bytes.
        unsafe { *p.add(i) = bytes[i] };
        i += 1;
    }
}

/// # Safety
/// `ETH_HLEN` bytes at `eth` are inside the packet.
#[inline(always)]
unsafe fn write_macs(eth: *mut u8, hop: &NextHop) {
    // SAFETY: forwarded from the caller.
    unsafe {
        write(eth, &hop.dmac);
        write(eth.add(6), &hop.smac);
    }
}

#[inline(always)]
fn v4_of(a: &[u8; 16]) -> [u8; 4] {
    [a[12], a[13], a[14], a[15]]
}

/// Writes a rewriting entry's RTP header fields and returns the UDP
/// checksum change (zero when the entry does not rewrite). The words sit at
/// even offsets from the UDP header, so they are checksum words as they are.
#[inline(always)]
fn rewrite_xdp_rtp(
    data: usize,
    data_end: usize,
    udp_offset: usize,
    packet: &Packet,
    entry: &ForwardEntry,
) -> Result<u32, Error> {
    if entry.flags & (FLAG_RTP | FLAG_REWRITE) != FLAG_RTP | FLAG_REWRITE {
        return Ok(0);
    }
    let rtp = packet::ptr_at(
        data,
        data_end,
        udp_offset + packet::UDP_HLEN,
        packet::RTP_HLEN as usize,
    )?;
    let (seq, ts) = (
        packet.sent_seq.to_be_bytes(),
        packet.sent_timestamp.to_be_bytes(),
    );
    // SAFETY: RTP_HLEN bytes from `rtp` are in bounds.
    unsafe {
        write(rtp.add(2), &seq);
        write(rtp.add(4), &ts);
        write(rtp.add(8), &packet.sent_ssrc);
    }
    Ok(checksum::diff(&packet.rtp_seq.to_be_bytes(), &seq)
        + checksum::diff(&packet.rtp_timestamp.to_be_bytes(), &ts)
        + checksum::diff(&packet.rtp_ssrc, &packet.sent_ssrc))
}

#[inline(always)]
fn rewrite_xdp_v4(
    data: usize,
    data_end: usize,
    packet: &Packet,
    entry: &ForwardEntry,
    hop: &NextHop,
) -> Result<(), Error> {
    let eth = packet::ptr_at(data, data_end, 0, UDP_OFFSET_V4 + packet::UDP_HLEN)?;
    let (old_src, old_dst) = (v4_of(&packet.src), v4_of(&packet.dst));
    let (new_src, new_dst) = (v4_of(&entry.src_addr), v4_of(&entry.dst_addr));
    let addresses = checksum::diff(&old_src, &new_src) + checksum::diff(&old_dst, &new_dst);
    let ports = checksum::diff(&packet.sport, &entry.src_port)
        + checksum::diff(&packet.dport, &entry.dst_port);
    let rtp = rewrite_xdp_rtp(data, data_end, UDP_OFFSET_V4, packet, entry)?;
    // SAFETY: UDP_OFFSET_V4 + UDP_HLEN bytes from `eth` are in bounds.
    unsafe {
        let ip = eth.add(ETH_HLEN);
        let udp = eth.add(UDP_OFFSET_V4);
        let ip_check = checksum::apply(packet::be16(ip.add(10)), addresses);
        write(ip.add(10), &ip_check.to_be_bytes());
        // IPv4 UDP checksum 0 means "none" and stays so.
        let udp_check = packet::be16(udp.add(6));
        if udp_check != 0 {
            let udp_check = checksum::udp(checksum::apply(udp_check, addresses + ports + rtp));
            write(udp.add(6), &udp_check.to_be_bytes());
        }
        write(ip.add(12), &new_src);
        write(ip.add(16), &new_dst);
        write(udp, &entry.src_port);
        write(udp.add(2), &entry.dst_port);
        write_macs(eth, hop);
    }
    Ok(())
}

#[inline(always)]
fn rewrite_xdp_v6(
    data: usize,
    data_end: usize,
    packet: &Packet,
    entry: &ForwardEntry,
    hop: &NextHop,
) -> Result<(), Error> {
    let eth = packet::ptr_at(data, data_end, 0, UDP_OFFSET_V6 + packet::UDP_HLEN)?;
    let rtp = rewrite_xdp_rtp(data, data_end, UDP_OFFSET_V6, packet, entry)?;
    let sum = checksum::diff(&packet.src, &entry.src_addr)
        + checksum::diff(&packet.dst, &entry.dst_addr)
        + checksum::diff(&packet.sport, &entry.src_port)
        + checksum::diff(&packet.dport, &entry.dst_port)
        + rtp;
    // SAFETY: UDP_OFFSET_V6 + UDP_HLEN bytes from `eth` are in bounds.
    unsafe {
        let ip = eth.add(ETH_HLEN);
        let udp = eth.add(UDP_OFFSET_V6);
        let udp_check = checksum::udp(checksum::apply(packet::be16(udp.add(6)), sum));
        write(udp.add(6), &udp_check.to_be_bytes());
        write(ip.add(8), &entry.src_addr);
        write(ip.add(24), &entry.dst_addr);
        write(udp, &entry.src_port);
        write(udp.add(2), &entry.dst_port);
        write_macs(eth, hop);
    }
    Ok(())
}

#[inline(always)]
fn try_tc(ctx: &TcContext) -> Result<i32, Error> {
    // Direct packet access sees only the linear part; make sure it holds
    // the headers. A failure leaves the skb as it was (parse then says
    // Truncated). Pointers are compared, not subtracted: subtraction needs
    // CAP_PERFMON in the verifier.
    let wanted = UDP_OFFSET_V6 + packet::UDP_HLEN + 12;
    if ctx.data() + wanted > ctx.data_end() {
        let _ = ctx.pull_data((wanted as u32).min(ctx.len()));
    }
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let mut packet = packet::parse(data, data_end)?;
    let entry_ptr = packet::admit(data, data_end, &mut packet)?;
    // SAFETY: ctx.skb.skb is the program's context pointer.
    let ingress = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let hop = next_hop(ctx.skb.skb as *mut c_void, ingress, now, &packet, entry_ptr)?;
    // SAFETY: see packet::admit; read only from here on.
    let entry = unsafe { &*entry_ptr };
    // From here on the skb is being changed: a helper failure leaves it
    // inconsistent, so it is dropped rather than passed.
    rewrite_tc(ctx, &packet, entry, &hop).map_err(|_| Error::RewriteFailed)?;
    stats::record(entry, &packet, now);
    count(Counter::Redirected);
    // SAFETY: bpf_redirect only records the target for after the program.
    Ok(unsafe { bpf_redirect(hop.ifindex, 0) } as i32)
}

/// The 16-byte address as the four native-endian words bpf_csum_diff reads.
#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

#[inline(always)]
fn rewrite_tc(
    ctx: &TcContext,
    packet: &Packet,
    entry: &ForwardEntry,
    hop: &NextHop,
) -> Result<(), i64> {
    let (udp, addr_offset, addr_len) = if packet.v6 {
        (UDP_OFFSET_V6, ETH_HLEN + 8, 16)
    } else {
        (UDP_OFFSET_V4, ETH_HLEN + 12, 4)
    };
    let udp_check = udp + 6;
    // bpf_csum_diff over (src, dst) old → new: one diff for the pseudo
    // header and, on IPv4, the IP header.
    let (old_src, old_dst, new_src, new_dst) = (
        words(&packet.src),
        words(&packet.dst),
        words(&entry.src_addr),
        words(&entry.dst_addr),
    );
    let (mut old, mut new) = if packet.v6 {
        (
            [
                old_src[0], old_src[1], old_src[2], old_src[3], old_dst[0], old_dst[1], old_dst[2],
                old_dst[3],
            ],
            [
                new_src[0], new_src[1], new_src[2], new_src[3], new_dst[0], new_dst[1], new_dst[2],
                new_dst[3],
            ],
        )
    } else {
        (
            [old_src[3], old_dst[3], 0, 0, 0, 0, 0, 0],
            [new_src[3], new_dst[3], 0, 0, 0, 0, 0, 0],
        )
    };
    let size = (addr_len * 2) as u32;
    // SAFETY: both buffers are 32 bytes on the stack; `size` ≤ 32.
    let diff = unsafe { bpf_csum_diff(old.as_mut_ptr(), size, new.as_mut_ptr(), size, 0) };
    if diff < 0 {
        return Err(diff);
    }
    // BPF_F_MARK_MANGLED_0 keeps an IPv4 "no checksum" 0 and turns a
    // computed 0 into 0xFFFF; the pseudo-header flag lets the helper fix a
    // CHECKSUM_PARTIAL seed instead of the final sum.
    let l4_flags = u64::from(BPF_F_MARK_MANGLED_0);
    ctx.l4_csum_replace(
        udp_check,
        0,
        diff as u64,
        l4_flags | u64::from(BPF_F_PSEUDO_HDR),
    )?;
    if !packet.v6 {
        ctx.l3_csum_replace(ETH_HLEN + 10, 0, diff as u64, 0)?;
    }
    let old_ports = u32::from_ne_bytes([
        packet.sport[0],
        packet.sport[1],
        packet.dport[0],
        packet.dport[1],
    ]);
    let new_ports = u32::from_ne_bytes([
        entry.src_port[0],
        entry.src_port[1],
        entry.dst_port[0],
        entry.dst_port[1],
    ]);
    ctx.l4_csum_replace(
        udp_check,
        u64::from(old_ports),
        u64::from(new_ports),
        l4_flags | 4,
    )?;
    if packet.v6 {
        ctx.store(addr_offset, &entry.src_addr, 0)?;
        ctx.store(addr_offset + 16, &entry.dst_addr, 0)?;
    } else {
        ctx.store(addr_offset, &v4_of(&entry.src_addr), 0)?;
        ctx.store(addr_offset + 4, &v4_of(&entry.dst_addr), 0)?;
    }
    ctx.store(udp, &new_ports.to_ne_bytes(), 0)?;
    if entry.flags & (FLAG_RTP | FLAG_REWRITE) == FLAG_RTP | FLAG_REWRITE {
        rewrite_tc_rtp(ctx, udp + packet::UDP_HLEN, udp_check, packet)?;
    }
    let mut macs = [0u8; 12];
    let mut i = 0;
    while i < 6 {
        macs[i] = hop.dmac[i];
        macs[i + 6] = hop.smac[i];
        i += 1;
    }
    ctx.store(0, &macs, 0)?;
    Ok(())
}

/// Writes a rewriting entry's RTP header fields, each with its checksum
/// update. Payload words, not pseudo-header ones: on a CHECKSUM_PARTIAL
/// skb the helper leaves the seed alone, the stack sums the payload on
/// transmit.
#[inline(always)]
fn rewrite_tc_rtp(
    ctx: &TcContext,
    rtp: usize,
    udp_check: usize,
    packet: &Packet,
) -> Result<(), i64> {
    let l4_flags = u64::from(BPF_F_MARK_MANGLED_0);
    // The helpers take the old and new values as the bytes sit in the
    // packet, i.e. wire-order bytes read as native integers.
    let (seq, ts) = (
        packet.sent_seq.to_be_bytes(),
        packet.sent_timestamp.to_be_bytes(),
    );
    ctx.l4_csum_replace(
        udp_check,
        u64::from(u16::from_ne_bytes(packet.rtp_seq.to_be_bytes())),
        u64::from(u16::from_ne_bytes(seq)),
        l4_flags | 2,
    )?;
    ctx.l4_csum_replace(
        udp_check,
        u64::from(u32::from_ne_bytes(packet.rtp_timestamp.to_be_bytes())),
        u64::from(u32::from_ne_bytes(ts)),
        l4_flags | 4,
    )?;
    ctx.l4_csum_replace(
        udp_check,
        u64::from(u32::from_ne_bytes(packet.rtp_ssrc)),
        u64::from(u32::from_ne_bytes(packet.sent_ssrc)),
        l4_flags | 4,
    )?;
    let recompute = u64::from(BPF_F_RECOMPUTE_CSUM);
    ctx.store(rtp + 2, &seq, recompute)?;
    ctx.store(rtp + 4, &ts, recompute)?;
    ctx.store(rtp + 8, &packet.sent_ssrc, recompute)?;
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
