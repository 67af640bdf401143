//! `/api/v1/events` of the running binary: a REGISTER over UDP arrives as a
//! `registration_added` event on a client's stream (and the stream needs
//! the token), a client that stops reading is told it lagged, with how
//! much it missed, and its stream ends, while the server goes on; one that
//! never reads at all is closed when its connection stalls.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{status, Server, UdpPeer};

const TOKEN: &str = "live-events-test-token-3c1e9a77";

/// Opens the event stream (HTTP/1.0: the body is the rest of the
/// connection) and returns the connection after the response head.
fn open_stream(stream: &mut TcpStream, token: Option<&str>) -> String {
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET /api/v1/events HTTP/1.0\r\nHost: 127.0.0.1\r\n{authorization}\r\n"
    )
    .expect("send request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!("response head cut short ({other:?}): {head:?}"),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Reads from `stream` until `done` holds for what was read, EOF, or 10 s.
fn read_until(stream: &mut TcpStream, done: impl Fn(&str) -> bool) -> (String, bool) {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = Vec::new();
    let mut buffer = [0u8; 65_536];
    while Instant::now() < deadline {
        match stream.read(&mut buffer) {
            Ok(0) => return (String::from_utf8_lossy(&text).into_owned(), true),
            Ok(n) => text.extend_from_slice(&buffer[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("reading the event stream: {e}"),
        }
        if done(&String::from_utf8_lossy(&text)) {
            break;
        }
    }
    (String::from_utf8_lossy(&text).into_owned(), false)
}

/// A REGISTER of `contacts` for `user`, with `expires` (0 and `*`: all go).
fn register(peer: &UdpPeer, user: &str, cseq: u32, contacts: &[String], expires: u32) -> String {
    let contact_lines: String = if contacts.is_empty() {
        "Contact: *\r\n".to_owned()
    } else {
        contacts
            .iter()
            .map(|c| format!("Contact: <{c}>\r\n"))
            .collect()
    };
    format!(
        "REGISTER sip:example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{user}{cseq}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@example.com>;tag=events\r\n\
         To: <sip:{user}@example.com>\r\n\
         Call-ID: events-{user}\r\n\
         CSeq: {cseq} REGISTER\r\n\
         {contact_lines}\
         Expires: {expires}\r\n\
         Content-Length: 0\r\n\r\n",
        port = peer.port()
    )
}

fn sip(server: &Server) -> SocketAddr {
    server.sip_addr()
}

#[test]
fn a_register_arrives_as_registration_added_on_a_clients_stream() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), &["--auth", "anonymous", "--api-token", TOKEN]);
    let rest = ("127.0.0.1", server.rest_port);

    let mut refused = TcpStream::connect(rest).expect("connect");
    let head = open_stream(&mut refused, None);
    assert!(
        head.starts_with("HTTP/1.0 401") || head.starts_with("HTTP/1.1 401"),
        "{head}"
    );

    let mut stream = TcpStream::connect(rest).expect("connect");
    let head = open_stream(&mut stream, Some(TOKEN));
    assert!(head.contains(" 200 "), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );

    let peer = UdpPeer::new();
    let contact = format!("sip:1001@127.0.0.1:{}", peer.port());
    let text = register(&peer, "1001", 1, std::slice::from_ref(&contact), 600);
    let response = peer.request(sip(&server), text.as_bytes());
    assert_eq!(status(&response), 200, "{response}");

    let (events, _) = read_until(&mut stream, |t| {
        t.contains("\n\n") && t.contains("registration_added")
    });
    let block = events
        .split("\n\n")
        .find(|b| b.contains("event: registration_added"))
        .unwrap_or_else(|| panic!("no registration_added in {events:?}"));
    let data = block
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("a data line");
    let json: serde_json::Value = serde_json::from_str(data).expect("JSON data");
    assert_eq!(json["type"], "registration_added");
    assert_eq!(json["aor"], "1001@example.com");
    assert_eq!(json["contact"], contact.as_str());
    assert_eq!(json["expires_in_secs"], 600);
}

#[test]
fn a_client_that_stops_reading_is_told_it_lagged_and_its_stream_ends() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(
        dir.path(),
        &[
            "--auth",
            "anonymous",
            "--event-buffer",
            "16",
            "--max-contacts",
            "1000",
        ],
    );
    let rest: SocketAddr = ([127, 0, 0, 1], server.rest_port).into();
    // A small receive window, so the server's buffers fill soon.
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("receive buffer");
    socket.connect(&rest.into()).expect("connect");
    let mut slow: TcpStream = socket.into();
    let head = open_stream(&mut slow, None);
    assert!(head.contains(" 200 "), "{head}");

    // Rounds of 500 bindings added then removed: 1000 events each.
    let peer = UdpPeer::new();
    let contacts: Vec<String> = (0..500)
        .map(|n| format!("sip:c{n}@127.0.0.1:{}", peer.port()))
        .collect();
    let mut cseq = 1;
    for _ in 0..10 {
        for contacts in [&contacts[..], &[]] {
            let expires = if contacts.is_empty() { 0 } else { 600 };
            let text = register(&peer, "2002", cseq, contacts, expires);
            let response = peer.request(sip(&server), text.as_bytes());
            assert_eq!(
                status(&response),
                200,
                "{}",
                &response[..response.len().min(300)]
            );
            cseq += 1;
        }
    }

    let (events, ended) = read_until(&mut slow, |_| false);
    assert!(
        ended,
        "the slow client's stream ends: {} octets",
        events.len()
    );
    let last = events.trim_end().rsplit("\n\n").next().unwrap_or_default();
    let missed: u64 = last
        .strip_prefix("event: lagged\ndata: {\"missed\":")
        .and_then(|rest| rest.strip_suffix('}'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the last frame is `lagged`: {last:?}"));
    let delivered = events.matches("event: registration_").count() as u64;
    assert!(missed > 0, "{last}");
    assert!(
        delivered + missed <= 10_000,
        "delivered {delivered} + missed {missed}"
    );

    // The server goes on: a new REGISTER is answered and reaches a new
    // client. The new client waits until the last removals are published,
    // or it would lag on them: they are published with their 200, once
    // the journal's sync covers them, after the bindings' count already
    // says 0; the changes' counter is bumped as each one is published.
    let deadline = Instant::now() + Duration::from_secs(10);
    let removed = "switchboard_registration_changes_total{change=\"removed\"} 5000";
    while !server.get_text("/metrics").lines().any(|l| l == removed) {
        assert!(
            Instant::now() < deadline,
            "the 5000 removals were not all published"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut fresh = TcpStream::connect(rest).expect("connect");
    open_stream(&mut fresh, None);
    let one = vec![format!("sip:late@127.0.0.1:{}", peer.port())];
    let response = peer.request(
        sip(&server),
        register(&peer, "3003", 1, &one, 600).as_bytes(),
    );
    assert_eq!(status(&response), 200);
    let (events, _) = read_until(&mut fresh, |t| t.contains("3003@example.com"));
    assert!(events.contains("event: registration_added"), "{events}");
}

#[test]
fn a_client_that_never_reads_is_closed_once_its_connection_stalls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(
        dir.path(),
        &[
            "--auth",
            "anonymous",
            "--event-buffer",
            "16",
            "--rest-idle-timeout",
            "2",
            "--max-contacts",
            "20",
        ],
    );
    let rest: SocketAddr = ([127, 0, 0, 1], server.rest_port).into();
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("receive buffer");
    socket.connect(&rest.into()).expect("connect");
    let mut never: TcpStream = socket.into();
    open_stream(&mut never, None);
    let gauge = |server: &Server, name: &str| {
        let text = http_get(server.rest_port, "/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    assert_eq!(gauge(&server, "switchboard_events_clients"), 1);

    // 3000 events of about 1 kB: more than the connection's buffers hold,
    // ten per REGISTER so a client that reads would keep up with the ring.
    let peer = UdpPeer::new();
    let long = "x".repeat(1000);
    for round in 0..300u32 {
        let contacts: Vec<String> = (0..10)
            .map(|n| format!("sip:{long}{n}@127.0.0.1:{}", peer.port()))
            .collect();
        let text = register(&peer, "4004", round + 1, &contacts, 600 + round % 2);
        assert_eq!(status(&peer.request(sip(&server), text.as_bytes())), 200);
    }
    // It cannot even be told it lagged: its writes stall, and after
    // --rest-idle-timeout without progress the server closes it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while gauge(&server, "switchboard_events_clients") != 0 {
        assert!(
            Instant::now() < deadline,
            "the stalled client is still connected"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, ended) = read_until(&mut never, |_| false);
    assert!(ended, "its connection is closed");
}

fn http_get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("send");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    text
}
