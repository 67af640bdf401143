//! A relay with two media interfaces, as an SBC: the caller reaches it on
//! `a0`, the callee on `b0`, each side a network of its own with no path
//! between them but through the relay ([`bed::two_interfaces`]). The manager
//! runs with one named interface per side (`--interface`), drives a
//! bridged call over gRPC as signaling does (the callee's leg named
//! `private`, the caller's placed by the route to its SDP address), and
//! every fast-path mode must carry both directions in the kernel, each
//! packet redirected from one device to the other, intact; each SDP
//! carries its own side's address; Info reports each interface's mode;
//! GetStats and Delete count every packet both ways.
//!
//! Mixed: with `b0`'s fast path forced off, the callee's media is relayed
//! in userspace while caller → callee stays in the kernel.
//!
//! They need root; without it they skip loudly. Without the embedded object
//! they skip too, except under CI, where that is a failure.

use std::time::{Duration, Instant};

use switchboard_proto::v1;
use switchboard_proto::v1::rtp_manager_client::RtpManagerClient;
use switchboard_rtpmanager::fastpath::Mode;
use tonic::transport::Channel;

#[macro_use]
#[path = "common/kernel.rs"]
mod kernel;
// Shared with other namespace tests, which use other parts of it.
#[allow(dead_code)]
#[path = "common/bed.rs"]
mod bed;
#[path = "common/netns_call.rs"]
mod netns_call;

use bed::{two_interfaces, xdp_peer_pass, Bed, Family};
use netns_call::{media_addr, rtp, sdp, stats_then_delete, stream, Manager, Peer, LOST};
use switchboard_testkit::netns::spawn_in_ns;

/// The manager of a two-sided bed: `public` on a0 in `mode_a`, `private`
/// on b0 in `mode_b`, each bound to its own address with its own range.
fn start(bed: &Bed, mode_a: &str, mode_b: &str) -> (Manager, String) {
    let public = format!(
        "name=public,device=a0,bind={a},advertise={a},ports=30000-30099,fast-path={mode_a}",
        a = bed.relay_a()
    );
    let private = format!(
        "name=private,device=b0,bind={b},advertise={b},ports=30100-30199,fast-path={mode_b}",
        b = bed.relay_b()
    );
    Manager::spawn(
        &bed.relay,
        &[
            "--grpc-port",
            "0",
            "--interface",
            &public,
            "--interface",
            &private,
            "--enable-forwarding",
            "--log-level",
            "info",
            // The relay's own namespace: the port is free.
            "--metrics-listen",
            METRICS,
        ],
    )
}

const METRICS: &str = "127.0.0.1:9190";

/// The manager's Prometheus text, scraped in the relay's namespace.
fn scrape(bed: &Bed) -> String {
    spawn_in_ns(&bed.relay, || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(METRICS).expect("metrics endpoint");
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: relay\r\n\r\n")
            .expect("request");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("response");
        text
    })
    .join()
    .expect("scrape in the relay namespace")
}

fn mode_arg(mode: Mode) -> &'static str {
    match mode {
        Mode::Off => "off",
        Mode::XdpNative => "xdp",
        Mode::XdpGeneric => "xdp-generic",
        Mode::Tc => "tc",
    }
}

/// What one call over the bed saw.
struct Seen {
    info: v1::InfoResponse,
    caller_sdp: String,
    callee_sdp: String,
    legs: Vec<v1::LegInfo>,
    stats: Vec<v1::LegStats>,
    deleted: Vec<v1::LegStats>,
}

/// Offer (the caller's leg placed by route, the callee's named `private`),
/// Answer, Bridge; latch both ways; then `stream()` each way, checked at
/// the receiver: every packet once, intact, in order, from the relay's
/// port of the receiver's leg, no checksum error. `offloaded` says which
/// legs (a, b) must be in the kernel before the streams.
fn call(bed: &Bed, grpc: String, offloaded: (bool, bool), what: String) -> Seen {
    let caller = Peer::start(&bed.caller, bed.caller_addr());
    let callee = Peer::start(&bed.callee, bed.callee_addr());
    let (caller_addr, callee_addr) = (bed.caller_addr(), bed.callee_addr());
    spawn_in_ns(&bed.relay, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let mut client = RtpManagerClient::connect(format!("http://{grpc}"))
                .await
                .expect("connect");
            let info = client
                .info(v1::InfoRequest {})
                .await
                .expect("Info")
                .into_inner();
            let offer = client
                .offer(v1::OfferRequest {
                    call_id: "call-1".into(),
                    leg_id: "a".into(),
                    peer_leg_id: "b".into(),
                    sdp: sdp(caller_addr),
                    options: None,
                    peer_options: Some(v1::LegOptions {
                        interface: "private".into(),
                        ..Default::default()
                    }),
                })
                .await
                .expect("Offer")
                .into_inner();
            let answer = client
                .answer(v1::AnswerRequest {
                    call_id: "call-1".into(),
                    leg_id: "b".into(),
                    peer_leg_id: "a".into(),
                    sdp: sdp(callee_addr),
                    bridge: false,
                })
                .await
                .expect("Answer")
                .into_inner();
            client
                .bridge(v1::BridgeRequest {
                    call_id: "call-1".into(),
                    leg_a: "a".into(),
                    leg_b: "b".into(),
                })
                .await
                .expect("Bridge");
            let (leg_a, leg_b) = (media_addr(&answer.sdp), media_addr(&offer.sdp));

            caller.send(leg_a, vec![0]);
            assert_eq!(
                callee.receive(1).len(),
                1,
                "{what}: caller's latching packet"
            );
            callee.send(leg_b, vec![0]);
            assert_eq!(
                caller.receive(1).len(),
                1,
                "{what}: callee's latching packet"
            );

            let deadline = Instant::now() + Duration::from_secs(3);
            let legs = loop {
                let legs = list(&mut client).await;
                let states: Vec<bool> = legs.iter().map(|l| l.offloaded).collect();
                if states == [offloaded.0, offloaded.1] || Instant::now() > deadline {
                    break legs;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };

            let sent: Vec<Vec<u8>> = stream().into_iter().map(rtp).collect();
            for (direction, from, to, receiver, source) in [
                ("caller → callee", &caller, leg_a, &callee, leg_b),
                ("callee → caller", &callee, leg_b, &caller, leg_a),
            ] {
                from.send(to, stream());
                let got = receiver.receive(sent.len());
                assert_eq!(
                    got.len(),
                    sent.len(),
                    "{what} {direction}: every packet arrived once"
                );
                for ((seen, payload), want) in got.iter().zip(&sent) {
                    assert_eq!(
                        *seen, source,
                        "{what} {direction}: from the receiver's leg's port"
                    );
                    assert_eq!(
                        payload, want,
                        "{what} {direction}: payload intact, in order"
                    );
                }
                assert_eq!(
                    receiver.new_csum_errors(),
                    0,
                    "{what} {direction}: no checksum errors"
                );
            }
            let (stats, deleted) = stats_then_delete(&mut client, "call-1").await;
            Seen {
                info,
                caller_sdp: answer.sdp,
                callee_sdp: offer.sdp,
                legs,
                stats,
                deleted,
            }
        })
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

async fn list(client: &mut RtpManagerClient<Channel>) -> Vec<v1::LegInfo> {
    let mut legs: Vec<v1::LegInfo> = client
        .list_calls(v1::ListCallsRequest {})
        .await
        .expect("ListCalls")
        .into_inner()
        .calls
        .into_iter()
        .flat_map(|c| c.legs)
        .collect();
    legs.sort_by(|a, b| a.leg_id.cmp(&b.leg_id));
    legs
}

/// Each leg's figures: (leg, rtp_in packets, rtp_out packets, kernel).
fn figures(stats: &[v1::LegStats]) -> Vec<(String, u64, u64, u64)> {
    let mut figures: Vec<_> = stats
        .iter()
        .map(|s| {
            (
                s.leg_id.clone(),
                s.rtp_in.map_or(0, |c| c.packets),
                s.rtp_out.map_or(0, |c| c.packets),
                s.kernel_packets,
            )
        })
        .collect();
    figures.sort();
    figures
}

/// The kernel's media verdicts from the shutdown log (hosts' own traffic
/// left out).
fn media_counters(manager: Manager) -> Vec<(String, u64)> {
    manager
        .stop()
        .into_iter()
        .filter(|(name, _)| {
            !matches!(
                name.as_str(),
                "not_ip" | "not_udp" | "ipv6_extension_header"
            )
        })
        .collect()
}

fn modes_of(info: &v1::InfoResponse) -> Vec<(String, String, i32, Vec<String>)> {
    info.interfaces
        .iter()
        .map(|i| {
            (
                i.name.clone(),
                i.device.clone(),
                i.fast_path,
                i.advertised_addresses.clone(),
            )
        })
        .collect()
}

fn both_sides_in(family: Family, tag: &str, mode: Mode) {
    let bed = two_interfaces(family, tag);
    let _pass = xdp_peer_pass(&bed, mode);
    let (manager, grpc) = start(&bed, mode_arg(mode), mode_arg(mode));
    let what = format!("{family} {mode}");
    let kernel = mode != Mode::Off;
    let seen = call(&bed, grpc, (kernel, kernel), what.clone());

    assert_eq!(
        modes_of(&seen.info),
        vec![
            (
                "public".to_owned(),
                "a0".to_owned(),
                i32::from(switchboard_rtpmanager::grpc::mode_proto(mode)),
                vec![bed.relay_a().to_string()]
            ),
            (
                "private".to_owned(),
                "b0".to_owned(),
                i32::from(switchboard_rtpmanager::grpc::mode_proto(mode)),
                vec![bed.relay_b().to_string()]
            ),
        ],
        "{what}: Info reports each interface in its mode: {:?}",
        seen.info.interfaces
    );
    assert_eq!(
        media_addr(&seen.caller_sdp).ip(),
        bed.relay_a(),
        "{what}: the caller's SDP has a0's address"
    );
    assert_eq!(
        media_addr(&seen.callee_sdp).ip(),
        bed.relay_b(),
        "{what}: the callee's SDP has b0's address"
    );
    let placed: Vec<(String, String, bool)> = seen
        .legs
        .iter()
        .map(|l| (l.leg_id.clone(), l.interface.clone(), l.offloaded))
        .collect();
    assert_eq!(
        placed,
        vec![
            ("a".to_owned(), "public".to_owned(), kernel),
            ("b".to_owned(), "private".to_owned(), kernel)
        ],
        "{what}: the caller's leg found by route, the callee's named; both offloaded"
    );
    let n = stream().len() as u64;
    let in_kernel = if kernel { n } else { 0 };
    let want = vec![
        ("a".to_owned(), n + 1, n + 1, in_kernel),
        ("b".to_owned(), n + 1, n + 1, in_kernel),
    ];
    assert_eq!(
        figures(&seen.stats),
        want,
        "{what}: GetStats counts every packet both ways"
    );
    assert_eq!(
        figures(&seen.deleted),
        want,
        "{what}: Delete's final figures count every packet both ways"
    );
    for leg in &seen.stats {
        assert_eq!(
            leg.rtp_lost, LOST,
            "{what} leg {}: the skipped sequence numbers",
            leg.leg_id
        );
    }
    let counters = media_counters(manager);
    if kernel {
        assert_eq!(
            counters,
            vec![("no_entry".to_owned(), 2), ("redirected".to_owned(), 2 * n)],
            "{what}: the latching packets went up, every later one was redirected to the other device"
        );
    } else {
        assert_eq!(counters, vec![], "{what}: nothing attached");
    }
}

fn mixed(family: Family, tag: &str, mode: Mode) {
    let bed = two_interfaces(family, tag);
    let _pass = xdp_peer_pass(&bed, mode);
    let (manager, grpc) = start(&bed, mode_arg(mode), "off");
    let what = format!("{family} {mode} with b0 off");
    let seen = call(&bed, grpc, (true, false), what.clone());
    let modes: Vec<i32> = seen.info.interfaces.iter().map(|i| i.fast_path).collect();
    assert_eq!(
        modes,
        vec![
            i32::from(switchboard_rtpmanager::grpc::mode_proto(mode)),
            i32::from(switchboard_rtpmanager::grpc::mode_proto(Mode::Off))
        ],
        "{what}: {:?}",
        seen.info.interfaces
    );
    let offloaded: Vec<bool> = seen.legs.iter().map(|l| l.offloaded).collect();
    assert_eq!(
        offloaded,
        vec![true, false],
        "{what}: a's media in the kernel, b's in userspace"
    );
    let n = stream().len() as u64;
    assert_eq!(
        figures(&seen.stats),
        vec![
            ("a".to_owned(), n + 1, n + 1, n),
            ("b".to_owned(), n + 1, n + 1, 0)
        ],
        "{what}: every packet counted, the kernel's on a only"
    );
    let metrics = scrape(&bed);
    for line in [
        format!(
            "switchboard_rtpmanager_interface_fast_path_info{{interface=\"public\",device=\"a0\",mode=\"{mode}\"}} 1"
        ),
        "switchboard_rtpmanager_interface_fast_path_info{interface=\"private\",device=\"b0\",mode=\"off\"} 1".to_owned(),
        // The deleted call's legs still count: a's latching packet, all
        // of b's.
        "switchboard_rtpmanager_interface_userspace_packets_total{interface=\"public\"} 1".to_owned(),
        format!("switchboard_rtpmanager_interface_userspace_packets_total{{interface=\"private\"}} {}", n + 1),
    ] {
        assert!(metrics.lines().any(|l| l == line), "{what}: {line} missing from\n{metrics}");
    }
    assert_eq!(
        media_counters(manager),
        vec![("no_entry".to_owned(), 1), ("redirected".to_owned(), n)],
        "{what}: only what arrived on a0 met the programs"
    );
}

macro_rules! kernel_test {
    ($name:ident, $body:expr) => {
        #[test]
        fn $name() {
            require_kernel_path!();
            $body
        }
    };
}

kernel_test!(
    two_interfaces_relay_in_userspace_only,
    both_sides_in(Family::V4, "o", Mode::Off)
);
kernel_test!(
    two_interfaces_redirect_both_ways_in_xdp_native,
    both_sides_in(Family::V4, "x", Mode::XdpNative)
);
kernel_test!(
    two_interfaces_redirect_both_ways_in_xdp_generic,
    both_sides_in(Family::V4, "g", Mode::XdpGeneric)
);
kernel_test!(
    two_interfaces_redirect_both_ways_in_tc,
    both_sides_in(Family::V4, "t", Mode::Tc)
);
kernel_test!(
    two_ipv6_interfaces_relay_in_userspace_only,
    both_sides_in(Family::V6, "o", Mode::Off)
);
kernel_test!(
    two_ipv6_interfaces_redirect_both_ways_in_xdp_native,
    both_sides_in(Family::V6, "x", Mode::XdpNative)
);
kernel_test!(
    two_ipv6_interfaces_redirect_both_ways_in_xdp_generic,
    both_sides_in(Family::V6, "g", Mode::XdpGeneric)
);
kernel_test!(
    two_ipv6_interfaces_redirect_both_ways_in_tc,
    both_sides_in(Family::V6, "t", Mode::Tc)
);
kernel_test!(
    an_interface_forced_off_relays_in_userspace_while_the_other_redirects_in_tc,
    mixed(Family::V4, "mt", Mode::Tc)
);
kernel_test!(
    an_interface_forced_off_relays_in_userspace_while_the_other_redirects_in_xdp,
    mixed(Family::V4, "mx", Mode::XdpNative)
);
