//! REGISTER (RFC 3261 §10.3): authentication, the registrar, durable
//! bindings, the 200 with every current Contact.

use serde::Serialize;

use crate::auth::Authenticated;
use crate::registrar::{ContactInput, Decision, RegisterRequest, Source, Transport, Q};
use crate::transaction::TransactionKey;
use crate::transport::Flow;

use super::{Current, Now, Reply, Uas};

/// One binding as the REST API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegistrationView {
    /// The address-of-record, `user@domain`.
    pub aor: String,
    /// The contact URI.
    pub contact: String,
    /// Seconds left.
    pub expires: u32,
    /// Where the REGISTER came from: `udp:192.0.2.1:5060`.
    pub source: String,
    /// The q-value, when the UA gave one.
    pub q: Option<String>,
}

impl Uas {
    /// Every unexpired binding, by address-of-record.
    pub fn registrations(&self, now: Now) -> Vec<RegistrationView> {
        self.registrar
            .records()
            .into_iter()
            .flat_map(|record| {
                let aor = record.aor.as_str().to_owned();
                record
                    .bindings
                    .into_iter()
                    .filter(|b| b.expires_at > now.wall)
                    .map(move |b| RegistrationView {
                        aor: aor.clone(),
                        expires: b.remaining(now.wall),
                        source: format!(
                            "{}:{}",
                            match b.source.transport {
                                Transport::Udp => "udp",
                                Transport::Tcp => "tcp",
                                Transport::Tls => "tls",
                                Transport::Ws => "ws",
                                Transport::Wss => "wss",
                            },
                            b.source.addr
                        ),
                        q: b.q.map(|q| q.to_string()),
                        contact: b.contact,
                    })
            })
            .collect()
    }

    pub(super) fn register(&mut self, now: Now, key: Option<TransactionKey>, current: Current) {
        let verified = match current.identity.clone() {
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
            Ok(request) => request,
            Err(reason) => {
                self.reply(now, key.as_ref(), &current, Reply::new(400, reason, &[]));
                return;
            }
        };
        let decision = self.registrar.handle_register(now.wall, &request);
        let (status, reason, headers) = match decision {
            Decision::Ok(registered) => {
                if let Some(persist) = registered.persist {
                    if let Err(error) = self.store.append(&persist.record) {
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
                    self.compact_if_due();
                }
                tracing::debug!(aor = %registered.aor.as_str(), contacts = registered.contacts.len(), "registered");
                let mut headers: Vec<(String, String)> = registered
                    .contacts
                    .iter()
                    .map(|c| {
                        let mut value = format!("<{}>;expires={}", c.uri, c.expires);
                        if let Some(q) = c.q {
                            value.push_str(&format!(";q={q}"));
                        }
                        if let Some(instance) = &c.instance {
                            value.push_str(&format!(";+sip.instance={instance}"));
                        }
                        if let Some(reg_id) = c.reg_id {
                            value.push_str(&format!(";reg-id={reg_id}"));
                        }
                        ("Contact".to_owned(), value)
                    })
                    .collect();
                headers.extend(
                    registered
                        .path
                        .iter()
                        .map(|p| ("Path".to_owned(), p.clone())),
                );
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

    /// Compacts the journal once it holds many more records than there are
    /// addresses-of-record, so restarts replay little.
    fn compact_if_due(&mut self) {
        let due = self
            .config
            .compact_after
            .max(self.registrar.len().saturating_mul(2));
        if self.store.journal_records() < due {
            return;
        }
        match self.store.compact(&self.registrar.records()) {
            Ok(()) => tracing::debug!(records = self.registrar.len(), "registrar store compacted"),
            Err(error) => {
                tracing::warn!(%error, "registrar store compaction failed; the journal keeps growing")
            }
        }
    }
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
            transport: match current.flow {
                Flow::Udp { .. } => Transport::Udp,
                Flow::Tcp { .. } => Transport::Tcp,
            },
            addr: current.flow.remote(),
        },
    })
}
