//! The pool of RTP managers: one health checker per configured manager, and
//! the view of their health that call routing and the REST API read.
//!
//! Health is decided by [`HealthTracker`], a plain state machine fed with the
//! outcome of each probe, and a lost manager by [`LossWatch`]; the tokio
//! task around them only does the gRPC calls. A lost manager is published
//! as a [`ManagerLoss`] ([`ManagerPool::subscribe_losses`]): its calls must
//! move to another manager.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use switchboard_proto::v1;
use tokio::sync::{broadcast, watch};

use crate::events::{Event, EventBus};
use crate::rtpmanager_client::{describe, ClientAccess, ManagerClient};
use crate::rtpmanager_control::ControlChannel;

/// Consecutive failed probes before a healthy manager is declared down; one
/// lost probe on a busy host must not move calls away.
pub const FAILURES_BEFORE_DOWN: u32 = 2;

/// How long a down manager may stay down before its calls are treated as
/// gone: its pinned fast path keeps their media flowing meanwhile, and a
/// manager restarted with its --state-dir re-adopts them.
pub const LOST_GRACE: Duration = Duration::from_secs(15);

/// When a manager is declared down, and when down means lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LossPolicy {
    /// Consecutive failed checks before a manager is declared down
    /// (`--rtpmanager-failures`).
    pub failures: u32,
    /// How long it may stay down before its calls must move
    /// (`--rtpmanager-lost-grace`).
    pub grace: Duration,
}

impl Default for LossPolicy {
    fn default() -> Self {
        LossPolicy {
            failures: FAILURES_BEFORE_DOWN,
            grace: LOST_GRACE,
        }
    }
}

/// A manager whose calls must move to another one: published on
/// [`ManagerPool::subscribe_losses`] once per loss.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagerLoss {
    /// The manager's index in the pool (configuration order).
    pub index: usize,
    pub kind: LossKind,
}

/// Why a manager's calls must move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LossKind {
    /// Down for longer than the grace period: every call pinned on it
    /// ([`ManagerPool::pinned_calls`]) is to be treated as gone.
    GraceExpired,
    /// It came back as a new instance (a restart) without these calls (the
    /// media call ids it no longer holds); those it re-adopted from its
    /// state directory stay where they are.
    Restarted { lost_calls: Vec<String> },
}

impl LossKind {
    /// The name logs and events use.
    pub fn name(&self) -> &'static str {
        match self {
            LossKind::GraceExpired => "grace_expired",
            LossKind::Restarted { .. } => "restarted",
        }
    }
}

/// Decides, from the health checks of one manager, when it is lost: down
/// for longer than the grace period (once per down period, and only after
/// it was up: one never reached holds no call of ours), or back with
/// another instance id than the one seen before (a restart; the first id
/// seen is none).
#[derive(Debug)]
pub struct LossWatch {
    grace: Duration,
    down_since: Option<Instant>,
    /// Whether this down period's loss was reported.
    reported: bool,
    /// Whether it was ever up: one never reached holds no call of ours.
    seen_up: bool,
    instance: Option<String>,
}

impl LossWatch {
    pub fn new(grace: Duration) -> Self {
        LossWatch {
            grace,
            down_since: None,
            reported: false,
            seen_up: false,
            instance: None,
        }
    }

    /// Feeds the manager's health after a check; true when the grace
    /// period has just run out (once per down period).
    pub fn health(&mut self, now: Instant, health: &Health) -> bool {
        match health {
            Health::Down if self.seen_up => {}
            Health::Down | Health::Unknown => return false,
            Health::Healthy | Health::Draining => {
                // Back (or never gone): a later fall starts a new period.
                self.seen_up = true;
                self.down_since = None;
                self.reported = false;
                return false;
            }
        }
        let since = *self.down_since.get_or_insert(now);
        if self.reported || now.saturating_duration_since(since) < self.grace {
            return false;
        }
        self.reported = true;
        true
    }

    /// Feeds the instance id the manager answered with; returns the
    /// previous one when it changed (the manager restarted).
    pub fn instance(&mut self, id: &str) -> Option<String> {
        if id.is_empty() || self.instance.as_deref() == Some(id) {
            return None;
        }
        self.instance.replace(id.to_owned())
    }

    /// Since when the manager is down, if it is.
    pub fn down_since(&self) -> Option<Instant> {
        self.down_since
    }

    /// When the grace period of the manager's outage runs out, if it is
    /// down and not reported yet: feed [`LossWatch::health`] then, so the
    /// loss is not held until the next check.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.down_since
            .filter(|_| !self.reported)
            .map(|since| since + self.grace)
    }
}

/// What the signaling server believes about one manager.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Not probed successfully yet.
    Unknown,
    /// Answering health checks and accepting calls.
    Healthy,
    /// Answering, but refusing new calls.
    Draining,
    /// Not answering, or answering NOT_SERVING.
    Down,
}

/// A manager's state as reported by the REST API.
#[derive(Clone, Debug, Serialize)]
pub struct ManagerStatus {
    /// The operator's name for it (`--rtpmanager id=host:port`), by
    /// default its `host:port`.
    pub id: String,
    pub endpoint: String,
    pub health: Health,
    /// Why the manager is in its state (last error, or "ok").
    pub detail: String,
    pub fast_path: String,
    pub fast_path_reason: String,
    pub instance_id: String,
    pub version: String,
    pub active_calls: u32,
    pub ports_free: u32,
    /// Its userspace relay's committed load and capacity (packets a
    /// second; capacity 0: no admission control), and whether the load has
    /// reached it: it refuses new calls, which go to the next manager.
    pub relay_load_pps: u32,
    pub relay_capacity_pps: u32,
    pub overloaded: bool,
    /// Drained by the operator (REST API): no new calls, whatever its health.
    pub operator_drain: bool,
    /// When it was declared down (Unix milliseconds), while it is.
    pub down_since_ms: Option<u64>,
}

/// The result of one probe.
#[derive(Clone, Debug)]
pub enum Probe {
    Answered { status: v1::ServingStatus },
    Failed { error: String },
}

/// Turns probe outcomes into a health state, with hysteresis for failures.
#[derive(Debug)]
pub struct HealthTracker {
    health: Health,
    consecutive_failures: u32,
    /// Consecutive failures that take a known manager down.
    failures_before_down: u32,
}

impl Default for HealthTracker {
    fn default() -> Self {
        HealthTracker::new(FAILURES_BEFORE_DOWN)
    }
}

impl HealthTracker {
    /// A tracker declaring a manager down after `failures` consecutive
    /// failed probes (at least one).
    pub fn new(failures: u32) -> Self {
        HealthTracker {
            health: Health::Unknown,
            consecutive_failures: 0,
            failures_before_down: failures.max(1),
        }
    }

    /// Feeds one probe; returns the new health when it changed.
    pub fn observe(&mut self, probe: &Probe) -> Option<Health> {
        let next = match probe {
            Probe::Answered { status } => {
                self.consecutive_failures = 0;
                match status {
                    v1::ServingStatus::Serving => Health::Healthy,
                    v1::ServingStatus::Draining => Health::Draining,
                    v1::ServingStatus::NotServing | v1::ServingStatus::Unspecified => Health::Down,
                }
            }
            Probe::Failed { .. } => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                let give_up = self.health == Health::Unknown
                    || self.consecutive_failures >= self.failures_before_down;
                if give_up {
                    Health::Down
                } else {
                    self.health.clone()
                }
            }
        };
        (next != self.health).then(|| {
            self.health = next.clone();
            next
        })
    }

    pub fn health(&self) -> &Health {
        &self.health
    }
}

/// The configured managers and their last known state.
#[derive(Clone, Debug)]
pub struct ManagerPool {
    managers: Arc<Vec<Manager>>,
    /// Where health and drain changes are published.
    events: EventBus,
    policy: LossPolicy,
    /// Where lost managers are published.
    losses: broadcast::Sender<ManagerLoss>,
}

/// Losses kept for a slow subscriber: a handful of managers lose at most
/// one each per check.
const LOSS_BUFFER: usize = 64;

#[derive(Debug)]
struct Manager {
    control: ControlChannel,
    status: RwLock<ManagerStatus>,
    /// Counts the times the manager became healthy (see
    /// [`ManagerPool::healthy_changes`]).
    became_healthy: watch::Sender<u64>,
    /// The media call ids this server has set up on it (see
    /// [`ManagerPool::pin`]).
    pinned: Mutex<HashSet<String>>,
    /// Its last Health said Answer can bridge (see
    /// [`ManagerPool::answer_bridges`]).
    answer_bridges: AtomicBool,
}

impl ManagerPool {
    /// Creates the pool of plaintext managers without a token.
    pub fn new(uris: &[String]) -> Result<Self, tonic::transport::Error> {
        Self::with_access(uris, &ClientAccess::default())
    }

    /// Creates the pool; connections, with the TLS and token settings of
    /// `access`, are made lazily by the health checks.
    pub fn with_access(
        uris: &[String],
        access: &ClientAccess,
    ) -> Result<Self, tonic::transport::Error> {
        let managers = uris
            .iter()
            .map(|uri| {
                Ok(Manager {
                    control: ControlChannel::new(access.connect_lazy(uri)?),
                    became_healthy: watch::Sender::new(0),
                    pinned: Mutex::new(HashSet::new()),
                    answer_bridges: AtomicBool::new(false),
                    status: RwLock::new(ManagerStatus {
                        id: crate::config::manager_id(uri),
                        endpoint: uri.clone(),
                        health: Health::Unknown,
                        detail: "not probed yet".into(),
                        fast_path: String::new(),
                        fast_path_reason: String::new(),
                        instance_id: String::new(),
                        version: String::new(),
                        active_calls: 0,
                        ports_free: 0,
                        relay_load_pps: 0,
                        relay_capacity_pps: 0,
                        overloaded: false,
                        operator_drain: false,
                        down_since_ms: None,
                    }),
                })
            })
            .collect::<Result<Vec<_>, tonic::transport::Error>>()?;
        Ok(ManagerPool {
            managers: Arc::new(managers),
            events: EventBus::new(),
            policy: LossPolicy::default(),
            losses: broadcast::Sender::new(LOSS_BUFFER),
        })
    }

    /// Declares managers down and lost by `policy` (before the health
    /// checks start).
    pub fn with_loss_policy(mut self, policy: LossPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The lost managers from now on: each loss once, when it is
    /// detected. Moving the calls is the subscriber's work.
    pub fn subscribe_losses(&self) -> broadcast::Receiver<ManagerLoss> {
        self.losses.subscribe()
    }

    /// Notes that call `call` has media on manager `index` (its first
    /// request there succeeded): a restart of the manager that loses it
    /// reports it.
    pub fn pin(&self, index: usize, call: &str) {
        if let Some(m) = self.managers.get(index) {
            lock(&m.pinned).insert(call.to_owned());
        }
    }

    /// Notes that call `call` no longer has media on manager `index`.
    pub fn unpin(&self, index: usize, call: &str) {
        if let Some(m) = self.managers.get(index) {
            lock(&m.pinned).remove(call);
        }
    }

    /// The media call ids pinned on manager `index`, sorted.
    pub fn pinned_calls(&self, index: usize) -> Vec<String> {
        self.managers.get(index).map_or_else(Vec::new, |m| {
            let mut calls: Vec<String> = lock(&m.pinned).iter().cloned().collect();
            calls.sort();
            calls
        })
    }

    /// Publishes health and drain changes on `events`.
    pub fn with_events(mut self, events: EventBus) -> Self {
        self.events = events;
        self
    }

    /// Names the managers, in configuration order (see
    /// [`crate::config::manager_id`]); without it their ids are their
    /// `host:port`.
    pub fn with_ids(self, ids: &[String]) -> Self {
        for (manager, id) in self.managers.iter().zip(ids) {
            if let Ok(mut s) = manager.status.write() {
                s.id.clone_from(id);
            }
        }
        self
    }

    /// The index of the manager named `id`.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.statuses().iter().position(|s| s.id == id)
    }

    /// Sets or clears the operator's drain of manager `index`; returns
    /// whether it changed. A drained manager keeps its calls and gets no
    /// new ones (see [`ManagerPool::candidates`]).
    pub fn set_operator_drain(&self, index: usize, drain: bool) -> bool {
        let Some(Ok(mut s)) = self.managers.get(index).map(|m| m.status.write()) else {
            return false;
        };
        let changed = s.operator_drain != drain;
        let draining = is_draining(&s);
        s.operator_drain = drain;
        if changed {
            tracing::info!(rtpmanager = %s.id, drain, "RTP manager drain set by the operator");
        }
        if is_draining(&s) != draining {
            self.events.publish(Event::ManagerDrain {
                id: s.id.clone(),
                draining: !draining,
            });
        }
        changed
    }

    /// Whether manager `index` bridges a call in the Answer that asks it
    /// to (its last Health said so); otherwise a separate Bridge follows.
    /// False until it has answered a health check.
    pub fn answer_bridges(&self, index: usize) -> bool {
        self.managers
            .get(index)
            .is_some_and(|m| m.answer_bridges.load(Ordering::Relaxed))
    }

    /// A snapshot of every manager's state.
    pub fn statuses(&self) -> Vec<ManagerStatus> {
        self.managers
            .iter()
            .map(|m| {
                m.status
                    .read()
                    .map(|s| s.clone())
                    .unwrap_or_else(|p| p.into_inner().clone())
            })
            .collect()
    }

    /// Number of configured managers.
    pub fn len(&self) -> usize {
        self.managers.len()
    }

    /// Whether no manager is configured.
    pub fn is_empty(&self) -> bool {
        self.managers.is_empty()
    }

    /// The endpoint of manager `index`.
    pub fn endpoint(&self, index: usize) -> String {
        self.managers[index]
            .status
            .read()
            .map(|s| s.endpoint.clone())
            .unwrap_or_default()
    }

    /// The id of manager `index`, as `/api/v1/rtpmanagers` shows it.
    pub fn id(&self, index: usize) -> String {
        self.managers[index]
            .status
            .read()
            .map(|s| s.id.clone())
            .unwrap_or_default()
    }

    /// A client of manager `index` (clones share its channel).
    pub fn client(&self, index: usize) -> ManagerClient {
        self.managers[index].control.client()
    }

    /// The call requests of manager `index` (clones share its Control
    /// stream).
    pub fn control(&self, index: usize) -> ControlChannel {
        self.managers[index].control.clone()
    }

    /// Changes each time manager `index` becomes healthy: at its first
    /// good probe and whenever it comes back after being down (it may have
    /// kept calls this server has since forgotten, or lost them).
    pub fn healthy_changes(&self, index: usize) -> watch::Receiver<u64> {
        self.managers[index].became_healthy.subscribe()
    }

    /// The managers that may take a new call: the healthy ones, or when
    /// none is, those not probed yet (at start). Draining and down
    /// managers keep their calls but get no new ones, nor do those the
    /// operator drained. Among them, those whose last Health said their
    /// relay was at capacity come only when all are: that answer may be a
    /// second old, and an overloaded manager refuses an Offer it cannot
    /// take anyway, so it is skipped, never excluded.
    pub fn candidates(&self) -> Vec<usize> {
        let statuses = self.statuses();
        let eligible = Self::eligible(&statuses);
        let room: Vec<usize> = eligible
            .iter()
            .copied()
            .filter(|i| !statuses[*i].overloaded)
            .collect();
        if room.is_empty() {
            eligible
        } else {
            room
        }
    }

    /// The healthy managers not drained (or, when none is, the unprobed).
    fn eligible(statuses: &[ManagerStatus]) -> Vec<usize> {
        let healths: Vec<Health> = statuses
            .iter()
            .map(|s| {
                if s.operator_drain {
                    Health::Draining
                } else {
                    s.health.clone()
                }
            })
            .collect();
        let with = |wanted: Health| -> Vec<usize> {
            healths
                .iter()
                .enumerate()
                .filter(|(_, h)| **h == wanted)
                .map(|(i, _)| i)
                .collect()
        };
        let healthy = with(Health::Healthy);
        if healthy.is_empty() {
            with(Health::Unknown)
        } else {
            healthy
        }
    }

    /// Starts one health-check task per manager.
    pub fn spawn_health_checks(&self, interval: Duration) {
        for index in 0..self.managers.len() {
            let pool = self.clone();
            tokio::spawn(async move { pool.check_forever(index, interval).await });
        }
    }

    async fn check_forever(&self, index: usize, interval: Duration) {
        let manager = &self.managers[index];
        let mut tracker = HealthTracker::new(self.policy.failures);
        let mut loss = LossWatch::new(self.policy.grace);
        // A restart whose calls are not listed yet (ListCalls failed).
        let mut restart_pending = false;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let grace_end = loss.poll_timeout();
            tokio::select! {
                _ = ticker.tick() => {}
                () = sleep_until(grace_end) => {
                    if loss.health(Instant::now(), tracker.health()) {
                        self.publish_loss(index, LossKind::GraceExpired);
                    }
                    continue;
                }
            }
            let mut client = manager.control.client();
            let (probe, instance) = match client.health(v1::HealthRequest {}).await {
                Ok(resp) => {
                    let health = resp.into_inner();
                    // Read at every check: a manager restarted between two
                    // checks shows only by its new instance id.
                    let info = client
                        .info(v1::InfoRequest {})
                        .await
                        .ok()
                        .map(|r| r.into_inner());
                    let instance = info.as_ref().map(|i| i.instance_id.clone());
                    self.record_answer(index, &health, info);
                    let probe = Probe::Answered {
                        status: health.status(),
                    };
                    (probe, instance)
                }
                Err(status) => {
                    let probe = Probe::Failed {
                        error: describe(&status),
                    };
                    (probe, None)
                }
            };
            let endpoint = self.set_detail(index, &probe);
            if let Some(health) = tracker.observe(&probe) {
                if let Ok(mut s) = manager.status.write() {
                    let was_draining = is_draining(&s);
                    let was_healthy = s.health == Health::Healthy;
                    s.health = health.clone();
                    s.down_since_ms = (health == Health::Down).then(crate::events::unix_ms);
                    self.publish_changes(&s, was_healthy, was_draining);
                }
                if health == Health::Healthy {
                    manager.became_healthy.send_modify(|n| *n += 1);
                }
                match (&health, &probe) {
                    (Health::Down, Probe::Failed { error }) => {
                        tracing::warn!(rtpmanager = %endpoint, %error, "RTP manager down")
                    }
                    _ => {
                        let s = self.statuses().swap_remove(index);
                        tracing::info!(
                            rtpmanager = %endpoint,
                            health = ?health,
                            fast_path = %s.fast_path,
                            instance = %s.instance_id,
                            "RTP manager health changed"
                        )
                    }
                }
            }
            if loss.health(Instant::now(), tracker.health()) {
                self.publish_loss(index, LossKind::GraceExpired);
            }
            if let Some(previous) = instance.as_deref().and_then(|id| loss.instance(id)) {
                tracing::warn!(
                    rtpmanager = %endpoint,
                    previous = %previous,
                    instance = instance.as_deref().unwrap_or_default(),
                    "RTP manager restarted (new instance id): listing the calls it kept"
                );
                restart_pending = true;
            }
            if restart_pending && instance.is_some() {
                restart_pending = !self.list_lost_calls(index, &mut client).await;
            }
        }
    }

    /// After a restart of manager `index`: reports the calls pinned on it
    /// that it no longer holds. False when its calls could not be listed
    /// (to try again at the next check).
    async fn list_lost_calls(&self, index: usize, client: &mut ManagerClient) -> bool {
        // Pinned before the listing: a call set up meanwhile on the new
        // instance is listed or not pinned yet, never taken for lost.
        let before = self.pinned_calls(index);
        let listed = match client.list_calls(v1::ListCallsRequest {}).await {
            Ok(response) => response.into_inner().calls,
            Err(status) => {
                tracing::warn!(rtpmanager = %self.id(index), error = %describe(&status), "ListCalls failed after a restart: trying again at the next check");
                return false;
            }
        };
        let still = self.pinned_calls(index);
        let lost = lost_calls(
            before,
            listed.iter().map(|c| c.call_id.as_str()).collect(),
            &still,
        );
        tracing::info!(
            rtpmanager = %self.id(index),
            kept = still.len().saturating_sub(lost.len()),
            lost = lost.len(),
            "RTP manager's calls after its restart"
        );
        if !lost.is_empty() {
            self.publish_loss(index, LossKind::Restarted { lost_calls: lost });
        }
        true
    }

    /// Logs and publishes the loss of manager `index`.
    fn publish_loss(&self, index: usize, kind: LossKind) {
        let id = self.id(index);
        let calls = match &kind {
            LossKind::GraceExpired => self.pinned_calls(index).len(),
            LossKind::Restarted { lost_calls } => lost_calls.len(),
        };
        tracing::warn!(
            rtpmanager = %id,
            kind = kind.name(),
            calls,
            grace_secs = self.policy.grace.as_secs(),
            "RTP manager lost: its calls must move"
        );
        self.events.publish(Event::ManagerLost {
            id,
            kind: kind.name().to_owned(),
            calls: u32::try_from(calls).unwrap_or(u32::MAX),
        });
        // No subscriber (no B2BUA): nothing to move.
        let _ = self.losses.send(ManagerLoss { index, kind });
    }

    /// Publishes what changed in a manager's health and drain.
    fn publish_changes(&self, s: &ManagerStatus, was_healthy: bool, was_draining: bool) {
        let healthy = s.health == Health::Healthy;
        if healthy != was_healthy {
            self.events.publish(Event::ManagerHealth {
                id: s.id.clone(),
                healthy,
            });
        }
        let draining = is_draining(s);
        if draining != was_draining {
            self.events.publish(Event::ManagerDrain {
                id: s.id.clone(),
                draining,
            });
        }
    }

    fn record_answer(
        &self,
        index: usize,
        health: &v1::HealthResponse,
        info: Option<v1::InfoResponse>,
    ) {
        self.managers[index]
            .answer_bridges
            .store(health.answer_bridges, Ordering::Relaxed);
        self.managers[index]
            .control
            .set_streams(health.control_stream);
        let Ok(mut s) = self.managers[index].status.write() else {
            return;
        };
        s.active_calls = health.active_calls;
        s.ports_free = health.ports_free;
        s.relay_load_pps = health.relay_load_pps;
        s.relay_capacity_pps = health.relay_capacity_pps;
        s.overloaded = health.overloaded;
        s.fast_path = fast_path_name(health.fast_path()).to_owned();
        if let Some(info) = info {
            s.instance_id = info.instance_id;
            s.version = info.version;
            s.fast_path_reason = info.fast_path_reason;
        }
    }

    fn set_detail(&self, index: usize, probe: &Probe) -> String {
        let Ok(mut s) = self.managers[index].status.write() else {
            return String::new();
        };
        s.detail = match probe {
            Probe::Answered { .. } => "ok".to_owned(),
            Probe::Failed { error } => error.clone(),
        };
        s.endpoint.clone()
    }
}

/// The managers a new call's setup tries, in order: the least loaded that
/// may take calls, then, after each refusal that another manager may not
/// repeat, the least loaded not tried yet. Candidates are read again
/// before each try, so a manager that went down or started draining
/// meanwhile is skipped.
#[derive(Debug, Default)]
pub struct Placement {
    tried: Vec<usize>,
    /// Each refusal in order: (manager id, error).
    refusals: Vec<(String, String)>,
}

impl Placement {
    /// The next manager to try among `candidates` (those that may take a
    /// call now), by fewest `live` calls (the first among equals), never
    /// one tried before; `None` when none is left.
    pub fn next(&mut self, candidates: &[usize], live: &[usize]) -> Option<usize> {
        let next = candidates
            .iter()
            .copied()
            .filter(|index| !self.tried.contains(index))
            .min_by_key(|index| (live.get(*index).copied().unwrap_or(usize::MAX), *index))?;
        self.tried.push(next);
        Some(next)
    }

    /// Records that manager `id` (the last one tried) refused the call with
    /// `code`; returns whether the next manager should be tried: not after
    /// a refusal every manager would repeat (an SDP it cannot take).
    pub fn refused(&mut self, id: &str, code: tonic::Code, message: &str) -> bool {
        self.refusals
            .push((id.to_owned(), format!("{code:?}: {message}")));
        retryable(code)
    }

    /// The managers tried so far, in order.
    pub fn tried(&self) -> &[usize] {
        &self.tried
    }

    /// Every refusal in order, as `id: error; id: error`.
    pub fn refusals(&self) -> String {
        self.refusals
            .iter()
            .map(|(id, error)| format!("{id}: {error}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Whether a manager's refusal of a call may not be another manager's: it
/// is out of ports or draining (RESOURCE_EXHAUSTED, UNAVAILABLE), slow or
/// gone (DEADLINE_EXCEEDED, CANCELLED, a transport error: UNKNOWN). Any
/// other refusal, a bad SDP above all, the next manager would repeat.
pub fn retryable(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::ResourceExhausted
            | tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Unknown
    )
}

/// Sleeps until `deadline`, or for ever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// The calls a restarted manager lost: pinned on it before its calls were
/// listed (`before`), not among them (`held`), and still pinned (`still`:
/// a call that ended meanwhile is not lost).
fn lost_calls(before: Vec<String>, held: HashSet<&str>, still: &[String]) -> Vec<String> {
    let still: BTreeSet<&str> = still.iter().map(String::as_str).collect();
    before
        .into_iter()
        .filter(|c| !held.contains(c.as_str()) && still.contains(c.as_str()))
        .collect()
}

/// Locks a pin set; every critical section is one insert, remove or copy.
fn lock(pinned: &Mutex<HashSet<String>>) -> std::sync::MutexGuard<'_, HashSet<String>> {
    pinned
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether a manager gets no new calls by a drain: its own or the operator's.
fn is_draining(s: &ManagerStatus) -> bool {
    s.operator_drain || s.health == Health::Draining
}

/// The command-line name of a fast-path mode, as the manager's `--fast-path` spells it.
pub fn fast_path_name(mode: v1::FastPathMode) -> &'static str {
    match mode {
        v1::FastPathMode::Unspecified => "unknown",
        v1::FastPathMode::Off => "off",
        v1::FastPathMode::XdpNative => "xdp",
        v1::FastPathMode::XdpGeneric => "xdp-generic",
        v1::FastPathMode::Tc => "tc",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> Probe {
        Probe::Failed {
            error: "unavailable".into(),
        }
    }

    fn answered(status: v1::ServingStatus) -> Probe {
        Probe::Answered { status }
    }

    #[test]
    fn first_probe_decides() {
        let mut t = HealthTracker::default();
        assert_eq!(
            t.observe(&answered(v1::ServingStatus::Serving)),
            Some(Health::Healthy)
        );
        let mut t = HealthTracker::default();
        assert_eq!(t.observe(&failed()), Some(Health::Down));
    }

    #[test]
    fn one_lost_probe_is_tolerated_two_are_not() {
        let mut t = HealthTracker::default();
        t.observe(&answered(v1::ServingStatus::Serving));
        assert_eq!(t.observe(&failed()), None);
        assert_eq!(t.health(), &Health::Healthy);
        assert_eq!(t.observe(&failed()), Some(Health::Down));
        assert_eq!(t.observe(&failed()), None);
        assert_eq!(
            t.observe(&answered(v1::ServingStatus::Serving)),
            Some(Health::Healthy)
        );
    }

    fn set_overloaded(pool: &ManagerPool, index: usize, overloaded: bool) {
        pool.managers[index]
            .status
            .write()
            .expect("status lock")
            .overloaded = overloaded;
    }

    #[tokio::test]
    async fn a_manager_at_its_relay_capacity_comes_last_not_never() {
        let uris: Vec<String> = (1..=3).map(|p| format!("http://127.0.0.1:{p}")).collect();
        let pool = ManagerPool::new(&uris).expect("pool");
        for index in 0..3 {
            set_health(&pool, index, Health::Healthy);
        }
        set_overloaded(&pool, 0, true);
        assert_eq!(pool.candidates(), vec![1, 2]);
        set_overloaded(&pool, 2, true);
        assert_eq!(pool.candidates(), vec![1]);
        set_overloaded(&pool, 1, true);
        assert_eq!(
            pool.candidates(),
            vec![0, 1, 2],
            "all at capacity: each is asked (its answer may be stale)"
        );
        set_health(&pool, 1, Health::Draining);
        assert_eq!(pool.candidates(), vec![0, 2], "draining stays out");
    }

    fn set_health(pool: &ManagerPool, index: usize, health: Health) {
        pool.managers[index]
            .status
            .write()
            .expect("status lock")
            .health = health;
    }

    #[tokio::test]
    async fn new_calls_go_to_healthy_managers_only() {
        let uris: Vec<String> = (1..=3).map(|p| format!("http://127.0.0.1:{p}")).collect();
        let pool = ManagerPool::new(&uris).expect("pool");
        assert_eq!(
            pool.candidates(),
            vec![0, 1, 2],
            "nothing probed yet: any may be tried"
        );
        set_health(&pool, 0, Health::Down);
        assert_eq!(
            pool.candidates(),
            vec![1, 2],
            "not a manager known to be down"
        );
        set_health(&pool, 1, Health::Healthy);
        set_health(&pool, 2, Health::Draining);
        assert_eq!(pool.candidates(), vec![1], "healthy ones only once one is");
        set_health(&pool, 1, Health::Down);
        assert_eq!(
            pool.candidates(),
            Vec::<usize>::new(),
            "down and draining take no call"
        );
        assert_eq!(pool.len(), 3);
        assert_eq!(pool.endpoint(2), "http://127.0.0.1:3");
    }

    #[tokio::test]
    async fn an_operator_drained_manager_gets_no_new_call_until_undrained() {
        let uris: Vec<String> = (1..=2).map(|p| format!("http://127.0.0.1:{p}")).collect();
        let pool = ManagerPool::new(&uris)
            .expect("pool")
            .with_ids(&["a".into(), "b".into()]);
        set_health(&pool, 0, Health::Healthy);
        set_health(&pool, 1, Health::Healthy);
        assert_eq!(pool.index_of("b"), Some(1));
        assert_eq!(pool.index_of("127.0.0.1:2"), None, "named by id");
        let unnamed = ManagerPool::new(&uris).expect("pool");
        assert_eq!(
            unnamed.index_of("127.0.0.1:2"),
            Some(1),
            "host:port by default"
        );
        assert!(pool.set_operator_drain(0, true));
        assert!(!pool.set_operator_drain(0, true), "already drained");
        assert_eq!(pool.candidates(), vec![1]);
        assert!(pool.set_operator_drain(1, true));
        assert_eq!(
            pool.candidates(),
            Vec::<usize>::new(),
            "not even as a last resort"
        );
        assert!(pool.set_operator_drain(0, false));
        assert_eq!(pool.candidates(), vec![0]);
        assert_eq!(
            pool.statuses()[0].health,
            Health::Healthy,
            "health untouched"
        );
    }

    #[test]
    fn draining_and_not_serving() {
        let mut t = HealthTracker::default();
        assert_eq!(
            t.observe(&answered(v1::ServingStatus::Draining)),
            Some(Health::Draining)
        );
        assert_eq!(
            t.observe(&answered(v1::ServingStatus::NotServing)),
            Some(Health::Down)
        );
        assert_eq!(t.observe(&answered(v1::ServingStatus::NotServing)), None);
    }

    #[tokio::test]
    async fn health_and_drain_changes_are_published_once_each() {
        let bus = EventBus::new();
        let mut events = bus.subscribe();
        let pool = ManagerPool::new(&["http://127.0.0.1:1".to_owned()])
            .expect("pool")
            .with_ids(&["edge-a".to_owned()])
            .with_events(bus);
        let drain = |draining| Event::ManagerDrain {
            id: "edge-a".to_owned(),
            draining,
        };
        assert!(pool.set_operator_drain(0, true));
        assert!(!pool.set_operator_drain(0, true));
        assert_eq!(events.try_recv().map(|e| (**e).clone()), Ok(drain(true)));
        assert!(events.try_recv().is_err(), "a repeated drain is no change");

        // The manager drains itself too: lifting the operator's drain
        // leaves it draining, so no drain event; coming back healthy is
        // both a health and a drain change.
        let status = |health| {
            let mut s = pool.statuses().swap_remove(0);
            s.health = health;
            s
        };
        set_health(&pool, 0, Health::Draining);
        assert!(pool.set_operator_drain(0, false));
        assert!(events.try_recv().is_err(), "still draining by itself");
        pool.publish_changes(&status(Health::Healthy), false, true);
        assert_eq!(
            events.try_recv().map(|e| (**e).clone()),
            Ok(Event::ManagerHealth {
                id: "edge-a".to_owned(),
                healthy: true
            })
        );
        assert_eq!(events.try_recv().map(|e| (**e).clone()), Ok(drain(false)));
        assert!(events.try_recv().is_err());
    }

    #[test]
    fn failures_before_down_are_configurable() {
        let mut t = HealthTracker::new(3);
        t.observe(&answered(v1::ServingStatus::Serving));
        assert_eq!(t.observe(&failed()), None);
        assert_eq!(t.observe(&failed()), None, "two of three");
        assert_eq!(t.observe(&failed()), Some(Health::Down));
        let mut t = HealthTracker::new(1);
        t.observe(&answered(v1::ServingStatus::Serving));
        assert_eq!(t.observe(&failed()), Some(Health::Down), "one is enough");
        let mut t = HealthTracker::new(0);
        t.observe(&answered(v1::ServingStatus::Serving));
        assert_eq!(t.observe(&failed()), Some(Health::Down), "0 means 1");
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_manager_down_past_the_grace_is_lost_exactly_once() {
        let t0 = Instant::now();
        let mut w = LossWatch::new(secs(15));
        assert!(!w.health(t0, &Health::Healthy));
        assert!(!w.health(t0 + secs(2), &Health::Down), "just down");
        assert_eq!(w.down_since(), Some(t0 + secs(2)));
        assert!(!w.health(t0 + secs(16), &Health::Down), "14 s down");
        assert_eq!(w.poll_timeout(), Some(t0 + secs(17)), "when to look again");
        assert!(w.health(t0 + secs(17), &Health::Down), "15 s down: lost");
        assert_eq!(w.poll_timeout(), None, "reported");
        assert!(!w.health(t0 + secs(18), &Health::Down), "once");
        assert!(!w.health(t0 + secs(600), &Health::Down), "once per outage");
        assert_eq!(w.down_since(), Some(t0 + secs(2)));
        // Back, then down again: a new outage with a grace of its own.
        assert!(!w.health(t0 + secs(601), &Health::Healthy));
        assert_eq!(w.down_since(), None);
        assert!(!w.health(t0 + secs(602), &Health::Down));
        assert!(!w.health(t0 + secs(616), &Health::Down));
        assert!(w.health(t0 + secs(617), &Health::Down), "lost again");
    }

    #[test]
    fn a_manager_never_up_is_never_lost() {
        let t0 = Instant::now();
        let mut w = LossWatch::new(secs(3));
        assert!(!w.health(t0, &Health::Unknown));
        for n in 1..30 {
            assert!(!w.health(t0 + secs(n), &Health::Down));
        }
        assert_eq!(w.down_since(), None);
    }

    #[test]
    fn a_manager_back_within_the_grace_keeps_its_calls() {
        let t0 = Instant::now();
        let mut w = LossWatch::new(secs(3));
        assert!(!w.health(t0, &Health::Healthy));
        assert!(!w.health(t0, &Health::Down));
        assert!(!w.health(t0 + secs(2), &Health::Down));
        assert!(!w.health(t0 + secs(2) + Duration::from_millis(900), &Health::Healthy));
        assert!(
            !w.health(t0 + secs(4), &Health::Down),
            "the grace starts over: not 3 s since this fall"
        );
        assert!(!w.health(t0 + secs(6), &Health::Draining), "draining is up");
        for n in 7..20 {
            assert!(!w.health(t0 + secs(n), &Health::Healthy));
        }
    }

    #[test]
    fn a_new_instance_id_is_a_restart_the_first_is_not() {
        let mut w = LossWatch::new(secs(15));
        assert_eq!(w.instance("i-1"), None, "the first id seen");
        assert_eq!(w.instance("i-1"), None, "the same instance");
        assert_eq!(w.instance(""), None, "no id: no verdict");
        assert_eq!(w.instance("i-2"), Some("i-1".to_owned()), "restarted");
        assert_eq!(w.instance("i-2"), None, "reported once");
        assert_eq!(w.instance("i-3"), Some("i-2".to_owned()));
    }

    #[test]
    fn a_restart_loses_only_the_calls_the_manager_no_longer_holds() {
        let before: Vec<String> = ["c1", "c2", "c3", "c4"].map(String::from).to_vec();
        let held: HashSet<&str> = ["c1", "c3", "c9"].into_iter().collect();
        // c4 ended while the calls were listed.
        let still: Vec<String> = ["c1", "c2", "c3", "c5"].map(String::from).to_vec();
        assert_eq!(lost_calls(before, held, &still), vec!["c2".to_owned()]);
        let all = vec!["c1".to_owned()];
        assert_eq!(
            lost_calls(all.clone(), ["c1"].into_iter().collect(), &all),
            Vec::<String>::new(),
            "re-adopted from its state: nothing lost"
        );
    }

    #[test]
    fn setup_tries_the_least_loaded_manager_first_then_the_next() {
        let mut p = Placement::default();
        let live = [3, 1, 2];
        assert_eq!(p.next(&[0, 1, 2], &live), Some(1));
        assert!(p.refused("m2", tonic::Code::ResourceExhausted, "no port pair"));
        assert_eq!(
            p.next(&[0, 1, 2], &live),
            Some(2),
            "then the next least loaded"
        );
        assert!(p.refused("m3", tonic::Code::Unavailable, "draining"));
        assert_eq!(p.next(&[0, 1, 2], &live), Some(0));
        assert!(p.refused("m1", tonic::Code::DeadlineExceeded, "slow"));
        assert_eq!(p.next(&[0, 1, 2], &live), None, "every manager tried once");
        assert_eq!(p.tried(), &[1, 2, 0]);
        assert_eq!(
            p.refusals(),
            "m2: ResourceExhausted: no port pair; m3: Unavailable: draining; \
             m1: DeadlineExceeded: slow"
        );
        let mut p = Placement::default();
        assert_eq!(
            p.next(&[0, 2], &[0, 0, 0]),
            Some(0),
            "the first among equals"
        );
        assert_eq!(p.next(&[], &[0, 0, 0]), None, "no candidate");
    }

    #[test]
    fn a_manager_turned_unhealthy_mid_setup_is_skipped() {
        let mut p = Placement::default();
        let live = [0, 1, 2];
        assert_eq!(p.next(&[0, 1, 2], &live), Some(0));
        assert!(p.refused("m1", tonic::Code::Cancelled, "gone"));
        // m2 went down meanwhile: the candidates are read again.
        assert_eq!(p.next(&[0, 2], &live), Some(2));
    }

    #[test]
    fn a_refusal_every_manager_would_repeat_is_not_retried() {
        for code in [
            tonic::Code::InvalidArgument,
            tonic::Code::FailedPrecondition,
            tonic::Code::Internal,
            tonic::Code::PermissionDenied,
        ] {
            let mut p = Placement::default();
            assert_eq!(p.next(&[0, 1], &[0, 0]), Some(0));
            assert!(!p.refused("m1", code, "x"), "{code:?}");
        }
        for code in [
            tonic::Code::ResourceExhausted,
            tonic::Code::Unavailable,
            tonic::Code::DeadlineExceeded,
            tonic::Code::Cancelled,
            tonic::Code::Unknown,
        ] {
            assert!(retryable(code), "{code:?}");
        }
    }

    #[tokio::test]
    async fn pinned_calls_are_per_manager_and_losses_reach_subscribers() {
        let uris: Vec<String> = (1..=2).map(|p| format!("http://127.0.0.1:{p}")).collect();
        let bus = EventBus::new();
        let mut events = bus.subscribe();
        let pool = ManagerPool::new(&uris)
            .expect("pool")
            .with_ids(&["a".into(), "b".into()])
            .with_events(bus);
        pool.pin(0, "c2");
        pool.pin(0, "c1");
        pool.pin(1, "c3");
        pool.unpin(0, "c2");
        pool.unpin(1, "c1");
        assert_eq!(pool.pinned_calls(0), vec!["c1".to_owned()]);
        assert_eq!(pool.pinned_calls(1), vec!["c3".to_owned()]);
        assert_eq!(pool.pinned_calls(7), Vec::<String>::new());

        let mut losses = pool.subscribe_losses();
        pool.publish_loss(0, LossKind::GraceExpired);
        let lost = vec!["c3".to_owned()];
        pool.publish_loss(
            1,
            LossKind::Restarted {
                lost_calls: lost.clone(),
            },
        );
        assert_eq!(
            losses.try_recv(),
            Ok(ManagerLoss {
                index: 0,
                kind: LossKind::GraceExpired
            })
        );
        assert_eq!(
            losses.try_recv(),
            Ok(ManagerLoss {
                index: 1,
                kind: LossKind::Restarted { lost_calls: lost }
            })
        );
        assert!(losses.try_recv().is_err());
        assert_eq!(
            events.try_recv().map(|e| (**e).clone()),
            Ok(Event::ManagerLost {
                id: "a".to_owned(),
                kind: "grace_expired".to_owned(),
                calls: 1
            })
        );
        assert_eq!(
            events.try_recv().map(|e| (**e).clone()),
            Ok(Event::ManagerLost {
                id: "b".to_owned(),
                kind: "restarted".to_owned(),
                calls: 1
            })
        );
    }
}
