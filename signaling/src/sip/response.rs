//! Building responses (RFC 3261 §8.2.6) and choosing where they go
//! (§18.2.2 with RFC 3581).
//!
//! The bytes are written here, from the request's parsed parts, so that
//! IPv6 Vias, `tel:` URIs and extension methods come out exactly as
//! received; [`response_message`] also returns the value beside them.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::header::{Header, HeaderValue, Transport, Via};
use super::message::{write_message, Parsed, SipMessage, StartLine, Tag};
use super::parse::ParseError;
use super::uri::{NameAddr, Param};
use super::validate::Rejection;
use super::Method;

/// Removes what may not appear in a reason phrase (CR, LF, other controls)
/// and bounds its length.
pub(crate) fn sanitize_reason(reason: &str) -> String {
    reason
        .chars()
        .filter(|c| !c.is_control())
        .take(128)
        .collect()
}

/// The To tag a response carries: the caller's, else one derived from the
/// request so that retransmissions get the same tag.
fn choose_tag(explicit: Option<&Tag>, call_id: &str, from_tag: &str, branch: &str) -> Tag {
    explicit
        .cloned()
        .unwrap_or_else(|| Tag::stateless(call_id, from_tag, branch))
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `;tag=` to a To value that has none (`has_tag` false), unless
/// the status is 100; `None`: the value stays as it is.
fn to_with_tag(to: &str, has_tag: bool, status: u16, tag: impl FnOnce() -> Tag) -> Option<String> {
    (status != 100 && !has_tag).then(|| format!("{to};tag={}", tag()))
}

/// Builds a response without a body. See [`build_response_with_body`].
pub fn build_response(
    request: &SipMessage,
    status: u16,
    reason: &str,
    to_tag: Option<&Tag>,
    extra_headers: &[(String, String)],
) -> Vec<u8> {
    build_response_with_body(request, status, reason, to_tag, extra_headers, None)
}

/// Builds the response to a [`Rejection`] from
/// [`check_request`](super::check_request).
pub fn build_rejection(request: &SipMessage, rejection: &Rejection) -> Vec<u8> {
    build_response(
        request,
        rejection.status,
        &rejection.reason,
        None,
        &rejection.extra_headers,
    )
}

/// Builds a response to `request` per RFC 3261 §8.2.6:
///
/// * every Via in order, as stamped by
///   [`SipMessage::stamp_received`] (so `received`/`rport` are echoed);
/// * From, Call-ID and CSeq copied; To copied, with a tag added when the
///   request had none and the status is not 100. The tag is `to_tag` when
///   given (the dialog's local tag), otherwise one derived from the request;
/// * Record-Route copied for 101 to 299 to dialog-creating requests (§12.1.1)
///   and Timestamp for 100 (§8.2.6.1);
/// * `extra_headers`, then Content-Type and Content-Length for `body`
///   (`(content type, octets)`).
pub fn build_response_with_body(
    request: &SipMessage,
    status: u16,
    reason: &str,
    to_tag: Option<&Tag>,
    extra_headers: &[(String, String)],
    body: Option<(&str, &[u8])>,
) -> Vec<u8> {
    response_message(request, status, reason, to_tag, extra_headers, body)
        .bytes()
        .to_vec()
}

/// [`build_response_with_body`] as a message value with its octets, which
/// is what a server transaction keeps and retransmits.
pub fn response_message(
    request: &SipMessage,
    status: u16,
    reason: &str,
    to_tag: Option<&Tag>,
    extra_headers: &[(String, String)],
    body: Option<(&str, &[u8])>,
) -> SipMessage {
    let reason = sanitize_reason(reason);
    let start_line = format!("SIP/2.0 {status} {reason}");
    let mut headers = Vec::with_capacity(8 + request.vias().len() + extra_headers.len());
    let mut push =
        |name: Cow<'static, str>, value: HeaderValue| headers.push(Header { name, value });
    // The request's own values, shared with its octets rather than copied.
    let copied = |name: &str| {
        request
            .first_header(name)
            .map_or_else(|| HeaderValue::from(String::new()), |h| h.value.clone())
    };
    for via in request.vias() {
        // Sized once: written piece by piece into an empty string, a Via
        // grew it four or five times.
        let mut value = String::with_capacity(160);
        let _ = write!(value, "{via}");
        push("Via".into(), value.into());
    }
    push("From".into(), copied("From"));
    let mut added_tag = None;
    let to_value = copied("To");
    let has_tag = request.to().has_tag();
    let to = to_with_tag(&to_value, has_tag, status, || {
        let tag = choose_tag(
            to_tag,
            request.call_id().as_str(),
            request.from_tag().as_ref().map_or("", Tag::as_str),
            request
                .top_via()
                .branch()
                .as_ref()
                .map_or("", |b| b.as_str()),
        );
        added_tag = Some(tag.clone());
        tag
    });
    push("To".into(), to.map_or(to_value, HeaderValue::from));
    push(
        "Call-ID".into(),
        request.call_id().as_str().to_owned().into(),
    );
    push("CSeq".into(), request.cseq().to_string().into());
    let creates_dialog = matches!(
        request.method(),
        Method::Invite | Method::Subscribe | Method::Refer | Method::Notify
    );
    if (101..300).contains(&status) && creates_dialog {
        for route in request.headers_named("Record-Route") {
            push("Record-Route".into(), route.value.clone());
        }
    }
    if status == 100 {
        if let Some(timestamp) = request.first_header("Timestamp") {
            push("Timestamp".into(), timestamp.value.clone());
        }
    }
    for (name, value) in extra_headers {
        push(Cow::Owned(name.clone()), value.clone().into());
    }
    let (content_type, body) = body.map_or((None, &[][..]), |(t, b)| (Some(t), b));
    if let Some(content_type) = content_type {
        push("Content-Type".into(), content_type.to_owned().into());
    }
    push("Content-Length".into(), body.len().to_string().into());

    // The value is assembled from the request's, not read back from the
    // text: only the To tag and the Contacts are new.
    let mut to = request.to().clone();
    if let Some(tag) = added_tag {
        to.params.push(Param {
            name: Cow::Borrowed("tag"),
            value: Some(tag.as_str().to_owned()),
        });
    }
    let contacts = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("Contact"))
        .filter_map(|h| NameAddr::parse(&h.value).ok())
        .collect();
    let bytes = write_message(&start_line, &headers, body);
    SipMessage {
        parsed: Arc::new(Parsed {
            start: StartLine::Response { status, reason },
            headers,
            body_len: body.len(),
            vias: Arc::clone(&request.parsed.vias),
            from: Arc::clone(&request.parsed.from),
            to,
            call_id: request.call_id().clone(),
            cseq: request.cseq().clone(),
            max_forwards: None,
            contacts,
            contact_wildcard: false,
        }),
        bytes: bytes.into(),
    }
}

/// Builds the response to a request that failed to parse, from the headers
/// the error salvaged (copied as received; the To tag is derived from the
/// request). `None` when no response may be sent: responses, ACKs,
/// messages without a Via, keep-alives.
pub fn build_error_response(error: &ParseError) -> Option<Vec<u8>> {
    if !error.can_respond() {
        return None;
    }
    let status = error.status()?;
    let salvaged = error.salvaged_headers();
    let value = |name: &str| {
        salvaged
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value.as_str())
    };
    let from_tag = value("From")
        .and_then(|f| NameAddr::parse(f).ok())
        .and_then(|f| f.tag());
    let branch = error.top_via().and_then(|v| v.branch());
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(format!("SIP/2.0 {status} {}\r\n", error.reason_phrase()).as_bytes());
    for header in salvaged {
        if header.name == "To" {
            let has_tag = NameAddr::parse(&header.value).map_or(true, |to| to.has_tag());
            let to = to_with_tag(&header.value, has_tag, status, || {
                choose_tag(
                    None,
                    value("Call-ID").unwrap_or_default(),
                    from_tag.as_ref().map_or("", Tag::as_str),
                    branch.as_ref().map_or("", |b| b.as_str()),
                )
            });
            push_header(&mut out, "To", to.as_deref().unwrap_or(&header.value));
        } else {
            push_header(&mut out, &header.name, &header.value);
        }
    }
    push_header(&mut out, "Content-Length", "0");
    out.extend_from_slice(b"\r\n");
    Some(out)
}

/// Returns where a response goes (RFC 3261 §18.2.2, RFC 3581 §4).
///
/// `source` is the address the request came from and `transport` the
/// transport it came on. On reliable transports the response goes back
/// over the same connection, i.e. to `source`. Otherwise it goes to the
/// `received` address (or the sent-by address, or `source` when sent-by
/// is a name) at the `rport` port when the client asked for it, else the
/// sent-by port, else the transport's default port. `maddr` (multicast) is
/// not honoured: the response goes where the request came from instead.
pub fn response_destination(
    top_via: &Via,
    source: SocketAddr,
    transport: &Transport,
) -> SocketAddr {
    if transport.is_reliable() {
        return source;
    }
    let ip: IpAddr = top_via
        .received()
        .or_else(|| top_via.host.ip())
        .unwrap_or_else(|| source.ip());
    let port = if top_via.has_rport() {
        top_via.rport().unwrap_or(source.port())
    } else {
        top_via.port.unwrap_or_else(|| transport.default_port())
    };
    SocketAddr::new(ip, port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::parse;
    use crate::sip::uri::split_top_level_commas;

    /// Returns every Via value of a response, one per comma-separated item.
    fn via_values(response: &[u8]) -> Vec<String> {
        String::from_utf8_lossy(response)
            .split("\r\n")
            .filter_map(|line| line.strip_prefix("Via: "))
            .flat_map(|v| {
                split_top_level_commas(v)
                    .expect("balanced")
                    .into_iter()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    const INVITE: &str = "INVITE sip:bob@example.com SIP/2.0\r\n\
        v: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bKtop;rport\r\n\
        Via: SIP/2.0/TCP [2001:db8::9:1]:6050;branch=z9hG4bKmid, SIP/2.0/UDP proxy.example.net;branch=z9hG4bKlow\r\n\
        f: \"Alice\" <sip:alice@example.com>;tag=a1\r\n\
        t: <tel:+15551234>\r\n\
        i: call-1@example.com\r\n\
        CSeq: 7 INVITE\r\n\
        Record-Route: <sip:p1.example.net;lr>\r\n\
        Record-Route: <sip:p2.example.net;lr>\r\n\
        Timestamp: 54\r\n\
        l: 0\r\n\r\n";

    fn invite() -> SipMessage {
        parse(INVITE.as_bytes()).expect("test INVITE parses")
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8(bytes.to_vec()).expect("responses are UTF-8")
    }

    #[test]
    fn response_copies_vias_in_order_and_adds_to_tag() {
        let response = text(&build_response(
            &invite(),
            486,
            "Busy Here",
            Some(&Tag::new("b2")),
            &[],
        ));
        assert_eq!(
            response,
            "SIP/2.0 486 Busy Here\r\n\
             Via: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bKtop;rport\r\n\
             Via: SIP/2.0/TCP [2001:db8::9:1]:6050;branch=z9hG4bKmid\r\n\
             Via: SIP/2.0/UDP proxy.example.net;branch=z9hG4bKlow\r\n\
             From: \"Alice\" <sip:alice@example.com>;tag=a1\r\n\
             To: <tel:+15551234>;tag=b2\r\n\
             Call-ID: call-1@example.com\r\n\
             CSeq: 7 INVITE\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let reparsed = parse(response.as_bytes()).expect("our response parses");
        assert_eq!(reparsed.to_tag(), Some(Tag::new("b2")));
        assert_eq!(reparsed.vias().len(), 3);
    }

    #[test]
    fn trying_has_no_to_tag_but_echoes_timestamp() {
        let response = text(&build_response(&invite(), 100, "Trying", None, &[]));
        assert!(
            response.contains("\r\nTo: <tel:+15551234>\r\n"),
            "{response}"
        );
        assert!(response.contains("\r\nTimestamp: 54\r\n"), "{response}");
        assert!(!response.contains("Record-Route"), "{response}");
    }

    #[test]
    fn ok_copies_record_route_and_body() {
        let response = text(&build_response_with_body(
            &invite(),
            200,
            "OK",
            Some(&Tag::new("b2")),
            &[("Contact".to_owned(), "<sip:sb@192.0.2.1>".to_owned())],
            Some(("application/sdp", b"v=0\r\n")),
        ));
        assert!(
            response.contains(
                "Record-Route: <sip:p1.example.net;lr>\r\nRecord-Route: <sip:p2.example.net;lr>\r\nContact: <sip:sb@192.0.2.1>\r\nContent-Type: application/sdp\r\nContent-Length: 5\r\n\r\nv=0\r\n"
            ),
            "{response}"
        );
    }

    #[test]
    fn derived_to_tag_is_stable_and_kept_when_present() {
        let first = text(&build_response(&invite(), 404, "Not Found", None, &[]));
        let second = text(&build_response(&invite(), 404, "Not Found", None, &[]));
        assert_eq!(first, second, "retransmissions get the same tag");
        let tag = Tag::stateless("call-1@example.com", "a1", "z9hG4bKtop");
        assert!(
            first.contains(&format!("To: <tel:+15551234>;tag={tag}\r\n")),
            "{first}"
        );

        let in_dialog = parse(
            INVITE
                .replace("t: <tel:+15551234>", "t: <tel:+15551234>;tag=x9")
                .as_bytes(),
        )
        .expect("in-dialog request");
        let response = text(&build_response(
            &in_dialog,
            200,
            "OK",
            Some(&Tag::new("other")),
            &[],
        ));
        assert!(
            response.contains("To: <tel:+15551234>;tag=x9\r\n"),
            "{response}"
        );
    }

    #[test]
    fn stamping_adds_received_and_fills_rport() {
        let mut request = invite();
        let source: SocketAddr = "203.0.113.9:40000".parse().expect("literal");
        request.stamp_received(source);
        let response = build_response(&request, 200, "OK", None, &[]);
        assert_eq!(
            via_values(&response)[0],
            "SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bKtop;rport=40000;received=203.0.113.9"
        );
        assert_eq!(
            response_destination(request.top_via(), source, &Transport::Udp),
            source
        );
    }

    #[test]
    fn stamping_without_rport_adds_received_only_when_host_differs() {
        let same = "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.4:5070;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n";
        let mut request = parse(same.as_bytes()).expect("parses");
        request.stamp_received("192.0.2.4:5070".parse().expect("literal"));
        assert_eq!(
            request.top_via().to_string(),
            "SIP/2.0/UDP 192.0.2.4:5070;branch=z9hG4bK1"
        );
        request.stamp_received("[2001:db8::5]:5070".parse().expect("literal"));
        assert_eq!(
            request.top_via().to_string(),
            "SIP/2.0/UDP 192.0.2.4:5070;branch=z9hG4bK1;received=2001:db8::5"
        );
    }

    #[test]
    fn destination_rules() {
        let source: SocketAddr = "203.0.113.9:40000".parse().expect("literal");
        let via = |text: &str| Via::parse(text).expect("test Via parses");
        assert_eq!(
            response_destination(&via("SIP/2.0/TCP 192.0.2.1:5070"), source, &Transport::Tcp),
            source,
            "reliable transports answer on the connection"
        );
        assert_eq!(
            response_destination(&via("SIP/2.0/UDP 192.0.2.1:5070"), source, &Transport::Udp),
            "192.0.2.1:5070".parse().expect("literal"),
            "sent-by when no received"
        );
        assert_eq!(
            response_destination(
                &via("SIP/2.0/UDP 192.0.2.1:5070;received=203.0.113.9"),
                source,
                &Transport::Udp
            ),
            "203.0.113.9:5070".parse().expect("literal"),
            "received address, sent-by port"
        );
        assert_eq!(
            response_destination(
                &via("SIP/2.0/UDP 192.0.2.1;received=203.0.113.9;rport=40001"),
                source,
                &Transport::Udp
            ),
            "203.0.113.9:40001".parse().expect("literal"),
            "rport value wins"
        );
        assert_eq!(
            response_destination(
                &via("SIP/2.0/UDP host.example.com;rport"),
                source,
                &Transport::Udp
            ),
            source,
            "empty rport and a name: source address and port"
        );
        assert_eq!(
            response_destination(&via("SIP/2.0/UDP [2001:db8::1]"), source, &Transport::Udp),
            "[2001:db8::1]:5060".parse().expect("literal"),
            "IPv6 sent-by, default port"
        );
    }

    #[test]
    fn error_response_copies_salvaged_headers() {
        let error = parse(
            b"INVITE sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKx\r\nCSeq: 5 INVITE\r\nTo: <sip:a@example.com>\r\nl: 0\r\n\r\n",
        )
        .expect_err("no From or Call-ID");
        assert_eq!(error.status(), Some(400));
        let response =
            text(&build_error_response(&error).expect("a request with a Via is answered"));
        let tag = Tag::stateless("", "", "z9hG4bKx");
        assert_eq!(
            response,
            format!(
                "SIP/2.0 400 Bad Request (missing From header)\r\n\
                 Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKx\r\n\
                 CSeq: 5 INVITE\r\n\
                 To: <sip:a@example.com>;tag={tag}\r\n\
                 Content-Length: 0\r\n\r\n"
            )
        );
    }

    #[test]
    fn error_responses_are_never_sent_for_acks_or_responses() {
        let ack = parse(b"ACK sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n")
            .expect_err("ACK without From");
        assert_eq!(build_error_response(&ack), None);
        let response = parse(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n")
            .expect_err("response without From");
        assert_eq!(build_error_response(&response), None);
    }
}
