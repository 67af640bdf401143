//! What the operator sees of a call: the facts the B2BUA keeps per call for
//! the REST API, the CDRs and the event bus (parties, times, route, manager,
//! SDP, a bounded SIP history), and the queries the API sends the core.
//!
//! This is on the hot path (every call, every message), so a call keeps
//! little: the first [`HISTORY`] messages as a first line and a few fields,
//! never whole messages; views are built only when asked for.
//!
//! Queries travel on the [`MediaLink`] as [`LinkInput::Query`] with a
//! oneshot reply, like every other input of the core: [`CallsHandle`] is the
//! REST side of that path.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::oneshot;

use super::media::{LinkInput, MediaLink};
use super::CallLeg;
use super::{reason_name, B2bua, CallKey, ClientTx, DeleteReason, MediaRequestId, MediaResult};
use crate::cdr::{codec_of, Cdr};
use crate::events::Party;
use crate::events::{EndedBy, Event};
use crate::sip::{CallId, SipMessage};
use crate::uas::driver::CoreHandle;
use crate::uas::{Now, SipActions};

/// Messages kept per call for its ladder diagram.
pub const HISTORY: usize = 64;

/// Calls a page holds when the client names no limit.
pub const DEFAULT_PAGE: usize = 100;

/// The most calls one page holds.
pub const MAX_PAGE: usize = 1000;

/// Milliseconds since the Unix epoch of a wall-clock time.
pub(crate) fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Where a call is, as the API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    /// Running its dialplan, before any callee rang.
    Routing,
    /// A callee rang (an 18x came back), nobody answered yet.
    Ringing,
    /// The caller got its 2xx.
    Answered,
    /// Hung up; BYEs, CANCELs or the media delete still under way.
    Ending,
}

/// A message's direction as seen from the switchboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    In,
    Out,
}

/// One message of a call's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SipEntry {
    pub at_ms: u64,
    pub direction: Direction,
    /// `a` (caller ↔ switchboard) or `b` (switchboard ↔ callee).
    pub leg: CallLeg,
    /// The other end of the message (`ip:port`).
    pub peer: String,
    pub first_line: String,
    pub call_id: String,
    pub cseq: String,
}

impl Serialize for CallLeg {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A message noted for a call's history, before the call is known: what
/// the B2BUA saw or sent, reduced to the few fields a ladder needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub call_id: CallId,
    pub first_line: String,
    pub cseq: String,
    /// Where it went or came from, when known.
    pub peer: Option<SocketAddr>,
}

/// The first [`HISTORY`] messages of a call.
#[derive(Debug, Clone, Default)]
pub(crate) struct History {
    entries: Vec<Stored>,
    truncated: bool,
}

/// A history entry as kept: the Call-ID is the leg's, found at view time.
#[derive(Debug, Clone)]
struct Stored {
    at: SystemTime,
    direction: Direction,
    leg: CallLeg,
    peer: Option<SocketAddr>,
    first_line: String,
    cseq: String,
}

impl History {
    /// Whether another message would be kept (build its note only then).
    pub(crate) fn has_room(&mut self) -> bool {
        if self.entries.len() < HISTORY {
            return true;
        }
        self.truncated = true;
        false
    }

    pub(crate) fn push(&mut self, at: SystemTime, direction: Direction, leg: CallLeg, note: Note) {
        if !self.has_room() {
            return;
        }
        self.entries.push(Stored {
            at,
            direction,
            leg,
            peer: note.peer,
            first_line: note.first_line,
            cseq: note.cseq,
        });
    }

    pub(crate) fn view(
        &self,
        call_ids: [&str; 2],
        peers: [Option<SocketAddr>; 2],
    ) -> Vec<SipEntry> {
        self.entries
            .iter()
            .map(|e| {
                let index = match e.leg {
                    CallLeg::A => 0,
                    CallLeg::B => 1,
                };
                SipEntry {
                    at_ms: unix_ms(e.at),
                    direction: e.direction,
                    leg: e.leg,
                    peer: e
                        .peer
                        .or(peers[index])
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                    first_line: e.first_line.clone(),
                    call_id: call_ids[index].to_owned(),
                    cseq: e.cseq.clone(),
                }
            })
            .collect()
    }

    pub(crate) fn truncated(&self) -> bool {
        self.truncated
    }
}

/// The SDP of each offer and answer of a call's setup, before and after
/// the manager rewrote it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SdpView {
    /// The caller's SDP.
    pub a_offer: Option<String>,
    /// The SDP sent to the caller.
    pub a_answer: Option<String>,
    /// The SDP sent to the callee.
    pub b_offer: Option<String>,
    /// The callee's SDP.
    pub b_answer: Option<String>,
}

/// The history and SDP of one call (`GET /api/v1/calls/{id}` only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallDetail {
    pub sip: Vec<SipEntry>,
    pub sip_truncated: bool,
    pub sdp: SdpView,
}

/// A call as the core knows it (the API adds the manager's figures).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallSnapshot {
    pub id: String,
    pub state: CallState,
    pub started_at_ms: u64,
    pub answered_at_ms: Option<u64>,
    pub duration_ms: u64,
    pub caller: Party,
    pub callee: Option<Party>,
    /// The caller's Request-URI.
    pub dialled: String,
    /// The dialplan route that took the call.
    pub route: Option<String>,
    /// The RTP manager's id, once the call has media.
    pub manager: Option<String>,
    pub media_call_id: String,
    /// The signaling node that owns the call (took its INVITE; its
    /// `--node-id`), which alone sends its requests while it lives.
    pub node: String,
    /// Whether the manager holds the call's media (a call routed to a
    /// hangup or waiting for its first offer has none).
    #[serde(skip)]
    pub has_media: bool,
    #[serde(skip)]
    pub detail: Option<CallDetail>,
}

/// A page of calls, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallPage {
    /// Every call in progress, not only this page's.
    pub total: usize,
    pub calls: Vec<CallSnapshot>,
    /// The last call's id when more calls follow it.
    pub next: Option<String>,
}

/// What a hangup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HangUp {
    /// The call is ending (BYE, CANCEL or a final response sent).
    Ending,
    /// No call has this id.
    NotFound,
}

/// A question from the REST API, answered on the core's thread.
#[derive(Debug)]
pub enum CallQuery {
    /// Up to `limit` calls started after the call `after` (the API id).
    List {
        limit: usize,
        after: Option<String>,
        reply: oneshot::Sender<Result<CallPage, BadCursor>>,
    },
    /// One call with its SIP history and SDP.
    Get {
        id: String,
        reply: oneshot::Sender<Option<CallSnapshot>>,
    },
    /// Ends a call as an operator (BYE / CANCEL / final response).
    HangUp {
        id: String,
        reply: oneshot::Sender<HangUp>,
    },
}

/// An `after` that no call of this process could have had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`after` is not a call id of this server: {0:?}")]
pub struct BadCursor(pub String);

/// Why the core did not answer a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// No B2BUA runs (no dialplan), or it stopped.
    #[error("no call handler runs")]
    NotRunning,
    /// The core has too much queued, or did not answer in time.
    #[error("the SIP core is busy")]
    Busy,
}

/// Inputs the link may hold before a query is refused as busy.
const MAX_PENDING: usize = 4096;

/// How long a query waits for the core.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// The REST API's way to ask the B2BUA about calls.
#[derive(Clone, Debug)]
pub struct CallsHandle {
    link: MediaLink,
    core: CoreHandle,
}

impl CallsHandle {
    /// Queries travel on `link`; `core` is woken to run them.
    pub fn new(link: MediaLink, core: CoreHandle) -> CallsHandle {
        CallsHandle { link, core }
    }

    async fn ask<T>(
        &self,
        query: impl FnOnce(oneshot::Sender<T>) -> CallQuery,
    ) -> Result<T, QueryError> {
        if self.link.pending_inputs() >= MAX_PENDING {
            return Err(QueryError::Busy);
        }
        let (reply, answer) = oneshot::channel();
        self.link
            .push_input(Instant::now(), LinkInput::Query(query(reply)));
        self.core.wake();
        match tokio::time::timeout(QUERY_TIMEOUT, answer).await {
            Ok(Ok(value)) => Ok(value),
            // The core dropped the query: it stopped.
            Ok(Err(_)) => Err(QueryError::NotRunning),
            Err(_) => Err(QueryError::Busy),
        }
    }

    /// A page of calls (see [`CallQuery::List`]).
    pub async fn list(
        &self,
        limit: usize,
        after: Option<String>,
    ) -> Result<Result<CallPage, BadCursor>, QueryError> {
        self.ask(|reply| CallQuery::List {
            limit,
            after,
            reply,
        })
        .await
    }

    /// One call with its history, `None` when unknown.
    pub async fn get(&self, id: String) -> Result<Option<CallSnapshot>, QueryError> {
        self.ask(|reply| CallQuery::Get { id, reply }).await
    }

    /// Hangs a call up as an operator.
    pub async fn hang_up(&self, id: String) -> Result<HangUp, QueryError> {
        self.ask(|reply| CallQuery::HangUp { id, reply }).await
    }
}

/// What a call keeps for the API, the CDR and the events.
#[derive(Debug, Clone)]
pub(crate) struct CallInfo {
    /// The call's id in the API.
    pub id: String,
    pub started: SystemTime,
    pub answered: Option<SystemTime>,
    pub ringing: bool,
    pub caller: Party,
    pub callee: Option<Party>,
    pub dialled: String,
    pub route: String,
    pub manager: Option<String>,
    /// The callee's SDP (its 2xx, or its ACK for a late offer).
    pub callee_sdp: Option<String>,
    pub history: History,
}

/// A party reached at `destination` (`uri` as dialled).
pub(crate) fn party_at(uri: &str, destination: &crate::transport::Destination) -> Party {
    let transport = match destination {
        crate::transport::Destination::Udp(_) => "udp",
        crate::transport::Destination::Stream { kind, .. } => match kind {
            crate::transport::Stream::Tcp => "tcp",
            crate::transport::Stream::Tls => "tls",
            crate::transport::Stream::Ws => "ws",
            crate::transport::Stream::Wss => "wss",
        },
    };
    Party {
        uri: uri.to_owned(),
        display_name: None,
        address: destination.remote().to_string(),
        transport: transport.to_owned(),
    }
}

// ----- the B2BUA's side ----------------------------------------------

/// A received message reduced to a [`Note`].
pub(crate) fn note_of(message: &SipMessage, peer: Option<SocketAddr>) -> Note {
    let first_line = match message.status() {
        Some(status) => format!("SIP/2.0 {status} {}", message.reason().unwrap_or("")),
        None => match message.request_uri() {
            Some(uri) => format!("{} {uri} SIP/2.0", message.method().as_str()),
            None => format!("{} SIP/2.0", message.method().as_str()),
        },
    };
    Note {
        call_id: message.call_id().clone(),
        first_line,
        cseq: format!("{} {}", message.cseq().seq, message.cseq().method.as_str()),
        peer,
    }
}

impl B2bua {
    /// The API id of the call `key`.
    pub(super) fn api_id(&self, key: CallKey) -> String {
        format!("{}-{:x}", self.id_prefix, key.0)
    }

    /// The call an API id names, if it is one of this process's.
    fn key_of(&self, id: &str) -> Option<CallKey> {
        let (prefix, key) = id.split_once('-')?;
        if prefix != self.id_prefix {
            return None;
        }
        u64::from_str_radix(key, 16).ok().map(CallKey)
    }

    /// Notes a message for its call's history, when it belongs to a call.
    pub(super) fn note(&mut self, at: SystemTime, direction: Direction, note: Note) {
        let Some((key, leg)) = self.sip_ids.get(&note.call_id).copied() else {
            return;
        };
        if let Some(call) = self.calls.get_mut(&key) {
            call.info.history.push(at, direction, leg, note);
        }
    }

    /// Whether a received message would go into a history: that of a
    /// call, or a new INVITE (noted once its call exists).
    pub(super) fn wants_note(&self, message: &SipMessage) -> bool {
        self.sip_ids.contains_key(message.call_id())
            || (message.is_request()
                && *message.method() == crate::sip::Method::Invite
                && message.to_tag().is_none())
    }

    /// Where a response to our client transaction `key` came from.
    pub(super) fn response_peer(
        &self,
        key: &crate::transaction::TransactionKey,
    ) -> Option<SocketAddr> {
        match self.clients.get(key) {
            Some(ClientTx::Branch(branch)) => Some(branch.sent.destination.remote()),
            _ => None,
        }
    }

    /// Notes what the handler sent while handling an input.
    pub(super) fn note_sent(&mut self, sip: &mut SipActions<'_>) {
        let at = sip.now().wall;
        for note in sip.take_sent() {
            self.note(at, Direction::Out, note);
        }
    }

    /// Answers a query of the REST API.
    pub(super) fn query(&mut self, now: Now, query: CallQuery, sip: &mut SipActions<'_>) {
        match query {
            CallQuery::List {
                limit,
                after,
                reply,
            } => {
                let page = match after.as_deref().map(|id| (id, self.key_of(id))) {
                    Some((id, None)) => Err(BadCursor(id.to_owned())),
                    Some((_, Some(after))) => Ok(self.page(now, Some(after), limit)),
                    None => Ok(self.page(now, None, limit)),
                };
                let _ = reply.send(page);
            }
            CallQuery::Get { id, reply } => {
                let snapshot = self
                    .key_of(&id)
                    .and_then(|key| self.snapshot(now, key, true));
                let _ = reply.send(snapshot);
            }
            CallQuery::HangUp { id, reply } => {
                let key = self.key_of(&id).filter(|k| self.calls.contains_key(k));
                let Some(key) = key else {
                    let _ = reply.send(HangUp::NotFound);
                    return;
                };
                tracing::info!(id, "call hung up by the operator");
                self.end_call(
                    key,
                    DeleteReason::Admin,
                    None,
                    (480, "Temporarily Unavailable"),
                    sip,
                );
                let _ = reply.send(HangUp::Ending);
            }
        }
    }

    fn page(&self, now: Now, after: Option<CallKey>, limit: usize) -> CallPage {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut keys = self.calls.range((start, Bound::Unbounded)).map(|(k, _)| *k);
        let chosen: Vec<CallKey> = keys.by_ref().take(limit).collect();
        let more = keys.next().is_some();
        let calls: Vec<CallSnapshot> = chosen
            .iter()
            .filter_map(|key| self.snapshot(now, *key, false))
            .collect();
        CallPage {
            total: self.calls.len(),
            next: if more {
                calls.last().map(|c| c.id.clone())
            } else {
                None
            },
            calls,
        }
    }

    fn snapshot(&self, now: Now, key: CallKey, detail: bool) -> Option<CallSnapshot> {
        let call = self.calls.get(&key)?;
        let info = &call.info;
        let state = if call.answered {
            CallState::Answered
        } else if info.ringing {
            CallState::Ringing
        } else {
            CallState::Routing
        };
        let detail = detail.then(|| CallDetail {
            sip: info.history.view(
                [call.a.call_id.as_str(), call.b_call_id.as_str()],
                [
                    Some(call.a.destination.remote()),
                    call.b
                        .as_ref()
                        .map(|b| b.destination.remote())
                        .or_else(|| info.callee.as_ref().and_then(|p| p.address.parse().ok())),
                ],
            ),
            sip_truncated: info.history.truncated(),
            sdp: SdpView {
                a_offer: call.caller_sdp.clone(),
                a_answer: call.sdp_sent[0].clone(),
                b_offer: call.sdp_sent[1].clone(),
                b_answer: info.callee_sdp.clone(),
            },
        });
        Some(CallSnapshot {
            id: info.id.clone(),
            state,
            started_at_ms: unix_ms(info.started),
            answered_at_ms: info.answered.map(unix_ms),
            duration_ms: millis(now.wall, info.started),
            caller: info.caller.clone(),
            callee: info.callee.clone(),
            dialled: info.dialled.clone(),
            route: Some(info.route.clone()),
            manager: info.manager.clone(),
            media_call_id: call.media_id.0.clone(),
            node: self.config.owner.node().to_owned(),
            has_media: call.media_used,
            detail,
        })
    }

    /// The record and the event of a call that ends now; the record waits
    /// for the manager's final figures when `delete` is the call's media
    /// delete.
    pub(super) fn record_end(
        &mut self,
        now: Now,
        call: &super::Call,
        reason: DeleteReason,
        from: Option<super::CallLeg>,
        status: u16,
        delete: Option<MediaRequestId>,
    ) {
        let info = &call.info;
        let ended_by = match (from, reason) {
            (Some(CallLeg::A), _) | (None, DeleteReason::Cancelled) => EndedBy::Caller,
            (Some(CallLeg::B), _) => EndedBy::Callee,
            (None, DeleteReason::Admin) => EndedBy::Operator,
            (None, _) => EndedBy::System,
        };
        let final_status = if call.answered { 200 } else { status };
        let duration_ms = millis(now.wall, info.started);
        self.publish(|| Event::CallEnded {
            id: info.id.clone(),
            at_ms: unix_ms(now.wall),
            final_status,
            ended_by,
            duration_ms,
        });
        let Some(cdrs) = &self.cdrs else {
            return;
        };
        let cdr = Cdr {
            id: info.id.clone(),
            call_id: call.a.call_id.to_string(),
            callee_call_id: info.callee.is_some().then(|| call.b_call_id.to_string()),
            media_call_id: call.media_id.0.clone(),
            caller: info.caller.clone(),
            callee: info.callee.clone(),
            dialled: info.dialled.clone(),
            route: info.route.clone(),
            manager: info.manager.clone(),
            started_at_ms: unix_ms(info.started),
            answered_at_ms: info.answered.map(unix_ms),
            ended_at_ms: unix_ms(now.wall),
            duration_ms,
            talk_ms: info.answered.map_or(0, |at| millis(now.wall, at)),
            final_status,
            reason: reason_name(reason),
            ended_by,
            codec: call.sdp_sent[0]
                .as_deref()
                .or(info.callee_sdp.as_deref())
                .and_then(codec_of),
            // A migrated call's figures on the managers it left; the
            // last manager's are added by `deleted`.
            legs: call.moved_legs.clone(),
            media_error: None,
        };
        match delete {
            Some(id) => {
                self.finishing.insert(id, cdr);
            }
            None => cdrs.send(cdr),
        }
    }

    /// Ends a call of a lost node: a BYE on each of its dialogs from this
    /// node, and its end record (reason `node_lost`, no media figures: the
    /// manager's call is deleted by the driver that found it).
    pub(super) fn reap(
        &mut self,
        now: Now,
        call: &super::shared::SharedCall,
        sip: &mut SipActions<'_>,
    ) {
        let mut sent = 0;
        for leg in &call.legs {
            let Some(mut dialog) = leg.dialog() else {
                tracing::warn!(call_id = %call.media_call_id, "a lost node's dialog does not parse; no BYE on it");
                continue;
            };
            if let Some(bye) =
                self.send_in_dialog(&mut dialog, &crate::sip::Method::Bye, &[], None, sip)
            {
                self.ending.insert(bye.clone());
                self.clients.insert(bye, super::ClientTx::Fire);
                sent += 1;
            }
        }
        tracing::info!(call_id = %call.media_call_id, node = %call.node, byes = sent, "call of a lost node ended");
        let Some(cdrs) = &self.cdrs else {
            return;
        };
        let ended_at_ms = unix_ms(now.wall);
        cdrs.send(Cdr {
            id: call.id.clone(),
            call_id: call
                .legs
                .first()
                .map(|l| l.call_id.clone())
                .unwrap_or_default(),
            callee_call_id: call.legs.get(1).map(|l| l.call_id.clone()),
            media_call_id: call.media_call_id.clone(),
            caller: call.caller.clone(),
            callee: call.callee.clone(),
            dialled: call.dialled.clone(),
            route: call.route.clone(),
            manager: call.manager.clone(),
            started_at_ms: call.started_at_ms,
            answered_at_ms: call.answered_at_ms,
            ended_at_ms,
            duration_ms: ended_at_ms.saturating_sub(call.started_at_ms),
            talk_ms: call
                .answered_at_ms
                .map_or(0, |at| ended_at_ms.saturating_sub(at)),
            final_status: 200,
            reason: "node_lost",
            ended_by: EndedBy::System,
            codec: None,
            legs: Vec::new(),
            media_error: Some(format!(
                "node {} was lost with the call up; ended by another node",
                call.node
            )),
        });
    }

    /// A media delete's result: its call's record goes out with the
    /// manager's final figures.
    pub(super) fn deleted(&mut self, id: MediaRequestId, result: MediaResult) {
        let Some(mut cdr) = self.finishing.remove(&id) else {
            return;
        };
        match result {
            MediaResult::Deleted(legs) => {
                cdr.legs = super::sum_figures(std::mem::take(&mut cdr.legs), legs);
            }
            MediaResult::Failed { message, .. } => cdr.media_error = Some(message),
            MediaResult::Done => cdr.media_error = Some("no manager held the call".to_owned()),
            MediaResult::Sdp(_) | MediaResult::PlayEnded { .. } | MediaResult::Moved { .. } => {}
        }
        if let Some(cdrs) = &self.cdrs {
            cdrs.send(cdr);
        }
    }
}

impl Drop for B2bua {
    /// Records still waiting for their media delete when the core stops
    /// (a shutdown past its timeout) go out without the final figures
    /// rather than not at all.
    fn drop(&mut self) {
        let Some(cdrs) = &self.cdrs else {
            return;
        };
        let mut waiting: Vec<Cdr> = self.finishing.drain().map(|(_, cdr)| cdr).collect();
        waiting.sort_by_key(|cdr| cdr.ended_at_ms);
        for mut cdr in waiting {
            cdr.media_error = Some("the server stopped before the manager answered".to_owned());
            cdrs.send(cdr);
        }
    }
}

/// Milliseconds from `since` to `at` (0 if the clock went back).
fn millis(at: SystemTime, since: SystemTime) -> u64 {
    at.duration_since(since)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(n: usize) -> Note {
        Note {
            call_id: CallId::new("c"),
            first_line: format!("INFO sip:x SIP/2.0 #{n}"),
            cseq: format!("{n} INFO"),
            peer: None,
        }
    }

    #[test]
    fn a_history_keeps_the_first_messages_and_says_it_left_some_out() {
        let mut history = History::default();
        for n in 0..HISTORY + 3 {
            history.push(SystemTime::UNIX_EPOCH, Direction::In, CallLeg::A, note(n));
        }
        let peer: SocketAddr = "192.0.2.1:5060".parse().expect("address");
        let view = history.view(["a-id", "b-id"], [Some(peer), None]);
        assert_eq!(view.len(), HISTORY);
        assert_eq!(view[0].cseq, "0 INFO", "the first ones are kept");
        assert_eq!(view[HISTORY - 1].cseq, format!("{} INFO", HISTORY - 1));
        assert_eq!(view[0].peer, "192.0.2.1:5060", "leg a's peer by default");
        assert_eq!(view[0].call_id, "a-id");
        assert!(history.truncated());
    }
}
