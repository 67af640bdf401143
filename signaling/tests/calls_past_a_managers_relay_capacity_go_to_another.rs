//! Admission control across the pool: a manager whose userspace relay is
//! at its capacity refuses an Offer with RESOURCE_EXHAUSTED, and signaling
//! places the call on another manager; the caller never notices.

mod common;

use std::time::Duration;

use common::manager::{free_media_range, start_manager_at};
use common::sipp::media_socket;
use common::{free_port, Server};

#[test]
fn a_manager_at_its_relay_capacity_refuses_and_the_call_lands_on_the_next() {
    if common::sipp::binary().is_none() {
        return;
    }
    let data = tempfile::tempdir().expect("temp dir");
    let audio = data.path().join("audio");
    std::fs::create_dir_all(&audio).expect("audio dir");
    let (min, _) = free_media_range(40);
    // m1 carries one userspace call (two legs of 50 packets a second); m2
    // has the default capacity.
    let m1 = start_manager_at(
        &audio,
        0,
        (min, min + 39),
        &["--relay-capacity-pps", "100", "--relay-workers", "1"],
    );
    let m2 = start_manager_at(&audio, 0, (min + 40, min + 79), &[]);
    let callee_port = free_port();
    let plan = data.path().join("dialplan.json");
    std::fs::write(
        &plan,
        format!(
            r#"{{"version": "1.0", "routes": [
              {{"id": "extensions", "pattern": "1XXX", "actions": [
                {{"type": "dial", "params": {{"targets": ["sip:bob@127.0.0.1:{callee_port}"], "timeout": 20}}}}]}}
            ]}}"#
        ),
    )
    .expect("write the dialplan");
    let managers = format!("m1={},m2={}", m1.grpc, m2.grpc);
    let server = Server::start(
        &data.path().join("state"),
        &[
            "--dialplan",
            plan.to_str().expect("UTF-8 path"),
            "--auth",
            "anonymous",
            "--rtpmanager",
            &managers,
            // No Health answer during the calls: the pool does not learn
            // that m1 is at capacity (it would skip m1), so m1 is asked
            // and must refuse.
            "--rtpmanager-health-interval",
            "60",
        ],
    );
    let healthy =
        switchboard_testkit::wait_until(Duration::from_secs(15), Duration::from_millis(50), || {
            let pool = server.get_json("/api/v1/rtpmanagers");
            pool["members"]
                .as_array()
                .is_some_and(|list| list.iter().filter(|m| m["health"] == "healthy").count() == 2)
        });
    assert!(healthy, "managers never healthy");

    // Three calls, one every 700 ms, each held 6 s. The pool offers each
    // to m1 first (the first among equals: no other call is being set up
    // then), m1 takes the first and refuses the others (at capacity), and
    // the pool places those on m2.
    let (_a, rtp_a) = media_socket();
    let (_b, rtp_b) = media_socket();
    let dir = data.path();
    let callee = common::sipp::start(
        dir,
        "b2bua_uas.xml",
        callee_port,
        3,
        &["-key", "rtp_b", &rtp_b],
    );
    std::thread::sleep(Duration::from_millis(300));
    let target = server.sip_addr().to_string();
    let caller = common::sipp::start(
        dir,
        "b2bua_uac.xml",
        free_port(),
        3,
        &[
            "-s", "1001", "-r", "10", "-rp", "7000", "-l", "3", "-d", "6000", "-key", "rtp_a",
            &rtp_a, &target,
        ],
    );
    let on_m2 = m2.wait_calls(Duration::from_secs(15), |calls| calls.len() == 2);
    assert_eq!(on_m2.len(), 2, "m2 took the calls m1 refused");
    let on_m1 = m1.calls();
    assert_eq!(on_m1.len(), 1, "m1 kept to its capacity: {on_m1:?}");
    let health = m1.health();
    assert_eq!(
        (
            health.relay_load_pps,
            health.relay_capacity_pps,
            health.overloaded
        ),
        (100, 100, true)
    );
    common::sipp::finish(dir, "caller", caller, || server.log());
    common::sipp::finish(dir, "callee", callee, || server.log());
    assert!(
        server.log().contains("userspace relay is at capacity"),
        "signaling logs m1's refusal"
    );
}
