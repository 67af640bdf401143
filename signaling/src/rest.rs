//! The REST API: JSON for the dashboard and operators, Prometheus metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::rtpmanager_pool::{Health, ManagerPool, ManagerStatus};
use crate::uas::driver::CoreHandle;
use crate::uas::RegistrationView;

/// Shared state of the REST handlers.
#[derive(Clone, Debug)]
pub struct ApiState {
    pub pool: ManagerPool,
    /// The SIP core; `None` where no SIP server runs (handler tests).
    pub sip: Option<CoreHandle>,
}

/// The REST router; tests drive it with `tower::ServiceExt::oneshot`.
pub fn app(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/api/v1/rtpmanagers", get(rtpmanagers))
        .route("/api/v1/registrations", get(registrations))
        .route("/metrics", get(metrics))
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

async fn rtpmanagers(State(state): State<ApiState>) -> Json<Vec<ManagerStatus>> {
    Json(state.pool.statuses())
}

/// The registrar's bindings: aor, contact, expires (seconds left), source.
async fn registrations(
    State(state): State<ApiState>,
) -> Result<Json<Vec<RegistrationView>>, (StatusCode, &'static str)> {
    let unavailable = (StatusCode::SERVICE_UNAVAILABLE, "SIP core not running");
    let core = state.sip.as_ref().ok_or(unavailable)?;
    core.registrations().await.map(Json).ok_or(unavailable)
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
