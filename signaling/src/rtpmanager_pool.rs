//! The pool of RTP managers: one health checker per configured manager, and
//! the view of their health that call routing and the REST API read.
//!
//! Health is decided by [`HealthTracker`], a plain state machine fed with the
//! outcome of each probe; the tokio task around it only does the gRPC calls.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use switchboard_proto::v1;
use tokio::sync::watch;

use crate::events::{Event, EventBus};
use crate::rtpmanager_client::{describe, ClientAccess, ManagerClient};

/// Consecutive failed probes before a healthy manager is declared down; one
/// lost probe on a busy host must not move calls away.
pub const FAILURES_BEFORE_DOWN: u32 = 2;

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
    /// Drained by the operator (REST API): no new calls, whatever its health.
    pub operator_drain: bool,
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
}

impl Default for HealthTracker {
    fn default() -> Self {
        HealthTracker {
            health: Health::Unknown,
            consecutive_failures: 0,
        }
    }
}

impl HealthTracker {
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
                    || self.consecutive_failures >= FAILURES_BEFORE_DOWN;
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
}

#[derive(Debug)]
struct Manager {
    client: ManagerClient,
    status: RwLock<ManagerStatus>,
    /// Counts the times the manager became healthy (see
    /// [`ManagerPool::healthy_changes`]).
    became_healthy: watch::Sender<u64>,
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
                    client: access.connect_lazy(uri)?,
                    became_healthy: watch::Sender::new(0),
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
                        operator_drain: false,
                    }),
                })
            })
            .collect::<Result<Vec<_>, tonic::transport::Error>>()?;
        Ok(ManagerPool {
            managers: Arc::new(managers),
            events: EventBus::new(),
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
        self.managers[index].client.clone()
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
    /// operator drained.
    pub fn candidates(&self) -> Vec<usize> {
        let healths: Vec<Health> = self
            .statuses()
            .into_iter()
            .map(|s| {
                if s.operator_drain {
                    Health::Draining
                } else {
                    s.health
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
        let mut tracker = HealthTracker::default();
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let mut client = manager.client.clone();
            let probe = match client.health(v1::HealthRequest {}).await {
                Ok(resp) => {
                    let health = resp.into_inner();
                    let instance_known = manager
                        .status
                        .read()
                        .map(|s| !s.instance_id.is_empty())
                        .unwrap_or(false);
                    let info = if instance_known && tracker.health() != &Health::Down {
                        None
                    } else {
                        client
                            .info(v1::InfoRequest {})
                            .await
                            .ok()
                            .map(|r| r.into_inner())
                    };
                    self.record_answer(index, &health, info);
                    Probe::Answered {
                        status: health.status(),
                    }
                }
                Err(status) => Probe::Failed {
                    error: describe(&status),
                },
            };
            let endpoint = self.set_detail(index, &probe);
            if let Some(health) = tracker.observe(&probe) {
                if let Ok(mut s) = manager.status.write() {
                    let was_draining = is_draining(&s);
                    let was_healthy = s.health == Health::Healthy;
                    s.health = health.clone();
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
        }
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
        let Ok(mut s) = self.managers[index].status.write() else {
            return;
        };
        s.active_calls = health.active_calls;
        s.ports_free = health.ports_free;
        s.fast_path = fast_path_name(health.fast_path()).to_owned();
        if let Some(info) = info {
            if !s.instance_id.is_empty() && s.instance_id != info.instance_id {
                tracing::warn!(rtpmanager = %s.endpoint, "RTP manager restarted (new instance id)");
            }
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
        assert_eq!(events.try_recv().map(|e| (*e).clone()), Ok(drain(true)));
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
            events.try_recv().map(|e| (*e).clone()),
            Ok(Event::ManagerHealth {
                id: "edge-a".to_owned(),
                healthy: true
            })
        );
        assert_eq!(events.try_recv().map(|e| (*e).clone()), Ok(drain(false)));
        assert!(events.try_recv().is_err());
    }
}
