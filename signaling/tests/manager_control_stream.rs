//! Signaling's side of the Control stream against the real manager binary:
//! requests sent together each get their own reply, a manager that dies
//! fails the requests waiting on its stream at once (the next request, once
//! it is back, opens a new stream), and the stream runs over mutual TLS
//! with a token, as to a manager on another host.

mod common;
#[path = "../../rtpmanager/tests/common/pki.rs"]
mod pki;

use std::time::{Duration, Instant};

use common::manager::{runtime, start_manager, start_manager_at};
use switchboard_proto::v1;
use switchboard_signaling::config::Config;
use switchboard_signaling::rtpmanager_client::ClientAccess;
use switchboard_signaling::rtpmanager_control::ControlChannel;
use tonic::Code;

fn offer(call: &str, port: u16) -> v1::OfferRequest {
    v1::OfferRequest {
        call_id: call.to_owned(),
        leg_id: "a".to_owned(),
        peer_leg_id: "b".to_owned(),
        sdp: format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\n"
        ),
        ..Default::default()
    }
}

fn channel(manager: &common::manager::Manager) -> ControlChannel {
    let uri = format!("http://{}", manager.grpc);
    let channel = ControlChannel::new(ClientAccess::default().connect_lazy(&uri).expect("uri"));
    channel.set_streams(true);
    channel
}

#[test]
fn requests_sent_together_each_get_their_own_reply() {
    let audio = tempfile::tempdir().expect("audio dir");
    let manager = start_manager(audio.path(), 200, &[]);
    let rt = runtime();
    // The channel's connection runs on this runtime.
    let _entered = rt.enter();
    let channel = channel(&manager);
    let replies = rt.block_on(async {
        let requests = (0..100u16).map(|n| {
            let channel = channel.clone();
            async move {
                let call = format!("call-{n}");
                (
                    call.clone(),
                    channel.offer(offer(&call, 20_000 + 2 * n)).await,
                )
            }
        });
        futures_util::future::join_all(requests).await
    });
    let mut ports = std::collections::HashSet::new();
    for (call, reply) in replies {
        let sdp = reply.unwrap_or_else(|status| panic!("{call}: {status:?}"));
        let leg = sdp.leg.expect("the leg");
        assert_eq!(leg.call_id, call, "the reply to this call's offer");
        assert_eq!(leg.leg_id, "b");
        assert!(ports.insert(leg.rtp_port), "each call its own port");
        assert!(sdp.sdp.contains(&format!("m=audio {} ", leg.rtp_port)));
    }
    assert_eq!(manager.calls().len(), 100);
    assert!(channel.streams(), "still on the stream");
}

#[test]
fn a_dead_managers_stream_fails_at_once_and_the_next_request_reaches_its_successor() {
    let audio = tempfile::tempdir().expect("audio dir");
    let mut manager = start_manager(audio.path(), 8, &[]);
    let grpc_port = manager.grpc.port();
    let rt = runtime();
    let _entered = rt.enter();
    let channel = channel(&manager);
    rt.block_on(channel.offer(offer("before", 20_000)))
        .expect("the first request opens the stream");

    manager.kill();
    let started = Instant::now();
    let failed = rt
        .block_on(channel.offer(offer("while-down", 20_002)))
        .expect_err("nobody answers");
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "failed at once, not at the 5 s deadline: {:?}",
        started.elapsed()
    );

    let successor = start_manager_at(
        audio.path(),
        grpc_port,
        common::manager::free_media_range(8),
        &[],
    );
    let sdp = rt
        .block_on(channel.offer(offer("after", 20_004)))
        .expect("a new stream to the manager on the same address");
    assert_eq!(sdp.leg.map(|leg| leg.call_id).as_deref(), Some("after"));
    let calls: Vec<String> = successor.calls().into_iter().map(|c| c.call_id).collect();
    assert_eq!(calls, ["after"]);
}

#[test]
fn the_stream_runs_over_mutual_tls_with_the_token_and_a_wrong_token_opens_none() {
    let pki = pki::Pki::new();
    let tokens = pki.write("manager-tokens", "e3b0c44298fc1c149afbf4c8996fb924\n");
    let right = pki.write("right", "e3b0c44298fc1c149afbf4c8996fb924\n");
    let wrong = pki.write("wrong", "d4735e3a265e16eee03f59718b9b5d03\n");
    let audio = tempfile::tempdir().expect("audio dir");
    let manager = start_manager(
        audio.path(),
        8,
        &[&pki.manager_tls()[..], &["--grpc-token-file", &tokens]].concat(),
    );
    let rt = runtime();
    let _entered = rt.enter();
    // The channel signaling makes from its options.
    let channel = |token_file: &str| {
        let config = Config::load_from(
            [
                &["switchboard-signaling"][..],
                &pki.signaling_tls(),
                &["--rtpmanager-token-file", token_file],
            ]
            .concat(),
        )
        .expect("valid options");
        let access = ClientAccess::from_config(&config).expect("readable files");
        let uri = format!("https://{}", manager.grpc);
        let channel = ControlChannel::new(access.connect_lazy(&uri).expect("uri"));
        channel.set_streams(true);
        channel
    };

    let trusted = channel(&right);
    let sdp = rt
        .block_on(trusted.offer(offer("over-tls", 20_000)))
        .expect("served over TLS with the token");
    assert_eq!(sdp.leg.map(|leg| leg.call_id).as_deref(), Some("over-tls"));

    let stranger = channel(&wrong);
    let refused = rt
        .block_on(stranger.offer(offer("stranger", 20_002)))
        .expect_err("a wrong token opens no stream");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(stranger.streams(), "a refusal is not a reason to go unary");
}
