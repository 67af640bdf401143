//! `/api/v1/registrations`: the registrar's bindings, and unregistering an
//! address-of-record (stored, so a restart does not bring it back).

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use super::error::PathParam;
use super::{ApiState, AppError};
use crate::uas::driver::CoreHandle;
use crate::uas::{RegistrationError, RegistrationView};

const CORE_UNAVAILABLE: &str = "the SIP core is not running or its queue is full; retry";

fn core(state: &ApiState) -> Result<&CoreHandle, AppError> {
    state
        .sip
        .as_ref()
        .ok_or(AppError::Unavailable(CORE_UNAVAILABLE))
}

impl From<RegistrationError> for AppError {
    fn from(error: RegistrationError) -> Self {
        match error {
            RegistrationError::InvalidAor(_) => AppError::BadRequest(error.to_string()),
            RegistrationError::NotFound(_) => AppError::NotFound(error.to_string()),
            RegistrationError::NotStored => AppError::Internal(error.to_string()),
            RegistrationError::Busy => {
                AppError::Unavailable("the binding store is busy; try again")
            }
        }
    }
}

/// Every unexpired binding.
pub(super) async fn list(
    State(state): State<ApiState>,
) -> Result<Json<Vec<RegistrationView>>, AppError> {
    core(&state)?
        .registrations()
        .await
        .map(Json)
        .ok_or(AppError::Unavailable(CORE_UNAVAILABLE))
}

/// The bindings of one address-of-record.
#[derive(Debug, Serialize)]
pub(super) struct AorBindings {
    aor: String,
    bindings: Vec<RegistrationView>,
}

/// `GET /api/v1/registrations/{aor}`: 404 when it has no binding.
pub(super) async fn one(
    State(state): State<ApiState>,
    PathParam(aor): PathParam,
) -> Result<Json<AorBindings>, AppError> {
    let bindings = core(&state)?
        .registrations_of(aor)
        .await
        .ok_or(AppError::Unavailable(CORE_UNAVAILABLE))??;
    Ok(Json(AorBindings {
        aor: bindings.first().map(|b| b.aor.clone()).unwrap_or_default(),
        bindings,
    }))
}

/// What an unregister removed.
#[derive(Debug, Serialize)]
pub(super) struct Removed {
    aor: String,
    removed: usize,
}

/// `DELETE /api/v1/registrations/{aor}`: removes every binding, durably.
pub(super) async fn remove(
    State(state): State<ApiState>,
    PathParam(aor): PathParam,
) -> Result<Json<Removed>, AppError> {
    let (aor, removed) = core(&state)?
        .unregister(aor)
        .await
        .ok_or(AppError::Unavailable(CORE_UNAVAILABLE))??;
    Ok(Json(Removed { aor, removed }))
}
