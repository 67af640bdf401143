//! The manager binary serves Prometheus metrics on `--metrics-listen`: the
//! fast path in force, calls, legs and port pairs follow the calls set up
//! over gRPC; any other path is 404; a bad address fails at start naming
//! the option. With the fast path attached (in a network namespace; root
//! only, skipped loudly otherwise), the scrape reports the mode and the
//! kernel's verdict counters.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use rtpmanager_common::Counter;
use switchboard_rtpmanager::fastpath;

use switchboard_proto::v1;
use switchboard_proto::v1::rtp_manager_client::RtpManagerClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

mod common;

use common::{endpoint, free_media_range, sdp, Daemon, BIN};

/// Starts the manager like `common::start`, with `--metrics-listen` on an
/// ephemeral loopback port; reads both bound addresses from its log.
async fn start_with_metrics(
    extra: &[&str],
    pairs: u16,
) -> (Daemon, RtpManagerClient<Channel>, SocketAddr) {
    let (min, max) = free_media_range(pairs);
    let mut child = Command::new(BIN)
        .args(["--grpc-port", "0", "--metrics-listen", "127.0.0.1:0"])
        .args(["--fast-path", "off", "--advertise", "127.0.0.1"])
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
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let verbose = std::env::var_os("SB_TEST_LOG").is_some();
        let mut metrics = None;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if verbose {
                eprintln!("{line}");
            }
            for word in line.split_whitespace() {
                if let Some(addr) = word.strip_prefix("metrics=") {
                    metrics = Some(addr.to_owned());
                }
                if let Some(addr) = word.strip_prefix("grpc=") {
                    let _ = tx.send((addr.to_owned(), metrics.clone()));
                }
            }
        }
    });
    let (grpc, metrics) = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("the manager logs its gRPC address");
    let metrics: SocketAddr = metrics
        .expect("the manager logs its metrics address before it is ready")
        .parse()
        .expect("a socket address");
    let client = RtpManagerClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect");
    (daemon, client, metrics)
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

#[tokio::test]
async fn scrape_follows_a_call_set_up_over_grpc() {
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
            options: None,
            peer_options: None,
        })
        .await
        .expect("Offer");
    client
        .answer(v1::AnswerRequest {
            call_id: "call-1".into(),
            leg_id: "b".into(),
            peer_leg_id: "a".into(),
            sdp: sdp(callee.local_addr().expect("addr"), "0 101"),
        })
        .await
        .expect("Answer");
    client
        .bridge(v1::BridgeRequest {
            call_id: "call-1".into(),
            leg_a: "a".into(),
            leg_b: "b".into(),
        })
        .await
        .expect("Bridge");

    let during = scrape(metrics).await;
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
        .env("METRICS_LISTEN", "not-an-address")
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

/// Why the kernel-mode test cannot run here, if it cannot.
fn kernel_skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root: the kernel fast path needs CAP_BPF and CAP_NET_ADMIN".into());
    }
    if !fastpath::object_embedded() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the kernel-path tests: the eBPF object was not built (cargo xtask build-ebpf)"
        );
        return Some("this build has no eBPF object (cargo xtask build-ebpf)".into());
    }
    None
}

fn sh(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(status.success(), "{args:?} failed: {status}");
}

/// Two namespaces joined by a veth pair: the manager's (`m0`, 10.209.0.1)
/// and a peer's (`p0`, 10.209.0.2); deleted on drop.
struct Bed {
    relay: String,
    peer: String,
}

impl Bed {
    fn new() -> Bed {
        let tag = std::process::id();
        let bed = Bed {
            relay: format!("sbmet-r{tag}"),
            peer: format!("sbmet-p{tag}"),
        };
        for ns in [&bed.relay, &bed.peer] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        sh(&[
            "ip", "-n", &bed.relay, "link", "add", "m0", "type", "veth", "peer", "name", "p0",
            "netns", &bed.peer,
        ]);
        for (ns, dev, ip) in [
            (&bed.relay, "m0", "10.209.0.1/24"),
            (&bed.peer, "p0", "10.209.0.2/24"),
        ] {
            sh(&["ip", "-n", ns, "addr", "add", ip, "dev", dev]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        bed
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        for ns in [&self.relay, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `f` on a thread inside namespace `ns` (namespaces are per thread).
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        setns(file, CloneFlags::CLONE_NEWNET).expect("setns into the test namespace");
        f()
    })
    .join()
    .expect("namespace thread")
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

#[tokio::test]
async fn kernel_mode_scrape_reports_the_program_and_its_verdict_counters() {
    if let Some(reason) = kernel_skip_reason() {
        eprintln!(
            "\n!!!!!!!! SKIPPED kernel-path test {}: {reason} !!!!!!!!\n",
            module_path!()
        );
        return;
    }
    let bed = Bed::new();
    // `ip netns exec` mounts a bpffs of its own on /sys/fs/bpf, so the
    // default pin directory is private to this manager.
    let mut child = Command::new("ip")
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
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the manager");
    let stderr = child.stderr.take().expect("piped stderr");
    let _daemon = Daemon(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let verbose = std::env::var_os("SB_TEST_LOG").is_some();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if verbose {
                eprintln!("{line}");
            }
            if let Some(addr) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("metrics="))
            {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let metrics: SocketAddr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the manager logs its metrics address")
        .parse()
        .expect("a socket address");

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
    let forwarded = "switchboard_rtpmanager_kernel_packets_total{verdict=\"forwarded\"}";
    let no_entry_before = value(&before, no_entry);

    // UDP into the media range with no call: the program passes each
    // packet up with the no_entry verdict.
    in_ns(&bed.peer, || {
        let socket = UdpSocket::bind("10.209.0.2:0").expect("bind the peer");
        for _ in 0..5 {
            socket
                .send_to(&[0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1], "10.209.0.1:30000")
                .expect("send");
        }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    let after = loop {
        let after = scrape_in(&bed.relay, metrics);
        if value(&after, no_entry) >= no_entry_before + 5 || Instant::now() > deadline {
            break after;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(value(&after, no_entry), no_entry_before + 5, "{after}");
    assert_eq!(value(&after, forwarded), 0, "{after}");
    assert_eq!(value(&after, "switchboard_rtpmanager_kernel_directions"), 0);
}
