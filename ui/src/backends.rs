//! Polls every signaling server's REST API and keeps the latest snapshot of
//! each, so page renders never wait on a slow backend.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

type HttpClient =
    Client<hyper_util::client::legacy::connect::HttpConnector, Empty<axum::body::Bytes>>;

/// A signaling server's RTP manager pool (`GET /api/v1/rtpmanagers`).
#[derive(Clone, Debug, Deserialize)]
struct PoolView {
    members: Vec<RtpManagerView>,
}

/// Why a manager gets no new calls (`drain` of a pool member).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct DrainView {
    /// Drained by an operator through the REST API.
    #[serde(default)]
    pub operator: bool,
    /// Draining by its own report.
    #[serde(default)]
    pub manager: bool,
}

/// One RTP manager as a signaling server reports it.
#[derive(Clone, Debug, Deserialize)]
pub struct RtpManagerView {
    #[serde(default)]
    pub id: String,
    pub endpoint: String,
    pub health: String,
    pub detail: String,
    pub fast_path: String,
    #[serde(default)]
    pub fast_path_reason: String,
    #[serde(default)]
    pub active_calls: u32,
    #[serde(default)]
    pub ports_free: u32,
    #[serde(default)]
    pub drain: DrainView,
}

impl RtpManagerView {
    /// The drain state in a word, for the table.
    pub fn drain_label(&self) -> &'static str {
        match (self.drain.operator, self.drain.manager) {
            (false, false) => "",
            (true, false) => "drained by operator",
            (false, true) => "draining",
            (true, true) => "drained by operator, draining",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
struct HealthView {
    status: String,
    version: String,
}

/// The last poll of one signaling server.
#[derive(Clone, Debug)]
pub struct BackendSnapshot {
    pub url: String,
    /// `None` until the first successful poll; the error of the last failure otherwise.
    pub error: Option<String>,
    pub status: String,
    pub version: String,
    pub rtpmanagers: Vec<RtpManagerView>,
    pub polled_at: Option<SystemTime>,
}

/// All backends' snapshots.
#[derive(Clone, Debug)]
pub struct Backends {
    snapshots: Arc<RwLock<Vec<BackendSnapshot>>>,
    client: HttpClient,
    /// `Bearer <token>` for the backends' REST APIs, marked sensitive.
    authorization: Option<axum::http::HeaderValue>,
}

impl Backends {
    pub fn new(urls: &[String]) -> Self {
        let snapshots = urls
            .iter()
            .map(|url| BackendSnapshot {
                url: url.clone(),
                error: Some("not polled yet".into()),
                status: "unknown".into(),
                version: String::new(),
                rtpmanagers: Vec::new(),
                polled_at: None,
            })
            .collect();
        Backends {
            snapshots: Arc::new(RwLock::new(snapshots)),
            client: Client::builder(TokioExecutor::new()).build_http(),
            authorization: None,
        }
    }

    /// Sends `token` as a bearer token with every request (a token that
    /// cannot be a header value is dropped with a warning that does not
    /// show it).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.authorization = token.and_then(|token| {
            let value = axum::http::HeaderValue::try_from(format!("Bearer {token}"));
            match value {
                Ok(mut value) => {
                    value.set_sensitive(true);
                    Some(value)
                }
                Err(_) => {
                    tracing::warn!("the backend token cannot be sent in a header; none is sent");
                    None
                }
            }
        });
        self
    }

    /// The current snapshots, in configuration order.
    pub fn snapshot(&self) -> Vec<BackendSnapshot> {
        self.snapshots
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Polls every backend every `interval`, forever.
    pub fn spawn_polling(&self, interval: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                this.poll_all().await;
            }
        });
    }

    /// Polls every backend once.
    pub async fn poll_all(&self) {
        let urls: Vec<String> = self.snapshot().into_iter().map(|s| s.url).collect();
        for (index, url) in urls.iter().enumerate() {
            let result = self.poll(url).await;
            let Ok(mut snapshots) = self.snapshots.write() else {
                return;
            };
            let Some(slot) = snapshots.get_mut(index) else {
                continue;
            };
            match result {
                Ok((health, managers)) => {
                    slot.error = None;
                    slot.status = health.status;
                    slot.version = health.version;
                    slot.rtpmanagers = managers;
                    slot.polled_at = Some(SystemTime::now());
                }
                Err(e) => {
                    if slot.error.as_deref() != Some(e.as_str()) {
                        tracing::warn!(backend = %url, error = %e, "signaling backend unreachable");
                    }
                    slot.error = Some(e);
                    slot.status = "unreachable".into();
                }
            }
        }
    }

    async fn poll(&self, base: &str) -> Result<(HealthView, Vec<RtpManagerView>), String> {
        let health: HealthView = self.get_json(&format!("{base}/api/v1/health")).await?;
        let pool: PoolView = self.get_json(&format!("{base}/api/v1/rtpmanagers")).await?;
        Ok((health, pool.members))
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let uri: axum::http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let mut request = axum::http::Request::get(uri);
        if let Some(authorization) = &self.authorization {
            request = request.header(axum::http::header::AUTHORIZATION, authorization.clone());
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| format!("{url}: {e}"))?;
        let request = self.client.request(request);
        let response = tokio::time::timeout(Duration::from_secs(3), request)
            .await
            .map_err(|_| format!("{url}: timed out"))?
            .map_err(|e| format!("{url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("{url}: HTTP {}", response.status()));
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{url}: {e}"))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| format!("{url}: bad JSON: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_object_of_signaling_parses_with_ids_and_drain() {
        let json = r#"{"total":2,"healthy":1,"accepting":1,"active_calls":3,"members":[
            {"id":"edge-a","endpoint":"http://10.0.0.1:9090","health":"healthy","detail":"ok",
             "fast_path":"xdp","fast_path_reason":"","instance_id":"i","version":"0.1.0",
             "active_calls":3,"ports_free":4000,"drain":{"operator":true,"manager":false},"accepting":false},
            {"id":"10.0.0.2:9090","endpoint":"http://10.0.0.2:9090","health":"down","detail":"unavailable",
             "fast_path":"","fast_path_reason":"","instance_id":"","version":"",
             "active_calls":0,"ports_free":0,"drain":{"operator":false,"manager":false},"accepting":false}]}"#;
        let pool: PoolView = serde_json::from_str(json).expect("pool parses");
        assert_eq!(pool.members.len(), 2);
        assert_eq!(pool.members[0].id, "edge-a");
        assert_eq!(pool.members[0].active_calls, 3);
        assert_eq!(pool.members[0].drain_label(), "drained by operator");
        assert_eq!(pool.members[1].health, "down");
        assert_eq!(pool.members[1].drain_label(), "");
    }

    /// A backend that answers only requests bearing `token`.
    async fn guarded_backend(token: &'static str) -> String {
        use axum::http::{HeaderMap, StatusCode};
        use axum::routing::get;
        let guard = move |headers: HeaderMap| async move {
            let expected = format!("Bearer {token}");
            if headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&expected) {
                Ok(())
            } else {
                Err(StatusCode::UNAUTHORIZED)
            }
        };
        let app = axum::Router::new()
            .route("/api/v1/health", get(|| async { r#"{"status":"ok","version":"t"}"# }))
            .route(
                "/api/v1/rtpmanagers",
                get(move |headers: HeaderMap| async move {
                    guard(headers).await.map(|()| {
                        r#"{"total":1,"members":[{"id":"m","endpoint":"http://x:1","health":"healthy","detail":"ok","fast_path":"off"}]}"#
                    })
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn the_backend_token_is_sent_and_without_it_the_backend_shows_401() {
        let url = guarded_backend("ui-token-0123456789abcdef").await;
        let with = Backends::new(std::slice::from_ref(&url))
            .with_token(Some("ui-token-0123456789abcdef".to_owned()));
        with.poll_all().await;
        let snapshot = &with.snapshot()[0];
        assert_eq!(snapshot.error, None);
        assert_eq!(snapshot.rtpmanagers[0].id, "m");

        let without = Backends::new(std::slice::from_ref(&url));
        without.poll_all().await;
        let error = without.snapshot()[0].error.clone().expect("refused");
        assert!(error.contains("401"), "{error}");
    }
}
