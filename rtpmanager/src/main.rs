//! `switchboard-rtpmanager`: see `--help`.

use switchboard_rtpmanager::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::load().unwrap_or_else(|e| e.exit());
    switchboard_service::init_logging(&config.log_level);
    switchboard_rtpmanager::server::run(config).await
}
