//! What the gRPC integration tests share: starting the manager binary on
//! ephemeral ports, and fake endpoints on loopback.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_proto::v1::rtp_manager_client::RtpManagerClient;
use tonic::transport::Channel;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchboard-rtpmanager");

/// The manager process, killed by pid when the test ends however it ends.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub use switchboard_testkit::free_media_range;

/// Starts the manager with `extra` arguments on an ephemeral gRPC port
/// (`--grpc-port 0`) and reads the port it bound from its "ready" log line,
/// so parallel tests never race for a port. `SB_TEST_LOG=1` shows its log.
pub async fn start(extra: &[&str], pairs: u16) -> (Daemon, RtpManagerClient<Channel>) {
    let started = spawn(extra, pairs);
    let client = RtpManagerClient::connect(format!("http://{}", started.grpc))
        .await
        .expect("connect");
    (started.daemon, client)
}

/// A manager started by [`spawn`].
pub struct Started {
    pub daemon: Daemon,
    /// The address its gRPC API listens on.
    pub grpc: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Started {
    /// Everything the manager logged so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// Starts the manager as [`start`] does, without connecting to it.
pub fn spawn(extra: &[&str], pairs: u16) -> Started {
    let (min, max) = free_media_range(pairs);
    let mut child = Command::new(BIN)
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
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the manager");
    let stderr = child.stderr.take().expect("piped stderr");
    let daemon = Daemon(child);
    let log = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&log);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let verbose = std::env::var_os("SB_TEST_LOG").is_some();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if verbose {
                eprintln!("{line}");
            }
            if let Ok(mut log) = sink.lock() {
                log.push_str(&line);
                log.push('\n');
            }
            if let Some(addr) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("grpc="))
            {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let grpc = match rx.recv_timeout(Duration::from_secs(15)) {
        Ok(addr) => addr.parse().expect("a socket address after grpc="),
        Err(_) => panic!(
            "the manager did not log its gRPC address; its log:\n{}",
            log.lock().map(|l| l.clone()).unwrap_or_default()
        ),
    };
    Started { daemon, grpc, log }
}

/// A fake media endpoint on loopback with a 1 s receive timeout.
pub fn endpoint() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind endpoint");
    s.set_read_timeout(Some(Duration::from_millis(1000)))
        .expect("timeout");
    s
}

/// A peer's SDP offering `payload_types` (with telephone-event as 101) at `addr`.
pub fn sdp(addr: SocketAddr, payload_types: &str) -> String {
    format!(
        "v=0\r\no=peer 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP {payload_types}\r\n\
a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\n",
        ip = addr.ip(),
        port = addr.port()
    )
}

/// The audio address an SDP from the manager advertises.
pub fn media_addr(sdp: &str) -> SocketAddr {
    let ip = sdp
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))
        .expect("c= line");
    let port = sdp
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|r| r.split(' ').next())
        .expect("m= line");
    format!("{ip}:{port}").parse().expect("media address")
}

/// One datagram and its source, or None after the socket's timeout.
pub fn recv(socket: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 2048];
    socket
        .recv_from(&mut buf)
        .ok()
        .map(|(n, from)| (buf[..n].to_vec(), from))
}
