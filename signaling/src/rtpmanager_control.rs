//! A manager's call requests (Offer, Answer, Bridge, Unbridge, Delete) on
//! its Control stream: one long-lived gRPC stream per manager on which each
//! request carries an id that its reply repeats, as rtpengine's ng protocol
//! carries cookies. A unary RPC costs an HTTP/2 stream of its own (headers
//! and trailers encoded and parsed, a task on each side); on the stream a
//! request is one length-prefixed message each way, and requests queued
//! together leave in one socket write.
//!
//! A manager whose Health does not say `control_stream` (an older one) is
//! sent unary requests, as is one that turns out not to serve the stream
//! after all (a rollback between two health checks). Each request has the
//! unary path's deadline; a stream that breaks fails the requests waiting
//! on it with its status, and the next request opens a new one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use switchboard_proto::v1;
use tokio::sync::{mpsc, oneshot};
use tonic::{Code, Status};

use crate::rtpmanager_client::{ManagerClient, REQUEST_TIMEOUT};

/// A request on the Control stream.
pub type Op = v1::control_request::Request;
/// Its answer.
pub type Reply = v1::control_reply::Reply;

/// One manager's call requests; clones share the stream.
#[derive(Clone, Debug)]
pub struct ControlChannel {
    client: ManagerClient,
    /// The manager's last Health said it serves the Control stream.
    streams: Arc<AtomicBool>,
    link: Arc<Mutex<Link>>,
}

/// The stream in use and the requests waiting for their replies.
#[derive(Debug, Default)]
struct Link {
    /// Counts the streams opened; a stream's reader fails only its own
    /// waiters when it ends.
    generation: u64,
    /// Never reused, so a late reply to a request that timed out cannot
    /// complete another.
    next_id: u64,
    /// Where requests go; None until the first request and after the
    /// stream ended.
    requests: Option<mpsc::UnboundedSender<v1::ControlRequest>>,
    waiting: HashMap<u64, Waiter>,
}

#[derive(Debug)]
struct Waiter {
    generation: u64,
    reply: oneshot::Sender<Result<Reply, Status>>,
}

impl ControlChannel {
    pub fn new(client: ManagerClient) -> ControlChannel {
        ControlChannel {
            client,
            streams: Arc::new(AtomicBool::new(false)),
            link: Arc::default(),
        }
    }

    /// The unary client the channel falls back to; it also serves
    /// requests the stream does not carry (Play, ListCalls, Health).
    pub fn client(&self) -> ManagerClient {
        self.client.clone()
    }

    /// Records whether the manager's last Health said it serves the
    /// Control stream.
    pub fn set_streams(&self, streams: bool) {
        self.streams.store(streams, Ordering::Relaxed);
    }

    /// Whether requests go on the Control stream.
    pub fn streams(&self) -> bool {
        self.streams.load(Ordering::Relaxed)
    }

    /// Sends `op` and waits for its reply: on the stream when the manager
    /// serves it, else as a unary request.
    pub async fn send(&self, op: Op) -> Result<Reply, Status> {
        if !self.streams() {
            return unary(self.client.clone(), op).await;
        }
        let (id, reply) = self.enqueue(op.clone());
        let result = match tokio::time::timeout(REQUEST_TIMEOUT, reply).await {
            Ok(Ok(result)) => result,
            // Every waiter is answered or failed before it is dropped.
            Ok(Err(_)) => Err(Status::internal("the Control stream dropped a request")),
            Err(_) => {
                lock(&self.link).waiting.remove(&id);
                Err(Status::deadline_exceeded(format!(
                    "no reply from the RTP manager within {} s",
                    REQUEST_TIMEOUT.as_secs()
                )))
            }
        };
        match result {
            // Opening the stream told us the manager does not serve it:
            // unary until its next Health says otherwise.
            Err(status) if status.code() == Code::Unimplemented => {
                self.set_streams(false);
                unary(self.client.clone(), op).await
            }
            result => result,
        }
    }

    /// Offer: the rewritten offer.
    pub async fn offer(&self, request: v1::OfferRequest) -> Result<v1::SdpResponse, Status> {
        self.sdp(Op::Offer(request)).await
    }

    /// Answer: the rewritten answer.
    pub async fn answer(&self, request: v1::AnswerRequest) -> Result<v1::SdpResponse, Status> {
        self.sdp(Op::Answer(request)).await
    }

    async fn sdp(&self, op: Op) -> Result<v1::SdpResponse, Status> {
        match self.send(op).await? {
            Reply::Sdp(sdp) => Ok(sdp),
            other => Err(mismatch("an SDP", &other)),
        }
    }

    /// Bridge.
    pub async fn bridge(&self, request: v1::BridgeRequest) -> Result<(), Status> {
        match self.send(Op::Bridge(request)).await? {
            Reply::Bridged(_) => Ok(()),
            other => Err(mismatch("a bridge", &other)),
        }
    }

    /// Delete: the deleted legs' figures.
    pub async fn delete(&self, request: v1::DeleteRequest) -> Result<v1::DeleteResponse, Status> {
        match self.send(Op::Delete(request)).await? {
            Reply::Deleted(deleted) => Ok(deleted),
            other => Err(mismatch("a delete", &other)),
        }
    }

    /// Queues `op` on the current stream, opening one if there is none.
    fn enqueue(&self, op: Op) -> (u64, oneshot::Receiver<Result<Reply, Status>>) {
        let (reply, replied) = oneshot::channel();
        let mut link = lock(&self.link);
        let requests = match &link.requests {
            Some(requests) => requests.clone(),
            None => self.open(&mut link),
        };
        link.next_id += 1;
        let id = link.next_id;
        let generation = link.generation;
        link.waiting.insert(id, Waiter { generation, reply });
        // A send that fails finds the stream ending: its reader has not
        // failed its waiters yet (it clears `requests` when it does, under
        // this lock), so it fails this one with them.
        let _ = requests.send(v1::ControlRequest {
            id,
            request: Some(op),
        });
        (id, replied)
    }

    /// Opens a stream: requests queue in its channel while it connects.
    fn open(&self, link: &mut Link) -> mpsc::UnboundedSender<v1::ControlRequest> {
        link.generation += 1;
        let (requests, queued) = mpsc::unbounded_channel();
        link.requests = Some(requests.clone());
        tokio::spawn(read_replies(
            self.client.clone(),
            Arc::clone(&self.link),
            link.generation,
            queued,
        ));
        requests
    }
}

/// Runs one stream: hands each reply to its waiter and, when the stream
/// ends, fails the waiters still on it with the reason.
async fn read_replies(
    mut client: ManagerClient,
    link: Arc<Mutex<Link>>,
    generation: u64,
    queued: mpsc::UnboundedReceiver<v1::ControlRequest>,
) {
    let requests = tokio_stream::wrappers::UnboundedReceiverStream::new(queued);
    let ended = match client.control(requests).await {
        Ok(response) => {
            let mut replies = response.into_inner();
            loop {
                match replies.message().await {
                    Ok(Some(reply)) => deliver(&link, reply),
                    Ok(None) => {
                        break Status::unavailable("the RTP manager ended the Control stream")
                    }
                    Err(status) => break status,
                }
            }
        }
        Err(status) => status,
    };
    // A connection that broke under the stream reads as UNKNOWN: to the
    // requests on it, the manager became unreachable, as a unary request
    // to a dead manager says.
    let ended = match ended.code() {
        Code::Unknown => Status::unavailable(format!(
            "the Control stream broke: {}",
            crate::rtpmanager_client::describe(&ended)
        )),
        _ => ended,
    };
    tracing::debug!(%ended, generation, "Control stream ended");
    let stranded: Vec<Waiter> = {
        let mut link = lock(&link);
        if link.generation == generation {
            link.requests = None;
        }
        link.waiting
            .extract_if(|_, waiter| waiter.generation == generation)
            .map(|(_, waiter)| waiter)
            .collect()
    };
    for waiter in stranded {
        let _ = waiter.reply.send(Err(ended.clone()));
    }
}

fn deliver(link: &Mutex<Link>, reply: v1::ControlReply) {
    // None: it timed out meanwhile.
    let Some(waiter) = lock(link).waiting.remove(&reply.id) else {
        return;
    };
    let result = match reply.reply {
        Some(Reply::Error(error)) => Err(Status::new(
            match Code::from_i32(error.code) {
                Code::Ok => Code::Unknown,
                code => code,
            },
            error.message,
        )),
        Some(reply) => Ok(reply),
        None => Err(Status::internal("the RTP manager's reply carries nothing")),
    };
    let _ = waiter.reply.send(result);
}

/// `op` as its own unary RPC, for a manager without the Control stream.
async fn unary(mut client: ManagerClient, op: Op) -> Result<Reply, Status> {
    Ok(match op {
        Op::Offer(r) => Reply::Sdp(client.offer(r).await?.into_inner()),
        Op::Answer(r) => Reply::Sdp(client.answer(r).await?.into_inner()),
        Op::Bridge(r) => Reply::Bridged(client.bridge(r).await?.into_inner()),
        Op::Unbridge(r) => Reply::Bridged(client.unbridge(r).await?.into_inner()),
        Op::Delete(r) => Reply::Deleted(client.delete(r).await?.into_inner()),
    })
}

fn mismatch(wanted: &str, got: &Reply) -> Status {
    let got = match got {
        Reply::Sdp(_) => "an SDP",
        Reply::Bridged(_) => "a bridge",
        Reply::Deleted(_) => "a delete",
        Reply::Error(_) => "an error",
    };
    Status::internal(format!(
        "the RTP manager answered {got} where {wanted} was due"
    ))
}

fn lock(link: &Mutex<Link>) -> MutexGuard<'_, Link> {
    link.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::rtpmanager_client::ClientAccess;

    fn offer(call: &str) -> Op {
        Op::Offer(v1::OfferRequest {
            call_id: call.to_owned(),
            leg_id: "a".to_owned(),
            peer_leg_id: "b".to_owned(),
            sdp: "v=0\r\n".to_owned(),
            ..Default::default()
        })
    }

    /// A gRPC server that knows no method: it answers every request
    /// UNIMPLEMENTED, as a manager older than the Control stream answers
    /// it, and records the paths asked for.
    async fn unimplemented_everywhere() -> (String, Arc<Mutex<Vec<String>>>) {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let router = axum::Router::new().fallback({
            let asked = Arc::clone(&asked);
            move |uri: axum::http::Uri| {
                asked
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(uri.path().to_owned());
                async {
                    [
                        ("content-type", "application/grpc"),
                        ("grpc-status", "12"),
                        ("grpc-message", "unknown method"),
                    ]
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_routes(tonic::service::Routes::from(router))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (format!("http://{address}"), asked)
    }

    #[tokio::test]
    async fn a_manager_that_does_not_serve_the_stream_gets_unary_requests_from_then_on() {
        let (uri, asked) = unimplemented_everywhere().await;
        let channel = ControlChannel::new(ClientAccess::default().connect_lazy(&uri).expect("uri"));
        channel.set_streams(true);
        let first = channel.send(offer("c1")).await.expect_err("nothing served");
        assert_eq!(first.code(), Code::Unimplemented, "{first:?}");
        assert!(!channel.streams(), "the stream is not tried again");
        let second = channel.send(offer("c2")).await.expect_err("nothing served");
        assert_eq!(second.code(), Code::Unimplemented, "{second:?}");
        let asked = asked.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let service = "/switchboard.rtpmanager.v1.RtpManager";
        assert_eq!(
            asked,
            [
                format!("{service}/Control"),
                format!("{service}/Offer"),
                format!("{service}/Offer")
            ],
            "the first request went unary after the stream was refused"
        );
    }

    #[tokio::test]
    async fn a_manager_never_reached_fails_the_request_and_the_next_one_tries_again() {
        // A port nothing listens on: each request's stream fails to connect.
        let port = {
            let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            socket.local_addr().expect("address").port()
        };
        let uri = format!("http://127.0.0.1:{port}");
        let channel = ControlChannel::new(ClientAccess::default().connect_lazy(&uri).expect("uri"));
        channel.set_streams(true);
        for call in ["c1", "c2"] {
            let started = std::time::Instant::now();
            let failed = channel.send(offer(call)).await.expect_err("refused");
            assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "failed at once, not at the deadline: {:?}",
                started.elapsed()
            );
        }
        let link = lock(&channel.link);
        assert_eq!(link.generation, 2, "one stream tried per request");
        assert!(link.waiting.is_empty(), "no waiter left behind");
        assert!(link.requests.is_none(), "the next request opens a stream");
    }
}
