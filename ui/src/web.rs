//! HTTP handlers of the dashboard: the page, its htmx partials and the
//! vendored htmx script.

use std::time::Duration;

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::backends::{BackendSnapshot, Backends};

/// htmx, vendored from the npm package `htmx.org` (see assets/README.md).
const HTMX_JS: &[u8] = include_bytes!("../assets/htmx.min.js");

/// Shared state of the handlers.
#[derive(Clone, Debug)]
pub struct UiState {
    pub backends: Backends,
    pub poll_interval: Duration,
}

/// The dashboard's router; tests drive it with `tower::ServiceExt::oneshot`.
pub fn app(state: UiState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/partials/backends", get(backends_partial))
        .route("/assets/htmx.min.js", get(htmx))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

#[derive(Template, WebTemplate)]
#[template(path = "index.html")]
struct IndexPage {
    backend_count: usize,
    poll_secs: u64,
}

#[derive(Template, WebTemplate)]
#[template(path = "backends.html")]
struct BackendsPartial {
    backends: Vec<BackendSnapshot>,
}

async fn index(State(state): State<UiState>) -> IndexPage {
    IndexPage {
        backend_count: state.backends.snapshot().len(),
        poll_secs: state.poll_interval.as_secs().max(1),
    }
}

async fn backends_partial(State(state): State<UiState>) -> BackendsPartial {
    BackendsPartial {
        backends: state.backends.snapshot(),
    }
}

async fn htmx() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        HTMX_JS,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn state() -> UiState {
        UiState {
            backends: Backends::new(&["http://127.0.0.1:9".to_owned()]),
            poll_interval: Duration::from_secs(3),
        }
    }

    async fn get_text(path: &str) -> (StatusCode, String) {
        let response = app(state())
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("router answers");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn index_loads_local_htmx_and_polls_at_the_configured_interval() {
        let (status, body) = get_text("/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains(r#"<script src="/assets/htmx.min.js">"#),
            "{body}"
        );
        assert!(body.contains("every 3s"), "{body}");
        assert!(!body.contains("https://"), "no CDN: {body}");
    }

    #[tokio::test]
    async fn htmx_is_served_by_the_binary() {
        let (status, body) = get_text("/assets/htmx.min.js").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.starts_with("var htmx="), "vendored htmx expected");
    }

    #[tokio::test]
    async fn unreachable_backend_is_shown_with_its_error() {
        let s = state();
        s.backends.poll_all().await;
        let response = app(s)
            .oneshot(
                Request::get("/partials/backends")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("router answers");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("http://127.0.0.1:9"), "{body}");
        assert!(body.contains("unreachable"), "{body}");
    }
}
