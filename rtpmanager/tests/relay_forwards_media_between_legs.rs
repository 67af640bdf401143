//! The manager binary relays media between two fake endpoints on loopback,
//! driven over gRPC exactly as a signaling server drives it.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use switchboard_proto::v1;
use switchboard_proto::v1::rtp_manager_client::RtpManagerClient;
use tonic::transport::Channel;

mod common;

use common::{endpoint, media_addr, recv, sdp, start};

fn rtp(seq: u16, pt: u8, fill: u8) -> Vec<u8> {
    let mut p = vec![
        0x80,
        pt,
        (seq >> 8) as u8,
        seq as u8,
        0,
        0,
        0,
        0,
        0xAB,
        0xCD,
        0,
        1,
    ];
    p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend(std::iter::repeat_n(fill, 160));
    p
}

/// Sets up call `call` between `caller` and `callee` through legs a and b,
/// bridged by a Bridge call; returns the manager's addresses for each side.
async fn bridged_call(
    client: &mut RtpManagerClient<Channel>,
    call: &str,
    caller: &UdpSocket,
    callee: &UdpSocket,
    strict: bool,
) -> (SocketAddr, SocketAddr) {
    let addresses = answered_call(client, call, (caller, callee), strict, false).await;
    common::bridge(client, call).await;
    addresses
}

/// Offers a→b and answers b→a for `call`, the Answer asked to bridge or
/// not; returns the manager's addresses towards the caller and the callee.
async fn answered_call(
    client: &mut RtpManagerClient<Channel>,
    call: &str,
    (caller, callee): (&UdpSocket, &UdpSocket),
    strict: bool,
    bridge: bool,
) -> (SocketAddr, SocketAddr) {
    let offer = client
        .offer(v1::OfferRequest {
            call_id: call.into(),
            leg_id: "a".into(),
            peer_leg_id: "b".into(),
            sdp: sdp(caller.local_addr().expect("addr"), "0 8 101"),
            options: Some(v1::LegOptions {
                strict_source: strict,
                ..Default::default()
            }),
            peer_options: Some(v1::LegOptions {
                strict_source: strict,
                ..Default::default()
            }),
        })
        .await
        .expect("Offer")
        .into_inner();
    let answer = client
        .answer(v1::AnswerRequest {
            call_id: call.into(),
            leg_id: "b".into(),
            peer_leg_id: "a".into(),
            sdp: sdp(callee.local_addr().expect("addr"), "0 101"),
            bridge,
        })
        .await
        .expect("Answer")
        .into_inner();
    (media_addr(&answer.sdp), media_addr(&offer.sdp))
}

#[tokio::test]
async fn bridged_call_relays_rtp_both_ways_and_reports_stats() {
    let (_daemon, mut client) = start(&[], 10).await;
    let (caller, callee) = (endpoint(), endpoint());
    let (to_a, to_b) = bridged_call(&mut client, "call-1", &caller, &callee, true).await;
    assert_ne!(to_a, to_b, "each leg has its own port");

    for seq in [1u16, 2, 3, 5, 6] {
        caller.send_to(&rtp(seq, 0, 0x55), to_a).expect("send");
        let (got, from) = recv(&callee).expect("callee receives");
        assert_eq!(got, rtp(seq, 0, 0x55));
        assert_eq!(
            from, to_b,
            "the callee sees the manager's port of its own leg"
        );
    }
    for seq in 100..103u16 {
        callee.send_to(&rtp(seq, 0, 0x11), to_b).expect("send");
        let (got, from) = recv(&caller).expect("caller receives");
        assert_eq!((got, from), (rtp(seq, 0, 0x11), to_a));
    }

    let stats = client
        .get_stats(v1::GetStatsRequest {
            call_id: "call-1".into(),
            leg_id: String::new(),
        })
        .await
        .expect("GetStats")
        .into_inner();
    let a = stats.legs.iter().find(|l| l.leg_id == "a").expect("leg a");
    let b = stats.legs.iter().find(|l| l.leg_id == "b").expect("leg b");
    assert_eq!(
        a.rtp_in.as_ref().map(|c| (c.packets, c.bytes)),
        Some((5, 5 * 172))
    );
    assert_eq!(a.rtp_lost, 1, "sequence 4 never sent");
    assert_eq!(b.rtp_out.as_ref().map(|c| c.packets), Some(5));
    assert_eq!(b.rtp_in.as_ref().map(|c| c.packets), Some(3));
    assert_eq!(a.rtp_out.as_ref().map(|c| c.packets), Some(3));
    assert!(a.last_packet_ms > 0);
    // The same legs' facts beside their figures, in the same order.
    let info: Vec<(&str, &str, bool)> = stats
        .info
        .iter()
        .map(|i| (i.leg_id.as_str(), i.codec.as_str(), i.offloaded))
        .collect();
    let order: Vec<&str> = stats.legs.iter().map(|l| l.leg_id.as_str()).collect();
    assert_eq!(info.iter().map(|i| i.0).collect::<Vec<_>>(), order);
    assert!(
        info.iter().all(|(_, codec, _)| *codec == "PCMU/8000"),
        "{info:?}"
    );
    assert!(stats
        .info
        .iter()
        .all(|i| !i.local_address.is_empty() && i.rtp_port > 0));

    let list = client
        .list_calls(v1::ListCallsRequest {})
        .await
        .expect("ListCalls")
        .into_inner();
    assert_eq!(list.calls.len(), 1);
    assert_eq!(list.calls[0].legs.len(), 2);
    let health = client
        .health(v1::HealthRequest {})
        .await
        .expect("Health")
        .into_inner();
    assert_eq!(
        (health.active_calls, health.active_legs, health.ports_free),
        (1, 2, 8)
    );

    let deleted = client
        .delete(v1::DeleteRequest {
            call_id: "call-1".into(),
            ..Default::default()
        })
        .await
        .expect("Delete")
        .into_inner();
    assert_eq!(deleted.legs.len(), 2, "final stats of both legs");
    caller.send_to(&rtp(7, 0, 0), to_a).expect("send");
    assert!(recv(&callee).is_none(), "nothing flows after delete");
    let health = client
        .health(v1::HealthRequest {})
        .await
        .expect("Health")
        .into_inner();
    assert_eq!(
        (health.active_calls, health.ports_free),
        (0, 10),
        "ports released"
    );

    let missing = client
        .get_stats(v1::GetStatsRequest {
            call_id: "call-1".into(),
            leg_id: String::new(),
        })
        .await
        .expect_err("deleted call");
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn strict_source_drops_strangers_and_transcoding_changes_law() {
    let (_daemon, mut client) = start(&[], 10).await;
    let (caller, callee, stranger) = (endpoint(), endpoint(), endpoint());
    let (to_a, _) = bridged_call(&mut client, "c", &caller, &callee, true).await;
    caller.send_to(&rtp(1, 0, 1), to_a).expect("send");
    assert!(recv(&callee).is_some());
    stranger.send_to(&rtp(2, 0, 2), to_a).expect("send");
    assert!(recv(&callee).is_none(), "stranger dropped after latching");
    let stats = client
        .get_stats(v1::GetStatsRequest {
            call_id: "c".into(),
            leg_id: "a".into(),
        })
        .await
        .expect("GetStats")
        .into_inner();
    assert_eq!(stats.legs[0].source_mismatch_drops, 1);

    // Two self-answered legs with different laws, bridged: PCMU in, PCMA out.
    let (ulaw_peer, alaw_peer) = (endpoint(), endpoint());
    let a = client
        .offer(v1::OfferRequest {
            call_id: "t".into(),
            leg_id: "a".into(),
            sdp: sdp(ulaw_peer.local_addr().expect("addr"), "0 101"),
            ..Default::default()
        })
        .await
        .expect("Offer a")
        .into_inner();
    client
        .offer(v1::OfferRequest {
            call_id: "t".into(),
            leg_id: "b".into(),
            sdp: sdp(alaw_peer.local_addr().expect("addr"), "8 101"),
            ..Default::default()
        })
        .await
        .expect("Offer b");
    common::bridge(&mut client, "t").await;
    ulaw_peer
        .send_to(&rtp(9, 0, 0xFF), media_addr(&a.sdp))
        .expect("send");
    let (got, _) = recv(&alaw_peer).expect("transcoded packet");
    assert_eq!(got[1], 8, "PCMA payload type");
    assert!(
        got[12..].iter().all(|&b| b == 0xD5),
        "µ-law silence became A-law silence"
    );
}

#[tokio::test]
async fn media_timeout_reaches_watchers_and_bad_requests_get_codes() {
    let (_daemon, mut client) = start(&["--media-timeout", "1"], 4).await;
    let mut watch = client
        .watch(v1::WatchRequest {
            stats_interval_secs: 0,
        })
        .await
        .expect("Watch")
        .into_inner();
    let (caller, callee) = (endpoint(), endpoint());
    let (to_a, _) = bridged_call(&mut client, "quiet", &caller, &callee, false).await;
    caller.send_to(&rtp(1, 0, 0), to_a).expect("send");
    assert!(recv(&callee).is_some());
    let event = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("an event within 5 s")
        .expect("stream ok")
        .expect("stream open");
    match event.event {
        Some(v1::manager_event::Event::MediaTimeout(t)) => {
            assert_eq!((t.call_id.as_str(), t.leg_id.as_str()), ("quiet", "a"));
            assert!(t.idle_secs >= 1);
        }
        other => panic!("expected a media timeout, got {other:?}"),
    }

    let bad = client
        .offer(v1::OfferRequest {
            call_id: "x".into(),
            leg_id: "a".into(),
            sdp: "v=0\r\nm=audio nope RTP/AVP 0\r\n".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad SDP");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(
        bad.message().contains("line"),
        "names the line: {}",
        bad.message()
    );

    // The call had no media since: the manager reaps it.
    let mut reaped = Vec::new();
    while reaped.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(5), watch.message())
            .await
            .expect("the call is reaped within 5 s")
            .expect("stream ok")
            .expect("stream open");
        if let Some(v1::manager_event::Event::Reaped(r)) = event.event {
            reaped.push((r.call_id, r.leg_id));
        }
    }
    reaped.sort();
    assert_eq!(
        reaped,
        [("quiet".into(), "a".into()), ("quiet".into(), "b".into())]
    );

    // 4 pairs, all free again: two calls fit, a third does not.
    for (i, expect_ok) in [(0, true), (1, true), (2, false)] {
        let r = client
            .offer(v1::OfferRequest {
                call_id: format!("full{i}"),
                leg_id: "a".into(),
                peer_leg_id: "b".into(),
                sdp: sdp(caller.local_addr().expect("addr"), "0"),
                ..Default::default()
            })
            .await;
        if expect_ok {
            r.expect("fits");
        } else {
            let e = r.expect_err("pool exhausted");
            assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{}", e.message());
        }
    }
    let health = client
        .health(v1::HealthRequest {})
        .await
        .expect("Health")
        .into_inner();
    assert_eq!(
        (health.active_calls, health.ports_free),
        (2, 0),
        "the failed offer left nothing behind"
    );
}

/// A fake endpoint on another loopback address (a host the call never
/// heard of).
fn endpoint_on(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).expect("bind on another loopback address");
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    s
}

async fn leg_stats(client: &mut RtpManagerClient<Channel>, call: &str, leg: &str) -> v1::LegStats {
    client
        .get_stats(v1::GetStatsRequest {
            call_id: call.into(),
            leg_id: leg.into(),
        })
        .await
        .expect("GetStats")
        .into_inner()
        .legs
        .into_iter()
        .next()
        .expect("the leg's stats")
}

/// The attack: one packet from a stranger to the callee-side port
/// redirected the caller's media to the stranger.
#[tokio::test]
async fn a_strangers_packets_after_the_lock_change_nothing_and_are_counted() {
    let (_daemon, mut client) = start(&["--source-learning-ms", "300"], 10).await;
    let (caller, callee) = (endpoint(), endpoint());
    let stranger = endpoint_on("127.0.20.66");
    let (to_a, to_b) = bridged_call(&mut client, "bleed", &caller, &callee, true).await;
    callee.send_to(&rtp(1, 0, 1), to_b).expect("send");
    assert!(recv(&caller).is_some(), "callee → caller flows");
    caller.send_to(&rtp(1, 0, 1), to_a).expect("send");
    assert!(recv(&callee).is_some(), "caller → callee flows");
    tokio::time::sleep(Duration::from_millis(400)).await;

    for seq in 0..5u16 {
        stranger.send_to(&rtp(seq, 0, 0x66), to_b).expect("send");
    }
    for seq in 2..12u16 {
        caller.send_to(&rtp(seq, 0, 2), to_a).expect("send");
        let (got, from) = recv(&callee).expect("every caller packet still reaches the callee");
        assert_eq!((got, from), (rtp(seq, 0, 2), to_b));
    }
    assert!(recv(&stranger).is_none(), "nothing reaches the stranger");
    let listed = client
        .list_calls(v1::ListCallsRequest {})
        .await
        .expect("ListCalls")
        .into_inner();
    let b_info = listed.calls[0]
        .legs
        .iter()
        .find(|l| l.leg_id == "b")
        .expect("leg b");
    assert_eq!(
        b_info.latched_address,
        callee.local_addr().expect("addr").to_string(),
        "still locked on the callee"
    );
    let b = leg_stats(&mut client, "bleed", "b").await;
    assert_eq!(b.source_mismatch_drops, 5, "each stranger packet counted");
    assert_eq!(
        b.rtp_in.map(|c| c.packets),
        Some(1),
        "the stranger's packets are not the leg's media"
    );
}

/// A phone behind a NAT sends from another address than its SDP says: it
/// is learned during the window and then locked; a packet from the SDP's
/// own address and port would have won at once.
#[tokio::test]
async fn a_nat_rewritten_source_is_learned_then_locked() {
    let (_daemon, mut client) = start(&["--source-learning-ms", "500"], 10).await;
    let (caller, callee_sdp) = (endpoint(), endpoint());
    let callee_nat = endpoint_on("127.0.30.1");
    let late_stranger = endpoint_on("127.0.20.66");
    let (to_a, to_b) = bridged_call(&mut client, "nat", &caller, &callee_sdp, true).await;
    caller.send_to(&rtp(1, 0, 1), to_a).expect("send");
    assert!(
        recv(&callee_sdp).is_some(),
        "to the SDP address until learned"
    );

    callee_nat.send_to(&rtp(1, 0, 7), to_b).expect("send");
    assert_eq!(recv(&caller).map(|p| p.0), Some(rtp(1, 0, 7)));
    caller.send_to(&rtp(2, 0, 1), to_a).expect("send");
    let (got, _) = recv(&callee_nat).expect("media follows the learned NAT address");
    assert_eq!(got, rtp(2, 0, 1));
    tokio::time::sleep(Duration::from_millis(700)).await;

    late_stranger.send_to(&rtp(9, 0, 9), to_b).expect("send");
    caller.send_to(&rtp(3, 0, 1), to_a).expect("send");
    assert_eq!(
        recv(&callee_nat).map(|p| p.0),
        Some(rtp(3, 0, 1)),
        "locked on the NAT address"
    );
    assert!(recv(&late_stranger).is_none());
    let b = leg_stats(&mut client, "nat", "b").await;
    assert_eq!(b.source_mismatch_drops, 1);
}

/// During the window the SDP's address and port beat a stranger that sent
/// first (today's first-packet latch handed the call to the stranger).
#[tokio::test]
async fn the_sdp_address_beats_a_stranger_that_sent_first() {
    let (_daemon, mut client) = start(&["--source-learning-ms", "2000"], 10).await;
    let (caller, callee) = (endpoint(), endpoint());
    let stranger = endpoint_on("127.0.20.66");
    let (to_a, to_b) = bridged_call(&mut client, "race", &caller, &callee, true).await;
    stranger.send_to(&rtp(1, 0, 0x66), to_b).expect("send");
    assert!(
        recv(&caller).is_some(),
        "learning: the first source is a candidate"
    );
    callee.send_to(&rtp(2, 0, 2), to_b).expect("send");
    assert!(recv(&caller).is_some());
    caller.send_to(&rtp(1, 0, 1), to_a).expect("send");
    assert_eq!(
        recv(&callee).map(|p| p.0),
        Some(rtp(1, 0, 1)),
        "the SDP's own address took over and locked"
    );
    stranger.send_to(&rtp(3, 0, 0x66), to_b).expect("send");
    caller.send_to(&rtp(2, 0, 1), to_a).expect("send");
    assert!(recv(&callee).is_some());
    assert!(recv(&stranger).is_none());
    let b = leg_stats(&mut client, "race", "b").await;
    assert_eq!(b.source_mismatch_drops, 1, "the stranger's second packet");
}

/// Call ids in the manager's list.
async fn calls(client: &mut RtpManagerClient<Channel>) -> Vec<String> {
    client
        .list_calls(v1::ListCallsRequest {})
        .await
        .expect("ListCalls")
        .into_inner()
        .calls
        .into_iter()
        .map(|c| c.call_id)
        .collect()
}

/// Polls the call list until `call` is gone; false after `limit`.
async fn gone_within(client: &mut RtpManagerClient<Channel>, call: &str, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if !calls(client).await.iter().any(|c| c == call) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn an_answered_call_without_media_is_reaped_after_the_media_timeout() {
    let (_daemon, mut client) = start(&["--media-timeout", "1"], 4).await;
    let (caller, callee) = (endpoint(), endpoint());
    bridged_call(&mut client, "orphan", &caller, &callee, true).await;
    assert_eq!(calls(&mut client).await, ["orphan"]);
    assert!(
        gone_within(&mut client, "orphan", Duration::from_secs(4)).await,
        "reaped about a second after the answer"
    );
    let health = client
        .health(v1::HealthRequest {})
        .await
        .expect("Health")
        .into_inner();
    assert_eq!(health.ports_free, 4, "its ports are free again");
}

#[tokio::test]
async fn a_strangers_packets_do_not_keep_a_call_alive() {
    let (_daemon, mut client) = start(&["--media-timeout", "1"], 4).await;
    let (caller, callee) = (endpoint(), endpoint());
    let stranger = endpoint_on("127.0.20.66");
    let (to_a, to_b) = bridged_call(&mut client, "stray", &caller, &callee, true).await;
    caller.send_to(&rtp(1, 0, 1), to_a).expect("send");
    callee.send_to(&rtp(1, 0, 1), to_b).expect("send");
    assert!(
        recv(&callee).is_some() && recv(&caller).is_some(),
        "both locked"
    );
    // The peers fall silent; a stranger keeps sending to both ports.
    let feeding = tokio::spawn(async move {
        for seq in 0..60u16 {
            let _ = stranger.send_to(&rtp(seq, 0, 0x66), to_a);
            let _ = stranger.send_to(&rtp(seq, 0, 0x66), to_b);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert!(
        gone_within(&mut client, "stray", Duration::from_secs(3)).await,
        "reaped although a stranger kept sending"
    );
    feeding.abort();
}

#[tokio::test]
async fn a_call_on_hold_gets_the_longer_hold_timeout() {
    let (_daemon, mut client) = start(&["--media-timeout", "1", "--hold-timeout", "3"], 4).await;
    let (caller, callee) = (endpoint(), endpoint());
    let held = |s: String, dir: &str| s.replace("a=sendrecv", dir);
    let offer = client
        .offer(v1::OfferRequest {
            call_id: "held".into(),
            leg_id: "a".into(),
            peer_leg_id: "b".into(),
            sdp: held(sdp(caller.local_addr().expect("addr"), "0"), "a=sendonly"),
            ..Default::default()
        })
        .await
        .expect("Offer")
        .into_inner();
    assert!(offer.sdp.contains("a=sendonly"), "{}", offer.sdp);
    client
        .answer(v1::AnswerRequest {
            call_id: "held".into(),
            leg_id: "b".into(),
            peer_leg_id: "a".into(),
            sdp: held(sdp(callee.local_addr().expect("addr"), "0"), "a=recvonly"),
            bridge: false,
        })
        .await
        .expect("Answer");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        calls(&mut client).await,
        ["held"],
        "on hold, silence past the media timeout is fine"
    );
    assert!(
        gone_within(&mut client, "held", Duration::from_secs(3)).await,
        "reaped after the hold timeout"
    );
}

#[tokio::test]
async fn an_offer_beyond_the_legs_a_call_may_hold_is_refused() {
    let (_daemon, mut client) = start(&["--max-legs-per-call", "3"], 10).await;
    let peer = endpoint();
    let offer = |leg: &str, peer_leg: &str| v1::OfferRequest {
        call_id: "greedy".into(),
        leg_id: leg.into(),
        peer_leg_id: peer_leg.into(),
        sdp: sdp(peer.local_addr().expect("addr"), "0"),
        ..Default::default()
    };
    client.offer(offer("a", "b")).await.expect("two legs");
    let refused = client
        .offer(offer("c", "d"))
        .await
        .expect_err("four legs are one too many");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("--max-legs-per-call"),
        "names the limit: {}",
        refused.message()
    );
    client
        .offer(offer("a", "c"))
        .await
        .expect("a third leg fits");
    let refused = client
        .offer(offer("d", "a"))
        .await
        .expect_err("a fourth does not");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    client
        .offer(offer("b", "c"))
        .await
        .expect("a re-offer between held legs adds none");
    let health = client
        .health(v1::HealthRequest {})
        .await
        .expect("Health")
        .into_inner();
    assert_eq!(
        (health.active_legs, health.ports_free),
        (3, 7),
        "the refused offers took no port"
    );
}

#[tokio::test]
async fn an_answer_asked_to_bridge_relays_without_a_bridge_call() {
    let (_daemon, mut client) = start(&[], 10).await;
    let health = client
        .health(v1::HealthRequest {})
        .await
        .expect("Health")
        .into_inner();
    assert!(health.answer_bridges, "the manager says Answer can bridge");

    // Answered, not bridged: nothing is relayed yet.
    let (caller, callee) = (endpoint(), endpoint());
    let (to_a, _) = answered_call(&mut client, "unbridged", (&caller, &callee), false, false).await;
    caller.send_to(&rtp(1, 0, 0x55), to_a).expect("send");
    assert_eq!(recv(&callee), None, "not relayed before a bridge");

    // Answered with `bridge`: relayed both ways at once.
    let (caller, callee) = (endpoint(), endpoint());
    let (to_a, to_b) = answered_call(&mut client, "bridged", (&caller, &callee), false, true).await;
    caller.send_to(&rtp(1, 0, 0x55), to_a).expect("send");
    assert_eq!(recv(&callee), Some((rtp(1, 0, 0x55), to_b)));
    callee.send_to(&rtp(7, 0, 0x11), to_b).expect("send");
    assert_eq!(recv(&caller), Some((rtp(7, 0, 0x11), to_a)));
}
