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
/// bridged; returns the manager's addresses for each side.
async fn bridged_call(
    client: &mut RtpManagerClient<Channel>,
    call: &str,
    caller: &UdpSocket,
    callee: &UdpSocket,
    strict: bool,
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
            peer_options: None,
        })
        .await
        .expect("Offer")
        .into_inner();
    let towards_callee = media_addr(&offer.sdp);
    let answer = client
        .answer(v1::AnswerRequest {
            call_id: call.into(),
            leg_id: "b".into(),
            peer_leg_id: "a".into(),
            sdp: sdp(callee.local_addr().expect("addr"), "0 101"),
        })
        .await
        .expect("Answer")
        .into_inner();
    let towards_caller = media_addr(&answer.sdp);
    client
        .bridge(v1::BridgeRequest {
            call_id: call.into(),
            leg_a: "a".into(),
            leg_b: "b".into(),
        })
        .await
        .expect("Bridge");
    (towards_caller, towards_callee)
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
    client
        .bridge(v1::BridgeRequest {
            call_id: "t".into(),
            leg_a: "a".into(),
            leg_b: "b".into(),
        })
        .await
        .expect("Bridge");
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

    // 4 pairs: "quiet" holds 2, a third and fourth fit, a fifth does not.
    for (i, expect_ok) in [(0, true), (1, false)] {
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
        health.active_calls, 2,
        "the failed offer left nothing behind"
    );
}
