//! `switchboard-rtpmanager`: see `--help`.

use switchboard_rtpmanager::config::Config;

fn main() -> std::process::ExitCode {
    let config = Config::load().unwrap_or_else(|e| e.exit());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(config.control_threads))
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(serve(config)),
        Err(error) => {
            eprintln!("switchboard-rtpmanager: no tokio runtime: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> std::process::ExitCode {
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
