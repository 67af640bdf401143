//! Locating SIP servers by name (RFC 3263): a target whose host is a
//! name becomes an ordered list of destinations (transport, address,
//! port) to try one after the other, as the B2BUA does on a timeout or a
//! 503 from one of them.
//!
//! - a port in the URI: A/AAAA of the host, the URI's transport (UDP, TLS
//!   for `sips:`);
//! - a transport but no port: SRV `_sip._udp.`/`_sip._tcp.`/`_sips._tcp.`
//!   of the host, else A/AAAA at the default port;
//! - neither: NAPTR of the host, the supported services (`SIP+D2U`,
//!   `SIP+D2T`, `SIPS+D2T`, only the last for `sips:`) in order and
//!   preference, each replacement an SRV name; without NAPTR, SRV for
//!   each transport served (UDP then TCP, TLS for `sips:`); without SRV,
//!   A/AAAA at 5060 over UDP (5061 over TLS).
//!
//! SRV records are taken by priority, and within one priority by weight
//! at random (RFC 2782). The ordering functions are plain and tested
//! against made-up answer sets; [`resolve`] does the look-ups with
//! hickory's resolver, which reads `/etc/resolv.conf` and `/etc/hosts`
//! (or the servers given) and caches answers for their TTL. The B2BUA
//! keeps each result until the shortest TTL of the records it came from.
//!
//! The core never waits on the network: it asks a [`Resolve`] capability
//! and gets the answer back as an input ([`LinkInput::Resolved`]).
//!
//! [`LinkInput::Resolved`]: crate::b2bua::LinkInput::Resolved

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;

use crate::sip::{Scheme, Transport, Uri};
use crate::transport::Destination;

/// Destinations kept from one resolution: enough for every failover a
/// dial would try, bounded against an answer with hundreds of records.
pub const MAX_DESTINATIONS: usize = 16;

/// How long a failed resolution is remembered: callers retrying at once
/// do not each query a failing DNS again.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// What a SIP URI asks to resolve (the parts RFC 3263 reads).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Query {
    /// The host name, lower-cased, without a trailing dot.
    pub host: String,
    /// The `transport` parameter, if any.
    pub transport: Option<Transport>,
    /// The URI's port, if any.
    pub port: Option<u16>,
    /// `sips:`: TLS only.
    pub secure: bool,
}

impl Query {
    /// The query of a `sip:`/`sips:` URI whose host is a name; `None` for
    /// an IP address (nothing to resolve) or another scheme.
    pub fn of(uri: &Uri) -> Option<Query> {
        let secure = match uri.scheme() {
            Scheme::Sip => false,
            Scheme::Sips => true,
            _ => return None,
        };
        let host = uri.host()?;
        if host.ip().is_some() {
            return None;
        }
        let name = host.to_string().trim_end_matches('.').to_ascii_lowercase();
        Some(Query {
            host: name,
            transport: uri
                .param("transport")
                .flatten()
                .map(|t| Transport::from_token(&t)),
            port: uri.port(),
            secure,
        })
    }

    /// The transport the URI names, or the default (TLS for `sips:`).
    fn transport_or_default(&self) -> Transport {
        match (&self.transport, self.secure) {
            (_, true) => Transport::Tls,
            (Some(transport), false) => transport.clone(),
            (None, false) => Transport::Udp,
        }
    }
}

/// Where a query led: destinations in the order to try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// Never empty.
    pub destinations: Vec<Destination>,
    /// When the shortest-lived record it came from expires.
    pub valid_until: Instant,
}

/// Why a query led nowhere, as the dial reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    /// What was looked up and what went wrong (for the log).
    pub reason: String,
}

/// The answer to a query.
pub type Resolved = Result<Resolution, Unresolved>;

/// The capability the B2BUA resolves through: `resolve` returns at once
/// and the answer comes back later as an input.
pub trait Resolve: Send {
    /// Starts resolving `query`.
    fn resolve(&self, query: Query);
}

/// A NAPTR record as RFC 3263 reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naptr {
    pub order: u16,
    pub preference: u16,
    pub flags: String,
    pub services: String,
    pub replacement: String,
}

/// An SRV record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

/// The transport a NAPTR service field names, when we serve it.
fn naptr_transport(services: &str, secure: bool) -> Option<Transport> {
    match services.to_ascii_uppercase().as_str() {
        "SIPS+D2T" => Some(Transport::Tls),
        "SIP+D2U" if !secure => Some(Transport::Udp),
        "SIP+D2T" if !secure => Some(Transport::Tcp),
        _ => None,
    }
}

/// The usable NAPTR records, in order then preference (RFC 3403): each
/// one's transport and SRV name. Records without the `s` flag (terminal
/// rewrites to A records, regular expressions) are not followed: SIP
/// deployments use `s` (RFC 3263 §4.1).
pub fn order_naptr(records: &[Naptr], secure: bool) -> Vec<(Transport, String)> {
    let mut usable: Vec<&Naptr> = records
        .iter()
        .filter(|r| r.flags.eq_ignore_ascii_case("s"))
        .filter(|r| naptr_transport(&r.services, secure).is_some())
        .collect();
    usable.sort_by_key(|r| (r.order, r.preference));
    usable
        .into_iter()
        .filter_map(|r| {
            let transport = naptr_transport(&r.services, secure)?;
            Some((transport, r.replacement.trim_end_matches('.').to_owned()))
        })
        .collect()
}

/// SRV records in the order to try them (RFC 2782): lowest priority
/// first; within a priority, each next one drawn with a chance
/// proportional to its weight (`draw(n)` gives a number in `0..=n`).
/// Records whose target is `.` (service not offered) are dropped.
pub fn order_srv(records: &[Srv], mut draw: impl FnMut(u32) -> u32) -> Vec<Srv> {
    let mut records: Vec<Srv> = records
        .iter()
        .filter(|r| !r.target.trim_end_matches('.').is_empty())
        .cloned()
        .collect();
    records.sort_by_key(|r| r.priority);
    let mut ordered = Vec::with_capacity(records.len());
    let mut rest = records.as_slice();
    while let Some(first) = rest.first() {
        let same = rest
            .iter()
            .take_while(|r| r.priority == first.priority)
            .count();
        let (group, after) = rest.split_at(same);
        // Zero weights first, as RFC 2782 asks, so they are drawn only
        // when nothing else is left or the draw is 0.
        let mut group: Vec<Srv> = group.to_vec();
        group.sort_by_key(|r| r.weight != 0);
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let pick = draw(total).min(total);
            let mut running = 0;
            let index = group
                .iter()
                .position(|r| {
                    running += u32::from(r.weight);
                    running >= pick
                })
                .unwrap_or(0);
            ordered.push(group.remove(index));
        }
        rest = after;
    }
    ordered
}

/// The SRV name of a transport (RFC 3263 §4.1).
fn srv_name(transport: &Transport, host: &str) -> String {
    match transport {
        Transport::Tls => format!("_sips._tcp.{host}"),
        Transport::Tcp => format!("_sip._tcp.{host}"),
        _ => format!("_sip._udp.{host}"),
    }
}

/// A cheap draw for [`order_srv`]: weights need spreading, not secrecy.
fn draw(total: u32) -> u32 {
    if total == 0 {
        return 0;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    nanos % (total + 1)
}

/// Resolves `query` with `resolver` as RFC 3263 says.
pub async fn resolve(resolver: &TokioResolver, query: &Query) -> Resolved {
    let mut found = Found::default();
    let unresolved = |what: String| Unresolved { reason: what };
    if let Some(port) = query.port {
        found
            .addresses(resolver, &query.host, query.transport_or_default(), port)
            .await;
        return found.finish(|| unresolved(format!("no A/AAAA record for {}", query.host)));
    }
    if query.transport.is_some() || query.secure {
        let transport = query.transport_or_default();
        let name = srv_name(&transport, &query.host);
        if !found.srv(resolver, &name, &transport).await {
            found
                .addresses(
                    resolver,
                    &query.host,
                    transport.clone(),
                    transport.default_port(),
                )
                .await;
        }
        return found.finish(|| unresolved(format!("no SRV or A/AAAA record for {}", query.host)));
    }
    let naptr = naptr_records(resolver, &query.host, &mut found.valid_until).await;
    let services = order_naptr(&naptr, query.secure);
    let mut any_srv = false;
    if services.is_empty() {
        for transport in [Transport::Udp, Transport::Tcp] {
            let name = srv_name(&transport, &query.host);
            any_srv |= found.srv(resolver, &name, &transport).await;
        }
    } else {
        for (transport, name) in &services {
            any_srv |= found.srv(resolver, name, transport).await;
        }
    }
    if !any_srv {
        found
            .addresses(resolver, &query.host, Transport::Udp, 5060)
            .await;
    }
    found.finish(|| unresolved(format!("no NAPTR, SRV or A/AAAA record for {}", query.host)))
}

/// Destinations gathered so far and the earliest expiry of what they came from.
struct Found {
    destinations: Vec<Destination>,
    valid_until: Instant,
}

impl Default for Found {
    fn default() -> Found {
        Found {
            destinations: Vec::new(),
            // Lowered by every record used; a day at most.
            valid_until: Instant::now() + Duration::from_secs(86_400),
        }
    }
}

impl Found {
    fn push(&mut self, transport: &Transport, address: SocketAddr) {
        let destination = Destination::over(transport, address);
        if self.destinations.len() < MAX_DESTINATIONS && !self.destinations.contains(&destination) {
            self.destinations.push(destination);
        }
    }

    /// A/AAAA of `host` (or `/etc/hosts`), each address at `port`.
    async fn addresses(
        &mut self,
        resolver: &TokioResolver,
        host: &str,
        transport: Transport,
        port: u16,
    ) {
        match resolver.lookup_ip(format!("{host}.")).await {
            Ok(lookup) => {
                self.valid_until = self.valid_until.min(lookup.valid_until());
                for ip in lookup.iter() {
                    self.push(&transport, SocketAddr::new(ip.to_canonical(), port));
                }
            }
            Err(error) => tracing::debug!(host, %error, "no address record"),
        }
    }

    /// SRV of `name`, each target's addresses; whether any SRV record was found.
    async fn srv(&mut self, resolver: &TokioResolver, name: &str, transport: &Transport) -> bool {
        let lookup = match resolver.lookup(format!("{name}."), RecordType::SRV).await {
            Ok(lookup) => lookup,
            Err(error) => {
                tracing::debug!(name, %error, "no SRV record");
                return false;
            }
        };
        self.valid_until = self.valid_until.min(lookup.valid_until());
        let records: Vec<Srv> = lookup
            .iter()
            .filter_map(|rdata| match rdata {
                RData::SRV(srv) => Some(Srv {
                    priority: srv.priority(),
                    weight: srv.weight(),
                    port: srv.port(),
                    target: srv.target().to_ascii(),
                }),
                _ => None,
            })
            .collect();
        if records.is_empty() {
            return false;
        }
        for record in order_srv(&records, draw) {
            let target = record.target.trim_end_matches('.').to_owned();
            self.addresses(resolver, &target, transport.clone(), record.port)
                .await;
        }
        true
    }

    fn finish(self, none: impl FnOnce() -> Unresolved) -> Resolved {
        if self.destinations.is_empty() {
            return Err(none());
        }
        Ok(Resolution {
            destinations: self.destinations,
            valid_until: self.valid_until,
        })
    }
}

async fn naptr_records(
    resolver: &TokioResolver,
    host: &str,
    valid_until: &mut Instant,
) -> Vec<Naptr> {
    match resolver.lookup(format!("{host}."), RecordType::NAPTR).await {
        Ok(lookup) => {
            *valid_until = (*valid_until).min(lookup.valid_until());
            lookup
                .iter()
                .filter_map(|rdata| match rdata {
                    RData::NAPTR(naptr) => Some(Naptr {
                        order: naptr.order(),
                        preference: naptr.preference(),
                        flags: String::from_utf8_lossy(naptr.flags()).into_owned(),
                        services: String::from_utf8_lossy(naptr.services()).into_owned(),
                        replacement: naptr.replacement().to_ascii(),
                    }),
                    _ => None,
                })
                .collect()
        }
        Err(error) => {
            tracing::debug!(host, %error, "no NAPTR record");
            Vec::new()
        }
    }
}

/// The driver's [`Resolve`]: each query a task on the runtime, its answer
/// pushed to the B2BUA's link and the core woken.
pub struct DnsResolver {
    resolver: TokioResolver,
    link: crate::b2bua::MediaLink,
    wake: std::sync::Arc<dyn Fn() + Send + Sync>,
    runtime: tokio::runtime::Handle,
}

impl DnsResolver {
    /// Resolves with `resolver` on the current runtime; answers go to `link`.
    pub fn new(
        resolver: TokioResolver,
        link: crate::b2bua::MediaLink,
        wake: std::sync::Arc<dyn Fn() + Send + Sync>,
    ) -> DnsResolver {
        DnsResolver {
            resolver,
            link,
            wake,
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

impl Resolve for DnsResolver {
    fn resolve(&self, query: Query) {
        let resolver = self.resolver.clone();
        let link = self.link.clone();
        let wake = std::sync::Arc::clone(&self.wake);
        self.runtime.spawn(async move {
            let result = resolve(&resolver, &query).await;
            link.push_input(
                Instant::now(),
                crate::b2bua::LinkInput::Resolved { query, result },
            );
            wake();
        });
    }
}

/// A resolver reading `/etc/resolv.conf`, or asking `servers` only;
/// `/etc/hosts` is read either way. Without a readable resolv.conf the
/// server still starts: names then resolve from `/etc/hosts` only, and
/// the log says why.
pub fn resolver(servers: &[SocketAddr]) -> TokioResolver {
    use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
    use hickory_resolver::name_server::TokioConnectionProvider;
    use hickory_resolver::proto::xfer::Protocol;
    let mut builder = if servers.is_empty() {
        TokioResolver::builder_tokio().unwrap_or_else(|error| {
            tracing::warn!(%error, "no DNS servers from /etc/resolv.conf: dial targets named by host name resolve from /etc/hosts only (--dns-server names servers)");
            TokioResolver::builder_with_config(
                ResolverConfig::new(),
                TokioConnectionProvider::default(),
            )
        })
    } else {
        let mut config = ResolverConfig::new();
        for server in servers {
            config.add_name_server(NameServerConfig::new(*server, Protocol::Udp));
            config.add_name_server(NameServerConfig::new(*server, Protocol::Tcp));
        }
        TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
    };
    let options = builder.options_mut();
    options.use_hosts_file = ResolveHosts::Always;
    // A dial waits for the answer: two tries of two seconds at most.
    options.timeout = Duration::from_secs(2);
    options.attempts = 2;
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naptr(order: u16, preference: u16, services: &str, replacement: &str) -> Naptr {
        Naptr {
            order,
            preference,
            flags: "s".to_owned(),
            services: services.to_owned(),
            replacement: replacement.to_owned(),
        }
    }

    fn srv(priority: u16, weight: u16, target: &str) -> Srv {
        Srv {
            priority,
            weight,
            port: 5060,
            target: target.to_owned(),
        }
    }

    #[test]
    fn naptr_records_are_taken_in_order_then_preference_and_only_for_served_transports() {
        let records = [
            naptr(20, 10, "SIP+D2U", "_sip._udp.example.com."),
            naptr(10, 20, "SIP+D2T", "_sip._tcp.example.com."),
            naptr(10, 10, "SIPS+D2T", "_sips._tcp.example.com."),
            naptr(5, 10, "SIP+D2S", "_sip._sctp.example.com."),
            Naptr {
                flags: "a".to_owned(),
                ..naptr(1, 1, "SIP+D2U", "host.example.com.")
            },
        ];
        assert_eq!(
            order_naptr(&records, false),
            vec![
                (Transport::Tls, "_sips._tcp.example.com".to_owned()),
                (Transport::Tcp, "_sip._tcp.example.com".to_owned()),
                (Transport::Udp, "_sip._udp.example.com".to_owned()),
            ]
        );
        // sips: only the TLS service.
        assert_eq!(
            order_naptr(&records, true),
            vec![(Transport::Tls, "_sips._tcp.example.com".to_owned())]
        );
    }

    #[test]
    fn srv_records_go_by_priority_then_by_weight_drawn() {
        let records = [
            srv(20, 0, "backup.example.com."),
            srv(10, 60, "a.example.com."),
            srv(10, 40, "b.example.com."),
            srv(10, 0, "c.example.com."),
            srv(5, 0, "."),
        ];
        let targets =
            |ordered: Vec<Srv>| -> Vec<String> { ordered.into_iter().map(|r| r.target).collect() };
        // A draw of the total takes the last record of the running sum:
        // b (40 after c's 0 and a's 60); then a; c (weight 0) last.
        let mut draws = vec![100, 60, 0, 0].into_iter();
        assert_eq!(
            targets(order_srv(&records, |_| draws.next().unwrap_or(0))),
            [
                "b.example.com.",
                "a.example.com.",
                "c.example.com.",
                "backup.example.com."
            ]
        );
        // A draw of 1 takes the first weighted record; 0 the zero-weight one.
        let mut draws = vec![0, 1, 0, 0].into_iter();
        assert_eq!(
            targets(order_srv(&records, |_| draws.next().unwrap_or(0))),
            [
                "c.example.com.",
                "a.example.com.",
                "b.example.com.",
                "backup.example.com."
            ]
        );
        // Over many draws, a (60) comes first about 60 % of the time.
        let mut first_a = 0;
        for n in 0..1000u32 {
            let ordered = order_srv(&records[1..3], |total| (n * 7919) % (total + 1));
            if ordered[0].target == "a.example.com." {
                first_a += 1;
            }
        }
        assert!((550..=650).contains(&first_a), "{first_a}");
    }

    #[test]
    fn a_uri_asks_for_what_it_names() {
        let query = |text: &str| Query::of(&Uri::parse(text).expect("URI"));
        assert_eq!(query("sip:bob@192.0.2.1"), None, "an address needs no DNS");
        assert_eq!(query("tel:+1555"), None);
        assert_eq!(
            query("sip:bob@Trunk.Example.COM.;transport=tcp"),
            Some(Query {
                host: "trunk.example.com".to_owned(),
                transport: Some(Transport::Tcp),
                port: None,
                secure: false
            })
        );
        let sips = query("sips:bob@trunk.example.com:5071").expect("a name");
        assert_eq!((sips.port, sips.secure), (Some(5071), true));
        assert_eq!(sips.transport_or_default(), Transport::Tls);
    }
}
