//! Checks of signaling's SIP parser, stream framer and dialplan loader.

use std::net::SocketAddr;

use switchboard_signaling::dialplan::{substitute, CallVars, Dialplan, Pattern};
use switchboard_signaling::sip::{
    self, build_error_response, build_response, check_request, frame_datagram_with, parse_with,
    FrameError, FramingLimits, SipMessage, StartLine, StreamFramer, Tag,
};

/// `sip_parse`: whatever parses re-serializes (start line, headers as
/// normalised, body) into octets that parse to the same message, and a
/// response built for a parsed request parses as that request's response.
pub fn parse(data: &[u8]) {
    let outcome = sip::classify(data);
    drop(outcome);
    let message = match sip::parse(data) {
        Ok(message) => message,
        Err(error) => {
            let _ = (error.status(), error.reason_phrase(), error.top_via());
            let _ = build_error_response(&error);
            return;
        }
    };
    let bytes = serialize(&message);
    let again = sip::parse(&bytes).unwrap_or_else(|e| {
        panic!(
            "re-serialized message does not parse: {e}\n{}",
            String::from_utf8_lossy(&bytes)
        )
    });
    assert_same(&message, &again);
    assert_eq!(serialize(&again), bytes, "serializing is stable");

    if message.is_request() && *message.method() != sip::Method::Ack {
        let _ = check_request(&message);
        let mut stamped = message.clone();
        let source: SocketAddr = "192.0.2.1:5062".parse().expect("literal address");
        stamped.stamp_received(source);
        let _ = sip::response_destination(stamped.top_via(), source, &stamped.top_via().transport);
        let tag = Tag::new("fuzz");
        let response = build_response(&stamped, 486, "Busy Here", Some(&tag), &[]);
        let parsed = sip::parse(&response).unwrap_or_else(|e| {
            panic!(
                "response to a parsed request does not parse: {e}\n{}",
                String::from_utf8_lossy(&response)
            )
        });
        assert_eq!(parsed.status(), Some(486));
        assert_eq!(
            parsed.call_id(),
            stamped.call_id(),
            "response keeps Call-ID"
        );
        assert_eq!(parsed.cseq(), stamped.cseq(), "response keeps CSeq");
        assert_eq!(parsed.vias(), stamped.vias(), "response echoes the Vias");
        // An in-dialog request's To tag stays; otherwise ours is added.
        let expected_tag = stamped.to_tag().unwrap_or(tag);
        assert_eq!(parsed.to_tag(), Some(expected_tag), "response To tag");
    }
}

/// The message as octets: its start line, its headers as parsed (unfolded,
/// canonical names) and its body.
fn serialize(message: &SipMessage) -> Vec<u8> {
    let mut text = match message.start_line() {
        StartLine::Request { method, uri } => format!("{method} {uri} SIP/2.0\r\n"),
        StartLine::Response { status, reason } => format!("SIP/2.0 {status} {reason}\r\n"),
    };
    for header in message.headers() {
        text.push_str(&header.name);
        text.push_str(": ");
        text.push_str(&header.value);
        text.push_str("\r\n");
    }
    text.push_str("\r\n");
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(message.body());
    bytes
}

fn assert_same(a: &SipMessage, b: &SipMessage) {
    assert_eq!(a.start_line(), b.start_line(), "start line");
    assert_eq!(a.headers(), b.headers(), "headers");
    assert_eq!(a.body(), b.body(), "body");
    assert_eq!(a.vias(), b.vias(), "Vias");
    assert_eq!(a.from(), b.from(), "From");
    assert_eq!(a.to(), b.to(), "To");
    assert_eq!(a.call_id(), b.call_id(), "Call-ID");
    assert_eq!(a.cseq(), b.cseq(), "CSeq");
    assert_eq!(a.max_forwards(), b.max_forwards(), "Max-Forwards");
    assert_eq!(a.contacts(), b.contacts(), "Contacts");
    assert_eq!(
        a.contact_is_wildcard(),
        b.contact_is_wildcard(),
        "Contact: *"
    );
    assert_eq!(a.expires(), b.expires(), "Expires");
    assert_eq!(a.content_length(), b.content_length(), "Content-Length");
}

/// What a stream framer made of a byte stream.
#[derive(Debug, PartialEq, Eq)]
struct Framed {
    messages: Vec<Vec<u8>>,
    pings: usize,
    error: Option<FrameError>,
    failed_head: Vec<u8>,
    /// Octets of an incomplete message left at the end (without an error).
    buffered: usize,
}

fn frame_stream<'a>(limits: FramingLimits, chunks: impl IntoIterator<Item = &'a [u8]>) -> Framed {
    let mut framer = StreamFramer::new(limits);
    let mut framed = Framed {
        messages: Vec::new(),
        pings: 0,
        error: None,
        failed_head: Vec::new(),
        buffered: 0,
    };
    'chunks: for chunk in chunks {
        framer.push(chunk);
        loop {
            match framer.next_message() {
                Ok(Some(message)) => framed.messages.push(message),
                Ok(None) => break,
                Err(error) => {
                    framed.error = Some(error);
                    framed.failed_head = framer.failed_head().to_vec();
                    break 'chunks;
                }
            }
        }
        // The framer's promise: memory bounded by the limits once drained.
        assert!(
            framer.buffered() <= limits.max_header + 4 + limits.max_body,
            "{} octets buffered beyond the limits {limits:?}",
            framer.buffered()
        );
        framed.pings += framer.take_pings();
    }
    framed.pings += framer.take_pings();
    if framed.error.is_none() {
        framed.buffered = framer.buffered();
    }
    framed
}

/// Chunk lengths from a tiny xorshift PRNG, so the split is a function of
/// the input.
fn split_points(seed: u8, data: &[u8]) -> Vec<&[u8]> {
    let mut state = 0x9E37_79B9_u32 ^ u32::from(seed) ^ ((data.len() as u32) << 8);
    let max = usize::from(seed % 64) + 1;
    let mut chunks = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let len = (state as usize % max + 1).min(rest.len());
        let (chunk, tail) = rest.split_at(len);
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

/// `sip_framer`: the first byte picks the limits and the chunking; the
/// rest is a TCP byte stream. Fed at once, byte by byte or in random chunks
/// it yields the same messages, pings and error, and every message it
/// yields frames as a datagram to exactly itself.
pub fn framer(data: &[u8]) {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let limits = if control & 0x80 != 0 {
        // Small limits, so the fuzzer reaches them.
        FramingLimits {
            max_header: 16 + usize::from(control & 0x3f) * 4,
            max_body: usize::from(control & 0x0f) * 8,
        }
    } else {
        FramingLimits::default()
    };
    let whole = frame_stream(limits, [stream]);
    let bytewise = frame_stream(limits, stream.chunks(1));
    assert_eq!(whole, bytewise, "byte-by-byte feeding differs");
    let chunked = frame_stream(limits, split_points(control, stream));
    assert_eq!(whole, chunked, "chunked feeding differs");

    for message in &whole.messages {
        let frame = frame_datagram_with(message, limits)
            .unwrap_or_else(|e| panic!("stream message does not frame as a datagram: {e}"));
        assert_eq!(
            frame.head.len() + 4 + frame.body.len(),
            message.len(),
            "datagram framing of a stream message is the message"
        );
        let _ = parse_with(message, limits);
    }
    if let Some(error) = &whole.error {
        let _ = sip::ParseError::from_frame(error.clone(), &whole.failed_head);
    }
}

/// `dialplan`: JSON text, optionally followed by NUL and a called number.
/// Every loaded route's pattern reparses to itself and matches an example
/// number built from it; the chosen route matches and no matching route
/// has a lower priority value; variables are substituted, never re-expanded.
pub fn dialplan(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (json, destination) = text.split_once('\0').unwrap_or((text, "1001"));
    if let Ok(pattern) = Pattern::parse(json) {
        check_pattern(&pattern);
    }
    let Ok(plan) = Dialplan::parse(json) else {
        return;
    };
    let vars = CallVars {
        destination,
        caller_id: "${call_id}",
        caller_name: "${destination}",
        call_id: "c@h",
    };
    for route in plan.routes() {
        check_pattern(&route.pattern);
        assert!(!route.actions.is_empty(), "a loaded route has actions");
        for action in &route.actions {
            let _ = action.with_vars(&vars);
        }
    }
    if let Some(chosen) = plan.route(destination) {
        assert!(chosen.pattern.matches(destination), "chosen route matches");
        for route in plan.routes() {
            if route.pattern.matches(destination) {
                assert!(
                    route.priority >= chosen.priority,
                    "a better route was skipped"
                );
            }
        }
    } else {
        assert!(
            plan.routes()
                .iter()
                .all(|r| !r.pattern.matches(destination)),
            "a matching route was not chosen"
        );
    }
    // Values are inserted verbatim: `${call_id}` inside a value stays.
    assert_eq!(substitute("<${caller_id}>", &vars), "<${call_id}>");
    let _ = substitute(destination, &vars);
}

fn check_pattern(pattern: &Pattern) {
    let again = Pattern::parse(pattern.as_str()).expect("a pattern's text parses");
    assert_eq!(&again, pattern, "pattern round trip");
    if let Some(example) = example_of(pattern.as_str()) {
        assert!(
            pattern.matches(&example),
            "pattern {:?} does not match its example {example:?}",
            pattern.as_str()
        );
    }
}

/// A number the pattern grammar says matches `source` (see
/// `dialplan::pattern`): X, N, Z and sets give their smallest digit or
/// first character, a final `.` one more digit, a final `*` nothing.
fn example_of(source: &str) -> Option<String> {
    let chars: Vec<char> = source.trim().chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let last = i + 1 == chars.len();
        match chars[i] {
            'X' | 'x' => out.push('0'),
            'N' | 'n' => out.push('2'),
            'Z' | 'z' => out.push('1'),
            '.' if last => out.push('0'),
            '*' if last => {}
            '[' => {
                let close = chars[i..].iter().position(|&c| c == ']')? + i;
                out.push(*chars.get(i + 1).filter(|_| i + 1 < close)?);
                i = close;
            }
            other => out.push(other),
        }
        i += 1;
    }
    Some(out)
}
