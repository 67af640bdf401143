//! The manager binary serves Prometheus metrics on `--metrics-listen`: the
//! fast path in force, calls, legs and port pairs follow the calls set up
//! over gRPC; any other path is 404; a bad address fails at start naming
//! the option. With the fast path attached (xdp-generic in network
//! namespaces; root only, skipped loudly otherwise), the scrape reports the
//! mode, the kernel's verdict counters and the directions of an offloaded
//! call, and the forwarded counter follows the packets the callee gets.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use rtpmanager_common::Counter;

use switchboard_proto::v1;
use switchboard_proto::v1::rtp_manager_client::RtpManagerClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

mod common;
#[macro_use]
#[path = "common/kernel.rs"]
mod kernel;

use common::{endpoint, free_media_range, media_addr, sdp, Daemon, BIN};
use switchboard_testkit::daemon::{grpc_address, manager_args};
use switchboard_testkit::netns::{bind_udp, in_ns, veth, Netns};

/// Starts the manager like `common::start`, with `--metrics-listen` on an
/// ephemeral loopback port; reads both bound addresses from its log.
async fn start_with_metrics(
    extra: &[&str],
    pairs: u16,
) -> (Daemon, RtpManagerClient<Channel>, SocketAddr) {
    let mut command = Command::new(BIN);
    command
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(manager_args(0, free_media_range(pairs)))
        .args(extra);
    let daemon = Daemon::spawn("switchboard-rtpmanager", &mut command);
    let (grpc, metrics) = addresses(&daemon);
    let client = RtpManagerClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect");
    (daemon, client, metrics)
}

/// The gRPC and metrics addresses a starting manager logs (metrics
/// first: the gRPC line says it is ready).
fn addresses(daemon: &Daemon) -> (SocketAddr, SocketAddr) {
    let grpc = grpc_address(daemon);
    let metrics = daemon
        .logged_value("metrics=", Duration::ZERO)
        .expect("the manager logs its metrics address before it is ready")
        .parse()
        .expect("a socket address");
    (grpc, metrics)
}

/// An HTTP/1.1 response: status code, Content-Type, body.
struct Scrape {
    status: u16,
    content_type: Option<String>,
    body: String,
}

async fn get(addr: SocketAddr, path: &str) -> Scrape {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the metrics endpoint");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .expect("the endpoint answers within 5 s")
        .expect("read the response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {response:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let content_type = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-type")
            .then(|| value.trim().to_owned())
    });
    Scrape {
        status,
        content_type,
        body: body.to_owned(),
    }
}

/// The body of a successful `GET /metrics`.
async fn scrape(addr: SocketAddr) -> String {
    let s = get(addr, "/metrics").await;
    assert_eq!(s.status, 200, "{}", s.body);
    assert_eq!(s.content_type.as_deref(), Some("text/plain; version=0.0.4"));
    s.body
}

/// The value of the sample whose name and labels are exactly `series`.
fn value(body: &str, series: &str) -> u64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{body}"))
        .parse()
        .unwrap_or_else(|e| panic!("{series}: {e}"))
}

/// The sum of a family's samples over its `worker` label, and how many
/// workers reported.
fn per_worker_sum(body: &str, family: &str) -> (u64, usize) {
    let prefix = format!("{family}{{worker=\"");
    body.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|rest| {
            let value = rest.rsplit(' ').next().expect("a value");
            value
                .parse::<u64>()
                .unwrap_or_else(|e| panic!("{family}: {e}"))
        })
        .fold((0, 0), |(sum, n), v| (sum + v, n + 1))
}

#[tokio::test]
async fn the_scrape_follows_a_call_from_offer_to_delete() {
    let (_daemon, mut client, metrics) = start_with_metrics(&[], 10).await;

    let before = scrape(metrics).await;
    assert_eq!(
        value(
            &before,
            "switchboard_rtpmanager_fast_path_info{mode=\"off\",interface=\"\",reason=\"disabled by --fast-path off\"}"
        ),
        1
    );
    assert!(
        before.contains("# TYPE switchboard_rtpmanager_fast_path_info gauge\n"),
        "{before}"
    );
    assert!(
        !before.contains("kernel_packets_total"),
        "no kernel counters without a fast path:\n{before}"
    );
    assert_eq!(value(&before, "switchboard_rtpmanager_calls"), 0);
    assert_eq!(value(&before, "switchboard_rtpmanager_legs"), 0);
    assert_eq!(value(&before, "switchboard_rtpmanager_port_pairs"), 10);
    let free_before = value(&before, "switchboard_rtpmanager_port_pairs_free");
    assert_eq!(free_before, 10);
    assert_eq!(
        value(&before, "switchboard_rtpmanager_kernel_directions"),
        0
    );
    assert_eq!(value(&before, "switchboard_rtpmanager_draining"), 0);

    let (caller, callee) = (endpoint(), endpoint());
    client
        .offer(v1::OfferRequest {
            call_id: "call-1".into(),
            leg_id: "a".into(),
            peer_leg_id: "b".into(),
            sdp: sdp(caller.local_addr().expect("addr"), "0 101"),
            options: Some(v1::LegOptions {
                strict_source: true,
                ..Default::default()
            }),
            peer_options: None,
        })
        .await
        .expect("Offer");
    let answer = client
        .answer(v1::AnswerRequest {
            call_id: "call-1".into(),
            leg_id: "b".into(),
            peer_leg_id: "a".into(),
            sdp: sdp(callee.local_addr().expect("addr"), "0 101"),
            bridge: false,
        })
        .await
        .expect("Answer")
        .into_inner();
    common::bridge(&mut client, "call-1").await;

    // Five PCMU packets caller → callee through the userspace relay.
    let leg_a = media_addr(&answer.sdp);
    for seq in 0..5u16 {
        let mut packet = vec![0x80, 0x00];
        packet.extend_from_slice(&seq.to_be_bytes());
        packet.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        packet.extend_from_slice(&0x0102_0304u32.to_be_bytes());
        packet.extend_from_slice(&[0xFF; 160]);
        caller.send_to(&packet, leg_a).expect("send");
        let mut buf = [0u8; 512];
        let (n, _) = callee.recv_from(&mut buf).expect("relayed to the callee");
        assert_eq!(n, 172);
    }

    // A stranger's two packets to the caller's leg, locked on the caller.
    let stranger = endpoint();
    for _ in 0..2 {
        stranger
            .send_to(&[0x80, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 9], leg_a)
            .expect("send");
    }
    let rejected = "switchboard_rtpmanager_relay_source_rejected_packets_total";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut during = scrape(metrics).await;
    while value(&during, rejected) < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        during = scrape(metrics).await;
    }
    assert_eq!(value(&during, rejected), 2, "{during}");
    for (direction, packets) in [("in", 5), ("out", 5)] {
        assert_eq!(
            value(
                &during,
                &format!("switchboard_rtpmanager_relay_packets_total{{stream=\"rtp\",direction=\"{direction}\"}}")
            ),
            packets,
            "{during}"
        );
        assert_eq!(
            value(
                &during,
                &format!("switchboard_rtpmanager_relay_bytes_total{{stream=\"rtp\",direction=\"{direction}\"}}")
            ),
            packets * 172
        );
    }
    // Per worker: the call's two legs on one of them, which read the five
    // packets and the stranger's two and forwarded the five.
    let workers = per_worker_sum(&during, "switchboard_rtpmanager_relay_worker_legs").1;
    assert!(workers >= 1, "{during}");
    for (family, sum) in [
        ("switchboard_rtpmanager_relay_worker_legs", 2),
        (
            "switchboard_rtpmanager_relay_worker_received_packets_total",
            7,
        ),
        (
            "switchboard_rtpmanager_relay_worker_forwarded_packets_total",
            5,
        ),
        (
            "switchboard_rtpmanager_relay_worker_overload_dropped_packets_total",
            0,
        ),
    ] {
        assert_eq!(per_worker_sum(&during, family), (sum, workers), "{family}");
    }
    assert_eq!(
        per_worker_sum(&during, "switchboard_rtpmanager_relay_worker_busy_permille").1,
        workers
    );
    assert_eq!(value(&during, "switchboard_rtpmanager_calls"), 1);
    assert_eq!(value(&during, "switchboard_rtpmanager_legs"), 2);
    assert_eq!(
        value(&during, "switchboard_rtpmanager_port_pairs_free"),
        free_before - 2,
        "one pair per leg"
    );
    assert_eq!(value(&during, "switchboard_rtpmanager_port_pairs"), 10);
    assert_eq!(
        value(&during, "switchboard_rtpmanager_kernel_directions"),
        0,
        "nothing is offloaded with --fast-path off"
    );

    client
        .set_drain(v1::SetDrainRequest { drain: true })
        .await
        .expect("SetDrain");
    client
        .delete(v1::DeleteRequest {
            call_id: "call-1".into(),
            ..Default::default()
        })
        .await
        .expect("Delete");
    let after = scrape(metrics).await;
    assert_eq!(value(&after, "switchboard_rtpmanager_calls"), 0);
    assert_eq!(value(&after, "switchboard_rtpmanager_legs"), 0);
    assert_eq!(
        value(&after, "switchboard_rtpmanager_port_pairs_free"),
        free_before
    );
    assert_eq!(value(&after, "switchboard_rtpmanager_draining"), 1);
    assert_eq!(
        value(
            &after,
            "switchboard_rtpmanager_relay_packets_total{stream=\"rtp\",direction=\"in\"}"
        ),
        5,
        "the ended call's packets stay counted"
    );
    assert_eq!(value(&after, rejected), 2, "and its rejected ones");

    for path in ["/", "/metric", "/metrics/x", "/api/v1/health"] {
        assert_eq!(get(metrics, path).await.status, 404, "GET {path}");
    }
}

#[test]
fn an_invalid_metrics_address_fails_at_start_naming_the_option() {
    for bad in ["9190", "localhost:9190", "127.0.0.1:70000"] {
        let output = Command::new(BIN)
            .args(["--metrics-listen", bad])
            .output()
            .expect("run the manager");
        assert_eq!(output.status.code(), Some(2), "--metrics-listen {bad}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--metrics-listen"), "{bad}: {stderr}");
    }
    let output = Command::new(BIN)
        .env("SWITCHBOARD_METRICS_LISTEN", "not-an-address")
        .output()
        .expect("run the manager");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--metrics-listen"), "{stderr}");
}

#[test]
fn a_metrics_port_in_use_fails_at_start_naming_the_option() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = taken.local_addr().expect("its address");
    let (min, max) = free_media_range(2);
    let output = Command::new(BIN)
        .args(["--grpc-port", "0", "--fast-path", "off"])
        .args([
            "--advertise",
            "127.0.0.1",
            "--rtp-bind-address",
            "127.0.0.1",
        ])
        .args(["--rtp-port-min", &min.to_string()])
        .args(["--rtp-port-max", &max.to_string()])
        .args(["--metrics-listen", &addr.to_string()])
        .output()
        .expect("run the manager");
    assert!(!output.status.success(), "started on a taken port");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--metrics-listen") && stderr.contains(&addr.to_string()),
        "{stderr}"
    );
}

/// Two namespaces joined by a veth pair: the manager's (`m0`, 10.209.0.1)
/// and a peer's (`p0`, 10.209.0.2); deleted on drop.
struct Bed {
    relay: Netns,
    peer: Netns,
}

impl Bed {
    fn new() -> Bed {
        let tag = std::process::id();
        let bed = Bed {
            relay: Netns::add(&format!("sbmet-r{tag}"), None),
            peer: Netns::add(&format!("sbmet-p{tag}"), None),
        };
        veth(&bed.relay, "m0", None, &bed.peer, "p0", None);
        for (ns, dev, ip) in [
            (&bed.relay, "m0", "10.209.0.1"),
            (&bed.peer, "p0", "10.209.0.2"),
        ] {
            ns.address(dev, ip.parse().expect("literal"), 24);
        }
        bed
    }
}

/// `GET /metrics` from inside the manager's namespace; the body.
fn scrape_in(ns: &str, addr: SocketAddr) -> String {
    in_ns(ns, move || {
        let mut stream = TcpStream::connect(addr).expect("connect to the metrics endpoint");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .expect("send the request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("read the response");
        let (head, body) = response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no header end in {response:?}"));
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        body.to_owned()
    })
}

/// An RTP packet of payload type 0 with sequence number `seq`.
fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&0x0bad_cafe_u32.to_be_bytes());
    p.extend(std::iter::repeat_n(0x55, 160));
    p
}

/// The kernel-mode peers, both in the peer namespace.
const CALLER: &str = "10.209.0.2:41000";
const CALLEE: &str = "10.209.0.2:40000";

/// Sets up a bridged call between [`CALLER`] (leg a) and [`CALLEE`] (leg
/// b) over gRPC from inside the manager's namespace; returns the manager's
/// address for the caller and for the callee.
fn bridged_call_in(ns: &str, grpc: String) -> (SocketAddr, SocketAddr) {
    in_ns(ns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let mut client = RtpManagerClient::connect(format!("http://{grpc}"))
                .await
                .expect("connect");
            let offer = client
                .offer(v1::OfferRequest {
                    call_id: "call-k".into(),
                    leg_id: "a".into(),
                    peer_leg_id: "b".into(),
                    sdp: sdp(CALLER.parse().expect("literal"), "0 101"),
                    options: None,
                    peer_options: None,
                })
                .await
                .expect("Offer")
                .into_inner();
            let answer = client
                .answer(v1::AnswerRequest {
                    call_id: "call-k".into(),
                    leg_id: "b".into(),
                    peer_leg_id: "a".into(),
                    sdp: sdp(CALLEE.parse().expect("literal"), "0 101"),
                    bridge: false,
                })
                .await
                .expect("Answer")
                .into_inner();
            common::bridge(&mut client, "call-k").await;
            (media_addr(&answer.sdp), media_addr(&offer.sdp))
        })
    })
}

/// Scrapes until `done` holds for the body (5 s at most); the last body.
fn scrape_until(ns: &str, addr: SocketAddr, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let body = scrape_in(ns, addr);
        if done(&body) || Instant::now() > deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn kernel_mode_scrape_reports_the_program_its_counters_and_offloaded_directions() {
    require_kernel_path!();
    let bed = Bed::new();
    // The programs' checksum update is by difference: senders must put
    // complete UDP checksums on the wire.
    bed.peer.checksums_on_the_wire("p0");
    // `ip netns exec` gives the manager a /sys of its own: the default pin
    // directory is not on a bpffs there, so the fast path runs unpinned
    // and ends with the manager.
    let daemon = Daemon::spawn(
        "switchboard-rtpmanager",
        Command::new("ip")
            .args(["netns", "exec", &bed.relay, BIN])
            .args(["--grpc-port", "0", "--metrics-listen", "127.0.0.1:0"])
            .args(["--fast-path", "xdp-generic", "--media-interface", "m0"])
            .args([
                "--advertise",
                "10.209.0.1",
                "--rtp-bind-address",
                "10.209.0.1",
            ])
            .args(["--rtp-port-min", "30000", "--rtp-port-max", "30019"])
            .args(["--enable-forwarding"]),
    );
    let (grpc, metrics) = addresses(&daemon);

    let before = scrape_in(&bed.relay, metrics);
    assert_eq!(
        value(
            &before,
            "switchboard_rtpmanager_fast_path_info{mode=\"xdp-generic\",interface=\"m0\",reason=\"xdp-generic as requested\"}"
        ),
        1,
        "{before}"
    );
    for counter in Counter::ALL {
        let series = format!(
            "switchboard_rtpmanager_kernel_packets_total{{verdict=\"{}\"}}",
            counter.name()
        );
        value(&before, &series);
    }
    let no_entry = "switchboard_rtpmanager_kernel_packets_total{verdict=\"no_entry\"}";
    let forwarded = |body: &str| {
        value(
            body,
            "switchboard_rtpmanager_kernel_packets_total{verdict=\"forwarded\"}",
        ) + value(
            body,
            "switchboard_rtpmanager_kernel_packets_total{verdict=\"redirected\"}",
        )
    };
    let directions = "switchboard_rtpmanager_kernel_directions";
    let no_entry_before = value(&before, no_entry);
    assert_eq!(forwarded(&before), 0);
    assert_eq!(value(&before, directions), 0);

    // UDP into the media range with no call: the program passes each
    // packet up with the no_entry verdict.
    in_ns(&bed.peer, || {
        let socket = UdpSocket::bind("10.209.0.2:0").expect("bind the peer");
        for seq in 0..5 {
            socket.send_to(&rtp(seq), "10.209.0.1:30018").expect("send");
        }
    });
    let after = scrape_until(&bed.relay, metrics, |b| {
        value(b, no_entry) >= no_entry_before + 5
    });
    assert_eq!(value(&after, no_entry), no_entry_before + 5, "{after}");

    // A bridged call: once both peers sent a packet (latched in
    // userspace), both RTP directions go into the kernel.
    let (to_a, to_b) = bridged_call_in(&bed.relay, grpc.to_string());
    in_ns(&bed.peer, move || {
        let caller = bind_udp(CALLER);
        let callee = bind_udp(CALLEE);
        for socket in [&caller, &callee] {
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
        }
        let mut buf = [0u8; 2048];
        caller.send_to(&rtp(1), to_a).expect("send");
        callee
            .recv_from(&mut buf)
            .expect("the callee gets the first packet");
        callee.send_to(&rtp(1), to_b).expect("send");
        caller
            .recv_from(&mut buf)
            .expect("the caller gets the first packet");
    });
    let offloaded = scrape_until(&bed.relay, metrics, |b| value(b, directions) >= 2);
    assert_eq!(
        value(&offloaded, directions),
        2,
        "RTP both ways; no RTCP was sent:\n{offloaded}"
    );
    assert_eq!(value(&offloaded, "switchboard_rtpmanager_calls"), 1);
    assert_eq!(value(&offloaded, "switchboard_rtpmanager_legs"), 2);
    let forwarded_before = forwarded(&offloaded);

    let received = in_ns(&bed.peer, move || {
        let caller = bind_udp(CALLER);
        let callee = bind_udp(CALLEE);
        callee
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        for seq in 2..7 {
            caller.send_to(&rtp(seq), to_a).expect("send");
        }
        let mut buf = [0u8; 2048];
        (0..5)
            .filter_map(|_| callee.recv_from(&mut buf).ok())
            .count()
    });
    assert_eq!(received, 5, "the callee gets every packet");
    let after = scrape_until(&bed.relay, metrics, |b| {
        forwarded(b) >= forwarded_before + 5
    });
    assert_eq!(
        forwarded(&after),
        forwarded_before + 5,
        "the kernel forwarded the stream:\n{after}"
    );
}
