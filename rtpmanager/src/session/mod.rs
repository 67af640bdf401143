//! The session table: calls, legs, offer/answer state and bridges.
//!
//! It is driven by the [`engine`](crate::engine) with an explicit `now`,
//! and answers with the rewritten SDP plus [`RelayCommand`]s that the
//! driver applies to the [`Relay`](crate::relay::Relay). It never touches the
//! relay, a clock or a socket itself: its port pools choose port numbers and
//! the driver's [`Binder`](crate::ports::Binder) binds them; the driver takes
//! the sockets when it applies `RelayCommand::Add`. The wall clock (for `o=`
//! session ids) is an input too ([`SessionTable::set_wall_clock`]), and the
//! route to a peer (which picks a leg's media interface) is asked of a
//! lookup the owner may replace ([`SessionTable::set_route_lookup`]).
//!
//! Per leg it keeps what the leg's peer offered or answered, the manager's
//! `o=` state towards that peer, and the settled [`Negotiation`]; from those
//! it derives the relay's [`LegParams`] (where to send, what to expect,
//! whether to transcode). Every change that alters a leg's params emits an
//! `Update` for it, so the relay (and later the kernel fast path) is a
//! function of this table.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::media::g711::Law;
use crate::ports::{PortError, PortPool, RtpPort};
use crate::relay::{LegParams, LegRef, LegShared, Slot, Transcode};
use crate::sdp::{
    self, CodecPolicy, LocalEndpoint, Negotiation, OriginState, SdpError, SessionDescription,
};

/// The signaling server's name for a call.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub String);

/// A leg's name within its call (e.g. "a", "b").
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LegId(pub String);

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for LegId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Per-leg options from the control request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LegOptions {
    pub strict_source: bool,
    /// `None` uses the manager's default.
    pub media_timeout: Option<Duration>,
    pub allow_transcoding: bool,
    pub label: String,
    /// The address family of the leg's peer, which picks the address the
    /// relay advertises to it; `None` follows the SDP received (an offer
    /// relayed to this leg keeps the offerer's family).
    pub family: Option<Family>,
    /// The media interface the leg is created on, by name; `None` lets
    /// the table choose (route to the peer, else the first interface).
    pub interface: Option<String>,
}

/// Why a control request failed; each maps to one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A required field is empty or malformed (INVALID_ARGUMENT).
    #[error("{0}")]
    InvalidArgument(String),
    /// The SDP is malformed or cannot be answered (INVALID_ARGUMENT).
    #[error("SDP: {0}")]
    Sdp(#[from] SdpError),
    /// No such call or leg (NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// The request does not fit the leg's offer/answer state (FAILED_PRECONDITION).
    #[error("{0}")]
    FailedPrecondition(String),
    /// No free port pair (RESOURCE_EXHAUSTED).
    #[error("{0}")]
    Exhausted(String),
    /// The manager is draining and refuses new calls (UNAVAILABLE).
    #[error("draining: new calls are refused")]
    Draining,
}

impl From<PortError> for SessionError {
    fn from(e: PortError) -> Self {
        match e {
            PortError::Exhausted(_) => SessionError::Exhausted(e.to_string()),
            other => SessionError::FailedPrecondition(other.to_string()),
        }
    }
}

/// What the driver must do to the relay.
#[derive(Debug)]
pub enum RelayCommand {
    /// A new leg; its sockets are the ones bound for `local` (the RTP
    /// port on the interface's bind address).
    Add {
        slot: Slot,
        shared: Arc<LegShared>,
        local: SocketAddr,
        params: LegParams,
    },
    /// New params for an existing leg.
    Update { slot: Slot, params: LegParams },
    /// A leg is gone; the driver removes it and may read its final figures.
    Remove { slot: Slot, shared: Arc<LegShared> },
}

/// An Offer request: the SDP the peer of `leg` sent, to be relayed to the
/// peer of `peer` (or answered by the manager when `peer` is empty).
#[derive(Debug)]
pub struct OfferInput<'a> {
    pub call: &'a str,
    pub leg: &'a str,
    pub peer: &'a str,
    pub sdp: &'a str,
    pub options: LegOptions,
    pub peer_options: LegOptions,
}

/// The answer to Offer and Answer.
#[derive(Debug)]
pub struct SdpResult {
    pub sdp: String,
    /// The leg whose local endpoint the SDP advertises.
    pub leg: LegView,
    pub commands: Vec<RelayCommand>,
}

/// A read-only view of a leg for Info, List and Stats.
#[derive(Clone, Debug)]
pub struct LegView {
    pub call_id: String,
    pub leg_id: String,
    pub slot: Slot,
    pub local_address: IpAddr,
    pub rtp_port: u16,
    pub rtcp_port: u16,
    pub rtcp_mux: bool,
    pub remote: Option<std::net::SocketAddr>,
    pub codec: Option<String>,
    pub bridged_to: Option<String>,
    pub label: String,
    /// The media interface the leg is on, and its network device.
    pub interface: String,
    pub device: String,
    pub shared: Arc<LegShared>,
}

struct Leg {
    id: LegId,
    slot: Slot,
    /// Index of the leg's media interface in the table's.
    interface: usize,
    port: RtpPort,
    options: LegOptions,
    origin: OriginState,
    /// The last offer this leg's peer sent us.
    received_offer: Option<SessionDescription>,
    /// The last offer we sent this leg's peer.
    sent_offer: Option<SessionDescription>,
    negotiation: Option<Negotiation>,
    /// Where this leg's peer receives, from the last settled exchange.
    peer: Option<sdp::PeerMedia>,
    bridged_to: Option<LegId>,
    inbound_paused: bool,
    shared: Arc<LegShared>,
    last_control: Instant,
    /// Bumped whenever `peer` is settled (answer, re-INVITE): the relay
    /// learns the peer's source again.
    learning_epoch: u32,
    /// When the last offer/answer exchange of this leg settled; `None`
    /// until the leg is answered (ringing legs are the idle reaper's).
    settled_at: Option<Instant>,
    /// The last exchange put the stream on hold (sendonly, recvonly or
    /// inactive on either side): the leg gets the hold timeout.
    on_hold: bool,
}

/// A call reaped for lack of media: each leg with how long it was silent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimedOut {
    pub call_id: String,
    pub legs: Vec<(String, Duration)>,
}

impl Leg {
    /// An offer/answer exchange settled the leg's media: learning starts
    /// again, and the hold state follows the exchange's directions.
    fn settle(&mut self, now: Instant, offer: &SessionDescription, answer: &SessionDescription) {
        self.learning_epoch = self.learning_epoch.wrapping_add(1);
        self.settled_at = Some(now);
        self.on_hold = self.negotiation.as_ref().is_some_and(|n| {
            [offer, answer]
                .iter()
                .any(|d| d.media_direction(n.media_index) != sdp::Direction::SendRecv)
        });
    }

    /// How long this leg may go without media: the hold timeout on hold,
    /// else its own media timeout or the manager's.
    fn media_limit(&self, config: &TableConfig) -> Duration {
        if self.on_hold {
            config.hold_timeout
        } else {
            self.options.media_timeout.unwrap_or(config.media_timeout)
        }
    }
}

struct Call {
    created: Instant,
    legs: HashMap<LegId, Leg>,
}

/// Manager-wide settings of the table.
#[derive(Clone, Debug)]
pub struct TableConfig {
    /// Address advertised to IPv4 peers.
    pub advertise_v4: IpAddr,
    /// Address advertised to IPv6 peers, when the manager has one.
    pub advertise_v6: Option<IpAddr>,
    /// A settled call whose legs all received no media for this long is
    /// reaped (rtpengine's `timeout`).
    pub media_timeout: Duration,
    /// The same for a leg on hold (sendonly, recvonly or inactive), whose
    /// peer may rightly send nothing (rtpengine's `silent-timeout`).
    pub hold_timeout: Duration,
    /// How long a strict leg learns its peer's source before locking it.
    pub source_learning: Duration,
    /// The most legs one call may hold (each holds a port pair).
    pub max_legs_per_call: usize,
}

/// One media interface of the table: the addresses legs on it advertise
/// and the port pool their sockets come from.
#[derive(Debug)]
pub struct TableInterface {
    pub name: String,
    /// The network device the interface's traffic uses (where the fast
    /// path attaches); a route to a peer through it picks the interface.
    pub device: String,
    /// Advertised to IPv4 peers (to IPv6 ones without `advertise_v6`).
    pub advertise_v4: Option<IpAddr>,
    /// Advertised to IPv6 peers (to IPv4 ones without `advertise_v4`).
    pub advertise_v6: Option<IpAddr>,
    pub pool: PortPool,
}

impl TableInterface {
    /// The address advertised to a peer of `family`.
    fn advertise_for(&self, family: Family) -> IpAddr {
        let (own, other) = match family {
            Family::V6 => (self.advertise_v6, self.advertise_v4),
            Family::V4 => (self.advertise_v4, self.advertise_v6),
        };
        own.or(other)
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
    }

    /// Whether `addr` is one of the interface's own (advertised or bound).
    fn owns(&self, addr: IpAddr) -> bool {
        self.advertise_v4 == Some(addr)
            || self.advertise_v6 == Some(addr)
            || self.pool.bind_address() == addr
    }
}

/// All calls of this manager.
pub struct SessionTable {
    config: TableConfig,
    /// The media interfaces; the first is the default.
    interfaces: Vec<TableInterface>,
    calls: HashMap<CallId, Call>,
    next_slot: Slot,
    draining: bool,
    /// Seconds since the Unix epoch at the current input, for `o=`
    /// session ids.
    wall_secs: u64,
    /// Finds the route to a peer (which picks a new leg's interface when
    /// there are several): the kernel's routing table by default, a
    /// capability the driver hands in like the pools' binder.
    route_lookup: RouteLookup,
}

/// How the table asks for the route to a peer.
pub type RouteLookup = Box<dyn Fn(IpAddr) -> Option<crate::interfaces::Route> + Send>;

impl fmt::Debug for SessionTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionTable")
            .field("calls", &self.calls.len())
            .finish_non_exhaustive()
    }
}

fn require(field: &str, value: &str) -> Result<(), SessionError> {
    if value.trim().is_empty() {
        return Err(SessionError::InvalidArgument(format!("{field} is empty")));
    }
    Ok(())
}

impl SessionTable {
    /// A table with one media interface, `default`, of the config's
    /// addresses and `pool`.
    pub fn new(config: TableConfig, pool: PortPool) -> SessionTable {
        let default = TableInterface {
            name: "default".to_owned(),
            device: String::new(),
            advertise_v4: Some(config.advertise_v4),
            advertise_v6: config.advertise_v6,
            pool,
        };
        SessionTable::with_interfaces(config, vec![default])
    }

    /// A table over several media interfaces (at least one; the first is
    /// the default); the config's addresses are not used.
    pub fn with_interfaces(config: TableConfig, interfaces: Vec<TableInterface>) -> SessionTable {
        assert!(!interfaces.is_empty(), "a table needs a media interface");
        SessionTable {
            config,
            interfaces,
            calls: HashMap::new(),
            next_slot: 0,
            draining: false,
            wall_secs: 0,
            route_lookup: Box::new(crate::interfaces::route_to),
        }
    }

    /// Replaces how routes to peers are found (tests without a routing
    /// table of their own).
    pub fn set_route_lookup(&mut self, lookup: RouteLookup) {
        self.route_lookup = lookup;
    }

    /// The wall clock at the input about to be handled, in milliseconds
    /// since the Unix epoch: new legs' `o=` session ids start from it.
    pub fn set_wall_clock(&mut self, unix_ms: u64) {
        self.wall_secs = unix_ms / 1000;
    }

    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// Whether new calls are refused.
    pub fn draining(&self) -> bool {
        self.draining
    }

    pub fn calls(&self) -> usize {
        self.calls.len()
    }

    pub fn legs(&self) -> usize {
        self.calls.values().map(|c| c.legs.len()).sum()
    }

    pub fn ports_total(&self) -> usize {
        self.interfaces.iter().map(|i| i.pool.total_pairs()).sum()
    }

    pub fn ports_free(&self) -> usize {
        self.interfaces.iter().map(|i| i.pool.free_pairs()).sum()
    }

    /// The media interfaces, the default first.
    pub fn interfaces(&self) -> &[TableInterface] {
        &self.interfaces
    }

    /// The interface a new leg goes on: the one `name` names, else the one
    /// whose device the route to `peer` leaves by (or whose address is the
    /// route's source), else the first.
    fn choose_interface(
        &self,
        name: Option<&str>,
        peer: Option<IpAddr>,
    ) -> Result<usize, SessionError> {
        if let Some(name) = name.filter(|n| !n.is_empty()) {
            return self
                .interfaces
                .iter()
                .position(|i| i.name == name)
                .ok_or_else(|| {
                    SessionError::InvalidArgument(format!(
                        "unknown media interface {name:?} (this manager has {})",
                        self.interfaces
                            .iter()
                            .map(|i| i.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                });
        }
        if self.interfaces.len() == 1 {
            return Ok(0);
        }
        let Some(route) = peer.and_then(|p| (self.route_lookup)(p)) else {
            return Ok(0);
        };
        Ok(self
            .interfaces
            .iter()
            .position(|i| i.device == route.device)
            .or_else(|| self.interfaces.iter().position(|i| i.owns(route.source)))
            .unwrap_or(0))
    }

    /// Records the offer the peer of `leg` sent and returns the offer for the
    /// peer of `peer` (or, with `peer` empty, the manager's own answer).
    /// How many legs an Offer for `leg` (and `peer`, when not empty) of
    /// `call` would create.
    pub fn legs_added_by(&self, call: &str, leg: &str, peer: &str) -> usize {
        let call = self.calls.get(&CallId(call.to_owned()));
        let exists = |id: &str| call.is_some_and(|c| c.legs.contains_key(&LegId(id.to_owned())));
        usize::from(!exists(leg)) + usize::from(!peer.is_empty() && !exists(peer))
    }

    pub fn offer(
        &mut self,
        now: Instant,
        input: OfferInput<'_>,
    ) -> Result<SdpResult, SessionError> {
        let OfferInput {
            call,
            leg,
            peer,
            sdp: sdp_text,
            options,
            peer_options,
        } = input;
        require("call_id", call)?;
        require("leg_id", leg)?;
        if leg == peer {
            return Err(SessionError::InvalidArgument(
                "leg_id and peer_leg_id are the same leg".into(),
            ));
        }
        let offer = sdp::parse(sdp_text)?;
        let call_id = CallId(call.to_owned());
        if !self.calls.contains_key(&call_id) && self.draining {
            return Err(SessionError::Draining);
        }
        let mut commands = Vec::new();
        let offerer_family = offer_family(&offer);
        let exists = |id: &str| {
            self.calls
                .get(&call_id)
                .is_some_and(|c| c.legs.contains_key(&LegId(id.to_owned())))
        };
        let leg_is_new = !exists(leg);
        let new_legs = self.legs_added_by(call, leg, peer);
        let held = self.calls.get(&call_id).map_or(0, |c| c.legs.len());
        if new_legs > 0 && held + new_legs > self.config.max_legs_per_call {
            return Err(SessionError::Exhausted(format!(
                "call {call} holds {held} legs and this offer adds {new_legs}: at most {} legs per call (--max-legs-per-call)",
                self.config.max_legs_per_call
            )));
        }
        let offerer = offer_address(&offer);
        self.ensure_leg(now, &call_id, leg, options, offerer, &mut commands)?;
        if !peer.is_empty() {
            if let Err(e) = self.ensure_leg(now, &call_id, peer, peer_options, None, &mut commands)
            {
                // No half-made call: the leg this offer created goes too,
                // its sockets closed (with the unsent commands) first.
                drop(commands);
                if leg_is_new {
                    self.discard_leg(&call_id, leg);
                }
                return Err(e);
            }
        }
        let call_state = self
            .calls
            .get_mut(&call_id)
            .ok_or_else(|| SessionError::NotFound(format!("call {call}")))?;
        let leg_id = LegId(leg.to_owned());

        let (sdp_out, view_leg) = if peer.is_empty() {
            let a = call_state
                .legs
                .get_mut(&leg_id)
                .ok_or_else(|| SessionError::NotFound(format!("leg {leg}")))?;
            let advertise = self.interfaces[a.interface].advertise_for(offerer_family);
            let endpoint = endpoint(advertise, a.port);
            let answer = sdp::answer_locally(&offer, &endpoint, &mut a.origin)?;
            a.negotiation = sdp::negotiate(&offer, &answer)?;
            a.peer = a.negotiation.as_ref().map(|n| n.offerer);
            a.settle(now, &offer, &answer);
            a.received_offer = Some(offer);
            a.last_control = now;
            (answer.to_string(), leg_id.clone())
        } else {
            let peer_id = LegId(peer.to_owned());
            let transcoding = call_state
                .legs
                .get(&peer_id)
                .is_some_and(|p| p.options.allow_transcoding);
            let b = call_state
                .legs
                .get_mut(&peer_id)
                .ok_or_else(|| SessionError::NotFound(format!("leg {peer}")))?;
            let policy = if transcoding {
                CodecPolicy::g711_with_telephone_event()
            } else {
                CodecPolicy::Passthrough
            };
            let advertise_peer = self.interfaces[b.interface]
                .advertise_for(b.options.family.unwrap_or(offerer_family));
            let endpoint = endpoint(advertise_peer, b.port);
            let rewritten = sdp::rewrite_offer(&offer, &endpoint, &policy, &mut b.origin)?;
            b.sent_offer = Some(rewritten.clone());
            b.last_control = now;
            let a = call_state
                .legs
                .get_mut(&leg_id)
                .ok_or_else(|| SessionError::NotFound(format!("leg {leg}")))?;
            a.received_offer = Some(offer);
            a.last_control = now;
            (rewritten.to_string(), peer_id)
        };
        self.refresh_params(&call_id, &mut commands);
        let view = self.view(&call_id, &view_leg)?;
        Ok(SdpResult {
            sdp: sdp_out,
            leg: view,
            commands,
        })
    }

    /// Records the answer the peer of `leg` sent to our offer and returns the
    /// answer for the peer of `peer` (the original offerer).
    pub fn answer(
        &mut self,
        now: Instant,
        call: &str,
        leg: &str,
        peer: &str,
        sdp_text: &str,
    ) -> Result<SdpResult, SessionError> {
        require("call_id", call)?;
        require("leg_id", leg)?;
        require("peer_leg_id", peer)?;
        let answer = sdp::parse(sdp_text)?;
        let call_id = CallId(call.to_owned());
        let call_state = self
            .calls
            .get_mut(&call_id)
            .ok_or_else(|| SessionError::NotFound(format!("call {call}")))?;
        let (leg_id, peer_id) = (LegId(leg.to_owned()), LegId(peer.to_owned()));

        let b = call_state
            .legs
            .get_mut(&leg_id)
            .ok_or_else(|| SessionError::NotFound(format!("leg {leg}")))?;
        let sent_offer = b.sent_offer.clone().ok_or_else(|| {
            SessionError::FailedPrecondition(format!("leg {leg} has no offer to answer"))
        })?;
        b.negotiation = sdp::negotiate(&sent_offer, &answer)?;
        b.peer = b.negotiation.as_ref().map(|n| n.answerer);
        b.last_control = now;
        b.settle(now, &sent_offer, &answer);

        let a = call_state
            .legs
            .get_mut(&peer_id)
            .ok_or_else(|| SessionError::NotFound(format!("leg {peer}")))?;
        let received_offer = a
            .received_offer
            .clone()
            .ok_or_else(|| SessionError::FailedPrecondition(format!("leg {peer} made no offer")))?;
        let address = self.interfaces[a.interface].advertise_for(offer_family(&received_offer));
        let rewritten = sdp::rewrite_answer(
            &received_offer,
            &answer,
            &endpoint(address, a.port),
            &mut a.origin,
        )?;
        a.negotiation = sdp::negotiate(&received_offer, &rewritten)?;
        a.peer = a.negotiation.as_ref().map(|n| n.offerer);
        a.last_control = now;
        a.settle(now, &received_offer, &rewritten);

        let mut commands = Vec::new();
        self.refresh_params(&call_id, &mut commands);
        let view = self.view(&call_id, &peer_id)?;
        Ok(SdpResult {
            sdp: rewritten.to_string(),
            leg: view,
            commands,
        })
    }

    /// Starts forwarding between two legs of a call.
    pub fn bridge(
        &mut self,
        now: Instant,
        call: &str,
        a: &str,
        b: &str,
    ) -> Result<Vec<RelayCommand>, SessionError> {
        self.set_bridge(now, call, a, b, true)
    }

    /// Stops forwarding between two legs.
    pub fn unbridge(
        &mut self,
        now: Instant,
        call: &str,
        a: &str,
        b: &str,
    ) -> Result<Vec<RelayCommand>, SessionError> {
        self.set_bridge(now, call, a, b, false)
    }

    fn set_bridge(
        &mut self,
        now: Instant,
        call: &str,
        a: &str,
        b: &str,
        on: bool,
    ) -> Result<Vec<RelayCommand>, SessionError> {
        require("call_id", call)?;
        if a == b {
            return Err(SessionError::InvalidArgument(
                "a leg cannot be bridged with itself".into(),
            ));
        }
        let call_id = CallId(call.to_owned());
        let state = self
            .calls
            .get_mut(&call_id)
            .ok_or_else(|| SessionError::NotFound(format!("call {call}")))?;
        for id in [a, b] {
            if !state.legs.contains_key(&LegId(id.to_owned())) {
                return Err(SessionError::NotFound(format!("leg {id} of call {call}")));
            }
        }
        for (this, other) in [(a, b), (b, a)] {
            if let Some(leg) = state.legs.get_mut(&LegId(this.to_owned())) {
                leg.bridged_to = on.then(|| LegId(other.to_owned()));
                leg.last_control = now;
            }
        }
        let mut commands = Vec::new();
        self.refresh_params(&call_id, &mut commands);
        Ok(commands)
    }

    /// Pauses (or resumes) media from the bridged leg into `leg`, while the
    /// manager plays to it.
    pub fn set_inbound_paused(
        &mut self,
        call: &str,
        leg: &str,
        paused: bool,
    ) -> Result<Vec<RelayCommand>, SessionError> {
        let call_id = CallId(call.to_owned());
        let state = self
            .calls
            .get_mut(&call_id)
            .ok_or_else(|| SessionError::NotFound(format!("call {call}")))?;
        let l = state
            .legs
            .get_mut(&LegId(leg.to_owned()))
            .ok_or_else(|| SessionError::NotFound(format!("leg {leg} of call {call}")))?;
        l.inbound_paused = paused;
        let mut commands = Vec::new();
        self.refresh_params(&call_id, &mut commands);
        Ok(commands)
    }

    /// Deletes one leg, or the whole call when `leg` is empty.
    pub fn delete(&mut self, call: &str, leg: &str) -> Result<Vec<RelayCommand>, SessionError> {
        require("call_id", call)?;
        let call_id = CallId(call.to_owned());
        let state = self
            .calls
            .get_mut(&call_id)
            .ok_or_else(|| SessionError::NotFound(format!("call {call}")))?;
        let removed: Vec<Leg> = if leg.is_empty() {
            state.legs.drain().map(|(_, l)| l).collect()
        } else {
            let l = state
                .legs
                .remove(&LegId(leg.to_owned()))
                .ok_or_else(|| SessionError::NotFound(format!("leg {leg} of call {call}")))?;
            for other in state.legs.values_mut() {
                if other.bridged_to.as_ref() == Some(&l.id) {
                    other.bridged_to = None;
                }
            }
            vec![l]
        };
        if state.legs.is_empty() {
            self.calls.remove(&call_id);
        }
        let mut commands = Vec::new();
        for l in removed {
            if let Err(e) = self.interfaces[l.interface].pool.release(l.port) {
                tracing::warn!(call, leg = %l.id, error = %e, "port release failed");
            }
            commands.push(RelayCommand::Remove {
                slot: l.slot,
                shared: l.shared,
            });
        }
        if self.calls.contains_key(&call_id) {
            self.refresh_params(&call_id, &mut commands);
        }
        Ok(commands)
    }

    /// Answered calls whose every answered leg received no media (from its
    /// accepted source; the relay counts nothing else) for its limit, as
    /// rtpengine's `timeout`/`silent-timeout`: a leg is silent since its
    /// last packet or since its last exchange settled, whichever is later.
    /// Calls never answered are left to [`Self::idle_legs`].
    pub fn media_timeouts(&self, now: Instant, now_ms: u64) -> Vec<TimedOut> {
        let mut out = Vec::new();
        for (call_id, call) in &self.calls {
            let mut legs = Vec::new();
            let mut alive = false;
            for leg in call.legs.values() {
                let Some(settled) = leg.settled_at else {
                    continue;
                };
                let mut silent = now.saturating_duration_since(settled);
                let last_packet = leg
                    .shared
                    .counters
                    .last_packet_ms
                    .load(std::sync::atomic::Ordering::Relaxed);
                if last_packet > 0 {
                    silent = silent.min(Duration::from_millis(now_ms.saturating_sub(last_packet)));
                }
                if silent < leg.media_limit(&self.config) {
                    alive = true;
                    break;
                }
                legs.push((leg.id.0.clone(), silent));
            }
            if !alive && !legs.is_empty() {
                legs.sort();
                out.push(TimedOut {
                    call_id: call_id.0.clone(),
                    legs,
                });
            }
        }
        out.sort_by(|a, b| a.call_id.cmp(&b.call_id));
        out
    }

    /// Legs whose last control request and last packet are both older than
    /// `idle`: a signaling server that vanished without deleting them.
    pub fn idle_legs(&self, now: Instant, now_ms: u64, idle: Duration) -> Vec<(String, String)> {
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let mut out = Vec::new();
        for (call_id, call) in &self.calls {
            for leg in call.legs.values() {
                let last_packet = leg
                    .shared
                    .counters
                    .last_packet_ms
                    .load(std::sync::atomic::Ordering::Relaxed);
                let media_idle = last_packet == 0 || now_ms.saturating_sub(last_packet) >= idle_ms;
                if media_idle && now.saturating_duration_since(leg.last_control) >= idle {
                    out.push((call_id.0.clone(), leg.id.0.clone()));
                }
            }
        }
        out
    }

    /// Views of the legs of one call (or of one leg).
    pub fn leg_views(&self, call: &str, leg: &str) -> Result<Vec<LegView>, SessionError> {
        let call_id = CallId(call.to_owned());
        let state = self
            .calls
            .get(&call_id)
            .ok_or_else(|| SessionError::NotFound(format!("call {call}")))?;
        let mut ids: Vec<&LegId> = state
            .legs
            .keys()
            .filter(|id| leg.is_empty() || id.0 == leg)
            .collect();
        if ids.is_empty() {
            return Err(SessionError::NotFound(format!("leg {leg} of call {call}")));
        }
        ids.sort();
        ids.into_iter().map(|id| self.view(&call_id, id)).collect()
    }

    /// Every call with its age and legs.
    pub fn list(&self, now: Instant) -> Vec<(String, Duration, Vec<LegView>)> {
        let mut calls: Vec<_> = self
            .calls
            .iter()
            .map(|(id, call)| {
                let legs = self.leg_views(&id.0, "").unwrap_or_default();
                (
                    id.0.clone(),
                    now.saturating_duration_since(call.created),
                    legs,
                )
            })
            .collect();
        calls.sort_by(|a, b| a.0.cmp(&b.0));
        calls
    }

    /// The codec and telephone-event payload type a leg negotiated, for
    /// playback and DTMF.
    pub fn leg_media(
        &self,
        call: &str,
        leg: &str,
    ) -> Result<(Arc<LegShared>, Option<Negotiation>), SessionError> {
        let state = self
            .calls
            .get(&CallId(call.to_owned()))
            .ok_or_else(|| SessionError::NotFound(format!("call {call}")))?;
        let l = state
            .legs
            .get(&LegId(leg.to_owned()))
            .ok_or_else(|| SessionError::NotFound(format!("leg {leg} of call {call}")))?;
        Ok((Arc::clone(&l.shared), l.negotiation.clone()))
    }

    /// Forgets a leg the relay never got, releasing its port pair.
    fn discard_leg(&mut self, call_id: &CallId, leg: &str) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        if let Some(l) = call.legs.remove(&LegId(leg.to_owned())) {
            if let Err(e) = self.interfaces[l.interface].pool.release(l.port) {
                tracing::warn!(call = %call_id, leg, error = %e, "port release failed");
            }
        }
        if call.legs.is_empty() {
            self.calls.remove(call_id);
        }
    }

    fn ensure_leg(
        &mut self,
        now: Instant,
        call_id: &CallId,
        leg: &str,
        options: LegOptions,
        peer: Option<IpAddr>,
        commands: &mut Vec<RelayCommand>,
    ) -> Result<(), SessionError> {
        let leg_id = LegId(leg.to_owned());
        if let Some(existing) = self
            .calls
            .get_mut(call_id)
            .and_then(|c| c.legs.get_mut(&leg_id))
        {
            existing.options = merge_options(&existing.options, options);
            return Ok(());
        }
        let interface = self.choose_interface(options.interface.as_deref(), peer)?;
        let pool = &mut self.interfaces[interface].pool;
        let port = pool.allocate(false)?;
        let local = SocketAddr::new(pool.bind_address(), port.get());
        let slot = self.next_slot;
        self.next_slot = self.next_slot.wrapping_add(1);
        let shared = Arc::new(LegShared::unbound(LegRef {
            call_id: Arc::from(call_id.0.as_str()),
            leg_id: Arc::from(leg),
        }));
        let session_id = session_id(self.wall_secs, slot);
        let state = self.calls.entry(call_id.clone()).or_insert_with(|| Call {
            created: now,
            legs: HashMap::new(),
        });
        state.legs.insert(
            leg_id.clone(),
            Leg {
                id: leg_id,
                slot,
                interface,
                port,
                options,
                origin: OriginState::new(session_id),
                received_offer: None,
                sent_offer: None,
                negotiation: None,
                peer: None,
                bridged_to: None,
                inbound_paused: false,
                shared: Arc::clone(&shared),
                last_control: now,
                learning_epoch: 0,
                settled_at: None,
                on_hold: false,
            },
        );
        commands.push(RelayCommand::Add {
            slot,
            shared,
            local,
            params: LegParams::default(),
        });
        Ok(())
    }

    /// Recomputes the relay params of every leg of a call and emits updates.
    fn refresh_params(&self, call_id: &CallId, commands: &mut Vec<RelayCommand>) {
        let Some(call) = self.calls.get(call_id) else {
            return;
        };
        for leg in call.legs.values() {
            let params = self.params_for(call, leg);
            commands.push(RelayCommand::Update {
                slot: leg.slot,
                params,
            });
        }
    }

    fn params_for(&self, call: &Call, leg: &Leg) -> LegParams {
        let peer = leg.peer;
        let bridged = leg.bridged_to.as_ref().and_then(|id| call.legs.get(id));
        let own_law = leg.negotiation.as_ref().and_then(|n| law_of(&n.codec));
        let other_law = bridged
            .and_then(|b| b.negotiation.as_ref())
            .and_then(|n| law_of(&n.codec));
        let transcode = match (
            own_law,
            other_law,
            bridged.and_then(|b| b.negotiation.as_ref()),
        ) {
            (Some((from, _)), Some((to, pt)), Some(_)) if from != to => Some(Transcode {
                from,
                to,
                payload_type: pt,
            }),
            _ => None,
        };
        LegParams {
            expected_rtp: peer.map(|p| p.rtp),
            expected_rtcp: peer.map(|p| p.rtcp),
            rtcp_mux: leg.negotiation.as_ref().is_some_and(|n| n.rtcp_mux),
            strict_source: leg.options.strict_source,
            source_learning: self.config.source_learning,
            learning_epoch: leg.learning_epoch,
            forward_to: bridged.map(|b| b.slot),
            transcode,
            inbound_paused: leg.inbound_paused,
            media_timeout: Some(leg.media_limit(&self.config)),
            clock_rate: leg
                .negotiation
                .as_ref()
                .map_or(8000, |n| n.codec.clock_rate),
            telephone_event: leg.negotiation.as_ref().and_then(|n| n.telephone_event),
        }
    }

    fn view(&self, call_id: &CallId, leg_id: &LegId) -> Result<LegView, SessionError> {
        let call = self
            .calls
            .get(call_id)
            .ok_or_else(|| SessionError::NotFound(format!("call {call_id}")))?;
        let leg = call
            .legs
            .get(leg_id)
            .ok_or_else(|| SessionError::NotFound(format!("leg {leg_id}")))?;
        let family = leg.received_offer.as_ref().map_or(Family::V4, offer_family);
        let interface = &self.interfaces[leg.interface];
        Ok(LegView {
            call_id: call_id.0.clone(),
            leg_id: leg_id.0.clone(),
            slot: leg.slot,
            local_address: interface.advertise_for(family),
            rtp_port: leg.port.get(),
            rtcp_port: leg.port.rtcp(),
            rtcp_mux: leg.negotiation.as_ref().is_some_and(|n| n.rtcp_mux),
            remote: leg.peer.map(|p| p.rtp),
            codec: leg
                .negotiation
                .as_ref()
                .map(|n| format!("{}/{}", n.codec.encoding, n.codec.clock_rate)),
            bridged_to: leg.bridged_to.as_ref().map(|b| b.0.clone()),
            label: leg.options.label.clone(),
            interface: interface.name.clone(),
            device: interface.device.clone(),
            shared: Arc::clone(&leg.shared),
        })
    }
}

fn law_of(codec: &sdp::Codec) -> Option<(Law, sdp::PayloadType)> {
    if codec.is("PCMU", 8000) {
        Some((Law::Ulaw, codec.payload_type))
    } else if codec.is("PCMA", 8000) {
        Some((Law::Alaw, codec.payload_type))
    } else {
        None
    }
}

fn merge_options(old: &LegOptions, new: LegOptions) -> LegOptions {
    if new == LegOptions::default() {
        old.clone()
    } else {
        new
    }
}

/// An address family, of an SDP or of a leg's peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// The address family the offerer uses: IPv6 when its `c=` lines (session
/// and media level) are all IPv6.
fn offer_family(offer: &SessionDescription) -> Family {
    let addresses = || {
        offer
            .connection
            .iter()
            .chain(offer.media.iter().filter_map(|m| m.connection.as_ref()))
            .map(|c| c.address)
    };
    let ip6 = addresses().any(|a| a.is_ipv6());
    let ip4 = addresses().any(|a| a.is_ipv4());
    if ip6 && !ip4 {
        Family::V6
    } else {
        Family::V4
    }
}

/// The offerer's media address: its first `c=` line.
fn offer_address(offer: &SessionDescription) -> Option<IpAddr> {
    offer
        .media
        .iter()
        .filter_map(|m| m.connection.as_ref())
        .chain(offer.connection.iter())
        .map(|c| c.address)
        .find(|a| !a.is_unspecified())
}

fn endpoint(address: IpAddr, port: RtpPort) -> LocalEndpoint {
    LocalEndpoint {
        address,
        rtp_port: port.into(),
        rtcp_port: sdp::MediaPort::new(port.rtcp()),
        rtcp_mux: true,
    }
}

/// An `o=` session id unique enough per leg: wall-clock seconds (RFC 8866
/// suggests an NTP timestamp) plus the slot.
fn session_id(wall_secs: u64, slot: Slot) -> u64 {
    wall_secs.wrapping_mul(1000).wrapping_add(u64::from(slot))
}

pub mod persist;

#[cfg(test)]
mod tests;
