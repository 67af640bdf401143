//! RFC 3261 §17 transactions as sans-IO state machines.
//!
//! Four machines, one per file, named after the RFC: [`ClientInvite`]
//! (§17.1.1 with the RFC 6026 Accepted state), [`Client`] (§17.1.2),
//! [`ServerInvite`] (§17.2.1 with RFC 6026 Accepted) and [`Server`] (§17.2.2).
//! [`TransactionLayer`] owns many of them, keyed by [`TransactionKey`], and
//! matches incoming messages to them (§17.1.3, §17.2.3, CANCEL per §9.2).
//!
//! # Driving a machine
//!
//! Nothing here reads a clock or touches a socket. Every message in and out
//! is a [`SipMessage`](crate::sip::SipMessage): the value the machines read
//! (method, top Via branch and sent-by, CSeq, status) and the octets they
//! keep and retransmit as they are. The driver:
//!
//! 1. feeds inputs with the current time: `handle_request(now, …)` and
//!    `handle_response(now, …)` with parsed messages, `send_request(now, …)`
//!    (client side) and `send_response(now, …)` (server side) with messages
//!    the TU built (`SipMessage::from_parts`, `sip::response_message`),
//!    `handle_transport_error(now)`, and `handle_timeout(now)` once the
//!    deadline returned by `poll_timeout()` has passed;
//! 2. after every input, drains `poll_transmit()` (messages whose
//!    [`bytes`](crate::sip::SipMessage::bytes) go on the wire) and
//!    `poll_event()` (what the transaction user must know), then re-arms
//!    its timer with `poll_timeout()`. The 100 Trying and the ACK for a
//!    non-2xx final response, which a machine makes itself, are built the
//!    same way.
//!
//! Timers that are zero on reliable transports (D, I, J, K) fire within the
//! input that starts them, so a machine on TCP reaches Terminated without a
//! timer round trip.

mod client;
mod client_invite;
mod server;
mod server_invite;
pub(crate) mod table;

pub use client::{Client, ClientState};
pub use client_invite::{ClientInvite, ClientInviteState};
pub use server::{Server, ServerState};
pub use server_invite::{ServerInvite, ServerInviteState};

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use table::ShardedMap;

use crate::sip::{Branch, Header, Method, SipMessage, Transport, BRANCH_MAGIC_COOKIE};

/// The `branch` prefix that marks an RFC 3261 branch (§8.1.1.7).
pub const MAGIC_COOKIE: &str = BRANCH_MAGIC_COOKIE;

/// Errors raised by the transaction layer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransactionError {
    /// A header the transaction layer needs is absent.
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    /// A header the transaction layer needs could not be parsed.
    #[error("malformed {name} header: {reason}")]
    MalformedHeader {
        /// Header name.
        name: &'static str,
        /// What the parser said.
        reason: String,
    },
    /// The top Via has no branch, or one without the RFC 3261 magic cookie.
    #[error("top Via has no RFC 3261 branch")]
    MissingBranch,
    /// A machine was built for a method it does not handle.
    #[error("{found} cannot start this kind of transaction")]
    WrongMethod {
        /// The request's method.
        found: String,
    },
    /// ACK never starts a transaction (§17): it is sent or passed up directly.
    #[error("ACK does not create a transaction")]
    AckIsNotATransaction,
    /// A response with a status code outside 100–699.
    #[error("status code {0} is outside 100-699")]
    InvalidStatus(u16),
    /// The TU tried to send a response the state machine does not allow now.
    #[error("response {status} not allowed in state {state}")]
    ResponseNotAllowed {
        /// The response's status code.
        status: u16,
        /// The transaction's state.
        state: &'static str,
    },
    /// No transaction has this key (it may have terminated already).
    #[error("no transaction for this key")]
    UnknownTransaction,
    /// The key names a transaction of the other role.
    #[error("transaction has the wrong role for this call")]
    WrongRole,
    /// A transaction with this key already exists.
    #[error("a transaction with this key already exists")]
    DuplicateTransaction,
}

/// Base timer values (§17.1.1.1, table 4 of RFC 3261).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    /// RTT estimate; 500 ms by default.
    pub t1: Duration,
    /// Maximum retransmit interval for non-INVITE requests and INVITE responses; 4 s by default.
    pub t2: Duration,
    /// Maximum time a message stays in the network; 5 s by default.
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl TimerConfig {
    /// 64·T1: timers B, F, H, J, L and M.
    pub fn t1x64(&self) -> Duration {
        self.t1 * 64
    }

    /// Timer D: "at least 32 s" on unreliable transports; never shorter than
    /// 64·T1 so that it still outlives the server's timer H when T1 is raised.
    pub fn timer_d(&self, reliability: Reliability) -> Duration {
        match reliability {
            Reliability::Reliable => Duration::ZERO,
            Reliability::Unreliable => self.t1x64().max(Duration::from_secs(32)),
        }
    }
}

/// Whether the transport delivers messages reliably (TCP, TLS, SCTP, WS) or not (UDP).
///
/// Only unreliable transports get retransmission timers (A, E, G), and the
/// absorb timers D, I, J and K are zero on reliable ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reliability {
    /// Stream or message transports that retransmit themselves.
    Reliable,
    /// UDP.
    Unreliable,
}

impl Reliability {
    /// The reliability of a Via transport; extension transports count as
    /// unreliable, so they get retransmissions.
    pub fn of(transport: &Transport) -> Self {
        if transport.is_reliable() {
            Self::Reliable
        } else {
            Self::Unreliable
        }
    }

    fn is_unreliable(self) -> bool {
        self == Self::Unreliable
    }
}

/// Transaction timers, named as in RFC 3261 table 4 and RFC 6026.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// INVITE client: request retransmission (doubles, no cap).
    A,
    /// INVITE client: transaction timeout in Calling.
    B,
    /// INVITE client: wait in Completed for response retransmissions.
    D,
    /// Non-INVITE client: request retransmission (doubles, capped at T2).
    E,
    /// Non-INVITE client: transaction timeout.
    F,
    /// INVITE server: final response retransmission (doubles, capped at T2).
    G,
    /// INVITE server: wait for ACK in Completed.
    H,
    /// INVITE server: wait in Confirmed for ACK retransmissions.
    I,
    /// Non-INVITE server: wait in Completed for request retransmissions.
    J,
    /// Non-INVITE client: wait in Completed for response retransmissions.
    K,
    /// INVITE server (RFC 6026): wait in Accepted for INVITE retransmissions.
    L,
    /// INVITE client (RFC 6026): wait in Accepted for 2xx retransmissions.
    M,
    /// INVITE server: not an RFC timer, the §17.2.1 rule that a 100 Trying
    /// goes out if the TU has not answered within 200 ms.
    Trying,
}

/// When the INVITE server transaction sends its own 100 Trying (§17.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryingPolicy {
    /// Send 100 Trying as soon as the INVITE arrives.
    Immediate,
    /// Send 100 Trying only if the TU has sent no provisional or final
    /// response after this delay (RFC 3261 suggests 200 ms).
    After(Duration),
}

impl Default for TryingPolicy {
    fn default() -> Self {
        Self::After(Duration::from_millis(200))
    }
}

/// What a single transaction reports to its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransactionEvent {
    /// Server side: a new request for the TU (retransmissions are absorbed).
    /// Also an ACK that reached an INVITE server transaction in Accepted.
    Request(SipMessage),
    /// Client side: a provisional or final response for the TU, including
    /// 2xx retransmissions while in Accepted (RFC 6026).
    Response(SipMessage),
    /// A timeout timer (B, F or H) fired.
    Timeout(Timer),
    /// The driver reported that a message could not be sent.
    TransportError,
    /// The transaction reached Terminated; it may be dropped.
    Terminated,
}

/// The key that identifies a transaction.
///
/// Server keys follow §17.2.3 (branch, sent-by of the top Via, method with ACK
/// folded into INVITE); client keys follow §17.1.3 (branch, CSeq method).
///
/// A shared handle, hashed once: the core looks a key up in several tables
/// per message (the transactions, their deadlines, the routes) and hands
/// copies to its events and transmissions. Hashing the strings anew each
/// time was 6 % of the core's time in a REGISTER storm, and each copy two
/// allocations; a copy is now a reference count, and every table hashes
/// the key's 64-bit hash (itself SipHash under a random key: the parts come
/// off the wire, so a flood of chosen branches cannot aim at one bucket).
#[derive(Clone)]
pub struct TransactionKey(std::sync::Arc<HashedParts>);

#[derive(PartialEq, Eq, PartialOrd, Ord, Hash)]
struct KeyParts {
    role: Role,
    branch: Branch,
    method: Method,
    sent_by: Option<String>,
}

/// The random SipHash key of every [`TransactionKey`]'s hash.
static KEY_HASHER: std::sync::LazyLock<std::collections::hash_map::RandomState> =
    std::sync::LazyLock::new(std::collections::hash_map::RandomState::new);

impl TransactionKey {
    fn new(role: Role, branch: Branch, method: Method, sent_by: Option<String>) -> Self {
        let parts = KeyParts {
            role,
            branch,
            method,
            sent_by,
        };
        let hash = std::hash::BuildHasher::hash_one(&*KEY_HASHER, &parts);
        TransactionKey(std::sync::Arc::new(HashedParts { hash, parts }))
    }
}

/// The parts and their hash.
struct HashedParts {
    hash: u64,
    parts: KeyParts,
}

impl PartialEq for TransactionKey {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
            || (self.0.hash == other.0.hash && self.0.parts == other.0.parts)
    }
}

impl Eq for TransactionKey {}

impl std::hash::Hash for TransactionKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

impl PartialOrd for TransactionKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for TransactionKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.parts.cmp(&other.0.parts)
    }
}

impl std::fmt::Debug for TransactionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionKey")
            .field("role", &self.0.parts.role)
            .field("branch", &self.0.parts.branch)
            .field("method", &self.0.parts.method)
            .field("sent_by", &self.0.parts.sent_by)
            .finish()
    }
}

/// Which side of a transaction a key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// We sent the request.
    Client,
    /// We received the request.
    Server,
}

impl TransactionKey {
    /// The client key of a request we send (§17.1.3).
    pub fn client_for_request(request: &SipMessage) -> Result<Self, TransactionError> {
        Ok(Self::new(
            Role::Client,
            rfc3261_branch(request)?,
            request.method().clone(),
            None,
        ))
    }

    /// The client key a received response matches (§17.1.3): top Via branch and CSeq method.
    pub fn client_for_response(response: &SipMessage) -> Result<Self, TransactionError> {
        Ok(Self::new(
            Role::Client,
            rfc3261_branch(response)?,
            response.cseq().method.clone(),
            None,
        ))
    }

    /// The server key of a received request (§17.2.3); an ACK yields its INVITE's key.
    pub fn server_for_request(request: &SipMessage) -> Result<Self, TransactionError> {
        let via = request.top_via();
        let method = match request.method() {
            Method::Ack => Method::Invite,
            other => other.clone(),
        };
        let branch = rfc3261_branch(request)?;
        let mut sent_by = String::with_capacity(32);
        {
            use std::fmt::Write;
            let _ = write!(sent_by, "{}", via.host);
            sent_by.make_ascii_lowercase();
            if let Some(port) = via.port {
                let _ = write!(sent_by, ":{port}");
            }
        }
        Ok(Self::new(Role::Server, branch, method, Some(sent_by)))
    }

    /// The same key with another method: how a CANCEL finds its INVITE (§9.2).
    pub fn with_method(&self, method: Method) -> Self {
        Self::new(
            self.0.parts.role,
            self.0.parts.branch.clone(),
            method,
            self.0.parts.sent_by.clone(),
        )
    }

    /// Client or server.
    pub fn role(&self) -> Role {
        self.0.parts.role
    }

    /// The branch parameter of the top Via.
    pub fn branch(&self) -> &Branch {
        &self.0.parts.branch
    }

    /// The method (CSeq method for clients, request method with ACK as INVITE for servers).
    pub fn method(&self) -> &Method {
        &self.0.parts.method
    }

    /// The sent-by of the top Via (server keys only).
    pub fn sent_by(&self) -> Option<&str> {
        self.0.parts.sent_by.as_deref()
    }
}

/// The top Via's branch, when it carries the RFC 3261 magic cookie.
fn rfc3261_branch(message: &SipMessage) -> Result<Branch, TransactionError> {
    match message.top_via().branch() {
        Some(branch) if branch.as_str().starts_with(MAGIC_COOKIE) => Ok(branch),
        _ => Err(TransactionError::MissingBranch),
    }
}

/// The status of a response, 100 to 699; a request is refused as if its
/// status were 0.
fn status_of(response: &SipMessage) -> Result<u16, TransactionError> {
    match response.status() {
        Some(code @ 100..=699) => Ok(code),
        code => Err(TransactionError::InvalidStatus(code.unwrap_or(0))),
    }
}

/// Builds the ACK for a non-2xx final response to `invite` (§17.1.1.3):
/// the INVITE's top Via, Request-URI, Route set, From, Call-ID and CSeq
/// number, the response's To.
pub(crate) fn build_non_2xx_ack(
    invite: &SipMessage,
    response: &SipMessage,
) -> Result<SipMessage, TransactionError> {
    let header = |name: &'static str, value: String| Header {
        name: name.into(),
        value: value.into(),
    };
    let uri = invite.request_uri().ok_or(TransactionError::WrongMethod {
        found: "a response".to_owned(),
    })?;
    let mut headers = vec![header("Via", invite.top_via().to_string())];
    headers.extend(
        invite
            .header_values("Route")
            .map(|route| header("Route", route.to_owned())),
    );
    headers.push(header("Max-Forwards", "70".to_owned()));
    let from = invite
        .header("From")
        .ok_or(TransactionError::MissingHeader("From"))?;
    headers.push(header("From", from.to_owned()));
    let to = response
        .header("To")
        .ok_or(TransactionError::MissingHeader("To"))?;
    headers.push(header("To", to.to_owned()));
    headers.push(header("Call-ID", invite.call_id().as_str().to_owned()));
    headers.push(header("CSeq", format!("{} ACK", invite.cseq().seq)));
    headers.push(header("Content-Length", "0".to_owned()));
    SipMessage::from_parts(&format!("ACK {uri} SIP/2.0"), headers, Vec::new()).map_err(|e| {
        TransactionError::MalformedHeader {
            name: "ACK",
            reason: e.to_string(),
        }
    })
}

/// Builds the 100 Trying a server transaction sends on its own (§8.2.6.1):
/// Via, From, To, Call-ID and CSeq copied from the request (and Timestamp).
pub(crate) fn build_trying(request: &SipMessage) -> SipMessage {
    crate::sip::response_message(request, 100, "Trying", None, &[], None)
}

/// The running timers of one transaction.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    running: Vec<(Timer, Instant)>,
}

impl Timers {
    /// Starts (or restarts) `timer` to fire at `deadline`.
    pub(crate) fn start(&mut self, timer: Timer, deadline: Instant) {
        self.cancel(timer);
        self.running.push((timer, deadline));
    }

    pub(crate) fn cancel(&mut self, timer: Timer) {
        self.running.retain(|(t, _)| *t != timer);
    }

    pub(crate) fn cancel_all(&mut self) {
        self.running.clear();
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.running.iter().map(|(_, deadline)| *deadline).min()
    }

    /// Removes and returns the earliest timer due at `now`.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<Timer> {
        let index = self
            .running
            .iter()
            .enumerate()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .min_by_key(|(_, (timer, deadline))| (*deadline, *timer))
            .map(|(index, _)| index)?;
        Some(self.running.remove(index).0)
    }
}

/// A message the driver must send for a transaction. Requests go to the
/// next hop the TU chose; responses go where §18.2.2 says (the top Via).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The transaction that produced the message.
    pub key: TransactionKey,
    /// The message; a driver writes its [`bytes`](SipMessage::bytes).
    pub message: SipMessage,
}

/// Takes the front of a machine's queue and frees the queue's buffer once
/// it is empty. A machine outlives its last message by up to 64×T1 (timers
/// J, K, D), and a drained `VecDeque` keeps room for the messages it held,
/// several hundred bytes each, in every transaction a flood leaves behind.
pub(crate) fn pop_releasing<T>(queue: &mut VecDeque<T>) -> Option<T> {
    let front = queue.pop_front();
    if queue.is_empty() && queue.capacity() > 0 {
        *queue = VecDeque::new();
    }
    front
}

/// What the transaction layer reports to the transaction user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerEvent {
    /// A new request created a server transaction. For a CANCEL, `cancels`
    /// names the INVITE server transaction it matches (§9.2), if it still exists.
    Request {
        /// The new server transaction.
        key: TransactionKey,
        /// The request.
        request: SipMessage,
        /// For a CANCEL: the INVITE server transaction to answer with 487.
        cancels: Option<TransactionKey>,
    },
    /// An ACK matched an INVITE server transaction in Accepted (RFC 6026).
    Ack {
        /// The INVITE server transaction.
        key: TransactionKey,
        /// The ACK.
        request: SipMessage,
    },
    /// An ACK matched no transaction: the ACK for a 2xx, which belongs to the
    /// dialog layer (§17.2.3, §13.3.1.4).
    StrayAck {
        /// The ACK.
        request: SipMessage,
    },
    /// A response for a client transaction.
    Response {
        /// The client transaction.
        key: TransactionKey,
        /// The response.
        response: SipMessage,
    },
    /// Timer B, F or H fired.
    Timeout {
        /// The transaction that timed out.
        key: TransactionKey,
        /// Which timer.
        timer: Timer,
    },
    /// A send failed for this transaction.
    TransportError {
        /// The transaction.
        key: TransactionKey,
    },
    /// The transaction terminated and was removed.
    Terminated {
        /// The transaction.
        key: TransactionKey,
    },
}

/// One transaction of any of the four kinds, as the table holds it.
///
/// The kinds that keep a parsed request (to retransmit it, or to match a
/// CANCEL) are boxed: inline, every entry of the table took the size of
/// the largest, 1.6 KB, and the table holds one per REGISTER for 32 s
/// after its answer (Timer J) in a [`Server`] of 160 bytes. Measured at
/// 12,000 REGISTERs a second: 1.4 GB resident, and the entries' moves on
/// insert and growth 8 % of the core's time.
#[derive(Debug)]
enum Transaction {
    ClientInvite(Box<ClientInvite>),
    Client(Box<Client>),
    ServerInvite(Box<ServerInvite>),
    Server(Server),
}

impl Transaction {
    fn handle_timeout(&mut self, now: Instant) {
        match self {
            Self::ClientInvite(t) => t.handle_timeout(now),
            Self::Client(t) => t.handle_timeout(now),
            Self::ServerInvite(t) => t.handle_timeout(now),
            Self::Server(t) => t.handle_timeout(now),
        }
    }

    fn handle_transport_error(&mut self, now: Instant) {
        match self {
            Self::ClientInvite(t) => t.handle_transport_error(now),
            Self::Client(t) => t.handle_transport_error(now),
            Self::ServerInvite(t) => t.handle_transport_error(now),
            Self::Server(t) => t.handle_transport_error(now),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Self::ClientInvite(t) => t.poll_timeout(),
            Self::Client(t) => t.poll_timeout(),
            Self::ServerInvite(t) => t.poll_timeout(),
            Self::Server(t) => t.poll_timeout(),
        }
    }

    fn poll_transmit(&mut self) -> Option<SipMessage> {
        match self {
            Self::ClientInvite(t) => t.poll_transmit(),
            Self::Client(t) => t.poll_transmit(),
            Self::ServerInvite(t) => t.poll_transmit(),
            Self::Server(t) => t.poll_transmit(),
        }
    }

    fn poll_event(&mut self) -> Option<TransactionEvent> {
        match self {
            Self::ClientInvite(t) => t.poll_event(),
            Self::Client(t) => t.poll_event(),
            Self::ServerInvite(t) => t.poll_event(),
            Self::Server(t) => t.poll_event(),
        }
    }

    fn is_terminated(&self) -> bool {
        match self {
            Self::ClientInvite(t) => t.state() == ClientInviteState::Terminated,
            Self::Client(t) => t.state() == ClientState::Terminated,
            Self::ServerInvite(t) => t.state() == ServerInviteState::Terminated,
            Self::Server(t) => t.state() == ServerState::Terminated,
        }
    }
}

/// A live transaction and the deadline it is filed under in the layer's
/// `deadlines`: kept beside it, so that refreshing its deadline costs no
/// second look-up, and costs nothing when the deadline has not moved.
#[derive(Debug)]
pub(crate) struct Live {
    transaction: Transaction,
    filed: Option<Instant>,
}

impl Live {
    fn new(transaction: Transaction) -> Live {
        Live {
            transaction,
            filed: None,
        }
    }
}

/// Owns every live transaction, matches messages to them and aggregates
/// their outputs. Terminated transactions are removed as soon as they
/// terminate, after their `Terminated` event is queued.
#[derive(Debug)]
pub struct TransactionLayer {
    config: TimerConfig,
    trying: TryingPolicy,
    /// Sharded, so that growing it never copies every transaction at once
    /// (see [`table`]).
    transactions: ShardedMap<TransactionKey, Live>,
    /// Each live transaction's next deadline, so that `poll_timeout` and
    /// `handle_timeout` do not scan every transaction.
    deadlines: BTreeSet<(Instant, TransactionKey)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<LayerEvent>,
    /// The events `collect` takes from a transaction before it reports
    /// them, kept between calls so that taking them allocates nothing.
    taken: Vec<TransactionEvent>,
}

impl TransactionLayer {
    /// An empty layer with these timers and 100 Trying policy.
    pub fn new(config: TimerConfig, trying: TryingPolicy) -> Self {
        Self {
            config,
            trying,
            transactions: ShardedMap::new(),
            deadlines: BTreeSet::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            taken: Vec::new(),
        }
    }

    /// Number of live transactions.
    pub fn len(&self) -> usize {
        self.transactions.len()
    }

    /// Whether no transaction is live.
    pub fn is_empty(&self) -> bool {
        self.transactions.is_empty()
    }

    /// Whether a transaction with this key is live.
    pub fn contains(&self, key: &TransactionKey) -> bool {
        self.transactions.contains_key(key)
    }

    /// Starts a client transaction for a request from the TU and queues its
    /// first transmission. ACK is refused: it is sent outside transactions.
    pub fn send_request(
        &mut self,
        now: Instant,
        request: SipMessage,
        reliability: Reliability,
    ) -> Result<TransactionKey, TransactionError> {
        let key = TransactionKey::client_for_request(&request)?;
        if self.transactions.contains_key(&key) {
            return Err(TransactionError::DuplicateTransaction);
        }
        let transaction = match request.method() {
            Method::Ack => return Err(TransactionError::AckIsNotATransaction),
            Method::Invite => Transaction::ClientInvite(Box::new(ClientInvite::new(
                now,
                request,
                reliability,
                self.config,
            )?)),
            _ => Transaction::Client(Box::new(Client::new(
                now,
                request,
                reliability,
                self.config,
            )?)),
        };
        self.transactions
            .insert(key.clone(), Live::new(transaction));
        self.collect(&key);
        Ok(key)
    }

    /// Feeds a request received from the network.
    ///
    /// A retransmission goes to its server transaction; an ACK goes to its
    /// INVITE server transaction or, matching none, up as [`LayerEvent::StrayAck`];
    /// anything else starts a server transaction and is reported as
    /// [`LayerEvent::Request`].
    pub fn handle_request(
        &mut self,
        now: Instant,
        request: SipMessage,
        reliability: Reliability,
    ) -> Result<TransactionKey, TransactionError> {
        let key = TransactionKey::server_for_request(&request)?;
        self.handle_keyed_request(now, key, request, reliability)
    }

    /// [`TransactionLayer::handle_request`] with the request's server key
    /// ([`TransactionKey::server_for_request`]) already computed.
    pub fn handle_keyed_request(
        &mut self,
        now: Instant,
        key: TransactionKey,
        request: SipMessage,
        reliability: Reliability,
    ) -> Result<TransactionKey, TransactionError> {
        debug_assert_eq!(
            TransactionKey::server_for_request(&request).ok(),
            Some(key.clone())
        );
        if let Some(live) = self.transactions.get_mut(&key) {
            match &mut live.transaction {
                Transaction::ServerInvite(t) => t.handle_request(now, request),
                Transaction::Server(t) => t.handle_request(now, request),
                Transaction::ClientInvite(_) | Transaction::Client(_) => {
                    return Err(TransactionError::WrongRole)
                }
            }
            self.collect(&key);
            return Ok(key);
        }
        let transaction = match request.method() {
            Method::Ack => {
                self.events.push_back(LayerEvent::StrayAck { request });
                return Ok(key);
            }
            Method::Invite => Transaction::ServerInvite(Box::new(ServerInvite::new(
                now,
                request,
                reliability,
                self.config,
                self.trying,
            )?)),
            _ => Transaction::Server(Server::new(now, request, reliability, self.config)?),
        };
        self.transactions
            .insert(key.clone(), Live::new(transaction));
        self.collect(&key);
        Ok(key)
    }

    /// Feeds a response received from the network. Returns the key of the
    /// client transaction it matched, or `None` when it matched none and was
    /// discarded (§18.1.2 as amended by RFC 6026).
    pub fn handle_response(
        &mut self,
        now: Instant,
        response: SipMessage,
    ) -> Result<Option<TransactionKey>, TransactionError> {
        let key = TransactionKey::client_for_response(&response)?;
        match self
            .transactions
            .get_mut(&key)
            .map(|live| &mut live.transaction)
        {
            Some(Transaction::ClientInvite(t)) => t.handle_response(now, response)?,
            Some(Transaction::Client(t)) => t.handle_response(now, response)?,
            Some(Transaction::ServerInvite(_) | Transaction::Server(_)) => {
                return Err(TransactionError::WrongRole)
            }
            None => return Ok(None),
        }
        self.collect(&key);
        Ok(Some(key))
    }

    /// Sends a response from the TU through its server transaction.
    pub fn send_response(
        &mut self,
        now: Instant,
        key: &TransactionKey,
        response: SipMessage,
    ) -> Result<(), TransactionError> {
        match self
            .transactions
            .get_mut(key)
            .map(|live| &mut live.transaction)
        {
            Some(Transaction::ServerInvite(t)) => t.send_response(now, response)?,
            Some(Transaction::Server(t)) => t.send_response(now, response)?,
            Some(Transaction::ClientInvite(_) | Transaction::Client(_)) => {
                return Err(TransactionError::WrongRole)
            }
            None => return Err(TransactionError::UnknownTransaction),
        }
        self.collect(key);
        Ok(())
    }

    /// Reports that a message of this transaction could not be sent.
    pub fn handle_transport_error(
        &mut self,
        now: Instant,
        key: &TransactionKey,
    ) -> Result<(), TransactionError> {
        self.transactions
            .get_mut(key)
            .ok_or(TransactionError::UnknownTransaction)?
            .transaction
            .handle_transport_error(now);
        self.collect(key);
        Ok(())
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while self.deadlines.first().is_some_and(|(due, _)| *due <= now) {
            let Some((_, key)) = self.deadlines.pop_first() else {
                break;
            };
            if let Some(live) = self.transactions.get_mut(&key) {
                live.filed = None;
                live.transaction.handle_timeout(now);
            }
            self.collect(&key);
        }
    }

    /// The earliest deadline of any transaction.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|(deadline, _)| *deadline)
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the TU.
    pub fn poll_event(&mut self) -> Option<LayerEvent> {
        self.events.pop_front()
    }

    /// Moves a transaction's outputs into the layer's queues, refreshes its
    /// deadline and removes it once terminated.
    fn collect(&mut self, key: &TransactionKey) {
        let Some(live) = self.transactions.get_mut(key) else {
            return;
        };
        while let Some(message) = live.transaction.poll_transmit() {
            self.transmits.push_back(Transmit {
                key: key.clone(),
                message,
            });
        }
        let mut taken = std::mem::take(&mut self.taken);
        while let Some(event) = live.transaction.poll_event() {
            taken.push(event);
        }
        let terminated = live.transaction.is_terminated();
        let next = if terminated {
            None
        } else {
            live.transaction.poll_timeout()
        };
        let filed = std::mem::replace(&mut live.filed, next);
        if filed != next {
            if let Some(old) = filed {
                self.deadlines.remove(&(old, key.clone()));
            }
            if let Some(deadline) = next {
                self.deadlines.insert((deadline, key.clone()));
            }
        }
        if terminated {
            self.transactions.remove(key);
        }
        for event in taken.drain(..) {
            let event = match event {
                TransactionEvent::Request(request) if *request.method() == Method::Ack => {
                    LayerEvent::Ack {
                        key: key.clone(),
                        request,
                    }
                }
                TransactionEvent::Request(request) => {
                    let cancels = if *request.method() == Method::Cancel {
                        Some(key.with_method(Method::Invite))
                            .filter(|invite| self.transactions.contains_key(invite))
                    } else {
                        None
                    };
                    LayerEvent::Request {
                        key: key.clone(),
                        request,
                        cancels,
                    }
                }
                TransactionEvent::Response(response) => LayerEvent::Response {
                    key: key.clone(),
                    response,
                },
                TransactionEvent::Timeout(timer) => LayerEvent::Timeout {
                    key: key.clone(),
                    timer,
                },
                TransactionEvent::TransportError => LayerEvent::TransportError { key: key.clone() },
                TransactionEvent::Terminated => LayerEvent::Terminated { key: key.clone() },
            };
            self.events.push_back(event);
        }
        self.taken = taken;
    }
}

#[cfg(test)]
mod test_support;

#[cfg(test)]
mod tests;
