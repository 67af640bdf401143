//! Starts an RTP manager and a signaling server as processes and checks that
//! signaling sees the manager healthy over gRPC, then sees it go down.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SIGNALING: &str = env!("CARGO_BIN_EXE_switchboard-signaling");

/// The manager binary sits next to ours in the target directory; the
/// workspace's `cargo test` builds it (xtask test builds all binaries first).
fn rtpmanager_bin() -> PathBuf {
    let path = PathBuf::from(SIGNALING).with_file_name("switchboard-rtpmanager");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` (cargo xtask test does)",
        path.display()
    );
    path
}

/// A daemon whose stderr is collected; killed by pid when dropped.
struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    fn start(cmd: &mut Command) -> Daemon {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start daemon");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut log) = sink.lock() {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        Daemon { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits i32"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon ignored SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("an ephemeral port on loopback")
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
    let rest_port = free_port();
    let data = tempfile::tempdir().expect("temp data dir");

    let mut manager = Daemon::start(
        Command::new(rtpmanager_bin())
            .args(["--grpc-port", &grpc_port.to_string(), "--fast-path", "off"])
            .args(["--rtp-port-min", "31000", "--rtp-port-max", "31100"]),
    );
    let mut signaling = Daemon::start(
        Command::new(SIGNALING)
            .args(["--rtpmanager", &format!("127.0.0.1:{grpc_port}")])
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
            .arg(data.path()),
    );

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
    let status = wait_for_health(rest_port, "down", &signaling);
    assert!(
        status["detail"].as_str().is_some_and(|d| d != "ok"),
        "{status}"
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
