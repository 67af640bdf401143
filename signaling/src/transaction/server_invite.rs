//! The INVITE server transaction (RFC 3261 §17.2.1, amended by RFC 6026).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::sip::{Method, SipMessage};

use super::{
    build_trying, pop_releasing, status_of, Reliability, Timer, TimerConfig, Timers,
    TransactionError, TransactionEvent, TryingPolicy,
};

/// States of figure 7 of RFC 3261, plus Accepted from RFC 6026.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerInviteState {
    /// INVITE passed up; provisionals go out; INVITE retransmissions get the last one.
    Proceeding,
    /// A 300–699 went out; timer G retransmits it until an ACK or timer H.
    Completed,
    /// The ACK arrived; timer I absorbs ACK retransmissions.
    Confirmed,
    /// A 2xx went out; the TU retransmits it; timer L absorbs INVITE retransmissions.
    Accepted,
    /// Done.
    Terminated,
}

impl ServerInviteState {
    fn name(self) -> &'static str {
        match self {
            Self::Proceeding => "Proceeding",
            Self::Completed => "Completed",
            Self::Confirmed => "Confirmed",
            Self::Accepted => "Accepted",
            Self::Terminated => "Terminated",
        }
    }
}

/// An INVITE server transaction.
#[derive(Debug)]
pub struct ServerInvite {
    state: ServerInviteState,
    config: TimerConfig,
    reliability: Reliability,
    /// The INVITE, for a 100 Trying of the transaction's own; let go once
    /// a 2xx is sent. Accepted lasts 32 s (Timer L) for every answered
    /// call, absorbing INVITE retransmissions by the layer's key alone, and
    /// a parsed message held that long costs several times its octets.
    request: Option<SipMessage>,
    /// The last response sent, re-sent on INVITE retransmissions and timer
    /// G; not kept in Accepted (the TU retransmits its 2xx itself).
    last_response: Option<SipMessage>,
    /// Current timer G interval: doubles, capped at T2 (§17.2.1).
    timer_g_interval: Duration,
    timers: Timers,
    transmits: VecDeque<SipMessage>,
    events: VecDeque<TransactionEvent>,
}

impl ServerInvite {
    /// Starts the transaction for a received INVITE: passes it up and,
    /// per `trying`, sends 100 Trying now or arms the Trying timer.
    pub fn new(
        now: Instant,
        request: SipMessage,
        reliability: Reliability,
        config: TimerConfig,
        trying: TryingPolicy,
    ) -> Result<Self, TransactionError> {
        if *request.method() != Method::Invite {
            return Err(TransactionError::WrongMethod {
                found: request.method().to_string(),
            });
        }
        let mut transaction = Self {
            state: ServerInviteState::Proceeding,
            config,
            reliability,
            request: Some(request.clone()),
            last_response: None,
            timer_g_interval: config.t1,
            timers: Timers::default(),
            transmits: VecDeque::new(),
            events: VecDeque::from([TransactionEvent::Request(request)]),
        };
        match trying {
            TryingPolicy::Immediate => transaction.send_trying(),
            TryingPolicy::After(delay) => transaction.timers.start(Timer::Trying, now + delay),
        }
        Ok(transaction)
    }

    /// The current state.
    pub fn state(&self) -> ServerInviteState {
        self.state
    }

    /// The INVITE this transaction serves, until a 2xx is sent.
    pub fn request(&self) -> Option<&SipMessage> {
        self.request.as_ref()
    }

    /// Feeds a request that matched this transaction: an INVITE
    /// retransmission or an ACK.
    pub fn handle_request(&mut self, now: Instant, request: SipMessage) {
        match (request.method(), self.state) {
            (Method::Invite, ServerInviteState::Proceeding | ServerInviteState::Completed) => {
                if let Some(response) = &self.last_response {
                    self.transmits.push_back(SipMessage::clone(response));
                }
            }
            (Method::Ack, ServerInviteState::Completed) => {
                self.state = ServerInviteState::Confirmed;
                self.timers.cancel_all();
                let timer_i = match self.reliability {
                    Reliability::Reliable => Duration::ZERO,
                    Reliability::Unreliable => self.config.t4,
                };
                self.timers.start(Timer::I, now + timer_i);
            }
            // RFC 6026 §7.1: an ACK matching in Accepted goes to the TU.
            (Method::Ack, ServerInviteState::Accepted) => {
                self.events.push_back(TransactionEvent::Request(request));
            }
            // INVITE retransmissions in Accepted are absorbed, not passed up
            // (RFC 6026 §7.1); ACKs in Confirmed are absorbed (§17.2.1).
            _ => {}
        }
        self.handle_timeout(now);
    }

    /// Sends a response from the TU.
    pub fn send_response(
        &mut self,
        now: Instant,
        response: SipMessage,
    ) -> Result<(), TransactionError> {
        let status = status_of(&response)?;
        match (self.state, status) {
            (ServerInviteState::Proceeding, 100..=199) => {
                self.timers.cancel(Timer::Trying);
                self.send(response);
            }
            (ServerInviteState::Proceeding, 200..=299) => {
                self.state = ServerInviteState::Accepted;
                self.timers.cancel_all();
                self.timers.start(Timer::L, now + self.config.t1x64());
                self.request = None;
                self.last_response = None;
                self.transmits.push_back(response);
            }
            (ServerInviteState::Proceeding, _) => {
                self.state = ServerInviteState::Completed;
                self.timers.cancel_all();
                if self.reliability.is_unreliable() {
                    self.timers.start(Timer::G, now + self.timer_g_interval);
                }
                self.timers.start(Timer::H, now + self.config.t1x64());
                self.send(response);
            }
            // The TU retransmits its 2xx itself; RFC 6026 §7.1 passes them on.
            (ServerInviteState::Accepted, 200..=299) => self.transmits.push_back(response),
            (state, status) => {
                return Err(TransactionError::ResponseNotAllowed {
                    status,
                    state: state.name(),
                })
            }
        }
        self.handle_timeout(now);
        Ok(())
    }

    /// Fires the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.timers.pop_expired(now) {
            match (timer, self.state) {
                (Timer::Trying, ServerInviteState::Proceeding) if self.last_response.is_none() => {
                    self.send_trying();
                }
                (Timer::G, ServerInviteState::Completed) => {
                    if let Some(response) = &self.last_response {
                        self.transmits.push_back(SipMessage::clone(response));
                    }
                    self.timer_g_interval = (self.timer_g_interval * 2).min(self.config.t2);
                    self.timers.start(Timer::G, now + self.timer_g_interval);
                }
                (Timer::H, ServerInviteState::Completed) => {
                    self.events.push_back(TransactionEvent::Timeout(Timer::H));
                    self.terminate();
                }
                (Timer::I, ServerInviteState::Confirmed)
                | (Timer::L, ServerInviteState::Accepted) => self.terminate(),
                // State changes cancel the timers of the state left behind.
                _ => {}
            }
        }
    }

    /// Reports that a response could not be sent (§17.2.4).
    pub fn handle_transport_error(&mut self, _now: Instant) {
        if self.state != ServerInviteState::Terminated {
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

    fn send_trying(&mut self) {
        if let Some(request) = &self.request {
            let trying = build_trying(request);
            self.send(trying);
        }
    }

    fn send(&mut self, response: SipMessage) {
        self.transmits.push_back(response.clone());
        self.last_response = Some(response);
    }

    fn terminate(&mut self) {
        self.state = ServerInviteState::Terminated;
        self.timers.cancel_all();
        self.events.push_back(TransactionEvent::Terminated);
    }
}
