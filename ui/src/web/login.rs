//! Login with an API token, the session every other page needs, logout,
//! and the CSRF check of every mutating form.

use std::time::Duration;

use askama::Template;
use askama_web::WebTemplate;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use serde::Deserialize;

use crate::backends::Backends;
use crate::client::{ClientError, Token};
use crate::session::{self, Session};

use super::{is_htmx, Layout, UiState};

/// Lets a request through only with an open session, which it hands on.
pub(super) async fn require_session(
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

pub(super) async fn login_page(State(state): State<UiState>, headers: HeaderMap) -> Response {
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

pub(super) async fn login(
    State(state): State<UiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
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
pub(super) struct CsrfForm {
    #[serde(default)]
    pub(super) csrf: String,
}

pub(super) async fn logout(
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
pub(super) fn check_csrf(
    session: &Session,
    headers: &HeaderMap,
    presented: &str,
) -> Result<(), CsrfRefused> {
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
pub(super) struct CsrfRefused;

impl IntoResponse for CsrfRefused {
    fn into_response(self) -> Response {
        (
            StatusCode::FORBIDDEN,
            "refused: the request did not come from this dashboard's page (CSRF)",
        )
            .into_response()
    }
}
