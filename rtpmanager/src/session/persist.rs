//! The session state a restarted manager needs to re-adopt its calls: the
//! calls and legs with their ports, options, SDP state, settled
//! negotiation, bridges, the relay's latched peers and the anchored stream
//! continuity rewrites.
//!
//! Not kept: the `o=` version sent to each peer (a restored leg starts a
//! fresh session id), the kernel's per-stream figures of earlier episodes,
//! and a rewrite that was not anchored yet (its direction was in userspace).
//!
//! The kernel's forwarding entries outlive the manager when the fast path
//! is pinned; with this state the next manager binds the same ports again,
//! rebuilds its table, and derives the same entries (the offload decision
//! is a function of the table and the latches), so the entries of these
//! calls stay and only the others are removed.
//!
//! The file is JSON, written atomically (temporary file, fsync, rename,
//! fsync of the directory) so a crash leaves the old or the new state,
//! never half of one.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Call, CallId, Leg, LegId, LegOptions, RelayCommand, SessionTable};
use crate::media::rtp::Ssrc;
use crate::relay::continuity::Rewrite;
use crate::relay::{LegParams, LegRef, LegShared, Slot};
use crate::sdp::{self, Codec, Direction, Negotiation, OriginState, PayloadType, PeerMedia};

/// Version of the file's layout; another version is not read.
const VERSION: u32 = 1;

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading, writing or renaming the file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid state JSON.
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// The file has another layout version.
    #[error("{path}: layout version {found}, this manager reads {VERSION}")]
    Version { path: PathBuf, found: u32 },
}

/// Every call of the manager.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedState {
    pub version: u32,
    pub calls: Vec<SavedCall>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedCall {
    pub call_id: String,
    pub legs: Vec<SavedLeg>,
}

/// One leg; `latched_*` are filled by the driver (the relay's latches).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedLeg {
    pub leg_id: String,
    pub slot: Slot,
    pub rtp_port: u16,
    pub strict_source: bool,
    pub media_timeout_ms: Option<u64>,
    pub allow_transcoding: bool,
    pub label: String,
    pub received_offer: Option<String>,
    pub sent_offer: Option<String>,
    pub negotiation: Option<SavedNegotiation>,
    pub peer: Option<SavedPeer>,
    pub bridged_to: Option<String>,
    pub latched_rtp: Option<SocketAddr>,
    pub latched_rtcp: Option<SocketAddr>,
    /// The anchored continuity rewrite of the stream towards this leg's
    /// peer (after an injection), which its kernel entries apply.
    #[serde(default)]
    pub rewrite: Option<SavedRewrite>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedRewrite {
    pub source_ssrc: u32,
    pub ssrc: u32,
    pub sequence_offset: u16,
    pub timestamp_offset: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedNegotiation {
    pub media_index: usize,
    pub payload_type: u8,
    pub encoding: String,
    pub clock_rate: u32,
    pub channels: Option<u8>,
    pub telephone_event: Option<u8>,
    pub ptime: Option<u32>,
    pub rtcp_mux: bool,
    pub offerer: SavedPeer,
    pub answerer: SavedPeer,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedPeer {
    pub rtp: SocketAddr,
    pub rtcp: SocketAddr,
    /// `sendrecv`, `sendonly`, `recvonly` or `inactive`.
    pub direction: String,
    pub on_hold: bool,
}

fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::SendRecv => "sendrecv",
        Direction::SendOnly => "sendonly",
        Direction::RecvOnly => "recvonly",
        Direction::Inactive => "inactive",
    }
}

fn direction_of(name: &str) -> Direction {
    match name {
        "sendonly" => Direction::SendOnly,
        "recvonly" => Direction::RecvOnly,
        "inactive" => Direction::Inactive,
        _ => Direction::SendRecv,
    }
}

impl From<&PeerMedia> for SavedPeer {
    fn from(p: &PeerMedia) -> SavedPeer {
        SavedPeer {
            rtp: p.rtp,
            rtcp: p.rtcp,
            direction: direction_name(p.direction).to_owned(),
            on_hold: p.on_hold,
        }
    }
}

impl From<&SavedPeer> for PeerMedia {
    fn from(p: &SavedPeer) -> PeerMedia {
        PeerMedia {
            rtp: p.rtp,
            rtcp: p.rtcp,
            direction: direction_of(&p.direction),
            on_hold: p.on_hold,
        }
    }
}

impl From<&Negotiation> for SavedNegotiation {
    fn from(n: &Negotiation) -> SavedNegotiation {
        SavedNegotiation {
            media_index: n.media_index,
            payload_type: n.codec.payload_type.get(),
            encoding: n.codec.encoding.clone(),
            clock_rate: n.codec.clock_rate,
            channels: n.codec.channels,
            telephone_event: n.telephone_event.map(PayloadType::get),
            ptime: n.ptime,
            rtcp_mux: n.rtcp_mux,
            offerer: (&n.offerer).into(),
            answerer: (&n.answerer).into(),
        }
    }
}

impl SavedNegotiation {
    fn restore(&self) -> Option<Negotiation> {
        Some(Negotiation {
            media_index: self.media_index,
            codec: Codec {
                payload_type: PayloadType::new(self.payload_type)?,
                encoding: self.encoding.clone(),
                clock_rate: self.clock_rate,
                channels: self.channels,
            },
            telephone_event: match self.telephone_event {
                Some(pt) => Some(PayloadType::new(pt)?),
                None => None,
            },
            ptime: self.ptime,
            rtcp_mux: self.rtcp_mux,
            offerer: (&self.offerer).into(),
            answerer: (&self.answerer).into(),
        })
    }
}

/// A leg the table could not take back, and why.
#[derive(Debug)]
pub struct NotRestored {
    pub call_id: String,
    pub leg_id: String,
    pub reason: String,
}

impl SessionTable {
    /// The table as state to save (latches left empty for the driver).
    pub fn saved(&self) -> SavedState {
        let mut calls: Vec<SavedCall> = self
            .calls
            .iter()
            .map(|(id, call)| {
                let mut legs: Vec<SavedLeg> = call
                    .legs
                    .values()
                    .map(|l| SavedLeg {
                        leg_id: l.id.0.clone(),
                        slot: l.slot,
                        rtp_port: l.port.get(),
                        strict_source: l.options.strict_source,
                        media_timeout_ms: l
                            .options
                            .media_timeout
                            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                        allow_transcoding: l.options.allow_transcoding,
                        label: l.options.label.clone(),
                        received_offer: l.received_offer.as_ref().map(ToString::to_string),
                        sent_offer: l.sent_offer.as_ref().map(ToString::to_string),
                        negotiation: l.negotiation.as_ref().map(Into::into),
                        peer: l.peer.as_ref().map(Into::into),
                        bridged_to: l.bridged_to.as_ref().map(|b| b.0.clone()),
                        latched_rtp: None,
                        latched_rtcp: None,
                        rewrite: match l.shared.outbound().rewrite() {
                            Rewrite::Anchored {
                                source,
                                ssrc,
                                sequence_offset,
                                timestamp_offset,
                            } => Some(SavedRewrite {
                                source_ssrc: source.0,
                                ssrc: ssrc.0,
                                sequence_offset,
                                timestamp_offset,
                            }),
                            Rewrite::Unchanged | Rewrite::Unanchored => None,
                        },
                    })
                    .collect();
                legs.sort_by(|a, b| a.leg_id.cmp(&b.leg_id));
                SavedCall {
                    call_id: id.0.clone(),
                    legs,
                }
            })
            .collect();
        calls.sort_by(|a, b| a.call_id.cmp(&b.call_id));
        SavedState {
            version: VERSION,
            calls,
        }
    }

    /// Takes the saved calls back at `now`: binds each leg's ports again and
    /// rebuilds it with its slot (so relay and kernel agree on it). Returns
    /// the relay commands and the legs that could not be restored (their
    /// port is gone); a call keeps the legs that could.
    pub fn restore(
        &mut self,
        now: Instant,
        saved: &SavedState,
    ) -> (Vec<RelayCommand>, Vec<NotRestored>) {
        let mut commands = Vec::new();
        let mut failed = Vec::new();
        for call in &saved.calls {
            let call_id = CallId(call.call_id.clone());
            for l in &call.legs {
                // Port ranges do not overlap: the port names the interface.
                let interface = self
                    .interfaces
                    .iter()
                    .position(|i| i.pool.contains(l.rtp_port))
                    .unwrap_or(0);
                let pool = &mut self.interfaces[interface].pool;
                let bind = pool.bind_address();
                let port = match pool.allocate_port(l.rtp_port) {
                    Ok(port) => port,
                    Err(e) => {
                        failed.push(NotRestored {
                            call_id: call.call_id.clone(),
                            leg_id: l.leg_id.clone(),
                            reason: e.to_string(),
                        });
                        continue;
                    }
                };
                self.next_slot = self.next_slot.max(l.slot.wrapping_add(1));
                let shared = Arc::new(LegShared::unbound(LegRef {
                    call_id: Arc::from(call.call_id.as_str()),
                    leg_id: Arc::from(l.leg_id.as_str()),
                }));
                if let Some(r) = &l.rewrite {
                    shared.outbound().resume(Rewrite::Anchored {
                        source: Ssrc(r.source_ssrc),
                        ssrc: Ssrc(r.ssrc),
                        sequence_offset: r.sequence_offset,
                        timestamp_offset: r.timestamp_offset,
                    });
                }
                let parse =
                    |text: &Option<String>| text.as_deref().and_then(|t| sdp::parse(t).ok());
                let leg = Leg {
                    id: LegId(l.leg_id.clone()),
                    slot: l.slot,
                    interface,
                    port,
                    options: LegOptions {
                        strict_source: l.strict_source,
                        media_timeout: l.media_timeout_ms.map(Duration::from_millis),
                        allow_transcoding: l.allow_transcoding,
                        label: l.label.clone(),
                        // Only read when an offer is relayed to the leg;
                        // later offers carry it again.
                        family: None,
                        // Read only when a leg is created.
                        interface: None,
                    },
                    // The previous run's o= version is not kept: a fresh
                    // session id keeps later bodies distinct from older ones.
                    origin: OriginState::new(super::session_id(self.wall_secs, l.slot)),
                    received_offer: parse(&l.received_offer),
                    sent_offer: parse(&l.sent_offer),
                    negotiation: l.negotiation.as_ref().and_then(SavedNegotiation::restore),
                    peer: l.peer.as_ref().map(Into::into),
                    bridged_to: l.bridged_to.clone().map(LegId),
                    inbound_paused: false,
                    shared: Arc::clone(&shared),
                    last_control: now,
                    // Settled once in this run (the relay learns afresh).
                    learning_epoch: u32::from(l.negotiation.is_some()),
                    // A re-adopted call counts its silence from now: the
                    // previous run's media times are not kept.
                    settled_at: l.negotiation.as_ref().map(|_| now),
                    on_hold: false,
                };
                commands.push(RelayCommand::Add {
                    slot: l.slot,
                    shared,
                    local: std::net::SocketAddr::new(bind, port.get()),
                    params: LegParams::default(),
                });
                self.calls
                    .entry(call_id.clone())
                    .or_insert_with(|| Call {
                        created: now,
                        legs: HashMap::new(),
                    })
                    .legs
                    .insert(leg.id.clone(), leg);
            }
            if self.calls.contains_key(&call_id) {
                self.refresh_params(&call_id, &mut commands);
            }
        }
        (commands, failed)
    }
}

/// The state file under a state directory.
#[derive(Clone, Debug)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// `sessions.json` under `dir`, which is created if needed.
    pub fn in_dir(dir: &Path) -> Result<StateFile, StateError> {
        std::fs::create_dir_all(dir).map_err(|source| StateError::Io {
            path: dir.to_owned(),
            source,
        })?;
        Ok(StateFile {
            path: dir.join("sessions.json"),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state; `None` when there is no file.
    pub fn read(&self) -> Result<Option<SavedState>, StateError> {
        let text = match std::fs::read(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let state: SavedState =
            serde_json::from_slice(&text).map_err(|source| StateError::Json {
                path: self.path.clone(),
                source,
            })?;
        if state.version != VERSION {
            return Err(StateError::Version {
                path: self.path.clone(),
                found: state.version,
            });
        }
        Ok(Some(state))
    }

    /// Replaces the file with `state` atomically.
    pub fn write(&self, state: &SavedState) -> Result<(), StateError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StateError::Io { path, source }
        };
        let json = serde_json::to_vec_pretty(state).map_err(|source| StateError::Json {
            path: self.path.clone(),
            source,
        })?;
        let temp = self.path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&temp).map_err(io(&temp))?;
        file.write_all(&json).map_err(io(&temp))?;
        file.sync_all().map_err(io(&temp))?;
        drop(file);
        std::fs::rename(&temp, &self.path).map_err(io(&self.path))?;
        // The rename is durable once the directory is.
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        Ok(())
    }

    /// Removes the file (a clean exit that removed its calls).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
