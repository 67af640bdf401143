//! The B2BUA: pairs a caller's dialog (leg a) with a callee's (leg b),
//! runs the dialplan and keeps media on an RTP manager.
//!
//! [`B2bua`] is a [`CallHandler`]: sans-IO, fed by the request-handling core
//! with SIP events and `now`, acting through [`SipActions`]. Media
//! operations are asynchronous gRPC calls, so the core never makes them: it
//! queues [`MediaRequest`]s on its [`MediaLink`] and takes their results
//! (and the managers' events, and reloaded dialplans) from the same link.
//!
//! # Driving it
//!
//! 1. Install it with `Uas::set_call_handler`; keep a clone of its link.
//! 2. Run every request from `link.poll_request()` (in order per call, on
//!    the manager chosen for that call) and push each result with
//!    `link.push_input(now, LinkInput::Result { .. })`; push Watch events
//!    and new dialplans the same way.
//! 3. After pushing, make the core call `handle_timeout`: an input pushed at
//!    `at` makes [`CallHandler::poll_timeout`] return `at`.
//!
//! # Call flow
//!
//! A new INVITE is answered 100 at once, then routed through the dialplan
//! before anything else is sent. `dial` offers the caller's SDP to the
//! manager and sends the manager's SDP to every contact of the target
//! (parallel) or one after the other (sequential); 18x are relayed (their
//! SDP through `Answer`); the first 2xx is answered through the manager,
//! bridged, and relayed with the manager's SDP; the callee's 2xx is ACKed
//! when the caller's ACK arrives (end to end). Other branches are
//! cancelled, and a 2xx that crosses a CANCEL is ACKed then BYEd. A failed
//! target gives way to the next; when none is left the best final response
//! is relayed (6xx first, then 4xx, then 5xx). The 2xx to the caller is
//! retransmitted (T1 doubling to T2) until its ACK; without one after 64·T1
//! the call ends (RFC 3261 §13.3.1.4).
//!
//! Late offer (INVITE without SDP): the callee's 2xx carries the offer,
//! which the manager rewrites for the caller's 2xx; the caller's ACK carries
//! the answer, which goes to the callee in its ACK.
//!
//! In-dialog: BYE ends both legs and deletes the media; re-INVITE and
//! UPDATE with SDP go through the manager to the other side (491 when one
//! is already in progress on the call); a re-INVITE without SDP is answered
//! locally with the last SDP sent on that leg; INFO is relayed.
//!
//! Not implemented: session timers (RFC 4028), 100rel/PRACK (PRACK is 481),
//! route sets (Record-Route of the caller, Path of a binding), DNS for SIP
//! URI targets (an IP address is required), redirects (3xx count as failures).

mod build;
pub mod executor;
mod media;

#[cfg(test)]
mod tests;

pub use media::{
    DeleteReason, LegId, LinkInput, MediaCallId, MediaEvent, MediaFailure, MediaLink, MediaOp,
    MediaRequest, MediaRequestId, MediaResult,
};

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dialplan::{Action, CallVars, Dialplan, Ring, Target};
use crate::sip::{Method, NameAddr, SipMessage, Tag, Uri};
use crate::transaction::{TimerConfig, TransactionKey};
use crate::transport::Destination;
use crate::uas::{CallEvent, CallHandler, Now, SipActions};

use build::{contact_of, contact_uri, sdp_of, with_tag, Outgoing};

const SDP: &str = "application/sdp";

/// Settings of the B2BUA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct B2buaConfig {
    /// Our `host:port` for Via, Contact and the From of callee legs.
    pub local: String,
    /// SIP timers (T1, T2 for 2xx retransmission, 64·T1 for giving up).
    pub timers: TimerConfig,
    /// Seeds Call-IDs, tags and branches so that two processes never
    /// produce the same ones; the driver draws it at random.
    pub seed: u64,
}

/// How many entries each table holds: all zero once every call has ended
/// and its transactions have terminated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Occupancy {
    pub calls: usize,
    pub server_transactions: usize,
    pub client_transactions: usize,
    pub dialogs: usize,
    pub media_requests: usize,
    pub retransmissions: usize,
    pub timers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct CallKey(u64);

/// A dialog as we keep it for one leg (RFC 3261 §12).
#[derive(Debug, Clone)]
struct Dialog {
    call_id: String,
    local: NameAddr,
    local_tag: Tag,
    remote: NameAddr,
    remote_tag: Option<Tag>,
    /// Request-URI of our requests in the dialog.
    target: String,
    destination: Destination,
    local_cseq: u32,
}

/// An INVITE sent on leg b, kept for its CANCEL, its ACK and its dialog.
#[derive(Debug, Clone)]
struct SentInvite {
    uri: String,
    branch: String,
    from: NameAddr,
    from_tag: Tag,
    to: NameAddr,
    call_id: String,
    cseq: u32,
    destination: Destination,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cancel {
    No,
    /// Wanted, but no provisional yet (§9.1: wait for one).
    Wanted,
    Sent,
}

#[derive(Debug)]
struct Branch {
    call: CallKey,
    sent: SentInvite,
    provisional: bool,
    cancel: Cancel,
    /// No longer part of the call: a 2xx is ACKed and BYEd.
    abandoned: bool,
    /// Its 2xx set up the call's leg b.
    won: bool,
    /// The body of the ACK sent for its 2xx, once sent: a retransmitted
    /// 2xx gets the same ACK again (§13.2.2.4).
    ack: Option<Option<String>>,
}

#[derive(Debug)]
enum ClientTx {
    Branch(Box<Branch>),
    /// BYE, CANCEL: the answer does not matter.
    Fire,
    /// A re-INVITE or UPDATE carrying an offer from `from`'s peer.
    Reoffer(Reoffer),
    /// A relayed request (INFO, UPDATE without SDP).
    Relay {
        call: CallKey,
        server: TransactionKey,
    },
}

/// A re-INVITE or UPDATE we relayed, and the request it answers.
#[derive(Debug, Clone)]
struct Reoffer {
    call: CallKey,
    from: LegId,
    server: TransactionKey,
    method: Method,
    /// A final response came; later 2xx are retransmissions to re-ACK.
    done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerTx {
    /// The caller's INVITE.
    Invite(CallKey),
    /// Any request inside a call.
    InDialog(CallKey),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Purpose {
    CallerOffer,
    EarlyAnswer {
        status: u16,
        reason: String,
    },
    FinalAnswer,
    LateOffer,
    LateAnswer,
    SelfAnswer,
    Play,
    Reoffer {
        from: LegId,
        server: TransactionKey,
        method: Method,
    },
    Reanswer {
        to: LegId,
        server: TransactionKey,
        method: Method,
    },
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between dialplan actions, or waiting for the manager.
    Working,
    Dialing,
    /// A callee answered; waiting for the manager before the caller's 2xx.
    Connecting,
    Playing,
    Bridged,
}

/// A target of a `dial` expanded into contacts, rung together.
#[derive(Debug, Clone)]
struct Contact {
    uri: String,
    to: String,
    destination: Destination,
}

#[derive(Debug)]
struct Dialing {
    targets: VecDeque<Target>,
    attempts: VecDeque<Vec<Contact>>,
    ring: Ring,
    timeout: Duration,
    deadline: Option<Instant>,
    best: Option<(u16, String)>,
}

/// The callee's 2xx not yet ACKed (end to end: on the caller's ACK).
#[derive(Debug, Clone)]
struct PendingAck {
    /// The branch whose 2xx it is.
    key: TransactionKey,
    sent: SentInvite,
    target: String,
    to: String,
}

#[derive(Debug)]
struct Call {
    media_id: MediaCallId,
    /// The caller's INVITE transaction until its final response.
    invite: Option<TransactionKey>,
    a: Dialog,
    b: Option<Dialog>,
    b_call_id: String,
    b_tag: Tag,
    b_cseq: u32,
    max_forwards: u32,
    /// The host of the caller's Request-URI: the domain of `user/…` targets
    /// when the registrar has no default domain.
    domain: String,
    caller_number: String,
    caller_name: Option<String>,
    phase: Phase,
    actions: VecDeque<Action>,
    dial: Option<Dialing>,
    branches: Vec<TransactionKey>,
    /// The manager's SDP for callee INVITEs; `None` for a late offer.
    b_offer: Option<String>,
    caller_sdp: Option<String>,
    /// The callee's early SDP and the manager's rewrite of it.
    early: Option<(String, String)>,
    answered: bool,
    pending_ack: Option<PendingAck>,
    /// Server transactions whose 2xx awaits an ACK, per leg.
    awaiting_ack: [Option<TransactionKey>; 2],
    sdp_sent: [Option<String>; 2],
    reoffer: bool,
    media_used: bool,
}

impl Call {
    fn dialog(&self, leg: LegId) -> Option<&Dialog> {
        match leg {
            LegId::A => Some(&self.a),
            LegId::B => self.b.as_ref(),
        }
    }
}

#[derive(Debug)]
struct Retransmit {
    call: CallKey,
    status: u16,
    sdp: Option<String>,
    tag: Tag,
    headers: Vec<(String, String)>,
    interval: Duration,
    next: Instant,
    give_up: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum TimerId {
    Dial(CallKey),
    Retransmit(TransactionKey),
}

/// The B2BUA. See the [module documentation](self).
pub struct B2bua {
    config: B2buaConfig,
    dialplan: Arc<Dialplan>,
    link: MediaLink,
    calls: HashMap<CallKey, Call>,
    servers: HashMap<TransactionKey, ServerTx>,
    clients: HashMap<TransactionKey, ClientTx>,
    dialogs: HashMap<(String, Tag), (CallKey, LegId)>,
    media_calls: HashMap<MediaCallId, CallKey>,
    media: HashMap<MediaRequestId, (CallKey, Purpose)>,
    retransmits: HashMap<TransactionKey, Retransmit>,
    timers: BTreeSet<(Instant, TimerId)>,
    counter: u64,
    branch_prefix: String,
}

impl std::fmt::Debug for B2bua {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("B2bua")
            .field("occupancy", &self.occupancy())
            .finish_non_exhaustive()
    }
}

impl B2bua {
    /// A B2BUA routing with `dialplan` and exchanging media work over `link`.
    pub fn new(config: B2buaConfig, dialplan: Arc<Dialplan>, link: MediaLink) -> B2bua {
        let branch_prefix = format!("z9hG4bKsb{:x}", config.seed & 0xffff_ffff);
        B2bua {
            config,
            dialplan,
            link,
            calls: HashMap::new(),
            servers: HashMap::new(),
            clients: HashMap::new(),
            dialogs: HashMap::new(),
            media_calls: HashMap::new(),
            media: HashMap::new(),
            retransmits: HashMap::new(),
            timers: BTreeSet::new(),
            counter: 0,
            branch_prefix,
        }
    }

    /// The sizes of the internal tables (for leak checks and metrics).
    pub fn occupancy(&self) -> Occupancy {
        Occupancy {
            calls: self.calls.len(),
            server_transactions: self.servers.len(),
            client_transactions: self.clients.len(),
            dialogs: self.dialogs.len(),
            media_requests: self.media.len(),
            retransmissions: self.retransmits.len(),
            timers: self.timers.len(),
        }
    }

    fn next(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// A value unique to this process and never reused: seed and counter,
    /// mixed so that ids do not reveal how many calls we handled.
    fn unique(&mut self) -> String {
        let n = self.next();
        let mut hash = self.config.seed ^ 0x9e37_79b9_7f4a_7c15;
        for byte in n.to_le_bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{hash:016x}{n:x}")
    }

    fn new_branch(&mut self) -> String {
        let unique = self.unique();
        format!("{}.{unique}", self.branch_prefix)
    }

    fn local_host(&self) -> &str {
        match self.config.local.rsplit_once(':') {
            Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
            _ => &self.config.local,
        }
    }

    fn media(&mut self, key: CallKey, purpose: Purpose, op: MediaOp) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.media_used = true;
        let id = MediaRequestId(self.counter + 1);
        self.counter += 1;
        tracing::debug!(call_id = %call.media_id, op = op.name(), id = id.0, "media request");
        if purpose != Purpose::Other {
            self.media.insert(id, (key, purpose));
        }
        self.link.push_request(MediaRequest {
            id,
            call: call.media_id.clone(),
            op,
        });
    }

    // ----- SIP events -------------------------------------------------

    fn request(
        &mut self,
        now: Now,
        key: TransactionKey,
        request: SipMessage,
        flow: crate::transport::Flow,
        cancels: Option<TransactionKey>,
        sip: &mut SipActions<'_>,
    ) {
        match request.method() {
            Method::Cancel => {
                if let Some(invite) = cancels {
                    self.cancel(now, &invite, sip);
                }
            }
            Method::Invite if request.to_tag().is_none() => {
                self.invite(now, key, request, flow, sip);
            }
            _ => self.in_dialog(now, key, request, sip),
        }
    }

    fn invite(
        &mut self,
        now: Now,
        key: TransactionKey,
        request: SipMessage,
        flow: crate::transport::Flow,
        sip: &mut SipActions<'_>,
    ) {
        if request.vias().iter().any(|via| {
            via.branch()
                .is_some_and(|b| b.as_str().starts_with(&self.branch_prefix))
        }) {
            tracing::info!(call_id = %request.call_id(), "loop detected: our own INVITE came back");
            respond(sip, &key, 482, "Loop Detected", None, &[], None);
            return;
        }
        let destination = request
            .request_uri()
            .and_then(Uri::user)
            .unwrap_or_default();
        let call_id = request.call_id().as_str().to_owned();
        let Some(route) = self.dialplan.route(&destination) else {
            tracing::info!(call_id, "no dialplan route");
            respond(sip, &key, 404, "Not Found", None, &[], None);
            return;
        };
        let caller_number = request.from().uri.user().unwrap_or_default();
        let caller_name = request.from().display_name.clone();
        let vars = CallVars {
            destination: &destination,
            caller_id: &caller_number,
            caller_name: caller_name.as_deref().unwrap_or(""),
            call_id: &call_id,
        };
        let actions: VecDeque<Action> = route.actions.iter().map(|a| a.with_vars(&vars)).collect();
        tracing::info!(call_id, route = %route.id, actions = actions.len(), "new call routed");

        let mut media_id = MediaCallId(call_id.clone());
        while self.media_calls.contains_key(&media_id) {
            media_id = MediaCallId(format!("{call_id}~{}", self.next()));
        }
        let call_key = CallKey(self.next());
        let local_tag = Tag::new(format!("sb{}", self.unique()));
        let b_tag = Tag::new(format!("sb{}", self.unique()));
        let b_call_id = format!("sb{}@{}", self.unique(), self.local_host());
        let mut local = request.to().clone();
        local.params.retain(|p| !p.name.eq_ignore_ascii_case("tag"));
        let mut remote = request.from().clone();
        remote
            .params
            .retain(|p| !p.name.eq_ignore_ascii_case("tag"));
        let a = Dialog {
            call_id: call_id.clone(),
            local,
            local_tag: local_tag.clone(),
            remote,
            remote_tag: request.from_tag(),
            target: contact_of(&request).unwrap_or_else(|| request.from().uri.to_string()),
            destination: flow.reply_destination(),
            local_cseq: 1,
        };
        let call = Call {
            media_id: media_id.clone(),
            invite: Some(key.clone()),
            a,
            b: None,
            b_call_id,
            b_tag: b_tag.clone(),
            b_cseq: 0,
            max_forwards: request.max_forwards().saturating_sub(1),
            domain: request
                .request_uri()
                .and_then(Uri::host)
                .map(ToString::to_string)
                .unwrap_or_default(),
            caller_number,
            caller_name,
            phase: Phase::Working,
            actions,
            dial: None,
            branches: Vec::new(),
            b_offer: None,
            caller_sdp: sdp_of(&request),
            early: None,
            answered: false,
            pending_ack: None,
            awaiting_ack: [None, None],
            sdp_sent: [None, None],
            reoffer: false,
            media_used: false,
        };
        self.dialogs
            .insert((call_id, local_tag), (call_key, LegId::A));
        self.dialogs
            .insert((call.b_call_id.clone(), b_tag), (call_key, LegId::B));
        self.media_calls.insert(media_id, call_key);
        self.servers.insert(key.clone(), ServerTx::Invite(call_key));
        self.calls.insert(call_key, call);
        self.next_action(now, call_key, sip);
        // The provisional the transaction would send after 200 ms, sent at
        // once when the call goes on (the manager is a round trip away).
        // Not when a final response is already queued: the core keeps only
        // the last response of a transaction until it flushes.
        if self
            .calls
            .get(&call_key)
            .is_some_and(|c| c.invite.is_some())
        {
            respond(sip, &key, 100, "Trying", None, &[], None);
        }
    }

    /// Runs the call's next dialplan action.
    fn next_action(&mut self, now: Now, key: CallKey, sip: &mut SipActions<'_>) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.phase = Phase::Working;
        let Some(action) = call.actions.pop_front() else {
            if !call.answered {
                self.end_call(
                    now,
                    key,
                    DeleteReason::Failed,
                    None,
                    (480, "Temporarily Unavailable"),
                    sip,
                );
            }
            return;
        };
        match action {
            Action::SetCallerId { number, name } => {
                if let Some(number) = number {
                    call.caller_number = number;
                }
                if name.is_some() {
                    call.caller_name = name;
                }
                self.next_action(now, key, sip);
            }
            Action::Answer if call.answered => self.next_action(now, key, sip),
            Action::Answer => match call.caller_sdp.clone() {
                Some(sdp) => self.media(
                    key,
                    Purpose::SelfAnswer,
                    MediaOp::Offer {
                        leg: LegId::A,
                        peer: None,
                        sdp,
                    },
                ),
                None => {
                    // The manager answers offers; it cannot make one.
                    self.end_call(
                        now,
                        key,
                        DeleteReason::Failed,
                        None,
                        (488, "Not Acceptable Here"),
                        sip,
                    );
                }
            },
            Action::PlayAudio { files } if !call.answered => {
                call.actions.push_front(Action::PlayAudio { files });
                call.actions.push_front(Action::Answer);
                self.next_action(now, key, sip);
            }
            Action::PlayAudio { files } => {
                call.phase = Phase::Playing;
                self.media(
                    key,
                    Purpose::Play,
                    MediaOp::Play {
                        leg: LegId::A,
                        files,
                    },
                );
            }
            Action::Hangup { code, reason } => {
                let status = if code >= 300 { code } else { 480 };
                let reason = if code >= 300 {
                    reason
                } else {
                    "Temporarily Unavailable".to_owned()
                };
                self.end_call(now, key, DeleteReason::Hangup, None, (status, &reason), sip);
            }
            Action::Dial { .. } if call.answered => {
                tracing::warn!(call_id = %call.media_id, "dial after answer is not supported; hanging up");
                self.end_call(now, key, DeleteReason::Hangup, None, (500, ""), sip);
            }
            Action::Dial {
                targets,
                timeout,
                ring,
            } => {
                call.dial = Some(Dialing {
                    targets: targets.into(),
                    attempts: VecDeque::new(),
                    ring,
                    timeout,
                    deadline: None,
                    best: None,
                });
                match call.caller_sdp.clone() {
                    Some(sdp) => self.media(
                        key,
                        Purpose::CallerOffer,
                        MediaOp::Offer {
                            leg: LegId::A,
                            peer: Some(LegId::B),
                            sdp,
                        },
                    ),
                    None => {
                        call.phase = Phase::Dialing;
                        self.next_attempt(now, key, sip);
                    }
                }
            }
        }
    }

    /// Rings the next contacts of the current `dial`, or gives up on it.
    fn next_attempt(&mut self, now: Now, key: CallKey, sip: &mut SipActions<'_>) {
        let local_host = self.local_host().to_owned();
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(dial) = call.dial.as_mut() else {
            return;
        };
        let contacts = loop {
            if let Some(contacts) = dial.attempts.pop_front() {
                break Some(contacts);
            }
            let Some(target) = dial.targets.pop_front() else {
                break None;
            };
            match expand(&target, &local_host, &call.domain, sip) {
                Ok(contacts) => match dial.ring {
                    Ring::Parallel => dial.attempts.push_back(contacts),
                    Ring::Sequential => dial.attempts.extend(contacts.into_iter().map(|c| vec![c])),
                },
                Err((status, reason)) => record_failure(dial, status, reason),
            }
        };
        let Some(contacts) = contacts else {
            let (status, reason) = dial
                .best
                .take()
                .unwrap_or((480, "Temporarily Unavailable".to_owned()));
            call.dial = None;
            tracing::info!(call_id = %call.media_id, status, "dial failed");
            if call.actions.is_empty() {
                self.end_call(now, key, DeleteReason::Failed, None, (status, &reason), sip);
            } else {
                self.next_action(now, key, sip);
            }
            return;
        };
        let deadline = now.instant + dial.timeout;
        dial.deadline = Some(deadline);
        self.timers.insert((deadline, TimerId::Dial(key)));
        call.b_cseq += 1;
        for contact in contacts {
            self.send_branch(key, contact, sip);
        }
    }

    fn send_branch(&mut self, key: CallKey, contact: Contact, sip: &mut SipActions<'_>) {
        let branch = self.new_branch();
        let local = self.config.local.clone();
        let host = self.local_host().to_owned();
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let from = NameAddr {
            display_name: call.caller_name.clone(),
            uri: Uri::parse(&format!("sip:{}@{host}", call.caller_number))
                .or_else(|_| Uri::parse(&format!("sip:anonymous@{host}")))
                .unwrap_or_else(|_| call.a.local.uri.clone()),
            params: Vec::new(),
        };
        let to = NameAddr::parse(&contact.to).unwrap_or_else(|_| call.a.local.clone());
        let sent = SentInvite {
            uri: contact.uri,
            branch,
            from,
            from_tag: call.b_tag.clone(),
            to,
            call_id: call.b_call_id.clone(),
            cseq: call.b_cseq,
            destination: contact.destination,
        };
        let extra = vec![(
            "Allow".to_owned(),
            "INVITE, ACK, BYE, CANCEL, UPDATE, INFO".to_owned(),
        )];
        let from_text = with_tag(&sent.from, Some(&sent.from_tag));
        let to_text = with_tag(&sent.to, None);
        let text = build::request(&Outgoing {
            method: &Method::Invite,
            uri: &sent.uri,
            local: &local,
            branch: &sent.branch,
            destination: sent.destination,
            from: &from_text,
            to: &to_text,
            call_id: &sent.call_id,
            cseq: sent.cseq,
            max_forwards: call.max_forwards,
            contact: true,
            extra: &extra,
            body: call.b_offer.as_deref().map(|s| (SDP, s.as_bytes())),
        });
        match send(sip, &text, sent.destination) {
            Some(client) => {
                tracing::debug!(call_id = %call.media_id, b_call_id = %sent.call_id, "callee INVITE sent");
                call.branches.push(client.clone());
                self.clients.insert(
                    client,
                    ClientTx::Branch(Box::new(Branch {
                        call: key,
                        sent,
                        provisional: false,
                        cancel: Cancel::No,
                        abandoned: false,
                        won: false,
                        ack: None,
                    })),
                );
            }
            None => {
                if let Some(dial) = call.dial.as_mut() {
                    record_failure(dial, 503, "Service Unavailable".to_owned());
                }
            }
        }
    }

    fn response(
        &mut self,
        now: Now,
        key: TransactionKey,
        response: SipMessage,
        sip: &mut SipActions<'_>,
    ) {
        let status = response.status().unwrap_or(500);
        let Some(client) = self.clients.get_mut(&key) else {
            return;
        };
        match client {
            ClientTx::Branch(branch) => {
                if (100..200).contains(&status) {
                    branch.provisional = true;
                    if branch.cancel == Cancel::Wanted {
                        branch.cancel = Cancel::Sent;
                        send_cancel(&self.config.local, &branch.sent, sip);
                    }
                }
                let call = branch.call;
                let success = (200..300).contains(&status);
                if success {
                    if let Some(body) = branch.ack.clone() {
                        // A retransmitted 2xx: our ACK was lost.
                        let sent = branch.sent.clone();
                        let target = contact_of(&response).unwrap_or_else(|| sent.uri.clone());
                        let to = response.header("To").unwrap_or_default().to_owned();
                        self.send_ack(&sent, &target, &to, body.as_deref(), sip);
                        return;
                    }
                }
                if branch.won {
                    // Retransmissions until the caller's ACK lets us ACK.
                    return;
                }
                let abandoned = branch.abandoned
                    || !self
                        .calls
                        .get(&call)
                        .is_some_and(|c| c.phase == Phase::Dialing && c.branches.contains(&key));
                if abandoned {
                    if success {
                        branch.ack = Some(None);
                        let sent = branch.sent.clone();
                        self.ack_and_bye(&sent, &response, sip);
                    }
                    return;
                }
                if success {
                    branch.won = true;
                }
                self.branch_response(now, call, key, status, response, sip);
            }
            ClientTx::Fire => {}
            ClientTx::Reoffer(_) | ClientTx::Relay { .. } if status < 200 => {}
            ClientTx::Reoffer(reoffer) => {
                let first = !reoffer.done;
                reoffer.done = true;
                let reoffer = reoffer.clone();
                self.reoffer_response(reoffer, first, response, sip);
            }
            ClientTx::Relay { server, .. } => {
                // In-dialog requests carry our To tag already: no tag to add.
                let server = server.clone();
                let body = response
                    .content_type()
                    .map(|t| (t.to_owned(), response.body().to_vec()));
                respond(
                    sip,
                    &server,
                    status,
                    response.reason().unwrap_or(""),
                    None,
                    &[],
                    body.as_ref().map(|(t, b)| (t.as_str(), b.as_slice())),
                );
            }
        }
    }

    fn branch_response(
        &mut self,
        now: Now,
        key: CallKey,
        client: TransactionKey,
        status: u16,
        response: SipMessage,
        sip: &mut SipActions<'_>,
    ) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let reason = response.reason().unwrap_or("").to_owned();
        match status {
            100 => {}
            101..=199 => {
                let Some(invite) = call.invite.clone() else {
                    return;
                };
                let sdp = sdp_of(&response).filter(|_| call.b_offer.is_some());
                match sdp {
                    Some(sdp) => {
                        if let Some((early, rewritten)) = &call.early {
                            if *early == sdp {
                                let headers = leg_headers(&self.config.local, call, LegId::A);
                                let rewritten = rewritten.clone();
                                respond(
                                    sip,
                                    &invite,
                                    status,
                                    &reason,
                                    Some(&call.a.local_tag),
                                    &headers,
                                    Some((SDP, rewritten.as_bytes())),
                                );
                                return;
                            }
                        }
                        call.early = Some((sdp.clone(), String::new()));
                        self.media(
                            key,
                            Purpose::EarlyAnswer { status, reason },
                            MediaOp::Answer {
                                leg: LegId::B,
                                peer: LegId::A,
                                sdp,
                            },
                        );
                    }
                    None => {
                        let headers = leg_headers(&self.config.local, call, LegId::A);
                        respond(
                            sip,
                            &invite,
                            status,
                            &reason,
                            Some(&call.a.local_tag),
                            &headers,
                            None,
                        );
                    }
                }
            }
            200..=299 => {
                let Some(ClientTx::Branch(branch)) = self.clients.get(&client) else {
                    return;
                };
                let sent = branch.sent.clone();
                let Some(to_tag) = response.to_tag() else {
                    tracing::info!(call_id = %call.media_id, "2xx without a To tag ignored");
                    return;
                };
                let target = contact_of(&response).unwrap_or_else(|| sent.uri.clone());
                call.b = Some(Dialog {
                    call_id: sent.call_id.clone(),
                    local: sent.from.clone(),
                    local_tag: sent.from_tag.clone(),
                    remote: sent.to.clone(),
                    remote_tag: Some(to_tag),
                    target: target.clone(),
                    destination: sent.destination,
                    local_cseq: sent.cseq,
                });
                call.pending_ack = Some(PendingAck {
                    key: client.clone(),
                    to: response.header("To").unwrap_or_default().to_owned(),
                    target,
                    sent: sent.clone(),
                });
                call.phase = Phase::Connecting;
                call.dial = None;
                let others: Vec<TransactionKey> =
                    call.branches.drain(..).filter(|k| *k != client).collect();
                let late = call.b_offer.is_none();
                let sdp = sdp_of(&response);
                tracing::info!(call_id = %call.media_id, status, "callee answered");
                self.abandon(&others, sip);
                match (late, sdp) {
                    (true, Some(sdp)) => self.media(
                        key,
                        Purpose::LateOffer,
                        MediaOp::Offer {
                            leg: LegId::B,
                            peer: Some(LegId::A),
                            sdp,
                        },
                    ),
                    (false, Some(sdp)) => {
                        self.media(
                            key,
                            Purpose::FinalAnswer,
                            MediaOp::Answer {
                                leg: LegId::B,
                                peer: LegId::A,
                                sdp,
                            },
                        );
                        self.media(key, Purpose::Other, MediaOp::Bridge);
                    }
                    (_, None) => {
                        tracing::info!(call_id = %call_id_of(&self.calls, key), "callee 2xx without SDP");
                        self.end_call(
                            now,
                            key,
                            DeleteReason::Failed,
                            None,
                            (502, "Bad Gateway"),
                            sip,
                        );
                    }
                }
            }
            _ => {
                call.branches.retain(|k| *k != client);
                let six = status >= 600;
                if let Some(dial) = call.dial.as_mut() {
                    let (status, reason) = if (300..400).contains(&status) {
                        (480, "Temporarily Unavailable".to_owned())
                    } else {
                        (status, reason)
                    };
                    record_failure(dial, status, reason);
                    if six {
                        // §16.7: a 6xx ends the search.
                        dial.targets.clear();
                        dial.attempts.clear();
                    }
                }
                if six {
                    let others = std::mem::take(&mut call.branches);
                    self.abandon(&others, sip);
                }
                let done = self.calls.get(&key).is_some_and(|c| c.branches.is_empty());
                if done {
                    self.next_attempt(now, key, sip);
                }
            }
        }
    }

    /// Cancels branches that are no longer wanted; their 2xx, if any, is
    /// ACKed and BYEd.
    fn abandon(&mut self, keys: &[TransactionKey], sip: &mut SipActions<'_>) {
        for key in keys {
            if let Some(ClientTx::Branch(branch)) = self.clients.get_mut(key) {
                branch.abandoned = true;
                if branch.cancel == Cancel::No {
                    if branch.provisional {
                        branch.cancel = Cancel::Sent;
                        send_cancel(&self.config.local, &branch.sent, sip);
                    } else {
                        branch.cancel = Cancel::Wanted;
                    }
                }
            }
        }
    }

    /// The 2xx of a branch nobody wants: ACK it (§13.2.2.4) and end its dialog.
    fn ack_and_bye(&mut self, sent: &SentInvite, response: &SipMessage, sip: &mut SipActions<'_>) {
        let target = contact_of(response).unwrap_or_else(|| sent.uri.clone());
        let to = response.header("To").unwrap_or_default().to_owned();
        self.send_ack(sent, &target, &to, None, sip);
        let mut dialog = Dialog {
            call_id: sent.call_id.clone(),
            local: sent.from.clone(),
            local_tag: sent.from_tag.clone(),
            remote: sent.to.clone(),
            remote_tag: response.to_tag(),
            target,
            destination: sent.destination,
            local_cseq: sent.cseq,
        };
        tracing::debug!(b_call_id = %sent.call_id, "unwanted 2xx: ACK and BYE");
        if let Some(key) = self.send_in_dialog(&mut dialog, &Method::Bye, &[], None, sip) {
            self.clients.insert(key, ClientTx::Fire);
        }
    }

    /// ACKs the callee's 2xx and remembers it for retransmissions.
    fn ack_callee(&mut self, pending: &PendingAck, sdp: Option<&str>, sip: &mut SipActions<'_>) {
        self.send_ack(&pending.sent, &pending.target, &pending.to, sdp, sip);
        if let Some(ClientTx::Branch(branch)) = self.clients.get_mut(&pending.key) {
            branch.ack = Some(sdp.map(str::to_owned));
        }
    }

    fn send_ack(
        &mut self,
        sent: &SentInvite,
        target: &str,
        to: &str,
        sdp: Option<&str>,
        sip: &mut SipActions<'_>,
    ) {
        let branch = self.new_branch();
        let from = with_tag(&sent.from, Some(&sent.from_tag));
        let text = build::request(&Outgoing {
            method: &Method::Ack,
            uri: target,
            local: &self.config.local,
            branch: &branch,
            destination: sent.destination,
            from: &from,
            to,
            call_id: &sent.call_id,
            cseq: sent.cseq,
            max_forwards: 70,
            contact: false,
            extra: &[],
            body: sdp.map(|s| (SDP, s.as_bytes())),
        });
        sip.send_stateless(sent.destination, text.into_bytes());
    }

    /// Sends a request inside `dialog`; `None` when it could not be sent.
    fn send_in_dialog(
        &mut self,
        dialog: &mut Dialog,
        method: &Method,
        extra: &[(String, String)],
        body: Option<(&str, &[u8])>,
        sip: &mut SipActions<'_>,
    ) -> Option<TransactionKey> {
        let branch = self.new_branch();
        dialog.local_cseq += 1;
        let from = with_tag(&dialog.local, Some(&dialog.local_tag));
        let to = with_tag(&dialog.remote, dialog.remote_tag.as_ref());
        let text = build::request(&Outgoing {
            method,
            uri: &dialog.target,
            local: &self.config.local,
            branch: &branch,
            destination: dialog.destination,
            from: &from,
            to: &to,
            call_id: &dialog.call_id,
            cseq: dialog.local_cseq,
            max_forwards: 70,
            contact: matches!(method, Method::Invite | Method::Update),
            extra,
            body,
        });
        send(sip, &text, dialog.destination)
    }

    /// Sends a request on `leg` of a live call.
    fn send_on_leg(
        &mut self,
        key: CallKey,
        leg: LegId,
        method: &Method,
        extra: &[(String, String)],
        body: Option<(&str, &[u8])>,
        sip: &mut SipActions<'_>,
    ) -> Option<TransactionKey> {
        let call = self.calls.get_mut(&key)?;
        let mut dialog = match leg {
            LegId::A => call.a.clone(),
            LegId::B => call.b.clone()?,
        };
        let sent = self.send_in_dialog(&mut dialog, method, extra, body, sip);
        if let Some(call) = self.calls.get_mut(&key) {
            match leg {
                LegId::A => call.a.local_cseq = dialog.local_cseq,
                LegId::B => call.b = Some(dialog),
            }
        }
        sent
    }

    fn cancel(&mut self, now: Now, invite: &TransactionKey, sip: &mut SipActions<'_>) {
        let Some(ServerTx::Invite(key)) = self.servers.get(invite).copied() else {
            return;
        };
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        if call.answered || call.invite.is_none() {
            // The 2xx crossed the CANCEL: the call goes on (§9.2).
            return;
        }
        tracing::info!(call_id = %call.media_id, "caller cancelled");
        self.end_call(
            now,
            key,
            DeleteReason::Cancelled,
            None,
            (487, "Request Terminated"),
            sip,
        );
    }

    fn ack(&mut self, request: SipMessage, sip: &mut SipActions<'_>) {
        let Some(tag) = request.to_tag() else {
            return;
        };
        let Some((key, leg)) = self
            .dialogs
            .get(&(request.call_id().as_str().to_owned(), tag))
            .copied()
        else {
            return;
        };
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let index = leg_index(leg);
        if let Some(server) = call.awaiting_ack[index].take() {
            self.retransmits.remove(&server);
        }
        if leg != LegId::A {
            return;
        }
        let Some(pending) = call.pending_ack.take() else {
            return;
        };
        if call.b_offer.is_none() {
            // Late offer: the caller's ACK carries the answer for the callee.
            match sdp_of(&request) {
                Some(sdp) => {
                    call.pending_ack = Some(pending);
                    self.media(
                        key,
                        Purpose::LateAnswer,
                        MediaOp::Answer {
                            leg: LegId::A,
                            peer: LegId::B,
                            sdp,
                        },
                    );
                }
                None => {
                    self.ack_callee(&pending, None, sip);
                    self.end_call(
                        sip.now(),
                        key,
                        DeleteReason::Failed,
                        None,
                        (488, "Not Acceptable Here"),
                        sip,
                    );
                }
            }
            return;
        }
        self.ack_callee(&pending, None, sip);
    }

    fn in_dialog(
        &mut self,
        now: Now,
        server: TransactionKey,
        request: SipMessage,
        sip: &mut SipActions<'_>,
    ) {
        let method = request.method().clone();
        let found = request.to_tag().and_then(|tag| {
            self.dialogs
                .get(&(request.call_id().as_str().to_owned(), tag))
                .copied()
        });
        let Some((key, leg)) = found.filter(|(k, leg)| {
            self.calls
                .get(k)
                .is_some_and(|c| c.dialog(*leg).is_some() && (*leg == LegId::B || c.answered))
        }) else {
            respond(
                sip,
                &server,
                481,
                "Call/Transaction Does Not Exist",
                None,
                &[],
                None,
            );
            return;
        };
        self.servers.insert(server.clone(), ServerTx::InDialog(key));
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let tag = call.dialog(leg).map(|d| d.local_tag.clone());
        if let Some(target) = contact_of(&request) {
            if matches!(method, Method::Invite | Method::Update) {
                match leg {
                    LegId::A => call.a.target = target,
                    LegId::B => {
                        if let Some(b) = call.b.as_mut() {
                            b.target = target;
                        }
                    }
                }
            }
        }
        match method {
            Method::Bye => {
                respond(sip, &server, 200, "OK", tag.as_ref(), &[], None);
                tracing::info!(call_id = %call.media_id, %leg, "BYE");
                self.end_call(now, key, DeleteReason::Hangup, Some(leg), (480, ""), sip);
            }
            Method::Invite | Method::Update => {
                let headers = leg_headers(&self.config.local, call, leg);
                if call.reoffer || call.phase != Phase::Bridged && call.phase != Phase::Playing {
                    respond(
                        sip,
                        &server,
                        491,
                        "Request Pending",
                        tag.as_ref(),
                        &[],
                        None,
                    );
                    return;
                }
                match sdp_of(&request) {
                    Some(sdp) if call.phase == Phase::Bridged => {
                        call.reoffer = true;
                        self.media(
                            key,
                            Purpose::Reoffer {
                                from: leg,
                                server,
                                method,
                            },
                            MediaOp::Offer {
                                leg,
                                peer: Some(leg.other()),
                                sdp,
                            },
                        );
                    }
                    Some(_) => {
                        respond(
                            sip,
                            &server,
                            488,
                            "Not Acceptable Here",
                            tag.as_ref(),
                            &[],
                            None,
                        );
                    }
                    None => {
                        // A refresh: nothing changes, the last SDP stands.
                        let last = call.sdp_sent[leg_index(leg)].clone();
                        let body = if method == Method::Invite { last } else { None };
                        if method == Method::Invite {
                            if let Some(tag) = tag.clone() {
                                self.answer_2xx(now, key, leg, &server, tag, headers, body, sip);
                            }
                        } else {
                            respond(sip, &server, 200, "OK", tag.as_ref(), &headers, None);
                        }
                    }
                }
            }
            Method::Info if call.dialog(leg.other()).is_some() => {
                let extra: Vec<(String, String)> = Vec::new();
                let body = request
                    .content_type()
                    .map(|t| (t.to_owned(), request.body().to_vec()));
                let sent = self.send_on_leg(
                    key,
                    leg.other(),
                    &Method::Info,
                    &extra,
                    body.as_ref().map(|(t, b)| (t.as_str(), b.as_slice())),
                    sip,
                );
                match sent {
                    Some(client) => {
                        self.clients
                            .insert(client, ClientTx::Relay { call: key, server });
                    }
                    None => respond(
                        sip,
                        &server,
                        500,
                        "Server Internal Error",
                        tag.as_ref(),
                        &[],
                        None,
                    ),
                }
            }
            Method::Info => respond(sip, &server, 200, "OK", tag.as_ref(), &[], None),
            _ => respond(
                sip,
                &server,
                481,
                "Call/Transaction Does Not Exist",
                tag.as_ref(),
                &[],
                None,
            ),
        }
    }

    /// A final response to a relayed re-INVITE/UPDATE; `first` is false
    /// for retransmitted 2xx, which are only ACKed again.
    fn reoffer_response(
        &mut self,
        reoffer: Reoffer,
        first: bool,
        response: SipMessage,
        sip: &mut SipActions<'_>,
    ) {
        let Reoffer {
            call: key,
            from,
            server,
            method,
            ..
        } = reoffer;
        let status = response.status().unwrap_or(500);
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let to = from.other();
        if method == Method::Invite && (200..300).contains(&status) {
            // The in-dialog ACK for the other side's 2xx: hop by hop here.
            if let Some(dialog) = call.dialog(to).cloned() {
                let target = contact_of(&response).unwrap_or_else(|| dialog.target.clone());
                let sent = SentInvite {
                    uri: dialog.target.clone(),
                    branch: String::new(),
                    from: dialog.local.clone(),
                    from_tag: dialog.local_tag.clone(),
                    to: dialog.remote.clone(),
                    call_id: dialog.call_id.clone(),
                    cseq: response.cseq().seq,
                    destination: dialog.destination,
                };
                let to_header = response.header("To").unwrap_or_default().to_owned();
                self.send_ack(&sent, &target, &to_header, None, sip);
            }
        }
        if !first {
            return;
        }
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let tag = call.dialog(from).map(|d| d.local_tag.clone());
        match (status, sdp_of(&response)) {
            (200..=299, Some(sdp)) => self.media(
                key,
                Purpose::Reanswer {
                    to: from,
                    server,
                    method,
                },
                MediaOp::Answer {
                    leg: to,
                    peer: from,
                    sdp,
                },
            ),
            (200..=299, None) => {
                call.reoffer = false;
                respond(
                    sip,
                    &server,
                    488,
                    "Not Acceptable Here",
                    tag.as_ref(),
                    &[],
                    None,
                );
            }
            _ => {
                call.reoffer = false;
                respond(
                    sip,
                    &server,
                    status,
                    response.reason().unwrap_or(""),
                    tag.as_ref(),
                    &[],
                    None,
                );
            }
        }
    }

    /// Sends a 2xx to an INVITE (or UPDATE) on `leg` and, for an INVITE,
    /// retransmits it until the ACK.
    #[allow(clippy::too_many_arguments)]
    fn answer_2xx(
        &mut self,
        now: Now,
        key: CallKey,
        leg: LegId,
        server: &TransactionKey,
        tag: Tag,
        headers: Vec<(String, String)>,
        sdp: Option<String>,
        sip: &mut SipActions<'_>,
    ) {
        respond(
            sip,
            server,
            200,
            "OK",
            Some(&tag),
            &headers,
            sdp.as_deref().map(|s| (SDP, s.as_bytes())),
        );
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if sdp.is_some() {
            call.sdp_sent[leg_index(leg)] = sdp.clone();
        }
        if server.method() != "INVITE" {
            return;
        }
        if let Some(old) = call.awaiting_ack[leg_index(leg)].replace(server.clone()) {
            self.retransmits.remove(&old);
        }
        let t1 = self.config.timers.t1;
        let next = now.instant + t1;
        self.retransmits.insert(
            server.clone(),
            Retransmit {
                call: key,
                status: 200,
                sdp,
                tag,
                headers,
                interval: t1,
                next,
                give_up: now.instant + self.config.timers.t1x64(),
            },
        );
        self.timers
            .insert((next, TimerId::Retransmit(server.clone())));
    }

    /// Ends a call: a final response to an unanswered caller, BYE to every
    /// confirmed leg but `from`, CANCEL to pending branches, media deleted.
    fn end_call(
        &mut self,
        _now: Now,
        key: CallKey,
        reason: DeleteReason,
        from: Option<LegId>,
        status: (u16, &str),
        sip: &mut SipActions<'_>,
    ) {
        let Some(mut call) = self.calls.remove(&key) else {
            return;
        };
        tracing::info!(call_id = %call.media_id, ?reason, "call ended");
        self.dialogs
            .remove(&(call.a.call_id.clone(), call.a.local_tag.clone()));
        self.dialogs
            .remove(&(call.b_call_id.clone(), call.b_tag.clone()));
        self.media_calls.remove(&call.media_id);
        for server in call.awaiting_ack.iter().flatten() {
            self.retransmits.remove(server);
        }
        let branches = std::mem::take(&mut call.branches);
        self.abandon(&branches, sip);
        if let Some(invite) = call.invite.take() {
            if !call.answered {
                let (code, text) = status;
                let text = if text.is_empty() {
                    default_reason(code)
                } else {
                    text
                };
                respond(sip, &invite, code, text, Some(&call.a.local_tag), &[], None);
            }
        }
        if let Some(pending) = call.pending_ack.take() {
            self.ack_callee(&pending, None, sip);
        }
        if call.answered && from != Some(LegId::A) {
            let mut a = call.a.clone();
            if let Some(bye) = self.send_in_dialog(&mut a, &Method::Bye, &[], None, sip) {
                self.clients.insert(bye, ClientTx::Fire);
            }
        }
        if from != Some(LegId::B) {
            if let Some(mut b) = call.b.clone() {
                if let Some(bye) = self.send_in_dialog(&mut b, &Method::Bye, &[], None, sip) {
                    self.clients.insert(bye, ClientTx::Fire);
                }
            }
        }
        if call.media_used {
            let detail = match from {
                Some(leg) => format!("BYE from leg {leg}"),
                None if call.answered => format!("hangup: {}", status.1),
                None => format!("{} {}", status.0, status.1),
            };
            let media_id = call.media_id.clone();
            let id = MediaRequestId(self.next());
            self.link.push_request(MediaRequest {
                id,
                call: media_id,
                op: MediaOp::Delete { reason, detail },
            });
        }
    }

    // ----- media results ---------------------------------------------

    fn media_result(
        &mut self,
        now: Now,
        id: MediaRequestId,
        result: MediaResult,
        sip: &mut SipActions<'_>,
    ) {
        let Some((key, purpose)) = self.media.remove(&id) else {
            return;
        };
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let sdp = match result {
            MediaResult::Sdp(sdp) => sdp,
            MediaResult::Done => return,
            MediaResult::PlayEnded { completed } => {
                tracing::debug!(call_id = %call.media_id, completed, "playback ended");
                if purpose == Purpose::Play && call.phase == Phase::Playing {
                    self.next_action(now, key, sip);
                }
                return;
            }
            MediaResult::Failed { failure, message } => {
                tracing::warn!(call_id = %call.media_id, ?failure, %message, ?purpose, "media request failed");
                self.media_failed(now, key, purpose, failure, sip);
                return;
            }
        };
        match purpose {
            Purpose::CallerOffer => {
                call.b_offer = Some(sdp);
                call.phase = Phase::Dialing;
                self.next_attempt(now, key, sip);
            }
            Purpose::EarlyAnswer { status, reason } => {
                if let Some((_, rewritten)) = call.early.as_mut() {
                    rewritten.clone_from(&sdp);
                }
                if let (Some(invite), Phase::Dialing) = (call.invite.clone(), call.phase) {
                    let headers = leg_headers(&self.config.local, call, LegId::A);
                    respond(
                        sip,
                        &invite,
                        status,
                        &reason,
                        Some(&call.a.local_tag),
                        &headers,
                        Some((SDP, sdp.as_bytes())),
                    );
                }
            }
            Purpose::FinalAnswer | Purpose::LateOffer | Purpose::SelfAnswer => {
                let Some(invite) = call.invite.take() else {
                    return;
                };
                call.answered = true;
                call.phase = if purpose == Purpose::SelfAnswer {
                    Phase::Working
                } else {
                    Phase::Bridged
                };
                let headers = leg_headers(&self.config.local, call, LegId::A);
                let tag = call.a.local_tag.clone();
                tracing::info!(call_id = %call.media_id, "caller answered");
                self.answer_2xx(now, key, LegId::A, &invite, tag, headers, Some(sdp), sip);
                if purpose == Purpose::SelfAnswer {
                    self.next_action(now, key, sip);
                }
            }
            Purpose::LateAnswer => {
                if let Some(pending) = call.pending_ack.take() {
                    call.sdp_sent[leg_index(LegId::B)] = Some(sdp.clone());
                    self.ack_callee(&pending, Some(&sdp), sip);
                    self.media(key, Purpose::Other, MediaOp::Bridge);
                }
            }
            Purpose::Reoffer {
                from,
                server,
                method,
            } => {
                let to = from.other();
                let sent =
                    self.send_on_leg(key, to, &method, &[], Some((SDP, sdp.as_bytes())), sip);
                let Some(call) = self.calls.get_mut(&key) else {
                    return;
                };
                call.sdp_sent[leg_index(to)] = Some(sdp);
                match sent {
                    Some(client) => {
                        self.clients.insert(
                            client,
                            ClientTx::Reoffer(Reoffer {
                                call: key,
                                from,
                                server,
                                method,
                                done: false,
                            }),
                        );
                    }
                    None => {
                        call.reoffer = false;
                        let tag = call.dialog(from).map(|d| d.local_tag.clone());
                        respond(
                            sip,
                            &server,
                            500,
                            "Server Internal Error",
                            tag.as_ref(),
                            &[],
                            None,
                        );
                    }
                }
            }
            Purpose::Reanswer { to, server, method } => {
                call.reoffer = false;
                let headers = leg_headers(&self.config.local, call, to);
                let Some(tag) = call.dialog(to).map(|d| d.local_tag.clone()) else {
                    return;
                };
                if method == Method::Invite {
                    self.answer_2xx(now, key, to, &server, tag, headers, Some(sdp), sip);
                } else {
                    call.sdp_sent[leg_index(to)] = Some(sdp.clone());
                    respond(
                        sip,
                        &server,
                        200,
                        "OK",
                        Some(&tag),
                        &headers,
                        Some((SDP, sdp.as_bytes())),
                    );
                }
            }
            Purpose::Play | Purpose::Other => {}
        }
    }

    fn media_failed(
        &mut self,
        now: Now,
        key: CallKey,
        purpose: Purpose,
        failure: MediaFailure,
        sip: &mut SipActions<'_>,
    ) {
        let status = match failure {
            MediaFailure::Unacceptable => (488, "Not Acceptable Here"),
            MediaFailure::Unavailable => (503, "Service Unavailable"),
            MediaFailure::Internal => (500, "Server Internal Error"),
        };
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        match purpose {
            Purpose::EarlyAnswer { .. } | Purpose::Other => {}
            Purpose::Play => {
                if call.phase == Phase::Playing {
                    self.next_action(now, key, sip);
                }
            }
            Purpose::Reoffer { from, server, .. }
            | Purpose::Reanswer {
                to: from, server, ..
            } => {
                call.reoffer = false;
                let tag = call.dialog(from).map(|d| d.local_tag.clone());
                respond(sip, &server, status.0, status.1, tag.as_ref(), &[], None);
            }
            Purpose::CallerOffer
            | Purpose::FinalAnswer
            | Purpose::LateOffer
            | Purpose::LateAnswer
            | Purpose::SelfAnswer => {
                self.end_call(now, key, DeleteReason::Failed, None, status, sip);
            }
        }
    }

    fn media_event(&mut self, now: Now, event: MediaEvent, sip: &mut SipActions<'_>) {
        match event {
            MediaEvent::Timeout {
                call,
                leg,
                idle_secs,
            } => {
                let Some(key) = self.media_calls.get(&call).copied() else {
                    return;
                };
                tracing::info!(call_id = %call, leg, idle_secs, "media timeout: hanging up");
                self.end_call(
                    now,
                    key,
                    DeleteReason::MediaTimeout,
                    None,
                    (408, "Request Timeout"),
                    sip,
                );
            }
            MediaEvent::Dtmf { call, leg, digit } => {
                tracing::debug!(call_id = %call, leg, digit, "DTMF received");
            }
        }
    }

    // ----- timers ----------------------------------------------------

    fn fire(&mut self, now: Now, timer: TimerId, sip: &mut SipActions<'_>) {
        match timer {
            TimerId::Dial(key) => {
                let Some(call) = self.calls.get_mut(&key) else {
                    return;
                };
                let Some(dial) = call.dial.as_mut() else {
                    return;
                };
                if dial.deadline.is_none_or(|d| d > now.instant) {
                    return;
                }
                dial.deadline = None;
                tracing::info!(call_id = %call.media_id, "no answer before the dial timeout");
                record_failure(dial, 480, "Temporarily Unavailable".to_owned());
                let branches = std::mem::take(&mut call.branches);
                self.abandon(&branches, sip);
                self.next_attempt(now, key, sip);
            }
            TimerId::Retransmit(server) => {
                let Some(entry) = self.retransmits.get_mut(&server) else {
                    return;
                };
                if entry.next > now.instant {
                    return;
                }
                // The transaction ends with timer L (64·T1) too: either way
                // no ACK came (§13.3.1.4).
                let sent = (now.instant < entry.give_up)
                    .then(|| {
                        sip.respond(
                            &server,
                            entry.status,
                            "OK",
                            Some(&entry.tag),
                            &entry.headers,
                            entry.sdp.as_deref().map(|s| (SDP, s.as_bytes())),
                        )
                    })
                    .is_some_and(|r| r.is_ok());
                if !sent {
                    let call = entry.call;
                    self.retransmits.remove(&server);
                    tracing::info!("no ACK for a 2xx: ending the call");
                    self.end_call(now, call, DeleteReason::Failed, None, (408, ""), sip);
                    return;
                }
                entry.interval = (entry.interval * 2).min(self.config.timers.t2);
                entry.next = now.instant + entry.interval;
                self.timers
                    .insert((entry.next, TimerId::Retransmit(server)));
            }
        }
    }

    /// Handles one input from the link: one at a time, so that two
    /// responses on one transaction (a 183 then the 200) are flushed by the
    /// core in between; the next input stays due for the next call.
    fn drain_link(&mut self, now: Now, sip: &mut SipActions<'_>) {
        if let Some(input) = self.link.pop_input(now.instant) {
            match input {
                LinkInput::Result { id, result } => self.media_result(now, id, result, sip),
                LinkInput::Event(event) => self.media_event(now, event, sip),
                LinkInput::Dialplan(plan) => {
                    tracing::info!(routes = plan.routes().len(), "dialplan replaced");
                    self.dialplan = plan;
                }
            }
        }
    }
}

impl CallHandler for B2bua {
    fn handle_event(&mut self, now: Now, event: CallEvent, sip: &mut SipActions<'_>) {
        match event {
            CallEvent::Request {
                key,
                request,
                flow,
                cancels,
                ..
            } => self.request(now, key, request, flow, cancels, sip),
            CallEvent::Ack { request, .. } => self.ack(request, sip),
            CallEvent::Response { key, response } => self.response(now, key, response, sip),
            CallEvent::Timeout { key, .. } => {
                // Timer B or F: the peer is gone; treat as 408 from it.
                if let Some(ClientTx::Branch(branch)) = self.clients.get(&key) {
                    let call = branch.call;
                    let live = !branch.abandoned;
                    if live {
                        if let Some(c) = self.calls.get_mut(&call) {
                            c.branches.retain(|k| *k != key);
                            let empty = c.branches.is_empty() && c.phase == Phase::Dialing;
                            if let Some(dial) = c.dial.as_mut() {
                                record_failure(dial, 408, "Request Timeout".to_owned());
                            }
                            if empty {
                                self.next_attempt(now, call, sip);
                            }
                        }
                    }
                } else if let Some(
                    ClientTx::Reoffer(Reoffer { call, server, .. })
                    | ClientTx::Relay { call, server },
                ) = self.clients.get(&key)
                {
                    let (call, server) = (*call, server.clone());
                    if let Some(c) = self.calls.get_mut(&call) {
                        c.reoffer = false;
                    }
                    respond(sip, &server, 408, "Request Timeout", None, &[], None);
                }
            }
            CallEvent::Terminated { key } => {
                self.servers.remove(&key);
                if let Some(ClientTx::Branch(branch)) = self.clients.remove(&key) {
                    if let Some(call) = self.calls.get_mut(&branch.call) {
                        call.branches.retain(|k| *k != key);
                    }
                }
            }
        }
        self.link.publish(self.occupancy());
    }

    fn handle_timeout(&mut self, now: Now, sip: &mut SipActions<'_>) {
        while let Some((at, timer)) = self.timers.first().cloned() {
            if at > now.instant {
                break;
            }
            self.timers.remove(&(at, timer.clone()));
            self.fire(now, timer, sip);
        }
        self.drain_link(now, sip);
        self.link.publish(self.occupancy());
    }

    fn poll_timeout(&self) -> Option<Instant> {
        [
            self.timers.first().map(|(at, _)| *at),
            self.link.next_input_at(),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

// ----- helpers -------------------------------------------------------

fn leg_index(leg: LegId) -> usize {
    match leg {
        LegId::A => 0,
        LegId::B => 1,
    }
}

fn call_id_of(calls: &HashMap<CallKey, Call>, key: CallKey) -> String {
    calls
        .get(&key)
        .map(|c| c.media_id.0.clone())
        .unwrap_or_default()
}

/// Contact and Allow for our 18x/2xx on `leg`.
fn leg_headers(local: &str, call: &Call, leg: LegId) -> Vec<(String, String)> {
    let destination = call
        .dialog(leg)
        .map_or(call.a.destination, |d| d.destination);
    vec![
        (
            "Contact".to_owned(),
            format!("<{}>", contact_uri(local, &destination)),
        ),
        (
            "Allow".to_owned(),
            "INVITE, ACK, BYE, CANCEL, UPDATE, INFO".to_owned(),
        ),
    ]
}

fn default_reason(code: u16) -> &'static str {
    match code {
        404 => "Not Found",
        408 => "Request Timeout",
        480 => "Temporarily Unavailable",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        500 => "Server Internal Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        603 => "Decline",
        _ => "Call Failed",
    }
}

/// Keeps the most telling final response of a dial: 6xx, then 4xx (but 408
/// and 480 only when nothing better came), then 5xx.
fn record_failure(dial: &mut Dialing, status: u16, reason: String) {
    let rank = |s: u16| match s {
        600..=699 => 0,
        408 | 480 => 2,
        400..=499 => 1,
        _ => 3,
    };
    let better = dial
        .best
        .as_ref()
        .is_none_or(|(best, _)| rank(status) < rank(*best));
    if better {
        dial.best = Some((status, reason));
    }
}

/// The contacts a dial target reaches now.
fn expand(
    target: &Target,
    local_host: &str,
    domain: &str,
    sip: &SipActions<'_>,
) -> Result<Vec<Contact>, (u16, String)> {
    match target {
        Target::User(user) => {
            let mut bindings = sip.lookup(user);
            if bindings.is_empty() && !user.contains('@') && !domain.is_empty() {
                bindings = sip.lookup(&format!("{user}@{domain}"));
            }
            if bindings.is_empty() {
                return Err((480, "Temporarily Unavailable".to_owned()));
            }
            Ok(bindings
                .into_iter()
                .map(|b| Contact {
                    uri: b.contact.clone(),
                    to: format!("<sip:{user}@{local_host}>"),
                    destination: match b.source.transport {
                        crate::registrar::Transport::Udp => Destination::Udp(b.source.addr),
                        _ => Destination::Tcp {
                            remote: b.source.addr,
                            connection: None,
                        },
                    },
                })
                .collect())
        }
        Target::Uri(text) => {
            let uri = Uri::parse(text).map_err(|_| (404, "Not Found".to_owned()))?;
            let ip = uri
                .host()
                .and_then(|h| h.ip())
                .ok_or((503, "Service Unavailable".to_owned()))?;
            let remote = SocketAddr::new(ip, uri.port().unwrap_or(5060));
            let tcp = uri
                .param("transport")
                .flatten()
                .is_some_and(|t| t.eq_ignore_ascii_case("tcp"));
            Ok(vec![Contact {
                uri: uri.to_string(),
                to: format!("<{uri}>"),
                destination: if tcp {
                    Destination::Tcp {
                        remote,
                        connection: None,
                    }
                } else {
                    Destination::Udp(remote)
                },
            }])
        }
    }
}

fn respond(
    sip: &mut SipActions<'_>,
    key: &TransactionKey,
    status: u16,
    reason: &str,
    tag: Option<&Tag>,
    headers: &[(String, String)],
    body: Option<(&str, &[u8])>,
) {
    if let Err(error) = sip.respond(key, status, reason, tag, headers, body) {
        tracing::debug!(%error, status, "response not sent");
    }
}

fn send(sip: &mut SipActions<'_>, text: &str, destination: Destination) -> Option<TransactionKey> {
    let request = match rsip::Request::try_from(text) {
        Ok(request) => request,
        Err(error) => {
            tracing::warn!(%error, "built request does not parse");
            return None;
        }
    };
    match sip.send_request(request, destination) {
        Ok(key) => Some(key),
        Err(error) => {
            tracing::warn!(%error, "request not sent");
            None
        }
    }
}

fn send_cancel(local: &str, sent: &SentInvite, sip: &mut SipActions<'_>) {
    let from = with_tag(&sent.from, Some(&sent.from_tag));
    let to = with_tag(&sent.to, None);
    let text = build::request(&Outgoing {
        method: &Method::Cancel,
        uri: &sent.uri,
        local,
        branch: &sent.branch,
        destination: sent.destination,
        from: &from,
        to: &to,
        call_id: &sent.call_id,
        cseq: sent.cseq,
        max_forwards: 70,
        contact: false,
        extra: &[],
        body: None,
    });
    send(sip, &text, sent.destination);
}
