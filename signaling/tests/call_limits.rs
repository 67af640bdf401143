//! Concurrent-call limits with the real binaries: one source may not hold
//! more calls than --max-calls-per-source; the INVITE beyond is refused 486
//! before the RTP manager allocates anything, and once a call ends the
//! source may call again.

mod common;

use std::time::Duration;

use common::manager::start_manager;
use common::{status, Server, UdpPeer};

const SDP: &str =
    "v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n";

fn invite(peer: &UdpPeer, call_id: &str, method: &str) -> String {
    let port = peer.port();
    let body = if method == "INVITE" { SDP } else { "" };
    let content_type = if method == "INVITE" {
        "Content-Type: application/sdp\r\n"
    } else {
        ""
    };
    format!(
        "{method} sip:1001@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{call_id};rport\r\nMax-Forwards: 70\r\nFrom: <sip:carol@127.0.0.1:{port}>;tag=c-{call_id}\r\nTo: <sip:1001@127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: 1 {method}\r\nContact: <sip:carol@127.0.0.1:{port}>\r\n{content_type}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The final response to the INVITE of `call_id`, skipping 1xx and the
/// answers to other requests.
fn final_for(peer: &UdpPeer, call_id: &str) -> String {
    loop {
        let message = peer
            .recv(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no final response for {call_id}"));
        if message.contains(&format!("Call-ID: {call_id}"))
            && message.contains("INVITE\r\n")
            && status(&message) >= 200
        {
            return message;
        }
    }
}

#[test]
fn a_fourth_call_from_one_source_is_refused_486_and_the_manager_sees_three() {
    let data = tempfile::tempdir().expect("temp dir");
    let audio = data.path().join("audio");
    std::fs::create_dir_all(&audio).expect("audio dir");
    let manager = start_manager(&audio, 16, &[]);
    // The callee never answers: calls stay ringing (in setup) for 30 s.
    let callee = UdpPeer::new();
    let plan = format!(
        r#"{{"version": "1.0", "routes": [
          {{"id": "extensions", "pattern": "1XXX", "priority": 20, "actions": [
            {{"type": "dial", "params": {{"targets": ["sip:bob@127.0.0.1:{}"], "timeout": 30}}}}]}}
        ]}}"#,
        callee.port()
    );
    let plan_path = data.path().join("dialplan.json");
    std::fs::write(&plan_path, plan).expect("write the dialplan");
    let grpc = manager.grpc.to_string();
    let server = Server::start(
        &data.path().join("state"),
        &[
            "--auth",
            "anonymous",
            "--max-calls-per-source",
            "3",
            "--dialplan",
            plan_path.to_str().expect("UTF-8 path"),
            "--rtpmanager",
            &grpc,
        ],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !server.get_json("/api/v1/rtpmanagers")["members"]
        .as_array()
        .is_some_and(|l| l.iter().any(|m| m["health"] == "healthy"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "manager never healthy"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let caller = UdpPeer::new();
    let sip = server.sip_addr();
    for n in 1..=3 {
        caller.send(
            sip,
            invite(&caller, &format!("limit-{n}"), "INVITE").as_bytes(),
        );
    }
    let three = manager.wait_calls(Duration::from_secs(10), |calls| calls.len() == 3);
    assert_eq!(three.len(), 3, "three calls set up: {three:?}");
    caller.send(sip, invite(&caller, "limit-4", "INVITE").as_bytes());
    let refused = final_for(&caller, "limit-4");
    assert_eq!(status(&refused), 486, "{refused}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(manager.calls().len(), 3, "no media for the refused call");

    // The caller cancels one call: 487, and a new call is accepted.
    caller.send(sip, invite(&caller, "limit-1", "CANCEL").as_bytes());
    let cancelled = final_for(&caller, "limit-1");
    assert_eq!(status(&cancelled), 487, "{cancelled}");
    caller.send(sip, invite(&caller, "limit-5", "INVITE").as_bytes());
    let calls = manager.wait_calls(Duration::from_secs(10), |calls| {
        calls.iter().any(|c| c.call_id.ends_with("/limit-5"))
    });
    assert!(
        calls.iter().any(|c| c.call_id.ends_with("/limit-5")),
        "the fifth call reached the manager: {calls:?}\n{}",
        server.log()
    );
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(
        server.log().contains("too many calls at once: refused 486"),
        "the refusal is logged"
    );
}
