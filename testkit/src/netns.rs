//! Network-namespace test beds for the kernel-path tests and the media
//! bench: namespaces deleted by name on drop, veth pairs, static
//! neighbours, threads inside a namespace, and the two relay layouts every
//! test and bench builds, in either address family.
//!
//! - [`Sides::One`]: the relay has one media interface (`r0`) and forwards
//!   by hairpin, as on a one-NIC media server. Caller (`c0`), callee
//!   (`e0`) and relay hang off a bridge in a fourth namespace.
//! - [`Sides::Two`]: the relay of an SBC: caller and callee each on a
//!   network of their own, reaching the relay on its own interface (`a0`,
//!   `b0`), with no path between them but through the relay.
//!
//! Senders put complete UDP checksums on the wire (`tx off`), as a real
//! NIC delivers them: with veth checksum offload the programs would see
//! partial checksums. Neighbours are static, so nothing depends on ARP or
//! neighbour discovery timing. An IPv4 bed has no IPv6 at all; an IPv6 bed
//! sends no DAD probes or router solicitations (MLD reports still go out
//! and are not the tests' to count).
//!
//! Everything here runs `ip`, `sysctl` and `ethtool`, and needs root.

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;

/// The address family of a test bed: its hosts have addresses of that
/// family only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
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

/// Runs a command to completion (stdout discarded); panics unless it
/// succeeds.
pub fn sh(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(status.success(), "{args:?} failed: {status}");
}

/// A MAC address as `ip` writes it.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

extern "C" {
    fn setns(fd: i32, nstype: i32) -> i32;
}

/// Moves the calling thread into network namespace `ns` (namespaces are
/// per thread).
pub fn enter(ns: &str) {
    const CLONE_NEWNET: i32 = 0x4000_0000;
    let path = format!("/var/run/netns/{ns}");
    let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: setns(2) takes an open descriptor and a flag; it touches no
    // memory of ours.
    let rc = unsafe { setns(file.as_raw_fd(), CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "setns into {ns}: {}",
        std::io::Error::last_os_error()
    );
}

/// Runs `f` on a new thread inside network namespace `ns`.
pub fn spawn_in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        enter(&ns);
        f()
    })
}

/// Binds a UDP socket to a fixed address a socket of this process closed
/// a moment ago. The close frees the port only when the last reference to
/// the socket goes, and a child forked meanwhile by another thread (another
/// test running `ip` or `sysctl`) holds one until it execs, so an
/// immediate rebind can see `AddrInUse`; it is retried for up to a second.
pub fn bind_udp<A>(addr: A) -> std::net::UdpSocket
where
    A: std::net::ToSocketAddrs + std::fmt::Debug + Copy,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match std::net::UdpSocket::bind(addr) {
            Ok(socket) => return socket,
            Err(error)
                if error.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(error) => panic!("bind UDP {addr:?}: {error}"),
        }
    }
}

/// [`spawn_in_ns`] and wait for it, re-raising its panic.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in_ns(ns, f)
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// A network namespace, deleted by name on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Adds namespace `name` with loopback up; a name taken already is a
    /// failure (two tests must not share a namespace). With a family, its hosts are of that family only (see
    /// the module's doc); without, the kernel's defaults stay.
    pub fn add(name: &str, family: Option<Family>) -> Netns {
        sh(&["ip", "netns", "add", name]);
        let ns = Netns {
            name: name.to_owned(),
        };
        for conf in ["all", "default"] {
            match family {
                Some(Family::V4) => ns.sysctl(&format!("net.ipv6.conf.{conf}.disable_ipv6=1")),
                Some(Family::V6) => {
                    ns.sysctl(&format!("net.ipv6.conf.{conf}.accept_dad=0"));
                    ns.sysctl(&format!("net.ipv6.conf.{conf}.router_solicitations=0"));
                }
                None => {}
            }
        }
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME args…`.
    pub fn ip(&self, args: &[&str]) {
        sh(&[&["ip", "-n", &self.name], args].concat());
    }

    /// `ip netns exec NAME args…`.
    pub fn exec(&self, args: &[&str]) {
        sh(&[&["ip", "netns", "exec", &self.name], args].concat());
    }

    /// `sysctl -qw setting` inside.
    pub fn sysctl(&self, setting: &str) {
        self.exec(&["sysctl", "-qw", setting]);
    }

    /// Adds `ip/prefix` to `dev` (without duplicate address detection for
    /// IPv6) and sets `dev` up.
    pub fn address(&self, dev: &str, ip: IpAddr, prefix_len: u8) {
        let cidr = format!("{ip}/{prefix_len}");
        let mut add = vec!["addr", "add", &cidr, "dev", dev];
        if ip.is_ipv6() {
            add.push("nodad");
        }
        self.ip(&add);
        self.ip(&["link", "set", dev, "up"]);
    }

    /// A permanent neighbour entry: `ip` is at `mac` on `dev`.
    pub fn neighbour(&self, dev: &str, ip: IpAddr, mac: &str) {
        let ip = ip.to_string();
        self.ip(&[
            "neigh",
            "replace",
            &ip,
            "lladdr",
            mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ]);
    }

    /// Full UDP checksums from `dev`'s senders, as a real NIC delivers
    /// them (veth would leave them partial).
    pub fn checksums_on_the_wire(&self, dev: &str) {
        self.exec(&["ethtool", "-K", dev, "tx", "off"]);
    }

    /// The MAC address of `dev`.
    pub fn mac(&self, dev: &str) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-br", "link", "show", dev])
            .output()
            .expect("ip link show");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(2)
            .expect("MAC in ip -br output")
            .to_owned()
    }

    /// Runs `f` on a new thread inside this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        spawn_in_ns(&self.name, f)
    }

    /// Runs `f` on a thread inside this namespace and waits for it,
    /// re-raising its panic.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_ns(&self.name, f)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

impl std::ops::Deref for Netns {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Display for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl AsRef<str> for Netns {
    fn as_ref(&self) -> &str {
        &self.name
    }
}

/// A veth pair: `a_dev` in `a`, `b_dev` in `b`, both down, with the given
/// MAC addresses (the kernel's random ones when `None`). Created inside
/// `a`, so the names never meet another test's in the root namespace.
pub fn veth(
    a: &Netns,
    a_dev: &str,
    a_mac: Option<&str>,
    b: &Netns,
    b_dev: &str,
    b_mac: Option<&str>,
) {
    a.ip(&[
        "link",
        "add",
        a_dev,
        "type",
        "veth",
        "peer",
        "name",
        b_dev,
        "netns",
        b.name(),
    ]);
    if let Some(mac) = a_mac {
        a.ip(&["link", "set", a_dev, "address", mac]);
    }
    if let Some(mac) = b_mac {
        b.ip(&["link", "set", b_dev, "address", mac]);
    }
}

/// A namespace named `name` holding both ends of a veth pair, `v0` (with
/// `v0_mac`, or the kernel's) and its peer `v1`, for programs run with
/// BPF_PROG_TEST_RUN, whose route lookup runs in the caller's namespace:
/// `v0` has `addresses` (IPv6 without DAD), `neighbours` are permanent at
/// `neighbour_mac` on `v0`, and forwarding is on in both families.
pub fn lookup_namespace(
    name: &str,
    v0_mac: Option<&str>,
    addresses: &[(IpAddr, u8)],
    neighbours: &[IpAddr],
    neighbour_mac: &str,
) -> Netns {
    let ns = Netns::add(name, None);
    let mut add = vec!["link", "add", "v0"];
    if let Some(mac) = v0_mac {
        add.extend(["address", mac]);
    }
    add.extend(["type", "veth", "peer", "name", "v1"]);
    ns.ip(&add);
    for sysctl in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
        ns.sysctl(sysctl);
    }
    for (ip, prefix_len) in addresses {
        let cidr = format!("{ip}/{prefix_len}");
        let mut add = vec!["addr", "add", &cidr, "dev", "v0"];
        if ip.is_ipv6() {
            add.push("nodad");
        }
        ns.ip(&add);
    }
    for dev in ["lo", "v0", "v1"] {
        ns.ip(&["link", "set", dev, "up"]);
    }
    for &ip in neighbours {
        ns.neighbour("v0", ip, neighbour_mac);
    }
    ns
}

/// How many interfaces the relay has: one (hairpin through a bridge) or
/// one per side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sides {
    One,
    Two,
}

/// The relay's address plan in network `net` (`10.net.…`, `fd00:net:…`,
/// MACs `02:00:00:{net-200}:…`), chosen per test file so that a bed's
/// addresses say which test built it.
#[derive(Clone, Copy, Debug)]
pub struct BedPlan {
    pub family: Family,
    pub sides: Sides,
    pub net: u8,
    /// Forwarding on in the relay namespace from the start (the fast path
    /// alone; a manager turns it on itself with `--enable-forwarding`).
    pub forwarding: bool,
}

/// Caller ⇄ relay ⇄ callee in namespaces of one address family, deleted
/// by name on drop; see the module's doc for the two layouts.
#[derive(Debug)]
pub struct Bed {
    pub plan: BedPlan,
    pub caller: Netns,
    pub callee: Netns,
    pub relay: Netns,
    /// The bridge namespace of a one-interface bed.
    pub bridge: Option<Netns>,
}

/// The caller's and callee's media ports on every bed.
pub const CALLER_PORT: u16 = 41000;
pub const CALLEE_PORT: u16 = 40000;

impl Bed {
    /// Builds the bed; its namespaces are named `{prefix}{pid}{tag}` plus
    /// a letter (an IPv6 bed's tag starts with 6), so parallel tests and
    /// processes never share one.
    pub fn new(plan: BedPlan, prefix: &str, tag: &str) -> Bed {
        let pid = std::process::id();
        let six = if plan.family == Family::V6 { "6" } else { "" };
        let name = |letter: char| format!("{prefix}{pid}{six}{tag}{letter}");
        let family = Some(plan.family);
        let bridge = (plan.sides == Sides::One).then(|| Netns::add(&name('b'), family));
        let bed = Bed {
            plan,
            caller: Netns::add(&name('c'), family),
            callee: Netns::add(&name('e'), family),
            relay: Netns::add(&name('r'), family),
            bridge,
        };
        match &bed.bridge {
            Some(bridge) => bed.wire_bridge(bridge),
            None => bed.wire_two_sides(),
        }
        if plan.forwarding {
            // bpf_fib_lookup answers FWD_DISABLED without forwarding.
            bed.relay.sysctl("net.ipv4.conf.all.forwarding=1");
            if plan.family == Family::V6 {
                bed.relay.sysctl("net.ipv6.conf.all.forwarding=1");
            }
        }
        bed
    }

    fn wire_bridge(&self, bridge: &Netns) {
        bridge.ip(&["link", "add", "br0", "type", "bridge"]);
        bridge.ip(&["link", "set", "br0", "up"]);
        let prefix = self.plan.family.prefix_len();
        for (ns, dev, port, ip) in [
            (&self.caller, "c0", "pc", self.caller_addr().ip()),
            (&self.callee, "e0", "pe", self.callee_addr().ip()),
            (&self.relay, "r0", "pr", self.relay_ip()),
        ] {
            veth(bridge, port, None, ns, dev, Some(&self.mac_of(dev)));
            bridge.ip(&["link", "set", port, "master", "br0", "up"]);
            ns.address(dev, ip, prefix);
        }
        for (ns, dev) in [(&self.caller, "c0"), (&self.callee, "e0")] {
            ns.checksums_on_the_wire(dev);
        }
        let relay_mac = self.mac_of("r0");
        self.caller.neighbour("c0", self.relay_ip(), &relay_mac);
        self.callee.neighbour("e0", self.relay_ip(), &relay_mac);
        self.relay
            .neighbour("r0", self.caller_addr().ip(), &self.mac_of("c0"));
        self.relay
            .neighbour("r0", self.callee_addr().ip(), &self.mac_of("e0"));
    }

    fn wire_two_sides(&self) {
        let prefix = self.plan.family.prefix_len();
        for (peer, dev, relay_dev, peer_ip, relay_ip) in [
            (
                &self.caller,
                "c0",
                "a0",
                self.caller_addr().ip(),
                self.relay_a(),
            ),
            (
                &self.callee,
                "e0",
                "b0",
                self.callee_addr().ip(),
                self.relay_b(),
            ),
        ] {
            let (peer_mac, relay_mac) = (self.mac_of(dev), self.mac_of(relay_dev));
            veth(
                &self.relay,
                relay_dev,
                Some(&relay_mac),
                peer,
                dev,
                Some(&peer_mac),
            );
            self.relay.address(relay_dev, relay_ip, prefix);
            peer.address(dev, peer_ip, prefix);
            peer.checksums_on_the_wire(dev);
            peer.neighbour(dev, relay_ip, &relay_mac);
            self.relay.neighbour(relay_dev, peer_ip, &peer_mac);
        }
    }

    /// The MAC address of device `dev` of this bed.
    pub fn mac_of(&self, dev: &str) -> String {
        self.plan.mac_of(dev)
    }

    /// The relay's address on `r0` (a one-interface bed).
    pub fn relay_ip(&self) -> IpAddr {
        self.plan.relay_ip()
    }

    /// The relay's address on `a0`, the caller's side (a two-sided bed).
    pub fn relay_a(&self) -> IpAddr {
        self.plan.relay_a()
    }

    /// The relay's address on `b0`, the callee's side (a two-sided bed).
    pub fn relay_b(&self) -> IpAddr {
        self.plan.relay_b()
    }

    /// The caller's media socket.
    pub fn caller_addr(&self) -> SocketAddr {
        self.plan.caller_addr()
    }

    /// The callee's media socket.
    pub fn callee_addr(&self) -> SocketAddr {
        self.plan.callee_addr()
    }
}

impl BedPlan {
    /// The MAC address of device `dev` of this bed.
    pub fn mac_of(&self, dev: &str) -> String {
        let net = self.net.wrapping_sub(200);
        let (side, host) = match (self.sides, dev) {
            (Sides::One, "r0") => (0x00, 0x01),
            (Sides::One, "c0") => (0x00, 0x02),
            (Sides::One, "e0") => (0x00, 0x03),
            (Sides::Two, "a0") => (0x0a, 0x01),
            (Sides::Two, "c0") => (0x0a, 0x02),
            (Sides::Two, "b0") => (0x0b, 0x01),
            (Sides::Two, "e0") => (0x0b, 0x02),
            (sides, dev) => panic!("a {sides:?}-sided bed has no device {dev}"),
        };
        mac_text([0x02, 0, 0, net, side, host])
    }

    /// Host `host` of subnet `subnet` of this bed's network.
    fn host(&self, subnet: u8, host: u8) -> IpAddr {
        let net = self.net;
        match self.family {
            Family::V4 => IpAddr::from([10, net, subnet, host]),
            Family::V6 => {
                let text = if subnet == 0 {
                    format!("fd00:{net}::{host}")
                } else {
                    format!("fd00:{net}:{subnet}::{host}")
                };
                text.parse().expect("an IPv6 literal")
            }
        }
    }

    /// The relay's address on `r0` (a one-interface bed).
    pub fn relay_ip(&self) -> IpAddr {
        assert_eq!(self.sides, Sides::One, "a two-sided relay has two");
        self.host(0, 1)
    }

    /// The relay's socket on `r0` at `port` (a one-interface bed).
    pub fn relay(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.relay_ip(), port)
    }

    /// The relay's address on `a0`, the caller's side (a two-sided bed).
    pub fn relay_a(&self) -> IpAddr {
        assert_eq!(self.sides, Sides::Two, "a one-sided relay has r0");
        self.host(1, 1)
    }

    /// The relay's address on `b0`, the callee's side (a two-sided bed).
    pub fn relay_b(&self) -> IpAddr {
        assert_eq!(self.sides, Sides::Two, "a one-sided relay has r0");
        self.host(2, 1)
    }

    /// The caller's media socket.
    pub fn caller_addr(&self) -> SocketAddr {
        let ip = match self.sides {
            Sides::One => self.host(0, 2),
            Sides::Two => self.host(1, 2),
        };
        SocketAddr::new(ip, CALLER_PORT)
    }

    /// The callee's media socket.
    pub fn callee_addr(&self) -> SocketAddr {
        let ip = match self.sides {
            Sides::One => self.host(0, 3),
            Sides::Two => self.host(2, 2),
        };
        SocketAddr::new(ip, CALLEE_PORT)
    }
}

/// A `Udp:` counter (`RcvbufErrors`, `NoPorts`…) of the calling thread's
/// namespace, `None` when the kernel has no such counter.
pub fn udp_counter(wanted: &str) -> Option<u64> {
    // thread-self: /proc/net follows the process, not this thread's setns.
    let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (names, values) = (udp.next()?, udp.next()?);
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == wanted)
        .and_then(|(_, value)| value.parse().ok())
}

/// UDP checksum errors counted by the calling thread's namespace, IPv4
/// (`Udp: InCsumErrors`) plus IPv6 (`Udp6InCsumErrors`).
pub fn udp_in_csum_errors() -> u64 {
    let v4 = udp_counter("InCsumErrors").expect("the InCsumErrors counter");
    // Absent when IPv6 is disabled in the namespace.
    let v6: u64 = std::fs::read_to_string("/proc/thread-self/net/snmp6")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Udp6InCsumErrors"))
        .map(|v| v.trim().parse().expect("Udp6InCsumErrors value"))
        .unwrap_or(0);
    v4 + v6
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(family: Family, sides: Sides, net: u8) -> BedPlan {
        BedPlan {
            family,
            sides,
            net,
            forwarding: false,
        }
    }

    #[test]
    fn a_one_interface_plan_has_the_addresses_the_tests_were_written_for() {
        let v4 = plan(Family::V4, Sides::One, 205);
        assert_eq!(v4.relay_ip().to_string(), "10.205.0.1");
        assert_eq!(v4.caller_addr().to_string(), "10.205.0.2:41000");
        assert_eq!(v4.callee_addr().to_string(), "10.205.0.3:40000");
        assert_eq!(
            [v4.mac_of("r0"), v4.mac_of("c0"), v4.mac_of("e0")],
            [
                "02:00:00:05:00:01",
                "02:00:00:05:00:02",
                "02:00:00:05:00:03"
            ]
        );
        let v6 = plan(Family::V6, Sides::One, 204);
        assert_eq!(v6.relay(30000).to_string(), "[fd00:204::1]:30000");
        assert_eq!(v6.caller_addr().to_string(), "[fd00:204::2]:41000");
        assert_eq!(v6.callee_addr().to_string(), "[fd00:204::3]:40000");
        assert_eq!(v6.mac_of("r0"), "02:00:00:04:00:01");
    }

    #[test]
    fn a_two_interface_plan_puts_each_side_on_a_subnet_of_its_own() {
        let v4 = plan(Family::V4, Sides::Two, 206);
        assert_eq!(v4.relay_a().to_string(), "10.206.1.1");
        assert_eq!(v4.relay_b().to_string(), "10.206.2.1");
        assert_eq!(v4.caller_addr().to_string(), "10.206.1.2:41000");
        assert_eq!(v4.callee_addr().to_string(), "10.206.2.2:40000");
        let v6 = plan(Family::V6, Sides::Two, 206);
        assert_eq!(v6.relay_a().to_string(), "fd00:206:1::1");
        assert_eq!(v6.callee_addr().to_string(), "[fd00:206:2::2]:40000");
        assert_eq!(
            [
                v6.mac_of("a0"),
                v6.mac_of("c0"),
                v6.mac_of("b0"),
                v6.mac_of("e0")
            ],
            [
                "02:00:00:06:0a:01",
                "02:00:00:06:0a:02",
                "02:00:00:06:0b:01",
                "02:00:00:06:0b:02"
            ]
        );
    }

    #[test]
    #[should_panic(expected = "a two-sided relay has two")]
    fn a_two_interface_plan_has_no_single_relay_address() {
        plan(Family::V4, Sides::Two, 206).relay_ip();
    }
}
