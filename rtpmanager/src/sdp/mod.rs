//! SDP offer/answer rewriting (RFC 3264) around sdp-rs.
//!
//! Everything here is pure: text in, text out, no sockets, no clock. The
//! session table holds, per leg, the SDP it received last, the leg's
//! [`LocalEndpoint`] (advertised address and ports from the port pool) and an
//! [`OriginState`], and calls:
//!
//! - **Offer, relayed** (`peer_leg_id` set): `offer = parse(&request.sdp)?`,
//!   then `rewrite_offer(&offer, &endpoint_of(peer_leg), &policy,
//!   &mut origin_of(peer_leg))?.to_string()` is the SDP to send on the peer
//!   leg. Keep `offer` for the answer.
//! - **Answer, relayed**: `answer = parse(&request.sdp)?`, then
//!   `rewrite_answer(&offer, &answer, &endpoint_of(offer_leg), &mut
//!   origin_of(offer_leg))?.to_string()` is the SDP for the original
//!   offerer. The session table knows both sides' media from
//!   `negotiate(&offer, &answer_sent_to_offerer)` (leg of the offerer) and
//!   `negotiate(&offer_sent_to_answerer, &answer)` (leg of the answerer).
//! - **Offer, answered by the manager** (`peer_leg_id` empty, playback/IVR):
//!   `answer_locally(&offer, &endpoint_of(leg), &mut origin_of(leg))?` is the
//!   answer; `negotiate(&offer, &that_answer)` says which codec, DTMF payload
//!   type and peer address the media code uses.
//!
//! A re-offer is the same call again with the same [`OriginState`]: the `o=`
//! version moves only when the produced body changed (RFC 3264 §8).
//!
//! What the rewriting does, in short: the `c=` lines and the port of the
//! anchored audio stream (the first active RTP audio `m=` line; the manager has
//! one port pair per leg) point at the manager; every other `m=` line is
//! kept in place with port 0, rejected; ICE attributes go, since the manager
//! anchors the media; `a=rtcp` and `a=rtcp-mux` follow the endpoint; codecs are
//! filtered by [`CodecPolicy`] in the offerer's order; direction attributes
//! pass through when relaying, an RFC 2543 `c=0.0.0.0` hold becomes an
//! explicit direction, and the manager's own answers mirror the offer's
//! direction. Every other line stays as written.
//!
//! Every [`SdpError`] is the peer's or the offer's fault and maps to gRPC
//! `INVALID_ARGUMENT`; its message names the SDP line and the problem.
//!
//! ```
//! use std::net::{IpAddr, Ipv4Addr};
//! use switchboard_rtpmanager::sdp::{
//!     negotiate, parse, rewrite_answer, rewrite_offer, CodecPolicy, LocalEndpoint, OriginState,
//!     MediaPort,
//! };
//!
//! let endpoint = |rtp| LocalEndpoint {
//!     address: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10)),
//!     rtp_port: MediaPort::new(rtp),
//!     rtcp_port: MediaPort::new(rtp + 1),
//!     rtcp_mux: true,
//! };
//! let (mut origin_a, mut origin_b) = (OriginState::new(1), OriginState::new(2));
//!
//! // Offer from the caller (leg a), relayed to the callee (leg b).
//! let offer = parse(
//!     "v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\n\
//!      m=audio 5004 RTP/AVP 0 8\r\n",
//! )?;
//! let offer_to_b = rewrite_offer(&offer, &endpoint(30002), &CodecPolicy::Passthrough, &mut origin_b)?;
//! assert!(offer_to_b.to_string().contains("m=audio 30002 RTP/AVP 0 8\r\n"));
//!
//! // The callee's answer, relayed back to the caller.
//! let answer = parse(
//!     "v=0\r\no=- 9 9 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\n\
//!      m=audio 6000 RTP/AVP 8\r\n",
//! )?;
//! let answer_to_a = rewrite_answer(&offer, &answer, &endpoint(30000), &mut origin_a)?;
//! assert!(answer_to_a.to_string().contains("m=audio 30000 RTP/AVP 8\r\n"));
//!
//! // What each leg settled on.
//! let leg_a = negotiate(&offer, &answer_to_a)?.expect("audio accepted");
//! let leg_b = negotiate(&offer_to_b, &answer)?.expect("audio accepted");
//! assert_eq!(leg_a.codec.to_string(), "PCMA/8000");
//! assert_eq!(leg_b.answerer.rtp.to_string(), "192.0.2.20:6000");
//! # Ok::<(), switchboard_rtpmanager::sdp::SdpError>(())
//! ```

mod model;
mod negotiation;
mod offer_answer;
mod parse;

pub use model::{
    static_codec, AddrType, Attribute, Codec, Connection, Direction, Field, Fmtp, Formats,
    MediaDescription, MediaKind, MediaPort, Origin, PayloadType, Protocol, Rtcp, Rtpmap,
    SessionDescription,
};
pub use negotiation::{negotiate, peer_media, Negotiation, PeerMedia};
pub use offer_answer::{
    answer_locally, rewrite_answer, rewrite_offer, CodecPolicy, CodecSpec, LocalEndpoint,
    OriginState, MANAGER_CODECS, ORIGIN_USERNAME,
};
pub use parse::parse;

/// Why an SDP body was refused or could not be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// The body is empty or holds only blank lines.
    #[error("SDP body is empty")]
    Empty,
    /// A line is malformed or out of place; `line` counts from 1 in the body
    /// as received.
    #[error("SDP line {line} `{text}`: {problem}")]
    Line {
        /// The 1-based line number.
        line: usize,
        /// The line as received, shortened when very long.
        text: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A mandatory line is absent.
    #[error("SDP has no {kind} line")]
    MissingLine {
        /// The line type, such as `o=`.
        kind: &'static str,
    },
    /// An answer's media sections do not pair one to one with the offer's
    /// (RFC 3264 §6).
    #[error("answer has {answer} media sections but the offer had {offer}")]
    MediaCountMismatch {
        /// Media sections in the offer.
        offer: usize,
        /// Media sections in the answer.
        answer: usize,
    },
    /// The offered audio has no codec the manager or the codec policy accepts.
    #[error("no common codec: offer has {offered}; manager supports {supported}")]
    NoCommonCodec {
        /// The offered codecs, as `encoding/clock[/channels]`.
        offered: String,
        /// The codecs the manager would have accepted.
        supported: String,
    },
    /// The offered audio uses a transport the manager cannot terminate
    /// itself (SRTP, DTLS-SRTP).
    #[error("no common transport: offer has audio over {protocol}; manager answers RTP/AVP and RTP/AVPF")]
    UnsupportedTransport {
        /// The offered protocol.
        protocol: String,
    },
    /// An answer accepts the audio stream but names no codec in it.
    #[error("answer accepts audio without a voice codec (formats: {formats})")]
    AnswerWithoutCodec {
        /// The answer's format list.
        formats: String,
    },
}

/// Helpers shared by the unit tests of the submodules.
#[cfg(test)]
mod test_support {
    use super::{parse, SessionDescription};

    /// The lines as a body on the wire: each one CRLF-terminated.
    pub(super) fn body(lines: &[&str]) -> String {
        lines.iter().map(|line| format!("{line}\r\n")).collect()
    }

    /// The lines parsed; a test SDP that does not parse is a broken test.
    pub(super) fn parsed(lines: &[&str]) -> SessionDescription {
        parse(&body(lines)).unwrap_or_else(|error| panic!("test SDP must parse: {error}"))
    }
}
