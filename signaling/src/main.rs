//! `switchboard-signaling`: see `--help`.

use switchboard_signaling::config::Config;

fn main() -> std::process::ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "add-user") {
        return switchboard_signaling::add_user::main(std::env::args_os().skip(1));
    }
    let config = Config::load().unwrap_or_else(|e| e.exit());
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        runtime.worker_threads(usize::from(config.worker_threads));
    }
    match runtime.enable_all().build() {
        Ok(runtime) => runtime.block_on(serve(config)),
        Err(error) => {
            eprintln!("switchboard-signaling: no tokio runtime: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> std::process::ExitCode {
    switchboard_service::init_logging(&config.log_level);
    for unread in switchboard_service::unread_variables::<Config>(
        switchboard_signaling::config::LEGACY_ENVIRONMENT,
    ) {
        tracing::warn!("{unread}");
    }
    switchboard_service::failure::exit_status(
        "switchboard-signaling",
        switchboard_signaling::server::run(config).await,
    )
}
