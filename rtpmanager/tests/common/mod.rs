//! What the gRPC integration tests share: starting the manager binary on
//! ephemeral ports, and fake endpoints on loopback.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use switchboard_proto::v1::rtp_manager_client::RtpManagerClient;
use tonic::transport::Channel;

pub use switchboard_testkit::daemon::Daemon;
use switchboard_testkit::daemon::{start_manager, Options};
pub use switchboard_testkit::free_media_range;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchboard-rtpmanager");

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

/// Bridges legs a and b of `call` (the Bridge request every two-leg test
/// sends).
pub async fn bridge(client: &mut RtpManagerClient<Channel>, call: &str) {
    client
        .bridge(switchboard_proto::v1::BridgeRequest {
            call_id: call.into(),
            leg_a: "a".into(),
            leg_b: "b".into(),
        })
        .await
        .expect("Bridge");
}

/// The calls the manager holds (ListCalls).
pub async fn calls(
    client: &mut RtpManagerClient<Channel>,
) -> Vec<switchboard_proto::v1::CallSummary> {
    client
        .list_calls(switchboard_proto::v1::ListCallsRequest {})
        .await
        .expect("ListCalls")
        .into_inner()
        .calls
}

/// A manager started by [`spawn`]: its process and gRPC address.
pub type Started = switchboard_testkit::daemon::Manager;

/// Starts the manager as [`start`] does, without connecting to it.
pub fn spawn(extra: &[&str], pairs: u16) -> Started {
    start_manager(
        Path::new(BIN),
        0,
        free_media_range(pairs),
        extra,
        Options::default(),
    )
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
