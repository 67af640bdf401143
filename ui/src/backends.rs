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

/// One RTP manager as a signaling server reports it.
#[derive(Clone, Debug, Deserialize)]
pub struct RtpManagerView {
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
        }
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
        let managers: Vec<RtpManagerView> =
            self.get_json(&format!("{base}/api/v1/rtpmanagers")).await?;
        Ok((health, managers))
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let uri: axum::http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let request = self.client.get(uri);
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
