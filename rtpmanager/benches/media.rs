//! Media relay benchmark on a network-namespace test bed.
//!
//! `cargo xtask bench media` runs this (as root). For each requested number
//! of calls it builds two namespaces joined by a veth pair (the relay and the
//! peers), starts the manager in the relay namespace with the requested
//! fast path, sets up N bridged calls over gRPC, and sends 50 packets per
//! second each way per call from the peers' namespace. It prints offered
//! packets per second, loss (and the part of it the bed itself dropped:
//! the peers' sockets for a full receive buffer, the veth rings for a
//! burst larger than they hold), one-way
//! latency p50/p99 through the relay, and
//! the relay's CPU time per forwarded packet: the manager process's CPU time
//! for the userspace path, and for the kernel paths also the program's own
//! run time per packet from the kernel's BPF statistics (enabled with the
//! BPF_ENABLE_STATS command for the duration of the run, so no sysctl is
//! left changed).
//!
//! Kernel paths: forwarding is on for `r0` in the relay namespace (the
//! programs' route lookup needs it), and for native XDP the peer veth runs
//! a pass-all XDP program (our own, with a media range nothing uses):
//! frames an XDP program transmits out of a veth are dropped unless the
//! peer has one (GRO on the peer was not enough, see EBPF-NOTES).
//!
//! `--bed two-interface` is an SBC's relay instead: the callers reach it on
//! `a0`, the callees on `b0`, each side a namespace and subnet of its own
//! (no path between them but through the relay); the manager runs one
//! named interface per side (`--interface`), the callee's leg named
//! `private` as signaling names it, the caller's placed by route. Both
//! beds print the kernel's share of each direction (GetStats' kernel
//! packets over received packets, summed over the calls' legs) and how many
//! legs were offloaded after the warm-up, where every call latched at once.
//!
//! Load: `--rate` packets a second per call and direction (50 by default),
//! `--one-way` for the callers alone (a flood: `--calls 100 --rate 2500
//! --one-way` is 250 kpps over 100 streams, sent by two threads, half the
//! calls each). Every packet carries its call in the SSRC, so besides the
//! total the table prints the loss of the best, the median and the worst
//! stream: under overload they show whether loss is spread or one stream
//! starves. `--capacity-pps N` starts the manager with admission control
//! (by default it is off, so each point carries all its calls): the point
//! prints how many calls were admitted, the first refusal's reason, and
//! whether Health said overloaded at the end of the measurement.
//!
//! All traffic stays inside the namespaces this program creates; they are
//! deleted by name at the end, and the manager it started is stopped by pid.
#![allow(clippy::print_stdout)]

use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use switchboard_proto::v1;
use switchboard_proto::v1::rtp_manager_client::RtpManagerClient;
use switchboard_rtpmanager::config::FastPathRequest;
use switchboard_rtpmanager::fastpath::{self, FastPath, Mode, Settings};
use switchboard_testkit::daemon::{Daemon, Options};
use switchboard_testkit::netns::{in_ns, udp_counter, veth, Netns};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard-rtpmanager");
const RELAY_IP: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 1);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 2);
/// The two-interface bed: the callers' side and the callees' side.
const RELAY_A_IP: Ipv4Addr = Ipv4Addr::new(10, 203, 1, 1);
const CALLERS_IP: Ipv4Addr = Ipv4Addr::new(10, 203, 1, 2);
const RELAY_B_IP: Ipv4Addr = Ipv4Addr::new(10, 203, 2, 1);
const CALLEES_IP: Ipv4Addr = Ipv4Addr::new(10, 203, 2, 2);
const CALLER_PORT: u16 = 7000;
const CALLEE_PORT: u16 = 7002;
const PACKET_LEN: usize = 172;
const PPS_PER_DIRECTION: u64 = 50;

struct Args {
    path: String,
    calls: Vec<usize>,
    seconds: u64,
    /// The two-interface bed (`--bed two-interface`).
    two_sided: bool,
    /// The load each call brings.
    load: Load,
    /// The manager's `--relay-capacity-pps` (0: no admission control, the
    /// bench offers more than the relay carries well on purpose).
    capacity_pps: u32,
}

/// What each call sends.
#[derive(Clone, Copy, Debug)]
struct Load {
    /// Packets a second per call and direction.
    rate: u64,
    /// Only the callers send (a flood towards the callees); otherwise both.
    one_way: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        path: "userspace".into(),
        calls: vec![100, 500, 1000, 2000],
        seconds: 10,
        two_sided: false,
        load: Load {
            rate: PPS_PER_DIRECTION,
            one_way: false,
        },
        capacity_pps: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--path" => args.path = it.next().context("--path needs a value")?,
            "--calls" => {
                let list = it.next().context("--calls needs a list")?;
                args.calls = list
                    .split(',')
                    .map(|n| {
                        n.trim()
                            .parse()
                            .with_context(|| format!("--calls: `{n}` is not a number"))
                    })
                    .collect::<anyhow::Result<_>>()?;
            }
            "--seconds" => args.seconds = it.next().context("--seconds needs a value")?.parse()?,
            "--bed" => {
                args.two_sided = match it.next().context("--bed needs a value")?.as_str() {
                    "one-interface" => false,
                    "two-interface" => true,
                    other => bail!("--bed: `{other}` is not one-interface or two-interface"),
                }
            }
            "--rate" => {
                args.load.rate = it.next().context("--rate needs a value")?.parse()?;
                if args.load.rate == 0 {
                    bail!("--rate: at least one packet a second");
                }
            }
            "--one-way" => args.load.one_way = true,
            "--capacity-pps" => {
                args.capacity_pps = it.next().context("--capacity-pps needs a value")?.parse()?;
            }
            // cargo bench passes --bench to harness-less benches.
            "--bench" => {}
            other => bail!(
                "unknown argument `{other}` (use --path, --calls, --seconds, --bed, --rate, --one-way, --capacity-pps)"
            ),
        }
    }
    let fast_path = match args.path.as_str() {
        "userspace" => "off",
        "xdp" | "xdp-generic" | "tc" => args.path.as_str(),
        other => bail!("--path: `{other}` is not userspace, xdp, xdp-generic or tc"),
    };
    let _ = fast_path;
    Ok(args)
}

/// One side of the relay: a peers' namespace joined to the relay by a
/// veth pair.
struct Side {
    ns: Netns,
    peer_dev: &'static str,
    relay_dev: &'static str,
    peer_ip: Ipv4Addr,
    relay_ip: Ipv4Addr,
}

/// The relay and its sides' namespaces, deleted by name on drop: one side
/// (callers and callees together, the relay hairpins on `r0`) or two
/// (callers on `a0`, callees on `b0`).
struct Bed {
    relay: Netns,
    sides: Vec<Side>,
}

impl Bed {
    fn new(two_sided: bool) -> Bed {
        let pid = std::process::id();
        let side = |tag: &str, peer_dev, relay_dev, peer_ip, relay_ip| Side {
            ns: Netns::add(&format!("sbbench{pid}{tag}"), None),
            peer_dev,
            relay_dev,
            peer_ip,
            relay_ip,
        };
        let bed = Bed {
            relay: Netns::add(&format!("sbbench{pid}r"), None),
            sides: if two_sided {
                vec![
                    side("p", "p0", "a0", CALLERS_IP, RELAY_A_IP),
                    side("q", "q0", "b0", CALLEES_IP, RELAY_B_IP),
                ]
            } else {
                vec![side("p", "p0", "r0", PEER_IP, RELAY_IP)]
            },
        };
        for side in &bed.sides {
            veth(
                &side.ns,
                side.peer_dev,
                None,
                &bed.relay,
                side.relay_dev,
                None,
            );
            for (ns, dev, ip) in [
                (&side.ns, side.peer_dev, side.peer_ip),
                (&bed.relay, side.relay_dev, side.relay_ip),
            ] {
                ns.sysctl(&format!("net.ipv6.conf.{dev}.disable_ipv6=1"));
                ns.address(dev, IpAddr::V4(ip), 24);
            }
            bed.relay
                .sysctl(&format!("net.ipv4.conf.{}.forwarding=1", side.relay_dev));
            side.ns.checksums_on_the_wire(side.peer_dev);
            let (peer_mac, relay_mac) = (side.ns.mac(side.peer_dev), bed.relay.mac(side.relay_dev));
            side.ns
                .neighbour(side.peer_dev, IpAddr::V4(side.relay_ip), &relay_mac);
            bed.relay
                .neighbour(side.relay_dev, IpAddr::V4(side.peer_ip), &peer_mac);
        }
        bed
    }

    /// The callers' side.
    fn callers(&self) -> &Side {
        &self.sides[0]
    }

    /// The callees' side (the callers' own on a one-interface bed).
    fn callees(&self) -> &Side {
        &self.sides[self.sides.len() - 1]
    }

    /// Runs `f` on a thread inside namespace `ns`.
    fn in_ns<T: Send + 'static>(
        ns: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        Ok(in_ns(ns, f))
    }
}

fn sdp(ip: Ipv4Addr, port: u16) -> String {
    format!(
        "v=0\r\no=bench 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=sendrecv\r\n"
    )
}

fn media_port(sdp: &str) -> anyhow::Result<u16> {
    sdp.lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .context("m=audio in the manager's SDP")
}

/// One admitted call: where each side sends to.
#[derive(Clone, Copy, Debug)]
struct BenchCall {
    /// `bench-N`; also the SSRC its packets carry, so each stream's loss is
    /// counted on its own.
    number: usize,
    /// The relay's port the caller sends to (on the caller's side).
    to_caller_side: u16,
    /// The relay's port the callee sends to.
    to_callee_side: u16,
}

/// The calls the manager took, and what it refused.
struct CallsSetUp {
    /// Per admitted call, its number (`bench-N`), the relay's port facing
    /// the caller and the one facing the callee.
    calls: Vec<BenchCall>,
    /// Offers refused with RESOURCE_EXHAUSTED (admission control).
    refused: usize,
    /// The first refusal's reason.
    refusal: Option<String>,
}

/// Offers `calls` calls one after the other and bridges those admitted.
/// With `callee_interface` the callee's leg is named onto it, as
/// signaling's dial action does.
fn set_up_calls(
    relay_ns: &str,
    calls: usize,
    caller_ip: Ipv4Addr,
    callee_ip: Ipv4Addr,
    callee_interface: &'static str,
) -> anyhow::Result<CallsSetUp> {
    Bed::in_ns(relay_ns, move || -> anyhow::Result<CallsSetUp> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut client = loop {
                match RtpManagerClient::connect("http://127.0.0.1:9090").await {
                    Ok(c) => break c,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => bail!("manager never listened: {e}"),
                }
            };
            let mut set_up = CallsSetUp {
                calls: Vec::with_capacity(calls),
                refused: 0,
                refusal: None,
            };
            for i in 0..calls {
                let call_id = format!("bench-{i}");
                let offer = match client
                    .offer(v1::OfferRequest {
                        call_id: call_id.clone(),
                        leg_id: "a".into(),
                        peer_leg_id: "b".into(),
                        sdp: sdp(caller_ip, CALLER_PORT),
                        options: Some(v1::LegOptions {
                            strict_source: true,
                            ..Default::default()
                        }),
                        peer_options: Some(v1::LegOptions {
                            strict_source: true,
                            interface: callee_interface.to_owned(),
                            ..Default::default()
                        }),
                    })
                    .await
                {
                    Ok(offer) => offer.into_inner(),
                    Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                        set_up.refused += 1;
                        set_up
                            .refusal
                            .get_or_insert_with(|| status.message().to_owned());
                        continue;
                    }
                    Err(status) => return Err(status.into()),
                };
                let answer = client
                    .answer(v1::AnswerRequest {
                        call_id: call_id.clone(),
                        leg_id: "b".into(),
                        peer_leg_id: "a".into(),
                        sdp: sdp(callee_ip, CALLEE_PORT),
                        bridge: false,
                    })
                    .await?
                    .into_inner();
                client
                    .bridge(v1::BridgeRequest {
                        call_id,
                        leg_a: "a".into(),
                        leg_b: "b".into(),
                    })
                    .await?;
                set_up.calls.push(BenchCall {
                    number: i,
                    to_caller_side: media_port(&answer.sdp)?,
                    to_callee_side: media_port(&offer.sdp)?,
                });
            }
            Ok(set_up)
        })
    })?
}

/// Latency histogram in microseconds, 1 µs buckets up to 100 ms.
struct Histogram {
    buckets: Vec<u64>,
    count: u64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            buckets: vec![0; 100_001],
            count: 0,
        }
    }

    fn add(&mut self, micros: u64) {
        let i = usize::try_from(micros.min(100_000)).unwrap_or(100_000);
        self.buckets[i] += 1;
        self.count += 1;
    }

    fn percentile(&self, p: f64) -> u64 {
        let target = ((self.count as f64) * p).ceil() as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= target.max(1) {
                return i as u64;
            }
        }
        100_000
    }
}

struct Traffic {
    sent: AtomicU64,
    received: AtomicU64,
    measuring: AtomicBool,
    stop: AtomicBool,
    histogram: Mutex<Histogram>,
    /// Per direction (0: caller → callee, 1: callee → caller) and call
    /// number, packets sent and received while measuring.
    streams: Mutex<[StreamCounts; 2]>,
}

#[derive(Default)]
struct StreamCounts {
    sent: Vec<u64>,
    received: Vec<u64>,
}

impl Traffic {
    fn new(calls: usize) -> Traffic {
        let counts = || StreamCounts {
            sent: vec![0; calls],
            received: vec![0; calls],
        };
        Traffic {
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            measuring: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            histogram: Mutex::new(Histogram::new()),
            streams: Mutex::new([counts(), counts()]),
        }
    }

    /// Adds a thread's own per-stream counts of one direction.
    fn merge(&self, direction: usize, sent: &[u64], received: &[u64]) {
        let Ok(mut streams) = self.streams.lock() else {
            return;
        };
        let counts = &mut streams[direction];
        for (total, n) in counts.sent.iter_mut().zip(sent) {
            *total += n;
        }
        for (total, n) in counts.received.iter_mut().zip(received) {
            *total += n;
        }
    }

    /// Loss of the best, the median and the worst stream, in %, over the
    /// streams that sent while measuring.
    fn stream_loss(&self) -> [f64; 3] {
        let Ok(streams) = self.streams.lock() else {
            return [0.0; 3];
        };
        let mut losses: Vec<f64> = streams
            .iter()
            .flat_map(|c| c.sent.iter().zip(&c.received))
            .filter(|(sent, _)| **sent > 0)
            .map(|(&sent, &received)| sent.saturating_sub(received) as f64 * 100.0 / sent as f64)
            .collect();
        if losses.is_empty() {
            return [0.0; 3];
        }
        losses.sort_by(f64::total_cmp);
        [
            losses[0],
            losses[losses.len() / 2],
            losses[losses.len() - 1],
        ]
    }
}

fn sendmmsg_to(socket: &UdpSocket, packets: &[[u8; PACKET_LEN]], dests: &[SocketAddrV4]) -> usize {
    let n = packets.len().min(dests.len());
    // SAFETY: zeroed C structs are valid; every pointer below refers to
    // `packets`/`addrs`, which outlive the call.
    let mut addrs: Vec<libc::sockaddr_in> = vec![unsafe { MaybeUninit::zeroed().assume_init() }; n];
    let mut iovecs: Vec<libc::iovec> = Vec::with_capacity(n);
    let mut headers: Vec<libc::mmsghdr> = vec![unsafe { MaybeUninit::zeroed().assume_init() }; n];
    for i in 0..n {
        addrs[i].sin_family = libc::AF_INET as libc::sa_family_t;
        addrs[i].sin_port = dests[i].port().to_be();
        addrs[i].sin_addr.s_addr = u32::from(*dests[i].ip()).to_be();
        iovecs.push(libc::iovec {
            iov_base: packets[i].as_ptr() as *mut libc::c_void,
            iov_len: PACKET_LEN,
        });
    }
    for i in 0..n {
        headers[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in).cast();
        headers[i].msg_hdr.msg_namelen =
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        headers[i].msg_hdr.msg_iov = &mut iovecs[i];
        headers[i].msg_hdr.msg_iovlen = 1;
    }
    let mut done = 0;
    while done < n {
        // SAFETY: see above.
        let r = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                headers[done..].as_mut_ptr(),
                (n - done) as libc::c_uint,
                0,
            )
        };
        if r <= 0 {
            break;
        }
        done += r as usize;
    }
    done
}

/// Sends `rate` packets a second per call in one direction from `socket`
/// (`direction` 0: to the relay's caller-side ports, 1: callee-side),
/// spread over each period in slices of at least 200 µs. One thread per
/// direction (or per half of the calls one way): on veth every in-kernel
/// path runs in the sender's softirq, so one thread alone cannot offer
/// 4000 calls.
fn send_loop(
    traffic: &Traffic,
    socket: &UdpSocket,
    (direction, relay_ip): (usize, Ipv4Addr),
    calls: &[BenchCall],
    rate: u64,
    epoch: Instant,
) {
    let period = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let slices = usize::try_from(period.as_micros() / 200)
        .unwrap_or(10)
        .clamp(1, 10);
    let mut seq: u16 = 0;
    let mut next = Instant::now();
    let mut packets = vec![[0u8; PACKET_LEN]; calls.len()];
    let mut dests = Vec::with_capacity(calls.len());
    let streams = calls.iter().map(|c| c.number).max().map_or(0, |n| n + 1);
    let mut sent_per_stream = vec![0u64; streams];
    while !traffic.stop.load(Ordering::Relaxed) {
        seq = seq.wrapping_add(1);
        let chunk = calls.len().div_ceil(slices).max(1);
        for (slice, slice_calls) in calls.chunks(chunk).enumerate() {
            let slice_at = next
                + period * u32::try_from(slice).unwrap_or(0) / u32::try_from(slices).unwrap_or(1);
            if let Some(wait) = slice_at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            dests.clear();
            for (packet, call) in packets.iter_mut().zip(slice_calls) {
                packet[0] = 0x80;
                packet[2..4].copy_from_slice(&seq.to_be_bytes());
                packet[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
                let ssrc = u32::try_from(call.number).unwrap_or(u32::MAX);
                packet[8..12].copy_from_slice(&ssrc.to_be_bytes());
                let sent_at = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(0);
                packet[12..20].copy_from_slice(&sent_at.to_be_bytes());
                let port = if direction == 0 {
                    call.to_caller_side
                } else {
                    call.to_callee_side
                };
                dests.push(SocketAddrV4::new(relay_ip, port));
            }
            let n = sendmmsg_to(socket, &packets[..slice_calls.len()], &dests);
            if traffic.measuring.load(Ordering::Relaxed) {
                traffic.sent.fetch_add(n as u64, Ordering::Relaxed);
                for call in &slice_calls[..n] {
                    sent_per_stream[call.number] += 1;
                }
            }
        }
        next += period;
    }
    traffic.merge(direction, &sent_per_stream, &[]);
}

/// Pins the calling thread to CPU `n` modulo the CPUs there are; best
/// effort (the bench still runs unpinned if the kernel refuses).
fn pin_to_cpu(n: usize) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut set = nix::sched::CpuSet::new();
    if set.set(n % cpus).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// Receives with `recvmmsg` so the bed's own receiving costs little next to
/// the relay it measures; each packet carries its send time and its call
/// (SSRC). `direction` is the one whose packets arrive on `socket`.
fn receive_loop(
    traffic: &Traffic,
    socket: &UdpSocket,
    direction: usize,
    streams: usize,
    epoch: Instant,
) {
    const BATCH: usize = 64;
    let mut buffers = vec![[0u8; 256]; BATCH];
    let mut local = Histogram::new();
    let mut received_per_stream = vec![0u64; streams];
    while !traffic.stop.load(Ordering::Relaxed) {
        let mut iovecs: Vec<libc::iovec> = buffers
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: zeroed mmsghdr is valid; each points at one iovec above,
        // which points into `buffers`; both outlive the call.
        let mut headers: Vec<libc::mmsghdr> = iovecs
            .iter_mut()
            .map(|iov| {
                let mut h: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        // The socket's 100 ms read timeout bounds the wait, so `stop` is seen.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 || !traffic.measuring.load(Ordering::Relaxed) {
            continue;
        }
        let now = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(0);
        for (h, buf) in headers.iter().zip(&buffers).take(n as usize) {
            if h.msg_len < 20 {
                continue;
            }
            let mut sent = [0u8; 8];
            sent.copy_from_slice(&buf[12..20]);
            traffic.received.fetch_add(1, Ordering::Relaxed);
            local.add(now.saturating_sub(u64::from_be_bytes(sent)) / 1000);
            let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
            if let Some(n) = usize::try_from(ssrc)
                .ok()
                .and_then(|i| received_per_stream.get_mut(i))
            {
                *n += 1;
            }
        }
    }
    traffic.merge(direction, &[], &received_per_stream);
    if let Ok(mut h) = traffic.histogram.lock() {
        for (i, n) in local.buckets.iter().enumerate() {
            h.buckets[i] += n;
        }
        h.count += local.count;
    }
}

struct Row {
    calls: usize,
    /// Calls the manager admitted (the others were refused).
    admitted: usize,
    /// Health said overloaded at the end of the measurement.
    overloaded: bool,
    /// Loss of the best, the median and the worst stream (call and
    /// direction), in %.
    stream_loss_pct: [f64; 3],
    offered_pps: u64,
    /// Packets a second the peers received through the relay.
    delivered_pps: u64,
    loss_pct: f64,
    p50_us: u64,
    p99_us: u64,
    cpu_pct: f64,
    ns_per_packet: f64,
    /// Program run time per packet (kernel paths).
    bpf_ns_per_packet: Option<f64>,
    /// Share of received packets the program forwarded (kernel paths).
    bpf_packets_pct: Option<f64>,
    /// Run time per packet of the peer's pass-all program (native XDP).
    floor_ns_per_packet: Option<f64>,
    /// Share of the sent packets the bed itself dropped: the peers' sockets
    /// for a full receive buffer, and the veth pair's rings (a native XDP_TX
    /// burst larger than the peer's 256-frame ring is dropped there, with
    /// the program's verdict already counted).
    bed_drops_pct: f64,
    /// The kernel's share of the packets received on the callers' legs
    /// (caller → callee) and on the callees' (callee → caller), in %.
    kernel_share_pct: (f64, f64),
    /// Legs offloaded after the warm-up, and legs.
    offloaded: (usize, usize),
}

/// Drops of the veth pair's rings, both ends: `rx_queue_N_drops`,
/// `rx_queue_N_xdp_tx_errors` and `tx_queue_N_xdp_xmit_errors` of
/// `ethtool -S` (not `xdp_drops`, the programs' own XDP_DROP verdicts).
fn veth_drops(bed: &Bed) -> anyhow::Result<u64> {
    let mut total = 0;
    let devices = bed
        .sides
        .iter()
        .flat_map(|s| [(&bed.relay, s.relay_dev), (&s.ns, s.peer_dev)]);
    for (ns, dev) in devices {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "ethtool", "-S", dev])
            .output()
            .context("ethtool -S")?;
        total += String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| line.trim().split_once(':'))
            .filter(|(name, _)| {
                (name.ends_with("_drops") && !name.ends_with("xdp_drops"))
                    || name.ends_with("xdp_tx_errors")
                    || name.ends_with("xdp_xmit_errors")
            })
            .filter_map(|(_, value)| value.trim().parse::<u64>().ok())
            .sum::<u64>();
    }
    Ok(total)
}

/// `Udp: RcvbufErrors` of the calling thread's namespace.
fn udp_rcvbuf_errors() -> u64 {
    udp_counter("RcvbufErrors").unwrap_or(0)
}

/// Kernel BPF run-time statistics, on while this is alive.
struct BpfStats(
    #[expect(
        dead_code,
        reason = "held open: the kernel counts run time while the fd lives"
    )]
    std::os::fd::OwnedFd,
);

impl BpfStats {
    fn enable() -> anyhow::Result<BpfStats> {
        // union bpf_attr { struct { __u32 type; } enable_stats; }, with
        // type BPF_STATS_RUN_TIME (0); the rest of the union must be zero.
        let attr = [0u8; 16];
        const BPF_ENABLE_STATS: libc::c_long = 32;
        // SAFETY: the kernel reads `attr.len()` bytes of our buffer.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_ptr(),
                attr.len() as libc::c_uint,
            )
        };
        if fd < 0 {
            bail!("BPF_ENABLE_STATS: {}", std::io::Error::last_os_error());
        }
        let fd = i32::try_from(fd).context("fd")?;
        // SAFETY: the syscall returned a new descriptor that we own.
        Ok(BpfStats(unsafe {
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        }))
    }
}

/// Every number following `"key":` in a JSON text.
fn json_numbers(text: &str, key: &str) -> Vec<u64> {
    let pattern = format!("\"{key}\":");
    text.match_indices(&pattern)
        .filter_map(|(i, _)| {
            let rest = &text[i + pattern.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// The loaded programs as (id, name, run time ns, run count).
fn programs() -> anyhow::Result<Vec<(u64, String, u64, u64)>> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .context("bpftool prog show")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // One object per program, each starting with its id.
    Ok(text
        .split("{\"id\":")
        .skip(1)
        .filter_map(|program| {
            let id: String = program.chars().take_while(char::is_ascii_digit).collect();
            let name = program
                .split("\"name\":\"")
                .nth(1)?
                .split('"')
                .next()?
                .to_owned();
            let first = |key| json_numbers(program, key).first().copied().unwrap_or(0);
            Some((
                id.parse().ok()?,
                name,
                first("run_time_ns"),
                first("run_cnt"),
            ))
        })
        .collect())
}

/// Run time (ns) and run count of the manager's programs: those named
/// `switchboard_*` that were not loaded before it started (`before`; the
/// peer's pass-all program is). Found by name rather than by interface:
/// bpftool 7.1 does not list TCX attachments, which aya uses for TC on
/// kernels from 6.6, and this build of it shows no owner pids.
fn program_stats(before: &[u64]) -> anyhow::Result<(u64, u64)> {
    programs_stats(|id| !before.contains(&id))
}

/// Run time (ns) and run count of the `switchboard_*` programs whose id
/// `wanted` accepts.
fn programs_stats(wanted: impl Fn(u64) -> bool) -> anyhow::Result<(u64, u64)> {
    Ok(programs()?
        .into_iter()
        .filter(|(id, name, _, _)| name.starts_with("switchboard_") && wanted(*id))
        .fold((0, 0), |(t, c), (_, _, time, count)| (t + time, c + count)))
}

fn run_once(args: &Args, calls: usize) -> anyhow::Result<Row> {
    let (path, seconds, two_sided) = (args.path.as_str(), args.seconds, args.two_sided);
    let bed = Bed::new(two_sided);
    let fast_path = if path == "userspace" { "off" } else { path };
    let port_max =
        20000 + u16::try_from(calls * 4 + 16).context("too many calls for the port range")?;
    // Two-interface: one leg per call on each side, each side its range.
    let port_mid = 20000 + u16::try_from(calls * 2 + 8).context("too many calls")?;
    let existing: Vec<u64> = programs()?.into_iter().map(|p| p.0).collect();
    // Native XDP transmits out of a relay device reach its peer only when
    // the peer runs XDP.
    let mut _peer_pass = Vec::new();
    if path == "xdp" {
        for side in &bed.sides {
            let settings = Settings {
                request: FastPathRequest::Xdp,
                interface: side.peer_dev.into(),
                port_min: 1,
                port_max: 1,
                next_hop_cache: fastpath::DEFAULT_NEXT_HOP_CACHE,
            };
            let pass = Bed::in_ns(&side.ns, move || FastPath::start(&settings))?;
            if pass.mode() != Mode::XdpNative {
                bail!("pass-all XDP on the peer veth: {}", pass.reason());
            }
            _peer_pass.push(pass);
        }
    }
    // Taken before the manager starts, so its programs are the new ones.
    let loaded_before: Vec<u64> = programs()?.into_iter().map(|p| p.0).collect();
    let bpf_stats = if path == "userspace" {
        None
    } else {
        Some(BpfStats::enable()?)
    };
    let interfaces = if two_sided {
        vec![
            "--interface".to_owned(),
            format!(
                "name=public,device=a0,advertise={RELAY_A_IP},ports=20000-{}",
                port_mid - 1
            ),
            "--interface".to_owned(),
            format!("name=private,device=b0,advertise={RELAY_B_IP},ports={port_mid}-{port_max}"),
        ]
    } else {
        [
            "--media-interface",
            "r0",
            "--advertise",
            &RELAY_IP.to_string(),
            "--rtp-port-min",
            "20000",
            "--rtp-port-max",
            &port_max.to_string(),
        ]
        .map(str::to_owned)
        .to_vec()
    };
    // Its warnings go to our stderr as before; stopped by SIGTERM.
    let manager = Daemon::try_spawn_with(
        "switchboard-rtpmanager",
        Command::new("ip")
            .args(["netns", "exec", &bed.relay, BIN])
            .args(["--fast-path", fast_path])
            .args(&interfaces)
            .args(["--grpc-port", "9090", "--log-level", "warn"])
            .args(["--media-timeout", "600"])
            // By default the bench offers the relay more than it carries
            // well, on purpose: admission control would refuse those calls.
            .args(["--relay-capacity-pps", &args.capacity_pps.to_string()]),
        Options {
            echo: true,
            grace: Duration::from_secs(10),
            ..Options::default()
        },
    )
    .context("starting the manager")?;
    let (callers, callees) = (bed.callers(), bed.callees());
    let set_up = set_up_calls(
        &bed.relay,
        calls,
        callers.peer_ip,
        callees.peer_ip,
        if two_sided { "private" } else { "" },
    )?;
    if let Some(reason) = &set_up.refusal {
        println!("# {} of {calls} calls refused: {reason}", set_up.refused);
    }
    let admitted = set_up.calls;
    let numbers: Vec<usize> = admitted.iter().map(|c| c.number).collect();

    let traffic = Arc::new(Traffic::new(calls));
    let epoch = Instant::now();
    let peer_socket = |ns: &str, ip: Ipv4Addr, port: u16| {
        Bed::in_ns(ns, move || -> anyhow::Result<Arc<UdpSocket>> {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
            s.set_recv_buffer_size(16 << 20)?;
            s.set_send_buffer_size(16 << 20)?;
            s.bind(&SocketAddr::from((ip, port)).into())?;
            let s: UdpSocket = s.into();
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
            Ok(Arc::new(s))
        })?
    };
    let caller = peer_socket(&callers.ns, callers.peer_ip, CALLER_PORT)?;
    let callee = peer_socket(&callees.ns, callees.peer_ip, CALLEE_PORT)?;
    let mut threads = Vec::new();
    // The callee's socket receives the caller → callee direction (0).
    for (socket, direction) in [(Arc::clone(&callee), 0), (Arc::clone(&caller), 1)] {
        let t = Arc::clone(&traffic);
        threads.push(std::thread::spawn(move || {
            receive_loop(&t, &socket, direction, calls, epoch)
        }));
    }
    // Two senders: one per direction, or one per half of the calls when
    // only the callers send.
    type Sender = (Arc<UdpSocket>, (usize, Ipv4Addr), Vec<BenchCall>);
    let senders: Vec<Sender> = if args.load.one_way {
        admitted
            .chunks(admitted.len().div_ceil(2).max(1))
            .map(|half| (Arc::clone(&caller), (0, callers.relay_ip), half.to_vec()))
            .collect()
    } else {
        vec![
            (Arc::clone(&caller), (0, callers.relay_ip), admitted.clone()),
            (Arc::clone(&callee), (1, callees.relay_ip), admitted.clone()),
        ]
    };
    for (cpu, (socket, direction, calls)) in senders.into_iter().enumerate() {
        let t = Arc::clone(&traffic);
        let rate = args.load.rate;
        threads.push(std::thread::spawn(move || {
            // Each sender's packets on one CPU, as a NIC's RSS keeps a
            // 5-tuple on one queue: the bed runs the relay's kernel path in
            // the sender's softirq, so this is where the stream's entry and
            // stats live.
            pin_to_cpu(cpu);
            send_loop(&t, &socket, direction, &calls, rate, epoch)
        }));
    }
    drop((caller, callee));

    // Warm-up: latching, caches, socket buffers.
    std::thread::sleep(Duration::from_secs(2));
    let offloaded = offloaded_legs(&bed.relay)?;
    let cpu_before = manager.cpu_time();
    let bpf_before = match bpf_stats {
        Some(_) => Some(program_stats(&loaded_before)?),
        None => None,
    };
    // The peer's pass-all program: the same object stopping at the port
    // check, i.e. the floor of a run under the same load (stats overhead,
    // cold caches) for comparison.
    let is_peer = |id: u64| loaded_before.contains(&id) && !existing.contains(&id);
    let peer_before = programs_stats(is_peer)?;
    let side_namespaces: Vec<String> = bed.sides.iter().map(|s| s.ns.to_string()).collect();
    let rcvbuf = || -> anyhow::Result<u64> {
        side_namespaces
            .iter()
            .map(|ns| Bed::in_ns(ns, udp_rcvbuf_errors))
            .sum()
    };
    let rcvbuf_before = rcvbuf()?;
    let veth_before = veth_drops(&bed)?;
    traffic.measuring.store(true, Ordering::Relaxed);
    let measure_start = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    traffic.measuring.store(false, Ordering::Relaxed);
    let elapsed = measure_start.elapsed();
    let cpu = manager.cpu_time().saturating_sub(cpu_before);
    let bpf = match bpf_before {
        Some((time, count)) => {
            let (time_after, count_after) = program_stats(&loaded_before)?;
            Some((time_after - time, count_after - count))
        }
        None => None,
    };
    let peer = {
        let (time, count) = programs_stats(is_peer)?;
        (time - peer_before.0, count - peer_before.1)
    };
    let rcvbuf_drops = rcvbuf()?.saturating_sub(rcvbuf_before);
    let overloaded = health_overloaded(&bed.relay)?;
    let kernel_share_pct = kernel_share(&bed.relay, numbers)?;
    let veth = veth_drops(&bed)?.saturating_sub(veth_before);
    drop(bpf_stats);
    // Packets still in flight when measuring stopped are not counted as
    // received; with ~100 µs transit that is well under 0.1 % of a window.
    std::thread::sleep(Duration::from_millis(300));
    traffic.stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    drop(manager);
    drop(bed);

    let sent = traffic.sent.load(Ordering::Relaxed);
    let received = traffic.received.load(Ordering::Relaxed);
    let histogram = traffic
        .histogram
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram lock"))?;
    let stream_loss_pct = traffic.stream_loss();
    let loss_pct = if sent == 0 {
        100.0
    } else {
        (sent.saturating_sub(received)) as f64 * 100.0 / sent as f64
    };
    Ok(Row {
        calls,
        admitted: admitted.len(),
        overloaded,
        stream_loss_pct,
        offered_pps: (sent as f64 / elapsed.as_secs_f64()) as u64,
        delivered_pps: (received as f64 / elapsed.as_secs_f64()) as u64,
        loss_pct,
        p50_us: histogram.percentile(0.50),
        p99_us: histogram.percentile(0.99),
        cpu_pct: cpu.as_secs_f64() * 100.0 / elapsed.as_secs_f64(),
        ns_per_packet: if received == 0 {
            0.0
        } else {
            cpu.as_nanos() as f64 / received as f64
        },
        bpf_ns_per_packet: bpf.map(|(time, count)| time as f64 / count.max(1) as f64),
        bpf_packets_pct: bpf.map(|(_, count)| count as f64 * 100.0 / received.max(1) as f64),
        floor_ns_per_packet: (peer.1 != 0).then(|| peer.0 as f64 / peer.1 as f64),
        bed_drops_pct: if sent == 0 {
            0.0
        } else {
            (rcvbuf_drops + veth) as f64 * 100.0 / sent as f64
        },
        kernel_share_pct,
        offloaded,
    })
}

/// Runs `f` on a current-thread runtime with a client of the manager, in
/// the relay's namespace.
fn with_client<T: Send + 'static>(
    relay_ns: &str,
    f: impl FnOnce(
            RtpManagerClient<tonic::transport::Channel>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<T>>>>
        + Send
        + 'static,
) -> anyhow::Result<T> {
    Bed::in_ns(relay_ns, move || -> anyhow::Result<T> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let client = RtpManagerClient::connect("http://127.0.0.1:9090").await?;
            f(client).await
        })
    })?
}

/// Whether the manager's Health says it is overloaded (admission control).
fn health_overloaded(relay_ns: &str) -> anyhow::Result<bool> {
    with_client(relay_ns, |mut client| {
        Box::pin(async move {
            Ok(client
                .health(v1::HealthRequest {})
                .await?
                .into_inner()
                .overloaded)
        })
    })
}

/// Legs ListCalls reports offloaded, and legs.
fn offloaded_legs(relay_ns: &str) -> anyhow::Result<(usize, usize)> {
    with_client(relay_ns, |mut client| {
        Box::pin(async move {
            let calls = client
                .list_calls(v1::ListCallsRequest {})
                .await?
                .into_inner()
                .calls;
            let legs: Vec<bool> = calls
                .iter()
                .flat_map(|c| c.legs.iter().map(|l| l.offloaded))
                .collect();
            Ok((legs.iter().filter(|o| **o).count(), legs.len()))
        })
    })
}

/// The kernel's share of the RTP received on the callers' legs (`a`) and
/// on the callees' (`b`), over every call, from GetStats.
fn kernel_share(relay_ns: &str, calls: Vec<usize>) -> anyhow::Result<(f64, f64)> {
    with_client(relay_ns, move |mut client| {
        Box::pin(async move {
            let mut sums = [(0u64, 0u64); 2];
            for i in calls {
                let legs = client
                    .get_stats(v1::GetStatsRequest {
                        call_id: format!("bench-{i}"),
                        leg_id: String::new(),
                    })
                    .await?
                    .into_inner()
                    .legs;
                for leg in legs {
                    let side = usize::from(leg.leg_id == "b");
                    sums[side].0 += leg.kernel_packets;
                    sums[side].1 += leg.rtp_in.map_or(0, |c| c.packets);
                }
            }
            let share = |(kernel, all): (u64, u64)| kernel as f64 * 100.0 / all.max(1) as f64;
            Ok((share(sums[0]), share(sums[1])))
        })
    })
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if !nix::unistd::geteuid().is_root() {
        bail!("the media benchmark builds network namespaces and needs root");
    }
    // Two sockets per leg, two legs per call, in the manager; it inherits this.
    let limit = libc::rlimit {
        rlim_cur: 65536,
        rlim_max: 65536,
    };
    // SAFETY: setrlimit reads the struct only.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    println!(
        "media benchmark: path={} bed={} ({} s per point, {} pps per call {}, {PACKET_LEN}-byte packets, relay capacity {})",
        args.path,
        if args.two_sided { "two-interface" } else { "one-interface" },
        args.seconds,
        args.load.rate,
        if args.load.one_way { "caller → callee only" } else { "and direction" },
        if args.capacity_pps == 0 { "off".to_owned() } else { format!("{} pps", args.capacity_pps) },
    );
    println!(
        "{:>6} {:>8} {:>11} {:>10} {:>8} {:>24} {:>10} {:>9} {:>9} {:>10} {:>12} {:>12} {:>9} {:>11} {:>10} {:>10} {:>11} {:>10}",
        "calls",
        "admitted",
        "offered pps",
        "delivered",
        "loss%",
        "stream loss% min/med/max",
        "bed drop%",
        "p50 µs",
        "p99 µs",
        "relay CPU%",
        "proc ns/pkt",
        "BPF ns/pkt",
        "BPF runs%",
        "floor ns",
        "kernel a→b",
        "kernel b→a",
        "offloaded",
        "overloaded"
    );
    let optional = |v: Option<f64>, precision: usize| {
        v.map_or_else(|| "-".to_owned(), |v| format!("{v:.precision$}"))
    };
    for &calls in &args.calls {
        match run_once(&args, calls) {
            Ok(r) => println!(
                "{:>6} {:>8} {:>11} {:>10} {:>8.3} {:>24} {:>10.3} {:>9} {:>9} {:>10.1} {:>12.0} {:>12} {:>9} {:>11} {:>9.2}% {:>9.2}% {:>11} {:>10}",
                r.calls,
                r.admitted,
                r.offered_pps,
                r.delivered_pps,
                r.loss_pct,
                format!(
                    "{:.1}/{:.1}/{:.1}",
                    r.stream_loss_pct[0], r.stream_loss_pct[1], r.stream_loss_pct[2]
                ),
                r.bed_drops_pct,
                r.p50_us,
                r.p99_us,
                r.cpu_pct,
                r.ns_per_packet,
                optional(r.bpf_ns_per_packet, 0),
                optional(r.bpf_packets_pct, 1),
                optional(r.floor_ns_per_packet, 0),
                r.kernel_share_pct.0,
                r.kernel_share_pct.1,
                format!("{}/{}", r.offloaded.0, r.offloaded.1),
                if r.overloaded { "yes" } else { "no" }
            ),
            Err(e) => println!("{calls:>6} failed: {e:#}"),
        }
    }
    Ok(())
}
