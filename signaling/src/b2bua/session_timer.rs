//! Session timers (RFC 4028), kept per leg: each leg negotiates its own
//! interval and refresher with its peer, as a B2BUA terminates both
//! dialogs.
//!
//! Leg a: the caller's `Session-Expires` is honoured (422 with `Min-SE`
//! below [`MIN_SE`]); the refresher is the one the caller asked for, else
//! the caller when it supports `timer`, else us. Leg b: our INVITE offers
//! `Supported: timer` with the caller's interval (or [`DEFAULT_SE`]), asks
//! once more with the callee's `Min-SE` after a 422, and the callee's 2xx
//! decides. When we refresh, we send UPDATE without SDP if the
//! peer allows it, else a re-INVITE with the SDP we last sent it, at half
//! the interval; when the peer refreshes, any re-INVITE or UPDATE from it
//! counts, and without one the call ends `min(32, interval/3)` seconds
//! before expiry (§10) with BYE on both legs.

use std::time::{Duration, Instant};

use super::*;

/// The smallest interval accepted (RFC 4028 §4 recommends 90 s).
pub(super) const MIN_SE: u32 = 90;

/// The interval offered to callees when the caller gave none.
pub(super) const DEFAULT_SE: u32 = 1800;

/// A `Session-Expires` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SessionExpires {
    pub(super) secs: u32,
    /// `Some(true)` for `refresher=uac`, `Some(false)` for `uas`.
    pub(super) uac_refreshes: Option<bool>,
}

impl SessionExpires {
    /// The header of `message`, if present and well formed.
    pub(super) fn of(message: &SipMessage) -> Option<SessionExpires> {
        let value = message.header("Session-Expires")?;
        let mut parts = value.split(';');
        let secs = parts.next()?.trim().parse().ok()?;
        let uac_refreshes = parts
            .filter_map(|p| p.split_once('='))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("refresher"))
            .and_then(|(_, v)| match v.trim().to_ascii_lowercase().as_str() {
                "uac" => Some(true),
                "uas" => Some(false),
                _ => None,
            });
        Some(SessionExpires {
            secs,
            uac_refreshes,
        })
    }
}

/// Whether `message` says its sender supports (or requires) session timers.
pub(super) fn supports_timer(message: &SipMessage) -> bool {
    message
        .supported()
        .iter()
        .chain(message.require().iter())
        .any(|tag| tag.eq_ignore_ascii_case("timer"))
}

/// Whether `message`'s sender accepts UPDATE (its Allow header).
pub(super) fn allows_update(message: &SipMessage) -> bool {
    message
        .header_list("Allow")
        .iter()
        .any(|m| m.eq_ignore_ascii_case("UPDATE"))
}

/// One leg's session timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SessionTimer {
    pub(super) interval: u32,
    /// We send the refreshes (else the peer does).
    pub(super) we_refresh: bool,
    /// The peer sent `Supported: timer` (our 2xx then says `Require: timer`).
    pub(super) peer_supports: bool,
    /// The peer accepts UPDATE for our refreshes.
    pub(super) peer_allows_update: bool,
    /// When we refresh, or when the session expires without a refresh.
    pub(super) deadline: Instant,
}

impl SessionTimer {
    fn due(&self, from: Instant) -> Instant {
        let interval = u64::from(self.interval);
        from + if self.we_refresh {
            Duration::from_secs(interval / 2)
        } else {
            Duration::from_secs(interval - (interval / 3).min(32))
        }
    }

    /// `Session-Expires` and, when the peer supports it, `Require: timer`,
    /// for our 2xx on this leg.
    pub(super) fn headers(&self, leg: CallLeg) -> Vec<(String, String)> {
        // Leg a: we are the UAS; leg b: the UAC.
        let uac_refreshes = match leg {
            CallLeg::A => !self.we_refresh,
            CallLeg::B => self.we_refresh,
        };
        let mut headers = vec![(
            "Session-Expires".to_owned(),
            format!(
                "{};refresher={}",
                self.interval,
                if uac_refreshes { "uac" } else { "uas" }
            ),
        )];
        if self.peer_supports {
            headers.push(("Require".to_owned(), "timer".to_owned()));
        }
        headers
    }
}

impl B2bua {
    /// Starts (or restarts after a refresh) a leg's session timer.
    pub(super) fn arm_session(
        &mut self,
        key: CallKey,
        leg: CallLeg,
        timer: SessionTimer,
        now: Now,
    ) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let timer = SessionTimer {
            deadline: timer.due(now.instant),
            ..timer
        };
        if let Some(old) = call.session[leg_index(leg)].replace(timer) {
            self.timers
                .remove(&(old.deadline, TimerId::Session(key, leg)));
        }
        self.timers
            .insert((timer.deadline, TimerId::Session(key, leg)));
    }

    /// A refresh happened on `leg` (a re-INVITE or UPDATE either way).
    pub(super) fn session_refreshed(&mut self, key: CallKey, leg: CallLeg, now: Now) {
        let timer = self.calls.get(&key).and_then(|c| c.session[leg_index(leg)]);
        if let Some(timer) = timer {
            self.arm_session(key, leg, timer, now);
        }
    }

    /// A leg's session timer fired: refresh it, or end the call.
    pub(super) fn session_due(
        &mut self,
        now: Now,
        key: CallKey,
        leg: CallLeg,
        sip: &mut SipActions<'_>,
    ) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        let Some(timer) = call.session[leg_index(leg)] else {
            return;
        };
        if timer.deadline > now.instant {
            return;
        }
        if !timer.we_refresh {
            tracing::info!(call_id = %call.media_id, %leg, "session expired without a refresh");
            self.end_call(
                key,
                DeleteReason::SessionTimer,
                None,
                (408, "Session Expired"),
                sip,
            );
            return;
        }
        if call.moving.is_some() {
            // A migration's re-INVITE is in flight or due on the call: a
            // second INVITE in the dialog would cross it, and its 2xx
            // refreshes the session anyway.
            self.arm_session(key, leg, timer, now);
            return;
        }
        let (method, body) = if timer.peer_allows_update {
            (Method::Update, None)
        } else {
            (Method::Invite, call.sdp_sent[leg_index(leg)].clone())
        };
        let headers = timer.headers(leg);
        let sent = self.send_on_leg(
            key,
            leg,
            &method,
            &headers,
            body.as_deref().map(|s| (SDP, s.as_bytes())),
            sip,
        );
        match sent {
            Some(client) => {
                tracing::debug!(%leg, %method, "session refresh sent");
                self.clients
                    .insert(client, ClientTx::Refresh { call: key, leg });
                // Until the answer, the next attempt is the one after this.
                self.arm_session(key, leg, timer, now);
            }
            None => self.end_call(
                key,
                DeleteReason::SessionTimer,
                None,
                (500, "Refresh Failed"),
                sip,
            ),
        }
    }

    /// The answer to one of our refreshes.
    pub(super) fn refresh_response(
        &mut self,
        key: CallKey,
        leg: CallLeg,
        response: &SipMessage,
        sip: &mut SipActions<'_>,
    ) {
        let status = response.status().unwrap_or(500);
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        let media_id = call.media_id.clone();
        let dialog = call.dialog(leg).cloned();
        if response.method() == &Method::Invite && (200..300).contains(&status) {
            if let Some(dialog) = dialog {
                self.ack_in_dialog(&dialog, response, sip);
            }
        }
        match status {
            200..=299 => self.session_refreshed(key, leg, sip.now()),
            // §10: the session is gone at the peer.
            408 | 481 => self.end_call(
                key,
                DeleteReason::SessionTimer,
                None,
                (408, "Session Expired"),
                sip,
            ),
            _ => {
                tracing::info!(call_id = %media_id, %leg, status, "session refresh refused");
            }
        }
    }
}
