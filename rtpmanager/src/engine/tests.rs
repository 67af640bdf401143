//! Whole call phases through the engine's `handle_*` inputs and
//! `poll_command` output, with a stepped clock and a binder without
//! sockets (quinn's `Pair` idea: nothing here touches the network).

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::ports::{Binder, PortPool, RtpPort};
use crate::session::{LegOptions, TableConfig, TableInterface};

const OFFER: &str = "v=0\r\no=alice 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\n";
const ANSWER: &str =
    "v=0\r\no=bob 5 1 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\n\
m=audio 50000 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";
const BASE: u16 = 30000;

/// Binds nothing; refuses the ports another process "holds".
#[derive(Clone, Debug, Default)]
struct FakeBinder {
    held: Arc<Mutex<HashSet<u16>>>,
    bound: Arc<Mutex<Vec<u16>>>,
}

impl Binder for FakeBinder {
    fn bind(&mut self, _: IpAddr, port: RtpPort, _: bool) -> io::Result<()> {
        if self.held.lock().expect("held").contains(&port.get()) {
            return Err(io::Error::from(io::ErrorKind::AddrInUse));
        }
        self.bound.lock().expect("bound").push(port.get());
        Ok(())
    }

    fn unbind(&mut self, _: IpAddr, _: RtpPort) {}
}

/// The engine with a stepped clock.
struct Harness {
    engine: Engine,
    binder: FakeBinder,
    now: Instant,
    unix_ms: u64,
}

fn config() -> TableConfig {
    TableConfig {
        advertise_v4: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)),
        advertise_v6: None,
        media_timeout: Duration::from_secs(30),
        hold_timeout: Duration::from_secs(3600),
        source_learning: Duration::from_secs(3),
        max_legs_per_call: 4,
    }
}

impl Harness {
    /// An engine over `pairs` port pairs from [`BASE`], the fast path on.
    fn new(pairs: u16) -> Harness {
        Harness::with_binder(pairs, FakeBinder::default())
    }

    fn with_binder(pairs: u16, binder: FakeBinder) -> Harness {
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let pool =
            PortPool::with_binder(localhost, BASE, BASE + 2 * pairs, Box::new(binder.clone()))
                .expect("pool");
        let engine = Engine::new(
            SessionTable::new(config(), pool),
            EngineConfig {
                offload: true,
                wire: HashMap::new(),
                kernel_devices: HashSet::from([String::new()]),
                relay_capacity_pps: 0,
            },
        );
        Harness {
            engine,
            binder,
            now: Instant::now(),
            unix_ms: 1_700_000_000_000,
        }
    }

    fn step(&mut self, d: Duration) {
        self.now += d;
        self.unix_ms += u64::try_from(d.as_millis()).expect("ms");
    }

    fn drain(&mut self) -> Vec<Command> {
        std::iter::from_fn(|| self.engine.poll_command()).collect()
    }

    /// Offer a→b, answer, bridge: a call ready for media. Returns the
    /// slots of a and b.
    fn call(&mut self, call: &str) -> (Slot, Slot) {
        let b = self
            .engine
            .handle_offer(self.now, self.unix_ms, offer_a_to_b(call))
            .expect("offer")
            .leg
            .slot;
        let a = self
            .engine
            .handle_answer(self.now, call, "b", "a", ANSWER)
            .expect("answer")
            .leg
            .slot;
        self.engine
            .handle_bridge(self.now, call, "a", "b", true)
            .expect("bridge");
        (a, b)
    }

    fn leg(&self, call: &str, leg: &str) -> LegRef {
        LegRef {
            call_id: Arc::from(call),
            leg_id: Arc::from(leg),
        }
    }

    /// The relay locked both peers' RTP sources.
    fn latch_both(&mut self, call: &str) {
        let (a, b) = (self.leg(call, "a"), self.leg(call, "b"));
        let (pa, pb) = (peer(10, 40000), peer(20, 50000));
        self.engine
            .handle_latched(self.now, &a, StreamKind::Rtp, pa, true);
        self.engine
            .handle_latched(self.now, &b, StreamKind::Rtp, pb, true);
    }
}

/// The Offer of leg a's peer, making legs a and b of `call`.
fn offer_a_to_b(call: &str) -> OfferInput<'_> {
    OfferInput {
        call,
        leg: "a",
        peer: "b",
        sdp: OFFER,
        options: LegOptions::default(),
        peer_options: LegOptions::default(),
    }
}

fn peer(host: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, host], port))
}

/// The names starting with `prefix`, sorted.
fn picked(names: &[String], prefix: &str) -> Vec<String> {
    let mut picked: Vec<String> = names
        .iter()
        .filter(|n| n.starts_with(prefix))
        .cloned()
        .collect();
    picked.sort();
    picked
}

fn sorted<const N: usize>(names: [String; N]) -> Vec<String> {
    let mut names = names.to_vec();
    names.sort();
    names
}

/// Each command as a short name, for order assertions.
fn names(commands: &[Command]) -> Vec<String> {
    commands
        .iter()
        .map(|c| match c {
            Command::KernelRemove(OffloadCommand::Remove { direction, .. }) => {
                format!("kernel-remove {}/{:?}", direction.from, direction.kind)
            }
            Command::KernelInstall(OffloadCommand::Install { direction, .. }) => {
                format!("kernel-install {}/{:?}", direction.from, direction.kind)
            }
            Command::KernelRemove(_) | Command::KernelInstall(_) => "kernel-misfiled".into(),
            Command::AddLeg { slot, .. } => format!("add {slot}"),
            Command::UpdateLeg { slot, .. } => format!("update {slot}"),
            Command::RemoveLeg { slot, .. } => format!("remove {slot}"),
            Command::Publish(Event::Offload(e)) => {
                format!("offload {} {}", e.from.leg_id, e.offloaded)
            }
            Command::Publish(Event::MediaTimeout { leg_id, idle, .. }) => {
                format!("media-timeout {leg_id} {}s", idle.as_secs())
            }
            Command::Publish(Event::Reaped { leg_id, idle, .. }) => {
                format!("reaped {leg_id} {}s", idle.as_secs())
            }
            Command::Publish(Event::Dtmf { .. }) => "dtmf".into(),
            Command::Persist => "persist".into(),
        })
        .collect()
}

#[test]
fn offer_answer_bridge_and_latches_put_both_directions_into_the_kernel() {
    let mut h = Harness::new(4);
    let (a, b) = h.call("c1");
    let setup = names(&h.drain());
    assert_eq!(
        setup.iter().filter(|c| c.starts_with("add ")).count(),
        2,
        "two legs handed to the relay: {setup:?}"
    );
    assert!(
        setup.iter().all(|c| !c.starts_with("kernel-install")),
        "nothing in the kernel before the sources lock: {setup:?}"
    );
    assert_eq!(setup.last().map(String::as_str), Some("persist"));

    h.latch_both("c1");
    let latched = names(&h.drain());
    assert_eq!(
        picked(&latched, "kernel-install"),
        sorted([
            format!("kernel-install {a}/Rtp"),
            format!("kernel-install {b}/Rtp")
        ]),
        "{latched:?}"
    );
    assert!(
        latched.contains(&"offload a true".to_owned()),
        "{latched:?}"
    );
    assert!(
        latched.contains(&"offload b true".to_owned()),
        "{latched:?}"
    );
    assert_eq!(latched.last().map(String::as_str), Some("persist"));
    assert!(h.engine.offloaded(a) && h.engine.offloaded(b));
    assert_eq!(h.engine.installed_keys().len(), 2);
}

#[test]
fn delete_takes_the_entries_out_of_the_kernel_before_the_relay_lets_go() {
    let mut h = Harness::new(4);
    let (a, b) = h.call("c1");
    h.latch_both("c1");
    h.drain();
    h.engine.handle_delete(h.now, "c1", "").expect("delete");
    let deleted = names(&h.drain());
    let first_remove = deleted
        .iter()
        .position(|c| c.starts_with("remove "))
        .expect("leg removes");
    let kernel_removes: Vec<usize> = deleted
        .iter()
        .enumerate()
        .filter(|(_, c)| c.starts_with("kernel-remove"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(kernel_removes.len(), 2, "{deleted:?}");
    assert!(
        kernel_removes.iter().all(|i| *i < first_remove),
        "{deleted:?}"
    );
    assert_eq!(
        picked(&deleted, "remove "),
        sorted([format!("remove {a}"), format!("remove {b}")])
    );
    assert_eq!(deleted.last().map(String::as_str), Some("persist"));
    assert!(h.engine.installed_keys().is_empty());
    assert_eq!(h.engine.table().calls(), 0);
    assert_eq!(h.engine.table().ports_free(), 4, "ports back in the pool");
}

#[test]
fn a_silent_call_is_reaped_once_its_media_timeout_has_passed() {
    let mut h = Harness::new(4);
    let (a, b) = h.call("c1");
    h.drain();
    let idle = Duration::from_secs(3600);
    h.step(Duration::from_secs(29));
    h.engine.handle_timeout(h.now, h.unix_ms, idle);
    assert_eq!(
        names(&h.drain()),
        Vec::<String>::new(),
        "29 s of silence is within 30 s"
    );

    h.step(Duration::from_secs(2));
    h.engine.handle_timeout(h.now, h.unix_ms, idle);
    let reaped = names(&h.drain());
    let events: Vec<&String> = reaped
        .iter()
        .filter(|c| c.starts_with("media-timeout") || c.starts_with("reaped"))
        .collect();
    assert_eq!(
        events,
        [
            "media-timeout a 31s",
            "reaped a 31s",
            "media-timeout b 31s",
            "reaped b 31s"
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect::<Vec<_>>()
        .iter()
        .collect::<Vec<_>>()
    );
    assert_eq!(
        picked(&reaped, "remove "),
        sorted([format!("remove {a}"), format!("remove {b}")])
    );
    assert_eq!(h.engine.table().calls(), 0);
}

#[test]
fn one_input_queues_one_save_however_many_changes_it_makes() {
    let mut h = Harness::new(4);
    h.call("c1");
    let commands = names(&h.drain());
    assert_eq!(
        commands.iter().filter(|c| *c == "persist").count(),
        1,
        "offer, answer and bridge undrained: one save covers them: {commands:?}"
    );
    h.latch_both("c1");
    h.engine.handle_anchored(h.now, &h.leg("c1", "a"));
    let commands = names(&h.drain());
    assert_eq!(
        commands.iter().filter(|c| *c == "persist").count(),
        1,
        "{commands:?}"
    );
}

#[test]
fn a_pair_that_cannot_be_bound_is_skipped_and_exhaustion_leaves_no_leg() {
    let binder = FakeBinder::default();
    binder.held.lock().expect("held").insert(BASE);
    let mut h = Harness::with_binder(3, binder);
    h.call("c1");
    let mut bound = h.binder.bound.lock().expect("bound").clone();
    bound.sort_unstable();
    assert_eq!(bound, [BASE + 2, BASE + 4], "the held pair is skipped");
    h.drain();

    let input = OfferInput {
        call: "c2",
        leg: "a",
        peer: "b",
        sdp: OFFER,
        options: LegOptions::default(),
        peer_options: LegOptions::default(),
    };
    let err = h
        .engine
        .handle_offer(h.now, h.unix_ms, input)
        .expect_err("no pair left");
    assert!(matches!(err, SessionError::Exhausted(_)), "{err}");
    assert!(
        names(&h.drain()).is_empty(),
        "a refused offer has no side effects"
    );
    assert_eq!(h.engine.table().calls(), 1);
    assert_eq!(h.engine.table().legs(), 2);
}

#[test]
fn a_refused_install_leaves_the_direction_in_userspace_until_the_next_input() {
    let mut h = Harness::new(4);
    let (a, _) = h.call("c1");
    h.drain();
    h.latch_both("c1");
    h.drain();
    h.engine.handle_install_failed(Direction {
        from: a,
        kind: StreamKind::Rtp,
    });
    assert!(!h.engine.offloaded(a), "the kernel refused it");
    assert_eq!(h.engine.installed_keys().len(), 1);
    // The peer's next report makes the decision try again.
    h.engine.handle_latched(
        h.now,
        &h.leg("c1", "a"),
        StreamKind::Rtp,
        peer(10, 40000),
        true,
    );
    let again = names(&h.drain());
    assert!(
        again.contains(&format!("kernel-install {a}/Rtp")),
        "{again:?}"
    );
}

#[test]
fn a_restarted_engine_derives_the_same_kernel_entries_from_the_saved_state() {
    let mut h = Harness::new(4);
    h.call("c1");
    h.latch_both("c1");
    h.drain();
    let saved = h.engine.saved();
    let mut keys = h.engine.installed_keys();

    let mut restarted = Harness::new(4);
    let restored = restarted
        .engine
        .handle_restore(restarted.now, restarted.unix_ms, &saved);
    assert_eq!(restored.legs, 2);
    assert!(restored.failed.is_empty());
    let commands = names(&restarted.drain());
    assert_eq!(
        commands.iter().filter(|c| c.starts_with("add ")).count(),
        2,
        "{commands:?}"
    );
    assert!(
        !commands.iter().any(|c| c.starts_with("update ")),
        "restored legs get their params with their Add: an Update would restart the relay's learning: {commands:?}"
    );
    assert_eq!(
        commands
            .iter()
            .filter(|c| c.starts_with("kernel-install"))
            .count(),
        2
    );
    let mut again = restarted.engine.installed_keys();
    keys.sort_by_key(|k| k.socket_addr());
    again.sort_by_key(|k| k.socket_addr());
    assert_eq!(again, keys);
    assert_eq!(restarted.engine.saved(), saved);
}

#[test]
fn the_route_to_the_offerer_picks_its_legs_media_interface() {
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let binder = FakeBinder::default();
    let interface = |name: &str, device: &str, base: u16, advertise: [u8; 4]| TableInterface {
        name: name.into(),
        device: device.into(),
        advertise_v4: Some(IpAddr::from(advertise)),
        advertise_v6: None,
        pool: PortPool::with_binder(localhost, base, base + 8, Box::new(binder.clone()))
            .expect("pool"),
    };
    let mut table = SessionTable::with_interfaces(
        config(),
        vec![
            interface("internal", "a0", BASE, [10, 0, 0, 1]),
            interface("external", "b0", BASE + 100, [203, 0, 113, 5]),
        ],
    );
    // The offerer is reached through b0; no routing table is read.
    table.set_route_lookup(Box::new(|_| {
        Some(crate::interfaces::Route {
            source: IpAddr::from([203, 0, 113, 5]),
            device: "b0".into(),
        })
    }));
    let mut engine = Engine::new(table, EngineConfig::default());
    let input = OfferInput {
        call: "c1",
        leg: "a",
        peer: "b",
        sdp: OFFER,
        options: LegOptions::default(),
        peer_options: LegOptions {
            interface: Some("internal".into()),
            ..LegOptions::default()
        },
    };
    let offer = engine
        .handle_offer(Instant::now(), 0, input)
        .expect("offer");
    assert_eq!(
        offer.leg.interface, "internal",
        "b where signaling names it"
    );
    assert!(offer.sdp.contains("c=IN IP4 10.0.0.1\r\n"), "{}", offer.sdp);
    let a = engine.table().leg_views("c1", "a").expect("leg a");
    assert_eq!(a[0].interface, "external", "a where its offerer is routed");
    assert!((BASE + 100..BASE + 108).contains(&a[0].rtp_port));
}

#[test]
fn offers_past_the_relay_capacity_are_refused_and_kernel_forwarded_legs_do_not_count() {
    let mut h = Harness::new(8);
    // Room for two userspace calls (four legs of 50 packets a second).
    h.engine.config.relay_capacity_pps = 4 * LEG_PPS;
    h.call("c1");
    h.call("c2");
    assert_eq!(
        h.engine.relay_load(),
        RelayLoad {
            committed_pps: 200,
            capacity_pps: 200,
            saturated: false,
        }
    );
    assert!(h.engine.relay_load().overloaded());
    match h.engine.handle_offer(h.now, h.unix_ms, offer_a_to_b("c3")) {
        Err(SessionError::Exhausted(reason)) => assert!(
            reason.contains("200 of 200 packets/s committed and this offer adds 100"),
            "{reason}"
        ),
        other => panic!("refused with RESOURCE_EXHAUSTED expected, got {other:?}"),
    }
    assert_eq!(h.engine.table().calls(), 2, "nothing of c3 was made");
    // A re-offer on legs that exist adds no load: it passes at capacity.
    h.engine
        .handle_offer(h.now, h.unix_ms, offer_a_to_b("c1"))
        .expect("a re-INVITE's offer");

    // c1's media goes into the kernel: its legs stop counting.
    h.latch_both("c1");
    let _ = h.drain();
    assert_eq!(h.engine.relay_load().committed_pps, 100);
    assert!(!h.engine.relay_load().overloaded());
    h.call("c3");
    assert_eq!(h.engine.relay_load().committed_pps, 200);

    // Capacity 0: no admission control.
    h.engine.config.relay_capacity_pps = 0;
    h.call("c4");
    assert!(!h.engine.relay_load().overloaded());
}

#[test]
fn a_relay_measured_saturated_refuses_new_calls_below_its_committed_capacity() {
    let mut h = Harness::new(8);
    h.engine.config.relay_capacity_pps = 80_000;
    h.call("c1");
    // The calls up bring far more than their legs count for (a flood):
    // the driver reports every worker saturated.
    h.engine.handle_relay_saturated(true);
    assert!(h.engine.relay_load().overloaded());
    match h.engine.handle_offer(h.now, h.unix_ms, offer_a_to_b("c2")) {
        Err(SessionError::Exhausted(reason)) => assert!(
            reason.contains("saturated") && reason.contains("100 of 80000 packets/s committed"),
            "{reason}"
        ),
        other => panic!("refused with RESOURCE_EXHAUSTED expected, got {other:?}"),
    }
    assert_eq!(h.engine.table().calls(), 1, "nothing of c2 was made");
    // The call up still re-negotiates.
    h.engine
        .handle_offer(h.now, h.unix_ms, offer_a_to_b("c1"))
        .expect("a re-INVITE's offer while saturated");
    // The load falls: calls are admitted again.
    h.engine.handle_relay_saturated(false);
    assert!(!h.engine.relay_load().overloaded());
    h.call("c2");
    assert_eq!(h.engine.table().calls(), 2);

    // Without admission control, saturation refuses nothing either.
    h.engine.config.relay_capacity_pps = 0;
    h.engine.handle_relay_saturated(true);
    assert!(!h.engine.relay_load().overloaded());
    h.call("c3");
}

fn saved_ids(save: &Save) -> (Vec<&str>, Vec<&str>) {
    let Save::Changes(changes) = save else {
        panic!("a save of changes, not everything: {save:?}");
    };
    (
        changes.calls.iter().map(|c| c.call_id.as_str()).collect(),
        changes.removed.iter().map(String::as_str).collect(),
    )
}

#[test]
fn a_save_carries_only_the_calls_changed_since_the_last() {
    let mut h = Harness::new(8);
    h.call("c1");
    h.call("c2");
    h.call("c3");
    h.drain();
    let Save::Everything(all) = h.engine.take_save(true) else {
        panic!("everything asked for");
    };
    assert_eq!(all.calls.len(), 3);
    assert_eq!(saved_ids(&h.engine.take_save(false)), (vec![], vec![]));

    h.latch_both("c1");
    h.drain();
    let save = h.engine.take_save(false);
    assert_eq!(saved_ids(&save), (vec!["c1"], vec![]), "a latch");
    let Save::Changes(changes) = &save else {
        unreachable!()
    };
    assert_eq!(
        changes.calls[0].legs[0].latched_rtp,
        Some(peer(10, 40000)),
        "with the latch the kernel decision has"
    );

    h.engine.handle_delete(h.now, "c2", "").expect("delete");
    h.engine
        .handle_offer(h.now, h.unix_ms, offer_a_to_b("c3"))
        .expect("re-offer");
    h.drain();
    assert_eq!(
        saved_ids(&h.engine.take_save(false)),
        (vec!["c3"], vec!["c2"]),
        "a re-offer and a deletion"
    );

    h.engine.handle_resync(h.now, Vec::new());
    h.drain();
    assert_eq!(
        saved_ids(&h.engine.take_save(false)),
        (vec!["c1", "c3"], vec![]),
        "latches re-read: every call"
    );
}

#[test]
fn the_saved_journal_reads_back_as_the_engine_state_after_every_change() {
    use crate::session::persist::{StateFile, StateLog};
    let dir = tempfile::tempdir().expect("temp dir");
    let file = StateFile::in_dir(dir.path()).expect("state dir");
    let mut log = StateLog::new(file.clone());
    let mut h = Harness::new(8);
    h.call("c1");
    h.call("c2");
    h.drain();
    log.save(&h.engine.take_save(true)).expect("snapshot");
    type Step = Box<dyn Fn(&mut Harness)>;
    let steps: Vec<(&str, Step)> = vec![
        ("latch c1", Box::new(|h| h.latch_both("c1"))),
        ("latch c2", Box::new(|h| h.latch_both("c2"))),
        (
            "c2 learns again",
            Box::new(|h| {
                let leg = h.leg("c2", "a");
                h.engine.handle_learning(h.now, &leg, None, None);
            }),
        ),
        (
            "a new call",
            Box::new(|h| {
                h.call("c3");
            }),
        ),
        (
            "a leg of c3 deleted",
            Box::new(|h| h.engine.handle_delete(h.now, "c3", "b").expect("delete")),
        ),
        (
            "c1 deleted",
            Box::new(|h| h.engine.handle_delete(h.now, "c1", "").expect("delete")),
        ),
        (
            "c1 again, by a new offer",
            Box::new(|h| {
                h.call("c1");
            }),
        ),
        (
            "unbridged",
            Box::new(|h| {
                h.engine
                    .handle_bridge(h.now, "c2", "a", "b", false)
                    .expect("unbridge");
            }),
        ),
    ];
    for (step, change) in steps {
        change(&mut h);
        h.drain();
        assert!(!log.wants_everything());
        log.save(&h.engine.take_save(false)).expect("append");
        assert_eq!(
            file.read().expect("readable").expect("saved"),
            h.engine.saved(),
            "after: {step}"
        );
    }
}
