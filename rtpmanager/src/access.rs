//! Who may use the gRPC control API: the TLS identity the server presents,
//! the CA its clients' certificates must chain to (mutual TLS), and the
//! bearer tokens it accepts.
//!
//! Both are optional and independent; the default is plaintext without a
//! token, meant for loopback. Tokens are compared in constant time and
//! never written to the log: a rejected request is logged with its peer
//! address and the kind of failure only.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard_service::secrets::{read_pem, PemError, TokenFileError, TokenRules};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Status};

pub use switchboard_service::secrets::{Tokens, MIN_TOKEN_LEN};

use crate::config::Config;

/// How long a client may take to finish its TLS handshake; a client that
/// opens connections and stalls must not hold them for ever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often rejected requests are logged at most (with their count): a
/// client retrying with a wrong token must not flood the journal.
const REJECT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Why the access configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
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
    /// The token file holds no token.
    #[error("--grpc-token-file: {path} holds no token (one per line; `#` starts a comment line)")]
    NoToken { path: PathBuf },
    /// A line of the token file is not a usable token (the token itself is
    /// never part of the message).
    #[error("--grpc-token-file: {path} line {line}: {reason}")]
    BadToken {
        path: PathBuf,
        line: usize,
        reason: &'static str,
    },
}

impl From<PemError> for AccessError {
    fn from(error: PemError) -> AccessError {
        match error {
            PemError::Read {
                option,
                path,
                source,
            } => AccessError::Read {
                option,
                path,
                source,
            },
            PemError::NotPem { option, path } => AccessError::NotPem { option, path },
        }
    }
}

/// What a manager's token must be (at least [`MIN_TOKEN_LEN`] characters).
const TOKEN_RULES: TokenRules = TokenRules {
    min_len: true,
    not_visible: "a token is visible ASCII without spaces (it travels in an HTTP/2 header)",
};

/// Reads a token file (`--grpc-token-file`, format in
/// [`switchboard_service::secrets`]).
pub fn load_tokens(path: &Path) -> Result<Tokens, AccessError> {
    Tokens::load(path, &TOKEN_RULES).map_err(|e| match e {
        TokenFileError::Read(source) => AccessError::Read {
            option: "grpc-token-file",
            path: path.to_owned(),
            source,
        },
        TokenFileError::Empty => AccessError::NoToken {
            path: path.to_owned(),
        },
        TokenFileError::Line { line, reason } => AccessError::BadToken {
            path: path.to_owned(),
            line,
            reason,
        },
    })
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// No `authorization` metadata.
    Missing,
    /// `authorization` is not `Bearer <token>`.
    NotBearer,
    /// A bearer token that is not one of ours.
    Wrong,
}

impl Rejection {
    fn name(self) -> &'static str {
        match self {
            Rejection::Missing => "missing",
            Rejection::NotBearer => "not_bearer",
            Rejection::Wrong => "wrong",
        }
    }

    /// The status the client gets; it names the options, never a token.
    pub fn status(self) -> Status {
        Status::unauthenticated(match self {
            Rejection::Missing => {
                "this RTP manager needs a bearer token (`authorization: Bearer <token>`; signaling sends it with --rtpmanager-token-file)"
            }
            Rejection::NotBearer => "the authorization metadata is not `Bearer <token>`",
            Rejection::Wrong => {
                "the bearer token is not one this RTP manager accepts (its --grpc-token-file)"
            }
        })
    }
}

/// Checks a request's `authorization` metadata value against `tokens`.
pub fn check(tokens: &Tokens, authorization: Option<&[u8]>) -> Result<(), Rejection> {
    let value = authorization.ok_or(Rejection::Missing)?;
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let (scheme, rest) = value.split_at_checked(6).ok_or(Rejection::NotBearer)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return Err(Rejection::NotBearer);
    }
    if tokens.accepts(rest.trim_ascii()) {
        Ok(())
    } else {
        Err(Rejection::Wrong)
    }
}

/// The tonic interceptor that refuses requests without an accepted token.
#[derive(Clone, Debug)]
pub struct TokenCheck {
    // Replaced whole by a reload; requests read it under a short lock.
    tokens: Arc<std::sync::RwLock<Arc<Tokens>>>,
    log: Arc<RejectLog>,
}

impl TokenCheck {
    pub fn new(tokens: Tokens) -> TokenCheck {
        TokenCheck {
            tokens: Arc::new(std::sync::RwLock::new(Arc::new(tokens))),
            log: Arc::new(RejectLog::default()),
        }
    }

    /// Reads the token file again (SIGHUP) and, when it is valid, accepts
    /// its tokens from now on; otherwise keeps the old ones. Returns how
    /// many tokens are in force.
    pub fn reload(&self, path: &Path) -> Result<usize, AccessError> {
        let tokens = load_tokens(path)?;
        let count = tokens.len();
        let mut current = self
            .tokens
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *current = Arc::new(tokens);
        Ok(count)
    }

    fn current(&self) -> Arc<Tokens> {
        Arc::clone(
            &self
                .tokens
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

impl TokenCheck {
    /// Checks an `authorization` value against the tokens in force now,
    /// logging a refusal. The Control stream checks the token it was
    /// opened with before each request, so a token taken out of the file
    /// stops working on streams already open too.
    pub fn verify(
        &self,
        authorization: Option<&[u8]>,
        peer: Option<SocketAddr>,
    ) -> Result<(), Status> {
        check(&self.current(), authorization).map_err(|rejection| {
            self.log.rejected(rejection, peer);
            rejection.status()
        })
    }
}

impl Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .map(|value| value.as_bytes());
        self.verify(authorization, request.remote_addr())?;
        Ok(request)
    }
}

/// Logs rejected requests at most once per [`REJECT_LOG_INTERVAL`].
#[derive(Debug, Default)]
struct RejectLog {
    since_last: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl RejectLog {
    fn rejected(&self, rejection: Rejection, peer: Option<SocketAddr>) {
        let count = self.since_last.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        if last.is_some_and(|at| now.duration_since(at) < REJECT_LOG_INTERVAL) {
            return;
        }
        *last = Some(now);
        self.since_last.fetch_sub(count, Ordering::Relaxed);
        tracing::warn!(
            peer = %peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string()),
            reason = %rejection.name(),
            rejected = count,
            "gRPC request refused: no accepted bearer token (repeats are counted, logged every 10 s)"
        );
    }
}

/// The control API's access settings, read from their files.
#[derive(Debug, Default)]
pub struct Access {
    /// The TLS configuration, when the API speaks TLS.
    pub tls: Option<ServerTlsConfig>,
    /// Whether clients must present a certificate.
    pub client_certificates: bool,
    /// The accepted tokens, when requests need one.
    pub tokens: Option<Tokens>,
}

impl Access {
    /// Reads the files the `--grpc-tls-*` and `--grpc-token-file` options name.
    pub fn from_config(config: &Config) -> Result<Access, AccessError> {
        let tls = match (&config.grpc_tls_cert, &config.grpc_tls_key) {
            (Some(cert), Some(key)) => {
                let identity = Identity::from_pem(
                    read_pem("grpc-tls-cert", cert)?,
                    read_pem("grpc-tls-key", key)?,
                );
                let mut tls = ServerTlsConfig::new()
                    .identity(identity)
                    .timeout(HANDSHAKE_TIMEOUT);
                if let Some(ca) = &config.grpc_tls_client_ca {
                    tls = tls
                        .client_ca_root(Certificate::from_pem(read_pem("grpc-tls-client-ca", ca)?));
                }
                Some(tls)
            }
            _ => None,
        };
        let tokens = config
            .grpc_token_file
            .as_deref()
            .map(load_tokens)
            .transpose()?;
        Ok(Access {
            client_certificates: tls.is_some() && config.grpc_tls_client_ca.is_some(),
            tls,
            tokens,
        })
    }

    /// Whether a client must prove who it is (certificate or token).
    pub fn authenticates(&self) -> bool {
        self.client_certificates || self.tokens.is_some()
    }

    /// A short description for the start-up log, e.g. `tls+client-cert+token`.
    pub fn summary(&self) -> String {
        let mut parts = vec![if self.tls.is_some() {
            "tls"
        } else {
            "plaintext"
        }];
        if self.client_certificates {
            parts.push("client-cert");
        }
        if self.tokens.is_some() {
            parts.push("token");
        }
        parts.join("+")
    }

    /// The warning to log when the API listens beyond loopback without
    /// authenticating its clients. A warning, not a refusal, so that
    /// deployments from before these options keep running.
    pub fn exposure_warning(&self, listen: IpAddr) -> Option<String> {
        (!listen.is_loopback() && !self.authenticates()).then(|| {
            format!(
                "the gRPC control API listens on {listen} without authenticating clients: anyone who reaches it can delete calls or drain this manager; set --grpc-token-file and/or --grpc-tls-cert, --grpc-tls-key and --grpc-tls-client-ca (docs/DEPLOYMENT.md, \"Securing the control API\")"
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123";
    const B: &str = "fedcba9876543210fedc";

    fn tokens() -> Tokens {
        Tokens::parse(&format!("# pool tokens\n\n  {A}  \n{B}\n"), &TOKEN_RULES)
            .expect("valid file")
    }

    #[test]
    fn token_file_errors_name_the_line_never_the_token() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tokens");
        std::fs::write(&path, "tooshortsecret1\n").expect("write");
        let err = load_tokens(&path).expect_err("short token").to_string();
        assert!(
            err.starts_with("--grpc-token-file:") && err.contains("line 1"),
            "{err}"
        );
        assert!(!err.contains("tooshortsecret1"), "the token leaked: {err}");
        std::fs::write(&path, format!("{A}\nhas a space inside it\n")).expect("write");
        let err = load_tokens(&path).expect_err("spaces").to_string();
        assert!(err.contains("line 2") && err.contains("HTTP/2"), "{err}");
        assert!(!err.contains("space inside"), "the token leaked: {err}");
        std::fs::write(&path, "# only a comment\n\n").expect("write");
        let err = load_tokens(&path).expect_err("empty").to_string();
        assert!(
            err.starts_with("--grpc-token-file:") && err.contains("holds no token"),
            "{err}"
        );
        assert!(
            !format!("{:?}", tokens()).contains(A),
            "Debug shows no token"
        );
    }

    #[test]
    fn only_a_bearer_token_of_the_file_passes() {
        let t = tokens();
        assert_eq!(check(&t, None), Err(Rejection::Missing));
        assert_eq!(check(&t, Some(A.as_bytes())), Err(Rejection::NotBearer));
        assert_eq!(
            check(&t, Some(format!("Basic {A}").as_bytes())),
            Err(Rejection::NotBearer)
        );
        assert_eq!(
            check(&t, Some(format!("Bearer{A}").as_bytes())),
            Err(Rejection::NotBearer)
        );
        assert_eq!(
            check(&t, Some(b"Bearer 0000000000000000000")),
            Err(Rejection::Wrong)
        );
        assert_eq!(check(&t, Some(b"Bearer ")), Err(Rejection::Wrong));
        assert_eq!(check(&t, Some(format!("Bearer {A}").as_bytes())), Ok(()));
        assert_eq!(check(&t, Some(format!("bearer  {B}").as_bytes())), Ok(()));
        for r in [Rejection::Missing, Rejection::NotBearer, Rejection::Wrong] {
            assert_eq!(r.status().code(), tonic::Code::Unauthenticated);
        }
    }

    #[test]
    fn a_reload_replaces_the_tokens_and_a_bad_file_keeps_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tokens");
        let check = TokenCheck::new(tokens());
        std::fs::write(&path, format!("{B}\n")).expect("write");
        assert_eq!(check.reload(&path).expect("valid file"), 1);
        assert!(check.current().accepts(B.as_bytes()));
        assert!(!check.current().accepts(A.as_bytes()), "A was removed");
        std::fs::write(&path, "short\n").expect("write");
        assert!(check.reload(&path).is_err());
        assert!(check.current().accepts(B.as_bytes()), "the old tokens stay");
        let clone = check.clone();
        std::fs::write(&path, format!("{A}\n")).expect("write");
        check.reload(&path).expect("valid file");
        assert!(
            clone.current().accepts(A.as_bytes()),
            "clones share the tokens"
        );
    }

    #[test]
    fn exposure_is_warned_beyond_loopback_without_authentication() {
        let plain = Access::default();
        assert_eq!(plain.summary(), "plaintext");
        assert!(plain
            .exposure_warning("127.0.0.1".parse().expect("ip"))
            .is_none());
        assert!(plain.exposure_warning("::1".parse().expect("ip")).is_none());
        let warning = plain
            .exposure_warning("0.0.0.0".parse().expect("ip"))
            .expect("all addresses, no authentication");
        assert!(warning.contains("--grpc-token-file"), "{warning}");
        assert!(plain
            .exposure_warning("10.0.0.11".parse().expect("ip"))
            .is_some());

        let with_token = Access {
            tokens: Some(tokens()),
            ..Access::default()
        };
        assert_eq!(with_token.summary(), "plaintext+token");
        assert!(with_token
            .exposure_warning("10.0.0.11".parse().expect("ip"))
            .is_none());
        let tls_only = Access {
            tls: Some(ServerTlsConfig::new()),
            ..Access::default()
        };
        assert!(
            tls_only
                .exposure_warning("10.0.0.11".parse().expect("ip"))
                .is_some(),
            "encryption without client authentication is still open to anyone"
        );
        let mtls = Access {
            tls: Some(ServerTlsConfig::new()),
            client_certificates: true,
            tokens: Some(tokens()),
        };
        assert_eq!(mtls.summary(), "tls+client-cert+token");
        assert!(mtls
            .exposure_warning("10.0.0.11".parse().expect("ip"))
            .is_none());
    }
}
