//! URIs (`sip:`, `sips:`, `tel:` and any other scheme), hosts and name-addr
//! values (RFC 3261 §19.1 and §20.10, RFC 3966, RFC 5118).
//!
//! They read bracketed IPv6 hosts, `tel:` URIs and the liberal forms RFC
//! 4475 asks for (which common SIP libraries such as rsip refuse), work on
//! the unfolded header text and keep every part as written: escapes are decoded only by the
//! accessors, once, so a URI is re-emitted byte for byte.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::message::Tag;

/// Why a URI, host or name-addr could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    /// The text has no `scheme:` prefix or the scheme is not a valid token.
    #[error("missing or invalid URI scheme")]
    Scheme,
    /// A SIP URI has no host, or the host is not a domain name or IP address.
    #[error("invalid host {0:?}")]
    Host(String),
    /// The port after the host is not a number from 0 to 65535.
    #[error("invalid port {0:?}")]
    Port(String),
    /// The URI contains whitespace or a control character.
    #[error("whitespace or control character inside a URI")]
    Whitespace,
    /// A `;` introduces an empty or malformed parameter.
    #[error("empty or malformed parameter")]
    Param,
    /// A quoted string has no closing quote.
    #[error("unterminated quoted string")]
    UnterminatedQuote,
    /// A `<` has no matching `>`.
    #[error("unterminated <...> around a URI")]
    UnterminatedAngle,
    /// A URI with `?`, `,` or `;` of its own appears without `<>`.
    #[error("URI with headers must be enclosed in <>")]
    NeedsAngleBrackets,
    /// Text follows the value where only parameters may appear.
    #[error("unexpected text after the value")]
    Trailing,
    /// The user part or the tel number is empty.
    #[error("empty user part or number")]
    EmptyUser,
}

/// A URI scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    /// `sip:`
    Sip,
    /// `sips:`
    Sips,
    /// `tel:` (RFC 3966)
    Tel,
    /// Any other scheme, as written (e.g. `soap.beep`, `isbn`, `http`).
    Other(String),
}

impl Scheme {
    /// Returns the scheme as written in URIs, without the colon.
    pub fn as_str(&self) -> &str {
        match self {
            Scheme::Sip => "sip",
            Scheme::Sips => "sips",
            Scheme::Tel => "tel",
            Scheme::Other(other) => other,
        }
    }
}

/// The host part of a SIP URI or Via sent-by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A domain name, as written.
    Domain(String),
    /// An IPv4 address or a bracketed IPv6 reference (RFC 5118).
    Ip(IpAddr),
    /// A bracketed reference that RFC 3261's original ABNF admits but that is
    /// not an RFC 4291 address (e.g. `[2001:db8:::192.0.2.1]`); RFC 5118 §4.10
    /// asks for tolerance, so it is kept as text without the brackets.
    Ipv6Reference(String),
}

impl Host {
    /// Parses a host: a domain name, an IPv4 address or a `[...]` IPv6 reference.
    pub fn parse(text: &str) -> Result<Host, UriError> {
        let invalid = || UriError::Host(text.to_owned());
        if let Some(inner) = text.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or_else(invalid)?;
            if let Ok(v6) = inner.parse::<Ipv6Addr>() {
                return Ok(Host::Ip(IpAddr::V6(v6)));
            }
            let plausible = inner.contains("::")
                && inner
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
            return if plausible {
                Ok(Host::Ipv6Reference(inner.to_owned()))
            } else {
                Err(invalid())
            };
        }
        if let Ok(v4) = text.parse::<Ipv4Addr>() {
            return Ok(Host::Ip(IpAddr::V4(v4)));
        }
        // Underscores are not legal in hostnames but common in lab setups;
        // accepting them costs nothing and routes nothing wrongly.
        let valid = !text.is_empty()
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
        if valid {
            Ok(Host::Domain(text.to_owned()))
        } else {
            Err(invalid())
        }
    }

    /// Returns the address when the host is an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Host::Ip(ip) => Some(*ip),
            Host::Domain(_) | Host::Ipv6Reference(_) => None,
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(domain) => f.write_str(domain),
            Host::Ip(IpAddr::V4(v4)) => write!(f, "{v4}"),
            Host::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]"),
            Host::Ipv6Reference(text) => write!(f, "[{text}]"),
        }
    }
}

/// A `;name[=value]` parameter of a URI or a header, kept as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// Parameter name as written (compare case-insensitively). A common
    /// name written as it usually is (`branch`, `tag`, `transport`…) is
    /// the static spelling, not a copy, as header names are.
    pub name: Cow<'static, str>,
    /// Value as written, quotes included for quoted strings; `None` for a flag.
    pub value: Option<String>,
}

/// Parameters every message carries (Via, From, To, Contact, URIs).
const COMMON_PARAMS: [&str; 14] = [
    "branch",
    "rport",
    "received",
    "tag",
    "transport",
    "lr",
    "expires",
    "q",
    "maddr",
    "user",
    "ob",
    "reg-id",
    "+sip.instance",
    "alias",
];

/// A parameter's name as written: the static spelling when it is a common
/// one written exactly so, else a copy.
pub(crate) fn param_name(name: &str) -> Cow<'static, str> {
    COMMON_PARAMS
        .iter()
        .find(|common| **common == name)
        .map_or_else(
            || Cow::Owned(name.to_owned()),
            |common| Cow::Borrowed(*common),
        )
}

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, ";{}={}", self.name, value),
            None => write!(f, ";{}", self.name),
        }
    }
}

/// Finds a parameter by case-insensitive name.
pub(crate) fn find_param<'a>(params: &'a [Param], name: &str) -> Option<&'a Param> {
    params.iter().find(|p| p.name.eq_ignore_ascii_case(name))
}

/// Returns a parameter's value with quotes and quoted-pairs removed.
pub(crate) fn param_text(params: &[Param], name: &str) -> Option<String> {
    let value = find_param(params, name)?.value.as_deref()?;
    Some(unquote(value))
}

/// A `sip:` or `sips:` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri {
    /// `true` for `sips:`.
    pub secure: bool,
    /// User part as written (still %-escaped).
    pub user: Option<String>,
    /// Password as written, if any (deprecated but legal).
    pub password: Option<String>,
    /// Host.
    pub host: Host,
    /// Port, when written.
    pub port: Option<u16>,
    /// URI parameters in order.
    pub params: Vec<Param>,
    /// The `?headers` part as written, without the `?`.
    pub headers: Option<String>,
}

/// A `tel:` URI (RFC 3966).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelUri {
    /// The global (`+...`) or local number, visual separators kept.
    pub number: String,
    /// Parameters (`phone-context`, `ext`, ...) in order.
    pub params: Vec<Param>,
}

/// A URI of any scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uri {
    /// `sip:` or `sips:`.
    Sip(SipUri),
    /// `tel:`.
    Tel(TelUri),
    /// Any other scheme; only its text is kept.
    Other {
        /// The scheme as written.
        scheme: String,
        /// Everything after `scheme:`.
        rest: String,
    },
}

impl Uri {
    /// Parses a URI of any scheme. Whitespace anywhere is an error.
    pub fn parse(text: &str) -> Result<Uri, UriError> {
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(UriError::Whitespace);
        }
        let (scheme, rest) = text.split_once(':').ok_or(UriError::Scheme)?;
        let mut chars = scheme.chars();
        let scheme_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !scheme_ok {
            return Err(UriError::Scheme);
        }
        if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
            parse_sip(scheme.eq_ignore_ascii_case("sips"), rest).map(Uri::Sip)
        } else if scheme.eq_ignore_ascii_case("tel") {
            parse_tel(rest).map(Uri::Tel)
        } else if rest.is_empty() {
            Err(UriError::Scheme)
        } else {
            Ok(Uri::Other {
                scheme: scheme.to_owned(),
                rest: rest.to_owned(),
            })
        }
    }

    /// Returns the scheme.
    pub fn scheme(&self) -> Scheme {
        match self {
            Uri::Sip(sip) if sip.secure => Scheme::Sips,
            Uri::Sip(_) => Scheme::Sip,
            Uri::Tel(_) => Scheme::Tel,
            Uri::Other { scheme, .. } => Scheme::Other(scheme.clone()),
        }
    }

    /// Returns the user with %-escapes decoded once: the SIP user part, or the
    /// number of a `tel:` URI. Octets that are not UTF-8 become U+FFFD.
    pub fn user(&self) -> Option<String> {
        match self {
            Uri::Sip(sip) => sip.user.as_deref().map(unescape),
            Uri::Tel(tel) => Some(unescape(&tel.number)),
            Uri::Other { .. } => None,
        }
    }

    /// Returns the user part as written (escapes kept).
    pub fn user_raw(&self) -> Option<&str> {
        match self {
            Uri::Sip(sip) => sip.user.as_deref(),
            Uri::Tel(tel) => Some(&tel.number),
            Uri::Other { .. } => None,
        }
    }

    /// Returns the host of a SIP URI.
    pub fn host(&self) -> Option<&Host> {
        match self {
            Uri::Sip(sip) => Some(&sip.host),
            Uri::Tel(_) | Uri::Other { .. } => None,
        }
    }

    /// Returns the port of a SIP URI, when written.
    pub fn port(&self) -> Option<u16> {
        match self {
            Uri::Sip(sip) => sip.port,
            Uri::Tel(_) | Uri::Other { .. } => None,
        }
    }

    /// Returns the URI parameters (empty for other schemes).
    pub fn params(&self) -> &[Param] {
        match self {
            Uri::Sip(sip) => &sip.params,
            Uri::Tel(tel) => &tel.params,
            Uri::Other { .. } => &[],
        }
    }

    /// Returns a URI parameter's value with escapes decoded; `Some(None)` for
    /// a flag parameter such as `lr`. Names are compared after decoding, so
    /// `%6C%72` finds `lr`.
    pub fn param(&self, name: &str) -> Option<Option<String>> {
        self.params()
            .iter()
            .find(|p| unescape(&p.name).eq_ignore_ascii_case(name))
            .map(|p| p.value.as_deref().map(unescape))
    }

    /// Returns the `?headers` part as written (SIP URIs only).
    pub fn headers(&self) -> Option<&str> {
        match self {
            Uri::Sip(sip) => sip.headers.as_deref(),
            Uri::Tel(_) | Uri::Other { .. } => None,
        }
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Uri::Sip(sip) => {
                f.write_str(if sip.secure { "sips:" } else { "sip:" })?;
                if let Some(user) = &sip.user {
                    f.write_str(user)?;
                    if let Some(password) = &sip.password {
                        write!(f, ":{password}")?;
                    }
                    f.write_str("@")?;
                }
                write!(f, "{}", sip.host)?;
                if let Some(port) = sip.port {
                    write!(f, ":{port}")?;
                }
                for param in &sip.params {
                    write!(f, "{param}")?;
                }
                if let Some(headers) = &sip.headers {
                    write!(f, "?{headers}")?;
                }
                Ok(())
            }
            Uri::Tel(tel) => {
                write!(f, "tel:{}", tel.number)?;
                tel.params.iter().try_for_each(|p| write!(f, "{p}"))
            }
            Uri::Other { scheme, rest } => write!(f, "{scheme}:{rest}"),
        }
    }
}

fn parse_sip(secure: bool, rest: &str) -> Result<SipUri, UriError> {
    // '@' may not appear unescaped after the host, so the first one ends the
    // userinfo even when it holds ';', '?' or ':' (RFC 4475 §3.1.1.2, §3.1.1.9).
    let (userinfo, after) = match rest.split_once('@') {
        Some((userinfo, after)) => (Some(userinfo), after),
        None => (None, rest),
    };
    let (user, password) = match userinfo {
        Some(info) => {
            let (user, password) = match info.split_once(':') {
                Some((user, password)) => (user, Some(password.to_owned())),
                None => (info, None),
            };
            if user.is_empty() {
                return Err(UriError::EmptyUser);
            }
            (Some(user.to_owned()), password)
        }
        None => (None, None),
    };
    let (before_headers, headers) = match after.split_once('?') {
        Some((before, headers)) => (before, Some(headers.to_owned())),
        None => (after, None),
    };
    let (hostport, params) = match before_headers.find(';') {
        Some(i) => (&before_headers[..i], &before_headers[i..]),
        None => (before_headers, ""),
    };
    let (host, port) = split_host_port(hostport)?;
    Ok(SipUri {
        secure,
        user,
        password,
        host,
        port,
        params: parse_uri_params(params)?,
        headers,
    })
}

/// Splits `host[:port]`, where host may be a bracketed IPv6 reference.
pub(crate) fn split_host_port(text: &str) -> Result<(Host, Option<u16>), UriError> {
    let (host, port) = if text.starts_with('[') {
        let end = text
            .find(']')
            .ok_or_else(|| UriError::Host(text.to_owned()))?;
        let (host, after) = text.split_at(end + 1);
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(UriError::Host(text.to_owned())),
        }
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let host = Host::parse(host)?;
    let port = port.map(parse_port).transpose()?;
    Ok((host, port))
}

/// Parses a decimal port; leading zeros are legal.
pub(crate) fn parse_port(text: &str) -> Result<u16, UriError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UriError::Port(text.to_owned()));
    }
    text.parse::<u16>()
        .map_err(|_| UriError::Port(text.to_owned()))
}

fn parse_uri_params(text: &str) -> Result<Vec<Param>, UriError> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let body = text.strip_prefix(';').ok_or(UriError::Param)?;
    body.split(';')
        .map(|item| {
            let (name, value) = match item.split_once('=') {
                Some((name, value)) => (name, Some(value.to_owned())),
                None => (item, None),
            };
            if name.is_empty() || value.as_deref() == Some("") {
                return Err(UriError::Param);
            }
            Ok(Param {
                name: param_name(name),
                value,
            })
        })
        .collect()
}

fn parse_tel(rest: &str) -> Result<TelUri, UriError> {
    let (number, params) = match rest.find(';') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if number.is_empty() {
        return Err(UriError::EmptyUser);
    }
    Ok(TelUri {
        number: number.to_owned(),
        params: parse_uri_params(params)?,
    })
}

/// Decodes `%HH` escapes once. A `%` not followed by two hex digits stays
/// literal; decoded octets that are not UTF-8 become U+FFFD. NUL octets are
/// kept, so `null-%00-null` does not collapse to `null-`.
pub fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            if let Some(value) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(value);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes the quotes and quoted-pair backslashes of a quoted string; other
/// text is returned unchanged.
pub fn unquote(text: &str) -> String {
    let Some(inner) = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .filter(|_| text.len() >= 2)
    else {
        return text.to_owned();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `true` for RFC 3261 `token` characters.
pub(crate) fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            '-' | '.' | '!' | '%' | '*' | '_' | '+' | '`' | '\'' | '~'
        )
}

pub(crate) fn is_lws(c: char) -> bool {
    c == ' ' || c == '\t'
}

pub(crate) fn trim_lws(text: &str) -> &str {
    text.trim_matches(is_lws)
}

/// Returns the byte length of a quoted string at the start of `text`
/// (quotes included), honouring quoted-pairs.
pub(crate) fn quoted_len(text: &str) -> Result<usize, UriError> {
    let mut escaped = false;
    for (i, c) in text.char_indices().skip(1) {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '"' {
            return Ok(i + 1);
        }
    }
    Err(UriError::UnterminatedQuote)
}

/// Parses header parameters: `*( SWS ";" SWS name [ SWS "=" SWS value ] )`.
/// Values are tokens, quoted strings or (IPv6) host literals.
pub(crate) fn parse_header_params(text: &str) -> Result<Vec<Param>, UriError> {
    let mut params = Vec::new();
    let mut rest = text.trim_start_matches(is_lws);
    while !rest.is_empty() {
        rest = rest
            .strip_prefix(';')
            .ok_or(UriError::Trailing)?
            .trim_start_matches(is_lws);
        let name_len = rest.find(|c| !is_token_char(c)).unwrap_or(rest.len());
        if name_len == 0 {
            return Err(UriError::Param);
        }
        let name = param_name(&rest[..name_len]);
        rest = rest[name_len..].trim_start_matches(is_lws);
        let value = match rest.strip_prefix('=') {
            Some(after) => {
                let after = after.trim_start_matches(is_lws);
                let len = if after.starts_with('"') {
                    quoted_len(after)?
                } else {
                    after
                        .find(|c: char| !(is_token_char(c) || matches!(c, ':' | '[' | ']')))
                        .unwrap_or(after.len())
                };
                if len == 0 {
                    return Err(UriError::Param);
                }
                rest = after[len..].trim_start_matches(is_lws);
                Some(after[..len].to_owned())
            }
            None => None,
        };
        params.push(Param { name, value });
    }
    Ok(params)
}

/// Splits a header value at top-level commas (outside quotes and `<>`).
pub(crate) fn split_top_level_commas(text: &str) -> Result<Vec<&str>, UriError> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut in_quotes = false;
    let mut escaped = false;
    let mut in_angle = false;
    // Bytes, not chars: every delimiter is ASCII, and no byte of a
    // multi-byte UTF-8 sequence is (an escape before one only skips its
    // first byte, which changes nothing). Decoding chars was 3 % of the
    // core's work per call: every Via and Contact goes through here.
    for (i, c) in text.bytes().enumerate() {
        if in_quotes {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_quotes = false;
            }
            continue;
        }
        match c {
            b'"' => in_quotes = true,
            b'<' => in_angle = true,
            b'>' => in_angle = false,
            b',' if !in_angle => {
                parts.push(trim_lws(&text[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    if in_quotes {
        return Err(UriError::UnterminatedQuote);
    }
    parts.push(trim_lws(&text[start..]));
    Ok(parts)
}

/// A `name-addr` or `addr-spec` with header parameters: the value of From,
/// To, Contact, Route, Record-Route and similar headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// Display name with quotes and quoted-pairs removed.
    pub display_name: Option<String>,
    /// The URI.
    pub uri: Uri,
    /// Header parameters (outside the `<>`), in order.
    pub params: Vec<Param>,
}

impl NameAddr {
    /// Parses one name-addr or addr-spec with its header parameters.
    ///
    /// Liberal where RFC 4475 allows it: no LWS needed before `<`
    /// (`caller<sip:...>`), LWS inside `<>` is ignored, and an unquoted
    /// display name may hold any characters up to the `<`.
    pub fn parse(text: &str) -> Result<NameAddr, UriError> {
        let text = trim_lws(text);
        let (display_name, rest) = if text.starts_with('"') {
            let len = quoted_len(text)?;
            let rest = text[len..].trim_start_matches(is_lws);
            if !rest.starts_with('<') {
                return Err(UriError::Trailing);
            }
            (Some(unquote(&text[..len])), rest)
        } else if let Some(lt) = text.find('<') {
            let name = trim_lws(&text[..lt]);
            if name.contains('"') {
                return Err(UriError::UnterminatedQuote);
            }
            ((!name.is_empty()).then(|| name.to_owned()), &text[lt..])
        } else {
            (None, text)
        };
        let (uri, params) = if let Some(inside) = rest.strip_prefix('<') {
            let end = inside.find('>').ok_or(UriError::UnterminatedAngle)?;
            (Uri::parse(trim_lws(&inside[..end]))?, &inside[end + 1..])
        } else {
            // addr-spec: header parameters start at the first ';' or LWS, and
            // a URI needing its own '?' must have been enclosed in <>.
            let end = rest
                .find(|c: char| c == ';' || is_lws(c))
                .unwrap_or(rest.len());
            let spec = &rest[..end];
            if spec.contains('?') || spec.contains(',') {
                return Err(UriError::NeedsAngleBrackets);
            }
            (Uri::parse(spec)?, &rest[end..])
        };
        Ok(NameAddr {
            display_name,
            uri,
            params: parse_header_params(params)?,
        })
    }

    /// Returns the `tag` parameter.
    pub fn tag(&self) -> Option<Tag> {
        param_text(&self.params, "tag").map(Tag::new)
    }

    /// Whether it carries a tag (with a value), as [`NameAddr::tag`] finds
    /// it, without copying the tag out.
    pub fn has_tag(&self) -> bool {
        find_param(&self.params, "tag").is_some_and(|p| p.value.is_some())
    }

    /// Returns a header parameter's value, unquoted; `Some(None)` for a flag.
    pub fn param(&self, name: &str) -> Option<Option<String>> {
        find_param(&self.params, name).map(|p| p.value.as_deref().map(unquote))
    }

    /// Returns the Contact `expires` parameter; values beyond `u32` saturate
    /// (the registrar caps them anyway).
    pub fn expires(&self) -> Option<u32> {
        param_text(&self.params, "expires").and_then(|v| parse_delta_seconds(&v))
    }

    /// Returns the Contact `q` parameter in thousandths (`q=0.33` is 330).
    pub fn q(&self) -> Option<u16> {
        param_text(&self.params, "q").and_then(|v| parse_qvalue(&v))
    }

    /// Returns the `+sip.instance` parameter (RFC 5626) without its quotes.
    pub fn sip_instance(&self) -> Option<String> {
        param_text(&self.params, "+sip.instance")
    }

    /// Returns the `reg-id` parameter (RFC 5626).
    pub fn reg_id(&self) -> Option<u32> {
        param_text(&self.params, "reg-id").and_then(|v| v.parse().ok())
    }
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = &self.display_name {
            f.write_str("\"")?;
            for c in name.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            f.write_str("\" ")?;
        }
        write!(f, "<{}>", self.uri)?;
        self.params.iter().try_for_each(|p| write!(f, "{p}"))
    }
}

/// Parses delta-seconds, saturating at `u32::MAX` for over-long values.
pub(crate) fn parse_delta_seconds(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse::<u32>().unwrap_or(u32::MAX))
}

fn parse_qvalue(text: &str) -> Option<u16> {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_value = format!("{frac:0<3}").parse::<u16>().ok()?;
    match whole {
        "0" => Some(frac_value),
        "1" if frac_value == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(text: &str) -> Uri {
        Uri::parse(text).unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
    }

    /// Common parameter names written as usual are the static spellings;
    /// any other spelling is kept as written, and both print as written.
    #[test]
    fn common_parameter_names_are_not_copied_and_others_keep_their_spelling() {
        let addr = NameAddr::parse("<sip:a@192.0.2.1;transport=udp;Lr;x-own=1>;tag=7;TAG2=x")
            .expect("parses");
        let uri_params: Vec<(&str, bool)> = addr
            .uri
            .params()
            .iter()
            .map(|p| (&*p.name, matches!(p.name, Cow::Borrowed(_))))
            .collect();
        assert_eq!(
            uri_params,
            vec![("transport", true), ("Lr", false), ("x-own", false)]
        );
        let header_params: Vec<(&str, bool)> = addr
            .params
            .iter()
            .map(|p| (&*p.name, matches!(p.name, Cow::Borrowed(_))))
            .collect();
        assert_eq!(header_params, vec![("tag", true), ("TAG2", false)]);
        assert_eq!(addr.tag().expect("tag").as_str(), "7");
        assert_eq!(
            addr.to_string(),
            "<sip:a@192.0.2.1;transport=udp;Lr;x-own=1>;tag=7;TAG2=x"
        );
    }

    #[test]
    fn has_tag_agrees_with_tag_and_a_tag_without_a_value_is_none() {
        for (text, tag) in [
            ("<sip:a@192.0.2.1>;tag=7", Some("7")),
            ("<sip:a@192.0.2.1>;TAG=\"q\"", Some("q")),
            ("<sip:a@192.0.2.1>;tag", None),
            ("<sip:a@192.0.2.1;tag=uri-param>", None),
        ] {
            let addr = NameAddr::parse(text).expect("parses");
            assert_eq!(addr.tag().as_ref().map(Tag::as_str), tag, "{text}");
            assert_eq!(addr.has_tag(), tag.is_some(), "{text}");
        }
    }

    #[test]
    fn ipv6_host_with_port_in_sip_uri() {
        let parsed = uri("sip:[2001:db8::10]:5070;transport=udp");
        assert_eq!(
            parsed.host(),
            Some(&Host::Ip("2001:db8::10".parse().expect("literal")))
        );
        assert_eq!(parsed.port(), Some(5070));
        assert_eq!(parsed.param("transport"), Some(Some("udp".to_owned())));
        assert_eq!(parsed.to_string(), "sip:[2001:db8::10]:5070;transport=udp");
    }

    #[test]
    fn port_inside_brackets_is_part_of_the_address() {
        let parsed = uri("sip:[2001:db8::10:5070]");
        assert_eq!(
            parsed.host(),
            Some(&Host::Ip("2001:db8::10:5070".parse().expect("literal")))
        );
        assert_eq!(parsed.port(), None);
    }

    #[test]
    fn unbracketed_ipv6_host_is_rejected() {
        assert!(matches!(
            Uri::parse("sip:2001:db8::10"),
            Err(UriError::Port(_))
        ));
    }

    #[test]
    fn three_colon_reference_is_tolerated() {
        let parsed = uri("sip:user@[2001:db8:::192.0.2.1]");
        assert_eq!(
            parsed.host(),
            Some(&Host::Ipv6Reference("2001:db8:::192.0.2.1".to_owned()))
        );
        assert_eq!(parsed.to_string(), "sip:user@[2001:db8:::192.0.2.1]");
    }

    #[test]
    fn tel_uri_keeps_number_and_params() {
        let parsed = uri("tel:+1-201-555-0123;phone-context=example.com");
        assert_eq!(parsed.scheme(), Scheme::Tel);
        assert_eq!(parsed.user().as_deref(), Some("+1-201-555-0123"));
        assert_eq!(parsed.host(), None);
        assert_eq!(
            parsed.param("phone-context"),
            Some(Some("example.com".to_owned()))
        );
        assert_eq!(
            parsed.to_string(),
            "tel:+1-201-555-0123;phone-context=example.com"
        );
    }

    #[test]
    fn escapes_decode_once_and_keep_nul() {
        assert_eq!(unescape("%75se%72"), "user");
        assert_eq!(unescape("null-%00-null"), "null-\0-null");
        assert_eq!(unescape("v%61lue%25%34%31"), "value%41");
        assert_eq!(unescape("100%"), "100%");
        assert_eq!(unescape("%Z%45"), "%ZE");
    }

    #[test]
    fn other_schemes_are_kept_as_text() {
        let parsed = uri("soap.beep://192.0.2.103:3002");
        assert_eq!(parsed.scheme(), Scheme::Other("soap.beep".to_owned()));
        assert_eq!(parsed.to_string(), "soap.beep://192.0.2.103:3002");
        assert_eq!(Uri::parse("<sip:a@b>"), Err(UriError::Scheme));
    }

    #[test]
    fn name_addr_forms() {
        let glued = NameAddr::parse("caller<sip:caller@example.com>;tag=323")
            .expect("no LWS before < is tolerated");
        assert_eq!(glued.display_name.as_deref(), Some("caller"));
        assert_eq!(glued.tag(), Some(Tag::new("323")));

        let quoted = NameAddr::parse(
            r#""J Rosenberg \\\""       <sip:jdrosen@example.com> ; tag = 98asjd8"#,
        )
        .expect("quoted display name with quoted-pairs");
        assert_eq!(quoted.display_name.as_deref(), Some(r#"J Rosenberg \""#));
        assert_eq!(quoted.tag(), Some(Tag::new("98asjd8")));

        let spec = NameAddr::parse("sip:+19725552222@gw1.example.net;unknownparam")
            .expect("addr-spec with header param");
        assert_eq!(spec.uri.param("unknownparam"), None);
        assert_eq!(spec.param("unknownparam"), Some(None));

        let angle = NameAddr::parse("<sip:+19725552222@gw1.example.net;unknownparam>")
            .expect("name-addr with URI param");
        assert_eq!(angle.uri.param("unknownparam"), Some(None));
        assert_eq!(angle.param("unknownparam"), None);

        assert_eq!(
            NameAddr::parse("sip:user@example.com?Route=%3Csip:sip.example.com%3E"),
            Err(UriError::NeedsAngleBrackets)
        );
        assert_eq!(
            NameAddr::parse("\"Mr. J. User <sip:j.user@example.com>"),
            Err(UriError::UnterminatedQuote)
        );
        assert_eq!(
            NameAddr::parse("\"Joe\" <sip:joe@example.org>;;;;"),
            Err(UriError::Param)
        );
    }

    #[test]
    fn contact_params() {
        let contact = NameAddr::parse(
            "<sip:alice@[2001:db8::1]:5062;transport=tcp>;expires=3600;q=0.33;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\";reg-id=1",
        )
        .expect("contact with RFC 5626 params");
        assert_eq!(contact.expires(), Some(3600));
        assert_eq!(contact.q(), Some(330));
        assert_eq!(
            contact.sip_instance().as_deref(),
            Some("<urn:uuid:00000000-0000-1000-8000-000A95A0E128>")
        );
        assert_eq!(contact.reg_id(), Some(1));
        assert_eq!(contact.uri.port(), Some(5062));
        assert_eq!(
            NameAddr::parse("<sip:a@b>;expires=280297596632815")
                .expect("large expires")
                .expires(),
            Some(u32::MAX)
        );
    }

    #[test]
    fn commas_split_outside_quotes_and_brackets() {
        let parts =
            split_top_level_commas("\"a, b\" <sip:x@y;p=1,2>, <sip:z@w>").expect("balanced quotes");
        assert_eq!(parts, vec!["\"a, b\" <sip:x@y;p=1,2>", "<sip:z@w>"]);
    }
}
