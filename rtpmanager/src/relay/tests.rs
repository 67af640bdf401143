//! Relay behaviour with real sockets on loopback: two fake endpoints talk
//! through two bridged legs.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::media::rtp::{PayloadType, RtpHeader, RtpTimestamp, SeqNum, Ssrc};

struct Leg {
    slot: Slot,
    shared: Arc<LegShared>,
    rtcp_addr: SocketAddr,
}

fn socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind on loopback");
    s.set_nonblocking(true).expect("nonblocking");
    s
}

fn endpoint() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind endpoint");
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    s
}

fn add_leg(relay: &Relay, slot: Slot, name: &str, params: LegParams) -> Leg {
    let rtp = Arc::new(socket());
    let rtcp = socket();
    let rtcp_addr = rtcp.local_addr().expect("rtcp addr");
    let shared = Arc::new(LegShared::new(
        LegRef {
            call_id: Arc::from("call-1"),
            leg_id: Arc::from(name),
        },
        rtp,
    ));
    relay
        .add_leg(slot, Arc::clone(&shared), Some(rtcp), params)
        .expect("add leg");
    Leg {
        slot,
        shared,
        rtcp_addr,
    }
}

impl Leg {
    fn rtp_addr(&self) -> SocketAddr {
        self.shared
            .rtp_socket()
            .expect("rtp socket")
            .local_addr()
            .expect("rtp addr")
    }
}

fn rtp_packet(seq: u16, pt: u8, payload: &[u8]) -> Vec<u8> {
    let header = RtpHeader {
        marker: false,
        payload_type: PayloadType::new(pt).expect("valid pt"),
        sequence: SeqNum(seq),
        timestamp: RtpTimestamp(u32::from(seq) * 160),
        ssrc: Ssrc(0x1234_5678),
    };
    let mut buf = vec![0u8; 12 + payload.len()];
    let n = header.write_packet(payload, &mut buf).expect("fits");
    buf.truncate(n);
    buf
}

fn recv(socket: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 2048];
    socket
        .recv_from(&mut buf)
        .ok()
        .map(|(n, from)| (buf[..n].to_vec(), from))
}

fn bridged(relay: &Relay, a_params: LegParams, b_params: LegParams) -> (Leg, Leg) {
    let a = add_leg(
        relay,
        1,
        "a",
        LegParams {
            forward_to: Some(2),
            clock_rate: 8000,
            ..a_params
        },
    );
    let b = add_leg(
        relay,
        2,
        "b",
        LegParams {
            forward_to: Some(1),
            clock_rate: 8000,
            ..b_params
        },
    );
    (a, b)
}

/// Two bridged legs, each expecting its peer's media from `caller` and
/// `callee` respectively (strict-source latching at once).
fn bridged_expecting(relay: &Relay, caller: &UdpSocket, callee: &UdpSocket) -> (Leg, Leg) {
    bridged(
        relay,
        LegParams {
            expected_rtp: Some(caller.local_addr().expect("addr")),
            ..LegParams::default()
        },
        LegParams {
            expected_rtp: Some(callee.local_addr().expect("addr")),
            ..LegParams::default()
        },
    )
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn bridged_legs_forward_rtp_and_rtcp_both_ways_from_the_managers_ports() {
    let relay = Relay::start().expect("relay");
    let caller = endpoint();
    let callee = endpoint();
    let callee_rtcp = endpoint();
    let (a, b) = bridged(
        &relay,
        LegParams {
            expected_rtp: Some(caller.local_addr().expect("addr")),
            ..LegParams::default()
        },
        LegParams {
            expected_rtp: Some(callee.local_addr().expect("addr")),
            expected_rtcp: Some(callee_rtcp.local_addr().expect("addr")),
            ..LegParams::default()
        },
    );

    // Caller → leg a → out of leg b's port → callee (from SDP, not latched yet).
    let packet = rtp_packet(1, 0, &[0xff; 160]);
    caller.send_to(&packet, a.rtp_addr()).expect("send");
    let (got, from) = recv(&callee).expect("callee receives");
    assert_eq!(got, packet, "payload untouched");
    assert_eq!(
        from,
        b.rtp_addr(),
        "sent from the manager's port of the callee's leg"
    );

    // Callee answers; caller's leg latched on the first packet.
    let reply = rtp_packet(7, 0, &[0x7f; 160]);
    callee.send_to(&reply, b.rtp_addr()).expect("send");
    let (got, from) = recv(&caller).expect("caller receives");
    assert_eq!((got, from), (reply, a.rtp_addr()));

    // RTCP from callee (RR) reaches the caller's RTCP port + 1 convention.
    let caller_rtcp = UdpSocket::bind(SocketAddr::new(
        caller.local_addr().expect("addr").ip(),
        caller.local_addr().expect("addr").port() + 1,
    ));
    let rr: Vec<u8> = vec![
        0x81, 201, 0, 7, 0, 0, 0, 9, 0x12, 0x34, 0x56, 0x78, 0x40, 0, 0, 3, 0, 0, 0, 7, 0, 0, 0,
        80, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    callee_rtcp.send_to(&rr, b.rtcp_addr).expect("send rtcp");
    if let Ok(caller_rtcp) = caller_rtcp {
        caller_rtcp
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let (got, from) = recv(&caller_rtcp).expect("caller RTCP receives");
        assert_eq!((got, from.port()), (rr, a.rtcp_addr.port()));
    }

    wait_until("counters", || {
        LegCounters::get(&b.shared.counters.rtcp_in_packets) == 1
    });
    assert_eq!(LegCounters::get(&a.shared.counters.rtp_in_packets), 1);
    assert_eq!(LegCounters::get(&a.shared.counters.rtp_in_bytes), 172);
    assert_eq!(LegCounters::get(&b.shared.counters.rtp_out_packets), 1);
    assert_eq!(LegCounters::get(&a.shared.counters.rtp_out_packets), 1);
    let snapshot = relay.snapshot(b.slot).expect("relay alive").expect("leg b");
    assert_eq!(
        snapshot.latched_rtp,
        Some(callee.local_addr().expect("addr"))
    );
    assert_eq!(snapshot.peer_fraction_lost, 0x40, "the RR's fraction lost");
    assert_eq!(snapshot.peer_cumulative_lost, 3);
    assert_eq!(snapshot.peer_jitter_us, 10_000, "80 ticks at 8 kHz");
}

#[test]
fn strict_source_drops_and_counts_other_sources_after_latching() {
    let relay = Relay::start().expect("relay");
    let (caller, intruder, callee) = (endpoint(), endpoint(), endpoint());
    let (a, _b) = bridged(
        &relay,
        LegParams {
            strict_source: true,
            ..LegParams::default()
        },
        LegParams {
            expected_rtp: Some(callee.local_addr().expect("addr")),
            ..LegParams::default()
        },
    );
    caller
        .send_to(&rtp_packet(1, 0, &[1; 20]), a.rtp_addr())
        .expect("send");
    assert!(recv(&callee).is_some(), "first packet latches and flows");
    intruder
        .send_to(&rtp_packet(2, 0, &[2; 20]), a.rtp_addr())
        .expect("send");
    wait_until("the drop", || {
        LegCounters::get(&a.shared.counters.source_mismatch_drops) == 1
    });
    caller
        .send_to(&rtp_packet(3, 0, &[3; 20]), a.rtp_addr())
        .expect("send");
    let (got, _) = recv(&callee).expect("latched source still flows");
    assert_eq!(got[2..4], [0, 3], "the intruder's packet 2 never arrived");
}

#[test]
fn without_strict_source_a_new_source_relatches() {
    let relay = Relay::start().expect("relay");
    let (caller, roamed, callee) = (endpoint(), endpoint(), endpoint());
    let (a, _b) = bridged(
        &relay,
        LegParams::default(),
        LegParams {
            expected_rtp: Some(callee.local_addr().expect("addr")),
            ..LegParams::default()
        },
    );
    let mut events = relay.subscribe();
    caller
        .send_to(&rtp_packet(1, 0, &[1; 20]), a.rtp_addr())
        .expect("send");
    assert!(recv(&callee).is_some());
    roamed
        .send_to(&rtp_packet(2, 0, &[2; 20]), a.rtp_addr())
        .expect("send");
    assert!(recv(&callee).is_some());
    assert_eq!(
        a.shared.destination(),
        Some(roamed.local_addr().expect("addr"))
    );
    let first = events.try_recv().expect("latch event");
    let second = events.try_recv().expect("relatch event");
    assert!(
        matches!(first, RelayEvent::Latched { source, .. } if source == caller.local_addr().expect("addr"))
    );
    assert!(
        matches!(second, RelayEvent::Latched { source, .. } if source == roamed.local_addr().expect("addr"))
    );
}

#[test]
fn transcodes_pcmu_to_pcma_on_the_way_through() {
    let relay = Relay::start().expect("relay");
    let (caller, callee) = (endpoint(), endpoint());
    let (a, _b) = bridged(
        &relay,
        LegParams {
            transcode: Some(Transcode {
                from: Law::Ulaw,
                to: Law::Alaw,
                payload_type: PayloadType::PCMA,
            }),
            ..LegParams::default()
        },
        LegParams {
            expected_rtp: Some(callee.local_addr().expect("addr")),
            ..LegParams::default()
        },
    );
    // µ-law 0xFF is silence (0); A-law silence is 0xD5.
    caller
        .send_to(&rtp_packet(1, 0, &[0xff; 160]), a.rtp_addr())
        .expect("send");
    let (got, _) = recv(&callee).expect("callee receives");
    assert_eq!(got[1] & 0x7f, 8, "payload type rewritten to PCMA");
    assert_eq!(
        &got[2..12],
        &rtp_packet(1, 0, &[])[2..12],
        "sequence, timestamp and SSRC kept"
    );
    assert!(got[12..].iter().all(|&b| b == 0xd5), "payload converted");
}

#[test]
fn paused_inbound_media_is_not_sent_and_media_timeout_fires_once() {
    let relay = Relay::start().expect("relay");
    let (caller, callee) = (endpoint(), endpoint());
    let mut events = relay.subscribe();
    let (a, b) = bridged(
        &relay,
        LegParams {
            media_timeout: Some(Duration::from_millis(300)),
            ..LegParams::default()
        },
        LegParams {
            expected_rtp: Some(callee.local_addr().expect("addr")),
            inbound_paused: true,
            ..LegParams::default()
        },
    );
    caller
        .send_to(&rtp_packet(1, 0, &[1; 20]), a.rtp_addr())
        .expect("send");
    assert!(
        recv(&callee).is_none(),
        "a paused leg gets nothing from its bridge"
    );
    wait_until("rtp counted", || {
        LegCounters::get(&a.shared.counters.rtp_in_packets) == 1
    });
    let _ = b;

    let deadline = Instant::now() + Duration::from_secs(3);
    let timeout = loop {
        match events.try_recv() {
            Ok(RelayEvent::MediaTimeout { leg, idle }) => break (leg, idle),
            Ok(_) => {}
            Err(_) => {
                assert!(Instant::now() < deadline, "no media timeout event");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    assert_eq!(&*timeout.0.leg_id, "a");
    assert!(timeout.1 >= Duration::from_millis(300));
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        !std::iter::from_fn(|| events.try_recv().ok())
            .any(|e| matches!(e, RelayEvent::MediaTimeout { .. })),
        "reported once until media resumes"
    );
}

#[test]
fn removed_legs_stop_forwarding_and_return_their_snapshot() {
    let relay = Relay::start().expect("relay");
    let (caller, callee) = (endpoint(), endpoint());
    let (a, b) = bridged(
        &relay,
        LegParams::default(),
        LegParams {
            expected_rtp: Some(callee.local_addr().expect("addr")),
            ..LegParams::default()
        },
    );
    for seq in [1u16, 2, 3, 5] {
        caller
            .send_to(&rtp_packet(seq, 0, &[0; 20]), a.rtp_addr())
            .expect("send");
        assert!(recv(&callee).is_some());
    }
    let snapshot = relay
        .remove_leg(a.slot)
        .expect("relay alive")
        .expect("leg existed");
    assert_eq!(snapshot.rtp_lost, 1, "sequence 4 is missing");
    assert_eq!(
        snapshot.latched_rtp,
        Some(caller.local_addr().expect("addr"))
    );
    assert_eq!(relay.remove_leg(a.slot).expect("relay alive"), None);
    let _ = relay.remove_leg(b.slot);
}

#[test]
fn removals_begun_together_each_return_their_own_legs_snapshot() {
    let relay = Relay::start().expect("relay");
    let (caller, callee) = (endpoint(), endpoint());
    let (a, b) = bridged_expecting(&relay, &caller, &callee);
    // Three packets into leg a, one into leg b: their snapshots differ.
    for seq in [1u16, 2, 4] {
        caller
            .send_to(&rtp_packet(seq, 0, &[0; 20]), a.rtp_addr())
            .expect("send");
        assert!(recv(&callee).is_some());
    }
    callee
        .send_to(&rtp_packet(7, 0, &[0; 20]), b.rtp_addr())
        .expect("send");
    assert!(recv(&caller).is_some());
    let first = relay.begin_remove(a.slot).expect("relay alive");
    let second = relay.begin_remove(b.slot).expect("relay alive");
    let a_snapshot = first.finish().expect("relay alive").expect("leg a existed");
    let b_snapshot = second
        .finish()
        .expect("relay alive")
        .expect("leg b existed");
    assert_eq!(a_snapshot.rtp_lost, 1, "sequence 3 is missing on a");
    assert_eq!(b_snapshot.rtp_lost, 0);
    assert_eq!(
        a_snapshot.latched_rtp,
        Some(caller.local_addr().expect("addr"))
    );
    assert_eq!(
        b_snapshot.latched_rtp,
        Some(callee.local_addr().expect("addr"))
    );
    assert_eq!(
        relay.worker_legs().iter().sum::<usize>(),
        0,
        "both placements freed"
    );
    // Gone: a packet to a's port is no longer forwarded.
    caller
        .send_to(&rtp_packet(5, 0, &[0; 20]), a.rtp_addr())
        .expect("send");
    assert!(recv(&callee).is_none());
}

#[test]
fn telephone_events_are_detected_once_and_forwarded_with_the_other_legs_payload_type() {
    let relay = Relay::start().expect("relay");
    let mut events = relay.subscribe();
    let (caller, callee) = (endpoint(), endpoint());
    let (a, _b) = bridged(
        &relay,
        LegParams {
            telephone_event: PayloadType::new(101),
            ..LegParams::default()
        },
        LegParams {
            expected_rtp: Some(callee.local_addr().expect("addr")),
            telephone_event: PayloadType::new(96),
            ..LegParams::default()
        },
    );
    // Digit 7 for 60 ms at 8 kHz: three updates, then three end packets.
    for (seq, end, duration) in [
        (1u16, false, 160u16),
        (2, false, 320),
        (3, false, 480),
        (4, true, 480),
        (5, true, 480),
        (6, true, 480),
    ] {
        let mut block = vec![7u8, if end { 0x80 | 10 } else { 10 }];
        block.extend_from_slice(&duration.to_be_bytes());
        // Every packet of one event carries the event's timestamp.
        let header = RtpHeader {
            marker: seq == 1,
            payload_type: PayloadType::new(101).expect("valid pt"),
            sequence: SeqNum(seq),
            timestamp: RtpTimestamp(8000),
            ssrc: Ssrc(0x1234_5678),
        };
        let mut packet = vec![0u8; 16];
        header.write_packet(&block, &mut packet).expect("fits");
        caller.send_to(&packet, a.rtp_addr()).expect("send");
        let (got, _) = recv(&callee).expect("telephone-event forwarded");
        let packet = crate::media::rtp::RtpPacket::parse(&got).expect("valid RTP");
        assert_eq!(
            (
                packet.payload_type().get(),
                packet.sequence(),
                packet.payload()
            ),
            (96, SeqNum(seq), &block[..]),
            "payload type mapped, the rest untouched"
        );
    }
    let event = loop {
        match events.try_recv() {
            Ok(RelayEvent::Dtmf {
                leg,
                digit,
                duration,
                volume,
            }) => break (leg.leg_id.to_string(), digit.as_char(), duration, volume),
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::TryRecvError::Empty) => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("relay events: {e}"),
        }
    };
    assert_eq!(event, ("a".into(), '7', Duration::from_millis(60), 10));
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        std::iter::from_fn(|| events.try_recv().ok())
            .all(|e| !matches!(e, RelayEvent::Dtmf { .. })),
        "reported once, neither by the end retransmissions nor by the end timeout"
    );
}

#[test]
fn after_an_injection_forwarded_packets_continue_the_injected_stream() {
    let relay = Relay::start().expect("relay");
    let (caller, callee) = (endpoint(), endpoint());
    let (a, b) = bridged(
        &relay,
        LegParams::default(),
        LegParams {
            expected_rtp: Some(callee.local_addr().expect("addr")),
            ..LegParams::default()
        },
    );
    caller
        .send_to(&rtp_packet(10, 0, &[1; 160]), a.rtp_addr())
        .expect("send");
    recv(&callee).expect("forwarded unchanged before any injection");
    let t = Instant::now();
    let (token, start) = b.shared.outbound().begin_injection(
        t,
        8000,
        continuity::StreamPosition {
            ssrc: Ssrc(1),
            sequence: SeqNum(1),
            timestamp: RtpTimestamp(1),
        },
    );
    assert_eq!(
        (start.ssrc, start.sequence),
        (Ssrc(0x1234_5678), SeqNum(11)),
        "the injection continues the forwarded stream"
    );
    caller
        .send_to(&rtp_packet(11, 0, &[1; 160]), a.rtp_addr())
        .expect("send");
    assert!(
        recv(&callee).is_none(),
        "nothing forwarded during the injection"
    );
    for k in 0..5u16 {
        let p = continuity::StreamPosition {
            sequence: start.sequence.wrapping_add(k),
            ..start
        };
        assert!(b.shared.outbound().injected(token, t, p));
    }
    assert!(b.shared.outbound().end_injection(token));
    caller
        .send_to(&rtp_packet(12, 0, &[1; 160]), a.rtp_addr())
        .expect("send");
    let (got, _) = recv(&callee).expect("forwarding resumed");
    let packet = crate::media::rtp::RtpPacket::parse(&got).expect("valid RTP");
    assert_eq!(
        (packet.ssrc(), packet.sequence()),
        (Ssrc(0x1234_5678), SeqNum(16)),
        "the source's seq 12 follows the injection's last (15)"
    );
}

/// rtpengine's userspace relay stops forwarding a socket whose receive queue
/// overflowed; this one must keep serving every socket, shed the flood in
/// the kernel's queue, and recover by itself.
#[test]
fn a_flooded_leg_never_starves_others_and_recovers_when_the_flood_stops() {
    let relay = Relay::start().expect("relay");
    let (flooder, calm_caller) = (endpoint(), endpoint());
    let (flood_sink, calm_callee) = (endpoint(), endpoint());
    let flooded = add_leg(
        &relay,
        10,
        "flooded-a",
        LegParams {
            forward_to: Some(11),
            clock_rate: 8000,
            ..LegParams::default()
        },
    );
    add_leg(
        &relay,
        11,
        "flooded-b",
        LegParams {
            forward_to: Some(10),
            expected_rtp: Some(flood_sink.local_addr().expect("addr")),
            clock_rate: 8000,
            ..LegParams::default()
        },
    );
    let calm = add_leg(
        &relay,
        20,
        "calm-a",
        LegParams {
            forward_to: Some(21),
            clock_rate: 8000,
            ..LegParams::default()
        },
    );
    add_leg(
        &relay,
        21,
        "calm-b",
        LegParams {
            forward_to: Some(20),
            expected_rtp: Some(calm_callee.local_addr().expect("addr")),
            clock_rate: 8000,
            ..LegParams::default()
        },
    );

    // A sender as fast as it can go at one leg for 1 s, and a normal
    // 50 pps stream at the other, concurrently.
    let target = flooded.rtp_addr();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let packet = rtp_packet(1, 0, &[0; 160]);
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if flooder.send_to(&packet, target).is_ok() {
                    sent += 1;
                }
            }
            sent
        })
    };
    let mut calm_received = 0;
    for seq in 0..50u16 {
        calm_caller
            .send_to(&rtp_packet(seq, 0, &[1; 160]), calm.rtp_addr())
            .expect("send");
        if recv(&calm_callee).is_some() {
            calm_received += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let flood_sent = flood.join().expect("flood thread");
    assert_eq!(
        calm_received, 50,
        "the calm leg lost nothing while the other was flooded"
    );
    let flood_forwarded = LegCounters::get(&flooded.shared.counters.rtp_in_packets);
    assert!(flood_forwarded > 0, "the flooded socket kept being served");
    assert!(
        flood_forwarded <= flood_sent,
        "{flood_forwarded} > {flood_sent}"
    );

    // Recovery: once the backlog is drained, the flooded leg carries a
    // normal stream again, every packet.
    wait_until("the flood backlog to drain", || {
        let before = LegCounters::get(&flooded.shared.counters.rtp_in_packets);
        std::thread::sleep(Duration::from_millis(100));
        LegCounters::get(&flooded.shared.counters.rtp_in_packets) == before
    });
    while recv_nonblocking(&flood_sink) {}
    let recovered_source = endpoint();
    let mut recovered = 0;
    for seq in 100..120u16 {
        recovered_source
            .send_to(&rtp_packet(seq, 0, &[2; 160]), target)
            .expect("send");
        if let Some((got, _)) = recv(&flood_sink) {
            if got[2..4] == seq.to_be_bytes() {
                recovered += 1;
            }
        }
    }
    assert_eq!(
        recovered, 20,
        "after the flood the leg forwards normally again"
    );
}

fn recv_nonblocking(socket: &UdpSocket) -> bool {
    socket.set_nonblocking(true).expect("nonblocking");
    let got = recv(socket).is_some();
    socket.set_nonblocking(false).expect("blocking");
    got
}

#[test]
fn calls_spread_over_the_workers_and_each_calls_legs_share_one() {
    let relay = Relay::with_workers(2).expect("relay");
    assert_eq!(relay.workers(), 2);
    let mut calls = Vec::new();
    for (n, call) in (0u32..).zip(["c1", "c2", "c3"]) {
        let (caller, callee) = (endpoint(), endpoint());
        let (a_slot, b_slot) = (2 * n + 1, 2 * n + 2);
        let leg = |slot: Slot, name: &str, forward_to: Slot, peer: &UdpSocket| {
            let shared = Arc::new(LegShared::new(
                LegRef {
                    call_id: Arc::from(call),
                    leg_id: Arc::from(name),
                },
                Arc::new(socket()),
            ));
            let params = LegParams {
                forward_to: Some(forward_to),
                expected_rtp: Some(peer.local_addr().expect("addr")),
                clock_rate: 8000,
                ..LegParams::default()
            };
            relay
                .add_leg(slot, Arc::clone(&shared), Some(socket()), params)
                .expect("add leg");
            Leg {
                slot,
                shared,
                rtcp_addr: peer.local_addr().expect("addr"),
            }
        };
        let a = leg(a_slot, "a", b_slot, &caller);
        let b = leg(b_slot, "b", a_slot, &callee);
        calls.push((a, b, caller, callee));
    }
    // c1 on worker 0, c2 on worker 1 (fewest legs), c3 on worker 0 (a tie
    // goes to the first): a call's two legs always together.
    assert_eq!(relay.worker_legs(), vec![4, 2]);
    let placement = lock(&relay.placement);
    for (a, b, _, _) in &calls {
        assert_eq!(placement.worker_of(a.slot), placement.worker_of(b.slot));
    }
    drop(placement);

    // Every call forwards both ways, whichever worker holds it.
    for (seq, (a, b, caller, callee)) in (1u16..).zip(&calls) {
        let packet = rtp_packet(seq, 0, &[0x55; 160]);
        caller.send_to(&packet, a.rtp_addr()).expect("send");
        assert_eq!(
            recv(callee),
            Some((packet, b.rtp_addr())),
            "call {seq} a → b"
        );
        let reply = rtp_packet(seq + 100, 0, &[0x66; 160]);
        callee.send_to(&reply, b.rtp_addr()).expect("send");
        assert_eq!(
            recv(caller),
            Some((reply, a.rtp_addr())),
            "call {seq} b → a"
        );
    }

    // c1 ends: its worker has room again, and the next call goes there.
    for slot in [1, 2] {
        relay.remove_leg(slot).expect("relay alive");
    }
    assert_eq!(relay.worker_legs(), vec![2, 2]);
    let shared = Arc::new(LegShared::new(
        LegRef {
            call_id: Arc::from("c4"),
            leg_id: Arc::from("a"),
        },
        Arc::new(socket()),
    ));
    relay
        .add_leg(9, shared, None, LegParams::default())
        .expect("add leg");
    assert_eq!(relay.worker_legs(), vec![3, 2]);
}

#[test]
fn packets_the_kernel_dropped_on_a_legs_full_queue_count_as_its_overload_drops() {
    let relay = Relay::start().expect("relay");
    let (caller, callee) = (endpoint(), endpoint());
    let (a, _b) = bridged_expecting(&relay, &caller, &callee);
    // The smallest queue the kernel grants: a burst overflows it.
    let rtp = a.shared.rtp_socket().expect("rtp socket");
    socket2::SockRef::from(rtp.as_ref())
        .set_recv_buffer_size(1)
        .expect("SO_RCVBUF");
    let counters = &a.shared.counters;
    let accounted =
        || LegCounters::get(&counters.rtp_in_packets) + LegCounters::get(&counters.overload_drops);
    // The worker asks for the drop count when it takes the leg.
    wait_until("the leg is taken", || {
        caller
            .send_to(&rtp_packet(0, 0, &[0; 160]), a.rtp_addr())
            .expect("send");
        std::thread::sleep(Duration::from_millis(5));
        LegCounters::get(&counters.rtp_in_packets) > 0
    });
    let mut sent = accounted();
    for seq in 1..=2000u16 {
        caller
            .send_to(&rtp_packet(seq, 0, &[0; 1000]), a.rtp_addr())
            .expect("send");
        sent += 1;
    }
    // Drops after the last packet queued show with the next one: one more
    // packet whenever the figures do not add up yet.
    wait_until("every packet read or counted dropped", || {
        if accounted() == sent {
            return true;
        }
        caller
            .send_to(&rtp_packet(0, 0, &[0; 160]), a.rtp_addr())
            .expect("send");
        sent += 1;
        false
    });
    assert_eq!(accounted(), sent);
    // 1,700 to 1,870 of 2,003 in three runs here.
    assert!(
        LegCounters::get(&counters.overload_drops) > 0,
        "the burst overflowed the leg's queue"
    );
}

#[test]
fn a_new_call_skips_a_saturated_worker_unless_every_worker_is() {
    let mut placement = Placement::new(2);
    let call = |name: &str| Arc::<str>::from(name);
    // Worker 0 has fewer legs but is measured saturated: worker 1 takes it.
    assert_eq!(placement.place(1, &call("c1"), &[false, false]), 0);
    assert_eq!(
        placement.place(2, &call("c1"), &[true, false]),
        0,
        "a call's legs stay together"
    );
    assert_eq!(placement.place(3, &call("c2"), &[true, false]), 1);
    assert_eq!(placement.place(4, &call("c3"), &[true, false]), 1);
    assert_eq!(placement.legs, vec![2, 2]);
    // Both saturated: the fewest legs again, a tie to the first.
    assert_eq!(placement.place(5, &call("c4"), &[true, true]), 0);
    // Neither: the fewest legs.
    assert_eq!(placement.place(6, &call("c5"), &[false, false]), 1);
}

#[test]
fn a_worker_reports_its_packets_and_cpu() {
    let relay = Relay::start().expect("relay");
    let (caller, callee) = (endpoint(), endpoint());
    let (a, _b) = bridged_expecting(&relay, &caller, &callee);
    for seq in 0..10u16 {
        caller
            .send_to(&rtp_packet(seq, 0, &[0; 160]), a.rtp_addr())
            .expect("send");
        assert!(recv(&callee).is_some(), "packet {seq} forwarded");
    }
    // The CPU figures come with the worker's scan, every 250 ms.
    wait_until("the worker's first CPU reading", || {
        relay.worker_figures()[0].cpu_ns > 0
    });
    let figures = relay.worker_figures();
    assert_eq!(figures.len(), 1);
    let w = figures[0];
    assert_eq!(
        (w.legs, w.received_packets, w.forwarded_packets),
        (2, 10, 10)
    );
    assert_eq!(w.overload_drops, 0);
    // Ten packets and a few wake-ups are nowhere near a CPU.
    assert!(w.busy_permille < SATURATED_BUSY_PERMILLE, "{w:?}");
    assert!(!relay.saturated());
}

/// Control coalesces the wake-ups of commands queued before the worker
/// runs: whatever the interleaving of senders and the worker's clearing of
/// its wake-up, none is lost. Run against the worker clearing its flag
/// before reading its event fd, this fails in about three runs of four;
/// the worker then takes its queue only at its 50 ms scans.
#[test]
fn commands_sent_in_bursts_from_two_threads_never_lose_the_workers_wake_up() {
    let relay = Arc::new(Relay::start().expect("relay"));
    let (caller, callee) = (endpoint(), endpoint());
    let (a, b) = bridged_expecting(&relay, &caller, &callee);
    let stop = Arc::new(AtomicBool::new(false));
    let updater = {
        let (relay, stop) = (Arc::clone(&relay), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut updates = 0u32;
            // Bursts with short pauses: the senders race the worker's
            // clearing of its wake-up, and the queue stays short.
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..4 {
                    let params = LegParams {
                        forward_to: Some(1),
                        clock_rate: 8000,
                        ..LegParams::default()
                    };
                    relay.update_leg(b.slot, params).expect("relay alive");
                    updates += 1;
                }
                std::thread::sleep(Duration::from_micros(20));
            }
            updates
        })
    };
    let started = Instant::now();
    let mut asked = 0;
    while asked < 5000 && started.elapsed() < Duration::from_secs(5) {
        relay
            .snapshot(a.slot)
            .expect("relay alive")
            .expect("leg a exists");
        asked += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let updates = updater.join().expect("updater");
    assert!(updates > 0);
    // Quiet now: a worker that was woken has cleared its flag. A flag left
    // set with nothing written to the event fd is a lost wake-up: senders
    // would skip their writes, and the worker would take its queue only at
    // its 50 ms scans from then on.
    std::thread::sleep(Duration::from_millis(200));
    let waker = &relay.workers[0].waker;
    let signalled = waker.signalled.load(Ordering::SeqCst);
    let written = waker.event.read().is_ok();
    assert!(
        !signalled || written,
        "after {asked} snapshots and {updates} updates the wake-up flag is set \
         with nothing to wake the worker: a wake-up was lost"
    );
}

#[test]
fn a_leg_added_while_its_worker_sleeps_forwards_its_first_packet() {
    let relay = Relay::start().expect("relay");
    let (caller, callee) = (endpoint(), endpoint());
    // The worker has nothing to do and sleeps; the legs are only queued
    // for it, and the first packet (not a wake-up) makes it take them.
    std::thread::sleep(Duration::from_millis(120));
    let (a, _b) = bridged_expecting(&relay, &caller, &callee);
    let sent = Instant::now();
    caller
        .send_to(&rtp_packet(1, 0, &[0; 160]), a.rtp_addr())
        .expect("send");
    assert!(recv(&callee).is_some(), "the first packet is forwarded");
    assert!(
        sent.elapsed() < Duration::from_millis(40),
        "forwarded after {:?}: the worker waited for its timeout",
        sent.elapsed()
    );
}
