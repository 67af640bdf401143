//! In-process tests of the router: authentication, errors, managers and
//! drain, and the OpenAPI document against the real routes.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use super::*;

const TOKEN: &str = "test-token-0123456789abcdef";

fn pool() -> ManagerPool {
    let uris = vec![
        "http://127.0.0.1:9".to_owned(),
        "http://127.0.0.1:10".to_owned(),
    ];
    ManagerPool::new(&uris)
        .expect("pool")
        .with_ids(&["edge-a".to_owned(), "127.0.0.1:10".to_owned()])
}

fn state(access: ApiAccess) -> ApiState {
    ApiState {
        pool: pool(),
        sip: None,
        transport: None,
        rest_refused: None,
        access: Arc::new(access),
        events: crate::events::EventBus::new(),
        metrics: Metrics::default(),
    }
}

fn with_token(metrics_require_token: bool) -> ApiAccess {
    let mut tokens = Tokens::default();
    tokens.add(TOKEN);
    ApiAccess::with_tokens(tokens, metrics_require_token)
}

async fn call(
    router: &Router,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("the router answers");
    let status = response.status();
    if response
        .headers()
        .get("content-type")
        .is_some_and(|t| t == "text/event-stream")
    {
        // An event stream does not end: its frames are read in events tests.
        return (status, Value::Null);
    }
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, body)
}

/// A concrete path for an endpoint, its parameters filled in.
fn concrete(path: &str) -> String {
    path.replace("{id}", "edge-a")
        .replace("{aor}", "1001@example.com")
}

#[tokio::test]
async fn every_protected_endpoint_refuses_no_token_and_a_wrong_token_with_json_401() {
    let router = app(state(with_token(true)));
    let protected: Vec<Endpoint> = endpoints()
        .into_iter()
        .filter(|e| e.guard != Guard::Public)
        .collect();
    assert!(protected.len() >= 8, "{protected:?}");
    for endpoint in protected {
        let path = concrete(endpoint.path);
        for token in [None, Some("wrong-token-0123456789abcdef")] {
            let (status, body) = call(&router, endpoint.method.clone(), &path, token).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{} {path} with {token:?}: {body}",
                endpoint.method
            );
            assert_eq!(body["error"], "unauthorized", "{body}");
            assert!(body["detail"].as_str().is_some_and(|d| !d.contains(TOKEN)));
        }
    }
}

#[tokio::test]
async fn the_right_token_opens_the_api_and_health_needs_none() {
    let router = app(state(with_token(true)));
    let (status, body) = call(&router, Method::GET, "/api/v1/health", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rtpmanagers_total"], 2);
    let (status, body) = call(&router, Method::GET, "/api/v1/rtpmanagers", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["total"], 2);
    let (status, _) = call(&router, Method::GET, "/metrics", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&router, Method::GET, "/metrics", None).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "metrics guarded by default"
    );
}

#[tokio::test]
async fn metrics_can_be_left_open_while_the_rest_stays_guarded() {
    let router = app(state(with_token(false)));
    let (status, body) = call(&router, Method::GET, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.as_str()
            .is_some_and(|t| t.contains("switchboard_rtpmanager_up")),
        "{body}"
    );
    let (status, _) = call(&router, Method::GET, "/api/v1/rtpmanagers", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn without_a_token_configured_every_endpoint_is_open() {
    let router = app(state(ApiAccess::open()));
    let (status, _) = call(&router, Method::GET, "/api/v1/rtpmanagers", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&router, Method::GET, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn errors_are_json_with_the_right_status() {
    let router = app(state(with_token(true)));
    let (status, body) = call(&router, Method::GET, "/api/v1/nothing", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "no_such_endpoint", "{body}");
    let (status, body) = call(&router, Method::PUT, "/api/v1/rtpmanagers", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"], "method_not_allowed", "{body}");
    let (status, body) = call(
        &router,
        Method::POST,
        "/api/v1/rtpmanagers/nope/drain",
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found");
    assert_eq!(body["detail"], "no RTP manager with id `nope`");
    let (status, body) = call(
        &router,
        Method::GET,
        "/api/v1/rtpmanagers/%FF%FE/drain",
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "bad_request", "JSON like the others: {body}");
    // No SIP core in this router: 503, not a hang or a 500.
    for (method, path) in [
        (Method::GET, "/api/v1/registrations"),
        (Method::GET, "/api/v1/registrations/1001@example.com"),
        (Method::DELETE, "/api/v1/registrations/1001@example.com"),
    ] {
        let (status, body) = call(&router, method, path, Some(TOKEN)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {body}");
        assert_eq!(body["error"], "unavailable");
    }
}

#[test]
fn internal_errors_do_not_leak_their_cause() {
    let response =
        AppError::Internal("journal.3.jsonl: No space left on device".into()).into_response();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let bytes = runtime
        .block_on(response.into_body().collect())
        .expect("body")
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        !text.contains("journal") && !text.contains("space"),
        "{text}"
    );
    assert!(text.contains("\"error\":\"internal\""), "{text}");
    assert_eq!(
        AppError::Conflict("x".into()).into_response().status(),
        StatusCode::CONFLICT
    );
    assert_eq!(
        AppError::BadRequest("x".into()).into_response().status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn managers_are_listed_with_ids_totals_and_drain_flags() {
    let router = app(state(ApiAccess::open()));
    let (status, body) = call(&router, Method::GET, "/api/v1/rtpmanagers", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["total"], 2);
    assert_eq!(body["healthy"], 0, "nothing probed");
    assert_eq!(body["accepting"], 2, "not probed yet: both may be tried");
    assert_eq!(body["active_calls"], 0);
    let members = body["members"].as_array().expect("members");
    assert_eq!(members[0]["id"], "edge-a");
    assert_eq!(members[0]["endpoint"], "http://127.0.0.1:9");
    assert_eq!(members[0]["health"], "unknown");
    assert_eq!(members[0]["drain"]["operator"], false);
    assert_eq!(members[0]["accepting"], true);
    assert_eq!(members[1]["id"], "127.0.0.1:10");
    assert!(members[0]["fast_path"].is_string() && members[0]["ports_free"].is_u64());
}

#[tokio::test]
async fn drain_takes_a_manager_out_of_selection_and_delete_brings_it_back() {
    let state = state(with_token(true));
    let pool = state.pool.clone();
    let router = app(state);
    let drain = "/api/v1/rtpmanagers/edge-a/drain";
    let (status, body) = call(&router, Method::GET, drain, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["draining"], false, "{body}");

    let (status, body) = call(&router, Method::POST, drain, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["id"], "edge-a");
    assert_eq!(body["operator"], true);
    assert_eq!(body["manager"], false);
    assert_eq!(body["draining"], true);
    assert_eq!(pool.candidates(), vec![1], "the pool sends it no new call");
    let (status, body) = call(&router, Method::POST, drain, Some(TOKEN)).await;
    assert_eq!(
        (status, &body["operator"]),
        (StatusCode::OK, &Value::Bool(true))
    );
    let (_, list) = call(&router, Method::GET, "/api/v1/rtpmanagers", Some(TOKEN)).await;
    assert_eq!(list["members"][0]["drain"]["operator"], true);
    assert_eq!(list["members"][0]["accepting"], false);
    assert_eq!(list["accepting"], 1);

    // A host:port id works in the path as it is.
    let (status, body) = call(
        &router,
        Method::GET,
        "/api/v1/rtpmanagers/127.0.0.1:10/drain",
        Some(TOKEN),
    )
    .await;
    assert_eq!(
        (status, &body["draining"]),
        (StatusCode::OK, &Value::Bool(false))
    );

    let (status, body) = call(&router, Method::DELETE, drain, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["operator"], false);
    assert_eq!(body["draining"], false);
    assert_eq!(pool.candidates(), vec![0, 1]);
}

/// The (method, path) pairs of the OpenAPI document.
fn documented() -> BTreeSet<(String, String)> {
    let document: Value = serde_json::from_str(openapi::DOCUMENT).expect("valid JSON");
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "OpenAPI 3"
    );
    let mut pairs = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if ["get", "post", "put", "delete", "patch", "head", "options"]
                .contains(&method.as_str())
            {
                pairs.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    pairs
}

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_routes_and_each_answers() {
    let routed: BTreeSet<(String, String)> = endpoints()
        .into_iter()
        .map(|e| (e.method.to_string(), e.path.to_owned()))
        .collect();
    assert_eq!(documented(), routed, "openapi.json and routes() differ");

    // Each documented operation reaches a handler of the real router
    // (neither the no-route nor the wrong-method fallback), an unlisted one does not.
    let router = app(state(with_token(true)));
    for (method, path) in documented() {
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let (status, body) = call(&router, method.clone(), &concrete(&path), Some(TOKEN)).await;
        assert!(
            body["error"] != "no_such_endpoint" && body["error"] != "method_not_allowed",
            "{method} {path}: {status} {body}"
        );
        assert!(
            status.is_success() || status == StatusCode::SERVICE_UNAVAILABLE,
            "{method} {path}: {status} {body}"
        );
    }
    let (status, body) = call(&router, Method::POST, "/api/v1/registrations", Some(TOKEN)).await;
    assert_eq!(
        (status, &body["error"]),
        (
            StatusCode::METHOD_NOT_ALLOWED,
            &Value::from("method_not_allowed")
        )
    );
    let (status, _) = call(&router, Method::GET, "/api/v1/calls", Some(TOKEN)).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "not built yet, not documented"
    );

    let (status, body) = call(&router, Method::GET, "/api/v1/openapi.json", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["info"]["title"], "Switchboard signaling REST API");
}
