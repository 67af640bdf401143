//! Command-line, environment and config-file options of `switchboard-signaling`.
//!
//! Every option is a flag, an environment variable (the flag's name in
//! UPPER_SNAKE_CASE) and a key of the optional TOML file given by `--config`;
//! precedence is flag > environment > file > default.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use switchboard_service::ConfigError;

use crate::auth::{Algorithm, AuthConfig, AuthMode, Cidr, LockoutConfig};
use crate::registrar::RegistrarConfig;
use crate::sip::FramingLimits;
use crate::transaction::TimerConfig;

/// Whether SIP requests are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthOption {
    /// Digest authentication (RFC 3261 §22, MD5 and SHA-256).
    Digest,
    /// No authentication at all.
    Anonymous,
}

/// Where the dialplan is read from when `--dialplan` is not given.
pub const DEFAULT_DIALPLAN: &str = "/etc/switchboard/dialplan.json";

/// Switchboard signaling server: SIP over UDP and TCP, registrar, B2BUA with a
/// JSON dialplan, RTP manager pool, REST API.
#[derive(Debug, Clone, Parser)]
#[command(name = "switchboard-signaling", version, about, long_about = None)]
pub struct Config {
    /// TOML config file; its keys are the long option names.
    #[arg(long, env = "SIGNALING_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address the SIP transports (UDP and TCP) bind to; `::` listens on IPv4 and IPv6.
    #[arg(long, env = "BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,

    /// SIP port, UDP and TCP.
    #[arg(long, env = "PORT", default_value_t = 5060)]
    pub port: u16,

    /// Host or address put in Via, Contact and Record-Route; defaults to the
    /// bind address (or 127.0.0.1 when binding to all addresses).
    #[arg(long, env = "ADVERTISE")]
    pub advertise: Option<String>,

    /// RTP managers' gRPC endpoints, comma-separated: `host:port`,
    /// `http://host:port`, or `id=host:port` to give the manager the id the
    /// REST API names it by (`/api/v1/rtpmanagers/{id}/drain`). Without a
    /// name its id is `host:port`.
    #[arg(
        long = "rtpmanager",
        env = "RTPMANAGER",
        value_delimiter = ',',
        default_value = "127.0.0.1:9090"
    )]
    pub rtpmanagers: Vec<String>,

    /// Seconds between health checks of each RTP manager.
    #[arg(long, env = "RTPMANAGER_HEALTH_INTERVAL", default_value_t = 2)]
    pub rtpmanager_health_interval: u64,

    /// Address of the REST API (JSON, event stream, Prometheus metrics).
    #[arg(long, env = "REST_ADDRESS", default_value = "127.0.0.1")]
    pub rest_address: IpAddr,

    /// Port of the REST API.
    #[arg(long, env = "REST_PORT", default_value_t = 8080)]
    pub rest_port: u16,

    /// File of bearer tokens for the REST API, one per line (blank lines and
    /// lines starting with `#` skipped; at least 16 visible characters each,
    /// e.g. `openssl rand -hex 32`). With a token, every endpoint except
    /// `/api/v1/health` needs `Authorization: Bearer <token>`. Without one,
    /// --rest-address must be a loopback address.
    #[arg(long, env = "API_TOKEN_FILE", value_name = "FILE")]
    pub api_token_file: Option<PathBuf>,

    /// One bearer token for the REST API, accepted beside those of
    /// --api-token-file. Prefer the environment variable or the file: a
    /// flag is visible to every local user in the process list.
    #[arg(long, env = "API_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub api_token: Option<ApiToken>,

    /// Whether `/metrics` needs the token too, when one is configured.
    /// `false` lets a scraper without credentials read it (the figures name
    /// RTP managers and load, so expose them knowingly).
    #[arg(long, env = "METRICS_REQUIRE_TOKEN", default_value_t = true, action = clap::ArgAction::Set)]
    pub metrics_require_token: bool,

    /// JSON dialplan file, reloaded on SIGHUP (an invalid new plan is
    /// refused and the old one kept). Without the default file, calls are
    /// refused with 480; a file named here must exist and be valid.
    #[arg(long, env = "DIALPLAN", default_value = DEFAULT_DIALPLAN)]
    pub dialplan: PathBuf,

    /// Directory for persistent state (registrations).
    #[arg(long, env = "DATA_DIR", default_value = "/var/lib/switchboard")]
    pub data_dir: PathBuf,

    /// Domains this server is responsible for (registrar and calls); the first
    /// is the domain of a bare user name. Empty: every domain is served.
    #[arg(long = "domain", env = "DOMAIN", value_delimiter = ',')]
    pub domains: Vec<String>,

    /// Digest realm of the challenges; the HA1 values of the users file are
    /// computed for it (`cargo xtask add-user --realm`).
    #[arg(long, env = "REALM", default_value = "switchboard")]
    pub realm: String,

    /// TOML users file (`[[user]]` entries with HA1 values or demo passwords),
    /// reloaded on SIGHUP. Without one, digest authentication knows no user
    /// and refuses every request that needs it.
    #[arg(long, env = "USERS_FILE", value_name = "FILE")]
    pub users_file: Option<PathBuf>,

    /// `digest` authenticates the methods of --auth-methods; `anonymous`
    /// authenticates nothing (logged as a warning at start: for tests and labs).
    #[arg(long, env = "AUTH", value_enum, default_value = "digest")]
    pub auth: AuthOption,

    /// Methods that need digest authentication, comma-separated.
    #[arg(
        long,
        env = "AUTH_METHODS",
        value_delimiter = ',',
        default_value = "REGISTER,INVITE"
    )]
    pub auth_methods: Vec<String>,

    /// Digest algorithms offered in challenges, in order of preference
    /// (SHA-256, MD5). Clients that answer the first challenge whatever its
    /// algorithm and only know MD5 (SIPp, older phones) need `MD5` first or alone.
    #[arg(
        long,
        env = "AUTH_ALGORITHMS",
        value_delimiter = ',',
        default_value = "SHA-256,MD5"
    )]
    pub auth_algorithms: Vec<String>,

    /// Networks (CIDR, comma-separated) whose requests need no authentication.
    #[arg(long, env = "TRUSTED_NETWORKS", value_delimiter = ',')]
    pub trusted_networks: Vec<String>,

    /// Secret keying the nonces. Without it a random secret is drawn at each
    /// start, so nonces issued before a restart are refused (clients simply
    /// authenticate again); set it to keep them valid across restarts or to
    /// share them between servers.
    #[arg(long, env = "AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<String>,

    /// Seconds a nonce stays fresh; a late one is answered with `stale=true`.
    #[arg(long, env = "NONCE_LIFETIME", default_value_t = 300)]
    pub nonce_lifetime: u64,

    /// Authentication failures (per source address or per user) within
    /// --lockout-window that lock the address or user out.
    #[arg(long, env = "LOCKOUT_MAX_FAILURES", default_value_t = 5)]
    pub lockout_max_failures: usize,

    /// Seconds in which --lockout-max-failures failures are counted.
    #[arg(long, env = "LOCKOUT_WINDOW", default_value_t = 60)]
    pub lockout_window: u64,

    /// Seconds a locked-out address or user is answered 403.
    #[arg(long, env = "LOCKOUT_COOL_DOWN", default_value_t = 300)]
    pub lockout_cool_down: u64,

    /// Shortest registration accepted, in seconds (shorter: 423 with Min-Expires).
    #[arg(long, env = "MIN_EXPIRES", default_value_t = 60)]
    pub min_expires: u32,

    /// Longest registration granted, in seconds (longer ones are shortened).
    #[arg(long, env = "MAX_EXPIRES", default_value_t = 86_400)]
    pub max_expires: u32,

    /// Registration length when the REGISTER gives none, in seconds.
    #[arg(long, env = "DEFAULT_EXPIRES", default_value_t = 3600)]
    pub default_expires: u32,

    /// Seconds after which an idle TCP connection is closed.
    #[arg(long, env = "TCP_IDLE_TIMEOUT", default_value_t = 120)]
    pub tcp_idle_timeout: u64,

    /// Largest header section and largest body accepted, each, in octets:
    /// a larger header is answered 513, a larger body 413 (then a TCP
    /// connection is closed).
    #[arg(long, env = "MAX_MESSAGE_SIZE", default_value_t = 65_535)]
    pub max_message_size: usize,

    /// SIP timer T1 (round-trip estimate), milliseconds.
    #[arg(long, env = "T1_MS", default_value_t = 500)]
    pub t1_ms: u64,

    /// SIP timer T2 (longest retransmit interval), milliseconds.
    #[arg(long, env = "T2_MS", default_value_t = 4000)]
    pub t2_ms: u64,

    /// SIP timer T4 (longest time a message lives in the network), milliseconds.
    #[arg(long, env = "T4_MS", default_value_t = 5000)]
    pub t4_ms: u64,

    /// Answer every UDP request at the address and port it came from, as if
    /// it asked for rport (RFC 3581), for clients behind NAT that do not.
    /// Off: responses go where the top Via says (RFC 3261 §18.2.2).
    #[arg(long, env = "FORCE_RPORT")]
    pub force_rport: bool,

    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(long, env = "LOG_LEVEL", default_value = "info", value_parser = switchboard_service::parse_log_level)]
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
        let mut config: Self = switchboard_service::parse_layered(args)?;
        config.rtpmanagers.retain(|m| !m.trim().is_empty());
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.rtpmanagers.is_empty() {
            return Err(ConfigError::invalid(
                "rtpmanager",
                "at least one RTP manager is needed",
            ));
        }
        let mut ids = std::collections::BTreeSet::new();
        for manager in &self.rtpmanagers {
            manager_uri(manager).map_err(|reason| ConfigError::invalid("rtpmanager", reason))?;
            let id = manager_id(manager);
            if !ids.insert(id.clone()) {
                return Err(ConfigError::invalid(
                    "rtpmanager",
                    format!("the id `{id}` names two managers"),
                ));
            }
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
        if self.rtpmanager_health_interval == 0 {
            return Err(ConfigError::invalid(
                "rtpmanager-health-interval",
                "must be at least 1 second",
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
        if self.tcp_idle_timeout == 0 {
            return Err(ConfigError::invalid(
                "tcp-idle-timeout",
                "must be at least 1 second",
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
            },
            ..AuthConfig::digest(&self.realm, secret)
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

    /// Interval between RTP manager health checks.
    pub fn health_interval(&self) -> Duration {
        Duration::from_secs(self.rtpmanager_health_interval)
    }
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

/// Normalises an RTP manager entry (`host:port`, `http://host:port`, with
/// an optional `id=` in front) to an `http://host:port` URI.
pub fn manager_uri(entry: &str) -> Result<String, String> {
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
    }

    #[test]
    fn sip_options_have_defaults_and_are_checked() {
        let c = load(&[]).expect("defaults are valid");
        assert_eq!(c.auth, AuthOption::Digest);
        assert_eq!(c.auth_methods, vec!["REGISTER", "INVITE"]);
        assert_eq!(c.realm, "switchboard");
        assert_eq!(c.tcp_idle_timeout, 120);
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
            vec![Algorithm::Sha256, Algorithm::Md5]
        );
        let c = load(&["--auth-algorithms", "md5"]).expect("MD5 only");
        assert_eq!(c.digest_algorithms(), vec![Algorithm::Md5]);
        let err = load(&["--auth-algorithms", "sha-512"]).expect_err("unknown algorithm");
        assert!(err.to_string().contains("--auth-algorithms"), "{err}");
        let err = load(&["--auth", "basic"]).expect_err("unknown auth mode");
        assert!(err.to_string().contains("--auth"), "{err}");
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
            manager_uri("edge-a=10.0.0.1:9090").as_deref(),
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
            manager_uri("127.0.0.1:9090").as_deref(),
            Ok("http://127.0.0.1:9090")
        );
        assert_eq!(
            manager_uri("http://[::1]:9090").as_deref(),
            Ok("http://[::1]:9090")
        );
        assert!(manager_uri("http://host").is_err());
    }
}
