//! `switchboard-ui`: see `--help`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use switchboard_ui::backends::Backends;
use switchboard_ui::config::Config;
use switchboard_ui::web::{app, UiState};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::load().unwrap_or_else(|e| e.exit());
    switchboard_service::start_logging::<Config>(
        &config.log_level,
        switchboard_ui::config::LEGACY_ENVIRONMENT,
    );
    switchboard_service::failure::exit_status("switchboard-ui", run(config).await)
}

async fn run(config: Config) -> anyhow::Result<()> {
    let poll_interval = Duration::from_secs(config.poll_interval);
    let token = config
        .backend_token_file
        .as_deref()
        .map(switchboard_ui::config::read_backend_token)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let specs = config.backend_specs().unwrap_or_else(|e| e.exit());
    let backends = Backends::with_token(&specs, config.backend_timeout(), token);

    if !config.address.is_loopback() {
        tracing::warn!(
            address = %config.address,
            "the dashboard listens beyond loopback over plain HTTP: operators' API tokens cross the network at login; serve it behind a TLS proxy"
        );
    }
    // Before the port accepts: a SIGTERM from then on is a graceful stop.
    let mut signals = switchboard_service::ShutdownSignals::install();
    let addr = SocketAddr::new(config.address, config.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (--address/--port)"))?;
    // Backends are followed only once the dashboard can serve them (a
    // failed start says one thing, not also that a backend is unreachable).
    backends.spawn(poll_interval);
    tracing::info!(http = %addr, backends = specs.len(), "dashboard ready");
    axum::serve(
        listener,
        app(UiState::new(
            backends,
            poll_interval,
            config.backend_timeout(),
        )),
    )
    .with_graceful_shutdown(async move {
        let signal = signals.recv().await;
        tracing::info!(signal, "shutting down");
    })
    .await
    .context("HTTP server")?;
    Ok(())
}
