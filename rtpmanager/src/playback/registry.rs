//! Which injection (playback or DTMF sending) owns each leg's outbound
//! stream, and how it is told to stop.
//!
//! One injection per leg at a time: a new playback replaces a running one
//! (which stops with "replaced"), while DTMF sending and playback refuse each
//! other (a DTMF burst lasts a second or so; retry after it). The entry of an
//! injection is removed only by the injection itself when it ends
//! ([`Injections::finish`]), or when its leg is deleted, so "is this still
//! the current injection of the leg" is answered by the entry's id.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::oneshot;

use crate::relay::LegRef;

/// Identifies a playback in Play events and StopPlay.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PlaybackId(pub String);

impl fmt::Display for PlaybackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why an injection stopped before its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// StopPlay asked for it.
    Request,
    /// A newer playback took the leg.
    Replaced,
    /// The leg was deleted.
    LegDeleted,
    /// Nobody reads the playback's events any more.
    ClientGone,
    /// The manager is shutting down.
    Shutdown,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopReason::Request => "request",
            StopReason::Replaced => "replaced",
            StopReason::LegDeleted => "leg deleted",
            StopReason::ClientGone => "client gone",
            StopReason::Shutdown => "shutdown",
        })
    }
}

/// Why an injection cannot start or be stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// DTMF is being sent on the leg.
    #[error("DTMF is being sent on leg {0}; play after it")]
    DtmfRunning(String),
    /// A playback runs on the leg.
    #[error("a playback runs on leg {0}; stop it or send DTMF after it")]
    PlaybackRunning(String),
    /// No (matching) playback runs on the leg.
    #[error("no playback {0}")]
    NoPlayback(String),
}

#[derive(Debug)]
enum Kind {
    Playback(PlaybackId),
    Dtmf,
}

#[derive(Debug)]
struct Active {
    id: u64,
    kind: Kind,
    /// Taken when the injection is told to stop.
    stop: Option<oneshot::Sender<StopReason>>,
}

impl Active {
    fn stop(&mut self, reason: StopReason) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(reason);
        }
    }
}

/// An injection's claim on its leg.
#[derive(Debug)]
pub struct Ticket {
    pub id: u64,
    /// Fires when the injection must stop, with why.
    pub stop: oneshot::Receiver<StopReason>,
}

/// The injections of all legs.
#[derive(Debug, Default)]
pub struct Injections {
    active: Mutex<HashMap<LegRef, Active>>,
    next_id: AtomicU64,
}

impl Injections {
    fn active(&self) -> MutexGuard<'_, HashMap<LegRef, Active>> {
        // Every update leaves the map consistent, even one that panicked.
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A playback id unique within this manager's life.
    pub fn new_playback_id(&self) -> PlaybackId {
        PlaybackId(format!(
            "pb-{}",
            self.next_id.fetch_add(1, Ordering::Relaxed)
        ))
    }

    fn claim(&self, active: &mut HashMap<LegRef, Active>, leg: &LegRef, kind: Kind) -> Ticket {
        let (stop, receiver) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        active.insert(
            leg.clone(),
            Active {
                id,
                kind,
                stop: Some(stop),
            },
        );
        Ticket { id, stop: receiver }
    }

    /// Claims `leg` for playback `playback`, stopping a running playback
    /// with [`StopReason::Replaced`].
    pub fn start_playback(
        &self,
        leg: &LegRef,
        playback: PlaybackId,
    ) -> Result<Ticket, RegistryError> {
        let mut active = self.active();
        if let Some(current) = active.get_mut(leg) {
            match current.kind {
                Kind::Dtmf => return Err(RegistryError::DtmfRunning(leg.leg_id.to_string())),
                Kind::Playback(_) => current.stop(StopReason::Replaced),
            }
        }
        Ok(self.claim(&mut active, leg, Kind::Playback(playback)))
    }

    /// Claims `leg` for DTMF sending.
    pub fn start_dtmf(&self, leg: &LegRef) -> Result<Ticket, RegistryError> {
        let mut active = self.active();
        match active.get(leg).map(|a| &a.kind) {
            Some(Kind::Dtmf) => Err(RegistryError::DtmfRunning(leg.leg_id.to_string())),
            Some(Kind::Playback(_)) => Err(RegistryError::PlaybackRunning(leg.leg_id.to_string())),
            None => Ok(self.claim(&mut active, leg, Kind::Dtmf)),
        }
    }

    /// Tells the playback on `leg` (only if it is `playback`, when given) to stop.
    pub fn stop_playback(
        &self,
        leg: &LegRef,
        playback: Option<&PlaybackId>,
    ) -> Result<(), RegistryError> {
        let mut active = self.active();
        let current = active.get_mut(leg).filter(|a| match &a.kind {
            Kind::Playback(id) => playback.is_none_or(|wanted| wanted == id),
            Kind::Dtmf => false,
        });
        match current {
            Some(a) => {
                a.stop(StopReason::Request);
                Ok(())
            }
            None => Err(RegistryError::NoPlayback(match playback {
                Some(id) => format!("{id} on leg {}", leg.leg_id),
                None => format!("on leg {}", leg.leg_id),
            })),
        }
    }

    /// Stops whatever runs on a deleted leg and forgets it.
    pub fn leg_deleted(&self, leg: &LegRef) {
        if let Some(mut a) = self.active().remove(leg) {
            a.stop(StopReason::LegDeleted);
        }
    }

    /// Ends the injection `id` on `leg`; true when it was still the leg's
    /// current one (so the caller resumes the leg's forwarded media).
    pub fn finish(&self, leg: &LegRef, id: u64) -> bool {
        let mut active = self.active();
        if active.get(leg).is_some_and(|a| a.id == id) {
            active.remove(leg);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn leg(name: &str) -> LegRef {
        LegRef {
            call_id: Arc::from("c"),
            leg_id: Arc::from(name),
        }
    }

    #[test]
    fn a_new_playback_replaces_the_running_one_which_can_no_longer_finish_it() {
        let reg = Injections::default();
        let a = leg("a");
        let mut first = reg
            .start_playback(&a, reg.new_playback_id())
            .expect("first playback");
        let second = reg
            .start_playback(&a, reg.new_playback_id())
            .expect("second playback");
        assert_eq!(first.stop.try_recv(), Ok(StopReason::Replaced));
        assert!(
            !reg.finish(&a, first.id),
            "the old one does not own the leg"
        );
        assert!(reg.finish(&a, second.id), "the new one does");
        assert!(!reg.finish(&a, second.id), "only once");
    }

    #[test]
    fn dtmf_and_playback_refuse_each_other() {
        let reg = Injections::default();
        let (a, b) = (leg("a"), leg("b"));
        let dtmf = reg.start_dtmf(&a).expect("dtmf");
        assert_eq!(
            reg.start_playback(&a, reg.new_playback_id())
                .expect_err("busy")
                .to_string(),
            "DTMF is being sent on leg a; play after it"
        );
        reg.start_playback(&b, reg.new_playback_id())
            .expect("another leg is free");
        assert_eq!(
            reg.start_dtmf(&b).expect_err("busy").to_string(),
            "a playback runs on leg b; stop it or send DTMF after it"
        );
        assert!(reg.finish(&a, dtmf.id));
        reg.start_playback(&a, reg.new_playback_id())
            .expect("free again");
    }

    #[test]
    fn stop_matches_the_playback_id_and_deletion_stops_anything() {
        let reg = Injections::default();
        let a = leg("a");
        let id = reg.new_playback_id();
        let mut ticket = reg.start_playback(&a, id.clone()).expect("playback");
        assert_eq!(
            reg.stop_playback(&a, Some(&PlaybackId("pb-999".into())))
                .expect_err("other id")
                .to_string(),
            "no playback pb-999 on leg a"
        );
        reg.stop_playback(&a, Some(&id)).expect("matching id");
        assert_eq!(ticket.stop.try_recv(), Ok(StopReason::Request));
        assert!(
            reg.finish(&a, ticket.id),
            "a stopped playback still ends itself"
        );
        assert_eq!(
            reg.stop_playback(&a, None)
                .expect_err("nothing")
                .to_string(),
            "no playback on leg a"
        );

        let mut dtmf = reg.start_dtmf(&a).expect("dtmf");
        reg.leg_deleted(&a);
        assert_eq!(dtmf.stop.try_recv(), Ok(StopReason::LegDeleted));
        assert!(!reg.finish(&a, dtmf.id), "the entry went with the leg");
    }
}
