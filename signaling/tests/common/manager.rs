//! A real RTP manager for the signaling binary tests: built beside the
//! signaling binary if missing, started on an ephemeral gRPC port and a
//! free media range, killed by pid when dropped; and its `ListCalls`.

use std::ffi::OsStr;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use switchboard_proto::v1;
use switchboard_proto::v1::rtp_manager_client::RtpManagerClient;
use switchboard_testkit::daemon::{self, Options};

/// The manager binary, up to date (another package of the workspace, so
/// cargo does not build it for our tests).
pub fn manager_binary() -> PathBuf {
    switchboard_testkit::workspace_binary("switchboard-rtpmanager")
}

/// A running RTP manager, killed by pid when dropped.
pub struct Manager {
    started: daemon::Manager,
    pub grpc: SocketAddr,
}

pub use switchboard_testkit::free_media_range;

/// Starts a manager (userspace path, loopback) with `pairs` port pairs.
pub fn start_manager(audio: &Path, pairs: u16, extra: &[&str]) -> Manager {
    start_manager_at(audio, 0, free_media_range(pairs), extra)
}

/// Starts a manager on gRPC port `grpc_port` (0: an ephemeral one) with
/// the media ports `min..=max`: a manager restarted with its --state-dir
/// on the same ports takes its calls back, and several managers take parts
/// of one free range (a manager binds its ports only for calls, so a second
/// search would find the first one's range free again).
pub fn start_manager_at(
    audio: &Path,
    grpc_port: u16,
    media: (u16, u16),
    extra: &[&str],
) -> Manager {
    let args = [OsStr::new("--audio-path"), audio.as_os_str()]
        .into_iter()
        .chain(extra.iter().map(OsStr::new));
    let started = daemon::start_manager(
        &manager_binary(),
        grpc_port,
        media,
        args,
        Options::default(),
    );
    let grpc = started.grpc;
    Manager { started, grpc }
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
        self.started.daemon.kill();
    }

    /// A gRPC client of this manager (use it inside [`runtime`]).
    pub async fn client(&self) -> RtpManagerClient<tonic::transport::Channel> {
        RtpManagerClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("connect to the manager")
    }

    /// The manager's Health answer.
    pub fn health(&self) -> v1::HealthResponse {
        runtime().block_on(async {
            self.client()
                .await
                .health(v1::HealthRequest {})
                .await
                .expect("Health")
                .into_inner()
        })
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

/// The manager's (leg a, leg b) media addresses of the only bridged call,
/// once the B2BUA has set it up (10 s at most).
pub fn bridged_legs(manager: &Manager) -> (String, SocketAddr, SocketAddr) {
    let calls = manager.wait_calls(Duration::from_secs(10), |calls| {
        calls.first().and_then(legs).is_some()
    });
    match calls.first().and_then(|call| Some((call, legs(call)?))) {
        Some((call, (a, b))) => (call.call_id.clone(), a, b),
        None => panic!("no bridged call on the manager: {calls:?}"),
    }
}

/// The manager's (leg a, leg b) media addresses of a bridged call.
pub fn legs(call: &v1::CallSummary) -> Option<(SocketAddr, SocketAddr)> {
    let leg = |id: &str| {
        call.legs
            .iter()
            .find(|l| l.leg_id == id && !l.bridged_to.is_empty())
            .map(|l| {
                SocketAddr::new(
                    l.local_address.parse().expect("an address"),
                    u16::try_from(l.rtp_port).expect("a port"),
                )
            })
    };
    Some((leg("a")?, leg("b")?))
}

/// Sends RTP from each side to the manager and checks the other side gets
/// exactly those octets.
pub fn rtp_both_ways(manager: &Manager, a: &UdpSocket, b: &UdpSocket) {
    let (_, leg_a, leg_b) = bridged_legs(manager);
    let mut buffer = [0u8; 2048];
    for seq in 1..=5u16 {
        let packet = super::sipp::rtp(seq, 0x11);
        a.send_to(&packet, leg_a).expect("send caller RTP");
        let (len, from) = b
            .recv_from(&mut buffer)
            .expect("the callee receives the caller's RTP");
        assert_eq!(
            &buffer[..len],
            &packet[..],
            "caller → callee RTP forwarded unchanged"
        );
        assert_eq!(from, leg_b, "from the manager's leg-b port");
        let packet = super::sipp::rtp(seq, 0x22);
        b.send_to(&packet, leg_b).expect("send callee RTP");
        let (len, from) = a
            .recv_from(&mut buffer)
            .expect("the caller receives the callee's RTP");
        assert_eq!(
            &buffer[..len],
            &packet[..],
            "callee → caller RTP forwarded unchanged"
        );
        assert_eq!(from, leg_a, "from the manager's leg-a port");
    }
}
