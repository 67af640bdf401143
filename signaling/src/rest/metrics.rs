//! `/metrics` (Prometheus text, through `prometheus-client`) and
//! `/api/v1/stats` (the same figures summed up in JSON).
//!
//! The server's own metrics live in [`crate::metrics::Metrics`]; the pool's
//! health and the transports' drop counters are kept where they happen and
//! copied into the exposition at each scrape.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{ApiState, AppError};
use crate::metrics::Stats;
use crate::rtpmanager_pool::Health;
use crate::transport::limits::StatsSnapshot;

/// `GET /api/v1/stats`.
pub(super) async fn stats(State(state): State<ApiState>) -> Json<Stats> {
    Json(state.metrics.stats(Instant::now()))
}

/// `GET /metrics`.
pub(super) async fn metrics(State(state): State<ApiState>) -> Result<impl IntoResponse, AppError> {
    let mut registry = Registry::default();
    state.metrics.register(&mut registry);
    registry.register_collector(Box::new(Scrape {
        managers: state
            .pool
            .statuses()
            .into_iter()
            .map(|s| (s.endpoint, s.health == Health::Healthy))
            .collect(),
        transport: state.transport.as_ref().map(|t| t.snapshot()),
        rest_refused: state
            .rest_refused
            .as_ref()
            .map(|r| r.load(Ordering::Relaxed)),
    }));
    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry)
        .map_err(|_| AppError::Internal("encoding the metrics failed".to_owned()))?;
    Ok((
        [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
        text,
    ))
}

/// Figures kept outside [`crate::metrics::Metrics`], copied at one scrape.
#[derive(Debug)]
struct Scrape {
    /// Each manager's endpoint and whether it is healthy.
    managers: Vec<(String, bool)>,
    transport: Option<StatsSnapshot>,
    rest_refused: Option<u64>,
}

/// A counter family: name (without `_total`), help, (label, value) series.
type Family<'a> = (
    &'a str,
    &'a str,
    Vec<(Option<(&'static str, &'static str)>, u64)>,
);

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut up = encoder.encode_descriptor(
            "switchboard_rtpmanager_up",
            "Whether the RTP manager answers health checks and accepts calls.",
            None,
            MetricType::Gauge,
        )?;
        for (endpoint, healthy) in &self.managers {
            let labels = [("endpoint", endpoint.as_str())];
            ConstGauge::new(i64::from(*healthy)).encode(up.encode_family(&labels)?)?;
        }
        let mut families: Vec<Family<'_>> = Vec::new();
        if let Some(s) = &self.transport {
            families.extend(transport_families(s));
        }
        if let Some(refused) = self.rest_refused {
            families.push((
                "switchboard_rest_connections_refused",
                "REST connections closed at once over --rest-max-connections.",
                vec![(None, refused)],
            ));
        }
        for (name, help, series) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (label, value) in series {
                let counter = ConstCounter::new(value);
                match label {
                    Some(label) => counter.encode(family.encode_family(&[label])?)?,
                    None => counter.encode(family.encode_family(&NO_LABELS)?)?,
                }
            }
        }
        Ok(())
    }
}

const NO_LABELS: [(&str, &str); 0] = [];

/// The SIP transports' and input queue's drop counters.
fn transport_families(s: &StatsSnapshot) -> Vec<Family<'static>> {
    vec![
        (
            "switchboard_sip_tcp_refused",
            "SIP TCP connections closed at once over a limit (total: --tcp-max-connections, source: --tcp-max-connections-per-source).",
            vec![(Some(("limit", "total")), s.tcp_refused_total), (Some(("limit", "source")), s.tcp_refused_per_source)],
        ),
        (
            "switchboard_sip_tcp_accept_errors",
            "Failed accepts on the SIP TCP listener (e.g. out of file descriptors).",
            vec![(None, s.tcp_accept_errors)],
        ),
        (
            "switchboard_sip_tcp_closed",
            "SIP TCP connections closed by a limit (idle: no complete message for --tcp-idle-timeout; message_timeout: not complete within --tcp-message-timeout; buffer_budget: holding part of a message while all connections held over 64 MiB).",
            vec![(Some(("reason", "idle")), s.tcp_idle_closed), (Some(("reason", "message_timeout")), s.tcp_message_timeouts), (Some(("reason", "buffer_budget")), s.tcp_buffer_closed)],
        ),
        (
            "switchboard_sip_rate_limited",
            "SIP messages dropped unanswered over --source-rate-limit.",
            vec![(None, s.rate_limited)],
        ),
        (
            "switchboard_sip_queue_dropped",
            "SIP messages dropped at the core's input queue (full: --input-queue-bytes or its message limit; source_share: the source held a quarter of it).",
            vec![(Some(("reason", "full")), s.queue_full), (Some(("reason", "source_share")), s.queue_source_share)],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::auth::{AuthConfig, AuthMode, Authenticator, Users};
    use crate::events::EventBus;
    use crate::metrics::Metrics;
    use crate::registrar::{Registrar, RegistrarConfig, Store};
    use crate::rest::{app, ApiAccess};
    use crate::rtpmanager_pool::ManagerPool;
    use crate::transport::{Flow, Inbound};
    use crate::uas::{Now, Uas, UasConfig};

    fn udp(text: &str) -> Inbound {
        Inbound {
            flow: Flow::Udp {
                remote: "192.0.2.10:5062".parse().expect("address"),
            },
            bytes: text.as_bytes().to_vec(),
        }
    }

    const REGISTER: &str = "REGISTER sip:example.com SIP/2.0\r\n\
        Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKreg\r\n\
        Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=1\r\n\
        To: <sip:alice@example.com>\r\nCall-ID: reg\r\nCSeq: 1 REGISTER\r\n\
        Contact: <sip:alice@192.0.2.10:5062>\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n";

    const INVITE: &str = "INVITE sip:bob@example.com SIP/2.0\r\n\
        Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKinv\r\n\
        Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=1\r\n\
        To: <sip:bob@example.com>\r\nCall-ID: inv\r\nCSeq: 1 INVITE\r\n\
        Contact: <sip:alice@192.0.2.10:5062>\r\nContent-Length: 0\r\n\r\n";

    /// A core (anonymous, a real store in `dir`) that took a REGISTER and
    /// an INVITE it answers 480 (no call handler), counted in `metrics`
    /// as the driver counts them: each answered 30 ms after arrival.
    fn known_actions(dir: &std::path::Path, metrics: &Metrics) {
        let mut auth = AuthConfig::digest("test", vec![7; 32]);
        auth.mode = AuthMode::Anonymous;
        let (store, _) = Store::open(dir).expect("store");
        let mut uas = Uas::new(
            UasConfig::new("test"),
            Registrar::new(RegistrarConfig::default()),
            Authenticator::new(auth, Users::default()),
            Box::new(store),
        );
        let now = Now::current();
        uas.handle_received(now, udp(REGISTER), now.instant);
        uas.handle_input(now, crate::uas::Input::Commit);
        let mut sync = uas.poll_sync().expect("the REGISTER's change is synced");
        sync.run();
        uas.handle_input(now, crate::uas::Input::Synced(sync));
        uas.handle_received(now, udp(INVITE), now.instant);
        while uas.poll_transmit().is_some() {}
        while let Some(observation) = uas.poll_observation() {
            metrics.observe(&observation, now.instant + Duration::from_millis(30));
        }
        metrics.set_core(uas.gauges());
    }

    fn router(metrics: Metrics) -> axum::Router {
        let pool = ManagerPool::new(&["http://127.0.0.1:9".to_owned()]).expect("pool");
        app(ApiState {
            migrations: None,
            pool,
            sip: None,
            transport: None,
            rest_refused: None,
            access: Arc::new(ApiAccess::open()),
            calls: None,
            events: EventBus::new(),
            metrics,
            reload: None,
            location: None,
        })
    }

    async fn get(router: &axum::Router, path: &str) -> (StatusCode, String, String) {
        let request = Request::builder()
            .method(Method::GET)
            .uri(path)
            .body(Body::empty())
            .expect("request");
        let response = router.clone().oneshot(request).await.expect("answer");
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (
            status,
            content_type,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    /// The series of a Prometheus text exposition, by name with labels.
    fn parse(text: &str) -> HashMap<String, f64> {
        text.lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("series and value");
                (series.to_owned(), value.parse().expect("a number"))
            })
            .collect()
    }

    #[tokio::test]
    async fn stats_count_a_registration_and_a_refused_call() {
        let dir = tempfile::tempdir().expect("temp dir");
        let metrics = Metrics::default();
        known_actions(dir.path(), &metrics);
        let (status, _, body) = get(&router(metrics), "/api/v1/stats").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let stats: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(stats["calls"]["total"], 1, "{stats}");
        assert_eq!(stats["calls"]["active"], 0);
        assert_eq!(stats["calls"]["by_status"], serde_json::json!({"480": 1}));
        assert!(stats["calls"]["per_second_last_minute"].is_number());
        assert_eq!(stats["registrations"], 1);
        // The REGISTER's and the INVITE's server transactions linger
        // (timers J and H) to absorb retransmissions.
        assert_eq!(stats["transactions"], 2);
        assert_eq!(stats["dialogs"], 0);
        assert_eq!(
            stats["auth"],
            serde_json::json!({"failures": 0, "lockouts": 0})
        );
        assert!(stats["uptime_secs"].is_u64());
    }

    #[tokio::test]
    async fn metrics_expose_counters_gauges_and_latency_histograms_in_prometheus_text() {
        let dir = tempfile::tempdir().expect("temp dir");
        let metrics = Metrics::default();
        known_actions(dir.path(), &metrics);
        let (status, content_type, text) = get(&router(metrics), "/metrics").await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        let series = parse(&text);
        let value = |name: &str| {
            *series
                .get(name)
                .unwrap_or_else(|| panic!("no series {name} in\n{text}"))
        };
        assert_eq!(value("switchboard_calls_started_total"), 1.0);
        assert_eq!(
            value("switchboard_calls_final_status_total{status=\"480\"}"),
            1.0
        );
        assert_eq!(
            value("switchboard_register_responses_total{status=\"200\"}"),
            1.0
        );
        assert_eq!(
            value("switchboard_registration_changes_total{change=\"added\"}"),
            1.0
        );
        assert_eq!(
            value("switchboard_registration_changes_total{change=\"expired\"}"),
            0.0
        );
        assert_eq!(
            value("switchboard_auth_failures_total{reason=\"rejected\"}"),
            0.0
        );
        assert_eq!(value("switchboard_registrations"), 1.0);
        assert_eq!(value("switchboard_registered_aors"), 1.0);
        assert_eq!(value("switchboard_sip_transactions"), 2.0);
        assert_eq!(value("switchboard_calls_active"), 0.0);
        // Both answers took 30 ms: in the 50 ms bucket, not the 25 ms one.
        for histogram in [
            "switchboard_invite_final_response_seconds",
            "switchboard_register_seconds",
        ] {
            assert_eq!(value(&format!("{histogram}_count")), 1.0);
            assert!((value(&format!("{histogram}_sum")) - 0.030).abs() < 1e-6);
            assert_eq!(value(&format!("{histogram}_bucket{{le=\"0.025\"}}")), 0.0);
            assert_eq!(value(&format!("{histogram}_bucket{{le=\"0.05\"}}")), 1.0);
            assert_eq!(value(&format!("{histogram}_bucket{{le=\"+Inf\"}}")), 1.0);
        }
        assert_eq!(
            value("switchboard_rtpmanager_up{endpoint=\"http://127.0.0.1:9\"}"),
            0.0
        );
        assert!(
            text.contains("# TYPE switchboard_calls_final_status_total counter"),
            "{text}"
        );
        assert!(text.contains("# TYPE switchboard_invite_final_response_seconds histogram"));
    }

    #[tokio::test]
    async fn metrics_keep_the_transport_and_rest_counters_by_their_names() {
        let transport = Arc::new(crate::transport::limits::TransportStats::default());
        crate::transport::limits::TransportStats::bump(&transport.rate_limited);
        let refused = Arc::new(std::sync::atomic::AtomicU64::new(3));
        let pool = ManagerPool::new(&[]).expect("pool");
        let router = app(ApiState {
            migrations: None,
            pool,
            sip: None,
            transport: Some(transport),
            rest_refused: Some(refused),
            access: Arc::new(ApiAccess::open()),
            calls: None,
            events: EventBus::new(),
            metrics: Metrics::default(),
            reload: None,
            location: None,
        });
        let (_, _, text) = get(&router, "/metrics").await;
        let series = parse(&text);
        assert_eq!(
            series.get("switchboard_sip_rate_limited_total"),
            Some(&1.0),
            "{text}"
        );
        assert_eq!(
            series.get("switchboard_rest_connections_refused_total"),
            Some(&3.0)
        );
        assert_eq!(
            series.get("switchboard_sip_tcp_refused_total{limit=\"source\"}"),
            Some(&0.0)
        );
        assert_eq!(
            series.get("switchboard_sip_queue_dropped_total{reason=\"source_share\"}"),
            Some(&0.0)
        );
        assert_eq!(
            series.get("switchboard_sip_tcp_accept_errors_total"),
            Some(&0.0)
        );
    }
}
