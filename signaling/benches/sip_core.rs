//! The SIP core's own work per REGISTER and per call, in process, driven
//! as the core's thread drives it (`cargo xtask bench sip-core`):
//!
//! - a REGISTER: parsing, the transaction, the registrar, the journal
//!   record and the 200;
//! - a call through the B2BUA: the caller's INVITE with SDP, 100, the
//!   manager's Offer, the INVITE to the callee, its 180 and 200 with SDP,
//!   the Answer, the 200 to the caller, both ACKs, the caller's BYE, the
//!   BYE to the callee, the Delete and both 200s: every message the SIPp
//!   `sip-calls` scenario exchanges, with the manager answered in process.
//!
//! No sockets, no SIPp and no disk wait (the journal lives on tmpfs when
//! there is one, and its syncs are not timed), and the time is the
//! thread's CPU time, so the figure is the CPU a REGISTER or a call costs
//! the core's thread and little else. On a shared machine whose neighbours
//! changed the SIPp benchmarks' figures by a third from one run to the
//! next, the best of this one's rounds moved by about a tenth: it is the
//! one to compare two builds' code with; the SIPp ones tell what the whole
//! system does.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use nix::time::{clock_gettime, ClockId};
use switchboard_signaling::auth::{AuthConfig, AuthMode, Authenticator, Users};
use switchboard_signaling::b2bua::{
    B2bua, B2buaConfig, CallLimits, IdentityPolicy, LinkInput, MediaLink, MediaOp, MediaResult,
    Owner,
};
use switchboard_signaling::dialplan::Dialplan;
use switchboard_signaling::registrar::{
    Persist, Record, Registrar, RegistrarConfig, Store, StoreError, SyncJob,
};
use switchboard_signaling::sip::{build_response_with_body, parse, Method, SipMessage, Tag};
use switchboard_signaling::transaction::TimerConfig;
use switchboard_signaling::transport::{Advertised, Flow, Inbound};
use switchboard_signaling::uas::{BindingStore, Input, Now, Uas, UasConfig};
use switchboard_testkit::sip::request;

// What each option means, and its default: `cargo xtask bench sip-core --help`.
const USAGE: &str =
    "options: --work register|calls|both, --users N, --calls N, --passes N, --batch N, --rounds N
(what they mean and their defaults: cargo xtask bench sip-core --help)";

struct Args {
    work: String,
    calls: usize,
    users: usize,
    passes: usize,
    batch: usize,
    rounds: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        work: "both".to_owned(),
        calls: 2_000,
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
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        if flag == "--work" {
            if !["register", "calls", "both"].contains(&value.as_str()) {
                bail!("--work {value}: expected register, calls or both");
            }
            args.work = value;
            continue;
        }
        let number = value
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("{flag} {value}: expected a positive number"))?;
        match flag.as_str() {
            "--users" => args.users = number,
            "--calls" => args.calls = number,
            "--passes" => args.passes = number,
            "--batch" => args.batch = number,
            "--rounds" => args.rounds = number,
            _ => bail!("unknown option {flag}\n{USAGE}"),
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
        let mut messages = (0..args.users).map(|u| register(u, pass + 1));
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
            let sent: Vec<_> = std::iter::from_fn(|| uas.poll_transmit()).collect();
            while uas.poll_observation().is_some() {}
            spent += cpu_now() - start;
            if pass > 0 {
                timed += spent;
                answered += sent
                    .iter()
                    .filter(|out| out.bytes.starts_with(b"SIP/2.0 200 "))
                    .count();
            }
            // The gap between two syncs under load (UasConfig::sync_gap).
            now = now.advanced(Duration::from_millis(2));
        }
    }
    let expected = args.users * (args.passes - 1);
    if answered != expected {
        bail!("{answered} 200s to {expected} REGISTERs: the core did not accept each once");
    }
    let per = timed / u32::try_from(expected).context("too many REGISTERs")?;
    Ok((per, place))
}

const CALLER: &str = "192.0.2.1:5060";
const CALLEE: &str = "192.0.2.2:5060";
const CALLER_SDP: &str = "v=0\r\no=alice 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n";
const CALLEE_SDP: &str = "v=0\r\no=bob 1 1 IN IP4 192.0.2.2\r\ns=-\r\nc=IN IP4 192.0.2.2\r\nt=0 0\r\nm=audio 50000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";
const MANAGER_SDP: &str = "v=0\r\no=- 1 1 IN IP4 203.0.113.1\r\ns=-\r\nc=IN IP4 203.0.113.1\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";
const PLAN: &str = r#"{"version": "1.0", "routes": [
  {"id": "dial", "pattern": "1XXX", "priority": 1, "actions": [
    {"type": "dial", "params": {"targets": ["sip:bob@192.0.2.2:5060"], "timeout": 30}}]}]}"#;

/// Calls keep no bindings.
struct NoStore;

impl BindingStore for NoStore {
    fn write(&mut self, _: &Persist) -> Result<(), StoreError> {
        Ok(())
    }
    fn begin_sync(&mut self) -> Option<SyncJob> {
        None
    }
    fn finish_sync(&mut self, _: SyncJob) -> Result<(), StoreError> {
        Ok(())
    }
    fn journal_records(&self) -> usize {
        0
    }
    fn compact(&mut self, _: Vec<Record>) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The callee's response to a request the B2BUA sent it.
fn reply(to: &SipMessage, status: u16, tag: Option<&Tag>, sdp: Option<&str>) -> Vec<u8> {
    let reason = match status {
        180 => "Ringing",
        _ => "OK",
    };
    build_response_with_body(
        to,
        status,
        reason,
        tag,
        &[("Contact".to_owned(), format!("<sip:bob@{CALLEE}>"))],
        sdp.map(|sdp| ("application/sdp", sdp.as_bytes())),
    )
}

/// The caller's request inside the dialog its 200 set up.
fn in_dialog(answer: &SipMessage, method: &str, cseq: u32, branch: &str) -> Vec<u8> {
    let target = answer
        .contacts()
        .first()
        .map(|c| c.uri.to_string())
        .unwrap_or_else(|| "sip:sb@192.0.2.100:5060".to_owned());
    request(
        &format!("{method} {target} SIP/2.0"),
        &[
            (
                "Via",
                &format!("SIP/2.0/UDP {CALLER};branch={branch};rport"),
            ),
            ("Max-Forwards", "70"),
            ("From", answer.header("From").unwrap_or_default()),
            ("To", answer.header("To").unwrap_or_default()),
            ("Call-ID", answer.call_id().as_str()),
            ("CSeq", &format!("{cseq} {method}")),
        ],
        None,
    )
    .into_bytes()
}

/// The core with the B2BUA, and what it sent in the current phase.
struct CallBench {
    uas: Uas,
    now: Now,
    /// The thread's CPU time in the core's calls.
    spent: Duration,
    /// Messages sent in this phase, parsed, with where they went.
    to_caller: Vec<SipMessage>,
    to_callee: Vec<SipMessage>,
}

impl CallBench {
    fn new() -> anyhow::Result<CallBench> {
        let mut auth = AuthConfig::digest("example.com", vec![7; 32]);
        auth.mode = AuthMode::Anonymous;
        let mut uas = Uas::new(
            UasConfig::new("example.com"),
            Registrar::new(RegistrarConfig::default()),
            Authenticator::new(auth, Users::default()),
            Box::new(NoStore),
        );
        let b2bua = B2bua::new(
            B2buaConfig {
                local: Advertised {
                    host: "192.0.2.100".to_owned(),
                    port: 5060,
                    ..Advertised::default()
                },
                timers: TimerConfig::default(),
                seed: 42,
                identity: IdentityPolicy::default(),
                owner: Owner::new("bench", 1),
                limits: CallLimits::default(),
            },
            Arc::new(Dialplan::parse(PLAN).context("the bench's dialplan")?),
            MediaLink::new(),
        );
        uas.set_call_handler(Box::new(b2bua));
        Ok(CallBench {
            uas,
            now: Now::current(),
            spent: Duration::ZERO,
            to_caller: Vec::new(),
            to_callee: Vec::new(),
        })
    }

    /// One phase: `messages` from their peers, then the manager's answers
    /// to what they asked until it has none left; timed in the core's
    /// calls only. Returns the media operations answered.
    fn phase(&mut self, messages: Vec<(&str, Vec<u8>)>) -> anyhow::Result<Vec<MediaOp>> {
        self.to_caller.clear();
        self.to_callee.clear();
        let mut ops = Vec::new();
        let start = cpu_now();
        for (peer, bytes) in messages {
            let remote: SocketAddr = peer.parse().context("a peer address")?;
            self.uas.handle_input(
                self.now,
                Input::Received {
                    inbound: Inbound {
                        flow: Flow::Udp { remote },
                        bytes,
                    },
                    received: self.now.instant,
                },
            );
        }
        self.uas.handle_input(self.now, Input::Timeout);
        loop {
            let requests: Vec<_> = std::iter::from_fn(|| self.uas.poll_media_request()).collect();
            if requests.is_empty() {
                break;
            }
            for request in requests {
                let result = match &request.op {
                    MediaOp::Offer { .. } | MediaOp::Answer { .. } => {
                        MediaResult::Sdp(MANAGER_SDP.to_owned())
                    }
                    MediaOp::Delete { .. } => MediaResult::Deleted(Vec::new()),
                    _ => MediaResult::Done,
                };
                ops.push(request.op);
                self.uas.handle_media(
                    self.now,
                    LinkInput::Result {
                        id: request.id,
                        result,
                    },
                );
            }
        }
        let sent: Vec<_> = std::iter::from_fn(|| self.uas.poll_transmit()).collect();
        self.spent += cpu_now() - start;
        for outbound in sent {
            let message =
                parse(&outbound.bytes).context("the core sent a message it cannot parse")?;
            if outbound.destination.remote() == CALLEE.parse::<SocketAddr>()? {
                self.to_callee.push(message);
            } else {
                self.to_caller.push(message);
            }
        }
        Ok(ops)
    }
}

fn count(messages: &[SipMessage], status: Option<u16>, method: &Method) -> usize {
    messages
        .iter()
        .filter(|m| m.status() == status && m.method() == method)
        .count()
}

/// One round of `calls` calls, `batch` at a time through each step of the
/// flow; returns the core's CPU time per call.
fn call_round(args: &Args) -> anyhow::Result<Duration> {
    let mut bench = CallBench::new()?;
    let mut done = 0;
    let mut first = 0;
    while first < args.calls {
        let ids: Vec<usize> = (first..(first + args.batch).min(args.calls)).collect();
        first += ids.len();
        let k = ids.len();
        // The caller's INVITEs: a 100 each, an Offer each, an INVITE to the callee each.
        let invites = ids
            .iter()
            .map(|i| {
                let via = format!("SIP/2.0/UDP {CALLER};branch=z9hG4bK-c{i};rport");
                let call_id = format!("call-{i}@192.0.2.1");
                let bytes = request(
                    "INVITE sip:1001@192.0.2.100 SIP/2.0",
                    &[
                        ("Via", via.as_str()),
                        ("Max-Forwards", "70"),
                        ("From", "\"Alice\" <sip:alice@192.0.2.1>;tag=alice1"),
                        ("To", "<sip:1001@192.0.2.100>"),
                        ("Call-ID", call_id.as_str()),
                        ("CSeq", "1 INVITE"),
                        ("Contact", "<sip:alice@192.0.2.1:5060>"),
                    ],
                    Some(CALLER_SDP),
                );
                (CALLER, bytes.into_bytes())
            })
            .collect();
        let mut ops = bench.phase(invites)?;
        let to_callee = std::mem::take(&mut bench.to_callee);
        if count(&to_callee, None, &Method::Invite) != k {
            bail!(
                "{} INVITEs reached the callee for {k} calls",
                to_callee.len()
            );
        }
        // The callee rings and answers with SDP: the Answer, then the 200 to the caller.
        let answers = to_callee
            .iter()
            .enumerate()
            .flat_map(|(n, invite)| {
                let tag = Tag::new(format!("bob{n}"));
                [
                    (CALLEE, reply(invite, 180, Some(&tag), None)),
                    (CALLEE, reply(invite, 200, Some(&tag), Some(CALLEE_SDP))),
                ]
            })
            .collect();
        ops.extend(bench.phase(answers)?);
        let oks: Vec<SipMessage> = std::mem::take(&mut bench.to_caller)
            .into_iter()
            .filter(|m| m.status() == Some(200))
            .collect();
        if oks.len() != k {
            bail!("{} 200s reached the caller for {k} calls", oks.len());
        }
        // The caller's requests in each call's dialog.
        let in_dialogs = |method: &str, cseq: u32| {
            oks.iter()
                .enumerate()
                .map(|(n, ok)| {
                    let branch = format!("z9hG4bK-{method}{first}-{n}");
                    (CALLER, in_dialog(ok, method, cseq, &branch))
                })
                .collect::<Vec<_>>()
        };
        // The caller ACKs: the ACK goes on to the callee.
        ops.extend(bench.phase(in_dialogs("ACK", 1))?);
        if count(&bench.to_callee, None, &Method::Ack) != k {
            bail!(
                "{} ACKs reached the callee for {k} calls",
                bench.to_callee.len()
            );
        }
        // The caller hangs up: a 200, a BYE to the callee and a Delete.
        ops.extend(bench.phase(in_dialogs("BYE", 2))?);
        let byes_out = std::mem::take(&mut bench.to_callee);
        if count(&byes_out, None, &Method::Bye) != k
            || count(&bench.to_caller, Some(200), &Method::Bye) != k
        {
            bail!("the caller's BYEs did not each end both legs");
        }
        let closes = byes_out
            .iter()
            .map(|bye| (CALLEE, reply(bye, 200, None, None)))
            .collect();
        ops.extend(bench.phase(closes)?);
        let offers = ops
            .iter()
            .filter(|op| matches!(op, MediaOp::Offer { .. }))
            .count();
        let answers = ops
            .iter()
            .filter(|op| matches!(op, MediaOp::Answer { .. }))
            .count();
        let deletes = ops
            .iter()
            .filter(|op| matches!(op, MediaOp::Delete { .. }))
            .count();
        if (offers, answers, deletes, ops.len()) != (k, k, k, 3 * k) {
            bail!("{k} calls asked the manager {ops:?}, not one Offer, Answer and Delete each");
        }
        done += k;
        bench.now = bench.now.advanced(Duration::from_millis(1));
    }
    Ok(bench.spent / u32::try_from(done).context("too many calls")?)
}

fn best_median_worst(mut times: Vec<Duration>) -> (f64, f64, f64) {
    times.sort_unstable();
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    (
        micros(times[0]),
        micros(times[times.len() / 2]),
        micros(times[times.len() - 1]),
    )
}

fn main() -> anyhow::Result<()> {
    let args = args()?;
    if args.work != "calls" {
        let mut times = Vec::with_capacity(args.rounds);
        let mut place = "";
        for _ in 0..args.rounds {
            let (per, at) = round(&args)?;
            times.push(per);
            place = at;
        }
        let (best, median, worst) = best_median_worst(times);
        println!(
            "sip-core: the SIP core's own work per REGISTER (parse, transaction, registrar, journal record, 200), thread CPU time, in process, journal {place}, syncs not timed; {} rounds",
            args.rounds
        );
        println!("  users  batch  REGISTERs/round  best µs  median µs  worst µs");
        println!(
            "{:>7}  {:>5}  {:>15}  {best:>7.2}  {median:>9.2}  {worst:>8.2}",
            args.users,
            args.batch,
            args.users * (args.passes - 1),
        );
    }
    if args.work != "register" {
        let times = (0..args.rounds)
            .map(|_| call_round(&args))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (best, median, worst) = best_median_worst(times);
        println!(
            "sip-core: the SIP core's own work per call through the B2BUA (6 SIP messages in, 7 out, 3 media requests: INVITE with SDP, 100, Offer, INVITE out, 180s, 200s with SDP, Answer, ACKs, BYEs, Delete, 200s), thread CPU time, in process, the manager answered in process; {} rounds",
            args.rounds
        );
        println!("  calls/round  batch  best µs  median µs  worst µs");
        println!(
            "{:>13}  {:>5}  {best:>7.2}  {median:>9.2}  {worst:>8.2}",
            args.calls, args.batch
        );
    }
    Ok(())
}
