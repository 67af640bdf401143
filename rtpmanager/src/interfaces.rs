//! Which local address to advertise and which interface carries it.

use std::net::{IpAddr, Ipv4Addr};

/// The IPv4 address of the interface holding the default route, or
/// 127.0.0.1 when the host has none (a laptop offline, a test namespace).
pub fn default_advertise_address() -> IpAddr {
    default_route_interface()
        .and_then(|name| first_address_of(&name))
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// The interface holding `addr`, if any.
pub fn interface_with_address(addr: IpAddr) -> Option<String> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for ifaddr in addrs {
        let Some(sockaddr) = ifaddr.address else {
            continue;
        };
        let found = if let Some(v4) = sockaddr.as_sockaddr_in() {
            IpAddr::V4(v4.ip()) == addr
        } else if let Some(v6) = sockaddr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip()) == addr
        } else {
            false
        };
        if found {
            return Some(ifaddr.interface_name);
        }
    }
    None
}

/// Where the kernel's route to a peer leaves from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The source address the kernel picks for the peer.
    pub source: IpAddr,
    /// The device holding that address.
    pub device: String,
}

/// The route to `peer` as the kernel would take it: a connected UDP
/// socket (no packet is sent) gets the source address the routing table
/// chooses, and the device holding it. `None` when there is no route.
pub fn route_to(peer: IpAddr) -> Option<Route> {
    if peer.is_unspecified() {
        return None;
    }
    let any: IpAddr = if peer.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = std::net::UdpSocket::bind((any, 0)).ok()?;
    socket.connect((peer, 9)).ok()?;
    let source = socket.local_addr().ok()?.ip();
    let device = interface_with_address(source)?;
    Some(Route { source, device })
}

fn first_address_of(interface: &str) -> Option<IpAddr> {
    nix::ifaddrs::getifaddrs()
        .ok()?
        .filter(|i| i.interface_name == interface)
        .find_map(|i| i.address?.as_sockaddr_in().map(|v4| IpAddr::V4(v4.ip())))
}

/// Reads the IPv4 routing table: the default route has destination 00000000.
fn default_route_interface() -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    table.lines().skip(1).find_map(|line| {
        let mut fields = line.split_whitespace();
        let name = fields.next()?;
        let destination = fields.next()?;
        (destination == "00000000").then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_address_is_on_lo() {
        assert_eq!(
            interface_with_address(IpAddr::V4(Ipv4Addr::LOCALHOST)).as_deref(),
            Some("lo")
        );
    }

    #[test]
    fn the_route_to_a_loopback_peer_leaves_by_lo() {
        let route = route_to(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9))).expect("a route");
        assert_eq!(route.device, "lo");
        assert!(route.source.is_loopback(), "{route:?}");
        assert_eq!(route_to(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), None);
    }

    #[test]
    fn default_advertise_is_a_usable_address() {
        let addr = default_advertise_address();
        assert!(!addr.is_unspecified() && !addr.is_multicast(), "{addr}");
        assert!(
            interface_with_address(addr).is_some(),
            "{addr} must belong to an interface"
        );
    }
}
