//! How signaling reaches an RTP manager: the gRPC channel (plaintext, or
//! TLS checking the manager's certificate against `--rtpmanager-tls-ca`
//! and presenting a client certificate), and the bearer token every
//! request carries (`--rtpmanager-token-file`). Health checks and call
//! requests share one [`ManagerClient`] per manager, so they use the same
//! settings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use switchboard_proto::v1::rtp_manager_client::RtpManagerClient;
use switchboard_service::secrets::{read_pem, token_lines, PemError, TokenRules};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

use crate::config::Config;

/// A client of one manager, adding the bearer token (if any) to each request.
pub type ManagerClient = RtpManagerClient<InterceptedService<Channel, BearerToken>>;

/// How long a request waits for the manager's answer, unary or on the
/// Control stream.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the client settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientAccessError {
    /// A file named by an option could not be read.
    #[error("--{option}: cannot read {path}: {source}")]
    Read {
        option: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file named by an option holds no PEM block.
    #[error("--{option}: {path} holds no PEM `-----BEGIN` block")]
    NotPem { option: &'static str, path: PathBuf },
    /// The token file holds no usable token (the text is never quoted).
    #[error("--rtpmanager-token-file: {path}: {reason}")]
    Token { path: PathBuf, reason: &'static str },
}

impl From<PemError> for ClientAccessError {
    fn from(error: PemError) -> ClientAccessError {
        match error {
            PemError::Read {
                option,
                path,
                source,
            } => ClientAccessError::Read {
                option,
                path,
                source,
            },
            PemError::NotPem { option, path } => ClientAccessError::NotPem { option, path },
        }
    }
}

/// What the token sent must be: no length rule here (the manager enforces
/// its own), only what a header can carry.
const TOKEN_RULES: TokenRules = TokenRules {
    min_len: false,
    not_visible: "the token is not visible ASCII without spaces",
};

/// The token sent as `authorization: Bearer <token>`. Its `Debug` never
/// shows the token, and the header is marked sensitive so that HTTP/2
/// header compression does not index it.
#[derive(Clone, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = if self.0.is_some() { "set" } else { "none" };
        write!(f, "BearerToken({state})")
    }
}

impl BearerToken {
    /// The first token of a token file in the manager's format: one per
    /// line, blank lines and `#` lines skipped. A manager may accept
    /// several (rotation); signaling sends one.
    pub fn parse(text: &str) -> Result<BearerToken, &'static str> {
        let (_, token) = token_lines(text)
            .next()
            .ok_or("holds no token (one per line; `#` starts a comment line)")?;
        TOKEN_RULES.check(token)?;
        let mut value: MetadataValue<Ascii> = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the token cannot be sent in a header")?;
        value.set_sensitive(true);
        Ok(BearerToken(Some(value)))
    }

    fn load(path: &Path) -> Result<BearerToken, ClientAccessError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClientAccessError::Read {
            option: "rtpmanager-token-file",
            path: path.to_owned(),
            source,
        })?;
        BearerToken::parse(&text).map_err(|reason| ClientAccessError::Token {
            path: path.to_owned(),
            reason,
        })
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The settings of every manager connection, read from their files.
#[derive(Clone, Debug, Default)]
pub struct ClientAccess {
    tls: Option<ClientTlsConfig>,
    token: BearerToken,
}

impl ClientAccess {
    /// Reads the files the `--rtpmanager-tls-*` and `--rtpmanager-token-file`
    /// options name.
    pub fn from_config(config: &Config) -> Result<ClientAccess, ClientAccessError> {
        let tls = match &config.rtpmanager_tls_ca {
            Some(ca) => {
                let mut tls = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(read_pem("rtpmanager-tls-ca", ca)?));
                if let (Some(cert), Some(key)) =
                    (&config.rtpmanager_tls_cert, &config.rtpmanager_tls_key)
                {
                    tls = tls.identity(Identity::from_pem(
                        read_pem("rtpmanager-tls-cert", cert)?,
                        read_pem("rtpmanager-tls-key", key)?,
                    ));
                }
                Some(tls)
            }
            None => None,
        };
        let token = match &config.rtpmanager_token_file {
            Some(path) => BearerToken::load(path)?,
            None => BearerToken::default(),
        };
        Ok(ClientAccess { tls, token })
    }

    /// A client of the manager at `uri` (`http://` or `https://`); the
    /// connection is made at its first request.
    pub fn connect_lazy(&self, uri: &str) -> Result<ManagerClient, tonic::transport::Error> {
        let mut endpoint = Endpoint::from_shared(uri.to_owned())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(REQUEST_TIMEOUT);
        // Configuration checks that an https:// manager comes with a CA.
        if let (true, Some(tls)) = (uri.starts_with("https://"), &self.tls) {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        Ok(RtpManagerClient::with_interceptor(
            endpoint.connect_lazy(),
            self.token.clone(),
        ))
    }
}

/// Whether the manager at `uri` is reached on this host's loopback.
fn is_loopback(uri: &str) -> bool {
    let Ok(uri) = uri.parse::<tonic::transport::Uri>() else {
        return false;
    };
    match uri.host() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

impl ClientAccess {
    /// The warning to log when the token would cross the network in clear:
    /// a plaintext (`http://`) manager that is not on loopback.
    pub fn cleartext_warning(&self, uri: &str) -> Option<String> {
        (self.token.0.is_some() && uri.starts_with("http://") && !is_loopback(uri)).then(|| {
            format!(
                "the RTP manager {uri} is reached in plaintext: its bearer token crosses the network in clear; use TLS (--rtpmanager-tls-ca, https://)"
            )
        })
    }
}

/// A failed request in one line for the log and the REST API: the status
/// and the causes a transport error hides behind it (a refused TLS
/// handshake, an unknown CA, a closed connection).
pub fn describe(status: &Status) -> String {
    let mut text = format!("{}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123";

    #[test]
    fn the_first_token_line_is_sent_as_a_bearer_token() {
        let mut token =
            BearerToken::parse(&format!("# pool\n\n  {TOKEN}  \nnext-token-for-rotation\n"))
                .expect("valid file");
        let request = token.call(Request::new(())).expect("never refuses");
        let value = request
            .metadata()
            .get("authorization")
            .expect("authorization set");
        assert_eq!(
            value.to_str().ok(),
            Some(format!("Bearer {TOKEN}").as_str())
        );
        assert!(value.is_sensitive(), "kept out of HPACK tables");
        assert!(
            !format!("{token:?} {value:?}").contains(TOKEN),
            "Debug hides it"
        );

        let mut none = BearerToken::default();
        let request = none.call(Request::new(())).expect("never refuses");
        assert!(request.metadata().get("authorization").is_none());
    }

    #[test]
    fn an_unusable_token_file_is_refused_without_quoting_it() {
        assert!(BearerToken::parse("# nothing\n\n").is_err());
        assert!(BearerToken::parse("two words\n").is_err());
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("token");
        std::fs::write(&path, "secret with spaces\n").expect("write");
        let err = BearerToken::load(&path).expect_err("spaces").to_string();
        assert!(err.starts_with("--rtpmanager-token-file:"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        let err = BearerToken::load(&dir.path().join("missing"))
            .expect_err("missing file")
            .to_string();
        assert!(err.contains("cannot read"), "{err}");
    }

    #[test]
    fn a_token_sent_in_clear_beyond_loopback_is_warned_about() {
        let with_token = ClientAccess {
            tls: None,
            token: BearerToken::parse(TOKEN).expect("token"),
        };
        for local in [
            "http://127.0.0.1:9090",
            "http://[::1]:9090",
            "http://localhost:9090",
        ] {
            assert_eq!(with_token.cleartext_warning(local), None, "{local}");
        }
        let warning = with_token
            .cleartext_warning("http://10.0.0.11:9090")
            .expect("plaintext across the network");
        assert!(warning.contains("--rtpmanager-tls-ca"), "{warning}");
        assert!(!warning.contains(TOKEN), "{warning}");
        assert_eq!(with_token.cleartext_warning("https://10.0.0.11:9090"), None);
        assert_eq!(
            ClientAccess::default().cleartext_warning("http://10.0.0.11:9090"),
            None,
            "no token, nothing to leak"
        );
    }

    #[test]
    fn describe_keeps_the_status_and_its_message() {
        let status =
            Status::unauthenticated("the bearer token is not one this RTP manager accepts");
        let text = describe(&status);
        assert!(text.contains("authentication"), "{text}");
        assert!(text.ends_with("not one this RTP manager accepts"), "{text}");
    }
}
