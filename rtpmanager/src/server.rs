//! Wires configuration, the fast path and the gRPC server together and runs
//! until a shutdown signal.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use switchboard_proto::v1::rtp_manager_server::RtpManagerServer;
use tonic::service::Interceptor;

use crate::access::{Access, TokenCheck};
use crate::clock::unix_millis;
use crate::config::Config;
use crate::config::FastPathRequest;
use crate::driver::Driver;
use crate::engine::{Engine, EngineConfig};
use crate::fastpath::{FastPath, Mode, MoreDevice, Settings};
use crate::grpc::{ControlService, ManagerInfo};
use crate::interfaces;
use crate::metrics;
use crate::ports::{PortPool, SocketBinder};
use crate::relay::Relay;
use crate::session::persist::StateFile;
use crate::session::{SessionTable, TableConfig, TableInterface};

/// Runs the manager until SIGINT/SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // Read first: a missing certificate or token file stops the start
    // with the option's name, before the fast path attaches or anything
    // listens.
    let access = Access::from_config(&config)?;
    if let Some(warning) = access.exposure_warning(config.grpc_address) {
        tracing::warn!("{warning}");
    }
    let access_summary = access.summary();
    let (tls, tokens) = (access.tls, access.tokens);
    let mut check = tokens.map(TokenCheck::new);
    // Before anything else runs: SIGHUP's default action ends the process.
    reload_on_sighup(check.clone(), config.grpc_token_file.clone())?;
    let media = media_interfaces(&config);
    // The programs' config spans every interface's range (they do not
    // overlap); one forwarding map serves all devices.
    let port_min = media
        .iter()
        .map(|m| m.port_min)
        .min()
        .unwrap_or(config.rtp_port_min);
    let port_max = media
        .iter()
        .map(|m| m.port_max)
        .max()
        .unwrap_or(config.rtp_port_max);
    // The first interface that wants the fast path loads it; the others
    // attach the same programs.
    let primary = media
        .iter()
        .position(|m| m.request != crate::config::FastPathRequest::Off)
        .unwrap_or(0);
    let mut more = Vec::new();
    for (i, m) in media.iter().enumerate() {
        if i != primary
            && m.device != media[primary].device
            && !more.iter().any(|d: &MoreDevice| d.device == m.device)
        {
            more.push(MoreDevice {
                device: m.device.clone(),
                request: m.request,
            });
        }
    }
    let fast_path = FastPath::start_on(
        &Settings {
            request: media[primary].request,
            interface: media[primary].device.clone(),
            port_min,
            port_max,
            next_hop_cache: std::time::Duration::from_millis(config.next_hop_cache_ms),
        },
        &more,
        Some(&config.bpf_pin_path),
    );

    let mut wire = HashMap::new();
    for m in &media {
        if fast_path.mode_on(&m.device) != Mode::Off {
            check_forwarding(
                &m.device,
                config.enable_forwarding,
                m.advertised().iter().any(IpAddr::is_ipv6),
            );
        }
        wire.extend(wire_addresses(&m.advertised(), m.bind, &m.device));
    }
    let mut kernel_devices: std::collections::HashSet<String> = media
        .iter()
        .map(|m| m.device.clone())
        .filter(|d| fast_path.mode_on(d) != Mode::Off)
        .collect();
    if fast_path.mode() != Mode::Off {
        kernel_devices.insert(String::new());
    }
    let relay_workers = match config.relay_workers {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        n => usize::from(n),
    };
    let engine_config = EngineConfig {
        offload: fast_path.mode() != Mode::Off,
        wire,
        kernel_devices,
        relay_capacity_pps: config
            .relay_capacity_pps
            .saturating_mul(u32::try_from(relay_workers).unwrap_or(u32::MAX)),
    };

    let started = SystemTime::now();
    let advertise = media[0].advertised()[0];
    let info = ManagerInfo {
        instance_id: format!("{:x}-{:x}", std::process::id(), unix_millis(started)),
        started_at_ms: unix_millis(started),
        advertised: media[0].advertised(),
        rtp_port_min: port_min,
        rtp_port_max: port_max,
    };
    let sockets = SocketBinder::default();
    let mut interfaces = Vec::new();
    for m in &media {
        let pool = PortPool::with_binder(m.bind, m.port_min, m.port_max, Box::new(sockets.clone()))
            .with_context(|| format!("the ports of media interface {}", m.name))?;
        interfaces.push(TableInterface {
            name: m.name.clone(),
            device: m.device.clone(),
            advertise_v4: m.advertise_v4,
            advertise_v6: m.advertise_v6,
            pool,
        });
    }
    let table = SessionTable::with_interfaces(
        TableConfig {
            advertise_v4: advertise,
            advertise_v6: media[0].advertise_v6,
            media_timeout: Duration::from_secs(u64::from(config.media_timeout)),
            hold_timeout: Duration::from_secs(u64::from(config.hold_timeout)),
            source_learning: Duration::from_millis(config.source_learning_ms),
            max_legs_per_call: usize::from(config.max_legs_per_call),
        },
        interfaces,
    );
    let relay = Relay::with_workers(relay_workers).context("starting the media relay")?;
    tracing::info!(workers = relay_workers, "userspace relay started");
    let state = config
        .state_dir
        .as_deref()
        .and_then(|dir| match StateFile::in_dir(dir) {
            Ok(file) => Some(file),
            Err(e) => {
                tracing::warn!(error = %e, "--state-dir unusable: calls are not saved for a restart");
                None
            }
        });
    let driver = Driver::new(
        Engine::new(table, engine_config),
        sockets,
        fast_path,
        relay,
        config.audio_path.clone(),
        state.clone(),
    );
    readopt(&driver, state.as_ref());
    tokio::spawn(driver.clone().watch_offloaded(Duration::from_secs(1)));
    tokio::spawn(driver.clone().forward_relay_events());
    // Every second: the media timeout may be as short as a second, and a
    // scan of the table is cheap next to the relay's work.
    tokio::spawn(driver.clone().reap_idle_legs(
        Duration::from_secs(u64::from(config.idle_timeout)),
        Duration::from_secs(1),
    ));

    // Before the port accepts: a SIGTERM from then on is a graceful stop.
    let mut signals = switchboard_service::ShutdownSignals::install();
    let grpc_addr = SocketAddr::new(config.grpc_address, config.grpc_port);
    let listener = tokio::net::TcpListener::bind(grpc_addr)
        .await
        .with_context(|| {
            format!("cannot listen for gRPC on {grpc_addr} (--grpc-address/--grpc-port)")
        })?;
    let bound = listener.local_addr().context("gRPC listener address")?;
    if let Some(addr) = config.metrics_listen {
        serve_metrics(addr, driver.clone()).await?;
    }
    tracing::info!(
        grpc = %bound,
        grpc_access = %access_summary,
        %advertise,
        ports = %format_args!("{port_min}-{port_max}"),
        fast_path = %driver.fast_path().mode(),
        interfaces = %media.iter().map(|m| format!("{}@{}:{}", m.name, m.device, driver.fast_path().mode_on(&m.device))).collect::<Vec<_>>().join(" "),
        "rtpmanager ready"
    );

    // Without TCP_NODELAY an answer's DATA frame, written right after its
    // HEADERS, waited for the client's delayed ACK (Nagle): up to 40 ms,
    // or until signaling's next request carried the ACK (INVITE→200 p90
    // 13 ms at 100 calls/s). `Server::tcp_nodelay` covers only the
    // listener tonic binds itself, not one handed to it.
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |accepted| {
            if let Ok(stream) = &accepted {
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(%error, "TCP_NODELAY not set on a gRPC connection");
                }
            }
            accepted
        },
    );
    let service = ControlService::new(info, driver.clone()).with_tokens(check.clone());
    let stopping = Arc::new(tokio::sync::Notify::new());
    let shutdown = {
        let stopping = Arc::clone(&stopping);
        let service = service.clone();
        async move {
            let signal = signals.recv().await;
            tracing::info!(signal, "shutting down");
            service.stop_streams();
            stopping.notify_one();
        }
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .context("--grpc-tls-cert/--grpc-tls-key/--grpc-tls-client-ca")?;
    }
    // One interceptor type either way: without tokens it lets every
    // request through.
    let serve = builder
        .add_service(RtpManagerServer::with_interceptor(
            service,
            move |request: tonic::Request<()>| match &mut check {
                Some(check) => check.call(request),
                None => Ok(request),
            },
        ))
        .serve_with_incoming_shutdown(incoming, shutdown);
    // Graceful, but bounded: Control and Watch streams end at the signal
    // (`stop_streams`), but another open stream (a Play) would otherwise
    // hold the process until systemd's SIGKILL, which skips the fast
    // path's clean detach below.
    tokio::select! {
        served = serve => served.context("gRPC server")?,
        () = async {
            stopping.notified().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => tracing::warn!(
            grace_secs = SHUTDOWN_GRACE.as_secs(),
            "gRPC requests or streams still open after the grace period; stopping without them"
        ),
    }

    if let Some(counters) = driver.fast_path().counters() {
        let summary: Vec<String> = counters
            .iter()
            .map(|(c, n)| format!("{}={n}", c.name()))
            .collect();
        tracing::info!(counters = %summary.join(" "), "fast path detached");
    }
    // The last changes are saved, and nothing is saved after this.
    driver.close_state();
    driver.fast_path().shutdown(config.keep_on_exit);
    // A clean exit without --keep-on-exit ended the calls' kernel path;
    // the next manager must not take them back.
    if let (Some(state), false) = (&state, config.keep_on_exit) {
        state.remove();
    }
    Ok(())
}

/// One media interface as configured, its device resolved.
#[derive(Debug)]
struct MediaInterface {
    name: String,
    device: String,
    bind: IpAddr,
    advertise_v4: Option<IpAddr>,
    advertise_v6: Option<IpAddr>,
    port_min: u16,
    port_max: u16,
    request: FastPathRequest,
}

impl MediaInterface {
    /// The advertised addresses, IPv4 first; never empty.
    fn advertised(&self) -> Vec<IpAddr> {
        self.advertise_v4
            .iter()
            .chain(self.advertise_v6.iter())
            .copied()
            .collect()
    }
}

/// The `--interface`s, or without them one interface named `default` of
/// the single-interface options (their meaning unchanged: `--advertise`
/// is what IPv4 peers get, whatever its family).
fn media_interfaces(config: &Config) -> Vec<MediaInterface> {
    // Validated when the config was loaded.
    let named = config.named_interfaces().unwrap_or_default();
    if named.is_empty() {
        let advertise = config
            .advertise
            .unwrap_or_else(interfaces::default_advertise_address);
        let device = match &config.media_interface {
            Some(name) => name.clone(),
            None => {
                interfaces::interface_with_address(advertise).unwrap_or_else(|| "lo".to_owned())
            }
        };
        return vec![MediaInterface {
            name: "default".to_owned(),
            device,
            bind: config.rtp_bind_address,
            advertise_v4: Some(advertise),
            advertise_v6: config.advertise_v6,
            port_min: config.rtp_port_min,
            port_max: config.rtp_port_max,
            request: config.fast_path,
        }];
    }
    named
        .into_iter()
        .map(|spec| {
            let first = spec.advertise_v4.or(spec.advertise_v6);
            // Behind a 1:1 NAT the advertised address is not local: the
            // bound one names the device then.
            let device = spec.device.clone().unwrap_or_else(|| {
                first
                    .into_iter()
                    .chain(std::iter::once(spec.bind))
                    .find_map(interfaces::interface_with_address)
                    .unwrap_or_else(|| "lo".to_owned())
            });
            MediaInterface {
                name: spec.name,
                device,
                bind: spec.bind,
                advertise_v4: spec.advertise_v4,
                advertise_v6: spec.advertise_v6,
                port_min: spec.port_min,
                port_max: spec.port_max,
                request: spec.fast_path,
            }
        })
        .collect()
}

/// Reads the token file again on each SIGHUP (`systemctl reload`), so a
/// token can be added or retired without a restart; an invalid file is
/// refused and the tokens in force stay. Without a token file SIGHUP only
/// says so: its default action would end the manager and its calls.
fn reload_on_sighup(
    check: Option<TokenCheck>,
    path: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let (Some(check), Some(path)) = (&check, &path) else {
                tracing::info!("SIGHUP: nothing to reload (no --grpc-token-file)");
                continue;
            };
            match check.reload(path) {
                Ok(tokens) => tracing::info!(tokens, "SIGHUP: --grpc-token-file reloaded"),
                Err(e) => {
                    tracing::warn!(error = %e, "SIGHUP: --grpc-token-file refused; the tokens in force stay")
                }
            }
        }
    });
    Ok(())
}

/// How long in-flight gRPC requests and streams may run after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Binds `--metrics-listen` and serves the Prometheus endpoint in the
/// background until the process ends.
async fn serve_metrics(addr: SocketAddr, driver: Driver) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr} (--metrics-listen)"))?;
    let bound = listener.local_addr().context("metrics listener address")?;
    tracing::info!(metrics = %bound, "serving Prometheus metrics at /metrics");
    tokio::spawn(async move {
        if let Err(e) = metrics::serve(listener, driver).await {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    });
    Ok(())
}

/// Takes back the calls a previous run saved, then removes the kernel
/// entries (pinned maps come back with them) of calls this run does not
/// have: deleted from the state, or never saved.
fn readopt(driver: &Driver, state: Option<&StateFile>) {
    match state.map(StateFile::read) {
        Some(Ok(Some(saved))) => match driver.restore(&saved) {
            Ok(legs) => {
                tracing::info!(legs, path = %state.map_or(String::new(), |s| s.path().display().to_string()), "calls of the previous run re-adopted")
            }
            Err(e) => {
                tracing::warn!(error = %e, "re-adopting the previous run's calls failed")
            }
        },
        Some(Ok(None)) | None => {}
        Some(Err(e)) => tracing::warn!(error = %e, "session state unreadable: no call re-adopted"),
    }
    let keep: std::collections::HashSet<_> = driver.kernel_keys().into_iter().collect();
    let stale = driver.fast_path().retain_entries(|key| keep.contains(key));
    if stale > 0 {
        tracing::info!(
            entries = stale,
            "removed the kernel entries a previous run left for calls this manager does not have"
        );
    }
}

/// The address packets for each advertised address carry on the wire at
/// the media interface: the kernel's entries are keyed on it. It is the
/// bind address when the sockets are bound to one, the advertised address
/// when it is local, and otherwise (a 1:1 NAT advertising its public
/// address) the media interface's address of that family.
fn wire_addresses(advertised: &[IpAddr], bind: IpAddr, interface: &str) -> HashMap<IpAddr, IpAddr> {
    advertised
        .iter()
        .map(|&a| {
            let wire = if !bind.is_unspecified() && bind.is_ipv4() == a.is_ipv4() {
                bind
            } else if interfaces::interface_with_address(a).is_some() {
                a
            } else if let Some(local) = interface_address(interface, a.is_ipv4()) {
                tracing::info!(advertised = %a, wire = %local, "advertised address is not local; kernel entries use the interface's");
                local
            } else {
                a
            };
            (a, wire)
        })
        .collect()
}

/// The first address of `interface` of one family.
fn interface_address(interface: &str, v4: bool) -> Option<IpAddr> {
    nix::ifaddrs::getifaddrs()
        .ok()?
        .filter(|i| i.interface_name == interface)
        .find_map(|i| {
            let a = i.address?;
            if v4 {
                a.as_sockaddr_in().map(|s| IpAddr::V4(s.ip()))
            } else {
                a.as_sockaddr_in6()
                    .map(|s| IpAddr::V6(s.ip()))
                    .filter(|ip| !ip.is_loopback())
            }
        })
}

/// The programs' route lookup (bpf_fib_lookup) answers "forwarding
/// disabled" unless the ingress interface forwards, and such packets go to
/// the userspace relay: correct, but slow. Sets the sysctls when the
/// operator asked for it, else warns once naming them.
/// IPv6 is checked only when the manager advertises an IPv6 address
/// (`--advertise` or `--advertise-v6`).
fn check_forwarding(interface: &str, enable: bool, ipv6: bool) {
    let families: &[&str] = if ipv6 { &["ipv4", "ipv6"] } else { &["ipv4"] };
    for family in families {
        let path = format!("/proc/sys/net/{family}/conf/{interface}/forwarding");
        let Ok(value) = std::fs::read_to_string(&path) else {
            continue;
        };
        if value.trim() != "0" {
            continue;
        }
        let sysctl = format!("net.{family}.conf.{interface}.forwarding=1");
        if enable {
            match std::fs::write(Path::new(&path), "1") {
                Ok(()) => {
                    tracing::info!(%sysctl, "forwarding enabled for the kernel fast path (--enable-forwarding)")
                }
                Err(e) => {
                    tracing::warn!(%sysctl, error = %e, "cannot enable forwarding; the kernel fast path passes packets to userspace")
                }
            }
        } else {
            tracing::warn!(
                %sysctl,
                "forwarding is disabled on the media interface: the kernel fast path passes every packet to userspace; run `sysctl -w {sysctl}` or start with --enable-forwarding"
            );
        }
    }
}
