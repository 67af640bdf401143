//! Command-line, environment and config-file options of `switchboard-signaling`.
//!
//! Every option is a flag, an environment variable (`SWITCHBOARD_` and the
//! flag's name in UPPER_SNAKE_CASE; see [`LEGACY_ENVIRONMENT`] for the exceptions) and a key of the optional TOML file given by `--config`;
//! precedence is flag > environment > file > default.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use switchboard_service::ConfigError;

use crate::auth::{Algorithm, AuthConfig, AuthMode, ChallengeMode, Cidr, LockoutConfig};
use crate::b2bua::{CallLimits, DisplayNamePolicy, FromPolicy, IdentityPolicy};
use crate::registrar::RegistrarConfig;
use crate::sip::FramingLimits;
use crate::transaction::TimerConfig;
use crate::transport::limits::ConnectionLimits;

/// Whether SIP requests are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthOption {
    /// Digest authentication (RFC 3261 §22, MD5 and SHA-256).
    Digest,
    /// No authentication at all.
    Anonymous,
}

/// How many digest challenges a 401/407 carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthChallengesOption {
    /// One challenge: the user's `algorithm` from the users file if it is
    /// offered, else the first of --auth-algorithms. Works with every phone.
    One,
    /// One challenge per algorithm of --auth-algorithms (RFC 8760); phones
    /// that refuse a response naming an algorithm they do not know (baresip
    /// 1.0, many older phones) cannot register.
    All,
}

/// What happens to a From user that is not the authenticated user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FromIdentityOption {
    /// The callee sees the authenticated user in From.
    Replace,
    /// The INVITE is refused with 403.
    Reject,
    /// The caller's From passes unchanged (P-Asserted-Identity still names the user).
    Keep,
}

/// Whether an authenticated caller's display name reaches the callee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DisplayNameOption {
    /// Always.
    Keep,
    /// Only when the From user was the authenticated user (a replaced From
    /// loses its display name too, which was part of the disguise).
    IfMatching,
    /// Never.
    Drop,
}

/// Descriptors kept out of the SIP TCP connection limit for everything
/// else: the UDP and listening sockets, RTP manager channels, the
/// registrar's files, the runtime's own.
pub const RESERVED_FILES: usize = 256;

/// Where the dialplan is read from when `--dialplan` is not given.
pub const DEFAULT_DIALPLAN: &str = "/etc/switchboard/dialplan.json";

/// Environment variables once read under another name (old unprefixed
/// names, and those of the system Switchboard replaces), with the option
/// that took their place: set, they are reported at start, never read.
/// The unprefixed form of every current variable is reported too.
pub const LEGACY_ENVIRONMENT: &[(&str, &str)] = &[
    ("PORT", "port"),
    ("BIND_ADDRESS", "bind-address"),
    ("ADVERTISE", "advertise"),
    // The system Switchboard replaces.
    ("DIALPLAN_PATH", "dialplan"),
    ("LOGLEVEL", "log-level"),
    ("RTPMANAGER_ADDRS", "rtpmanager"),
];

/// Switchboard signaling server: SIP over UDP and TCP, registrar, B2BUA with a
/// JSON dialplan, RTP manager pool, REST API.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "switchboard-signaling",
    version,
    about,
    long_about = None,
    after_help = "Users: `switchboard-signaling add-user --help` adds one to a users file."
)]
pub struct Config {
    /// TOML config file; its keys are the long option names.
    #[arg(long, env = "SWITCHBOARD_SIGNALING_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address the SIP transports (UDP and TCP) bind to; `::` listens on IPv4 and IPv6.
    #[arg(long, env = "SWITCHBOARD_SIP_BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,

    /// SIP port, UDP and TCP.
    #[arg(long, env = "SWITCHBOARD_SIP_PORT", default_value_t = 5060)]
    pub port: u16,

    /// Host or address put in Via, Contact and Record-Route; defaults to the
    /// bind address (or 127.0.0.1 when binding to all addresses).
    #[arg(long, env = "SWITCHBOARD_SIP_ADVERTISE")]
    pub advertise: Option<String>,

    /// SIP over TLS (RFC 3261 §26.2): this server's certificate chain (PEM,
    /// leaf first). With --tls-key, TLS is served on --tls-port and
    /// `sips:` and `transport=tls` targets can be dialled (shown to trunks
    /// that ask for a client certificate). Read again on SIGHUP: new
    /// connections get the renewed certificate.
    #[arg(long, env = "SWITCHBOARD_SIP_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "SWITCHBOARD_SIP_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Port of SIP over TLS, on --bind-address.
    #[arg(long, env = "SWITCHBOARD_SIP_TLS_PORT", default_value_t = 5061)]
    pub tls_port: u16,

    /// SIP over WebSocket (RFC 7118): the port it is served on, on
    /// --bind-address (the HTTP upgrade at any path, the `sip`
    /// subprotocol). Off by default. Media stays plain RTP through the
    /// managers: WebRTC clients needing DTLS-SRTP and ICE are not served.
    #[arg(long, env = "SWITCHBOARD_SIP_WS_PORT")]
    pub ws_port: Option<u16>,

    /// SIP over secure WebSocket (WSS): its port, with --tls-cert's
    /// certificate. Off by default.
    #[arg(long, env = "SWITCHBOARD_SIP_WSS_PORT")]
    pub wss_port: Option<u16>,

    /// PEM file of the certificate authorities that servers reached over
    /// TLS (trunks, `sips:` targets) must chain to, instead of the
    /// system's roots. A server's certificate must name the address
    /// dialled in a subjectAltName.
    #[arg(long, env = "SWITCHBOARD_SIP_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// DNS servers (`address` or `address:port`, comma-separated) that
    /// dial targets named by host name are resolved with (RFC 3263:
    /// NAPTR, SRV, A/AAAA); default: those of /etc/resolv.conf.
    /// /etc/hosts is read either way.
    #[arg(
        long,
        env = "SWITCHBOARD_DNS_SERVERS",
        value_delimiter = ',',
        value_name = "ADDRESS"
    )]
    pub dns_server: Vec<String>,

    /// RTP managers' gRPC endpoints, comma-separated: `host:port`,
    /// `http://host:port`, `https://host:port`, or any of them as
    /// `id=endpoint` to give the manager the id the REST API names it by
    /// (`/api/v1/rtpmanagers/{id}/drain`); without a name its id is the
    /// endpoint without scheme. `host:port` means https:// when
    /// --rtpmanager-tls-ca is set, else http://.
    #[arg(
        long = "rtpmanager",
        env = "SWITCHBOARD_RTPMANAGER",
        value_delimiter = ',',
        default_value = "127.0.0.1:9090"
    )]
    pub rtpmanagers: Vec<String>,

    /// Seconds between health checks of each RTP manager.
    #[arg(
        long,
        env = "SWITCHBOARD_RTPMANAGER_HEALTH_INTERVAL",
        default_value_t = 2
    )]
    pub rtpmanager_health_interval: u64,

    /// Consecutive failed health checks before an RTP manager is declared
    /// down (no new calls go to it). One lost check on a busy host is not
    /// an outage.
    #[arg(long, env = "SWITCHBOARD_RTPMANAGER_FAILURES", default_value_t = 2)]
    pub rtpmanager_failures: u32,

    /// Seconds an RTP manager may stay down before its calls are treated as
    /// lost and moved to another manager. Its pinned fast path keeps their
    /// media flowing meanwhile, and a manager restarted with its
    /// --state-dir re-adopts them: moving them sooner costs a re-INVITE for
    /// nothing.
    #[arg(long, env = "SWITCHBOARD_RTPMANAGER_LOST_GRACE", default_value_t = 15)]
    pub rtpmanager_lost_grace: u64,

    /// Calls moved at a time when an RTP manager's calls migrate (drain
    /// `mode=migrate` without `batch`, a lost manager): each takes a
    /// re-INVITE of both sides, so a batch bounds the re-INVITEs in flight.
    #[arg(
        long,
        env = "SWITCHBOARD_RTPMANAGER_MIGRATE_BATCH",
        default_value_t = 10
    )]
    pub rtpmanager_migrate_batch: usize,

    /// PEM CA certificate(s) that sign the RTP managers' certificates (their
    /// --grpc-tls-cert). With it, managers are reached over TLS (an explicit
    /// http:// endpoint stays plaintext) and each must present a
    /// certificate for the host name or IP address it is listed under.
    #[arg(long, env = "SWITCHBOARD_RTPMANAGER_TLS_CA", value_name = "FILE")]
    pub rtpmanager_tls_ca: Option<PathBuf>,

    /// PEM client certificate presented to the RTP managers, for managers
    /// that require one (their --grpc-tls-client-ca). Needs
    /// --rtpmanager-tls-key and --rtpmanager-tls-ca.
    #[arg(long, env = "SWITCHBOARD_RTPMANAGER_TLS_CERT", value_name = "FILE")]
    pub rtpmanager_tls_cert: Option<PathBuf>,

    /// PEM private key of --rtpmanager-tls-cert.
    #[arg(long, env = "SWITCHBOARD_RTPMANAGER_TLS_KEY", value_name = "FILE")]
    pub rtpmanager_tls_key: Option<PathBuf>,

    /// File whose first token line (blank and `#` lines skipped) is sent to
    /// every RTP manager as `authorization: Bearer <token>`, for managers
    /// started with --grpc-token-file. Read at start.
    #[arg(long, env = "SWITCHBOARD_RTPMANAGER_TOKEN_FILE", value_name = "FILE")]
    pub rtpmanager_token_file: Option<PathBuf>,

    /// Address of the REST API (JSON and Prometheus metrics).
    #[arg(long, env = "SWITCHBOARD_REST_ADDRESS", default_value = "127.0.0.1")]
    pub rest_address: IpAddr,

    /// Port of the REST API.
    #[arg(long, env = "SWITCHBOARD_REST_PORT", default_value_t = 8080)]
    pub rest_port: u16,

    /// File of bearer tokens for the REST API, one per line (blank lines and
    /// lines starting with `#` skipped; at least 16 visible characters each,
    /// e.g. `openssl rand -hex 32`). With a token, every endpoint except
    /// `/api/v1/health` needs `Authorization: Bearer <token>`. Without one,
    /// --rest-address must be a loopback address.
    #[arg(long, env = "SWITCHBOARD_API_TOKEN_FILE", value_name = "FILE")]
    pub api_token_file: Option<PathBuf>,

    /// One bearer token for the REST API, accepted beside those of
    /// --api-token-file. Prefer the environment variable or the file: a
    /// flag is visible to every local user in the process list.
    #[arg(
        long,
        env = "SWITCHBOARD_API_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub api_token: Option<ApiToken>,

    /// Whether `/metrics` needs the token too, when one is configured.
    /// `false` lets a scraper without credentials read it (the figures name
    /// RTP managers and load, so expose them knowingly).
    #[arg(long, env = "SWITCHBOARD_METRICS_REQUIRE_TOKEN", default_value_t = true, action = clap::ArgAction::Set)]
    pub metrics_require_token: bool,

    /// JSON dialplan file, reloaded on SIGHUP (an invalid new plan is
    /// refused and the old one kept). Without the default file, calls are
    /// refused with 480; a file named here must exist and be valid.
    #[arg(long, env = "SWITCHBOARD_DIALPLAN", default_value = DEFAULT_DIALPLAN)]
    pub dialplan: PathBuf,

    /// Directory for persistent state (registrations).
    #[arg(
        long,
        env = "SWITCHBOARD_DATA_DIR",
        default_value = "/var/lib/switchboard"
    )]
    pub data_dir: PathBuf,

    /// Call detail records: one JSON line per ended call, appended to this
    /// file (created if missing; opened at start, so a path that cannot be
    /// written stops the start). Each line is one write on an O_APPEND
    /// file: a crash can cut only the last line. SIGHUP reopens the file by
    /// its path (logrotate: rename, then `kill -HUP`). Without it no CDR
    /// is written.
    #[arg(long, env = "SWITCHBOARD_CDR_FILE", value_name = "FILE")]
    pub cdr_file: Option<PathBuf>,

    /// Domains this server is responsible for (registrar and calls); the first
    /// is the domain of a bare user name. Empty: every domain is served.
    #[arg(long = "domain", env = "SWITCHBOARD_DOMAIN", value_delimiter = ',')]
    pub domains: Vec<String>,

    /// Digest realm of the challenges; the HA1 values of the users file are
    /// computed for it (`switchboard-signaling add-user --realm`).
    #[arg(long, env = "SWITCHBOARD_REALM", default_value = "switchboard")]
    pub realm: String,

    /// TOML users file (`[[user]]` entries with HA1 values or demo passwords),
    /// reloaded on SIGHUP. Without one, digest authentication knows no user
    /// and refuses every request that needs it.
    #[arg(long, env = "SWITCHBOARD_USERS_FILE", value_name = "FILE")]
    pub users_file: Option<PathBuf>,

    /// `digest` authenticates the methods of --auth-methods; `anonymous`
    /// authenticates nothing (logged as a warning at start: for tests and labs).
    #[arg(long, env = "SWITCHBOARD_AUTH", value_enum, default_value = "digest")]
    pub auth: AuthOption,

    /// Methods that need digest authentication, comma-separated.
    #[arg(
        long,
        env = "SWITCHBOARD_AUTH_METHODS",
        value_delimiter = ',',
        default_value = "REGISTER,INVITE"
    )]
    pub auth_methods: Vec<String>,

    /// Digest algorithms accepted, in order of preference (MD5, SHA-256).
    /// Credentials computed with an algorithm not listed are refused. With
    /// --auth-challenges one, the first is the one phones are challenged with
    /// unless their users-file entry names another; MD5 first works with
    /// every phone, SHA-256 first only with phones that know RFC 8760.
    #[arg(
        long,
        env = "SWITCHBOARD_AUTH_ALGORITHMS",
        value_delimiter = ',',
        default_value = "MD5,SHA-256"
    )]
    pub auth_algorithms: Vec<String>,

    /// How many challenges a 401/407 carries: `one` (the user's preferred
    /// algorithm or the first of --auth-algorithms) or `all` (one per
    /// algorithm, RFC 8760 §2.4; some phones then give up).
    #[arg(
        long,
        env = "SWITCHBOARD_AUTH_CHALLENGES",
        value_enum,
        default_value = "one"
    )]
    pub auth_challenges: AuthChallengesOption,

    /// Networks (CIDR, comma-separated) whose requests need no authentication.
    #[arg(long, env = "SWITCHBOARD_TRUSTED_NETWORKS", value_delimiter = ',')]
    pub trusted_networks: Vec<String>,

    /// Secret keying the nonces, and the flow tokens of the Paths a node
    /// records when registrations are shared (`--location-store`). Without
    /// it a random secret is drawn at each start, so nonces issued before a
    /// restart are refused (clients simply authenticate again) and phones
    /// registered through a node are unreachable from the others after its
    /// restart until they register again; set it to keep both valid across
    /// restarts or to share nonces between servers.
    #[arg(long, env = "SWITCHBOARD_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<String>,

    /// Seconds a nonce stays fresh; a late one is answered with `stale=true`.
    #[arg(long, env = "SWITCHBOARD_NONCE_LIFETIME", default_value_t = 300)]
    pub nonce_lifetime: u64,

    /// Authentication failures from one source (an IPv4 address or an IPv6
    /// /64) within --lockout-window that block that source. Failures are
    /// never charged to the user name, so guesses from elsewhere cannot
    /// lock a user out.
    #[arg(long, env = "SWITCHBOARD_LOCKOUT_MAX_FAILURES", default_value_t = 5)]
    pub lockout_max_failures: usize,

    /// Seconds in which --lockout-max-failures failures are counted.
    #[arg(long, env = "SWITCHBOARD_LOCKOUT_WINDOW", default_value_t = 60)]
    pub lockout_window: u64,

    /// Seconds a blocked source is answered 403.
    #[arg(long, env = "SWITCHBOARD_LOCKOUT_COOL_DOWN", default_value_t = 300)]
    pub lockout_cool_down: u64,

    /// Milliseconds by which a wrong guess for a user name is answered late
    /// once that name has collected --lockout-max-failures failures within
    /// --lockout-window from any sources; the right password is never
    /// delayed and the user is never locked out. 0 turns it off.
    #[arg(
        long,
        env = "SWITCHBOARD_LOCKOUT_USER_DELAY_MS",
        default_value_t = 2000
    )]
    pub lockout_user_delay_ms: u64,

    /// What callees see when an authenticated caller's From user is not
    /// the authenticated user. Every callee INVITE of an authenticated
    /// caller carries that user in P-Asserted-Identity (RFC 3325).
    #[arg(
        long,
        env = "SWITCHBOARD_FROM_IDENTITY",
        value_enum,
        default_value = "replace"
    )]
    pub from_identity: FromIdentityOption,

    /// Whether an authenticated caller's From display name reaches the callee.
    #[arg(
        long,
        env = "SWITCHBOARD_FROM_DISPLAY_NAME",
        value_enum,
        default_value = "if-matching"
    )]
    pub from_display_name: DisplayNameOption,

    /// Shortest registration accepted, in seconds (shorter: 423 with Min-Expires).
    #[arg(long, env = "SWITCHBOARD_MIN_EXPIRES", default_value_t = 60)]
    pub min_expires: u32,

    /// Longest registration granted, in seconds (longer ones are shortened).
    #[arg(long, env = "SWITCHBOARD_MAX_EXPIRES", default_value_t = 86_400)]
    pub max_expires: u32,

    /// Registration length when the REGISTER gives none, in seconds.
    #[arg(long, env = "SWITCHBOARD_DEFAULT_EXPIRES", default_value_t = 3600)]
    pub default_expires: u32,

    /// Most contacts (bindings) one address-of-record may have, existing
    /// and new counted together, like Kamailio's `max_contacts`: a REGISTER
    /// that would go beyond is refused whole with 403. Each binding is a
    /// branch when a call forks.
    #[arg(long, env = "SWITCHBOARD_MAX_CONTACTS", default_value_t = 5)]
    pub max_contacts: usize,

    /// Binding records journalled after which the registrar's store writes
    /// a snapshot and starts a new journal (at least twice the
    /// addresses-of-record, so the cost stays amortised). The snapshot is
    /// written in the background; REGISTERs do not wait for it.
    #[arg(long, env = "SWITCHBOARD_REGISTRAR_COMPACT_AFTER", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub registrar_compact_after: u32,

    /// Seconds after which a TCP connection without a complete message (or
    /// keep-alive ping) received or sent is closed; octets of an incomplete
    /// message do not count. A connection a phone registered over (TCP,
    /// TLS, WebSocket) stays open until its registration ends, since the
    /// phone is reached only through it.
    #[arg(long, env = "SWITCHBOARD_TCP_IDLE_TIMEOUT", default_value_t = 120)]
    pub tcp_idle_timeout: u64,

    /// Seconds a SIP message on TCP may take from its first octet to its
    /// last before the connection is closed (Kamailio's tcp_msg_read_timeout
    /// is 20 s); a peer trickling octets cannot hold a connection longer.
    #[arg(long, env = "SWITCHBOARD_TCP_MESSAGE_TIMEOUT", default_value_t = 20)]
    pub tcp_message_timeout: u64,

    /// Open SIP TCP connections at most, accepted and opened by the server
    /// (Kamailio's and OpenSIPS' tcp_max_connections default); more are
    /// closed at once. A sixteenth is kept for connections the server opens
    /// (to phones registered over TCP). Lowered at start to fit the
    /// open-file limit.
    #[arg(long, env = "SWITCHBOARD_TCP_MAX_CONNECTIONS", default_value_t = 2048)]
    pub tcp_max_connections: usize,

    /// SIP TCP connections one source address (IPv6: one /64) may hold;
    /// more are closed at once. Room for a site of 64 phones behind one NAT,
    /// while 32 sources are needed to fill --tcp-max-connections.
    #[arg(
        long,
        env = "SWITCHBOARD_TCP_MAX_CONNECTIONS_PER_SOURCE",
        default_value_t = 64
    )]
    pub tcp_max_connections_per_source: usize,

    /// SIP messages per second one source address (IPv6: one /64) may send,
    /// UDP and TCP together, with bursts of twice that; the excess is
    /// dropped unanswered before parsing (like Kamailio's pike). 0: no limit.
    /// 1000/s carries a trunk (or a proxy in front) at about 150 calls per
    /// second, some 7 messages each; load generators need 0.
    #[arg(long, env = "SWITCHBOARD_SOURCE_RATE_LIMIT", default_value_t = 1000)]
    pub source_rate_limit: u32,

    /// Networks (CIDR, comma-separated) exempt from --source-rate-limit:
    /// trunks, or a proxy or SBC in front that carries many users' traffic.
    #[arg(long, env = "SWITCHBOARD_SOURCE_RATE_EXEMPT", value_delimiter = ',')]
    pub source_rate_exempt: Vec<String>,

    /// Octets of messages from TCP, TLS and WebSocket connections waiting
    /// for the SIP core at most; one source may hold a quarter of them.
    /// Beyond, messages are dropped. (The core reads UDP datagrams from
    /// the socket itself: they wait in its receive buffer.)
    #[arg(long, env = "SWITCHBOARD_INPUT_QUEUE_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub input_queue_bytes: usize,

    /// Open REST API connections at most; more are closed at once.
    #[arg(long, env = "SWITCHBOARD_REST_MAX_CONNECTIONS", default_value_t = 256)]
    pub rest_max_connections: usize,

    /// Seconds after which a REST API connection with nothing read or
    /// written is closed, so idle clients cannot hold --rest-max-connections.
    #[arg(long, env = "SWITCHBOARD_REST_IDLE_TIMEOUT", default_value_t = 60)]
    pub rest_idle_timeout: u64,

    /// Events an /api/v1/events client may fall behind before it is told
    /// (`event: lagged`) and dropped: the ring all clients read, the only
    /// memory slow clients cost (a few hundred octets an event).
    #[arg(long, env = "SWITCHBOARD_EVENT_BUFFER", default_value_t = 4096)]
    pub event_buffer: usize,

    /// Value of the Server header of SIP responses; empty: no Server header.
    /// The default names no version, which would tell an attacker which
    /// flaws to try.
    #[arg(long, env = "SWITCHBOARD_SERVER_HEADER", default_value = "Switchboard")]
    pub server_header: String,

    /// Largest header section and largest body accepted, each, in octets:
    /// a larger header is answered 513, a larger body 413 (then a TCP
    /// connection is closed).
    #[arg(long, env = "SWITCHBOARD_MAX_MESSAGE_SIZE", default_value_t = 65_535)]
    pub max_message_size: usize,

    /// SIP timer T1 (round-trip estimate), milliseconds.
    #[arg(long, env = "SWITCHBOARD_T1_MS", default_value_t = 500)]
    pub t1_ms: u64,

    /// SIP timer T2 (longest retransmit interval), milliseconds.
    #[arg(long, env = "SWITCHBOARD_T2_MS", default_value_t = 4000)]
    pub t2_ms: u64,

    /// SIP timer T4 (longest time a message lives in the network), milliseconds.
    #[arg(long, env = "SWITCHBOARD_T4_MS", default_value_t = 5000)]
    pub t4_ms: u64,

    /// Answer every UDP request at the address and port it came from, as if
    /// it asked for rport (RFC 3581), for clients behind NAT that do not.
    /// Off: responses go where the top Via says (RFC 3261 §18.2.2).
    #[arg(long, env = "SWITCHBOARD_FORCE_RPORT")]
    pub force_rport: bool,

    /// Seconds a shutdown (SIGTERM, SIGINT) first waits for calls to end by
    /// themselves, refusing new ones with 503 and Retry-After; 0 hangs up
    /// at once. A second signal ends the wait.
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_DRAIN", default_value_t = 0)]
    pub shutdown_drain: u64,

    /// Seconds a shutdown gives the calls it hangs up (BYE on both legs,
    /// CANCEL to ringing callees, media deleted) to finish before the
    /// process exits anyway; comes after --shutdown-drain.
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_TIMEOUT", default_value_t = 10)]
    pub shutdown_timeout: u64,

    /// This server's name on shared RTP managers (letters, digits, `.`,
    /// `_`, `-`; unique among the signaling servers of a pool, stable across
    /// restarts): every call it places there is named after it, so that
    /// after a crash it deletes its own orphans and never another node's
    /// calls. Defaults to the host name.
    #[arg(long, env = "SWITCHBOARD_NODE_ID")]
    pub node_id: Option<String>,

    /// Where registrations live. Unset: this server's own journal in
    /// `--data-dir` (one server). `redis://[user:password@]host[:port][/db]`
    /// (or `rediss://` for TLS, `redis+unix:///path`): a Redis (or Valkey)
    /// server shared by several signaling servers, each keeping a cache
    /// that follows the others' changes.
    /// `redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]`:
    /// the master the Redis Sentinels name (a failover is followed).
    /// Credentials may come from the environment instead of the command
    /// line.
    #[arg(
        long,
        env = "SWITCHBOARD_LOCATION_STORE",
        value_name = "URL",
        hide_env_values = true
    )]
    pub location_store: Option<String>,

    /// PEM file of the CA that signed the shared location store's
    /// certificate (`rediss://`), instead of the system's roots.
    #[arg(long, env = "SWITCHBOARD_LOCATION_STORE_CA", value_name = "FILE")]
    pub location_store_ca: Option<PathBuf>,

    /// PEM certificate this server shows the shared location store when it
    /// asks for one (Redis `tls-auth-clients yes`); with
    /// `--location-store-key`.
    #[arg(long, env = "SWITCHBOARD_LOCATION_STORE_CERT", value_name = "FILE")]
    pub location_store_cert: Option<PathBuf>,

    /// The private key of `--location-store-cert`, PEM.
    #[arg(long, env = "SWITCHBOARD_LOCATION_STORE_KEY", value_name = "FILE")]
    pub location_store_key: Option<PathBuf>,

    /// Prefix of every key and channel in the shared location store: the
    /// servers of one deployment share it; deployments sharing a Redis
    /// server need different ones.
    #[arg(
        long,
        env = "SWITCHBOARD_LOCATION_KEY_PREFIX",
        default_value = "switchboard:"
    )]
    pub location_key_prefix: String,

    /// Seconds lookups still trust the cached registrations after the
    /// shared location store is lost; then calls to registered users are
    /// answered 480 until it answers again (other servers' changes made
    /// meanwhile are not seen).
    #[arg(long, env = "SWITCHBOARD_LOCATION_STALE_AFTER", default_value_t = 30)]
    pub location_stale_after: u64,

    /// With `--location-store`: seconds after which a signaling server that
    /// stopped refreshing its key in the shared store is lost, and another
    /// one ends its calls (BYE to both sides, media deleted, record
    /// written). Longer than any pause a live server may have (a Redis
    /// failover): a server cut off longer than this has its calls ended.
    #[arg(long, env = "SWITCHBOARD_NODE_LOST_AFTER", default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub node_lost_after: u64,

    /// Seconds a call on an RTP manager that this server placed but no
    /// longer knows (it was restarted, killed) must have existed before it
    /// is deleted; checked at start, whenever a manager comes back and
    /// every 5 minutes.
    #[arg(long, env = "SWITCHBOARD_RECONCILE_GRACE", default_value_t = 30)]
    pub reconcile_grace: u64,

    /// Calls an authenticated user may have at once (being set up, ringing
    /// or answered); the next INVITE is refused 486 before any media is
    /// allocated. 0: no limit.
    #[arg(long, env = "SWITCHBOARD_MAX_CALLS_PER_USER", default_value_t = 20)]
    pub max_calls_per_user: usize,

    /// Calls one source address (an IPv6 source: its /64) may have at once
    /// when they are not authenticated (trusted networks, e.g. trunks;
    /// anonymous mode); refused 486 beyond. 0: no limit.
    #[arg(long, env = "SWITCHBOARD_MAX_CALLS_PER_SOURCE", default_value_t = 100)]
    pub max_calls_per_source: usize,

    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(long, env = "SWITCHBOARD_LOG_LEVEL", default_value = "info", value_parser = switchboard_service::parse_log_level)]
    pub log_level: String,

    /// Threads of the async runtime: the transports' tasks (TLS handshakes
    /// among them), the REST API and the event stream. The SIP core, the
    /// binding store's commits and the requests to the RTP managers have
    /// threads of their own. 0: one per CPU.
    #[arg(long, env = "SWITCHBOARD_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: u16,
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
        let mut config: Self = switchboard_service::parse_layered(args)?;
        config.rtpmanagers.retain(|m| !m.trim().is_empty());
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.dns_servers()?;
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "tls-cert",
                    "needs --tls-key (the certificate's private key)",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "tls-key",
                    "needs --tls-cert (the certificate it belongs to)",
                ))
            }
            (None, None) if self.tls_ca.is_some() => {
                return Err(ConfigError::invalid(
                    "tls-ca",
                    "TLS is off: it needs --tls-cert and --tls-key",
                ))
            }
            _ => {}
        }
        if self.wss_port.is_some() && self.tls_cert.is_none() {
            return Err(ConfigError::invalid(
                "wss-port",
                "secure WebSocket needs --tls-cert and --tls-key",
            ));
        }
        let mut ports = vec![("port", Some(self.port))];
        if self.tls_cert.is_some() {
            ports.push(("tls-port", Some(self.tls_port)));
        }
        ports.push(("ws-port", self.ws_port));
        ports.push(("wss-port", self.wss_port));
        // TCP too, on the REST address.
        ports.push(("rest-port", Some(self.rest_port)));
        let ports: Vec<(&str, u16)> = ports
            .into_iter()
            .filter_map(|(name, port)| Some((name, port?)))
            .filter(|(_, port)| *port != 0)
            .collect();
        for (index, (name, port)) in ports.iter().enumerate() {
            if let Some((other, _)) = ports[..index].iter().find(|(_, p)| p == port) {
                return Err(ConfigError::invalid(
                    name,
                    format!("{port} is also --{other}; each transport needs a port of its own"),
                ));
            }
        }
        if self.rtpmanagers.is_empty() {
            return Err(ConfigError::invalid(
                "rtpmanager",
                "at least one RTP manager is needed",
            ));
        }
        let tls = self.rtpmanager_tls_ca.is_some();
        let mut ids = std::collections::BTreeSet::new();
        for manager in &self.rtpmanagers {
            let uri = manager_uri(manager, tls)
                .map_err(|reason| ConfigError::invalid("rtpmanager", reason))?;
            if !tls && uri.starts_with("https://") {
                return Err(ConfigError::invalid(
                    "rtpmanager",
                    format!("`{manager}` is https://: name the CA of the managers' certificates with --rtpmanager-tls-ca"),
                ));
            }
            let id = manager_id(manager);
            if !ids.insert(id.clone()) {
                return Err(ConfigError::invalid(
                    "rtpmanager",
                    format!("the id `{id}` names two managers"),
                ));
            }
        }
        match (&self.rtpmanager_tls_cert, &self.rtpmanager_tls_key) {
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "rtpmanager-tls-cert",
                    "needs --rtpmanager-tls-key (the certificate's private key)",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "rtpmanager-tls-key",
                    "needs --rtpmanager-tls-cert (the certificate it belongs to)",
                ))
            }
            (Some(_), Some(_)) if !tls => return Err(ConfigError::invalid(
                "rtpmanager-tls-cert",
                "needs --rtpmanager-tls-ca: a client certificate is presented in a TLS handshake",
            )),
            _ => {}
        }
        if let Some(token) = &self.api_token {
            crate::rest::check_token(token.expose())
                .map_err(|reason| ConfigError::invalid("api-token", reason))?;
        }
        let has_token = self.api_token.is_some() || self.api_token_file.is_some();
        if !has_token && !self.rest_address.is_loopback() {
            return Err(ConfigError::invalid(
                "rest-address",
                format!(
                    "{} is not a loopback address, and without --api-token-file (or --api-token) \
                     the REST API answers on loopback only",
                    self.rest_address
                ),
            ));
        }
        if self.rtpmanager_migrate_batch == 0 {
            return Err(ConfigError::invalid(
                "rtpmanager-migrate-batch",
                "must be at least 1 call",
            ));
        }
        if self.rtpmanager_health_interval == 0 {
            return Err(ConfigError::invalid(
                "rtpmanager-health-interval",
                "must be at least 1 second",
            ));
        }
        if self.rtpmanager_failures == 0 {
            return Err(ConfigError::invalid(
                "rtpmanager-failures",
                "must be at least 1 check",
            ));
        }
        for network in &self.trusted_networks {
            Cidr::parse(network)
                .map_err(|e| ConfigError::invalid("trusted-networks", e.to_string()))?;
        }
        if self.realm.is_empty() || self.realm.contains(['"', '\\']) {
            return Err(ConfigError::invalid(
                "realm",
                "must be non-empty, without '\"' or '\\'",
            ));
        }
        if self.auth_algorithms.is_empty() {
            return Err(ConfigError::invalid("auth-algorithms", "name at least one"));
        }
        for name in &self.auth_algorithms {
            if Algorithm::parse(name.trim()).is_none() {
                return Err(ConfigError::invalid(
                    "auth-algorithms",
                    format!("`{name}` is neither SHA-256 nor MD5"),
                ));
            }
        }
        if self.auth_methods.iter().any(|m| m.trim().is_empty()) {
            return Err(ConfigError::invalid("auth-methods", "empty method name"));
        }
        if self.min_expires > self.max_expires {
            return Err(ConfigError::invalid(
                "min-expires",
                format!(
                    "{} is above --max-expires {}",
                    self.min_expires, self.max_expires
                ),
            ));
        }
        if self.default_expires < self.min_expires || self.default_expires > self.max_expires {
            return Err(ConfigError::invalid(
                "default-expires",
                "must lie between --min-expires and --max-expires",
            ));
        }
        if self.max_contacts == 0 {
            return Err(ConfigError::invalid("max-contacts", "must be at least 1"));
        }
        if self.tcp_idle_timeout == 0 {
            return Err(ConfigError::invalid(
                "tcp-idle-timeout",
                "must be at least 1 second",
            ));
        }
        if let Some(node) = &self.node_id {
            check_node_id(node).map_err(|reason| ConfigError::invalid("node-id", reason))?;
        }
        if let Some(url) = &self.location_store {
            self.location_client(url)?;
        }
        if self.shutdown_timeout == 0 {
            return Err(ConfigError::invalid(
                "shutdown-timeout",
                "must be at least 1 second (BYEs and media deletes need a round trip)",
            ));
        }
        if self.tcp_message_timeout == 0 {
            return Err(ConfigError::invalid(
                "tcp-message-timeout",
                "must be at least 1 second",
            ));
        }
        if self.tcp_max_connections == 0 {
            return Err(ConfigError::invalid(
                "tcp-max-connections",
                "must be at least 1",
            ));
        }
        if self.tcp_max_connections_per_source == 0
            || self.tcp_max_connections_per_source > self.tcp_max_connections
        {
            return Err(ConfigError::invalid(
                "tcp-max-connections-per-source",
                "must be at least 1 and at most --tcp-max-connections",
            ));
        }
        for network in &self.source_rate_exempt {
            Cidr::parse(network)
                .map_err(|e| ConfigError::invalid("source-rate-exempt", e.to_string()))?;
        }
        if self.rest_idle_timeout == 0 {
            return Err(ConfigError::invalid(
                "rest-idle-timeout",
                "must be at least 1 second",
            ));
        }
        if self.event_buffer < 16 {
            return Err(ConfigError::invalid(
                "event-buffer",
                "must be at least 16 events",
            ));
        }
        if self.rest_max_connections == 0 {
            return Err(ConfigError::invalid(
                "rest-max-connections",
                "must be at least 1",
            ));
        }
        if self.server_header.chars().any(char::is_control) {
            return Err(ConfigError::invalid(
                "server-header",
                "must not contain control characters",
            ));
        }
        if self.input_queue_bytes < 8 * self.max_message_size {
            return Err(ConfigError::invalid(
                "input-queue-bytes",
                format!(
                    "must be at least 8 × --max-message-size ({}), so one source's quarter holds two of the largest messages",
                    8 * self.max_message_size
                ),
            ));
        }
        if self.max_message_size < 1024 {
            return Err(ConfigError::invalid(
                "max-message-size",
                "must be at least 1024 octets",
            ));
        }
        if self.t1_ms == 0 || self.t2_ms < self.t1_ms || self.t4_ms == 0 {
            return Err(ConfigError::invalid(
                "t1-ms",
                "T1 and T4 must be positive and T2 at least T1",
            ));
        }
        if self.lockout_user_delay_ms > 60_000 {
            return Err(ConfigError::invalid(
                "lockout-user-delay-ms",
                "at most 60000 (a longer wait only holds answers in memory)",
            ));
        }
        if self.lockout_max_failures == 0 {
            return Err(ConfigError::invalid(
                "lockout-max-failures",
                "must be at least 1",
            ));
        }
        if let Some(advertise) = &self.advertise {
            if advertise.is_empty() || advertise.contains(char::is_whitespace) {
                return Err(ConfigError::invalid(
                    "advertise",
                    format!("`{advertise}` is not a host name or address"),
                ));
            }
        }
        Ok(())
    }

    /// The SIP transaction timers.
    pub fn timers(&self) -> TimerConfig {
        TimerConfig {
            t1: Duration::from_millis(self.t1_ms),
            t2: Duration::from_millis(self.t2_ms),
            t4: Duration::from_millis(self.t4_ms),
        }
    }

    /// The registrar settings.
    pub fn registrar(&self) -> RegistrarConfig {
        RegistrarConfig {
            default_expires: self.default_expires,
            min_expires: self.min_expires,
            max_expires: self.max_expires,
            domains: self.domains.clone(),
            default_domain: self.domains.first().cloned(),
            max_contacts: self.max_contacts,
            node: self.location_store.as_ref().map(|_| self.node_id()),
        }
    }

    /// The authenticator settings, with the nonce secret the caller chose
    /// (--auth-secret, or random bytes).
    pub fn auth_config(&self, secret: Vec<u8>) -> AuthConfig {
        AuthConfig {
            mode: match self.auth {
                AuthOption::Digest => AuthMode::Digest,
                AuthOption::Anonymous => AuthMode::Anonymous,
            },
            methods: self
                .auth_methods
                .iter()
                .map(|m| m.trim().to_ascii_uppercase())
                .collect(),
            trusted_networks: self
                .trusted_networks
                .iter()
                .filter_map(|n| Cidr::parse(n).ok())
                .collect(),
            nonce_lifetime: Duration::from_secs(self.nonce_lifetime),
            lockout: LockoutConfig {
                max_failures: self.lockout_max_failures,
                window: Duration::from_secs(self.lockout_window),
                cool_down: Duration::from_secs(self.lockout_cool_down),
                user_delay: Duration::from_millis(self.lockout_user_delay_ms),
                ..LockoutConfig::default()
            },
            algorithms: self.digest_algorithms(),
            challenges: match self.auth_challenges {
                AuthChallengesOption::One => ChallengeMode::One,
                AuthChallengesOption::All => ChallengeMode::All,
            },
            ..AuthConfig::digest(&self.realm, secret)
        }
    }

    /// The caller identity policy of the B2BUA.
    pub fn identity_policy(&self) -> IdentityPolicy {
        IdentityPolicy {
            from: match self.from_identity {
                FromIdentityOption::Replace => FromPolicy::Replace,
                FromIdentityOption::Reject => FromPolicy::Reject,
                FromIdentityOption::Keep => FromPolicy::Keep,
            },
            display_name: match self.from_display_name {
                DisplayNameOption::Keep => DisplayNamePolicy::Keep,
                DisplayNameOption::IfMatching => DisplayNamePolicy::IfMatching,
                DisplayNameOption::Drop => DisplayNamePolicy::Drop,
            },
        }
    }

    /// The digest algorithms to offer, in order.
    pub fn digest_algorithms(&self) -> Vec<Algorithm> {
        self.auth_algorithms
            .iter()
            .filter_map(|name| Algorithm::parse(name.trim()))
            .collect()
    }

    /// Framing limits of the SIP transports.
    pub fn framing_limits(&self) -> FramingLimits {
        FramingLimits {
            max_header: self.max_message_size,
            max_body: self.max_message_size,
        }
    }

    /// How long a shutdown drains, then how long it waits for the calls it
    /// hangs up.
    pub fn shutdown(&self) -> (Duration, Duration) {
        (
            Duration::from_secs(self.shutdown_drain),
            Duration::from_secs(self.shutdown_timeout),
        )
    }

    /// Where `--location-store` is (no connection made yet): one server
    /// with its TLS files read, or Sentinels.
    pub fn location_client(&self, url: &str) -> Result<crate::registrar::RedisTarget, ConfigError> {
        if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            return sentinel_target(rest);
        }
        self.location_server(url)
            .map(|client| crate::registrar::RedisTarget::Server(Box::new(client)))
    }

    fn location_server(&self, url: &str) -> Result<redis::Client, ConfigError> {
        // The URL may hold a password: errors name the problem, not the URL.
        let not_a_url = |error: redis::RedisError| {
            ConfigError::invalid(
                "location-store",
                format!("not a Redis URL (redis://host:port, rediss://..., redis+unix:///path): {error}"),
            )
        };
        let tls_files = self.location_store_ca.is_some()
            || self.location_store_cert.is_some()
            || self.location_store_key.is_some();
        if !tls_files {
            return redis::Client::open(url).map_err(not_a_url);
        }
        if !url.starts_with("rediss://") {
            return Err(ConfigError::invalid(
                "location-store-ca",
                "TLS files need a rediss:// --location-store",
            ));
        }
        let read = |option: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|error| {
                ConfigError::invalid(option, format!("{}: {error}", path.display()))
            })
        };
        let client_tls = match (&self.location_store_cert, &self.location_store_key) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read("location-store-cert", cert)?,
                client_key: read("location-store-key", key)?,
            }),
            (None, None) => None,
            _ => {
                return Err(ConfigError::invalid(
                    "location-store-cert",
                    "--location-store-cert and --location-store-key go together",
                ))
            }
        };
        let root_cert = self
            .location_store_ca
            .as_ref()
            .map(|ca| read("location-store-ca", ca))
            .transpose()?;
        redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )
        .map_err(|error| {
            ConfigError::invalid(
                "location-store",
                format!("TLS towards the location store: {error}"),
            )
        })
    }

    /// The node id: `--node-id`, else the host name (reduced to the
    /// characters a node id may hold), else `signaling`.
    pub fn node_id(&self) -> String {
        if let Some(node) = &self.node_id {
            return node.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host: String = host
            .trim()
            .chars()
            .filter(|c| node_id_char(*c))
            .take(MAX_NODE_ID)
            .collect();
        if host.is_empty() {
            "signaling".to_owned()
        } else {
            host
        }
    }

    /// The age below which an unknown call of this node is left alone.
    pub fn reconcile_grace(&self) -> Duration {
        Duration::from_secs(self.reconcile_grace)
    }

    /// The concurrent-call limits.
    pub fn call_limits(&self) -> CallLimits {
        CallLimits {
            per_user: (self.max_calls_per_user > 0).then_some(self.max_calls_per_user),
            per_source: (self.max_calls_per_source > 0).then_some(self.max_calls_per_source),
        }
    }

    /// The DNS servers of --dns-server (port 53 when none is given).
    pub fn dns_servers(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        self.dns_server
            .iter()
            .map(|text| {
                let text = text.trim();
                text.parse::<SocketAddr>()
                    .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| {
                        ConfigError::invalid(
                            "dns-server",
                            format!("`{text}` is not an address or address:port"),
                        )
                    })
            })
            .collect()
    }

    /// The TLS files, when TLS is on.
    pub fn tls_files(&self) -> Option<crate::transport::tls::TlsFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::transport::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: self.tls_ca.clone(),
            }),
            _ => None,
        }
    }

    /// Limits on SIP TCP connections, before they are fitted to the
    /// open-file limit.
    pub fn tcp_connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_total: self.tcp_max_connections,
            max_per_source: self.tcp_max_connections_per_source,
        }
    }

    /// Networks exempt from the per-source message rate.
    pub fn source_rate_exempt(&self) -> Vec<Cidr> {
        self.source_rate_exempt
            .iter()
            .filter_map(|n| Cidr::parse(n).ok())
            .collect()
    }

    /// Open files the limits allow: SIP TCP and REST connections plus
    /// [`RESERVED_FILES`]; the open-file limit (`LimitNOFILE=`) must cover it.
    pub fn files_needed(&self) -> usize {
        self.tcp_max_connections + self.rest_max_connections + RESERVED_FILES
    }

    /// The managers' endpoints as URIs (validated at load).
    pub fn manager_uris(&self) -> Vec<String> {
        let tls = self.rtpmanager_tls_ca.is_some();
        self.rtpmanagers
            .iter()
            .filter_map(|m| manager_uri(m, tls).ok())
            .collect()
    }

    /// Interval between RTP manager health checks.
    pub fn health_interval(&self) -> Duration {
        Duration::from_secs(self.rtpmanager_health_interval)
    }

    /// When an RTP manager is declared down, and when lost.
    pub fn loss_policy(&self) -> crate::rtpmanager_pool::LossPolicy {
        crate::rtpmanager_pool::LossPolicy {
            failures: self.rtpmanager_failures,
            grace: Duration::from_secs(self.rtpmanager_lost_grace),
        }
    }
}

/// `redis+sentinel://[[user]:password@]host:port[,host:port…]/service[/db]`
/// (after the scheme): the Sentinels to ask, the master's name, and the
/// credentials and database of the master.
fn sentinel_target(rest: &str) -> Result<crate::registrar::RedisTarget, ConfigError> {
    let invalid = |reason: &str| {
        ConfigError::invalid(
            "location-store",
            format!("{reason} (redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db])"),
        )
    };
    let (credentials, rest) = match rest.rsplit_once('@') {
        Some((credentials, rest)) => (Some(credentials), rest),
        None => (None, rest),
    };
    let (hosts, path) = rest
        .split_once('/')
        .ok_or_else(|| invalid("no service name"))?;
    let (service, db) = match path.split_once('/') {
        Some((service, db)) => (
            service,
            db.parse::<i64>()
                .map_err(|_| invalid("the database is not a number"))?,
        ),
        None => (path, 0),
    };
    if service.is_empty() {
        return Err(invalid("no service name"));
    }
    let sentinels: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("redis://{h}"))
        .collect();
    if sentinels.is_empty() {
        return Err(invalid("no Sentinel address"));
    }
    let mut master = redis::RedisConnectionInfo::default().set_db(db);
    if let Some(credentials) = credentials {
        let (user, password) = credentials.split_once(':').unwrap_or(("", credentials));
        if !user.is_empty() {
            master = master.set_username(user);
        }
        if !password.is_empty() {
            master = master.set_password(password);
        }
    }
    let node =
        redis::sentinel::SentinelNodeConnectionInfo::default().set_redis_connection_info(master);
    let client = redis::sentinel::SentinelClient::build(
        sentinels.clone(),
        service,
        Some(node),
        redis::sentinel::SentinelServerType::Master,
    )
    .map_err(|error| invalid(&format!("Sentinel addresses: {}", error.category())))?;
    Ok(crate::registrar::RedisTarget::Sentinel {
        client: std::sync::Arc::new(std::sync::Mutex::new(client)),
        address: format!("sentinel {hosts} {service}"),
    })
}

/// Longest node id: it prefixes every media call id.
const MAX_NODE_ID: usize = 64;

fn node_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Checks a `--node-id`: `/` would make media call ids ambiguous.
fn check_node_id(node: &str) -> Result<(), String> {
    if node.is_empty() || node.len() > MAX_NODE_ID || !node.chars().all(node_id_char) {
        return Err(format!(
            "`{node}` must be 1 to {MAX_NODE_ID} letters, digits, `.`, `_` or `-`"
        ));
    }
    Ok(())
}

/// A REST API bearer token given as an option; its `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl ApiToken {
    /// The token text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(hidden)")
    }
}

impl std::str::FromStr for ApiToken {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(ApiToken(text.trim().to_owned()))
    }
}

/// Splits `id=endpoint` into its id and endpoint; a plain endpoint has no
/// id. An `=` counts only before any `:` or `/`, so a URI is never cut.
fn split_manager(entry: &str) -> (Option<&str>, &str) {
    let entry = entry.trim();
    match entry.split_once('=') {
        Some((id, endpoint)) if !id.contains([':', '/']) => (Some(id.trim()), endpoint.trim()),
        _ => (None, entry),
    }
}

/// The id of an RTP manager entry (`id=host:port`): its name, or without
/// one the endpoint without its `http://` scheme.
pub fn manager_id(entry: &str) -> String {
    let (id, endpoint) = split_manager(entry);
    id.unwrap_or_else(|| {
        endpoint
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/')
    })
    .to_owned()
}

/// Normalises an RTP manager entry (`host:port`, `http://host:port`,
/// `https://host:port`, with an optional `id=` in front) to a URI:
/// `https://host:port` for a bare `host:port` when `tls` (a CA is set),
/// else `http://host:port`.
pub fn manager_uri(entry: &str, tls: bool) -> Result<String, String> {
    let (id, endpoint) = split_manager(entry);
    if let Some(id) = id {
        let valid = !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid {
            return Err(format!(
                "the manager id `{id}` is not letters, digits, `-`, `_` or `.`"
            ));
        }
    }
    let uri = if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        endpoint.to_owned()
    } else if tls {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    };
    let parsed: tonic::transport::Uri = uri
        .parse()
        .map_err(|e| format!("`{endpoint}` is not host:port or a URI ({e})"))?;
    if parsed.host().is_none_or(str::is_empty) {
        return Err(format!("`{endpoint}` has no host"));
    }
    if parsed.port_u16().is_none() {
        return Err(format!(
            "`{endpoint}` has no port (the gRPC port is usually 9090)"
        ));
    }
    Ok(uri)
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
    use std::io::Write;

    fn load(args: &[&str]) -> Result<Config, ConfigError> {
        Config::load_from(std::iter::once("switchboard-signaling").chain(args.iter().copied()))
    }

    #[test]
    fn defaults() {
        let c = load(&[]).expect("defaults are valid");
        assert_eq!(c.port, 5060);
        assert_eq!(c.rest_port, 8080);
        assert_eq!(c.rtpmanagers, vec!["127.0.0.1:9090"]);
        assert_eq!(c.worker_threads, 0);
    }

    #[test]
    fn manager_list_from_flag_and_file() {
        let c = load(&["--rtpmanager", "10.0.0.1:9090,http://[::1]:9191"]).expect("valid list");
        assert_eq!(c.rtpmanagers, vec!["10.0.0.1:9090", "http://[::1]:9191"]);

        let mut file = tempfile::NamedTempFile::new().expect("temp");
        file.write_all(
            b"rtpmanager = [\"a.example:9090\", \"b.example:9090\"]\nrest_port = 8181\n",
        )
        .expect("write");
        let path = file.path().to_str().expect("utf-8");
        let c = load(&["--config", path]).expect("file config");
        assert_eq!(c.rtpmanagers, vec!["a.example:9090", "b.example:9090"]);
        assert_eq!(c.rest_port, 8181);
        let c = load(&["--config", path, "--rest-port", "9999"]).expect("flag wins");
        assert_eq!(c.rest_port, 9999);
    }

    #[test]
    fn bad_values_name_the_option() {
        let err = load(&["--rtpmanager", "nohostport"]).expect_err("no port");
        assert!(
            err.to_string().contains("--rtpmanager") && err.to_string().contains("no port"),
            "{err}"
        );
        let err = load(&["--port", "99999"]).expect_err("port range");
        assert!(err.to_string().contains("--port"), "{err}");
        let err = load(&["--rtpmanager-health-interval", "0"]).expect_err("zero interval");
        assert!(
            err.to_string().contains("--rtpmanager-health-interval"),
            "{err}"
        );
        let err = load(&["--rtpmanager-failures", "0"]).expect_err("zero failures");
        assert!(err.to_string().contains("--rtpmanager-failures"), "{err}");
    }

    #[test]
    fn a_manager_is_down_after_two_failed_checks_and_lost_15_s_later_by_default() {
        let c = load(&[]).expect("defaults");
        assert_eq!(
            c.loss_policy(),
            crate::rtpmanager_pool::LossPolicy {
                failures: 2,
                grace: Duration::from_secs(15)
            }
        );
        let c = load(&["--rtpmanager-failures", "4", "--rtpmanager-lost-grace", "0"]).expect("set");
        assert_eq!(c.loss_policy().failures, 4);
        assert_eq!(c.loss_policy().grace, Duration::ZERO, "lost at once");
    }

    #[test]
    fn sip_options_have_defaults_and_are_checked() {
        let c = load(&[]).expect("defaults are valid");
        assert_eq!(c.auth, AuthOption::Digest);
        assert_eq!(c.auth_methods, vec!["REGISTER", "INVITE"]);
        assert_eq!(c.realm, "switchboard");
        assert_eq!(c.tcp_idle_timeout, 120);
        assert_eq!(c.tcp_message_timeout, 20);
        assert_eq!(
            c.tcp_connection_limits(),
            ConnectionLimits {
                max_total: 2048,
                max_per_source: 64
            }
        );
        assert_eq!(c.source_rate_limit, 1000);
        assert_eq!(c.input_queue_bytes, 32 * 1024 * 1024);
        assert_eq!(c.rest_max_connections, 256);
        assert_eq!(c.rest_idle_timeout, 60);
        assert_eq!(c.event_buffer, 4096);
        assert_eq!(c.server_header, "Switchboard");
        assert_eq!(c.timers(), TimerConfig::default());
        assert_eq!(c.registrar(), RegistrarConfig::default());
        let c = load(&[
            "--auth",
            "anonymous",
            "--domain",
            "a.example,b.example",
            "--trusted-networks",
            "10.0.0.0/8,::1",
        ])
        .expect("valid options");
        assert_eq!(c.auth_config(vec![1]).mode, AuthMode::Anonymous);
        assert_eq!(c.registrar().default_domain.as_deref(), Some("a.example"));
        assert_eq!(c.auth_config(vec![1]).trusted_networks.len(), 2);
        let err = load(&["--trusted-networks", "10.0.0.0/33"]).expect_err("bad prefix");
        assert!(err.to_string().contains("--trusted-networks"), "{err}");
        let err = load(&["--min-expires", "600", "--default-expires", "300"])
            .expect_err("default below min");
        assert!(err.to_string().contains("--default-expires"), "{err}");
        assert_eq!(
            c.digest_algorithms(),
            vec![Algorithm::Md5, Algorithm::Sha256]
        );
        assert_eq!(c.auth_config(vec![1]).challenges, ChallengeMode::One);
        let c = load(&["--auth-algorithms", "md5"]).expect("MD5 only");
        assert_eq!(c.digest_algorithms(), vec![Algorithm::Md5]);
        assert_eq!(c.auth_config(vec![1]).algorithms, vec![Algorithm::Md5]);
        let all = load(&[
            "--auth-algorithms",
            "SHA-256,MD5",
            "--auth-challenges",
            "all",
        ])
        .expect("all challenges");
        let auth = all.auth_config(vec![1]);
        assert_eq!(auth.challenges, ChallengeMode::All);
        assert_eq!(auth.algorithms, vec![Algorithm::Sha256, Algorithm::Md5]);
        let err = load(&["--auth-algorithms", "sha-512"]).expect_err("unknown algorithm");
        assert!(err.to_string().contains("--auth-algorithms"), "{err}");
        assert_eq!(c.identity_policy(), IdentityPolicy::default());
        let c = load(&["--from-identity", "reject", "--from-display-name", "drop"])
            .expect("identity options");
        assert_eq!(
            c.identity_policy(),
            IdentityPolicy {
                from: FromPolicy::Reject,
                display_name: DisplayNamePolicy::Drop
            }
        );
        assert_eq!(load(&[]).expect("defaults").max_contacts, 5);
        let err = load(&["--max-contacts", "0"]).expect_err("no contact allowed");
        assert!(err.to_string().contains("--max-contacts"), "{err}");
        assert_eq!(
            load(&[])
                .expect("defaults")
                .auth_config(vec![1])
                .lockout
                .user_delay,
            Duration::from_secs(2)
        );
        let err = load(&["--lockout-user-delay-ms", "60001"]).expect_err("too long a delay");
        assert!(err.to_string().contains("--lockout-user-delay-ms"), "{err}");
        let err = load(&["--auth", "basic"]).expect_err("unknown auth mode");
        assert!(err.to_string().contains("--auth"), "{err}");
    }

    #[test]
    fn shutdown_and_reconciliation_options_are_checked() {
        let c = load(&[]).expect("defaults are valid");
        assert_eq!(
            c.shutdown(),
            (Duration::ZERO, Duration::from_secs(10)),
            "no drain, 10 s to hang up"
        );
        assert_eq!(c.reconcile_grace(), Duration::from_secs(30));
        assert_eq!(
            c.call_limits(),
            CallLimits {
                per_user: Some(20),
                per_source: Some(100)
            }
        );
        let c = load(&["--max-calls-per-user", "0", "--max-calls-per-source", "3"])
            .expect("valid limits");
        assert_eq!(
            c.call_limits(),
            CallLimits {
                per_user: None,
                per_source: Some(3)
            },
            "0: no limit"
        );
        assert!(!c.node_id().is_empty(), "the host name, or `signaling`");
        assert!(check_node_id(&c.node_id()).is_ok(), "{}", c.node_id());
        let c = load(&["--node-id", "sig-1.example_a", "--shutdown-drain", "60"])
            .expect("valid options");
        assert_eq!(c.node_id(), "sig-1.example_a");
        assert_eq!(c.shutdown().0, Duration::from_secs(60));
        for bad in ["a/b", "", "with space", &"x".repeat(65)] {
            let err = load(&["--node-id", bad]).expect_err("invalid node id");
            assert!(err.to_string().contains("--node-id"), "{bad}: {err}");
        }
        let err = load(&["--shutdown-timeout", "0"]).expect_err("no time to hang up");
        assert!(err.to_string().contains("--shutdown-timeout"), "{err}");
    }

    #[test]
    fn location_store_urls_are_checked_at_start_and_never_echo_a_password() {
        let c = load(&[]).expect("defaults");
        assert_eq!(c.location_store, None, "a single box keeps its journal");
        assert_eq!(c.registrar().node, None);
        let c = load(&[
            "--location-store",
            "redis://:pw@192.0.2.20:6379/2",
            "--node-id",
            "sig-1",
        ])
        .expect("a Redis URL");
        assert_eq!(
            c.registrar().node.as_deref(),
            Some("sig-1"),
            "bindings name the node"
        );
        let target = c
            .location_client("redis://:pw@192.0.2.20:6379/2")
            .expect("a client");
        assert_eq!(target.address(), "192.0.2.20:6379");
        let c = load(&[
            "--location-store",
            "redis+sentinel://:pw@192.0.2.21:26379,192.0.2.22:26379/mymaster/1",
        ])
        .expect("Sentinels");
        let target = c
            .location_client(c.location_store.as_deref().expect("set"))
            .expect("a Sentinel client");
        assert_eq!(
            target.address(),
            "sentinel 192.0.2.21:26379,192.0.2.22:26379 mymaster"
        );
        for (bad, why) in [
            ("http://192.0.2.20", "not a Redis URL"),
            ("redis+sentinel://192.0.2.21:26379", "no service name"),
            ("redis+sentinel://192.0.2.21:26379/", "no service name"),
            ("redis+sentinel:///mymaster", "no Sentinel address"),
            (
                "redis+sentinel://:secret-pw@192.0.2.21:26379/m/x",
                "not a number",
            ),
        ] {
            let err = load(&["--location-store", bad]).expect_err(bad);
            let text = err.to_string();
            assert!(
                text.contains("--location-store") && text.contains(why),
                "{bad}: {text}"
            );
            assert!(
                !text.contains("secret-pw"),
                "the password stays out: {text}"
            );
        }
        // TLS files want rediss:// and come as a pair; a missing file is
        // named with its option.
        let err = load(&[
            "--location-store",
            "redis://192.0.2.20",
            "--location-store-ca",
            "/x",
        ])
        .expect_err("CA without TLS");
        assert!(err.to_string().contains("rediss://"), "{err}");
        let err = load(&[
            "--location-store",
            "rediss://192.0.2.20",
            "--location-store-cert",
            "/x.pem",
        ])
        .expect_err("a certificate without its key");
        assert!(err.to_string().contains("go together"), "{err}");
        let err = load(&[
            "--location-store",
            "rediss://192.0.2.20",
            "--location-store-ca",
            "/nonexistent/ca.pem",
        ])
        .expect_err("a CA file that is not there");
        let text = err.to_string();
        assert!(
            text.contains("--location-store-ca") && text.contains("/nonexistent/ca.pem"),
            "{text}"
        );
        let err = load(&["--location-store", "redis://x", "--node-lost-after", "1"])
            .expect_err("too quick to declare a node lost");
        assert!(err.to_string().contains("--node-lost-after"), "{err}");
    }

    #[test]
    fn limit_options_are_checked() {
        let err = load(&["--tcp-max-connections-per-source", "0"]).expect_err("zero share");
        assert!(
            err.to_string().contains("--tcp-max-connections-per-source"),
            "{err}"
        );
        let err = load(&["--tcp-max-connections", "10"]).expect_err("per source above total");
        assert!(
            err.to_string().contains("--tcp-max-connections-per-source"),
            "{err}"
        );
        let err = load(&["--tcp-message-timeout", "0"]).expect_err("zero timeout");
        assert!(err.to_string().contains("--tcp-message-timeout"), "{err}");
        let err = load(&["--input-queue-bytes", "100000"]).expect_err("queue too small");
        assert!(err.to_string().contains("--input-queue-bytes"), "{err}");
        let err = load(&["--event-buffer", "8"]).expect_err("event buffer too small");
        assert!(err.to_string().contains("--event-buffer"), "{err}");
        let err = load(&["--server-header", "a\r\nX-Evil: 1"]).expect_err("header injection");
        assert!(err.to_string().contains("--server-header"), "{err}");
        let err = load(&["--source-rate-exempt", "10.0.0.0/40"]).expect_err("bad prefix");
        assert!(err.to_string().contains("--source-rate-exempt"), "{err}");
        let c = load(&["--source-rate-exempt", "10.0.0.0/8,2001:db8::/32"]).expect("valid");
        assert_eq!(c.source_rate_exempt().len(), 2);
        let c = load(&["--server-header", "", "--source-rate-limit", "0"]).expect("both off");
        assert_eq!(c.server_header, "");
        assert_eq!(c.source_rate_limit, 0);
    }

    #[test]
    fn managers_may_be_named_and_ids_must_be_unique() {
        let c = load(&[
            "--rtpmanager",
            "edge-a=10.0.0.1:9090,10.0.0.2:9090,http://[::1]:9191",
        ])
        .expect("named and plain");
        let ids: Vec<String> = c.rtpmanagers.iter().map(|m| manager_id(m)).collect();
        assert_eq!(ids, vec!["edge-a", "10.0.0.2:9090", "[::1]:9191"]);
        assert_eq!(
            manager_uri("edge-a=10.0.0.1:9090", false).as_deref(),
            Ok("http://10.0.0.1:9090")
        );
        let err = load(&["--rtpmanager", "a=10.0.0.1:9090,a=10.0.0.2:9090"]).expect_err("dup");
        assert!(err.to_string().contains("`a` names two managers"), "{err}");
        let err = load(&["--rtpmanager", "a b=10.0.0.1:9090"]).expect_err("bad id");
        assert!(err.to_string().contains("--rtpmanager"), "{err}");
    }

    #[test]
    fn the_rest_api_leaves_loopback_only_with_a_token() {
        let err = load(&["--rest-address", "0.0.0.0"]).expect_err("no token");
        assert!(
            err.to_string().contains("--rest-address") && err.to_string().contains("loopback"),
            "{err}"
        );
        load(&["--rest-address", "::1"]).expect("IPv6 loopback is fine");
        let c = load(&[
            "--rest-address",
            "0.0.0.0",
            "--api-token",
            "0123456789abcdef-x",
        ])
        .expect("with a token");
        assert!(c.metrics_require_token, "metrics guarded by default");
        assert_eq!(format!("{:?}", c.api_token), "Some(ApiToken(hidden))");
        let err = load(&["--api-token", "short"]).expect_err("short token");
        assert!(
            err.to_string().contains("--api-token") && !err.to_string().contains("short\""),
            "{err}"
        );
        let c = load(&["--metrics-require-token", "false"]).expect("bool value");
        assert!(!c.metrics_require_token);
    }

    #[test]
    fn manager_uris_normalise() {
        assert_eq!(
            manager_uri("127.0.0.1:9090", false).as_deref(),
            Ok("http://127.0.0.1:9090")
        );
        assert_eq!(
            manager_uri("http://[::1]:9090", false).as_deref(),
            Ok("http://[::1]:9090")
        );
        assert!(manager_uri("http://host", false).is_err());
        assert_eq!(
            manager_uri("10.0.0.11:9090", true).as_deref(),
            Ok("https://10.0.0.11:9090"),
            "TLS for bare endpoints once a CA is set"
        );
        assert_eq!(
            manager_uri("http://127.0.0.1:9090", true).as_deref(),
            Ok("http://127.0.0.1:9090"),
            "an explicit http:// stays plaintext"
        );
    }

    #[test]
    fn sip_tls_options_come_as_a_pair_on_a_port_of_their_own() {
        let c = load(&[]).expect("defaults are valid");
        assert_eq!(
            (c.tls_files(), c.tls_port),
            (None, 5061),
            "TLS off by default"
        );
        let c = load(&[
            "--tls-cert",
            "s.crt",
            "--tls-key",
            "s.key",
            "--tls-ca",
            "ca.pem",
        ])
        .expect("a pair");
        let files = c.tls_files().expect("TLS on");
        assert_eq!(
            (
                files.cert.to_str(),
                files.key.to_str(),
                files.ca.as_deref().and_then(|p| p.to_str())
            ),
            (Some("s.crt"), Some("s.key"), Some("ca.pem"))
        );
        for (args, expected) in [
            (&["--tls-cert", "s.crt"][..], "--tls-cert: needs --tls-key"),
            (&["--tls-key", "s.key"][..], "--tls-key: needs --tls-cert"),
            (&["--tls-ca", "ca.pem"][..], "--tls-ca: TLS is off"),
            (
                &[
                    "--tls-cert",
                    "s.crt",
                    "--tls-key",
                    "s.key",
                    "--port",
                    "5070",
                    "--tls-port",
                    "5070",
                ][..],
                "--tls-port: 5070 is also --port",
            ),
            (
                &["--wss-port", "8443"][..],
                "--wss-port: secure WebSocket needs --tls-cert",
            ),
            (
                &["--port", "5070", "--ws-port", "5070"][..],
                "--ws-port: 5070 is also --port",
            ),
            (
                &["--ws-port", "8080", "--rest-port", "8080"][..],
                "--rest-port: 8080 is also --ws-port",
            ),
        ] {
            let err = load(args).expect_err(expected).to_string();
            assert!(err.contains(expected), "{args:?}: {err}");
        }
    }

    #[test]
    fn rtpmanager_tls_options_are_checked_together() {
        let c = load(&[]).expect("defaults are valid");
        assert_eq!(
            (
                &c.rtpmanager_tls_ca,
                &c.rtpmanager_tls_cert,
                &c.rtpmanager_tls_key,
                &c.rtpmanager_token_file
            ),
            (&None, &None, &None, &None),
            "plaintext without a token by default"
        );
        let err = load(&["--rtpmanager", "https://m1.example:9090"]).expect_err("no CA");
        assert!(
            err.to_string().contains("--rtpmanager")
                && err.to_string().contains("--rtpmanager-tls-ca"),
            "{err}"
        );
        let err = load(&[
            "--rtpmanager-tls-cert",
            "c.crt",
            "--rtpmanager-tls-ca",
            "ca.crt",
        ])
        .expect_err("cert without key");
        assert!(
            err.to_string()
                .contains("--rtpmanager-tls-cert: needs --rtpmanager-tls-key"),
            "{err}"
        );
        let err = load(&["--rtpmanager-tls-key", "c.key"]).expect_err("key without cert");
        assert!(err.to_string().contains("--rtpmanager-tls-key"), "{err}");
        let err = load(&[
            "--rtpmanager-tls-cert",
            "c.crt",
            "--rtpmanager-tls-key",
            "c.key",
        ])
        .expect_err("client certificate without TLS");
        assert!(err.to_string().contains("--rtpmanager-tls-ca"), "{err}");
        let c = load(&[
            "--rtpmanager",
            "https://m1.example:9090,m2.example:9090",
            "--rtpmanager-tls-ca",
            "ca.crt",
            "--rtpmanager-tls-cert",
            "c.crt",
            "--rtpmanager-tls-key",
            "c.key",
            "--rtpmanager-token-file",
            "token",
        ])
        .expect("a complete set");
        assert_eq!(c.rtpmanager_token_file, Some(PathBuf::from("token")));
        assert_eq!(
            c.manager_uris(),
            vec!["https://m1.example:9090", "https://m2.example:9090"]
        );
    }
}
