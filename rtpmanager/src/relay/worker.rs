//! The relay worker thread: epoll over every leg socket, batched reads,
//! latching, statistics, DTMF detection and forwarding.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags, EpollTimeout};
use tokio::sync::broadcast;

use super::batch::{count_queue_drops, RecvBatch, SendBatch};
use super::continuity::{ForwardVerdict, StreamPosition};
use super::latch::{self, SourceLatch};
use super::{
    Command, LegCounters, LegParams, LegShared, LegSnapshot, RelayEvent, Slot, WorkerLoad,
    MAX_BATCHES_PER_WAKE,
};
use crate::clock::unix_millis;
use crate::media::dtmf::DtmfDetector;
use crate::media::g711::Law;
use crate::media::rtp::{self, MuxedKind, RtcpPacket, RtpPacket, RtpPacketMut};
use crate::media::stats::ReceiverStats;

const WAKER_TOKEN: u64 = u64::MAX;
/// How often media timeouts and DTMF end timeouts are checked.
const TIMEOUT_SCAN: Duration = Duration::from_millis(250);
/// A digit whose end packets were all lost ends this long after its last
/// packet. Senders refresh a running event every 50 ms at most (RFC 4733
/// §2.5.1.2), so half a second is ten refreshes missed.
const DTMF_END_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SocketKind {
    Rtp,
    Rtcp,
}

fn token(slot: Slot, kind: SocketKind) -> u64 {
    (u64::from(slot) << 1) | u64::from(kind == SocketKind::Rtcp)
}

fn untoken(token: u64) -> (Slot, SocketKind) {
    let kind = if token & 1 == 1 {
        SocketKind::Rtcp
    } else {
        SocketKind::Rtp
    };
    ((token >> 1) as Slot, kind)
}

struct LegState {
    shared: Arc<LegShared>,
    /// The leg's RTP socket (also in `shared`, read here without a lock).
    rtp: Arc<UdpSocket>,
    rtcp: Option<Arc<UdpSocket>>,
    params: LegParams,
    /// Where RTP and RTCP are accepted from and sent back to.
    rtp_latch: SourceLatch,
    rtcp_latch: SourceLatch,
    stats: ReceiverStats,
    last_rtp_at: Option<Instant>,
    timeout_reported: bool,
    peer_report: Option<rtp::ReportBlock>,
    /// Present while the leg negotiated telephone-event.
    dtmf: Option<DtmfDetector>,
    /// The kernel's count of datagrams dropped on the RTP and the RTCP
    /// socket's full receive queue, as last seen.
    queue_drops: [u32; 2],
}

impl LegState {
    fn rtp_destination(&self) -> Option<SocketAddr> {
        self.rtp_latch.current().or(self.params.expected_rtp)
    }

    fn rtcp_destination(&self) -> Option<SocketAddr> {
        self.rtcp_latch
            .current()
            .or(self.params.expected_rtcp)
            .or_else(|| {
                // Without a known RTCP address, RTCP follows RTP on port + 1
                // (RFC 3550), or RTP itself with rtcp-mux.
                let rtp = self.rtp_destination()?;
                if self.rtcp.is_some() && !self.params.rtcp_mux {
                    Some(SocketAddr::new(rtp.ip(), rtp.port().wrapping_add(1)))
                } else {
                    Some(rtp)
                }
            })
    }

    /// Keeps a DTMF detector exactly while the leg has a telephone-event
    /// payload type; a running detector survives parameter updates.
    fn sync_dtmf_detector(&mut self) {
        match (self.params.telephone_event, &self.dtmf) {
            (Some(_), None) => self.dtmf = Some(DtmfDetector::new(DTMF_END_TIMEOUT)),
            (None, Some(_)) => self.dtmf = None,
            _ => {}
        }
    }

    /// Publishes the digits the detector finished.
    fn drain_dtmf(&mut self, events: &broadcast::Sender<RelayEvent>) {
        let Some(detector) = self.dtmf.as_mut() else {
            return;
        };
        while let Some(digit) = detector.poll_event() {
            let duration = digit.duration_at(self.params.clock_rate.max(1));
            tracing::debug!(
                call = %self.shared.leg.call_id,
                leg = %self.shared.leg.leg_id,
                digit = %digit.digit.as_char(),
                duration_ms = duration.as_millis() as u64,
                reason = ?digit.reason,
                "DTMF received"
            );
            let _ = events.send(RelayEvent::Dtmf {
                leg: self.shared.leg.clone(),
                digit: digit.digit,
                duration,
                volume: digit.volume,
            });
        }
    }

    fn publish_destination(&self) {
        if let Ok(mut d) = self.shared.destination.lock() {
            *d = self.rtp_destination();
        }
        self.shared.source_locked.store(
            self.rtp_latch.locked(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// New params: a new remote description (or a new policy) restarts
    /// endpoint learning on both streams; true when it did.
    fn update(&mut self, params: LegParams) -> bool {
        let relearn = params.learning_epoch != self.params.learning_epoch
            || params.strict_source != self.params.strict_source;
        if self.params.clock_rate != params.clock_rate {
            self.stats = ReceiverStats::new(params.clock_rate.max(1));
        }
        self.params = params;
        if relearn {
            let p = &self.params;
            self.rtp_latch
                .restart(p.strict_source, p.source_learning, p.expected_rtp);
            self.rtcp_latch
                .restart(p.strict_source, p.source_learning, p.expected_rtcp);
        }
        self.timeout_reported = false;
        self.sync_dtmf_detector();
        self.publish_destination();
        relearn
    }

    /// Publishes what a latch changed.
    fn drain_latch(&mut self, rtcp: bool, events: &broadcast::Sender<RelayEvent>) {
        let latch = if rtcp {
            &mut self.rtcp_latch
        } else {
            &mut self.rtp_latch
        };
        let Some(latch::Latched { source, locked }) = latch.poll_event() else {
            return;
        };
        let leg = self.shared.leg.clone();
        if rtcp {
            let _ = events.send(RelayEvent::LatchedRtcp {
                leg,
                source,
                locked,
            });
        } else {
            self.publish_destination();
            tracing::debug!(call = %leg.call_id, leg = %leg.leg_id, %source, locked, "latched");
            let _ = events.send(RelayEvent::Latched {
                leg,
                source,
                locked,
            });
        }
    }

    fn snapshot(&self) -> LegSnapshot {
        let clock = f64::from(self.params.clock_rate.max(1));
        let (peer_fraction_lost, peer_cumulative_lost, peer_jitter_us) = match &self.peer_report {
            Some(r) => (
                r.fraction_lost,
                r.cumulative_lost,
                (f64::from(r.jitter) * 1e6 / clock) as u32,
            ),
            None => (0, 0, 0),
        };
        LegSnapshot {
            latched_rtp: self.rtp_latch.current(),
            latched_rtcp: self.rtcp_latch.current(),
            rtp_locked: self.rtp_latch.locked(),
            rtcp_locked: self.rtcp_latch.locked(),
            rtp_lost: i64::from(self.stats.cumulative_lost()),
            jitter_us: self.stats.jitter_micros() as u32,
            peer_fraction_lost,
            peer_cumulative_lost,
            peer_jitter_us,
        }
    }
}

pub(super) struct Worker {
    inbox: mpsc::Receiver<Command>,
    waker: Arc<super::Waker>,
    events: broadcast::Sender<RelayEvent>,
    /// Shared with control, which watches new legs' sockets on it.
    epoll: Arc<Epoll>,
    legs: HashMap<Slot, LegState>,
    recv: RecvBatch,
    send_rtp: SendBatch,
    send_rtcp: SendBatch,
    load: Arc<WorkerLoad>,
    /// Time spent waiting in `epoll_wait` since the worker started.
    waited: Duration,
    /// `waited` and the moment it was read, at the last scan.
    busy_sample: Option<(Duration, Instant)>,
}

/// What to do with one received datagram.
enum Verdict {
    Drop,
    Forward {
        rtcp: bool,
        len: usize,
        to: SocketAddr,
    },
}

impl Worker {
    pub(super) fn new(
        inbox: mpsc::Receiver<Command>,
        waker: Arc<super::Waker>,
        epoll: Arc<Epoll>,
        events: broadcast::Sender<RelayEvent>,
        load: Arc<WorkerLoad>,
    ) -> std::io::Result<Worker> {
        epoll.add(
            waker.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, WAKER_TOKEN),
        )?;
        Ok(Worker {
            inbox,
            waker,
            events,
            epoll,
            legs: HashMap::new(),
            recv: RecvBatch::default(),
            send_rtp: SendBatch::default(),
            send_rtcp: SendBatch::default(),
            load,
            waited: Duration::ZERO,
            busy_sample: None,
        })
    }

    pub(super) fn run(&mut self) {
        let mut ready = vec![EpollEvent::empty(); 256];
        let mut next_scan = Instant::now() + TIMEOUT_SCAN;
        loop {
            let wait_from = Instant::now();
            let waited = self.epoll.wait(&mut ready, EpollTimeout::from(50u16));
            self.waited += wait_from.elapsed();
            let n = match waited {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => 0,
                Err(e) => {
                    tracing::error!(error = %e, "relay epoll failed; media stops");
                    return;
                }
            };
            // Commands first, whatever woke the worker: a new leg's
            // sockets are watched from the moment control hands it over
            // ([`super::Relay::add_leg`]), so its own first packet may be
            // what woke it. The event fd is cleared before the queue is
            // read: a command queued after that look writes it again.
            if ready[..n].iter().any(|e| e.data() == WAKER_TOKEN) {
                self.waker.clear();
            }
            if !self.handle_commands() {
                return;
            }
            for event in &ready[..n] {
                if event.data() != WAKER_TOKEN {
                    let (slot, kind) = untoken(event.data());
                    self.handle_readable(slot, kind);
                }
            }
            let now = Instant::now();
            if now >= next_scan {
                self.check_media_timeouts(now);
                self.measure_busy(now);
                next_scan = now + TIMEOUT_SCAN;
            }
        }
    }

    /// Publishes the thread's CPU time, and the share of the time since the
    /// last scan the worker did not wait for packets, smoothed (each scan
    /// weighs a half) so one busy moment does not mark the worker saturated
    /// and a lasting load does within about a second. Not waiting, rather
    /// than CPU time: a worker that always finds packets queued cannot keep
    /// up, whether its own work or other work on the host takes the CPU.
    fn measure_busy(&mut self, now: Instant) {
        let ordering = std::sync::atomic::Ordering::Relaxed;
        if let Ok(cpu) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID) {
            let cpu = Duration::from(cpu).as_nanos();
            self.load
                .cpu_ns
                .store(u64::try_from(cpu).unwrap_or(u64::MAX), ordering);
        }
        if let Some((last_waited, last_at)) = self.busy_sample {
            let wall = now.saturating_duration_since(last_at).as_nanos().max(1);
            let waited = self.waited.saturating_sub(last_waited).as_nanos().min(wall);
            let window = u32::try_from((wall - waited) * 1000 / wall).unwrap_or(1000);
            let smoothed = (self.load.busy_permille.load(ordering) + window) / 2;
            self.load.busy_permille.store(smoothed, ordering);
        }
        self.busy_sample = Some((self.waited, now));
    }

    /// Applies queued commands; false on shutdown.
    fn handle_commands(&mut self) -> bool {
        while let Ok(command) = self.inbox.try_recv() {
            match command {
                Command::Add {
                    slot,
                    shared,
                    rtcp,
                    params,
                } => self.add(slot, shared, rtcp, params),
                Command::Update { slot, params } => {
                    if let Some(leg) = self.legs.get_mut(&slot) {
                        if leg.update(params) {
                            let _ = self.events.send(RelayEvent::Learning {
                                leg: leg.shared.leg.clone(),
                                rtp: leg.rtp_latch.current(),
                                rtcp: leg.rtcp_latch.current(),
                            });
                        }
                    }
                }
                Command::Remove { slot, reply } => {
                    let snapshot = self.legs.remove(&slot).map(|leg| {
                        let _ = self.epoll.delete(leg.rtp.as_fd());
                        if let Some(rtcp) = &leg.rtcp {
                            let _ = self.epoll.delete(rtcp.as_fd());
                        }
                        leg.snapshot()
                    });
                    let _ = reply.send(snapshot);
                }
                Command::Snapshot { slot, reply } => {
                    let _ = reply.send(self.legs.get(&slot).map(LegState::snapshot));
                }
                Command::Shutdown => return false,
            }
        }
        true
    }

    /// Takes a leg whose sockets control already watches on this worker's
    /// epoll set ([`watch`]).
    fn add(
        &mut self,
        slot: Slot,
        shared: Arc<LegShared>,
        rtcp: Option<Arc<UdpSocket>>,
        params: LegParams,
    ) {
        // Control hands over only legs with an RTP socket (and logs the
        // others).
        let Some(rtp) = shared.rtp_socket().cloned() else {
            return;
        };
        let mut state = LegState {
            stats: ReceiverStats::new(params.clock_rate.max(1)),
            rtp_latch: SourceLatch::new(
                params.strict_source,
                params.source_learning,
                params.expected_rtp,
            ),
            rtcp_latch: SourceLatch::new(
                params.strict_source,
                params.source_learning,
                params.expected_rtcp,
            ),
            shared,
            rtp,
            rtcp,
            params,
            last_rtp_at: None,
            timeout_reported: false,
            peer_report: None,
            dtmf: None,
            queue_drops: [0; 2],
        };
        state.sync_dtmf_detector();
        state.publish_destination();
        self.legs.insert(slot, state);
    }

    fn handle_readable(&mut self, slot: Slot, kind: SocketKind) {
        for _ in 0..MAX_BATCHES_PER_WAKE {
            let Some(leg) = self.legs.get(&slot) else {
                return;
            };
            let fd = match kind {
                SocketKind::Rtp => leg.rtp.as_raw_fd(),
                SocketKind::Rtcp => match &leg.rtcp {
                    Some(s) => s.as_raw_fd(),
                    None => return,
                },
            };
            let n = match self.recv.recv(fd) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) => {
                    // ECONNREFUSED and friends report an earlier send's ICMP
                    // error; the socket itself is fine.
                    tracing::trace!(slot, error = %e, "recvmmsg");
                    return;
                }
            };
            self.count_queue_drops(slot, kind);
            LegCounters::add(&self.load.received_packets, n as u64);
            let now = Instant::now();
            let now_ms = unix_millis(SystemTime::now());
            self.send_rtp.clear();
            self.send_rtcp.clear();
            for i in 0..n {
                match self.process(slot, kind, i, now, now_ms) {
                    Verdict::Drop => {}
                    Verdict::Forward {
                        rtcp: false,
                        len,
                        to,
                    } => self.send_rtp.push(&self.recv, i, len, to),
                    Verdict::Forward {
                        rtcp: true,
                        len,
                        to,
                    } => self.send_rtcp.push(&self.recv, i, len, to),
                }
            }
            self.flush(slot);
            if n < super::BATCH {
                return;
            }
        }
    }

    /// Adds what the kernel dropped on the leg's full receive queue since
    /// the last read to its overload drops: under overload each leg's own
    /// socket overflows, so the loss is counted where it happened.
    fn count_queue_drops(&mut self, slot: Slot, kind: SocketKind) {
        let Some(total) = self.recv.queue_drops() else {
            return;
        };
        let Some(leg) = self.legs.get_mut(&slot) else {
            return;
        };
        let seen = &mut leg.queue_drops[usize::from(kind == SocketKind::Rtcp)];
        let new = total.wrapping_sub(*seen);
        *seen = total;
        if new > 0 {
            LegCounters::add(&leg.shared.counters.overload_drops, u64::from(new));
            LegCounters::add(&self.load.overload_drops, u64::from(new));
        }
    }

    /// Sends the batches built for a datagram batch of `slot` out of the
    /// bridged leg's sockets.
    fn flush(&mut self, slot: Slot) {
        let Some(target) = self.legs.get(&slot).and_then(|l| l.params.forward_to) else {
            return;
        };
        let Some(out) = self.legs.get(&target) else {
            return;
        };
        let counters = &out.shared.counters;
        let source_counters = self.legs.get(&slot).map(|l| &l.shared.counters);
        if !self.send_rtp.is_empty() {
            let queued = self.send_rtp.len();
            let sent = self.send_rtp.send(out.rtp.as_raw_fd());
            LegCounters::add(&counters.rtp_out_packets, sent as u64);
            LegCounters::add(&self.load.forwarded_packets, sent as u64);
            if queued > sent {
                if let Some(c) = source_counters {
                    LegCounters::add(&c.overload_drops, (queued - sent) as u64);
                }
                LegCounters::add(&self.load.overload_drops, (queued - sent) as u64);
            }
        }
        if !self.send_rtcp.is_empty() {
            let fd = match (&out.rtcp, out.params.rtcp_mux) {
                (Some(rtcp), false) => rtcp.as_raw_fd(),
                _ => out.rtp.as_raw_fd(),
            };
            let sent = self.send_rtcp.send(fd);
            LegCounters::add(&counters.rtcp_out_packets, sent as u64);
            LegCounters::add(&self.load.forwarded_packets, sent as u64);
        }
    }

    fn process(
        &mut self,
        slot: Slot,
        kind: SocketKind,
        index: usize,
        now: Instant,
        now_ms: u64,
    ) -> Verdict {
        let Some(datagram) = self.recv.get(index) else {
            return Verdict::Drop;
        };
        let source = datagram.source;
        let len = datagram.data.len();
        let is_rtcp = match kind {
            SocketKind::Rtcp => true,
            SocketKind::Rtp => rtp::classify(datagram.data) == MuxedKind::Rtcp,
        };
        let Some(leg) = self.legs.get_mut(&slot) else {
            return Verdict::Drop;
        };
        let mut telephone_event = false;

        // Endpoint learning: a packet from a source the leg does not accept
        // is neither forwarded nor media (it keeps no leg alive).
        let latch = if is_rtcp {
            &mut leg.rtcp_latch
        } else {
            &mut leg.rtp_latch
        };
        if latch.handle_packet(now, source) == latch::Verdict::Reject {
            LegCounters::add(&leg.shared.counters.source_mismatch_drops, 1);
            return Verdict::Drop;
        }
        leg.drain_latch(is_rtcp, &self.events);

        let counters = &leg.shared.counters;
        counters
            .last_packet_ms
            .store(now_ms, std::sync::atomic::Ordering::Relaxed);
        if is_rtcp {
            LegCounters::add(&counters.rtcp_in_packets, 1);
            LegCounters::add(&counters.rtcp_in_bytes, len as u64);
            for packet in rtp::rtcp_packets(datagram.data).map_while(Result::ok) {
                let blocks = match packet {
                    RtcpPacket::SenderReport { blocks, .. }
                    | RtcpPacket::ReceiverReport { blocks, .. } => blocks,
                    RtcpPacket::Other { .. } => continue,
                };
                if let Some(block) = blocks.into_iter().next() {
                    leg.peer_report = Some(block);
                }
            }
        } else {
            LegCounters::add(&counters.rtp_in_packets, 1);
            LegCounters::add(&counters.rtp_in_bytes, len as u64);
            if let Ok(packet) = RtpPacket::parse(datagram.data) {
                telephone_event = leg.params.telephone_event == Some(packet.payload_type());
                // The kernel counts a telephone-event it passed up in its
                // own sequence figures; counting it here too would turn the
                // packets only the kernel saw into a loss.
                let kernel_counts = telephone_event
                    && leg
                        .shared
                        .kernel_inbound
                        .load(std::sync::atomic::Ordering::Relaxed);
                if !kernel_counts {
                    leg.stats
                        .handle_packet(now, packet.sequence(), packet.timestamp(), len);
                }
                if telephone_event {
                    if let Some(detector) = leg.dtmf.as_mut() {
                        if let Err(e) = detector.handle_packet(
                            now,
                            packet.timestamp(),
                            packet.marker(),
                            packet.payload(),
                        ) {
                            tracing::trace!(slot, error = %e, "telephone-event ignored");
                        }
                    }
                    leg.drain_dtmf(&self.events);
                }
            }
            leg.last_rtp_at = Some(now);
            leg.timeout_reported = false;
        }

        let Some(target) = leg.params.forward_to else {
            return Verdict::Drop;
        };
        let transcode = leg.params.transcode;
        let Some(out) = self.legs.get(&target) else {
            return Verdict::Drop;
        };
        if out.params.inbound_paused {
            return Verdict::Drop;
        }
        let destination = if is_rtcp {
            out.rtcp_destination()
        } else {
            out.rtp_destination()
        };
        let Some(to) = destination else {
            return Verdict::Drop;
        };
        if !is_rtcp {
            if telephone_event {
                // DTMF passes through with the receiving leg's payload type,
                // and not at all to a peer that did not agree to it.
                let Some(pt) = out.params.telephone_event else {
                    return Verdict::Drop;
                };
                if let Ok(mut packet) = RtpPacketMut::parse(datagram.data) {
                    packet.set_payload_type(pt);
                }
            } else if let Some(t) = transcode {
                transcode_in_place(datagram.data, t.from, t.to, t.payload_type);
            }
            if let Ok(mut packet) = RtpPacketMut::parse(datagram.data) {
                let header = packet.as_packet();
                let position = StreamPosition {
                    ssrc: header.ssrc(),
                    sequence: header.sequence(),
                    timestamp: header.timestamp(),
                };
                let (verdict, anchored) = {
                    let mut stream = out.shared.outbound();
                    let verdict = stream.forward(now, out.params.clock_rate.max(1), position);
                    (verdict, stream.take_anchored())
                };
                if anchored {
                    // The kernel may carry the stream again, with these offsets.
                    let _ = self.events.send(RelayEvent::Anchored {
                        leg: out.shared.leg.clone(),
                    });
                }
                match verdict {
                    ForwardVerdict::Drop => return Verdict::Drop,
                    ForwardVerdict::Unchanged => {}
                    ForwardVerdict::Rewrite(p) => {
                        packet.set_ssrc(p.ssrc);
                        packet.set_sequence(p.sequence);
                        packet.set_timestamp(p.timestamp);
                    }
                }
            }
            LegCounters::add(&out.shared.counters.rtp_out_bytes, len as u64);
        } else {
            LegCounters::add(&out.shared.counters.rtcp_out_bytes, len as u64);
        }
        Verdict::Forward {
            rtcp: is_rtcp,
            len,
            to,
        }
    }

    fn check_media_timeouts(&mut self, now: Instant) {
        for leg in self.legs.values_mut() {
            leg.rtp_latch.handle_timeout(now);
            leg.rtcp_latch.handle_timeout(now);
            leg.drain_latch(false, &self.events);
            leg.drain_latch(true, &self.events);
            if let Some(detector) = leg.dtmf.as_mut() {
                detector.handle_timeout(now);
                leg.drain_dtmf(&self.events);
            }
            let (Some(limit), Some(_), Some(last)) = (
                leg.params.media_timeout,
                leg.params.forward_to,
                leg.last_rtp_at,
            ) else {
                continue;
            };
            let idle = now.saturating_duration_since(last);
            if idle >= limit && !leg.timeout_reported {
                leg.timeout_reported = true;
                tracing::info!(call = %leg.shared.leg.call_id, leg = %leg.shared.leg.leg_id, idle_s = idle.as_secs(), "media timeout");
                let _ = self.events.send(RelayEvent::MediaTimeout {
                    leg: leg.shared.leg.clone(),
                    idle,
                });
            }
        }
    }
}

/// Watches a leg's sockets on a worker's epoll set, from control's thread:
/// the worker need not wake for a leg until its first packet, and the
/// command that hands it the leg is taken before that packet is read.
/// Also asks the kernel to count each socket's receive-queue drops.
pub(super) fn watch(
    epoll: &Epoll,
    slot: Slot,
    rtp: &UdpSocket,
    rtcp: Option<&UdpSocket>,
) -> nix::Result<()> {
    epoll.add(
        rtp.as_fd(),
        EpollEvent::new(EpollFlags::EPOLLIN, token(slot, SocketKind::Rtp)),
    )?;
    if let Some(rtcp) = rtcp {
        epoll.add(
            rtcp.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, token(slot, SocketKind::Rtcp)),
        )?;
    }
    for fd in std::iter::once(rtp.as_raw_fd()).chain(rtcp.map(|s| s.as_raw_fd())) {
        if let Err(e) = count_queue_drops(fd) {
            tracing::debug!(error = %e, "receive-queue drops of a leg socket are not counted");
        }
    }
    Ok(())
}

/// Rewrites a G.711 RTP packet's payload and payload type in place; other
/// payload types (telephone-event, comfort noise) pass unchanged.
fn transcode_in_place(data: &mut [u8], from: Law, to: Law, payload_type: rtp::PayloadType) {
    let Ok(mut packet) = RtpPacketMut::parse(data) else {
        return;
    };
    if Law::from_payload_type(packet.as_packet().payload_type()) != Some(from) {
        return;
    }
    from.transcode_in_place(to, packet.payload_mut());
    packet.set_payload_type(payload_type);
}
