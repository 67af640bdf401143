//! Request checks a UAS makes before processing (RFC 3261 §8.2.1 to §8.2.3,
//! §16.3 for Max-Forwards), each mapped to the response the RFC names.
//!
//! Missing or duplicated mandatory headers and bad versions are caught
//! earlier, by [`parse`](super::parse), because the accessors of a parsed
//! [`SipMessage`] rely on them.

use super::header::Method;
use super::message::{media_type_of, SipMessage, BRANCH_MAGIC_COOKIE};
use super::uri::{Scheme, Uri};

/// Why a request is refused, as the response to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Status code.
    pub status: u16,
    /// Reason phrase naming the problem.
    pub reason: String,
    /// Headers the response must carry (Unsupported, Accept, ...).
    pub extra_headers: Vec<(String, String)>,
}

impl Rejection {
    fn new(status: u16, reason: &str) -> Rejection {
        Rejection {
            status,
            reason: reason.to_owned(),
            extra_headers: Vec::new(),
        }
    }

    fn with_header(mut self, name: &str, value: impl Into<String>) -> Rejection {
        self.extra_headers.push((name.to_owned(), value.into()));
        self
    }
}

/// What this server supports, for the checks that depend on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPolicy {
    /// Option tags this server implements; any other tag in Require is 420.
    pub supported_option_tags: Vec<String>,
}

impl Default for RequestPolicy {
    /// No option tags: nothing in this layer implements 100rel, timer and
    /// the like yet, and claiming them would be worse than a 420.
    fn default() -> Self {
        RequestPolicy {
            supported_option_tags: Vec::new(),
        }
    }
}

/// Methods whose body this server reads (as SDP); their bodies must be
/// `application/sdp` or a multipart holding one.
fn reads_sdp_body(method: &Method) -> bool {
    matches!(method, Method::Invite | Method::Update | Method::Prack)
}

/// Methods a B2BUA answers itself rather than forwards, so Max-Forwards 0
/// does not stop them (RFC 3261 §16.3 item 2 concerns forwarding only; an
/// OPTIONS may be answered locally as §11 describes).
fn answered_locally(method: &Method) -> bool {
    matches!(
        method,
        Method::Options | Method::Register | Method::Cancel | Method::Ack
    )
}

/// Checks a parsed request with the default [`RequestPolicy`].
pub fn check_request(request: &SipMessage) -> Result<(), Rejection> {
    check_request_with(request, &RequestPolicy::default())
}

/// Checks a parsed request, in the order of RFC 3261 §8.2: Request-URI
/// scheme (416), CSeq method (400), branch (400), Max-Forwards (483),
/// Require (420), Content-Encoding and Content-Type (415), Accept (406).
/// Responses pass unchecked; an ACK is only checked where a failure would
/// not need an answer.
pub fn check_request_with(request: &SipMessage, policy: &RequestPolicy) -> Result<(), Rejection> {
    let Some(uri) = request.request_uri() else {
        return Ok(());
    };
    let method = request.method();

    match uri.scheme() {
        Scheme::Sip | Scheme::Sips | Scheme::Tel => {}
        Scheme::Other(_) => return Err(Rejection::new(416, "Unsupported URI Scheme")),
    }
    if matches!(uri, Uri::Sip(sip) if sip.headers.is_some()) {
        return Err(Rejection::new(400, "Bad Request (headers in Request-URI)"));
    }
    if request.cseq().method != *method {
        return Err(Rejection::new(
            400,
            "Bad Request (CSeq method does not match the request method)",
        ));
    }
    if request
        .top_via()
        .branch()
        .is_some_and(|b| b.as_str() == BRANCH_MAGIC_COOKIE)
    {
        return Err(Rejection::new(
            400,
            "Bad Request (Via branch is only the magic cookie)",
        ));
    }
    if request.max_forwards() == 0 && !answered_locally(method) {
        return Err(Rejection::new(483, "Too Many Hops"));
    }
    if matches!(method, Method::Ack | Method::Cancel) {
        // §8.2.2.3: Require is not checked on CANCEL, and an ACK is never
        // answered, so nothing below applies to them.
        return Ok(());
    }

    let unsupported: Vec<String> = request
        .require()
        .into_iter()
        .filter(|tag| {
            !policy
                .supported_option_tags
                .iter()
                .any(|known| known.eq_ignore_ascii_case(tag))
        })
        .collect();
    if !unsupported.is_empty() {
        return Err(
            Rejection::new(420, "Bad Extension").with_header("Unsupported", unsupported.join(", "))
        );
    }

    if request.body().is_empty() {
        return check_accept(request);
    }
    let encodings = request.header_list("Content-Encoding");
    if encodings
        .iter()
        .any(|e| !e.eq_ignore_ascii_case("identity"))
    {
        return Err(
            Rejection::new(415, "Unsupported Media Type (Content-Encoding)")
                .with_header("Accept-Encoding", "identity"),
        );
    }
    if reads_sdp_body(method) && !carries_sdp(request) {
        return Err(Rejection::new(415, "Unsupported Media Type")
            .with_header("Accept", "application/sdp, multipart/mixed"));
    }
    check_accept(request)
}

/// §8.2.3 / RFC 4475 §3.3.15: an INVITE whose Accept excludes SDP cannot
/// be answered with a session description.
fn check_accept(request: &SipMessage) -> Result<(), Rejection> {
    if *request.method() != Method::Invite {
        return Ok(());
    }
    let accepted = request.header_list("Accept");
    if request.header("Accept").is_none() {
        return Ok(());
    }
    let takes_sdp = accepted.iter().any(|item| {
        matches!(
            media_type_of(item).as_str(),
            "application/sdp" | "application/*" | "*/*"
        )
    });
    if takes_sdp {
        Ok(())
    } else {
        Err(Rejection::new(406, "Not Acceptable").with_header(
            "Warning",
            "399 switchboard \"Accept must include application/sdp\"",
        ))
    }
}

/// `true` for an `application/sdp` body, or a `multipart/mixed` or
/// `multipart/alternative` body with an `application/sdp` part.
fn carries_sdp(request: &SipMessage) -> bool {
    let Some(content_type) = request.content_type() else {
        // RFC 3261 §20.15: a body without Content-Type is SDP.
        return true;
    };
    match media_type_of(content_type).as_str() {
        "application/sdp" => true,
        "multipart/mixed" | "multipart/alternative" => {
            boundary(content_type).is_some_and(|b| multipart_has_sdp(request.body(), &b))
        }
        _ => false,
    }
}

fn boundary(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| super::uri::unquote(value.trim()))
    })
}

/// Looks for a part whose headers declare `application/sdp`.
fn multipart_has_sdp(body: &[u8], boundary: &str) -> bool {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let mut parts = Vec::new();
    let mut i = 0;
    while let Some(offset) = body
        .get(i..)
        .and_then(|rest| rest.windows(delimiter.len()).position(|w| w == delimiter))
    {
        parts.push(i + offset + delimiter.len());
        i += offset + delimiter.len();
    }
    parts.iter().any(|&start| {
        let part = &body[start..];
        let head_end = part
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(part.len());
        String::from_utf8_lossy(&part[..head_end])
            .split("\r\n")
            .filter_map(|line| line.split_once(':'))
            .any(|(name, value)| {
                name.trim().eq_ignore_ascii_case("content-type")
                    && media_type_of(value) == "application/sdp"
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::parse;

    fn request(extra: &str, method: &str, body: &str) -> SipMessage {
        let text = format!(
            "{method} sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKabc\r\n\
             From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: c1\r\n\
             CSeq: 1 {method}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        parse(text.as_bytes()).unwrap_or_else(|e| panic!("test request should parse: {e}"))
    }

    fn status(result: Result<(), Rejection>) -> Option<u16> {
        result.err().map(|r| r.status)
    }

    #[test]
    fn max_forwards_zero_is_483_unless_answered_locally() {
        let invite = request("Max-Forwards: 0\r\n", "INVITE", "");
        assert_eq!(status(check_request(&invite)), Some(483));
        let options = request("Max-Forwards: 0\r\n", "OPTIONS", "");
        assert_eq!(status(check_request(&options)), None);
        let absent = request("", "INVITE", "");
        assert_eq!(absent.max_forwards(), 70);
        assert_eq!(status(check_request(&absent)), None);
    }

    #[test]
    fn require_lists_unknown_tags_in_unsupported() {
        let invite = request("Require: 100rel, Foo\r\n", "INVITE", "");
        let rejection = check_request(&invite).expect_err("unknown tags");
        assert_eq!(rejection.status, 420);
        assert_eq!(
            rejection.extra_headers,
            vec![("Unsupported".to_owned(), "100rel, Foo".to_owned())]
        );
        let policy = RequestPolicy {
            supported_option_tags: vec!["100rel".to_owned(), "foo".to_owned()],
        };
        assert_eq!(check_request_with(&invite, &policy), Ok(()));
        let cancel = request("Require: foo\r\n", "CANCEL", "");
        assert_eq!(check_request(&cancel), Ok(()));
    }

    #[test]
    fn invite_bodies_must_be_sdp() {
        let sdp = request("Content-Type: application/sdp\r\n", "INVITE", "v=0\r\n");
        assert_eq!(check_request(&sdp), Ok(()));
        let xml = request("Content-Type: application/xml\r\n", "INVITE", "<a/>");
        let rejection = check_request(&xml).expect_err("xml body");
        assert_eq!(rejection.status, 415);
        assert_eq!(
            rejection.extra_headers,
            vec![(
                "Accept".to_owned(),
                "application/sdp, multipart/mixed".to_owned()
            )]
        );
        let multipart_body = "--b1\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b1\r\nContent-Type: application/SDP\r\n\r\nv=0\r\n--b1--\r\n";
        let multipart = request(
            "Content-Type: multipart/mixed;boundary=\"b1\"\r\n",
            "INVITE",
            multipart_body,
        );
        assert_eq!(check_request(&multipart), Ok(()));
        let no_sdp = request(
            "Content-Type: multipart/mixed;boundary=b1\r\n",
            "INVITE",
            "--b1\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b1--\r\n",
        );
        assert_eq!(status(check_request(&no_sdp)), Some(415));
        let message = request("Content-Type: text/plain\r\n", "MESSAGE", "hi");
        assert_eq!(check_request(&message), Ok(()));
    }

    #[test]
    fn content_encoding_other_than_identity_is_415() {
        let gzip = request(
            "Content-Type: application/sdp\r\nContent-Encoding: gzip\r\n",
            "INVITE",
            "xx",
        );
        let rejection = check_request(&gzip).expect_err("gzip");
        assert_eq!(rejection.status, 415);
        assert_eq!(
            rejection.extra_headers,
            vec![("Accept-Encoding".to_owned(), "identity".to_owned())]
        );
    }

    #[test]
    fn cseq_mismatch_scheme_and_uri_headers() {
        let mismatch = parse(
            b"OPTIONS sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:b@c>;tag=1\r\nTo: <sip:a@example.com>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n\r\n",
        )
        .expect("parses");
        assert_eq!(status(check_request(&mismatch)), Some(400));
        let tel = parse(
            b"INVITE tel:+15551234 SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:b@c>;tag=1\r\nTo: <tel:+15551234>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n\r\n",
        )
        .expect("tel Request-URI parses");
        assert_eq!(check_request(&tel), Ok(()));
        let mailto = parse(
            b"INVITE mailto:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:b@c>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n\r\n",
        )
        .expect("mailto parses");
        assert_eq!(status(check_request(&mailto)), Some(416));
    }
}
