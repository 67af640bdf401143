//! The hook through which calls leave the request-handling core: the
//! B2BUA implements [`CallHandler`] and acts through [`SipActions`].

use std::time::Instant;

use crate::auth::Authenticated;
use crate::b2bua::{LinkInput, MediaRequest};
use crate::registrar::Binding;
use crate::sip::{SipMessage, Tag};
use crate::transaction::{Timer, TransactionKey};
use crate::transport::{Destination, Flow};

use super::{Now, UasError, Wire};

/// What the core passes to the call handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEvent {
    /// A new INVITE, BYE, CANCEL, UPDATE, INFO or PRACK (retransmissions
    /// absorbed, request checks and authentication passed). Answer it with
    /// [`SipActions::respond`] on `key`.
    Request {
        /// The server transaction.
        key: TransactionKey,
        /// The request, with `received`/`rport` stamped on its top Via.
        request: SipMessage,
        /// Where it came from.
        flow: Flow,
        /// Who sent it, as authentication established.
        identity: Authenticated,
        /// For a CANCEL: the INVITE server transaction it cancels, when it
        /// still exists. The core has already answered the CANCEL with 200;
        /// the handler answers the INVITE with 487.
        cancels: Option<TransactionKey>,
    },
    /// An ACK outside any transaction: the ACK for a 2xx, or for an INVITE
    /// in RFC 6026 Accepted (then `key` names it).
    Ack {
        /// The INVITE server transaction, when the ACK matched one.
        key: Option<TransactionKey>,
        /// The ACK.
        request: SipMessage,
        /// Where it came from.
        flow: Flow,
    },
    /// A response to a request sent with [`SipActions::send_request`].
    Response {
        /// The client transaction.
        key: TransactionKey,
        /// The response.
        response: SipMessage,
    },
    /// Timer B, F or H fired on this transaction.
    Timeout {
        /// The transaction.
        key: TransactionKey,
        /// Which timer.
        timer: Timer,
    },
    /// A transaction ended and was dropped; its key is no longer valid.
    Terminated {
        /// The transaction.
        key: TransactionKey,
    },
}

/// Handles calls: the B2BUA. Runs on the core's thread, sans-IO like the
/// core: it takes SIP events, timeouts and media inputs (each through its
/// own `handle_*`), sends SIP through [`SipActions`], queues media requests
/// for [`poll_media_request`](Self::poll_media_request) and keeps its own
/// timers, which the core polls with [`poll_timeout`](Self::poll_timeout).
///
/// Until one is installed with [`Uas::set_call_handler`](super::Uas::set_call_handler),
/// INVITE is answered 480 Temporarily Unavailable, BYE, UPDATE, INFO and PRACK 481
/// (there are no dialogs), and CANCEL 200 when it matches an INVITE
/// transaction, else 481.
pub trait CallHandler: Send {
    /// Handles one event.
    fn handle_event(&mut self, now: Now, event: CallEvent, sip: &mut SipActions<'_>);

    /// Fires the handler's timers due at `now`.
    fn handle_timeout(&mut self, _now: Now, _sip: &mut SipActions<'_>) {}

    /// Handles one input that is not SIP: a media result, a manager event,
    /// a new dialplan, a shutdown step, a REST query ...
    fn handle_media(&mut self, _now: Now, _input: LinkInput, _sip: &mut SipActions<'_>) {}

    /// The handler's next deadline.
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// The next request for the RTP managers, in the order they were made.
    fn poll_media_request(&mut self) -> Option<MediaRequest> {
        None
    }
}

/// What a call handler can do: answer server transactions, send requests
/// (new client transactions) and stateless messages, and look up bindings.
pub struct SipActions<'a> {
    pub(super) now: Now,
    pub(super) wire: &'a mut Wire,
    pub(super) registrar: &'a crate::registrar::Registrar,
    /// False when the registrar is a cache of a shared store that has been
    /// out of reach for longer than it may be trusted: lookups find nobody.
    pub(super) location_trusted: bool,
    /// What the handler sent through this, noted for its calls' histories
    /// (first line and a few fields, never the message).
    pub(super) sent: Vec<crate::b2bua::Note>,
}

impl SipActions<'_> {
    /// Answers the request of server transaction `key` (built per RFC 3261
    /// §8.2.6 from the stored request; `to_tag` is the dialog's local tag).
    /// The transaction retransmits it as §17.2 requires.
    pub fn respond(
        &mut self,
        key: &TransactionKey,
        status: u16,
        reason: &str,
        to_tag: Option<&Tag>,
        headers: &[(String, String)],
        body: Option<(&str, &[u8])>,
    ) -> Result<(), UasError> {
        let request = self
            .wire
            .requests
            .get(key)
            .cloned()
            .ok_or(UasError::UnknownTransaction)?;
        self.sent.push(crate::b2bua::Note {
            call_id: request.call_id().clone(),
            first_line: format!("SIP/2.0 {status} {reason}"),
            cseq: format!("{} {}", request.cseq().seq, request.cseq().method.as_str()),
            peer: self.wire.server_routes.get(key).map(Destination::remote),
        });
        self.wire.respond(
            self.now,
            Some(key),
            &request,
            None,
            super::Reply {
                status,
                reason,
                to_tag,
                headers,
                body,
            },
        )
    }

    /// Sends a request in a new client transaction to `destination`; its
    /// responses come back as [`CallEvent::Response`] with the returned key.
    /// The request must carry a top Via with an RFC 3261 branch.
    pub fn send_request(
        &mut self,
        request: SipMessage,
        destination: Destination,
    ) -> Result<TransactionKey, UasError> {
        let note = crate::b2bua::Note {
            call_id: request.call_id().clone(),
            first_line: match request.request_uri() {
                Some(uri) => format!("{} {uri} SIP/2.0", request.method()),
                None => format!("{} SIP/2.0", request.method()),
            },
            cseq: request.cseq().to_string(),
            peer: Some(destination.remote()),
        };
        let key = self.wire.send_request(self.now, request, destination)?;
        self.sent.push(note);
        Ok(key)
    }

    /// Notes a message the handler sent another way (a stateless ACK).
    pub fn note_sent(&mut self, note: crate::b2bua::Note) {
        self.sent.push(note);
    }

    /// The messages sent since the last call, oldest first.
    pub fn take_sent(&mut self) -> Vec<crate::b2bua::Note> {
        std::mem::take(&mut self.sent)
    }

    /// Sends a message outside any transaction: the ACK for a 2xx, or the
    /// retransmission of a 2xx to an INVITE (RFC 6026: the TU's job).
    pub fn send_stateless(&mut self, destination: Destination, message: &SipMessage) {
        self.wire.push(destination, message.bytes().to_vec());
    }

    /// The current bindings of `target` (`user`, `user@domain` or a SIP
    /// URI), best first; each binding's `source` is where the registering
    /// UA can be reached through its NAT.
    pub fn lookup(&self, target: &str) -> Vec<Binding> {
        if !self.location_trusted {
            tracing::warn!(target, "location lookup refused: the shared location store has been out of reach too long to trust the cache");
            return Vec::new();
        }
        self.registrar
            .lookup(self.now.wall, target)
            .into_iter()
            .cloned()
            .collect()
    }

    /// The time of the current input.
    pub fn now(&self) -> Now {
        self.now
    }
}
