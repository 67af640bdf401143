//! The signaling servers the dashboard aggregates: each is polled and
//! followed through its event stream by tasks of its own, and their latest
//! state is kept here, so a page render never waits on a backend and one
//! slow or dead backend never holds another.
//!
//! # Driving it
//! [`Backends::spawn`] starts, per backend, a poll loop (health, managers,
//! registrations, stats and calls, concurrently, each bounded by the
//! backend timeout) and an event loop (`/api/v1/events`: calls appear and
//! vanish as they start and end; any other event, a reconnection or a
//! `lagged` notice makes the poll loop reread the lists at once). Every
//! change bumps a counter that [`Backends::subscribe`]rs (the browser's
//! live stream) wait on. Tests call [`Backends::poll_all`] and
//! [`Backends::apply_event`] directly.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::Method;
use http_body_util::BodyExt;
use tokio::sync::{watch, Notify};

use crate::api::{self, Call, CallDetail, CallPage, Event, Health, Pool, Registration, Stats};
use crate::client::{BackendClient, ClientError, SseEvent, SseParser, Token};

/// A named backend of `--backends`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    /// The operator's name for it (unique, URL-safe).
    pub name: String,
    /// `http://host:port`.
    pub url: String,
}

/// How many calls one poll reads; the page says when there are more.
const CALLS_PAGE: usize = 500;
/// How long an ended call's id keeps a poll that was already under way
/// from bringing it back.
const ENDED_MEMORY: Duration = Duration::from_secs(60);
/// A stream with no byte for this long (the API sends a keep-alive comment
/// every 15 s) is taken as dead and reopened.
const STREAM_IDLE: Duration = Duration::from_secs(45);

/// How far back the overview's recent failures reach.
pub const RECENT: Duration = Duration::from_secs(300);

/// Failed final statuses over the last [`RECENT`], from the cumulative
/// `by_status` counters of successive polls. Reads no clock: the poll
/// gives the time.
#[derive(Debug, Default)]
struct StatusWindow {
    /// Polls' counters, oldest first; the first is the newest at least
    /// [`RECENT`] old (or the oldest there is): the baseline.
    samples: VecDeque<(Instant, BTreeMap<String, u64>)>,
}

impl StatusWindow {
    /// Takes a poll's counters; returns the failures since the baseline.
    fn handle_stats(
        &mut self,
        now: Instant,
        by_status: &BTreeMap<String, u64>,
    ) -> Vec<(String, u64)> {
        self.samples.push_back((now, by_status.clone()));
        while self
            .samples
            .get(1)
            .is_some_and(|(at, _)| now.duration_since(*at) >= RECENT)
        {
            self.samples.pop_front();
        }
        let baseline = self.samples.front().map(|(_, b)| b);
        let delta: BTreeMap<String, u64> = by_status
            .iter()
            .map(|(status, count)| {
                let before = baseline.and_then(|b| b.get(status)).copied().unwrap_or(0);
                // A restarted backend counts from 0 again: never negative.
                (status.clone(), count.saturating_sub(before))
            })
            .collect();
        api::failures_of(&delta)
    }
}

/// One call as the dashboard holds it.
#[derive(Clone, Debug)]
struct CallEntry {
    call: Call,
    /// When `call.duration_ms` was true.
    as_of: Instant,
    /// When an event last created or changed it: a poll that started
    /// before then may not know it yet and must not remove it.
    event_at: Option<Instant>,
}

/// What the dashboard knows of one backend (the rendering view).
#[derive(Clone, Debug)]
pub struct BackendView {
    pub name: String,
    pub url: String,
    /// Why its health check failed last; `None` while it answers.
    pub error: Option<String>,
    pub status: String,
    pub version: String,
    pub managers: Vec<api::Manager>,
    pub managers_error: Option<String>,
    pub registrations: Vec<Registration>,
    pub registrations_error: Option<String>,
    pub stats: Option<Stats>,
    pub stats_error: Option<String>,
    /// Failed final statuses over the last [`RECENT`] (since the dashboard
    /// started watching, when that is shorter).
    pub recent_failures: Vec<(String, u64)>,
    /// Calls in progress, oldest first, durations as of the snapshot.
    pub calls: Vec<Call>,
    /// Calls the backend has in all (more than `calls` past one page).
    pub calls_total: usize,
    pub calls_error: Option<String>,
    /// The event stream's state, for the backends page.
    pub events: String,
    pub polled_at: Option<SystemTime>,
}

impl BackendView {
    fn new(spec: &BackendSpec) -> BackendView {
        BackendView {
            name: spec.name.clone(),
            url: spec.url.clone(),
            error: Some("not polled yet".into()),
            status: "unknown".into(),
            version: String::new(),
            managers: Vec::new(),
            managers_error: None,
            registrations: Vec::new(),
            registrations_error: None,
            stats: None,
            stats_error: None,
            recent_failures: Vec::new(),
            calls: Vec::new(),
            calls_total: 0,
            calls_error: None,
            events: "not connected yet".into(),
            polled_at: None,
        }
    }

    pub fn reachable(&self) -> bool {
        self.error.is_none()
    }

    pub fn managers_healthy(&self) -> usize {
        self.managers
            .iter()
            .filter(|m| m.health == "healthy")
            .count()
    }

    /// Calls per second over the last minute, when the backend has stats.
    pub fn calls_per_second(&self) -> Option<f64> {
        self.stats.as_ref().map(|s| s.calls.per_second_last_minute)
    }

    /// Kernel share of the packets of this backend's calls.
    pub fn kernel_share(&self) -> Option<f64> {
        api::kernel_share(self.calls.iter().flat_map(|c| c.legs.iter()))
    }

    pub fn calls_per_second_label(&self) -> String {
        self.calls_per_second()
            .map_or_else(|| "—".to_owned(), |r| format!("{r:.2}"))
    }

    pub fn kernel_share_label(&self) -> String {
        api::share_label(self.kernel_share())
    }

    /// Kernel share of the packets of the calls on manager `id`.
    pub fn manager_kernel_share_label(&self, id: &str) -> String {
        api::share_label(api::kernel_share(
            self.calls
                .iter()
                .filter(|c| c.manager.as_deref() == Some(id))
                .flat_map(|c| c.legs.iter()),
        ))
    }

    pub fn stats_error_label(&self) -> &str {
        self.stats_error.as_deref().unwrap_or("no stats yet")
    }

    pub fn polled_label(&self) -> String {
        self.polled_at
            .map_or_else(|| "never".to_owned(), clock_label)
    }
}

/// `HH:MM:SS` UTC of a wall-clock time.
pub fn clock_label(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!(
        "{:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A backend's state with what only the tasks need.
#[derive(Debug)]
struct BackendState {
    view: BackendView,
    calls: BTreeMap<String, CallEntry>,
    /// Ids of calls that ended, and when (pruned after [`ENDED_MEMORY`]).
    ended: HashMap<String, Instant>,
    statuses: StatusWindow,
}

#[derive(Debug)]
struct Inner {
    specs: Vec<BackendSpec>,
    clients: Vec<BackendClient>,
    states: RwLock<Vec<BackendState>>,
    /// Bumped on every change; the browser streams wait on it.
    changed: watch::Sender<u64>,
    /// Per backend: reread the lists now (an event said they changed).
    repoll: Vec<Notify>,
    /// `Bearer <token>` of `--backend-token-file` for reads and the stream.
    token: Option<Token>,
}

/// All backends; clones share them.
#[derive(Clone, Debug)]
pub struct Backends {
    inner: Arc<Inner>,
}

impl Backends {
    /// Backends reached with `timeout` for each request, and no token.
    pub fn new(specs: &[BackendSpec], timeout: Duration) -> Self {
        Self::with_token(specs, timeout, None)
    }

    /// Backends whose reads and streams carry `token` (a token that cannot
    /// be a header value is dropped with a warning that does not show it).
    pub fn with_token(specs: &[BackendSpec], timeout: Duration, token: Option<String>) -> Self {
        let token = token.and_then(|t| {
            let value = Token::new(&t);
            if value.is_none() {
                tracing::warn!("the backend token cannot be sent in a header; none is sent");
            }
            value
        });
        Backends {
            inner: Arc::new(Inner {
                clients: specs
                    .iter()
                    .map(|s| BackendClient::new(&s.url, timeout))
                    .collect(),
                states: RwLock::new(
                    specs
                        .iter()
                        .map(|s| BackendState {
                            view: BackendView::new(s),
                            calls: BTreeMap::new(),
                            ended: HashMap::new(),
                            statuses: StatusWindow::default(),
                        })
                        .collect(),
                ),
                repoll: specs.iter().map(|_| Notify::new()).collect(),
                specs: specs.to_vec(),
                changed: watch::channel(0).0,
                token,
            }),
        }
    }

    pub fn specs(&self) -> &[BackendSpec] {
        &self.inner.specs
    }

    /// The index of the backend named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.inner.specs.iter().position(|s| s.name == name)
    }

    /// The client of backend `index`.
    pub fn client(&self, index: usize) -> Option<&BackendClient> {
        self.inner.clients.get(index)
    }

    /// The service token (`--backend-token-file`), if any.
    pub fn token(&self) -> Option<&Token> {
        self.inner.token.as_ref()
    }

    /// Changes from now on: the value grows by one or more per change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    fn notify(&self) {
        self.inner.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn with_state<R>(&self, index: usize, f: impl FnOnce(&mut BackendState) -> R) -> Option<R> {
        let mut states = self.inner.states.write().unwrap_or_else(|p| p.into_inner());
        states.get_mut(index).map(f)
    }

    /// The current views, in configuration order, durations as of now.
    pub fn snapshot(&self) -> Vec<BackendView> {
        let states = self.inner.states.read().unwrap_or_else(|p| p.into_inner());
        states
            .iter()
            .map(|state| {
                let mut view = state.view.clone();
                let mut calls: Vec<Call> = state
                    .calls
                    .values()
                    .map(|entry| {
                        let mut call = entry.call.clone();
                        let elapsed =
                            u64::try_from(entry.as_of.elapsed().as_millis()).unwrap_or(u64::MAX);
                        call.duration_ms = call.duration_ms.saturating_add(elapsed);
                        call
                    })
                    .collect();
                calls.sort_by(|a, b| {
                    a.started_at_ms
                        .cmp(&b.started_at_ms)
                        .then_with(|| a.id.cmp(&b.id))
                });
                view.calls_total = view.calls_total.max(calls.len());
                view.calls = calls;
                view
            })
            .collect()
    }

    /// Starts every backend's poll and event loops.
    pub fn spawn(&self, poll_interval: Duration) {
        for index in 0..self.inner.specs.len() {
            let this = self.clone();
            tokio::spawn(async move { this.poll_loop(index, poll_interval).await });
            let this = self.clone();
            tokio::spawn(async move { this.event_loop(index).await });
        }
    }

    async fn poll_loop(&self, index: usize, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = self.inner.repoll[index].notified() => {}
            }
            self.poll(index).await;
        }
    }

    /// Polls every backend once, all at the same time.
    pub async fn poll_all(&self) {
        let mut polls = tokio::task::JoinSet::new();
        for index in 0..self.inner.specs.len() {
            let this = self.clone();
            polls.spawn(async move { this.poll(index).await });
        }
        while polls.join_next().await.is_some() {}
    }

    /// Reads backend `index`'s lists, each request bounded by the timeout.
    pub async fn poll(&self, index: usize) {
        let Some(client) = self.inner.clients.get(index) else {
            return;
        };
        let token = self.inner.token.as_ref();
        let started = Instant::now();
        let health = client.get_json::<Health>("/api/v1/health", token).await;
        let health = match health {
            Ok(health) => health,
            Err(e) => {
                let url = client.base().to_owned();
                self.with_state(index, |state| {
                    if state.view.error.as_deref() != Some(&e.to_string()) {
                        tracing::warn!(backend = %url, error = %e, "signaling backend unreachable");
                    }
                    state.view.error = Some(e.to_string());
                    state.view.status = "unreachable".into();
                    // Calls of a backend that does not answer are unknown.
                    state.calls.clear();
                    state.view.calls_total = 0;
                });
                self.notify();
                return;
            }
        };
        let calls_path = format!("/api/v1/calls?limit={CALLS_PAGE}");
        let (managers, registrations, stats, calls) = tokio::join!(
            client.get_json::<Pool>("/api/v1/rtpmanagers", token),
            client.get_json::<Vec<Registration>>("/api/v1/registrations", token),
            client.get_json::<Stats>("/api/v1/stats", token),
            client.get_json::<CallPage>(&calls_path, token),
        );
        let missing = |e: ClientError, what: &str| match e {
            ClientError::NotFound(_) => format!("this backend has no {what} API"),
            e => e.to_string(),
        };
        self.with_state(index, |state| {
            let view = &mut state.view;
            view.error = None;
            view.status = health.status;
            view.version = health.version;
            view.polled_at = Some(SystemTime::now());
            match managers {
                Ok(pool) => {
                    view.managers = pool.members;
                    view.managers_error = None;
                }
                Err(e) => view.managers_error = Some(e.to_string()),
            }
            match registrations {
                Ok(list) => {
                    view.registrations = list;
                    view.registrations_error = None;
                }
                Err(e) => view.registrations_error = Some(e.to_string()),
            }
            match stats {
                Ok(stats) => {
                    view.recent_failures = state
                        .statuses
                        .handle_stats(Instant::now(), &stats.calls.by_status);
                    view.stats = Some(stats);
                    view.stats_error = None;
                }
                Err(e) => {
                    view.stats = None;
                    view.stats_error = Some(missing(e, "stats"));
                }
            }
            match calls {
                Ok(page) => {
                    view.calls_error = None;
                    view.calls_total = page.total;
                    apply_call_page(state, page.calls, started);
                }
                Err(e) => state.view.calls_error = Some(missing(e, "calls")),
            }
        });
        self.notify();
    }

    /// Follows backend `index`'s event stream forever, reopening it.
    async fn event_loop(&self, index: usize) {
        let mut pause = Duration::from_millis(500);
        loop {
            let outcome = self.follow_events(index).await;
            let (state, wait) = match outcome {
                Err(ClientError::NotFound(_)) => (
                    "not offered by this backend: calls are polled".to_owned(),
                    Duration::from_secs(15),
                ),
                Err(e) => {
                    // A backend that keeps failing is retried less often.
                    let wait = pause;
                    pause = (pause * 2).min(Duration::from_secs(10));
                    (format!("not connected: {e}"), wait)
                }
                Ok(why) => {
                    pause = Duration::from_millis(500);
                    (format!("reconnecting ({why})"), Duration::from_millis(200))
                }
            };
            self.with_state(index, |s| s.view.events = state);
            self.notify();
            tokio::time::sleep(wait).await;
        }
    }

    /// One connection to the event stream; `Ok(reason)` when it ended.
    async fn follow_events(&self, index: usize) -> Result<&'static str, ClientError> {
        let Some(client) = self.inner.clients.get(index) else {
            return Ok("no such backend");
        };
        let mut body = client
            .open_stream("/api/v1/events", self.inner.token.as_ref())
            .await?;
        self.with_state(index, |s| s.view.events = "live".to_owned());
        // Events may have been missed while disconnected: reread the lists.
        self.inner.repoll[index].notify_one();
        let mut parser = SseParser::default();
        loop {
            let frame = match tokio::time::timeout(STREAM_IDLE, body.frame()).await {
                Err(_) => return Ok("no keep-alive"),
                Ok(None) => return Ok("the backend closed the stream"),
                Ok(Some(Err(_))) => return Ok("the stream broke"),
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            for event in parser.feed(&data) {
                if event.name == "lagged" {
                    return Ok("the dashboard fell behind the events");
                }
                self.apply_event(index, &event);
            }
        }
    }

    /// Applies one event of backend `index`'s stream.
    pub fn apply_event(&self, index: usize, event: &SseEvent) {
        let Ok(parsed) = serde_json::from_str::<Event>(&event.data) else {
            tracing::debug!(event = %event.name, "event not understood; ignored");
            return;
        };
        let now = Instant::now();
        let mut refresh = None;
        match parsed {
            Event::CallCreated {
                id,
                at_ms,
                caller,
                callee,
            } => {
                self.with_state(index, |state| {
                    if state.ended.contains_key(&id) {
                        return;
                    }
                    let entry = state.calls.entry(id.clone()).or_insert_with(|| CallEntry {
                        call: Call {
                            id: id.clone(),
                            state: "routing".into(),
                            started_at_ms: at_ms,
                            duration_ms: unix_ms_now().saturating_sub(at_ms),
                            caller: caller.into(),
                            dialled: callee,
                            ..Call::default()
                        },
                        as_of: now,
                        event_at: None,
                    });
                    entry.event_at = Some(now);
                });
                refresh = Some(id);
            }
            Event::CallRinging { id } => {
                self.with_state(index, |state| {
                    if let Some(entry) = state.calls.get_mut(&id) {
                        if entry.call.state == "routing" {
                            entry.call.state = "ringing".into();
                        }
                        entry.event_at = Some(now);
                    }
                });
                refresh = Some(id);
            }
            Event::CallAnswered { id, at_ms } => {
                self.with_state(index, |state| {
                    if let Some(entry) = state.calls.get_mut(&id) {
                        entry.call.state = "answered".into();
                        entry.call.answered_at_ms = Some(at_ms);
                        entry.event_at = Some(now);
                    }
                });
                refresh = Some(id);
            }
            Event::CallEnded { id } => {
                self.with_state(index, |state| {
                    state.calls.remove(&id);
                    state.ended.insert(id, now);
                });
            }
            Event::RegistrationAdded {}
            | Event::RegistrationRefreshed {}
            | Event::RegistrationRemoved {}
            | Event::RegistrationExpired {}
            | Event::ManagerHealth {}
            | Event::ManagerDrain {} => {
                if let Some(repoll) = self.inner.repoll.get(index) {
                    repoll.notify_one();
                }
            }
        }
        self.notify();
        if let Some(id) = refresh {
            // The event carries no media figures: read the call itself,
            // off this task so the stream keeps flowing.
            let this = self.clone();
            tokio::spawn(async move { this.refresh_call(index, &id).await });
        }
    }

    /// Rereads one call (`/api/v1/calls/{id}`) and updates it if it is
    /// still in progress.
    async fn refresh_call(&self, index: usize, id: &str) {
        let Ok(detail) = self.call_detail(index, id).await else {
            return;
        };
        let now = Instant::now();
        self.with_state(index, |state| {
            if let Some(entry) = state.calls.get_mut(id) {
                entry.call = detail.call;
                entry.as_of = now;
            }
        });
        self.notify();
    }

    /// One call with its SIP history and SDP, read now.
    pub async fn call_detail(&self, index: usize, id: &str) -> Result<CallDetail, ClientError> {
        let client = self
            .client(index)
            .ok_or_else(|| ClientError::NotFound("no such backend".into()))?;
        client
            .get_json(&format!("/api/v1/calls/{}", encode(id)), self.token())
            .await
    }

    /// An operator's action on backend `index` with the operator's token;
    /// the lists are reread before it returns.
    pub async fn act(
        &self,
        index: usize,
        method: Method,
        path: &str,
        token: Option<&Token>,
    ) -> Result<(), ClientError> {
        let client = self
            .client(index)
            .ok_or_else(|| ClientError::NotFound("no such backend".into()))?;
        client.act(method, path, token).await?;
        // The page the operator sees next shows the action's effect.
        self.poll(index).await;
        Ok(())
    }
}

/// Replaces a backend's calls by a poll's page, keeping the calls that
/// events created after the poll started and leaving out calls that ended.
fn apply_call_page(state: &mut BackendState, calls: Vec<Call>, poll_started: Instant) {
    let now = Instant::now();
    state
        .ended
        .retain(|_, at| now.duration_since(*at) < ENDED_MEMORY);
    let mut fresh: BTreeMap<String, CallEntry> = state
        .calls
        .iter()
        .filter(|(_, entry)| entry.event_at.is_some_and(|at| at >= poll_started))
        .map(|(id, entry)| (id.clone(), entry.clone()))
        .collect();
    for call in calls {
        if state.ended.contains_key(&call.id) || fresh.contains_key(&call.id) {
            continue;
        }
        fresh.insert(
            call.id.clone(),
            CallEntry {
                call,
                as_of: now,
                event_at: None,
            },
        );
    }
    state.calls = fresh;
}

/// Percent-encodes a path segment (ids and AORs hold `@`, `:` and more).
pub fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(url: &str) -> BackendSpec {
        BackendSpec {
            name: "b1".into(),
            url: url.into(),
        }
    }

    fn event(name: &str, data: &str) -> SseEvent {
        SseEvent {
            name: name.into(),
            data: data.into(),
        }
    }

    #[test]
    fn recent_failures_are_the_growth_of_the_counters_over_five_minutes() {
        let start = Instant::now();
        let counts = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
            pairs.iter().map(|(s, c)| ((*s).to_owned(), *c)).collect()
        };
        let mut window = StatusWindow::default();
        assert!(window
            .handle_stats(start, &counts(&[("200", 5), ("486", 4)]))
            .is_empty());
        let at = |secs| start + Duration::from_secs(secs);
        assert_eq!(
            window.handle_stats(at(60), &counts(&[("200", 9), ("486", 6), ("404", 1)])),
            vec![("486".to_owned(), 2), ("404".to_owned(), 1)]
        );
        // Six minutes on, the 486s of the first minute are out of the window.
        assert_eq!(
            window.handle_stats(at(360), &counts(&[("200", 9), ("486", 7), ("404", 1)])),
            vec![("486".to_owned(), 1)]
        );
        // A restarted backend's smaller counters are no negative failures.
        assert!(window
            .handle_stats(at(370), &counts(&[("486", 0)]))
            .is_empty());
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode("1001@switchboard"), "1001%40switchboard");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
        assert_eq!(encode("edge-a_1.x~"), "edge-a_1.x~");
    }

    #[tokio::test]
    async fn a_created_event_adds_a_call_and_its_end_removes_it() {
        let backends = Backends::new(&[spec("http://127.0.0.1:9")], Duration::from_millis(50));
        let mut changes = backends.subscribe();
        backends.apply_event(
            0,
            &event(
                "call_created",
                r#"{"type":"call_created","id":"c1","at_ms":1,"caller":{"uri":"sip:1001@h","display_name":"A","address":"1.2.3.4:5","transport":"udp"},"callee":"sip:1002@h"}"#,
            ),
        );
        assert!(changes.has_changed().expect("open"));
        changes.mark_unchanged();
        let calls = &backends.snapshot()[0].calls;
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].caller.label(), "A <sip:1001@h>");
        assert_eq!(calls[0].callee_label(), "sip:1002@h");
        assert_eq!(calls[0].state, "routing");
        backends.apply_event(
            0,
            &event(
                "call_answered",
                r#"{"type":"call_answered","id":"c1","at_ms":2}"#,
            ),
        );
        assert_eq!(backends.snapshot()[0].calls[0].state, "answered");
        backends.apply_event(
            0,
            &event(
                "call_ended",
                r#"{"type":"call_ended","id":"c1","at_ms":3,"final_status":200,"ended_by":"caller","duration_ms":2}"#,
            ),
        );
        assert!(changes.has_changed().expect("open"));
        assert!(backends.snapshot()[0].calls.is_empty());
    }

    #[test]
    fn a_poll_keeps_calls_created_after_it_started_and_drops_ended_ones() {
        let before = Instant::now();
        let call = |id: &str| Call {
            id: id.into(),
            ..Call::default()
        };
        let mut state = BackendState {
            view: BackendView::new(&spec("http://x:1")),
            calls: BTreeMap::new(),
            ended: HashMap::new(),
            statuses: StatusWindow::default(),
        };
        state.calls.insert(
            "old".into(),
            CallEntry {
                call: call("old"),
                as_of: before,
                event_at: None,
            },
        );
        let poll_started = Instant::now();
        state.calls.insert(
            "new".into(),
            CallEntry {
                call: call("new"),
                as_of: poll_started,
                event_at: Some(Instant::now()),
            },
        );
        state.ended.insert("gone".into(), Instant::now());
        apply_call_page(&mut state, vec![call("gone"), call("listed")], poll_started);
        let ids: Vec<&str> = state.calls.keys().map(String::as_str).collect();
        assert_eq!(ids, vec!["listed", "new"]);
    }
}
