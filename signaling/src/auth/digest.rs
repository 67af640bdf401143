//! Digest primitives: hashes (RFC 7616 §3.4), HMAC-SHA-256 (RFC 2104) for
//! stateless nonces, constant-time comparison and the credentials parser.

use std::collections::HashMap;

use md5::Md5;
use sha2::{Digest, Sha256};

use super::AuthFailure;

/// A digest algorithm (RFC 8760 adds SHA-256 to SIP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `MD5`, the RFC 3261 default.
    Md5,
    /// `SHA-256`.
    Sha256,
}

impl Algorithm {
    /// The token used in the `algorithm` parameter.
    pub fn name(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::Sha256 => "SHA-256",
        }
    }

    /// Parses an `algorithm` parameter; `-sess` variants are not supported.
    pub fn parse(text: &str) -> Option<Self> {
        if text.eq_ignore_ascii_case("MD5") {
            Some(Self::Md5)
        } else if text.eq_ignore_ascii_case("SHA-256") {
            Some(Self::Sha256)
        } else {
            None
        }
    }

    /// The lowercase hex hash of `data`.
    pub fn hash_hex(self, data: &[u8]) -> String {
        match self {
            Self::Md5 => hex(&Md5::digest(data)),
            Self::Sha256 => hex(&Sha256::digest(data)),
        }
    }

    /// Length of a hex hash in characters.
    pub fn hex_len(self) -> usize {
        match self {
            Self::Md5 => 32,
            Self::Sha256 => 64,
        }
    }
}

/// HA1 = H(username ":" realm ":" password).
pub fn ha1(algorithm: Algorithm, username: &str, realm: &str, password: &str) -> String {
    algorithm.hash_hex(format!("{username}:{realm}:{password}").as_bytes())
}

/// The `response` for `qop=auth`:
/// H(HA1 ":" nonce ":" nc ":" cnonce ":" qop ":" H(method ":" uri)).
pub fn response(
    algorithm: Algorithm,
    ha1: &str,
    nonce: &str,
    nc: &str,
    cnonce: &str,
    method: &str,
    uri: &str,
) -> String {
    let ha2 = algorithm.hash_hex(format!("{method}:{uri}").as_bytes());
    algorithm.hash_hex(format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}").as_bytes())
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// HMAC-SHA-256 (RFC 2104), written out to avoid a dependency for ten lines.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block_key = [0u8; BLOCK];
    if key.len() > BLOCK {
        block_key[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block_key[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block_key.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(block_key.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Compares without an early exit, so that timing does not reveal how many
/// leading characters of a guess were right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parsed `Authorization` / `Proxy-Authorization` digest credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    params: HashMap<String, String>,
}

impl Credentials {
    /// Parses `Digest name=value, name="quoted \"value\"", …`.
    ///
    /// Parameter names are case-insensitive; values keep their case;
    /// quoted strings may contain commas and backslash escapes.
    pub fn parse(header: &str) -> Result<Self, AuthFailure> {
        let malformed = |what: &str| AuthFailure::Malformed(what.to_string());
        let text = header.trim_start();
        let scheme_end = text
            .find(|c: char| c.is_ascii_whitespace())
            .ok_or_else(|| malformed("no digest parameters"))?;
        if !text[..scheme_end].eq_ignore_ascii_case("Digest") {
            return Err(malformed("scheme is not Digest"));
        }
        let mut chars = text[scheme_end..].chars().peekable();
        let mut params = HashMap::new();
        loop {
            while chars
                .peek()
                .is_some_and(|c| c.is_ascii_whitespace() || *c == ',')
            {
                chars.next();
            }
            if chars.peek().is_none() {
                break;
            }
            let mut name = String::new();
            while let Some(&c) = chars.peek() {
                if c == '=' || c.is_ascii_whitespace() || c == ',' {
                    break;
                }
                name.push(c);
                chars.next();
            }
            while chars.peek().is_some_and(char::is_ascii_whitespace) {
                chars.next();
            }
            if chars.next() != Some('=') || name.is_empty() {
                return Err(malformed("expected name=value"));
            }
            while chars.peek().is_some_and(char::is_ascii_whitespace) {
                chars.next();
            }
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => value.push(
                            chars
                                .next()
                                .ok_or_else(|| malformed("unterminated escape"))?,
                        ),
                        Some(c) => value.push(c),
                        None => return Err(malformed("unterminated quoted string")),
                    }
                }
                while chars.peek().is_some_and(char::is_ascii_whitespace) {
                    chars.next();
                }
                if chars.peek().is_some_and(|c| *c != ',') {
                    return Err(malformed("text after a quoted string"));
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' || c.is_ascii_whitespace() {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
            if params.insert(name.to_ascii_lowercase(), value).is_some() {
                return Err(malformed("duplicate parameter"));
            }
        }
        Ok(Self { params })
    }

    /// A parameter's value (name case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// A required parameter.
    pub(crate) fn require(&self, name: &'static str) -> Result<&str, AuthFailure> {
        self.get(name)
            .ok_or_else(|| AuthFailure::Malformed(format!("missing {name}")))
    }
}
