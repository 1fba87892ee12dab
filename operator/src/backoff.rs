//! Retry delays for failed reconciles: capped exponential backoff with jitter, per object, so a
//! persistent failure does not become a retry storm and many failing objects do not retry in
//! lockstep. A success forgets the object's failures.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The first retry's delay.
pub const BASE: Duration = Duration::from_secs(1);
/// No retry waits longer than this.
pub const CAP: Duration = Duration::from_secs(300);

#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// Records one more failure of `key` and returns how long to wait before the next try.
    pub fn failed(&self, key: &str) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        delay(*n, jitter())
    }

    /// `key` reconciled: its next failure starts from the base delay again.
    pub fn succeeded(&self, key: &str) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if !f.is_empty() {
            f.remove(key);
        }
    }
}

/// The delay after the `n`th failure in a row: BASE × 2^(n-1), capped, scaled by `jitter`
/// (0.8 to 1.2).
pub fn delay(n: u32, jitter: f64) -> Duration {
    let exp =
        BASE.saturating_mul(1u32.checked_shl(n.saturating_sub(1).min(20)).unwrap_or(u32::MAX));
    exp.min(CAP).mul_f64(jitter.clamp(0.8, 1.2))
}

fn jitter() -> f64 {
    let mut b = [0u8; 2];
    // No randomness: no jitter, which is still a correct (if synchronised) backoff.
    if getrandom::fill(&mut b).is_err() {
        return 1.0;
    }
    0.8 + 0.4 * (u16::from_le_bytes(b) as f64 / u16::MAX as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets_on_success() {
        assert_eq!(delay(1, 1.0), Duration::from_secs(1));
        assert_eq!(delay(2, 1.0), Duration::from_secs(2));
        assert_eq!(delay(5, 1.0), Duration::from_secs(16));
        assert_eq!(delay(9, 1.0), Duration::from_secs(256));
        assert_eq!(delay(10, 1.0), CAP, "512 s is past the cap");
        assert_eq!(delay(u32::MAX, 1.0), CAP);
        assert_eq!(delay(3, 1.2), Duration::from_millis(4800));
        assert_eq!(delay(3, 9.0), Duration::from_millis(4800), "jitter is bounded");
        let b = Backoff::default();
        let first = b.failed("ns/a");
        let second = b.failed("ns/a");
        assert!(
            first <= Duration::from_millis(1200) && second >= Duration::from_millis(1600),
            "{first:?} {second:?}"
        );
        assert!(b.failed("ns/other") <= Duration::from_millis(1200), "per object");
        b.succeeded("ns/a");
        assert!(b.failed("ns/a") <= Duration::from_millis(1200));
    }
}
