//! `switchboard-signaling`: see `--help`.

use switchboard_signaling::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::load().unwrap_or_else(|e| e.exit());
    switchboard_service::init_logging(&config.log_level);
    switchboard_signaling::server::run(config).await
}
