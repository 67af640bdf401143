//! Offer/answer rewriting (RFC 3264): the SDP the manager sends when it
//! relays an offer or an answer, and the answer it writes when it terminates
//! a leg itself.

use std::net::IpAddr;

use super::model::{
    AddrType, Attribute, Codec, Connection, Direction, Field, Fmtp, Formats, MediaDescription,
    MediaKind, Origin, PayloadType, Rtcp, RtpPort, Rtpmap, SessionDescription,
};
use super::SdpError;

/// The `o=` username of every SDP the manager writes.
pub const ORIGIN_USERNAME: &str = "switchboard";

/// The voice codecs the manager plays and records itself, in its own order
/// of preference (it answers with the offerer's preference, though).
pub const MANAGER_CODECS: [(&str, u32); 2] = [("PCMU", 8000), ("PCMA", 8000)];

/// The packetization the manager sends when it answers itself (RFC 3551
/// §4.5: 20 ms is the G.711 default).
const MANAGER_PTIME_MS: u32 = 20;

/// The RFC 4733 events the manager sends and understands: DTMF 0-9, *, #,
/// A-D.
const MANAGER_TELEPHONE_EVENTS: &str = "0-15";

/// The manager's media endpoint on one leg, as advertised to that leg's peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalEndpoint {
    /// The address the peer sends to (IPv4 or IPv6; picks `IN IP4`/`IN IP6`).
    pub address: IpAddr,
    /// The RTP port.
    pub rtp_port: RtpPort,
    /// The RTCP port, used when RTCP is not multiplexed.
    pub rtcp_port: RtpPort,
    /// Whether the manager offers `a=rtcp-mux` when the offerer did, and
    /// accepts it in answers (RFC 5761).
    pub rtcp_mux: bool,
}

/// One codec a [`CodecPolicy`] allows, matched by encoding name
/// (case-insensitive) and clock rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecSpec {
    /// The encoding name, such as `PCMU` or `telephone-event`.
    pub encoding: String,
    /// The clock rate in Hz.
    pub clock_rate: u32,
}

impl CodecSpec {
    /// `encoding/clock_rate`.
    pub fn new(encoding: &str, clock_rate: u32) -> Self {
        Self {
            encoding: encoding.to_owned(),
            clock_rate,
        }
    }

    fn matches(&self, codec: &Codec) -> bool {
        codec.is(&self.encoding, self.clock_rate)
    }
}

/// Which of the offerer's codecs a relayed offer keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecPolicy {
    /// Every codec the offerer listed, including unknown dynamic ones: the
    /// manager only forwards packets.
    Passthrough,
    /// Only these codecs, in the offerer's order: when the manager transcodes
    /// or may inject media. Include `telephone-event` to keep DTMF.
    Restrict(Vec<CodecSpec>),
}

impl CodecPolicy {
    /// PCMU, PCMA and telephone-event at 8 kHz: what the manager can
    /// transcode between and inject into.
    pub fn g711_with_telephone_event() -> Self {
        Self::Restrict(vec![
            CodecSpec::new("PCMU", 8000),
            CodecSpec::new("PCMA", 8000),
            CodecSpec::new("telephone-event", 8000),
        ])
    }
}

/// The manager's `o=` line towards one peer (RFC 3264 §5, §8): one session
/// id for the leg's lifetime and a version that moves only when the body
/// the manager sends changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginState {
    session_id: u64,
    version: u64,
    last_body: Option<String>,
}

impl OriginState {
    /// The origin of a new leg. `session_id` is chosen by the caller (a
    /// clock reading or a random number, per RFC 8866 §5.2); the first body
    /// gets version 1.
    pub fn new(session_id: u64) -> Self {
        Self {
            session_id,
            version: 0,
            last_body: None,
        }
    }

    /// The `(session id, version)` for a body about to be sent, given that
    /// body without its `o=` line; the version moves when the body differs
    /// from the previous one.
    pub fn next(&mut self, body_without_origin: &str) -> (u64, u64) {
        if self.last_body.as_deref() != Some(body_without_origin) {
            self.version += 1;
            self.last_body = Some(body_without_origin.to_owned());
        }
        (self.session_id, self.version)
    }

    /// Replaces `sdp`'s origin with the manager's, advertising `address`.
    pub fn stamp(&mut self, sdp: &mut SessionDescription, address: IpAddr) {
        let (session_id, version) = self.next(&sdp.body_without_origin());
        sdp.origin = Origin {
            username: ORIGIN_USERNAME.to_owned(),
            session_id: session_id.to_string(),
            version: version.to_string(),
            address_type: AddrType::of(address),
            address: address.to_string(),
        };
    }
}

/// The media section the manager anchors when relaying: the first active
/// RTP audio stream, since a leg has one port pair.
fn relayed_audio(sdp: &SessionDescription) -> Option<usize> {
    sdp.media.iter().position(|media| {
        media.kind == MediaKind::Audio && media.is_active() && media.protocol.is_rtp()
    })
}

/// Rewrites the offer the peer of one leg sent into the offer for the peer
/// of the other leg, whose manager endpoint is `local`.
///
/// Fails with [`SdpError::NoCommonCodec`] when `policy` leaves the anchored
/// audio stream without a voice codec.
pub fn rewrite_offer(
    offer: &SessionDescription,
    local: &LocalEndpoint,
    policy: &CodecPolicy,
    origin: &mut OriginState,
) -> Result<SessionDescription, SdpError> {
    let anchored = relayed_audio(offer);
    let mut out = offer.clone();
    rewrite_session_level(&mut out, local);
    for (index, media) in out.media.iter_mut().enumerate() {
        if Some(index) != anchored {
            reject(media, local);
            continue;
        }
        if let CodecPolicy::Restrict(allowed) = policy {
            restrict_codecs(media, allowed)?;
        }
        let direction = offer.media_direction(index);
        let held = is_rfc2543_hold(offer, index);
        anchor(media, local, direction, held);
        // The offerer's a=rtcp-mux is kept when the manager can mux this
        // side; a=rtcp stays as the fallback for an answerer that declines
        // (RFC 5761 §5.1.3).
        let mux = media.rtcp_mux() && local.rtcp_mux;
        set_rtcp(media, local, mux, false);
    }
    origin.stamp(&mut out, local.address);
    Ok(out)
}

/// Rewrites the answer the peer of one leg sent (to the manager's rewritten
/// offer) into the answer for the original offerer, whose manager endpoint is
/// `local`. `offer` is the offer as that offerer sent it.
pub fn rewrite_answer(
    offer: &SessionDescription,
    answer: &SessionDescription,
    local: &LocalEndpoint,
    origin: &mut OriginState,
) -> Result<SessionDescription, SdpError> {
    if offer.media.len() != answer.media.len() {
        return Err(SdpError::MediaCountMismatch {
            offer: offer.media.len(),
            answer: answer.media.len(),
        });
    }
    let anchored = relayed_audio(offer);
    let mut out = answer.clone();
    rewrite_session_level(&mut out, local);
    for (index, media) in out.media.iter_mut().enumerate() {
        if Some(index) != anchored || !media.is_active() {
            reject(media, local);
            continue;
        }
        let direction = answer.media_direction(index);
        let held = is_rfc2543_hold(answer, index);
        anchor(media, local, direction, held);
        // Mux towards the offerer depends only on what the offerer offered
        // and this side of the manager: the relay bridges a muxed side to a
        // non-muxed one.
        let mux = offer.media[index].rtcp_mux() && local.rtcp_mux;
        set_rtcp(media, local, mux, true);
    }
    origin.stamp(&mut out, local.address);
    Ok(out)
}

/// Writes the manager's own answer to `offer`, for a leg it terminates
/// (playback, IVR): the offerer's first codec among [`MANAGER_CODECS`], plus
/// telephone-event if offered, both with the offerer's payload type numbers.
///
/// Without audio in the offer, every stream is rejected and that is no
/// error; with audio the manager cannot handle, it fails with
/// [`SdpError::UnsupportedTransport`] or [`SdpError::NoCommonCodec`].
pub fn answer_locally(
    offer: &SessionDescription,
    local: &LocalEndpoint,
    origin: &mut OriginState,
) -> Result<SessionDescription, SdpError> {
    let audio: Vec<usize> = (0..offer.media.len())
        .filter(|&index| {
            let media = &offer.media[index];
            media.kind == MediaKind::Audio && media.is_active()
        })
        .collect();
    let plain: Vec<usize> = audio
        .iter()
        .copied()
        .filter(|&index| offer.media[index].protocol.is_plain_rtp())
        .collect();
    if let (Some(&first), None) = (audio.first(), plain.first()) {
        return Err(SdpError::UnsupportedTransport {
            protocol: offer.media[first].protocol.to_string(),
        });
    }
    let chosen = plain
        .iter()
        .find_map(|&index| manager_codec(&offer.media[index]).map(|codec| (index, codec)));
    if let (Some(&first), None) = (plain.first(), &chosen) {
        let offered: Vec<String> = offer.media[first]
            .codecs()
            .iter()
            .map(ToString::to_string)
            .collect();
        let supported: Vec<&str> = MANAGER_CODECS.iter().map(|(name, _)| *name).collect();
        return Err(SdpError::NoCommonCodec {
            offered: offered.join(", "),
            supported: supported.join(", "),
        });
    }

    let media = offer
        .media
        .iter()
        .enumerate()
        .map(|(index, offered)| match &chosen {
            Some((anchored, codec)) if *anchored == index => {
                let held = is_rfc2543_hold(offer, index);
                let mut direction = offer.media_direction(index);
                if held {
                    direction = direction.without_receive();
                }
                local_audio(offered, codec, local, direction.answered())
            }
            _ => MediaDescription {
                kind: offered.kind.clone(),
                port: RtpPort::REJECTED,
                port_count: None,
                protocol: offered.protocol.clone(),
                formats: offered.formats.clone(),
                fields: Vec::new(),
                connection: None,
                attributes: Vec::new(),
            },
        })
        .collect();
    let mut out = SessionDescription {
        origin: offer.origin.clone(),
        session_name: ORIGIN_USERNAME.to_owned(),
        fields: vec![Field {
            kind: 't',
            value: "0 0".to_owned(),
        }],
        connection: Some(Connection::new(local.address)),
        attributes: Vec::new(),
        media,
    };
    origin.stamp(&mut out, local.address);
    Ok(out)
}

/// The offerer's first codec the manager can play and record.
fn manager_codec(media: &MediaDescription) -> Option<Codec> {
    media.codecs().into_iter().find(|codec| {
        MANAGER_CODECS
            .iter()
            .any(|&(encoding, clock_rate)| codec.is(encoding, clock_rate))
    })
}

/// The manager's accepted audio section in its own answer.
fn local_audio(
    offered: &MediaDescription,
    codec: &Codec,
    local: &LocalEndpoint,
    direction: Direction,
) -> MediaDescription {
    let telephone_event = offered.codecs().into_iter().find(|candidate| {
        candidate.is_telephone_event() && candidate.clock_rate == codec.clock_rate
    });
    let mut payload_types = vec![codec.payload_type];
    let mut attributes = vec![Attribute::Rtpmap(Rtpmap {
        payload_type: codec.payload_type,
        encoding: codec.encoding.clone(),
        clock_rate: codec.clock_rate,
        channels: None,
    })];
    if let Some(event) = telephone_event {
        payload_types.push(event.payload_type);
        attributes.push(Attribute::Rtpmap(Rtpmap {
            payload_type: event.payload_type,
            encoding: event.encoding,
            clock_rate: event.clock_rate,
            channels: None,
        }));
        attributes.push(Attribute::Fmtp(Fmtp {
            format: event.payload_type.to_string(),
            params: MANAGER_TELEPHONE_EVENTS.to_owned(),
        }));
    }
    attributes.push(Attribute::Ptime(MANAGER_PTIME_MS));
    let mut media = MediaDescription {
        kind: MediaKind::Audio,
        port: local.rtp_port,
        port_count: None,
        protocol: offered.protocol.clone(),
        formats: Formats::Rtp(payload_types),
        fields: Vec::new(),
        connection: None,
        attributes,
    };
    set_rtcp(
        &mut media,
        local,
        offered.rtcp_mux() && local.rtcp_mux,
        true,
    );
    media.attributes.push(Attribute::Direction(direction));
    media
}

/// Session-level rewriting shared by relayed offers and answers.
fn rewrite_session_level(sdp: &mut SessionDescription, local: &LocalEndpoint) {
    if sdp.connection.is_some() {
        sdp.connection = Some(Connection::new(local.address));
    }
    sdp.attributes.retain(|attribute| !attribute.is_ice());
}

/// Whether media section `index` is on RFC 2543 hold: its connection
/// address is unspecified (`0.0.0.0`, or `::` from peers that carried the
/// idea over to IPv6).
fn is_rfc2543_hold(sdp: &SessionDescription, index: usize) -> bool {
    sdp.media_connection(index)
        .is_some_and(|connection| connection.address.is_unspecified())
}

/// Points the anchored stream at the manager. An RFC 2543 hold cannot
/// survive the address rewrite, so it becomes the explicit direction it
/// meant.
fn anchor(media: &mut MediaDescription, local: &LocalEndpoint, direction: Direction, held: bool) {
    media.port = local.rtp_port;
    media.port_count = None;
    if media.connection.is_some() {
        media.connection = Some(Connection::new(local.address));
    }
    media.attributes.retain(|attribute| !attribute.is_ice());
    if held {
        media.set_direction(direction.without_receive());
    }
}

/// Rejects a stream the manager does not anchor, keeping its place and
/// formats (RFC 3264 §6: an answer has as many `m=` lines as the offer; §8.2:
/// a rejected stream keeps its line). Its attributes and bandwidth go: they
/// describe the peer's stream, not one the manager offers.
fn reject(media: &mut MediaDescription, local: &LocalEndpoint) {
    media.port = RtpPort::REJECTED;
    media.port_count = None;
    media.fields.clear();
    media.attributes.clear();
    if media.connection.is_some() {
        media.connection = Some(Connection::new(local.address));
    }
}

/// Keeps only the payload types `allowed` names; fails when no voice codec
/// is left.
fn restrict_codecs(media: &mut MediaDescription, allowed: &[CodecSpec]) -> Result<(), SdpError> {
    let codecs = media.codecs();
    let kept: Vec<PayloadType> = codecs
        .iter()
        .filter(|codec| allowed.iter().any(|spec| spec.matches(codec)))
        .map(|codec| codec.payload_type)
        .collect();
    if !codecs
        .iter()
        .any(|codec| kept.contains(&codec.payload_type) && !codec.is_auxiliary())
    {
        let offered: Vec<String> = codecs.iter().map(ToString::to_string).collect();
        let supported: Vec<String> = allowed
            .iter()
            .map(|spec| format!("{}/{}", spec.encoding, spec.clock_rate))
            .collect();
        return Err(SdpError::NoCommonCodec {
            offered: offered.join(", "),
            supported: supported.join(", "),
        });
    }
    media.retain_payload_types(|payload_type| kept.contains(&payload_type));
    Ok(())
}

/// Sets `a=rtcp-mux` and `a=rtcp` for the manager's side of the stream.
///
/// With `mux`, `a=rtcp-mux` is present; `a=rtcp` is dropped in an answer
/// (mux is then agreed, RFC 5761 §5.1.1) and otherwise kept as the offer's
/// fallback. `a=rtcp` names the manager's RTCP port when the peer wrote one
/// (with an address if the peer's had one) or when that port is not RTP + 1.
fn set_rtcp(media: &mut MediaDescription, local: &LocalEndpoint, mux: bool, answer: bool) {
    let peer_rtcp = media.rtcp();
    let had_mux = media.rtcp_mux();
    let rtcp = (!(mux && answer)
        && (peer_rtcp.is_some() || local.rtcp_port != local.rtp_port.implicit_rtcp()))
    .then(|| Rtcp {
        port: local.rtcp_port,
        address: peer_rtcp
            .and_then(|rtcp| rtcp.address)
            .map(|_| local.address),
    });
    // Edited in place so that the peer's attribute order survives.
    media.attributes.retain_mut(|attribute| match attribute {
        Attribute::Rtcp(existing) => match rtcp {
            Some(rtcp) => {
                *existing = rtcp;
                true
            }
            None => false,
        },
        Attribute::RtcpMux => mux,
        _ => true,
    });
    if let (Some(rtcp), None) = (rtcp, peer_rtcp) {
        media.attributes.push(Attribute::Rtcp(rtcp));
    }
    if mux && !had_mux {
        media.attributes.push(Attribute::RtcpMux);
    }
}
