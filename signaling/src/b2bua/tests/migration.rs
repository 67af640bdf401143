//! Call migration (migrate.rs): the ladder from manager m1 to m2 and every
//! way it can go wrong, against the fake manager (whose SDP names the
//! manager in `c=`: 203.0.113.1 for m1, .2 for m2).

use super::*;
use tokio::sync::mpsc;

/// The core hears that the harness's calls are on m1.
fn on_m1(h: &mut Harness) {
    for call in h.manager.calls.clone() {
        h.link.push_input(
            h.now.instant,
            LinkInput::Placed {
                call,
                manager: "m1".to_owned(),
            },
        );
    }
    h.step();
    h.settle();
}

/// Orders every call off m1 and returns the reports' receiver.
fn move_off_m1(h: &mut Harness, gone: bool) -> mpsc::UnboundedReceiver<MoveReport> {
    let (reply, reports) = mpsc::unbounded_channel();
    h.link.push_input(
        h.now.instant,
        LinkInput::Move(MoveOrder {
            manager: "m1".to_owned(),
            scope: MoveScope::All,
            skip: Vec::new(),
            gone,
            limit: 10,
            reply,
        }),
    );
    h.step();
    h.settle();
    reports
}

fn reports(r: &mut mpsc::UnboundedReceiver<MoveReport>) -> Vec<MoveReport> {
    std::iter::from_fn(|| r.try_recv().ok()).collect()
}

/// The one call's migration outcome among `reports`.
fn outcome(reports: &[MoveReport]) -> (MoveOutcome, Option<String>) {
    let ended: Vec<&CallMoved> = reports
        .iter()
        .filter_map(|r| match r {
            MoveReport::Call(moved) => Some(moved),
            MoveReport::Started { .. } => None,
        })
        .collect();
    assert_eq!(ended.len(), 1, "one outcome: {reports:?}");
    (ended[0].outcome, ended[0].to.clone())
}

fn origin(sdp: &str) -> String {
    sdp.lines()
        .find(|l| l.starts_with("o="))
        .expect("an o= line")
        .to_owned()
}

/// An answered call on m1, moved up to Bob's re-INVITE: returns (the
/// caller's 200, the re-INVITE Bob received, the reports).
fn moving_call(
    h: &mut Harness,
    gone: bool,
) -> (SipMessage, SipMessage, mpsc::UnboundedReceiver<MoveReport>) {
    let (ok, _) = answered_call(h);
    on_m1(h);
    let reports = move_off_m1(h, gone);
    let reinvite = h.request_to(BOB, "INVITE");
    (ok, reinvite, reports)
}

#[test]
fn a_moved_call_gets_new_legs_both_sides_reinvited_and_the_old_manager_released() {
    let mut h = Harness::new(&bob_plan());
    let (ok, to_bob) = answered_call(&mut h);
    on_m1(&mut h);
    let mut r = move_off_m1(&mut h, false);
    let started = reports(&mut r);
    assert!(
        matches!(&started[..], [MoveReport::Started { started, not_movable, left: 0, in_scope: 1 }]
            if started.len() == 1 && not_movable.is_empty()),
        "{started:?}"
    );
    assert_eq!(h.ops(), vec![MediaOp::Move, offer(CALLER_SDP)]);

    // Bob: m2's address under the o= line he knows, one version up.
    let reinvite = h.request_to(BOB, "INVITE");
    assert_eq!(reinvite.call_id(), to_bob.call_id(), "in Bob's dialog");
    assert!(reinvite.cseq().seq > to_bob.cseq().seq);
    let to_bob_sdp = body(&reinvite);
    assert!(to_bob_sdp.contains("c=IN IP4 203.0.113.2"), "{to_bob_sdp}");
    assert!(to_bob_sdp.contains("s=offer-a-b"));
    assert_eq!(origin(&to_bob_sdp), "o=- 1 2 IN IP4 203.0.113.1");
    h.nothing_to(CALLER);
    let bob_new = CALLEE_SDP.replace("o=bob 1 1", "o=bob 1 2");
    h.from(BOB, &reply(&reinvite, 200, None, Some(&bob_new)));
    assert_eq!(h.request_to(BOB, "ACK").cseq().seq, reinvite.cseq().seq);
    assert_eq!(
        h.ops(),
        vec![MediaOp::Answer {
            leg: CallLeg::B,
            peer: CallLeg::A,
            sdp: bob_new,
            bridge: false
        }]
    );

    // The caller: m2's answer, its o= line one version up.
    let to_alice = h.request_to(CALLER, "INVITE");
    assert_eq!(to_alice.call_id().as_str(), "call-1");
    let alice_sdp = body(&to_alice);
    assert!(alice_sdp.contains("c=IN IP4 203.0.113.2"), "{alice_sdp}");
    assert_eq!(
        origin(&alice_sdp),
        origin(&body(&ok)).replace(" 1 1 ", " 1 2 ")
    );
    h.from(CALLER, &reply(&to_alice, 200, None, Some(CALLER_SDP)));
    h.request_to(CALLER, "ACK");
    assert_eq!(
        h.ops(),
        vec![MediaOp::Bridge, MediaOp::Release { delete: true }]
    );
    assert_eq!(
        outcome(&reports(&mut r)),
        (MoveOutcome::Moved, Some("m2".to_owned()))
    );
    let moved: Vec<String> = std::iter::from_fn(|| h.events.try_recv().ok())
        .filter(|e| e.kind() == "call_moved")
        .map(|e| e.frame().to_owned())
        .collect();
    assert_eq!(moved.len(), 1);
    assert!(moved[0].contains(r#""outcome":"moved""#), "{}", moved[0]);

    // The call goes on; its record counts both managers (m1's figures are
    // 100 times m2's in the fake).
    let bye = h.in_dialog(CALLER, &ok, "BYE", 2, None);
    h.from(CALLER, &bye);
    h.response_to(CALLER, 200);
    h.request_to(BOB, "BYE");
    let cdr = h.cdrs.records().pop().expect("a record");
    assert_eq!(cdr.legs.len(), 2);
    assert_eq!(cdr.legs[0].rtp_in.packets, 500 * 101);
    assert_eq!(cdr.legs[1].rtp_out.bytes, 85_828 * 101);
    assert_eq!(cdr.manager.as_deref(), Some("m2"));
}

#[test]
fn a_moved_call_keeps_its_callee_on_the_dialled_media_interface() {
    let plan = dial_plan(
        r#"["sip:bob@192.0.2.2:5060"]"#,
        r#", "media_interface": "private""#,
    );
    let mut h = Harness::new(&plan);
    answered_call(&mut h);
    on_m1(&mut h);
    move_off_m1(&mut h, false);
    assert_eq!(
        h.ops(),
        vec![
            MediaOp::Move,
            MediaOp::Offer {
                leg: CallLeg::A,
                peer: Some(CallLeg::B),
                sdp: CALLER_SDP.to_owned(),
                callee_interface: Some("private".to_owned()),
            }
        ],
        "the callee's new leg on the new manager is on the private side again"
    );
}

/// Advances in 10 ms steps until something is sent to `peer`; returns
/// how long that took.
fn wait_for(h: &mut Harness, peer: &str, limit: Duration) -> Duration {
    let start = h.now.instant;
    while !h.sent.iter().any(|(to, _)| *to == addr(peer)) {
        assert!(
            h.now.instant - start < limit,
            "nothing to {peer} within {limit:?}"
        );
        h.advance(Duration::from_millis(10));
    }
    h.now.instant - start
}

#[test]
fn a_491_is_retried_after_the_rfc3261_wait_owner_on_the_callee_leg() {
    let mut h = Harness::new(&bob_plan());
    let (_, reinvite, _r) = moving_call(&mut h, false);
    h.from(BOB, &reply(&reinvite, 491, None, None));
    h.request_to(BOB, "ACK");
    // We own the callee leg's Call-ID: 2.1 to 4 s.
    let waited = wait_for(&mut h, BOB, Duration::from_secs(5));
    assert!(
        (Duration::from_millis(2100)..=Duration::from_millis(4010)).contains(&waited),
        "waited {waited:?}"
    );
    let again = h.request_to(BOB, "INVITE");
    assert!(again.cseq().seq > reinvite.cseq().seq);
    assert_eq!(body(&again), body(&reinvite), "the same offer");
    h.from(BOB, &reply(&again, 200, None, Some(CALLEE_SDP)));
    h.request_to(BOB, "ACK");
    let to_alice = h.request_to(CALLER, "INVITE");
    // The caller owns its Call-ID: at most 2 s.
    h.from(CALLER, &reply(&to_alice, 491, None, None));
    h.request_to(CALLER, "ACK");
    let waited = wait_for(&mut h, CALLER, Duration::from_secs(3));
    assert!(waited <= Duration::from_millis(2010), "waited {waited:?}");
    let again = h.request_to(CALLER, "INVITE");
    assert_eq!(body(&again), body(&to_alice));
    assert!(again.cseq().seq > to_alice.cseq().seq);
}

#[test]
fn a_callee_refusing_keeps_the_call_on_the_old_manager() {
    let mut h = Harness::new(&bob_plan());
    let (ok, reinvite, mut r) = moving_call(&mut h, false);
    h.ops();
    h.from(BOB, &reply(&reinvite, 488, None, None));
    h.request_to(BOB, "ACK");
    assert_eq!(h.ops(), vec![MediaOp::Abort], "m2's legs go");
    h.nothing_to(CALLER);
    assert_eq!(
        outcome(&reports(&mut r)),
        (MoveOutcome::Stayed, Some("m2".to_owned()))
    );
    assert_eq!(h.occupancy().calls, 1);
    // Its own re-INVITEs work again, on m1.
    let reoffer = h.in_dialog(CALLER, &ok, "INVITE", 2, Some(CALLER_SDP));
    h.from(CALLER, &reoffer);
    let relayed = h.request_to(BOB, "INVITE");
    assert!(body(&relayed).contains("c=IN IP4 203.0.113.1"));
}

#[test]
fn a_caller_refusing_sends_the_callee_back_to_the_old_manager() {
    let mut h = Harness::new(&bob_plan());
    let (_, reinvite, mut r) = moving_call(&mut h, false);
    h.from(BOB, &reply(&reinvite, 200, None, Some(CALLEE_SDP)));
    h.request_to(BOB, "ACK");
    let to_alice = h.request_to(CALLER, "INVITE");
    h.ops();
    h.from(CALLER, &reply(&to_alice, 603, None, None));
    h.request_to(CALLER, "ACK");
    assert_eq!(h.ops(), vec![MediaOp::Abort]);
    let back = h.request_to(BOB, "INVITE");
    let back_sdp = body(&back);
    assert!(
        back_sdp.contains("c=IN IP4 203.0.113.1"),
        "m1's SDP: {back_sdp}"
    );
    assert_eq!(
        origin(&back_sdp),
        "o=- 1 3 IN IP4 203.0.113.1",
        "one more version"
    );
    assert!(reports(&mut r)
        .iter()
        .all(|r| matches!(r, MoveReport::Started { .. })));
    h.from(BOB, &reply(&back, 200, None, Some(CALLEE_SDP)));
    h.request_to(BOB, "ACK");
    assert_eq!(outcome(&reports(&mut r)).0, MoveOutcome::Stayed);
    assert_eq!(h.occupancy().calls, 1);
}

#[test]
fn a_refusal_with_the_old_manager_gone_ends_the_call_with_a_bye_to_each_side() {
    let mut h = Harness::new(&bob_plan());
    let (_, reinvite, mut r) = moving_call(&mut h, true);
    h.ops();
    h.from(BOB, &reply(&reinvite, 488, None, None));
    h.request_to(BOB, "ACK");
    h.request_to(BOB, "BYE");
    h.request_to(CALLER, "BYE");
    let ops = h.ops();
    assert!(
        matches!(
            &ops[..],
            [MediaOp::Release { delete: false }, MediaOp::Delete { .. }]
        ),
        "nothing asked of the lost manager, the new one deleted: {ops:?}"
    );
    assert_eq!(outcome(&reports(&mut r)).0, MoveOutcome::Ended);
    assert_eq!(h.occupancy().calls, 0);
}

#[test]
fn a_call_ending_mid_move_ends_as_usual_and_reports_it() {
    let mut h = Harness::new(&bob_plan());
    let (ok, _reinvite, mut r) = moving_call(&mut h, false);
    h.ops();
    let bye = h.in_dialog(CALLER, &ok, "BYE", 2, None);
    h.from(CALLER, &bye);
    h.response_to(CALLER, 200);
    h.request_to(BOB, "BYE");
    // One Delete: the executor sends it to both managers.
    assert!(matches!(&h.ops()[..], [MediaOp::Delete { .. }]));
    assert_eq!(outcome(&reports(&mut r)).0, MoveOutcome::Ended);
    assert_eq!(h.occupancy().calls, 0);
    assert_eq!(h.cdrs.records().len(), 1);
}

#[test]
fn a_peers_reinvite_during_a_move_gets_491() {
    let mut h = Harness::new(&bob_plan());
    let (ok, _reinvite, _r) = moving_call(&mut h, false);
    let reoffer = h.in_dialog(CALLER, &ok, "INVITE", 2, Some(CALLER_SDP));
    h.from(CALLER, &reoffer);
    h.response_to(CALLER, 491);
    h.nothing_to(BOB);
}

#[test]
fn with_no_manager_to_take_it_the_call_stays_untouched() {
    let mut h = Harness::new(&bob_plan());
    answered_call(&mut h);
    on_m1(&mut h);
    h.manager.fail_move = true;
    let mut r = move_off_m1(&mut h, true);
    assert_eq!(h.ops(), vec![MediaOp::Move]);
    h.nothing_to(BOB);
    h.nothing_to(CALLER);
    assert_eq!(outcome(&reports(&mut r)), (MoveOutcome::Stayed, None));
    assert_eq!(h.occupancy().calls, 1);
}

#[test]
fn a_call_not_answered_yet_is_not_movable() {
    let mut h = Harness::new(&bob_plan());
    let invite = h.invite("1001", "call-1", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    let to_bob = h.request_to(BOB, "INVITE");
    h.from(BOB, &reply(&to_bob, 180, Some("bob1"), None));
    on_m1(&mut h);
    h.ops();
    let mut r = move_off_m1(&mut h, false);
    let got = reports(&mut r);
    assert!(
        matches!(&got[..], [MoveReport::Started { started, not_movable, left: 0, in_scope: 1 }]
            if started.is_empty() && not_movable.len() == 1),
        "{got:?}"
    );
    assert!(h.ops().is_empty());
}

#[test]
fn a_call_in_a_reinvite_is_not_movable_and_is_left_alone() {
    let mut h = Harness::new(&bob_plan());
    let (ok, _) = answered_call(&mut h);
    on_m1(&mut h);
    // The caller's re-INVITE waits on the manager.
    h.manager.hold = true;
    let reoffer = h.in_dialog(CALLER, &ok, "INVITE", 2, Some(CALLER_SDP));
    h.from(CALLER, &reoffer);
    let mut r = move_off_m1(&mut h, false);
    let got = reports(&mut r);
    assert!(
        matches!(&got[..], [MoveReport::Started { started, not_movable, left: 0, in_scope: 1 }]
            if started.is_empty() && not_movable.len() == 1),
        "{got:?}"
    );
    h.release();
    assert!(
        h.ops().iter().all(|op| !matches!(op, MediaOp::Move)),
        "nothing moved"
    );
    // The re-INVITE goes on as usual.
    h.request_to(BOB, "INVITE");
}

#[test]
fn a_call_moved_off_a_lost_manager_sends_it_nothing() {
    let mut h = Harness::new(&bob_plan());
    let (_, reinvite, mut r) = moving_call(&mut h, true);
    h.from(BOB, &reply(&reinvite, 200, None, Some(CALLEE_SDP)));
    h.request_to(BOB, "ACK");
    let to_alice = h.request_to(CALLER, "INVITE");
    h.from(CALLER, &reply(&to_alice, 200, None, Some(CALLER_SDP)));
    h.request_to(CALLER, "ACK");
    let ops = h.ops();
    assert_eq!(
        &ops[ops.len() - 2..],
        &[MediaOp::Bridge, MediaOp::Release { delete: false }],
        "no Delete for the lost manager: {ops:?}"
    );
    assert_eq!(
        outcome(&reports(&mut r)),
        (MoveOutcome::Moved, Some("m2".to_owned()))
    );
}

#[test]
fn a_media_timeout_from_the_manager_a_call_left_does_not_hang_it_up() {
    let mut h = Harness::new(&bob_plan());
    let (_, reinvite, mut r) = moving_call(&mut h, true);
    h.from(BOB, &reply(&reinvite, 200, None, Some(CALLEE_SDP)));
    h.request_to(BOB, "ACK");
    let to_alice = h.request_to(CALLER, "INVITE");
    h.from(CALLER, &reply(&to_alice, 200, None, Some(CALLER_SDP)));
    h.request_to(CALLER, "ACK");
    assert_eq!(
        outcome(&reports(&mut r)),
        (MoveOutcome::Moved, Some("m2".to_owned()))
    );
    let call = h.manager.calls[0].clone();
    h.ops();
    // m1 came back with the call's old legs from its state: they idle out.
    h.event(MediaEvent::Timeout {
        call: call.clone(),
        leg: MediaLegId("a".to_owned()),
        idle_secs: 30,
        manager: "m1".to_owned(),
    });
    h.nothing_to(CALLER);
    h.nothing_to(BOB);
    assert_eq!(h.ops(), Vec::<MediaOp>::new(), "no Delete");
    // Its manager's own timeout still ends it.
    h.event(MediaEvent::Timeout {
        call,
        leg: MediaLegId("a".to_owned()),
        idle_secs: 30,
        manager: "m2".to_owned(),
    });
    h.request_to(CALLER, "BYE");
    h.request_to(BOB, "BYE");
}
