//! `cargo xtask bench failover`: a lost RTP manager's calls move to the
//! others (release builds). Three managers behind one signaling server
//! (health checks every `--interval` s, down after two failures, lost
//! `--grace` s later, moved `--batch` at a time); `--calls` SIPp calls, a
//! third of them on m1 (callers and callees that accept the move's
//! re-INVITEs), the rest on m2 and m3; two phones (UDP sockets this
//! process owns, the media addresses of every SIPp SDP) send RTP both ways
//! every 20 ms through each call's legs, following a moved call to its new
//! legs as the API lists them. m1 is SIGKILLed; the bench prints how many
//! calls survived (both SIPp sides succeeded) and the media gap per call:
//! for moved calls from the kill to the later direction's first packet
//! through the new legs, for the others their longest silence after it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::bench::{
    build_release_daemons, free_port, sipp_counter, start_manager_on, start_signaling,
    write_dialplan,
};
use crate::util::{self, workspace_root};
use switchboard_testkit::sipp as sipp_kit;

#[derive(clap::Args)]
pub struct FailoverArgs {
    /// Calls up when the manager dies (a third of them on it).
    #[arg(long, default_value_t = 200)]
    calls: u32,
    /// Seconds between health checks (--rtpmanager-health-interval).
    #[arg(long, default_value_t = 1)]
    interval: u32,
    /// Seconds a down manager keeps its calls (--rtpmanager-lost-grace).
    #[arg(long, default_value_t = 3)]
    grace: u32,
    /// Calls moved at a time (--rtpmanager-migrate-batch).
    #[arg(long, default_value_t = 20)]
    batch: u32,
}

/// An HTTP/1.0 request to the REST API: (status, body).
fn rest(port: u16, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn rest_json(port: u16, method: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let (status, body) = rest(port, method, path)?;
    if status != 200 {
        bail!("{method} {path}: {status} {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("{method} {path}: {body}"))
}

/// Calls per manager id, as the API counts them.
fn calls_per_manager(port: u16) -> anyhow::Result<HashMap<String, u64>> {
    let pool = rest_json(port, "GET", "/api/v1/rtpmanagers")?;
    Ok(pool["members"]
        .as_array()
        .map(|members| {
            members
                .iter()
                .filter_map(|m| Some((m["id"].as_str()?.to_owned(), m["active_calls"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default())
}

/// Each call's (leg a, leg b) addresses on its manager, by API call id.
fn legs_by_call(port: u16) -> anyhow::Result<HashMap<String, (SocketAddr, SocketAddr)>> {
    let list = rest_json(port, "GET", "/api/v1/calls?limit=1000")?;
    let mut legs = HashMap::new();
    for call in list["calls"].as_array().into_iter().flatten() {
        let leg = |id: &str| -> Option<SocketAddr> {
            call["legs"].as_array()?.iter().find(|l| l["leg"] == id)?["local_address"]
                .as_str()?
                .parse()
                .ok()
        };
        if let (Some(id), Some(a), Some(b)) = (call["id"].as_str(), leg("a"), leg("b")) {
            legs.insert(id.to_owned(), (a, b));
        }
    }
    Ok(legs)
}

/// What a phone heard from one source address.
#[derive(Clone, Copy)]
struct Heard {
    first: Instant,
    last: Instant,
    /// The longest silence between two packets after the kill.
    silence: Duration,
}

/// Two phones for every call (see the module docs).
struct Phones {
    targets: Arc<Mutex<HashMap<String, (SocketAddr, SocketAddr)>>>,
    heard: Arc<Mutex<HashMap<SocketAddr, Heard>>>,
    killed: Arc<Mutex<Option<Instant>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Phones {
    fn start(a: &UdpSocket, b: &UdpSocket, rest_port: u16) -> anyhow::Result<Phones> {
        let mut phones = Phones {
            targets: Arc::default(),
            heard: Arc::default(),
            killed: Arc::default(),
            stop: Arc::default(),
            threads: Vec::new(),
        };
        for socket in [a, b] {
            let socket = socket.try_clone()?;
            socket.set_read_timeout(Some(Duration::from_millis(100)))?;
            let (heard, killed, stop) = (
                phones.heard.clone(),
                phones.killed.clone(),
                phones.stop.clone(),
            );
            phones.threads.push(std::thread::spawn(move || {
                let mut buffer = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((_, from)) = socket.recv_from(&mut buffer) else {
                        continue;
                    };
                    let now = Instant::now();
                    let killed = *lock(&killed);
                    let mut heard = lock(&heard);
                    let entry = heard.entry(from).or_insert(Heard {
                        first: now,
                        last: now,
                        silence: Duration::ZERO,
                    });
                    if let Some(killed) = killed {
                        // Silence since the kill counts from the kill.
                        let since = entry.last.max(killed);
                        entry.silence = entry.silence.max(now.saturating_duration_since(since));
                    }
                    entry.last = now;
                }
            }));
        }
        let (a, b) = (a.try_clone()?, b.try_clone()?);
        let (targets, stop) = (phones.targets.clone(), phones.stop.clone());
        phones.threads.push(std::thread::spawn(move || {
            let mut seq = 0u16;
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                seq = seq.wrapping_add(1);
                let now: Vec<(SocketAddr, SocketAddr)> = lock(&targets).values().copied().collect();
                for (leg_a, leg_b) in now {
                    // A dead manager's port refuses: nothing to do about it.
                    let _ = a.send_to(&rtp(seq, 0x11), leg_a);
                    let _ = b.send_to(&rtp(seq, 0x22), leg_b);
                }
                next += Duration::from_millis(20);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        }));
        let (targets, stop) = (phones.targets.clone(), phones.stop.clone());
        phones.threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(legs) = legs_by_call(rest_port) {
                    lock(&targets).extend(legs);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
        Ok(phones)
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

fn rtp(seq: u16, fill: u8) -> Vec<u8> {
    let mut packet = vec![0x80, 0x00];
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    packet.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    packet.extend(std::iter::repeat_n(fill, 160));
    packet
}

/// One SIPp side of a call group, in a directory of its own.
fn sipp(
    binary: &Path,
    dir: &Path,
    scenario: &Path,
    port: u16,
    args: &[&str],
) -> anyhow::Result<std::process::Child> {
    std::fs::create_dir_all(dir)?;
    let mut command = sipp_kit::command(binary, scenario, port, dir);
    command
        .args(["-timeout", "120s"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    println!("+ {}", util::describe(&command));
    command.spawn().context("starting sipp")
}

/// Waits until the API counts `want(counts)` true.
fn wait_calls(
    rest_port: u16,
    what: &str,
    want: impl Fn(&HashMap<String, u64>) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let counts = calls_per_manager(rest_port)?;
        if want(&counts) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: calls per manager {counts:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// p50, p99 and max in seconds (the other benches' nearest rank).
fn gap_percentiles(gaps: &[Duration]) -> (f64, f64, f64) {
    let seconds: Vec<f64> = gaps.iter().map(Duration::as_secs_f64).collect();
    let (p50, _, p99, max) = crate::bench::percentiles(&seconds);
    (p50, p99, max)
}

pub fn failover(args: &FailoverArgs) -> anyhow::Result<()> {
    let Some(sipp_bin) = util::find_on_path("sipp") else {
        bail!("sipp is not installed (cargo xtask setup installs the sip-tester package)");
    };
    build_release_daemons()?;
    let root = workspace_root();
    let scenarios = root.join("signaling/tests/sipp");
    let work =
        std::env::temp_dir().join(format!("switchboard-bench-failover-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    let manager_bin = root.join("target/release/switchboard-rtpmanager");
    let mut managers = Vec::new();
    for i in 0..3u16 {
        let low = 30000 + i * 2000;
        managers.push(start_manager_on(&manager_bin, (low, low + 1999), &[])?);
    }
    let (moved_callee, plain_callee) = (free_port(), free_port());
    let plan = write_dialplan(
        &work,
        &[
            ("moved", "1XXX", moved_callee),
            ("plain", "2XXX", plain_callee),
        ],
    )?;
    let list = managers
        .iter()
        .enumerate()
        .map(|(i, (_, grpc))| format!("m{}={grpc}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let (interval, grace, batch) = (
        args.interval.to_string(),
        args.grace.to_string(),
        args.batch.to_string(),
    );
    let mut options = crate::bench::CALL_LOAD_OPTIONS.to_vec();
    options.extend([
        "--rtpmanager-health-interval",
        &interval,
        "--rtpmanager-failures",
        "2",
        "--rtpmanager-lost-grace",
        &grace,
        "--rtpmanager-migrate-batch",
        &batch,
        "--dialplan",
        &plan,
    ]);
    let signaling = start_signaling(&work, &list, &options)?;
    let (sip_port, rest_port) = (signaling.sip_port, signaling.rest_port);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Refused until the server listens.
        let Ok(pool) = rest_json(rest_port, "GET", "/api/v1/rtpmanagers") else {
            if Instant::now() > deadline {
                bail!("switchboard-signaling's REST API never answered");
            }
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let up = pool["members"]
            .as_array()
            .map_or(0, |m| m.iter().filter(|m| m["health"] == "healthy").count());
        if up == 3 {
            break;
        }
        if Instant::now() > deadline {
            bail!("managers not healthy: {pool}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let a = UdpSocket::bind("127.0.0.1:0")?;
    let b = UdpSocket::bind("127.0.0.1:0")?;
    let (rtp_a, rtp_b) = (
        a.local_addr()?.port().to_string(),
        b.local_addr()?.port().to_string(),
    );
    let on_m1 = args.calls / 3;
    let others = args.calls - on_m1;
    let target = format!("127.0.0.1:{sip_port}");
    // Held long enough to outlive the outage and the moves.
    let hold = ((args.interval * 3 + args.grace + 15) * 1000).to_string();

    // A third of the calls on m1 (the others drained meanwhile): callers
    // and callees that take the move's re-INVITE.
    for m in ["m2", "m3"] {
        rest(rest_port, "POST", &format!("/api/v1/rtpmanagers/{m}/drain"))?;
    }
    let callee_moved = sipp(
        &sipp_bin,
        &work.join("callee-moved"),
        &scenarios.join("b2bua_uas_moved.xml"),
        moved_callee,
        &["-key", "rtp_b", &rtp_b],
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let (n1, n2) = (on_m1.to_string(), others.to_string());
    let caller_moved = sipp(
        &sipp_bin,
        &work.join("caller-moved"),
        &scenarios.join("b2bua_uac_moved.xml"),
        free_port(),
        &[
            "-s", "1001", "-r", "50", "-m", &n1, "-l", &n1, "-d", "5000", "-key", "rtp_a", &rtp_a,
            &target,
        ],
    )?;
    wait_calls(rest_port, "calls never all on m1", |c| {
        c.get("m1") == Some(&u64::from(on_m1))
    })?;
    // The rest on m2 and m3, plain callers and callees: a re-INVITE would
    // fail their calls.
    for m in ["m2", "m3"] {
        rest(
            rest_port,
            "DELETE",
            &format!("/api/v1/rtpmanagers/{m}/drain"),
        )?;
    }
    rest(rest_port, "POST", "/api/v1/rtpmanagers/m1/drain")?;
    let callee_plain = sipp(
        &sipp_bin,
        &work.join("callee-plain"),
        &scenarios.join("b2bua_uas.xml"),
        plain_callee,
        &["-key", "rtp_b", &rtp_b],
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let caller_plain = sipp(
        &sipp_bin,
        &work.join("caller-plain"),
        &scenarios.join("b2bua_uac.xml"),
        free_port(),
        &[
            "-s", "2001", "-r", "50", "-m", &n2, "-l", &n2, "-d", &hold, "-key", "rtp_a", &rtp_a,
            &target,
        ],
    )?;
    wait_calls(rest_port, "calls never all up", |c| {
        c.get("m2").copied().unwrap_or(0) + c.get("m3").copied().unwrap_or(0) == u64::from(others)
    })?;
    rest(rest_port, "DELETE", "/api/v1/rtpmanagers/m1/drain")?;

    let phones = Phones::start(&a, &b, rest_port)?;
    std::thread::sleep(Duration::from_secs(2));
    let before = legs_by_call(rest_port)?;
    let on_m1_before: Vec<(String, (SocketAddr, SocketAddr))> = {
        let list = rest_json(rest_port, "GET", "/api/v1/calls?limit=1000")?;
        list["calls"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["manager"] == "m1")
            .filter_map(|c| {
                let id = c["id"].as_str()?.to_owned();
                let legs = *before.get(&id)?;
                Some((id, legs))
            })
            .collect()
    };
    println!(
        "bench: {} calls up ({} on m1), RTP both ways every 20 ms; SIGKILL m1",
        before.len(),
        on_m1_before.len()
    );

    let killed = Instant::now();
    *lock(&phones.killed) = Some(killed);
    let (mut m1, _) = managers.remove(0);
    m1.kill();
    let deadline = killed + Duration::from_secs(60);
    let migration = loop {
        let state = rest_json(rest_port, "GET", "/api/v1/rtpmanagers/m1/drain")?;
        let migration = state["migration"].clone();
        if migration["state"].is_string() && migration["state"] != "running" {
            break migration;
        }
        if Instant::now() > deadline {
            bail!("no migration ended off m1 60 s after the kill: {state}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let moved_in = killed.elapsed();
    // Time for the phones to follow the last moves.
    std::thread::sleep(Duration::from_secs(2));
    let after = legs_by_call(rest_port)?;
    let heard = lock(&phones.heard).clone();
    let mut moved_gaps = Vec::new();
    let mut silent = 0;
    for (id, old) in &on_m1_before {
        let new = after.get(id).filter(|new| *new != old);
        let first = new.and_then(|(leg_a, leg_b)| {
            let (at_a, at_b) = (heard.get(leg_a)?, heard.get(leg_b)?);
            Some(at_a.first.max(at_b.first))
        });
        match first {
            Some(first) => moved_gaps.push(first.saturating_duration_since(killed)),
            None => silent += 1,
        }
    }
    let other_gaps: Vec<Duration> = before
        .iter()
        .filter(|(id, _)| !on_m1_before.iter().any(|(moved, _)| moved == *id))
        .filter_map(|(_, (leg_a, leg_b))| {
            let (at_a, at_b) = (heard.get(leg_a)?, heard.get(leg_b)?);
            Some(at_a.silence.max(at_b.silence))
        })
        .collect();

    let mut survived = 0;
    let mut failed = 0;
    for (role, child) in [
        ("caller (moved)", caller_moved),
        ("caller (others)", caller_plain),
        ("callee (moved)", callee_moved),
        ("callee (others)", callee_plain),
    ] {
        let output = child.wait_with_output().context("waiting for sipp")?;
        let screen = String::from_utf8_lossy(&output.stdout);
        let (ok, bad) = (
            sipp_counter(&screen, "Successful call"),
            sipp_counter(&screen, "Failed call"),
        );
        println!("bench: SIPp {role}: {ok} successful, {bad} failed");
        if role.starts_with("caller") {
            survived += ok;
        }
        failed += bad;
    }
    phones.stop();
    drop(signaling);
    drop(managers);

    println!();
    println!(
        "failover: {} calls over 3 managers, RTP both ways every 20 ms, m1 SIGKILLed (checks {} s, down after 2, grace {} s, batch {})",
        args.calls, args.interval, args.grace, args.batch
    );
    println!(
        "  migration off m1: {} ({} moved, {} stayed, {} ended) {:.2} s after the kill",
        migration["state"].as_str().unwrap_or("?"),
        migration["moved"],
        migration["stayed"],
        migration["ended"],
        moved_in.as_secs_f64()
    );
    println!(
        "  survived: {survived}/{} (both SIPp sides; {failed} failed on either side)",
        args.calls
    );
    let (p50, p99, max) = gap_percentiles(&moved_gaps);
    println!(
        "  moved calls ({}, {} never heard again): media gap p50 {p50:.2} s, p99 {p99:.2} s, max {max:.2} s",
        moved_gaps.len(),
        silent,
    );
    let (p50, p99, max) = gap_percentiles(&other_gaps);
    println!(
        "  other calls ({}): longest silence after the kill p50 {p50:.2} s, p99 {p99:.2} s, max {max:.2} s",
        other_gaps.len(),
    );
    Ok(())
}
