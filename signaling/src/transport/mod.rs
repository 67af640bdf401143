//! SIP transports: UDP and TCP on one address and port (RFC 3261 §18).
//!
//! Thin tokio drivers. Received messages go to an [`InboundSink`] as
//! [`Inbound`] values (a whole datagram, or one message cut out of a TCP
//! stream by [`StreamFramer`](crate::sip::StreamFramer)); messages to send are
//! handed to [`Transports::send`] as [`Outbound`] values. Nothing here parses
//! beyond framing: the request-handling core does that.
//!
//! TCP connections are keyed by [`ConnectionId`]: a response names the
//! connection its request came on (§18.2.2) and goes back on it while it is
//! open, else on a connection to the same remote address, opened if needed.
//! Requests to a TCP target reuse a connection to that address when one is
//! open. A framing error (oversized header or body, bad Content-Length) is
//! answered when [`FrameError::status`](crate::sip::FrameError::status) says
//! so and closes the connection, so no peer can make a connection buffer
//! grow without bound.
//!
//! What one peer can take is bounded ([`limits`]): TCP connections in all
//! and per source (a connection over a limit is closed at once), the time a
//! connection may stay without a complete message (only a whole message, a
//! keep-alive ping or a message we send resets the idle timer, and a message
//! once begun must be complete within its own deadline, so a trickle of
//! octets holds nothing), and messages per second per source, checked
//! before anything is copied or parsed. Refusals and drops are counted in
//! [`TransportStats`] and logged at most once per [`limits::REPORT_INTERVAL`].

pub mod limits;
mod tcp;
mod udp;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use self::limits::{
    Admission, ConnectionCount, ConnectionLimits, RateLimiter, Source, TransportStats,
};
use crate::auth::Cidr;
use crate::sip::{FramingLimits, Transport};

/// Errors of the transports.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A socket could not be created or bound.
    #[error("cannot bind SIP {transport} on {addr}")]
    Bind {
        /// `UDP` or `TCP`.
        transport: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A socket option could not be set.
    #[error("cannot configure the SIP {transport} socket")]
    Configure {
        /// `UDP` or `TCP`.
        transport: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Identifies one TCP connection for the lifetime of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tcp#{}", self.0)
    }
}

/// Where a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flow {
    /// A UDP datagram from `remote`.
    Udp {
        /// The source address (IPv4-mapped IPv6 addresses are given as IPv4).
        remote: SocketAddr,
    },
    /// A message read from a TCP connection.
    Tcp {
        /// The peer's address.
        remote: SocketAddr,
        /// The connection.
        connection: ConnectionId,
    },
}

impl Flow {
    /// The peer's address.
    pub fn remote(&self) -> SocketAddr {
        match self {
            Flow::Udp { remote } | Flow::Tcp { remote, .. } => *remote,
        }
    }

    /// The transport, as named in a Via.
    pub fn transport(&self) -> Transport {
        match self {
            Flow::Udp { .. } => Transport::Udp,
            Flow::Tcp { .. } => Transport::Tcp,
        }
    }

    /// Where a reply on the same flow goes: the same connection for TCP.
    pub fn reply_destination(&self) -> Destination {
        match *self {
            Flow::Udp { remote } => Destination::Udp(remote),
            Flow::Tcp { remote, connection } => Destination::Tcp {
                remote,
                connection: Some(connection),
            },
        }
    }
}

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Destination {
    /// A UDP datagram to this address.
    Udp(SocketAddr),
    /// A TCP connection to `remote`: `connection` when it is still open,
    /// else any open connection to `remote`, else a new one.
    Tcp {
        /// The peer's address.
        remote: SocketAddr,
        /// The connection to prefer.
        connection: Option<ConnectionId>,
    },
}

impl Destination {
    /// The peer's address.
    pub fn remote(&self) -> SocketAddr {
        match self {
            Destination::Udp(remote) | Destination::Tcp { remote, .. } => *remote,
        }
    }

    /// Whether the transport is reliable (no retransmission timers).
    pub fn is_reliable(&self) -> bool {
        matches!(self, Destination::Tcp { .. })
    }
}

/// One received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// Where it came from.
    pub flow: Flow,
    /// The octets: a whole datagram, or one framed stream message.
    pub bytes: Vec<u8>,
}

/// One message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// Where it goes.
    pub destination: Destination,
    /// The octets.
    pub bytes: Vec<u8>,
}

/// Receives every inbound message; it must not block (the transports call
/// it from their tasks).
pub type InboundSink = Arc<dyn Fn(Inbound) + Send + Sync>;

/// Transport settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportConfig {
    /// Address and port of both transports; port 0 picks one free for both.
    pub bind: SocketAddr,
    /// Framing limits of TCP streams and UDP datagrams.
    pub limits: FramingLimits,
    /// TCP connections without a complete message (or keep-alive ping)
    /// for this time are closed.
    pub tcp_idle_timeout: Duration,
    /// A TCP message whose first octet has arrived must be complete within
    /// this time, or the connection is closed.
    pub tcp_message_timeout: Duration,
    /// Time allowed to open an outgoing TCP connection.
    pub tcp_connect_timeout: Duration,
    /// TCP connections in all and per source.
    pub tcp_connections: ConnectionLimits,
    /// Messages per second per source, UDP and TCP together; 0 is no limit.
    pub source_rate: u32,
    /// Networks the per-source rate does not apply to.
    pub source_rate_exempt: Vec<Cidr>,
    /// Octets of incomplete TCP messages held across all connections; a
    /// connection that holds some while the total is over it is closed.
    pub tcp_buffer_budget: usize,
}

/// Default [`TransportConfig::tcp_buffer_budget`]: each connection may hold
/// a message of up to twice `--max-message-size` (header and body), so 2048
/// connections could otherwise hold 256 MiB or more of half-sent messages.
pub const TCP_BUFFER_BUDGET: usize = 64 * 1024 * 1024;

/// Messages queued per TCP connection before it is considered stuck and closed.
const CONNECTION_QUEUE: usize = 256;

/// The running transports; cloning gives another handle to the same sockets.
#[derive(Clone)]
pub struct Transports {
    inner: Arc<Inner>,
}

struct Inner {
    config: TransportConfig,
    local: SocketAddr,
    udp: Arc<UdpSocket>,
    connections: Mutex<Connections>,
    next_connection: AtomicU64,
    /// Octets of incomplete messages held by all TCP connections.
    tcp_buffered: AtomicUsize,
    limiter: Mutex<RateLimiter>,
    stats: Arc<TransportStats>,
    sink: InboundSink,
    runtime: tokio::runtime::Handle,
}

#[derive(Default)]
struct Connections {
    by_id: HashMap<ConnectionId, Connection>,
    by_remote: HashMap<SocketAddr, ConnectionId>,
    count: ConnectionCount,
}

struct Connection {
    sender: mpsc::Sender<Vec<u8>>,
    /// The source whose share it takes; `None` for connections we opened.
    source: Option<Source>,
}

impl fmt::Debug for Transports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transports")
            .field("local", &self.inner.local)
            .finish_non_exhaustive()
    }
}

impl Transports {
    /// Binds UDP and TCP on `config.bind` (dual-stack when it is `::`) and
    /// spawns their tasks on the current tokio runtime. Refusals and drops
    /// are counted in `stats` (shared with the core's input queue).
    pub async fn start(
        config: TransportConfig,
        sink: InboundSink,
        stats: Arc<TransportStats>,
    ) -> Result<Transports, TransportError> {
        let (udp, listener) = bind_both(config.bind)?;
        let local = udp
            .local_addr()
            .map_err(|source| TransportError::Configure {
                transport: "UDP",
                source,
            })?;
        let limiter =
            RateLimiter::new(config.source_rate).exempting(config.source_rate_exempt.clone());
        let transports = Transports {
            inner: Arc::new(Inner {
                config,
                local,
                udp: Arc::new(udp),
                connections: Mutex::new(Connections::default()),
                next_connection: AtomicU64::new(1),
                tcp_buffered: AtomicUsize::new(0),
                limiter: Mutex::new(limiter),
                stats: Arc::clone(&stats),
                sink,
                runtime: tokio::runtime::Handle::current(),
            }),
        };
        tokio::spawn(udp::receive(transports.clone()));
        tokio::spawn(tcp::accept(transports.clone(), listener));
        tokio::spawn(report_losses(stats));
        Ok(transports)
    }

    /// The bound address (both transports share it).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// Number of open TCP connections.
    pub fn tcp_connections(&self) -> usize {
        self.connections().by_id.len()
    }

    /// Sends a message without blocking. UDP sends at once; TCP queues on
    /// the connection's writer, opening a connection when none is open. A
    /// failure is logged and the message dropped: SIP's retransmissions and
    /// transaction timeouts recover from lost messages.
    pub fn send(&self, outbound: Outbound) {
        match outbound.destination {
            Destination::Udp(remote) => udp::send(self, remote, &outbound.bytes),
            Destination::Tcp { remote, connection } => {
                tcp::send(self, remote, connection, outbound.bytes);
            }
        }
    }

    fn connections(&self) -> MutexGuard<'_, Connections> {
        // A panic while holding the lock leaves the maps consistent (every
        // update is a single insert or remove), so a poisoned lock is usable.
        self.inner
            .connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn next_connection_id(&self) -> ConnectionId {
        ConnectionId(self.inner.next_connection.fetch_add(1, Ordering::Relaxed))
    }

    fn deliver(&self, inbound: Inbound) {
        (self.inner.sink)(inbound);
    }

    /// Whether the per-source rate lets a message from `remote` through;
    /// a drop is counted, and logged once per interval per source.
    fn admit(&self, remote: SocketAddr) -> bool {
        let source = Source::of(remote.ip());
        let admission = self
            .inner
            .limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(std::time::Instant::now(), remote.ip());
        match admission {
            Admission::Admit => true,
            Admission::Drop { report } => {
                TransportStats::bump(&self.inner.stats.rate_limited);
                if let Some(dropped) = report {
                    tracing::debug!(%source, dropped, "source over its message rate; dropping its messages");
                }
                false
            }
        }
    }

    fn stats(&self) -> &TransportStats {
        &self.inner.stats
    }

    /// Records that a connection now holds `now` octets of an incomplete
    /// message instead of `before`; returns what all connections hold.
    fn hold_buffered(&self, before: usize, now: usize) -> usize {
        let total = &self.inner.tcp_buffered;
        if now >= before {
            total.fetch_add(now - before, Ordering::Relaxed) + (now - before)
        } else {
            total.fetch_sub(before - now, Ordering::Relaxed) - (before - now)
        }
    }
}

/// Logs, at most once per interval, what the limits refused or dropped
/// since the last report: a flood or descriptor shortage gives one line
/// per interval with counts, never one per event.
async fn report_losses(stats: Arc<TransportStats>) {
    let mut last = stats.snapshot();
    let mut ticks = tokio::time::interval(limits::REPORT_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let now = stats.snapshot();
        let delta = now.since(&last);
        last = now;
        if delta.has_losses() {
            tracing::warn!(
                interval_s = limits::REPORT_INTERVAL.as_secs(),
                tcp_refused_total_limit = delta.tcp_refused_total,
                tcp_refused_source_limit = delta.tcp_refused_per_source,
                tcp_accept_errors = delta.tcp_accept_errors,
                tcp_message_timeouts = delta.tcp_message_timeouts,
                tcp_buffer_budget_closed = delta.tcp_buffer_closed,
                rate_limited = delta.rate_limited,
                queue_full = delta.queue_full,
                queue_source_share = delta.queue_source_share,
                "SIP traffic refused or dropped by the limits"
            );
        }
    }
}

/// Binds UDP and TCP to the same address; with port 0, to the same free port.
fn bind_both(bind: SocketAddr) -> Result<(UdpSocket, std::net::TcpListener), TransportError> {
    let attempts = if bind.port() == 0 { 20 } else { 1 };
    let mut last_error = None;
    for _ in 0..attempts {
        let udp = udp::bind(bind)?;
        let port = udp
            .local_addr()
            .map_err(|source| TransportError::Configure {
                transport: "UDP",
                source,
            })?
            .port();
        match tcp::bind(SocketAddr::new(bind.ip(), port)) {
            Ok(listener) => return Ok((udp, listener)),
            // The UDP port's TCP twin was taken: try another free port.
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or(TransportError::Bind {
        transport: "TCP",
        addr: bind,
        source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
    }))
}

/// Makes a socket dual-stack when bound to `::`, so IPv4 peers reach it too.
fn socket_for(
    bind: SocketAddr,
    kind: socket2::Type,
    transport: &'static str,
) -> Result<socket2::Socket, TransportError> {
    let configure = |source| TransportError::Configure { transport, source };
    let socket =
        socket2::Socket::new(socket2::Domain::for_address(bind), kind, None).map_err(configure)?;
    if bind.is_ipv6() {
        socket
            .set_only_v6(bind.ip() != IpAddr::V6(Ipv6Addr::UNSPECIFIED))
            .map_err(configure)?;
    }
    if kind == socket2::Type::STREAM {
        // Lets a restarted server listen while old connections sit in
        // TIME_WAIT. Never on UDP, where it would let two servers share a port.
        socket.set_reuse_address(true).map_err(configure)?;
    }
    socket.set_nonblocking(true).map_err(configure)?;
    socket
        .bind(&bind.into())
        .map_err(|source| TransportError::Bind {
            transport,
            addr: bind,
            source,
        })?;
    Ok(socket)
}

/// Gives an IPv4-mapped IPv6 address (a dual-stack socket's view of an
/// IPv4 peer) as the IPv4 address, the form Vias and bindings use.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The address to give an IPv6 socket for an IPv4 peer.
fn for_socket(local: SocketAddr, remote: SocketAddr) -> SocketAddr {
    match (local, remote.ip()) {
        (SocketAddr::V6(_), IpAddr::V4(v4)) => {
            SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), remote.port())
        }
        _ => remote,
    }
}

/// Where a request to a `sip:` URI goes: its host must be an IP address
/// (no DNS yet), its port or 5060, TCP when `transport=tcp`.
pub fn uri_destination(uri: &crate::sip::Uri) -> Result<Destination, (u16, String)> {
    if uri.scheme() != crate::sip::Scheme::Sip {
        return Err((416, "Unsupported URI Scheme".to_owned()));
    }
    let ip = uri
        .host()
        .and_then(|h| h.ip())
        .ok_or((503, "Service Unavailable".to_owned()))?;
    let remote = SocketAddr::new(ip, uri.port().unwrap_or(5060));
    let tcp = uri
        .param("transport")
        .flatten()
        .is_some_and(|t| t.eq_ignore_ascii_case("tcp"));
    Ok(if tcp {
        Destination::Tcp {
            remote,
            connection: None,
        }
    } else {
        Destination::Udp(remote)
    })
}
