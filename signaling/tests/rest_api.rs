//! The REST API of the running binary: bearer tokens (and that the token
//! never reaches the log), the loopback-only rule without one, and a
//! registration from sipsak listed with its user agent, then unregistered
//! through the API for good (a restart does not bring it back).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Server, SIGNALING};
use nix::sys::signal::Signal;

const TOKEN: &str = "rest-api-test-token-5f0c2a9e41d8";
const WRONG: &str = "rest-api-wrong-token-77aa01b3c4";

/// One HTTP/1.0 request to the REST API; the status and the body as JSON
/// (a string when it is not JSON).
fn request(
    rest_port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut stream = TcpStream::connect(("127.0.0.1", rest_port)).expect("connect to the REST API");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{authorization}\r\n"
    )
    .expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let json = serde_json::from_str(body).unwrap_or_else(|_| body.into());
    (status, json)
}

/// The server binary at `--log-level trace` (everything, hyper's and
/// axum's events included), its log written to a file.
struct TracedServer {
    child: std::process::Child,
    log: std::path::PathBuf,
    rest_port: u16,
}

impl TracedServer {
    fn start(data: &std::path::Path, tokens: &str) -> TracedServer {
        let log = data.join("signaling.log");
        let (sip_port, rest_port) = (common::free_port(), common::free_port());
        let child = Command::new(SIGNALING)
            .args(["--bind-address", "127.0.0.1"])
            .args(["--port", &sip_port.to_string()])
            .args(["--rest-port", &rest_port.to_string()])
            .args([
                "--rtpmanager",
                "127.0.0.1:9",
                "--rtpmanager-health-interval",
                "60",
            ])
            .args(["--api-token-file", tokens, "--log-level", "trace"])
            .arg("--data-dir")
            .arg(data.join("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start signaling");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("signaling ready")
        {
            assert!(std::time::Instant::now() < deadline, "server not ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        TracedServer {
            child,
            log,
            rest_port,
        }
    }

    fn stop(mut self) -> String {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        nix::sys::signal::kill(pid, Signal::SIGTERM).expect("signal");
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "{status}");
        std::fs::read_to_string(&self.log).expect("read log")
    }
}

#[test]
fn tokens_guard_the_api_and_never_reach_the_log() {
    let data = tempfile::tempdir().expect("temp dir");
    let tokens = data.path().join("api-tokens");
    std::fs::write(&tokens, format!("# operators\n{TOKEN}\n")).expect("token file");
    let traced = TracedServer::start(data.path(), tokens.to_str().expect("UTF-8 path"));
    let server = traced.rest_port;
    for path in [
        "/api/v1/rtpmanagers",
        "/api/v1/registrations",
        "/api/v1/rtpmanagers/127.0.0.1:9/drain",
        "/api/v1/openapi.json",
        "/metrics",
    ] {
        for token in [None, Some(WRONG)] {
            let (status, body) = request(server, "GET", path, token);
            assert_eq!(status, 401, "{path} with {token:?}: {body}");
            assert_eq!(body["error"], "unauthorized", "{body}");
        }
        let (status, body) = request(server, "GET", path, Some(TOKEN));
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, body) = request(server, "GET", "/api/v1/health", None);
    assert_eq!(status, 200, "{body}");
    let drain = "/api/v1/rtpmanagers/127.0.0.1:9/drain";
    let (status, _) = request(server, "POST", drain, Some(WRONG));
    assert_eq!(status, 401);
    let (_, state) = request(server, "GET", drain, Some(TOKEN));
    assert_eq!(state["operator"], false, "a refused POST drained nothing");

    let log = traced.stop();
    assert!(
        log.contains("REST API requires a bearer token"),
        "start says so:\n{log}"
    );
    assert!(
        log.contains("no valid bearer token"),
        "refusals logged:\n{log}"
    );
    assert!(
        log.contains("hyper"),
        "trace level reaches the HTTP stack too:\n{log}"
    );
    // Nor a part of one: the first half of each is already too much.
    for secret in [TOKEN, WRONG] {
        assert!(
            !log.contains(&secret[..secret.len() / 2]),
            "a token reached the log (trace level, {} lines)",
            log.lines().count()
        );
    }
}

#[test]
fn without_a_token_the_api_stays_on_loopback() {
    let data = tempfile::tempdir().expect("temp dir");
    let output = Command::new(SIGNALING)
        .args(["--rest-address", "0.0.0.0", "--rest-port", "0"])
        .arg("--data-dir")
        .arg(data.path())
        .stdin(Stdio::null())
        .output()
        .expect("run signaling");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "refused at start: {stderr}");
    assert!(
        stderr.contains("--rest-address") && stderr.contains("--api-token-file"),
        "{stderr}"
    );

    let server = Server::start(&data.path().join("state"), &[]);
    assert!(
        server
            .log()
            .contains("REST API without a token: it answers on loopback only"),
        "{}",
        server.log()
    );
    let (status, _) = request(server.rest_port, "GET", "/api/v1/registrations", None);
    assert_eq!(status, 200, "open on loopback");
}

#[test]
fn a_sipsak_registration_shows_its_user_agent_and_delete_removes_it_for_good() {
    let Some(sipsak) = common::peer_tool("sipsak") else {
        return;
    };
    let data = tempfile::tempdir().expect("temp dir");
    let tokens = data.path().join("api-tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).expect("token file");
    let tokens = tokens.to_str().expect("UTF-8 path");
    let mut server = Server::start(
        &data.path().join("state"),
        &["--auth", "anonymous", "--api-token-file", tokens],
    );
    let register = |user: &str, contact_port: u16| {
        let output = Command::new(&sipsak)
            .args([
                "-U",
                "-i",
                "-s",
                &format!("sip:{user}@127.0.0.1:{}", server.sip_port),
            ])
            .args([
                "-x",
                "600",
                "-C",
                &format!("sip:{user}@127.0.0.1:{contact_port}"),
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run sipsak");
        assert_eq!(
            output.status.code(),
            Some(0),
            "sipsak registers {user}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    };
    register("2001", 5997);
    register("2002", 5996);

    let (status, one) = request(
        server.rest_port,
        "GET",
        "/api/v1/registrations/2001@127.0.0.1",
        Some(TOKEN),
    );
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["aor"], "2001@127.0.0.1");
    let binding = &one["bindings"][0];
    assert_eq!(binding["contact"], "sip:2001@127.0.0.1:5997");
    assert!(
        binding["user_agent"]
            .as_str()
            .is_some_and(|ua| ua.starts_with("sipsak")),
        "{binding}"
    );
    assert_eq!(binding["transport"], "udp");
    assert!(
        binding["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("127.0.0.1:")),
        "{binding}"
    );
    assert!((590..=600).contains(&binding["expires"].as_u64().expect("expires")));
    for field in ["expires_at", "registered_at", "updated_at"] {
        let time = binding[field].as_str().expect(field);
        assert!(time.len() == 24 && time.ends_with('Z'), "{field}: {time}");
    }
    assert_eq!(
        binding["registered_at"], binding["updated_at"],
        "first registration"
    );

    let (status, removed) = request(
        server.rest_port,
        "DELETE",
        "/api/v1/registrations/sip:2001@127.0.0.1",
        Some(TOKEN),
    );
    assert_eq!(status, 200, "{removed}");
    assert_eq!(removed["aor"], "2001@127.0.0.1");
    assert_eq!(removed["removed"], 1);
    let (status, gone) = request(
        server.rest_port,
        "GET",
        "/api/v1/registrations/2001@127.0.0.1",
        Some(TOKEN),
    );
    assert_eq!(status, 404, "{gone}");
    assert_eq!(gone["error"], "not_found");
    let (status, again) = request(
        server.rest_port,
        "DELETE",
        "/api/v1/registrations/2001@127.0.0.1",
        Some(TOKEN),
    );
    assert_eq!((status, &again["error"]), (404, &"not_found".into()));
    let (status, bad) = request(
        server.rest_port,
        "GET",
        "/api/v1/registrations/@nowhere",
        Some(TOKEN),
    );
    assert_eq!(
        (status, &bad["error"]),
        (400, &"bad_request".into()),
        "{bad}"
    );

    let exit = server.stop_with(Signal::SIGTERM);
    assert!(exit.success(), "{exit}");
    server.restart();
    let (status, list) = request(
        server.rest_port,
        "GET",
        "/api/v1/registrations",
        Some(TOKEN),
    );
    assert_eq!(status, 200, "{list}");
    let aors: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|b| b["aor"].as_str())
        .collect();
    assert_eq!(
        aors,
        vec!["2002@127.0.0.1"],
        "the removal survived the restart"
    );
    let (status, _) = request(
        server.rest_port,
        "GET",
        "/api/v1/registrations/2001@127.0.0.1",
        Some(TOKEN),
    );
    assert_eq!(status, 404);
}

#[test]
fn a_named_manager_is_drained_by_its_name_and_a_bad_token_file_stops_the_start() {
    let data = tempfile::tempdir().expect("temp dir");
    let missing = data.path().join("no-such-tokens");
    let output = Command::new(SIGNALING)
        .args([
            "--rest-port",
            "0",
            "--port",
            "0",
            "--bind-address",
            "127.0.0.1",
        ])
        .arg("--api-token-file")
        .arg(&missing)
        .arg("--data-dir")
        .arg(data.path())
        .stdin(Stdio::null())
        .output()
        .expect("run signaling");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("--api-token-file") && stderr.contains("no-such-tokens"),
        "{stderr}"
    );

    // Port 11 answers nothing: the manager is down, its name still works.
    let server = Server::start(
        &data.path().join("state"),
        &["--rtpmanager", "edge-b=127.0.0.1:11"],
    );
    let (status, pool) = request(server.rest_port, "GET", "/api/v1/rtpmanagers", None);
    assert_eq!(status, 200, "{pool}");
    let ids: Vec<&str> = pool["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, vec!["127.0.0.1:9", "edge-b"], "{pool}");
    assert_eq!(pool["total"], 2);
    let (status, state) = request(
        server.rest_port,
        "POST",
        "/api/v1/rtpmanagers/edge-b/drain",
        None,
    );
    assert_eq!((status, &state["operator"]), (200, &true.into()), "{state}");
    let (_, pool) = request(server.rest_port, "GET", "/api/v1/rtpmanagers", None);
    assert_eq!(pool["members"][1]["drain"]["operator"], true, "{pool}");
    assert!(
        server.logged("RTP manager drain set by the operator"),
        "{}",
        server.log()
    );
    let (status, missing) = request(
        server.rest_port,
        "GET",
        "/api/v1/rtpmanagers/127.0.0.1:11/drain",
        None,
    );
    assert_eq!(
        status, 404,
        "named managers answer to their name only: {missing}"
    );
}
