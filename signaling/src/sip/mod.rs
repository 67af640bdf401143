//! SIP messages: framing, parsing around rsip's gaps, request checks and
//! response building. No sockets, no clock: bytes in, values and bytes out.
//!
//! # Driving it
//!
//! A UDP transport, per datagram from `source`:
//!
//! 1. `let mut msg = sip::parse(&datagram)?` — framing by Content-Length
//!    (trailing octets ignored), header normalisation and parsing. On
//!    `Err(e)`, send [`build_error_response`]`(&e)` (it is `None` for
//!    responses, ACKs and messages without a Via) to
//!    [`response_destination`] of `e.top_via()`, or to `source` when the Via
//!    cannot be read.
//! 2. For a request: `msg.stamp_received(source)` (RFC 3261 §18.2.1, RFC
//!    3581), then [`check_request`]`(&msg)`; on `Err(rejection)` send
//!    [`build_rejection`]`(&msg, &rejection)` unless the request is an ACK.
//! 3. Hand `msg` to the transaction layer. It answers with
//!    [`build_response`] / [`build_response_with_body`] and sends to
//!    [`response_destination`]`(msg.top_via(), source, &transport)`.
//!
//! A stream transport feeds a [`StreamFramer`] with `push` and drains
//! `next_message()`, then runs step 1 on each message. A framing error means
//! the stream is lost: answer `ParseError::from_frame(err,
//! framer.failed_head())` when [`FrameError::status`] is `Some`, then close.
//! Each double-CRLF keep-alive counted by `take_pings()` is answered with a
//! single CRLF.
//!
//! [`classify`] runs steps 1 and 2 without a source address and is what the
//! RFC 4475 / RFC 5118 conformance tests exercise.
//!
//! # rsip
//!
//! rsip 0.4 is the message model the rest of the server may use through
//! [`SipMessage::rsip`]. It rejects compact header names, folded lines,
//! bracketed IPv6 hosts, `tel:` URIs and extension methods, so this module
//! reads the header section itself (unfolding, expanding compact names) and
//! hands rsip the normalised text; what rsip still cannot represent leaves
//! `rsip()` empty, never fails the message. Every accessor on
//! [`SipMessage`] works without rsip.

mod classify;
mod framing;
mod header;
mod message;
mod parse;
mod response;
mod uri;
mod validate;

#[cfg(test)]
mod tests;

pub use classify::{classify, Outcome};
pub use framing::{
    frame_datagram, frame_datagram_with, Frame, FrameError, FramingLimits, StreamFramer,
};
pub use header::{canonical_name, CSeq, Header, Method, Transport, Via, ViaError};
pub use message::{
    Branch, CallId, SipMessage, StartLine, Tag, BRANCH_MAGIC_COOKIE, DEFAULT_MAX_FORWARDS,
};
pub use parse::{parse, parse_with, ParseError, ParseErrorKind};
pub use response::{
    build_error_response, build_rejection, build_response, build_response_with_body,
    response_destination,
};
pub use uri::{unescape, Host, NameAddr, Param, Scheme, SipUri, TelUri, Uri, UriError};
pub use validate::{check_request, check_request_with, Rejection, RequestPolicy};
