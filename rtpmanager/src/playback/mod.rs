//! The manager's own media into a leg: audio playback and RFC 4733 DTMF
//! sending, plus the rules that keep them consistent with the relay.
//!
//! How it is driven (by the gRPC edge):
//! 1. check the leg's negotiation (G.711 for playback, a telephone-event
//!    payload type for DTMF) and prepare the work: [`Clip::load`] resolves
//!    each file under the audio directory ([`path`]) and encodes it once;
//!    [`DtmfPlan::new`] validates the digits;
//! 2. claim the leg in [`Injections`] (a new playback replaces the running
//!    one; DTMF and playback refuse each other), then pause the bridge into
//!    the leg through [`LegControl`];
//! 3. spawn [`player::run`] or await [`dtmf::run`]: they take the leg's
//!    outbound stream over ([`inject::Injector`], continuing its SSRC,
//!    sequence numbers and timestamps — see [`crate::relay::continuity`]),
//!    send on an absolute 20 ms schedule, and on any end (completed, stopped,
//!    replaced, leg deleted) hand the stream back and resume the bridge if
//!    they were still the leg's current injection;
//! 4. when a leg is deleted, call [`Injections::leg_deleted`]: its playback
//!    ends with `stopped("leg deleted")`.
//!
//! [`playout`] and [`dtmf::DtmfPlan`] are sans-IO (frames, progress notices,
//! schedule, packet plans); the drivers only add tokio's timer and the socket.

pub mod dtmf;
pub mod inject;
pub mod path;
pub mod player;
pub mod playout;
pub mod registry;

pub use dtmf::{DtmfPlan, DtmfPlanError};
pub use player::{PlayJob, PlayUpdate};
pub use playout::{Clip, FileError};
pub use registry::{Injections, PlaybackId, RegistryError, StopReason, Ticket};

use crate::relay::LegRef;

/// What the injections need from the session table: pausing and resuming
/// the bridged leg's media into a leg.
pub trait LegControl: Send + Sync + 'static {
    /// Pauses (`true`) or resumes media forwarded into `leg`; a leg that no
    /// longer exists is ignored.
    fn set_inbound_paused(&self, leg: &LegRef, paused: bool);
}
