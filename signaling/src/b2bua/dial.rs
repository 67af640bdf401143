//! Setting calls up: a new INVITE routed through the dialplan, its
//! actions run one after the other, `dial` ringing contacts and choosing
//! among their responses, CANCEL from the caller and the caller's ACK
//! that releases the callee's.

use std::collections::VecDeque;

use super::build::{contact_of, sdp_of, with_tag};
use super::session_timer::{allows_update, supports_timer, SessionExpires, DEFAULT_SE, MIN_SE};
use super::*;
use crate::transport::{uri_destination, Advertised};
use crate::uas::edge::path_route;

impl B2bua {
    pub(super) fn invite(
        &mut self,
        now: Now,
        key: TransactionKey,
        request: SipMessage,
        flow: crate::transport::Flow,
        identity: &crate::auth::Authenticated,
        sip: &mut SipActions<'_>,
    ) {
        if self.closing {
            tracing::info!(call_id = %request.call_id(), "shutting down: new call refused");
            respond(
                sip,
                &key,
                503,
                "Service Unavailable",
                None,
                &[retry_after()],
                None,
            );
            return;
        }
        if request.vias().iter().any(|via| {
            via.branch()
                .is_some_and(|b| b.as_str().starts_with(&self.branch_prefix))
        }) {
            tracing::info!(call_id = %request.call_id(), "loop detected: our own INVITE came back");
            respond(sip, &key, 482, "Loop Detected", None, &[], None);
            return;
        }
        let originator = Originator::of(identity, &flow);
        let calls = self.originators.get(&originator).copied().unwrap_or(0);
        if let Some(limit) = originator.limit(self.config.limits) {
            if calls >= limit {
                // 486: the caller's own capacity is used up, as a busy
                // line's is; 503 would send it (or its proxy) to another
                // server and mark this one down for everybody.
                self.refused_over_limit += 1;
                tracing::info!(
                    call_id = %request.call_id(),
                    per = originator.kind(),
                    calls,
                    limit,
                    "too many calls at once: refused 486"
                );
                tracing::debug!(?originator, "caller over its call limit");
                respond(sip, &key, 486, "Busy Here", None, &[], None);
                return;
            }
        }
        let destination = request
            .request_uri()
            .and_then(Uri::user)
            .unwrap_or_default();
        let call_id = request.call_id().as_str().to_owned();
        let session_expires = SessionExpires::of(&request);
        if session_expires.is_some_and(|se| se.secs < MIN_SE) {
            let headers = [("Min-SE".to_owned(), MIN_SE.to_string())];
            respond(
                sip,
                &key,
                422,
                "Session Interval Too Small",
                None,
                &headers,
                None,
            );
            return;
        }
        let session_a = session_expires.map(|se| {
            let peer_supports = supports_timer(&request);
            SessionTimer {
                interval: se.secs,
                // The caller refreshes when it asked to, or may (§9).
                we_refresh: !se.uac_refreshes.unwrap_or(peer_supports),
                peer_supports,
                peer_allows_update: allows_update(&request),
                deadline: now.instant,
            }
        });
        let Some(route) = self.dialplan.route(&destination) else {
            tracing::info!(call_id, "no dialplan route");
            respond(sip, &key, 404, "Not Found", None, &[], None);
            return;
        };
        let Ok(caller) = self.config.identity.caller_id(request.from(), identity) else {
            tracing::info!(
                call_id,
                "INVITE refused: From is not the authenticated user"
            );
            respond(
                sip,
                &key,
                403,
                "Forbidden (From is not the authenticated user)",
                None,
                &[],
                None,
            );
            return;
        };
        let identity::CallerId {
            number: caller_number,
            name: caller_name,
            asserted,
        } = caller;
        let vars = CallVars {
            destination: &destination,
            caller_id: &caller_number,
            caller_name: caller_name.as_deref().unwrap_or(""),
            call_id: &call_id,
        };
        let actions: VecDeque<Action> = route.actions.iter().map(|a| a.with_vars(&vars)).collect();
        let route_name = route.id.to_string();
        tracing::info!(call_id, route = %route.id, actions = actions.len(), "new call routed");

        let mut media_id = self.config.owner.media_id(&call_id);
        while self.media_calls.contains_key(&media_id) {
            let unique = format!("{call_id}~{}", self.next());
            media_id = self.config.owner.media_id(&unique);
        }
        let call_key = CallKey(self.next());
        let local_tag = Tag::new(format!("sb{}", self.unique()));
        let b_tag = Tag::new(format!("sb{}", self.unique()));
        let b_call_id = CallId::new(format!("sb{}@{}", self.unique(), self.local_host()));
        let mut local = request.to().clone();
        local.params.retain(|p| !p.name.eq_ignore_ascii_case("tag"));
        let mut remote = request.from().clone();
        remote
            .params
            .retain(|p| !p.name.eq_ignore_ascii_case("tag"));
        let a = Dialog {
            call_id: request.call_id().clone(),
            local,
            local_tag: local_tag.clone(),
            remote,
            remote_tag: request.from_tag(),
            target: contact_of(&request).unwrap_or_else(|| request.from().uri.to_string()),
            // §12.1.1: the UAS keeps the Record-Route in order.
            route_set: request.header_list("Record-Route"),
            destination: flow.reply_destination(),
            local_cseq: 1,
        };
        *self.originators.entry(originator.clone()).or_default() += 1;
        let info = CallInfo {
            id: self.api_id(call_key),
            started: now.wall,
            answered: None,
            ringing: false,
            caller: crate::events::Party {
                uri: request.from().uri.to_string(),
                display_name: request.from().display_name.clone(),
                address: flow.remote().to_string(),
                transport: flow.transport().to_string().to_ascii_lowercase(),
            },
            callee: None,
            dialled: request
                .request_uri()
                .map(ToString::to_string)
                .unwrap_or_default(),
            route: route_name,
            manager: None,
            callee_sdp: None,
            history: view::History::default(),
        };
        self.publish(|| Event::CallCreated {
            id: info.id.clone(),
            at_ms: view::unix_ms(now.wall),
            caller: info.caller.clone(),
            callee: info.dialled.clone(),
        });
        let call = Call {
            info,
            media_id: media_id.clone(),
            started: now.instant,
            originator,
            invite: Some(key.clone()),
            a,
            b: None,
            b_call_id,
            b_tag: b_tag.clone(),
            b_cseq: 0,
            max_forwards: request.max_forwards().saturating_sub(1),
            domain: request
                .request_uri()
                .and_then(Uri::host)
                .map(ToString::to_string)
                .unwrap_or_default(),
            caller_number,
            caller_name,
            asserted,
            phase: Phase::Working,
            actions,
            dial: None,
            callee_interface: None,
            branches: Vec::new(),
            b_offer: None,
            caller_sdp: sdp_of(&request),
            early: None,
            answered: false,
            pending_ack: None,
            awaiting_ack: [None, None],
            sdp_sent: [None, None],
            session: [session_a, None],
            reoffer: false,
            media_used: false,
            caller_last: sdp_of(&request),
            moving: None,
            moved_legs: Vec::new(),
            transfer: None,
            may_transfer: [true, false],
            reliable: reliable::Reliable::of(
                &request,
                self.config.seed ^ self.next().wrapping_mul(0x9e37_79b9_7f4a_7c15),
            ),
        };
        self.sip_ids
            .insert(request.call_id().clone(), (call_key, CallLeg::A));
        self.sip_ids
            .insert(call.b_call_id.clone(), (call_key, CallLeg::B));
        self.dialogs.insert(
            (request.call_id().clone(), local_tag),
            (call_key, CallLeg::A),
        );
        self.dialogs
            .insert((call.b_call_id.clone(), b_tag), (call_key, CallLeg::B));
        self.media_calls.insert(media_id, call_key);
        self.servers.insert(key.clone(), ServerTx::Invite(call_key));
        self.calls.insert(call_key, call);
        self.next_action(now, call_key, sip);
        // The provisional the transaction would send after 200 ms, sent at
        // once when the call goes on (the manager is a round trip away).
        // Not when a final response is already queued: the core keeps only
        // the last response of a transaction until it flushes.
        if self
            .calls
            .get(&call_key)
            .is_some_and(|c| c.invite.is_some())
        {
            respond(sip, &key, 100, "Trying", None, &[], None);
        }
    }

    /// Runs the call's next dialplan action.
    pub(super) fn next_action(&mut self, now: Now, key: CallKey, sip: &mut SipActions<'_>) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.phase = Phase::Working;
        let Some(action) = call.actions.pop_front() else {
            if !call.answered {
                self.end_call(
                    key,
                    DeleteReason::Failed,
                    None,
                    (480, "Temporarily Unavailable"),
                    sip,
                );
            }
            return;
        };
        match action {
            Action::SetCallerId { number, name } => {
                if let Some(number) = number {
                    call.caller_number = number;
                }
                if name.is_some() {
                    call.caller_name = name;
                }
                self.next_action(now, key, sip);
            }
            Action::Answer if call.answered => self.next_action(now, key, sip),
            Action::Answer => match call.caller_sdp.clone() {
                Some(sdp) => self.media(
                    key,
                    Purpose::SelfAnswer,
                    MediaOp::Offer {
                        leg: CallLeg::A,
                        peer: None,
                        sdp,
                        callee_interface: None,
                    },
                ),
                None => {
                    // The manager answers offers; it cannot make one.
                    self.end_call(
                        key,
                        DeleteReason::Failed,
                        None,
                        (488, "Not Acceptable Here"),
                        sip,
                    );
                }
            },
            Action::PlayAudio { files } if !call.answered => {
                call.actions.push_front(Action::PlayAudio { files });
                call.actions.push_front(Action::Answer);
                self.next_action(now, key, sip);
            }
            Action::PlayAudio { files } => {
                call.phase = Phase::Playing;
                self.media(
                    key,
                    Purpose::Play,
                    MediaOp::Play {
                        leg: CallLeg::A,
                        files,
                    },
                );
            }
            Action::Hangup { code, reason } => {
                let status = if code >= 300 { code } else { 480 };
                let reason = if code >= 300 {
                    reason
                } else {
                    "Temporarily Unavailable".to_owned()
                };
                self.end_call(key, DeleteReason::Hangup, None, (status, &reason), sip);
            }
            Action::Dial { .. } if call.answered => {
                tracing::warn!(call_id = %call.media_id, "dial after answer is not supported; hanging up");
                self.end_call(key, DeleteReason::Hangup, None, (500, ""), sip);
            }
            Action::Dial {
                targets,
                timeout,
                ring,
                media_interface,
                max_redirects,
                allow_transfer,
            } => {
                call.callee_interface.clone_from(&media_interface);
                call.dial = Some(Dialing {
                    media_interface: media_interface.clone(),
                    targets: targets.into(),
                    attempts: VecDeque::new(),
                    ring,
                    timeout,
                    deadline: None,
                    best: None,
                    redirects_left: max_redirects,
                    rung: Vec::new(),
                    failover_at: None,
                    allow_transfer,
                });
                match call.caller_sdp.clone() {
                    Some(sdp) => self.media(
                        key,
                        Purpose::CallerOffer,
                        MediaOp::Offer {
                            leg: CallLeg::A,
                            peer: Some(CallLeg::B),
                            sdp,
                            callee_interface: media_interface,
                        },
                    ),
                    None => {
                        call.phase = Phase::Dialing;
                        self.next_attempt(now, key, sip);
                    }
                }
            }
        }
    }

    /// Rings the next contacts of the current `dial`, or gives up on it.
    pub(super) fn next_attempt(&mut self, now: Now, key: CallKey, sip: &mut SipActions<'_>) {
        let local_host = self.local_host().to_owned();
        let local = self.config.local.clone();
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(dial) = call.dial.as_mut() else {
            return;
        };
        let contacts = loop {
            if let Some(contacts) = dial.attempts.pop_front() {
                break Some(contacts);
            }
            let Some(target) = dial.targets.pop_front() else {
                break None;
            };
            if let Some(query) = name_query(&target) {
                // RFC 3263: the destinations of a name, tried one after
                // the other, once the resolver has answered.
                let fresh = self
                    .resolutions
                    .get(&query)
                    .filter(|(_, until)| *until > now.instant);
                match fresh {
                    Some((Ok(resolution), _)) => {
                        let Target::Uri(uri) = &target else {
                            continue;
                        };
                        let last = resolution.destinations.len().saturating_sub(1);
                        dial.attempts
                            .extend(resolution.destinations.iter().enumerate().map(
                                |(index, destination)| {
                                    vec![Contact {
                                        uri: uri.clone(),
                                        to: format!("<{uri}>"),
                                        route: Vec::new(),
                                        destination: *destination,
                                        session_expires: None,
                                        failover: index < last,
                                        may_transfer: false,
                                    }]
                                },
                            ));
                    }
                    Some((Err(_), _)) => record_failure(
                        dial,
                        503,
                        "Service Unavailable (name not resolved)".to_owned(),
                    ),
                    None if self.resolver.is_none() => {
                        record_failure(dial, 503, "Service Unavailable (no resolver)".to_owned())
                    }
                    None => {
                        // Wait for the answer with the target in front.
                        dial.targets.push_front(target);
                        let waiting = self.resolving.entry(query.clone()).or_default();
                        let first = waiting.is_empty();
                        if !waiting.contains(&key) {
                            waiting.push(key);
                        }
                        if first {
                            tracing::debug!(call_id = %call.media_id, host = %query.host, "resolving the dial target");
                            if let Some(resolver) = &self.resolver {
                                resolver.resolve(query);
                            }
                        }
                        return;
                    }
                }
                continue;
            }
            match expand(&target, &local, &local_host, &call.domain, sip) {
                Ok(contacts) => match dial.ring {
                    Ring::Parallel => dial.attempts.push_back(contacts),
                    Ring::Sequential => dial.attempts.extend(contacts.into_iter().map(|c| vec![c])),
                },
                Err((status, reason)) => record_failure(dial, status, reason),
            }
        };
        let Some(contacts) = contacts else {
            let (status, reason) = dial
                .best
                .take()
                .unwrap_or((480, "Temporarily Unavailable".to_owned()));
            call.dial = None;
            tracing::info!(call_id = %call.media_id, status, "dial failed");
            if call.actions.is_empty() {
                self.end_call(key, DeleteReason::Failed, None, (status, &reason), sip);
            } else {
                self.next_action(now, key, sip);
            }
            return;
        };
        let deadline = now.instant + dial.timeout;
        if let Some(old) = dial.deadline.replace(deadline) {
            self.timers.remove(&(old, TimerId::Dial(key)));
        }
        self.timers.insert((deadline, TimerId::Dial(key)));
        dial.failover_at = contacts
            .iter()
            .any(|c| c.failover)
            .then_some(now.instant + FAILOVER_AFTER);
        if let Some(at) = dial.failover_at {
            self.timers.insert((at, TimerId::Failover(key)));
        }
        call.b_cseq += 1;
        for contact in contacts {
            self.send_branch(key, contact, sip);
        }
    }

    /// The resolver's answer for `query`: kept until its records expire,
    /// and the dials waiting for it go on.
    pub(super) fn resolved(
        &mut self,
        now: Now,
        query: crate::resolve::Query,
        result: crate::resolve::Resolved,
        sip: &mut SipActions<'_>,
    ) {
        let until = match &result {
            Ok(resolution) => {
                tracing::debug!(host = %query.host, destinations = resolution.destinations.len(), "dial target resolved");
                resolution.valid_until
            }
            Err(unresolved) => {
                tracing::info!(host = %query.host, reason = %unresolved.reason, "dial target not resolved");
                now.instant + crate::resolve::NEGATIVE_TTL
            }
        };
        if self.resolutions.len() >= MAX_RESOLUTIONS {
            self.resolutions
                .retain(|_, (_, until)| *until > now.instant);
            if self.resolutions.len() >= MAX_RESOLUTIONS {
                self.resolutions.clear();
            }
        }
        // Held for this input even when already expired (a zero TTL), so
        // the waiting dials use it once.
        self.resolutions.insert(
            query.clone(),
            (result, until.max(now.instant + Duration::from_millis(1))),
        );
        for key in self.resolving.remove(&query).unwrap_or_default() {
            let waiting = self.calls.get(&key).is_some_and(|c| {
                c.dial.is_some() && c.branches.is_empty() && c.phase == Phase::Dialing
            });
            if waiting {
                self.next_attempt(now, key, sip);
            }
        }
    }

    pub(super) fn send_branch(&mut self, key: CallKey, contact: Contact, sip: &mut SipActions<'_>) {
        let branch = self.new_branch();
        let local = self.config.local.clone();
        let host = self.local_host().to_owned();
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let may_transfer =
            contact.may_transfer || call.dial.as_ref().is_some_and(|d| d.allow_transfer);
        let from = NameAddr {
            display_name: call.caller_name.clone(),
            uri: Uri::parse(&format!("sip:{}@{host}", call.caller_number))
                .or_else(|_| Uri::parse(&format!("sip:anonymous@{host}")))
                .unwrap_or_else(|_| call.a.local.uri.clone()),
            params: Vec::new(),
        };
        let to = NameAddr::parse(&contact.to).unwrap_or_else(|_| call.a.local.clone());
        let sent = SentInvite {
            uri: contact.uri,
            branch,
            from,
            from_tag: call.b_tag.clone(),
            to,
            call_id: call.b_call_id.clone(),
            cseq: call.b_cseq,
            route: contact.route,
            destination: contact.destination,
            session_expires: contact.session_expires,
        };
        let interval = contact
            .session_expires
            .unwrap_or_else(|| call.session[0].map_or(DEFAULT_SE, |t| t.interval));
        let mut headers = vec![
            ("Allow".to_owned(), ALLOW_IN_CALLS.to_owned()),
            ("Supported".to_owned(), "timer".to_owned()),
            ("Session-Expires".to_owned(), interval.to_string()),
            ("Min-SE".to_owned(), MIN_SE.to_string()),
        ];
        if let Some(user) = &call.asserted {
            // RFC 3325: the identity we verified, whatever From says.
            headers.push((
                "P-Asserted-Identity".to_owned(),
                format!("<sip:{user}@{host}>"),
            ));
        }
        let request = invite_of(
            &local,
            &sent,
            call.max_forwards,
            &headers,
            call.b_offer.as_deref(),
        );
        if let Some(dial) = call.dial.as_mut() {
            if !dial.rung.contains(&sent.uri) {
                dial.rung.push(sent.uri.clone());
            }
        }
        match send(sip, request, sent.destination) {
            Some(client) => {
                tracing::debug!(call_id = %call.media_id, b_call_id = %sent.call_id, "callee INVITE sent");
                call.info.callee = Some(view::party_at(&sent.uri, &sent.destination));
                call.branches.push(client.clone());
                self.clients.insert(
                    client,
                    ClientTx::Branch(Box::new(Branch {
                        call: key,
                        sent,
                        provisional: false,
                        cancel: Cancel::No,
                        abandoned: false,
                        won: false,
                        ack: None,
                        may_transfer,
                    })),
                );
            }
            None => {
                if let Some(dial) = call.dial.as_mut() {
                    record_failure(dial, 503, "Service Unavailable".to_owned());
                }
            }
        }
    }

    pub(super) fn branch_response(
        &mut self,
        now: Now,
        key: CallKey,
        client: TransactionKey,
        status: u16,
        response: SipMessage,
        sip: &mut SipActions<'_>,
    ) {
        // Any answer, even a 100, shows the destination is there: no
        // failover to the next one of its name from now on.
        if let Some(dial) = self.calls.get_mut(&key).and_then(|c| c.dial.as_mut()) {
            dial.failover_at = None;
        }
        let retry_with = (status == 422)
            .then(|| self.clients.get(&client))
            .flatten()
            .and_then(|tx| match tx {
                ClientTx::Branch(branch) if branch.sent.session_expires.is_none() => {
                    let min_se = response
                        .header("Min-SE")?
                        .split(';')
                        .next()?
                        .trim()
                        .parse()
                        .ok()?;
                    Some(Contact {
                        uri: branch.sent.uri.clone(),
                        to: with_tag(&branch.sent.to, None),
                        route: branch.sent.route.clone(),
                        destination: branch.sent.destination,
                        session_expires: Some(min_se),
                        failover: false,
                        may_transfer: branch.may_transfer,
                    })
                }
                _ => None,
            });
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let reason = response.reason().unwrap_or("").to_owned();
        match status {
            100 => {}
            101..=199 => {
                if call.invite.is_none() {
                    return;
                }
                if !call.info.ringing {
                    call.info.ringing = true;
                    let id = call.info.id.clone();
                    if let Some(bus) = &self.events {
                        bus.publish(Event::CallRinging {
                            id,
                            at_ms: view::unix_ms(now.wall),
                        });
                    }
                }
                let sdp = sdp_of(&response).filter(|_| call.b_offer.is_some());
                match sdp {
                    Some(sdp) => {
                        if let Some((early, rewritten)) = &call.early {
                            if *early == sdp && rewritten.is_empty() {
                                // Its Answer is in flight and relays the 18x.
                                return;
                            }
                            if *early == sdp {
                                let rewritten = rewritten.clone();
                                self.provisional_to_caller(
                                    now,
                                    key,
                                    status,
                                    &reason,
                                    Some(rewritten),
                                    sip,
                                );
                                return;
                            }
                        }
                        call.early = Some((sdp.clone(), String::new()));
                        self.media(
                            key,
                            Purpose::EarlyAnswer { status, reason },
                            MediaOp::Answer {
                                leg: CallLeg::B,
                                peer: CallLeg::A,
                                sdp,
                                bridge: false,
                            },
                        );
                    }
                    None => self.provisional_to_caller(now, key, status, &reason, None, sip),
                }
            }
            200..=299 => {
                let Some(ClientTx::Branch(branch)) = self.clients.get(&client) else {
                    return;
                };
                let sent = branch.sent.clone();
                call.may_transfer[leg_index(CallLeg::B)] = branch.may_transfer;
                if response.to_tag().is_none() {
                    tracing::info!(call_id = %call.media_id, "2xx without a To tag ignored");
                    return;
                }
                let dialog = sent.dialog_of(&response);
                call.info.callee = Some(view::party_at(&sent.uri, &sent.destination));
                call.info.callee_sdp = sdp_of(&response);
                call.pending_ack = Some(PendingAck {
                    key: client.clone(),
                    route_set: dialog.route_set.clone(),
                    to: response.header("To").unwrap_or_default().to_owned(),
                    target: dialog.target.clone(),
                    sent: sent.clone(),
                });
                call.b = Some(dialog);
                call.phase = Phase::Connecting;
                // A late offer creates the callee's leg below: on the dial
                // action's interface.
                let callee_interface = call.dial.take().and_then(|d| d.media_interface);
                if let Some(se) = SessionExpires::of(&response) {
                    // We are the UAC of leg b: refresher=uac means us.
                    let timer = SessionTimer {
                        interval: se.secs.max(MIN_SE),
                        we_refresh: se.uac_refreshes.unwrap_or(true),
                        peer_supports: supports_timer(&response),
                        peer_allows_update: allows_update(&response),
                        deadline: now.instant,
                    };
                    self.arm_session(key, CallLeg::B, timer, now);
                }
                let Some(call) = self.calls.get_mut(&key) else {
                    return;
                };
                let others: Vec<TransactionKey> =
                    call.branches.drain(..).filter(|k| *k != client).collect();
                let late = call.b_offer.is_none();
                let sdp = sdp_of(&response);
                tracing::info!(call_id = %call.media_id, status, "callee answered");
                self.abandon(&others, sip);
                match (late, sdp) {
                    (true, Some(sdp)) => self.media(
                        key,
                        Purpose::LateOffer,
                        MediaOp::Offer {
                            leg: CallLeg::B,
                            peer: Some(CallLeg::A),
                            sdp,
                            callee_interface,
                        },
                    ),
                    (false, Some(sdp)) => {
                        // The answer and the bridge in one request.
                        self.media(
                            key,
                            Purpose::FinalAnswer,
                            MediaOp::Answer {
                                leg: CallLeg::B,
                                peer: CallLeg::A,
                                sdp,
                                bridge: true,
                            },
                        );
                    }
                    (_, None) => {
                        tracing::info!(call_id = %call_id_of(&self.calls, key), "callee 2xx without SDP");
                        self.end_call(key, DeleteReason::Failed, None, (502, "Bad Gateway"), sip);
                    }
                }
            }
            422 if retry_with.is_some() => {
                // RFC 4028 §7.4: the callee wants a longer interval; ask
                // again once, with its Min-SE.
                call.branches.retain(|k| *k != client);
                call.b_cseq += 1;
                if let Some(contact) = retry_with {
                    self.send_branch(key, contact, sip);
                }
            }
            _ => {
                call.branches.retain(|k| *k != client);
                let six = status >= 600;
                let original_to = match self.clients.get(&client) {
                    Some(ClientTx::Branch(branch)) => with_tag(&branch.sent.to, None),
                    _ => String::new(),
                };
                let Some(call) = self.calls.get_mut(&key) else {
                    return;
                };
                if let Some(dial) = call.dial.as_mut() {
                    let redirected = (300..400).contains(&status)
                        && follow_redirect(dial, &response, &original_to, &call.media_id);
                    if !redirected {
                        let (status, reason) = if (300..400).contains(&status) {
                            (480, "Temporarily Unavailable".to_owned())
                        } else {
                            (status, reason)
                        };
                        record_failure(dial, status, reason);
                    }
                    if six {
                        // §16.7: a 6xx ends the search.
                        dial.targets.clear();
                        dial.attempts.clear();
                    }
                }
                if six {
                    let others = std::mem::take(&mut call.branches);
                    self.abandon(&others, sip);
                }
                let done = self.calls.get(&key).is_some_and(|c| c.branches.is_empty());
                if done {
                    self.next_attempt(now, key, sip);
                }
            }
        }
    }

    /// Cancels branches that are no longer wanted; their 2xx, if any, is
    /// ACKed and BYEd.
    pub(super) fn abandon(&mut self, keys: &[TransactionKey], sip: &mut SipActions<'_>) {
        for key in keys {
            if let Some(ClientTx::Branch(branch)) = self.clients.get_mut(key) {
                branch.abandoned = true;
                if branch.cancel == Cancel::No {
                    if branch.provisional {
                        branch.cancel = Cancel::Sent;
                        let cancel = send_cancel(&self.config.local, &branch.sent, sip);
                        // Its 487 and the CANCEL's 200 end the branch.
                        self.ending.extend(cancel);
                        self.ending.insert(key.clone());
                    } else {
                        branch.cancel = Cancel::Wanted;
                    }
                }
            }
        }
    }

    /// ACKs a 2xx to our INVITE at once, without a body (§13.2.2.4), and
    /// returns the dialog it set up.
    pub(super) fn ack_2xx(
        &mut self,
        sent: &SentInvite,
        response: &SipMessage,
        sip: &mut SipActions<'_>,
    ) -> Dialog {
        let dialog = sent.dialog_of(response);
        let to = response.header("To").unwrap_or_default();
        self.send_ack(sent, &dialog.target, to, &dialog.route_set, None, sip);
        dialog
    }

    /// The 2xx of a branch nobody wants: ACK it (§13.2.2.4) and end its dialog.
    pub(super) fn ack_and_bye(
        &mut self,
        sent: &SentInvite,
        response: &SipMessage,
        sip: &mut SipActions<'_>,
    ) {
        let mut dialog = self.ack_2xx(sent, response, sip);
        tracing::debug!(b_call_id = %sent.call_id, "unwanted 2xx: ACK and BYE");
        if let Some(key) = self.send_in_dialog(&mut dialog, &Method::Bye, &[], None, sip) {
            self.ending.insert(key.clone());
            self.clients.insert(key, ClientTx::Fire);
        }
    }

    /// ACKs the callee's 2xx and remembers it for retransmissions.
    pub(super) fn ack_callee(
        &mut self,
        pending: &PendingAck,
        sdp: Option<&str>,
        sip: &mut SipActions<'_>,
    ) {
        self.send_ack(
            &pending.sent,
            &pending.target,
            &pending.to,
            &pending.route_set,
            sdp,
            sip,
        );
        if let Some(ClientTx::Branch(branch)) = self.clients.get_mut(&pending.key) {
            branch.ack = Some(sdp.map(str::to_owned));
        }
    }

    pub(super) fn cancel(&mut self, invite: &TransactionKey, sip: &mut SipActions<'_>) {
        let Some(ServerTx::Invite(key)) = self.servers.get(invite).copied() else {
            return;
        };
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        if call.answered || call.invite.is_none() {
            // The 2xx crossed the CANCEL: the call goes on (§9.2).
            return;
        }
        tracing::info!(call_id = %call.media_id, "caller cancelled");
        self.end_call(
            key,
            DeleteReason::Cancelled,
            None,
            (487, "Request Terminated"),
            sip,
        );
    }

    pub(super) fn ack(&mut self, request: SipMessage, sip: &mut SipActions<'_>) {
        let Some(tag) = request.to_tag() else {
            return;
        };
        let Some((key, leg)) = self.dialogs.get(&(request.call_id().clone(), tag)).copied() else {
            return;
        };
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if let Some(server) = call.awaiting_ack[leg_index(leg)].take() {
            self.stop_retransmit(&server);
        }
        if leg != CallLeg::A {
            return;
        }
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(pending) = call.pending_ack.take() else {
            return;
        };
        if call.b_offer.is_none() {
            // Late offer: the caller's ACK carries the answer for the callee.
            match sdp_of(&request) {
                Some(sdp) => {
                    call.pending_ack = Some(pending);
                    call.caller_last = Some(sdp.clone());
                    // The answer and the bridge in one request, as for
                    // an early offer's final answer.
                    self.media(
                        key,
                        Purpose::LateAnswer,
                        MediaOp::Answer {
                            leg: CallLeg::A,
                            peer: CallLeg::B,
                            sdp,
                            bridge: true,
                        },
                    );
                }
                None => {
                    self.ack_callee(&pending, None, sip);
                    self.end_call(
                        key,
                        DeleteReason::Failed,
                        None,
                        (488, "Not Acceptable Here"),
                        sip,
                    );
                }
            }
            return;
        }
        self.ack_callee(&pending, None, sip);
    }
}

/// Keeps the most telling final response of a dial: 6xx, then 4xx (but 408
/// and 480 only when nothing better came), then 5xx.
pub(super) fn record_failure(dial: &mut Dialing, status: u16, reason: String) {
    let rank = |s: u16| match s {
        600..=699 => 0,
        408 | 480 => 2,
        400..=499 => 1,
        _ => 3,
    };
    let better = dial
        .best
        .as_ref()
        .is_none_or(|(best, _)| rank(status) < rank(*best));
    if better {
        dial.best = Some((status, reason));
    }
}

/// Queues a 3xx's Contacts to be rung next, in q order (highest first,
/// RFC 3261 §8.1.3.4; file order among equals), each on its own, before
/// the dial's remaining attempts. Refuses Contacts this dial has rung or
/// queued (a loop), Contacts it cannot reach (no IP address: no DNS yet;
/// not sip:) and all of them once the dial's redirects are spent. True
/// when at least one Contact was queued.
fn follow_redirect(
    dial: &mut Dialing,
    response: &SipMessage,
    to: &str,
    call: &MediaCallId,
) -> bool {
    if dial.redirects_left == 0 {
        tracing::info!(call_id = %call, status = response.status().unwrap_or(0), "redirect not followed: the dial's max_redirects is spent");
        return false;
    }
    let mut contacts: Vec<(u16, Contact)> = Vec::new();
    for name_addr in response.contacts() {
        let uri = name_addr.uri.to_string();
        if dial.rung.contains(&uri) || contacts.iter().any(|(_, c)| c.uri == uri) {
            tracing::info!(call_id = %call, contact = %uri, "redirect to a contact already rung in this dial refused (loop)");
            continue;
        }
        let destination = match uri_destination(&name_addr.uri) {
            Ok(destination) => destination,
            Err((status, _)) => {
                tracing::info!(call_id = %call, contact = %uri, status, "redirect contact cannot be reached; skipped");
                continue;
            }
        };
        contacts.push((
            q_millis(name_addr),
            Contact {
                uri,
                to: if to.is_empty() {
                    format!("<{}>", name_addr.uri)
                } else {
                    to.to_owned()
                },
                route: Vec::new(),
                destination,
                session_expires: None,
                failover: false,
                may_transfer: false,
            },
        ));
    }
    // Stable: equal q keeps the order the Contacts came in.
    contacts.sort_by_key(|(q, _)| std::cmp::Reverse(*q));
    contacts.truncate(MAX_REDIRECT_CONTACTS);
    if contacts.is_empty() {
        return false;
    }
    dial.redirects_left -= 1;
    tracing::info!(call_id = %call, contacts = contacts.len(), redirects_left = dial.redirects_left, "following a redirect");
    for (_, contact) in contacts.into_iter().rev() {
        dial.rung.push(contact.uri.clone());
        dial.attempts.push_front(vec![contact]);
    }
    true
}

/// A Contact's q-value in thousandths (RFC 3261 §20.10: 0 to 1, three
/// decimals); absent or unreadable is 1.
fn q_millis(contact: &NameAddr) -> u16 {
    let Some(Some(q)) = contact.param("q") else {
        return 1000;
    };
    q.trim()
        .parse::<f64>()
        .ok()
        .filter(|q| (0.0..=1.0).contains(q))
        .map_or(1000, |q| (q * 1000.0).round() as u16)
}

/// The query of a target whose host is a name (`None`: an address, a
/// user, or a URI that does not parse).
pub(super) fn name_query(target: &Target) -> Option<crate::resolve::Query> {
    match target {
        Target::Uri(text) => Uri::parse(text)
            .ok()
            .as_ref()
            .and_then(crate::resolve::Query::of),
        Target::User(_) => None,
    }
}

/// The contacts a dial target reaches now.
pub(super) fn expand(
    target: &Target,
    local: &Advertised,
    local_host: &str,
    domain: &str,
    sip: &SipActions<'_>,
) -> Result<Vec<Contact>, (u16, String)> {
    match target {
        Target::User(user) => {
            let mut bindings = sip.lookup(user);
            if bindings.is_empty() && !user.contains('@') && !domain.is_empty() {
                bindings = sip.lookup(&format!("{user}@{domain}"));
            }
            if bindings.is_empty() {
                return Err((480, "Temporarily Unavailable".to_owned()));
            }
            Ok(bindings
                .into_iter()
                .map(|b| {
                    let flow = Destination::over(&b.source.transport.into(), b.source.addr);
                    // RFC 3327: the Path recorded at registration is the
                    // route; through the node holding the phone's flow
                    // when it registered at another node.
                    let (route, destination) = path_route(&b.path, &local.to_string(), flow);
                    Contact {
                        uri: b.contact.clone(),
                        to: format!("<sip:{user}@{local_host}>"),
                        route,
                        session_expires: None,
                        destination,
                        failover: false,
                        // A registered user may transfer.
                        may_transfer: true,
                    }
                })
                .collect())
        }
        Target::Uri(text) => {
            let uri = Uri::parse(text).map_err(|_| (404, "Not Found".to_owned()))?;
            let destination = uri_destination(&uri)?;
            Ok(vec![Contact {
                uri: uri.to_string(),
                to: format!("<{uri}>"),
                route: Vec::new(),
                session_expires: None,
                destination,
                failover: false,
                may_transfer: false,
            }])
        }
    }
}
