//! Kernel fast path of the Switchboard RTP manager.
//!
//! This first program classifies every packet arriving on the media interface
//! and counts it by the reason of its verdict; everything is passed to the
//! stack, where the userspace relay handles media. Forwarding entries come in a
//! later version: the classification (what is "ours" and what is unusual) is
//! the part they build on.
//!
//! The XDP and TC programs share one classifier so they behave identically.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK},
    macros::{classifier, map, xdp},
    maps::{Array, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use rtpmanager_common::{Counter, ProgramConfig};

#[map(name = "SB_CONFIG")]
static CONFIG: Array<ProgramConfig> = Array::with_max_entries(1, 0);

#[map(name = "SB_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::SLOTS, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_UDP: u8 = 17;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const UDP_HLEN: usize = 8;

#[xdp]
pub fn switchboard_xdp(ctx: XdpContext) -> u32 {
    count(classify(ctx.data(), ctx.data_end()));
    xdp_action::XDP_PASS
}

#[classifier]
pub fn switchboard_tc(ctx: TcContext) -> i32 {
    count(classify(ctx.data(), ctx.data_end()));
    TC_ACT_OK
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

/// Returns a pointer to `len` bytes at `offset` if they lie inside the packet.
#[inline(always)]
fn bytes_at(data: usize, data_end: usize, offset: usize, len: usize) -> Option<*const u8> {
    let start = data.checked_add(offset)?;
    if start + len > data_end {
        return None;
    }
    Some(start as *const u8)
}

#[inline(always)]
fn read_u16_be(p: *const u8) -> u16 {
    // SAFETY: callers obtained `p` from bytes_at with len >= 2.
    unsafe { u16::from_be_bytes([*p, *p.add(1)]) }
}

#[inline(always)]
fn classify(data: usize, data_end: usize) -> Counter {
    let Some(eth) = bytes_at(data, data_end, 0, ETH_HLEN) else {
        return Counter::Truncated;
    };
    // SAFETY: ETH_HLEN bytes are in bounds.
    let ethertype = read_u16_be(unsafe { eth.add(12) });
    let udp_offset = match ethertype {
        ETH_P_IP => {
            let Some(ip) = bytes_at(data, data_end, ETH_HLEN, IPV4_HLEN) else {
                return Counter::Truncated;
            };
            // SAFETY: IPV4_HLEN bytes are in bounds.
            let (version_ihl, frag, proto) =
                unsafe { (*ip, read_u16_be(ip.add(6)), *ip.add(9)) };
            if proto != IPPROTO_UDP {
                return Counter::NotUdp;
            }
            // Options (IHL > 5) or any fragment (MF set or offset != 0):
            // the userspace path handles those.
            if version_ihl != 0x45 || frag & 0x3FFF != 0 {
                return Counter::Unusual;
            }
            ETH_HLEN + IPV4_HLEN
        }
        ETH_P_IPV6 => {
            let Some(ip) = bytes_at(data, data_end, ETH_HLEN, IPV6_HLEN) else {
                return Counter::Truncated;
            };
            // Extension headers (fragment, hop-by-hop …) are "unusual" too:
            // only a UDP next header right after the fixed header is ours.
            // SAFETY: IPV6_HLEN bytes are in bounds.
            if unsafe { *ip.add(6) } != IPPROTO_UDP {
                return Counter::NotUdp;
            }
            ETH_HLEN + IPV6_HLEN
        }
        _ => return Counter::NotIp,
    };
    let Some(udp) = bytes_at(data, data_end, udp_offset, UDP_HLEN) else {
        return Counter::Truncated;
    };
    // SAFETY: UDP_HLEN bytes are in bounds.
    let dport = read_u16_be(unsafe { udp.add(2) });
    let Some(config) = CONFIG.get(0) else {
        return Counter::OtherPort;
    };
    if dport >= config.port_min && dport <= config.port_max {
        Counter::MediaPort
    } else {
        Counter::OtherPort
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
