//! Message framing: where a message ends, on datagrams (RFC 3261 §18.3,
//! one message per datagram) and on streams (Content-Length required).
//!
//! Framing only looks at the header section's line structure and
//! Content-Length; everything else is the parser's job.

use super::uri::is_lws;

/// Size limits applied while framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramingLimits {
    /// Largest header section (start line included) accepted, in octets.
    pub max_header: usize,
    /// Largest body accepted, in octets.
    pub max_body: usize,
}

impl Default for FramingLimits {
    /// 64 KiB of headers and 1 MiB of body: far above any real SIP message
    /// (RFC 4475's long-values message is under 7 KiB) yet bounded.
    fn default() -> Self {
        FramingLimits {
            max_header: 64 * 1024,
            max_body: 1024 * 1024,
        }
    }
}

/// Why octets could not be framed as a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The datagram holds nothing but CRLF keep-alive octets.
    #[error("keep-alive only")]
    KeepAlive,
    /// The header section exceeds [`FramingLimits::max_header`].
    #[error("header section larger than {max} octets")]
    HeaderTooLarge {
        /// The limit in force.
        max: usize,
    },
    /// Content-Length exceeds [`FramingLimits::max_body`].
    #[error("body of {declared} octets larger than {max}")]
    BodyTooLarge {
        /// Content-Length as declared.
        declared: usize,
        /// The limit in force.
        max: usize,
    },
    /// Content-Length is not a non-negative decimal number.
    #[error("invalid Content-Length {value:?}")]
    InvalidContentLength {
        /// The value as written (cut to 32 characters).
        value: String,
    },
    /// Several Content-Length headers disagree.
    #[error("conflicting Content-Length values")]
    ConflictingContentLength,
    /// A stream message has no Content-Length (RFC 3261 §18.3 requires it).
    #[error("missing Content-Length on a stream")]
    MissingContentLength,
    /// Content-Length claims more octets than the datagram holds.
    #[error("Content-Length {declared} larger than the {available} octets received")]
    Truncated {
        /// Content-Length as declared.
        declared: usize,
        /// Octets present after the header section.
        available: usize,
    },
    /// No empty line ends the header section of a datagram.
    #[error("header section not terminated by an empty line")]
    UnterminatedHeader,
}

impl FrameError {
    /// Returns the status a request failing this way is answered with, or
    /// `None` when nothing is to be answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            FrameError::KeepAlive => None,
            FrameError::HeaderTooLarge { .. } => Some(513),
            FrameError::BodyTooLarge { .. } => Some(413),
            FrameError::InvalidContentLength { .. }
            | FrameError::ConflictingContentLength
            | FrameError::MissingContentLength
            | FrameError::Truncated { .. }
            | FrameError::UnterminatedHeader => Some(400),
        }
    }
}

/// One framed datagram message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Start line and headers, without the empty line that ends them.
    pub head: &'a [u8],
    /// The body as bounded by Content-Length.
    pub body: &'a [u8],
}

/// Skips CRLF (and lone LF) octets that may precede a message (RFC 3261 §7.5).
fn leading_crlf(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(bytes.len())
}

/// Returns the offset of the CRLFCRLF ending the header section.
fn find_head_end(bytes: &[u8], from: usize) -> Option<usize> {
    bytes
        .get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + from)
}

/// Reads Content-Length from a header section. Compact `l`, any case, LWS
/// before the colon and folded values are handled like the parser does.
fn content_length(head: &[u8]) -> Result<Option<usize>, FrameError> {
    let text = super::parse::text_of(head);
    let mut found: Option<usize> = None;
    for line in super::parse::LogicalLines::new(&text).skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim_matches(is_lws);
        if !(name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l")) {
            continue;
        }
        let value = value.trim_matches(is_lws);
        let invalid = || FrameError::InvalidContentLength {
            value: value.chars().take(32).collect(),
        };
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        let length = value.parse::<usize>().map_err(|_| invalid())?;
        match found {
            Some(previous) if previous != length => {
                return Err(FrameError::ConflictingContentLength)
            }
            _ => found = Some(length),
        }
    }
    Ok(found)
}

/// Frames one UDP datagram: the body is bounded by Content-Length (the
/// rest of the datagram when absent) and octets after it are ignored.
pub fn frame_datagram(bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
    frame_datagram_with(bytes, FramingLimits::default())
}

/// [`frame_datagram`] with explicit limits.
pub fn frame_datagram_with(bytes: &[u8], limits: FramingLimits) -> Result<Frame<'_>, FrameError> {
    let bytes = &bytes[leading_crlf(bytes)..];
    if bytes.is_empty() {
        return Err(FrameError::KeepAlive);
    }
    let Some(end) = find_head_end(bytes, 0) else {
        return Err(if bytes.len() > limits.max_header {
            FrameError::HeaderTooLarge {
                max: limits.max_header,
            }
        } else {
            FrameError::UnterminatedHeader
        });
    };
    if end > limits.max_header {
        return Err(FrameError::HeaderTooLarge {
            max: limits.max_header,
        });
    }
    let head = &bytes[..end];
    let rest = &bytes[end + 4..];
    let body = match content_length(head)? {
        Some(declared) if declared > limits.max_body => {
            return Err(FrameError::BodyTooLarge {
                declared,
                max: limits.max_body,
            })
        }
        Some(declared) if declared > rest.len() => {
            return Err(FrameError::Truncated {
                declared,
                available: rest.len(),
            })
        }
        Some(declared) => &rest[..declared],
        None if rest.len() > limits.max_body => {
            return Err(FrameError::BodyTooLarge {
                declared: rest.len(),
                max: limits.max_body,
            })
        }
        None => rest,
    };
    Ok(Frame { head, body })
}

/// Frames messages arriving on a stream (TCP, TLS).
///
/// Feed received octets with [`push`](Self::push), then call
/// [`next_message`](Self::next_message) until it returns `Ok(None)`. CRLF
/// keep-alives between messages are skipped; each double-CRLF ping is
/// counted so the transport can answer with a single-CRLF pong (RFC 5626
/// §4.4.1). Memory stays bounded by the limits plus one read, as long as
/// `next_message` is drained after every push. After an error the framing
/// is lost: answer if [`FrameError::status`] says so, then close.
#[derive(Debug, Clone)]
pub struct StreamFramer {
    limits: FramingLimits,
    buffer: Vec<u8>,
    /// Offset up to which the buffer was searched for the end of the head.
    scanned: usize,
    /// Consecutive CRLFs skipped since the last message or ping.
    crlf_run: usize,
    pings: usize,
    failed: Option<FrameError>,
    failed_head: Vec<u8>,
}

impl StreamFramer {
    /// Creates a framer with the given limits.
    pub fn new(limits: FramingLimits) -> StreamFramer {
        StreamFramer {
            limits,
            buffer: Vec::new(),
            scanned: 0,
            crlf_run: 0,
            pings: 0,
            failed: None,
            failed_head: Vec::new(),
        }
    }

    /// Appends received octets.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buffer.extend_from_slice(bytes);
        }
    }

    /// Returns the next complete message (head, empty line and body), or
    /// `None` when more octets are needed.
    pub fn next_message(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        self.skip_keepalives();
        // A lone CR may be the start of a keep-alive CRLF still in flight.
        if self.buffer.is_empty() || self.buffer == b"\r" {
            return Ok(None);
        }
        let Some(end) = find_head_end(&self.buffer, self.scanned.saturating_sub(3)) else {
            // A head of exactly max_header octets is complete only with the
            // 4-octet CRLFCRLF after it: up to 3 more octets may be a
            // terminator still arriving, so they decide nothing yet (the
            // verdict must not depend on how the stream was split).
            if self.buffer.len() > self.limits.max_header + 3 {
                let max = self.limits.max_header;
                return Err(self.fail(max, FrameError::HeaderTooLarge { max }));
            }
            self.scanned = self.buffer.len();
            return Ok(None);
        };
        if end > self.limits.max_header {
            let max = self.limits.max_header;
            return Err(self.fail(max, FrameError::HeaderTooLarge { max }));
        }
        let declared = match content_length(&self.buffer[..end]) {
            Ok(Some(declared)) => declared,
            Ok(None) => return Err(self.fail(end, FrameError::MissingContentLength)),
            Err(error) => return Err(self.fail(end, error)),
        };
        if declared > self.limits.max_body {
            let max = self.limits.max_body;
            return Err(self.fail(end, FrameError::BodyTooLarge { declared, max }));
        }
        let total = end + 4 + declared;
        if self.buffer.len() < total {
            self.scanned = end;
            return Ok(None);
        }
        let rest = self.buffer.split_off(total);
        let message = std::mem::replace(&mut self.buffer, rest);
        self.scanned = 0;
        Ok(Some(message))
    }

    /// Octets held of a message not yet complete (0 between messages, once
    /// [`next_message`](Self::next_message) has returned `Ok(None)`).
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Returns how many double-CRLF pings arrived since the last call.
    pub fn take_pings(&mut self) -> usize {
        std::mem::take(&mut self.pings)
    }

    /// Returns the header section (at most the header limit) of the message
    /// that failed to frame, so an error response can still be built from
    /// it with [`ParseError::from_frame`](super::ParseError::from_frame).
    pub fn failed_head(&self) -> &[u8] {
        &self.failed_head
    }

    fn skip_keepalives(&mut self) {
        if self.scanned > 0 {
            return;
        }
        let mut skipped = 0;
        loop {
            match self.buffer.get(skipped) {
                Some(b'\r') => match self.buffer.get(skipped + 1) {
                    Some(b'\n') => {
                        skipped += 2;
                        self.crlf_run += 1;
                        if self.crlf_run == 2 {
                            self.pings += 1;
                            self.crlf_run = 0;
                        }
                    }
                    // Wait: the LF of this CRLF has not arrived yet.
                    None => break,
                    Some(_) => skipped += 1,
                },
                Some(b'\n') => skipped += 1,
                Some(_) => {
                    self.crlf_run = 0;
                    break;
                }
                None => break,
            }
        }
        self.buffer.drain(..skipped);
    }

    fn fail(&mut self, head_len: usize, error: FrameError) -> FrameError {
        let mut keep = head_len.min(self.limits.max_header).min(self.buffer.len());
        if matches!(error, FrameError::HeaderTooLarge { .. }) {
            // The cut may fall inside a line; a half Via must not be echoed.
            keep = self.buffer[..keep]
                .windows(2)
                .rposition(|w| w == b"\r\n")
                .unwrap_or(0);
        }
        self.failed_head = self.buffer[..keep].to_vec();
        self.buffer = Vec::new();
        self.failed = Some(error.clone());
        error
    }
}

impl Default for StreamFramer {
    fn default() -> Self {
        StreamFramer::new(FramingLimits::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &[u8] = b"OPTIONS sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nl: 5\r\n\r\nhello";

    #[test]
    fn datagram_body_is_bounded_by_content_length() {
        let frame = frame_datagram(b"\r\nX sip:a SIP/2.0\r\nContent-Length: 2\r\n\r\nabTRAILING")
            .expect("frames");
        assert_eq!(frame.head, b"X sip:a SIP/2.0\r\nContent-Length: 2");
        assert_eq!(frame.body, b"ab");
    }

    #[test]
    fn datagram_without_content_length_takes_the_rest() {
        let frame = frame_datagram(b"X sip:a SIP/2.0\r\nVia: x\r\n\r\nbody").expect("frames");
        assert_eq!(frame.body, b"body");
    }

    #[test]
    fn datagram_content_length_errors() {
        assert_eq!(
            frame_datagram(b"X sip:a SIP/2.0\r\nContent-Length: 9\r\n\r\nabc"),
            Err(FrameError::Truncated {
                declared: 9,
                available: 3
            })
        );
        let negative = frame_datagram(b"X sip:a SIP/2.0\r\nContent-Length: -999\r\n\r\n")
            .expect_err("negative length");
        assert_eq!(
            negative,
            FrameError::InvalidContentLength {
                value: "-999".to_owned()
            }
        );
        assert_eq!(negative.status(), Some(400));
        assert_eq!(
            frame_datagram(b"X sip:a SIP/2.0\r\nl: 1x\r\n\r\n"),
            Err(FrameError::InvalidContentLength {
                value: "1x".to_owned()
            })
        );
        assert_eq!(
            frame_datagram(b"X sip:a SIP/2.0\r\nl: 99999999999999999999999\r\n\r\n"),
            Err(FrameError::InvalidContentLength {
                value: "99999999999999999999999".to_owned()
            })
        );
        assert_eq!(
            frame_datagram(b"X sip:a SIP/2.0\r\nContent-Length: 13\r\nl: 5\r\n\r\n0123456789abc"),
            Err(FrameError::ConflictingContentLength)
        );
        assert_eq!(
            frame_datagram(b"X sip:a SIP/2.0\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nab")
                .map(|f| f.body),
            Ok(&b"a"[..])
        );
        assert_eq!(
            frame_datagram(b"X sip:a SIP/2.0\r\nl: 0\r\n"),
            Err(FrameError::UnterminatedHeader)
        );
        assert_eq!(frame_datagram(b"\r\n\r\n"), Err(FrameError::KeepAlive));
    }

    #[test]
    fn folded_content_length_is_read() {
        let frame = frame_datagram(b"X sip:a SIP/2.0\r\nContent-Length   :\r\n 3\r\n\r\nabcdef")
            .expect("folded value");
        assert_eq!(frame.body, b"abc");
    }

    #[test]
    fn datagram_limits_map_to_413_and_513() {
        let limits = FramingLimits {
            max_header: 16,
            max_body: 4,
        };
        let big_head = frame_datagram_with(OPTIONS, limits).expect_err("head over 16");
        assert_eq!(big_head, FrameError::HeaderTooLarge { max: 16 });
        assert_eq!(big_head.status(), Some(513));
        let limits = FramingLimits {
            max_header: 1024,
            max_body: 4,
        };
        let big_body = frame_datagram_with(OPTIONS, limits).expect_err("body over 4");
        assert_eq!(
            big_body,
            FrameError::BodyTooLarge {
                declared: 5,
                max: 4
            }
        );
        assert_eq!(big_body.status(), Some(413));
    }

    #[test]
    fn stream_frames_byte_by_byte_and_skips_keepalives() {
        let mut framer = StreamFramer::default();
        let mut input = b"\r\n\r\n".to_vec();
        input.extend_from_slice(OPTIONS);
        input.extend_from_slice(b"\r\n");
        input.extend_from_slice(OPTIONS);
        let mut messages = Vec::new();
        for byte in &input {
            framer.push(std::slice::from_ref(byte));
            while let Some(message) = framer.next_message().expect("valid stream") {
                messages.push(message);
            }
        }
        assert_eq!(messages, vec![OPTIONS.to_vec(), OPTIONS.to_vec()]);
        assert_eq!(framer.take_pings(), 1);
        assert_eq!(framer.take_pings(), 0);
    }

    #[test]
    fn stream_two_messages_in_one_push() {
        let mut framer = StreamFramer::default();
        framer.push(&[OPTIONS, OPTIONS].concat());
        assert_eq!(framer.next_message(), Ok(Some(OPTIONS.to_vec())));
        assert_eq!(framer.next_message(), Ok(Some(OPTIONS.to_vec())));
        assert_eq!(framer.next_message(), Ok(None));
    }

    #[test]
    fn stream_oversize_head_fails_without_buffering_more() {
        let mut framer = StreamFramer::new(FramingLimits {
            max_header: 40,
            max_body: 1024,
        });
        framer.push(b"OPTIONS sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/TCP x");
        assert_eq!(
            framer.next_message(),
            Err(FrameError::HeaderTooLarge { max: 40 })
        );
        assert_eq!(framer.failed_head(), b"OPTIONS sip:a@example.com SIP/2.0");
        framer.push(&[b'x'; 4096]);
        assert_eq!(
            framer.next_message(),
            Err(FrameError::HeaderTooLarge { max: 40 })
        );
        assert!(framer.buffer.is_empty(), "a failed framer buffers nothing");
    }

    /// Found by fuzzing (sip_framer): the same head was accepted in one
    /// read and refused as too large when its terminator arrived split.
    #[test]
    fn stream_head_at_the_limit_is_accepted_however_its_terminator_is_split() {
        let head_len = OPTIONS.len() - 4 - 5;
        let limits = FramingLimits {
            max_header: head_len,
            max_body: 1024,
        };
        for split in 1..OPTIONS.len() {
            let mut framer = StreamFramer::new(limits);
            framer.push(&OPTIONS[..split]);
            let first = framer.next_message();
            framer.push(&OPTIONS[split..]);
            let messages: Vec<_> = [first, framer.next_message()]
                .into_iter()
                .filter_map(|r| r.unwrap_or_else(|e| panic!("split at {split}: {e}")))
                .collect();
            assert_eq!(messages, vec![OPTIONS.to_vec()], "split at {split}");
        }
        let mut framer = StreamFramer::new(limits);
        framer.push(&OPTIONS[..head_len]);
        framer.push(b"\r\nx");
        assert_eq!(framer.next_message(), Ok(None), "3 octets may still end it");
        framer.push(b"x");
        assert_eq!(
            framer.next_message(),
            Err(FrameError::HeaderTooLarge { max: head_len }),
            "more than 3 octets past the limit without a terminator is too large"
        );
    }

    #[test]
    fn stream_oversize_body_is_413_before_the_body_arrives() {
        let mut framer = StreamFramer::new(FramingLimits {
            max_header: 1024,
            max_body: 4,
        });
        framer.push(&OPTIONS[..OPTIONS.len() - 5]);
        let error = framer.next_message().expect_err("declared 5 > 4");
        assert_eq!(error.status(), Some(413));
        assert!(framer
            .failed_head()
            .starts_with(b"OPTIONS sip:a@example.com"));
    }

    #[test]
    fn stream_requires_valid_content_length() {
        let mut framer = StreamFramer::default();
        framer.push(b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\n");
        assert_eq!(framer.next_message(), Err(FrameError::MissingContentLength));
        let mut framer = StreamFramer::default();
        framer.push(b"OPTIONS sip:a SIP/2.0\r\nContent-Length: -999\r\n\r\n");
        assert_eq!(
            framer.next_message().map_err(|e| e.status()),
            Err(Some(400))
        );
    }

    #[test]
    fn stream_waits_for_the_whole_body() {
        let mut framer = StreamFramer::default();
        framer.push(&OPTIONS[..OPTIONS.len() - 2]);
        assert_eq!(framer.next_message(), Ok(None));
        framer.push(&OPTIONS[OPTIONS.len() - 2..]);
        assert_eq!(framer.next_message(), Ok(Some(OPTIONS.to_vec())));
    }
}
