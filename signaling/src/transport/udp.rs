//! The UDP transport: one datagram, one message (RFC 3261 §18.3).

use std::net::SocketAddr;

use tokio::net::UdpSocket;

use super::{canonical, for_socket, socket_for, Flow, Inbound, TransportError, Transports};

/// Largest UDP payload; a datagram is read whole or not at all.
const MAX_DATAGRAM: usize = 65_535;

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
    UdpSocket::from_std(socket.into()).map_err(|source| TransportError::Configure {
        transport: "UDP",
        source,
    })
}

/// Reads datagrams and hands each to the sink until the socket fails. A
/// datagram from a source over its rate is dropped here, before it is
/// copied or parsed: a flood costs one receive and one table look-up each.
pub(super) async fn receive(transports: Transports) {
    let socket = std::sync::Arc::clone(&transports.inner.udp);
    // One spare octet shows a datagram that filled the buffer was not cut.
    let mut buffer = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        match socket.recv_from(&mut buffer).await {
            Ok((len, remote)) => {
                let remote = canonical(remote);
                if !transports.admit(remote) {
                    continue;
                }
                tracing::trace!(%remote, len, "UDP datagram received");
                transports.deliver(Inbound {
                    flow: Flow::Udp { remote },
                    bytes: buffer[..len].to_vec(),
                });
            }
            // ICMP port unreachable from an earlier send surfaces here on
            // Linux; it concerns that peer, not this socket.
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
                tracing::trace!(%error, "UDP send bounced");
            }
            Err(error) => {
                tracing::error!(%error, "UDP receive failed; SIP over UDP stops");
                return;
            }
        }
    }
}

/// Sends one datagram without waiting; a full socket buffer drops it.
pub(super) fn send(transports: &Transports, remote: SocketAddr, bytes: &[u8]) {
    let target = for_socket(transports.inner.local, remote);
    match transports.inner.udp.try_send_to(bytes, target) {
        Ok(_) => tracing::trace!(%remote, len = bytes.len(), "UDP datagram sent"),
        Err(error) => tracing::debug!(%remote, %error, "UDP send failed; message dropped"),
    }
}
