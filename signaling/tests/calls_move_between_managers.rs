//! Call migration between real RTP managers: three managers, the signaling
//! binary, SIPp as caller and callee for many calls, and media sockets the
//! test owns on the ports the SIPp SDPs advertise, so RTP through the new
//! legs is checked octet for octet at the receivers.
//!
//! [`ThreeManagers`] is the bed: reusable for other pool tests (failover,
//! a lost manager) that need several managers with SIPp calls carrying RTP.

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::manager::{free_media_range, legs, runtime, start_manager_at, Manager};
use common::sipp::{media_socket, rtp};
use common::{free_port, Server};
use switchboard_proto::v1;

/// Port pairs per manager: two legs per call, 50 calls on one manager.
const PAIRS: u16 = 120;

/// Three managers (`m1`, `m2`, `m3`) behind one signaling server whose
/// extensions (`1XXX`) dial a SIPp callee on `callee_port`, with anonymous
/// callers.
pub struct ThreeManagers {
    pub data: tempfile::TempDir,
    pub managers: Vec<Manager>,
    /// Each manager's gRPC port and media ports, kept for a restart.
    places: Vec<(u16, (u16, u16))>,
    pub server: Server,
    pub callee_port: u16,
}

impl ThreeManagers {
    /// Starts the managers and the server (`extra`: more server options),
    /// and waits until all three managers are healthy.
    pub fn start(extra: &[&str]) -> ThreeManagers {
        let data = tempfile::tempdir().expect("temp dir");
        let audio = data.path().join("audio");
        std::fs::create_dir_all(&audio).expect("audio dir");
        let (min, _) = free_media_range(3 * PAIRS);
        let places: Vec<(u16, (u16, u16))> = (0..3u16)
            .map(|i| {
                let low = min + i * 2 * PAIRS;
                (free_port(), (low, low + 2 * PAIRS - 1))
            })
            .collect();
        let managers: Vec<Manager> = (0..3)
            .map(|i| Self::start_manager(data.path(), places[i], i))
            .collect();
        let callee_port = free_port();
        let plan = format!(
            r#"{{"version": "1.0", "routes": [
              {{"id": "extensions", "pattern": "1XXX", "priority": 20, "actions": [
                {{"type": "dial", "params": {{"targets": ["sip:bob@127.0.0.1:{callee_port}"], "timeout": 20}}}}]}}
            ]}}"#
        );
        let plan_path = data.path().join("dialplan.json");
        std::fs::write(&plan_path, plan).expect("write the dialplan");
        let list = managers
            .iter()
            .enumerate()
            .map(|(i, m)| format!("m{}={}", i + 1, m.grpc))
            .collect::<Vec<_>>()
            .join(",");
        let mut args = vec![
            "--dialplan",
            plan_path.to_str().expect("UTF-8 path"),
            "--auth",
            "anonymous",
            "--rtpmanager",
            &list,
        ];
        args.extend_from_slice(extra);
        let server = Server::start(&data.path().join("state"), &args);
        let bed = ThreeManagers {
            data,
            managers,
            places,
            server,
            callee_port,
        };
        bed.wait_healthy();
        bed
    }

    /// Manager `i` (from 0) on its gRPC and media ports, its calls saved in
    /// a state directory of its own (a restart takes them back).
    fn start_manager(data: &std::path::Path, place: (u16, (u16, u16)), i: usize) -> Manager {
        let state: PathBuf = data.join(format!("state-m{}", i + 1));
        let state = state.to_str().expect("UTF-8 path");
        start_manager_at(
            &data.join("audio"),
            place.0,
            place.1,
            &["--state-dir", state],
        )
    }

    /// Starts manager `i` again (after [`Manager::kill`]) where it was,
    /// with its state directory.
    pub fn restart(&mut self, i: usize) {
        self.managers[i] = Self::start_manager(self.data.path(), self.places[i], i);
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let pool = self.server.get_json("/api/v1/rtpmanagers");
            let healthy = pool["members"].as_array().map_or(0, |list| {
                list.iter()
                    .filter(|m| m["id"].as_str().is_some_and(|id| id.starts_with('m')))
                    .filter(|m| m["health"] == "healthy")
                    .count()
            });
            if healthy == 3 {
                return;
            }
            assert!(Instant::now() < deadline, "managers never healthy: {pool}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A REST request, which must answer 200.
    pub fn rest_ok(&self, method: &str, path: &str) -> serde_json::Value {
        let (status, body) = self.server.rest(method, path);
        assert_eq!(status, 200, "{method} {path}: {body}");
        body
    }

    /// Starts SIPp callee and caller for `calls` calls (scenarios in
    /// tests/sipp; the caller dials 1001 at `rate` calls per second and
    /// keeps each call `hold_ms` after its scenario's pause), their media
    /// at `rtp_a`/`rtp_b` (ports of sockets the test owns).
    pub fn sipp_calls(
        &self,
        (caller, callee): (&str, &str),
        calls: u32,
        rate: u32,
        hold_ms: u32,
        (rtp_a, rtp_b): (&str, &str),
    ) -> (Child, Child) {
        let dir = self.data.path();
        let callee = common::sipp::start(
            dir,
            callee,
            self.callee_port,
            calls,
            &["-key", "rtp_b", rtp_b],
        );
        std::thread::sleep(Duration::from_millis(300));
        let target = self.server.sip_addr().to_string();
        let (rate, limit, hold) = (rate.to_string(), calls.to_string(), hold_ms.to_string());
        let caller = common::sipp::start(
            dir,
            caller,
            free_port(),
            calls,
            &[
                "-s", "1001", "-r", &rate, "-l", &limit, "-d", &hold, "-key", "rtp_a", rtp_a,
                &target,
            ],
        );
        (caller, callee)
    }

    /// Waits for a SIPp side and asserts every call succeeded.
    pub fn finish(&self, role: &str, child: Child) {
        common::sipp::finish(self.data.path(), role, child, || self.server.log());
    }

    /// Waits up to `limit` until manager `i` holds `count` calls, each with
    /// both legs bridged; returns its calls.
    pub fn wait_bridged(&self, i: usize, count: usize, limit: Duration) -> Vec<v1::CallSummary> {
        let calls = self.managers[i].wait_calls(limit, |calls| {
            calls.len() == count && calls.iter().all(|c| legs(c).is_some())
        });
        assert_eq!(calls.len(), count, "calls on m{}: {calls:?}", i + 1);
        calls
    }
}

/// One RTP packet per call each way through its legs: sent from `a` to
/// each call's leg a, it must reach `b` from that call's leg b unchanged,
/// and back.
fn rtp_through(calls: &[(SocketAddr, SocketAddr)], a: &UdpSocket, b: &UdpSocket) {
    for (from_socket, to_socket, fill, forward) in [(a, b, 0x11u8, true), (b, a, 0x22, false)] {
        let mut expected: HashMap<SocketAddr, Vec<u8>> = HashMap::new();
        for (i, (leg_a, leg_b)) in calls.iter().enumerate() {
            let (into, out) = if forward {
                (leg_a, leg_b)
            } else {
                (leg_b, leg_a)
            };
            let packet = rtp(u16::try_from(i).expect("few calls") + 1, fill);
            from_socket.send_to(&packet, into).expect("send RTP");
            expected.insert(*out, packet);
        }
        let mut buffer = [0u8; 2048];
        while !expected.is_empty() {
            let (len, from) = to_socket.recv_from(&mut buffer).unwrap_or_else(|e| {
                panic!(
                    "{} packets not forwarded ({}): {e}",
                    expected.len(),
                    if forward {
                        "caller → callee"
                    } else {
                        "callee → caller"
                    }
                )
            });
            let packet = expected
                .remove(&from)
                .unwrap_or_else(|| panic!("a packet from {from}, not a leg that was due"));
            assert_eq!(&buffer[..len], &packet[..], "RTP forwarded unchanged");
        }
    }
}

#[test]
fn drain_migrate_moves_fifty_answered_calls_off_a_manager_with_their_media() {
    if common::sipp::binary().is_none() {
        return;
    }
    const CALLS: usize = 50;
    let bed = ThreeManagers::start(&[]);
    // Every call on m1 first: the others take none while drained.
    bed.rest_ok("POST", "/api/v1/rtpmanagers/m2/drain");
    bed.rest_ok("POST", "/api/v1/rtpmanagers/m3/drain");
    let (a, rtp_a) = media_socket();
    let (b, rtp_b) = media_socket();
    let (caller, callee) = bed.sipp_calls(
        ("b2bua_uac_moved.xml", "b2bua_uas_moved.xml"),
        CALLS as u32,
        50,
        15_000,
        (&rtp_a, &rtp_b),
    );
    let before = bed.wait_bridged(0, CALLS, Duration::from_secs(20));
    let before: Vec<(SocketAddr, SocketAddr)> = before.iter().filter_map(legs).collect();
    rtp_through(&before, &a, &b);
    bed.rest_ok("DELETE", "/api/v1/rtpmanagers/m2/drain");
    bed.rest_ok("DELETE", "/api/v1/rtpmanagers/m3/drain");

    let started = Instant::now();
    let drain = bed.rest_ok("POST", "/api/v1/rtpmanagers/m1/drain?mode=migrate&batch=10");
    assert_eq!(drain["draining"], true);
    let deadline = Instant::now() + Duration::from_secs(30);
    let migration = loop {
        let state = bed.rest_ok("GET", "/api/v1/rtpmanagers/m1/drain");
        if state["migration"]["state"] != "running" {
            break state["migration"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "migration still running: {state}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    eprintln!("{CALLS} calls migrated in {} ms", took.as_millis());
    assert_eq!(migration["state"], "done", "{migration}");
    assert_eq!(migration["moved"], CALLS, "{migration}");
    assert_eq!(migration["stayed"], 0, "{migration}");
    assert_eq!(migration["ended"], 0, "{migration}");
    assert_eq!(migration["remaining"], 0, "{migration}");
    assert_eq!(migration["batch"], 10);

    // m1 keeps nothing; the others took every call, bridged.
    let left = bed.managers[0].wait_calls(Duration::from_secs(5), <[_]>::is_empty);
    assert!(left.is_empty(), "m1 still holds {} calls", left.len());
    let m2 = bed.managers[1].calls();
    let m3 = bed.managers[2].calls();
    assert_eq!(
        m2.len() + m3.len(),
        CALLS,
        "m2 {} + m3 {}",
        m2.len(),
        m3.len()
    );
    assert!(
        !m2.is_empty() && !m3.is_empty(),
        "spread over both: {} / {}",
        m2.len(),
        m3.len()
    );
    let after: Vec<(SocketAddr, SocketAddr)> = m2.iter().chain(&m3).filter_map(legs).collect();
    assert_eq!(after.len(), CALLS, "every moved call is bridged");
    rtp_through(&after, &a, &b);

    // Every call carries on and ends normally on both sides.
    bed.finish("caller", caller);
    bed.finish("callee", callee);
    for (i, manager) in bed.managers.iter().enumerate() {
        let calls = manager.wait_calls(Duration::from_secs(5), <[_]>::is_empty);
        assert!(
            calls.is_empty(),
            "m{} still holds {} calls",
            i + 1,
            calls.len()
        );
    }
}

#[test]
fn calls_whose_callee_refuses_the_move_stay_on_the_drained_manager_with_their_media() {
    if common::sipp::binary().is_none() {
        return;
    }
    const CALLS: usize = 5;
    let bed = ThreeManagers::start(&[]);
    bed.rest_ok("POST", "/api/v1/rtpmanagers/m2/drain");
    bed.rest_ok("POST", "/api/v1/rtpmanagers/m3/drain");
    let (a, rtp_a) = media_socket();
    let (b, rtp_b) = media_socket();
    let (caller, callee) = bed.sipp_calls(
        ("b2bua_uac.xml", "b2bua_uas_refuse_move.xml"),
        CALLS as u32,
        20,
        10_000,
        (&rtp_a, &rtp_b),
    );
    bed.wait_bridged(0, CALLS, Duration::from_secs(20));
    bed.rest_ok("DELETE", "/api/v1/rtpmanagers/m2/drain");
    bed.rest_ok("DELETE", "/api/v1/rtpmanagers/m3/drain");

    bed.rest_ok("POST", "/api/v1/rtpmanagers/m1/drain?mode=migrate");
    let deadline = Instant::now() + Duration::from_secs(30);
    let migration = loop {
        let state = bed.rest_ok("GET", "/api/v1/rtpmanagers/m1/drain");
        if state["migration"]["state"] != "running" {
            break state["migration"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "migration still running: {state}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(migration["state"], "incomplete", "{migration}");
    assert_eq!(migration["stayed"], CALLS, "{migration}");
    assert_eq!(migration["moved"], 0, "{migration}");
    assert_eq!(migration["ended"], 0, "{migration}");
    assert_eq!(
        migration["batch"], 10,
        "--rtpmanager-migrate-batch's default"
    );
    let errors = migration["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), CALLS);
    assert!(
        errors
            .iter()
            .all(|e| e.as_str().is_some_and(|e| e.contains("488"))),
        "{errors:?}"
    );

    // The new managers' legs are gone; the calls and their media stay on m1.
    for i in [1, 2] {
        let calls = bed.managers[i].wait_calls(Duration::from_secs(5), <[_]>::is_empty);
        assert!(
            calls.is_empty(),
            "m{} keeps {} aborted calls",
            i + 1,
            calls.len()
        );
    }
    let kept = bed.wait_bridged(0, CALLS, Duration::from_secs(1));
    let kept: Vec<(SocketAddr, SocketAddr)> = kept.iter().filter_map(legs).collect();
    rtp_through(&kept, &a, &b);

    bed.finish("caller", caller);
    bed.finish("callee", callee);
}

/// The calls manager `grpc` holds, `None` when it does not answer.
fn list_calls(grpc: SocketAddr) -> Option<Vec<v1::CallSummary>> {
    runtime().block_on(async {
        let mut client = switchboard_proto::v1::rtp_manager_client::RtpManagerClient::connect(
            format!("http://{grpc}"),
        )
        .await
        .ok()?;
        let calls = client.list_calls(v1::ListCallsRequest {}).await.ok()?;
        Some(calls.into_inner().calls)
    })
}

/// When packets from one source reached a phone.
#[derive(Debug, Clone, Copy)]
struct Heard {
    first: Instant,
    last: Instant,
}

/// Two phones for many calls (the media sockets the SIPp SDPs advertise):
/// RTP every 20 ms both ways through each call's legs, and, as a phone
/// follows the re-INVITE that moves its call, through the legs the call
/// has on whichever manager holds it now (looked up every 50 ms on the
/// managers still up). Each phone notes when packets from each leg came.
struct Phones {
    /// Media call id → (leg a, leg b) addresses it is sent to.
    targets: Arc<Mutex<HashMap<String, (SocketAddr, SocketAddr)>>>,
    /// Source address → when packets from it arrived, at either phone.
    heard: Arc<Mutex<HashMap<SocketAddr, Heard>>>,
    /// The managers' gRPC addresses the lookup asks (a killed one leaves).
    managers: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Phones {
    fn start(a: &UdpSocket, b: &UdpSocket, managers: Vec<SocketAddr>) -> Phones {
        let phones = Phones {
            targets: Arc::default(),
            heard: Arc::default(),
            managers: Arc::new(Mutex::new(managers)),
            stop: Arc::default(),
            threads: Vec::new(),
        };
        let mut threads = Vec::new();
        for socket in [a, b] {
            let socket = socket.try_clone().expect("clone socket");
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .expect("timeout");
            let (heard, stop) = (phones.heard.clone(), phones.stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut buffer = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, from)) = socket.recv_from(&mut buffer) {
                        let now = Instant::now();
                        heard
                            .lock()
                            .expect("lock")
                            .entry(from)
                            .and_modify(|h| h.last = now)
                            .or_insert(Heard {
                                first: now,
                                last: now,
                            });
                    }
                }
            }));
        }
        let (a, b) = (
            a.try_clone().expect("clone socket"),
            b.try_clone().expect("clone socket"),
        );
        let (targets, stop) = (phones.targets.clone(), phones.stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut seq = 0u16;
            while !stop.load(Ordering::Relaxed) {
                seq = seq.wrapping_add(1);
                let now: Vec<(SocketAddr, SocketAddr)> =
                    targets.lock().expect("lock").values().copied().collect();
                for (leg_a, leg_b) in now {
                    // A dead manager's port refuses: nothing to do about it.
                    let _ = a.send_to(&rtp(seq, 0x11), leg_a);
                    let _ = b.send_to(&rtp(seq, 0x22), leg_b);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }));
        let (targets, managers, stop) = (
            phones.targets.clone(),
            phones.managers.clone(),
            phones.stop.clone(),
        );
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let asked: Vec<SocketAddr> = managers.lock().expect("lock").clone();
                for grpc in asked {
                    for call in list_calls(grpc).unwrap_or_default() {
                        if let Some(pair) = legs(&call) {
                            targets
                                .lock()
                                .expect("lock")
                                .insert(call.call_id.clone(), pair);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }));
        Phones { threads, ..phones }
    }

    /// No more lookups on the manager at `grpc`.
    fn forget(&self, grpc: SocketAddr) {
        self.managers.lock().expect("lock").retain(|m| *m != grpc);
    }

    fn heard(&self, from: SocketAddr) -> Option<Heard> {
        self.heard.lock().expect("lock").get(&from).copied()
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Health checks each second, down after two failures, lost 3 s later.
const LOSS_ARGS: [&str; 6] = [
    "--rtpmanager-health-interval",
    "1",
    "--rtpmanager-failures",
    "2",
    "--rtpmanager-lost-grace",
    "3",
];

/// Starts `calls` SIPp calls that all land on m1 (m2 and m3 drained while
/// they are set up), RTP flowing both ways through m1; returns the SIPp
/// sides, the phones and m1's calls.
fn calls_on_m1(
    bed: &ThreeManagers,
    calls: usize,
    scenarios: (&str, &str),
    hold_ms: u32,
) -> (Child, Child, Phones, Vec<v1::CallSummary>) {
    bed.rest_ok("POST", "/api/v1/rtpmanagers/m2/drain");
    bed.rest_ok("POST", "/api/v1/rtpmanagers/m3/drain");
    let (a, rtp_a) = media_socket();
    let (b, rtp_b) = media_socket();
    let (caller, callee) = bed.sipp_calls(
        scenarios,
        u32::try_from(calls).expect("few calls"),
        50,
        hold_ms,
        (&rtp_a, &rtp_b),
    );
    let on_m1 = bed.wait_bridged(0, calls, Duration::from_secs(20));
    bed.rest_ok("DELETE", "/api/v1/rtpmanagers/m2/drain");
    bed.rest_ok("DELETE", "/api/v1/rtpmanagers/m3/drain");
    let phones = Phones::start(&a, &b, bed.managers.iter().map(|m| m.grpc).collect());
    // Media through m1 for every call before anything happens to it.
    let deadline = Instant::now() + Duration::from_secs(5);
    for (leg_a, leg_b) in on_m1.iter().filter_map(legs) {
        while phones.heard(leg_a).is_none() || phones.heard(leg_b).is_none() {
            assert!(
                Instant::now() < deadline,
                "no RTP through m1's {leg_a}/{leg_b}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    (caller, callee, phones, on_m1)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[test]
fn a_killed_managers_calls_move_after_the_grace_and_their_media_flows_again_both_ways() {
    if common::sipp::binary().is_none() {
        return;
    }
    const CALLS: usize = 20;
    let mut bed = ThreeManagers::start(&LOSS_ARGS);
    let (caller, callee, phones, on_m1) = calls_on_m1(
        &bed,
        CALLS,
        ("b2bua_uac_moved.xml", "b2bua_uas_moved.xml"),
        6_000,
    );

    let killed = Instant::now();
    bed.managers[0].kill();
    phones.forget(bed.managers[0].grpc);
    let migration = loop {
        let state = bed.rest_ok("GET", "/api/v1/rtpmanagers/m1/drain");
        let migration = &state["migration"];
        if migration["state"].is_string() && migration["state"] != "running" {
            break migration.clone();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no migration ended off m1: {state}\n{}",
            common::sipp::tail(&bed.server.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(migration["state"], "done", "{migration}");
    assert_eq!(migration["gone"], true, "{migration}");
    assert_eq!(migration["moved"], CALLS, "{migration}");
    assert_eq!(migration["ended"], 0, "{migration}");

    // Every call that was on m1 is on m2 or m3 now, bridged.
    let mut moved: HashMap<String, (SocketAddr, SocketAddr)> = HashMap::new();
    for i in [1, 2] {
        for call in bed.managers[i].calls() {
            moved.insert(call.call_id.clone(), legs(&call).expect("bridged"));
        }
    }
    for call in &on_m1 {
        assert!(
            moved.contains_key(&call.call_id),
            "{} not on another manager: {moved:?}",
            call.call_id
        );
    }
    assert_eq!(moved.len(), CALLS);

    // Media through the new legs both ways; the gap from the kill to the
    // later of each direction's first packet.
    let detection = Duration::from_secs(3); // 2 failed checks 1 s apart, + 1 s of phase
    let bound = detection + Duration::from_secs(3) + Duration::from_secs(2);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut gaps = Vec::new();
    for (call, (leg_a, leg_b)) in &moved {
        let gap = loop {
            match (phones.heard(*leg_a), phones.heard(*leg_b)) {
                (Some(at_a), Some(at_b)) => break at_a.first.max(at_b.first) - killed,
                _ => {
                    assert!(
                        Instant::now() < deadline,
                        "no RTP both ways through {call}'s new legs {leg_a}/{leg_b}"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        eprintln!("{call}: media gap {:.2} s", gap.as_secs_f64());
        assert!(gap < bound, "{call}: media gap {gap:?} over {bound:?}");
        gaps.push(gap);
    }
    gaps.sort();
    eprintln!(
        "{CALLS} calls moved off the killed m1: media gap p50 {:.2} s, max {:.2} s",
        percentile(&gaps, 0.5).as_secs_f64(),
        gaps[gaps.len() - 1].as_secs_f64()
    );

    // Every call carries on and ends normally on both sides.
    bed.finish("caller", caller);
    bed.finish("callee", callee);
    phones.stop();
    for i in [1, 2] {
        let left = bed.managers[i].wait_calls(Duration::from_secs(5), <[_]>::is_empty);
        assert!(
            left.is_empty(),
            "m{} still holds {} calls",
            i + 1,
            left.len()
        );
    }
    // The restart check needs m1 back: not here.
    drop(bed.managers.remove(0));
}

#[test]
fn a_manager_restarted_with_its_state_within_the_grace_keeps_its_calls_without_a_reinvite() {
    if common::sipp::binary().is_none() {
        return;
    }
    const CALLS: usize = 10;
    let mut bed = ThreeManagers::start(&LOSS_ARGS);
    // Plain scenarios: a re-INVITE would be an unexpected message to SIPp,
    // and the call would fail.
    let (caller, callee, phones, on_m1) =
        calls_on_m1(&bed, CALLS, ("b2bua_uac.xml", "b2bua_uas.xml"), 12_000);

    bed.managers[0].kill();
    let grpc = bed.managers[0].grpc.to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !bed
        .server
        .log()
        .lines()
        .any(|l| l.contains("RTP manager down") && l.contains(&grpc))
    {
        assert!(Instant::now() < deadline, "m1 never declared down");
        std::thread::sleep(Duration::from_millis(50));
    }
    let restarted = Instant::now();
    bed.restart(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let log = bed.server.log();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("RTP manager's calls after its restart") && l.contains("=m1 "))
        {
            break line.to_owned();
        }
        assert!(Instant::now() < deadline, "no restart seen");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        after.contains(&format!("kept={CALLS}")) && after.contains("lost=0"),
        "{after}"
    );
    // Past the grace: still on m1, media through the same legs both ways.
    std::thread::sleep(Duration::from_secs(4));
    let still = bed.managers[0].calls();
    assert_eq!(still.len(), CALLS, "re-adopted: {still:?}");
    for call in &on_m1 {
        let (leg_a, leg_b) = legs(call).expect("bridged");
        for leg in [leg_a, leg_b] {
            let heard = phones.heard(leg).expect("heard");
            assert!(
                heard.last > restarted + Duration::from_secs(3),
                "{}: no RTP through {leg} since the restart",
                call.call_id
            );
        }
    }
    let log = bed.server.log();
    for never in [
        "moving calls off the manager",
        "moving call",
        "manager lost",
    ] {
        assert!(
            !log.contains(never),
            "{never:?} in the log:\n{}",
            common::sipp::tail(&log, 40)
        );
    }
    let state = bed.rest_ok("GET", "/api/v1/rtpmanagers/m1/drain");
    assert!(state["migration"].is_null(), "{state}");

    bed.finish("caller", caller);
    bed.finish("callee", callee);
    phones.stop();
}
