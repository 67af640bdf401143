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
        migrations: None,
        pool: pool(),
        sip: None,
        transport: None,
        rest_refused: None,
        access: Arc::new(access),
        calls: None,
        events: crate::events::EventBus::new(),
        metrics: Metrics::default(),
        reload: None,
        location: None,
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
    assert_eq!(
        (
            &members[0]["relay_load_pps"],
            &members[0]["relay_capacity_pps"],
            &members[0]["overloaded"]
        ),
        (
            &serde_json::json!(0),
            &serde_json::json!(0),
            &serde_json::json!(false)
        ),
        "admission figures before any Health answer"
    );
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
    let (status, _) = call(&router, Method::GET, "/api/v1/dialogs", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not routed, not documented");

    let (status, body) = call(&router, Method::GET, "/api/v1/openapi.json", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["info"]["title"], "Switchboard signaling REST API");
}

// ----- /api/v1/calls ---------------------------------------------------

mod calls {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::b2bua::view::{
        BadCursor, CallDetail, CallPage, CallQuery, CallSnapshot, CallState, Direction, HangUp,
        SdpView, SipEntry,
    };
    use crate::b2bua::{CallLeg, CallsHandle, LinkInput, MediaLink};
    use crate::events::Party;
    use crate::uas::driver::CoreQueue;

    const ID: &str = "0a0b0c0d-1";

    fn snapshot(manager: Option<&str>, detail: bool) -> CallSnapshot {
        CallSnapshot {
            id: ID.to_owned(),
            state: CallState::Answered,
            started_at_ms: 1_000,
            answered_at_ms: Some(3_000),
            duration_ms: 12_345,
            caller: Party {
                uri: "sip:1001@example.com".to_owned(),
                display_name: Some("Alice".to_owned()),
                address: "192.0.2.1:5060".to_owned(),
                transport: "udp".to_owned(),
            },
            callee: None,
            dialled: "sip:1002@example.com".to_owned(),
            route: Some("local".to_owned()),
            manager: manager.map(str::to_owned),
            media_call_id: "node/1/abc".to_owned(),
            node: "node".to_owned(),
            has_media: manager.is_some(),
            detail: detail.then(|| CallDetail {
                sip: vec![SipEntry {
                    at_ms: 1_000,
                    direction: Direction::In,
                    leg: CallLeg::A,
                    peer: "192.0.2.1:5060".to_owned(),
                    first_line: "INVITE sip:1002@example.com SIP/2.0".to_owned(),
                    call_id: "abc".to_owned(),
                    cseq: "1 INVITE".to_owned(),
                }],
                sip_truncated: false,
                sdp: SdpView::default(),
            }),
        }
    }

    /// A core that answers queries as the B2BUA would, with one call on
    /// manager `manager`; the hang-ups it was asked for are counted.
    fn fake_core(manager: Option<&'static str>) -> (CallsHandle, MediaLink) {
        let link = MediaLink::new();
        let queue = CoreQueue::new().expect("core queue");
        let handle = CallsHandle::new(link.clone(), queue.handle());
        let served = link.clone();
        tokio::spawn(async move {
            let _queue = queue;
            loop {
                while let Some(input) = served.pop_input(Instant::now()) {
                    let LinkInput::Query(query) = input else {
                        continue;
                    };
                    match query {
                        CallQuery::List {
                            limit,
                            after,
                            reply,
                        } => {
                            let page = match after.as_deref() {
                                Some("ffffffff-1") => Err(BadCursor("ffffffff-1".to_owned())),
                                Some(_) => Ok(CallPage {
                                    total: 1,
                                    calls: Vec::new(),
                                    next: None,
                                }),
                                None => Ok(CallPage {
                                    total: 1,
                                    calls: vec![snapshot(manager, false)],
                                    next: (limit == 0).then(|| ID.to_owned()),
                                }),
                            };
                            let _ = reply.send(page);
                        }
                        CallQuery::Get { id, reply } => {
                            let _ = reply.send((id == ID).then(|| snapshot(manager, true)));
                        }
                        CallQuery::HangUp { id, reply } => {
                            let _ = reply.send(if id == ID {
                                HangUp::Ending
                            } else {
                                HangUp::NotFound
                            });
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        (handle, link)
    }

    fn router(calls: Option<CallsHandle>) -> Router {
        let mut state = state(with_token(true));
        state.calls = calls;
        app(state)
    }

    #[tokio::test]
    async fn calls_are_listed_with_their_parties_and_a_page_cursor() {
        let (handle, _) = fake_core(None);
        let router = router(Some(handle));
        let (status, body) = call(&router, Method::GET, "/api/v1/calls", Some(TOKEN)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["total"], 1);
        assert_eq!(body["next"], Value::Null);
        let listed = &body["calls"][0];
        assert_eq!(listed["id"], ID);
        assert_eq!(listed["state"], "answered");
        assert_eq!(listed["caller"]["display_name"], "Alice");
        assert_eq!(listed["caller"]["transport"], "udp");
        assert_eq!(listed["callee"], Value::Null);
        assert_eq!(listed["route"], "local");
        assert_eq!(listed["media_call_id"], "node/1/abc");
        assert_eq!(listed["node"], "node");
        assert_eq!(listed["legs"], serde_json::json!([]));
        assert_eq!(listed["media_error"], Value::Null, "no media, no error");
        assert!(listed.get("sip").is_none(), "no history in a list");
        assert!(listed.get("has_media").is_none());
        let (status, body) = call(
            &router,
            Method::GET,
            "/api/v1/calls?limit=10&after=0a0b0c0d-1",
            Some(TOKEN),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["calls"], serde_json::json!([]));
    }

    #[tokio::test]
    async fn a_bad_limit_or_cursor_is_a_json_400() {
        let (handle, _) = fake_core(None);
        let router = router(Some(handle));
        for query in [
            "limit=0",
            "limit=5000",
            "limit=ten",
            "after=a/b",
            "after=ffffffff-1",
        ] {
            let path = format!("/api/v1/calls?{query}");
            let (status, body) = call(&router, Method::GET, &path, Some(TOKEN)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
            assert_eq!(body["error"], "bad_request", "{query}");
        }
    }

    #[tokio::test]
    async fn one_call_has_its_ladder_and_sdp_and_an_unknown_id_is_404() {
        let (handle, _) = fake_core(None);
        let router = router(Some(handle));
        let path = format!("/api/v1/calls/{ID}");
        let (status, body) = call(&router, Method::GET, &path, Some(TOKEN)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["id"], ID);
        assert_eq!(
            body["sip"][0]["first_line"],
            "INVITE sip:1002@example.com SIP/2.0"
        );
        assert_eq!(body["sip"][0]["direction"], "in");
        assert_eq!(body["sip"][0]["leg"], "a");
        assert_eq!(body["sip_truncated"], false);
        assert_eq!(body["sdp"]["a_offer"], Value::Null);
        let (status, body) = call(
            &router,
            Method::GET,
            "/api/v1/calls/0a0b0c0d-2",
            Some(TOKEN),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], "not_found");
    }

    #[tokio::test]
    async fn delete_hangs_up_with_202_and_an_unknown_id_is_404() {
        let (handle, _) = fake_core(None);
        let router = router(Some(handle));
        let path = format!("/api/v1/calls/{ID}");
        let (status, body) = call(&router, Method::DELETE, &path, Some(TOKEN)).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(body, serde_json::json!({"id": ID, "state": "ending"}));
        let (status, body) = call(
            &router,
            Method::DELETE,
            "/api/v1/calls/0a0b0c0d-2",
            Some(TOKEN),
        )
        .await;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::NOT_FOUND, &Value::from("not_found"))
        );
    }

    #[tokio::test]
    async fn without_a_b2bua_or_with_a_busy_core_the_calls_endpoints_are_503() {
        let router = router(None);
        for (method, path) in [
            (Method::GET, "/api/v1/calls".to_owned()),
            (Method::GET, format!("/api/v1/calls/{ID}")),
            (Method::DELETE, format!("/api/v1/calls/{ID}")),
        ] {
            let (status, body) = call(&router, method.clone(), &path, Some(TOKEN)).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{method} {path}");
            assert_eq!(body["error"], "unavailable");
        }
        // A core with thousands of inputs waiting: refused at once.
        let link = MediaLink::new();
        let queue = CoreQueue::new().expect("core queue");
        for _ in 0..5000 {
            link.push_input(
                Instant::now(),
                LinkInput::Dialplan(Arc::new(
                    crate::dialplan::Dialplan::parse(r#"{"version": "1.0", "routes": []}"#)
                        .expect("empty plan"),
                )),
            );
        }
        let router = self::router(Some(CallsHandle::new(link, queue.handle())));
        let started = Instant::now();
        let (status, body) = call(&router, Method::GET, "/api/v1/calls", Some(TOKEN)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            body["detail"].as_str().is_some_and(|d| d.contains("busy")),
            "{body}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "refused without waiting"
        );
    }

    #[tokio::test]
    async fn a_manager_that_never_answers_gives_a_media_error_not_a_hung_request() {
        // Accepts connections and says nothing: GetStats waits for ever.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = silent.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = silent.accept().await {
                held.push(stream);
            }
        });
        let (handle, _) = fake_core(Some("mute"));
        let mut state = state(with_token(true));
        state.pool = ManagerPool::new(&[format!("http://127.0.0.1:{port}")])
            .expect("pool")
            .with_ids(&["mute".to_owned()]);
        state.calls = Some(handle);
        let router = app(state);
        let started = Instant::now();
        let (status, body) = call(&router, Method::GET, "/api/v1/calls", Some(TOKEN)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "bounded by the stats timeout"
        );
        let listed = &body["calls"][0];
        assert_eq!(listed["manager"], "mute");
        assert_eq!(listed["legs"], serde_json::json!([]));
        let error = listed["media_error"].as_str().expect("a media error");
        assert!(
            error.contains("mute") && error.contains("did not answer"),
            "{error}"
        );
        // A manager the pool does not know.
        let (handle, _) = fake_core(Some("gone"));
        let router = self::router(Some(handle));
        let (_, body) = call(
            &router,
            Method::GET,
            &format!("/api/v1/calls/{ID}"),
            Some(TOKEN),
        )
        .await;
        assert_eq!(body["media_error"], "manager gone is not configured");
    }
}

/// A stand-in for the SIP core: answers each move order as if the manager
/// held `calls` answered calls, all of which move at the first order.
fn fake_core(link: crate::b2bua::MediaLink, calls: usize) {
    use crate::b2bua::{CallMoved, LinkInput, MoveOutcome, MoveReport};
    tokio::spawn(async move {
        let mut left = calls;
        loop {
            while let Some(input) = link.pop_input(std::time::Instant::now()) {
                let LinkInput::Move(order) = input else {
                    continue;
                };
                let started: Vec<String> = (0..left.min(order.limit))
                    .map(|i| format!("call-{i}"))
                    .collect();
                let _ = order.reply.send(MoveReport::Started {
                    started: started.clone(),
                    not_movable: Vec::new(),
                    left: left - started.len(),
                    in_scope: left,
                });
                for id in started {
                    let _ = order.reply.send(MoveReport::Call(CallMoved {
                        id,
                        from: order.manager.clone(),
                        to: Some("127.0.0.1:10".to_owned()),
                        outcome: MoveOutcome::Moved,
                        detail: String::new(),
                    }));
                    left -= 1;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    });
}

#[tokio::test]
async fn drain_mode_migrate_moves_calls_a_batch_at_a_time_and_shows_progress() {
    let mut state = state(with_token(true));
    let link = crate::b2bua::MediaLink::new();
    fake_core(link.clone(), 5);
    let mut events = state.events.subscribe();
    state.migrations = Some(crate::rtpmanager_moves::Migrations::new(
        link,
        Arc::new(|| {}),
        state.pool.clone(),
        state.events.clone(),
        10,
    ));
    let pool = state.pool.clone();
    let router = app(state);
    let drain = "/api/v1/rtpmanagers/edge-a/drain";
    let (status, _) = call(
        &router,
        Method::POST,
        &format!("{drain}?mode=migrate&batch=0"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a batch of 0 moves nothing"
    );

    let (status, body) = call(
        &router,
        Method::POST,
        &format!("{drain}?mode=migrate&batch=2"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["draining"], true);
    assert_eq!(pool.candidates(), vec![1], "no new calls while it migrates");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let migration = loop {
        let (_, body) = call(&router, Method::GET, drain, Some(TOKEN)).await;
        if body["migration"]["state"] != "running" {
            break body["migration"].clone();
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(migration["state"], "done", "{migration}");
    assert_eq!(migration["moved"], 5);
    assert_eq!(migration["rounds"], 3, "5 calls, 2 at a time");
    assert_eq!(migration["remaining"], 0);
    assert_eq!(migration["batch"], 2);
    let rounds: Vec<String> = std::iter::from_fn(|| events.try_recv().ok())
        .filter(|e| e.kind() == "manager_migration")
        .map(|e| e.frame().to_owned())
        .collect();
    assert!(rounds.len() >= 3, "{rounds:?}");
    assert!(
        rounds
            .last()
            .is_some_and(|r| r.contains(r#""state":"done""#)),
        "{rounds:?}"
    );
}

#[tokio::test]
async fn drain_mode_migrate_without_a_b2bua_is_a_conflict() {
    let router = app(state(with_token(true)));
    let (status, body) = call(
        &router,
        Method::POST,
        "/api/v1/rtpmanagers/edge-a/drain?mode=migrate",
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

#[tokio::test]
async fn a_graceful_drain_cancels_a_running_migration_and_keeps_the_drain() {
    let mut state = state(with_token(true));
    let link = crate::b2bua::MediaLink::new();
    // A core whose moves never end: the migration runs until cancelled.
    let core = link.clone();
    tokio::spawn(async move {
        let mut orders = Vec::new();
        loop {
            while let Some(input) = core.pop_input(std::time::Instant::now()) {
                if let crate::b2bua::LinkInput::Move(order) = input {
                    let _ = order.reply.send(crate::b2bua::MoveReport::Started {
                        started: vec!["call-0".to_owned()],
                        not_movable: Vec::new(),
                        left: 0,
                        in_scope: 1,
                    });
                    orders.push(order);
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    });
    state.migrations = Some(crate::rtpmanager_moves::Migrations::new(
        link,
        Arc::new(|| {}),
        state.pool.clone(),
        state.events.clone(),
        10,
    ));
    let pool = state.pool.clone();
    let router = app(state);
    let drain = "/api/v1/rtpmanagers/edge-a/drain";
    let (_, body) = call(
        &router,
        Method::POST,
        &format!("{drain}?mode=migrate"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(body["migration"]["state"], "running", "{body}");
    let (status, body) = call(&router, Method::POST, drain, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["draining"], true, "the drain stays");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let (_, body) = call(&router, Method::GET, drain, Some(TOKEN)).await;
        if body["migration"]["state"] == "cancelled" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not cancelled: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(pool.candidates(), vec![1], "still drained");
    let (_, body) = call(&router, Method::DELETE, drain, Some(TOKEN)).await;
    assert_eq!(body["draining"], false);
    assert_eq!(pool.candidates(), vec![0, 1]);
}
