//! The server's counters, gauges and latency histograms: what `/metrics`
//! exposes to Prometheus and `/api/v1/stats` summarises.
//!
//! [`Metrics`] is a set of shared handles (clones count into the same
//! values). The SIP core's thread only touches atomics and the library's
//! uncontended histogram locks: counters are bumped from the core's
//! [`Observation`]s by its driver, gauges are set from the core's sizes
//! after each input. Everything is read on the REST side, at scrape time.
//!
//! Calls in progress and dialogs are the B2BUA's tables, read through a
//! [`CallProbe`] when asked (the B2BUA publishes its occupancy after each
//! step), so counting them costs the core nothing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::registrar::SharedLocation;
use crate::uas::{CoreGauges, Observation};

/// Upper bounds (seconds) of the latency histograms: 1 ms to 30 s. An
/// INVITE's final response includes the callee's ringing, a REGISTER's
/// the journal's fsync.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Upper bounds (seconds) of `switchboard_media_request_seconds`: 250 µs
/// (a manager on the same host, idle) to 5 s (the requests' timeout).
const MEDIA_REQUEST_BUCKETS: [f64; 14] = [
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The labels of a media request's time: `op` and `rtpmanager` (its id).
type MediaRequestLabels = Vec<(&'static str, String)>;

fn media_request_histogram() -> Histogram {
    Histogram::new(MEDIA_REQUEST_BUCKETS)
}

/// How far back `per_second_last_minute` looks.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// The reasons of `switchboard_auth_failures_total` (see
/// [`Observation::AuthFailed`]).
const AUTH_FAILURES: [&str; 5] = ["malformed", "rejected", "slowed", "replay", "locked_out"];

/// One label, e.g. `reason="rejected"`.
type Label = [(&'static str, &'static str); 1];

/// Reads the B2BUA's calls in progress and dialogs.
pub type CallProbe = Box<dyn Fn() -> CallCounts + Send + Sync>;

/// Calls in progress and their dialogs (one per confirmed or early leg).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallCounts {
    pub calls: u64,
    pub dialogs: u64,
}

/// Counts per final SIP status (200–699), lock-free.
struct StatusCounts(Box<[AtomicU64]>);

impl StatusCounts {
    const FIRST: u16 = 200;

    fn new() -> StatusCounts {
        StatusCounts((200..700).map(|_| AtomicU64::new(0)).collect())
    }

    fn bump(&self, status: u16) {
        let index = usize::from(status.clamp(Self::FIRST, 699) - Self::FIRST);
        if let Some(count) = self.0.get(index) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The statuses seen, with their counts, in order.
    fn nonzero(&self) -> Vec<(u16, u64)> {
        self.0
            .iter()
            .zip(Self::FIRST..)
            .filter_map(|(count, status)| {
                let count = count.load(Ordering::Relaxed);
                (count > 0).then_some((status, count))
            })
            .collect()
    }
}

impl std::fmt::Debug for StatusCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.nonzero()).finish()
    }
}

/// The calls started, sampled once a second, for the rate over the last
/// minute. Sans-clock: the sampler passes the time.
#[derive(Debug, Default)]
struct RateWindow {
    samples: VecDeque<(Instant, u64)>,
}

impl RateWindow {
    fn record(&mut self, at: Instant, total: u64) {
        self.samples.push_back((at, total));
        // One sample older than the window is kept as its start.
        while self
            .samples
            .get(1)
            .is_some_and(|(then, _)| at.saturating_duration_since(*then) >= RATE_WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// Calls per second between the oldest sample at most a minute old (or
    /// the youngest older one) and `(at, total)`.
    fn per_second(&self, at: Instant, total: u64) -> f64 {
        let start = self
            .samples
            .iter()
            .find(|(then, _)| at.saturating_duration_since(*then) <= RATE_WINDOW)
            .or(self.samples.back());
        match start {
            Some((then, before)) => {
                let secs = at.saturating_duration_since(*then).as_secs_f64();
                if secs < 1e-3 {
                    0.0
                } else {
                    total.saturating_sub(*before) as f64 / secs
                }
            }
            None => 0.0,
        }
    }
}

struct Inner {
    started: Instant,
    calls_started: Counter,
    calls_by_status: StatusCounts,
    invite_seconds: Histogram,
    registers_by_status: StatusCounts,
    register_seconds: Histogram,
    registration_changes: Family<Label, Counter>,
    media_request_seconds: Family<MediaRequestLabels, Histogram, fn() -> Histogram>,
    auth_failures: Family<Label, Counter>,
    auth_lockouts: Counter,
    transactions: Gauge,
    bindings: Gauge,
    aors: Gauge,
    calls_active: Gauge,
    dialogs: Gauge,
    sse_clients: Gauge,
    sse_dropped: Counter,
    call_probe: OnceLock<CallProbe>,
    /// The shared location store, when the node uses one.
    location: OnceLock<Arc<SharedLocation>>,
    window: Mutex<RateWindow>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("calls_started", &self.calls_started.get())
            .field("calls_by_status", &self.calls_by_status)
            .finish_non_exhaustive()
    }
}

/// The server's metrics; clones share the values. See the [module
/// documentation](self).
#[derive(Clone, Debug)]
pub struct Metrics(Arc<Inner>);

/// `GET /api/v1/stats`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    pub uptime_secs: u64,
    pub calls: CallStats,
    /// Bindings (contacts) registered.
    pub registrations: u64,
    /// SIP transactions in progress.
    pub transactions: u64,
    pub dialogs: u64,
    pub auth: AuthStats,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallStats {
    pub active: u64,
    /// INVITEs that reached call handling since the start.
    pub total: u64,
    /// Calls by the final status their caller got, e.g. `{"200": 3}`.
    pub by_status: std::collections::BTreeMap<String, u64>,
    pub per_second_last_minute: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuthStats {
    /// Requests refused for their credentials or a lockout (not plain
    /// challenges).
    pub failures: u64,
    /// Sources locked out after too many failures.
    pub lockouts: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(Instant::now())
    }
}

impl Metrics {
    /// Metrics of a server started at `started`.
    pub fn new(started: Instant) -> Metrics {
        let mut window = RateWindow::default();
        window.record(started, 0);
        let metrics = Metrics(Arc::new(Inner {
            started,
            calls_started: Counter::default(),
            calls_by_status: StatusCounts::new(),
            invite_seconds: Histogram::new(LATENCY_BUCKETS),
            registers_by_status: StatusCounts::new(),
            register_seconds: Histogram::new(LATENCY_BUCKETS),
            registration_changes: Family::default(),
            media_request_seconds: Family::new_with_constructor(media_request_histogram),
            auth_failures: Family::default(),
            auth_lockouts: Counter::default(),
            transactions: Gauge::default(),
            bindings: Gauge::default(),
            aors: Gauge::default(),
            calls_active: Gauge::default(),
            dialogs: Gauge::default(),
            sse_clients: Gauge::default(),
            sse_dropped: Counter::default(),
            call_probe: OnceLock::new(),
            location: OnceLock::new(),
            window: Mutex::new(window),
        }));
        // Every series exists from the start at 0, so rate() and alerts
        // see the first increase.
        for reason in AUTH_FAILURES {
            let _ = metrics.0.auth_failures.get_or_create(&[("reason", reason)]);
        }
        for change in ["added", "refreshed", "removed", "expired"] {
            let _ = metrics
                .0
                .registration_changes
                .get_or_create(&[("change", change)]);
        }
        metrics
    }

    /// Reads calls in progress and dialogs through `probe` from now on
    /// (the first probe set stays).
    pub fn set_call_probe(&self, probe: CallProbe) {
        let _ = self.0.call_probe.set(probe);
    }

    /// Exposes the shared location store's state (`switchboard_location_*`).
    pub fn set_location(&self, location: Arc<SharedLocation>) {
        let _ = self.0.location.set(location);
    }

    /// Times a request of the B2BUA's media executor (`op`: offer, answer,
    /// delete ...) on manager `rtpmanager`, from its call's task sending it
    /// to its result (a refused first offer's retries on other managers
    /// included).
    pub fn observe_media_request(&self, op: &'static str, rtpmanager: String, took: Duration) {
        self.0
            .media_request_seconds
            .get_or_create(&vec![("op", op.to_owned()), ("rtpmanager", rtpmanager)])
            .observe(took.as_secs_f64());
    }

    /// Counts what the SIP core reported; `now` ends the latencies.
    pub fn observe(&self, observation: &Observation, now: Instant) {
        let m = &self.0;
        match observation {
            Observation::CallStarted => {
                m.calls_started.inc();
            }
            Observation::InviteAnswered { status, received } => {
                m.calls_by_status.bump(*status);
                m.invite_seconds
                    .observe(now.saturating_duration_since(*received).as_secs_f64());
            }
            Observation::RegisterAnswered { status, received } => {
                m.registers_by_status.bump(*status);
                m.register_seconds
                    .observe(now.saturating_duration_since(*received).as_secs_f64());
            }
            Observation::AuthFailed { reason } => {
                m.auth_failures.get_or_create(&[("reason", reason)]).inc();
            }
            Observation::LockedOut => {
                m.auth_lockouts.inc();
            }
            Observation::Registration(event) => {
                let change = event.kind().trim_start_matches("registration_");
                m.registration_changes
                    .get_or_create(&[("change", change)])
                    .inc();
            }
        }
    }

    /// Sets the gauges of the core's tables.
    pub fn set_core(&self, gauges: CoreGauges) {
        let m = &self.0;
        m.transactions.set(as_i64(gauges.transactions));
        m.bindings.set(as_i64(gauges.bindings));
        m.aors.set(as_i64(gauges.aors));
    }

    /// An SSE client connected; its guard counts it until dropped.
    pub fn sse_client(&self) -> SseClient {
        self.0.sse_clients.inc();
        SseClient(self.clone())
    }

    /// An SSE client fell behind and was dropped.
    pub fn sse_dropped(&self) {
        self.0.sse_dropped.inc();
    }

    /// Records the calls started so far, for the rate over the last
    /// minute; the driver calls it about once a second.
    pub fn sample(&self, now: Instant) {
        let total = self.0.calls_started.get();
        if let Ok(mut window) = self.0.window.lock() {
            window.record(now, total);
        }
    }

    /// Samples every second until the runtime stops.
    pub fn spawn_sampler(&self) {
        let metrics = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            loop {
                ticker.tick().await;
                metrics.sample(Instant::now());
            }
        });
    }

    /// Updates the call gauges from the probe, when there is one.
    fn refresh_calls(&self) {
        if let Some(probe) = self.0.call_probe.get() {
            let counts = probe();
            self.0.calls_active.set(as_i64(counts.calls));
            self.0.dialogs.set(as_i64(counts.dialogs));
        }
    }

    /// The summary of `/api/v1/stats` at `now`.
    pub fn stats(&self, now: Instant) -> Stats {
        self.refresh_calls();
        let m = &self.0;
        let total = m.calls_started.get();
        let per_second = m
            .window
            .lock()
            .map(|w| w.per_second(now, total))
            .unwrap_or(0.0);
        let failures = AUTH_FAILURES
            .iter()
            .filter_map(|reason| m.auth_failures.get(&[("reason", reason)]).map(|c| c.get()))
            .sum();
        Stats {
            uptime_secs: now.saturating_duration_since(m.started).as_secs(),
            calls: CallStats {
                active: as_u64(m.calls_active.get()),
                total,
                by_status: m
                    .calls_by_status
                    .nonzero()
                    .into_iter()
                    .map(|(status, count)| (status.to_string(), count))
                    .collect(),
                // Rounded: a JSON figure, not a measurement to 15 digits.
                per_second_last_minute: (per_second * 1000.0).round() / 1000.0,
            },
            registrations: as_u64(m.bindings.get()),
            transactions: as_u64(m.transactions.get()),
            dialogs: as_u64(m.dialogs.get()),
            auth: AuthStats {
                failures,
                lockouts: m.auth_lockouts.get(),
            },
        }
    }

    /// Registers every metric of this set in `registry`, for one scrape
    /// (help texts without their final period: the library adds one).
    pub fn register(&self, registry: &mut Registry) {
        self.refresh_calls();
        let m = &self.0;
        registry.register(
            "switchboard_calls_started",
            "Calls started: INVITEs without a To tag that passed authentication and reached call handling",
            m.calls_started.clone(),
        );
        registry.register(
            "switchboard_calls_active",
            "Calls in progress in the B2BUA (being set up, ringing or answered)",
            m.calls_active.clone(),
        );
        registry.register(
            "switchboard_dialogs",
            "SIP dialogs of calls in progress (one per leg)",
            m.dialogs.clone(),
        );
        registry.register(
            "switchboard_invite_final_response_seconds",
            "Time from a caller's INVITE taken by the SIP core to its final response leaving (ringing included)",
            m.invite_seconds.clone(),
        );
        registry.register(
            "switchboard_register_seconds",
            "Time from a REGISTER arriving to its answer leaving, the binding store's fsync included",
            m.register_seconds.clone(),
        );
        registry.register(
            "switchboard_media_request_seconds",
            "Time of a media request (offer, answer, delete ...) on an RTP manager, from the B2BUA's executor sending it to its result",
            m.media_request_seconds.clone(),
        );
        registry.register(
            "switchboard_registrations",
            "Bindings (contacts) in the location service",
            m.bindings.clone(),
        );
        registry.register(
            "switchboard_registered_aors",
            "Addresses-of-record with at least one binding",
            m.aors.clone(),
        );
        registry.register(
            "switchboard_registration_changes",
            "Binding changes: added, refreshed, removed (by REGISTER or the API) and expired",
            m.registration_changes.clone(),
        );
        registry.register(
            "switchboard_sip_transactions",
            "SIP transactions in progress (client and server)",
            m.transactions.clone(),
        );
        registry.register(
            "switchboard_auth_failures",
            "Requests refused for their credentials (malformed, rejected, slowed, replay) or a source lockout (locked_out); plain challenges are not counted",
            m.auth_failures.clone(),
        );
        registry.register(
            "switchboard_auth_lockouts",
            "Sources locked out after too many authentication failures",
            m.auth_lockouts.clone(),
        );
        registry.register(
            "switchboard_events_clients",
            "Clients connected to /api/v1/events",
            m.sse_clients.clone(),
        );
        registry.register(
            "switchboard_events_clients_dropped",
            "Event-stream clients dropped for falling behind",
            m.sse_dropped.clone(),
        );
        registry.register_collector(Box::new(StatusCollector(self.clone())));
        if let Some(location) = m.location.get() {
            registry.register_collector(Box::new(LocationCollector(Arc::clone(location))));
        }
    }
}

/// The shared location store's figures, read at scrape time.
#[derive(Debug)]
struct LocationCollector(Arc<SharedLocation>);

impl Collector for LocationCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let location = &self.0;
        for (name, help, value) in [
            (
                "switchboard_location_store_up",
                "1 when the last commit to (or read of) the shared location store succeeded",
                location.store_up(),
            ),
            (
                "switchboard_location_following",
                "1 when the node follows other nodes' binding changes in the shared location store",
                location.following(),
            ),
        ] {
            let gauge = prometheus_client::metrics::gauge::ConstGauge::new(i64::from(value));
            gauge.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
        }
        for (name, help, value) in [
            (
                "switchboard_location_store_errors",
                "Failed operations on the shared location store (commits, reads, connections)",
                location.errors(),
            ),
            (
                "switchboard_location_commits",
                "Group commits written to the shared location store",
                location.commits(),
            ),
            (
                "switchboard_location_updates_received",
                "Other nodes' binding changes received from the shared location store",
                location.received(),
            ),
        ] {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)?;
        }
        Ok(())
    }
}

/// The guard of one connected SSE client.
#[derive(Debug)]
pub struct SseClient(Metrics);

impl Drop for SseClient {
    fn drop(&mut self) {
        self.0 .0.sse_clients.dec();
    }
}

/// The per-status counters, encoded at scrape time from the atomics.
#[derive(Debug)]
struct StatusCollector(Metrics);

impl Collector for StatusCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.0 .0;
        for (name, help, counts) in [
            (
                "switchboard_calls_final_status",
                "Calls by the final status their caller got (200 answered; 487 cancelled; 4xx-6xx failed or refused).",
                &m.calls_by_status,
            ),
            (
                "switchboard_register_responses",
                "REGISTERs handled by the registrar, by the status answered.",
                &m.registers_by_status,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (status, count) in counts.nonzero() {
                let status = status.to_string();
                let labels = [("status", status.as_str())];
                ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

fn as_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn as_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_covers_the_last_minute_once_the_server_is_older() {
        let start = Instant::now();
        let mut window = RateWindow::default();
        window.record(start, 0);
        let at = |secs: u64| start + Duration::from_secs(secs);
        // 30 calls in the first 10 s: 3/s so far.
        assert!((window.per_second(at(10), 30) - 3.0).abs() < 1e-9);
        for second in 1..=120 {
            // 1 call a second for the first 60 s, then 5 a second.
            let total = if second <= 60 {
                second
            } else {
                60 + 5 * (second - 60)
            };
            window.record(at(second), total);
        }
        let total = 60 + 5 * 60;
        assert!((window.per_second(at(120), total) - 5.0).abs() < 1e-9);
        assert!(window.samples.len() <= 62, "{}", window.samples.len());
    }

    /// The exposition of `metrics` as a scrape would see it.
    fn scrape(metrics: &Metrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        text
    }

    #[test]
    fn location_store_figures_appear_only_with_a_shared_store_and_follow_its_state() {
        let metrics = Metrics::new(Instant::now());
        assert!(
            !scrape(&metrics).contains("switchboard_location"),
            "a single box has none"
        );
        let state = Arc::new(SharedLocation::new(
            "sig-1".to_owned(),
            "192.0.2.20:6379".to_owned(),
            Duration::from_secs(30),
        ));
        metrics.set_location(Arc::clone(&state));
        state.note_error();
        state.note_error();
        let text = scrape(&metrics);
        for line in [
            "switchboard_location_store_up 0\n",
            "switchboard_location_following 0\n",
            "switchboard_location_store_errors_total 2\n",
            "switchboard_location_commits_total 0\n",
            "switchboard_location_updates_received_total 0\n",
            "# TYPE switchboard_location_store_errors counter\n",
            "# TYPE switchboard_location_store_up gauge\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
    }

    #[test]
    fn media_requests_are_timed_per_operation_and_manager() {
        let metrics = Metrics::new(Instant::now());
        let ms = Duration::from_millis;
        metrics.observe_media_request("offer", "rtpm-a".to_owned(), ms(3));
        metrics.observe_media_request("offer", "rtpm-a".to_owned(), ms(30));
        metrics.observe_media_request("delete", "rtpm-b".to_owned(), Duration::from_micros(200));
        let text = scrape(&metrics);
        for line in [
            "# TYPE switchboard_media_request_seconds histogram\n",
            "switchboard_media_request_seconds_count{op=\"offer\",rtpmanager=\"rtpm-a\"} 2\n",
            "switchboard_media_request_seconds_sum{op=\"offer\",rtpmanager=\"rtpm-a\"} 0.033\n",
            // 3 ms is past the 2.5 ms bound, within 5 ms; 30 ms within 50 ms.
            "switchboard_media_request_seconds_bucket{le=\"0.0025\",op=\"offer\",rtpmanager=\"rtpm-a\"} 0\n",
            "switchboard_media_request_seconds_bucket{le=\"0.005\",op=\"offer\",rtpmanager=\"rtpm-a\"} 1\n",
            "switchboard_media_request_seconds_bucket{le=\"0.05\",op=\"offer\",rtpmanager=\"rtpm-a\"} 2\n",
            "switchboard_media_request_seconds_bucket{le=\"0.00025\",op=\"delete\",rtpmanager=\"rtpm-b\"} 1\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        assert!(
            !text.contains("op=\"answer\""),
            "no series for an operation never sent"
        );
    }

    #[test]
    fn a_status_outside_200_to_699_is_counted_at_the_nearest_end() {
        let counts = StatusCounts::new();
        counts.bump(486);
        counts.bump(486);
        counts.bump(200);
        counts.bump(999);
        assert_eq!(counts.nonzero(), vec![(200, 1), (486, 2), (699, 1)]);
    }
}
