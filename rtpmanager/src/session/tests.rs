//! The session table driven through whole exchanges, asserting the SDP it
//! produces and the relay params it derives.

use crate::media::rtp::PayloadType;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use super::*;

const OFFER: &str = "v=0\r\no=alice 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\n";
const ANSWER_PCMA: &str =
    "v=0\r\no=bob 5 1 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\n\
m=audio 50000 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";

/// A free range of 10 pairs on loopback, found by probing. Tests run in
/// parallel, so each starts its search at a range of its own: two tables
/// probing the same range before either binds would take each other's ports.
fn pool() -> PortPool {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let start = 46000 + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 200 * 40;
    for base in (start..56000).step_by(40) {
        let free = (base..base + 20).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok());
        if free {
            return PortPool::new(IpAddr::V4(Ipv4Addr::LOCALHOST), base, base + 19).expect("pool");
        }
    }
    panic!("no free port range on loopback");
}

fn config() -> TableConfig {
    TableConfig {
        advertise_v4: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)),
        advertise_v6: Some("2001:db8::5".parse().expect("v6")),
        media_timeout: Duration::from_secs(30),
        hold_timeout: Duration::from_secs(3600),
        source_learning: Duration::from_secs(3),
        max_legs_per_call: 4,
    }
}

fn table() -> SessionTable {
    SessionTable::new(config(), pool())
}

fn input<'a>(call: &'a str, leg: &'a str, peer: &'a str, sdp: &'a str) -> OfferInput<'a> {
    OfferInput {
        call,
        leg,
        peer,
        sdp,
        options: LegOptions::default(),
        peer_options: LegOptions::default(),
    }
}

fn updates(commands: &[RelayCommand]) -> Vec<(Slot, LegParams)> {
    commands
        .iter()
        .filter_map(|c| match c {
            RelayCommand::Update { slot, params } => Some((*slot, params.clone())),
            _ => None,
        })
        .collect()
}

fn port_of(sdp: &str) -> u16 {
    sdp.lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|p| p.parse().ok())
        .expect("m=audio port")
}

#[test]
fn relayed_offer_answer_then_bridge_yields_forwarding_params() {
    let mut t = table();
    let now = Instant::now();
    let offer = t.offer(now, input("c1", "a", "b", OFFER)).expect("offer");
    assert_eq!(
        offer
            .commands
            .iter()
            .filter(|c| matches!(c, RelayCommand::Add { .. }))
            .count(),
        2,
        "two legs created"
    );
    assert!(
        offer.sdp.contains("c=IN IP4 203.0.113.5\r\n"),
        "{}",
        offer.sdp
    );
    assert!(
        offer.sdp.contains("m=audio ") && offer.sdp.contains(" RTP/AVP 0 8 101\r\n"),
        "codec order kept: {}",
        offer.sdp
    );
    assert!(offer.sdp.contains("a=rtpmap:101 telephone-event/8000\r\n"));
    assert_eq!(
        port_of(&offer.sdp),
        offer.leg.rtp_port,
        "advertises leg b's port"
    );
    assert_eq!(offer.leg.leg_id, "b");
    assert_eq!(t.calls(), 1);
    assert_eq!(t.legs(), 2);
    assert_eq!(t.ports_free(), 8);

    let answer = t.answer(now, "c1", "b", "a", ANSWER_PCMA).expect("answer");
    assert_eq!(answer.leg.leg_id, "a");
    assert_eq!(port_of(&answer.sdp), answer.leg.rtp_port);
    assert!(
        answer.sdp.contains("m=audio") && answer.sdp.contains("RTP/AVP 8 101"),
        "{}",
        answer.sdp
    );
    let params = updates(&answer.commands);
    let a = params
        .iter()
        .find(|(s, _)| *s == answer.leg.slot)
        .expect("a's params")
        .1
        .clone();
    assert_eq!(
        a.expected_rtp,
        Some("192.0.2.10:40000".parse::<SocketAddr>().expect("addr"))
    );
    assert_eq!(
        a.expected_rtcp,
        Some("192.0.2.10:40001".parse::<SocketAddr>().expect("addr"))
    );
    assert_eq!(a.forward_to, None, "not bridged yet");
    let b_slot = offer.leg.slot;
    let b = params
        .iter()
        .find(|(s, _)| *s == b_slot)
        .expect("b's params")
        .1
        .clone();
    assert_eq!(
        b.expected_rtp,
        Some("192.0.2.20:50000".parse::<SocketAddr>().expect("addr"))
    );

    let bridged = updates(&t.bridge(now, "c1", "a", "b").expect("bridge"));
    let a = bridged
        .iter()
        .find(|(s, _)| *s == answer.leg.slot)
        .expect("a")
        .1
        .clone();
    let b = bridged
        .iter()
        .find(|(s, _)| *s == b_slot)
        .expect("b")
        .1
        .clone();
    assert_eq!(a.forward_to, Some(b_slot));
    assert_eq!(b.forward_to, Some(answer.leg.slot));
    assert_eq!(a.transcode, None, "both legs settled on PCMA");
    assert_eq!(a.media_timeout, Some(Duration::from_secs(30)));

    let unbridged = updates(&t.unbridge(now, "c1", "a", "b").expect("unbridge"));
    assert!(unbridged.iter().all(|(_, p)| p.forward_to.is_none()));

    let removed = t.delete("c1", "").expect("delete call");
    assert_eq!(
        removed
            .iter()
            .filter(|c| matches!(c, RelayCommand::Remove { .. }))
            .count(),
        2
    );
    assert_eq!((t.calls(), t.ports_free()), (0, 10), "ports released");
}

#[test]
fn reoffer_with_the_same_sdp_keeps_the_origin_version() {
    let mut t = table();
    let now = Instant::now();
    let first = t.offer(now, input("c1", "a", "b", OFFER)).expect("offer");
    let again = t
        .offer(now, input("c1", "a", "b", OFFER))
        .expect("re-offer");
    let origin = |sdp: &str| {
        sdp.lines()
            .find(|l| l.starts_with("o="))
            .map(str::to_owned)
            .expect("o=")
    };
    assert_eq!(
        origin(&first.sdp),
        origin(&again.sdp),
        "unchanged body, unchanged version"
    );
    assert!(
        again
            .commands
            .iter()
            .all(|c| !matches!(c, RelayCommand::Add { .. })),
        "no new legs"
    );
    let held = OFFER.replace("a=sendrecv", "a=sendonly");
    let hold = t.offer(now, input("c1", "a", "b", &held)).expect("hold");
    assert_ne!(
        origin(&first.sdp),
        origin(&hold.sdp),
        "a changed body moves the version"
    );
    assert!(hold.sdp.contains("a=sendonly"), "{}", hold.sdp);
}

#[test]
fn manager_answers_itself_when_there_is_no_peer_leg() {
    let mut t = table();
    let r = t
        .offer(Instant::now(), input("c1", "a", "", OFFER))
        .expect("self answer");
    assert_eq!(r.leg.leg_id, "a");
    assert!(
        r.sdp.contains(" RTP/AVP 0 101\r\n"),
        "first common codec PCMU plus telephone-event: {}",
        r.sdp
    );
    assert_eq!(r.leg.codec.as_deref(), Some("PCMU/8000"));
    let (_, negotiation) = t.leg_media("c1", "a").expect("leg");
    assert_eq!(
        negotiation
            .expect("negotiated")
            .telephone_event
            .map(|pt| pt.get()),
        Some(101)
    );
}

#[test]
fn different_laws_on_the_two_legs_transcode_both_ways() {
    let mut t = table();
    let now = Instant::now();
    let offer_pcmu = OFFER.replace("RTP/AVP 0 8 101", "RTP/AVP 0 101");
    t.offer(now, input("c1", "a", "", &offer_pcmu)).expect("a");
    let offer_pcma = OFFER.replace("RTP/AVP 0 8 101", "RTP/AVP 8 101");
    t.offer(now, input("c1", "b", "", &offer_pcma)).expect("b");
    let views = t.leg_views("c1", "").expect("legs");
    let bridged = updates(&t.bridge(now, "c1", "a", "b").expect("bridge"));
    let slot = |id: &str| views.iter().find(|v| v.leg_id == id).expect("leg").slot;
    let a = bridged
        .iter()
        .find(|(s, _)| *s == slot("a"))
        .expect("a")
        .1
        .clone();
    let b = bridged
        .iter()
        .find(|(s, _)| *s == slot("b"))
        .expect("b")
        .1
        .clone();
    assert_eq!(
        a.transcode,
        Some(Transcode {
            from: Law::Ulaw,
            to: Law::Alaw,
            payload_type: PayloadType::PCMA
        })
    );
    assert_eq!(
        b.transcode,
        Some(Transcode {
            from: Law::Alaw,
            to: Law::Ulaw,
            payload_type: PayloadType::PCMU
        })
    );
}

#[test]
fn errors_map_to_their_kind() {
    let mut t = table();
    let now = Instant::now();
    assert!(matches!(
        t.offer(now, input("", "a", "b", OFFER)),
        Err(SessionError::InvalidArgument(_))
    ));
    assert!(matches!(
        t.offer(now, input("c", "a", "a", OFFER)),
        Err(SessionError::InvalidArgument(_))
    ));
    let bad = t.offer(now, input("c", "a", "b", "v=0\r\nm=audio x RTP/AVP 0\r\n"));
    assert!(matches!(bad, Err(SessionError::Sdp(_))), "{bad:?}");
    assert_eq!(t.calls(), 0, "a bad offer creates nothing");
    assert!(matches!(
        t.answer(now, "nope", "b", "a", ANSWER_PCMA),
        Err(SessionError::NotFound(_))
    ));
    t.offer(now, input("c", "a", "", OFFER))
        .expect("self answer");
    assert!(matches!(
        t.answer(now, "c", "a", "b", ANSWER_PCMA),
        Err(SessionError::FailedPrecondition(_)) | Err(SessionError::NotFound(_))
    ));
    assert!(matches!(
        t.bridge(now, "c", "a", "zz"),
        Err(SessionError::NotFound(_))
    ));
    assert!(matches!(
        t.delete("c", "zz"),
        Err(SessionError::NotFound(_))
    ));
    t.set_draining(true);
    assert!(matches!(
        t.offer(now, input("new", "a", "b", OFFER)),
        Err(SessionError::Draining)
    ));
    t.offer(now, input("c", "a", "", OFFER))
        .expect("existing calls go on while draining");
}

#[test]
fn exhaustion_is_reported_and_nothing_leaks() {
    let mut t = table();
    let now = Instant::now();
    for i in 0..5 {
        t.offer(now, input(&format!("c{i}"), "a", "b", OFFER))
            .expect("fits");
    }
    let err = t
        .offer(now, input("c9", "a", "b", OFFER))
        .expect_err("pool is full");
    assert!(matches!(err, SessionError::Exhausted(_)), "{err}");
    assert!(err.to_string().contains("no free RTP port pair"), "{err}");
    for i in 0..5 {
        t.delete(&format!("c{i}"), "").expect("delete");
    }
    assert_eq!(t.ports_free(), 10);
}

#[test]
fn idle_legs_are_those_without_control_or_media() {
    let mut t = table();
    let start = Instant::now();
    t.offer(start, input("c1", "a", "", OFFER)).expect("offer");
    assert!(t
        .idle_legs(start + Duration::from_secs(5), 0, Duration::from_secs(10))
        .is_empty());
    let idle = t.idle_legs(start + Duration::from_secs(11), 0, Duration::from_secs(10));
    assert_eq!(idle, vec![("c1".to_owned(), "a".to_owned())]);
}

#[test]
fn saved_calls_are_restored_on_the_same_ports_with_the_same_params() {
    let mut t = table();
    let now = Instant::now();
    let offer = t.offer(now, input("c1", "a", "b", OFFER)).expect("offer");
    let answer = t.answer(now, "c1", "b", "a", ANSWER_PCMA).expect("answer");
    let bridged = updates(&t.bridge(now, "c1", "a", "b").expect("bridge"));
    let saved = t.saved();
    let json = serde_json::to_string(&saved).expect("serialize");
    let read: persist::SavedState = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(read, saved, "the JSON round trip is exact");
    let ports: Vec<u16> = saved.calls[0].legs.iter().map(|l| l.rtp_port).collect();
    assert_eq!(
        ports,
        vec![port_of(&answer.sdp), port_of(&offer.sdp)],
        "legs a and b with the ports their peers were given"
    );
    // The old run ends: its sockets close with the table and the commands.
    drop((t, offer, answer));

    let base = *ports.iter().min().expect("two ports");
    let pool = PortPool::new(IpAddr::V4(Ipv4Addr::LOCALHOST), base, base + 19).expect("pool");
    let mut restored = SessionTable::new(config(), pool);
    let (commands, failed) = restored.restore(now, &read);
    assert!(failed.is_empty(), "every leg came back: {failed:?}");
    let added: Vec<Slot> = commands
        .iter()
        .filter_map(|c| match c {
            RelayCommand::Add { slot, .. } => Some(*slot),
            _ => None,
        })
        .collect();
    assert_eq!(added.len(), 2, "both legs added to the relay");
    let mut params = updates(&commands);
    params.sort_by_key(|(slot, _)| *slot);
    let mut want = bridged.clone();
    want.sort_by_key(|(slot, _)| *slot);
    assert_eq!(params, want, "the relay params of the bridged call again");
    assert_eq!(
        restored.saved(),
        read,
        "the restored table saves the same state"
    );
    let views = restored.leg_views("c1", "").expect("the call is listed");
    assert_eq!(
        views
            .iter()
            .map(|v| (
                v.leg_id.as_str(),
                v.rtp_port,
                v.bridged_to.clone(),
                v.codec.clone()
            ))
            .collect::<Vec<_>>(),
        vec![
            (
                "a",
                ports[0],
                Some("b".to_owned()),
                Some("PCMA/8000".to_owned())
            ),
            (
                "b",
                ports[1],
                Some("a".to_owned()),
                Some("PCMA/8000".to_owned())
            )
        ]
    );
    let new_leg = restored
        .offer(now, input("c2", "x", "", OFFER))
        .expect("a new call");
    assert!(
        !ports.contains(&new_leg.leg.rtp_port) && !added.contains(&new_leg.leg.slot),
        "new legs get other ports and slots"
    );
}

#[test]
fn ipv6_offerers_get_the_ipv6_advertised_address() {
    let mut t = table();
    let now = Instant::now();
    let offer_v6 = OFFER.replace("IN IP4 192.0.2.10", "IN IP6 2001:db8::10");
    let answer = t
        .offer(now, input("c6", "a", "", &offer_v6))
        .expect("self answer");
    assert!(
        answer.sdp.contains("c=IN IP6 2001:db8::5\r\n"),
        "{}",
        answer.sdp
    );
    assert_eq!(answer.leg.local_address.to_string(), "2001:db8::5");

    // Relayed without a family for the callee: its offer keeps the
    // offerer's family.
    let offer = t
        .offer(now, input("r6", "a", "b", &offer_v6))
        .expect("offer");
    assert!(
        offer.sdp.contains("c=IN IP6 2001:db8::5\r\n"),
        "{}",
        offer.sdp
    );
    let answer_v6 = ANSWER_PCMA.replace("IN IP4 192.0.2.20", "IN IP6 2001:db8::20");
    let back = t.answer(now, "r6", "b", "a", &answer_v6).expect("answer");
    assert!(
        back.sdp.contains("c=IN IP6 2001:db8::5\r\n"),
        "{}",
        back.sdp
    );
}

#[test]
fn the_peer_legs_family_picks_the_address_its_offer_advertises() {
    let mut t = table();
    let now = Instant::now();
    let offer_v6 = OFFER.replace("IN IP4 192.0.2.10", "IN IP6 2001:db8::10");
    // An IPv6 caller, an IPv4 callee (a trunk): the callee's offer is IPv4,
    // the caller's answer IPv6.
    let mut relayed = input("f1", "a", "b", &offer_v6);
    relayed.peer_options.family = Some(Family::V4);
    let offer = t.offer(now, relayed).expect("offer");
    assert!(
        offer.sdp.contains("c=IN IP4 203.0.113.5\r\n"),
        "{}",
        offer.sdp
    );
    assert_eq!(offer.leg.leg_id, "b");
    let back = t.answer(now, "f1", "b", "a", ANSWER_PCMA).expect("answer");
    assert!(
        back.sdp.contains("c=IN IP6 2001:db8::5\r\n"),
        "{}",
        back.sdp
    );

    // And the other way round.
    let mut relayed = input("f2", "a", "b", OFFER);
    relayed.peer_options.family = Some(Family::V6);
    let offer = t.offer(now, relayed).expect("offer");
    assert!(
        offer.sdp.contains("c=IN IP6 2001:db8::5\r\n"),
        "{}",
        offer.sdp
    );
    // A re-offer without options keeps the leg's family.
    let reoffer = OFFER.replace("o=alice 1 1", "o=alice 1 2");
    let offer = t
        .offer(now, input("f2", "a", "b", &reoffer))
        .expect("re-offer");
    assert!(
        offer.sdp.contains("c=IN IP6 2001:db8::5\r\n"),
        "{}",
        offer.sdp
    );
}

fn params_of(commands: &[RelayCommand], slot: Slot) -> LegParams {
    updates(commands)
        .into_iter()
        .rev()
        .find(|(s, _)| *s == slot)
        .expect("params of the leg")
        .1
}

#[test]
fn each_settled_exchange_restarts_learning_on_both_legs() {
    let mut t = table();
    let now = Instant::now();
    let offer = t.offer(now, input("c1", "a", "b", OFFER)).expect("offer");
    let b_slot = offer.leg.slot;
    let answer = t.answer(now, "c1", "b", "a", ANSWER_PCMA).expect("answer");
    let a_slot = answer.leg.slot;
    let first = (
        params_of(&answer.commands, a_slot).learning_epoch,
        params_of(&answer.commands, b_slot).learning_epoch,
    );
    assert_eq!(
        params_of(&answer.commands, a_slot).source_learning,
        Duration::from_secs(3),
        "the manager's window"
    );
    let bridged = t.bridge(now, "c1", "a", "b").expect("bridge");
    assert_eq!(
        params_of(&bridged, a_slot).learning_epoch,
        first.0,
        "a bridge settles no remote description"
    );
    // A re-INVITE from the callee: offer on b, answer on a.
    t.offer(now, input("c1", "b", "a", ANSWER_PCMA))
        .expect("re-offer");
    let reanswer = t.answer(now, "c1", "a", "b", OFFER).expect("re-answer");
    assert_ne!(
        params_of(&reanswer.commands, a_slot).learning_epoch,
        first.0
    );
    assert_ne!(
        params_of(&reanswer.commands, b_slot).learning_epoch,
        first.1
    );
}

/// A leg's last packet, as the relay (or the kernel's tick) records it.
fn heard(t: &SessionTable, call: &str, leg: &str, at_ms: u64) {
    let (shared, _) = t.leg_media(call, leg).expect("leg");
    shared
        .counters
        .last_packet_ms
        .store(at_ms, std::sync::atomic::Ordering::Relaxed);
}

#[test]
fn an_answered_call_times_out_when_every_leg_is_silent() {
    let mut t = table();
    let t0 = Instant::now();
    let ms0 = 1_000_000;
    t.offer(t0, input("c1", "a", "b", OFFER)).expect("offer");
    assert_eq!(
        t.media_timeouts(t0 + Duration::from_secs(100), ms0 + 100_000),
        vec![],
        "a call never answered is the idle reaper's"
    );
    t.answer(t0, "c1", "b", "a", ANSWER_PCMA).expect("answer");
    let at = |s: u64| (t0 + Duration::from_secs(s), ms0 + s * 1000);
    let (now, now_ms) = at(29);
    assert_eq!(t.media_timeouts(now, now_ms), vec![]);
    // b spoke at 20 s: the call lives until b is silent for 30 s too.
    heard(&t, "c1", "b", ms0 + 20_000);
    let (now, now_ms) = at(45);
    assert_eq!(t.media_timeouts(now, now_ms), vec![], "b spoke 25 s ago");
    let (now, now_ms) = at(50);
    assert_eq!(
        t.media_timeouts(now, now_ms),
        vec![TimedOut {
            call_id: "c1".into(),
            legs: vec![
                ("a".into(), Duration::from_secs(50)),
                ("b".into(), Duration::from_secs(30))
            ],
        }]
    );
}

#[test]
fn a_call_on_hold_gets_the_hold_timeout() {
    let mut t = table();
    let t0 = Instant::now();
    let sendonly = OFFER.replace("a=sendrecv", "a=sendonly");
    let recvonly = ANSWER_PCMA.replace("a=sendrecv", "a=recvonly");
    t.offer(t0, input("c1", "a", "b", &sendonly))
        .expect("offer");
    let answer = t.answer(t0, "c1", "b", "a", &recvonly).expect("answer");
    assert_eq!(
        params_of(&answer.commands, answer.leg.slot).media_timeout,
        Some(Duration::from_secs(3600)),
        "the relay's own timeout event waits as long"
    );
    let later = Duration::from_secs(600);
    assert_eq!(t.media_timeouts(t0 + later, 600_000), vec![]);
    let hours = Duration::from_secs(3600);
    assert_eq!(t.media_timeouts(t0 + hours, 3_600_000).len(), 1);
    // Resumed: back to the media timeout.
    t.offer(t0 + hours, input("c1", "a", "b", OFFER))
        .expect("re-offer");
    t.answer(t0 + hours, "c1", "b", "a", ANSWER_PCMA)
        .expect("re-answer");
    let resumed = t0 + hours + Duration::from_secs(31);
    assert_eq!(t.media_timeouts(resumed, 3_631_000).len(), 1);
}

#[test]
fn an_offer_beyond_the_legs_per_call_is_refused_without_leaving_a_leg() {
    let mut t = table();
    let now = Instant::now();
    t.offer(now, input("c1", "a", "b", OFFER))
        .expect("two legs");
    t.offer(now, input("c1", "c", "d", OFFER))
        .expect("four legs");
    let err = t
        .offer(now, input("c1", "e", "a", OFFER))
        .expect_err("a fifth leg");
    assert!(matches!(err, SessionError::Exhausted(_)), "{err}");
    assert_eq!((t.legs(), t.ports_free()), (4, 6));
    t.offer(now, input("c1", "a", "d", OFFER))
        .expect("legs it holds may exchange offers");
}

/// A table with a `public` interface on a device no route uses and a
/// `private` one on loopback, each with its own range and addresses.
fn two_sided() -> SessionTable {
    let interface = |name: &str, device: &str, v4: [u8; 4]| TableInterface {
        name: name.to_owned(),
        device: device.to_owned(),
        advertise_v4: Some(IpAddr::V4(Ipv4Addr::from(v4))),
        advertise_v6: None,
        pool: pool(),
    };
    SessionTable::with_interfaces(
        config(),
        vec![
            interface("public", "sbnodevice0", [203, 0, 113, 5]),
            interface("private", "lo", [10, 0, 0, 1]),
        ],
    )
}

fn range_of(t: &SessionTable, name: &str) -> (u16, u16) {
    t.interfaces()
        .iter()
        .find(|i| i.name == name)
        .map(|i| i.pool.range())
        .expect("interface")
}

#[test]
fn each_leg_advertises_the_address_and_ports_of_the_interface_signaling_names() {
    let mut t = two_sided();
    let now = Instant::now();
    let mut offer_input = input("c1", "a", "b", OFFER);
    offer_input.options.interface = Some("public".into());
    offer_input.peer_options.interface = Some("private".into());
    let offer = t.offer(now, offer_input).expect("offer");
    assert!(offer.sdp.contains("c=IN IP4 10.0.0.1\r\n"), "{}", offer.sdp);
    assert_eq!(offer.leg.interface, "private");
    assert_eq!(
        offer.leg.local_address,
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))
    );
    let (min, max) = range_of(&t, "private");
    assert!(
        (min..=max).contains(&port_of(&offer.sdp)),
        "b's port is private's"
    );

    let answer = t.answer(now, "c1", "b", "a", ANSWER_PCMA).expect("answer");
    assert!(
        answer.sdp.contains("c=IN IP4 203.0.113.5\r\n"),
        "{}",
        answer.sdp
    );
    assert_eq!(answer.leg.interface, "public");
    let (min, max) = range_of(&t, "public");
    assert!(
        (min..=max).contains(&port_of(&answer.sdp)),
        "a's port is public's"
    );
}

#[test]
fn without_a_name_the_route_to_the_offerer_picks_its_interface_and_an_unknown_name_is_refused() {
    let mut t = two_sided();
    let now = Instant::now();
    // The offerer is on loopback: the route to it leaves by lo, the
    // private interface's device. The callee's leg has no SDP yet: the
    // first interface.
    let loopback_offer = OFFER.replace("192.0.2.10", "127.0.0.7");
    t.offer(now, input("c1", "a", "b", &loopback_offer))
        .expect("offer");
    let views = |t: &SessionTable, leg: &str| t.leg_views("c1", leg).expect("leg").remove(0);
    assert_eq!(views(&t, "a").interface, "private");
    assert_eq!(views(&t, "b").interface, "public");

    let mut bad = input("c2", "a", "b", OFFER);
    bad.peer_options.interface = Some("dmz".into());
    let free = t.ports_free();
    let err = t.offer(now, bad).expect_err("unknown interface");
    assert!(matches!(err, SessionError::InvalidArgument(_)), "{err:?}");
    assert!(err.to_string().contains("\"dmz\""), "{err}");
    assert_eq!(t.ports_free(), free, "the half-made call's leg is released");
    assert!(t.leg_views("c2", "a").is_err(), "no half-made call");
}
