//! What the [`Engine`](super::Engine) asks its driver to do, and the
//! events it publishes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::offload::{OffloadChanged, OffloadCommand};
use crate::relay::{LegParams, LegShared, Slot};

/// One side effect, in the order the driver must carry them out.
#[derive(Debug)]
pub enum Command {
    /// Take a direction out of the kernel (before the relay gets the new
    /// params, so every packet is handled by one path or the other).
    KernelRemove(OffloadCommand),
    /// Hand a new leg to the relay with the sockets bound for `local`.
    AddLeg {
        slot: Slot,
        shared: Arc<LegShared>,
        local: SocketAddr,
        /// The leg's media interface, for per-interface figures.
        interface: String,
        params: LegParams,
    },
    /// New params for a leg of the relay.
    UpdateLeg { slot: Slot, params: LegParams },
    /// Remove a leg from the relay; its final figures are read then.
    RemoveLeg { slot: Slot, shared: Arc<LegShared> },
    /// Put a direction into the kernel (after the relay has its params).
    /// A refused write comes back as
    /// [`Engine::handle_install_failed`](super::Engine::handle_install_failed).
    KernelInstall(OffloadCommand),
    /// Tell every watcher.
    Publish(Event),
    /// The calls changed: save them ([`Engine::saved`](super::Engine::saved))
    /// for a restarted manager.
    Persist,
}

/// What the engine tells watchers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An RTP direction entered or left the kernel.
    Offload(OffloadChanged),
    /// A leg received no media for `idle`.
    MediaTimeout {
        call_id: String,
        leg_id: String,
        idle: Duration,
    },
    /// The relay received a DTMF digit (RFC 4733) on a leg; the driver
    /// publishes it as it comes.
    Dtmf {
        call_id: String,
        leg_id: String,
        digit: char,
        duration: Duration,
        volume: u8,
    },
    /// A leg was deleted by the manager itself after `idle`.
    Reaped {
        call_id: String,
        leg_id: String,
        idle: Duration,
    },
}
