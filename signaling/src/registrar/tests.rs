//! Registrar rules (§10.3), lookup, expiry and the durable store.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn source() -> Source {
    Source {
        transport: Transport::Udp,
        addr: "203.0.113.7:40312".parse().expect("test address parses"),
    }
}

fn config() -> RegistrarConfig {
    RegistrarConfig {
        default_expires: 3600,
        min_expires: 60,
        max_expires: 7200,
        domains: vec!["example.com".to_string()],
        default_domain: Some("example.com".to_string()),
        max_contacts: 5,
        node: None,
    }
}

fn register(
    contacts: Vec<ContactInput>,
    expires: Option<u32>,
    call_id: &str,
    cseq: u32,
) -> RegisterRequest {
    RegisterRequest {
        aor: "sip:alice@Example.COM".to_string(),
        contacts,
        expires,
        call_id: call_id.to_string(),
        cseq,
        path: Vec::new(),
        source: source(),
        user_agent: None,
    }
}

/// A REGISTER of `user` (not alice) binding `uri` for 600 s, CSeq 1.
fn register_user(user: &str, uri: &str, call_id: &str) -> RegisterRequest {
    RegisterRequest {
        aor: user.to_string(),
        ..register(vec![contact(uri, Some(600))], None, call_id, 1)
    }
}

/// Each user's first contact, as the registrar looks it up at `at`.
fn first_contacts(registrar: &Registrar, at: u64, users: &[&str]) -> Vec<String> {
    users
        .iter()
        .map(|user| registrar.lookup(t(at), user)[0].contact.clone())
        .collect::<Vec<_>>()
}

fn contact(uri: &str, expires: Option<u32>) -> ContactInput {
    ContactInput {
        expires,
        ..ContactInput::uri(uri)
    }
}

fn ok(decision: Decision) -> Registered {
    match decision {
        Decision::Ok(registered) => registered,
        other => panic!("expected 200, got {other:?}"),
    }
}

/// alice's REGISTER at `at` of `contacts` (URI and expiry), answered 200.
fn bind(
    registrar: &mut Registrar,
    at: u64,
    contacts: &[(&str, u32)],
    call_id: &str,
    cseq: u32,
) -> Registered {
    let contacts = contacts
        .iter()
        .map(|(uri, expires)| contact(uri, Some(*expires)))
        .collect();
    ok(registrar.handle_register(t(at), &register(contacts, None, call_id, cseq)))
}

/// The contacts a 200 lists with their expiries, sorted: the registrar
/// promises no order among them.
fn listed(registered: &Registered) -> Vec<(String, u32)> {
    let mut listed: Vec<_> = registered
        .contacts
        .iter()
        .map(|c| (c.uri.clone(), c.expires))
        .collect();
    listed.sort();
    listed
}

#[test]
fn aor_normalisation() {
    let cases = [
        ("sip:alice@Example.COM", "alice@example.com"),
        (
            "<sips:alice@example.com:5061;transport=tls>",
            "alice@example.com",
        ),
        ("alice@EXAMPLE.com", "alice@example.com"),
        ("alice", "alice@example.com"),
        ("sip:Alice@[2001:db8::1]:5060", "Alice@[2001:db8::1]"),
    ];
    for (input, expected) in cases {
        assert_eq!(
            Aor::parse(input, Some("example.com")).map(|a| a.as_str().to_string()),
            Ok(expected.to_string()),
            "{input}"
        );
    }
    assert_eq!(
        Aor::parse("alice", None),
        Err(RegistrarError::InvalidAor("alice".to_string()))
    );
}

#[test]
fn q_values_parse_and_print() {
    assert_eq!(Q::parse("0.5").map(Q::thousandths), Ok(500));
    assert_eq!(Q::parse("1").map(Q::thousandths), Ok(1000));
    assert_eq!(Q::parse("0.125").map(Q::thousandths), Ok(125));
    assert_eq!(Q::parse("1.000").map(Q::thousandths), Ok(1000));
    assert_eq!(
        Q::parse("1.5"),
        Err(RegistrarError::InvalidQ("1.5".to_string()))
    );
    assert_eq!(
        Q::parse("0.1234"),
        Err(RegistrarError::InvalidQ("0.1234".to_string()))
    );
    assert_eq!(Q(500).to_string(), "0.5");
    assert_eq!(Q(1000).to_string(), "1");
    assert_eq!(Q(0).to_string(), "0");
}

#[test]
fn expiry_precedence_param_then_header_then_default_and_max_cap() {
    let mut registrar = Registrar::new(config());
    let registered = ok(registrar.handle_register(
        t(0),
        &register(
            vec![
                contact("sip:a@192.0.2.1", Some(120)),
                contact("sip:b@192.0.2.2", None),
                contact("sip:c@192.0.2.3", Some(100_000)),
            ],
            Some(300),
            "call-1",
            1,
        ),
    ));
    assert_eq!(
        listed(&registered),
        vec![
            ("sip:a@192.0.2.1".to_string(), 120),
            ("sip:b@192.0.2.2".to_string(), 300),
            ("sip:c@192.0.2.3".to_string(), 7200),
        ]
    );
    let persist = registered.persist.expect("a change must be persisted");
    assert_eq!(persist.record.aor.as_str(), "alice@example.com");
    assert_eq!(persist.record.bindings.len(), 3);

    let registered = ok(registrar.handle_register(
        t(0),
        &RegisterRequest {
            aor: "sip:bob@example.com".to_string(),
            ..register(vec![contact("sip:bob@192.0.2.9", None)], None, "call-2", 1)
        },
    ));
    assert_eq!(
        listed(&registered),
        vec![("sip:bob@192.0.2.9".to_string(), 3600)]
    );
}

#[test]
fn too_brief_expiry_is_423_and_changes_nothing() {
    let mut registrar = Registrar::new(config());
    let decision = registrar.handle_register(
        t(0),
        &register(
            vec![
                contact("sip:a@192.0.2.1", Some(3600)),
                contact("sip:b@192.0.2.2", Some(59)),
            ],
            None,
            "call-1",
            1,
        ),
    );
    assert_eq!(decision, Decision::IntervalTooBrief { min_expires: 60 });
    assert_eq!(decision.status(), 423);
    assert!(registrar.is_empty(), "a 423 commits no binding at all");
    // Zero is not "too brief": it removes.
    let registered = ok(registrar.handle_register(
        t(0),
        &register(vec![contact("sip:a@192.0.2.1", Some(0))], None, "call-1", 2),
    ));
    assert_eq!(registered.contacts, vec![]);
    assert_eq!(registered.persist, None, "nothing changed");
}

#[test]
fn refresh_remove_and_query() {
    let mut registrar = Registrar::new(config());
    ok(registrar.handle_register(
        t(0),
        &register(
            vec![
                contact("sip:a@192.0.2.1", None),
                contact("sip:b@192.0.2.2", None),
            ],
            Some(600),
            "call-1",
            1,
        ),
    ));
    // Refresh a with a higher CSeq, remove b.
    let registered = ok(registrar.handle_register(
        t(100),
        &register(
            vec![
                contact("SIP:a@192.0.2.1", Some(900)),
                contact("sip:b@192.0.2.2", Some(0)),
            ],
            None,
            "call-1",
            2,
        ),
    ));
    assert_eq!(
        listed(&registered),
        vec![("SIP:a@192.0.2.1".to_string(), 900)],
        "the scheme compares case-insensitively; the latest spelling is kept"
    );
    // A query lists the bindings without changing them.
    let registered = ok(registrar.handle_register(t(200), &register(vec![], None, "call-9", 1)));
    assert_eq!(
        listed(&registered),
        vec![("SIP:a@192.0.2.1".to_string(), 800)]
    );
    assert_eq!(registered.persist, None);
}

/// §19.1.4, approximated: a Contact names the same binding when its host
/// differs only in case; its user part and parameters compare exactly.
#[test]
fn a_contacts_host_compares_case_insensitively_its_user_and_parameters_exactly() {
    let mut registrar = Registrar::new(config());
    bind(
        &mut registrar,
        0,
        &[("sip:a@Host.Example;transport=udp", 600)],
        "call-1",
        1,
    );
    let registered = bind(
        &mut registrar,
        10,
        &[
            ("<sip:a@host.EXAMPLE;transport=udp>", 700),
            ("sip:A@host.example;transport=udp", 800),
            ("sip:a@host.example;transport=UDP", 900),
        ],
        "call-1",
        2,
    );
    assert_eq!(
        listed(&registered),
        vec![
            ("<sip:a@host.EXAMPLE;transport=udp>".to_string(), 700),
            ("sip:A@host.example;transport=udp".to_string(), 800),
            ("sip:a@host.example;transport=UDP".to_string(), 900),
        ],
        "the host's case refreshes the first binding; the user's and a parameter's make new ones"
    );
}

#[test]
fn same_call_id_with_lower_or_equal_cseq_is_500_other_call_id_replaces() {
    let mut registrar = Registrar::new(config());
    ok(registrar.handle_register(
        t(0),
        &register(vec![contact("sip:a@192.0.2.1", None)], None, "call-1", 5),
    ));
    for cseq in [5, 4] {
        assert_eq!(
            registrar.handle_register(
                t(1),
                &register(
                    vec![contact("sip:a@192.0.2.1", Some(120))],
                    None,
                    "call-1",
                    cseq
                ),
            ),
            Decision::ServerError {
                reason: "Out of order CSeq"
            },
            "CSeq {cseq}"
        );
    }
    // Another Call-ID (the UA rebooted) updates whatever its CSeq.
    let registered = ok(registrar.handle_register(
        t(2),
        &register(
            vec![contact("sip:a@192.0.2.1", Some(120))],
            None,
            "call-2",
            1,
        ),
    ));
    assert_eq!(
        listed(&registered),
        vec![("sip:a@192.0.2.1".to_string(), 120)]
    );
}

#[test]
fn wildcard_rules() {
    let mut registrar = Registrar::new(config());
    ok(registrar.handle_register(
        t(0),
        &register(
            vec![
                contact("sip:a@192.0.2.1", None),
                contact("sip:b@192.0.2.2", None),
            ],
            None,
            "call-1",
            1,
        ),
    ));
    let bad = Decision::BadRequest {
        reason: "Invalid wildcard Contact",
    };
    assert_eq!(
        registrar.handle_register(
            t(1),
            &register(vec![contact("*", None)], Some(60), "call-1", 2)
        ),
        bad
    );
    assert_eq!(
        registrar.handle_register(t(1), &register(vec![contact("*", None)], None, "call-1", 2)),
        bad
    );
    assert_eq!(
        registrar.handle_register(
            t(1),
            &register(
                vec![contact("*", None), contact("sip:c@192.0.2.3", None)],
                Some(0),
                "call-1",
                2
            )
        ),
        bad
    );
    assert_eq!(
        registrar.handle_register(
            t(1),
            &register(vec![contact("*", None)], Some(0), "call-1", 1)
        ),
        Decision::ServerError {
            reason: "Out of order CSeq"
        }
    );
    let registered = ok(registrar.handle_register(
        t(1),
        &register(vec![contact("*", None)], Some(0), "call-1", 2),
    ));
    assert_eq!(registered.contacts, vec![]);
    assert_eq!(
        registered.persist.map(|p| p.record.bindings.len()),
        Some(0),
        "removing everything is persisted as an empty set"
    );
    assert!(registrar.is_empty());
}

#[test]
fn unknown_domain_is_404_and_bad_aor_is_400() {
    let mut registrar = Registrar::new(config());
    let request = RegisterRequest {
        aor: "sip:alice@elsewhere.net".to_string(),
        ..register(vec![contact("sip:a@192.0.2.1", None)], None, "c", 1)
    };
    assert_eq!(
        registrar.handle_register(t(0), &request),
        Decision::NotFound
    );
    let request = RegisterRequest {
        aor: "sip:@example.com".to_string(),
        ..request
    };
    assert_eq!(registrar.handle_register(t(0), &request).status(), 400);
}

#[test]
fn lookup_by_user_or_aor_sorted_by_q_then_recency() {
    let mut registrar = Registrar::new(config());
    let with_q = |uri: &str, q: &str| ContactInput {
        q: Some(Q::parse(q).expect("valid q")),
        ..ContactInput::uri(uri)
    };
    ok(registrar.handle_register(
        t(0),
        &register(
            vec![
                with_q("sip:low@192.0.2.1", "0.1"),
                ContactInput::uri("sip:none@192.0.2.2"),
                with_q("sip:mid@192.0.2.3", "0.5"),
            ],
            None,
            "call-1",
            1,
        ),
    ));
    ok(registrar.handle_register(
        t(10),
        &register(vec![with_q("sip:full@192.0.2.4", "1.0")], None, "call-2", 1),
    ));
    let expected = vec![
        "sip:full@192.0.2.4".to_string(),
        "sip:none@192.0.2.2".to_string(),
        "sip:mid@192.0.2.3".to_string(),
        "sip:low@192.0.2.1".to_string(),
    ];
    for target in ["alice", "alice@example.com", "sip:alice@EXAMPLE.com"] {
        let got: Vec<String> = registrar
            .lookup(t(20), target)
            .iter()
            .map(|b| b.contact.clone())
            .collect();
        assert_eq!(got, expected, "lookup of {target}");
    }
    assert_eq!(registrar.lookup(t(20), "bob").len(), 0);
    let first = registrar.lookup(t(20), "alice")[0];
    assert_eq!(
        first.source,
        source(),
        "the NAT source is kept with the binding"
    );
}

#[test]
fn instance_reg_id_and_path_are_kept_and_identify_the_flow() {
    let mut registrar = Registrar::new(config());
    let flow = |uri: &str| ContactInput {
        instance: Some("\"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>\"".to_string()),
        reg_id: Some(1),
        ..ContactInput::uri(uri)
    };
    let mut request = register(vec![flow("sip:alice@192.0.2.1:5060")], None, "call-1", 1);
    request.path = vec!["<sip:edge.example.com;lr;ob>".to_string()];
    let registered = ok(registrar.handle_register(t(0), &request));
    assert_eq!(
        registered.path,
        vec!["<sip:edge.example.com;lr;ob>".to_string()]
    );
    assert_eq!(registered.contacts[0].reg_id, Some(1));
    // The same instance and reg-id from a new address replaces the flow.
    let mut moved = register(vec![flow("sip:alice@198.51.100.4:6000")], None, "call-1", 2);
    moved.path = request.path.clone();
    let registered = ok(registrar.handle_register(t(5), &moved));
    assert_eq!(
        listed(&registered),
        vec![("sip:alice@198.51.100.4:6000".to_string(), 3600)]
    );
    let binding = registrar.lookup(t(5), "alice")[0];
    assert_eq!(
        binding.instance.as_deref(),
        Some("\"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>\"")
    );
    assert_eq!(
        binding.path,
        vec!["<sip:edge.example.com;lr;ob>".to_string()]
    );
    // Two flows in one REGISTER are refused.
    assert_eq!(
        registrar.handle_register(
            t(6),
            &register(
                vec![flow("sip:a@192.0.2.1"), contact("sip:b@192.0.2.2", None)],
                None,
                "call-1",
                3
            )
        ),
        Decision::BadRequest {
            reason: "Multiple Contacts with reg-id"
        }
    );
}

#[test]
fn expiry_purge_follows_poll_timeout() {
    let mut registrar = Registrar::new(config());
    ok(registrar.handle_register(
        t(0),
        &register(
            vec![
                contact("sip:a@192.0.2.1", Some(60)),
                contact("sip:b@192.0.2.2", Some(120)),
            ],
            None,
            "call-1",
            1,
        ),
    ));
    assert_eq!(registrar.poll_timeout(), Some(t(60)));
    registrar.handle_timeout(t(59));
    assert_eq!(registrar.lookup(t(59), "alice").len(), 2);
    registrar.handle_timeout(t(60));
    let left: Vec<String> = registrar
        .lookup(t(60), "alice")
        .iter()
        .map(|b| b.contact.clone())
        .collect();
    assert_eq!(left, vec!["sip:b@192.0.2.2".to_string()]);
    assert_eq!(registrar.poll_timeout(), Some(t(120)));
    registrar.handle_timeout(t(120));
    assert!(registrar.is_empty());
    assert_eq!(registrar.poll_timeout(), None);
}

/// Bindings of one address-of-record that expire at the same instant go
/// together; a refresh moves one binding's expiry and leaves the other's;
/// the count of bindings follows every change.
#[test]
fn bindings_expiring_together_purge_together_and_a_refreshed_one_stays() {
    let mut registrar = Registrar::new(config());
    let registered = bind(
        &mut registrar,
        0,
        &[
            ("sip:a@192.0.2.1", 60),
            ("sip:b@192.0.2.2", 60),
            ("sip:c@192.0.2.3", 60),
        ],
        "call-1",
        1,
    );
    assert_eq!(listed(&registered).len(), 3);
    assert_eq!(registrar.bindings_len(), 3);
    // b is refreshed at 30 s for another 120 s.
    bind(&mut registrar, 30, &[("sip:b@192.0.2.2", 120)], "call-1", 2);
    assert_eq!(registrar.bindings_len(), 3);
    assert_eq!(registrar.poll_timeout(), Some(t(60)));
    let mut purged: Vec<String> = registrar
        .handle_timeout(t(60))
        .into_iter()
        .map(|(aor, binding)| format!("{} {}", aor.as_str(), binding.contact))
        .collect();
    purged.sort();
    assert_eq!(
        purged,
        vec![
            "alice@example.com sip:a@192.0.2.1".to_string(),
            "alice@example.com sip:c@192.0.2.3".to_string(),
        ]
    );
    assert_eq!(registrar.bindings_len(), 1);
    assert_eq!(registrar.poll_timeout(), Some(t(150)));
    assert!(registrar.handle_timeout(t(149)).is_empty());
    assert_eq!(registrar.handle_timeout(t(150)).len(), 1);
    assert_eq!(registrar.bindings_len(), 0);
    assert!(registrar.is_empty());
    assert_eq!(registrar.poll_timeout(), None);
}

#[test]
fn revert_undoes_an_unpersisted_change() {
    let mut registrar = Registrar::new(config());
    ok(registrar.handle_register(
        t(0),
        &register(vec![contact("sip:a@192.0.2.1", None)], None, "c", 1),
    ));
    let registered = ok(registrar.handle_register(
        t(1),
        &register(vec![contact("sip:b@192.0.2.2", None)], None, "c", 2),
    ));
    registrar.revert(registered.persist.expect("changed"));
    let left: Vec<String> = registrar
        .lookup(t(1), "alice")
        .iter()
        .map(|b| b.contact.clone())
        .collect();
    assert_eq!(left, vec!["sip:a@192.0.2.1".to_string()]);
    assert_eq!(registrar.poll_timeout(), Some(t(3600)));
}

// ---- store ----

fn persist_all(store: &mut Store, decision: Decision) {
    if let Some(persist) = ok(decision).persist {
        store.append(&persist.record).expect("append succeeds");
    }
}

#[test]
fn bindings_survive_restart_and_a_torn_last_line_is_skipped() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let (mut store, records) = Store::open(dir.path()).expect("store opens");
        assert_eq!(records, vec![]);
        let mut registrar = Registrar::new(config());
        persist_all(
            &mut store,
            registrar.handle_register(
                t(0),
                &register(vec![contact("sip:a@192.0.2.1", Some(600))], None, "c", 1),
            ),
        );
        persist_all(
            &mut store,
            registrar.handle_register(
                t(1),
                &register(vec![contact("sip:b@192.0.2.2", Some(60))], None, "c", 2),
            ),
        );
        assert_eq!(store.journal_records(), 2);
    }
    // A crash in the middle of a third append.
    let journal = dir.path().join("journal.0.jsonl");
    let mut bytes = std::fs::read(&journal).expect("journal readable");
    bytes.extend_from_slice(b"{\"aor\":\"alice@example.com\",\"bind");
    std::fs::write(&journal, &bytes).expect("journal writable");

    let (mut store, records) = Store::open(dir.path()).expect("store reopens");
    assert_eq!(records.len(), 2, "two acknowledged records replayed");
    let mut registrar = Registrar::from_records(config(), records, t(100));
    let left: Vec<String> = registrar
        .lookup(t(100), "alice")
        .iter()
        .map(|b| b.contact.clone())
        .collect();
    assert_eq!(
        left,
        vec!["sip:a@192.0.2.1".to_string()],
        "b expired at t=61 and was dropped on load"
    );
    assert_eq!(registrar.lookup(t(100), "alice")[0].expires_at, t(600));
    // The torn tail was cut: the next record lands on a clean line.
    persist_all(
        &mut store,
        registrar.handle_register(
            t(101),
            &register(vec![contact("sip:c@192.0.2.3", Some(600))], None, "c", 3),
        ),
    );
    drop(store);
    let (_, records) = Store::open(dir.path()).expect("store reopens");
    assert_eq!(records.len(), 3);
    let registrar = Registrar::from_records(config(), records, t(102));
    assert_eq!(registrar.lookup(t(102), "alice").len(), 2);
}

/// Records overwrite the zeros a journal starts with, so a sync does not
/// grow the file (no size for ext4 to commit); the first NUL ends the
/// records at a restart, a torn sync among the zeros included.
#[test]
fn records_overwrite_the_journals_zeros_and_a_restart_reads_up_to_the_first_nul() {
    let dir = tempfile::tempdir().expect("temp dir");
    let journal = dir.path().join("journal.0.jsonl");
    let (mut store, _) = Store::open(dir.path()).expect("store opens");
    let mut registrar = Registrar::new(config());
    for (user, at) in [("alice", 1u64), ("bob", 2)] {
        persist_all(
            &mut store,
            registrar.handle_register(
                t(at),
                &register_user(user, &format!("sip:{user}@192.0.2.1"), "c"),
            ),
        );
    }
    let bytes = std::fs::read(&journal).expect("journal readable");
    assert_eq!(
        bytes.len() as u64,
        store::MIN_PREALLOCATION,
        "the syncs wrote over the zeros"
    );
    let records_end = bytes.iter().position(|&b| b == 0).expect("zeros follow");
    assert_eq!(
        bytes[..records_end].iter().filter(|&&b| b == b'\n').count(),
        2,
        "one line per record"
    );
    assert!(bytes[records_end..].iter().all(|&b| b == 0));
    drop(store);
    // A crash in a third sync: half its line reached the disk.
    let torn = b"{\"aor\":\"carol@example.com\",\"bind";
    let mut crashed = bytes.clone();
    crashed[records_end..records_end + torn.len()].copy_from_slice(torn);
    std::fs::write(&journal, &crashed).expect("journal writable");

    let (mut store, records) = Store::open(dir.path()).expect("store reopens");
    assert_eq!(records.len(), 2, "the two synced records, not the torn one");
    let mut registrar = Registrar::from_records(config(), records, t(3));
    persist_all(
        &mut store,
        registrar.handle_register(t(4), &register_user("dave", "sip:dave@192.0.2.1", "d")),
    );
    drop(store);
    // The restart took up the journal made ahead, and wrote over its zeros.
    let bytes = std::fs::read(dir.path().join("journal.1.jsonl")).expect("journal 1 readable");
    assert_eq!(bytes.len() as u64, store::MIN_PREALLOCATION);
    assert!(
        bytes.starts_with(b"{\"aor\":\"dave"),
        "dave's record comes first"
    );
    let (_, records) = Store::open(dir.path()).expect("store reopens");
    let registrar = Registrar::from_records(config(), records, t(5));
    assert_eq!(
        first_contacts(&registrar, 5, &["alice", "bob", "dave"]),
        [
            "sip:alice@192.0.2.1",
            "sip:bob@192.0.2.1",
            "sip:dave@192.0.2.1"
        ]
    );
    assert!(registrar.lookup(t(5), "carol").is_empty());
}

#[test]
fn compaction_writes_a_snapshot_and_starts_a_new_journal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut store, _) = Store::open(dir.path()).expect("store opens");
    let mut registrar = Registrar::new(config());
    for cseq in 1..=3 {
        persist_all(
            &mut store,
            registrar.handle_register(
                t(cseq.into()),
                &register(vec![contact("sip:a@192.0.2.1", Some(600))], None, "c", cseq),
            ),
        );
    }
    store
        .compact(registrar.records())
        .expect("the journal switches");
    store.wait_compaction().expect("the snapshot is written");
    assert_eq!(store.journal_records(), 0);
    assert!(
        !dir.path().join("journal.0.jsonl").exists(),
        "old journal removed"
    );
    assert!(dir.path().join("journal.1.jsonl").exists());
    persist_all(
        &mut store,
        registrar.handle_register(t(10), &register_user("bob", "sip:b@192.0.2.2", "d")),
    );
    drop(store);
    // A leftover from an interrupted compaction is ignored and removed.
    std::fs::write(dir.path().join("journal.0.jsonl"), b"garbage\n").expect("writable");
    std::fs::write(dir.path().join("snapshot.json.tmp"), b"{").expect("writable");
    let (_, records) = Store::open(dir.path()).expect("store reopens");
    let registrar = Registrar::from_records(config(), records, t(20));
    assert_eq!(registrar.lookup(t(20), "alice")[0].expires_at, t(603));
    assert_eq!(registrar.lookup(t(20), "bob")[0].contact, "sip:b@192.0.2.2");
    assert!(!dir.path().join("journal.0.jsonl").exists());
    assert!(!dir.path().join("snapshot.json.tmp").exists());
}

/// The journal a compaction switches to is made ahead (at open, then by
/// each compaction's thread for the next), so the switch on the core's
/// thread does no fsync; an empty later journal left by a crash is
/// replayed like any other and taken up for appends.
#[test]
fn the_next_journal_is_made_ahead_of_its_switch_and_a_restart_takes_it_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let journal = |g: u64| dir.path().join(format!("journal.{g}.jsonl"));
    let zeros_only = |g: u64| {
        std::fs::read(journal(g))
            .ok()
            .map(|bytes| (bytes.len() as u64, bytes.iter().all(|&b| b == 0)))
    };
    let (mut store, _) = Store::open(dir.path()).expect("store opens");
    assert_eq!(
        zeros_only(1),
        Some((store::MIN_PREALLOCATION, true)),
        "the first switch's journal is ready at open, zeros only"
    );
    let mut registrar = Registrar::new(config());
    persist_all(
        &mut store,
        registrar.handle_register(
            t(1),
            &register(vec![contact("sip:a@192.0.2.1", Some(600))], None, "c", 1),
        ),
    );
    store
        .compact(registrar.records())
        .expect("the journal switches");
    store.wait_compaction().expect("the snapshot is written");
    assert_eq!(
        zeros_only(2),
        Some((store::MIN_PREALLOCATION, true)),
        "the compaction's thread made the next switch's journal"
    );
    persist_all(
        &mut store,
        registrar.handle_register(t(2), &register_user("bob", "sip:b@192.0.2.2", "d")),
    );
    drop(store);
    let (mut store, records) = Store::open(dir.path()).expect("store reopens");
    let mut registrar = Registrar::from_records(config(), records, t(3));
    assert_eq!(registrar.lookup(t(3), "bob")[0].contact, "sip:b@192.0.2.2");
    // Appends now go to the made-ahead journal 2, and survive a restart.
    persist_all(
        &mut store,
        registrar.handle_register(t(4), &register_user("carol", "sip:c@192.0.2.3", "e")),
    );
    assert_eq!(zeros_only(2).map(|(_, zeros)| zeros), Some(false));
    drop(store);
    let (_, records) = Store::open(dir.path()).expect("store reopens");
    let registrar = Registrar::from_records(config(), records, t(5));
    assert_eq!(
        first_contacts(&registrar, 5, &["alice", "bob", "carol"]),
        ["sip:a@192.0.2.1", "sip:b@192.0.2.2", "sip:c@192.0.2.3"]
    );
}

/// A crash after the journal switched and before the snapshot was
/// renamed: the old snapshot, its journal and the new journal together
/// hold every binding; the next compaction goes on from there.
#[test]
fn records_after_a_journal_switch_survive_a_crash_before_its_snapshot() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut store, _) = Store::open(dir.path()).expect("store opens");
    let mut registrar = Registrar::new(config());
    persist_all(
        &mut store,
        registrar.handle_register(
            t(1),
            &register(vec![contact("sip:a@192.0.2.1", Some(600))], None, "c", 1),
        ),
    );
    drop(store);
    // What a switch leaves before its snapshot: journal 0 complete,
    // journal 1 with a later record, no snapshot 1 (a half-written one).
    let later = ok(Registrar::new(config())
        .handle_register(t(2), &register_user("bob", "sip:b@192.0.2.2", "d")))
    .persist
    .expect("a new binding is persisted")
    .record;
    let mut line = serde_json::to_vec(&later).expect("serialises");
    line.push(b'\n');
    std::fs::write(dir.path().join("journal.1.jsonl"), line).expect("writable");
    std::fs::write(dir.path().join("snapshot.json.tmp"), b"{\"gener").expect("writable");

    let (mut store, records) = Store::open(dir.path()).expect("store reopens");
    let registrar = Registrar::from_records(config(), records, t(3));
    assert_eq!(
        first_contacts(&registrar, 3, &["alice", "bob"]),
        ["sip:a@192.0.2.1", "sip:b@192.0.2.2"]
    );
    assert!(
        dir.path().join("journal.0.jsonl").exists(),
        "not covered by a snapshot yet"
    );
    assert!(!dir.path().join("snapshot.json.tmp").exists());
    // New records go to the newest journal; compaction then covers all.
    store
        .compact(registrar.records())
        .expect("the journal switches");
    store.wait_compaction().expect("the snapshot is written");
    assert!(!dir.path().join("journal.0.jsonl").exists());
    assert!(!dir.path().join("journal.1.jsonl").exists());
    assert!(dir.path().join("journal.2.jsonl").exists());
    drop(store);
    let (_, records) = Store::open(dir.path()).expect("store reopens");
    assert_eq!(Registrar::from_records(config(), records, t(4)).len(), 2);
}

#[test]
fn a_damaged_line_before_the_end_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("journal.0.jsonl"),
        b"{\"aor\":\"a@example.com\",\"bindings\":[]}\nnot json\n{\"aor\":\"a@example.com\",\"bindings\":[]}\n",
    )
    .expect("writable");
    match Store::open(dir.path()) {
        Err(StoreError::Corrupt { line, .. }) => assert_eq!(line, 2),
        other => panic!("expected a corrupt-journal error, got {other:?}"),
    }
}

#[test]
fn contacts_beyond_the_limit_are_refused_and_nothing_changes() {
    let mut registrar = Registrar::new(config());
    let first = register(
        (0..3)
            .map(|i| contact(&format!("sip:a{i}@192.0.2.1"), None))
            .collect(),
        Some(600),
        "c1",
        1,
    );
    assert_eq!(
        ok(registrar.handle_register(t(0), &first)).contacts.len(),
        3
    );
    // 3 existing + 3 new > 5: refused whole, the 3 stay as they were.
    let more = register(
        (3..6)
            .map(|i| contact(&format!("sip:a{i}@192.0.2.1"), None))
            .collect(),
        Some(600),
        "c2",
        1,
    );
    assert_eq!(
        registrar.handle_register(t(1), &more),
        Decision::TooManyContacts { max: 5 }
    );
    assert_eq!(Decision::TooManyContacts { max: 5 }.status(), 403);
    let three = register(Vec::new(), None, "c3", 1);
    assert_eq!(
        listed(&ok(registrar.handle_register(t(2), &three))),
        (0..3)
            .map(|i| (format!("sip:a{i}@192.0.2.1"), 598))
            .collect::<Vec<_>>()
    );
    // 300 in one request: refused, nothing stored.
    let flood = register(
        (0..300)
            .map(|i| contact(&format!("sip:f{i}@192.0.2.9"), None))
            .collect(),
        Some(600),
        "c4",
        1,
    );
    assert_eq!(
        registrar.handle_register(t(3), &flood),
        Decision::TooManyContacts { max: 5 }
    );
    // Up to the limit is fine, and removing one while adding one keeps it.
    let two = register(
        vec![
            contact("sip:a3@192.0.2.1", None),
            contact("sip:a4@192.0.2.1", None),
        ],
        Some(600),
        "c5",
        1,
    );
    assert_eq!(ok(registrar.handle_register(t(4), &two)).contacts.len(), 5);
    let swap = register(
        vec![
            contact("sip:a0@192.0.2.1", Some(0)),
            contact("sip:a5@192.0.2.1", None),
        ],
        Some(600),
        "c6",
        1,
    );
    assert_eq!(ok(registrar.handle_register(t(5), &swap)).contacts.len(), 5);
}

#[test]
fn a_refresh_keeps_the_first_registration_time_and_takes_the_new_user_agent() {
    let mut registrar = Registrar::new(config());
    let first = RegisterRequest {
        user_agent: Some("phone/1.0".to_string()),
        ..register(vec![contact("sip:a@192.0.2.1", None)], None, "ua", 1)
    };
    ok(registrar.handle_register(t(0), &first));
    let refresh = RegisterRequest {
        user_agent: Some("phone/1.1".to_string()),
        ..register(vec![contact("sip:a@192.0.2.1", None)], None, "ua", 2)
    };
    ok(registrar.handle_register(t(100), &refresh));
    let aor = registrar
        .parse_aor("alice")
        .expect("bare user takes the domain");
    let bindings = registrar.bindings_of(t(100), &aor);
    assert_eq!(bindings.len(), 1);
    assert_eq!(bindings[0].registered_at, Some(t(0)));
    assert_eq!(bindings[0].updated_at, t(100));
    assert_eq!(bindings[0].user_agent.as_deref(), Some("phone/1.1"));
}

#[test]
fn remove_unbinds_everything_and_the_store_keeps_it_removed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut store, _) = Store::open(dir.path()).expect("store opens");
    let mut registrar = Registrar::new(config());
    persist_all(
        &mut store,
        registrar.handle_register(
            t(0),
            &register(
                vec![
                    contact("sip:a@192.0.2.1", None),
                    contact("sip:a@192.0.2.2", None),
                ],
                None,
                "rm",
                1,
            ),
        ),
    );
    let aor = registrar.parse_aor("sip:alice@example.com").expect("aor");
    let persist = registrar
        .remove(t(10), &aor)
        .expect("two bindings to remove");
    assert!(persist.record.bindings.is_empty());
    assert!(registrar.lookup(t(10), "alice").is_empty());
    assert!(registrar.remove(t(10), &aor).is_none(), "nothing left");
    store.append(&persist.record).expect("append succeeds");
    drop(store);
    let (_, records) = Store::open(dir.path()).expect("store reopens");
    let restored = Registrar::from_records(config(), records, t(20));
    assert!(restored.lookup(t(20), "alice").is_empty(), "stays removed");

    // A failed append is undone like a REGISTER's.
    let mut registrar = restored;
    ok(registrar.handle_register(
        t(30),
        &register(vec![contact("sip:a@192.0.2.1", None)], None, "rm2", 1),
    ));
    let persist = registrar.remove(t(31), &aor).expect("one binding");
    registrar.revert(persist);
    assert_eq!(registrar.lookup(t(31), "alice").len(), 1);
}

#[test]
fn records_stored_before_user_agent_and_registered_at_still_load() {
    let old = r#"{"aor":"alice@example.com","bindings":[{"contact":"sip:a@192.0.2.1","q":null,"expires_at":1700003600000,"updated_at":1700000000000,"call_id":"c","cseq":1,"instance":null,"reg_id":null,"path":[],"source":{"transport":"udp","addr":"203.0.113.7:40312"}}]}"#;
    let record: Record = serde_json::from_str(old).expect("an old record parses");
    assert_eq!(record.bindings[0].user_agent, None);
    assert_eq!(record.bindings[0].registered_at, None);
    let again: Record = serde_json::from_str(&serde_json::to_string(&record).expect("serialises"))
        .expect("round trip");
    assert_eq!(again, record);
}

#[test]
fn a_change_becomes_one_hash_field_per_binding_touched() {
    let mut registrar = Registrar::new(config());
    let first = ok(registrar.handle_register(
        t(0),
        &register(
            vec![
                contact("sip:alice@192.0.2.1", None),
                contact("sip:alice@192.0.2.2", None),
            ],
            Some(600),
            "c1",
            1,
        ),
    ));
    let persist = first.persist.expect("a change");
    let updates = field_updates(&persist);
    assert_eq!(
        updates.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(),
        ["uri:sip:alice@192.0.2.1", "uri:sip:alice@192.0.2.2"]
    );
    let stored: Binding = serde_json::from_str(&updates[0].1).expect("a binding's JSON");
    assert_eq!(stored, persist.record.bindings[0]);
    // Removing one and refreshing nothing else touches only that field.
    let second = ok(registrar.handle_register(
        t(10),
        &register(vec![contact("sip:alice@192.0.2.2", Some(0))], None, "c1", 2),
    ));
    let updates = field_updates(&second.persist.expect("a change"));
    assert_eq!(
        updates,
        [("uri:sip:alice@192.0.2.2".to_owned(), String::new())],
        "an empty value removes the field"
    );
}

#[test]
fn a_flows_field_is_its_instance_and_reg_id_whatever_its_contact() {
    let mut registrar = Registrar::new(config());
    let with_flow = |uri: &str, cseq| {
        let mut c = contact(uri, None);
        c.instance = Some("<urn:uuid:00000000-0000-0000-0000-000000000001>".to_owned());
        c.reg_id = Some(1);
        register(vec![c], Some(600), "c1", cseq)
    };
    let first = ok(registrar.handle_register(t(0), &with_flow("sip:alice@192.0.2.1:5060", 1)));
    let second = ok(registrar.handle_register(t(5), &with_flow("sip:alice@192.0.2.1:6000", 2)));
    let field = "flow:1:<urn:uuid:00000000-0000-0000-0000-000000000001>";
    assert_eq!(field_updates(&first.persist.expect("change"))[0].0, field);
    assert_eq!(
        field_updates(&second.persist.expect("change"))[0].0,
        field,
        "the new contact replaces the old in place"
    );
}

#[test]
fn a_stored_hash_reads_back_unexpired_bindings_in_registration_order_with_its_version() {
    let mut registrar = Registrar::new(config());
    let early = ok(registrar.handle_register(
        t(0),
        &register(
            vec![contact("sip:alice@192.0.2.9", Some(3600))],
            None,
            "c1",
            1,
        ),
    ));
    let late = ok(registrar.handle_register(
        t(100),
        &register(
            vec![contact("sip:alice@192.0.2.1", Some(60))],
            None,
            "c2",
            1,
        ),
    ));
    let json = |r: Registered| field_updates(&r.persist.expect("change"))[0].clone();
    let (early, late) = (json(early), json(late));
    let aor = Aor::parse("alice@example.com", None).expect("aor");
    let fields = vec![
        late.clone(),
        ("#version".to_owned(), "42".to_owned()),
        ("uri:sip:alice@bad".to_owned(), "{not json".to_owned()),
        early.clone(),
    ];
    let (read, skipped) = record_of(aor.clone(), &fields, t(120));
    assert_eq!(read.version, 42);
    assert_eq!(skipped, 1, "the damaged field is skipped, not fatal");
    assert_eq!(
        read.record
            .bindings
            .iter()
            .map(|b| b.contact.as_str())
            .collect::<Vec<_>>(),
        ["sip:alice@192.0.2.9", "sip:alice@192.0.2.1"],
        "first registered first, whatever the hash order"
    );
    // At t(160) the 60 s binding has expired: only the other is read.
    let (read, _) = record_of(aor, &fields, t(160));
    assert_eq!(read.record.bindings.len(), 1);
    assert_eq!(read.record.bindings[0].contact, "sip:alice@192.0.2.9");
}

#[test]
fn store_keys_name_each_address_of_record_and_read_back() {
    let keys = Keys::new("sb-test:");
    let aor = Aor::parse("sip:Alice@Example.COM", None).expect("aor");
    let key = keys.aor(&aor);
    assert_eq!(key, "sb-test:location:Alice@example.com");
    assert_eq!(keys.aor_of(&key), Some(aor));
    assert_eq!(
        keys.aor_of("other:location:alice@example.com"),
        None,
        "another deployment's key"
    );
    assert_eq!(keys.channel(), "sb-test:location-changes");
    assert_eq!(keys.counter(), "sb-test:location-version");
}

#[test]
fn a_sync_begun_covers_what_was_written_before_it_and_a_later_one_the_rest() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut store, _) = Store::open(dir.path()).expect("store opens");
    assert!(store.begin_sync().is_none(), "nothing written");
    let mut registrar = Registrar::new(config());
    let mut record = |n: u32| {
        ok(registrar.handle_register(
            t(n.into()),
            &register(
                vec![contact(&format!("sip:{n}@192.0.2.1"), Some(600))],
                None,
                "c",
                n,
            ),
        ))
        .persist
        .expect("a change")
        .record
    };
    let (first, second) = (record(1), record(2));
    store.write(&first).expect("write");
    let mut job = store.begin_sync().expect("a sync of the first record");
    // Appended while the sync runs on another thread.
    store.write(&second).expect("write");
    let runner = std::thread::spawn(move || {
        job.run();
        job
    });
    let job = runner.join().expect("the sync ran");
    store.finish_sync(job).expect("synced");
    let mut rest = store
        .begin_sync()
        .expect("the second record is not covered yet");
    rest.run();
    store.finish_sync(rest).expect("synced");
    assert!(store.begin_sync().is_none(), "everything synced");
    drop(store);
    let (_, records) = Store::open(dir.path()).expect("store reopens");
    assert_eq!(records, vec![first, second]);
}

/// The two buffers take turns (the last sync's lines, emptied, become the
/// next queue): over several rounds each record reaches the journal once,
/// in order, and the queue reuses a buffer instead of allocating one.
#[test]
fn syncs_reuse_their_buffers_and_write_each_record_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut store, _) = Store::open(dir.path()).expect("store opens");
    let mut registrar = Registrar::new(config());
    let mut written = Vec::new();
    let mut buffers = Vec::new();
    for round in 1..=5u32 {
        // A refresh: every record is one binding, of one length.
        let record = bind(
            &mut registrar,
            round.into(),
            &[("sip:alice@192.0.2.1", 600)],
            "c",
            round,
        )
        .persist
        .expect("a change")
        .record;
        store.write(&record).expect("write");
        written.push(record);
        let mut job = store.begin_sync().expect("a sync of this round's record");
        buffers.push(job.buffer());
        job.run();
        store.finish_sync(job).expect("synced");
        assert!(store.begin_sync().is_none(), "round {round} fully synced");
    }
    assert_ne!(buffers[0], buffers[1], "two buffers");
    assert_eq!(
        buffers[2..],
        [buffers[0], buffers[1], buffers[0]],
        "they take turns"
    );
    drop(store);
    let (_, records) = Store::open(dir.path()).expect("store reopens");
    assert_eq!(records, written);
}

/// A compaction's snapshot (`records`) shares each address-of-record's
/// binding set with the registrar instead of copying it on the core's
/// thread; a change after it (a refresh, an expiry) leaves the snapshot as
/// it was taken.
#[test]
fn a_snapshot_shares_the_binding_sets_and_later_changes_leave_it_as_taken() {
    let mut registrar = Registrar::new(config());
    let _ = registrar.handle_register(
        t(1),
        &register(vec![contact("sip:a@192.0.2.1", Some(600))], None, "c", 1),
    );
    let _ = registrar.handle_register(t(1), &register_user("bob", "sip:b@192.0.2.2", "d"));
    let snapshot = registrar.records();
    assert!(
        snapshot
            .iter()
            .all(|r| std::sync::Arc::strong_count(&r.bindings) == 2),
        "shared with the registrar, not copied"
    );
    // Alice refreshes; Bob's binding expires (removed from a set the
    // snapshot still shares).
    let _ = registrar.handle_register(
        t(2),
        &register(vec![contact("sip:a@192.0.2.1", Some(3600))], None, "c", 2),
    );
    let expired = registrar.handle_timeout(t(700));
    assert_eq!(expired.len(), 1, "bob's binding expired");
    let expiries: Vec<(String, SystemTime)> = snapshot
        .iter()
        .map(|r| (r.bindings[0].contact.clone(), r.bindings[0].expires_at))
        .collect();
    assert_eq!(
        expiries,
        vec![
            ("sip:a@192.0.2.1".to_owned(), t(601)),
            ("sip:b@192.0.2.2".to_owned(), t(601))
        ],
        "the snapshot is the state when it was taken"
    );
    assert_eq!(registrar.lookup(t(700), "alice")[0].expires_at, t(3602));
    assert!(registrar.lookup(t(700), "bob").is_empty());
}
