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
//!
//! [`TwoSidedBed`] is the relay of an SBC: caller and callee each on a
//! network of their own, reaching the relay on its own interface (`a0`,
//! `b0`), with no path between them but through the relay.

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

/// Three namespaces, caller — relay — callee, the relay with one interface
/// per side (`a0` towards the caller, `b0` towards the callee), each side
/// its own subnet: the peers have no route to each other, so every packet
/// between them is the relay's. Deleted by name on drop.
pub struct TwoSidedBed {
    pub family: Family,
    pub caller: String,
    pub callee: String,
    pub relay: String,
}

pub const A0_MAC: &str = "02:00:00:06:0a:01";
pub const B0_MAC: &str = "02:00:00:06:0b:01";
pub const SIDE_CALLER_MAC: &str = "02:00:00:06:0a:02";
pub const SIDE_CALLEE_MAC: &str = "02:00:00:06:0b:02";

impl TwoSidedBed {
    /// The relay's address on `a0` (the caller's side).
    pub fn relay_a(&self) -> IpAddr {
        self.ip("10.206.1.1", "fd00:206:1::1")
    }

    /// The relay's address on `b0` (the callee's side).
    pub fn relay_b(&self) -> IpAddr {
        self.ip("10.206.2.1", "fd00:206:2::1")
    }

    /// The caller's media socket.
    pub fn caller_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip("10.206.1.2", "fd00:206:1::2"), 41000)
    }

    /// The callee's media socket.
    pub fn callee_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip("10.206.2.2", "fd00:206:2::2"), 40000)
    }

    fn ip(&self, v4: &str, v6: &str) -> IpAddr {
        match self.family {
            Family::V4 => v4,
            Family::V6 => v6,
        }
        .parse()
        .expect("literal")
    }

    /// A bed of `family`; `tag` tells its namespaces from other tests'.
    pub fn new(family: Family, tag: &str) -> TwoSidedBed {
        let pid = std::process::id();
        let tag = match family {
            Family::V4 => tag.to_owned(),
            Family::V6 => format!("6{tag}"),
        };
        let bed = TwoSidedBed {
            family,
            caller: format!("sbt{pid}{tag}c"),
            callee: format!("sbt{pid}{tag}e"),
            relay: format!("sbt{pid}{tag}r"),
        };
        let sysctl =
            |ns: &str, setting: &str| sh(&["ip", "netns", "exec", ns, "sysctl", "-qw", setting]);
        for ns in [&bed.caller, &bed.callee, &bed.relay] {
            sh(&["ip", "netns", "add", ns]);
            for conf in ["all", "default"] {
                match family {
                    Family::V4 => sysctl(ns, &format!("net.ipv6.conf.{conf}.disable_ipv6=1")),
                    Family::V6 => {
                        sysctl(ns, &format!("net.ipv6.conf.{conf}.accept_dad=0"));
                        sysctl(ns, &format!("net.ipv6.conf.{conf}.router_solicitations=0"));
                    }
                }
            }
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let r = bed.relay.as_str();
        for (peer_ns, dev, relay_dev, peer_mac, relay_mac, peer_ip, relay_ip) in [
            (
                &bed.caller,
                "c0",
                "a0",
                SIDE_CALLER_MAC,
                A0_MAC,
                bed.caller_addr().ip(),
                bed.relay_a(),
            ),
            (
                &bed.callee,
                "e0",
                "b0",
                SIDE_CALLEE_MAC,
                B0_MAC,
                bed.callee_addr().ip(),
                bed.relay_b(),
            ),
        ] {
            sh(&[
                "ip", "-n", r, "link", "add", relay_dev, "type", "veth", "peer", "name", dev,
                "netns", peer_ns,
            ]);
            sh(&[
                "ip", "-n", r, "link", "set", relay_dev, "address", relay_mac,
            ]);
            sh(&["ip", "-n", peer_ns, "link", "set", dev, "address", peer_mac]);
            for (ns, d, ip) in [(r, relay_dev, relay_ip), (peer_ns.as_str(), dev, peer_ip)] {
                let cidr = format!("{ip}/{}", family.prefix_len());
                let mut add = vec!["ip", "-n", ns, "addr", "add", &cidr, "dev", d];
                if family == Family::V6 {
                    add.push("nodad");
                }
                sh(&add);
                sh(&["ip", "-n", ns, "link", "set", d, "up"]);
            }
            // Senders compute full UDP checksums, as a real NIC delivers them.
            sh(&[
                "ip", "netns", "exec", peer_ns, "ethtool", "-K", dev, "tx", "off",
            ]);
            let (peer_ip, relay_ip) = (peer_ip.to_string(), relay_ip.to_string());
            for (ns, d, ip, mac) in [
                (peer_ns.as_str(), dev, relay_ip.as_str(), relay_mac),
                (r, relay_dev, peer_ip.as_str(), peer_mac),
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
                    d,
                    "nud",
                    "permanent",
                ]);
            }
        }
        bed
    }

    /// In native mode a frame redirected out of a veth is delivered only
    /// when its peer runs an XDP program: the fast path's own program with
    /// a media range nothing uses, which passes everything, on both peers'
    /// devices. Detached when dropped.
    pub fn xdp_peer_pass(&self, mode: Mode) -> Vec<FastPath> {
        if mode != Mode::XdpNative {
            return Vec::new();
        }
        [(&self.caller, "c0"), (&self.callee, "e0")]
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
}

impl Drop for TwoSidedBed {
    fn drop(&mut self) {
        for ns in [&self.caller, &self.callee, &self.relay] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
