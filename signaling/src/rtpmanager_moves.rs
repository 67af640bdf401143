//! Moving calls off an RTP manager, a batch at a time: the runtime side of
//! call migration (the per-call ladder is b2bua/migrate.rs, in the SIP core).
//!
//! [`Migrations::migrate_off`] is the one entry point, for the operator's
//! drain (`POST /api/v1/rtpmanagers/{id}/drain?mode=migrate`) and for a
//! lost manager (the pool's detector): each round orders the core to start
//! moving up to `batch` calls ([`MoveOrder`]), waits for each to end
//! (moved, stayed, ended), publishes a `manager_migration` event, and goes
//! on until no call is left on the manager, or until five rounds in a row
//! move nothing (calls that cannot move: `incomplete`), or a cancel. A
//! batch bounds the re-INVITEs in flight, so a drain does not storm the
//! peers. Calls that stayed (a side refused) are not asked again in the
//! same run.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::b2bua::{LinkInput, MediaLink, MoveOrder, MoveOutcome, MoveReport, MoveScope};
use crate::events::{Event, EventBus};
use crate::rtpmanager_pool::{LossKind, ManagerLoss, ManagerPool};

/// Errors kept per migration (the latest).
const ERRORS_KEPT: usize = 20;
/// Rounds in a row that move nothing before a migration gives up.
const IDLE_ROUNDS: u32 = 5;
/// The pause after a round that moved nothing.
const IDLE_PAUSE: Duration = Duration::from_secs(1);
/// How long one call's migration may take before the round stops waiting
/// for it: a few 491 retries and re-INVITE timeouts (64·T1 each).
const ROUND_TIMEOUT: Duration = Duration::from_secs(180);
/// How often a round waiting for its calls looks for a cancel.
const CANCEL_CHECK: Duration = Duration::from_millis(50);

/// Where a manager's migration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationState {
    Running,
    /// No call left on the manager.
    Done,
    /// Calls are left that could not move.
    Incomplete,
    Cancelled,
}

impl MigrationState {
    fn name(self) -> &'static str {
        match self {
            MigrationState::Running => "running",
            MigrationState::Done => "done",
            MigrationState::Incomplete => "incomplete",
            MigrationState::Cancelled => "cancelled",
        }
    }
}

/// A manager's migration as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub state: MigrationState,
    /// The manager is treated as gone (no Delete there; a refusal ends the call).
    pub gone: bool,
    /// Calls started per round.
    pub batch: usize,
    pub rounds: u32,
    pub moved: u64,
    /// Calls that stayed on the manager (a side refused, no manager took them).
    pub stayed: u64,
    /// Calls that ended during their move (BYEs, or on their own).
    pub ended: u64,
    /// Calls not movable at the last round (not answered, in a re-INVITE).
    pub not_movable: u64,
    /// Calls in scope still on the manager after the last round.
    pub remaining: u64,
    /// The latest errors, oldest first: `<call id>: <why>`.
    pub errors: VecDeque<String>,
}

impl Progress {
    fn new(gone: bool, batch: usize) -> Progress {
        Progress {
            state: MigrationState::Running,
            gone,
            batch,
            rounds: 0,
            moved: 0,
            stayed: 0,
            ended: 0,
            not_movable: 0,
            remaining: 0,
            errors: VecDeque::new(),
        }
    }

    fn error(&mut self, error: String) {
        if self.errors.len() == ERRORS_KEPT {
            self.errors.pop_front();
        }
        self.errors.push_back(error);
    }
}

struct Run {
    progress: Progress,
    cancel: Arc<AtomicBool>,
}

/// The migrations of the pool's managers. Clones share them.
#[derive(Clone)]
pub struct Migrations {
    link: MediaLink,
    wake: Arc<dyn Fn() + Send + Sync>,
    pool: ManagerPool,
    events: EventBus,
    default_batch: usize,
    runs: Arc<Mutex<HashMap<usize, Run>>>,
}

impl std::fmt::Debug for Migrations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Migrations").finish_non_exhaustive()
    }
}

impl Migrations {
    /// Orders travel on the B2BUA's `link`; `wake` wakes its core;
    /// `default_batch` is --rtpmanager-migrate-batch.
    pub fn new(
        link: MediaLink,
        wake: Arc<dyn Fn() + Send + Sync>,
        pool: ManagerPool,
        events: EventBus,
        default_batch: usize,
    ) -> Migrations {
        Migrations {
            link,
            wake,
            pool,
            events,
            default_batch: default_batch.max(1),
            runs: Arc::default(),
        }
    }

    /// Calls per round when the caller names no batch.
    pub fn default_batch(&self) -> usize {
        self.default_batch
    }

    fn runs(&self) -> MutexGuard<'_, HashMap<usize, Run>> {
        self.runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Moves the calls in `scope` off manager `manager` (pool index),
    /// `batch` at a time, on a task of its own; the returned handle gives
    /// the final [`Progress`].
    ///
    /// - Manager alive (a drain): `gone = false`: each moved call's legs
    ///   there are deleted, a side refusing keeps its call there.
    /// - Manager lost (dead, or back with a new instance id): `gone = true`:
    ///   nothing is sent to it, a side refusing ends its call with BYEs.
    ///
    /// A migration of the same manager still running is cancelled (after
    /// its round) and replaced: a drain that finds its manager lost goes on
    /// as `gone`.
    pub fn migrate_off(
        &self,
        manager: usize,
        scope: MoveScope,
        gone: bool,
        batch: usize,
    ) -> tokio::task::JoinHandle<Progress> {
        let batch = batch.max(1);
        let cancel = Arc::new(AtomicBool::new(false));
        {
            let mut runs = self.runs();
            if let Some(old) = runs.get(&manager) {
                old.cancel.store(true, Ordering::Relaxed);
            }
            runs.insert(
                manager,
                Run {
                    progress: Progress::new(gone, batch),
                    cancel: cancel.clone(),
                },
            );
        }
        let this = self.clone();
        tokio::spawn(async move { this.run(manager, scope, gone, batch, cancel).await })
    }

    /// Manager `manager` is lost (the pool's detector: failures past the
    /// grace, or back with another instance id): every call on it moves
    /// now, [`default_batch`](Self::default_batch) at a time, as `gone`.
    pub fn manager_lost(&self, manager: usize) -> tokio::task::JoinHandle<Progress> {
        self.migrate_off(manager, MoveScope::All, true, self.default_batch)
    }

    /// Stops the manager's migration after its current round; `false` when
    /// none runs.
    pub fn cancel(&self, manager: usize) -> bool {
        let runs = self.runs();
        match runs.get(&manager) {
            Some(run) if run.progress.state == MigrationState::Running => {
                run.cancel.store(true, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// The manager's latest migration, running or ended.
    pub fn progress(&self, manager: usize) -> Option<Progress> {
        self.runs().get(&manager).map(|run| run.progress.clone())
    }

    /// Updates the progress of `manager`'s run if it is still ours.
    fn update(&self, manager: usize, cancel: &Arc<AtomicBool>, f: impl FnOnce(&mut Progress)) {
        let mut runs = self.runs();
        if let Some(run) = runs.get_mut(&manager) {
            if Arc::ptr_eq(&run.cancel, cancel) {
                f(&mut run.progress);
            }
        }
    }

    async fn run(
        self,
        manager: usize,
        scope: MoveScope,
        gone: bool,
        batch: usize,
        cancel: Arc<AtomicBool>,
    ) -> Progress {
        let id = self.pool.id(manager);
        let mut progress = Progress::new(gone, batch);
        let mut skip: HashSet<String> = HashSet::new();
        let mut idle = 0;
        tracing::info!(rtpmanager = %id, gone, batch, "moving calls off the manager");
        let started_at = Instant::now();
        progress.state = loop {
            if cancel.load(Ordering::Relaxed) {
                break MigrationState::Cancelled;
            }
            let skipped: Vec<String> = skip.iter().cloned().collect();
            let round = self
                .round(&id, scope.clone(), skipped, gone, batch, &cancel)
                .await;
            progress.rounds += 1;
            let round = match round {
                Ok(round) => round,
                Err(error) => {
                    progress.error(error);
                    break MigrationState::Incomplete;
                }
            };
            for (call, outcome, detail) in &round.outcomes {
                match outcome {
                    MoveOutcome::Moved => progress.moved += 1,
                    MoveOutcome::Stayed => {
                        progress.stayed += 1;
                        skip.insert(call.clone());
                        progress.error(format!("{call}: stayed: {detail}"));
                    }
                    MoveOutcome::Ended => {
                        progress.ended += 1;
                        progress.error(format!("{call}: ended: {detail}"));
                    }
                }
            }
            progress.not_movable = round.not_movable as u64;
            let gone_now = round
                .outcomes
                .iter()
                .filter(|(_, o, _)| *o != MoveOutcome::Stayed)
                .count();
            progress.remaining = (round.in_scope + skip.len()).saturating_sub(gone_now) as u64;
            if round.cancelled {
                break MigrationState::Cancelled;
            }
            self.publish(&id, &progress);
            self.update(manager, &cancel, |p| *p = progress.clone());
            // Every call in scope moved or ended: only those that stayed are left.
            if round.in_scope == gone_now {
                break if skip.is_empty() {
                    MigrationState::Done
                } else {
                    MigrationState::Incomplete
                };
            }
            if gone_now == 0 {
                idle += 1;
                if idle >= IDLE_ROUNDS {
                    break MigrationState::Incomplete;
                }
                tokio::time::sleep(IDLE_PAUSE).await;
            } else {
                idle = 0;
            }
        };
        tracing::info!(
            rtpmanager = %id,
            state = progress.state.name(),
            moved = progress.moved,
            stayed = progress.stayed,
            ended = progress.ended,
            remaining = progress.remaining,
            elapsed_ms = started_at.elapsed().as_millis() as u64,
            "migration off the manager ended"
        );
        self.publish(&id, &progress);
        self.update(manager, &cancel, |p| *p = progress.clone());
        progress
    }

    fn publish(&self, id: &str, progress: &Progress) {
        self.events.publish(Event::ManagerMigration {
            id: id.to_owned(),
            state: progress.state.name(),
            moved: progress.moved,
            stayed: progress.stayed,
            ended: progress.ended,
            not_movable: progress.not_movable,
            remaining: progress.remaining,
        });
    }

    /// One order to the core and the end of each call it started.
    async fn round(
        &self,
        id: &str,
        scope: MoveScope,
        skip: Vec<String>,
        gone: bool,
        batch: usize,
        cancel: &AtomicBool,
    ) -> Result<Round, String> {
        let (reply, mut reports) = mpsc::unbounded_channel();
        self.link.push_input(
            Instant::now(),
            LinkInput::Move(MoveOrder {
                manager: id.to_owned(),
                scope,
                skip,
                gone,
                limit: batch,
                reply,
            }),
        );
        (self.wake)();
        let deadline = tokio::time::Instant::now() + ROUND_TIMEOUT;
        let mut round = Round::default();
        let mut waiting: Option<HashSet<String>> = None;
        loop {
            if waiting.as_ref().is_some_and(HashSet::is_empty) {
                return Ok(round);
            }
            // A cancel does not wait for the round: the moves under way
            // finish in the core all the same, unreported here.
            if cancel.load(Ordering::Relaxed) {
                round.cancelled = true;
                return Ok(round);
            }
            let tick = tokio::time::Instant::now() + CANCEL_CHECK;
            let report = match tokio::time::timeout_at(tick.min(deadline), reports.recv()).await {
                Ok(Some(report)) => report,
                // The core dropped the order: it stopped.
                Ok(None) => return Err("the SIP core stopped".to_owned()),
                Err(_) if tokio::time::Instant::now() < deadline => continue,
                Err(_) => {
                    return Err(format!(
                        "calls still moving after {} s: {:?}",
                        ROUND_TIMEOUT.as_secs(),
                        waiting.unwrap_or_default()
                    ))
                }
            };
            match report {
                MoveReport::Started {
                    started,
                    not_movable,
                    left,
                    in_scope,
                } => {
                    round.not_movable = not_movable.len();
                    round.left = left;
                    round.in_scope = in_scope;
                    waiting = Some(started.into_iter().collect());
                }
                MoveReport::Call(moved) => {
                    if let Some(waiting) = waiting.as_mut() {
                        waiting.remove(&moved.id);
                    }
                    round.outcomes.push((moved.id, moved.outcome, moved.detail));
                }
            }
        }
    }
}

/// What a manager's loss asks of its migrations: the calls to move off it
/// as gone, or `None` when nothing is to start. `moving_all`: a migration
/// of every call on it as gone, started on an earlier loss, still runs.
///
/// The pool may report one outage twice (down past the grace, then back as
/// a new instance without the calls still pinned there): the second report
/// names calls the running migration already moves, so it is dropped
/// rather than cancelling that migration mid-round.
pub fn loss_scope(kind: &LossKind, moving_all: bool) -> Option<MoveScope> {
    if moving_all {
        return None;
    }
    match kind {
        LossKind::GraceExpired => Some(MoveScope::All),
        // Those it re-adopted from its state directory stay: only the
        // calls it came back without move, at once.
        LossKind::Restarted { lost_calls } if lost_calls.is_empty() => None,
        LossKind::Restarted { lost_calls } => Some(MoveScope::Media(lost_calls.clone())),
    }
}

/// Moves the calls of each lost manager the pool reports on `losses`
/// (its detection, [`ManagerPool::subscribe_losses`]) to other managers,
/// the manager treated as gone: no Delete is sent there, and a side that
/// refuses the move has its call ended with BYEs. Runs until the pool is
/// dropped.
pub async fn follow_losses(
    mut losses: tokio::sync::broadcast::Receiver<ManagerLoss>,
    migrations: Migrations,
) {
    use tokio::sync::broadcast::error::RecvError;
    // Per manager: the migration started on a loss, and whether it moves
    // every call there.
    let mut started: HashMap<usize, (tokio::task::JoinHandle<Progress>, bool)> = HashMap::new();
    loop {
        let loss = match losses.recv().await {
            Ok(loss) => loss,
            Err(RecvError::Lagged(missed)) => {
                // Not expected (a loss is rare, the buffer holds several):
                // a manager's calls left in place until its next report.
                tracing::error!(
                    missed,
                    "manager loss reports missed: their calls were not moved"
                );
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let moving_all = started
            .get(&loss.index)
            .is_some_and(|(run, all)| *all && !run.is_finished());
        let rtpmanager = migrations.pool.id(loss.index);
        let Some(scope) = loss_scope(&loss.kind, moving_all) else {
            tracing::info!(%rtpmanager, kind = loss.kind.name(), moving_all, "manager loss: nothing more to move");
            continue;
        };
        let all = scope == MoveScope::All;
        tracing::warn!(%rtpmanager, kind = loss.kind.name(), all, "manager lost: moving its calls to other managers");
        let run = match scope {
            MoveScope::All => migrations.manager_lost(loss.index),
            scope => migrations.migrate_off(loss.index, scope, true, migrations.default_batch),
        };
        started.insert(loss.index, (run, all));
    }
}

#[derive(Debug, Default)]
struct Round {
    /// Cancelled before every call it started had ended.
    cancelled: bool,
    in_scope: usize,
    left: usize,
    not_movable: usize,
    outcomes: Vec<(String, MoveOutcome, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manager_down_past_the_grace_moves_all_its_calls_a_restart_only_those_it_lost() {
        assert_eq!(
            loss_scope(&LossKind::GraceExpired, false),
            Some(MoveScope::All)
        );
        let lost = vec!["n1-a".to_owned(), "n1-b".to_owned()];
        assert_eq!(
            loss_scope(
                &LossKind::Restarted {
                    lost_calls: lost.clone()
                },
                false
            ),
            Some(MoveScope::Media(lost))
        );
        // Back with every call re-adopted: nothing to move.
        assert_eq!(
            loss_scope(&LossKind::Restarted { lost_calls: vec![] }, false),
            None
        );
    }

    #[test]
    fn a_second_report_of_one_outage_leaves_the_running_migration_alone() {
        assert_eq!(loss_scope(&LossKind::GraceExpired, true), None);
        let restarted = LossKind::Restarted {
            lost_calls: vec!["n1-a".to_owned()],
        };
        assert_eq!(loss_scope(&restarted, true), None);
    }

    /// The next order the core would get, within `limit`.
    async fn next_order(link: &MediaLink, limit: Duration) -> Option<MoveOrder> {
        let until = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < until {
            if let Some(input) = link.pop_input(Instant::now()) {
                match input {
                    LinkInput::Move(order) => return Some(order),
                    other => panic!("not a move order: {other:?}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    #[tokio::test]
    async fn losses_reported_by_the_pool_become_gone_migrations_of_the_right_calls() {
        let uris: Vec<String> = (1..=3).map(|p| format!("http://127.0.0.1:{p}")).collect();
        let pool = ManagerPool::new(&uris).expect("pool").with_ids(&[
            "m1".into(),
            "m2".into(),
            "m3".into(),
        ]);
        let link = MediaLink::new();
        let migrations = Migrations::new(link.clone(), Arc::new(|| {}), pool, EventBus::new(), 7);
        let (losses, receiver) = tokio::sync::broadcast::channel(8);
        tokio::spawn(follow_losses(receiver, migrations));

        losses
            .send(ManagerLoss {
                index: 1,
                kind: LossKind::GraceExpired,
            })
            .expect("send");
        let order = next_order(&link, Duration::from_secs(2))
            .await
            .expect("a move order for the lost manager");
        assert_eq!(order.manager, "m2");
        assert_eq!(order.scope, MoveScope::All);
        assert!(order.gone, "a lost manager gets no Delete");
        assert_eq!(order.limit, 7, "the default batch");

        // The same outage again, as the restart that follows it: the
        // migration under way (its round still waits) already moves them.
        losses
            .send(ManagerLoss {
                index: 1,
                kind: LossKind::Restarted {
                    lost_calls: vec!["n1-x".to_owned()],
                },
            })
            .expect("send");
        assert!(
            next_order(&link, Duration::from_millis(300))
                .await
                .is_none(),
            "a duplicate report started another migration"
        );

        // Another manager restarted without two of its calls: only those.
        let lost = vec!["n1-a".to_owned(), "n1-b".to_owned()];
        losses
            .send(ManagerLoss {
                index: 0,
                kind: LossKind::Restarted {
                    lost_calls: lost.clone(),
                },
            })
            .expect("send");
        let order = next_order(&link, Duration::from_secs(2))
            .await
            .expect("a move order for the restarted manager");
        assert_eq!(order.manager, "m1");
        assert_eq!(order.scope, MoveScope::Media(lost));
        assert!(order.gone);
        drop(order);
    }
}
