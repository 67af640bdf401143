//! The users file: per-user HA1 for each algorithm, or a plaintext password
//! for demos.
//!
//! ```toml
//! [[user]]
//! name = "alice"
//! ha1_md5 = "…32 hex…"
//! ha1_sha256 = "…64 hex…"
//!
//! [[user]]
//! name = "demo"
//! password = "demo"   # hashed at load time; for demos only
//!
//! [[user]]
//! name = "carol"
//! password = "…"
//! algorithm = "SHA-256"  # challenge this user with SHA-256 alone
//! ```
//!
//! `algorithm` names the digest algorithm a user's phone is challenged
//! with when the server sends one challenge per response (the default,
//! `--auth-challenges one`): phones known to support SHA-256 can use it
//! while the server's default stays the MD5 every phone understands.
//!
//! HA1 values are bound to the realm they were computed for: the file holds
//! HA1s for the configured realm.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::digest::{ha1, Algorithm};

/// Errors loading a users file.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape (the message names the line).
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// An entry is invalid.
    #[error("{path}: user #{index} ({name:?}): {reason}")]
    InvalidUser {
        /// The file.
        path: PathBuf,
        /// 1-based position of the `[[user]]` entry.
        index: usize,
        /// The user's name as written.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    user: Vec<UserEntry>,
}

/// One `[[user]]` entry of the file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// The digest username.
    pub name: String,
    /// HA1 with MD5, lowercase hex.
    pub ha1_md5: Option<String>,
    /// HA1 with SHA-256, lowercase hex.
    pub ha1_sha256: Option<String>,
    /// A plaintext password (demos only).
    pub password: Option<String>,
    /// The algorithm this user is challenged with (`MD5` or `SHA-256`),
    /// when the server sends one challenge; absent: the server's first.
    #[serde(default)]
    pub algorithm: Option<String>,
}

impl UserEntry {
    /// The entry to add a user: both HA1s computed for `realm`, no plaintext.
    pub fn hashed(name: &str, realm: &str, password: &str) -> Self {
        Self {
            name: name.to_string(),
            ha1_md5: Some(ha1(Algorithm::Md5, name, realm, password)),
            ha1_sha256: Some(ha1(Algorithm::Sha256, name, realm, password)),
            password: None,
            algorithm: None,
        }
    }

    /// The entry as a `[[user]]` TOML block, ready to append to the file.
    pub fn to_toml(&self) -> String {
        let mut out = format!("[[user]]\nname = {:?}\n", self.name);
        if let Some(h) = &self.ha1_md5 {
            out.push_str(&format!("ha1_md5 = \"{h}\"\n"));
        }
        if let Some(h) = &self.ha1_sha256 {
            out.push_str(&format!("ha1_sha256 = \"{h}\"\n"));
        }
        if let Some(p) = &self.password {
            out.push_str(&format!("password = {p:?}\n"));
        }
        if let Some(a) = &self.algorithm {
            out.push_str(&format!("algorithm = {a:?}\n"));
        }
        out
    }
}

/// Loaded users: username → HA1 per algorithm.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Users {
    ha1: HashMap<String, HashMap<Algorithm, String>>,
    /// Users whose entry names the algorithm to challenge them with.
    preferred: HashMap<String, Algorithm>,
}

impl Users {
    /// Loads and validates a users file; HA1s of plaintext passwords are
    /// computed for `realm`.
    pub fn load(path: &Path, realm: &str) -> Result<Self, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text, realm)
    }

    /// Parses users file text; `path` only labels errors.
    pub fn parse(path: &Path, text: &str, realm: &str) -> Result<Self, UsersError> {
        let file: UsersFile = toml::from_str(text).map_err(|e| UsersError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut users = Self::default();
        for (position, entry) in file.user.into_iter().enumerate() {
            let invalid = |reason: &str| UsersError::InvalidUser {
                path: path.to_path_buf(),
                index: position + 1,
                name: entry.name.clone(),
                reason: reason.to_string(),
            };
            if entry.name.is_empty() || entry.name.contains(['"', '\\', ':']) {
                return Err(invalid("name is empty or contains '\"', '\\' or ':'"));
            }
            if users.ha1.contains_key(&entry.name) {
                return Err(invalid("duplicate name"));
            }
            let mut hashes = HashMap::new();
            for (algorithm, value) in [
                (Algorithm::Md5, &entry.ha1_md5),
                (Algorithm::Sha256, &entry.ha1_sha256),
            ] {
                if let Some(value) = value {
                    if value.len() != algorithm.hex_len()
                        || !value.chars().all(|c| c.is_ascii_hexdigit())
                    {
                        return Err(invalid(&format!(
                            "ha1 for {} must be {} hex digits",
                            algorithm.name(),
                            algorithm.hex_len()
                        )));
                    }
                    hashes.insert(algorithm, value.to_ascii_lowercase());
                }
            }
            match (&entry.password, hashes.is_empty()) {
                (Some(_), false) => return Err(invalid("give either a password or HA1 values")),
                (None, true) => return Err(invalid("no password and no HA1")),
                (Some(password), true) => {
                    for algorithm in [Algorithm::Md5, Algorithm::Sha256] {
                        hashes.insert(algorithm, ha1(algorithm, &entry.name, realm, password));
                    }
                }
                (None, false) => {}
            }
            if let Some(name) = &entry.algorithm {
                let Some(algorithm) = Algorithm::parse(name.trim()) else {
                    return Err(invalid("algorithm must be MD5 or SHA-256"));
                };
                if !hashes.contains_key(&algorithm) {
                    return Err(invalid(&format!(
                        "algorithm {} needs ha1_{} or a password",
                        algorithm.name(),
                        match algorithm {
                            Algorithm::Md5 => "md5",
                            Algorithm::Sha256 => "sha256",
                        }
                    )));
                }
                users.preferred.insert(entry.name.clone(), algorithm);
            }
            users.ha1.insert(entry.name, hashes);
        }
        Ok(users)
    }

    /// The HA1 of `username` for `algorithm`, if known.
    pub fn ha1(&self, username: &str, algorithm: Algorithm) -> Option<&str> {
        self.ha1
            .get(username)
            .and_then(|h| h.get(&algorithm))
            .map(String::as_str)
    }

    /// The algorithm `username`'s entry asks to be challenged with, if any.
    pub fn preferred_algorithm(&self, username: &str) -> Option<Algorithm> {
        self.preferred.get(username).copied()
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.ha1.len()
    }

    /// Whether there is no user.
    pub fn is_empty(&self) -> bool {
        self.ha1.is_empty()
    }
}
