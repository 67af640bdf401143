//! Wires configuration, the SIP transports and core, the RTP manager pool
//! and the REST API together and runs until a shutdown signal.

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use switchboard_service::Waited;

use crate::auth::{Authenticator, Users};
use crate::b2bua::{self, B2bua, B2buaConfig, CallsHandle, LinkInput, MediaLink, Owner, Shutdown};
use crate::cdr::{self, CdrControl, CdrWriter};
use crate::config::{manager_id, AuthOption, Config, DEFAULT_DIALPLAN, RESERVED_FILES};
use crate::dialplan::Dialplan;
use crate::events::EventBus;
use crate::metrics::{CallCounts, Metrics};
use crate::registrar::{Follower, Keys, RedisStore, RedisTarget, Registrar, SharedLocation, Store};
use crate::rtpmanager_moves::Migrations;
use axum::serve::Listener;

use crate::b2bua::shared::{SharedCall, SharedCallSink};
use crate::cluster::{Cluster, ClusterConfig};
use crate::reload::Reloader;
use crate::rest::{app, load_tokens, ApiAccess, ApiState, CappedListener, Tokens};
use crate::rtpmanager_client::ClientAccess;
use crate::rtpmanager_pool::ManagerPool;
use crate::transport::limits::{ConnectionLimits, TransportStats};
use crate::transport::tls::Tls;
use crate::transport::{Advertised, Stream, TransportConfig, Transports, TCP_BUFFER_BUDGET};
use crate::uas::driver::{CoreHandle, CoreQueue, QueueLimits};
use crate::uas::edge::Edge;
use crate::uas::{BindingStore, Now, Uas, UasConfig};

/// Runs the signaling server until SIGINT/SIGTERM, then ends its calls
/// (new ones refused, then hung up within `--shutdown-timeout`) and stops.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let access = ClientAccess::from_config(&config)?;
    for uri in config.manager_uris() {
        if let Some(warning) = access.cleartext_warning(&uri) {
            tracing::warn!("{warning}");
        }
    }
    let events = EventBus::with_capacity(config.event_buffer);
    let metrics = Metrics::new(Instant::now());
    metrics.spawn_sampler();
    let ids: Vec<String> = config.rtpmanagers.iter().map(|m| manager_id(m)).collect();
    let media = MediaRuntime::start().context("the media requests' thread")?;
    // The managers' channels are made on the media runtime: their tasks
    // (tonic's buffer, the HTTP/2 connection) run there with the executor's.
    let pool = {
        let _media = media.enter();
        ManagerPool::with_access(&config.manager_uris(), &access)
            .context("--rtpmanager")?
            .with_ids(&ids)
            .with_events(events.clone())
            .with_loss_policy(config.loss_policy())
    };
    let api_access = api_access(&config)?;

    let (mut uas, shared_location) = build_core(&config)?;
    if let Some(shared) = &shared_location {
        metrics.set_location(Arc::clone(&shared.state));
    }
    let dialplan = load_dialplan(&config)?;
    let stats = Arc::new(TransportStats::default());
    let mut queue = CoreQueue::with_limits(
        QueueLimits {
            bytes: config.input_queue_bytes,
            ..QueueLimits::default()
        },
        Arc::clone(&stats),
    )
    .context("the SIP core's input queue")?;
    queue.set_telemetry(metrics.clone(), events.clone());
    let tcp_connections = fit_to_file_limit(
        config.tcp_connection_limits(),
        config.rest_max_connections,
        raise_file_limit(),
    );
    // Before the ports accept: a SIGTERM from then on is a graceful stop.
    let mut signals = switchboard_service::ShutdownSignals::install();
    let transports = Transports::start(
        TransportConfig {
            bind: SocketAddr::new(config.bind_address, config.port),
            limits: config.framing_limits(),
            tcp_idle_timeout: Duration::from_secs(config.tcp_idle_timeout),
            tcp_message_timeout: Duration::from_secs(config.tcp_message_timeout),
            tcp_connect_timeout: config.timers().t1x64().min(Duration::from_secs(10)),
            tcp_connections,
            source_rate: config.source_rate_limit,
            source_rate_exempt: config.source_rate_exempt(),
            tcp_buffer_budget: TCP_BUFFER_BUDGET,
            tls: match config.tls_files() {
                Some(files) => Some((
                    SocketAddr::new(config.bind_address, config.tls_port),
                    Tls::load(files).context("SIP over TLS")?,
                )),
                None => None,
            },
            ws: config
                .ws_port
                .map(|port| SocketAddr::new(config.bind_address, port)),
            wss: config
                .wss_port
                .map(|port| SocketAddr::new(config.bind_address, port)),
        },
        queue.sink(),
        Arc::clone(&stats),
    )
    .await
    .context("SIP transports (--bind-address, --port, --tls-port, --ws-port, --wss-port)")?;
    for kind in [Stream::Ws, Stream::Wss] {
        if let Some(address) = transports.local_addr_of(kind) {
            tracing::info!(%address, transport = kind.name(), "SIP over WebSocket");
        }
    }
    if let Some(tls) = transports.tls() {
        tracing::info!(
            address = %transports.tls_local_addr().map_or_else(String::new, |a| a.to_string()),
            cert = %tls.files().cert.display(),
            "SIP over TLS"
        );
        spawn_tls_reload_on_sighup(tls.clone());
    }
    let cdr = match &config.cdr_file {
        Some(path) => {
            let (writer, sink, control) = CdrWriter::start(path, cdr::QUEUE)
                .with_context(|| format!("--cdr-file {}", path.display()))?;
            tracing::info!(path = %path.display(), "call detail records appended to the CDR file");
            spawn_cdr_reopen_on_sighup(control);
            Some((writer, sink))
        }
        None => None,
    };
    let mut calls = None;
    let mut migrations = None;
    let mut cluster_parts = None;
    if let Some(dialplan) = dialplan {
        let link = MediaLink::new();
        let core = queue.handle();
        let random = random_secret().context("drawing a seed from /dev/urandom")?;
        let seed = u64::from_le_bytes(
            random
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .unwrap_or_default(),
        );
        // A new instance at each start: calls of an earlier one are orphans.
        let instance = u32::from_le_bytes(
            random
                .get(8..12)
                .and_then(|b| b.try_into().ok())
                .unwrap_or_default(),
        );
        let owner = Owner::new(&config.node_id(), instance);
        tracing::info!(node_id = owner.node(), "media calls named after this node");
        let b2bua = B2bua::new(
            B2buaConfig {
                local: Advertised {
                    tls_port: transports.tls_local_addr().map(|a| a.port()),
                    ws_port: transports.local_addr_of(Stream::Ws).map(|a| a.port()),
                    wss_port: transports.local_addr_of(Stream::Wss).map(|a| a.port()),
                    ..advertised(&config, transports.local_addr().port())
                },
                timers: config.timers(),
                seed,
                identity: config.identity_policy(),
                owner: owner.clone(),
                limits: config.call_limits(),
            },
            dialplan,
            link.clone(),
        );
        let mut b2bua = b2bua;
        b2bua.set_events(events.clone());
        let dns = config.dns_servers().context("--dns-server")?;
        let resolver = crate::resolve::resolver(&dns);
        let wake_core = core.clone();
        b2bua.set_resolver(Box::new(crate::resolve::DnsResolver::new(
            resolver,
            link.clone(),
            Arc::new(move || wake_core.wake()),
        )));
        if let Some(shared) = &shared_location {
            let (sender, updates) = std::sync::mpsc::sync_channel(SHARED_CALL_QUEUE);
            b2bua.set_shared_calls(SharedCallSink::new(owner.node(), sender));
            cluster_parts = Some((
                ClusterConfig {
                    prefix: config.location_key_prefix.clone(),
                    node: owner.node().to_owned(),
                    instance: format!("{instance:08x}"),
                    lost_after: Duration::from_secs(config.node_lost_after),
                },
                updates,
                shared.target.clone(),
                link.clone(),
            ));
        }
        if let Some((_, sink)) = &cdr {
            b2bua.set_cdrs(sink.clone());
        }
        uas.set_call_handler(Box::new(b2bua));
        queue.set_media_link(link.clone());
        let waker = core.clone();
        {
            let _media = media.enter();
            b2bua::executor::spawn(
                pool.clone(),
                link.clone(),
                Arc::new(move || waker.wake()),
                b2bua::executor::Reconcile {
                    owner,
                    grace: config.reconcile_grace(),
                    started: Instant::now(),
                },
                metrics.clone(),
            );
        }
        let probe = link.clone();
        metrics.set_call_probe(Box::new(move || {
            let occupancy = probe.occupancy();
            CallCounts {
                calls: occupancy.calls as u64,
                dialogs: occupancy.dialogs as u64,
            }
        }));
        let waker = core.clone();
        let moves = Migrations::new(
            link.clone(),
            Arc::new(move || waker.wake()),
            pool.clone(),
            events.clone(),
            config.rtpmanager_migrate_batch,
        );
        // Subscribed before the health checks start: no loss goes unseen.
        tokio::spawn(crate::rtpmanager_moves::follow_losses(
            pool.subscribe_losses(),
            moves.clone(),
        ));
        migrations = Some(moves);
        calls = Some((link.clone(), CallsHandle::new(link, core)));
    }
    // Only the B2BUA holds the sink from here: the writer ends once the
    // core has stopped and the last records are written.
    let cdr_writer = cdr.map(|(writer, _)| writer);
    if let Some(shared) = &shared_location {
        let local = advertised(&config, transports.local_addr().port()).to_string();
        tracing::info!(path = %local, "phones registering here get this node in their Path");
        uas.set_edge(Edge::new(local, &shared.edge_secret));
    }
    let location_state = shared_location.as_ref().map(|s| Arc::clone(&s.state));
    let follower = shared_location
        .map(|shared| shared.follow(queue.handle()))
        .transpose()?;
    let core = queue
        .run(uas, transports.clone())
        .context("starting the SIP core thread")?;
    let cluster = match (cluster_parts, &location_state) {
        (Some((cluster_config, updates, client, link)), Some(state)) => Some(
            Cluster::start(
                client,
                cluster_config,
                updates,
                reaper(link, core.handle(), pool.clone()),
                Arc::clone(state),
            )
            .context("starting the cluster thread")?,
        ),
        _ => None,
    };
    let reloader = Reloader::new(
        calls
            .as_ref()
            .map(|(link, _)| (config.dialplan.clone(), link.clone())),
        config.users_file.clone(),
        core.handle(),
    );
    reloader.clone().reload_on_sighup();

    let rest_addr = SocketAddr::new(config.rest_address, config.rest_port);
    let listener = tokio::net::TcpListener::bind(rest_addr)
        .await
        .with_context(|| {
            format!("cannot listen for the REST API on {rest_addr} (--rest-address/--rest-port)")
        })?;
    let listener = CappedListener::new(
        listener,
        config.rest_max_connections,
        Duration::from_secs(config.rest_idle_timeout),
    );
    // Only now: an error of the start-up above is the first thing logged,
    // not a manager's health.
    {
        let _media = media.enter();
        pool.spawn_health_checks(config.health_interval());
    }
    tracing::info!(
        sip = %transports.local_addr(),
        rest = %listener.local_addr().context("REST listener address")?,
        rtpmanagers = pool.len(),
        "signaling ready"
    );
    let state = ApiState {
        pool,
        sip: Some(core.handle()),
        transport: Some(stats),
        rest_refused: Some(listener.refused()),
        access: Arc::new(api_access),
        calls: calls.as_ref().map(|(_, handle)| handle.clone()),
        migrations,
        reload: Some(reloader),
        events,
        metrics,
        location: location_state,
    };
    let (stop_rest, rest_stopping) = tokio::sync::oneshot::channel::<()>();
    let mut rest = tokio::spawn(async move {
        axum::serve(listener, app(state))
            .with_graceful_shutdown(async {
                let _ = rest_stopping.await;
            })
            .await
    });
    let early = tokio::select! {
        signal = signals.recv() => {
            tracing::info!(signal, "shutting down");
            None
        }
        served = &mut rest => Some(served),
    };
    // The REST API stays up while calls end: operators watch the drain there.
    if let (None, Some((link, _))) = (&early, &calls) {
        let (drain, timeout) = config.shutdown();
        end_calls(link, &core.handle(), drain, timeout).await;
    }
    let served = match early {
        Some(served) => served,
        None => {
            let _ = stop_rest.send(());
            rest.await
        }
    };
    tokio::task::spawn_blocking(move || {
        core.stop();
        // After the core: the ends of the calls the shutdown hung up are
        // written before this node leaves the cluster.
        drop(cluster);
        drop(follower);
        // Records of calls ended by the shutdown are written before exit.
        if let Some(writer) = cdr_writer {
            writer.join();
        }
    })
    .await
    .context("stopping the SIP core")?;
    served.context("REST server task")?.context("REST server")
}

/// A runtime of one thread for the requests to the RTP managers: the
/// executor's tasks, the managers' channels and their health checks. A
/// call's request passes from the executor's dispatch task to the call's
/// task, to tonic's buffer, to the HTTP/2 connection and back; on one
/// thread those are queue pushes, on a shared runtime of several workers
/// they were thread wake-ups: measured at 1,000 calls a second, signaling
/// used 7 to 11 % less CPU with them on one thread (615 and 627 ticks in
/// 8 s against 693 and 655). The SIP core keeps its own thread, and the
/// transports and the REST API the main runtime.
///
/// Running these tasks on the core's own thread instead (a current-thread
/// runtime the core drives between its turns and while it sleeps) was
/// measured too, seven runs of each at 1,000 calls a second: the wake-ups
/// went (signaling's context switches fell from about 35,000 to 5,000 in
/// 8 s) but the CPU did not (514 to 559 ticks in 8 s against 473 to 593),
/// and INVITE→200 got a little slower (medians of the runs' p50 3.39 ms
/// against 3.29, of their p90 6.35 against 5.68): on one thread the SIP
/// work and the HTTP/2 work wait for each other, where two threads use
/// both cores.
struct MediaRuntime(Option<tokio::runtime::Runtime>);

impl MediaRuntime {
    fn start() -> std::io::Result<MediaRuntime> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("media-rpc")
            .enable_all()
            .build()?;
        Ok(MediaRuntime(Some(runtime)))
    }

    /// Spawns on the media runtime until the guard is dropped.
    fn enter(&self) -> Option<tokio::runtime::EnterGuard<'_>> {
        self.0.as_ref().map(tokio::runtime::Runtime::enter)
    }
}

impl Drop for MediaRuntime {
    /// Dropped in the main runtime's context, where a runtime may not
    /// block to shut down: its tasks are left to end with the process.
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Ends every call before the process exits. New INVITEs are refused (503
/// with Retry-After) from the start; with a `drain`, calls get up to that
/// long to end by themselves; then the rest are hung up (BYE on confirmed
/// legs, CANCEL to ringing callees, media deleted) and their transactions
/// and deletes get up to `timeout` to finish. The SIP core and the media
/// executor keep running meanwhile: they carry the BYEs and the deletes.
/// Another signal during the drain still sends the BYEs and CANCELs but
/// waits for nothing.
async fn end_calls(link: &MediaLink, core: &CoreHandle, drain: Duration, timeout: Duration) {
    let started = Instant::now();
    let poll = Duration::from_millis(10);
    let at_signal = link.occupancy().calls;
    // The B2BUA has taken a step once the link holds no input before it.
    let step = |shutdown| {
        link.push_input(Instant::now(), LinkInput::Shutdown(shutdown));
        core.wake();
    };
    let mut timeout = timeout;
    if !drain.is_zero() && at_signal > 0 {
        step(Shutdown::Drain);
        let drained = switchboard_service::wait_while_stopping(drain, poll, || {
            link.next_input_at().is_none() && link.occupancy().calls == 0
        })
        .await;
        tracing::info!(
            ?drained,
            calls = link.occupancy().calls,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "shutdown drain over"
        );
        if drained == Waited::Insisted {
            timeout = Duration::ZERO;
        }
    }
    let hung_up = link.occupancy().calls;
    step(Shutdown::HangUp);
    let finished = switchboard_service::wait_while_stopping(timeout, poll, || {
        let occupancy = link.occupancy();
        link.next_input_at().is_none() && occupancy.calls == 0 && occupancy.ending == 0
    })
    .await;
    let occupancy = link.occupancy();
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let why = match finished {
        Waited::Done => {
            tracing::info!(calls = at_signal, hung_up, elapsed_ms, "every call ended");
            return;
        }
        Waited::TimedOut => "shutdown timeout (--shutdown-timeout)",
        Waited::Insisted => "second signal",
    };
    tracing::warn!(
        calls = at_signal,
        hung_up,
        left = occupancy.calls,
        unfinished = occupancy.ending,
        elapsed_ms,
        "{why}: stopping with BYEs, CANCELs or media deletes unanswered"
    );
}

/// Raises the soft open-file limit to the hard one (systemd's default soft
/// limit of 1024 is below the connection limits) and returns the limit in
/// force, `None` when it cannot be read.
fn raise_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        let error = std::io::Error::last_os_error();
        tracing::warn!(%error, "cannot read the open-file limit");
        return None;
    }
    let before = limit.rlim_cur;
    if before < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::info!(
                from = before,
                to = raised.rlim_cur,
                "open-file limit raised to the hard limit"
            );
            return Some(raised.rlim_cur);
        }
        let error = std::io::Error::last_os_error();
        tracing::warn!(%error, limit = before, "cannot raise the open-file limit");
    }
    Some(before)
}

/// The SIP TCP limits, the total lowered when the open-file limit cannot
/// hold it beside the REST connections and [`RESERVED_FILES`]: running out
/// of descriptors stops accepting on every listener, the REST API's too.
fn fit_to_file_limit(
    limits: ConnectionLimits,
    rest_connections: usize,
    file_limit: Option<u64>,
) -> ConnectionLimits {
    let Some(file_limit) = file_limit else {
        return limits;
    };
    let room = file_limit
        .saturating_sub(RESERVED_FILES as u64)
        .saturating_sub(rest_connections as u64);
    let room = usize::try_from(room).unwrap_or(usize::MAX).max(1);
    if limits.max_total <= room {
        return limits;
    }
    tracing::warn!(
        configured = limits.max_total,
        used = room,
        file_limit,
        "--tcp-max-connections lowered to fit the open-file limit (raise LimitNOFILE)"
    );
    ConnectionLimits {
        max_total: room,
        max_per_source: limits.max_per_source.min(room),
    }
}

/// The REST API's tokens (`--api-token-file`, `--api-token`), said at start
/// without showing any.
fn api_access(config: &Config) -> anyhow::Result<ApiAccess> {
    let mut tokens = match &config.api_token_file {
        Some(path) => load_tokens(path)?,
        None => Tokens::default(),
    };
    if let Some(token) = &config.api_token {
        tokens.add(token.expose());
    }
    if tokens.is_empty() {
        tracing::info!(
            rest_address = %config.rest_address,
            "REST API without a token: it answers on loopback only (--api-token-file to open it to the network)"
        );
        return Ok(ApiAccess::open());
    }
    tracing::info!(
        tokens = tokens.len(),
        metrics_require_token = config.metrics_require_token,
        "REST API requires a bearer token on every endpoint but /api/v1/health"
    );
    Ok(ApiAccess::with_tokens(tokens, config.metrics_require_token))
}

/// The SIP core with its registrar rebuilt from the data directory.
fn build_core(config: &Config) -> anyhow::Result<(Uas, Option<SharedStore>)> {
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
    let auth = Authenticator::new(config.auth_config(secret.clone()), users);

    let (store, records, shared): (Box<dyn BindingStore>, _, _) = match &config.location_store {
        None => {
            let store_dir = config.data_dir.join("registrations");
            let (store, records) = Store::open(&store_dir).with_context(|| {
                format!("registrar store in {} (--data-dir)", store_dir.display())
            })?;
            (Box::new(store), records, None)
        }
        Some(url) => {
            let target = config.location_client(url)?;
            let keys = Keys::new(&config.location_key_prefix);
            let state = Arc::new(SharedLocation::new(
                config.node_id(),
                target.address(),
                Duration::from_secs(config.location_stale_after),
            ));
            tracing::info!(store = %state.address, node = %state.node, "registrations shared through Redis");
            let (store, records) =
                RedisStore::open(target.clone(), keys.clone(), Arc::clone(&state));
            (
                Box::new(store),
                records,
                Some(SharedStore {
                    target,
                    keys,
                    state,
                    edge_secret: secret.clone(),
                }),
            )
        }
    };
    let registrar = Registrar::from_records(config.registrar(), records, Now::current().wall);
    tracing::info!(
        addresses_of_record = registrar.len(),
        "registrations restored"
    );
    let mut uas_config = UasConfig::new(&config.realm);
    uas_config.timers = config.timers();
    uas_config.limits = config.framing_limits();
    uas_config.force_rport = config.force_rport;
    uas_config.server = config.server_header.clone();
    uas_config.compact_after =
        usize::try_from(config.registrar_compact_after).unwrap_or(usize::MAX);
    let mut uas = Uas::new(uas_config, registrar, auth, store);
    if let Some(shared) = &shared {
        uas.set_shared_location(Now::current(), shared.state.stale_after);
    }
    Ok((uas, shared))
}

/// Shared call updates queued for the cluster thread before new ones are
/// dropped (a burst of answers while Redis stalls).
const SHARED_CALL_QUEUE: usize = 16 * 1024;

/// Ends one call of a lost node: its media deleted on its manager here,
/// its BYEs and record by this node's B2BUA.
fn reaper(link: MediaLink, core: CoreHandle, pool: ManagerPool) -> crate::cluster::Reaper {
    let runtime = tokio::runtime::Handle::current();
    Box::new(move |call: SharedCall| {
        if let Some(index) = call.manager.as_deref().and_then(|m| pool.index_of(m)) {
            let mut client = pool.client(index);
            let request = switchboard_proto::v1::DeleteRequest {
                call_id: call.media_call_id.clone(),
                leg_id: String::new(),
                reason: switchboard_proto::v1::DeleteReason::Admin as i32,
                detail: format!("signaling node {} lost with the call up", call.node),
            };
            match runtime.block_on(client.delete(request)) {
                Ok(_) => {
                    tracing::info!(call_id = %call.media_call_id, rtpmanager = ?call.manager, "lost node's call deleted on its manager")
                }
                Err(status) => {
                    tracing::warn!(call_id = %call.media_call_id, %status, "lost node's call not deleted on its manager (gone already, or the manager is down: its own timeout ends it)")
                }
            }
        }
        link.push_input(Instant::now(), LinkInput::Reap(Box::new(call)));
        core.wake();
    })
}

/// A location store shared with other nodes: what its follower and the
/// node's edge role need.
struct SharedStore {
    target: RedisTarget,
    keys: Keys,
    state: Arc<SharedLocation>,
    /// Keys the flow tokens in the Paths this node records: the nonce
    /// secret, so tokens survive a restart when `--auth-secret` is set.
    edge_secret: Vec<u8>,
}

impl SharedStore {
    /// Follows other nodes' changes into the core.
    fn follow(self, core: CoreHandle) -> anyhow::Result<Follower> {
        Follower::start(self.target, self.keys, self.state, move |update| {
            core.location(update)
        })
        .context("starting the location follower thread")
    }
}

/// The dialplan of `--dialplan`; `None` (calls refused 480) when the
/// default file does not exist. An invalid plan stops the start.
fn load_dialplan(config: &Config) -> anyhow::Result<Option<Arc<Dialplan>>> {
    let path = &config.dialplan;
    if path.as_path() == Path::new(DEFAULT_DIALPLAN) && !path.exists() {
        tracing::warn!(
            path = %path.display(),
            "no dialplan: calls are refused with 480 (--dialplan)"
        );
        return Ok(None);
    }
    let plan = Dialplan::load(path).context("--dialplan")?;
    tracing::info!(path = %path.display(), routes = plan.routes().len(), "dialplan loaded");
    Ok(Some(Arc::new(plan)))
}

/// Our host and UDP/TCP port for Via and Contact: `--advertise`, else
/// the bind address (127.0.0.1 when bound to all addresses).
fn advertised(config: &Config, port: u16) -> Advertised {
    let host = match &config.advertise {
        Some(host) => host.clone(),
        None if config.bind_address.is_unspecified() => "127.0.0.1".to_owned(),
        None => match config.bind_address {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            std::net::IpAddr::V4(v4) => v4.to_string(),
        },
    };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host
    };
    Advertised {
        host,
        port,
        ..Advertised::default()
    }
}

/// Reads the TLS certificate and key again on every SIGHUP; a pair that
/// does not load leaves the one in force and says why.
fn spawn_tls_reload_on_sighup(tls: Tls) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => hangup,
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGHUP; the TLS certificate will not be reloaded");
            return;
        }
    };
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => {
                    tracing::info!(cert = %tls.files().cert.display(), "SIGHUP: TLS certificate reloaded; new connections get it")
                }
                Err(error) => {
                    tracing::error!(%error, "SIGHUP: TLS certificate not reloaded; the previous one stays")
                }
            }
        }
    });
}

/// SIGHUP reopens the CDR file by its path (after logrotate renamed it).
fn spawn_cdr_reopen_on_sighup(control: CdrControl) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => hangup,
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGHUP; the CDR file will not be reopened");
            return;
        }
    };
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            control.reopen();
            tracing::info!("SIGHUP: the CDR file is reopened by its path before the next record");
        }
    });
}

fn random_secret() -> std::io::Result<Vec<u8>> {
    let mut secret = vec![0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut secret)?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ConnectionLimits = ConnectionLimits {
        max_total: 2048,
        max_per_source: 64,
    };

    #[test]
    fn connection_limits_are_lowered_below_the_file_limit_with_room_for_rest() {
        assert_eq!(fit_to_file_limit(LIMITS, 256, Some(8192)), LIMITS);
        assert_eq!(fit_to_file_limit(LIMITS, 256, None), LIMITS);
        assert_eq!(
            fit_to_file_limit(LIMITS, 256, Some(1024)),
            ConnectionLimits {
                max_total: 1024 - 256 - 256,
                max_per_source: 64
            }
        );
        assert_eq!(fit_to_file_limit(LIMITS, 256, Some(100)).max_total, 1);
    }

    #[test]
    fn the_soft_file_limit_is_raised_to_the_hard_one() {
        let limit = raise_file_limit().expect("the limit is readable");
        let mut now = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes only into the struct it is given.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) }, 0);
        assert_eq!(now.rlim_cur, now.rlim_max);
        assert_eq!(limit, now.rlim_cur);
    }
}
