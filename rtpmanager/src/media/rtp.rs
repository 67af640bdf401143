//! RTP and RTCP packets (RFC 3550), viewed in place without allocation.
//!
//! API:
//! - identifiers: [`Ssrc`], [`SeqNum`], [`PayloadType`], [`RtpTimestamp`], [`NtpTime`];
//! - [`RtpPacket::parse`] validates a datagram and reads its header fields and
//!   payload; [`RtpPacketMut::parse`] does the same over a mutable buffer and
//!   rewrites SSRC, sequence number, timestamp, marker and payload type in place
//!   (the relay's continuity and transcoding rewrites);
//! - [`RtpHeader::write`] writes a fixed 12-byte header into a caller buffer, and
//!   [`RtpHeader::write_packet`] a header followed by a payload;
//! - [`classify`] tells RTP from RTCP on an rtcp-mux port (RFC 5761 §4);
//! - [`rtcp_packets`] iterates over a compound RTCP datagram and yields
//!   [`RtcpPacket::SenderReport`] / [`RtcpPacket::ReceiverReport`] with their
//!   [`ReportBlock`]s, other packet types as [`RtcpPacket::Other`];
//! - [`round_trip_time`] computes the RTT from a report block's LSR/DLSR and the
//!   report's arrival time (RFC 3550 §6.4.1).

use std::time::Duration;

/// Length of the fixed RTP header.
pub const RTP_HEADER_LEN: usize = 12;
/// Length of an RTCP report block.
pub const REPORT_BLOCK_LEN: usize = 24;
/// RTCP packet type of a sender report.
pub const RTCP_SR: u8 = 200;
/// RTCP packet type of a receiver report.
pub const RTCP_RR: u8 = 201;

/// Synchronisation source identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ssrc(pub u32);

/// RTP sequence number; arithmetic on it wraps at 2^16.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqNum(pub u16);

impl SeqNum {
    /// The sequence number `n` packets later, wrapping at 2^16.
    pub fn wrapping_add(self, n: u16) -> SeqNum {
        SeqNum(self.0.wrapping_add(n))
    }

    /// Signed distance from `earlier` to `self`, taking the shorter way round the wrap.
    pub fn delta_from(self, earlier: SeqNum) -> i16 {
        // Reinterpreting the wrapped difference as signed picks the short way round.
        self.0.wrapping_sub(earlier.0) as i16
    }
}

/// RTP timestamp in media clock units; arithmetic on it wraps at 2^32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RtpTimestamp(pub u32);

impl RtpTimestamp {
    /// The timestamp `ticks` clock units later, wrapping at 2^32.
    pub fn wrapping_add(self, ticks: u32) -> RtpTimestamp {
        RtpTimestamp(self.0.wrapping_add(ticks))
    }

    /// Signed distance in clock units from `earlier` to `self`, the short way round.
    pub fn delta_from(self, earlier: RtpTimestamp) -> i32 {
        self.0.wrapping_sub(earlier.0) as i32
    }
}

/// RTP payload type (RFC 3550 §5.1) as carried in an RTP packet and named
/// in SDP: seven bits, 0–127. The one payload-type type of the manager
/// (`sdp` re-exports it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PayloadType(u8);

impl PayloadType {
    /// PCMU (G.711 µ-law), static payload type 0.
    pub const PCMU: PayloadType = PayloadType(0);
    /// PCMA (G.711 A-law), static payload type 8.
    pub const PCMA: PayloadType = PayloadType(8);

    /// The payload type `value`, or `None` when it does not fit in 7 bits
    /// (the marker bit's place).
    pub const fn new(value: u8) -> Option<PayloadType> {
        if value < 0x80 {
            Some(PayloadType(value))
        } else {
            None
        }
    }

    /// The numeric value, 0–127.
    pub const fn get(self) -> u8 {
        self.0
    }
}

impl std::fmt::Display for PayloadType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A 64-bit NTP timestamp: seconds since 1900 in the high word, fraction in the low word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NtpTime(pub u64);

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

impl NtpTime {
    /// The NTP time of `since_unix_epoch` (e.g. `SystemTime::duration_since(UNIX_EPOCH)`).
    pub fn from_unix(since_unix_epoch: Duration) -> NtpTime {
        let secs = since_unix_epoch.as_secs() + NTP_UNIX_OFFSET_SECS;
        let frac = (u64::from(since_unix_epoch.subsec_nanos()) << 32) / 1_000_000_000;
        NtpTime((secs << 32) | frac)
    }

    /// The middle 32 bits, the compact form used by LSR and RTT computations.
    pub fn middle32(self) -> u32 {
        (self.0 >> 16) as u32
    }
}

/// Why a datagram is not a valid RTP or RTCP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    /// The datagram is shorter than the fixed header.
    #[error("packet too short: {len} bytes, at least {needed} needed")]
    TooShort {
        /// Bytes available.
        len: usize,
        /// Bytes the header requires.
        needed: usize,
    },
    /// The version field is not 2.
    #[error("unsupported RTP version {0}, expected 2")]
    BadVersion(u8),
    /// The CSRC list announced by CC runs past the end of the packet.
    #[error("CSRC list of {count} entries runs past the end of a {len}-byte packet")]
    CsrcBeyondPacket {
        /// CSRC count from the header.
        count: u8,
        /// Packet length.
        len: usize,
    },
    /// The header extension runs past the end of the packet.
    #[error("header extension of {ext_len} bytes runs past the end of a {len}-byte packet")]
    ExtensionBeyondPacket {
        /// Extension length including its 4-byte preamble.
        ext_len: usize,
        /// Packet length.
        len: usize,
    },
    /// The padding count is zero or larger than the bytes after the header.
    #[error("padding of {padding} bytes does not fit the {available} bytes after the header")]
    BadPadding {
        /// Padding count from the last byte.
        padding: usize,
        /// Bytes after the header.
        available: usize,
    },
    /// The caller's buffer cannot hold what is to be written.
    #[error("buffer of {len} bytes too small, {needed} needed")]
    BufferTooSmall {
        /// Buffer length.
        len: usize,
        /// Bytes required.
        needed: usize,
    },
    /// An RTCP packet's length field runs past the end of the datagram.
    #[error("RTCP packet of {declared} bytes runs past the {available} bytes left")]
    RtcpLengthBeyondPacket {
        /// Length declared by the packet header.
        declared: usize,
        /// Bytes left in the datagram.
        available: usize,
    },
    /// An SR or RR is too short for its sender info and report count.
    #[error("RTCP packet type {packet_type} of {len} bytes too short for {count} report blocks")]
    RtcpReportTruncated {
        /// Packet type (200 or 201).
        packet_type: u8,
        /// Report count from the header.
        count: u8,
        /// Packet length.
        len: usize,
    },
}

fn read_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

fn read_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// Byte offsets of a validated RTP packet.
#[derive(Clone, Copy, Debug)]
struct Layout {
    header_len: usize,
    payload_end: usize,
}

fn validate(buf: &[u8]) -> Result<Layout, RtpError> {
    let len = buf.len();
    if len < RTP_HEADER_LEN {
        return Err(RtpError::TooShort {
            len,
            needed: RTP_HEADER_LEN,
        });
    }
    let version = buf[0] >> 6;
    if version != 2 {
        return Err(RtpError::BadVersion(version));
    }
    let count = buf[0] & 0x0f;
    let mut header_len = RTP_HEADER_LEN + 4 * usize::from(count);
    if header_len > len {
        return Err(RtpError::CsrcBeyondPacket { count, len });
    }
    if buf[0] & 0x10 != 0 {
        if header_len + 4 > len {
            return Err(RtpError::ExtensionBeyondPacket { ext_len: 4, len });
        }
        let ext_len = 4 + 4 * usize::from(read_u16(buf, header_len + 2));
        if header_len + ext_len > len {
            return Err(RtpError::ExtensionBeyondPacket { ext_len, len });
        }
        header_len += ext_len;
    }
    let mut payload_end = len;
    if buf[0] & 0x20 != 0 {
        let padding = usize::from(buf[len - 1]);
        let available = len - header_len;
        // The padding count includes itself, so zero is as malformed as too large.
        if padding == 0 || padding > available {
            return Err(RtpError::BadPadding { padding, available });
        }
        payload_end -= padding;
    }
    Ok(Layout {
        header_len,
        payload_end,
    })
}

/// A validated RTP packet borrowed from a datagram.
#[derive(Clone, Copy, Debug)]
pub struct RtpPacket<'a> {
    buf: &'a [u8],
    layout: Layout,
}

impl<'a> RtpPacket<'a> {
    /// Validates `buf` as an RTP packet: length, version 2, CSRC list, extension and padding.
    pub fn parse(buf: &'a [u8]) -> Result<RtpPacket<'a>, RtpError> {
        let layout = validate(buf)?;
        Ok(RtpPacket { buf, layout })
    }

    /// The version field (always 2 once parsed).
    pub fn version(&self) -> u8 {
        self.buf[0] >> 6
    }

    /// Whether the P bit is set.
    pub fn padding(&self) -> bool {
        self.buf[0] & 0x20 != 0
    }

    /// Whether the X bit is set.
    pub fn extension(&self) -> bool {
        self.buf[0] & 0x10 != 0
    }

    /// The CSRC count.
    pub fn csrc_count(&self) -> u8 {
        self.buf[0] & 0x0f
    }

    /// The marker bit.
    pub fn marker(&self) -> bool {
        self.buf[1] & 0x80 != 0
    }

    /// The payload type.
    pub fn payload_type(&self) -> PayloadType {
        PayloadType(self.buf[1] & 0x7f)
    }

    /// The sequence number.
    pub fn sequence(&self) -> SeqNum {
        SeqNum(read_u16(self.buf, 2))
    }

    /// The RTP timestamp.
    pub fn timestamp(&self) -> RtpTimestamp {
        RtpTimestamp(read_u32(self.buf, 4))
    }

    /// The synchronisation source.
    pub fn ssrc(&self) -> Ssrc {
        Ssrc(read_u32(self.buf, 8))
    }

    /// The `index`th contributing source, if present.
    pub fn csrc(&self, index: u8) -> Option<Ssrc> {
        (index < self.csrc_count())
            .then(|| Ssrc(read_u32(self.buf, RTP_HEADER_LEN + 4 * usize::from(index))))
    }

    /// Header length: fixed header, CSRC list and header extension.
    pub fn header_len(&self) -> usize {
        self.layout.header_len
    }

    /// The header extension's profile-defined 16-bit identifier and its data, if present.
    pub fn extension_data(&self) -> Option<(u16, &'a [u8])> {
        if !self.extension() {
            return None;
        }
        let at = RTP_HEADER_LEN + 4 * usize::from(self.csrc_count());
        Some((
            read_u16(self.buf, at),
            &self.buf[at + 4..self.layout.header_len],
        ))
    }

    /// The payload, without header and padding.
    pub fn payload(&self) -> &'a [u8] {
        &self.buf[self.layout.header_len..self.layout.payload_end]
    }

    /// Number of padding bytes at the end, including the count byte.
    pub fn padding_len(&self) -> usize {
        self.buf.len() - self.layout.payload_end
    }

    /// The whole datagram.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }
}

/// A validated RTP packet over a mutable buffer, rewritten in place by the relay.
#[derive(Debug)]
pub struct RtpPacketMut<'a> {
    buf: &'a mut [u8],
    layout: Layout,
}

impl<'a> RtpPacketMut<'a> {
    /// Validates `buf` as an RTP packet, as [`RtpPacket::parse`] does.
    pub fn parse(buf: &'a mut [u8]) -> Result<RtpPacketMut<'a>, RtpError> {
        let layout = validate(buf)?;
        Ok(RtpPacketMut { buf, layout })
    }

    /// A read-only view of the packet as it currently is.
    pub fn as_packet(&self) -> RtpPacket<'_> {
        RtpPacket {
            buf: self.buf,
            layout: self.layout,
        }
    }

    /// Sets the marker bit.
    pub fn set_marker(&mut self, marker: bool) {
        self.buf[1] = (self.buf[1] & 0x7f) | if marker { 0x80 } else { 0 };
    }

    /// Sets the payload type, keeping the marker bit.
    pub fn set_payload_type(&mut self, pt: PayloadType) {
        self.buf[1] = (self.buf[1] & 0x80) | pt.0;
    }

    /// Sets the sequence number.
    pub fn set_sequence(&mut self, seq: SeqNum) {
        self.buf[2..4].copy_from_slice(&seq.0.to_be_bytes());
    }

    /// Sets the RTP timestamp.
    pub fn set_timestamp(&mut self, ts: RtpTimestamp) {
        self.buf[4..8].copy_from_slice(&ts.0.to_be_bytes());
    }

    /// Sets the synchronisation source.
    pub fn set_ssrc(&mut self, ssrc: Ssrc) {
        self.buf[8..12].copy_from_slice(&ssrc.0.to_be_bytes());
    }

    /// The payload, writable (e.g. for same-length transcoding such as µ-law ↔ A-law).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.layout.header_len..self.layout.payload_end]
    }
}

/// The fields of a fixed RTP header without CSRCs or extension, as the manager emits them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpHeader {
    /// Marker bit.
    pub marker: bool,
    /// Payload type.
    pub payload_type: PayloadType,
    /// Sequence number.
    pub sequence: SeqNum,
    /// RTP timestamp.
    pub timestamp: RtpTimestamp,
    /// Synchronisation source.
    pub ssrc: Ssrc,
}

impl RtpHeader {
    /// Writes the 12-byte header at the start of `buf` and returns its length.
    pub fn write(&self, buf: &mut [u8]) -> Result<usize, RtpError> {
        if buf.len() < RTP_HEADER_LEN {
            return Err(RtpError::BufferTooSmall {
                len: buf.len(),
                needed: RTP_HEADER_LEN,
            });
        }
        buf[0] = 2 << 6;
        buf[1] = if self.marker { 0x80 } else { 0 } | self.payload_type.0;
        buf[2..4].copy_from_slice(&self.sequence.0.to_be_bytes());
        buf[4..8].copy_from_slice(&self.timestamp.0.to_be_bytes());
        buf[8..12].copy_from_slice(&self.ssrc.0.to_be_bytes());
        Ok(RTP_HEADER_LEN)
    }

    /// Writes the header followed by `payload` into `buf` and returns the packet length.
    pub fn write_packet(&self, payload: &[u8], buf: &mut [u8]) -> Result<usize, RtpError> {
        let needed = RTP_HEADER_LEN + payload.len();
        if buf.len() < needed {
            return Err(RtpError::BufferTooSmall {
                len: buf.len(),
                needed,
            });
        }
        self.write(buf)?;
        buf[RTP_HEADER_LEN..needed].copy_from_slice(payload);
        Ok(needed)
    }
}

/// What a datagram on an rtcp-mux port is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MuxedKind {
    /// An RTP packet.
    Rtp,
    /// An RTCP packet.
    Rtcp,
    /// Neither: too short or not version 2 (e.g. STUN).
    Other,
}

/// Demultiplexes RTP and RTCP sharing a port (RFC 5761 §4).
///
/// The second byte's low 7 bits fall in 64–95 for RTCP (packet types 192–223),
/// which is why RTP payload types 64–95 must not be used with rtcp-mux.
pub fn classify(buf: &[u8]) -> MuxedKind {
    if buf.len() < 2 || buf[0] >> 6 != 2 {
        return MuxedKind::Other;
    }
    match buf[1] & 0x7f {
        64..=95 => MuxedKind::Rtcp,
        _ => MuxedKind::Rtp,
    }
}

/// The sender information of an SR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderInfo {
    /// Wall-clock time the report was sent.
    pub ntp_time: NtpTime,
    /// RTP timestamp corresponding to `ntp_time`.
    pub rtp_time: RtpTimestamp,
    /// Packets sent since the start of transmission.
    pub packet_count: u32,
    /// Payload octets sent since the start of transmission.
    pub octet_count: u32,
}

/// One reception report block of an SR or RR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportBlock {
    /// The source this block reports on.
    pub ssrc: Ssrc,
    /// Fraction lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative packets lost (24-bit signed; negative with duplicates).
    pub cumulative_lost: i32,
    /// Extended highest sequence number received.
    pub highest_seq: u32,
    /// Interarrival jitter in timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP time of the last SR received from the source, 0 if none.
    pub lsr: u32,
    /// Delay since that SR in 1/65536 s.
    pub dlsr: u32,
}

impl ReportBlock {
    fn parse(b: &[u8]) -> ReportBlock {
        let lost_raw = read_u32(b, 4) & 0x00ff_ffff;
        // Shifting up then arithmetically down sign-extends the 24-bit field.
        let cumulative_lost = ((lost_raw << 8) as i32) >> 8;
        ReportBlock {
            ssrc: Ssrc(read_u32(b, 0)),
            fraction_lost: b[4],
            cumulative_lost,
            highest_seq: read_u32(b, 8),
            jitter: read_u32(b, 12),
            lsr: read_u32(b, 16),
            dlsr: read_u32(b, 20),
        }
    }
}

/// The report blocks of an SR or RR, read lazily.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportBlocks<'a> {
    rest: &'a [u8],
}

impl Iterator for ReportBlocks<'_> {
    type Item = ReportBlock;

    fn next(&mut self) -> Option<ReportBlock> {
        if self.rest.len() < REPORT_BLOCK_LEN {
            return None;
        }
        let (block, rest) = self.rest.split_at(REPORT_BLOCK_LEN);
        self.rest = rest;
        Some(ReportBlock::parse(block))
    }
}

/// One packet of a compound RTCP datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RtcpPacket<'a> {
    /// A sender report (PT 200).
    SenderReport {
        /// The sender.
        ssrc: Ssrc,
        /// The sender's transmission counters and clock mapping.
        info: SenderInfo,
        /// Reception reports on the sources the sender hears.
        blocks: ReportBlocks<'a>,
    },
    /// A receiver report (PT 201).
    ReceiverReport {
        /// The reporter.
        ssrc: Ssrc,
        /// Reception reports on the sources the reporter hears.
        blocks: ReportBlocks<'a>,
    },
    /// Any other packet type (SDES, BYE, APP, feedback, XR …), left unparsed.
    Other {
        /// The packet type.
        packet_type: u8,
        /// The 5-bit count/format field.
        count: u8,
        /// The packet after its 4-byte header, padding included.
        body: &'a [u8],
    },
}

/// Iterator over the packets of a compound RTCP datagram; see [`rtcp_packets`].
#[derive(Clone, Debug)]
pub struct RtcpPackets<'a> {
    rest: &'a [u8],
}

/// Iterates over the packets of a compound RTCP datagram.
///
/// Each packet's header is validated (version 2, length within the datagram,
/// report blocks within the packet); the first error ends the iteration. The
/// compound rules of RFC 3550 §6.1 (SR/RR first) are not enforced, so reduced-size
/// RTCP (RFC 5506) is read too.
pub fn rtcp_packets(buf: &[u8]) -> RtcpPackets<'_> {
    RtcpPackets { rest: buf }
}

impl<'a> RtcpPackets<'a> {
    fn parse_next(&mut self) -> Result<RtcpPacket<'a>, RtpError> {
        let buf = self.rest;
        if buf.len() < 4 {
            return Err(RtpError::TooShort {
                len: buf.len(),
                needed: 4,
            });
        }
        let version = buf[0] >> 6;
        if version != 2 {
            return Err(RtpError::BadVersion(version));
        }
        let declared = 4 * (usize::from(read_u16(buf, 2)) + 1);
        if declared > buf.len() {
            return Err(RtpError::RtcpLengthBeyondPacket {
                declared,
                available: buf.len(),
            });
        }
        let (packet, rest) = buf.split_at(declared);
        self.rest = rest;
        let count = buf[0] & 0x1f;
        let packet_type = buf[1];
        let body_start = match packet_type {
            RTCP_SR => 28,
            RTCP_RR => 8,
            _ => {
                return Ok(RtcpPacket::Other {
                    packet_type,
                    count,
                    body: &packet[4..],
                })
            }
        };
        let blocks_end = body_start + REPORT_BLOCK_LEN * usize::from(count);
        if blocks_end > packet.len() {
            return Err(RtpError::RtcpReportTruncated {
                packet_type,
                count,
                len: packet.len(),
            });
        }
        let ssrc = Ssrc(read_u32(packet, 4));
        let blocks = ReportBlocks {
            rest: &packet[body_start..blocks_end],
        };
        if packet_type == RTCP_RR {
            return Ok(RtcpPacket::ReceiverReport { ssrc, blocks });
        }
        let info = SenderInfo {
            ntp_time: NtpTime(
                (u64::from(read_u32(packet, 8)) << 32) | u64::from(read_u32(packet, 12)),
            ),
            rtp_time: RtpTimestamp(read_u32(packet, 16)),
            packet_count: read_u32(packet, 20),
            octet_count: read_u32(packet, 24),
        };
        Ok(RtcpPacket::SenderReport { ssrc, info, blocks })
    }
}

impl<'a> Iterator for RtcpPackets<'a> {
    type Item = Result<RtcpPacket<'a>, RtpError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let item = self.parse_next();
        if item.is_err() {
            self.rest = &[];
        }
        Some(item)
    }
}

/// Round-trip time from a report block received at `arrival` (RFC 3550 §6.4.1).
///
/// `None` when the block carries no LSR (the peer has not heard an SR yet) or
/// when the result would be negative (clock skew or a corrupt block).
pub fn round_trip_time(arrival: NtpTime, lsr: u32, dlsr: u32) -> Option<Duration> {
    if lsr == 0 {
        return None;
    }
    let a = arrival.middle32();
    // All three are 16.16 fixed point on a wrapping clock, so a wrapped
    // difference larger than half the range means the result is negative.
    let rtt = a.wrapping_sub(lsr).wrapping_sub(dlsr);
    if rtt > u32::MAX / 2 {
        return None;
    }
    let nanos = (u64::from(rtt) * 1_000_000_000) >> 16;
    Some(Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// V=2, M=1, PT=8, seq 0x1234, ts 0xdeadbeef, SSRC 0x01020304, payload [1,2,3].
    const SIMPLE: [u8; 15] = [
        0x80, 0x88, 0x12, 0x34, 0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04, 1, 2, 3,
    ];

    #[test]
    fn parses_fixed_header_fields() {
        let p = RtpPacket::parse(&SIMPLE).expect("valid packet");
        assert_eq!(p.version(), 2);
        assert!(!p.padding());
        assert!(!p.extension());
        assert_eq!(p.csrc_count(), 0);
        assert!(p.marker());
        assert_eq!(p.payload_type(), PayloadType::PCMA);
        assert_eq!(p.sequence(), SeqNum(0x1234));
        assert_eq!(p.timestamp(), RtpTimestamp(0xdead_beef));
        assert_eq!(p.ssrc(), Ssrc(0x0102_0304));
        assert_eq!(p.header_len(), 12);
        assert_eq!(p.payload(), &[1, 2, 3]);
        assert_eq!(p.padding_len(), 0);
        assert_eq!(p.extension_data(), None);
    }

    #[test]
    fn parses_csrcs_extension_and_padding() {
        let mut b = vec![0xb2, 0x00, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        b.extend_from_slice(&[0, 0, 0, 0x0a, 0, 0, 0, 0x0b]); // two CSRCs
        b.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0x20, 0x30, 0x40]); // one-word extension
        b.extend_from_slice(&[9, 9]); // payload
        b.extend_from_slice(&[0, 0, 3]); // three bytes of padding
        let p = RtpPacket::parse(&b).expect("valid packet");
        assert!(p.padding());
        assert!(p.extension());
        assert_eq!(p.csrc_count(), 2);
        assert_eq!(p.csrc(0), Some(Ssrc(0x0a)));
        assert_eq!(p.csrc(1), Some(Ssrc(0x0b)));
        assert_eq!(p.csrc(2), None);
        assert_eq!(p.header_len(), 12 + 8 + 8);
        assert_eq!(
            p.extension_data(),
            Some((0xbede, &[0x10, 0x20, 0x30, 0x40][..]))
        );
        assert_eq!(p.payload(), &[9, 9]);
        assert_eq!(p.padding_len(), 3);
    }

    #[test]
    fn rejects_malformed_packets() {
        assert_eq!(
            RtpPacket::parse(&SIMPLE[..11])
                .expect_err("short")
                .to_string(),
            "packet too short: 11 bytes, at least 12 needed"
        );
        let mut v1 = SIMPLE;
        v1[0] = 0x40;
        assert_eq!(
            RtpPacket::parse(&v1).expect_err("version 1"),
            RtpError::BadVersion(1)
        );
        let mut csrc = SIMPLE;
        csrc[0] = 0x81;
        assert_eq!(
            RtpPacket::parse(&csrc).expect_err("csrc beyond"),
            RtpError::CsrcBeyondPacket { count: 1, len: 15 }
        );
        let mut ext = SIMPLE.to_vec();
        ext[0] = 0x90;
        ext.push(0);
        ext[14] = 0;
        ext[15] = 2; // extension preamble at 12..16 declares 2 words, none follow
        assert_eq!(
            RtpPacket::parse(&ext).expect_err("extension beyond"),
            RtpError::ExtensionBeyondPacket {
                ext_len: 12,
                len: 16
            }
        );
        let mut ext_short = SIMPLE;
        ext_short[0] = 0x90;
        assert_eq!(
            RtpPacket::parse(&ext_short).expect_err("extension preamble beyond"),
            RtpError::ExtensionBeyondPacket {
                ext_len: 4,
                len: 15
            }
        );
        let mut pad = SIMPLE;
        pad[0] = 0xa0;
        pad[14] = 4;
        assert_eq!(
            RtpPacket::parse(&pad).expect_err("padding too large"),
            RtpError::BadPadding {
                padding: 4,
                available: 3
            }
        );
        pad[14] = 0;
        assert_eq!(
            RtpPacket::parse(&pad).expect_err("zero padding"),
            RtpError::BadPadding {
                padding: 0,
                available: 3
            }
        );
    }

    #[test]
    fn mutators_rewrite_in_place() {
        let mut b = SIMPLE;
        let mut p = RtpPacketMut::parse(&mut b).expect("valid packet");
        p.set_ssrc(Ssrc(0xcafe_f00d));
        p.set_sequence(SeqNum(0xfffe));
        p.set_timestamp(RtpTimestamp(160));
        p.set_marker(false);
        p.set_payload_type(PayloadType::PCMU);
        p.payload_mut()[0] = 7;
        let view = p.as_packet();
        assert!(!view.marker());
        assert_eq!(view.payload_type(), PayloadType::PCMU);
        p.set_marker(true);
        assert_eq!(
            b,
            [0x80, 0x80, 0xff, 0xfe, 0, 0, 0, 160, 0xca, 0xfe, 0xf0, 0x0d, 7, 2, 3]
        );
    }

    #[test]
    fn header_builder_writes_parseable_packets() {
        let header = RtpHeader {
            marker: true,
            payload_type: PayloadType::new(101).expect("7-bit"),
            sequence: SeqNum(7),
            timestamp: RtpTimestamp(0x0102_0304),
            ssrc: Ssrc(0xa0b0_c0d0),
        };
        let mut buf = [0u8; 20];
        let len = header.write_packet(&[0xaa, 0xbb], &mut buf).expect("fits");
        assert_eq!(len, 14);
        assert_eq!(
            buf[..14],
            [0x80, 0xe5, 0, 7, 1, 2, 3, 4, 0xa0, 0xb0, 0xc0, 0xd0, 0xaa, 0xbb]
        );
        let p = RtpPacket::parse(&buf[..len]).expect("valid packet");
        assert_eq!(p.payload_type().get(), 101);
        assert_eq!(
            header.write_packet(&[0; 9], &mut buf).expect_err("too big"),
            RtpError::BufferTooSmall {
                len: 20,
                needed: 21
            }
        );
        assert_eq!(PayloadType::new(128), None);
    }

    #[test]
    fn sequence_and_timestamp_arithmetic_wraps() {
        assert_eq!(SeqNum(65535).wrapping_add(2), SeqNum(1));
        assert_eq!(SeqNum(1).delta_from(SeqNum(65535)), 2);
        assert_eq!(SeqNum(65535).delta_from(SeqNum(1)), -2);
        assert_eq!(RtpTimestamp(u32::MAX).wrapping_add(160), RtpTimestamp(159));
        assert_eq!(RtpTimestamp(159).delta_from(RtpTimestamp(u32::MAX)), 160);
    }

    #[test]
    fn classifies_muxed_packets_by_payload_type_range() {
        assert_eq!(classify(&SIMPLE), MuxedKind::Rtp);
        assert_eq!(classify(&[0x80, 200]), MuxedKind::Rtcp); // SR
        assert_eq!(classify(&[0x81, 201]), MuxedKind::Rtcp); // RR
        assert_eq!(classify(&[0x80, 192]), MuxedKind::Rtcp); // lowest of 64–95
        assert_eq!(classify(&[0x80, 223]), MuxedKind::Rtcp); // highest
        assert_eq!(classify(&[0x80, 0x80 | 63]), MuxedKind::Rtp); // PT 63 with marker
        assert_eq!(classify(&[0x80, 96]), MuxedKind::Rtp);
        assert_eq!(classify(&[0x00, 0x01]), MuxedKind::Other); // STUN binding request
        assert_eq!(classify(&[0x80]), MuxedKind::Other);
    }

    /// An SR with one report block followed by an RR with one block and an SDES.
    fn compound() -> Vec<u8> {
        let mut b = vec![0x81, 200, 0, 12]; // SR, RC=1, 13 words
        b.extend_from_slice(&0x1111_1111u32.to_be_bytes()); // sender SSRC
        b.extend_from_slice(&0xe000_0001u32.to_be_bytes()); // NTP seconds
        b.extend_from_slice(&0x8000_0000u32.to_be_bytes()); // NTP fraction (0.5 s)
        b.extend_from_slice(&1000u32.to_be_bytes()); // RTP time
        b.extend_from_slice(&50u32.to_be_bytes()); // packets
        b.extend_from_slice(&8000u32.to_be_bytes()); // octets
        b.extend_from_slice(&0x2222_2222u32.to_be_bytes()); // block SSRC
        b.extend_from_slice(&[0x40, 0xff, 0xff, 0xfe]); // fraction 64/256, lost -2
        b.extend_from_slice(&0x0001_0005u32.to_be_bytes()); // one cycle, seq 5
        b.extend_from_slice(&37u32.to_be_bytes()); // jitter
        b.extend_from_slice(&0x0001_8000u32.to_be_bytes()); // LSR
        b.extend_from_slice(&0x0000_4000u32.to_be_bytes()); // DLSR = 0.25 s
        b.extend_from_slice(&[0x81, 201, 0, 7]); // RR, RC=1, 8 words
        b.extend_from_slice(&0x3333_3333u32.to_be_bytes());
        b.extend_from_slice(&0x1111_1111u32.to_be_bytes());
        b.extend_from_slice(&[0x00, 0x00, 0x00, 0x07]); // lost 7
        b.extend_from_slice(&0xffffu32.to_be_bytes());
        b.extend_from_slice(&[0; 12]);
        b.extend_from_slice(&[0x81, 202, 0, 1, 0, 0, 0, 9]); // SDES stub
        b
    }

    #[test]
    fn parses_compound_sr_rr_and_other() {
        let buf = compound();
        let packets: Vec<_> = rtcp_packets(&buf).map(|p| p.expect("valid RTCP")).collect();
        assert_eq!(packets.len(), 3);
        let RtcpPacket::SenderReport { ssrc, info, blocks } = &packets[0] else {
            panic!("first packet is not an SR: {:?}", packets[0]);
        };
        assert_eq!(*ssrc, Ssrc(0x1111_1111));
        assert_eq!(
            *info,
            SenderInfo {
                ntp_time: NtpTime(0xe000_0001_8000_0000),
                rtp_time: RtpTimestamp(1000),
                packet_count: 50,
                octet_count: 8000,
            }
        );
        let blocks: Vec<_> = blocks.clone().collect();
        assert_eq!(
            blocks,
            [ReportBlock {
                ssrc: Ssrc(0x2222_2222),
                fraction_lost: 64,
                cumulative_lost: -2,
                highest_seq: 0x0001_0005,
                jitter: 37,
                lsr: 0x0001_8000,
                dlsr: 0x4000,
            }]
        );
        let RtcpPacket::ReceiverReport { ssrc, blocks } = &packets[1] else {
            panic!("second packet is not an RR: {:?}", packets[1]);
        };
        assert_eq!(*ssrc, Ssrc(0x3333_3333));
        let blocks: Vec<_> = blocks.clone().collect();
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].cumulative_lost, 7);
        assert_eq!(blocks[0].highest_seq, 0xffff);
        let RtcpPacket::Other {
            packet_type,
            count,
            body,
        } = &packets[2]
        else {
            panic!("third packet is not SDES: {:?}", packets[2]);
        };
        assert_eq!((*packet_type, *count, *body), (202, 1, &[0u8, 0, 0, 9][..]));
    }

    #[test]
    fn rtcp_errors_end_iteration() {
        let mut buf = compound();
        buf.truncate(40); // cuts into the SR
        let items: Vec<_> = rtcp_packets(&buf).collect();
        assert_eq!(
            items,
            [Err(RtpError::RtcpLengthBeyondPacket {
                declared: 52,
                available: 40
            })]
        );
        // RC=2 but the 8-word length only leaves room for one block.
        let mut rr_too_many = vec![0x82, 201, 0, 7];
        rr_too_many.resize(32, 0);
        let items: Vec<_> = rtcp_packets(&rr_too_many).collect();
        assert_eq!(
            items,
            [Err(RtpError::RtcpReportTruncated {
                packet_type: 201,
                count: 2,
                len: 32
            })]
        );
    }

    #[test]
    fn rtt_from_lsr_and_dlsr() {
        // RFC 3550 §6.4.1 example: A = 0xb710:8000 (46864.5 s), LSR = 0xb705:2000
        // (46853.125 s), DLSR = 0x0005:4000 (5.25 s) ⇒ RTT 6.125 s.
        let arrival = NtpTime(0x0000_b710_8000_0000);
        let rtt = round_trip_time(arrival, 0xb705_2000, 0x0005_4000).expect("positive RTT");
        assert_eq!(rtt, Duration::from_millis(6125));
        assert_eq!(round_trip_time(arrival, 0, 0x0005_4000), None);
        assert_eq!(round_trip_time(arrival, 0xb710_8000, 0x0000_0001), None);
    }

    #[test]
    fn ntp_time_from_unix() {
        let ntp = NtpTime::from_unix(Duration::from_millis(1_500));
        assert_eq!(ntp.0 >> 32, NTP_UNIX_OFFSET_SECS + 1);
        assert_eq!(ntp.0 & 0xffff_ffff, 0x8000_0000);
        assert_eq!(
            ntp.middle32(),
            (((NTP_UNIX_OFFSET_SECS + 1) as u32) << 16) | 0x8000
        );
    }
}
