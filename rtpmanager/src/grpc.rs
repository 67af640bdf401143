//! The gRPC edge: turns control-protocol requests into calls on the manager
//! and its errors into `tonic::Status` codes.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use switchboard_proto::v1;
use switchboard_proto::v1::rtp_manager_server::RtpManager;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::fastpath::FastPath;

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
    pub ports_total: u32,
}

/// Implementation of the `RtpManager` gRPC service.
#[derive(Debug, Clone)]
pub struct ControlService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    info: ManagerInfo,
    fast_path: FastPath,
    draining: AtomicBool,
}

impl ControlService {
    pub fn new(info: ManagerInfo, fast_path: FastPath) -> Self {
        ControlService {
            inner: Arc::new(Inner {
                info,
                fast_path,
                draining: AtomicBool::new(false),
            }),
        }
    }

    /// The fast path, for metrics and shutdown reporting.
    pub fn fast_path(&self) -> &FastPath {
        &self.inner.fast_path
    }

    fn ports_free(&self) -> u32 {
        // No sessions hold ports yet in this version of the manager.
        self.inner.info.ports_total
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn unimplemented(method: &str) -> Status {
    Status::unimplemented(format!(
        "{method} is not implemented by this manager version"
    ))
}

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RtpManager for ControlService {
    async fn offer(
        &self,
        _: Request<v1::OfferRequest>,
    ) -> Result<Response<v1::SdpResponse>, Status> {
        Err(unimplemented("Offer"))
    }

    async fn answer(
        &self,
        _: Request<v1::AnswerRequest>,
    ) -> Result<Response<v1::SdpResponse>, Status> {
        Err(unimplemented("Answer"))
    }

    async fn bridge(
        &self,
        _: Request<v1::BridgeRequest>,
    ) -> Result<Response<v1::BridgeResponse>, Status> {
        Err(unimplemented("Bridge"))
    }

    async fn unbridge(
        &self,
        _: Request<v1::BridgeRequest>,
    ) -> Result<Response<v1::BridgeResponse>, Status> {
        Err(unimplemented("Unbridge"))
    }

    async fn delete(
        &self,
        _: Request<v1::DeleteRequest>,
    ) -> Result<Response<v1::DeleteResponse>, Status> {
        Err(unimplemented("Delete"))
    }

    type PlayStream = EventStream<v1::PlayEvent>;

    async fn play(
        &self,
        _: Request<v1::PlayRequest>,
    ) -> Result<Response<Self::PlayStream>, Status> {
        Err(unimplemented("Play"))
    }

    async fn stop_play(
        &self,
        _: Request<v1::StopPlayRequest>,
    ) -> Result<Response<v1::StopPlayResponse>, Status> {
        Err(unimplemented("StopPlay"))
    }

    async fn send_dtmf(
        &self,
        _: Request<v1::SendDtmfRequest>,
    ) -> Result<Response<v1::SendDtmfResponse>, Status> {
        Err(unimplemented("SendDtmf"))
    }

    type WatchStream = EventStream<v1::ManagerEvent>;

    async fn watch(
        &self,
        _: Request<v1::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(unimplemented("Watch"))
    }

    async fn get_stats(
        &self,
        _: Request<v1::GetStatsRequest>,
    ) -> Result<Response<v1::GetStatsResponse>, Status> {
        Err(unimplemented("GetStats"))
    }

    async fn list_calls(
        &self,
        _: Request<v1::ListCallsRequest>,
    ) -> Result<Response<v1::ListCallsResponse>, Status> {
        Ok(Response::new(v1::ListCallsResponse { calls: Vec::new() }))
    }

    async fn health(
        &self,
        _: Request<v1::HealthRequest>,
    ) -> Result<Response<v1::HealthResponse>, Status> {
        let status = if self.inner.draining.load(Ordering::Relaxed) {
            v1::ServingStatus::Draining
        } else {
            v1::ServingStatus::Serving
        };
        Ok(Response::new(v1::HealthResponse {
            status: status.into(),
            fast_path: self.inner.fast_path.mode().to_proto().into(),
            active_calls: 0,
            active_legs: 0,
            ports_free: self.ports_free(),
        }))
    }

    async fn info(
        &self,
        _: Request<v1::InfoRequest>,
    ) -> Result<Response<v1::InfoResponse>, Status> {
        let info = &self.inner.info;
        let fast_path = &self.inner.fast_path;
        Ok(Response::new(v1::InfoResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            instance_id: info.instance_id.clone(),
            advertised_addresses: info.advertised.iter().map(ToString::to_string).collect(),
            rtp_port_min: info.rtp_port_min.into(),
            rtp_port_max: info.rtp_port_max.into(),
            ports_total: info.ports_total,
            ports_free: self.ports_free(),
            fast_path: fast_path.mode().to_proto().into(),
            fast_path_reason: fast_path.reason().to_owned(),
            media_interface: fast_path.interface().to_owned(),
            codecs: CODECS.iter().map(|c| (*c).to_owned()).collect(),
            started_at_ms: info.started_at_ms,
            draining: self.inner.draining.load(Ordering::Relaxed),
        }))
    }

    async fn set_drain(
        &self,
        request: Request<v1::SetDrainRequest>,
    ) -> Result<Response<v1::SetDrainResponse>, Status> {
        let drain = request.into_inner().drain;
        let was = self.inner.draining.swap(drain, Ordering::Relaxed);
        if was != drain {
            tracing::info!(drain, "drain mode changed");
        }
        Ok(Response::new(v1::SetDrainResponse {}))
    }
}
