//! Per-packet cost of the kernel fast-path programs, without a NIC.
//!
//! `cargo xtask bench program` runs this (as root). It loads the XDP and TC
//! programs unattached in a network namespace it creates (the route lookup
//! runs in the caller's namespace), and times each case with
//! `BPF_PROG_TEST_RUN` and `repeat`: the kernel runs the program that many
//! times on one buffer and reports the mean run time.
//!
//! The buffer is rewritten in place by the first run, so the forwarding
//! cases use an entry whose rewrite is a fixed point: a packet from
//! `PEER:30000` to `NEIGH:30000` leaves as `PEER:30000` → `NEIGH:30000`. Every
//! run does the whole job — parse, entry lookup, source check, route and
//! neighbour lookup (or its cache), checksum updates, writes, stream
//! statistics — and finds the same entry again. The rewriting case changes
//! the RTP sequence number and timestamp on every run, as a playback
//! anchor does.
//!
//! This is the program's own cost with warm caches; `cargo xtask bench
//! media` measures it under load (BPF_ENABLE_STATS run time) with the
//! working set of thousands of calls.
#![allow(clippy::print_stdout)]

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};

use anyhow::{bail, Context};
use aya::Ebpf;
use rtpmanager_common::{
    ForwardEntry, ForwardKey, RtpRewrite, FLAG_RTCP, FLAG_RTP, TC_PROGRAM, XDP_PROGRAM,
};
use switchboard_rtpmanager::config::FastPathRequest;
use switchboard_rtpmanager::fastpath::{self, KernelMaps, Settings};
use switchboard_testkit::netns::{lookup_namespace, Netns};

// The tests' BPF_PROG_TEST_RUN.
#[path = "../tests/common/kernel.rs"]
mod kernel;

const NEIGH_MAC: &str = "02:00:00:00:04:02";
const LOCAL4: &str = "10.204.0.1/24";
const LOCAL6: &str = "fd00:204::1/64";
const NEIGH4: &str = "10.204.0.2:30000";
const NEIGH6: &str = "[fd00:204::2]:30010";
const PEER4: &str = "10.204.0.9:30000";
const PEER6: &str = "[fd00:204::9]:30010";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a literal socket address")
}

/// A namespace with `v0` (peer `v1`), addresses, permanent neighbours and
/// forwarding on; deleted by name on drop.
fn namespace() -> Netns {
    let cidr = |s: &str| {
        let (ip, len) = s.split_once('/').expect("a CIDR literal");
        (
            ip.parse().expect("an address literal"),
            len.parse().expect("a prefix length"),
        )
    };
    lookup_namespace(
        &format!("sbprog{}", std::process::id()),
        None,
        &[cidr(LOCAL4), cidr(LOCAL6)],
        &[addr(NEIGH4).ip(), addr(NEIGH6).ip()],
        NEIGH_MAC,
    )
}

/// One's complement sum of `bytes` as big-endian words, folded.
fn ones_sum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    sum as u16
}

/// An Ethernet frame carrying UDP `payload` from `src` to `dst`, with valid
/// IP and UDP checksums.
fn frame(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let udp_len = u16::try_from(8 + payload.len()).expect("UDP length");
    let mut udp = src.port().to_be_bytes().to_vec();
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    let mut p = vec![0x02, 0, 0, 0, 0x04, 0xbb, 0x02, 0, 0, 0, 0x04, 0xaa];
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, 17]);
            pseudo.extend_from_slice(&udp_len.to_be_bytes());
            let total = 20 + udp_len;
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&total.to_be_bytes());
            ip.extend_from_slice(&[0x12, 0x34, 0, 0, 64, 17, 0, 0]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let check = !ones_sum(&ip);
            ip[10..12].copy_from_slice(&check.to_be_bytes());
            p.extend_from_slice(&0x0800u16.to_be_bytes());
            p.extend_from_slice(&ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&u32::from(udp_len).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 17]);
            p.extend_from_slice(&0x86DDu16.to_be_bytes());
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&udp_len.to_be_bytes());
            p.extend_from_slice(&[17, 64]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed families"),
    }
    pseudo.extend_from_slice(&udp);
    let check = match !ones_sum(&pseudo) {
        0 => 0xFFFF,
        c => c,
    };
    udp[6..8].copy_from_slice(&check.to_be_bytes());
    p.extend_from_slice(&udp);
    p
}

/// A 172-byte PCMU RTP packet (12-byte header, 160 bytes of payload).
fn rtp() -> Vec<u8> {
    let mut p = vec![0x80, 0x00, 0x00, 0x07, 0, 0, 0x04, 0x60];
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    p.extend(std::iter::repeat_n(0xFFu8, 160));
    p
}

/// Runs the program `repeat` times on `packet`: (verdict, mean ns per run).
fn test_run(fd: i32, packet: &[u8], ctx: Option<&[u8]>, repeat: u32) -> anyhow::Result<(u32, u32)> {
    let run = kernel::test_run(fd, packet, ctx, repeat).context("BPF_PROG_TEST_RUN")?;
    Ok((run.verdict, run.mean_ns))
}

fn ifindex(name: &str) -> anyhow::Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: c is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => bail!("no interface {name}"),
        index => Ok(index),
    }
}

struct Case {
    name: &'static str,
    program: &'static str,
    packet: Vec<u8>,
    /// The verdict the case must produce, or the timing means nothing.
    verdict: u32,
}

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;

fn main() -> anyhow::Result<()> {
    let mut repeat: u32 = 1_000_000;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--repeat" => repeat = it.next().context("--repeat needs a value")?.parse()?,
            "--bench" => {}
            other => bail!("unknown argument `{other}` (use --repeat)"),
        }
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("the program benchmark builds a network namespace: run it as root");
    }
    if !fastpath::object_embedded() {
        bail!("this build has no eBPF object (cargo xtask build-ebpf)");
    }
    let ns = namespace();
    let result = ns.run(move || run(repeat));
    drop(ns);
    result
}

fn run(repeat: u32) -> anyhow::Result<()> {
    let (ebpf, mut maps): (Ebpf, KernelMaps) = fastpath::load_unattached(&Settings {
        request: FastPathRequest::Auto,
        interface: String::new(),
        port_min: 30000,
        port_max: 30100,
        next_hop_cache: fastpath::DEFAULT_NEXT_HOP_CACHE,
    })
    .context("load the programs")?;
    let (neigh4, peer4, neigh6, peer6) = (addr(NEIGH4), addr(PEER4), addr(NEIGH6), addr(PEER6));
    // Fixed points: the rewrite maps each packet onto itself (see the top).
    maps.install(
        ForwardKey::new(neigh4),
        ForwardEntry::new(peer4, neigh4, peer4, FLAG_RTP, 8000, 1),
    )?;
    maps.install(
        ForwardKey::new(neigh6),
        ForwardEntry::new(peer6, neigh6, peer6, FLAG_RTP, 8000, 2),
    )?;
    let rewrite = RtpRewrite {
        source_ssrc: 0x1234_5678,
        ssrc: 0x1234_5678,
        sequence_offset: 1,
        timestamp_offset: 160,
    };
    let neigh4_rewrite = SocketAddr::new(neigh4.ip(), 30002);
    let peer4_rewrite = SocketAddr::new(peer4.ip(), 30002);
    maps.install(
        ForwardKey::new(neigh4_rewrite),
        ForwardEntry::new(
            peer4_rewrite,
            neigh4_rewrite,
            peer4_rewrite,
            FLAG_RTP,
            8000,
            3,
        )
        .with_rewrite(rewrite),
    )?;
    let neigh4_rtcp = SocketAddr::new(neigh4.ip(), 30001);
    let peer4_rtcp = SocketAddr::new(peer4.ip(), 30001);
    maps.install(
        ForwardKey::new(neigh4_rtcp),
        ForwardEntry::new(peer4_rtcp, neigh4_rtcp, peer4_rtcp, FLAG_RTCP, 8000, 4),
    )?;
    for slot in 1..=4 {
        maps.reset_stream_stats(slot)?;
    }
    let rtcp = [0x81u8, 201, 0, 7, 0x12, 0x34, 0x56, 0x78]
        .into_iter()
        .chain(std::iter::repeat_n(0, 24))
        .collect::<Vec<_>>();
    let other = SocketAddr::new(neigh4.ip(), 5060);
    let unknown = SocketAddr::new(neigh4.ip(), 30050);
    let mut cases = Vec::new();
    for (program, forwarded, passed) in [
        (XDP_PROGRAM, XDP_TX, XDP_PASS),
        (TC_PROGRAM, TC_ACT_REDIRECT, TC_ACT_OK),
    ] {
        cases.extend([
            Case {
                name: "forward IPv4 RTP",
                program,
                packet: frame(peer4, neigh4, &rtp()),
                verdict: forwarded,
            },
            Case {
                name: "forward IPv6 RTP",
                program,
                packet: frame(peer6, neigh6, &rtp()),
                verdict: forwarded,
            },
            Case {
                name: "forward IPv4 RTP, header rewrite",
                program,
                packet: frame(peer4_rewrite, neigh4_rewrite, &rtp()),
                verdict: forwarded,
            },
            Case {
                name: "forward IPv4 RTCP",
                program,
                packet: frame(peer4_rtcp, neigh4_rtcp, &rtcp),
                verdict: forwarded,
            },
            Case {
                name: "pass: port outside the media range",
                program,
                packet: frame(peer4, other, &rtp()),
                verdict: passed,
            },
            Case {
                name: "pass: media port without an entry",
                program,
                packet: frame(peer4, unknown, &rtp()),
                verdict: passed,
            },
        ]);
    }
    // As if received on v0: the route leaves where the packet came in.
    let v0 = ifindex("v0")?;
    let md: [u32; 6] = [0, 0, 0, v0, 0, 0];
    println!("program run time, mean of {repeat} runs per case (BPF_PROG_TEST_RUN, warm caches)");
    println!(
        "{:<8} {:<40} {:>8} {:>8}",
        "program", "case", "ns/pkt", "verdict"
    );
    for case in &cases {
        let prog = ebpf
            .program(case.program)
            .with_context(|| format!("program {}", case.program))?;
        let fd = prog.fd()?.as_fd().as_raw_fd();
        let ctx: Vec<u8> = if case.program == XDP_PROGRAM {
            let mut md = md;
            md[1] = u32::try_from(case.packet.len())?;
            md.iter().flat_map(|w| w.to_ne_bytes()).collect()
        } else {
            Vec::new()
        };
        let ctx = (!ctx.is_empty()).then_some(ctx.as_slice());
        // The best of five: the figure least disturbed by the rest of the
        // machine.
        let mut best = u32::MAX;
        let mut verdict = 0;
        for _ in 0..5 {
            let (v, ns) = test_run(fd, &case.packet, ctx, repeat)?;
            verdict = v;
            best = best.min(ns);
        }
        if verdict != case.verdict {
            bail!(
                "{} {}: verdict {verdict}, expected {} (counters: {:?})",
                case.program,
                case.name,
                case.verdict,
                maps.counters()?
                    .into_iter()
                    .filter(|(_, n)| *n != 0)
                    .collect::<Vec<_>>()
            );
        }
        let short = if case.program == XDP_PROGRAM {
            "xdp"
        } else {
            "tc"
        };
        println!("{short:<8} {:<40} {best:>8} {verdict:>8}", case.name);
    }
    Ok(())
}
