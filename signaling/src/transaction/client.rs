//! The non-INVITE client transaction (RFC 3261 §17.1.2).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::sip::{Method, SipMessage};

use super::{
    pop_releasing, status_of, Reliability, Timer, TimerConfig, Timers, TransactionError,
    TransactionEvent,
};

/// States of figure 6 of RFC 3261.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// SipMessage sent; timers E (unreliable only) and F run.
    Trying,
    /// A provisional arrived; E keeps retransmitting every T2.
    Proceeding,
    /// A final response arrived; timer K absorbs its retransmissions.
    Completed,
    /// Done.
    Terminated,
}

/// A non-INVITE client transaction.
#[derive(Debug)]
pub struct Client {
    state: ClientState,
    config: TimerConfig,
    reliability: Reliability,
    request: SipMessage,
    /// Current timer E interval: doubles up to T2 in Trying, T2 in Proceeding.
    timer_e_interval: Duration,
    timers: Timers,
    transmits: VecDeque<SipMessage>,
    events: VecDeque<TransactionEvent>,
}

impl Client {
    /// Starts the transaction: queues the request and starts timers E and F.
    pub fn new(
        now: Instant,
        request: SipMessage,
        reliability: Reliability,
        config: TimerConfig,
    ) -> Result<Self, TransactionError> {
        if matches!(request.method(), Method::Invite | Method::Ack) {
            return Err(TransactionError::WrongMethod {
                found: request.method().to_string(),
            });
        }
        let mut transaction = Self {
            state: ClientState::Trying,
            config,
            reliability,
            request: request.clone(),
            timer_e_interval: config.t1,
            timers: Timers::default(),
            transmits: VecDeque::from([request]),
            events: VecDeque::new(),
        };
        if reliability.is_unreliable() {
            transaction.timers.start(Timer::E, now + config.t1);
        }
        transaction.timers.start(Timer::F, now + config.t1x64());
        Ok(transaction)
    }

    /// The current state.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// The request this transaction sends.
    pub fn request(&self) -> &SipMessage {
        &self.request
    }

    /// Feeds a response that matched this transaction.
    pub fn handle_response(
        &mut self,
        now: Instant,
        response: SipMessage,
    ) -> Result<(), TransactionError> {
        let status = status_of(&response)?;
        match (self.state, status) {
            (ClientState::Trying | ClientState::Proceeding, 100..=199) => {
                self.state = ClientState::Proceeding;
                self.events.push_back(TransactionEvent::Response(response));
            }
            (ClientState::Trying | ClientState::Proceeding, _) => {
                self.state = ClientState::Completed;
                self.timers.cancel_all();
                let timer_k = match self.reliability {
                    Reliability::Reliable => Duration::ZERO,
                    Reliability::Unreliable => self.config.t4,
                };
                self.timers.start(Timer::K, now + timer_k);
                self.events.push_back(TransactionEvent::Response(response));
            }
            // Retransmitted finals are absorbed by Completed (§17.1.2.2).
            (ClientState::Completed | ClientState::Terminated, _) => {}
        }
        self.handle_timeout(now);
        Ok(())
    }

    /// Fires the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.timers.pop_expired(now) {
            match (timer, self.state) {
                (Timer::E, ClientState::Trying) => {
                    self.retransmit();
                    self.timer_e_interval = (self.timer_e_interval * 2).min(self.config.t2);
                    self.timers.start(Timer::E, now + self.timer_e_interval);
                }
                (Timer::E, ClientState::Proceeding) => {
                    self.retransmit();
                    self.timer_e_interval = self.config.t2;
                    self.timers.start(Timer::E, now + self.timer_e_interval);
                }
                (Timer::F, ClientState::Trying | ClientState::Proceeding) => {
                    self.events.push_back(TransactionEvent::Timeout(Timer::F));
                    self.terminate();
                }
                (Timer::K, ClientState::Completed) => self.terminate(),
                // State changes cancel the timers of the state left behind.
                _ => {}
            }
        }
    }

    /// Reports that the request could not be sent (§17.1.4).
    pub fn handle_transport_error(&mut self, _now: Instant) {
        if self.state != ClientState::Terminated {
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

    fn retransmit(&mut self) {
        self.transmits.push_back(self.request.clone());
    }

    fn terminate(&mut self) {
        self.state = ClientState::Terminated;
        self.timers.cancel_all();
        self.events.push_back(TransactionEvent::Terminated);
    }
}
