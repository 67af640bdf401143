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
