//! Header names (compact forms, canonical spelling) and the typed values the
//! server relies on: Via, CSeq, methods and transports.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use super::message::Branch;
use super::uri::{
    find_param, is_lws, is_token_char, param_text, parse_header_params, parse_port, Host, Param,
    UriError,
};

/// One header line after unfolding, with its name in canonical spelling for
/// headers this module knows (compact forms expanded) and as written otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Canonical name (`Via`, `Call-ID`, ...) or the name as written.
    /// A known name is the static spelling, not a copy: every message has
    /// a dozen headers, and their names were a tenth of the SIP core's
    /// allocations.
    pub name: Cow<'static, str>,
    /// Value with surrounding LWS removed and folded lines joined by one SP.
    pub value: HeaderValue,
}

/// A header's value: a range of the message's own octets when it is
/// written there as it reads (one line of valid UTF-8), its own text
/// otherwise (a folded value, a value the server builds).
///
/// Each header's value was a `String`, a dozen allocations and copies for
/// every message read; sharing the octets costs a reference count.
#[derive(Clone)]
pub struct HeaderValue(ValueText);

#[derive(Clone)]
enum ValueText {
    Shared {
        octets: Arc<[u8]>,
        start: u32,
        end: u32,
    },
    Owned(String),
}

impl HeaderValue {
    /// Shares `value` when it is a slice of `octets`; copies it otherwise.
    pub(crate) fn within(octets: &Arc<[u8]>, value: &str) -> HeaderValue {
        let base = octets.as_ptr() as usize;
        let at = value.as_ptr() as usize;
        let inside = at >= base && at + value.len() <= base + octets.len();
        if inside {
            let offset = at - base;
            if let (Ok(start), Ok(end)) =
                (u32::try_from(offset), u32::try_from(offset + value.len()))
            {
                return HeaderValue(ValueText::Shared {
                    octets: Arc::clone(octets),
                    start,
                    end,
                });
            }
        }
        HeaderValue(ValueText::Owned(value.to_owned()))
    }

    /// The value as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            ValueText::Shared { octets, start, end } => {
                let range = &octets[*start as usize..*end as usize];
                // SAFETY: `within` shares only a range that was a `&str`
                // borrowed from these very octets (so valid UTF-8 and on
                // character boundaries), and octets behind an `Arc<[u8]>`
                // never change.
                unsafe { std::str::from_utf8_unchecked(range) }
            }
            ValueText::Owned(text) => text,
        }
    }
}

impl std::ops::Deref for HeaderValue {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<String> for HeaderValue {
    fn from(text: String) -> Self {
        HeaderValue(ValueText::Owned(text))
    }
}

impl From<&str> for HeaderValue {
    fn from(text: &str) -> Self {
        HeaderValue(ValueText::Owned(text.to_owned()))
    }
}

impl PartialEq for HeaderValue {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for HeaderValue {}

impl fmt::Debug for HeaderValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for HeaderValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Full names of the compact forms (RFC 3261 §7.3.3 and later RFCs' registrations).
const COMPACT: &[(char, &str)] = &[
    ('a', "Accept-Contact"),
    ('b', "Referred-By"),
    ('c', "Content-Type"),
    ('d', "Request-Disposition"),
    ('e', "Content-Encoding"),
    ('f', "From"),
    ('i', "Call-ID"),
    ('j', "Reject-Contact"),
    ('k', "Supported"),
    ('l', "Content-Length"),
    ('m', "Contact"),
    ('n', "Identity-Info"),
    ('o', "Event"),
    ('r', "Refer-To"),
    ('s', "Subject"),
    ('t', "To"),
    ('u', "Allow-Events"),
    ('v', "Via"),
    ('x', "Session-Expires"),
    ('y', "Identity"),
];

/// Canonical spellings, so that the next hop and people reading logs see one form.
const CANONICAL: &[&str] = &[
    "Accept",
    "Accept-Contact",
    "Accept-Encoding",
    "Accept-Language",
    "Alert-Info",
    "Allow",
    "Allow-Events",
    "Authentication-Info",
    "Authorization",
    "CSeq",
    "Call-ID",
    "Call-Info",
    "Contact",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Content-Length",
    "Content-Type",
    "Date",
    "Error-Info",
    "Event",
    "Expires",
    "From",
    "Identity",
    "Identity-Info",
    "In-Reply-To",
    "MIME-Version",
    "Max-Forwards",
    "Min-Expires",
    "Min-SE",
    "Organization",
    "P-Asserted-Identity",
    "Path",
    "Priority",
    "Privacy",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Require",
    "RAck",
    "RSeq",
    "Reason",
    "Record-Route",
    "Refer-To",
    "Referred-By",
    "Reject-Contact",
    "Replaces",
    "Reply-To",
    "Request-Disposition",
    "Require",
    "Retry-After",
    "Route",
    "Server",
    "Session-Expires",
    "Subject",
    "Subscription-State",
    "Supported",
    "Timestamp",
    "To",
    "Unsupported",
    "User-Agent",
    "Via",
    "WWW-Authenticate",
    "Warning",
];

/// Returns the canonical name for a header name as written: compact forms
/// are expanded, known names get their usual spelling, others are kept.
pub fn canonical_name(name: &str) -> Cow<'static, str> {
    let mut chars = name.chars();
    if let (Some(c), None) = (chars.next(), chars.next()) {
        let lower = c.to_ascii_lowercase();
        if let Some((_, full)) = COMPACT.iter().find(|(short, _)| *short == lower) {
            return Cow::Borrowed(full);
        }
    }
    CANONICAL
        .iter()
        .find(|known| known.eq_ignore_ascii_case(name))
        .map_or_else(
            || Cow::Owned(name.to_owned()),
            |known| Cow::Borrowed(*known),
        )
}

/// A request method; extension methods are kept as their token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// INVITE
    Invite,
    /// ACK
    Ack,
    /// BYE
    Bye,
    /// CANCEL
    Cancel,
    /// OPTIONS
    Options,
    /// REGISTER
    Register,
    /// PRACK (RFC 3262)
    Prack,
    /// SUBSCRIBE (RFC 6665)
    Subscribe,
    /// NOTIFY (RFC 6665)
    Notify,
    /// PUBLISH (RFC 3903)
    Publish,
    /// INFO (RFC 6086)
    Info,
    /// REFER (RFC 3515)
    Refer,
    /// MESSAGE (RFC 3428)
    Message,
    /// UPDATE (RFC 3311)
    Update,
    /// Any other token; the core answers 501 with Allow.
    Extension(String),
}

const STANDARD_METHODS: &[(&str, Method)] = &[
    ("INVITE", Method::Invite),
    ("ACK", Method::Ack),
    ("BYE", Method::Bye),
    ("CANCEL", Method::Cancel),
    ("OPTIONS", Method::Options),
    ("REGISTER", Method::Register),
    ("PRACK", Method::Prack),
    ("SUBSCRIBE", Method::Subscribe),
    ("NOTIFY", Method::Notify),
    ("PUBLISH", Method::Publish),
    ("INFO", Method::Info),
    ("REFER", Method::Refer),
    ("MESSAGE", Method::Message),
    ("UPDATE", Method::Update),
];

impl Method {
    /// Maps a method token. Methods are case-sensitive (RFC 3261 §7.1), so
    /// `invite` is an extension method, not INVITE.
    pub fn from_token(token: &str) -> Method {
        STANDARD_METHODS
            .iter()
            .find(|(name, _)| *name == token)
            .map_or_else(|| Method::Extension(token.to_owned()), |(_, m)| m.clone())
    }

    /// Returns the method token.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Extension(token) => token,
            standard => STANDARD_METHODS
                .iter()
                .find(|(_, m)| m == standard)
                .map_or("", |(name, _)| name),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The transport named in a Via header.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP
    Udp,
    /// TCP
    Tcp,
    /// TLS over TCP
    Tls,
    /// SCTP
    Sctp,
    /// WebSocket (RFC 7118)
    Ws,
    /// Secure WebSocket (RFC 7118)
    Wss,
    /// An extension transport token, upper-cased.
    Other(String),
}

impl Transport {
    /// Maps a transport token, case-insensitively.
    pub fn from_token(token: &str) -> Transport {
        // Compared in place: every Via of every message names one.
        const KNOWN: [(&str, Transport); 6] = [
            ("UDP", Transport::Udp),
            ("TCP", Transport::Tcp),
            ("TLS", Transport::Tls),
            ("SCTP", Transport::Sctp),
            ("WS", Transport::Ws),
            ("WSS", Transport::Wss),
        ];
        KNOWN
            .into_iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(token))
            .map_or_else(
                || Transport::Other(token.to_ascii_uppercase()),
                |(_, known)| known,
            )
    }

    /// `true` for connection-oriented transports, whose responses go back on
    /// the connection the request came in on (RFC 3261 §18.2.2).
    pub fn is_reliable(&self) -> bool {
        !matches!(self, Transport::Udp | Transport::Other(_))
    }

    /// Returns the default port (5061 for TLS and WSS, 5060 otherwise).
    pub fn default_port(&self) -> u16 {
        match self {
            Transport::Tls | Transport::Wss => 5061,
            _ => 5060,
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Udp => f.write_str("UDP"),
            Transport::Tcp => f.write_str("TCP"),
            Transport::Tls => f.write_str("TLS"),
            Transport::Sctp => f.write_str("SCTP"),
            Transport::Ws => f.write_str("WS"),
            Transport::Wss => f.write_str("WSS"),
            Transport::Other(token) => f.write_str(token),
        }
    }
}

/// One Via value (`via-parm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// Transport of the hop.
    pub transport: Transport,
    /// sent-by host.
    pub host: Host,
    /// sent-by port, when written.
    pub port: Option<u16>,
    /// Parameters in order (`branch`, `received`, `rport`, ...).
    pub params: Vec<Param>,
}

/// Why a Via value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViaError {
    /// The sent-protocol is not `SIP/2.0/transport`.
    #[error("sent-protocol is not SIP/2.0/<transport>")]
    Protocol,
    /// The sent-by host or port is invalid, or a parameter is malformed.
    #[error(transparent)]
    Uri(#[from] UriError),
}

impl Via {
    /// Parses one via-parm, tolerating LWS around `/`, `:`, `;` and `=`.
    pub fn parse(text: &str) -> Result<Via, ViaError> {
        let mut rest = text.trim_matches(is_lws);
        let mut fields = [""; 3];
        for (i, field) in fields.iter_mut().enumerate() {
            if i > 0 {
                rest = rest
                    .strip_prefix('/')
                    .ok_or(ViaError::Protocol)?
                    .trim_start_matches(is_lws);
            }
            let len = rest.find(|c| !is_token_char(c)).unwrap_or(rest.len());
            if len == 0 {
                return Err(ViaError::Protocol);
            }
            *field = &rest[..len];
            rest = rest[len..].trim_start_matches(is_lws);
        }
        if !fields[0].eq_ignore_ascii_case("SIP") || fields[1] != "2.0" {
            return Err(ViaError::Protocol);
        }
        let transport = Transport::from_token(fields[2]);
        let host_len = if rest.starts_with('[') {
            rest.find(']').map_or(rest.len(), |i| i + 1)
        } else {
            rest.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
                .unwrap_or(rest.len())
        };
        let host = Host::parse(&rest[..host_len])?;
        rest = rest[host_len..].trim_start_matches(is_lws);
        let port = match rest.strip_prefix(':') {
            Some(after) => {
                let after = after.trim_start_matches(is_lws);
                let len = after
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(after.len());
                rest = &after[len..];
                Some(parse_port(&after[..len])?)
            }
            None => None,
        };
        Ok(Via {
            transport,
            host,
            port,
            params: parse_header_params(rest)?,
        })
    }

    /// Returns the `branch` parameter.
    pub fn branch(&self) -> Option<Branch> {
        param_text(&self.params, "branch").map(Branch::new)
    }

    /// Returns the `received` parameter as an address; brackets around IPv6
    /// values are accepted (RFC 5118 §4.5). Unreadable values count as absent.
    pub fn received(&self) -> Option<IpAddr> {
        let value = param_text(&self.params, "received")?;
        let bare = value
            .strip_prefix('[')
            .and_then(|v| v.strip_suffix(']'))
            .unwrap_or(&value);
        bare.parse().ok()
    }

    /// `true` when an `rport` parameter is present, with or without a value.
    pub fn has_rport(&self) -> bool {
        find_param(&self.params, "rport").is_some()
    }

    /// Returns the `rport` value, when present and numeric (RFC 3581).
    pub fn rport(&self) -> Option<u16> {
        find_param(&self.params, "rport")?
            .value
            .as_deref()
            .and_then(|v| parse_port(v).ok())
    }

    /// Sets a parameter, replacing an existing one of the same name in place.
    pub fn set_param(&mut self, name: &str, value: Option<String>) {
        match self
            .params
            .iter_mut()
            .find(|p| p.name.eq_ignore_ascii_case(name))
        {
            Some(param) => param.value = value,
            None => self.params.push(Param {
                name: super::uri::param_name(name),
                value,
            }),
        }
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIP/2.0/{} {}", self.transport, self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        self.params.iter().try_for_each(|p| write!(f, "{p}"))
    }
}

/// The CSeq header: sequence number and method.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CSeq {
    /// Sequence number; RFC 3261 §8.1.1.5 bounds it to 2^32 - 1.
    pub seq: u32,
    /// Method the sequence number belongs to.
    pub method: Method,
}

impl CSeq {
    /// Parses `number LWS method`; a number beyond `u32` is an error.
    pub fn parse(text: &str) -> Option<CSeq> {
        let text = text.trim_matches(is_lws);
        let digits = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, rest) = text.split_at(digits);
        let method = rest.trim_start_matches(is_lws);
        if number.is_empty()
            || method.len() == rest.len()
            || method.is_empty()
            || !method.chars().all(is_token_char)
        {
            return None;
        }
        Some(CSeq {
            seq: number.parse().ok()?,
            method: Method::from_token(method),
        })
    }
}

impl fmt::Display for CSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.seq, self.method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_names_expand_and_known_names_are_canonical() {
        assert_eq!(canonical_name("v"), "Via");
        assert_eq!(canonical_name("I"), "Call-ID");
        assert_eq!(canonical_name("l"), "Content-Length");
        assert_eq!(canonical_name("cAlL-iD"), "Call-ID");
        assert_eq!(canonical_name("MaX-fOrWaRdS"), "Max-Forwards");
        assert_eq!(canonical_name("X-Custom"), "X-Custom");
        assert_eq!(canonical_name("C%6Fntact"), "C%6Fntact");
    }

    #[test]
    fn methods_are_case_sensitive_and_extensions_kept() {
        assert_eq!(Method::from_token("INVITE"), Method::Invite);
        assert_eq!(
            Method::from_token("invite"),
            Method::Extension("invite".to_owned())
        );
        assert_eq!(Method::from_token("RE%47IST%45R").as_str(), "RE%47IST%45R");
    }

    #[test]
    fn via_with_odd_lws_ipv6_and_rport() {
        let via = Via::parse("SIP  /   2.0 /UDP 192.0.2.2;branch=390skdjuw").expect("odd LWS");
        assert_eq!(via.transport, Transport::Udp);
        assert_eq!(via.host, Host::Ip("192.0.2.2".parse().expect("literal")));
        assert_eq!(via.branch(), Some(Branch::new("390skdjuw")));

        let v6 = Via::parse("SIP/2.0/TCP [2001:db8::9:1]:6050;branch=z9hG4bKas3-111;rport")
            .expect("IPv6 sent-by with port");
        assert_eq!(v6.host, Host::Ip("2001:db8::9:1".parse().expect("literal")));
        assert_eq!(v6.port, Some(6050));
        assert!(v6.has_rport());
        assert_eq!(v6.rport(), None);
        assert_eq!(
            v6.to_string(),
            "SIP/2.0/TCP [2001:db8::9:1]:6050;branch=z9hG4bKas3-111;rport"
        );

        let received =
            Via::parse("SIP/2.0/UDP [2001:db8::9:1];received=[2001:db8::9:255];branch=z9hG4bKas3")
                .expect("bracketed received");
        assert_eq!(
            received.received(),
            Some("2001:db8::9:255".parse().expect("literal"))
        );
        let bare = Via::parse("SIP/2.0/UDP [2001:db8::9:1];received=2001:db8::9:255")
            .expect("bare received");
        assert_eq!(
            bare.received(),
            Some("2001:db8::9:255".parse().expect("literal"))
        );

        let spaced =
            Via::parse("SIP  / 2.0  / TCP     spindle.example.com   ; branch  =   z9hG4bK9ikj8")
                .expect("LWS around ; and =");
        assert_eq!(spaced.host, Host::Domain("spindle.example.com".to_owned()));
        assert_eq!(spaced.branch(), Some(Branch::new("z9hG4bK9ikj8")));

        let unknown = Via::parse("SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en")
            .expect("extension transport");
        assert_eq!(unknown.transport, Transport::Other("UNKNOWN".to_owned()));

        assert_eq!(
            Via::parse("SIP/7.0/UDP c.example.com"),
            Err(ViaError::Protocol)
        );
        assert!(Via::parse("SIP/2.0/UDP 192.0.2.15;;").is_err());
    }

    #[test]
    fn cseq_bounds() {
        assert_eq!(
            CSeq::parse("0009  INVITE"),
            Some(CSeq {
                seq: 9,
                method: Method::Invite
            })
        );
        assert_eq!(CSeq::parse("4294967295 ACK").map(|c| c.seq), Some(u32::MAX));
        assert_eq!(CSeq::parse("4294967296 ACK"), None);
        assert_eq!(CSeq::parse("36893488147419103232 REGISTER"), None);
        assert_eq!(CSeq::parse("12INVITE"), None);
        assert_eq!(CSeq::parse("INVITE"), None);
    }
}
