//! Sessions: one cookie holding a random token; only the token's hash is kept. A session ends at
//! sign-out or after 30 days without a request. Signing in always makes a new session (a token
//! planted before sign-in is worth nothing after it).
//!
//! CSRF: every state-changing request carries a token derived from the session (HMAC of its
//! hash), in a form field or header; a cross-site page can send the cookie but cannot read
//! the token. SameSite=Lax on the cookie is the second line.

use hmac::{Hmac, Mac};
use jiff::{SignedDuration, Timestamp};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::store::{Store, StoreError};

pub const IDLE: SignedDuration = SignedDuration::from_hours(30 * 24);
pub const COOKIE: &str = "alcove_session";
/// A session's last use is written at most this often (idle expiry to the minute, and not one
/// write per page view).
const TOUCH_EVERY: SignedDuration = SignedDuration::from_mins(1);

#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub email: String,
    pub started: Timestamp,
    pub last_seen: Timestamp,
}

#[derive(Clone)]
pub struct Sessions {
    key: [u8; 32],
    store: Store,
}

/// What the store keeps of a token: its SHA-256, as hex.
fn hash(token: &str) -> String {
    crate::random::hex(&Sha256::digest(token.as_bytes()))
}

fn at(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

impl Sessions {
    /// `key`: the CSRF key (every replica must hold the same one).
    pub fn new(key: [u8; 32], store: Store) -> Sessions {
        Sessions { key, store }
    }

    /// A new session for `email`; the token goes into the cookie and nowhere else.
    pub async fn start(&self, email: &str, now: Timestamp) -> Result<String, StoreError> {
        let token = crate::random::hex(&crate::random::bytes());
        self.store.put_session(&hash(&token), email, now.as_millisecond()).await?;
        Ok(token)
    }

    /// The session a token names, if it is live; a request keeps it alive.
    pub async fn resume(&self, token: &str, now: Timestamp) -> Result<Option<Session>, StoreError> {
        let h = hash(token);
        let Some(row) = self.store.session(&h).await? else { return Ok(None) };
        let mut s = Session {
            email: row.email,
            started: at(row.started_ms),
            last_seen: at(row.last_seen_ms),
        };
        if now.duration_since(s.last_seen) >= IDLE {
            self.store.end_session(&h).await?;
            return Ok(None);
        }
        if now.duration_since(s.last_seen) >= TOUCH_EVERY {
            self.store.touch_session(&h, now.as_millisecond()).await?;
            s.last_seen = now;
        }
        Ok(Some(s))
    }

    /// Sign-out: the token is worth nothing from now on.
    pub async fn end(&self, token: &str) -> Result<(), StoreError> {
        self.store.end_session(&hash(token)).await
    }

    /// The CSRF token of a session, for its forms.
    pub fn csrf(&self, token: &str) -> String {
        let mut m = <Hmac<Sha256>>::new_from_slice(&self.key).expect("HMAC takes any key length");
        m.update(b"csrf\0");
        m.update(hash(token).as_bytes());
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

    async fn sessions(key: u8) -> Sessions {
        Sessions::new([key; 32], Store::open("sqlite::memory:").await.unwrap())
    }

    #[tokio::test]
    async fn a_session_lives_while_used_and_ends_after_thirty_idle_days() {
        let s = sessions(1).await;
        let token = s.start("ada@example.com", t(0)).await.unwrap();
        assert_eq!(s.resume(&token, t(29)).await.unwrap().unwrap().email, "ada@example.com");
        // Used on day 29: alive until day 59.
        assert!(s.resume(&token, t(58)).await.unwrap().is_some());
        assert!(
            s.resume(&token, t(58) + IDLE).await.unwrap().is_none(),
            "30 days without a request"
        );
        assert!(s.resume(&token, t(58)).await.unwrap().is_none(), "and it does not come back");
    }

    #[tokio::test]
    async fn sign_out_ends_the_session_and_sign_in_makes_a_new_one() {
        let s = sessions(1).await;
        let first = s.start("ada@example.com", t(0)).await.unwrap();
        let second = s.start("ada@example.com", t(0)).await.unwrap();
        assert_ne!(first, second);
        assert_eq!(first.len(), 64);
        s.end(&first).await.unwrap();
        assert!(s.resume(&first, t(0)).await.unwrap().is_none());
        assert!(s.resume(&second, t(0)).await.unwrap().is_some(), "other sessions stay");
        assert!(s.resume("not-a-token", t(0)).await.unwrap().is_none());
        let kept = s.store.dump().await.unwrap();
        assert!(!kept.contains(&second), "only the token's hash is kept: {kept}");
    }

    #[tokio::test]
    async fn csrf_tokens_belong_to_their_session() {
        let s = sessions(1).await;
        let a = s.start("ada@example.com", t(0)).await.unwrap();
        let b = s.start("bob@example.com", t(0)).await.unwrap();
        let csrf = s.csrf(&a);
        assert!(s.csrf_ok(&a, &csrf));
        assert!(!s.csrf_ok(&b, &csrf), "another session's token is refused");
        assert!(!s.csrf_ok(&a, ""), "a missing token is refused");
        assert!(!s.csrf_ok(&a, &csrf[..63]));
        assert_ne!(sessions(2).await.csrf(&a), csrf, "keyed: not computable from the cookie");
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
