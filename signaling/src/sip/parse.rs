//! Parsing a framed message into a [`SipMessage`].
//!
//! The header section is normalised first (lines unfolded, compact names
//! expanded, names case-folded to their canonical spelling), then the start
//! line and the headers the server relies on are read with this module's
//! own parsers. The message keeps its octets beside the value
//! ([`SipMessage::bytes`]); [`SipMessage::from_parts`] reads a message the
//! server builds with the same rules.

use std::borrow::Cow;

use super::framing::{frame_datagram_with, FrameError, FramingLimits};
use super::header::{canonical_name, CSeq, Header, HeaderValue, Method, Via};
use super::message::{CallId, SipMessage, StartLine};
use super::uri::{
    is_lws, is_token_char, parse_delta_seconds, split_top_level_commas, NameAddr, Uri,
};

/// What is wrong with a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    /// The octets could not be framed as one message.
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// The start line is neither a Request-Line nor a Status-Line.
    #[error("malformed start line: {0}")]
    MalformedStartLine(&'static str),
    /// The SIP-Version is well-formed but not SIP/2.0.
    #[error("unsupported SIP version {0}")]
    UnsupportedVersion(String),
    /// The status code is not three digits from 100 to 699.
    #[error("invalid status code")]
    InvalidStatusCode,
    /// The Request-URI cannot be read.
    #[error("malformed Request-URI: {0}")]
    InvalidRequestUri(String),
    /// A header line has no `name:` prefix.
    #[error("malformed header line {0}")]
    MalformedHeaderLine(usize),
    /// A mandatory header is absent.
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    /// A single-valued header appears several times with different values.
    #[error("conflicting {0} headers")]
    ConflictingHeader(&'static str),
    /// A header the server relies on has an unreadable value.
    #[error("malformed {name} header: {detail}")]
    InvalidHeader {
        /// Canonical header name.
        name: &'static str,
        /// What is wrong with it.
        detail: String,
    },
}

/// A message that could not be parsed, with what is needed to answer it.
///
/// When the octets looked like a request with a Via, the Via, From, To,
/// Call-ID and CSeq lines are kept as written so that
/// [`build_error_response`](super::build_error_response) can answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct ParseError {
    kind: ParseErrorKind,
    method: Option<Method>,
    salvaged: Vec<Header>,
}

/// Headers copied into error responses (RFC 3261 §8.2.6.2).
const SALVAGED: &[&str] = &["Via", "From", "To", "Call-ID", "CSeq"];

impl ParseError {
    /// Builds the error for octets that failed to frame, salvaging response
    /// headers from the header section `head` (possibly incomplete).
    pub fn from_frame(error: FrameError, head: &[u8]) -> ParseError {
        let octets: std::sync::Arc<[u8]> = head.into();
        let tokens = Tokens::read(&octets, ..head.len());
        ParseError {
            kind: ParseErrorKind::Frame(error),
            method: tokens.request_method(),
            salvaged: tokens.salvage(),
        }
    }

    /// Returns what is wrong.
    pub fn kind(&self) -> &ParseErrorKind {
        &self.kind
    }

    /// Returns the status code this problem maps to, `None` when the octets
    /// are never to be answered (keep-alives).
    pub fn status(&self) -> Option<u16> {
        match &self.kind {
            ParseErrorKind::Frame(error) => error.status(),
            ParseErrorKind::UnsupportedVersion(_) => Some(505),
            _ => Some(400),
        }
    }

    /// Returns the reason phrase for the response, naming the problem.
    pub fn reason_phrase(&self) -> String {
        let text = match self.status() {
            Some(505) => "Version Not Supported".to_owned(),
            Some(413) => "Request Entity Too Large".to_owned(),
            Some(513) => "Message Too Large".to_owned(),
            _ => format!("Bad Request ({})", self.kind),
        };
        super::response::sanitize_reason(&text)
    }

    /// `true` when the octets looked like a request.
    pub fn is_request(&self) -> bool {
        self.method.is_some()
    }

    /// Returns the request method when the start line named one.
    pub fn method(&self) -> Option<&Method> {
        self.method.as_ref()
    }

    /// `true` when an error response may be sent: the message is a request
    /// other than ACK, carries a Via to route the response, and the problem
    /// has a status. Responses and ACKs are never answered.
    pub fn can_respond(&self) -> bool {
        self.status().is_some()
            && self.method.as_ref().is_some_and(|m| *m != Method::Ack)
            && self.salvaged.iter().any(|h| h.name == "Via")
    }

    /// Returns the salvaged Via, From, To, Call-ID and CSeq lines in order.
    pub fn salvaged_headers(&self) -> &[Header] {
        &self.salvaged
    }

    /// Returns the top Via when it can be read, to route the response.
    pub fn top_via(&self) -> Option<Via> {
        let first = self.salvaged.iter().find(|h| h.name == "Via")?;
        let value = split_top_level_commas(&first.value)
            .ok()?
            .into_iter()
            .next()?;
        Via::parse(value).ok()
    }
}

/// The header section as text, invalid UTF-8 replaced. Valid UTF-8 (every
/// message seen in practice) is checked with `str::from_utf8`, which runs
/// over ASCII a word at a time; `String::from_utf8_lossy` walks its chunks
/// a byte at a time, and was 5 % of the core's work per call for the two
/// passes over each message's head.
pub(crate) fn text_of(head: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(head) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(head),
    }
}

/// The logical lines of a header section: the start line, then one per
/// header with its continuation lines (starting with SP or HTAB) joined by
/// a single SP. Bare LF line ends are tolerated. A line is borrowed from
/// the text unless it had to be joined, and the lines are read as they are
/// asked for: the framer reads every message's lines for its
/// Content-Length and keeps none of them.
pub(crate) struct LogicalLines<'a> {
    raw: std::iter::Peekable<std::str::Split<'a, char>>,
    started: bool,
}

impl<'a> LogicalLines<'a> {
    pub(crate) fn new(text: &'a str) -> LogicalLines<'a> {
        LogicalLines {
            raw: text.split('\n').peekable(),
            started: false,
        }
    }
}

fn without_cr(raw: &str) -> &str {
    raw.strip_suffix('\r').unwrap_or(raw)
}

impl<'a> Iterator for LogicalLines<'a> {
    type Item = Cow<'a, str>;

    fn next(&mut self) -> Option<Cow<'a, str>> {
        let mut line = Cow::Borrowed(without_cr(self.raw.next()?));
        // The start line cannot be continued, only header lines can.
        if !std::mem::replace(&mut self.started, true) {
            return Some(line);
        }
        while let Some(next) = self.raw.next_if(|raw| raw.starts_with(is_lws)) {
            let continuation = without_cr(next).trim_matches(is_lws);
            if !continuation.is_empty() {
                let joined = line.to_mut();
                let kept = joined.trim_end_matches(is_lws).len();
                joined.truncate(kept);
                joined.push(' ');
                joined.push_str(continuation);
            }
        }
        Some(line)
    }
}

/// The header section cut into a start line and headers.
struct Tokens {
    start_line: String,
    headers: Vec<Header>,
    /// 1-based index of the first header line without a name.
    bad_line: Option<usize>,
}

impl Tokens {
    /// Reads the header section `head` of `octets`; values written there
    /// as they read are shared with `octets`.
    fn read(octets: &std::sync::Arc<[u8]>, head: std::ops::RangeTo<usize>) -> Tokens {
        let text = text_of(&octets[head]);
        let text = text.trim_start_matches(['\r', '\n']);
        let mut lines = LogicalLines::new(text);
        let start_line = lines.next().map(Cow::into_owned).unwrap_or_default();
        // At most one header a line.
        let mut headers = Vec::with_capacity(text.bytes().filter(|&b| b == b'\n').count());
        let mut bad_line = None;
        for (index, line) in lines.enumerate() {
            if line.is_empty() {
                continue;
            }
            // A CR is only ever part of a line's CRLF (RFC 3261 §7.3.1): a
            // bare one kept in a value could end a line for the next hop.
            let parsed = line.split_once(':').and_then(|(name, value)| {
                let name = name.trim_matches(is_lws);
                let wellformed =
                    !name.is_empty() && name.chars().all(is_token_char) && !value.contains('\r');
                wellformed.then(|| Header {
                    name: canonical_name(name),
                    value: HeaderValue::within(octets, value.trim_matches(is_lws)),
                })
            });
            match parsed {
                Some(header) => headers.push(header),
                None => {
                    bad_line.get_or_insert(index + 1);
                }
            }
        }
        Tokens {
            start_line,
            headers,
            bad_line,
        }
    }

    fn request_method(&self) -> Option<Method> {
        let token = self.start_line.split(' ').next()?;
        let looks_like_method = !token.is_empty()
            && token.chars().all(is_token_char)
            && !token.to_ascii_uppercase().starts_with("SIP/");
        (looks_like_method && self.start_line.contains(' ')).then(|| Method::from_token(token))
    }

    fn salvage(&self) -> Vec<Header> {
        self.headers
            .iter()
            .filter(|h| SALVAGED.contains(&&*h.name))
            .cloned()
            .collect()
    }
}

/// Every value of header `name` (canonical), in order.
fn values<'a>(headers: &'a [Header], name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |h| h.name == name)
        .map(|h| h.value.as_str())
}

/// Returns the value of a single-valued header; repeated lines must agree.
fn single<'a>(
    headers: &'a [Header],
    name: &'static str,
) -> Result<Option<&'a str>, ParseErrorKind> {
    let mut all = values(headers, name);
    let Some(first) = all.next() else {
        return Ok(None);
    };
    if all.any(|other| other != first) {
        return Err(ParseErrorKind::ConflictingHeader(name));
    }
    Ok(Some(first))
}

fn required<'a>(headers: &'a [Header], name: &'static str) -> Result<&'a str, ParseErrorKind> {
    single(headers, name)?.ok_or(ParseErrorKind::MissingHeader(name))
}

/// RFC 3261 §25.1: `tag-param = "tag" EQUAL token`. A tag without a value,
/// or two tags, would read as no tag (or the first) here and perhaps as
/// another at the next hop; and a response would add its own tag beside
/// one that is there (found by fuzzing: `To: <sip:b@x>;tag`).
fn check_tag(name: &'static str, value: &NameAddr) -> Result<(), ParseErrorKind> {
    let mut tags = value
        .params
        .iter()
        .filter(|p| p.name.eq_ignore_ascii_case("tag"));
    match (tags.next(), tags.next()) {
        (Some(_), Some(_)) => Err(invalid(name, "more than one tag")),
        (Some(tag), None) if tag.value.is_none() => Err(invalid(name, "tag without a value")),
        _ => Ok(()),
    }
}

fn invalid(name: &'static str, detail: impl ToString) -> ParseErrorKind {
    ParseErrorKind::InvalidHeader {
        name,
        detail: detail.to_string(),
    }
}

/// Checks a SIP-Version: `Ok` for SIP/2.0, 505 for another well-formed
/// version, malformed otherwise.
fn check_version(version: &str) -> Result<(), ParseErrorKind> {
    if version.eq_ignore_ascii_case("SIP/2.0") {
        return Ok(());
    }
    let numbers = version
        .get(..4)
        .filter(|p| p.eq_ignore_ascii_case("SIP/"))
        .and_then(|_| version[4..].split_once('.'));
    match numbers {
        Some((major, minor))
            if !major.is_empty()
                && !minor.is_empty()
                && major
                    .bytes()
                    .chain(minor.bytes())
                    .all(|b| b.is_ascii_digit()) =>
        {
            Err(ParseErrorKind::UnsupportedVersion(version.to_owned()))
        }
        _ => Err(ParseErrorKind::MalformedStartLine("invalid SIP-Version")),
    }
}

pub(crate) fn parse_start_line(line: &str) -> Result<StartLine, ParseErrorKind> {
    let is_status_line = line
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("SIP/"));
    if is_status_line {
        let (version, rest) = line
            .split_once(' ')
            .ok_or(ParseErrorKind::MalformedStartLine("no status code"))?;
        check_version(version)?;
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseErrorKind::InvalidStatusCode);
        }
        let status: u16 = code
            .parse()
            .map_err(|_| ParseErrorKind::InvalidStatusCode)?;
        if !(100..=699).contains(&status) {
            return Err(ParseErrorKind::InvalidStatusCode);
        }
        return Ok(StartLine::Response {
            status,
            reason: reason.to_owned(),
        });
    }
    // Trailing SPs after the version are tolerated (RFC 4475 §3.1.2.10);
    // anything else than single SPs between the elements is not.
    let parts: Vec<&str> = line.trim_end_matches(is_lws).split(' ').collect();
    let [method, uri, version] = parts[..] else {
        return Err(ParseErrorKind::MalformedStartLine(
            "Request-Line needs exactly Method SP Request-URI SP SIP-Version",
        ));
    };
    if method.is_empty() || !method.chars().all(is_token_char) {
        return Err(ParseErrorKind::MalformedStartLine("invalid method"));
    }
    check_version(version)?;
    let uri = Uri::parse(uri).map_err(|e| ParseErrorKind::InvalidRequestUri(e.to_string()))?;
    Ok(StartLine::Request {
        method: Method::from_token(method),
        uri,
    })
}

/// Parses one message with the default [`FramingLimits`]. Datagram framing
/// rules apply: octets after Content-Length are ignored and a missing
/// Content-Length means "the rest", so both a UDP payload and a message cut
/// by [`StreamFramer`](super::StreamFramer) can be passed as they are.
pub fn parse(bytes: &[u8]) -> Result<SipMessage, ParseError> {
    parse_with(bytes, FramingLimits::default())
}

/// [`parse`] with explicit limits.
pub fn parse_with(bytes: &[u8], limits: FramingLimits) -> Result<SipMessage, ParseError> {
    let frame = match frame_datagram_with(bytes, limits) {
        Ok(frame) => frame,
        Err(error) => {
            let start = bytes
                .iter()
                .position(|b| *b != b'\r' && *b != b'\n')
                .unwrap_or(bytes.len());
            let rest = &bytes[start..];
            let end = rest
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .unwrap_or(rest.len().min(limits.max_header));
            return Err(ParseError::from_frame(error, &rest[..end]));
        }
    };
    // The message's own octets: from its start line to the end of its body
    // (both are slices of `bytes`), without leading CRLFs or trailing octets.
    // Header values and the body are read from them, not copied out.
    let base = bytes.as_ptr() as usize;
    let first = frame.head.as_ptr() as usize - base;
    let last = frame.body.as_ptr() as usize - base + frame.body.len();
    let octets: std::sync::Arc<[u8]> = bytes[first..last].into();
    let mut tokens = Tokens::read(&octets, ..frame.head.len());
    let built = match tokens.bad_line {
        Some(line) => {
            parse_start_line(&tokens.start_line).and(Err(ParseErrorKind::MalformedHeaderLine(line)))
        }
        None => parse_start_line(&tokens.start_line)
            .and_then(|start| build(start, &mut tokens.headers, frame.body.len(), octets)),
    };
    built.map_err(|kind| ParseError {
        kind,
        method: tokens.request_method(),
        salvaged: tokens.salvage(),
    })
}

/// Reads the headers the server relies on into a [`SipMessage`]; shared by
/// [`parse_with`] and [`SipMessage::from_parts`]. The headers are taken
/// only when the message is good: a bad one's are left for the error
/// response to salvage, without a copy of every message's headers.
pub(crate) fn build(
    start: StartLine,
    headers: &mut Vec<Header>,
    body_len: usize,
    bytes: std::sync::Arc<[u8]>,
) -> Result<SipMessage, ParseErrorKind> {
    let mut vias = Vec::new();
    for value in values(headers, "Via") {
        for item in split_top_level_commas(value).map_err(|e| invalid("Via", e))? {
            if item.is_empty() {
                return Err(invalid("Via", "empty value between commas"));
            }
            vias.push(Via::parse(item).map_err(|e| invalid("Via", e))?);
        }
    }
    if vias.is_empty() {
        return Err(ParseErrorKind::MissingHeader("Via"));
    }
    let from = NameAddr::parse(required(headers, "From")?).map_err(|e| invalid("From", e))?;
    check_tag("From", &from)?;
    let to = NameAddr::parse(required(headers, "To")?).map_err(|e| invalid("To", e))?;
    check_tag("To", &to)?;
    let call_id = required(headers, "Call-ID")?;
    if call_id.is_empty() || call_id.contains(is_lws) {
        return Err(invalid("Call-ID", "empty or containing whitespace"));
    }
    let call_id = CallId::new(call_id);
    let cseq = CSeq::parse(required(headers, "CSeq")?)
        .ok_or_else(|| invalid("CSeq", "expected a 32-bit sequence number and a method"))?;
    let max_forwards = single(headers, "Max-Forwards")?
        .map(|v| parse_delta_seconds(v).ok_or_else(|| invalid("Max-Forwards", "not a number")))
        .transpose()?;

    let mut contacts = Vec::new();
    let mut contact_wildcard = false;
    for value in values(headers, "Contact") {
        for item in split_top_level_commas(value).map_err(|e| invalid("Contact", e))? {
            if item == "*" {
                contact_wildcard = true;
                continue;
            }
            if item.is_empty() {
                return Err(invalid("Contact", "empty value between commas"));
            }
            contacts.push(NameAddr::parse(item).map_err(|e| invalid("Contact", e))?);
        }
    }
    if contact_wildcard && !contacts.is_empty() {
        return Err(invalid("Contact", "'*' mixed with addresses"));
    }

    Ok(SipMessage {
        parsed: std::sync::Arc::new(super::message::Parsed {
            start,
            headers: std::mem::take(headers),
            body_len,
            vias: std::sync::Arc::new(vias),
            from: std::sync::Arc::new(from),
            to,
            call_id,
            cseq,
            max_forwards,
            contacts,
            contact_wildcard,
        }),
        bytes,
    })
}
