//! What an offer/answer exchange settled, for the session table and the
//! media code.
//!
//! One exchange is one leg's view: for a relayed call the session table
//! negotiates twice, the offerer's offer with the answer the manager sent back
//! to it, and the manager's offer to the answerer with the answerer's answer.

use std::net::{IpAddr, SocketAddr};

use super::model::{Codec, Direction, MediaKind, PayloadType, SessionDescription};
use super::SdpError;

/// Where one side of a stream receives, and whether it holds the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerMedia {
    /// The RTP destination: connection address and `m=` port.
    pub rtp: SocketAddr,
    /// The RTCP destination: `a=rtcp`, else the RTP destination when RTCP
    /// is multiplexed, else RTP port + 1.
    pub rtcp: SocketAddr,
    /// The direction this side wrote (media-level, else session-level,
    /// else `sendrecv`).
    pub direction: Direction,
    /// Whether this side holds the stream: `sendonly`, `inactive`, or an
    /// RFC 2543 `c=0.0.0.0`.
    pub on_hold: bool,
}

/// The settled audio stream of one offer/answer exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiation {
    /// The index of the audio `m=` line in both bodies.
    pub media_index: usize,
    /// The voice codec: the answer's first non-auxiliary format (RFC 3264
    /// §6.1: the answerer's preference rules what is sent).
    pub codec: Codec,
    /// The answer's RFC 4733 telephone-event payload type at the codec's
    /// clock rate, when DTMF events were agreed.
    pub telephone_event: Option<PayloadType>,
    /// The answer's `a=ptime`, else the offer's.
    pub ptime: Option<u32>,
    /// Whether both sides wrote `a=rtcp-mux`.
    pub rtcp_mux: bool,
    /// The offerer's receiving side.
    pub offerer: PeerMedia,
    /// The answerer's receiving side.
    pub answerer: PeerMedia,
}

/// The audio stream `offer` and `answer` agreed on: the first `m=` line that
/// is active RTP audio in the offer and active in the answer. `None` when
/// the audio was rejected or never offered.
pub fn negotiate(
    offer: &SessionDescription,
    answer: &SessionDescription,
) -> Result<Option<Negotiation>, SdpError> {
    if offer.media.len() != answer.media.len() {
        return Err(SdpError::MediaCountMismatch {
            offer: offer.media.len(),
            answer: answer.media.len(),
        });
    }
    let Some(index) = offer.media.iter().zip(&answer.media).position(|(o, a)| {
        o.kind == MediaKind::Audio && o.protocol.is_rtp() && o.is_active() && a.is_active()
    }) else {
        return Ok(None);
    };
    let (offered, answered) = (&offer.media[index], &answer.media[index]);
    // An answerer may omit the rtpmap of a dynamic payload type it took
    // from the offer; the offer then says what it is.
    let codecs: Vec<Codec> = answered
        .payload_types()
        .iter()
        .filter_map(|&pt| answered.codec(pt).or_else(|| offered.codec(pt)))
        .collect();
    let Some(codec) = codecs.iter().find(|codec| !codec.is_auxiliary()).cloned() else {
        return Err(SdpError::AnswerWithoutCodec {
            formats: answered.formats.to_string(),
        });
    };
    let telephone_event = codecs
        .iter()
        .find(|event| event.is_telephone_event() && event.clock_rate == codec.clock_rate)
        .map(|event| event.payload_type);
    let rtcp_mux = offered.rtcp_mux() && answered.rtcp_mux();
    let (Some(offerer), Some(answerer)) = (
        peer_media(offer, index, rtcp_mux),
        peer_media(answer, index, rtcp_mux),
    ) else {
        // parse() refuses an active stream without a connection address.
        return Ok(None);
    };
    Ok(Some(Negotiation {
        media_index: index,
        codec,
        telephone_event,
        ptime: answered.ptime().or_else(|| offered.ptime()),
        rtcp_mux,
        offerer,
        answerer,
    }))
}

/// Where the writer of `sdp` receives media section `index`, given whether
/// RTCP multiplexing was agreed. `None` without such a section or without a
/// connection address for it.
pub fn peer_media(sdp: &SessionDescription, index: usize, rtcp_mux: bool) -> Option<PeerMedia> {
    let media = sdp.media.get(index)?;
    let address: IpAddr = sdp.media_connection(index)?.address;
    let rtp = SocketAddr::new(address, media.port.get());
    let rtcp = match (rtcp_mux, media.rtcp()) {
        (true, _) => rtp,
        (false, Some(rtcp)) => SocketAddr::new(rtcp.address.unwrap_or(address), rtcp.port.get()),
        (false, None) => SocketAddr::new(address, media.port.implicit_rtcp().get()),
    };
    let direction = sdp.media_direction(index);
    Some(PeerMedia {
        rtp,
        rtcp,
        direction,
        on_hold: matches!(direction, Direction::SendOnly | Direction::Inactive)
            || address.is_unspecified(),
    })
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::super::test_support::parsed;
    use super::*;

    const OFFER: &[&str] = &[
        "v=0",
        "o=alice 1 1 IN IP4 198.51.100.7",
        "s=-",
        "c=IN IP4 198.51.100.7",
        "t=0 0",
        "m=video 5006 RTP/AVP 96",
        "m=audio 5004 RTP/AVP 111 8 0 101",
        "a=rtpmap:111 opus/48000/2",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=ptime:30",
        "a=rtcp:5010 IN IP4 198.51.100.8",
        "a=rtcp-mux",
    ];

    fn answer(audio: &[&str]) -> SessionDescription {
        let mut lines = vec![
            "v=0",
            "o=bob 1 1 IN IP4 192.0.2.20",
            "s=-",
            "c=IN IP4 192.0.2.20",
            "t=0 0",
            "m=video 0 RTP/AVP 96",
        ];
        lines.extend_from_slice(audio);
        parsed(&lines)
    }

    fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), port)
    }

    fn negotiated(offer: &SessionDescription, answer: &SessionDescription) -> Negotiation {
        negotiate(offer, answer)
            .expect("offer and answer pair up")
            .expect("audio was accepted")
    }

    #[test]
    fn settles_codec_dtmf_ptime_and_addresses() {
        let answer = answer(&[
            "m=audio 6000 RTP/AVP 101 8",
            "a=rtpmap:101 telephone-event/8000",
            "a=sendonly",
        ]);
        assert_eq!(
            negotiated(&parsed(OFFER), &answer),
            Negotiation {
                media_index: 1,
                codec: Codec {
                    payload_type: PayloadType::PCMA,
                    encoding: "PCMA".to_owned(),
                    clock_rate: 8000,
                    channels: None,
                },
                telephone_event: PayloadType::new(101),
                ptime: Some(30),
                rtcp_mux: false,
                offerer: PeerMedia {
                    rtp: v4(198, 51, 100, 7, 5004),
                    rtcp: v4(198, 51, 100, 8, 5010),
                    direction: Direction::SendRecv,
                    on_hold: false,
                },
                answerer: PeerMedia {
                    rtp: v4(192, 0, 2, 20, 6000),
                    rtcp: v4(192, 0, 2, 20, 6001),
                    direction: Direction::SendOnly,
                    on_hold: true,
                },
            }
        );
    }

    #[test]
    fn agreed_mux_sends_rtcp_to_the_rtp_port() {
        let answer = answer(&["m=audio 6000 RTP/AVP 0", "a=rtcp-mux", "a=ptime:20"]);
        let negotiation = negotiated(&parsed(OFFER), &answer);
        assert!(negotiation.rtcp_mux);
        assert_eq!(negotiation.codec.payload_type, PayloadType::PCMU);
        assert_eq!(negotiation.telephone_event, None, "the answer dropped DTMF");
        assert_eq!(negotiation.ptime, Some(20), "the answer's ptime wins");
        assert_eq!(negotiation.offerer.rtcp, v4(198, 51, 100, 7, 5004));
        assert_eq!(negotiation.answerer.rtcp, v4(192, 0, 2, 20, 6000));
    }

    #[test]
    fn answer_without_rtpmap_for_a_dynamic_type_uses_the_offers() {
        let answer = answer(&["m=audio 6000 RTP/AVP 111"]);
        let codec = negotiated(&parsed(OFFER), &answer).codec;
        assert_eq!(codec.to_string(), "opus/48000/2");
    }

    #[test]
    fn old_style_and_inactive_hold_are_detected() {
        let held = parsed(&[
            "v=0",
            "o=- 1 2 IN IP6 2001:db8::7",
            "s=-",
            "c=IN IP4 0.0.0.0",
            "t=0 0",
            "m=audio 5004 RTP/AVP 0",
        ]);
        let media = peer_media(&held, 0, false).expect("the section exists");
        assert_eq!(media.rtp, v4(0, 0, 0, 0, 5004));
        assert_eq!(media.direction, Direction::SendRecv);
        assert!(media.on_hold, "c=0.0.0.0 is RFC 2543 hold");

        let inactive = parsed(&[
            "v=0",
            "o=- 1 2 IN IP6 2001:db8::7",
            "s=-",
            "t=0 0",
            "a=inactive",
            "m=audio 5004 RTP/AVP 0",
            "c=IN IP6 2001:db8::7",
        ]);
        let media = peer_media(&inactive, 0, false).expect("the section exists");
        let address = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7));
        assert_eq!(media.rtp, SocketAddr::new(address, 5004));
        assert_eq!(media.rtcp, SocketAddr::new(address, 5005));
        assert_eq!(media.direction, Direction::Inactive);
        assert!(media.on_hold, "session-level a=inactive holds the stream");

        let recvonly = parsed(&[
            "v=0",
            "o=- 1 2 IN IP4 192.0.2.5",
            "s=-",
            "c=IN IP4 192.0.2.5",
            "t=0 0",
            "m=audio 5004 RTP/AVP 0",
            "a=recvonly",
        ]);
        let media = peer_media(&recvonly, 0, false).expect("the section exists");
        assert!(!media.on_hold, "recvonly answers a hold, it is not one");
    }

    #[test]
    fn rejected_audio_negotiates_nothing() {
        let answer = answer(&["m=audio 0 RTP/AVP 0"]);
        assert_eq!(negotiate(&parsed(OFFER), &answer), Ok(None));
    }

    #[test]
    fn accepted_audio_with_only_telephone_event_is_an_error() {
        let answer = answer(&[
            "m=audio 6000 RTP/AVP 101",
            "a=rtpmap:101 telephone-event/8000",
        ]);
        assert_eq!(
            negotiate(&parsed(OFFER), &answer),
            Err(SdpError::AnswerWithoutCodec {
                formats: "101".to_owned()
            })
        );
    }

    #[test]
    fn manager_answer_negotiates_with_its_own_offerer() {
        use super::super::offer_answer::{answer_locally, LocalEndpoint, OriginState};
        use super::super::MediaPort;

        let offer = parsed(OFFER);
        let local = LocalEndpoint {
            address: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10)),
            rtp_port: MediaPort::new(30000),
            rtcp_port: MediaPort::new(30001),
            rtcp_mux: true,
        };
        let answer =
            answer_locally(&offer, &local, &mut OriginState::new(1)).expect("the offer has PCMA");
        let negotiation = negotiated(&offer, &answer);
        assert_eq!(negotiation.codec.payload_type, PayloadType::PCMA);
        assert_eq!(negotiation.telephone_event, PayloadType::new(101));
        assert!(negotiation.rtcp_mux);
        assert_eq!(negotiation.answerer.rtp, v4(203, 0, 113, 10, 30000));
        assert_eq!(negotiation.offerer.rtcp, v4(198, 51, 100, 7, 5004));
    }
}
