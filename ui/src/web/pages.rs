//! The pages (overview, calls, call, registrations, managers, backends),
//! their tables and the operator's actions.

use askama::Template;
use askama_web::WebTemplate;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use serde::Deserialize;

use crate::api::{share_label, Call, Registration};
use crate::backends::{encode, BackendView};
use crate::client::ClientError;
use crate::ladder::{self, Ladder};
use crate::session::Session;

use super::login::{check_csrf, CsrfForm};
use super::{is_htmx, Layout, UiState};

// ---------------------------------------------------------------- overview

/// The overview's figures over every backend.
#[derive(Debug)]
pub(super) struct Totals {
    pub calls: usize,
    pub calls_per_second: String,
    pub registrations: usize,
    pub managers_healthy: usize,
    pub managers_total: usize,
    pub kernel_share: String,
    pub backends_up: usize,
    pub backends_total: usize,
}

impl Totals {
    pub(super) fn of(backends: &[BackendView]) -> Totals {
        let per_second: Vec<f64> = backends
            .iter()
            .filter(|b| b.reachable())
            .filter_map(BackendView::calls_per_second)
            .collect();
        Totals {
            calls: backends.iter().map(|b| b.calls_total).sum(),
            calls_per_second: if per_second.is_empty() {
                "—".into()
            } else {
                format!("{:.2}", per_second.iter().sum::<f64>())
            },
            registrations: registration_rows(backends, "").len(),
            managers_healthy: backends.iter().map(BackendView::managers_healthy).sum(),
            managers_total: backends.iter().map(|b| b.managers.len()).sum(),
            kernel_share: share_label(crate::api::kernel_share(
                backends
                    .iter()
                    .flat_map(|b| b.calls.iter())
                    .flat_map(|c| c.legs.iter()),
            )),
            backends_up: backends.iter().filter(|b| b.reachable()).count(),
            backends_total: backends.len(),
        }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "overview.html")]
struct OverviewPage {
    layout: Layout,
    totals: Totals,
    backends: Vec<BackendView>,
}

#[derive(Template)]
#[template(path = "overview_body.html")]
pub(super) struct OverviewBody {
    pub(super) totals: Totals,
    pub(super) backends: Vec<BackendView>,
}

pub(super) async fn overview(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
) -> Response {
    let backends = state.backends.snapshot();
    OverviewPage {
        layout: Layout::of(&session, "overview"),
        totals: Totals::of(&backends),
        backends,
    }
    .into_response()
}

// ---------------------------------------------------------------- calls

#[derive(Template, WebTemplate)]
#[template(path = "calls.html")]
struct CallsPage {
    layout: Layout,
    backends: Vec<BackendView>,
    count: usize,
    csrf: String,
}

#[derive(Template)]
#[template(path = "calls_table.html")]
pub(super) struct CallsTable {
    pub(super) backends: Vec<BackendView>,
    pub(super) count: usize,
    pub(super) csrf: String,
}

pub(super) async fn calls(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
) -> Response {
    let backends = state.backends.snapshot();
    CallsPage {
        layout: Layout::of(&session, "calls"),
        count: backends.iter().map(|b| b.calls.len()).sum(),
        backends,
        csrf: session.csrf.clone(),
    }
    .into_response()
}

#[derive(Template, WebTemplate)]
#[template(path = "call.html")]
struct CallPage {
    layout: Layout,
    backend: String,
    backend_query: String,
    ended: bool,
    call: Call,
    ladder: Ladder,
    columns: [u32; 3],
    width: u32,
    sip_truncated: bool,
    sdp: Vec<(&'static str, String)>,
}

/// A call's media figures, pushed on its page as polls bring them.
#[derive(Template)]
#[template(path = "call_media.html")]
pub(super) struct CallMedia {
    pub(super) call: Call,
    pub(super) ended: bool,
}

impl CallMedia {
    /// The call `id` of backend `name` as the dashboard knows it; `None`
    /// while that cannot be told (the backend or its calls API does not
    /// answer), so the page keeps what it shows.
    pub(super) fn of(state: &UiState, name: &str, id: &str) -> Option<CallMedia> {
        let backend = state
            .backends
            .snapshot()
            .into_iter()
            .find(|b| b.name == name)?;
        if !backend.reachable() || backend.calls_error.is_some() {
            return None;
        }
        Some(match backend.calls.into_iter().find(|c| c.id == id) {
            Some(call) => CallMedia { call, ended: false },
            None => CallMedia {
                call: Call::default(),
                ended: true,
            },
        })
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "call_gone.html")]
struct MessagePage {
    layout: Layout,
    message: String,
}

pub(super) async fn call_detail(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
    Path((backend, id)): Path<(String, String)>,
) -> Response {
    let message = |status: StatusCode, message: String| {
        (
            status,
            MessagePage {
                layout: Layout::of(&session, "calls"),
                message,
            },
        )
            .into_response()
    };
    let Some(index) = state.backends.index_of(&backend) else {
        return message(
            StatusCode::NOT_FOUND,
            format!("No backend is named {backend}."),
        );
    };
    match state.backends.call_detail(index, &id).await {
        Ok(detail) => {
            let none = || "—".to_owned();
            let sdp = detail.sdp;
            CallPage {
                layout: Layout::of(&session, "calls"),
                backend_query: encode(&backend),
                ended: false,
                backend,
                ladder: Ladder::of(&detail.sip),
                columns: ladder::COLUMNS,
                width: ladder::WIDTH,
                sip_truncated: detail.sip_truncated,
                sdp: vec![
                    (
                        "caller's offer (in, leg a)",
                        sdp.a_offer.unwrap_or_else(none),
                    ),
                    (
                        "offer sent to the callee (out, leg b)",
                        sdp.b_offer.unwrap_or_else(none),
                    ),
                    (
                        "callee's answer (in, leg b)",
                        sdp.b_answer.unwrap_or_else(none),
                    ),
                    (
                        "answer sent to the caller (out, leg a)",
                        sdp.a_answer.unwrap_or_else(none),
                    ),
                ],
                call: detail.call,
            }
            .into_response()
        }
        Err(ClientError::NotFound(_)) => message(
            StatusCode::NOT_FOUND,
            format!("This call has ended or is unknown to {backend}."),
        ),
        Err(e) => message(StatusCode::BAD_GATEWAY, format!("{backend}: {e}")),
    }
}

#[derive(Template)]
#[template(path = "flash.html")]
struct Flash {
    kind: &'static str,
    message: String,
}

/// The answer to an operator's action: a flash message for htmx (always
/// 200, so htmx swaps it in), a redirect or an error page otherwise.
fn action_answer(
    headers: &HeaderMap,
    session: &Session,
    result: Result<String, String>,
    back_to: &'static str,
) -> Response {
    if is_htmx(headers) {
        let (kind, message) = match result {
            Ok(message) => ("ok", message),
            Err(message) => ("error", message),
        };
        return match (Flash { kind, message }).render() {
            Ok(html) => axum::response::Html(html).into_response(),
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        };
    }
    match result {
        Ok(_) => Redirect::to(back_to).into_response(),
        Err(message) => (
            StatusCode::BAD_GATEWAY,
            MessagePage {
                layout: Layout::of(session, "calls"),
                message,
            },
        )
            .into_response(),
    }
}

fn backend_index(state: &UiState, name: &str) -> Result<usize, String> {
    state
        .backends
        .index_of(name)
        .ok_or_else(|| format!("no backend is named {name}"))
}

pub(super) async fn hang_up(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
    Path((backend, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: CsrfForm = serde_urlencoded::from_bytes(&body).unwrap_or(CsrfForm {
        csrf: String::new(),
    });
    if let Err(refusal) = check_csrf(&session, &headers, &form.csrf) {
        return refusal.into_response();
    }
    let result = async {
        let index = backend_index(&state, &backend)?;
        let path = format!("/api/v1/calls/{}", encode(&id));
        state
            .backends
            .act(index, Method::DELETE, &path, Some(&session.token))
            .await
            .map_err(|e| format!("hang-up failed: {e}"))?;
        tracing::info!(backend = %backend, call = %id, "operator hung up a call");
        Ok("Hang-up sent: the call is ending.".to_owned())
    }
    .await;
    action_answer(&headers, &session, result, "/calls")
}

// ---------------------------------------------------------------- registrations

#[derive(Deserialize, Default)]
pub(super) struct AorFilter {
    #[serde(default)]
    pub(super) aor: String,
}

/// What a live view shows: the registrations' filter, or the call.
#[derive(Deserialize, Default)]
pub(super) struct LiveQuery {
    #[serde(default)]
    pub(super) aor: String,
    #[serde(default)]
    pub(super) backend: String,
    #[serde(default)]
    pub(super) id: String,
}

/// The bindings whose AOR contains `filter` (case-insensitive), with their
/// backend's name. Servers sharing registrations (each binding names the
/// node it came through) all list every binding: it is shown once, with
/// the first backend that listed it.
fn registration_rows(backends: &[BackendView], filter: &str) -> Vec<(String, Registration)> {
    let filter = filter.to_lowercase();
    let mut shared_seen = std::collections::HashSet::new();
    backends
        .iter()
        .flat_map(|b| b.registrations.iter().map(move |r| (b.name.clone(), r)))
        .filter(|(_, r)| r.aor.to_lowercase().contains(&filter))
        .filter(|(_, r)| r.node.is_none() || shared_seen.insert((r.aor.clone(), r.contact.clone())))
        .map(|(name, r)| (name, r.clone()))
        .collect()
}

#[derive(Template, WebTemplate)]
#[template(path = "registrations.html")]
struct RegistrationsPage {
    layout: Layout,
    filter: String,
    filter_query: String,
    rows: Vec<(String, Registration)>,
    count: usize,
    backends: Vec<BackendView>,
    csrf: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "registrations_live.html")]
struct RegistrationsLive {
    filter: String,
    filter_query: String,
    rows: Vec<(String, Registration)>,
    count: usize,
    backends: Vec<BackendView>,
    csrf: String,
}

#[derive(Template)]
#[template(path = "registrations_table.html")]
pub(super) struct RegistrationsTable {
    pub(super) filter: String,
    pub(super) rows: Vec<(String, Registration)>,
    pub(super) count: usize,
    pub(super) backends: Vec<BackendView>,
    pub(super) csrf: String,
}

pub(super) fn registrations_table(state: &UiState, filter: &str, csrf: &str) -> RegistrationsTable {
    let backends = state.backends.snapshot();
    let rows = registration_rows(&backends, filter);
    RegistrationsTable {
        filter: filter.to_owned(),
        count: rows.len(),
        rows,
        backends,
        csrf: csrf.to_owned(),
    }
}

pub(super) async fn registrations(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
    Query(filter): Query<AorFilter>,
) -> Response {
    let table = registrations_table(&state, &filter.aor, &session.csrf);
    RegistrationsPage {
        layout: Layout::of(&session, "registrations"),
        filter_query: encode(&table.filter),
        filter: table.filter,
        rows: table.rows,
        count: table.count,
        backends: table.backends,
        csrf: table.csrf,
    }
    .into_response()
}

pub(super) async fn registrations_live(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
    Query(filter): Query<AorFilter>,
) -> Response {
    let table = registrations_table(&state, &filter.aor, &session.csrf);
    RegistrationsLive {
        filter_query: encode(&table.filter),
        filter: table.filter,
        rows: table.rows,
        count: table.count,
        backends: table.backends,
        csrf: table.csrf,
    }
    .into_response()
}

#[derive(Deserialize)]
struct UnregisterForm {
    #[serde(default)]
    csrf: String,
    aor: String,
}

pub(super) async fn unregister(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
    Path(backend): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(form) = serde_urlencoded::from_bytes::<UnregisterForm>(&body) else {
        return (StatusCode::BAD_REQUEST, "aor and csrf expected").into_response();
    };
    if let Err(refusal) = check_csrf(&session, &headers, &form.csrf) {
        return refusal.into_response();
    }
    let result = async {
        let index = backend_index(&state, &backend)?;
        let path = format!("/api/v1/registrations/{}", encode(&form.aor));
        state
            .backends
            .act(index, Method::DELETE, &path, Some(&session.token))
            .await
            .map_err(|e| format!("unregistering {} failed: {e}", form.aor))?;
        tracing::info!(backend = %backend, "operator unregistered an AOR");
        Ok(format!("{} is unregistered.", form.aor))
    }
    .await;
    action_answer(&headers, &session, result, "/registrations")
}

// ---------------------------------------------------------------- managers

#[derive(Template, WebTemplate)]
#[template(path = "managers.html")]
struct ManagersPage {
    layout: Layout,
    backends: Vec<BackendView>,
    csrf: String,
}

#[derive(Template)]
#[template(path = "managers_table.html")]
pub(super) struct ManagersTable {
    pub(super) backends: Vec<BackendView>,
    pub(super) csrf: String,
}

pub(super) async fn managers(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
) -> Response {
    ManagersPage {
        layout: Layout::of(&session, "managers"),
        backends: state.backends.snapshot(),
        csrf: session.csrf.clone(),
    }
    .into_response()
}

#[derive(Deserialize)]
struct ManagerForm {
    #[serde(default)]
    csrf: String,
    id: String,
}

pub(super) async fn drain(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
    Path((backend, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let method = match action.as_str() {
        "drain" => Method::POST,
        "undrain" => Method::DELETE,
        _ => return (StatusCode::NOT_FOUND, "drain or undrain").into_response(),
    };
    let Ok(form) = serde_urlencoded::from_bytes::<ManagerForm>(&body) else {
        return (StatusCode::BAD_REQUEST, "id and csrf expected").into_response();
    };
    if let Err(refusal) = check_csrf(&session, &headers, &form.csrf) {
        return refusal.into_response();
    }
    let result = async {
        let index = backend_index(&state, &backend)?;
        let path = format!("/api/v1/rtpmanagers/{}/drain", encode(&form.id));
        state
            .backends
            .act(index, method, &path, Some(&session.token))
            .await
            .map_err(|e| format!("{action} of {} failed: {e}", form.id))?;
        tracing::info!(backend = %backend, manager = %form.id, %action, "operator changed a drain");
        Ok(if action == "drain" {
            format!("{} is drained: no new calls; its calls go on.", form.id)
        } else {
            format!("{} takes new calls again.", form.id)
        })
    }
    .await;
    action_answer(&headers, &session, result, "/managers")
}

// ---------------------------------------------------------------- backends

#[derive(Template, WebTemplate)]
#[template(path = "backends.html")]
struct BackendsPage {
    layout: Layout,
    backends: Vec<BackendView>,
    poll_secs: u64,
    timeout_ms: u128,
}

pub(super) async fn backends_page(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
) -> Response {
    BackendsPage {
        layout: Layout::of(&session, "backends"),
        backends: state.backends.snapshot(),
        poll_secs: state.poll_interval.as_secs(),
        timeout_ms: state.backend_timeout.as_millis(),
    }
    .into_response()
}
