//! `cargo xtask bench …`: benchmarks against release builds of the daemons.
//!
//! `media`: the RTP manager's relay on a network-namespace bed (see
//! rtpmanager/benches/media.rs), for one media path at several call counts,
//! at 50 packets a second per call and direction or a flood (`--rate`,
//! `--one-way`), with or without admission control (`--capacity-pps`).
//!
//! `program`: the XDP and TC programs' own run time per packet on crafted
//! packets (rtpmanager/benches/program.rs), forwarding and pass cases.
//!
//! `sip-register`: starts switchboard-signaling (release) with a fresh data
//! directory and runs SIPp at increasing rates, with digest authentication
//! (signaling/tests/sipp/register_auth.xml: REGISTER, 401, REGISTER, 200,
//! one user) and without (register_plain.xml: REGISTER, 200, 10,000 users
//! in turn, the server anonymous), each on a server of its own. Prints per
//! rate the registrations per second achieved, failures, the percentiles
//! of the whole exchange and the server's CPU. Every 200 follows the
//! journal fsync that covers it (group commit). `--signaling PATH` runs
//! another build (an older commit's, for a baseline). The server is stopped
//! by pid.
//!
//! `sip-calls`: starts switchboard-rtpmanager and switchboard-signaling
//! (release) on loopback with a dialplan that dials a SIPp callee
//! (signaling/tests/sipp/b2bua_uas.xml), then runs the SIPp caller
//! (b2bua_uac.xml: INVITE with SDP, 180, 200, ACK, BYE) at increasing
//! rates. Every call goes through the manager (Offer, Answer with its
//! bridge, Delete), which saves its calls in a state directory as
//! deployed. Prints per rate the calls per second achieved,
//! failures, the INVITE→200 percentiles and the CPU of signaling and of
//! the manager, then the highest rate with no failed call.
//! `--hold-ms MS` keeps each call up that long between its ACK and its
//! BYE, so the manager holds rate × hold calls as a live one does (its
//! saved state is then every call up, not the few in setup).
//! With `--sse-clients N` it runs the rates twice, with the same REGISTER
//! load (`--register-rate`, ten contacts each: ten binding events per
//! REGISTER) beside the calls: first alone, then with N clients reading
//! `/api/v1/events` and one that never reads, then alone again (the same
//! daemons run all three, so the third shows what order alone does); it
//! prints the first two side by side, the third, and what the readers
//! received.
//!
//! Both SIP benchmarks also time each exchange on the wire when run as
//! root with tcpdump installed: a capture on loopback of the SIPp client's
//! traffic with the server, each request matched to its final response by
//! Call-ID and CSeq (INVITE→200, REGISTER→200), with microsecond
//! timestamps; SIPp's own times come in steps of the kernel's 4 ms tick on
//! this machine, so the wire columns are the ones to compare. For calls
//! the same capture gives two shares of INVITE→200: the INVITE's wait for
//! the SIP core (to the 100 Trying the core sends as it takes the INVITE)
//! and the far end's (the callee's INVITE→200); and signaling's `/metrics`,
//! read before and after each rate, give its media requests' count, mean
//! and 99 % bound per operation (`switchboard_media_request_seconds`).

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use switchboard_testkit::daemon::{manager_args, Options};
use switchboard_testkit::{sipp, wait_until};

use crate::util::{self, workspace_root};

mod media_requests;
mod wire;

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    target: BenchTarget,
}

#[derive(clap::Subcommand)]
enum BenchTarget {
    /// REGISTER with digest authentication through SIPp, at increasing rates.
    SipRegister(SipRegisterArgs),
    /// Calls (INVITE/200/ACK/BYE with SDP) through signaling and the RTP
    /// manager, SIPp on both sides, at increasing rates.
    SipCalls(SipCallsArgs),
    /// The SIP core's own CPU per REGISTER and per call, in process,
    /// without sockets or SIPp (signaling/benches/sip_core.rs): the figure
    /// to compare two builds with on a noisy host.
    SipCore(SipCoreArgs),
    /// Bridged calls relayed by the RTP manager on a network-namespace bed
    /// (needs root): loss, latency and CPU per packet for one media path.
    Media(MediaArgs),
    /// Per-packet run time of the XDP and TC programs on crafted packets
    /// (BPF_PROG_TEST_RUN, needs root): forwarding and pass cases.
    Program(ProgramArgs),
    /// A SIGKILLed RTP manager's calls moved to the others: calls that
    /// survived and media gaps (bench_failover.rs).
    Failover(crate::bench_failover::FailoverArgs),
}

#[derive(clap::Args)]
struct SipCoreArgs {
    /// What to measure: register, calls or both.
    #[arg(long, default_value = "both", value_parser = ["register", "calls", "both"])]
    work: String,
    /// Calls per round (through the B2BUA, the manager answered in process).
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..))]
    calls: u32,
    /// Users, each registering once per pass.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    users: u32,
    /// Passes over the users; the first warms up and is not counted.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..))]
    passes: u32,
    /// REGISTERs per journal sync (28: 14,000/s with syncs 2 ms apart);
    /// for calls, the calls taken through each step of the flow together.
    #[arg(long, default_value_t = 28, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// Rounds, each with a new core and store; best, median and worst are
    /// printed.
    #[arg(long, default_value_t = 11, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
}

#[derive(clap::Args)]
struct ProgramArgs {
    /// Runs per case (the kernel reports their mean).
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
}

#[derive(clap::Args)]
struct MediaArgs {
    /// Media path: userspace, xdp, xdp-generic or tc.
    #[arg(long, default_value = "userspace")]
    path: String,
    /// Numbers of bridged calls, comma-separated.
    #[arg(long, default_value = "100,500,1000,2000,4000")]
    calls: String,
    /// Seconds measured per point (after a 2 s warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Test bed: one-interface (callers and callees behind the relay's one
    /// device) or two-interface (an SBC: callers on a0, callees on b0,
    /// the manager with one named interface per side).
    #[arg(long, default_value = "one-interface", value_parser = ["one-interface", "two-interface"])]
    bed: String,
    /// Packets a second per call and direction (50: G.711 at 20 ms; more
    /// makes a flood, e.g. `--calls 100 --rate 2500 --one-way` is 250 kpps).
    #[arg(long, default_value_t = 50)]
    rate: u64,
    /// Only the callers send (a one-way flood towards the callees).
    #[arg(long)]
    one_way: bool,
    /// The manager's --relay-capacity-pps: 0 (default) turns admission
    /// control off so every point's calls are carried; with a capacity,
    /// offers past it are refused and the point shows the calls admitted.
    #[arg(long, default_value_t = 0)]
    capacity_pps: u32,
}

#[derive(clap::Args)]
struct SipRegisterArgs {
    /// Offered rates, registrations per second, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,4000,8000,14000")]
    rates: Vec<u32>,
    /// Seconds per rate.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// `digest` (REGISTER, 401, REGISTER with MD5 credentials, 200), `none`
    /// (REGISTER, 200; the server anonymous) or `both`, one after the other.
    #[arg(long, default_value = "both", value_parser = ["digest", "none", "both"])]
    auth: String,
    /// Where bindings are stored: `journal` (the server's own, fsynced),
    /// `redis` (a redis-server started for the run, shared location store
    /// with append-only fsync every second, its CPU shown) or `both`.
    #[arg(long, default_value = "journal", value_parser = ["journal", "redis", "both"])]
    store: String,
    /// The signaling binary to measure instead of the workspace's release
    /// build (for a baseline: an older commit's build).
    #[arg(long)]
    signaling: Option<std::path::PathBuf>,
}

#[derive(clap::Args)]
struct SipCallsArgs {
    /// Offered rates, calls per second, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "50,100,200,400")]
    rates: Vec<u32>,
    /// Seconds per rate.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Clients reading /api/v1/events in a second run of the rates (plus
    /// one that never reads); 0: one run, no event load.
    #[arg(long, default_value_t = 0)]
    sse_clients: usize,
    /// REGISTERs per second (ten contacts each) beside the calls in both
    /// runs when --sse-clients is set, so the event stream carries events.
    #[arg(long, default_value_t = 100)]
    register_rate: u32,
    /// Signaling servers sharing one Redis (started for the run) and the
    /// manager; each gets its own SIPp caller at rate / N, and the table
    /// sums them. 1: one server, no Redis.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4))]
    nodes: u32,
    /// The signaling binary to measure instead of the workspace's release
    /// build (for a baseline: an older commit's build).
    #[arg(long)]
    signaling: Option<std::path::PathBuf>,
    /// The RTP manager binary likewise.
    #[arg(long)]
    rtpmanager: Option<std::path::PathBuf>,
    /// How long each call stays up between its 200 and its BYE, in ms: the
    /// calls held grow to rate × hold, as on a live system, where the
    /// manager's saved state is every call up, not the few in setup.
    #[arg(long, default_value_t = 0)]
    hold_ms: u32,
}

impl SipCallsArgs {
    /// The manager to measure, started with its calls saved under `work`
    /// as deployed (deploy/etc/rtpmanager.toml) and no admission limit: the
    /// calls carry no media, and a hold (--hold-ms) keeps thousands up.
    fn start_manager(&self, root: &Path, work: &Path) -> anyhow::Result<(Daemon, String)> {
        let binary = self
            .rtpmanager
            .clone()
            .unwrap_or_else(|| root.join("target/release/switchboard-rtpmanager"));
        let state = work.join("manager-state");
        let state = state.to_string_lossy();
        start_manager(
            &binary,
            &["--state-dir", &state, "--relay-capacity-pps", "0"],
        )
    }

    /// `rate` calls a second for the run's seconds, each up for the hold.
    fn load(&self, rate: u32) -> Load {
        Load {
            rate,
            seconds: self.seconds,
            hold_ms: self.hold_ms,
        }
    }
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    match &args.target {
        BenchTarget::SipRegister(args) => sip_register(args),
        BenchTarget::SipCalls(args) => sip_calls(args),
        BenchTarget::SipCore(args) => sip_core(args),
        BenchTarget::Media(args) => media(args),
        BenchTarget::Program(args) => program(args),
        BenchTarget::Failover(args) => crate::bench_failover::failover(args),
    }
}

/// Runs rtpmanager/benches/program.rs (release): each program on crafted
/// packets in a namespace it creates, timed by the kernel.
/// Runs signaling/benches/sip_core.rs (release), which prints a table.
fn sip_core(args: &SipCoreArgs) -> anyhow::Result<()> {
    util::run(
        util::cargo()
            .args([
                "bench",
                "-p",
                "switchboard-signaling",
                "--bench",
                "sip_core",
                "--",
            ])
            .args(["--work", &args.work])
            .args(["--calls", &args.calls.to_string()])
            .args(["--users", &args.users.to_string()])
            .args(["--passes", &args.passes.to_string()])
            .args(["--batch", &args.batch.to_string()])
            .args(["--rounds", &args.rounds.to_string()]),
    )
}

fn program(args: &ProgramArgs) -> anyhow::Result<()> {
    if !util::is_root() {
        bail!("the program benchmark loads eBPF programs in a new namespace: run it as root");
    }
    crate::ebpf::build(&crate::ebpf::BuildArgs {})?;
    util::run(
        util::cargo()
            .args([
                "bench",
                "-p",
                "switchboard-rtpmanager",
                "--bench",
                "program",
                "--",
            ])
            .args(["--repeat", &args.repeat.to_string()]),
    )
}

/// Runs rtpmanager/benches/media.rs (release), which builds the namespace
/// bed, starts the manager with the requested fast path and prints a table.
fn media(args: &MediaArgs) -> anyhow::Result<()> {
    if !util::is_root() {
        bail!("the media benchmark builds network namespaces: run it as root");
    }
    if args.path != "userspace" && crate::ebpf::missing_prerequisites().is_empty() {
        crate::ebpf::build(&crate::ebpf::BuildArgs {})?;
    }
    util::run(
        util::cargo()
            .args([
                "bench",
                "-p",
                "switchboard-rtpmanager",
                "--bench",
                "media",
                "--",
            ])
            .args([
                "--path",
                &args.path,
                "--calls",
                &args.calls,
                "--seconds",
                &args.seconds.to_string(),
                "--bed",
                &args.bed,
                "--rate",
                &args.rate.to_string(),
                "--capacity-pps",
                &args.capacity_pps.to_string(),
            ])
            .args(args.one_way.then_some("--one-way")),
    )
}

pub(crate) use switchboard_testkit::daemon::Daemon;
pub(crate) use switchboard_testkit::free_port;
pub(crate) use switchboard_testkit::sipp::count as sipp_counter;

/// Prints and starts `command` as `name`, stopped by SIGTERM (10 s, then
/// SIGKILL) when dropped; with `echo`, its stderr goes to ours.
pub(crate) fn spawn(name: &str, command: &mut Command, echo: bool) -> anyhow::Result<Daemon> {
    println!("+ {}", util::describe(command));
    let options = Options {
        echo,
        grace: Duration::from_secs(10),
        ..Options::default()
    };
    Daemon::try_spawn_with(name, command, options).with_context(|| format!("starting {name}"))
}

/// Builds the release daemons the SIP benches and the soak start.
pub(crate) fn build_release_daemons() -> anyhow::Result<()> {
    util::run(util::cargo().args([
        "build",
        "--release",
        "-p",
        "switchboard-signaling",
        "-p",
        "switchboard-rtpmanager",
    ]))?;
    Ok(())
}

/// Writes `work/dialplan.json`: each route `(id, pattern, port)` dials
/// `sip:bob@127.0.0.1:port` (a SIPp callee), 30 s.
pub(crate) fn write_dialplan(work: &Path, routes: &[(&str, &str, u16)]) -> anyhow::Result<String> {
    let routes: Vec<String> = routes
        .iter()
        .map(|(id, pattern, port)| {
            format!(
                r#"{{"id": "{id}", "pattern": "{pattern}", "actions": [
                {{"type": "dial", "params": {{"targets": ["sip:bob@127.0.0.1:{port}"], "timeout": 30}}}}]}}"#
            )
        })
        .collect();
    let path = work.join("dialplan.json");
    std::fs::write(
        &path,
        format!(
            r#"{{"version": "1.0", "routes": [{}]}}"#,
            routes.join(",\n")
        ),
    )
    .context("writing the dialplan")?;
    path.to_str()
        .map(str::to_owned)
        .context("a UTF-8 temporary directory")
}

/// The release signaling server on loopback with free SIP and REST ports,
/// the data directory `work/data`, the RTP manager(s) `rtpmanager`, and
/// `extra` options; its warnings go to our stderr.
pub(crate) struct Signaling {
    pub(crate) daemon: Daemon,
    pub(crate) sip_port: u16,
    pub(crate) rest_port: u16,
}

pub(crate) fn start_signaling(
    work: &Path,
    rtpmanager: &str,
    extra: &[&str],
) -> anyhow::Result<Signaling> {
    let binary = workspace_root().join("target/release/switchboard-signaling");
    start_signaling_binary(&binary, work, rtpmanager, extra)
}

/// [`start_signaling`] with another binary.
pub(crate) fn start_signaling_binary(
    binary: &Path,
    work: &Path,
    rtpmanager: &str,
    extra: &[&str],
) -> anyhow::Result<Signaling> {
    let (sip_port, rest_port) = (free_port(), free_port());
    let mut command = Command::new(binary);
    command
        .args(["--bind-address", "127.0.0.1"])
        .args(["--port", &sip_port.to_string()])
        .args(["--rest-port", &rest_port.to_string()])
        .args(["--rtpmanager", rtpmanager, "--log-level", "warn"])
        .arg("--data-dir")
        .arg(work.join("data"))
        .args(extra);
    let daemon = spawn("switchboard-signaling", &mut command, true)?;
    Ok(Signaling {
        daemon,
        sip_port,
        rest_port,
    })
}

struct RateResult {
    offered: u32,
    successful: u64,
    failed: u64,
    elapsed: Duration,
    times_ms: Vec<f64>,
    /// The same exchanges timed on the wire (a capture on loopback, µs
    /// resolution: SIPp's own times come in steps of the kernel's 4 ms
    /// tick here), when tcpdump could run.
    wire_ms: Option<Vec<f64>>,
    /// What the far end took for the server's own requests (a B2BUA's
    /// callee answering its INVITE), on the wire; empty without one.
    far_end_ms: Vec<f64>,
    /// The client's INVITEs to the server's first response (its 100
    /// Trying, sent when the SIP core takes the INVITE), on the wire:
    /// how long they waited for the core; empty for other methods.
    first_response_ms: Vec<f64>,
    /// The server's own times of its media requests over the rate, per
    /// operation; empty for other benchmarks.
    media_requests: Vec<media_requests::OpFigures>,
    /// The server's CPU over the run, percent of one core, when measured.
    cpu_percent: Option<f64>,
    /// The RTP manager's, likewise, for the call benchmarks.
    manager_cpu_percent: Option<f64>,
}

fn sip_register(args: &SipRegisterArgs) -> anyhow::Result<()> {
    let Some(sipp) = util::find_on_path("sipp") else {
        bail!("sipp is not installed (cargo xtask setup installs the sip-tester package)");
    };
    let binary = match &args.signaling {
        Some(binary) => binary.clone(),
        None => {
            util::run(util::cargo().args(["build", "--release", "-p", "switchboard-signaling"]))?;
            workspace_root().join("target/release/switchboard-signaling")
        }
    };
    let work = std::env::temp_dir().join(format!("switchboard-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let mut tables = Vec::new();
    let stores: &[&str] = match args.store.as_str() {
        "both" => &["journal", "redis"],
        "redis" => &["redis"],
        _ => &["journal"],
    };
    for &store in stores {
        let durable = match store {
            "redis" => "Redis script (group commit) before each 200",
            _ => "journal fsync (group commit) before each 200",
        };
        if args.auth != "digest" {
            let dir = work.join(format!("none-{store}"));
            let results = register_rates(&sipp, &binary, &dir, false, store, args)?;
            tables.push((
                format!("sip-register --auth none --store {store}: REGISTER + 200, 10,000 users in turn, {durable}"),
                results,
            ));
        }
        if args.auth != "none" {
            let dir = work.join(format!("digest-{store}"));
            let results = register_rates(&sipp, &binary, &dir, true, store, args)?;
            tables.push((
                format!("sip-register --auth digest --store {store}: REGISTER + 401 + REGISTER + 200, MD5, {durable}"),
                results,
            ));
        }
    }
    for (title, results) in &tables {
        print_table(title, results);
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// Users of the unauthenticated run: SIPp takes them in turn.
const PLAIN_USERS: u32 = 10_000;

/// One server (`binary`, fresh data directory in `work`) and SIPp at each
/// rate against it, with digest authentication or without.
fn register_rates(
    sipp: &Path,
    binary: &Path,
    work: &Path,
    digest: bool,
    store: &str,
    args: &SipRegisterArgs,
) -> anyhow::Result<Vec<RateResult>> {
    std::fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    // A redis-server of the run's own: the shared location store.
    let redis = if store == "redis" {
        let Some(redis) =
            switchboard_testkit::redis::Redis::start_with_fsync_every_second(&work.join("redis"))
        else {
            bail!("redis-server is not installed (cargo xtask setup installs it)");
        };
        Some(redis)
    } else {
        None
    };
    let utf8 = |path: &Path| {
        path.to_str()
            .map(str::to_owned)
            .context("a UTF-8 temporary directory")
    };
    let mut options: Vec<String> = [
        "--rtpmanager-health-interval",
        "60",
        "--realm",
        "bench",
        // SIPp is one source: the per-source rate limit would cap the bench.
        "--source-rate-limit",
        "0",
    ]
    .map(str::to_owned)
    .to_vec();
    if let Some(redis) = &redis {
        options.extend(["--location-store".to_owned(), redis.url()]);
    }
    // Each mode's server options, scenario and SIPp arguments, decided once.
    let (scenario, sipp_args): (&str, Vec<String>) = if digest {
        let users = work.join("users.toml");
        std::fs::write(
            &users,
            "[[user]]\nname = \"1001\"\npassword = \"bench1001\"\n",
        )
        .context("writing the users file")?;
        options.extend([
            "--auth-algorithms".into(),
            "MD5".into(),
            "--users-file".into(),
        ]);
        options.push(utf8(&users)?);
        let auth = ["-s", "1001", "-au", "1001", "-ap", "bench1001"];
        ("register_auth.xml", auth.map(str::to_owned).to_vec())
    } else {
        let injection = work.join("users.csv");
        let mut csv = String::from("SEQUENTIAL\n");
        for n in 0..PLAIN_USERS {
            csv.push_str(&format!("u{n};\n"));
        }
        std::fs::write(&injection, csv).context("writing the SIPp injection file")?;
        options.extend(["--auth".into(), "anonymous".into()]);
        (
            "register_plain.xml",
            vec!["-inf".to_owned(), utf8(&injection)?],
        )
    };
    let scenario = workspace_root().join("signaling/tests/sipp").join(scenario);
    let sipp_args: Vec<&str> = sipp_args.iter().map(String::as_str).collect();
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    let signaling = start_signaling_binary(binary, work, "127.0.0.1:9", &options)?;
    let sip_port = signaling.sip_port;
    let listening = wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
        TcpStream::connect(("127.0.0.1", sip_port)).is_ok()
    });
    if !listening {
        bail!("switchboard-signaling did not listen on {sip_port} within 20 s");
    }
    let mut results = Vec::new();
    for &rate in &args.rates {
        let cpu_before = signaling.daemon.cpu_time();
        let redis_before = redis.as_ref().map(|r| r.cpu_time());
        let load = Load {
            rate,
            seconds: args.seconds,
            hold_ms: 0,
        };
        let mut result = run_sipp(
            sipp,
            (&scenario, "REGISTER"),
            &sipp_args,
            work,
            sip_port,
            load,
        )?;
        let used = signaling.daemon.cpu_time().saturating_sub(cpu_before);
        result.cpu_percent = Some(100.0 * used.as_secs_f64() / result.elapsed.as_secs_f64());
        if let (Some(redis), Some(before)) = (&redis, redis_before) {
            let used = redis.cpu_time().saturating_sub(before);
            println!(
                "  redis-server CPU {:.1} % of one core",
                100.0 * used.as_secs_f64() / result.elapsed.as_secs_f64()
            );
        }
        print_result(&result);
        results.push(result);
    }
    drop(signaling);
    drop(redis);
    Ok(results)
}

/// One SIPp load: `rate` calls a second for `seconds`, each up for
/// `hold_ms` (SIPp's `-d`: the length of the scenario's pause).
#[derive(Clone, Copy)]
struct Load {
    rate: u32,
    seconds: u32,
    hold_ms: u32,
}

/// Runs one SIPp `load` against the server, with the scenario's own
/// arguments, in a directory of its own; the wire times are those of the
/// scenario's `timed` requests (INVITE, REGISTER) to their 200.
fn run_sipp(
    sipp: &Path,
    (scenario, timed): (&Path, &'static str),
    scenario_args: &[&str],
    work: &Path,
    sip_port: u16,
    load: Load,
) -> anyhow::Result<RateResult> {
    let Load {
        rate,
        seconds,
        hold_ms,
    } = load;
    let dir = work.join(format!("rate-{rate}"));
    std::fs::create_dir_all(&dir)?;
    let calls = rate * seconds;
    // Room for the calls a hold keeps up twice over, never fewer than 5000
    // in progress.
    let held = rate.saturating_mul(hold_ms) / 1000;
    let limit = held.saturating_mul(2).max(5000).to_string();
    let sipp_port = free_port();
    let capture = wire::Capture::start(&dir, sip_port, sipp_port, timed);
    let mut command = sipp::command(sipp, scenario, sipp_port, &dir);
    command
        .args(scenario_args)
        .args([
            "-d",
            &hold_ms.to_string(),
            "-r",
            &rate.to_string(),
            "-m",
            &calls.to_string(),
            "-l",
            &limit,
        ])
        .args([
            "-timeout",
            "120s",
            "-trace_rtt",
            "-rtt_freq",
            "1",
            "-timer_resol",
            "1",
        ])
        .arg(format!("127.0.0.1:{sip_port}"));
    println!("+ {}", util::describe(&command));
    let started = Instant::now();
    let output = command.output().context("running sipp")?;
    let elapsed = started.elapsed();
    let screen = String::from_utf8_lossy(&output.stdout);
    let wire = capture.and_then(wire::Capture::finish);
    Ok(RateResult {
        offered: rate,
        successful: sipp_counter(&screen, "Successful call"),
        failed: sipp_counter(&screen, "Failed call"),
        elapsed,
        times_ms: sipp::response_times_ms(&dir)?,
        wire_ms: wire.as_ref().map(|w| w.times.clone()),
        first_response_ms: wire.as_ref().map(|w| w.first.clone()).unwrap_or_default(),
        far_end_ms: wire.map(|w| w.far).unwrap_or_default(),
        media_requests: Vec::new(),
        cpu_percent: None,
        manager_cpu_percent: None,
    })
}

/// Prints the summary table of a SIPp benchmark.
fn print_table(title: &str, results: &[RateResult]) {
    println!();
    println!("{title}");
    println!(
        "{:>8} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>12} {:>26}",
        "offered",
        "achieved",
        "failed",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "CPU %",
        "wire p50/p90/p99/max ms"
    );
    for r in results {
        let (p50, p90, p99, max) = percentiles(&r.times_ms);
        // The server's, then the manager's when it was measured too.
        let cpu = match (r.cpu_percent, r.manager_cpu_percent) {
            (Some(cpu), Some(manager)) => format!("{cpu:.1}+{manager:.1}"),
            (Some(cpu), None) => format!("{cpu:.1}"),
            _ => "-".to_owned(),
        };
        let wire = r.wire_ms.as_deref().map_or_else(
            || "-".to_owned(),
            |times| {
                let (p50, p90, p99, max) = percentiles(times);
                format!("{p50:.2}/{p90:.2}/{p99:.2}/{max:.1}")
            },
        );
        println!(
            "{:>8} {:>10.1} {:>8} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>12} {:>26}",
            r.offered,
            r.successful as f64 / r.elapsed.as_secs_f64(),
            r.failed,
            p50,
            p90,
            p99,
            max,
            cpu,
            wire
        );
    }
    for r in results {
        if !r.first_response_ms.is_empty() {
            let (p50, p90, p99, max) = percentiles(&r.first_response_ms);
            println!(
                "  at {}/s the INVITE waited for the SIP core (INVITE→100 Trying) p50 {p50:.2} p90 {p90:.2} p99 {p99:.2} max {max:.1} ms of that",
                r.offered
            );
        }
        if !r.far_end_ms.is_empty() {
            let (p50, p90, p99, max) = percentiles(&r.far_end_ms);
            println!(
                "  at {}/s the far end (SIPp callee) took INVITE→200 p50 {p50:.2} p90 {p90:.2} p99 {p99:.2} max {max:.1} ms of that",
                r.offered
            );
        }
        if !r.media_requests.is_empty() {
            let figures: Vec<String> = r
                .media_requests
                .iter()
                .map(|f| {
                    format!(
                        "{} {}× mean {:.2} ms, 99 % ≤ {} ms",
                        f.op, f.requests, f.mean_ms, f.p99_under_ms
                    )
                })
                .collect();
            println!(
                "  at {}/s signaling's media requests took: {}",
                r.offered,
                figures.join("; ")
            );
        }
    }
    if results.iter().any(|r| r.wire_ms.is_none()) {
        println!("(wire times need root and tcpdump: cargo xtask setup installs it)");
    }
}

pub(crate) fn percentiles(times: &[f64]) -> (f64, f64, f64, f64) {
    if times.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN, f64::NAN);
    }
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9), at(0.99), sorted[sorted.len() - 1])
}

fn print_result(r: &RateResult) {
    println!(
        "bench: offered {}/s: {} ok, {} failed in {:.1} s",
        r.offered,
        r.successful,
        r.failed,
        r.elapsed.as_secs_f64()
    );
}

/// Starts the release manager on an ephemeral gRPC port, with `extra`
/// options, and returns it with the address it logged; its log is drained
/// so it never blocks on stderr.
pub(crate) fn start_manager(binary: &Path, extra: &[&str]) -> anyhow::Result<(Daemon, String)> {
    start_manager_on(binary, (30000, 49999), extra)
}

/// [`start_manager`] on the media ports `min..=max` (managers side by side
/// take ranges of their own).
pub(crate) fn start_manager_on(
    binary: &Path,
    (min, max): (u16, u16),
    extra: &[&str],
) -> anyhow::Result<(Daemon, String)> {
    let mut command = Command::new(binary);
    command.args(manager_args(0, (min, max))).args(extra);
    let daemon = spawn("switchboard-rtpmanager", &mut command, false)?;
    let grpc = daemon
        .logged_value("grpc=", Duration::from_secs(20))
        .context("the manager did not log its gRPC address within 20 s")?;
    Ok((daemon, grpc))
}

/// Whether the signaling server reports a healthy RTP manager.
pub(crate) fn manager_healthy(rest_port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", rest_port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(
        stream,
        "GET /api/v1/rtpmanagers HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    // A member's `"health":"healthy"`, not the pool's `"healthy"` count.
    response.contains("\"health\":\"healthy\"")
}

/// The SIPp callee of the call benchmarks (answers every INVITE on
/// `port`, its media to the discard port), given half a second to bind.
fn start_callee(sipp: &Path, scenarios: &Path, work: &Path, port: u16) -> anyhow::Result<Daemon> {
    let callee_dir = work.join("callee");
    std::fs::create_dir_all(&callee_dir)?;
    let mut command = sipp::command(sipp, &scenarios.join("b2bua_uas.xml"), port, &callee_dir);
    command.args(["-key", "rtp_b", "9", "-timeout", "600s"]);
    let callee = spawn("the SIPp callee", &mut command, false)?;
    std::thread::sleep(Duration::from_millis(500));
    Ok(callee)
}

/// Signaling options of every call load: anonymous calls, and neither the
/// per-source rate limit nor the per-source concurrent-call limit (the
/// SIPp peers are one source: the limits would cap the bench, not measure
/// it).
pub(crate) const CALL_LOAD_OPTIONS: [&str; 6] = [
    "--auth",
    "anonymous",
    "--source-rate-limit",
    "0",
    "--max-calls-per-source",
    "0",
];

/// What every call benchmark starts with: SIPp, the release daemons
/// built, the workspace, its SIPp scenarios and a fresh work directory
/// `switchboard-bench-NAME-PID` in the temporary directory.
fn call_bench_setup(name: &str) -> anyhow::Result<(PathBuf, PathBuf, PathBuf, PathBuf)> {
    let Some(sipp) = util::find_on_path("sipp") else {
        bail!("sipp is not installed (cargo xtask setup installs the sip-tester package)");
    };
    build_release_daemons()?;
    let root = workspace_root();
    let scenarios = root.join("signaling/tests/sipp");
    let work =
        std::env::temp_dir().join(format!("switchboard-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    Ok((sipp, root, scenarios, work))
}

/// `sip-calls --nodes N`: N signaling servers sharing a Redis of the run's
/// own and one manager; a SIPp caller per server at rate / N, all at once,
/// towards one SIPp callee. Each server's row, then their sum (times of
/// every call together; CPU summed over the servers).
fn sip_calls_nodes(args: &SipCallsArgs) -> anyhow::Result<()> {
    let (sipp, root, scenarios, work) = call_bench_setup("nodes")?;
    let Some(redis) =
        switchboard_testkit::redis::Redis::start_with_fsync_every_second(&work.join("redis"))
    else {
        bail!("redis-server is not installed (cargo xtask setup installs it)");
    };
    let (manager, grpc) = args.start_manager(&root, &work)?;
    let callee_port = free_port();
    let plan = write_dialplan(&work, &[("bench", "1XXX", callee_port)])?;
    let binary = args
        .signaling
        .clone()
        .unwrap_or_else(|| root.join("target/release/switchboard-signaling"));
    let url = redis.url();
    let mut nodes = Vec::new();
    for n in 1..=args.nodes {
        let node_work = work.join(format!("node-{n}"));
        std::fs::create_dir_all(&node_work)?;
        let id = format!("bench-{n}");
        let mut options = CALL_LOAD_OPTIONS.to_vec();
        options.extend([
            "--dialplan",
            &plan,
            "--location-store",
            &url,
            "--node-id",
            &id,
        ]);
        let node = start_signaling_binary(&binary, &node_work, &grpc, &options)?;
        let rest_port = node.rest_port;
        if !wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            manager_healthy(rest_port)
        }) {
            bail!("signaling node {id} did not report the manager healthy within 20 s");
        }
        nodes.push(node);
    }
    let callee = start_callee(&sipp, &scenarios, &work, callee_port)?;

    let scenario = scenarios.join("b2bua_uac.xml");
    let mut sums = Vec::new();
    for &rate in &args.rates {
        let share = rate / args.nodes;
        let cpu_before: Vec<Duration> = nodes.iter().map(|n| n.daemon.cpu_time()).collect();
        let redis_before = redis.cpu_time();
        let results: Vec<anyhow::Result<RateResult>> = std::thread::scope(|scope| {
            let runs: Vec<_> = nodes
                .iter()
                .enumerate()
                .map(|(i, node)| {
                    let (sipp, scenario, sip_port) = (&sipp, &scenario, node.sip_port);
                    let dir = work.join(format!("node-{}", i + 1)).join("runs");
                    scope.spawn(move || {
                        let caller = ["-s", "1001", "-key", "rtp_a", "9"];
                        run_sipp(
                            sipp,
                            (scenario, "INVITE"),
                            &caller,
                            &dir,
                            sip_port,
                            args.load(share),
                        )
                    })
                })
                .collect();
            runs.into_iter()
                .map(|run| {
                    run.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a SIPp run panicked")))
                })
                .collect()
        });
        let mut sum = RateResult {
            offered: 0,
            successful: 0,
            failed: 0,
            elapsed: Duration::ZERO,
            times_ms: Vec::new(),
            wire_ms: Some(Vec::new()),
            far_end_ms: Vec::new(),
            first_response_ms: Vec::new(),
            media_requests: Vec::new(),
            cpu_percent: Some(0.0),
            manager_cpu_percent: None,
        };
        for (i, result) in results.into_iter().enumerate() {
            let mut result = result?;
            let used = nodes[i].daemon.cpu_time().saturating_sub(cpu_before[i]);
            result.cpu_percent = Some(100.0 * used.as_secs_f64() / result.elapsed.as_secs_f64());
            println!("bench: node {}:", i + 1);
            print_result(&result);
            sum.offered += result.offered;
            sum.successful += result.successful;
            sum.failed += result.failed;
            sum.elapsed = sum.elapsed.max(result.elapsed);
            sum.times_ms.extend(&result.times_ms);
            match (&mut sum.wire_ms, &result.wire_ms) {
                (Some(all), Some(these)) => all.extend(these),
                (all, _) => *all = None,
            }
            sum.far_end_ms.extend(&result.far_end_ms);
            sum.first_response_ms.extend(&result.first_response_ms);
            sum.cpu_percent = sum.cpu_percent.zip(result.cpu_percent).map(|(a, b)| a + b);
        }
        let redis_used = redis.cpu_time().saturating_sub(redis_before);
        println!(
            "bench: all nodes (CPU summed), redis-server CPU {:.1} % of one core:",
            100.0 * redis_used.as_secs_f64() / sum.elapsed.as_secs_f64()
        );
        print_result(&sum);
        sums.push(sum);
    }
    drop(callee);
    drop(nodes);
    drop(manager);
    drop(redis);
    print_table(
        &format!(
            "sip-calls --nodes {}: calls spread over {} signaling servers sharing Redis and one rtpmanager; INVITE→200 times of all calls, signaling CPU summed",
            args.nodes, args.nodes
        ),
        &sums,
    );
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn sip_calls(args: &SipCallsArgs) -> anyhow::Result<()> {
    if args.nodes > 1 {
        return sip_calls_nodes(args);
    }
    let (sipp, root, scenarios, work) = call_bench_setup("calls")?;

    let (manager, grpc) = args.start_manager(&root, &work)?;
    let callee_port = free_port();
    let plan = write_dialplan(&work, &[("bench", "1XXX", callee_port)])?;
    let binary = args
        .signaling
        .clone()
        .unwrap_or_else(|| root.join("target/release/switchboard-signaling"));
    let mut options = CALL_LOAD_OPTIONS.to_vec();
    // The REGISTER load beside --sse-clients binds ten contacts each.
    options.extend(["--max-contacts", "20", "--dialplan", &plan]);
    let signaling = start_signaling_binary(&binary, &work, &grpc, &options)?;
    let (sip_port, rest_port) = (signaling.sip_port, signaling.rest_port);
    let healthy = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        manager_healthy(rest_port)
    });
    if !healthy {
        bail!("switchboard-signaling did not report the manager healthy within 20 s");
    }

    let callee = start_callee(&sipp, &scenarios, &work, callee_port)?;

    // Without, with, and without again: the daemons run through all three,
    // so the last run shows what the order alone does to the figures.
    let with_sse: &[bool] = if args.sse_clients > 0 {
        &[false, true, false]
    } else {
        &[false]
    };
    let mut runs = Vec::new();
    for &sse in with_sse {
        let cpu_before = signaling.daemon.cpu_time();
        let registers = (args.sse_clients > 0)
            .then(|| RegisterLoad::start(sip_port, args.register_rate))
            .transpose()?;
        let clients = sse
            .then(|| SseLoad::start(rest_port, args.sse_clients))
            .transpose()?;
        let phase = work.join(if sse { "with-sse" } else { "without-sse" });
        let mut results = Vec::new();
        for &rate in &args.rates {
            let caller = ["-s", "1001", "-key", "rtp_a", "9"];
            let scenario = scenarios.join("b2bua_uac.xml");
            let before = (signaling.daemon.cpu_time(), manager.cpu_time());
            let requests_before = media_requests::MediaRequests::scrape(rest_port);
            let mut result = run_sipp(
                &sipp,
                (&scenario, "INVITE"),
                &caller,
                &phase,
                sip_port,
                args.load(rate),
            )?;
            let percent =
                |used: Duration| 100.0 * used.as_secs_f64() / result.elapsed.as_secs_f64();
            result.cpu_percent = Some(percent(
                signaling.daemon.cpu_time().saturating_sub(before.0),
            ));
            result.manager_cpu_percent = Some(percent(manager.cpu_time().saturating_sub(before.1)));
            result.media_requests =
                media_requests::MediaRequests::scrape(rest_port).since(&requests_before);
            print_result(&result);
            results.push(result);
        }
        {
            let used = signaling.daemon.cpu_time().saturating_sub(cpu_before);
            println!(
                "bench: switchboard-signaling used {:.1} s of CPU (user + system) {}",
                used.as_secs_f64(),
                if sse {
                    "with the SSE clients"
                } else {
                    "without SSE clients"
                }
            );
        }
        if let Some(registers) = registers {
            let (sent, ok) = registers.finish();
            println!("bench: REGISTERs beside the calls: {sent} sent, {ok} answered 200");
        }
        if let Some(clients) = clients {
            let (counts, ended) = clients.finish();
            println!(
                "bench: {} SSE readers received {:?} events{}; one client never read",
                counts.len(),
                counts,
                if ended { " (a stream ended early)" } else { "" }
            );
        }
        runs.push(results);
    }
    let results = runs.swap_remove(0);
    drop(callee);
    drop(signaling);
    drop(manager);
    print_table(
        &format!(
            "sip-calls: INVITE(SDP)/100/180/200(SDP)/ACK/BYE/200 through signaling + rtpmanager (Offer, Answer with Bridge, Delete); INVITE→200 times; CPU % of one core: signaling+rtpmanager{}",
            if args.hold_ms > 0 {
                format!("; calls held {} ms (achieved and CPU are over the run, hold included)", args.hold_ms)
            } else {
                String::new()
            }
        ),
        &results,
    );
    if let Some(with) = runs.first() {
        print_side_by_side(
            &format!(
                "sip-calls without and with {} SSE readers + 1 that never reads (same REGISTER load: {}/s, 10 contacts each)",
                args.sse_clients, args.register_rate
            ),
            &results,
            with,
        );
    }
    if let Some(again) = runs.get(1) {
        print_table(
            "sip-calls without SSE clients again, after the run with them (the order's own effect)",
            again,
        );
    }
    match results
        .iter()
        .filter(|r| r.failed == 0 && r.successful == u64::from(r.offered) * u64::from(args.seconds))
        .map(|r| r.offered)
        .max()
    {
        Some(rate) => println!("highest rate with 0 failed calls: {rate} calls/s"),
        None => println!("every rate had failed calls"),
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// Clients of `/api/v1/events` during a run: readers that read everything
/// and count the events, and one connection that never reads.
struct SseLoad {
    stop: Arc<AtomicBool>,
    readers: Vec<JoinHandle<(u64, bool)>>,
    stalled: TcpStream,
}

impl SseLoad {
    fn start(rest_port: u16, readers: usize) -> anyhow::Result<SseLoad> {
        let open = || -> anyhow::Result<TcpStream> {
            let mut stream = TcpStream::connect(("127.0.0.1", rest_port))
                .context("connecting to /api/v1/events")?;
            write!(
                stream,
                "GET /api/v1/events HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
            )?;
            Ok(stream)
        };
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for _ in 0..readers {
            let mut stream = open()?;
            stream.set_read_timeout(Some(Duration::from_millis(200)))?;
            let stop = Arc::clone(&stop);
            handles.push(std::thread::spawn(move || {
                let mut buffer = vec![0u8; 64 * 1024];
                let mut events = 0u64;
                let mut tail = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match stream.read(&mut buffer) {
                        Ok(0) => return (events, true),
                        Ok(n) => {
                            // Counted on "\nevent: " across read boundaries.
                            tail.extend_from_slice(&buffer[..n]);
                            events += count(&tail, b"\nevent: ");
                            // Less than a whole needle, so none is counted twice.
                            let keep = tail.len().min(7);
                            tail.drain(..tail.len() - keep);
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => return (events, true),
                    }
                }
                (events, false)
            }));
        }
        Ok(SseLoad {
            stop,
            readers: handles,
            stalled: open()?,
        })
    }

    /// Stops the readers; returns the events each read and whether any
    /// stream ended early.
    fn finish(self) -> (Vec<u64>, bool) {
        self.stop.store(true, Ordering::Relaxed);
        let mut counts = Vec::new();
        let mut ended = false;
        for handle in self.readers {
            let (events, closed) = handle.join().unwrap_or((0, true));
            counts.push(events);
            ended |= closed;
        }
        drop(self.stalled);
        (counts, ended)
    }
}

fn count(haystack: &[u8], needle: &[u8]) -> u64 {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count() as u64
}

/// REGISTERs at a steady rate from one UDP socket, ten contacts each, over
/// 50 addresses-of-record in turn (the first round adds bindings, the
/// next ones refresh them); answers are drained and counted.
struct RegisterLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    thread: JoinHandle<u64>,
}

impl RegisterLoad {
    fn start(sip_port: u16, rate: u32) -> anyhow::Result<RegisterLoad> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.set_nonblocking(true)?;
        let port = socket.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let (stop_flag, answered) = (Arc::clone(&stop), Arc::clone(&ok));
        let thread = std::thread::spawn(move || {
            let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
            let started = Instant::now();
            let mut sent = 0u64;
            let mut buffer = vec![0u8; 65_536];
            while !stop_flag.load(Ordering::Relaxed) {
                let due = started + interval * u32::try_from(sent).unwrap_or(u32::MAX);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep((due - now).min(Duration::from_millis(5)));
                } else {
                    let user = 5000 + sent % 50;
                    let contacts: String = (0..10)
                        .map(|n| format!("Contact: <sip:{user}-{n}@127.0.0.1:{port}>\r\n"))
                        .collect();
                    let text = format!(
                        "REGISTER sip:bench SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKbench{sent}\r\n\
                         Max-Forwards: 70\r\nFrom: <sip:{user}@bench>;tag=b\r\nTo: <sip:{user}@bench>\r\n\
                         Call-ID: bench-{user}\r\nCSeq: {sent} REGISTER\r\n{contacts}Expires: 600\r\nContent-Length: 0\r\n\r\n"
                    );
                    let _ = socket.send_to(text.as_bytes(), ("127.0.0.1", sip_port));
                    sent += 1;
                }
                while let Ok(n) = socket.recv(&mut buffer) {
                    if buffer[..n].starts_with(b"SIP/2.0 200") {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            sent
        });
        Ok(RegisterLoad { stop, ok, thread })
    }

    /// Stops; returns (sent, answered 200).
    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(200));
        let sent = self.thread.join().unwrap_or(0);
        (sent, self.ok.load(Ordering::Relaxed))
    }
}

/// Prints two runs of the same rates side by side.
fn print_side_by_side(title: &str, without: &[RateResult], with: &[RateResult]) {
    println!();
    println!("{title}");
    println!(
        "{:>8} | {:>9} {:>7} {:>8} {:>8} | {:>9} {:>7} {:>8} {:>8}",
        "", "without", "", "", "", "with SSE", "", "", ""
    );
    println!(
        "{:>8} | {:>9} {:>7} {:>8} {:>8} | {:>9} {:>7} {:>8} {:>8}",
        "offered", "calls/s", "failed", "p50 ms", "p99 ms", "calls/s", "failed", "p50 ms", "p99 ms"
    );
    for (a, b) in without.iter().zip(with) {
        let (a50, _, a99, _) = percentiles(&a.times_ms);
        let (b50, _, b99, _) = percentiles(&b.times_ms);
        println!(
            "{:>8} | {:>9.1} {:>7} {:>8.2} {:>8.2} | {:>9.1} {:>7} {:>8.2} {:>8.2}",
            a.offered,
            a.successful as f64 / a.elapsed.as_secs_f64(),
            a.failed,
            a50,
            a99,
            b.successful as f64 / b.elapsed.as_secs_f64(),
            b.failed,
            b50,
            b99
        );
    }
}
