//! The B2BUA: pairs a caller's dialog (leg a) with a callee's (leg b),
//! runs the dialplan and keeps media on an RTP manager.
//!
//! [`B2bua`] is a [`CallHandler`]: sans-IO, fed by the request-handling core
//! with `now` and one kind of input per `handle_*`: SIP events
//! (`handle_event`, messages as [`SipMessage`] values with their octets),
//! its timers (`handle_timeout`) and everything else (`handle_media`: a
//! [`LinkInput`], i.e. a media result, a manager event, a dialplan, a
//! shutdown step, a placement, a REST query or a move order). It answers
//! through [`SipActions`] (SIP messages it builds as values, whose octets
//! the transaction layer keeps and the transport writes) and queues
//! [`MediaRequest`]s for `poll_media_request`. Media operations are
//! asynchronous gRPC calls, so the core never makes them; the driver
//! carries both directions over a [`MediaLink`], a thread-safe mailbox the
//! core itself never reads.
//!
//! # Driving it
//!
//! 1. Install it with `Uas::set_call_handler` and give its link to the
//!    core's driver (`CoreQueue::set_media_link`). The driver, after each
//!    input, applies every `Uas::poll_output` in one `match`:
//!    `Output::Transmit` to a transport, `Output::Media` onto the link
//!    (`link.push_request`), which wakes the executor.
//! 2. The executor runs every request from `link.poll_request()` (in order
//!    per call, on the manager chosen for that call) and pushes each result
//!    with `link.push_input(now, LinkInput::Result { .. })`, then wakes the
//!    core; Watch events, new dialplans, shutdown steps and move orders are
//!    pushed the same way. When it places a call on a manager it pushes
//!    [`LinkInput::Placed`] first, so the core knows the call's manager.
//! 3. The driver hands one due link input per turn to `Uas::handle_media`
//!    (which calls [`CallHandler::handle_media`] and flushes what it sent),
//!    waking at `link.next_input_at()` as well as at `Uas::poll_timeout`.
//!    The REST API's questions ([`LinkInput::Query`], see [`CallsHandle`])
//!    travel the same way and are answered through their oneshot replies.
//! 4. Optionally hand it an [`EventBus`] ([`B2bua::set_events`]) for call
//!    events and a [`CdrSink`] ([`B2bua::set_cdrs`]) for one record per
//!    ended call (written once the media delete returns the manager's
//!    final figures; see view.rs).
//! 5. To stop, push [`LinkInput::Shutdown`]: [`Shutdown::Drain`] (optional)
//!    refuses new calls, [`Shutdown::HangUp`] ends the rest; keep the core
//!    and the executor running until `link.occupancy()` shows no call and
//!    nothing [`ending`](Occupancy::ending), or a deadline passes.
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
//! Migration (migrate.rs): a [`MoveOrder`] moves answered calls off a
//! manager: new legs on another one, a re-INVITE of each side with its
//! SDP, bridge, then the old legs deleted; `rtpmanager_moves.rs` runs the
//! orders a batch at a time (drain `mode=migrate`, a lost manager).
//!
//! Session timers (RFC 4028) run per leg (session_timer.rs): each leg
//! negotiates its interval and refresher; we refresh or expire per leg.
//!
//! Route sets: the caller's Record-Route routes our requests on leg a, the
//! callee's (reversed) those on leg b, and a binding's Path routes the
//! INVITE and CANCEL to it; loose routing only.
//!
//! Redirects: a 3xx to an INVITE (RFC 3261 §8.1.3.4) puts its Contacts,
//! in q order and at most [`MAX_REDIRECT_CONTACTS`], before the dial's
//! next target, each rung on its own (same Call-ID, From and To; the
//! Request-URI is the Contact), up to the dial's `max_redirects`; a
//! Contact already rung in this dial is refused (a loop). A 3xx not
//! followed counts as a 480.
//!
//! Targets named by host name: resolved through a [`Resolve`] capability
//! (RFC 3263, resolve.rs); the answer comes back as
//! [`LinkInput::Resolved`], the destinations are tried one per attempt,
//! the next after a 503 or [`FAILOVER_AFTER`] of silence.
//!
//! Reliable provisionals (RFC 3262) towards a caller that requires them:
//! reliable.rs. The callee leg stays plain (we do not offer 100rel), so
//! PRACK is never relayed; a PRACK that names no outstanding reliable
//! provisional is 481.
//!
//! Blind transfer: REFER from either party of an answered call
//! (transfer.rs): the target, routed through the dialplan, takes the
//! transferor's place on the same media leg.
//!
//! Not implemented: strict routing, attended transfer (Replaces, 501),
//! relaying 100rel end to end.

mod build;
mod dial;
mod dialog;
pub mod executor;
mod identity;
mod media;
pub mod migrate;
pub mod reconcile;
mod reliable;
mod session_timer;
pub mod shared;
mod transfer;
pub mod view;

#[cfg(test)]
mod tests;

pub use identity::{DisplayNamePolicy, FromPolicy, IdentityPolicy};
pub use media::{
    sum_figures, CallLeg, Counters, DeleteReason, LegFigures, LinkInput, MediaCallId, MediaEvent,
    MediaFailure, MediaLegId, MediaLink, MediaOp, MediaRequest, MediaRequestId, MediaResult,
};
pub use migrate::{CallMoved, MoveOrder, MoveOutcome, MoveReport, MoveScope};
pub use reconcile::Owner;
pub use view::{CallQuery, CallsHandle, Note};

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cdr::{Cdr, CdrSink};
use crate::events::{Event, EventBus};
use view::{CallInfo, Direction};

use crate::auth::Authenticated;
use crate::dialplan::{Action, CallVars, Dialplan, Ring, Target};
use crate::resolve::{Query, Resolve, Resolved};
use crate::sip::{self, CallId, Method, NameAddr, SipMessage, Tag, Uri};
use crate::transaction::{TimerConfig, TransactionKey};
use crate::transport::limits::Source;
use crate::transport::{Advertised, Destination};
use crate::uas::{CallEvent, CallHandler, Now, SipActions};

use build::{contact_of, contact_uri, with_tag, Outgoing};
use dial::record_failure;
use session_timer::SessionTimer;

const SDP: &str = "application/sdp";

/// Seconds a caller refused during shutdown is told to wait (Retry-After):
/// long enough for a restart, short enough not to lose the caller.
const SHUTDOWN_RETRY_AFTER: u32 = 30;

/// A step of the signaling server's shutdown, pushed on the [`MediaLink`]
/// as [`LinkInput::Shutdown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// New INVITEs are refused 503 with Retry-After; calls in progress go on.
    Drain,
    /// New INVITEs are refused, and every call ends now: BYE on each
    /// confirmed leg, CANCEL to ringing callees and 503 to their callers,
    /// media deleted with the reason "shutdown".
    HangUp,
}

/// Settings of the B2BUA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct B2buaConfig {
    /// How we name ourselves in Via, Contact and the From of callee legs.
    pub local: Advertised,
    /// SIP timers (T1, T2 for 2xx retransmission, 64·T1 for giving up).
    pub timers: TimerConfig,
    /// Seeds Call-IDs, tags and branches so that two processes never
    /// produce the same ones; the driver draws it at random.
    pub seed: u64,
    /// Who callees are told is calling (identity.rs).
    pub identity: IdentityPolicy,
    /// Prefixes media call ids, so that this node finds its own calls on
    /// a shared manager after a restart (reconcile.rs).
    pub owner: Owner,
    /// Concurrent calls per caller.
    pub limits: CallLimits,
}

/// How many calls one caller may have at once (being set up, ringing or
/// answered), so that one caller cannot take every media port of the
/// managers. Over the limit a new INVITE is refused 486 Busy Here before
/// anything is asked of a manager. `None`: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CallLimits {
    /// Per authenticated user (digest user name).
    pub per_user: Option<usize>,
    /// Per source IP address, for calls that were not authenticated (a
    /// trunk from a trusted network, anonymous mode).
    pub per_source: Option<usize>,
}

/// Whom a call counts against for [`CallLimits`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Originator {
    /// An authenticated user.
    User(String),
    /// An unauthenticated source: an IPv4 address or an IPv6 /64, as
    /// every per-source limit counts ([`Source`]).
    Source(Source),
}

impl Originator {
    fn of(identity: &Authenticated, flow: &crate::transport::Flow) -> Originator {
        match identity {
            Authenticated::User { username, .. } => Originator::User(username.clone()),
            Authenticated::Trusted | Authenticated::NotRequired => {
                Originator::Source(Source::of(flow.remote().ip()))
            }
        }
    }

    fn limit(&self, limits: CallLimits) -> Option<usize> {
        match self {
            Originator::User(_) => limits.per_user,
            Originator::Source(_) => limits.per_source,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Originator::User(_) => "user",
            Originator::Source(_) => "source",
        }
    }
}

/// How many entries each table holds: all zero once every call has ended
/// and its transactions have terminated (but for `refused_over_limit`, a
/// running total).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Occupancy {
    pub calls: usize,
    pub server_transactions: usize,
    pub client_transactions: usize,
    pub dialogs: usize,
    pub media_requests: usize,
    pub retransmissions: usize,
    pub timers: usize,
    /// BYE, CANCEL and cancelled INVITE transactions of ended calls still
    /// waiting for their final response, and media deletes waiting for
    /// their result: a shutdown waits for these.
    pub ending: usize,
    /// Callers (users, sources) with calls, counted for [`CallLimits`].
    pub originators: usize,
    /// Call-IDs of live calls' legs, for their SIP histories.
    pub call_ids: usize,
    /// Records of ended calls waiting for their media delete's figures.
    pub records: usize,
    /// INVITEs refused over a [`CallLimits`] limit since the start: a
    /// running total, not a table size.
    pub refused_over_limit: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct CallKey(u64);

/// A dialog as we keep it for one leg (RFC 3261 §12).
#[derive(Debug, Clone)]
struct Dialog {
    call_id: CallId,
    local: NameAddr,
    local_tag: Tag,
    remote: NameAddr,
    remote_tag: Option<Tag>,
    /// Request-URI of our requests in the dialog.
    target: String,
    /// Route headers of our requests in the dialog (§12.1: the
    /// Record-Route of the dialog-creating message, loose routing).
    route_set: Vec<String>,
    destination: Destination,
    local_cseq: u32,
}

/// An INVITE sent on leg b, kept for its CANCEL, its ACK and its dialog.
#[derive(Debug, Clone)]
struct SentInvite {
    uri: String,
    branch: sip::Branch,
    from: NameAddr,
    from_tag: Tag,
    to: NameAddr,
    call_id: CallId,
    cseq: u32,
    /// Route headers before the dialog exists (a binding's Path).
    route: Vec<String>,
    destination: Destination,
    /// The Session-Expires asked for after a 422, if any.
    session_expires: Option<u32>,
}

impl SentInvite {
    /// The dialog a 2xx to this INVITE sets up (§12.1.2): the 2xx's
    /// Contact as remote target (the Request-URI without one), its
    /// Record-Route reversed as route set, its To tag.
    fn dialog_of(&self, response: &SipMessage) -> Dialog {
        Dialog {
            call_id: self.call_id.clone(),
            local: self.from.clone(),
            local_tag: self.from_tag.clone(),
            remote: self.to.clone(),
            remote_tag: response.to_tag(),
            target: contact_of(response).unwrap_or_else(|| self.uri.clone()),
            route_set: route_set_of_response(response),
            destination: self.destination,
            local_cseq: self.cseq,
        }
    }
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
    /// Its callee may transfer the call once it answers (see
    /// [`Contact::may_transfer`]).
    may_transfer: bool,
}

#[derive(Debug)]
enum ClientTx {
    Branch(Box<Branch>),
    /// The INVITE to a transfer target (transfer.rs).
    Transfer(Box<transfer::TransferBranch>),
    /// BYE, CANCEL: the answer does not matter.
    Fire,
    /// A re-INVITE or UPDATE carrying an offer from `from`'s peer.
    Reoffer(Reoffer),
    /// A session refresh we sent on a leg.
    Refresh {
        call: CallKey,
        leg: CallLeg,
    },
    /// A relayed request (INFO, UPDATE without SDP).
    Relay {
        call: CallKey,
        server: TransactionKey,
    },
    /// A migration's re-INVITE on `leg` (migrate.rs); `done` once its
    /// final response came.
    Migrate {
        call: CallKey,
        leg: CallLeg,
        done: bool,
    },
}

/// A re-INVITE or UPDATE we relayed, and the request it answers.
#[derive(Debug, Clone)]
struct Reoffer {
    call: CallKey,
    from: CallLeg,
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
        from: CallLeg,
        server: TransactionKey,
        method: Method,
    },
    Reanswer {
        to: CallLeg,
        server: TransactionKey,
        method: Method,
    },
    /// A migration's step (migrate.rs).
    Migrate(migrate::Step),
    /// A migration's Release or Abort: the figures of the legs it deleted.
    MoveFigures,
    /// A transfer target's answer on the transferor's leg (transfer.rs).
    TransferAnswer,
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
    /// The binding's Path, as Route headers.
    route: Vec<String>,
    destination: Destination,
    /// The Session-Expires to offer, when a 422 asked for more than ours.
    session_expires: Option<u32>,
    /// Another destination of the same name follows (RFC 3263 §4.3): no
    /// response at all within [`FAILOVER_AFTER`] moves on to it.
    failover: bool,
    /// The party answering here may transfer the call: a registered user,
    /// or any callee of a dial with `allow_transfer`.
    may_transfer: bool,
}

/// How long a destination found by DNS may stay silent (not even a 100
/// Trying) before the next one of the same name is tried: four UDP
/// transmissions (0, 0.5, 1.5 and 3.5 s with T1 at 500 ms), or a TCP or
/// TLS connection that could not be made.
pub const FAILOVER_AFTER: Duration = Duration::from_secs(4);

#[derive(Debug)]
struct Dialing {
    targets: VecDeque<Target>,
    attempts: VecDeque<Vec<Contact>>,
    ring: Ring,
    timeout: Duration,
    deadline: Option<Instant>,
    best: Option<(u16, String)>,
    /// The callee leg's media interface (the dial action's).
    media_interface: Option<String>,
    /// Redirects (3xx) this dial may still follow.
    redirects_left: u8,
    /// Request-URIs rung in this dial, so a redirect back to one of them
    /// (a loop) is refused.
    rung: Vec<String>,
    /// When the current attempt moves on to the next destination of its
    /// name if nothing has answered (see [`Contact::failover`]).
    failover_at: Option<Instant>,
    /// The dial's `allow_transfer`.
    allow_transfer: bool,
}

/// Contacts of one redirect that are rung; the rest are ignored, so a
/// redirect cannot fan one call out to many.
pub const MAX_REDIRECT_CONTACTS: usize = 5;

/// The callee's 2xx not yet ACKed (end to end: on the caller's ACK).
#[derive(Debug, Clone)]
struct PendingAck {
    /// The branch whose 2xx it is.
    key: TransactionKey,
    sent: SentInvite,
    route_set: Vec<String>,
    target: String,
    to: String,
}

#[derive(Debug)]
struct Call {
    /// What the API, the CDR and the events show of the call.
    info: CallInfo,
    media_id: MediaCallId,
    /// When the INVITE arrived: the call's duration in its end record.
    started: Instant,
    /// Whom the call counts against.
    originator: Originator,
    /// The caller's INVITE transaction until its final response.
    invite: Option<TransactionKey>,
    a: Dialog,
    b: Option<Dialog>,
    b_call_id: CallId,
    b_tag: Tag,
    b_cseq: u32,
    max_forwards: u32,
    /// The host of the caller's Request-URI: the domain of `user/…` targets
    /// when the registrar has no default domain.
    domain: String,
    caller_number: String,
    caller_name: Option<String>,
    /// The authenticated caller, for P-Asserted-Identity towards callees.
    asserted: Option<String>,
    phase: Phase,
    actions: VecDeque<Action>,
    dial: Option<Dialing>,
    /// The callee leg's media interface (the last dial action's): a
    /// migration puts the callee's new leg on the same side.
    callee_interface: Option<String>,
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
    /// Each leg's session timer (RFC 4028), once negotiated.
    session: [Option<SessionTimer>; 2],
    reoffer: bool,
    media_used: bool,
    /// The caller's last SDP (its offer or answer): a migration offers it
    /// to the new manager.
    caller_last: Option<String>,
    /// A migration in progress.
    moving: Option<Box<migrate::Moving>>,
    /// Figures of managers the call left, for its record.
    moved_legs: Vec<LegFigures>,
    /// Reliable provisionals, when the caller requires them (reliable.rs).
    reliable: Option<reliable::Reliable>,
    /// A blind transfer in progress (transfer.rs).
    transfer: Option<transfer::Transfer>,
    /// Which party may transfer the call (REFER), per leg: the caller,
    /// who could have placed the target's call itself; a callee when it
    /// is a registered user or its dial allows it.
    may_transfer: [bool; 2],
}

impl Call {
    fn dialog(&self, leg: CallLeg) -> Option<&Dialog> {
        match leg {
            CallLeg::A => Some(&self.a),
            CallLeg::B => self.b.as_ref(),
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
    /// A destination found by DNS stayed silent (see [`FAILOVER_AFTER`]).
    Failover(CallKey),
    /// A reliable provisional's retransmission (reliable.rs).
    Reliable(CallKey),
    /// A transfer target rang for its dial's timeout (transfer.rs).
    Transfer(CallKey),
    Retransmit(TransactionKey),
    Session(CallKey, CallLeg),
    /// A migration's re-INVITE again after a 491.
    Migrate(CallKey),
}

/// The B2BUA. See the [module documentation](self).
pub struct B2bua {
    config: B2buaConfig,
    dialplan: Arc<Dialplan>,
    /// Where the table sizes are published after each input.
    link: MediaLink,
    /// Media requests for the driver, in order ([`CallHandler::poll_media_request`]).
    requests: VecDeque<MediaRequest>,
    /// Ordered by key, i.e. by start: the API pages through them in order.
    calls: BTreeMap<CallKey, Call>,
    /// Each leg's Call-ID: the call a message belongs to, for its history.
    sip_ids: HashMap<CallId, (CallKey, CallLeg)>,
    /// Starts every API call id of this process (ids of an earlier
    /// process never name a call of this one).
    id_prefix: String,
    events: Option<EventBus>,
    cdrs: Option<CdrSink>,
    /// Where answered calls' essential state goes for other nodes.
    shared: Option<shared::SharedCallSink>,
    /// Records of ended calls waiting for their media delete's figures.
    finishing: HashMap<MediaRequestId, Cdr>,
    servers: HashMap<TransactionKey, ServerTx>,
    clients: HashMap<TransactionKey, ClientTx>,
    dialogs: HashMap<(CallId, Tag), (CallKey, CallLeg)>,
    media_calls: HashMap<MediaCallId, CallKey>,
    media: HashMap<MediaRequestId, (CallKey, Purpose)>,
    retransmits: HashMap<TransactionKey, Retransmit>,
    timers: BTreeSet<(Instant, TimerId)>,
    /// Client transactions of ended calls awaiting a final response (see
    /// [`Occupancy::ending`]).
    ending: HashSet<TransactionKey>,
    /// Media deletes awaiting their result.
    deleting: HashSet<MediaRequestId>,
    /// Set by [`Shutdown`]: new calls are refused.
    closing: bool,
    /// Live calls per caller.
    originators: HashMap<Originator, usize>,
    refused_over_limit: u64,
    counter: u64,
    branch_prefix: String,
    /// Resolves dial targets named by host name (RFC 3263); without it
    /// such a target is answered 503.
    resolver: Option<Box<dyn Resolve>>,
    /// Answers of the resolver, until the shortest TTL of their records.
    resolutions: HashMap<Query, (Resolved, Instant)>,
    /// Calls waiting for a name, by the name's query.
    resolving: HashMap<Query, Vec<CallKey>>,
}

/// Resolutions kept at most; the expired ones go first when it is reached.
const MAX_RESOLUTIONS: usize = 1024;

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
        // Mixed so that ids differ between processes whatever the seed's bits.
        let id_prefix = format!(
            "{:08x}",
            (config.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32
        );
        B2bua {
            config,
            dialplan,
            link,
            requests: VecDeque::new(),
            calls: BTreeMap::new(),
            sip_ids: HashMap::new(),
            id_prefix,
            events: None,
            cdrs: None,
            shared: None,
            finishing: HashMap::new(),
            servers: HashMap::new(),
            clients: HashMap::new(),
            dialogs: HashMap::new(),
            media_calls: HashMap::new(),
            media: HashMap::new(),
            retransmits: HashMap::new(),
            timers: BTreeSet::new(),
            ending: HashSet::new(),
            deleting: HashSet::new(),
            closing: false,
            originators: HashMap::new(),
            refused_over_limit: 0,
            counter: 0,
            branch_prefix,
            resolver: None,
            resolutions: HashMap::new(),
            resolving: HashMap::new(),
        }
    }

    /// Resolves dial targets named by host name through `resolver`.
    pub fn set_resolver(&mut self, resolver: Box<dyn Resolve>) {
        self.resolver = Some(resolver);
    }

    /// Publishes call events (created, ringing, answered, ended) on `bus`.
    pub fn set_events(&mut self, bus: EventBus) {
        self.events = Some(bus);
    }

    /// Hands a record of every ended call to `sink`.
    /// Shares each answered call's essential state (see [`shared`]).
    pub fn set_shared_calls(&mut self, sink: shared::SharedCallSink) {
        self.shared = Some(sink);
    }

    pub fn set_cdrs(&mut self, sink: CdrSink) {
        self.cdrs = Some(sink);
    }

    fn publish(&self, event: impl FnOnce() -> Event) {
        if let Some(bus) = &self.events {
            bus.publish(event());
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
            ending: self.ending.len() + self.deleting.len(),
            originators: self.originators.len(),
            call_ids: self.sip_ids.len(),
            records: self.finishing.len(),
            refused_over_limit: self.refused_over_limit,
        }
    }

    /// Runs a step of the shutdown (see [`Shutdown`]).
    fn handle_shutdown(&mut self, step: Shutdown, sip: &mut SipActions<'_>) {
        if !self.closing {
            tracing::info!(calls = self.calls.len(), ?step, "refusing new calls");
        }
        self.closing = true;
        if step == Shutdown::HangUp {
            let mut keys: Vec<CallKey> = self.calls.keys().copied().collect();
            keys.sort_unstable();
            for key in keys {
                self.end_call(
                    key,
                    DeleteReason::Shutdown,
                    None,
                    (503, "Service Unavailable"),
                    sip,
                );
            }
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

    fn new_branch(&mut self) -> sip::Branch {
        let unique = self.unique();
        sip::Branch::new(format!("{}.{unique}", self.branch_prefix))
    }

    fn local_host(&self) -> &str {
        &self.config.local.host
    }

    fn media(&mut self, key: CallKey, purpose: Purpose, op: MediaOp) {
        let id = MediaRequestId(self.next());
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.media_used = true;
        tracing::debug!(call_id = %call.media_id, op = op.name(), id = id.0, "media request");
        self.media.insert(id, (key, purpose));
        self.requests.push_back(MediaRequest {
            id,
            call: call.media_id.clone(),
            op,
        });
    }

    // ----- SIP events -------------------------------------------------

    /// A request other than a new INVITE (handle_event sends those to `invite`).
    fn request(
        &mut self,
        now: Now,
        key: TransactionKey,
        request: SipMessage,
        sip: &mut SipActions<'_>,
    ) {
        match request.method() {
            // The core answered it; one that cancels an INVITE of ours
            // was handled before (`handle_event`).
            Method::Cancel => {}
            Method::Prack => self.prack(now, key, request, sip),
            _ => self.in_dialog(now, key, request, sip),
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
        if status >= 200 {
            self.ending.remove(&key);
        }
        if matches!(self.clients.get(&key), Some(ClientTx::Transfer(_))) {
            self.transfer_response(key, response, sip);
            return;
        }
        let Some(client) = self.clients.get_mut(&key) else {
            return;
        };
        match client {
            ClientTx::Transfer(_) => {}
            ClientTx::Branch(branch) => {
                if (100..200).contains(&status) {
                    branch.provisional = true;
                    if branch.cancel == Cancel::Wanted {
                        branch.cancel = Cancel::Sent;
                        let cancel = send_cancel(&self.config.local, &branch.sent, sip);
                        self.ending.extend(cancel);
                        self.ending.insert(key.clone());
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
                        let route = route_set_of_response(&response);
                        self.send_ack(&sent, &target, &to, &route, body.as_deref(), sip);
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
            ClientTx::Reoffer(_)
            | ClientTx::Relay { .. }
            | ClientTx::Refresh { .. }
            | ClientTx::Migrate { .. }
                if status < 200 => {}
            ClientTx::Migrate { call, leg, done } => {
                let (call, leg, first) = (*call, *leg, !*done);
                *done = true;
                self.migrate_response(call, leg, first, response, sip);
            }
            ClientTx::Refresh { call, leg } => {
                let (call, leg) = (*call, *leg);
                self.refresh_response(call, leg, &response, sip);
            }
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

    /// Stops retransmitting the 2xx of `server` (its ACK came, or the call ended).
    fn stop_retransmit(&mut self, server: &TransactionKey) {
        if let Some(entry) = self.retransmits.remove(server) {
            self.timers
                .remove(&(entry.next, TimerId::Retransmit(server.clone())));
        }
    }

    /// Ends a call: a final response to an unanswered caller, BYE to every
    /// confirmed leg but `from`, CANCEL to pending branches, media deleted.
    fn end_call(
        &mut self,
        key: CallKey,
        reason: DeleteReason,
        from: Option<CallLeg>,
        status: (u16, &str),
        sip: &mut SipActions<'_>,
    ) {
        let retry_after = reason == DeleteReason::Shutdown;
        self.end_call_with(key, reason, from, status, retry_after, sip);
    }

    /// [`B2bua::end_call`], telling an unanswered caller when to try again
    /// (Retry-After) when `retry_after`.
    fn end_call_with(
        &mut self,
        key: CallKey,
        reason: DeleteReason,
        from: Option<CallLeg>,
        status: (u16, &str),
        retry_after: bool,
        sip: &mut SipActions<'_>,
    ) {
        self.move_interrupted(key, "the call ended during the move".to_owned());
        let Some(mut call) = self.calls.remove(&key) else {
            return;
        };
        self.abandon_transfer(&call, sip);
        if let Some(count) = self.originators.get_mut(&call.originator) {
            *count -= 1;
            if *count == 0 {
                self.originators.remove(&call.originator);
            }
        }
        tracing::info!(
            call_id = %call.media_id,
            reason = reason_name(reason),
            answered = call.answered,
            bye_from = from.map(CallLeg::as_str),
            status = (!call.answered).then_some(status.0),
            duration_ms = sip.now().instant.saturating_duration_since(call.started).as_millis() as u64,
            "call ended"
        );
        self.dialogs
            .remove(&(call.a.call_id.clone(), call.a.local_tag.clone()));
        self.dialogs
            .remove(&(call.b_call_id.clone(), call.b_tag.clone()));
        for call_id in [&call.a.call_id, &call.b_call_id] {
            // A later call that took the same Call-ID keeps its entry.
            if self.sip_ids.get(call_id).is_some_and(|(k, _)| *k == key) {
                self.sip_ids.remove(call_id);
            }
        }
        self.media_calls.remove(&call.media_id);
        if let (true, Some(sink)) = (call.answered, &self.shared) {
            sink.send(shared::SharedCallUpdate::Down(call.media_id.0.clone()));
        }
        // Timers go with the call, so none outlives it.
        for server in call.awaiting_ack.iter().flatten() {
            self.stop_retransmit(server);
        }
        if let Some(deadline) = call.dial.as_ref().and_then(|d| d.deadline) {
            self.timers.remove(&(deadline, TimerId::Dial(key)));
        }
        for leg in [CallLeg::A, CallLeg::B] {
            if let Some(timer) = call.session[leg_index(leg)] {
                self.timers
                    .remove(&(timer.deadline, TimerId::Session(key, leg)));
            }
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
                let headers = if retry_after {
                    vec![self::retry_after()]
                } else {
                    Vec::new()
                };
                respond(
                    sip,
                    &invite,
                    code,
                    text,
                    Some(&call.a.local_tag),
                    &headers,
                    None,
                );
            }
        }
        if let Some(pending) = call.pending_ack.take() {
            self.ack_callee(&pending, None, sip);
        }
        if call.answered && from != Some(CallLeg::A) {
            let mut a = call.a.clone();
            if let Some(bye) = self.send_in_dialog(&mut a, &Method::Bye, &[], None, sip) {
                self.ending.insert(bye.clone());
                self.clients.insert(bye, ClientTx::Fire);
            }
        }
        if from != Some(CallLeg::B) {
            if let Some(mut b) = call.b.clone() {
                if let Some(bye) = self.send_in_dialog(&mut b, &Method::Bye, &[], None, sip) {
                    self.ending.insert(bye.clone());
                    self.clients.insert(bye, ClientTx::Fire);
                }
            }
        }
        let mut delete = None;
        if call.media_used {
            let detail = match from {
                _ if reason == DeleteReason::Shutdown => "signaling server shutdown".to_owned(),
                Some(leg) => format!("BYE from leg {leg}"),
                None if call.answered => format!("hangup: {}", status.1),
                None => format!("{} {}", status.0, status.1),
            };
            let media_id = call.media_id.clone();
            let id = MediaRequestId(self.next());
            self.deleting.insert(id);
            self.requests.push_back(MediaRequest {
                id,
                call: media_id,
                op: MediaOp::Delete { reason, detail },
            });
            delete = Some(id);
        }
        self.record_end(sip.now(), &call, reason, from, status.0, delete);
    }

    // ----- media results ---------------------------------------------

    fn media_result(
        &mut self,
        now: Now,
        id: MediaRequestId,
        result: MediaResult,
        sip: &mut SipActions<'_>,
    ) {
        if self.deleting.remove(&id) {
            self.deleted(id, result);
            return;
        }
        let Some((key, purpose)) = self.media.remove(&id) else {
            return;
        };
        match purpose {
            Purpose::Migrate(step) => return self.migrate_result(key, step, result, sip),
            Purpose::MoveFigures => return self.move_figures(key, result),
            _ => {}
        }
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let sdp = match result {
            MediaResult::Sdp(sdp) => sdp,
            MediaResult::Done | MediaResult::Deleted(_) | MediaResult::Moved { .. } => return,
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
                call.sdp_sent[leg_index(CallLeg::B)] = Some(sdp.clone());
                call.b_offer = Some(sdp);
                call.phase = Phase::Dialing;
                self.next_attempt(now, key, sip);
            }
            Purpose::EarlyAnswer { status, reason } => {
                if let Some((_, rewritten)) = call.early.as_mut() {
                    rewritten.clone_from(&sdp);
                }
                if call.invite.is_some() && call.phase == Phase::Dialing {
                    self.provisional_to_caller(now, key, status, &reason, Some(sdp), sip);
                }
            }
            Purpose::FinalAnswer | Purpose::LateOffer | Purpose::SelfAnswer => {
                if !self.hold_answer(key, &purpose, &sdp) {
                    self.answer_caller(now, key, purpose, sdp, sip);
                }
            }
            Purpose::TransferAnswer => {
                // The transferee keeps the manager's address and port; a
                // different codec choice would need a re-INVITE to it,
                // which is not sent (logged).
                tracing::debug!(call_id = %call.media_id, "transfer: the manager took the target's answer");
            }
            Purpose::LateAnswer => {
                if let Some(pending) = call.pending_ack.take() {
                    call.sdp_sent[leg_index(CallLeg::B)] = Some(sdp.clone());
                    self.ack_callee(&pending, Some(&sdp), sip);
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
                    self.answer_2xx(now, key, to, &server, Some(sdp), sip);
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
            Purpose::Play | Purpose::Migrate(_) | Purpose::MoveFigures => {}
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
            Purpose::EarlyAnswer { .. } | Purpose::Migrate(_) | Purpose::MoveFigures => {}
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
            | Purpose::SelfAnswer
            | Purpose::TransferAnswer => {
                // Every manager refused (or none may take calls): a
                // passing shortage, the caller may try again.
                let retry_after = failure == MediaFailure::Unavailable;
                self.end_call_with(key, DeleteReason::Failed, None, status, retry_after, sip);
            }
        }
    }

    fn media_event(&mut self, event: MediaEvent, sip: &mut SipActions<'_>) {
        match event {
            MediaEvent::Timeout {
                call,
                leg,
                idle_secs,
                manager,
            } => {
                let Some(key) = self.media_calls.get(&call).copied() else {
                    return;
                };
                let on = self.calls.get(&key).and_then(|c| c.info.manager.as_ref());
                if on.is_some_and(|on| *on != manager) {
                    // Its copy on a manager it moved off (lost, then back
                    // with its state): those legs idle by design.
                    tracing::debug!(call_id = %call, %leg, rtpmanager = %manager, "media timeout on a manager the call left: ignored");
                    return;
                }
                tracing::info!(call_id = %call, %leg, idle_secs, "media timeout: hanging up");
                self.end_call(
                    key,
                    DeleteReason::MediaTimeout,
                    None,
                    (408, "Request Timeout"),
                    sip,
                );
            }
            MediaEvent::Dtmf { call, leg, digit } => {
                tracing::debug!(call_id = %call, %leg, digit, "DTMF received");
            }
        }
    }

    // ----- timers ----------------------------------------------------

    /// A dial timer (`deadline` of the dial) fired: when it is still the
    /// one set and due, the current attempt fails with `status`, its
    /// branches are given up and the dial goes on.
    fn attempt_expired(
        &mut self,
        now: Now,
        key: CallKey,
        deadline: fn(&mut Dialing) -> &mut Option<Instant>,
        (status, reason): (u16, &str),
        why: &str,
        sip: &mut SipActions<'_>,
    ) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(dial) = call.dial.as_mut() else {
            return;
        };
        let at = deadline(dial);
        if at.is_none_or(|at| at > now.instant) {
            return;
        }
        *at = None;
        tracing::info!(call_id = %call.media_id, "{why}");
        record_failure(dial, status, reason.to_owned());
        let branches = std::mem::take(&mut call.branches);
        self.abandon(&branches, sip);
        self.next_attempt(now, key, sip);
    }

    fn fire(&mut self, now: Now, timer: TimerId, sip: &mut SipActions<'_>) {
        match timer {
            TimerId::Dial(key) => self.attempt_expired(
                now,
                key,
                |dial| &mut dial.deadline,
                (480, "Temporarily Unavailable"),
                "no answer before the dial timeout",
                sip,
            ),
            TimerId::Failover(key) => self.attempt_expired(
                now,
                key,
                |dial| &mut dial.failover_at,
                (408, "Request Timeout"),
                "no response from the destination; trying the next one of its name",
                sip,
            ),
            TimerId::Reliable(key) => self.reliable_due(now, key, sip),
            TimerId::Transfer(key) => self.transfer_due(now, key, sip),
            TimerId::Session(key, leg) => self.session_due(now, key, leg, sip),
            TimerId::Migrate(key) => self.migrate_retry(now, key, sip),
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
                    self.end_call(call, DeleteReason::Failed, None, (408, ""), sip);
                    return;
                }
                entry.interval = (entry.interval * 2).min(self.config.timers.t2);
                entry.next = now.instant + entry.interval;
                self.timers
                    .insert((entry.next, TimerId::Retransmit(server)));
            }
        }
    }

    /// Handles one input that is not SIP: a media result, a manager
    /// event, a dialplan, a shutdown step, a placement, a query or a move.
    fn handle_link_input(&mut self, now: Now, input: LinkInput, sip: &mut SipActions<'_>) {
        {
            match input {
                LinkInput::Result { id, result } => self.media_result(now, id, result, sip),
                LinkInput::Event(event) => self.media_event(event, sip),
                LinkInput::Dialplan(plan) => {
                    tracing::info!(routes = plan.routes().len(), "dialplan replaced");
                    self.dialplan = plan;
                }
                LinkInput::Shutdown(step) => self.handle_shutdown(step, sip),
                LinkInput::Placed { call, manager } => {
                    if let Some(key) = self.media_calls.get(&call) {
                        if let Some(call) = self.calls.get_mut(key) {
                            call.info.manager = Some(manager);
                        }
                    }
                }
                LinkInput::Query(query) => self.query(now, query, sip),
                LinkInput::Move(order) => self.move_order(order),
                LinkInput::Reap(call) => self.reap(now, &call, sip),
                LinkInput::Resolved { query, result } => self.resolved(now, query, result, sip),
            }
        }
    }
}

impl CallHandler for B2bua {
    fn handle_event(&mut self, now: Now, event: CallEvent, sip: &mut SipActions<'_>) {
        // Noted after handling (a new INVITE's call exists only then),
        // before what the handling sent.
        let received = match &event {
            CallEvent::Request { request, flow, .. } | CallEvent::Ack { request, flow, .. } => self
                .wants_note(request)
                .then(|| view::note_of(request, Some(flow.remote()))),
            CallEvent::Response { key, response } => self
                .wants_note(response)
                .then(|| view::note_of(response, self.response_peer(key))),
            CallEvent::Timeout { .. } | CallEvent::Terminated { .. } => None,
        };
        self.handle(now, event, sip);
        if let Some(note) = received {
            self.note(now.wall, Direction::In, note);
        }
        self.note_sent(sip);
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
        self.note_sent(sip);
        self.link.publish(self.occupancy());
    }

    fn handle_media(&mut self, now: Now, input: LinkInput, sip: &mut SipActions<'_>) {
        self.handle_link_input(now, input, sip);
        self.note_sent(sip);
        self.link.publish(self.occupancy());
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    fn poll_media_request(&mut self) -> Option<MediaRequest> {
        self.requests.pop_front()
    }
}

impl B2bua {
    fn handle(&mut self, now: Now, event: CallEvent, sip: &mut SipActions<'_>) {
        match event {
            CallEvent::Request {
                cancels: Some(invite),
                ..
            } => self.cancel(&invite, sip),
            CallEvent::Request {
                key,
                request,
                flow,
                identity,
                ..
            } => match request.method() {
                Method::Invite if request.to_tag().is_none() => {
                    self.invite(now, key, request, flow, &identity, sip);
                }
                _ => self.request(now, key, request, sip),
            },
            CallEvent::Ack { request, .. } => self.ack(request, sip),
            CallEvent::Response { key, response } => self.response(now, key, response, sip),
            CallEvent::Timeout { key, .. } => {
                self.ending.remove(&key);
                self.transfer_timeout(&key, sip);
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
                } else if let Some(ClientTx::Migrate { call, .. }) = self.clients.get(&key) {
                    let call = *call;
                    self.migrate_timeout(call, sip);
                } else if let Some(ClientTx::Refresh { call, .. }) = self.clients.get(&key) {
                    let call = *call;
                    tracing::info!("no answer to a session refresh: ending the call");
                    self.end_call(
                        call,
                        DeleteReason::SessionTimer,
                        None,
                        (408, "Session Expired"),
                        sip,
                    );
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
                self.ending.remove(&key);
                if let Some(ClientTx::Branch(branch)) = self.clients.remove(&key) {
                    if let Some(call) = self.calls.get_mut(&branch.call) {
                        call.branches.retain(|k| *k != key);
                    }
                }
            }
        }
    }
}

// ----- helpers -------------------------------------------------------

/// The route set a UAC takes from a 2xx: its Record-Route, reversed (§12.1.2).
fn route_set_of_response(response: &SipMessage) -> Vec<String> {
    let mut route = response.header_list("Record-Route");
    route.reverse();
    route
}

/// Route headers for `route`, then `extra`.
fn with_routes(route: &[String], extra: &[(String, String)]) -> Vec<(String, String)> {
    route
        .iter()
        .map(|r| ("Route".to_owned(), r.clone()))
        .chain(extra.iter().cloned())
        .collect()
}

fn leg_index(leg: CallLeg) -> usize {
    match leg {
        CallLeg::A => 0,
        CallLeg::B => 1,
    }
}

fn call_id_of(calls: &BTreeMap<CallKey, Call>, key: CallKey) -> String {
    calls
        .get(&key)
        .map(|c| c.media_id.0.clone())
        .unwrap_or_default()
}

/// Contact and Allow for our 18x/2xx on `leg`.
fn leg_headers(local: &Advertised, call: &Call, leg: CallLeg) -> Vec<(String, String)> {
    let destination = call
        .dialog(leg)
        .map_or(call.a.destination, |d| d.destination);
    let mut headers = vec![
        (
            "Contact".to_owned(),
            format!("<{}>", contact_uri(local, &destination)),
        ),
        ("Allow".to_owned(), ALLOW_IN_CALLS.to_owned()),
    ];
    if let Some(timer) = call.session[leg_index(leg)] {
        headers.extend(timer.headers(leg));
    }
    headers
}

/// The end reason as the call's end record names it.
fn reason_name(reason: DeleteReason) -> &'static str {
    match reason {
        DeleteReason::Hangup => "hangup",
        DeleteReason::Cancelled => "cancelled",
        DeleteReason::Failed => "failed",
        DeleteReason::MediaTimeout => "media_timeout",
        DeleteReason::SessionTimer => "session_timer",
        DeleteReason::Shutdown => "shutdown",
        DeleteReason::Admin => "admin",
    }
}

fn retry_after() -> (String, String) {
    ("Retry-After".to_owned(), SHUTDOWN_RETRY_AFTER.to_string())
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

fn send(
    sip: &mut SipActions<'_>,
    request: Option<SipMessage>,
    destination: Destination,
) -> Option<TransactionKey> {
    match sip.send_request(request?, destination) {
        Ok(key) => Some(key),
        Err(error) => {
            tracing::warn!(%error, "request not sent");
            None
        }
    }
}

/// The methods a leg may send us (Allow of our INVITEs and answers).
const ALLOW_IN_CALLS: &str = "INVITE, ACK, BYE, CANCEL, UPDATE, INFO, PRACK, REFER";

/// The INVITE `sent` describes: its route set first, then `headers`,
/// offering `offer`.
fn invite_of(
    local: &Advertised,
    sent: &SentInvite,
    max_forwards: u32,
    headers: &[(String, String)],
    offer: Option<&str>,
) -> Option<SipMessage> {
    let extra = with_routes(&sent.route, headers);
    let from = with_tag(&sent.from, Some(&sent.from_tag));
    let to = with_tag(&sent.to, None);
    build::request(&Outgoing {
        method: &Method::Invite,
        uri: &sent.uri,
        local,
        branch: &sent.branch,
        destination: sent.destination,
        from: &from,
        to: &to,
        call_id: &sent.call_id,
        cseq: sent.cseq,
        max_forwards,
        contact: true,
        extra: &extra,
        body: offer.map(|s| (SDP, s.as_bytes())),
    })
}

fn send_cancel(
    local: &Advertised,
    sent: &SentInvite,
    sip: &mut SipActions<'_>,
) -> Option<TransactionKey> {
    let from = with_tag(&sent.from, Some(&sent.from_tag));
    let to = with_tag(&sent.to, None);
    let request = build::request(&Outgoing {
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
        extra: &with_routes(&sent.route, &[]),
        body: None,
    });
    send(sip, request, sent.destination)
}
