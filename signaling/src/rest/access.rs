//! Who may use the REST API: bearer tokens (`--api-token-file`,
//! `--api-token`), compared in constant time and never logged.
//!
//! Without a token the API is open, which the configuration allows only on
//! a loopback `--rest-address` (checked at start, see
//! [`crate::config::Config`]). With tokens, every endpoint but
//! `/api/v1/health` (and `/metrics` when `--metrics-require-token false`)
//! needs `Authorization: Bearer <token>`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use switchboard_service::secrets::{TokenFileError, TokenRules};

pub use switchboard_service::secrets::Tokens;

use super::AppError;

/// Why the token file cannot be used. No variant carries a token.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The file could not be read.
    #[error("--api-token-file: cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file holds no token.
    #[error("--api-token-file: {path} holds no token (one per line; `#` starts a comment line)")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A line is not a usable token.
    #[error("--api-token-file: {path} line {line}: {reason}")]
    BadLine {
        /// The file.
        path: PathBuf,
        /// The 1-based line.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// What an API token must be (at least
/// [`MIN_TOKEN_LEN`](switchboard_service::secrets::MIN_TOKEN_LEN) characters).
const TOKEN_RULES: TokenRules = TokenRules {
    min_len: true,
    not_visible: "a token is visible ASCII without spaces (it travels in an HTTP header)",
};

/// Checks that a token is usable; the reason never quotes it.
pub fn check_token(token: &str) -> Result<(), &'static str> {
    TOKEN_RULES.check(token)
}

/// Reads a token file (`--api-token-file`, format in
/// [`switchboard_service::secrets`]).
pub fn load_tokens(path: &Path) -> Result<Tokens, TokensError> {
    Tokens::load(path, &TOKEN_RULES).map_err(|e| match e {
        TokenFileError::Read(source) => TokensError::Read {
            path: path.to_owned(),
            source,
        },
        TokenFileError::Empty => TokensError::Empty {
            path: path.to_owned(),
        },
        TokenFileError::Line { line, reason } => TokensError::BadLine {
            path: path.to_owned(),
            line,
            reason,
        },
    })
}

/// The API's access settings.
#[derive(Clone, Debug, Default)]
pub struct ApiAccess {
    tokens: Tokens,
    metrics_require_token: bool,
}

impl ApiAccess {
    /// No token: every endpoint open (loopback only, see the module doc).
    pub fn open() -> ApiAccess {
        ApiAccess::default()
    }

    /// Tokens required; `/metrics` too when `metrics_require_token`.
    pub fn with_tokens(tokens: Tokens, metrics_require_token: bool) -> ApiAccess {
        ApiAccess {
            tokens,
            metrics_require_token,
        }
    }

    /// Whether the API needs a token at all.
    pub fn requires_token(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Whether `/metrics` needs the token.
    pub fn metrics_require_token(&self) -> bool {
        self.requires_token() && self.metrics_require_token
    }

    /// Checks an `Authorization` header value.
    fn check(&self, authorization: Option<&[u8]>) -> Result<(), AppError> {
        if self.tokens.is_empty() {
            return Ok(());
        }
        let value = authorization.ok_or(AppError::Unauthorized)?;
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let (scheme, rest) = value.split_at_checked(7).ok_or(AppError::Unauthorized)?;
        if !scheme.eq_ignore_ascii_case(b"bearer ") {
            return Err(AppError::Unauthorized);
        }
        if self.tokens.accepts(rest.trim_ascii()) {
            Ok(())
        } else {
            Err(AppError::Unauthorized)
        }
    }
}

/// Middleware of the guarded routes: refuses a request without an accepted
/// token with 401, logging only that it did (at debug: a client retrying
/// with a wrong token must not flood the journal).
pub(super) async fn require_token(
    State(access): State<Arc<ApiAccess>>,
    request: Request,
    next: Next,
) -> Result<Response, AppError> {
    let authorization = request.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    if let Err(error) = access.check(authorization) {
        tracing::debug!(
            path = %request.uri().path(),
            had_header = authorization.is_some(),
            "REST request refused: no valid bearer token"
        );
        return Err(error);
    }
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123";

    fn access() -> ApiAccess {
        let mut tokens = Tokens::default();
        tokens.add(TOKEN);
        tokens.add("another-token-of-16+");
        ApiAccess::with_tokens(tokens, true)
    }

    #[test]
    fn only_a_bearer_of_one_of_the_tokens_passes() {
        let access = access();
        assert_eq!(access.check(None), Err(AppError::Unauthorized));
        let ok = format!("Bearer {TOKEN}");
        assert_eq!(access.check(Some(ok.as_bytes())), Ok(()));
        let lower = format!("bearer {TOKEN}");
        assert_eq!(access.check(Some(lower.as_bytes())), Ok(()));
        assert_eq!(access.check(Some(b"Bearer another-token-of-16+")), Ok(()));
        let basic = format!("Basic {TOKEN}");
        assert_eq!(
            access.check(Some(basic.as_bytes())),
            Err(AppError::Unauthorized)
        );
        let prefix = format!("Bearer {}", &TOKEN[..10]);
        assert_eq!(
            access.check(Some(prefix.as_bytes())),
            Err(AppError::Unauthorized)
        );
        let longer = format!("Bearer {TOKEN}x");
        assert_eq!(
            access.check(Some(longer.as_bytes())),
            Err(AppError::Unauthorized)
        );
        assert_eq!(access.check(Some(b"Bearer")), Err(AppError::Unauthorized));
        assert!(ApiAccess::open().check(None).is_ok(), "no token: open");
    }

    #[test]
    fn token_file_skips_comments_and_refuses_short_tokens_without_quoting_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tokens");
        std::fs::write(
            &path,
            format!("# ops\n\n  {TOKEN}  \nsecond-token-0123456789\n"),
        )
        .expect("write");
        let tokens = load_tokens(&path).expect("two tokens");
        assert_eq!(tokens.len(), 2);
        assert!(tokens.accepts(TOKEN.as_bytes()));
        assert_eq!(format!("{tokens:?}"), "Tokens(2 hidden)");

        std::fs::write(&path, "shortsecret\n").expect("write");
        let error = load_tokens(&path).expect_err("too short").to_string();
        assert!(error.contains("line 1") && error.contains("16"), "{error}");
        assert!(!error.contains("shortsecret"), "never quoted: {error}");

        std::fs::write(&path, "# nothing\n").expect("write");
        let error = load_tokens(&path).expect_err("empty").to_string();
        assert!(error.contains("holds no token"), "{error}");

        std::fs::write(&path, format!("{TOKEN}\nwith a space 0123456789\n")).expect("write");
        let error = load_tokens(&path).expect_err("spaces").to_string();
        assert!(
            error.starts_with("--api-token-file:")
                && error.contains("line 2")
                && error.contains("HTTP header"),
            "{error}"
        );
        assert!(!error.contains("with a space"), "never quoted: {error}");
        assert_eq!(
            check_token("short"),
            Err(switchboard_service::secrets::TOO_SHORT)
        );
        assert!(check_token(TOKEN).is_ok());
    }
}
