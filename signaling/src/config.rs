//! Command-line, environment and config-file options of `switchboard-signaling`.
//!
//! Every option is a flag, an environment variable (the flag's name in
//! UPPER_SNAKE_CASE) and a key of the optional TOML file given by `--config`;
//! precedence is flag > environment > file > default.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use switchboard_service::ConfigError;

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

    /// RTP managers' gRPC endpoints (host:port or http://host:port), comma-separated.
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

    /// JSON dialplan file.
    #[arg(
        long,
        env = "DIALPLAN",
        default_value = "/etc/switchboard/dialplan.json"
    )]
    pub dialplan: PathBuf,

    /// Directory for persistent state (registrations).
    #[arg(long, env = "DATA_DIR", default_value = "/var/lib/switchboard")]
    pub data_dir: PathBuf,

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
        for manager in &self.rtpmanagers {
            manager_uri(manager).map_err(|reason| ConfigError::invalid("rtpmanager", reason))?;
        }
        if self.rtpmanager_health_interval == 0 {
            return Err(ConfigError::invalid(
                "rtpmanager-health-interval",
                "must be at least 1 second",
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

    /// Interval between RTP manager health checks.
    pub fn health_interval(&self) -> Duration {
        Duration::from_secs(self.rtpmanager_health_interval)
    }
}

/// Normalises an RTP manager endpoint to an `http://host:port` URI.
pub fn manager_uri(endpoint: &str) -> Result<String, String> {
    let endpoint = endpoint.trim();
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
