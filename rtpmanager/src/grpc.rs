//! The gRPC edge: turns control-protocol requests into calls on the session
//! table, applies the table's relay commands, and maps errors to
//! `tonic::Status` codes.

use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use switchboard_proto::v1;
use switchboard_proto::v1::rtp_manager_server::RtpManager;
use tokio::sync::broadcast;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::fastpath::FastPath;
use crate::media::g711::Law;
use crate::media::rtp::PayloadType;
use crate::offload::kernel::{KernelOffload, LegLocal};
use crate::offload::{OffloadChanged, StreamKind};
use crate::playback::{
    self, Clip, DtmfPlan, FileError, Injections, LegControl, PlayJob, PlayUpdate, PlaybackId,
};
use crate::relay::{LegCounters, LegRef, LegShared, LegSnapshot, Relay, RelayEvent, RelayTotals};
use crate::sdp::Negotiation;
use crate::session::persist::{SavedState, StateFile};
use crate::session::{
    Family, LegOptions, LegView, OfferInput, RelayCommand, SessionError, SessionTable, TimedOut,
};

/// Codecs the manager can terminate (playback, DTMF) or transcode.
pub const CODECS: [&str; 3] = ["PCMU/8000", "PCMA/8000", "telephone-event/8000"];

/// Facts about this manager that Info and Health report.
#[derive(Debug)]
pub struct ManagerInfo {
    pub instance_id: String,
    pub started_at_ms: u64,
    pub advertised: Vec<IpAddr>,
    pub rtp_port_min: u16,
    pub rtp_port_max: u16,
}

/// Implementation of the `RtpManager` gRPC service.
#[derive(Debug, Clone)]
pub struct ControlService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    info: ManagerInfo,
    fast_path: FastPath,
    table: Mutex<SessionTable>,
    relay: Relay,
    /// Which bridge directions the kernel carries, and its figures.
    offload: Mutex<KernelOffload>,
    events: broadcast::Sender<v1::ManagerEvent>,
    /// Where Play finds its files; nothing outside it is read.
    audio_dir: PathBuf,
    injections: Arc<Injections>,
    /// Where the calls are saved for a restarted manager, when configured.
    state: Option<StateFile>,
    /// The relay counters of the legs removed so far, so the manager-wide
    /// totals do not go back down when a call ends.
    retired: Mutex<RelayTotals>,
    /// Each leg's media interface by slot, and the packets the relay
    /// received on the removed legs of each interface.
    leg_interfaces: Mutex<std::collections::HashMap<crate::relay::Slot, String>>,
    retired_by_interface: Mutex<std::collections::HashMap<String, u64>>,
}

/// Milliseconds since the Unix epoch.
pub fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn status_of(e: SessionError) -> Status {
    let message = e.to_string();
    match e {
        SessionError::InvalidArgument(_) | SessionError::Sdp(_) => {
            Status::invalid_argument(message)
        }
        SessionError::NotFound(_) => Status::not_found(message),
        SessionError::FailedPrecondition(_) => Status::failed_precondition(message),
        SessionError::Exhausted(_) => Status::resource_exhausted(message),
        SessionError::Draining => Status::unavailable(message),
    }
}

fn options_of(o: Option<v1::LegOptions>) -> LegOptions {
    let o = o.unwrap_or_default();
    LegOptions {
        strict_source: o.strict_source,
        media_timeout: (o.media_timeout_secs > 0)
            .then(|| Duration::from_secs(u64::from(o.media_timeout_secs))),
        allow_transcoding: o.allow_transcoding,
        family: match v1::AddressFamily::try_from(o.address_family) {
            Ok(v1::AddressFamily::Ipv4) => Some(Family::V4),
            Ok(v1::AddressFamily::Ipv6) => Some(Family::V6),
            // Unspecified, or a value of a newer protocol: follow the SDP.
            Ok(v1::AddressFamily::Unspecified) | Err(_) => None,
        },
        label: o.label,
        interface: (!o.interface.is_empty()).then_some(o.interface),
    }
}

fn leg_info(view: &LegView, offloaded: bool) -> v1::LegInfo {
    v1::LegInfo {
        call_id: view.call_id.clone(),
        leg_id: view.leg_id.clone(),
        local_address: view.local_address.to_string(),
        rtp_port: view.rtp_port.into(),
        rtcp_port: view.rtcp_port.into(),
        rtcp_mux: view.rtcp_mux,
        remote_address: view.remote.map(|r| r.to_string()).unwrap_or_default(),
        // Only a locked source: a candidate may still be replaced.
        latched_address: view
            .shared
            .source_locked
            .load(std::sync::atomic::Ordering::Relaxed)
            .then(|| view.shared.destination())
            .flatten()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        codec: view.codec.clone().unwrap_or_default(),
        bridged_to: view.bridged_to.clone().unwrap_or_default(),
        offloaded,
        label: view.label.clone(),
        interface: view.interface.clone(),
    }
}

/// The control protocol's statistics of one leg: the shared counters plus the
/// relay's RFC 3550 snapshot.
pub fn leg_stats(shared: &LegShared, snapshot: Option<&LegSnapshot>) -> v1::LegStats {
    let c = &shared.counters;
    let counters = |packets: &std::sync::atomic::AtomicU64,
                    bytes: &std::sync::atomic::AtomicU64| {
        Some(v1::StreamCounters {
            packets: LegCounters::get(packets),
            bytes: LegCounters::get(bytes),
        })
    };
    let snapshot = snapshot.cloned().unwrap_or_default();
    v1::LegStats {
        call_id: shared.leg.call_id.to_string(),
        leg_id: shared.leg.leg_id.to_string(),
        rtp_in: counters(&c.rtp_in_packets, &c.rtp_in_bytes),
        rtcp_in: counters(&c.rtcp_in_packets, &c.rtcp_in_bytes),
        rtp_out: counters(&c.rtp_out_packets, &c.rtp_out_bytes),
        rtcp_out: counters(&c.rtcp_out_packets, &c.rtcp_out_bytes),
        source_mismatch_drops: LegCounters::get(&c.source_mismatch_drops),
        overload_drops: LegCounters::get(&c.overload_drops),
        rtp_lost: snapshot.rtp_lost,
        jitter_us: snapshot.jitter_us,
        last_packet_ms: LegCounters::get(&c.last_packet_ms),
        peer_report: Some(v1::RtcpReport {
            fraction_lost: snapshot.peer_fraction_lost.into(),
            cumulative_lost: snapshot.peer_cumulative_lost.into(),
            jitter_us: snapshot.peer_jitter_us,
            rtt_us: 0,
        }),
        kernel_packets: 0,
    }
}

/// The packets the relay received on a leg, RTP and RTCP.
fn received_packets(c: &LegCounters) -> u64 {
    LegCounters::get(&c.rtp_in_packets) + LegCounters::get(&c.rtcp_in_packets)
}

fn event(event: v1::manager_event::Event) -> v1::ManagerEvent {
    v1::ManagerEvent {
        timestamp_ms: unix_millis(SystemTime::now()),
        event: Some(event),
    }
}

impl ControlService {
    pub fn new(
        info: ManagerInfo,
        fast_path: FastPath,
        table: SessionTable,
        relay: Relay,
        offload: KernelOffload,
        audio_dir: PathBuf,
        state: Option<StateFile>,
    ) -> Self {
        let (events, _) = broadcast::channel(4096);
        ControlService {
            inner: Arc::new(Inner {
                info,
                fast_path,
                table: Mutex::new(table),
                relay,
                offload: Mutex::new(offload),
                events,
                audio_dir,
                injections: Arc::new(Injections::default()),
                state,
                retired: Mutex::new(RelayTotals::default()),
                leg_interfaces: Mutex::new(std::collections::HashMap::new()),
                retired_by_interface: Mutex::new(std::collections::HashMap::new()),
            }),
        }
    }

    /// The fast path, for metrics and shutdown reporting.
    pub fn fast_path(&self) -> &FastPath {
        &self.inner.fast_path
    }

    fn table(&self) -> MutexGuard<'_, SessionTable> {
        self.inner.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn offload(&self) -> MutexGuard<'_, KernelOffload> {
        self.inner.offload.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies relay commands; returns the final stats of removed legs.
    ///
    /// Kernel entries that must go are removed before the relay gets the
    /// new params, and entries are installed after, so every packet is
    /// handled by one path or the other (or is in flight).
    fn apply(&self, commands: Vec<RelayCommand>) -> Result<Vec<v1::LegStats>, Status> {
        let relay = &self.inner.relay;
        let fast_path = &self.inner.fast_path;
        let stopped = |_| Status::internal("the media relay has stopped");
        let mut offload = self.offload();
        self.feed_offload(&mut offload, &commands);
        let pending = offload.pending();
        offload.execute(fast_path, pending.removes);
        let mut removed = Vec::new();
        for command in commands {
            match command {
                RelayCommand::Add {
                    slot,
                    shared,
                    rtcp,
                    params,
                } => relay.add_leg(slot, shared, rtcp, params).map_err(stopped)?,
                RelayCommand::Update { slot, params } => {
                    relay.update_leg(slot, params).map_err(stopped)?
                }
                RelayCommand::Remove { slot, shared } => {
                    self.inner.injections.leg_deleted(&shared.leg);
                    let snapshot = relay.remove_leg(slot).map_err(stopped)?;
                    // The worker has let go of the leg: its counters are final.
                    self.inner
                        .retired
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .add(&shared.counters);
                    let interface = self
                        .inner
                        .leg_interfaces
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .remove(&slot);
                    if let Some(interface) = interface {
                        *self
                            .inner
                            .retired_by_interface
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .entry(interface)
                            .or_default() += received_packets(&shared.counters);
                    }
                    let mut stats = leg_stats(&shared, snapshot.as_ref());
                    offload.merge(fast_path, slot, &mut stats);
                    offload.forget(slot);
                    removed.push(stats);
                }
            }
        }
        offload.execute(fast_path, pending.installs);
        let events = offload.events();
        drop(offload);
        self.publish_offload(events);
        self.persist();
        Ok(removed)
    }

    /// Saves the calls, with the relay's latches, for a restarted manager.
    fn persist(&self) {
        let Some(file) = &self.inner.state else {
            return;
        };
        let mut saved = self.table().saved();
        {
            let offload = self.offload();
            for call in &mut saved.calls {
                for leg in &mut call.legs {
                    (leg.latched_rtp, leg.latched_rtcp) = offload.latched_of(leg.slot);
                }
            }
        }
        if let Err(e) = file.write(&saved) {
            tracing::warn!(error = %e, "session state not saved; a restart would not re-adopt the calls");
        }
    }

    /// Takes back the calls a previous run saved: ports bound again, the
    /// table rebuilt, latches fed to the offload decision (which installs
    /// the same entries the kernel still holds). Returns how many legs came
    /// back.
    pub fn restore(&self, saved: &SavedState) -> Result<usize, Status> {
        let (commands, failed) = self.table().restore(Instant::now(), saved);
        for f in &failed {
            tracing::warn!(call = %f.call_id, leg = %f.leg_id, reason = %f.reason, "leg not re-adopted");
        }
        self.apply(commands)?;
        let mut legs = 0;
        for call in &saved.calls {
            for leg in &call.legs {
                if failed
                    .iter()
                    .any(|f| f.call_id == call.call_id && f.leg_id == leg.leg_id)
                {
                    continue;
                }
                legs += 1;
                let leg_ref = LegRef {
                    call_id: Arc::from(call.call_id.as_str()),
                    leg_id: Arc::from(leg.leg_id.as_str()),
                };
                // Saved latches were locked ones (`latched_of`).
                if let Some(source) = leg.latched_rtp {
                    self.latched(&leg_ref, StreamKind::Rtp, source, true);
                }
                if let Some(source) = leg.latched_rtcp {
                    self.latched(&leg_ref, StreamKind::Rtcp, source, true);
                }
            }
        }
        Ok(legs)
    }

    /// The userspace relay's packets and bytes since start: the live legs'
    /// counters plus those of the legs already removed.
    pub fn relay_totals(&self) -> RelayTotals {
        let mut totals = *self
            .inner
            .retired
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (_, _, legs) in self.table().list(Instant::now()) {
            for leg in legs {
                totals.add(&leg.shared.counters);
            }
        }
        totals
    }

    /// Packets the userspace relay received (RTP and RTCP) on each media
    /// interface's legs, removed legs included.
    pub fn interface_userspace_packets(&self) -> std::collections::HashMap<String, u64> {
        let mut totals = self
            .inner
            .retired_by_interface
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        for (_, _, legs) in self.table().list(Instant::now()) {
            for leg in legs {
                *totals.entry(leg.interface.clone()).or_default() +=
                    received_packets(&leg.shared.counters);
            }
        }
        totals
    }

    /// The locked RTP source of every leg as the offload decision knows
    /// it (`None` while it has none): what decides whether a direction can
    /// go into the kernel, so a latch lost on the way must still get here.
    pub fn decided_latches(&self) -> Vec<(LegRef, Option<std::net::SocketAddr>)> {
        let offload = self.offload();
        offload
            .legs()
            .into_iter()
            .map(|(slot, shared)| (shared.leg.clone(), offload.latched_of(slot).0))
            .collect()
    }

    /// The keys of the entries this manager has in the kernel.
    pub fn kernel_keys(&self) -> Vec<rtpmanager_common::ForwardKey> {
        self.offload().installed_keys()
    }

    /// Tells the offload decision what the relay commands change.
    fn feed_offload(&self, offload: &mut KernelOffload, commands: &[RelayCommand]) {
        let now = Instant::now();
        for command in commands {
            let (slot, shared, params) = match command {
                RelayCommand::Add {
                    slot,
                    shared,
                    params,
                    ..
                } => (*slot, Arc::clone(shared), params),
                RelayCommand::Update { slot, params } => match offload.shared(*slot) {
                    Some(shared) => (*slot, shared, params),
                    None => continue,
                },
                RelayCommand::Remove { slot, .. } => {
                    offload.leg_removed(now, *slot);
                    continue;
                }
            };
            let view = self
                .table()
                .leg_views(&shared.leg.call_id, &shared.leg.leg_id)
                .ok()
                .and_then(|v| v.into_iter().next());
            let Some(view) = view else {
                continue;
            };
            self.inner
                .leg_interfaces
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(slot, view.interface.clone());
            let kernel = self.inner.fast_path.mode_on(&view.device) != crate::fastpath::Mode::Off;
            offload.leg_changed(
                now,
                slot,
                &shared,
                LegLocal {
                    advertised: view.local_address,
                    rtp_port: view.rtp_port,
                    kernel,
                },
                params,
            );
        }
    }

    /// Publishes offload changes to watchers.
    fn publish_offload(&self, events: Vec<OffloadChanged>) {
        for e in events {
            tracing::debug!(
                call = %e.from.call_id,
                leg = %e.from.leg_id,
                offloaded = e.offloaded,
                reason = %e.reason,
                "offload changed"
            );
            self.publish(v1::manager_event::Event::Offload(v1::OffloadChanged {
                call_id: e.from.call_id.to_string(),
                from_leg: e.from.leg_id.to_string(),
                to_leg: e.to.map(|t| t.leg_id.to_string()).unwrap_or_default(),
                offloaded: e.offloaded,
                reason: e.reason.to_string(),
            }));
        }
    }

    /// The relay latched a peer: once locked, a direction may go into the
    /// kernel.
    fn latched(&self, leg: &LegRef, kind: StreamKind, source: std::net::SocketAddr, locked: bool) {
        let mut offload = self.offload();
        offload.latched(Instant::now(), leg, kind, source, locked);
        self.settle_offload(offload);
    }

    /// The relay learns a leg's sources again: its directions leave the
    /// kernel until they are locked.
    fn learning(
        &self,
        leg: &LegRef,
        rtp: Option<std::net::SocketAddr>,
        rtcp: Option<std::net::SocketAddr>,
    ) {
        let mut offload = self.offload();
        offload.learning(Instant::now(), leg, rtp, rtcp);
        self.settle_offload(offload);
    }

    /// The relay fixed new rewrite offsets for the stream towards `leg`'s
    /// peer: the directions into it may go back into the kernel.
    fn anchored(&self, leg: &LegRef) {
        let mut offload = self.offload();
        offload.rewrite_changed(Instant::now(), leg);
        // The new offsets go into the kernel: a restart must keep them.
        self.settle_offload(offload);
    }

    /// Carries out what the offload decision now wants (removes first, then
    /// installs), publishes the changes and saves the calls.
    fn settle_offload(&self, mut offload: MutexGuard<'_, KernelOffload>) {
        let pending = offload.pending();
        offload.execute(&self.inner.fast_path, pending.removes);
        offload.execute(&self.inner.fast_path, pending.installs);
        let events = offload.events();
        drop(offload);
        self.publish_offload(events);
        self.persist();
    }

    /// Feeds the offload decision every leg's latched addresses after
    /// latch events were lost (a burst of new calls overflows the event
    /// channel): a lost lock must never leave a stream in userspace. RTP
    /// latches are read from the legs' shared state (a leg that received
    /// RTP is latched to its published destination), without a round trip
    /// to a relay that is busy with that burst; RTCP ones from the relay,
    /// only for legs that received RTCP. One batch under one lock, then
    /// one settle and one state save: per-leg settles (each saving every
    /// call) made a resync of thousands of legs slow enough to lag again.
    fn resync_latches(&self) {
        let legs = self.offload().legs();
        // RTCP latches need the relay; read them before taking the lock.
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
        let now = Instant::now();
        let mut offload = self.offload();
        for (_, shared) in &legs {
            // Anchors were in the lost events too.
            offload.rewrite_changed(now, &shared.leg);
            if LegCounters::get(&shared.counters.rtp_in_packets) == 0 {
                continue;
            }
            if let Some(source) = shared.destination() {
                let locked = shared
                    .source_locked
                    .load(std::sync::atomic::Ordering::Relaxed);
                offload.latched(now, &shared.leg, StreamKind::Rtp, source, locked);
            }
        }
        for (leg, source, locked) in rtcp {
            offload.latched(now, &leg, StreamKind::Rtcp, source, locked);
        }
        tracing::info!(legs = legs.len(), "latches re-read after lost relay events");
        self.settle_offload(offload);
    }

    /// Reads the kernel's figures every `period`: last-seen times for idle
    /// reaping, and media timeouts of offloaded streams, which the relay
    /// does not see.
    pub async fn watch_offloaded(self, period: Duration) {
        if self.inner.fast_path.mode() == crate::fastpath::Mode::Off {
            return;
        }
        let mut ticker = tokio::time::interval(period);
        loop {
            ticker.tick().await;
            let timeouts = self.offload().tick(&self.inner.fast_path);
            for (leg, idle) in timeouts {
                tracing::info!(call = %leg.call_id, leg = %leg.leg_id, idle_s = idle.as_secs(), "media timeout (kernel path)");
                self.publish(v1::manager_event::Event::MediaTimeout(v1::MediaTimeout {
                    call_id: leg.call_id.to_string(),
                    leg_id: leg.leg_id.to_string(),
                    idle_secs: u32::try_from(idle.as_secs()).unwrap_or(u32::MAX),
                }));
            }
        }
    }

    /// Publishes a manager event to every Watch stream.
    pub fn publish(&self, e: v1::manager_event::Event) {
        let _ = self.inner.events.send(event(e));
    }

    /// Turns relay events into manager events, forever.
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
            match events.recv().await {
                // The relay sees no packets of an offloaded stream; the
                // kernel's own timeout check reports those.
                Ok(RelayEvent::MediaTimeout { leg, .. })
                    if self.offload().carries(&self.inner.fast_path, &leg) =>
                {
                    tracing::debug!(call = %leg.call_id, leg = %leg.leg_id, "relay media timeout ignored: the kernel carries the stream");
                }
                Ok(RelayEvent::MediaTimeout { leg, idle }) => {
                    self.publish(v1::manager_event::Event::MediaTimeout(v1::MediaTimeout {
                        call_id: leg.call_id.to_string(),
                        leg_id: leg.leg_id.to_string(),
                        idle_secs: u32::try_from(idle.as_secs()).unwrap_or(u32::MAX),
                    }))
                }
                Ok(RelayEvent::Dtmf {
                    leg,
                    digit,
                    duration,
                    volume,
                }) => self.publish(v1::manager_event::Event::Dtmf(v1::DtmfReceived {
                    call_id: leg.call_id.to_string(),
                    leg_id: leg.leg_id.to_string(),
                    digit: digit.as_char().to_string(),
                    duration_ms: u32::try_from(duration.as_millis()).unwrap_or(u32::MAX),
                    volume: volume.into(),
                })),
                Ok(RelayEvent::Latched {
                    leg,
                    source,
                    locked,
                }) => self.latched(&leg, StreamKind::Rtp, source, locked),
                Ok(RelayEvent::LatchedRtcp {
                    leg,
                    source,
                    locked,
                }) => self.latched(&leg, StreamKind::Rtcp, source, locked),
                Ok(RelayEvent::Learning { leg, rtp, rtcp }) => self.learning(&leg, rtp, rtcp),
                Ok(RelayEvent::Anchored { leg }) => self.anchored(&leg),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "relay events lagged; latches and rewrites re-read from the relay"
                    );
                    self.resync_latches();
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Every `period`: deletes answered calls without media for their
    /// media (or hold) timeout, publishing a MediaTimeout (so a signaling
    /// server still holding the call hangs it up) and a LegReaped per leg;
    /// then legs nobody controls any more (no media, no requests for
    /// `idle`), reporting each.
    pub async fn reap_idle_legs(self, idle: Duration, period: Duration) {
        let mut ticker = tokio::time::interval(period);
        loop {
            ticker.tick().await;
            let now_ms = unix_millis(SystemTime::now());
            let silent = self.table().media_timeouts(Instant::now(), now_ms);
            for call in silent {
                self.reap_silent_call(call);
            }
            let idle_legs = self.table().idle_legs(Instant::now(), now_ms, idle);
            for (call, leg) in idle_legs {
                let commands = self.table().delete(&call, &leg);
                if let Ok(commands) = commands {
                    if self.apply(commands).is_ok() {
                        tracing::info!(%call, %leg, idle_s = idle.as_secs(), "reaped idle leg");
                        self.publish(v1::manager_event::Event::Reaped(v1::LegReaped {
                            call_id: call,
                            leg_id: leg,
                            idle_secs: u32::try_from(idle.as_secs()).unwrap_or(u32::MAX),
                        }));
                    }
                }
            }
        }
    }
}

impl ControlService {
    fn reap_silent_call(&self, call: TimedOut) {
        let Ok(commands) = self.table().delete(&call.call_id, "") else {
            return;
        };
        if let Err(e) = self.apply(commands) {
            tracing::warn!(call = %call.call_id, error = %e.message(), "reaping a call without media failed");
            return;
        }
        for (leg, silent) in &call.legs {
            let idle_secs = u32::try_from(silent.as_secs()).unwrap_or(u32::MAX);
            tracing::info!(call = %call.call_id, %leg, idle_s = idle_secs, "media timeout: call reaped");
            self.publish(v1::manager_event::Event::MediaTimeout(v1::MediaTimeout {
                call_id: call.call_id.clone(),
                leg_id: leg.clone(),
                idle_secs,
            }));
            self.publish(v1::manager_event::Event::Reaped(v1::LegReaped {
                call_id: call.call_id.clone(),
                leg_id: leg.clone(),
                idle_secs,
            }));
        }
    }
}

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RtpManager for ControlService {
    async fn offer(
        &self,
        request: Request<v1::OfferRequest>,
    ) -> Result<Response<v1::SdpResponse>, Status> {
        let r = request.into_inner();
        let result = self
            .table()
            .offer(
                Instant::now(),
                OfferInput {
                    call: &r.call_id,
                    leg: &r.leg_id,
                    peer: &r.peer_leg_id,
                    sdp: &r.sdp,
                    options: options_of(r.options),
                    peer_options: options_of(r.peer_options),
                },
            )
            .map_err(status_of)?;
        self.apply(result.commands)?;
        Ok(Response::new(v1::SdpResponse {
            sdp: result.sdp,
            leg: Some(leg_info(
                &result.leg,
                self.offload().offloaded(result.leg.slot),
            )),
        }))
    }

    async fn answer(
        &self,
        request: Request<v1::AnswerRequest>,
    ) -> Result<Response<v1::SdpResponse>, Status> {
        let r = request.into_inner();
        let result = self
            .table()
            .answer(
                Instant::now(),
                &r.call_id,
                &r.leg_id,
                &r.peer_leg_id,
                &r.sdp,
            )
            .map_err(status_of)?;
        self.apply(result.commands)?;
        Ok(Response::new(v1::SdpResponse {
            sdp: result.sdp,
            leg: Some(leg_info(
                &result.leg,
                self.offload().offloaded(result.leg.slot),
            )),
        }))
    }

    async fn bridge(
        &self,
        request: Request<v1::BridgeRequest>,
    ) -> Result<Response<v1::BridgeResponse>, Status> {
        let r = request.into_inner();
        let commands = self
            .table()
            .bridge(Instant::now(), &r.call_id, &r.leg_a, &r.leg_b)
            .map_err(status_of)?;
        self.apply(commands)?;
        Ok(Response::new(v1::BridgeResponse {}))
    }

    async fn unbridge(
        &self,
        request: Request<v1::BridgeRequest>,
    ) -> Result<Response<v1::BridgeResponse>, Status> {
        let r = request.into_inner();
        let commands = self
            .table()
            .unbridge(Instant::now(), &r.call_id, &r.leg_a, &r.leg_b)
            .map_err(status_of)?;
        self.apply(commands)?;
        Ok(Response::new(v1::BridgeResponse {}))
    }

    async fn delete(
        &self,
        request: Request<v1::DeleteRequest>,
    ) -> Result<Response<v1::DeleteResponse>, Status> {
        let r = request.into_inner();
        let commands = self
            .table()
            .delete(&r.call_id, &r.leg_id)
            .map_err(status_of)?;
        let legs = self.apply(commands)?;
        tracing::debug!(call = %r.call_id, leg = %r.leg_id, reason = ?r.reason(), detail = %r.detail, "deleted");
        Ok(Response::new(v1::DeleteResponse { legs }))
    }

    type PlayStream = EventStream<v1::PlayEvent>;

    /// Files are resolved and encoded before anything is sent: a file that
    /// cannot be played ends the stream with an error event naming it, and
    /// leaves a running playback alone. Dropping the stream stops the
    /// playback ("client gone").
    async fn play(
        &self,
        request: Request<v1::PlayRequest>,
    ) -> Result<Response<Self::PlayStream>, Status> {
        let r = request.into_inner();
        require_field("call_id", &r.call_id)?;
        require_field("leg_id", &r.leg_id)?;
        if r.files.is_empty() {
            return Err(Status::invalid_argument("files is empty"));
        }
        let (shared, negotiation) = self
            .table()
            .leg_media(&r.call_id, &r.leg_id)
            .map_err(status_of)?;
        let negotiation = negotiated(&r.leg_id, negotiation)?;
        let law = law_of(&negotiation).ok_or_else(|| {
            Status::failed_precondition(format!(
                "playback needs PCMU or PCMA, leg negotiated {}/{}",
                negotiation.codec.encoding, negotiation.codec.clock_rate
            ))
        })?;
        let playback_id = self.inner.injections.new_playback_id();
        let (updates, rx) = tokio::sync::mpsc::channel(64);
        let stream = play_stream(playback_id.clone(), rx);

        let dir = self.inner.audio_dir.clone();
        let files = r.files.clone();
        let loaded = tokio::task::spawn_blocking(move || load_clips(&dir, &files, law))
            .await
            .map_err(|_| Status::internal("loading the audio files failed"))?;
        let clips = match loaded {
            Ok(clips) => clips,
            Err((file, e)) => {
                tracing::info!(call = %r.call_id, leg = %r.leg_id, %file, reason = %e, "playback refused");
                let _ = updates
                    .send(PlayUpdate::Error {
                        file,
                        reason: e.to_string(),
                    })
                    .await;
                return Ok(Response::new(stream));
            }
        };

        let leg = shared.leg.clone();
        let ticket = self
            .inner
            .injections
            .start_playback(&leg, playback_id.clone())
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        self.set_inbound_paused(&leg, true);
        tracing::info!(call = %r.call_id, leg = %r.leg_id, playback = %playback_id, files = ?r.files, "playback started");
        let job = PlayJob {
            shared,
            law,
            clips,
            passes: (!r.loop_forever).then_some(r.repeat),
        };
        tokio::spawn(playback::player::run(
            self.clone(),
            Arc::clone(&self.inner.injections),
            job,
            ticket,
            updates,
        ));
        Ok(Response::new(stream))
    }

    async fn stop_play(
        &self,
        request: Request<v1::StopPlayRequest>,
    ) -> Result<Response<v1::StopPlayResponse>, Status> {
        let r = request.into_inner();
        require_field("call_id", &r.call_id)?;
        require_field("leg_id", &r.leg_id)?;
        let (shared, _) = self
            .table()
            .leg_media(&r.call_id, &r.leg_id)
            .map_err(status_of)?;
        let id = (!r.playback_id.is_empty()).then_some(PlaybackId(r.playback_id));
        self.inner
            .injections
            .stop_playback(&shared.leg, id.as_ref())
            .map_err(|e| Status::not_found(e.to_string()))?;
        Ok(Response::new(v1::StopPlayResponse {}))
    }

    /// Returns once every packet has been sent (a few hundred milliseconds
    /// per digit), so the caller knows the digits are out; a client that
    /// gives up early does not cut the digits short.
    async fn send_dtmf(
        &self,
        request: Request<v1::SendDtmfRequest>,
    ) -> Result<Response<v1::SendDtmfResponse>, Status> {
        let r = request.into_inner();
        require_field("call_id", &r.call_id)?;
        require_field("leg_id", &r.leg_id)?;
        let (shared, negotiation) = self
            .table()
            .leg_media(&r.call_id, &r.leg_id)
            .map_err(status_of)?;
        let negotiation = negotiated(&r.leg_id, negotiation)?;
        let payload_type = negotiation
            .telephone_event
            .and_then(|pt| PayloadType::new(pt.get()))
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "leg {} did not negotiate telephone-event",
                    r.leg_id
                ))
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
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let leg = shared.leg.clone();
        let ticket = self
            .inner
            .injections
            .start_dtmf(&leg)
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        self.set_inbound_paused(&leg, true);
        tracing::info!(call = %r.call_id, leg = %r.leg_id, digits = %r.digits, "sending DTMF");
        let sent = tokio::spawn(playback::dtmf::run(
            self.clone(),
            Arc::clone(&self.inner.injections),
            shared,
            plan,
            ticket,
        ))
        .await
        .map_err(|_| Status::internal("sending DTMF failed"))?;
        match sent {
            Ok(()) => Ok(Response::new(v1::SendDtmfResponse {})),
            Err(reason) => Err(Status::aborted(format!("DTMF sending stopped: {reason}"))),
        }
    }

    type WatchStream = EventStream<v1::ManagerEvent>;

    async fn watch(
        &self,
        request: Request<v1::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let interval = request.into_inner().stats_interval_secs;
        let events = tokio_stream::wrappers::BroadcastStream::new(self.inner.events.subscribe());
        let events = tokio_stream::StreamExt::filter_map(events, |e| e.ok().map(Ok));
        if interval == 0 {
            return Ok(Response::new(Box::pin(events)));
        }
        let this = self.clone();
        let period = Duration::from_secs(u64::from(interval));
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            loop {
                ticker.tick().await;
                for stats in this.all_stats() {
                    // The watcher went away: stop producing for it.
                    if tx
                        .send(Ok(event(v1::manager_event::Event::Stats(stats))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
        let stats = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::merge(
            events, stats,
        ))))
    }

    async fn get_stats(
        &self,
        request: Request<v1::GetStatsRequest>,
    ) -> Result<Response<v1::GetStatsResponse>, Status> {
        let r = request.into_inner();
        let views = self
            .table()
            .leg_views(&r.call_id, &r.leg_id)
            .map_err(status_of)?;
        let legs = views
            .iter()
            .map(|v| self.stats_of(v))
            .collect::<Result<Vec<_>, Status>>()?;
        let info = views
            .iter()
            .map(|v| leg_info(v, self.offload().offloaded(v.slot)))
            .collect();
        Ok(Response::new(v1::GetStatsResponse { legs, info }))
    }

    async fn list_calls(
        &self,
        _: Request<v1::ListCallsRequest>,
    ) -> Result<Response<v1::ListCallsResponse>, Status> {
        // The table's lock is released before the offload state is read:
        // `apply` takes them in the other order.
        let listed = self.table().list(Instant::now());
        let calls = listed
            .into_iter()
            .map(|(call_id, age, legs)| v1::CallSummary {
                call_id,
                legs: legs
                    .iter()
                    .map(|v| leg_info(v, self.offload().offloaded(v.slot)))
                    .collect(),
                age_secs: age.as_secs(),
            })
            .collect();
        Ok(Response::new(v1::ListCallsResponse { calls }))
    }

    async fn health(
        &self,
        _: Request<v1::HealthRequest>,
    ) -> Result<Response<v1::HealthResponse>, Status> {
        let table = self.table();
        let status = if table.draining() {
            v1::ServingStatus::Draining
        } else {
            v1::ServingStatus::Serving
        };
        Ok(Response::new(v1::HealthResponse {
            status: status.into(),
            fast_path: self.inner.fast_path.mode().to_proto().into(),
            active_calls: count(table.calls()),
            active_legs: count(table.legs()),
            ports_free: count(table.ports_free()),
            interfaces: self.media_interfaces(&table),
        }))
    }

    async fn info(
        &self,
        _: Request<v1::InfoRequest>,
    ) -> Result<Response<v1::InfoResponse>, Status> {
        let info = &self.inner.info;
        let fast_path = &self.inner.fast_path;
        let table = self.table();
        Ok(Response::new(v1::InfoResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            instance_id: info.instance_id.clone(),
            advertised_addresses: info.advertised.iter().map(ToString::to_string).collect(),
            rtp_port_min: info.rtp_port_min.into(),
            rtp_port_max: info.rtp_port_max.into(),
            ports_total: count(table.ports_total()),
            ports_free: count(table.ports_free()),
            fast_path: fast_path.mode().to_proto().into(),
            fast_path_reason: fast_path.reason().to_owned(),
            media_interface: fast_path.interface().to_owned(),
            codecs: CODECS.iter().map(|c| (*c).to_owned()).collect(),
            started_at_ms: info.started_at_ms,
            draining: table.draining(),
            interfaces: self.media_interfaces(&table),
        }))
    }

    async fn set_drain(
        &self,
        request: Request<v1::SetDrainRequest>,
    ) -> Result<Response<v1::SetDrainResponse>, Status> {
        let drain = request.into_inner().drain;
        let mut table = self.table();
        if table.draining() != drain {
            tracing::info!(drain, "drain mode changed");
        }
        table.set_draining(drain);
        Ok(Response::new(v1::SetDrainResponse {}))
    }
}

impl ControlService {
    /// Every media interface with the fast-path mode on its device.
    fn media_interfaces(&self, table: &SessionTable) -> Vec<v1::MediaInterface> {
        let fast_path = &self.inner.fast_path;
        table
            .interfaces()
            .iter()
            .map(|i| {
                let attachment = fast_path
                    .attachments()
                    .iter()
                    .find(|a| a.device == i.device);
                let (min, max) = i.pool.range();
                v1::MediaInterface {
                    name: i.name.clone(),
                    device: i.device.clone(),
                    fast_path: fast_path.mode_on(&i.device).to_proto().into(),
                    fast_path_reason: attachment
                        .map_or_else(|| fast_path.reason().to_owned(), |a| a.reason.clone()),
                    advertised_addresses: i
                        .advertise_v4
                        .iter()
                        .chain(i.advertise_v6.iter())
                        .map(ToString::to_string)
                        .collect(),
                    rtp_port_min: min.into(),
                    rtp_port_max: max.into(),
                }
            })
            .collect()
    }

    fn stats_of(&self, view: &LegView) -> Result<v1::LegStats, Status> {
        let snapshot = self
            .inner
            .relay
            .snapshot(view.slot)
            .map_err(|_| Status::internal("the media relay has stopped"))?;
        let mut stats = leg_stats(&view.shared, snapshot.as_ref());
        self.offload()
            .merge(&self.inner.fast_path, view.slot, &mut stats);
        Ok(stats)
    }

    fn all_stats(&self) -> Vec<v1::LegStats> {
        let calls = self.table().list(Instant::now());
        calls
            .iter()
            .flat_map(|(_, _, legs)| legs.iter())
            .filter_map(|v| self.stats_of(v).ok())
            .collect()
    }
}

impl LegControl for ControlService {
    fn set_inbound_paused(&self, leg: &LegRef, paused: bool) {
        let commands = self
            .table()
            .set_inbound_paused(&leg.call_id, &leg.leg_id, paused);
        match commands {
            Ok(commands) => {
                if let Err(e) = self.apply(commands) {
                    tracing::warn!(call = %leg.call_id, leg = %leg.leg_id, error = %e.message(), "cannot pause or resume the leg");
                }
            }
            // The leg was deleted meanwhile: nothing to resume.
            Err(e) => {
                tracing::debug!(call = %leg.call_id, leg = %leg.leg_id, error = %e, paused, "leg gone")
            }
        }
    }
}

fn require_field(field: &str, value: &str) -> Result<(), Status> {
    if value.trim().is_empty() {
        return Err(Status::invalid_argument(format!("{field} is empty")));
    }
    Ok(())
}

fn negotiated(leg: &str, negotiation: Option<Negotiation>) -> Result<Negotiation, Status> {
    negotiation.ok_or_else(|| {
        Status::failed_precondition(format!(
            "leg {leg} has no negotiated media yet (offer/answer first)"
        ))
    })
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
fn load_clips(
    dir: &std::path::Path,
    files: &[String],
    law: Law,
) -> Result<Arc<[Clip]>, (String, FileError)> {
    files
        .iter()
        .map(|f| Clip::load(dir, f, law).map_err(|e| (f.clone(), e)))
        .collect::<Result<Vec<_>, _>>()
        .map(Arc::from)
}

/// The Play stream: each update as a PlayEvent of `playback_id`.
fn play_stream(
    playback_id: PlaybackId,
    updates: tokio::sync::mpsc::Receiver<PlayUpdate>,
) -> EventStream<v1::PlayEvent> {
    use v1::play_event::Event;
    let stream = tokio_stream::wrappers::ReceiverStream::new(updates);
    Box::pin(tokio_stream::StreamExt::map(stream, move |update| {
        let event = match update {
            PlayUpdate::Started { file, codec } => Event::Started(v1::PlayStarted {
                file,
                codec: codec.to_owned(),
            }),
            PlayUpdate::Progress {
                file,
                position_ms,
                duration_ms,
            } => Event::Progress(v1::PlayProgress {
                file,
                position_ms,
                duration_ms,
            }),
            PlayUpdate::Completed => Event::Completed(v1::PlayCompleted {}),
            PlayUpdate::Stopped(reason) => Event::Stopped(v1::PlayStopped {
                reason: reason.to_string(),
            }),
            PlayUpdate::Error { file, reason } => Event::Error(v1::PlayError { file, reason }),
        };
        Ok(v1::PlayEvent {
            playback_id: playback_id.0.clone(),
            event: Some(event),
        })
    }))
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
