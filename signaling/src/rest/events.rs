//! `/api/v1/events`: the [`EventBus`](crate::events::EventBus) as
//! Server-Sent Events.
//!
//! Each client reads the bus's ring at its own pace; the ring is its
//! bounded buffer. A client that falls further behind than the ring holds
//! gets `event: lagged` with `{"missed": N}` and its stream ends (it
//! reconnects and rereads the lists), so a slow client costs the SIP core
//! nothing and the server no memory beyond the ring. A comment line every
//! 15 s keeps idle connections (and proxies) from closing.
//!
//! Events waiting when a client's connection is ready go out in one write
//! (up to [`BATCH`] octets), not one write each: under load ten clients
//! would otherwise cost ten system calls per event.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::broadcast::Receiver;
use tokio::time::Sleep;
use tokio_stream::Stream;

use super::ApiState;
use crate::events::Published;
use crate::metrics::{Metrics, SseClient};

/// Interval of the keep-alive comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Octets of frames gathered into one write at most.
pub const BATCH: usize = 64 * 1024;

/// The keep-alive comment.
const KEEP_ALIVE_FRAME: &str = ": keep-alive\n\n";

/// `GET /api/v1/events`.
pub(super) async fn stream(State(state): State<ApiState>) -> Response {
    let events = ClientStream::new(state.events.subscribe(), &state.metrics, KEEP_ALIVE);
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(events),
    )
        .into_response()
}

/// How long a client's first event waits for others before they leave in
/// one write. A dashboard does not see 50 ms; the server does: under load a
/// client costs a wake-up and a write per linger instead of per event, and
/// while it lingers it is not waiting on the bus, so publishing (on the SIP
/// core's thread) does not wake it at all.
pub const LINGER: Duration = Duration::from_millis(50);

/// A wait for the next event that owns the receiver and gives it back.
type Recv = Pin<
    Box<dyn Future<Output = (Result<Arc<Published>, RecvError>, Receiver<Arc<Published>>)> + Send>,
>;

fn recv(mut receiver: Receiver<Arc<Published>>) -> Recv {
    Box::pin(async move {
        let result = receiver.recv().await;
        if result.is_ok() {
            tokio::time::sleep(LINGER).await;
        }
        (result, receiver)
    })
}

/// One client's events: the bus's, then `lagged` and the end if it fell
/// behind.
struct ClientStream {
    /// `None` once the stream ended (lagged, or the bus closed).
    next: Option<Recv>,
    keep_alive: Pin<Box<Sleep>>,
    interval: Duration,
    metrics: Metrics,
    _client: SseClient,
}

impl ClientStream {
    fn new(
        receiver: Receiver<Arc<Published>>,
        metrics: &Metrics,
        interval: Duration,
    ) -> ClientStream {
        ClientStream {
            next: Some(recv(receiver)),
            keep_alive: Box::pin(tokio::time::sleep(interval)),
            interval,
            metrics: metrics.clone(),
            _client: metrics.sse_client(),
        }
    }

    /// Appends `first` and every event already waiting to one chunk;
    /// returns whether the stream goes on (and the receiver if so).
    fn gather(
        &mut self,
        first: Result<Arc<Published>, RecvError>,
        mut receiver: Receiver<Arc<Published>>,
    ) -> (String, Option<Receiver<Arc<Published>>>) {
        let mut text = String::new();
        let mut next = first;
        loop {
            match next {
                Ok(event) => text.push_str(event.frame()),
                Err(RecvError::Lagged(missed)) => {
                    self.metrics.sse_dropped();
                    tracing::info!(missed, "event stream client fell behind: dropped");
                    write_lagged(&mut text, missed);
                    // Dropping the receiver frees its place in the ring now.
                    return (text, None);
                }
                Err(RecvError::Closed) => return (text, None),
            }
            if text.len() >= BATCH {
                return (text, Some(receiver));
            }
            next = match receiver.try_recv() {
                Ok(event) => Ok(event),
                Err(TryRecvError::Empty) => return (text, Some(receiver)),
                Err(TryRecvError::Lagged(missed)) => Err(RecvError::Lagged(missed)),
                Err(TryRecvError::Closed) => Err(RecvError::Closed),
            };
        }
    }
}

impl Stream for ClientStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(next) = self.next.as_mut() else {
            return Poll::Ready(None);
        };
        match next.as_mut().poll(cx) {
            Poll::Ready((first, receiver)) => {
                let (text, receiver) = self.gather(first, receiver);
                self.next = receiver.map(recv);
                let deadline = tokio::time::Instant::now() + self.interval;
                self.keep_alive.as_mut().reset(deadline);
                if text.is_empty() {
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Ok(Bytes::from(text))))
            }
            Poll::Pending => match self.keep_alive.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    let deadline = tokio::time::Instant::now() + self.interval;
                    self.keep_alive.as_mut().reset(deadline);
                    Poll::Ready(Some(Ok(Bytes::from_static(KEEP_ALIVE_FRAME.as_bytes()))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// The last frame a lagging client gets.
pub fn write_lagged(out: &mut String, missed: u64) {
    let _ = write!(out, "event: lagged\ndata: {{\"missed\":{missed}}}\n\n");
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::events::Event;

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
            migrations: None,
            pool: ManagerPool::new(&[]).expect("pool"),
            sip: None,
            transport: None,
            rest_refused: None,
            access: Arc::new(ApiAccess::open()),
            calls: None,
            events,
            metrics,
            reload: None,
            location: None,
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

    /// What the stream sends until `done` holds for it; `true` with it
    /// when the stream ended.
    async fn read_until(body: &mut Body, done: impl Fn(&str) -> bool) -> (String, bool) {
        let mut text = String::new();
        while !done(&text) {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .unwrap_or_else(|_| panic!("nothing more within 5 s after {text:?}"));
            let Some(frame) = frame else {
                return (text, true);
            };
            if let Ok(data) = frame.expect("no body error").into_data() {
                text.push_str(&String::from_utf8_lossy(&data));
            }
        }
        (text, false)
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
        let (text, ended) = read_until(&mut body, |t| t.matches("\n\n").count() == 2).await;
        assert!(!ended);
        assert_eq!(
            text,
            "event: registration_added\ndata: {\"type\":\"registration_added\",\"aor\":\"1001@example.com\",\"contact\":\"sip:1001@192.0.2.1\",\"expires_in_secs\":600}\n\n\
             event: manager_drain\ndata: {\"type\":\"manager_drain\",\"id\":\"edge-a\",\"draining\":true}\n\n"
        );
    }

    #[tokio::test]
    async fn an_idle_stream_sends_a_keep_alive_comment_each_interval() {
        use tokio_stream::StreamExt;
        let bus = EventBus::new();
        let mut stream = ClientStream::new(
            bus.subscribe(),
            &Metrics::default(),
            Duration::from_millis(50),
        );
        let started = std::time::Instant::now();
        for _ in 0..2 {
            let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .expect("a chunk within 5 s")
                .expect("not the end")
                .expect("infallible");
            assert_eq!(&chunk[..], b": keep-alive\n\n");
        }
        assert!(started.elapsed() >= Duration::from_millis(100));
        // The event comes next, or after a keep-alive that was due as it
        // was published (the interval is short; a loaded machine is slow).
        bus.publish(added(7));
        let mut chunk = stream.next().await.expect("a chunk").expect("infallible");
        if &chunk[..] == b": keep-alive\n\n" {
            chunk = stream.next().await.expect("a chunk").expect("infallible");
        }
        assert!(chunk.starts_with(b"event: registration_added\n"));
    }

    #[tokio::test]
    async fn events_waiting_together_leave_in_one_chunk() {
        let bus = EventBus::with_capacity(64);
        let router = router(bus.clone(), Metrics::default());
        let mut body = open(&router).await;
        for n in 0..20 {
            bus.publish(added(n));
        }
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("a chunk")
            .expect("not the end")
            .expect("no error")
            .into_data()
            .expect("data");
        let text = String::from_utf8_lossy(&chunk);
        assert_eq!(
            text.matches("event: registration_added\n").count(),
            20,
            "{text}"
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
            let needle = format!("\"{n}@example.com\"");
            let (text, _) = read_until(&mut keeping_up, |t| t.contains(&needle)).await;
            assert_eq!(
                text.matches("event: registration_added").count(),
                1,
                "{text}"
            );
        }
        let (text, ended) = read_until(&mut slow, |_| false).await;
        assert!(ended, "the stream ends");
        assert_eq!(text, "event: lagged\ndata: {\"missed\":6}\n\n");
        drop(slow);
        let mut exposition = String::new();
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        prometheus_client::encoding::prometheus_text::encode(&mut exposition, &registry)
            .expect("encode");
        assert!(
            exposition.contains("switchboard_events_clients_dropped_total 1\n"),
            "{exposition}"
        );
        assert!(
            exposition.contains("switchboard_events_clients 1\n"),
            "one client left: {exposition}"
        );
        bus.publish(added(99));
        let (text, _) = read_until(&mut keeping_up, |t| t.contains("\"99@example.com\"")).await;
        assert!(text.starts_with("event: registration_added"), "{text}");
    }
}
