//! Wires configuration, the RTP manager pool and the REST API together and
//! runs until a shutdown signal.

use std::net::SocketAddr;

use anyhow::Context;

use crate::config::{manager_uri, Config};
use crate::rest::{app, ApiState};
use crate::rtpmanager_pool::ManagerPool;

/// Runs the signaling server until SIGINT/SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let uris = config
        .rtpmanagers
        .iter()
        .map(|m| manager_uri(m).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()
        .context("--rtpmanager")?;
    let pool = ManagerPool::new(&uris).context("--rtpmanager")?;
    pool.spawn_health_checks(config.health_interval());

    let rest_addr = SocketAddr::new(config.rest_address, config.rest_port);
    let listener = tokio::net::TcpListener::bind(rest_addr)
        .await
        .with_context(|| {
            format!("cannot listen for the REST API on {rest_addr} (--rest-address/--rest-port)")
        })?;
    tracing::info!(
        rest = %listener.local_addr().context("REST listener address")?,
        rtpmanagers = uris.len(),
        "signaling ready"
    );
    axum::serve(listener, app(ApiState { pool }))
        .with_graceful_shutdown(async {
            let signal = switchboard_service::shutdown_signal().await;
            tracing::info!(signal, "shutting down");
        })
        .await
        .context("REST server")?;
    Ok(())
}
