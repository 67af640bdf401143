//! Responses on the wire: headers copied per RFC 3261 §8.2.6, where they
//! are sent (§18.2.2, RFC 3581), the method-level answers (OPTIONS, 405,
//! 501, 483, 420, 480, 481), retransmission absorption, and the TCP
//! transport's limits, connection reuse and idle timeout.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{header, headers, read_stream_message, status, Server, UdpPeer};

fn request(method: &str, via: &str, extra: &str) -> String {
    format!(
        "{method} sip:bob@example.com SIP/2.0\r\n\
         Via: {via}\r\n\
         Via: SIP/2.0/UDP proxy.example.net:5070;branch=z9hG4bKproxy1\r\n\
         Max-Forwards: 70\r\n\
         From: \"Alice\" <sip:alice@example.com>;tag=a73kszlfl\r\n\
         To: <sip:bob@example.com>\r\n\
         Call-ID: wire-{method}-1@example.com\r\n\
         CSeq: 17 {method}\r\n\
         {extra}\
         Content-Length: 0\r\n\r\n"
    )
}

fn server() -> (tempfile::TempDir, Server) {
    let data = tempfile::tempdir().expect("temp data dir");
    let server = Server::start(
        data.path(),
        &["--auth", "anonymous", "--tcp-idle-timeout", "1"],
    );
    (data, server)
}

#[test]
fn response_copies_headers_and_goes_to_the_rport_address() {
    let (_data, server) = server();
    let peer = UdpPeer::new();
    let via = "SIP/2.0/UDP 192.0.2.44:5099;branch=z9hG4bKwire1;rport".to_owned();
    let response = peer.request(server.sip_addr(), request("OPTIONS", &via, "").as_bytes());
    assert_eq!(status(&response), 200, "{response}");
    assert_eq!(
        headers(&response, "Via"),
        vec![
            format!(
                "SIP/2.0/UDP 192.0.2.44:5099;branch=z9hG4bKwire1;rport={};received=127.0.0.1",
                peer.port()
            )
            .as_str(),
            "SIP/2.0/UDP proxy.example.net:5070;branch=z9hG4bKproxy1",
        ],
        "Vias in order, top one stamped:\n{response}"
    );
    assert_eq!(
        header(&response, "From"),
        Some("\"Alice\" <sip:alice@example.com>;tag=a73kszlfl")
    );
    let to = header(&response, "To").expect("To");
    assert!(to.starts_with("<sip:bob@example.com>;tag="), "{to}");
    assert!(
        to.len() > "<sip:bob@example.com>;tag=".len() + 4,
        "tag has a value: {to}"
    );
    assert_eq!(
        header(&response, "Call-ID"),
        Some("wire-OPTIONS-1@example.com")
    );
    assert_eq!(header(&response, "CSeq"), Some("17 OPTIONS"));
    assert_eq!(
        header(&response, "Allow"),
        Some("INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, UPDATE, INFO, PRACK, REFER")
    );
    assert_eq!(header(&response, "Accept"), Some("application/sdp"));
    assert_eq!(header(&response, "Supported"), Some("path, 100rel"));
    assert_eq!(header(&response, "Content-Length"), Some("0"));

    // The same request again gets the same To tag (a retransmission).
    let again = peer.request(server.sip_addr(), request("OPTIONS", &via, "").as_bytes());
    assert_eq!(
        header(&again, "To"),
        Some(to),
        "retransmission answered alike"
    );
}

#[test]
fn without_rport_the_response_goes_to_the_via_port() {
    let (_data, server) = server();
    let sender = UdpPeer::new();
    let listener = UdpPeer::new();
    let via = format!(
        "SIP/2.0/UDP 127.0.0.1:{};branch=z9hG4bKwire2",
        listener.port()
    );
    sender.send(server.sip_addr(), request("OPTIONS", &via, "").as_bytes());
    let response = listener
        .recv(Duration::from_secs(3))
        .expect("the response reaches the Via sent-by port");
    assert_eq!(status(&response), 200, "{response}");
    assert_eq!(
        headers(&response, "Via")[0],
        format!(
            "SIP/2.0/UDP 127.0.0.1:{};branch=z9hG4bKwire2",
            listener.port()
        ),
        "no received: the sent-by address is the source address"
    );
    assert_eq!(
        sender.recv(Duration::from_millis(200)),
        None,
        "nothing to the source port"
    );
}

/// Method, extra headers, expected status, expected header.
type Case = (
    &'static str,
    &'static str,
    u16,
    Option<(&'static str, &'static str)>,
);

#[test]
fn method_level_answers() {
    let (_data, server) = server();
    let peer = UdpPeer::new();
    let cases: &[Case] = &[
        (
            "FROBNICATE",
            "",
            501,
            Some((
                "Allow",
                "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, UPDATE, INFO, PRACK, REFER",
            )),
        ),
        (
            "SUBSCRIBE",
            "",
            405,
            Some((
                "Allow",
                "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, UPDATE, INFO, PRACK, REFER",
            )),
        ),
        ("MESSAGE", "", 405, None),
        (
            "OPTIONS",
            "Require: foo, path\r\n",
            420,
            Some(("Unsupported", "foo")),
        ),
        ("INVITE", "Max-Forwards: 0\r\n", 483, None),
        ("INVITE", "", 480, None),
        ("BYE", "", 481, None),
        ("UPDATE", "", 481, None),
        ("CANCEL", "", 481, None),
    ];
    for (index, (method, extra, want, want_header)) in cases.iter().enumerate() {
        let via = format!(
            "SIP/2.0/UDP 127.0.0.1:{};branch=z9hG4bKcase{index};rport",
            peer.port()
        );
        let mut text = request(method, &via, extra);
        if extra.starts_with("Max-Forwards") {
            text = text.replacen("Max-Forwards: 70\r\n", "", 1);
        }
        let response = peer.request(server.sip_addr(), text.as_bytes());
        assert_eq!(status(&response), *want, "{method} {extra:?}:\n{response}");
        if let Some((name, value)) = want_header {
            assert_eq!(
                header(&response, name),
                Some(*value),
                "{method}:\n{response}"
            );
        }
        if *want == 480 {
            // ACK the 480 so its retransmissions (timer G) stop.
            let ack = request("ACK", &via, "");
            peer.send(server.sip_addr(), ack.as_bytes());
        }
    }
}

#[test]
fn a_response_is_never_answered() {
    let (_data, server) = server();
    let peer = UdpPeer::new();
    let response = format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:{};branch=z9hG4bKresp;rport\r\n\
         From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>;tag=2\r\n\
         Call-ID: stray@example.com\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        peer.port()
    );
    peer.send(server.sip_addr(), response.as_bytes());
    assert_eq!(peer.recv(Duration::from_millis(300)), None);
}

#[test]
fn invite_480_is_retransmitted_until_acked_then_absorbed() {
    let data = tempfile::tempdir().expect("temp data dir");
    let server = Server::start(data.path(), &["--auth", "anonymous", "--t1-ms", "100"]);
    let peer = UdpPeer::new();
    let via = format!(
        "SIP/2.0/UDP 127.0.0.1:{};branch=z9hG4bKinv480;rport",
        peer.port()
    );
    let invite = request("INVITE", &via, "");
    let first = peer.request(server.sip_addr(), invite.as_bytes());
    assert_eq!(status(&first), 480, "{first}");
    // Timer G (T1 = 100 ms) retransmits the same octets.
    let again = peer
        .recv(Duration::from_secs(2))
        .expect("480 retransmitted");
    assert_eq!(again, first);
    // An INVITE retransmission gets the same response, not a new transaction.
    peer.send(server.sip_addr(), invite.as_bytes());
    let answer = peer
        .recv(Duration::from_secs(2))
        .expect("answer to the retransmission");
    assert_eq!(header(&answer, "To"), header(&first, "To"));
    let to = header(&first, "To").expect("To");
    let ack = request("ACK", &via, "").replace("To: <sip:bob@example.com>", &format!("To: {to}"));
    peer.send(server.sip_addr(), ack.as_bytes());
    // Drain what was already in flight, then expect silence.
    std::thread::sleep(Duration::from_millis(150));
    while peer.recv(Duration::from_millis(10)).is_some() {}
    assert_eq!(
        peer.recv(Duration::from_millis(600)),
        None,
        "no retransmission after the ACK"
    );
}

#[test]
fn tcp_reuses_the_connection_and_enforces_limits_and_idle_timeout() {
    let (_data, server) = server();
    let mut stream = TcpStream::connect(server.sip_addr()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let via = "SIP/2.0/TCP client.invalid:5060;branch=z9hG4bKtcp1";
    // Two requests in one write; both answers come back on this connection.
    let two =
        request("OPTIONS", via, "") + &request("FROBNICATE", &via.replace("tcp1", "tcp2"), "");
    stream.write_all(two.as_bytes()).expect("write");
    let first = read_stream_message(&mut stream).expect("first response");
    let second = read_stream_message(&mut stream).expect("second response");
    assert_eq!((status(&first), status(&second)), (200, 501));
    assert_eq!(
        headers(&first, "Via")[0],
        "SIP/2.0/TCP client.invalid:5060;branch=z9hG4bKtcp1;received=127.0.0.1"
    );

    // A double-CRLF keep-alive is answered with one CRLF.
    stream.write_all(b"\r\n\r\n").expect("ping");
    let mut pong = [0u8; 2];
    std::io::Read::read_exact(&mut stream, &mut pong).expect("pong");
    assert_eq!(&pong, b"\r\n");

    // Idle for longer than --tcp-idle-timeout 1: the server closes.
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = std::io::Read::read_to_end(&mut stream, &mut rest);
    assert!(
        read.is_ok() && rest.is_empty(),
        "clean close, got {read:?} {rest:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_millis(2900),
        "closed after {waited:?}"
    );

    // A body over --max-message-size: 413, then the connection closes.
    let mut stream = TcpStream::connect(server.sip_addr()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let big = request("OPTIONS", via, "").replace("Content-Length: 0", "Content-Length: 70000");
    stream.write_all(big.as_bytes()).expect("write");
    let answer = read_stream_message(&mut stream).expect("413");
    assert_eq!(status(&answer), 413, "{answer}");
    assert_eq!(
        read_stream_message(&mut stream),
        None,
        "closed after the 413"
    );

    // A header section over the limit: 513, then close, without waiting for the end.
    let mut stream = TcpStream::connect(server.sip_addr()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut huge = request("OPTIONS", via, "").replace("Content-Length: 0\r\n\r\n", "");
    huge.push_str(&format!("X-Padding: {}\r\n", "x".repeat(70_000)));
    let _ = stream.write_all(huge.as_bytes());
    let answer = read_stream_message(&mut stream).expect("513");
    assert_eq!(status(&answer), 513, "{answer}");
    assert_eq!(
        read_stream_message(&mut stream),
        None,
        "closed after the 513"
    );
}

#[test]
fn dual_stack_when_bound_to_the_unspecified_ipv6_address() {
    let data = tempfile::tempdir().expect("temp data dir");
    let Ok(probe) = std::net::UdpSocket::bind("[::1]:0") else {
        eprintln!("skipped: no IPv6 loopback on this machine");
        return;
    };
    drop(probe);
    let server = Server::start(
        data.path(),
        &["--auth", "anonymous", "--bind-address", "::"],
    );
    let v4 = UdpPeer::new();
    let via = format!("SIP/2.0/UDP 127.0.0.1:{};branch=z9hG4bKv4;rport", v4.port());
    let response = v4.request(server.sip_addr(), request("OPTIONS", &via, "").as_bytes());
    assert_eq!(status(&response), 200);

    let v6 = std::net::UdpSocket::bind("[::1]:0").expect("IPv6 peer");
    let port = v6.local_addr().expect("address").port();
    let via = format!("SIP/2.0/UDP [::1]:{port};branch=z9hG4bKv6;rport");
    v6.send_to(
        request("OPTIONS", &via, "").as_bytes(),
        ("::1", server.sip_port),
    )
    .expect("send over IPv6");
    v6.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut buffer = vec![0u8; 65_536];
    let (len, _) = v6.recv_from(&mut buffer).expect("IPv6 response");
    let response = String::from_utf8_lossy(&buffer[..len]).into_owned();
    assert_eq!(status(&response), 200, "{response}");
    assert_eq!(
        headers(&response, "Via")[0],
        format!("SIP/2.0/UDP [::1]:{port};branch=z9hG4bKv6;rport={port};received=::1")
    );
}
