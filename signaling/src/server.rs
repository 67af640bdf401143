//! Wires configuration, the SIP transports and core, the RTP manager pool
//! and the REST API together and runs until a shutdown signal.

use std::io::Read;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

use crate::auth::{Authenticator, Users};
use crate::config::{manager_uri, AuthOption, Config};
use crate::registrar::{Registrar, Store};
use crate::rest::{app, ApiState};
use crate::rtpmanager_pool::ManagerPool;
use crate::transport::{TransportConfig, Transports};
use crate::uas::driver::{CoreHandle, CoreQueue};
use crate::uas::{Now, Uas, UasConfig};

/// Runs the signaling server until SIGINT/SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let uris = config
        .rtpmanagers
        .iter()
        .map(|m| manager_uri(m).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()
        .context("--rtpmanager")?;
    let pool = ManagerPool::new(&uris).context("--rtpmanager")?;
    pool.spawn_health_checks(config.health_interval());

    let uas = build_core(&config)?;
    let queue = CoreQueue::new();
    let transports = Transports::start(
        TransportConfig {
            bind: SocketAddr::new(config.bind_address, config.port),
            limits: config.framing_limits(),
            tcp_idle_timeout: Duration::from_secs(config.tcp_idle_timeout),
            tcp_connect_timeout: config.timers().t1x64().min(Duration::from_secs(10)),
        },
        queue.sink(),
    )
    .await
    .context("SIP transports (--bind-address/--port)")?;
    let core = queue
        .run(uas, transports.clone())
        .context("starting the SIP core thread")?;
    if let Some(path) = config.users_file.clone() {
        spawn_reload_on_sighup(core.handle(), path);
    }

    let rest_addr = SocketAddr::new(config.rest_address, config.rest_port);
    let listener = tokio::net::TcpListener::bind(rest_addr)
        .await
        .with_context(|| {
            format!("cannot listen for the REST API on {rest_addr} (--rest-address/--rest-port)")
        })?;
    tracing::info!(
        sip = %transports.local_addr(),
        rest = %listener.local_addr().context("REST listener address")?,
        rtpmanagers = uris.len(),
        "signaling ready"
    );
    let state = ApiState {
        pool,
        sip: Some(core.handle()),
    };
    let served = axum::serve(listener, app(state))
        .with_graceful_shutdown(async {
            let signal = switchboard_service::shutdown_signal().await;
            tracing::info!(signal, "shutting down");
        })
        .await
        .context("REST server");
    tokio::task::spawn_blocking(move || core.stop())
        .await
        .context("stopping the SIP core")?;
    served
}

/// The SIP core with its registrar rebuilt from the data directory.
fn build_core(config: &Config) -> anyhow::Result<Uas> {
    let users = match &config.users_file {
        Some(path) => Users::load(path, &config.realm).context("--users-file")?,
        None => Users::default(),
    };
    match config.auth {
        AuthOption::Anonymous => tracing::warn!(
            "authentication is off (--auth anonymous): anyone may register any address and place calls"
        ),
        AuthOption::Digest if config.users_file.is_none() => tracing::warn!(
            "no --users-file: digest authentication knows no user and refuses every REGISTER"
        ),
        AuthOption::Digest => tracing::info!(users = users.len(), realm = %config.realm, "users loaded"),
    }
    let secret = match &config.auth_secret {
        Some(secret) => secret.as_bytes().to_vec(),
        None => random_secret().context("drawing a nonce secret from /dev/urandom")?,
    };
    let auth = Authenticator::new(config.auth_config(secret), users);

    let store_dir = config.data_dir.join("registrations");
    let (store, records) = Store::open(&store_dir)
        .with_context(|| format!("registrar store in {} (--data-dir)", store_dir.display()))?;
    let registrar = Registrar::from_records(config.registrar(), records, Now::current().wall);
    tracing::info!(
        addresses_of_record = registrar.len(),
        "registrations restored"
    );
    let mut uas_config = UasConfig::new(&config.realm);
    uas_config.timers = config.timers();
    uas_config.limits = config.framing_limits();
    uas_config.force_rport = config.force_rport;
    uas_config.digest_algorithms = config.digest_algorithms();
    Ok(Uas::new(uas_config, registrar, auth, Box::new(store)))
}

fn random_secret() -> std::io::Result<Vec<u8>> {
    let mut secret = vec![0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut secret)?;
    Ok(secret)
}

fn spawn_reload_on_sighup(core: CoreHandle, path: std::path::PathBuf) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => hangup,
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGHUP; the users file will not be reloaded");
            return;
        }
    };
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the users file");
            core.reload_users(path.clone());
        }
    });
}
