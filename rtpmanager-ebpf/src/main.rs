//! Kernel fast path of the Switchboard RTP manager.
//!
//! The XDP and TC programs forward bridged RTP/RTCP the way the userspace
//! relay would: a packet addressed to a relay (address, port) with an entry
//! in `SB_FORWARD` (indexed by port), coming from the entry's expected peer, leaves with the
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
mod log;
mod packet;
mod stats;

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, bpf_redir_neigh, xdp_action, BPF_FIB_LKUP_RET_FWD_DISABLED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_F_MARK_MANGLED_0,
        BPF_F_PSEUDO_HDR, BPF_F_RECOMPUTE_CSUM, TC_ACT_OK, TC_ACT_SHOT,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_ktime_get_ns, bpf_redirect, bpf_redirect_neigh},
    macros::{classifier, map, xdp},
    maps::{Array, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use rtpmanager_common::{
    Counter, ForwardEntry, PortEntry, ProgramConfig, StreamStats, FLAG_REWRITE, FLAG_RTP,
    MAX_FORWARDS, STREAM_SLOTS,
};

use packet::{Packet, ETH_HLEN, SRC_OFFSET_V4, SRC_OFFSET_V6, UDP_OFFSET_V4, UDP_OFFSET_V6};

#[map(name = "SB_CONFIG")]
static CONFIG: Array<ProgramConfig> = Array::with_max_entries(1, 0);

#[map(name = "SB_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::SLOTS, 0);

/// One element per media port (the loader sizes it to the range), changed
/// by userspace under a sequence count: see `PortEntry`.
#[map(name = "SB_FORWARD")]
static FORWARD: Array<PortEntry> = Array::with_max_entries(MAX_FORWARDS, 0);

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
    EntryChanging,
    EntryChanged,
    Ipv4HeaderChecksum,
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
            Error::EntryChanging => Counter::EntryChanging,
            Error::EntryChanged => Counter::EntryChanged,
            Error::Ipv4HeaderChecksum => Counter::Ipv4HeaderChecksum,
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
            Error::RewriteFailed | Error::EntryChanged => true,
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
            | Error::MuxedRtcp
            | Error::EntryChanging
            | Error::Ipv4HeaderChecksum => false,
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

/// The egress of a successful route and neighbour lookup; MACs as three
/// wire-order words each.
struct NextHop {
    ifindex: u32,
    smac: [u16; 3],
    dmac: [u16; 3],
}

/// A MAC address as three wire-order words.
///
/// # Safety
/// `mac` is 2-aligned (it is in CachedHop and in bpf_fib_lookup).
#[inline(always)]
unsafe fn mac_words(mac: &[u8; 6]) -> [u16; 3] {
    let p = mac.as_ptr() as *const u16;
    // SAFETY: forwarded from the caller; 6 bytes.
    unsafe { [p.read(), p.add(1).read(), p.add(2).read()] }
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
    let destination = unsafe { (*entry).destination_tag() };
    // SAFETY: as above.
    let cached = unsafe { &mut (*entry).hop };
    if cached.usable(now, ingress, destination) {
        // SAFETY: CachedHop is 8-aligned with the MACs at even offsets.
        return Ok(unsafe {
            NextHop {
                ifindex: cached.ifindex,
                smac: mac_words(&cached.smac),
                dmac: mac_words(&cached.dmac),
            }
        });
    }
    // SAFETY: as above, read only.
    let entry = unsafe { &*entry };
    let params = lookup_next_hop(ctx, ingress, packet, entry).inspect_err(|e| {
        log::no_next_hop(
            u16::from_be_bytes(entry.dst_port),
            ingress,
            e.counter().name(),
        );
    })?;
    // SAFETY: bpf_fib_lookup is 4-aligned with the MACs at even offsets.
    let hop = unsafe {
        NextHop {
            ifindex: params.ifindex,
            smac: mac_words(&params.smac),
            dmac: mac_words(&params.dmac),
        }
    };
    let ttl = CONFIG.get(0).map_or(0, |c| c.next_hop_ttl_ns);
    if ttl != 0 {
        cached.expires_ns = now + ttl;
        cached.ingress = ingress;
        cached.ifindex = params.ifindex;
        cached.smac = params.smac;
        cached.dmac = params.dmac;
        cached.tag = cached.tag_of(destination);
    }
    Ok(hop)
}

/// Looks up the route to the entry's destination as the stack would when
/// forwarding a packet received on `ingress`, neighbour included; the
/// result is in the per-CPU scratch slot.
///
/// A BPF subprogram rather than inlined: it is the cache-miss path.
#[inline(never)]
fn lookup_next_hop(
    ctx: *mut c_void,
    ingress: u32,
    packet: &Packet,
    entry: &ForwardEntry,
) -> Result<&'static bpf_fib_lookup, Error> {
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
    // Entry addresses are 8-aligned: read them as words.
    let (s, d) = (
        entry.src_addr.as_ptr() as *const u32,
        entry.dst_addr.as_ptr() as *const u32,
    );
    // SAFETY: 16-byte, 8-aligned fields.
    unsafe {
        if packet.v6 {
            params.family = AF_INET6;
            params.__bindgen_anon_3.ipv6_src =
                [s.read(), s.add(1).read(), s.add(2).read(), s.add(3).read()];
            params.__bindgen_anon_4.ipv6_dst =
                [d.read(), d.add(1).read(), d.add(2).read(), d.add(3).read()];
        } else {
            params.family = AF_INET;
            params.__bindgen_anon_3.ipv4_src = s.add(3).read();
            params.__bindgen_anon_4.ipv4_dst = d.add(3).read();
        }
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
        BPF_FIB_LKUP_RET_SUCCESS => Ok(params),
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
    let (port, seq) = packet::admit(data, data_end, &mut packet)?;
    // SAFETY: `port` is a live SB_FORWARD element (array elements live as
    // long as the map).
    let entry_ptr = unsafe { &raw mut (*port).entry };
    let ingress = ctx.ingress_ifindex() as u32;
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let hop = next_hop(ctx.ctx as *mut c_void, ingress, now, &packet, entry_ptr)?;
    // SAFETY: see packet::admit; read only from here on.
    let entry = unsafe { &*entry_ptr };
    if packet.v6 {
        rewrite_xdp::<8>(
            data,
            data_end,
            SRC_OFFSET_V6,
            UDP_OFFSET_V6,
            &packet,
            entry,
            &hop,
        )?;
    } else {
        rewrite_xdp::<2>(
            data,
            data_end,
            SRC_OFFSET_V4,
            UDP_OFFSET_V4,
            &packet,
            entry,
            &hop,
        )?;
    }
    packet::unchanged_since(port, seq)?;
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

/// The checksum changes of a rewrite, as one's complement sums of
/// Σ(~old + new) over wire-order words: `addresses` is in the IPv4 header
/// and the UDP pseudo header, `l4` (ports, RTP header) in the UDP header
/// and payload only.
struct Sums {
    addresses: u32,
    l4: u32,
}

/// Computes the rewrite's checksum changes from the packet as received
/// (nothing is written). `WORDS` is 2 for IPv4, 8 for IPv6.
///
/// # Safety
/// The addresses at `addr_offset` from `eth` are inside the packet, at
/// even offsets (see the packet module on alignment).
#[inline(always)]
unsafe fn sums<const WORDS: usize>(
    eth: *const u8,
    addr_offset: usize,
    packet: &Packet,
    entry: &ForwardEntry,
) -> Sums {
    let first = 8 - WORDS;
    let (src, dst) = (
        // SAFETY: forwarded from the caller.
        unsafe { eth.add(addr_offset) },
        unsafe { eth.add(addr_offset + 2 * WORDS) },
    );
    let mut addresses = 0;
    let mut i = 0;
    while i < WORDS {
        // SAFETY: forwarded from the caller.
        let (old_src, old_dst) =
            unsafe { (packet::word(src.add(2 * i)), packet::word(dst.add(2 * i))) };
        addresses += checksum::change(old_src, packet::address_word(&entry.src_addr, first + i))
            + checksum::change(old_dst, packet::address_word(&entry.dst_addr, first + i));
        i += 1;
    }
    let mut l4 = checksum::change(packet.sport, u16::from_ne_bytes(entry.src_port))
        + checksum::change(packet.dport, u16::from_ne_bytes(entry.dst_port));
    if rewrites_rtp(entry) {
        let (old_ts, new_ts) = (packet.rtp_timestamp.to_be(), packet.sent_timestamp.to_be());
        l4 += checksum::change(packet.rtp_seq.to_be(), packet.sent_seq.to_be())
            + checksum::change(old_ts as u16, new_ts as u16)
            + checksum::change((old_ts >> 16) as u16, (new_ts >> 16) as u16)
            + checksum::change(packet.rtp_ssrc as u16, packet.sent_ssrc as u16)
            + checksum::change(
                (packet.rtp_ssrc >> 16) as u16,
                (packet.sent_ssrc >> 16) as u16,
            );
    }
    Sums { addresses, l4 }
}

#[inline(always)]
fn rewrites_rtp(entry: &ForwardEntry) -> bool {
    entry.flags & (FLAG_RTP | FLAG_REWRITE) == FLAG_RTP | FLAG_REWRITE
}

/// Rewrites addresses, ports, a rewriting entry's RTP header fields and
/// MACs in place, with RFC 1624 checksum updates. `WORDS` is 2 for IPv4,
/// 8 for IPv6.
#[inline(always)]
fn rewrite_xdp<const WORDS: usize>(
    data: usize,
    data_end: usize,
    addr_offset: usize,
    udp_offset: usize,
    packet: &Packet,
    entry: &ForwardEntry,
    hop: &NextHop,
) -> Result<(), Error> {
    let len = udp_offset + packet::UDP_HLEN + packet::RTP_HLEN as usize;
    let eth = if rewrites_rtp(entry) {
        packet::ptr_at(data, data_end, 0, len)?
    } else {
        packet::ptr_at(data, data_end, 0, udp_offset + packet::UDP_HLEN)?
    };
    // SAFETY: the lengths were checked just above; the offsets are even
    // (see the packet module on alignment).
    unsafe {
        let Sums { addresses, l4 } = sums::<WORDS>(eth, addr_offset, packet, entry);
        let first = 8 - WORDS;
        let (src, dst) = (eth.add(addr_offset), eth.add(addr_offset + 2 * WORDS));
        let mut i = 0;
        while i < WORDS {
            packet::set_word(
                src.add(2 * i),
                packet::address_word(&entry.src_addr, first + i),
            );
            packet::set_word(
                dst.add(2 * i),
                packet::address_word(&entry.dst_addr, first + i),
            );
            i += 1;
        }
        let udp = eth.add(udp_offset);
        let check = packet::word(udp.add(6));
        if WORDS == 2 {
            let ip_check = eth.add(ETH_HLEN + 10);
            packet::set_word(ip_check, checksum::apply(packet::word(ip_check), addresses));
        }
        // IPv4 UDP checksum 0 means "none" and stays so (IPv6 has none 0).
        if check != 0 {
            packet::set_word(
                udp.add(6),
                checksum::udp(checksum::apply(check, addresses + l4)),
            );
        }
        packet::set_word(udp, u16::from_ne_bytes(entry.src_port));
        packet::set_word(udp.add(2), u16::from_ne_bytes(entry.dst_port));
        if rewrites_rtp(entry) {
            let rtp = udp.add(packet::UDP_HLEN);
            packet::set_word(rtp.add(2), packet.sent_seq.to_be());
            packet::set_word32(rtp.add(4), packet.sent_timestamp.to_be());
            packet::set_word32(rtp.add(8), packet.sent_ssrc);
        }
        let mut i = 0;
        while i < 3 {
            packet::set_word(eth.add(2 * i), hop.dmac[i]);
            packet::set_word(eth.add(6 + 2 * i), hop.smac[i]);
            i += 1;
        }
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
    let (port, seq) = packet::admit(data, data_end, &mut packet)?;
    // SAFETY: as in try_xdp.
    let entry_ptr = unsafe { &raw mut (*port).entry };
    // SAFETY: ctx.skb.skb is the program's context pointer.
    let ingress = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let hop = match next_hop(ctx.skb.skb as *mut c_void, ingress, now, &packet, entry_ptr) {
        Ok(hop) => Some(hop),
        // The route is known, its neighbour not yet: the rewritten packet
        // goes to bpf_redirect_neigh, which resolves it as the stack would
        // (queued meanwhile) and writes the MACs.
        Err(Error::FibNoNeigh) => None,
        Err(e) => return Err(e),
    };
    // SAFETY: see packet::admit; read only from here on.
    let entry = unsafe { &*entry_ptr };
    // From here on the skb is being changed: a helper failure leaves it
    // inconsistent, so it is dropped rather than passed.
    let rewritten = if packet.v6 {
        rewrite_tc::<8, 18>(
            ctx,
            data,
            data_end,
            SRC_OFFSET_V6,
            UDP_OFFSET_V6,
            &packet,
            entry,
            hop.as_ref(),
        )
    } else {
        rewrite_tc::<2, 6>(
            ctx,
            data,
            data_end,
            SRC_OFFSET_V4,
            UDP_OFFSET_V4,
            &packet,
            entry,
            hop.as_ref(),
        )
    };
    rewritten.map_err(|e| {
        log::tc_rewrite_failed(e);
        Error::RewriteFailed
    })?;
    packet::unchanged_since(port, seq)?;
    stats::record(entry, &packet, now);
    match hop {
        Some(hop) => {
            count(Counter::Redirected);
            // SAFETY: bpf_redirect only records the target for after the program.
            Ok(unsafe { bpf_redirect(hop.ifindex, 0) } as i32)
        }
        None => {
            let params = SCRATCH.get_ptr_mut(0).ok_or(Error::RewriteFailed)?;
            // SAFETY: the per-CPU slot still holds this run's lookup, which
            // left the egress and the next hop's address (the gateway, or
            // the destination on a link) in it.
            let (ifindex, mut neigh) = unsafe {
                let params = &*params;
                let mut neigh: bpf_redir_neigh = core::mem::zeroed();
                if packet.v6 {
                    neigh.nh_family = u32::from(AF_INET6);
                    neigh.__bindgen_anon_1.ipv6_nh = params.__bindgen_anon_4.ipv6_dst;
                } else {
                    neigh.nh_family = u32::from(AF_INET);
                    neigh.__bindgen_anon_1.ipv4_nh = params.__bindgen_anon_4.ipv4_dst;
                }
                (params.ifindex, neigh)
            };
            count(Counter::RedirectedNeigh);
            // SAFETY: `neigh` is a valid bpf_redir_neigh of the size passed.
            Ok(unsafe {
                bpf_redirect_neigh(
                    ifindex,
                    &mut neigh,
                    core::mem::size_of::<bpf_redir_neigh>() as i32,
                    0,
                )
            } as i32)
        }
    }
}

/// The TC rewrite: the same changes as XDP's, through the skb helpers,
/// which keep `skb->csum` right for CHECKSUM_COMPLETE and update only the
/// pseudo-header seed of a CHECKSUM_PARTIAL packet (whose payload the stack
/// or the NIC sums on transmit). `STORE` is the number of words of the
/// addresses and ports, which are contiguous (2 × WORDS + 2).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rewrite_tc<const WORDS: usize, const STORE: usize>(
    ctx: &TcContext,
    data: usize,
    data_end: usize,
    addr_offset: usize,
    udp_offset: usize,
    packet: &Packet,
    entry: &ForwardEntry,
    hop: Option<&NextHop>,
) -> Result<(), i64> {
    let len = udp_offset + packet::UDP_HLEN + packet::RTP_HLEN as usize;
    let eth = if rewrites_rtp(entry) {
        packet::ptr_at(data, data_end, 0, len)
    } else {
        packet::ptr_at(data, data_end, 0, udp_offset + packet::UDP_HLEN)
    }
    .map_err(|_| -1i64)?;
    // SAFETY: as in rewrite_xdp; read only.
    let Sums { addresses, l4 } = unsafe { sums::<WORDS>(eth, addr_offset, packet, entry) };
    let check = udp_offset + 6;
    // Size 0 in the flags: `to` is a checksum difference, not a field.
    let mangled_0 = u64::from(BPF_F_MARK_MANGLED_0);
    ctx.l4_csum_replace(
        check,
        0,
        u64::from(addresses),
        mangled_0 | u64::from(BPF_F_PSEUDO_HDR),
    )?;
    ctx.l4_csum_replace(check, 0, u64::from(l4), mangled_0)?;
    if WORDS == 2 {
        ctx.l3_csum_replace(ETH_HLEN + 10, 0, u64::from(addresses), 0)?;
    }
    // The helpers invalidated the packet pointers: what remains is written
    // through bpf_skb_store_bytes, with skb->csum kept (RECOMPUTE_CSUM).
    let recompute = u64::from(BPF_F_RECOMPUTE_CSUM);
    let first = 8 - WORDS;
    let mut words = [0u16; STORE];
    let mut i = 0;
    while i < WORDS {
        words[i] = packet::address_word(&entry.src_addr, first + i);
        words[WORDS + i] = packet::address_word(&entry.dst_addr, first + i);
        i += 1;
    }
    words[2 * WORDS] = u16::from_ne_bytes(entry.src_port);
    words[2 * WORDS + 1] = u16::from_ne_bytes(entry.dst_port);
    ctx.store(addr_offset, &words, recompute)?;
    if rewrites_rtp(entry) {
        let (ts, ssrc) = (packet.sent_timestamp.to_be(), packet.sent_ssrc);
        let rtp = [
            packet.sent_seq.to_be(),
            ts as u16,
            (ts >> 16) as u16,
            ssrc as u16,
            (ssrc >> 16) as u16,
        ];
        ctx.store(udp_offset + packet::UDP_HLEN + 2, &rtp, recompute)?;
    }
    // Without a hop the neighbour subsystem writes the MACs.
    if let Some(hop) = hop {
        let macs = [
            hop.dmac[0],
            hop.dmac[1],
            hop.dmac[2],
            hop.smac[0],
            hop.smac[1],
            hop.smac[2],
        ];
        ctx.store(0, &macs, recompute)?;
    }
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
