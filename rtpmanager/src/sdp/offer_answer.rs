//! Offer/answer rewriting (RFC 3264): the SDP the manager sends when it
//! relays an offer or an answer, and the answer it writes when it terminates
//! a leg itself.

use std::net::IpAddr;

use super::model::{
    AddrType, Attribute, Codec, Connection, Direction, Field, Fmtp, Formats, MediaDescription,
    MediaKind, MediaPort, Origin, PayloadType, Rtcp, Rtpmap, SessionDescription,
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
    pub rtp_port: MediaPort,
    /// The RTCP port, used when RTCP is not multiplexed.
    pub rtcp_port: MediaPort,
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
                port: MediaPort::REJECTED,
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
    media.port = MediaPort::REJECTED;
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

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::super::test_support::{body, parsed};
    use super::*;

    fn endpoint_v4(rtp: u16) -> LocalEndpoint {
        LocalEndpoint {
            address: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10)),
            rtp_port: MediaPort::new(rtp),
            rtcp_port: MediaPort::new(rtp + 1),
            rtcp_mux: true,
        }
    }

    fn endpoint_v6(rtp: u16) -> LocalEndpoint {
        LocalEndpoint {
            address: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10)),
            ..endpoint_v4(rtp)
        }
    }

    /// A softphone's offer: Opus first, G.711, DTMF, RTCP attributes, ICE,
    /// and a video stream.
    const PHONE_OFFER: &[&str] = &[
        "v=0",
        "o=alice 2890844526 2890844527 IN IP4 198.51.100.7",
        "s=Talk",
        "c=IN IP4 198.51.100.7",
        "t=0 0",
        "a=ice-lite",
        "m=audio 49170 RTP/AVP 111 0 8 101",
        "c=IN IP4 198.51.100.7",
        "a=rtpmap:111 opus/48000/2",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=rtcp-fb:111 transport-cc",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=ptime:20",
        "a=rtcp:49171 IN IP4 198.51.100.7",
        "a=rtcp-mux",
        "a=ice-ufrag:F7gI",
        "a=ice-pwd:x9cml/YzichV2+XlhiMu8g",
        "a=candidate:1 1 UDP 2130706431 198.51.100.7 49170 typ host",
        "a=end-of-candidates",
        "a=sendrecv",
        "m=video 51372 RTP/AVP 96",
        "a=rtpmap:96 H264/90000",
    ];

    /// A minimal G.711 offer with the given audio `m=` line and extra
    /// audio-level lines.
    fn g711_offer(m_line: &str, extra: &[&str]) -> SessionDescription {
        let mut lines = vec![
            "v=0",
            "o=- 5 5 IN IP4 192.0.2.5",
            "s=-",
            "c=IN IP4 192.0.2.5",
            "t=0 0",
            m_line,
        ];
        lines.extend_from_slice(extra);
        parsed(&lines)
    }

    fn relayed(offer: &SessionDescription) -> String {
        rewrite_offer(
            offer,
            &endpoint_v4(30000),
            &CodecPolicy::Passthrough,
            &mut OriginState::new(42),
        )
        .expect("passthrough relay never fails")
        .to_string()
    }

    fn answered(offer: &SessionDescription) -> String {
        answer_locally(offer, &endpoint_v4(30000), &mut OriginState::new(9))
            .expect("the offer has G.711")
            .to_string()
    }

    #[test]
    fn relayed_offer_points_at_the_manager_and_keeps_every_codec_line() {
        assert_eq!(
            relayed(&parsed(PHONE_OFFER)),
            body(&[
                "v=0",
                "o=switchboard 42 1 IN IP4 203.0.113.10",
                "s=Talk",
                "c=IN IP4 203.0.113.10",
                "t=0 0",
                "m=audio 30000 RTP/AVP 111 0 8 101",
                "c=IN IP4 203.0.113.10",
                "a=rtpmap:111 opus/48000/2",
                "a=fmtp:111 minptime=10;useinbandfec=1",
                "a=rtcp-fb:111 transport-cc",
                "a=rtpmap:0 PCMU/8000",
                "a=rtpmap:8 PCMA/8000",
                "a=rtpmap:101 telephone-event/8000",
                "a=fmtp:101 0-16",
                "a=ptime:20",
                "a=rtcp:30001 IN IP4 203.0.113.10",
                "a=rtcp-mux",
                "a=sendrecv",
                "m=video 0 RTP/AVP 96",
            ])
        );
    }

    #[test]
    fn ipv4_offer_relayed_to_an_ipv6_side_uses_in_ip6_everywhere() {
        let out = rewrite_offer(
            &parsed(PHONE_OFFER),
            &endpoint_v6(30000),
            &CodecPolicy::Passthrough,
            &mut OriginState::new(42),
        )
        .expect("passthrough relay never fails")
        .to_string();
        let lines: Vec<&str> = out.split("\r\n").collect();
        assert_eq!(lines[1], "o=switchboard 42 1 IN IP6 2001:db8::10");
        assert_eq!(lines[3], "c=IN IP6 2001:db8::10", "session-level c=");
        assert_eq!(lines[6], "c=IN IP6 2001:db8::10", "media-level c=");
        assert!(lines.contains(&"a=rtcp:30001 IN IP6 2001:db8::10"));
        assert!(!out.contains("IP4"), "no IPv4 left in {out}");
    }

    #[test]
    fn ipv6_offer_relayed_to_an_ipv4_side_uses_in_ip4() {
        let offer = parsed(&[
            "v=0",
            "o=- 1 1 IN IP6 2001:db8::7",
            "s=-",
            "c=IN IP6 2001:db8::7",
            "t=0 0",
            "m=audio 5004 RTP/AVP 0",
            "c=IN IP6 2001:db8::7",
        ]);
        assert_eq!(
            relayed(&offer),
            body(&[
                "v=0",
                "o=switchboard 42 1 IN IP4 203.0.113.10",
                "s=-",
                "c=IN IP4 203.0.113.10",
                "t=0 0",
                "m=audio 30000 RTP/AVP 0",
                "c=IN IP4 203.0.113.10",
            ])
        );
    }

    #[test]
    fn restrict_policy_keeps_g711_and_telephone_event_in_offerer_order() {
        let out = rewrite_offer(
            &parsed(PHONE_OFFER),
            &endpoint_v4(30000),
            &CodecPolicy::g711_with_telephone_event(),
            &mut OriginState::new(42),
        )
        .expect("the offer has G.711");
        let audio = out.to_string();
        let start = audio.find("m=audio").expect("audio section kept");
        let end = audio.find("m=video").expect("video section kept");
        assert_eq!(
            &audio[start..end],
            body(&[
                "m=audio 30000 RTP/AVP 0 8 101",
                "c=IN IP4 203.0.113.10",
                "a=rtpmap:0 PCMU/8000",
                "a=rtpmap:8 PCMA/8000",
                "a=rtpmap:101 telephone-event/8000",
                "a=fmtp:101 0-16",
                "a=ptime:20",
                "a=rtcp:30001 IN IP4 203.0.113.10",
                "a=rtcp-mux",
                "a=sendrecv",
            ])
        );
    }

    #[test]
    fn restrict_policy_drops_only_the_feedback_of_removed_codecs() {
        let offer = g711_offer(
            "m=audio 5004 RTP/AVPF 111 0",
            &[
                "a=rtpmap:111 opus/48000/2",
                "a=rtcp-fb:* nack",
                "a=rtcp-fb:111 transport-cc",
                "a=rtcp-fb:0 nack pli",
            ],
        );
        let out = rewrite_offer(
            &offer,
            &endpoint_v4(30000),
            &CodecPolicy::g711_with_telephone_event(),
            &mut OriginState::new(42),
        )
        .expect("the offer has PCMU");
        assert!(out.to_string().ends_with(&body(&[
            "m=audio 30000 RTP/AVPF 0",
            "a=rtcp-fb:* nack",
            "a=rtcp-fb:0 nack pli",
        ])));
    }

    #[test]
    fn restrict_policy_without_common_codec_fails_naming_both_sides() {
        let offer = g711_offer(
            "m=audio 5004 RTP/AVP 111 101",
            &[
                "a=rtpmap:111 opus/48000/2",
                "a=rtpmap:101 telephone-event/48000",
            ],
        );
        let error = rewrite_offer(
            &offer,
            &endpoint_v4(30000),
            &CodecPolicy::g711_with_telephone_event(),
            &mut OriginState::new(42),
        )
        .expect_err("opus alone has nothing in common with G.711");
        assert_eq!(
            error.to_string(),
            "no common codec: offer has opus/48000/2, telephone-event/48000; \
             manager supports PCMU/8000, PCMA/8000, telephone-event/8000"
        );
    }

    #[test]
    fn telephone_event_and_ptime_pass_through_with_their_payload_type() {
        let offer = g711_offer(
            "m=audio 5004 RTP/AVP 0 96",
            &[
                "a=rtpmap:96 telephone-event/8000",
                "a=fmtp:96 0-15",
                "a=ptime:30",
            ],
        );
        assert_eq!(
            relayed(&offer),
            body(&[
                "v=0",
                "o=switchboard 42 1 IN IP4 203.0.113.10",
                "s=-",
                "c=IN IP4 203.0.113.10",
                "t=0 0",
                "m=audio 30000 RTP/AVP 0 96",
                "a=rtpmap:96 telephone-event/8000",
                "a=fmtp:96 0-15",
                "a=ptime:30",
            ])
        );
    }

    #[test]
    fn relayed_hold_keeps_its_direction() {
        for direction in ["a=sendonly", "a=recvonly", "a=inactive"] {
            let out = relayed(&g711_offer("m=audio 5004 RTP/AVP 0", &[direction]));
            assert!(
                out.ends_with(&format!("m=audio 30000 RTP/AVP 0\r\n{direction}\r\n")),
                "{direction} must be relayed unchanged: {out}"
            );
        }
        let session_level = parsed(&[
            "v=0",
            "o=- 5 5 IN IP4 192.0.2.5",
            "s=-",
            "c=IN IP4 192.0.2.5",
            "t=0 0",
            "a=sendonly",
            "m=audio 5004 RTP/AVP 0",
        ]);
        assert!(relayed(&session_level).ends_with("a=sendonly\r\nm=audio 30000 RTP/AVP 0\r\n"));
    }

    #[test]
    fn rfc2543_hold_becomes_an_explicit_direction_when_relayed() {
        let held = |direction: &[&str]| {
            let mut lines = vec![
                "v=0",
                "o=- 5 6 IN IP4 192.0.2.5",
                "s=-",
                "c=IN IP4 0.0.0.0",
                "t=0 0",
            ];
            lines.extend_from_slice(direction);
            lines.push("m=audio 5004 RTP/AVP 0");
            relayed(&parsed(&lines))
        };
        assert_eq!(
            held(&[]),
            body(&[
                "v=0",
                "o=switchboard 42 1 IN IP4 203.0.113.10",
                "s=-",
                "c=IN IP4 203.0.113.10",
                "t=0 0",
                "m=audio 30000 RTP/AVP 0",
                "a=sendonly",
            ])
        );
        assert!(held(&["a=recvonly"]).ends_with("m=audio 30000 RTP/AVP 0\r\na=inactive\r\n"));
    }

    #[test]
    fn other_media_are_rejected_in_place() {
        let offer = parsed(&[
            "v=0",
            "o=- 5 5 IN IP4 192.0.2.5",
            "s=-",
            "c=IN IP4 192.0.2.5",
            "t=0 0",
            "m=video 5006 RTP/AVP 96",
            "b=AS:512",
            "a=rtpmap:96 VP8/90000",
            "m=audio 5004 RTP/AVP 0",
            "m=image 5008 udptl t38",
            "a=T38FaxVersion:0",
            "m=audio 5010 RTP/AVP 8",
            "m=application 5012 UDP/BFCP *",
        ]);
        assert_eq!(
            relayed(&offer),
            body(&[
                "v=0",
                "o=switchboard 42 1 IN IP4 203.0.113.10",
                "s=-",
                "c=IN IP4 203.0.113.10",
                "t=0 0",
                "m=video 0 RTP/AVP 96",
                "m=audio 30000 RTP/AVP 0",
                "m=image 0 udptl t38",
                "m=audio 0 RTP/AVP 8",
                "m=application 0 UDP/BFCP *",
            ])
        );
    }

    #[test]
    fn unchanged_reoffer_keeps_the_origin_version_and_a_change_moves_it() {
        let mut origin = OriginState::new(42);
        let local = endpoint_v4(30000);
        let mut offer_once = |offer: &SessionDescription| {
            rewrite_offer(offer, &local, &CodecPolicy::Passthrough, &mut origin)
                .expect("passthrough relay never fails")
                .origin
        };
        let initial = g711_offer("m=audio 5004 RTP/AVP 0", &[]);
        // The peer's own version moving does not matter: only what the
        // manager sends counts.
        let mut reoffer = initial.clone();
        reoffer.origin.version = "6".to_owned();
        let hold = g711_offer("m=audio 5004 RTP/AVP 0", &["a=sendonly"]);
        let versions: Vec<String> = [&initial, &reoffer, &hold, &hold, &initial]
            .into_iter()
            .map(|offer| {
                let origin = offer_once(offer);
                assert_eq!(origin.session_id, "42", "the session id never changes");
                origin.version
            })
            .collect();
        assert_eq!(versions, ["1", "1", "2", "2", "3"]);
    }

    #[test]
    fn origin_state_counts_only_changes() {
        let mut origin = OriginState::new(7);
        assert_eq!(origin.next("a"), (7, 1));
        assert_eq!(origin.next("a"), (7, 1));
        assert_eq!(origin.next("b"), (7, 2));
        assert_eq!(origin.next("a"), (7, 3));
    }

    #[test]
    fn rtcp_mux_is_dropped_when_this_side_does_not_mux() {
        let offer = g711_offer("m=audio 5004 RTP/AVP 0", &["a=rtcp:5005", "a=rtcp-mux"]);
        let local = LocalEndpoint {
            rtcp_mux: false,
            ..endpoint_v4(30000)
        };
        let out = rewrite_offer(
            &offer,
            &local,
            &CodecPolicy::Passthrough,
            &mut OriginState::new(1),
        )
        .expect("passthrough relay never fails");
        assert_eq!(
            out.media[0].attributes,
            [Attribute::Rtcp(Rtcp {
                port: MediaPort::new(30001),
                address: None,
            })]
        );
    }

    #[test]
    fn rtcp_port_is_stated_only_when_it_is_not_rtp_plus_one() {
        let offer = g711_offer("m=audio 5004 RTP/AVP 0", &[]);
        assert!(relayed(&offer).ends_with("m=audio 30000 RTP/AVP 0\r\n"));
        let odd = LocalEndpoint {
            rtcp_port: MediaPort::new(30005),
            ..endpoint_v4(30000)
        };
        let out = rewrite_offer(
            &offer,
            &odd,
            &CodecPolicy::Passthrough,
            &mut OriginState::new(1),
        )
        .expect("passthrough relay never fails");
        assert!(out
            .to_string()
            .ends_with("m=audio 30000 RTP/AVP 0\r\na=rtcp:30005\r\n"));
    }

    /// The callee's answer to the manager's rewrite of [`PHONE_OFFER`].
    const CALLEE_ANSWER: &[&str] = &[
        "v=0",
        "o=bob 1 1 IN IP4 192.0.2.20",
        "s=-",
        "c=IN IP4 192.0.2.20",
        "t=0 0",
        "m=audio 6000 RTP/AVP 8 101",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-15",
        "a=ptime:20",
        "a=rtcp:6001",
        "a=sendrecv",
        "m=video 0 RTP/AVP 96",
    ];

    #[test]
    fn relayed_answer_points_at_the_manager_and_agrees_the_offerers_mux() {
        let out = rewrite_answer(
            &parsed(PHONE_OFFER),
            &parsed(CALLEE_ANSWER),
            &endpoint_v4(30010),
            &mut OriginState::new(7),
        )
        .expect("the answer pairs with the offer");
        // The callee did not mux, the caller offered it and this side of
        // the manager muxes: the caller gets mux and no a=rtcp.
        assert_eq!(
            out.to_string(),
            body(&[
                "v=0",
                "o=switchboard 7 1 IN IP4 203.0.113.10",
                "s=-",
                "c=IN IP4 203.0.113.10",
                "t=0 0",
                "m=audio 30010 RTP/AVP 8 101",
                "a=rtpmap:8 PCMA/8000",
                "a=rtpmap:101 telephone-event/8000",
                "a=fmtp:101 0-15",
                "a=ptime:20",
                "a=sendrecv",
                "a=rtcp-mux",
                "m=video 0 RTP/AVP 96",
            ])
        );
    }

    #[test]
    fn relayed_answer_has_no_mux_when_the_offer_had_none() {
        let offer = g711_offer("m=audio 5004 RTP/AVP 0", &[]);
        let answer = parsed(&[
            "v=0",
            "o=bob 1 1 IN IP4 192.0.2.20",
            "s=-",
            "c=IN IP4 192.0.2.20",
            "t=0 0",
            "m=audio 6000 RTP/AVP 0",
            "a=rtcp-mux",
            "a=candidate:1 1 UDP 2130706431 192.0.2.20 6000 typ host",
            "a=recvonly",
        ]);
        let out = rewrite_answer(
            &offer,
            &answer,
            &endpoint_v4(30010),
            &mut OriginState::new(7),
        )
        .expect("the answer pairs with the offer");
        assert_eq!(
            out.media[0].attributes,
            [Attribute::Direction(Direction::RecvOnly)]
        );
    }

    #[test]
    fn relayed_answer_keeps_a_rejected_audio_rejected() {
        let mut answer = parsed(CALLEE_ANSWER);
        answer.media[0].port = MediaPort::REJECTED;
        let out = rewrite_answer(
            &parsed(PHONE_OFFER),
            &answer,
            &endpoint_v4(30010),
            &mut OriginState::new(7),
        )
        .expect("the answer pairs with the offer");
        assert!(out
            .to_string()
            .ends_with("m=audio 0 RTP/AVP 8 101\r\nm=video 0 RTP/AVP 96\r\n"));
    }

    #[test]
    fn answer_with_another_media_count_is_refused() {
        let mut answer = parsed(CALLEE_ANSWER);
        answer.media.pop();
        assert_eq!(
            rewrite_answer(
                &parsed(PHONE_OFFER),
                &answer,
                &endpoint_v4(30010),
                &mut OriginState::new(7),
            ),
            Err(SdpError::MediaCountMismatch {
                offer: 2,
                answer: 1
            })
        );
    }

    #[test]
    fn manager_answer_picks_pcma_when_offered_first() {
        let offer = g711_offer(
            "m=audio 5004 RTP/AVP 8 0 101",
            &["a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16"],
        );
        assert_eq!(
            answered(&offer),
            body(&[
                "v=0",
                "o=switchboard 9 1 IN IP4 203.0.113.10",
                "s=switchboard",
                "c=IN IP4 203.0.113.10",
                "t=0 0",
                "m=audio 30000 RTP/AVP 8 101",
                "a=rtpmap:8 PCMA/8000",
                "a=rtpmap:101 telephone-event/8000",
                "a=fmtp:101 0-15",
                "a=ptime:20",
                "a=sendrecv",
            ])
        );
    }

    #[test]
    fn manager_answer_picks_pcmu_after_opus_and_rejects_video() {
        let offer = parsed(&[
            "v=0",
            "o=- 5 5 IN IP4 192.0.2.5",
            "s=-",
            "c=IN IP4 192.0.2.5",
            "t=0 0",
            "m=audio 5004 RTP/AVP 111 0",
            "a=rtpmap:111 opus/48000/2",
            "a=rtcp-mux",
            "m=video 5006 RTP/AVP 96",
            "a=rtpmap:96 H264/90000",
        ]);
        assert_eq!(
            answered(&offer),
            body(&[
                "v=0",
                "o=switchboard 9 1 IN IP4 203.0.113.10",
                "s=switchboard",
                "c=IN IP4 203.0.113.10",
                "t=0 0",
                "m=audio 30000 RTP/AVP 0",
                "a=rtpmap:0 PCMU/8000",
                "a=ptime:20",
                "a=rtcp-mux",
                "a=sendrecv",
                "m=video 0 RTP/AVP 96",
            ])
        );
    }

    #[test]
    fn manager_answer_keeps_a_dynamic_g711_payload_type() {
        let offer = g711_offer("m=audio 5004 RTP/AVP 96", &["a=rtpmap:96 pcmu/8000"]);
        assert!(answered(&offer).contains("m=audio 30000 RTP/AVP 96\r\na=rtpmap:96 pcmu/8000\r\n"));
    }

    #[test]
    fn manager_answer_without_common_codec_fails_clearly() {
        let offer = g711_offer("m=audio 5004 RTP/AVP 111 9", &["a=rtpmap:111 opus/48000/2"]);
        let error = answer_locally(&offer, &endpoint_v4(30000), &mut OriginState::new(9))
            .expect_err("opus and G.722 have nothing in common with G.711");
        assert_eq!(
            error.to_string(),
            "no common codec: offer has opus/48000/2, G722/8000; manager supports PCMU, PCMA"
        );
    }

    #[test]
    fn manager_answer_refuses_srtp_audio() {
        let offer = g711_offer(
            "m=audio 5004 RTP/SAVP 0",
            &["a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR"],
        );
        assert_eq!(
            answer_locally(&offer, &endpoint_v4(30000), &mut OriginState::new(9)),
            Err(SdpError::UnsupportedTransport {
                protocol: "RTP/SAVP".to_owned()
            })
        );
    }

    #[test]
    fn manager_answer_to_an_offer_without_audio_rejects_everything() {
        let offer = parsed(&[
            "v=0",
            "o=- 5 5 IN IP4 192.0.2.5",
            "s=-",
            "c=IN IP4 192.0.2.5",
            "t=0 0",
            "m=image 5008 udptl t38",
        ]);
        assert!(answered(&offer).ends_with("t=0 0\r\nm=image 0 udptl t38\r\n"));
    }

    #[test]
    fn manager_answer_mirrors_the_offered_direction() {
        let cases = [
            (None, "a=sendrecv"),
            (Some("a=sendonly"), "a=recvonly"),
            (Some("a=recvonly"), "a=sendonly"),
            (Some("a=inactive"), "a=inactive"),
        ];
        for (offered, expected) in cases {
            let offer = g711_offer("m=audio 5004 RTP/AVP 0", offered.as_slice());
            let out = answered(&offer);
            assert!(
                out.ends_with(&format!("a=ptime:20\r\n{expected}\r\n")),
                "{offered:?} must be answered with {expected}: {out}"
            );
        }
        let mut held = g711_offer("m=audio 5004 RTP/AVP 0", &[]);
        held.connection = Some(Connection::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
        assert!(answered(&held).ends_with("a=ptime:20\r\na=recvonly\r\n"));
    }
}
