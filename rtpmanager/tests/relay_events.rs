//! What the control side learns from the relay, with the service
//! in-process and the fast path off.
//!
//! A burst of latches larger than the relay's event channel: the control
//! side misses events (`relay events lagged`), yet every locked source must
//! reach the offload decision (which tracks latches with the fast path
//! off too), or the stream would stay in userspace for the whole call.
//! Nothing reads the relay's events while 700 calls (1400 legs) latch;
//! then the events are forwarded.
//!
//! Calls deleted while their media flowed: the control side does not wait
//! for the relay's workers to let go of the legs, yet the relay's totals
//! never go down and every Delete answers with its legs' final counts.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use switchboard_proto::v1;
use switchboard_proto::v1::rtp_manager_server::RtpManager;
use switchboard_rtpmanager::config::FastPathRequest;
use switchboard_rtpmanager::driver::Driver;
use switchboard_rtpmanager::engine::{Engine, EngineConfig};
use switchboard_rtpmanager::fastpath::{self, FastPath, Settings};
use switchboard_rtpmanager::grpc::{ControlService, ManagerInfo};
use switchboard_rtpmanager::ports::{PortPool, SocketBinder};
use switchboard_rtpmanager::relay::Relay;
use switchboard_rtpmanager::session::{SessionTable, TableConfig};
use tonic::Request;

mod common;

const CALLS: u16 = 700;

fn sdp(port: u16) -> String {
    format!(
        "v=0\r\no=peer 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio {port} RTP/AVP 0\r\na=sendrecv\r\n"
    )
}

fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
    p.extend_from_slice(&[0xd5; 160]);
    p
}

/// Each leg holds an RTP and an RTCP socket: 2800 descriptors.
fn raise_open_files() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}

fn service(min: u16, max: u16) -> ControlService {
    let fast_path = FastPath::start(&Settings {
        request: FastPathRequest::Off,
        interface: "lo".into(),
        port_min: min,
        port_max: max,
        next_hop_cache: fastpath::DEFAULT_NEXT_HOP_CACHE,
    });
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let sockets = SocketBinder::default();
    let table = SessionTable::new(
        TableConfig {
            advertise_v4: localhost,
            advertise_v6: None,
            media_timeout: Duration::from_secs(60),
            hold_timeout: Duration::from_secs(3600),
            source_learning: Duration::from_millis(0),
            max_legs_per_call: 2,
        },
        PortPool::with_binder(localhost, min, max, Box::new(sockets.clone())).expect("pool"),
    );
    let driver = Driver::new(
        Engine::new(table, EngineConfig::default()),
        sockets,
        fast_path,
        Relay::start().expect("relay"),
        std::env::temp_dir(),
        None,
    );
    ControlService::new(
        ManagerInfo {
            instance_id: "test".into(),
            started_at_ms: 0,
            advertised: vec![localhost],
            rtp_port_min: min,
            rtp_port_max: max,
        },
        driver,
    )
}

/// The Offer of leg a's peer, towards leg b; the leg it describes is b.
async fn offer_a_to_b(service: &ControlService, call_id: &str) -> v1::SdpResponse {
    service
        .offer(Request::new(v1::OfferRequest {
            call_id: call_id.to_owned(),
            leg_id: "a".into(),
            peer_leg_id: "b".into(),
            sdp: sdp(40000),
            ..Default::default()
        }))
        .await
        .expect("Offer")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latches_lost_in_a_lagged_event_channel_still_reach_the_offload_decision() {
    raise_open_files();
    let (min, max) = common::free_media_range(2 * CALLS);
    let service = service(min, max);
    // Subscribed, then not read while the burst latches: the manager too
    // busy to keep up.
    let events = service.driver().relay_events();
    let mut legs = Vec::new();
    for call in 0..CALLS {
        let call_id = format!("call-{call}");
        let offer = offer_a_to_b(&service, &call_id).await;
        let answer = service
            .answer(Request::new(v1::AnswerRequest {
                call_id: call_id.clone(),
                leg_id: "b".into(),
                peer_leg_id: "a".into(),
                sdp: sdp(40002),
                bridge: false,
            }))
            .await
            .expect("Answer")
            .into_inner();
        for (leg, info) in [("a", answer.leg), ("b", offer.leg)] {
            let port = u16::try_from(info.expect("leg info").rtp_port).expect("port");
            legs.push((call_id.clone(), leg.to_owned(), port));
        }
    }

    // Every leg latches to the one peer socket; what the relay missed in
    // the burst is sent again until every leg has received.
    let peer = UdpSocket::bind("127.0.0.1:0").expect("peer socket");
    let source = peer.local_addr().expect("peer address");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let calls = service
            .list_calls(Request::new(v1::ListCallsRequest {}))
            .await
            .expect("ListCalls")
            .into_inner()
            .calls;
        let latched: std::collections::HashSet<(String, String)> = calls
            .iter()
            .flat_map(|c| c.legs.iter())
            .filter(|l| !l.latched_address.is_empty())
            .map(|l| (l.call_id.clone(), l.leg_id.clone()))
            .collect();
        if latched.len() == legs.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {} legs latched",
            latched.len(),
            legs.len()
        );
        for (call, leg, port) in &legs {
            if !latched.contains(&(call.clone(), leg.clone())) {
                peer.send_to(&rtp(1), SocketAddr::from(([127, 0, 0, 1], *port)))
                    .expect("send");
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        events.len() > 1024,
        "the burst overflowed the relay's event channel ({} events for a capacity of 1024)",
        events.len()
    );
    assert!(
        service
            .driver()
            .decided_latches()
            .iter()
            .all(|(_, l)| l.is_none()),
        "nothing read the events yet"
    );

    tokio::spawn(service.driver().clone().forward_from(events));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let decided = service.driver().decided_latches();
        let missing: Vec<String> = decided
            .iter()
            .filter(|(_, latched)| *latched != Some(source))
            .map(|(leg, _)| format!("{}/{}", leg.call_id, leg.leg_id))
            .collect();
        if missing.is_empty() {
            assert_eq!(
                decided.len(),
                legs.len(),
                "every leg is known to the decision"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} legs' locked sources never reached the offload decision, e.g. {:?}",
            missing.len(),
            decided.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sums what the relay received, as the metrics endpoint reads it.
fn received(service: &ControlService) -> u64 {
    let totals = service.driver().relay_totals();
    totals.rtp_in_packets + totals.rtcp_in_packets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_calls_answers_their_final_counts_and_never_lowers_the_relays_totals() {
    const DELETED: u16 = 40;
    let (min, max) = common::free_media_range(2 * DELETED);
    let service = std::sync::Arc::new(service(min, max));
    let peer = UdpSocket::bind("127.0.0.1:0").expect("peer socket");
    let mut ports = Vec::new();
    for call in 0..DELETED {
        let call_id = format!("call-{call}");
        let offer = offer_a_to_b(&service, &call_id).await;
        let port = offer.leg.expect("leg info").rtp_port;
        ports.push((call_id, u16::try_from(port).expect("port")));
    }
    // Three packets into each call's leg b (the port offered to a's peer).
    for (_, port) in &ports {
        for seq in 1..=3 {
            peer.send_to(&rtp(seq), SocketAddr::from(([127, 0, 0, 1], *port)))
                .expect("send");
        }
    }
    let expected = 3 * u64::from(DELETED);
    let deadline = Instant::now() + Duration::from_secs(10);
    while received(&service) < expected {
        assert!(
            Instant::now() < deadline,
            "the relay received {} of {expected}",
            received(&service)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Read the totals without pause while the calls are deleted.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (service, stop) = (
            std::sync::Arc::clone(&service),
            std::sync::Arc::clone(&stop),
        );
        std::thread::spawn(move || {
            let mut lowest_after_highest = (0u64, u64::MAX);
            let mut highest = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let now = received(&service);
                highest = highest.max(now);
                if now < highest {
                    lowest_after_highest = (highest, now);
                }
            }
            lowest_after_highest
        })
    };
    for (call_id, _) in &ports {
        let legs = service
            .delete(Request::new(v1::DeleteRequest {
                call_id: call_id.clone(),
                ..Default::default()
            }))
            .await
            .expect("Delete")
            .into_inner()
            .legs;
        let received_by_b: Vec<u64> = legs
            .iter()
            .filter(|l| l.leg_id == "b")
            .map(|l| l.rtp_in.as_ref().map_or(0, |c| c.packets))
            .collect();
        assert_eq!(received_by_b, [3], "{call_id}'s final counts: {legs:?}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (highest, dipped) = sampler.join().expect("sampler");
    assert_eq!(
        dipped,
        u64::MAX,
        "the relay's totals went down from {highest} to {dipped}"
    );
    assert_eq!(
        received(&service),
        expected,
        "every deleted leg's packets stay counted"
    );
}
