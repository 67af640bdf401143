//! Types shared by the `rtpmanager-ebpf` programs and the loader in
//! `switchboard-rtpmanager`. Everything here is `#[repr(C)]` plain data
//! without implicit padding: the kernel side reads it from maps, the
//! userspace side writes it, and both must agree byte for byte.
//!
//! Addresses and ports are stored as they appear on the wire (network byte
//! order), so the programs copy them into packets and feed them to checksum
//! arithmetic without conversions. IPv4 addresses are stored IPv4-mapped
//! (`::ffff:a.b.c.d`) so one 16-byte field serves both families.
#![no_std]

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Name of the array map holding the one [`ProgramConfig`] entry.
pub const CONFIG_MAP: &str = "SB_CONFIG";
/// Name of the per-CPU array of verdict counters, indexed by [`Counter`].
pub const COUNTERS_MAP: &str = "SB_COUNTERS";
/// Name of the array of [`PortEntry`], indexed by local UDP port minus the
/// media range's lowest port.
pub const FORWARD_MAP: &str = "SB_FORWARD";
/// Name of the array of [`StreamStats`], indexed by [`ForwardEntry::stats_slot`].
pub const STREAM_STATS_MAP: &str = "SB_STREAM_STATS";
/// Name of the XDP program in the object.
pub const XDP_PROGRAM: &str = "switchboard_xdp";
/// Name of the TC (clsact ingress) program in the object.
pub const TC_PROGRAM: &str = "switchboard_tc";

/// Capacity of [`FORWARD_MAP`] in the object: every port. The loader sizes
/// it to the configured media range (one slot per port).
pub const MAX_FORWARDS: u32 = 65536;
/// Number of slots in [`STREAM_STATS_MAP`].
pub const STREAM_SLOTS: u32 = 16384;

/// Run-time settings of the programs, written by the loader before attaching.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramConfig {
    /// Lowest UDP port of the manager's media range (host byte order).
    pub port_min: u16,
    /// Highest UDP port of the manager's media range (host byte order).
    pub port_max: u16,
    /// Reserved; keeps the struct free of implicit padding.
    pub flags: u32,
    /// How long the programs reuse an entry's next hop (route, egress
    /// interface, MACs) before looking it up again, in nanoseconds; 0 looks
    /// it up for every packet. See [`CachedHop`].
    pub next_hop_ttl_ns: u64,
}

/// The IPv4-mapped IPv6 prefix (`::ffff:0:0/96`).
const V4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/// An address in the 16-byte wire form of the maps.
#[inline(always)]
pub fn address_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address of a 16-byte map field: IPv4 when it is IPv4-mapped.
pub fn address_from_bytes(bytes: [u8; 16]) -> IpAddr {
    if is_v4_mapped(&bytes) {
        IpAddr::V4(Ipv4Addr::new(bytes[12], bytes[13], bytes[14], bytes[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}

/// Whether a 16-byte map address holds an IPv4 address.
#[inline(always)]
pub fn is_v4_mapped(bytes: &[u8; 16]) -> bool {
    // A byte loop rather than a slice comparison: eBPF has no memcmp.
    let mut diff = 0u8;
    let mut i = 0;
    while i < V4_MAPPED_PREFIX.len() {
        diff |= bytes[i] ^ V4_MAPPED_PREFIX[i];
        i += 1;
    }
    diff == 0
}

/// Key of [`FORWARD_MAP`]: the local (address, port) a packet is addressed
/// to, i.e. the relay's socket of the incoming leg.
///
/// 4-byte aligned so the programs build it from 16-bit packet words.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ForwardKey {
    /// Destination address, IPv4-mapped for IPv4.
    pub addr: [u8; 16],
    /// Destination UDP port, network byte order.
    pub port: [u8; 2],
    /// Always zero: hash keys are compared bytewise, padding included.
    pub pad: [u8; 2],
}

impl ForwardKey {
    /// The key of packets addressed to `local`.
    #[inline(always)]
    pub fn new(local: SocketAddr) -> ForwardKey {
        ForwardKey {
            addr: address_bytes(local.ip()),
            port: local.port().to_be_bytes(),
            pad: [0; 2],
        }
    }

    /// The local address and port this key matches.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(address_from_bytes(self.addr), u16::from_be_bytes(self.port))
    }
}

/// The entry carries RTP: packets must look like RTP version 2, and the
/// sequence number and timestamp feed the stream's loss and jitter.
pub const FLAG_RTP: u16 = 1;
/// The entry carries RTCP: packets must have version 2; only packets and
/// bytes are counted.
pub const FLAG_RTCP: u16 = 2;
/// A packet from a source other than the expected peer is dropped (and
/// counted) instead of being passed to userspace.
pub const FLAG_STRICT_SOURCE: u16 = 4;
/// With [`FLAG_RTP`]: the RTP header is rewritten as the entry's
/// `rewrite_*` fields say (the relay's stream continuity after a playback or
/// DTMF injection, see `relay::continuity` in the manager). Packets of
/// another SSRC than `rewrite_source_ssrc` are passed to userspace, which
/// re-anchors the stream.
pub const FLAG_REWRITE: u16 = 8;
/// With [`FLAG_RTP`]: RTP packets of payload type `pass_payload_type` (the
/// leg's RFC 4733 telephone-event) are passed to userspace, whose DTMF
/// detector must see them; the relay forwards them as it would anyway.
pub const FLAG_PASS_PAYLOAD_TYPE: u16 = 16;
/// Every flag the programs understand.
pub const FLAGS_KNOWN: u16 =
    FLAG_RTP | FLAG_RTCP | FLAG_STRICT_SOURCE | FLAG_REWRITE | FLAG_PASS_PAYLOAD_TYPE;

/// The RTP header rewrite of an entry with [`FLAG_REWRITE`]: packets of SSRC
/// `source_ssrc` leave with SSRC `ssrc`, the sequence number plus
/// `sequence_offset` and the timestamp plus `timestamp_offset` (both modulo
/// their width).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RtpRewrite {
    pub source_ssrc: u32,
    pub ssrc: u32,
    pub sequence_offset: u16,
    pub timestamp_offset: u32,
}

/// Value of [`FORWARD_MAP`]: how to rewrite and where to send a packet that
/// arrived on the key's (address, port).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardEntry {
    /// New source address: the relay's address on the outgoing leg.
    pub src_addr: [u8; 16],
    /// New destination address: the latched peer of the outgoing leg.
    pub dst_addr: [u8; 16],
    /// The only source accepted on the incoming leg (its latched peer).
    pub expected_addr: [u8; 16],
    /// New source port (network byte order).
    pub src_port: [u8; 2],
    /// New destination port (network byte order).
    pub dst_port: [u8; 2],
    /// Expected source port of the incoming leg (network byte order).
    pub expected_port: [u8; 2],
    /// `FLAG_*` bits.
    pub flags: u16,
    /// RTP clock rate in Hz for the jitter estimate; 0 disables jitter.
    pub clock_rate: u32,
    /// Index into [`STREAM_STATS_MAP`].
    pub stats_slot: u32,
    /// [`FLAG_REWRITE`]: the only SSRC rewritten (wire order).
    pub rewrite_source_ssrc: [u8; 4],
    /// [`FLAG_REWRITE`]: the SSRC forwarded packets get (wire order).
    pub rewrite_ssrc: [u8; 4],
    /// [`FLAG_REWRITE`]: added to the RTP timestamp (host order).
    pub rewrite_timestamp_offset: u32,
    /// [`FLAG_REWRITE`]: added to the RTP sequence number (host order).
    pub rewrite_sequence_offset: u16,
    /// [`FLAG_PASS_PAYLOAD_TYPE`]: the RTP payload type passed to userspace.
    pub pass_payload_type: u8,
    /// Always zero: keeps the struct free of implicit padding.
    pub pad: u8,
    /// `clock_rate` as the multiplier of [`arrival_ticks`], so the
    /// programs convert time to RTP clock units without a division.
    pub clock_mult: u32,
    /// Always zero: keeps `hop` 8-byte aligned.
    pub reserved: u32,
    /// The programs' next-hop cache for this entry; userspace writes it
    /// zeroed (empty), so a replaced entry always starts with a fresh lookup.
    pub hop: CachedHop,
}

/// Value of [`FORWARD_MAP`]: the entry of one local port, changed by
/// userspace under a sequence count (a seqlock), since an array element is
/// rewritten in place while programs may read it.
///
/// Userspace writes the element three times: with `seq` odd and the old
/// contents, then the new contents (still odd), then the new contents with
/// `seq` even again. A program reads `seq`, passes the packet up untouched
/// when it is odd, and reads it again before sending: a change means the
/// entry moved under it, and the (rewritten) packet is dropped and counted.
/// The array spares the hash computation and the scattered element of a
/// hash map — most of a packet's cost once caches are cold.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortEntry {
    /// Even while stable, odd while userspace changes the element.
    pub seq: u32,
    /// 1 when the port has an entry.
    pub in_use: u32,
    /// The local address the entry is for (IPv4-mapped for IPv4): the
    /// [`ForwardKey`] address, checked against the packet's destination.
    pub local_addr: [u8; 16],
    pub entry: ForwardEntry,
}

/// Shift of [`ForwardEntry::clock_mult`]: ticks = ((ns >> 10) × mult) >> 20.
pub const CLOCK_MULT_SHIFT: u32 = 20;

/// The multiplier turning (ns >> 10) into RTP clock units for `clock_rate`
/// Hz with [`CLOCK_MULT_SHIFT`]: clock_rate × 1024 × 2^20 / 10^9, rounded.
/// Its rounding error is below 10^-5 for 8 kHz and up; the product stays
/// within 64 bits for 2^45 of the shifted nanoseconds (over a year) at
/// 48 kHz, and arrival times only matter as differences.
pub const fn clock_mult(clock_rate: u32) -> u32 {
    let scaled = (clock_rate as u64) << (10 + CLOCK_MULT_SHIFT);
    ((scaled + 500_000_000) / 1_000_000_000) as u32
}

/// Arrival time `now_ns` in RTP clock units of an entry's clock rate,
/// modulo 2^32 (RFC 3550 A.8 only uses differences).
#[inline(always)]
pub fn arrival_ticks(now_ns: u64, clock_mult: u32) -> u32 {
    (((now_ns >> 10).wrapping_mul(clock_mult as u64)) >> CLOCK_MULT_SHIFT) as u32
}

/// An entry's next hop as a program last looked it up (`bpf_fib_lookup`):
/// reused for [`ProgramConfig::next_hop_ttl_ns`] by packets that arrive on
/// the same interface, which spares the route and neighbour lookup — the
/// largest part of a forwarded packet's cost — for all but one packet per
/// TTL and stream.
///
/// Packets of one stream arrive on one RX queue, so one CPU writes it; if
/// two ever refresh it at once with different results, the fields may end
/// up mixed from both. `tag` (a hash of the other fields, written with
/// them) then no longer matches, and the next packet looks the hop up
/// again instead of using a torn one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedHop {
    /// `bpf_ktime_get_ns` after which the hop is looked up again; 0: empty.
    pub expires_ns: u64,
    /// Interface the packet arrived on when the hop was looked up.
    pub ingress: u32,
    /// Egress interface.
    pub ifindex: u32,
    /// Egress interface's MAC.
    pub smac: [u8; 6],
    /// Neighbour's MAC.
    pub dmac: [u8; 6],
    /// [`CachedHop::tag_of`] of the fields above.
    pub tag: u32,
}

impl CachedHop {
    /// A hash of the hop's fields (multiply–xor over 32-bit words): a
    /// mix of two writers' fields is all but certain to hash differently
    /// from either writer's tag.
    #[inline(always)]
    ///
    /// `destination` is [`ForwardEntry::destination_tag`] of the entry the
    /// hop was looked up for: a hop written for an entry that userspace
    /// replaced meanwhile (another destination) does not fit the new one.
    pub fn tag_of(&self, destination: u32) -> u32 {
        #[inline(always)]
        fn mix(h: u32, word: u32) -> u32 {
            (h ^ word).wrapping_mul(0x0100_0193).rotate_left(13)
        }
        let m = |a: &[u8; 6], i: usize| u32::from(a[i]) | (u32::from(a[i + 1]) << 8);
        let mut h: u32 = 0x811C_9DC5;
        h = mix(h, destination);
        h = mix(h, self.expires_ns as u32);
        h = mix(h, (self.expires_ns >> 32) as u32);
        h = mix(h, self.ingress);
        h = mix(h, self.ifindex);
        h = mix(h, m(&self.smac, 0) | (m(&self.smac, 2) << 16));
        h = mix(h, m(&self.smac, 4) | (m(&self.dmac, 0) << 16));
        h = mix(h, m(&self.dmac, 2) | (m(&self.dmac, 4) << 16));
        // Never 0, so an all-zero (empty) hop never matches.
        h | 1
    }

    /// Whether the hop may be used at `now_ns` for a packet from `ingress`.
    #[inline(always)]
    pub fn usable(&self, now_ns: u64, ingress: u32, destination: u32) -> bool {
        self.expires_ns > now_ns && self.ingress == ingress && self.tag == self.tag_of(destination)
    }
}

impl ForwardEntry {
    /// An entry sending from `source` to `destination`, accepting packets
    /// from `expected` only.
    pub fn new(
        source: SocketAddr,
        destination: SocketAddr,
        expected: SocketAddr,
        flags: u16,
        clock_rate: u32,
        stats_slot: u32,
    ) -> ForwardEntry {
        ForwardEntry {
            src_addr: address_bytes(source.ip()),
            dst_addr: address_bytes(destination.ip()),
            expected_addr: address_bytes(expected.ip()),
            src_port: source.port().to_be_bytes(),
            dst_port: destination.port().to_be_bytes(),
            expected_port: expected.port().to_be_bytes(),
            flags,
            clock_rate,
            stats_slot,
            rewrite_source_ssrc: [0; 4],
            rewrite_ssrc: [0; 4],
            rewrite_timestamp_offset: 0,
            rewrite_sequence_offset: 0,
            pass_payload_type: 0,
            pad: 0,
            clock_mult: clock_mult(clock_rate),
            reserved: 0,
            hop: CachedHop {
                expires_ns: 0,
                ingress: 0,
                ifindex: 0,
                smac: [0; 6],
                dmac: [0; 6],
                tag: 0,
            },
        }
    }

    /// The entry passing RTP of `payload_type` to userspace (and
    /// [`FLAG_PASS_PAYLOAD_TYPE`] set).
    pub fn with_pass_payload_type(mut self, payload_type: u8) -> ForwardEntry {
        self.flags |= FLAG_PASS_PAYLOAD_TYPE;
        self.pass_payload_type = payload_type;
        self
    }

    /// The entry with its RTP header rewrite set (and [`FLAG_REWRITE`]).
    pub fn with_rewrite(mut self, rewrite: RtpRewrite) -> ForwardEntry {
        self.flags |= FLAG_REWRITE;
        self.rewrite_source_ssrc = rewrite.source_ssrc.to_be_bytes();
        self.rewrite_ssrc = rewrite.ssrc.to_be_bytes();
        self.rewrite_sequence_offset = rewrite.sequence_offset;
        self.rewrite_timestamp_offset = rewrite.timestamp_offset;
        self
    }

    /// The RTP header rewrite, when [`FLAG_REWRITE`] is set.
    pub fn rewrite(&self) -> Option<RtpRewrite> {
        (self.flags & FLAG_REWRITE != 0).then(|| RtpRewrite {
            source_ssrc: u32::from_be_bytes(self.rewrite_source_ssrc),
            ssrc: u32::from_be_bytes(self.rewrite_ssrc),
            sequence_offset: self.rewrite_sequence_offset,
            timestamp_offset: self.rewrite_timestamp_offset,
        })
    }

    /// A fingerprint of the destination (address and port) for the
    /// next-hop cache's tag. The address is read as 32-bit words: the
    /// entry is 8-aligned.
    #[inline(always)]
    pub fn destination_tag(&self) -> u32 {
        let a = self.dst_addr.as_ptr() as *const u32;
        // SAFETY: `dst_addr` is 16 bytes at offset 16 of an 8-aligned struct.
        let (w0, w1, w2, w3) =
            unsafe { (a.read(), a.add(1).read(), a.add(2).read(), a.add(3).read()) };
        (w0 ^ w1.rotate_left(8) ^ w2.rotate_left(16) ^ w3.rotate_left(24))
            .wrapping_add(u32::from(u16::from_ne_bytes(self.dst_port)))
    }

    /// The new source of forwarded packets.
    pub fn source(&self) -> SocketAddr {
        SocketAddr::new(
            address_from_bytes(self.src_addr),
            u16::from_be_bytes(self.src_port),
        )
    }

    /// The new destination of forwarded packets.
    pub fn destination(&self) -> SocketAddr {
        SocketAddr::new(
            address_from_bytes(self.dst_addr),
            u16::from_be_bytes(self.dst_port),
        )
    }

    /// The source packets must come from.
    pub fn expected(&self) -> SocketAddr {
        SocketAddr::new(
            address_from_bytes(self.expected_addr),
            u16::from_be_bytes(self.expected_port),
        )
    }
}

/// [`StreamStats::state`]: the sequence and jitter fields hold a first packet.
pub const STATS_STARTED: u32 = 1;

/// Value of [`STREAM_STATS_MAP`]: what the kernel forwarded for one entry.
///
/// `packets` and `bytes` are updated atomically. The sequence and jitter
/// fields are updated without atomics: packets of one stream arrive on one
/// RX queue (same 5-tuple), so concurrent updates of one slot are rare and
/// at worst skew the estimate by one packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Packets forwarded.
    pub packets: u64,
    /// UDP payload bytes forwarded.
    pub bytes: u64,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) of the last forwarded packet.
    pub last_seen_ns: u64,
    /// `STATS_*` bits.
    pub state: u32,
    /// Sequence number of the first RTP packet.
    pub base_seq: u32,
    /// Highest extended sequence number (cycles in the upper 16 bits).
    pub highest_seq: u32,
    /// RTP packets counted for loss (duplicates included, as RFC 3550 A.3).
    pub received: u32,
    /// Relative transit time of the previous RTP packet, in clock units.
    pub transit: u32,
    /// RFC 3550 interarrival jitter in clock units, scaled by 16 (A.8).
    pub jitter_x16: u32,
    /// SSRC of the last forwarded RTP packet as it left (after a rewrite):
    /// where an injection into the stream continues from.
    pub sent_ssrc: u32,
    /// RTP timestamp of the last forwarded packet as it left.
    pub sent_timestamp: u32,
    /// RTP sequence number of the last forwarded packet as it left (low 16 bits).
    pub sent_sequence: u32,
    /// Always zero: keeps the struct free of implicit padding.
    pub pad: u32,
    /// Packets from another source than the expected peer dropped by a
    /// [`FLAG_STRICT_SOURCE`] entry (the relay's `source_mismatch_drops`).
    pub source_drops: u64,
}

impl StreamStats {
    /// RFC 3550 A.3 "expected": extended highest − base + 1; 0 before RTP.
    pub fn expected(&self) -> u32 {
        if self.state & STATS_STARTED == 0 {
            return 0;
        }
        self.highest_seq.wrapping_sub(self.base_seq).wrapping_add(1)
    }

    /// Cumulative packets lost (expected − received); negative with duplicates.
    pub fn lost(&self) -> i64 {
        i64::from(self.expected()) - i64::from(self.received)
    }

    /// Interarrival jitter in RTP clock units.
    pub fn jitter(&self) -> u32 {
        self.jitter_x16 >> 4
    }
}

/// Slots of the per-CPU counter array. Each packet increments exactly one
/// slot, named after the reason of its verdict.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Not IPv4/IPv6 (ARP, VLAN-tagged, other ethertypes): passed.
    NotIp = 0,
    /// IP but not UDP: passed.
    NotUdp = 1,
    /// Too short to hold the headers it claims, or lengths inconsistent: passed.
    Truncated = 2,
    /// IPv4 fragment (MF set or non-zero offset): passed.
    Fragment = 3,
    /// IPv4 header with options: passed.
    IpOptions = 4,
    /// IPv6 with an extension header before UDP: passed.
    Ipv6ExtensionHeader = 5,
    /// UDP outside the manager's port range: passed.
    OtherPort = 6,
    /// UDP to the media range without a forwarding entry: passed.
    NoEntry = 7,
    /// Source is not the entry's expected peer: passed.
    SourceMismatchPass = 8,
    /// Source is not the entry's expected peer on a strict entry: dropped.
    SourceMismatchDrop = 9,
    /// RTP/RTCP entry but not version 2 or too short (STUN, DTLS…): passed.
    NotRtp = 10,
    /// The entry's addresses are of another family than the packet: passed.
    FamilyMismatch = 11,
    /// IPv6 UDP with a zero checksum (invalid, RFC 8200): passed.
    Ipv6ZeroChecksum = 12,
    /// The next hop has no resolved neighbour (XDP): passed so the stack
    /// resolves it.
    FibNoNeigh = 13,
    /// Forwarding is disabled on the ingress interface: passed.
    FibForwardingDisabled = 14,
    /// Any other failed route lookup (unreachable, blackhole, MTU…): passed.
    FibOther = 15,
    /// A TC rewrite helper failed half-way: the packet is inconsistent, dropped.
    RewriteFailed = 16,
    /// Rewritten and sent back out of the ingress interface (XDP_TX).
    Forwarded = 17,
    /// Rewritten and redirected to the egress interface.
    Redirected = 18,
    /// A rewriting entry got RTP of another SSRC than its source: passed,
    /// so the relay re-anchors the stream.
    RewriteSsrcMismatch = 19,
    /// RTP of the entry's pass-up payload type (telephone-event): passed,
    /// so the relay's DTMF detector sees it.
    PassedPayloadType = 20,
    /// RTCP on an RTP entry (rtcp-mux; packet type 200–204 where RTP has
    /// its payload type, RFC 5761 §4): passed, the relay forwards it.
    MuxedRtcp = 21,
    /// TC: rewritten and handed to `bpf_redirect_neigh`, the route being
    /// known and its neighbour not yet resolved (XDP passes those up).
    RedirectedNeigh = 22,
    /// The port's entry was being changed by userspace (odd sequence):
    /// passed unchanged, the relay forwards it.
    EntryChanging = 23,
    /// The port's entry changed while the program rewrote the packet: the
    /// rewrite may mix old and new, so the packet is dropped (a packet in
    /// flight during the switch).
    EntryChanged = 24,
    /// IPv4 header with a bad checksum: passed, the stack drops it.
    Ipv4HeaderChecksum = 25,
}

impl Counter {
    /// Number of slots in [`COUNTERS_MAP`].
    pub const SLOTS: u32 = 26;
    /// Every counter, in slot order.
    pub const ALL: [Counter; 26] = [
        Counter::NotIp,
        Counter::NotUdp,
        Counter::Truncated,
        Counter::Fragment,
        Counter::IpOptions,
        Counter::Ipv6ExtensionHeader,
        Counter::OtherPort,
        Counter::NoEntry,
        Counter::SourceMismatchPass,
        Counter::SourceMismatchDrop,
        Counter::NotRtp,
        Counter::FamilyMismatch,
        Counter::Ipv6ZeroChecksum,
        Counter::FibNoNeigh,
        Counter::FibForwardingDisabled,
        Counter::FibOther,
        Counter::RewriteFailed,
        Counter::Forwarded,
        Counter::Redirected,
        Counter::RewriteSsrcMismatch,
        Counter::PassedPayloadType,
        Counter::MuxedRtcp,
        Counter::RedirectedNeigh,
        Counter::EntryChanging,
        Counter::EntryChanged,
        Counter::Ipv4HeaderChecksum,
    ];

    /// A stable name for logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::NotIp => "not_ip",
            Counter::NotUdp => "not_udp",
            Counter::Truncated => "truncated",
            Counter::Fragment => "fragment",
            Counter::IpOptions => "ip_options",
            Counter::Ipv6ExtensionHeader => "ipv6_extension_header",
            Counter::OtherPort => "other_port",
            Counter::NoEntry => "no_entry",
            Counter::SourceMismatchPass => "source_mismatch_pass",
            Counter::SourceMismatchDrop => "source_mismatch_drop",
            Counter::NotRtp => "not_rtp",
            Counter::FamilyMismatch => "family_mismatch",
            Counter::Ipv6ZeroChecksum => "ipv6_zero_checksum",
            Counter::FibNoNeigh => "fib_no_neigh",
            Counter::FibForwardingDisabled => "fib_forwarding_disabled",
            Counter::FibOther => "fib_other",
            Counter::RewriteFailed => "rewrite_failed",
            Counter::Forwarded => "forwarded",
            Counter::Redirected => "redirected",
            Counter::RewriteSsrcMismatch => "rewrite_ssrc_mismatch",
            Counter::PassedPayloadType => "passed_payload_type",
            Counter::MuxedRtcp => "muxed_rtcp",
            Counter::RedirectedNeigh => "redirected_neigh",
            Counter::EntryChanging => "entry_changing",
            Counter::EntryChanged => "entry_changed",
            Counter::Ipv4HeaderChecksum => "ipv4_header_checksum",
        }
    }
}

// Layouts are part of the kernel/userspace contract: these fail the build
// when a field change introduces padding or changes a size.
const _: () = assert!(core::mem::size_of::<ProgramConfig>() == 16);
const _: () = assert!(core::mem::size_of::<ForwardKey>() == 20);
const _: () = assert!(core::mem::size_of::<CachedHop>() == 32);
// The programs read entry addresses as aligned words.
const _: () = assert!(core::mem::align_of::<ForwardEntry>() == 8);
const _: () = assert!(core::mem::align_of::<ForwardKey>() == 4);
const _: () = assert!(core::mem::size_of::<ForwardEntry>() == 120);
const _: () = assert!(core::mem::size_of::<PortEntry>() == 144);
const _: () = assert!(core::mem::align_of::<PortEntry>() == 8);
const _: () = assert!(core::mem::size_of::<StreamStats>() == 72);
const _: () = assert!(Counter::ALL.len() == Counter::SLOTS as usize);

#[cfg(feature = "user")]
mod pod {
    use super::{ForwardEntry, ForwardKey, PortEntry, ProgramConfig, StreamStats};

    // CachedHop is only ever read and written inside ForwardEntry.

    // SAFETY (all four): repr(C), Copy, no padding (sizes asserted above
    // equal the sum of the fields) and every bit pattern is a valid value.
    unsafe impl aya::Pod for ProgramConfig {}
    unsafe impl aya::Pod for ForwardKey {}
    unsafe impl aya::Pod for ForwardEntry {}
    unsafe impl aya::Pod for StreamStats {}
    unsafe impl aya::Pod for PortEntry {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_store_ipv4_mapped_addresses_and_big_endian_ports() {
        let key = ForwardKey::new("10.1.2.3:30000".parse().expect("literal"));
        assert_eq!(
            key.addr,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3]
        );
        assert_eq!(key.port, [0x75, 0x30]);
        assert_eq!(key.pad, [0, 0]);
        assert_eq!(
            key.socket_addr(),
            "10.1.2.3:30000".parse().expect("literal")
        );
    }

    #[test]
    fn entries_round_trip_both_families() {
        let entry = ForwardEntry::new(
            "[2001:db8::1]:30002".parse().expect("literal"),
            "[2001:db8::2]:40000".parse().expect("literal"),
            "[2001:db8::3]:41000".parse().expect("literal"),
            FLAG_RTP,
            8000,
            7,
        );
        assert_eq!(
            entry.source(),
            "[2001:db8::1]:30002".parse().expect("literal")
        );
        assert_eq!(
            entry.destination(),
            "[2001:db8::2]:40000".parse().expect("literal")
        );
        assert_eq!(
            entry.expected(),
            "[2001:db8::3]:41000".parse().expect("literal")
        );
        assert!(!is_v4_mapped(&entry.dst_addr));
        assert_eq!(entry.rewrite(), None, "no rewrite unless asked");
    }

    #[test]
    fn a_rewrite_is_stored_in_wire_order_and_read_back() {
        let rewrite = RtpRewrite {
            source_ssrc: 0x1122_3344,
            ssrc: 0xAABB_CCDD,
            sequence_offset: 0xFFFE,
            timestamp_offset: 0x8000_0001,
        };
        let entry = ForwardEntry::new(
            "10.0.0.1:30002".parse().expect("literal"),
            "10.0.0.2:40000".parse().expect("literal"),
            "10.0.0.3:41000".parse().expect("literal"),
            FLAG_RTP,
            8000,
            7,
        )
        .with_rewrite(rewrite);
        assert_eq!(entry.flags, FLAG_RTP | FLAG_REWRITE);
        assert_eq!(entry.rewrite_source_ssrc, [0x11, 0x22, 0x33, 0x44]);
        assert_eq!(entry.rewrite_ssrc, [0xAA, 0xBB, 0xCC, 0xDD]);
        assert_eq!(entry.rewrite(), Some(rewrite));
    }

    #[test]
    fn loss_is_expected_minus_received() {
        let stats = StreamStats {
            state: STATS_STARTED,
            base_seq: 65530,
            highest_seq: 65536 + 9,
            received: 13,
            jitter_x16: 0x35,
            ..StreamStats::default()
        };
        assert_eq!(stats.expected(), 16);
        assert_eq!(stats.lost(), 3);
        assert_eq!(stats.jitter(), 3);
        assert_eq!(StreamStats::default().expected(), 0);
    }

    #[test]
    fn arrival_ticks_count_the_clock_rate_without_a_division() {
        for rate in [8000u32, 16000, 48000, 90000] {
            let mult = clock_mult(rate);
            // One second apart, anywhere in a year of uptime.
            for start in [
                0u64,
                1_000_000_007,
                86_400 * 1_000_000_000,
                365 * 86_400 * 1_000_000_000,
            ] {
                let ticks = arrival_ticks(start + 1_000_000_000, mult)
                    .wrapping_sub(arrival_ticks(start, mult));
                let error = (i64::from(ticks) - i64::from(rate)).abs();
                assert!(
                    error <= 1,
                    "{rate} Hz from {start} ns: {ticks} ticks in 1 s"
                );
            }
            // 20 ms, one G.711 packet at 8 kHz: 160 ticks.
            let ticks = arrival_ticks(5_000_000_000 + 20_000_000, mult)
                .wrapping_sub(arrival_ticks(5_000_000_000, mult));
            assert_eq!(ticks, rate / 50, "{rate} Hz over 20 ms");
        }
        assert_eq!(clock_mult(0), 0, "no clock rate, no ticks");
    }

    #[test]
    fn a_cached_hop_is_usable_only_whole_fresh_and_from_its_ingress() {
        let mut hop = CachedHop {
            expires_ns: 5_000,
            ingress: 3,
            ifindex: 4,
            smac: [2, 0, 0, 0, 0, 1],
            dmac: [2, 0, 0, 0, 0, 2],
            tag: 0,
        };
        const DST: u32 = 0x0A00_0002;
        assert!(!hop.usable(1_000, 3, DST), "untagged");
        hop.tag = hop.tag_of(DST);
        assert!(hop.usable(1_000, 3, DST));
        assert!(!hop.usable(5_000, 3, DST), "expired");
        assert!(!hop.usable(1_000, 4, DST), "another ingress");
        assert!(
            !hop.usable(1_000, 3, DST + 1),
            "written for another destination"
        );
        assert!(!CachedHop::default().usable(0, 0, 0), "empty never matches");
        // A mix of two writers' fields: the tag of either no longer fits.
        let other = CachedHop {
            expires_ns: 5_100,
            ifindex: 5,
            dmac: [2, 0, 0, 0, 0, 9],
            ..hop
        };
        let other = CachedHop {
            tag: other.tag_of(DST),
            ..other
        };
        for mixed in [
            CachedHop {
                ifindex: other.ifindex,
                ..hop
            },
            CachedHop {
                dmac: other.dmac,
                ..hop
            },
            CachedHop {
                expires_ns: other.expires_ns,
                ..hop
            },
            CachedHop {
                ifindex: hop.ifindex,
                ..other
            },
            CachedHop {
                dmac: hop.dmac,
                ..other
            },
        ] {
            assert!(!mixed.usable(1_000, 3, DST), "torn hop {mixed:?} refused");
        }
    }
}
