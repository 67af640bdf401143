//! Digest authentication for SIP (RFC 3261 §22, RFC 7616, RFC 8760).
//!
//! [`Authenticator`] is sans-IO: the driver passes the method, Request-URI,
//! the `Authorization`/`Proxy-Authorization` value and the source address
//! with the current time, and gets either an [`Authenticated`] identity or an
//! [`AuthFailure`], which [`Authenticator::answer`] turns into the response
//! to send (401/407 with challenges, 403 during a lockout, 400).
//!
//! Nonces are stateless: `<timestamp>-<sequence>-<HMAC-SHA-256(secret, both)>`,
//! so validating one needs only the secret. The only state is the highest
//! nonce-count seen per nonce (a bounded map) and the bounded failure
//! tables of the brute-force defence ([`lockout`]), which blocks the
//! failing source and only slows wrong guesses for a much-guessed user
//! name: a user is never locked out. A nonce that failed a digest check is
//! burned, so each guess needs a fresh challenge. Time is [`SystemTime`]
//! because a nonce carries a wall-clock timestamp that must keep its
//! meaning across restarts when the secret is configured.
//!
//! An unknown user and a wrong password get the same answer, and both pay
//! for a full digest computation, so neither status, headers nor timing tell
//! them apart.

mod digest;
mod lockout;
mod users;

pub use digest::{ha1, hmac_sha256, response, Algorithm, Credentials};
pub use lockout::{LockoutConfig, SourceKey};
pub use users::{UserEntry, Users, UsersError};

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockout::Lockout;

/// Why a request was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credentials for our realm: challenge.
    Missing,
    /// Credentials that cannot be parsed or lack a required parameter: 400.
    Malformed(String),
    /// Wrong password, unknown user, forged nonce or unsupported parameters:
    /// challenge again, indistinguishably.
    Rejected,
    /// Like `Rejected`, for a user name that has collected many failures
    /// from anywhere: challenge again, this much later (known and unknown
    /// names alike).
    Slowed(Duration),
    /// Correct credentials on an expired nonce: challenge with `stale=true`.
    Stale,
    /// A nonce-count not above the last one seen for this nonce, or a nonce
    /// burned by a failed guess: challenge again (no digest is tested).
    Replay,
    /// Too many failures from this source (address, or IPv6 /64): 403 until the cool-down ends.
    LockedOut,
}

/// Who made an accepted request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authenticated {
    /// Digest credentials were verified.
    User {
        /// The digest username.
        username: String,
        /// The algorithm used.
        algorithm: Algorithm,
    },
    /// The source address is in a trusted network.
    Trusted,
    /// Authentication is off (anonymous mode) or not required for this method.
    NotRequired,
}

/// The response to send for a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Status code: 400, 401, 403 or 407.
    pub status: u16,
    /// `WWW-Authenticate` or `Proxy-Authenticate`, when challenging.
    pub header_name: Option<&'static str>,
    /// One challenge per algorithm, SHA-256 first.
    pub header_values: Vec<String>,
}

/// Whether requests are authenticated at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// No authentication: every request is [`Authenticated::NotRequired`].
    Anonymous,
    /// Digest authentication for the configured methods.
    Digest,
}

/// An IPv4 or IPv6 network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Errors of the auth configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthConfigError {
    /// A trusted network is not `address/prefix` with a valid prefix length.
    #[error("invalid CIDR {0:?}")]
    InvalidCidr(String),
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128).
    pub fn parse(text: &str) -> Result<Self, AuthConfigError> {
        let invalid = || AuthConfigError::InvalidCidr(text.to_string());
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text.trim(), None),
        };
        let network: IpAddr = addr.parse().map_err(|_| invalid())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().map_err(|_| invalid())?,
            None => max,
        };
        if prefix > max {
            return Err(invalid());
        }
        Ok(Self { network, prefix })
    }

    /// Whether `ip` is inside; an IPv4-mapped IPv6 address counts as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// How many challenges a 401/407 carries.
///
/// RFC 8760 §2.4 lets a server offer several algorithms, one challenge
/// each, and a client pick the best it knows. Many deployed phones (baresip
/// 1.0, older desk phones) instead refuse the whole response when any
/// challenge names an algorithm they do not know, or answer the first one
/// whatever it is, so a single challenge is the default, as in Kamailio and
/// Asterisk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChallengeMode {
    /// One challenge: the algorithm the user's entry prefers if the server
    /// offers it, otherwise the server's first.
    #[default]
    One,
    /// One challenge per offered algorithm, in the configured order.
    All,
}

/// Authenticator settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Anonymous or digest.
    pub mode: AuthMode,
    /// The realm of challenges and of the users file's HA1 values.
    pub realm: String,
    /// The nonce HMAC key, supplied by the driver: a configured value keeps
    /// nonces valid across restarts, random bytes per start invalidate them.
    pub secret: Vec<u8>,
    /// How long a nonce stays fresh.
    pub nonce_lifetime: Duration,
    /// Methods that need authentication (upper case).
    pub methods: Vec<String>,
    /// Sources that need none.
    pub trusted_networks: Vec<Cidr>,
    /// Brute-force defence.
    pub lockout: LockoutConfig,
    /// Bound of the nonce-count map; the oldest nonces are forgotten first.
    pub max_tracked_nonces: usize,
    /// Algorithms offered, in order of preference (never empty). Credentials
    /// computed with another algorithm are refused, so a client cannot
    /// downgrade to MD5 where only SHA-256 is allowed.
    pub algorithms: Vec<Algorithm>,
    /// One challenge per response or one per algorithm.
    pub challenges: ChallengeMode,
}

impl AuthConfig {
    /// Digest auth for REGISTER and INVITE in `realm`, with default limits.
    pub fn digest(realm: &str, secret: Vec<u8>) -> Self {
        Self {
            mode: AuthMode::Digest,
            realm: realm.to_string(),
            secret,
            nonce_lifetime: Duration::from_secs(300),
            methods: vec!["REGISTER".to_string(), "INVITE".to_string()],
            trusted_networks: Vec::new(),
            lockout: LockoutConfig::default(),
            max_tracked_nonces: 65_536,
            algorithms: vec![Algorithm::Md5, Algorithm::Sha256],
            challenges: ChallengeMode::One,
        }
    }
}

/// The status and header of a challenge for `method` (RFC 3261 §22.1,
/// §22.3): a registrar answers 401 with `WWW-Authenticate`, a proxy-like
/// element (the B2BUA for everything else) 407 with `Proxy-Authenticate`.
pub fn challenge_kind(method: &str) -> (u16, &'static str) {
    if method.eq_ignore_ascii_case("REGISTER") {
        (401, "WWW-Authenticate")
    } else {
        (407, "Proxy-Authenticate")
    }
}

/// The header that carries credentials for `method`.
pub fn credentials_header(method: &str) -> &'static str {
    if method.eq_ignore_ascii_case("REGISTER") {
        "Authorization"
    } else {
        "Proxy-Authorization"
    }
}

/// The digest authenticator.
#[derive(Debug)]
pub struct Authenticator {
    config: AuthConfig,
    users: Users,
    /// Makes nonces issued in the same second distinct.
    sequence: u64,
    nonce_counts: HashMap<String, u32>,
    nonce_order: VecDeque<String>,
    lockout: Lockout,
    /// Sources locked out since the start (for metrics).
    lockouts: u64,
}

/// The nonce-count recorded for a nonce that failed a digest check: no
/// later nonce-count is above it, so the nonce cannot carry another guess.
const BURNED: u32 = u32::MAX;

impl Authenticator {
    /// An authenticator with these settings and users.
    pub fn new(config: AuthConfig, users: Users) -> Self {
        Self {
            users,
            sequence: 0,
            nonce_counts: HashMap::new(),
            nonce_order: VecDeque::new(),
            lockout: Lockout::new(config.lockout),
            lockouts: 0,
            config,
        }
    }

    /// How many times a source was locked out since the start.
    pub fn lockouts(&self) -> u64 {
        self.lockouts
    }

    /// Replaces the users with the file at `path`; on error the old users stay.
    pub fn reload_users(&mut self, path: &Path) -> Result<usize, UsersError> {
        let users = Users::load(path, &self.config.realm)?;
        self.users = users;
        Ok(self.users.len())
    }

    /// The loaded users.
    pub fn users(&self) -> &Users {
        &self.users
    }

    /// Builds a challenge for `method` sharing one fresh nonce: a single
    /// header value (the algorithm `user` prefers, if offered, else the
    /// first offered) or one per offered algorithm, per
    /// [`AuthConfig::challenges`]. `user` is the name the request claims
    /// (its credentials' username, or the To/From user), if any.
    pub fn challenge(
        &mut self,
        now: SystemTime,
        method: &str,
        stale: bool,
        user: Option<&str>,
    ) -> Answer {
        let (status, header_name) = challenge_kind(method);
        let nonce = self.new_nonce(now);
        let algorithms: Vec<Algorithm> = match self.config.challenges {
            ChallengeMode::All => self.config.algorithms.clone(),
            ChallengeMode::One => {
                let preferred = user
                    .and_then(|user| self.users.preferred_algorithm(user))
                    .filter(|a| self.config.algorithms.contains(a));
                preferred
                    .or(self.config.algorithms.first().copied())
                    .into_iter()
                    .collect()
            }
        };
        let header_values = algorithms
            .iter()
            .map(|algorithm| {
                let mut value = format!(
                    "Digest realm=\"{}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"",
                    self.config.realm,
                    algorithm.name()
                );
                if stale {
                    value.push_str(", stale=true");
                }
                value
            })
            .collect();
        Answer {
            status,
            header_name: Some(header_name),
            header_values,
        }
    }

    /// The response for a failure of a `method` request claiming to be
    /// `user` (see [`Authenticator::challenge`]).
    pub fn answer(
        &mut self,
        now: SystemTime,
        method: &str,
        user: Option<&str>,
        failure: &AuthFailure,
    ) -> Answer {
        match failure {
            AuthFailure::Missing
            | AuthFailure::Rejected
            | AuthFailure::Slowed(_)
            | AuthFailure::Replay => self.challenge(now, method, false, user),
            AuthFailure::Stale => self.challenge(now, method, true, user),
            AuthFailure::LockedOut => Answer {
                status: 403,
                header_name: None,
                header_values: Vec::new(),
            },
            AuthFailure::Malformed(_) => Answer {
                status: 400,
                header_name: None,
                header_values: Vec::new(),
            },
        }
    }

    /// Verifies a request. `header_value` is the `Authorization` (REGISTER)
    /// or `Proxy-Authorization` value for our realm, if present.
    pub fn verify(
        &mut self,
        now: SystemTime,
        method: &str,
        request_uri: &str,
        header_value: Option<&str>,
        source_ip: IpAddr,
    ) -> Result<Authenticated, AuthFailure> {
        if self.config.mode == AuthMode::Anonymous
            || !self
                .config
                .methods
                .iter()
                .any(|m| m.eq_ignore_ascii_case(method))
        {
            return Ok(Authenticated::NotRequired);
        }
        if self
            .config
            .trusted_networks
            .iter()
            .any(|net| net.contains(source_ip))
        {
            return Ok(Authenticated::Trusted);
        }
        let source = SourceKey::of(source_ip);
        if self.lockout.is_blocked(now, source) {
            return Err(AuthFailure::LockedOut);
        }
        let Some(header_value) = header_value else {
            return Err(AuthFailure::Missing);
        };
        let credentials = Credentials::parse(header_value)?;
        let username = credentials.require("username")?.to_string();
        if credentials.require("realm")? != self.config.realm {
            return Err(AuthFailure::Missing);
        }
        let nonce = credentials.require("nonce")?;
        let uri = credentials.require("uri")?;
        let given = credentials.require("response")?;
        let algorithm = match credentials.get("algorithm") {
            None => Algorithm::Md5,
            Some(name) => Algorithm::parse(name).ok_or(AuthFailure::Rejected)?,
        };
        if !self.config.algorithms.contains(&algorithm) {
            // Not offered: answering with it is a downgrade attempt or a
            // client ignoring the challenge; either way, challenge again.
            return Err(AuthFailure::Rejected);
        }
        if !credentials
            .get("qop")
            .is_some_and(|q| q.eq_ignore_ascii_case("auth"))
        {
            // Without qop there is no nonce-count, hence no replay defence.
            return Err(AuthFailure::Rejected);
        }
        let nc_text = credentials.require("nc")?;
        let cnonce = credentials.require("cnonce")?;
        let nc = match u32::from_str_radix(nc_text, 16) {
            Ok(nc) if nc_text.len() == 8 => nc,
            _ => return Err(AuthFailure::Malformed("nc is not 8 hex digits".to_string())),
        };
        if uri != request_uri {
            return Err(AuthFailure::Rejected);
        }
        let Some(issued) = self.check_nonce(nonce) else {
            // Not a nonce of ours (forged, or issued before a restart with a
            // random secret): no digest is tested, so no guess is made and
            // none is charged. Counting it would let phones re-registering
            // after a restart block their own NAT address.
            return Err(AuthFailure::Rejected);
        };
        if self.nonce_counts.get(nonce) == Some(&BURNED) {
            // A failed guess burned this nonce: challenge again without
            // testing the digest, so one nonce buys one guess.
            return Err(AuthFailure::Replay);
        }
        // Unknown users get a dummy HA1 so the same hashing work is done.
        let (ha1, known) = match self.users.ha1(&username, algorithm) {
            Some(ha1) => (ha1.to_string(), true),
            None => (
                digest::ha1(algorithm, &username, &self.config.realm, "\u{0}unknown"),
                false,
            ),
        };
        let expected = response(algorithm, &ha1, nonce, nc_text, cnonce, method, uri);
        let matches = constant_time(&expected, &given.to_ascii_lowercase());
        if !(matches && known) {
            self.burn_nonce(nonce);
            self.record_failure(now, source);
            let delay = self.lockout.record_user_failure(now, &username);
            return Err(if delay.is_zero() {
                AuthFailure::Rejected
            } else {
                AuthFailure::Slowed(delay)
            });
        }
        if issued + self.config.nonce_lifetime < now {
            return Err(AuthFailure::Stale);
        }
        if !self.accept_nonce_count(nonce, nc) {
            return Err(AuthFailure::Replay);
        }
        Ok(Authenticated::User {
            username,
            algorithm,
        })
    }

    fn new_nonce(&mut self, now: SystemTime) -> String {
        self.sequence = self.sequence.wrapping_add(1);
        let secs = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        let payload = format!("{secs:x}-{:x}", self.sequence);
        let mac = digest::hmac_sha256(&self.config.secret, payload.as_bytes());
        format!("{payload}-{}", digest::hex(&mac[..16]))
    }

    /// The issue time of a nonce we made, or `None` for a forged one.
    fn check_nonce(&self, nonce: &str) -> Option<SystemTime> {
        let (payload, mac) = nonce.rsplit_once('-')?;
        let expected = digest::hmac_sha256(&self.config.secret, payload.as_bytes());
        if !constant_time(&digest::hex(&expected[..16]), mac) {
            return None;
        }
        let (secs, _) = payload.split_once('-')?;
        let secs = u64::from_str_radix(secs, 16).ok()?;
        UNIX_EPOCH.checked_add(Duration::from_secs(secs))
    }

    /// Records `nc` for `nonce` if it is above the last one seen.
    fn accept_nonce_count(&mut self, nonce: &str, nc: u32) -> bool {
        match self.nonce_counts.get_mut(nonce) {
            Some(last) if nc <= *last => false,
            Some(last) => {
                *last = nc;
                true
            }
            None => {
                while self.nonce_counts.len() >= self.config.max_tracked_nonces.max(1) {
                    match self.nonce_order.pop_front() {
                        Some(oldest) => {
                            self.nonce_counts.remove(&oldest);
                        }
                        None => break,
                    }
                }
                self.nonce_counts.insert(nonce.to_string(), nc);
                self.nonce_order.push_back(nonce.to_string());
                true
            }
        }
    }

    /// Marks `nonce` as used up (see [`BURNED`]).
    fn burn_nonce(&mut self, nonce: &str) {
        match self.nonce_counts.get_mut(nonce) {
            Some(last) => *last = BURNED,
            None => {
                self.accept_nonce_count(nonce, BURNED);
            }
        }
    }

    fn record_failure(&mut self, now: SystemTime, source: SourceKey) {
        if self.lockout.record_failure(now, source) {
            self.lockouts += 1;
            tracing::info!(
                cool_down_s = self.config.lockout.cool_down.as_secs(),
                "authentication failures from one source: source blocked"
            );
        }
    }
}

fn constant_time(a: &str, b: &str) -> bool {
    digest::constant_time_eq(a.as_bytes(), b.as_bytes())
}

#[cfg(test)]
mod tests;
