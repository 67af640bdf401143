//! Message builders and a stepped clock for the transaction tests.

use std::time::{Duration, Instant};

use rsip::headers::{Header, UntypedHeader};
use rsip::{Request, Response};

/// A request of `method` with the given branch suffix (after the magic
/// cookie), CSeq number and sent-by host.
pub(super) fn request(method: &str, branch: &str, seq: u32, sent_by: &str) -> Request {
    let text = format!(
        "{method} sip:bob@example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP {sent_by};branch=z9hG4bK{branch}\r\n\
         Via: SIP/2.0/UDP origin.example.com;branch=z9hG4bKorigin\r\n\
         Route: <sip:proxy1.example.com;lr>\r\n\
         Route: <sip:proxy2.example.com;lr>\r\n\
         Max-Forwards: 70\r\n\
         From: Alice <sip:alice@example.com>;tag=from-tag\r\n\
         To: Bob <sip:bob@example.com>\r\n\
         Call-ID: call-1@client.example.com\r\n\
         CSeq: {seq} {method}\r\n\
         Content-Length: 0\r\n\r\n"
    );
    Request::try_from(text.as_str()).expect("test request text parses")
}

/// An INVITE from `client.example.com:5060` with branch `z9hG4bK<branch>`.
pub(super) fn invite(branch: &str) -> Request {
    request("INVITE", branch, 1, "client.example.com:5060")
}

/// A response to `request` built as §8.2.6.2 says, with a To tag when given.
pub(super) fn response_to(request: &Request, status: u16, to_tag: Option<&str>) -> Response {
    let mut headers = rsip::Headers::default();
    for header in request.headers.iter() {
        match header {
            Header::Via(_) | Header::From(_) | Header::CallId(_) | Header::CSeq(_) => {
                headers.push(header.clone())
            }
            Header::To(to) => {
                let value = match to_tag {
                    Some(tag) => format!("{};tag={tag}", to.value()),
                    None => to.value().to_string(),
                };
                headers.push(Header::To(rsip::headers::To::new(value)));
            }
            _ => {}
        }
    }
    headers.push(Header::ContentLength(0.into()));
    Response {
        status_code: status.into(),
        version: rsip::Version::V2,
        headers,
        body: Vec::new(),
    }
}

/// A clock the test advances by hand.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    start: Instant,
}

impl Clock {
    pub(super) fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    /// The instant `ms` milliseconds after the start.
    pub(super) fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    /// Milliseconds since the start.
    pub(super) fn ms(&self, instant: Instant) -> u64 {
        u64::try_from(instant.duration_since(self.start).as_millis())
            .expect("test durations fit in u64")
    }
}

/// The status code of a transmitted response, or the method of a request.
pub(super) fn describe(message: &rsip::SipMessage) -> String {
    match message {
        rsip::SipMessage::Request(request) => request.method.to_string(),
        rsip::SipMessage::Response(response) => response.status_code.code().to_string(),
    }
}
