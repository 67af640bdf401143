//! HTTP handlers of the dashboard: pages, their live streams, the
//! operator's actions, login, and the embedded assets.
//!
//! Pages render from [`Backends`] snapshots and never wait on a backend;
//! only a call's detail page (read when asked) and the operator's actions
//! reach a backend, each bounded by the backend timeout. Live tables come
//! from `/live/{view}`: a Server-Sent Events stream that re-renders the
//! view's table whenever a backend's state changes (htmx's SSE extension
//! swaps it in). Everything from SIP goes through askama's HTML escaping.
//!
//! `assets` serves the embedded files, `login` the session and CSRF
//! checks, `pages` the pages and the operator's actions, `live` the
//! pushed tables.

use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use crate::backends::Backends;
use crate::session::{Session, Sessions};

mod assets;
mod live;
mod login;
mod pages;

pub use assets::AssetUrls;
use assets::{asset, ASSET_URLS};
use live::live;
use login::{login, login_page, logout, require_session};
use pages::{
    backends_page, call_detail, calls, drain, hang_up, managers, overview, registrations,
    registrations_live, unregister,
};

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
