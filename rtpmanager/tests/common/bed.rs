//! The network namespaces of the manager's kernel-path tests over gRPC
//! (`offload_netns.rs`, which includes this file with `#[path]`; it is not
//! part of `common/mod.rs`): caller ⇄ relay ⇄ callee in one address family,
//! and the helpers to run code inside them.
//!
//! The three hosts hang off a bridge in a fourth namespace, so the relay has
//! one media interface (`r0`) and forwards by hairpin, as on a one-NIC media
//! server. Senders put complete UDP checksums on the wire (`tx off`), as a
//! real NIC delivers them: with veth checksum offload the programs would see
//! partial checksums. Neighbours are static, so nothing depends on ARP or
//! neighbour discovery timing.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;

use switchboard_rtpmanager::config::FastPathRequest;
use switchboard_rtpmanager::fastpath::{self, FastPath, Mode, Settings};

use crate::kernel::{addr, sh, spawn_in_ns};

pub const RELAY_IP: &str = "10.205.0.1";
pub const CALLER: &str = "10.205.0.2:41000";
pub const CALLEE: &str = "10.205.0.3:40000";
pub const RELAY_IP6: &str = "fd00:205::1";
pub const CALLER6: &str = "[fd00:205::2]:41000";
pub const CALLEE6: &str = "[fd00:205::3]:40000";
pub const CALLER_MAC: &str = "02:00:00:05:00:02";
pub const CALLEE_MAC: &str = "02:00:00:05:00:03";
pub const RELAY_MAC: &str = "02:00:00:05:00:01";

/// The address family of a test bed: its hosts have addresses of that
/// family only, and the manager advertises the relay's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The relay's address on `r0`, which the manager advertises.
    pub fn relay_ip(self) -> IpAddr {
        match self {
            Family::V4 => RELAY_IP,
            Family::V6 => RELAY_IP6,
        }
        .parse()
        .expect("literal")
    }

    /// The caller's socket.
    pub fn caller(self) -> SocketAddr {
        addr(match self {
            Family::V4 => CALLER,
            Family::V6 => CALLER6,
        })
    }

    /// The callee's socket.
    pub fn callee(self) -> SocketAddr {
        addr(match self {
            Family::V4 => CALLEE,
            Family::V6 => CALLEE6,
        })
    }

    pub fn prefix_len(self) -> u8 {
        match self {
            Family::V4 => 24,
            Family::V6 => 64,
        }
    }

    /// The `/proc/sys/net/<family>` directory name.
    pub fn sysctl(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// Bridge namespace with ports to caller (c0), callee (e0) and relay (r0);
/// deleted by name on drop. Every host has addresses of one family only
/// (the IPv4 bed has no IPv6 at all); the relay namespace does not forward
/// until the manager turns it on (`--enable-forwarding`).
pub struct TestBed {
    pub bridge: String,
    pub caller: String,
    pub callee: String,
    pub relay: String,
}

impl TestBed {
    /// An IPv4 bed; `tag` tells its namespaces from other tests'.
    pub fn new(tag: &str) -> TestBed {
        TestBed::of(Family::V4, tag)
    }

    /// A bed of `family`; its namespace names carry the family too.
    pub fn of(family: Family, tag: &str) -> TestBed {
        let pid = std::process::id();
        let tag = match family {
            Family::V4 => tag.to_owned(),
            Family::V6 => format!("6{tag}"),
        };
        let bed = TestBed {
            bridge: format!("sbo{pid}{tag}b"),
            caller: format!("sbo{pid}{tag}c"),
            callee: format!("sbo{pid}{tag}e"),
            relay: format!("sbo{pid}{tag}r"),
        };
        let sysctl =
            |ns: &str, setting: &str| sh(&["ip", "netns", "exec", ns, "sysctl", "-qw", setting]);
        for ns in [&bed.bridge, &bed.caller, &bed.callee, &bed.relay] {
            sh(&["ip", "netns", "add", ns]);
            for conf in ["all", "default"] {
                match family {
                    Family::V4 => sysctl(ns, &format!("net.ipv6.conf.{conf}.disable_ipv6=1")),
                    // No DAD probes or router solicitations; MLD reports
                    // still go out and are not the test's to count.
                    Family::V6 => {
                        sysctl(ns, &format!("net.ipv6.conf.{conf}.accept_dad=0"));
                        sysctl(ns, &format!("net.ipv6.conf.{conf}.router_solicitations=0"));
                    }
                }
            }
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let b = bed.bridge.as_str();
        sh(&["ip", "-n", b, "link", "add", "br0", "type", "bridge"]);
        sh(&["ip", "-n", b, "link", "set", "br0", "up"]);
        for (ns, dev, port, mac, ip) in [
            (&bed.caller, "c0", "pc", CALLER_MAC, family.caller().ip()),
            (&bed.callee, "e0", "pe", CALLEE_MAC, family.callee().ip()),
            (&bed.relay, "r0", "pr", RELAY_MAC, family.relay_ip()),
        ] {
            sh(&[
                "ip", "-n", b, "link", "add", port, "type", "veth", "peer", "name", dev, "netns",
                ns,
            ]);
            sh(&["ip", "-n", b, "link", "set", port, "master", "br0", "up"]);
            sh(&["ip", "-n", ns, "link", "set", dev, "address", mac]);
            let cidr = format!("{ip}/{}", family.prefix_len());
            let mut add = vec!["ip", "-n", ns, "addr", "add", &cidr, "dev", dev];
            if family == Family::V6 {
                add.push("nodad");
            }
            sh(&add);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        // Senders compute full UDP checksums, as a real NIC delivers them.
        for (ns, dev) in [(&bed.caller, "c0"), (&bed.callee, "e0")] {
            sh(&["ip", "netns", "exec", ns, "ethtool", "-K", dev, "tx", "off"]);
        }
        // Static neighbours: no ARP or neighbour discovery, no dependence on
        // its timing.
        let (relay_ip, caller_ip, callee_ip) = (
            family.relay_ip().to_string(),
            family.caller().ip().to_string(),
            family.callee().ip().to_string(),
        );
        for (ns, dev, ip, mac) in [
            (&bed.caller, "c0", &relay_ip, RELAY_MAC),
            (&bed.callee, "e0", &relay_ip, RELAY_MAC),
            (&bed.relay, "r0", &caller_ip, CALLER_MAC),
            (&bed.relay, "r0", &callee_ip, CALLEE_MAC),
        ] {
            sh(&[
                "ip",
                "-n",
                ns,
                "neigh",
                "replace",
                ip,
                "lladdr",
                mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
        }
        bed
    }
}

impl TestBed {
    /// In native mode, XDP_TX out of a veth is delivered only when the
    /// peer runs an XDP program: on the bridge's port facing the relay, the
    /// fast path's own program with a media range nothing uses, which
    /// passes everything. Detached when dropped.
    pub fn xdp_peer_pass(&self, mode: Mode) -> Option<FastPath> {
        (mode == Mode::XdpNative).then(|| {
            let settings = Settings {
                request: FastPathRequest::Xdp,
                interface: "pr".into(),
                port_min: 1,
                port_max: 1,
                next_hop_cache: fastpath::DEFAULT_NEXT_HOP_CACHE,
            };
            let pass = spawn_in_ns(&self.bridge, move || FastPath::start(&settings))
                .join()
                .expect("peer pass program");
            assert_eq!(
                pass.mode(),
                Mode::XdpNative,
                "pass-all XDP on the peer: {}",
                pass.reason()
            );
            pass
        })
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        for ns in [&self.bridge, &self.caller, &self.callee, &self.relay] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
