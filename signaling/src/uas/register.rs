//! REGISTER (RFC 3261 §10.3): authentication, the registrar, durable
//! bindings, the 200 with every current Contact.

use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::auth::Authenticated;
use crate::events::Event;
use crate::registrar::{
    Aor, Binding, Change, ContactInput, Decision, Persist, RegisterRequest, Registered,
    RegisteredContact, Source, SyncJob, Transport, Q,
};
use crate::transaction::TransactionKey;
use crate::transport::Flow;

use super::{Current, Now, Observation, Reply, Uas};

/// One binding as the REST API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegistrationView {
    /// The address-of-record, `user@domain`.
    pub aor: String,
    /// The contact URI.
    pub contact: String,
    /// Seconds left.
    pub expires: u32,
    /// When the binding expires (RFC 3339, UTC).
    pub expires_at: String,
    /// When the contact was first registered (RFC 3339, UTC); for bindings
    /// stored before this was kept, their last refresh.
    pub registered_at: String,
    /// When it was last registered or refreshed (RFC 3339, UTC).
    pub updated_at: String,
    /// The address and port the REGISTER came from.
    pub source: String,
    /// The transport it came over: `udp`, `tcp`, `tls`, `ws` or `wss`.
    pub transport: &'static str,
    /// The User-Agent of the REGISTER, when it had one.
    pub user_agent: Option<String>,
    /// `+sip.instance` (RFC 5626), when given.
    pub instance: Option<String>,
    /// `reg-id` (RFC 5626), when given with an instance.
    pub reg_id: Option<u32>,
    /// The Path (RFC 3327) towards the contact, in order.
    pub path: Vec<String>,
    /// The q-value, when the UA gave one.
    pub q: Option<String>,
    /// The signaling node the phone registered through, when nodes share
    /// registrations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl RegistrationView {
    fn of(aor: &Aor, binding: Binding, now: SystemTime) -> RegistrationView {
        RegistrationView {
            aor: aor.as_str().to_owned(),
            expires: binding.remaining(now),
            expires_at: rfc3339(binding.expires_at),
            registered_at: rfc3339(binding.registered_at.unwrap_or(binding.updated_at)),
            updated_at: rfc3339(binding.updated_at),
            source: binding.source.addr.to_string(),
            transport: match binding.source.transport {
                Transport::Udp => "udp",
                Transport::Tcp => "tcp",
                Transport::Tls => "tls",
                Transport::Ws => "ws",
                Transport::Wss => "wss",
            },
            user_agent: binding.user_agent,
            instance: binding.instance,
            reg_id: binding.reg_id,
            path: binding.path,
            q: binding.q.map(|q| q.to_string()),
            node: binding.node,
            contact: binding.contact,
        }
    }
}

/// Why an operator's query or unregister of one address-of-record failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationError {
    /// The text is not an address-of-record.
    #[error("`{0}` is not an address-of-record (user@domain or a SIP URI)")]
    InvalidAor(String),
    /// The address-of-record has no unexpired binding.
    #[error("no registration for {0}")]
    NotFound(String),
    /// The removal could not be stored, so it was undone.
    #[error("the change could not be stored")]
    NotStored,
    /// A sync of the store is running; ask again when it has ended.
    #[error("the binding store is busy; try again")]
    Busy,
}

/// Seconds a REGISTER refused for an unreachable location store is asked
/// to wait (Retry-After).
const STORE_RETRY_AFTER: u32 = 5;

impl Uas {
    /// Every unexpired binding, by address-of-record.
    pub fn registrations(&self, now: Now) -> Vec<RegistrationView> {
        self.registrar
            .records()
            .into_iter()
            .flat_map(|record| {
                let aor = record.aor;
                record
                    .bindings
                    .iter()
                    .filter(|b| b.expires_at > now.wall)
                    .map(move |b| RegistrationView::of(&aor, b.clone(), now.wall))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The unexpired bindings of one address-of-record.
    pub fn registrations_of(
        &self,
        now: Now,
        aor: &str,
    ) -> Result<Vec<RegistrationView>, RegistrationError> {
        let aor = self
            .registrar
            .parse_aor(aor)
            .map_err(|_| RegistrationError::InvalidAor(aor.to_owned()))?;
        let views: Vec<RegistrationView> = self
            .registrar
            .bindings_of(now.wall, &aor)
            .into_iter()
            .map(|b| RegistrationView::of(&aor, b, now.wall))
            .collect();
        if views.is_empty() {
            return Err(RegistrationError::NotFound(aor.as_str().to_owned()));
        }
        Ok(views)
    }

    /// Removes every binding of one address-of-record and stores the
    /// removal (fsynced) before returning how many bindings went; on a
    /// store failure the bindings stay. Returns the normalised
    /// address-of-record with the count.
    pub fn unregister(
        &mut self,
        now: Now,
        aor: &str,
    ) -> Result<(String, usize), RegistrationError> {
        let aor = self
            .registrar
            .parse_aor(aor)
            .map_err(|_| RegistrationError::InvalidAor(aor.to_owned()))?;
        let persist = self
            .registrar
            .remove(now.wall, &aor)
            .ok_or_else(|| RegistrationError::NotFound(aor.as_str().to_owned()))?;
        if self.syncing.is_some() {
            // Its sync would race the one running; the driver waits for
            // that one first.
            self.registrar.revert(persist);
            return Err(RegistrationError::Busy);
        }
        let removed = persist.previous_len();
        let events = binding_events(aor.as_str(), &persist, now.wall);
        if let Err(error) = self.store.write(&persist) {
            tracing::error!(%error, "cannot store an operator's unregister; bindings kept");
            self.registrar.revert(persist);
            return Err(RegistrationError::NotStored);
        }
        // The operator waits for this one: sync now, on this thread, which
        // also commits the REGISTERs written before it.
        if let Err(error) = self.store.sync() {
            tracing::error!(%error, "cannot store an operator's unregister; bindings kept");
            self.registrar.revert(persist);
            self.settle(now, Err(&error));
            return Err(RegistrationError::NotStored);
        }
        self.adopt_committed(now);
        self.settle(now, Ok(()));
        for event in events {
            self.wire.observe(Observation::Registration(event));
        }
        self.compact_if_due();
        tracing::info!(aor = %aor.as_str(), removed, "registration removed through the REST API");
        Ok((aor.as_str().to_owned(), removed))
    }

    pub(super) fn register(&mut self, now: Now, key: Option<TransactionKey>, current: Current) {
        let verified = match current.arrival.identity.clone() {
            Some(identity) => Ok(identity),
            None => self.authenticate(now, &current),
        };
        let identity = match verified {
            Ok(identity) => identity,
            Err(refusal) => {
                self.refuse(now, key.as_ref(), &current, refusal);
                return;
            }
        };
        if let Authenticated::User { username, .. } = &identity {
            // Credentials for one user must not bind another user's address.
            if current.message.to().uri.user().as_deref() != Some(username.as_str()) {
                tracing::info!("REGISTER refused: To user differs from the authenticated user");
                self.reply(
                    now,
                    key.as_ref(),
                    &current,
                    Reply::new(
                        403,
                        "Forbidden (To user is not the authenticated user)",
                        &[],
                    ),
                );
                return;
            }
        }
        let request = match register_request(&current) {
            Ok(mut request) => {
                // This node holds the phone's flow: other nodes reach the
                // phone through it (stored, not echoed in the 200).
                if let Some(edge) = &self.edge {
                    request
                        .path
                        .insert(0, edge.path_entry(&current.arrival.flow));
                }
                request
            }
            Err(reason) => {
                self.reply(now, key.as_ref(), &current, Reply::new(400, reason, &[]));
                return;
            }
        };
        let decision = self.registrar.handle_register(now.wall, &request);
        let (status, reason, headers) = match decision {
            Decision::Ok(mut registered) => {
                tracing::debug!(aor = %registered.aor.as_str(), contacts = registered.contacts.len(), "registered");
                if let Flow::Stream { connection, .. } = current.arrival.flow {
                    // Reached only through this connection: open as long
                    // as the bindings last (and a little more, for the
                    // phone's refresh to arrive before the idle timer).
                    let longest = registered.contacts.iter().map(|c| c.expires).max();
                    if let Some(seconds) = longest.filter(|s| *s > 0) {
                        let until = now.instant + Duration::from_secs(u64::from(seconds) + 30);
                        self.wire.holds.push_back((connection, until));
                    }
                }
                let headers = contact_headers(&registered, self.edge.is_some());
                let persist = match registered.persist.take() {
                    Some(persist) => match self.store.write(&persist) {
                        Ok(()) => Some(persist),
                        Err(error) => {
                            tracing::error!(%error, "cannot store a binding change; REGISTER answered 500");
                            self.registrar.revert(persist);
                            self.reply(
                                now,
                                key.as_ref(),
                                &current,
                                Reply::new(500, "Server Internal Error (bindings not stored)", &[]),
                            );
                            return;
                        }
                    },
                    None => None,
                };
                let events = persist.as_ref().map_or_else(Vec::new, |persist| {
                    binding_events(registered.aor.as_str(), persist, now.wall)
                });
                // The 200 waits for the sync covering its change; one that
                // changed nothing waits too when it lists changes not yet
                // synced (written, or in the sync running), and keeps its
                // place in line either way.
                if persist.is_some() || !self.uncommitted.is_empty() || self.syncing.is_some() {
                    self.uncommitted.push(Uncommitted {
                        key,
                        current,
                        persist,
                        events,
                        headers,
                        aor: registered.aor.clone(),
                    });
                    return;
                }
                (200, "OK", headers)
            }
            Decision::IntervalTooBrief { min_expires } => (
                423,
                "Interval Too Brief",
                vec![("Min-Expires".to_owned(), min_expires.to_string())],
            ),
            Decision::BadRequest { reason } => (400, reason, Vec::new()),
            Decision::NotFound => (404, "Not Found (domain not served here)", Vec::new()),
            Decision::ServerError { reason } => (500, reason, Vec::new()),
            Decision::TooManyContacts { max } => {
                tracing::info!(
                    max,
                    "REGISTER refused: too many contacts for one address-of-record"
                );
                (
                    403,
                    "Forbidden (too many contacts for this address-of-record)",
                    vec![(
                        "Warning".to_owned(),
                        format!("399 switchboard \"at most {max} contacts per address-of-record\""),
                    )],
                )
            }
        };
        self.reply(
            now,
            key.as_ref(),
            &current,
            Reply::new(status, reason, &headers),
        );
    }

    /// [`super::Input::Commit`]: begins the sync of the binding changes
    /// written since the last one began, unless one is running (they are
    /// the next one's then). When the journal is due for compaction the
    /// sync runs here, on the core's thread, so that the registrar's state
    /// is all durable at the switch (once per compaction, not per commit).
    pub(super) fn commit(&mut self, now: Now) {
        if self.next_sync_at().is_some_and(|at| at > now.instant) {
            // Too soon after the last one: a timer begins it.
            return;
        }
        self.commit_now(now);
    }

    /// [`super::Input::CommitNow`]: [`Uas::commit`] without the gap after
    /// the last sync (the server is stopping: nothing is left to gather).
    pub(super) fn commit_now(&mut self, now: Now) {
        if self.syncing.is_some() || self.uncommitted.is_empty() {
            return;
        }
        if self.compaction_due() {
            let synced = self.store.sync();
            if synced.is_ok() {
                self.adopt_committed(now);
            }
            self.settle(now, synced.as_ref().map(|_| ()));
            self.compact_if_due();
            return;
        }
        match self.store.begin_sync() {
            Some(job) => {
                // The REGISTERs that arrive during this sync go into the
                // list of the last group answered: grown from nothing, each
                // doubling moved every waiting request (3.6 % of the core's
                // time at 14,000 REGISTERs/s), and a new list of this
                // one's size per sync made glibc consolidate its free
                // lists (2.4 %).
                self.syncing = Some(std::mem::replace(
                    &mut self.uncommitted,
                    std::mem::take(&mut self.answered),
                ));
                self.sync_out = Some(job);
                self.sync_began = Some(now.instant);
            }
            // Nothing written: they only waited for the syncs before them.
            None => self.settle(now, Ok(())),
        }
    }

    /// [`super::Input::Synced`]: answers the REGISTERs the sync covered
    /// and begins the next with what was written meanwhile. A failed sync
    /// also takes the changes written after it began (the store forgot
    /// them with it): every one is undone and refused.
    pub(super) fn synced(&mut self, now: Now, job: SyncJob) {
        let outcome = self.store.finish_sync(job);
        let Some(settled) = self.syncing.take() else {
            tracing::warn!("a sync came back that the core did not begin");
            return;
        };
        match outcome {
            Ok(()) => {
                self.adopt_committed(now);
                self.answer(now, settled, Ok(()));
                if self.uncommitted.is_empty() {
                    self.compact_if_due();
                } else {
                    self.commit(now);
                }
            }
            Err(error) => {
                let mut all = settled;
                all.append(&mut self.uncommitted);
                self.answer(now, all, Err(&error));
            }
        }
    }

    /// Answers the REGISTERs waiting for no sync in flight (see
    /// [`Uas::answer`]): the ones a sync on this thread covered.
    fn settle(&mut self, now: Now, synced: Result<(), &crate::registrar::StoreError>) {
        let settled = std::mem::take(&mut self.uncommitted);
        self.answer(now, settled, synced);
    }

    /// Answers REGISTERs once the sync covering them is known: 200 and
    /// their binding events when it succeeded; otherwise their changes are
    /// undone, newest first (each restores what the one before it left),
    /// and each is answered 500 (503 when a shared store is out of reach).
    fn answer(
        &mut self,
        now: Now,
        mut settled: Vec<Uncommitted>,
        synced: Result<(), &crate::registrar::StoreError>,
    ) {
        if settled.is_empty() {
            return;
        }
        match synced {
            Ok(()) => {
                let shared = self.location.is_shared();
                for mut entry in settled.drain(..) {
                    for event in entry.events {
                        self.wire.observe(Observation::Registration(event));
                    }
                    if shared {
                        // What the store holds now (adopted at the commit):
                        // another node's contact for the same user too.
                        let mut headers =
                            contact_lines(&self.registrar.contacts(&entry.aor, now.wall));
                        headers.extend(entry.headers.into_iter().filter(|(n, _)| n != "Contact"));
                        entry.headers = headers;
                    }
                    self.reply(
                        now,
                        entry.key.as_ref(),
                        &entry.current,
                        Reply::new(200, "OK", &entry.headers),
                    );
                }
            }
            Err(error) => {
                for entry in settled.iter_mut().rev() {
                    if let Some(persist) = entry.persist.take() {
                        self.registrar.revert(persist);
                    }
                }
                // A shared store out of reach is a passing condition: 503
                // asks the phone to retry (RFC 3261 §21.5.4); a local store
                // that cannot write is a server fault.
                let (status, reason, headers) = if error.is_unavailable() {
                    tracing::warn!(%error, registers = settled.len(), "location store unavailable; REGISTERs answered 503");
                    (
                        503,
                        "Service Unavailable (location store unreachable)",
                        vec![("Retry-After".to_owned(), STORE_RETRY_AFTER.to_string())],
                    )
                } else {
                    tracing::error!(%error, registers = settled.len(), "cannot sync binding changes; their REGISTERs answered 500");
                    (
                        500,
                        "Server Internal Error (bindings not stored)",
                        Vec::new(),
                    )
                };
                for entry in settled.drain(..) {
                    self.reply(
                        now,
                        entry.key.as_ref(),
                        &entry.current,
                        Reply::new(status, reason, &headers),
                    );
                }
            }
        }
        if settled.capacity() > self.answered.capacity() {
            self.answered = settled;
        }
        // The answers are in their transactions: move them to the outbox.
        self.drain(now, None);
    }

    /// Compacts the journal once it holds many more records than there are
    /// addresses-of-record, so restarts replay little. Only called with
    /// nothing unsynced.
    fn compact_if_due(&mut self) {
        if !self.compaction_due() || !self.uncommitted.is_empty() || self.syncing.is_some() {
            return;
        }
        match self.store.compact(self.registrar.records()) {
            Ok(()) => tracing::debug!(records = self.registrar.len(), "registrar store compacted"),
            Err(error) => {
                tracing::warn!(%error, "registrar store compaction failed; the journal keeps growing")
            }
        }
    }

    /// When the waiting REGISTERs' sync may begin, if a gap after the last
    /// one holds it back: `None` while one runs or none waits.
    pub(super) fn next_sync_at(&self) -> Option<Instant> {
        if self.syncing.is_some() || self.uncommitted.is_empty() {
            return None;
        }
        self.sync_began.map(|began| began + self.config.sync_gap)
    }

    /// Whether the journal holds many more records than there are
    /// addresses-of-record and no compaction is being written.
    fn compaction_due(&mut self) -> bool {
        let due = self
            .config
            .compact_after
            .max(self.registrar.len().saturating_mul(2));
        self.store.journal_records() >= due && !self.store.compacting()
    }
}

/// A REGISTER whose binding change is written to the store but not yet
/// synced: its 200 (or its 500, if the sync fails) waits for the commit.
pub(super) struct Uncommitted {
    key: Option<TransactionKey>,
    current: Current,
    /// The change, to revert if the sync fails; `None` for a REGISTER that
    /// changed nothing but lists changes still uncommitted.
    persist: Option<Persist>,
    events: Vec<Event>,
    /// The 200's Contact and Path headers.
    headers: Vec<(String, String)>,
    /// Whose bindings the 200 lists: with a shared store they are listed
    /// again after the commit, other nodes' contacts included.
    aor: Aor,
}

/// The 200's headers: every current Contact with its expiry, then the Path.
fn contact_headers(registered: &Registered, own_path: bool) -> Vec<(String, String)> {
    let mut headers = contact_lines(&registered.contacts);
    // RFC 3327 §5.3: the Path received is echoed; this node's own entry
    // (it is the edge of the phone's flow) is not something the phone sent.
    headers.extend(
        registered
            .path
            .iter()
            .skip(usize::from(own_path))
            .map(|p| ("Path".to_owned(), p.clone())),
    );
    headers
}

/// One Contact header per binding, with its expiry, q, instance, reg-id.
fn contact_lines(contacts: &[RegisteredContact]) -> Vec<(String, String)> {
    contacts
        .iter()
        .map(|c| {
            // Written in place: a `format!` per parameter was a string
            // of its own, allocated and freed, for every REGISTER.
            let mut value = format!("<{}>;expires={}", c.uri, c.expires);
            if let Some(q) = c.q {
                let _ = write!(value, ";q={q}");
            }
            if let Some(instance) = &c.instance {
                let _ = write!(value, ";+sip.instance={instance}");
            }
            if let Some(reg_id) = c.reg_id {
                let _ = write!(value, ";reg-id={reg_id}");
            }
            ("Contact".to_owned(), value)
        })
        .collect()
}

/// The events of a stored change to the bindings of `aor`.
fn binding_events(aor: &str, persist: &Persist, now: SystemTime) -> Vec<Event> {
    persist
        .changes()
        .into_iter()
        .map(|(change, binding)| {
            let aor = aor.to_owned();
            let contact = binding.contact.clone();
            let expires_in_secs = u64::from(binding.remaining(now));
            match change {
                Change::Added => Event::RegistrationAdded {
                    aor,
                    contact,
                    expires_in_secs,
                },
                Change::Refreshed => Event::RegistrationRefreshed {
                    aor,
                    contact,
                    expires_in_secs,
                },
                Change::Removed => Event::RegistrationRemoved { aor, contact },
            }
        })
        .collect()
}

/// Reads what the registrar needs from a REGISTER.
fn register_request(current: &Current) -> Result<RegisterRequest, &'static str> {
    let message = &current.message;
    let contacts = if message.contact_is_wildcard() {
        vec![ContactInput::uri("*")]
    } else {
        message
            .contacts()
            .iter()
            .map(|contact| {
                let q = match contact.param("q") {
                    Some(Some(text)) => {
                        Some(Q::parse(&text).map_err(|_| "Bad Request (invalid q-value)")?)
                    }
                    Some(None) => return Err("Bad Request (q without a value)"),
                    None => None,
                };
                Ok(ContactInput {
                    uri: contact.uri.to_string(),
                    expires: contact.expires(),
                    q,
                    instance: contact.sip_instance(),
                    reg_id: contact.reg_id(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    Ok(RegisterRequest {
        aor: message.to().uri.to_string(),
        contacts,
        expires: message.expires(),
        call_id: message.call_id().as_str().to_owned(),
        cseq: message.cseq().seq,
        path: message.header_list("Path"),
        source: Source {
            transport: match current.arrival.flow {
                Flow::Udp { .. } => Transport::Udp,
                Flow::Stream { kind, .. } => match kind {
                    crate::transport::Stream::Tcp => Transport::Tcp,
                    crate::transport::Stream::Tls => Transport::Tls,
                    crate::transport::Stream::Ws => Transport::Ws,
                    crate::transport::Stream::Wss => Transport::Wss,
                },
            },
            addr: current.arrival.flow.remote(),
        },
        user_agent: message.header("User-Agent").map(str::to_owned),
    })
}

/// `2026-12-05T16:00:00.000Z`: a wall-clock time in RFC 3339, UTC.
pub fn rfc3339(time: SystemTime) -> String {
    let millis = time
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let secs = i64::try_from(millis / 1000).unwrap_or(i64::MAX);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        millis % 1000
    )
}

#[cfg(test)]
mod time_tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::rfc3339;

    #[test]
    fn rfc3339_formats_utc_with_milliseconds_across_leap_days() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_700_000_000_250)),
            "2023-11-14T22:13:20.250Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(4_107_542_399)),
            "2100-02-28T23:59:59.000Z"
        );
    }
}
