//! The API's one error type: a JSON body `{"error": code, "detail": text}`
//! with the status that fits. Internal failures are logged here and
//! answered with a fixed text, so no internal message reaches a client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppError {
    /// 400: the request itself is wrong (a path parameter that cannot be valid).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 401: no token, not a bearer token, or a token that is not ours.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// 404: the thing named does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// 404: no endpoint has this path.
    #[error("no such endpoint")]
    NoRoute,
    /// 405: the path exists, not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: the request contradicts the current state.
    #[error("conflict: {0}")]
    Conflict(String),
    /// 503: a part of the server the request needs is not running or busy.
    #[error("unavailable: {0}")]
    Unavailable(&'static str),
    /// 500: something failed inside; the cause is logged, not returned.
    #[error("internal error: {0}")]
    Internal(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    detail: String,
}

impl AppError {
    /// The status and the body's stable `error` code.
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            AppError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            AppError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AppError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AppError::NoRoute => (StatusCode::NOT_FOUND, "no_such_endpoint"),
            AppError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            AppError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            AppError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            AppError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let detail = match &self {
            AppError::BadRequest(detail)
            | AppError::NotFound(detail)
            | AppError::Conflict(detail) => detail.clone(),
            AppError::Unavailable(detail) => (*detail).to_owned(),
            AppError::Unauthorized => {
                "send `Authorization: Bearer <token>` with a token of --api-token-file".to_owned()
            }
            AppError::NoRoute => "no such endpoint; see /api/v1/openapi.json".to_owned(),
            AppError::MethodNotAllowed => {
                "this endpoint does not take that method; see /api/v1/openapi.json".to_owned()
            }
            AppError::Internal(cause) => {
                tracing::error!(%cause, "REST request failed inside the server");
                "the server failed to handle the request; its log says why".to_owned()
            }
        };
        let mut response = (
            status,
            Json(ErrorBody {
                error: code,
                detail,
            }),
        )
            .into_response();
        if self == AppError::Unauthorized {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"switchboard\""),
            );
        }
        response
    }
}

/// A single path parameter whose rejection (say, percent-encoding that is
/// not UTF-8) is an [`AppError`] like every other error, not axum's text.
#[derive(Debug)]
pub(super) struct PathParam(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathParam {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| PathParam(value))
            .map_err(|rejection| AppError::BadRequest(rejection.body_text()))
    }
}
