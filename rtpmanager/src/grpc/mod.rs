//! The gRPC edge: turns control-protocol requests into calls on the
//! [`Driver`] (which runs them through the engine), the answers and events
//! back into protocol messages, and errors into `tonic::Status` codes.
//! Nothing else lives here.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use switchboard_proto::v1;
use switchboard_proto::v1::rtp_manager_server::RtpManager;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

mod convert;

pub use convert::mode_proto;
use convert::{event_proto, leg_info, media_interfaces, options_of, play_stream, stats_proto};

use crate::access::TokenCheck;
use crate::driver::{Driver, DriverError, DtmfRequest};
use crate::engine::SdpOut;
use crate::playback::PlaybackId;
use crate::session::{OfferInput, SessionError};

/// Codecs the manager can terminate (playback, DTMF) or transcode.
pub const CODECS: [&str; 3] = ["PCMU/8000", "PCMA/8000", "telephone-event/8000"];

/// Facts about this manager that Info and Health report.
#[derive(Debug)]
pub struct ManagerInfo {
    pub instance_id: String,
    pub started_at_ms: u64,
    pub advertised: Vec<IpAddr>,
    pub rtp_port_min: u16,
    pub rtp_port_max: u16,
}

/// Implementation of the `RtpManager` gRPC service.
#[derive(Debug, Clone)]
pub struct ControlService {
    driver: Driver,
    info: Arc<ManagerInfo>,
    /// The bearer tokens in force, when the API wants one: a Control
    /// stream checks its opener's token again before each request.
    tokens: Option<TokenCheck>,
    /// Set at shutdown: Control streams stop reading requests, answer
    /// those they read and end, so the server need not wait out its grace
    /// period for a client that keeps its stream open.
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
}

/// A Control stream's requests answered at once: a Delete waits for the
/// relay's figures while later requests go on; beyond this many, the
/// stream stops reading until one is answered (HTTP/2 flow control then
/// holds the client back).
const CONTROL_IN_FLIGHT: usize = 256;

fn status_of(e: DriverError) -> Status {
    let message = e.to_string();
    match e {
        DriverError::Session(e) => match e {
            SessionError::InvalidArgument(_) | SessionError::Sdp(_) => {
                Status::invalid_argument(message)
            }
            SessionError::NotFound(_) => Status::not_found(message),
            SessionError::FailedPrecondition(_) => Status::failed_precondition(message),
            SessionError::Exhausted(_) => Status::resource_exhausted(message),
            SessionError::Draining => Status::unavailable(message),
        },
        DriverError::RelayStopped | DriverError::Internal(_) => Status::internal(message),
        DriverError::InvalidArgument(_) => Status::invalid_argument(message),
        DriverError::FailedPrecondition(_) => Status::failed_precondition(message),
        DriverError::NotFound(_) => Status::not_found(message),
        DriverError::Aborted(_) => Status::aborted(message),
    }
}

fn sdp_response((out, offloaded): (SdpOut, bool)) -> v1::SdpResponse {
    v1::SdpResponse {
        sdp: out.sdp,
        leg: Some(leg_info(&out.leg, offloaded)),
    }
}

impl ControlService {
    pub fn new(info: ManagerInfo, driver: Driver) -> Self {
        ControlService {
            driver,
            info: Arc::new(info),
            tokens: None,
            stopping: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }

    /// The service of an API that wants a bearer token (the interceptor
    /// checks each request and each stream's opening).
    pub fn with_tokens(self, tokens: Option<TokenCheck>) -> Self {
        ControlService { tokens, ..self }
    }

    /// The driver the service converts for.
    pub fn driver(&self) -> &Driver {
        &self.driver
    }

    /// The manager is shutting down: Control streams end once they have
    /// answered what they read.
    pub fn stop_streams(&self) {
        self.stopping.send_replace(true);
    }

    fn offer_sdp(&self, r: &v1::OfferRequest) -> Result<v1::SdpResponse, Status> {
        let input = OfferInput {
            call: &r.call_id,
            leg: &r.leg_id,
            peer: &r.peer_leg_id,
            sdp: &r.sdp,
            options: options_of(r.options.clone()),
            peer_options: options_of(r.peer_options.clone()),
        };
        self.driver
            .offer(input)
            .map(sdp_response)
            .map_err(status_of)
    }

    fn answer_sdp(&self, r: &v1::AnswerRequest) -> Result<v1::SdpResponse, Status> {
        let answered = self
            .driver
            .answer(&r.call_id, &r.leg_id, &r.peer_leg_id, &r.sdp)
            .map_err(status_of)?;
        if r.bridge {
            self.driver
                .bridge(&r.call_id, &r.leg_id, &r.peer_leg_id, true)
                .map_err(status_of)?;
        }
        Ok(sdp_response(answered))
    }

    fn set_bridge(&self, r: &v1::BridgeRequest, on: bool) -> Result<v1::BridgeResponse, Status> {
        self.driver
            .bridge(&r.call_id, &r.leg_a, &r.leg_b, on)
            .map_err(status_of)?;
        Ok(v1::BridgeResponse {})
    }

    async fn delete_legs(&self, r: &v1::DeleteRequest) -> Result<v1::DeleteResponse, Status> {
        let legs = self
            .driver
            .delete(&r.call_id, &r.leg_id)
            .await
            .map_err(status_of)?;
        tracing::debug!(call = %r.call_id, leg = %r.leg_id, reason = ?r.reason(), detail = %r.detail, "deleted");
        Ok(v1::DeleteResponse {
            legs: legs.into_iter().map(stats_proto).collect(),
        })
    }

    /// One request read from a Control stream, answered as its unary RPC
    /// would be. An error ends the stream: the client's stream broke, or
    /// the token it was opened with is no longer accepted.
    async fn control_one(
        &self,
        request: Result<v1::ControlRequest, Status>,
        authorization: Option<&[u8]>,
        peer: Option<SocketAddr>,
    ) -> Result<v1::ControlReply, Status> {
        use v1::control_reply::Reply;
        use v1::control_request::Request as Op;
        let request = request?;
        if let Some(tokens) = &self.tokens {
            tokens.verify(authorization, peer)?;
        }
        let reply = match &request.request {
            Some(Op::Offer(r)) => self.offer_sdp(r).map(Reply::Sdp),
            Some(Op::Answer(r)) => self.answer_sdp(r).map(Reply::Sdp),
            Some(Op::Bridge(r)) => self.set_bridge(r, true).map(Reply::Bridged),
            Some(Op::Unbridge(r)) => self.set_bridge(r, false).map(Reply::Bridged),
            Some(Op::Delete(r)) => self.delete_legs(r).await.map(Reply::Deleted),
            None => Err(Status::invalid_argument(
                "the control request names no operation",
            )),
        };
        Ok(v1::ControlReply {
            id: request.id,
            reply: Some(reply.unwrap_or_else(|status| {
                Reply::Error(v1::ControlError {
                    code: status.code() as i32,
                    message: status.message().to_owned(),
                })
            })),
        })
    }
}

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RtpManager for ControlService {
    async fn offer(
        &self,
        request: Request<v1::OfferRequest>,
    ) -> Result<Response<v1::SdpResponse>, Status> {
        self.offer_sdp(request.get_ref()).map(Response::new)
    }

    async fn answer(
        &self,
        request: Request<v1::AnswerRequest>,
    ) -> Result<Response<v1::SdpResponse>, Status> {
        self.answer_sdp(request.get_ref()).map(Response::new)
    }

    async fn bridge(
        &self,
        request: Request<v1::BridgeRequest>,
    ) -> Result<Response<v1::BridgeResponse>, Status> {
        self.set_bridge(request.get_ref(), true).map(Response::new)
    }

    async fn unbridge(
        &self,
        request: Request<v1::BridgeRequest>,
    ) -> Result<Response<v1::BridgeResponse>, Status> {
        self.set_bridge(request.get_ref(), false).map(Response::new)
    }

    async fn delete(
        &self,
        request: Request<v1::DeleteRequest>,
    ) -> Result<Response<v1::DeleteResponse>, Status> {
        self.delete_legs(request.get_ref()).await.map(Response::new)
    }

    type PlayStream = EventStream<v1::PlayEvent>;

    /// Dropping the stream stops the playback ("client gone").
    async fn play(
        &self,
        request: Request<v1::PlayRequest>,
    ) -> Result<Response<Self::PlayStream>, Status> {
        let r = request.into_inner();
        require_field("call_id", &r.call_id)?;
        require_field("leg_id", &r.leg_id)?;
        if r.files.is_empty() {
            return Err(Status::invalid_argument("files is empty"));
        }
        let passes = (!r.loop_forever).then_some(r.repeat);
        let (id, updates) = self
            .driver
            .play(&r.call_id, &r.leg_id, r.files, passes)
            .await
            .map_err(status_of)?;
        Ok(Response::new(play_stream(id, updates)))
    }

    async fn stop_play(
        &self,
        request: Request<v1::StopPlayRequest>,
    ) -> Result<Response<v1::StopPlayResponse>, Status> {
        let r = request.into_inner();
        require_field("call_id", &r.call_id)?;
        require_field("leg_id", &r.leg_id)?;
        let id = (!r.playback_id.is_empty()).then_some(PlaybackId(r.playback_id));
        self.driver
            .stop_play(&r.call_id, &r.leg_id, id)
            .map_err(status_of)?;
        Ok(Response::new(v1::StopPlayResponse {}))
    }

    /// Returns once every packet has been sent (a few hundred milliseconds
    /// per digit), so the caller knows the digits are out.
    async fn send_dtmf(
        &self,
        request: Request<v1::SendDtmfRequest>,
    ) -> Result<Response<v1::SendDtmfResponse>, Status> {
        let r = request.into_inner();
        require_field("call_id", &r.call_id)?;
        require_field("leg_id", &r.leg_id)?;
        let dtmf = DtmfRequest {
            digits: r.digits,
            duration_ms: r.duration_ms,
            gap_ms: r.gap_ms,
            volume: r.volume,
        };
        self.driver
            .send_dtmf(&r.call_id, &r.leg_id, dtmf)
            .await
            .map_err(status_of)?;
        Ok(Response::new(v1::SendDtmfResponse {}))
    }

    type WatchStream = EventStream<v1::ManagerEvent>;

    async fn watch(
        &self,
        request: Request<v1::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let interval = request.into_inner().stats_interval_secs;
        let events = tokio_stream::wrappers::BroadcastStream::new(self.driver.subscribe());
        let events =
            tokio_stream::StreamExt::filter_map(events, |e| e.ok().map(|e| Ok(event_proto(e))));
        // Ends at shutdown, as the Control stream does.
        let mut stopping = self.stopping.subscribe();
        let events = events.take_until(async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
        });
        if interval == 0 {
            return Ok(Response::new(Box::pin(events)));
        }
        let driver = self.driver.clone();
        let period = Duration::from_secs(u64::from(interval));
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            loop {
                ticker.tick().await;
                for stats in driver.all_stats() {
                    let event = v1::ManagerEvent {
                        timestamp_ms: crate::clock::unix_millis(std::time::SystemTime::now()),
                        event: Some(v1::manager_event::Event::Stats(stats_proto(stats))),
                    };
                    // The watcher went away: stop producing for it.
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
            }
        });
        let stats = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::merge(
            events, stats,
        ))))
    }

    async fn get_stats(
        &self,
        request: Request<v1::GetStatsRequest>,
    ) -> Result<Response<v1::GetStatsResponse>, Status> {
        let r = request.into_inner();
        let views = self
            .driver
            .leg_views(&r.call_id, &r.leg_id)
            .map_err(status_of)?;
        let legs = views
            .iter()
            .map(|(v, _)| self.driver.stats_of(v).map(stats_proto))
            .collect::<Result<Vec<_>, _>>()
            .map_err(status_of)?;
        let info = views
            .iter()
            .map(|(v, offloaded)| leg_info(v, *offloaded))
            .collect();
        Ok(Response::new(v1::GetStatsResponse { legs, info }))
    }

    async fn list_calls(
        &self,
        _: Request<v1::ListCallsRequest>,
    ) -> Result<Response<v1::ListCallsResponse>, Status> {
        let calls = self
            .driver
            .list()
            .into_iter()
            .map(|(call_id, age, legs)| v1::CallSummary {
                call_id,
                legs: legs
                    .iter()
                    .map(|(v, offloaded)| leg_info(v, *offloaded))
                    .collect(),
                age_secs: age.as_secs(),
            })
            .collect();
        Ok(Response::new(v1::ListCallsResponse { calls }))
    }

    async fn health(
        &self,
        _: Request<v1::HealthRequest>,
    ) -> Result<Response<v1::HealthResponse>, Status> {
        let fast_path = self.driver.fast_path();
        let load = self.driver.relay_load();
        Ok(Response::new(self.driver.with_table(|table| {
            v1::HealthResponse {
                status: if table.draining() {
                    v1::ServingStatus::Draining
                } else {
                    v1::ServingStatus::Serving
                }
                .into(),
                fast_path: mode_proto(fast_path.mode()).into(),
                active_calls: count(table.calls()),
                active_legs: count(table.legs()),
                ports_free: count(table.ports_free()),
                relay_load_pps: load.committed_pps,
                relay_capacity_pps: load.capacity_pps,
                overloaded: load.overloaded(),
                answer_bridges: true,
                control_stream: true,
                interfaces: media_interfaces(table, fast_path),
            }
        })))
    }

    async fn info(
        &self,
        _: Request<v1::InfoRequest>,
    ) -> Result<Response<v1::InfoResponse>, Status> {
        let info = &self.info;
        let fast_path = self.driver.fast_path();
        Ok(Response::new(self.driver.with_table(|table| {
            v1::InfoResponse {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                instance_id: info.instance_id.clone(),
                advertised_addresses: info.advertised.iter().map(ToString::to_string).collect(),
                rtp_port_min: info.rtp_port_min.into(),
                rtp_port_max: info.rtp_port_max.into(),
                ports_total: count(table.ports_total()),
                ports_free: count(table.ports_free()),
                fast_path: mode_proto(fast_path.mode()).into(),
                fast_path_reason: fast_path.reason().to_owned(),
                media_interface: fast_path.interface().to_owned(),
                codecs: CODECS.iter().map(|c| (*c).to_owned()).collect(),
                started_at_ms: info.started_at_ms,
                draining: table.draining(),
                interfaces: media_interfaces(table, fast_path),
            }
        })))
    }

    type ControlStream = EventStream<v1::ControlReply>;

    async fn control(
        &self,
        request: Request<Streaming<v1::ControlRequest>>,
    ) -> Result<Response<Self::ControlStream>, Status> {
        let authorization: Option<Arc<[u8]>> = request
            .metadata()
            .get("authorization")
            .map(|value| value.as_bytes().into());
        let peer = request.remote_addr();
        let mut stopping = self.stopping.subscribe();
        let requests = request.into_inner().take_until(async move {
            // The sender lives as long as the service this stream holds.
            let _ = stopping.wait_for(|stopping| *stopping).await;
        });
        let service = self.clone();
        let replies = requests
            .map(move |request| {
                let service = service.clone();
                let authorization = authorization.clone();
                async move {
                    service
                        .control_one(request, authorization.as_deref(), peer)
                        .await
                }
            })
            .buffer_unordered(CONTROL_IN_FLIGHT);
        Ok(Response::new(Box::pin(replies)))
    }

    async fn set_drain(
        &self,
        request: Request<v1::SetDrainRequest>,
    ) -> Result<Response<v1::SetDrainResponse>, Status> {
        self.driver.set_drain(request.into_inner().drain);
        Ok(Response::new(v1::SetDrainResponse {}))
    }
}

fn require_field(field: &str, value: &str) -> Result<(), Status> {
    if value.trim().is_empty() {
        return Err(Status::invalid_argument(format!("{field} is empty")));
    }
    Ok(())
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
