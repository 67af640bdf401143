//! The tokio side of the B2BUA's media work: runs the [`MediaRequest`]s the
//! core queues on its [`MediaLink`] as gRPC calls to the RTP managers and
//! pushes their results back, and subscribes to every manager's Watch
//! stream for media timeouts and DTMF.
//!
//! Requests of one call run in order on one task bound to one manager
//! (affinity): the manager is chosen at the call's first request, the
//! healthy one this server gave the fewest live calls; a manager that is
//! down or draining gets no new calls, and calls already on it stay.
//! A new call's first Offer refused for want of ports or of a reachable
//! manager moves on to the next manager ([`Placement`]); the caller hears
//! of it only when every manager refused.
//! A playback's stream is read on a task of its own so that the call's
//! next requests (a Delete on hangup) are not held behind it.
//!
//! Each time a manager becomes healthy (at start, and when it comes back),
//! and every five minutes while it stays so, its calls are reconciled: those this node placed and no longer knows
//! (an earlier process's, after a crash) are deleted once older than the
//! grace period (reconcile.rs decides).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use switchboard_proto::v1;
use tokio::sync::{mpsc, Notify};
use tracing::Instrument;

use super::media::{
    sum_figures, CallLeg, Counters, DeleteReason, LegFigures, LinkInput, MediaCallId, MediaEvent,
    MediaFailure, MediaLegId, MediaLink, MediaOp, MediaRequest, MediaResult,
};
use super::reconcile::{orphans, Owner};
use crate::metrics::Metrics;
use crate::rtpmanager_client::ManagerClient;
use crate::rtpmanager_control::ControlChannel;
use crate::rtpmanager_pool::{Health, ManagerPool, Placement};

/// How often a healthy manager's calls are reconciled besides its
/// recoveries: a Delete lost to a transient error (a timeout on a busy
/// manager) otherwise leaves its media until the manager's own idle timeout.
const RECONCILE_EVERY: Duration = Duration::from_secs(300);

/// How the executor wakes the SIP core after pushing an input.
pub type Wake = Arc<dyn Fn() + Send + Sync>;

/// The media call ids this process has on managers: a call is added before
/// its first request and removed once its task ends (after its Delete).
/// Counted: a migrating call has a task on two managers for a while.
#[derive(Clone, Default)]
struct Placed(Arc<Mutex<HashMap<String, usize>>>);

impl Placed {
    fn add(&self, call: &str) {
        *self.lock().entry(call.to_owned()).or_default() += 1;
    }

    fn remove(&self, call: &str) {
        let mut placed = self.lock();
        if let Some(count) = placed.get_mut(call) {
            *count -= 1;
            if *count == 0 {
                placed.remove(call);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        // Every critical section is one insert, remove or lookup.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How managers' calls are reconciled with this process's.
#[derive(Debug, Clone)]
pub struct Reconcile {
    /// This process, as media call ids name it.
    pub owner: Owner,
    /// The age below which an unknown call of ours is left alone.
    pub grace: Duration,
    /// When this process started: an earlier instance cannot have placed
    /// calls since.
    pub started: Instant,
}

/// Starts the executor, the Watch subscriptions and the reconciliation of
/// each manager's calls on the current runtime; each request's time goes
/// to `metrics`.
pub fn spawn(
    pool: ManagerPool,
    link: MediaLink,
    wake: Wake,
    reconcile: Reconcile,
    metrics: Metrics,
) {
    let notify = Arc::new(Notify::new());
    let waker = notify.clone();
    link.on_request(move || waker.notify_one());
    let live: Arc<Vec<AtomicUsize>> =
        Arc::new((0..pool.len()).map(|_| AtomicUsize::new(0)).collect());
    let placed = Placed::default();
    for index in 0..pool.len() {
        tokio::spawn(watch(
            (pool.endpoint(index), pool.id(index)),
            pool.client(index),
            link.clone(),
            wake.clone(),
        ));
        tokio::spawn(reconcile_forever(
            pool.clone(),
            index,
            placed.clone(),
            reconcile.clone(),
        ));
    }
    tokio::spawn(dispatch(pool, link, wake, notify, live, placed, metrics));
}

/// Reconciles manager `index` each time it becomes healthy, again while
/// orphan candidates are in their grace period, and every
/// [`RECONCILE_EVERY`] while it stays healthy.
async fn reconcile_forever(pool: ManagerPool, index: usize, placed: Placed, reconcile: Reconcile) {
    let endpoint = pool.endpoint(index);
    let mut client = pool.client(index);
    let mut healthy = pool.healthy_changes(index);
    let mut seen = 0;
    loop {
        let epoch = *healthy.borrow_and_update();
        if epoch == seen {
            tokio::select! {
                changed = healthy.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
                () = tokio::time::sleep(RECONCILE_EVERY) => {
                    let up = pool.statuses().get(index).is_some_and(|s| s.health == Health::Healthy);
                    if !up {
                        continue;
                    }
                }
            }
        }
        seen = epoch;
        loop {
            let calls = match client.list_calls(v1::ListCallsRequest {}).await {
                Ok(response) => response.into_inner().calls,
                Err(status) => {
                    // It is down again; the next recovery starts over.
                    tracing::debug!(rtpmanager = %endpoint, %status, "ListCalls failed: not reconciled");
                    break;
                }
            };
            let verdict = {
                let placed = placed.lock();
                orphans(
                    &reconcile.owner,
                    calls
                        .iter()
                        .map(|c| (c.call_id.as_str(), Duration::from_secs(c.age_secs))),
                    |id| placed.contains_key(id),
                    reconcile.grace,
                    reconcile.started.elapsed(),
                )
            };
            if !verdict.twins.is_empty() {
                tracing::error!(
                    rtpmanager = %endpoint,
                    node_id = reconcile.owner.node(),
                    instances = ?verdict.twins,
                    "another running signaling server uses this --node-id: its calls are left alone, but give each server its own node id"
                );
            }
            for call_id in verdict.delete {
                let deleted = client
                    .delete(v1::DeleteRequest {
                        call_id: call_id.clone(),
                        leg_id: String::new(),
                        reason: v1::DeleteReason::Admin as i32,
                        detail: format!(
                            "orphan: signaling node {} no longer knows the call",
                            reconcile.owner.node()
                        ),
                    })
                    .await;
                match deleted {
                    Ok(_) => {
                        tracing::info!(rtpmanager = %endpoint, call_id, "orphaned call deleted")
                    }
                    // Gone meanwhile, or the manager went down: either way
                    // the next pass sees the truth.
                    Err(status) => {
                        tracing::debug!(rtpmanager = %endpoint, call_id, %status, "orphan not deleted")
                    }
                }
            }
            match verdict.again_in {
                // A second past the youngest candidate's grace: the
                // manager's ages are whole seconds.
                Some(wait) => tokio::time::sleep(wait + Duration::from_secs(1)).await,
                None => break,
            }
        }
    }
}

/// A request for a call's task; a `reply` takes the result instead of the
/// link (a Delete that reaches two managers during a migration is
/// answered once, with both managers' figures).
struct Job {
    request: MediaRequest,
    reply: Option<tokio::sync::oneshot::Sender<MediaResult>>,
}

/// Where a call's requests go: its task, on the manager `at` names (its
/// task changes it when a refused setup moves on: [`Seat::refused`]), and
/// while a migration runs (`MediaOp::Move` until `Release`/`Abort`), the
/// task on the manager it is leaving.
struct Route {
    sender: mpsc::UnboundedSender<Job>,
    at: Arc<AtomicUsize>,
    previous: Option<(mpsc::UnboundedSender<Job>, Arc<AtomicUsize>)>,
}

impl Route {
    fn index(&self) -> usize {
        self.at.load(Ordering::Relaxed)
    }
}

async fn dispatch(
    pool: ManagerPool,
    link: MediaLink,
    wake: Wake,
    notify: Arc<Notify>,
    live: Arc<Vec<AtomicUsize>>,
    placed: Placed,
    metrics: Metrics,
) {
    let mut calls: HashMap<MediaCallId, Route> = HashMap::new();
    let mut deletes = 0usize;
    let starter = Starter {
        pool: &pool,
        link: &link,
        wake: &wake,
        live: &live,
        placed: &placed,
        metrics: &metrics,
    };
    loop {
        notify.notified().await;
        while let Some(request) = link.poll_request() {
            let ends = matches!(request.op, MediaOp::Delete { .. });
            if matches!(
                request.op,
                MediaOp::Move | MediaOp::Release { .. } | MediaOp::Abort
            ) {
                migrate_op(&starter, &mut calls, request);
                continue;
            }
            let mut job = Job {
                request,
                reply: None,
            };
            // A call's task ends after a Delete with nothing queued behind
            // it; a later request with the same call id (a caller retrying
            // with its Call-ID) then gets a new task, so it can never
            // overtake that Delete.
            loop {
                let open = calls
                    .get_mut(&job.request.call)
                    .filter(|route| !route.sender.is_closed());
                if let (true, Some(route)) = (ends, open) {
                    if let Some((previous, _)) = route.previous.take() {
                        // Ended mid-migration: both managers' legs go.
                        delete_on_both(&link, &wake, job.request, &route.sender, &previous);
                        break;
                    }
                }
                let open = calls
                    .get(&job.request.call)
                    .filter(|route| !route.sender.is_closed())
                    .map(|route| route.sender.clone());
                let sender = match open {
                    Some(sender) => sender,
                    None if ends => {
                        // Nothing of this call is on a manager.
                        calls.remove(&job.request.call);
                        finish(&link, &wake, &job.request, MediaResult::Done);
                        break;
                    }
                    None => match choose(&pool, &live) {
                        Some((index, placement)) => {
                            let (sender, at) =
                                starter.start(index, &job.request.call, Some(placement));
                            calls.insert(
                                job.request.call.clone(),
                                Route {
                                    sender: sender.clone(),
                                    at,
                                    previous: None,
                                },
                            );
                            sender
                        }
                        None => {
                            tracing::warn!(call_id = %job.request.call, "no RTP manager can take the call");
                            finish(
                                &link,
                                &wake,
                                &job.request,
                                MediaResult::Failed {
                                    failure: MediaFailure::Unavailable,
                                    message: "no healthy RTP manager".to_owned(),
                                },
                            );
                            break;
                        }
                    },
                };
                match sender.send(job) {
                    Ok(()) => break,
                    // The task ended after a Delete between the check and the send.
                    Err(failed) => job = failed.0,
                }
            }
            if ends {
                deletes += 1;
                if deletes.is_multiple_of(256) {
                    calls.retain(|_, route| !route.sender.is_closed());
                }
            }
        }
    }
}

/// What starting a call's task needs.
struct Starter<'a> {
    pool: &'a ManagerPool,
    link: &'a MediaLink,
    wake: &'a Wake,
    live: &'a Arc<Vec<AtomicUsize>>,
    placed: &'a Placed,
    metrics: &'a Metrics,
}

impl Starter<'_> {
    fn start(
        &self,
        index: usize,
        call: &MediaCallId,
        placement: Option<Placement>,
    ) -> (mpsc::UnboundedSender<Job>, Arc<AtomicUsize>) {
        start_call(self, (index, placement), call)
    }
}

/// Runs a migration step (`Move`, `Release`, `Abort`) on a call's route.
fn migrate_op(
    starter: &Starter<'_>,
    calls: &mut HashMap<MediaCallId, Route>,
    request: MediaRequest,
) {
    let (link, wake) = (starter.link, starter.wake);
    let fail = |failure, message: &str| MediaResult::Failed {
        failure,
        message: message.to_owned(),
    };
    let Some(route) = calls
        .get_mut(&request.call)
        .filter(|route| !route.sender.is_closed())
    else {
        let result = fail(MediaFailure::Internal, "the call is on no manager");
        finish(link, wake, &request, result);
        return;
    };
    let delete = |reason: &str| MediaOp::Delete {
        reason: DeleteReason::Admin,
        detail: reason.to_owned(),
    };
    match request.op {
        MediaOp::Move => {
            if route.previous.is_some() {
                let result = fail(MediaFailure::Internal, "a migration is already running");
                finish(link, wake, &request, result);
                return;
            }
            let Some(to) = choose_other(starter.pool, starter.live, route.index()) else {
                let result = fail(
                    MediaFailure::Unavailable,
                    "no other manager can take the call",
                );
                finish(link, wake, &request, result);
                return;
            };
            let (sender, at) = starter.start(to, &request.call, None);
            let from = std::mem::replace(&mut route.sender, sender);
            let left = std::mem::replace(&mut route.at, at);
            route.previous = Some((from, left));
            let manager = starter.pool.id(to);
            finish(link, wake, &request, MediaResult::Moved { manager });
        }
        MediaOp::Release { delete: wanted } => match route.previous.take() {
            Some((previous, _)) if wanted => {
                let job = Job {
                    request: MediaRequest {
                        op: delete("moved to another manager"),
                        ..request
                    },
                    reply: None,
                };
                if let Err(failed) = previous.send(job) {
                    finish(link, wake, &failed.0.request, MediaResult::Done);
                }
            }
            // Dropping the sender ends the previous task.
            _ => finish(link, wake, &request, MediaResult::Done),
        },
        MediaOp::Abort => match route.previous.take() {
            Some((previous, at)) => {
                let current = std::mem::replace(&mut route.sender, previous);
                route.at = at;
                let job = Job {
                    request: MediaRequest {
                        op: delete("migration abandoned"),
                        ..request
                    },
                    reply: None,
                };
                if let Err(failed) = current.send(job) {
                    finish(link, wake, &failed.0.request, MediaResult::Done);
                }
            }
            None => finish(link, wake, &request, MediaResult::Done),
        },
        _ => {}
    }
}

/// A Delete of a call in migration: sent to both managers, answered once
/// with the sum of their figures (either alone if the other failed).
fn delete_on_both(
    link: &MediaLink,
    wake: &Wake,
    request: MediaRequest,
    current: &mpsc::UnboundedSender<Job>,
    previous: &mpsc::UnboundedSender<Job>,
) {
    let (to_current, from_current) = tokio::sync::oneshot::channel();
    let (to_previous, from_previous) = tokio::sync::oneshot::channel();
    for (sender, reply) in [(current, to_current), (previous, to_previous)] {
        // A closed task drops the reply: counted as "nothing there" below.
        let _ = sender.send(Job {
            request: request.clone(),
            reply: Some(reply),
        });
    }
    let (link, wake) = (link.clone(), wake.clone());
    tokio::spawn(async move {
        let results = [from_current.await.ok(), from_previous.await.ok()];
        let mut legs = None;
        let mut failure = None;
        for result in results.into_iter().flatten() {
            match result {
                MediaResult::Deleted(figures) => {
                    legs = Some(sum_figures(legs.unwrap_or_default(), figures));
                }
                other @ MediaResult::Failed { .. } => failure = Some(other),
                _ => {}
            }
        }
        let result = match (legs, failure) {
            (Some(legs), _) => MediaResult::Deleted(legs),
            (None, Some(failure)) => failure,
            (None, None) => MediaResult::Done,
        };
        finish(&link, &wake, &request, result);
    });
}

/// Starts the task that runs a call's requests in order on manager `index`
/// (the first `placement` chose; none for a migration's new manager).
fn start_call(
    starter: &Starter<'_>,
    (index, placement): (usize, Option<Placement>),
    call: &MediaCallId,
) -> (mpsc::UnboundedSender<Job>, Arc<AtomicUsize>) {
    let Starter {
        pool,
        link,
        wake,
        live,
        placed,
        metrics,
    } = *starter;
    let (sender, receiver) = mpsc::unbounded_channel();
    live[index].fetch_add(1, Ordering::Relaxed);
    // Known before the manager hears of it: reconciliation never takes a
    // call being set up for an orphan.
    placed.add(&call.0);
    tracing::debug!(call_id = %call, rtpmanager = %pool.endpoint(index), "call placed on manager");
    // Queued before the result of the call's first request: the core
    // knows the manager by the time it hears of the media. A migration's
    // new manager is announced by its `Moved` result instead.
    if placement.is_some() {
        link.push_input(
            Instant::now(),
            LinkInput::Placed {
                call: call.clone(),
                manager: pool.id(index),
            },
        );
    }
    let span = tracing::debug_span!("call", call_id = %call);
    let at = Arc::new(AtomicUsize::new(index));
    let seat = Seat {
        pool: pool.clone(),
        at: at.clone(),
        control: pool.control(index),
        live: live.clone(),
        placement,
        pinned: false,
        metrics: metrics.clone(),
    };
    tokio::spawn(
        run_call(
            seat,
            receiver,
            link.clone(),
            wake.clone(),
            (placed.clone(), call.clone()),
        )
        .instrument(span),
    );
    (sender, at)
}

/// The manager for a new call: among those that may take calls, the one
/// with the fewest calls placed by this executor; and the placement that
/// chose it, for the next choice should it refuse.
fn choose(pool: &ManagerPool, live: &[AtomicUsize]) -> Option<(usize, Placement)> {
    let mut placement = Placement::default();
    let index = placement.next(&pool.candidates(), &counts(live))?;
    Some((index, placement))
}

/// The manager a migrating call moves to: the least loaded that may take
/// calls, other than `but`, the one it leaves.
fn choose_other(pool: &ManagerPool, live: &[AtomicUsize], but: usize) -> Option<usize> {
    let candidates: Vec<usize> = pool
        .candidates()
        .into_iter()
        .filter(|index| *index != but)
        .collect();
    Placement::default().next(&candidates, &counts(live))
}

fn counts(live: &[AtomicUsize]) -> Vec<usize> {
    live.iter().map(|n| n.load(Ordering::Relaxed)).collect()
}

/// The manager a call's requests run on.
struct Seat {
    pool: ManagerPool,
    /// The manager's index, shared with the dispatcher's [`Route`].
    at: Arc<AtomicUsize>,
    control: ControlChannel,
    live: Arc<Vec<AtomicUsize>>,
    /// Until the call's first request succeeds: the managers its setup
    /// tried, so a refused first Offer moves on to another one. None for a
    /// migration's new manager: a refusal there aborts the move instead.
    placement: Option<Placement>,
    /// Whether the call is pinned on the manager (restart detection counts
    /// it): from its first success there until the task ends, so a moved
    /// call is pinned on its new manager once it has media there and
    /// unpinned from the old one when that task ends (Release or Abort).
    pinned: bool,
    metrics: Metrics,
}

impl Seat {
    fn index(&self) -> usize {
        self.at.load(Ordering::Relaxed)
    }

    /// The call's request succeeded: it has media here from now on.
    fn settled(&mut self, call: &MediaCallId) {
        self.placement = None;
        if !self.pinned {
            self.pinned = true;
            self.pool.pin(self.index(), &call.0);
        }
    }

    /// The manager refused the call's request `op`: moves the call to the
    /// next manager (`None`: send `op` again) when `op` is its first Offer,
    /// the refusal one another manager may not repeat and a manager is
    /// left; else the request's result.
    fn refused(
        &mut self,
        (call, op): (&MediaCallId, &MediaOp),
        status: &tonic::Status,
        link: &MediaLink,
    ) -> Option<MediaResult> {
        let first_offer = matches!(op, MediaOp::Offer { .. });
        let Some(placement) = self.placement.as_mut().filter(|_| first_offer) else {
            self.placement = None;
            return Some(failed(status));
        };
        let index = self.at.load(Ordering::Relaxed);
        let id = self.pool.id(index);
        if !placement.refused(&id, status.code(), status.message()) {
            self.placement = None;
            return Some(failed(status));
        }
        // Nothing half-made left behind should the refusal have come
        // after part of the offer was set up; best effort, off the path.
        let refusing = self.control.clone();
        let call_id = call.0.clone();
        tokio::spawn(async move {
            let _ = refusing
                .delete(v1::DeleteRequest {
                    call_id,
                    leg_id: String::new(),
                    reason: v1::DeleteReason::Failed as i32,
                    detail: "offer refused: the call went to another manager".to_owned(),
                })
                .await;
        });
        let next = placement.next(&self.pool.candidates(), &counts(&self.live));
        let Some(next) = next else {
            let refusals = placement.refusals();
            tracing::warn!(call_id = %call, %refusals, "every RTP manager refused the call");
            self.placement = None;
            return Some(MediaResult::Failed {
                failure: MediaFailure::Unavailable,
                message: format!("every RTP manager refused the call: {refusals}"),
            });
        };
        tracing::warn!(
            call_id = %call,
            rtpmanager = %id,
            error = %format!("{:?}: {}", status.code(), status.message()),
            next = %self.pool.id(next),
            "RTP manager refused the call: trying the next"
        );
        self.live[index].fetch_sub(1, Ordering::Relaxed);
        self.live[next].fetch_add(1, Ordering::Relaxed);
        self.at.store(next, Ordering::Relaxed);
        self.control = self.pool.control(next);
        link.push_input(
            Instant::now(),
            LinkInput::Placed {
                call: call.clone(),
                manager: self.pool.id(next),
            },
        );
        None
    }
}

fn finish(link: &MediaLink, wake: &Wake, request: &MediaRequest, result: MediaResult) {
    link.push_input(
        Instant::now(),
        LinkInput::Result {
            id: request.id,
            result,
        },
    );
    wake();
}

async fn run_call(
    mut seat: Seat,
    mut requests: mpsc::UnboundedReceiver<Job>,
    link: MediaLink,
    wake: Wake,
    (placed, call): (Placed, MediaCallId),
) {
    while let Some(Job { request, reply }) = requests.recv().await {
        let ends = matches!(request.op, MediaOp::Delete { .. });
        let call_id = request.call.0.clone();
        let started = Instant::now();
        let result = match &request.op {
            MediaOp::Play { leg, files } => {
                let play = seat
                    .control
                    .client()
                    .play(v1::PlayRequest {
                        call_id,
                        leg_id: leg.media_leg_id().0,
                        files: files.clone(),
                        repeat: 0,
                        loop_forever: false,
                    })
                    .await;
                match play {
                    Ok(stream) => {
                        seat.settled(&request.call);
                        tokio::spawn(follow_playback(
                            stream.into_inner(),
                            request.clone(),
                            link.clone(),
                            wake.clone(),
                        ));
                        continue;
                    }
                    Err(status) => {
                        seat.placement = None;
                        failed(&status)
                    }
                }
            }
            op => loop {
                let answer_bridges = seat.pool.answer_bridges(seat.index());
                match run_op(&seat.control, answer_bridges, call_id.clone(), op).await {
                    Ok(result) => {
                        seat.settled(&request.call);
                        break result;
                    }
                    Err(status) => {
                        if let Some(result) = seat.refused((&request.call, op), &status, &link) {
                            break result;
                        }
                    }
                }
            },
        };
        let took = started.elapsed();
        let op = request.op.name();
        seat.metrics
            .observe_media_request(op, seat.pool.id(seat.index()), took);
        tracing::debug!(
            call_id = %request.call,
            op,
            elapsed_us = took.as_micros() as u64,
            ok = !matches!(result, MediaResult::Failed { .. }),
            "media request done"
        );
        match reply {
            Some(reply) => {
                let _ = reply.send(result);
            }
            None => finish(&link, &wake, &request, result),
        }
        if ends && requests.is_empty() {
            break;
        }
    }
    seat.live[seat.index()].fetch_sub(1, Ordering::Relaxed);
    if seat.pinned {
        seat.pool.unpin(seat.index(), &call.0);
    }
    placed.remove(&call.0);
}

async fn run_op(
    control: &ControlChannel,
    answer_bridges: bool,
    call_id: String,
    op: &MediaOp,
) -> Result<MediaResult, tonic::Status> {
    let outcome = match op {
        MediaOp::Offer {
            leg,
            peer,
            sdp,
            callee_interface,
        } => control
            .offer(v1::OfferRequest {
                call_id,
                leg_id: leg.media_leg_id().0,
                peer_leg_id: peer.map(|p| p.media_leg_id().0).unwrap_or_default(),
                sdp: sdp.clone(),
                options: Some(options(*leg, callee_interface.as_deref())),
                peer_options: peer.map(|p| options(p, callee_interface.as_deref())),
            })
            .await
            .map(|r| MediaResult::Sdp(r.sdp)),
        MediaOp::Answer {
            leg,
            peer,
            sdp,
            bridge,
        } => {
            let (answer, then_bridge) =
                answer_requests(call_id, (*leg, *peer), sdp, *bridge, answer_bridges);
            let answered = control
                .answer(answer)
                .await
                .map(|r| MediaResult::Sdp(r.sdp));
            if let (Some(request), Ok(_)) = (then_bridge, &answered) {
                control.bridge(request).await?;
            }
            answered
        }
        MediaOp::Bridge => control
            .bridge(v1::BridgeRequest {
                call_id,
                leg_a: CallLeg::A.media_leg_id().0,
                leg_b: CallLeg::B.media_leg_id().0,
            })
            .await
            .map(|()| MediaResult::Done),
        MediaOp::Delete { reason, detail } => control
            .delete(v1::DeleteRequest {
                call_id,
                leg_id: String::new(),
                reason: delete_reason(*reason) as i32,
                detail: detail.clone(),
            })
            .await
            .map(|r| MediaResult::Deleted(r.legs.iter().map(figures).collect())),
        MediaOp::Play { .. } => Ok(MediaResult::Failed {
            failure: MediaFailure::Internal,
            message: "playback runs on its own task".to_owned(),
        }),
        MediaOp::Move | MediaOp::Release { .. } | MediaOp::Abort => Ok(MediaResult::Failed {
            failure: MediaFailure::Internal,
            message: "migration steps run in the dispatcher".to_owned(),
        }),
    };
    outcome
}

/// Both legs face phones or trunks: strict source, so the manager learns
/// each peer's media source after the answer, locks it and drops strangers
/// (a single packet from anyone must not redirect a call's media).
/// The callee's leg goes on `callee_interface` when the dial action names
/// one; the caller's is placed by the manager (the route to its SDP).
/// The Answer for `leg` (its peer's answer to `peer`'s offer) and, when
/// the legs are to be bridged by a manager that cannot do it in the Answer
/// (its Health does not say `answer_bridges`: an older manager), the Bridge
/// to send after it.
fn answer_requests(
    call_id: String,
    (leg, peer): (CallLeg, CallLeg),
    sdp: &str,
    bridge: bool,
    answer_bridges: bool,
) -> (v1::AnswerRequest, Option<v1::BridgeRequest>) {
    let then_bridge = (bridge && !answer_bridges).then(|| v1::BridgeRequest {
        call_id: call_id.clone(),
        leg_a: CallLeg::A.media_leg_id().0,
        leg_b: CallLeg::B.media_leg_id().0,
    });
    let answer = v1::AnswerRequest {
        call_id,
        leg_id: leg.media_leg_id().0,
        peer_leg_id: peer.media_leg_id().0,
        sdp: sdp.to_owned(),
        bridge: bridge && answer_bridges,
    };
    (answer, then_bridge)
}

fn options(leg: CallLeg, callee_interface: Option<&str>) -> v1::LegOptions {
    v1::LegOptions {
        strict_source: true,
        label: match leg {
            CallLeg::A => "caller",
            CallLeg::B => "callee",
        }
        .to_owned(),
        interface: match leg {
            CallLeg::A => String::new(),
            CallLeg::B => callee_interface.unwrap_or_default().to_owned(),
        },
        ..v1::LegOptions::default()
    }
}

/// A leg's figures in the core's terms.
pub fn figures(stats: &v1::LegStats) -> LegFigures {
    let counters = |c: Option<&v1::StreamCounters>| Counters {
        packets: c.map_or(0, |c| c.packets),
        bytes: c.map_or(0, |c| c.bytes),
    };
    LegFigures {
        leg: MediaLegId(stats.leg_id.clone()),
        rtp_in: counters(stats.rtp_in.as_ref()),
        rtp_out: counters(stats.rtp_out.as_ref()),
        lost: stats.rtp_lost,
        jitter_us: stats.jitter_us,
        kernel_packets: stats.kernel_packets,
    }
}

fn delete_reason(reason: DeleteReason) -> v1::DeleteReason {
    match reason {
        DeleteReason::Hangup => v1::DeleteReason::Hangup,
        DeleteReason::Cancelled => v1::DeleteReason::Cancelled,
        DeleteReason::Failed => v1::DeleteReason::Failed,
        DeleteReason::MediaTimeout => v1::DeleteReason::MediaTimeout,
        DeleteReason::SessionTimer => v1::DeleteReason::SessionTimer,
        // An operator's decision: the manager's reason for it.
        DeleteReason::Shutdown | DeleteReason::Admin => v1::DeleteReason::Admin,
    }
}

fn failed(status: &tonic::Status) -> MediaResult {
    let failure = match status.code() {
        tonic::Code::InvalidArgument => MediaFailure::Unacceptable,
        tonic::Code::Unavailable
        | tonic::Code::ResourceExhausted
        | tonic::Code::DeadlineExceeded
        | tonic::Code::Cancelled => MediaFailure::Unavailable,
        _ => MediaFailure::Internal,
    };
    MediaResult::Failed {
        failure,
        message: format!("{}: {}", status.code(), status.message()),
    }
}

async fn follow_playback(
    mut stream: tonic::Streaming<v1::PlayEvent>,
    request: MediaRequest,
    link: MediaLink,
    wake: Wake,
) {
    use v1::play_event::Event;
    let completed = loop {
        match stream.message().await {
            Ok(Some(event)) => match event.event {
                Some(Event::Completed(_)) => break true,
                Some(Event::Stopped(_)) => break false,
                Some(Event::Error(error)) => {
                    tracing::warn!(call_id = %request.call, file = %error.file, reason = %error.reason, "playback failed");
                    break false;
                }
                Some(Event::Started(_) | Event::Progress(_)) | None => {}
            },
            Ok(None) => break false,
            Err(status) => {
                tracing::debug!(call_id = %request.call, %status, "playback stream ended");
                break false;
            }
        }
    };
    finish(&link, &wake, &request, MediaResult::PlayEnded { completed });
}

/// Follows one manager's Watch stream for as long as the process runs,
/// reconnecting after errors.
async fn watch(
    (endpoint, id): (String, String),
    mut client: ManagerClient,
    link: MediaLink,
    wake: Wake,
) {
    use v1::manager_event::Event;
    loop {
        match client
            .watch(v1::WatchRequest {
                stats_interval_secs: 0,
            })
            .await
        {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                tracing::debug!(rtpmanager = %endpoint, "watching manager events");
                while let Ok(Some(event)) = stream.message().await {
                    let event = match event.event {
                        Some(Event::MediaTimeout(t)) => MediaEvent::Timeout {
                            call: MediaCallId(t.call_id),
                            leg: MediaLegId(t.leg_id),
                            idle_secs: t.idle_secs,
                            manager: id.clone(),
                        },
                        Some(Event::Dtmf(d)) => MediaEvent::Dtmf {
                            call: MediaCallId(d.call_id),
                            leg: MediaLegId(d.leg_id),
                            digit: d.digit,
                        },
                        _ => continue,
                    };
                    link.push_input(Instant::now(), LinkInput::Event(event));
                    wake();
                }
            }
            Err(status) => {
                tracing::debug!(rtpmanager = %endpoint, %status, "Watch refused; retrying");
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bridging_answer_is_one_request_to_a_manager_that_can_and_two_to_an_older_one() {
        let legs = (CallLeg::B, CallLeg::A);
        let (answer, then) = answer_requests("c1".to_owned(), legs, "v=0", true, true);
        assert!(answer.bridge, "asked in the Answer");
        assert_eq!(
            (answer.leg_id.as_str(), answer.peer_leg_id.as_str()),
            ("b", "a")
        );
        assert_eq!(then, None);

        let (answer, then) = answer_requests("c1".to_owned(), legs, "v=0", true, false);
        assert!(!answer.bridge, "an older manager would ignore it");
        let then = then.expect("a Bridge after the Answer");
        assert_eq!(
            (
                then.call_id.as_str(),
                then.leg_a.as_str(),
                then.leg_b.as_str()
            ),
            ("c1", "a", "b")
        );

        for can in [true, false] {
            let (answer, then) = answer_requests("c1".to_owned(), legs, "v=0", false, can);
            assert!(!answer.bridge && then.is_none(), "no bridge asked");
        }
    }

    #[test]
    fn both_legs_ask_the_manager_for_strict_source() {
        for (leg, label) in [(CallLeg::A, "caller"), (CallLeg::B, "callee")] {
            let o = options(leg, None);
            assert!(o.strict_source, "leg {leg} must lock its peer's source");
            assert_eq!(o.label, label);
            assert_eq!(o.interface, "", "the manager chooses");
        }
    }

    #[test]
    fn the_dial_actions_media_interface_goes_to_the_callees_leg_only() {
        assert_eq!(options(CallLeg::B, Some("private")).interface, "private");
        assert_eq!(
            options(CallLeg::A, Some("private")).interface,
            "",
            "the caller's leg is placed by the route to its SDP"
        );
    }

    #[test]
    fn grpc_errors_map_to_sip_outcomes() {
        let failure = |code| match failed(&tonic::Status::new(code, "x")) {
            MediaResult::Failed { failure, .. } => failure,
            other => panic!("not a failure: {other:?}"),
        };
        assert_eq!(
            failure(tonic::Code::InvalidArgument),
            MediaFailure::Unacceptable
        );
        assert_eq!(failure(tonic::Code::Unavailable), MediaFailure::Unavailable);
        assert_eq!(
            failure(tonic::Code::ResourceExhausted),
            MediaFailure::Unavailable
        );
        assert_eq!(
            failure(tonic::Code::FailedPrecondition),
            MediaFailure::Internal
        );
    }
}
