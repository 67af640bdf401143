//! `switchboard-signaling`: see `--help`.

use switchboard_signaling::config::Config;

fn main() -> std::process::ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "add-user") {
        return switchboard_signaling::add_user::main(std::env::args_os().skip(1));
    }
    let config = Config::load().unwrap_or_else(|e| e.exit());
    let workers = usize::from(config.worker_threads);
    switchboard_service::failure::run_daemon("switchboard-signaling", workers, async move {
        switchboard_service::start_logging::<Config>(
            &config.log_level,
            switchboard_signaling::config::LEGACY_ENVIRONMENT,
        );
        switchboard_signaling::server::run(config).await
    })
}
