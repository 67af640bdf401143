//! The session-description model the manager reasons about, and its serializer.
//!
//! [`super::parse`] fills this model from the sdp-rs line types. The manager
//! prints the model itself rather than through sdp-rs because sdp-rs writes
//! `a=rtpmap:111 opus/48000/2` back as `opus/48000 2` and has no notion of
//! `a=rtcp` or `a=rtcp-mux`. Everything the manager does not interpret is kept
//! verbatim and in order, so an SDP that only passes through keeps every line.

use std::fmt;
use std::net::IpAddr;

/// An RTP payload type: the media layer's, so SDP and RTP agree on one type.
pub use crate::media::rtp::PayloadType;

/// A UDP port as carried in an `m=` line or an `a=rtcp` attribute: any
/// value a peer may write, odd or zero. (The manager's own allocated RTP
/// port, always the even port of a pair, is [`crate::ports::RtpPort`];
/// it converts into this one.)
///
/// Port 0 in an `m=` line rejects (in an answer) or disables (in an offer)
/// the stream (RFC 3264 §5.1, §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MediaPort(u16);

impl MediaPort {
    /// The port of a rejected or disabled stream.
    pub const REJECTED: Self = Self(0);

    /// Wraps a port number.
    pub const fn new(port: u16) -> Self {
        Self(port)
    }

    /// The port number.
    pub const fn get(self) -> u16 {
        self.0
    }

    /// The port RTCP uses when nothing says otherwise (RFC 3550 §11: RTP + 1).
    pub fn implicit_rtcp(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

impl fmt::Display for MediaPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The address type of `o=`, `c=` and `a=rtcp` (network type is always `IN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrType {
    /// `IP4`.
    Ip4,
    /// `IP6`.
    Ip6,
}

impl AddrType {
    /// The address type that announces `address`.
    pub fn of(address: IpAddr) -> Self {
        match address {
            IpAddr::V4(_) => Self::Ip4,
            IpAddr::V6(_) => Self::Ip6,
        }
    }
}

impl fmt::Display for AddrType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ip4 => "IP4",
            Self::Ip6 => "IP6",
        })
    }
}

/// The `o=` line.
///
/// Identifiers and the address stay text: peers use numbers beyond 64 bits
/// and host names here, and the manager never reads a peer's origin, it only
/// replaces it with its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `<username>`, `-` when the peer has none.
    pub username: String,
    /// `<sess-id>`.
    pub session_id: String,
    /// `<sess-version>`.
    pub version: String,
    /// `IP4` or `IP6`.
    pub address_type: AddrType,
    /// `<unicast-address>`: an address or a host name.
    pub address: String,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "o={} {} {} IN {} {}",
            self.username, self.session_id, self.version, self.address_type, self.address
        )
    }
}

/// A `c=` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    /// The connection address; `0.0.0.0` is RFC 2543 hold.
    pub address: IpAddr,
    /// The multicast TTL suffix (`/127`), as sdp-rs reads the first suffix.
    pub ttl: Option<u32>,
    /// The multicast address count suffix (`/127/2`).
    pub address_count: Option<u32>,
}

impl Connection {
    /// A unicast connection line for `address`.
    pub fn new(address: IpAddr) -> Self {
        Self {
            address,
            ttl: None,
            address_count: None,
        }
    }
}

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c=IN {} {}", AddrType::of(self.address), self.address)?;
        match (self.ttl, self.address_count) {
            (Some(ttl), _) => write!(f, "/{ttl}")?,
            // `addr//count` as received: `addr/count` would read back as a TTL.
            (None, Some(_)) => f.write_str("/")?,
            (None, None) => {}
        }
        if let Some(count) = self.address_count {
            write!(f, "/{count}")?;
        }
        Ok(())
    }
}

/// The media direction attributes (RFC 3264 §5.1, §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `a=sendrecv`, the default.
    SendRecv,
    /// `a=sendonly`.
    SendOnly,
    /// `a=recvonly`.
    RecvOnly,
    /// `a=inactive`.
    Inactive,
}

impl Direction {
    /// The attribute name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SendRecv => "sendrecv",
            Self::SendOnly => "sendonly",
            Self::RecvOnly => "recvonly",
            Self::Inactive => "inactive",
        }
    }

    /// The direction an answerer states for an offer with this direction
    /// when it accepts everything offered (RFC 3264 §6.1).
    pub fn answered(self) -> Self {
        match self {
            Self::SendRecv => Self::SendRecv,
            Self::SendOnly => Self::RecvOnly,
            Self::RecvOnly => Self::SendOnly,
            Self::Inactive => Self::Inactive,
        }
    }

    /// This direction without the receive half: what a `c=0.0.0.0` (RFC 2543
    /// hold) means, since nothing can be sent to that address.
    pub fn without_receive(self) -> Self {
        match self {
            Self::SendRecv | Self::SendOnly => Self::SendOnly,
            Self::RecvOnly | Self::Inactive => Self::Inactive,
        }
    }

    /// Whether the side that wrote this direction sends media.
    pub fn sends(self) -> bool {
        matches!(self, Self::SendRecv | Self::SendOnly)
    }

    /// Whether the side that wrote this direction receives media.
    pub fn receives(self) -> bool {
        matches!(self, Self::SendRecv | Self::RecvOnly)
    }
}

/// An `a=rtpmap` attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rtpmap {
    /// The payload type it maps.
    pub payload_type: PayloadType,
    /// The encoding name as written (`opus`, `PCMU`, `telephone-event`).
    pub encoding: String,
    /// The RTP clock rate in Hz.
    pub clock_rate: u32,
    /// Audio channels, when given (`/2`).
    pub channels: Option<u8>,
}

/// An `a=fmtp` attribute, parameters kept verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fmtp {
    /// The format it applies to: a payload type number for RTP streams.
    pub format: String,
    /// Everything after the format, possibly empty.
    pub params: String,
}

/// An `a=rtcp` attribute (RFC 3605).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rtcp {
    /// The RTCP port.
    pub port: MediaPort,
    /// The RTCP address when it differs from the connection address.
    pub address: Option<IpAddr>,
}

/// One `a=` line: the ones the manager interprets, typed; every other one
/// verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribute {
    /// `a=rtpmap:<pt> <encoding>/<clock>[/<channels>]`.
    Rtpmap(Rtpmap),
    /// `a=fmtp:<format> <params>`.
    Fmtp(Fmtp),
    /// `a=ptime:<ms>` with a whole number of milliseconds.
    Ptime(u32),
    /// `a=maxptime:<ms>` with a whole number of milliseconds.
    Maxptime(u32),
    /// `a=sendrecv`, `a=sendonly`, `a=recvonly`, `a=inactive`.
    Direction(Direction),
    /// `a=rtcp:<port>[ IN <addrtype> <address>]`.
    Rtcp(Rtcp),
    /// `a=rtcp-mux` (RFC 5761).
    RtcpMux,
    /// Any other attribute, kept as written.
    Other {
        /// Everything before the first `:`.
        name: String,
        /// Everything after the first `:`, when there is one.
        value: Option<String>,
    },
}

impl Attribute {
    /// Whether this attribute is part of ICE (RFC 8839) and so describes the
    /// peer's own candidate addresses, which the manager hides by anchoring
    /// the media.
    pub fn is_ice(&self) -> bool {
        match self {
            Self::Other { name, .. } => {
                name.starts_with("ice-")
                    || matches!(
                        name.as_str(),
                        "candidate" | "remote-candidates" | "end-of-candidates"
                    )
            }
            _ => false,
        }
    }
}

impl fmt::Display for Attribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rtpmap(rtpmap) => {
                write!(
                    f,
                    "a=rtpmap:{} {}/{}",
                    rtpmap.payload_type, rtpmap.encoding, rtpmap.clock_rate
                )?;
                if let Some(channels) = rtpmap.channels {
                    write!(f, "/{channels}")?;
                }
                Ok(())
            }
            Self::Fmtp(fmtp) if fmtp.params.is_empty() => write!(f, "a=fmtp:{}", fmtp.format),
            Self::Fmtp(fmtp) => write!(f, "a=fmtp:{} {}", fmtp.format, fmtp.params),
            Self::Ptime(ms) => write!(f, "a=ptime:{ms}"),
            Self::Maxptime(ms) => write!(f, "a=maxptime:{ms}"),
            Self::Direction(direction) => write!(f, "a={}", direction.as_str()),
            Self::Rtcp(Rtcp {
                port,
                address: None,
            }) => write!(f, "a=rtcp:{port}"),
            Self::Rtcp(Rtcp {
                port,
                address: Some(address),
            }) => write!(f, "a=rtcp:{port} IN {} {address}", AddrType::of(*address)),
            Self::RtcpMux => f.write_str("a=rtcp-mux"),
            Self::Other { name, value: None } => write!(f, "a={name}"),
            Self::Other {
                name,
                value: Some(value),
            } => write!(f, "a={name}:{value}"),
        }
    }
}

/// A line the manager keeps verbatim (`i=`, `u=`, `e=`, `p=`, `b=`, `t=`,
/// `r=`, `z=`, `k=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The type letter.
    pub kind: char,
    /// Everything after `=`.
    pub value: String,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.kind, self.value)
    }
}

/// A codec as the manager compares them: payload type, encoding, clock rate
/// and channels, resolved from `a=rtpmap` or the RFC 3551 static table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Codec {
    /// The payload type the stream uses for it.
    pub payload_type: PayloadType,
    /// The encoding name as written.
    pub encoding: String,
    /// The RTP clock rate in Hz.
    pub clock_rate: u32,
    /// Audio channels, when stated.
    pub channels: Option<u8>,
}

impl Codec {
    /// Whether this is `encoding/clock_rate` (encoding names are
    /// case-insensitive, RFC 4855 §3) with at most one channel.
    pub fn is(&self, encoding: &str, clock_rate: u32) -> bool {
        self.encoding.eq_ignore_ascii_case(encoding)
            && self.clock_rate == clock_rate
            && self.channels.is_none_or(|channels| channels == 1)
    }

    /// Whether this is RFC 4733 `telephone-event` (DTMF).
    pub fn is_telephone_event(&self) -> bool {
        self.encoding.eq_ignore_ascii_case("telephone-event")
    }

    /// Whether this carries no voice of its own: telephone-event or comfort
    /// noise (RFC 3389), which never count as the call's codec.
    pub fn is_auxiliary(&self) -> bool {
        self.is_telephone_event() || self.encoding.eq_ignore_ascii_case("CN")
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.encoding, self.clock_rate)?;
        if let Some(channels) = self.channels {
            write!(f, "/{channels}")?;
        }
        Ok(())
    }
}

/// RFC 3551 §6 tables 4 and 5: payload types with a static meaning.
const STATIC_PAYLOAD_TYPES: &[(u8, &str, u32, Option<u8>)] = &[
    (0, "PCMU", 8000, Some(1)),
    (3, "GSM", 8000, Some(1)),
    (4, "G723", 8000, Some(1)),
    (5, "DVI4", 8000, Some(1)),
    (6, "DVI4", 16000, Some(1)),
    (7, "LPC", 8000, Some(1)),
    (8, "PCMA", 8000, Some(1)),
    (9, "G722", 8000, Some(1)),
    (10, "L16", 44100, Some(2)),
    (11, "L16", 44100, Some(1)),
    (12, "QCELP", 8000, Some(1)),
    (13, "CN", 8000, Some(1)),
    (14, "MPA", 90000, None),
    (15, "G728", 8000, Some(1)),
    (16, "DVI4", 11025, Some(1)),
    (17, "DVI4", 22050, Some(1)),
    (18, "G729", 8000, Some(1)),
    (25, "CelB", 90000, None),
    (26, "JPEG", 90000, None),
    (28, "nv", 90000, None),
    (31, "H261", 90000, None),
    (32, "MPV", 90000, None),
    (33, "MP2T", 90000, None),
    (34, "H263", 90000, None),
];

/// The codec a static payload type stands for without `a=rtpmap` (RFC 3551).
pub fn static_codec(payload_type: PayloadType) -> Option<Codec> {
    STATIC_PAYLOAD_TYPES
        .iter()
        .find(|(pt, ..)| *pt == payload_type.get())
        .map(|&(_, encoding, clock_rate, channels)| Codec {
            payload_type,
            encoding: encoding.to_owned(),
            clock_rate,
            // RFC 3551 omits the channel count for mono; so does the model,
            // so that a resolved static codec prints like its rtpmap would.
            channels: channels.filter(|&n| n != 1),
        })
}

/// The media type of an `m=` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaKind {
    /// `audio`.
    Audio,
    /// `video`.
    Video,
    /// `text`.
    Text,
    /// `application`.
    Application,
    /// `message`.
    Message,
    /// `image` (T.38 fax).
    Image,
    /// Anything else, as written.
    Other(String),
}

impl fmt::Display for MediaKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Audio => "audio",
            Self::Video => "video",
            Self::Text => "text",
            Self::Application => "application",
            Self::Message => "message",
            Self::Image => "image",
            Self::Other(kind) => kind,
        })
    }
}

/// The transport protocol of an `m=` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    /// `RTP/AVP` (RFC 3551).
    RtpAvp,
    /// `RTP/AVPF` (RFC 4585).
    RtpAvpf,
    /// `RTP/SAVP` (RFC 3711).
    RtpSavp,
    /// `RTP/SAVPF` (RFC 5124).
    RtpSavpf,
    /// `UDP/TLS/RTP/SAVP` (RFC 5764).
    UdpTlsRtpSavp,
    /// `UDP/TLS/RTP/SAVPF` (RFC 5764, WebRTC).
    UdpTlsRtpSavpf,
    /// Anything else, as written (`udptl`, `TCP/MSRP`, …).
    Other(String),
}

impl Protocol {
    /// Reads the protocol field of an `m=` line.
    pub fn from_token(token: &str) -> Self {
        match token {
            "RTP/AVP" => Self::RtpAvp,
            "RTP/AVPF" => Self::RtpAvpf,
            "RTP/SAVP" => Self::RtpSavp,
            "RTP/SAVPF" => Self::RtpSavpf,
            "UDP/TLS/RTP/SAVP" => Self::UdpTlsRtpSavp,
            "UDP/TLS/RTP/SAVPF" => Self::UdpTlsRtpSavpf,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The protocol field as written.
    pub fn as_str(&self) -> &str {
        match self {
            Self::RtpAvp => "RTP/AVP",
            Self::RtpAvpf => "RTP/AVPF",
            Self::RtpSavp => "RTP/SAVP",
            Self::RtpSavpf => "RTP/SAVPF",
            Self::UdpTlsRtpSavp => "UDP/TLS/RTP/SAVP",
            Self::UdpTlsRtpSavpf => "UDP/TLS/RTP/SAVPF",
            Self::Other(other) => other,
        }
    }

    /// Whether the stream is RTP, so that its formats are payload types.
    pub fn is_rtp(&self) -> bool {
        self.as_str()
            .split('/')
            .any(|part| part.eq_ignore_ascii_case("RTP"))
    }

    /// Whether the manager can play and record the stream itself: plain RTP,
    /// no SRTP keys it would have to hold.
    pub fn is_plain_rtp(&self) -> bool {
        matches!(self, Self::RtpAvp | Self::RtpAvpf)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The format list of an `m=` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Formats {
    /// RTP payload types, in the order of preference written.
    Rtp(Vec<PayloadType>),
    /// The formats of a non-RTP protocol, as written (`t38`, `*`, …).
    Other(Vec<String>),
}

impl fmt::Display for Formats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut separator = "";
        match self {
            Self::Rtp(payload_types) => {
                for payload_type in payload_types {
                    write!(f, "{separator}{payload_type}")?;
                    separator = " ";
                }
            }
            Self::Other(formats) => {
                for format in formats {
                    write!(f, "{separator}{format}")?;
                    separator = " ";
                }
            }
        }
        Ok(())
    }
}

/// One media section: the `m=` line and the lines up to the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDescription {
    /// The media type.
    pub kind: MediaKind,
    /// The transport port; [`MediaPort::REJECTED`] for a rejected stream.
    pub port: MediaPort,
    /// The `/<count>` after the port, for layered encodings.
    pub port_count: Option<u8>,
    /// The transport protocol.
    pub protocol: Protocol,
    /// The formats, in order of preference.
    pub formats: Formats,
    /// `i=`, `b=` and `k=` lines, verbatim and in order.
    pub fields: Vec<Field>,
    /// The media-level `c=` line, overriding the session-level one.
    pub connection: Option<Connection>,
    /// The `a=` lines, in order.
    pub attributes: Vec<Attribute>,
}

impl MediaDescription {
    /// Whether the stream is in use: a non-zero port (RFC 3264 §5.1).
    pub fn is_active(&self) -> bool {
        self.port != MediaPort::REJECTED
    }

    /// The payload types of an RTP stream in order; empty for other protocols.
    pub fn payload_types(&self) -> &[PayloadType] {
        match &self.formats {
            Formats::Rtp(payload_types) => payload_types,
            Formats::Other(_) => &[],
        }
    }

    /// The `a=rtpmap` of `payload_type`, if the section has one.
    pub fn rtpmap(&self, payload_type: PayloadType) -> Option<&Rtpmap> {
        self.attributes
            .iter()
            .find_map(|attribute| match attribute {
                Attribute::Rtpmap(rtpmap) if rtpmap.payload_type == payload_type => Some(rtpmap),
                _ => None,
            })
    }

    /// The `a=fmtp` of `payload_type`, if the section has one.
    pub fn fmtp(&self, payload_type: PayloadType) -> Option<&Fmtp> {
        let format = payload_type.to_string();
        self.attributes
            .iter()
            .find_map(|attribute| match attribute {
                Attribute::Fmtp(fmtp) if fmtp.format == format => Some(fmtp),
                _ => None,
            })
    }

    /// The codec `payload_type` stands for: its `a=rtpmap`, else the RFC 3551
    /// static assignment.
    pub fn codec(&self, payload_type: PayloadType) -> Option<Codec> {
        match self.rtpmap(payload_type) {
            Some(rtpmap) => Some(Codec {
                payload_type,
                encoding: rtpmap.encoding.clone(),
                clock_rate: rtpmap.clock_rate,
                channels: rtpmap.channels,
            }),
            None => static_codec(payload_type),
        }
    }

    /// The codecs of the `m=` line in order; dynamic payload types without
    /// `a=rtpmap` are left out since nothing says what they are.
    pub fn codecs(&self) -> Vec<Codec> {
        self.payload_types()
            .iter()
            .filter_map(|&payload_type| self.codec(payload_type))
            .collect()
    }

    /// The media-level direction attribute, if any.
    pub fn direction(&self) -> Option<Direction> {
        self.attributes
            .iter()
            .find_map(|attribute| match attribute {
                Attribute::Direction(direction) => Some(*direction),
                _ => None,
            })
    }

    /// `a=ptime` in milliseconds, if any.
    pub fn ptime(&self) -> Option<u32> {
        self.attributes
            .iter()
            .find_map(|attribute| match attribute {
                Attribute::Ptime(ms) => Some(*ms),
                _ => None,
            })
    }

    /// `a=rtcp`, if any.
    pub fn rtcp(&self) -> Option<Rtcp> {
        self.attributes
            .iter()
            .find_map(|attribute| match attribute {
                Attribute::Rtcp(rtcp) => Some(*rtcp),
                _ => None,
            })
    }

    /// Whether the section carries `a=rtcp-mux`.
    pub fn rtcp_mux(&self) -> bool {
        self.attributes.contains(&Attribute::RtcpMux)
    }

    /// Sets the media-level direction, replacing the one written, if any.
    pub fn set_direction(&mut self, direction: Direction) {
        let mut replaced = false;
        self.attributes.retain_mut(|attribute| match attribute {
            Attribute::Direction(_) if replaced => false,
            Attribute::Direction(existing) => {
                *existing = direction;
                replaced = true;
                true
            }
            _ => true,
        });
        if !replaced {
            self.attributes.push(Attribute::Direction(direction));
        }
    }

    /// Keeps the payload types `keep` accepts, in order, and drops the
    /// `a=rtpmap`, `a=fmtp` and `a=rtcp-fb` lines of the others.
    pub fn retain_payload_types(&mut self, mut keep: impl FnMut(PayloadType) -> bool) {
        let Formats::Rtp(payload_types) = &mut self.formats else {
            return;
        };
        payload_types.retain(|&payload_type| keep(payload_type));
        let kept: Vec<String> = payload_types.iter().map(ToString::to_string).collect();
        self.attributes
            .retain(|attribute| match attribute_payload_type(attribute) {
                // `a=rtcp-fb:*` applies to every payload type.
                Some(format) => format == "*" || kept.contains(&format),
                None => true,
            });
    }
}

/// The payload type an attribute is bound to, as written, for the attributes
/// that must go when their payload type leaves the `m=` line.
fn attribute_payload_type(attribute: &Attribute) -> Option<String> {
    match attribute {
        Attribute::Rtpmap(rtpmap) => Some(rtpmap.payload_type.to_string()),
        Attribute::Fmtp(fmtp) => Some(fmtp.format.clone()),
        Attribute::Other {
            name,
            value: Some(value),
        } if name == "rtcp-fb" => value.split_whitespace().next().map(str::to_owned),
        _ => None,
    }
}

impl fmt::Display for MediaDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m={} {}", self.kind, self.port)?;
        if let Some(count) = self.port_count {
            write!(f, "/{count}")?;
        }
        write!(f, " {} {}\r\n", self.protocol, self.formats)?;
        // RFC 8866 §5 fixes the order: i=, c=, b=, k=, a=.
        write_fields(f, &self.fields, &['i'])?;
        if let Some(connection) = &self.connection {
            write!(f, "{connection}\r\n")?;
        }
        write_fields(f, &self.fields, &['b'])?;
        write_fields(f, &self.fields, &['k'])?;
        for attribute in &self.attributes {
            write!(f, "{attribute}\r\n")?;
        }
        Ok(())
    }
}

/// A whole SDP body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    /// The `o=` line.
    pub origin: Origin,
    /// The `s=` value; `-` when the peer sent none.
    pub session_name: String,
    /// `i=`, `u=`, `e=`, `p=`, `b=`, `t=`, `r=`, `z=` and `k=` lines,
    /// verbatim and in order. Without a `t=` line, `t=0 0` is written.
    pub fields: Vec<Field>,
    /// The session-level `c=` line.
    pub connection: Option<Connection>,
    /// The session-level `a=` lines, in order.
    pub attributes: Vec<Attribute>,
    /// The media sections, in order.
    pub media: Vec<MediaDescription>,
}

impl SessionDescription {
    /// The session-level direction attribute, if any.
    pub fn direction(&self) -> Option<Direction> {
        self.attributes
            .iter()
            .find_map(|attribute| match attribute {
                Attribute::Direction(direction) => Some(*direction),
                _ => None,
            })
    }

    /// The direction in force for media section `index`: its own attribute,
    /// else the session-level one, else `sendrecv` (RFC 3264 §5.1).
    pub fn media_direction(&self, index: usize) -> Direction {
        self.media
            .get(index)
            .and_then(MediaDescription::direction)
            .or_else(|| self.direction())
            .unwrap_or(Direction::SendRecv)
    }

    /// The connection in force for media section `index`: its own `c=`,
    /// else the session-level one.
    pub fn media_connection(&self, index: usize) -> Option<Connection> {
        self.media
            .get(index)
            .and_then(|media| media.connection)
            .or(self.connection)
    }

    /// The body as it would be sent, without the `o=` line: what
    /// [`super::OriginState`] compares to decide whether the version moves.
    pub fn body_without_origin(&self) -> String {
        let mut body = String::new();
        // Writing to a String cannot fail.
        let _ = fmt::write(
            &mut body,
            format_args!(
                "{}",
                Body {
                    sdp: self,
                    with_origin: false
                }
            ),
        );
        body
    }
}

impl fmt::Display for SessionDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Body {
            sdp: self,
            with_origin: true,
        }
        .fmt(f)
    }
}

/// The serializer, with or without the `o=` line.
struct Body<'a> {
    sdp: &'a SessionDescription,
    with_origin: bool,
}

impl fmt::Display for Body<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sdp = self.sdp;
        f.write_str("v=0\r\n")?;
        if self.with_origin {
            write!(f, "{}\r\n", sdp.origin)?;
        }
        write!(f, "s={}\r\n", sdp.session_name)?;
        // RFC 8866 §5 fixes the order: i= u= e= p= c= b= t= r= z= k= a= m=.
        write_fields(f, &sdp.fields, &['i', 'u', 'e', 'p'])?;
        if let Some(connection) = &sdp.connection {
            write!(f, "{connection}\r\n")?;
        }
        write_fields(f, &sdp.fields, &['b'])?;
        if !sdp.fields.iter().any(|field| field.kind == 't') {
            // t= is mandatory (RFC 8866 §5.9) but some peers omit it; `0 0`
            // is what an unbounded SIP session states.
            f.write_str("t=0 0\r\n")?;
        }
        write_fields(f, &sdp.fields, &['t', 'r', 'z'])?;
        write_fields(f, &sdp.fields, &['k'])?;
        for attribute in &sdp.attributes {
            write!(f, "{attribute}\r\n")?;
        }
        for media in &sdp.media {
            media.fmt(f)?;
        }
        Ok(())
    }
}

/// Writes the fields whose type letter is in `kinds`, in their own order.
fn write_fields(f: &mut fmt::Formatter<'_>, fields: &[Field], kinds: &[char]) -> fmt::Result {
    for field in fields.iter().filter(|field| kinds.contains(&field.kind)) {
        write!(f, "{field}\r\n")?;
    }
    Ok(())
}
