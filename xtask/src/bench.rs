//! `cargo xtask bench …`: benchmarks against release builds of the daemons.
//!
//! `media`: the RTP manager's relay on a network-namespace bed (see
//! rtpmanager/benches/media.rs), for one media path at several call counts.
//!
//! `sip-register`: starts switchboard-signaling (release) with a users file
//! and a fresh data directory, runs SIPp's REGISTER-with-digest scenario
//! (signaling/tests/sipp/register_auth.xml) at increasing rates, and prints
//! per rate the registrations per second achieved, failures and the
//! response-time percentiles of the whole exchange (REGISTER, 401,
//! REGISTER, 200, each 200 after an fsynced journal append). The server is
//! stopped by pid.

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::util::{self, workspace_root};

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    target: BenchTarget,
}

#[derive(clap::Subcommand)]
enum BenchTarget {
    /// REGISTER with digest authentication through SIPp, at increasing rates.
    SipRegister(SipRegisterArgs),
    /// Bridged calls relayed by the RTP manager on a network-namespace bed
    /// (needs root): loss, latency and CPU per packet for one media path.
    Media(MediaArgs),
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
}

#[derive(clap::Args)]
struct SipRegisterArgs {
    /// Offered rates, registrations per second, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "250,500,1000,2000")]
    rates: Vec<u32>,
    /// Seconds per rate.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    match &args.target {
        BenchTarget::SipRegister(args) => sip_register(args),
        BenchTarget::Media(args) => media(args),
    }
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
            ]),
    )
}

/// Stops the server by pid when dropped, whatever happened.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
}

struct RateResult {
    offered: u32,
    successful: u64,
    failed: u64,
    elapsed: Duration,
    times_ms: Vec<f64>,
}

fn sip_register(args: &SipRegisterArgs) -> anyhow::Result<()> {
    let Some(sipp) = util::find_on_path("sipp") else {
        bail!("sipp is not installed (cargo xtask setup installs the sip-tester package)");
    };
    util::run(util::cargo().args(["build", "--release", "-p", "switchboard-signaling"]))?;
    let root = workspace_root();
    let binary = root.join("target/release/switchboard-signaling");
    let scenario = root.join("signaling/tests/sipp/register_auth.xml");
    let work = std::env::temp_dir().join(format!("switchboard-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let users = work.join("users.toml");
    std::fs::write(
        &users,
        "[[user]]\nname = \"1001\"\npassword = \"bench1001\"\n",
    )
    .context("writing the users file")?;

    let sip_port = free_port()?;
    let rest_port = free_port()?;
    let mut command = Command::new(&binary);
    command
        .args([
            "--bind-address",
            "127.0.0.1",
            "--port",
            &sip_port.to_string(),
        ])
        .args([
            "--rest-port",
            &rest_port.to_string(),
            "--rtpmanager",
            "127.0.0.1:9",
        ])
        .args(["--rtpmanager-health-interval", "60", "--log-level", "warn"])
        .args(["--realm", "bench", "--auth-algorithms", "MD5"])
        .arg("--users-file")
        .arg(&users)
        .arg("--data-dir")
        .arg(work.join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    println!("+ {}", util::describe(&command));
    let server = Daemon(command.spawn().context("starting switchboard-signaling")?);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", sip_port)).is_err() {
        if Instant::now() > deadline {
            bail!("switchboard-signaling did not listen on {sip_port} within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut results = Vec::new();
    for &rate in &args.rates {
        let result = run_sipp(&sipp, &scenario, &work, sip_port, rate, args.seconds)?;
        print_result(&result);
        results.push(result);
    }
    drop(server);
    println!();
    println!(
        "sip-register: REGISTER + 401 + REGISTER + 200, digest MD5, journal fsync before each 200"
    );
    println!(
        "{:>8} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "offered", "achieved", "failed", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for r in &results {
        let (p50, p90, p99, max) = percentiles(&r.times_ms);
        println!(
            "{:>8} {:>10.1} {:>8} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            r.offered,
            r.successful as f64 / r.elapsed.as_secs_f64(),
            r.failed,
            p50,
            p90,
            p99,
            max
        );
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn run_sipp(
    sipp: &Path,
    scenario: &Path,
    work: &Path,
    sip_port: u16,
    rate: u32,
    seconds: u32,
) -> anyhow::Result<RateResult> {
    let dir = work.join(format!("rate-{rate}"));
    std::fs::create_dir_all(&dir)?;
    let calls = rate * seconds;
    let mut command = Command::new(sipp);
    command
        .arg("-sf")
        .arg(scenario)
        .args(["-s", "1001", "-au", "1001", "-ap", "bench1001"])
        .args(["-i", "127.0.0.1", "-p", &free_port()?.to_string()])
        .args([
            "-r",
            &rate.to_string(),
            "-m",
            &calls.to_string(),
            "-l",
            "5000",
        ])
        .args([
            "-timeout",
            "120s",
            "-nostdin",
            "-trace_rtt",
            "-rtt_freq",
            "1",
        ])
        .arg(format!("127.0.0.1:{sip_port}"))
        .current_dir(&dir)
        .stdin(Stdio::null());
    println!("+ {}", util::describe(&command));
    let started = Instant::now();
    let output = command.output().context("running sipp")?;
    let elapsed = started.elapsed();
    let screen = String::from_utf8_lossy(&output.stdout);
    let cumulative = |name: &str| -> u64 {
        screen
            .lines()
            .filter(|l| l.trim_start().starts_with(name))
            .filter_map(|l| {
                l.rsplit('|')
                    .next()?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .next_back()
            .unwrap_or(0)
    };
    Ok(RateResult {
        offered: rate,
        successful: cumulative("Successful call"),
        failed: cumulative("Failed call"),
        elapsed,
        times_ms: read_rtt(&dir)?,
    })
}

/// Response times from SIPp's `*_rtt.csv` (`date_ms;response_time_ms;rtd_no`).
fn read_rtt(dir: &Path) -> anyhow::Result<Vec<f64>> {
    let file: Option<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("_rtt.csv"));
    let Some(file) = file else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(&file)?;
    Ok(text
        .lines()
        .filter_map(|line| line.split(';').nth(1)?.trim().parse::<f64>().ok())
        .collect())
}

fn percentiles(times: &[f64]) -> (f64, f64, f64, f64) {
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
