//! Sending the manager's own RTP packets into a leg: from the leg's RTP
//! socket (the peer sees the port it already talks to) to the leg's current
//! destination, continuing the leg's outbound stream.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::media::rtp::{PayloadType, RtpHeader, RtpTimestamp, SeqNum, Ssrc, RTP_HEADER_LEN};
use crate::relay::continuity::{InjectionToken, StreamPosition};
use crate::relay::{LegCounters, LegShared};

/// A random 64-bit value from the standard library's per-process random
/// hash keys, mixed with the clock: enough for SSRCs and initial sequence
/// numbers, which must be unpredictable (RFC 3550 §5.1), not secret.
fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.finish()
}

/// A random start for a stream nothing was sent on yet.
fn fresh_position() -> StreamPosition {
    let a = random_u64();
    let b = random_u64();
    StreamPosition {
        ssrc: Ssrc(a as u32),
        sequence: SeqNum((a >> 32) as u16),
        timestamp: RtpTimestamp(b as u32),
    }
}

/// Owns a leg's outbound stream while it lives; dropping it hands the stream
/// back to the relay's forwarding.
#[derive(Debug)]
pub struct Injector {
    shared: Arc<LegShared>,
    token: InjectionToken,
    ssrc: Ssrc,
    buf: Vec<u8>,
}

/// The header fields of one injected packet.
#[derive(Clone, Copy, Debug)]
pub struct Packet {
    pub marker: bool,
    pub payload_type: PayloadType,
    pub sequence: SeqNum,
    pub timestamp: RtpTimestamp,
    /// The media clock when the packet goes out (differs from `timestamp`
    /// for telephone-events, whose packets all carry the event's start).
    pub media_clock: RtpTimestamp,
}

impl Injector {
    /// Takes over the stream at `now`; returns where the first packet
    /// continues it.
    pub fn begin(
        shared: Arc<LegShared>,
        now: Instant,
        clock_rate: u32,
    ) -> (Injector, StreamPosition) {
        let (token, start) = shared
            .outbound()
            .begin_injection(now, clock_rate, fresh_position());
        let injector = Injector {
            shared,
            token,
            ssrc: start.ssrc,
            buf: Vec::with_capacity(RTP_HEADER_LEN + 256),
        };
        (injector, start)
    }

    /// Sends one packet at `now`; false when a newer injection took the
    /// stream over (this one must stop). A leg without a destination yet
    /// (no SDP address, nothing latched) sends nothing, but keeps its place
    /// in the stream.
    pub fn send(&mut self, now: Instant, packet: Packet, payload: &[u8]) -> bool {
        let position = StreamPosition {
            ssrc: self.ssrc,
            sequence: packet.sequence,
            timestamp: packet.media_clock,
        };
        if !self.shared.outbound().injected(self.token, now, position) {
            return false;
        }
        let header = RtpHeader {
            marker: packet.marker,
            payload_type: packet.payload_type,
            sequence: packet.sequence,
            timestamp: packet.timestamp,
            ssrc: self.ssrc,
        };
        self.buf.resize(RTP_HEADER_LEN + payload.len(), 0);
        let Ok(len) = header.write_packet(payload, &mut self.buf) else {
            return true;
        };
        let Some(to) = self.shared.destination() else {
            return true;
        };
        let Some(socket) = self.shared.rtp_socket() else {
            return true;
        };
        match socket.send_to(&self.buf[..len], to) {
            Ok(_) => {
                let counters = &self.shared.counters;
                LegCounters::add(&counters.rtp_out_packets, 1);
                LegCounters::add(&counters.rtp_out_bytes, len as u64);
            }
            Err(e) => {
                // A full socket buffer or an ICMP error from an earlier send:
                // the packet is lost, as it would be on the wire.
                tracing::trace!(call = %self.shared.leg.call_id, leg = %self.shared.leg.leg_id, error = %e, "injected packet not sent");
            }
        }
        true
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        self.shared.outbound().end_injection(self.token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::rtp::RtpPacket;
    use crate::relay::LegRef;
    use std::net::UdpSocket;
    use std::time::Duration;

    /// A leg's socket, its peer's socket (reads time out after 2 s) and the
    /// leg's shared state, with no destination yet.
    fn leg_and_peer() -> (Arc<UdpSocket>, UdpSocket, Arc<LegShared>) {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("leg socket"));
        let peer = UdpSocket::bind("127.0.0.1:0").expect("peer");
        peer.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let shared = Arc::new(LegShared::new(
            LegRef {
                call_id: Arc::from("c"),
                leg_id: Arc::from("a"),
            },
            Arc::clone(&socket),
        ));
        (socket, peer, shared)
    }

    #[test]
    fn injected_packets_leave_the_legs_socket_and_the_stream_resumes_after() {
        let (socket, peer, shared) = leg_and_peer();
        shared.start_destination(Some(peer.local_addr().expect("addr")));
        let t0 = Instant::now();
        let (mut injector, start) = Injector::begin(Arc::clone(&shared), t0, 8000);
        assert!(shared.outbound().injecting());
        for k in 0..2u16 {
            let ts = start.timestamp.wrapping_add(u32::from(k) * 160);
            let packet = Packet {
                marker: k == 0,
                payload_type: PayloadType::PCMU,
                sequence: start.sequence.wrapping_add(k),
                timestamp: ts,
                media_clock: ts,
            };
            assert!(injector.send(
                t0 + Duration::from_millis(20) * u32::from(k),
                packet,
                &[0xFF; 160]
            ));
        }
        let mut buf = [0u8; 512];
        for k in 0..2u16 {
            let (n, from) = peer.recv_from(&mut buf).expect("injected packet");
            assert_eq!(
                from,
                socket.local_addr().expect("leg addr"),
                "sent from the leg's port"
            );
            let p = RtpPacket::parse(&buf[..n]).expect("valid RTP");
            assert_eq!(
                (p.marker(), p.sequence(), p.ssrc(), p.payload().len()),
                (k == 0, start.sequence.wrapping_add(k), start.ssrc, 160)
            );
        }
        assert_eq!(LegCounters::get(&shared.counters.rtp_out_packets), 2);
        drop(injector);
        assert!(
            !shared.outbound().injecting(),
            "dropping the injector resumes forwarding"
        );
    }

    /// DTMF or an announcement sent right after the Offer reaches the peer
    /// even before the leg's relay worker has taken the leg: the driver
    /// starts the leg with its described address. What the worker
    /// publishes later is not replaced by a second start.
    #[test]
    fn media_injected_before_the_worker_takes_the_leg_goes_to_the_described_address() {
        let (socket, peer, shared) = leg_and_peer();
        assert_eq!(shared.destination(), None);
        let described = peer.local_addr().expect("addr");
        shared.start_destination(Some(described));
        let other: std::net::SocketAddr = "127.0.0.1:9".parse().expect("addr");
        shared.start_destination(Some(other));
        assert_eq!(shared.destination(), Some(described));

        let t0 = Instant::now();
        let (mut injector, start) = Injector::begin(Arc::clone(&shared), t0, 8000);
        let packet = Packet {
            marker: true,
            payload_type: PayloadType::PCMU,
            sequence: start.sequence,
            timestamp: start.timestamp,
            media_clock: start.timestamp,
        };
        assert!(injector.send(t0, packet, &[0xFF; 160]));
        let mut buf = [0u8; 512];
        let (n, from) = peer.recv_from(&mut buf).expect("injected packet");
        assert_eq!(from, socket.local_addr().expect("leg addr"));
        assert_eq!(n, RTP_HEADER_LEN + 160);
    }
}
