//! HTTP handlers of the dashboard: pages, their live streams, the
//! operator's actions, login, and the embedded assets.
//!
//! Pages render from [`Backends`] snapshots and never wait on a backend;
//! only a call's detail page (read when asked) and the operator's actions
//! reach a backend, each bounded by the backend timeout. Live tables come
//! from `/live/{view}`: a Server-Sent Events stream that re-renders the
//! view's table whenever a backend's state changes (htmx's SSE extension
//! swaps it in). Everything from SIP goes through askama's HTML escaping.

use std::convert::Infallible;
use std::sync::LazyLock;
use std::time::Duration;

use askama::Template;
use askama_web::WebTemplate;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::Deserialize;
use tokio_stream::wrappers::ReceiverStream;

use crate::api::{share_label, Call, Registration};
use crate::backends::{encode, BackendView, Backends};
use crate::client::{ClientError, Token};
use crate::ladder::{self, Ladder};
use crate::session::{self, Session, Sessions};

/// Shared state of the handlers.
#[derive(Clone, Debug)]
pub struct UiState {
    pub backends: Backends,
    pub sessions: Sessions,
    pub poll_interval: Duration,
    pub backend_timeout: Duration,
}

impl UiState {
    pub fn new(backends: Backends, poll_interval: Duration, backend_timeout: Duration) -> Self {
        UiState {
            backends,
            sessions: Sessions::default(),
            poll_interval,
            backend_timeout,
        }
    }
}

/// The dashboard's router; tests drive it with `tower::ServiceExt::oneshot`.
pub fn app(state: UiState) -> Router {
    let protected = Router::new()
        .route("/", get(overview))
        .route("/calls", get(calls))
        .route("/calls/{backend}/{id}", get(call_detail))
        .route("/calls/{backend}/{id}/hangup", post(hang_up))
        .route("/registrations", get(registrations))
        .route("/registrations/table", get(registrations_live))
        .route("/registrations/{backend}/unregister", post(unregister))
        .route("/managers", get(managers))
        .route("/managers/{backend}/{action}", post(drain))
        .route("/backends", get(backends_page))
        .route("/live/{view}", get(live))
        .route("/logout", post(logout))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_session,
        ));
    Router::new()
        .route("/login", get(login_page).post(login))
        .route("/healthz", get(|| async { "ok" }))
        .route("/assets/{hash}/{name}", get(asset))
        .merge(protected)
        .layer(middleware::map_response(security_headers))
        .with_state(state)
}

// ---------------------------------------------------------------- assets

struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

/// htmx and its SSE extension, vendored from npm (see assets/README.md),
/// and the dashboard's own script and styles.
const ASSETS: [Asset; 4] = [
    Asset {
        name: "htmx.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../assets/htmx.min.js"),
    },
    Asset {
        name: "sse.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../assets/sse.min.js"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../assets/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../assets/app.css"),
    },
];

/// FNV-1a of an asset: its URL changes with its content, so it can be
/// cached for a year.
fn content_hash(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// The URLs of the assets, for the pages.
#[derive(Debug)]
pub struct AssetUrls {
    pub htmx: String,
    pub sse: String,
    pub app: String,
    pub css: String,
}

static ASSET_URLS: LazyLock<AssetUrls> = LazyLock::new(|| {
    let url = |a: &Asset| format!("/assets/{}/{}", content_hash(a.bytes), a.name);
    AssetUrls {
        htmx: url(&ASSETS[0]),
        sse: url(&ASSETS[1]),
        app: url(&ASSETS[2]),
        css: url(&ASSETS[3]),
    }
});

async fn asset(Path((hash, name)): Path<(String, String)>) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    // An old page may ask for an old hash: serve today's file, uncached.
    let cache = if hash == content_hash(asset.bytes) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, cache),
        ],
        asset.bytes,
    )
        .into_response()
}

/// Headers every answer carries: no script but our own files (an escaped
/// display name could never run anyway; this is the second wall), no
/// framing, no referrer, and pages not cached (they hold CSRF tokens).
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
             frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

// ---------------------------------------------------------------- layout

/// What the base template needs.
#[derive(Debug)]
pub struct Layout {
    pub assets: &'static AssetUrls,
    pub logged_in: bool,
    pub csrf: String,
    pub page: &'static str,
}

impl Layout {
    fn of(session: &Session, page: &'static str) -> Layout {
        Layout {
            assets: &ASSET_URLS,
            logged_in: true,
            csrf: session.csrf.clone(),
            page,
        }
    }

    fn anonymous() -> Layout {
        Layout {
            assets: &ASSET_URLS,
            logged_in: false,
            csrf: String::new(),
            page: "login",
        }
    }
}

fn is_htmx(headers: &HeaderMap) -> bool {
    headers.contains_key("hx-request")
}

// ---------------------------------------------------------------- login

/// Lets a request through only with an open session, which it hands on.
async fn require_session(
    State(state): State<UiState>,
    mut request: Request,
    next: Next,
) -> Response {
    match state.sessions.of(request.headers()) {
        Some(session) => {
            request.extensions_mut().insert(session);
            next.run(request).await
        }
        None if is_htmx(request.headers()) => (
            StatusCode::UNAUTHORIZED,
            [("hx-redirect", "/login")],
            "log in first",
        )
            .into_response(),
        None if request.method() != Method::GET || request.uri().path().starts_with("/live/") => {
            (StatusCode::UNAUTHORIZED, "log in first").into_response()
        }
        None => Redirect::to("/login").into_response(),
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "login.html")]
struct LoginPage {
    layout: Layout,
    error: Option<String>,
}

async fn login_page(State(state): State<UiState>, headers: HeaderMap) -> Response {
    if state.sessions.of(&headers).is_some() {
        return Redirect::to("/").into_response();
    }
    LoginPage {
        layout: Layout::anonymous(),
        error: None,
    }
    .into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(state): State<UiState>, headers: HeaderMap, body: Bytes) -> Response {
    let refused = |status: StatusCode, error: String| {
        (
            status,
            LoginPage {
                layout: Layout::anonymous(),
                error: Some(error),
            },
        )
            .into_response()
    };
    let Ok(form) = serde_urlencoded::from_bytes::<LoginForm>(&body) else {
        return refused(StatusCode::BAD_REQUEST, "enter a token".into());
    };
    let token = form.token.trim();
    let Some(bearer) = Token::new(token).filter(|_| !token.is_empty()) else {
        return refused(
            StatusCode::BAD_REQUEST,
            "a token is visible ASCII without spaces".into(),
        );
    };
    match check_token(&state.backends, &bearer).await {
        Ok(()) => match state.sessions.open(bearer) {
            Ok(id) => {
                tracing::info!("operator logged in");
                (
                    StatusCode::SEE_OTHER,
                    [
                        (
                            header::SET_COOKIE,
                            session::set_cookie(&id, session::over_https(&headers)),
                        ),
                        (header::LOCATION, HeaderValue::from_static("/")),
                    ],
                )
                    .into_response()
            }
            Err(e) => {
                tracing::error!(error = %e, "no randomness for a session id");
                refused(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the dashboard cannot open a session; its log says why".into(),
                )
            }
        },
        Err(error) => {
            tracing::info!(%error, "login refused");
            // Slows guessing a little; the backends lock out on their own.
            tokio::time::sleep(Duration::from_millis(300)).await;
            refused(StatusCode::UNAUTHORIZED, error)
        }
    }
}

/// Accepts a token that a backend accepts (a guarded read answers 200).
/// Refused when the backends that answer refuse it; unverifiable when none
/// answers.
async fn check_token(backends: &Backends, token: &Token) -> Result<(), String> {
    let mut checks = tokio::task::JoinSet::new();
    for index in 0..backends.specs().len() {
        let Some(client) = backends.client(index).cloned() else {
            continue;
        };
        let token = token.clone();
        checks.spawn(async move {
            client
                .get_json::<serde_json::Value>("/api/v1/rtpmanagers", Some(&token))
                .await
                .map(|_| ())
        });
    }
    let mut refused = false;
    let mut other = None;
    while let Some(result) = checks.join_next().await {
        match result {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(ClientError::Unauthorized)) => refused = true,
            Ok(Err(e)) => other = Some(e.to_string()),
            Err(_) => {}
        }
    }
    if refused {
        Err("the signaling servers refuse this token".into())
    } else {
        Err(format!(
            "no signaling server could check the token: {}",
            other.unwrap_or_else(|| "no backend".into())
        ))
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: CsrfForm = serde_urlencoded::from_bytes(&body).unwrap_or(CsrfForm {
        csrf: String::new(),
    });
    if let Err(refusal) = check_csrf(&session, &headers, &form.csrf) {
        return refusal.into_response();
    }
    state.sessions.close(&headers);
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, session::clear_cookie()),
            (header::LOCATION, HeaderValue::from_static("/login")),
        ],
    )
        .into_response()
}

/// A mutating request must come from our own pages: its form's CSRF token
/// is the session's, and a browser's `Origin`, when sent, is this host.
fn check_csrf(session: &Session, headers: &HeaderMap, presented: &str) -> Result<(), CsrfRefused> {
    let presented = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .filter(|_| presented.is_empty())
        .unwrap_or(presented);
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_ok = match (headers.get(header::ORIGIN), host) {
        (None, _) => true,
        (Some(origin), Some(host)) => origin.to_str().is_ok_and(|o| {
            o.strip_prefix("http://")
                .or_else(|| o.strip_prefix("https://"))
                == Some(host)
        }),
        (Some(_), None) => false,
    };
    if origin_ok && session.csrf_matches(presented) {
        Ok(())
    } else {
        tracing::warn!("a mutating request without this session's CSRF token was refused");
        Err(CsrfRefused)
    }
}

/// A mutating request that did not come from our pages: 403.
struct CsrfRefused;

impl IntoResponse for CsrfRefused {
    fn into_response(self) -> Response {
        (
            StatusCode::FORBIDDEN,
            "refused: the request did not come from this dashboard's page (CSRF)",
        )
            .into_response()
    }
}

// ---------------------------------------------------------------- overview

/// The overview's figures over every backend.
#[derive(Debug)]
pub struct Totals {
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
    fn of(backends: &[BackendView]) -> Totals {
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
            registrations: backends.iter().map(|b| b.registrations.len()).sum(),
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
struct OverviewBody {
    totals: Totals,
    backends: Vec<BackendView>,
}

async fn overview(
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
struct CallsTable {
    backends: Vec<BackendView>,
    count: usize,
    csrf: String,
}

async fn calls(State(state): State<UiState>, Extension(session): Extension<Session>) -> Response {
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
struct CallMedia {
    call: Call,
    ended: bool,
}

impl CallMedia {
    /// The call `id` of backend `name` as the dashboard knows it; `None`
    /// while that cannot be told (the backend or its calls API does not
    /// answer), so the page keeps what it shows.
    fn of(state: &UiState, name: &str, id: &str) -> Option<CallMedia> {
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

async fn call_detail(
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

async fn hang_up(
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
struct AorFilter {
    #[serde(default)]
    aor: String,
}

/// What a live view shows: the registrations' filter, or the call.
#[derive(Deserialize, Default)]
struct LiveQuery {
    #[serde(default)]
    aor: String,
    #[serde(default)]
    backend: String,
    #[serde(default)]
    id: String,
}

/// The bindings whose AOR contains `filter` (case-insensitive), with their
/// backend's name.
fn registration_rows(backends: &[BackendView], filter: &str) -> Vec<(String, Registration)> {
    let filter = filter.to_lowercase();
    backends
        .iter()
        .flat_map(|b| b.registrations.iter().map(move |r| (b.name.clone(), r)))
        .filter(|(_, r)| r.aor.to_lowercase().contains(&filter))
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
struct RegistrationsTable {
    filter: String,
    rows: Vec<(String, Registration)>,
    count: usize,
    backends: Vec<BackendView>,
    csrf: String,
}

fn registrations_table(state: &UiState, filter: &str, csrf: &str) -> RegistrationsTable {
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

async fn registrations(
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

async fn registrations_live(
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

async fn unregister(
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
struct ManagersTable {
    backends: Vec<BackendView>,
    csrf: String,
}

async fn managers(
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

async fn drain(
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

async fn backends_page(
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

// ---------------------------------------------------------------- live

/// A view that `/live/{view}` streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LiveView {
    Overview,
    Calls,
    Registrations,
    Managers,
    Call,
}

impl LiveView {
    fn parse(name: &str) -> Option<LiveView> {
        match name {
            "overview" => Some(LiveView::Overview),
            "calls" => Some(LiveView::Calls),
            "registrations" => Some(LiveView::Registrations),
            "managers" => Some(LiveView::Managers),
            "call" => Some(LiveView::Call),
            _ => None,
        }
    }

    /// The SSE event name, which the page's `sse-swap` listens for.
    fn name(self) -> &'static str {
        match self {
            LiveView::Overview => "overview",
            LiveView::Calls => "calls",
            LiveView::Registrations => "registrations",
            LiveView::Managers => "managers",
            LiveView::Call => "call",
        }
    }

    /// The view's HTML now; `None` when there is nothing to tell.
    fn render(
        self,
        state: &UiState,
        csrf: &str,
        query: &LiveQuery,
    ) -> askama::Result<Option<String>> {
        let html = match self {
            LiveView::Overview => {
                let backends = state.backends.snapshot();
                OverviewBody {
                    totals: Totals::of(&backends),
                    backends,
                }
                .render()
            }
            LiveView::Calls => {
                let backends = state.backends.snapshot();
                CallsTable {
                    count: backends.iter().map(|b| b.calls.len()).sum(),
                    backends,
                    csrf: csrf.to_owned(),
                }
                .render()
            }
            LiveView::Registrations => registrations_table(state, &query.aor, csrf).render(),
            LiveView::Managers => ManagersTable {
                backends: state.backends.snapshot(),
                csrf: csrf.to_owned(),
            }
            .render(),
            LiveView::Call => match CallMedia::of(state, &query.backend, &query.id) {
                Some(media) => media.render(),
                None => return Ok(None),
            },
        };
        html.map(Some)
    }
}

/// Bursts of changes (an INVITE brings an event and a reread of the call)
/// are sent as one render at most this often.
const LIVE_COALESCE: Duration = Duration::from_millis(100);

/// `GET /live/{view}`: the view's table, re-rendered and sent as an SSE
/// event (named after the view) whenever a backend changes.
async fn live(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
    Path(view): Path<String>,
    Query(query): Query<LiveQuery>,
) -> Response {
    let Some(view) = LiveView::parse(&view) else {
        return (StatusCode::NOT_FOUND, "no such live view").into_response();
    };
    let mut changes = state.backends.subscribe();
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(4);
    tokio::spawn(async move {
        let mut last = String::new();
        loop {
            let html = match view.render(&state, &session.csrf, &query) {
                Ok(Some(html)) => html,
                Ok(None) => last.clone(),
                Err(e) => {
                    tracing::error!(error = %e, view = view.name(), "live view failed to render");
                    return;
                }
            };
            if html != last {
                // SSE data may not hold carriage returns (axum splits lines).
                let event = SseEvent::default()
                    .event(view.name())
                    .data(html.replace('\r', ""));
                if sender.send(Ok(event)).await.is_err() {
                    return;
                }
                last = html;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = sender.closed() => return,
            }
            tokio::time::sleep(LIVE_COALESCE).await;
            changes.mark_unchanged();
        }
    });
    Sse::new(ReceiverStream::new(receiver))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
