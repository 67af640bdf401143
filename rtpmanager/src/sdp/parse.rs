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
    MediaPort, Origin, PayloadType, Protocol, Rtcp, Rtpmap, SessionDescription,
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
        port: MediaPort::new(parsed.port),
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
    // White space (and CR) before an empty value would end the line once
    // written back, where it is trimmed like any line end: no part of the name.
    let (name, value) = (tokens.key.trim_end_matches(['\r', ' ', '\t']), tokens.value);
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
        port: MediaPort::new(port),
        address,
    })
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::super::model::Codec;
    use super::super::test_support::{body, parsed};
    use super::*;

    /// What a WebRTC-ish softphone sends: Opus with channels, fmtp, DTMF,
    /// RTCP attributes, attributes the manager does not know, and video.
    const RICH_OFFER: &[&str] = &[
        "v=0",
        "o=alice 2890844526 2890844527 IN IP4 198.51.100.7",
        "s=Talk",
        "i=A call",
        "c=IN IP4 198.51.100.7",
        "b=AS:256",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=sendrecv",
        "m=audio 49170 RTP/AVP 111 0 8 101",
        "i=voice",
        "c=IN IP4 198.51.100.7",
        "b=TIAS:64000",
        "a=rtpmap:111 opus/48000/2",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=ptime:20",
        "a=maxptime:120",
        "a=rtcp:49171 IN IP4 198.51.100.7",
        "a=rtcp-mux",
        "a=rtcp-fb:111 transport-cc",
        "a=ssrc:3735928559 cname:x/y",
        "a=fingerprint:sha-256 AB:CD:EF",
        "a=x-unknown",
        "a=sendonly",
        "m=video 51372 RTP/AVP 96",
        "a=rtpmap:96 H264/90000",
        "a=inactive",
    ];

    fn expect_line_error(text: &str, line: usize, quoted: &str, problem: &str) {
        assert_eq!(
            parse(text),
            Err(SdpError::Line {
                line,
                text: quoted.to_owned(),
                problem: problem.to_owned(),
            }),
            "parsing {text:?}"
        );
    }

    #[test]
    fn unmodified_body_round_trips_line_for_line() {
        let text = body(RICH_OFFER);
        let sdp = parse(&text).expect("rich offer parses");
        assert_eq!(sdp.to_string(), text);
    }

    #[test]
    fn opus_channels_survive_where_sdp_rs_alone_would_lose_the_slash() {
        let rtpmap = sdp_rs::lines::attribute::Rtpmap::try_from("111 opus/48000/2")
            .expect("sdp-rs reads the rtpmap");
        assert_eq!(
            rtpmap.to_string(),
            "111 opus/48000 2",
            "sdp-rs no longer loses the channel slash; the own serializer may be reconsidered"
        );
        let sdp = parsed(RICH_OFFER);
        assert_eq!(
            sdp.media[0].rtpmap(PayloadType::new(111).expect("111 is a payload type")),
            Some(&Rtpmap {
                payload_type: PayloadType::new(111).expect("111 is a payload type"),
                encoding: "opus".to_owned(),
                clock_rate: 48000,
                channels: Some(2),
            })
        );
        assert!(sdp
            .to_string()
            .contains("\r\na=rtpmap:111 opus/48000/2\r\n"));
    }

    #[test]
    fn model_holds_the_typed_attributes() {
        let sdp = parsed(RICH_OFFER);
        assert_eq!(sdp.origin.username, "alice");
        assert_eq!(sdp.origin.session_id, "2890844526");
        assert_eq!(sdp.origin.version, "2890844527");
        assert_eq!(sdp.origin.address_type, AddrType::Ip4);
        assert_eq!(sdp.origin.address, "198.51.100.7");
        assert_eq!(sdp.session_name, "Talk");
        assert_eq!(sdp.direction(), Some(Direction::SendRecv));
        let audio = &sdp.media[0];
        assert_eq!(audio.kind, MediaKind::Audio);
        assert_eq!(audio.port, MediaPort::new(49170));
        assert_eq!(audio.protocol, Protocol::RtpAvp);
        let pts: Vec<u8> = audio.payload_types().iter().map(|pt| pt.get()).collect();
        assert_eq!(pts, [111, 0, 8, 101]);
        assert_eq!(audio.ptime(), Some(20));
        assert!(audio.attributes.contains(&Attribute::Maxptime(120)));
        assert_eq!(
            audio.rtcp(),
            Some(Rtcp {
                port: MediaPort::new(49171),
                address: Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7))),
            })
        );
        assert!(audio.rtcp_mux());
        assert_eq!(audio.direction(), Some(Direction::SendOnly));
        assert_eq!(sdp.media_direction(0), Direction::SendOnly);
        assert_eq!(sdp.media_direction(1), Direction::Inactive);
        assert_eq!(
            audio.fmtp(PayloadType::new(101).expect("101 is a payload type")),
            Some(&Fmtp {
                format: "101".to_owned(),
                params: "0-16".to_owned(),
            })
        );
        assert!(audio.attributes.contains(&Attribute::Other {
            name: "fingerprint".to_owned(),
            value: Some("sha-256 AB:CD:EF".to_owned()),
        }));
    }

    #[test]
    fn static_payload_types_resolve_without_rtpmap() {
        let sdp = parsed(&[
            "v=0",
            "o=- 1 1 IN IP4 192.0.2.1",
            "s=-",
            "c=IN IP4 192.0.2.1",
            "t=0 0",
            "m=audio 4000 RTP/AVP 0 8 3 9 18 13",
        ]);
        let codecs: Vec<String> = sdp.media[0].codecs().iter().map(Codec::to_string).collect();
        assert_eq!(
            codecs,
            [
                "PCMU/8000",
                "PCMA/8000",
                "GSM/8000",
                "G722/8000",
                "G729/8000",
                "CN/8000"
            ]
        );
        assert_eq!(
            sdp.media[0].codec(PayloadType::PCMA),
            Some(Codec {
                payload_type: PayloadType::PCMA,
                encoding: "PCMA".to_owned(),
                clock_rate: 8000,
                channels: None,
            })
        );
    }

    #[test]
    fn dynamic_payload_type_without_rtpmap_is_kept_but_unresolved() {
        let sdp = parsed(&[
            "v=0",
            "o=- 1 1 IN IP4 192.0.2.1",
            "s=-",
            "c=IN IP4 192.0.2.1",
            "t=0 0",
            "m=audio 4000 RTP/AVP 96 0",
            "a=rtpmap:97 iLBC/8000",
        ]);
        let pts: Vec<u8> = sdp.media[0]
            .payload_types()
            .iter()
            .map(|pt| pt.get())
            .collect();
        assert_eq!(pts, [96, 0], "the stray rtpmap for 97 is tolerated");
        let codecs: Vec<String> = sdp.media[0].codecs().iter().map(Codec::to_string).collect();
        assert_eq!(codecs, ["PCMU/8000"]);
    }

    #[test]
    fn missing_t_line_is_accepted_and_written_back() {
        let sdp = parsed(&[
            "v=0",
            "o=- 1 1 IN IP4 192.0.2.1",
            "s=-",
            "c=IN IP4 192.0.2.1",
            "m=audio 4000 RTP/AVP 0",
        ]);
        assert_eq!(
            sdp.to_string(),
            body(&[
                "v=0",
                "o=- 1 1 IN IP4 192.0.2.1",
                "s=-",
                "c=IN IP4 192.0.2.1",
                "t=0 0",
                "m=audio 4000 RTP/AVP 0",
            ])
        );
    }

    #[test]
    fn bare_lf_blank_lines_and_trailing_blanks_become_crlf() {
        let text = "v=0\no=- 1 1 IN IP4 192.0.2.1 \ns=-\n\nc=IN IP4 192.0.2.1\nt=0 0\nm=audio 4000 RTP/AVP 8\n\n";
        let sdp = parse(text).expect("LF body parses");
        assert_eq!(
            sdp.to_string(),
            body(&[
                "v=0",
                "o=- 1 1 IN IP4 192.0.2.1",
                "s=-",
                "c=IN IP4 192.0.2.1",
                "t=0 0",
                "m=audio 4000 RTP/AVP 8",
            ])
        );
    }

    #[test]
    fn ipv6_connection_and_rtcp_are_read() {
        let sdp = parsed(&[
            "v=0",
            "o=- 1 1 IN IP6 2001:db8::1",
            "s=-",
            "t=0 0",
            "m=audio 4000 RTP/AVP 0",
            "c=IN IP6 2001:db8::1",
            "a=rtcp:4005 IN IP6 2001:db8::2",
        ]);
        let v6 = |last| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last));
        assert_eq!(sdp.origin.address_type, AddrType::Ip6);
        assert_eq!(sdp.media_connection(0), Some(Connection::new(v6(1))));
        assert_eq!(
            sdp.media[0].rtcp(),
            Some(Rtcp {
                port: MediaPort::new(4005),
                address: Some(v6(2)),
            })
        );
    }

    #[test]
    fn body_without_audio_is_not_an_error() {
        let sdp = parsed(&[
            "v=0",
            "o=- 1 1 IN IP4 192.0.2.1",
            "s=-",
            "c=IN IP4 192.0.2.1",
            "t=0 0",
            "m=image 5000 udptl t38",
            "m=video 0 RTP/AVP 31",
        ]);
        assert_eq!(sdp.media[0].kind, MediaKind::Image);
        assert_eq!(sdp.media[0].formats, Formats::Other(vec!["t38".to_owned()]));
        assert!(sdp.media[0].payload_types().is_empty());
        assert!(!sdp.media[1].is_active());
    }

    #[test]
    fn fractional_ptime_is_kept_verbatim() {
        let sdp = parsed(&[
            "v=0",
            "o=- 1 1 IN IP4 192.0.2.1",
            "s=-",
            "c=IN IP4 192.0.2.1",
            "t=0 0",
            "m=audio 4000 RTP/AVP 0",
            "a=ptime:2.5",
        ]);
        assert_eq!(sdp.media[0].ptime(), None);
        assert!(sdp.to_string().ends_with("a=ptime:2.5\r\n"));
    }

    #[test]
    fn host_name_in_origin_is_accepted() {
        let sdp = parsed(&[
            "v=0",
            "o=- 0 0 IN IP4 pbx.example.com",
            "s=-",
            "c=IN IP4 192.0.2.1",
            "m=audio 4000 RTP/AVP 0",
        ]);
        assert_eq!(sdp.origin.address, "pbx.example.com");
    }

    #[test]
    fn empty_body_is_refused() {
        assert_eq!(parse(""), Err(SdpError::Empty));
        assert_eq!(parse("\r\n\r\n"), Err(SdpError::Empty));
    }

    #[test]
    fn missing_v_line_names_the_first_line() {
        expect_line_error(
            "o=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\n",
            1,
            "o=- 1 1 IN IP4 192.0.2.1",
            "expected v=0 as the first line",
        );
    }

    #[test]
    fn error_message_names_line_and_problem() {
        let error = parse("v=1\r\n").expect_err("v=1 is refused");
        assert_eq!(
            error.to_string(),
            "SDP line 1 `v=1`: unsupported SDP version, expected v=0"
        );
    }

    #[test]
    fn missing_origin_is_refused() {
        assert_eq!(
            parse("v=0\r\ns=-\r\nt=0 0\r\n"),
            Err(SdpError::MissingLine { kind: "o=" })
        );
    }

    /// A valid head, so that each malformed case below is about one line.
    /// Found by fuzzing (sdp_parse): a count after an empty TTL was
    /// written back as `addr/count`, which reads as a TTL.
    #[test]
    fn an_address_count_after_an_empty_ttl_is_written_back_as_a_count() {
        let sdp = parse(&format!("{HEAD}c=IN IP4 233.252.0.1//3\r\n")).expect("parses");
        let connection = sdp.connection.expect("c= line");
        assert_eq!((connection.ttl, connection.address_count), (None, Some(3)));
        let again = parse(&sdp.to_string()).expect("written back, parses");
        assert_eq!(again.connection, sdp.connection);
    }

    /// Found by fuzzing (sdp_parse): the name kept the tabs before an empty
    /// value, and the body written back parsed to another name.
    #[test]
    fn an_attribute_name_ends_before_white_space_and_an_empty_value() {
        let sdp = parse(&format!("{HEAD}a=x-foo\t\r\t:\t\t\r\n")).expect("parses");
        assert_eq!(
            sdp.attributes,
            vec![Attribute::Other {
                name: "x-foo".to_owned(),
                value: None
            }]
        );
        let again = parse(&sdp.to_string()).expect("written back, parses");
        assert_eq!(again.attributes, sdp.attributes);
    }

    const HEAD: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n";

    #[test]
    fn malformed_lines_are_named() {
        let cases: &[(&str, &str)] = &[
            ("m=audio RTP/AVP 0", "expected m=<media> <port> <proto> <format> ..."),
            ("m=audio x4000 RTP/AVP 0", "port `x4000` is not a number"),
            ("m=audio 4000 RTP/AVP", "expected m=<media> <port> <proto> <format> ..."),
            ("m=audio 70000 RTP/AVP 0", "port 70000 out of range 0-65535"),
            ("m=audio 4000 RTP/AVP 0 200", "payload type `200` is not a number in 0-127"),
            ("m=audio 4000/x RTP/AVP 0", "port count `x` is not a number in 1-255"),
            ("c=IN IP5 192.0.2.1", "unknown address type `IP5`, expected IP4 or IP6"),
            ("c=ATM NSAP 47.0091", "unknown network type `ATM`, expected IN"),
            ("c=IN IP4 2001:db8::1", "`2001:db8::1` is not an IP4 address"),
            ("c=IN IP4 pbx.example.com", "`pbx.example.com` is not an IP address"),
            ("c=IN IP4", "expected c=IN <addrtype> <address>"),
            (
                "a=rtpmap:101 telephone-event",
                "malformed rtpmap, expected a=rtpmap:<payload type> <encoding>/<clock rate>[/<channels>]",
            ),
            ("a=rtpmap:300 PCMU/8000", "rtpmap payload type 300 is not in 0-127"),
            ("a=rtpmap:0 PCMU/-8000", "rtpmap clock rate -8000 is not positive"),
            ("a=rtpmap:111 opus/48000/0", "rtpmap channel count 0 is not in 1-255"),
            ("a=ptime:abc", "ptime `abc` is not a positive number of milliseconds"),
            ("a=ptime:0", "ptime `0` is not a positive number of milliseconds"),
            ("a=rtcp:port", "rtcp port `port` is not a number in 0-65535"),
            (
                "a=rtcp:4001 IN IP4",
                "malformed rtcp, expected a=rtcp:<port>[ IN <addrtype> <address>]",
            ),
            ("a=:x", "attribute has no name"),
            ("hello", "not a `<type>=<value>` line"),
            ("x=1", "unknown line type x="),
        ];
        for (line, problem) in cases {
            // Line 5 sits right after the four head lines, at session level
            // for a=/c= lines, which take the same parser as media level.
            expect_line_error(&format!("{HEAD}{line}\r\n"), 5, line, problem);
        }
    }

    #[test]
    fn malformed_media_section_lines_are_named() {
        let media = "m=audio 4000 RTP/AVP 0\r\n";
        expect_line_error(
            &format!("{HEAD}{media}t=0 0\r\n"),
            6,
            "t=0 0",
            "t= line is not allowed in a media section",
        );
        expect_line_error(
            &format!("{HEAD}{media}c=IN IP4 192.0.2.2\r\nc=IN IP4 192.0.2.3\r\n"),
            7,
            "c=IN IP4 192.0.2.3",
            "second c= line in a media section (layered multicast is not supported)",
        );
        expect_line_error(
            "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n",
            5,
            "m=audio 4000 RTP/AVP 0",
            "no c= line in this media section nor at session level",
        );
        expect_line_error(
            "v=0\r\no=- 1 1 IN IP4\r\n",
            2,
            "o=- 1 1 IN IP4",
            "expected o=<username> <sess-id> <sess-version> IN <addrtype> <unicast-address>",
        );
    }

    #[test]
    fn long_lines_are_shortened_in_errors() {
        let long = format!("a=rtpmap:{}", "9".repeat(300));
        let Err(SdpError::Line { text, .. }) = parse(&format!("{HEAD}{long}\r\n")) else {
            panic!("a 300-digit payload type must be refused with a line error");
        };
        assert_eq!(text.chars().count(), QUOTED_LINE_MAX + 1);
        assert!(text.ends_with('…'));
    }
}
