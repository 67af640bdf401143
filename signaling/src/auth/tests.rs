//! Digest vectors, the verify paths, lockout, trusted networks and users files.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use md5::Md5;
use sha2::{Digest, Sha256};

use super::*;

const REALM: &str = "switchboard.test";
const URI: &str = "sip:switchboard.test";

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address parses")
}

/// Client-side hashing written independently of the code under test.
fn client_hash(algorithm: Algorithm, data: &str) -> String {
    let bytes: Vec<u8> = match algorithm {
        Algorithm::Md5 => Md5::digest(data.as_bytes()).to_vec(),
        Algorithm::Sha256 => Sha256::digest(data.as_bytes()).to_vec(),
    };
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn client_response(
    algorithm: Algorithm,
    user: &str,
    password: &str,
    nonce: &str,
    nc: &str,
    method: &str,
) -> String {
    let ha1 = client_hash(algorithm, &format!("{user}:{REALM}:{password}"));
    let ha2 = client_hash(algorithm, &format!("{method}:{URI}"));
    client_hash(algorithm, &format!("{ha1}:{nonce}:{nc}:cn0nce:auth:{ha2}"))
}

fn authorization(
    algorithm: Algorithm,
    user: &str,
    password: &str,
    nonce: &str,
    nc: &str,
    method: &str,
) -> String {
    let response = client_response(algorithm, user, password, nonce, nc, method);
    format!(
        "Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{URI}\", \
         response=\"{response}\", algorithm={}, qop=auth, nc={nc}, cnonce=\"cn0nce\"",
        algorithm.name()
    )
}

fn users() -> Users {
    let text = format!(
        "[[user]]\nname = \"alice\"\npassword = \"wonderland\"\n\n{}",
        UserEntry::hashed("bob", REALM, "builder").to_toml()
    );
    Users::parse(Path::new("users.toml"), &text, REALM).expect("test users parse")
}

fn authenticator() -> Authenticator {
    let mut config = AuthConfig::digest(REALM, b"test secret".to_vec());
    config.lockout = LockoutConfig {
        max_failures: 3,
        window: Duration::from_secs(60),
        cool_down: Duration::from_secs(300),
        ..LockoutConfig::default()
    };
    Authenticator::new(config, users())
}

fn nonce_of(answer: &Answer) -> String {
    let credentials = Credentials::parse(&answer.header_values[0]).expect("challenge parses");
    credentials
        .get("nonce")
        .expect("challenge has a nonce")
        .to_string()
}

#[test]
fn rfc_2617_md5_and_rfc_7616_sha256_vectors() {
    // RFC 2617 §3.5 (MD5, qop=auth).
    let md5_ha1 = ha1(
        Algorithm::Md5,
        "Mufasa",
        "testrealm@host.com",
        "Circle Of Life",
    );
    assert_eq!(
        md5_ha1,
        client_hash(Algorithm::Md5, "Mufasa:testrealm@host.com:Circle Of Life")
    );
    let md5 = response(
        Algorithm::Md5,
        &md5_ha1,
        "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        "00000001",
        "0a4f113b",
        "GET",
        "/dir/index.html",
    );
    assert_eq!(md5, "6629fae49393a05397450978507c4ef1");
    // RFC 7616 §3.9.1 (SHA-256 and MD5, qop=auth).
    let nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
    let cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
    for (algorithm, expected) in [
        (
            Algorithm::Sha256,
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
        ),
        (Algorithm::Md5, "8ca523f5e9506fed4657c9700eebdbec"),
    ] {
        let ha1_value = ha1(
            algorithm,
            "Mufasa",
            "http-auth@example.org",
            "Circle of Life",
        );
        let independent = {
            let ha2 = client_hash(algorithm, "GET:/dir/index.html");
            client_hash(
                algorithm,
                &format!("{ha1_value}:{nonce}:00000001:{cnonce}:auth:{ha2}"),
            )
        };
        let computed = response(
            algorithm,
            &ha1_value,
            nonce,
            "00000001",
            cnonce,
            "GET",
            "/dir/index.html",
        );
        assert_eq!(computed, independent, "{}", algorithm.name());
        assert_eq!(computed, expected, "{}", algorithm.name());
    }
}

#[test]
fn hmac_sha256_matches_rfc_4231_case_2() {
    assert_eq!(
        digest::hex(&digest::hmac_sha256(
            b"Jefe",
            b"what do ya want for nothing?"
        )),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

#[test]
fn credentials_parser_handles_quotes_escapes_and_commas() {
    let credentials = Credentials::parse(
        "digest  USERNAME=\"a\\\"b\", realm=\"x, y\",nonce=abc ,uri=\"sip:u@h;a=b\", qop=auth",
    )
    .expect("parses");
    assert_eq!(credentials.get("username"), Some("a\"b"));
    assert_eq!(credentials.get("realm"), Some("x, y"));
    assert_eq!(credentials.get("nonce"), Some("abc"));
    assert_eq!(credentials.get("uri"), Some("sip:u@h;a=b"));
    assert_eq!(credentials.get("QOP"), Some("auth"));
    for bad in [
        "Basic dXNlcjpwYXNz",
        "Digest username=\"unterminated",
        "Digest username=\"a\"x",
        "Digest username=a, username=b",
        "Digest =x",
    ] {
        assert!(
            matches!(Credentials::parse(bad), Err(AuthFailure::Malformed(_))),
            "{bad} must be malformed"
        );
    }
}

#[test]
fn all_challenges_offer_each_algorithm_in_order_with_401_or_407() {
    let mut config = AuthConfig::digest(REALM, b"test secret".to_vec());
    config.algorithms = vec![Algorithm::Sha256, Algorithm::Md5];
    config.challenges = ChallengeMode::All;
    let mut auth = Authenticator::new(config, users());
    let register = auth.challenge(t(0), "REGISTER", false, None);
    assert_eq!(register.status, 401);
    assert_eq!(register.header_name, Some("WWW-Authenticate"));
    let nonce = nonce_of(&register);
    assert_eq!(
        register.header_values,
        vec![
            format!("Digest realm=\"{REALM}\", nonce=\"{nonce}\", algorithm=SHA-256, qop=\"auth\""),
            format!("Digest realm=\"{REALM}\", nonce=\"{nonce}\", algorithm=MD5, qop=\"auth\""),
        ]
    );
    let invite = auth.challenge(t(0), "INVITE", true, None);
    assert_eq!(
        (invite.status, invite.header_name),
        (407, Some("Proxy-Authenticate"))
    );
    assert!(invite.header_values[0].ends_with(", stale=true"));
    assert_ne!(
        nonce_of(&invite),
        nonce,
        "every challenge has a fresh nonce"
    );
    assert_eq!(credentials_header("REGISTER"), "Authorization");
    assert_eq!(credentials_header("INVITE"), "Proxy-Authorization");
}

#[test]
fn one_challenge_by_default_with_md5_that_every_phone_knows() {
    let mut auth = authenticator();
    let answer = auth.answer(t(0), "REGISTER", Some("alice"), &AuthFailure::Missing);
    let nonce = nonce_of(&answer);
    assert_eq!(
        answer.header_values,
        vec![format!(
            "Digest realm=\"{REALM}\", nonce=\"{nonce}\", algorithm=MD5, qop=\"auth\""
        )]
    );
    let anonymous = auth.challenge(t(0), "INVITE", false, None);
    assert_eq!(anonymous.header_values.len(), 1);
    assert!(anonymous.header_values[0].contains("algorithm=MD5,"));
}

#[test]
fn a_user_whose_entry_prefers_sha256_is_challenged_with_it_alone() {
    let text = format!(
        "{}algorithm = \"SHA-256\"\n\n[[user]]\nname = \"dave\"\npassword = \"x\"\nalgorithm = \"md5\"\n",
        UserEntry::hashed("carol", REALM, "secret").to_toml()
    );
    let users = Users::parse(Path::new("users.toml"), &text, REALM).expect("users parse");
    assert_eq!(users.preferred_algorithm("carol"), Some(Algorithm::Sha256));
    assert_eq!(users.preferred_algorithm("dave"), Some(Algorithm::Md5));
    assert_eq!(users.preferred_algorithm("erin"), None);
    let mut auth = Authenticator::new(AuthConfig::digest(REALM, b"s".to_vec()), users.clone());
    let carol = auth.challenge(t(0), "REGISTER", false, Some("carol"));
    assert_eq!(carol.header_values.len(), 1);
    assert!(
        carol.header_values[0].contains("algorithm=SHA-256,"),
        "{carol:?}"
    );
    let other = auth.challenge(t(0), "REGISTER", false, Some("erin"));
    assert!(
        other.header_values[0].contains("algorithm=MD5,"),
        "{other:?}"
    );
    // Carol's phone answers SHA-256 and is let in.
    let nonce = nonce_of(&carol);
    let header = authorization(
        Algorithm::Sha256,
        "carol",
        "secret",
        &nonce,
        "00000001",
        "REGISTER",
    );
    assert!(auth
        .verify(t(1), "REGISTER", URI, Some(&header), ip("192.0.2.5"))
        .is_ok());
    // A preference the server does not offer falls back to its first.
    let mut config = AuthConfig::digest(REALM, b"s".to_vec());
    config.algorithms = vec![Algorithm::Md5];
    let mut md5_only = Authenticator::new(config, users);
    let fallback = md5_only.challenge(t(0), "REGISTER", false, Some("carol"));
    assert!(
        fallback.header_values[0].contains("algorithm=MD5,"),
        "{fallback:?}"
    );
}

#[test]
fn credentials_with_an_algorithm_not_offered_are_refused_without_a_guess_charged() {
    let mut config = AuthConfig::digest(REALM, b"test secret".to_vec());
    config.algorithms = vec![Algorithm::Sha256];
    config.lockout = LockoutConfig {
        max_failures: 1,
        ..LockoutConfig::default()
    };
    let mut auth = Authenticator::new(config, users());
    let source = ip("198.51.100.9");
    let nonce = nonce_of(&auth.challenge(t(0), "REGISTER", false, None));
    // The right password, computed with MD5: a downgrade, refused.
    let md5 = authorization(
        Algorithm::Md5,
        "alice",
        "wonderland",
        &nonce,
        "00000001",
        "REGISTER",
    );
    assert_eq!(
        auth.verify(t(1), "REGISTER", URI, Some(&md5), source),
        Err(AuthFailure::Rejected)
    );
    // No guess was tested, so nothing was charged: the source is not
    // locked out (one failure would do it) and SHA-256 still works.
    let sha = authorization(
        Algorithm::Sha256,
        "alice",
        "wonderland",
        &nonce,
        "00000001",
        "REGISTER",
    );
    assert!(auth
        .verify(t(1), "REGISTER", URI, Some(&sha), source)
        .is_ok());
}

#[test]
fn a_users_file_algorithm_must_be_known_and_have_its_ha1() {
    for (entry, expected) in [
        (
            "algorithm = \"SHA-512\"",
            "algorithm must be MD5 or SHA-256",
        ),
        ("algorithm = \"\"", "algorithm must be MD5 or SHA-256"),
    ] {
        let text = format!("[[user]]\nname = \"f\"\npassword = \"p\"\n{entry}\n");
        let err = Users::parse(Path::new("u.toml"), &text, REALM).expect_err(entry);
        assert!(err.to_string().contains(expected), "{err}");
    }
    let md5 = UserEntry::hashed("g", REALM, "p");
    let text = format!(
        "[[user]]\nname = \"g\"\nha1_md5 = \"{}\"\nalgorithm = \"SHA-256\"\n",
        md5.ha1_md5.expect("hashed")
    );
    let err = Users::parse(Path::new("u.toml"), &text, REALM).expect_err("no SHA-256 HA1");
    assert!(err.to_string().contains("needs ha1_sha256"), "{err}");
}

#[test]
fn valid_credentials_with_both_algorithms_and_nc_replay() {
    let mut auth = authenticator();
    let nonce = nonce_of(&auth.challenge(t(0), "REGISTER", false, None));
    let source = ip("198.51.100.1");
    for (algorithm, user, password) in [
        (Algorithm::Sha256, "alice", "wonderland"),
        (Algorithm::Md5, "bob", "builder"),
    ] {
        // Each client answers its own challenge: nonce-counts are per nonce.
        let own = nonce_of(&auth.challenge(t(0), "REGISTER", false, None));
        let nonce = if user == "alice" { nonce.clone() } else { own };
        let header = authorization(algorithm, user, password, &nonce, "00000001", "REGISTER");
        assert_eq!(
            auth.verify(t(1), "REGISTER", URI, Some(&header), source),
            Ok(Authenticated::User {
                username: user.to_string(),
                algorithm
            })
        );
    }
    // alice again on nc 1: a replay; nc 2 is fine; nc 2 again is a replay.
    let replay = authorization(
        Algorithm::Sha256,
        "alice",
        "wonderland",
        &nonce,
        "00000001",
        "REGISTER",
    );
    assert_eq!(
        auth.verify(t(2), "REGISTER", URI, Some(&replay), source),
        Err(AuthFailure::Replay)
    );
    let next = authorization(
        Algorithm::Sha256,
        "alice",
        "wonderland",
        &nonce,
        "00000002",
        "REGISTER",
    );
    assert!(auth
        .verify(t(2), "REGISTER", URI, Some(&next), source)
        .is_ok());
    assert_eq!(
        auth.verify(t(3), "REGISTER", URI, Some(&next), source),
        Err(AuthFailure::Replay)
    );
}

#[test]
fn wrong_password_and_unknown_user_are_indistinguishable() {
    let mut auth = authenticator();
    let nonce = nonce_of(&auth.challenge(t(0), "INVITE", false, None));
    let wrong = authorization(
        Algorithm::Sha256,
        "alice",
        "guess",
        &nonce,
        "00000001",
        "INVITE",
    );
    // Its own nonce: a failed guess burns the nonce it used.
    let other_nonce = nonce_of(&auth.challenge(t(0), "INVITE", false, None));
    let unknown = authorization(
        Algorithm::Sha256,
        "mallory",
        "guess",
        &other_nonce,
        "00000001",
        "INVITE",
    );
    let a = auth.verify(t(1), "INVITE", URI, Some(&wrong), ip("198.51.100.1"));
    let b = auth.verify(t(1), "INVITE", URI, Some(&unknown), ip("198.51.100.2"));
    assert_eq!(a, Err(AuthFailure::Rejected));
    assert_eq!(b, Err(AuthFailure::Rejected));
    let answer_a = auth.answer(t(1), "INVITE", None, &AuthFailure::Rejected);
    let answer_b = auth.answer(t(1), "INVITE", None, &AuthFailure::Rejected);
    let strip = |answer: &Answer| {
        let nonce = nonce_of(answer);
        (
            answer.status,
            answer.header_name,
            answer
                .header_values
                .iter()
                .map(|v| v.replace(&nonce, "N"))
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(strip(&answer_a), strip(&answer_b));
    assert_eq!(answer_a.status, 407);
}

#[test]
fn expired_nonce_with_right_password_is_stale_wrong_password_is_rejected() {
    let mut auth = authenticator();
    let nonce = nonce_of(&auth.challenge(t(0), "REGISTER", false, None));
    let good = authorization(
        Algorithm::Md5,
        "alice",
        "wonderland",
        &nonce,
        "00000001",
        "REGISTER",
    );
    // Its own nonce: a failed guess burns the nonce it used.
    let bad_nonce = nonce_of(&auth.challenge(t(0), "REGISTER", false, None));
    let bad = authorization(
        Algorithm::Md5,
        "alice",
        "nope",
        &bad_nonce,
        "00000001",
        "REGISTER",
    );
    let source = ip("198.51.100.1");
    assert_eq!(
        auth.verify(t(301), "REGISTER", URI, Some(&bad), source),
        Err(AuthFailure::Rejected)
    );
    assert_eq!(
        auth.verify(t(301), "REGISTER", URI, Some(&good), source),
        Err(AuthFailure::Stale)
    );
    let answer = auth.answer(t(301), "REGISTER", None, &AuthFailure::Stale);
    assert_eq!(answer.status, 401);
    assert!(answer
        .header_values
        .iter()
        .all(|v| v.ends_with(", stale=true")));
    // At exactly the lifetime the nonce is still fresh.
    assert!(auth
        .verify(t(300), "REGISTER", URI, Some(&good), source)
        .is_ok());
}

#[test]
fn forged_or_foreign_nonces_are_rejected() {
    let mut auth = authenticator();
    let nonce = nonce_of(&auth.challenge(t(0), "REGISTER", false, None));
    let (payload, _) = nonce.rsplit_once('-').expect("nonce has a mac");
    let forged = format!("{payload}-{}", "0".repeat(32));
    let mut other =
        Authenticator::new(AuthConfig::digest(REALM, b"other secret".to_vec()), users());
    let foreign = nonce_of(&other.challenge(t(0), "REGISTER", false, None));
    for nonce in [forged, foreign, "garbage".to_string()] {
        let header = authorization(
            Algorithm::Md5,
            "alice",
            "wonderland",
            &nonce,
            "00000001",
            "REGISTER",
        );
        assert_eq!(
            auth.verify(t(1), "REGISTER", URI, Some(&header), ip("198.51.100.1")),
            Err(AuthFailure::Rejected),
            "nonce {nonce}"
        );
    }
    // No digest was tested, so none of the three counted as a guess: the
    // source is not blocked (the threshold is 3).
    assert!(alice_from(&mut auth, t(2), ip("198.51.100.1")).is_ok());
}

#[test]
fn missing_malformed_wrong_realm_and_wrong_uri() {
    let mut auth = authenticator();
    let source = ip("198.51.100.1");
    assert_eq!(
        auth.verify(t(0), "REGISTER", URI, None, source),
        Err(AuthFailure::Missing)
    );
    assert_eq!(
        auth.verify(
            t(0),
            "REGISTER",
            URI,
            Some("Digest username=\"alice\""),
            source
        ),
        Err(AuthFailure::Malformed("missing realm".to_string()))
    );
    let nonce = nonce_of(&auth.challenge(t(0), "REGISTER", false, None));
    let header = authorization(
        Algorithm::Md5,
        "alice",
        "wonderland",
        &nonce,
        "00000001",
        "REGISTER",
    );
    assert_eq!(
        auth.verify(
            t(1),
            "REGISTER",
            URI,
            Some(&header.replace(REALM, "elsewhere")),
            source
        ),
        Err(AuthFailure::Missing),
        "credentials for another realm are no credentials"
    );
    assert_eq!(
        auth.verify(t(1), "REGISTER", "sip:other.test", Some(&header), source),
        Err(AuthFailure::Rejected),
        "the digest uri must be the Request-URI"
    );
    assert_eq!(
        auth.answer(
            t(1),
            "REGISTER",
            None,
            &AuthFailure::Malformed(String::new())
        )
        .status,
        400
    );
}

/// A wrong guess for `user` from `source` on a fresh nonce.
fn fail_once(auth: &mut Authenticator, now: SystemTime, user: &str, source: IpAddr) {
    let nonce = nonce_of(&auth.challenge(now, "REGISTER", false, None));
    let wrong = authorization(
        Algorithm::Md5,
        user,
        "guess",
        &nonce,
        "00000001",
        "REGISTER",
    );
    let result = auth.verify(now, "REGISTER", URI, Some(&wrong), source);
    assert!(
        matches!(result, Err(AuthFailure::Rejected | AuthFailure::Slowed(_))),
        "a wrong guess from {source}: {result:?}"
    );
}

/// alice's right password from `source` on a fresh nonce.
fn alice_from(
    auth: &mut Authenticator,
    now: SystemTime,
    source: IpAddr,
) -> Result<Authenticated, AuthFailure> {
    let nonce = nonce_of(&auth.challenge(now, "REGISTER", false, None));
    let right = authorization(
        Algorithm::Md5,
        "alice",
        "wonderland",
        &nonce,
        "00000001",
        "REGISTER",
    );
    auth.verify(now, "REGISTER", URI, Some(&right), source)
}

#[test]
fn failing_source_is_blocked_even_with_the_right_password_then_cool_down() {
    let mut auth = authenticator();
    let attacker = ip("203.0.113.66");
    for second in 1..=3 {
        fail_once(&mut auth, t(second), "alice", attacker);
    }
    // Blocked: even the right password from that address gets 403 ...
    assert_eq!(
        alice_from(&mut auth, t(4), attacker),
        Err(AuthFailure::LockedOut)
    );
    assert_eq!(
        auth.answer(t(4), "REGISTER", None, &AuthFailure::LockedOut)
            .status,
        403
    );
    // ... until 300 s after the third failure (t=3).
    assert_eq!(
        alice_from(&mut auth, t(302), attacker),
        Err(AuthFailure::LockedOut)
    );
    assert!(alice_from(&mut auth, t(303), attacker).is_ok());
}

#[test]
fn right_password_from_a_fresh_source_works_after_50_failures_for_that_user_elsewhere() {
    let mut auth = authenticator();
    // 50 guesses for alice from 50 addresses, and 50 more from one address
    // (blocked after its third).
    for i in 0..50u8 {
        fail_once(&mut auth, t(1), "alice", ip(&format!("203.0.113.{i}")));
    }
    let persistent = ip("198.51.100.99");
    for _ in 0..3 {
        fail_once(&mut auth, t(2), "alice", persistent);
    }
    for _ in 3..50 {
        assert_eq!(
            alice_from(&mut auth, t(2), persistent),
            Err(AuthFailure::LockedOut)
        );
    }
    assert_eq!(
        alice_from(&mut auth, t(3), ip("192.0.2.10")),
        Ok(Authenticated::User {
            username: "alice".to_string(),
            algorithm: Algorithm::Md5
        }),
        "alice's own phone is not locked out by others' guesses"
    );
}

#[test]
fn ipv6_sources_in_one_64_share_a_block_and_other_64s_do_not() {
    let mut auth = authenticator();
    for host in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"] {
        fail_once(&mut auth, t(1), "alice", ip(host));
    }
    assert_eq!(
        alice_from(&mut auth, t(2), ip("2001:db8:1:2:abcd::9")),
        Err(AuthFailure::LockedOut),
        "a fourth address of the same /64 is blocked"
    );
    assert!(alice_from(&mut auth, t(2), ip("2001:db8:1:3::1")).is_ok());
    // An IPv4-mapped address is the IPv4 address.
    assert_eq!(
        SourceKey::of(ip("::ffff:192.0.2.1")),
        SourceKey::of(ip("192.0.2.1"))
    );
}

#[test]
fn a_nonce_that_failed_once_carries_no_second_guess() {
    let mut auth = authenticator();
    let nonce = nonce_of(&auth.challenge(t(0), "REGISTER", false, None));
    let source = ip("203.0.113.66");
    let wrong = authorization(Algorithm::Md5, "alice", "x", &nonce, "00000001", "REGISTER");
    assert_eq!(
        auth.verify(t(1), "REGISTER", URI, Some(&wrong), source),
        Err(AuthFailure::Rejected)
    );
    // Another guess (nc above the first) and even the right password on
    // that nonce are re-challenged without being tested or counted.
    for (password, nc) in [("y", "00000002"), ("wonderland", "00000003")] {
        let header = authorization(Algorithm::Md5, "alice", password, &nonce, nc, "REGISTER");
        assert_eq!(
            auth.verify(t(1), "REGISTER", URI, Some(&header), source),
            Err(AuthFailure::Replay),
            "{password}"
        );
    }
    // Not counted: two more failures are needed to reach the threshold of 3.
    fail_once(&mut auth, t(2), "alice", source);
    assert!(alice_from(&mut auth, t(2), source).is_ok());
}

#[test]
fn failure_tables_stay_within_their_bound_and_store_no_user_name() {
    let mut config = AuthConfig::digest(REALM, b"test secret".to_vec());
    config.lockout = LockoutConfig {
        max_failures: 2,
        max_sources: 100,
        ..LockoutConfig::default()
    };
    let mut auth = Authenticator::new(config, users());
    let huge = "u".repeat(12_000);
    for i in 0..1000u32 {
        let source = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        // Two failures each: every source ends up blocked.
        fail_once(&mut auth, t(1), &huge, source);
        fail_once(&mut auth, t(1), &huge, source);
        let (failures, blocked) = auth.lockout.tracked();
        assert!(
            failures <= 100 && blocked <= 100,
            "{failures} / {blocked} after {i}"
        );
    }
    assert_eq!(auth.lockout.tracked(), (0, 100));
    // The newest blocks are kept, the oldest gave way.
    assert_eq!(
        alice_from(&mut auth, t(2), ip("10.0.3.231")),
        Err(AuthFailure::LockedOut)
    );
    assert!(alice_from(&mut auth, t(2), ip("10.0.0.0")).is_ok());
}

#[test]
fn failures_outside_the_window_do_not_lock() {
    let mut auth = authenticator();
    let source = ip("203.0.113.66");
    for second in [0, 30, 61, 92] {
        let nonce = nonce_of(&auth.challenge(t(second), "REGISTER", false, None));
        let wrong = authorization(Algorithm::Md5, "alice", "x", &nonce, "00000001", "REGISTER");
        assert_eq!(
            auth.verify(t(second), "REGISTER", URI, Some(&wrong), source),
            Err(AuthFailure::Rejected),
            "at {second}s no more than two failures fall in a 60 s window"
        );
    }
}

#[test]
fn trusted_networks_anonymous_mode_and_unprotected_methods() {
    let mut config = AuthConfig::digest(REALM, b"s".to_vec());
    config.trusted_networks = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]
        .iter()
        .map(|c| Cidr::parse(c).expect("valid CIDR"))
        .collect();
    let mut auth = Authenticator::new(config, users());
    for trusted in ["10.1.2.3", "2001:db8:1::5", "::ffff:10.9.9.9", "192.0.2.7"] {
        assert_eq!(
            auth.verify(t(0), "INVITE", URI, None, ip(trusted)),
            Ok(Authenticated::Trusted),
            "{trusted}"
        );
    }
    for untrusted in ["11.0.0.1", "2001:db9::1", "192.0.2.8"] {
        assert_eq!(
            auth.verify(t(0), "INVITE", URI, None, ip(untrusted)),
            Err(AuthFailure::Missing),
            "{untrusted}"
        );
    }
    assert_eq!(
        auth.verify(t(0), "OPTIONS", URI, None, ip("11.0.0.1")),
        Ok(Authenticated::NotRequired)
    );
    assert_eq!(
        Cidr::parse("10.0.0.0/33"),
        Err(AuthConfigError::InvalidCidr("10.0.0.0/33".to_string()))
    );
    assert!(Cidr::parse("0.0.0.0/0")
        .expect("valid")
        .contains(ip("8.8.8.8")));

    let mut config = AuthConfig::digest(REALM, b"s".to_vec());
    config.mode = AuthMode::Anonymous;
    let mut anonymous = Authenticator::new(config, Users::default());
    assert_eq!(
        anonymous.verify(t(0), "REGISTER", URI, None, ip("11.0.0.1")),
        Ok(Authenticated::NotRequired)
    );
}

#[test]
fn users_file_reload_keeps_old_users_on_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("users.toml");
    std::fs::write(&path, UserEntry::hashed("carol", REALM, "pw").to_toml()).expect("writable");
    let mut auth = authenticator();
    assert_eq!(auth.reload_users(&path).expect("valid file"), 1);
    assert_eq!(
        auth.users().ha1("carol", Algorithm::Sha256),
        Some(ha1(Algorithm::Sha256, "carol", REALM, "pw").as_str())
    );

    std::fs::write(&path, "[[user]]\nname = \"dave\"\nha1_md5 = \"abc\"\n").expect("writable");
    let err = auth.reload_users(&path).expect_err("short HA1 is refused");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: user #1 (\"dave\"): ha1 for MD5 must be 32 hex digits",
            path.display()
        )
    );
    assert!(
        auth.users().ha1("carol", Algorithm::Md5).is_some(),
        "old users stay"
    );

    std::fs::write(&path, "[[user]]\nname = \"erin\"\npassword = \n").expect("writable");
    let err = auth.reload_users(&path).expect_err("bad TOML is refused");
    assert!(err.to_string().contains("line 3"), "names the line: {err}");
    assert_eq!(auth.users().len(), 1);

    for (text, reason) in [
        ("[[user]]\nname = \"f\"\n", "no password and no HA1"),
        ("[[user]]\nname = \"g\"\npassword = \"p\"\nha1_md5 = \"00000000000000000000000000000000\"\n", "give either a password or HA1 values"),
        ("[[user]]\nname = \"h\"\npassword = \"p\"\n[[user]]\nname = \"h\"\npassword = \"q\"\n", "duplicate name"),
    ] {
        match Users::parse(Path::new("u.toml"), text, REALM) {
            Err(UsersError::InvalidUser { reason: got, .. }) => assert_eq!(got, reason),
            other => panic!("expected {reason:?}, got {other:?}"),
        }
    }
}

#[test]
fn a_user_name_guessed_at_from_many_sources_slows_wrong_guesses_only() {
    let mut auth = authenticator();
    // Threshold 3: three failures for alice from three sources ...
    for i in 1..=3 {
        fail_once(&mut auth, t(1), "alice", ip(&format!("203.0.113.{i}")));
    }
    // ... then each further wrong guess, from anywhere, is answered late.
    for i in 4..=10 {
        let nonce = nonce_of(&auth.challenge(t(2), "REGISTER", false, None));
        let wrong = authorization(
            Algorithm::Md5,
            "alice",
            "guess",
            &nonce,
            "00000001",
            "REGISTER",
        );
        assert_eq!(
            auth.verify(
                t(2),
                "REGISTER",
                URI,
                Some(&wrong),
                ip(&format!("203.0.113.{i}"))
            ),
            Err(AuthFailure::Slowed(Duration::from_secs(2)))
        );
    }
    assert_eq!(
        auth.answer(
            t(2),
            "REGISTER",
            None,
            &AuthFailure::Slowed(Duration::from_secs(2))
        )
        .status,
        401,
        "a slowed answer is the same challenge"
    );
    // The right password is never slowed.
    assert!(alice_from(&mut auth, t(2), ip("192.0.2.10")).is_ok());
    // Unknown names are slowed alike (nothing tells them apart) ...
    for i in 1..=4 {
        let nonce = nonce_of(&auth.challenge(t(3), "REGISTER", false, None));
        let wrong = authorization(
            Algorithm::Md5,
            "mallory",
            "x",
            &nonce,
            "00000001",
            "REGISTER",
        );
        let result = auth.verify(
            t(3),
            "REGISTER",
            URI,
            Some(&wrong),
            ip(&format!("198.51.100.{i}")),
        );
        let expected = if i <= 3 {
            AuthFailure::Rejected
        } else {
            AuthFailure::Slowed(Duration::from_secs(2))
        };
        assert_eq!(result, Err(expected), "guess {i}");
    }
    // ... and a name's count ends with the window.
    let nonce = nonce_of(&auth.challenge(t(70), "REGISTER", false, None));
    let wrong = authorization(
        Algorithm::Md5,
        "alice",
        "guess",
        &nonce,
        "00000001",
        "REGISTER",
    );
    assert_eq!(
        auth.verify(t(70), "REGISTER", URI, Some(&wrong), ip("203.0.113.99")),
        Err(AuthFailure::Rejected)
    );
}

#[test]
fn the_user_name_table_stays_within_its_bound() {
    let mut config = AuthConfig::digest(REALM, b"test secret".to_vec());
    config.lockout = LockoutConfig {
        max_sources: 50,
        ..LockoutConfig::default()
    };
    let mut auth = Authenticator::new(config, users());
    for i in 0..500u32 {
        let name = format!("{i}{}", "n".repeat(4000));
        fail_once(
            &mut auth,
            t(1),
            &name,
            IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)),
        );
        assert!(auth.lockout.tracked_users() <= 50);
    }
}

use switchboard_testkit::Rng;

/// Characters a parameter name may hold: anything but `=`, `,` and white space.
const NAME_CHARS: &[char] = &[
    'a', 'Z', 'n', 'c', 'e', '-', '_', '9', '.', '"', '\\', 'É', '€',
];
/// Value characters, including those that need quoting or escaping.
const VALUE_CHARS: &[char] = &[
    'a', 'Z', '0', ' ', '\t', ',', '=', '"', '\\', ';', ':', '@', 'é', '😀', '\'',
];
const SPACE: &[&str] = &["", " ", "\t", "  ", " \t "];

#[test]
fn digest_credentials_with_any_quoting_case_and_spacing_parse_back_to_their_values() {
    let mut rng = Rng(0xD16E_5700);
    for case in 0..3000 {
        let mut params: Vec<(String, String)> = Vec::new();
        for _ in 0..1 + rng.index(6) {
            let mut name = rng.text(NAME_CHARS, 8);
            name.insert(0, rng.pick(&['u', 'R', 'x']));
            if params.iter().any(|(n, _)| n.eq_ignore_ascii_case(&name)) {
                continue;
            }
            params.push((name, rng.text(VALUE_CHARS, 12)));
        }
        let mut header = format!(
            "{}{}{}",
            rng.pick(SPACE),
            rng.pick(&["Digest", "digest", "DIGEST"]),
            rng.pick(&[" ", "\t", "  "])
        );
        for (index, (name, value)) in params.iter().enumerate() {
            if index > 0 {
                header.push_str(rng.pick(SPACE));
                header.push(',');
            }
            header.push_str(rng.pick(SPACE));
            header.push_str(name);
            header.push_str(rng.pick(SPACE));
            header.push('=');
            header.push_str(rng.pick(SPACE));
            let bare = !value.is_empty()
                && !value.starts_with('"')
                && !value.contains(|c: char| c == ',' || c.is_ascii_whitespace());
            if bare && rng.index(2) == 0 {
                header.push_str(value);
            } else {
                header.push('"');
                for c in value.chars() {
                    // Escaping any character is allowed; `"` and `\` must be.
                    if c == '"' || c == '\\' || rng.index(8) == 0 {
                        header.push('\\');
                    }
                    header.push(c);
                }
                header.push('"');
            }
            header.push_str(rng.pick(SPACE));
        }
        let parsed = Credentials::parse(&header)
            .unwrap_or_else(|e| panic!("case {case}: {header:?} does not parse: {e:?}"));
        for (name, value) in &params {
            assert_eq!(
                parsed.get(&name.to_ascii_uppercase()),
                Some(value.as_str()),
                "case {case}: {name} in {header:?}"
            );
        }
    }
}

#[test]
fn digest_credentials_parser_never_panics_on_mangled_headers() {
    const NOISE: &[char] = &[
        '"', '\\', ',', '=', ' ', '\t', '\r', '\n', 'a', 'é', '😀', '\0', 'D',
    ];
    let mut rng = Rng(0xBAD_C0DE);
    let seed = r#"Digest username="alice", realm="switchboard.test", nonce="n\"x", uri="sip:a", response="00", qop=auth, nc=00000001, cnonce="c""#;
    for _ in 0..20_000 {
        let mut chars: Vec<char> = seed.chars().collect();
        for _ in 0..1 + rng.index(6) {
            let at = rng.index(chars.len() + 1);
            match rng.index(3) {
                0 => chars.insert(at, rng.pick(NOISE)),
                1 if at < chars.len() => {
                    chars.remove(at);
                }
                _ => chars.truncate(at),
            }
        }
        let header: String = chars.into_iter().collect();
        if let Ok(parsed) = Credentials::parse(&header) {
            // Whatever parsed answers lookups by any spelling of a name.
            assert_eq!(parsed.get("USERNAME"), parsed.get("username"));
        }
        let noise = rng.text(NOISE, 24);
        let _ = Credentials::parse(&noise);
    }
}
