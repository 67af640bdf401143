//! `/api/v1/rtpmanagers`: the pool's members and the operator's drain.

use axum::extract::{Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::error::PathParam;
use super::{ApiState, AppError};
use crate::b2bua::MoveScope;
use crate::rtpmanager_moves::{Migrations, Progress};
use crate::rtpmanager_pool::{Health, ManagerPool, ManagerStatus};

/// The pool as a whole.
#[derive(Debug, Serialize)]
pub(super) struct Pool {
    /// Configured managers.
    total: usize,
    /// Managers answering health checks as serving.
    healthy: usize,
    /// Managers that would get a new call now.
    accepting: usize,
    /// Calls on all managers, as their last health answers said.
    active_calls: u64,
    members: Vec<Member>,
}

/// Why a manager gets no new calls, if it is drained.
#[derive(Debug, Serialize)]
pub(super) struct Drain {
    /// The manager's id.
    id: String,
    /// Drained by an operator through this API.
    operator: bool,
    /// Draining by its own report (its health answer).
    manager: bool,
    /// Either of the two.
    draining: bool,
    /// Calls it still carries.
    active_calls: u32,
    /// Its latest migration (`mode=migrate`), running or ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    migration: Option<Progress>,
}

#[derive(Debug, Serialize)]
pub(super) struct Member {
    id: String,
    endpoint: String,
    health: Health,
    /// Why it is in its state (the last probe's error, or "ok").
    detail: String,
    fast_path: String,
    fast_path_reason: String,
    instance_id: String,
    version: String,
    active_calls: u32,
    ports_free: u32,
    relay_load_pps: u32,
    relay_capacity_pps: u32,
    overloaded: bool,
    /// When it was declared down (Unix milliseconds), while it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    down_since_ms: Option<u64>,
    drain: DrainFlags,
    /// Whether a new call may go to it now.
    accepting: bool,
}

#[derive(Debug, Serialize)]
pub(super) struct DrainFlags {
    operator: bool,
    manager: bool,
}

fn drain_of(status: &ManagerStatus) -> Drain {
    let manager = status.health == Health::Draining;
    Drain {
        id: status.id.clone(),
        operator: status.operator_drain,
        manager,
        draining: manager || status.operator_drain,
        active_calls: status.active_calls,
        migration: None,
    }
}

/// `GET /api/v1/rtpmanagers`.
pub(super) async fn list(State(state): State<ApiState>) -> Json<Pool> {
    let statuses = state.pool.statuses();
    let candidates = state.pool.candidates();
    let members: Vec<Member> = statuses
        .into_iter()
        .enumerate()
        .map(|(index, s)| Member {
            drain: DrainFlags {
                operator: s.operator_drain,
                manager: s.health == Health::Draining,
            },
            accepting: candidates.contains(&index),
            id: s.id,
            endpoint: s.endpoint,
            health: s.health,
            detail: s.detail,
            fast_path: s.fast_path,
            fast_path_reason: s.fast_path_reason,
            instance_id: s.instance_id,
            version: s.version,
            active_calls: s.active_calls,
            ports_free: s.ports_free,
            relay_load_pps: s.relay_load_pps,
            relay_capacity_pps: s.relay_capacity_pps,
            overloaded: s.overloaded,
            down_since_ms: s.down_since_ms,
        })
        .collect();
    Json(Pool {
        total: members.len(),
        healthy: members
            .iter()
            .filter(|m| m.health == Health::Healthy)
            .count(),
        accepting: members.iter().filter(|m| m.accepting).count(),
        active_calls: members.iter().map(|m| u64::from(m.active_calls)).sum(),
        members,
    })
}

fn find(pool: &ManagerPool, id: &str) -> Result<usize, AppError> {
    pool.index_of(id)
        .ok_or_else(|| AppError::NotFound(format!("no RTP manager with id `{id}`")))
}

fn state_of(state: &ApiState, index: usize) -> Result<Json<Drain>, AppError> {
    let migration = state.migrations.as_ref().and_then(|m| m.progress(index));
    state
        .pool
        .statuses()
        .get(index)
        .map(|s| {
            Json(Drain {
                migration,
                ..drain_of(s)
            })
        })
        .ok_or_else(|| AppError::Internal(format!("manager index {index} vanished")))
}

/// How a drain treats the manager's calls.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum DrainMode {
    /// They go on until they end (and a running migration stops).
    #[default]
    Graceful,
    /// They move to other managers now, `batch` at a time.
    Migrate,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct DrainParams {
    #[serde(default)]
    mode: DrainMode,
    /// Calls moved at a time (`mode=migrate`); --rtpmanager-migrate-batch
    /// by default.
    batch: Option<usize>,
}

fn migrations(state: &ApiState) -> Result<&Migrations, AppError> {
    state.migrations.as_ref().ok_or_else(|| {
        AppError::Conflict("no B2BUA runs here: there are no calls to move".to_owned())
    })
}

/// `GET /api/v1/rtpmanagers/{id}/drain`.
pub(super) async fn drain_state(
    State(state): State<ApiState>,
    PathParam(id): PathParam,
) -> Result<Json<Drain>, AppError> {
    let index = find(&state.pool, &id)?;
    state_of(&state, index)
}

/// `POST /api/v1/rtpmanagers/{id}/drain`: no new calls. Graceful (the
/// default): its calls go on, and a running migration stops after its
/// round; draining a drained manager changes nothing and answers the same.
/// `mode=migrate`: its calls also move to other managers now, `batch` at
/// a time (progress in the answer's `migration` and on `GET`).
pub(super) async fn drain(
    State(state): State<ApiState>,
    PathParam(id): PathParam,
    Query(params): Query<DrainParams>,
) -> Result<Json<Drain>, AppError> {
    let index = find(&state.pool, &id)?;
    if params.batch == Some(0) {
        return Err(AppError::BadRequest("batch must be at least 1".to_owned()));
    }
    match params.mode {
        DrainMode::Graceful => {
            if let Some(migrations) = &state.migrations {
                migrations.cancel(index);
            }
            state.pool.set_operator_drain(index, true);
        }
        DrainMode::Migrate => {
            let migrations = migrations(&state)?;
            state.pool.set_operator_drain(index, true);
            let batch = params.batch.unwrap_or(migrations.default_batch());
            // The task runs on; its progress is read back below and on GET.
            drop(migrations.migrate_off(index, MoveScope::All, false, batch));
        }
    }
    state_of(&state, index)
}

/// `DELETE /api/v1/rtpmanagers/{id}/drain`: new calls again (unless the
/// manager drains itself or is down); a running migration stops after its
/// round.
pub(super) async fn undrain(
    State(state): State<ApiState>,
    PathParam(id): PathParam,
) -> Result<Json<Drain>, AppError> {
    let index = find(&state.pool, &id)?;
    if let Some(migrations) = &state.migrations {
        migrations.cancel(index);
    }
    state.pool.set_operator_drain(index, false);
    state_of(&state, index)
}
