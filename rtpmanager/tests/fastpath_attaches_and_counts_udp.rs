//! Kernel-path tests: the eBPF object loads and attaches to a veth inside
//! network namespaces this test creates, and counts UDP sent to it.
//!
//! They need root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for setns) and the
//! object built by `cargo xtask build-ebpf`. Without root they skip with a
//! loud message; without the object they skip too, except under CI, where a
//! missing object is a failure.

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use rtpmanager_common::Counter;
use switchboard_proto::v1;
use switchboard_rtpmanager::config::FastPathRequest;
use switchboard_rtpmanager::fastpath::{self, FastPath, Mode, Settings};
use switchboard_testkit::daemon::Daemon;
use switchboard_testkit::netns::{veth, Netns};

#[macro_use]
#[path = "common/kernel.rs"]
mod kernel;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard-rtpmanager");
const RELAY_IP: &str = "10.201.0.1";
const CLIENT_IP: &str = "10.201.0.2";

/// Two namespaces joined by a veth pair: `client` (c0, 10.201.0.2) and
/// `relay` (r0, 10.201.0.1). Deleted by name on drop.
struct TestBed {
    relay: Netns,
    client: Netns,
}

impl TestBed {
    fn new(tag: &str) -> TestBed {
        let pid = std::process::id();
        let bed = TestBed {
            relay: Netns::add(&format!("sbt{pid}{tag}r"), None),
            client: Netns::add(&format!("sbt{pid}{tag}c"), None),
        };
        veth(&bed.client, "c0", None, &bed.relay, "r0", None);
        for (ns, dev, ip) in [(&bed.client, "c0", CLIENT_IP), (&bed.relay, "r0", RELAY_IP)] {
            // No IPv6 on the test link: router solicitations and DAD would
            // add packets the exact counter assertions do not expect.
            ns.sysctl(&format!("net.ipv6.conf.{dev}.disable_ipv6=1"));
            ns.address(dev, ip.parse().expect("literal"), 24);
        }
        // Static neighbours: no ARP packets, no dependence on ARP timing.
        let (client_mac, relay_mac) = (bed.client.mac("c0"), bed.relay.mac("r0"));
        bed.client
            .neighbour("c0", RELAY_IP.parse().expect("literal"), &relay_mac);
        bed.relay
            .neighbour("r0", CLIENT_IP.parse().expect("literal"), &client_mac);
        bed
    }

    fn send_udp(&self, port: u16, count: usize) {
        self.client.run(move || {
            let socket = UdpSocket::bind((CLIENT_IP, 0)).expect("bind in client ns");
            for i in 0..count {
                socket
                    .send_to(
                        &[0x80, 0, 0, i as u8, 0, 0, 0, 0, 0, 0, 0, 1],
                        (RELAY_IP, port),
                    )
                    .expect("send");
            }
        });
    }

    fn xdp_attached(&self) -> bool {
        let out = Command::new("ip")
            .args(["-n", &self.relay, "link", "show", "r0"])
            .output()
            .expect("ip link show");
        String::from_utf8_lossy(&out.stdout).contains("xdp")
    }
}

fn counter(fast_path: &FastPath, which: Counter) -> u64 {
    fast_path
        .counters()
        .expect("counters while attached")
        .into_iter()
        .find(|(c, _)| *c == which)
        .map(|(_, n)| n)
        .expect("every counter is reported")
}

/// Waits until the counter reaches `want` (the program runs in softirq
/// context on another CPU; give it a moment) and returns the last value.
fn wait_for(fast_path: &FastPath, which: Counter, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = counter(fast_path, which);
        if n >= want || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn each_mode_attaches_to_a_veth_and_counts_udp_to_the_media_range() {
    require_kernel_path!();
    for (tag, request, mode) in [
        ("n", FastPathRequest::Xdp, Mode::XdpNative),
        ("g", FastPathRequest::XdpGeneric, Mode::XdpGeneric),
        ("t", FastPathRequest::Tc, Mode::Tc),
    ] {
        let bed = TestBed::new(tag);
        let settings = Settings {
            request,
            interface: "r0".into(),
            port_min: 20000,
            port_max: 20100,
            next_hop_cache: fastpath::DEFAULT_NEXT_HOP_CACHE,
        };
        // The loader must run in the relay namespace to find r0; the
        // returned FastPath keeps working from any thread.
        let fast_path = bed.relay.run(move || FastPath::start(&settings));
        assert_eq!(fast_path.mode(), mode, "{mode}: {}", fast_path.reason());
        if mode != Mode::Tc {
            assert!(bed.xdp_attached(), "{mode}: ip link shows the XDP program");
        }

        bed.send_udp(20002, 10);
        bed.send_udp(5060, 5);
        assert_eq!(
            wait_for(&fast_path, Counter::NoEntry, 10),
            10,
            "{mode}: UDP to the media range, no entry"
        );
        assert_eq!(
            wait_for(&fast_path, Counter::OtherPort, 5),
            5,
            "{mode}: UDP elsewhere"
        );

        drop(fast_path);
        assert!(
            !bed.xdp_attached(),
            "{mode}: dropping the fast path detaches it"
        );
    }
}

#[test]
fn the_manager_reports_the_fast_path_mode_in_force() {
    require_kernel_path!();
    let bed = TestBed::new("m");
    let mut manager = Daemon::spawn(
        "switchboard-rtpmanager",
        Command::new("ip")
            .args(["netns", "exec", &bed.relay, BIN])
            .args([
                "--fast-path",
                "xdp-generic",
                "--media-interface",
                "r0",
                "--advertise",
                RELAY_IP,
            ])
            .args(["--grpc-address", "127.0.0.1", "--grpc-port", "9090"])
            .args(["--rtp-port-min", "20000", "--rtp-port-max", "20100"]),
    );

    let (health, info) = bed.relay.run(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(15);
            let mut client = loop {
                match v1::rtp_manager_client::RtpManagerClient::connect("http://127.0.0.1:9090")
                    .await
                {
                    Ok(c) => break c,
                    Err(e) => {
                        assert!(Instant::now() < deadline, "manager never listened: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            };
            let health = client
                .health(v1::HealthRequest {})
                .await
                .expect("Health")
                .into_inner();
            let info = client
                .info(v1::InfoRequest {})
                .await
                .expect("Info")
                .into_inner();
            (health, info)
        })
    });
    assert_eq!(health.fast_path(), v1::FastPathMode::XdpGeneric);
    assert_eq!(
        info.fast_path(),
        v1::FastPathMode::XdpGeneric,
        "{}",
        info.fast_path_reason
    );
    assert_eq!(info.media_interface, "r0");
    assert!(bed.xdp_attached());

    // `ip netns exec` execs the manager, so the pid is the manager's.
    let status = manager.terminate();
    assert!(status.success(), "{status}");
    assert!(!bed.xdp_attached(), "a clean shutdown detaches the program");
}
