//! What happens in the server, as it happens: calls created, ringing,
//! answered and ended; bindings added, refreshed, removed and expired; RTP
//! managers' health and drain changes.
//!
//! Producers (the B2BUA and the registrar on the SIP core's thread, the
//! manager pool on the runtime) [`publish`](EventBus::publish) without ever
//! waiting: the bus is a ring of the last [`EventBus::CAPACITY`] events, and
//! a subscriber that falls more than that behind loses its place (it is told
//! and dropped by the SSE endpoint), so a slow client never slows the SIP
//! core. Events carry wall-clock times (Unix milliseconds): they leave the
//! process.
//!
//! The wire form of an event is its JSON (`{"type": "call_created", ...}`),
//! sent as the SSE event's data with the `type` as the SSE event name.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::broadcast;

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One party of a call, as the API and the CDRs show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Party {
    pub uri: String,
    pub display_name: Option<String>,
    /// Where its SIP came from or went to (`ip:port`).
    pub address: String,
    /// `udp` or `tcp`.
    pub transport: String,
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndedBy {
    Caller,
    Callee,
    /// The operator (`DELETE /api/v1/calls/{id}`).
    Operator,
    /// Signaling or media ended it: a failure, a timeout, a shutdown.
    System,
}

/// Something that happened, published on the [`EventBus`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    CallCreated {
        /// The call's id in the API (`/api/v1/calls/{id}`).
        id: String,
        at_ms: u64,
        caller: Party,
        /// The Request-URI the caller dialled.
        callee: String,
    },
    CallRinging {
        id: String,
        at_ms: u64,
    },
    CallAnswered {
        id: String,
        at_ms: u64,
    },
    CallEnded {
        id: String,
        at_ms: u64,
        /// The final status the caller got (200 once answered).
        final_status: u16,
        ended_by: EndedBy,
        duration_ms: u64,
    },
    RegistrationAdded {
        aor: String,
        contact: String,
        expires_in_secs: u64,
    },
    RegistrationRefreshed {
        aor: String,
        contact: String,
        expires_in_secs: u64,
    },
    RegistrationRemoved {
        aor: String,
        contact: String,
    },
    RegistrationExpired {
        aor: String,
        contact: String,
    },
    ManagerHealth {
        /// The manager's id as in `/api/v1/rtpmanagers`.
        id: String,
        healthy: bool,
    },
    ManagerDrain {
        id: String,
        draining: bool,
    },
    /// A manager's calls must move: down past the grace period
    /// (`grace_expired`), or restarted without some of them (`restarted`).
    ManagerLost {
        id: String,
        kind: String,
        /// How many calls it lost.
        calls: u32,
    },
    /// A migration ended for one call (b2bua/migrate.rs).
    CallMoved {
        id: String,
        /// The manager it was on.
        from: String,
        /// The manager it is on now (`moved`), or that it tried.
        to: Option<String>,
        /// `moved`, `stayed` (still on `from`) or `ended` (hung up: BYEs).
        outcome: &'static str,
        detail: String,
    },
    /// A round of a manager's migration (drain `mode=migrate`, or a lost
    /// manager) ended: running totals.
    ManagerMigration {
        id: String,
        /// `running`, `done`, `incomplete` or `cancelled`.
        state: &'static str,
        moved: u64,
        stayed: u64,
        ended: u64,
        not_movable: u64,
        /// Calls still on the manager after the round.
        remaining: u64,
    },
}

impl Event {
    /// The event's `type`: the SSE event name.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::CallCreated { .. } => "call_created",
            Event::CallRinging { .. } => "call_ringing",
            Event::CallAnswered { .. } => "call_answered",
            Event::CallEnded { .. } => "call_ended",
            Event::RegistrationAdded { .. } => "registration_added",
            Event::RegistrationRefreshed { .. } => "registration_refreshed",
            Event::RegistrationRemoved { .. } => "registration_removed",
            Event::RegistrationExpired { .. } => "registration_expired",
            Event::ManagerHealth { .. } => "manager_health",
            Event::ManagerDrain { .. } => "manager_drain",
            Event::ManagerLost { .. } => "manager_lost",
            Event::CallMoved { .. } => "call_moved",
            Event::ManagerMigration { .. } => "manager_migration",
        }
    }
}

/// An event as it travels the bus: the event, and its SSE frame made once
/// by the first subscriber that needs it (on the runtime, never on the SIP
/// core's thread), so ten clients cost one serialisation, not ten.
#[derive(Debug)]
pub struct Published {
    event: Event,
    frame: std::sync::OnceLock<String>,
}

impl Published {
    /// `event: <type>` and `data: <JSON>`, ending with the blank line.
    pub fn frame(&self) -> &str {
        self.frame.get_or_init(|| {
            let data = serde_json::to_string(&self.event).unwrap_or_else(|_| "{}".to_owned());
            format!("event: {}\ndata: {data}\n\n", self.event.kind())
        })
    }
}

impl std::ops::Deref for Published {
    type Target = Event;

    fn deref(&self) -> &Event {
        &self.event
    }
}

/// The server's events; clones publish on the same bus.
#[derive(Debug, Clone)]
pub struct EventBus {
    sender: broadcast::Sender<Arc<Published>>,
}

impl EventBus {
    /// Events kept for subscribers: a subscriber that falls further behind
    /// is dropped (it reconnects and rereads the state from the API).
    pub const CAPACITY: usize = 4096;

    pub fn new() -> EventBus {
        EventBus::with_capacity(Self::CAPACITY)
    }

    /// A bus keeping `capacity` events (at least one) for its subscribers.
    pub fn with_capacity(capacity: usize) -> EventBus {
        EventBus {
            sender: broadcast::channel(capacity.max(1)).0,
        }
    }

    /// Publishes `event` without waiting; nothing happens when nobody
    /// listens.
    pub fn publish(&self, event: Event) {
        if self.sender.receiver_count() > 0 {
            let _ = self.sender.send(Arc::new(Published {
                event,
                frame: std::sync::OnceLock::new(),
            }));
        }
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        self.sender.subscribe()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_serializes_with_its_type_as_the_sse_name() {
        let event = Event::CallAnswered {
            id: "c1".to_owned(),
            at_ms: 5,
        };
        let json = serde_json::to_value(&event).expect("json");
        assert_eq!(json["type"], event.kind());
        assert_eq!(json["id"], "c1");
    }

    #[test]
    fn a_subscriber_that_falls_behind_learns_how_much_it_lost() {
        let bus = EventBus::new();
        let mut slow = bus.subscribe();
        for n in 0..EventBus::CAPACITY as u64 + 10 {
            bus.publish(Event::CallRinging {
                id: n.to_string(),
                at_ms: n,
            });
        }
        assert_eq!(
            slow.try_recv().map(|e| (**e).clone()),
            Err(broadcast::error::TryRecvError::Lagged(10))
        );
    }

    #[test]
    fn every_subscriber_shares_one_frame_per_event() {
        let bus = EventBus::new();
        let (mut one, mut two) = (bus.subscribe(), bus.subscribe());
        bus.publish(Event::CallAnswered {
            id: "c1".to_owned(),
            at_ms: 5,
        });
        let (first, second) = (one.try_recv().expect("one"), two.try_recv().expect("two"));
        assert_eq!(
            first.frame(),
            "event: call_answered\ndata: {\"type\":\"call_answered\",\"id\":\"c1\",\"at_ms\":5}\n\n"
        );
        assert!(
            std::ptr::eq(first.frame(), second.frame()),
            "serialised once"
        );
    }
}
