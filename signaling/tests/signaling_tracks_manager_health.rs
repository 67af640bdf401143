//! Starts an RTP manager and a signaling server as processes and checks that
//! signaling sees the manager healthy over gRPC, then sees it go down; and
//! that with mutual TLS and a token it sees the manager healthy only with
//! the right client settings, saying why otherwise, never logging a token.

#[path = "../../rtpmanager/tests/common/pki.rs"]
mod pki;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use switchboard_testkit::daemon::Daemon;
use switchboard_testkit::free_port;

const SIGNALING: &str = env!("CARGO_BIN_EXE_switchboard-signaling");

/// The manager binary, up to date (another package of the workspace).
fn rtpmanager_bin() -> PathBuf {
    switchboard_testkit::workspace_binary("switchboard-rtpmanager")
}

/// A minimal HTTP/1.0 GET, enough for our own JSON API.
fn http_get_json(port: u16, path: &str) -> Option<serde_json::Value> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let body = response.split_once("\r\n\r\n")?.1;
    serde_json::from_str(body).ok()
}

/// Starts signaling on free ports, driving the manager at `rtpmanager`
/// with health checks every second; `extra` adds options.
fn start_signaling(rtpmanager: &str, extra: &[&str]) -> (Daemon, u16, tempfile::TempDir) {
    let rest_port = free_port();
    let data = tempfile::tempdir().expect("temp data dir");
    let signaling = Daemon::spawn(
        "switchboard-signaling",
        Command::new(SIGNALING)
            .args(["--rtpmanager", rtpmanager])
            .args(["--rtpmanager-health-interval", "1"])
            .args(["--rest-port", &rest_port.to_string()])
            .args([
                "--bind-address",
                "127.0.0.1",
                "--port",
                &free_port().to_string(),
            ])
            .args(["--auth", "anonymous"])
            .arg("--data-dir")
            .arg(data.path())
            .args(extra),
    );
    (signaling, rest_port, data)
}

fn wait_for_health(rest_port: u16, want: &str, signaling: &Daemon) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(pool) = http_get_json(rest_port, "/api/v1/rtpmanagers") {
            let manager = &pool["members"][0];
            if manager["health"] == want {
                return manager.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "manager never became {want}; signaling log:\n{}",
            signaling.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn signaling_sees_the_manager_healthy_then_down() {
    let grpc_port = free_port();
    let mut manager = Daemon::spawn(
        "switchboard-rtpmanager",
        Command::new(rtpmanager_bin())
            .args(["--grpc-port", &grpc_port.to_string(), "--fast-path", "off"])
            .args(["--rtp-port-min", "31000", "--rtp-port-max", "31100"]),
    );
    let (mut signaling, rest_port, _data) = start_signaling(&format!("127.0.0.1:{grpc_port}"), &[]);

    let status = wait_for_health(rest_port, "healthy", &signaling);
    assert_eq!(status["endpoint"], format!("http://127.0.0.1:{grpc_port}"));
    assert_eq!(status["id"], format!("127.0.0.1:{grpc_port}"));
    assert_eq!(status["fast_path"], "off");
    assert_eq!(status["ports_free"], 50);
    assert_eq!(status["detail"], "ok");
    assert!(
        status["instance_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{status}"
    );
    assert!(
        status["fast_path_reason"]
            .as_str()
            .is_some_and(|r| r.contains("--fast-path off")),
        "{status}"
    );
    let health = http_get_json(rest_port, "/api/v1/health").expect("health endpoint");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["rtpmanagers_healthy"], 1);
    assert!(
        signaling.log().contains("RTP manager health changed"),
        "{}",
        signaling.log()
    );

    assert!(
        manager.terminate().success(),
        "manager stops cleanly:\n{}",
        manager.log()
    );
    assert!(status.get("down_since_ms").is_none(), "up: {status}");
    let stopped = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();
    let status = wait_for_health(rest_port, "down", &signaling);
    assert!(
        status["detail"].as_str().is_some_and(|d| d != "ok"),
        "{status}"
    );
    let down_since = status["down_since_ms"].as_u64().map(u128::from);
    assert!(
        down_since.is_some_and(|t| t >= stopped && t < stopped + 10_000),
        "declared down after the stop at {stopped}: {status}"
    );
    assert!(
        signaling.log().contains("RTP manager down"),
        "{}",
        signaling.log()
    );
    let health = http_get_json(rest_port, "/api/v1/health").expect("health endpoint");
    assert_eq!(health["status"], "degraded");

    let exit = signaling.terminate();
    assert!(
        exit.success(),
        "signaling stops cleanly: {exit}\n{}",
        signaling.log()
    );
    assert!(
        signaling.log().contains("shutting down"),
        "{}",
        signaling.log()
    );
}

const TOKEN: &str = "9f86d081884c7d659a2feaa0c55ad015";
const WRONG_TOKEN: &str = "60303ae22b998861bce3b28f33eec1be";

#[test]
fn signaling_sees_a_manager_behind_mutual_tls_and_a_token_only_with_the_right_settings() {
    let pki = pki::Pki::new();
    let manager_tokens = pki.write("manager-tokens", &format!("# pool\n{TOKEN}\n"));
    let right = pki.write("right", &format!("{TOKEN}\n"));
    let wrong = pki.write("wrong", &format!("{WRONG_TOKEN}\n"));

    let grpc_port = free_port();
    let manager = Daemon::spawn(
        "switchboard-rtpmanager",
        Command::new(rtpmanager_bin())
            .args(["--grpc-port", &grpc_port.to_string(), "--fast-path", "off"])
            .args(["--rtp-port-min", "31400", "--rtp-port-max", "31440"])
            .args(pki.manager_tls())
            .args(["--grpc-token-file", &manager_tokens]),
    );
    let endpoint = format!("127.0.0.1:{grpc_port}");
    let tls = pki.signaling_tls();

    let (trusted, rest, _data) = start_signaling(
        &endpoint,
        &[&tls[..], &["--rtpmanager-token-file", &right]].concat(),
    );
    let status = wait_for_health(rest, "healthy", &trusted);
    assert_eq!(status["endpoint"], format!("https://{endpoint}"));
    assert_eq!(status["detail"], "ok");
    assert_eq!(status["ports_free"], 20);
    assert!(
        status["instance_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "Info went through too: {status}"
    );

    let (stranger, rest, _data) = start_signaling(
        &endpoint,
        &[&tls[..], &["--rtpmanager-token-file", &wrong]].concat(),
    );
    let status = wait_for_health(rest, "down", &stranger);
    let detail = status["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("authentication credentials")
            && detail.contains("bearer token is not one this RTP manager accepts"),
        "{status}"
    );
    let log = stranger.log();
    assert!(
        log.contains("RTP manager down") && log.contains("bearer token is not one"),
        "{log}"
    );

    let (no_certificate, rest, _data) = start_signaling(
        &endpoint,
        &[
            "--rtpmanager-tls-ca",
            &pki.arg("ca.crt"),
            "--rtpmanager-token-file",
            &right,
        ],
    );
    let status = wait_for_health(rest, "down", &no_certificate);
    assert!(
        status["detail"].as_str().is_some_and(|d| d != "ok"),
        "{status}"
    );

    let (plaintext, rest, _data) = start_signaling(
        &format!("http://{endpoint}"),
        &["--rtpmanager-token-file", &right],
    );
    wait_for_health(rest, "down", &plaintext);

    for (name, log) in [
        ("manager", manager.log()),
        ("trusted", trusted.log()),
        ("stranger", stranger.log()),
        ("no certificate", no_certificate.log()),
        ("plaintext", plaintext.log()),
    ] {
        for token in [TOKEN, WRONG_TOKEN] {
            assert!(!log.contains(token), "{name} logged a token:\n{log}");
        }
    }
    assert!(
        manager.log().contains("gRPC request refused"),
        "{}",
        manager.log()
    );
}
