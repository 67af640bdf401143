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
    switchboard_service::init_logging(&config.log_level);
    for unread in
        switchboard_service::unread_variables::<Config>(switchboard_ui::config::LEGACY_ENVIRONMENT)
    {
        tracing::warn!("{unread}");
    }
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
    let backends = Backends::new(&config.backends).with_token(token);
    backends.spawn_polling(poll_interval);

    let addr = SocketAddr::new(config.address, config.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (--address/--port)"))?;
    tracing::info!(http = %addr, backends = config.backends.len(), "dashboard ready");
    axum::serve(
        listener,
        app(UiState {
            backends,
            poll_interval,
        }),
    )
    .with_graceful_shutdown(async {
        let signal = switchboard_service::shutdown_signal().await;
        tracing::info!(signal, "shutting down");
    })
    .await
    .context("HTTP server")?;
    Ok(())
}
