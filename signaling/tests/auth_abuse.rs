//! Authentication under attack, against the running server: guesses from
//! many sources do not lock the user out (they are only answered late),
//! the guessing source is blocked,
//! thousands of failures with huge user names do not grow the server's
//! memory, and an INVITE without credentials draws exactly one 407.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{challenge_param, headers, status, users_file, Server, UdpPeer};
use md5::{Digest, Md5};

const REALM: &str = "test.example";

fn md5(text: &str) -> String {
    format!("{:x}", Md5::digest(text.as_bytes()))
}

fn start(data: &tempfile::TempDir, extra: &[&str]) -> Server {
    let users = users_file(data.path(), &[("1001", "secret1"), ("1002", "secret2")]);
    let users = users.to_str().expect("UTF-8 path").to_owned();
    let mut args = vec![
        "--realm",
        REALM,
        "--users-file",
        &users,
        "--auth-secret",
        "fixed",
        "--auth-algorithms",
        "MD5",
    ];
    args.extend_from_slice(extra);
    Server::start(&data.path().join("state"), &args)
}

/// A UDP peer on its own loopback address (all of 127/8 is local on Linux).
fn peer_on(ip: &str) -> UdpPeer {
    UdpPeer {
        socket: UdpSocket::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip}: {e}")),
    }
}

fn register_text(peer: &UdpPeer, user: &str, seq: u32, authorization: Option<&str>) -> String {
    let ip = peer.socket.local_addr().expect("local address").ip();
    let authorization = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    format!(
        "REGISTER sip:{REALM} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {ip}:{port};branch=z9hG4bKab{seq}x{port};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@{REALM}>;tag=f{seq}\r\n\
         To: <sip:{user}@{REALM}>\r\n\
         Call-ID: abuse-{seq}-{port}@test\r\n\
         CSeq: {seq} REGISTER\r\n\
         Contact: <sip:{user}@{ip}:{port}>\r\n\
         Expires: 600\r\n\
         {authorization}\
         Content-Length: 0\r\n\r\n",
        port = peer.port(),
    )
}

/// REGISTER as `user` with `password`: challenge, answer, final response.
fn register(server: &Server, peer: &UdpPeer, user: &str, password: &str) -> String {
    let challenge = peer.request(
        server.sip_addr(),
        register_text(peer, user, 1, None).as_bytes(),
    );
    if status(&challenge) != 401 {
        return challenge;
    }
    let offer = headers(&challenge, "WWW-Authenticate")[0];
    let nonce = challenge_param(offer, "nonce").expect("nonce");
    let uri = format!("sip:{REALM}");
    let ha1 = md5(&format!("{user}:{REALM}:{password}"));
    let ha2 = md5(&format!("REGISTER:{uri}"));
    let response = md5(&format!("{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}"));
    let authorization = format!(
        "Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c0ffee\""
    );
    peer.request(
        server.sip_addr(),
        register_text(peer, user, 2, Some(&authorization)).as_bytes(),
    )
}

fn rss_kib(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
        .expect("the server's /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in kB")
}

#[test]
fn guesses_from_other_sources_never_lock_the_user_out_and_the_guesser_is_blocked() {
    let data = tempfile::tempdir().expect("temp dir");
    let server = start(&data, &["--lockout-user-delay-ms", "300"]);
    // 50 wrong guesses for 1002, one from each of 50 addresses: never
    // locked, only slowed once 1002 has collected 5 failures.
    for i in 1..=50 {
        let started = Instant::now();
        let answer = register(&server, &peer_on(&format!("127.0.22.{i}")), "1002", "guess");
        assert_eq!(status(&answer), 401, "guess {i}: {answer}");
        if i > 5 {
            assert!(
                started.elapsed() >= Duration::from_millis(300),
                "guess {i} answered after {:?}",
                started.elapsed()
            );
        }
    }
    // One address guessing on: blocked after 5 (the default), then even
    // the right password from there is refused.
    let guesser = peer_on("127.0.23.1");
    for attempt in 1..=5 {
        let answer = register(&server, &guesser, "1002", "guess");
        assert_eq!(status(&answer), 401, "attempt {attempt}: {answer}");
    }
    let answer = register(&server, &guesser, "1002", "secret2");
    assert_eq!(
        status(&answer),
        403,
        "the guessing source is blocked: {answer}"
    );
    // 1002's own phone, elsewhere, registers.
    let phone = peer_on("127.0.24.1");
    let answer = register(&server, &phone, "1002", "secret2");
    assert_eq!(
        status(&answer),
        200,
        "right password from a fresh source: {answer}"
    );
}

#[test]
fn ten_thousand_failures_with_huge_user_names_keep_memory_flat() {
    let data = tempfile::tempdir().expect("temp dir");
    let server = start(&data, &[]);
    let huge = "u".repeat(12 * 1024);
    // Each source guesses once on a fresh nonce with its own 12 KB user name.
    let guess = |i: u32| {
        let name = format!("{i:05}{huge}");
        let peer = peer_on(&format!(
            "127.{}.{}.{}",
            100 + i / 40_000,
            (i / 200) % 200,
            i % 200 + 1
        ));
        let challenge = peer.request(
            server.sip_addr(),
            register_text(&peer, "1001", 1, None).as_bytes(),
        );
        let nonce =
            challenge_param(headers(&challenge, "WWW-Authenticate")[0], "nonce").expect("nonce");
        let authorization = format!(
            "Digest username=\"{name}\", realm=\"{REALM}\", nonce=\"{nonce}\", \
             uri=\"sip:{REALM}\", response=\"{}\", algorithm=MD5, qop=auth, \
             nc=00000001, cnonce=\"c0ffee\"",
            "0".repeat(32)
        );
        let answer = peer.request(
            server.sip_addr(),
            register_text(&peer, "1001", 2, Some(&authorization)).as_bytes(),
        );
        assert_eq!(status(&answer), 401, "guess {i}");
    };
    // Warm up, so allocator arenas and tables settle before the baseline.
    for i in 0..500 {
        guess(i);
    }
    let before = rss_kib(&server);
    let started = Instant::now();
    for i in 500..10_500 {
        guess(i);
    }
    let after = rss_kib(&server);
    eprintln!(
        "RSS {before} kB -> {after} kB over 10,000 failures in {:?}",
        started.elapsed()
    );
    assert!(
        after.saturating_sub(before) < 10 * 1024,
        "RSS grew from {before} kB to {after} kB"
    );
}

#[test]
fn an_invite_without_credentials_draws_exactly_one_407() {
    let data = tempfile::tempdir().expect("temp dir");
    // T1 = 100 ms: an INVITE server transaction would repeat its final
    // response at 0.1, 0.3, 0.7, 1.5 ... s until Timer H (6.4 s).
    let server = start(&data, &["--t1-ms", "100", "--t2-ms", "400"]);
    let caller = UdpPeer::new();
    let invite = format!(
        "INVITE sip:1002@{REALM} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKonce;rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:1001@{REALM}>;tag=caller\r\n\
         To: <sip:1002@{REALM}>\r\n\
         Call-ID: one-407@test\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:1001@127.0.0.1:{port}>\r\n\
         Content-Length: 0\r\n\r\n",
        port = caller.port()
    );
    let to: SocketAddr = server.sip_addr();
    caller.send(to, invite.as_bytes());
    let deadline = Instant::now() + Duration::from_secs(7);
    let mut received = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match caller.recv(left) {
            Some(message) => received.push(message),
            None => break,
        }
    }
    let statuses: Vec<u16> = received.iter().map(|m| status(m)).collect();
    assert_eq!(
        statuses,
        vec![407],
        "never ACKed, past Timer H: {received:?}"
    );
}
