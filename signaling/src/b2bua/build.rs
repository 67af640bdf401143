//! The requests the B2BUA originates, as text: each leg's dialog gets our
//! own Via, Call-ID, tags and Contact, so nothing of the other leg's
//! topology leaks across (RFC 3261 §8.1.1, §12.2.1.1).

use crate::sip::{Method, NameAddr, SipMessage, Tag};
use crate::transport::Destination;

/// A request to build.
pub(crate) struct Outgoing<'a> {
    pub(crate) method: &'a Method,
    /// The Request-URI.
    pub(crate) uri: &'a str,
    /// Our sent-by (`host:port`).
    pub(crate) local: &'a str,
    pub(crate) branch: &'a str,
    pub(crate) destination: Destination,
    /// From and To header values, tags included.
    pub(crate) from: &'a str,
    pub(crate) to: &'a str,
    pub(crate) call_id: &'a str,
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

/// The Via transport token for a destination.
pub(crate) fn via_transport(destination: &Destination) -> &'static str {
    match destination {
        Destination::Udp(_) => "UDP",
        Destination::Tcp { .. } => "TCP",
    }
}

/// Our Contact URI, with `transport=tcp` for TCP peers (they must come back
/// over a stream).
pub(crate) fn contact_uri(local: &str, destination: &Destination) -> String {
    match destination {
        Destination::Udp(_) => format!("sip:sb@{local}"),
        Destination::Tcp { .. } => format!("sip:sb@{local};transport=tcp"),
    }
}

/// The request's octets.
pub(crate) fn request(out: &Outgoing<'_>) -> String {
    let mut text = String::with_capacity(640);
    text.push_str(&format!("{} {} SIP/2.0\r\n", out.method, out.uri));
    text.push_str(&format!(
        "Via: SIP/2.0/{} {};branch={};rport\r\n",
        via_transport(&out.destination),
        out.local,
        out.branch
    ));
    text.push_str(&format!("Max-Forwards: {}\r\n", out.max_forwards));
    text.push_str(&format!("From: {}\r\n", out.from));
    text.push_str(&format!("To: {}\r\n", out.to));
    text.push_str(&format!("Call-ID: {}\r\n", out.call_id));
    text.push_str(&format!("CSeq: {} {}\r\n", out.cseq, out.method));
    if out.contact {
        text.push_str(&format!(
            "Contact: <{}>\r\n",
            contact_uri(out.local, &out.destination)
        ));
    }
    for (name, value) in out.extra {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    match out.body {
        Some((content_type, body)) => {
            text.push_str(&format!("Content-Type: {content_type}\r\n"));
            text.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            text.push_str(&String::from_utf8_lossy(body));
        }
        None => text.push_str("Content-Length: 0\r\n\r\n"),
    }
    text
}

/// A name-addr with its tag parameter replaced by `tag` (or removed).
pub(crate) fn with_tag(address: &NameAddr, tag: Option<&Tag>) -> String {
    let mut address = address.clone();
    address
        .params
        .retain(|p| !p.name.eq_ignore_ascii_case("tag"));
    let mut text = address.to_string();
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
