//! What the core reports of B2BUA calls for metrics: one start and one
//! final status per call, however the call ends, never a second one for a
//! retransmitted 2xx.

use super::*;
use crate::uas::Observation;

/// The call starts and final statuses reported since the last call.
fn calls(h: &mut Harness) -> Vec<Option<u16>> {
    std::iter::from_fn(|| h.uas.poll_observation())
        .filter_map(|o| match o {
            Observation::CallStarted => Some(None),
            Observation::InviteAnswered { status, .. } => Some(Some(status)),
            _ => None,
        })
        .collect()
}

#[test]
fn an_answered_call_reports_its_start_and_one_200_even_when_the_200_is_retransmitted() {
    let mut h = Harness::new(&bob_plan());
    let invite = h.invite("1001", "call-obs", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    let to_bob = h.request_to(BOB, "INVITE");
    h.from(BOB, &reply(&to_bob, 200, Some("bob1"), Some(CALLEE_SDP)));
    h.response_to(CALLER, 100);
    h.response_to(CALLER, 200);
    // No ACK yet: the 200 goes again after T1.
    h.advance(Duration::from_millis(600));
    h.response_to(CALLER, 200);
    assert_eq!(calls(&mut h), vec![None, Some(200)]);
    assert_eq!(h.occupancy().calls, 1);
}

#[test]
fn busy_and_unanswered_calls_report_the_status_their_caller_got() {
    let mut h = Harness::new(&bob_plan());
    let invite = h.invite("1001", "call-busy", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    let to_bob = h.request_to(BOB, "INVITE");
    h.from(BOB, &reply(&to_bob, 486, Some("bob1"), None));
    h.response_to(CALLER, 100);
    h.response_to(CALLER, 486);
    assert_eq!(calls(&mut h), vec![None, Some(486)]);

    let mut h = Harness::new(&bob_plan());
    let invite = h.invite("1001", "call-nobody", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.request_to(BOB, "INVITE");
    // The callee never answers: the dial timeout (5 s) answers 480.
    h.advance(Duration::from_secs(40));
    assert_eq!(calls(&mut h), vec![None, Some(480)]);
}
