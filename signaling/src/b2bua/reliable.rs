//! Reliable provisional responses towards a caller that requires them
//! (RFC 3262, `Require: 100rel`): carriers that send it were refused 420
//! before this.
//!
//! Each 18x to such a caller carries `Require: 100rel` and an `RSeq` one
//! above the last, and is sent again at T1, 2·T1, 4·T1… until the caller's
//! PRACK names it (`RAck: RSeq CSeq INVITE`); the PRACK is answered 200
//! here, not relayed (the callee leg is ours, its 18x plain). One reliable
//! provisional is outstanding at a time: a newer 18x waits for the PRACK
//! and replaces any other waiting one. The caller's 2xx waits for the
//! PRACK too (§3: not before the PRACK of a provisional with SDP; we wait
//! for any, a round trip at most). Without a PRACK for 64·T1 the INVITE is
//! answered 500 and the call ends (§3). A caller that only supports
//! 100rel gets plain 18x, as RFC 3262 allows.

use super::*;

/// The 100rel state of a caller that requires it.
#[derive(Debug, Default)]
pub(super) struct Reliable {
    /// The RSeq of the last reliable provisional sent.
    rseq: u32,
    /// The one awaiting its PRACK.
    outstanding: Option<Outstanding>,
    /// The next 18x, sent once the outstanding one is acknowledged.
    queued: Option<Provisional>,
    /// The caller's 2xx (its purpose and SDP), held until the PRACK.
    held_answer: Option<(Purpose, String)>,
    /// The CSeq number of the caller's INVITE, which a PRACK's RAck names.
    invite_cseq: u32,
}

impl Reliable {
    /// The state for a caller's INVITE: `Some` when it requires 100rel;
    /// the first RSeq is drawn from `seed` (RFC 3262 §3: between 1 and
    /// 2^31 - 1, so a reused Call-ID does not repeat RSeqs).
    pub(super) fn of(request: &SipMessage, seed: u64) -> Option<Reliable> {
        let required = request
            .require()
            .iter()
            .any(|tag| tag.eq_ignore_ascii_case("100rel"));
        required.then(|| Reliable {
            rseq: (seed % 0x7fff_0000) as u32,
            invite_cseq: request.cseq().seq,
            ..Reliable::default()
        })
    }
}

#[derive(Debug, Clone)]
struct Provisional {
    status: u16,
    reason: String,
    sdp: Option<String>,
}

#[derive(Debug)]
struct Outstanding {
    provisional: Provisional,
    rseq: u32,
    interval: Duration,
    next: Instant,
    give_up: Instant,
}

impl B2bua {
    /// Sends a provisional to the caller: plainly, or reliably when the
    /// caller requires it (queued behind one awaiting its PRACK).
    pub(super) fn provisional_to_caller(
        &mut self,
        now: Now,
        key: CallKey,
        status: u16,
        reason: &str,
        sdp: Option<String>,
        sip: &mut SipActions<'_>,
    ) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(invite) = call.invite.clone() else {
            return;
        };
        let provisional = Provisional {
            status,
            reason: reason.to_owned(),
            sdp,
        };
        let Some(reliable) = call.reliable.as_mut() else {
            let headers = leg_headers(&self.config.local, call, CallLeg::A);
            respond(
                sip,
                &invite,
                status,
                reason,
                Some(&call.a.local_tag),
                &headers,
                provisional.sdp.as_deref().map(|s| (SDP, s.as_bytes())),
            );
            return;
        };
        if reliable.outstanding.is_some() {
            reliable.queued = Some(provisional);
            return;
        }
        reliable.rseq = reliable.rseq.wrapping_add(1).max(1);
        let t1 = self.config.timers.t1;
        let outstanding = Outstanding {
            provisional,
            rseq: reliable.rseq,
            interval: t1,
            next: now.instant + t1,
            give_up: now.instant + t1 * 64,
        };
        let next = outstanding.next;
        reliable.outstanding = Some(outstanding);
        self.send_reliable(key, sip);
        self.timers.insert((next, TimerId::Reliable(key)));
    }

    /// (Re)sends the outstanding reliable provisional.
    fn send_reliable(&self, key: CallKey, sip: &mut SipActions<'_>) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        let (Some(invite), Some(reliable)) = (&call.invite, &call.reliable) else {
            return;
        };
        let Some(outstanding) = &reliable.outstanding else {
            return;
        };
        let mut headers = leg_headers(&self.config.local, call, CallLeg::A);
        headers.push(("Require".to_owned(), "100rel".to_owned()));
        headers.push(("RSeq".to_owned(), outstanding.rseq.to_string()));
        let provisional = &outstanding.provisional;
        respond(
            sip,
            invite,
            provisional.status,
            &provisional.reason,
            Some(&call.a.local_tag),
            &headers,
            provisional.sdp.as_deref().map(|s| (SDP, s.as_bytes())),
        );
    }

    /// The retransmission timer of a reliable provisional.
    pub(super) fn reliable_due(&mut self, now: Now, key: CallKey, sip: &mut SipActions<'_>) {
        let Some(outstanding) = self
            .calls
            .get_mut(&key)
            .filter(|c| c.invite.is_some())
            .and_then(|c| c.reliable.as_mut())
            .and_then(|r| r.outstanding.as_mut())
        else {
            return;
        };
        if outstanding.next > now.instant {
            return;
        }
        if now.instant >= outstanding.give_up {
            tracing::info!(
                rseq = outstanding.rseq,
                "no PRACK for a reliable provisional: the INVITE is answered 500"
            );
            self.end_call(
                key,
                DeleteReason::Failed,
                None,
                (500, "Server Internal Error (no PRACK)"),
                sip,
            );
            return;
        }
        outstanding.interval *= 2;
        // The last wait ends at the give-up time, not past it.
        outstanding.next = (now.instant + outstanding.interval).min(outstanding.give_up);
        let next = outstanding.next;
        self.send_reliable(key, sip);
        self.timers.insert((next, TimerId::Reliable(key)));
    }

    /// The caller's 2xx: the call is answered (its event, its shared
    /// record, its session timer), after any PRACK it had to wait for.
    pub(super) fn answer_caller(
        &mut self,
        now: Now,
        key: CallKey,
        purpose: Purpose,
        sdp: String,
        sip: &mut SipActions<'_>,
    ) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(invite) = call.invite.take() else {
            return;
        };
        call.answered = true;
        call.info.answered = Some(now.wall);
        let id = call.info.id.clone();
        self.publish(|| Event::CallAnswered {
            id,
            at_ms: view::unix_ms(now.wall),
        });
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.phase = if purpose == Purpose::SelfAnswer {
            Phase::Working
        } else {
            Phase::Bridged
        };
        tracing::info!(call_id = %call.media_id, "caller answered");
        if let Some(sink) = &self.shared {
            let record = shared::SharedCall::of(sink.node(), call);
            sink.send(shared::SharedCallUpdate::Up(Box::new(record)));
        }
        let session = call.session[0];
        self.answer_2xx(now, key, CallLeg::A, &invite, Some(sdp), sip);
        if let Some(timer) = session {
            self.arm_session(key, CallLeg::A, timer, now);
        }
        if purpose == Purpose::SelfAnswer {
            self.next_action(now, key, sip);
        }
    }

    /// Whether the caller's 2xx must wait for a PRACK; if so it is kept
    /// and sent by [`B2bua::prack`].
    pub(super) fn hold_answer(&mut self, key: CallKey, purpose: &Purpose, sdp: &str) -> bool {
        let Some(reliable) = self.calls.get_mut(&key).and_then(|c| c.reliable.as_mut()) else {
            return false;
        };
        if reliable.outstanding.is_none() {
            return false;
        }
        // Nothing provisional goes out after the final response.
        reliable.queued = None;
        reliable.held_answer = Some((purpose.clone(), sdp.to_owned()));
        true
    }

    /// A PRACK from the caller: 200 when its RAck names the outstanding
    /// reliable provisional (then the next provisional or the held 2xx
    /// goes out), 481 otherwise (RFC 3262 §4).
    pub(super) fn prack(
        &mut self,
        now: Now,
        server: TransactionKey,
        request: SipMessage,
        sip: &mut SipActions<'_>,
    ) {
        let found = request
            .to_tag()
            .and_then(|tag| self.dialogs.get(&(request.call_id().clone(), tag)).copied())
            .filter(|(_, leg)| *leg == CallLeg::A);
        let rack = request.header("RAck").and_then(parse_rack);
        let matched = found.and_then(|(key, _)| {
            let call = self.calls.get(&key)?;
            call.invite.as_ref()?;
            let reliable = call.reliable.as_ref()?;
            let outstanding = reliable.outstanding.as_ref()?;
            let (rseq, cseq, method) = rack.as_ref()?;
            (*rseq == outstanding.rseq && *cseq == reliable.invite_cseq && method == "INVITE")
                .then_some(key)
        });
        let Some(key) = matched else {
            respond(
                sip,
                &server,
                481,
                "Call/Transaction Does Not Exist",
                None,
                &[],
                None,
            );
            return;
        };
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let tag = call.a.local_tag.clone();
        respond(sip, &server, 200, "OK", Some(&tag), &[], None);
        let Some(reliable) = call.reliable.as_mut() else {
            return;
        };
        reliable.outstanding = None;
        let held = reliable.held_answer.take();
        let queued = reliable.queued.take();
        if let Some((purpose, sdp)) = held {
            self.answer_caller(now, key, purpose, sdp, sip);
        } else if let Some(next) = queued {
            self.provisional_to_caller(now, key, next.status, &next.reason, next.sdp, sip);
        }
    }
}

/// `RAck: response-num CSeq-num Method` (RFC 3262 §7.2).
fn parse_rack(value: &str) -> Option<(u32, u32, String)> {
    let mut parts = value.split_whitespace();
    let rseq = parts.next()?.parse().ok()?;
    let cseq = parts.next()?.parse().ok()?;
    let method = parts.next()?.to_ascii_uppercase();
    parts.next().is_none().then_some((rseq, cseq, method))
}

#[cfg(test)]
mod tests {
    use super::parse_rack;

    #[test]
    fn rack_has_three_parts() {
        assert_eq!(
            parse_rack("776656 1 INVITE"),
            Some((776656, 1, "INVITE".to_owned()))
        );
        assert_eq!(
            parse_rack(" 5  2 invite "),
            Some((5, 2, "INVITE".to_owned()))
        );
        assert_eq!(parse_rack("5 INVITE"), None);
        assert_eq!(parse_rack("x 1 INVITE"), None);
        assert_eq!(parse_rack("5 1 INVITE extra"), None);
    }
}
