//! `switchboard-rtpmanager`: see `--help`.

use switchboard_rtpmanager::config::Config;

fn main() -> std::process::ExitCode {
    let config = Config::load().unwrap_or_else(|e| e.exit());
    let workers = usize::from(config.control_threads);
    switchboard_service::failure::run_daemon("switchboard-rtpmanager", workers, async move {
        switchboard_service::start_logging::<Config>(
            &config.log_level,
            switchboard_rtpmanager::config::LEGACY_ENVIRONMENT,
        );
        switchboard_rtpmanager::server::run(config).await
    })
}
