//! `/live/{view}`: a view's table re-rendered and pushed as a
//! Server-Sent Event whenever a backend changes.

use std::convert::Infallible;
use std::time::Duration;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use tokio_stream::wrappers::ReceiverStream;

use crate::session::Session;

use super::pages::{
    registrations_table, CallMedia, CallsTable, LiveQuery, ManagersTable, OverviewBody, Totals,
};
use super::UiState;

/// A view that `/live/{view}` streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LiveView {
    Overview,
    Calls,
    Registrations,
    Managers,
    Call,
}

impl LiveView {
    fn parse(name: &str) -> Option<LiveView> {
        match name {
            "overview" => Some(LiveView::Overview),
            "calls" => Some(LiveView::Calls),
            "registrations" => Some(LiveView::Registrations),
            "managers" => Some(LiveView::Managers),
            "call" => Some(LiveView::Call),
            _ => None,
        }
    }

    /// The SSE event name, which the page's `sse-swap` listens for.
    fn name(self) -> &'static str {
        match self {
            LiveView::Overview => "overview",
            LiveView::Calls => "calls",
            LiveView::Registrations => "registrations",
            LiveView::Managers => "managers",
            LiveView::Call => "call",
        }
    }

    /// The view's HTML now; `None` when there is nothing to tell.
    fn render(
        self,
        state: &UiState,
        csrf: &str,
        query: &LiveQuery,
    ) -> askama::Result<Option<String>> {
        let html = match self {
            LiveView::Overview => {
                let backends = state.backends.snapshot();
                OverviewBody {
                    totals: Totals::of(&backends),
                    backends,
                }
                .render()
            }
            LiveView::Calls => {
                let backends = state.backends.snapshot();
                CallsTable {
                    count: backends.iter().map(|b| b.calls.len()).sum(),
                    backends,
                    csrf: csrf.to_owned(),
                }
                .render()
            }
            LiveView::Registrations => registrations_table(state, &query.aor, csrf).render(),
            LiveView::Managers => ManagersTable {
                backends: state.backends.snapshot(),
                csrf: csrf.to_owned(),
            }
            .render(),
            LiveView::Call => match CallMedia::of(state, &query.backend, &query.id) {
                Some(media) => media.render(),
                None => return Ok(None),
            },
        };
        html.map(Some)
    }
}

/// Bursts of changes (an INVITE brings an event and a reread of the call)
/// are sent as one render at most this often.
const LIVE_COALESCE: Duration = Duration::from_millis(100);

/// `GET /live/{view}`: the view's table, re-rendered and sent as an SSE
/// event (named after the view) whenever a backend changes.
pub(super) async fn live(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
    Path(view): Path<String>,
    Query(query): Query<LiveQuery>,
) -> Response {
    let Some(view) = LiveView::parse(&view) else {
        return (StatusCode::NOT_FOUND, "no such live view").into_response();
    };
    let mut changes = state.backends.subscribe();
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(4);
    tokio::spawn(async move {
        let mut last = String::new();
        loop {
            let html = match view.render(&state, &session.csrf, &query) {
                Ok(Some(html)) => html,
                Ok(None) => last.clone(),
                Err(e) => {
                    tracing::error!(error = %e, view = view.name(), "live view failed to render");
                    return;
                }
            };
            if html != last {
                // SSE data may not hold carriage returns (axum splits lines).
                let event = SseEvent::default()
                    .event(view.name())
                    .data(html.replace('\r', ""));
                if sender.send(Ok(event)).await.is_err() {
                    return;
                }
                last = html;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = sender.closed() => return,
            }
            tokio::time::sleep(LIVE_COALESCE).await;
            changes.mark_unchanged();
        }
    });
    Sse::new(ReceiverStream::new(receiver))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
