//! The INVITE client transaction (RFC 3261 §17.1.1, amended by RFC 6026).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::sip::{Method, SipMessage};

use super::{
    build_non_2xx_ack, pop_releasing, status_of, Reliability, Timer, TimerConfig, Timers,
    TransactionError, TransactionEvent,
};

/// States of figure 5 of RFC 3261, plus Accepted from RFC 6026.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientInviteState {
    /// INVITE sent, no response yet; timers A (unreliable only) and B run.
    Calling,
    /// A provisional response arrived; no retransmissions, no timeout.
    Proceeding,
    /// A 300–699 arrived and was ACKed; timer D absorbs its retransmissions.
    Completed,
    /// A 2xx arrived; timer M passes 2xx retransmissions up to the TU.
    Accepted,
    /// Done.
    Terminated,
}

/// An INVITE client transaction.
#[derive(Debug)]
pub struct ClientInvite {
    state: ClientInviteState,
    config: TimerConfig,
    reliability: Reliability,
    /// The INVITE, retransmitted by Timer A and answered by the ACK of a
    /// non-2xx; let go once a 2xx arrives (Accepted lasts 32 s, Timer M,
    /// for every answered call, and passes 2xx retransmissions up by the
    /// layer's key alone).
    request: Option<SipMessage>,
    /// The ACK for the non-2xx final response, re-sent on each retransmission of it.
    ack: Option<SipMessage>,
    /// Current timer A interval; doubles at each firing with no cap (§17.1.1.2).
    timer_a_interval: Duration,
    timers: Timers,
    transmits: VecDeque<SipMessage>,
    events: VecDeque<TransactionEvent>,
}

impl ClientInvite {
    /// Starts the transaction: queues the INVITE and starts timers A and B.
    pub fn new(
        now: Instant,
        request: SipMessage,
        reliability: Reliability,
        config: TimerConfig,
    ) -> Result<Self, TransactionError> {
        if *request.method() != Method::Invite {
            return Err(TransactionError::WrongMethod {
                found: request.method().to_string(),
            });
        }
        let mut transaction = Self {
            state: ClientInviteState::Calling,
            config,
            reliability,
            request: Some(request.clone()),
            ack: None,
            timer_a_interval: config.t1,
            timers: Timers::default(),
            transmits: VecDeque::from([request]),
            events: VecDeque::new(),
        };
        if reliability.is_unreliable() {
            transaction.timers.start(Timer::A, now + config.t1);
        }
        transaction.timers.start(Timer::B, now + config.t1x64());
        Ok(transaction)
    }

    /// The current state.
    pub fn state(&self) -> ClientInviteState {
        self.state
    }

    /// The INVITE this transaction sends, until a 2xx arrives.
    pub fn request(&self) -> Option<&SipMessage> {
        self.request.as_ref()
    }

    /// Feeds a response that matched this transaction.
    pub fn handle_response(
        &mut self,
        now: Instant,
        response: SipMessage,
    ) -> Result<(), TransactionError> {
        let status = status_of(&response)?;
        match (self.state, status) {
            (ClientInviteState::Calling | ClientInviteState::Proceeding, 100..=199) => {
                self.state = ClientInviteState::Proceeding;
                self.timers.cancel_all();
                self.events.push_back(TransactionEvent::Response(response));
            }
            (ClientInviteState::Calling | ClientInviteState::Proceeding, 200..=299) => {
                self.state = ClientInviteState::Accepted;
                self.timers.cancel_all();
                self.timers.start(Timer::M, now + self.config.t1x64());
                self.request = None;
                self.events.push_back(TransactionEvent::Response(response));
            }
            (ClientInviteState::Calling | ClientInviteState::Proceeding, _) => {
                // Calling and Proceeding keep the request.
                let ack = self
                    .request
                    .as_ref()
                    .map(|request| build_non_2xx_ack(request, &response))
                    .transpose()?;
                self.state = ClientInviteState::Completed;
                self.timers.cancel_all();
                self.timers
                    .start(Timer::D, now + self.config.timer_d(self.reliability));
                self.transmits.extend(ack.clone());
                self.ack = ack;
                self.events.push_back(TransactionEvent::Response(response));
            }
            (ClientInviteState::Accepted, 200..=299) => {
                self.events.push_back(TransactionEvent::Response(response));
            }
            (ClientInviteState::Completed, 300..=699) => {
                if let Some(ack) = &self.ack {
                    self.transmits.push_back(SipMessage::clone(ack));
                }
            }
            // Late provisionals, a non-2xx after a 2xx (a forking oddity) and
            // anything after Terminated carry nothing the TU can act on.
            (
                ClientInviteState::Accepted
                | ClientInviteState::Completed
                | ClientInviteState::Terminated,
                _,
            ) => {}
        }
        self.handle_timeout(now);
        Ok(())
    }

    /// Fires the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.timers.pop_expired(now) {
            match (timer, self.state) {
                (Timer::A, ClientInviteState::Calling) => {
                    self.transmits.extend(self.request.as_ref().cloned());
                    self.timer_a_interval *= 2;
                    self.timers.start(Timer::A, now + self.timer_a_interval);
                }
                (Timer::B, ClientInviteState::Calling) => {
                    self.events.push_back(TransactionEvent::Timeout(Timer::B));
                    self.terminate();
                }
                (Timer::D, ClientInviteState::Completed)
                | (Timer::M, ClientInviteState::Accepted) => self.terminate(),
                // Every state change cancels the timers of the state it left,
                // so a mismatch here is unreachable in practice and harmless.
                _ => {}
            }
        }
    }

    /// Reports that the INVITE or the ACK could not be sent (§17.1.4).
    pub fn handle_transport_error(&mut self, _now: Instant) {
        if self.state != ClientInviteState::Terminated {
            self.events.push_back(TransactionEvent::TransportError);
            self.terminate();
        }
    }

    /// The next deadline, if any timer runs.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<SipMessage> {
        pop_releasing(&mut self.transmits)
    }

    /// The next event for the TU.
    pub fn poll_event(&mut self) -> Option<TransactionEvent> {
        pop_releasing(&mut self.events)
    }

    fn terminate(&mut self) {
        self.state = ClientInviteState::Terminated;
        self.timers.cancel_all();
        self.events.push_back(TransactionEvent::Terminated);
    }
}
