//! Process plumbing shared by the three Switchboard daemons
//! (`switchboard-signaling`, `switchboard-rtpmanager`, `switchboard-ui`):
//!
//! - [`config`]: flag > environment > TOML file > default, with clap doing
//!   all validation;
//! - [`init_logging`]: `--log-level` applied to `tracing`;
//! - [`shutdown_signal`]: resolves on SIGINT or SIGTERM for graceful stop.

pub mod config;

pub use config::{parse_layered, ConfigError};

use tracing_subscriber::EnvFilter;

/// Checks a `--log-level` value: a level (`error` … `trace`) or a full
/// `tracing` filter such as `info,switchboard_signaling=debug`.
pub fn parse_log_level(value: &str) -> Result<String, String> {
    EnvFilter::try_new(value)
        .map(|_| value.to_owned())
        .map_err(|e| format!("not a log level or filter: {e}"))
}

/// Installs the global `tracing` subscriber writing to stderr (which
/// systemd's journal collects). Colours only on a terminal.
pub fn init_logging(level: &str) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(true)
        .init();
}

/// Resolves when the process receives SIGINT or SIGTERM, and says which.
pub async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the process");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
