//! Parsing shared by the XDP and TC programs: Ethernet → IPv4/IPv6 → UDP,
//! the forwarding-entry lookup and the checks that decide whether the kernel
//! may own a packet. Nothing here writes to the packet, so every error
//! leaves the original packet for the stack.

use rtpmanager_common::{
    is_v4_mapped, ForwardEntry, ForwardKey, FLAG_PASS_PAYLOAD_TYPE, FLAG_REWRITE, FLAG_RTCP,
    FLAG_RTP, FLAG_STRICT_SOURCE,
};

use crate::{Error, CONFIG, FORWARD};

pub const ETH_HLEN: usize = 14;
pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const UDP_HLEN: usize = 8;
/// Offset of the UDP header behind an IPv4 header without options.
pub const UDP_OFFSET_V4: usize = ETH_HLEN + IPV4_HLEN;
/// Offset of the UDP header right behind the IPv6 fixed header.
pub const UDP_OFFSET_V6: usize = ETH_HLEN + IPV6_HLEN;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_UDP: u8 = 17;
pub const RTP_HLEN: u32 = 12;
const RTCP_HLEN: u32 = 8;

/// What the programs need of a UDP packet, read before any change.
pub struct Packet {
    pub v6: bool,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    /// IPv4 total length or IPv6 fixed header + payload: the fib lookup's MTU check.
    pub ip_len: u16,
    /// UDP payload bytes.
    pub payload_len: u32,
    /// RTP sequence number and timestamp (zero unless the entry is RTP).
    pub rtp_seq: u16,
    pub rtp_timestamp: u32,
    /// RTP SSRC as received (wire order).
    pub rtp_ssrc: [u8; 4],
    /// The RTP header fields as the packet leaves: the received ones, or
    /// the rewritten ones on a rewriting entry (zero unless the entry is RTP).
    pub sent_ssrc: [u8; 4],
    pub sent_seq: u16,
    pub sent_timestamp: u32,
}

/// A pointer to `len` bytes at `offset`, or Truncated.
#[inline(always)]
pub fn ptr_at(data: usize, data_end: usize, offset: usize, len: usize) -> Result<*mut u8, Error> {
    let start = data + offset;
    if start + len > data_end {
        return Err(Error::Truncated);
    }
    Ok(start as *mut u8)
}

/// Big-endian u16 at `p`.
///
/// # Safety
/// `p` and `p + 1` are inside the packet.
#[inline(always)]
pub unsafe fn be16(p: *const u8) -> u16 {
    // SAFETY: the caller guarantees two readable bytes.
    unsafe { u16::from_be_bytes([*p, *p.add(1)]) }
}

/// Copies `N` packet bytes at `p`.
///
/// # Safety
/// `N` bytes at `p` are inside the packet.
#[inline(always)]
pub unsafe fn read<const N: usize>(p: *const u8) -> [u8; N] {
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        // SAFETY: the caller guarantees N readable bytes.
        out[i] = unsafe { *p.add(i) };
        i += 1;
    }
    out
}

/// The IPv4-mapped form of the 4 address bytes at `p`.
///
/// # Safety
/// 4 bytes at `p` are inside the packet.
#[inline(always)]
unsafe fn read_v4_mapped(p: *const u8) -> [u8; 16] {
    // SAFETY: forwarded from the caller.
    let v4: [u8; 4] = unsafe { read(p) };
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// Whether two 16-byte addresses are equal (a loop: eBPF has no memcmp).
#[inline(always)]
pub fn same_address(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let mut diff = 0u8;
    let mut i = 0;
    while i < 16 {
        diff |= a[i] ^ b[i];
        i += 1;
    }
    diff == 0
}

/// Parses the headers up to UDP and applies the port-range filter.
#[inline(always)]
pub fn parse(data: usize, data_end: usize) -> Result<Packet, Error> {
    let eth = ptr_at(data, data_end, 0, ETH_HLEN)?;
    // SAFETY: ETH_HLEN bytes are in bounds.
    let ethertype = unsafe { be16(eth.add(12)) };
    let (v6, src, dst, ip_len, ip_payload, udp_offset) = match ethertype {
        ETH_P_IP => {
            let ip = ptr_at(data, data_end, ETH_HLEN, IPV4_HLEN)?;
            // SAFETY: IPV4_HLEN bytes are in bounds.
            let (version_ihl, total, frag, proto) =
                unsafe { (*ip, be16(ip.add(2)), be16(ip.add(6)), *ip.add(9)) };
            if version_ihl >> 4 != 4 {
                return Err(Error::NotIp);
            }
            if proto != IPPROTO_UDP {
                return Err(Error::NotUdp);
            }
            // Non-first fragments carry no UDP header, and a first fragment
            // is not the whole datagram: the stack reassembles.
            if frag & 0x3FFF != 0 {
                return Err(Error::Fragment);
            }
            match version_ihl & 0x0F {
                5 => {}
                0..=4 => return Err(Error::Truncated),
                _ => return Err(Error::IpOptions),
            }
            let total = total as usize;
            if total < IPV4_HLEN + UDP_HLEN || data + ETH_HLEN + total > data_end {
                return Err(Error::Truncated);
            }
            // SAFETY: IPV4_HLEN bytes are in bounds.
            let (src, dst) = unsafe { (read_v4_mapped(ip.add(12)), read_v4_mapped(ip.add(16))) };
            (
                false,
                src,
                dst,
                total as u16,
                total - IPV4_HLEN,
                UDP_OFFSET_V4,
            )
        }
        ETH_P_IPV6 => {
            let ip = ptr_at(data, data_end, ETH_HLEN, IPV6_HLEN)?;
            // SAFETY: IPV6_HLEN bytes are in bounds.
            let (version, payload, next) = unsafe { (*ip >> 4, be16(ip.add(4)), *ip.add(6)) };
            if version != 6 {
                return Err(Error::NotIp);
            }
            match next {
                IPPROTO_UDP => {}
                // Hop-by-hop, routing, fragment, ESP, AH, destination
                // options, mobility, HIP, shim6: the stack walks those.
                0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 => {
                    return Err(Error::Ipv6ExtensionHeader)
                }
                _ => return Err(Error::NotUdp),
            }
            let payload = payload as usize;
            if payload < UDP_HLEN || data + ETH_HLEN + IPV6_HLEN + payload > data_end {
                return Err(Error::Truncated);
            }
            // SAFETY: IPV6_HLEN bytes are in bounds.
            let (src, dst) = unsafe { (read::<16>(ip.add(8)), read::<16>(ip.add(24))) };
            (
                true,
                src,
                dst,
                (IPV6_HLEN + payload) as u16,
                payload,
                UDP_OFFSET_V6,
            )
        }
        _ => return Err(Error::NotIp),
    };

    let udp = ptr_at(data, data_end, udp_offset, UDP_HLEN)?;
    // SAFETY: UDP_HLEN bytes are in bounds.
    let (sport, dport, udp_len, check) = unsafe {
        (
            read::<2>(udp),
            read::<2>(udp.add(2)),
            be16(udp.add(4)),
            be16(udp.add(6)),
        )
    };
    let udp_len = udp_len as usize;
    if udp_len < UDP_HLEN || udp_len > ip_payload {
        return Err(Error::Truncated);
    }
    let port = u16::from_be_bytes(dport);
    let Some(config) = CONFIG.get(0) else {
        return Err(Error::OtherPort);
    };
    if port < config.port_min || port > config.port_max {
        return Err(Error::OtherPort);
    }
    if v6 && check == 0 {
        return Err(Error::Ipv6ZeroChecksum);
    }
    Ok(Packet {
        v6,
        src,
        dst,
        sport,
        dport,
        ip_len,
        payload_len: (udp_len - UDP_HLEN) as u32,
        rtp_seq: 0,
        rtp_timestamp: 0,
        rtp_ssrc: [0; 4],
        sent_ssrc: [0; 4],
        sent_seq: 0,
        sent_timestamp: 0,
    })
}

/// Finds the packet's entry and checks that the kernel may forward it:
/// same family on both legs, the expected source, and RTP/RTCP that looks
/// like RTP/RTCP, of the rewritten SSRC on a rewriting entry. Reads the RTP
/// fields into `packet` for the stream stats and the rewrite.
#[inline(always)]
///
/// The entry is returned as a pointer because the programs write its
/// next-hop cache ([`ForwardEntry::hop`]); SB_FORWARD is not preallocated,
/// so a replaced or removed element is freed only after an RCU grace
/// period and the pointer stays valid for the program run.
pub fn admit(
    data: usize,
    data_end: usize,
    packet: &mut Packet,
) -> Result<*mut ForwardEntry, Error> {
    let key = ForwardKey {
        addr: packet.dst,
        port: packet.dport,
        pad: [0; 2],
    };
    let entry_ptr = FORWARD.get_ptr_mut(&key).ok_or(Error::NoEntry)?;
    // SAFETY: valid for the program run (see above); only the hop cache
    // is ever written, by next_hop.
    let entry: &ForwardEntry = unsafe { &*entry_ptr };
    // Changing the family would change the header sizes: that is the
    // userspace relay's job.
    let v4 = !packet.v6;
    if is_v4_mapped(&entry.src_addr) != v4 || is_v4_mapped(&entry.dst_addr) != v4 {
        return Err(Error::FamilyMismatch);
    }
    if !same_address(&packet.src, &entry.expected_addr) || packet.sport != entry.expected_port {
        if entry.flags & FLAG_STRICT_SOURCE != 0 {
            crate::stats::record_source_drop(entry);
            return Err(Error::SourceMismatchDrop);
        }
        return Err(Error::SourceMismatchPass);
    }
    if entry.flags & (FLAG_RTP | FLAG_RTCP) != 0 {
        let min_len = if entry.flags & FLAG_RTP != 0 {
            RTP_HLEN
        } else {
            RTCP_HLEN
        };
        if packet.payload_len < min_len {
            return Err(Error::NotRtp);
        }
        let offset = if packet.v6 {
            UDP_OFFSET_V6
        } else {
            UDP_OFFSET_V4
        } + UDP_HLEN;
        // The IP and UDP lengths were checked against the frame, so these
        // reads only fail on a frame the verifier cannot see through.
        let rtp = ptr_at(data, data_end, offset, RTCP_HLEN as usize)?;
        // SAFETY: RTCP_HLEN bytes are in bounds.
        let first = unsafe { *rtp };
        // Version 2 in the top bits; STUN (0/1) and DTLS (20–63) start
        // with version 0 and belong to userspace.
        if first >> 6 != 2 {
            return Err(Error::NotRtp);
        }
        if entry.flags & FLAG_RTP != 0 {
            let rtp = ptr_at(data, data_end, offset, RTP_HLEN as usize)?;
            // SAFETY: RTP_HLEN bytes are in bounds.
            let (seq, ts, ssrc) = unsafe {
                (
                    be16(rtp.add(2)),
                    read::<4>(rtp.add(4)),
                    read::<4>(rtp.add(8)),
                )
            };
            // SAFETY: RTP_HLEN bytes are in bounds.
            let marker_payload_type = unsafe { *rtp.add(1) };
            // RFC 5761 §4: with rtcp-mux, RTCP (packet types 200–204) sits
            // where RTP has marker and payload type 64–95, which RTP does
            // not use. The relay forwards it to the RTCP destination.
            if (64..=95).contains(&(marker_payload_type & 0x7F)) {
                return Err(Error::MuxedRtcp);
            }
            let ts = u32::from_be_bytes(ts);
            packet.rtp_seq = seq;
            packet.rtp_timestamp = ts;
            packet.rtp_ssrc = ssrc;
            packet.sent_ssrc = ssrc;
            packet.sent_seq = seq;
            packet.sent_timestamp = ts;
            if entry.flags & FLAG_PASS_PAYLOAD_TYPE != 0 {
                let payload_type = marker_payload_type & 0x7F;
                if payload_type == entry.pass_payload_type {
                    // Its sequence number is the stream's: the kernel's
                    // loss figure must not count it as lost.
                    crate::stats::record_passed(entry, seq);
                    return Err(Error::PassedPayloadType);
                }
            }
            if entry.flags & FLAG_REWRITE != 0 {
                // Offsets belong to one source stream; another SSRC is the
                // relay's to re-anchor.
                if u32::from_ne_bytes(ssrc) != u32::from_ne_bytes(entry.rewrite_source_ssrc) {
                    return Err(Error::RewriteSsrcMismatch);
                }
                packet.sent_ssrc = entry.rewrite_ssrc;
                packet.sent_seq = seq.wrapping_add(entry.rewrite_sequence_offset);
                packet.sent_timestamp = ts.wrapping_add(entry.rewrite_timestamp_offset);
            }
        }
    }
    Ok(entry_ptr)
}
