//! Sessions: one cookie holding a random token; only the token's hash is kept. A session ends at
//! sign-out or after 30 days without a request. Signing in always makes a new session (a token
//! planted before sign-in is worth nothing after it).
//!
//! CSRF: every state-changing request carries a token derived from the session (HMAC of its
//! hash), in a form field or header; a cross-site page can send the cookie but cannot read
//! the token. SameSite=Lax on the cookie is the second line.

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use jiff::{SignedDuration, Timestamp};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const IDLE: SignedDuration = SignedDuration::from_hours(30 * 24);
pub const COOKIE: &str = "alcove_session";

#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub email: String,
    pub started: Timestamp,
    pub last_seen: Timestamp,
}

pub struct Sessions {
    key: [u8; 32],
    by_hash: HashMap<[u8; 32], Session>,
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Sessions {
    /// `key`: the CSRF key (every replica must hold the same one).
    pub fn new(key: [u8; 32]) -> Sessions {
        Sessions { key, by_hash: HashMap::new() }
    }

    /// A new session for `email`; the token goes into the cookie and nowhere else.
    pub fn start(&mut self, email: &str, now: Timestamp) -> String {
        let token = crate::random::hex(&crate::random::bytes());
        self.by_hash.retain(|_, s| now.duration_since(s.last_seen) < IDLE);
        self.by_hash.insert(
            hash(&token),
            Session { email: email.to_string(), started: now, last_seen: now },
        );
        token
    }

    /// The session a token names, if it is live; a request keeps it alive.
    pub fn resume(&mut self, token: &str, now: Timestamp) -> Option<Session> {
        let h = hash(token);
        let live = self.by_hash.get(&h).is_some_and(|s| now.duration_since(s.last_seen) < IDLE);
        if !live {
            self.by_hash.remove(&h);
            return None;
        }
        let s = self.by_hash.get_mut(&h)?;
        s.last_seen = now;
        Some(s.clone())
    }

    /// Sign-out: the token is worth nothing from now on.
    pub fn end(&mut self, token: &str) {
        self.by_hash.remove(&hash(token));
    }

    /// The CSRF token of a session, for its forms.
    pub fn csrf(&self, token: &str) -> String {
        let mut m = <Hmac<Sha256>>::new_from_slice(&self.key).expect("HMAC takes any key length");
        m.update(b"csrf\0");
        m.update(&hash(token));
        crate::random::hex(&m.finalize().into_bytes())
    }

    /// Whether a state-changing request's CSRF token belongs to its session.
    pub fn csrf_ok(&self, token: &str, presented: &str) -> bool {
        self.csrf(token).as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

/// The `Set-Cookie` value for a session token: the browser keeps it as long as the session can
/// live, and every response to a signed-in request sends it again, so it slides with the
/// session's idle expiry.
pub fn cookie(token: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{}",
        IDLE.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that removes the cookie (sign-out).
pub fn cleared(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The session token in a `Cookie` header, if there is one.
pub fn token_in(cookie_header: &str) -> Option<&str> {
    cookie_header
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(days: i64) -> Timestamp {
        "2026-01-01T00:00:00Z".parse::<Timestamp>().unwrap() + SignedDuration::from_hours(days * 24)
    }

    #[test]
    fn a_session_lives_while_used_and_ends_after_thirty_idle_days() {
        let mut s = Sessions::new([1; 32]);
        let token = s.start("ada@example.com", t(0));
        assert_eq!(s.resume(&token, t(29)).unwrap().email, "ada@example.com");
        // Used on day 29: alive until day 59.
        assert!(s.resume(&token, t(58)).is_some());
        assert!(s.resume(&token, t(58) + IDLE).is_none(), "30 days without a request");
        assert!(s.resume(&token, t(58)).is_none(), "and it does not come back");
    }

    #[test]
    fn sign_out_ends_the_session_and_sign_in_makes_a_new_one() {
        let mut s = Sessions::new([1; 32]);
        let first = s.start("ada@example.com", t(0));
        let second = s.start("ada@example.com", t(0));
        assert_ne!(first, second);
        assert_eq!(first.len(), 64);
        s.end(&first);
        assert!(s.resume(&first, t(0)).is_none());
        assert!(s.resume(&second, t(0)).is_some(), "other sessions stay");
        assert!(s.resume("not-a-token", t(0)).is_none());
    }

    #[test]
    fn csrf_tokens_belong_to_their_session() {
        let mut s = Sessions::new([1; 32]);
        let a = s.start("ada@example.com", t(0));
        let b = s.start("bob@example.com", t(0));
        let csrf = s.csrf(&a);
        assert!(s.csrf_ok(&a, &csrf));
        assert!(!s.csrf_ok(&b, &csrf), "another session's token is refused");
        assert!(!s.csrf_ok(&a, ""), "a missing token is refused");
        assert!(!s.csrf_ok(&a, &csrf[..63]));
        assert_ne!(Sessions::new([2; 32]).csrf(&a), csrf, "keyed: not computable from the cookie");
    }

    #[test]
    fn the_cookie_is_http_only_lax_and_secure_over_https() {
        let c = cookie("abc", true);
        assert_eq!(
            c,
            "alcove_session=abc; Path=/; HttpOnly; SameSite=Lax; Max-Age=2592000; Secure"
        );
        assert!(!cookie("abc", false).contains("Secure"));
        assert!(cleared(false).contains("Max-Age=0"));
        assert_eq!(token_in("theme=dark; alcove_session=abc; x=1"), Some("abc"));
        assert_eq!(token_in("alcove_session="), None);
        assert_eq!(token_in("other=1"), None);
    }
}
