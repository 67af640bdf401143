//! The offload decision: which bridge directions the kernel fast path
//! carries, derived from the same state the userspace relay forwards with.
//!
//! A *direction* is media received on leg A (RTP or RTCP) and sent out of
//! the bridged leg B's socket to B's peer. It belongs in the kernel while
//! the userspace relay would forward it unchanged: A's peer's source is
//! locked (endpoint learning is over, see [`crate::relay::latch`]), B's
//! destination is known (latched, or from SDP), nothing rewrites the
//! payload (no transcoding, no telephone-event payload type mapping),
//! nothing pauses B (playback, DTMF sending), neither leg uses rtcp-mux, and
//! every address is of one family. Whenever one of these stops holding the
//! direction is taken out, and it goes back in as soon as they hold again.
//!
//! After an injection into B the relay rewrites the RTP header of what it
//! forwards into B (stream continuity, [`crate::relay::continuity`]); the
//! kernel does the same rewrite with the same offsets, so the direction
//! goes back in once the relay fixed them on the first packet it forwarded
//! after the injection ([`Offload::handle_rewrite`]), and stays out until
//! then.
//!
//! Sans-IO, driven like this: feed every leg's state with
//! [`Offload::handle_leg`] (after each relay `Add`/`Update`), every locked
//! source the relay reports with [`Offload::handle_latched`], every
//! candidate it learns with [`Offload::handle_candidate`], every restart
//! of learning with [`Offload::handle_learning`], and every removed leg with
//! [`Offload::handle_leg_removed`]; then drain [`Offload::poll_command`]
//! (map writes: apply `Remove`s before the relay sees the new params and
//! `Install`s after, so no packet is handled by neither path) and
//! [`Offload::poll_event`] (for `OffloadChanged` watchers). Identical inputs
//! give identical outputs; nothing here reads a clock or touches a map.
//!
//! A re-latch (a roaming peer moved) or a new SDP address replaces the
//! entry in place rather than taking the direction out: the kernel passes
//! packets from an unexpected source up to the relay, the relay re-latches,
//! and the new latch comes back here as an input. A strict entry drops
//! them instead and counts them, as the relay does after the lock; while a
//! strict leg learns (after each answer) its directions stay in userspace,
//! so the kernel only ever expects a locked source and never decides
//! between candidates.

pub mod kernel;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use rtpmanager_common::{
    ForwardEntry, ForwardKey, RtpRewrite, FLAG_RTCP, FLAG_RTP, FLAG_STRICT_SOURCE, STREAM_SLOTS,
};

use crate::relay::continuity::Rewrite;
use crate::relay::{LegParams, LegRef, Slot};

/// RTP or RTCP of a leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamKind {
    Rtp,
    Rtcp,
}

/// One direction of a bridge, named by the leg its media is received on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Direction {
    pub from: Slot,
    pub kind: StreamKind,
}

/// What the offload decision needs to know about one leg.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffloadLeg {
    pub leg: LegRef,
    /// The address and RTP port packets for this leg arrive at, as they are
    /// on the wire at the media interface (not a NAT's public address, not
    /// the wildcard the socket may be bound to). RTCP is on the next port.
    pub local_rtp: SocketAddr,
    /// Whether the programs are attached to the device this leg's packets
    /// arrive on: a leg on a media interface where nothing attached stays
    /// in userspace (the kernel never sees its packets).
    pub kernel: bool,
    /// The relay's params of the leg.
    pub params: LegParams,
    /// How the relay rewrites the stream towards this leg's peer (after an
    /// injection, see [`crate::relay::continuity`]).
    pub rewrite: Rewrite,
}

/// A map write for the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OffloadCommand {
    /// Forward packets addressed to `key` as `entry` says. `fresh` is true
    /// when the direction was not in the kernel before: its stats slot
    /// starts from zero; false when an installed entry is replaced.
    Install {
        direction: Direction,
        key: ForwardKey,
        entry: ForwardEntry,
        fresh: bool,
    },
    /// Take packets addressed to `key` back to userspace; the entry
    /// counted into `stats_slot`, whose figures the driver reads after.
    Remove {
        direction: Direction,
        key: ForwardKey,
        stats_slot: u32,
    },
}

/// Why a direction is where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Every condition holds: the kernel forwards.
    Passthrough,
    /// The fast path is off.
    FastPathOff,
    /// The fast path is off on the receiving leg's media interface.
    InterfaceOff,
    /// The leg is not bridged (or its bridged leg is gone).
    NotBridged,
    /// The receiving leg's peer has not sent yet.
    NotLatched,
    /// The receiving leg is still learning its peer's source.
    Learning,
    /// Where to send is not known yet.
    NoDestination,
    /// G.711 law conversion needs userspace.
    Transcoding,
    /// The legs use different telephone-event payload types.
    TelephoneEventMapping,
    /// A playback or DTMF sending owns the stream into the bridged leg.
    Injecting,
    /// The stream into the bridged leg is rewritten after an injection and
    /// the relay has not fixed the offsets yet.
    Rewriting,
    /// The receiving leg uses rtcp-mux: its RTCP arrives on the RTP port,
    /// where the kernel passes it to the relay.
    RtcpMux,
    /// The addresses are not all of one family.
    FamilyMismatch,
    /// Every stats slot is in use.
    NoStatsSlot,
    /// The receiving leg was deleted.
    Deleted,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Passthrough => "both legs known, passthrough",
            Reason::FastPathOff => "fast path off",
            Reason::InterfaceOff => "fast path off on the leg's media interface",
            Reason::NotBridged => "not bridged",
            Reason::NotLatched => "peer not latched",
            Reason::Learning => "learning the peer's source",
            Reason::NoDestination => "no destination",
            Reason::Transcoding => "transcoding",
            Reason::TelephoneEventMapping => "telephone-event payload types differ",
            Reason::Injecting => "playback or DTMF",
            Reason::Rewriting => "stream rewrite not anchored yet",
            Reason::RtcpMux => "rtcp-mux: RTCP rides on the RTP port",
            Reason::FamilyMismatch => "address families differ",
            Reason::NoStatsSlot => "no free stats slot",
            Reason::Deleted => "leg deleted",
        })
    }
}

/// An RTP direction entered or left the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffloadChanged {
    pub from: LegRef,
    /// The bridged leg; `None` when it is gone.
    pub to: Option<LegRef>,
    pub offloaded: bool,
    pub reason: Reason,
    pub at: Instant,
}

/// What is in the kernel for one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Installed {
    key: ForwardKey,
    entry: ForwardEntry,
}

#[derive(Debug)]
struct LegState {
    input: OffloadLeg,
    latched_rtp: Option<SocketAddr>,
    latched_rtcp: Option<SocketAddr>,
    /// Whether those sources are locked; only a locked source is expected
    /// by a kernel entry.
    locked_rtp: bool,
    locked_rtcp: bool,
    /// Stats slots of the directions from this leg, kept for its lifetime
    /// so its kernel figures stay in one place.
    stats_slots: HashMap<StreamKind, u32>,
}

impl LegState {
    fn latched(&self, kind: StreamKind) -> Option<SocketAddr> {
        match kind {
            StreamKind::Rtp => self.latched_rtp,
            StreamKind::Rtcp => self.latched_rtcp,
        }
    }

    fn locked(&self, kind: StreamKind) -> bool {
        match kind {
            StreamKind::Rtp => self.locked_rtp,
            StreamKind::Rtcp => self.locked_rtcp,
        }
    }

    /// Where the relay sends media of `kind` to this leg's peer: the same
    /// rule as the relay's (latched, else SDP, else RTCP on RTP's port + 1,
    /// or on RTP's own port with rtcp-mux).
    fn destination(&self, kind: StreamKind) -> Option<SocketAddr> {
        let rtp = self.latched_rtp.or(self.input.params.expected_rtp);
        let mux = self.input.params.rtcp_mux;
        match kind {
            StreamKind::Rtp => rtp,
            StreamKind::Rtcp => self
                .latched_rtcp
                .or(self.input.params.expected_rtcp)
                .or_else(|| {
                    rtp.map(|a| match mux {
                        true => a,
                        false => SocketAddr::new(a.ip(), a.port().wrapping_add(1)),
                    })
                }),
        }
    }

    /// The relay's socket for `kind` on this leg: RTCP shares the RTP port
    /// with rtcp-mux.
    fn local(&self, kind: StreamKind) -> SocketAddr {
        let rtp = self.input.local_rtp;
        match kind {
            StreamKind::Rtcp if !self.input.params.rtcp_mux => {
                SocketAddr::new(rtp.ip(), rtp.port().wrapping_add(1))
            }
            _ => rtp,
        }
    }
}

/// The offload decision for every leg of the manager.
#[derive(Debug)]
pub struct Offload {
    enabled: bool,
    legs: HashMap<Slot, LegState>,
    by_ref: HashMap<LegRef, Slot>,
    /// The legs forwarding into each leg, so an input re-evaluates only the
    /// directions it can change (a burst of thousands of latches stays
    /// linear).
    feeders: HashMap<Slot, BTreeSet<Slot>>,
    installed: BTreeMap<Direction, Installed>,
    free_slots: Vec<u32>,
    next_slot: u32,
    commands: VecDeque<OffloadCommand>,
    events: VecDeque<OffloadChanged>,
}

const KINDS: [StreamKind; 2] = [StreamKind::Rtp, StreamKind::Rtcp];

impl Offload {
    /// A decision that installs nothing when `enabled` is false (fast path
    /// off), and still tracks legs so its answers stay meaningful.
    pub fn new(enabled: bool) -> Offload {
        Offload {
            enabled,
            legs: HashMap::new(),
            by_ref: HashMap::new(),
            feeders: HashMap::new(),
            installed: BTreeMap::new(),
            free_slots: Vec::new(),
            next_slot: 0,
            commands: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// A leg was added or its state changed.
    pub fn handle_leg(&mut self, now: Instant, slot: Slot, input: OffloadLeg) {
        let old_target = self.legs.get(&slot).and_then(|s| s.input.params.forward_to);
        if old_target != input.params.forward_to {
            if let Some(old) = old_target.and_then(|t| self.feeders.get_mut(&t)) {
                old.remove(&slot);
            }
            if let Some(new) = input.params.forward_to {
                self.feeders.entry(new).or_default().insert(slot);
            }
        }
        match self.legs.get_mut(&slot) {
            Some(state) => state.input = input,
            None => {
                self.by_ref.insert(input.leg.clone(), slot);
                self.legs.insert(
                    slot,
                    LegState {
                        input,
                        latched_rtp: None,
                        latched_rtcp: None,
                        locked_rtp: false,
                        locked_rtcp: false,
                        stats_slots: HashMap::new(),
                    },
                );
            }
        }
        self.reevaluate(now, slot);
    }

    /// The relay latched the peer of `leg` to `source` and locked it.
    pub fn handle_latched(
        &mut self,
        now: Instant,
        leg: &LegRef,
        kind: StreamKind,
        source: SocketAddr,
    ) {
        self.set_source(now, leg, kind, source, true);
    }

    /// The relay, still learning, sends media for the peer of `leg` to
    /// `source` but does not lock it yet.
    pub fn handle_candidate(
        &mut self,
        now: Instant,
        leg: &LegRef,
        kind: StreamKind,
        source: SocketAddr,
    ) {
        self.set_source(now, leg, kind, source, false);
    }

    /// The relay restarted learning on `leg` (a new remote description):
    /// nothing is locked, media goes to `rtp`/`rtcp` (or the SDP's).
    pub fn handle_learning(
        &mut self,
        now: Instant,
        leg: &LegRef,
        rtp: Option<SocketAddr>,
        rtcp: Option<SocketAddr>,
    ) {
        let Some(&slot) = self.by_ref.get(leg) else {
            return;
        };
        let Some(state) = self.legs.get_mut(&slot) else {
            return;
        };
        (state.latched_rtp, state.latched_rtcp) = (rtp, rtcp);
        (state.locked_rtp, state.locked_rtcp) = (false, false);
        self.reevaluate(now, slot);
    }

    fn set_source(
        &mut self,
        now: Instant,
        leg: &LegRef,
        kind: StreamKind,
        source: SocketAddr,
        locked: bool,
    ) {
        let Some(&slot) = self.by_ref.get(leg) else {
            return;
        };
        let Some(state) = self.legs.get_mut(&slot) else {
            return;
        };
        match kind {
            StreamKind::Rtp => (state.latched_rtp, state.locked_rtp) = (Some(source), locked),
            StreamKind::Rtcp => (state.latched_rtcp, state.locked_rtcp) = (Some(source), locked),
        }
        self.reevaluate(now, slot);
    }

    /// The relay's rewrite of the stream towards `leg`'s peer changed (new
    /// offsets fixed): the directions into it follow.
    pub fn handle_rewrite(&mut self, now: Instant, leg: &LegRef, rewrite: Rewrite) {
        let Some(&slot) = self.by_ref.get(leg) else {
            return;
        };
        let Some(state) = self.legs.get_mut(&slot) else {
            return;
        };
        if state.input.rewrite == rewrite {
            return;
        }
        state.input.rewrite = rewrite;
        self.reevaluate(now, slot);
    }

    /// A leg is gone: its directions leave the kernel, and so do those
    /// into it.
    pub fn handle_leg_removed(&mut self, now: Instant, slot: Slot) {
        for kind in KINDS {
            let direction = Direction { from: slot, kind };
            self.take_out(now, direction, Reason::Deleted);
        }
        if let Some(state) = self.legs.remove(&slot) {
            self.by_ref.remove(&state.input.leg);
            self.free_slots.extend(state.stats_slots.values());
            if let Some(target) = state.input.params.forward_to {
                if let Some(f) = self.feeders.get_mut(&target) {
                    f.remove(&slot);
                }
            }
        }
        self.reevaluate(now, slot);
        // Legs still forwarding into the slot stay its feeders: if a leg is
        // added there again and removed again, their directions must go
        // out again too.
        if self.feeders.get(&slot).is_some_and(BTreeSet::is_empty) {
            self.feeders.remove(&slot);
        }
    }

    /// The next map write.
    pub fn poll_command(&mut self) -> Option<OffloadCommand> {
        self.commands.pop_front()
    }

    /// The next change of an RTP direction.
    pub fn poll_event(&mut self) -> Option<OffloadChanged> {
        self.events.pop_front()
    }

    /// Whether media received on `slot` (RTP) is forwarded by the kernel.
    pub fn offloaded(&self, slot: Slot) -> bool {
        self.installed.contains_key(&Direction {
            from: slot,
            kind: StreamKind::Rtp,
        })
    }

    /// The stats slot of a direction while it is installed.
    pub fn stats_slot(&self, direction: Direction) -> Option<u32> {
        self.installed.get(&direction).map(|i| i.entry.stats_slot)
    }

    /// The stats slot a direction has (installed or not), if it ever got one.
    pub fn last_stats_slot(&self, direction: Direction) -> Option<u32> {
        self.legs
            .get(&direction.from)?
            .stats_slots
            .get(&direction.kind)
            .copied()
    }

    /// The driver could not install a direction: it stays in userspace
    /// until the next input makes the decision try again.
    pub fn forget_installed(&mut self, direction: Direction) {
        self.installed.remove(&direction);
    }

    /// The locked RTP and RTCP sources of a leg (a candidate still being
    /// learned is left out: a restarted manager learns it again).
    pub fn latched_of(&self, slot: Slot) -> (Option<SocketAddr>, Option<SocketAddr>) {
        self.legs.get(&slot).map_or((None, None), |s| {
            (
                s.latched_rtp.filter(|_| s.locked_rtp),
                s.latched_rtcp.filter(|_| s.locked_rtcp),
            )
        })
    }

    /// The keys of every installed entry.
    pub fn installed_keys(&self) -> Vec<ForwardKey> {
        self.installed.values().map(|i| i.key).collect()
    }

    /// The installed directions with their stats slots, in order.
    pub fn installed(&self) -> Vec<(Direction, u32)> {
        self.installed
            .iter()
            .map(|(d, i)| (*d, i.entry.stats_slot))
            .collect()
    }

    /// Where `slot`'s media goes, for naming the other end in events.
    fn target_of(&self, slot: Slot) -> Option<LegRef> {
        let to = self.legs.get(&slot)?.input.params.forward_to?;
        self.legs.get(&to).map(|s| s.input.leg.clone())
    }

    /// Brings the directions a change of `changed` can affect in line with
    /// the current state: those from it, from its target (which sends to
    /// it) and from the legs forwarding into it.
    fn reevaluate(&mut self, now: Instant, changed: Slot) {
        let mut slots: BTreeSet<Slot> = self.feeders.get(&changed).cloned().unwrap_or_default();
        if self.legs.contains_key(&changed) {
            slots.insert(changed);
        }
        if let Some(target) = self
            .legs
            .get(&changed)
            .and_then(|s| s.input.params.forward_to)
            .filter(|t| self.legs.contains_key(t))
        {
            slots.insert(target);
        }
        for slot in slots {
            for kind in KINDS {
                let direction = Direction { from: slot, kind };
                match self.desired(direction) {
                    Ok((key, entry)) => self.put_in(now, direction, key, entry),
                    Err(reason) => self.take_out(now, direction, reason),
                }
            }
        }
    }

    fn put_in(&mut self, now: Instant, direction: Direction, key: ForwardKey, entry: ForwardEntry) {
        let current = self.installed.get(&direction).copied();
        if current == Some(Installed { key, entry }) {
            return;
        }
        // A new key (the leg's local address changed) is a new entry: the
        // old one goes first.
        if let Some(old) = current.filter(|old| old.key != key) {
            self.commands.push_back(OffloadCommand::Remove {
                direction,
                key: old.key,
                stats_slot: old.entry.stats_slot,
            });
        }
        let fresh = current.is_none_or(|old| old.key != key);
        self.installed.insert(direction, Installed { key, entry });
        self.commands.push_back(OffloadCommand::Install {
            direction,
            key,
            entry,
            fresh,
        });
        if current.is_none() && direction.kind == StreamKind::Rtp {
            self.event(now, direction.from, true, Reason::Passthrough);
        }
    }

    fn take_out(&mut self, now: Instant, direction: Direction, reason: Reason) {
        let Some(old) = self.installed.remove(&direction) else {
            return;
        };
        self.commands.push_back(OffloadCommand::Remove {
            direction,
            key: old.key,
            stats_slot: old.entry.stats_slot,
        });
        if direction.kind == StreamKind::Rtp {
            self.event(now, direction.from, false, reason);
        }
    }

    fn event(&mut self, now: Instant, from: Slot, offloaded: bool, reason: Reason) {
        let Some(leg) = self.legs.get(&from).map(|s| s.input.leg.clone()) else {
            return;
        };
        self.events.push_back(OffloadChanged {
            from: leg,
            to: self.target_of(from),
            offloaded,
            reason,
            at: now,
        });
    }

    /// The entry a direction should have, or why it stays in userspace.
    fn desired(&mut self, direction: Direction) -> Result<(ForwardKey, ForwardEntry), Reason> {
        let Direction { from, kind } = direction;
        if !self.enabled {
            return Err(Reason::FastPathOff);
        }
        let a = self.legs.get(&from).ok_or(Reason::Deleted)?;
        if !a.input.kernel {
            return Err(Reason::InterfaceOff);
        }
        let b = a
            .input
            .params
            .forward_to
            .and_then(|to| self.legs.get(&to))
            .ok_or(Reason::NotBridged)?;
        if a.input.params.transcode.is_some() {
            return Err(Reason::Transcoding);
        }
        if a.input.params.telephone_event != b.input.params.telephone_event {
            return Err(Reason::TelephoneEventMapping);
        }
        if b.input.params.inbound_paused {
            return Err(Reason::Injecting);
        }
        // RTCP passes unchanged in the relay too.
        let rewrite = match (kind, b.input.rewrite) {
            (StreamKind::Rtcp, _) | (StreamKind::Rtp, Rewrite::Unchanged) => None,
            (StreamKind::Rtp, Rewrite::Unanchored) => return Err(Reason::Rewriting),
            (
                StreamKind::Rtp,
                Rewrite::Anchored {
                    source,
                    ssrc,
                    sequence_offset,
                    timestamp_offset,
                },
            ) => Some(RtpRewrite {
                source_ssrc: source.0,
                ssrc: ssrc.0,
                sequence_offset,
                timestamp_offset,
            }),
        };
        // A muxed leg's RTCP arrives on its RTP port, where the RTP entry
        // passes it up (the programs tell RTCP by its packet type, RFC
        // 5761) and the relay forwards it; there is no RTCP direction to
        // install. Towards a muxed leg, RTCP leaves from its RTP port.
        if kind == StreamKind::Rtcp && a.input.params.rtcp_mux {
            return Err(Reason::RtcpMux);
        }
        let expected = a.latched(kind).ok_or(Reason::NotLatched)?;
        if !a.locked(kind) {
            return Err(Reason::Learning);
        }
        let destination = b.destination(kind).ok_or(Reason::NoDestination)?;
        let (key, source) = (a.local(kind), b.local(kind));
        let v4 = key.is_ipv4();
        if [source, destination, expected]
            .iter()
            .any(|x| x.is_ipv4() != v4)
        {
            return Err(Reason::FamilyMismatch);
        }
        let mut flags = match kind {
            StreamKind::Rtp => FLAG_RTP,
            StreamKind::Rtcp => FLAG_RTCP,
        };
        if a.input.params.strict_source {
            flags |= FLAG_STRICT_SOURCE;
        }
        let clock_rate = match kind {
            StreamKind::Rtp => a.input.params.clock_rate,
            StreamKind::Rtcp => 0,
        };
        let pass_payload_type = match kind {
            StreamKind::Rtp => a.input.params.telephone_event,
            StreamKind::Rtcp => None,
        };
        let stats_slot = self.stats_slot_of(direction).ok_or(Reason::NoStatsSlot)?;
        let mut entry =
            ForwardEntry::new(source, destination, expected, flags, clock_rate, stats_slot);
        if let Some(r) = rewrite {
            entry = entry.with_rewrite(r);
        }
        // The relay's DTMF detector must see telephone-events; the kernel
        // passes them up and forwards the rest.
        if let Some(pt) = pass_payload_type {
            entry = entry.with_pass_payload_type(pt.get());
        }
        Ok((ForwardKey::new(key), entry))
    }

    /// The stats slot of a direction, allocated on first use.
    fn stats_slot_of(&mut self, direction: Direction) -> Option<u32> {
        let state = self.legs.get_mut(&direction.from)?;
        if let Some(slot) = state.stats_slots.get(&direction.kind) {
            return Some(*slot);
        }
        let slot = match self.free_slots.pop() {
            Some(slot) => slot,
            None if self.next_slot < STREAM_SLOTS => {
                self.next_slot += 1;
                self.next_slot - 1
            }
            None => return None,
        };
        state.stats_slots.insert(direction.kind, slot);
        Some(slot)
    }
}

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
