//! Sans-IO call flows: a simulated caller, callee(s) and RTP manager drive
//! the request-handling core with the B2BUA installed, with explicit time.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::*;
use crate::auth::{AuthConfig, AuthMode, Authenticator, Users};
use crate::registrar::{Record, Registrar, RegistrarConfig, StoreError};
use crate::sip::{build_response_with_body, parse};
use crate::transport::{Flow, Inbound};
use crate::uas::{BindingStore, Uas, UasConfig};
use switchboard_testkit::sip::request;

mod migration;
mod observations;

const CALLER: &str = "192.0.2.1:5060";
const BOB: &str = "192.0.2.2:5060";
const CAROL: &str = "192.0.2.3:5060";
const CALLER_SDP: &str = "v=0\r\no=alice 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";
const CALLEE_SDP: &str = "v=0\r\no=bob 1 1 IN IP4 192.0.2.2\r\ns=-\r\nc=IN IP4 192.0.2.2\r\nt=0 0\r\nm=audio 50000 RTP/AVP 0\r\n";

struct NoStore;

/// Records the names the B2BUA asks for; the test answers them.
struct FakeResolver(Arc<std::sync::Mutex<Vec<crate::resolve::Query>>>);

impl crate::resolve::Resolve for FakeResolver {
    fn resolve(&self, query: crate::resolve::Query) {
        self.0.lock().expect("queries").push(query);
    }
}

impl BindingStore for NoStore {
    fn write(&mut self, _: &crate::registrar::Persist) -> Result<(), StoreError> {
        Ok(())
    }

    fn begin_sync(&mut self) -> Option<crate::registrar::SyncJob> {
        None
    }
    fn finish_sync(&mut self, _: crate::registrar::SyncJob) -> Result<(), StoreError> {
        Ok(())
    }
    fn journal_records(&self) -> usize {
        0
    }
    fn compact(&mut self, _: Vec<Record>) -> Result<(), StoreError> {
        Ok(())
    }
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test address")
}

/// The SDP the fake manager returns: which operation made it is in `s=`.
fn manager_sdp(what: &str) -> String {
    manager_sdp_on(1, what)
}

/// The SDP of manager `on` (203.0.113.`on`).
fn manager_sdp_on(on: u8, what: &str) -> String {
    format!("v=0\r\no=- 1 1 IN IP4 203.0.113.{on}\r\ns={what}\r\nc=IN IP4 203.0.113.{on}\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0\r\n")
}

/// The fake manager's final figures of a call's legs, `times` the usual
/// (so that sums over two managers show which one counted what).
fn figures(times: u64) -> Vec<LegFigures> {
    ["a", "b"]
        .into_iter()
        .map(|leg| LegFigures {
            leg: MediaLegId(leg.to_owned()),
            rtp_in: Counters {
                packets: 500 * times,
                bytes: 86_000 * times,
            },
            rtp_out: Counters {
                packets: 499 * times,
                bytes: 85_828 * times,
            },
            lost: i64::try_from(times).unwrap_or(1),
            jitter_us: 250,
            kernel_packets: 490 * times,
        })
        .collect()
}

/// What the fake manager does with the next request of a kind.
#[derive(Default)]
struct Manager {
    /// Every request, in order.
    ops: Vec<MediaOp>,
    /// Playbacks not yet ended.
    playing: Vec<MediaRequestId>,
    /// The next Offer fails this way.
    fail_offer: Option<MediaFailure>,
    /// Bridges fail.
    fail_bridge: bool,
    /// Requests wait in `held` until `release`.
    hold: bool,
    held: Vec<MediaRequest>,
    /// Media call ids in the order the manager first saw them.
    calls: Vec<MediaCallId>,
    /// Which manager the call's requests reach (1 = m1; a `Move` goes to
    /// 2, an `Abort` back to 1): its SDP says so in `c=`.
    on: u8,
    /// A `Move` finds no other manager.
    fail_move: bool,
}

struct Harness {
    uas: Uas,
    link: MediaLink,
    events: tokio::sync::broadcast::Receiver<Arc<crate::events::Published>>,
    cdrs: crate::cdr::CdrQueue,
    now: Now,
    manager: Manager,
    sent: VecDeque<(SocketAddr, SipMessage)>,
    /// Where each message in `sent` went, as the core asked.
    destinations: Vec<(crate::transport::Destination, SipMessage)>,
    /// The names the B2BUA asked to resolve.
    queries: Arc<std::sync::Mutex<Vec<crate::resolve::Query>>>,
    branch: u32,
}

fn plan(json: &str) -> Arc<Dialplan> {
    Arc::new(Dialplan::parse(json).expect("test dialplan parses"))
}

fn dial_plan(targets: &str, extra: &str) -> String {
    format!(
        r#"{{"version": "1.0", "routes": [
          {{"id": "play", "pattern": "9000", "priority": 1, "actions": [
            {{"type": "answer", "params": {{}}}},
            {{"type": "play_audio", "params": {{"files": ["welcome.wav"]}}}},
            {{"type": "hangup", "params": {{"code": 200, "reason": "done"}}}}]}},
          {{"id": "dial", "pattern": "1XXX", "priority": 2, "actions": [
            {{"type": "dial", "params": {{"targets": {targets}, "timeout": 5 {extra}}}}}]}}
        ]}}"#
    )
}

impl Harness {
    fn new(plan_json: &str) -> Harness {
        Harness::with(plan_json, CallLimits::default(), None)
    }

    /// A harness with call limits; with `users` (a users file's text),
    /// INVITEs need digest authentication (MD5) in realm `test`.
    fn with(plan_json: &str, limits: CallLimits, users: Option<&str>) -> Harness {
        let mut auth = AuthConfig::digest("test", vec![7; 32]);
        let uas_config = UasConfig::new("test");
        let users = match users {
            Some(text) => {
                auth.methods = vec!["INVITE".to_owned()];
                auth.algorithms = vec![crate::auth::Algorithm::Md5];
                Users::parse(std::path::Path::new("users.toml"), text, "test")
                    .expect("test users parse")
            }
            None => {
                auth.mode = AuthMode::Anonymous;
                Users::default()
            }
        };
        Harness::build(
            plan_json,
            Authenticator::new(auth, users),
            uas_config,
            IdentityPolicy::default(),
            limits,
        )
    }

    /// A harness whose core authenticates with `auth` and whose B2BUA
    /// applies `identity`.
    fn with_auth(plan_json: &str, auth: Authenticator, identity: IdentityPolicy) -> Harness {
        Harness::build(
            plan_json,
            auth,
            UasConfig::new("test"),
            identity,
            CallLimits::default(),
        )
    }

    fn build(
        plan_json: &str,
        auth: Authenticator,
        uas_config: UasConfig,
        identity: IdentityPolicy,
        limits: CallLimits,
    ) -> Harness {
        let registrar = RegistrarConfig {
            default_domain: Some("example.com".to_owned()),
            ..RegistrarConfig::default()
        };
        let mut uas = Uas::new(
            uas_config,
            Registrar::new(registrar),
            auth,
            Box::new(NoStore),
        );
        let link = MediaLink::new();
        let b2bua = B2bua::new(
            B2buaConfig {
                local: crate::transport::Advertised {
                    host: "192.0.2.100".to_owned(),
                    port: 5060,
                    tls_port: Some(5061),
                    ..crate::transport::Advertised::default()
                },
                timers: TimerConfig::default(),
                seed: 42,
                identity,
                owner: Owner::new("test", 1),
                limits,
            },
            plan(plan_json),
            link.clone(),
        );
        let bus = EventBus::new();
        let events = bus.subscribe();
        let (sink, cdrs) = crate::cdr::CdrQueue::new();
        let mut b2bua = b2bua;
        b2bua.set_events(bus);
        b2bua.set_cdrs(sink);
        let queries = Arc::new(std::sync::Mutex::new(Vec::new()));
        b2bua.set_resolver(Box::new(FakeResolver(Arc::clone(&queries))));
        uas.set_call_handler(Box::new(b2bua));
        Harness {
            uas,
            link,
            events,
            cdrs,
            now: Now {
                instant: Instant::now(),
                wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            },
            manager: Manager::default(),
            sent: VecDeque::new(),
            destinations: Vec::new(),
            queries,
            branch: 0,
        }
    }

    /// Delivers `text` from `peer`, then lets the manager answer.
    fn from(&mut self, peer: &str, text: &str) {
        self.over_flow(Flow::Udp { remote: addr(peer) }, text);
    }

    /// Delivers `text` over `flow`, then lets the manager answer.
    fn over_flow(&mut self, flow: Flow, text: &str) {
        self.uas.handle_inbound(
            self.now,
            Inbound {
                flow,
                bytes: text.as_bytes().to_vec(),
            },
        );
        self.settle();
    }

    /// What the core's driver does on each turn: the due timers, then one
    /// due input from the link as its own input.
    fn step(&mut self) {
        self.uas.handle_timeout(self.now);
        if let Some(input) = self.link.pop_input(self.now.instant) {
            self.uas.handle_media(self.now, input);
        }
    }

    /// Runs the manager until it has nothing left to answer; the core
    /// commits first, as its driver does when the queue runs dry.
    fn settle(&mut self) {
        self.uas.handle_input(self.now, crate::uas::Input::Commit);
        loop {
            self.collect();
            let mut answered = false;
            while let Some(request) = self.uas.poll_media_request() {
                answered = true;
                if !self.manager.calls.contains(&request.call) {
                    self.manager.calls.push(request.call.clone());
                }
                let result = self.answer(&request);
                self.manager.ops.push(request.op.clone());
                if let Some(result) = result {
                    self.link.push_input(
                        self.now.instant,
                        LinkInput::Result {
                            id: request.id,
                            result,
                        },
                    );
                }
            }
            let due = [self.uas.poll_timeout(self.now), self.link.next_input_at()]
                .into_iter()
                .flatten()
                .any(|at| at <= self.now.instant);
            if !answered && !due {
                break;
            }
            self.step();
        }
        self.collect();
    }

    fn answer(&mut self, request: &MediaRequest) -> Option<MediaResult> {
        if self.manager.hold {
            self.manager.held.push(request.clone());
            return None;
        }
        let on = self.manager.on.max(1);
        let sdp = |what: &str| MediaResult::Sdp(manager_sdp_on(on, what));
        Some(match &request.op {
            MediaOp::Move if self.manager.fail_move => MediaResult::Failed {
                failure: MediaFailure::Unavailable,
                message: "no other manager can take the call".to_owned(),
            },
            MediaOp::Move => {
                self.manager.on = 2;
                MediaResult::Moved {
                    manager: "m2".to_owned(),
                }
            }
            MediaOp::Abort => {
                self.manager.on = 1;
                MediaResult::Deleted(figures(1))
            }
            MediaOp::Release { delete: true } => MediaResult::Deleted(figures(100)),
            MediaOp::Release { delete: false } => MediaResult::Done,
            MediaOp::Offer { leg, peer, .. } => match self.manager.fail_offer.take() {
                Some(failure) => MediaResult::Failed {
                    failure,
                    message: "test".to_owned(),
                },
                None => sdp(&format!(
                    "offer-{leg}-{}",
                    peer.map_or("self", CallLeg::as_str)
                )),
            },
            MediaOp::Answer { bridge: true, .. } if self.manager.fail_bridge => {
                MediaResult::Failed {
                    failure: MediaFailure::Internal,
                    message: "test".to_owned(),
                }
            }
            MediaOp::Answer { leg, peer, .. } => sdp(&format!("answer-{leg}-{peer}")),
            MediaOp::Play { .. } => {
                self.manager.playing.push(request.id);
                return None;
            }
            MediaOp::Bridge if self.manager.fail_bridge => MediaResult::Failed {
                failure: MediaFailure::Internal,
                message: "test".to_owned(),
            },
            MediaOp::Bridge => MediaResult::Done,
            MediaOp::Delete { .. } => MediaResult::Deleted(figures(1)),
        })
    }

    /// Answers the held requests, in order.
    fn release(&mut self) {
        self.manager.hold = false;
        for request in std::mem::take(&mut self.manager.held) {
            if let Some(result) = self.answer(&request) {
                self.link.push_input(
                    self.now.instant,
                    LinkInput::Result {
                        id: request.id,
                        result,
                    },
                );
            }
        }
        self.step();
        self.settle();
    }

    /// Ends the oldest playback as completed.
    fn finish_playback(&mut self) {
        let id = self.manager.playing.remove(0);
        self.link.push_input(
            self.now.instant,
            LinkInput::Result {
                id,
                result: MediaResult::PlayEnded { completed: true },
            },
        );
        self.step();
        self.settle();
    }

    fn event(&mut self, event: MediaEvent) {
        self.link
            .push_input(self.now.instant, LinkInput::Event(event));
        self.step();
        self.settle();
    }

    fn advance(&mut self, by: Duration) {
        let end = self.now.instant + by;
        // Step through every deadline so timers fire at their own time.
        loop {
            let next = self.uas.poll_timeout(self.now).filter(|at| *at <= end);
            let step = next.unwrap_or(end).max(self.now.instant);
            self.now = self.now.advanced(step - self.now.instant);
            self.step();
            self.settle();
            if next.is_none() {
                break;
            }
        }
    }

    fn collect(&mut self) {
        while let Some(out) = self.uas.poll_transmit() {
            let message = parse(&out.bytes).unwrap_or_else(|e| {
                panic!(
                    "B2BUA sent an unparseable message ({e:?}):\n{}",
                    String::from_utf8_lossy(&out.bytes)
                )
            });
            self.destinations.push((out.destination, message.clone()));
            self.sent.push_back((out.destination.remote(), message));
        }
    }

    /// The next message sent to `peer`, which must exist.
    fn next_to(&mut self, peer: &str) -> SipMessage {
        let peer = addr(peer);
        let index = self
            .sent
            .iter()
            .position(|(to, _)| *to == peer)
            .unwrap_or_else(|| panic!("nothing sent to {peer}; sent: {:?}", self.summary()));
        self.sent.remove(index).expect("index is valid").1
    }

    /// The next response sent to `peer`, with this status.
    fn response_to(&mut self, peer: &str, status: u16) -> SipMessage {
        let message = self.next_to(peer);
        assert_eq!(
            message.status(),
            Some(status),
            "expected {status} to {peer}, got {}",
            describe(&message)
        );
        message
    }

    /// The next request sent to `peer`, with this method.
    fn request_to(&mut self, peer: &str, method: &str) -> SipMessage {
        let message = self.next_to(peer);
        assert!(
            message.is_request() && message.method().as_str() == method,
            "expected {method} to {peer}, got {}",
            describe(&message)
        );
        message
    }

    fn nothing_to(&self, peer: &str) {
        let peer = addr(peer);
        let pending: Vec<String> = self
            .sent
            .iter()
            .filter(|(to, _)| *to == peer)
            .map(|(_, m)| describe(m))
            .collect();
        assert!(pending.is_empty(), "unexpected to {peer}: {pending:?}");
    }

    fn summary(&self) -> Vec<String> {
        self.sent
            .iter()
            .map(|(to, m)| format!("{to} {}", describe(m)))
            .collect()
    }

    fn occupancy(&self) -> Occupancy {
        self.link.occupancy()
    }

    fn ops(&mut self) -> Vec<MediaOp> {
        std::mem::take(&mut self.manager.ops)
    }

    fn new_branch(&mut self) -> String {
        self.branch += 1;
        format!("z9hG4bKpeer{}", self.branch)
    }

    // ----- what the peers send ---------------------------------------

    fn invite(&mut self, to: &str, call_id: &str, sdp: Option<&str>) -> String {
        self.invite_with(to, call_id, sdp, &[])
    }

    fn invite_with(
        &mut self,
        to: &str,
        call_id: &str,
        sdp: Option<&str>,
        extra: &[(&str, &str)],
    ) -> String {
        let branch = self.new_branch();
        let via = format!("SIP/2.0/UDP {CALLER};branch={branch};rport");
        let to_header = format!("<sip:{to}@192.0.2.100>");
        let mut headers = vec![
            ("Via", via.as_str()),
            ("Max-Forwards", "70"),
            ("From", "\"Alice\" <sip:alice@192.0.2.1>;tag=alice1"),
            ("To", to_header.as_str()),
            ("Call-ID", call_id),
            ("CSeq", "1 INVITE"),
            ("Contact", "<sip:alice@192.0.2.1:5060>"),
        ];
        headers.extend_from_slice(extra);
        request(
            &format!("INVITE sip:{to}@192.0.2.100 SIP/2.0"),
            &headers,
            sdp,
        )
    }

    /// A request inside the dialog that `answer` (a 2xx we received) set up.
    fn in_dialog(
        &mut self,
        from_peer: &str,
        answer: &SipMessage,
        method: &str,
        cseq: u32,
        sdp: Option<&str>,
    ) -> String {
        let branch = self.new_branch();
        let target = answer
            .contacts()
            .first()
            .map(|c| c.uri.to_string())
            .expect("the 2xx has a Contact");
        request(
            &format!("{method} {target} SIP/2.0"),
            &[
                (
                    "Via",
                    &format!("SIP/2.0/UDP {from_peer};branch={branch};rport"),
                ),
                ("Max-Forwards", "70"),
                ("From", answer.header("From").expect("From")),
                ("To", answer.header("To").expect("To")),
                ("Call-ID", answer.call_id().as_str()),
                ("CSeq", &format!("{cseq} {method}")),
            ],
            sdp,
        )
    }

    /// The callee's request inside the dialog of a request it received.
    fn callee_request(
        &mut self,
        callee: &str,
        received: &SipMessage,
        to_tag: &str,
        method: &str,
        cseq: u32,
        sdp: Option<&str>,
    ) -> String {
        let branch = self.new_branch();
        let target = received
            .contacts()
            .first()
            .map(|c| c.uri.to_string())
            .expect("the INVITE has a Contact");
        request(
            &format!("{method} {target} SIP/2.0"),
            &[
                (
                    "Via",
                    &format!("SIP/2.0/UDP {callee};branch={branch};rport"),
                ),
                ("Max-Forwards", "70"),
                (
                    "From",
                    &format!("{};tag={to_tag}", received.header("To").expect("To")),
                ),
                ("To", received.header("From").expect("From")),
                ("Call-ID", received.call_id().as_str()),
                ("CSeq", &format!("{cseq} {method}")),
                ("Contact", &format!("<sip:peer@{callee}>")),
            ],
            sdp,
        )
    }

    /// The ACK for a 2xx received by the caller.
    fn ack_for(&mut self, answer: &SipMessage, sdp: Option<&str>) -> String {
        let cseq = answer.cseq().seq;
        self.in_dialog(CALLER, answer, "ACK", cseq, sdp)
    }
}

/// A peer's response to a request it received.
fn reply(request: &SipMessage, status: u16, to_tag: Option<&str>, sdp: Option<&str>) -> String {
    reply_with(request, status, to_tag, sdp, &[])
}

/// A response with extra headers.
fn reply_with(
    request: &SipMessage,
    status: u16,
    to_tag: Option<&str>,
    sdp: Option<&str>,
    extra: &[(&str, &str)],
) -> String {
    let contact = format!(
        "<sip:peer@{}>",
        request
            .request_uri()
            .and_then(|u| u
                .host()
                .map(|h| format!("{h}:{}", u.port().unwrap_or(5060))))
            .unwrap_or_default()
    );
    let tag = to_tag.map(Tag::new);
    let mut headers = vec![("Contact".to_owned(), contact)];
    headers.extend(
        extra
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned())),
    );
    let bytes = build_response_with_body(
        request,
        status,
        reason(status),
        tag.as_ref(),
        &headers,
        sdp.map(|s| ("application/sdp", s.as_bytes())),
    );
    String::from_utf8(bytes).expect("responses are text")
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        200 => "OK",
        486 => "Busy Here",
        487 => "Request Terminated",
        491 => "Request Pending",
        603 => "Decline",
        _ => "Other",
    }
}

fn describe(message: &SipMessage) -> String {
    match message.status() {
        Some(status) => format!("{status} ({} {})", message.cseq().seq, message.method()),
        None => format!("{} {}", message.method(), message.call_id()),
    }
}

fn body(message: &SipMessage) -> String {
    String::from_utf8_lossy(message.body()).into_owned()
}

fn offer(sdp: &str) -> MediaOp {
    MediaOp::Offer {
        leg: CallLeg::A,
        peer: Some(CallLeg::B),
        sdp: sdp.to_owned(),
        callee_interface: None,
    }
}

/// Sets up a call from the caller to `1001` answered by Bob (dial of a URI)
/// and returns (the caller's 200, the INVITE Bob received).
fn answered_call(h: &mut Harness) -> (SipMessage, SipMessage) {
    let invite = h.invite("1001", "call-1", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let to_bob = h.request_to(BOB, "INVITE");
    h.from(BOB, &reply(&to_bob, 180, Some("bob1"), None));
    h.response_to(CALLER, 180);
    h.from(BOB, &reply(&to_bob, 200, Some("bob1"), Some(CALLEE_SDP)));
    let ok = h.response_to(CALLER, 200);
    let ack = h.ack_for(&ok, None);
    h.from(CALLER, &ack);
    h.request_to(BOB, "ACK");
    h.ops();
    (ok, to_bob)
}

fn bob_plan() -> String {
    dial_plan(r#"["sip:bob@192.0.2.2:5060"]"#, "")
}

// ----- the flows -------------------------------------------------------

#[test]
fn basic_call_relays_through_the_manager_and_hides_topology() {
    let mut h = Harness::new(&bob_plan());
    let invite = h.invite("1001", "call-1", Some(CALLER_SDP));
    h.from(CALLER, &invite);

    // 100 at once, routed before anything else, one Offer with the caller's SDP.
    let trying = h.response_to(CALLER, 100);
    assert_eq!(trying.to_tag(), None, "100 carries no To tag");
    assert_eq!(h.ops(), vec![offer(CALLER_SDP)]);

    let to_bob = h.request_to(BOB, "INVITE");
    assert_ne!(
        to_bob.call_id().as_str(),
        "call-1",
        "leg b has its own Call-ID"
    );
    assert_eq!(to_bob.vias().len(), 1, "only our Via reaches the callee");
    assert!(
        to_bob.top_via().to_string().contains("192.0.2.100:5060"),
        "our Via: {}",
        to_bob.top_via()
    );
    assert_eq!(to_bob.max_forwards(), 69, "Max-Forwards decremented");
    assert_ne!(
        to_bob.from_tag().map(|t| t.as_str().to_owned()),
        Some("alice1".to_owned())
    );
    assert_eq!(
        to_bob.request_uri().map(ToString::to_string),
        Some("sip:bob@192.0.2.2:5060".to_owned())
    );
    assert_eq!(to_bob.from().uri.to_string(), "sip:alice@192.0.2.100");
    assert_eq!(to_bob.from().display_name.as_deref(), Some("Alice"));
    assert_eq!(
        to_bob.contacts()[0].uri.to_string(),
        "sip:sb@192.0.2.100:5060",
        "our Contact, not the caller's"
    );
    assert_eq!(body(&to_bob), manager_sdp("offer-a-b"));
    assert_eq!(to_bob.cseq().seq, 1);

    h.from(BOB, &reply(&to_bob, 100, None, None));
    h.nothing_to(CALLER);
    h.from(BOB, &reply(&to_bob, 180, Some("bob1"), None));
    let ringing = h.response_to(CALLER, 180);
    let a_tag = ringing.to_tag().expect("180 has our To tag");
    assert_eq!(ringing.call_id().as_str(), "call-1");

    h.from(BOB, &reply(&to_bob, 200, Some("bob1"), Some(CALLEE_SDP)));
    assert_eq!(
        h.ops(),
        vec![MediaOp::Answer {
            leg: CallLeg::B,
            peer: CallLeg::A,
            sdp: CALLEE_SDP.to_owned(),
            bridge: true
        }]
    );
    let ok = h.response_to(CALLER, 200);
    assert_eq!(ok.to_tag(), Some(a_tag), "the 200 keeps the 180's tag");
    assert_eq!(body(&ok), manager_sdp("answer-b-a"));
    assert_eq!(ok.contacts()[0].uri.to_string(), "sip:sb@192.0.2.100:5060");
    h.nothing_to(BOB);

    // End-to-end ACK: the callee's 2xx is ACKed when the caller ACKs.
    let ack = h.ack_for(&ok, None);
    h.from(CALLER, &ack);
    let ack_bob = h.request_to(BOB, "ACK");
    assert_eq!(ack_bob.call_id(), to_bob.call_id());
    assert_eq!(ack_bob.cseq().to_string(), "1 ACK");
    assert_eq!(
        ack_bob.to_tag().map(|t| t.as_str().to_owned()),
        Some("bob1".to_owned())
    );
    assert_eq!(
        ack_bob.request_uri().map(ToString::to_string),
        Some("sip:peer@192.0.2.2:5060".to_owned()),
        "the ACK goes to the callee's Contact"
    );

    // BYE from the caller: 200 to it, BYE to the callee, media deleted.
    let bye = h.in_dialog(CALLER, &ok, "BYE", 2, None);
    h.from(CALLER, &bye);
    h.response_to(CALLER, 200);
    let bye_bob = h.request_to(BOB, "BYE");
    assert_eq!(bye_bob.call_id(), to_bob.call_id());
    assert_eq!(bye_bob.cseq().to_string(), "2 BYE");
    assert_eq!(bye_bob.from_tag(), to_bob.from_tag());
    assert_eq!(
        h.ops(),
        vec![MediaOp::Delete {
            reason: DeleteReason::Hangup,
            detail: "BYE from leg a".to_owned()
        }]
    );
    h.from(BOB, &reply(&bye_bob, 200, None, None));
    h.advance(Duration::from_secs(40));
    assert_eq!(
        h.occupancy(),
        Occupancy::default(),
        "nothing outlives the call"
    );
    assert_eq!(h.uas.transactions(), 0);
}

#[test]
fn bye_from_the_callee_ends_both_legs() {
    let mut h = Harness::new(&bob_plan());
    let (ok, to_bob) = answered_call(&mut h);
    let bye = h.callee_request(BOB, &to_bob, "bob1", "BYE", 1, None);
    h.from(BOB, &bye);
    let answer = h.response_to(BOB, 200);
    assert_eq!(answer.cseq().to_string(), "1 BYE");
    let bye_caller = h.request_to(CALLER, "BYE");
    assert_eq!(bye_caller.call_id().as_str(), "call-1");
    assert_eq!(
        bye_caller.to_tag().map(|t| t.as_str().to_owned()),
        Some("alice1".to_owned())
    );
    assert_eq!(bye_caller.from_tag(), ok.to_tag(), "our tag on leg a");
    assert_eq!(
        bye_caller.request_uri().map(ToString::to_string),
        Some("sip:alice@192.0.2.1:5060".to_owned()),
        "sent to the caller's Contact"
    );
    assert_eq!(bye_caller.cseq().to_string(), "2 BYE");
    assert_eq!(
        h.ops(),
        vec![MediaOp::Delete {
            reason: DeleteReason::Hangup,
            detail: "BYE from leg b".to_owned()
        }]
    );
    h.from(CALLER, &reply(&bye_caller, 200, None, None));
    // A BYE for the ended dialog: 481.
    let again = h.in_dialog(CALLER, &ok, "BYE", 3, None);
    h.from(CALLER, &again);
    h.response_to(CALLER, 481);
    h.advance(Duration::from_secs(40));
    assert_eq!(h.occupancy(), Occupancy::default());
    assert_eq!(h.uas.transactions(), 0);
}

#[test]
fn busy_is_relayed_with_the_callees_code() {
    let mut h = Harness::new(&bob_plan());
    let invite = h.invite("1001", "call-busy", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let to_bob = h.request_to(BOB, "INVITE");
    h.from(BOB, &reply(&to_bob, 486, Some("bob1"), None));
    let ack = h.request_to(BOB, "ACK");
    assert_eq!(
        ack.cseq().to_string(),
        "1 ACK",
        "the transaction ACKs the 486"
    );
    let busy = h.response_to(CALLER, 486);
    assert_eq!(busy.reason(), Some("Busy Here"));
    assert_eq!(
        h.ops(),
        vec![
            offer(CALLER_SDP),
            MediaOp::Delete {
                reason: DeleteReason::Failed,
                detail: "486 Busy Here".to_owned()
            }
        ]
    );
    h.advance(Duration::from_secs(40));
    assert_eq!(h.occupancy(), Occupancy::default());
    assert_eq!(h.uas.transactions(), 0);
}

#[test]
fn cancel_before_answer_is_487_and_cancels_the_callee() {
    let mut h = Harness::new(&bob_plan());
    let invite = h.invite("1001", "call-cancel", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let to_bob = h.request_to(BOB, "INVITE");
    h.from(BOB, &reply(&to_bob, 180, Some("bob1"), None));
    h.response_to(CALLER, 180);
    let cancel = invite
        .replacen("INVITE sip:", "CANCEL sip:", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL")
        .replace(
            &format!("Content-Length: {}", CALLER_SDP.len()),
            "Content-Length: 0",
        )
        .replace("Content-Type: application/sdp\r\n", "")
        .replace(CALLER_SDP, "");
    h.from(CALLER, &cancel);
    let first = h.next_to(CALLER);
    let second = h.next_to(CALLER);
    let mut statuses = [
        (first.status(), first.method().as_str().to_owned()),
        (second.status(), second.method().as_str().to_owned()),
    ];
    statuses.sort();
    assert_eq!(
        statuses,
        [
            (Some(200), "CANCEL".to_owned()),
            (Some(487), "INVITE".to_owned())
        ]
    );
    let cancel_bob = h.request_to(BOB, "CANCEL");
    assert_eq!(
        cancel_bob.top_via().branch(),
        to_bob.top_via().branch(),
        "CANCEL matches the INVITE"
    );
    assert_eq!(cancel_bob.cseq().to_string(), "1 CANCEL");
    assert_eq!(cancel_bob.call_id(), to_bob.call_id());
    h.from(BOB, &reply(&cancel_bob, 200, Some("bob1"), None));
    h.from(BOB, &reply(&to_bob, 487, Some("bob1"), None));
    h.request_to(BOB, "ACK");
    h.nothing_to(CALLER);
    assert_eq!(
        h.ops(),
        vec![
            offer(CALLER_SDP),
            MediaOp::Delete {
                reason: DeleteReason::Cancelled,
                detail: "487 Request Terminated".to_owned()
            }
        ]
    );
    h.advance(Duration::from_secs(40));
    assert_eq!(h.occupancy(), Occupancy::default());
    assert_eq!(h.uas.transactions(), 0);
}

#[test]
fn a_2xx_crossing_the_cancel_is_acked_then_byed() {
    let mut h = Harness::new(&bob_plan());
    let invite = h.invite("1001", "call-race", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    let to_bob = h.request_to(BOB, "INVITE");
    h.from(BOB, &reply(&to_bob, 180, Some("bob1"), None));
    let cancel = format!(
        "CANCEL sip:1001@192.0.2.100 SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: call-race\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n",
        invite.lines().find(|l| l.starts_with("Via: ")).expect("Via").trim_start_matches("Via: "),
        "\"Alice\" <sip:alice@192.0.2.1>;tag=alice1",
        "<sip:1001@192.0.2.100>"
    );
    h.from(CALLER, &cancel);
    h.request_to(BOB, "CANCEL");
    // The callee answered before it saw the CANCEL.
    h.from(BOB, &reply(&to_bob, 200, Some("bob1"), Some(CALLEE_SDP)));
    let ack = h.request_to(BOB, "ACK");
    assert_eq!(
        ack.to_tag().map(|t| t.as_str().to_owned()),
        Some("bob1".to_owned())
    );
    let bye = h.request_to(BOB, "BYE");
    assert_eq!(bye.call_id(), to_bob.call_id());
    assert_eq!(bye.cseq().to_string(), "2 BYE");
    h.from(BOB, &reply(&bye, 200, None, None));
    h.advance(Duration::from_secs(40));
    assert_eq!(h.occupancy(), Occupancy::default());
    assert_eq!(h.uas.transactions(), 0);
}

#[test]
fn dial_timeout_cancels_and_answers_480() {
    let mut h = Harness::new(&bob_plan());
    let invite = h.invite("1001", "call-timeout", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let to_bob = h.request_to(BOB, "INVITE");
    h.from(BOB, &reply(&to_bob, 180, Some("bob1"), None));
    h.response_to(CALLER, 180);
    h.advance(Duration::from_millis(4_900));
    h.nothing_to(CALLER);
    h.advance(Duration::from_millis(200));
    h.request_to(BOB, "CANCEL");
    let failed = h.response_to(CALLER, 480);
    assert_eq!(failed.reason(), Some("Temporarily Unavailable"));
}

#[test]
fn the_next_target_is_tried_after_a_failure_and_6xx_wins() {
    let plan = dial_plan(
        r#"["sip:bob@192.0.2.2:5060", "sip:carol@192.0.2.3:5060"]"#,
        "",
    );
    let mut h = Harness::new(&plan);
    let invite = h.invite("1001", "call-next", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let to_bob = h.request_to(BOB, "INVITE");
    h.nothing_to(CAROL);
    h.from(BOB, &reply(&to_bob, 486, Some("bob1"), None));
    let to_carol = h.request_to(CAROL, "INVITE");
    assert_eq!(
        to_carol.call_id(),
        to_bob.call_id(),
        "one leg-b Call-ID per call"
    );
    assert_eq!(to_carol.cseq().seq, 2, "a new INVITE, a new CSeq");
    assert_eq!(body(&to_carol), manager_sdp("offer-a-b"));
    h.from(
        CAROL,
        &reply(&to_carol, 200, Some("carol1"), Some(CALLEE_SDP)),
    );
    h.response_to(CALLER, 200);

    // Both fail: the 6xx is relayed rather than the 486.
    let mut h = Harness::new(&plan);
    let invite = h.invite("1001", "call-next-2", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let to_bob = h.request_to(BOB, "INVITE");
    h.from(BOB, &reply(&to_bob, 486, Some("bob1"), None));
    let to_carol = h.request_to(CAROL, "INVITE");
    h.from(CAROL, &reply(&to_carol, 603, Some("carol1"), None));
    let decline = h.response_to(CALLER, 603);
    assert_eq!(decline.reason(), Some("Decline"));
}

/// A 3xx to `request` whose only Contacts are `contacts` (one header,
/// comma-separated, as a redirect server may send them).
fn redirect(request: &SipMessage, status: u16, contacts: &str) -> String {
    let headers = vec![("Contact".to_owned(), contacts.to_owned())];
    let bytes = build_response_with_body(
        request,
        status,
        "Moved",
        Some(&Tag::new("r1")),
        &headers,
        None,
    );
    String::from_utf8(bytes).expect("responses are text")
}

const DAVE: &str = "192.0.2.4:5060";
const ERIN: &str = "192.0.2.5:5060";

#[test]
fn a_redirects_contacts_are_rung_in_q_order_before_the_next_target() {
    let plan = dial_plan(
        r#"["sip:bob@192.0.2.2:5060", "sip:carol@192.0.2.3:5060"]"#,
        "",
    );
    let mut h = Harness::new(&plan);
    let invite = h.invite("1001", "call-redirect", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let to_bob = h.request_to(BOB, "INVITE");
    h.from(
        BOB,
        &redirect(
            &to_bob,
            302,
            "<sip:dave@192.0.2.4:5060>;q=0.5, <sip:erin@192.0.2.5:5060>;q=0.9, <sip:nobody@example.com>",
        ),
    );
    // The ACK of the 3xx is the transaction layer's; the B2BUA rings the
    // highest q first, with the call's leg-b Call-ID, From and To.
    let to_erin = h.request_to(ERIN, "INVITE");
    assert_eq!(
        to_erin.request_uri().map(ToString::to_string).as_deref(),
        Some("sip:erin@192.0.2.5:5060")
    );
    assert_eq!(to_erin.call_id(), to_bob.call_id());
    assert_eq!(to_erin.header("To"), to_bob.header("To"), "the original To");
    assert_eq!(to_erin.from_tag(), to_bob.from_tag());
    assert_eq!(to_erin.cseq().seq, 2);
    assert_eq!(body(&to_erin), manager_sdp("offer-a-b"));
    h.nothing_to(DAVE);
    h.nothing_to(CAROL);
    h.from(ERIN, &reply(&to_erin, 486, Some("erin1"), None));
    let to_dave = h.request_to(DAVE, "INVITE");
    assert_eq!(to_dave.cseq().seq, 3);
    h.nothing_to(CAROL);
    h.from(DAVE, &reply(&to_dave, 480, Some("dave1"), None));
    // The redirect's contacts spent (the host name cannot be reached
    // without DNS), the dial goes on with its next target.
    let to_carol = h.request_to(CAROL, "INVITE");
    h.from(
        CAROL,
        &reply(&to_carol, 200, Some("carol1"), Some(CALLEE_SDP)),
    );
    h.response_to(CALLER, 200);
}

#[test]
fn redirect_loops_and_redirects_past_the_dials_bound_are_refused() {
    let one = dial_plan(r#"["sip:bob@192.0.2.2:5060"]"#, r#", "max_redirects": 1"#);
    // Back to where it came from: a loop, nothing rung, the caller gets 480.
    let mut h = Harness::new(&one);
    let invite = h.invite("1001", "call-loop", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let to_bob = h.request_to(BOB, "INVITE");
    h.from(BOB, &redirect(&to_bob, 302, "<sip:bob@192.0.2.2:5060>"));
    h.response_to(CALLER, 480);
    h.request_to(BOB, "ACK");
    h.nothing_to(BOB);

    // One redirect followed, the second refused: the dial's bound.
    let mut h = Harness::new(&one);
    let invite = h.invite("1001", "call-bound", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let to_bob = h.request_to(BOB, "INVITE");
    h.from(BOB, &redirect(&to_bob, 301, "<sip:carol@192.0.2.3:5060>"));
    let to_carol = h.request_to(CAROL, "INVITE");
    h.from(
        CAROL,
        &redirect(&to_carol, 302, "<sip:dave@192.0.2.4:5060>"),
    );
    h.response_to(CALLER, 480);
    h.nothing_to(DAVE);

    // max_redirects 0: a 3xx is a failure like before.
    let none = dial_plan(r#"["sip:bob@192.0.2.2:5060"]"#, r#", "max_redirects": 0"#);
    let mut h = Harness::new(&none);
    let invite = h.invite("1001", "call-none", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let to_bob = h.request_to(BOB, "INVITE");
    h.from(BOB, &redirect(&to_bob, 302, "<sip:carol@192.0.2.3:5060>"));
    h.response_to(CALLER, 480);
    h.nothing_to(CAROL);
}

fn register(h: &mut Harness, user: &str, source: &str, call_id: &str) {
    register_over(
        h,
        user,
        Flow::Udp {
            remote: addr(source),
        },
        call_id,
    );
}

fn register_over(h: &mut Harness, user: &str, flow: Flow, call_id: &str) {
    let source = flow.remote().to_string();
    let branch = h.new_branch();
    let text = request(
        "REGISTER sip:example.com SIP/2.0",
        &[
            (
                "Via",
                &format!("SIP/2.0/{} {source};branch={branch}", flow.transport()),
            ),
            ("Max-Forwards", "70"),
            ("From", &format!("<sip:{user}@example.com>;tag=r1")),
            ("To", &format!("<sip:{user}@example.com>")),
            ("Call-ID", call_id),
            ("CSeq", "1 REGISTER"),
            ("Contact", &format!("<sip:{user}@{source}>")),
            ("Expires", "3600"),
        ],
        None,
    );
    h.over_flow(flow, &text);
    h.response_to(&source, 200);
}

#[test]
fn a_phone_registered_over_tls_is_called_over_its_connection_with_our_tls_via_and_contact() {
    let mut h = Harness::new(&dial_plan(r#"["user/${destination}"]"#, ""));
    let connection = crate::transport::ConnectionId::for_test(7);
    let flow = Flow::Stream {
        kind: crate::transport::Stream::Tls,
        remote: addr(BOB),
        connection,
    };
    register_over(&mut h, "1001", flow, "reg-tls");
    let invite = h.invite("1001", "call-tls", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let to_bob = h.request_to(BOB, "INVITE");
    let (destination, _) = h
        .destinations
        .iter()
        .rev()
        .find(|(_, m)| m.is_request() && *m.method() == Method::Invite)
        .expect("the INVITE's destination")
        .clone();
    // Over TLS to the phone (any open connection to it: the registered one).
    assert_eq!(
        destination,
        crate::transport::Destination::Stream {
            kind: crate::transport::Stream::Tls,
            remote: addr(BOB),
            connection: None
        }
    );
    let via = to_bob.top_via();
    assert_eq!(
        (via.transport.to_string(), via.host.to_string(), via.port),
        ("TLS".to_owned(), "192.0.2.100".to_owned(), Some(5061))
    );
    assert_eq!(
        to_bob.contacts().first().map(|c| c.uri.to_string()),
        Some("sip:sb@192.0.2.100:5061;transport=tls".to_owned())
    );
    // The answer over the same connection completes the call, and the
    // caller (UDP) sees our UDP Contact.
    h.over_flow(flow, &reply(&to_bob, 200, Some("bob1"), Some(CALLEE_SDP)));
    let ok = h.response_to(CALLER, 200);
    assert_eq!(
        ok.contacts().first().map(|c| c.uri.to_string()),
        Some("sip:sb@192.0.2.100:5060".to_owned())
    );
}

#[test]
fn a_registered_user_is_rung_on_every_contact_and_the_loser_cancelled() {
    let mut h = Harness::new(&dial_plan(r#"["user/${destination}"]"#, ""));
    register(&mut h, "1001", BOB, "reg-bob");
    register(&mut h, "1001", CAROL, "reg-carol");
    let invite = h.invite("1001", "call-fork", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let to_bob = h.request_to(BOB, "INVITE");
    let to_carol = h.request_to(CAROL, "INVITE");
    assert_eq!(
        to_bob.request_uri().map(ToString::to_string),
        Some("sip:1001@192.0.2.2:5060".to_owned())
    );
    assert_eq!(
        to_carol.request_uri().map(ToString::to_string),
        Some("sip:1001@192.0.2.3:5060".to_owned())
    );
    assert_eq!(to_bob.call_id(), to_carol.call_id());
    assert_ne!(to_bob.top_via().branch(), to_carol.top_via().branch());
    h.from(CAROL, &reply(&to_carol, 180, Some("carol1"), None));
    h.response_to(CALLER, 180);
    h.from(BOB, &reply(&to_bob, 100, None, None));
    h.from(
        CAROL,
        &reply(&to_carol, 200, Some("carol1"), Some(CALLEE_SDP)),
    );
    h.response_to(CALLER, 200);
    let cancel = h.request_to(BOB, "CANCEL");
    assert_eq!(cancel.top_via().branch(), to_bob.top_via().branch());

    // An unregistered user: 480.
    let invite = h.invite("1002", "call-nobody", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    h.response_to(CALLER, 480);
    h.nothing_to(CALLER);
}

#[test]
fn early_media_goes_through_the_manager() {
    let mut h = Harness::new(&bob_plan());
    let invite = h.invite("1001", "call-early", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let to_bob = h.request_to(BOB, "INVITE");
    h.ops();
    h.from(BOB, &reply(&to_bob, 183, Some("bob1"), Some(CALLEE_SDP)));
    let progress = h.response_to(CALLER, 183);
    assert_eq!(body(&progress), manager_sdp("answer-b-a"));
    assert_eq!(
        h.ops(),
        vec![MediaOp::Answer {
            leg: CallLeg::B,
            peer: CallLeg::A,
            sdp: CALLEE_SDP.to_owned(),
            bridge: false
        }]
    );
    // The same early SDP again: relayed with the answer already made.
    h.from(BOB, &reply(&to_bob, 183, Some("bob1"), Some(CALLEE_SDP)));
    let again = h.response_to(CALLER, 183);
    assert_eq!(body(&again), manager_sdp("answer-b-a"));
    assert_eq!(h.ops(), vec![], "no second Answer for the same SDP");
}

#[test]
fn playback_route_answers_plays_then_hangs_up() {
    let mut h = Harness::new(&bob_plan());
    let invite = h.invite("9000", "call-play", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let ok = h.response_to(CALLER, 200);
    assert_eq!(body(&ok), manager_sdp("offer-a-self"));
    assert_eq!(
        h.ops(),
        vec![
            MediaOp::Offer {
                leg: CallLeg::A,
                peer: None,
                sdp: CALLER_SDP.to_owned(),
                callee_interface: None
            },
            MediaOp::Play {
                leg: CallLeg::A,
                files: vec!["welcome.wav".to_owned()]
            }
        ]
    );
    let ack = h.ack_for(&ok, None);
    h.from(CALLER, &ack);
    h.nothing_to(CALLER);
    h.finish_playback();
    let bye = h.request_to(CALLER, "BYE");
    assert_eq!(bye.call_id().as_str(), "call-play");
    assert_eq!(bye.from_tag(), ok.to_tag());
    assert_eq!(
        h.ops(),
        vec![MediaOp::Delete {
            reason: DeleteReason::Hangup,
            detail: "hangup: Temporarily Unavailable".to_owned()
        }]
    );
    h.from(CALLER, &reply(&bye, 200, None, None));
    h.advance(Duration::from_secs(40));
    assert_eq!(h.occupancy(), Occupancy::default());
}

#[test]
fn the_2xx_is_retransmitted_until_the_ack() {
    let mut h = Harness::new(&bob_plan());
    let invite = h.invite("1001", "call-rtx", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    let to_bob = h.request_to(BOB, "INVITE");
    h.from(BOB, &reply(&to_bob, 200, Some("bob1"), Some(CALLEE_SDP)));
    h.response_to(CALLER, 100);
    let ok = h.response_to(CALLER, 200);
    h.advance(Duration::from_millis(500));
    let again = h.response_to(CALLER, 200);
    assert_eq!(again.to_tag(), ok.to_tag());
    assert_eq!(body(&again), body(&ok));
    h.advance(Duration::from_millis(999));
    h.nothing_to(CALLER);
    h.advance(Duration::from_millis(1));
    h.response_to(CALLER, 200);
    let ack = h.ack_for(&ok, None);
    h.from(CALLER, &ack);
    h.request_to(BOB, "ACK");
    h.advance(Duration::from_secs(10));
    h.nothing_to(CALLER);
}

#[test]
fn without_an_ack_the_call_ends_after_64_t1() {
    let mut h = Harness::new(&bob_plan());
    let invite = h.invite("1001", "call-noack", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    let to_bob = h.request_to(BOB, "INVITE");
    h.from(BOB, &reply(&to_bob, 200, Some("bob1"), Some(CALLEE_SDP)));
    h.advance(Duration::from_secs(31));
    h.nothing_to(BOB);
    h.advance(Duration::from_secs(6));
    // The callee's 2xx is ACKed, then BYEd; the caller gets a BYE too.
    h.request_to(BOB, "ACK");
    h.request_to(BOB, "BYE");
    assert!(
        h.sent
            .iter()
            .any(|(to, m)| *to == addr(CALLER) && m.method().as_str() == "BYE"),
        "the caller is BYEd: {:?}",
        h.summary()
    );
}

#[test]
fn late_offer_takes_the_offer_from_the_callee_and_the_answer_from_the_ack() {
    let mut h = Harness::new(&bob_plan());
    let invite = h.invite("1001", "call-late", None);
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let to_bob = h.request_to(BOB, "INVITE");
    assert_eq!(to_bob.body(), b"", "no offer to the callee");
    assert_eq!(h.ops(), vec![]);
    h.from(BOB, &reply(&to_bob, 200, Some("bob1"), Some(CALLEE_SDP)));
    let ok = h.response_to(CALLER, 200);
    assert_eq!(body(&ok), manager_sdp("offer-b-a"));
    h.nothing_to(BOB);
    let ack = h.ack_for(&ok, Some(CALLER_SDP));
    h.from(CALLER, &ack);
    let ack_bob = h.request_to(BOB, "ACK");
    assert_eq!(body(&ack_bob), manager_sdp("answer-a-b"));
    assert_eq!(
        h.ops(),
        vec![
            MediaOp::Offer {
                leg: CallLeg::B,
                peer: Some(CallLeg::A),
                sdp: CALLEE_SDP.to_owned(),
                callee_interface: None
            },
            MediaOp::Answer {
                leg: CallLeg::A,
                peer: CallLeg::B,
                sdp: CALLER_SDP.to_owned(),
                bridge: true
            }
        ]
    );
}

#[test]
fn the_dial_actions_media_interface_names_the_callees_leg_in_early_and_late_offers() {
    let plan = dial_plan(
        r#"["sip:bob@192.0.2.2:5060"]"#,
        r#", "media_interface": "private""#,
    );
    let mut h = Harness::new(&plan);
    let invite = h.invite("1001", "call-early", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    assert_eq!(
        h.ops(),
        vec![MediaOp::Offer {
            leg: CallLeg::A,
            peer: Some(CallLeg::B),
            sdp: CALLER_SDP.to_owned(),
            callee_interface: Some("private".to_owned())
        }],
        "early offer: the caller's SDP relayed to the callee's leg on private"
    );

    let mut h = Harness::new(&plan);
    let invite = h.invite("1001", "call-late", None);
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let to_bob = h.request_to(BOB, "INVITE");
    h.from(BOB, &reply(&to_bob, 200, Some("bob1"), Some(CALLEE_SDP)));
    h.response_to(CALLER, 200);
    assert_eq!(
        h.ops(),
        vec![MediaOp::Offer {
            leg: CallLeg::B,
            peer: Some(CallLeg::A),
            sdp: CALLEE_SDP.to_owned(),
            callee_interface: Some("private".to_owned())
        }],
        "late offer: the callee's SDP on its leg on private"
    );
}

#[test]
fn reinvite_from_the_callee_goes_through_the_manager_and_glare_is_491() {
    let mut h = Harness::new(&bob_plan());
    let (ok, to_bob) = answered_call(&mut h);
    let hold = CALLEE_SDP.replace("m=audio", "a=sendonly\r\nm=audio");
    let reinvite = h.callee_request(BOB, &to_bob, "bob1", "INVITE", 1, Some(&hold));
    h.from(BOB, &reinvite);
    assert_eq!(
        h.ops(),
        vec![MediaOp::Offer {
            leg: CallLeg::B,
            peer: Some(CallLeg::A),
            sdp: hold.clone(),
            callee_interface: None
        }]
    );
    let to_caller = h.request_to(CALLER, "INVITE");
    assert_eq!(to_caller.call_id().as_str(), "call-1");
    assert_eq!(
        to_caller.to_tag().map(|t| t.as_str().to_owned()),
        Some("alice1".to_owned())
    );
    assert_eq!(to_caller.from_tag(), ok.to_tag());
    assert_eq!(to_caller.cseq().to_string(), "2 INVITE");
    assert_eq!(body(&to_caller), manager_sdp("offer-b-a"));

    // Glare: the caller re-INVITEs while ours is pending.
    let crossing = h.in_dialog(CALLER, &ok, "INVITE", 2, Some(CALLER_SDP));
    h.from(CALLER, &crossing);
    h.response_to(CALLER, 491);

    h.from(
        CALLER,
        &reply(&to_caller, 200, Some("alice1"), Some(CALLER_SDP)),
    );
    let ack = h.request_to(CALLER, "ACK");
    assert_eq!(ack.cseq().to_string(), "2 ACK");
    let answer = h.response_to(BOB, 200);
    assert_eq!(answer.cseq().to_string(), "1 INVITE");
    assert_eq!(body(&answer), manager_sdp("answer-a-b"));
    let ack = h.callee_request(BOB, &to_bob, "bob1", "ACK", 1, None);
    h.from(BOB, &ack);
    h.advance(Duration::from_secs(2));
    h.nothing_to(BOB);
}

#[test]
fn info_is_relayed_and_its_answer_returned() {
    let mut h = Harness::new(&bob_plan());
    let (ok, _) = answered_call(&mut h);
    let mut info = h.in_dialog(CALLER, &ok, "INFO", 2, None);
    info = info.replace(
        "Content-Length: 0\r\n\r\n",
        "Content-Type: application/dtmf-relay\r\nContent-Length: 24\r\n\r\nSignal=5\r\nDuration=160\r\n",
    );
    h.from(CALLER, &info);
    let to_bob = h.request_to(BOB, "INFO");
    assert_eq!(body(&to_bob), "Signal=5\r\nDuration=160\r\n");
    assert_eq!(to_bob.content_type(), Some("application/dtmf-relay"));
    h.from(BOB, &reply(&to_bob, 200, None, None));
    let answer = h.response_to(CALLER, 200);
    assert_eq!(answer.cseq().to_string(), "2 INFO");
}

#[test]
fn media_timeout_hangs_up_both_legs() {
    let mut h = Harness::new(&bob_plan());
    answered_call(&mut h);
    h.event(MediaEvent::Timeout {
        call: MediaCallId("test/00000001/call-1".to_owned()),
        leg: MediaLegId("b".to_owned()),
        idle_secs: 30,
        manager: "m1".to_owned(),
    });
    h.request_to(CALLER, "BYE");
    h.request_to(BOB, "BYE");
    assert_eq!(
        h.ops(),
        vec![MediaOp::Delete {
            reason: DeleteReason::MediaTimeout,
            detail: "hangup: Request Timeout".to_owned()
        }]
    );
}

#[test]
fn no_route_no_manager_and_loops_are_refused() {
    let mut h = Harness::new(&bob_plan());
    let invite = h.invite("5555", "call-noroute", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 404);
    assert_eq!(h.ops(), vec![]);

    // Every manager refused: a passing shortage, worth a retry later.
    h.manager.fail_offer = Some(MediaFailure::Unavailable);
    let invite = h.invite("1001", "call-nomanager", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let refused = h.response_to(CALLER, 503);
    assert_eq!(refused.header("Retry-After"), Some("30"));
    h.nothing_to(BOB);

    // An SDP no manager takes: trying again changes nothing.
    h.manager.fail_offer = Some(MediaFailure::Unacceptable);
    let invite = h.invite("1001", "call-badsdp", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let refused = h.response_to(CALLER, 488);
    assert_eq!(refused.header("Retry-After"), None);

    // Our own INVITE routed back to us.
    let invite = h.invite("1001", "call-loop", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let to_bob = h.request_to(BOB, "INVITE");
    let looped = String::from_utf8_lossy(&to_bob_bytes(&to_bob)).into_owned();
    h.from(BOB, &looped);
    h.response_to(BOB, 482);
}

/// A message as text again (what a peer would forward).
fn to_bob_bytes(message: &SipMessage) -> Vec<u8> {
    message.bytes().to_vec()
}

#[test]
fn thousands_of_calls_leave_nothing_behind() {
    let mut h = Harness::new(&bob_plan());
    for n in 0..2000 {
        let call_id = format!("bulk-{n}");
        // With session timers on both legs, so their timers must go too.
        let invite = h.invite_with(
            "1001",
            &call_id,
            Some(CALLER_SDP),
            &[("Supported", "timer"), ("Session-Expires", "1800")],
        );
        h.from(CALLER, &invite);
        h.response_to(CALLER, 100);
        let to_bob = h.request_to(BOB, "INVITE");
        match n % 4 {
            0 => {
                h.from(
                    BOB,
                    &reply_with(
                        &to_bob,
                        200,
                        Some("bob1"),
                        Some(CALLEE_SDP),
                        &[("Session-Expires", "1800;refresher=uac")],
                    ),
                );
                let ok = h.response_to(CALLER, 200);
                let ack = h.ack_for(&ok, None);
                h.from(CALLER, &ack);
                h.request_to(BOB, "ACK");
                let bye = h.in_dialog(CALLER, &ok, "BYE", 2, None);
                h.from(CALLER, &bye);
                let bye_bob = h.request_to(BOB, "BYE");
                h.from(BOB, &reply(&bye_bob, 200, None, None));
            }
            1 => h.from(BOB, &reply(&to_bob, 486, Some("bob1"), None)),
            2 => {
                h.from(BOB, &reply(&to_bob, 180, Some("bob1"), None));
                h.advance(Duration::from_secs(6));
                let cancel = h.request_to(BOB, "CANCEL");
                h.from(BOB, &reply(&cancel, 200, None, None));
                h.from(BOB, &reply(&to_bob, 487, Some("bob1"), None));
            }
            _ => {
                h.from(BOB, &reply(&to_bob, 200, Some("bob1"), Some(CALLEE_SDP)));
                let ok = h.response_to(CALLER, 200);
                let ack = h.ack_for(&ok, None);
                h.from(CALLER, &ack);
                let bye = h.callee_request(BOB, &to_bob, "bob1", "BYE", 1, None);
                h.from(BOB, &bye);
                let bye_a = h.request_to(CALLER, "BYE");
                h.from(CALLER, &reply(&bye_a, 200, None, None));
            }
        }
        h.sent.clear();
    }
    h.advance(Duration::from_secs(60));
    assert_eq!(h.occupancy(), Occupancy::default());
    assert_eq!(h.uas.transactions(), 0);
    let deletes = h
        .ops()
        .iter()
        .filter(|op| matches!(op, MediaOp::Delete { .. }))
        .count();
    assert_eq!(deletes, 2000, "every call's media is deleted");
}

#[test]
fn a_callee_2xx_retransmission_waits_for_the_callers_ack_then_is_reacked() {
    let mut h = Harness::new(&bob_plan());
    let invite = h.invite("1001", "call-2xx-rtx", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let to_bob = h.request_to(BOB, "INVITE");
    let ok_bob = reply(&to_bob, 200, Some("bob1"), Some(CALLEE_SDP));
    h.from(BOB, &ok_bob);
    let ok = h.response_to(CALLER, 200);
    // The callee retransmits before the caller's ACK: neither ACK nor BYE.
    h.from(BOB, &ok_bob);
    h.nothing_to(BOB);
    h.nothing_to(CALLER);
    let ack = h.ack_for(&ok, None);
    h.from(CALLER, &ack);
    let first = h.request_to(BOB, "ACK");
    // Our ACK was lost: the retransmission gets another one.
    h.from(BOB, &ok_bob);
    let again = h.request_to(BOB, "ACK");
    assert_eq!(again.cseq(), first.cseq());
    assert_eq!(again.to_tag(), first.to_tag());
    h.nothing_to(BOB);
    assert_eq!(h.occupancy().calls, 1, "the call goes on");
}

#[test]
fn hold_from_the_caller_and_its_2xx_retransmission() {
    let mut h = Harness::new(&bob_plan());
    let (ok, to_bob) = answered_call(&mut h);
    let hold = CALLER_SDP.replace("m=audio", "a=sendonly\r\nm=audio");
    let reinvite = h.in_dialog(CALLER, &ok, "INVITE", 2, Some(&hold));
    h.from(CALLER, &reinvite);
    let to_bob_re = h.request_to(BOB, "INVITE");
    assert_eq!(to_bob_re.call_id(), to_bob.call_id());
    assert_eq!(to_bob_re.cseq().to_string(), "2 INVITE");
    assert_eq!(
        to_bob_re.to_tag().map(|t| t.as_str().to_owned()),
        Some("bob1".to_owned())
    );
    assert_eq!(body(&to_bob_re), manager_sdp("offer-a-b"));
    let ok_bob = reply(&to_bob_re, 200, Some("bob1"), Some(CALLEE_SDP));
    h.from(BOB, &ok_bob);
    assert_eq!(h.request_to(BOB, "ACK").cseq().to_string(), "2 ACK");
    let answer = h.response_to(CALLER, 200);
    assert_eq!(answer.cseq().to_string(), "2 INVITE");
    assert_eq!(body(&answer), manager_sdp("answer-b-a"));
    assert_eq!(
        h.ops(),
        vec![
            MediaOp::Offer {
                leg: CallLeg::A,
                peer: Some(CallLeg::B),
                sdp: hold,
                callee_interface: None
            },
            MediaOp::Answer {
                leg: CallLeg::B,
                peer: CallLeg::A,
                sdp: CALLEE_SDP.to_owned(),
                bridge: false
            }
        ]
    );
    // The callee did not see our ACK: re-ACKed, nothing else.
    h.from(BOB, &ok_bob);
    assert_eq!(h.request_to(BOB, "ACK").cseq().to_string(), "2 ACK");
    h.nothing_to(CALLER);
    assert_eq!(h.ops(), vec![]);
    let ack = h.ack_for(&answer, None);
    h.from(CALLER, &ack);
    h.nothing_to(BOB);
}

#[test]
fn update_refresh_and_refused_reoffers() {
    let mut h = Harness::new(&bob_plan());
    let (ok, to_bob) = answered_call(&mut h);

    // UPDATE with SDP: through the manager, no ACK.
    let update = h.in_dialog(CALLER, &ok, "UPDATE", 2, Some(CALLER_SDP));
    h.from(CALLER, &update);
    let to_bob_update = h.request_to(BOB, "UPDATE");
    assert_eq!(body(&to_bob_update), manager_sdp("offer-a-b"));
    h.from(BOB, &reply(&to_bob_update, 200, None, Some(CALLEE_SDP)));
    let answer = h.response_to(CALLER, 200);
    assert_eq!(answer.cseq().to_string(), "2 UPDATE");
    assert_eq!(body(&answer), manager_sdp("answer-b-a"));
    h.nothing_to(BOB);

    // A re-INVITE without SDP (a refresh) is answered with the last SDP.
    let refresh = h.callee_request(BOB, &to_bob, "bob1", "INVITE", 5, None);
    h.from(BOB, &refresh);
    let refreshed = h.response_to(BOB, 200);
    assert_eq!(
        body(&refreshed),
        manager_sdp("offer-a-b"),
        "the last SDP sent to the callee"
    );
    h.nothing_to(CALLER);
    let ack = h.callee_request(BOB, &to_bob, "bob1", "ACK", 5, None);
    h.from(BOB, &ack);

    // A re-offer the other side refuses: its code is relayed.
    let reinvite = h.in_dialog(CALLER, &ok, "INVITE", 3, Some(CALLER_SDP));
    h.from(CALLER, &reinvite);
    let to_bob_re = h.request_to(BOB, "INVITE");
    assert_eq!(to_bob_re.cseq().seq, 3, "the dialog's CSeq goes on");
    h.from(BOB, &reply(&to_bob_re, 488, None, None));
    h.request_to(BOB, "ACK");
    h.response_to(CALLER, 488);
    h.ops();

    // And the call still works: BYE from the caller.
    let bye = h.in_dialog(CALLER, &ok, "BYE", 4, None);
    h.from(CALLER, &bye);
    h.response_to(CALLER, 200);
    h.request_to(BOB, "BYE");
}

#[test]
fn a_failed_bridge_refuses_the_caller_and_hangs_up_the_callee() {
    let mut h = Harness::new(&bob_plan());
    h.manager.fail_bridge = true;
    let invite = h.invite("1001", "call-nobridge", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let to_bob = h.request_to(BOB, "INVITE");
    h.from(BOB, &reply(&to_bob, 200, Some("bob1"), Some(CALLEE_SDP)));
    // The bridge rides in the final Answer: its failure comes before any
    // 200 to the caller, who is refused instead of answered and hung up.
    h.response_to(CALLER, 500);
    h.request_to(BOB, "ACK");
    h.request_to(BOB, "BYE");
    assert_eq!(
        h.ops().last(),
        Some(&MediaOp::Delete {
            reason: DeleteReason::Failed,
            detail: "500 Server Internal Error".to_owned()
        })
    );
}

#[test]
fn sequential_ringing_tries_contacts_one_after_the_other() {
    let mut h = Harness::new(&dial_plan(
        r#"["user/${destination}"]"#,
        r#", "strategy": "sequential""#,
    ));
    register(&mut h, "1001", BOB, "reg-bob");
    h.advance(Duration::from_secs(1));
    register(&mut h, "1001", CAROL, "reg-carol");
    let invite = h.invite("1001", "call-seq", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    // Equal q: the most recently registered contact first.
    let to_carol = h.request_to(CAROL, "INVITE");
    h.nothing_to(BOB);
    h.from(CAROL, &reply(&to_carol, 180, Some("carol1"), None));
    h.response_to(CALLER, 180);
    // Carol does not answer within the timeout: cancelled, Bob is tried.
    h.advance(Duration::from_secs(5));
    h.request_to(CAROL, "CANCEL");
    let to_bob = h.request_to(BOB, "INVITE");
    assert_eq!(to_bob.cseq().seq, 2);
    h.from(BOB, &reply(&to_bob, 200, Some("bob1"), Some(CALLEE_SDP)));
    h.response_to(CALLER, 200);
    // Carol's 487 comes late and changes nothing.
    h.from(CAROL, &reply(&to_carol, 487, Some("carol1"), None));
    h.request_to(CAROL, "ACK");
    h.nothing_to(CALLER);
}

#[test]
fn the_callers_session_timer_is_honoured_and_ends_an_unrefreshed_call() {
    let mut h = Harness::new(&bob_plan());
    let invite = h.invite_with(
        "1001",
        "call-st",
        Some(CALLER_SDP),
        &[("Supported", "timer"), ("Session-Expires", "120")],
    );
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let to_bob = h.request_to(BOB, "INVITE");
    assert_eq!(
        to_bob.header("Session-Expires"),
        Some("120"),
        "the caller's interval offered"
    );
    assert_eq!(to_bob.header("Supported"), Some("timer"));
    assert_eq!(to_bob.header("Min-SE"), Some("90"));
    h.from(BOB, &reply(&to_bob, 200, Some("bob1"), Some(CALLEE_SDP)));
    let ok = h.response_to(CALLER, 200);
    assert_eq!(ok.header("Session-Expires"), Some("120;refresher=uac"));
    assert_eq!(ok.header("Require"), Some("timer"));
    let ack = h.ack_for(&ok, None);
    h.from(CALLER, &ack);
    h.request_to(BOB, "ACK");
    h.ops();

    // A refresh (UPDATE without SDP) at 60 s restarts the interval.
    h.advance(Duration::from_secs(60));
    let update = h.in_dialog(CALLER, &ok, "UPDATE", 2, None);
    h.from(CALLER, &update);
    let refreshed = h.response_to(CALLER, 200);
    assert_eq!(
        refreshed.header("Session-Expires"),
        Some("120;refresher=uac")
    );
    h.nothing_to(BOB);
    // Expiry is 120 - min(32, 40) = 88 s after the refresh.
    h.advance(Duration::from_secs(87));
    h.nothing_to(CALLER);
    h.nothing_to(BOB);
    h.advance(Duration::from_secs(2));
    h.request_to(CALLER, "BYE");
    h.request_to(BOB, "BYE");
    assert_eq!(
        h.ops(),
        vec![MediaOp::Delete {
            reason: DeleteReason::SessionTimer,
            detail: "hangup: Session Expired".to_owned()
        }]
    );
}

#[test]
fn a_session_interval_below_min_se_is_422() {
    let mut h = Harness::new(&bob_plan());
    let invite = h.invite_with(
        "1001",
        "call-st-small",
        Some(CALLER_SDP),
        &[("Session-Expires", "60")],
    );
    h.from(CALLER, &invite);
    let refused = h.response_to(CALLER, 422);
    assert_eq!(refused.header("Min-SE"), Some("90"));
    h.nothing_to(BOB);
    assert_eq!(h.ops(), vec![]);
}

#[test]
fn we_refresh_the_callee_with_update_or_reinvite() {
    for (allow, method) in [
        ("INVITE, ACK, BYE, UPDATE", "UPDATE"),
        ("INVITE, ACK, BYE", "INVITE"),
    ] {
        let mut h = Harness::new(&bob_plan());
        let invite = h.invite("1001", "call-refresh", Some(CALLER_SDP));
        h.from(CALLER, &invite);
        h.response_to(CALLER, 100);
        let to_bob = h.request_to(BOB, "INVITE");
        assert_eq!(
            to_bob.header("Session-Expires"),
            Some("1800"),
            "our default offered"
        );
        h.from(
            BOB,
            &reply_with(
                &to_bob,
                200,
                Some("bob1"),
                Some(CALLEE_SDP),
                &[
                    ("Session-Expires", "100;refresher=uac"),
                    ("Require", "timer"),
                    ("Allow", allow),
                ],
            ),
        );
        let ok = h.response_to(CALLER, 200);
        assert_eq!(
            ok.header("Session-Expires"),
            None,
            "the caller asked for no timer"
        );
        let ack = h.ack_for(&ok, None);
        h.from(CALLER, &ack);
        h.request_to(BOB, "ACK");
        h.advance(Duration::from_secs(49));
        h.nothing_to(BOB);
        h.advance(Duration::from_secs(1));
        let refresh = h.request_to(BOB, method);
        assert_eq!(refresh.call_id(), to_bob.call_id());
        assert_eq!(refresh.cseq().seq, 2, "{method}");
        assert_eq!(refresh.header("Session-Expires"), Some("100;refresher=uac"));
        if method == "INVITE" {
            assert_eq!(
                body(&refresh),
                manager_sdp("offer-a-b"),
                "the SDP last sent to the callee"
            );
        } else {
            assert_eq!(body(&refresh), "", "UPDATE refreshes without SDP");
        }
        h.from(BOB, &reply(&refresh, 200, None, Some(CALLEE_SDP)));
        if method == "INVITE" {
            assert_eq!(h.request_to(BOB, "ACK").cseq().to_string(), "2 ACK");
        }
        h.nothing_to(CALLER);
        // The next refresh half an interval after this one.
        h.advance(Duration::from_secs(49));
        h.nothing_to(BOB);
        h.advance(Duration::from_secs(1));
        h.request_to(BOB, method);
    }
}

#[test]
fn cancel_while_the_manager_has_not_answered_yet() {
    let mut h = Harness::new(&bob_plan());
    h.manager.hold = true;
    let invite = h.invite("1001", "call-slow", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let cancel = format!(
        "CANCEL sip:1001@192.0.2.100 SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: call-slow\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n",
        invite
            .lines()
            .find(|l| l.starts_with("Via: "))
            .expect("Via")
            .trim_start_matches("Via: "),
        "\"Alice\" <sip:alice@192.0.2.1>;tag=alice1",
        "<sip:1001@192.0.2.100>"
    );
    h.from(CALLER, &cancel);
    let statuses: Vec<Option<u16>> = (0..2).map(|_| h.next_to(CALLER).status()).collect();
    assert!(
        statuses.contains(&Some(200)) && statuses.contains(&Some(487)),
        "{statuses:?}"
    );
    // The Offer answered late: nothing goes to the callee, the Delete
    // follows the Offer.
    h.release();
    h.nothing_to(BOB);
    assert_eq!(
        h.ops(),
        vec![
            offer(CALLER_SDP),
            MediaOp::Delete {
                reason: DeleteReason::Cancelled,
                detail: "487 Request Terminated".to_owned()
            }
        ]
    );
    h.advance(Duration::from_secs(40));
    assert_eq!(h.occupancy(), Occupancy::default());
}

#[test]
fn max_forwards_is_checked_and_decremented() {
    let mut h = Harness::new(&bob_plan());
    let invite = h
        .invite("1001", "call-mf0", Some(CALLER_SDP))
        .replace("Max-Forwards: 70", "Max-Forwards: 0");
    h.from(CALLER, &invite);
    h.response_to(CALLER, 483);
    h.nothing_to(BOB);
    let invite = h
        .invite("1001", "call-mf1", Some(CALLER_SDP))
        .replace("Max-Forwards: 70", "Max-Forwards: 1");
    h.from(CALLER, &invite);
    assert_eq!(h.request_to(BOB, "INVITE").max_forwards(), 0);
}

#[test]
fn route_sets_from_record_route_and_path_are_followed() {
    let mut h = Harness::new(&dial_plan(r#"["user/${destination}"]"#, ""));
    let branch = h.new_branch();
    let register = request(
        "REGISTER sip:example.com SIP/2.0",
        &[
            ("Via", &format!("SIP/2.0/UDP {BOB};branch={branch}")),
            ("Max-Forwards", "70"),
            ("From", "<sip:1001@example.com>;tag=r1"),
            ("To", "<sip:1001@example.com>"),
            ("Call-ID", "reg-path"),
            ("CSeq", "1 REGISTER"),
            ("Supported", "path"),
            ("Path", "<sip:edge.example.net;lr>"),
            ("Contact", &format!("<sip:1001@{BOB}>")),
            ("Expires", "3600"),
        ],
        None,
    );
    h.from(BOB, &register);
    h.response_to(BOB, 200);

    let invite = h.invite_with(
        "1001",
        "call-routes",
        Some(CALLER_SDP),
        &[("Record-Route", "<sip:proxy.example.net;lr>")],
    );
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let to_bob = h.request_to(BOB, "INVITE");
    assert_eq!(
        to_bob.header_list("Route"),
        vec!["<sip:edge.example.net;lr>".to_owned()],
        "the binding's Path is the INVITE's route"
    );
    assert_eq!(
        to_bob.header("Record-Route"),
        None,
        "the caller's route stays on leg a"
    );
    h.from(
        BOB,
        &reply_with(
            &to_bob,
            200,
            Some("bob1"),
            Some(CALLEE_SDP),
            &[(
                "Record-Route",
                "<sip:p1.example.net;lr>, <sip:p2.example.net;lr>",
            )],
        ),
    );
    let ok = h.response_to(CALLER, 200);
    assert_eq!(
        ok.header("Record-Route"),
        Some("<sip:proxy.example.net;lr>"),
        "our 2xx echoes the caller's Record-Route"
    );
    let ack = h.ack_for(&ok, None);
    h.from(CALLER, &ack);
    let ack_bob = h.request_to(BOB, "ACK");
    let reversed = vec![
        "<sip:p2.example.net;lr>".to_owned(),
        "<sip:p1.example.net;lr>".to_owned(),
    ];
    assert_eq!(
        ack_bob.header_list("Route"),
        reversed,
        "the UAC reverses Record-Route"
    );
    let bye = h.callee_request(BOB, &to_bob, "bob1", "BYE", 1, None);
    h.from(BOB, &bye);
    h.response_to(BOB, 200);
    let bye_caller = h.request_to(CALLER, "BYE");
    assert_eq!(
        bye_caller.header_list("Route"),
        vec!["<sip:proxy.example.net;lr>".to_owned()]
    );
}

#[test]
fn a_callee_422_is_retried_once_with_its_min_se() {
    let mut h = Harness::new(&bob_plan());
    let invite = h.invite("1001", "call-422", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let first = h.request_to(BOB, "INVITE");
    h.from(
        BOB,
        &reply_with(&first, 422, Some("bob1"), None, &[("Min-SE", "3600")]),
    );
    h.request_to(BOB, "ACK");
    let second = h.request_to(BOB, "INVITE");
    assert_eq!(second.header("Session-Expires"), Some("3600"));
    assert_eq!(second.cseq().seq, 2);
    assert_eq!(second.call_id(), first.call_id());
    assert_ne!(second.top_via().branch(), first.top_via().branch());
    h.nothing_to(CALLER);
    // A second 422 is a failure like any other.
    h.from(
        BOB,
        &reply_with(&second, 422, Some("bob1"), None, &[("Min-SE", "7200")]),
    );
    h.request_to(BOB, "ACK");
    h.response_to(CALLER, 422);
}

#[test]
fn a_callee_bye_before_the_callers_2xx_ends_the_call_cleanly() {
    let mut h = Harness::new(&bob_plan());
    let invite = h.invite("1001", "call-early-bye", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let to_bob = h.request_to(BOB, "INVITE");
    // The manager is slow with the Answer: the caller has no 2xx yet.
    h.manager.hold = true;
    h.from(BOB, &reply(&to_bob, 200, Some("bob1"), Some(CALLEE_SDP)));
    h.nothing_to(CALLER);
    let bye = h.callee_request(BOB, &to_bob, "bob1", "BYE", 1, None);
    h.from(BOB, &bye);
    let mut to_bob_now: Vec<String> = (0..2).map(|_| describe(&h.next_to(BOB))).collect();
    to_bob_now.sort();
    assert_eq!(
        to_bob_now,
        vec![
            "200 (1 BYE)".to_owned(),
            format!("ACK {}", to_bob.call_id())
        ],
        "the BYE answered and the 2xx ACKed"
    );
    let failed = h.response_to(CALLER, 480);
    assert_eq!(failed.reason(), Some("Temporarily Unavailable"));
    h.release();
    h.nothing_to(CALLER);
    h.nothing_to(BOB);
    h.advance(Duration::from_secs(40));
    assert_eq!(h.occupancy(), Occupancy::default());
    assert_eq!(h.uas.transactions(), 0);
}

#[test]
fn info_from_the_callee_and_prack_without_100rel() {
    let mut h = Harness::new(&bob_plan());
    let (ok, to_bob) = answered_call(&mut h);
    let info = h.callee_request(BOB, &to_bob, "bob1", "INFO", 2, None);
    h.from(BOB, &info);
    let to_caller = h.request_to(CALLER, "INFO");
    assert_eq!(to_caller.call_id().as_str(), "call-1");
    assert_eq!(to_caller.from_tag(), ok.to_tag());
    h.from(CALLER, &reply(&to_caller, 200, None, None));
    assert_eq!(h.response_to(BOB, 200).cseq().to_string(), "2 INFO");
    let prack = h.in_dialog(CALLER, &ok, "PRACK", 2, None);
    h.from(CALLER, &prack);
    h.response_to(CALLER, 481);
    h.nothing_to(BOB);
}

// ----- caller identity (identity.rs) -------------------------------------

/// Digest auth for INVITE in realm `test`, user 1001 with password `pw`.
fn digest_auth() -> Authenticator {
    let users = Users::parse(
        std::path::Path::new("users.toml"),
        "[[user]]\nname = \"1001\"\npassword = \"pw\"\n",
        "test",
    )
    .expect("test users parse");
    Authenticator::new(AuthConfig::digest("test", vec![7; 32]), users)
}

/// Sends an INVITE from 1001 with `from` as its From, then again with
/// credentials answering the 407.
fn spoofed_invite(h: &mut Harness, from: &str) {
    let with_from = |text: String| {
        text.replace(
            "From: \"Alice\" <sip:alice@192.0.2.1>;tag=alice1\r\n",
            &format!("From: {from}\r\n"),
        )
    };
    let first = with_from(h.invite("1001", "spoof-1", Some(CALLER_SDP)));
    h.from(CALLER, &first);
    let challenge = h.response_to(CALLER, 407);
    h.nothing_to(BOB);
    let offer = challenge
        .header_values("Proxy-Authenticate")
        .find(|v| v.contains("algorithm=MD5"))
        .expect("an MD5 challenge")
        .to_owned();
    let nonce = crate::auth::Credentials::parse(&offer)
        .expect("challenge parses")
        .get("nonce")
        .expect("nonce")
        .to_owned();
    let uri = "sip:1001@192.0.2.100";
    let ha1 = crate::auth::ha1(crate::auth::Algorithm::Md5, "1001", "test", "pw");
    let response = crate::auth::response(
        crate::auth::Algorithm::Md5,
        &ha1,
        &nonce,
        "00000001",
        "c1",
        "INVITE",
        uri,
    );
    let credentials = format!(
        "Digest username=\"1001\", realm=\"test\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c1\""
    );
    let second = with_from(h.invite_with(
        "1001",
        "spoof-1",
        Some(CALLER_SDP),
        &[("Proxy-Authorization", &credentials)],
    ))
    .replace("CSeq: 1 INVITE\r\n", "CSeq: 2 INVITE\r\n");
    h.from(CALLER, &second);
}

#[test]
fn the_callee_sees_the_authenticated_user_in_from_and_pai_whatever_the_caller_wrote() {
    let mut h = Harness::with_auth(&bob_plan(), digest_auth(), IdentityPolicy::default());
    spoofed_invite(
        &mut h,
        "\"Accounts Office\" <sip:1002@192.0.2.1>;tag=alice1",
    );
    h.response_to(CALLER, 100);
    let to_bob = h.request_to(BOB, "INVITE");
    assert_eq!(to_bob.from().uri.to_string(), "sip:1001@192.0.2.100");
    assert_eq!(
        to_bob.from().display_name,
        None,
        "the disguise's name goes too"
    );
    assert_eq!(
        to_bob.header("P-Asserted-Identity"),
        Some("<sip:1001@192.0.2.100>")
    );
}

#[test]
fn a_spoofed_from_is_refused_with_403_under_reject() {
    let reject = IdentityPolicy {
        from: FromPolicy::Reject,
        ..IdentityPolicy::default()
    };
    let mut h = Harness::with_auth(&bob_plan(), digest_auth(), reject);
    spoofed_invite(
        &mut h,
        "\"Accounts Office\" <sip:1002@192.0.2.1>;tag=alice1",
    );
    let refused = h.response_to(CALLER, 403);
    assert_eq!(
        refused.reason(),
        Some("Forbidden (From is not the authenticated user)")
    );
    h.nothing_to(BOB);
    // The caller's own number passes, with its display name and the PAI.
    let mut h = Harness::with_auth(&bob_plan(), digest_auth(), reject);
    spoofed_invite(&mut h, "\"Alice\" <sip:1001@192.0.2.1>;tag=alice1");
    h.response_to(CALLER, 100);
    let to_bob = h.request_to(BOB, "INVITE");
    assert_eq!(to_bob.from().uri.to_string(), "sip:1001@192.0.2.100");
    assert_eq!(to_bob.from().display_name.as_deref(), Some("Alice"));
    assert_eq!(
        to_bob.header("P-Asserted-Identity"),
        Some("<sip:1001@192.0.2.100>")
    );
}

// ----- shutdown --------------------------------------------------------

impl Harness {
    /// The driver's shutdown step, as the signal handler pushes it.
    fn shutdown(&mut self, step: Shutdown) {
        self.link
            .push_input(self.now.instant, LinkInput::Shutdown(step));
        self.step();
        self.settle();
    }
}

#[test]
fn shutdown_cancels_a_ringing_callee_and_answers_the_caller_503() {
    let mut h = Harness::new(&bob_plan());
    let invite = h.invite("1001", "call-ring", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let to_bob = h.request_to(BOB, "INVITE");
    h.from(BOB, &reply(&to_bob, 180, Some("bob1"), None));
    h.response_to(CALLER, 180);
    h.ops();

    h.shutdown(Shutdown::HangUp);
    let refused = h.response_to(CALLER, 503);
    assert_eq!(refused.header("Retry-After"), Some("30"));
    let cancel = h.request_to(BOB, "CANCEL");
    assert_eq!(
        cancel.top_via().branch(),
        to_bob.top_via().branch(),
        "CANCEL matches the INVITE"
    );
    assert_eq!(
        h.ops(),
        vec![MediaOp::Delete {
            reason: DeleteReason::Shutdown,
            detail: "signaling server shutdown".to_owned()
        }]
    );
    let occupancy = h.occupancy();
    assert_eq!(occupancy.calls, 0);
    assert_eq!(
        occupancy.ending, 2,
        "the CANCEL and the cancelled INVITE await their final responses"
    );
    h.from(BOB, &reply(&cancel, 200, Some("bob1"), None));
    assert_eq!(h.occupancy().ending, 1, "the INVITE still awaits its 487");
    h.from(BOB, &reply(&to_bob, 487, Some("bob1"), None));
    h.request_to(BOB, "ACK");
    assert_eq!(h.occupancy().ending, 0, "nothing left to wait for");
    h.nothing_to(CALLER);

    // A new call during the shutdown: 503 at once, nothing asked of the manager.
    let late = h.invite("1001", "call-late", Some(CALLER_SDP));
    h.from(CALLER, &late);
    let refused = h.response_to(CALLER, 503);
    assert_eq!(refused.header("Retry-After"), Some("30"));
    h.nothing_to(BOB);
    assert_eq!(h.ops(), Vec::<MediaOp>::new());
    h.advance(Duration::from_secs(40));
    assert_eq!(h.occupancy(), Occupancy::default());
    assert_eq!(h.uas.transactions(), 0);
}

#[test]
fn shutdown_byes_both_legs_of_an_answered_call_and_waits_for_their_200() {
    let mut h = Harness::new(&bob_plan());
    answered_call(&mut h);
    h.shutdown(Shutdown::HangUp);
    let bye_caller = h.request_to(CALLER, "BYE");
    let bye_bob = h.request_to(BOB, "BYE");
    assert_eq!(
        h.ops(),
        vec![MediaOp::Delete {
            reason: DeleteReason::Shutdown,
            detail: "signaling server shutdown".to_owned()
        }]
    );
    assert_eq!(h.occupancy().calls, 0);
    assert_eq!(h.occupancy().ending, 2, "two BYEs unanswered");
    h.from(CALLER, &reply(&bye_caller, 200, None, None));
    h.from(BOB, &reply(&bye_bob, 200, None, None));
    assert_eq!(h.occupancy().ending, 0, "both BYEs answered");
    h.advance(Duration::from_secs(40));
    assert_eq!(h.occupancy(), Occupancy::default());
}

#[test]
fn shutdown_waits_for_the_media_delete_and_gives_up_on_a_silent_peer() {
    let mut h = Harness::new(&bob_plan());
    answered_call(&mut h);
    h.manager.hold = true;
    h.shutdown(Shutdown::HangUp);
    h.request_to(CALLER, "BYE");
    h.request_to(BOB, "BYE");
    assert_eq!(h.occupancy().ending, 3, "two BYEs and the media delete");
    h.release();
    assert_eq!(h.occupancy().ending, 2, "the delete is done");
    // Nobody answers the BYEs: timer F (64·T1) ends them.
    h.advance(Duration::from_secs(33));
    assert_eq!(h.occupancy().ending, 0);
}

#[test]
fn draining_refuses_new_calls_and_lets_calls_in_progress_end() {
    let mut h = Harness::new(&bob_plan());
    let (ok, _) = answered_call(&mut h);
    h.shutdown(Shutdown::Drain);
    h.nothing_to(CALLER);
    h.nothing_to(BOB);
    assert_eq!(h.occupancy().calls, 1, "the call goes on");
    let late = h.invite("1002", "call-late", Some(CALLER_SDP));
    h.from(CALLER, &late);
    let refused = h.response_to(CALLER, 503);
    assert_eq!(refused.header("Retry-After"), Some("30"));
    assert_eq!(h.ops(), Vec::<MediaOp>::new(), "no Offer for it");
    let bye = h.in_dialog(CALLER, &ok, "BYE", 2, None);
    h.from(CALLER, &bye);
    h.response_to(CALLER, 200);
    h.request_to(BOB, "BYE");
    assert_eq!(
        h.ops(),
        vec![MediaOp::Delete {
            reason: DeleteReason::Hangup,
            detail: "BYE from leg a".to_owned()
        }],
        "the call ended by itself, not by the shutdown"
    );
    assert_eq!(h.occupancy().calls, 0);
}

// ----- call limits -----------------------------------------------------

fn offers(ops: &[MediaOp]) -> usize {
    ops.iter()
        .filter(|op| matches!(op, MediaOp::Offer { .. }))
        .count()
}

fn md5_hex(text: &str) -> String {
    use md5::{Digest, Md5};
    Md5::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Digest credentials of `user` (password `secret`) for an INVITE to 1001,
/// written independently of the authenticator (RFC 2617, qop=auth).
fn proxy_authorization(user: &str, nonce: &str, nc: u32) -> String {
    let uri = "sip:1001@192.0.2.100";
    let ha1 = md5_hex(&format!("{user}:test:secret"));
    let ha2 = md5_hex(&format!("INVITE:{uri}"));
    let nc = format!("{nc:08x}");
    let response = md5_hex(&format!("{ha1}:{nonce}:{nc}:cn0nce:auth:{ha2}"));
    format!(
        "Digest username=\"{user}\", realm=\"test\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm=MD5, qop=auth, nc={nc}, cnonce=\"cn0nce\""
    )
}

/// Calls to 1001 rung at Bob from the caller's address.
fn ring(h: &mut Harness, call_id: &str, extra: &[(&str, &str)]) -> SipMessage {
    let invite = h.invite_with("1001", call_id, Some(CALLER_SDP), extra);
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    h.request_to(BOB, "INVITE")
}

#[test]
fn a_source_over_its_call_limit_is_refused_486_before_any_offer() {
    let limits = CallLimits {
        per_user: Some(10),
        per_source: Some(3),
    };
    let mut h = Harness::with(&bob_plan(), limits, None);
    let ringing: Vec<SipMessage> = (1..=3)
        .map(|n| ring(&mut h, &format!("call-{n}"), &[]))
        .collect();
    let fourth = h.invite("1001", "call-4", Some(CALLER_SDP));
    h.from(CALLER, &fourth);
    let busy = h.response_to(CALLER, 486);
    assert_eq!(busy.reason(), Some("Busy Here"));
    h.nothing_to(BOB);
    assert_eq!(offers(&h.ops()), 3, "the manager saw three offers only");
    assert_eq!(h.occupancy().refused_over_limit, 1);
    assert_eq!(h.occupancy().originators, 1);

    // One call ends (Bob is busy for it): a new one goes through.
    h.from(BOB, &reply(&ringing[0], 486, Some("bob1"), None));
    h.request_to(BOB, "ACK");
    h.response_to(CALLER, 486);
    ring(&mut h, "call-5", &[]);
    assert_eq!(offers(&h.ops()), 1);
    assert_eq!(h.occupancy().calls, 3);
    assert_eq!(h.occupancy().refused_over_limit, 1, "not counted again");
}

#[test]
fn an_authenticated_user_over_its_call_limit_is_refused_whatever_its_address() {
    let users = "[[user]]\nname = \"alice\"\npassword = \"secret\"\n\n\
                 [[user]]\nname = \"carol\"\npassword = \"secret\"\n";
    let limits = CallLimits {
        per_user: Some(3),
        per_source: Some(1),
    };
    let mut h = Harness::with(&bob_plan(), limits, Some(users));
    // A first INVITE without credentials draws the nonce.
    let invite = h.invite("1001", "call-0", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    let challenge = h.response_to(CALLER, 407);
    let header = challenge
        .header("Proxy-Authenticate")
        .expect("a challenge")
        .to_owned();
    let nonce = header
        .split("nonce=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a nonce")
        .to_owned();
    let mut nc = 0;
    let mut credentials = |user: &str| {
        nc += 1;
        proxy_authorization(user, &nonce, nc)
    };
    // Per user, not per source: three of alice's calls from one address
    // although a source may have one unauthenticated call.
    for n in 1..=3 {
        let auth = credentials("alice");
        ring(
            &mut h,
            &format!("alice-{n}"),
            &[("Proxy-Authorization", &auth)],
        );
    }
    let auth = credentials("alice");
    let fourth = h.invite_with(
        "1001",
        "alice-4",
        Some(CALLER_SDP),
        &[("Proxy-Authorization", &auth)],
    );
    h.from(CALLER, &fourth);
    h.response_to(CALLER, 486);
    h.nothing_to(BOB);
    // Another user from the same address is not held back by alice.
    let auth = credentials("carol");
    ring(&mut h, "carol-1", &[("Proxy-Authorization", &auth)]);
    assert_eq!(offers(&h.ops()), 4, "three for alice, one for carol");
    let occupancy = h.occupancy();
    assert_eq!(occupancy.refused_over_limit, 1);
    assert_eq!(occupancy.originators, 2, "alice and carol");
}

#[test]
fn callers_are_counted_per_user_or_per_source_address_and_ipv6_per_64() {
    let udp = |addr: &str| Flow::Udp {
        remote: addr.parse().expect("test address"),
    };
    let alice = Authenticated::User {
        username: "alice".to_owned(),
        algorithm: crate::auth::Algorithm::Md5,
    };
    assert_eq!(
        Originator::of(&alice, &udp("192.0.2.1:5060")),
        Originator::of(&alice, &udp("198.51.100.7:5062")),
        "a user wherever it calls from"
    );
    assert_eq!(
        Originator::of(&Authenticated::Trusted, &udp("192.0.2.1:5060")),
        Originator::of(&Authenticated::NotRequired, &udp("192.0.2.1:5070")),
        "a source whatever its port"
    );
    assert_ne!(
        Originator::of(&Authenticated::NotRequired, &udp("192.0.2.1:5060")),
        Originator::of(&Authenticated::NotRequired, &udp("192.0.2.2:5060"))
    );
    assert_eq!(
        Originator::of(&Authenticated::NotRequired, &udp("[2001:db8:1:2::1]:5060")),
        Originator::of(
            &Authenticated::NotRequired,
            &udp("[2001:db8:1:2:ffff::9]:5060")
        ),
        "one IPv6 /64"
    );
    assert_ne!(
        Originator::of(&Authenticated::NotRequired, &udp("[2001:db8:1:2::1]:5060")),
        Originator::of(&Authenticated::NotRequired, &udp("[2001:db8:1:3::1]:5060"))
    );
}

// ----- the operator's view: API queries, events, CDRs ---------------------

impl Harness {
    /// Asks the core as the REST API does and returns its answer.
    fn ask<T>(&mut self, query: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> CallQuery) -> T {
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        self.link
            .push_input(self.now.instant, LinkInput::Query(query(reply)));
        self.step();
        self.settle();
        answer.try_recv().expect("the core answered the query")
    }

    fn page(&mut self, limit: usize, after: Option<&str>) -> view::CallPage {
        let after = after.map(str::to_owned);
        self.ask(|reply| CallQuery::List {
            limit,
            after,
            reply,
        })
        .expect("a valid cursor")
    }

    fn call(&mut self, id: &str) -> Option<view::CallSnapshot> {
        let id = id.to_owned();
        self.ask(|reply| CallQuery::Get { id, reply })
    }

    fn hang_up(&mut self, id: &str) -> view::HangUp {
        let id = id.to_owned();
        self.ask(|reply| CallQuery::HangUp { id, reply })
    }

    /// The kinds of the events published since the last call.
    fn event_kinds(&mut self) -> Vec<&'static str> {
        let mut kinds = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            kinds.push(event.kind());
        }
        kinds
    }
}

#[test]
fn an_answered_call_is_listed_with_its_parties_route_manager_and_ladder() {
    let mut h = Harness::new(&bob_plan());
    let invite = h.invite("1001", "call-1", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.link.push_input(
        h.now.instant,
        LinkInput::Placed {
            call: MediaCallId(Owner::new("test", 1).media_id("call-1").0),
            manager: "edge-a".to_owned(),
        },
    );
    let page = h.page(10, None);
    assert_eq!(page.total, 1);
    assert_eq!(page.calls[0].state, view::CallState::Routing);
    h.response_to(CALLER, 100);
    let to_bob = h.request_to(BOB, "INVITE");
    h.from(BOB, &reply(&to_bob, 180, Some("bob1"), None));
    h.response_to(CALLER, 180);
    assert_eq!(h.page(10, None).calls[0].state, view::CallState::Ringing);
    h.from(BOB, &reply(&to_bob, 200, Some("bob1"), Some(CALLEE_SDP)));
    let ok = h.response_to(CALLER, 200);
    let ack = h.ack_for(&ok, None);
    h.from(CALLER, &ack);
    h.request_to(BOB, "ACK");

    let page = h.page(10, None);
    assert_eq!((page.total, page.next.clone()), (1, None));
    let listed = &page.calls[0];
    assert_eq!(listed.state, view::CallState::Answered);
    assert_eq!(listed.started_at_ms, 1_800_000_000_000);
    assert_eq!(listed.answered_at_ms, Some(1_800_000_000_000));
    assert_eq!(listed.caller.uri, "sip:alice@192.0.2.1");
    assert_eq!(listed.caller.display_name.as_deref(), Some("Alice"));
    assert_eq!(listed.caller.address, CALLER);
    assert_eq!(listed.caller.transport, "udp");
    let callee = listed.callee.as_ref().expect("the callee is known");
    assert_eq!(callee.uri, "sip:bob@192.0.2.2:5060");
    assert_eq!(callee.address, BOB);
    assert_eq!(listed.dialled, "sip:1001@192.0.2.100");
    assert_eq!(listed.route.as_deref(), Some("dial"));
    assert_eq!(listed.manager.as_deref(), Some("edge-a"));
    assert!(listed.media_call_id.contains("call-1"));
    assert!(
        listed
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-'),
        "URL-safe id: {}",
        listed.id
    );
    assert!(listed.detail.is_none(), "no history in a list");

    let one = h.call(&listed.id).expect("the call by its id");
    let detail = one.detail.expect("one call has its history");
    let ladder: Vec<(view::Direction, &str, &str)> = detail
        .sip
        .iter()
        .map(|e| (e.direction, e.leg.as_str(), e.first_line.as_str()))
        .collect();
    use view::Direction::{In, Out};
    assert_eq!(
        ladder,
        vec![
            (In, "a", "INVITE sip:1001@192.0.2.100 SIP/2.0"),
            (Out, "a", "SIP/2.0 100 Trying"),
            (Out, "b", "INVITE sip:bob@192.0.2.2:5060 SIP/2.0"),
            (In, "b", "SIP/2.0 180 Ringing"),
            (Out, "a", "SIP/2.0 180 Ringing"),
            (In, "b", "SIP/2.0 200 OK"),
            (Out, "a", "SIP/2.0 200 OK"),
            (In, "a", "ACK sip:sb@192.0.2.100:5060 SIP/2.0"),
            (Out, "b", "ACK sip:peer@192.0.2.2:5060 SIP/2.0"),
        ]
    );
    let invite_b = &detail.sip[2];
    assert_eq!(invite_b.call_id, to_bob.call_id().as_str());
    assert_eq!(invite_b.cseq, "1 INVITE");
    assert_eq!(invite_b.peer, BOB);
    assert_eq!(detail.sip[0].call_id, "call-1");
    assert_eq!(detail.sip[0].peer, CALLER);
    assert!(!detail.sip_truncated);
    assert_eq!(detail.sdp.a_offer.as_deref(), Some(CALLER_SDP));
    assert_eq!(detail.sdp.b_offer, Some(manager_sdp("offer-a-b")));
    assert_eq!(detail.sdp.b_answer.as_deref(), Some(CALLEE_SDP));
    assert_eq!(detail.sdp.a_answer, Some(manager_sdp("answer-b-a")));
    assert_eq!(h.call("00000000-1"), None, "another process's id");
    assert_eq!(h.call("nonsense"), None);
}

#[test]
fn an_operator_hangup_byes_both_legs_deletes_the_media_and_writes_its_cdr() {
    let mut h = Harness::new(&bob_plan());
    let (ok, to_bob) = answered_call(&mut h);
    h.cdrs.records();
    let id = h.page(1, None).calls[0].id.clone();
    h.event_kinds();
    assert_eq!(h.hang_up(&id), view::HangUp::Ending);
    let bye_caller = h.request_to(CALLER, "BYE");
    assert_eq!(bye_caller.call_id().as_str(), "call-1");
    let bye_bob = h.request_to(BOB, "BYE");
    assert_eq!(bye_bob.call_id(), to_bob.call_id());
    assert!(matches!(
        h.ops().as_slice(),
        [MediaOp::Delete {
            reason: DeleteReason::Admin,
            ..
        }]
    ));
    assert_eq!(h.page(10, None).total, 0, "the call is gone from the list");
    assert_eq!(h.hang_up(&id), view::HangUp::NotFound);
    assert_eq!(h.event_kinds(), vec!["call_ended"]);
    let cdrs = h.cdrs.records();
    assert_eq!(cdrs.len(), 1, "one record per call");
    let cdr = &cdrs[0];
    assert_eq!(cdr.id, id);
    assert_eq!(cdr.ended_by, crate::events::EndedBy::Operator);
    assert_eq!(cdr.reason, "admin");
    assert_eq!(cdr.final_status, 200);
    assert_eq!(cdr.call_id, "call-1");
    assert_eq!(
        cdr.callee_call_id.as_deref(),
        Some(to_bob.call_id().as_str())
    );
    assert_eq!(cdr.codec.as_deref(), Some("PCMU/8000"));
    assert_eq!(cdr.legs.len(), 2, "the manager's final figures per leg");
    assert_eq!(cdr.legs[0].rtp_in.packets, 500);
    assert_eq!(cdr.legs[1].kernel_packets, 490);
    assert_eq!(cdr.media_error, None);
    h.from(CALLER, &reply(&bye_caller, 200, None, None));
    h.from(BOB, &reply(&bye_bob, 200, None, None));
    drop(ok);
    h.advance(Duration::from_secs(40));
    assert_eq!(h.occupancy(), Occupancy::default());
}

#[test]
fn an_operator_hangup_of_a_ringing_call_cancels_the_callee_and_answers_the_caller() {
    let mut h = Harness::new(&bob_plan());
    let invite = h.invite("1001", "call-ring", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let to_bob = h.request_to(BOB, "INVITE");
    h.from(BOB, &reply(&to_bob, 180, Some("bob1"), None));
    h.response_to(CALLER, 180);
    let id = h.page(1, None).calls[0].id.clone();
    assert_eq!(h.hang_up(&id), view::HangUp::Ending);
    h.response_to(CALLER, 480);
    h.request_to(BOB, "CANCEL");
    let cdrs = h.cdrs.records();
    assert_eq!(cdrs.len(), 1);
    assert_eq!(cdrs[0].final_status, 480);
    assert_eq!(cdrs[0].answered_at_ms, None);
    assert_eq!(cdrs[0].talk_ms, 0);
}

#[test]
fn calls_are_paged_oldest_first_and_a_foreign_cursor_is_refused() {
    let mut h = Harness::new(&bob_plan());
    for n in 0..3 {
        let invite = h.invite("1001", &format!("call-{n}"), Some(CALLER_SDP));
        h.from(CALLER, &invite);
    }
    let first = h.page(2, None);
    assert_eq!(first.total, 3);
    let ids: Vec<String> = first.calls.iter().map(|c| c.id.clone()).collect();
    assert_eq!(first.next.as_deref(), Some(ids[1].as_str()));
    assert!(first.calls[0].media_call_id.contains("call-0"));
    let second = h.page(2, first.next.as_deref());
    assert_eq!(second.calls.len(), 1);
    assert!(second.calls[0].media_call_id.contains("call-2"));
    assert_eq!(second.next, None, "nothing after the last page");
    let refused = h.ask(|reply| CallQuery::List {
        limit: 2,
        after: Some("ffffffff-1".to_owned()),
        reply,
    });
    assert_eq!(
        refused,
        Err(view::BadCursor("ffffffff-1".to_owned())),
        "an id of another process"
    );
    // A cursor whose call ended meanwhile still pages on.
    let id = ids[1].clone();
    assert_eq!(h.hang_up(&id), view::HangUp::Ending);
    let after_gone = h.page(10, Some(&id));
    assert_eq!(after_gone.calls.len(), 1);
    assert!(after_gone.calls[0].media_call_id.contains("call-2"));
}

#[test]
fn events_follow_the_call_created_ringing_answered_ended() {
    let mut h = Harness::new(&bob_plan());
    let (ok, _) = answered_call(&mut h);
    let bye = h.in_dialog(CALLER, &ok, "BYE", 2, None);
    h.from(CALLER, &bye);
    let mut events = Vec::new();
    while let Ok(event) = h.events.try_recv() {
        events.push(event);
    }
    let kinds: Vec<&str> = events.iter().map(|e| e.kind()).collect();
    assert_eq!(
        kinds,
        vec![
            "call_created",
            "call_ringing",
            "call_answered",
            "call_ended"
        ]
    );
    match &**events[3] {
        Event::CallEnded {
            final_status,
            ended_by,
            ..
        } => {
            assert_eq!(*final_status, 200);
            assert_eq!(*ended_by, crate::events::EndedBy::Caller);
        }
        other => panic!("not an end: {other:?}"),
    }
    let cdr = h.cdrs.records().pop().expect("a record");
    assert_eq!(cdr.ended_by, crate::events::EndedBy::Caller);
    assert_eq!(cdr.reason, "hangup");
}

#[test]
fn a_call_refused_before_any_media_still_gets_its_cdr() {
    // A dial of an unregistered user: 480 before the manager is asked.
    let mut h = Harness::new(&dial_plan(r#"["user/nobody"]"#, ""));
    let invite = h.invite("1001", "call-nobody", None);
    h.from(CALLER, &invite);
    h.response_to(CALLER, 480);
    assert!(h.ops().is_empty(), "no media asked for");
    let cdrs = h.cdrs.records();
    assert_eq!(cdrs.len(), 1);
    assert_eq!(cdrs[0].final_status, 480);
    assert_eq!(cdrs[0].ended_by, crate::events::EndedBy::System);
    assert_eq!(cdrs[0].manager, None);
    assert!(cdrs[0].legs.is_empty());
    assert_eq!(cdrs[0].route, "dial");
    assert_eq!(
        h.event_kinds(),
        vec!["call_created", "call_ended"],
        "no ringing, no answer"
    );
}

#[test]
fn a_record_still_waiting_for_its_delete_goes_out_when_the_core_stops() {
    let mut h = Harness::new(&bob_plan());
    answered_call(&mut h);
    h.cdrs.records();
    h.manager.hold = true;
    let id = h.page(1, None).calls[0].id.clone();
    assert_eq!(h.hang_up(&id), view::HangUp::Ending);
    assert!(
        h.cdrs.records().is_empty(),
        "waiting for the delete's figures"
    );
    assert_eq!(h.occupancy().records, 1);
    let Harness { uas, cdrs, .. } = h;
    drop(uas);
    let cdrs = cdrs.records();
    assert_eq!(cdrs.len(), 1);
    assert_eq!(cdrs[0].id, id);
    assert!(cdrs[0].legs.is_empty());
    assert_eq!(
        cdrs[0].media_error.as_deref(),
        Some("the server stopped before the manager answered")
    );
}

#[test]
fn paging_through_thousands_of_calls_sees_each_once_in_start_order() {
    let mut h = Harness::new(&bob_plan());
    let calls = 3000;
    for n in 0..calls {
        let invite = h.invite("1001", &format!("many-{n}"), Some(CALLER_SDP));
        h.from(CALLER, &invite);
        h.sent.clear();
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = h.page(view::MAX_PAGE, after.as_deref());
        assert_eq!(page.total, calls);
        assert!(page.calls.len() <= view::MAX_PAGE);
        seen.extend(page.calls.iter().map(|c| c.media_call_id.clone()));
        pages += 1;
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..calls)
        .map(|n| Owner::new("test", 1).media_id(&format!("many-{n}")).0)
        .collect();
    assert_eq!(seen, expected, "every call once, oldest first");
}

// ----- RFC 3263: dial targets named by host name -----------------------

impl Harness {
    /// The names asked for since the last call.
    fn take_queries(&mut self) -> Vec<crate::resolve::Query> {
        std::mem::take(&mut *self.queries.lock().expect("queries"))
    }

    /// Answers a name with these destinations (UDP), valid for `ttl`.
    fn resolve(&mut self, query: crate::resolve::Query, to: &[&str], ttl: Duration) {
        let result = if to.is_empty() {
            Err(crate::resolve::Unresolved {
                reason: "NXDOMAIN".to_owned(),
            })
        } else {
            Ok(crate::resolve::Resolution {
                destinations: to
                    .iter()
                    .map(|a| crate::transport::Destination::Udp(addr(a)))
                    .collect(),
                valid_until: self.now.instant + ttl,
            })
        };
        self.link
            .push_input(self.now.instant, LinkInput::Resolved { query, result });
        self.step();
        self.settle();
    }
}

fn trunk_plan() -> String {
    dial_plan(
        r#"["sip:${destination}@trunk.example.com"]"#,
        r#", "timeout": 30"#,
    )
}

#[test]
fn a_named_target_waits_for_its_destinations_and_fails_over_on_silence_and_on_503() {
    let mut h = Harness::new(&trunk_plan());
    let invite = h.invite("1234", "call-dns", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let queries = h.take_queries();
    assert_eq!(
        queries,
        vec![crate::resolve::Query {
            host: "trunk.example.com".to_owned(),
            transport: None,
            port: None,
            secure: false
        }]
    );
    h.nothing_to(BOB);
    h.resolve(
        queries[0].clone(),
        &[BOB, CAROL, DAVE],
        Duration::from_secs(300),
    );

    // The first destination, with the name kept in the Request-URI.
    let to_bob = h.request_to(BOB, "INVITE");
    assert_eq!(
        to_bob.request_uri().map(ToString::to_string),
        Some("sip:1234@trunk.example.com".to_owned())
    );
    // It says nothing for FAILOVER_AFTER: the second is tried.
    h.advance(FAILOVER_AFTER - Duration::from_millis(100));
    h.nothing_to(CAROL);
    h.advance(Duration::from_millis(200));
    let to_carol = h.request_to(CAROL, "INVITE");
    assert_eq!(to_carol.call_id(), to_bob.call_id());
    // The second answers 503: the third at once.
    h.from(CAROL, &reply(&to_carol, 503, Some("c1"), None));
    let to_dave = h.request_to(DAVE, "INVITE");
    // The third gives a 100 and takes its time ringing: no failover
    // (there is no fourth anyway) and the call completes.
    h.from(DAVE, &reply(&to_dave, 100, None, None));
    h.advance(Duration::from_secs(6));
    h.from(DAVE, &reply(&to_dave, 200, Some("d1"), Some(CALLEE_SDP)));
    h.response_to(CALLER, 200);
}

#[test]
fn an_answering_destination_is_not_failed_over_and_answers_are_reused_until_their_ttl() {
    let mut h = Harness::new(&trunk_plan());
    let invite = h.invite("1234", "call-a", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let query = h.take_queries().remove(0);
    h.resolve(query.clone(), &[BOB, CAROL], Duration::from_secs(60));
    let to_bob = h.request_to(BOB, "INVITE");
    h.from(BOB, &reply(&to_bob, 180, Some("b1"), None));
    h.response_to(CALLER, 180);
    h.advance(FAILOVER_AFTER * 2);
    h.nothing_to(CAROL);
    h.from(BOB, &reply(&to_bob, 200, Some("b1"), Some(CALLEE_SDP)));
    let answer = h.response_to(CALLER, 200);
    let ack = h.ack_for(&answer, None);
    h.from(CALLER, &ack);
    h.request_to(BOB, "ACK");

    // A second call within the TTL goes straight to the first destination.
    let invite = h.invite("1234", "call-b", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    assert!(h.take_queries().is_empty(), "asked again within the TTL");
    h.request_to(BOB, "INVITE");

    // After the TTL the name is asked again (what the unanswered second
    // call sent meanwhile does not matter here).
    h.advance(Duration::from_secs(61));
    h.sent.clear();
    let invite = h.invite("1234", "call-c", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    assert_eq!(h.take_queries(), vec![query]);
}

#[test]
fn a_name_that_does_not_resolve_is_503_and_callers_waiting_for_it_all_get_their_answer() {
    let mut h = Harness::new(&trunk_plan());
    for call in ["call-1", "call-2"] {
        let invite = h.invite("1234", call, Some(CALLER_SDP));
        h.from(CALLER, &invite);
        h.response_to(CALLER, 100);
    }
    // One query for both callers.
    let queries = h.take_queries();
    assert_eq!(queries.len(), 1);
    h.resolve(queries[0].clone(), &[], Duration::ZERO);
    let first = h.response_to(CALLER, 503);
    let second = h.response_to(CALLER, 503);
    assert_ne!(first.call_id(), second.call_id());
    // Remembered for a moment: a third caller is answered without a query.
    let invite = h.invite("1234", "call-3", Some(CALLER_SDP));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    h.response_to(CALLER, 503);
    assert!(h.take_queries().is_empty());
}

// ----- RFC 3262: reliable provisionals towards a caller requiring them ---

fn requiring_100rel(invite: &str) -> String {
    invite.replacen("\r\n", "\r\nRequire: 100rel\r\nSupported: 100rel\r\n", 1)
}

/// The caller's PRACK of `provisional` with this RAck RSeq and CSeq.
fn prack(h: &mut Harness, provisional: &SipMessage, rseq: u32, cseq: u32) -> String {
    let branch = h.new_branch();
    request(
        "PRACK sip:sb@192.0.2.100:5060 SIP/2.0",
        &[
            ("Via", &format!("SIP/2.0/UDP {CALLER};branch={branch}")),
            ("Max-Forwards", "70"),
            ("From", provisional.header("From").unwrap_or_default()),
            ("To", provisional.header("To").unwrap_or_default()),
            ("Call-ID", provisional.call_id().as_str()),
            ("CSeq", &format!("{cseq} PRACK")),
            ("RAck", &format!("{rseq} 1 INVITE")),
        ],
        None,
    )
}

fn rseq(response: &SipMessage) -> u32 {
    response
        .header("RSeq")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no RSeq in {}", describe(response)))
}

impl Harness {
    /// Every message sent to `peer` so far, taken.
    fn take_to(&mut self, peer: &str) -> Vec<SipMessage> {
        let peer = addr(peer);
        let (to, rest): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.sent)
            .into_iter()
            .partition(|(a, _)| *a == peer);
        self.sent = rest;
        to.into_iter().map(|(_, m)| m).collect()
    }
}

#[test]
fn a_caller_requiring_100rel_gets_each_provisional_reliably_and_the_2xx_after_its_prack() {
    let mut h = Harness::new(&bob_plan());
    let invite = requiring_100rel(&h.invite("1001", "call-rel", Some(CALLER_SDP)));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let to_bob = h.request_to(BOB, "INVITE");
    assert!(to_bob.require().is_empty(), "the callee leg is plain");

    h.from(BOB, &reply(&to_bob, 180, Some("bob1"), None));
    let ringing = h.response_to(CALLER, 180);
    assert_eq!(ringing.require(), vec!["100rel".to_owned()]);
    let first = rseq(&ringing);
    assert!((1..0x8000_0000).contains(&first), "{first}");
    // Sent again at T1 (500 ms) with the same RSeq until the PRACK.
    h.advance(Duration::from_millis(500));
    assert_eq!(rseq(&h.response_to(CALLER, 180)), first);

    // A 183 with SDP waits behind the unacknowledged 180.
    h.from(BOB, &reply(&to_bob, 183, Some("bob1"), Some(CALLEE_SDP)));
    h.nothing_to(CALLER);
    // A PRACK naming another RSeq: 481, nothing released.
    let wrong = prack(&mut h, &ringing, first + 7, 2);
    h.from(CALLER, &wrong);
    h.response_to(CALLER, 481);
    h.nothing_to(CALLER);
    let right = prack(&mut h, &ringing, first, 3);
    h.from(CALLER, &right);
    let ok = h.response_to(CALLER, 200);
    assert_eq!(ok.cseq().method, Method::Prack);
    let progress = h.response_to(CALLER, 183);
    assert_eq!(rseq(&progress), first + 1);
    assert_eq!(body(&progress), manager_sdp("answer-b-a"));
    // No more 180s after its PRACK.
    h.advance(Duration::from_secs(2));
    let resent: Vec<u16> = h
        .take_to(CALLER)
        .iter()
        .filter_map(SipMessage::status)
        .collect();
    assert!(resent.iter().all(|s| *s == 183), "{resent:?}");

    // The callee answers before the caller PRACKs the 183: the 2xx waits.
    h.from(BOB, &reply(&to_bob, 200, Some("bob1"), Some(CALLEE_SDP)));
    h.nothing_to(CALLER);
    let prack_183 = prack(&mut h, &progress, first + 1, 4);
    h.from(CALLER, &prack_183);
    let ok = h.response_to(CALLER, 200);
    assert_eq!(ok.cseq().method, Method::Prack);
    let answer = h.response_to(CALLER, 200);
    assert_eq!(answer.cseq().method, Method::Invite);
    assert!(answer.require().is_empty());
}

#[test]
fn without_a_prack_the_callers_invite_is_answered_500_after_64_t1() {
    // Rung longer than 64·T1, so the dial's own timeout stays out of it.
    let mut h = Harness::new(&dial_plan(
        r#"["sip:bob@192.0.2.2:5060"]"#,
        r#", "timeout": 60"#,
    ));
    let invite = requiring_100rel(&h.invite("1001", "call-noprack", Some(CALLER_SDP)));
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let to_bob = h.request_to(BOB, "INVITE");
    h.from(BOB, &reply(&to_bob, 180, Some("bob1"), None));
    h.advance(Duration::from_secs(33));
    let statuses: Vec<u16> = h
        .take_to(CALLER)
        .iter()
        .filter_map(SipMessage::status)
        .collect();
    // At 0 and then 0.5, 1.5, 3.5, 7.5, 15.5 and 31.5 s; 500 at 32 s.
    assert_eq!(
        statuses.iter().filter(|s| **s == 180).count(),
        7,
        "{statuses:?}"
    );
    assert!(statuses.contains(&500), "{statuses:?}");
    h.request_to(BOB, "CANCEL");
}

#[test]
fn a_caller_that_only_supports_100rel_gets_plain_provisionals() {
    let mut h = Harness::new(&bob_plan());
    let invite = h.invite("1001", "call-sup", Some(CALLER_SDP)).replacen(
        "\r\n",
        "\r\nSupported: 100rel\r\n",
        1,
    );
    h.from(CALLER, &invite);
    h.response_to(CALLER, 100);
    let to_bob = h.request_to(BOB, "INVITE");
    h.from(BOB, &reply(&to_bob, 180, Some("bob1"), None));
    let ringing = h.response_to(CALLER, 180);
    assert!(ringing.require().is_empty());
    assert_eq!(ringing.header("RSeq"), None);
}

// ----- REFER: blind transfer --------------------------------------------

/// 1001 rings Bob, who may transfer; 2002 rings Carol, 3003 Dave.
fn transfer_plan() -> String {
    transfer_plan_with(true)
}

fn transfer_plan_with(bob_may_transfer: bool) -> String {
    r#"{"version": "1.0", "routes": [
      {"id": "bob", "pattern": "1001", "priority": 1, "actions": [
        {"type": "dial", "params": {"targets": ["sip:bob@192.0.2.2:5060"], "timeout": 20, "allow_transfer": BOB}}]},
      {"id": "carol", "pattern": "2002", "priority": 2, "actions": [
        {"type": "dial", "params": {"targets": ["sip:carol@192.0.2.3:5060"], "timeout": 20}}]},
      {"id": "dave", "pattern": "3003", "priority": 3, "actions": [
        {"type": "dial", "params": {"targets": ["sip:dave@192.0.2.4:5060"], "timeout": 20}}]}
    ]}"#
    .replace("BOB", if bob_may_transfer { "true" } else { "false" })
}

#[test]
fn a_callee_reached_at_a_uri_may_not_transfer_unless_its_dial_allows_it() {
    let mut h = Harness::new(&transfer_plan_with(false));
    let (ok, to_bob) = answered_call(&mut h);
    let refer = h.callee_request(BOB, &to_bob, "bob1", "REFER", 2, None);
    h.from(BOB, &with_refer_to(&refer, "<sip:2002@192.0.2.100>"));
    h.response_to(BOB, 403);
    h.nothing_to(CAROL);
    // The caller may: it could have dialled 2002 itself.
    let refer = h.in_dialog(CALLER, &ok, "REFER", 2, None);
    h.from(CALLER, &with_refer_to(&refer, "<sip:2002@192.0.2.100>"));
    h.response_to(CALLER, 202);
    let to_carol = h.request_to(CAROL, "INVITE");
    // Carol, reached at a URI of a dial without allow_transfer, answers
    // in the caller's place: she may not transfer in turn.
    h.from(
        CAROL,
        &reply(&to_carol, 200, Some("carol1"), Some(CALLEE_SDP)),
    );
    h.request_to(CAROL, "ACK");
    let carols_refer = h.callee_request(CAROL, &to_carol, "carol1", "REFER", 2, None);
    h.from(
        CAROL,
        &with_refer_to(&carols_refer, "<sip:3003@192.0.2.100>"),
    );
    h.response_to(CAROL, 403);
    h.nothing_to(DAVE);
}

fn with_refer_to(request: &str, refer_to: &str) -> String {
    request.replacen("\r\n", &format!("\r\nRefer-To: {refer_to}\r\n"), 1)
}

/// The NOTIFYs sent to `peer` so far: (Subscription-State, sipfrag status line).
fn notifies(h: &mut Harness, peer: &str) -> Vec<(String, String)> {
    h.take_to(peer)
        .into_iter()
        .filter(|m| m.is_request() && *m.method() == Method::Notify)
        .map(|m| {
            assert_eq!(m.header("Event"), Some("refer"));
            assert!(!m.contacts().is_empty(), "a NOTIFY has a Contact");
            (
                m.header("Subscription-State")
                    .unwrap_or_default()
                    .to_owned(),
                body(&m).trim_end().to_owned(),
            )
        })
        .collect()
}

#[test]
fn the_callee_blind_transfers_the_caller_to_a_third_party_who_takes_its_place() {
    let mut h = Harness::new(&transfer_plan());
    let (ok, to_bob) = answered_call(&mut h);
    let refer = h.callee_request(BOB, &to_bob, "bob1", "REFER", 2, None);
    h.from(BOB, &with_refer_to(&refer, "<sip:2002@192.0.2.100>"));
    let accepted = h.response_to(BOB, 202);
    assert_eq!(accepted.cseq().method, Method::Refer);
    // The target gets what Bob had from the manager: the caller keeps
    // sending to the same place.
    let to_carol = h.request_to(CAROL, "INVITE");
    assert_eq!(body(&to_carol), body(&to_bob));
    assert_eq!(
        to_carol.request_uri().map(ToString::to_string),
        Some("sip:carol@192.0.2.3:5060".to_owned())
    );
    assert_eq!(
        notifies(&mut h, BOB),
        vec![(
            "active;expires=60".to_owned(),
            "SIP/2.0 100 Trying".to_owned()
        )]
    );
    h.from(CAROL, &reply(&to_carol, 180, Some("carol1"), None));
    assert_eq!(
        notifies(&mut h, BOB),
        vec![(
            "active;expires=60".to_owned(),
            "SIP/2.0 180 Ringing".to_owned()
        )]
    );
    h.ops();
    h.from(
        CAROL,
        &reply(&to_carol, 200, Some("carol1"), Some(CALLEE_SDP)),
    );
    h.request_to(CAROL, "ACK");
    assert_eq!(
        h.ops(),
        vec![MediaOp::Answer {
            leg: CallLeg::B,
            peer: CallLeg::A,
            sdp: CALLEE_SDP.to_owned(),
            bridge: false
        }]
    );
    let to_bob_now = h.take_to(BOB);
    let kinds: Vec<String> = to_bob_now.iter().map(describe).collect();
    assert!(
        to_bob_now.iter().any(|m| m.is_request()
            && *m.method() == Method::Notify
            && body(m).starts_with("SIP/2.0 200 OK")
            && m.header("Subscription-State") == Some("terminated;reason=noresource")),
        "{kinds:?}"
    );
    assert!(
        to_bob_now
            .iter()
            .any(|m| m.is_request() && *m.method() == Method::Bye),
        "{kinds:?}"
    );
    // Nothing for the caller: its media address did not change.
    h.nothing_to(CALLER);
    // The caller now talks to Carol: its BYE reaches her.
    let bye = h.in_dialog(CALLER, &ok, "BYE", 2, None);
    h.from(CALLER, &bye);
    h.response_to(CALLER, 200);
    h.request_to(CAROL, "BYE");
    h.nothing_to(BOB);
}

#[test]
fn the_caller_transfers_the_callee_and_may_hang_up_before_the_target_answers() {
    let mut h = Harness::new(&transfer_plan());
    let (ok, to_bob) = answered_call(&mut h);
    let refer = h.in_dialog(CALLER, &ok, "REFER", 2, None);
    h.from(CALLER, &with_refer_to(&refer, "sip:2002@192.0.2.100"));
    h.response_to(CALLER, 202);
    let to_carol = h.request_to(CAROL, "INVITE");
    // Carol sees Bob calling.
    assert!(
        to_carol
            .header("From")
            .unwrap_or_default()
            .contains("sip:bob@"),
        "{:?}",
        to_carol.header("From")
    );
    // The caller hangs up at once, as phones do in a blind transfer: Bob
    // stays, waiting for Carol.
    let bye = h.in_dialog(CALLER, &ok, "BYE", 3, None);
    h.from(CALLER, &bye);
    let responses: Vec<u16> = h
        .take_to(CALLER)
        .iter()
        .filter_map(SipMessage::status)
        .collect();
    assert!(responses.contains(&200), "{responses:?}");
    h.nothing_to(BOB);
    h.ops();
    h.from(
        CAROL,
        &reply(&to_carol, 200, Some("carol1"), Some(CALLEE_SDP)),
    );
    h.request_to(CAROL, "ACK");
    assert_eq!(
        h.ops(),
        vec![MediaOp::Answer {
            leg: CallLeg::A,
            peer: CallLeg::B,
            sdp: CALLEE_SDP.to_owned(),
            bridge: false
        }]
    );
    // The caller is gone: no NOTIFY, no BYE for it.
    assert!(
        h.take_to(CALLER).iter().all(|m| !m.is_request()),
        "requests to the departed caller"
    );
    // Bob's BYE now reaches Carol, in the dialog she answered.
    let bobs_bye = h.callee_request(BOB, &to_bob, "bob1", "BYE", 2, None);
    h.from(BOB, &bobs_bye);
    h.response_to(BOB, 200);
    let to_carol_bye = h.request_to(CAROL, "BYE");
    assert_eq!(to_carol_bye.call_id(), to_carol.call_id());
}

#[test]
fn a_failed_transfer_is_notified_and_the_call_stays_unless_the_transferor_left() {
    let mut h = Harness::new(&transfer_plan());
    let (ok, to_bob) = answered_call(&mut h);
    // Refused before anything: no route, attended, no Refer-To.
    let refer = h.callee_request(BOB, &to_bob, "bob1", "REFER", 2, None);
    h.from(BOB, &with_refer_to(&refer, "<sip:9999@192.0.2.100>"));
    h.response_to(BOB, 403);
    let refer = h.callee_request(BOB, &to_bob, "bob1", "REFER", 3, None);
    h.from(
        BOB,
        &with_refer_to(
            &refer,
            "<sip:2002@192.0.2.100?Replaces=abc%3Bto-tag%3Dx%3Bfrom-tag%3Dy>",
        ),
    );
    h.response_to(BOB, 501);
    let refer = h.callee_request(BOB, &to_bob, "bob1", "REFER", 4, None);
    h.from(BOB, &refer);
    h.response_to(BOB, 400);

    // The target is busy: Bob hears so, and the call goes on.
    let refer = h.callee_request(BOB, &to_bob, "bob1", "REFER", 5, None);
    h.from(BOB, &with_refer_to(&refer, "<sip:2002@192.0.2.100>"));
    h.response_to(BOB, 202);
    let to_carol = h.request_to(CAROL, "INVITE");
    h.from(CAROL, &reply(&to_carol, 486, Some("carol1"), None));
    h.request_to(CAROL, "ACK");
    let told = notifies(&mut h, BOB);
    assert_eq!(
        told.last(),
        Some(&(
            "terminated;reason=noresource".to_owned(),
            "SIP/2.0 486 Busy Here".to_owned()
        ))
    );
    let bye = h.in_dialog(CALLER, &ok, "BYE", 2, None);
    h.from(CALLER, &bye);
    h.response_to(CALLER, 200);
    h.request_to(BOB, "BYE");

    // Transferor gone and the target busy: the transferee is hung up on.
    let mut h = Harness::new(&transfer_plan());
    let (ok, to_bob) = answered_call(&mut h);
    let refer = h.callee_request(BOB, &to_bob, "bob1", "REFER", 2, None);
    h.from(BOB, &with_refer_to(&refer, "<sip:3003@192.0.2.100>"));
    h.response_to(BOB, 202);
    let bobs_bye = h.callee_request(BOB, &to_bob, "bob1", "BYE", 3, None);
    h.from(BOB, &bobs_bye);
    let to_bob_now: Vec<String> = h.take_to(BOB).iter().map(describe).collect();
    assert!(
        to_bob_now.iter().any(|m| m.starts_with("200")),
        "{to_bob_now:?}"
    );
    h.nothing_to(CALLER);
    let to_dave = h.request_to(DAVE, "INVITE");
    h.from(DAVE, &reply(&to_dave, 486, Some("dave1"), None));
    let to_caller = h.request_to(CALLER, "BYE");
    assert_eq!(to_caller.call_id(), ok.call_id());
    assert_eq!(h.occupancy().calls, 0);
}
