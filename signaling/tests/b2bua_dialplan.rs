//! The dialplan in the running server: an invalid plan stops the start
//! with an error naming the route and the field; SIGHUP reloads the plan
//! for new calls, and an invalid new plan is refused (logged) while the old
//! one keeps routing.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, header, status, Server, UdpPeer, SIGNALING};

fn hangup_plan(code: u16) -> String {
    format!(
        r#"{{"version": "1.0", "routes": [
          {{"id": "ext", "pattern": "1XXX", "actions": [
            {{"type": "hangup", "params": {{"code": {code}, "reason": "Plan {code}"}}}}]}}]}}"#
    )
}

fn invite(peer: &UdpPeer, n: u32) -> String {
    format!(
        "INVITE sip:1001@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{};branch=z9hG4bKplan{n};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@127.0.0.1>;tag=plan{n}\r\n\
         To: <sip:1001@127.0.0.1>\r\n\
         Call-ID: plan-{n}@127.0.0.1\r\n\
         CSeq: 1 INVITE\r\n\
         Content-Length: 0\r\n\r\n",
        peer.port()
    )
}

/// Places a call and returns the final status and reason; ACKs it.
fn call(server: &Server, peer: &UdpPeer, n: u32) -> (u16, String) {
    let response = peer.request(server.sip_addr(), invite(peer, n).as_bytes());
    let to = header(&response, "To").expect("To").to_owned();
    let ack = invite(peer, n)
        .replacen("INVITE sip:", "ACK sip:", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 ACK")
        .replace("To: <sip:1001@127.0.0.1>", &format!("To: {to}"));
    peer.send(server.sip_addr(), ack.as_bytes());
    let reason = response
        .lines()
        .next()
        .and_then(|l| l.splitn(3, ' ').nth(2))
        .unwrap_or_default()
        .to_owned();
    (status(&response), reason)
}

fn wait_for_log(server: &Server, text: &str, occurrences: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.log().matches(text).count() < occurrences {
        assert!(
            Instant::now() < deadline,
            "no `{text}` in the log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_invalid_dialplan_stops_the_start_naming_route_and_field() {
    let data = tempfile::tempdir().expect("temp dir");
    let plan = data.path().join("dialplan.json");
    std::fs::write(
        &plan,
        r#"{"version": "1.0", "routes": [{"id": "ext", "pattern": "1XXX",
           "actions": [{"type": "dial", "params": {"targets": ["ftp://x"]}}]}]}"#,
    )
    .expect("write plan");
    let output = run_to_exit(&data.path().join("state"), &plan);
    assert_ne!(output.0, Some(0), "the server must not start");
    assert!(
        output.1.contains(
            "dialplan route `ext`: actions[0].params.targets: `ftp://x` is neither user/<name> nor a sip: URI"
        ),
        "{}",
        output.1
    );
    assert!(output.1.contains("--dialplan"), "{}", output.1);

    // A plan named on the command line must exist.
    let missing = data.path().join("missing.json");
    let output = run_to_exit(&data.path().join("state"), &missing);
    assert_ne!(output.0, Some(0));
    assert!(output.1.contains("missing.json"), "{}", output.1);
}

fn run_to_exit(data: &Path, plan: &Path) -> (Option<i32>, String) {
    let (status, stderr) = switchboard_testkit::daemon::run_to_exit(
        "the server given an invalid dialplan",
        Command::new(SIGNALING)
            .args([
                "--bind-address",
                "127.0.0.1",
                "--port",
                &free_port().to_string(),
            ])
            .args([
                "--rest-port",
                &free_port().to_string(),
                "--rtpmanager",
                "127.0.0.1:9",
            ])
            .args(["--auth", "anonymous"])
            .arg("--data-dir")
            .arg(data)
            .arg("--dialplan")
            .arg(plan),
        Duration::from_secs(10),
    );
    (status.code(), stderr)
}

#[test]
fn sighup_reloads_the_dialplan_and_keeps_the_old_one_when_invalid() {
    let data = tempfile::tempdir().expect("temp dir");
    let plan = data.path().join("dialplan.json");
    std::fs::write(&plan, hangup_plan(486)).expect("write plan");
    let plan_arg = plan.to_str().expect("UTF-8 path").to_owned();
    let server = Server::start(
        &data.path().join("state"),
        &["--auth", "anonymous", "--dialplan", &plan_arg],
    );
    let peer = UdpPeer::new();
    assert_eq!(call(&server, &peer, 1), (486, "Plan 486".to_owned()));

    std::fs::write(&plan, r#"{"version": "1.0", "routes": [{"id": "broken"}]}"#)
        .expect("write plan");
    nix::sys::signal::kill(server.pid(), nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    wait_for_log(&server, "dialplan not reloaded", 1);
    assert!(
        server.log().contains("dialplan route `broken`"),
        "the log says why:\n{}",
        server.log()
    );
    assert_eq!(
        call(&server, &peer, 2),
        (486, "Plan 486".to_owned()),
        "the old plan stays"
    );

    std::fs::write(&plan, hangup_plan(403)).expect("write plan");
    nix::sys::signal::kill(server.pid(), nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    wait_for_log(&server, "dialplan reloaded", 1);
    // The core takes the new plan on its next turn.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut n = 3;
    loop {
        let answer = call(&server, &peer, n);
        if answer.0 == 403 {
            assert_eq!(answer.1, "Plan 403");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new plan not applied: {answer:?}"
        );
        n += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_reload_endpoints_swap_the_dialplan_and_say_why_a_broken_file_is_refused() {
    let data = tempfile::tempdir().expect("temp dir");
    let plan = data.path().join("dialplan.json");
    std::fs::write(&plan, hangup_plan(486)).expect("write plan");
    let plan_arg = plan.to_str().expect("UTF-8 path").to_owned();
    let users = common::users_file(data.path(), &[("1001", "one")]);
    let users_arg = users.to_str().expect("UTF-8 path").to_owned();
    let server = Server::start(
        &data.path().join("state"),
        &[
            "--auth",
            "anonymous",
            "--dialplan",
            &plan_arg,
            "--users-file",
            &users_arg,
        ],
    );
    let peer = UdpPeer::new();
    assert_eq!(call(&server, &peer, 1), (486, "Plan 486".to_owned()));

    std::fs::write(&plan, r#"{"version": "1.0", "routes": [{"id": "broken"}]}"#)
        .expect("write plan");
    let (status, body) = server.rest("POST", "/api/v1/reload/dialplan");
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "conflict");
    let detail = body["detail"].as_str().expect("a detail");
    assert!(detail.contains("dialplan route `broken`"), "{detail}");
    assert!(detail.ends_with("the previous plan stays"), "{detail}");
    assert_eq!(call(&server, &peer, 2), (486, "Plan 486".to_owned()));

    std::fs::write(&plan, hangup_plan(403)).expect("write plan");
    let (status, body) = server.rest("POST", "/api/v1/reload/dialplan");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"reloaded": "dialplan", "count": 1})
    );
    // The core takes the new plan on its next turn.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut n = 3;
    while call(&server, &peer, n).0 != 403 {
        assert!(Instant::now() < deadline, "the new plan never took over");
        n += 1;
    }

    common::users_file(data.path(), &[("1001", "one"), ("1002", "two")]);
    let (status, body) = server.rest("POST", "/api/v1/reload/users");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, serde_json::json!({"reloaded": "users", "count": 2}));
    std::fs::write(&users, "[[user]]\nname = 1\n").expect("break the users file");
    let (status, body) = server.rest("POST", "/api/v1/reload/users");
    assert_eq!(status, 409, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.ends_with("the previous users stay")),
        "{body}"
    );
}
