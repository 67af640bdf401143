//! Several signaling servers, one location service: two nodes started
//! with `--location-store` on a `redis-server` the test starts (loopback,
//! its own port and directory, stopped by pid), one RTP manager they
//! share, SIPp and raw UDP as phones.
//!
//! A phone registered through one node is called through the other, with
//! RTP through the manager, the signaling passing the first node (the
//! Path it recorded with a flow token); both nodes' APIs list the
//! registration and the node it came through. With Redis gone, REGISTER is answered 503
//! with Retry-After (no 200 for a binding not stored), health and metrics
//! say so, lookups end after `--location-stale-after` (480), and when
//! Redis is back both nodes recover by themselves.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::manager::{rtp_both_ways, start_manager, Manager};
use common::sipp::media_socket;
use common::{free_port, header, status, users_file, Server, UdpPeer};
use switchboard_testkit::redis::Redis;

/// A dialplan ringing registered users on 1XXX.
const PLAN: &str = r#"{"version": "1.0", "routes": [
  {"id": "extensions", "pattern": "1XXX", "priority": 20, "actions": [
    {"type": "dial", "params": {"targets": ["user/${destination}"], "timeout": 10}}]}
]}"#;

struct Bed {
    data: tempfile::TempDir,
    redis: Redis,
    manager: Manager,
    nodes: Vec<Server>,
}

/// Redis, a manager and `count` nodes named `node-1`…, each started with
/// `extra`.
fn bed(count: usize, extra: &[&str]) -> Option<Bed> {
    bed_with(count, extra, PLAN, |_| Vec::new())
}

/// [`bed`] with another dialplan, and `per_node(n)` added to node n's
/// arguments.
fn bed_with(
    count: usize,
    extra: &[&str],
    plan_text: &str,
    per_node: impl Fn(usize) -> Vec<String>,
) -> Option<Bed> {
    common::sipp::binary()?;
    let data = tempfile::tempdir().expect("temp dir");
    let redis = Redis::start(&data.path().join("redis"))?;
    let audio = data.path().join("audio");
    std::fs::create_dir_all(&audio).expect("audio dir");
    let manager = start_manager(&audio, 16, &[]);
    let plan = data.path().join("dialplan.json");
    std::fs::write(&plan, plan_text).expect("write the dialplan");
    let plan = plan.to_str().expect("UTF-8 path").to_owned();
    let grpc = manager.grpc.to_string();
    let url = redis.url();
    let nodes = (1..=count)
        .map(|n| {
            let name = format!("node-{n}");
            let mut args = vec![
                "--dialplan",
                &plan,
                "--rtpmanager",
                &grpc,
                "--location-store",
                &url,
                "--node-id",
                &name,
            ];
            args.extend_from_slice(extra);
            let own = per_node(n);
            args.extend(own.iter().map(String::as_str));
            let server = Server::start(&data.path().join(&name), &args);
            wait_until(&server, "the manager healthy", |s| {
                s.get_json("/api/v1/rtpmanagers")["members"]
                    .as_array()
                    .is_some_and(|list| list.iter().any(|m| m["health"] == "healthy"))
            });
            server
        })
        .collect();
    Some(Bed {
        data,
        redis,
        manager,
        nodes,
    })
}

fn wait_until(server: &Server, what: &str, ready: impl Fn(&Server) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ready(server) {
        assert!(
            Instant::now() < deadline,
            "never {what}:\n{}",
            common::sipp::tail(&server.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The (aor, contact, node) of every registration a node lists.
fn registrations(server: &Server) -> Vec<(String, String, String)> {
    server
        .get_json("/api/v1/registrations")
        .as_array()
        .expect("a list")
        .iter()
        .map(|r| {
            (
                r["aor"].as_str().unwrap_or_default().to_owned(),
                r["contact"].as_str().unwrap_or_default().to_owned(),
                r["node"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
fn a_phone_registered_through_one_node_is_called_through_another() {
    let dir = tempfile::tempdir().expect("temp dir");
    let users = users_file(dir.path(), &[("1001", "pw1001")]);
    let users = users.to_str().expect("UTF-8 path");
    let extra = [
        "--realm",
        "peers.test",
        "--users-file",
        users,
        "--auth-algorithms",
        "MD5",
        "--auth-methods",
        "REGISTER",
    ];
    let Some(bed) = bed(2, &extra) else { return };
    let (node1, node2) = (&bed.nodes[0], &bed.nodes[1]);
    // The phone registers through node 1 (digest), from the port it then
    // answers calls on.
    let phone_port = free_port();
    let register = common::sipp::start(
        bed.data.path(),
        "register_auth.xml",
        phone_port,
        1,
        &[
            "-s",
            "1001",
            "-au",
            "1001",
            "-ap",
            "pw1001",
            &node1.sip_addr().to_string(),
        ],
    );
    common::sipp::finish(bed.data.path(), "registration", register, || node1.log());
    let expected = (
        "1001@127.0.0.1".to_owned(),
        format!("sip:1001@127.0.0.1:{phone_port}"),
        "node-1".to_owned(),
    );
    assert_eq!(registrations(node1), std::slice::from_ref(&expected));
    // Node 2 learns it from Redis (announced at once; no polling of ours
    // beyond the delivery).
    wait_until(node2, "node 2 listing node 1's registration", |s| {
        registrations(s) == [expected.clone()]
    });

    // A caller dials 1001 through node 2: the phone rings and answers, RTP
    // flows both ways through the shared manager.
    let (a, rtp_a) = media_socket();
    let (b, rtp_b) = media_socket();
    let callee = common::sipp::start(
        bed.data.path(),
        "b2bua_uas.xml",
        phone_port,
        1,
        &["-key", "rtp_b", &rtp_b],
    );
    std::thread::sleep(Duration::from_millis(300));
    let node2_sip = node2.sip_addr().to_string();
    let caller = common::sipp::start(
        bed.data.path(),
        "b2bua_uac.xml",
        free_port(),
        1,
        &[
            "-s", "1001", "-key", "rtp_a", &rtp_a, "-d", "3000", &node2_sip,
        ],
    );
    rtp_both_ways(&bed.manager, &a, &b);
    common::sipp::finish(bed.data.path(), "caller", caller, || node2.log());
    common::sipp::finish(bed.data.path(), "callee", callee, || node2.log());
    // Node 2 reached the phone through node 1, which holds its flow (the
    // Path node 1 recorded): the INVITE, its ACK and the BYE all passed
    // node 1's edge.
    for method in ["INVITE", "ACK", "BYE"] {
        let line = format!("request forwarded on a phone's flow (edge) method={method}");
        wait_until(node1, &format!("{method} through node 1"), |s| {
            s.log().contains(&line)
        });
    }
}

/// A phone behind a NAT that filters by endpoint: its socket is connected
/// to node 1, so only node 1's datagrams reach it, and its Contact names
/// a private address nobody can reach. Node 2 can only call it through
/// node 1's flow.
struct NatCall {
    phone: UdpPeer,
    /// The INVITE as the phone got it (through node 1).
    invite: String,
    caller: std::process::Child,
}

const PRIVATE_CONTACT: &str = "10.255.0.7:5060";

/// The NAT phone registers through node 1, a SIPp caller (`scenario`)
/// dials it through node 2; the phone answers and gets the ACK, RTP flows
/// both ways through the manager.
fn answered_nat_call(bed: &Bed, scenario: &str, caller_args: &[&str]) -> NatCall {
    let (node1, node2) = (&bed.nodes[0], &bed.nodes[1]);
    let private = PRIVATE_CONTACT;
    let phone = UdpPeer::new();
    phone
        .socket
        .connect(node1.sip_addr())
        .expect("connect to node 1");
    let register = register_text("1001", phone.port(), node1.sip_addr(), 1).replace(
        &format!("Contact: <sip:1001@127.0.0.1:{}>", phone.port()),
        &format!("Contact: <sip:1001@{private}>"),
    );
    phone.send(node1.sip_addr(), register.as_bytes());
    let response = phone
        .recv(Duration::from_secs(3))
        .expect("an answer to REGISTER");
    assert_eq!(status(&response), 200, "{response}");
    wait_until(node2, "node 2 listing 1001", |s| {
        registrations(s)
            .iter()
            .any(|r| r.1 == format!("sip:1001@{private}"))
    });

    let (a, rtp_a) = media_socket();
    let (b, rtp_b) = media_socket();
    let node2_sip = node2.sip_addr().to_string();
    let mut args = vec!["-s", "1001", "-key", "rtp_a", &rtp_a];
    args.extend_from_slice(caller_args);
    args.push(&node2_sip);
    let caller = common::sipp::start(bed.data.path(), scenario, free_port(), 1, &args);
    let invite = phone
        .recv(Duration::from_secs(10))
        .expect("the INVITE, through node 1");
    assert!(
        invite.starts_with(&format!("INVITE sip:1001@{private} SIP/2.0\r\n")),
        "{invite}"
    );
    assert_eq!(
        common::headers(&invite, "Record-Route").len(),
        1,
        "node 1 record-routes: {invite}"
    );
    let answer = |code: &str, sdp: &str| {
        let mut text = format!("SIP/2.0 {code}\r\n");
        for via in common::headers(&invite, "Via") {
            text.push_str(&format!("Via: {via}\r\n"));
        }
        for rr in common::headers(&invite, "Record-Route") {
            text.push_str(&format!("Record-Route: {rr}\r\n"));
        }
        for name in ["From", "Call-ID", "CSeq"] {
            text.push_str(&format!(
                "{name}: {}\r\n",
                header(&invite, name).expect("header")
            ));
        }
        text.push_str(&format!(
            "To: {};tag=natphone\r\n",
            header(&invite, "To").expect("To")
        ));
        text.push_str(&format!("Contact: <sip:1001@{private}>\r\n"));
        if sdp.is_empty() {
            text.push_str("Content-Length: 0\r\n\r\n");
        } else {
            text.push_str(&format!(
                "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
                sdp.len()
            ));
        }
        text
    };
    phone.send(node1.sip_addr(), answer("180 Ringing", "").as_bytes());
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp_b} RTP/AVP 0\r\n"
    );
    phone.send(node1.sip_addr(), answer("200 OK", &sdp).as_bytes());
    let ack = phone
        .recv(Duration::from_secs(5))
        .expect("the ACK, through node 1");
    assert!(
        ack.starts_with(&format!("ACK sip:1001@{private} SIP/2.0")),
        "{ack}"
    );
    rtp_both_ways(&bed.manager, &a, &b);
    NatCall {
        phone,
        invite,
        caller,
    }
}

#[test]
fn a_phone_behind_nat_registered_through_node_1_is_reached_through_its_path() {
    let Some(bed) = bed(2, &["--auth", "anonymous"]) else {
        return;
    };
    let call = answered_nat_call(&bed, "b2bua_uac.xml", &["-d", "1000"]);
    // The caller hangs up; the BYE's Request-URI is the private Contact:
    // only node 1's flow reaches the phone.
    let bye = call
        .phone
        .recv(Duration::from_secs(10))
        .expect("the BYE, through node 1");
    assert!(
        bye.starts_with(&format!("BYE sip:1001@{PRIVATE_CONTACT} SIP/2.0")),
        "{bye}"
    );
    let mut ok = "SIP/2.0 200 OK\r\n".to_owned();
    for via in common::headers(&bye, "Via") {
        ok.push_str(&format!("Via: {via}\r\n"));
    }
    for name in ["From", "To", "Call-ID", "CSeq"] {
        ok.push_str(&format!(
            "{name}: {}\r\n",
            header(&bye, name).expect("header")
        ));
    }
    ok.push_str("Content-Length: 0\r\n\r\n");
    call.phone.send(bed.nodes[0].sip_addr(), ok.as_bytes());
    common::sipp::finish(bed.data.path(), "caller", call.caller, || {
        bed.nodes[1].log()
    });
}

/// The NAT phone hangs up: its BYE follows its route set (node 1's
/// Record-Route with the flow token) to node 1, which, seeing it come from
/// the token's own flow, routes it on to node 2 (the Request-URI); node 2's
/// 200 comes back the same way and the caller gets its BYE.
#[test]
fn a_phone_behind_nat_hangs_up_through_the_node_holding_its_flow() {
    let Some(bed) = bed(2, &["--auth", "anonymous"]) else {
        return;
    };
    let call = answered_nat_call(&bed, "b2bua_uac_wait_bye.xml", &[]);
    let invite = &call.invite;
    let target = header(invite, "Contact")
        .expect("the B2BUA's Contact")
        .trim_start_matches('<')
        .split('>')
        .next()
        .expect("a URI")
        .to_owned();
    let route = header(invite, "Record-Route").expect("node 1's Record-Route");
    let bye = format!(
        "BYE {target} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-natbye;rport\r\n\
         Route: {route}\r\n\
         Max-Forwards: 70\r\n\
         From: {to};tag=natphone\r\n\
         To: {from}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 BYE\r\n\
         Content-Length: 0\r\n\r\n",
        port = call.phone.port(),
        to = header(invite, "To").expect("To"),
        from = header(invite, "From").expect("From"),
        call_id = header(invite, "Call-ID").expect("Call-ID"),
    );
    let answer = call.phone.request(bed.nodes[0].sip_addr(), bye.as_bytes());
    assert_eq!(status(&answer), 200, "{answer}");
    assert_eq!(
        common::headers(&answer, "Via").len(),
        1,
        "node 1 took its own Via off: {answer}"
    );
    common::sipp::finish(bed.data.path(), "caller", call.caller, || {
        bed.nodes[1].log()
    });
    wait_until(&bed.nodes[0], "node 1 routing the phone's BYE on", |s| {
        s.log()
            .contains("request forwarded on a phone's flow (edge) method=BYE")
    });
}

fn register_text(user: &str, port: u16, server: SocketAddr, cseq: u32) -> String {
    format!(
        "REGISTER sip:{server} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{user}-{cseq}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@127.0.0.1>;tag={cseq}\r\n\
         To: <sip:{user}@127.0.0.1>\r\n\
         Call-ID: reg-{user}@test\r\n\
         CSeq: {cseq} REGISTER\r\n\
         Contact: <sip:{user}@127.0.0.1:{port}>\r\n\
         Expires: 600\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// Sends REGISTERs for `user` from `phone` (a new CSeq each from
/// `first_cseq`, 300 ms apart) until one is answered 200; each other
/// answer must be 503, and `limit` is the longest wait (then `context` is
/// shown).
fn register_until_accepted(
    phone: &UdpPeer,
    server: SocketAddr,
    (user, first_cseq): (&str, u32),
    limit: Duration,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + limit;
    for cseq in first_cseq.. {
        let response = phone.request(
            server,
            register_text(user, phone.port(), server, cseq).as_bytes(),
        );
        if status(&response) == 200 {
            return;
        }
        assert_eq!(status(&response), 503, "{response}");
        assert!(
            Instant::now() < deadline,
            "REGISTER never accepted again:\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn invite_text(user: &str, port: u16, server: SocketAddr, call: &str) -> String {
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\n",
        free_port()
    );
    format!(
        "INVITE sip:{user}@{server} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{call}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:caller@127.0.0.1>;tag={call}\r\n\
         To: <sip:{user}@127.0.0.1>\r\n\
         Call-ID: {call}@test\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:caller@127.0.0.1:{port}>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

/// The final response to an INVITE from `peer` (1xx skipped), within 10 s.
fn final_status(peer: &UdpPeer, server: SocketAddr, invite: &str) -> u16 {
    peer.send(server, invite.as_bytes());
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(response) = peer.recv(Duration::from_secs(1)) {
            if status(&response) >= 200 {
                return status(&response);
            }
        }
    }
    panic!("no final response to:\n{invite}");
}

fn health(server: &Server) -> serde_json::Value {
    server.get_json("/api/v1/health")
}

fn metric(server: &Server, name: &str) -> Option<f64> {
    server
        .get_text("/metrics")
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
}

#[test]
fn without_redis_register_is_503_lookups_end_after_the_stale_bound_and_both_nodes_recover() {
    let Some(mut bed) = bed(2, &["--auth", "anonymous", "--location-stale-after", "2"]) else {
        return;
    };
    let node1_sip = bed.nodes[0].sip_addr();
    let node2_sip = bed.nodes[1].sip_addr();
    let phone = UdpPeer::new();
    let response = phone.request(
        node1_sip,
        register_text("1001", phone.port(), node1_sip, 1).as_bytes(),
    );
    assert_eq!(status(&response), 200, "{response}");
    wait_until(&bed.nodes[1], "node 2 listing 1001", |s| {
        registrations(s).len() == 1
    });
    assert_eq!(health(&bed.nodes[1])["location_store"]["following"], true);

    bed.redis.kill();
    // A REGISTER through node 1: refused, asked to come back.
    let other = UdpPeer::new();
    let response = other.request(
        node1_sip,
        register_text("1002", other.port(), node1_sip, 1).as_bytes(),
    );
    assert_eq!(status(&response), 503, "{response}");
    assert_eq!(header(&response, "Retry-After"), Some("5"), "{response}");
    for node in &bed.nodes {
        wait_until(node, "health reporting Redis lost", |s| {
            let h = health(s);
            h["status"] == "degraded"
                && h["location_store"]["up"] == false
                && h["location_store"]["following"] == false
        });
        assert_eq!(metric(node, "switchboard_location_store_up"), Some(0.0));
        assert!(metric(node, "switchboard_location_store_errors_total").unwrap_or(0.0) >= 1.0);
    }
    assert_eq!(
        registrations(&bed.nodes[0])
            .iter()
            .map(|r| r.0.as_str())
            .collect::<Vec<_>>(),
        ["1001@127.0.0.1"],
        "no binding for the refused REGISTER"
    );
    // Past the stale bound (2 s) node 2 no longer trusts its cache: a call
    // to 1001 finds nobody (480), though 1001 is still cached.
    std::thread::sleep(Duration::from_millis(2_500));
    let caller = UdpPeer::new();
    let answer = final_status(
        &caller,
        node2_sip,
        &invite_text("1001", caller.port(), node2_sip, "stale"),
    );
    assert_eq!(answer, 480);
    // The log is read from the server's stderr by a thread: it may trail
    // the 480 by a moment.
    wait_until(&bed.nodes[1], "node 2 logging the refused lookup", |s| {
        s.log().contains("location lookup refused")
    });

    // Redis back (with its append-only file): both nodes reconnect by
    // themselves, REGISTER works again and is seen by the other node.
    bed.redis.restart();
    for node in &bed.nodes {
        wait_until(node, "health back to ok", |s| health(s)["status"] == "ok");
        assert_eq!(metric(node, "switchboard_location_store_up"), Some(1.0));
    }
    // The first retry may land inside the store's one-second back-off.
    register_until_accepted(
        &other,
        node1_sip,
        ("1002", 2),
        Duration::from_secs(5),
        String::new,
    );
    wait_until(&bed.nodes[1], "node 2 listing both phones", |s| {
        let mut aors: Vec<String> = registrations(s).into_iter().map(|r| r.0).collect();
        aors.sort();
        aors == ["1001@127.0.0.1", "1002@127.0.0.1"]
    });
}

/// Node 1 takes a call and dies (SIGKILL) with it up: within
/// `--node-lost-after` and a check, node 2 ends it: a BYE to each side
/// (both SIPp scenarios wait for one), the manager's call deleted, a
/// record with reason `node_lost` in node 2's CDR file.
#[test]
fn when_a_node_dies_with_calls_up_another_node_ends_them() {
    let callee_port = free_port();
    let plan = format!(
        r#"{{"version": "1.0", "routes": [
          {{"id": "static", "pattern": "2000", "priority": 10, "actions": [
            {{"type": "dial", "params": {{"targets": ["sip:bob@127.0.0.1:{callee_port}"], "timeout": 10}}}}]}}
        ]}}"#
    );
    let cdr_dir = tempfile::tempdir().expect("temp dir");
    let cdr_of = |n: usize| cdr_dir.path().join(format!("node-{n}.cdr.jsonl"));
    let Some(mut bed) = bed_with(
        2,
        &["--auth", "anonymous", "--node-lost-after", "2"],
        &plan,
        |n| {
            vec![
                "--cdr-file".to_owned(),
                cdr_of(n).to_str().expect("UTF-8 path").to_owned(),
            ]
        },
    ) else {
        return;
    };
    let (a, rtp_a) = media_socket();
    let (b, rtp_b) = media_socket();
    let callee = common::sipp::start(
        bed.data.path(),
        "b2bua_uas.xml",
        callee_port,
        1,
        &["-key", "rtp_b", &rtp_b],
    );
    std::thread::sleep(Duration::from_millis(300));
    let node1_sip = bed.nodes[0].sip_addr().to_string();
    let caller = common::sipp::start(
        bed.data.path(),
        "b2bua_uac_wait_bye.xml",
        free_port(),
        1,
        &["-s", "2000", "-key", "rtp_a", &rtp_a, &node1_sip],
    );
    rtp_both_ways(&bed.manager, &a, &b);
    // The call's state reached Redis once answered (written off the SIP
    // thread): node 1 dies only after that.
    std::thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    bed.nodes[0].stop_with(nix::sys::signal::Signal::SIGKILL);
    common::sipp::finish(bed.data.path(), "caller", caller, || bed.nodes[1].log());
    common::sipp::finish(bed.data.path(), "callee", callee, || bed.nodes[1].log());
    let ended_in = killed.elapsed();
    assert!(
        ended_in < Duration::from_secs(8),
        "both sides got their BYE {ended_in:?} after the kill"
    );
    let left = bed
        .manager
        .wait_calls(Duration::from_secs(5), <[_]>::is_empty);
    assert!(
        left.is_empty(),
        "the lost node's call is left on the manager: {left:?}"
    );
    // Logged once every call of the lost node is handed over, which may
    // come after the BYEs arrived.
    wait_until(&bed.nodes[1], "node 2 logging node 1 lost", |s| {
        let log = s.log();
        log.contains("cluster: node lost; its calls ended here node=\"node-1\" calls=1")
            || log.contains("cluster: node lost; its calls ended here node=node-1 calls=1")
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    let record = loop {
        let text = std::fs::read_to_string(cdr_of(2)).unwrap_or_default();
        if let Some(line) = text.lines().next() {
            break serde_json::from_str::<serde_json::Value>(line).expect("a JSON record");
        }
        assert!(Instant::now() < deadline, "no record in node 2's CDR file");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(record["reason"], "node_lost", "{record}");
    assert_eq!(record["ended_by"], "system", "{record}");
    assert!(
        record["media_call_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("node-1/")),
        "{record}"
    );
    assert!(record["answered_at_ms"].is_u64(), "{record}");
}

/// Across hosts Redis runs with TLS and a password: two nodes given the
/// store's CA share a registration; a node trusting only the system's
/// roots, and one with a wrong password, cannot store anything (503).
#[test]
fn registrations_are_shared_over_tls_with_a_password() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some((redis, files)) =
        switchboard_testkit::redis::Redis::start_tls(&dir.path().join("redis"), "s3cret-pass")
    else {
        return;
    };
    let url = redis.url();
    assert!(url.starts_with("rediss://:s3cret-pass@127.0.0.1:"), "{url}");
    let ca = files.ca.to_str().expect("UTF-8 path").to_owned();
    let start = |name: &str, url: &str, ca: Option<&str>| {
        let mut args = vec![
            "--auth",
            "anonymous",
            "--location-store",
            url,
            "--node-id",
            name,
        ];
        if let Some(ca) = ca {
            args.extend(["--location-store-ca", ca]);
        }
        Server::start(&dir.path().join(name), &args)
    };
    let node1 = start("node-1", &url, Some(&ca));
    let node2 = start("node-2", &url, Some(&ca));
    let phone = UdpPeer::new();
    let sip = node1.sip_addr();
    let response = phone.request(sip, register_text("1001", phone.port(), sip, 1).as_bytes());
    assert_eq!(status(&response), 200, "{response}");
    wait_until(&node2, "node 2 listing 1001 over TLS", |s| {
        registrations(s)
            .iter()
            .any(|r| r.0 == "1001@127.0.0.1" && r.2 == "node-1")
    });
    assert_eq!(health(&node2)["location_store"]["up"], true);

    let untrusting = start("node-3", &url, None);
    let wrong_password = url.replace("s3cret-pass", "not-it");
    let locked_out = start("node-4", &wrong_password, Some(&ca));
    for node in [&untrusting, &locked_out] {
        let sip = node.sip_addr();
        let response = phone.request(sip, register_text("1002", phone.port(), sip, 1).as_bytes());
        assert_eq!(status(&response), 503, "{response}");
        assert_eq!(health(node)["location_store"]["up"], false);
    }
    assert!(
        !registrations(&node2)
            .iter()
            .any(|r| r.0 == "1002@127.0.0.1"),
        "nothing stored by the refused nodes"
    );
}

/// With Redis watched by a Sentinel (`redis+sentinel://`), the nodes reach
/// the master the Sentinel names; when the master dies and the Sentinel
/// promotes its replica, REGISTER works again on the new master and the
/// other node sees both the binding made before and the one made after.
#[test]
fn with_sentinel_the_nodes_follow_a_failover_to_the_replica() {
    use switchboard_testkit::redis::{cli, Redis, Sentinel};
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(mut master) = Redis::start(&dir.path().join("master")) else {
        return;
    };
    let replica = Redis::start_replica_of(&dir.path().join("replica"), &master).expect("a replica");
    let Some(sentinel) = Sentinel::start(&dir.path().join("sentinel"), &master, "sb", 1) else {
        return;
    };
    let url = format!("redis+sentinel://127.0.0.1:{}/sb", sentinel.port);
    let start = |name: &str| {
        Server::start(
            &dir.path().join(name),
            &[
                "--auth",
                "anonymous",
                "--location-store",
                &url,
                "--node-id",
                name,
            ],
        )
    };
    let (node1, node2) = (start("node-1"), start("node-2"));
    assert_eq!(
        health(&node1)["location_store"]["address"],
        format!("sentinel 127.0.0.1:{} sb", sentinel.port)
    );
    let phone = UdpPeer::new();
    let sip = node1.sip_addr();
    let response = phone.request(sip, register_text("1001", phone.port(), sip, 1).as_bytes());
    assert_eq!(status(&response), 200, "{response}");
    wait_until(&node2, "node 2 listing 1001", |s| {
        registrations(s).len() == 1
    });
    // On the replica before the master goes.
    let key = "switchboard:location:1001@127.0.0.1";
    let deadline = Instant::now() + Duration::from_secs(5);
    while cli(replica.port, &["EXISTS", key]).trim() != "1" {
        assert!(Instant::now() < deadline, "never replicated");
        std::thread::sleep(Duration::from_millis(20));
    }

    master.kill();
    register_until_accepted(&phone, sip, ("1002", 1), Duration::from_secs(30), || {
        sentinel.log()
    });
    assert_eq!(
        sentinel.master_port(),
        Some(replica.port),
        "the replica is the master now"
    );
    wait_until(
        &node2,
        "node 2 listing 1001 and 1002 from the new master",
        |s| {
            let mut aors: Vec<String> = registrations(s).into_iter().map(|r| r.0).collect();
            aors.sort();
            aors == ["1001@127.0.0.1", "1002@127.0.0.1"]
        },
    );
}
