//! Bearer-token files and PEM files, as the daemons read them.
//!
//! A token file holds one token per line; blank lines and lines starting
//! with `#` (after trimming) are skipped, and the white space around a
//! token is not part of it. What makes a token usable is a
//! [`TokenRules`]: each daemon keeps its own wording. No error here ever
//! quotes a token, and [`Tokens`]' `Debug` shows how many, never which.

use std::path::{Path, PathBuf};

/// Shortest token accepted where [`TokenRules::min_len`] is set: a
/// guessable token protects nothing.
pub const MIN_TOKEN_LEN: usize = 16;

/// The reason given for a token shorter than [`MIN_TOKEN_LEN`].
pub const TOO_SHORT: &str =
    "a token needs at least 16 characters (`openssl rand -hex 32` makes one)";

/// The lines of a token file that hold a token: 1-based line number and
/// the trimmed token, blank lines and `#` comment lines skipped.
pub fn token_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(index, line)| (index + 1, line.trim()))
        .filter(|(_, token)| !token.is_empty() && !token.starts_with('#'))
}

/// What a token must be.
#[derive(Clone, Copy, Debug)]
pub struct TokenRules {
    /// Whether a token needs at least [`MIN_TOKEN_LEN`] characters.
    pub min_len: bool,
    /// The reason given for a token that is not visible ASCII without
    /// spaces (checked first).
    pub not_visible: &'static str,
}

impl TokenRules {
    /// Checks that a token is usable; the reason never quotes it.
    pub fn check(&self, token: &str) -> Result<(), &'static str> {
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(self.not_visible);
        }
        if self.min_len && token.len() < MIN_TOKEN_LEN {
            return Err(TOO_SHORT);
        }
        Ok(())
    }
}

/// What is wrong with a token file. No variant carries a token.
#[derive(Debug)]
pub enum TokenFileError {
    /// The file could not be read.
    Read(std::io::Error),
    /// No token at all.
    Empty,
    /// One line is not a usable token.
    Line {
        /// The 1-based line.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A set of accepted tokens, compared in constant time.
#[derive(Clone, Default)]
pub struct Tokens(Vec<Vec<u8>>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} hidden)", self.0.len())
    }
}

impl Tokens {
    /// Reads a token file (see [`Tokens::parse`]).
    pub fn load(path: &Path, rules: &TokenRules) -> Result<Tokens, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(TokenFileError::Read)?;
        Tokens::parse(&text, rules)
    }

    /// Parses every token line of a file (see [`token_lines`]); each must
    /// pass `rules`, and there must be at least one.
    pub fn parse(text: &str, rules: &TokenRules) -> Result<Tokens, TokenFileError> {
        let mut tokens = Tokens::default();
        for (line, token) in token_lines(text) {
            rules
                .check(token)
                .map_err(|reason| TokenFileError::Line { line, reason })?;
            tokens.add(token);
        }
        if tokens.is_empty() {
            return Err(TokenFileError::Empty);
        }
        Ok(tokens)
    }

    /// Adds one token (already checked).
    pub fn add(&mut self, token: &str) {
        self.0.push(token.as_bytes().to_vec());
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `presented` is one of the tokens. Every token is compared,
    /// each without an early exit, so the time taken tells nothing of how
    /// much of a guess was right.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        self.0.iter().fold(false, |found, token| {
            found | constant_time_eq(token, presented)
        })
    }
}

/// Compares without an early exit, so the time taken does not tell how
/// many leading bytes of a guess were right. Lengths are not secret.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Why a PEM file cannot be used; `option` is the flag that named it,
/// without its dashes.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// The file could not be read.
    #[error("--{option}: cannot read {path}: {source}")]
    Read {
        /// The option naming the file.
        option: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file holds no PEM block.
    #[error("--{option}: {path} holds no PEM `-----BEGIN` block")]
    NotPem {
        /// The option naming the file.
        option: &'static str,
        /// The file.
        path: PathBuf,
    },
}

/// Reads a file that must hold a PEM block (certificate, key, CA).
pub fn read_pem(option: &'static str, path: &Path) -> Result<Vec<u8>, PemError> {
    let bytes = std::fs::read(path).map_err(|source| PemError::Read {
        option,
        path: path.to_owned(),
        source,
    })?;
    if !bytes.windows(10).any(|w| w == b"-----BEGIN") {
        return Err(PemError::NotPem {
            option,
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123";
    const B: &str = "fedcba9876543210fedc";
    const RULES: TokenRules = TokenRules {
        min_len: true,
        not_visible: "not visible",
    };

    fn tokens() -> Tokens {
        Tokens::parse(&format!("# pool tokens\n\n  {A}  \n{B}\n"), &RULES).expect("valid file")
    }

    #[test]
    fn token_file_skips_comments_and_blank_lines_and_trims() {
        let t = tokens();
        assert_eq!(t.0, vec![A.as_bytes().to_vec(), B.as_bytes().to_vec()]);
        assert_eq!(t.len(), 2);
        assert!(t.accepts(A.as_bytes()) && t.accepts(B.as_bytes()));
        assert!(
            !t.accepts(b"0123456789abcdef012"),
            "a prefix is not the token"
        );
        assert!(!t.accepts(b"0123456789abcdef01234"), "nor an extension");
        assert!(!t.accepts(b""));
        assert!(!Tokens::default().accepts(b""), "no token accepts nothing");
        assert_eq!(
            token_lines("  # indented comment\n\n x y \n#\nz").collect::<Vec<_>>(),
            vec![(3, "x y"), (5, "z")]
        );
    }

    #[test]
    fn token_file_errors_name_the_line_never_the_token() {
        assert!(matches!(
            Tokens::parse("# only a comment\n\n", &RULES),
            Err(TokenFileError::Empty)
        ));
        let short = Tokens::parse(&format!("{A}\nshort-secret\n"), &RULES).err();
        assert!(
            matches!(short, Some(TokenFileError::Line { line: 2, reason }) if reason == TOO_SHORT && reason.contains("16")),
            "{short:?}"
        );
        let spaced = Tokens::parse("has a space inside it\n", &RULES).err();
        assert!(
            matches!(
                spaced,
                Some(TokenFileError::Line {
                    line: 1,
                    reason: "not visible"
                })
            ),
            "{spaced:?}"
        );
        let any_len = TokenRules {
            min_len: false,
            ..RULES
        };
        assert!(Tokens::parse("short\n", &any_len).is_ok());
        assert!(
            !format!("{:?}", tokens()).contains(A),
            "Debug shows no token"
        );
        assert_eq!(format!("{:?}", tokens()), "Tokens(2 hidden)");
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(matches!(
            Tokens::load(&dir.path().join("missing"), &RULES),
            Err(TokenFileError::Read(_))
        ));
    }

    #[test]
    fn constant_time_eq_is_plain_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn read_pem_wants_a_begin_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("cert.pem");
        std::fs::write(&path, "-----BEGIN CERTIFICATE-----\n").expect("write");
        assert!(read_pem("tls-cert", &path).is_ok());
        std::fs::write(&path, "not pem\n").expect("write");
        let err = read_pem("tls-cert", &path)
            .expect_err("no block")
            .to_string();
        assert!(
            err.starts_with("--tls-cert: ") && err.contains("no PEM"),
            "{err}"
        );
        let err = read_pem("tls-key", &dir.path().join("missing"))
            .expect_err("missing")
            .to_string();
        assert!(err.starts_with("--tls-key: cannot read "), "{err}");
    }
}
