//! What the B2BUA asks of the RTP manager, and how the answers come back.
//!
//! The core never calls gRPC: it queues [`MediaRequest`]s for its driver
//! (`poll_media_request`) and takes [`LinkInput`]s (results, manager
//! events, a new dialplan ...) as an input of their own (`handle_media`).
//! The [`MediaLink`] is the mailbox between the core's thread and the
//! executor's tokio tasks: the core's driver puts the requests on it and
//! takes the inputs from it (an input pushed at `at` is due at `at`); the
//! B2BUA core only publishes its table sizes there.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::{Occupancy, Shutdown};
use crate::dialplan::Dialplan;

/// One side of a call in the B2BUA: the caller's dialog (A) or the
/// callee's (B). The manager names them with [`MediaLegId`]s "a" and "b".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CallLeg {
    /// The caller's side.
    A,
    /// The callee's side.
    B,
}

impl CallLeg {
    /// The leg id on the control protocol.
    pub fn as_str(self) -> &'static str {
        match self {
            CallLeg::A => "a",
            CallLeg::B => "b",
        }
    }

    /// The other side.
    pub fn other(self) -> CallLeg {
        match self {
            CallLeg::A => CallLeg::B,
            CallLeg::B => CallLeg::A,
        }
    }

    /// The leg named by a control-protocol leg id.
    pub fn parse(text: &str) -> Option<CallLeg> {
        match text {
            "a" => Some(CallLeg::A),
            "b" => Some(CallLeg::B),
            _ => None,
        }
    }

    /// The manager's id of this leg.
    pub fn media_leg_id(self) -> MediaLegId {
        MediaLegId(self.as_str().to_owned())
    }

    /// The leg a manager's leg id names, `None` for ids the B2BUA never
    /// creates.
    pub fn of_media(id: &MediaLegId) -> Option<CallLeg> {
        CallLeg::parse(id.as_str())
    }
}

/// A leg id on the manager's control protocol, as a manager reports it
/// (the B2BUA creates "a" and "b", see [`CallLeg::media_leg_id`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, serde::Serialize)]
#[serde(transparent)]
pub struct MediaLegId(pub String);

impl MediaLegId {
    /// The id as on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MediaLegId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<CallLeg> for MediaLegId {
    fn from(leg: CallLeg) -> MediaLegId {
        leg.media_leg_id()
    }
}

impl fmt::Display for CallLeg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The call id on the control protocol: the caller's Call-ID, which the
/// manager uses to group legs and which the pool uses for affinity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MediaCallId(pub String);

impl fmt::Display for MediaCallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Identifies one media request so that its result finds its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MediaRequestId(pub u64);

/// Why a call's media is deleted (the control protocol's `DeleteReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteReason {
    /// A BYE from either side, or the dialplan's hangup.
    Hangup,
    /// The caller cancelled before answer.
    Cancelled,
    /// The call failed before or during setup.
    Failed,
    /// The manager reported no media.
    MediaTimeout,
    /// A session timer expired without a refresh (RFC 4028).
    SessionTimer,
    /// The signaling server is shutting down.
    Shutdown,
    /// An operator hung the call up (`DELETE /api/v1/calls/{id}`).
    Admin,
}

/// One operation on the manager, in the control protocol's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaOp {
    /// `Offer`: SDP the peer of `leg` sent; `peer` is where the rewritten
    /// SDP goes, `None` when the manager answers itself.
    Offer {
        leg: CallLeg,
        peer: Option<CallLeg>,
        sdp: String,
        /// The manager's media interface for the callee's leg (B), from
        /// the dial action; read by the manager only when it creates the
        /// leg.
        callee_interface: Option<String>,
    },
    /// `Answer`: the answer the peer of `leg` sent to an offer from `peer`;
    /// with `bridge`, the call's legs are bridged too (in the same RPC
    /// when the manager can, else by a `Bridge` right after).
    Answer {
        leg: CallLeg,
        peer: CallLeg,
        sdp: String,
        bridge: bool,
    },
    /// `Bridge` legs a and b.
    Bridge,
    /// `Delete` the whole call.
    Delete {
        reason: DeleteReason,
        detail: String,
    },
    /// `Play` files to a leg; the result comes when the playback ends
    /// (a Delete of the call ends it too).
    Play { leg: CallLeg, files: Vec<String> },
    /// Migration (migrate.rs): the call's next requests go to another
    /// healthy manager, the least loaded but the current one; the current
    /// one's legs are kept until [`MediaOp::Release`] or
    /// [`MediaOp::Abort`], and a `Delete` meanwhile reaches both.
    /// Result: [`MediaResult::Moved`], or `Unavailable` when no other
    /// manager may take calls (nothing changed).
    Move,
    /// Migration done: forget the previous manager's legs, deleting them
    /// there when `delete` (false when that manager is gone: nothing to
    /// delete, and waiting for it would only time out).
    Release { delete: bool },
    /// Migration given up: delete the new manager's legs and send the
    /// call's requests to the previous manager again.
    Abort,
}

impl MediaOp {
    /// The RPC's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            MediaOp::Offer { .. } => "offer",
            MediaOp::Answer { .. } => "answer",
            MediaOp::Bridge => "bridge",
            MediaOp::Delete { .. } => "delete",
            MediaOp::Play { .. } => "play",
            MediaOp::Move => "move",
            MediaOp::Release { .. } => "release",
            MediaOp::Abort => "abort",
        }
    }
}

/// A media operation for the driver to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRequest {
    /// Echoed in the result.
    pub id: MediaRequestId,
    /// The call; every request of a call must reach the same manager, in order.
    pub call: MediaCallId,
    /// What to do.
    pub op: MediaOp,
}

/// Why a media operation failed, as far as call handling cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaFailure {
    /// The SDP was refused (INVALID_ARGUMENT): 488 to the peer that sent it.
    Unacceptable,
    /// No manager could take the call (none configured or healthy,
    /// UNAVAILABLE, RESOURCE_EXHAUSTED, timeouts): 503.
    Unavailable,
    /// Anything else (a state error, an unknown leg): 500.
    Internal,
}

/// The outcome of a [`MediaRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaResult {
    /// `Offer`/`Answer` succeeded: the SDP to send.
    Sdp(String),
    /// `Bridge` succeeded (or a `Delete` of a call no manager had).
    Done,
    /// `Delete` succeeded: the manager's final figures of each leg.
    Deleted(Vec<LegFigures>),
    /// A playback ended: `true` when it played to the end.
    PlayEnded { completed: bool },
    /// `Move` succeeded: the call's requests now go to this manager (its
    /// id as the pool names it).
    Moved { manager: String },
    /// The operation failed.
    Failed {
        failure: MediaFailure,
        message: String,
    },
}

/// Packets and octets of one direction of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}

/// A leg's media figures as the manager counts them (RTP only).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct LegFigures {
    /// The leg, `a` or `b`.
    pub leg: MediaLegId,
    /// Received from the leg's peer (userspace and kernel merged).
    pub rtp_in: Counters,
    /// Sent to the leg's peer.
    pub rtp_out: Counters,
    /// RTP sequence numbers missing (RFC 3550 cumulative loss).
    pub lost: i64,
    /// Interarrival jitter in microseconds.
    pub jitter_us: u32,
    /// Packets of `rtp_in` the kernel fast path forwarded.
    pub kernel_packets: u64,
}

impl LegFigures {
    /// `kernel_packets / rtp_in.packets`; `None` before any packet came in.
    pub fn kernel_share(&self) -> Option<f64> {
        // Exact for any realistic count (below 2^53 packets).
        (self.rtp_in.packets > 0).then(|| self.kernel_packets as f64 / self.rtp_in.packets as f64)
    }
}

/// Sums the figures of a call's legs over two managers (a migrated
/// call's CDR counts both): packets, bytes and losses add up, jitter is
/// the worse of the two.
pub fn sum_figures(mut into: Vec<LegFigures>, other: Vec<LegFigures>) -> Vec<LegFigures> {
    for leg in other {
        match into.iter_mut().find(|l| l.leg == leg.leg) {
            Some(mine) => {
                mine.rtp_in.packets += leg.rtp_in.packets;
                mine.rtp_in.bytes += leg.rtp_in.bytes;
                mine.rtp_out.packets += leg.rtp_out.packets;
                mine.rtp_out.bytes += leg.rtp_out.bytes;
                mine.lost += leg.lost;
                mine.jitter_us = mine.jitter_us.max(leg.jitter_us);
                mine.kernel_packets += leg.kernel_packets;
            }
            None => into.push(leg),
        }
    }
    into.sort_by(|a, b| a.leg.cmp(&b.leg));
    into
}

/// Something a manager noticed on its own (the Watch stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// No RTP on a leg for `idle_secs`.
    Timeout {
        call: MediaCallId,
        leg: MediaLegId,
        idle_secs: u32,
        /// The manager that reported it (pool id): a call moved off a lost
        /// manager that came back may idle out there, on legs it left.
        manager: String,
    },
    /// A DTMF digit received on a leg.
    Dtmf {
        call: MediaCallId,
        leg: MediaLegId,
        digit: String,
    },
}

/// What the driver hands the core through the link.
#[derive(Debug)]
pub enum LinkInput {
    /// The result of a request.
    Result {
        id: MediaRequestId,
        result: MediaResult,
    },
    /// A manager event.
    Event(MediaEvent),
    /// A validated dialplan replacing the current one for new calls.
    Dialplan(Arc<Dialplan>),
    /// The signaling server is stopping: see [`Shutdown`].
    Shutdown(Shutdown),
    /// The executor placed the call on the manager with this id (as the
    /// pool and `/api/v1/rtpmanagers` name it): pushed before the result
    /// of the call's first request.
    Placed { call: MediaCallId, manager: String },
    /// The REST API asks about calls (see [`CallQuery`](super::view::CallQuery)).
    Query(super::view::CallQuery),
    /// Move calls off a manager (see [`MoveOrder`](super::migrate::MoveOrder)).
    Move(super::migrate::MoveOrder),
    /// End a call of a lost node (see [`super::shared`]): BYE both legs,
    /// write its record. Its media is deleted by whoever pushes this.
    Reap(Box<super::shared::SharedCall>),
    /// The answer to a name the B2BUA asked its resolver for.
    Resolved {
        query: crate::resolve::Query,
        result: crate::resolve::Resolved,
    },
}

type Wakeup = Arc<dyn Fn() + Send + Sync>;

#[derive(Default)]
struct Queues {
    requests: VecDeque<MediaRequest>,
    inputs: VecDeque<(Instant, LinkInput)>,
    on_request: Option<Wakeup>,
    occupancy: Occupancy,
}

/// The queues between the B2BUA core and its driver. Cloning gives another
/// handle to the same queues.
#[derive(Clone, Default)]
pub struct MediaLink {
    queues: Arc<Mutex<Queues>>,
}

impl fmt::Debug for MediaLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let queues = self.lock();
        f.debug_struct("MediaLink")
            .field("requests", &queues.requests.len())
            .field("inputs", &queues.inputs.len())
            .finish()
    }
}

impl MediaLink {
    /// Empty queues.
    pub fn new() -> MediaLink {
        MediaLink::default()
    }

    fn lock(&self) -> MutexGuard<'_, Queues> {
        // The queues stay consistent even if a holder panicked: every
        // critical section is a single push or pop.
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Driver side: runs `wake` each time the core queues a request.
    pub fn on_request(&self, wake: impl Fn() + Send + Sync + 'static) {
        self.lock().on_request = Some(Arc::new(wake));
    }

    /// Driver side: the next request to run.
    pub fn poll_request(&self) -> Option<MediaRequest> {
        self.lock().requests.pop_front()
    }

    /// Driver side: queues an input, due at `at` (the driver then wakes the core).
    pub fn push_input(&self, at: Instant, input: LinkInput) {
        self.lock().inputs.push_back((at, input));
    }

    /// The core's table sizes after its last input (calls in progress,
    /// transactions it tracks): for metrics and leak checks.
    pub fn occupancy(&self) -> Occupancy {
        self.lock().occupancy
    }

    pub(crate) fn publish(&self, occupancy: Occupancy) {
        self.lock().occupancy = occupancy;
    }

    /// Core's driver side: queues a request and wakes the executor.
    pub(crate) fn push_request(&self, request: MediaRequest) {
        let wake = {
            let mut queues = self.lock();
            queues.requests.push_back(request);
            queues.on_request.clone()
        };
        if let Some(wake) = wake {
            wake();
        }
    }

    /// Inputs waiting for the core: the REST API refuses queries over a
    /// bound rather than queue them without end behind a busy core.
    pub fn pending_inputs(&self) -> usize {
        self.lock().inputs.len()
    }

    /// Core's driver side: when the oldest input became due.
    pub(crate) fn next_input_at(&self) -> Option<Instant> {
        self.lock().inputs.front().map(|(at, _)| *at)
    }

    /// Core's driver side: the oldest input due at `now`.
    pub(crate) fn pop_input(&self, now: Instant) -> Option<LinkInput> {
        let mut queues = self.lock();
        match queues.inputs.front() {
            Some((at, _)) if *at <= now => queues.inputs.pop_front().map(|(_, input)| input),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg(name: &str, packets: u64, jitter_us: u32) -> LegFigures {
        LegFigures {
            leg: MediaLegId(name.to_owned()),
            rtp_in: Counters {
                packets,
                bytes: packets * 172,
            },
            rtp_out: Counters {
                packets: packets + 1,
                bytes: (packets + 1) * 172,
            },
            lost: 2,
            jitter_us,
            kernel_packets: packets / 2,
        }
    }

    #[test]
    fn a_migrated_calls_figures_add_up_over_both_managers() {
        let old = vec![leg("b", 100, 900), leg("a", 10, 100)];
        let new = vec![leg("a", 5, 300)];
        let sum = sum_figures(old, new);
        assert_eq!(sum.len(), 2);
        assert_eq!(sum[0].leg.as_str(), "a", "sorted by leg");
        assert_eq!(sum[0].rtp_in.packets, 15);
        assert_eq!(sum[0].rtp_in.bytes, 15 * 172);
        assert_eq!(sum[0].rtp_out.packets, 17);
        assert_eq!(sum[0].lost, 4);
        assert_eq!(sum[0].jitter_us, 300, "the worse jitter");
        assert_eq!(sum[0].kernel_packets, 7);
        assert_eq!(sum[1], leg("b", 100, 900), "a leg only one manager saw");
    }
}
