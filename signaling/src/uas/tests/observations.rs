//! What the core reports for metrics and the event bus: call attempts and
//! their final status, REGISTER answers, binding changes, authentication
//! failures and lockouts, each latency counted from the arrival it was given.

use super::*;
use crate::events::Event;

pub(super) fn observations(uas: &mut Uas) -> Vec<Observation> {
    std::iter::from_fn(|| uas.poll_observation()).collect()
}

fn udp(text: &str) -> Inbound {
    Inbound {
        flow: Flow::Udp {
            remote: SOURCE.parse().expect("address"),
        },
        bytes: text.as_bytes().to_vec(),
    }
}

fn invite(branch: &str) -> Inbound {
    udp(&format!(
        "INVITE sip:bob@example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK{branch}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@example.com>;tag=1\r\n\
         To: <sip:bob@example.com>\r\n\
         Call-ID: {branch}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:alice@192.0.2.10:5062>\r\n\
         Content-Length: 0\r\n\r\n"
    ))
}

#[test]
fn bindings_report_added_refreshed_removed_and_expired_in_order() {
    let store = MemoryStore::default();
    let mut uas = core(&store, 100);
    let now = Now::current();
    let contact = "sip:alice@192.0.2.10:5062";
    let arrived = now.instant - Duration::from_millis(7);
    uas.handle_received(now, register("a", "c1", 1, contact), arrived);
    commit(&mut uas, now);
    assert_eq!(
        observations(&mut uas),
        vec![
            Observation::Registration(Event::RegistrationAdded {
                aor: "alice@example.com".to_owned(),
                contact: contact.to_owned(),
                expires_in_secs: 600,
            }),
            Observation::RegisterAnswered {
                status: 200,
                received: arrived,
            },
        ]
    );
    assert_eq!(
        uas.gauges(),
        CoreGauges {
            transactions: 1,
            bindings: 1,
            aors: 1
        }
    );

    uas.handle_inbound(now, register("b", "c1", 2, contact));
    commit(&mut uas, now);
    let seen = observations(&mut uas);
    assert!(
        matches!(&seen[0], Observation::Registration(Event::RegistrationRefreshed { contact: c, .. }) if c == contact),
        "{seen:?}"
    );

    // A binding left to expire is reported when purged.
    let other = "sip:alice@192.0.2.11:5062";
    uas.handle_inbound(now, register("c", "c2", 1, other));
    commit(&mut uas, now);
    let _ = observations(&mut uas);
    let (aor, removed) = uas
        .unregister(now, "alice@example.com")
        .expect("unregistered");
    assert_eq!((aor.as_str(), removed), ("alice@example.com", 2));
    let removed: Vec<Observation> = observations(&mut uas);
    assert_eq!(removed.len(), 2, "{removed:?}");
    assert!(removed.iter().all(|o| matches!(
        o,
        Observation::Registration(Event::RegistrationRemoved { .. })
    )));

    uas.handle_inbound(now, register("d", "c3", 1, contact));
    commit(&mut uas, now);
    let _ = observations(&mut uas);
    uas.handle_timeout(now.advanced(Duration::from_secs(601)));
    assert_eq!(
        observations(&mut uas),
        vec![Observation::Registration(Event::RegistrationExpired {
            aor: "alice@example.com".to_owned(),
            contact: contact.to_owned(),
        })]
    );
    assert_eq!(uas.gauges().bindings, 0);
}

#[test]
fn a_call_attempt_is_reported_once_with_its_final_status_and_arrival() {
    let store = MemoryStore::default();
    let mut uas = core(&store, 100);
    let now = Now::current();
    let arrived = now.instant - Duration::from_millis(3);
    // Without a call handler the core answers 480 itself.
    uas.handle_received(now, invite("call1"), arrived);
    let _ = sent(&mut uas);
    assert_eq!(
        observations(&mut uas),
        vec![
            Observation::CallStarted,
            Observation::InviteAnswered {
                status: 480,
                received: arrived,
            },
        ]
    );
    // A retransmission is absorbed by its transaction: no second call.
    uas.handle_inbound(now, invite("call1"));
    assert_eq!(observations(&mut uas), vec![]);
}

#[test]
fn wrong_credentials_are_failures_and_enough_of_them_a_lockout() {
    let store = MemoryStore::default();
    let mut config = AuthConfig::digest("test", vec![7; 32]);
    config.lockout.max_failures = 2;
    let users = Users::parse(
        std::path::Path::new("users.toml"),
        "[[user]]\nname = \"alice\"\npassword = \"secret\"\n",
        "test",
    )
    .expect("users");
    let mut uas = Uas::new(
        test_config(),
        Registrar::new(RegistrarConfig::default()),
        Authenticator::new(config, users),
        Box::new(store),
    );
    let now = Now::current();
    for attempt in 1..=3 {
        // A challenge first: not a failure.
        uas.handle_inbound(
            now,
            register(&format!("n{attempt}"), "c", attempt, "sip:a@192.0.2.10"),
        );
        let challenge = sent(&mut uas).pop().expect("an answer").1;
        let nonce = challenge
            .split("nonce=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default()
            .to_owned();
        let text = String::from_utf8(
            register(&format!("w{attempt}"), "c", attempt + 10, "sip:a@192.0.2.10").bytes,
        )
        .expect("text")
        .replace(
            "Expires: 600\r\n",
            &format!(
                "Expires: 600\r\nAuthorization: Digest username=\"alice\", realm=\"test\", nonce=\"{nonce}\", uri=\"sip:example.com\", response=\"00000000000000000000000000000000\", qop=auth, nc=00000001, cnonce=\"x\", algorithm=MD5\r\n"
            ),
        );
        uas.handle_inbound(now, udp(&text));
        let _ = sent(&mut uas);
    }
    let seen = observations(&mut uas);
    let failures: Vec<&Observation> = seen
        .iter()
        .filter(|o| matches!(o, Observation::AuthFailed { .. }))
        .collect();
    assert_eq!(
        failures,
        vec![
            &Observation::AuthFailed { reason: "rejected" },
            &Observation::AuthFailed { reason: "rejected" },
            // The third REGISTER without credentials meets the lockout.
            &Observation::AuthFailed {
                reason: "locked_out"
            },
            &Observation::AuthFailed {
                reason: "locked_out"
            },
        ],
        "{seen:?}"
    );
    assert_eq!(
        seen.iter()
            .filter(|o| **o == Observation::LockedOut)
            .count(),
        1
    );
}
