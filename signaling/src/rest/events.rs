//! `/api/v1/events`: the [`EventBus`](crate::events::EventBus) as
//! Server-Sent Events.
//!
//! Each client reads the bus's ring at its own pace; the ring is its
//! bounded buffer. A client that falls further behind than the ring holds
//! gets `event: lagged` with `{"missed": N}` and its stream ends (it
//! reconnects and rereads the lists), so a slow client costs the SIP core
//! nothing and the server no memory beyond the ring. A comment line every
//! 15 s keeps idle connections (and proxies) from closing.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as Frame, KeepAlive, Sse};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::Stream;

use super::ApiState;
use crate::events::Event;
use crate::metrics::{Metrics, SseClient};

/// Interval of the keep-alive comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `GET /api/v1/events`.
pub(super) async fn stream(
    State(state): State<ApiState>,
) -> Sse<impl Stream<Item = Result<Frame, Infallible>>> {
    let events = ClientStream {
        inner: Some(BroadcastStream::new(state.events.subscribe())),
        metrics: state.metrics.clone(),
        _client: state.metrics.sse_client(),
    };
    Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
}

/// One client's events: the bus's, then `lagged` and the end if it fell
/// behind.
struct ClientStream {
    /// `None` once the client was told it lagged.
    inner: Option<BroadcastStream<Arc<Event>>>,
    metrics: Metrics,
    _client: SseClient,
}

impl Stream for ClientStream {
    type Item = Result<Frame, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(Pin::new(inner).poll_next(cx)) {
            None => Poll::Ready(None),
            Some(Ok(event)) => Poll::Ready(Some(Ok(frame(&event)))),
            Some(Err(BroadcastStreamRecvError::Lagged(missed))) => {
                // Dropping the receiver frees its place in the ring now.
                self.inner = None;
                self.metrics.sse_dropped();
                tracing::info!(missed, "event stream client fell behind: dropped");
                Poll::Ready(Some(Ok(lagged(missed))))
            }
        }
    }
}

/// An event as SSE: its type as the event name, its JSON as the data.
pub fn frame(event: &Event) -> Frame {
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".to_owned());
    Frame::default().event(event.kind()).data(data)
}

/// The last frame a lagging client gets.
pub fn lagged(missed: u64) -> Frame {
    Frame::default()
        .event("lagged")
        .data(format!("{{\"missed\":{missed}}}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::events::EventBus;
    use crate::rest::{app, ApiAccess};
    use crate::rtpmanager_pool::ManagerPool;

    fn router(events: EventBus, metrics: Metrics) -> axum::Router {
        app(ApiState {
            pool: ManagerPool::new(&[]).expect("pool"),
            sip: None,
            transport: None,
            rest_refused: None,
            access: Arc::new(ApiAccess::open()),
            calls: None,
            events,
            metrics,
        })
    }

    async fn open(router: &axum::Router) -> Body {
        let request = Request::builder()
            .uri("/api/v1/events")
            .body(Body::empty())
            .expect("request");
        let response = router.clone().oneshot(request).await.expect("answer");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers().get("content-type").map(|v| v.as_bytes()),
            Some(&b"text/event-stream"[..])
        );
        response.into_body()
    }

    /// The next frame's text, `None` at the end of the stream.
    async fn next_frame(body: &mut Body) -> Option<String> {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .expect("a frame within 5 s")?
                .expect("no body error");
            if let Ok(data) = frame.into_data() {
                return Some(String::from_utf8_lossy(&data).into_owned());
            }
        }
    }

    fn added(n: u64) -> Event {
        Event::RegistrationAdded {
            aor: format!("{n}@example.com"),
            contact: format!("sip:{n}@192.0.2.1"),
            expires_in_secs: 600,
        }
    }

    #[tokio::test]
    async fn a_client_gets_each_event_named_by_its_type_with_its_json() {
        let bus = EventBus::with_capacity(8);
        let router = router(bus.clone(), Metrics::default());
        let mut body = open(&router).await;
        bus.publish(added(1001));
        bus.publish(Event::ManagerDrain {
            id: "edge-a".to_owned(),
            draining: true,
        });
        assert_eq!(
            next_frame(&mut body).await.as_deref(),
            Some(
                "event: registration_added\ndata: {\"type\":\"registration_added\",\"aor\":\"1001@example.com\",\"contact\":\"sip:1001@192.0.2.1\",\"expires_in_secs\":600}\n\n"
            )
        );
        assert_eq!(
            next_frame(&mut body).await.as_deref(),
            Some("event: manager_drain\ndata: {\"type\":\"manager_drain\",\"id\":\"edge-a\",\"draining\":true}\n\n")
        );
    }

    #[tokio::test]
    async fn a_client_that_falls_behind_gets_lagged_with_the_count_then_the_end() {
        let bus = EventBus::with_capacity(4);
        let metrics = Metrics::default();
        let router = router(bus.clone(), metrics.clone());
        let mut slow = open(&router).await;
        let mut keeping_up = open(&router).await;
        for n in 0..10 {
            bus.publish(added(n));
            // The other client reads as events come: it loses nothing.
            let frame = next_frame(&mut keeping_up).await.expect("a frame");
            assert!(frame.contains(&format!("\"{n}@example.com\"")), "{frame}");
        }
        assert_eq!(
            next_frame(&mut slow).await.as_deref(),
            Some("event: lagged\ndata: {\"missed\":6}\n\n")
        );
        assert_eq!(next_frame(&mut slow).await, None, "the stream ends");
        drop(slow);
        let mut text = String::new();
        let registry = {
            let mut registry = prometheus_client::registry::Registry::default();
            metrics.register(&mut registry);
            registry
        };
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains("switchboard_events_clients_dropped_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("switchboard_events_clients 1\n"),
            "one client left: {text}"
        );
        bus.publish(added(99));
        assert!(next_frame(&mut keeping_up)
            .await
            .is_some_and(|f| f.contains("\"99@example.com\"")));
    }
}
