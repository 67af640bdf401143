//! A server started with few file descriptors fits its SIP TCP limit below
//! them, so a flood of connections never exhausts them: the REST API and
//! SIP keep answering and the log gets one summary line per interval, not
//! one per refused connection.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{connect_from, raise_own_file_limit, read_stream_message, status, Server};

#[test]
fn a_server_with_few_descriptors_keeps_them_for_rest_and_logs_no_storm() {
    raise_own_file_limit();
    let data = tempfile::tempdir().expect("temp data dir");
    // 800 descriptors: 800 - 256 reserved - 256 REST leaves 288 for SIP TCP,
    // 270 of them for accepted connections (a sixteenth is kept for ours).
    let server = Server::start_with_file_limit(data.path(), 800, &["--auth", "anonymous"]);
    let log = server.log();
    assert!(
        log.contains("--tcp-max-connections lowered to fit the open-file limit")
            && log.contains("used=288"),
        "{log}"
    );

    // 1000 connections from 20 sources, 50 each (under the per-source 64).
    let mut clients = Vec::new();
    for host in 1..=20u8 {
        for _ in 0..50 {
            clients.push(connect_from(
                Ipv4Addr::new(127, 0, 5, host),
                server.sip_addr(),
            ));
        }
    }
    let started = Instant::now();
    let health = loop {
        let files = std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
            .expect("fd dir")
            .count();
        assert!(files < 800, "{files} descriptors: at the limit");
        if started.elapsed() > Duration::from_secs(2) {
            break server.get_json("/api/v1/health");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(health["status"], "degraded", "the REST API answers");

    // UDP is untouched and a kept TCP connection still works.
    let peer = common::UdpPeer::new();
    let options = "OPTIONS sip:switchboard@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/TCP client.invalid:5060;branch=z9hG4bKfiles1;rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@example.com>;tag=files1\r\n\
         To: <sip:switchboard@127.0.0.1>\r\n\
         Call-ID: files1@example.com\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n";
    let over_udp = options.replace("/TCP", "/UDP").replace("files1", "files2");
    let response = peer.request(server.sip_addr(), over_udp.as_bytes());
    assert_eq!(status(&response), 200);
    let first = &mut clients[0];
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    first.write_all(options.as_bytes()).expect("send");
    let response = read_stream_message(first)
        .unwrap_or_else(|| panic!("no response on a kept connection:\n{}", server.log()));
    assert_eq!(status(&response), 200);

    // 730 refusals: counted, and summarised in at most one line per 10 s.
    let mut text = String::new();
    let mut metrics = TcpStream::connect(("127.0.0.1", server.rest_port)).expect("REST");
    write!(metrics, "GET /metrics HTTP/1.0\r\n\r\n").expect("GET");
    metrics.read_to_string(&mut text).expect("metrics");
    assert!(
        text.contains("switchboard_sip_tcp_refused_total{limit=\"total\"} 730"),
        "{text}"
    );
    // The summary comes within one report interval (10 s).
    let deadline = Instant::now() + Duration::from_secs(12);
    while !server.log().contains("tcp_refused_total_limit=730") {
        assert!(Instant::now() < deadline, "no summary:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = server.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("::transport"))
        .count();
    assert_eq!(lines, 1, "one summary line for 730 refusals:\n{log}");
    assert!(!log.contains("accept failed"), "{log}");
    eprintln!(
        "800 descriptors: 270 SIP TCP connections kept of 1000, 730 refused, {lines} log line"
    );
}

#[test]
fn out_of_descriptors_accepts_back_off_quietly_and_recover() {
    raise_own_file_limit();
    let data = tempfile::tempdir().expect("temp data dir");
    // 64 descriptors: the REST connections below exhaust them, so both
    // listeners' accepts fail with EMFILE until they are closed.
    let server = Server::start_with_file_limit(
        data.path(),
        64,
        &["--auth", "anonymous", "--rest-max-connections", "200"],
    );
    let rest = SocketAddr::from(([127, 0, 0, 1], server.rest_port));
    let hogs: Vec<TcpStream> = (0..80)
        .map(|_| TcpStream::connect(rest).expect("connect REST"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let files = std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
        .expect("fd dir")
        .count();
    assert!(files >= 63, "only {files} descriptors open: not exhausted");
    // A SIP connection now waits in the backlog: accept fails for lack
    // of descriptors, and is retried with a growing pause.
    let mut sip = connect_from(Ipv4Addr::new(127, 0, 7, 1), server.sip_addr());
    std::thread::sleep(Duration::from_secs(2));
    drop(hogs);
    let options = "OPTIONS sip:switchboard@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/TCP client.invalid:5060;branch=z9hG4bKemfile1;rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@example.com>;tag=emfile1\r\n\
         To: <sip:switchboard@127.0.0.1>\r\n\
         Call-ID: emfile1@example.com\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n";
    sip.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    sip.write_all(options.as_bytes()).expect("send");
    let response = read_stream_message(&mut sip)
        .unwrap_or_else(|| panic!("no answer once descriptors were free:\n{}", server.log()));
    assert_eq!(status(&response), 200);
    assert_eq!(server.get_json("/api/v1/health")["status"], "degraded");
    // The failed accepts are summed up in the periodic line, not logged each.
    let deadline = Instant::now() + Duration::from_secs(12);
    while !server.log().contains("tcp_accept_errors=") {
        assert!(Instant::now() < deadline, "no summary:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = server.log();
    let accept_lines = log.lines().filter(|l| l.contains("accept failed")).count();
    let summary = log
        .lines()
        .find(|l| l.contains("tcp_accept_errors="))
        .expect("summary line");
    assert!(!summary.contains("tcp_accept_errors=0 "), "{summary}");
    // REST logs its failures at powers of two only: 1, 2, 4, 8 …
    assert!(
        accept_lines <= 8,
        "{accept_lines} accept-failure lines:\n{log}"
    );
    eprintln!("EMFILE: {accept_lines} REST accept lines; summary: {summary}");
}
