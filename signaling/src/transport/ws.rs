//! SIP over WebSocket (RFC 7118), the server side, without I/O: the
//! opening handshake (RFC 6455 §4.2, the `sip` subprotocol required) and
//! the frames. Each SIP message is one WebSocket message (text or binary,
//! possibly fragmented), whatever its Content-Length says (§5.1). Frames
//! from the client must be masked; pings are answered with pongs; a close
//! is echoed and ends the connection. A message over the size limit, an
//! unmasked or malformed frame closes the connection with the status RFC
//! 6455 names (1009, 1002).

use base64::Engine;

/// The GUID of RFC 6455 §1.3, hashed with the client's key.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Longest handshake request read before giving up on it.
const MAX_HANDSHAKE: usize = 8 * 1024;

/// Why a WebSocket connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// The opening handshake is not a WebSocket upgrade for `sip`.
    #[error("bad WebSocket handshake: {0}")]
    Handshake(&'static str),
    /// A frame breaks RFC 6455.
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
    /// A message is larger than the limit.
    #[error("WebSocket message over {0} octets")]
    TooBig(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Handshake,
    Open,
    Closed,
}

/// The WebSocket framing of one server-side connection.
#[derive(Debug)]
pub struct WsFramer {
    state: State,
    /// Octets not yet taken (handshake or frames).
    buffer: Vec<u8>,
    /// A fragmented message being assembled.
    fragments: Vec<u8>,
    in_message: bool,
    /// Largest message accepted.
    max_message: usize,
    /// What must be written back (the handshake answer, pongs, a close).
    replies: Vec<Vec<u8>>,
}

impl WsFramer {
    /// A new connection awaiting its handshake; messages over
    /// `max_message` octets close it.
    pub fn new(max_message: usize) -> WsFramer {
        WsFramer {
            state: State::Handshake,
            buffer: Vec::new(),
            fragments: Vec::new(),
            in_message: false,
            max_message,
            replies: Vec::new(),
        }
    }

    /// Octets read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.state != State::Closed {
            self.buffer.extend_from_slice(bytes);
        }
    }

    /// Octets held for an incomplete handshake, frame or message.
    pub fn buffered(&self) -> usize {
        self.buffer.len() + self.fragments.len()
    }

    /// Whether the peer closed (its close echoed in the replies).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// What must be written back, in order.
    pub fn take_replies(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.replies)
    }

    /// The next complete SIP message, if any. On an error the replies
    /// hold what to send before closing (a 400 to a bad handshake, a
    /// close frame otherwise).
    pub fn next_message(&mut self) -> Result<Option<Vec<u8>>, WsError> {
        loop {
            match self.state {
                State::Closed => return Ok(None),
                State::Handshake => {
                    if !self.handshake()? {
                        return Ok(None);
                    }
                }
                State::Open => return self.frames(),
            }
        }
    }

    /// Answers the handshake once it is complete; `false` while it is not.
    fn handshake(&mut self) -> Result<bool, WsError> {
        let Some(end) = find(&self.buffer, b"\r\n\r\n") else {
            if self.buffer.len() > MAX_HANDSHAKE {
                return Err(self.refuse("400 Bad Request", "handshake too long"));
            }
            return Ok(false);
        };
        let head = String::from_utf8_lossy(&self.buffer[..end]).into_owned();
        self.buffer.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let request = lines.next().unwrap_or_default();
        let mut parts = request.split_whitespace();
        if parts.next() != Some("GET") || !parts.nth(1).is_some_and(|v| v.starts_with("HTTP/1.1")) {
            return Err(self.refuse("400 Bad Request", "not an HTTP/1.1 GET"));
        }
        let header = |name: &str| {
            head.split("\r\n").skip(1).find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_owned())
            })
        };
        let has_token = |name: &str, token: &str| {
            header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        };
        if !has_token("Upgrade", "websocket") || !has_token("Connection", "upgrade") {
            return Err(self.refuse("400 Bad Request", "not a WebSocket upgrade"));
        }
        if header("Sec-WebSocket-Version").as_deref() != Some("13") {
            self.replies.push(
                b"HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n".to_vec(),
            );
            self.state = State::Closed;
            return Err(WsError::Handshake("WebSocket version is not 13"));
        }
        let Some(key) = header("Sec-WebSocket-Key").filter(|k| !k.is_empty()) else {
            return Err(self.refuse("400 Bad Request", "no Sec-WebSocket-Key"));
        };
        // RFC 7118 §4: the client offers `sip`, the server must pick it.
        if !has_token("Sec-WebSocket-Protocol", "sip") {
            return Err(self.refuse("400 Bad Request", "the sip subprotocol is not offered"));
        }
        self.replies.push(
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: sip\r\n\r\n",
                accept_key(&key)
            )
            .into_bytes(),
        );
        self.state = State::Open;
        Ok(true)
    }

    fn refuse(&mut self, status: &str, why: &'static str) -> WsError {
        self.replies.push(
            format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
                .into_bytes(),
        );
        self.state = State::Closed;
        WsError::Handshake(why)
    }

    fn fail(&mut self, code: u16, error: WsError) -> WsError {
        self.replies.push(frame(0x8, &code.to_be_bytes()));
        self.state = State::Closed;
        self.buffer.clear();
        self.fragments.clear();
        error
    }

    /// Takes whole frames; returns a message once one is complete.
    fn frames(&mut self) -> Result<Option<Vec<u8>>, WsError> {
        loop {
            let Some(header) = parse_header(&self.buffer) else {
                return Ok(None);
            };
            let header = header.map_err(|why| self.fail(1002, WsError::Protocol(why)))?;
            if header.length > self.max_message as u64
                || self.fragments.len() as u64 + header.length > self.max_message as u64
            {
                let limit = self.max_message;
                return Err(self.fail(1009, WsError::TooBig(limit)));
            }
            let total = header.size + header.length as usize;
            if self.buffer.len() < total {
                return Ok(None);
            }
            let mut payload: Vec<u8> = self.buffer[header.size..total].to_vec();
            self.buffer.drain(..total);
            if let Some(mask) = header.mask {
                for (i, byte) in payload.iter_mut().enumerate() {
                    *byte ^= mask[i % 4];
                }
            } else {
                return Err(self.fail(1002, WsError::Protocol("unmasked client frame")));
            }
            match header.opcode {
                0x9 => self.replies.push(frame(0xA, &payload)),
                0xA => {}
                0x8 => {
                    // Echo the status code, then nothing more is read.
                    self.replies
                        .push(frame(0x8, payload.get(..2).unwrap_or_default()));
                    self.state = State::Closed;
                    return Ok(None);
                }
                0x1 | 0x2 if !self.in_message => {
                    if header.fin {
                        return Ok(Some(payload));
                    }
                    self.in_message = true;
                    self.fragments = payload;
                }
                0x0 if self.in_message => {
                    self.fragments.extend_from_slice(&payload);
                    if header.fin {
                        self.in_message = false;
                        return Ok(Some(std::mem::take(&mut self.fragments)));
                    }
                }
                _ => {
                    return Err(self.fail(1002, WsError::Protocol("unexpected opcode")));
                }
            }
        }
    }
}

struct Header {
    fin: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    length: u64,
    /// Octets of the header itself.
    size: usize,
}

/// The frame header at the start of `bytes`: `None` until it is all
/// there, `Some(Err)` when it breaks the protocol.
fn parse_header(bytes: &[u8]) -> Option<Result<Header, &'static str>> {
    let [first, second, ..] = *bytes else {
        return None;
    };
    if first & 0x70 != 0 {
        return Some(Err("reserved bits set"));
    }
    let opcode = first & 0x0f;
    let fin = first & 0x80 != 0;
    let masked = second & 0x80 != 0;
    let (length, mut size) = match second & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => (u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?), 10),
        short => (u64::from(short), 2),
    };
    if opcode >= 0x8 && (!fin || length > 125) {
        return Some(Err("fragmented or long control frame"));
    }
    let mask = if masked {
        let mask: [u8; 4] = bytes.get(size..size + 4)?.try_into().ok()?;
        size += 4;
        Some(mask)
    } else {
        None
    };
    Some(Ok(Header {
        fin,
        opcode,
        mask,
        length,
        size,
    }))
}

/// A server frame (unmasked, final) with `opcode` and `payload`.
pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x80 | opcode);
    match payload.len() {
        len @ 0..=125 => out.push(len as u8),
        len @ 126..=0xffff => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// A SIP message as a server's WebSocket text frame.
pub fn message_frame(message: &[u8]) -> Vec<u8> {
    frame(0x1, message)
}

/// `Sec-WebSocket-Accept` for a client's key (RFC 6455 §4.2.2).
fn accept_key(key: &str) -> String {
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha1.digest().bytes())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "GET / HTTP/1.1\r\nHost: sip.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: sip\r\nSec-WebSocket-Version: 13\r\n\r\n";

    /// A client frame, masked as clients must.
    fn client(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            len @ 0..=125 => out.push(0x80 | len as u8),
            len => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn open() -> WsFramer {
        let mut ws = WsFramer::new(65_535);
        ws.push(UPGRADE.as_bytes());
        assert_eq!(ws.next_message(), Ok(None));
        ws
    }

    #[test]
    fn the_handshake_is_answered_with_rfc_6455s_accept_key_and_the_sip_subprotocol() {
        let mut ws = open();
        let replies = ws.take_replies();
        let answer = String::from_utf8(replies[0].clone()).expect("text");
        assert!(
            answer.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{answer}"
        );
        // RFC 6455 §1.3's example key and accept value.
        assert!(
            answer.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
            "{answer}"
        );
        assert!(
            answer.contains("Sec-WebSocket-Protocol: sip\r\n"),
            "{answer}"
        );
    }

    #[test]
    fn a_handshake_without_sip_or_the_right_version_is_refused() {
        let mut ws = WsFramer::new(1000);
        ws.push(
            UPGRADE
                .replace("Sec-WebSocket-Protocol: sip\r\n", "")
                .as_bytes(),
        );
        assert!(matches!(ws.next_message(), Err(WsError::Handshake(_))));
        assert!(ws.take_replies()[0].starts_with(b"HTTP/1.1 400"));
        let mut ws = WsFramer::new(1000);
        ws.push(UPGRADE.replace("Version: 13", "Version: 8").as_bytes());
        assert!(ws.next_message().is_err());
        assert!(ws.take_replies()[0].starts_with(b"HTTP/1.1 426"));
    }

    #[test]
    fn messages_come_whole_from_split_and_fragmented_frames_and_pings_get_pongs() {
        let mut ws = open();
        ws.take_replies();
        let message = b"OPTIONS sip:a@b SIP/2.0\r\n\r\n";
        let whole = client(0x1, true, message);
        // Split across reads: nothing until the frame is complete.
        ws.push(&whole[..5]);
        assert_eq!(ws.next_message(), Ok(None));
        ws.push(&whole[5..]);
        assert_eq!(ws.next_message(), Ok(Some(message.to_vec())));
        // Two fragments with a ping between them.
        ws.push(&client(0x1, false, &message[..10]));
        ws.push(&client(0x9, true, b"hi"));
        ws.push(&client(0x0, true, &message[10..]));
        assert_eq!(ws.next_message(), Ok(Some(message.to_vec())));
        assert_eq!(ws.take_replies(), vec![frame(0xA, b"hi")]);
        assert_eq!(ws.buffered(), 0);
        // A close is echoed and ends it.
        ws.push(&client(0x8, true, &1000u16.to_be_bytes()));
        assert_eq!(ws.next_message(), Ok(None));
        assert!(ws.is_closed());
        assert_eq!(ws.take_replies(), vec![frame(0x8, &1000u16.to_be_bytes())]);
    }

    #[test]
    fn oversized_unmasked_and_malformed_frames_close_with_their_status() {
        let mut ws = open();
        ws.take_replies();
        ws.max_message = 100;
        ws.push(&client(0x1, true, &[b'x'; 200]));
        assert_eq!(ws.next_message(), Err(WsError::TooBig(100)));
        assert_eq!(ws.take_replies(), vec![frame(0x8, &1009u16.to_be_bytes())]);

        let mut ws = open();
        ws.take_replies();
        ws.push(&frame(0x1, b"unmasked"));
        assert!(matches!(ws.next_message(), Err(WsError::Protocol(_))));
        assert_eq!(ws.take_replies(), vec![frame(0x8, &1002u16.to_be_bytes())]);

        let mut ws = open();
        ws.take_replies();
        ws.push(&client(0x0, true, b"continuation of nothing"));
        assert!(ws.next_message().is_err());
    }

    #[test]
    fn server_frames_use_the_short_and_16_bit_lengths() {
        assert_eq!(message_frame(b"abc"), vec![0x81, 3, b'a', b'b', b'c']);
        let long = message_frame(&[0u8; 300]);
        assert_eq!(&long[..4], &[0x81, 126, 1, 44]);
        assert_eq!(long.len(), 304);
    }
}
