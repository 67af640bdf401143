//! Call migration: moves an answered call's media from manager X to
//! manager Y while both sides stay in their dialogs.
//!
//! The ladder, one step at a time per call:
//!
//! 1. `Move`: the executor routes the call's next requests to Y (the least
//!    loaded healthy manager but X) and keeps X's legs.
//! 2. `Offer` on Y with the caller's last SDP.
//! 3. re-INVITE the callee with Y's SDP under the o= line it knows from us
//!    (version + 1: RFC 3264 §8 keeps the session id, bumps the version).
//! 4. `Answer` on Y with the callee's answer.
//! 5. re-INVITE the caller with Y's answer, its o= line likewise.
//! 6. `Bridge` on Y, then `Release` X's legs (a Delete there, skipped when
//!    X is gone).
//!
//! Failures: a 491 is retried after the RFC 3261 §14.1 wait (2.1-4 s where
//! we own the leg's Call-ID, the callee's leg; 0-2 s on the caller's). A
//! side that refuses while X is alive: Y is aborted (its legs deleted, the
//! call's requests go to X again) and the callee, if it had moved, is
//! re-INVITEd back to X's SDP: the call stays on X. With X gone, or on 408
//! or 481 (the dialog is not there any more), the call ends with a BYE to
//! each side: never half a call. No manager taking the call: it stays.
//! While a move runs, peers' own re-INVITEs get 491 (`Call::reoffer`), and
//! a call that ends meanwhile ends as usual, its Delete reaching both
//! managers (the executor sums their figures).

use tokio::sync::mpsc::UnboundedSender;

use super::build::sdp_of;
use super::media::sum_figures;
use super::*;

/// Which of a manager's calls to move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoveScope {
    /// Every call on the manager.
    All,
    /// These calls (API ids, `/api/v1/calls/{id}`), if on the manager.
    Calls(Vec<String>),
    /// These calls by their media call ids, if on the manager: a restarted
    /// manager's lost calls, as the pool's loss detection names them.
    Media(Vec<String>),
}

/// An order to move calls off a manager, pushed as [`LinkInput::Move`].
#[derive(Debug)]
pub struct MoveOrder {
    /// The manager to leave, by its pool id.
    pub manager: String,
    pub scope: MoveScope,
    /// Calls to leave alone (API ids): those that stayed in an earlier
    /// round of the same migration.
    pub skip: Vec<String>,
    /// The manager is gone (dead, or restarted without its state): no
    /// Delete is sent there, and a side refusing ends the call with BYEs
    /// since there is nothing to stay on.
    pub gone: bool,
    /// How many calls to start moving now (the rest are counted as left).
    pub limit: usize,
    /// Where [`MoveReport`]s go: one `Started` at once, then one `Call`
    /// per started call.
    pub reply: UnboundedSender<MoveReport>,
}

/// What becomes of a [`MoveOrder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoveReport {
    /// The calls the order started moving, those of the manager that
    /// cannot move now (not answered yet, a re-INVITE in progress), how
    /// many others in scope it left for a later order (over the limit or
    /// already moving), and how many calls were in scope in all (on the
    /// manager, not skipped).
    Started {
        started: Vec<String>,
        not_movable: Vec<String>,
        left: usize,
        in_scope: usize,
    },
    /// One call's migration ended.
    Call(CallMoved),
}

/// The end of one call's migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallMoved {
    pub id: String,
    pub from: String,
    pub to: Option<String>,
    pub outcome: MoveOutcome,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveOutcome {
    /// On the new manager.
    Moved,
    /// Still on the old manager.
    Stayed,
    /// The call ended (BYE to each side, or it ended on its own).
    Ended,
}

impl MoveOutcome {
    pub fn name(self) -> &'static str {
        match self {
            MoveOutcome::Moved => "moved",
            MoveOutcome::Stayed => "stayed",
            MoveOutcome::Ended => "ended",
        }
    }
}

/// Where a call's migration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Move,
    Offer,
    /// The callee's re-INVITE with Y's SDP.
    Callee,
    Answer,
    /// The caller's re-INVITE with Y's SDP.
    Caller,
    Bridge,
    /// The callee's re-INVITE back to X's SDP after the caller refused.
    Back,
}

/// A running migration of one call.
#[derive(Debug)]
pub(super) struct Moving {
    from: String,
    to: Option<String>,
    gone: bool,
    step: Step,
    /// What each side had from X: the callee goes back to it.
    before: [Option<String>; 2],
    /// The body of the re-INVITE in flight, again after a 491.
    body: Option<String>,
    /// When a 491's retry is due.
    retry_at: Option<Instant>,
    callee_moved: bool,
    reply: UnboundedSender<MoveReport>,
}

impl Moving {
    /// The leg whose re-INVITE the step waits for.
    fn leg(&self) -> CallLeg {
        match self.step {
            Step::Caller => CallLeg::A,
            _ => CallLeg::B,
        }
    }
}

/// `sdp` (a manager's) under the o= line of `known` (what the peer last
/// had from us), its version one higher: the peer sees the same session
/// modified (RFC 3264 §8).
pub(super) fn with_origin(sdp: &str, known: Option<&str>) -> String {
    let Some(origin) = known.and_then(|k| k.lines().find(|l| l.starts_with("o="))) else {
        return sdp.to_owned();
    };
    let mut fields: Vec<String> = origin.split(' ').map(str::to_owned).collect();
    if let Some(version) = fields.get_mut(2) {
        if let Ok(n) = version.parse::<u64>() {
            *version = (n + 1).to_string();
        }
    }
    let origin = fields.join(" ");
    let mut out = String::with_capacity(sdp.len() + 16);
    for line in sdp.split_inclusive('\n') {
        if line.starts_with("o=") {
            out.push_str(&origin);
            out.push_str(if line.ends_with("\r\n") { "\r\n" } else { "\n" });
        } else {
            out.push_str(line);
        }
    }
    out
}

/// The RFC 3261 §14.1 wait after a 491, in ms: 2100-4000 when we own the
/// dialog's Call-ID, 0-2000 otherwise; `draw` picks within the range.
pub(super) fn glare_wait(owner: bool, draw: u64) -> Duration {
    let ms = if owner {
        2100 + draw % 1901
    } else {
        draw % 2001
    };
    Duration::from_millis(ms)
}

impl B2bua {
    /// Runs a [`MoveOrder`]: starts moving up to `limit` of the manager's
    /// calls in scope, oldest first.
    pub(super) fn move_order(&mut self, order: MoveOrder) {
        let mut started = Vec::new();
        let mut not_movable = Vec::new();
        let mut left = 0;
        let keys: Vec<CallKey> = self
            .calls
            .iter()
            .filter(|(_, call)| call.info.manager.as_deref() == Some(order.manager.as_str()))
            .filter(|(_, call)| match &order.scope {
                MoveScope::All => true,
                MoveScope::Calls(ids) => ids.contains(&call.info.id),
                MoveScope::Media(ids) => ids.contains(&call.media_id.0),
            })
            .filter(|(_, call)| !order.skip.contains(&call.info.id))
            .map(|(key, _)| *key)
            .collect();
        let in_scope = keys.len();
        for key in keys {
            let Some(call) = self.calls.get_mut(&key) else {
                continue;
            };
            if call.moving.is_some() || started.len() >= order.limit {
                left += 1;
                continue;
            }
            if !movable(call) {
                not_movable.push(call.info.id.clone());
                continue;
            }
            started.push(call.info.id.clone());
            tracing::info!(call_id = %call.media_id, from = %order.manager, gone = order.gone, "moving call");
            call.reoffer = true;
            call.moving = Some(Box::new(Moving {
                from: order.manager.clone(),
                to: None,
                gone: order.gone,
                step: Step::Move,
                before: call.sdp_sent.clone(),
                body: None,
                retry_at: None,
                callee_moved: false,
                reply: order.reply.clone(),
            }));
            self.media(key, Purpose::Migrate(Step::Move), MediaOp::Move);
        }
        let _ = order.reply.send(MoveReport::Started {
            started,
            not_movable,
            left,
            in_scope,
        });
    }

    /// The result of a migration's media request.
    pub(super) fn migrate_result(
        &mut self,
        key: CallKey,
        step: Step,
        result: MediaResult,
        sip: &mut SipActions<'_>,
    ) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(moving) = call.moving.as_mut() else {
            return;
        };
        match (step, result) {
            (Step::Move, MediaResult::Moved { manager }) => {
                moving.to = Some(manager);
                moving.step = Step::Offer;
                let sdp = call.caller_last.clone().unwrap_or_default();
                let op = MediaOp::Offer {
                    leg: CallLeg::A,
                    peer: Some(CallLeg::B),
                    sdp,
                    // The callee's new leg on the side it was dialled on.
                    callee_interface: call.callee_interface.clone(),
                };
                self.media(key, Purpose::Migrate(Step::Offer), op);
            }
            (Step::Move, MediaResult::Failed { message, .. }) => {
                self.move_ended(key, MoveOutcome::Stayed, format!("no manager: {message}"));
            }
            (Step::Offer, MediaResult::Sdp(sdp)) => {
                let body = with_origin(&sdp, call.sdp_sent[leg_index(CallLeg::B)].as_deref());
                moving.step = Step::Callee;
                self.move_reinvite(key, CallLeg::B, body, sip);
            }
            (Step::Offer, MediaResult::Failed { message, .. }) => {
                // Nothing changed for either side: back to X whatever it is.
                self.abort_move(key);
                self.move_ended(
                    key,
                    MoveOutcome::Stayed,
                    format!("the new manager refused the offer: {message}"),
                );
            }
            (Step::Answer, MediaResult::Sdp(sdp)) => {
                let body = with_origin(&sdp, call.sdp_sent[leg_index(CallLeg::A)].as_deref());
                moving.step = Step::Caller;
                self.move_reinvite(key, CallLeg::A, body, sip);
            }
            (Step::Answer | Step::Bridge, MediaResult::Failed { message, .. }) => {
                self.move_refused(key, format!("the new manager failed: {message}"), sip);
            }
            (Step::Bridge, MediaResult::Done) => {
                let gone = moving.gone;
                let to = moving.to.clone();
                call.info.manager.clone_from(&to);
                self.media(
                    key,
                    Purpose::MoveFigures,
                    MediaOp::Release { delete: !gone },
                );
                self.move_ended(key, MoveOutcome::Moved, String::new());
            }
            (step, result) => {
                tracing::debug!(?step, ?result, "unexpected migration result ignored");
            }
        }
    }

    /// Figures of a manager a call left (Release) or of the legs a failed
    /// migration made (Abort): the call's record sums them.
    pub(super) fn move_figures(&mut self, key: CallKey, result: MediaResult) {
        if let (Some(call), MediaResult::Deleted(legs)) = (self.calls.get_mut(&key), result) {
            call.moved_legs = sum_figures(std::mem::take(&mut call.moved_legs), legs);
        }
    }

    /// Sends a migration's re-INVITE with `body` on `leg`.
    fn move_reinvite(
        &mut self,
        key: CallKey,
        leg: CallLeg,
        body: String,
        sip: &mut SipActions<'_>,
    ) {
        let sent = self.send_on_leg(
            key,
            leg,
            &Method::Invite,
            &[],
            Some((SDP, body.as_bytes())),
            sip,
        );
        match sent {
            Some(client) => {
                self.clients.insert(
                    client,
                    ClientTx::Migrate {
                        call: key,
                        leg,
                        done: false,
                    },
                );
                if let Some(moving) = self.calls.get_mut(&key).and_then(|c| c.moving.as_mut()) {
                    moving.body = Some(body);
                }
            }
            None => self.move_refused(key, "re-INVITE not sent".to_owned(), sip),
        }
    }

    /// A final response to a migration's re-INVITE (`first`: not a
    /// retransmitted 2xx, which is only ACKed again).
    pub(super) fn migrate_response(
        &mut self,
        key: CallKey,
        leg: CallLeg,
        first: bool,
        response: SipMessage,
        sip: &mut SipActions<'_>,
    ) {
        let status = response.status().unwrap_or(500);
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        if (200..300).contains(&status) {
            if let Some(dialog) = call.dialog(leg).cloned() {
                self.ack_in_dialog(&dialog, &response, sip);
            }
        }
        if !first {
            return;
        }
        if (200..300).contains(&status) {
            // A 2xx to a re-INVITE refreshes the leg's session (RFC 4028).
            self.session_refreshed(key, leg, sip.now());
        }
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(moving) = call.moving.as_mut() else {
            return;
        };
        if moving.leg() != leg {
            return;
        }
        let reason = format!(
            "{status} {} to the re-INVITE of leg {leg}",
            response.reason().unwrap_or("")
        );
        match (status, sdp_of(&response)) {
            (200..=299, Some(sdp)) => {
                let body = moving.body.take();
                call.sdp_sent[leg_index(leg)] = body;
                match moving.step {
                    Step::Callee => {
                        moving.callee_moved = true;
                        moving.step = Step::Answer;
                        let op = MediaOp::Answer {
                            leg: CallLeg::B,
                            peer: CallLeg::A,
                            sdp,
                            bridge: false,
                        };
                        self.media(key, Purpose::Migrate(Step::Answer), op);
                    }
                    Step::Caller => {
                        call.caller_last = Some(sdp);
                        moving.step = Step::Bridge;
                        self.media(key, Purpose::Migrate(Step::Bridge), MediaOp::Bridge);
                    }
                    Step::Back => {
                        self.move_ended(
                            key,
                            MoveOutcome::Stayed,
                            "the caller refused: the callee went back".to_owned(),
                        );
                    }
                    _ => {}
                }
            }
            (491, _) => {
                // §14.1: we own the callee leg's Call-ID, not the caller's.
                let draw = u64::from_str_radix(&self.unique()[..8], 16).unwrap_or(0);
                let Some(moving) = self.calls.get_mut(&key).and_then(|c| c.moving.as_mut()) else {
                    return;
                };
                let at = sip.now().instant + glare_wait(leg == CallLeg::B, draw);
                moving.retry_at = Some(at);
                self.timers.insert((at, TimerId::Migrate(key)));
                tracing::debug!(%leg, wait_ms = (at - sip.now().instant).as_millis() as u64, "491: migration re-INVITE retried later");
            }
            (408 | 481, _) => self.move_end_call(key, reason, sip),
            _ if moving.step == Step::Back => self.move_end_call(key, reason, sip),
            _ => self.move_refused(key, reason, sip),
        }
    }

    /// The migration's re-INVITE timed out (no response at all).
    pub(super) fn migrate_timeout(&mut self, key: CallKey, sip: &mut SipActions<'_>) {
        self.move_end_call(key, "no response to the re-INVITE".to_owned(), sip);
    }

    /// A 491's wait is over: the same re-INVITE again.
    pub(super) fn migrate_retry(&mut self, now: Now, key: CallKey, sip: &mut SipActions<'_>) {
        let Some(moving) = self.calls.get_mut(&key).and_then(|c| c.moving.as_mut()) else {
            return;
        };
        if moving.retry_at.is_none_or(|at| at > now.instant) {
            return;
        }
        moving.retry_at = None;
        let leg = moving.leg();
        let body = moving.body.take().unwrap_or_default();
        self.move_reinvite(key, leg, body, sip);
    }

    /// A side refused, or Y failed: stay on X if it is alive (the callee
    /// back to X's SDP if it had moved), else end the call.
    fn move_refused(&mut self, key: CallKey, reason: String, sip: &mut SipActions<'_>) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(moving) = call.moving.as_mut() else {
            return;
        };
        if moving.gone {
            self.move_end_call(key, format!("{reason}; the old manager is gone"), sip);
            return;
        }
        let callee_moved = moving.callee_moved;
        let back = with_origin(
            moving.before[leg_index(CallLeg::B)]
                .as_deref()
                .unwrap_or_default(),
            call.sdp_sent[leg_index(CallLeg::B)].as_deref(),
        );
        tracing::info!(call_id = %call.media_id, %reason, callee_moved, "migration refused: the call stays");
        self.abort_move(key);
        if callee_moved {
            if let Some(moving) = self.calls.get_mut(&key).and_then(|c| c.moving.as_mut()) {
                moving.step = Step::Back;
            }
            self.move_reinvite(key, CallLeg::B, back, sip);
        } else {
            self.move_ended(key, MoveOutcome::Stayed, reason);
        }
    }

    /// Y's legs deleted, the call's requests to X again.
    fn abort_move(&mut self, key: CallKey) {
        self.media(key, Purpose::MoveFigures, MediaOp::Abort);
    }

    /// Ends the call with a BYE to each side (a half-moved call is no call).
    fn move_end_call(&mut self, key: CallKey, reason: String, sip: &mut SipActions<'_>) {
        if let Some(call) = self.calls.get(&key) {
            tracing::warn!(call_id = %call.media_id, %reason, "migration failed: ending the call");
        }
        self.move_interrupted(key, reason);
        self.end_call(
            key,
            DeleteReason::Failed,
            None,
            (500, "Migration failed"),
            sip,
        );
    }

    /// The end of a call's migration: reported, published, and the call's
    /// own re-INVITEs welcome again.
    pub(super) fn move_ended(&mut self, key: CallKey, outcome: MoveOutcome, detail: String) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(moving) = call.moving.take() else {
            return;
        };
        call.reoffer = false;
        if let Some(at) = moving.retry_at {
            self.timers.remove(&(at, TimerId::Migrate(key)));
        }
        let report = CallMoved {
            id: call.info.id.clone(),
            from: moving.from,
            to: moving.to,
            outcome,
            detail,
        };
        tracing::info!(call_id = %call.media_id, outcome = outcome.name(), from = %report.from, to = ?report.to, detail = %report.detail, "migration ended");
        let _ = moving.reply.send(MoveReport::Call(report.clone()));
        self.publish(|| Event::CallMoved {
            id: report.id,
            from: report.from,
            to: report.to,
            outcome: outcome.name(),
            detail: report.detail,
        });
    }

    /// A call ending while it moves (end_call calls this first): its
    /// migration ends with it; with X gone its legs there are forgotten
    /// first, so the call's Delete goes to Y only.
    pub(super) fn move_interrupted(&mut self, key: CallKey, detail: String) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        let Some(moving) = call.moving.as_ref() else {
            return;
        };
        if moving.gone && moving.to.is_some() {
            let call = call.media_id.clone();
            let id = MediaRequestId(self.next());
            self.media.insert(id, (key, Purpose::MoveFigures));
            self.requests.push_back(MediaRequest {
                id,
                call,
                op: MediaOp::Release { delete: false },
            });
        }
        self.move_ended(key, MoveOutcome::Ended, detail);
    }
}

/// Whether a call can move now: answered and bridged, nothing in progress
/// on it (a re-INVITE, a 2xx awaiting its ACK).
fn movable(call: &Call) -> bool {
    call.answered
        && call.phase == Phase::Bridged
        && !call.reoffer
        && call.b.is_some()
        && call.awaiting_ack.iter().all(Option::is_none)
        && call.pending_ack.is_none()
        && call.caller_last.is_some()
        && call.sdp_sent.iter().all(Option::is_some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_new_sdp_keeps_the_peers_origin_with_the_next_version() {
        let known = "v=0\r\no=- 77 4 IN IP4 203.0.113.1\r\ns=-\r\n";
        let fresh = "v=0\r\no=- 9 1 IN IP4 198.51.100.9\r\ns=y\r\nc=IN IP4 198.51.100.9\r\n";
        assert_eq!(
            with_origin(fresh, Some(known)),
            "v=0\r\no=- 77 5 IN IP4 203.0.113.1\r\ns=y\r\nc=IN IP4 198.51.100.9\r\n"
        );
        assert_eq!(with_origin(fresh, None), fresh, "nothing known: as is");
    }

    #[test]
    fn glare_waits_follow_rfc3261_14_1() {
        for draw in [0, 1, 1900, 1901, 5000, u64::MAX] {
            let owner = glare_wait(true, draw).as_millis();
            assert!((2100..=4000).contains(&owner), "owner wait {owner}");
            let other = glare_wait(false, draw).as_millis();
            assert!(other <= 2000, "other wait {other}");
        }
    }
}
