//! Command-line, environment and config-file options of `switchboard-rtpmanager`.
//!
//! Every option is a flag, an environment variable (`SWITCHBOARD_` and the
//! flag's name in UPPER_SNAKE_CASE; see [`LEGACY_ENVIRONMENT`] for the exceptions) and a key of the optional TOML file given by `--config`;
//! precedence is flag > environment > file > default.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use switchboard_service::ConfigError;

/// Which kernel fast path to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FastPathRequest {
    /// Try native XDP, then generic XDP, then TC, then run userspace-only.
    Auto,
    /// Native (driver) XDP only.
    Xdp,
    /// Generic (SKB) XDP only.
    XdpGeneric,
    /// TC clsact ingress only.
    Tc,
    /// Userspace relay only.
    Off,
}

/// Environment variables once read under another name (old unprefixed
/// names, and those of the system Switchboard replaces), with the option
/// that took their place: set, they are reported at start, never read.
/// The unprefixed form of every current variable is reported too.
pub const LEGACY_ENVIRONMENT: &[(&str, &str)] = &[
    ("ADVERTISE", "advertise"),
    ("ADVERTISE_V6", "advertise-v6"),
    // The system Switchboard replaces.
    ("GRPC_BIND", "grpc-address"),
    ("LOGLEVEL", "log-level"),
];

/// Switchboard RTP manager: owns media ports, rewrites SDP, relays RTP/RTCP in
/// userspace and offloads bridged streams to an XDP/TC eBPF fast path.
#[derive(Debug, Clone, Parser)]
#[command(name = "switchboard-rtpmanager", version, about, long_about = None)]
pub struct Config {
    /// TOML config file; its keys are the long option names.
    #[arg(long, env = "SWITCHBOARD_RTPMANAGER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address the gRPC control API listens on. Without
    /// --grpc-tls-client-ca or --grpc-token-file anyone who reaches it can
    /// drive the manager (delete calls, drain it): on an address other than
    /// loopback the manager then warns at start.
    #[arg(long, env = "SWITCHBOARD_GRPC_ADDRESS", default_value = "127.0.0.1")]
    pub grpc_address: IpAddr,

    /// TCP port of the gRPC control API.
    #[arg(long, env = "SWITCHBOARD_GRPC_PORT", default_value_t = 9090)]
    pub grpc_port: u16,

    /// PEM certificate (chain) the gRPC control API presents. With
    /// --grpc-tls-key the API speaks TLS only; without both it is plaintext.
    #[arg(long, env = "SWITCHBOARD_GRPC_TLS_CERT", value_name = "FILE")]
    pub grpc_tls_cert: Option<PathBuf>,

    /// PEM private key of --grpc-tls-cert.
    #[arg(long, env = "SWITCHBOARD_GRPC_TLS_KEY", value_name = "FILE")]
    pub grpc_tls_key: Option<PathBuf>,

    /// PEM CA certificate(s) that sign the clients' certificates: with it,
    /// a client must present a certificate signed by one of them (mutual
    /// TLS), else its connection is refused. Needs --grpc-tls-cert.
    #[arg(long, env = "SWITCHBOARD_GRPC_TLS_CLIENT_CA", value_name = "FILE")]
    pub grpc_tls_client_ca: Option<PathBuf>,

    /// File of bearer tokens, one per line (blank lines and lines starting
    /// with `#` are skipped; each at least 16 visible ASCII characters):
    /// every gRPC request must then carry `authorization: Bearer <token>`
    /// with one of them, else it is answered UNAUTHENTICATED. Read at
    /// start and again on SIGHUP (an invalid new file is refused and the
    /// tokens in force kept), so several tokens allow rotating them
    /// without a restart.
    #[arg(long, env = "SWITCHBOARD_GRPC_TOKEN_FILE", value_name = "FILE")]
    pub grpc_token_file: Option<PathBuf>,

    /// Address advertised in SDP (c= lines) for IPv4 peers. Defaults to the
    /// address of the interface holding the default route, else 127.0.0.1.
    #[arg(long, env = "SWITCHBOARD_RTP_ADVERTISE")]
    pub advertise: Option<IpAddr>,

    /// Address advertised in SDP to IPv6 peers; without it, IPv6 offers are
    /// answered with the IPv4 address.
    #[arg(long, env = "SWITCHBOARD_RTP_ADVERTISE_V6")]
    pub advertise_v6: Option<IpAddr>,

    /// Address the media sockets bind to (`::` for IPv4 and IPv6).
    #[arg(long, env = "SWITCHBOARD_RTP_BIND_ADDRESS", default_value = "0.0.0.0")]
    pub rtp_bind_address: IpAddr,

    /// Lowest UDP port of the media range (even; RTP on even ports, RTCP on the next odd one).
    #[arg(long, env = "SWITCHBOARD_RTP_PORT_MIN", default_value_t = 10000)]
    pub rtp_port_min: u16,

    /// Highest UDP port of the media range.
    #[arg(long, env = "SWITCHBOARD_RTP_PORT_MAX", default_value_t = 20000)]
    pub rtp_port_max: u16,

    /// Directory holding the audio files that Play may use; nothing outside
    /// it is ever read.
    #[arg(
        long,
        env = "SWITCHBOARD_AUDIO_PATH",
        default_value = "/var/lib/switchboard/audio"
    )]
    pub audio_path: PathBuf,

    /// Kernel fast path: auto tries xdp, xdp-generic, tc, then off.
    #[arg(long, env = "SWITCHBOARD_FAST_PATH", value_enum, default_value_t = FastPathRequest::Auto)]
    pub fast_path: FastPathRequest,

    /// Network interface the fast path attaches to. Defaults to the interface
    /// holding the advertised address.
    #[arg(long, env = "SWITCHBOARD_MEDIA_INTERFACE")]
    pub media_interface: Option<String>,

    /// A named media interface (repeatable; environment: `;`-separated;
    /// file: `interface = [...]`), for a relay whose peers reach it on
    /// several networks (public and private side): comma-separated
    /// `name=N,device=D,bind=A,advertise=A[,advertise=A6],ports=MIN-MAX,fast-path=MODE`.
    /// `name`, `advertise` (once per family; for a 1:1 NAT another than
    /// the bound one) and `ports` are required; `device` defaults to the
    /// interface holding the first advertised address, `bind` to 0.0.0.0,
    /// `fast-path` to --fast-path. Port ranges may not overlap (the kernel's
    /// forwarding map is keyed by port). The fast path attaches to every
    /// interface's device; a leg's interface is the one signaling names
    /// (LegOptions.interface), else the one the route to its peer leaves
    /// by. Without it, --advertise, --advertise-v6, --rtp-bind-address,
    /// --rtp-port-min/max, --media-interface and --fast-path make one
    /// interface named `default`.
    #[arg(
        long = "interface",
        env = "SWITCHBOARD_INTERFACE",
        value_delimiter = ';',
        value_name = "SPEC"
    )]
    pub interface: Vec<String>,

    /// How long the kernel fast path reuses a stream's route and neighbour
    /// lookup, in milliseconds, before looking it up again; 0 looks it up
    /// for every packet. The lookup is most of a forwarded packet's cost; a
    /// route or neighbour (MAC) change reaches offloaded streams within
    /// this time. A neighbour that becomes unresolved is seen on the next
    /// lookup (XDP passes its packets to the stack, TC hands them to
    /// bpf_redirect_neigh).
    #[arg(long, env = "SWITCHBOARD_NEXT_HOP_CACHE_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub next_hop_cache_ms: u64,

    /// Turn on IP forwarding on the media interface when the kernel fast
    /// path needs it (its route lookup answers "forwarding disabled"
    /// otherwise). Off by default: host sysctls are the operator's call, and
    /// without it the manager only warns, naming the sysctl to set.
    #[arg(long, env = "SWITCHBOARD_ENABLE_FORWARDING")]
    pub enable_forwarding: bool,

    /// bpffs directory where the fast path pins its maps and its link to the
    /// interface, so kernel forwarding outlives the process (a crash or
    /// SIGKILL keeps media flowing). Created if missing; it must be on a
    /// mounted bpffs (`mount -t bpf bpf /sys/fs/bpf`), else the fast path
    /// runs unpinned and says so.
    #[arg(
        long,
        env = "SWITCHBOARD_BPF_PIN_PATH",
        default_value = "/sys/fs/bpf/switchboard"
    )]
    pub bpf_pin_path: PathBuf,

    /// Upgrade mode: at a clean exit (SIGTERM/SIGINT) keep the pinned
    /// kernel entries, maps and link, so offloaded media keeps flowing
    /// after the process ends. Without it a clean exit removes its entries
    /// and detaches the programs.
    #[arg(long, env = "SWITCHBOARD_KEEP_ON_EXIT")]
    pub keep_on_exit: bool,

    /// Directory where the manager saves its calls (`sessions.json`, a
    /// snapshot, and `sessions.journal`, the calls changed since, synced
    /// within 20 ms of a change), so a restarted manager binds
    /// their ports again, lists them and keeps their kernel entries (with a
    /// pinned fast path, media never stopped). Without it a restart forgets
    /// every call and removes their kernel entries.
    #[arg(long, env = "SWITCHBOARD_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Address and port of the Prometheus endpoint (`GET /metrics`): the fast
    /// path in force, its kernel verdict counters, calls, legs and port
    /// pairs. Off by default, so no new port opens on an upgrade; it is
    /// unauthenticated, so give it a loopback or private address
    /// (`127.0.0.1:9190`). Port 0 takes an ephemeral port, logged at start.
    #[arg(long, env = "SWITCHBOARD_METRICS_LISTEN", value_name = "ADDR:PORT")]
    pub metrics_listen: Option<SocketAddr>,

    /// Seconds an answered call may receive no media (on any leg, from
    /// the legs' accepted sources only: a stranger's packets do not count)
    /// before the manager reaps it, publishing MediaTimeout and LegReaped
    /// events, as rtpengine's timeout. A leg that stays silent this long
    /// also gets a MediaTimeout event on its own. Legs on hold get
    /// --hold-timeout instead; a leg's own LegOptions.media_timeout_secs
    /// overrides it.
    #[arg(long, env = "SWITCHBOARD_MEDIA_TIMEOUT", default_value_t = 60)]
    pub media_timeout: u32,

    /// Seconds a leg on hold (its SDP sendonly, recvonly or inactive) may
    /// receive no media before its call is reaped, as rtpengine's
    /// silent-timeout: a held peer may rightly send nothing. At least
    /// --media-timeout.
    #[arg(long, env = "SWITCHBOARD_HOLD_TIMEOUT", default_value_t = 3600)]
    pub hold_timeout: u32,

    /// The most legs one call may hold (each holds an RTP/RTCP port pair);
    /// an Offer that would add more is refused with RESOURCE_EXHAUSTED. A
    /// B2BUA call uses 2.
    #[arg(long, env = "SWITCHBOARD_MAX_LEGS_PER_CALL", default_value_t = 4, value_parser = clap::value_parser!(u16).range(2..=1000))]
    pub max_legs_per_call: u16,

    /// Packets a second each userspace relay worker is given: an Offer
    /// that would commit more than all workers' share (50 for each leg
    /// whose media the kernel does not forward) is refused with
    /// RESOURCE_EXHAUSTED, so the calls already up keep their audio and
    /// signaling places the call on another manager. The default, 700
    /// userspace calls a worker, is what two workers carried on a 2-core
    /// test host (1400 calls, the bench's own senders on the same cores)
    /// with no loss and a p99 under 2 ms (1600 calls: 9 to 21 ms). Whatever
    /// the count, new calls are refused while every worker is measured
    /// saturated. 0 turns admission control off.
    #[arg(long, env = "SWITCHBOARD_RELAY_CAPACITY_PPS", default_value_t = 70_000)]
    pub relay_capacity_pps: u32,

    /// Userspace relay worker threads, each with its own epoll set; a
    /// call's legs stay on one worker, a new call goes to the worker with
    /// the fewest legs. 0: one per available CPU.
    #[arg(long, env = "SWITCHBOARD_RELAY_WORKERS", default_value_t = 0)]
    pub relay_workers: u16,

    /// Threads of the control plane: gRPC, health, events and the kernel
    /// path's map updates (media has the relay workers). One is the
    /// default: its work is short and mostly under one lock, and a second
    /// thread only adds hand-offs between the two; measured at 1,000
    /// calls a second, one thread used 17 % less CPU than two.
    #[arg(long, env = "SWITCHBOARD_CONTROL_THREADS", default_value_t = 1)]
    pub control_threads: u16,

    /// Milliseconds a strict-source leg learns its peer's media source,
    /// from the first packet after each answer or re-INVITE, before locking
    /// it; packets from other sources are then dropped and counted (media
    /// hijack protection, as rtpengine's endpoint learning). A packet from
    /// the exact address and port of the peer's SDP locks at once; within
    /// the window a source with the SDP's address beats any other (NAT).
    #[arg(long, env = "SWITCHBOARD_SOURCE_LEARNING_MS", default_value_t = 3000, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub source_learning_ms: u64,

    /// Seconds without media or control activity before a leg is reaped.
    #[arg(long, env = "SWITCHBOARD_IDLE_TIMEOUT", default_value_t = 3600)]
    pub idle_timeout: u32,

    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(long, env = "SWITCHBOARD_LOG_LEVEL", default_value = "info", value_parser = switchboard_service::parse_log_level)]
    pub log_level: String,
}

impl Config {
    /// Parses the process arguments and environment, then validates.
    pub fn load() -> Result<Self, ConfigError> {
        Self::load_from(std::env::args_os())
    }

    /// Parses `args` (first item: program name) and validates.
    pub fn load_from<I, A>(args: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = A>,
        A: Into<std::ffi::OsString> + Clone,
    {
        let config: Self = switchboard_service::parse_layered(args)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.control_threads == 0 {
            return Err(ConfigError::invalid(
                "control-threads",
                "must be at least 1",
            ));
        }
        if self.rtp_port_min < 1024 {
            return Err(ConfigError::invalid(
                "rtp-port-min",
                "must be 1024 or above (privileged ports are not media ports)",
            ));
        }
        if !self.rtp_port_min.is_multiple_of(2) {
            return Err(ConfigError::invalid(
                "rtp-port-min",
                "must be even (RTP uses even ports, RTCP the next odd one)",
            ));
        }
        if self.rtp_port_max <= self.rtp_port_min {
            return Err(ConfigError::invalid(
                "rtp-port-max",
                format!("must be above --rtp-port-min ({})", self.rtp_port_min),
            ));
        }
        if self.media_timeout == 0 {
            return Err(ConfigError::invalid(
                "media-timeout",
                "must be at least 1 second",
            ));
        }
        if self.hold_timeout < self.media_timeout {
            return Err(ConfigError::invalid(
                "hold-timeout",
                format!(
                    "must be at least --media-timeout ({} s): a held leg gets the longer timeout",
                    self.media_timeout
                ),
            ));
        }
        if self.idle_timeout == 0 {
            return Err(ConfigError::invalid(
                "idle-timeout",
                "must be at least 1 second",
            ));
        }
        match (&self.grpc_tls_cert, &self.grpc_tls_key) {
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "grpc-tls-cert",
                    "needs --grpc-tls-key (the certificate's private key)",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "grpc-tls-key",
                    "needs --grpc-tls-cert (the certificate it belongs to)",
                ))
            }
            _ => {}
        }
        if self.grpc_tls_client_ca.is_some() && self.grpc_tls_cert.is_none() {
            return Err(ConfigError::invalid(
                "grpc-tls-client-ca",
                "needs --grpc-tls-cert and --grpc-tls-key: client certificates are checked in a TLS handshake",
            ));
        }
        if let Some(addr) = self.advertise {
            if addr.is_unspecified() || addr.is_multicast() {
                return Err(ConfigError::invalid(
                    "advertise",
                    format!("{addr} cannot be reached by peers"),
                ));
            }
        }
        self.named_interfaces()?;
        Ok(())
    }

    /// The `--interface` specifications, parsed and checked (names unique,
    /// port ranges apart); empty without the option.
    pub fn named_interfaces(&self) -> Result<Vec<InterfaceSpec>, ConfigError> {
        let specs = self
            .interface
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| InterfaceSpec::parse(s, self.fast_path))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::invalid("interface", e))?;
        for (i, a) in specs.iter().enumerate() {
            for b in &specs[..i] {
                if a.name == b.name {
                    return Err(ConfigError::invalid(
                        "interface",
                        format!("the name {} is used twice", a.name),
                    ));
                }
                if a.port_min <= b.port_max && b.port_min <= a.port_max {
                    return Err(ConfigError::invalid(
                        "interface",
                        format!(
                            "the ports of {} ({}-{}) overlap those of {} ({}-{}): the kernel's forwarding map is keyed by port",
                            a.name, a.port_min, a.port_max, b.name, b.port_min, b.port_max
                        ),
                    ));
                }
            }
        }
        Ok(specs)
    }

    /// Number of RTP/RTCP port pairs in the range.
    pub fn port_pairs(&self) -> u32 {
        (u32::from(self.rtp_port_max) - u32::from(self.rtp_port_min)).div_ceil(2)
    }
}

/// One `--interface`: a named media interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceSpec {
    pub name: String,
    /// The network device the fast path attaches to; `None` finds it from
    /// the advertised address.
    pub device: Option<String>,
    pub bind: IpAddr,
    /// The addresses advertised in SDP: at most one per family.
    pub advertise_v4: Option<IpAddr>,
    pub advertise_v6: Option<IpAddr>,
    pub port_min: u16,
    pub port_max: u16,
    pub fast_path: FastPathRequest,
}

impl InterfaceSpec {
    /// Parses `name=N,device=D,bind=A,advertise=A,ports=MIN-MAX,fast-path=M`;
    /// `fast_path` is the default mode.
    pub fn parse(text: &str, fast_path: FastPathRequest) -> Result<InterfaceSpec, String> {
        let mut spec = InterfaceSpec {
            name: String::new(),
            device: None,
            bind: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            advertise_v4: None,
            advertise_v6: None,
            port_min: 0,
            port_max: 0,
            fast_path,
        };
        let mut ports = false;
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("`{item}` in `{text}` is not key=value"))?;
            let bad = |what: &str| format!("{key}={value} in `{text}`: {what}");
            match key {
                "name" => spec.name = value.to_owned(),
                "device" => spec.device = Some(value.to_owned()),
                "bind" => spec.bind = value.parse().map_err(|_| bad("not an IP address"))?,
                "advertise" => {
                    let addr: IpAddr = value.parse().map_err(|_| bad("not an IP address"))?;
                    if addr.is_unspecified() || addr.is_multicast() {
                        return Err(bad("cannot be reached by peers"));
                    }
                    let slot = if addr.is_ipv4() {
                        &mut spec.advertise_v4
                    } else {
                        &mut spec.advertise_v6
                    };
                    if slot.replace(addr).is_some() {
                        return Err(bad("one advertised address per family"));
                    }
                }
                "ports" => {
                    let (min, max) = value
                        .split_once('-')
                        .and_then(|(a, b)| Some((a.parse::<u16>().ok()?, b.parse::<u16>().ok()?)))
                        .ok_or_else(|| bad("not MIN-MAX"))?;
                    if min < 1024 || !min.is_multiple_of(2) || max <= min {
                        return Err(bad("MIN must be even and 1024 or above, MAX above MIN"));
                    }
                    (spec.port_min, spec.port_max) = (min, max);
                    ports = true;
                }
                "fast-path" => {
                    spec.fast_path = FastPathRequest::from_str(value, true)
                        .map_err(|_| bad("auto, xdp, xdp-generic, tc or off"))?;
                }
                _ => return Err(format!("unknown key `{key}` in `{text}`")),
            }
        }
        if spec.name.is_empty() {
            return Err(format!("`{text}` has no name="));
        }
        if spec.advertise_v4.is_none() && spec.advertise_v6.is_none() {
            return Err(format!("interface {} has no advertise=", spec.name));
        }
        if !ports {
            return Err(format!("interface {} has no ports=MIN-MAX", spec.name));
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_environment_variable_begins_with_switchboard() {
        assert_eq!(
            switchboard_service::config::unprefixed_variables::<Config>(),
            Vec::<String>::new()
        );
    }

    fn load(args: &[&str]) -> Result<Config, ConfigError> {
        Config::load_from(std::iter::once("switchboard-rtpmanager").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let c = load(&[]).expect("defaults are valid");
        assert_eq!(c.grpc_port, 9090);
        assert_eq!((c.rtp_port_min, c.rtp_port_max), (10000, 20000));
        assert_eq!(c.fast_path, FastPathRequest::Auto);
        assert_eq!(c.port_pairs(), 5000);
        assert_eq!(c.bpf_pin_path, PathBuf::from("/sys/fs/bpf/switchboard"));
        assert!(
            !c.keep_on_exit,
            "a clean exit removes the kernel path by default"
        );
        assert_eq!(c.metrics_listen, None, "no metrics listener by default");
        assert_eq!(
            (c.media_timeout, c.hold_timeout),
            (60, 3600),
            "rtpengine's timeout and silent-timeout"
        );
        assert_eq!(c.source_learning_ms, 3000, "rtpengine's delayed learning");
        assert_eq!(c.max_legs_per_call, 4);
        assert_eq!(c.relay_capacity_pps, 70_000);
        assert_eq!(c.relay_workers, 0);
        assert_eq!(c.control_threads, 1);
    }

    #[test]
    fn metrics_listen_parses_and_names_the_option_when_invalid() {
        let c = load(&["--metrics-listen", "127.0.0.1:9190"]).expect("valid");
        assert_eq!(
            c.metrics_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 9190)))
        );
        let c = load(&["--metrics-listen", "[::1]:9190"]).expect("valid IPv6");
        assert_eq!(c.metrics_listen.map(|a| a.port()), Some(9190));
        for bad in ["127.0.0.1", "localhost:9190", "127.0.0.1:70000", ""] {
            let err = load(&["--metrics-listen", bad]).expect_err(bad);
            assert!(err.to_string().contains("--metrics-listen"), "{bad}: {err}");
        }
    }

    #[test]
    fn invalid_ranges_name_the_option() {
        let err = load(&["--rtp-port-min", "10001"]).expect_err("odd min");
        assert!(
            err.to_string().contains("--rtp-port-min: must be even"),
            "{err}"
        );
        let err =
            load(&["--rtp-port-min", "30000", "--rtp-port-max", "20000"]).expect_err("inverted");
        assert!(err.to_string().contains("--rtp-port-max"), "{err}");
        let err = load(&["--fast-path", "warp"]).expect_err("bad mode");
        assert!(err.to_string().contains("--fast-path"), "{err}");
        let err = load(&["--advertise", "0.0.0.0"]).expect_err("unspecified");
        assert!(err.to_string().contains("--advertise"), "{err}");
        let err =
            load(&["--media-timeout", "120", "--hold-timeout", "60"]).expect_err("hold shorter");
        assert!(err.to_string().contains("--hold-timeout"), "{err}");
        let err = load(&["--max-legs-per-call", "1"]).expect_err("too few");
        assert!(err.to_string().contains("--max-legs-per-call"), "{err}");
        let err = load(&["--source-learning-ms", "70000"]).expect_err("too long");
        assert!(err.to_string().contains("--source-learning-ms"), "{err}");
        let err = load(&["--log-level", "loud=="]).expect_err("bad filter");
        assert!(err.to_string().contains("--log-level"), "{err}");
        let err = load(&["--control-threads", "0"]).expect_err("no thread");
        assert!(
            err.to_string()
                .contains("--control-threads: must be at least 1"),
            "{err}"
        );
    }

    #[test]
    fn grpc_tls_options_come_in_pairs() {
        let c = load(&[]).expect("defaults are valid");
        assert_eq!(
            (
                &c.grpc_tls_cert,
                &c.grpc_tls_key,
                &c.grpc_tls_client_ca,
                &c.grpc_token_file
            ),
            (&None, &None, &None, &None),
            "plaintext without tokens by default"
        );
        let err = load(&["--grpc-tls-cert", "m.crt"]).expect_err("cert alone");
        assert!(
            err.to_string()
                .contains("--grpc-tls-cert: needs --grpc-tls-key"),
            "{err}"
        );
        let err = load(&["--grpc-tls-key", "m.key"]).expect_err("key alone");
        assert!(err.to_string().contains("--grpc-tls-key"), "{err}");
        let err = load(&["--grpc-tls-client-ca", "ca.crt"]).expect_err("client CA alone");
        assert!(err.to_string().contains("--grpc-tls-client-ca"), "{err}");
        let c = load(&[
            "--grpc-tls-cert",
            "m.crt",
            "--grpc-tls-key",
            "m.key",
            "--grpc-tls-client-ca",
            "ca.crt",
            "--grpc-token-file",
            "tokens",
        ])
        .expect("a complete set");
        assert_eq!(c.grpc_tls_client_ca, Some(PathBuf::from("ca.crt")));
        assert_eq!(c.grpc_token_file, Some(PathBuf::from("tokens")));
    }

    #[test]
    fn named_interfaces_parse_with_their_defaults() {
        let c = load(&[
            "--interface",
            "name=public,device=eth0,advertise=203.0.113.5,advertise=2001:db8::5,ports=20000-20999,fast-path=tc",
            "--interface",
            "name=private,bind=10.0.0.1,advertise=10.0.0.1,ports=21000-21999",
        ])
        .expect("valid");
        let specs = c.named_interfaces().expect("valid");
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].name, "public");
        assert_eq!(specs[0].device.as_deref(), Some("eth0"));
        assert_eq!(specs[0].advertise_v6, "2001:db8::5".parse().ok());
        assert_eq!((specs[0].port_min, specs[0].port_max), (20000, 20999));
        assert_eq!(specs[0].fast_path, FastPathRequest::Tc);
        assert_eq!(
            specs[1].bind,
            "10.0.0.1".parse::<IpAddr>().expect("literal")
        );
        assert_eq!(specs[1].device, None);
        assert_eq!(
            specs[1].fast_path,
            FastPathRequest::Auto,
            "--fast-path by default"
        );
        assert!(load(&[])
            .expect("defaults")
            .named_interfaces()
            .expect("none")
            .is_empty());
    }

    #[test]
    fn named_interfaces_come_from_a_config_file_array() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("rtpmanager.toml");
        std::fs::write(
            &file,
            "interface = [\"name=a,advertise=10.0.0.1,ports=20000-20099\", \"name=b,advertise=10.0.1.1,ports=20100-20199\"]\n",
        )
        .expect("write");
        let c = load(&["--config", file.to_str().expect("utf-8")]).expect("valid file");
        let names: Vec<String> = c
            .named_interfaces()
            .expect("valid")
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(names, vec!["a", "b"]);
    }

    #[test]
    fn overlapping_or_incomplete_interfaces_are_refused_naming_the_option() {
        let err = load(&[
            "--interface",
            "name=a,advertise=10.0.0.1,ports=20000-20999",
            "--interface",
            "name=b,advertise=10.0.1.1,ports=20998-21999",
        ])
        .expect_err("overlap");
        assert!(
            err.to_string().contains("--interface") && err.to_string().contains("overlap"),
            "{err}"
        );
        for bad in [
            "advertise=10.0.0.1,ports=20000-20999",
            "name=a,ports=20000-20999",
            "name=a,advertise=10.0.0.1",
            "name=a,advertise=10.0.0.1,ports=20001-20999",
            "name=a,advertise=10.0.0.1,ports=20000-20999,colour=blue",
            "name=a,advertise=0.0.0.0,ports=20000-20999",
        ] {
            let err = load(&["--interface", bad]).expect_err(bad);
            assert!(err.to_string().contains("--interface"), "{bad}: {err}");
        }
    }

    #[test]
    fn fast_path_values_parse() {
        for (text, want) in [
            ("auto", FastPathRequest::Auto),
            ("xdp", FastPathRequest::Xdp),
            ("xdp-generic", FastPathRequest::XdpGeneric),
            ("tc", FastPathRequest::Tc),
            ("off", FastPathRequest::Off),
        ] {
            assert_eq!(load(&["--fast-path", text]).expect("valid").fast_path, want);
        }
    }
}
