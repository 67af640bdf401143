//! The engine's driver: applies the [`Engine`]'s commands to the relay,
//! the fast path's maps, the watchers and the state file, feeds it the
//! relay's reports and the reaper's ticks, and serves the reads (stats,
//! lists, metrics) that need the relay's or the kernel's figures.
//!
//! Everything the manager does to the outside world on behalf of the
//! engine is in `Driver::drain`'s one `match`. The engine and the
//! kernel's figures sit behind one lock; each input is handled and its
//! commands carried out under it, so commands of two inputs never
//! interleave. The gRPC edge ([`crate::grpc`]) only converts to and from
//! the control protocol.

pub mod writer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::broadcast;

use crate::clock::unix_millis;
use crate::engine::{Command, Engine, Event, Restored, SdpOut};
use crate::fastpath::{FastPath, Mode};
use crate::media::g711::Law;
use crate::offload::kernel::KernelOffload;
use crate::offload::StreamKind;
use crate::playback::{
    self, Clip, DtmfPlan, FileError, Injections, LegControl, PlayJob, PlayUpdate, PlaybackId,
};
use crate::ports::SocketBinder;
use crate::relay::{LegCounters, LegRef, LegShared, Relay, RelayEvent, RelayTotals, Removal, Slot};
use crate::sdp::Negotiation;
use crate::session::persist::{SavedState, StateFile};
use crate::session::{LegView, OfferInput, SessionError, SessionTable};
use crate::stats::{leg_stats, received_packets, LegStats};
use writer::StateWriter;

/// Why a request the driver carried out failed; the gRPC edge maps each
/// to a status code.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The session table refused the request.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The relay's worker thread is gone (INTERNAL).
    #[error("the media relay has stopped")]
    RelayStopped,
    /// A field is missing or malformed (INVALID_ARGUMENT).
    #[error("{0}")]
    InvalidArgument(String),
    /// The leg's state does not allow it (FAILED_PRECONDITION).
    #[error("{0}")]
    FailedPrecondition(String),
    /// No such playback (NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// The work started and was stopped (ABORTED).
    #[error("{0}")]
    Aborted(String),
    /// A task of the manager failed (INTERNAL).
    #[error("{0}")]
    Internal(String),
}

/// An event for watchers, stamped when it was published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    pub at_ms: u64,
    pub event: Event,
}

/// DTMF digits to send into a leg; zero durations and volume take the
/// defaults (100 ms tones, 100 ms gaps, -10 dBm0).
#[derive(Clone, Debug, Default)]
pub struct DtmfRequest {
    pub digits: String,
    pub duration_ms: u32,
    pub gap_ms: u32,
    pub volume: u32,
}

/// A call's id, age and legs, each with whether the kernel carries its
/// media.
pub type CallListing = (String, Duration, Vec<(LegView, bool)>);

/// What the engine and the kernel's figures share one lock for.
#[derive(Debug)]
struct Core {
    engine: Engine,
    kernel: KernelOffload,
    /// The legs the engine has removed whose relay workers have not yet
    /// let go of them: still counted in the relay's totals.
    retiring: HashMap<Slot, Arc<LegShared>>,
}

impl Core {
    /// The legs whose counters are not yet in the retired totals: the
    /// engine's, and those removed whose workers have not let go of them.
    fn unretired_legs(&self) -> impl Iterator<Item = (Slot, Arc<LegShared>)> + '_ {
        let retiring = self.retiring.iter().map(|(slot, s)| (*slot, Arc::clone(s)));
        self.engine.legs().into_iter().chain(retiring)
    }
}

/// A leg handed to its relay worker for removal ([`Driver::retire`]).
#[must_use = "a removed leg is retired once its worker has let go of it"]
#[derive(Debug)]
struct Retiring {
    slot: Slot,
    removal: Result<Removal, crate::relay::RelayError>,
}

#[derive(Debug)]
struct Inner {
    core: Mutex<Core>,
    fast_path: FastPath,
    relay: Relay,
    /// Holds the sockets the pools bound until a leg is handed to the relay.
    sockets: SocketBinder,
    events: broadcast::Sender<Published>,
    injections: Arc<Injections>,
    /// Where Play finds its files; nothing outside it is read.
    audio_dir: PathBuf,
    writer: Mutex<Option<StateWriter>>,
    /// The relay counters of the legs removed so far, so the manager-wide
    /// totals do not go back down when a call ends.
    retired: Mutex<RelayTotals>,
    /// Each leg's media interface, and the packets the relay received on
    /// the removed legs of each interface.
    leg_interfaces: Mutex<HashMap<Slot, String>>,
    retired_by_interface: Mutex<HashMap<String, u64>>,
}

/// The driver; clones share it.
#[derive(Debug, Clone)]
pub struct Driver {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Driver {
    /// A driver over `engine`, whose table's pools bind through `sockets`.
    /// With `state`, the calls are saved there (see [`writer`]).
    pub fn new(
        engine: Engine,
        sockets: SocketBinder,
        fast_path: FastPath,
        relay: Relay,
        audio_dir: PathBuf,
        state: Option<StateFile>,
    ) -> Driver {
        let (events, _) = broadcast::channel(4096);
        let driver = Driver {
            inner: Arc::new(Inner {
                core: Mutex::new(Core {
                    engine,
                    kernel: KernelOffload::new(),
                    retiring: HashMap::new(),
                }),
                fast_path,
                relay,
                sockets,
                events,
                injections: Arc::new(Injections::default()),
                audio_dir,
                writer: Mutex::new(None),
                retired: Mutex::new(RelayTotals::default()),
                leg_interfaces: Mutex::new(HashMap::new()),
                retired_by_interface: Mutex::new(HashMap::new()),
            }),
        };
        if let Some(file) = state {
            let read = writer::reader(&driver.inner, |inner: &Inner, everything| {
                lock(&inner.core).engine.take_save(everything)
            });
            match StateWriter::start(file, read) {
                Ok(w) => *lock(&driver.inner.writer) = Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "no state writer thread: calls are not saved for a restart")
                }
            }
        }
        driver
    }

    /// The fast path, for reports and shutdown.
    pub fn fast_path(&self) -> &FastPath {
        &self.inner.fast_path
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        lock(&self.inner.core)
    }

    /// Runs `input` on the engine and carries out its commands; the legs
    /// it removed are retired in the background.
    fn input<T>(
        &self,
        input: impl FnOnce(&mut Engine) -> Result<T, SessionError>,
    ) -> Result<T, DriverError> {
        let (out, retiring) = self.input_removing(input)?;
        self.retire_in_background(retiring);
        Ok(out)
    }

    /// Runs `input` on the engine and carries out its commands; returns
    /// the legs it removed, for [`Self::retire`].
    fn input_removing<T>(
        &self,
        input: impl FnOnce(&mut Engine) -> Result<T, SessionError>,
    ) -> Result<(T, Vec<Retiring>), DriverError> {
        let mut core = self.core();
        let out = input(&mut core.engine)?;
        let retiring = self.drain(&mut core)?;
        Ok((out, retiring))
    }

    /// Waits for the relay workers to let go of removed legs (their
    /// sockets closed, their counters final), without holding the engine
    /// or the thread, then retires them: their figures join the totals and
    /// the kernel's, and their final statistics are returned. Another
    /// input is handled meanwhile; slots are never reused soon, so none of
    /// it can concern these legs.
    async fn retire(&self, retiring: Vec<Retiring>) -> Result<Vec<LegStats>, DriverError> {
        let mut released = Vec::with_capacity(retiring.len());
        for leg in retiring {
            let snapshot = match leg.removal {
                Ok(removal) => removal.finished().await,
                Err(e) => Err(e),
            };
            released.push((leg.slot, snapshot));
        }
        self.retired(released)
    }

    /// [`Self::retire`] for inputs that do not answer with the legs'
    /// statistics (reaper, relay reports).
    fn retire_in_background(&self, retiring: Vec<Retiring>) {
        if !retiring.is_empty() {
            drop(self.spawn_retire(retiring));
        }
    }

    /// Retires the legs in a task of their own, so they are retired even
    /// when whoever waits for their statistics goes away (a gRPC request
    /// cancelled by its client drops its handler). The driver's inputs all
    /// come from the manager's runtime (gRPC, the reaper, relay reports,
    /// start-up).
    fn spawn_retire(
        &self,
        retiring: Vec<Retiring>,
    ) -> tokio::task::JoinHandle<Result<Vec<LegStats>, DriverError>> {
        let driver = self.clone();
        tokio::spawn(async move {
            let retired = driver.retire(retiring).await;
            if let Err(e) = &retired {
                tracing::warn!(error = %e, "removed legs not retired");
            }
            retired
        })
    }

    /// Adds the released legs' figures to the totals and the kernel's;
    /// returns their final statistics. When a leg's worker is gone the
    /// error is returned after all are retired.
    fn retired(
        &self,
        released: Vec<(
            Slot,
            Result<Option<crate::relay::LegSnapshot>, crate::relay::RelayError>,
        )>,
    ) -> Result<Vec<LegStats>, DriverError> {
        let inner = &*self.inner;
        let mut guard = self.core();
        let core = &mut *guard;
        let mut removed = Vec::with_capacity(released.len());
        let mut stopped = false;
        for (slot, snapshot) in released {
            let Some(shared) = core.retiring.remove(&slot) else {
                continue;
            };
            lock(&inner.retired).add(&shared.counters);
            if let Some(interface) = lock(&inner.leg_interfaces).remove(&slot) {
                *lock(&inner.retired_by_interface)
                    .entry(interface)
                    .or_default() += received_packets(&shared.counters);
            }
            // A leg whose worker is gone has no final figures; it is
            // still retired.
            match snapshot {
                Ok(snapshot) => {
                    let mut stats = leg_stats(&shared, snapshot.as_ref());
                    core.kernel
                        .merge(&inner.fast_path, core.engine.decision(), slot, &mut stats);
                    removed.push(stats);
                }
                Err(_) => stopped = true,
            }
            core.kernel.forget(slot);
        }
        if stopped {
            return Err(DriverError::RelayStopped);
        }
        Ok(removed)
    }

    /// Carries out the engine's commands in order; returns the legs
    /// removed, handed to their workers.
    fn drain(&self, core: &mut Core) -> Result<Vec<Retiring>, DriverError> {
        let inner = &*self.inner;
        let fast_path = &inner.fast_path;
        let relay = &inner.relay;
        let mut removed = Vec::new();
        let mut stopped = false;
        let mut commands = std::iter::from_fn(|| core.engine.poll_command())
            .collect::<std::collections::VecDeque<_>>();
        while let Some(command) = commands.pop_front() {
            match command {
                Command::KernelRemove(write) | Command::KernelInstall(write) => {
                    if let Err(direction) = core.kernel.execute(fast_path, write) {
                        core.engine.handle_install_failed(direction);
                    }
                }
                Command::AddLeg {
                    slot,
                    shared,
                    local,
                    interface,
                    params,
                } => {
                    core.kernel.leg_params(slot, &shared, &params);
                    lock(&inner.leg_interfaces).insert(slot, interface);
                    let Some(sockets) = inner.sockets.take(local) else {
                        tracing::error!(call = %shared.leg.call_id, leg = %shared.leg.leg_id, %local, "no bound sockets for a new leg");
                        continue;
                    };
                    shared.set_rtp_socket(Arc::new(sockets.rtp));
                    shared.start_destination(params.expected_rtp);
                    stopped |= relay.add_leg(slot, shared, sockets.rtcp, params).is_err();
                }
                Command::UpdateLeg { slot, params } => {
                    if let Some(shared) = core.kernel.shared(slot) {
                        core.kernel.leg_params(slot, &shared, &params);
                    }
                    stopped |= relay.update_leg(slot, params).is_err();
                }
                Command::RemoveLeg { slot, shared } => {
                    // The removals of a call's legs go to their worker one
                    // after the other and are waited for together, after
                    // the engine's lock is released ([`Self::retire`]).
                    inner.injections.leg_deleted(&shared.leg);
                    let removal = relay.begin_remove(slot);
                    core.retiring.insert(slot, shared);
                    removed.push(Retiring { slot, removal });
                }
                Command::Publish(event) => self.publish(event),
                Command::Persist => {
                    if let Some(w) = lock(&inner.writer).as_ref() {
                        w.changed();
                    }
                }
            }
        }
        if stopped {
            return Err(DriverError::RelayStopped);
        }
        Ok(removed)
    }

    /// Publishes an event to every watcher.
    pub fn publish(&self, event: Event) {
        let _ = self.inner.events.send(Published {
            at_ms: unix_millis(SystemTime::now()),
            event,
        });
    }

    /// The events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Published> {
        self.inner.events.subscribe()
    }

    pub fn offer(&self, input: OfferInput<'_>) -> Result<(SdpOut, bool), DriverError> {
        let now = SystemTime::now();
        let saturated = self.inner.relay.saturated();
        let out = self.input(|e| {
            e.handle_relay_saturated(saturated);
            e.handle_offer(Instant::now(), unix_millis(now), input)
        })?;
        let offloaded = self.core().engine.offloaded(out.leg.slot);
        Ok((out, offloaded))
    }

    pub fn answer(
        &self,
        call: &str,
        leg: &str,
        peer: &str,
        sdp: &str,
    ) -> Result<(SdpOut, bool), DriverError> {
        let out = self.input(|e| e.handle_answer(Instant::now(), call, leg, peer, sdp))?;
        let offloaded = self.core().engine.offloaded(out.leg.slot);
        Ok((out, offloaded))
    }

    pub fn bridge(&self, call: &str, a: &str, b: &str, on: bool) -> Result<(), DriverError> {
        self.input(|e| e.handle_bridge(Instant::now(), call, a, b, on))?;
        Ok(())
    }

    /// Deletes a leg or a call; returns the final statistics of its legs
    /// once their relay workers have let go of them.
    pub async fn delete(&self, call: &str, leg: &str) -> Result<Vec<LegStats>, DriverError> {
        let ((), retiring) = self.input_removing(|e| e.handle_delete(Instant::now(), call, leg))?;
        self.spawn_retire(retiring)
            .await
            .map_err(|e| DriverError::Internal(format!("retiring the deleted legs: {e}")))?
    }

    pub fn set_drain(&self, drain: bool) {
        self.core().engine.handle_drain(drain);
    }

    /// Takes back the calls a previous run saved.
    pub fn restore(&self, saved: &SavedState) -> Result<usize, DriverError> {
        let now = SystemTime::now();
        let restored = self.input(|e| {
            Ok::<Restored, SessionError>(e.handle_restore(Instant::now(), unix_millis(now), saved))
        })?;
        Ok(restored.legs)
    }

    /// Saves pending changes now (tests, shutdown).
    pub fn flush_state(&self) {
        if let Some(w) = lock(&self.inner.writer).as_ref() {
            w.flush();
        }
    }

    /// Saves pending changes and stops saving: the caller may remove the
    /// file after this without a later save bringing it back.
    pub fn close_state(&self) {
        if let Some(w) = lock(&self.inner.writer).take() {
            w.close();
        }
    }

    /// The userspace relay's committed load and capacity, and whether its
    /// workers are measured saturated now.
    pub fn relay_load(&self) -> crate::engine::RelayLoad {
        let saturated = self.inner.relay.saturated();
        crate::engine::RelayLoad {
            saturated,
            ..self.core().engine.relay_load()
        }
    }

    /// Reads the session table under the lock.
    pub fn with_table<T>(&self, read: impl FnOnce(&SessionTable) -> T) -> T {
        read(self.core().engine.table())
    }

    /// Views of the legs of a call (or of one leg), each with whether the
    /// kernel carries its media.
    pub fn leg_views(&self, call: &str, leg: &str) -> Result<Vec<(LegView, bool)>, DriverError> {
        let core = self.core();
        let views = core.engine.table().leg_views(call, leg)?;
        Ok(views
            .into_iter()
            .map(|v| {
                let offloaded = core.engine.offloaded(v.slot);
                (v, offloaded)
            })
            .collect())
    }

    /// Every call with its age and legs (each with its offload state).
    pub fn list(&self) -> Vec<CallListing> {
        let core = self.core();
        core.engine
            .table()
            .list(Instant::now())
            .into_iter()
            .map(|(id, age, legs)| {
                let legs = legs
                    .into_iter()
                    .map(|v| {
                        let offloaded = core.engine.offloaded(v.slot);
                        (v, offloaded)
                    })
                    .collect();
                (id, age, legs)
            })
            .collect()
    }

    /// A leg's statistics, the kernel's figures included.
    pub fn stats_of(&self, view: &LegView) -> Result<LegStats, DriverError> {
        let snapshot = self
            .inner
            .relay
            .snapshot(view.slot)
            .map_err(|_| DriverError::RelayStopped)?;
        let mut stats = leg_stats(&view.shared, snapshot.as_ref());
        let core = self.core();
        core.kernel.merge(
            &self.inner.fast_path,
            core.engine.decision(),
            view.slot,
            &mut stats,
        );
        Ok(stats)
    }

    /// Every leg's statistics.
    pub fn all_stats(&self) -> Vec<LegStats> {
        let views: Vec<LegView> = self
            .core()
            .engine
            .table()
            .list(Instant::now())
            .into_iter()
            .flat_map(|(_, _, legs)| legs)
            .collect();
        views.iter().filter_map(|v| self.stats_of(v).ok()).collect()
    }

    /// Each userspace relay worker's legs, packets, drops and CPU, in
    /// worker order.
    pub fn relay_workers(&self) -> Vec<crate::relay::WorkerFigures> {
        self.inner.relay.worker_figures()
    }

    /// The userspace relay's packets and bytes since start: the live legs'
    /// counters plus those of the legs already removed.
    pub fn relay_totals(&self) -> RelayTotals {
        // Legs move to the retired totals under the engine's lock: read
        // both under it, or a leg retired in between is counted in neither.
        let core = self.core();
        let mut totals = *lock(&self.inner.retired);
        for (_, shared) in core.unretired_legs() {
            totals.add(&shared.counters);
        }
        totals
    }

    /// Packets the userspace relay received (RTP and RTCP) on each media
    /// interface's legs, removed legs included.
    pub fn interface_userspace_packets(&self) -> HashMap<String, u64> {
        let core = self.core();
        let mut totals = lock(&self.inner.retired_by_interface).clone();
        let interfaces = lock(&self.inner.leg_interfaces);
        for (slot, shared) in core.unretired_legs() {
            if let Some(interface) = interfaces.get(&slot) {
                *totals.entry(interface.clone()).or_default() += received_packets(&shared.counters);
            }
        }
        totals
    }

    /// The locked RTP source of every leg as the offload decision knows
    /// it (`None` while it has none).
    pub fn decided_latches(&self) -> Vec<(LegRef, Option<SocketAddr>)> {
        self.core().engine.decided_latches()
    }

    /// The keys of the entries this manager has in the kernel.
    pub fn kernel_keys(&self) -> Vec<rtpmanager_common::ForwardKey> {
        self.core().engine.installed_keys()
    }

    /// Reads the kernel's figures every `period`: last-seen times for idle
    /// reaping, and media timeouts of offloaded streams, which the relay
    /// does not see.
    pub async fn watch_offloaded(self, period: Duration) {
        if self.inner.fast_path.mode() == Mode::Off {
            return;
        }
        let mut ticker = tokio::time::interval(period);
        loop {
            ticker.tick().await;
            let timeouts = {
                let mut guard = self.core();
                let core = &mut *guard;
                core.kernel
                    .tick(&self.inner.fast_path, core.engine.decision())
            };
            for (leg, idle) in timeouts {
                tracing::info!(call = %leg.call_id, leg = %leg.leg_id, idle_s = idle.as_secs(), "media timeout (kernel path)");
                self.publish(Event::MediaTimeout {
                    call_id: leg.call_id.to_string(),
                    leg_id: leg.leg_id.to_string(),
                    idle,
                });
            }
        }
    }

    /// Every `period`: the engine's reaper tick (media timeouts, then legs
    /// idle for `idle`).
    pub async fn reap_idle_legs(self, idle: Duration, period: Duration) {
        let mut ticker = tokio::time::interval(period);
        loop {
            ticker.tick().await;
            let now_ms = unix_millis(SystemTime::now());
            let reaped = self.input(|e| {
                e.handle_timeout(Instant::now(), now_ms, idle);
                Ok::<(), SessionError>(())
            });
            if let Err(e) = reaped {
                tracing::warn!(error = %e, "reaping idle legs failed");
            }
        }
    }

    /// Turns relay events into engine inputs and events, forever.
    pub async fn forward_relay_events(self) {
        let events = self.inner.relay.subscribe();
        self.forward_from(events).await;
    }

    /// The relay's events from now on, for [`Self::forward_from`].
    pub fn relay_events(&self) -> broadcast::Receiver<RelayEvent> {
        self.inner.relay.subscribe()
    }

    /// [`Self::forward_relay_events`] from a given subscription: a test
    /// subscribes, lets events pile up past the channel's capacity, then
    /// forwards, as a manager too busy to read them would.
    pub async fn forward_from(self, mut events: broadcast::Receiver<RelayEvent>) {
        loop {
            let event = events.recv().await;
            let now = Instant::now();
            let settled = match event {
                Ok(RelayEvent::MediaTimeout { leg, idle }) => {
                    // The relay sees no packets of an offloaded stream; the
                    // kernel's own timeout check reports those.
                    let carried = {
                        let core = self.core();
                        core.kernel
                            .carries(&self.inner.fast_path, core.engine.decision(), &leg)
                    };
                    if carried {
                        tracing::debug!(call = %leg.call_id, leg = %leg.leg_id, "relay media timeout ignored: the kernel carries the stream");
                    } else {
                        self.publish(Event::MediaTimeout {
                            call_id: leg.call_id.to_string(),
                            leg_id: leg.leg_id.to_string(),
                            idle,
                        });
                    }
                    Ok(())
                }
                Ok(RelayEvent::Dtmf {
                    leg,
                    digit,
                    duration,
                    volume,
                }) => {
                    self.publish(Event::Dtmf {
                        call_id: leg.call_id.to_string(),
                        leg_id: leg.leg_id.to_string(),
                        digit: digit.as_char(),
                        duration,
                        volume,
                    });
                    Ok(())
                }
                Ok(RelayEvent::Latched {
                    leg,
                    source,
                    locked,
                }) => self.report(|e| e.handle_latched(now, &leg, StreamKind::Rtp, source, locked)),
                Ok(RelayEvent::LatchedRtcp {
                    leg,
                    source,
                    locked,
                }) => {
                    self.report(|e| e.handle_latched(now, &leg, StreamKind::Rtcp, source, locked))
                }
                Ok(RelayEvent::Learning { leg, rtp, rtcp }) => {
                    self.report(|e| e.handle_learning(now, &leg, rtp, rtcp))
                }
                Ok(RelayEvent::Anchored { leg }) => self.report(|e| e.handle_anchored(now, &leg)),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "relay events lagged; latches and rewrites re-read from the relay"
                    );
                    self.resync_latches()
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if let Err(e) = settled {
                tracing::warn!(error = %e, "a relay report could not be carried out");
            }
        }
    }

    fn report(&self, input: impl FnOnce(&mut Engine)) -> Result<(), DriverError> {
        self.input(|e| {
            input(e);
            Ok::<(), SessionError>(())
        })
        .map(|_| ())
    }

    /// Feeds the engine every leg's latches after latch events were lost.
    /// RTCP latches need the relay: read before taking the lock, only for
    /// legs that received RTCP.
    fn resync_latches(&self) -> Result<(), DriverError> {
        let legs = self.core().engine.legs();
        let rtcp: Vec<_> = legs
            .iter()
            .filter(|(_, shared)| LegCounters::get(&shared.counters.rtcp_in_packets) > 0)
            .filter_map(|(slot, shared)| {
                let snapshot = self.inner.relay.snapshot(*slot).ok().flatten()?;
                Some((
                    shared.leg.clone(),
                    snapshot.latched_rtcp?,
                    snapshot.rtcp_locked,
                ))
            })
            .collect();
        self.report(|e| e.handle_resync(Instant::now(), rtcp))
    }

    /// The shared state and negotiation of a leg, for playback and DTMF.
    fn leg_media(
        &self,
        call: &str,
        leg: &str,
    ) -> Result<(Arc<LegShared>, Negotiation), DriverError> {
        let (shared, negotiation) = self.core().engine.table().leg_media(call, leg)?;
        let negotiation = negotiation.ok_or_else(|| {
            DriverError::FailedPrecondition(format!(
                "leg {leg} has no negotiated media yet (offer/answer first)"
            ))
        })?;
        Ok((shared, negotiation))
    }

    /// Starts playing `files` (from the audio directory) to a leg, `passes`
    /// times (`None`: until stopped). Files are resolved and encoded before
    /// anything is sent: a file that cannot be played ends the updates with
    /// an error naming it, and leaves a running playback alone.
    pub async fn play(
        &self,
        call: &str,
        leg: &str,
        files: Vec<String>,
        passes: Option<u32>,
    ) -> Result<(PlaybackId, tokio::sync::mpsc::Receiver<PlayUpdate>), DriverError> {
        let (shared, negotiation) = self.leg_media(call, leg)?;
        let law = law_of(&negotiation).ok_or_else(|| {
            DriverError::FailedPrecondition(format!(
                "playback needs PCMU or PCMA, leg negotiated {}/{}",
                negotiation.codec.encoding, negotiation.codec.clock_rate
            ))
        })?;
        let playback_id = self.inner.injections.new_playback_id();
        let (updates, rx) = tokio::sync::mpsc::channel(64);
        let dir = self.inner.audio_dir.clone();
        let names = files.clone();
        let loaded = tokio::task::spawn_blocking(move || load_clips(&dir, &names, law))
            .await
            .map_err(|_| DriverError::Internal("loading the audio files failed".into()))?;
        let clips = match loaded {
            Ok(clips) => clips,
            Err((file, e)) => {
                tracing::info!(%call, %leg, %file, reason = %e, "playback refused");
                let _ = updates
                    .send(PlayUpdate::Error {
                        file,
                        reason: e.to_string(),
                    })
                    .await;
                return Ok((playback_id, rx));
            }
        };
        let leg_ref = shared.leg.clone();
        let ticket = self
            .inner
            .injections
            .start_playback(&leg_ref, playback_id.clone())
            .map_err(|e| DriverError::FailedPrecondition(e.to_string()))?;
        self.set_inbound_paused(&leg_ref, true);
        tracing::info!(%call, %leg, playback = %playback_id, ?files, "playback started");
        let job = PlayJob {
            shared,
            law,
            clips,
            passes,
        };
        tokio::spawn(playback::player::run(
            self.clone(),
            Arc::clone(&self.inner.injections),
            job,
            ticket,
            updates,
        ));
        Ok((playback_id, rx))
    }

    /// Stops a leg's playback (`id`, or whichever runs).
    pub fn stop_play(
        &self,
        call: &str,
        leg: &str,
        id: Option<PlaybackId>,
    ) -> Result<(), DriverError> {
        let (shared, _) = self.core().engine.table().leg_media(call, leg)?;
        self.inner
            .injections
            .stop_playback(&shared.leg, id.as_ref())
            .map_err(|e| DriverError::NotFound(e.to_string()))
    }

    /// Sends DTMF into a leg (RFC 4733) and returns once every packet is
    /// out; a caller that gives up early does not cut the digits short.
    pub async fn send_dtmf(
        &self,
        call: &str,
        leg: &str,
        r: DtmfRequest,
    ) -> Result<(), DriverError> {
        let (shared, negotiation) = self.leg_media(call, leg)?;
        let payload_type = negotiation.telephone_event.ok_or_else(|| {
            DriverError::FailedPrecondition(format!("leg {leg} did not negotiate telephone-event"))
        })?;
        let or_default = |v: u32| if v == 0 { 100 } else { u64::from(v) };
        let volume = if r.volume == 0 { 10 } else { r.volume };
        let plan = DtmfPlan::new(
            &r.digits,
            Duration::from_millis(or_default(r.duration_ms)),
            Duration::from_millis(or_default(r.gap_ms)),
            u8::try_from(volume).unwrap_or(u8::MAX),
            payload_type,
            negotiation.codec.clock_rate,
            Duration::from_millis(u64::from(negotiation.ptime.unwrap_or(20).max(1))),
        )
        .map_err(|e| DriverError::InvalidArgument(e.to_string()))?;
        let leg_ref = shared.leg.clone();
        let ticket = self
            .inner
            .injections
            .start_dtmf(&leg_ref)
            .map_err(|e| DriverError::FailedPrecondition(e.to_string()))?;
        self.set_inbound_paused(&leg_ref, true);
        tracing::info!(%call, %leg, digits = %r.digits, "sending DTMF");
        let sent = tokio::spawn(playback::dtmf::run(
            self.clone(),
            Arc::clone(&self.inner.injections),
            shared,
            plan,
            ticket,
        ))
        .await
        .map_err(|_| DriverError::Internal("sending DTMF failed".into()))?;
        sent.map_err(|reason| DriverError::Aborted(format!("DTMF sending stopped: {reason}")))
    }
}

impl LegControl for Driver {
    fn set_inbound_paused(&self, leg: &LegRef, paused: bool) {
        let result = self
            .input(|e| e.handle_inbound_paused(Instant::now(), &leg.call_id, &leg.leg_id, paused));
        match result {
            Ok(_) => {}
            // The leg was deleted meanwhile: nothing to resume.
            Err(DriverError::Session(e)) => {
                tracing::debug!(call = %leg.call_id, leg = %leg.leg_id, error = %e, paused, "leg gone")
            }
            Err(e) => {
                tracing::warn!(call = %leg.call_id, leg = %leg.leg_id, error = %e, "cannot pause or resume the leg")
            }
        }
    }
}

fn law_of(negotiation: &Negotiation) -> Option<Law> {
    if negotiation.codec.is("PCMU", 8000) {
        Some(Law::Ulaw)
    } else if negotiation.codec.is("PCMA", 8000) {
        Some(Law::Alaw)
    } else {
        None
    }
}

/// Loads every file of a playlist, or names the first that cannot be played.
fn load_clips(dir: &Path, files: &[String], law: Law) -> Result<Arc<[Clip]>, (String, FileError)> {
    files
        .iter()
        .map(|f| Clip::load(dir, f, law).map_err(|e| (f.clone(), e)))
        .collect::<Result<Vec<_>, _>>()
        .map(Arc::from)
}
