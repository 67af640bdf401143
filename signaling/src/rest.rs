//! The REST API: JSON for the dashboard and operators, Prometheus metrics.
//!
//! Every endpoint is listed once, in [`routes`], with who may call it; the
//! router is built from that list and the OpenAPI document
//! (`/api/v1/openapi.json`) is checked against it by a test. Errors are
//! [`AppError`]s: JSON `{"error": code, "detail": text}` with the status
//! that fits, never an internal message.

mod access;
mod error;
mod managers;
mod openapi;
mod registrations;
#[cfg(test)]
mod tests;

pub use access::{check_token, ApiAccess, Tokens, TokensError};
pub use error::AppError;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, Method};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post, MethodRouter};
use axum::{middleware, Json, Router};
use serde::Serialize;

use crate::rtpmanager_pool::{Health, ManagerPool};
use crate::uas::driver::CoreHandle;

/// Shared state of the REST handlers.
#[derive(Clone, Debug)]
pub struct ApiState {
    pub pool: ManagerPool,
    /// The SIP core; `None` where no SIP server runs (handler tests).
    pub sip: Option<CoreHandle>,
    /// Who may call the API.
    pub access: Arc<ApiAccess>,
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
            endpoint(Method::GET, "/metrics", Guard::Metrics),
            get(metrics),
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
}

async fn health(State(state): State<ApiState>) -> Json<HealthBody> {
    let statuses = state.pool.statuses();
    let healthy = statuses
        .iter()
        .filter(|s| s.health == Health::Healthy)
        .count();
    Json(HealthBody {
        status: if healthy > 0 { "ok" } else { "degraded" },
        version: env!("CARGO_PKG_VERSION"),
        rtpmanagers_healthy: healthy,
        rtpmanagers_total: statuses.len(),
    })
}

async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    use std::fmt::Write;
    let mut out = String::new();
    out.push_str("# HELP switchboard_rtpmanager_up Whether the RTP manager answers health checks and accepts calls.\n");
    out.push_str("# TYPE switchboard_rtpmanager_up gauge\n");
    for s in state.pool.statuses() {
        let up = u8::from(s.health == Health::Healthy);
        let _ = writeln!(
            out,
            "switchboard_rtpmanager_up{{endpoint=\"{}\"}} {up}",
            escape_label(&s.endpoint)
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// Escapes a Prometheus label value.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
