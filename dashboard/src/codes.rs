//! Sign-in by emailed one-time code.
//!
//! A code is 6 digits from the operating system's secure source. Only a keyed hash of it is
//! kept (HMAC-SHA-256 under a key the dashboard holds, bound to the address), so a copy of the
//! store does not give codes away. A code is valid for 10 minutes, once; a new code replaces the
//! previous one; 5 wrong tries end it. Codes for one address: one a minute at most, 5 an hour;
//! code requests from one client address: 20 an hour.
//!
//! The answer to a code request must not tell whether the address has an account, so the caller
//! issues a code for every well-formed address (the limits then treat known and unknown
//! addresses alike) and mails it only to known ones, without waiting for the mail.
//!
//! Codes and counts live in the [`Store`] every replica shares; the comparison of the entered
//! code's hash with the kept one is constant-time, and taking a right code is one conditional
//! delete, so of two replicas given the same code at once only one signs in.

use std::net::IpAddr;

use hmac::{Hmac, Mac};
use jiff::{SignedDuration, Timestamp};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::store::{Store, StoreError};

pub const VALID_FOR: SignedDuration = SignedDuration::from_mins(10);
pub const MAX_TRIES: u32 = 5;
pub const RESEND_AFTER: SignedDuration = SignedDuration::from_mins(1);
pub const CODES_PER_ADDRESS_PER_HOUR: usize = 5;
pub const REQUESTS_PER_CLIENT_PER_HOUR: usize = 20;
const HOUR: SignedDuration = SignedDuration::from_hours(1);

/// An email address as the dashboard keys it: trimmed and lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address(String);

impl Address {
    /// The address, or what is wrong with it in words for the form.
    pub fn parse(input: &str) -> Result<Address, &'static str> {
        let a = input.trim().to_ascii_lowercase();
        if a.is_empty() {
            return Err("Enter your email address.");
        }
        if a.len() > 254 {
            return Err("That email address is too long.");
        }
        let Some((local, domain)) = a.split_once('@') else {
            return Err("An email address has an @, as in name@example.com.");
        };
        let well_formed = !local.is_empty()
            && local.len() <= 64
            && !domain.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..")
            && a.chars().all(|c| c.is_ascii_graphic() || !c.is_ascii())
            // The code is mailed in the background: an address the mailer refuses there would
            // leave the form saying "sent" to nobody.
            && a.parse::<lettre::Address>().is_ok();
        if !well_formed {
            return Err("That does not look like an email address (name@example.com).");
        }
        Ok(Address(a))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, PartialEq)]
pub enum Refused {
    /// A code was sent to this address less than a minute ago.
    TooSoon { retry_after: SignedDuration },
    /// Too many codes for this address, or requests from this client, in the last hour.
    TooMany { retry_after: SignedDuration },
    /// The store did not answer (logged); nothing was issued.
    Unavailable,
}

#[derive(Debug, PartialEq)]
pub enum Rejected {
    /// No code is waiting for this address (never asked, used, replaced, or ended).
    NoCode,
    Expired,
    /// Wrong; the code stays valid for this many more tries.
    Wrong {
        tries_left: u32,
    },
    /// Wrong, and that was the last try: the code is dead.
    Exhausted,
    /// The store did not answer (logged); the code was not checked.
    Unavailable,
}

/// Issues and checks codes against the shared store.
#[derive(Clone)]
pub struct Codes {
    key: [u8; 32],
    store: Store,
}

fn ms(t: Timestamp) -> i64 {
    t.as_millisecond()
}

/// A store failure: logged (its words hold no code), answered as "not now".
fn refused(e: StoreError) -> Refused {
    tracing::warn!(error = %e, "the dashboard store");
    Refused::Unavailable
}

fn rejected(e: StoreError) -> Rejected {
    tracing::warn!(error = %e, "the dashboard store");
    Rejected::Unavailable
}

impl Codes {
    /// `key`: the HMAC key (every replica must hold the same one).
    pub fn new(key: [u8; 32], store: Store) -> Codes {
        Codes { key, store }
    }

    fn mac(&self, address: &Address, code: &str) -> String {
        let mut m = <Hmac<Sha256>>::new_from_slice(&self.key).expect("HMAC takes any key length");
        m.update(address.as_str().as_bytes());
        m.update(&[0]);
        m.update(code.as_bytes());
        crate::random::hex(&m.finalize().into_bytes())
    }

    /// A new code for `address`, asked from `client`: the only valid one from now on.
    pub async fn issue(
        &self,
        address: &Address,
        client: IpAddr,
        now: Timestamp,
    ) -> Result<String, Refused> {
        let hour = HOUR.as_millis() as i64;
        let s = &self.store;
        let client = client.to_string();
        s.take("client", &client, REQUESTS_PER_CLIENT_PER_HOUR, hour, ms(now))
            .await
            .map_err(refused)?
            .map_err(|w| Refused::TooMany { retry_after: SignedDuration::from_millis(w) })?;
        let pending = s.code(address.as_str()).await.map_err(refused)?;
        if let Some(p) = pending {
            let since = SignedDuration::from_millis(ms(now) - p.issued_ms);
            if since < RESEND_AFTER && since >= SignedDuration::ZERO {
                return Err(Refused::TooSoon { retry_after: RESEND_AFTER - since });
            }
        }
        s.take("address", address.as_str(), CODES_PER_ADDRESS_PER_HOUR, hour, ms(now))
            .await
            .map_err(refused)?
            .map_err(|w| Refused::TooMany { retry_after: SignedDuration::from_millis(w) })?;
        let code = new_code();
        s.put_code(address.as_str(), &self.mac(address, &code), ms(now)).await.map_err(refused)?;
        Ok(code)
    }

    /// Checks an entered code; a right one is used up.
    pub async fn verify(
        &self,
        address: &Address,
        entered: &str,
        now: Timestamp,
    ) -> Result<(), Rejected> {
        let entered: String = entered.chars().filter(|c| !c.is_whitespace()).collect();
        let mac = self.mac(address, &entered);
        let s = &self.store;
        let Some(p) = s.code(address.as_str()).await.map_err(rejected)? else {
            return Err(Rejected::NoCode);
        };
        if ms(now) - p.issued_ms >= VALID_FOR.as_millis() as i64 {
            s.take_code(address.as_str(), &p.mac).await.map_err(rejected)?;
            return Err(Rejected::Expired);
        }
        if bool::from(p.mac.as_bytes().ct_eq(mac.as_bytes())) {
            // Another replica may have taken it a moment ago: then it is used up.
            return match s.take_code(address.as_str(), &p.mac).await.map_err(rejected)? {
                true => Ok(()),
                false => Err(Rejected::NoCode),
            };
        }
        let Some(tries) = s.wrong_try(address.as_str(), &p.mac).await.map_err(rejected)? else {
            return Err(Rejected::NoCode);
        };
        if tries >= MAX_TRIES as i64 {
            s.take_code(address.as_str(), &p.mac).await.map_err(rejected)?;
            return Err(Rejected::Exhausted);
        }
        Err(Rejected::Wrong { tries_left: MAX_TRIES - tries as u32 })
    }
}

/// Six uniformly random digits (rejection sampling: no digit is likelier than another).
fn new_code() -> String {
    const LIMIT: u32 = u32::MAX - u32::MAX % 1_000_000;
    loop {
        let b = crate::random::bytes();
        let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if n < LIMIT {
            return format!("{:06}", n % 1_000_000);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Addresses with every character RFC 5322 allows unquoted in a local part, and some it
        /// does not; and any text around an `@`.
        fn typed_addresses() -> impl Strategy<Value = String> {
            let local = "[ a-zA-Z0-9._%+,;:<>()\\[\\]\"'!#$&*/=?^`{|}~\\\\-]{0,12}";
            let domain = "[a-z0-9.\\-\\[\\]]{0,12}";
            prop_oneof![
                (local, domain).prop_map(|(l, d)| format!("{l}@{d}")),
                "\\PC{0,20}@\\PC{0,8}",
            ]
        }

        proptest! {
            /// Every address the sign-in form accepts is one the mailer can send to (the code
            /// is mailed in the background: a refusal there would reach nobody), and none
            /// carries a control character into a mail header.
            #[test]
            fn accepted_addresses_can_be_mailed(
                input in typed_addresses(),
            ) {
                if let Ok(a) = Address::parse(&input) {
                    prop_assert!(!a.as_str().chars().any(char::is_control), "{:?}", a);
                    let mailed = a.as_str().parse::<lettre::Address>();
                    prop_assert!(mailed.is_ok(), "{:?} accepted, but the mailer refuses it", a);
                }
            }
        }
    }

    fn t(mins: i64) -> Timestamp {
        "2026-01-01T00:00:00Z".parse::<Timestamp>().unwrap() + SignedDuration::from_mins(mins)
    }

    fn addr(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn addresses_are_normalized_and_bad_ones_explained() {
        assert_eq!(addr("  Ada@Example.COM ").as_str(), "ada@example.com");
        for bad in
            ["", "ada", "ada@", "@example.com", "ada@example", "a b@example.com", "a@b@c.com"]
        {
            assert!(Address::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Address::parse("ada").unwrap_err(),
            "An email address has an @, as in name@example.com."
        );
    }

    async fn codes(key: u8) -> Codes {
        Codes::new([key; 32], Store::open("sqlite::memory:").await.unwrap())
    }

    #[tokio::test]
    async fn a_code_is_six_digits_used_once() {
        let codes = codes(7).await;
        let a = addr("ada@example.com");
        let code = codes.issue(&a, CLIENT, t(0)).await.unwrap();
        assert!(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()), "{code}");
        assert_eq!(
            codes.verify(&addr("bob@example.com"), &code, t(1)).await,
            Err(Rejected::NoCode)
        );
        assert_eq!(
            codes.verify(&a, &format!(" {} {}", &code[..3], &code[3..]), t(1)).await,
            Ok(())
        );
        assert_eq!(codes.verify(&a, &code, t(1)).await, Err(Rejected::NoCode), "used up");
    }

    #[tokio::test]
    async fn a_code_expires_after_ten_minutes() {
        let codes = codes(7).await;
        let a = addr("ada@example.com");
        let code = codes.issue(&a, CLIENT, t(0)).await.unwrap();
        let late = t(0) + VALID_FOR;
        assert_eq!(codes.verify(&a, &code, late).await, Err(Rejected::Expired));
        assert_eq!(codes.verify(&a, &code, t(1)).await, Err(Rejected::NoCode), "and it is gone");
    }

    #[tokio::test]
    async fn only_the_latest_code_is_valid() {
        let codes = codes(7).await;
        let a = addr("ada@example.com");
        let first = codes.issue(&a, CLIENT, t(0)).await.unwrap();
        let second = codes.issue(&a, CLIENT, t(2)).await.unwrap();
        if first != second {
            assert_eq!(
                codes.verify(&a, &first, t(3)).await,
                Err(Rejected::Wrong { tries_left: 4 })
            );
        }
        assert_eq!(codes.verify(&a, &second, t(3)).await, Ok(()));
    }

    #[tokio::test]
    async fn five_wrong_tries_end_a_code() {
        let codes = codes(7).await;
        let a = addr("ada@example.com");
        let code = codes.issue(&a, CLIENT, t(0)).await.unwrap();
        let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
        for left in (1..MAX_TRIES).rev() {
            assert_eq!(
                codes.verify(&a, &wrong, t(1)).await,
                Err(Rejected::Wrong { tries_left: left })
            );
        }
        assert_eq!(codes.verify(&a, &wrong, t(1)).await, Err(Rejected::Exhausted));
        assert_eq!(
            codes.verify(&a, &code, t(1)).await,
            Err(Rejected::NoCode),
            "the right one is dead too"
        );
    }

    #[tokio::test]
    async fn resends_wait_a_minute_and_an_address_gets_five_an_hour() {
        let codes = codes(7).await;
        let a = addr("ada@example.com");
        codes.issue(&a, CLIENT, t(0)).await.unwrap();
        let soon = t(0) + SignedDuration::from_secs(20);
        assert_eq!(
            codes.issue(&a, CLIENT, soon).await,
            Err(Refused::TooSoon { retry_after: SignedDuration::from_secs(40) })
        );
        for m in 1..CODES_PER_ADDRESS_PER_HOUR as i64 {
            codes.issue(&a, CLIENT, t(m * 2)).await.unwrap();
        }
        assert_eq!(
            codes.issue(&a, CLIENT, t(30)).await,
            Err(Refused::TooMany { retry_after: SignedDuration::from_mins(30) })
        );
        assert!(codes.issue(&a, CLIENT, t(60)).await.is_ok(), "the first has left the hour");
    }

    #[tokio::test]
    async fn one_client_gets_twenty_requests_an_hour_whatever_the_addresses() {
        let codes = codes(7).await;
        let other: IpAddr = "192.0.2.1".parse().unwrap();
        for i in 0..REQUESTS_PER_CLIENT_PER_HOUR {
            codes.issue(&addr(&format!("u{i}@example.com")), CLIENT, t(1)).await.unwrap();
        }
        assert!(matches!(
            codes.issue(&addr("late@example.com"), CLIENT, t(2)).await,
            Err(Refused::TooMany { .. })
        ));
        assert!(codes.issue(&addr("late@example.com"), other, t(2)).await.is_ok());
    }

    #[tokio::test]
    async fn the_store_keeps_a_keyed_hash_not_the_code() {
        let codes = codes(7).await;
        let a = addr("ada@example.com");
        let code = codes.issue(&a, CLIENT, t(0)).await.unwrap();
        let kept = codes.store.dump().await.unwrap();
        assert!(kept.contains(&codes.mac(&a, &code)), "{kept}");
        assert!(!kept.contains(&code), "{kept}");
        // Another key (another deployment) does not accept it.
        let other = Codes::new([8; 32], codes.store.clone());
        assert_eq!(other.verify(&a, &code, t(1)).await, Err(Rejected::Wrong { tries_left: 4 }));
    }

    #[test]
    fn codes_are_spread_over_all_digits() {
        let mut seen = [0u32; 10];
        for _ in 0..2000 {
            for d in new_code().bytes() {
                seen[(d - b'0') as usize] += 1;
            }
        }
        // 12000 digits, 1200 expected each; a broken generator (say, always < 500000) fails.
        assert!(seen.iter().all(|&n| (1000..1400).contains(&n)), "{seen:?}");
    }
}
