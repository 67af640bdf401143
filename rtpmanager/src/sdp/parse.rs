//! SDP text to [`SessionDescription`], one line at a time.
//!
//! The body is split into numbered lines here and each line is handed to the
//! matching sdp-rs line type (`o=`, `c=`, `m=`, `a=`, `a=rtpmap`, `a=ptime`).
//! sdp-rs's whole-body parser is not used because it rejects a body without
//! `t=` (which peers do send), reports errors without saying which line, and
//! stops at the first line it cannot place while returning the part it did
//! parse as if it were the whole body. Line by line, every error names its line
//! and nothing is dropped silently.

use std::net::IpAddr;

use sdp_rs::lines::{self, attribute, connection, media, origin};

use super::model::{
    AddrType, Attribute, Connection, Direction, Field, Fmtp, Formats, MediaDescription, MediaKind,
    Origin, PayloadType, Protocol, Rtcp, RtpPort, Rtpmap, SessionDescription,
};
use super::SdpError;

/// Longest line text quoted in an error, so that a hostile body cannot make
/// the gRPC status message arbitrarily large.
const QUOTED_LINE_MAX: usize = 120;

/// Parses an SDP body as received (CRLF or bare LF line ends).
///
/// Tolerated, since real peers send them: a missing `t=` (written back as
/// `t=0 0`), a missing `s=`, blank lines, trailing whitespace, `a=rtpmap` for a
/// payload type the `m=` line does not list, and bodies without audio.
pub fn parse(text: &str) -> Result<SessionDescription, SdpError> {
    let mut lines = text
        .split('\n')
        .enumerate()
        .map(|(index, line)| (index + 1, line.trim_end_matches(['\r', ' ', '\t'])))
        .filter(|(_, line)| !line.is_empty());

    let (first_number, first) = lines.next().ok_or(SdpError::Empty)?;
    match first.strip_prefix("v=") {
        Some("0") => {}
        Some(_) => {
            return Err(line_error(
                first_number,
                first,
                "unsupported SDP version, expected v=0",
            ))
        }
        None => {
            return Err(line_error(
                first_number,
                first,
                "expected v=0 as the first line",
            ))
        }
    }

    let mut builder = Builder::default();
    for (number, line) in lines {
        builder
            .line(line)
            .map_err(|problem| line_error(number, line, &problem))?;
        if line.starts_with("m=") {
            builder.media_lines.push((number, line));
        }
    }
    builder.finish()
}

/// The error for line `number`.
fn line_error(number: usize, line: &str, problem: &str) -> SdpError {
    let text = match line.char_indices().nth(QUOTED_LINE_MAX) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
    };
    SdpError::Line {
        line: number,
        text,
        problem: problem.to_owned(),
    }
}

/// The body read so far.
#[derive(Default)]
struct Builder<'a> {
    origin: Option<Origin>,
    session_name: Option<String>,
    fields: Vec<Field>,
    connection: Option<Connection>,
    attributes: Vec<Attribute>,
    media: Vec<MediaDescription>,
    /// Number and text of every `m=` line, for errors found at the end.
    media_lines: Vec<(usize, &'a str)>,
}

impl Builder<'_> {
    /// Adds one non-blank line after `v=`; the error is the problem text.
    fn line(&mut self, line: &str) -> Result<(), String> {
        let bytes = line.as_bytes();
        let kind = match bytes {
            [kind, b'=', ..] if kind.is_ascii_lowercase() => char::from(*kind),
            _ => return Err("not a `<type>=<value>` line".to_owned()),
        };
        let value = &line[2..];
        match (self.media.last_mut(), kind) {
            (_, 'm') => {
                self.media.push(parse_media(line)?);
                Ok(())
            }
            (_, 'a') => {
                let attribute = parse_attribute(line)?;
                match self.media.last_mut() {
                    Some(media) => media.attributes.push(attribute),
                    None => self.attributes.push(attribute),
                }
                Ok(())
            }
            (Some(media), 'c') => {
                if media.connection.is_some() {
                    return Err(
                        "second c= line in a media section (layered multicast is not supported)"
                            .to_owned(),
                    );
                }
                media.connection = Some(parse_connection(line)?);
                Ok(())
            }
            (Some(media), 'i' | 'b' | 'k') => {
                media.fields.push(field(kind, value));
                Ok(())
            }
            (Some(_), _) => Err(format!("{kind}= line is not allowed in a media section")),
            (None, 'v') => Err("second v= line".to_owned()),
            (None, 'o') => {
                if self.origin.is_some() {
                    return Err("second o= line".to_owned());
                }
                self.origin = Some(parse_origin(line)?);
                Ok(())
            }
            (None, 's') => {
                if self.session_name.is_some() {
                    return Err("second s= line".to_owned());
                }
                self.session_name = Some(value.to_owned());
                Ok(())
            }
            (None, 'c') => {
                if self.connection.is_some() {
                    return Err("second session-level c= line".to_owned());
                }
                self.connection = Some(parse_connection(line)?);
                Ok(())
            }
            (None, 'i' | 'u' | 'e' | 'p' | 'b' | 't' | 'r' | 'z' | 'k') => {
                self.fields.push(field(kind, value));
                Ok(())
            }
            (None, _) => Err(format!("unknown line type {kind}=")),
        }
    }

    fn finish(self) -> Result<SessionDescription, SdpError> {
        let origin = self.origin.ok_or(SdpError::MissingLine { kind: "o=" })?;
        for (media, (number, line)) in self.media.iter().zip(&self.media_lines) {
            if media.is_active() && media.connection.is_none() && self.connection.is_none() {
                return Err(line_error(
                    *number,
                    line,
                    "no c= line in this media section nor at session level",
                ));
            }
        }
        Ok(SessionDescription {
            origin,
            // s= is mandatory but carries nothing the manager needs; `-` is
            // RFC 8866's "no name".
            session_name: self.session_name.unwrap_or_else(|| "-".to_owned()),
            fields: self.fields,
            connection: self.connection,
            attributes: self.attributes,
            media: self.media,
        })
    }
}

fn field(kind: char, value: &str) -> Field {
    Field {
        kind,
        value: value.to_owned(),
    }
}

/// sdp-rs tokenizers consume a line with its end.
fn terminated(line: &str) -> String {
    format!("{line}\r\n")
}

fn parse_origin(line: &str) -> Result<Origin, String> {
    const SHAPE: &str =
        "expected o=<username> <sess-id> <sess-version> IN <addrtype> <unicast-address>";
    let input = terminated(line);
    let (_, tokens) = origin::Tokenizer::tokenize(&input).map_err(|_| SHAPE.to_owned())?;
    if tokens.unicast_address.is_empty() || tokens.unicast_address.contains(' ') {
        return Err(SHAPE.to_owned());
    }
    Ok(Origin {
        username: tokens.username.to_owned(),
        session_id: tokens.sess_id.to_owned(),
        version: tokens.sess_version.to_owned(),
        address_type: address_type(tokens.nettype, tokens.addrtype)?,
        address: tokens.unicast_address.to_owned(),
    })
}

/// Checks `IN <addrtype>`, the only network type SIP uses.
fn address_type(nettype: &str, addrtype: &str) -> Result<AddrType, String> {
    if nettype != "IN" {
        return Err(format!("unknown network type `{nettype}`, expected IN"));
    }
    match addrtype {
        "IP4" => Ok(AddrType::Ip4),
        "IP6" => Ok(AddrType::Ip6),
        other => Err(format!(
            "unknown address type `{other}`, expected IP4 or IP6"
        )),
    }
}

/// Parses an address announced with `addrtype`; host names are refused since
/// media needs an address.
fn address(addrtype: AddrType, text: &str) -> Result<IpAddr, String> {
    let address: IpAddr = text
        .parse()
        .map_err(|_| format!("`{text}` is not an IP address"))?;
    if AddrType::of(address) != addrtype {
        return Err(format!("`{text}` is not an {addrtype} address"));
    }
    Ok(address)
}

fn parse_connection(line: &str) -> Result<Connection, String> {
    let input = terminated(line);
    let (_, tokens) = connection::Tokenizer::tokenize(&input)
        .map_err(|_| "expected c=IN <addrtype> <address>".to_owned())?;
    let addrtype = address_type(tokens.nettype, tokens.addrtype)?;
    let base = tokens.connection_address.base;
    let parsed = lines::Connection::try_from(tokens.clone())
        .map_err(|_| format!("`{base}` is not an IP address"))?;
    let address = parsed.connection_address.base;
    if AddrType::of(address) != addrtype {
        return Err(format!("`{base}` is not an {addrtype} address"));
    }
    Ok(Connection {
        address,
        ttl: parsed.connection_address.ttl,
        address_count: parsed.connection_address.numaddr,
    })
}

fn parse_media(line: &str) -> Result<MediaDescription, String> {
    let input = terminated(line);
    let (_, tokens) = media::Tokenizer::tokenize(&input)
        .map_err(|_| "expected m=<media> <port> <proto> <format> ...".to_owned())?;
    let port_text = tokens.port.port;
    let count_text = tokens.port.num_of_ports;
    let parsed = lines::Media::try_from(tokens.clone()).map_err(|_| {
        if port_text.parse::<u16>().is_err() {
            if !port_text.is_empty() && port_text.bytes().all(|b| b.is_ascii_digit()) {
                format!("port {port_text} out of range 0-65535")
            } else {
                format!("port `{port_text}` is not a number")
            }
        } else {
            format!(
                "port count `{}` is not a number in 1-255",
                count_text.unwrap_or_default()
            )
        }
    })?;
    let protocol = Protocol::from_token(tokens.proto);
    let formats: Vec<&str> = parsed.fmt.split_whitespace().collect();
    if formats.is_empty() {
        return Err("no media formats".to_owned());
    }
    let formats = if protocol.is_rtp() {
        Formats::Rtp(
            formats
                .iter()
                .map(|format| {
                    format
                        .parse()
                        .ok()
                        .and_then(PayloadType::new)
                        .ok_or_else(|| format!("payload type `{format}` is not a number in 0-127"))
                })
                .collect::<Result<_, _>>()?,
        )
    } else {
        Formats::Other(formats.iter().map(|&format| format.to_owned()).collect())
    };
    Ok(MediaDescription {
        kind: match parsed.media {
            media::MediaType::Audio => MediaKind::Audio,
            media::MediaType::Video => MediaKind::Video,
            media::MediaType::Text => MediaKind::Text,
            media::MediaType::Application => MediaKind::Application,
            media::MediaType::Message => MediaKind::Message,
            media::MediaType::Image => MediaKind::Image,
            media::MediaType::Other(other) => MediaKind::Other(other),
        },
        port: RtpPort::new(parsed.port),
        port_count: parsed.num_of_ports,
        protocol,
        formats,
        fields: Vec::new(),
        connection: None,
        attributes: Vec::new(),
    })
}

fn parse_attribute(line: &str) -> Result<Attribute, String> {
    let input = terminated(line);
    let (_, tokens) = attribute::Tokenizer::<'a'>::tokenize(&input)
        .map_err(|_| "expected a=<name>[:<value>]".to_owned())?;
    let (name, value) = (tokens.key, tokens.value);
    if name.is_empty() {
        return Err("attribute has no name".to_owned());
    }
    match (name, value) {
        ("rtpmap", _) => parse_rtpmap(value.unwrap_or_default()).map(Attribute::Rtpmap),
        ("fmtp", _) => parse_fmtp(value.unwrap_or_default()).map(Attribute::Fmtp),
        ("ptime" | "maxptime", _) => parse_packet_time(tokens.clone()),
        ("rtcp", _) => parse_rtcp(value.unwrap_or_default()).map(Attribute::Rtcp),
        ("rtcp-mux", None) => Ok(Attribute::RtcpMux),
        ("sendrecv", None) => Ok(Attribute::Direction(Direction::SendRecv)),
        ("sendonly", None) => Ok(Attribute::Direction(Direction::SendOnly)),
        ("recvonly", None) => Ok(Attribute::Direction(Direction::RecvOnly)),
        ("inactive", None) => Ok(Attribute::Direction(Direction::Inactive)),
        (name, value) => Ok(Attribute::Other {
            name: name.to_owned(),
            value: value.map(str::to_owned),
        }),
    }
}

fn parse_rtpmap(value: &str) -> Result<Rtpmap, String> {
    const SHAPE: &str =
        "malformed rtpmap, expected a=rtpmap:<payload type> <encoding>/<clock rate>[/<channels>]";
    let parsed = attribute::Rtpmap::try_from(value).map_err(|_| SHAPE.to_owned())?;
    let payload_type = u8::try_from(parsed.payload_type)
        .ok()
        .and_then(PayloadType::new)
        .ok_or_else(|| {
            format!(
                "rtpmap payload type {} is not in 0-127",
                parsed.payload_type
            )
        })?;
    if parsed.encoding_name.is_empty() || parsed.encoding_name.contains(char::is_whitespace) {
        return Err(SHAPE.to_owned());
    }
    let clock_rate = u32::try_from(parsed.clock_rate)
        .ok()
        .filter(|&rate| rate > 0)
        .ok_or_else(|| format!("rtpmap clock rate {} is not positive", parsed.clock_rate))?;
    let channels = parsed
        .encoding_params
        .map(|channels| {
            u8::try_from(channels)
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("rtpmap channel count {channels} is not in 1-255"))
        })
        .transpose()?;
    Ok(Rtpmap {
        payload_type,
        encoding: parsed.encoding_name,
        clock_rate,
        channels,
    })
}

fn parse_fmtp(value: &str) -> Result<Fmtp, String> {
    let (format, params) = value.split_once(' ').unwrap_or((value, ""));
    if format.is_empty() {
        return Err("malformed fmtp, expected a=fmtp:<format> <parameters>".to_owned());
    }
    Ok(Fmtp {
        format: format.to_owned(),
        params: params.trim_start().to_owned(),
    })
}

/// `a=ptime` and `a=maxptime`: whole milliseconds are typed; a fractional
/// value, legal but never used for audio over SIP, is kept verbatim.
fn parse_packet_time(tokens: attribute::Tokenizer<'_, 'a'>) -> Result<Attribute, String> {
    let name = tokens.key;
    let value = tokens.value.unwrap_or_default();
    let problem = || format!("{name} `{value}` is not a positive number of milliseconds");
    let millis = match lines::Attribute::try_from(tokens.clone()).map_err(|_| problem())? {
        lines::Attribute::Ptime(ms) | lines::Attribute::Maxptime(ms) => ms,
        _ => return Err(problem()),
    };
    if !millis.is_finite() || millis <= 0.0 {
        return Err(problem());
    }
    match value.parse::<u32>() {
        Ok(ms) if name == "ptime" => Ok(Attribute::Ptime(ms)),
        Ok(ms) => Ok(Attribute::Maxptime(ms)),
        Err(_) => Ok(Attribute::Other {
            name: name.to_owned(),
            value: Some(value.to_owned()),
        }),
    }
}

fn parse_rtcp(value: &str) -> Result<Rtcp, String> {
    const SHAPE: &str = "malformed rtcp, expected a=rtcp:<port>[ IN <addrtype> <address>]";
    let parts: Vec<&str> = value.split_whitespace().collect();
    let (port, address) = match parts.as_slice() {
        [port] => (port, None),
        [port, nettype, addrtype, text] => {
            let addrtype = address_type(nettype, addrtype)?;
            (port, Some(address(addrtype, text)?))
        }
        _ => return Err(SHAPE.to_owned()),
    };
    let port = port
        .parse()
        .map_err(|_| format!("rtcp port `{port}` is not a number in 0-65535"))?;
    Ok(Rtcp {
        port: RtpPort::new(port),
        address,
    })
}
