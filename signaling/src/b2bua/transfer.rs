//! Blind transfer (RFC 3515 REFER, RFC 5589's call flow): either party of
//! an answered call (the transferor) sends REFER with a Refer-To; the
//! other party (the transferee) stays, and the B2BUA calls the target in
//! the transferor's place.
//!
//! The target is routed through the dialplan as a call to the Refer-To's
//! user would be (its route's first dial action, the first target that
//! gives a contact now); no route is 403, so a transfer reaches nothing
//! a call could not. Who may transfer: the caller (it could have dialled
//! the target itself) and registered users; a callee reached at a SIP
//! URI (a trunk, a peer) only when its dial has `allow_transfer`, since a
//! transfer makes this server place a call the far end chose (403
//! otherwise). REFER is answered 202 and the transferor told how it
//! goes with NOTIFYs of `message/sipfrag` (100 Trying, 180 Ringing, then
//! the final status, terminating the implicit subscription).
//!
//! The media stays where it is: the target is offered the SDP the
//! transferor last got (the manager's side of the transferor's leg), and
//! its answer updates that leg on the manager, so the transferee keeps
//! sending to the same address and needs no re-INVITE. When the target
//! answers, its dialog takes the transferor's place and the transferor
//! gets BYE. A transferor that hangs up after the 202 (as phones do in a
//! blind transfer) leaves the transferee waiting for the target; if the
//! target then fails, the call ends. If the transferee hangs up, the
//! target's INVITE is cancelled.
//!
//! Not handled: Replaces (attended transfer, 501), targets named by host
//! name that are not resolved yet (403 asks to retry), transfer of a call
//! being moved or re-offered (491).

use super::build::sdp_of;
use super::*;

/// A transfer in progress on a call.
#[derive(Debug)]
pub(super) struct Transfer {
    /// The transferor's leg; the other one stays.
    from: CallLeg,
    /// The transferor is still there to be told (NOTIFY) and hung up on.
    transferor_present: bool,
    /// The INVITE to the target.
    client: TransactionKey,
    /// The target may transfer in turn once it answers.
    target_may_transfer: bool,
    /// The last status notified.
    notified: u16,
    /// When the target has rung long enough.
    deadline: Instant,
}

/// The INVITE to a transfer target.
#[derive(Debug, Clone)]
pub(super) struct TransferBranch {
    pub(super) call: CallKey,
    pub(super) sent: SentInvite,
    /// A provisional came: it can be cancelled.
    pub(super) provisional: bool,
    /// The call or the transfer is over: a 2xx is ACKed and BYEd.
    pub(super) abandoned: bool,
}

const SIPFRAG: &str = "message/sipfrag;version=2.0";

impl B2bua {
    /// A REFER on `leg` of call `key` (in its dialog).
    pub(super) fn refer(
        &mut self,
        now: Now,
        key: CallKey,
        leg: CallLeg,
        server: TransactionKey,
        request: &SipMessage,
        sip: &mut SipActions<'_>,
    ) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        let tag = call.dialog(leg).map(|d| d.local_tag.clone());
        let refuse = |sip: &mut SipActions<'_>, status: u16, reason: &str| {
            respond(sip, &server, status, reason, tag.as_ref(), &[], None);
        };
        if call.transfer.is_some() || call.moving.is_some() || call.reoffer {
            return refuse(sip, 491, "Request Pending");
        }
        if call.phase != Phase::Bridged || call.dialog(leg.other()).is_none() {
            return refuse(sip, 403, "Forbidden (the call is not established)");
        }
        if !call.may_transfer[leg_index(leg)] {
            // A far end reached through a SIP URI would make this server
            // place calls through its own routes (toll fraud).
            tracing::info!(call_id = %call.media_id, %leg, "transfer refused: this party may not transfer (allow_transfer)");
            return refuse(sip, 403, "Forbidden (transfer not allowed for this party)");
        }
        let refer_to = request.header_list("Refer-To");
        let [refer_to] = refer_to.as_slice() else {
            return refuse(sip, 400, "Bad Request (one Refer-To)");
        };
        // An embedded Replaces header (`?Replaces=call-id%3Bto-tag…`).
        if refer_to.to_ascii_lowercase().contains("replaces=") {
            return refuse(sip, 501, "Not Implemented (attended transfer)");
        }
        let Some(user) = NameAddr::parse(refer_to)
            .ok()
            .filter(|t| matches!(t.uri.scheme(), sip::Scheme::Sip | sip::Scheme::Sips))
            .and_then(|t| t.uri.user())
        else {
            return refuse(
                sip,
                400,
                "Bad Request (Refer-To is not a SIP URI with a user)",
            );
        };
        let Some((contact, timeout, allow_transfer)) = self.transfer_contact(key, &user, sip)
        else {
            tracing::info!(call_id = %call.media_id, %leg, target = %user, "transfer refused: no route reaches the target now");
            return refuse(sip, 403, "Forbidden (no route to the transfer target)");
        };
        respond(sip, &server, 202, "Accepted", tag.as_ref(), &[], None);
        tracing::info!(call_id = %call.media_id, %leg, target = %user, "transfer: calling the target");
        let target_may_transfer = contact.may_transfer || allow_transfer;
        let Some(client) = self.invite_transfer_target(key, leg, contact, sip) else {
            self.notify(key, leg, 503, "Service Unavailable", true, sip);
            return;
        };
        let deadline = now.instant + timeout;
        if let Some(call) = self.calls.get_mut(&key) {
            call.transfer = Some(Transfer {
                from: leg,
                transferor_present: true,
                client,
                target_may_transfer,
                notified: 100,
                deadline,
            });
        }
        self.timers.insert((deadline, TimerId::Transfer(key)));
        self.notify(key, leg, 100, "Trying", false, sip);
    }

    /// The contact a transfer to `user` calls, how long it rings and the
    /// dial's `allow_transfer`: the dialplan's route for `user`, its first
    /// dial action, the first of its targets that gives a contact now.
    fn transfer_contact(
        &self,
        key: CallKey,
        user: &str,
        sip: &SipActions<'_>,
    ) -> Option<(Contact, Duration, bool)> {
        let call = self.calls.get(&key)?;
        let route = self.dialplan.route(user)?;
        let vars = CallVars {
            destination: user,
            caller_id: &call.caller_number,
            caller_name: call.caller_name.as_deref().unwrap_or(""),
            call_id: call.a.call_id.as_str(),
        };
        let (targets, timeout, allow_transfer) =
            route
                .actions
                .iter()
                .find_map(|action| match action.with_vars(&vars) {
                    Action::Dial {
                        targets,
                        timeout,
                        allow_transfer,
                        ..
                    } => Some((targets, timeout, allow_transfer)),
                    _ => None,
                })?;
        let contact = targets.iter().find_map(|target| {
            if let Some(query) = dial::name_query(target) {
                // Only what the resolver already answered: a REFER is
                // answered at once.
                let (result, until) = self.resolutions.get(&query)?;
                let destination = *result.as_ref().ok()?.destinations.first()?;
                let Target::Uri(uri) = target else {
                    return None;
                };
                return (*until > sip.now().instant).then(|| Contact {
                    uri: uri.clone(),
                    to: format!("<{uri}>"),
                    route: Vec::new(),
                    destination,
                    session_expires: None,
                    failover: false,
                    may_transfer: false,
                });
            }
            dial::expand(
                target,
                &self.config.local,
                self.local_host(),
                &call.domain,
                sip,
            )
            .ok()?
            .into_iter()
            .next()
        })?;
        Some((contact, timeout, allow_transfer))
    }

    /// Sends the INVITE to the transfer target, offering what the
    /// transferor's leg last got from the manager.
    fn invite_transfer_target(
        &mut self,
        key: CallKey,
        from: CallLeg,
        contact: Contact,
        sip: &mut SipActions<'_>,
    ) -> Option<TransactionKey> {
        let branch = self.new_branch();
        let unique = self.unique();
        let host = self.local_host().to_owned();
        let local = self.config.local.clone();
        let call = self.calls.get(&key)?;
        let offer = call.sdp_sent[leg_index(from)].clone()?;
        // The target sees the transferee as calling.
        let stays = call.dialog(from.other())?;
        let number = stays
            .remote
            .uri
            .user()
            .unwrap_or_else(|| "anonymous".to_owned());
        let from_address = NameAddr {
            display_name: stays.remote.display_name.clone(),
            uri: Uri::parse(&format!("sip:{number}@{host}")).ok()?,
            params: Vec::new(),
        };
        let sent = SentInvite {
            uri: contact.uri.clone(),
            branch,
            from: from_address,
            from_tag: Tag::new(format!("sb{unique}")),
            to: NameAddr::parse(&contact.to).ok()?,
            call_id: CallId::new(format!("sb{unique}t@{host}")),
            cseq: 1,
            route: contact.route.clone(),
            destination: contact.destination,
            session_expires: None,
        };
        let headers = [("Allow".to_owned(), ALLOW_IN_CALLS.to_owned())];
        let request = invite_of(&local, &sent, 70, &headers, Some(&offer));
        let client = send(sip, request, sent.destination)?;
        self.sip_ids.insert(sent.call_id.clone(), (key, from));
        self.clients.insert(
            client.clone(),
            ClientTx::Transfer(Box::new(TransferBranch {
                call: key,
                sent,
                provisional: false,
                abandoned: false,
            })),
        );
        Some(client)
    }

    /// Tells the transferor how its REFER goes (RFC 3515 §2.4.5), if it
    /// is still there; `last` ends the subscription.
    fn notify(
        &mut self,
        key: CallKey,
        leg: CallLeg,
        status: u16,
        reason: &str,
        last: bool,
        sip: &mut SipActions<'_>,
    ) {
        let state = if last {
            "terminated;reason=noresource"
        } else {
            "active;expires=60"
        };
        let headers = [
            ("Event".to_owned(), "refer".to_owned()),
            ("Subscription-State".to_owned(), state.to_owned()),
        ];
        let body = format!("SIP/2.0 {status} {reason}\r\n");
        if let Some(client) = self.send_on_leg(
            key,
            leg,
            &Method::Notify,
            &headers,
            Some((SIPFRAG, body.as_bytes())),
            sip,
        ) {
            self.clients.insert(client, ClientTx::Fire);
        }
    }

    /// A response to the INVITE of a transfer target.
    pub(super) fn transfer_response(
        &mut self,
        client: TransactionKey,
        response: SipMessage,
        sip: &mut SipActions<'_>,
    ) {
        let status = response.status().unwrap_or(500);
        let Some(ClientTx::Transfer(branch)) = self.clients.get_mut(&client) else {
            return;
        };
        if (100..200).contains(&status) && status > 100 {
            branch.provisional = true;
        }
        let branch = (**branch).clone();
        let current = self
            .calls
            .get(&branch.call)
            .and_then(|c| c.transfer.as_ref())
            .filter(|t| t.client == client)
            .map(|t| {
                (
                    t.from,
                    t.transferor_present,
                    t.notified,
                    t.target_may_transfer,
                )
            });
        let Some((from, present, notified, may_transfer)) = current.filter(|_| !branch.abandoned)
        else {
            // The call or the transfer is over.
            if (200..300).contains(&status) {
                self.ack_and_bye(&branch.sent, &response, sip);
            } else if (101..200).contains(&status) {
                self.cancel_transfer(&client, sip);
            }
            return;
        };
        let key = branch.call;
        match status {
            100 => {}
            101..=199 => {
                if present && notified < 180 {
                    if let Some(transfer) =
                        self.calls.get_mut(&key).and_then(|c| c.transfer.as_mut())
                    {
                        transfer.notified = 180;
                    }
                    self.notify(key, from, 180, "Ringing", false, sip);
                }
            }
            200..=299 => {
                if let Some(call) = self.calls.get_mut(&key) {
                    call.may_transfer[leg_index(from)] = may_transfer;
                }
                self.transfer_answered(key, from, present, &branch.sent, &response, sip);
            }
            _ => {
                let reason = response.reason().unwrap_or("").to_owned();
                self.transfer_failed(key, status, &reason, sip);
            }
        }
    }

    /// The target answered: it takes the transferor's place.
    fn transfer_answered(
        &mut self,
        key: CallKey,
        from: CallLeg,
        transferor_present: bool,
        sent: &SentInvite,
        response: &SipMessage,
        sip: &mut SipActions<'_>,
    ) {
        let Some(answer) = sdp_of(response) else {
            // An answer must come with the 2xx of our offer: nothing to
            // bridge to. The target is hung up on (ACK, BYE); the call stays.
            tracing::info!("transfer target answered without SDP; hung up");
            self.ack_and_bye(sent, response, sip);
            self.transfer_failed(key, 488, "Not Acceptable Here", sip);
            return;
        };
        let dialog = self.ack_2xx(sent, response, sip);
        if transferor_present {
            self.notify(key, from, 200, "OK", true, sip);
            if let Some(bye) = self.send_on_leg(key, from, &Method::Bye, &[], None, sip) {
                self.ending.insert(bye.clone());
                self.clients.insert(bye, ClientTx::Fire);
            }
        }
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let old = match from {
            CallLeg::A => Some(std::mem::replace(&mut call.a, dialog.clone())),
            CallLeg::B => call.b.replace(dialog.clone()),
        };
        if let Some(old) = old {
            self.dialogs
                .remove(&(old.call_id.clone(), old.local_tag.clone()));
        }
        self.dialogs.insert(
            (dialog.call_id.clone(), dialog.local_tag.clone()),
            (key, from),
        );
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.transfer = None;
        call.session[leg_index(from)] = None;
        if from == CallLeg::B {
            call.info.callee = Some(view::party_at(&sent.uri, &sent.destination));
            call.info.callee_sdp = Some(answer.clone());
        }
        let awaiting = call.awaiting_ack[leg_index(from)].take();
        tracing::info!(call_id = %call.media_id, leg = %from, "transfer: the target answered and took the transferor's place");
        if let Some(server) = awaiting {
            self.stop_retransmit(&server);
        }
        if let Some(sink) = &self.shared {
            if let Some(call) = self.calls.get(&key) {
                let record = shared::SharedCall::of(sink.node(), call);
                sink.send(shared::SharedCallUpdate::Up(Box::new(record)));
            }
        }
        self.media(
            key,
            Purpose::TransferAnswer,
            MediaOp::Answer {
                leg: from,
                peer: from.other(),
                sdp: answer,
                bridge: false,
            },
        );
    }

    /// The target did not answer: the transferor is told; without a
    /// transferor left, the call ends.
    fn transfer_failed(
        &mut self,
        key: CallKey,
        status: u16,
        reason: &str,
        sip: &mut SipActions<'_>,
    ) {
        let Some(transfer) = self.calls.get_mut(&key).and_then(|c| c.transfer.take()) else {
            return;
        };
        tracing::info!(
            status,
            present = transfer.transferor_present,
            "transfer failed"
        );
        if transfer.transferor_present {
            self.notify(key, transfer.from, status, reason, true, sip);
        } else {
            self.end_call(
                key,
                DeleteReason::Hangup,
                Some(transfer.from),
                (480, ""),
                sip,
            );
        }
    }

    /// The transfer target rang too long.
    pub(super) fn transfer_due(&mut self, now: Now, key: CallKey, sip: &mut SipActions<'_>) {
        let Some(transfer) = self.calls.get(&key).and_then(|c| c.transfer.as_ref()) else {
            return;
        };
        if transfer.deadline > now.instant {
            return;
        }
        let client = transfer.client.clone();
        self.cancel_transfer(&client, sip);
        self.transfer_failed(key, 408, "Request Timeout", sip);
    }

    /// The transfer target's INVITE timed out (Timer B).
    pub(super) fn transfer_timeout(&mut self, client: &TransactionKey, sip: &mut SipActions<'_>) {
        let Some(ClientTx::Transfer(branch)) = self.clients.get(client) else {
            return;
        };
        let key = branch.call;
        let current = self
            .calls
            .get(&key)
            .and_then(|c| c.transfer.as_ref())
            .is_some_and(|t| t.client == *client);
        if current {
            self.transfer_failed(key, 408, "Request Timeout", sip);
        }
    }

    /// Gives up the target's INVITE: CANCEL once it has a provisional,
    /// else a later 1xx gets the CANCEL and a later 2xx ACK and BYE.
    pub(super) fn cancel_transfer(&mut self, client: &TransactionKey, sip: &mut SipActions<'_>) {
        let Some(ClientTx::Transfer(branch)) = self.clients.get_mut(client) else {
            return;
        };
        let first = !branch.abandoned;
        branch.abandoned = true;
        if branch.provisional && first {
            let sent = branch.sent.clone();
            if let Some(cancel) = send_cancel(&self.config.local, &sent, sip) {
                self.ending.insert(cancel);
            }
            self.ending.insert(client.clone());
        }
    }

    /// The transferor hung up during its transfer: the transferee waits
    /// for the target. `true` when that is the case (the BYE is answered
    /// and the call goes on).
    pub(super) fn transferor_left(&mut self, key: CallKey, leg: CallLeg) -> bool {
        let Some(transfer) = self.calls.get_mut(&key).and_then(|c| c.transfer.as_mut()) else {
            return false;
        };
        if transfer.from != leg {
            return false;
        }
        transfer.transferor_present = false;
        true
    }

    /// The call ends during a transfer: the target's INVITE is given up.
    pub(super) fn abandon_transfer(&mut self, call: &Call, sip: &mut SipActions<'_>) {
        if let Some(transfer) = &call.transfer {
            let client = transfer.client.clone();
            self.cancel_transfer(&client, sip);
        }
    }
}
