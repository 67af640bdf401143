//! SIP transports: UDP and TCP on one address and port (RFC 3261 §18),
//! and TLS on its own port (RFC 3261 §26.2, [`tls`]).
//!
//! Thin drivers. A message received on a stream goes to an
//! [`InboundSink`] as an [`Inbound`] value (one message cut out of a TCP
//! stream by [`StreamFramer`](crate::sip::StreamFramer)) from the stream's
//! tokio task; a datagram is read by the SIP core's thread itself
//! ([`Transports::receive_datagram`], see [`udp`]). Messages to send are
//! handed to [`Transports::send`] as [`Outbound`] values. Nothing here parses
//! beyond framing: the request-handling core does that.
//!
//! TCP and TLS connections (streams) are keyed by [`ConnectionId`]: a response names the
//! connection its request came on (§18.2.2) and goes back on it while it is
//! open, else on a connection to the same remote address, opened if needed.
//! Requests to a TCP or TLS target reuse a connection of that transport to
//! that address when one is open. TLS connections have the same limits,
//! timeouts and framing as TCP ones, and count in the same connection
//! limits. A framing error (oversized header or body, bad Content-Length) is
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
pub mod tls;
mod udp;
pub mod ws;

pub use self::udp::{Received, MAX_DATAGRAM};

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;

use self::limits::{
    Admission, ConnectionCount, ConnectionLimits, RateLimiter, Source, TransportStats,
};
use self::tls::Tls;
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

/// Identifies one TCP or TLS connection for the lifetime of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(u64);

#[cfg(test)]
impl ConnectionId {
    /// A connection id for sans-IO tests.
    pub(crate) fn for_test(id: u64) -> ConnectionId {
        ConnectionId(id)
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// The stream transports: one connection table and serve loop for all;
/// TLS is a layer on TCP, WebSocket (RFC 7118) a framing on either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Plain TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
    /// WebSocket over TCP.
    Ws,
    /// WebSocket over TLS.
    Wss,
}

impl Stream {
    /// As in logs.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Tcp => "TCP",
            Stream::Tls => "TLS",
            Stream::Ws => "WS",
            Stream::Wss => "WSS",
        }
    }

    /// The transport, as a Via names it.
    pub fn transport(self) -> Transport {
        match self {
            Stream::Tcp => Transport::Tcp,
            Stream::Tls => Transport::Tls,
            Stream::Ws => Transport::Ws,
            Stream::Wss => Transport::Wss,
        }
    }

    /// Whether TLS carries it.
    pub fn is_secure(self) -> bool {
        matches!(self, Stream::Tls | Stream::Wss)
    }

    /// Whether it is WebSocket-framed.
    pub fn is_websocket(self) -> bool {
        matches!(self, Stream::Ws | Stream::Wss)
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
    /// A message read from a stream connection.
    Stream {
        /// TCP, TLS, WS or WSS.
        kind: Stream,
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
            Flow::Udp { remote } | Flow::Stream { remote, .. } => *remote,
        }
    }

    /// The transport, as named in a Via.
    pub fn transport(&self) -> Transport {
        match self {
            Flow::Udp { .. } => Transport::Udp,
            Flow::Stream { kind, .. } => kind.transport(),
        }
    }

    /// Whether it is a stream (no retransmissions, §17.1.1.2).
    pub fn is_reliable(&self) -> bool {
        !matches!(self, Flow::Udp { .. })
    }

    /// Where a reply on the same flow goes: the same connection for a stream.
    pub fn reply_destination(&self) -> Destination {
        match *self {
            Flow::Udp { remote } => Destination::Udp(remote),
            Flow::Stream {
                kind,
                remote,
                connection,
            } => Destination::Stream {
                kind,
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
    /// A stream connection of `kind` to `remote`: `connection` when it is
    /// still open, else any open connection of that kind to `remote`,
    /// else a new one (TCP and TLS only: a WebSocket is opened by its
    /// client; a new TLS connection checks that the server's certificate
    /// names `remote`'s address).
    Stream {
        /// TCP, TLS, WS or WSS.
        kind: Stream,
        /// The peer's address.
        remote: SocketAddr,
        /// The connection to prefer.
        connection: Option<ConnectionId>,
    },
}

impl Destination {
    /// `remote` over `transport` (as a Via or a `transport` parameter
    /// names it), on any open connection; an unknown transport as UDP,
    /// SCTP as TCP.
    pub fn over(transport: &Transport, remote: SocketAddr) -> Destination {
        let kind = match transport {
            Transport::Udp | Transport::Other(_) => return Destination::Udp(remote),
            Transport::Tls => Stream::Tls,
            Transport::Ws => Stream::Ws,
            Transport::Wss => Stream::Wss,
            Transport::Tcp | Transport::Sctp => Stream::Tcp,
        };
        Destination::Stream {
            kind,
            remote,
            connection: None,
        }
    }

    /// The peer's address.
    pub fn remote(&self) -> SocketAddr {
        match self {
            Destination::Udp(remote) | Destination::Stream { remote, .. } => *remote,
        }
    }

    /// Whether the transport is reliable (no retransmission timers).
    pub fn is_reliable(&self) -> bool {
        !matches!(self, Destination::Udp(_))
    }

    /// The transport, as named in a Via.
    pub fn transport(&self) -> Transport {
        match self {
            Destination::Udp(_) => Transport::Udp,
            Destination::Stream { kind, .. } => kind.transport(),
        }
    }

    /// The `transport` URI parameter that makes a peer come back the same
    /// way (empty for UDP, the default).
    pub fn uri_param(&self) -> &'static str {
        match self {
            Destination::Udp(_) => "",
            Destination::Stream { kind, .. } => match kind {
                Stream::Tcp => ";transport=tcp",
                Stream::Tls => ";transport=tls",
                Stream::Ws => ";transport=ws",
                Stream::Wss => ";transport=wss",
            },
        }
    }

    /// The stream kind, for a stream destination.
    pub fn stream(&self) -> Option<Stream> {
        match self {
            Destination::Udp(_) => None,
            Destination::Stream { kind, .. } => Some(*kind),
        }
    }
}

/// How this server names itself in Via, Contact and Record-Route: the
/// advertised host, the UDP/TCP port and the ports of the other
/// transports it serves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Advertised {
    /// Host name or address (an IPv6 address in brackets).
    pub host: String,
    /// The UDP and TCP port.
    pub port: u16,
    /// The TLS port, when TLS is served.
    pub tls_port: Option<u16>,
    /// The WebSocket port, when served.
    pub ws_port: Option<u16>,
    /// The secure WebSocket port, when served.
    pub wss_port: Option<u16>,
}

impl Advertised {
    /// `host:port` for a message sent to `destination`: the port of its
    /// transport (so that a new connection to the sent-by, §18.2.2, is of
    /// that transport too).
    pub fn sent_by(&self, destination: &Destination) -> String {
        let port = match destination.stream() {
            Some(Stream::Tls) => self.tls_port,
            Some(Stream::Ws) => self.ws_port,
            Some(Stream::Wss) => self.wss_port,
            _ => None,
        };
        match port {
            Some(port) => format!("{}:{port}", self.host),
            None => self.to_string(),
        }
    }

    /// Our Contact URI for a peer reached at `destination`, with the
    /// transport it must come back over (RFC 3261 §8.1.1.8).
    pub fn contact_uri(&self, user: &str, destination: &Destination) -> String {
        format!(
            "sip:{user}@{}{}",
            self.sent_by(destination),
            destination.uri_param()
        )
    }
}

impl fmt::Display for Advertised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
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
    /// TLS, served on its own address, when configured.
    pub tls: Option<(SocketAddr, Tls)>,
    /// SIP over WebSocket (RFC 7118), served on this address.
    pub ws: Option<SocketAddr>,
    /// SIP over secure WebSocket, served on this address with `tls`'s
    /// certificate.
    pub wss: Option<SocketAddr>,
}

#[cfg(test)]
impl TransportConfig {
    /// Loopback on a free port, ten connections, no rate limit, TLS and
    /// WebSocket off: what the transport tests start from.
    pub(crate) fn for_test() -> TransportConfig {
        TransportConfig {
            bind: "127.0.0.1:0".parse().expect("address"),
            limits: FramingLimits::default(),
            tcp_idle_timeout: Duration::from_secs(30),
            tcp_message_timeout: Duration::from_secs(30),
            tcp_connect_timeout: Duration::from_secs(1),
            tcp_connections: ConnectionLimits {
                max_total: 10,
                max_per_source: 10,
            },
            source_rate: 0,
            source_rate_exempt: Vec::new(),
            tcp_buffer_budget: 100_000,
            tls: None,
            ws: None,
            wss: None,
        }
    }
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
    /// The stream listeners other than TCP's, and their addresses.
    listening: Vec<(Stream, SocketAddr)>,
    /// Non-blocking: read by the SIP core's thread, written by any.
    udp: UdpSocket,
    connections: Mutex<Connections>,
    next_connection: AtomicU64,
    /// Octets of incomplete messages held by all TCP connections.
    tcp_buffered: AtomicUsize,
    limiter: Mutex<RateLimiter>,
    stats: Arc<TransportStats>,
    /// The origin of [`Connection::held_until`].
    started: std::time::Instant,
    sink: InboundSink,
    runtime: tokio::runtime::Handle,
}

#[derive(Default)]
struct Connections {
    by_id: HashMap<ConnectionId, Connection>,
    by_remote: HashMap<(Stream, SocketAddr), ConnectionId>,
    count: ConnectionCount,
}

struct Connection {
    sender: mpsc::Sender<Vec<u8>>,
    /// The source whose share it takes; `None` for connections we opened.
    source: Option<Source>,
    /// Kept open until then however idle (milliseconds since the
    /// transports started; 0: not held): its phone is registered over it.
    held_until: Arc<AtomicU64>,
}

impl fmt::Debug for Transports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transports")
            .field("local", &self.inner.local)
            .finish_non_exhaustive()
    }
}

impl Transports {
    /// Binds UDP and TCP on `config.bind` (dual-stack when it is `::`),
    /// and TLS on its address when configured, and spawns the stream
    /// transports' tasks on the current tokio runtime; the UDP socket is
    /// read by whoever calls [`Transports::receive_datagram`] (the SIP
    /// core). Refusals and drops are counted in `stats` (shared with the
    /// core's input queue).
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
        let wanted = [
            (Stream::Tls, config.tls.as_ref().map(|(addr, _)| *addr)),
            (Stream::Ws, config.ws),
            (Stream::Wss, config.wss.filter(|_| config.tls.is_some())),
        ];
        let mut listeners = Vec::new();
        let mut listening = Vec::new();
        for (kind, addr) in wanted {
            let Some(addr) = addr else { continue };
            let listener = tcp::bind(addr, kind.name())?;
            let local = listener
                .local_addr()
                .map_err(|source| TransportError::Configure {
                    transport: kind.name(),
                    source,
                })?;
            listeners.push((kind, listener));
            listening.push((kind, local));
        }
        let limiter =
            RateLimiter::new(config.source_rate).exempting(config.source_rate_exempt.clone());
        let transports = Transports {
            inner: Arc::new(Inner {
                config,
                local,
                listening,
                udp,
                connections: Mutex::new(Connections::default()),
                next_connection: AtomicU64::new(1),
                tcp_buffered: AtomicUsize::new(0),
                limiter: Mutex::new(limiter),
                stats: Arc::clone(&stats),
                started: std::time::Instant::now(),
                sink,
                runtime: tokio::runtime::Handle::current(),
            }),
        };
        tokio::spawn(tcp::accept(transports.clone(), listener, Stream::Tcp));
        for (kind, listener) in listeners {
            tokio::spawn(tcp::accept(transports.clone(), listener, kind));
        }
        tokio::spawn(report_losses(stats));
        Ok(transports)
    }

    /// The bound address (both transports share it).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// The TLS listener's address, when TLS is served.
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.local_addr_of(Stream::Tls)
    }

    /// The address `kind` is served on (TCP's is [`Transports::local_addr`]).
    pub fn local_addr_of(&self, kind: Stream) -> Option<SocketAddr> {
        match kind {
            Stream::Tcp => Some(self.inner.local),
            _ => self
                .inner
                .listening
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, addr)| *addr),
        }
    }

    /// Number of open TCP and TLS connections.
    pub fn tcp_connections(&self) -> usize {
        self.connections().by_id.len()
    }

    /// Keeps a stream connection open until `until`, however idle: a
    /// phone registered over it is reached only through it.
    pub fn hold_open(&self, connection: ConnectionId, until: std::time::Instant) {
        if let Some(open) = self.connections().by_id.get(&connection) {
            let millis = until
                .saturating_duration_since(self.inner.started)
                .as_millis();
            open.held_until
                .fetch_max(u64::try_from(millis).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
    }

    /// When a connection is held open until, if it is.
    fn held_until(&self, held: &AtomicU64) -> Option<std::time::Instant> {
        match held.load(Ordering::Relaxed) {
            0 => None,
            millis => Some(self.inner.started + Duration::from_millis(millis)),
        }
    }

    /// The TLS settings in force (for reloading the certificate).
    pub fn tls(&self) -> Option<&Tls> {
        self.inner.config.tls.as_ref().map(|(_, tls)| tls)
    }

    /// Sends a message without blocking. UDP sends at once; TCP queues on
    /// the connection's writer, opening a connection when none is open. A
    /// failure is logged and the message dropped: SIP's retransmissions and
    /// transaction timeouts recover from lost messages.
    pub fn send(&self, outbound: Outbound) {
        match outbound.destination {
            Destination::Udp(remote) => udp::send(self, remote, &outbound.bytes),
            Destination::Stream {
                kind,
                remote,
                connection,
            } => tcp::send(self, kind, remote, connection, outbound.bytes),
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

    /// Reads one datagram from the UDP socket without blocking, into
    /// `buffer` (at least [`MAX_DATAGRAM`] + 1 octets); a source over its
    /// rate is dropped before anything is copied.
    pub fn receive_datagram(&self, buffer: &mut [u8]) -> Received {
        udp::receive(self, buffer)
    }

    /// The UDP socket, to wait on until it is readable.
    pub fn udp_socket(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.inner.udp.as_fd()
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
        match tcp::bind(SocketAddr::new(bind.ip(), port), "TCP") {
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

/// Where a request to a `sip:` or `sips:` URI goes: its host must be an
/// IP address (no DNS yet); the transport is the `transport` parameter's
/// (UDP without one), TLS for `sips:` (RFC 3261 §26.2.2: TLS on every
/// hop, whatever the parameter says); the port is the URI's, else 5061
/// for TLS and 5060 otherwise.
pub fn uri_destination(uri: &crate::sip::Uri) -> Result<Destination, (u16, String)> {
    let transport = match uri.scheme() {
        crate::sip::Scheme::Sips => Transport::Tls,
        crate::sip::Scheme::Sip => match uri.param("transport").flatten() {
            None => Transport::Udp,
            Some(name) => match Transport::from_token(&name) {
                transport @ (Transport::Udp | Transport::Tcp | Transport::Tls) => transport,
                _ => return Err((503, "Service Unavailable (transport not served)".to_owned())),
            },
        },
        _ => return Err((416, "Unsupported URI Scheme".to_owned())),
    };
    let ip = uri
        .host()
        .and_then(|h| h.ip())
        .ok_or((503, "Service Unavailable".to_owned()))?;
    let remote = SocketAddr::new(ip, uri.port().unwrap_or(transport.default_port()));
    Ok(Destination::over(&transport, remote))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::Uri;

    fn destination(uri: &str) -> Result<Destination, (u16, String)> {
        uri_destination(&Uri::parse(uri).expect("test URI"))
    }

    #[test]
    fn a_uris_scheme_and_transport_parameter_choose_the_transport_and_default_port() {
        let at = |text: &str| text.parse::<SocketAddr>().expect("address");
        assert_eq!(
            destination("sip:bob@192.0.2.2"),
            Ok(Destination::Udp(at("192.0.2.2:5060")))
        );
        assert_eq!(
            destination("sip:bob@192.0.2.2;transport=TCP"),
            Ok(Destination::over(&Transport::Tcp, at("192.0.2.2:5060")))
        );
        assert_eq!(
            destination("sip:bob@192.0.2.2;transport=tls"),
            Ok(Destination::Stream {
                kind: Stream::Tls,
                remote: at("192.0.2.2:5061"),
                connection: None
            })
        );
        // sips: is TLS whatever the parameter says (RFC 3261 §26.2.2).
        assert_eq!(
            destination("sips:bob@192.0.2.2:5071;transport=tcp"),
            Ok(Destination::over(&Transport::Tls, at("192.0.2.2:5071")))
        );
        assert_eq!(
            destination("sip:bob@192.0.2.2;transport=ws").map_err(|e| e.0),
            Err(503)
        );
        assert_eq!(
            destination("sip:bob@trunk.example").map_err(|e| e.0),
            Err(503)
        );
        assert_eq!(destination("tel:+15551234").map_err(|e| e.0), Err(416));
    }

    #[test]
    fn via_and_contact_name_the_tls_port_for_tls_and_the_plain_port_otherwise() {
        let local = Advertised {
            host: "203.0.113.5".to_owned(),
            port: 5060,
            tls_port: Some(5061),
            ws_port: Some(8080),
            wss_port: None,
        };
        let remote: SocketAddr = "192.0.2.2:5061".parse().expect("address");
        let tls = Destination::over(&Transport::Tls, remote);
        let tcp = Destination::over(&Transport::Tcp, remote);
        let udp = Destination::over(&Transport::Udp, remote);
        assert_eq!(local.sent_by(&tls), "203.0.113.5:5061");
        assert_eq!(local.sent_by(&udp), "203.0.113.5:5060");
        assert_eq!(
            local.contact_uri("sb", &tls),
            "sip:sb@203.0.113.5:5061;transport=tls"
        );
        assert_eq!(
            local.contact_uri("sb", &tcp),
            "sip:sb@203.0.113.5:5060;transport=tcp"
        );
        assert_eq!(local.contact_uri("sb", &udp), "sip:sb@203.0.113.5:5060");
        assert_eq!(tls.transport(), Transport::Tls);
        let ws = Destination::over(&Transport::Ws, remote);
        assert_eq!(
            local.contact_uri("sb", &ws),
            "sip:sb@203.0.113.5:8080;transport=ws"
        );
        // Not served: the plain port stands in.
        let wss = Destination::over(&Transport::Wss, remote);
        assert_eq!(local.sent_by(&wss), "203.0.113.5:5060");
    }
}
