//! The namespace beds of the manager's kernel-path tests over gRPC, from
//! switchboard-testkit's [`Bed`]: the one-interface bed of network 205
//! (caller ⇄ bridge ⇄ relay `r0`) and the two-sided bed of network 206
//! (caller — `a0` relay `b0` — callee), and the pass-all XDP program a
//! native-mode bed needs on the veth peers. Included with `#[path]` after
//! `common/kernel.rs`; not part of `common/mod.rs`.

use switchboard_rtpmanager::config::FastPathRequest;
use switchboard_rtpmanager::fastpath::{self, FastPath, Mode, Settings};
pub use switchboard_testkit::netns::{Bed, BedPlan, Family, Sides};

use switchboard_testkit::netns::spawn_in_ns;

/// The one-interface bed's addresses in IPv4, which most tests use.
pub const RELAY_IP: &str = "10.205.0.1";
pub const CALLER: &str = "10.205.0.2:41000";
pub const CALLEE: &str = "10.205.0.3:40000";

/// Caller, callee and relay on a bridge, the relay with one interface
/// (`r0`); forwarding off until the manager turns it on
/// (`--enable-forwarding`). `tag` tells its namespaces from other tests'.
pub fn one_interface(family: Family, tag: &str) -> Bed {
    let plan = BedPlan {
        family,
        sides: Sides::One,
        net: 205,
        forwarding: false,
    };
    Bed::new(plan, "sbo", tag)
}

/// Caller and callee each on a network of their own, reaching the relay
/// on `a0` and `b0`: every packet between them is the relay's.
pub fn two_interfaces(family: Family, tag: &str) -> Bed {
    let plan = BedPlan {
        family,
        sides: Sides::Two,
        net: 206,
        forwarding: false,
    };
    Bed::new(plan, "sbt", tag)
}

/// In native mode, a frame XDP transmits or redirects out of a veth is
/// delivered only when the peer runs an XDP program: the fast path's own
/// program with a media range nothing uses, which passes everything, on
/// the bridge's port facing the relay (one interface) or on both peers'
/// devices (two). Detached when dropped.
pub fn xdp_peer_pass(bed: &Bed, mode: Mode) -> Vec<FastPath> {
    if mode != Mode::XdpNative {
        return Vec::new();
    }
    let devices = match &bed.bridge {
        Some(bridge) => vec![(bridge, "pr")],
        None => vec![(&bed.caller, "c0"), (&bed.callee, "e0")],
    };
    devices
        .into_iter()
        .map(|(ns, dev)| {
            let settings = Settings {
                request: FastPathRequest::Xdp,
                interface: dev.into(),
                port_min: 1,
                port_max: 1,
                next_hop_cache: fastpath::DEFAULT_NEXT_HOP_CACHE,
            };
            let pass = spawn_in_ns(ns, move || FastPath::start(&settings))
                .join()
                .expect("peer pass program");
            assert_eq!(
                pass.mode(),
                Mode::XdpNative,
                "pass-all XDP on {dev}: {}",
                pass.reason()
            );
            pass
        })
        .collect()
}
