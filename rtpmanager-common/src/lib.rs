//! Types shared by the `rtpmanager-ebpf` programs and the loader in
//! `switchboard-rtpmanager`. Everything here is `#[repr(C)]` plain data: the
//! kernel side reads it from maps, the userspace side writes it, and both must
//! agree byte for byte.
#![no_std]

/// Name of the array map holding the one [`ProgramConfig`] entry.
pub const CONFIG_MAP: &str = "SB_CONFIG";
/// Name of the per-CPU array of verdict counters, indexed by [`Counter`].
pub const COUNTERS_MAP: &str = "SB_COUNTERS";
/// Name of the XDP program in the object.
pub const XDP_PROGRAM: &str = "switchboard_xdp";
/// Name of the TC (clsact ingress) program in the object.
pub const TC_PROGRAM: &str = "switchboard_tc";

/// Run-time settings of the programs, written by the loader before attaching.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramConfig {
    /// Lowest UDP port of the manager's media range (host byte order).
    pub port_min: u16,
    /// Highest UDP port of the manager's media range (host byte order).
    pub port_max: u16,
    /// Reserved; keeps the struct 8 bytes and free of implicit padding.
    pub flags: u32,
}

/// Slots of the per-CPU counter array. Each packet increments exactly one
/// slot, named after the verdict's reason.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Not IPv4/IPv6 (ARP, VLAN-tagged, other ethertypes): passed.
    NotIp = 0,
    /// IP but not UDP: passed.
    NotUdp = 1,
    /// Too short to hold the headers it claims: passed.
    Truncated = 2,
    /// IPv4 fragment or header with options: passed.
    Unusual = 3,
    /// UDP outside the manager's port range: passed.
    OtherPort = 4,
    /// UDP to the manager's port range: passed to the userspace relay.
    MediaPort = 5,
}

impl Counter {
    /// Number of slots in [`COUNTERS_MAP`].
    pub const SLOTS: u32 = 6;
    /// Every counter, in slot order.
    pub const ALL: [Counter; 6] = [
        Counter::NotIp,
        Counter::NotUdp,
        Counter::Truncated,
        Counter::Unusual,
        Counter::OtherPort,
        Counter::MediaPort,
    ];

    /// A stable name for logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::NotIp => "not_ip",
            Counter::NotUdp => "not_udp",
            Counter::Truncated => "truncated",
            Counter::Unusual => "unusual",
            Counter::OtherPort => "other_port",
            Counter::MediaPort => "media_port",
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: ProgramConfig is repr(C), Copy, has no padding and every bit
// pattern is a valid value.
unsafe impl aya::Pod for ProgramConfig {}
