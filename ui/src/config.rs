//! Command-line, environment and config-file options of `switchboard-ui`.
//!
//! Every option is a flag, an environment variable and a key of the optional
//! TOML file given by `--config`; precedence is flag > environment > file > default.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Parser;
use switchboard_service::ConfigError;

use crate::backends::BackendSpec;

/// Environment variables once read under another name (old unprefixed
/// names, and those of the system Switchboard replaces), with the option
/// that took their place: set, they are reported at start, never read.
/// The unprefixed form of every current variable is reported too.
pub const LEGACY_ENVIRONMENT: &[(&str, &str)] = &[
    // The system Switchboard replaces.
    ("UI_BACKENDS", "backends"),
    ("LOGLEVEL", "log-level"),
];

/// Switchboard dashboard: aggregates several signaling servers' REST APIs, live.
#[derive(Debug, Clone, Parser)]
#[command(name = "switchboard-ui", version, about, long_about = None)]
pub struct Config {
    /// TOML config file; its keys are the long option names.
    #[arg(long, env = "SWITCHBOARD_UI_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address the dashboard listens on. Operators log in with an API token
    /// of the signaling servers; over plain HTTP keep it on loopback or
    /// behind a TLS proxy, since the login token crosses the network.
    #[arg(long, env = "SWITCHBOARD_UI_ADDRESS", default_value = "127.0.0.1")]
    pub address: IpAddr,

    /// HTTP port of the dashboard.
    #[arg(long, env = "SWITCHBOARD_UI_PORT", default_value_t = 3000)]
    pub port: u16,

    /// Signaling servers' REST base URLs, comma-separated, each optionally
    /// named: `edge-a=http://10.0.0.1:8080`. An unnamed backend is named
    /// after its host:port. Names appear in the dashboard's URLs.
    #[arg(
        long,
        env = "SWITCHBOARD_BACKENDS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080"
    )]
    pub backends: Vec<String>,

    /// Milliseconds one request to a backend may take (connect and answer);
    /// a backend slower than that is shown as unreachable and never holds
    /// a page or another backend.
    #[arg(long, env = "SWITCHBOARD_BACKEND_TIMEOUT_MS", default_value_t = 2000)]
    pub backend_timeout_ms: u64,

    /// File whose first token (a line not starting with `#`) is sent to every
    /// backend as `Authorization: Bearer <token>`: one of the tokens of the
    /// signaling servers' --api-token-file. Without it no token is sent.
    #[arg(long, env = "SWITCHBOARD_BACKEND_TOKEN_FILE", value_name = "FILE")]
    pub backend_token_file: Option<PathBuf>,

    /// Seconds between polls of each backend (calls also arrive through each
    /// backend's event stream as they start and end).
    #[arg(long, env = "SWITCHBOARD_POLL_INTERVAL", default_value_t = 2)]
    pub poll_interval: u64,

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
        let mut config: Self = switchboard_service::parse_layered(args)?;
        config.backends.retain(|b| !b.trim().is_empty());
        config.backend_specs()?;
        if config.backend_timeout_ms < 50 || config.backend_timeout_ms > 60_000 {
            return Err(ConfigError::invalid(
                "backend-timeout-ms",
                "must be between 50 and 60000",
            ));
        }
        if config.backends.is_empty() {
            return Err(ConfigError::invalid(
                "backends",
                "at least one signaling server is needed",
            ));
        }
        if config.poll_interval == 0 {
            return Err(ConfigError::invalid(
                "poll-interval",
                "must be at least 1 second",
            ));
        }
        Ok(config)
    }
}

impl Config {
    /// The named backends of `--backends`, checked: `http://host:port`
    /// URLs, names unique and URL-safe.
    pub fn backend_specs(&self) -> Result<Vec<BackendSpec>, ConfigError> {
        let mut specs: Vec<BackendSpec> = Vec::new();
        for item in &self.backends {
            let spec = backend_spec(item).map_err(|r| ConfigError::invalid("backends", r))?;
            if specs.iter().any(|s| s.name == spec.name) {
                return Err(ConfigError::invalid(
                    "backends",
                    format!("the name `{}` is given twice", spec.name),
                ));
            }
            specs.push(spec);
        }
        Ok(specs)
    }

    /// The backend timeout.
    pub fn backend_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.backend_timeout_ms)
    }
}

/// `name=url` or `url` (named after its host:port).
fn backend_spec(item: &str) -> Result<BackendSpec, String> {
    let item = item.trim();
    let (name, url) = match item.split_once('=') {
        Some((name, url)) => (Some(name.trim()), url),
        None => (None, item),
    };
    let url = backend_base(url)?;
    let name = match name {
        Some(name) => name.to_owned(),
        None => url.trim_start_matches("http://").to_owned(),
    };
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
    if name.is_empty() || name.len() > 64 || !name.chars().all(safe) {
        return Err(format!(
            "backend name `{name}` must be 1 to 64 letters, digits, `-`, `_`, `.` or `:`"
        ));
    }
    Ok(BackendSpec { name, url })
}

/// The token of `--backend-token-file`: its first line that is neither
/// blank nor a `#` comment. The error never quotes the file's text.
pub fn read_backend_token(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--backend-token-file: cannot read {}: {e}", path.display()))?;
    let token = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'))
        .ok_or_else(|| format!("--backend-token-file: {} holds no token", path.display()))?;
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "--backend-token-file: {}: the token is not visible ASCII without spaces",
            path.display()
        ));
    }
    Ok(token.to_owned())
}

/// Checks a backend URL and strips its trailing slash.
fn backend_base(url: &str) -> Result<String, String> {
    let url = url.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("`{url}` must start with http://"))?;
    if rest.is_empty() || rest.contains('/') {
        return Err(format!("`{url}` must be http://host:port with no path"));
    }
    Ok(url.to_owned())
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
        Config::load_from(std::iter::once("switchboard-ui").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_and_lists() {
        let c = load(&[]).expect("defaults");
        assert_eq!(c.port, 3000);
        assert_eq!(c.backends, vec!["http://127.0.0.1:8080"]);
        let c = load(&["--backends", "http://a:8080/,edge-b=http://b:8081"]).expect("list");
        let specs = c.backend_specs().expect("specs");
        assert_eq!(
            specs,
            vec![
                BackendSpec {
                    name: "a:8080".into(),
                    url: "http://a:8080".into()
                },
                BackendSpec {
                    name: "edge-b".into(),
                    url: "http://b:8081".into()
                }
            ]
        );
        assert_eq!(c.backend_timeout_ms, 2000);
    }

    #[test]
    fn backend_names_must_be_unique_and_url_safe() {
        let err = load(&["--backends", "x=http://a:1,x=http://b:2"]).expect_err("twice");
        assert!(err.to_string().contains("given twice"), "{err}");
        let err = load(&["--backends", "a/b=http://a:1"]).expect_err("slash");
        assert!(err.to_string().contains("--backends"), "{err}");
        let err = load(&["--backend-timeout-ms", "10"]).expect_err("too short");
        assert!(err.to_string().contains("--backend-timeout-ms"), "{err}");
    }

    #[test]
    fn bad_backend_is_named() {
        let err = load(&["--backends", "ftp://x"]).expect_err("scheme");
        assert!(err.to_string().contains("--backends"), "{err}");
        let err = load(&["--poll-interval", "0"]).expect_err("zero");
        assert!(err.to_string().contains("--poll-interval"), "{err}");
    }
}
