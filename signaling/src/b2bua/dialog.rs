//! Established dialogs: requests either side sends inside its dialog
//! (BYE, re-INVITE and UPDATE through the manager, INFO relayed), the
//! requests we send in a dialog (ACK, BYE, re-offers) and the
//! retransmission of our 2xx until its ACK.

use super::build::{self, contact_of, sdp_of, with_tag, Outgoing};
use super::*;

impl B2bua {
    /// The ACK for a 2xx to an INVITE we sent (`sent`), to the 2xx's
    /// Contact along the dialog's `route`.
    pub(super) fn send_ack(
        &mut self,
        sent: &SentInvite,
        target: &str,
        to: &str,
        route: &[String],
        sdp: Option<&str>,
        sip: &mut SipActions<'_>,
    ) {
        let branch = self.new_branch();
        let from = with_tag(&sent.from, Some(&sent.from_tag));
        let extra = with_routes(route, &[]);
        let Some(ack) = build::request(&Outgoing {
            method: &Method::Ack,
            uri: target,
            local: &self.config.local,
            branch: &branch,
            destination: sent.destination,
            from: &from,
            to,
            call_id: &sent.call_id,
            cseq: sent.cseq,
            max_forwards: 70,
            contact: false,
            extra: &extra,
            body: sdp.map(|s| (SDP, s.as_bytes())),
        }) else {
            return;
        };
        sip.send_stateless(sent.destination, &ack);
        sip.note_sent(Note {
            call_id: sent.call_id.clone(),
            first_line: format!("ACK {target} SIP/2.0"),
            cseq: format!("{} ACK", sent.cseq),
            peer: Some(sent.destination.remote()),
        });
    }

    /// Sends a request inside `dialog`; `None` when it could not be sent.
    pub(super) fn send_in_dialog(
        &mut self,
        dialog: &mut Dialog,
        method: &Method,
        extra: &[(String, String)],
        body: Option<(&str, &[u8])>,
        sip: &mut SipActions<'_>,
    ) -> Option<TransactionKey> {
        let branch = self.new_branch();
        dialog.local_cseq += 1;
        let from = with_tag(&dialog.local, Some(&dialog.local_tag));
        let to = with_tag(&dialog.remote, dialog.remote_tag.as_ref());
        let extra = with_routes(&dialog.route_set, extra);
        let request = build::request(&Outgoing {
            method,
            uri: &dialog.target,
            local: &self.config.local,
            branch: &branch,
            destination: dialog.destination,
            from: &from,
            to: &to,
            call_id: &dialog.call_id,
            cseq: dialog.local_cseq,
            max_forwards: 70,
            // RFC 6665 §4.1.2.2: a NOTIFY carries a Contact too.
            contact: matches!(method, Method::Invite | Method::Update | Method::Notify),
            extra: &extra,
            body,
        });
        send(sip, request, dialog.destination)
    }

    /// Sends a request on `leg` of a live call.
    pub(super) fn send_on_leg(
        &mut self,
        key: CallKey,
        leg: CallLeg,
        method: &Method,
        extra: &[(String, String)],
        body: Option<(&str, &[u8])>,
        sip: &mut SipActions<'_>,
    ) -> Option<TransactionKey> {
        let call = self.calls.get_mut(&key)?;
        let mut dialog = match leg {
            CallLeg::A => call.a.clone(),
            CallLeg::B => call.b.clone()?,
        };
        let sent = self.send_in_dialog(&mut dialog, method, extra, body, sip);
        if let Some(call) = self.calls.get_mut(&key) {
            match leg {
                CallLeg::A => call.a.local_cseq = dialog.local_cseq,
                CallLeg::B => call.b = Some(dialog),
            }
        }
        sent
    }

    pub(super) fn in_dialog(
        &mut self,
        now: Now,
        server: TransactionKey,
        request: SipMessage,
        sip: &mut SipActions<'_>,
    ) {
        let method = request.method().clone();
        let found = request
            .to_tag()
            .and_then(|tag| self.dialogs.get(&(request.call_id().clone(), tag)).copied());
        let Some((key, leg)) = found.filter(|(k, leg)| {
            self.calls
                .get(k)
                .is_some_and(|c| c.dialog(*leg).is_some() && (*leg == CallLeg::B || c.answered))
        }) else {
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
        self.servers.insert(server.clone(), ServerTx::InDialog(key));
        let transferor_leaving = method == Method::Bye && self.transferor_left(key, leg);
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let tag = call.dialog(leg).map(|d| d.local_tag.clone());
        if let Some(target) = contact_of(&request) {
            if matches!(method, Method::Invite | Method::Update) {
                match leg {
                    CallLeg::A => call.a.target = target,
                    CallLeg::B => {
                        if let Some(b) = call.b.as_mut() {
                            b.target = target;
                        }
                    }
                }
            }
        }
        match method {
            Method::Bye if transferor_leaving => {
                respond(sip, &server, 200, "OK", tag.as_ref(), &[], None);
                tracing::info!(call_id = %call.media_id, %leg, "BYE from the transferor: the transferee waits for the target");
            }
            Method::Refer => self.refer(now, key, leg, server, &request, sip),
            Method::Bye => {
                respond(sip, &server, 200, "OK", tag.as_ref(), &[], None);
                tracing::info!(call_id = %call.media_id, %leg, "BYE");
                // A callee hanging up before the caller's 2xx: 480 to the caller.
                self.end_call(key, DeleteReason::Hangup, Some(leg), (480, ""), sip);
            }
            Method::Invite | Method::Update => {
                let headers = leg_headers(&self.config.local, call, leg);
                let settled = matches!(call.phase, Phase::Bridged | Phase::Playing);
                if call.reoffer || !settled {
                    respond(
                        sip,
                        &server,
                        491,
                        "Request Pending",
                        tag.as_ref(),
                        &[],
                        None,
                    );
                    return;
                }
                self.session_refreshed(key, leg, now);
                let Some(call) = self.calls.get_mut(&key) else {
                    return;
                };
                match sdp_of(&request) {
                    Some(sdp) if call.phase == Phase::Bridged => {
                        call.reoffer = true;
                        if leg == CallLeg::A {
                            call.caller_last = Some(sdp.clone());
                        }
                        self.media(
                            key,
                            Purpose::Reoffer {
                                from: leg,
                                server,
                                method,
                            },
                            MediaOp::Offer {
                                leg,
                                peer: Some(leg.other()),
                                sdp,
                                // Both legs exist: their interfaces stay.
                                callee_interface: None,
                            },
                        );
                    }
                    Some(_) => {
                        respond(
                            sip,
                            &server,
                            488,
                            "Not Acceptable Here",
                            tag.as_ref(),
                            &[],
                            None,
                        );
                    }
                    None => {
                        // A refresh: nothing changes, the last SDP stands.
                        let last = call.sdp_sent[leg_index(leg)].clone();
                        let body = if method == Method::Invite { last } else { None };
                        if method == Method::Invite {
                            self.answer_2xx(now, key, leg, &server, body, sip);
                        } else {
                            respond(sip, &server, 200, "OK", tag.as_ref(), &headers, None);
                        }
                    }
                }
            }
            Method::Info if call.dialog(leg.other()).is_some() => {
                let body = request
                    .content_type()
                    .map(|t| (t.to_owned(), request.body().to_vec()));
                let sent = self.send_on_leg(
                    key,
                    leg.other(),
                    &Method::Info,
                    &[],
                    body.as_ref().map(|(t, b)| (t.as_str(), b.as_slice())),
                    sip,
                );
                match sent {
                    Some(client) => {
                        self.clients
                            .insert(client, ClientTx::Relay { call: key, server });
                    }
                    None => respond(
                        sip,
                        &server,
                        500,
                        "Server Internal Error",
                        tag.as_ref(),
                        &[],
                        None,
                    ),
                }
            }
            Method::Info => respond(sip, &server, 200, "OK", tag.as_ref(), &[], None),
            _ => respond(
                sip,
                &server,
                481,
                "Call/Transaction Does Not Exist",
                tag.as_ref(),
                &[],
                None,
            ),
        }
    }

    /// A final response to a relayed re-INVITE/UPDATE; `first` is false
    /// for retransmitted 2xx, which are only ACKed again.
    /// ACKs a 2xx to a re-INVITE we sent in `dialog`.
    pub(super) fn ack_in_dialog(
        &mut self,
        dialog: &Dialog,
        response: &SipMessage,
        sip: &mut SipActions<'_>,
    ) {
        let target = contact_of(response).unwrap_or_else(|| dialog.target.clone());
        let sent = SentInvite {
            uri: dialog.target.clone(),
            branch: sip::Branch::new(""),
            from: dialog.local.clone(),
            from_tag: dialog.local_tag.clone(),
            to: dialog.remote.clone(),
            call_id: dialog.call_id.clone(),
            cseq: response.cseq().seq,
            route: Vec::new(),
            destination: dialog.destination,
            session_expires: None,
        };
        let to_header = response.header("To").unwrap_or_default().to_owned();
        self.send_ack(&sent, &target, &to_header, &dialog.route_set, None, sip);
    }

    pub(super) fn reoffer_response(
        &mut self,
        reoffer: Reoffer,
        first: bool,
        response: SipMessage,
        sip: &mut SipActions<'_>,
    ) {
        let Reoffer {
            call: key,
            from,
            server,
            method,
            ..
        } = reoffer;
        let status = response.status().unwrap_or(500);
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let to = from.other();
        if method == Method::Invite && (200..300).contains(&status) {
            // The in-dialog ACK for the other side's 2xx: hop by hop here.
            if let Some(dialog) = call.dialog(to).cloned() {
                self.ack_in_dialog(&dialog, &response, sip);
            }
        }
        if !first {
            return;
        }
        if (200..300).contains(&status) {
            self.session_refreshed(key, to, sip.now());
        }
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let tag = call.dialog(from).map(|d| d.local_tag.clone());
        if let (200..=299, Some(sdp), CallLeg::A) = (status, sdp_of(&response), to) {
            call.caller_last = Some(sdp);
        }
        match (status, sdp_of(&response)) {
            (200..=299, Some(sdp)) => self.media(
                key,
                Purpose::Reanswer {
                    to: from,
                    server,
                    method,
                },
                MediaOp::Answer {
                    leg: to,
                    peer: from,
                    sdp,
                    bridge: false,
                },
            ),
            (200..=299, None) => {
                call.reoffer = false;
                respond(
                    sip,
                    &server,
                    488,
                    "Not Acceptable Here",
                    tag.as_ref(),
                    &[],
                    None,
                );
            }
            _ => {
                call.reoffer = false;
                respond(
                    sip,
                    &server,
                    status,
                    response.reason().unwrap_or(""),
                    tag.as_ref(),
                    &[],
                    None,
                );
            }
        }
    }

    /// Sends a 2xx to an INVITE on `leg` (our tag, Contact, Allow, session
    /// timer) and retransmits it until the ACK.
    pub(super) fn answer_2xx(
        &mut self,
        now: Now,
        key: CallKey,
        leg: CallLeg,
        server: &TransactionKey,
        sdp: Option<String>,
        sip: &mut SipActions<'_>,
    ) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        let Some(tag) = call.dialog(leg).map(|d| d.local_tag.clone()) else {
            return;
        };
        let headers = leg_headers(&self.config.local, call, leg);
        respond(
            sip,
            server,
            200,
            "OK",
            Some(&tag),
            &headers,
            sdp.as_deref().map(|s| (SDP, s.as_bytes())),
        );
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if sdp.is_some() {
            call.sdp_sent[leg_index(leg)] = sdp.clone();
        }
        if *server.method() != Method::Invite {
            return;
        }
        if let Some(old) = call.awaiting_ack[leg_index(leg)].replace(server.clone()) {
            self.stop_retransmit(&old);
        }
        let t1 = self.config.timers.t1;
        let next = now.instant + t1;
        self.retransmits.insert(
            server.clone(),
            Retransmit {
                call: key,
                status: 200,
                sdp,
                tag,
                headers,
                interval: t1,
                next,
                give_up: now.instant + self.config.timers.t1x64(),
            },
        );
        self.timers
            .insert((next, TimerId::Retransmit(server.clone())));
    }
}
