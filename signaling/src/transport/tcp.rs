//! The TCP transport: stream framing by Content-Length (RFC 3261 §18.3),
//! connection reuse and idle timeout.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{
    canonical, for_socket, socket_for, ConnectionId, Flow, Inbound, TransportError, Transports,
    CONNECTION_QUEUE,
};
use crate::sip::{build_error_response, ParseError, StreamFramer};

/// Backlog of the listening socket.
const BACKLOG: i32 = 1024;

/// Octets read per system call.
const READ_CHUNK: usize = 16 * 1024;

pub(super) fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, TransportError> {
    let socket = socket_for(addr, socket2::Type::STREAM, "TCP")?;
    socket
        .listen(BACKLOG)
        .map_err(|source| TransportError::Bind {
            transport: "TCP",
            addr,
            source,
        })?;
    Ok(socket.into())
}

/// Accepts connections until the listener fails.
pub(super) async fn accept(transports: Transports, listener: std::net::TcpListener) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "cannot register the TCP listener; SIP over TCP is off");
            return;
        }
    };
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                let remote = canonical(remote);
                let (id, queue) = register(&transports, remote);
                tracing::debug!(%remote, connection = %id, "TCP connection accepted");
                tokio::spawn(serve(transports.clone(), stream, remote, id, queue));
            }
            Err(error) => {
                // Out of file descriptors and similar: keep listening.
                tracing::warn!(%error, "TCP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

fn register(
    transports: &Transports,
    remote: SocketAddr,
) -> (ConnectionId, mpsc::Receiver<Vec<u8>>) {
    let id = transports.next_connection_id();
    let (sender, queue) = mpsc::channel(CONNECTION_QUEUE);
    let mut connections = transports.connections();
    connections.by_id.insert(id, (remote, sender));
    connections.by_remote.insert(remote, id);
    (id, queue)
}

fn unregister(transports: &Transports, remote: SocketAddr, id: ConnectionId) {
    let mut connections = transports.connections();
    connections.by_id.remove(&id);
    if connections.by_remote.get(&remote) == Some(&id) {
        connections.by_remote.remove(&remote);
    }
}

/// Queues `bytes` on `preferred`, else on any connection to `remote`, else
/// on a new connection to `remote`.
pub(super) fn send(
    transports: &Transports,
    remote: SocketAddr,
    preferred: Option<ConnectionId>,
    bytes: Vec<u8>,
) {
    let connections = transports.connections();
    let id = preferred
        .filter(|id| connections.by_id.contains_key(id))
        .or_else(|| connections.by_remote.get(&remote).copied());
    if let Some(id) = id {
        if let Some((_, sender)) = connections.by_id.get(&id) {
            if let Err(error) = sender.try_send(bytes) {
                // A peer that does not read its responses gets no more.
                tracing::debug!(%remote, connection = %id, %error, "TCP queue full or closed; message dropped");
            }
        }
        return;
    }
    drop(connections);
    let (id, queue) = register(transports, remote);
    let queued = transports
        .connections()
        .by_id
        .get(&id)
        .map(|(_, sender)| sender.try_send(bytes));
    if let Some(Err(error)) = queued {
        tracing::debug!(%remote, %error, "cannot queue on a new TCP connection");
    }
    let task = transports.clone();
    transports.inner.runtime.spawn(async move {
        let timeout = task.inner.config.tcp_connect_timeout;
        let target = for_socket(task.inner.local, remote);
        match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
            Ok(Ok(stream)) => {
                tracing::debug!(%remote, connection = %id, "TCP connection opened");
                serve(task, stream, remote, id, queue).await;
            }
            Ok(Err(error)) => {
                tracing::debug!(%remote, %error, "TCP connect failed; queued messages dropped");
                unregister(&task, remote, id);
            }
            Err(_) => {
                tracing::debug!(%remote, "TCP connect timed out; queued messages dropped");
                unregister(&task, remote, id);
            }
        }
    });
}

/// Reads, frames and delivers messages, writes queued ones, and closes on
/// EOF, error, framing failure or idleness.
async fn serve(
    transports: Transports,
    stream: TcpStream,
    remote: SocketAddr,
    id: ConnectionId,
    mut queue: mpsc::Receiver<Vec<u8>>,
) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let mut framer = StreamFramer::new(transports.inner.config.limits);
    let idle = transports.inner.config.tcp_idle_timeout;
    let mut deadline = Instant::now() + idle;
    let mut chunk = vec![0u8; READ_CHUNK];
    let reason = loop {
        tokio::select! {
            read = reader.read(&mut chunk) => {
                let len = match read {
                    Ok(0) => break "closed by peer",
                    Ok(len) => len,
                    Err(_) => break "read error",
                };
                deadline = Instant::now() + idle;
                framer.push(&chunk[..len]);
                match drain(&transports, &mut framer, remote, id) {
                    Ok(pings) => {
                        // RFC 5626 §4.4.1: a double-CRLF ping gets a CRLF pong.
                        for _ in 0..pings {
                            if writer.write_all(b"\r\n").await.is_err() {
                                break;
                            }
                        }
                    }
                    Err(answer) => {
                        if let Some(answer) = answer {
                            let _ = writer.write_all(&answer).await;
                        }
                        break "framing error";
                    }
                }
            }
            queued = queue.recv() => {
                let Some(bytes) = queued else { break "queue closed" };
                if writer.write_all(&bytes).await.is_err() {
                    break "write error";
                }
                tracing::trace!(%remote, connection = %id, len = bytes.len(), "TCP message sent");
                deadline = Instant::now() + idle;
            }
            () = tokio::time::sleep_until(deadline) => break "idle timeout",
        }
    };
    unregister(&transports, remote, id);
    let _ = writer.shutdown().await;
    tracing::debug!(%remote, connection = %id, reason, "TCP connection closed");
}

/// Delivers every complete message in the framer. Returns the number of
/// keep-alive pings, or on a framing error the response to send, if any.
fn drain(
    transports: &Transports,
    framer: &mut StreamFramer,
    remote: SocketAddr,
    id: ConnectionId,
) -> Result<usize, Option<Vec<u8>>> {
    loop {
        match framer.next_message() {
            Ok(Some(bytes)) => {
                tracing::trace!(%remote, connection = %id, len = bytes.len(), "TCP message received");
                transports.deliver(Inbound {
                    flow: Flow::Tcp {
                        remote,
                        connection: id,
                    },
                    bytes,
                });
            }
            Ok(None) => return Ok(framer.take_pings()),
            Err(error) => {
                tracing::debug!(%remote, connection = %id, %error, "TCP framing failed");
                let answer = error.status().and_then(|_| {
                    build_error_response(&ParseError::from_frame(error, framer.failed_head()))
                });
                return Err(answer);
            }
        }
    }
}
