//! Requests and tokens per minute per key, and failed sign-ins per client address.
//!
//! Each limit is a token bucket that holds a minute's allowance and refills continuously, so a
//! client may burst up to its limit and then gets its allowance back evenly. A request needs one
//! request and a positive token balance; its tokens are taken when the response says how many it
//! used (the balance may go below zero, and the next requests wait until it is positive again).
//!
//! Several replicas: each replica enforces `limit / replicas` (rounded up) on its own, so
//! together they never let through more than the limit (plus rounding) whatever the load
//! balancer does. A client spread unevenly may meet a 429 before the full limit; a shared store
//! would fix that at the cost of a round trip per request.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use alcove_crds::instance::RateLimits;

#[derive(Debug, Clone)]
struct Bucket {
    capacity: f64,
    level: f64,
    at: Instant,
}

impl Bucket {
    fn new(capacity: f64, now: Instant) -> Bucket {
        Bucket { capacity, level: capacity, at: now }
    }

    /// Refills to `now`; a changed limit keeps what was used.
    fn refill(&mut self, capacity: f64, now: Instant) {
        if capacity != self.capacity {
            self.level = (self.level + capacity - self.capacity).min(capacity);
            self.capacity = capacity;
        }
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + elapsed * self.capacity / 60.0).min(self.capacity);
        self.at = now;
    }

    /// Time until the level reaches `needed`.
    fn wait_for(&self, needed: f64) -> Duration {
        if self.level >= needed || self.capacity <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((needed - self.level) * 60.0 / self.capacity)
    }

    /// Time until the bucket is full again: what `x-ratelimit-reset-*` reports.
    fn until_full(&self) -> Duration {
        self.wait_for(self.capacity)
    }
}

/// What the `x-ratelimit-*` headers say after a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Quota {
    pub limit_requests: i64,
    pub remaining_requests: i64,
    pub reset_requests: Duration,
    pub limit_tokens: i64,
    pub remaining_tokens: i64,
    pub reset_tokens: Duration,
}

impl Quota {
    pub fn headers(&self) -> [(&'static str, String); 6] {
        [
            ("x-ratelimit-limit-requests", self.limit_requests.to_string()),
            ("x-ratelimit-remaining-requests", self.remaining_requests.to_string()),
            ("x-ratelimit-reset-requests", reset_text(self.reset_requests)),
            ("x-ratelimit-limit-tokens", self.limit_tokens.to_string()),
            ("x-ratelimit-remaining-tokens", self.remaining_tokens.to_string()),
            ("x-ratelimit-reset-tokens", reset_text(self.reset_tokens)),
        ]
    }
}

/// OpenAI's duration format: `1s`, `6m0s`, `20ms`.
pub fn reset_text(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = d.as_secs_f64().ceil() as u64;
    if s < 60 { format!("{s}s") } else { format!("{}m{}s", s / 60, s % 60) }
}

/// A refusal: which limit, and when to come back.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub what: &'static str,
    pub limit: i64,
    pub retry_after: Duration,
    pub quota: Quota,
}

struct KeyBuckets {
    requests: Bucket,
    tokens: Bucket,
}

/// Per-key buckets of this replica.
pub struct Limiter {
    replicas: u32,
    keys: HashMap<String, KeyBuckets>,
}

impl Limiter {
    pub fn new(replicas: u32) -> Limiter {
        Limiter { replicas: replicas.max(1), keys: HashMap::new() }
    }

    fn share(&self, limit: i64) -> f64 {
        (limit.max(0) as f64 / self.replicas as f64).ceil()
    }

    fn buckets(&mut self, key: &str, limits: RateLimits, now: Instant) -> &mut KeyBuckets {
        let (rc, tc) =
            (self.share(limits.requests_per_minute), self.share(limits.tokens_per_minute));
        let b = self.keys.entry(key.to_string()).or_insert_with(|| KeyBuckets {
            requests: Bucket::new(rc, now),
            tokens: Bucket::new(tc, now),
        });
        b.requests.refill(rc, now);
        b.tokens.refill(tc, now);
        b
    }

    fn quota(b: &KeyBuckets) -> Quota {
        Quota {
            limit_requests: b.requests.capacity as i64,
            remaining_requests: b.requests.level.floor().max(0.0) as i64,
            reset_requests: b.requests.until_full(),
            limit_tokens: b.tokens.capacity as i64,
            remaining_tokens: b.tokens.level.floor().max(0.0) as i64,
            reset_tokens: b.tokens.until_full(),
        }
    }

    /// Admits one request of `key`, or says which limit refuses it.
    pub fn admit(&mut self, key: &str, limits: RateLimits, now: Instant) -> Result<Quota, Refusal> {
        let b = self.buckets(key, limits, now);
        if b.requests.level < 1.0 {
            let retry_after = b.requests.wait_for(1.0);
            return Err(Refusal {
                what: "requests",
                limit: b.requests.capacity as i64,
                retry_after,
                quota: Self::quota(b),
            });
        }
        if b.tokens.level <= 0.0 {
            let retry_after = b.tokens.wait_for(1.0);
            return Err(Refusal {
                what: "tokens",
                limit: b.tokens.capacity as i64,
                retry_after,
                quota: Self::quota(b),
            });
        }
        b.requests.level -= 1.0;
        Ok(Self::quota(b))
    }

    /// Takes the tokens a request used.
    pub fn spend(&mut self, key: &str, limits: RateLimits, tokens: i64, now: Instant) {
        let b = self.buckets(key, limits, now);
        b.tokens.level -= tokens.max(0) as f64;
    }

    /// Forgets keys whose buckets are full again (they would start full anyway).
    pub fn prune(&mut self, now: Instant) {
        self.keys.retain(|_, b| {
            b.requests.refill(b.requests.capacity, now);
            b.tokens.refill(b.tokens.capacity, now);
            b.requests.level < b.requests.capacity || b.tokens.level < b.tokens.capacity
        });
    }
}

/// Failed authentications per client address: `allowed` per minute, then 429 until the bucket
/// refills, so a key cannot be guessed at speed.
pub struct FailureLimiter {
    allowed: f64,
    clients: HashMap<std::net::IpAddr, Bucket>,
}

impl FailureLimiter {
    pub fn new(allowed_per_minute: u32) -> FailureLimiter {
        FailureLimiter { allowed: allowed_per_minute.max(1) as f64, clients: HashMap::new() }
    }

    /// Some(wait) when the client has used up its failures.
    pub fn blocked(&mut self, client: std::net::IpAddr, now: Instant) -> Option<Duration> {
        let b = self.clients.get_mut(&client)?;
        b.refill(self.allowed, now);
        (b.level < 1.0).then(|| b.wait_for(1.0))
    }

    pub fn failed(&mut self, client: std::net::IpAddr, now: Instant) {
        let allowed = self.allowed;
        let b = self.clients.entry(client).or_insert_with(|| Bucket::new(allowed, now));
        b.refill(allowed, now);
        b.level -= 1.0;
    }

    pub fn prune(&mut self, now: Instant) {
        let allowed = self.allowed;
        self.clients.retain(|_, b| {
            b.refill(allowed, now);
            b.level < allowed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: RateLimits = RateLimits { requests_per_minute: 3, tokens_per_minute: 100 };

    #[test]
    fn the_requests_limit_refuses_the_fourth_and_refills_evenly() {
        let t0 = Instant::now();
        let mut l = Limiter::new(1);
        for left in [2, 1, 0] {
            assert_eq!(l.admit("k", L, t0).unwrap().remaining_requests, left);
        }
        let r = l.admit("k", L, t0).unwrap_err();
        assert_eq!((r.what, r.limit), ("requests", 3));
        assert_eq!(r.retry_after, Duration::from_secs(20), "one request per 20 s");
        assert_eq!(r.quota.reset_requests, Duration::from_secs(60));
        assert!(l.admit("other", L, t0).is_ok(), "keys are separate");
        assert!(l.admit("k", L, t0 + Duration::from_secs(19)).is_err());
        assert!(l.admit("k", L, t0 + Duration::from_secs(20)).is_ok());
    }

    #[test]
    fn tokens_are_spent_after_the_response_and_block_until_positive() {
        let t0 = Instant::now();
        let mut l = Limiter::new(1);
        let big = RateLimits { requests_per_minute: 100, ..L };
        l.admit("k", big, t0).unwrap();
        l.spend("k", big, 130, t0);
        let r = l.admit("k", big, t0).unwrap_err();
        assert_eq!(r.what, "tokens");
        assert_eq!(r.quota.remaining_tokens, 0);
        // 31 tokens short at 100/min: 18.6 s.
        assert_eq!(r.retry_after, Duration::from_secs_f64(31.0 * 0.6));
        assert!(l.admit("k", big, t0 + Duration::from_secs(19)).is_ok());
    }

    #[test]
    fn two_replicas_each_take_half_rounded_up() {
        let t0 = Instant::now();
        let (mut a, mut b) = (Limiter::new(2), Limiter::new(2));
        let four = RateLimits { requests_per_minute: 4, tokens_per_minute: 100 };
        let admitted = (0..10).filter(|_| a.admit("k", four, t0).is_ok()).count()
            + (0..10).filter(|_| b.admit("k", four, t0).is_ok()).count();
        assert_eq!(admitted, 4);
        assert_eq!(a.admit("k", four, t0).unwrap_err().quota.limit_requests, 2);
    }

    #[test]
    fn a_lowered_limit_keeps_what_was_used() {
        let t0 = Instant::now();
        let mut l = Limiter::new(1);
        let ten = RateLimits { requests_per_minute: 10, tokens_per_minute: 100 };
        for _ in 0..5 {
            l.admit("k", ten, t0).unwrap();
        }
        assert_eq!(l.admit("k", L, t0).unwrap_err().what, "requests", "5 used of a new 3");
    }

    #[test]
    fn reset_text_is_openais_format() {
        assert_eq!(reset_text(Duration::from_millis(20)), "20ms");
        assert_eq!(reset_text(Duration::from_millis(1200)), "2s");
        assert_eq!(reset_text(Duration::from_secs(360)), "6m0s");
    }

    #[test]
    fn failed_authentications_block_an_address_then_recover() {
        let t0 = Instant::now();
        let mut f = FailureLimiter::new(2);
        let ip: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        assert!(f.blocked(ip, t0).is_none());
        f.failed(ip, t0);
        assert!(f.blocked(ip, t0).is_none());
        f.failed(ip, t0);
        assert_eq!(f.blocked(ip, t0), Some(Duration::from_secs(30)));
        assert!(f.blocked("10.0.0.2".parse().unwrap(), t0).is_none());
        assert!(f.blocked(ip, t0 + Duration::from_secs(30)).is_none());
        f.prune(t0 + Duration::from_secs(60));
        assert!(f.clients.is_empty());
    }
}
