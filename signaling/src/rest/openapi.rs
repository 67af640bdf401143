//! `/api/v1/openapi.json`: the hand-written OpenAPI 3 document of the API.
//! A test checks that its paths and methods are exactly [`super::endpoints`].

use axum::http::header;
use axum::response::IntoResponse;

/// The document, as served.
pub(super) const DOCUMENT: &str = include_str!("openapi.json");

pub(super) async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}
