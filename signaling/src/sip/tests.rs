//! Conformance corpora (RFC 4475, RFC 5118), end-to-end tests of what the
//! parser reads around the common gaps of SIP libraries (compact names,
//! folding, IPv6, extension methods) and of the one message form (value and
//! octets) the server carries.

use std::net::IpAddr;
use std::path::PathBuf;

use super::*;

fn corpus_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/sip")
        .join(name)
}

/// Reads a corpus file from the directory or its `valid/`/`invalid/` subdirectory.
fn corpus_file(corpus: &str, file: &str) -> Vec<u8> {
    let dir = corpus_dir(corpus);
    ["", "valid", "invalid"]
        .iter()
        .map(|sub| dir.join(sub).join(file))
        .find(|path| path.is_file())
        .map(|path| {
            std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        })
        .unwrap_or_else(|| panic!("{corpus}/{file} not found"))
}

fn accepted(corpus: &str, file: &str) -> SipMessage {
    match classify(&corpus_file(corpus, file)) {
        Outcome::Accept(message) => *message,
        other => panic!("{corpus}/{file} should be accepted, got {other:?}"),
    }
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Accept(_) => "accept".to_owned(),
        Outcome::Reject { status, .. } => status.to_string(),
        Outcome::Discard => "discard".to_owned(),
    }
}

/// Runs every row of a corpus' expected.tsv through `classify`.
fn check_corpus(corpus: &str, expected_rows: usize) {
    let tsv_path = corpus_dir(corpus).join("expected.tsv");
    let tsv = std::fs::read_to_string(&tsv_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", tsv_path.display()));
    let mut rows = 0;
    let mut failures = Vec::new();
    for line in tsv.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let columns: Vec<&str> = line.split('\t').collect();
        let (file, expected) = (columns[0], columns[3]);
        rows += 1;
        let outcome = classify(&corpus_file(corpus, file));
        let got = describe(&outcome);
        if !expected.split('|').any(|allowed| allowed == got) {
            failures.push(format!("{corpus}/{file}: expected {expected}, got {got}"));
            continue;
        }
        if let Outcome::Reject { status, response } = &outcome {
            // Salvaged headers are echoed as received, so a reply to a
            // malformed Via need not parse; its status line and framing must.
            let text = String::from_utf8_lossy(response);
            assert!(
                text.starts_with(&format!("SIP/2.0 {status} ")) && text.ends_with("\r\n\r\n"),
                "{corpus}/{file}: malformed {status} response:\n{text}"
            );
            let frame = frame_datagram(response)
                .unwrap_or_else(|e| panic!("{corpus}/{file}: response does not frame: {e}"));
            assert!(
                frame.body.is_empty(),
                "{corpus}/{file}: error responses have no body"
            );
        }
    }
    assert!(
        failures.is_empty(),
        "corpus failures:\n{}",
        failures.join("\n")
    );
    assert_eq!(rows, expected_rows, "{corpus}: row count");
}

#[test]
fn rfc4475_every_row_has_an_allowed_outcome() {
    check_corpus("rfc4475", 50);
}

#[test]
fn rfc5118_every_row_has_an_allowed_outcome() {
    check_corpus("rfc5118", 12);
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test literal is an IP address")
}

#[test]
fn wsinv_folding_compact_names_and_odd_lws() {
    let m = accepted("rfc4475", "wsinv.dat");
    assert_eq!(*m.method(), Method::Invite);
    assert_eq!(m.max_forwards(), 68);
    assert_eq!(
        m.cseq(),
        &CSeq {
            seq: 9,
            method: Method::Invite
        }
    );
    assert_eq!(m.call_id().as_str(), "wsinv.ndaksdj@192.0.2.1");
    assert_eq!(m.vias().len(), 3);
    assert_eq!(m.top_via().host, Host::Ip(ip("192.0.2.2")));
    assert_eq!(m.top_via().transport, Transport::Udp);
    assert_eq!(m.top_via().branch(), Some(Branch::new("390skdjuw")));
    assert_eq!(
        m.vias()[1].host,
        Host::Domain("spindle.example.com".to_owned())
    );
    assert_eq!(m.vias()[1].transport, Transport::Tcp);
    assert_eq!(m.vias()[2].branch(), Some(Branch::new("z9hG4bK30239")));
    assert_eq!(m.to_tag(), Some(Tag::new("1918181833n")));
    assert_eq!(m.from_tag(), Some(Tag::new("98asjd8")));
    assert_eq!(m.from().display_name.as_deref(), Some("J Rosenberg \\\""));
    let contact = &m.contacts()[0];
    assert_eq!(contact.display_name.as_deref(), Some("Quoted string \"\""));
    assert_eq!(contact.q(), Some(330));
    assert_eq!(contact.param("newparam"), Some(Some("newvalue".to_owned())));
    assert_eq!(contact.param("secondparam"), Some(None));
    assert_eq!(m.header("Subject"), Some(""));
    assert_eq!(m.header("s"), Some(""));
    assert_eq!(
        m.header("newfangledheader"),
        Some("newfangled value continued newfangled value")
    );
    assert_eq!(m.header("UnknownHeaderWithUnusualValue"), Some(";;,,;;,;"));
    assert_eq!(m.media_type().as_deref(), Some("application/sdp"));
    assert_eq!(m.content_length(), 150);
    assert!(m.bytes().starts_with(b"INVITE "), "octets as received");
}

#[test]
fn esc01_escapes_decode_once() {
    let m = accepted("rfc4475", "esc01.dat");
    let uri = m.request_uri().expect("request");
    assert_eq!(uri.user().as_deref(), Some("sips:user@example.com"));
    assert_eq!(uri.user_raw(), Some("sips%3Auser%40example.com"));
    assert_eq!(uri.host(), Some(&Host::Domain("example.net".to_owned())));
    assert_eq!(m.to().uri.user().as_deref(), Some("user"));
    assert_eq!(m.from().uri.user().as_deref(), Some("I have spaces"));
    let contact = &m.contacts()[0].uri;
    assert_eq!(contact.user().as_deref(), Some("caller"));
    assert_eq!(contact.param("lr"), Some(None));
    assert_eq!(contact.param("name"), Some(Some("value%41".to_owned())));
}

#[test]
fn escnull_keeps_two_distinct_contacts() {
    let m = accepted("rfc4475", "escnull.dat");
    let users: Vec<Option<String>> = m.contacts().iter().map(|c| c.uri.user()).collect();
    assert_eq!(users, vec![Some("\0".to_owned()), Some("\0\0".to_owned())]);
    assert_eq!(m.to().uri.user().as_deref(), Some("null-\0-null"));
}

#[test]
fn semiuri_user_holds_semicolon() {
    let m = accepted("rfc4475", "semiuri.dat");
    let uri = m.request_uri().expect("request");
    assert_eq!(uri.user().as_deref(), Some("user;par=u@example.net"));
    assert_eq!(uri.host(), Some(&Host::Domain("example.com".to_owned())));
    assert_eq!(uri.params(), &[]);
    assert_eq!(m.header_list("Accept").len(), 6);
}

#[test]
fn extension_methods_are_representable() {
    let m = accepted("rfc4475", "intmeth.dat");
    assert_eq!(
        *m.method(),
        Method::Extension("!interesting-Method0123456789_*+`.%indeed'~".to_owned())
    );
    assert_eq!(m.cseq().method, *m.method());
    assert_eq!(m.cseq().seq, 139_122_385);
    assert_eq!(
        m.call_id().as_str(),
        "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    );
    assert_eq!(
        m.to().display_name.as_deref(),
        Some("BEL:\u{7} NUL:\0 DEL:\u{7f}")
    );

    let esc02 = accepted("rfc4475", "esc02.dat");
    assert_eq!(esc02.method().as_str(), "RE%47IST%45R");
    assert_eq!(esc02.contacts().len(), 2);
    assert_eq!(
        esc02.header("C%6Fntact"),
        Some("<sip:alias2@host2.example.com>")
    );
}

#[test]
fn long_values_and_many_vias() {
    let m = accepted("rfc4475", "longreq.dat");
    assert_eq!(m.vias().len(), 34);
    assert_eq!(
        m.top_via().host,
        Host::Domain("sip33.example.com".to_owned())
    );
    assert_eq!(m.vias()[33].received(), Some(ip("192.0.2.5")));
    assert_eq!(m.content_length(), 150);
}

#[test]
fn datagram_tail_and_binary_body() {
    let dblreq = accepted("rfc4475", "dblreq.dat");
    assert_eq!(*dblreq.method(), Method::Register);
    assert!(dblreq.body().is_empty());
    let mpart = accepted("rfc4475", "mpart01.dat");
    assert_eq!(mpart.content_length(), 553);
    assert!(mpart.body().ends_with(b"--7a9cbec02ceef655--\r\n"));
}

/// Header values written as they read are ranges of the message's octets,
/// not copies; a folded value, or a section that is not UTF-8, is read
/// into text of its own. The body is the octets' tail either way.
#[test]
fn header_values_share_the_messages_octets_unless_rewritten() {
    let head = "OPTIONS sip:bob@example.com SIP/2.0\r\n\
        Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKshare\r\n\
        From: <sip:alice@example.com>;tag=a\r\n\
        To: <sip:bob@example.com>\r\n\
        Call-ID: share\r\n\
        CSeq: 1 OPTIONS\r\n\
        Subject: first\r\n  second\r\n\
        Content-Length: 4\r\n\r\n";
    let m = parse(format!("{head}body").as_bytes()).expect("parses");
    let octets = m.bytes().as_ptr_range();
    let call_id = m.header("Call-ID").expect("Call-ID");
    assert_eq!(call_id, "share");
    assert!(octets.contains(&call_id.as_ptr()), "Call-ID was copied");
    let subject = m.header("Subject").expect("Subject");
    assert_eq!(subject, "first second");
    assert!(!octets.contains(&subject.as_ptr()));
    assert_eq!(m.body(), b"body");
    assert_eq!(m.content_length(), 4);

    let mut latin1 = head.replace("Subject: first\r\n  second", "Subject: caf\u{e9}");
    latin1.push_str("body");
    let mut octets = latin1.into_bytes();
    let at = octets
        .windows(2)
        .position(|w| w == "\u{e9}".as_bytes())
        .expect("é");
    // é in Latin-1, as an old phone might write it: not UTF-8.
    octets.splice(at..at + 2, [0xe9]);
    let m = parse(&octets).expect("parses");
    assert_eq!(m.header("Subject"), Some("caf\u{fffd}"));
    assert_eq!(m.header("Call-ID"), Some("share"));
    assert_eq!(m.body(), b"body");
}

/// Header lines are joined with their continuations by one SP; the start
/// line is never continued, so an indented line right after it stands
/// alone; a continuation of only LWS adds nothing; bare LFs end lines.
#[test]
fn logical_lines_join_continuations_of_header_lines_only() {
    let text = "INVITE sip:a@b SIP/2.0\r\n  stray\r\n\tmore\r\nSubject: one \r\n\t two\r\n   \r\nTo: <sip:b@c>\nCall-ID: x\r\n";
    let lines: Vec<String> = super::parse::LogicalLines::new(text)
        .map(|line| line.into_owned())
        .collect();
    assert_eq!(
        lines,
        [
            "INVITE sip:a@b SIP/2.0",
            "  stray more",
            "Subject: one two",
            "To: <sip:b@c>",
            "Call-ID: x",
            "",
        ]
    );
}

#[test]
fn transports_and_rfc2543_request() {
    let m = accepted("rfc4475", "transports.dat");
    let transports: Vec<Transport> = m.vias().iter().map(|v| v.transport.clone()).collect();
    assert_eq!(
        transports,
        vec![
            Transport::Udp,
            Transport::Sctp,
            Transport::Tls,
            Transport::Other("UNKNOWN".to_owned()),
            Transport::Tcp
        ]
    );
    let old = accepted("rfc4475", "inv2543.dat");
    assert_eq!(old.from_tag(), None);
    assert_eq!(old.top_via().branch(), None);
    assert!(!old.has_max_forwards());
    assert_eq!(old.max_forwards(), DEFAULT_MAX_FORWARDS);
    // Without <>, ';user=phone' belongs to the header, not the URI.
    assert_eq!(old.to().param("user"), Some(Some("phone".to_owned())));
    assert_eq!(old.to().uri.param("user"), None);
}

#[test]
fn contact_params_inside_and_outside_brackets() {
    let outside = accepted("rfc4475", "cparam01.dat");
    assert_eq!(outside.contacts()[0].param("unknownparam"), Some(None));
    assert_eq!(outside.contacts()[0].uri.param("unknownparam"), None);
    let inside = accepted("rfc4475", "cparam02.dat");
    assert_eq!(inside.contacts()[0].uri.param("unknownparam"), Some(None));
    assert_eq!(inside.contacts()[0].param("unknownparam"), None);
    let escaped = accepted("rfc4475", "regescrt.dat");
    assert_eq!(
        escaped.contacts()[0].uri.headers(),
        Some("Route=%3Csip:sip.example.com%3E")
    );
    assert_eq!(
        escaped.contacts()[0].uri.to_string(),
        "sip:user@example.com?Route=%3Csip:sip.example.com%3E"
    );
}

#[test]
fn responses_with_odd_reason_phrases() {
    let unreason = accepted("rfc4475", "unreason.dat");
    assert_eq!(unreason.status(), Some(200));
    assert!(unreason
        .reason()
        .is_some_and(|r| r.starts_with("= 2**3 * 5**2 но")));
    assert_eq!(*unreason.method(), Method::Invite);
    let noreason = accepted("rfc4475", "noreason.dat");
    assert_eq!(noreason.status(), Some(100));
    assert_eq!(noreason.reason(), Some(""));
}

/// Found by fuzzing (sip_parse): bare CRs stayed in a header value, so
/// the message written back was another message.
#[test]
fn a_bare_cr_inside_a_header_value_makes_a_malformed_line() {
    let message = b"OPTIONS sip:a@example.com SIP/2.0\r\n\
        Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\nTo: <sip:a@example.com>\r\n\
        From: <sip:b@example.com>;tag=1\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\
        Subject: a\rInjected: b\r\nContent-Length: 0\r\n\r\n";
    let error = parse(message).expect_err("bare CR");
    assert_eq!(error.kind(), &ParseErrorKind::MalformedHeaderLine(6));
    assert_eq!(error.status(), Some(400));
    let fixed = String::from_utf8_lossy(message).replace("a\rInjected", "a Injected");
    let accepted = parse(fixed.as_bytes()).expect("the same message without the CR");
    assert_eq!(accepted.header("Subject"), Some("a Injected: b"));
}

#[test]
fn rejections_carry_the_right_extras() {
    let Outcome::Reject { status, response } = classify(&corpus_file("rfc4475", "bext01.dat"))
    else {
        panic!("bext01 should be rejected");
    };
    assert_eq!(status, 420);
    let text = String::from_utf8(response).expect("UTF-8 response");
    assert!(
        text.contains("\r\nUnsupported: nothingSupportsThis, nothingSupportsThisEither\r\n"),
        "{text}"
    );
    let Outcome::Reject { status, response } = classify(&corpus_file("rfc4475", "badvers.dat"))
    else {
        panic!("badvers should be rejected");
    };
    assert_eq!(status, 505);
    let text = String::from_utf8(response).expect("UTF-8 response");
    assert!(text.starts_with("SIP/2.0 505 Version Not Supported\r\nVia: SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw\r\n"), "{text}");
    let Outcome::Reject { status, response } = classify(&corpus_file("rfc4475", "insuf.dat"))
    else {
        panic!("insuf should be rejected");
    };
    assert_eq!(status, 400);
    let reparsed_head = String::from_utf8(response).expect("UTF-8 response");
    assert!(
        reparsed_head.contains("CSeq: 193942 INVITE\r\n"),
        "{reparsed_head}"
    );
}

#[test]
fn rfc5118_ipv6_hosts() {
    let good = accepted("rfc5118", "ipv6-good.dat");
    assert_eq!(
        good.request_uri().and_then(Uri::host),
        Some(&Host::Ip(ip("2001:db8::10")))
    );
    assert_eq!(good.top_via().host, Host::Ip(ip("2001:db8::9:1")));
    assert_eq!(
        good.contacts()[0].uri.host(),
        Some(&Host::Ip(ip("2001:db8::1")))
    );

    let unambiguous = accepted("rfc5118", "port-unambiguous.dat");
    let uri = unambiguous.request_uri().expect("request");
    assert_eq!(uri.host(), Some(&Host::Ip(ip("2001:db8::10"))));
    assert_eq!(uri.port(), Some(5070));
    let ambiguous = accepted("rfc5118", "port-ambiguous.dat");
    let uri = ambiguous.request_uri().expect("request");
    assert_eq!(uri.host(), Some(&Host::Ip(ip("2001:db8::10:5070"))));
    assert_eq!(uri.port(), None);

    let mixed = accepted("rfc5118", "mult-ip-in-header.dat");
    let hops: Vec<(Host, Option<u16>)> = mixed
        .vias()
        .iter()
        .map(|v| (v.host.clone(), v.port))
        .collect();
    assert_eq!(
        hops,
        vec![
            (Host::Ip(ip("2001:db8::9:1")), Some(6050)),
            (Host::Ip(ip("192.0.2.1")), None),
            (Host::Ip(ip("2001:db8::9:255")), None),
        ]
    );
    assert_eq!(mixed.vias()[2].received(), Some(ip("192.0.2.200")));

    for file in [
        "via-received-param-with-delim.dat",
        "via-received-param-no-delim.dat",
    ] {
        let m = accepted("rfc5118", file);
        assert_eq!(
            m.top_via().received(),
            Some(ip("2001:db8::9:255")),
            "{file}"
        );
    }
    let mapped = accepted("rfc5118", "ipv4-mapped-ipv6.dat");
    assert_eq!(mapped.top_via().host, Host::Ip(ip("::ffff:192.0.2.10")));
    assert_eq!(mapped.top_via().port, Some(19823));
    let three = accepted("rfc5118", "ipv6-bug-abnf-3-colons.dat");
    assert_eq!(
        three.request_uri().and_then(Uri::host),
        Some(&Host::Ipv6Reference("2001:db8:::192.0.2.1".to_owned()))
    );
}

#[test]
fn ipv6_via_round_trips_into_responses() {
    let mut m = accepted("rfc5118", "ipv6-good.dat");
    m.stamp_received("[2001:db8::9:1]:5060".parse().expect("literal"));
    let response = build_response(&m, 200, "OK", Some(&Tag::new("t1")), &[]);
    let text = String::from_utf8(response).expect("UTF-8 response");
    assert!(
        text.contains("\r\nVia: SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111\r\n"),
        "{text}"
    );
    let reparsed = parse(text.as_bytes()).expect("response parses");
    assert_eq!(reparsed.top_via().host, Host::Ip(ip("2001:db8::9:1")));
}

#[test]
fn tel_uris_in_request_uri_to_and_from() {
    let m = parse(
        b"INVITE tel:+1-201-555-0123;phone-context=example.com SIP/2.0\r\n\
          Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
          From: <tel:+15550001>;tag=f\r\nt: tel:+1-201-555-0123\r\ni: tel-1\r\nCSeq: 1 INVITE\r\n\r\n",
    )
    .expect("tel URIs parse");
    let uri = m.request_uri().expect("request");
    assert_eq!(uri.scheme(), Scheme::Tel);
    assert_eq!(uri.user().as_deref(), Some("+1-201-555-0123"));
    assert_eq!(
        uri.param("phone-context"),
        Some(Some("example.com".to_owned()))
    );
    assert_eq!(m.from().uri.user().as_deref(), Some("+15550001"));
    assert_eq!(m.to().uri.to_string(), "tel:+1-201-555-0123");
    assert_eq!(check_request(&m), Ok(()));
}

#[test]
fn header_names_are_case_insensitive_and_compact_forms_expand() {
    let m = parse(
        b"OPTIONS sip:a@example.com SIP/2.0\r\nVIA: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
          F: <sip:b@example.com>;tag=1\r\nT: <sip:a@example.com>\r\nI: x\r\ncSeQ: 1 OPTIONS\r\n\
          K: path\r\nC: text/plain\r\nE: identity\r\nm: <sip:b@192.0.2.3>\r\nL: 2\r\n\r\nhi",
    )
    .expect("compact and odd-case names");
    let names: Vec<&str> = m.headers().iter().map(|h| &*h.name).collect();
    assert_eq!(
        names,
        vec![
            "Via",
            "From",
            "To",
            "Call-ID",
            "CSeq",
            "Supported",
            "Content-Type",
            "Content-Encoding",
            "Contact",
            "Content-Length"
        ]
    );
    assert_eq!(m.supported(), vec!["path".to_owned()]);
    assert_eq!(m.header("call-id"), Some("x"));
    assert_eq!(m.body(), b"hi");
}

#[test]
fn a_to_or_from_tag_without_a_value_or_twice_is_refused_with_400() {
    // Found by fuzzing: `;tag` read as no tag, so a response added its own
    // beside it and the next hop could not tell which one counted.
    let request = |from: &str, to: &str| {
        format!(
            "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
             From: {from}\r\nTo: {to}\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n\r\n"
        )
    };
    for (from, to, name, detail) in [
        (
            "<sip:b@c>;tag=1",
            "<sip:a@b> ;   tag",
            "To",
            "tag without a value",
        ),
        (
            "<sip:b@c>;tag=1",
            "<sip:a@b>;tag=",
            "To",
            "empty or malformed parameter",
        ),
        ("<sip:b@c>;TAG", "<sip:a@b>", "From", "tag without a value"),
        (
            "<sip:b@c>;tag=1;tag=2",
            "<sip:a@b>",
            "From",
            "more than one tag",
        ),
    ] {
        let error = parse(request(from, to).as_bytes()).expect_err("malformed");
        assert_eq!(
            error.kind(),
            &ParseErrorKind::InvalidHeader {
                name,
                detail: detail.to_owned()
            },
            "{from} / {to}"
        );
        assert_eq!(error.status(), Some(400));
    }
    let fine = parse(request("<sip:b@c>;tag=1", "<sip:a@b>;tag=2").as_bytes()).expect("valid");
    assert_eq!(
        fine.to_tag().map(|t| t.as_str().to_owned()),
        Some("2".to_owned())
    );
}

#[test]
fn parse_errors_name_the_problem() {
    let kind = |bytes: &[u8]| parse(bytes).expect_err("malformed").kind().clone();
    let base = "Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:b@c>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: x\r\n";
    assert_eq!(
        kind(
            format!("OPTIONS sip:a@b SIP/2.0\r\n{base}CSeq: 4294967296 OPTIONS\r\n\r\n").as_bytes()
        ),
        ParseErrorKind::InvalidHeader {
            name: "CSeq",
            detail: "expected a 32-bit sequence number and a method".to_owned()
        }
    );
    assert_eq!(
        kind(
            format!("OPTIONS sip:a@b SIP/2.0\r\n{base}Call-ID: y\r\nCSeq: 1 OPTIONS\r\n\r\n")
                .as_bytes()
        ),
        ParseErrorKind::ConflictingHeader("Call-ID")
    );
    let bad_version =
        parse(format!("OPTIONS sip:a@b SIP/3.0\r\n{base}CSeq: 1 OPTIONS\r\n\r\n").as_bytes())
            .expect_err("SIP/3.0");
    assert_eq!(bad_version.status(), Some(505));
    assert!(bad_version.can_respond());
    assert_eq!(
        kind(
            format!("OPTIONS sip:2001:db8::10 SIP/2.0\r\n{base}CSeq: 1 OPTIONS\r\n\r\n").as_bytes()
        ),
        ParseErrorKind::InvalidRequestUri("invalid port \"db8::10\"".to_owned())
    );
    let truncated = parse(
        format!("OPTIONS sip:a@b SIP/2.0\r\n{base}CSeq: 1 OPTIONS\r\nl: 10\r\n\r\nabc").as_bytes(),
    )
    .expect_err("body shorter than Content-Length");
    assert_eq!(truncated.status(), Some(400));
    assert_eq!(truncated.salvaged_headers().len(), 5);
    assert!(build_error_response(&truncated).is_some());
}

#[test]
fn stream_oversize_can_still_be_answered() {
    let mut framer = StreamFramer::new(FramingLimits {
        max_header: 4096,
        max_body: 8,
    });
    framer.push(
        b"MESSAGE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nFrom: <sip:b@c>;tag=1\r\n\
          To: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 MESSAGE\r\nContent-Length: 100\r\n\r\n",
    );
    let error = framer.next_message().expect_err("body over the limit");
    let parse_error = ParseError::from_frame(error, framer.failed_head());
    assert_eq!(parse_error.status(), Some(413));
    let response = build_error_response(&parse_error).expect("answerable");
    let reparsed = parse(&response).expect("our 413 parses");
    assert_eq!(reparsed.status(), Some(413));
    assert_eq!(reparsed.call_id().as_str(), "x");
}

/// The one message form: a value with its octets, parsed or built.
mod one_form {
    use crate::sip::{parse, response_message, Header, SipMessage, Tag};

    const TAIL: &str = "From: <sip:b@c>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 2\r\n\r\nhi";

    fn header(name: &str, value: &str) -> Header {
        Header {
            name: name.to_owned().into(),
            value: value.into(),
        }
    }

    fn assert_same(built: &SipMessage, parsed: &SipMessage) {
        assert_eq!(built.start_line(), parsed.start_line(), "start line");
        assert_eq!(built.headers(), parsed.headers(), "headers");
        assert_eq!(built.body(), parsed.body(), "body");
        assert_eq!(built.vias(), parsed.vias(), "Vias");
        assert_eq!(built.from(), parsed.from(), "From");
        assert_eq!(built.to(), parsed.to(), "To");
        assert_eq!(built.call_id(), parsed.call_id(), "Call-ID");
        assert_eq!(built.cseq(), parsed.cseq(), "CSeq");
        assert_eq!(built.contacts(), parsed.contacts(), "Contacts");
    }

    #[test]
    fn a_parsed_message_keeps_its_octets_without_leading_crlf_or_trailing_octets() {
        let message =
            format!("OPTIONS sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1\r\n{TAIL}");
        let datagram = format!("\r\n\r\n{message}trailing");
        let parsed = parse(datagram.as_bytes()).expect("parses");
        assert_eq!(parsed.bytes(), message.as_bytes());
        assert_eq!(parsed.header("Via"), Some("SIP/2.0/UDP h;branch=z9hG4bK1"));
    }

    #[test]
    fn a_built_request_is_the_value_its_octets_parse_to() {
        let built = SipMessage::from_parts(
            "INVITE sip:[2001:db8::1]:5070 SIP/2.0",
            vec![
                header("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKx1;rport"),
                header("Max-Forwards", "70"),
                header("From", "<sip:sb@192.0.2.1>;tag=f1"),
                header("To", "<tel:+15551234>"),
                header("Call-ID", "c1"),
                header("CSeq", "7 INVITE"),
                header("Contact", "<sip:sb@192.0.2.1:5060>"),
                header("Content-Type", "application/sdp"),
                header("Content-Length", "3"),
            ],
            b"v=0".to_vec(),
        )
        .expect("a well-formed request");
        let parsed = parse(built.bytes()).expect("its octets parse");
        assert_same(&built, &parsed);
        assert_eq!(parsed.bytes(), built.bytes());
        assert_eq!(built.cseq().seq, 7);
        assert_eq!(built.from_tag(), Some(Tag::new("f1")));
        assert_eq!(
            built.top_via().branch().map(|b| b.as_str().to_owned()),
            Some("z9hG4bKx1".to_owned())
        );
    }

    #[test]
    fn a_built_request_with_a_line_break_in_a_value_is_refused() {
        let refused = SipMessage::from_parts(
            "BYE sip:a@b SIP/2.0",
            vec![
                header("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"),
                header("From", "<sip:b@c>;tag=1\r\nX-Injected: 1"),
                header("To", "<sip:a@b>"),
                header("Call-ID", "x"),
                header("CSeq", "1 BYE"),
            ],
            Vec::new(),
        );
        assert_eq!(
            refused.map(|m| m.call_id().clone()),
            Err(crate::sip::ParseErrorKind::MalformedHeaderLine(2))
        );
        let no_via = SipMessage::from_parts(
            "BYE sip:a@b SIP/2.0",
            vec![header("From", "<sip:b@c>;tag=1")],
            Vec::new(),
        );
        assert_eq!(
            no_via.map(|m| m.call_id().clone()),
            Err(crate::sip::ParseErrorKind::MissingHeader("Via"))
        );
    }

    #[test]
    fn a_built_response_is_the_value_its_octets_parse_to() {
        let request = parse(
            format!(
                "INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::9]:5062;branch=z9hG4bKv6\r\nVia: SIP/2.0/TCP p;branch=z9hG4bK2\r\nRecord-Route: <sip:p;lr>\r\n{TAIL}"
            )
            .as_bytes(),
        )
        .expect("parses");
        let tag = Tag::new("ours");
        let extra = vec![("Contact".to_owned(), "<sip:sb@192.0.2.1>".to_owned())];
        let built = response_message(
            &request,
            200,
            "OK",
            Some(&tag),
            &extra,
            Some(("application/sdp", b"v=0")),
        );
        let parsed = parse(built.bytes()).expect("its octets parse");
        assert_same(&built, &parsed);
        assert_eq!(built.to_tag(), Some(tag));
        assert_eq!(built.status(), Some(200));

        let trying = response_message(&request, 100, "Trying", None, &[], None);
        assert_same(&trying, &parse(trying.bytes()).expect("parses"));
        assert_eq!(trying.to_tag(), None, "no tag on 100");
    }
}

/// Every prefix and many single-octet corruptions of every corpus message
/// go through `classify` without panicking, and a reject always carries a
/// framed response.
#[test]
fn corrupted_corpus_messages_never_panic() {
    let mut files = Vec::new();
    for (corpus, subdirs) in [
        ("rfc4475", &["valid", "invalid"][..]),
        ("rfc5118", &[""][..]),
    ] {
        for sub in subdirs {
            let dir = corpus_dir(corpus).join(sub);
            for entry in std::fs::read_dir(&dir).expect("corpus directory") {
                let path = entry.expect("directory entry").path();
                if path.extension().is_some_and(|e| e == "dat") {
                    files.push(std::fs::read(&path).expect("corpus file"));
                }
            }
        }
    }
    assert_eq!(files.len(), 62);
    let check = |bytes: &[u8]| {
        if let Outcome::Reject { response, .. } = classify(bytes) {
            assert!(frame_datagram(&response).is_ok(), "unframed response");
        }
    };
    for file in &files {
        for end in (0..file.len()).step_by(3) {
            check(&file[..end]);
        }
        for (i, replacement) in (0..file.len()).step_by(5).zip(
            [0u8, b':', b'[', b'"', b' ', b'\r', b';', b'<', 0xff]
                .iter()
                .cycle(),
        ) {
            let mut corrupted = file.clone();
            corrupted[i] = *replacement;
            check(&corrupted);
        }
    }
}
