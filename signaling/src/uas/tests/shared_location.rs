//! The registrar as a cache of a shared location store: versions decide
//! which view of an address-of-record wins, the cache is trusted for a
//! bounded time once the store is lost, and a store out of reach answers
//! REGISTER 503.

use std::collections::VecDeque;

use super::*;
use crate::registrar::{Binding, Versioned};

/// A shared store standing in for Redis: every synced change gets the next
/// version, and what it "holds" afterwards is the change's record.
#[derive(Clone, Default)]
struct SharedDouble {
    state: Arc<Mutex<SharedState>>,
}

#[derive(Default)]
struct SharedState {
    pending: Vec<Record>,
    committed: VecDeque<Versioned>,
    version: u64,
    unreachable: bool,
    /// Bindings another node stored for the same address-of-record: the
    /// store holds them beside each change this node commits.
    others: Vec<Binding>,
}

impl SharedDouble {
    fn lock(&self) -> std::sync::MutexGuard<'_, SharedState> {
        self.state.lock().expect("double lock")
    }

    /// The next version the store will hand out is above `version`.
    fn counter_at(&self, version: u64) {
        self.lock().version = version;
    }

    fn unreachable(&self, unreachable: bool) {
        self.lock().unreachable = unreachable;
    }

    fn also_holds(&self, binding: Binding) {
        self.lock().others.push(binding);
    }
}

impl BindingStore for SharedDouble {
    fn write(&mut self, persist: &Persist) -> Result<(), StoreError> {
        self.lock().pending.push(persist.record.clone());
        Ok(())
    }

    /// Decides at once: the outcome rides in a ready job.
    fn begin_sync(&mut self) -> Option<SyncJob> {
        let mut state = self.lock();
        let pending = std::mem::take(&mut state.pending);
        if pending.is_empty() {
            return None;
        }
        if state.unreachable {
            return Some(SyncJob::Ready(Err(StoreError::Unavailable {
                store: "127.0.0.1:6379".to_owned(),
                reason: "Connection refused".to_owned(),
            })));
        }
        for mut record in pending {
            state.version += 1;
            let version = state.version;
            std::sync::Arc::make_mut(&mut record.bindings).extend(state.others.iter().cloned());
            state.committed.push_back(Versioned { record, version });
        }
        Some(SyncJob::Ready(Ok(())))
    }

    fn finish_sync(&mut self, job: SyncJob) -> Result<(), StoreError> {
        let SyncJob::Ready(outcome) = job else {
            panic!("the double hands out ready jobs only");
        };
        if outcome.is_err() {
            self.lock().pending.clear();
        }
        outcome
    }

    fn take_committed(&mut self) -> Vec<Versioned> {
        self.lock().committed.drain(..).collect()
    }

    fn journal_records(&self) -> usize {
        0
    }

    fn compact(&mut self, _: Vec<Record>) -> Result<(), StoreError> {
        Ok(())
    }
}

fn shared_core(store: &SharedDouble, now: Now) -> Uas {
    let mut auth = AuthConfig::digest("test", vec![7; 32]);
    auth.mode = AuthMode::Anonymous;
    let mut uas = Uas::new(
        test_config(),
        Registrar::new(RegistrarConfig::default()),
        Authenticator::new(auth, Users::default()),
        Box::new(store.clone()),
    );
    uas.set_shared_location(now, Duration::from_secs(30));
    uas
}

/// `user@example.com` bound to `contact` until `now` + 600 s, as another
/// node would have stored it.
fn record(user: &str, contact: &str, now: Now) -> Record {
    Record {
        aor: Aor::parse(&format!("{user}@example.com"), None).expect("aor"),
        bindings: std::sync::Arc::new(vec![Binding {
            contact: contact.to_owned(),
            q: None,
            expires_at: now.wall + Duration::from_secs(600),
            updated_at: now.wall,
            call_id: format!("{user}-call"),
            cseq: 1,
            instance: None,
            reg_id: None,
            path: Vec::new(),
            source: crate::registrar::Source {
                addr: "192.0.2.20:5060".parse().expect("address"),
                transport: crate::registrar::Transport::Udp,
            },
            user_agent: None,
            registered_at: Some(now.wall),
            node: Some("node-2".to_owned()),
        }]),
    }
}

fn empty(user: &str) -> Record {
    Record {
        aor: Aor::parse(&format!("{user}@example.com"), None).expect("aor"),
        bindings: std::sync::Arc::default(),
    }
}

fn one(record: Record, version: u64) -> LocationUpdate {
    LocationUpdate::One(Versioned { record, version })
}

fn contacts(uas: &Uas, now: Now, user: &str) -> Vec<String> {
    uas.registrar()
        .lookup(now.wall, &format!("{user}@example.com"))
        .into_iter()
        .map(|b| b.contact.clone())
        .collect()
}

#[test]
fn another_nodes_change_is_adopted_and_an_older_view_arriving_late_is_not() {
    let store = SharedDouble::default();
    let now = Now::current();
    let mut uas = shared_core(&store, now);
    uas.handle_location(now, one(record("bob", "sip:bob@192.0.2.20", now), 5));
    assert_eq!(contacts(&uas, now, "bob"), ["sip:bob@192.0.2.20"]);
    // A read made before version 5 (bob had no binding then) comes late.
    uas.handle_location(now, one(empty("bob"), 3));
    assert_eq!(contacts(&uas, now, "bob"), ["sip:bob@192.0.2.20"]);
    // Bob unregistered at the other node: version 6 empties him.
    uas.handle_location(now, one(empty("bob"), 6));
    assert!(contacts(&uas, now, "bob").is_empty());
    // And the version 5 view, delivered once more, does not bring him back.
    uas.handle_location(now, one(record("bob", "sip:bob@192.0.2.20", now), 5));
    assert!(contacts(&uas, now, "bob").is_empty());
}

#[test]
fn a_late_read_of_the_store_does_not_undo_this_nodes_own_commit() {
    let store = SharedDouble::default();
    let now = Now::current();
    let mut uas = shared_core(&store, now);
    uas.handle_location(now, one(record("bob", "sip:bob@192.0.2.20", now), 4));
    store.counter_at(9);
    // The follower (re)connects and starts reading the whole store; alice
    // registers here meanwhile.
    uas.handle_location(now, LocationUpdate::Reading);
    uas.handle_inbound(now, register("a", "c1", 1, "sip:alice@192.0.2.10:5062"));
    commit(&mut uas, now);
    let out = sent(&mut uas);
    assert_eq!(status_of(&out[0].1), "200", "{out:?}");
    // The store gave alice's change version 10; a follower read from
    // before it (version 8, another contact) arrives after the commit.
    uas.handle_location(now, one(record("alice", "sip:alice@198.51.100.1", now), 8));
    assert_eq!(contacts(&uas, now, "alice"), ["sip:alice@192.0.2.10:5062"]);
    // The full read missed alice's change: alice stays; bob, not in the
    // read, goes; carol comes in.
    uas.handle_location(
        now,
        LocationUpdate::All(vec![Versioned {
            record: record("carol", "sip:carol@192.0.2.30", now),
            version: 7,
        }]),
    );
    assert_eq!(contacts(&uas, now, "alice"), ["sip:alice@192.0.2.10:5062"]);
    assert!(contacts(&uas, now, "bob").is_empty());
    assert_eq!(contacts(&uas, now, "carol"), ["sip:carol@192.0.2.30"]);
    // Outside a read, a full view replaces everything, this node's own
    // bindings too (the store lost them: the phone registers again).
    uas.handle_location(now, LocationUpdate::Reading);
    uas.handle_location(now, LocationUpdate::All(Vec::new()));
    assert!(contacts(&uas, now, "alice").is_empty());
    // And a read that has a newer view of an own commit wins over it.
    uas.handle_location(now, LocationUpdate::Reading);
    uas.handle_inbound(now, register("b", "c2", 1, "sip:alice@192.0.2.10:5062"));
    commit(&mut uas, now);
    assert_eq!(status_of(&sent(&mut uas)[0].1), "200");
    uas.handle_location(
        now,
        LocationUpdate::All(vec![Versioned {
            record: record("alice", "sip:alice@198.51.100.1", now),
            version: 12,
        }]),
    );
    assert_eq!(contacts(&uas, now, "alice"), ["sip:alice@198.51.100.1"]);
}

#[test]
fn the_cache_is_trusted_for_the_stale_bound_after_the_store_is_lost() {
    let store = SharedDouble::default();
    let start = Now::current();
    let mut uas = shared_core(&store, start);
    let bound = Duration::from_secs(30);
    // Before the first full read the cache is what was loaded at start:
    // trusted for the bound from then.
    assert!(uas.location.trusted(start.advanced(bound).instant));
    assert!(!uas
        .location
        .trusted(start.advanced(bound + Duration::from_millis(1)).instant));
    uas.handle_location(start, LocationUpdate::All(Vec::new()));
    assert!(uas
        .location
        .trusted(start.advanced(Duration::from_secs(3600)).instant));
    let lost = start.advanced(Duration::from_secs(100));
    uas.handle_location(lost, LocationUpdate::Lost);
    // A second loss report does not move the moment it was lost.
    uas.handle_location(lost.advanced(Duration::from_secs(10)), LocationUpdate::Lost);
    assert!(uas.location.trusted(lost.advanced(bound).instant));
    assert!(!uas
        .location
        .trusted(lost.advanced(bound + Duration::from_millis(1)).instant));
    uas.handle_location(
        lost.advanced(Duration::from_secs(60)),
        LocationUpdate::All(Vec::new()),
    );
    assert!(uas
        .location
        .trusted(lost.advanced(Duration::from_secs(61)).instant));
}

#[test]
fn a_store_out_of_reach_answers_register_503_with_retry_after_and_binds_nothing() {
    let store = SharedDouble::default();
    let now = Now::current();
    let mut uas = shared_core(&store, now);
    store.unreachable(true);
    uas.handle_inbound(now, register("a", "c1", 1, "sip:alice@192.0.2.10:5062"));
    commit(&mut uas, now);
    let out = sent(&mut uas);
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(
        out[0]
            .1
            .starts_with("SIP/2.0 503 Service Unavailable (location store unreachable)\r\n"),
        "{}",
        out[0].1
    );
    assert!(out[0].1.contains("\r\nRetry-After: 5\r\n"), "{}", out[0].1);
    assert!(
        contacts(&uas, now, "alice").is_empty(),
        "no binding without its store"
    );
    // Once the store answers, the phone's retry is bound.
    store.unreachable(false);
    let later = now.advanced(Duration::from_secs(5));
    uas.handle_inbound(later, register("b", "c1", 2, "sip:alice@192.0.2.10:5062"));
    commit(&mut uas, later);
    let out = sent(&mut uas);
    assert_eq!(status_of(&out[0].1), "200", "{out:?}");
    assert_eq!(
        contacts(&uas, later, "alice"),
        ["sip:alice@192.0.2.10:5062"]
    );
}

#[test]
fn the_200_lists_what_the_store_holds_after_the_commit_other_nodes_contacts_included() {
    let store = SharedDouble::default();
    let now = Now::current();
    let mut uas = shared_core(&store, now);
    // Alice's desk phone registered through node 2 an instant ago; this
    // node has not heard of it yet, the store has.
    let desk = record("alice", "sip:alice@192.0.2.40", now).bindings[0].clone();
    store.also_holds(desk);
    uas.handle_inbound(now, register("a", "c1", 1, "sip:alice@192.0.2.10:5062"));
    commit(&mut uas, now);
    let out = sent(&mut uas);
    assert_eq!(status_of(&out[0].1), "200", "{out:?}");
    let listed = out[0]
        .1
        .lines()
        .filter(|l| l.starts_with("Contact:"))
        .count();
    assert_eq!(listed, 2, "both phones of alice: {}", out[0].1);
    assert!(
        out[0]
            .1
            .contains("Contact: <sip:alice@192.0.2.40>;expires=600\r\n"),
        "{}",
        out[0].1
    );
    assert!(
        out[0]
            .1
            .contains("Contact: <sip:alice@192.0.2.10:5062>;expires=600\r\n"),
        "{}",
        out[0].1
    );
    assert_eq!(
        contacts(&uas, now, "alice").len(),
        2,
        "and the cache has both"
    );
}
