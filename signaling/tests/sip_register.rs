//! REGISTER against the running server: digest authentication (MD5 and
//! SHA-256 computed here, independently of the server's code; one MD5
//! challenge by default, a user's own algorithm, or one challenge per
//! algorithm with `--auth-challenges all`), the 200's
//! bindings, 423, 403 for a foreign address-of-record and during lockout,
//! and durability: bindings survive a SIGTERM restart and a SIGKILL right
//! after the 200s.

mod common;

use std::time::Duration;

use common::{challenge_param, header, headers, status, users_file, Server, UdpPeer};
use md5::{Digest, Md5};
use nix::sys::signal::Signal;
use sha2::Sha256;

const REALM: &str = "test.example";

#[derive(Clone, Copy, Debug)]
enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    fn hash(self, text: &str) -> String {
        match self {
            Algorithm::Md5 => format!("{:x}", Md5::digest(text.as_bytes())),
            Algorithm::Sha256 => format!("{:x}", Sha256::digest(text.as_bytes())),
        }
    }
}

struct Registration<'a> {
    user: &'a str,
    password: &'a str,
    call_id: String,
    contact_port: u16,
    expires: u32,
}

fn register_text(
    r: &Registration<'_>,
    port: u16,
    cseq: u32,
    authorization: Option<&str>,
) -> String {
    let authorization = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    format!(
        "REGISTER sip:{REALM} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKreg{cseq}x{branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@{REALM}>;tag=f{cseq}\r\n\
         To: <sip:{user}@{REALM}>\r\n\
         Call-ID: {call}\r\n\
         CSeq: {cseq} REGISTER\r\n\
         Contact: <sip:{user}@127.0.0.1:{contact}>\r\n\
         Expires: {expires}\r\n\
         {authorization}\
         Content-Length: 0\r\n\r\n",
        call = r.call_id,
        branch = r.call_id.replace(|c: char| !c.is_ascii_alphanumeric(), "-"),
        user = r.user,
        contact = r.contact_port,
        expires = r.expires,
    )
}

/// REGISTER, answer the challenge of `algorithm`, return the final response.
fn register(server: &Server, peer: &UdpPeer, r: &Registration<'_>, algorithm: Algorithm) -> String {
    register_edited(server, peer, r, algorithm, &|text| text)
}

/// [`register`] with both requests passed through `edit` first.
fn register_edited(
    server: &Server,
    peer: &UdpPeer,
    r: &Registration<'_>,
    algorithm: Algorithm,
    edit: &dyn Fn(String) -> String,
) -> String {
    let challenge = peer.request(
        server.sip_addr(),
        edit(register_text(r, peer.port(), 1, None)).as_bytes(),
    );
    assert_eq!(status(&challenge), 401, "{challenge}");
    let offers = headers(&challenge, "WWW-Authenticate");
    assert_eq!(offers.len(), 2, "SHA-256 and MD5 offered:\n{challenge}");
    register_answering(server, peer, r, algorithm, &challenge, edit)
}

/// Answers `challenge`'s offer of `algorithm` with `r`'s credentials.
fn register_answering(
    server: &Server,
    peer: &UdpPeer,
    r: &Registration<'_>,
    algorithm: Algorithm,
    challenge: &str,
    edit: &dyn Fn(String) -> String,
) -> String {
    let offers = headers(challenge, "WWW-Authenticate");
    let offer = offers
        .iter()
        .find(|o| o.contains(&format!("algorithm={}", algorithm.name())))
        .unwrap_or_else(|| panic!("no {} challenge:\n{challenge}", algorithm.name()));
    assert_eq!(challenge_param(offer, "realm").as_deref(), Some(REALM));
    let nonce = challenge_param(offer, "nonce").expect("nonce");
    let uri = format!("sip:{REALM}");
    let ha1 = algorithm.hash(&format!("{}:{REALM}:{}", r.user, r.password));
    let ha2 = algorithm.hash(&format!("REGISTER:{uri}"));
    let (nc, cnonce) = ("00000001", "0a4f113b");
    let response = algorithm.hash(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
    let authorization = format!(
        "Digest username=\"{}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm={}, qop=auth, nc={nc}, cnonce=\"{cnonce}\"",
        r.user,
        algorithm.name()
    );
    peer.request(
        server.sip_addr(),
        edit(register_text(r, peer.port(), 2, Some(&authorization))).as_bytes(),
    )
}

fn bindings(server: &Server) -> Vec<(String, String, u64, String)> {
    let mut list: Vec<_> = server
        .get_json("/api/v1/registrations")
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|b| {
            (
                b["aor"].as_str().expect("aor").to_owned(),
                b["contact"].as_str().expect("contact").to_owned(),
                b["expires"].as_u64().expect("expires"),
                format!(
                    "{}:{}",
                    b["transport"].as_str().expect("transport"),
                    b["source"].as_str().expect("source")
                ),
            )
        })
        .collect();
    list.sort();
    list
}

fn start(data: &tempfile::TempDir, extra: &[&str]) -> Server {
    let users = users_file(data.path(), &[("1001", "secret1"), ("1002", "secret2")]);
    let users = users.to_str().expect("UTF-8 path").to_owned();
    let mut args = vec![
        "--realm",
        REALM,
        "--users-file",
        &users,
        "--auth-secret",
        "fixed",
        // Both algorithms offered, so each can be answered (RFC 8760 mode).
        "--auth-challenges",
        "all",
        "--auth-algorithms",
        "SHA-256,MD5",
    ];
    args.extend_from_slice(extra);
    let data_dir = data.path().join("state");
    Server::start(&data_dir, &args)
}

#[test]
fn by_default_one_md5_challenge_and_a_users_own_sha256() {
    let data = tempfile::tempdir().expect("temp dir");
    let users = users_file(data.path(), &[("1001", "secret1"), ("1002", "secret2")]);
    let text = std::fs::read_to_string(&users).expect("users file");
    // 1002's phone knows RFC 8760: its entry asks for SHA-256.
    let text = text.replace(
        "name = \"1002\"\npassword = \"secret2\"\n",
        "name = \"1002\"\npassword = \"secret2\"\nalgorithm = \"SHA-256\"\n",
    );
    std::fs::write(&users, text).expect("write users file");
    let users = users.to_str().expect("UTF-8 path").to_owned();
    let server = Server::start(
        &data.path().join("state"),
        &[
            "--realm",
            REALM,
            "--users-file",
            &users,
            "--auth-secret",
            "fixed",
        ],
    );
    let peer = UdpPeer::new();
    for (user, password, call_id, algorithm, port) in [
        ("1001", "secret1", "one-md5@test", Algorithm::Md5, 5071),
        ("1002", "secret2", "one-sha@test", Algorithm::Sha256, 5072),
    ] {
        let r = Registration {
            user,
            password,
            call_id: call_id.to_owned(),
            contact_port: port,
            expires: 600,
        };
        let challenge = peer.request(
            server.sip_addr(),
            register_text(&r, peer.port(), 1, None).as_bytes(),
        );
        assert_eq!(status(&challenge), 401, "{challenge}");
        let offers = headers(&challenge, "WWW-Authenticate");
        assert_eq!(offers.len(), 1, "one challenge:\n{challenge}");
        assert!(
            offers[0].contains(&format!("algorithm={},", algorithm.name())),
            "{user} gets {}:\n{challenge}",
            algorithm.name()
        );
        let ok = register_answering(&server, &peer, &r, algorithm, &challenge, &|t| t);
        assert_eq!(status(&ok), 200, "{ok}\n{}", server.log());
    }
    assert_eq!(bindings(&server).len(), 2);
}

#[test]
fn digest_md5_and_sha256_register_and_survive_sigterm_restart() {
    let data = tempfile::tempdir().expect("temp dir");
    let mut server = start(&data, &[]);
    let peer = UdpPeer::new();
    let first = Registration {
        user: "1001",
        password: "secret1",
        call_id: "reg-md5@test".to_owned(),
        contact_port: 5071,
        expires: 600,
    };
    let ok = register(&server, &peer, &first, Algorithm::Md5);
    assert_eq!(status(&ok), 200, "{ok}\n{}", server.log());
    assert_eq!(
        header(&ok, "Contact"),
        Some("<sip:1001@127.0.0.1:5071>;expires=600"),
        "{ok}"
    );
    let second = Registration {
        user: "1002",
        password: "secret2",
        call_id: "reg-sha@test".to_owned(),
        contact_port: 5072,
        expires: 900,
    };
    let ok = register(&server, &peer, &second, Algorithm::Sha256);
    assert_eq!(status(&ok), 200, "{ok}");
    assert_eq!(
        header(&ok, "Contact"),
        Some("<sip:1002@127.0.0.1:5072>;expires=900")
    );

    let source = format!("udp:127.0.0.1:{}", peer.port());
    let before = bindings(&server);
    assert_eq!(before.len(), 2, "{before:?}");
    assert_eq!(before[0].0, format!("1001@{REALM}"));
    assert_eq!(before[0].1, "sip:1001@127.0.0.1:5071");
    assert!((598..=600).contains(&before[0].2), "{before:?}");
    assert_eq!(before[0].3, source);
    assert_eq!(before[1].0, format!("1002@{REALM}"));
    assert_eq!(before[1].1, "sip:1002@127.0.0.1:5072");

    let exit = server.stop_with(Signal::SIGTERM);
    assert!(exit.success(), "clean exit: {exit}");
    server.restart();
    let after = bindings(&server);
    assert_eq!(
        after.iter().map(|b| (&b.0, &b.1, &b.3)).collect::<Vec<_>>(),
        before
            .iter()
            .map(|b| (&b.0, &b.1, &b.3))
            .collect::<Vec<_>>(),
        "bindings after restart"
    );
    assert!(
        after[1].2 <= before[1].2 && after[1].2 >= before[1].2 - 5,
        "{after:?}"
    );
    assert!(
        server.log().contains("addresses_of_record=2"),
        "{}",
        server.log()
    );
}

#[test]
fn sigkill_right_after_the_200s_loses_nothing() {
    let data = tempfile::tempdir().expect("temp dir");
    // Ten bindings per address-of-record, above the default limit of 5.
    let mut server = start(&data, &["--max-contacts", "10"]);
    let peer = UdpPeer::new();
    for index in 0..20u16 {
        let r = Registration {
            user: if index % 2 == 0 { "1001" } else { "1002" },
            password: if index % 2 == 0 { "secret1" } else { "secret2" },
            call_id: format!("crash-{index}@test"),
            contact_port: 6000 + index,
            expires: 3600,
        };
        let ok = register(&server, &peer, &r, Algorithm::Sha256);
        assert_eq!(status(&ok), 200, "{ok}");
    }
    // No pause: the kill follows the last 200 at once.
    let exit = server.stop_with(Signal::SIGKILL);
    assert!(!exit.success());
    server.restart();
    let after = bindings(&server);
    assert_eq!(after.len(), 20, "{after:?}");
    let contacts: Vec<&str> = after.iter().map(|b| b.1.as_str()).collect();
    for index in 0..20u16 {
        let user = if index % 2 == 0 { "1001" } else { "1002" };
        let contact = format!("sip:{user}@127.0.0.1:{}", 6000 + index);
        assert!(
            contacts.contains(&contact.as_str()),
            "{contact} lost: {after:?}"
        );
    }
}

#[test]
fn sigkill_during_a_register_storm_loses_no_binding_answered_200() {
    let data = tempfile::tempdir().expect("temp dir");
    // Unauthenticated, one source: the storm reaches the registrar at the
    // rate it is sent, so many REGISTERs share each group commit.
    let mut server = start(&data, &["--auth", "anonymous", "--source-rate-limit", "0"]);
    let peer = UdpPeer::new();
    let sender = peer.socket.try_clone().expect("clone the socket");
    let to = server.sip_addr();
    let port = peer.port();
    const STORM: u16 = 4000;
    let storm = std::thread::spawn(move || {
        for index in 0..STORM {
            let user = format!("storm{index}");
            let r = Registration {
                user: &user,
                password: "",
                call_id: format!("storm-{index}@test"),
                contact_port: 10_000 + index,
                expires: 3600,
            };
            let text = register_text(&r, port, 1, None);
            // The server may be gone (killed): later sends just fail.
            let _ = sender.send_to(text.as_bytes(), to);
            if index % 50 == 49 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    });
    let mut answered = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while answered.len() < 800 && std::time::Instant::now() < deadline {
        let Some(response) = peer.recv(Duration::from_secs(5)) else {
            break;
        };
        if status(&response) == 200 {
            let call_id = header(&response, "Call-ID").expect("a Call-ID").to_owned();
            answered.insert(call_id);
        }
    }
    // Killed in the middle of the storm, with REGISTERs queued, written
    // and being synced.
    let exit = server.stop_with(Signal::SIGKILL);
    assert!(!exit.success());
    storm.join().expect("the storm ends");
    // 200s already on their way before the kill still count.
    while let Some(response) = peer.recv(Duration::from_millis(200)) {
        if status(&response) == 200 {
            answered.insert(header(&response, "Call-ID").expect("a Call-ID").to_owned());
        }
    }
    assert!(
        answered.len() >= 800,
        "only {} REGISTERs answered 200 before the kill",
        answered.len()
    );
    assert!(
        answered.len() < usize::from(STORM),
        "the kill came after the storm: it proves nothing"
    );
    server.restart();
    let after = bindings(&server);
    let stored: std::collections::BTreeSet<String> = after
        .iter()
        .map(|b| {
            b.0.trim_end_matches(&format!("@{REALM}"))
                .replace("storm", "storm-")
                + "@test"
        })
        .collect();
    let lost: Vec<&String> = answered.iter().filter(|c| !stored.contains(*c)).collect();
    assert!(
        lost.is_empty(),
        "{} answered 200 and lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    eprintln!(
        "storm: {} answered 200 before the kill, {} stored after the restart",
        answered.len(),
        after.len()
    );
}

/// The storm again, over 200 users re-registering in turn (each REGISTER
/// moves its user to a new contact and removes the previous one), with
/// compaction due every 400 records: the kill lands among journal
/// switches and snapshots written in the background. Every user keeps at
/// least the contact of its last REGISTER answered 200.
#[test]
fn sigkill_during_a_register_storm_with_compactions_loses_no_binding_answered_200() {
    let data = tempfile::tempdir().expect("temp dir");
    let mut server = start(
        &data,
        &[
            "--auth",
            "anonymous",
            "--source-rate-limit",
            "0",
            "--registrar-compact-after",
            "100",
        ],
    );
    let peer = UdpPeer::new();
    let sender = peer.socket.try_clone().expect("clone the socket");
    let to = server.sip_addr();
    let port = peer.port();
    const STORM: u16 = 6000;
    const USERS: u16 = 200;
    let storm = std::thread::spawn(move || {
        for index in 0..STORM {
            let user = format!("cycle{}", index % USERS);
            let round = u32::from(index / USERS) + 1;
            let r = Registration {
                user: &user,
                password: "",
                call_id: format!("{user}@test"),
                contact_port: 10_000 + index,
                expires: 3600,
            };
            let mut text = register_text(&r, port, round, None);
            if index >= USERS {
                let previous = 10_000 + index - USERS;
                text = text.replace(
                    "Contact: <",
                    &format!("Contact: <sip:{user}@127.0.0.1:{previous}>;expires=0, <"),
                );
            }
            let _ = sender.send_to(text.as_bytes(), to);
            if index % 50 == 49 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    });
    // Per user, the contact port of its last REGISTER answered 200.
    let mut answered: std::collections::BTreeMap<String, u16> = std::collections::BTreeMap::new();
    let record = |response: &str, answered: &mut std::collections::BTreeMap<String, u16>| {
        if status(response) != 200 {
            return;
        }
        let user = header(response, "Call-ID")
            .expect("a Call-ID")
            .trim_end_matches("@test")
            .to_owned();
        let round: u16 = header(response, "CSeq")
            .and_then(|c| c.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .expect("a CSeq");
        let index: u16 = user
            .trim_start_matches("cycle")
            .parse()
            .expect("a user number");
        let contact = 10_000 + (round - 1) * USERS + index;
        let last = answered.entry(user).or_insert(contact);
        *last = (*last).max(contact);
    };
    let mut count = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // Killed once 1,000 are answered: 2.5 compactions' worth of records,
    // well before the storm ends even on a slow machine (under a loaded CI
    // the server's queue drops part of a storm this fast, so it answers
    // fewer than it is sent).
    while count < 1000 && std::time::Instant::now() < deadline {
        let Some(response) = peer.recv(Duration::from_secs(5)) else {
            break;
        };
        count += usize::from(status(&response) == 200);
        record(&response, &mut answered);
    }
    let exit = server.stop_with(Signal::SIGKILL);
    assert!(!exit.success());
    storm.join().expect("the storm ends");
    while let Some(response) = peer.recv(Duration::from_millis(200)) {
        count += usize::from(status(&response) == 200);
        record(&response, &mut answered);
    }
    assert!(
        count >= 1000,
        "only {count} REGISTERs answered 200 before the kill"
    );
    assert!(
        count < usize::from(STORM),
        "the kill came after the storm: it proves nothing"
    );
    server.restart();
    let after = bindings(&server);
    let mut stored: std::collections::BTreeMap<String, u16> = std::collections::BTreeMap::new();
    for (aor, contact, _, _) in &after {
        let user = aor.trim_end_matches(&format!("@{REALM}")).to_owned();
        let port: u16 = contact
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('>').parse().ok())
            .expect("a contact port");
        let best = stored.entry(user).or_insert(port);
        *best = (*best).max(port);
    }
    let lost: Vec<(&String, &u16)> = answered
        .iter()
        .filter(|(user, last)| stored.get(*user).is_none_or(|kept| kept < *last))
        .collect();
    assert!(
        lost.is_empty(),
        "{} users lost a contact answered 200, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    // The store compacted during the storm (a snapshot exists), and the
    // restart left at most the journal after it.
    let store = data.path().join("state/registrations");
    assert!(
        store.join("snapshot.json").exists(),
        "no compaction happened"
    );
    let journals = std::fs::read_dir(&store)
        .expect("the store directory")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("journal."))
        .count();
    eprintln!(
        "storm with compactions: {count} answered 200 before the kill, {} users kept, {journals} journal file(s) left",
        stored.len()
    );
}

#[test]
fn refusals_wrong_password_foreign_aor_short_expiry_and_lockout() {
    let data = tempfile::tempdir().expect("temp dir");
    let server = start(&data, &["--lockout-max-failures", "3"]);
    let peer = UdpPeer::new();

    let short = Registration {
        user: "1001",
        password: "secret1",
        call_id: "short@test".to_owned(),
        contact_port: 5071,
        expires: 10,
    };
    let answer = register(&server, &peer, &short, Algorithm::Md5);
    assert_eq!(status(&answer), 423, "{answer}");
    assert_eq!(header(&answer, "Min-Expires"), Some("60"));

    // 1002's credentials for 1001's address-of-record.
    let foreign = Registration {
        user: "1002",
        password: "secret2",
        call_id: "foreign@test".to_owned(),
        contact_port: 5072,
        expires: 600,
    };
    let text =
        register_text(&foreign, peer.port(), 1, None).replace("To: <sip:1002@", "To: <sip:1001@");
    let challenge = peer.request(server.sip_addr(), text.as_bytes());
    assert_eq!(status(&challenge), 401);
    let offer = headers(&challenge, "WWW-Authenticate")[1];
    let nonce = challenge_param(offer, "nonce").expect("nonce");
    let ha1 = Algorithm::Md5.hash(&format!("1002:{REALM}:secret2"));
    let ha2 = Algorithm::Md5.hash(&format!("REGISTER:sip:{REALM}"));
    let response = Algorithm::Md5.hash(&format!("{ha1}:{nonce}:00000001:c1:auth:{ha2}"));
    let authorization = format!(
        "Digest username=\"1002\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"sip:{REALM}\", \
         response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c1\""
    );
    let text = register_text(&foreign, peer.port(), 2, Some(&authorization))
        .replace("To: <sip:1002@", "To: <sip:1001@");
    let answer = peer.request(server.sip_addr(), text.as_bytes());
    assert_eq!(status(&answer), 403, "{answer}");

    // Wrong passwords: challenged again, then locked out with 403.
    for attempt in 0..3 {
        let wrong = Registration {
            user: "1001",
            password: "guess",
            call_id: format!("wrong-{attempt}@test"),
            contact_port: 5073,
            expires: 600,
        };
        let answer = register(&server, &peer, &wrong, Algorithm::Sha256);
        assert_eq!(status(&answer), 401, "attempt {attempt}: {answer}");
    }
    let locked = Registration {
        call_id: "after-lockout@test".to_owned(),
        expires: 600,
        ..short
    };
    let text = register_text(&locked, peer.port(), 1, None);
    let answer = peer.request(server.sip_addr(), text.as_bytes());
    assert_eq!(status(&answer), 403, "source locked out: {answer}");
    assert!(bindings(&server).is_empty());
    assert_eq!(peer.recv(Duration::from_millis(100)), None);
}

#[test]
fn a_300_contact_register_is_refused_whole_beyond_max_contacts() {
    let data = tempfile::tempdir().expect("temp dir");
    let server = start(&data, &["--max-contacts", "3"]);
    let peer = UdpPeer::new();
    let r = Registration {
        user: "1001",
        password: "secret1",
        call_id: "many@test".to_owned(),
        contact_port: 5080,
        expires: 600,
    };
    let contacts = |count: u16| {
        move |text: String| {
            let many: String = (0..count)
                .map(|i| format!("Contact: <sip:1001@127.0.0.1:{}>\r\n", 20_000 + i))
                .collect();
            text.replace("Contact: <sip:1001@127.0.0.1:5080>\r\n", &many)
        }
    };
    let answer = register_edited(&server, &peer, &r, Algorithm::Md5, &contacts(300));
    assert_eq!(status(&answer), 403, "{answer}");
    assert_eq!(
        header(&answer, "Warning"),
        Some("399 switchboard \"at most 3 contacts per address-of-record\"")
    );
    assert!(bindings(&server).is_empty(), "nothing stored");
    // Up to the limit is accepted; one more on top is refused.
    let r = Registration {
        call_id: "three@test".to_owned(),
        ..r
    };
    let answer = register_edited(&server, &peer, &r, Algorithm::Md5, &contacts(3));
    assert_eq!(status(&answer), 200, "{answer}");
    assert_eq!(bindings(&server).len(), 3);
    let r = Registration {
        call_id: "fourth@test".to_owned(),
        contact_port: 5081,
        ..r
    };
    let answer = register(&server, &peer, &r, Algorithm::Md5);
    assert_eq!(status(&answer), 403, "{answer}");
    assert_eq!(bindings(&server).len(), 3);
}

#[test]
fn sighup_reloads_the_users_file_and_keeps_users_on_error() {
    let data = tempfile::tempdir().expect("temp dir");
    let server = start(&data, &[]);
    let peer = UdpPeer::new();
    let newcomer = Registration {
        user: "1003",
        password: "secret3",
        call_id: "hup@test".to_owned(),
        contact_port: 5074,
        expires: 600,
    };
    assert_eq!(
        status(&register(&server, &peer, &newcomer, Algorithm::Md5)),
        401
    );

    users_file(data.path(), &[("1001", "secret1"), ("1003", "secret3")]);
    nix::sys::signal::kill(server.pid(), Signal::SIGHUP).expect("SIGHUP");
    wait_for_log(&server, "users file reloaded");
    let retry = Registration {
        call_id: "hup2@test".to_owned(),
        ..newcomer
    };
    assert_eq!(
        status(&register(&server, &peer, &retry, Algorithm::Md5)),
        200
    );

    std::fs::write(data.path().join("users.toml"), "[[user]]\nname = \n").expect("break the file");
    nix::sys::signal::kill(server.pid(), Signal::SIGHUP).expect("SIGHUP");
    wait_for_log(&server, "users file not reloaded");
    let again = Registration {
        call_id: "hup3@test".to_owned(),
        ..retry
    };
    assert_eq!(
        status(&register(&server, &peer, &again, Algorithm::Sha256)),
        200,
        "previous users kept"
    );
}

fn wait_for_log(server: &Server, text: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !server.log().contains(text) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {text:?} in:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
