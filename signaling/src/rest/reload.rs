//! `POST /api/v1/reload/{dialplan,users}`: what SIGHUP does, with an answer.

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use super::{ApiState, AppError};
use crate::reload::{ReloadError, Reloader};

/// A reload that took effect.
#[derive(Debug, Serialize)]
pub(super) struct Reloaded {
    reloaded: &'static str,
    /// Routes of the new dialplan, or users of the new users file.
    count: usize,
}

impl From<ReloadError> for AppError {
    fn from(error: ReloadError) -> Self {
        match error {
            ReloadError::NotConfigured(_) | ReloadError::Invalid(_) => {
                AppError::Conflict(error.to_string())
            }
            ReloadError::Busy => {
                AppError::Unavailable("the SIP core is not running or its queue is full; retry")
            }
        }
    }
}

fn reloader(state: &ApiState) -> Result<&Reloader, AppError> {
    state
        .reload
        .as_ref()
        .ok_or(AppError::Unavailable("no SIP server runs in this process"))
}

/// Reloads the dialplan: 409 with the file's error when it does not load
/// (the previous plan stays).
pub(super) async fn dialplan(State(state): State<ApiState>) -> Result<Json<Reloaded>, AppError> {
    let count = reloader(&state)?.dialplan()?;
    Ok(Json(Reloaded {
        reloaded: "dialplan",
        count,
    }))
}

/// Reloads the users file: 409 with the file's error when it does not load
/// (the previous users stay).
pub(super) async fn users(State(state): State<ApiState>) -> Result<Json<Reloaded>, AppError> {
    let count = reloader(&state)?.users().await?;
    Ok(Json(Reloaded {
        reloaded: "users",
        count,
    }))
}
