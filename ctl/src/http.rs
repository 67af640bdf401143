//! Just enough HTTP/1.1 for a CLI talking to one REST API: one request per
//! connection (`Connection: close`), a body read to its end (length,
//! chunked or close-delimited). Blocking and dependency-free: the CLI makes
//! one or two requests and exits.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Where the API is: `http://host:port` (plain HTTP; put a TLS proxy's
/// local end here when the API is behind one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// `host:port` as written (for the Host header).
    authority: String,
    /// A path prefix without the trailing slash ("" or "/switchboard").
    prefix: String,
}

/// Why a request failed before an HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("`{0}` is not an http:// URL (host:port, optional path)")]
    Url(String),
    #[error("cannot reach {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error("{authority}: {source}")]
    Io {
        authority: String,
        source: std::io::Error,
    },
    #[error("{authority}: not an HTTP answer: {detail}")]
    Protocol { authority: String, detail: String },
}

impl BaseUrl {
    pub fn parse(url: &str) -> Result<BaseUrl, HttpError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| HttpError::Url(url.to_owned()))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() || authority.contains('@') {
            return Err(HttpError::Url(url.to_owned()));
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_owned()
        } else if authority.contains(']') || !authority.contains(':') {
            format!("{authority}:80")
        } else {
            return Err(HttpError::Url(url.to_owned()));
        };
        let path = path.trim_end_matches('/');
        Ok(BaseUrl {
            authority,
            prefix: if path.is_empty() {
                String::new()
            } else {
                format!("/{path}")
            },
        })
    }
}

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Sends one request and reads the whole answer.
pub fn request(
    base: &BaseUrl,
    method: &str,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Answer, HttpError> {
    let io = |source| HttpError::Io {
        authority: base.authority.clone(),
        source,
    };
    let connect = |source| HttpError::Connect {
        authority: base.authority.clone(),
        source,
    };
    let address = base
        .authority
        .to_socket_addrs()
        .map_err(connect)?
        .next()
        .ok_or_else(|| connect(std::io::ErrorKind::NotFound.into()))?;
    let mut stream = TcpStream::connect_timeout(&address, timeout).map_err(connect)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut head = format!(
        "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nConnection: close\r\nContent-Length: 0\r\n",
        base.prefix, base.authority
    );
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).map_err(io)?;
    read_answer(BufReader::new(stream)).map_err(|e| match e {
        ReadError::Io(source) => io(source),
        ReadError::Protocol(detail) => HttpError::Protocol {
            authority: base.authority.clone(),
            detail,
        },
    })
}

enum ReadError {
    Io(std::io::Error),
    Protocol(String),
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        ReadError::Io(e)
    }
}

fn read_answer(mut reader: impl BufRead) -> Result<Answer, ReadError> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| ReadError::Protocol(format!("status line {:?}", line.trim_end())))?;
    let mut length = None;
    let mut chunked = false;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(ReadError::Protocol("headers cut short".to_owned()));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size = line.trim_end().split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| ReadError::Protocol(format!("chunk size {size:?}")))?;
            if size == 0 {
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..])?;
            line.clear();
            reader.read_line(&mut line)?;
        }
    } else if let Some(length) = length {
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    } else {
        reader.read_to_end(&mut body)?;
    }
    Ok(Answer { status, body })
}

/// `text` as one path segment: everything but unreserved characters
/// percent-encoded (an AOR holds `:` and `@`).
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_keeps_its_port_and_prefix() {
        assert_eq!(
            BaseUrl::parse("http://10.0.0.1:8080/sb/").expect("url"),
            BaseUrl {
                authority: "10.0.0.1:8080".to_owned(),
                prefix: "/sb".to_owned()
            }
        );
        assert_eq!(
            BaseUrl::parse("http://localhost").expect("url").authority,
            "localhost:80"
        );
        assert!(BaseUrl::parse("https://x:1").is_err());
        assert!(BaseUrl::parse("http://user@x:1").is_err());
    }

    #[test]
    fn chunked_and_sized_bodies_are_read_whole() {
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
        let answer = read_answer(&chunked[..]).ok().expect("answer");
        assert_eq!((answer.status, answer.body), (200, b"{\"a\":1}".to_vec()));
        let sized = b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}trailing";
        let answer = read_answer(&sized[..]).ok().expect("answer");
        assert_eq!((answer.status, answer.body), (404, b"{}".to_vec()));
    }

    #[test]
    fn an_aor_is_one_path_segment() {
        assert_eq!(segment("sip:1001@example.com"), "sip%3A1001%40example.com");
    }
}
