//! Sans-IO tests of the core: no sockets, explicit time.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::auth::{AuthConfig, AuthMode, Users};
use crate::registrar::RegistrarConfig;

mod observations;
mod shared_location;

/// A store that keeps records in memory and can be told to fail.
#[derive(Clone, Default)]
struct MemoryStore {
    state: Arc<Mutex<MemoryState>>,
}

#[derive(Default)]
struct MemoryState {
    /// Durable records (synced).
    synced: Vec<Record>,
    /// Written, not yet synced.
    written: Vec<Record>,
    fail_writes: bool,
    fail_syncs: bool,
    syncs: usize,
    compactions: usize,
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().expect("store lock")
    }

    /// The durable records.
    fn records(&self) -> Vec<Record> {
        self.lock().synced.clone()
    }

    fn fail(&self, fail: bool) {
        self.lock().fail_writes = fail;
    }

    fn fail_syncs(&self, fail: bool) {
        self.lock().fail_syncs = fail;
    }

    fn syncs(&self) -> usize {
        self.lock().syncs
    }

    fn compactions(&self) -> usize {
        self.lock().compactions
    }
}

fn disk_full() -> StoreError {
    StoreError::Io {
        path: "journal".into(),
        source: std::io::Error::other("disk full"),
    }
}

impl BindingStore for MemoryStore {
    fn write(&mut self, persist: &Persist) -> Result<(), StoreError> {
        let mut state = self.lock();
        if state.fail_writes {
            return Err(disk_full());
        }
        state.written.push(persist.record.clone());
        Ok(())
    }

    /// Decides at once: the outcome rides in a ready job.
    fn begin_sync(&mut self) -> Option<SyncJob> {
        let mut state = self.lock();
        if state.written.is_empty() {
            return None;
        }
        let written = std::mem::take(&mut state.written);
        if state.fail_syncs {
            return Some(SyncJob::Ready(Err(disk_full())));
        }
        state.syncs += 1;
        state.synced.extend(written);
        Some(SyncJob::Ready(Ok(())))
    }

    fn finish_sync(&mut self, job: SyncJob) -> Result<(), StoreError> {
        let SyncJob::Ready(outcome) = job else {
            panic!("the double hands out ready jobs only");
        };
        if outcome.is_err() {
            // Like the journal: what was written after the failed sync
            // began is forgotten with it.
            self.lock().written.clear();
        }
        outcome
    }

    fn journal_records(&self) -> usize {
        let state = self.lock();
        state.synced.len() + state.written.len()
    }

    fn compact(&mut self, records: Vec<Record>) -> Result<(), StoreError> {
        let mut state = self.lock();
        assert!(state.written.is_empty(), "compacted with unsynced records");
        state.synced = records.to_vec();
        state.compactions += 1;
        Ok(())
    }
}

const SOURCE: &str = "192.0.2.10:5062";

/// The defaults, with syncs begun back to back: the tests step through
/// one instant, and the gap has a test of its own.
fn test_config() -> UasConfig {
    let mut config = UasConfig::new("test");
    config.sync_gap = Duration::ZERO;
    config
}

fn core(store: &MemoryStore, compact_after: usize) -> Uas {
    let mut auth = AuthConfig::digest("test", vec![7; 32]);
    auth.mode = AuthMode::Anonymous;
    let mut config = test_config();
    config.compact_after = compact_after;
    Uas::new(
        config,
        Registrar::new(RegistrarConfig::default()),
        Authenticator::new(auth, Users::default()),
        Box::new(store.clone()),
    )
}

fn register(branch: &str, call_id: &str, cseq: u32, contact: &str) -> Inbound {
    let text = format!(
        "REGISTER sip:example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK{branch}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@example.com>;tag=1\r\n\
         To: <sip:alice@example.com>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} REGISTER\r\n\
         Contact: <{contact}>\r\n\
         Expires: 600\r\n\
         Content-Length: 0\r\n\r\n"
    );
    Inbound {
        flow: Flow::Udp {
            remote: SOURCE.parse().expect("address"),
        },
        bytes: text.into_bytes(),
    }
}

fn sent(uas: &mut Uas) -> Vec<(SocketAddr, String)> {
    std::iter::from_fn(|| uas.poll_transmit())
        .map(|o| {
            (
                o.destination.remote(),
                String::from_utf8(o.bytes).expect("UTF-8"),
            )
        })
        .collect()
}

fn status_of(text: &str) -> &str {
    text.split(' ').nth(1).expect("a status")
}

/// What the driver does after an input: begin a sync, run it off the
/// core's thread, hand it back; until nothing is left to sync.
fn commit(uas: &mut Uas, now: Now) {
    uas.handle_input(now, Input::Commit);
    while let Some(mut job) = uas.poll_sync() {
        job.run();
        uas.handle_input(now, Input::Synced(job));
    }
}

#[test]
fn register_is_stored_before_the_200_and_retransmissions_are_absorbed() {
    let store = MemoryStore::default();
    let mut uas = core(&store, 100);
    let now = Now::current();
    uas.handle_inbound(now, register("a", "c1", 1, "sip:alice@192.0.2.10:5062"));
    assert_eq!(sent(&mut uas), Vec::new(), "the 200 waits for the commit");
    assert_eq!(store.records().len(), 0);
    // A retransmission before the commit finds the transaction without a
    // final response: nothing to resend, nothing stored twice.
    uas.handle_inbound(
        now.advanced(Duration::from_millis(10)),
        register("a", "c1", 1, "sip:alice@192.0.2.10:5062"),
    );
    assert_eq!(sent(&mut uas), Vec::new());
    commit(&mut uas, now.advanced(Duration::from_millis(20)));
    let out = sent(&mut uas);
    assert_eq!(out.len(), 1, "{out:?}");
    // No rport: to the sent-by address and port (RFC 3261 §18.2.2).
    assert_eq!(out[0].0, SOURCE.parse::<SocketAddr>().expect("address"));
    assert_eq!(status_of(&out[0].1), "200");
    assert!(
        out[0]
            .1
            .contains("Contact: <sip:alice@192.0.2.10:5062>;expires=600\r\n"),
        "{}",
        out[0].1
    );
    assert_eq!(store.records().len(), 1, "journalled once");
    assert_eq!(store.syncs(), 1);

    // The retransmission gets the same octets from the transaction and
    // does not reach the registrar (no second record).
    uas.handle_inbound(
        now.advanced(Duration::from_millis(500)),
        register("a", "c1", 1, "sip:alice@192.0.2.10:5062"),
    );
    let again = sent(&mut uas);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].1, out[0].1);
    commit(&mut uas, now.advanced(Duration::from_millis(500)));
    assert_eq!(store.records().len(), 1);
    assert_eq!(store.syncs(), 1, "nothing to sync, no fsync");

    // Timer J (64·T1 on UDP) ends the transaction.
    assert_eq!(uas.transactions(), 1);
    uas.handle_timeout(now.advanced(Duration::from_secs(33)));
    assert_eq!(uas.transactions(), 0);
}

fn register_from(branch: &str, user: &str, call_id: &str, cseq: u32, contact: &str) -> Inbound {
    let mut inbound = register(branch, call_id, cseq, contact);
    let text = String::from_utf8(inbound.bytes).expect("UTF-8");
    inbound.bytes = text.replace("alice@", &format!("{user}@")).into_bytes();
    inbound
}

#[test]
fn the_registers_of_one_commit_share_one_sync_and_are_answered_after_it() {
    let store = MemoryStore::default();
    let mut uas = core(&store, 1000);
    let now = Now::current();
    for n in 0..50 {
        let user = format!("u{n}");
        let contact = format!("sip:{user}@192.0.2.10:5062");
        uas.handle_inbound(
            now,
            register_from(&format!("g{n}"), &user, &format!("g{n}"), 1, &contact),
        );
    }
    // A query of one of them (no Contact) lists a change not yet durable:
    // it waits in line too.
    let query = String::from_utf8(register("q", "q1", 1, "x").bytes)
        .expect("UTF-8")
        .replace("Contact: <x>\r\n", "")
        .replace("alice@", "u7@");
    uas.handle_inbound(
        now,
        Inbound {
            flow: Flow::Udp {
                remote: SOURCE.parse().expect("address"),
            },
            bytes: query.into_bytes(),
        },
    );
    assert_eq!(sent(&mut uas), Vec::new());
    assert_eq!(uas.registrations(now).len(), 50, "the registrar has them");
    commit(&mut uas, now);
    let out = sent(&mut uas);
    assert_eq!(out.len(), 51);
    assert!(
        out.iter().all(|(_, text)| status_of(text) == "200"),
        "{out:?}"
    );
    assert!(
        out[50]
            .1
            .contains("Contact: <sip:u7@192.0.2.10:5062>;expires=600\r\n"),
        "{}",
        out[50].1
    );
    assert_eq!(store.syncs(), 1, "one fsync for the group");
    assert_eq!(store.records().len(), 50);
}

#[test]
fn the_core_goes_on_during_a_sync_and_what_it_wrote_meanwhile_is_the_next_syncs() {
    let store = MemoryStore::default();
    let mut uas = core(&store, 1000);
    let now = Now::current();
    uas.handle_inbound(
        now,
        register_from("s1", "u1", "s1", 1, "sip:u1@192.0.2.10:5062"),
    );
    uas.handle_input(now, Input::Commit);
    let mut first = uas.poll_sync().expect("a sync begun for u1");
    assert!(uas.sync_in_flight());
    // While the disk works: two more REGISTERs are taken and written, an
    // OPTIONS is answered at once, and no second sync begins.
    uas.handle_inbound(
        now,
        register_from("s2", "u2", "s2", 1, "sip:u2@192.0.2.10:5062"),
    );
    uas.handle_inbound(
        now,
        register_from("s3", "u3", "s3", 1, "sip:u3@192.0.2.10:5062"),
    );
    uas.handle_inbound(
        now,
        udp("OPTIONS sip:example.com SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKopt\r\n\
             From: <sip:alice@example.com>;tag=o1\r\nTo: <sip:example.com>\r\n\
             Call-ID: opt1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"),
    );
    uas.handle_input(now, Input::Commit);
    assert!(uas.poll_sync().is_none(), "one sync at a time");
    let out = sent(&mut uas);
    assert_eq!(out.len(), 1, "only the OPTIONS is answered: {out:?}");
    assert!(out[0].1.contains("CSeq: 1 OPTIONS"), "{}", out[0].1);
    assert_eq!(
        uas.registrations(now).len(),
        3,
        "all three are in the registrar"
    );

    first.run();
    uas.handle_input(now, Input::Synced(first));
    let out = sent(&mut uas);
    assert_eq!(out.len(), 1, "u1's 200 only: {out:?}");
    assert!(out[0].1.contains("Call-ID: s1\r\n") && status_of(&out[0].1) == "200");
    let mut second = uas
        .poll_sync()
        .expect("the next sync begins with what was written meanwhile");
    assert!(sent(&mut uas).is_empty(), "u2 and u3 wait for it");
    second.run();
    uas.handle_input(now, Input::Synced(second));
    let out = sent(&mut uas);
    let answered: Vec<_> = out
        .iter()
        .map(|(_, text)| (status_of(text).to_owned(), text.contains("Call-ID: s2\r\n")))
        .collect();
    assert_eq!(
        answered,
        vec![("200".to_owned(), true), ("200".to_owned(), false)]
    );
    assert!(!uas.sync_in_flight());
    assert_eq!(store.syncs(), 2);
    assert_eq!(store.records().len(), 3);
}

#[test]
fn a_sync_begins_no_sooner_than_the_gap_after_the_last_and_a_timer_begins_it() {
    let store = MemoryStore::default();
    let mut config = test_config();
    config.sync_gap = Duration::from_millis(2);
    let mut auth = AuthConfig::digest("test", vec![7; 32]);
    auth.mode = AuthMode::Anonymous;
    let mut uas = Uas::new(
        config,
        Registrar::new(RegistrarConfig::default()),
        Authenticator::new(auth, Users::default()),
        Box::new(store.clone()),
    );
    let now = Now::current();
    // A lone REGISTER on an idle server: its sync begins at once.
    uas.handle_inbound(
        now,
        register_from("g1", "u1", "g1", 1, "sip:u1@192.0.2.10:5062"),
    );
    uas.handle_input(now, Input::Commit);
    let mut job = uas.poll_sync().expect("the first sync begins at once");
    job.run();
    let back = now.advanced(Duration::from_micros(500));
    uas.handle_input(back, Input::Synced(job));
    assert_eq!(sent(&mut uas).len(), 1, "u1 answered");
    // Another, 0.5 ms after the first sync began: it waits for the gap.
    uas.handle_inbound(
        back,
        register_from("g2", "u2", "g2", 1, "sip:u2@192.0.2.10:5062"),
    );
    uas.handle_input(back, Input::Commit);
    assert!(uas.poll_sync().is_none(), "held back by the gap");
    let due = now.instant + Duration::from_millis(2);
    assert_eq!(uas.poll_timeout(back), Some(due));
    let later = now.advanced(Duration::from_millis(2));
    uas.handle_input(later, Input::Timeout);
    let mut job = uas.poll_sync().expect("the timer begins it");
    job.run();
    uas.handle_input(later, Input::Synced(job));
    let out = sent(&mut uas);
    assert_eq!(out.len(), 1);
    assert!(out[0].1.contains("Call-ID: g2\r\n") && status_of(&out[0].1) == "200");
    assert_eq!(store.syncs(), 2);
    // Stopping: a third, within the gap, is synced at once when asked.
    uas.handle_inbound(
        later,
        register_from("g3", "u3", "g3", 1, "sip:u3@192.0.2.10:5062"),
    );
    uas.handle_input(later, Input::Commit);
    assert!(uas.poll_sync().is_none(), "held back by the gap");
    uas.handle_input(later, Input::CommitNow);
    let mut job = uas.poll_sync().expect("CommitNow begins it");
    job.run();
    uas.handle_input(later, Input::Synced(job));
    assert_eq!(status_of(&sent(&mut uas)[0].1), "200");
}

#[test]
fn a_failed_sync_refuses_the_registers_written_after_it_began_too() {
    let store = MemoryStore::default();
    let mut uas = core(&store, 1000);
    let now = Now::current();
    store.fail_syncs(true);
    uas.handle_inbound(
        now,
        register_from("f1", "u1", "f1", 1, "sip:u1@192.0.2.10:5062"),
    );
    uas.handle_input(now, Input::Commit);
    let mut failing = uas.poll_sync().expect("a sync begun");
    store.fail_syncs(false);
    // Written after the sync began: the store forgets it with the failure.
    uas.handle_inbound(
        now,
        register_from("f2", "u2", "f2", 1, "sip:u2@192.0.2.10:5062"),
    );
    failing.run();
    uas.handle_input(now, Input::Synced(failing));
    let statuses: Vec<_> = sent(&mut uas)
        .iter()
        .map(|(_, text)| status_of(text).to_owned())
        .collect();
    assert_eq!(statuses, vec!["500", "500"]);
    assert!(uas.registrations(now).is_empty(), "both undone");
    assert!(uas.poll_sync().is_none(), "nothing left to sync");
    assert!(store.records().is_empty());
}

#[test]
fn an_operator_unregister_waits_for_no_sync_in_flight() {
    let store = MemoryStore::default();
    let mut uas = core(&store, 1000);
    let now = Now::current();
    uas.handle_inbound(now, register("a", "c1", 1, "sip:alice@192.0.2.10:5062"));
    uas.handle_input(now, Input::Commit);
    let mut job = uas.poll_sync().expect("a sync begun");
    assert_eq!(
        uas.unregister(now, "alice@example.com"),
        Err(RegistrationError::Busy)
    );
    assert_eq!(uas.registrations(now).len(), 1, "the binding stays");
    job.run();
    uas.handle_input(now, Input::Synced(job));
    assert_eq!(
        uas.unregister(now, "alice@example.com"),
        Ok(("alice@example.com".to_owned(), 1))
    );
}

#[test]
fn a_failed_sync_undoes_the_whole_group_newest_first_and_answers_each_500() {
    let store = MemoryStore::default();
    let mut uas = core(&store, 1000);
    let now = Now::current();
    let first = "sip:alice@192.0.2.10:5062";
    uas.handle_inbound(now, register("a", "c1", 1, first));
    commit(&mut uas, now);
    assert_eq!(status_of(&sent(&mut uas)[0].1), "200");

    // One group: alice's binding replaced, then refreshed again, and bob added.
    let second = "sip:alice@192.0.2.99:5062";
    uas.handle_inbound(now, register("b", "c2", 1, second));
    uas.handle_inbound(now, register("c", "c2", 2, second));
    uas.handle_inbound(
        now,
        register_from("d", "bob", "c3", 1, "sip:bob@192.0.2.10:5062"),
    );
    let _ = observations::observations(&mut uas);
    store.fail_syncs(true);
    commit(&mut uas, now);
    let out = sent(&mut uas);
    assert_eq!(out.len(), 3);
    assert!(
        out.iter().all(|(_, text)| status_of(text) == "500"),
        "{out:?}"
    );
    let views = uas.registrations(now);
    assert_eq!(views.len(), 1, "{views:?}");
    assert_eq!(
        views[0].contact, first,
        "alice is back to her durable binding"
    );
    assert_eq!(store.records().len(), 1);
    assert!(
        observations::observations(&mut uas)
            .iter()
            .all(|o| !matches!(o, Observation::Registration(_))),
        "no binding event for a change that was not stored"
    );

    // The store works again: the next REGISTER is stored and answered.
    store.fail_syncs(false);
    uas.handle_inbound(now, register("e", "c2", 3, second));
    commit(&mut uas, now);
    assert_eq!(status_of(&sent(&mut uas)[0].1), "200");
    assert_eq!(store.records().len(), 2);
}

#[test]
fn an_operator_unregister_commits_the_registers_written_before_it() {
    let store = MemoryStore::default();
    let mut uas = core(&store, 1000);
    let now = Now::current();
    uas.handle_inbound(
        now,
        register_from("a", "bob", "c1", 1, "sip:bob@192.0.2.10:5062"),
    );
    uas.handle_inbound(now, register("b", "c2", 1, "sip:alice@192.0.2.10:5062"));
    assert_eq!(
        uas.unregister(now, "alice@example.com"),
        Ok(("alice@example.com".to_owned(), 1))
    );
    let out = sent(&mut uas);
    assert_eq!(
        out.len(),
        2,
        "both REGISTERs answered by the unregister's sync"
    );
    assert!(out.iter().all(|(_, text)| status_of(text) == "200"));
    assert_eq!(store.syncs(), 1);
    assert_eq!(store.records().len(), 3);
    assert_eq!(uas.registrations(now).len(), 1, "bob stays");
}

#[test]
fn a_failed_append_is_reverted_and_answered_500() {
    let store = MemoryStore::default();
    let mut uas = core(&store, 100);
    let now = Now::current();
    store.fail(true);
    uas.handle_inbound(now, register("b", "c2", 1, "sip:alice@192.0.2.10:5062"));
    let out = sent(&mut uas);
    assert_eq!(status_of(&out[0].1), "500", "{}", out[0].1);
    assert!(
        uas.registrations(now).is_empty(),
        "binding reverted: {:?}",
        uas.registrations(now)
    );
    store.fail(false);
    uas.handle_inbound(now, register("c", "c2", 2, "sip:alice@192.0.2.10:5062"));
    commit(&mut uas, now);
    let out = sent(&mut uas);
    assert_eq!(status_of(&out[0].1), "200", "{}", out[0].1);
    let views = uas.registrations(now);
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].aor, "alice@example.com");
    assert_eq!(views[0].transport, "udp");
    assert_eq!(views[0].source, SOURCE.to_string());
}

#[test]
fn an_operator_unregister_is_stored_first_and_kept_back_when_the_store_fails() {
    let store = MemoryStore::default();
    let mut uas = core(&store, 100);
    let now = Now::current();
    uas.handle_inbound(now, register("u", "c3", 1, "sip:alice@192.0.2.10:5062"));
    commit(&mut uas, now);
    assert_eq!(status_of(&sent(&mut uas)[0].1), "200");
    let before = store.records().len();

    store.fail(true);
    assert_eq!(
        uas.unregister(now, "sip:alice@example.com"),
        Err(RegistrationError::NotStored)
    );
    assert_eq!(uas.registrations(now).len(), 1, "kept: nothing was stored");
    store.fail(false);

    assert_eq!(
        uas.registrations_of(now, "alice@EXAMPLE.com")
            .map(|v| v.len()),
        Ok(1)
    );
    assert_eq!(
        uas.unregister(now, "alice@example.com"),
        Ok(("alice@example.com".to_owned(), 1))
    );
    assert_eq!(
        store.records().len(),
        before + 1,
        "the removal was journalled"
    );
    assert!(store
        .records()
        .last()
        .is_some_and(|r| r.bindings.is_empty()));
    assert!(uas.registrations(now).is_empty());
    assert_eq!(
        uas.registrations_of(now, "alice@example.com"),
        Err(RegistrationError::NotFound("alice@example.com".to_owned()))
    );
    assert_eq!(
        uas.unregister(now, "@"),
        Err(RegistrationError::InvalidAor("@".to_owned()))
    );
}

#[test]
fn the_journal_is_compacted_when_it_outgrows_the_bindings() {
    let store = MemoryStore::default();
    let mut uas = core(&store, 3);
    let now = Now::current();
    for cseq in 1..=3 {
        uas.handle_inbound(
            now,
            register(&format!("d{cseq}"), "c3", cseq, "sip:alice@192.0.2.10:5062"),
        );
        commit(&mut uas, now);
    }
    assert_eq!(store.compactions(), 1);
    assert_eq!(store.records().len(), 1, "one record per address-of-record");
}

#[test]
fn bindings_expire_on_the_timer() {
    let store = MemoryStore::default();
    let mut uas = core(&store, 100);
    let now = Now::current();
    uas.handle_inbound(now, register("e", "c4", 1, "sip:alice@192.0.2.10:5062"));
    commit(&mut uas, now);
    let deadline = uas.poll_timeout(now).expect("a deadline");
    assert!(
        deadline <= now.instant + Duration::from_secs(32),
        "timer J first"
    );
    uas.handle_timeout(now.advanced(Duration::from_secs(599)));
    assert_eq!(uas.registrar().len(), 1);
    uas.handle_timeout(now.advanced(Duration::from_secs(601)));
    assert_eq!(uas.registrar().len(), 0);
    assert_eq!(
        uas.poll_timeout(now.advanced(Duration::from_secs(601))),
        None
    );
}

/// Answers every INVITE with a 183 and a 200 in the same event, as a B2BUA
/// does when early media and the answer arrive together.
struct EarlyThenAnswer;

impl CallHandler for EarlyThenAnswer {
    fn handle_event(&mut self, _now: Now, event: CallEvent, sip: &mut SipActions<'_>) {
        if let CallEvent::Request { key, request, .. } = event {
            if request.method() == &Method::Invite {
                let tag = Tag::new("callee");
                sip.respond(&key, 183, "Session Progress", Some(&tag), &[], None)
                    .expect("183");
                sip.respond(&key, 200, "OK", Some(&tag), &[], None)
                    .expect("200");
            }
        }
    }
}

#[test]
fn two_responses_queued_in_one_input_both_go_out_whole() {
    let store = MemoryStore::default();
    let mut uas = core(&store, 100);
    uas.set_call_handler(Box::new(EarlyThenAnswer));
    let invite = "INVITE sip:bob@example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKtwo\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@example.com>;tag=1\r\n\
         To: <sip:bob@example.com>\r\n\
         Call-ID: two-responses\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:alice@192.0.2.10:5062>\r\n\
         Content-Length: 0\r\n\r\n";
    uas.handle_inbound(
        Now::current(),
        Inbound {
            flow: Flow::Udp {
                remote: SOURCE.parse().expect("address"),
            },
            bytes: invite.as_bytes().to_vec(),
        },
    );
    let out: Vec<String> = sent(&mut uas).into_iter().map(|(_, text)| text).collect();
    let statuses: Vec<&str> = out.iter().map(|t| status_of(t)).collect();
    assert!(statuses.ends_with(&["183", "200"]), "{statuses:?}");
    for text in out.iter().filter(|t| matches!(status_of(t), "183" | "200")) {
        assert!(
            text.contains("Call-ID: two-responses\r\n") && text.contains("branch=z9hG4bKtwo"),
            "every response carries its headers:\n{text}"
        );
    }
}

fn digest_core(store: &MemoryStore) -> Uas {
    Uas::new(
        test_config(),
        Registrar::new(RegistrarConfig::default()),
        Authenticator::new(AuthConfig::digest("test", vec![7; 32]), Users::default()),
        Box::new(store.clone()),
    )
}

fn udp(text: &str) -> Inbound {
    Inbound {
        flow: Flow::Udp {
            remote: SOURCE.parse().expect("address"),
        },
        bytes: text.as_bytes().to_vec(),
    }
}

#[test]
fn a_challenge_is_sent_once_per_request_and_its_ack_is_absorbed() {
    let store = MemoryStore::default();
    let mut uas = digest_core(&store);
    uas.set_call_handler(Box::new(EarlyThenAnswer));
    let invite = "INVITE sip:bob@example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKchal\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@example.com>;tag=1\r\n\
         To: <sip:bob@example.com>\r\n\
         Call-ID: challenged\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:alice@192.0.2.10:5062>\r\n\
         Content-Length: 0\r\n\r\n";
    let now = Now::current();
    uas.handle_inbound(now, udp(invite));
    let out = sent(&mut uas);
    assert_eq!(out.len(), 1, "one 407 and no 100 Trying: {out:?}");
    assert_eq!(status_of(&out[0].1), "407");
    assert_eq!(uas.transactions(), 0, "no transaction keeps or repeats it");
    assert_eq!(uas.poll_timeout(now), None);
    // Never ACKed: past Timer H (64·T1) nothing more is sent.
    for secs in [1, 2, 4, 8, 16, 32, 40] {
        uas.handle_timeout(now.advanced(Duration::from_secs(secs)));
        assert!(sent(&mut uas).is_empty(), "nothing at {secs} s");
    }
    // A retransmission of the INVITE is one more request: one more 407,
    // with the same To tag so the caller's ACK matches either.
    uas.handle_inbound(now.advanced(Duration::from_millis(500)), udp(invite));
    let again = sent(&mut uas);
    assert_eq!(again.len(), 1);
    assert_eq!(status_of(&again[0].1), "407");
    let to_of = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("To:"))
            .map(str::to_owned)
    };
    assert_eq!(to_of(&again[0].1), to_of(&out[0].1));
    let tag = to_of(&out[0].1)
        .and_then(|to| to.split(";tag=").nth(1).map(str::to_owned))
        .expect("the 407 has a To tag");
    let ack = invite
        .replace("INVITE sip", "ACK sip")
        .replace("CSeq: 1 INVITE", "CSeq: 1 ACK")
        .replace(
            "To: <sip:bob@example.com>",
            &format!("To: <sip:bob@example.com>;tag={tag}"),
        );
    uas.handle_inbound(now.advanced(Duration::from_secs(1)), udp(&ack));
    assert!(sent(&mut uas).is_empty(), "the ACK is absorbed");
    assert_eq!(uas.transactions(), 0);
}

#[test]
fn register_challenges_leave_no_transaction_behind() {
    let store = MemoryStore::default();
    let mut uas = digest_core(&store);
    let now = Now::current();
    for i in 0..100 {
        uas.handle_inbound(
            now,
            register(
                &format!("r{i}"),
                &format!("c{i}"),
                1,
                "sip:alice@192.0.2.10:5062",
            ),
        );
    }
    let out = sent(&mut uas);
    assert_eq!(out.len(), 100);
    assert!(out.iter().all(|(_, text)| status_of(text) == "401"));
    assert_eq!(uas.transactions(), 0);
    assert!(store.records().is_empty());
}

#[test]
fn a_wrong_guess_for_a_user_guessed_at_elsewhere_is_answered_late() {
    use crate::auth::{ha1, response, Algorithm, Credentials, LockoutConfig};
    let users = Users::parse(
        std::path::Path::new("users.toml"),
        "[[user]]\nname = \"alice\"\npassword = \"right\"\n",
        "test",
    )
    .expect("test users parse");
    let mut config = AuthConfig::digest("test", vec![7; 32]);
    config.lockout = LockoutConfig {
        max_failures: 1,
        user_delay: Duration::from_secs(2),
        ..LockoutConfig::default()
    };
    let store = MemoryStore::default();
    let mut uas = Uas::new(
        test_config(),
        Registrar::new(RegistrarConfig::default()),
        Authenticator::new(config, users),
        Box::new(store.clone()),
    );
    let now = Now::current();
    // A guess from `source` with `password`, on a fresh nonce.
    let guess = |uas: &mut Uas, branch: &str, source: &str, password: &str| {
        uas.handle_inbound(
            now,
            register(branch, branch, 1, "sip:alice@192.0.2.10:5062"),
        );
        let challenge = sent(uas).pop().expect("a challenge").1;
        let offer = challenge
            .lines()
            .find(|l| l.starts_with("WWW-Authenticate:") && l.contains("MD5"))
            .expect("an MD5 challenge")
            .trim_start_matches("WWW-Authenticate:")
            .to_owned();
        let nonce = Credentials::parse(&offer)
            .expect("challenge parses")
            .get("nonce")
            .expect("nonce")
            .to_owned();
        let ha1 = ha1(Algorithm::Md5, "alice", "test", password);
        let response = response(
            Algorithm::Md5,
            &ha1,
            &nonce,
            "00000001",
            "c",
            "REGISTER",
            "sip:example.com",
        );
        let mut inbound = register(
            &format!("{branch}b"),
            branch,
            2,
            "sip:alice@192.0.2.10:5062",
        );
        let text = String::from_utf8(inbound.bytes).expect("UTF-8").replace(
            "Content-Length: 0",
            &format!(
                "Authorization: Digest username=\"alice\", realm=\"test\", nonce=\"{nonce}\", \
                 uri=\"sip:example.com\", response=\"{response}\", algorithm=MD5, qop=auth, \
                 nc=00000001, cnonce=\"c\"\r\nContent-Length: 0"
            ),
        );
        inbound.bytes = text.into_bytes();
        inbound.flow = Flow::Udp {
            remote: source.parse().expect("address"),
        };
        uas.handle_inbound(now, inbound);
        commit(uas, now);
        sent(uas)
    };
    let first = guess(&mut uas, "g1", "198.51.100.1:5060", "wrong");
    assert_eq!(first.len(), 1, "the first failure is answered at once");
    assert_eq!(status_of(&first[0].1), "401");
    // alice has had her one failure: a wrong guess from elsewhere waits 2 s.
    assert!(guess(&mut uas, "g2", "198.51.100.2:5060", "wrong").is_empty());
    assert_eq!(
        uas.poll_timeout(now),
        Some(now.instant + Duration::from_secs(2))
    );
    uas.handle_timeout(now.advanced(Duration::from_millis(1999)));
    assert!(sent(&mut uas).is_empty());
    uas.handle_timeout(now.advanced(Duration::from_secs(2)));
    let late = sent(&mut uas);
    assert_eq!(late.len(), 1);
    assert_eq!(status_of(&late[0].1), "401");
    // Her right password from a third source is answered at once.
    let right = guess(&mut uas, "g3", "198.51.100.3:5060", "right");
    assert_eq!(right.len(), 1);
    assert_eq!(status_of(&right[0].1), "200", "{}", right[0].1);
}

#[test]
fn a_register_over_a_stream_holds_its_connection_open_for_the_registration() {
    let store = MemoryStore::default();
    let mut uas = core(&store, 100);
    let now = Now::current();
    let connection = crate::transport::ConnectionId::for_test(3);
    let mut inbound = register(
        "s1",
        "c-stream",
        1,
        "sip:alice@192.0.2.10:5062;transport=tcp",
    );
    inbound.flow = Flow::Stream {
        kind: crate::transport::Stream::Tcp,
        remote: SOURCE.parse().expect("address"),
        connection,
    };
    uas.handle_inbound(now, inbound);
    commit(&mut uas, now);
    let outputs: Vec<Output> = std::iter::from_fn(|| uas.poll_output()).collect();
    let holds: Vec<(crate::transport::ConnectionId, Instant)> = outputs
        .iter()
        .filter_map(|o| match o {
            Output::HoldOpen(connection, until) => Some((*connection, *until)),
            _ => None,
        })
        .collect();
    // Expires 600, and 30 s for the refresh to arrive.
    assert_eq!(
        holds,
        vec![(connection, now.instant + Duration::from_secs(630))]
    );
    assert!(outputs.iter().any(|o| matches!(o, Output::Transmit(_))));

    // Over UDP nothing is held.
    uas.handle_inbound(now, register("u1", "c-udp", 1, "sip:alice@192.0.2.10:5062"));
    commit(&mut uas, now);
    assert!(!std::iter::from_fn(|| uas.poll_output()).any(|o| matches!(o, Output::HoldOpen(..))));
}
