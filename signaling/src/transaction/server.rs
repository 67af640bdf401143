//! The non-INVITE server transaction (RFC 3261 §17.2.2).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use std::sync::Arc;

use crate::sip::{parse, Method, SipMessage};

use super::{
    pop_releasing, status_of, Reliability, Timer, TimerConfig, Timers, TransactionError,
    TransactionEvent,
};

/// States of figure 8 of RFC 3261.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// SipMessage passed up; retransmissions are absorbed silently.
    Trying,
    /// A provisional went out; retransmissions get it again.
    Proceeding,
    /// A final went out; retransmissions get it again until timer J.
    Completed,
    /// Done.
    Terminated,
}

impl ServerState {
    fn name(self) -> &'static str {
        match self {
            Self::Trying => "Trying",
            Self::Proceeding => "Proceeding",
            Self::Completed => "Completed",
            Self::Terminated => "Terminated",
        }
    }
}

/// A non-INVITE server transaction.
#[derive(Debug)]
pub struct Server {
    state: ServerState,
    config: TimerConfig,
    reliability: Reliability,
    /// The octets of the final (or last provisional) response,
    /// retransmitted when the request is. Only octets are kept, and not the
    /// request (it was passed up; a retransmission is matched by the
    /// layer's key): each transaction lives 32 s after its answer over UDP,
    /// and a parsed message costs several times its octets, which a flood
    /// of requests multiplies. A retransmission, rare, reads them again.
    last_response: Option<Arc<[u8]>>,
    timers: Timers,
    transmits: VecDeque<SipMessage>,
    events: VecDeque<TransactionEvent>,
}

impl Server {
    /// Starts the transaction for a received request and passes it up.
    pub fn new(
        _now: Instant,
        request: SipMessage,
        reliability: Reliability,
        config: TimerConfig,
    ) -> Result<Self, TransactionError> {
        if matches!(request.method(), Method::Invite | Method::Ack) {
            return Err(TransactionError::WrongMethod {
                found: request.method().to_string(),
            });
        }
        Ok(Self {
            state: ServerState::Trying,
            config,
            reliability,
            last_response: None,
            timers: Timers::default(),
            transmits: VecDeque::new(),
            events: VecDeque::from([TransactionEvent::Request(request)]),
        })
    }

    /// The current state.
    pub fn state(&self) -> ServerState {
        self.state
    }

    /// Feeds a retransmission of the request.
    pub fn handle_request(&mut self, now: Instant, _request: SipMessage) {
        match self.state {
            ServerState::Proceeding | ServerState::Completed => {
                // Our own octets, built by sip: they parse.
                if let Some(response) = self.last_response.as_deref().and_then(|b| parse(b).ok()) {
                    self.transmits.push_back(response);
                }
            }
            ServerState::Trying | ServerState::Terminated => {}
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
            (ServerState::Trying | ServerState::Proceeding, 100..=199) => {
                self.state = ServerState::Proceeding;
                self.send(response);
            }
            (ServerState::Trying | ServerState::Proceeding, _) => {
                self.state = ServerState::Completed;
                let timer_j = match self.reliability {
                    Reliability::Reliable => Duration::ZERO,
                    Reliability::Unreliable => self.config.t1x64(),
                };
                self.timers.start(Timer::J, now + timer_j);
                self.send(response);
            }
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
            if timer == Timer::J && self.state == ServerState::Completed {
                self.terminate();
            }
        }
    }

    /// Reports that a response could not be sent (§17.2.4).
    pub fn handle_transport_error(&mut self, _now: Instant) {
        if self.state != ServerState::Terminated {
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

    fn send(&mut self, response: SipMessage) {
        self.last_response = Some(response.shared_bytes());
        self.transmits.push_back(response);
    }

    fn terminate(&mut self) {
        self.state = ServerState::Terminated;
        self.timers.cancel_all();
        self.events.push_back(TransactionEvent::Terminated);
    }
}
