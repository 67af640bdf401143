//! What the core reports about its work for metrics and the event bus.
//!
//! The core reads no clock: it passes on the arrival time its driver gave
//! each request, and the driver, which sends the answer, ends the latency
//! with its own clock ([`crate::metrics::Metrics::observe`]).

use std::time::Instant;

use crate::events::Event;

/// Something the core did, from [`super::Uas::poll_observation`].
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// A caller's INVITE (no To tag) passed authentication and reached call
    /// handling: a call attempt.
    CallStarted,
    /// That INVITE got its final response, `received` being its arrival.
    InviteAnswered { status: u16, received: Instant },
    /// A REGISTER got its final answer (after the store's fsync when it
    /// changed bindings).
    RegisterAnswered { status: u16, received: Instant },
    /// A request was refused for its credentials or a lockout; plain
    /// challenges (no credentials, a stale nonce) are not failures.
    AuthFailed { reason: &'static str },
    /// A source was locked out after too many failures.
    LockedOut,
    /// A binding was added, refreshed, removed or expired (an
    /// `Event::Registration*`).
    Registration(Event),
}

/// The sizes of the core's tables, for gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreGauges {
    /// SIP transactions in progress.
    pub transactions: u64,
    /// Bindings in the location service.
    pub bindings: u64,
    /// Addresses-of-record with a binding.
    pub aors: u64,
}

/// Observations kept when nobody takes them (a core without a driver, in
/// tests): the oldest go first.
pub(super) const MAX_OBSERVATIONS: usize = 16_384;

/// A request whose answer is timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timed {
    Invite,
    Register,
}
