//! `cargo xtask soak`: a bounded endurance run outside CI.
//!
//! Starts switchboard-rtpmanager and switchboard-signaling (release builds,
//! as `cargo xtask bench sip-calls` does) on loopback and drives mixed load
//! for `--minutes` from several loopback sources at once:
//!
//! | source | load | legitimate |
//! |---|---|---|
//! | 127.0.0.1 | SIPp calls (INVITE/200/ACK, 7 s of G.711 each way through the manager, BYE) to a SIPp callee that echoes the media | yes |
//! | 127.0.0.1 | sipsak (one local port, as a phone): REGISTER with a password and OPTIONS pings, one every 2 s | yes |
//! | 127.0.0.2 | SIPp REGISTER with digest authentication | yes |
//! | 127.0.20.66 | random UDP datagrams (1–1400 bytes) to the SIP port | no |
//! | 127.0.20.67 | OPTIONS flood in bursts (10 s on, 20 s off) | no |
//! | 127.0.20.68 | idle TCP connections to the SIP port, reopened when closed | no |
//!
//! It prints each daemon's RSS and open descriptors before the load, their
//! highest during it and after it, the legitimate requests that failed,
//! and the calls left on the manager once the load has stopped (orphans).
//! Sending SIPp's recorded media needs raw sockets: run it as root.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use switchboard_testkit::daemon::{Daemon, Options};

use crate::bench::{
    build_release_daemons, free_port, manager_healthy, sipp_counter, spawn, start_manager,
    write_dialplan,
};
use crate::util::{self, workspace_root};

#[derive(clap::Args)]
pub struct SoakArgs {
    /// Minutes of load.
    #[arg(long, default_value_t = 30)]
    minutes: u64,
    /// Legitimate calls started per second (each lasts about 8 s).
    #[arg(long, default_value_t = 2)]
    calls_per_sec: u32,
    /// OPTIONS per second during a flood burst (0: no flood).
    #[arg(long, default_value_t = 3000)]
    flood_rate: u32,
    /// Idle TCP connections held open.
    #[arg(long, default_value_t = 200)]
    idle_tcp: usize,
    /// Use the release binaries as they are, without building.
    #[arg(long)]
    no_build: bool,
}

/// Counters the load threads share.
#[derive(Default)]
struct Tally {
    calls_ok: AtomicU64,
    calls_failed: AtomicU64,
    registers_ok: AtomicU64,
    registers_failed: AtomicU64,
    sipsak_ok: AtomicU64,
    sipsak_failed: AtomicU64,
    garbage_sent: AtomicU64,
    flood_sent: AtomicU64,
    flood_answered: AtomicU64,
    tcp_opened: AtomicU64,
    tcp_closed_by_server: AtomicU64,
    tcp_refused: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// A daemon's resident memory and open descriptors.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    rss_kb: u64,
    fds: u64,
}

fn usage(pid: u32) -> Usage {
    let rss_kb = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Usage { rss_kb, fds }
}

pub fn run(args: &SoakArgs) -> anyhow::Result<()> {
    let Some(sipp) = util::find_on_path("sipp") else {
        bail!("sipp is not installed (cargo xtask setup installs the sip-tester package)");
    };
    let Some(sipsak) = util::find_on_path("sipsak") else {
        bail!("sipsak is not installed (cargo xtask setup installs it)");
    };
    if !util::is_root() {
        bail!("SIPp sends the calls' recorded media through raw sockets: run the soak as root");
    }
    if !args.no_build {
        build_release_daemons()?;
    }
    let root = workspace_root();
    let work = std::env::temp_dir().join(format!("switchboard-soak-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    let metrics_port = free_port();
    let (manager, grpc) = start_manager(
        &root.join("target/release/switchboard-rtpmanager"),
        &["--metrics-listen", &format!("127.0.0.1:{metrics_port}")],
    )?;
    let callee_port = free_port();
    let sip_port = free_port();
    let rest_port = free_port();
    // sipsak keeps one local port, as a phone keeps its Contact: a new port
    // each run would be a new binding, refused past --max-contacts.
    let sipsak_port = free_port();
    let plan = write_dialplan(&work, &[("soak", "2XXX", callee_port)])?;
    let users = work.join("users.toml");
    std::fs::write(
        &users,
        "[[user]]\nname = \"1001\"\npassword = \"soak1001\"\n\n[[user]]\nname = \"1002\"\npassword = \"soak1002\"\n",
    )
    .context("writing the users file")?;
    let signaling_log = work.join("signaling.log");
    let mut command = Command::new(root.join("target/release/switchboard-signaling"));
    command
        .args(["--bind-address", "0.0.0.0", "--port", &sip_port.to_string()])
        .args(["--rest-port", &rest_port.to_string(), "--rtpmanager", &grpc])
        .args(["--realm", "soak", "--auth-algorithms", "MD5"])
        // The callers and sipsak come from 127.0.0.1; everyone else is
        // challenged.
        .args(["--trusted-networks", "127.0.0.1/32", "--log-level", "warn"])
        .arg("--users-file")
        .arg(&users)
        .arg("--dialplan")
        .arg(&plan)
        .arg("--data-dir")
        .arg(work.join("data"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&signaling_log).context("signaling log file")?);
    println!("+ {}", util::describe(&command));
    // Its log goes to the file, not through us.
    let signaling = Daemon::try_spawn_with(
        "switchboard-signaling",
        &mut command,
        Options {
            grace: Duration::from_secs(10),
            own_output: true,
            ..Options::default()
        },
    )
    .context("starting switchboard-signaling")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !manager_healthy(rest_port) {
        if Instant::now() > deadline {
            bail!("switchboard-signaling did not report the manager healthy within 20 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let callee_dir = work.join("callee");
    std::fs::create_dir_all(&callee_dir)?;
    let scenarios = root.join("xtask/soak");
    let mut command = Command::new(&sipp);
    command
        .arg("-sf")
        .arg(scenarios.join("uas_echo.xml"))
        .args(["-i", "127.0.0.1", "-p", &callee_port.to_string()])
        .args([
            "-mi",
            "127.0.0.1",
            "-mp",
            &free_port().to_string(),
            "-rtp_echo",
        ])
        .args([
            "-nostdin",
            "-timeout",
            &format!("{}s", args.minutes * 60 + 300),
        ])
        .current_dir(&callee_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let callee = spawn("the SIPp callee", &mut command, false)?;
    std::thread::sleep(Duration::from_millis(500));

    let pids = [
        ("rtpmanager", manager.pid()),
        ("signaling", signaling.pid()),
    ];
    let before: Vec<Usage> = pids.iter().map(|(_, pid)| usage(*pid)).collect();
    let mut peak = before.clone();
    println!(
        "soak: {} min of load on SIP port {sip_port}; signaling log: {}",
        args.minutes,
        signaling_log.display()
    );

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let load_end = Instant::now() + Duration::from_secs(args.minutes * 60);
    let sip = SocketAddr::from(([127, 0, 0, 1], sip_port));
    let mut threads = Vec::new();
    {
        let (tally, sipp, work) = (Arc::clone(&tally), sipp.clone(), work.clone());
        let scenario = scenarios.join("uac_media.xml");
        let rate = args.calls_per_sec;
        threads.push(std::thread::spawn(move || {
            sipp_loop(
                &sipp,
                &scenario,
                &work.join("calls"),
                "127.0.0.1",
                &["-s", "2000", "-mi", "127.0.0.1"],
                sip,
                rate,
                load_end,
                |ok, failed| {
                    add(&tally.calls_ok, ok);
                    add(&tally.calls_failed, failed);
                },
            )
        }));
    }
    {
        let (tally, sipp, work) = (Arc::clone(&tally), sipp.clone(), work.clone());
        let scenario = root.join("signaling/tests/sipp/register_auth.xml");
        threads.push(std::thread::spawn(move || {
            sipp_loop(
                &sipp,
                &scenario,
                &work.join("registers"),
                "127.0.0.2",
                &["-s", "1001", "-au", "1001", "-ap", "soak1001"],
                sip,
                5,
                load_end,
                |ok, failed| {
                    add(&tally.registers_ok, ok);
                    add(&tally.registers_failed, failed);
                },
            )
        }));
    }
    {
        let tally = Arc::clone(&tally);
        threads.push(std::thread::spawn(move || {
            sipsak_loop(&sipsak, sip_port, sipsak_port, load_end, &tally)
        }));
    }
    {
        let (tally, stop) = (Arc::clone(&tally), Arc::clone(&stop));
        threads.push(std::thread::spawn(move || garbage(sip, &stop, &tally)));
    }
    {
        let (tally, stop) = (Arc::clone(&tally), Arc::clone(&stop));
        let rate = args.flood_rate;
        threads.push(std::thread::spawn(move || {
            options_flood(sip, rate, &stop, &tally)
        }));
    }
    {
        let (tally, stop) = (Arc::clone(&tally), Arc::clone(&stop));
        let count = args.idle_tcp;
        threads.push(std::thread::spawn(move || {
            idle_tcp(sip, count, &stop, &tally)
        }));
    }

    let started = Instant::now();
    while Instant::now() < load_end {
        std::thread::sleep(
            Duration::from_secs(10).min(load_end.saturating_duration_since(Instant::now())),
        );
        for (i, (_, pid)) in pids.iter().enumerate() {
            let now = usage(*pid);
            peak[i].rss_kb = peak[i].rss_kb.max(now.rss_kb);
            peak[i].fds = peak[i].fds.max(now.fds);
        }
        println!(
            "soak: {:>4} s: calls {} ok {} failed, registers {} ok {} failed, flood {} sent {} answered, tcp {} open",
            started.elapsed().as_secs(),
            get(&tally.calls_ok),
            get(&tally.calls_failed),
            get(&tally.registers_ok),
            get(&tally.registers_failed),
            get(&tally.flood_sent),
            get(&tally.flood_answered),
            get(&tally.tcp_opened) - get(&tally.tcp_closed_by_server),
        );
    }
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
    // Calls end with their BYE inside the SIPp runs; the flood's server
    // transactions live until Timer J (64 × T1 = 32 s): measure after it.
    println!(
        "soak: load stopped; waiting {} s for transactions to end",
        SETTLE.as_secs()
    );
    std::thread::sleep(SETTLE);
    let after: Vec<Usage> = pids.iter().map(|(_, pid)| usage(*pid)).collect();
    let metrics = util::http_get(metrics_port, "/metrics").unwrap_or_default();
    let orphans = metric(&metrics, "switchboard_rtpmanager_calls");
    let relayed = |direction: &str| {
        metric(
            &metrics,
            &format!("switchboard_rtpmanager_relay_packets_total{{stream=\"rtp\",direction=\"{direction}\"}}"),
        )
    };
    let (relayed_in, relayed_out) = (relayed("in"), relayed("out"));
    let signaling_view = manager_active_calls(rest_port);
    let warnings = std::fs::read_to_string(&signaling_log)
        .map(|log| log.lines().filter(|l| l.contains(" WARN ")).count())
        .unwrap_or(0);
    drop(callee);
    drop(signaling);
    drop(manager);

    println!();
    println!(
        "soak: {} min, mixed load from 127.0.0.1, 127.0.0.2, 127.0.20.66-68",
        args.minutes
    );
    println!(
        "{:<11} {:>12} {:>12} {:>12} {:>8} {:>8} {:>8}",
        "daemon", "RSS before", "RSS peak", "RSS after", "fds bef", "fds peak", "fds aft"
    );
    for (i, (name, _)) in pids.iter().enumerate() {
        println!(
            "{:<11} {:>9} kB {:>9} kB {:>9} kB {:>8} {:>8} {:>8}",
            name,
            before[i].rss_kb,
            peak[i].rss_kb,
            after[i].rss_kb,
            before[i].fds,
            peak[i].fds,
            after[i].fds
        );
    }
    println!(
        "legitimate calls (media both ways): {} ok, {} failed",
        get(&tally.calls_ok),
        get(&tally.calls_failed)
    );
    println!(
        "legitimate SIPp REGISTERs (digest): {} ok, {} failed",
        get(&tally.registers_ok),
        get(&tally.registers_failed)
    );
    println!(
        "legitimate sipsak REGISTER/OPTIONS: {} ok, {} failed",
        get(&tally.sipsak_ok),
        get(&tally.sipsak_failed)
    );
    println!("garbage datagrams sent: {}", get(&tally.garbage_sent));
    println!(
        "flood OPTIONS: {} sent, {} answered",
        get(&tally.flood_sent),
        get(&tally.flood_answered)
    );
    println!(
        "idle TCP connections: {} opened, {} closed by the server, {} refused",
        get(&tally.tcp_opened),
        get(&tally.tcp_closed_by_server),
        get(&tally.tcp_refused)
    );
    println!("signaling WARN lines: {warnings}");
    let figure = |v: Option<u64>| v.map_or_else(|| "unknown".to_owned(), |n| n.to_string());
    println!(
        "RTP relayed by the manager: {} packets in, {} out",
        figure(relayed_in),
        figure(relayed_out)
    );
    println!(
        "calls left on the manager after the load (orphans): {} (signaling's last health check: {})",
        figure(orphans),
        figure(signaling_view)
    );
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// Runs SIPp at `rate` calls per second in chunks of at most 60 s until
/// `end`, reporting each chunk's successful and failed calls.
#[allow(clippy::too_many_arguments)]
fn sipp_loop(
    sipp: &Path,
    scenario: &Path,
    dir: &Path,
    source: &str,
    scenario_args: &[&str],
    server: SocketAddr,
    rate: u32,
    end: Instant,
    mut report: impl FnMut(u64, u64),
) {
    let _ = std::fs::create_dir_all(dir);
    loop {
        let left = end.saturating_duration_since(Instant::now()).as_secs();
        if left < 1 || rate == 0 {
            return;
        }
        let chunk = left.min(60);
        let port = free_port();
        let mut command = Command::new(sipp);
        command
            .arg("-sf")
            .arg(scenario)
            .args(scenario_args)
            .args(["-i", source, "-p", &port.to_string()])
            .args(["-mp", &free_port().to_string()])
            .args([
                "-r",
                &rate.to_string(),
                "-m",
                &(u64::from(rate) * chunk).to_string(),
            ])
            .args([
                "-l",
                "500",
                "-timeout",
                &format!("{}s", chunk + 60),
                "-nostdin",
            ])
            .arg(server.to_string())
            .current_dir(dir)
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        match command.output() {
            Ok(out) => {
                let screen = String::from_utf8_lossy(&out.stdout);
                report(
                    sipp_counter(&screen, "Successful call"),
                    sipp_counter(&screen, "Failed call"),
                );
            }
            Err(e) => {
                println!("soak: sipp did not run: {e}");
                return;
            }
        }
    }
}

/// sipsak from 127.0.0.1: a REGISTER with a password and an OPTIONS ping,
/// alternately, every 2 s until `end`.
fn sipsak_loop(sipsak: &Path, sip_port: u16, local_port: u16, end: Instant, tally: &Tally) {
    let uri = format!("sip:1002@127.0.0.1:{sip_port}");
    let mut register = true;
    while Instant::now() < end {
        let mut command = Command::new(sipsak);
        command.args(["-l", &local_port.to_string()]);
        if register {
            command.args([
                "-U", "-s", &uri, "-u", "1002", "-a", "soak1002", "-x", "300",
            ]);
        } else {
            command.args(["-s", &uri]);
        }
        let ok = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        add(
            if ok {
                &tally.sipsak_ok
            } else {
                &tally.sipsak_failed
            },
            1,
        );
        register = !register;
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// A small xorshift generator: garbage needs no cryptographic quality.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Random datagrams of 1–1400 bytes from 127.0.20.66, about 500 per second.
fn garbage(server: SocketAddr, stop: &AtomicBool, tally: &Tally) {
    let Ok(socket) = UdpSocket::bind("127.0.20.66:0") else {
        println!("soak: cannot bind 127.0.20.66; no garbage");
        return;
    };
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let mut buf = [0u8; 1400];
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..50 {
            let len = 1 + (noise.next() % 1400) as usize;
            for b in buf[..len].iter_mut() {
                *b = noise.next() as u8;
            }
            if socket.send_to(&buf[..len], server).is_ok() {
                add(&tally.garbage_sent, 1);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// OPTIONS from 127.0.20.67 at `rate` per second for 10 s, then 20 s of
/// quiet, until stopped; answers are counted.
fn options_flood(server: SocketAddr, rate: u32, stop: &AtomicBool, tally: &Tally) {
    if rate == 0 {
        return;
    }
    let Ok(socket) = UdpSocket::bind("127.0.20.67:0") else {
        println!("soak: cannot bind 127.0.20.67; no flood");
        return;
    };
    let _ = socket.set_nonblocking(true);
    let local = socket
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut n: u64 = 0;
    let mut buf = [0u8; 4096];
    let per_tick = u64::from(rate / 100).max(1);
    while !stop.load(Ordering::Relaxed) {
        let burst_end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < burst_end && !stop.load(Ordering::Relaxed) {
            for _ in 0..per_tick {
                n += 1;
                let message = format!(
                    "OPTIONS sip:{server} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKflood{n}\r\nMax-Forwards: 70\r\nFrom: <sip:flood@{local}>;tag=f{n}\r\nTo: <sip:{server}>\r\nCall-ID: flood{n}@soak\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
                );
                if socket.send_to(message.as_bytes(), server).is_ok() {
                    add(&tally.flood_sent, 1);
                }
            }
            while socket.recv_from(&mut buf).is_ok() {
                add(&tally.flood_answered, 1);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let quiet_end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < quiet_end && !stop.load(Ordering::Relaxed) {
            while socket.recv_from(&mut buf).is_ok() {
                add(&tally.flood_answered, 1);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A TCP connection to `server` from `source`.
fn connect_from(source: Ipv4Addr, server: SocketAddr) -> nix::Result<TcpStream> {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    let fd: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(SocketAddrV4::new(source, 0)),
    )?;
    let SocketAddr::V4(server) = server else {
        return Err(nix::errno::Errno::EAFNOSUPPORT);
    };
    connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(server),
    )?;
    Ok(TcpStream::from(fd))
}

/// Holds `count` idle TCP connections from 127.0.20.68, reopening those
/// the server closes, checked every 5 s.
fn idle_tcp(server: SocketAddr, count: usize, stop: &AtomicBool, tally: &Tally) {
    let source = Ipv4Addr::new(127, 0, 20, 68);
    let mut open: Vec<TcpStream> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        open.retain_mut(|stream| {
            let _ = stream.set_nonblocking(true);
            let mut byte = [0u8; 64];
            match stream.read(&mut byte) {
                Ok(0) => {
                    add(&tally.tcp_closed_by_server, 1);
                    false
                }
                Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => {
                    add(&tally.tcp_closed_by_server, 1);
                    false
                }
                _ => true,
            }
        });
        while open.len() < count && !stop.load(Ordering::Relaxed) {
            match connect_from(source, server) {
                Ok(stream) => {
                    add(&tally.tcp_opened, 1);
                    open.push(stream);
                }
                Err(_) => {
                    add(&tally.tcp_refused, 1);
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// How long after the load the daemons are measured again.
const SETTLE: Duration = Duration::from_secs(35);

/// The value of one series of a Prometheus text exposition.
fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// The manager's calls as signaling's health checks last saw them.
fn manager_active_calls(rest_port: u16) -> Option<u64> {
    let response = util::http_get(rest_port, "/api/v1/rtpmanagers")?;
    let at = response.find("\"active_calls\":")? + "\"active_calls\":".len();
    response[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}
