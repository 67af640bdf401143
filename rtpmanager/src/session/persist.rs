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
//! On disk it is a snapshot of every call, written atomically (temporary
//! file, fsync, rename, fsync of the directory), and a journal of the
//! calls changed since, appended and synced per save ([`StateFile`]), so a
//! crash leaves a whole state: the snapshot and the journal's complete
//! records.

use std::borrow::Cow;
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
            .map(|(id, call)| saved_call(id, call))
            .collect();
        calls.sort_by(|a, b| a.call_id.cmp(&b.call_id));
        SavedState {
            version: VERSION,
            calls,
        }
    }

    /// One call as state to save; `None` when the table has no such call
    /// (it was deleted).
    pub fn saved_call(&self, call_id: &str) -> Option<SavedCall> {
        let id = CallId(call_id.to_owned());
        self.calls.get(&id).map(|call| saved_call(&id, call))
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

fn saved_call(id: &CallId, call: &Call) -> SavedCall {
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
}

/// The calls changed since the last save: a save appends them to the
/// journal.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SavedChanges {
    /// Calls as they are now (new or changed), whole.
    pub calls: Vec<SavedCall>,
    /// Calls deleted.
    pub removed: Vec<String>,
}

/// What one save writes.
#[derive(Clone, Debug, PartialEq)]
pub enum Save {
    /// Every call: a new snapshot, and the journal starts over.
    Everything(SavedState),
    /// The calls changed since the last save, appended to the journal.
    Changes(SavedChanges),
}

/// The snapshot file's layout: written with the calls borrowed, read with
/// them owned (or skipped, for the generation alone).
#[derive(Serialize, Deserialize)]
struct Snapshot<C> {
    version: u32,
    /// The journal that continues this snapshot has the same generation;
    /// another journal is older than the snapshot. Files of the first
    /// layout have none.
    #[serde(default)]
    generation: u64,
    calls: C,
}

/// One line of the journal: written with its call borrowed, read owned.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Record<'a> {
    /// The first line: the snapshot this journal continues.
    Journal {
        generation: u64,
    },
    Put(Cow<'a, SavedCall>),
    Removed(Cow<'a, str>),
}

/// The state files under a state directory: a snapshot of every call
/// (`sessions.json`) and a journal of the calls changed since
/// (`sessions.journal`, one JSON record a line).
///
/// A save appends the changed calls to the journal and syncs it, so its
/// cost follows the calls that changed, not the calls held (a manager
/// holding a hundred thousand calls would otherwise rewrite them all for
/// every call set up). Once the journal outgrows the snapshot it is
/// compacted: a new snapshot of a new generation is written atomically,
/// then the journal starts over with that generation. A crash between the
/// two leaves a journal of the older generation, which is ignored: the new
/// snapshot already has its changes. A crash inside an append leaves a
/// torn last line, which is ignored: that save was never complete.
#[derive(Clone, Debug)]
pub struct StateFile {
    path: PathBuf,
    journal: PathBuf,
}

impl StateFile {
    /// `sessions.json` and `sessions.journal` under `dir`, which is
    /// created if needed.
    pub fn in_dir(dir: &Path) -> Result<StateFile, StateError> {
        std::fs::create_dir_all(dir).map_err(|source| StateError::Io {
            path: dir.to_owned(),
            source,
        })?;
        Ok(StateFile {
            path: dir.join("sessions.json"),
            journal: dir.join("sessions.journal"),
        })
    }

    /// The snapshot's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The journal's path.
    pub fn journal_path(&self) -> &Path {
        &self.journal
    }

    /// The saved state: the snapshot with its journal replayed; `None`
    /// when there is no snapshot.
    pub fn read(&self) -> Result<Option<SavedState>, StateError> {
        let Some(text) = read_optional(&self.path)? else {
            return Ok(None);
        };
        let snapshot: Snapshot<Vec<SavedCall>> =
            serde_json::from_slice(&text).map_err(|source| StateError::Json {
                path: self.path.clone(),
                source,
            })?;
        if snapshot.version != VERSION {
            return Err(StateError::Version {
                path: self.path.clone(),
                found: snapshot.version,
            });
        }
        let mut calls: std::collections::BTreeMap<String, SavedCall> = snapshot
            .calls
            .into_iter()
            .map(|c| (c.call_id.clone(), c))
            .collect();
        if let Some(journal) = read_optional(&self.journal)? {
            self.replay(&journal, snapshot.generation, &mut calls);
        }
        Ok(Some(SavedState {
            version: VERSION,
            calls: calls.into_values().collect(),
        }))
    }

    /// Applies the journal's records to `calls` when it continues the
    /// snapshot of `generation`; stops at the first line that is not a
    /// whole record (the torn end of a save a crash interrupted).
    fn replay(
        &self,
        journal: &[u8],
        generation: u64,
        calls: &mut std::collections::BTreeMap<String, SavedCall>,
    ) {
        let mut lines = journal.split(|b| *b == b'\n');
        match lines.next().map(serde_json::from_slice::<Record>) {
            Some(Ok(Record::Journal { generation: g })) if g == generation => {}
            // Older than the snapshot (a compaction's crash), or started
            // over and cut before its first line was written.
            _ => return,
        }
        for (n, line) in lines.enumerate() {
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<Record>(line) {
                Ok(Record::Put(call)) => {
                    let call = call.into_owned();
                    calls.insert(call.call_id.clone(), call);
                }
                Ok(Record::Removed(id)) => {
                    calls.remove(id.as_ref());
                }
                Ok(Record::Journal { .. }) | Err(_) => {
                    tracing::warn!(path = %self.journal.display(), line = n + 2, "session journal ends in an incomplete record; the records before it are re-adopted");
                    return;
                }
            }
        }
    }

    /// The generation of the snapshot on disk (0 when there is none or it
    /// cannot be read).
    fn generation_on_disk(&self) -> u64 {
        read_optional(&self.path)
            .ok()
            .flatten()
            .and_then(|text| serde_json::from_slice::<Snapshot<serde::de::IgnoredAny>>(&text).ok())
            .map_or(0, |s| s.generation)
    }

    /// Removes the files (a clean exit that removed its calls).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.journal);
        let _ = std::fs::remove_file(&self.path);
    }
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StateError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// A journal holding more than this many times the snapshot's bytes
/// (plus [`COMPACT_SLACK`]) is compacted: replaying it at a restart stays
/// within a few snapshots' work.
const COMPACT_FACTOR: u64 = 4;

/// What a journal may hold beyond [`COMPACT_FACTOR`] snapshots, so a
/// manager with few calls does not compact on every few saves.
const COMPACT_SLACK: u64 = 1 << 20;

/// The writer's side of the [`StateFile`]: the open journal and what it
/// holds.
#[derive(Debug)]
pub struct StateLog {
    file: StateFile,
    /// `None` before the first save and after a failed one: the next save
    /// writes everything.
    journal: Option<std::fs::File>,
    generation: Option<u64>,
    journal_bytes: u64,
    snapshot_bytes: u64,
}

impl StateLog {
    pub fn new(file: StateFile) -> StateLog {
        StateLog {
            file,
            journal: None,
            generation: None,
            journal_bytes: 0,
            snapshot_bytes: 0,
        }
    }

    pub fn file(&self) -> &StateFile {
        &self.file
    }

    /// Whether the next save must be [`Save::Everything`]: the first one
    /// (what is on disk is the previous run's), the one after a failure
    /// (the journal may have lost changes), or a journal grown past its
    /// bound.
    pub fn wants_everything(&self) -> bool {
        self.journal.is_none()
            || self.journal_bytes > COMPACT_FACTOR * self.snapshot_bytes + COMPACT_SLACK
    }

    /// Writes `save` durably. After a failure the next save must be
    /// everything ([`StateLog::wants_everything`]).
    pub fn save(&mut self, save: &Save) -> Result<(), StateError> {
        let result = match save {
            Save::Everything(state) => self.compact(state),
            Save::Changes(changes) => self.append(changes),
        };
        if result.is_err() {
            self.journal = None;
        }
        result
    }

    /// A new snapshot of the next generation, then an empty journal of it.
    fn compact(&mut self, state: &SavedState) -> Result<(), StateError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StateError::Io { path, source }
        };
        let generation = self
            .generation
            .unwrap_or_else(|| self.file.generation_on_disk())
            .wrapping_add(1);
        let json = serde_json::to_vec(&Snapshot {
            version: VERSION,
            generation,
            calls: &state.calls,
        })
        .map_err(|source| StateError::Json {
            path: self.file.path.clone(),
            source,
        })?;
        let path = &self.file.path;
        let temp = path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&temp).map_err(io(&temp))?;
        file.write_all(&json).map_err(io(&temp))?;
        file.sync_all().map_err(io(&temp))?;
        drop(file);
        std::fs::rename(&temp, path).map_err(io(path))?;
        // The rename is durable once the directory is; only then may the
        // journal the old snapshot needs go.
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        self.generation = Some(generation);
        let journal = &self.file.journal;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(journal)
            .map_err(io(journal))?;
        let mut header = record_line(&Record::Journal { generation });
        header.push(b'\n');
        file.write_all(&header).map_err(io(journal))?;
        file.sync_data().map_err(io(journal))?;
        self.journal = Some(file);
        self.journal_bytes = header.len() as u64;
        self.snapshot_bytes = json.len() as u64;
        Ok(())
    }

    /// The changed calls, one record a line, in one write and one sync.
    fn append(&mut self, changes: &SavedChanges) -> Result<(), StateError> {
        let path = &self.file.journal;
        let Some(file) = self.journal.as_mut() else {
            return Err(StateError::Io {
                path: path.clone(),
                source: std::io::Error::other("the journal is not open: save everything first"),
            });
        };
        let mut lines = Vec::new();
        for call in &changes.calls {
            lines.extend(record_line(&Record::Put(Cow::Borrowed(call))));
            lines.push(b'\n');
        }
        for id in &changes.removed {
            lines.extend(record_line(&Record::Removed(Cow::Borrowed(id))));
            lines.push(b'\n');
        }
        if lines.is_empty() {
            return Ok(());
        }
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        file.write_all(&lines).map_err(io)?;
        file.sync_data().map_err(io)?;
        self.journal_bytes += lines.len() as u64;
        Ok(())
    }
}

fn record_line(record: &Record<'_>) -> Vec<u8> {
    // Plain data: serializing it cannot fail.
    serde_json::to_vec(record).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str, port: u16) -> SavedCall {
        SavedCall {
            call_id: id.to_owned(),
            legs: vec![SavedLeg {
                leg_id: "a".to_owned(),
                slot: u32::from(port),
                rtp_port: port,
                strict_source: false,
                media_timeout_ms: None,
                allow_transcoding: false,
                label: String::new(),
                received_offer: None,
                sent_offer: None,
                negotiation: None,
                peer: None,
                bridged_to: None,
                latched_rtp: None,
                latched_rtcp: None,
                rewrite: None,
            }],
        }
    }

    fn state(calls: Vec<SavedCall>) -> SavedState {
        SavedState {
            version: VERSION,
            calls,
        }
    }

    fn changes(calls: Vec<SavedCall>, removed: &[&str]) -> Save {
        Save::Changes(SavedChanges {
            calls,
            removed: removed.iter().map(|s| (*s).to_owned()).collect(),
        })
    }

    fn ids(state: &SavedState) -> Vec<(&str, u16)> {
        state
            .calls
            .iter()
            .map(|c| (c.call_id.as_str(), c.legs[0].rtp_port))
            .collect()
    }

    #[test]
    fn the_journal_replayed_over_the_snapshot_gives_the_latest_calls() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = StateFile::in_dir(dir.path()).expect("state dir");
        let mut log = StateLog::new(file.clone());
        assert!(log.wants_everything(), "the first save is a snapshot");
        log.save(&Save::Everything(state(vec![
            call("c1", 30000),
            call("c2", 30002),
        ])))
        .expect("snapshot");
        assert!(!log.wants_everything(), "then changes are appended");
        log.save(&changes(vec![call("c3", 30004)], &["c1"]))
            .expect("append");
        log.save(&changes(vec![call("c2", 30006)], &[]))
            .expect("append");
        let read = file.read().expect("readable").expect("saved");
        assert_eq!(ids(&read), vec![("c2", 30006), ("c3", 30004)]);
        let snapshot = std::fs::read_to_string(file.path()).expect("snapshot");
        assert!(
            snapshot.contains("\"c1\"") && !snapshot.contains("\"c3\""),
            "the snapshot is untouched by the appends: {snapshot}"
        );
    }

    #[test]
    fn a_torn_last_record_is_ignored_and_the_ones_before_it_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = StateFile::in_dir(dir.path()).expect("state dir");
        let mut log = StateLog::new(file.clone());
        log.save(&Save::Everything(state(vec![call("c1", 30000)])))
            .expect("snapshot");
        log.save(&changes(vec![call("c2", 30002)], &[]))
            .expect("append");
        drop(log);
        // A crash in the middle of the next save's write.
        let mut journal = std::fs::OpenOptions::new()
            .append(true)
            .open(file.journal_path())
            .expect("journal");
        journal
            .write_all(br#"{"removed":"c1"}"#)
            .expect("a whole record");
        journal
            .write_all(b"\n{\"put\":{\"call_id\":\"c3\",\"le")
            .expect("half a record");
        let read = file.read().expect("readable").expect("saved");
        assert_eq!(
            ids(&read),
            vec![("c2", 30002)],
            "the removal before the torn line is applied, the torn put is not"
        );
    }

    #[test]
    fn a_journal_older_than_the_snapshot_is_not_replayed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = StateFile::in_dir(dir.path()).expect("state dir");
        let mut log = StateLog::new(file.clone());
        log.save(&Save::Everything(state(vec![call("c1", 30000)])))
            .expect("snapshot");
        log.save(&changes(vec![], &["c1"])).expect("append");
        let old_journal = std::fs::read(file.journal_path()).expect("journal");
        // A compaction that crashed after its snapshot, before the journal
        // started over: the old journal's removal of c1 is in the past of
        // a snapshot that has c1 again.
        log.save(&changes(vec![call("c1", 30008)], &[]))
            .expect("append");
        log.save(&Save::Everything(state(vec![call("c1", 30008)])))
            .expect("compaction");
        std::fs::write(file.journal_path(), old_journal).expect("put the old journal back");
        let read = file.read().expect("readable").expect("saved");
        assert_eq!(ids(&read), vec![("c1", 30008)]);
    }

    #[test]
    fn a_new_run_starts_a_generation_past_the_previous_runs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = StateFile::in_dir(dir.path()).expect("state dir");
        let mut first = StateLog::new(file.clone());
        first
            .save(&Save::Everything(state(vec![call("c1", 30000)])))
            .expect("snapshot");
        first.save(&changes(vec![], &["c1"])).expect("append");
        drop(first);
        // The next run's first snapshot is not continued by the previous
        // run's journal, even when it crashes before its journal is reset.
        let previous_journal = std::fs::read(file.journal_path()).expect("journal");
        let mut second = StateLog::new(file.clone());
        second
            .save(&Save::Everything(state(vec![call("c1", 30010)])))
            .expect("snapshot");
        std::fs::write(file.journal_path(), previous_journal).expect("the old journal back");
        let read = file.read().expect("readable").expect("saved");
        assert_eq!(ids(&read), vec![("c1", 30010)]);
    }

    #[test]
    fn the_journal_is_compacted_once_it_outgrows_the_snapshot() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = StateFile::in_dir(dir.path()).expect("state dir");
        let mut log = StateLog::new(file.clone());
        log.save(&Save::Everything(state(vec![])))
            .expect("snapshot");
        let size = |path: &Path| std::fs::metadata(path).expect("file").len();
        let (snapshot, header) = (size(file.path()), size(file.journal_path()));
        let mut appends = 0;
        while !log.wants_everything() {
            log.save(&changes(vec![call("c1", 30000)], &[]))
                .expect("append");
            appends += 1;
            assert!(appends < 100_000, "the journal never asked for compaction");
        }
        let record = record_line(&Record::Put(Cow::Owned(call("c1", 30000)))).len() as u64 + 1;
        assert_eq!(
            appends,
            (COMPACT_FACTOR * snapshot + COMPACT_SLACK - header) / record + 1,
            "the journal holds four snapshots and the slack, then compacts"
        );
        log.save(&Save::Everything(state(vec![call("c1", 30000)])))
            .expect("compaction");
        assert!(!log.wants_everything());
        let journal = std::fs::metadata(file.journal_path())
            .expect("journal")
            .len();
        assert!(journal < 64, "the journal started over: {journal} bytes");
        let read = file.read().expect("readable").expect("saved");
        assert_eq!(ids(&read), vec![("c1", 30000)]);
    }

    #[test]
    fn a_failed_save_makes_the_next_one_a_snapshot() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = StateFile::in_dir(dir.path()).expect("state dir");
        let mut log = StateLog::new(file.clone());
        log.save(&Save::Everything(state(vec![call("c1", 30000)])))
            .expect("snapshot");
        // The snapshot's temporary file cannot be made (as root too).
        let temp = file.path().with_extension("json.tmp");
        std::fs::create_dir(&temp).expect("a directory in the way");
        log.save(&Save::Everything(state(vec![call("c2", 30002)])))
            .expect_err("the snapshot cannot be written");
        std::fs::remove_dir(&temp).expect("out of the way");
        assert!(log.wants_everything(), "after a failure, a whole snapshot");
        log.save(&Save::Everything(state(vec![call("c2", 30002)])))
            .expect("snapshot");
        let read = file.read().expect("readable").expect("saved");
        assert_eq!(ids(&read), vec![("c2", 30002)]);
    }

    #[test]
    fn a_snapshot_of_the_first_layout_is_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = StateFile::in_dir(dir.path()).expect("state dir");
        let old = serde_json::to_vec_pretty(&state(vec![call("c1", 30000)])).expect("json");
        std::fs::write(file.path(), old).expect("write");
        let read = file.read().expect("readable").expect("saved");
        assert_eq!(ids(&read), vec![("c1", 30000)]);
        assert_eq!(file.generation_on_disk(), 0);
    }
}
