//! A real RTP manager for the signaling binary tests: built beside the
//! signaling binary if missing, started on an ephemeral gRPC port and a
//! free media range, killed by pid when dropped; and its `ListCalls`.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchboard_proto::v1;
use switchboard_proto::v1::rtp_manager_client::RtpManagerClient;

use super::SIGNALING;

/// The manager binary beside the signaling one, built if missing (it is
/// another package of the workspace, so cargo does not build it for us).
pub fn manager_binary() -> PathBuf {
    let path = Path::new(SIGNALING).with_file_name("switchboard-rtpmanager");
    if !path.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .args([
                "build",
                "-p",
                "switchboard-rtpmanager",
                "--bin",
                "switchboard-rtpmanager",
            ])
            .status()
            .expect("run cargo build for the manager");
        assert!(status.success(), "building switchboard-rtpmanager failed");
    }
    path
}

/// A running RTP manager, killed by pid when dropped.
pub struct Manager {
    child: Child,
    pub grpc: SocketAddr,
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `pairs` free RTP/RTCP port pairs on loopback.
pub fn free_media_range(pairs: u16) -> (u16, u16) {
    let salt = (std::process::id() % 50) as u16 * 400;
    for base in (20000u16 + salt..60000).step_by(2 * usize::from(pairs) + 2) {
        if (base..base + 2 * pairs).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok()) {
            return (base, base + 2 * pairs - 1);
        }
    }
    panic!("no free media range");
}

/// Starts a manager (userspace path, loopback) with `pairs` port pairs.
pub fn start_manager(audio: &Path, pairs: u16, extra: &[&str]) -> Manager {
    start_manager_in(audio, free_media_range(pairs), extra)
}

/// Starts a manager on the media ports `min..=max` (several managers take
/// parts of one free range: a manager binds its ports only for calls, so
/// a second search would find the first one's range free again).
pub fn start_manager_in(audio: &Path, (min, max): (u16, u16), extra: &[&str]) -> Manager {
    let mut child = Command::new(manager_binary())
        .args([
            "--grpc-port",
            "0",
            "--fast-path",
            "off",
            "--advertise",
            "127.0.0.1",
        ])
        .args(["--rtp-bind-address", "127.0.0.1", "--log-level", "info"])
        .args([
            "--rtp-port-min",
            &min.to_string(),
            "--rtp-port-max",
            &max.to_string(),
        ])
        .arg("--audio-path")
        .arg(audio)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the manager");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("grpc="))
            {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let grpc = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("the manager logs its gRPC address")
        .parse()
        .expect("a socket address");
    Manager { child, grpc }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

impl Manager {
    /// Kills the manager at once (SIGKILL: no Delete, no goodbye), as a
    /// crashed or unplugged manager goes; waits for it to be reaped.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A gRPC client of this manager (use it inside [`runtime`]).
    pub async fn client(&self) -> RtpManagerClient<tonic::transport::Channel> {
        RtpManagerClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("connect to the manager")
    }

    /// The calls the manager holds.
    pub fn calls(&self) -> Vec<v1::CallSummary> {
        runtime().block_on(async {
            self.client()
                .await
                .list_calls(v1::ListCallsRequest {})
                .await
                .expect("ListCalls")
                .into_inner()
                .calls
        })
    }

    /// Waits up to `limit` for the manager's calls to satisfy `done`;
    /// returns the last list either way.
    pub fn wait_calls(
        &self,
        limit: Duration,
        done: impl Fn(&[v1::CallSummary]) -> bool,
    ) -> Vec<v1::CallSummary> {
        let deadline = Instant::now() + limit;
        loop {
            let calls = self.calls();
            if done(&calls) || Instant::now() >= deadline {
                return calls;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
