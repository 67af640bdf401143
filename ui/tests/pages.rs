//! The dashboard's pages, live streams and actions in-process (axum
//! `oneshot`) against fake signaling servers (tests/fake) answering the
//! REST API's shapes: login and cookies, CSRF, escaping of what SIP
//! brings, the ladder, actions reaching the backend with the operator's
//! token, calls appearing and vanishing through the event stream, and a
//! dead backend never holding a page.

mod fake;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::json;
use switchboard_ui::backends::{BackendSpec, Backends};
use switchboard_ui::web::{app, UiState};
use tower::ServiceExt;

const TIMEOUT: Duration = Duration::from_millis(300);

fn spec(name: &str, url: &str) -> BackendSpec {
    BackendSpec {
        name: name.into(),
        url: url.into(),
    }
}

/// A dashboard over `specs`, polled once, with the fake's token for reads.
async fn dashboard(specs: &[BackendSpec]) -> (Router, UiState) {
    let backends = Backends::with_token(specs, TIMEOUT, Some(fake::TOKEN.to_owned()));
    backends.poll_all().await;
    let state = UiState::new(backends, Duration::from_secs(2), TIMEOUT);
    (app(state.clone()), state)
}

async fn send(app: &Router, request: Request<Body>) -> Response<Body> {
    app.clone().oneshot(request).await.expect("router answers")
}

async fn text(response: Response<Body>) -> String {
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// Logs in with `token`; returns the cookie and the CSRF token of the session.
async fn login(app: &Router, token: &str) -> (String, String) {
    let response = send(
        app,
        Request::post("/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("token={token}")))
            .expect("request"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER, "login accepted");
    let cookie = response
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie")
        .to_owned();
    let cookie = cookie.split(';').next().expect("name=value").to_owned();
    let page = text(get(app, "/managers", &cookie).await).await;
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a CSRF token in the page")
        .to_owned();
    (cookie, csrf)
}

async fn get(app: &Router, path: &str, cookie: &str) -> Response<Body> {
    send(
        app,
        Request::get(path)
            .header(header::COOKIE, cookie)
            .body(Body::empty())
            .expect("request"),
    )
    .await
}

async fn post_form(
    app: &Router,
    path: &str,
    cookie: &str,
    form: &str,
    htmx: bool,
) -> Response<Body> {
    let mut request = Request::post(path)
        .header(header::COOKIE, cookie)
        .header(header::HOST, "dashboard.test")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if htmx {
        request = request.header("hx-request", "true");
    }
    send(
        app,
        request.body(Body::from(form.to_owned())).expect("request"),
    )
    .await
}

#[tokio::test]
async fn without_a_session_pages_redirect_to_login_and_healthz_answers() {
    let fake = fake::start(vec![]).await;
    let (app, _) = dashboard(&[spec("b1", &fake.url)]).await;
    let response = get(&app, "/calls", "").await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[header::LOCATION], "/login");
    let response = get(&app, "/live/calls", "").await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = get(&app, "/healthz", "").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(text(response).await, "ok");
    let response = post_form(&app, "/managers/b1/drain", "", "id=edge-a", false).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(fake.actions().is_empty());
}

#[tokio::test]
async fn a_token_the_backend_accepts_opens_an_http_only_strict_session() {
    let fake = fake::start(vec![]).await;
    let (app, _) = dashboard(&[spec("b1", &fake.url)]).await;
    let response = send(
        &app,
        Request::post("/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from("token=wrong-token-0123456789"))
            .expect("request"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().get(header::SET_COOKIE).is_none());
    assert!(text(response).await.contains("refuse this token"));

    let response = send(
        &app,
        Request::post("/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("token={}", fake::TOKEN)))
            .expect("request"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let cookie = response.headers()[header::SET_COOKIE]
        .to_str()
        .expect("ASCII")
        .to_owned();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(
        !cookie.contains(fake::TOKEN),
        "the token stays on the server"
    );
    let session = cookie.split(';').next().expect("pair");
    assert_eq!(get(&app, "/", session).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_overview_sums_calls_registrations_managers_and_failures() {
    let fake = fake::start(vec![fake::call("c1", "Alice")]).await;
    let (app, _) = dashboard(&[spec("b1", &fake.url)]).await;
    let (cookie, _) = login(&app, fake::TOKEN).await;
    let response = get(&app, "/", &cookie).await;
    assert_eq!(response.status(), StatusCode::OK);
    let csp = response.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .expect("ASCII")
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let page = text(response).await;
    assert!(
        page.contains(r#"<div class="figure" id="total-calls">1</div>"#),
        "{page}"
    );
    assert!(
        page.contains(r#"<div class="figure" id="total-registrations">2</div>"#),
        "{page}"
    );
    assert!(page.contains("1/2</div>"), "managers healthy/total: {page}");
    assert!(page.contains("0.25"), "calls/s: {page}");
    assert!(page.contains("90.0 %"), "kernel share: {page}");
    assert!(
        page.contains("since start: 486: 2, 404: 1"),
        "failures by status: {page}"
    );
    assert!(
        page.contains(r#"<span class="recent">none</span>"#),
        "no failure since the dashboard started watching: {page}"
    );
    assert!(
        page.contains("edge-a: xdp"),
        "fast path per manager: {page}"
    );
    assert!(page.contains(r#"sse-connect="/live/overview""#), "{page}");
    let managers = text(get(&app, "/managers", &cookie).await).await;
    let shares: Vec<&str> = managers
        .split(r#"<td class="num kernel-share">"#)
        .skip(1)
        .map(|s| s.split('<').next().unwrap_or_default())
        .collect();
    assert_eq!(shares, vec!["90.0 %", "—"], "per manager: {managers}");
    assert!(!page.contains("https://"), "no CDN: {page}");
}

#[tokio::test]
async fn the_calls_table_shows_both_legs_and_escapes_the_display_name() {
    let fake = fake::start(vec![fake::call("c1", fake::XSS)]).await;
    let (app, _) = dashboard(&[spec("b1", &fake.url)]).await;
    let (cookie, _) = login(&app, fake::TOKEN).await;
    let page = text(get(&app, "/calls", &cookie).await).await;
    assert!(!page.contains(fake::XSS), "raw script in the page: {page}");
    assert!(
        page.contains("&#60;script&#62;alert(1)&#60;/script&#62;")
            || page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(
        page.contains(r#"data-leg="a""#) && page.contains(r#"data-leg="b""#),
        "{page}"
    );
    assert!(page.contains("1000/998"), "leg a packets in/out: {page}");
    assert!(page.contains("2.5 ms"), "leg a jitter: {page}");
    assert!(page.contains(r#"data-duration-ms="#), "{page}");
    assert!(
        page.contains("extensions") && page.contains("edge-a"),
        "route and manager: {page}"
    );
    assert!(page.contains(r#"/calls/b1/c1/hangup"#), "{page}");
}

#[tokio::test]
async fn the_call_page_draws_the_ladder_in_order_with_escaped_sdp() {
    let fake = fake::start(vec![fake::call("c1", fake::XSS)]).await;
    let (app, _) = dashboard(&[spec("b1", &fake.url)]).await;
    let (cookie, _) = login(&app, fake::TOKEN).await;
    let response = get(&app, "/calls/b1/c1", &cookie).await;
    assert_eq!(response.status(), StatusCode::OK);
    let page = text(response).await;
    assert!(page.contains(r#"<svg id="ladder""#), "{page}");
    let lines: Vec<&str> = page
        .split(r#"<text class="first-line""#)
        .skip(1)
        .map(|s| {
            s.split('>')
                .nth(1)
                .unwrap_or_default()
                .split('<')
                .next()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            "INVITE sip:1002@switchboard SIP/2.0",
            "SIP/2.0 100 Trying",
            "INVITE sip:1002@192.0.2.2:5062 SIP/2.0",
            "SIP/2.0 180 Ringing",
            "SIP/2.0 180 Ringing",
            "SIP/2.0 200 OK",
            "ACK sip:1002@192.0.2.2:5062 SIP/2.0",
            "SIP/2.0 200 OK",
            "ACK sip:1002@switchboard SIP/2.0",
        ]
    );
    // The first INVITE goes caller -> switchboard, the second switchboard -> callee.
    assert!(
        page.contains(r#"<line x1="80" y1="50" x2="380" y2="50""#),
        "{page}"
    );
    assert!(
        page.contains(r#"<line x1="380" y1="126" x2="680" y2="126""#),
        "{page}"
    );
    assert!(
        page.contains("m=audio 4000 RTP/AVP 0"),
        "caller's SDP: {page}"
    );
    assert!(
        page.contains("m=audio 20000 RTP/AVP 0"),
        "rewritten SDP: {page}"
    );
    assert!(!page.contains("<b>x</b>"), "SDP escaped: {page}");
    assert!(!page.contains(fake::XSS), "{page}");

    let response = get(&app, "/calls/b1/gone", &cookie).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(text(response).await.contains("has ended"));
}

#[tokio::test]
async fn hang_up_needs_the_csrf_token_and_goes_with_the_operators_token() {
    let fake = fake::start(vec![fake::call("c1", "Alice")]).await;
    let (app, _) = dashboard(&[spec("b1", &fake.url)]).await;
    let (cookie, csrf) = login(&app, fake::TOKEN).await;

    let response = post_form(&app, "/calls/b1/c1/hangup", &cookie, "csrf=forged", true).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let mut cross_site = Request::post("/calls/b1/c1/hangup")
        .header(header::COOKIE, &cookie)
        .header(header::HOST, "dashboard.test")
        .header(header::ORIGIN, "http://evil.test")
        .body(Body::from(format!("csrf={csrf}")))
        .expect("request");
    cross_site.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/x-www-form-urlencoded".parse().expect("value"),
    );
    assert_eq!(send(&app, cross_site).await.status(), StatusCode::FORBIDDEN);
    assert!(fake.actions().is_empty(), "nothing reached the backend");

    let response = post_form(
        &app,
        "/calls/b1/c1/hangup",
        &cookie,
        &format!("csrf={csrf}"),
        true,
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(text(response).await.contains("call is ending"));
    assert_eq!(
        fake.actions(),
        vec![(
            "DELETE /api/v1/calls/c1".to_owned(),
            Some(fake::TOKEN.to_owned())
        )]
    );
}

#[tokio::test]
async fn registrations_filter_by_aor_escape_the_user_agent_and_unregister() {
    let fake = fake::start(vec![]).await;
    let (app, _) = dashboard(&[spec("b1", &fake.url)]).await;
    let (cookie, csrf) = login(&app, fake::TOKEN).await;
    let page = text(get(&app, "/registrations", &cookie).await).await;
    assert!(
        page.contains("1001@switchboard") && page.contains("1002@switchboard"),
        "{page}"
    );
    assert!(!page.contains(fake::XSS), "user agent escaped: {page}");
    assert!(page.contains("Linphone/5"), "{page}");

    let page = text(get(&app, "/registrations?aor=1002", &cookie).await).await;
    assert!(page.contains("1002@switchboard"), "{page}");
    assert!(
        !page.contains(r#"<td class="aor">1001@switchboard"#),
        "{page}"
    );
    assert!(page.contains("/live/registrations?aor=1002"), "{page}");
    let partial = text(get(&app, "/registrations/table?aor=1001", &cookie).await).await;
    assert!(!partial.contains("<html"), "a fragment: {partial}");
    assert!(
        partial.contains(r#"<td class="aor">1001@switchboard"#),
        "{partial}"
    );

    let response = post_form(
        &app,
        "/registrations/b1/unregister",
        &cookie,
        &format!("csrf={csrf}&aor=1001%40switchboard"),
        false,
    )
    .await;
    assert_eq!(
        response.status(),
        StatusCode::SEE_OTHER,
        "a plain form is redirected"
    );
    assert_eq!(
        fake.actions(),
        vec![(
            "DELETE /api/v1/registrations/1001@switchboard".to_owned(),
            Some(fake::TOKEN.to_owned())
        )]
    );
}

#[tokio::test]
async fn shared_registrations_listed_by_several_servers_are_shown_once_with_their_node() {
    // Two servers answering the same list: 1002 names the node it came
    // through (the servers share registrations), 1001 does not.
    let one = fake::start(vec![]).await;
    let two = fake::start(vec![]).await;
    let (app, _) = dashboard(&[spec("b1", &one.url), spec("b2", &two.url)]).await;
    let (cookie, _) = login(&app, fake::TOKEN).await;
    let page = text(get(&app, "/registrations/table", &cookie).await).await;
    assert_eq!(
        page.matches(r#"<td class="aor">1002@switchboard"#).count(),
        1,
        "a shared binding once: {page}"
    );
    assert_eq!(
        page.matches(r#"<td class="aor">1001@switchboard"#).count(),
        2,
        "each server's own binding from each: {page}"
    );
    assert!(
        page.contains(r#"<td class="hide-narrow node">sig-1</td>"#),
        "{page}"
    );
    assert!(page.contains("3 binding(s)"), "{page}");
    // The overview counts the shared binding once too.
    let overview = text(get(&app, "/", &cookie).await).await;
    assert!(
        overview.contains(r#"<div class="figure" id="total-registrations">3</div>"#),
        "{overview}"
    );
}

#[tokio::test]
async fn drain_and_undrain_reach_the_backend_and_the_table_follows() {
    let fake = fake::start(vec![]).await;
    let (app, _) = dashboard(&[spec("b1", &fake.url)]).await;
    let (cookie, csrf) = login(&app, fake::TOKEN).await;
    let page = text(get(&app, "/managers", &cookie).await).await;
    assert!(
        page.contains("native XDP on eth1"),
        "fast-path reason: {page}"
    );
    assert!(
        page.contains(r#"hx-confirm="Drain edge-a?"#),
        "confirmation: {page}"
    );

    let response = post_form(
        &app,
        "/managers/b1/drain",
        &cookie,
        &format!("csrf={csrf}&id=edge-a"),
        true,
    )
    .await;
    assert!(text(response).await.contains("edge-a is drained"));
    let page = text(get(&app, "/managers", &cookie).await).await;
    assert!(
        page.contains("drained by operator"),
        "reread after the action: {page}"
    );
    assert!(page.contains(r#"class="undrain""#), "{page}");

    let response = post_form(
        &app,
        "/managers/b1/undrain",
        &cookie,
        &format!("csrf={csrf}&id=edge-a"),
        true,
    )
    .await;
    assert!(text(response).await.contains("takes new calls again"));
    let methods: Vec<String> = fake.actions().into_iter().map(|(what, _)| what).collect();
    assert_eq!(
        methods,
        vec![
            "POST /api/v1/rtpmanagers/edge-a/drain",
            "DELETE /api/v1/rtpmanagers/edge-a/drain"
        ]
    );
}

#[tokio::test]
async fn a_dead_backend_is_shown_and_never_holds_the_pages_or_the_other_backend() {
    let fake = fake::start(vec![fake::call("c1", "Alice")]).await;
    let silent = fake::start_silent().await;
    let started = Instant::now();
    let (app, _) = dashboard(&[spec("dead", &silent), spec("b1", &fake.url)]).await;
    assert!(
        started.elapsed() < TIMEOUT * 3,
        "one poll of both took {:?}",
        started.elapsed()
    );
    let (cookie, _) = login(&app, fake::TOKEN).await;
    let started = Instant::now();
    let page = text(get(&app, "/", &cookie).await).await;
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "the page waited on a backend"
    );
    assert!(page.contains("timed out after 300 ms"), "{page}");
    assert!(
        page.contains(r#"<div class="figure">1/2</div><div class="label">backends answering"#),
        "{page}"
    );
    let calls = text(get(&app, "/calls", &cookie).await).await;
    assert!(calls.contains("/calls/b1/c1"), "{calls}");
    let page = text(get(&app, "/backends", &cookie).await).await;
    assert!(page.contains("dead") && page.contains(&silent), "{page}");
}

#[tokio::test]
async fn assets_are_embedded_with_content_hashed_urls_cached_for_a_year() {
    let fake = fake::start(vec![]).await;
    let (app, _) = dashboard(&[spec("b1", &fake.url)]).await;
    let (cookie, _) = login(&app, fake::TOKEN).await;
    let page = text(get(&app, "/", &cookie).await).await;
    for name in ["htmx.min.js", "sse.min.js", "app.js", "app.css"] {
        let url = page
            .split('"')
            .find(|s| s.starts_with("/assets/") && s.ends_with(name))
            .unwrap_or_else(|| panic!("{name} linked: {page}"));
        let response = get(&app, url, "").await;
        assert_eq!(response.status(), StatusCode::OK, "{url}");
        assert_eq!(
            response.headers()[header::CACHE_CONTROL],
            "public, max-age=31536000, immutable"
        );
        assert!(!text(response).await.is_empty());
    }
}

/// Reads SSE events of `body` until one named `name` satisfies `done`,
/// within `limit`.
async fn wait_sse(
    body: &mut Body,
    buffer: &mut String,
    name: &str,
    limit: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let is_named = event.lines().any(|l| l == format!("event: {name}"));
            let data: String = event
                .lines()
                .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
                .collect::<Vec<_>>()
                .join("\n");
            if is_named && done(&data) {
                return data;
            }
        }
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .unwrap_or_else(|_| {
                panic!("no `{name}` event as expected within {limit:?}; last: {buffer}")
            })
            .expect("stream open")
            .expect("frame");
        if let Ok(data) = frame.into_data() {
            buffer.push_str(&String::from_utf8_lossy(&data));
        }
    }
}

#[tokio::test]
async fn a_call_appears_and_vanishes_on_the_live_stream_within_a_second_of_its_events() {
    let fake = fake::start(vec![]).await;
    let (app, state) = dashboard(&[spec("b1", &fake.url)]).await;
    state.backends.spawn(Duration::from_secs(3600));
    let (cookie, _) = login(&app, fake::TOKEN).await;
    // Wait for the dashboard to follow the fake's stream.
    let deadline = Instant::now() + Duration::from_secs(5);
    while state.backends.snapshot()[0].events != "live" {
        assert!(Instant::now() < deadline, "event stream never opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = get(&app, "/live/calls", &cookie).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let mut body = response.into_body();
    let mut buffer = String::new();
    wait_sse(
        &mut body,
        &mut buffer,
        "calls",
        Duration::from_secs(1),
        |d| d.contains("0 call(s) up"),
    )
    .await;

    // The fake lists the call too, as the real server does once created.
    fake.calls
        .lock()
        .expect("calls")
        .push(fake::call("c9", fake::XSS));
    let published = Instant::now();
    fake.publish(json!({"type": "call_created", "id": "c9", "at_ms": 1764950000000u64,
        "caller": {"uri": "sip:1001@switchboard", "display_name": fake::XSS, "address": "192.0.2.1:5060", "transport": "udp"},
        "callee": "sip:1002@switchboard"}));
    // The event brings the call; the reread of it that follows, its legs.
    let table = wait_sse(
        &mut body,
        &mut buffer,
        "calls",
        Duration::from_secs(1),
        |d| d.contains("/calls/b1/c9") && d.contains(r#"data-leg="b""#),
    )
    .await;
    assert!(published.elapsed() < Duration::from_secs(1));
    assert!(
        !table.contains(fake::XSS),
        "escaped on the stream too: {table}"
    );

    fake.calls.lock().expect("calls").clear();
    let published = Instant::now();
    fake.publish(
        json!({"type": "call_ended", "id": "c9", "at_ms": 1764950009000u64,
        "final_status": 200, "ended_by": "operator", "duration_ms": 9000}),
    );
    wait_sse(
        &mut body,
        &mut buffer,
        "calls",
        Duration::from_secs(1),
        |d| !d.contains("/calls/b1/c9"),
    )
    .await;
    assert!(published.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn a_call_page_gets_its_media_figures_pushed_and_learns_when_the_call_ends() {
    let fake = fake::start(vec![fake::call("c1", "Alice")]).await;
    let (app, state) = dashboard(&[spec("b1", &fake.url)]).await;
    state.backends.spawn(Duration::from_secs(3600));
    let (cookie, _) = login(&app, fake::TOKEN).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while state.backends.snapshot()[0].events != "live" {
        assert!(Instant::now() < deadline, "event stream never opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let page = text(get(&app, "/calls/b1/c1", &cookie).await).await;
    assert!(
        page.contains(r#"sse-connect="/live/call?backend=b1&amp;id=c1""#),
        "{page}"
    );
    let response = get(&app, "/live/call?backend=b1&id=c1", &cookie).await;
    let mut body = response.into_body();
    let mut buffer = String::new();
    let media = wait_sse(
        &mut body,
        &mut buffer,
        "call",
        Duration::from_secs(1),
        |d| d.contains(r#"<table id="call-media">"#),
    )
    .await;
    assert!(media.contains("172000"), "leg a bytes in: {media}");
    assert!(!media.contains("call-ended"), "{media}");

    fake.calls.lock().expect("calls").clear();
    fake.publish(
        json!({"type": "call_ended", "id": "c1", "at_ms": 1764950009000u64,
        "final_status": 200, "ended_by": "callee", "duration_ms": 9000}),
    );
    wait_sse(
        &mut body,
        &mut buffer,
        "call",
        Duration::from_secs(1),
        |d| d.contains("This call has ended."),
    )
    .await;
}

#[tokio::test]
async fn after_a_lagged_notice_the_dashboard_reconnects_and_rereads_the_calls() {
    let fake = fake::start(vec![]).await;
    let (_, state) = dashboard(&[spec("b1", &fake.url)]).await;
    state.backends.spawn(Duration::from_secs(3600));
    let wait_live = |what: &'static str| {
        let state = state.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            while state.backends.snapshot()[0].events != "live" {
                assert!(Instant::now() < deadline, "{what}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_live("event stream never opened").await;
    // A call the dashboard missed (no event), then the notice that events
    // were lost.
    fake.calls
        .lock()
        .expect("calls")
        .push(fake::call("missed", "Bob"));
    let _ = fake
        .events
        .send(("lagged".into(), r#"{"missed":7}"#.into()));
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let view = &state.backends.snapshot()[0];
        if view.calls.iter().any(|c| c.id == "missed") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the calls were not reread: {}",
            view.events
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_live("the stream was not reopened").await;
}

#[tokio::test]
async fn an_unnamed_backend_is_addressed_by_its_host_and_port_in_urls() {
    let fake = fake::start(vec![fake::call("c1", "Alice")]).await;
    let name = fake.url.trim_start_matches("http://").to_owned();
    let (app, _) = dashboard(&[spec(&name, &fake.url)]).await;
    let (cookie, csrf) = login(&app, fake::TOKEN).await;
    let calls = text(get(&app, "/calls", &cookie).await).await;
    assert!(calls.contains(&format!("/calls/{name}/c1")), "{calls}");
    assert_eq!(
        get(&app, &format!("/calls/{name}/c1"), &cookie)
            .await
            .status(),
        StatusCode::OK
    );
    let response = post_form(
        &app,
        &format!("/managers/{name}/drain"),
        &cookie,
        &format!("csrf={csrf}&id=edge-a"),
        true,
    )
    .await;
    assert!(text(response).await.contains("edge-a is drained"));
}

#[tokio::test]
async fn logging_out_ends_the_session_and_needs_the_csrf_token() {
    let fake = fake::start(vec![]).await;
    let (app, _) = dashboard(&[spec("b1", &fake.url)]).await;
    let (cookie, csrf) = login(&app, fake::TOKEN).await;
    let response = post_form(&app, "/logout", &cookie, "csrf=forged", false).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(get(&app, "/", &cookie).await.status(), StatusCode::OK);

    let response = post_form(&app, "/logout", &cookie, &format!("csrf={csrf}"), false).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[header::LOCATION], "/login");
    let cleared = response.headers()[header::SET_COOKIE]
        .to_str()
        .expect("ASCII")
        .to_owned();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    let response = get(&app, "/", &cookie).await;
    assert_eq!(
        response.status(),
        StatusCode::SEE_OTHER,
        "the old cookie opens nothing"
    );
}
