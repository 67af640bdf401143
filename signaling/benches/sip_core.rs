//! The SIP core's own work per REGISTER, in process: parsing, the
//! transaction, the registrar, the journal record and the 200, driven as
//! the core's thread drives them (`cargo xtask bench sip-core`).
//!
//! No sockets, no SIPp and no disk wait (the journal lives on tmpfs when
//! there is one, and its syncs are not timed), and the time is the
//! thread's CPU time, so the figure is the CPU a REGISTER costs the core's
//! thread and little else. On a shared machine whose neighbours changed
//! the SIPp benchmarks' figures by a third from one run to the next, the
//! best of this one's rounds moved by about a tenth: it is the one to
//! compare two builds' code with; the SIPp ones tell what the whole system
//! does.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use nix::time::{clock_gettime, ClockId};
use switchboard_signaling::auth::{AuthConfig, AuthMode, Authenticator, Users};
use switchboard_signaling::registrar::{Registrar, RegistrarConfig, Store};
use switchboard_signaling::transport::{Flow, Inbound};
use switchboard_signaling::uas::{Input, Now, Uas, UasConfig};

struct Args {
    users: usize,
    passes: usize,
    batch: usize,
    rounds: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        users: 10_000,
        passes: 3,
        batch: 28,
        rounds: 11,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // `cargo bench` passes --bench to every harness.
        if flag == "--bench" {
            continue;
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let number = value
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("{flag} {value}: expected a positive number"))?;
        match flag.as_str() {
            "--users" => args.users = number,
            "--passes" => args.passes = number,
            "--batch" => args.batch = number,
            "--rounds" => args.rounds = number,
            _ => bail!("unknown option {flag} (--users, --passes, --batch, --rounds)"),
        }
    }
    if args.passes < 2 {
        bail!("--passes must be at least 2: the first one only warms up");
    }
    Ok(args)
}

/// A REGISTER of `user` from its phone, as SIPp's scenario sends it.
fn register(user: usize, cseq: usize) -> Inbound {
    let text = format!(
        "REGISTER sip:example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK-{user}-{cseq}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:u{user}@example.com>;tag={user}\r\n\
         To: <sip:u{user}@example.com>\r\n\
         Call-ID: reg-{user}@192.0.2.10\r\n\
         CSeq: {cseq} REGISTER\r\n\
         Contact: <sip:u{user}@192.0.2.10:5062>\r\n\
         Expires: 3600\r\n\
         User-Agent: bench\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let remote: SocketAddr = "192.0.2.10:5062".parse().expect("a literal address");
    Inbound {
        flow: Flow::Udp { remote },
        bytes: text.into_bytes(),
    }
}

/// The CPU time of this thread: a neighbour (or the store's snapshot
/// thread) taking the core does not count, as it would in a wall time.
fn cpu_now() -> Duration {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(Duration::ZERO, Duration::from)
}

fn data_dir() -> anyhow::Result<(tempfile::TempDir, &'static str)> {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(&shm) {
            return Ok((dir, "on tmpfs"));
        }
    }
    Ok((tempfile::tempdir()?, "on disk (no /dev/shm)"))
}

/// One round: `passes` passes over every user, the first as a warm-up
/// (bindings created, tables grown); returns the core's time per REGISTER
/// over the others, and where the journal was.
fn round(args: &Args) -> anyhow::Result<(Duration, &'static str)> {
    let (dir, place) = data_dir()?;
    let (store, records) = Store::open(dir.path())?;
    let registrar =
        Registrar::from_records(RegistrarConfig::default(), records, Now::current().wall);
    let mut auth = AuthConfig::digest("example.com", vec![7; 32]);
    auth.mode = AuthMode::Anonymous;
    let mut uas = Uas::new(
        UasConfig::new("example.com"),
        registrar,
        Authenticator::new(auth, Users::default()),
        Box::new(store),
    );
    let mut now = Now::current();
    let mut timed = Duration::ZERO;
    let mut answered = 0;
    for pass in 0..args.passes {
        let messages: Vec<Inbound> = (0..args.users).map(|u| register(u, pass + 1)).collect();
        let mut messages = messages.into_iter();
        loop {
            let batch: Vec<Inbound> = messages.by_ref().take(args.batch).collect();
            if batch.is_empty() {
                break;
            }
            let start = cpu_now();
            for inbound in batch {
                uas.handle_input(
                    now,
                    Input::Received {
                        inbound,
                        received: now.instant,
                    },
                );
            }
            uas.handle_input(now, Input::Timeout);
            uas.handle_input(now, Input::Commit);
            let mut spent = cpu_now() - start;
            // The sync runs off the core's thread in the server: not timed.
            while let Some(mut job) = uas.poll_sync() {
                job.run();
                let start = cpu_now();
                uas.handle_input(now, Input::Synced(job));
                spent += cpu_now() - start;
            }
            let start = cpu_now();
            let sent = std::iter::from_fn(|| uas.poll_transmit()).count();
            while uas.poll_observation().is_some() {}
            spent += cpu_now() - start;
            if pass > 0 {
                timed += spent;
                answered += sent;
            }
            // The gap between two syncs under load (UasConfig::sync_gap).
            now = now.advanced(Duration::from_millis(2));
        }
    }
    let expected = args.users * (args.passes - 1);
    if answered != expected {
        bail!("{answered} responses to {expected} REGISTERs: the core did not answer each once");
    }
    let per = timed / u32::try_from(expected).context("too many REGISTERs")?;
    Ok((per, place))
}

fn main() -> anyhow::Result<()> {
    let args = args()?;
    let mut times = Vec::with_capacity(args.rounds);
    let mut place = "";
    for _ in 0..args.rounds {
        let (per, at) = round(&args)?;
        times.push(per);
        place = at;
    }
    times.sort_unstable();
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "sip-core: the SIP core's own work per REGISTER (parse, transaction, registrar, journal record, 200), thread CPU time, in process, journal {place}, syncs not timed; {} rounds",
        args.rounds
    );
    println!("  users  batch  REGISTERs/round  best µs  median µs  worst µs");
    println!(
        "{:>7}  {:>5}  {:>15}  {:>7.2}  {:>9.2}  {:>8.2}",
        args.users,
        args.batch,
        args.users * (args.passes - 1),
        micros(times[0]),
        micros(times[times.len() / 2]),
        micros(times[times.len() - 1]),
    );
    Ok(())
}
