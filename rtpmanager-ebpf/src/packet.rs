//! Parsing shared by the XDP and TC programs: Ethernet → IPv4/IPv6 → UDP,
//! the forwarding-entry lookup and the checks that decide whether the kernel
//! may own a packet. Nothing here writes to the packet, so every error
//! leaves the original packet for the stack.
//!
//! Headers are read as 16-bit words in place: addresses are never copied
//! out of the packet (the programs' stack is 512 bytes, and every copy is
//! instructions on the per-packet path). Frames start at an even address
//! (XDP data follows a 256-byte headroom; an skb's MAC header sits
//! NET_IP_ALIGN before a network header every driver places 2-aligned or
//! better), so every header field at an even offset is 2-aligned and read
//! as one 16-bit word. (The verifier forbids testing a packet pointer's
//! bits, so this is an assumption about Linux, not a check; on x86-64 and
//! arm64, the JIT targets of this manager, a misaligned load would still
//! be correct, only slower.) Words are kept in wire order
//! (read as native integers): one's complement sums do not depend on byte
//! order (RFC 1071 §2(B)), so the checksum updates need no swaps either.

use rtpmanager_common::{
    ForwardEntry, PortEntry, FLAG_PASS_PAYLOAD_TYPE, FLAG_REWRITE, FLAG_RTCP, FLAG_RTP,
    FLAG_STRICT_SOURCE,
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
/// Offsets of the source address (the destination follows it).
pub const SRC_OFFSET_V4: usize = ETH_HLEN + 12;
pub const SRC_OFFSET_V6: usize = ETH_HLEN + 8;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_UDP: u8 = 17;
pub const RTP_HLEN: u32 = 12;
const RTCP_HLEN: u32 = 8;

/// The IPv4-mapped prefix `::ffff:0:0/96` as the three native 32-bit words
/// of an entry address.
const V4_MAPPED: [u32; 3] = [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff])];

/// What the programs need of a UDP packet, read before any change.
pub struct Packet {
    pub v6: bool,
    /// Ports in wire order.
    pub sport: u16,
    pub dport: u16,
    /// The destination port's index in SB_FORWARD (port − port_min).
    pub port_index: u32,
    /// IPv4 total length or IPv6 fixed header + payload: the fib lookup's MTU check.
    pub ip_len: u16,
    /// UDP payload bytes.
    pub payload_len: u32,
    /// RTP sequence number and timestamp (zero unless the entry is RTP).
    pub rtp_seq: u16,
    pub rtp_timestamp: u32,
    /// RTP SSRC as received (wire order).
    pub rtp_ssrc: u32,
    /// The RTP header fields as the packet leaves: the received ones, or
    /// the rewritten ones on a rewriting entry (zero unless the entry is RTP).
    pub sent_ssrc: u32,
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

/// The 16-bit word at `p`, in wire order.
///
/// # Safety
/// `p` and `p + 1` are inside the packet at an even offset (see the module).
#[inline(always)]
pub unsafe fn word(p: *const u8) -> u16 {
    // SAFETY: forwarded from the caller.
    unsafe { (p as *const u16).read() }
}

/// Writes the wire-order word `w` at `p`.
///
/// # Safety
/// As [`word`], and the packet is writable.
#[inline(always)]
pub unsafe fn set_word(p: *mut u8, w: u16) {
    // SAFETY: forwarded from the caller.
    unsafe { (p as *mut u16).write(w) }
}

/// Big-endian u16 at `p`.
///
/// # Safety
/// As [`word`].
#[inline(always)]
pub unsafe fn be16(p: *const u8) -> u16 {
    // SAFETY: forwarded from the caller.
    u16::from_be(unsafe { word(p) })
}

/// The wire-order 32-bit value at `p` (two aligned words).
///
/// # Safety
/// As [`word`], for 4 bytes.
#[inline(always)]
pub unsafe fn word32(p: *const u8) -> u32 {
    // SAFETY: forwarded from the caller.
    unsafe { u32::from(word(p)) | (u32::from(word(p.add(2))) << 16) }
}

/// Writes the wire-order 32-bit value `w` at `p`.
///
/// # Safety
/// As [`set_word`], for 4 bytes.
#[inline(always)]
pub unsafe fn set_word32(p: *mut u8, w: u32) {
    // SAFETY: forwarded from the caller.
    unsafe {
        set_word(p, w as u16);
        set_word(p.add(2), (w >> 16) as u16);
    }
}

/// Word `i` of a 16-byte entry or key address (8-aligned in the entry,
/// 4-aligned in the key).
#[inline(always)]
pub fn address_word(address: &[u8; 16], i: usize) -> u16 {
    // SAFETY: i < 8 at every call site; the address is at least 2-aligned
    // (ForwardEntry is 8-aligned with addresses at multiples of 16,
    // ForwardKey 4-aligned with the address first; asserted in
    // rtpmanager-common).
    unsafe { (address.as_ptr() as *const u16).add(i).read() }
}

/// Whether an entry address is IPv4-mapped (three aligned 32-bit words).
#[inline(always)]
fn entry_is_v4(address: &[u8; 16]) -> bool {
    let p = address.as_ptr() as *const u32;
    // SAFETY: 8-aligned 16-byte field of ForwardEntry.
    unsafe {
        p.read() == V4_MAPPED[0]
            && p.add(1).read() == V4_MAPPED[1]
            && p.add(2).read() == V4_MAPPED[2]
    }
}

/// Parses the headers up to UDP and applies the port-range filter.
#[inline(always)]
pub fn parse(data: usize, data_end: usize) -> Result<Packet, Error> {
    let eth = ptr_at(data, data_end, 0, ETH_HLEN)?;
    // SAFETY: ETH_HLEN bytes are in bounds, even offset.
    let ethertype = unsafe { be16(eth.add(12)) };
    let (v6, ip_len, ip_payload, udp_offset) = match ethertype {
        ETH_P_IP => {
            let ip = ptr_at(data, data_end, ETH_HLEN, IPV4_HLEN)?;
            // SAFETY: IPV4_HLEN bytes are in bounds, even offsets.
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
            // The stack drops a header with a bad checksum (ip_rcv) before
            // any socket sees it; forwarding it would let it through.
            let mut sum = 0u32;
            let mut i = 0;
            while i < IPV4_HLEN {
                // SAFETY: IPV4_HLEN bytes are in bounds, even offsets.
                sum += u32::from(unsafe { word(ip.add(i)) });
                i += 2;
            }
            sum = (sum & 0xFFFF) + (sum >> 16);
            sum = (sum & 0xFFFF) + (sum >> 16);
            if sum != 0xFFFF {
                return Err(Error::Ipv4HeaderChecksum);
            }
            (false, total as u16, total - IPV4_HLEN, UDP_OFFSET_V4)
        }
        ETH_P_IPV6 => {
            let ip = ptr_at(data, data_end, ETH_HLEN, IPV6_HLEN)?;
            // SAFETY: IPV6_HLEN bytes are in bounds, even offsets.
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
            (true, (IPV6_HLEN + payload) as u16, payload, UDP_OFFSET_V6)
        }
        _ => return Err(Error::NotIp),
    };

    let udp = ptr_at(data, data_end, udp_offset, UDP_HLEN)?;
    // SAFETY: UDP_HLEN bytes are in bounds, even offsets.
    let (sport, dport, udp_len, check) = unsafe {
        (
            word(udp),
            word(udp.add(2)),
            be16(udp.add(4)),
            word(udp.add(6)),
        )
    };
    let udp_len = udp_len as usize;
    if udp_len < UDP_HLEN || udp_len > ip_payload {
        return Err(Error::Truncated);
    }
    let port = u16::from_be(dport);
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
        sport,
        dport,
        port_index: u32::from(port - config.port_min),
        ip_len,
        payload_len: (udp_len - UDP_HLEN) as u32,
        rtp_seq: 0,
        rtp_timestamp: 0,
        rtp_ssrc: 0,
        sent_ssrc: 0,
        sent_seq: 0,
        sent_timestamp: 0,
    })
}

/// Whether the packet's address at `src` is `expected` (an entry address).
///
/// # Safety
/// The address at `src` is inside the packet.
#[inline(always)]
unsafe fn address_is(src: *const u8, v6: bool, expected: &[u8; 16]) -> bool {
    let mut diff = 0u16;
    if v6 {
        let mut i = 0;
        while i < 8 {
            // SAFETY: forwarded from the caller.
            diff |= unsafe { word(src.add(2 * i)) } ^ address_word(expected, i);
            i += 1;
        }
    } else {
        // SAFETY: forwarded from the caller.
        diff = unsafe { word(src) ^ address_word(expected, 6) }
            | unsafe { word(src.add(2)) ^ address_word(expected, 7) };
    }
    diff == 0
}

/// Finds the packet's entry and checks that the kernel may forward it:
/// same family on both legs, the expected source, and RTP/RTCP that looks
/// like RTP/RTCP, of the rewritten SSRC on a rewriting entry. Reads the RTP
/// fields into `packet` for the stream stats and the rewrite.
///
/// Returns the port's element and the sequence count it was read under
/// (see `PortEntry`); the caller checks it again with [`unchanged_since`]
/// before the packet leaves. The programs write the entry's next-hop cache
/// ([`ForwardEntry::hop`]), hence the pointer.
#[inline(always)]
pub fn admit(
    data: usize,
    data_end: usize,
    packet: &mut Packet,
) -> Result<(*mut PortEntry, u32), Error> {
    // The source and destination addresses (parse checked the whole IP
    // header; the verifier needs it said on this path).
    let addrs = if packet.v6 {
        ptr_at(data, data_end, SRC_OFFSET_V6, 32)?
    } else {
        ptr_at(data, data_end, SRC_OFFSET_V4, 8)?
    };
    let port = FORWARD
        .get_ptr_mut(packet.port_index)
        .ok_or(Error::NoEntry)?;
    // SAFETY: a live array element; `seq` is read once, as userspace left
    // it, and compared again before the packet leaves.
    let seq = unsafe { core::ptr::read_volatile(&raw const (*port).seq) };
    if seq & 1 != 0 {
        return Err(Error::EntryChanging);
    }
    // SAFETY: as above; plain data.
    let (in_use, local) = unsafe { ((*port).in_use, &(*port).local_addr) };
    // SAFETY: the destination address follows the source (`addrs`).
    let for_us = in_use != 0
        && unsafe { address_is(addrs.add(if packet.v6 { 16 } else { 4 }), packet.v6, local) };
    if !for_us {
        return Err(Error::NoEntry);
    }
    // SAFETY: part of the live element; only the hop cache is ever
    // written, by next_hop.
    let entry: &ForwardEntry = unsafe { &(*port).entry };
    // Changing the family would change the header sizes: that is the
    // userspace relay's job.
    let v4 = !packet.v6;
    if entry_is_v4(&entry.src_addr) != v4 || entry_is_v4(&entry.dst_addr) != v4 {
        return Err(Error::FamilyMismatch);
    }
    // SAFETY: the source address is in bounds (`addrs`).
    let from_peer = unsafe { address_is(addrs, packet.v6, &entry.expected_addr) }
        && packet.sport == u16::from_ne_bytes(entry.expected_port);
    if !from_peer {
        if entry.flags & FLAG_STRICT_SOURCE != 0 {
            crate::stats::record_source_drop(entry);
            crate::log::strict_source_drop(u16::from_be(packet.dport));
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
            // SAFETY: RTP_HLEN bytes are in bounds, even offsets.
            let (marker_payload_type, seq, ts, ssrc) = unsafe {
                (
                    *rtp.add(1),
                    be16(rtp.add(2)),
                    word32(rtp.add(4)),
                    word32(rtp.add(8)),
                )
            };
            // RFC 5761 §4: with rtcp-mux, RTCP (packet types 200–204) sits
            // where RTP has marker and payload type 64–95, which RTP does
            // not use. The relay forwards it to the RTCP destination.
            if (64..=95).contains(&(marker_payload_type & 0x7F)) {
                return Err(Error::MuxedRtcp);
            }
            let ts = u32::from_be(ts);
            packet.rtp_seq = seq;
            packet.rtp_timestamp = ts;
            packet.rtp_ssrc = ssrc;
            packet.sent_ssrc = ssrc;
            packet.sent_seq = seq;
            packet.sent_timestamp = ts;
            if entry.flags & FLAG_PASS_PAYLOAD_TYPE != 0
                && marker_payload_type & 0x7F == entry.pass_payload_type
            {
                // Its sequence number is the stream's: the kernel's loss
                // figure must not count it as lost.
                crate::stats::record_passed(entry, seq);
                return Err(Error::PassedPayloadType);
            }
            if entry.flags & FLAG_REWRITE != 0 {
                // Offsets belong to one source stream; another SSRC is the
                // relay's to re-anchor.
                if ssrc != u32::from_ne_bytes(entry.rewrite_source_ssrc) {
                    return Err(Error::RewriteSsrcMismatch);
                }
                packet.sent_ssrc = u32::from_ne_bytes(entry.rewrite_ssrc);
                packet.sent_seq = seq.wrapping_add(entry.rewrite_sequence_offset);
                packet.sent_timestamp = ts.wrapping_add(entry.rewrite_timestamp_offset);
            }
        }
    }
    Ok((port, seq))
}

/// Whether the port's element still has sequence count `seq`: else
/// userspace changed it while the program used it, and the packet, which
/// may be rewritten from a mix of both entries, is dropped.
#[inline(always)]
pub fn unchanged_since(port: *mut PortEntry, seq: u32) -> Result<(), Error> {
    // SAFETY: a live array element.
    if unsafe { core::ptr::read_volatile(&raw const (*port).seq) } == seq {
        Ok(())
    } else {
        Err(Error::EntryChanged)
    }
}
