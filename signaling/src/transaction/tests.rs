//! Call-flow tests of the four machines and the layer, on a stepped clock.
//!
//! Outputs are logged as `(milliseconds, "tx …" | "ev …")` so that each test
//! asserts the exact sequence and timing of what a machine did.

use std::time::{Duration, Instant};

use crate::sip::{Method, SipMessage};

use super::test_support::{describe, invite, request, response_to, Clock};
use super::*;

/// The outputs every machine shares, so one driver can step them all.
trait Machine {
    fn timeout(&self) -> Option<Instant>;
    fn fire(&mut self, now: Instant);
    fn transmit(&mut self) -> Option<SipMessage>;
    fn event(&mut self) -> Option<TransactionEvent>;
}

macro_rules! impl_machine {
    ($($ty:ty),*) => {$(
        impl Machine for $ty {
            fn timeout(&self) -> Option<Instant> { self.poll_timeout() }
            fn fire(&mut self, now: Instant) { self.handle_timeout(now) }
            fn transmit(&mut self) -> Option<SipMessage> { self.poll_transmit() }
            fn event(&mut self) -> Option<TransactionEvent> { self.poll_event() }
        }
    )*};
}
impl_machine!(ClientInvite, Client, ServerInvite, Server);

fn describe_event(event: &TransactionEvent) -> String {
    match event {
        TransactionEvent::Request(request) => format!("ev Request {}", request.method()),
        TransactionEvent::Response(response) => {
            format!("ev Response {}", response.status().unwrap_or(0))
        }
        TransactionEvent::Timeout(timer) => format!("ev Timeout {timer:?}"),
        TransactionEvent::TransportError => "ev TransportError".to_string(),
        TransactionEvent::Terminated => "ev Terminated".to_string(),
    }
}

/// Drains outputs, stamping them with `now`.
fn drain(machine: &mut impl Machine, clock: &Clock, now: Instant, log: &mut Vec<(u64, String)>) {
    while let Some(message) = machine.transmit() {
        log.push((clock.ms(now), format!("tx {}", describe(&message))));
    }
    while let Some(event) = machine.event() {
        log.push((clock.ms(now), describe_event(&event)));
    }
}

/// Fires every deadline up to `until_ms`, logging outputs.
fn run_until(machine: &mut impl Machine, clock: &Clock, until_ms: u64) -> Vec<(u64, String)> {
    let mut log = Vec::new();
    while let Some(deadline) = machine.timeout() {
        if deadline > clock.at(until_ms) {
            break;
        }
        machine.fire(deadline);
        drain(machine, clock, deadline, &mut log);
    }
    log
}

fn log(entries: &[(u64, &str)]) -> Vec<(u64, String)> {
    entries
        .iter()
        .map(|(t, s)| (*t, (*s).to_string()))
        .collect()
}

fn initial(machine: &mut impl Machine, clock: &Clock) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    drain(machine, clock, clock.at(0), &mut out);
    out
}

// ---- INVITE client ----

#[test]
fn invite_client_udp_retransmits_with_doubling_and_times_out_with_b() {
    let clock = Clock::new();
    let mut t = ClientInvite::new(
        clock.at(0),
        invite("a"),
        Reliability::Unreliable,
        TimerConfig::default(),
    )
    .expect("INVITE starts an INVITE client transaction");
    assert_eq!(initial(&mut t, &clock), log(&[(0, "tx INVITE")]));
    assert_eq!(
        run_until(&mut t, &clock, 100_000),
        log(&[
            (500, "tx INVITE"),
            (1500, "tx INVITE"),
            (3500, "tx INVITE"),
            (7500, "tx INVITE"),
            (15500, "tx INVITE"),
            (31500, "tx INVITE"),
            (32000, "ev Timeout B"),
            (32000, "ev Terminated"),
        ])
    );
    assert_eq!(t.state(), ClientInviteState::Terminated);
    assert_eq!(t.poll_timeout(), None);
}

#[test]
fn invite_client_provisional_stops_retransmissions_and_timer_b() {
    let clock = Clock::new();
    let request = invite("a");
    let mut t = ClientInvite::new(
        clock.at(0),
        request.clone(),
        Reliability::Unreliable,
        TimerConfig::default(),
    )
    .expect("INVITE starts a transaction");
    initial(&mut t, &clock);
    assert_eq!(run_until(&mut t, &clock, 1000), log(&[(500, "tx INVITE")]));
    let mut out = Vec::new();
    t.handle_response(clock.at(1000), response_to(&request, 180, Some("b")))
        .expect("180 is accepted");
    t.handle_response(clock.at(1100), response_to(&request, 180, Some("b")))
        .expect("a repeated 180 is accepted");
    drain(&mut t, &clock, clock.at(1100), &mut out);
    assert_eq!(
        out,
        log(&[(1100, "ev Response 180"), (1100, "ev Response 180")])
    );
    assert_eq!(t.state(), ClientInviteState::Proceeding);
    assert_eq!(t.poll_timeout(), None, "no timer runs in Proceeding");
}

#[test]
fn invite_client_acks_non_2xx_and_reacks_each_retransmission() {
    let clock = Clock::new();
    let request = invite("a");
    let mut t = ClientInvite::new(
        clock.at(0),
        request.clone(),
        Reliability::Unreliable,
        TimerConfig::default(),
    )
    .expect("INVITE starts a transaction");
    initial(&mut t, &clock);
    let busy = response_to(&request, 486, Some("callee"));
    t.handle_response(clock.at(200), busy.clone())
        .expect("486 is accepted");
    let ack = match t.poll_transmit() {
        Some(ack) if ack.is_request() => ack,
        other => panic!("expected the ACK, got {other:?}"),
    };
    assert_eq!(
        t.poll_event(),
        Some(TransactionEvent::Response(busy.clone()))
    );
    assert_eq!(t.poll_event(), None);

    assert_eq!(*ack.method(), Method::Ack);
    assert_eq!(
        ack.request_uri().map(ToString::to_string).as_deref(),
        Some("sip:bob@example.com")
    );
    let vias: Vec<&str> = ack.header_values("Via").collect();
    assert_eq!(
        vias,
        vec!["SIP/2.0/UDP client.example.com:5060;branch=z9hG4bKa"]
    );
    let routes: Vec<&str> = ack.header_values("Route").collect();
    assert_eq!(
        routes,
        vec!["<sip:proxy1.example.com;lr>", "<sip:proxy2.example.com;lr>"]
    );
    assert_eq!(
        ack.header("From"),
        Some("Alice <sip:alice@example.com>;tag=from-tag")
    );
    assert_eq!(
        ack.header("To"),
        Some("Bob <sip:bob@example.com>;tag=callee")
    );
    assert_eq!(ack.header("Call-ID"), Some("call-1@client.example.com"));
    assert_eq!(ack.header("CSeq"), Some("1 ACK"));
    assert_eq!(
        crate::sip::parse(ack.bytes())
            .expect("the ACK's octets parse")
            .headers(),
        ack.headers(),
        "the ACK's octets are its value"
    );

    // Each retransmitted 486 gets the same ACK again and no new event.
    for ms in [700, 1700] {
        t.handle_response(clock.at(ms), busy.clone())
            .expect("retransmitted 486 is accepted");
        assert_eq!(t.poll_transmit(), Some(ack.clone()));
        assert_eq!(t.poll_transmit(), None);
        assert_eq!(t.poll_event(), None);
    }
    assert_eq!(t.state(), ClientInviteState::Completed);
    assert_eq!(
        run_until(&mut t, &clock, 100_000),
        log(&[(32200, "ev Terminated")]),
        "timer D is 32 s after the first 486"
    );
}

#[test]
fn invite_client_2xx_goes_to_accepted_and_passes_retransmissions_up() {
    let clock = Clock::new();
    let request = invite("a");
    let mut t = ClientInvite::new(
        clock.at(0),
        request.clone(),
        Reliability::Unreliable,
        TimerConfig::default(),
    )
    .expect("INVITE starts a transaction");
    initial(&mut t, &clock);
    assert_eq!(
        t.request(),
        Some(&request),
        "kept for Timer A and a non-2xx's ACK"
    );
    let ok = response_to(&request, 200, Some("callee"));
    let mut out = Vec::new();
    t.handle_response(clock.at(300), ok.clone())
        .expect("200 is accepted");
    assert_eq!(
        t.request(),
        None,
        "Accepted lasts 32 s and needs only the key: the INVITE is let go"
    );
    t.handle_response(clock.at(800), ok.clone())
        .expect("retransmitted 200 is accepted");
    t.handle_response(clock.at(900), response_to(&request, 180, Some("callee")))
        .expect("late 180 is accepted");
    drain(&mut t, &clock, clock.at(900), &mut out);
    assert_eq!(
        out,
        log(&[(900, "ev Response 200"), (900, "ev Response 200")]),
        "no ACK for a 2xx, every 2xx goes up, the late 180 does not"
    );
    assert_eq!(t.state(), ClientInviteState::Accepted);
    assert_eq!(
        run_until(&mut t, &clock, 100_000),
        log(&[(32300, "ev Terminated")]),
        "timer M is 64*T1 after the first 2xx"
    );
}

#[test]
fn invite_client_reliable_has_no_retransmissions_and_zero_timer_d() {
    let clock = Clock::new();
    let request = invite("a");
    let mut t = ClientInvite::new(
        clock.at(0),
        request.clone(),
        Reliability::Reliable,
        TimerConfig::default(),
    )
    .expect("INVITE starts a transaction");
    initial(&mut t, &clock);
    assert_eq!(
        t.poll_timeout(),
        Some(clock.at(32_000)),
        "only timer B runs"
    );
    let mut out = Vec::new();
    t.handle_response(clock.at(100), response_to(&request, 603, Some("x")))
        .expect("603 is accepted");
    drain(&mut t, &clock, clock.at(100), &mut out);
    assert_eq!(
        out,
        log(&[
            (100, "tx ACK"),
            (100, "ev Response 603"),
            (100, "ev Terminated")
        ])
    );
    assert_eq!(t.state(), ClientInviteState::Terminated);
    assert_eq!(t.poll_timeout(), None);
}

#[test]
fn invite_client_timer_b_on_reliable_transport() {
    let clock = Clock::new();
    let mut t = ClientInvite::new(
        clock.at(0),
        invite("a"),
        Reliability::Reliable,
        TimerConfig::default(),
    )
    .expect("INVITE starts a transaction");
    initial(&mut t, &clock);
    assert_eq!(
        run_until(&mut t, &clock, 100_000),
        log(&[(32000, "ev Timeout B"), (32000, "ev Terminated")])
    );
}

#[test]
fn invite_client_transport_error_terminates() {
    let clock = Clock::new();
    let mut t = ClientInvite::new(
        clock.at(0),
        invite("a"),
        Reliability::Unreliable,
        TimerConfig::default(),
    )
    .expect("INVITE starts a transaction");
    initial(&mut t, &clock);
    t.handle_transport_error(clock.at(10));
    let mut out = Vec::new();
    drain(&mut t, &clock, clock.at(10), &mut out);
    assert_eq!(
        out,
        log(&[(10, "ev TransportError"), (10, "ev Terminated")])
    );
    assert_eq!(t.poll_timeout(), None);
}

#[test]
fn invite_client_honours_configured_timers() {
    let clock = Clock::new();
    let config = TimerConfig {
        t1: Duration::from_millis(100),
        t2: Duration::from_secs(4),
        t4: Duration::from_secs(5),
    };
    let mut t = ClientInvite::new(clock.at(0), invite("a"), Reliability::Unreliable, config)
        .expect("INVITE starts a transaction");
    initial(&mut t, &clock);
    assert_eq!(
        run_until(&mut t, &clock, 100_000),
        log(&[
            (100, "tx INVITE"),
            (300, "tx INVITE"),
            (700, "tx INVITE"),
            (1500, "tx INVITE"),
            (3100, "tx INVITE"),
            (6300, "tx INVITE"),
            (6400, "ev Timeout B"),
            (6400, "ev Terminated"),
        ])
    );
}

#[test]
fn invite_client_refuses_other_methods() {
    let clock = Clock::new();
    let err = ClientInvite::new(
        clock.at(0),
        request("BYE", "a", 2, "client.example.com"),
        Reliability::Unreliable,
        TimerConfig::default(),
    )
    .expect_err("BYE is not an INVITE");
    assert_eq!(
        err,
        TransactionError::WrongMethod {
            found: "BYE".to_string()
        }
    );
}

// ---- non-INVITE client ----

fn bye() -> SipMessage {
    request("BYE", "bye", 2, "client.example.com:5060")
}

#[test]
fn non_invite_client_retransmits_capped_at_t2_and_times_out_with_f() {
    let clock = Clock::new();
    let mut t = Client::new(
        clock.at(0),
        bye(),
        Reliability::Unreliable,
        TimerConfig::default(),
    )
    .expect("BYE starts a client transaction");
    assert_eq!(initial(&mut t, &clock), log(&[(0, "tx BYE")]));
    assert_eq!(
        run_until(&mut t, &clock, 100_000),
        log(&[
            (500, "tx BYE"),
            (1500, "tx BYE"),
            (3500, "tx BYE"),
            (7500, "tx BYE"),
            (11500, "tx BYE"),
            (15500, "tx BYE"),
            (19500, "tx BYE"),
            (23500, "tx BYE"),
            (27500, "tx BYE"),
            (31500, "tx BYE"),
            (32000, "ev Timeout F"),
            (32000, "ev Terminated"),
        ])
    );
}

#[test]
fn non_invite_client_in_proceeding_retransmits_every_t2() {
    let clock = Clock::new();
    let request = bye();
    let mut t = Client::new(
        clock.at(0),
        request.clone(),
        Reliability::Unreliable,
        TimerConfig::default(),
    )
    .expect("BYE starts a transaction");
    initial(&mut t, &clock);
    t.handle_response(clock.at(200), response_to(&request, 100, None))
        .expect("100 is accepted");
    assert_eq!(t.state(), ClientState::Proceeding);
    assert_eq!(
        t.poll_event(),
        Some(TransactionEvent::Response(response_to(&request, 100, None)))
    );
    assert_eq!(
        run_until(&mut t, &clock, 100_000),
        log(&[
            (500, "tx BYE"),
            (4500, "tx BYE"),
            (8500, "tx BYE"),
            (12500, "tx BYE"),
            (16500, "tx BYE"),
            (20500, "tx BYE"),
            (24500, "tx BYE"),
            (28500, "tx BYE"),
            (32000, "ev Timeout F"),
            (32000, "ev Terminated"),
        ])
    );
}

#[test]
fn non_invite_client_final_absorbs_duplicates_until_timer_k() {
    let clock = Clock::new();
    let request = bye();
    let mut t = Client::new(
        clock.at(0),
        request.clone(),
        Reliability::Unreliable,
        TimerConfig::default(),
    )
    .expect("BYE starts a transaction");
    initial(&mut t, &clock);
    let ok = response_to(&request, 200, Some("b"));
    let mut out = Vec::new();
    // The 200 overtakes the first retransmission; then two copies arrive.
    for ms in [400, 600, 900] {
        t.handle_response(clock.at(ms), ok.clone())
            .expect("200 is accepted");
        drain(&mut t, &clock, clock.at(ms), &mut out);
    }
    assert_eq!(out, log(&[(400, "ev Response 200")]));
    assert_eq!(t.state(), ClientState::Completed);
    assert_eq!(
        run_until(&mut t, &clock, 100_000),
        log(&[(5400, "ev Terminated")]),
        "timer K is T4 after the final response"
    );
}

#[test]
fn non_invite_client_reliable_has_no_retransmissions_and_zero_timer_k() {
    let clock = Clock::new();
    let request = bye();
    let mut t = Client::new(
        clock.at(0),
        request.clone(),
        Reliability::Reliable,
        TimerConfig::default(),
    )
    .expect("BYE starts a transaction");
    initial(&mut t, &clock);
    assert_eq!(
        t.poll_timeout(),
        Some(clock.at(32_000)),
        "only timer F runs"
    );
    let mut out = Vec::new();
    t.handle_response(clock.at(50), response_to(&request, 481, Some("b")))
        .expect("481 is accepted");
    drain(&mut t, &clock, clock.at(50), &mut out);
    assert_eq!(out, log(&[(50, "ev Response 481"), (50, "ev Terminated")]));
}

// ---- INVITE server ----

#[test]
fn invite_server_sends_trying_after_200_ms_when_tu_is_silent() {
    let clock = Clock::new();
    let mut t = ServerInvite::new(
        clock.at(0),
        invite("a"),
        Reliability::Unreliable,
        TimerConfig::default(),
        TryingPolicy::default(),
    )
    .expect("INVITE starts a server transaction");
    assert_eq!(initial(&mut t, &clock), log(&[(0, "ev Request INVITE")]));
    assert_eq!(run_until(&mut t, &clock, 10_000), log(&[(200, "tx 100")]));
    let trying = t.request().expect("kept until a 2xx").clone();
    t.handle_request(clock.at(10_000), trying);
    let mut out = Vec::new();
    drain(&mut t, &clock, clock.at(10_000), &mut out);
    assert_eq!(
        out,
        log(&[(10_000, "tx 100")]),
        "a retransmitted INVITE gets the 100 again and is not passed up"
    );
}

#[test]
fn invite_server_skips_trying_when_tu_answers_first() {
    let clock = Clock::new();
    let request = invite("a");
    let mut t = ServerInvite::new(
        clock.at(0),
        request.clone(),
        Reliability::Unreliable,
        TimerConfig::default(),
        TryingPolicy::default(),
    )
    .expect("INVITE starts a server transaction");
    initial(&mut t, &clock);
    t.send_response(clock.at(150), response_to(&request, 180, Some("t")))
        .expect("180 is allowed in Proceeding");
    let mut out = Vec::new();
    drain(&mut t, &clock, clock.at(150), &mut out);
    assert_eq!(out, log(&[(150, "tx 180")]));
    assert_eq!(run_until(&mut t, &clock, 10_000), log(&[]));
    assert_eq!(t.poll_timeout(), None);
}

#[test]
fn invite_server_immediate_trying_copies_the_request_headers() {
    let clock = Clock::new();
    let request = invite("a");
    let mut t = ServerInvite::new(
        clock.at(0),
        request.clone(),
        Reliability::Unreliable,
        TimerConfig::default(),
        TryingPolicy::Immediate,
    )
    .expect("INVITE starts a server transaction");
    let trying = match t.poll_transmit() {
        Some(response) if !response.is_request() => response,
        other => panic!("expected 100 Trying, got {other:?}"),
    };
    assert_eq!(trying.status(), Some(100));
    let expected = response_to(&request, 100, None);
    assert_eq!(trying.vias(), expected.vias());
    assert_eq!(trying.from(), expected.from());
    assert_eq!(trying.to(), expected.to(), "no To tag on a 100");
    assert_eq!(trying.call_id(), expected.call_id());
    assert_eq!(trying.cseq(), expected.cseq());
}

#[test]
fn invite_server_retransmits_non_2xx_with_g_until_h() {
    let clock = Clock::new();
    let request = invite("a");
    let mut t = ServerInvite::new(
        clock.at(0),
        request.clone(),
        Reliability::Unreliable,
        TimerConfig::default(),
        TryingPolicy::Immediate,
    )
    .expect("INVITE starts a server transaction");
    initial(&mut t, &clock);
    t.send_response(clock.at(0), response_to(&request, 486, Some("t")))
        .expect("486 is allowed");
    let mut out = Vec::new();
    drain(&mut t, &clock, clock.at(0), &mut out);
    assert_eq!(out, log(&[(0, "tx 486")]));
    assert_eq!(
        run_until(&mut t, &clock, 100_000),
        log(&[
            (500, "tx 486"),
            (1500, "tx 486"),
            (3500, "tx 486"),
            (7500, "tx 486"),
            (11500, "tx 486"),
            (15500, "tx 486"),
            (19500, "tx 486"),
            (23500, "tx 486"),
            (27500, "tx 486"),
            (31500, "tx 486"),
            (32000, "ev Timeout H"),
            (32000, "ev Terminated"),
        ])
    );
}

#[test]
fn invite_server_ack_confirms_and_absorbs_until_timer_i() {
    let clock = Clock::new();
    let request = invite("a");
    let mut t = ServerInvite::new(
        clock.at(0),
        request.clone(),
        Reliability::Unreliable,
        TimerConfig::default(),
        TryingPolicy::Immediate,
    )
    .expect("INVITE starts a server transaction");
    initial(&mut t, &clock);
    let busy = response_to(&request, 486, Some("t"));
    t.send_response(clock.at(0), busy.clone())
        .expect("486 is allowed");
    let mut out = Vec::new();
    drain(&mut t, &clock, clock.at(0), &mut out);
    assert_eq!(run_until(&mut t, &clock, 600), log(&[(500, "tx 486")]));
    // A late INVITE copy gets the final response again.
    t.handle_request(clock.at(600), request.clone());
    assert_eq!(t.poll_transmit(), Some(busy.clone()));
    let ack = build_non_2xx_ack(&request, &busy).expect("ACK builds");
    for ms in [700, 800, 900] {
        t.handle_request(clock.at(ms), ack.clone());
        assert_eq!(t.poll_transmit(), None, "ACKs are absorbed");
        assert_eq!(t.poll_event(), None, "ACKs for non-2xx are not passed up");
    }
    assert_eq!(t.state(), ServerInviteState::Confirmed);
    assert_eq!(
        run_until(&mut t, &clock, 100_000),
        log(&[(5700, "ev Terminated")]),
        "timer I is T4 after the first ACK, and G stopped"
    );
}

#[test]
fn invite_server_2xx_accepted_absorbs_invite_retransmissions() {
    let clock = Clock::new();
    let request = invite("a");
    let mut t = ServerInvite::new(
        clock.at(0),
        request.clone(),
        Reliability::Unreliable,
        TimerConfig::default(),
        TryingPolicy::Immediate,
    )
    .expect("INVITE starts a server transaction");
    initial(&mut t, &clock);
    let ok = response_to(&request, 200, Some("t"));
    assert_eq!(
        t.request(),
        Some(&request),
        "kept for a 100 Trying of its own"
    );
    t.send_response(clock.at(100), ok.clone())
        .expect("200 is allowed");
    assert_eq!(t.poll_transmit(), Some(ok.clone()));
    assert_eq!(
        t.request(),
        None,
        "Accepted lasts 32 s and needs only the key: the INVITE is let go"
    );
    t.handle_request(clock.at(400), request.clone());
    assert_eq!(
        t.poll_transmit(),
        None,
        "the transaction never retransmits a 2xx"
    );
    assert_eq!(t.poll_event(), None, "INVITE copies are not passed up");
    t.send_response(clock.at(600), ok.clone())
        .expect("the TU may retransmit its 2xx in Accepted");
    assert_eq!(t.poll_transmit(), Some(ok.clone()));
    let err = t
        .send_response(clock.at(700), response_to(&request, 486, Some("t")))
        .expect_err("a non-2xx after a 2xx is refused");
    assert_eq!(
        err,
        TransactionError::ResponseNotAllowed {
            status: 486,
            state: "Accepted"
        }
    );
    assert_eq!(
        run_until(&mut t, &clock, 100_000),
        log(&[(32100, "ev Terminated")]),
        "timer L is 64*T1 after the 2xx"
    );
}

#[test]
fn invite_server_reliable_has_no_g_and_zero_timer_i() {
    let clock = Clock::new();
    let request = invite("a");
    let mut t = ServerInvite::new(
        clock.at(0),
        request.clone(),
        Reliability::Reliable,
        TimerConfig::default(),
        TryingPolicy::Immediate,
    )
    .expect("INVITE starts a server transaction");
    initial(&mut t, &clock);
    let busy = response_to(&request, 486, Some("t"));
    t.send_response(clock.at(0), busy.clone())
        .expect("486 is allowed");
    assert_eq!(t.poll_transmit(), Some(busy.clone()));
    assert_eq!(
        t.poll_timeout(),
        Some(clock.at(32_000)),
        "only timer H runs"
    );
    t.handle_request(
        clock.at(40),
        build_non_2xx_ack(&request, &busy).expect("ACK builds"),
    );
    assert_eq!(t.poll_event(), Some(TransactionEvent::Terminated));
    assert_eq!(t.state(), ServerInviteState::Terminated);
}

// ---- non-INVITE server ----

#[test]
fn non_invite_server_absorbs_and_replays_responses_until_timer_j() {
    let clock = Clock::new();
    let request = bye();
    let mut t = Server::new(
        clock.at(0),
        request.clone(),
        Reliability::Unreliable,
        TimerConfig::default(),
    )
    .expect("BYE starts a server transaction");
    assert_eq!(initial(&mut t, &clock), log(&[(0, "ev Request BYE")]));
    t.handle_request(clock.at(500), request.clone());
    assert_eq!(t.poll_transmit(), None, "nothing to replay in Trying");
    assert_eq!(t.poll_event(), None, "retransmissions are not passed up");
    t.send_response(clock.at(600), response_to(&request, 100, None))
        .expect("100 is allowed");
    assert_eq!(t.state(), ServerState::Proceeding);
    t.handle_request(clock.at(1500), request.clone());
    let mut out = Vec::new();
    drain(&mut t, &clock, clock.at(1500), &mut out);
    assert_eq!(out, log(&[(1500, "tx 100"), (1500, "tx 100")]));
    t.send_response(clock.at(2000), response_to(&request, 200, Some("t")))
        .expect("200 is allowed");
    t.handle_request(clock.at(3500), request.clone());
    let mut out = Vec::new();
    drain(&mut t, &clock, clock.at(3500), &mut out);
    assert_eq!(out, log(&[(3500, "tx 200"), (3500, "tx 200")]));
    let err = t
        .send_response(clock.at(3600), response_to(&request, 500, Some("t")))
        .expect_err("a second final is refused");
    assert_eq!(
        err,
        TransactionError::ResponseNotAllowed {
            status: 500,
            state: "Completed"
        }
    );
    assert_eq!(
        run_until(&mut t, &clock, 100_000),
        log(&[(34000, "ev Terminated")]),
        "timer J is 64*T1 after the final"
    );
}

#[test]
fn non_invite_server_reliable_terminates_on_final() {
    let clock = Clock::new();
    let request = bye();
    let mut t = Server::new(
        clock.at(0),
        request.clone(),
        Reliability::Reliable,
        TimerConfig::default(),
    )
    .expect("BYE starts a server transaction");
    initial(&mut t, &clock);
    t.send_response(clock.at(10), response_to(&request, 200, Some("t")))
        .expect("200 is allowed");
    let mut out = Vec::new();
    drain(&mut t, &clock, clock.at(10), &mut out);
    assert_eq!(out, log(&[(10, "tx 200"), (10, "ev Terminated")]));
}

// ---- keys and the layer ----

#[test]
fn keys_follow_17_1_3_and_17_2_3() {
    let invite = invite("k");
    let server = TransactionKey::server_for_request(&invite).expect("key");
    assert_eq!(server.role(), Role::Server);
    assert_eq!(server.branch().as_str(), "z9hG4bKk");
    assert_eq!(*server.method(), Method::Invite);
    assert_eq!(server.sent_by(), Some("client.example.com:5060"));
    let ack = build_non_2xx_ack(&invite, &response_to(&invite, 486, Some("t"))).expect("ACK");
    assert_eq!(
        TransactionKey::server_for_request(&ack).expect("key"),
        server,
        "the ACK for a non-2xx matches its INVITE"
    );
    let cancel = request("CANCEL", "k", 1, "client.example.com:5060");
    let cancel_key = TransactionKey::server_for_request(&cancel).expect("key");
    assert_ne!(cancel_key, server);
    assert_eq!(cancel_key.with_method(Method::Invite), server);
    let keys: std::collections::HashSet<TransactionKey> = [server.clone()].into();
    assert!(
        keys.contains(&TransactionKey::server_for_request(&ack).expect("key")),
        "a key made apart from an equal one hashes alike"
    );
    assert!(!keys.contains(&cancel_key));
    let upper = request("INVITE", "k", 1, "Client.Example.COM:5060");
    assert!(
        keys.contains(&TransactionKey::server_for_request(&upper).expect("key")),
        "sent-by compares without case"
    );
    let other_host = request("INVITE", "k", 1, "attacker.example.com:5060");
    assert_ne!(
        TransactionKey::server_for_request(&other_host).expect("key"),
        server,
        "sent-by is part of the server key"
    );
    let client = TransactionKey::client_for_request(&invite).expect("key");
    assert_eq!(
        TransactionKey::client_for_response(&response_to(&invite, 180, None)).expect("key"),
        client
    );
    let no_cookie = {
        let text = String::from_utf8_lossy(invite.bytes()).replace("branch=z9hG4bKk", "branch=old");
        crate::sip::parse(text.as_bytes()).expect("parses")
    };
    assert_eq!(
        TransactionKey::server_for_request(&no_cookie),
        Err(TransactionError::MissingBranch)
    );
}

fn layer_events(layer: &mut TransactionLayer) -> Vec<LayerEvent> {
    std::iter::from_fn(|| layer.poll_event()).collect()
}

fn layer_transmits(layer: &mut TransactionLayer) -> Vec<String> {
    std::iter::from_fn(|| layer.poll_transmit())
        .map(|t| describe(&t.message))
        .collect()
}

#[test]
fn layer_matches_cancel_to_its_invite_and_routes_acks() {
    let clock = Clock::new();
    let mut layer = TransactionLayer::new(TimerConfig::default(), TryingPolicy::Immediate);
    let invite = invite("c");
    let invite_key = layer
        .handle_request(clock.at(0), invite.clone(), Reliability::Unreliable)
        .expect("INVITE accepted");
    assert_eq!(
        layer_events(&mut layer),
        vec![LayerEvent::Request {
            key: invite_key.clone(),
            request: invite.clone(),
            cancels: None
        }]
    );
    assert_eq!(layer_transmits(&mut layer), vec!["100"]);

    let cancel = request("CANCEL", "c", 1, "client.example.com:5060");
    let cancel_key = layer
        .handle_request(clock.at(100), cancel.clone(), Reliability::Unreliable)
        .expect("CANCEL accepted");
    assert_eq!(
        layer_events(&mut layer),
        vec![LayerEvent::Request {
            key: cancel_key.clone(),
            request: cancel.clone(),
            cancels: Some(invite_key.clone())
        }]
    );
    layer
        .send_response(
            clock.at(100),
            &cancel_key,
            response_to(&cancel, 200, Some("t")),
        )
        .expect("200 to CANCEL");
    let terminated = response_to(&invite, 487, Some("t"));
    layer
        .send_response(clock.at(100), &invite_key, terminated.clone())
        .expect("487 to INVITE");
    assert_eq!(layer_transmits(&mut layer), vec!["200", "487"]);
    assert_eq!(layer.len(), 2);

    let ack = build_non_2xx_ack(&invite, &terminated).expect("ACK");
    layer
        .handle_request(clock.at(200), ack.clone(), Reliability::Unreliable)
        .expect("ACK accepted");
    assert_eq!(
        layer_events(&mut layer),
        vec![],
        "the non-2xx ACK is absorbed"
    );

    let ack_2xx = request("ACK", "other", 1, "client.example.com:5060");
    layer
        .handle_request(clock.at(300), ack_2xx.clone(), Reliability::Unreliable)
        .expect("stray ACK accepted");
    assert_eq!(
        layer_events(&mut layer),
        vec![LayerEvent::StrayAck { request: ack_2xx }]
    );

    // I (INVITE, 5 s after the ACK) and J (CANCEL, 32 s after its 200) remain.
    assert_eq!(layer.poll_timeout(), Some(clock.at(5200)));
    layer.handle_timeout(clock.at(5200));
    assert_eq!(
        layer_events(&mut layer),
        vec![LayerEvent::Terminated {
            key: invite_key.clone()
        }]
    );
    assert!(
        !layer.contains(&invite_key),
        "terminated transactions are removed"
    );
    assert_eq!(layer.poll_timeout(), Some(clock.at(32_100)));
    layer.handle_timeout(clock.at(32_100));
    assert_eq!(
        layer_events(&mut layer),
        vec![LayerEvent::Terminated { key: cancel_key }]
    );
    assert!(layer.is_empty());
    assert_eq!(layer.poll_timeout(), None);
}

#[test]
fn layer_discards_stray_responses_and_refuses_ack_requests() {
    let clock = Clock::new();
    let mut layer = TransactionLayer::new(TimerConfig::default(), TryingPolicy::default());
    let invite = invite("s");
    assert_eq!(
        layer.handle_response(clock.at(0), response_to(&invite, 200, Some("t"))),
        Ok(None)
    );
    assert_eq!(
        layer.send_request(
            clock.at(0),
            request("ACK", "s", 1, "client.example.com:5060"),
            Reliability::Unreliable
        ),
        Err(TransactionError::AckIsNotATransaction)
    );
    let key = layer
        .send_request(clock.at(0), invite.clone(), Reliability::Unreliable)
        .expect("INVITE sent");
    assert_eq!(
        layer.send_request(clock.at(0), invite.clone(), Reliability::Unreliable),
        Err(TransactionError::DuplicateTransaction)
    );
    assert_eq!(
        layer.send_response(clock.at(0), &key, response_to(&invite, 200, None)),
        Err(TransactionError::WrongRole)
    );
}

/// Two layers wired back to back over a lossy, duplicating network.
#[test]
fn two_layers_complete_a_rejected_call_over_a_lossy_network() {
    let clock = Clock::new();
    let mut uac = TransactionLayer::new(TimerConfig::default(), TryingPolicy::default());
    let mut uas = TransactionLayer::new(TimerConfig::default(), TryingPolicy::default());
    let invite = invite("p");

    // t=0: the first INVITE is lost.
    let client_key = uac
        .send_request(clock.at(0), invite.clone(), Reliability::Unreliable)
        .expect("INVITE sent");
    assert_eq!(layer_transmits(&mut uac), vec!["INVITE"]);

    // t=500: timer A retransmits; this copy arrives twice.
    assert_eq!(uac.poll_timeout(), Some(clock.at(500)));
    uac.handle_timeout(clock.at(500));
    let copy = match uac.poll_transmit().map(|t| t.message) {
        Some(request) if request.is_request() => request,
        other => panic!("expected the INVITE retransmission, got {other:?}"),
    };
    let server_key = uas
        .handle_request(clock.at(510), copy.clone(), Reliability::Unreliable)
        .expect("INVITE accepted");
    uas.handle_request(clock.at(520), copy, Reliability::Unreliable)
        .expect("duplicate accepted");
    assert_eq!(
        layer_events(&mut uas).len(),
        1,
        "the duplicate INVITE is absorbed"
    );

    // t=600: the TU rejects; the first 486 is lost, G resends it at 1100.
    uas.send_response(
        clock.at(600),
        &server_key,
        response_to(&invite, 486, Some("t")),
    )
    .expect("486 sent");
    assert_eq!(layer_transmits(&mut uas), vec!["486"]);
    assert_eq!(uas.poll_timeout(), Some(clock.at(1100)));
    uas.handle_timeout(clock.at(1100));
    let busy = match uas.poll_transmit().map(|t| t.message) {
        Some(response) if !response.is_request() => response,
        other => panic!("expected the 486 retransmission, got {other:?}"),
    };

    // The 486 arrives at 1110, before the UAC's next timer A at 1500.
    assert_eq!(
        uac.handle_response(clock.at(1110), busy.clone()),
        Ok(Some(client_key.clone()))
    );
    let ack = match uac.poll_transmit().map(|t| t.message) {
        Some(request) if request.is_request() => request,
        other => panic!("expected the ACK, got {other:?}"),
    };
    assert_eq!(
        layer_events(&mut uac),
        vec![LayerEvent::Response {
            key: client_key.clone(),
            response: busy.clone()
        }]
    );

    // The ACK reaches the UAS: Confirmed, no more 486s.
    uas.handle_request(clock.at(1120), ack, Reliability::Unreliable)
        .expect("ACK accepted");
    assert_eq!(uas.poll_timeout(), Some(clock.at(6120)), "timer I");
    uas.handle_timeout(clock.at(6120));
    assert_eq!(layer_transmits(&mut uas), Vec::<String>::new());
    assert_eq!(
        layer_events(&mut uas),
        vec![LayerEvent::Terminated { key: server_key }]
    );

    // The UAC keeps the transaction for timer D (32 s) and then drops it.
    assert_eq!(uac.poll_timeout(), Some(clock.at(33_110)));
    uac.handle_timeout(clock.at(33_110));
    assert_eq!(
        layer_events(&mut uac),
        vec![LayerEvent::Terminated { key: client_key }]
    );
    assert!(uac.is_empty() && uas.is_empty());
}

#[test]
fn combined_via_line_uses_its_first_value() {
    let text = String::from_utf8_lossy(invite("a").bytes()).replace(
        "Via: SIP/2.0/UDP client.example.com:5060;branch=z9hG4bKa\r\nVia: SIP/2.0/UDP origin.example.com;branch=z9hG4bKorigin",
        "Via: SIP/2.0/UDP client.example.com:5060;branch=z9hG4bKa, SIP/2.0/UDP origin.example.com;branch=z9hG4bKorigin",
    );
    assert!(
        text.contains("z9hG4bKa, SIP/2.0/UDP origin"),
        "the Via lines were merged: {text}"
    );
    let request = crate::sip::parse(text.as_bytes()).expect("parses");
    let key = TransactionKey::server_for_request(&request).expect("key");
    assert_eq!(key.branch().as_str(), "z9hG4bKa");
    assert_eq!(key.sent_by(), Some("client.example.com:5060"));
}

/// The table holds every REGISTER's transaction for 32 s after its answer
/// (Timer J over UDP): an entry must cost what a non-INVITE server
/// transaction needs, not the size of the largest kind.
#[test]
fn a_table_entry_is_the_size_of_a_small_transaction_not_the_largest() {
    let entry = std::mem::size_of::<(TransactionKey, Live)>();
    assert!(
        entry <= std::mem::size_of::<(TransactionKey, Server)>() + 16,
        "an entry takes {entry} bytes; a Server transaction {}",
        std::mem::size_of::<Server>()
    );
    assert!(entry <= 320, "an entry takes {entry} bytes");
}

/// Every answered call keeps its two INVITE transactions 32 s (Timers L
/// and M) after they let go of their messages, and a transaction keeps the
/// messages it may re-send meanwhile: a message is a shared handle (the
/// parsed values and the octets behind reference counts), so keeping or
/// queueing one copies neither.
#[test]
fn a_kept_message_is_a_shared_handle_not_a_copy() {
    let message = std::mem::size_of::<SipMessage>();
    assert!(message <= 24, "a message handle takes {message} bytes");
    for (kind, size) in [
        ("ServerInvite", std::mem::size_of::<ServerInvite>()),
        ("ClientInvite", std::mem::size_of::<ClientInvite>()),
        ("Client", std::mem::size_of::<Client>()),
    ] {
        assert!(size <= 320, "a {kind} takes {size} bytes");
    }
    let request = invite("kept");
    let kept = request.clone();
    assert!(std::ptr::eq(kept.headers(), request.headers()));
    assert!(std::ptr::eq(kept.bytes(), request.bytes()));
}

/// Changing a kept message's top Via (as the server does to a request
/// before answering it) changes that message only.
#[test]
fn changing_a_shared_message_leaves_the_other_handles_as_they_were() {
    // The client asks for rport, and its sent-by is not the source address.
    let original = request("OPTIONS", "cow", 1, "192.0.2.1;rport");
    let mut stamped = original.clone();
    stamped.stamp_received("198.51.100.7:40000".parse().expect("address"));
    assert_eq!(stamped.top_via().rport(), Some(40000));
    assert_eq!(original.top_via().rport(), None);
    assert!(original.top_via().received().is_none());
    assert_eq!(
        stamped.top_via().received(),
        Some("198.51.100.7".parse().expect("address"))
    );
}

/// Every live transaction with a deadline is filed once, under that
/// deadline, in the layer's `deadlines`, and nothing else is.
fn assert_filed_as_due(layer: &TransactionLayer, step: &str) {
    let mut due = 0;
    for (at, key) in &layer.deadlines {
        let live = layer
            .transactions
            .get(key)
            .unwrap_or_else(|| panic!("{step}: {key:?} filed but not live"));
        assert_eq!(Some(*at), live.filed, "{step}: {key:?} filed twice");
        assert_eq!(
            live.filed,
            live.transaction.poll_timeout(),
            "{step}: {key:?}"
        );
        due += 1;
    }
    let filed: Vec<_> = layer.deadlines.iter().map(|(at, _)| *at).collect();
    let mut sorted = filed.clone();
    sorted.sort();
    assert_eq!(filed, sorted, "{step}");
    assert_eq!(layer.deadlines.len(), due, "{step}");
}

#[test]
fn each_transaction_is_filed_once_under_its_next_deadline_until_it_ends() {
    let clock = Clock::new();
    let mut layer = TransactionLayer::new(TimerConfig::default(), TryingPolicy::default());
    let (reliable, unreliable) = (Reliability::Reliable, Reliability::Unreliable);

    let options = request("OPTIONS", "opt1", 1, "client.example.com:5060");
    let server = layer
        .handle_request(clock.at(0), options.clone(), unreliable)
        .expect("server transaction");
    let invite_key = layer
        .send_request(clock.at(0), invite("inv1"), unreliable)
        .expect("client INVITE");
    let register = request("REGISTER", "reg1", 1, "client.example.com:5060");
    let register_key = layer
        .send_request(clock.at(0), register.clone(), reliable)
        .expect("client REGISTER");
    assert_filed_as_due(&layer, "started");
    assert_eq!(
        layer.deadlines.len(),
        2,
        "the OPTIONS awaits its answer untimed"
    );

    // A retransmission of the OPTIONS leaves its (absent) deadline alone.
    layer
        .handle_request(clock.at(100), options.clone(), unreliable)
        .expect("retransmission");
    assert_filed_as_due(&layer, "retransmission");

    // Answered: Timer J is filed.
    layer
        .send_response(
            clock.at(200),
            &server,
            response_to(&options, 200, Some("t")),
        )
        .expect("answer");
    assert_filed_as_due(&layer, "answered");
    assert_eq!(layer.deadlines.len(), 3);

    // Timer A fires and is filed again later; Timer E likewise.
    layer.handle_timeout(clock.at(500));
    assert_filed_as_due(&layer, "timer A");
    assert_eq!(layer.deadlines.len(), 3);

    // The INVITE's 180 stops its retransmissions: nothing is due for it
    // until its final response (the TU times a ringing call).
    let ringing = response_to(&invite("inv1"), 180, Some("b"));
    layer.handle_response(clock.at(600), ringing).expect("180");
    assert_filed_as_due(&layer, "ringing");
    assert_eq!(layer.deadlines.len(), 2);

    // The REGISTER's 200 over a reliable transport ends it at once.
    layer
        .handle_response(clock.at(700), response_to(&register, 200, Some("r")))
        .expect("200");
    assert!(!layer.contains(&register_key));
    assert_filed_as_due(&layer, "register answered");
    assert_eq!(layer.deadlines.len(), 1);

    // Long after: Timer J ends the OPTIONS; the ringing INVITE lives on.
    layer.handle_timeout(clock.at(64 * 500 + 1_000));
    assert!(!layer.contains(&server) && layer.contains(&invite_key));
    assert_filed_as_due(&layer, "expired");
    assert!(layer.deadlines.is_empty());

    // Its 486 is acknowledged and Timer D filed; when it fires, the layer
    // is empty.
    let busy = response_to(&invite("inv1"), 486, Some("b"));
    layer.handle_response(clock.at(40_000), busy).expect("486");
    assert_filed_as_due(&layer, "busy");
    assert_eq!(layer.deadlines.len(), 1);
    layer.handle_timeout(clock.at(80_000));
    assert_filed_as_due(&layer, "timer D");
    assert!(layer.deadlines.is_empty() && layer.is_empty());
}
