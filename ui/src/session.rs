//! Operators' sessions: the API token entered once at login, kept on the
//! server; the browser holds only a random session id in an `HttpOnly`,
//! `SameSite=Strict` cookie, and every form that changes something carries
//! the session's CSRF token.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderValue};

use crate::client::Token;

/// The session cookie's name.
pub const COOKIE: &str = "switchboard_session";
/// How long a login lasts.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the oldest goes first (a login flood must not
/// grow the process without bound).
const MAX_SESSIONS: usize = 1024;

/// One logged-in operator.
#[derive(Clone, Debug)]
pub struct Session {
    /// The token the operator entered: sent with the operator's actions.
    pub token: Token,
    /// Echoed by every mutating form.
    pub csrf: String,
    created: Instant,
}

impl Session {
    /// Whether `presented` is this session's CSRF token (compared without
    /// an early exit).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        let (a, b) = (self.csrf.as_bytes(), presented.as_bytes());
        a.len() == b.len()
            && std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
    }
}

/// The sessions of this process (a restart logs everyone out).
#[derive(Clone, Debug, Default)]
pub struct Sessions {
    map: Arc<Mutex<HashMap<String, Session>>>,
}

impl Sessions {
    /// Opens a session for `token`; returns its id for the cookie.
    pub fn open(&self, token: Token) -> Result<String, std::io::Error> {
        let id = random_hex(32)?;
        let session = Session {
            token,
            csrf: random_hex(32)?,
            created: Instant::now(),
        };
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| s.created.elapsed() < LIFETIME);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(id, _)| id.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(id.clone(), session);
        Ok(id)
    }

    /// The session of a request's cookie, if it is open and not expired.
    pub fn of(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie(headers, COOKIE)?;
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id)
            .filter(|s| s.created.elapsed() < LIFETIME)
            .cloned()
    }

    /// Ends the session of a request's cookie.
    pub fn close(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, COOKIE) {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.remove(id);
        }
    }
}

/// The `Set-Cookie` value that stores session `id`; `Secure` when the
/// browser reached the dashboard over HTTPS (a TLS proxy in front says so
/// with `X-Forwarded-Proto: https`), not on plain HTTP on loopback, where
/// the browser would refuse to send it back.
pub fn set_cookie(id: &str, secure: bool) -> HeaderValue {
    let value = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        LIFETIME.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    let mut value = HeaderValue::try_from(value).unwrap_or(HeaderValue::from_static(""));
    value.set_sensitive(true);
    value
}

/// Whether the request came over HTTPS through a proxy.
pub fn over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("switchboard_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The value of cookie `name` in a request.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// `bytes` random bytes from the kernel, as hex.
fn random_hex(bytes: usize) -> Result<String, std::io::Error> {
    let mut buffer = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buffer)?;
    Ok(buffer.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_with(cookie: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::try_from(cookie).expect("header"),
        );
        headers
    }

    #[test]
    fn a_session_is_found_by_its_cookie_and_closed() {
        let sessions = Sessions::default();
        let id = sessions
            .open(Token::new("t0123456789abcdef").expect("token"))
            .expect("random");
        assert_eq!(id.len(), 64);
        let headers = headers_with(&format!("other=1; {COOKIE}={id}"));
        let session = sessions.of(&headers).expect("open session");
        assert!(session.csrf_matches(&session.csrf.clone()));
        assert!(!session.csrf_matches("forged"));
        assert!(sessions
            .of(&headers_with(&format!("{COOKIE}=x{id}")))
            .is_none());
        sessions.close(&headers);
        assert!(sessions.of(&headers).is_none());
    }

    #[test]
    fn the_cookie_is_http_only_and_same_site_strict() {
        let value = set_cookie("abc", false);
        let text = value.to_str().expect("ASCII");
        assert!(text.starts_with(&format!("{COOKIE}=abc;")), "{text}");
        assert!(text.contains("HttpOnly"), "{text}");
        assert!(text.contains("SameSite=Strict"), "{text}");
        assert!(!text.contains("Secure"), "{text}");
        assert!(value.is_sensitive());
        let secure = set_cookie("abc", true);
        assert!(secure.to_str().expect("ASCII").ends_with("; Secure"));
        let mut headers = HeaderMap::new();
        assert!(!over_https(&headers));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(over_https(&headers));
    }
}
