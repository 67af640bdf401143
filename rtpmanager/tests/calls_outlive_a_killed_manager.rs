//! A manager saving its calls in a state directory is SIGKILLed; the next
//! one on the same directory re-adopts the calls as the last save had
//! them. The calls are made, changed and deleted after the first save, so
//! they reach the disk through the journal, not the snapshot.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{endpoint, free_media_range, sdp, BIN};
use switchboard_proto::v1;
use switchboard_proto::v1::rtp_manager_client::RtpManagerClient;
use switchboard_testkit::daemon::{start_manager, Manager, Options};
use switchboard_testkit::wait_until;
use tonic::transport::Channel;

fn manager(range: (u16, u16), state: &Path) -> Manager {
    let dir = state.display().to_string();
    start_manager(
        Path::new(BIN),
        0,
        range,
        &["--state-dir", &dir],
        Options::default(),
    )
}

async fn client(manager: &Manager) -> RtpManagerClient<Channel> {
    RtpManagerClient::connect(format!("http://{}", manager.grpc))
        .await
        .expect("connect")
}

async fn offer(client: &mut RtpManagerClient<Channel>, call: &str) -> u32 {
    let peer = endpoint();
    client
        .offer(v1::OfferRequest {
            call_id: call.into(),
            leg_id: "a".into(),
            peer_leg_id: "b".into(),
            sdp: sdp(peer.local_addr().expect("addr"), "0 8 101"),
            ..Default::default()
        })
        .await
        .expect("Offer")
        .into_inner()
        .leg
        .expect("leg b")
        .rtp_port
}

/// Waits until `path` exists and holds every one of `texts`.
fn wait_for_file(path: &Path, texts: &[&str]) -> String {
    let read = || std::fs::read_to_string(path).unwrap_or_default();
    let held = wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        let text = read();
        texts.iter().all(|t| text.contains(t))
    });
    assert!(held, "{} never held {texts:?}: {}", path.display(), read());
    read()
}

async fn listed(
    client: &mut RtpManagerClient<Channel>,
) -> Vec<(String, Vec<(String, u32, String)>)> {
    let mut calls: Vec<_> = client
        .list_calls(v1::ListCallsRequest::default())
        .await
        .expect("ListCalls")
        .into_inner()
        .calls
        .into_iter()
        .map(|c| {
            let mut legs: Vec<_> = c
                .legs
                .into_iter()
                .map(|l| (l.leg_id, l.rtp_port, l.remote_address))
                .collect();
            legs.sort();
            (c.call_id, legs)
        })
        .collect();
    calls.sort();
    calls
}

#[tokio::test]
async fn a_killed_managers_successor_readopts_the_calls_its_journal_saved() {
    let state = tempfile::tempdir().expect("state directory");
    let range = free_media_range(8);
    let mut first = manager(range, state.path());
    let mut c = client(&first).await;
    offer(&mut c, "c0").await;
    offer(&mut c, "c1").await;
    // The first save is a snapshot (with c1 or not: its offer may come
    // after the save's read).
    wait_for_file(&state.path().join("sessions.json"), &["\"c0\""]);

    // Then a new call, a deletion and an answer: journal records.
    offer(&mut c, "c2").await;
    c.delete(v1::DeleteRequest {
        call_id: "c0".into(),
        ..Default::default()
    })
    .await
    .expect("Delete");
    let callee = endpoint();
    c.answer(v1::AnswerRequest {
        call_id: "c1".into(),
        leg_id: "b".into(),
        peer_leg_id: "a".into(),
        sdp: sdp(callee.local_addr().expect("addr"), "8 101"),
        ..Default::default()
    })
    .await
    .expect("Answer");
    let journal = wait_for_file(
        &state.path().join("sessions.journal"),
        &["{\"removed\":\"c0\"}", "\"call_id\":\"c2\"", "\"answerer\""],
    );
    assert!(
        !std::fs::read_to_string(state.path().join("sessions.json"))
            .expect("snapshot")
            .contains("\"c2\""),
        "c2 is in the journal only: {journal}"
    );
    let before = listed(&mut c).await;
    assert_eq!(
        before.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
        vec!["c1", "c2"]
    );
    drop(c);
    first.daemon.kill();

    let second = manager(range, state.path());
    let mut c = client(&second).await;
    assert_eq!(
        listed(&mut c).await,
        before,
        "the same calls, legs, ports and peers"
    );
    let answered = &before[0].1;
    let callee_port = callee.local_addr().expect("addr").port().to_string();
    assert!(
        answered
            .iter()
            .any(|(leg, _, remote)| leg == "b" && remote.ends_with(&callee_port)),
        "c1's answer came back with it (leg b's peer is the callee, port {callee_port}): {answered:?}"
    );
}
