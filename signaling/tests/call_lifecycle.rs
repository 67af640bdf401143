//! Calls at the edges of the signaling server's life, with the real
//! binaries (signaling, RTP manager) and SIPp peers on loopback: SIGTERM
//! hangs every call up cleanly (BYE on both legs, media deleted) within
//! --shutdown-timeout; a drain first lets calls end and refuses new ones;
//! a peer that never answers its BYE holds the stop no longer than that;
//! a server killed with SIGKILL and restarted deletes its orphaned media
//! from the manager and leaves other nodes' calls alone.

mod common;

use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::manager::{runtime, start_manager, Manager};
use common::{free_port, status, Server, UdpPeer};
use nix::sys::signal::Signal;
use switchboard_proto::v1;

use common::sipp::{binary as sipp_binary, scenario};

/// Signaling + manager; extensions 1XXX dial the SIPp callee on
/// `callee_port`.
struct Bed {
    data: tempfile::TempDir,
    manager: Manager,
    server: Server,
    callee_port: u16,
}

fn bed(extra: &[&str]) -> Bed {
    let data = tempfile::tempdir().expect("temp dir");
    let audio = data.path().join("audio");
    std::fs::create_dir_all(&audio).expect("audio dir");
    let manager = start_manager(&audio, 64, &[]);
    let callee_port = free_port();
    let plan = format!(
        r#"{{"version": "1.0", "routes": [
          {{"id": "extensions", "pattern": "1XXX", "priority": 20, "actions": [
            {{"type": "dial", "params": {{"targets": ["sip:bob@127.0.0.1:{callee_port}"], "timeout": 30}}}}]}}
        ]}}"#
    );
    let plan_path = data.path().join("dialplan.json");
    std::fs::write(&plan_path, plan).expect("write the dialplan");
    let grpc = manager.grpc.to_string();
    let mut args = vec![
        "--auth",
        "anonymous",
        "--dialplan",
        plan_path.to_str().expect("UTF-8 path"),
        "--rtpmanager",
        &grpc,
    ];
    args.extend_from_slice(extra);
    let server = Server::start(&data.path().join("state"), &args);
    wait_healthy(&server);
    Bed {
        data,
        manager,
        server,
        callee_port,
    }
}

/// The common harness also names a manager that does not exist: wait until
/// ours is healthy so that calls are placed on it.
fn wait_healthy(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let managers = server.get_json("/api/v1/rtpmanagers");
        if managers["members"]
            .as_array()
            .is_some_and(|list| list.iter().any(|m| m["health"] == "healthy"))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "manager never healthy: {managers}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIPp with `scenario` on `port` for `calls` calls.
fn sipp(bed: &Bed, name: &str, port: u16, calls: u32, args: &[&str]) -> Child {
    let sipp = sipp_binary().expect("checked by the caller");
    let calls = calls.to_string();
    switchboard_testkit::sipp::command(&sipp, &scenario(name), port, bed.data.path())
        .args(["-m", &calls, "-l", &calls, "-r", "20"])
        .args(["-timeout", "60s", "-trace_err"])
        // Media goes to the discard port: these tests are about signaling.
        .args(["-key", "rtp_a", "9", "-key", "rtp_b", "9"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sipp")
}

/// `calls` answered calls, a SIPp callee answering and a SIPp caller
/// waiting to be hung up on; returns once the manager bridges them all.
fn calls_up(bed: &Bed, calls: u32) -> (Child, Child) {
    calls_with(bed, "b2bua_uac_wait_bye.xml", "b2bua_uas.xml", calls, true)
}

/// `calls` calls from a SIPp `caller` to a SIPp `callee`; returns once the
/// manager holds them all (and bridges them, when `bridged`).
fn calls_with(bed: &Bed, caller: &str, callee: &str, calls: u32, bridged: bool) -> (Child, Child) {
    let callee = sipp(bed, callee, bed.callee_port, calls, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let target = bed.server.sip_addr().to_string();
    let caller = sipp(bed, caller, free_port(), calls, &["-s", "1001", &target]);
    let expected = calls as usize;
    let up = bed.manager.wait_calls(Duration::from_secs(15), |list| {
        list.len() == expected
            && list.iter().all(|c| {
                !bridged || c.legs.iter().filter(|l| !l.bridged_to.is_empty()).count() == 2
            })
    });
    assert_eq!(
        up.len(),
        expected,
        "calls not all bridged on the manager: {up:?}\n{}",
        bed.server.log()
    );
    (caller, callee)
}

fn finish(bed: &Bed, role: &str, child: Child) -> Output {
    let output = child.wait_with_output().expect("wait for sipp");
    assert_eq!(
        output.status.code(),
        Some(0),
        "SIPp {role} failed:\n{}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        bed.server.log()
    );
    output
}

fn invite(peer: &UdpPeer, call_id: &str) -> String {
    let port = peer.port();
    let sdp = "v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n";
    format!(
        "INVITE sip:1001@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{call_id};rport\r\nMax-Forwards: 70\r\nFrom: <sip:carol@127.0.0.1:{port}>;tag=c1\r\nTo: <sip:1001@127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:carol@127.0.0.1:{port}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

#[test]
fn sigterm_byes_every_leg_deletes_the_media_and_exits_within_the_timeout() {
    if sipp_binary().is_none() {
        return;
    }
    const CALLS: u32 = 5;
    let mut bed = bed(&["--shutdown-timeout", "5"]);
    let (caller, callee) = calls_up(&bed, CALLS);

    let started = Instant::now();
    let exit = bed.server.stop_with(Signal::SIGTERM);
    let took = started.elapsed();
    assert!(exit.success(), "signaling exits 0, not {exit}");
    assert!(
        took < Duration::from_secs(5),
        "stopped in {took:?}, beyond --shutdown-timeout"
    );
    // Both sides saw a BYE for every call and answered it: SIPp counts the
    // calls successful only then.
    let caller = finish(&bed, "caller", caller);
    let callee = finish(&bed, "callee", callee);
    for (role, output) in [("caller", &caller), ("callee", &callee)] {
        let screen = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            switchboard_testkit::sipp::count(&screen, "Successful call"),
            u64::from(CALLS),
            "{role}: {screen}"
        );
    }
    let left = bed.manager.calls();
    assert!(left.is_empty(), "media left on the manager: {left:?}");
    let log = bed.server.log();
    let records: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("b2bua: call ended"))
        .collect();
    assert_eq!(
        records.len(),
        CALLS as usize,
        "one end record per call:\n{log}"
    );
    assert!(
        records.iter().all(|r| r.contains("reason=\"shutdown\"")),
        "each ended by the shutdown: {records:#?}"
    );
    assert!(log.contains("every call ended"), "{log}");
    eprintln!("SIGTERM with {CALLS} calls up: stopped in {took:?}");
}

#[test]
fn sigterm_cancels_ringing_callees_and_refuses_their_callers_503() {
    if sipp_binary().is_none() {
        return;
    }
    const CALLS: u32 = 3;
    let mut bed = bed(&["--shutdown-timeout", "5"]);
    let (caller, callee) = calls_with(
        &bed,
        "b2bua_uac_shutdown.xml",
        "b2bua_uas_ring.xml",
        CALLS,
        false,
    );
    // Let the callee's 180s arrive: a CANCEL waits for a provisional.
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let exit = bed.server.stop_with(Signal::SIGTERM);
    let took = started.elapsed();
    assert!(exit.success(), "signaling exits 0, not {exit}");
    // The callee saw a CANCEL for every call (answered 200 and 487, got
    // the ACK) and the caller a 503 it ACKed: SIPp counts them successful.
    for (role, child) in [("caller", caller), ("callee", callee)] {
        let output = finish(&bed, role, child);
        let screen = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            switchboard_testkit::sipp::count(&screen, "Successful call"),
            u64::from(CALLS),
            "{role}: {screen}"
        );
    }
    let left = bed.manager.calls();
    assert!(left.is_empty(), "media left on the manager: {left:?}");
    eprintln!("SIGTERM with {CALLS} ringing calls: stopped in {took:?}");
}

#[test]
fn a_drain_refuses_new_calls_503_then_hangs_up_what_is_left() {
    if sipp_binary().is_none() {
        return;
    }
    let mut bed = bed(&["--shutdown-drain", "2", "--shutdown-timeout", "5"]);
    let (caller, callee) = calls_up(&bed, 1);
    let sip = bed.server.sip_addr();
    let pid = bed.server.pid();
    let started = Instant::now();
    nix::sys::signal::kill(pid, Signal::SIGTERM).expect("signal the server");
    std::thread::sleep(Duration::from_millis(300));
    // Draining: a new call is refused at once, nothing reaches the manager.
    let peer = UdpPeer::new();
    let refused = peer.request(sip, invite(&peer, "late-call").as_bytes());
    assert_eq!(status(&refused), 503, "{refused}");
    assert_eq!(
        common::header(&refused, "Retry-After"),
        Some("30"),
        "{refused}"
    );
    assert_eq!(bed.manager.calls().len(), 1, "only the call in progress");
    let exit = bed.server.wait_exit();
    let took = started.elapsed();
    assert!(exit.success(), "signaling exits 0, not {exit}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(7),
        "the drain lasts 2 s, then the hangup: {took:?}"
    );
    finish(&bed, "caller", caller);
    finish(&bed, "callee", callee);
    assert!(bed.manager.calls().is_empty(), "media left on the manager");
}

/// Creates a call on the manager directly, as another signaling node would.
fn foreign_call(manager: &Manager, call_id: &str) {
    runtime().block_on(async {
        manager
            .client()
            .await
            .offer(v1::OfferRequest {
                call_id: call_id.to_owned(),
                leg_id: "a".to_owned(),
                peer_leg_id: String::new(),
                sdp: "v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n".to_owned(),
                options: None,
                peer_options: None,
            })
            .await
            .expect("Offer of another node's call");
    });
}

#[test]
fn a_restart_after_sigkill_deletes_this_nodes_orphans_and_no_one_elses() {
    if sipp_binary().is_none() {
        return;
    }
    let mut bed = bed(&["--node-id", "node-a", "--reconcile-grace", "2"]);
    let (mut caller, mut callee) = calls_up(&bed, 2);
    let ours: Vec<String> = bed.manager.calls().into_iter().map(|c| c.call_id).collect();
    assert!(
        ours.iter().all(|id| id.starts_with("node-a/")),
        "media call ids carry the node id: {ours:?}"
    );
    foreign_call(&bed.manager, "node-b/00000001/theirs@host");
    foreign_call(&bed.manager, "not-a-signaling-call");

    let exit = bed.server.stop_with(Signal::SIGKILL);
    assert!(!exit.success(), "killed");
    assert_eq!(
        bed.manager.calls().len(),
        4,
        "a crash leaves the media behind"
    );
    let restarted = Instant::now();
    bed.server.restart();
    wait_healthy(&bed.server);
    let left = bed
        .manager
        .wait_calls(Duration::from_secs(15), |list| list.len() == 2);
    let took = restarted.elapsed();
    let mut left: Vec<String> = left.into_iter().map(|c| c.call_id).collect();
    left.sort();
    assert_eq!(
        left,
        vec!["node-b/00000001/theirs@host", "not-a-signaling-call"],
        "our orphans deleted, the others kept:\n{}",
        bed.server.log()
    );
    // Still there a while later: a foreign call is never reconciled.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(bed.manager.calls().len(), 2);
    eprintln!("orphans deleted {took:?} after the restart (grace 2 s)");
    let _ = caller.kill();
    let _ = callee.kill();
    let _ = caller.wait();
    let _ = callee.wait();
}

#[test]
fn a_callee_that_never_answers_the_bye_holds_the_stop_no_longer_than_the_timeout() {
    if sipp_binary().is_none() {
        return;
    }
    let mut bed = bed(&["--shutdown-timeout", "2"]);
    let (caller, mut callee) = calls_up(&bed, 1);
    // The callee goes away: its BYE is retransmitted unanswered.
    let _ = callee.kill();
    let _ = callee.wait();
    let started = Instant::now();
    let exit = bed.server.stop_with(Signal::SIGTERM);
    let took = started.elapsed();
    assert!(exit.success(), "signaling exits 0, not {exit}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "stopped at --shutdown-timeout, not after {took:?}"
    );
    finish(&bed, "caller", caller);
    assert!(
        bed.manager.calls().is_empty(),
        "the media is deleted all the same"
    );
    let log = bed.server.log();
    assert!(
        log.contains("shutdown timeout") && log.contains("unfinished=1"),
        "the unanswered BYE is reported:\n{log}"
    );
}

#[test]
fn a_second_sigterm_cuts_a_long_drain_short() {
    if sipp_binary().is_none() {
        return;
    }
    let mut bed = bed(&["--shutdown-drain", "60"]);
    let (mut caller, mut callee) = calls_up(&bed, 1);
    let pid = bed.server.pid();
    let started = Instant::now();
    nix::sys::signal::kill(pid, Signal::SIGTERM).expect("signal the server");
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(pid, Signal::SIGTERM).expect("signal the server again");
    let exit = bed.server.wait_exit();
    let took = started.elapsed();
    assert!(exit.success(), "signaling exits 0, not {exit}");
    assert!(
        took < Duration::from_secs(3),
        "the operator insisted: no 60 s drain, stopped after {took:?}"
    );
    assert!(bed.server.log().contains("second signal"));
    for child in [&mut caller, &mut callee] {
        let _ = child.kill();
        let _ = child.wait();
    }
}
