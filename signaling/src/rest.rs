//! The REST API: JSON for the dashboard and operators, Prometheus metrics.
//!
//! Every endpoint is listed once, in [`routes`], with who may call it; the
//! router is built from that list and the OpenAPI document
//! (`/api/v1/openapi.json`) is checked against it by a test. Errors are
//! [`AppError`]s: JSON `{"error": code, "detail": text}` with the status
//! that fits, never an internal message.

mod access;
mod calls;
mod error;
pub mod events;
mod managers;
mod metrics;
mod openapi;
mod registrations;
mod reload;
#[cfg(test)]
mod tests;

pub use access::{check_token, load_tokens, ApiAccess, Tokens, TokensError};
pub use error::AppError;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::State;
use axum::http::Method;
use axum::routing::{delete, get, post, MethodRouter};
use axum::{middleware, Json, Router};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;
use crate::rtpmanager_pool::{Health, ManagerPool};
use crate::transport::limits::TransportStats;
use crate::uas::driver::CoreHandle;

/// Shared state of the REST handlers.
#[derive(Clone, Debug)]
pub struct ApiState {
    pub pool: ManagerPool,
    /// The SIP core; `None` where no SIP server runs (handler tests).
    pub sip: Option<CoreHandle>,
    /// The SIP transports' counters; `None` where no SIP server runs.
    pub transport: Option<Arc<TransportStats>>,
    /// REST connections closed over `--rest-max-connections`.
    pub rest_refused: Option<Arc<AtomicU64>>,
    /// Who may call the API.
    pub access: Arc<ApiAccess>,
    /// The B2BUA's calls; `None` where no B2BUA runs (no dialplan, handler tests).
    pub calls: Option<crate::b2bua::CallsHandle>,
    /// Moves calls off managers (drain `mode=migrate`); `None` where no
    /// B2BUA runs.
    pub migrations: Option<crate::rtpmanager_moves::Migrations>,
    /// The server's events (calls, registrations, managers).
    pub events: crate::events::EventBus,
    /// The server's counters, for `/metrics` and `/api/v1/stats`.
    pub metrics: Metrics,
    /// Reloads the dialplan and the users file; `None` where no SIP server
    /// runs (handler tests).
    pub reload: Option<crate::reload::Reloader>,
    /// The shared location store's state; `None` when registrations are
    /// this server's own.
    pub location: Option<Arc<crate::registrar::SharedLocation>>,
}

/// Who may call an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    /// Anyone: the load balancer's and the dashboard's liveness check.
    Public,
    /// Holders of a token, when tokens are configured.
    Token,
    /// Like [`Guard::Token`] unless `--metrics-require-token false`.
    Metrics,
}

/// One endpoint of the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The HTTP method.
    pub method: Method,
    /// The path, with `{name}` parameters as in OpenAPI and axum.
    pub path: &'static str,
    /// Who may call it.
    pub guard: Guard,
}

/// Every endpoint with its handler: the one list the router is built from.
fn routes() -> Vec<(Endpoint, MethodRouter<ApiState>)> {
    let endpoint = |method: Method, path: &'static str, guard: Guard| Endpoint {
        method,
        path,
        guard,
    };
    vec![
        (
            endpoint(Method::GET, "/api/v1/health", Guard::Public),
            get(health),
        ),
        (
            endpoint(Method::GET, "/api/v1/openapi.json", Guard::Token),
            get(openapi::document),
        ),
        (
            endpoint(Method::GET, "/api/v1/rtpmanagers", Guard::Token),
            get(managers::list),
        ),
        (
            endpoint(Method::GET, "/api/v1/rtpmanagers/{id}/drain", Guard::Token),
            get(managers::drain_state),
        ),
        (
            endpoint(Method::POST, "/api/v1/rtpmanagers/{id}/drain", Guard::Token),
            post(managers::drain),
        ),
        (
            endpoint(
                Method::DELETE,
                "/api/v1/rtpmanagers/{id}/drain",
                Guard::Token,
            ),
            delete(managers::undrain),
        ),
        (
            endpoint(Method::GET, "/api/v1/calls", Guard::Token),
            get(calls::list),
        ),
        (
            endpoint(Method::GET, "/api/v1/calls/{id}", Guard::Token),
            get(calls::one),
        ),
        (
            endpoint(Method::DELETE, "/api/v1/calls/{id}", Guard::Token),
            delete(calls::hang_up),
        ),
        (
            endpoint(Method::GET, "/api/v1/registrations", Guard::Token),
            get(registrations::list),
        ),
        (
            endpoint(Method::GET, "/api/v1/registrations/{aor}", Guard::Token),
            get(registrations::one),
        ),
        (
            endpoint(Method::DELETE, "/api/v1/registrations/{aor}", Guard::Token),
            delete(registrations::remove),
        ),
        (
            endpoint(Method::GET, "/api/v1/stats", Guard::Token),
            get(metrics::stats),
        ),
        (
            endpoint(Method::GET, "/api/v1/events", Guard::Token),
            get(events::stream),
        ),
        (
            endpoint(Method::POST, "/api/v1/reload/dialplan", Guard::Token),
            post(reload::dialplan),
        ),
        (
            endpoint(Method::POST, "/api/v1/reload/users", Guard::Token),
            post(reload::users),
        ),
        (
            endpoint(Method::GET, "/metrics", Guard::Metrics),
            get(metrics::metrics),
        ),
    ]
}

/// Every endpoint of the API (for the OpenAPI check and the docs).
pub fn endpoints() -> Vec<Endpoint> {
    routes().into_iter().map(|(endpoint, _)| endpoint).collect()
}

/// The REST router; tests drive it with `tower::ServiceExt::oneshot`.
pub fn app(state: ApiState) -> Router {
    let access = Arc::clone(&state.access);
    let mut open = Router::new();
    let mut guarded = Router::new();
    for (endpoint, handler) in routes() {
        let needs_token = match endpoint.guard {
            Guard::Public => false,
            Guard::Token => true,
            Guard::Metrics => access.metrics_require_token(),
        };
        if needs_token {
            guarded = guarded.route(endpoint.path, handler);
        } else {
            open = open.route(endpoint.path, handler);
        }
    }
    let guarded = guarded.route_layer(middleware::from_fn_with_state(
        access,
        access::require_token,
    ));
    open.merge(guarded)
        .fallback(|| async { AppError::NoRoute })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .with_state(state)
}

#[derive(Serialize)]
struct HealthBody {
    status: &'static str,
    version: &'static str,
    rtpmanagers_healthy: usize,
    rtpmanagers_total: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    location_store: Option<LocationHealth>,
}

/// The shared location store, as health reports it.
#[derive(Serialize)]
struct LocationHealth {
    /// Redis's address (no credentials).
    address: String,
    /// This node's id, which other nodes see on its registrations.
    node: String,
    /// The last commit or read reached it.
    up: bool,
    /// Other nodes' changes are being followed.
    following: bool,
}

async fn health(State(state): State<ApiState>) -> Json<HealthBody> {
    let statuses = state.pool.statuses();
    let healthy = statuses
        .iter()
        .filter(|s| s.health == Health::Healthy)
        .count();
    let location_store = state.location.as_ref().map(|l| LocationHealth {
        address: l.address.clone(),
        node: l.node.clone(),
        up: l.store_up(),
        following: l.following(),
    });
    let location_ok = location_store.as_ref().is_none_or(|l| l.up && l.following);
    Json(HealthBody {
        status: if healthy > 0 && location_ok {
            "ok"
        } else {
            "degraded"
        },
        version: env!("CARGO_PKG_VERSION"),
        rtpmanagers_healthy: healthy,
        rtpmanagers_total: statuses.len(),
        location_store,
    })
}

/// The REST API's listener with a cap on open connections: one over the
/// cap is closed at once (and counted), so REST clients cannot take the
/// descriptors the SIP transports need; a connection with nothing read or
/// written for the idle time is closed, so idle clients cannot hold the
/// slots either; failed accepts (out of descriptors) pause and retry
/// without a log line each.
#[derive(Debug)]
pub struct CappedListener {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    idle_timeout: Duration,
    refused: Arc<AtomicU64>,
    accept_errors: u64,
}

impl CappedListener {
    /// Caps `listener` at `max` open connections, each closed after
    /// `idle_timeout` without traffic.
    pub fn new(listener: TcpListener, max: usize, idle_timeout: Duration) -> CappedListener {
        CappedListener {
            listener,
            permits: Arc::new(Semaphore::new(max)),
            idle_timeout,
            refused: Arc::default(),
            accept_errors: 0,
        }
    }

    /// The count of connections closed over the cap.
    pub fn refused(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.refused)
    }
}

impl axum::serve::Listener for CappedListener {
    type Io = CappedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let mut backoff = Duration::from_millis(10);
        loop {
            match self.listener.accept().await {
                Ok((stream, remote)) => match Arc::clone(&self.permits).try_acquire_owned() {
                    Ok(permit) => {
                        return (
                            CappedStream {
                                stream,
                                _permit: permit,
                                idle_timeout: self.idle_timeout,
                                idle: Box::pin(tokio::time::sleep(self.idle_timeout)),
                            },
                            remote,
                        )
                    }
                    Err(_) => {
                        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
                        // Powers of two: a flood gives a handful of lines.
                        if refused.is_power_of_two() {
                            tracing::warn!(
                                refused,
                                "REST connection over --rest-max-connections closed"
                            );
                        }
                    }
                },
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                    ) => {}
                Err(error) => {
                    self.accept_errors += 1;
                    if self.accept_errors.is_power_of_two() {
                        tracing::warn!(%error, errors = self.accept_errors, "REST accept failed; retrying");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// A REST connection holding one of the listener's slots until dropped;
/// reading fails once nothing was read or written for the idle time, which
/// makes the HTTP server close it.
#[derive(Debug)]
pub struct CappedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    idle_timeout: Duration,
    idle: Pin<Box<tokio::time::Sleep>>,
}

impl CappedStream {
    fn active(&mut self) {
        let next = tokio::time::Instant::now() + self.idle_timeout;
        self.idle.as_mut().reset(next);
    }
}

impl AsyncRead for CappedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.active();
                }
                Poll::Ready(result)
            }
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "REST connection idle",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.active();
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.active();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
