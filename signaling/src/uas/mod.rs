//! The request-handling core: what the server does with each SIP message.
//!
//! [`Uas`] is sans-IO like the machines it drives. For every received
//! message it runs frame → parse → request checks → transaction layer →
//! UAS logic, and queues what to send, each with the [`Destination`] that
//! RFC 3261 §18.2.2 and RFC 3581 give (the same connection for TCP).
//! Retransmitted requests are absorbed by the [`TransactionLayer`], which
//! also retransmits responses: it keeps each message it is given as a
//! [`SipMessage`] with its octets and sends those, so reason phrases, IPv6
//! Vias and `tel:` URIs go out exactly as built by [`crate::sip`].
//!
//! It answers REGISTER (digest authentication, then the [`Registrar`]; a
//! change is written to the [`BindingStore`] and its 200 held until an
//! [`Input::Commit`] has made it durable, together with every change written
//! since the last one: group commit), OPTIONS (200 with Allow, Accept, Supported), methods it does
//! not implement (405 with Allow), unknown methods (501 with Allow). INVITE,
//! BYE, CANCEL, UPDATE, INFO, PRACK and ACK go to the [`CallHandler`] (the
//! B2BUA) when one is installed; see [`CallHandler`] for the answers without.
//! Responses received that match no client transaction are dropped, and a
//! response is never answered.
//!
//! Authentication comes first, before a new request reaches the
//! transaction layer: a challenge or an authentication refusal is sent
//! statelessly, once per request received, and leaves no transaction
//! behind (no retransmitted 407, no state per spoofed source).
//!
//! # Driving it
//!
//! Every input is one [`Input`] value for `handle_input(now, input)` (the
//! driver's way), or the same taken by kind:
//!
//! 1. `handle_inbound(now, inbound)` for each message from the transports
//!    (`handle_received` when it waited in a queue since it arrived): the
//!    octets are parsed once into a [`SipMessage`], which keeps them, and
//!    that value goes through the transaction layer to the UAS logic and
//!    the call handler;
//! 2. `handle_media(now, input)` for each input of the call handler that
//!    is not SIP (media results, manager events ..., see
//!    [`crate::b2bua`]);
//! 3. call `handle_timeout(now)` when the deadline of `poll_timeout(now)`
//!    has passed;
//! 4. hand over [`Input::Commit`] when no more input is at hand (and at
//!    least every few hundred inputs under sustained load): one fsync makes
//!    every binding change since the last commit durable, and only then do
//!    their 200s leave (a failed sync reverts them and answers 500);
//! 5. after every input, apply each `poll_output()` in one `match`:
//!    [`Output::Transmit`] (the octets of a message, built once: responses
//!    by [`crate::sip::response_message`], the call handler's requests by
//!    `SipMessage::from_parts`, and the transaction layer's
//!    retransmissions of them) to a transport, [`Output::Media`] to the
//!    RTP managers' executor;
//! 6. after sending, take each `poll_observation()` (call attempts, final
//!    statuses with the arrival time given to `handle_received`, binding
//!    changes, authentication failures) for metrics and the event bus.
//!
//! A commit blocks on the store's fsync: run the core where that does not
//! stall other work (the [`driver`] gives it a thread of its own, and
//! commits when its queue is empty, so the REGISTERs that arrived during one
//! fsync share the next).

mod call;
pub mod driver;
pub mod edge;
mod observation;
mod register;

#[cfg(test)]
mod tests;

pub use call::{CallEvent, CallHandler, SipActions};
pub use observation::{CoreGauges, Observation};
pub use register::{rfc3339, RegistrationError, RegistrationView};

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::auth::{Authenticated, Authenticator};
use crate::b2bua::{LinkInput, MediaRequest};
use crate::events::Event;
use crate::registrar::{
    Aor, LocationUpdate, Persist, Record, Registrar, Store, StoreError, SyncJob, Versioned,
};
use crate::sip::{
    build_error_response, build_rejection, check_request_with, parse_with, response_message,
    FramingLimits, Method, RequestPolicy, SipMessage, Tag, Via,
};
use crate::transaction::table::ShardedMap;
use crate::transaction::{
    LayerEvent, Reliability, TimerConfig, TransactionError, TransactionKey, TransactionLayer,
    TryingPolicy,
};
use crate::transport::{ConnectionId, Destination, Flow, Inbound, Outbound};
use observation::{Timed, MAX_OBSERVATIONS};

/// Methods this server implements (the Allow header).
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, UPDATE, INFO, PRACK, REFER";

/// Option tags this server supports: Path (RFC 3327) is echoed by the
/// registrar; 100rel (RFC 3262): a caller requiring it gets reliable
/// provisionals from the B2BUA (b2bua/reliable.rs).
pub const SUPPORTED: &[&str] = &["path", "100rel"];

/// One input of the core, for [`Uas::handle_input`]: everything that
/// changes it arrives as one of these (the `handle_*` methods are the same
/// inputs taken by kind).
#[derive(Debug)]
pub enum Input {
    /// A message from a transport and the instant it arrived (it may have
    /// waited in the driver's queue since).
    Received {
        /// The octets and the flow they came on.
        inbound: Inbound,
        /// When the transport read them.
        received: Instant,
    },
    /// An input of the call handler that is not SIP: a media result, a
    /// manager event, a placement, a shutdown step, a REST query.
    Media(LinkInput),
    /// The deadline of [`Uas::poll_timeout`] has passed (or may have).
    Timeout,
    /// Make the binding changes written so far durable: begin a sync of
    /// them ([`Output::Sync`]) unless one is running already (they are then
    /// the next one's). Cheap; hand it over after every input.
    Commit,
    /// [`Input::Commit`] at once, however soon after the last sync (the
    /// driver stopping: what was written is made durable and answered).
    CommitNow,
    /// A sync from [`Output::Sync`], run: the answers it covered go out
    /// (or are undone and refused, if it failed), and the changes written
    /// meanwhile begin the next sync.
    Synced(SyncJob),
    /// News from a shared location store: other nodes' binding changes,
    /// or the loss of the store.
    Location(LocationUpdate),
}

/// What the core asks its driver to do, applied in one `match`.
#[derive(Debug)]
pub enum Output {
    /// Octets for a transport.
    Transmit(Outbound),
    /// A request for the RTP managers (the call handler's), to run in
    /// order per call; its result comes back through
    /// [`Uas::handle_media`].
    Media(MediaRequest),
    /// Keep this stream connection open until then, idle or not: a phone
    /// registered over it (TCP, TLS, WebSocket) can only be reached
    /// through it, as Kamailio's registrar extends a TCP connection's
    /// lifetime to its registration's.
    HoldOpen(ConnectionId, Instant),
    /// Run this sync of the binding store off the core's thread (it waits
    /// for the disk or for Redis) and hand it back as [`Input::Synced`].
    /// One at a time: the next comes after that.
    Sync(SyncJob),
}

/// Errors of the core's API.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UasError {
    /// No server transaction has this key (it may have ended).
    #[error("no server transaction for this key")]
    UnknownTransaction,
    /// The transaction layer refused the message.
    #[error(transparent)]
    Transaction(#[from] TransactionError),
}

/// The time of an input: monotonic for transaction timers, wall-clock for
/// binding expiry and nonces (which outlive the process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time.
    pub instant: Instant,
    /// Wall-clock time.
    pub wall: SystemTime,
}

impl Now {
    /// Reads both clocks; only drivers call this.
    pub fn current() -> Now {
        Now {
            instant: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// The same moment `by` later.
    pub fn advanced(self, by: Duration) -> Now {
        Now {
            instant: self.instant + by,
            wall: self.wall + by,
        }
    }
}

/// Durable storage of bindings: the registrar's [`Store`], the shared
/// [`crate::registrar::RedisStore`], or a test double.
pub trait BindingStore: Send {
    /// Writes a change, durable only after a sync begun after it succeeds.
    fn write(&mut self, persist: &Persist) -> Result<(), StoreError>;
    /// The sync of every change written so far, to run off the core's
    /// thread and hand back to [`BindingStore::finish_sync`]; `None` when
    /// nothing was written since the last one began. One at a time.
    fn begin_sync(&mut self) -> Option<SyncJob>;
    /// Takes a sync's outcome: the changes it covered are durable, or it
    /// failed and every change not yet synced (those written after it
    /// began too) is forgotten.
    fn finish_sync(&mut self, job: SyncJob) -> Result<(), StoreError>;
    /// Begins, runs and finishes a sync on the caller's thread.
    fn sync(&mut self) -> Result<(), StoreError> {
        match self.begin_sync() {
            None => Ok(()),
            Some(mut job) => {
                job.run();
                self.finish_sync(job)
            }
        }
    }
    /// Records in the journal since the last compaction.
    fn journal_records(&self) -> usize;
    /// Replaces journal and snapshot with `records` (the snapshot may be
    /// written after this returns, off the caller's thread).
    fn compact(&mut self, records: Vec<Record>) -> Result<(), StoreError>;
    /// What the last successful sync left in a shared store for each
    /// address-of-record it changed (other nodes' bindings included), for
    /// the registrar to adopt; a node's own store has nothing to add.
    fn take_committed(&mut self) -> Vec<Versioned> {
        Vec::new()
    }
    /// A compaction is still being written: the next waits.
    fn compacting(&mut self) -> bool {
        false
    }
}

impl BindingStore for Store {
    fn write(&mut self, persist: &Persist) -> Result<(), StoreError> {
        Store::write(self, &persist.record)
    }

    fn begin_sync(&mut self) -> Option<SyncJob> {
        Store::begin_sync(self).map(SyncJob::Journal)
    }

    fn finish_sync(&mut self, job: SyncJob) -> Result<(), StoreError> {
        match job {
            SyncJob::Journal(job) => Store::finish_sync(self, job),
            SyncJob::Ready(result) => result,
            SyncJob::Shared(_) => Err(StoreError::Io {
                path: PathBuf::new(),
                source: std::io::Error::other("a shared-store sync handed to the journal"),
            }),
        }
    }

    fn journal_records(&self) -> usize {
        Store::journal_records(self)
    }

    fn compact(&mut self, records: Vec<Record>) -> Result<(), StoreError> {
        Store::compact(self, records)
    }

    fn compacting(&mut self) -> bool {
        Store::compacting(self)
    }
}

/// Settings of the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UasConfig {
    /// Transaction timers.
    pub timers: TimerConfig,
    /// Framing limits for datagrams (streams are framed by the transport).
    pub limits: FramingLimits,
    /// Answer UDP requests at their source as if they asked for rport.
    pub force_rport: bool,
    /// The digest realm, to pick our credentials among several.
    pub realm: String,
    /// Value of the Server header; empty: no Server header.
    pub server: String,
    /// Journal records after which the store is compacted (at least twice
    /// the number of addresses-of-record, so compaction stays amortised).
    pub compact_after: usize,
    /// A sync begins at least this long after the previous one began, so
    /// that under load each fsync covers more REGISTERs. Each fsync costs
    /// CPU in the kernel, and without a gap the syncs ran back to back:
    /// measured at 8,000 digest REGISTERs/s, 1,533 fsyncs/s of 5 records
    /// each when every fsync grew the journal. Over a preallocated journal
    /// (see [`crate::registrar::Store`]) an fsync is cheaper and shorter,
    /// and the gap went from 2 ms to 0.5 ms: measured at 14,000
    /// REGISTERs/s, seven runs each, REGISTER→200 p50 1.67 to 2.61 ms
    /// against 2.63 to 3.18 with 2 ms, for the same CPU (63 to 72 %
    /// against 64 to 69 %); with no gap, 75 to 79 %. An idle server's lone
    /// REGISTER is not delayed (the last sync began long ago).
    pub sync_gap: Duration,
}

impl UasConfig {
    /// Defaults for `realm`.
    pub fn new(realm: &str) -> UasConfig {
        UasConfig {
            timers: TimerConfig::default(),
            limits: FramingLimits::default(),
            force_rport: false,
            realm: realm.to_owned(),
            // No version: it would tell an attacker which flaws to try.
            server: "Switchboard".to_owned(),
            compact_after: 10_000,
            sync_gap: Duration::from_micros(500),
        }
    }
}

/// A response to build.
pub(crate) struct Reply<'a> {
    pub(crate) status: u16,
    pub(crate) reason: &'a str,
    pub(crate) to_tag: Option<&'a Tag>,
    pub(crate) headers: &'a [(String, String)],
    pub(crate) body: Option<(&'a str, &'a [u8])>,
}

impl<'a> Reply<'a> {
    fn new(status: u16, reason: &'a str, headers: &'a [(String, String)]) -> Reply<'a> {
        Reply {
            status,
            reason,
            to_tag: None,
            headers,
            body: None,
        }
    }
}

/// The transaction layer and everything needed to put its output on the wire.
pub(crate) struct Wire {
    transactions: TransactionLayer,
    server_header: String,
    /// Where each server transaction's responses go (as large as the
    /// layer's table, so sharded like it).
    server_routes: ShardedMap<TransactionKey, Destination>,
    /// Where each client transaction's requests go.
    client_routes: ShardedMap<TransactionKey, Destination>,
    /// Requests handed to the call handler, so it can answer them by key.
    requests: ShardedMap<TransactionKey, SipMessage>,
    outbox: VecDeque<Outbound>,
    /// Stream connections to keep open until then: a phone registered
    /// over one is reached only through it.
    holds: VecDeque<(ConnectionId, Instant)>,
    /// Callers' INVITEs and REGISTERs until their final response, with
    /// their arrival: their latency is observed when it is sent.
    timed: HashMap<TransactionKey, (Timed, Instant)>,
    observations: VecDeque<Observation>,
}

impl Wire {
    fn push(&mut self, destination: Destination, bytes: Vec<u8>) {
        self.outbox.push_back(Outbound { destination, bytes });
    }

    fn observe(&mut self, observation: Observation) {
        if self.observations.len() >= MAX_OBSERVATIONS {
            self.observations.pop_front();
        }
        self.observations.push_back(observation);
    }

    /// Builds and sends a response: through server transaction `key`, or
    /// statelessly to `stateless` (requests the layer could not take).
    fn respond(
        &mut self,
        now: Now,
        key: Option<&TransactionKey>,
        request: &SipMessage,
        stateless: Option<Destination>,
        reply: Reply<'_>,
    ) -> Result<(), UasError> {
        let mut headers = Vec::with_capacity(reply.headers.len() + 1);
        headers.extend_from_slice(reply.headers);
        if !self.server_header.is_empty() {
            headers.push(("Server".to_owned(), self.server_header.clone()));
        }
        let response = response_message(
            request,
            reply.status,
            reply.reason,
            reply.to_tag,
            &headers,
            reply.body,
        );
        tracing::debug!(status = reply.status, method = %request.method(), call_id = %request.call_id(), "response");
        match key {
            Some(key) => {
                if reply.status >= 200 {
                    if let Some((timed, received)) = self.timed.remove(key) {
                        let status = reply.status;
                        self.observe(match timed {
                            Timed::Invite => Observation::InviteAnswered { status, received },
                            Timed::Register => Observation::RegisterAnswered { status, received },
                        });
                    }
                }
                // The transaction keeps the message and retransmits its octets.
                self.transactions
                    .send_response(now.instant, key, response)?;
            }
            None => {
                if let Some(destination) = stateless {
                    self.push(destination, response.bytes().to_vec());
                }
            }
        }
        Ok(())
    }

    fn send_request(
        &mut self,
        now: Now,
        request: SipMessage,
        destination: Destination,
    ) -> Result<TransactionKey, UasError> {
        let reliability = if destination.is_reliable() {
            Reliability::Reliable
        } else {
            Reliability::Unreliable
        };
        let key = TransactionKey::client_for_request(&request)?;
        self.client_routes.insert(key.clone(), destination);
        match self
            .transactions
            .send_request(now.instant, request, reliability)
        {
            Ok(key) => Ok(key),
            Err(error) => {
                self.client_routes.remove(&key);
                Err(error.into())
            }
        }
    }

    /// Moves the layer's transmissions to the outbox: each message's own
    /// octets, to the route of its transaction.
    fn flush(&mut self) {
        while let Some(transmit) = self.transactions.poll_transmit() {
            let routes = if transmit.message.is_request() {
                &self.client_routes
            } else {
                &self.server_routes
            };
            match routes.get(&transmit.key) {
                Some(destination) => {
                    let destination = *destination;
                    self.push(destination, transmit.message.bytes().to_vec());
                }
                None => tracing::warn!(key = ?transmit.key, "transmission without a route dropped"),
            }
        }
    }

    fn forget(&mut self, key: &TransactionKey) {
        self.server_routes.remove(key);
        self.client_routes.remove(key);
        self.requests.remove(key);
        self.timed.remove(key);
    }
}

/// An authentication failure's answer.
struct Refusal {
    status: u16,
    reason: &'static str,
    headers: Vec<(String, String)>,
    /// How much later it goes out (a user name guessed at from many sources).
    delay: Duration,
}

/// Most answers held back at once; beyond, a slowed answer is not sent at
/// all (the guesser learns nothing, a real client retransmits).
const MAX_DELAYED: usize = 1024;

/// The request being processed.
struct Current {
    message: SipMessage,
    /// How and when it came.
    arrival: Arrival,
}

/// How and when a request came: a [`Current`] without its message while
/// the message is in the transaction layer. The message comes back with
/// the layer's event (`Request`, `Ack` or `StrayAck`), not as a copy
/// (cloning every request to keep one was 5 % of the core's time).
struct Arrival {
    flow: Flow,
    destination: Destination,
    /// The Request-URI as written, which digest `uri` must equal.
    request_uri: String,
    /// Who sent it, when it was authenticated before the transaction layer
    /// saw it (see `handle_request`); verifying again would trip the
    /// nonce-count replay check.
    identity: Option<Authenticated>,
    /// When it arrived (before queueing), for latency metrics.
    received: Instant,
}

impl Arrival {
    fn with(self, message: SipMessage) -> Current {
        Current {
            message,
            arrival: self,
        }
    }
}

/// The SIP request-handling core. See the [module documentation](self).
pub struct Uas {
    config: UasConfig,
    policy: RequestPolicy,
    wire: Wire,
    registrar: Registrar,
    auth: Authenticator,
    store: Box<dyn BindingStore>,
    handler: Option<Box<dyn CallHandler>>,
    /// Slowed authentication answers and when they are due, in due order
    /// (the delay is one constant).
    delayed: VecDeque<(Instant, Outbound)>,
    /// REGISTERs whose binding changes are written but not yet synced, in
    /// order: answered at the next commit.
    uncommitted: Vec<register::Uncommitted>,
    /// The REGISTERs the sync in flight covers, in order (`None`: no sync
    /// is running).
    syncing: Option<Vec<register::Uncommitted>>,
    /// The list of the last group answered, emptied: the next sync's
    /// `uncommitted`. Two lists take turns, as the journal's buffers do,
    /// so a busy core does not allocate one of a group's size per sync.
    answered: Vec<register::Uncommitted>,
    /// A sync begun and not yet taken by the driver.
    sync_out: Option<SyncJob>,
    /// When the last sync began (see [`UasConfig::sync_gap`]).
    sync_began: Option<Instant>,
    /// Whether the registrar is a cache of a shared store, and how fresh.
    location: LocationCache,
    /// The edge role for phones registered here, when nodes share the
    /// location service (Path with flow tokens).
    edge: Option<edge::Edge>,
}

/// The registrar as a cache of a shared location store (see
/// [`crate::registrar::Follower`]): trusted while the store is followed,
/// and for `stale_after` once it is lost. Each address-of-record's view
/// carries the store's version, so an older view arriving late (a
/// follower's read overtaken by this node's own commit) never replaces a
/// newer one.
#[derive(Debug, Default)]
struct LocationCache {
    /// `None`: the registrar is the location service itself.
    stale_after: Option<std::time::Duration>,
    /// When the follower lost the store, if it has not caught up since.
    lost_at: Option<Instant>,
    /// The version of each address-of-record's bindings held.
    versions: HashMap<Aor, u64>,
    /// While the follower reads the whole store: this node's commits since
    /// it began, which the read may lack.
    committed_while_reading: Option<HashMap<Aor, u64>>,
}

impl LocationCache {
    /// Whether the registrar is a cache of a shared store.
    fn is_shared(&self) -> bool {
        self.stale_after.is_some()
    }

    fn trusted(&self, now: Instant) -> bool {
        match (self.stale_after, self.lost_at) {
            (Some(bound), Some(lost_at)) => now.saturating_duration_since(lost_at) <= bound,
            _ => true,
        }
    }

    /// Whether `versioned` is newer than what is held (and notes it).
    fn newer(&mut self, versioned: &Versioned) -> bool {
        let held = self
            .versions
            .entry(versioned.record.aor.clone())
            .or_default();
        if versioned.version <= *held {
            return false;
        }
        *held = versioned.version;
        true
    }
}

impl std::fmt::Debug for Uas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uas")
            .field("transactions", &self.wire.transactions.len())
            .field("registrations", &self.registrar.len())
            .field("call_handler", &self.handler.is_some())
            .finish_non_exhaustive()
    }
}

impl Uas {
    /// A core with these settings, registrar (rebuilt from the store's
    /// records), authenticator and store.
    pub fn new(
        config: UasConfig,
        registrar: Registrar,
        auth: Authenticator,
        store: Box<dyn BindingStore>,
    ) -> Uas {
        let wire = Wire {
            transactions: TransactionLayer::new(config.timers, TryingPolicy::default()),
            server_header: config.server.clone(),
            server_routes: ShardedMap::new(),
            client_routes: ShardedMap::new(),
            requests: ShardedMap::new(),
            outbox: VecDeque::new(),
            holds: VecDeque::new(),
            timed: HashMap::new(),
            observations: VecDeque::new(),
        };
        Uas {
            policy: RequestPolicy {
                supported_option_tags: SUPPORTED.iter().map(|t| (*t).to_owned()).collect(),
            },
            config,
            wire,
            registrar,
            auth,
            store,
            handler: None,
            delayed: VecDeque::new(),
            uncommitted: Vec::new(),
            syncing: None,
            answered: Vec::new(),
            sync_out: None,
            sync_began: None,
            location: LocationCache::default(),
            edge: None,
        }
    }

    /// Makes this node the edge of the phones registering through it:
    /// it puts itself in their Path with a flow token and forwards what
    /// other nodes send them through it (see [`edge`]).
    pub fn set_edge(&mut self, edge: edge::Edge) {
        self.edge = Some(edge);
    }

    /// Makes the registrar a cache of a shared location store, fed by
    /// [`Input::Location`]: it starts lost (trusted for `stale_after`)
    /// until the follower's first full read arrives.
    pub fn set_shared_location(&mut self, now: Now, stale_after: std::time::Duration) {
        self.location = LocationCache {
            stale_after: Some(stale_after),
            lost_at: Some(now.instant),
            versions: HashMap::new(),
            committed_while_reading: None,
        };
    }

    /// [`Input::Location`]: another node's change, the store's whole view
    /// after a (re)connection, or its loss.
    pub fn handle_location(&mut self, now: Now, update: LocationUpdate) {
        match update {
            LocationUpdate::Reading => {
                self.location.committed_while_reading = Some(HashMap::new());
            }
            LocationUpdate::All(records) => {
                // The read is the truth (versions included: a store that
                // lost its data counts from 1 again), except for what this
                // node committed while it was being made, unless the read
                // already has that or newer.
                let mine = self
                    .location
                    .committed_while_reading
                    .take()
                    .unwrap_or_default();
                self.location.versions = records
                    .iter()
                    .map(|v| (v.record.aor.clone(), v.version))
                    .collect();
                let mut adopted: Vec<Record> = records.into_iter().map(|v| v.record).collect();
                for (aor, version) in mine {
                    let held = self.location.versions.entry(aor.clone()).or_default();
                    if version > *held {
                        *held = version;
                        adopted.retain(|r| r.aor != aor);
                        adopted.push(Record {
                            bindings: Arc::new(self.registrar.bindings_of(now.wall, &aor)),
                            aor,
                        });
                    }
                }
                self.registrar.adopt_all(now.wall, adopted);
                self.location.lost_at = None;
            }
            LocationUpdate::One(versioned) => {
                // An emptied address-of-record keeps its version (one entry
                // per user seen): an older view arriving late stays out.
                if self.location.newer(&versioned) {
                    self.registrar.adopt(now.wall, versioned.record);
                }
            }
            LocationUpdate::Lost => {
                self.location.lost_at.get_or_insert(now.instant);
            }
        }
    }

    /// Adopts what the store holds after this node's own commit.
    fn adopt_committed(&mut self, now: Now) {
        for versioned in self.store.take_committed() {
            if let Some(mine) = &mut self.location.committed_while_reading {
                mine.insert(versioned.record.aor.clone(), versioned.version);
            }
            if self.location.newer(&versioned) {
                self.registrar.adopt(now.wall, versioned.record);
            }
        }
    }

    /// Installs the call handler (the B2BUA).
    pub fn set_call_handler(&mut self, handler: Box<dyn CallHandler>) {
        self.handler = Some(handler);
    }

    /// The authenticator, e.g. to reload its users.
    pub fn authenticator_mut(&mut self) -> &mut Authenticator {
        &mut self.auth
    }

    /// The registrar (location service).
    pub fn registrar(&self) -> &Registrar {
        &self.registrar
    }

    /// Number of live transactions.
    pub fn transactions(&self) -> usize {
        self.wire.transactions.len()
    }

    /// Handles one [`Input`]; then drain [`Uas::poll_output`].
    pub fn handle_input(&mut self, now: Now, input: Input) {
        match input {
            Input::Received { inbound, received } => self.handle_received(now, inbound, received),
            Input::Media(input) => self.handle_media(now, input),
            Input::Timeout => self.handle_timeout(now),
            Input::Commit => self.commit(now),
            Input::CommitNow => self.commit_now(now),
            Input::Synced(job) => self.synced(now, job),
            Input::Location(update) => self.handle_location(now, update),
        }
    }

    /// Processes one received message.
    pub fn handle_inbound(&mut self, now: Now, inbound: Inbound) {
        self.handle_received(now, inbound, now.instant);
    }

    /// Processes one message that arrived at `received` (it may have
    /// waited in a queue since): latencies count from then.
    pub fn handle_received(&mut self, now: Now, inbound: Inbound, received: Instant) {
        let message = match parse_with(&inbound.bytes, self.config.limits) {
            Ok(message) => message,
            Err(error) => {
                tracing::debug!(%error, "unparseable message");
                if let Some(response) = build_error_response(&error) {
                    let destination = match error.top_via() {
                        Some(via) => self.destination(&via, &inbound.flow),
                        None => inbound.flow.reply_destination(),
                    };
                    self.wire.push(destination, response);
                }
                return;
            }
        };
        if message.is_request() {
            let request_uri = request_uri_text(&inbound.bytes);
            self.handle_request(now, message, inbound.flow, request_uri, received);
        } else {
            self.handle_response(now, message);
        }
    }

    /// Fires every timer due at `now`: transactions, binding expiry and the
    /// call handler's.
    pub fn handle_timeout(&mut self, now: Now) {
        while self
            .delayed
            .front()
            .is_some_and(|(due, _)| *due <= now.instant)
        {
            if let Some((_, outbound)) = self.delayed.pop_front() {
                self.wire.outbox.push_back(outbound);
            }
        }
        self.wire.transactions.handle_timeout(now.instant);
        self.drain(now, None);
        if self
            .registrar
            .poll_timeout()
            .is_some_and(|at| at <= now.wall)
        {
            for (aor, binding) in self.registrar.handle_timeout(now.wall) {
                self.wire
                    .observe(Observation::Registration(Event::RegistrationExpired {
                        aor: aor.as_str().to_owned(),
                        contact: binding.contact,
                    }));
            }
        }
        if self.next_sync_at().is_some_and(|at| at <= now.instant) {
            self.commit(now);
        }
        let ran = self.with_call_handler(now, |handler, sip| {
            if handler.poll_timeout().is_some_and(|at| at <= now.instant) {
                handler.handle_timeout(now, sip);
            }
        });
        if ran {
            self.drain(now, None);
        }
    }

    /// Hands the call handler one input that is not SIP (a media result, a
    /// manager event, a dialplan, a shutdown step, a query ...) and flushes
    /// what it sent. Without a call handler the input is dropped.
    pub fn handle_media(&mut self, now: Now, input: LinkInput) {
        if self.with_call_handler(now, |handler, sip| handler.handle_media(now, input, sip)) {
            self.drain(now, None);
        }
    }

    /// The next deadline; `now` converts the wall-clock expiry of bindings.
    pub fn poll_timeout(&self, now: Now) -> Option<Instant> {
        let expiry = self
            .registrar
            .poll_timeout()
            .map(|at| now.instant + at.duration_since(now.wall).unwrap_or(Duration::ZERO));
        [
            self.wire.transactions.poll_timeout(),
            self.delayed.front().map(|(due, _)| *due),
            expiry,
            self.handler.as_ref().and_then(|h| h.poll_timeout()),
            self.next_sync_at(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Outbound> {
        self.wire.outbox.pop_front()
    }

    /// The sync to run, if one was begun (see [`Output::Sync`]).
    pub fn poll_sync(&mut self) -> Option<SyncJob> {
        self.sync_out.take()
    }

    /// Whether a sync handed out by [`Uas::poll_sync`] has not come back.
    pub fn sync_in_flight(&self) -> bool {
        self.syncing.is_some()
    }

    /// The next request for the RTP managers from the call handler.
    pub fn poll_media_request(&mut self) -> Option<MediaRequest> {
        self.handler.as_mut()?.poll_media_request()
    }

    /// The next thing for the driver to do, messages first: what
    /// [`poll_transmit`](Self::poll_transmit) and
    /// [`poll_media_request`](Self::poll_media_request) give, in one enum.
    pub fn poll_output(&mut self) -> Option<Output> {
        if let Some(job) = self.poll_sync() {
            return Some(Output::Sync(job));
        }
        if let Some(outbound) = self.poll_transmit() {
            return Some(Output::Transmit(outbound));
        }
        if let Some((connection, until)) = self.wire.holds.pop_front() {
            return Some(Output::HoldOpen(connection, until));
        }
        self.poll_media_request().map(Output::Media)
    }

    /// The next thing the core reports for metrics and events; take them
    /// after sending, so that latencies include the sending.
    pub fn poll_observation(&mut self) -> Option<Observation> {
        self.wire.observations.pop_front()
    }

    /// The sizes of the core's tables.
    pub fn gauges(&self) -> CoreGauges {
        CoreGauges {
            transactions: self.wire.transactions.len() as u64,
            bindings: self.registrar.bindings_len() as u64,
            aors: self.registrar.len() as u64,
        }
    }

    /// Where a response to a request with this top Via goes.
    fn destination(&self, via: &Via, flow: &Flow) -> Destination {
        match flow {
            Flow::Stream { .. } => flow.reply_destination(),
            Flow::Udp { remote } => {
                if self.config.force_rport {
                    return Destination::Udp(*remote);
                }
                Destination::Udp(crate::sip::response_destination(
                    via,
                    *remote,
                    &flow.transport(),
                ))
            }
        }
    }

    fn handle_request(
        &mut self,
        now: Now,
        mut message: SipMessage,
        flow: Flow,
        request_uri: String,
        received: Instant,
    ) {
        if self.config.force_rport
            && matches!(flow, Flow::Udp { .. })
            && !message.top_via().has_rport()
        {
            // An empty rport is what stamp_received fills with the source port.
            message.top_via_mut().set_param("rport", None);
        }
        message.stamp_received(flow.remote());
        let destination = self.destination(message.top_via(), &flow);
        let is_ack = *message.method() == Method::Ack;
        if let Some(routed) = self
            .edge
            .as_ref()
            .and_then(|edge| edge.route_request(&message, &flow, &request_uri))
        {
            // Routed through this node to or from a phone registered here:
            // forwarded statelessly; the phone authenticates with whoever
            // handles the request at the other end.
            match routed {
                edge::Routed::Forward(outbound) => {
                    tracing::debug!(method = %message.method(), call_id = %message.call_id().as_str(), to = %outbound.destination.remote(), "request forwarded on a phone's flow (edge)");
                    self.wire.outbox.push_back(outbound);
                }
                edge::Routed::Refuse(status, reason) if !is_ack => {
                    let rejection = crate::sip::Rejection {
                        status,
                        reason: reason.to_owned(),
                        extra_headers: Vec::new(),
                    };
                    self.wire
                        .push(destination, build_rejection(&message, &rejection));
                }
                edge::Routed::Refuse(..) => {}
            }
            return;
        }
        if let Err(rejection) = check_request_with(&message, &self.policy) {
            tracing::debug!(status = rejection.status, reason = %rejection.reason, "request rejected");
            if !is_ack {
                self.wire
                    .push(destination, build_rejection(&message, &rejection));
            }
            return;
        }
        let mut current = Current {
            message,
            arrival: Arrival {
                flow,
                destination,
                request_uri,
                identity: None,
                received,
            },
        };
        let key = match TransactionKey::server_for_request(&current.message) {
            Ok(key) => key,
            // A request without an RFC 3261 branch (RFC 2543) is answered
            // statelessly: the To tag is derived from the request, so a
            // retransmission gets the same answer.
            Err(error) => {
                tracing::debug!(%error, "request handled without a transaction");
                return self.process(now, None, None, current);
            }
        };
        let retransmission = self.wire.transactions.contains(&key);
        if !retransmission && needs_authentication(current.message.method()) {
            // Challenged statelessly, as Kamailio's auth_challenge +
            // sl_send_reply: a refusal creates no server transaction,
            // so it is sent once per request received and never
            // retransmitted towards a source that may be spoofed
            // (an INVITE transaction would repeat a 407 until Timer H,
            // 11 times). The To tag is derived from the request, so
            // the ACK of a 407 matches it; it arrives as a stray ACK
            // and is dropped.
            match self.authenticate(now, &current) {
                Ok(identity) => current.arrival.identity = Some(identity),
                Err(refusal) => {
                    self.refuse(now, None, &current, refusal);
                    return;
                }
            }
        }
        let reliability = if flow.is_reliable() {
            Reliability::Reliable
        } else {
            Reliability::Unreliable
        };
        let Current { message, arrival } = current;
        // With a key, the layer takes every request (a new transaction, a
        // retransmission, an ACK) and refuses none of these methods.
        let key = match self.wire.transactions.handle_keyed_request(
            now.instant,
            key,
            message,
            reliability,
        ) {
            Ok(key) => key,
            Err(error) => {
                tracing::warn!(%error, "request with a transaction key refused by the transaction layer; dropped");
                return;
            }
        };
        if self.wire.transactions.contains(&key) {
            self.wire.server_routes.get_or_insert(key, destination);
        }
        self.drain(now, Some(arrival));
    }

    fn handle_response(&mut self, now: Now, message: SipMessage) {
        if let Some(outbound) = self
            .edge
            .as_ref()
            .and_then(|edge| edge.route_response(&message))
        {
            tracing::debug!(status = message.status().unwrap_or_default(), call_id = %message.call_id().as_str(), to = %outbound.destination.remote(), "response forwarded back (edge)");
            self.wire.outbox.push_back(outbound);
            return;
        }
        if message.vias().len() != 1 {
            // RFC 3261 §18.1.2: a response with more Vias than ours is not for us.
            tracing::debug!("response with several Vias dropped");
            return;
        }
        let call_id = message.call_id().clone();
        match self.wire.transactions.handle_response(now.instant, message) {
            Ok(Some(_)) => {}
            Ok(None) => {
                tracing::debug!(%call_id, "response matching no transaction dropped");
                return;
            }
            Err(error) => {
                tracing::debug!(%error, "response dropped");
                return;
            }
        }
        self.drain(now, None);
    }

    /// Flushes transmissions and handles the layer's events; `arrival` is
    /// the context of the request being processed, whose message comes
    /// back with its event.
    fn drain(&mut self, now: Now, mut arrival: Option<Arrival>) {
        loop {
            self.wire.flush();
            let Some(event) = self.wire.transactions.poll_event() else {
                break;
            };
            match event {
                LayerEvent::Request {
                    key,
                    cancels,
                    request,
                } => match arrival.take() {
                    Some(arrival) => self.process(now, Some(key), cancels, arrival.with(request)),
                    None => tracing::warn!(?key, "request event without its arrival"),
                },
                LayerEvent::Ack { key, request } => {
                    if let Some(arrival) = arrival.take() {
                        self.ack(now, Some(key), arrival.with(request));
                    }
                }
                LayerEvent::StrayAck { request } => {
                    if let Some(arrival) = arrival.take() {
                        self.ack(now, None, arrival.with(request));
                    }
                }
                LayerEvent::Response { key, response } => {
                    self.call_event(now, CallEvent::Response { key, response });
                }
                LayerEvent::Timeout { key, timer } => {
                    tracing::debug!(?key, ?timer, "transaction timeout");
                    self.call_event(now, CallEvent::Timeout { key, timer });
                }
                LayerEvent::TransportError { key } => {
                    tracing::debug!(?key, "transaction transport error");
                }
                LayerEvent::Terminated { key } => {
                    let handed_over = self.wire.requests.contains_key(&key)
                        || self.wire.client_routes.contains_key(&key);
                    self.wire.forget(&key);
                    if handed_over {
                        self.call_event(now, CallEvent::Terminated { key });
                    }
                }
            }
        }
    }

    fn call_event(&mut self, now: Now, event: CallEvent) {
        self.with_call_handler(now, |handler, sip| handler.handle_event(now, event, sip));
    }

    /// Runs `act` on the call handler with the SIP actions it answers
    /// through (the handler is taken out meanwhile, so it may borrow the
    /// wire); `false` when there is no handler.
    fn with_call_handler(
        &mut self,
        now: Now,
        act: impl FnOnce(&mut dyn CallHandler, &mut SipActions<'_>),
    ) -> bool {
        let Some(mut handler) = self.handler.take() else {
            return false;
        };
        let mut sip = SipActions {
            now,
            wire: &mut self.wire,
            registrar: &self.registrar,
            location_trusted: self.location.trusted(now.instant),
            sent: Vec::new(),
        };
        act(handler.as_mut(), &mut sip);
        self.handler = Some(handler);
        true
    }

    fn ack(&mut self, now: Now, key: Option<TransactionKey>, current: Current) {
        self.call_event(
            now,
            CallEvent::Ack {
                key,
                request: current.message,
                flow: current.arrival.flow,
            },
        );
    }

    /// The UAS logic for a new request.
    fn process(
        &mut self,
        now: Now,
        key: Option<TransactionKey>,
        cancels: Option<TransactionKey>,
        current: Current,
    ) {
        let method = current.message.method().clone();
        match method {
            Method::Ack => self.ack(now, None, current),
            Method::Register => {
                if let Some(key) = &key {
                    self.wire
                        .timed
                        .insert(key.clone(), (Timed::Register, current.arrival.received));
                }
                self.register(now, key, current);
            }
            Method::Options => {
                let headers = capabilities();
                self.reply(now, key.as_ref(), &current, Reply::new(200, "OK", &headers));
            }
            Method::Invite
            | Method::Bye
            | Method::Cancel
            | Method::Update
            | Method::Info
            | Method::Refer
            | Method::Prack => self.call_request(now, key, cancels, current),
            Method::Subscribe | Method::Notify | Method::Publish | Method::Message => {
                let headers = vec![("Allow".to_owned(), ALLOW.to_owned())];
                self.reply(
                    now,
                    key.as_ref(),
                    &current,
                    Reply::new(405, "Method Not Allowed", &headers),
                );
            }
            Method::Extension(_) => {
                let headers = vec![("Allow".to_owned(), ALLOW.to_owned())];
                self.reply(
                    now,
                    key.as_ref(),
                    &current,
                    Reply::new(501, "Not Implemented", &headers),
                );
            }
        }
    }

    /// INVITE and the requests of a dialog: authentication, then the call
    /// handler, or the documented answers without one.
    fn call_request(
        &mut self,
        now: Now,
        key: Option<TransactionKey>,
        cancels: Option<TransactionKey>,
        current: Current,
    ) {
        let method = current.message.method().clone();
        let identity = if !needs_authentication(&method) {
            Authenticated::NotRequired
        } else if let Some(identity) = current.arrival.identity.clone() {
            identity
        } else {
            match self.authenticate(now, &current) {
                Ok(identity) => identity,
                Err(refusal) => {
                    self.refuse(now, key.as_ref(), &current, refusal);
                    return;
                }
            }
        };
        if method == Method::Invite && current.message.to_tag().is_none() {
            if let Some(key) = &key {
                self.wire
                    .timed
                    .insert(key.clone(), (Timed::Invite, current.arrival.received));
                self.wire.observe(Observation::CallStarted);
            }
        }
        if method == Method::Cancel {
            // §9.2: the CANCEL itself is answered at once, 481 when it matches nothing.
            let (status, reason) = if cancels.is_some() {
                (200, "OK")
            } else {
                (481, "Call/Transaction Does Not Exist")
            };
            self.reply(now, key.as_ref(), &current, Reply::new(status, reason, &[]));
            if cancels.is_none() || self.handler.is_none() {
                return;
            }
        }
        match (&key, self.handler.is_some()) {
            (Some(key), true) => {
                self.wire
                    .requests
                    .insert(key.clone(), current.message.clone());
                self.call_event(
                    now,
                    CallEvent::Request {
                        key: key.clone(),
                        request: current.message,
                        flow: current.arrival.flow,
                        identity,
                        cancels,
                    },
                );
            }
            _ if method == Method::Cancel => {}
            _ if method == Method::Invite => {
                let headers = vec![(
                    "Warning".to_owned(),
                    "399 switchboard \"no call routing in this version\"".to_owned(),
                )];
                self.reply(
                    now,
                    key.as_ref(),
                    &current,
                    Reply::new(480, "Temporarily Unavailable", &headers),
                );
            }
            _ => self.reply(
                now,
                key.as_ref(),
                &current,
                Reply::new(481, "Call/Transaction Does Not Exist", &[]),
            ),
        }
    }

    /// Verifies credentials for the request's method; on failure returns
    /// the status, reason and headers of the answer.
    fn authenticate(&mut self, now: Now, current: &Current) -> Result<Authenticated, Refusal> {
        let method = current.message.method().as_str();
        let header = crate::auth::credentials_header(method);
        let values: Vec<&str> = current.message.header_values(header).collect();
        // Several credentials (one per realm) may be present: use ours.
        let value = values
            .iter()
            .find(|v| {
                crate::auth::Credentials::parse(v)
                    .ok()
                    .is_some_and(|c| c.get("realm") == Some(self.config.realm.as_str()))
            })
            .or(values.first())
            .copied();
        let source = current.arrival.flow.remote().ip();
        let lockouts = self.auth.lockouts();
        let verified = self.auth.verify(
            now.wall,
            method,
            &current.arrival.request_uri,
            value,
            source,
        );
        if self.auth.lockouts() > lockouts {
            self.wire.observe(Observation::LockedOut);
        }
        match verified {
            Ok(identity) => Ok(identity),
            Err(failure) => {
                if let Some(reason) = failure_reason(&failure) {
                    self.wire.observe(Observation::AuthFailed { reason });
                }
                tracing::debug!(?failure, %source, method, "authentication failed");
                if failure == crate::auth::AuthFailure::LockedOut {
                    tracing::info!(method, "request refused: authentication lockout in force");
                }
                let user = claimed_user(&current.message, value);
                let answer = self
                    .auth
                    .answer(now.wall, method, user.as_deref(), &failure);
                let reason = match answer.status {
                    401 => "Unauthorized",
                    407 => "Proxy Authentication Required",
                    403 => "Forbidden",
                    _ => "Bad Request (malformed credentials)",
                };
                let headers = answer
                    .header_name
                    .map(|name| {
                        answer
                            .header_values
                            .iter()
                            .map(|value| (name.to_owned(), value.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                let delay = match failure {
                    crate::auth::AuthFailure::Slowed(delay) => delay,
                    _ => Duration::ZERO,
                };
                Err(Refusal {
                    status: answer.status,
                    reason,
                    headers,
                    delay,
                })
            }
        }
    }

    /// Sends an authentication refusal, at once or after its delay. A
    /// delayed one is always stateless (it was refused before the
    /// transaction layer), so its octets can simply be held back.
    fn refuse(
        &mut self,
        now: Now,
        key: Option<&TransactionKey>,
        current: &Current,
        refusal: Refusal,
    ) {
        let queued = self.wire.outbox.len();
        self.reply(
            now,
            key,
            current,
            Reply::new(refusal.status, refusal.reason, &refusal.headers),
        );
        if refusal.delay.is_zero() || key.is_some() || self.wire.outbox.len() != queued + 1 {
            return;
        }
        if let Some(outbound) = self.wire.outbox.pop_back() {
            if self.delayed.len() < MAX_DELAYED {
                self.delayed
                    .push_back((now.instant + refusal.delay, outbound));
            } else {
                tracing::debug!("slowed authentication answer dropped: too many held back");
            }
        }
    }

    fn reply(
        &mut self,
        now: Now,
        key: Option<&TransactionKey>,
        current: &Current,
        reply: Reply<'_>,
    ) {
        if let Err(error) = self.wire.respond(
            now,
            key,
            &current.message,
            Some(current.arrival.destination),
            reply,
        ) {
            tracing::warn!(%error, "response not sent");
        }
    }
}

/// The user name a request claims, to pick the algorithm it is challenged
/// with: its credentials' `username`, else the To user of a REGISTER (the
/// address of record) or the From user of anything else (the caller).
fn claimed_user(message: &SipMessage, credentials: Option<&str>) -> Option<String> {
    if let Some(name) = credentials
        .and_then(|v| crate::auth::Credentials::parse(v).ok())
        .and_then(|c| c.get("username").map(str::to_owned))
    {
        return Some(name);
    }
    if *message.method() == Method::Register {
        message.to().uri.user()
    } else {
        message.from().uri.user()
    }
}

/// How an authentication failure is counted; `None` for a challenge (no
/// credentials yet, or a stale nonce), which is how digest starts.
fn failure_reason(failure: &crate::auth::AuthFailure) -> Option<&'static str> {
    use crate::auth::AuthFailure;
    match failure {
        AuthFailure::Missing | AuthFailure::Stale => None,
        AuthFailure::Malformed(_) => Some("malformed"),
        AuthFailure::Rejected => Some("rejected"),
        AuthFailure::Slowed(_) => Some("slowed"),
        AuthFailure::Replay => Some("replay"),
        AuthFailure::LockedOut => Some("locked_out"),
    }
}

/// Whether requests of `method` go through [`Uas::authenticate`]: REGISTER
/// and the call requests except CANCEL, which cannot be challenged (RFC 3261
/// §22.1: it could not be resubmitted). ACK is never challenged.
fn needs_authentication(method: &Method) -> bool {
    matches!(
        method,
        Method::Register
            | Method::Invite
            | Method::Bye
            | Method::Update
            | Method::Info
            | Method::Prack
    )
}

/// The headers of an OPTIONS answer (RFC 3261 §11.2).
fn capabilities() -> Vec<(String, String)> {
    vec![
        ("Allow".to_owned(), ALLOW.to_owned()),
        ("Accept".to_owned(), "application/sdp".to_owned()),
        ("Accept-Encoding".to_owned(), "identity".to_owned()),
        ("Accept-Language".to_owned(), "en".to_owned()),
        ("Supported".to_owned(), SUPPORTED.join(", ")),
    ]
}

/// The Request-URI exactly as written on the start line (after any leading
/// CRLFs), which the digest `uri` parameter must repeat.
fn request_uri_text(bytes: &[u8]) -> String {
    let start = bytes
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(bytes.len());
    let line_end = bytes[start..]
        .iter()
        .position(|b| *b == b'\r' || *b == b'\n')
        .map_or(bytes.len(), |i| start + i);
    String::from_utf8_lossy(&bytes[start..line_end])
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}
