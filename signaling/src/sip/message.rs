//! The parsed message and the protocol identifiers the rest of the server keys on.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use super::header::{CSeq, Header, Method, Via};
use super::uri::{is_lws, parse_delta_seconds, split_top_level_commas, NameAddr, Uri};

/// Max-Forwards assumed when a request carries none (RFC 3261 §8.1.1.6).
pub const DEFAULT_MAX_FORWARDS: u32 = 70;

/// The magic cookie that starts RFC 3261 branch ids (§8.1.1.7).
pub const BRANCH_MAGIC_COOKIE: &str = "z9hG4bK";

macro_rules! text_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Wraps a value as it appears on the wire.
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }

            /// Returns the value as it appears on the wire.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

text_newtype!(
    /// A Call-ID header value.
    CallId
);
text_newtype!(
    /// A Via `branch` parameter: the transaction id (RFC 3261 §17.1.3).
    Branch
);
text_newtype!(
    /// A From or To `tag` parameter: one half of a dialog id.
    Tag
);

impl Branch {
    /// `true` when the branch starts with the RFC 3261 magic cookie and has
    /// something after it, so it can identify a transaction on its own.
    pub fn is_rfc3261(&self) -> bool {
        self.0.len() > BRANCH_MAGIC_COOKIE.len() && self.0.starts_with(BRANCH_MAGIC_COOKIE)
    }
}

impl Tag {
    /// Derives a To tag from the request alone, so that a stateless answer to
    /// a retransmission carries the same tag (RFC 3261 §8.2.7). The value is
    /// a 64-bit FNV-1a hash, stable across builds and platforms.
    pub fn stateless(call_id: &str, from_tag: &str, branch: &str) -> Tag {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in [call_id, "\0", from_tag, "\0", branch]
            .iter()
            .flat_map(|part| part.bytes())
        {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Tag(format!("sb{hash:016x}"))
    }
}

/// The first line of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    /// `Method Request-URI SIP/2.0`
    Request {
        /// Request method.
        method: Method,
        /// Request-URI.
        uri: Uri,
    },
    /// `SIP/2.0 Status-Code Reason-Phrase`
    Response {
        /// Status code, 100 to 699.
        status: u16,
        /// Reason phrase as written (may be empty).
        reason: String,
    },
}

/// A parsed SIP request or response.
///
/// Produced by [`parse`](super::parse); every request and response that
/// parses carries at least one Via and exactly one From, To, Call-ID and
/// CSeq, so those accessors cannot fail.
///
/// Cloning one is two reference counts: the transaction layer keeps the
/// requests and responses it may retransmit or match, the B2BUA keeps the
/// INVITEs it sent and answers, and each kept a deep copy (every header's
/// value, every Via's and address's parameters), about a fifth of the SIP
/// core's allocations per call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipMessage {
    pub(crate) parsed: Arc<Parsed>,
    /// The octets the message was parsed from or built into: what a
    /// transport writes and a transaction retransmits. Shared, so that the
    /// message can be kept and queued without copying them.
    pub(crate) bytes: Arc<[u8]>,
}

/// What the parser read from a message's octets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub(crate) start: StartLine,
    pub(crate) headers: Vec<Header>,
    /// The body is the last `body_len` of the message's octets.
    pub(crate) body_len: usize,
    /// Shared: a response carries its request's Vias unchanged.
    pub(crate) vias: Arc<Vec<Via>>,
    /// Shared: a response carries its request's From unchanged.
    pub(crate) from: Arc<NameAddr>,
    pub(crate) to: NameAddr,
    pub(crate) call_id: CallId,
    pub(crate) cseq: CSeq,
    pub(crate) max_forwards: Option<u32>,
    pub(crate) contacts: Vec<NameAddr>,
    pub(crate) contact_wildcard: bool,
}

impl SipMessage {
    /// Returns the start line.
    pub fn start_line(&self) -> &StartLine {
        &self.parsed.start
    }

    /// `true` for requests.
    pub fn is_request(&self) -> bool {
        matches!(self.parsed.start, StartLine::Request { .. })
    }

    /// Returns the request method, or for a response the CSeq method (the
    /// method of the request it answers).
    pub fn method(&self) -> &Method {
        match &self.parsed.start {
            StartLine::Request { method, .. } => method,
            StartLine::Response { .. } => &self.parsed.cseq.method,
        }
    }

    /// Returns the Request-URI of a request.
    pub fn request_uri(&self) -> Option<&Uri> {
        match &self.parsed.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// Returns the status code of a response.
    pub fn status(&self) -> Option<u16> {
        match &self.parsed.start {
            StartLine::Request { .. } => None,
            StartLine::Response { status, .. } => Some(*status),
        }
    }

    /// Returns the reason phrase of a response.
    pub fn reason(&self) -> Option<&str> {
        match &self.parsed.start {
            StartLine::Request { .. } => None,
            StartLine::Response { reason, .. } => Some(reason),
        }
    }

    /// Returns every Via value, topmost first, across all Via header lines.
    pub fn vias(&self) -> &[Via] {
        &self.parsed.vias
    }

    /// Returns the topmost Via.
    pub fn top_via(&self) -> &Via {
        // parse() refuses messages without a Via, so the vector is never empty.
        &self.parsed.vias[0]
    }

    /// Returns the Call-ID.
    pub fn call_id(&self) -> &CallId {
        &self.parsed.call_id
    }

    /// Returns the CSeq.
    pub fn cseq(&self) -> &CSeq {
        &self.parsed.cseq
    }

    /// Returns the From value.
    pub fn from(&self) -> &NameAddr {
        &self.parsed.from
    }

    /// Returns the To value.
    pub fn to(&self) -> &NameAddr {
        &self.parsed.to
    }

    /// Returns the From tag (absent in RFC 2543 requests).
    pub fn from_tag(&self) -> Option<Tag> {
        self.parsed.from.tag()
    }

    /// Returns the To tag (absent outside dialogs).
    pub fn to_tag(&self) -> Option<Tag> {
        self.parsed.to.tag()
    }

    /// Returns Max-Forwards, [`DEFAULT_MAX_FORWARDS`] when absent. Values
    /// beyond `u32` saturate.
    pub fn max_forwards(&self) -> u32 {
        self.parsed.max_forwards.unwrap_or(DEFAULT_MAX_FORWARDS)
    }

    /// `true` when the message carried a Max-Forwards header.
    pub fn has_max_forwards(&self) -> bool {
        self.parsed.max_forwards.is_some()
    }

    /// Returns the Contact values in order (empty for `Contact: *`).
    pub fn contacts(&self) -> &[NameAddr] {
        &self.parsed.contacts
    }

    /// `true` for `Contact: *` (a REGISTER removing all bindings).
    pub fn contact_is_wildcard(&self) -> bool {
        self.parsed.contact_wildcard
    }

    /// Returns the Expires header in seconds; values beyond `u32` saturate,
    /// unreadable values count as absent.
    pub fn expires(&self) -> Option<u32> {
        self.header("Expires")
            .and_then(|v| parse_delta_seconds(v.trim_matches(is_lws)))
    }

    /// Returns the option tags of every Require header.
    pub fn require(&self) -> Vec<String> {
        self.header_list("Require")
    }

    /// Returns the option tags of every Proxy-Require header.
    pub fn proxy_require(&self) -> Vec<String> {
        self.header_list("Proxy-Require")
    }

    /// Returns the option tags of every Supported header.
    pub fn supported(&self) -> Vec<String> {
        self.header_list("Supported")
    }

    /// Returns the Content-Type value as written.
    pub fn content_type(&self) -> Option<&str> {
        self.header("Content-Type")
    }

    /// Returns the media type of Content-Type, lower-cased and without
    /// parameters (`application/sdp`).
    pub fn media_type(&self) -> Option<String> {
        self.content_type().map(media_type_of)
    }

    /// Returns the body length (Content-Length after framing).
    pub fn content_length(&self) -> usize {
        self.parsed.body_len
    }

    /// Returns the body.
    pub fn body(&self) -> &[u8] {
        &self.bytes[self.bytes.len() - self.parsed.body_len..]
    }

    /// Returns all headers in order, names canonical, values unfolded.
    pub fn headers(&self) -> &[Header] {
        &self.parsed.headers
    }

    /// Returns the first value of a header; names match case-insensitively
    /// and compact forms are accepted (`header("i")` finds Call-ID).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.first_header(name).map(|h| h.value.as_str())
    }

    /// The first header of a name, as [`SipMessage::header`] finds it: for
    /// its value as a shared [`super::HeaderValue`].
    pub(crate) fn first_header(&self, name: &str) -> Option<&Header> {
        let wanted = wanted_name(name);
        self.parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(&wanted))
    }

    /// Returns every value of a header, one per header line, in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers_named(name).map(|h| h.value.as_str())
    }

    /// The headers of one name, in order; see [`SipMessage::header`].
    pub(crate) fn headers_named<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Header> + 'a {
        let wanted = wanted_name(name);
        self.parsed
            .headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(&wanted))
    }

    /// Returns the comma-separated items of every value of a header.
    pub fn header_list(&self, name: &str) -> Vec<String> {
        self.header_values(name)
            .flat_map(|v| split_top_level_commas(v).unwrap_or_else(|_| vec![v]))
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Returns the message's octets: as received (from the first octet of
    /// the start line to the end of the body, trailing octets of a datagram
    /// left out) or as built by [`SipMessage::from_parts`]. Changes made to
    /// the value afterwards ([`stamp_received`](Self::stamp_received)) are
    /// not reflected: only messages built to be sent are sent as octets.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Returns a shared handle to the octets of [`bytes`](Self::bytes).
    pub fn shared_bytes(&self) -> Arc<[u8]> {
        Arc::clone(&self.bytes)
    }

    /// Builds a message to send from its parts: a start line, headers in
    /// order (Content-Length included) and a body. The octets are written
    /// once, here (`Name: value` lines as given), and the value is read
    /// from the same parts with the parser's rules, so what is sent and
    /// what the transaction layer and the B2BUA see cannot differ. Fails
    /// where a parsed message would (a missing Via, an unreadable From ...).
    pub fn from_parts(
        start_line: &str,
        mut headers: Vec<Header>,
        body: Vec<u8>,
    ) -> Result<SipMessage, super::ParseErrorKind> {
        // A CR or LF inside a part would end a line early for the next hop.
        let breaks_line = |text: &str| text.contains(['\r', '\n']);
        if breaks_line(start_line) {
            return Err(super::ParseErrorKind::MalformedStartLine(
                "line break in start line",
            ));
        }
        if let Some(index) = headers
            .iter()
            .position(|h| breaks_line(&h.name) || breaks_line(&h.value))
        {
            return Err(super::ParseErrorKind::MalformedHeaderLine(index + 1));
        }
        let bytes = write_message(start_line, &headers, &body);
        let start = super::parse::parse_start_line(start_line)?;
        super::parse::build(start, &mut headers, body.len(), bytes.into())
    }

    /// The topmost Via, to change before responses are built from it. A
    /// message shared with others (a kept copy) is copied first.
    pub(crate) fn top_via_mut(&mut self) -> &mut Via {
        &mut Arc::make_mut(&mut Arc::make_mut(&mut self.parsed).vias)[0]
    }

    /// Applies RFC 3261 §18.2.1 and RFC 3581 to the top Via of a received
    /// request: adds `received` when the sent-by host is not the packet's
    /// source address (or when `rport` asks for it) and fills an empty
    /// `rport` with the source port. The server transport calls this once per
    /// request, before responses are built, so responses echo the values.
    pub fn stamp_received(&mut self, source: SocketAddr) {
        if !self.is_request() {
            return;
        }
        let via = self.top_via_mut();
        let wants_rport = via.has_rport() && via.rport().is_none();
        if wants_rport {
            via.set_param("rport", Some(source.port().to_string()));
        }
        if wants_rport || via.host.ip() != Some(source.ip()) {
            // IPv6 without brackets, as in RFC 3261's via-received grammar.
            via.set_param("received", Some(source.ip().to_string()));
        }
    }
}

/// Returns the lower-cased media type of a Content-Type value.
pub(crate) fn media_type_of(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| !is_lws(*c))
        .collect::<String>()
        .to_ascii_lowercase()
}

/// The name a header look-up compares: names are kept canonical, so only a
/// compact form needs looking up; any other compares as it is (case
/// aside), without a scan of the known names on every look-up.
fn wanted_name(name: &str) -> Cow<'_, str> {
    if name.len() == 1 {
        super::header::canonical_name(name)
    } else {
        Cow::Borrowed(name)
    }
}

/// Writes a message: the start line, `Name: value` per header, an empty
/// line and the body.
pub(crate) fn write_message(start_line: &str, headers: &[Header], body: &[u8]) -> Vec<u8> {
    let size = start_line.len()
        + 4
        + body.len()
        + headers
            .iter()
            .map(|h| h.name.len() + h.value.len() + 4)
            .sum::<usize>();
    let mut bytes = Vec::with_capacity(size);
    bytes.extend_from_slice(start_line.as_bytes());
    bytes.extend_from_slice(b"\r\n");
    for header in headers {
        bytes.extend_from_slice(header.name.as_bytes());
        bytes.extend_from_slice(b": ");
        bytes.extend_from_slice(header.value.as_bytes());
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(body);
    bytes
}
