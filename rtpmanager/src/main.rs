//! `switchboard-rtpmanager`: see `--help`.

use switchboard_rtpmanager::config::Config;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::load().unwrap_or_else(|e| e.exit());
    switchboard_service::init_logging(&config.log_level);
    for unread in switchboard_service::unread_variables::<Config>(
        switchboard_rtpmanager::config::LEGACY_ENVIRONMENT,
    ) {
        tracing::warn!("{unread}");
    }
    switchboard_service::failure::exit_status(
        "switchboard-rtpmanager",
        switchboard_rtpmanager::server::run(config).await,
    )
}
