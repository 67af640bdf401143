//! Kernel forwarding end to end, IPv4 and IPv6: caller ⇄ relay ⇄ callee in network
//! namespaces, entries installed through `FastPath::install`, real UDP
//! sockets at both ends, for XDP native, XDP generic and TC.
//!
//! The three hosts hang off a bridge in a fourth namespace, so the relay has
//! one media interface (`r0`) and forwards by hairpin (XDP_TX / redirect to
//! the same interface), as on a one-NIC media server. Senders put complete
//! UDP checksums on the wire (`tx off`), and in native mode the bridge port
//! facing the relay runs a pass-all XDP program so XDP transmits on the veth
//! are delivered (see EBPF-NOTES). Nothing listens on the relay's ports: a packet the program
//! passed up would be lost, not relayed, so every packet that arrives was
//! forwarded by the program.
//!
//! They need root; without it they skip loudly. Without the embedded object
//! they skip too, except under CI, where that is a failure.

use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rtpmanager_common::{Counter, ForwardEntry, ForwardKey, FLAG_RTP};
use switchboard_rtpmanager::config::FastPathRequest;
use switchboard_rtpmanager::fastpath::{self, FastPath, Mode, Settings};

#[macro_use]
#[path = "common/kernel.rs"]
mod kernel;
#[path = "common/bed.rs"]
#[allow(dead_code)]
mod bed;

use bed::{xdp_peer_pass, Bed, BedPlan, Family, Sides};
use switchboard_testkit::netns::{
    bind_udp, in_ns, sh, spawn_in_ns, udp_counter, udp_in_csum_errors,
};

/// The one-interface bed of network 204 with forwarding on in the relay
/// (`bpf_fib_lookup` answers FWD_DISABLED without it, and no manager runs
/// here to turn it on).
fn plan(family: Family) -> BedPlan {
    BedPlan {
        family,
        sides: Sides::One,
        net: 204,
        forwarding: true,
    }
}

/// Relay port of the caller's leg, and of the callee's leg.
const RELAY_CALLER_PORT: u16 = 30000;
const RELAY_CALLEE_PORT: u16 = 30002;
const PACKETS: u16 = 50;

fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&0x0bad_cafeu32.to_be_bytes());
    p.extend((0..160u32).map(|i| (i as u8) ^ (seq as u8)));
    p
}

/// Sequence numbers sent: 0..PACKETS+5, skipping every 11th from 5 on (5 lost).
fn sent_sequence() -> Vec<u16> {
    (0..PACKETS + 5).filter(|s| s % 11 != 5).collect()
}

/// Sends RTP from `from` (in `from_ns`) to `to`; returns what `receiver`
/// (in `receiver_ns`) got, with the sources, and the receiver's
/// InCsumErrors before and after.
fn exchange(
    from_ns: &str,
    from: SocketAddr,
    to: SocketAddr,
    receiver_ns: &str,
    receiver: SocketAddr,
) -> (Vec<(SocketAddr, Vec<u8>)>, u64, u64) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let expected = sent_sequence().len();
    let handle = spawn_in_ns(receiver_ns, move || {
        let socket = bind_udp(receiver);
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let before = udp_in_csum_errors();
        ready_tx.send(()).expect("signal ready");
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut buf = [0u8; 2048];
        while got.len() < expected && Instant::now() < deadline {
            if let Ok((n, source)) = socket.recv_from(&mut buf) {
                got.push((source, buf[..n].to_vec()));
            }
        }
        (got, before, udp_in_csum_errors())
    });
    ready_rx.recv().expect("receiver ready");
    in_ns(from_ns, move || {
        let socket = bind_udp(from);
        for seq in sent_sequence() {
            socket.send_to(&rtp(seq), to).expect("send");
        }
    });
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// The non-zero counters, except those of the hosts' own traffic when links
/// come up (IGMP and MLD reports), which is not the test's to count.
fn counters(fast_path: &FastPath) -> Vec<(Counter, u64)> {
    fast_path
        .counters()
        .expect("counters while attached")
        .into_iter()
        .filter(|(c, n)| {
            *n != 0
                && !matches!(
                    c,
                    Counter::NotIp | Counter::NotUdp | Counter::Ipv6ExtensionHeader
                )
        })
        .collect()
}

#[test]
fn bridged_ipv4_rtp_is_forwarded_in_the_kernel_both_ways_in_every_mode() {
    require_kernel_path!();
    forward_in_every_mode(&plan(Family::V4));
}

#[test]
fn bridged_ipv6_rtp_is_forwarded_in_the_kernel_both_ways_in_every_mode() {
    require_kernel_path!();
    forward_in_every_mode(&plan(Family::V6));
}

fn forward_in_every_mode(plan: &BedPlan) {
    let (caller, callee) = (plan.caller_addr(), plan.callee_addr());
    let relay = |port| plan.relay(port);
    for (tag, request, mode, verdict) in [
        (
            "n",
            FastPathRequest::Xdp,
            Mode::XdpNative,
            Counter::Forwarded,
        ),
        (
            "g",
            FastPathRequest::XdpGeneric,
            Mode::XdpGeneric,
            Counter::Forwarded,
        ),
        ("t", FastPathRequest::Tc, Mode::Tc, Counter::Redirected),
    ] {
        let bed = Bed::new(*plan, "sbf", tag);
        let settings = Settings {
            request,
            interface: "r0".into(),
            port_min: 30000,
            port_max: 30100,
            next_hop_cache: fastpath::DEFAULT_NEXT_HOP_CACHE,
        };
        let fast_path = in_ns(&bed.relay, move || FastPath::start(&settings));
        // Native XDP_TX out of a veth is delivered only when the peer runs
        // an XDP program (GRO on the peer was not enough on kernel 6.18 with
        // the peer in a bridge).
        let _peer_pass = xdp_peer_pass(&bed, mode);
        assert_eq!(fast_path.mode(), mode, "{mode}: {}", fast_path.reason());

        // What the session table would install once both legs latched.
        fast_path
            .install(
                ForwardKey::new(relay(RELAY_CALLER_PORT)),
                ForwardEntry::new(relay(RELAY_CALLEE_PORT), callee, caller, FLAG_RTP, 8000, 1),
            )
            .expect("install caller → callee");
        fast_path
            .install(
                ForwardKey::new(relay(RELAY_CALLEE_PORT)),
                ForwardEntry::new(relay(RELAY_CALLER_PORT), caller, callee, FLAG_RTP, 8000, 2),
            )
            .expect("install callee → caller");
        for slot in [1, 2] {
            fast_path.reset_stream_stats(slot).expect("reset the slot");
        }

        let sent: Vec<Vec<u8>> = sent_sequence().into_iter().map(rtp).collect();
        for (direction, from_ns, from, to, receiver_ns, receiver, source, slot) in [
            (
                "caller → callee",
                &bed.caller,
                caller,
                RELAY_CALLER_PORT,
                &bed.callee,
                callee,
                RELAY_CALLEE_PORT,
                1,
            ),
            (
                "callee → caller",
                &bed.callee,
                callee,
                RELAY_CALLEE_PORT,
                &bed.caller,
                caller,
                RELAY_CALLER_PORT,
                2,
            ),
        ] {
            let (got, csum_before, csum_after) =
                exchange(from_ns, from, relay(to), receiver_ns, receiver);
            assert_eq!(
                got.len(),
                sent.len(),
                "{mode} {direction}: every packet arrived; counters {:?}",
                counters(&fast_path)
            );
            for ((source_seen, payload), want) in got.iter().zip(&sent) {
                assert_eq!(
                    *source_seen,
                    relay(source),
                    "{mode} {direction}: source is the relay's other leg"
                );
                assert_eq!(
                    payload, want,
                    "{mode} {direction}: payload intact and in order"
                );
            }
            assert_eq!(
                csum_after, csum_before,
                "{mode} {direction}: no UDP checksum errors at the receiver"
            );
            let stats = fast_path.stream_stats(slot).expect("stats slot");
            assert_eq!(
                stats.packets,
                sent.len() as u64,
                "{mode} {direction}: packets"
            );
            assert_eq!(
                stats.bytes,
                172 * sent.len() as u64,
                "{mode} {direction}: payload bytes"
            );
            assert_eq!(
                stats.expected(),
                u32::from(PACKETS) + 5,
                "{mode} {direction}: expected"
            );
            assert_eq!(
                stats.lost(),
                5,
                "{mode} {direction}: the skipped sequence numbers are lost"
            );
        }
        assert_eq!(
            counters(&fast_path),
            vec![(verdict, 2 * sent.len() as u64)],
            "{mode}: every packet forwarded by the program, nothing else seen"
        );

        // Taken back out of the kernel: packets go up to the stack again.
        assert!(fast_path
            .remove(&ForwardKey::new(relay(RELAY_CALLER_PORT)))
            .expect("remove"));
        let (got, _, _) = exchange(
            &bed.caller,
            caller,
            relay(RELAY_CALLER_PORT),
            &bed.callee,
            callee,
        );
        assert_eq!(
            got.len(),
            0,
            "{mode}: nothing listens in the relay, so nothing is relayed"
        );
        let passed = counters(&fast_path)
            .into_iter()
            .find(|(c, _)| *c == Counter::NoEntry)
            .map(|(_, n)| n);
        assert_eq!(
            passed,
            Some(sent.len() as u64),
            "{mode}: passed as having no entry"
        );
    }
}

#[test]
fn tc_hands_packets_to_an_unresolved_neighbour_to_redirect_neigh_ipv4() {
    require_kernel_path!();
    tc_resolves_the_neighbour(&plan(Family::V4));
}

#[test]
fn tc_hands_packets_to_an_unresolved_neighbour_to_redirect_neigh_ipv6() {
    require_kernel_path!();
    tc_resolves_the_neighbour(&plan(Family::V6));
}

/// TC mode without a neighbour entry for the callee: the first packets are
/// rewritten and handed to bpf_redirect_neigh, which resolves the callee
/// (ARP or ND) and sends them; nothing is passed up (nothing listens in the
/// relay, so a passed packet would be lost) and every packet arrives.
fn tc_resolves_the_neighbour(plan: &BedPlan) {
    let (caller, callee) = (plan.caller_addr(), plan.callee_addr());
    let relay = |port| plan.relay(port);
    let bed = Bed::new(*plan, "sbf", "u");
    let callee_ip = callee.ip().to_string();
    sh(&[
        "ip", "-n", &bed.relay, "neigh", "del", &callee_ip, "dev", "r0",
    ]);
    let settings = Settings {
        request: FastPathRequest::Tc,
        interface: "r0".into(),
        port_min: 30000,
        port_max: 30100,
        next_hop_cache: fastpath::DEFAULT_NEXT_HOP_CACHE,
    };
    let fast_path = in_ns(&bed.relay, move || FastPath::start(&settings));
    assert_eq!(fast_path.mode(), Mode::Tc, "{}", fast_path.reason());
    fast_path
        .install(
            ForwardKey::new(relay(RELAY_CALLER_PORT)),
            ForwardEntry::new(relay(RELAY_CALLEE_PORT), callee, caller, FLAG_RTP, 8000, 1),
        )
        .expect("install caller → callee");
    fast_path.reset_stream_stats(1).expect("reset the slot");
    let sent = sent_sequence().len() as u64;
    let (got, csum_before, csum_after) = exchange(
        &bed.caller,
        caller,
        relay(RELAY_CALLER_PORT),
        &bed.callee,
        callee,
    );
    assert_eq!(
        got.len() as u64,
        sent,
        "every packet arrived; counters {:?}",
        counters(&fast_path)
    );
    assert!(
        got.iter()
            .all(|(source, _)| *source == relay(RELAY_CALLEE_PORT)),
        "from the relay's callee-side port"
    );
    assert_eq!(csum_after, csum_before, "no UDP checksum errors");
    let counted = counters(&fast_path);
    let neigh = counted
        .iter()
        .find(|(c, _)| *c == Counter::RedirectedNeigh)
        .map_or(0, |(_, n)| *n);
    let redirected = counted
        .iter()
        .find(|(c, _)| *c == Counter::Redirected)
        .map_or(0, |(_, n)| *n);
    assert!(neigh >= 1, "the first packet met no neighbour: {counted:?}");
    assert_eq!(
        neigh + redirected,
        sent,
        "all forwarded by the program, none passed up: {counted:?}"
    );
    assert_eq!(
        fast_path.stream_stats(1).expect("slot").packets,
        sent,
        "the stream counts them all"
    );
}

#[test]
fn entries_changed_under_traffic_never_forward_a_torn_rewrite() {
    require_kernel_path!();
    for (tag, request, mode) in [
        ("wg", FastPathRequest::XdpGeneric, Mode::XdpGeneric),
        ("wt", FastPathRequest::Tc, Mode::Tc),
    ] {
        entries_changed_under_traffic(tag, request, mode);
    }
}

/// The caller streams to the relay while the entry's destination flips
/// between the callee (port 40000) and the caller itself (port 42000), 400
/// times. A packet rewritten from a mix of both entries would reach one
/// host on the other's port, where no socket listens: `NoPorts` in either
/// namespace would count it. Every packet is either received intact or
/// accounted for by a counter (the relay runs no relay: a passed packet is
/// lost, and counted as `entry_changing`).
fn entries_changed_under_traffic(tag: &str, request: FastPathRequest, mode: Mode) {
    let plan = plan(Family::V4);
    let bed = Bed::new(plan, "sbf", tag);
    let (caller, callee) = (plan.caller_addr(), plan.callee_addr());
    let back_home = SocketAddr::new(caller.ip(), 42000);
    let (relay_caller_side, relay_callee_side) =
        (plan.relay(RELAY_CALLER_PORT), plan.relay(RELAY_CALLEE_PORT));
    let settings = Settings {
        request,
        interface: "r0".into(),
        port_min: 30000,
        port_max: 30100,
        next_hop_cache: fastpath::DEFAULT_NEXT_HOP_CACHE,
    };
    let fast_path = in_ns(&bed.relay, move || FastPath::start(&settings));
    assert_eq!(fast_path.mode(), mode, "{}", fast_path.reason());
    let entry_to =
        |destination| ForwardEntry::new(relay_callee_side, destination, caller, FLAG_RTP, 8000, 1);
    let key = ForwardKey::new(relay_caller_side);
    fast_path.install(key, entry_to(callee)).expect("install");

    let receive = |ns: &str, at: SocketAddr| {
        let (ready_tx, ready_rx) = mpsc::channel();
        let handle = spawn_in_ns(ns, move || {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
                .expect("socket");
            socket.set_recv_buffer_size(8 << 20).expect("SO_RCVBUF");
            socket.bind(&at.into()).expect("bind a receiver");
            let socket: UdpSocket = socket.into();
            socket
                .set_read_timeout(Some(Duration::from_millis(300)))
                .expect("timeout");
            let (no_ports, overflows) = (
                udp_counter("NoPorts").expect("the counter"),
                udp_counter("RcvbufErrors").expect("the counter"),
            );
            ready_tx.send(()).expect("ready");
            let (mut intact, mut damaged) = (0u64, 0u64);
            let mut buf = [0u8; 2048];
            while let Ok((n, source)) = socket.recv_from(&mut buf) {
                let seq = u16::from_be_bytes([buf[2], buf[3]]);
                if source == relay_callee_side && buf[..n] == rtp(seq)[..] {
                    intact += 1;
                } else {
                    damaged += 1;
                }
            }
            (
                intact,
                damaged,
                udp_counter("NoPorts").expect("the counter") - no_ports,
                udp_counter("RcvbufErrors").expect("the counter") - overflows,
            )
        });
        ready_rx.recv().expect("receiver ready");
        handle
    };
    let at_callee = receive(&bed.callee, callee);
    let at_caller = receive(&bed.caller, back_home);
    const SENT: u64 = 20_000;
    let sender = spawn_in_ns(&bed.caller, move || {
        let socket = bind_udp(caller);
        for i in 0..SENT {
            socket
                .send_to(&rtp(i as u16), relay_caller_side)
                .expect("send");
            if i % 50 == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    });
    for flip in 0..400 {
        let destination = if flip % 2 == 0 { back_home } else { callee };
        fast_path
            .install(key, entry_to(destination))
            .expect("replace the entry");
        std::thread::sleep(Duration::from_micros(250));
    }
    sender.join().expect("sender");
    let (callee_intact, callee_damaged, callee_no_ports, callee_overflows) =
        at_callee.join().expect("callee");
    let (caller_intact, caller_damaged, caller_no_ports, caller_overflows) =
        at_caller.join().expect("caller");
    let counted = counters(&fast_path);
    let count = |c: Counter| counted.iter().find(|(k, _)| *k == c).map_or(0, |(_, n)| *n);
    assert_eq!(
        (callee_damaged, caller_damaged, callee_no_ports, caller_no_ports),
        (0, 0, 0, 0),
        "{mode}: no damaged packet, none at a host on the other destination's port; counters {counted:?}"
    );
    assert!(
        callee_intact > 0 && caller_intact > 0,
        "{mode}: both destinations got traffic ({callee_intact}, {caller_intact})"
    );
    let forwarded = count(Counter::Forwarded) + count(Counter::Redirected);
    assert_eq!(
        forwarded,
        callee_intact + caller_intact + callee_overflows + caller_overflows,
        "{mode}: every forward arrived intact (or overflowed a receiver's buffer: {} + {}); counters {counted:?}",
        callee_overflows,
        caller_overflows
    );
    assert_eq!(
        forwarded + count(Counter::EntryChanging) + count(Counter::EntryChanged),
        SENT,
        "{mode}: every packet forwarded, or passed or dropped while its entry changed: {counted:?}"
    );
}
