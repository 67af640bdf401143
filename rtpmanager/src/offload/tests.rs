//! The offload decision driven through whole calls, asserting the exact map
//! writes and events.

use crate::media::rtp::PayloadType;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::media::g711::Law;
use crate::media::rtp::Ssrc;
use crate::relay::Transcode;

const A: Slot = 0;
const B: Slot = 1;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn leg_ref(leg: &str) -> LegRef {
    LegRef {
        call_id: Arc::from("call-1"),
        leg_id: Arc::from(leg),
    }
}

/// Leg `a` (caller at 192.0.2.10:40000) on relay port 30000, leg `b`
/// (callee at 192.0.2.20:50000) on 30002, bridged, PCMU on both.
fn leg(name: &str) -> OffloadLeg {
    let (port, peer, forward_to) = match name {
        "a" => (30000, "192.0.2.10:40000", B),
        _ => (30002, "192.0.2.20:50000", A),
    };
    let peer = addr(peer);
    OffloadLeg {
        leg: leg_ref(name),
        local_rtp: SocketAddr::new(addr("10.0.0.1:0").ip(), port),
        kernel: true,
        params: LegParams {
            expected_rtp: Some(peer),
            expected_rtcp: Some(SocketAddr::new(peer.ip(), peer.port() + 1)),
            rtcp_mux: false,
            strict_source: false,
            forward_to: Some(forward_to),
            transcode: None,
            inbound_paused: false,
            media_timeout: Some(Duration::from_secs(30)),
            clock_rate: 8000,
            telephone_event: PayloadType::new(101),
            ..LegParams::default()
        },
        rewrite: Rewrite::Unchanged,
    }
}

fn commands(o: &mut Offload) -> Vec<OffloadCommand> {
    std::iter::from_fn(|| o.poll_command()).collect()
}

fn events(o: &mut Offload) -> Vec<(String, bool, Reason)> {
    std::iter::from_fn(|| o.poll_event())
        .map(|e| (e.from.leg_id.to_string(), e.offloaded, e.reason))
        .collect()
}

fn install(
    from: Slot,
    kind: StreamKind,
    key: &str,
    entry: ForwardEntry,
    fresh: bool,
) -> OffloadCommand {
    OffloadCommand::Install {
        direction: Direction { from, kind },
        key: ForwardKey::new(addr(key)),
        entry,
        fresh,
    }
}

fn remove(from: Slot, kind: StreamKind, key: &str, stats_slot: u32) -> OffloadCommand {
    OffloadCommand::Remove {
        direction: Direction { from, kind },
        key: ForwardKey::new(addr(key)),
        stats_slot,
    }
}

/// An entry as the decision makes it for these legs: RTP entries pass the
/// legs' telephone-event payload type (101) up to the relay's DTMF detector.
fn entry(src: &str, dst: &str, expected: &str, flags: u16, clock: u32, slot: u32) -> ForwardEntry {
    let entry = ForwardEntry::new(addr(src), addr(dst), addr(expected), flags, clock, slot);
    if flags & FLAG_RTP != 0 {
        entry.with_pass_payload_type(101)
    } else {
        entry
    }
}

/// A bridged call where both peers have sent RTP; the commands so far are
/// drained and checked.
fn latched_call(now: Instant) -> Offload {
    let mut o = Offload::new(true);
    o.handle_leg(now, A, leg("a"));
    o.handle_leg(now, B, leg("b"));
    assert_eq!(commands(&mut o), vec![], "nothing before a latch");
    o.handle_latched(
        now,
        &leg_ref("a"),
        StreamKind::Rtp,
        addr("192.0.2.10:40000"),
    );
    assert_eq!(
        commands(&mut o),
        vec![install(
            A,
            StreamKind::Rtp,
            "10.0.0.1:30000",
            entry(
                "10.0.0.1:30002",
                "192.0.2.20:50000",
                "192.0.2.10:40000",
                FLAG_RTP,
                8000,
                0
            ),
            true
        )],
        "a's RTP goes in once a latched and b's destination is known from SDP"
    );
    o.handle_latched(
        now,
        &leg_ref("b"),
        StreamKind::Rtp,
        addr("198.51.100.7:6000"),
    );
    assert_eq!(
        commands(&mut o),
        vec![
            install(
                A,
                StreamKind::Rtp,
                "10.0.0.1:30000",
                entry(
                    "10.0.0.1:30002",
                    "198.51.100.7:6000",
                    "192.0.2.10:40000",
                    FLAG_RTP,
                    8000,
                    0
                ),
                false
            ),
            install(
                B,
                StreamKind::Rtp,
                "10.0.0.1:30002",
                entry(
                    "10.0.0.1:30000",
                    "192.0.2.10:40000",
                    "198.51.100.7:6000",
                    FLAG_RTP,
                    8000,
                    1
                ),
                true
            ),
        ],
        "b latched behind a NAT: a's entry follows b's latched address, b's RTP goes in"
    );
    assert_eq!(
        events(&mut o),
        vec![
            ("a".to_owned(), true, Reason::Passthrough),
            ("b".to_owned(), true, Reason::Passthrough)
        ]
    );
    o
}

#[test]
fn both_directions_go_in_as_each_peer_latches() {
    let o = latched_call(Instant::now());
    assert!(
        o.offloaded(A) && o.offloaded(B),
        "both RTP directions offloaded"
    );
    assert_eq!(
        o.installed(),
        vec![
            (
                Direction {
                    from: A,
                    kind: StreamKind::Rtp
                },
                0
            ),
            (
                Direction {
                    from: B,
                    kind: StreamKind::Rtp
                },
                1
            )
        ]
    );
}

#[test]
fn rtcp_goes_in_on_the_rtcp_ports_once_its_source_latched() {
    let now = Instant::now();
    let mut o = latched_call(now);
    o.handle_latched(
        now,
        &leg_ref("a"),
        StreamKind::Rtcp,
        addr("192.0.2.10:40001"),
    );
    assert_eq!(
        commands(&mut o),
        vec![install(
            A,
            StreamKind::Rtcp,
            "10.0.0.1:30001",
            // b's RTCP destination: b latched RTP behind a NAT but not RTCP,
            // so the SDP's RTCP address, as the relay would send.
            entry(
                "10.0.0.1:30003",
                "192.0.2.20:50001",
                "192.0.2.10:40001",
                FLAG_RTCP,
                0,
                2
            ),
            true
        )]
    );
    assert_eq!(events(&mut o), vec![], "RTCP directions raise no events");
}

#[test]
fn playback_takes_the_direction_into_the_leg_out_and_the_anchored_rewrite_brings_it_back() {
    let now = Instant::now();
    let mut o = latched_call(now);
    let mut b = leg("b");
    b.params.inbound_paused = true;
    b.rewrite = Rewrite::Unanchored;
    o.handle_leg(now, B, b.clone());
    assert_eq!(
        commands(&mut o),
        vec![remove(A, StreamKind::Rtp, "10.0.0.1:30000", 0)]
    );
    assert_eq!(
        events(&mut o),
        vec![("a".to_owned(), false, Reason::Injecting)]
    );
    assert!(
        o.offloaded(B),
        "b's own media still goes to a in the kernel"
    );

    // The playback ended; the relay rewrites a's packets into b but has not
    // forwarded one yet, so the offsets are not known.
    b.params.inbound_paused = false;
    o.handle_leg(now, B, b);
    assert_eq!(
        commands(&mut o),
        vec![],
        "an unanchored rewrite stays in userspace"
    );
    assert!(!o.offloaded(A));

    // The relay forwarded a's first packet after the playback: anchored.
    let anchored = Rewrite::Anchored {
        source: Ssrc(0xAA),
        ssrc: Ssrc(0xAA),
        sequence_offset: 65_000,
        timestamp_offset: 4_000_000_000,
    };
    o.handle_rewrite(now + Duration::from_secs(3), &leg_ref("b"), anchored);
    assert_eq!(
        commands(&mut o),
        vec![install(
            A,
            StreamKind::Rtp,
            "10.0.0.1:30000",
            entry(
                "10.0.0.1:30002",
                "198.51.100.7:6000",
                "192.0.2.10:40000",
                FLAG_RTP,
                8000,
                0
            )
            .with_rewrite(RtpRewrite {
                source_ssrc: 0xAA,
                ssrc: 0xAA,
                sequence_offset: 65_000,
                timestamp_offset: 4_000_000_000,
            }),
            true
        )],
        "a's RTP goes back in with the relay's offsets; RTCP never left"
    );
    assert_eq!(
        events(&mut o),
        vec![("a".to_owned(), true, Reason::Passthrough)]
    );
    o.handle_rewrite(now + Duration::from_secs(3), &leg_ref("b"), anchored);
    assert_eq!(commands(&mut o), vec![], "the same anchor writes nothing");

    // The source changed SSRC: the relay re-anchored, the entry is replaced
    // in place (same episode).
    let reanchored = Rewrite::Anchored {
        source: Ssrc(0xBB),
        ssrc: Ssrc(0xAA),
        sequence_offset: 7,
        timestamp_offset: 9,
    };
    o.handle_rewrite(now + Duration::from_secs(4), &leg_ref("b"), reanchored);
    let replaced = commands(&mut o);
    assert!(
        matches!(
            replaced.as_slice(),
            [OffloadCommand::Install { fresh: false, entry, .. }]
                if entry.rewrite() == Some(RtpRewrite { source_ssrc: 0xBB, ssrc: 0xAA, sequence_offset: 7, timestamp_offset: 9 })
        ),
        "replaced in place: {replaced:?}"
    );
}

#[test]
fn dtmf_injection_out_and_back_in_with_a_fresh_episode() {
    let now = Instant::now();
    let mut o = latched_call(now);
    let mut a = leg("a");
    a.params.inbound_paused = true;
    o.handle_leg(now, A, a.clone());
    assert_eq!(
        commands(&mut o),
        vec![remove(B, StreamKind::Rtp, "10.0.0.1:30002", 1)]
    );
    a.params.inbound_paused = false;
    o.handle_leg(now + Duration::from_secs(1), A, a);
    assert_eq!(
        commands(&mut o),
        vec![install(
            B,
            StreamKind::Rtp,
            "10.0.0.1:30002",
            entry(
                "10.0.0.1:30000",
                "192.0.2.10:40000",
                "198.51.100.7:6000",
                FLAG_RTP,
                8000,
                1
            ),
            true
        )],
        "back in, same stats slot, as a new episode"
    );
    assert_eq!(
        events(&mut o),
        vec![
            ("b".to_owned(), false, Reason::Injecting),
            ("b".to_owned(), true, Reason::Passthrough)
        ]
    );
}

#[test]
fn transcoding_and_payload_type_mapping_stay_in_userspace() {
    let now = Instant::now();
    let mut o = latched_call(now);
    let mut a = leg("a");
    a.params.transcode = Some(Transcode {
        from: Law::Ulaw,
        to: Law::Alaw,
        payload_type: PayloadType::PCMA,
    });
    o.handle_leg(now, A, a);
    assert_eq!(
        commands(&mut o),
        vec![remove(A, StreamKind::Rtp, "10.0.0.1:30000", 0)]
    );
    assert_eq!(
        events(&mut o),
        vec![("a".to_owned(), false, Reason::Transcoding)]
    );

    let mut a = leg("a");
    a.params.telephone_event = PayloadType::new(96);
    o.handle_leg(now, A, a);
    assert_eq!(
        commands(&mut o),
        vec![remove(B, StreamKind::Rtp, "10.0.0.1:30002", 1)],
        "the mapping concerns both directions"
    );
    assert_eq!(
        events(&mut o),
        vec![("b".to_owned(), false, Reason::TelephoneEventMapping)]
    );
}

#[test]
fn a_relatch_replaces_the_entries_and_strict_source_is_carried() {
    let now = Instant::now();
    let mut o = latched_call(now);
    let mut a = leg("a");
    a.params.strict_source = true;
    o.handle_leg(now, A, a);
    o.handle_latched(
        now,
        &leg_ref("a"),
        StreamKind::Rtp,
        addr("192.0.2.99:40000"),
    );
    assert_eq!(
        commands(&mut o),
        vec![
            install(
                A,
                StreamKind::Rtp,
                "10.0.0.1:30000",
                entry(
                    "10.0.0.1:30002",
                    "198.51.100.7:6000",
                    "192.0.2.10:40000",
                    FLAG_RTP | FLAG_STRICT_SOURCE,
                    8000,
                    0
                ),
                false
            ),
            install(
                A,
                StreamKind::Rtp,
                "10.0.0.1:30000",
                entry(
                    "10.0.0.1:30002",
                    "198.51.100.7:6000",
                    "192.0.2.99:40000",
                    FLAG_RTP | FLAG_STRICT_SOURCE,
                    8000,
                    0
                ),
                false
            ),
            install(
                B,
                StreamKind::Rtp,
                "10.0.0.1:30002",
                entry(
                    "10.0.0.1:30000",
                    "192.0.2.99:40000",
                    "198.51.100.7:6000",
                    FLAG_RTP,
                    8000,
                    1
                ),
                false
            ),
        ]
    );
    assert_eq!(
        events(&mut o),
        vec![],
        "still offloaded: no change to report"
    );
}

#[test]
fn unbridge_and_delete_take_everything_out_and_free_the_slots() {
    let now = Instant::now();
    let mut o = latched_call(now);
    let mut a = leg("a");
    a.params.forward_to = None;
    o.handle_leg(now, A, a);
    assert_eq!(
        commands(&mut o),
        vec![remove(A, StreamKind::Rtp, "10.0.0.1:30000", 0)]
    );
    o.handle_leg_removed(now, B);
    assert_eq!(
        commands(&mut o),
        vec![remove(B, StreamKind::Rtp, "10.0.0.1:30002", 1)]
    );
    assert_eq!(
        events(&mut o),
        vec![
            ("a".to_owned(), false, Reason::NotBridged),
            ("b".to_owned(), false, Reason::Deleted)
        ]
    );
    // b's stats slot (1) is reused by the next leg that needs one.
    let mut c = leg("b");
    c.leg = leg_ref("c");
    c.local_rtp = addr("10.0.0.1:30004");
    o.handle_leg(now, 2, c);
    let mut a = leg("a");
    a.params.forward_to = Some(2);
    o.handle_leg(now, A, a);
    assert_eq!(
        commands(&mut o),
        vec![install(
            A,
            StreamKind::Rtp,
            "10.0.0.1:30000",
            entry(
                "10.0.0.1:30004",
                "192.0.2.20:50000",
                "192.0.2.10:40000",
                FLAG_RTP,
                8000,
                0
            ),
            true
        )],
        "re-bridged: a's RTP goes in towards c's SDP address, a's slot kept"
    );
    o.handle_latched(now, &leg_ref("c"), StreamKind::Rtp, addr("192.0.2.30:7000"));
    assert_eq!(
        commands(&mut o),
        vec![
            install(
                A,
                StreamKind::Rtp,
                "10.0.0.1:30000",
                entry(
                    "10.0.0.1:30004",
                    "192.0.2.30:7000",
                    "192.0.2.10:40000",
                    FLAG_RTP,
                    8000,
                    0
                ),
                false
            ),
            install(
                2,
                StreamKind::Rtp,
                "10.0.0.1:30004",
                entry(
                    "10.0.0.1:30000",
                    "192.0.2.10:40000",
                    "192.0.2.30:7000",
                    FLAG_RTP,
                    8000,
                    1
                ),
                true
            ),
        ],
        "c latched: a follows it, and c's RTP goes in with b's freed slot"
    );
}

#[test]
fn a_muxed_leg_offloads_rtp_and_its_rtcp_stays_on_the_rtp_port() {
    let now = Instant::now();
    let mut o = Offload::new(true);
    let mut a = leg("a");
    a.params.rtcp_mux = true;
    // A muxed peer's RTCP is its RTP address (see sdp::negotiation).
    a.params.expected_rtcp = a.params.expected_rtp;
    o.handle_leg(now, A, a);
    o.handle_leg(now, B, leg("b"));
    o.handle_latched(
        now,
        &leg_ref("a"),
        StreamKind::Rtp,
        addr("192.0.2.10:40000"),
    );
    o.handle_latched(
        now,
        &leg_ref("b"),
        StreamKind::Rtp,
        addr("192.0.2.20:50000"),
    );
    o.handle_latched(
        now,
        &leg_ref("b"),
        StreamKind::Rtcp,
        addr("192.0.2.20:50001"),
    );
    assert_eq!(
        commands(&mut o),
        vec![
            install(
                A,
                StreamKind::Rtp,
                "10.0.0.1:30000",
                entry(
                    "10.0.0.1:30002",
                    "192.0.2.20:50000",
                    "192.0.2.10:40000",
                    FLAG_RTP,
                    8000,
                    0
                ),
                true
            ),
            install(
                B,
                StreamKind::Rtp,
                "10.0.0.1:30002",
                entry(
                    "10.0.0.1:30000",
                    "192.0.2.10:40000",
                    "192.0.2.20:50000",
                    FLAG_RTP,
                    8000,
                    1
                ),
                true
            ),
            install(
                B,
                StreamKind::Rtcp,
                "10.0.0.1:30003",
                entry(
                    "10.0.0.1:30000",
                    "192.0.2.10:40000",
                    "192.0.2.20:50001",
                    FLAG_RTCP,
                    0,
                    2
                ),
                true
            ),
        ],
        "RTP both ways; b's RTCP goes to a's muxed RTP port, from a's RTP socket"
    );
    o.handle_latched(
        now,
        &leg_ref("a"),
        StreamKind::Rtcp,
        addr("192.0.2.10:40000"),
    );
    assert_eq!(
        commands(&mut o),
        vec![],
        "a's RTCP arrives on its RTP port, where the RTP entry passes it up: no entry of its own"
    );
    assert!(o.offloaded(A) && o.offloaded(B));
}

#[test]
fn fast_path_off_and_mixed_families_install_nothing() {
    let now = Instant::now();
    let mut off = Offload::new(false);
    off.handle_leg(now, A, leg("a"));
    off.handle_leg(now, B, leg("b"));
    off.handle_latched(
        now,
        &leg_ref("a"),
        StreamKind::Rtp,
        addr("192.0.2.10:40000"),
    );
    assert_eq!(commands(&mut off), vec![]);

    let mut o = Offload::new(true);
    let mut b = leg("b");
    b.params.expected_rtp = Some(addr("[2001:db8::20]:50000"));
    o.handle_leg(now, A, leg("a"));
    o.handle_leg(now, B, b);
    o.handle_latched(
        now,
        &leg_ref("a"),
        StreamKind::Rtp,
        addr("192.0.2.10:40000"),
    );
    assert_eq!(
        commands(&mut o),
        vec![],
        "IPv4 in, IPv6 out needs userspace"
    );
}

#[test]
fn a_leg_on_an_interface_without_the_programs_stays_in_userspace_while_its_peer_offloads() {
    let now = Instant::now();
    let mut o = Offload::new(true);
    let mut b = leg("b");
    b.kernel = false;
    o.handle_leg(now, A, leg("a"));
    o.handle_leg(now, B, b);
    for (name, peer) in [("a", "192.0.2.10:40000"), ("b", "192.0.2.20:50000")] {
        o.handle_latched(now, &leg_ref(name), StreamKind::Rtp, addr(peer));
    }
    let installed: Vec<Slot> = commands(&mut o)
        .iter()
        .map(|c| match c {
            OffloadCommand::Install { direction, .. } => direction.from,
            OffloadCommand::Remove { direction, .. } => direction.from,
        })
        .collect();
    assert_eq!(
        installed,
        vec![A],
        "only a's packets arrive where the programs are"
    );
    assert!(o.offloaded(A) && !o.offloaded(B));
    assert_eq!(
        events(&mut o),
        vec![("a".to_owned(), true, Reason::Passthrough)],
        "b never went in"
    );
}

#[test]
fn a_candidate_stays_in_userspace_until_locked_and_learning_takes_it_out() {
    let now = Instant::now();
    let mut o = latched_call(now);
    // A re-INVITE settled b's remote description again: the relay learns
    // b's source anew. b's direction leaves the kernel; a's stays, still
    // sending to b's current source.
    o.handle_learning(now, &leg_ref("b"), Some(addr("198.51.100.7:6000")), None);
    assert_eq!(
        commands(&mut o),
        vec![remove(B, StreamKind::Rtp, "10.0.0.1:30002", 1)]
    );
    assert_eq!(
        events(&mut o),
        vec![("b".to_owned(), false, Reason::Learning)]
    );
    assert!(o.offloaded(A) && !o.offloaded(B));
    // A new candidate while learning: a's entry follows it, b's direction
    // does not go in (the kernel never expects an unlocked source).
    o.handle_candidate(
        now,
        &leg_ref("b"),
        StreamKind::Rtp,
        addr("198.51.100.7:6010"),
    );
    assert_eq!(
        commands(&mut o),
        vec![install(
            A,
            StreamKind::Rtp,
            "10.0.0.1:30000",
            entry(
                "10.0.0.1:30002",
                "198.51.100.7:6010",
                "192.0.2.10:40000",
                FLAG_RTP,
                8000,
                0
            ),
            false
        )]
    );
    assert!(!o.offloaded(B));
    assert_eq!(o.latched_of(B), (None, None), "nothing locked to save");
    o.handle_latched(
        now,
        &leg_ref("b"),
        StreamKind::Rtp,
        addr("198.51.100.7:6010"),
    );
    assert!(o.offloaded(B), "locked: b's direction goes back in");
    assert_eq!(o.latched_of(B).0, Some(addr("198.51.100.7:6010")));
}
