//! Message builders and a stepped clock for the transaction tests.

use std::time::{Duration, Instant};

use crate::sip::SipMessage;

/// A request of `method` with the given branch suffix (after the magic
/// cookie), CSeq number and sent-by host.
pub(super) fn request(method: &str, branch: &str, seq: u32, sent_by: &str) -> SipMessage {
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
    crate::sip::parse(text.as_bytes()).expect("test request text parses")
}

/// An INVITE from `client.example.com:5060` with branch `z9hG4bK<branch>`.
pub(super) fn invite(branch: &str) -> SipMessage {
    request("INVITE", branch, 1, "client.example.com:5060")
}

/// A response to `request` built as §8.2.6.2 says, with a To tag when given.
pub(super) fn response_to(request: &SipMessage, status: u16, to_tag: Option<&str>) -> SipMessage {
    let mut text = format!("SIP/2.0 {status} Test\r\n");
    for via in request.header_values("Via") {
        text.push_str(&format!("Via: {via}\r\n"));
    }
    for name in ["From", "Call-ID", "CSeq"] {
        let value = request.header(name).expect("test requests carry it");
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    let to = request.header("To").expect("test requests carry To");
    match to_tag {
        Some(tag) => text.push_str(&format!("To: {to};tag={tag}\r\n")),
        None => text.push_str(&format!("To: {to}\r\n")),
    }
    text.push_str("Content-Length: 0\r\n\r\n");
    crate::sip::parse(text.as_bytes()).expect("test response text parses")
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
pub(super) fn describe(message: &SipMessage) -> String {
    match message.status() {
        Some(status) => status.to_string(),
        None => message.method().to_string(),
    }
}
