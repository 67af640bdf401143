//! The userspace relay: the reference media path.
//!
//! Worker threads (one per core by default) each own the sockets of their
//! calls' legs, wait on them with epoll and read each ready socket with
//! `recvmmsg`, forwarding a whole batch with one `sendmmsg` from the bridged
//! leg's socket; a call's legs share a worker (see `Placement`). Control (the session table, via
//! gRPC handlers) talks to it through [`Relay`]: legs are added, updated and
//! removed with commands, a leg's figures are read from shared atomics and
//! snapshots, and events (latching, media timeout) come out of a broadcast
//! channel.
//!
//! Forwarding rules, the ones the kernel fast path caches:
//! - *latching* (symmetric RTP): the source media is accepted from is where
//!   media for that leg's peer is sent (NAT). A `strict_source` leg learns
//!   it during a short window after each remote description and then locks
//!   it; packets from other sources are dropped and counted, and are not
//!   media (they keep no leg alive). Without `strict_source` every new
//!   source re-latches the leg (roaming). See [`latch`];
//! - a packet received on a bridged leg goes out of the other leg's socket
//!   (so the peer sees the manager's port of its own leg) to that leg's
//!   latched address, or the address its SDP gave until it latches;
//! - nothing is sent into a leg whose inbound media is paused (playback);
//! - with `transcode` set, G.711 payloads change law on the way through;
//! - RFC 4733 telephone-event packets received on a leg that negotiated
//!   telephone-event feed that leg's DTMF detector ([`RelayEvent::Dtmf`]) and
//!   are forwarded with the other leg's telephone-event payload type, or
//!   dropped when the other leg did not negotiate telephone-event;
//! - the stream into each leg stays one RTP stream across injections
//!   (playback, DTMF sending): see [`continuity`] for the sequence-number and
//!   timestamp rewrite that follows the first injection.
//!
//! Overload: sockets are level-triggered and each is read at most
//! [`MAX_BATCHES_PER_WAKE`] batches per turn, so every socket keeps being
//! served; what cannot be read in time overflows the socket's receive queue in
//! the kernel, which sheds load in proportion to each stream's excess and
//! recovers by itself: a stream within its share loses nothing while
//! another floods, and when every stream floods they lose alike (on the
//! bench, 100 streams offered 500 kpps to two workers lost 24 % each,
//! spread 23.7 to 24.2 %). The drops are counted per leg (`SO_RXQ_OVFL`)
//! and per worker ([`WorkerLoad`]); a worker that no longer waits for
//! packets is saturated, and takes no new calls.

mod batch;
pub mod continuity;
pub mod latch;
mod worker;

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::epoll::{Epoll, EpollCreateFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::sync::{broadcast, oneshot};

use crate::media::dtmf::Digit;
use crate::media::g711::Law;
use crate::media::rtp::PayloadType;

pub use batch::{BATCH, MAX_DATAGRAM};
pub use continuity::OutboundStream;

/// Batches read from one socket before the worker serves the next one.
pub const MAX_BATCHES_PER_WAKE: usize = 4;

/// The relay's handle for a leg, chosen by the caller and unique while the
/// leg lives.
pub type Slot = u32;

/// Names a leg in events and logs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LegRef {
    pub call_id: Arc<str>,
    pub leg_id: Arc<str>,
}

/// G.711 law conversion applied to packets received on a leg before they are
/// forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transcode {
    pub from: Law,
    pub to: Law,
    /// The payload type the receiving side negotiated for `to`.
    pub payload_type: PayloadType,
}

/// How the relay treats one leg; replaced as a whole on every update.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LegParams {
    /// Where the peer said (in SDP) it receives RTP, used until it latches.
    pub expected_rtp: Option<SocketAddr>,
    /// Where the peer said it receives RTCP.
    pub expected_rtcp: Option<SocketAddr>,
    /// The leg negotiated rtcp-mux: RTCP to its peer leaves from the RTP
    /// socket (RFC 5761 §5.1.1), even if an RTCP socket was bound before
    /// the answer said so.
    pub rtcp_mux: bool,
    /// Learn the peer's source, lock it, then drop packets from other
    /// sources; without it every new source re-latches the leg.
    pub strict_source: bool,
    /// How long a strict leg learns its peer's source before locking it,
    /// counted from the first packet after a new remote description.
    pub source_learning: Duration,
    /// Changes whenever the leg's remote description is settled (answer,
    /// re-INVITE): a change restarts endpoint learning.
    pub learning_epoch: u32,
    /// The leg media received here is forwarded to.
    pub forward_to: Option<Slot>,
    /// Law conversion for media received here.
    pub transcode: Option<Transcode>,
    /// Media from the bridged leg is not sent to this leg's peer (a playback
    /// owns the leg's outbound stream).
    pub inbound_paused: bool,
    /// Report a media timeout after this long without RTP, once the leg is
    /// latched and bridged.
    pub media_timeout: Option<Duration>,
    /// RTP clock rate of the negotiated codec, for jitter.
    pub clock_rate: u32,
    /// The RFC 4733 telephone-event payload type this leg negotiated: its
    /// packets are fed to the DTMF detector, and DTMF forwarded into the leg
    /// is sent with it (or dropped when `None`).
    pub telephone_event: Option<PayloadType>,
}

/// Counters shared between the worker (writer) and control (reader).
#[derive(Debug, Default)]
pub struct LegCounters {
    pub rtp_in_packets: AtomicU64,
    pub rtp_in_bytes: AtomicU64,
    pub rtcp_in_packets: AtomicU64,
    pub rtcp_in_bytes: AtomicU64,
    pub rtp_out_packets: AtomicU64,
    pub rtp_out_bytes: AtomicU64,
    pub rtcp_out_packets: AtomicU64,
    pub rtcp_out_bytes: AtomicU64,
    /// Packets dropped because they came from a source the leg does not
    /// accept (after the lock, or worse than the candidate while learning).
    pub source_mismatch_drops: AtomicU64,
    /// Packets lost to overload: not sent on because the bridged leg's send
    /// queue was full, or dropped by the kernel on this leg's full receive
    /// queue (`SO_RXQ_OVFL`).
    pub overload_drops: AtomicU64,
    /// Milliseconds since the Unix epoch of the last packet received; 0 if none.
    pub last_packet_ms: AtomicU64,
}

impl LegCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// The userspace relay's packet and byte counts summed over legs (what the
/// kernel forwarded is not in them: the kernel counts its own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayTotals {
    pub rtp_in_packets: u64,
    pub rtp_in_bytes: u64,
    pub rtp_out_packets: u64,
    pub rtp_out_bytes: u64,
    pub rtcp_in_packets: u64,
    pub rtcp_in_bytes: u64,
    pub rtcp_out_packets: u64,
    pub rtcp_out_bytes: u64,
    /// Packets dropped for their source (see [`LegCounters::source_mismatch_drops`]).
    pub source_rejected_packets: u64,
    /// Packets lost to overload (see [`LegCounters::overload_drops`]).
    pub overload_dropped_packets: u64,
}

impl RelayTotals {
    /// Adds one leg's counters as they are now.
    pub fn add(&mut self, c: &LegCounters) {
        let get = LegCounters::get;
        self.rtp_in_packets += get(&c.rtp_in_packets);
        self.rtp_in_bytes += get(&c.rtp_in_bytes);
        self.rtp_out_packets += get(&c.rtp_out_packets);
        self.rtp_out_bytes += get(&c.rtp_out_bytes);
        self.rtcp_in_packets += get(&c.rtcp_in_packets);
        self.rtcp_in_bytes += get(&c.rtcp_in_bytes);
        self.rtcp_out_packets += get(&c.rtcp_out_packets);
        self.rtcp_out_bytes += get(&c.rtcp_out_bytes);
        self.source_rejected_packets += get(&c.source_mismatch_drops);
        self.overload_dropped_packets += get(&c.overload_drops);
    }
}

/// A worker is saturated when it waited for packets less than a tenth of
/// the last second (busy at least this per mille): new calls go to other workers, and
/// when every worker is saturated the manager reports itself overloaded and
/// refuses new calls (admission control), whatever the legs it counts.
pub const SATURATED_BUSY_PERMILLE: u32 = 900;

/// One worker's figures, written by the worker, read by placement and
/// metrics without waiting on it.
#[derive(Debug, Default)]
pub struct WorkerLoad {
    /// Datagrams read from the worker's sockets (RTP and RTCP).
    pub received_packets: AtomicU64,
    /// Datagrams sent on to bridged legs.
    pub forwarded_packets: AtomicU64,
    /// Packets its legs lost to overload (see [`LegCounters::overload_drops`]).
    pub overload_drops: AtomicU64,
    /// The worker thread's CPU time, nanoseconds, as of its last scan.
    pub cpu_ns: AtomicU64,
    /// The share of the time the worker recently spent not waiting for
    /// packets, per mille: measured every scan (250 ms) and smoothed over
    /// about a second.
    pub busy_permille: AtomicU32,
}

impl WorkerLoad {
    /// The worker hardly waited for packets over the last second.
    pub fn saturated(&self) -> bool {
        self.busy_permille.load(Ordering::Relaxed) >= SATURATED_BUSY_PERMILLE
    }
}

/// A worker's figures as read at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerFigures {
    pub legs: usize,
    pub received_packets: u64,
    pub forwarded_packets: u64,
    pub overload_drops: u64,
    pub cpu_ns: u64,
    pub busy_permille: u32,
}

/// What control shares with the worker about one leg.
#[derive(Debug)]
pub struct LegShared {
    pub leg: LegRef,
    pub counters: LegCounters,
    /// The RTP socket, also used by playback and DTMF injection to send to
    /// the peer from the leg's own port. Set once by the driver that bound
    /// it, before the leg is handed to the relay: the session engine that
    /// creates the leg never holds a socket.
    rtp_socket: std::sync::OnceLock<Arc<UdpSocket>>,
    /// Where media to this leg's peer goes now (latched, else from SDP).
    pub destination: Mutex<Option<SocketAddr>>,
    /// The RTP stream this leg's peer receives, shared by the relay's
    /// forwarding and by injections (playback, DTMF).
    pub outbound: Mutex<OutboundStream>,
    /// The kernel forwards this leg's RTP and passes only its
    /// telephone-events up: those are then left out of the relay's RFC 3550
    /// figures, which the kernel's cover (see `offload::kernel`).
    pub kernel_inbound: AtomicBool,
    /// The RTP source in `destination` is locked (learning is over).
    pub source_locked: AtomicBool,
}

impl LegShared {
    /// A leg with zeroed counters, no destination yet and a stream nothing
    /// was sent on.
    pub fn new(leg: LegRef, rtp_socket: Arc<UdpSocket>) -> LegShared {
        let shared = LegShared::unbound(leg);
        shared.set_rtp_socket(rtp_socket);
        shared
    }

    /// A leg whose RTP socket is not bound yet ([`Self::set_rtp_socket`]).
    pub fn unbound(leg: LegRef) -> LegShared {
        LegShared {
            leg,
            counters: LegCounters::default(),
            rtp_socket: std::sync::OnceLock::new(),
            destination: Mutex::new(None),
            outbound: Mutex::new(OutboundStream::default()),
            kernel_inbound: AtomicBool::new(false),
            source_locked: AtomicBool::new(false),
        }
    }

    /// Gives the leg its bound RTP socket; a second socket is ignored.
    pub fn set_rtp_socket(&self, socket: Arc<UdpSocket>) {
        let _ = self.rtp_socket.set(socket);
    }

    /// The destination a new leg starts with, its peer's described address,
    /// published before the leg's worker takes it (the worker publishes the
    /// same, then what it latches): media injected right after the Offer,
    /// DTMF or an announcement, was dropped until the worker caught up.
    pub fn start_destination(&self, expected_rtp: Option<SocketAddr>) {
        let mut destination = self.destination.lock().unwrap_or_else(|p| p.into_inner());
        if destination.is_none() {
            *destination = expected_rtp;
        }
    }

    /// The leg's RTP socket, once bound.
    pub fn rtp_socket(&self) -> Option<&Arc<UdpSocket>> {
        self.rtp_socket.get()
    }

    /// The stream towards this leg's peer, locked.
    pub fn outbound(&self) -> std::sync::MutexGuard<'_, OutboundStream> {
        // The stream's state stays consistent even if a holder panicked: every
        // method leaves it valid.
        self.outbound.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current destination of media sent to this leg's peer.
    pub fn destination(&self) -> Option<SocketAddr> {
        self.destination
            .lock()
            .map(|d| *d)
            .unwrap_or_else(|p| *p.into_inner())
    }
}

/// The RFC 3550 view of one leg's inbound RTP and of its peer's reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LegSnapshot {
    pub latched_rtp: Option<SocketAddr>,
    pub latched_rtcp: Option<SocketAddr>,
    /// Whether those sources are locked (learning over).
    pub rtp_locked: bool,
    pub rtcp_locked: bool,
    pub rtp_lost: i64,
    pub jitter_us: u32,
    /// The last reception report the peer sent about the stream we send it.
    pub peer_fraction_lost: u8,
    pub peer_cumulative_lost: i32,
    pub peer_jitter_us: u32,
}

/// Something the relay noticed on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayEvent {
    /// A leg's peer was (re)latched to `source`; `locked` once learning is
    /// over (only a locked source may be expected by a kernel entry).
    Latched {
        leg: LegRef,
        source: SocketAddr,
        locked: bool,
    },
    /// A leg's peer was (re)latched to `source` for RTCP on the RTCP port
    /// (the offload decision needs the expected RTCP source).
    LatchedRtcp {
        leg: LegRef,
        source: SocketAddr,
        locked: bool,
    },
    /// A leg's learning restarted (new remote description): its sources
    /// are unlocked, media goes to `rtp`/`rtcp` (or the SDP addresses)
    /// until they are learned again.
    Learning {
        leg: LegRef,
        rtp: Option<SocketAddr>,
        rtcp: Option<SocketAddr>,
    },
    /// The stream towards `leg`'s peer got new rewrite offsets (the first
    /// packet forwarded after an injection, or a new source SSRC): see
    /// [`continuity::OutboundStream::rewrite`].
    Anchored { leg: LegRef },
    /// A latched, bridged leg received no RTP for `idle`.
    MediaTimeout { leg: LegRef, idle: Duration },
    /// The peer of a leg sent a whole RFC 4733 DTMF digit.
    Dtmf {
        leg: LegRef,
        digit: Digit,
        duration: Duration,
        /// Power level in -dBm0.
        volume: u8,
    },
}

/// Why a relay operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The worker thread is gone (shutdown or a bug); media stopped.
    #[error("the relay worker has stopped")]
    Stopped,
    /// Creating the worker's epoll instance or event fd failed.
    #[error("relay set-up: {0}")]
    Setup(#[from] io::Error),
}

enum Command {
    Add {
        slot: Slot,
        shared: Arc<LegShared>,
        rtcp: Option<Arc<UdpSocket>>,
        params: LegParams,
    },
    Update {
        slot: Slot,
        params: LegParams,
    },
    Remove {
        slot: Slot,
        reply: oneshot::Sender<Option<LegSnapshot>>,
    },
    Snapshot {
        slot: Slot,
        reply: mpsc::SyncSender<Option<LegSnapshot>>,
    },
    Shutdown,
}

/// Wakes a worker for queued commands: one event-fd write per wake-up,
/// however many commands are queued before the worker gets to run.
///
/// A sender queues its command, then sets `signalled`, and writes the
/// event fd only when the flag was clear. The worker reads the event fd,
/// then clears the flag, then takes its queue: a command queued before
/// the flag was cleared is in that take, and one queued after it finds
/// the flag clear and writes again. (Clearing the flag before reading
/// could swallow the write of a sender that set it in between, and leave
/// the flag set with nothing to wake the worker: every later command
/// would wait for the worker's timeout.)
#[derive(Debug)]
pub(crate) struct Waker {
    event: EventFd,
    signalled: AtomicBool,
}

impl Waker {
    fn new() -> io::Result<Waker> {
        Ok(Waker {
            event: EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?,
            signalled: AtomicBool::new(false),
        })
    }

    /// After a command was queued.
    fn notify(&self) -> io::Result<()> {
        if self.signalled.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.event.write(1).map(drop).map_err(io::Error::from)
    }

    /// On the worker, before it takes its queue.
    pub(crate) fn clear(&self) {
        // Non-blocking: nothing to read when no sender wrote.
        let _ = self.event.read();
        self.signalled.store(false, Ordering::SeqCst);
    }

    pub(crate) fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.event)
    }
}

/// One worker thread: its command queue, what wakes it and its epoll set.
struct WorkerHandle {
    commands: mpsc::Sender<Command>,
    waker: Arc<Waker>,
    epoll: Arc<Epoll>,
    load: Arc<WorkerLoad>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// Queues `command` and wakes the worker to carry it out now.
    fn send(&self, command: Command) -> Result<(), RelayError> {
        self.queue(command)?;
        self.waker.notify().map_err(|_| RelayError::Stopped)
    }

    /// Queues `command` for the worker's next wake-up, whatever wakes it
    /// (at the latest its timeout scan).
    fn queue(&self, command: Command) -> Result<(), RelayError> {
        self.commands.send(command).map_err(|_| RelayError::Stopped)
    }
}

/// Which worker holds each leg, and how many legs each holds.
///
/// A call's legs live on one worker: a leg forwards to its bridged leg by
/// slot, inside the worker's own table, with no hand-off between threads
/// per packet. A new call goes to the worker with the fewest legs among
/// those not saturated (all of them if every one is): legs count the
/// packets calls are expected to bring, the measured CPU catches the calls
/// that bring more.
#[derive(Debug, Default)]
struct Placement {
    /// Per leg: its worker and its call.
    by_slot: HashMap<Slot, (usize, Arc<str>)>,
    /// Per call: its worker and how many of its legs are placed.
    by_call: HashMap<Arc<str>, (usize, usize)>,
    legs: Vec<usize>,
}

impl Placement {
    fn new(workers: usize) -> Placement {
        Placement {
            legs: vec![0; workers],
            ..Placement::default()
        }
    }

    /// The worker for a new leg of `call`; `saturated` says, per worker,
    /// whether it is measured saturated.
    fn place(&mut self, slot: Slot, call: &Arc<str>, saturated: &[bool]) -> usize {
        if let Some((worker, _)) = self.by_slot.get(&slot) {
            return *worker;
        }
        let worker = match self.by_call.get_mut(call) {
            Some((worker, count)) => {
                *count += 1;
                *worker
            }
            None => {
                let saturated = |w: usize| saturated.get(w).copied().unwrap_or(false);
                let worker = (0..self.legs.len())
                    .min_by_key(|w| (saturated(*w), self.legs[*w], *w))
                    .unwrap_or(0);
                self.by_call.insert(Arc::clone(call), (worker, 1));
                worker
            }
        };
        self.legs[worker] += 1;
        self.by_slot.insert(slot, (worker, Arc::clone(call)));
        worker
    }

    fn worker_of(&self, slot: Slot) -> Option<usize> {
        self.by_slot.get(&slot).map(|(worker, _)| *worker)
    }

    /// Forgets a leg; returns the worker it was on.
    fn remove(&mut self, slot: Slot) -> Option<usize> {
        let (worker, call) = self.by_slot.remove(&slot)?;
        self.legs[worker] = self.legs[worker].saturating_sub(1);
        if let Some((_, count)) = self.by_call.get_mut(&call) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.by_call.remove(&call);
            }
        }
        Some(worker)
    }
}

/// Handle to the relay's workers. Dropping it stops them.
pub struct Relay {
    workers: Vec<WorkerHandle>,
    placement: Mutex<Placement>,
    events: broadcast::Sender<RelayEvent>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Starts one worker thread.
    pub fn start() -> Result<Relay, RelayError> {
        Relay::with_workers(1)
    }

    /// Starts `workers` worker threads (at least one), each with its own
    /// epoll set and batch buffers.
    pub fn with_workers(workers: usize) -> Result<Relay, RelayError> {
        let (events, _) = broadcast::channel(1024);
        let mut handles = Vec::with_capacity(workers.max(1));
        for index in 0..workers.max(1) {
            let (commands, inbox) = mpsc::channel();
            let waker = Arc::new(Waker::new()?);
            let load = Arc::new(WorkerLoad::default());
            let epoll =
                Arc::new(Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(io::Error::from)?);
            let mut worker = worker::Worker::new(
                inbox,
                Arc::clone(&waker),
                Arc::clone(&epoll),
                events.clone(),
                Arc::clone(&load),
            )?;
            let thread = std::thread::Builder::new()
                .name(format!("relay-{index}"))
                .spawn(move || worker.run())?;
            handles.push(WorkerHandle {
                commands,
                waker,
                epoll,
                load,
                thread: Some(thread),
            });
        }
        Ok(Relay {
            placement: Mutex::new(Placement::new(handles.len())),
            workers: handles,
            events,
        })
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Legs on each worker, in worker order.
    pub fn worker_legs(&self) -> Vec<usize> {
        lock(&self.placement).legs.clone()
    }

    /// Each worker's legs and figures, in worker order.
    pub fn worker_figures(&self) -> Vec<WorkerFigures> {
        let legs = self.worker_legs();
        self.workers
            .iter()
            .zip(legs)
            .map(|(w, legs)| {
                let l = &w.load;
                WorkerFigures {
                    legs,
                    received_packets: LegCounters::get(&l.received_packets),
                    forwarded_packets: LegCounters::get(&l.forwarded_packets),
                    overload_drops: LegCounters::get(&l.overload_drops),
                    cpu_ns: LegCounters::get(&l.cpu_ns),
                    busy_permille: l.busy_permille.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// Every worker is saturated (see [`SATURATED_BUSY_PERMILLE`]): the
    /// relay cannot take more calls without degrading those it carries.
    pub fn saturated(&self) -> bool {
        self.workers.iter().all(|w| w.load.saturated())
    }

    /// The worker holding `slot`. A slot no worker holds (already removed)
    /// goes to the first, which answers as the others would: no such leg.
    fn worker(&self, slot: Slot) -> Result<&WorkerHandle, RelayError> {
        let index = lock(&self.placement).worker_of(slot).unwrap_or(0);
        self.workers.get(index).ok_or(RelayError::Stopped)
    }

    /// Hands a leg's sockets to the relay: to the worker of its call's
    /// other legs, or, for a new call, to the worker with the fewest legs.
    /// `shared.rtp_socket` must be non-blocking; `rtcp` too when present
    /// (absent with rtcp-mux).
    ///
    /// The worker is not woken: the leg is queued for it, then its sockets
    /// are watched on the worker's epoll set from this thread, so the
    /// leg's first packet wakes the worker, which takes its queue before
    /// reading any socket. Adding a leg costs its worker no wake-up
    /// before the leg's media (its updates and removal still wake it).
    pub fn add_leg(
        &self,
        slot: Slot,
        shared: Arc<LegShared>,
        rtcp: Option<UdpSocket>,
        params: LegParams,
    ) -> Result<(), RelayError> {
        let leg = shared.leg.clone();
        let Some(rtp) = shared.rtp_socket().cloned() else {
            tracing::error!(call = %leg.call_id, leg = %leg.leg_id, "leg handed to the relay without its RTP socket");
            return Ok(());
        };
        let rtcp = rtcp.map(Arc::new);
        let saturated: Vec<bool> = self.workers.iter().map(|w| w.load.saturated()).collect();
        let index = lock(&self.placement).place(slot, &leg.call_id, &saturated);
        let worker = self.workers.get(index).ok_or(RelayError::Stopped)?;
        worker.queue(Command::Add {
            slot,
            shared,
            rtcp: rtcp.clone(),
            params,
        })?;
        if let Err(e) = worker::watch(&worker.epoll, slot, &rtp, rtcp.as_deref()) {
            tracing::error!(call = %leg.call_id, leg = %leg.leg_id, error = %e, "cannot watch leg sockets");
        }
        Ok(())
    }

    /// Replaces a leg's parameters.
    pub fn update_leg(&self, slot: Slot, params: LegParams) -> Result<(), RelayError> {
        self.worker(slot)?.send(Command::Update { slot, params })
    }

    /// Removes a leg, closing its sockets, and returns its last snapshot.
    /// Blocks the thread: not for a thread that runs tasks.
    pub fn remove_leg(&self, slot: Slot) -> Result<Option<LegSnapshot>, RelayError> {
        self.begin_remove(slot)?.finish()
    }

    /// Hands a leg's removal to its worker without waiting for it: the
    /// removals of a call's legs begun together cost one wake-up of their
    /// worker, not one each (a worker's commands run in order), and the
    /// caller goes on with other work until it needs the snapshot. The leg
    /// leaves its worker's placement at once: commands for its slot from
    /// now on find no such leg.
    pub fn begin_remove(&self, slot: Slot) -> Result<Removal, RelayError> {
        let worker = self.worker(slot)?;
        let (reply, answer) = oneshot::channel();
        worker.send(Command::Remove { slot, reply })?;
        lock(&self.placement).remove(slot);
        Ok(Removal { answer })
    }

    /// The RFC 3550 figures of a leg.
    pub fn snapshot(&self, slot: Slot) -> Result<Option<LegSnapshot>, RelayError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.worker(slot)?.send(Command::Snapshot { slot, reply })?;
        answer.recv().map_err(|_| RelayError::Stopped)
    }

    /// Events from now on, of every worker.
    pub fn subscribe(&self) -> broadcast::Receiver<RelayEvent> {
        self.events.subscribe()
    }
}

/// A leg's removal handed to its worker ([`Relay::begin_remove`]).
#[must_use = "a removal is complete only once its worker has answered"]
#[derive(Debug)]
pub struct Removal {
    answer: oneshot::Receiver<Option<LegSnapshot>>,
}

impl Removal {
    /// Waits until the worker has let go of the leg (its sockets closed,
    /// its counters final) and returns its last snapshot.
    pub async fn finished(self) -> Result<Option<LegSnapshot>, RelayError> {
        self.answer.await.map_err(|_| RelayError::Stopped)
    }

    /// [`Self::finished`], blocking the thread; outside a runtime only.
    pub fn finish(self) -> Result<Option<LegSnapshot>, RelayError> {
        self.answer.blocking_recv().map_err(|_| RelayError::Stopped)
    }
}

/// The placement is a few map updates per call: a panic cannot leave it
/// half done.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for Relay {
    fn drop(&mut self) {
        for worker in &self.workers {
            let _ = worker.send(Command::Shutdown);
        }
        for worker in &mut self.workers {
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

#[cfg(test)]
mod tests;
