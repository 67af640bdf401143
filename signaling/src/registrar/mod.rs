//! RFC 3261 §10 registrar and location service.
//!
//! [`Registrar`] is a sans-IO core: the driver turns a REGISTER into a
//! [`RegisterRequest`], calls [`Registrar::handle_register`] with the current
//! wall-clock time and gets a [`Decision`]. A 200 decision that changed
//! bindings carries a [`Persist`]: the driver writes its record to the
//! [`Store`] journal and sends the 200 only after a sync covering it (one
//! fsync for every record written meanwhile: group commit), so nothing
//! acknowledged is lost in a crash; if the write or the sync fails it calls
//! [`Registrar::revert`] (newest change first) and answers 500. Expired bindings are purged by
//! [`Registrar::handle_timeout`] at the deadline given by
//! [`Registrar::poll_timeout`].
//!
//! Time here is [`SystemTime`], not `Instant`: bindings outlive the process,
//! and an expiry stored in the journal must still mean the same moment after
//! a restart.

mod shared_store;
mod store;

pub use shared_store::{
    field_updates, record_of, Announcement, Follower, Keys, LocationUpdate, RedisStore, RedisSync,
    RedisTarget, SharedLocation, Versioned, REDIS_TIMEOUT,
};
pub use store::{JournalSync, Store, StoreError};

/// A sync of a binding store in progress: begun on the SIP core's thread,
/// run where waiting for the disk or for Redis stalls nothing else
/// ([`SyncJob::run`]), and handed back to the store that began it with
/// its outcome. The core goes on meanwhile; the 200s the sync covers wait
/// for its outcome.
#[derive(Debug)]
pub enum SyncJob {
    /// An `fdatasync` of the node's own journal.
    Journal(JournalSync),
    /// A pipeline of changes to the shared store.
    Shared(Box<RedisSync>),
    /// Nothing to wait for: the outcome is known already (a shared store
    /// that failed less than a second ago; test doubles).
    Ready(Result<(), StoreError>),
}

impl SyncJob {
    /// Does the blocking part. Run it once, off the core's thread.
    pub fn run(&mut self) {
        match self {
            SyncJob::Journal(job) => job.run(),
            SyncJob::Shared(job) => job.run(),
            SyncJob::Ready(_) => {}
        }
    }
}

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// Errors of the registrar core.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistrarError {
    /// The address-of-record is not `user@domain` (or `user` with a default domain).
    #[error("invalid address-of-record {0:?}")]
    InvalidAor(String),
    /// A q-value outside 0–1 or with more than three decimals.
    #[error("invalid q-value {0:?}")]
    InvalidQ(String),
}

/// A normalised address-of-record: `user@domain`, the domain lowercased
/// (hosts compare case-insensitively, users do not, RFC 3261 §19.1.4).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Aor(String);

impl Aor {
    /// Parses `sip:user@domain`, `sips:user@domain`, `user@domain` or, with a
    /// default domain, a bare `user`. URI parameters, headers and a port are dropped.
    pub fn parse(text: &str, default_domain: Option<&str>) -> Result<Self, RegistrarError> {
        let invalid = || RegistrarError::InvalidAor(text.to_string());
        let trimmed = text.trim().trim_start_matches('<').trim_end_matches('>');
        let without_scheme = ["sip:", "sips:"]
            .iter()
            .find_map(|scheme| {
                trimmed
                    .get(..scheme.len())
                    .filter(|prefix| prefix.eq_ignore_ascii_case(scheme))
                    .map(|_| &trimmed[scheme.len()..])
            })
            .unwrap_or(trimmed);
        let bare = without_scheme.split([';', '?']).next().unwrap_or_default();
        let (user, domain) = match bare.rsplit_once('@') {
            Some((user, host)) => (user, host.to_string()),
            None => (bare, default_domain.ok_or_else(invalid)?.to_string()),
        };
        // Drop a port; a bare IPv6 literal has colons but no brackets and keeps them.
        let domain = match domain.rsplit_once(':') {
            Some((host, port))
                if port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']')) =>
            {
                host.to_string()
            }
            _ => domain,
        };
        if user.is_empty()
            || domain.is_empty()
            || user.contains(char::is_whitespace)
            || domain.contains(char::is_whitespace)
        {
            return Err(invalid());
        }
        Ok(Self(format!("{user}@{}", domain.to_ascii_lowercase())))
    }

    /// The `user@domain` text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The domain part.
    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map(|(_, d)| d).unwrap_or_default()
    }
}

/// A q-value in thousandths (RFC 3261 §20.10: `0` to `1` with up to three decimals).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Q(u16);

impl Q {
    /// The highest priority, also used for contacts without a q-value.
    pub const MAX: Q = Q(1000);

    /// Parses `0`, `0.5`, `1.000` …
    pub fn parse(text: &str) -> Result<Self, RegistrarError> {
        let invalid = || RegistrarError::InvalidQ(text.to_string());
        let (int, frac) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
        if frac.len() > 3 || !frac.chars().all(|c| c.is_ascii_digit()) {
            return Err(invalid());
        }
        let whole: u16 = match int {
            "0" => 0,
            "1" => 1000,
            _ => return Err(invalid()),
        };
        let frac_value: u16 = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<3}").parse().map_err(|_| invalid())?
        };
        if whole == 1000 && frac_value != 0 {
            return Err(invalid());
        }
        Ok(Self(whole + frac_value))
    }

    /// The value in thousandths.
    pub fn thousandths(self) -> u16 {
        self.0
    }
}

impl std::fmt::Display for Q {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            1000 => write!(f, "1"),
            v => {
                let text = format!("0.{v:03}");
                write!(f, "{}", text.trim_end_matches('0').trim_end_matches('.'))
            }
        }
    }
}

/// The transport a REGISTER arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
    /// WebSocket.
    Ws,
    /// Secure WebSocket.
    Wss,
}

impl From<Transport> for crate::sip::Transport {
    fn from(transport: Transport) -> crate::sip::Transport {
        match transport {
            Transport::Udp => crate::sip::Transport::Udp,
            Transport::Tcp => crate::sip::Transport::Tcp,
            Transport::Tls => crate::sip::Transport::Tls,
            Transport::Ws => crate::sip::Transport::Ws,
            Transport::Wss => crate::sip::Transport::Wss,
        }
    }
}

/// Where a REGISTER came from: the address the B2BUA must send to in order
/// to reach a user behind NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Source {
    /// The transport.
    pub transport: Transport,
    /// The source IP address and port.
    pub addr: SocketAddr,
}

/// One Contact of a REGISTER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactInput {
    /// The contact URI without its header parameters, or `*`.
    pub uri: String,
    /// The `expires` parameter.
    pub expires: Option<u32>,
    /// The `q` parameter.
    pub q: Option<Q>,
    /// The `+sip.instance` parameter (RFC 5626), as received.
    pub instance: Option<String>,
    /// The `reg-id` parameter (RFC 5626).
    pub reg_id: Option<u32>,
}

impl ContactInput {
    /// A contact with only a URI.
    pub fn uri(uri: impl Into<String>) -> Self {
        Self {
            uri: uri.into(),
            expires: None,
            q: None,
            instance: None,
            reg_id: None,
        }
    }
}

/// The parts of a REGISTER the registrar needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterRequest {
    /// The To URI (the address-of-record), as text.
    pub aor: String,
    /// The Contact values; empty for a query.
    pub contacts: Vec<ContactInput>,
    /// The Expires header.
    pub expires: Option<u32>,
    /// The Call-ID.
    pub call_id: String,
    /// The CSeq number.
    pub cseq: u32,
    /// The Path header values, in order (RFC 3327).
    pub path: Vec<String>,
    /// Where the request came from.
    pub source: Source,
    /// The User-Agent header, shown to operators.
    pub user_agent: Option<String>,
}

/// A stored binding of an address-of-record to a contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The contact URI.
    pub contact: String,
    /// The q-value, if the UA gave one.
    pub q: Option<Q>,
    /// When the binding expires.
    #[serde(with = "unix_millis")]
    pub expires_at: SystemTime,
    /// When it was last registered or refreshed (a tie-breaker for equal q).
    #[serde(with = "unix_millis")]
    pub updated_at: SystemTime,
    /// The Call-ID of the REGISTER that made it.
    pub call_id: String,
    /// The CSeq of that REGISTER.
    pub cseq: u32,
    /// `+sip.instance`, kept for outbound and GRUU.
    pub instance: Option<String>,
    /// `reg-id`, kept for outbound.
    pub reg_id: Option<u32>,
    /// The Path values to use as a route set towards the contact.
    pub path: Vec<String>,
    /// The address the REGISTER came from.
    pub source: Source,
    /// The User-Agent of the REGISTER that made or last refreshed it.
    /// Absent in records stored before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// When the contact was first registered (refreshes keep it). Absent
    /// in records stored before it was kept.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "unix_millis_opt"
    )]
    pub registered_at: Option<SystemTime>,
    /// The signaling node the REGISTER came through, when registrations
    /// are shared between nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Binding {
    fn key(&self) -> BindingKey<'_> {
        binding_key(&self.contact, self.instance.as_deref(), self.reg_id)
    }

    /// The name of this binding within its address-of-record in a shared
    /// store: equal for two bindings exactly when one replaces the other
    /// (same instance and reg-id, or the same contact URI).
    pub fn store_field(&self) -> String {
        match self.key() {
            BindingKey::Flow(instance, reg_id) => format!("flow:{reg_id}:{instance}"),
            BindingKey::Uri(uri) => format!("uri:{}", uri.normalised()),
        }
    }

    /// Seconds left before expiry, rounded down.
    pub fn remaining(&self, now: SystemTime) -> u32 {
        let secs = self
            .expires_at
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        u32::try_from(secs).unwrap_or(u32::MAX)
    }
}

fn binding_key<'a>(uri: &'a str, instance: Option<&'a str>, reg_id: Option<u32>) -> BindingKey<'a> {
    match (instance, reg_id) {
        (Some(instance), Some(reg_id)) => BindingKey::Flow(instance, reg_id),
        _ => BindingKey::Uri(ContactUri::split(uri)),
    }
}

/// How bindings of one address-of-record are told apart: by instance and
/// reg-id when both are present (RFC 5626 §6), otherwise by contact URI.
/// Borrowed from the binding or the Contact: the merge of a REGISTER
/// compares keys once per contact and binding, and building a normalised
/// copy of each URI for every comparison was 3 % of the SIP core's time at
/// 14,000 REGISTERs/s.
#[derive(Debug, Clone, Copy)]
enum BindingKey<'a> {
    Flow(&'a str, u32),
    Uri(ContactUri<'a>),
}

impl PartialEq for BindingKey<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (BindingKey::Flow(a, a_id), BindingKey::Flow(b, b_id)) => a == b && a_id == b_id,
            (BindingKey::Uri(a), BindingKey::Uri(b)) => a == b,
            _ => false,
        }
    }
}

/// A cheap approximation of §19.1.4 URI comparison: scheme and host compare
/// case-insensitively, the user part and parameters exactly.
#[derive(Debug, Clone, Copy)]
struct ContactUri<'a> {
    scheme: &'a str,
    user: Option<&'a str>,
    host: &'a str,
    params: &'a str,
}

impl<'a> ContactUri<'a> {
    fn split(uri: &'a str) -> ContactUri<'a> {
        let uri = uri.trim().trim_start_matches('<').trim_end_matches('>');
        let (scheme, rest) = uri.split_once(':').unwrap_or(("", uri));
        let (user, host_and_params) = match rest.rsplit_once('@') {
            Some((user, host)) => (Some(user), host),
            None => (None, rest),
        };
        let (host, params) = match host_and_params.find([';', '?']) {
            Some(index) => host_and_params.split_at(index),
            None => (host_and_params, ""),
        };
        ContactUri {
            scheme,
            user,
            host,
            params,
        }
    }

    fn normalised(self) -> String {
        let mut out = self.scheme.to_ascii_lowercase();
        out.push(':');
        if let Some(user) = self.user {
            out.push_str(user);
            out.push('@');
        }
        out.push_str(&self.host.to_ascii_lowercase());
        out.push_str(self.params);
        out
    }
}

impl PartialEq for ContactUri<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.scheme.eq_ignore_ascii_case(other.scheme)
            && self.user == other.user
            && self.host.eq_ignore_ascii_case(other.host)
            && self.params == other.params
    }
}

/// Registrar settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrarConfig {
    /// Expiry when neither the contact nor the request gives one (§10.2.1.1: 3600 s).
    pub default_expires: u32,
    /// Shorter non-zero expiries are refused with 423 (§10.3 step 7).
    pub min_expires: u32,
    /// Longer expiries are shortened to this.
    pub max_expires: u32,
    /// Domains this registrar serves; empty serves any domain.
    pub domains: Vec<String>,
    /// The domain of an address-of-record given as a bare user.
    pub default_domain: Option<String>,
    /// Most bindings of one address-of-record: each is a branch when a call
    /// forks, so an unbounded set turns one INVITE into hundreds.
    pub max_contacts: usize,
    /// This node's id, noted on the bindings it makes, when several nodes
    /// share the location service.
    pub node: Option<String>,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        Self {
            default_expires: 3600,
            min_expires: 60,
            max_expires: 86_400,
            domains: Vec::new(),
            default_domain: None,
            max_contacts: 5,
            node: None,
        }
    }
}

/// A binding as listed in the Contact headers of a 200 response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredContact {
    /// The contact URI.
    pub uri: String,
    /// Seconds left, for the `expires` parameter.
    pub expires: u32,
    /// The q-value, for the `q` parameter.
    pub q: Option<Q>,
    /// `+sip.instance`, echoed.
    pub instance: Option<String>,
    /// `reg-id`, echoed.
    pub reg_id: Option<u32>,
}

/// One journal record: the complete binding set of an address-of-record
/// after a change. Replaying records in order rebuilds the location service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The address-of-record.
    pub aor: Aor,
    /// All its bindings; empty means it has none. Shared with the
    /// registrar, which never changes a set in place while it is shared:
    /// a compaction's snapshot of every address-of-record is a reference
    /// count each, not a copy of every binding on the core's thread (20 ms
    /// with 10,000 users, a stall of every REGISTER behind it).
    pub bindings: Arc<Vec<Binding>>,
}

/// A change the driver must make durable before it sends the 200.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persist {
    /// What to append to the journal.
    pub record: Record,
    /// The bindings before the change, for [`Registrar::revert`]: the set
    /// the registrar held, shared, unless some had expired.
    previous: Arc<Vec<Binding>>,
}

impl Persist {
    /// How many bindings the address-of-record had before the change.
    pub fn previous_len(&self) -> usize {
        self.previous.len()
    }

    /// What the change does to each binding it touches: new ones are
    /// added, changed ones refreshed, missing ones removed.
    pub fn changes(&self) -> Vec<(Change, &Binding)> {
        // Each key once, borrowed from its binding.
        fn keys(bindings: &[Binding]) -> Vec<BindingKey<'_>> {
            bindings.iter().map(Binding::key).collect()
        }
        let (now, before) = (keys(&self.record.bindings), keys(&self.previous));
        let mut changes = Vec::new();
        for (binding, key) in self.record.bindings.iter().zip(&now) {
            match before.iter().position(|k| k == key) {
                None => changes.push((Change::Added, binding)),
                Some(i) if self.previous[i] != *binding => {
                    changes.push((Change::Refreshed, binding));
                }
                Some(_) => {}
            }
        }
        for (binding, key) in self.previous.iter().zip(&before) {
            if !now.contains(key) {
                changes.push((Change::Removed, binding));
            }
        }
        changes
    }
}

/// What a [`Persist`] does to one binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A contact not bound before.
    Added,
    /// A bound contact registered again (new expiry, or other details).
    Refreshed,
    /// A contact unbound (expires 0, `Contact: *`, the operator).
    Removed,
}

/// The 200 answer to a REGISTER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The normalised address-of-record.
    pub aor: Aor,
    /// Every current binding, for the Contact headers (§10.3 step 8).
    pub contacts: Vec<RegisteredContact>,
    /// The Path values to echo (RFC 3327 §5.3).
    pub path: Vec<String>,
    /// Present when bindings changed: persist before answering.
    pub persist: Option<Persist>,
}

/// What to answer to a REGISTER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// 200 OK with the current bindings.
    Ok(Registered),
    /// 423 Interval Too Brief with this Min-Expires.
    IntervalTooBrief {
        /// The Min-Expires value.
        min_expires: u32,
    },
    /// 400 Bad Request with this reason phrase.
    BadRequest {
        /// The reason.
        reason: &'static str,
    },
    /// 404 Not Found: the domain is not served here (§10.3 step 5).
    NotFound,
    /// 500 Server Internal Error with this reason phrase (§10.3 step 7: out-of-order CSeq).
    ServerError {
        /// The reason.
        reason: &'static str,
    },
    /// 403 Forbidden: the request would leave more bindings than the limit.
    TooManyContacts {
        /// The limit per address-of-record.
        max: usize,
    },
}

impl Decision {
    /// The SIP status code of the decision.
    pub fn status(&self) -> u16 {
        match self {
            Self::Ok(_) => 200,
            Self::IntervalTooBrief { .. } => 423,
            Self::BadRequest { .. } => 400,
            Self::NotFound => 404,
            Self::ServerError { .. } => 500,
            Self::TooManyContacts { .. } => 403,
        }
    }
}

/// Why a REGISTER is refused, before it becomes a [`Decision`].
#[derive(Debug, Clone, Copy)]
enum Rejection {
    IntervalTooBrief(u32),
    BadRequest(&'static str),
    OutOfOrder,
    TooManyContacts(usize),
}

impl From<Rejection> for Decision {
    fn from(rejection: Rejection) -> Self {
        match rejection {
            Rejection::IntervalTooBrief(min_expires) => Decision::IntervalTooBrief { min_expires },
            Rejection::BadRequest(reason) => Decision::BadRequest { reason },
            Rejection::OutOfOrder => Decision::ServerError {
                reason: "Out of order CSeq",
            },
            Rejection::TooManyContacts(max) => Decision::TooManyContacts { max },
        }
    }
}

/// The registrar core and location service.
#[derive(Debug)]
pub struct Registrar {
    config: RegistrarConfig,
    bindings: BTreeMap<Aor, Arc<Vec<Binding>>>,
    /// When bindings expire, so that purging does not scan them all: one
    /// entry per address-of-record and expiry, standing for each of its
    /// bindings that expire then. Keyed by the address-of-record alone, a
    /// refresh moves one entry without building the binding's key.
    expiries: BTreeSet<(SystemTime, Aor)>,
    /// Bindings over all addresses-of-record.
    binding_count: usize,
}

impl Registrar {
    /// An empty registrar.
    pub fn new(config: RegistrarConfig) -> Self {
        Self {
            config,
            bindings: BTreeMap::new(),
            expiries: BTreeSet::new(),
            binding_count: 0,
        }
    }

    /// A registrar rebuilt from stored records (see [`Store::open`]);
    /// bindings already expired at `now` are dropped.
    pub fn from_records(
        config: RegistrarConfig,
        records: impl IntoIterator<Item = Record>,
        now: SystemTime,
    ) -> Self {
        let mut registrar = Self::new(config);
        for record in records {
            registrar.replace(record.aor, record.bindings);
        }
        // Bindings that expired while the server was down go unreported.
        let _ = registrar.handle_timeout(now);
        registrar
    }

    /// Every address-of-record with its bindings, for a snapshot.
    pub fn records(&self) -> Vec<Record> {
        self.bindings
            .iter()
            .map(|(aor, bindings)| Record {
                aor: aor.clone(),
                bindings: Arc::clone(bindings),
            })
            .collect()
    }

    /// Processes a REGISTER (§10.3 steps 5–8). Changes are applied at once;
    /// see [`Persist`] for making them durable.
    pub fn handle_register(&mut self, now: SystemTime, request: &RegisterRequest) -> Decision {
        let Ok(aor) = Aor::parse(&request.aor, self.config.default_domain.as_deref()) else {
            return Decision::BadRequest {
                reason: "Invalid To URI",
            };
        };
        if !self.config.domains.is_empty()
            && !self
                .config
                .domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(aor.domain()))
        {
            return Decision::NotFound;
        }
        let current = self.current(&aor, now);
        let new = if request.contacts.iter().any(|c| c.uri.trim() == "*") {
            match self.wildcard(request, &current) {
                Ok(new) => Arc::new(new),
                Err(rejection) => return rejection.into(),
            }
        } else if request.contacts.is_empty() {
            Arc::clone(&current)
        } else {
            match self.update(now, request, &current) {
                Ok(new) => Arc::new(new),
                Err(rejection) => return rejection.into(),
            }
        };
        let persist = (new != current).then(|| Persist {
            record: Record {
                aor: aor.clone(),
                bindings: Arc::clone(&new),
            },
            previous: current,
        });
        self.replace(aor.clone(), new);
        Decision::Ok(Registered {
            contacts: self.contacts(&aor, now),
            aor,
            path: request.path.clone(),
            persist,
        })
    }

    /// Undoes a change whose journal append failed.
    pub fn revert(&mut self, persist: Persist) {
        self.replace(persist.record.aor, persist.previous);
    }

    /// `Contact: *` (§10.3 step 6): valid only alone and with `Expires: 0`;
    /// removes every binding unless one has the same Call-ID and a CSeq not below the request's.
    fn wildcard(
        &self,
        request: &RegisterRequest,
        current: &[Binding],
    ) -> Result<Vec<Binding>, Rejection> {
        let star = &request.contacts[0];
        if request.contacts.len() != 1
            || request.expires != Some(0)
            || star.uri.trim() != "*"
            || star.expires.is_some()
            || star.q.is_some()
        {
            return Err(Rejection::BadRequest("Invalid wildcard Contact"));
        }
        if current
            .iter()
            .any(|b| b.call_id == request.call_id && request.cseq <= b.cseq)
        {
            return Err(Rejection::OutOfOrder);
        }
        Ok(Vec::new())
    }

    /// Adds, refreshes and removes contacts (§10.3 step 7), all or nothing.
    fn update(
        &self,
        now: SystemTime,
        request: &RegisterRequest,
        current: &[Binding],
    ) -> Result<Vec<Binding>, Rejection> {
        let with_reg_id = request
            .contacts
            .iter()
            .filter(|c| c.instance.is_some() && c.reg_id.is_some())
            .count();
        if with_reg_id > 0 && request.contacts.len() > 1 {
            // RFC 5626 §6 step 2: one flow per REGISTER.
            return Err(Rejection::BadRequest("Multiple Contacts with reg-id"));
        }
        if request.contacts.len() > self.config.max_contacts.saturating_add(current.len()) {
            // Beyond what any outcome could accept (short of duplicates and
            // removals of unknown contacts): refused before the quadratic merge.
            return Err(Rejection::TooManyContacts(self.config.max_contacts));
        }
        let expiries: Vec<u32> = request
            .contacts
            .iter()
            .map(|c| {
                c.expires
                    .or(request.expires)
                    .unwrap_or(self.config.default_expires)
            })
            .collect();
        if expiries
            .iter()
            .any(|&e| e != 0 && e < self.config.min_expires)
        {
            return Err(Rejection::IntervalTooBrief(self.config.min_expires));
        }
        let mut new: Vec<Binding> = current.to_vec();
        for (contact, expires) in request.contacts.iter().zip(expiries) {
            let key = binding_key(&contact.uri, contact.instance.as_deref(), contact.reg_id);
            if current
                .iter()
                .any(|b| b.key() == key && b.call_id == request.call_id && request.cseq <= b.cseq)
            {
                return Err(Rejection::OutOfOrder);
            }
            let existing = new.iter().position(|b| b.key() == key);
            let registered_at = existing
                .and_then(|index| new[index].registered_at)
                .unwrap_or(now);
            let binding = (expires > 0).then(|| Binding {
                contact: contact.uri.trim().to_string(),
                q: contact.q,
                expires_at: now
                    + Duration::from_secs(u64::from(expires.min(self.config.max_expires))),
                updated_at: now,
                call_id: request.call_id.clone(),
                cseq: request.cseq,
                instance: contact.instance.clone(),
                // RFC 5626 §6: reg-id without an instance is ignored.
                reg_id: contact.reg_id.filter(|_| contact.instance.is_some()),
                path: request.path.clone(),
                source: request.source,
                user_agent: request.user_agent.clone(),
                registered_at: Some(registered_at),
                node: self.config.node.clone(),
            });
            match (existing, binding) {
                (Some(index), Some(binding)) => new[index] = binding,
                (Some(index), None) => {
                    new.remove(index);
                }
                (None, Some(binding)) => new.push(binding),
                (None, None) => {}
            }
        }
        // Existing and new bindings count together (Kamailio's
        // max_contacts); a set already above the limit (the limit was
        // lowered) may still be refreshed or shrunk, never grown.
        if new.len() > self.config.max_contacts && new.len() > current.len() {
            return Err(Rejection::TooManyContacts(self.config.max_contacts));
        }
        Ok(new)
    }

    /// The unexpired bindings of `aor`: the held set itself when none has
    /// expired (the usual case: expired bindings are purged on time), so a
    /// REGISTER copies its address-of-record's bindings once, to change
    /// them, not twice.
    fn current(&self, aor: &Aor, now: SystemTime) -> Arc<Vec<Binding>> {
        match self.bindings.get(aor) {
            None => Arc::default(),
            Some(bindings) if bindings.iter().all(|b| b.expires_at > now) => Arc::clone(bindings),
            Some(bindings) => Arc::new(
                bindings
                    .iter()
                    .filter(|b| b.expires_at > now)
                    .cloned()
                    .collect(),
            ),
        }
    }

    /// The bindings of `aor` as a 200 to a REGISTER lists them (§10.3
    /// step 8), best first.
    pub fn contacts(&self, aor: &Aor, now: SystemTime) -> Vec<RegisteredContact> {
        self.sorted(aor, now)
            .into_iter()
            .map(|b| RegisteredContact {
                uri: b.contact.clone(),
                expires: b.remaining(now),
                q: b.q,
                instance: b.instance.clone(),
                reg_id: b.reg_id,
            })
            .collect()
    }

    fn sorted(&self, aor: &Aor, now: SystemTime) -> Vec<&Binding> {
        let mut bindings: Vec<&Binding> = self
            .bindings
            .get(aor)
            .map(|bindings| bindings.iter().filter(|b| b.expires_at > now).collect())
            .unwrap_or_default();
        bindings.sort_by(|a, b| {
            b.q.unwrap_or(Q::MAX)
                .cmp(&a.q.unwrap_or(Q::MAX))
                .then(b.updated_at.cmp(&a.updated_at))
        });
        bindings
    }

    /// The unexpired bindings for `target` (`user`, `user@domain` or a SIP
    /// URI), highest q first, most recently refreshed first among equals.
    pub fn lookup(&self, now: SystemTime, target: &str) -> Vec<&Binding> {
        match Aor::parse(target, self.config.default_domain.as_deref()) {
            Ok(aor) => self.sorted(&aor, now),
            Err(_) => Vec::new(),
        }
    }

    /// Parses an address-of-record the way REGISTER's To is parsed (a bare
    /// user takes the default domain).
    pub fn parse_aor(&self, text: &str) -> Result<Aor, RegistrarError> {
        Aor::parse(text, self.config.default_domain.as_deref())
    }

    /// The unexpired bindings of `aor`, in stored order.
    pub fn bindings_of(&self, now: SystemTime, aor: &Aor) -> Vec<Binding> {
        Arc::unwrap_or_clone(self.current(aor, now))
    }

    /// Removes every binding of `aor` (an operator's unregister). Like a
    /// REGISTER's change, the returned [`Persist`] must be appended to the
    /// store (or [`Registrar::revert`]ed), so a restart does not bring the
    /// bindings back. `None` when `aor` has no unexpired binding.
    pub fn remove(&mut self, now: SystemTime, aor: &Aor) -> Option<Persist> {
        let current = self.current(aor, now);
        if current.is_empty() {
            return None;
        }
        self.replace(aor.clone(), Arc::default());
        Some(Persist {
            record: Record {
                aor: aor.clone(),
                bindings: Arc::default(),
            },
            previous: current,
        })
    }

    /// Removes the bindings that expired at or before `now` and returns
    /// them with their address-of-record.
    pub fn handle_timeout(&mut self, now: SystemTime) -> Vec<(Aor, Binding)> {
        let mut purged = Vec::new();
        while self.expiries.first().is_some_and(|(at, _)| *at <= now) {
            let Some((at, aor)) = self.expiries.pop_first() else {
                break;
            };
            let Some(bindings) = self.bindings.get_mut(&aor) else {
                continue;
            };
            if bindings.iter().any(|b| b.expires_at == at) {
                // A copy only while a snapshot still shares the set.
                let expired = Arc::make_mut(bindings).extract_if(.., |b| b.expires_at == at);
                for binding in expired {
                    purged.push((aor.clone(), binding));
                    self.binding_count -= 1;
                }
            }
            if bindings.is_empty() {
                self.bindings.remove(&aor);
            }
        }
        purged
    }

    /// Takes what a shared store holds for one address-of-record (another
    /// node changed it): its unexpired bindings replace this registrar's.
    /// Nothing to persist: the store already has it.
    pub fn adopt(&mut self, now: SystemTime, record: Record) {
        let bindings = if record.bindings.iter().all(|b| b.expires_at > now) {
            record.bindings
        } else {
            Arc::new(
                record
                    .bindings
                    .iter()
                    .filter(|b| b.expires_at > now)
                    .cloned()
                    .collect(),
            )
        };
        self.replace(record.aor, bindings);
    }

    /// Takes a shared store's whole view: every address-of-record not in
    /// `records` loses its bindings.
    pub fn adopt_all(&mut self, now: SystemTime, records: Vec<Record>) {
        self.bindings.clear();
        self.expiries.clear();
        self.binding_count = 0;
        for record in records {
            self.adopt(now, record);
        }
    }

    /// When the next binding expires.
    pub fn poll_timeout(&self) -> Option<SystemTime> {
        self.expiries.first().map(|(at, _)| *at)
    }

    /// Number of bindings, over all addresses-of-record.
    pub fn bindings_len(&self) -> usize {
        self.binding_count
    }

    /// Number of addresses-of-record with at least one binding.
    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    /// Whether no address-of-record has a binding.
    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }

    fn replace(&mut self, aor: Aor, new: Arc<Vec<Binding>>) {
        // One key, its expiry changed in place: no copy of the
        // address-of-record for each entry removed.
        let mut entry = (SystemTime::UNIX_EPOCH, aor);
        if let Some(old) = self.bindings.remove(&entry.1) {
            self.binding_count -= old.len();
            for binding in old.iter() {
                entry.0 = binding.expires_at;
                self.expiries.remove(&entry);
            }
        }
        let (_, aor) = entry;
        if new.is_empty() {
            return;
        }
        self.binding_count += new.len();
        for binding in new.iter() {
            self.expiries.insert((binding.expires_at, aor.clone()));
        }
        self.bindings.insert(aor, new);
    }
}

/// Serialises a [`SystemTime`] as milliseconds since the Unix epoch.
mod unix_millis {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let millis = time
            .duration_since(UNIX_EPOCH)
            .map_err(serde::ser::Error::custom)?
            .as_millis();
        s.serialize_u64(u64::try_from(millis).map_err(serde::ser::Error::custom)?)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        Ok(UNIX_EPOCH + Duration::from_millis(u64::deserialize(d)?))
    }
}

/// [`unix_millis`] for an optional time.
mod unix_millis_opt {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        time: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match time {
            Some(time) => super::unix_millis::serialize(time, s),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?
            .map(|millis| std::time::UNIX_EPOCH + std::time::Duration::from_millis(millis)))
    }
}

#[cfg(test)]
mod tests;
