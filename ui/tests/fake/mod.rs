//! A fake signaling server for the dashboard's tests: an axum app on an
//! ephemeral loopback port answering the REST API's shapes (API-SHAPES),
//! guarded by a bearer token like the real one, with an event stream the
//! test feeds, and a record of every mutating request it received.

#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt;

pub const TOKEN: &str = "fake-token-0123456789abcdef";
pub const XSS: &str = "<script>alert(1)</script>";

/// A mutating request (`METHOD path`) and the bearer token it bore.
pub type Action = (String, Option<String>);

/// What the fake holds and what it was asked to do.
#[derive(Clone)]
pub struct Fake {
    pub calls: Arc<Mutex<Vec<Value>>>,
    pub drained: Arc<Mutex<bool>>,
    /// `METHOD path` of every mutating request, with the token it bore.
    pub actions: Arc<Mutex<Vec<Action>>>,
    pub events: broadcast::Sender<(String, String)>,
    pub url: String,
}

pub fn call(id: &str, display_name: &str) -> Value {
    json!({
        "id": id, "state": "answered", "started_at_ms": 1764950000000u64,
        "answered_at_ms": 1764950003000u64, "duration_ms": 65000,
        "caller": {"uri": "sip:1001@switchboard", "display_name": display_name, "address": "192.0.2.1:5060", "transport": "udp"},
        "callee": {"uri": "sip:1002@192.0.2.2:5062", "display_name": null, "address": "192.0.2.2:5062", "transport": "udp"},
        "dialled": "sip:1002@switchboard", "route": "extensions", "manager": "edge-a", "media_call_id": "m-1",
        "legs": [
            {"leg": "a", "codec": "PCMU/8000", "local_address": "10.0.0.1:20000", "remote_address": "192.0.2.1:4000",
             "latched_address": "192.0.2.1:4000", "offloaded": true, "rtp_in": {"packets": 1000, "bytes": 172000},
             "rtp_out": {"packets": 998, "bytes": 171656}, "lost": 3, "jitter_us": 2500, "kernel_packets": 900, "kernel_share": 0.9},
            {"leg": "b", "codec": "PCMU/8000", "local_address": "10.0.0.1:20002", "remote_address": "192.0.2.2:4002",
             "latched_address": "192.0.2.2:4002", "offloaded": true, "rtp_in": {"packets": 1000, "bytes": 172000},
             "rtp_out": {"packets": 1000, "bytes": 172000}, "lost": 0, "jitter_us": 500, "kernel_packets": 900, "kernel_share": 0.9}
        ],
        "media_error": null
    })
}

fn detail(call: &Value) -> Value {
    let mut detail = call.clone();
    let message = |at: u64, direction: &str, leg: &str, first_line: &str, cseq: &str| {
        json!({"at_ms": at, "direction": direction, "leg": leg, "peer": "192.0.2.1:5060",
               "first_line": first_line, "call_id": "abc", "cseq": cseq})
    };
    detail["sip"] = json!([
        message(
            1764950000000,
            "in",
            "a",
            "INVITE sip:1002@switchboard SIP/2.0",
            "1 INVITE"
        ),
        message(1764950000001, "out", "a", "SIP/2.0 100 Trying", "1 INVITE"),
        message(
            1764950000005,
            "out",
            "b",
            "INVITE sip:1002@192.0.2.2:5062 SIP/2.0",
            "1 INVITE"
        ),
        message(1764950000100, "in", "b", "SIP/2.0 180 Ringing", "1 INVITE"),
        message(1764950000101, "out", "a", "SIP/2.0 180 Ringing", "1 INVITE"),
        message(1764950003000, "in", "b", "SIP/2.0 200 OK", "1 INVITE"),
        message(
            1764950003001,
            "out",
            "b",
            "ACK sip:1002@192.0.2.2:5062 SIP/2.0",
            "1 ACK"
        ),
        message(1764950003002, "out", "a", "SIP/2.0 200 OK", "1 INVITE"),
        message(
            1764950003050,
            "in",
            "a",
            "ACK sip:1002@switchboard SIP/2.0",
            "1 ACK"
        ),
    ]);
    detail["sip_truncated"] = json!(false);
    detail["sdp"] = json!({
        "a_offer": "v=0\r\no=alice 1 1 IN IP4 192.0.2.1\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 0\r\na=tool:<b>x</b>\r\n",
        "a_answer": "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 20000 RTP/AVP 0\r\n",
        "b_offer": "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 20002 RTP/AVP 0\r\n",
        "b_answer": "v=0\r\nc=IN IP4 192.0.2.2\r\nm=audio 4002 RTP/AVP 0\r\n"
    });
    detail
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
}

fn guard(headers: &HeaderMap) -> Result<(), Box<Response>> {
    if bearer(headers).as_deref() == Some(TOKEN) {
        Ok(())
    } else {
        Err(Box::new(
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "unauthorized", "detail": "token"})),
            )
                .into_response(),
        ))
    }
}

impl Fake {
    fn record(&self, what: String, headers: &HeaderMap) {
        self.actions
            .lock()
            .expect("actions")
            .push((what, bearer(headers)));
    }

    pub fn actions(&self) -> Vec<Action> {
        self.actions.lock().expect("actions").clone()
    }

    /// Publishes an event on the fake's stream.
    pub fn publish(&self, event: Value) {
        let name = event["type"].as_str().unwrap_or("message").to_owned();
        let _ = self.events.send((name, event.to_string()));
    }
}

async fn pool(State(fake): State<Fake>, headers: HeaderMap) -> Response {
    if let Err(r) = guard(&headers) {
        return *r;
    }
    let drained = *fake.drained.lock().expect("drained");
    Json(json!({"total": 2, "healthy": 1, "accepting": 1, "active_calls": 1, "members": [
        {"id": "edge-a", "endpoint": "http://10.0.0.1:9090", "health": "healthy", "detail": "ok",
         "fast_path": "xdp", "fast_path_reason": "native XDP on eth1", "instance_id": "i", "version": "0.1.0",
         "active_calls": 1, "ports_free": 4000, "drain": {"operator": drained, "manager": false}, "accepting": !drained},
        {"id": "edge-b", "endpoint": "http://10.0.0.2:9090", "health": "down", "detail": "connection refused",
         "fast_path": "", "fast_path_reason": "", "instance_id": "", "version": "",
         "active_calls": 0, "ports_free": 0, "drain": {"operator": false, "manager": false}, "accepting": false}
    ]}))
    .into_response()
}

async fn drain(
    State(fake): State<Fake>,
    Path(id): Path<String>,
    method: axum::http::Method,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = guard(&headers) {
        return *r;
    }
    fake.record(format!("{method} /api/v1/rtpmanagers/{id}/drain"), &headers);
    *fake.drained.lock().expect("drained") = method == axum::http::Method::POST;
    Json(json!({"id": id, "operator": true, "manager": false, "draining": true, "active_calls": 1}))
        .into_response()
}

async fn registrations(headers: HeaderMap) -> Response {
    if let Err(r) = guard(&headers) {
        return *r;
    }
    Json(json!([
        {"aor": "1001@switchboard", "contact": "sip:1001@192.0.2.1:5060", "expires": 290,
         "expires_at": "2026-12-05T18:40:00Z", "registered_at": "2026-12-05T18:35:00Z", "updated_at": "2026-12-05T18:35:00Z",
         "source": "192.0.2.1:5060", "transport": "udp", "user_agent": XSS, "instance": null, "reg_id": null, "path": [], "q": null},
        {"aor": "1002@switchboard", "contact": "sip:1002@192.0.2.2:5062", "expires": 3500,
         "expires_at": "2026-12-05T19:40:00Z", "registered_at": "2026-12-05T18:35:00Z", "updated_at": "2026-12-05T18:35:00Z",
         "source": "192.0.2.2:5062", "transport": "tcp", "user_agent": "Linphone/5", "instance": null, "reg_id": null, "path": [], "q": null,
         "node": "sig-1"}
    ]))
    .into_response()
}

async fn unregister(
    State(fake): State<Fake>,
    Path(aor): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = guard(&headers) {
        return *r;
    }
    fake.record(format!("DELETE /api/v1/registrations/{aor}"), &headers);
    Json(json!({"aor": aor, "removed": 1})).into_response()
}

async fn stats(headers: HeaderMap) -> Response {
    if let Err(r) = guard(&headers) {
        return *r;
    }
    Json(json!({"uptime_secs": 100, "calls": {"active": 1, "total": 10,
        "by_status": {"200": 7, "486": 2, "404": 1}, "per_second_last_minute": 0.25},
        "registrations": 2, "transactions": 3, "dialogs": 2, "auth": {"failures": 0, "lockouts": 0}}))
    .into_response()
}

async fn calls(State(fake): State<Fake>, headers: HeaderMap) -> Response {
    if let Err(r) = guard(&headers) {
        return *r;
    }
    let calls = fake.calls.lock().expect("calls").clone();
    Json(json!({"total": calls.len(), "calls": calls, "next": null})).into_response()
}

async fn one_call(
    State(fake): State<Fake>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = guard(&headers) {
        return *r;
    }
    let calls = fake.calls.lock().expect("calls").clone();
    match calls.iter().find(|c| c["id"] == id.as_str()) {
        Some(call) => Json(detail(call)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "not_found", "detail": format!("no call {id}")})),
        )
            .into_response(),
    }
}

async fn hang_up(State(fake): State<Fake>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = guard(&headers) {
        return *r;
    }
    fake.record(format!("DELETE /api/v1/calls/{id}"), &headers);
    (
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "state": "ending"})),
    )
        .into_response()
}

async fn events(State(fake): State<Fake>, headers: HeaderMap) -> Response {
    if let Err(r) = guard(&headers) {
        return *r;
    }
    let stream = BroadcastStream::new(fake.events.subscribe()).filter_map(|item| {
        item.ok()
            .map(|(name, data)| Ok::<_, Infallible>(Event::default().event(name).data(data)))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// Starts a fake backend holding `calls`.
pub async fn start(initial: Vec<Value>) -> Fake {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the fake backend");
    let addr = listener.local_addr().expect("address");
    let fake = Fake {
        calls: Arc::new(Mutex::new(initial)),
        drained: Arc::new(Mutex::new(false)),
        actions: Arc::new(Mutex::new(Vec::new())),
        events: broadcast::channel(64).0,
        url: format!("http://{addr}"),
    };
    let app = Router::new()
        .route(
            "/api/v1/health",
            get(|| async { Json(json!({"status": "ok", "version": "9.9.9", "rtpmanagers_healthy": 1, "rtpmanagers_total": 2})) }),
        )
        .route("/api/v1/rtpmanagers", get(pool))
        .route(
            "/api/v1/rtpmanagers/{id}/drain",
            axum::routing::post(drain).delete(drain),
        )
        .route("/api/v1/registrations", get(registrations))
        .route(
            "/api/v1/registrations/{aor}",
            axum::routing::delete(unregister),
        )
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/calls", get(calls))
        .route("/api/v1/calls/{id}", get(one_call).delete(hang_up))
        .route("/api/v1/events", get(events))
        .with_state(fake.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    fake
}

/// A backend that accepts connections and never answers.
pub async fn start_silent() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    format!("http://{addr}")
}
