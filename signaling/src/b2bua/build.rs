//! The requests the B2BUA originates, as messages (value and octets): each leg's dialog gets our
//! own Via, Call-ID, tags and Contact, so nothing of the other leg's
//! topology leaks across (RFC 3261 §8.1.1, §12.2.1.1).

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::sip::{Branch, CallId, Header, Method, NameAddr, SipMessage, Tag};
use crate::transport::{Advertised, Destination};

/// A request to build.
pub(crate) struct Outgoing<'a> {
    pub(crate) method: &'a Method,
    /// The Request-URI.
    pub(crate) uri: &'a str,
    /// How we name ourselves (sent-by and Contact per transport).
    pub(crate) local: &'a Advertised,
    pub(crate) branch: &'a Branch,
    pub(crate) destination: Destination,
    /// From and To header values, tags included.
    pub(crate) from: &'a str,
    pub(crate) to: &'a str,
    pub(crate) call_id: &'a CallId,
    /// The CSeq number; its method is always `method` (an ACK's is ACK, a
    /// CANCEL's CANCEL, §17.1.1.3, §9.1).
    pub(crate) cseq: u32,
    pub(crate) max_forwards: u32,
    /// Whether to add our Contact (dialog-creating and target-refreshing requests).
    pub(crate) contact: bool,
    /// More headers (Route first when there is a route set).
    pub(crate) extra: &'a [(String, String)],
    /// `(content type, body)`.
    pub(crate) body: Option<(&'a str, &'a [u8])>,
}

/// Our Contact URI, with the transport a peer must come back over.
pub(crate) fn contact_uri(local: &Advertised, destination: &Destination) -> String {
    local.contact_uri("sb", destination)
}

/// The request as a message: its value and its octets, written once.
/// `None` (logged) when a part cannot be read as SIP, e.g. a Request-URI
/// or From taken from a peer's message that is not one.
pub(crate) fn request(out: &Outgoing<'_>) -> Option<SipMessage> {
    let mut headers = Vec::with_capacity(10 + out.extra.len());
    // Our names are static; only the caller's extra ones are copied.
    let mut push = |name: Cow<'static, str>, value: String| {
        headers.push(Header {
            name,
            value: value.into(),
        })
    };
    push(
        "Via".into(),
        format!(
            "SIP/2.0/{} {};branch={};rport",
            out.destination.transport(),
            out.local.sent_by(&out.destination),
            out.branch
        ),
    );
    push("Max-Forwards".into(), out.max_forwards.to_string());
    push("From".into(), out.from.to_owned());
    push("To".into(), out.to.to_owned());
    push("Call-ID".into(), out.call_id.as_str().to_owned());
    push("CSeq".into(), format!("{} {}", out.cseq, out.method));
    if out.contact {
        push(
            "Contact".into(),
            format!("<{}>", contact_uri(out.local, &out.destination)),
        );
    }
    for (name, value) in out.extra {
        push(Cow::Owned(name.clone()), value.clone());
    }
    let body = match out.body {
        Some((content_type, body)) => {
            push("Content-Type".into(), content_type.to_owned());
            push("Content-Length".into(), body.len().to_string());
            body.to_vec()
        }
        None => {
            push("Content-Length".into(), "0".to_owned());
            Vec::new()
        }
    };
    let start_line = format!("{} {} SIP/2.0", out.method, out.uri);
    match SipMessage::from_parts(&start_line, headers, body) {
        Ok(message) => Some(message),
        Err(error) => {
            tracing::warn!(%error, method = %out.method, "built request is not valid SIP");
            None
        }
    }
}

/// A name-addr with its tag parameter replaced by `tag` (or removed).
pub(crate) fn with_tag(address: &NameAddr, tag: Option<&Tag>) -> String {
    let mut address = address.clone();
    address
        .params
        .retain(|p| !p.name.eq_ignore_ascii_case("tag"));
    // Sized once rather than grown piece by piece as it is written.
    let mut text = String::with_capacity(128);
    let _ = write!(text, "{address}");
    if let Some(tag) = tag {
        text.push_str(";tag=");
        text.push_str(tag.as_str());
    }
    text
}

/// The SDP body of a message, if it carries one.
pub(crate) fn sdp_of(message: &SipMessage) -> Option<String> {
    let is_sdp = message
        .media_type()
        .is_some_and(|t| t.eq_ignore_ascii_case("application/sdp"));
    (is_sdp && !message.body().is_empty())
        .then(|| String::from_utf8_lossy(message.body()).into_owned())
}

/// The remote target of a dialog: the first Contact's URI.
pub(crate) fn contact_of(message: &SipMessage) -> Option<String> {
    message.contacts().first().map(|c| c.uri.to_string())
}
