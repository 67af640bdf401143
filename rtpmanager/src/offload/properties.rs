//! The offload decision under random input orders: what its commands put
//! in the kernel is only ever a direction from a bridged, locked leg, and
//! what ends up installed depends on the final state only.

use crate::media::rtp::PayloadType;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Instant;

use super::*;
use crate::media::g711::Law;
use crate::media::rtp::Ssrc;
use crate::relay::Transcode;

use switchboard_testkit::Rng;

const LEGS: u64 = 4;
const KINDS_BOTH: [StreamKind; 2] = [StreamKind::Rtp, StreamKind::Rtcp];

fn leg_ref(slot: Slot) -> LegRef {
    LegRef {
        call_id: Arc::from("call"),
        leg_id: Arc::from(format!("leg{slot}")),
    }
}

/// A peer address, now and then of the other family.
fn peer(rng: &mut Rng) -> SocketAddr {
    let port = 40_000 + rng.below(4) as u16;
    if rng.one_in(10) {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port)
    } else {
        SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, rng.below(3) as u8)),
            port,
        )
    }
}

fn rewrite(rng: &mut Rng) -> Rewrite {
    match rng.below(3) {
        0 => Rewrite::Unchanged,
        1 => Rewrite::Unanchored,
        _ => Rewrite::Anchored {
            source: Ssrc(rng.next_u64() as u32),
            ssrc: Ssrc(rng.next_u64() as u32),
            sequence_offset: rng.next_u64() as u16,
            timestamp_offset: rng.next_u64() as u32,
        },
    }
}

fn random_leg(rng: &mut Rng, slot: Slot) -> OffloadLeg {
    let optional = |rng: &mut Rng| (!rng.one_in(4)).then(|| peer(rng));
    OffloadLeg {
        leg: leg_ref(slot),
        // Now and then a leg on an interface where nothing is attached.
        kernel: !rng.one_in(6),
        // Distinct per slot, so every direction has its own kernel key.
        local_rtp: SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            30_000 + 2 * slot as u16,
        ),
        params: LegParams {
            expected_rtp: optional(rng),
            expected_rtcp: optional(rng),
            rtcp_mux: rng.one_in(4),
            strict_source: rng.one_in(2),
            forward_to: (!rng.one_in(4)).then(|| rng.below(LEGS) as Slot),
            transcode: rng.one_in(8).then_some(Transcode {
                from: Law::Ulaw,
                to: Law::Alaw,
                payload_type: PayloadType::PCMA,
            }),
            inbound_paused: rng.one_in(8),
            clock_rate: 8000,
            telephone_event: (!rng.one_in(8)).then_some(PayloadType::new(101)).flatten(),
            ..LegParams::default()
        },
        rewrite: rewrite(rng),
    }
}

/// What the test knows of a leg from the inputs it gave.
#[derive(Clone, Debug)]
struct ModelLeg {
    input: OffloadLeg,
    latched: [Option<SocketAddr>; 2],
    locked: [bool; 2],
}

fn index(kind: StreamKind) -> usize {
    match kind {
        StreamKind::Rtp => 0,
        StreamKind::Rtcp => 1,
    }
}

/// Applies the decision's commands to a model of the kernel map, checking
/// each against what the map holds.
fn drain(o: &mut Offload, kernel: &mut BTreeMap<Direction, (ForwardKey, ForwardEntry)>, at: &str) {
    while let Some(command) = o.poll_command() {
        match command {
            OffloadCommand::Install {
                direction,
                key,
                entry,
                fresh,
            } => {
                let before = kernel.insert(direction, (key, entry));
                assert_eq!(fresh, before.is_none(), "{at}: fresh iff not installed");
                if let Some((old_key, _)) = before {
                    assert_eq!(old_key, key, "{at}: a new key is removed first");
                }
            }
            OffloadCommand::Remove {
                direction,
                key,
                stats_slot,
            } => {
                let (old_key, old_entry) = kernel
                    .remove(&direction)
                    .unwrap_or_else(|| panic!("{at}: removing {direction:?}, not installed"));
                assert_eq!(old_key, key, "{at}: removed key");
                assert_eq!(old_entry.stats_slot, stats_slot, "{at}: removed stats slot");
            }
        }
    }
    while o.poll_event().is_some() {}
}

/// The invariant: an entry only for a direction whose leg exists, arrives
/// on an interface with the fast path, is bridged to a leg that exists,
/// and is locked to the entry's expected source; never two entries under
/// one key.
fn check(
    o: &Offload,
    model: &BTreeMap<Slot, ModelLeg>,
    kernel: &BTreeMap<Direction, (ForwardKey, ForwardEntry)>,
    at: &str,
) {
    let mut keys = std::collections::HashSet::new();
    for (direction, (key, entry)) in kernel {
        let leg = model
            .get(&direction.from)
            .unwrap_or_else(|| panic!("{at}: {direction:?} installed for a removed leg"));
        let to = leg
            .input
            .params
            .forward_to
            .unwrap_or_else(|| panic!("{at}: {direction:?} installed for an unbridged leg"));
        assert!(
            model.contains_key(&to),
            "{at}: {direction:?} installed towards removed leg {to}"
        );
        assert!(
            leg.input.kernel,
            "{at}: {direction:?} installed for a leg whose packets the kernel never sees"
        );
        let k = index(direction.kind);
        assert!(
            leg.locked[k],
            "{at}: {direction:?} installed while not locked"
        );
        assert_eq!(
            leg.latched[k],
            Some(entry.expected()),
            "{at}: {direction:?} expects a source that is not the latched one"
        );
        assert!(keys.insert(*key), "{at}: two entries under one key");
    }
    let installed: Vec<Direction> = o.installed().into_iter().map(|(d, _)| d).collect();
    let commanded: Vec<Direction> = kernel.keys().copied().collect();
    assert_eq!(
        installed, commanded,
        "{at}: the commands say what is installed"
    );
}

/// The installed entries, stats slots aside (they depend on the history).
fn entries(kernel: &BTreeMap<Direction, (ForwardKey, ForwardEntry)>) -> Vec<String> {
    kernel
        .iter()
        .map(|(d, (k, e))| {
            let mut e = *e;
            e.stats_slot = 0;
            format!("{d:?} {k:?} {e:?}")
        })
        .collect()
}

#[test]
fn no_kernel_entry_for_a_leg_not_bridged_and_locked_whatever_the_input_order() {
    let now = Instant::now();
    for seed in 0..400 {
        let mut rng = Rng(seed);
        let mut o = Offload::new(true);
        let mut model: BTreeMap<Slot, ModelLeg> = BTreeMap::new();
        let mut kernel = BTreeMap::new();
        for step in 0..120 {
            let slot = rng.below(LEGS) as Slot;
            let kind = KINDS_BOTH[rng.below(2) as usize];
            let at = format!("seed {seed} step {step}");
            match rng.below(8) {
                0 | 1 => {
                    let input = random_leg(&mut rng, slot);
                    o.handle_leg(now, slot, input.clone());
                    let leg = model.entry(slot).or_insert_with(|| ModelLeg {
                        input: input.clone(),
                        latched: [None; 2],
                        locked: [false; 2],
                    });
                    leg.input = input;
                }
                2 | 3 => {
                    let source = peer(&mut rng);
                    o.handle_latched(now, &leg_ref(slot), kind, source);
                    if let Some(leg) = model.get_mut(&slot) {
                        leg.latched[index(kind)] = Some(source);
                        leg.locked[index(kind)] = true;
                    }
                }
                4 => {
                    let source = peer(&mut rng);
                    o.handle_candidate(now, &leg_ref(slot), kind, source);
                    if let Some(leg) = model.get_mut(&slot) {
                        leg.latched[index(kind)] = Some(source);
                        leg.locked[index(kind)] = false;
                    }
                }
                5 => {
                    let (rtp, rtcp) = (
                        rng.one_in(2).then(|| peer(&mut rng)),
                        rng.one_in(2).then(|| peer(&mut rng)),
                    );
                    o.handle_learning(now, &leg_ref(slot), rtp, rtcp);
                    if let Some(leg) = model.get_mut(&slot) {
                        leg.latched = [rtp, rtcp];
                        leg.locked = [false; 2];
                    }
                }
                6 => {
                    let r = rewrite(&mut rng);
                    o.handle_rewrite(now, &leg_ref(slot), r);
                    if let Some(leg) = model.get_mut(&slot) {
                        leg.input.rewrite = r;
                    }
                }
                _ if rng.one_in(3) => {
                    // The driver failed to install: the direction stays out.
                    if let Some(&direction) = kernel.keys().next() {
                        o.forget_installed(direction);
                        kernel.remove(&direction);
                    }
                }
                _ => {
                    o.handle_leg_removed(now, slot);
                    model.remove(&slot);
                }
            }
            drain(&mut o, &mut kernel, &at);
            check(&o, &model, &kernel, &at);
        }

        // Order independence: touching every leg once more (so directions
        // a failed install left out are tried again) gives what a decision
        // fed only the final state installs.
        let at = format!("seed {seed} final");
        for (slot, leg) in &model {
            o.handle_leg(now, *slot, leg.input.clone());
        }
        drain(&mut o, &mut kernel, &at);
        check(&o, &model, &kernel, &at);
        let mut replay = Offload::new(true);
        let mut replay_kernel = BTreeMap::new();
        for (slot, leg) in &model {
            replay.handle_leg(now, *slot, leg.input.clone());
        }
        for (slot, leg) in &model {
            let r = leg_ref(*slot);
            replay.handle_learning(now, &r, leg.latched[0], leg.latched[1]);
            for kind in KINDS_BOTH {
                if let (Some(source), true) = (leg.latched[index(kind)], leg.locked[index(kind)]) {
                    replay.handle_latched(now, &r, kind, source);
                }
            }
        }
        drain(&mut replay, &mut replay_kernel, &at);
        check(&replay, &model, &replay_kernel, &at);
        assert_eq!(
            entries(&kernel),
            entries(&replay_kernel),
            "{at}: the history changed what is installed"
        );
    }
}

/// Found by the property above: a leg removed, added again and removed
/// again must take out the direction still bridged into it each time. The
/// first removal dropped the set of legs forwarding into the slot, so the
/// second one left the feeder's entry sending out of a deleted leg.
#[test]
fn a_leg_removed_again_takes_out_the_direction_still_bridged_into_it() {
    let now = Instant::now();
    let leg = |slot: Slot, to: Slot| OffloadLeg {
        leg: leg_ref(slot),
        kernel: true,
        local_rtp: SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            30_000 + 2 * slot as u16,
        ),
        params: LegParams {
            expected_rtp: Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)),
                40_000 + slot as u16,
            )),
            forward_to: Some(to),
            clock_rate: 8000,
            ..LegParams::default()
        },
        rewrite: Rewrite::Unchanged,
    };
    let source = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 40_000);
    let mut o = Offload::new(true);
    o.handle_leg(now, 0, leg(0, 1));
    o.handle_leg(now, 1, leg(1, 0));
    o.handle_latched(now, &leg_ref(0), StreamKind::Rtp, source);
    assert!(o.offloaded(0), "a's RTP is in once latched, b known");
    o.handle_leg_removed(now, 1);
    assert!(!o.offloaded(0), "out when b goes");
    o.handle_leg(now, 1, leg(1, 0));
    assert!(o.offloaded(0), "in again when b is back");
    o.handle_leg_removed(now, 1);
    assert!(!o.offloaded(0), "out again when b goes again");
    assert_eq!(o.installed(), vec![], "nothing towards the removed leg");
}
