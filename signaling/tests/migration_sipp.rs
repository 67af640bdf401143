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
use std::process::Child;
use std::time::{Duration, Instant};

use common::manager::{free_media_range, start_manager_in, Manager};
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
        let managers: Vec<Manager> = (0..3u16)
            .map(|i| {
                let low = min + i * 2 * PAIRS;
                start_manager_in(&audio, (low, low + 2 * PAIRS - 1), &[])
            })
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
            server,
            callee_port,
        };
        bed.wait_healthy();
        bed
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

/// The manager's (leg a, leg b) media addresses of a bridged call.
pub fn legs(call: &v1::CallSummary) -> Option<(SocketAddr, SocketAddr)> {
    let leg = |id: &str| {
        call.legs
            .iter()
            .find(|l| l.leg_id == id && !l.bridged_to.is_empty())
            .map(|l| {
                SocketAddr::new(
                    l.local_address.parse().expect("an address"),
                    u16::try_from(l.rtp_port).expect("a port"),
                )
            })
    };
    Some((leg("a")?, leg("b")?))
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
