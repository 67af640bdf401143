//! SIP messages: framing, parsing, request checks and response and
//! request building. No sockets, no clock: bytes in, values and bytes out.
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
//! 3. Hand `msg` to the transaction layer. Its user answers with
//!    [`response_message`] (a value with its octets, which the server
//!    transaction keeps and retransmits) and the octets go to
//!    [`response_destination`]`(msg.top_via(), source, &transport)`.
//!    Stateless answers use [`build_response`] /
//!    [`build_response_with_body`], the same octets without the value.
//! 4. Requests the server originates are built with
//!    [`SipMessage::from_parts`] and handed to the transaction layer as
//!    they are.
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
//! # One form
//!
//! A [`SipMessage`] is the value and its octets ([`SipMessage::bytes`]):
//! [`parse`] keeps the octets it read, [`SipMessage::from_parts`] and
//! [`response_message`] write the octets of what the server builds. The
//! transaction layer, the request-handling core and the B2BUA all take and
//! give this one type, and a transport writes `bytes()`: nothing is
//! written as text and parsed back on its way through the server.
//!
//! rsip (which rejects compact header names, folded lines, bracketed IPv6
//! hosts, `tel:` URIs and extension methods) is no longer used: this
//! module reads the header section itself (unfolding, expanding compact
//! names) and parses the headers the server relies on.

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
pub use header::{canonical_name, CSeq, Header, HeaderValue, Method, Transport, Via, ViaError};
pub use message::{
    Branch, CallId, SipMessage, StartLine, Tag, BRANCH_MAGIC_COOKIE, DEFAULT_MAX_FORWARDS,
};
pub use parse::{parse, parse_with, ParseError, ParseErrorKind};
pub use response::{
    build_error_response, build_rejection, build_response, build_response_with_body,
    response_destination, response_message,
};
pub(crate) use uri::split_top_level_commas;
pub use uri::{unescape, Host, NameAddr, Param, Scheme, SipUri, TelUri, Uri, UriError};
pub use validate::{check_request, check_request_with, Rejection, RequestPolicy};
