//! Wires configuration, the fast path and the gRPC server together and runs
//! until a shutdown signal.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use switchboard_proto::v1::rtp_manager_server::RtpManagerServer;

use crate::config::Config;
use crate::fastpath::{FastPath, Settings};
use crate::grpc::{unix_millis, ControlService, ManagerInfo};
use crate::interfaces;
use crate::ports::PortPool;
use crate::relay::Relay;
use crate::session::{SessionTable, TableConfig};

/// Runs the manager until SIGINT/SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let advertise = config
        .advertise
        .unwrap_or_else(interfaces::default_advertise_address);
    let interface = match &config.media_interface {
        Some(name) => name.clone(),
        None => interfaces::interface_with_address(advertise).unwrap_or_else(|| "lo".to_owned()),
    };
    let fast_path = FastPath::start(&Settings {
        request: config.fast_path,
        interface,
        port_min: config.rtp_port_min,
        port_max: config.rtp_port_max,
    });

    let started = SystemTime::now();
    let info = ManagerInfo {
        instance_id: format!("{:x}-{:x}", std::process::id(), unix_millis(started)),
        started_at_ms: unix_millis(started),
        advertised: vec![advertise],
        rtp_port_min: config.rtp_port_min,
        rtp_port_max: config.rtp_port_max,
    };
    let pool = PortPool::new(
        config.rtp_bind_address,
        config.rtp_port_min,
        config.rtp_port_max,
    )
    .context("--rtp-port-min/--rtp-port-max")?;
    let table = SessionTable::new(
        TableConfig {
            advertise_v4: advertise,
            advertise_v6: config.advertise_v6,
            media_timeout: Duration::from_secs(u64::from(config.media_timeout)),
        },
        pool,
    );
    let relay = Relay::start().context("starting the media relay")?;
    let service = ControlService::new(info, fast_path, table, relay, config.audio_path.clone());
    tokio::spawn(service.clone().forward_relay_events());
    tokio::spawn(service.clone().reap_idle_legs(
        Duration::from_secs(u64::from(config.idle_timeout)),
        Duration::from_secs(10),
    ));

    let grpc_addr = SocketAddr::new(config.grpc_address, config.grpc_port);
    let listener = tokio::net::TcpListener::bind(grpc_addr)
        .await
        .with_context(|| {
            format!("cannot listen for gRPC on {grpc_addr} (--grpc-address/--grpc-port)")
        })?;
    let bound = listener.local_addr().context("gRPC listener address")?;
    tracing::info!(
        grpc = %bound,
        %advertise,
        ports = %format_args!("{}-{}", config.rtp_port_min, config.rtp_port_max),
        fast_path = %service.fast_path().mode(),
        "rtpmanager ready"
    );

    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let shutdown = async {
        let signal = switchboard_service::shutdown_signal().await;
        tracing::info!(signal, "shutting down");
    };
    tonic::transport::Server::builder()
        .add_service(RtpManagerServer::new(service.clone()))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("gRPC server")?;

    if let Some(counters) = service.fast_path().counters() {
        let summary: Vec<String> = counters
            .iter()
            .map(|(c, n)| format!("{}={n}", c.name()))
            .collect();
        tracing::info!(counters = %summary.join(" "), "fast path detached");
    }
    Ok(())
}
