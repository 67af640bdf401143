//! The edge role of a node when several nodes share the location service:
//! a phone behind NAT can only be reached over the flow it registered on
//! (its UDP mapping, its TCP connection), and that flow ends at the node
//! that took the REGISTER. As an edge proxy would (RFC 3327, RFC 5626
//! §5), that node puts itself first in the binding's Path with a flow
//! token, `<sip:TOKEN@node;lr;ob>`; another node calling the phone sends
//! the INVITE there with that Route, and this node forwards it over the
//! flow, statelessly (RFC 3261 §16.11): its own Via on top (the branch a
//! hash of the incoming one, so a CANCEL or an ACK of a non-2xx takes the
//! same path), Max-Forwards down by one, itself Record-Routed with the same
//! token so in-dialog requests keep coming through it. Responses come back
//! through its Via, which it removes.
//!
//! The token names the flow (transport, address and port) and carries an
//! HMAC under the node's secret: only this node makes tokens it accepts,
//! so nobody can use it to reach arbitrary addresses. Which way a request
//! goes follows §5.3 of RFC 5626: one that arrived over the token's own
//! flow is the phone's, routed on (the next Route, else its Request-URI);
//! any other goes to the flow.

use std::net::{IpAddr, SocketAddr};

use crate::auth::hmac_sha256;
use crate::sip::split_top_level_commas;
use crate::sip::Transport;
use crate::sip::{Header, Method, NameAddr, SipMessage, Uri, Via};
use crate::transport::{uri_destination, Destination, Flow, Outbound, Stream};

/// The branch prefix of this node's stateless forwards: a response whose
/// top Via carries it is forwarded, not matched to a transaction.
const BRANCH_PREFIX: &str = "z9hG4bK-sbedge-";
/// Bytes of HMAC kept in a token: 64 bits against guessing.
const MAC_BYTES: usize = 8;

/// A node's edge role: its address and the key of its flow tokens.
#[derive(Clone)]
pub struct Edge {
    /// `host:port` as other nodes reach this one (the advertised address).
    local: String,
    key: [u8; 32],
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

/// What to do with a request routed through this node.
#[derive(Debug, PartialEq, Eq)]
pub enum Routed {
    /// Forward these octets there.
    Forward(Outbound),
    /// Refuse with this status and reason (483 Too Many Hops, 502 when the
    /// next hop cannot be reached).
    Refuse(u16, &'static str),
}

impl Edge {
    /// The edge role of a node reached at `local` (`host:port`), its tokens
    /// keyed from `secret`.
    pub fn new(local: impl Into<String>, secret: &[u8]) -> Edge {
        Edge {
            local: local.into(),
            key: hmac_sha256(secret, b"switchboard flow token"),
        }
    }

    /// The Path entry for a phone registering over `flow`. Nodes reach
    /// each other on their plain address: over TCP for a phone on a
    /// stream (TLS ends at the node holding the phone's connection; the
    /// nodes' own network is the operator's), over UDP otherwise.
    pub fn path_entry(&self, flow: &Flow) -> String {
        let transport = if flow.is_reliable() {
            ";transport=tcp"
        } else {
            ""
        };
        format!("<sip:{}@{}{transport};lr;ob>", self.token(flow), self.local)
    }

    fn names_me(&self, uri: &Uri) -> bool {
        names(uri, &self.local)
    }

    fn token(&self, flow: &Flow) -> String {
        let remote = flow.remote();
        let kind = match flow {
            Flow::Udp { .. } => 'u',
            Flow::Stream { kind, .. } => match kind {
                Stream::Tcp => 't',
                Stream::Tls => 's',
                Stream::Ws => 'w',
                Stream::Wss => 'x',
            },
        };
        let body = format!("{kind}{}{:04x}", hex_ip(remote.ip()), remote.port());
        let mac = hmac_sha256(&self.key, body.as_bytes());
        format!("{body}{}", hex(&mac[..MAC_BYTES]))
    }

    /// The flow a token of ours names; `None` for anything else.
    fn flow_of(&self, token: &str) -> Option<Destination> {
        let split = token.len().checked_sub(MAC_BYTES * 2)?;
        let (body, mac) = token.split_at(split);
        let expected = hmac_sha256(&self.key, body.as_bytes());
        if !constant_time_eq(mac.as_bytes(), hex(&expected[..MAC_BYTES]).as_bytes()) {
            return None;
        }
        let (kind, rest) = body.split_at_checked(1)?;
        let (ip, port) = rest.split_at_checked(rest.len().checked_sub(4)?)?;
        let ip = parse_hex_ip(ip)?;
        let remote = SocketAddr::new(ip, u16::from_str_radix(port, 16).ok()?);
        match kind {
            "u" => Some(Destination::Udp(remote)),
            "t" => Some(Destination::over(&Transport::Tcp, remote)),
            "s" => Some(Destination::over(&Transport::Tls, remote)),
            "w" => Some(Destination::over(&Transport::Ws, remote)),
            "x" => Some(Destination::over(&Transport::Wss, remote)),
            _ => None,
        }
    }

    /// A request whose top Route is this node with one of its tokens:
    /// where it goes and as what. `None`: not routed through the edge
    /// (handled as usual). `request_uri` is the start line's, as written.
    pub fn route_request(
        &self,
        message: &SipMessage,
        flow: &Flow,
        request_uri: &str,
    ) -> Option<Routed> {
        let routes = message.header_list("Route");
        let top = NameAddr::parse(routes.first()?).ok()?;
        if !self.names_me(&top.uri) {
            return None;
        }
        let phone = self.flow_of(&top.uri.user()?)?;
        if message.max_forwards() == 0 && message.has_max_forwards() {
            return Some(Routed::Refuse(483, "Too Many Hops"));
        }
        // From the phone's own flow: on to the next Route or the
        // Request-URI; from anywhere else: to the phone.
        let from_phone = phone.remote() == flow.remote();
        let next = if !from_phone {
            Some(phone)
        } else if let Some(route) = routes.get(1) {
            NameAddr::parse(route)
                .ok()
                .and_then(|r| uri_destination(&r.uri).ok())
        } else {
            Uri::parse(request_uri)
                .ok()
                .and_then(|uri| uri_destination(&uri).ok())
        };
        let Some(destination) = next else {
            return Some(Routed::Refuse(502, "Bad Gateway (next hop not reachable)"));
        };
        let via_transport = destination.transport();
        let incoming_branch = message.top_via().branch();
        let branch_source = format!(
            "{}|{}",
            incoming_branch.as_ref().map_or("", |b| b.as_str()),
            message.call_id().as_str()
        );
        let branch = hex(&hmac_sha256(&self.key, branch_source.as_bytes())[..10]);
        let via = format!(
            "SIP/2.0/{via_transport} {};branch={BRANCH_PREFIX}{branch}",
            self.local
        );
        let creates_dialog = message.to_tag().is_none()
            && matches!(
                message.method(),
                Method::Invite | Method::Subscribe | Method::Refer
            );
        let record_route = creates_dialog.then(|| {
            let token = top.uri.user().unwrap_or_default();
            // As the Path entry: the plain address, over TCP for streams.
            let transport = if destination.is_reliable() {
                ";transport=tcp"
            } else {
                ""
            };
            format!("<sip:{token}@{}{transport};lr>", self.local)
        });
        let headers = forwarded_headers(message, &via, record_route);
        let start = format!("{} {request_uri} SIP/2.0", message.method());
        let forwarded = SipMessage::from_parts(&start, headers, message.body().to_vec()).ok()?;
        Some(Routed::Forward(Outbound {
            destination,
            bytes: forwarded.bytes().to_vec(),
        }))
    }

    /// A response to a request this node forwarded: without its Via, to
    /// the next Via's address (received and rport honoured). `None`: not
    /// one of ours.
    pub fn route_response(&self, message: &SipMessage) -> Option<Outbound> {
        let top = message.top_via();
        let ours = top
            .branch()
            .is_some_and(|b| b.as_str().starts_with(BRANCH_PREFIX))
            && self.is_local_via(top);
        if !ours {
            return None;
        }
        // The next Via was stamped when the request arrived here: its
        // received and rport say where it came from (the flow the
        // response arrived on is the other side's).
        let next = message.vias().get(1)?;
        let remote = SocketAddr::new(
            next.received().or_else(|| next.host.ip())?,
            next.rport()
                .or(next.port)
                .unwrap_or_else(|| next.transport.default_port()),
        );
        let destination = Destination::over(&next.transport, remote);
        let headers = without_top_via(message.headers());
        let start = format!(
            "SIP/2.0 {} {}",
            message.status()?,
            message.reason().unwrap_or_default()
        );
        let forwarded = SipMessage::from_parts(&start, headers, message.body().to_vec()).ok()?;
        Some(Outbound {
            destination,
            bytes: forwarded.bytes().to_vec(),
        })
    }

    fn is_local_via(&self, via: &Via) -> bool {
        let sent_by = match via.port {
            Some(port) => format!("{}:{port}", via.host),
            None => via.host.to_string(),
        };
        sent_by.eq_ignore_ascii_case(&self.local)
    }
}

/// Whether `uri` is the node reached at `local` (`host:port`, the port
/// 5060 when absent on either side).
pub fn names(uri: &Uri, local: &str) -> bool {
    let Some(host) = uri.host() else {
        return false;
    };
    let port = uri.port().unwrap_or(5060);
    let (local_host, local_port) = match local.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) && !port.is_empty() => {
            (host, port.parse().unwrap_or(5060))
        }
        _ => (local, 5060),
    };
    port == local_port && host.to_string().eq_ignore_ascii_case(local_host)
}

/// The route and first hop of a request to a registered contact: its
/// binding's Path is the route (RFC 3327); a first entry naming this node
/// (the phone registered here) is dropped and the request goes straight
/// to the phone's flow, otherwise to that entry (the node holding the
/// flow).
pub fn path_route(path: &[String], local: &str, flow: Destination) -> (Vec<String>, Destination) {
    let Some(first) = path.first().and_then(|p| NameAddr::parse(p).ok()) else {
        return (path.to_vec(), flow);
    };
    if names(&first.uri, local) {
        return (path[1..].to_vec(), flow);
    }
    match uri_destination(&first.uri) {
        Ok(destination) => (path.to_vec(), destination),
        Err(_) => (path.to_vec(), flow),
    }
}

/// The headers of a forwarded request: our Via first, the top Route entry
/// (ours) gone, Max-Forwards one less, our Record-Route on top when the
/// request makes a dialog.
fn forwarded_headers(message: &SipMessage, via: &str, record_route: Option<String>) -> Vec<Header> {
    let mut headers = Vec::with_capacity(message.headers().len() + 2);
    headers.push(Header {
        name: "Via".into(),
        value: via.into(),
    });
    if let Some(record_route) = record_route {
        headers.push(Header {
            name: "Record-Route".into(),
            value: record_route.into(),
        });
    }
    let mut route_popped = false;
    let mut via_stamped = false;
    let mut max_forwards_seen = false;
    for header in message.headers() {
        if header.name.eq_ignore_ascii_case("Via") && !via_stamped {
            // The previous hop's Via as stamped on arrival (received,
            // rport): the response goes back where the request came from.
            via_stamped = true;
            let mut items: Vec<String> = split_top_level_commas(&header.value)
                .unwrap_or_default()
                .into_iter()
                .map(str::to_owned)
                .collect();
            if let Some(first) = items.first_mut() {
                *first = message.top_via().to_string();
            }
            headers.push(Header {
                name: header.name.clone(),
                value: items.join(", ").into(),
            });
        } else if header.name.eq_ignore_ascii_case("Route") && !route_popped {
            route_popped = true;
            let items = split_top_level_commas(&header.value).unwrap_or_default();
            if items.len() > 1 {
                headers.push(Header {
                    name: header.name.clone(),
                    value: items[1..].join(", ").into(),
                });
            }
        } else if header.name.eq_ignore_ascii_case("Max-Forwards") {
            max_forwards_seen = true;
            headers.push(Header {
                name: header.name.clone(),
                value: message.max_forwards().saturating_sub(1).to_string().into(),
            });
        } else {
            headers.push(header.clone());
        }
    }
    if !max_forwards_seen {
        headers.push(Header {
            name: "Max-Forwards".into(),
            value: "69".into(),
        });
    }
    headers
}

/// A response's headers without its top Via entry.
fn without_top_via(headers: &[Header]) -> Vec<Header> {
    let mut out = Vec::with_capacity(headers.len());
    let mut popped = false;
    for header in headers {
        if header.name.eq_ignore_ascii_case("Via") && !popped {
            popped = true;
            let items = split_top_level_commas(&header.value).unwrap_or_default();
            if items.len() > 1 {
                out.push(Header {
                    name: header.name.clone(),
                    value: items[1..].join(", ").into(),
                });
            }
        } else {
            out.push(header.clone());
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => hex(&v4.octets()),
        IpAddr::V6(v6) => hex(&v6.octets()),
    }
}

fn parse_hex_ip(text: &str) -> Option<IpAddr> {
    let bytes: Option<Vec<u8>> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect();
    match bytes?.as_slice() {
        &[a, b, c, d] => Some(IpAddr::from([a, b, c, d])),
        octets if octets.len() == 16 => {
            let array: [u8; 16] = octets.try_into().ok()?;
            Some(IpAddr::from(array))
        }
        _ => None,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::parse;

    const NODE1: &str = "192.0.2.1:5060";
    const PHONE: &str = "198.51.100.7:40000";
    const NODE2: &str = "192.0.2.2:5070";

    fn edge() -> Edge {
        Edge::new(NODE1, b"secret")
    }

    fn phone_flow() -> Flow {
        Flow::Udp {
            remote: PHONE.parse().expect("address"),
        }
    }

    fn node2_flow() -> Flow {
        Flow::Udp {
            remote: NODE2.parse().expect("address"),
        }
    }

    /// The Path entry without its angle brackets and parameters: the
    /// `sip:token@host:port` a Route carries.
    fn path_uri(entry: &str) -> String {
        NameAddr::parse(entry).expect("a name-addr").uri.to_string()
    }

    fn invite(route: &str, max_forwards: u32) -> SipMessage {
        let mut message = parse(
            format!(
                "INVITE sip:bob@10.0.0.7:5062 SIP/2.0\r\n\
                 Via: SIP/2.0/UDP {NODE2};branch=z9hG4bKnode2;rport\r\n\
                 Route: <{route};lr>\r\n\
                 Max-Forwards: {max_forwards}\r\n\
                 From: <sip:alice@example.com>;tag=a\r\n\
                 To: <sip:bob@example.com>\r\n\
                 Call-ID: c1\r\n\
                 CSeq: 1 INVITE\r\n\
                 Contact: <sip:b2bua@{NODE2}>\r\n\
                 Content-Length: 0\r\n\r\n"
            )
            .as_bytes(),
        )
        .expect("parses");
        message.stamp_received(NODE2.parse().expect("address"));
        message
    }

    fn forwarded(routed: Option<Routed>) -> (Destination, String) {
        match routed {
            Some(Routed::Forward(out)) => (
                out.destination,
                String::from_utf8(out.bytes).expect("UTF-8"),
            ),
            other => panic!("expected a forward, got {other:?}"),
        }
    }

    #[test]
    fn a_request_from_another_node_goes_to_the_phones_flow_with_this_node_record_routed() {
        let edge = edge();
        let route = path_uri(&edge.path_entry(&phone_flow()));
        let (destination, text) = forwarded(edge.route_request(
            &invite(&route, 70),
            &node2_flow(),
            "sip:bob@10.0.0.7:5062",
        ));
        assert_eq!(
            destination,
            Destination::Udp(PHONE.parse().expect("address"))
        );
        assert!(text.starts_with("INVITE sip:bob@10.0.0.7:5062 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-sbedge-"), "{text}");
        assert!(text.contains("\r\nVia: SIP/2.0/UDP 192.0.2.2:5070;branch=z9hG4bKnode2;rport=5070;received=192.0.2.2\r\n") || text.contains("\r\nVia: SIP/2.0/UDP 192.0.2.2:5070;branch=z9hG4bKnode2;rport=5070\r\n"), "the previous hop's Via, stamped: {text}");
        assert!(
            !text.contains("\r\nRoute:"),
            "our Route entry is consumed: {text}"
        );
        assert!(text.contains("\r\nMax-Forwards: 69\r\n"), "{text}");
        let token = route
            .trim_start_matches("sip:")
            .split('@')
            .next()
            .expect("user");
        assert!(
            text.contains(&format!("\r\nRecord-Route: <sip:{token}@{NODE1};lr>\r\n")),
            "{text}"
        );
    }

    #[test]
    fn the_same_request_forwarded_twice_gets_the_same_branch() {
        let edge = edge();
        let route = path_uri(&edge.path_entry(&phone_flow()));
        let once = forwarded(edge.route_request(
            &invite(&route, 70),
            &node2_flow(),
            "sip:bob@10.0.0.7:5062",
        ))
        .1;
        let again = forwarded(edge.route_request(
            &invite(&route, 70),
            &node2_flow(),
            "sip:bob@10.0.0.7:5062",
        ))
        .1;
        let branch = |t: &str| t.lines().nth(1).expect("our Via").to_owned();
        assert_eq!(
            branch(&once),
            branch(&again),
            "a retransmission or CANCEL matches"
        );
    }

    #[test]
    fn a_request_from_the_phones_own_flow_goes_on_to_its_request_uri() {
        let edge = edge();
        let route = path_uri(&edge.path_entry(&phone_flow()));
        let mut bye = invite(&route, 70);
        bye.stamp_received(PHONE.parse().expect("address"));
        let (destination, _) =
            forwarded(edge.route_request(&bye, &phone_flow(), &format!("sip:b2bua@{NODE2}")));
        assert_eq!(
            destination,
            Destination::Udp(NODE2.parse().expect("address"))
        );
    }

    #[test]
    fn a_forged_or_foreign_token_is_not_routed() {
        let edge = edge();
        let route = path_uri(&edge.path_entry(&phone_flow()));
        // One hex digit of the address changed: the MAC no longer matches.
        let forged = route.replacen("sip:uc6", "sip:uc7", 1);
        assert_ne!(
            forged, route,
            "the token starts with the UDP kind and 198's hex"
        );
        assert_eq!(
            edge.route_request(&invite(&forged, 70), &node2_flow(), "sip:bob@10.0.0.7"),
            None
        );
        let other = Edge::new(NODE1, b"another secret");
        assert_eq!(
            other.route_request(&invite(&route, 70), &node2_flow(), "sip:bob@10.0.0.7"),
            None
        );
        // A Route to another host is not ours either.
        let elsewhere = route.replace(NODE1, "192.0.2.9:5060");
        assert_eq!(
            edge.route_request(&invite(&elsewhere, 70), &node2_flow(), "sip:bob@10.0.0.7"),
            None
        );
    }

    #[test]
    fn a_request_out_of_hops_is_refused_483() {
        let edge = edge();
        let route = path_uri(&edge.path_entry(&phone_flow()));
        assert_eq!(
            edge.route_request(&invite(&route, 0), &node2_flow(), "sip:bob@10.0.0.7"),
            Some(Routed::Refuse(483, "Too Many Hops"))
        );
    }

    #[test]
    fn a_response_loses_this_nodes_via_and_goes_where_the_request_came_from() {
        let edge = edge();
        let route = path_uri(&edge.path_entry(&phone_flow()));
        let (_, request) = forwarded(edge.route_request(
            &invite(&route, 70),
            &node2_flow(),
            "sip:bob@10.0.0.7:5062",
        ));
        let vias: Vec<&str> = request.lines().filter(|l| l.starts_with("Via:")).collect();
        let response = parse(
            format!(
                "SIP/2.0 180 Ringing\r\n{}\r\n{}\r\nFrom: <sip:alice@example.com>;tag=a\r\n\
                 To: <sip:bob@example.com>;tag=b\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
                vias[0], vias[1]
            )
            .as_bytes(),
        )
        .expect("parses");
        let out = edge.route_response(&response).expect("ours");
        assert_eq!(
            out.destination,
            Destination::Udp(NODE2.parse().expect("address"))
        );
        let text = String::from_utf8(out.bytes).expect("UTF-8");
        assert!(
            text.starts_with(
                "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 192.0.2.2:5070;branch=z9hG4bKnode2"
            ),
            "{text}"
        );
        assert_eq!(text.matches("Via:").count(), 1, "{text}");
        // A response to the node's own transaction is not the edge's.
        let own = parse(
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKown\r\n\
              From: <sip:a@x>;tag=a\r\nTo: <sip:b@x>;tag=b\r\nCall-ID: c2\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        )
        .expect("parses");
        assert_eq!(edge.route_response(&own), None);
    }

    #[test]
    fn a_path_naming_this_node_is_dropped_and_another_nodes_is_the_first_hop() {
        let edge = edge();
        let entry = edge.path_entry(&phone_flow());
        let flow = Destination::Udp(PHONE.parse().expect("address"));
        let (route, destination) = path_route(std::slice::from_ref(&entry), NODE1, flow);
        assert!(route.is_empty());
        assert_eq!(
            destination, flow,
            "the phone registered here: straight to its flow"
        );
        let (route, destination) = path_route(std::slice::from_ref(&entry), NODE2, flow);
        assert_eq!(route, [entry]);
        assert_eq!(
            destination,
            Destination::Udp(NODE1.parse().expect("address")),
            "through node 1"
        );
    }
}
