//! The media engine: the session table and the offload decision behind one
//! sans-IO interface. It decides; the [`driver`](crate::driver) acts.
//!
//! Each control request or relay report is one `handle_*` input, with the
//! time passed in (`now` for durations, `unix_ms` where a wall-clock value
//! is needed: `o=` session ids, the relay's last-packet times). An input
//! changes the [`SessionTable`] and the [`Offload`] decision and queues
//! [`Command`]s, in the order they must be carried out: kernel entries
//! that must go are removed before the relay gets new params, entries are
//! installed after, so every packet is handled by one path or the other;
//! then the events for watchers; then a request to save the calls. The
//! kernel path is derived from the same state the relay forwards with, so
//! it stays a cache of the userspace path.
//!
//! Nothing here reads a clock, binds a socket, writes a map or a file, or
//! knows the control protocol. Two things are shared with the outside, as
//! the session table always did: the relay's per-leg [`LegShared`] (its
//! atomics say when a leg last received, and its outbound stream the
//! continuity rewrite), and two capabilities the owner supplies: the port
//! pools' [`Binder`](crate::ports::Binder) and the table's route lookup
//! (the kernel's routing table unless replaced, see
//! [`SessionTable::set_route_lookup`]), which picks a new leg's media
//! interface when there are several.
//!
//! # Driving it
//!
//! Create it with [`Engine::new`] over a table whose pools bind through the
//! driver's [`SocketBinder`](crate::ports::SocketBinder). Feed control
//! requests to `handle_offer`, `handle_answer`, `handle_bridge`,
//! `handle_delete`, `handle_inbound_paused`, `handle_drain`; the relay's
//! reports to `handle_latched`, `handle_learning`, `handle_anchored` (and
//! `handle_resync` after reports were lost); the periodic reaper tick to
//! [`Engine::handle_timeout`]; a restart's saved state to
//! [`Engine::handle_restore`]. After every input drain
//! [`Engine::poll_command`] until it returns `None` and carry out each
//! command in order (the driver does so before the next input, under the
//! same lock). A kernel write that fails goes back in through
//! [`Engine::handle_install_failed`], which may queue more commands.
//!
//! Ports: the table's pools choose port numbers, and the driver's binder
//! binds them while the pool chooses, so a port another process holds is
//! skipped before the SDP names it (the pool's bookkeeping stays here,
//! the sockets with the driver, which takes them on [`Command::AddLeg`]).
//! A pair that cannot be bound is an error of the allocation (an input
//! from the binder): the pool skips it, and when none is left the request
//! fails with `Exhausted` and leaves no leg behind.

mod command;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use command::{Command, Event};

use crate::offload::{Direction, Offload, OffloadCommand, OffloadLeg, StreamKind};
use crate::relay::{LegCounters, LegRef, LegShared, Slot};
use crate::session::persist::{NotRestored, Save, SavedCall, SavedChanges, SavedState};
use crate::session::{LegView, OfferInput, RelayCommand, SessionError, SessionTable};

/// How the engine sees the fast path.
#[derive(Clone, Debug, Default)]
pub struct EngineConfig {
    /// Whether any kernel fast path is in force.
    pub offload: bool,
    /// Advertised address → the address packets for it carry on the wire
    /// at the media interface (they differ behind a 1:1 NAT).
    pub wire: HashMap<IpAddr, IpAddr>,
    /// The devices the programs are attached to ("" stands for a table
    /// made without devices, which follows the fast path's mode).
    pub kernel_devices: HashSet<String>,
    /// Packets a second the userspace relay carries with its latency
    /// intact; an Offer that would commit more is refused. 0: no limit.
    pub relay_capacity_pps: u32,
}

/// Packets a second one leg brings the userspace relay while the kernel
/// does not forward its media: RTP at 20 ms packetisation, as phones send
/// G.711, G.722 and Opus (RTCP's few packets are in the margin).
pub const LEG_PPS: u32 = 50;

/// The userspace relay's committed load against its capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLoad {
    /// [`LEG_PPS`] for every leg whose media the kernel does not forward.
    pub committed_pps: u32,
    /// The configured capacity; 0: no admission control.
    pub capacity_pps: u32,
    /// Every relay worker is measured saturated (it hardly waits for
    /// packets): the calls up bring more packets than their legs count for
    /// (a flood, video, short packetisation), or the host's CPU is short of
    /// what the configured capacity assumes.
    pub saturated: bool,
}

impl RelayLoad {
    /// The capacity is reached, as committed or as measured: new calls
    /// should go to another manager.
    pub fn overloaded(&self) -> bool {
        self.capacity_pps != 0 && (self.committed_pps >= self.capacity_pps || self.saturated)
    }
}

/// The SDP an Offer or Answer returns, with the leg it advertises.
#[derive(Debug)]
pub struct SdpOut {
    pub sdp: String,
    pub leg: LegView,
}

/// What a restart took back.
#[derive(Debug)]
pub struct Restored {
    /// Legs re-adopted.
    pub legs: usize,
    /// Legs that could not be (their port is gone).
    pub failed: Vec<NotRestored>,
}

/// A leg as the offload decision is fed.
#[derive(Debug)]
struct EngineLeg {
    shared: Arc<LegShared>,
}

/// The session table and the offload decision; see the module doc.
#[derive(Debug)]
pub struct Engine {
    table: SessionTable,
    decision: Offload,
    config: EngineConfig,
    legs: HashMap<Slot, EngineLeg>,
    by_ref: HashMap<LegRef, Slot>,
    commands: VecDeque<Command>,
    /// A `Persist` is queued and not polled yet.
    persist_queued: bool,
    /// Calls changed since the last save was read: the next save appends
    /// them (or, gone from the table, their removal).
    unsaved: HashSet<Arc<str>>,
    /// Every call may have changed (the latches were re-read): the next
    /// save puts them all.
    unsaved_all: bool,
    /// The relay's workers are all measured saturated, as last reported.
    relay_saturated: bool,
}

impl Engine {
    pub fn new(table: SessionTable, config: EngineConfig) -> Engine {
        Engine {
            table,
            decision: Offload::new(config.offload),
            config,
            legs: HashMap::new(),
            by_ref: HashMap::new(),
            commands: VecDeque::new(),
            persist_queued: false,
            unsaved: HashSet::new(),
            unsaved_all: false,
            relay_saturated: false,
        }
    }

    /// The next side effect to carry out, in order.
    pub fn poll_command(&mut self) -> Option<Command> {
        let command = self.commands.pop_front();
        if matches!(command, Some(Command::Persist)) {
            self.persist_queued = false;
        }
        command
    }

    /// The userspace relay's committed load and capacity.
    pub fn relay_load(&self) -> RelayLoad {
        let userspace = self
            .legs
            .keys()
            .filter(|slot| !self.decision.offloaded(**slot))
            .count();
        RelayLoad {
            committed_pps: u32::try_from(userspace)
                .unwrap_or(u32::MAX)
                .saturating_mul(LEG_PPS),
            capacity_pps: self.config.relay_capacity_pps,
            saturated: self.relay_saturated,
        }
    }

    /// The relay's measured state: whether every worker is saturated. The
    /// driver reports it before each Offer, so admission sees it as of now.
    pub fn handle_relay_saturated(&mut self, saturated: bool) {
        self.relay_saturated = saturated;
    }

    /// Admission control: an Offer that adds legs is refused when their
    /// packets would take the userspace relay past its capacity, so the
    /// calls already up keep their latency and signaling places the call
    /// on another manager (RESOURCE_EXHAUSTED). Offers on existing legs
    /// (re-INVITEs) always pass; legs the kernel forwards do not count. A
    /// relay measured saturated refuses new legs whatever the count says.
    fn admit(&self, input: &OfferInput<'_>) -> Result<(), SessionError> {
        let load = self.relay_load();
        if load.capacity_pps == 0 {
            return Ok(());
        }
        let adding = self.table.legs_added_by(input.call, input.leg, input.peer);
        if adding == 0 {
            return Ok(());
        }
        let added = u32::try_from(adding)
            .unwrap_or(u32::MAX)
            .saturating_mul(LEG_PPS);
        if load.saturated {
            return Err(SessionError::Exhausted(format!(
                "the userspace relay is saturated: every worker was busy over {}% of the last second \
                 ({} of {} packets/s committed; the calls up bring more than their legs count for, or the host's CPU is short)",
                crate::relay::SATURATED_BUSY_PERMILLE / 10,
                load.committed_pps,
                load.capacity_pps
            )));
        }
        if load.committed_pps.saturating_add(added) > load.capacity_pps {
            return Err(SessionError::Exhausted(format!(
                "the userspace relay is at capacity: {} of {} packets/s committed and this offer adds {added} \
                 (--relay-capacity-pps; media the kernel forwards does not count)",
                load.committed_pps, load.capacity_pps
            )));
        }
        Ok(())
    }

    /// The session table, for reads (views, lists, counts).
    pub fn table(&self) -> &SessionTable {
        &self.table
    }

    /// The offload decision, for reads of what the kernel carries.
    pub fn decision(&self) -> &Offload {
        &self.decision
    }

    /// Whether media received on `slot` is forwarded by the kernel now.
    pub fn offloaded(&self, slot: Slot) -> bool {
        self.decision.offloaded(slot)
    }

    /// An Offer: the SDP the peer of `input.leg` sent.
    pub fn handle_offer(
        &mut self,
        now: Instant,
        unix_ms: u64,
        input: OfferInput<'_>,
    ) -> Result<SdpOut, SessionError> {
        self.table.set_wall_clock(unix_ms);
        self.admit(&input)?;
        let call = input.call;
        let result = self.table.offer(now, input)?;
        self.mark_unsaved(call);
        self.apply(now, result.commands);
        Ok(SdpOut {
            sdp: result.sdp,
            leg: result.leg,
        })
    }

    /// An Answer: the SDP the peer of `leg` answered with.
    pub fn handle_answer(
        &mut self,
        now: Instant,
        call: &str,
        leg: &str,
        peer: &str,
        sdp: &str,
    ) -> Result<SdpOut, SessionError> {
        let result = self.table.answer(now, call, leg, peer, sdp)?;
        self.mark_unsaved(call);
        self.apply(now, result.commands);
        Ok(SdpOut {
            sdp: result.sdp,
            leg: result.leg,
        })
    }

    /// Bridge (`on`) or unbridge two legs of a call.
    pub fn handle_bridge(
        &mut self,
        now: Instant,
        call: &str,
        a: &str,
        b: &str,
        on: bool,
    ) -> Result<(), SessionError> {
        let commands = if on {
            self.table.bridge(now, call, a, b)?
        } else {
            self.table.unbridge(now, call, a, b)?
        };
        self.mark_unsaved(call);
        self.apply(now, commands);
        Ok(())
    }

    /// Deletes a leg, or the whole call when `leg` is empty.
    pub fn handle_delete(
        &mut self,
        now: Instant,
        call: &str,
        leg: &str,
    ) -> Result<(), SessionError> {
        let commands = self.table.delete(call, leg)?;
        self.mark_unsaved(call);
        self.apply(now, commands);
        Ok(())
    }

    /// Pauses (or resumes) media from the bridged leg into `leg` while the
    /// manager plays or sends DTMF to it.
    pub fn handle_inbound_paused(
        &mut self,
        now: Instant,
        call: &str,
        leg: &str,
        paused: bool,
    ) -> Result<(), SessionError> {
        let commands = self.table.set_inbound_paused(call, leg, paused)?;
        self.mark_unsaved(call);
        self.apply(now, commands);
        Ok(())
    }

    /// Drain mode on or off: new calls are refused while on.
    pub fn handle_drain(&mut self, drain: bool) {
        if self.table.draining() != drain {
            tracing::info!(drain, "drain mode changed");
        }
        self.table.set_draining(drain);
    }

    /// The relay latched a peer (`locked`, or a candidate while it learns):
    /// once locked, a direction may go into the kernel.
    pub fn handle_latched(
        &mut self,
        now: Instant,
        leg: &LegRef,
        kind: StreamKind,
        source: SocketAddr,
        locked: bool,
    ) {
        self.latch(now, leg, kind, source, locked);
        self.unsaved.insert(Arc::clone(&leg.call_id));
        self.settle();
    }

    fn latch(
        &mut self,
        now: Instant,
        leg: &LegRef,
        kind: StreamKind,
        source: SocketAddr,
        locked: bool,
    ) {
        if locked {
            self.decision.handle_latched(now, leg, kind, source);
        } else {
            self.decision.handle_candidate(now, leg, kind, source);
        }
    }

    /// The relay learns a leg's sources again: its directions leave the
    /// kernel until they are locked.
    pub fn handle_learning(
        &mut self,
        now: Instant,
        leg: &LegRef,
        rtp: Option<SocketAddr>,
        rtcp: Option<SocketAddr>,
    ) {
        self.decision.handle_learning(now, leg, rtp, rtcp);
        self.unsaved.insert(Arc::clone(&leg.call_id));
        self.settle();
    }

    /// The relay fixed new rewrite offsets for the stream towards `leg`'s
    /// peer: the directions into it may go back into the kernel (and a
    /// restart must keep the offsets).
    pub fn handle_anchored(&mut self, now: Instant, leg: &LegRef) {
        self.rewrite_changed(now, leg);
        self.unsaved.insert(Arc::clone(&leg.call_id));
        self.settle();
    }

    fn rewrite_changed(&mut self, now: Instant, leg: &LegRef) {
        let Some(l) = self.by_ref.get(leg).and_then(|slot| self.legs.get(slot)) else {
            return;
        };
        let rewrite = l.shared.outbound().rewrite();
        self.decision.handle_rewrite(now, leg, rewrite);
    }

    /// The relay's reports were lost (its event channel overflowed): every
    /// leg's anchors and latches are read again, so a lost lock never
    /// leaves a stream in userspace. RTP latches come from the legs'
    /// shared state (a leg that received RTP is latched to its published
    /// destination); `rtcp` holds the RTCP latches the driver read from the
    /// relay. One batch, then one settle and one save.
    pub fn handle_resync(&mut self, now: Instant, rtcp: Vec<(LegRef, SocketAddr, bool)>) {
        let legs: Vec<Arc<LegShared>> = self.legs.values().map(|l| Arc::clone(&l.shared)).collect();
        for shared in &legs {
            // Anchors were in the lost events too.
            self.rewrite_changed(now, &shared.leg);
            if LegCounters::get(&shared.counters.rtp_in_packets) == 0 {
                continue;
            }
            if let Some(source) = shared.destination() {
                let locked = shared.source_locked.load(Ordering::Relaxed);
                self.latch(now, &shared.leg, StreamKind::Rtp, source, locked);
            }
        }
        for (leg, source, locked) in rtcp {
            self.latch(now, &leg, StreamKind::Rtcp, source, locked);
        }
        tracing::info!(legs = legs.len(), "latches re-read after lost relay events");
        self.unsaved_all = true;
        self.settle();
    }

    /// The driver could not install a direction: it stays in userspace
    /// until the next input makes the decision try again.
    pub fn handle_install_failed(&mut self, direction: Direction) {
        self.decision.forget_installed(direction);
        self.publish_offload_events();
    }

    /// The reaper's tick: deletes answered calls without media for their
    /// media (or hold) timeout, publishing a `MediaTimeout` and a `Reaped`
    /// per leg; then legs nobody controls any more (no media, no requests
    /// for `idle`), publishing a `Reaped` for each.
    pub fn handle_timeout(&mut self, now: Instant, unix_ms: u64, idle: Duration) {
        for call in self.table.media_timeouts(now, unix_ms) {
            let Ok(commands) = self.table.delete(&call.call_id, "") else {
                continue;
            };
            self.apply(now, commands);
            for (leg, silent) in call.legs {
                tracing::info!(call = %call.call_id, %leg, idle_s = silent.as_secs(), "media timeout: call reaped");
                self.commands
                    .push_back(Command::Publish(Event::MediaTimeout {
                        call_id: call.call_id.clone(),
                        leg_id: leg.clone(),
                        idle: silent,
                    }));
                self.commands.push_back(Command::Publish(Event::Reaped {
                    call_id: call.call_id.clone(),
                    leg_id: leg,
                    idle: silent,
                }));
            }
        }
        for (call, leg) in self.table.idle_legs(now, unix_ms, idle) {
            let Ok(commands) = self.table.delete(&call, &leg) else {
                continue;
            };
            self.apply(now, commands);
            tracing::info!(%call, %leg, idle_s = idle.as_secs(), "reaped idle leg");
            self.commands.push_back(Command::Publish(Event::Reaped {
                call_id: call,
                leg_id: leg,
                idle,
            }));
        }
    }

    /// Takes back the calls a previous run saved: ports allocated again,
    /// the table rebuilt, latches fed to the offload decision (which
    /// installs the same entries the kernel still holds).
    pub fn handle_restore(&mut self, now: Instant, unix_ms: u64, saved: &SavedState) -> Restored {
        self.table.set_wall_clock(unix_ms);
        let (commands, failed) = self.table.restore(now, saved);
        let commands = fold_into_adds(commands);
        for f in &failed {
            tracing::warn!(call = %f.call_id, leg = %f.leg_id, reason = %f.reason, "leg not re-adopted");
        }
        self.apply(now, commands);
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
                // Saved latches were locked ones (`Offload::latched_of`).
                if let Some(source) = leg.latched_rtp {
                    self.handle_latched(now, &leg_ref, StreamKind::Rtp, source, true);
                }
                if let Some(source) = leg.latched_rtcp {
                    self.handle_latched(now, &leg_ref, StreamKind::Rtcp, source, true);
                }
            }
        }
        Restored { legs, failed }
    }

    /// The calls as a restarted manager needs them, with the decision's
    /// locked latches.
    pub fn saved(&self) -> SavedState {
        let mut saved = self.table.saved();
        for call in &mut saved.calls {
            self.fill_latches(call);
        }
        saved
    }

    fn fill_latches(&self, call: &mut SavedCall) {
        for leg in &mut call.legs {
            (leg.latched_rtp, leg.latched_rtcp) = self.decision.latched_of(leg.slot);
        }
    }

    /// What the next save writes: every call when `everything` (a new
    /// snapshot), else the calls changed since the last save was read.
    /// Either way the changes so far count as saved from here.
    pub fn take_save(&mut self, everything: bool) -> Save {
        let unsaved = std::mem::take(&mut self.unsaved);
        let all = std::mem::take(&mut self.unsaved_all);
        if everything {
            return Save::Everything(self.saved());
        }
        let mut changes = SavedChanges::default();
        if all {
            // Every call is put (sorted by id); the changed ones not among
            // them were deleted.
            changes.calls = self.saved().calls;
            changes.removed = unsaved
                .iter()
                .filter(|id| {
                    changes
                        .calls
                        .binary_search_by(|c| c.call_id.as_str().cmp(id))
                        .is_err()
                })
                .map(|id| id.to_string())
                .collect();
        } else {
            for id in unsaved {
                match self.table.saved_call(&id) {
                    Some(mut call) => {
                        self.fill_latches(&mut call);
                        changes.calls.push(call);
                    }
                    None => changes.removed.push(id.to_string()),
                }
            }
            changes.calls.sort_by(|a, b| a.call_id.cmp(&b.call_id));
        }
        changes.removed.sort();
        Save::Changes(changes)
    }

    /// The keys of the entries the decision has in the kernel.
    pub fn installed_keys(&self) -> Vec<rtpmanager_common::ForwardKey> {
        self.decision.installed_keys()
    }

    /// The locked RTP source of every leg as the offload decision knows
    /// it (`None` while it has none).
    pub fn decided_latches(&self) -> Vec<(LegRef, Option<SocketAddr>)> {
        self.legs
            .iter()
            .map(|(slot, l)| (l.shared.leg.clone(), self.decision.latched_of(*slot).0))
            .collect()
    }

    /// Every leg the relay has, by slot.
    pub fn legs(&self) -> Vec<(Slot, Arc<LegShared>)> {
        self.legs
            .iter()
            .map(|(slot, l)| (*slot, Arc::clone(&l.shared)))
            .collect()
    }

    /// Feeds the decision what the table's relay commands change, then
    /// queues: kernel removes, the relay commands, kernel installs,
    /// events, a save.
    fn apply(&mut self, now: Instant, commands: Vec<RelayCommand>) {
        let mut relay = Vec::with_capacity(commands.len());
        for command in commands {
            match command {
                RelayCommand::Add {
                    slot,
                    shared,
                    local,
                    params,
                } => {
                    self.unsaved.insert(Arc::clone(&shared.leg.call_id));
                    self.by_ref.insert(shared.leg.clone(), slot);
                    self.legs.insert(
                        slot,
                        EngineLeg {
                            shared: Arc::clone(&shared),
                        },
                    );
                    let interface = self.leg_changed(now, slot, &shared, &params);
                    relay.push(Command::AddLeg {
                        slot,
                        shared,
                        local,
                        interface: interface.unwrap_or_default(),
                        params,
                    });
                }
                RelayCommand::Update { slot, params } => {
                    if let Some(shared) = self.legs.get(&slot).map(|l| Arc::clone(&l.shared)) {
                        self.unsaved.insert(Arc::clone(&shared.leg.call_id));
                        self.leg_changed(now, slot, &shared, &params);
                    }
                    relay.push(Command::UpdateLeg { slot, params });
                }
                RelayCommand::Remove { slot, shared } => {
                    self.unsaved.insert(Arc::clone(&shared.leg.call_id));
                    self.decision.handle_leg_removed(now, slot);
                    if let Some(l) = self.legs.remove(&slot) {
                        self.by_ref.remove(&l.shared.leg);
                    }
                    relay.push(Command::RemoveLeg { slot, shared });
                }
            }
        }
        let (removes, installs) = self.decided_writes();
        self.commands.extend(removes);
        self.commands.extend(relay);
        self.commands.extend(installs);
        self.publish_offload_events();
        self.persist();
    }

    /// Tells the decision a leg's new params; returns the leg's media
    /// interface.
    fn leg_changed(
        &mut self,
        now: Instant,
        slot: Slot,
        shared: &Arc<LegShared>,
        params: &crate::relay::LegParams,
    ) -> Option<String> {
        let view = self
            .table
            .leg_views(&shared.leg.call_id, &shared.leg.leg_id)
            .ok()
            .and_then(|v| v.into_iter().next())?;
        let advertised = view.local_address;
        let ip = self
            .config
            .wire
            .get(&advertised)
            .copied()
            .unwrap_or(advertised);
        self.decision.handle_leg(
            now,
            slot,
            OffloadLeg {
                leg: shared.leg.clone(),
                local_rtp: SocketAddr::new(ip, view.rtp_port),
                kernel: self.config.kernel_devices.contains(&view.device),
                params: params.clone(),
                rewrite: shared.outbound().rewrite(),
            },
        );
        Some(view.interface)
    }

    /// The map writes decided since the last call, removes and installs.
    fn decided_writes(&mut self) -> (Vec<Command>, Vec<Command>) {
        let (mut removes, mut installs) = (Vec::new(), Vec::new());
        while let Some(command) = self.decision.poll_command() {
            match command {
                OffloadCommand::Remove { .. } => removes.push(Command::KernelRemove(command)),
                OffloadCommand::Install { .. } => installs.push(Command::KernelInstall(command)),
            }
        }
        (removes, installs)
    }

    /// Queues what the decision now wants (removes first, then installs),
    /// its events and a save.
    fn settle(&mut self) {
        let (removes, installs) = self.decided_writes();
        self.commands.extend(removes);
        self.commands.extend(installs);
        self.publish_offload_events();
        self.persist();
    }

    fn publish_offload_events(&mut self) {
        while let Some(e) = self.decision.poll_event() {
            tracing::debug!(
                call = %e.from.call_id,
                leg = %e.from.leg_id,
                offloaded = e.offloaded,
                reason = %e.reason,
                "offload changed"
            );
            self.commands.push_back(Command::Publish(Event::Offload(e)));
        }
    }

    /// `call` changed: the next save has it.
    fn mark_unsaved(&mut self, call: &str) {
        if !self.unsaved.contains(call) {
            self.unsaved.insert(Arc::from(call));
        }
    }

    /// Queues one save, after this input's other commands: a save still
    /// queued from an undrained input moves behind them and covers both.
    fn persist(&mut self) {
        if self.persist_queued {
            self.commands.retain(|c| !matches!(c, Command::Persist));
        }
        self.persist_queued = true;
        self.commands.push_back(Command::Persist);
    }
}

/// A restored leg goes to the relay with its final params in its `Add`: an
/// `Update` right after it would start a new learning epoch in the relay,
/// whose `Learning` report takes the re-adopted call's directions out of
/// the kernel until the peers lock again, which re-adoption must avoid.
/// (The relay learns afresh either way: a new leg's latch starts empty.)
fn fold_into_adds(commands: Vec<RelayCommand>) -> Vec<RelayCommand> {
    let mut out: Vec<RelayCommand> = Vec::with_capacity(commands.len());
    for command in commands {
        let RelayCommand::Update { slot, params } = command else {
            out.push(command);
            continue;
        };
        let added = out.iter_mut().find_map(|c| match c {
            RelayCommand::Add {
                slot: s, params: p, ..
            } if *s == slot => Some(p),
            _ => None,
        });
        match added {
            Some(p) => *p = params,
            None => out.push(RelayCommand::Update { slot, params }),
        }
    }
    out
}
