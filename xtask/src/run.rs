//! `cargo xtask run`: the whole system on one box.
//!
//! Builds the eBPF object when the machine can, builds the three daemons,
//! prepares a demo directory (`.run/`: dialplan, audio, data, API token), starts
//! rtpmanager, signaling and ui, and stops them all on Ctrl-C or SIGTERM, or
//! as soon as one of them exits.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{self, SigHandler, Signal};
use nix::unistd::Pid;

use crate::util::{self, workspace_root};
use crate::{ebpf, setup};

#[derive(clap::Args)]
pub struct RunArgs {
    /// Build and run optimised binaries.
    #[arg(long)]
    release: bool,
    /// Fast-path mode for the RTP manager (auto, xdp, xdp-generic, tc, off).
    #[arg(long, default_value = "auto")]
    fast_path: String,
    /// SIP port of the signaling server.
    #[arg(long, default_value_t = 5060)]
    sip_port: u16,
    /// Port of the dashboard.
    #[arg(long, default_value_t = 3000)]
    ui_port: u16,
    /// Skip `cargo xtask setup` (the prerequisites are known to be present).
    #[arg(long)]
    no_setup: bool,
    /// Log level of the three daemons.
    #[arg(long, default_value = "info")]
    log_level: String,
}

/// The realm of deploy/demo/users.toml.
const DEMO_REALM: &str = "switchboard";

/// The demo's API token, in `.run/`: signaling's --api-token-file, the
/// dashboard's --backend-token-file and the dashboard's login.
const API_TOKEN_FILE: &str = "api-token";

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    if !args.no_setup {
        setup::run(&setup::SetupArgs {})?;
    }
    let missing = ebpf::missing_prerequisites();
    if missing.is_empty() {
        if let Err(e) = ebpf::build(&ebpf::BuildArgs {}) {
            println!("run: eBPF build failed, continuing userspace-only: {e:#}");
        }
    } else {
        println!("run: eBPF object not built (prerequisites missing, see `cargo xtask setup`); the RTP manager runs userspace-only");
    }

    let mut build = util::cargo();
    build.args([
        "build",
        "--bins",
        "-p",
        "switchboard-rtpmanager",
        "-p",
        "switchboard-signaling",
        "-p",
        "switchboard-ui",
    ]);
    if args.release {
        build.arg("--release");
    }
    util::run(&mut build)?;
    let bin_dir =
        workspace_root()
            .join("target")
            .join(if args.release { "release" } else { "debug" });

    let demo = prepare_demo_dir()?;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        signal::signal(Signal::SIGINT, SigHandler::Handler(request_stop))
            .context("SIGINT handler")?;
        signal::signal(Signal::SIGTERM, SigHandler::Handler(request_stop))
            .context("SIGTERM handler")?;
    }

    let mut children: Vec<(&str, Child)> = Vec::new();
    let result = start_all(args, &bin_dir, &demo, &mut children).and_then(|()| {
        println!();
        println!("Switchboard is running:");
        println!(
            "  SIP        udp+tcp 0.0.0.0:{} (realm {DEMO_REALM}; users 1001-1003, passwords demo1001-demo1003)",
            args.sip_port
        );
        println!("  REST API   http://127.0.0.1:8080/api/v1/health (token: .run/api-token)");
        println!(
            "  dashboard  http://127.0.0.1:{}/ (log in with the token: cat .run/api-token)",
            args.ui_port
        );
        println!("  gRPC       127.0.0.1:9090 (rtpmanager)");
        println!("Press Ctrl-C to stop.");
        supervise(&mut children)
    });
    stop_all(&mut children);
    result
}

fn start_all(
    args: &RunArgs,
    bin_dir: &Path,
    demo: &Path,
    children: &mut Vec<(&'static str, Child)>,
) -> anyhow::Result<()> {
    let log = args.log_level.as_str();
    let mut rtpmanager = Command::new(bin_dir.join("switchboard-rtpmanager"));
    rtpmanager.args([
        "--grpc-port",
        "9090",
        "--log-level",
        log,
        "--fast-path",
        &args.fast_path,
    ]);
    rtpmanager.arg("--audio-path").arg(demo.join("audio"));
    spawn(children, "rtpmanager", &mut rtpmanager)?;
    // Signaling would only log the manager as down until it listens.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", 9090)).is_err() {
        if Instant::now() > deadline || STOP.load(Ordering::SeqCst) {
            bail!("the RTP manager did not listen on 127.0.0.1:9090 within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut signaling = Command::new(bin_dir.join("switchboard-signaling"));
    signaling.args([
        "--port",
        &args.sip_port.to_string(),
        "--rtpmanager",
        "127.0.0.1:9090",
        "--rest-port",
        "8080",
    ]);
    signaling.args(["--log-level", log]);
    signaling.arg("--dialplan").arg(demo.join("dialplan.json"));
    signaling.arg("--data-dir").arg(demo.join("data"));
    signaling.arg("--users-file").arg(demo.join("users.toml"));
    signaling.args(["--realm", DEMO_REALM]);
    // The demo runs the API as deployed: with a token, which the dashboard
    // uses for its reads and the operator enters at its login.
    signaling
        .arg("--api-token-file")
        .arg(demo.join(API_TOKEN_FILE));
    spawn(children, "signaling", &mut signaling)?;

    let mut ui = Command::new(bin_dir.join("switchboard-ui"));
    ui.args([
        "--port",
        &args.ui_port.to_string(),
        "--backends",
        "local=http://127.0.0.1:8080",
        "--log-level",
        log,
    ]);
    ui.arg("--backend-token-file")
        .arg(demo.join(API_TOKEN_FILE));
    spawn(children, "ui", &mut ui)?;
    Ok(())
}

fn spawn(
    children: &mut Vec<(&'static str, Child)>,
    name: &'static str,
    cmd: &mut Command,
) -> anyhow::Result<()> {
    println!("+ {}", util::describe(cmd));
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    children.push((name, child));
    Ok(())
}

/// Waits until a stop is requested or a daemon exits on its own.
fn supervise(children: &mut [(&str, Child)]) -> anyhow::Result<()> {
    while !STOP.load(Ordering::SeqCst) {
        for (name, child) in children.iter_mut() {
            if let Some(status) = child.try_wait().context("waiting for a daemon")? {
                bail!("{name} exited on its own ({status}); stopping the others");
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("run: stopping");
    Ok(())
}

/// SIGTERM to each daemon we started, by pid; SIGKILL after 10 s.
fn stop_all(children: &mut [(&str, Child)]) {
    for (_, child) in children.iter() {
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for (name, child) in children.iter_mut() {
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    println!("run: {name} stopped ({status})");
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                _ => {
                    println!("run: {name} did not stop in time; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
    }
}

/// Creates `.run/` with the demo dialplan and users, the data directory and an audio
/// directory holding a synthesised announcement.
fn prepare_demo_dir() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let demo = root.join(".run");
    std::fs::create_dir_all(demo.join("data")).context("creating .run/data")?;
    std::fs::create_dir_all(demo.join("audio")).context("creating .run/audio")?;
    std::fs::copy(
        root.join("deploy/demo/dialplan.json"),
        demo.join("dialplan.json"),
    )
    .context("copying the demo dialplan")?;
    std::fs::copy(root.join("deploy/demo/users.toml"), demo.join("users.toml"))
        .context("copying the demo users")?;
    write_api_token(&demo.join(API_TOKEN_FILE))?;
    let announcement = demo.join("audio/welcome.wav");
    if !announcement.exists() {
        if let Err(e) = synthesise_announcement(&announcement) {
            println!(
                "run: no demo announcement ({e:#}); playback routes will report the missing file"
            );
        }
    }
    Ok(demo)
}

/// A random API token (32 bytes, hex) in `path`, readable by the owner
/// only; an existing one is kept so a browser's login survives a restart.
fn write_api_token(path: &Path) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    if path.exists() {
        return Ok(());
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .context("reading /dev/urandom for the demo API token")?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| writeln!(file, "{token}"))
        .with_context(|| format!("writing {}", path.display()))
}

/// Speaks the demo announcement with espeak-ng and converts it to 8 kHz
/// mono 16-bit WAV with sox (both Debian packages that `setup` installs).
pub fn synthesise_announcement(path: &Path) -> anyhow::Result<()> {
    if !util::on_path("espeak-ng") || !util::on_path("sox") {
        bail!("espeak-ng and sox are needed (cargo xtask setup installs them)");
    }
    let raw = path.with_extension("raw.wav");
    let text = "Welcome to Switchboard. This announcement is played by the RTP manager.";
    let spoke = util::succeeds(Command::new("espeak-ng").arg("-w").arg(&raw).arg(text));
    if !spoke {
        bail!("espeak-ng failed");
    }
    let converted = util::succeeds(
        Command::new("sox")
            .arg(&raw)
            .args(["-r", "8000", "-c", "1", "-b", "16"])
            .arg(path),
    );
    let _ = std::fs::remove_file(&raw);
    if !converted {
        bail!("sox failed");
    }
    Ok(())
}
