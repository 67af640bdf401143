//! `/api/v1/calls/{id}` shows the kernel's share of an offloaded call's
//! media: a call set up through signaling and the manager (TC fast path)
//! in the manager's network-namespace bed (caller ⇄ relay ⇄ callee, shared
//! from rtpmanager/tests/common), media sent from the caller's and the
//! callee's namespaces, and the API read while the call is up.
//!
//! Signaling and the manager run in the relay namespace; this test's
//! thread enters it too, so its SIP peers (on loopback) and its REST
//! requests are there, while the media sockets live in the peers'
//! namespaces (their own threads). Needs root and an embedded eBPF object;
//! skips loudly otherwise (a failure under CI without the object).

mod common;

#[macro_use]
#[path = "../../rtpmanager/tests/common/kernel.rs"]
mod kernel;
// Shared with the manager's tests, which use more of it.
#[allow(dead_code)]
#[path = "../../rtpmanager/tests/common/bed.rs"]
mod bed;

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bed::{one_interface, Family, CALLEE, CALLER, RELAY_IP};
use common::{header, status, Server, UdpPeer};
use kernel::addr;
use switchboard_testkit::daemon::{grpc_address, Daemon};
use switchboard_testkit::netns::{enter, spawn_in_ns};

/// Packets each way once the call is offloaded.
const PACKETS: u16 = 1000;

/// The manager in the relay namespace with the TC fast path; killed on
/// drop; and its gRPC address.
fn start_manager(relay_ns: &str) -> (Daemon, String) {
    let manager = Daemon::spawn(
        "switchboard-rtpmanager",
        Command::new("ip")
            .args(["netns", "exec", relay_ns])
            .arg(common::manager::manager_binary())
            .args(["--grpc-port", "0", "--fast-path", "tc"])
            .args(["--media-interface", "r0", "--advertise", RELAY_IP])
            .args(["--rtp-port-min", "30000", "--rtp-port-max", "30100"])
            .args(["--enable-forwarding", "--log-level", "info"]),
    );
    let grpc = grpc_address(&manager).to_string();
    (manager, grpc)
}

fn rtp(seq: u16) -> Vec<u8> {
    let mut packet = vec![0x80, 0x00];
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    packet.extend_from_slice(&0x5eed_0001u32.to_be_bytes());
    packet.extend(std::iter::repeat_n(0xd5, 160));
    packet
}

fn sdp(media: &str) -> String {
    let media = addr(media);
    format!(
        "v=0\r\no=peer 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n",
        ip = media.ip(),
        port = media.port()
    )
}

/// Waits for a request with `method` at `peer`, skipping anything else.
fn expect_request(peer: &UdpPeer, method: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(message) = peer.recv(Duration::from_millis(500)) {
            if message.starts_with(&format!("{method} ")) {
                return message;
            }
        }
        assert!(Instant::now() < deadline, "no {method} arrived");
    }
}

/// Waits for a final response at `peer`.
fn expect_final(peer: &UdpPeer) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(message) = peer.recv(Duration::from_millis(500)) {
            if message.starts_with("SIP/2.0 ") && status(&message) >= 200 {
                return message;
            }
        }
        assert!(Instant::now() < deadline, "no final response arrived");
    }
}

/// A media socket in namespace `ns` that first sends one packet to `leg`
/// (the manager latches it), then, once told, `PACKETS` more, and counts
/// what it receives.
fn media_peer(
    ns: &str,
    local: SocketAddr,
    leg: SocketAddr,
    go: mpsc::Receiver<()>,
) -> std::thread::JoinHandle<usize> {
    spawn_in_ns(ns, move || {
        let socket = UdpSocket::bind(local).expect("bind the media socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(5)))
            .expect("timeout");
        socket.send_to(&rtp(1), leg).expect("latching packet");
        let mut received = 0;
        let mut buffer = [0u8; 2048];
        let mut drain = |received: &mut usize| {
            while socket.recv_from(&mut buffer).is_ok() {
                *received += 1;
            }
        };
        go.recv().expect("the go signal");
        for seq in 2..2 + PACKETS {
            socket.send_to(&rtp(seq), leg).expect("send RTP");
            if seq % 50 == 0 {
                drain(&mut received);
            }
        }
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            drain(&mut received);
        }
        received
    })
}

fn legs_of(call: &serde_json::Value) -> Vec<serde_json::Value> {
    call["legs"].as_array().cloned().unwrap_or_default()
}

#[test]
fn an_offloaded_call_shows_a_kernel_share_above_99_percent() {
    require_kernel_path!();
    let bed = one_interface(Family::V4, "k");
    // This thread's sockets (SIP peers, REST requests) are in the relay
    // namespace with signaling and the manager.
    enter(&bed.relay);
    let (_manager, grpc) = start_manager(&bed.relay);
    let data = tempfile::tempdir().expect("temp dir");
    let callee_sip = UdpPeer::new();
    let plan = format!(
        r#"{{"version": "1.0", "routes": [
          {{"id": "extensions", "pattern": "1XXX", "priority": 20, "actions": [
            {{"type": "dial", "params": {{"targets": ["sip:bob@127.0.0.1:{}"], "timeout": 10}}}}]}}
        ]}}"#,
        callee_sip.port()
    );
    let plan_path = data.path().join("dialplan.json");
    std::fs::write(&plan_path, plan).expect("write the dialplan");
    let server = Server::start_in_netns(
        &bed.relay,
        &data.path().join("state"),
        &[
            "--dialplan",
            plan_path.to_str().expect("UTF-8 path"),
            "--rtpmanager",
            &grpc,
            "--auth",
            "anonymous",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pool = server.get_json("/api/v1/rtpmanagers");
        let member = pool["members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["id"] == grpc.as_str()).cloned());
        if let Some(member) = member.filter(|m| m["health"] == "healthy") {
            if member["fast_path"] != "tc" {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI must run the kernel path: {member}"
                );
                eprintln!("\n!!!!!!!! SKIPPED: the manager runs without the TC fast path: {member} !!!!!!!!\n");
                return;
            }
            break;
        }
        assert!(Instant::now() < deadline, "manager never healthy: {pool}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The call: a caller on loopback offering media in the caller's
    // namespace, a callee answering with media in the callee's.
    let caller_sip = UdpPeer::new();
    let offer = sdp(CALLER);
    let invite = format!(
        "INVITE sip:1001@{server} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-kshare-1;rport\r\n\
         Max-Forwards: 70\r\nFrom: \"Alice\" <sip:alice@127.0.0.1>;tag=kshare\r\n\
         To: <sip:1001@{server}>\r\nCall-ID: kernel-share@test\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:alice@127.0.0.1:{port}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{offer}",
        server = server.sip_addr(),
        port = caller_sip.port(),
        len = offer.len(),
    );
    caller_sip.send(server.sip_addr(), invite.as_bytes());
    let to_bob = expect_request(&callee_sip, "INVITE");
    let answer = sdp(CALLEE);
    let via: Vec<&str> = common::headers(&to_bob, "Via");
    let ok = format!(
        "SIP/2.0 200 OK\r\nVia: {via}\r\nFrom: {from}\r\nTo: {to};tag=bob\r\n\
         Call-ID: {call_id}\r\nCSeq: {cseq}\r\nContact: <sip:bob@127.0.0.1:{port}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{answer}",
        via = via.join(", "),
        from = header(&to_bob, "From").expect("From"),
        to = header(&to_bob, "To").expect("To"),
        call_id = header(&to_bob, "Call-ID").expect("Call-ID"),
        cseq = header(&to_bob, "CSeq").expect("CSeq"),
        port = callee_sip.port(),
        len = answer.len(),
    );
    callee_sip.send(server.sip_addr(), ok.as_bytes());
    let answered = expect_final(&caller_sip);
    assert_eq!(status(&answered), 200, "{answered}");
    let ack = format!(
        "ACK sip:sb@{server} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-kshare-ack;rport\r\n\
         Max-Forwards: 70\r\nFrom: \"Alice\" <sip:alice@127.0.0.1>;tag=kshare\r\n\
         To: {to}\r\nCall-ID: kernel-share@test\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        server = server.sip_addr(),
        port = caller_sip.port(),
        to = header(&answered, "To").expect("To"),
    );
    caller_sip.send(server.sip_addr(), ack.as_bytes());

    let page = server.get_json("/api/v1/calls");
    let id = page["calls"][0]["id"].as_str().expect("a call").to_owned();
    let path = format!("/api/v1/calls/{id}");
    let call = server.get_json(&path);
    let leg_address = |leg: &str| {
        legs_of(&call)
            .iter()
            .find(|l| l["leg"] == leg)
            .and_then(|l| l["local_address"].as_str().map(addr))
            .unwrap_or_else(|| panic!("no address of leg {leg}: {call}"))
    };
    let (leg_a, leg_b) = (leg_address("a"), leg_address("b"));

    let (go_caller, caller_go) = mpsc::channel();
    let (go_callee, callee_go) = mpsc::channel();
    let caller = media_peer(&bed.caller, addr(CALLER), leg_a, caller_go);
    let callee = media_peer(&bed.callee, addr(CALLEE), leg_b, callee_go);
    // Both directions latched in userspace, then handed to the kernel.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let call = server.get_json(&path);
        let legs = legs_of(&call);
        if legs.len() == 2 && legs.iter().all(|l| l["offloaded"] == true) {
            break;
        }
        assert!(Instant::now() < deadline, "never offloaded: {call}");
        std::thread::sleep(Duration::from_millis(20));
    }
    go_caller.send(()).expect("go");
    go_callee.send(()).expect("go");
    let caller_got = caller.join().expect("caller media");
    let callee_got = callee.join().expect("callee media");
    assert!(
        callee_got >= usize::from(PACKETS) && caller_got >= usize::from(PACKETS),
        "media crossed: callee got {callee_got}, caller {caller_got}"
    );

    let call = server.get_json(&path);
    assert_eq!(call["media_error"], serde_json::Value::Null, "{call}");
    for leg in legs_of(&call) {
        let share = leg["kernel_share"].as_f64().expect("a share");
        let packets = leg["rtp_in"]["packets"].as_u64().expect("packets");
        eprintln!(
            "leg {}: {packets} packets in, {} by the kernel, share {share:.4}",
            leg["leg"], leg["kernel_packets"]
        );
        assert!(
            packets > u64::from(PACKETS),
            "leg {}: {packets} packets",
            leg["leg"]
        );
        assert!(
            share > 0.99,
            "leg {}: kernel share {share}: {leg}",
            leg["leg"]
        );
        assert_eq!(leg["codec"], "PCMU/8000");
    }

    let bye = format!(
        "BYE sip:sb@{server} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-kshare-2;rport\r\n\
         Max-Forwards: 70\r\nFrom: \"Alice\" <sip:alice@127.0.0.1>;tag=kshare\r\n\
         To: {to}\r\nCall-ID: kernel-share@test\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        server = server.sip_addr(),
        port = caller_sip.port(),
        to = header(&answered, "To").expect("To"),
    );
    caller_sip.send(server.sip_addr(), bye.as_bytes());
    assert_eq!(status(&expect_final(&caller_sip)), 200);
    expect_request(&callee_sip, "BYE");
    drop(server);
}
