//! Unit tests of the XDP and TC programs on crafted packets, without a NIC:
//! BPF_PROG_TEST_RUN runs a loaded (unattached) program on a buffer and
//! returns its verdict and the rewritten bytes.
//!
//! `bpf_fib_lookup` runs in the caller's network namespace, so each test
//! runs on a thread inside a namespace it creates: a veth `v0` with
//! addresses, a permanent neighbour for the forwarding destination, none
//! for the "no neighbour" destination, and forwarding enabled. Without a
//! `ctx_in` the XDP program sees loopback as its ingress (so a forward is a
//! redirect to `v0`); with `ingress_ifindex = v0` it is an XDP_TX.
//!
//! They need root; without it they skip loudly. Without the embedded object
//! they skip too, except under CI, where that is a failure.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

#[macro_use]
#[path = "common/kernel.rs"]
mod kernel;

use aya::Ebpf;
use rtpmanager_common::{
    Counter, ForwardEntry, ForwardKey, RtpRewrite, FLAG_RTP, FLAG_STRICT_SOURCE, TC_PROGRAM,
    XDP_PROGRAM,
};
use switchboard_rtpmanager::config::FastPathRequest;
use switchboard_rtpmanager::fastpath::{self, KernelMaps, Settings};
use switchboard_testkit::netns::{lookup_namespace, mac_text, Netns};

use kernel::addr;
use switchboard_testkit::netns::sh;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const V0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x03, 0x01];
const NEIGH_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x03, 0x02];
const IN_SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x03, 0xaa];
const IN_DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x03, 0xbb];

const RELAY: &str = "10.203.0.1";
const CALLER: &str = "10.203.0.9:41000";
const CALLEE: &str = "10.203.0.2:40000";
const UNRESOLVED: &str = "10.203.0.3:40000";
const RELAY6: &str = "fd00:203::1";
const CALLER6: &str = "[fd00:203::9]:41000";
const CALLEE6: &str = "[fd00:203::2]:40000";

/// A namespace with `v0` (peer `v1`), deleted by name on drop.
struct Namespace(Netns);

impl Namespace {
    fn new(tag: &str) -> Namespace {
        let ip = |s: &str| s.parse().expect("literal");
        Namespace(lookup_namespace(
            &format!("sbx{}{tag}", std::process::id()),
            Some(&mac_text(V0_MAC)),
            &[(ip(RELAY), 24), (ip(RELAY6), 64)],
            &[addr(CALLEE).ip(), addr(CALLEE6).ip()],
            &mac_text(NEIGH_MAC),
        ))
    }

    /// Runs `f` on a thread inside the namespace (namespaces are per thread).
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.0.run(f)
    }
}

/// The programs loaded, unattached, in the current thread's namespace.
struct Programs {
    ebpf: Ebpf,
    maps: KernelMaps,
}

impl Programs {
    fn load() -> Programs {
        Programs::load_with_next_hop_cache(fastpath::DEFAULT_NEXT_HOP_CACHE)
    }

    fn load_with_next_hop_cache(next_hop_cache: Duration) -> Programs {
        let (ebpf, maps) = fastpath::load_unattached(&Settings {
            request: FastPathRequest::Auto,
            interface: String::new(),
            port_min: 30000,
            port_max: 30100,
            next_hop_cache,
        })
        .unwrap_or_else(|e| panic!("load the programs: {e:?}"));
        Programs { ebpf, maps }
    }

    fn fd(&self, name: &str) -> i32 {
        self.ebpf
            .program(name)
            .unwrap_or_else(|| panic!("program {name} in the object"))
            .fd()
            .unwrap_or_else(|e| panic!("fd of {name}: {e}"))
            .as_fd()
            .as_raw_fd()
    }

    fn xdp(&self, packet: &[u8]) -> (u32, Vec<u8>) {
        test_run(self.fd(XDP_PROGRAM), packet, None)
    }

    /// XDP with `ingress_ifindex` set, as if received on that interface.
    fn xdp_on(&self, ifindex: u32, packet: &[u8]) -> (u32, Vec<u8>) {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        let len = u32::try_from(packet.len()).expect("packet length");
        let md: [u32; 6] = [0, len, 0, ifindex, 0, 0];
        let bytes: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        test_run(self.fd(XDP_PROGRAM), packet, Some(&bytes))
    }

    fn tc(&self, packet: &[u8]) -> (u32, Vec<u8>) {
        test_run(self.fd(TC_PROGRAM), packet, None)
    }

    fn counters(&self) -> Vec<(Counter, u64)> {
        self.maps.counters().expect("read the counters")
    }

    /// Asserts that exactly the `want` counters are non-zero, with these values.
    fn assert_counters(&self, want: &[(Counter, u64)]) {
        let got: Vec<(Counter, u64)> = self
            .counters()
            .into_iter()
            .filter(|(_, n)| *n != 0)
            .collect();
        assert_eq!(got, want, "verdict counters");
    }
}

fn test_run(fd: i32, packet: &[u8], ctx: Option<&[u8]>) -> (u32, Vec<u8>) {
    try_test_run(fd, packet, ctx).unwrap_or_else(|e| {
        panic!(
            "BPF_PROG_TEST_RUN: {e} (frame of {} bytes: {:02x?})",
            packet.len(),
            &packet[..packet.len().min(64)]
        )
    })
}

/// [`test_run`], with the kernel's refusal of the input as an error.
fn try_test_run(
    fd: i32,
    packet: &[u8],
    ctx: Option<&[u8]>,
) -> Result<(u32, Vec<u8>), std::io::Error> {
    kernel::test_run(fd, packet, ctx, 1).map(|run| (run.verdict, run.packet))
}

/// One's complement sum of `bytes` as big-endian words, folded.
fn ones_sum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    sum as u16
}

fn rtp(seq: u16, len: usize) -> Vec<u8> {
    rtp_at(seq, u32::from(seq) * 160, len)
}

fn rtp_at(seq: u16, timestamp: u32, len: usize) -> Vec<u8> {
    rtp_of(0x1234_5678, seq, timestamp, len)
}

fn rtp_of(ssrc: u32, seq: u16, timestamp: u32, len: usize) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&timestamp.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..len.saturating_sub(12)).map(|i| i as u8));
    p
}

/// How to build an IPv4 test packet.
#[derive(Clone, Copy)]
struct V4 {
    /// 32-bit words of options (IHL − 5), NOPs.
    option_words: usize,
    /// Flags and fragment offset field.
    frag: u16,
    /// Send UDP checksum 0 ("none").
    no_udp_checksum: bool,
}

const PLAIN: V4 = V4 {
    option_words: 0,
    frag: 0,
    no_udp_checksum: false,
};

fn ethernet(ethertype: u16) -> Vec<u8> {
    let mut p = IN_DST_MAC.to_vec();
    p.extend_from_slice(&IN_SRC_MAC);
    p.extend_from_slice(&ethertype.to_be_bytes());
    p
}

fn udp_header(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + payload.len()).expect("UDP length");
    let mut udp = src.port().to_be_bytes().to_vec();
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    udp
}

fn pseudo_header(src: SocketAddr, dst: SocketAddr, udp_len: usize) -> Vec<u8> {
    let mut pseudo = Vec::new();
    match (src.ip(), dst.ip()) {
        (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, 17]);
            pseudo.extend_from_slice(&u16::try_from(udp_len).expect("len").to_be_bytes());
        }
        (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&u32::try_from(udp_len).expect("len").to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 17]);
        }
        _ => panic!("mixed families"),
    }
    pseudo
}

fn ipv4(src: SocketAddr, dst: SocketAddr, payload: &[u8], how: V4) -> Vec<u8> {
    let (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        panic!("ipv4() takes IPv4 addresses");
    };
    let mut udp = udp_header(src, dst, payload);
    if !how.no_udp_checksum {
        let mut sum_over = pseudo_header(src, dst, udp.len());
        sum_over.extend_from_slice(&udp);
        let check = match !ones_sum(&sum_over) {
            0 => 0xFFFF,
            c => c,
        };
        udp[6..8].copy_from_slice(&check.to_be_bytes());
    }
    let ihl = 5 + how.option_words;
    let total = u16::try_from(ihl * 4 + udp.len()).expect("IP length");
    let mut ip = vec![0x40 | ihl as u8, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34]);
    ip.extend_from_slice(&how.frag.to_be_bytes());
    ip.extend_from_slice(&[64, 17, 0, 0]);
    ip.extend_from_slice(&s.octets());
    ip.extend_from_slice(&d.octets());
    ip.extend(std::iter::repeat_n(1u8, how.option_words * 4));
    let check = !ones_sum(&ip);
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    let mut p = ethernet(0x0800);
    p.extend_from_slice(&ip);
    p.extend_from_slice(&udp);
    p
}

fn ipv6(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) = (src.ip(), dst.ip()) else {
        panic!("ipv6() takes IPv6 addresses");
    };
    let mut udp = udp_header(src, dst, payload);
    let mut sum_over = pseudo_header(src, dst, udp.len());
    sum_over.extend_from_slice(&udp);
    let check = match !ones_sum(&sum_over) {
        0 => 0xFFFF,
        c => c,
    };
    udp[6..8].copy_from_slice(&check.to_be_bytes());
    let mut p = ethernet(0x86DD);
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&u16::try_from(udp.len()).expect("len").to_be_bytes());
    p.extend_from_slice(&[17, 64]);
    p.extend_from_slice(&s.octets());
    p.extend_from_slice(&d.octets());
    p.extend_from_slice(&udp);
    p
}

/// What a forwarded packet looks like to the test.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: SocketAddr,
    dst: SocketAddr,
    udp_checksum: u16,
}

/// Parses `p` and checks its IPv4 header and UDP checksums from scratch.
fn check_ipv4(p: &[u8]) -> Seen {
    let ip = &p[14..34];
    assert_eq!(
        ones_sum(ip),
        0xFFFF,
        "IPv4 header checksum is valid: {ip:02x?}"
    );
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let udp = &p[34..];
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    let udp = &udp[..udp_len];
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    let (src, dst) = (
        SocketAddr::from((src, sport)),
        SocketAddr::from((dst, dport)),
    );
    let udp_checksum = u16::from_be_bytes([udp[6], udp[7]]);
    if udp_checksum != 0 {
        let mut sum_over = pseudo_header(src, dst, udp.len());
        sum_over.extend_from_slice(udp);
        assert_eq!(ones_sum(&sum_over), 0xFFFF, "UDP checksum is valid");
    }
    Seen {
        dst_mac: p[0..6].try_into().expect("6 bytes"),
        src_mac: p[6..12].try_into().expect("6 bytes"),
        src,
        dst,
        udp_checksum,
    }
}

fn check_ipv6(p: &[u8]) -> Seen {
    let ip = &p[14..54];
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).expect("16 bytes"));
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).expect("16 bytes"));
    let udp = &p[54..];
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    let udp = &udp[..udp_len];
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    let (src, dst) = (
        SocketAddr::from((src, sport)),
        SocketAddr::from((dst, dport)),
    );
    let udp_checksum = u16::from_be_bytes([udp[6], udp[7]]);
    assert_ne!(udp_checksum, 0, "IPv6 UDP checksum is never 0");
    let mut sum_over = pseudo_header(src, dst, udp.len());
    sum_over.extend_from_slice(udp);
    assert_eq!(ones_sum(&sum_over), 0xFFFF, "UDP checksum is valid");
    Seen {
        dst_mac: p[0..6].try_into().expect("6 bytes"),
        src_mac: p[6..12].try_into().expect("6 bytes"),
        src,
        dst,
        udp_checksum,
    }
}

fn relay(port: u16) -> SocketAddr {
    SocketAddr::new(RELAY.parse().expect("literal"), port)
}

fn relay6(port: u16) -> SocketAddr {
    SocketAddr::new(RELAY6.parse().expect("literal"), port)
}

/// caller → relay:30000 is forwarded as relay:30002 → `destination`.
fn install_v4(programs: &mut Programs, destination: &str, flags: u16, slot: u32) {
    programs
        .maps
        .install(
            ForwardKey::new(relay(30000)),
            ForwardEntry::new(
                relay(30002),
                addr(destination),
                addr(CALLER),
                flags,
                8000,
                slot,
            ),
        )
        .expect("install the IPv4 entry");
}

fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("no NUL");
    // SAFETY: c is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(index, 0, "{name} exists in the test namespace");
    index
}

#[test]
fn xdp_forwards_ipv4_rtp_with_valid_checksums_by_redirect_and_by_tx() {
    require_kernel_path!();
    let ns = Namespace::new("a");
    ns.run(|| {
        let mut programs = Programs::load();
        install_v4(&mut programs, CALLEE, FLAG_RTP, 3);
        programs.maps.reset_stream_stats(3).expect("reset slot 3");
        let installed = programs
            .maps
            .entry(&ForwardKey::new(relay(30000)))
            .expect("the entry reads back");
        assert_eq!(
            (
                installed.source(),
                installed.destination(),
                installed.expected()
            ),
            (relay(30002), addr(CALLEE), addr(CALLER))
        );
        let packet = ipv4(addr(CALLER), relay(30000), &rtp(7, 172), PLAIN);
        let want = Seen {
            dst_mac: NEIGH_MAC,
            src_mac: V0_MAC,
            src: relay(30002),
            dst: addr(CALLEE),
            udp_checksum: 0,
        };

        // Ingress loopback (no ctx): the route leaves by v0, a redirect.
        let (verdict, out) = programs.xdp(&packet);
        assert_eq!(verdict, XDP_REDIRECT, "forwarded to another interface");
        assert_eq!(out.len(), packet.len(), "same length");
        let seen = check_ipv4(&out);
        assert_ne!(seen.udp_checksum, 0, "a UDP checksum stays present");
        assert_eq!(
            Seen {
                udp_checksum: 0,
                ..seen
            },
            want
        );
        assert_eq!(&out[42..], &packet[42..], "RTP payload untouched");
        assert_eq!(out[22], 64, "TTL untouched");

        // Ingress v0: the route leaves where the packet came in, XDP_TX.
        let (verdict, out_tx) = programs.xdp_on(ifindex("v0"), &packet);
        assert_eq!(verdict, XDP_TX, "sent back out of the ingress interface");
        assert_eq!(out_tx, out, "same rewrite either way");

        programs.assert_counters(&[(Counter::Forwarded, 1), (Counter::Redirected, 1)]);
        let stats = programs.maps.stream_stats(3).expect("slot 3");
        assert_eq!(
            (stats.packets, stats.bytes),
            (2, 2 * 172),
            "two packets of 172 payload bytes"
        );
        assert_eq!(
            (stats.base_seq, stats.highest_seq, stats.received),
            (7, 7, 2)
        );
        assert_ne!(stats.last_seen_ns, 0, "last seen is set");
    });
}

/// The neighbour of CALLEE now answers with `mac`.
fn move_callee_to(mac: [u8; 6]) {
    let mac = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    // The calling thread is in the namespace: plain `ip` acts there.
    sh(&[
        "ip",
        "neigh",
        "replace",
        &addr(CALLEE).ip().to_string(),
        "lladdr",
        &mac,
        "dev",
        "v0",
        "nud",
        "permanent",
    ]);
}

#[test]
fn the_next_hop_is_reused_for_its_ttl_then_looked_up_again() {
    require_kernel_path!();
    const MOVED_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x03, 0x77];
    let ns = Namespace::new("h");
    ns.run(|| {
        let v0 = ifindex("v0");
        let dst_mac = |out: &[u8]| -> [u8; 6] { out[0..6].try_into().expect("6 bytes") };
        let packet = ipv4(addr(CALLER), relay(30000), &rtp(7, 172), PLAIN);

        // A 300 ms cache: the neighbour's new MAC is used once it expired.
        let mut programs = Programs::load_with_next_hop_cache(Duration::from_millis(300));
        install_v4(&mut programs, CALLEE, FLAG_RTP, 3);
        let (verdict, out) = programs.xdp_on(v0, &packet);
        assert_eq!((verdict, dst_mac(&out)), (XDP_TX, NEIGH_MAC));
        move_callee_to(MOVED_MAC);
        let (verdict, out) = programs.xdp_on(v0, &packet);
        assert_eq!(
            (verdict, dst_mac(&out)),
            (XDP_TX, NEIGH_MAC),
            "within the TTL the cached hop is used"
        );
        let (verdict, out) = programs.tc(&packet);
        assert_eq!(
            (verdict, dst_mac(&out)),
            (TC_ACT_REDIRECT, MOVED_MAC),
            "another ingress (TC sees loopback) looks the hop up itself"
        );
        std::thread::sleep(Duration::from_millis(400));
        let (verdict, out) = programs.xdp_on(v0, &packet);
        assert_eq!(
            (verdict, dst_mac(&out)),
            (XDP_TX, MOVED_MAC),
            "after the TTL the hop is looked up again"
        );
        // Replacing the entry starts with an empty cache.
        move_callee_to(NEIGH_MAC);
        install_v4(&mut programs, CALLEE, FLAG_RTP, 3);
        let (_, out) = programs.xdp_on(v0, &packet);
        assert_eq!(dst_mac(&out), NEIGH_MAC, "a replaced entry looks up afresh");
        drop(programs);

        // No cache: every packet sees the neighbour as it is.
        let mut programs = Programs::load_with_next_hop_cache(Duration::ZERO);
        install_v4(&mut programs, CALLEE, FLAG_RTP, 3);
        let (_, out) = programs.xdp_on(v0, &packet);
        assert_eq!(dst_mac(&out), NEIGH_MAC);
        move_callee_to(MOVED_MAC);
        let (_, out) = programs.xdp_on(v0, &packet);
        assert_eq!(dst_mac(&out), MOVED_MAC, "TTL 0 looks up every packet");
    });
}

#[test]
fn xdp_keeps_a_zero_ipv4_udp_checksum_and_forwards_ipv6_with_a_valid_one() {
    require_kernel_path!();
    let ns = Namespace::new("b");
    ns.run(|| {
        let mut programs = Programs::load();
        install_v4(&mut programs, CALLEE, FLAG_RTP, 1);
        let zero = V4 {
            no_udp_checksum: true,
            ..PLAIN
        };
        let packet = ipv4(addr(CALLER), relay(30000), &rtp(1, 172), zero);
        let (verdict, out) = programs.xdp(&packet);
        assert_eq!(verdict, XDP_REDIRECT);
        let seen = check_ipv4(&out);
        assert_eq!(
            (seen.src, seen.dst, seen.udp_checksum),
            (relay(30002), addr(CALLEE), 0)
        );

        programs
            .maps
            .install(
                ForwardKey::new(relay6(30004)),
                ForwardEntry::new(
                    relay6(30006),
                    addr(CALLEE6),
                    addr(CALLER6),
                    FLAG_RTP,
                    48000,
                    2,
                ),
            )
            .expect("install the IPv6 entry");
        // Several payloads, so the incremental update meets different sums
        // (including ones whose result must be sent as 0xFFFF).
        for seq in 0..64u16 {
            let packet = ipv6(
                addr(CALLER6),
                relay6(30004),
                &rtp(seq, 12 + usize::from(seq)),
            );
            let (verdict, out) = programs.xdp(&packet);
            assert_eq!(verdict, XDP_REDIRECT, "seq {seq}");
            let seen = check_ipv6(&out);
            assert_eq!(
                (seen.dst_mac, seen.src_mac, seen.src, seen.dst),
                (NEIGH_MAC, V0_MAC, relay6(30006), addr(CALLEE6)),
                "seq {seq}"
            );
        }
        programs.assert_counters(&[(Counter::Redirected, 65)]);
        let stats = programs.maps.stream_stats(2).expect("slot 2");
        assert_eq!((stats.packets, stats.expected(), stats.lost()), (64, 64, 0));
    });
}

#[test]
fn xdp_passes_what_it_does_not_own_unchanged_and_counts_why() {
    require_kernel_path!();
    let ns = Namespace::new("c");
    ns.run(|| {
        let mut programs = Programs::load();
        install_v4(&mut programs, CALLEE, FLAG_RTP, 0);
        let from_caller =
            |port: u16, payload: &[u8], how: V4| ipv4(addr(CALLER), relay(port), payload, how);
        let media = rtp(1, 172);
        let stun = {
            let mut s = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
            s.extend_from_slice(&[7; 12]);
            s
        };
        let cases: Vec<(&str, Vec<u8>, u32)> = vec![
            (
                "first fragment",
                from_caller(
                    30000,
                    &media,
                    V4 {
                        frag: 0x2000,
                        ..PLAIN
                    },
                ),
                XDP_PASS,
            ),
            (
                "later fragment",
                from_caller(
                    30000,
                    &media,
                    V4 {
                        frag: 0x0010,
                        ..PLAIN
                    },
                ),
                XDP_PASS,
            ),
            (
                "IP options",
                from_caller(
                    30000,
                    &media,
                    V4 {
                        option_words: 1,
                        ..PLAIN
                    },
                ),
                XDP_PASS,
            ),
            ("no entry", from_caller(30010, &media, PLAIN), XDP_PASS),
            (
                "outside the range",
                from_caller(5060, &media, PLAIN),
                XDP_PASS,
            ),
            (
                "STUN on an RTP entry",
                from_caller(30000, &stun, PLAIN),
                XDP_PASS,
            ),
            (
                "wrong source",
                ipv4(addr("10.203.0.8:41000"), relay(30000), &media, PLAIN),
                XDP_PASS,
            ),
            (
                "wrong source port",
                ipv4(addr("10.203.0.9:41001"), relay(30000), &media, PLAIN),
                XDP_PASS,
            ),
        ];
        for (what, packet, want) in &cases {
            let (verdict, out) = programs.xdp(packet);
            assert_eq!(verdict, *want, "{what}");
            assert_eq!(&out, packet, "{what}: the original packet is passed");
        }
        programs.assert_counters(&[
            (Counter::Fragment, 2),
            (Counter::IpOptions, 1),
            (Counter::OtherPort, 1),
            (Counter::NoEntry, 1),
            (Counter::SourceMismatchPass, 2),
            (Counter::NotRtp, 1),
        ]);

        install_v4(&mut programs, CALLEE, FLAG_RTP | FLAG_STRICT_SOURCE, 0);
        let (verdict, _) =
            programs.xdp(&ipv4(addr("10.203.0.8:41000"), relay(30000), &media, PLAIN));
        assert_eq!(verdict, XDP_DROP, "strict entries drop other sources");
        assert_eq!(
            programs.counters()[Counter::SourceMismatchDrop as usize],
            (Counter::SourceMismatchDrop, 1)
        );

        // A destination without a neighbour entry: the stack resolves it.
        install_v4(&mut programs, UNRESOLVED, FLAG_RTP, 0);
        let packet = from_caller(30000, &media, PLAIN);
        let (verdict, out) = programs.xdp(&packet);
        assert_eq!(
            (verdict, &out),
            (XDP_PASS, &packet),
            "no neighbour: passed unchanged"
        );
        assert_eq!(
            programs.counters()[Counter::FibNoNeigh as usize],
            (Counter::FibNoNeigh, 1)
        );

        assert!(programs
            .maps
            .remove(&ForwardKey::new(relay(30000)))
            .expect("remove"));
        assert!(!programs
            .maps
            .remove(&ForwardKey::new(relay(30000)))
            .expect("remove again"));
        let (verdict, _) = programs.xdp(&packet);
        assert_eq!(verdict, XDP_PASS, "removed: back to userspace");
        assert_eq!(
            programs.counters()[Counter::NoEntry as usize],
            (Counter::NoEntry, 2)
        );
        assert_eq!(
            programs.maps.stream_stats(0).expect("slot 0").packets,
            0,
            "nothing forwarded"
        );
    });
}

#[test]
fn xdp_counts_rtp_loss_from_skipped_sequence_numbers() {
    require_kernel_path!();
    let ns = Namespace::new("d");
    ns.run(|| {
        let mut programs = Programs::load();
        install_v4(&mut programs, CALLEE, FLAG_RTP, 9);
        // 65533..=65535, 0..=4 across the wrap, skipping 65535 and 2.
        let seqs = [65533u16, 65534, 0, 1, 3, 4];
        for seq in seqs {
            let (verdict, _) =
                programs.xdp(&ipv4(addr(CALLER), relay(30000), &rtp(seq, 172), PLAIN));
            assert_eq!(verdict, XDP_REDIRECT, "seq {seq}");
        }
        let stats = programs.maps.stream_stats(9).expect("slot 9");
        assert_eq!(stats.packets, 6);
        assert_eq!(stats.bytes, 6 * 172);
        assert_eq!(stats.base_seq, 65533);
        assert_eq!(stats.highest_seq, 65536 + 4, "one wrap");
        assert_eq!((stats.expected(), stats.received, stats.lost()), (8, 6, 2));
        programs.maps.reset_stream_stats(9).expect("reset");
        assert_eq!(programs.maps.stream_stats(9).expect("slot 9").packets, 0);
    });
}

#[test]
fn tc_forwards_with_the_csum_helpers_and_passes_the_rest() {
    require_kernel_path!();
    let ns = Namespace::new("e");
    ns.run(|| {
        let mut programs = Programs::load();
        install_v4(&mut programs, CALLEE, FLAG_RTP, 4);
        let packet = ipv4(addr(CALLER), relay(30000), &rtp(1, 172), PLAIN);
        let (verdict, out) = programs.tc(&packet);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let seen = check_ipv4(&out);
        assert_eq!(
            (seen.dst_mac, seen.src_mac, seen.src, seen.dst),
            (NEIGH_MAC, V0_MAC, relay(30002), addr(CALLEE))
        );
        assert_ne!(seen.udp_checksum, 0);

        let zero = V4 {
            no_udp_checksum: true,
            ..PLAIN
        };
        let (verdict, out) = programs.tc(&ipv4(addr(CALLER), relay(30000), &rtp(2, 172), zero));
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(
            check_ipv4(&out).udp_checksum,
            0,
            "IPv4 zero UDP checksum stays zero"
        );

        programs
            .maps
            .install(
                ForwardKey::new(relay6(30004)),
                ForwardEntry::new(
                    relay6(30006),
                    addr(CALLEE6),
                    addr(CALLER6),
                    FLAG_RTP,
                    48000,
                    5,
                ),
            )
            .expect("install the IPv6 entry");
        for seq in 0..64u16 {
            let packet = ipv6(
                addr(CALLER6),
                relay6(30004),
                &rtp(seq, 12 + usize::from(seq)),
            );
            let (verdict, out) = programs.tc(&packet);
            assert_eq!(verdict, TC_ACT_REDIRECT, "seq {seq}");
            let seen = check_ipv6(&out);
            assert_eq!(
                (seen.src, seen.dst),
                (relay6(30006), addr(CALLEE6)),
                "seq {seq}"
            );
        }

        let fragment = ipv4(
            addr(CALLER),
            relay(30000),
            &rtp(3, 172),
            V4 {
                frag: 0x2000,
                ..PLAIN
            },
        );
        assert_eq!(
            programs.tc(&fragment),
            (TC_ACT_OK, fragment.clone()),
            "fragment passed unchanged"
        );
        install_v4(&mut programs, CALLEE, FLAG_RTP | FLAG_STRICT_SOURCE, 4);
        let stranger = ipv4(addr("10.203.0.8:41000"), relay(30000), &rtp(4, 172), PLAIN);
        assert_eq!(
            programs.tc(&stranger).0,
            TC_ACT_SHOT,
            "strict entries drop other sources"
        );
        install_v4(&mut programs, UNRESOLVED, FLAG_RTP, 4);
        let packet = ipv4(addr(CALLER), relay(30000), &rtp(5, 172), PLAIN);
        let (verdict, out) = programs.tc(&packet);
        assert_eq!(
            verdict, TC_ACT_REDIRECT,
            "no neighbour yet: rewritten and handed to bpf_redirect_neigh"
        );
        let seen = check_ipv4(&out);
        assert_eq!(
            (seen.src, seen.dst, &out[0..12]),
            (relay(30002), addr(UNRESOLVED), &packet[0..12]),
            "addresses rewritten with valid checksums; the MACs are the neighbour subsystem's to write"
        );

        programs.assert_counters(&[
            (Counter::Fragment, 1),
            (Counter::SourceMismatchDrop, 1),
            (Counter::Redirected, 66),
            (Counter::RedirectedNeigh, 1),
        ]);
        let stats = programs.maps.stream_stats(4).expect("slot 4");
        assert_eq!(
            (stats.packets, stats.bytes, stats.lost()),
            (3, 3 * 172, 2),
            "seq 1, 2 and 5 forwarded: 3 and 4 missing"
        );
        assert_eq!(
            stats.source_drops, 1,
            "the strict entry's drop is counted in its stream"
        );
    });
}

/// CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns, in whole seconds.
fn monotonic_seconds() -> i64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    assert_eq!(rc, 0, "clock_gettime: {}", std::io::Error::last_os_error());
    now.tv_sec
}

#[test]
fn xdp_estimates_rfc3550_jitter_in_clock_units() {
    require_kernel_path!();
    let ns = Namespace::new("f");
    ns.run(|| {
        let mut programs = Programs::load();
        // A 1 Hz clock makes arrival times whole seconds: a burst within
        // one second arrives "at once", so each packet's timestamp step of
        // 10 is a transit difference |D| of exactly 10. A burst that
        // straddles a second boundary is repeated.
        programs
            .maps
            .install(
                ForwardKey::new(relay(30000)),
                ForwardEntry::new(relay(30002), addr(CALLEE), addr(CALLER), FLAG_RTP, 1, 6),
            )
            .expect("install");
        let burst = |programs: &Programs| {
            for seq in 0..16u16 {
                let payload = rtp_at(seq, u32::from(seq) * 10, 172);
                let (verdict, _) = programs.xdp(&ipv4(addr(CALLER), relay(30000), &payload, PLAIN));
                assert_eq!(verdict, XDP_REDIRECT, "seq {seq}");
            }
        };
        let mut attempts = 0;
        loop {
            programs.maps.reset_stream_stats(6).expect("reset");
            let before = monotonic_seconds();
            burst(&programs);
            if monotonic_seconds() == before {
                break;
            }
            attempts += 1;
            assert!(attempts < 3, "bursts keep straddling a second boundary");
        }
        let stats = programs.maps.stream_stats(6).expect("slot 6");
        // J += (|D| − J)/16 fifteen times with |D| = 10, in the integer form
        // of RFC 3550 A.8: 10, 19, 28, 36, 44, 51, 58, 64, 70, 76, 81, 86,
        // 91, 95, 99 (sixteenths).
        assert_eq!(stats.jitter_x16, 99);
        assert_eq!(stats.jitter(), 6);
        assert_eq!((stats.expected(), stats.lost()), (16, 0));
    });
}

/// The packet a forward of `packet` must produce: new MACs, addresses,
/// ports and checksums, everything else (TTL, IP ID) as received.
fn with_macs(mut packet: Vec<u8>) -> Vec<u8> {
    packet[0..6].copy_from_slice(&NEIGH_MAC);
    packet[6..12].copy_from_slice(&V0_MAC);
    packet
}

#[test]
fn xdp_and_tc_rewrite_the_rtp_header_of_a_rewriting_entry_with_valid_checksums() {
    require_kernel_path!();
    let ns = Namespace::new("r");
    ns.run(|| {
        let mut programs = Programs::load();
        // Offsets that wrap both fields, as a continuity anchor may.
        let rewrite = RtpRewrite {
            source_ssrc: 0x1234_5678,
            ssrc: 0xCAFE_F00D,
            sequence_offset: 0xFFF0,
            timestamp_offset: 0xFFFF_FF00,
        };
        let entry = ForwardEntry::new(relay(30002), addr(CALLEE), addr(CALLER), FLAG_RTP, 8000, 9)
            .with_rewrite(rewrite);
        programs
            .maps
            .install(ForwardKey::new(relay(30000)), entry)
            .expect("install the rewriting IPv4 entry");
        programs.maps.reset_stream_stats(9).expect("reset slot 9");
        let entry6 = ForwardEntry::new(
            relay6(30006),
            addr(CALLEE6),
            addr(CALLER6),
            FLAG_RTP,
            8000,
            10,
        )
        .with_rewrite(rewrite);
        programs
            .maps
            .install(ForwardKey::new(relay6(30004)), entry6)
            .expect("install the rewriting IPv6 entry");

        // seq 0x0020 + 0xFFF0 = 0x0010; ts 0x140 + 0xFFFFFF00 = 0x40.
        let received = rtp_of(0x1234_5678, 0x0020, 0x140, 172);
        let sent = rtp_of(0xCAFE_F00D, 0x0010, 0x40, 172);
        assert_eq!(
            &sent[..12],
            &[0x80, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x40, 0xCA, 0xFE, 0xF0, 0x0D],
            "the header the peer must receive"
        );
        let zero = V4 {
            no_udp_checksum: true,
            ..PLAIN
        };
        for (how, name) in [
            (PLAIN, "with a UDP checksum"),
            (zero, "with UDP checksum 0"),
        ] {
            let packet = ipv4(addr(CALLER), relay(30000), &received, how);
            let want = with_macs(ipv4(relay(30002), addr(CALLEE), &sent, how));
            let (verdict, out) = programs.xdp(&packet);
            assert_eq!(verdict, XDP_REDIRECT, "XDP {name}");
            check_ipv4(&out);
            assert_eq!(out, want, "XDP rewrites exactly, {name}");
            let (verdict, out) = programs.tc(&packet);
            assert_eq!(verdict, TC_ACT_REDIRECT, "TC {name}");
            check_ipv4(&out);
            assert_eq!(out, want, "TC rewrites exactly, {name}");
        }
        // IPv6, over payload lengths that give different checksum sums.
        for len in 12..40usize {
            let received = rtp_of(0x1234_5678, 0x0020, 0x140, len);
            let sent = rtp_of(0xCAFE_F00D, 0x0010, 0x40, len);
            let packet = ipv6(addr(CALLER6), relay6(30004), &received);
            let want = with_macs(ipv6(relay6(30006), addr(CALLEE6), &sent));
            let (verdict, out) = programs.xdp(&packet);
            assert_eq!(verdict, XDP_REDIRECT, "XDP IPv6 length {len}");
            check_ipv6(&out);
            assert_eq!(out, want, "XDP IPv6 rewrites exactly, length {len}");
            let (verdict, out) = programs.tc(&packet);
            assert_eq!(verdict, TC_ACT_REDIRECT, "TC IPv6 length {len}");
            check_ipv6(&out);
            assert_eq!(out, want, "TC IPv6 rewrites exactly, length {len}");
        }

        // Another source SSRC: the offsets are not its own, userspace
        // re-anchors. Passed unchanged by both programs.
        let other = ipv4(
            addr(CALLER),
            relay(30000),
            &rtp_of(0x0BAD_0BAD, 7, 7, 172),
            PLAIN,
        );
        assert_eq!(programs.xdp(&other), (XDP_PASS, other.clone()));
        assert_eq!(programs.tc(&other), (TC_ACT_OK, other.clone()));

        programs.assert_counters(&[
            (Counter::Redirected, 4 + 2 * 28),
            (Counter::RewriteSsrcMismatch, 2),
        ]);
        let stats = programs.maps.stream_stats(9).expect("slot 9");
        assert_eq!(
            (
                stats.packets,
                stats.base_seq,
                stats.sent_ssrc,
                stats.sent_sequence,
                stats.sent_timestamp
            ),
            (4, 0x20, 0xCAFE_F00D, 0x10, 0x40),
            "loss counts the received numbering, the last sent header is the rewritten one"
        );
    });
}

#[test]
fn telephone_events_of_a_pass_up_entry_go_to_userspace_and_count_in_the_sequence() {
    require_kernel_path!();
    let ns = Namespace::new("p");
    ns.run(|| {
        let mut programs = Programs::load();
        for (slot, program) in [(11u32, "xdp"), (12, "tc")] {
            programs
                .maps
                .install(
                    ForwardKey::new(relay(30000)),
                    ForwardEntry::new(
                        relay(30002),
                        addr(CALLEE),
                        addr(CALLER),
                        FLAG_RTP,
                        8000,
                        slot,
                    )
                    .with_pass_payload_type(101),
                )
                .expect("install the pass-up entry");
            programs.maps.reset_stream_stats(slot).expect("reset");
            let run = |packet: &[u8]| match program {
                "xdp" => programs.xdp(packet),
                _ => programs.tc(packet),
            };
            let voice = |seq: u16| ipv4(addr(CALLER), relay(30000), &rtp(seq, 172), PLAIN);
            let (verdict, _) = run(&voice(1));
            assert_ne!(verdict, XDP_PASS, "{program}: voice is forwarded");
            let mut event = rtp(2, 16);
            event[1] = 0x80 | 101;
            let event = ipv4(addr(CALLER), relay(30000), &event, PLAIN);
            let passed = if program == "xdp" {
                XDP_PASS
            } else {
                TC_ACT_OK
            };
            assert_eq!(
                run(&event),
                (passed, event.clone()),
                "{program}: the telephone-event (marker set) is passed up unchanged"
            );
            let (verdict, _) = run(&voice(3));
            assert_ne!(verdict, passed, "{program}: voice after it is forwarded");
            let stats = programs.maps.stream_stats(slot).expect("slot");
            assert_eq!(
                (
                    stats.packets,
                    stats.received,
                    stats.expected(),
                    stats.lost()
                ),
                (2, 3, 3, 0),
                "{program}: two forwarded, three in sequence, none lost"
            );
        }
        programs.assert_counters(&[(Counter::Redirected, 4), (Counter::PassedPayloadType, 2)]);
    });
}

/// A compound RTCP packet (SR then SDES) as an rtcp-mux peer sends it on
/// its RTP port.
fn muxed_rtcp() -> Vec<u8> {
    let mut p = vec![0x80, 200, 0, 6];
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    p.extend_from_slice(&[0u8; 20]);
    p.extend_from_slice(&[0x81, 202, 0, 2]);
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    p.extend_from_slice(&[1, 1, b'a', 0]);
    p
}

#[test]
fn rtcp_on_an_rtp_entry_goes_to_userspace_outside_the_rtp_figures() {
    require_kernel_path!();
    let ns = Namespace::new("m");
    ns.run(|| {
        let mut programs = Programs::load();
        install_v4(&mut programs, CALLEE, FLAG_RTP, 13);
        programs.maps.reset_stream_stats(13).expect("reset");
        let voice = |seq: u16| ipv4(addr(CALLER), relay(30000), &rtp(seq, 172), PLAIN);
        let rtcp = ipv4(addr(CALLER), relay(30000), &muxed_rtcp(), PLAIN);
        assert_eq!(programs.xdp(&voice(1)).0, XDP_REDIRECT);
        assert_eq!(
            programs.xdp(&rtcp),
            (XDP_PASS, rtcp.clone()),
            "XDP passes the muxed SR up unchanged"
        );
        assert_eq!(
            programs.tc(&rtcp),
            (TC_ACT_OK, rtcp.clone()),
            "TC passes the muxed SR up unchanged"
        );
        // Every RTCP packet type of RFC 3550 and the feedback ones sit in
        // the reserved payload types 64–95 with the marker bit.
        for packet_type in [192u8, 193, 200, 201, 202, 203, 204, 205, 206, 207] {
            let mut p = muxed_rtcp();
            p[1] = packet_type;
            let p = ipv4(addr(CALLER), relay(30000), &p, PLAIN);
            assert_eq!(programs.xdp(&p).0, XDP_PASS, "RTCP type {packet_type}");
        }
        assert_eq!(programs.xdp(&voice(2)).0, XDP_REDIRECT);
        programs.assert_counters(&[(Counter::Redirected, 2), (Counter::MuxedRtcp, 12)]);
        let stats = programs.maps.stream_stats(13).expect("slot 13");
        assert_eq!(
            (stats.packets, stats.received, stats.lost()),
            (2, 2, 0),
            "only the two RTP packets count"
        );
    });
}

/// Records captured from the programs' log.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<(log::Level, String)>>>);

impl log::Log for Captured {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        self.0
            .lock()
            .expect("capture lock")
            .push((record.level(), record.args().to_string()));
    }

    fn flush(&self) {}
}

impl Captured {
    fn take(&self) -> Vec<(log::Level, String)> {
        std::mem::take(&mut *self.0.lock().expect("capture lock"))
    }

    /// The records after the reader had time to drain the ring buffer.
    fn settle(&self) -> Vec<(log::Level, String)> {
        std::thread::sleep(Duration::from_millis(400));
        self.take()
    }
}

#[test]
fn programs_log_unusual_paths_at_debug_level_only_when_asked_and_rate_limited() {
    require_kernel_path!();
    let ns = Namespace::new("l");
    ns.run(|| {
        let packet = ipv4(addr(CALLER), relay(30000), &rtp(1, 172), PLAIN);

        // Debug on for the programs' target: AYA_LOG_LEVEL is debug.
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("switchboard_rtpmanager::fastpath::kernel=debug")
            .with_writer(std::io::sink)
            .finish();
        let (mut programs, captured, reader) =
            tracing::subscriber::with_default(subscriber, || {
                assert_eq!(
                    fastpath::kernel_log::program_level(),
                    aya_log::Level::Debug as u8
                );
                let mut programs = Programs::load();
                let captured = Captured::default();
                let reader =
                    fastpath::kernel_log::LogReader::start(&mut programs.ebpf, captured.clone())
                        .expect("the log reader starts");
                (programs, captured, reader)
            });
        install_v4(&mut programs, UNRESOLVED, FLAG_RTP, 5);
        assert_eq!(programs.xdp(&packet).0, XDP_PASS, "no neighbour: passed");
        assert_eq!(programs.xdp(&packet).0, XDP_PASS);
        let records = captured.settle();
        assert_eq!(
            records,
            vec![(
                log::Level::Debug,
                "no next hop towards port 40000 (ingress ifindex 1): fib_no_neigh".to_owned()
            )],
            "one debug record for two failures within 100 ms"
        );
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(programs.xdp(&packet).0, XDP_PASS);
        assert_eq!(captured.settle().len(), 1, "again after the interval");
        install_v4(&mut programs, CALLEE, FLAG_RTP, 5);
        assert_eq!(programs.xdp(&packet).0, XDP_REDIRECT);
        assert_eq!(captured.settle(), vec![], "a forwarded packet logs nothing");
        drop(reader);
        drop(programs);

        // No subscriber showing debug: the programs are loaded silent.
        assert_eq!(fastpath::kernel_log::program_level(), 0);
        let mut programs = Programs::load();
        let captured = Captured::default();
        let _reader = fastpath::kernel_log::LogReader::start(&mut programs.ebpf, captured.clone())
            .expect("the log reader starts");
        install_v4(&mut programs, UNRESOLVED, FLAG_RTP, 5);
        assert_eq!(programs.xdp(&packet).0, XDP_PASS);
        assert_eq!(captured.settle(), vec![], "level off: nothing written");
    });
}

/// The programs' forwarding array, opened by id from the XDP program (the
/// loader's handle is inside `KernelMaps`): to write an element as a
/// writer caught mid-change leaves it.
fn forward_array(
    programs: &Programs,
) -> aya::maps::Array<aya::maps::MapData, rtpmanager_common::PortEntry> {
    let info = programs
        .ebpf
        .program(XDP_PROGRAM)
        .expect("the XDP program")
        .info()
        .expect("program info");
    let id = info
        .map_ids()
        .expect("map ids")
        .expect("the program uses maps")
        .into_iter()
        .find(|id| {
            aya::maps::MapInfo::from_id(*id)
                .is_ok_and(|m| m.name_as_str() == Some(rtpmanager_common::FORWARD_MAP))
        })
        .expect("SB_FORWARD among the program's maps");
    let data = aya::maps::MapData::from_id(id).expect("open SB_FORWARD");
    aya::maps::Array::try_from(aya::maps::Map::Array(data)).expect("an array of PortEntry")
}

#[test]
fn a_port_entry_being_changed_passes_packets_up_unchanged() {
    require_kernel_path!();
    let ns = Namespace::new("q");
    ns.run(|| {
        let mut programs = Programs::load();
        install_v4(&mut programs, CALLEE, FLAG_RTP, 6);
        let packet = ipv4(addr(CALLER), relay(30000), &rtp(1, 172), PLAIN);
        assert_eq!(programs.xdp(&packet).0, XDP_REDIRECT);

        let mut forward = forward_array(&programs);
        let element = forward.get(&0, 0).expect("port 30000 is element 0");
        assert_eq!(
            (element.seq, element.in_use, element.local_addr),
            (2, 1, ForwardKey::new(relay(30000)).addr),
            "one install: odd then even again, for the relay's address"
        );
        // As a writer leaves it between its first and last write.
        let changing = rtpmanager_common::PortEntry {
            seq: element.seq + 1,
            ..element
        };
        forward.set(0, changing, 0).expect("write the element");
        assert_eq!(
            programs.xdp(&packet),
            (XDP_PASS, packet.clone()),
            "XDP passes it up unchanged while the entry changes"
        );
        assert_eq!(programs.tc(&packet), (TC_ACT_OK, packet.clone()), "TC too");

        // Another address on the port is not this entry's.
        let elsewhere = ipv4(addr(CALLER), addr("10.203.0.7:30000"), &rtp(2, 172), PLAIN);
        install_v4(&mut programs, CALLEE, FLAG_RTP, 6);
        assert_eq!(
            forward.get(&0, 0).expect("element").seq,
            4,
            "the next install completes from the odd count"
        );
        assert_eq!(
            programs.xdp(&elsewhere).0,
            XDP_PASS,
            "no entry for 10.203.0.7"
        );
        assert_eq!(programs.xdp(&packet).0, XDP_REDIRECT, "forwarded again");

        assert!(programs
            .maps
            .remove(&ForwardKey::new(relay(30000)))
            .expect("remove"));
        assert_eq!(
            (
                forward.get(&0, 0).expect("element").seq,
                forward.get(&0, 0).expect("element").in_use
            ),
            (6, 0),
            "removed under the count too"
        );
        assert_eq!(programs.xdp(&packet).0, XDP_PASS);
        programs.assert_counters(&[
            (Counter::NoEntry, 2),
            (Counter::Redirected, 2),
            (Counter::EntryChanging, 2),
        ]);
    });
}

/// For an IPv4/UDP frame: (IPv4 header checksum valid, UDP checksum valid
/// or absent), without asserting either.
fn ipv4_checksums_ok(p: &[u8]) -> (bool, bool) {
    let ip = &p[14..34];
    let (src, dst) = (
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
    );
    let udp = &p[34..];
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]])).min(udp.len());
    let udp = &udp[..udp_len];
    let check = u16::from_be_bytes([udp[6], udp[7]]);
    let udp_ok = check == 0 || {
        let mut sum_over = pseudo_header(
            SocketAddr::from((src, u16::from_be_bytes([udp[0], udp[1]]))),
            SocketAddr::from((dst, u16::from_be_bytes([udp[2], udp[3]]))),
            udp.len(),
        );
        sum_over.extend_from_slice(udp);
        ones_sum(&sum_over) == 0xFFFF
    };
    (ones_sum(ip) == 0xFFFF, udp_ok)
}

/// xorshift64*: a fixed-seed generator, so a failure replays exactly.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn garbage_and_mutated_frames_are_passed_up_unchanged_by_both_programs() {
    require_kernel_path!();
    let ns = Namespace::new("z");
    ns.run(|| {
        let mut programs = Programs::load();
        // A strict entry on 30000: mutations that keep the destination but
        // change the source are dropped by design, and counted as such.
        install_v4(&mut programs, CALLEE, FLAG_RTP, 7);
        let valid = ipv4(addr(CALLER), relay(30000), &rtp(1, 172), PLAIN);
        let valid6 = ipv6(addr(CALLER6), relay6(30004), &rtp(1, 172));
        // A bad IPv4 header checksum: the stack would drop it, so the
        // programs must not forward it.
        let mut bad_header = valid.clone();
        bad_header[24] ^= 0x5A;
        assert_eq!(programs.xdp(&bad_header), (XDP_PASS, bad_header.clone()));
        assert_eq!(programs.tc(&bad_header), (TC_ACT_OK, bad_header.clone()));
        let mut random = Random(0x5EED_CAFE_F00D_1234);
        let mut forwarded = 0u64;
        let mut refused = 0u64;
        for round in 0..4000 {
            // Half: a valid frame with 1–4 random bytes changed and a random
            // length cut; half: random bytes behind an IPv4/IPv6 ethertype.
            let mut frame = if round % 2 == 0 {
                let mut f = if round % 4 == 0 {
                    valid.clone()
                } else {
                    valid6.clone()
                };
                for _ in 0..1 + random.below(4) {
                    let at = random.below(f.len());
                    f[at] = random.next() as u8;
                }
                let keep = f.len() - random.below(f.len() / 2);
                f.truncate(keep.max(1));
                f
            } else {
                let len = 14 + random.below(200);
                let mut f: Vec<u8> = (0..len).map(|_| random.next() as u8).collect();
                let ethertype: [u8; 2] = if round % 4 == 1 {
                    [0x08, 0x00]
                } else {
                    [0x86, 0xDD]
                };
                f[12..14].copy_from_slice(&ethertype);
                f
            };
            if frame.len() < 14 {
                frame.resize(14, 0);
            }
            for (program, passed, sent) in [
                ("xdp", XDP_PASS, [XDP_TX, XDP_REDIRECT]),
                ("tc", TC_ACT_OK, [TC_ACT_REDIRECT, TC_ACT_REDIRECT]),
            ] {
                let (verdict, out) = if program == "xdp" {
                    programs.xdp(&frame)
                } else {
                    // The kernel's skb test harness refuses a frame too
                    // short for the IP header its ethertype announces (a
                    // real TC hook would run on it; parse counts it as
                    // truncated, see the unit tests above).
                    match try_test_run(programs.fd(TC_PROGRAM), &frame, None) {
                        Ok(result) => result,
                        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                            let ip_header = if frame[12..14] == [0x08, 0x00] {
                                20
                            } else {
                                40
                            };
                            assert!(
                                frame.len() < 14 + ip_header,
                                "round {round}: the harness refused a {}-byte frame",
                                frame.len()
                            );
                            refused += 1;
                            continue;
                        }
                        Err(e) => panic!("round {round} tc: {e}"),
                    }
                };
                if verdict == passed {
                    assert_eq!(
                        out, frame,
                        "round {round} {program}: a passed frame is unchanged"
                    );
                } else if sent.contains(&verdict) {
                    // Only the entry's packet (the mutations left its
                    // headers alone) may be forwarded: with the entry's
                    // addresses, and checksums exactly as valid as they
                    // came in (a corrupt payload stays detectably corrupt).
                    assert_eq!(
                        &out[26..38],
                        &[10, 203, 0, 1, 10, 203, 0, 2, 0x75, 0x32, 0x9c, 0x40],
                        "round {round} {program}: forwarded as the entry says"
                    );
                    assert_eq!(
                        ipv4_checksums_ok(&out),
                        ipv4_checksums_ok(&frame),
                        "round {round} {program}: checksums as valid as received"
                    );
                    forwarded += 1;
                } else {
                    let drop = if program == "xdp" {
                        XDP_DROP
                    } else {
                        TC_ACT_SHOT
                    };
                    assert_eq!(verdict, drop, "round {round} {program}: verdict {verdict}");
                }
            }
        }
        let counters = programs.counters();
        let total: u64 = counters.iter().map(|(_, n)| n).sum();
        assert_eq!(
            total,
            2 + 2 * 4000 - refused,
            "one verdict counted per run: {counters:?}"
        );
        assert!(
            refused < 400,
            "most frames reach both programs ({refused} refused)"
        );
        let count = |c: Counter| {
            counters
                .iter()
                .find(|(k, _)| *k == c)
                .map_or(0, |(_, n)| *n)
        };
        assert!(
            count(Counter::Ipv4HeaderChecksum) >= 2,
            "bad IPv4 headers counted: {counters:?}"
        );
        assert_eq!(
            count(Counter::Forwarded) + count(Counter::Redirected),
            forwarded,
            "forwards counted as such"
        );
        assert_eq!(count(Counter::RewriteFailed), 0, "no helper failed");
    });
}
