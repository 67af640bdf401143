//! Real peers through the B2BUA: the signaling and RTP manager binaries on
//! loopback (ephemeral ports), SIPp as caller and callee, and media
//! sockets owned by the test on the ports the SIPp SDPs advertise, so the
//! RTP that crosses the manager is checked octet for octet.
//!
//! Each test asserts SIPp's exit status (0: every call succeeded) on both
//! sides and what the media sockets received.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::manager::{bridged_legs, rtp_both_ways, runtime, start_manager, Manager};
use common::sipp::{media_socket, rtp, scenario, tail};
use common::{free_port, users_file, Server};
use switchboard_proto::v1;
use switchboard_proto::v1::rtp_manager_client::RtpManagerClient;
use switchboard_testkit::sipp;

fn sipp_binary() -> Option<PathBuf> {
    common::sipp::binary()
}

/// A 0.4 s 1 kHz tone, 8 kHz 16-bit mono WAV.
fn tone_wav() -> Vec<u8> {
    let samples: Vec<i16> = (0..3200)
        .map(|i| {
            let t = f64::from(i) / 8000.0;
            (8000.0 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()).round() as i16
        })
        .collect();
    switchboard_testkit::wav(8000, 16, &samples)
}

/// Signaling + manager, with a dialplan dialing the SIPp callee for 1XXX
/// (or registered users with `user/…`), and 9000 playing a tone.
struct Bed {
    data: tempfile::TempDir,
    manager: Manager,
    server: Server,
}

fn bed(dial_target: &str, extra: &[&str]) -> Bed {
    bed_with(dial_target, extra, &[])
}

fn bed_with(dial_target: &str, extra: &[&str], manager_args: &[&str]) -> Bed {
    bed_with_timeout(dial_target, extra, manager_args, 20)
}

/// A bed whose extensions route dials `dial_target` for at most
/// `dial_timeout` seconds.
fn bed_with_timeout(
    dial_target: &str,
    extra: &[&str],
    manager_args: &[&str],
    dial_timeout: u32,
) -> Bed {
    let data = tempfile::tempdir().expect("temp dir");
    let manager = start_manager(&audio_dir(&data), 16, manager_args);
    bed_around(
        data,
        manager,
        &[],
        BedArgs {
            dial_target,
            extra,
            dial_timeout,
            more_routes: "",
        },
    )
}

/// The bed's audio directory, with the tone the announcement route plays.
fn audio_dir(data: &tempfile::TempDir) -> PathBuf {
    let audio = data.path().join("audio");
    std::fs::create_dir_all(&audio).expect("audio dir");
    std::fs::write(audio.join("welcome.wav"), tone_wav()).expect("write the announcement");
    audio
}

/// Signaling's settings in a bed.
struct BedArgs<'a> {
    dial_target: &'a str,
    extra: &'a [&'a str],
    dial_timeout: u32,
    /// Routes before the others (JSON objects, each followed by a comma).
    more_routes: &'a str,
}

/// Signaling in `data` with `manager`, after the managers `before` (each
/// `id=host:port`), once all of them are healthy.
fn bed_around(
    data: tempfile::TempDir,
    manager: Manager,
    before: &[String],
    BedArgs {
        dial_target,
        extra,
        dial_timeout,
        more_routes,
    }: BedArgs<'_>,
) -> Bed {
    let plan = format!(
        r#"{{"version": "1.0", "routes": [{more_routes}
          {{"id": "announcement", "pattern": "9000", "priority": 10, "actions": [
            {{"type": "answer", "params": {{}}}},
            {{"type": "play_audio", "params": {{"files": ["welcome.wav"]}}}},
            {{"type": "hangup", "params": {{"code": 200, "reason": "done"}}}}]}},
          {{"id": "extensions", "pattern": "1XXX", "priority": 20, "actions": [
            {{"type": "dial", "params": {{"targets": ["{dial_target}"], "timeout": {dial_timeout}}}}}]}},
          {{"id": "unknown", "pattern": "*", "priority": 1000, "actions": [
            {{"type": "hangup", "params": {{"code": 404, "reason": "Not Found"}}}}]}}
        ]}}"#
    );
    let plan_path = data.path().join("dialplan.json");
    std::fs::write(&plan_path, plan).expect("write the dialplan");
    let grpc = manager.grpc.to_string();
    let mut args = vec!["--dialplan", plan_path.to_str().expect("UTF-8 path")];
    for other in before {
        args.extend_from_slice(&["--rtpmanager", other]);
    }
    args.extend_from_slice(&["--rtpmanager", &grpc]);
    args.extend_from_slice(extra);
    let server = Server::start(&data.path().join("state"), &args);
    // The common harness also names a manager that does not exist: wait
    // until ours are healthy so that calls are placed on them.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let managers = server.get_json("/api/v1/rtpmanagers");
        let healthy = managers["members"].as_array().map_or(0, |list| {
            list.iter().filter(|m| m["health"] == "healthy").count()
        });
        if healthy > before.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "managers never healthy: {managers}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Bed {
        data,
        manager,
        server,
    }
}

/// Starts SIPp on `port` with `scenario` for one call.
fn sipp(bed: &Bed, name: &str, port: u16, args: &[&str]) -> Child {
    common::sipp::start(bed.data.path(), name, port, 1, args)
}

fn start_caller(bed: &Bed, name: &str, service: &str, args: &[&str]) -> Child {
    let mut all = vec!["-s", service];
    all.extend_from_slice(args);
    let target = bed.server.sip_addr().to_string();
    all.push(&target);
    sipp(bed, name, free_port(), &all)
}

fn finish(bed: &Bed, role: &str, child: Child) -> Output {
    common::sipp::finish(bed.data.path(), role, child, || bed.server.log())
}

fn calls_on(manager: &Manager) -> usize {
    runtime().block_on(async {
        let mut client = RtpManagerClient::connect(format!("http://{}", manager.grpc))
            .await
            .expect("connect to the manager");
        client
            .list_calls(v1::ListCallsRequest {})
            .await
            .expect("ListCalls")
            .into_inner()
            .calls
            .len()
    })
}

fn wait_no_calls(manager: &Manager) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while calls_on(manager) != 0 {
        assert!(
            Instant::now() < deadline,
            "the call's media was not deleted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One call from a SIPp caller (dialling 1001) through signaling and the
/// manager to a SIPp callee. Both get the RTP port of a media socket of their
/// own as `rtp_a`/`rtp_b`; with `rtp`, packets are checked both ways through
/// the bridge while the call is up.
struct TwoParty<'a> {
    callee: &'a str,
    callee_args: &'a [&'a str],
    caller: &'a str,
    caller_args: &'a [&'a str],
    rtp: bool,
}

/// Places the call on `bed` (whose dial target is the callee on
/// `callee_port`), waits for both SIPp sides to succeed and for the manager
/// to hold no call.
fn two_party_call(bed: &Bed, callee_port: u16, call: TwoParty<'_>) {
    let (a, rtp_a) = media_socket();
    let (b, rtp_b) = media_socket();
    let mut callee_args = vec!["-key", "rtp_b", &rtp_b];
    callee_args.extend_from_slice(call.callee_args);
    let callee = sipp(bed, call.callee, callee_port, &callee_args);
    std::thread::sleep(Duration::from_millis(300));
    let mut caller_args = vec!["-key", "rtp_a", &rtp_a];
    caller_args.extend_from_slice(call.caller_args);
    let caller = start_caller(bed, call.caller, "1001", &caller_args);
    if call.rtp {
        rtp_both_ways(&bed.manager, &a, &b);
    }
    finish(bed, "caller", caller);
    finish(bed, "callee", callee);
    wait_no_calls(&bed.manager);
}

/// A bed with anonymous authentication whose extensions dial a SIPp callee
/// on a fresh port; returns the bed and that port.
fn anonymous_bed() -> (Bed, u16) {
    let callee_port = free_port();
    let bed = bed(
        &format!("sip:bob@127.0.0.1:{callee_port}"),
        &["--auth", "anonymous"],
    );
    (bed, callee_port)
}

#[test]
fn basic_call_with_rtp_both_ways_caller_hangs_up() {
    if sipp_binary().is_none() {
        return;
    }
    let (bed, callee_port) = anonymous_bed();
    two_party_call(
        &bed,
        callee_port,
        TwoParty {
            callee: "b2bua_uas.xml",
            callee_args: &[],
            caller: "b2bua_uac.xml",
            caller_args: &["-d", "4000"],
            rtp: true,
        },
    );
}

#[test]
fn basic_call_callee_hangs_up() {
    if sipp_binary().is_none() {
        return;
    }
    let (bed, callee_port) = anonymous_bed();
    two_party_call(
        &bed,
        callee_port,
        TwoParty {
            callee: "b2bua_uas_bye.xml",
            callee_args: &["-d", "3000"],
            caller: "b2bua_uac_wait_bye.xml",
            caller_args: &[],
            rtp: true,
        },
    );
}

#[test]
fn cancel_before_answer_reaches_the_callee() {
    if sipp_binary().is_none() {
        return;
    }
    let (bed, callee_port) = anonymous_bed();
    two_party_call(
        &bed,
        callee_port,
        TwoParty {
            callee: "b2bua_uas_ring.xml",
            callee_args: &[],
            caller: "b2bua_uac_cancel.xml",
            caller_args: &[],
            rtp: false,
        },
    );
}

#[test]
fn no_answer_times_out_with_480_and_cancels_the_callee() {
    if sipp_binary().is_none() {
        return;
    }
    let callee_port = free_port();
    let bed = bed_with_timeout(
        &format!("sip:bob@127.0.0.1:{callee_port}"),
        &["--auth", "anonymous"],
        &[],
        2,
    );
    let (_a, rtp_a) = media_socket();
    // The callee rings until it is cancelled; the B2BUA cancels it when the
    // route's 2 s dial timeout expires and answers the caller 480.
    let callee = sipp(&bed, "b2bua_uas_ring.xml", callee_port, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let caller = start_caller(
        &bed,
        "b2bua_uac_noanswer.xml",
        "1001",
        &["-key", "rtp_a", &rtp_a],
    );
    finish(&bed, "caller", caller);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(10),
        "480 after the 2 s dial timeout, not {waited:?}"
    );
    finish(&bed, "callee", callee);
    wait_no_calls(&bed.manager);
}

#[test]
fn busy_callee_486_is_relayed() {
    if sipp_binary().is_none() {
        return;
    }
    let (bed, callee_port) = anonymous_bed();
    two_party_call(
        &bed,
        callee_port,
        TwoParty {
            callee: "b2bua_uas_busy.xml",
            callee_args: &[],
            caller: "b2bua_uac_busy.xml",
            caller_args: &[],
            rtp: false,
        },
    );
}

#[test]
fn a_redirect_from_the_callee_is_followed_to_its_contact() {
    if sipp_binary().is_none() {
        return;
    }
    // The dial target answers 302 pointing at the real callee.
    let (bed, redirect_port) = anonymous_bed();
    let callee_port = free_port();
    let callee_port_text = callee_port.to_string();
    let redirector = sipp(
        &bed,
        "b2bua_uas_redirect.xml",
        redirect_port,
        &["-key", "target_port", &callee_port_text],
    );
    two_party_call(
        &bed,
        callee_port,
        TwoParty {
            callee: "b2bua_uas.xml",
            callee_args: &[],
            caller: "b2bua_uac.xml",
            caller_args: &["-d", "2000"],
            rtp: true,
        },
    );
    finish(&bed, "redirector", redirector);
}

#[test]
fn a_registered_user_is_dialed_by_extension() {
    if sipp_binary().is_none() {
        return;
    }
    let callee_port = free_port();
    let data_users = tempfile::tempdir().expect("temp dir");
    let users = users_file(data_users.path(), &[("1001", "pw1001")]);
    let users = users.to_str().expect("UTF-8 path").to_owned();
    let bed = bed(
        "user/${destination}",
        &[
            "--realm",
            "peers.test",
            "--users-file",
            &users,
            "--auth-algorithms",
            "MD5",
            "--auth-methods",
            "REGISTER",
        ],
    );
    // Registers from the port the callee then listens on.
    let register = sipp(
        &bed,
        "register_auth.xml",
        callee_port,
        &[
            "-s",
            "1001",
            "-au",
            "1001",
            "-ap",
            "pw1001",
            &bed.server.sip_addr().to_string(),
        ],
    );
    finish(&bed, "registration", register);
    let bindings = bed.server.get_json("/api/v1/registrations");
    assert_eq!(bindings[0]["aor"], "1001@127.0.0.1", "{bindings}");
    let (a, rtp_a) = media_socket();
    let (b, rtp_b) = media_socket();
    let callee = sipp(
        &bed,
        "b2bua_uas.xml",
        callee_port,
        &["-key", "rtp_b", &rtp_b],
    );
    std::thread::sleep(Duration::from_millis(300));
    let caller = start_caller(
        &bed,
        "b2bua_uac.xml",
        "1001",
        &["-key", "rtp_a", &rtp_a, "-d", "3000"],
    );
    rtp_both_ways(&bed.manager, &a, &b);
    finish(&bed, "caller", caller);
    finish(&bed, "callee", callee);
    // An extension nobody registered: the dialplan's 404 route is not hit,
    // the dial fails with 480.
    let (_c, rtp_c) = media_socket();
    let unknown = start_caller(
        &bed,
        "b2bua_uac_busy.xml",
        "1002",
        &["-key", "rtp_a", &rtp_c],
    );
    let output = unknown.wait_with_output().expect("wait for sipp");
    assert_ne!(output.status.code(), Some(0), "1002 is not registered");
    wait_no_calls(&bed.manager);
}

#[test]
fn playback_route_streams_the_announcement_then_hangs_up() {
    if sipp_binary().is_none() {
        return;
    }
    let bed = bed("sip:nobody@127.0.0.1:9", &["--auth", "anonymous"]);
    let (a, rtp_a) = media_socket();
    let caller = start_caller(
        &bed,
        "b2bua_uac_wait_bye.xml",
        "9000",
        &["-key", "rtp_a", &rtp_a],
    );
    let mut buffer = [0u8; 2048];
    let mut packets = 0;
    let mut sequence = Vec::new();
    while let Ok((len, _)) = a.recv_from(&mut buffer) {
        assert!(len >= 12, "an RTP packet");
        assert_eq!(buffer[1] & 0x7f, 0, "PCMU, as offered");
        sequence.push(u16::from_be_bytes([buffer[2], buffer[3]]));
        packets += 1;
    }
    finish(&bed, "caller", caller);
    // 0.4 s of audio in 20 ms packets.
    assert_eq!(packets, 20, "the whole announcement: {sequence:?}");
    assert!(
        sequence.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
        "consecutive sequence numbers: {sequence:?}"
    );
    wait_no_calls(&bed.manager);
}

#[test]
fn media_timeout_on_the_manager_hangs_up_both_legs() {
    if sipp_binary().is_none() {
        return;
    }
    let callee_port = free_port();
    let bed = bed_with(
        &format!("sip:bob@127.0.0.1:{callee_port}"),
        &["--auth", "anonymous"],
        // The manager counts silence from the answer: the test must see the
        // call bridged and send its packets within this, which 1 s did not
        // always leave under a loaded CI (the call was reaped first).
        &["--media-timeout", "3"],
    );
    let (a, rtp_a) = media_socket();
    let (b, rtp_b) = media_socket();
    let callee = sipp(
        &bed,
        "b2bua_uas.xml",
        callee_port,
        &["-key", "rtp_b", &rtp_b],
    );
    std::thread::sleep(Duration::from_millis(300));
    let caller = start_caller(
        &bed,
        "b2bua_uac_wait_bye.xml",
        "1001",
        &["-key", "rtp_a", &rtp_a],
    );
    // One packet each way confirms the legs; then silence.
    rtp_both_ways_once(&bed.manager, &a, &b);
    let started = Instant::now();
    finish(&bed, "caller", caller);
    finish(&bed, "callee", callee);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "BYEs came {:?} after the media stopped",
        started.elapsed()
    );
    assert!(
        bed.server.log().contains("media timeout: hanging up"),
        "{}",
        tail(&bed.server.log(), 30)
    );
    wait_no_calls(&bed.manager);
}

fn rtp_both_ways_once(manager: &Manager, a: &UdpSocket, b: &UdpSocket) {
    let (_, leg_a, leg_b) = bridged_legs(manager);
    let mut buffer = [0u8; 2048];
    a.send_to(&rtp(1, 0x11), leg_a).expect("send caller RTP");
    b.recv_from(&mut buffer)
        .expect("the callee receives the caller's RTP");
    b.send_to(&rtp(1, 0x22), leg_b).expect("send callee RTP");
    a.recv_from(&mut buffer)
        .expect("the caller receives the callee's RTP");
}

#[test]
fn late_offer_call_with_rtp_both_ways() {
    if sipp_binary().is_none() {
        return;
    }
    let (bed, callee_port) = anonymous_bed();
    two_party_call(
        &bed,
        callee_port,
        TwoParty {
            callee: "b2bua_uas.xml",
            callee_args: &[],
            caller: "b2bua_uac_late.xml",
            caller_args: &["-d", "3000"],
            rtp: true,
        },
    );
}

#[test]
fn hold_and_resume_by_reinvite_are_relayed_through_the_manager() {
    if sipp_binary().is_none() {
        return;
    }
    let (bed, callee_port) = anonymous_bed();
    two_party_call(
        &bed,
        callee_port,
        TwoParty {
            callee: "b2bua_uas_held.xml",
            callee_args: &[],
            caller: "b2bua_uac_hold.xml",
            caller_args: &["-d", "2500"],
            rtp: true,
        },
    );
}

#[test]
fn a_tcp_caller_reaches_a_udp_callee() {
    if sipp_binary().is_none() {
        return;
    }
    let (bed, callee_port) = anonymous_bed();
    two_party_call(
        &bed,
        callee_port,
        TwoParty {
            callee: "b2bua_uas_bye.xml",
            callee_args: &["-d", "3000"],
            caller: "b2bua_uac_wait_bye.xml",
            caller_args: &["-t", "t1"],
            rtp: true,
        },
    );
}

#[test]
fn three_hundred_calls_at_100_per_second_all_succeed_and_leave_no_media() {
    let Some(sipp_path) = sipp_binary() else {
        return;
    };
    let callee_port = free_port();
    let bed = bed(
        &format!("sip:bob@127.0.0.1:{callee_port}"),
        &["--auth", "anonymous"],
    );
    let mut callee = sipp::command(
        &sipp_path,
        &scenario("b2bua_uas.xml"),
        callee_port,
        bed.data.path(),
    )
    .args(["-key", "rtp_b", "9", "-m", "300", "-timeout", "60s"])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("run the SIPp callee");
    std::thread::sleep(Duration::from_millis(300));
    let caller = sipp::command(
        &sipp_path,
        &scenario("b2bua_uac.xml"),
        free_port(),
        bed.data.path(),
    )
    .args(["-s", "1001", "-key", "rtp_a", "9", "-d", "0"])
    .args(["-r", "100", "-m", "300", "-l", "300"])
    .args(["-timeout", "60s", "-trace_err"])
    .arg(bed.server.sip_addr().to_string())
    .output()
    .expect("run the SIPp caller");
    let screen = String::from_utf8_lossy(&caller.stdout);
    let errors = sipp::errors(bed.data.path());
    assert_eq!(
        caller.status.code(),
        Some(0),
        "SIPp caller failed:\n{screen}\nSIPp errors:\n{}\nserver log tail:\n{}",
        tail(&errors, 60),
        tail(&bed.server.log(), 40)
    );
    assert_eq!(
        switchboard_testkit::sipp::count(&screen, "Successful call"),
        300,
        "{screen}"
    );
    assert_eq!(
        switchboard_testkit::sipp::count(&screen, "Failed call"),
        0,
        "{screen}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = callee.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the callee did not finish its 300 calls"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "the SIPp callee saw failed calls");
    wait_no_calls(&bed.manager);
}

/// A POST or DELETE on the bed's REST API; the JSON body of the answer.
fn rest_call(bed: &Bed, method: &str, path: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", bed.server.rest_port))
        .expect("connect to the REST API");
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    assert!(
        response.starts_with("HTTP/1.0 200"),
        "{method} {path}: {response}"
    );
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).expect("JSON body")
}

#[test]
fn a_drained_manager_gets_no_new_call_until_the_drain_is_taken_back() {
    if sipp_binary().is_none() {
        return;
    }
    let (bed, callee_port) = anonymous_bed();
    let drain = format!("/api/v1/rtpmanagers/{}/drain", bed.manager.grpc);
    let state = rest_call(&bed, "POST", &drain);
    assert_eq!(state["operator"], true, "{state}");
    let pool = bed.server.get_json("/api/v1/rtpmanagers");
    assert_eq!(pool["accepting"], 0, "{pool}");

    // The only healthy manager is drained: the INVITE is refused before
    // any media is set up.
    let caller = common::UdpPeer::new();
    let invite = invite_1001(&bed, &caller, "drain");
    let response = caller.request(bed.server.sip_addr(), invite.as_bytes());
    assert_eq!(common::status(&response), 503, "{response}");
    assert_eq!(
        calls_on(&bed.manager),
        0,
        "nothing placed on the drained manager"
    );

    let state = rest_call(&bed, "DELETE", &drain);
    assert_eq!(state["draining"], false, "{state}");
    two_party_call(
        &bed,
        callee_port,
        TwoParty {
            callee: "b2bua_uas.xml",
            callee_args: &[],
            caller: "b2bua_uac.xml",
            caller_args: &["-d", "500"],
            rtp: false,
        },
    );
}

/// An INVITE for 1001 with an SDP offer from `caller`; `name` makes its
/// Call-ID (`name@test`), tag and branch.
fn invite_1001(bed: &Bed, caller: &common::UdpPeer, name: &str) -> String {
    let sdp = "v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
               m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
    format!(
        "INVITE sip:1001@{server} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{name}-1;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@127.0.0.1>;tag={name}\r\nTo: <sip:1001@{server}>\r\n\
         Call-ID: {name}@test\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@127.0.0.1:{port}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{sdp}",
        server = bed.server.sip_addr(),
        port = caller.port(),
        len = sdp.len(),
    )
}

// ----- failover between managers ------------------------------------------

/// Log lines containing every one of `needles`.
fn log_lines(log: &str, needles: &[&str]) -> usize {
    log.lines()
        .filter(|line| needles.iter().all(|n| line.contains(n)))
        .count()
}

/// A bed whose own manager (`bed.manager`, `m2_pairs` port pairs) comes
/// after m1, a manager with `m1_pairs` (a two-leg call needs two); returns
/// it, m1 and the port its extensions dial.
fn bed_after_m1(m1_pairs: u16, m2_pairs: u16) -> (Bed, Manager, u16) {
    let callee_port = free_port();
    let data = tempfile::tempdir().expect("temp dir");
    let audio = audio_dir(&data);
    let m1 = start_manager(&audio, m1_pairs, &[]);
    let m2 = start_manager(&audio, m2_pairs, &[]);
    let target = format!("sip:bob@127.0.0.1:{callee_port}");
    let bed = bed_around(
        data,
        m2,
        &[format!("m1={}", m1.grpc)],
        BedArgs {
            dial_target: &target,
            extra: &["--auth", "anonymous"],
            dial_timeout: 20,
            more_routes: "",
        },
    );
    (bed, m1, callee_port)
}

#[test]
fn a_manager_out_of_ports_is_passed_over_and_every_call_connects_through_the_next() {
    if sipp_binary().is_none() {
        return;
    }
    // m1 has one port pair: every call's first offer (two legs) exhausts it.
    let (bed, m1, callee_port) = bed_after_m1(1, 16);
    for _ in 0..5 {
        two_party_call(
            &bed,
            callee_port,
            TwoParty {
                callee: "b2bua_uas.xml",
                callee_args: &[],
                caller: "b2bua_uac.xml",
                caller_args: &["-d", "1500"],
                rtp: true,
            },
        );
    }
    let log = bed.server.log();
    assert_eq!(
        log_lines(
            &log,
            &[
                "RTP manager refused the call: trying the next",
                "rtpmanager=m1",
                "ResourceExhausted"
            ]
        ),
        5,
        "m1 (least loaded, first among equals) is tried and refuses each call:\n{}",
        tail(&log, 60)
    );
    assert_eq!(log_lines(&log, &["every RTP manager refused"]), 0);
    assert_eq!(calls_on(&m1), 0, "nothing half-made left on m1");
}

#[test]
fn when_every_manager_refuses_the_caller_gets_503_with_retry_after_and_no_media_is_left() {
    // Both managers have a single port pair: neither can take a call.
    let (bed, m1, _) = bed_after_m1(1, 1);
    let m2 = &bed.manager;
    let caller = common::UdpPeer::new();
    let invite = invite_1001(&bed, &caller, "all-refused");
    let response = caller.request(bed.server.sip_addr(), invite.as_bytes());
    assert_eq!(common::status(&response), 503, "{response}");
    assert_eq!(
        common::header(&response, "Retry-After"),
        Some("30"),
        "{response}"
    );
    // The log is read from stderr by a thread and may trail the 503.
    bed.server.logged("every RTP manager refused the call");
    let log = bed.server.log();
    let all = log
        .lines()
        .find(|l| l.contains("every RTP manager refused the call"))
        .unwrap_or_else(|| panic!("the refusals are logged:\n{}", tail(&log, 40)));
    let m2_id = m2.grpc.to_string();
    let (first, second) = (
        all.find("m1: ResourceExhausted")
            .expect("m1's refusal named"),
        all.find(&format!("{m2_id}: ResourceExhausted"))
            .expect("m2's refusal named"),
    );
    assert!(first < second, "in the order tried: {all}");
    assert_eq!(calls_on(&m1), 0, "no half-made call on m1");
    assert_eq!(calls_on(m2), 0, "no half-made call on m2");
}

/// Waits up to `limit` for a line of the server's log containing every one
/// of `needles`; returns it.
fn wait_log_line(server: &Server, needles: &[&str], limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let log = server.log();
        if let Some(line) = log
            .lines()
            .find(|line| needles.iter().all(|n| line.contains(n)))
        {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {needles:?}:\n{}",
            tail(&log, 60)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_killed_manager_is_lost_once_after_the_grace_and_a_restart_reports_only_the_calls_it_lost() {
    if sipp_binary().is_none() {
        return;
    }
    let data = tempfile::tempdir().expect("temp dir");
    let audio = audio_dir(&data);
    let state = data.path().join("manager-state");
    let state = state.to_str().expect("UTF-8 path").to_owned();
    let (grpc_port, range) = (free_port(), common::manager::free_media_range(16));
    let start = |saved: bool| {
        let extra: &[&str] = if saved {
            &["--state-dir", state.as_str()]
        } else {
            &[]
        };
        common::manager::start_manager_at(&audio, grpc_port, range, extra)
    };
    let callee_port = free_port();
    let target = format!("sip:bob@127.0.0.1:{callee_port}");
    let bed = bed_around(
        data,
        start(true),
        &[],
        BedArgs {
            dial_target: &target,
            extra: &[
                "--auth",
                "anonymous",
                "--rtpmanager-health-interval",
                "1",
                "--rtpmanager-failures",
                "2",
                "--rtpmanager-lost-grace",
                "3",
            ],
            dial_timeout: 20,
            more_routes: "",
        },
    );
    // Lines about our manager (the harness names one more, always down).
    let ours = format!("127.0.0.1:{grpc_port}");
    let mut call = call_waiting_for_bye_on(bed, callee_port);
    let media = call
        .bed
        .manager
        .wait_calls(Duration::from_secs(10), |c| c.len() == 1);
    assert_eq!(media.len(), 1, "the call's media is on the manager");
    let lost = "RTP manager lost: its calls must move";

    // Killed, declared down, restarted with its state within the grace:
    // a new instance that re-adopted the call, so nothing is lost.
    call.bed.manager.kill();
    wait_log_line(
        &call.bed.server,
        &["RTP manager down", &ours],
        Duration::from_secs(10),
    );
    call.bed.manager = start(true);
    let after = wait_log_line(
        &call.bed.server,
        &["RTP manager's calls after its restart", &ours],
        Duration::from_secs(10),
    );
    assert!(
        after.contains("kept=1") && after.contains("lost=0"),
        "{after}"
    );
    assert_eq!(call.bed.manager.calls().len(), 1, "re-adopted");
    std::thread::sleep(Duration::from_secs(4));
    let log = call.bed.server.log();
    assert_eq!(
        log_lines(&log, &[lost]),
        0,
        "past the grace:\n{}",
        tail(&log, 40)
    );

    // Killed for good: lost once, about 2 failed checks + 3 s after.
    let killed = Instant::now();
    call.bed.manager.kill();
    let line = wait_log_line(
        &call.bed.server,
        &[lost, "grace_expired", &ours],
        Duration::from_secs(15),
    );
    let took = killed.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took <= Duration::from_secs(7),
        "lost {took:?} after the kill: {line}"
    );
    assert!(line.contains("calls=1"), "the pinned call: {line}");
    eprintln!("lost {took:?} after the kill (2 checks 1 s apart, grace 3 s)");
    std::thread::sleep(Duration::from_secs(3));
    let log = call.bed.server.log();
    assert_eq!(log_lines(&log, &[lost]), 1, "once:\n{}", tail(&log, 40));

    // Back without its state: the call it lost is reported at once.
    call.bed.manager = start(false);
    let line = wait_log_line(
        &call.bed.server,
        &[lost, "restarted", &ours],
        Duration::from_secs(10),
    );
    assert!(line.contains("calls=1"), "{line}");

    let (bed, id) = (&call.bed, &call.id);
    let (status, body) = bed.server.rest("DELETE", &format!("/api/v1/calls/{id}"));
    assert_eq!(status, 202, "{body}");
    finish(bed, "caller", call.caller);
    finish(bed, "callee", call.callee);
}

// ----- the operator's API: calls and CDRs ------------------------------

/// Sends RTP from both media sockets to their legs every 20 ms until
/// `stop`, as two phones would.
fn stream_rtp(
    a: UdpSocket,
    b: UdpSocket,
    leg_a: SocketAddr,
    leg_b: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u16> {
    std::thread::spawn(move || {
        let mut seq = 1u16;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = a.send_to(&rtp(seq, 0x11), leg_a);
            let _ = b.send_to(&rtp(seq, 0x22), leg_b);
            seq = seq.wrapping_add(1);
            std::thread::sleep(Duration::from_millis(20));
        }
        seq
    })
}

/// The only call of `/api/v1/calls` once it is answered.
fn answered_call(bed: &Bed) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = bed.server.get_json("/api/v1/calls");
        if page["calls"][0]["state"] == "answered" {
            return page;
        }
        assert!(Instant::now() < deadline, "no answered call listed: {page}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn leg<'a>(call: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    call["legs"]
        .as_array()
        .and_then(|legs| legs.iter().find(|l| l["leg"] == id))
        .unwrap_or_else(|| panic!("no leg {id} in {call}"))
}

#[test]
fn a_call_in_progress_is_listed_with_both_legs_and_rising_packets_and_leaves_a_cdr() {
    if sipp_binary().is_none() {
        return;
    }
    let records = tempfile::tempdir().expect("temp dir");
    let cdr_file = records.path().join("cdr.jsonl");
    let callee_port = free_port();
    let bed = bed(
        &format!("sip:bob@127.0.0.1:{callee_port}"),
        &[
            "--auth",
            "anonymous",
            "--cdr-file",
            cdr_file.to_str().expect("UTF-8 path"),
        ],
    );
    let (a, rtp_a) = media_socket();
    let (b, rtp_b) = media_socket();
    let callee = sipp(
        &bed,
        "b2bua_uas.xml",
        callee_port,
        &["-key", "rtp_b", &rtp_b],
    );
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let caller = start_caller(
        &bed,
        "b2bua_uac.xml",
        "1001",
        &["-key", "rtp_a", &rtp_a, "-d", "4000"],
    );
    let (_, leg_a, leg_b) = bridged_legs(&bed.manager);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let streaming = stream_rtp(a, b, leg_a, leg_b, std::sync::Arc::clone(&stop));

    std::thread::sleep(Duration::from_millis(500));
    let first = answered_call(&bed);
    std::thread::sleep(Duration::from_millis(600));
    let second = bed.server.get_json("/api/v1/calls");
    assert_eq!(first["total"], 1, "{first}");
    assert_eq!(first["next"], serde_json::Value::Null);
    let call = &first["calls"][0];
    assert_eq!(call["media_error"], serde_json::Value::Null, "{call}");
    assert_eq!(call["manager"], bed.manager.grpc.to_string());
    assert_eq!(call["route"], "extensions");
    assert_eq!(call["caller"]["transport"], "udp");
    assert_eq!(call["caller"]["display_name"], "Alice");
    assert_eq!(
        call["callee"]["address"],
        format!("127.0.0.1:{callee_port}")
    );
    assert_eq!(call["legs"].as_array().map(Vec::len), Some(2), "{call}");
    for id in ["a", "b"] {
        let before = leg(call, id);
        let after = leg(&second["calls"][0], id);
        assert_eq!(before["codec"], "PCMU/8000", "leg {id}: {before}");
        let (p1, p2) = (
            before["rtp_in"]["packets"].as_u64().expect("packets"),
            after["rtp_in"]["packets"].as_u64().expect("packets"),
        );
        assert!(p1 > 0 && p2 > p1, "leg {id}: packets {p1} then {p2}");
        assert!(
            after["rtp_out"]["packets"].as_u64() > before["rtp_out"]["packets"].as_u64(),
            "leg {id} sends more too"
        );
    }
    assert_eq!(
        leg(call, "a")["latched_address"],
        format!("127.0.0.1:{rtp_a}"),
        "the caller's media source, locked"
    );

    let id = call["id"].as_str().expect("an id").to_owned();
    let one = bed.server.get_json(&format!("/api/v1/calls/{id}"));
    let ladder: Vec<&str> = one["sip"]
        .as_array()
        .expect("a ladder")
        .iter()
        .filter_map(|e| e["first_line"].as_str())
        .collect();
    assert!(
        ladder[0].starts_with("INVITE sip:1001@"),
        "the caller's INVITE first: {ladder:?}"
    );
    assert!(
        ladder.iter().any(|l| l.starts_with("INVITE sip:bob@")),
        "the callee's INVITE: {ladder:?}"
    );
    assert!(
        one["sdp"]["b_answer"]
            .as_str()
            .is_some_and(|s| s.contains(&format!("m=audio {rtp_b} "))),
        "{}",
        one["sdp"]
    );

    finish(&bed, "caller", caller);
    finish(&bed, "callee", callee);
    let talked = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    streaming.join().expect("RTP thread");
    wait_no_calls(&bed.manager);
    let listed = bed.server.get_json("/api/v1/calls");
    assert_eq!(listed["total"], 0, "{listed}");
    let (status, _) = bed.server.rest("GET", &format!("/api/v1/calls/{id}"));
    assert_eq!(status, 404);

    // The CDR: one line, with the figures the manager had at the delete.
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = std::fs::read_to_string(&cdr_file).unwrap_or_default();
        if text.ends_with('\n') {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no CDR line in {}",
            cdr_file.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(text.lines().count(), 1, "{text}");
    let cdr: serde_json::Value = serde_json::from_str(text.trim()).expect("a JSON line");
    assert_eq!(cdr["id"], id.as_str());
    assert_eq!(cdr["final_status"], 200);
    assert_eq!(cdr["ended_by"], "caller");
    assert_eq!(cdr["reason"], "hangup");
    assert_eq!(cdr["codec"], "PCMU/8000");
    assert_eq!(cdr["manager"], bed.manager.grpc.to_string());
    let duration = cdr["duration_ms"].as_u64().expect("duration");
    assert!(
        (4000..=talked.as_millis() as u64 + 1000).contains(&duration),
        "duration {duration} ms for a 4 s call"
    );
    assert!(cdr["talk_ms"]
        .as_u64()
        .is_some_and(|t| t >= 4000 && t <= duration));
    for id in ["a", "b"] {
        let final_in = leg(&cdr, id)["rtp_in"]["packets"]
            .as_u64()
            .expect("packets");
        let live_in = leg(&second["calls"][0], id)["rtp_in"]["packets"]
            .as_u64()
            .expect("packets");
        assert!(
            final_in >= live_in,
            "leg {id}: {final_in} final, {live_in} live"
        );
    }
    eprintln!("CDR: {}", text.trim());
}

/// An answered SIPp call in which neither side hangs up: each waits for a
/// BYE and answers it (the operator's hang-up tests).
struct WaitingCall {
    bed: Bed,
    id: String,
    caller: std::process::Child,
    callee: std::process::Child,
    _media: [std::net::UdpSocket; 2],
}

fn call_waiting_for_bye() -> WaitingCall {
    let (bed, callee_port) = anonymous_bed();
    call_waiting_for_bye_on(bed, callee_port)
}

/// [`call_waiting_for_bye`] on `bed`, whose extensions dial `callee_port`.
fn call_waiting_for_bye_on(bed: Bed, callee_port: u16) -> WaitingCall {
    let (a, rtp_a) = media_socket();
    let (b, rtp_b) = media_socket();
    let callee = sipp(
        &bed,
        "b2bua_uas.xml",
        callee_port,
        &["-key", "rtp_b", &rtp_b],
    );
    std::thread::sleep(Duration::from_millis(300));
    let caller = start_caller(
        &bed,
        "b2bua_uac_wait_bye.xml",
        "1001",
        &["-key", "rtp_a", &rtp_a],
    );
    let page = answered_call(&bed);
    let id = page["calls"][0]["id"].as_str().expect("an id").to_owned();
    WaitingCall {
        bed,
        id,
        caller,
        callee,
        _media: [a, b],
    }
}

#[test]
fn delete_hangs_up_a_sipp_call_with_a_bye_to_each_side() {
    if sipp_binary().is_none() {
        return;
    }
    let call = call_waiting_for_bye();
    let (bed, id, caller, callee) = (&call.bed, &call.id, call.caller, call.callee);
    let (status, body) = bed.server.rest("DELETE", &format!("/api/v1/calls/{id}"));
    assert_eq!(status, 202, "{body}");
    assert_eq!(body, serde_json::json!({"id": id, "state": "ending"}));
    finish(bed, "caller", caller);
    finish(bed, "callee", callee);
    wait_no_calls(&bed.manager);
    assert_eq!(bed.server.get_json("/api/v1/calls")["total"], 0);
    let (status, body) = bed.server.rest("DELETE", &format!("/api/v1/calls/{id}"));
    assert_eq!(
        (status, &body["error"]),
        (404, &serde_json::json!("not_found"))
    );
    assert!(
        bed.server.log().contains("call hung up by the operator"),
        "the hang-up is logged"
    );
}

#[test]
fn cdrs_follow_a_logrotate_and_calls_ended_by_shutdown_are_recorded() {
    if sipp_binary().is_none() {
        return;
    }
    let records = tempfile::tempdir().expect("temp dir");
    let cdr_file = records.path().join("cdr.jsonl");
    let rotated = records.path().join("cdr.jsonl.1");
    let callee_port = free_port();
    let mut bed = bed(
        &format!("sip:bob@127.0.0.1:{callee_port}"),
        &[
            "--auth",
            "anonymous",
            "--cdr-file",
            cdr_file.to_str().expect("UTF-8 path"),
        ],
    );
    let lines = |path: &std::path::Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect()
    };
    let wait_lines = |path: &std::path::Path, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while lines(path).len() < n {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} CDRs in {}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    two_party_call(
        &bed,
        callee_port,
        TwoParty {
            callee: "b2bua_uas.xml",
            callee_args: &[],
            caller: "b2bua_uac.xml",
            caller_args: &["-d", "200"],
            rtp: false,
        },
    );
    wait_lines(&cdr_file, 1);

    // logrotate: rename, then SIGHUP.
    std::fs::rename(&cdr_file, &rotated).expect("rotate");
    nix::sys::signal::kill(bed.server.pid(), nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !bed
        .server
        .log()
        .contains("SIGHUP: the CDR file is reopened")
    {
        assert!(Instant::now() < deadline, "SIGHUP not handled");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A call the server ends at SIGTERM: BYE to both SIPp sides, and its CDR.
    let (_a, rtp_a) = media_socket();
    let (_b, rtp_b) = media_socket();
    let callee = sipp(
        &bed,
        "b2bua_uas.xml",
        callee_port,
        &["-key", "rtp_b", &rtp_b],
    );
    std::thread::sleep(Duration::from_millis(300));
    let caller = start_caller(
        &bed,
        "b2bua_uac_wait_bye.xml",
        "1001",
        &["-key", "rtp_a", &rtp_a],
    );
    let id = answered_call(&bed)["calls"][0]["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    let status = bed.server.stop_with(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "clean exit: {status}");
    finish(&bed, "caller", caller);
    finish(&bed, "callee", callee);

    let rotated_lines = lines(&rotated);
    assert_eq!(
        rotated_lines.len(),
        1,
        "nothing more went to the rotated file"
    );
    assert_eq!(rotated_lines[0]["ended_by"], "caller");
    let new = lines(&cdr_file);
    assert_eq!(new.len(), 1, "the shutdown's record, written before exit");
    assert_eq!(new[0]["id"], id.as_str());
    assert_eq!(new[0]["reason"], "shutdown");
    assert_eq!(new[0]["ended_by"], "system");
    assert_eq!(new[0]["final_status"], 200);
    assert_eq!(
        new[0]["legs"].as_array().map(Vec::len),
        Some(2),
        "{}",
        new[0]
    );
    assert_eq!(new[0]["media_error"], serde_json::Value::Null);
}

#[test]
fn the_event_stream_delivers_a_sipp_call_created_ringing_answered_ended_in_order() {
    use std::io::{Read, Write};
    if sipp_binary().is_none() {
        return;
    }
    let (bed, callee_port) = anonymous_bed();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", bed.server.rest_port))
        .expect("connect to the REST API");
    write!(
        stream,
        "GET /api/v1/events HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
    )
    .expect("open the event stream");
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    // The stream is open once its head arrived.
    let mut text = Vec::new();
    let mut buffer = [0u8; 65_536];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&text).contains("\r\n\r\n") {
        assert!(Instant::now() < deadline, "no response head");
        if let Ok(n) = stream.read(&mut buffer) {
            text.extend_from_slice(&buffer[..n]);
        }
    }
    two_party_call(
        &bed,
        callee_port,
        TwoParty {
            callee: "b2bua_uas.xml",
            callee_args: &[],
            caller: "b2bua_uac.xml",
            caller_args: &["-d", "500"],
            rtp: false,
        },
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&text).contains("event: call_ended") {
        assert!(
            Instant::now() < deadline,
            "no call_ended: {}",
            String::from_utf8_lossy(&text)
        );
        if let Ok(n) = stream.read(&mut buffer) {
            text.extend_from_slice(&buffer[..n]);
        }
    }
    let text = String::from_utf8_lossy(&text);
    let calls: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter(|e| e["type"].as_str().is_some_and(|t| t.starts_with("call_")))
        .collect();
    let kinds: Vec<&str> = calls.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "call_created",
            "call_ringing",
            "call_answered",
            "call_ended"
        ],
        "{text}"
    );
    assert!(
        calls.iter().all(|e| e["id"] == calls[0]["id"]),
        "one call's events: {text}"
    );
    assert_eq!(calls[0]["caller"]["display_name"], "Alice");
    let ended = &calls[3];
    assert_eq!(ended["final_status"], 200);
    assert_eq!(ended["ended_by"], "caller");
    assert!(
        ended["duration_ms"].as_u64().is_some_and(|d| d >= 500),
        "{ended}"
    );
}

/// `switchboard-ctl`, up to date (another package of the workspace).
fn ctl_binary() -> std::path::PathBuf {
    switchboard_testkit::workspace_binary("switchboard-ctl")
}

#[test]
fn switchboard_ctl_lists_shows_and_hangs_up_a_sipp_call() {
    if sipp_binary().is_none() {
        return;
    }
    // Built (when out of date) before the call: cargo test builds no binary of
    // a package without integration tests, and a build here can outlast
    // the SIPp call's 30 s.
    let ctl_binary = ctl_binary();
    let call = call_waiting_for_bye();
    let (bed, id, caller, callee) = (&call.bed, &call.id, call.caller, call.callee);
    let url = format!("http://127.0.0.1:{}", bed.server.rest_port);
    let ctl = |args: &[&str]| {
        let output = std::process::Command::new(&ctl_binary)
            .args(["--url", &url])
            .args(args)
            .output()
            .expect("run switchboard-ctl");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };

    let (code, table, stderr) = ctl(&["calls"]);
    assert_eq!(code, Some(0), "{stderr}");
    let row = table
        .lines()
        .find(|l| l.starts_with(id.as_str()))
        .unwrap_or_else(|| {
            panic!(
                "the call is listed:\n{table}\nserver log:\n{}",
                bed.server.log()
            )
        });
    assert!(row.contains("answered"), "{row}");
    assert!(row.contains("PCMU/8000"), "{row}");

    let (code, json, _) = ctl(&["--json", "calls"]);
    assert_eq!(code, Some(0));
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("--json is JSON");
    assert_eq!(parsed["total"], 1);
    assert_eq!(parsed["calls"][0]["id"], id.as_str());

    let (code, detail, _) = ctl(&["calls", "show", id]);
    assert_eq!(code, Some(0));
    assert!(detail.contains("caller → sb  INVITE"), "{detail}");
    assert!(detail.contains("sb → callee  INVITE"), "{detail}");

    let (code, out, stderr) = ctl(&["calls", "hangup", id]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(out.contains("ending"), "{out}");
    finish(bed, "caller", caller);
    finish(bed, "callee", callee);
    wait_no_calls(&bed.manager);

    let (code, _, stderr) = ctl(&["calls", "hangup", id]);
    assert_eq!(code, Some(1), "an unknown call is refused");
    assert!(
        stderr.starts_with("switchboard-ctl: 404 not_found: "),
        "{stderr}"
    );
}

#[test]
fn a_trunk_named_in_dns_is_reached_through_its_second_srv_target_when_the_first_is_silent() {
    if sipp_binary().is_none() {
        return;
    }
    // The first SRV target takes the INVITE and never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind the silent target");
    let silent_port = silent.local_addr().expect("address").port();
    let callee_port = free_port();
    let Some(dns) = switchboard_testkit::dns::Dnsmasq::start(&[
        "--naptr-record=trunk.test,10,10,s,SIP+D2U,,_sip._udp.trunk.test".to_owned(),
        format!("--srv-host=_sip._udp.trunk.test,first.trunk.test,{silent_port},10,50"),
        format!("--srv-host=_sip._udp.trunk.test,second.trunk.test,{callee_port},20,50"),
        "--host-record=first.trunk.test,127.0.0.1".to_owned(),
        "--host-record=second.trunk.test,127.0.0.1".to_owned(),
    ]) else {
        return;
    };
    let dns_server = dns.addr.to_string();
    let bed = bed(
        "sip:bob@trunk.test",
        &["--auth", "anonymous", "--dns-server", &dns_server],
    );
    let started = Instant::now();
    two_party_call(
        &bed,
        callee_port,
        TwoParty {
            callee: "b2bua_uas.xml",
            callee_args: &[],
            caller: "b2bua_uac.xml",
            caller_args: &["-d", "2000"],
            rtp: true,
        },
    );
    // The name was looked up as RFC 3263 says: NAPTR, then the SRV it
    // names, then each target's address.
    let log = dns.log();
    for query in [
        "query[NAPTR] trunk.test",
        "query[SRV] _sip._udp.trunk.test",
        "query[A] first.trunk.test",
        "query[A] second.trunk.test",
    ] {
        assert!(log.contains(query), "no {query}:\n{log}");
    }
    // The silent target had the INVITE first, for the name; the call
    // moved on after its silence.
    silent
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let mut buffer = [0u8; 8192];
    let (len, _) = silent
        .recv_from(&mut buffer)
        .expect("the first target got the INVITE");
    let invite = String::from_utf8_lossy(&buffer[..len]);
    assert!(
        invite.starts_with("INVITE sip:bob@trunk.test SIP/2.0"),
        "{invite}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "no failover wait: {:?}",
        started.elapsed()
    );
}

#[test]
fn a_caller_requiring_100rel_pracks_a_reliable_180_and_the_call_completes() {
    if sipp_binary().is_none() {
        return;
    }
    // Before RFC 3262 support such a caller was refused 420 Bad Extension.
    let (bed, callee_port) = anonymous_bed();
    two_party_call(
        &bed,
        callee_port,
        TwoParty {
            callee: "b2bua_uas.xml",
            callee_args: &[],
            caller: "b2bua_uac_100rel.xml",
            caller_args: &["-d", "2000"],
            rtp: true,
        },
    );
}

#[test]
fn a_callee_transfers_its_caller_to_a_third_party_and_the_media_follows() {
    if sipp_binary().is_none() {
        return;
    }
    let bob_port = free_port();
    let carol_port = free_port();
    // Bob, a peer at a URI, is trusted to transfer (allow_transfer).
    let carol_route = format!(
        r#"{{"id": "bob", "pattern": "1001", "priority": 4, "actions": [
            {{"type": "dial", "params": {{"targets": ["sip:bob@127.0.0.1:{bob_port}"], "timeout": 10, "allow_transfer": true}}}}]}},
          {{"id": "carol", "pattern": "2002", "priority": 5, "actions": [
            {{"type": "dial", "params": {{"targets": ["sip:carol@127.0.0.1:{carol_port}"], "timeout": 10}}}}]}},"#
    );
    let data = tempfile::tempdir().expect("temp dir");
    let manager = start_manager(&audio_dir(&data), 16, &[]);
    let bed = bed_around(
        data,
        manager,
        &[],
        BedArgs {
            dial_target: &format!("sip:bob@127.0.0.1:{bob_port}"),
            extra: &["--auth", "anonymous"],
            dial_timeout: 20,
            more_routes: &carol_route,
        },
    );
    let (a, rtp_a) = media_socket();
    let (b, rtp_b) = media_socket();
    let (c, rtp_c) = media_socket();
    let carol = sipp(
        &bed,
        "b2bua_uas.xml",
        carol_port,
        &["-key", "rtp_b", &rtp_c],
    );
    // Bob answers, talks for 3 s, then REFERs the caller to 2002 (Carol).
    let bob = sipp(
        &bed,
        "b2bua_uas_transfer.xml",
        bob_port,
        &[
            "-key", "rtp_b", &rtp_b, "-key", "target", "2002", "-d", "3000",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let caller = start_caller(
        &bed,
        "b2bua_uac.xml",
        "1001",
        &["-key", "rtp_a", &rtp_a, "-d", "9000"],
    );
    rtp_both_ways(&bed.manager, &a, &b);
    // Bob got 202, the NOTIFYs up to "200 OK", and his BYE.
    finish(&bed, "bob (transferor)", bob);
    // The caller now talks with Carol through the same manager ports,
    // without a re-INVITE; its BYE reaches her.
    rtp_both_ways(&bed.manager, &a, &c);
    finish(&bed, "caller", caller);
    finish(&bed, "carol (target)", carol);
    wait_no_calls(&bed.manager);
    let log = bed.server.log();
    assert!(
        log.contains("transfer: the target answered and took the transferor's place"),
        "{log}"
    );
}

/// A response a phone sends to `request` (its text): the request's Via,
/// From, To (with `to_tag`), Call-ID and CSeq, then `extra` and `sdp`.
fn phone_reply(
    request: &str,
    status: &str,
    to_tag: &str,
    extra: &str,
    sdp: Option<&str>,
) -> String {
    let mut text = format!("SIP/2.0 {status}\r\n");
    for via in common::headers(request, "Via") {
        text.push_str(&format!("Via: {via}\r\n"));
    }
    for name in ["From", "Call-ID", "CSeq"] {
        let value = common::header(request, name).unwrap_or_default();
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    let to = common::header(request, "To").unwrap_or_default();
    if to.contains("tag=") {
        text.push_str(&format!("To: {to}\r\n"));
    } else {
        text.push_str(&format!("To: {to};tag={to_tag}\r\n"));
    }
    text.push_str(extra);
    switchboard_testkit::sip::end_with_body(&mut text, sdp);
    text
}

#[test]
fn a_phone_on_a_websocket_registers_and_is_called_over_its_connection() {
    use std::io::Write;
    if sipp_binary().is_none() {
        return;
    }
    let ws_port = free_port();
    let ws_port_text = ws_port.to_string();
    let bed = bed(
        "user/${destination}",
        &["--auth", "anonymous", "--ws-port", &ws_port_text],
    );
    let socket = std::net::TcpStream::connect(("127.0.0.1", ws_port)).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut phone = common::WsClient::connect(socket, "127.0.0.1");
    // RFC 7118 §5: a browser-like phone names itself with an .invalid host.
    let register = "REGISTER sip:127.0.0.1 SIP/2.0\r\n\
        Via: SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bKws1\r\n\
        Max-Forwards: 70\r\n\
        From: <sip:1001@127.0.0.1>;tag=ws1\r\n\
        To: <sip:1001@127.0.0.1>\r\n\
        Call-ID: ws-register-1\r\n\
        CSeq: 1 REGISTER\r\n\
        Contact: <sip:k3l2@df7jal23ls0d.invalid;transport=ws>\r\n\
        Expires: 600\r\n\
        Content-Length: 0\r\n\r\n";
    phone.write_all(register.as_bytes()).expect("REGISTER");
    let answer = common::read_stream_message(&mut phone).expect("an answer");
    assert_eq!(common::status(&answer), 200, "{answer}");
    let bindings = bed.server.get_json("/api/v1/registrations");
    assert_eq!(bindings[0]["transport"], "ws", "{bindings}");

    let (a, rtp_a) = media_socket();
    let (b, rtp_b) = media_socket();
    let caller = start_caller(
        &bed,
        "b2bua_uac.xml",
        "1001",
        &["-key", "rtp_a", &rtp_a, "-d", "2000"],
    );
    // The INVITE comes over the phone's own connection.
    let invite = loop {
        let message = common::read_stream_message(&mut phone).expect("the INVITE");
        if message.starts_with("INVITE ") {
            break message;
        }
    };
    assert!(
        invite.starts_with("INVITE sip:k3l2@df7jal23ls0d.invalid;transport=ws SIP/2.0"),
        "{invite}"
    );
    let via = common::header(&invite, "Via").unwrap_or_default();
    assert!(
        via.starts_with(&format!("SIP/2.0/WS 127.0.0.1:{ws_port}")),
        "{via}"
    );
    let contact = common::header(&invite, "Contact").unwrap_or_default();
    assert!(contact.contains(";transport=ws"), "{contact}");
    let sdp = format!(
        "v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp_b} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    );
    let contact_header = "Contact: <sip:k3l2@df7jal23ls0d.invalid;transport=ws>\r\n";
    phone
        .write_all(phone_reply(&invite, "180 Ringing", "ph1", contact_header, None).as_bytes())
        .expect("180");
    phone
        .write_all(phone_reply(&invite, "200 OK", "ph1", contact_header, Some(&sdp)).as_bytes())
        .expect("200");
    let ack = common::read_stream_message(&mut phone).expect("the ACK");
    assert!(ack.starts_with("ACK "), "{ack}");
    rtp_both_ways(&bed.manager, &a, &b);
    // The caller hangs up: the BYE comes over the WebSocket too.
    let bye = common::read_stream_message(&mut phone).expect("the BYE");
    assert!(bye.starts_with("BYE "), "{bye}");
    phone
        .write_all(phone_reply(&bye, "200 OK", "ph1", "", None).as_bytes())
        .expect("200 to the BYE");
    finish(&bed, "caller", caller);
    wait_no_calls(&bed.manager);
}
