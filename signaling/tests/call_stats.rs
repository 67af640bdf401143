//! Counts of real calls: a SIPp call through signaling and the RTP manager
//! and a call the dialplan refuses 486 show in `/api/v1/stats` (total, by
//! final status, none left active) and in `/metrics` (the final statuses
//! and two INVITE→final response latencies).

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::manager::start_manager;
use common::{free_port, status, Server, UdpPeer};

fn sipp(dir: &std::path::Path, scenario: &str, port: u16, args: &[&str]) -> std::process::Child {
    let sipp = common::peer_tool("sipp").expect("checked by the caller");
    switchboard_testkit::sipp::command(&sipp, &common::sipp::scenario(scenario), port, dir)
        .args(["-m", "1", "-timeout", "30s"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run sipp")
}

fn metrics_text(server: &Server) -> String {
    server.get_text("/metrics")
}

fn series(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

#[test]
fn an_answered_and_a_refused_call_are_counted_by_final_status() {
    if common::peer_tool("sipp").is_none() {
        return;
    }
    let data = tempfile::tempdir().expect("temp dir");
    let audio = data.path().join("audio");
    std::fs::create_dir_all(&audio).expect("audio dir");
    let manager = start_manager(&audio, 16, &[]);
    let callee_port = free_port();
    let plan = format!(
        r#"{{"version": "1.0", "routes": [
          {{"id": "extensions", "pattern": "1XXX", "priority": 20, "actions": [
            {{"type": "dial", "params": {{"targets": ["sip:bob@127.0.0.1:{callee_port}"], "timeout": 10}}}}]}},
          {{"id": "busy", "pattern": "4XXX", "priority": 30, "actions": [
            {{"type": "hangup", "params": {{"code": 486, "reason": "Busy Here"}}}}]}}
        ]}}"#
    );
    let plan_path = data.path().join("dialplan.json");
    std::fs::write(&plan_path, plan).expect("write the dialplan");
    let grpc = manager.grpc.to_string();
    let server = Server::start(
        &data.path().join("state"),
        &[
            "--auth",
            "anonymous",
            "--dialplan",
            plan_path.to_str().expect("UTF-8"),
            "--rtpmanager",
            &grpc,
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.get_json("/api/v1/rtpmanagers")["members"]
        .as_array()
        .is_some_and(|list| list.iter().any(|m| m["health"] == "healthy"))
    {
        assert!(Instant::now() < deadline, "manager never healthy");
        std::thread::sleep(Duration::from_millis(50));
    }

    let callee = sipp(
        data.path(),
        "b2bua_uas.xml",
        callee_port,
        &["-key", "rtp_b", "9"],
    );
    std::thread::sleep(Duration::from_millis(300));
    let target = server.sip_addr().to_string();
    let caller = sipp(
        data.path(),
        "b2bua_uac.xml",
        free_port(),
        &["-s", "1001", "-key", "rtp_a", "9", "-d", "200", &target],
    );
    for (role, mut child) in [("caller", caller), ("callee", callee)] {
        let exit = child.wait().expect("sipp ends");
        assert_eq!(exit.code(), Some(0), "SIPp {role}:\n{}", server.log());
    }

    let peer = UdpPeer::new();
    let invite = format!(
        "INVITE sip:4001@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKbusy;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@127.0.0.1>;tag=busy\r\n\
         To: <sip:4001@127.0.0.1>\r\nCall-ID: stats-busy\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:alice@127.0.0.1:{port}>\r\nContent-Length: 0\r\n\r\n",
        port = peer.port()
    );
    let response = peer.request(server.sip_addr(), invite.as_bytes());
    assert_eq!(status(&response), 486, "{response}");

    // The core counts right after sending: the 486 may be here a moment
    // before its count.
    let deadline = Instant::now() + Duration::from_secs(5);
    let stats = loop {
        let stats = server.get_json("/api/v1/stats");
        let settled = stats["calls"]["active"] == 0 && stats["calls"]["total"] == 2;
        if settled || Instant::now() > deadline {
            break stats;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(stats["calls"]["total"], 2, "{stats}");
    assert_eq!(stats["calls"]["active"], 0, "{stats}");
    assert_eq!(
        stats["calls"]["by_status"],
        serde_json::json!({"200": 1, "486": 1}),
        "{stats}"
    );
    assert_eq!(stats["dialogs"], 0, "{stats}");
    assert!(
        stats["calls"]["per_second_last_minute"]
            .as_f64()
            .is_some_and(|r| r > 0.0),
        "{stats}"
    );

    let text = metrics_text(&server);
    assert_eq!(
        series(&text, "switchboard_calls_started_total"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        series(
            &text,
            "switchboard_calls_final_status_total{status=\"200\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        series(
            &text,
            "switchboard_calls_final_status_total{status=\"486\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        series(&text, "switchboard_invite_final_response_seconds_count"),
        Some(2.0)
    );
    // SIPp answers at once: both final responses within 2.5 s.
    assert_eq!(
        series(
            &text,
            "switchboard_invite_final_response_seconds_bucket{le=\"2.5\"}"
        ),
        Some(2.0),
        "{text}"
    );
    // The answered call's offer and answer went to the manager (the
    // refused one reached none), each within the requests' 5 s timeout.
    for op in ["offer", "answer"] {
        let labels = format!("{{op=\"{op}\",rtpmanager=\"{grpc}\"}}");
        assert_eq!(
            series(
                &text,
                &format!("switchboard_media_request_seconds_count{labels}")
            ),
            Some(1.0),
            "{op}: {text}"
        );
        let within = format!(
            "switchboard_media_request_seconds_bucket{{op=\"{op}\",rtpmanager=\"{grpc}\",le=\"5\"}}"
        );
        assert_eq!(series(&text, &within), Some(1.0), "{op}: {text}");
    }
}
