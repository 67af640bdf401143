//! The three daemons for the dashboard's end-to-end tests: an RTP manager
//! (userspace path, loopback), a signaling server with a bearer token and a
//! dialplan dialling a SIPp callee, and the dashboard itself, each on free
//! ports and killed by pid on drop; plus SIPp and raw SIP helpers.

#![allow(dead_code)]

pub mod webdriver;

use std::ffi::OsStr;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const UI: &str = env!("CARGO_BIN_EXE_switchboard-ui");
pub const TOKEN: &str = "browser-test-token-0123456789abcdef";

pub use switchboard_testkit::daemon::Daemon;
use switchboard_testkit::daemon::{start_manager, Options};
pub use switchboard_testkit::free_port;

/// A binary of another package of the workspace, up to date.
pub fn workspace_binary(name: &str) -> PathBuf {
    switchboard_testkit::workspace_binary(name)
}

/// A tool from PATH; under CI its absence is a failure, elsewhere a skip.
pub fn tool(name: &str) -> Option<PathBuf> {
    switchboard_testkit::tool(name, "the browser test")
}

/// Starts `command` as `name` and waits (30 s at most) until a log line
/// contains `ready`.
fn start(name: &str, command: &mut Command, ready: &str) -> Daemon {
    let mut daemon = Daemon::spawn(name, command);
    daemon.wait_ready(ready, Duration::from_secs(30));
    daemon
}

/// The three daemons on loopback.
pub struct System {
    pub dir: tempfile::TempDir,
    pub manager: Daemon,
    pub signaling: Daemon,
    pub ui: Daemon,
    pub sip_port: u16,
    pub rest_port: u16,
    pub ui_port: u16,
    /// The SIPp callee's port that extensions 1XXX dial.
    pub callee_port: u16,
}

use switchboard_testkit::free_media_range;

impl System {
    /// Starts manager, signaling (token `TOKEN`, anonymous SIP, extensions
    /// dial the callee port) and the dashboard (named backend `sb1`).
    pub fn start() -> System {
        let dir = tempfile::tempdir().expect("temp dir");
        let audio = dir.path().join("audio");
        std::fs::create_dir_all(&audio).expect("audio dir");
        let manager = start_manager(
            &workspace_binary("switchboard-rtpmanager"),
            0,
            free_media_range(8),
            [OsStr::new("--audio-path"), audio.as_os_str()],
            Options::default(),
        );
        let grpc = manager.grpc;
        let manager = manager.daemon;

        let callee_port = free_port();
        let plan = format!(
            r#"{{"version": "1.0", "routes": [
              {{"id": "extensions", "pattern": "1XXX", "priority": 20, "actions": [
                {{"type": "dial", "params": {{"targets": ["sip:bob@127.0.0.1:{callee_port}"], "timeout": 20}}}}]}},
              {{"id": "unknown", "pattern": "*", "priority": 1000, "actions": [
                {{"type": "hangup", "params": {{"code": 404, "reason": "Not Found"}}}}]}}
            ]}}"#
        );
        let plan_path = dir.path().join("dialplan.json");
        std::fs::write(&plan_path, plan).expect("write the dialplan");
        let tokens = dir.path().join("api-tokens");
        std::fs::write(&tokens, format!("{TOKEN}\n")).expect("token file");
        let sip_port = free_port();
        let rest_port = free_port();
        let signaling = start(
            "signaling",
            Command::new(workspace_binary("switchboard-signaling"))
                .args([
                    "--bind-address",
                    "127.0.0.1",
                    "--port",
                    &sip_port.to_string(),
                ])
                .args([
                    "--rest-port",
                    &rest_port.to_string(),
                    "--rtpmanager",
                    &format!("sb-manager={grpc}"),
                ])
                .args(["--rtpmanager-health-interval", "1", "--auth", "anonymous"])
                .arg("--dialplan")
                .arg(&plan_path)
                .arg("--data-dir")
                .arg(dir.path().join("state"))
                .arg("--api-token-file")
                .arg(&tokens)
                .args(["--log-level", "info"]),
            "signaling ready",
        );

        let ui_port = free_port();
        let ui = start(
            "ui",
            Command::new(UI)
                .args(["--port", &ui_port.to_string()])
                .args(["--backends", &format!("sb1=http://127.0.0.1:{rest_port}")])
                .arg("--backend-token-file")
                .arg(&tokens)
                .args(["--poll-interval", "1", "--log-level", "info"]),
            "dashboard ready",
        );
        System {
            dir,
            manager,
            signaling,
            ui,
            sip_port,
            rest_port,
            ui_port,
            callee_port,
        }
    }

    pub fn ui_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ui_port)
    }

    /// A request to signaling's REST API with the token; status and JSON.
    pub fn api(&self, method: &str, path: &str) -> (u16, serde_json::Value) {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.rest_port))
            .expect("connect to the REST API");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\n\r\n"
        )
        .expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (
            status,
            serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Waits until signaling reports its manager healthy.
    pub fn wait_manager_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (_, pool) = self.api("GET", "/api/v1/rtpmanagers");
            if pool["members"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["health"] == "healthy"))
            {
                return;
            }
            assert!(Instant::now() < deadline, "manager never healthy: {pool}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of every daemon's log, for failure messages.
    pub fn logs(&self) -> String {
        [&self.manager, &self.signaling, &self.ui]
            .iter()
            .map(|d| {
                let log = d.log();
                let lines: Vec<&str> = log.lines().collect();
                format!(
                    "--- {} ---\n{}",
                    d.name(),
                    lines[lines.len().saturating_sub(40)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Registers `user` over UDP with `user_agent` (anonymous registrar).
    pub fn register(&self, user: &str, user_agent: &str) {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let port = socket.local_addr().expect("address").port();
        let sip = self.sip_port;
        let request = format!(
            "REGISTER sip:127.0.0.1:{sip} SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-ui-{user}-{port};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{user}@127.0.0.1>;tag=ui{port}\r\n\
             To: <sip:{user}@127.0.0.1>\r\n\
             Call-ID: ui-register-{user}-{port}\r\n\
             CSeq: 1 REGISTER\r\n\
             Contact: <sip:{user}@127.0.0.1:{port}>\r\n\
             Expires: 600\r\n\
             User-Agent: {user_agent}\r\n\
             Content-Length: 0\r\n\r\n"
        );
        socket
            .send_to(request.as_bytes(), ("127.0.0.1", sip))
            .expect("send REGISTER");
        let mut buffer = [0u8; 4096];
        loop {
            let (len, _) = socket
                .recv_from(&mut buffer)
                .expect("an answer to REGISTER");
            let answer = String::from_utf8_lossy(&buffer[..len]).into_owned();
            if answer.starts_with("SIP/2.0 1") {
                continue;
            }
            assert!(answer.starts_with("SIP/2.0 200"), "REGISTER: {answer}");
            return;
        }
    }

    /// Starts SIPp with `scenario` (of tests/sipp) for one call.
    pub fn sipp(&self, sipp: &Path, scenario: &str, port: u16, args: &[&str]) -> Child {
        let scenario = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/sipp")
            .join(scenario);
        switchboard_testkit::sipp::command(sipp, &scenario, port, self.dir.path())
            .args(["-m", "1", "-timeout", "60s", "-trace_err"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run sipp")
    }
}

/// Waits up to `limit` for `child` to exit; its status and output, or
/// `None` (and the child killed) when it did not.
pub fn wait_exit(mut child: Child, limit: Duration) -> Option<std::process::Output> {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().expect("wait").is_some() {
            return Some(child.wait_with_output().expect("output"));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `target/` of the workspace, where the screenshots go.
pub fn artefacts_dir() -> PathBuf {
    let target = Path::new(UI)
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("ui-browser")
}
