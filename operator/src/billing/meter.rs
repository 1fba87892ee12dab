//! Metering arithmetic, pure: which period of a run is due for a usage record, and what it
//! costs. Periods start where the last record ended, so a restart resumes exactly there; a
//! record's identity is its instance and start, so a retried report is the same record.

use std::time::Duration;

use jiff::Timestamp;

/// Milli-GPU-hours in a GPU-millisecond sense: prices are per GPU-hour, usage is in GPU-ms.
const MS_PER_HOUR: i128 = 3_600_000;

/// A stretch of one run to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub from: Timestamp,
    pub to: Timestamp,
}

impl Period {
    pub fn millis(&self) -> i64 {
        (self.to.as_millisecond() - self.from.as_millisecond()).max(0)
    }
}

/// The next usage record of a run that started at `run_start` and is billed through `through`.
/// While the run goes on (`end` None) only whole intervals are due — several at once after an
/// outage, as one record; when the run ended at `end`, everything up to it is.
pub fn due(
    run_start: Timestamp,
    through: Option<Timestamp>,
    now: Timestamp,
    end: Option<Timestamp>,
    interval: Duration,
) -> Option<Period> {
    let from = through.map_or(run_start, |t| t.max(run_start));
    if let Some(end) = end {
        // Compared in milliseconds, the unit periods are billed and stored in: an end a fraction
        // of a millisecond past `from` (the ledger keeps instants to the millisecond) is no
        // period, or it would be reported again, empty, at every pass.
        return (end.as_millisecond() > from.as_millisecond()).then_some(Period { from, to: end });
    }
    let step = interval.as_millis().max(1) as i64;
    let whole = (now.as_millisecond() - from.as_millisecond()) / step;
    if whole < 1 {
        return None;
    }
    let to = Timestamp::from_millisecond(from.as_millisecond() + whole * step).ok()?;
    Some(Period { from, to })
}

/// When the next whole interval of a running instance completes.
pub fn next_report(
    run_start: Timestamp,
    through: Option<Timestamp>,
    interval: Duration,
) -> Timestamp {
    let from = through.map_or(run_start, |t| t.max(run_start));
    Timestamp::from_millisecond(from.as_millisecond() + interval.as_millis() as i64).unwrap_or(from)
}

/// What one record costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Charge {
    pub gpu_millis: i64,
    /// Minor units of the currency.
    pub amount: i64,
    /// The sub-unit remainder (in minor units × 3 600 000) carried into the next record, so that
    /// per-record rounding never drifts: the records of a run always sum to the exact total,
    /// rounded down once.
    pub carry: i64,
}

/// The charge for `gpus` devices over `period` at `per_gpu_hour`, with the previous record's carry.
pub fn charge(period: Period, gpus: i32, per_gpu_hour: i64, carry: i64) -> Charge {
    let gpu_millis = period.millis() * gpus.max(0) as i64;
    let total = per_gpu_hour as i128 * gpu_millis as i128 + carry as i128;
    Charge { gpu_millis, amount: (total / MS_PER_HOUR) as i64, carry: (total % MS_PER_HOUR) as i64 }
}

/// Time from now until `balance` (minor units) is used up at `per_hour` (minor units per hour
/// The charge for tokens at prices per million, with the previous record's carry (millionths of
/// a minor unit): whole minor units, and the remainder carried so successive records sum exactly.
pub fn token_charge(
    prompt: i64,
    completion: i64,
    price: crate::config::TokenPrice,
    carry: i64,
) -> (i64, i64) {
    let micro = prompt.max(0) as i128 * price.input as i128
        + completion.max(0) as i128 * price.output as i128
        + carry as i128;
    ((micro / 1_000_000) as i64, (micro % 1_000_000) as i64)
}

/// Idempotency key of a token record: the instance and the totals it bills through.
pub fn token_record_key(
    instance_uid: &str,
    prompt_through: i64,
    completion_through: i64,
) -> String {
    format!("alcove-tokens-{instance_uid}-{prompt_through}-{completion_through}")
}

/// for all running GPUs); None when nothing is running.
pub fn time_left(balance: i64, per_hour: i64) -> Option<Duration> {
    if per_hour <= 0 {
        return None;
    }
    let ms = (balance.max(0) as i128 * MS_PER_HOUR + per_hour as i128 - 1) / per_hour as i128;
    Some(Duration::from_millis(ms.min(u64::MAX as i128) as u64))
}

/// Whether a record found in Stripe starting at `stored` (as its metadata keeps it, to the
/// millisecond) is one to adopt for a period starting at `since`: compared in milliseconds, the
/// unit of [`record_key`], so a record is adopted exactly when re-creating it would reuse its key.
pub fn adoptable(stored: Timestamp, since: Timestamp) -> bool {
    stored.as_millisecond() >= since.as_millisecond()
}

/// The idempotency key of the record of `instance_uid` starting at `from`.
pub fn record_key(instance_uid: &str, from: Timestamp) -> String {
    format!("alcove-usage-{instance_uid}-{}", from.as_millisecond())
}

/// How metering stands for one instance, for its `Billing` condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Metered {
    /// Not charged, and why (reason, message).
    Off(&'static str, String),
    /// Reported through this instant (None: nothing yet); the next report is due in `next`.
    Billed { through: Option<Timestamp>, next: Option<Duration> },
    /// Reporting failed; retried.
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn token_charges_carry_their_remainder_and_sum_exactly() {
        let price = crate::config::TokenPrice { input: 50, output: 150 };
        // 3 × (7,000 prompt + 1,000 completion) = 3 × 500,000 millionths: 1 whole cent.
        let (mut total, mut carry) = (0, 0);
        for _ in 0..3 {
            let (amount, c) = token_charge(7_000, 1_000, price, carry);
            total += amount;
            carry = c;
        }
        assert_eq!((total, carry), (1, 500_000));
        assert_eq!(token_charge(1_000_000, 0, price, 0), (50, 0));
        assert_eq!(token_record_key("u", 10, 2), "alcove-tokens-u-10-2");
    }

    #[test]
    fn whole_intervals_are_due_while_running_and_the_rest_at_the_end() {
        let start = at("2026-11-22T10:00:00.250Z");
        assert_eq!(
            due(start, None, at("2026-11-22T10:00:59Z"), None, MIN),
            None,
            "less than one interval"
        );
        let p = due(start, None, at("2026-11-22T10:01:10Z"), None, MIN).unwrap();
        assert_eq!((p.from, p.to), (start, at("2026-11-22T10:01:00.250Z")));
        // After an outage, the missed intervals are one record; the partial one waits.
        let p = due(start, Some(p.to), at("2026-11-22T10:05:30Z"), None, MIN).unwrap();
        assert_eq!(
            (p.from, p.to),
            (at("2026-11-22T10:01:00.250Z"), at("2026-11-22T10:05:00.250Z"))
        );
        // The run ends: everything up to the end.
        let p = due(
            start,
            Some(p.to),
            at("2026-11-22T10:06:00Z"),
            Some(at("2026-11-22T10:05:20Z")),
            MIN,
        )
        .unwrap();
        assert_eq!(p.millis(), 19_750);
        assert_eq!(
            due(start, Some(p.to), at("2026-11-22T10:06:00Z"), Some(p.to), MIN),
            None,
            "nothing twice"
        );
        // A new run after a gap: the gap is not billed.
        let again = at("2026-11-22T11:00:00Z");
        let p = due(again, Some(p.to), at("2026-11-22T11:01:00Z"), None, MIN).unwrap();
        assert_eq!((p.from, p.to), (again, at("2026-11-22T11:01:00Z")));
        assert_eq!(next_report(again, Some(p.to), MIN), at("2026-11-22T11:02:00Z"));
    }

    #[test]
    fn charges_carry_their_remainder_so_records_sum_exactly() {
        // 250 cents per GPU-hour, 2 GPUs, 61 one-minute records: exact total 508.33 cents.
        let start = at("2026-11-22T10:00:00Z");
        let (mut carry, mut sum, mut ms) = (0, 0, 0);
        for k in 0..61 {
            let from = Timestamp::from_millisecond(start.as_millisecond() + k * 60_000).unwrap();
            let to = Timestamp::from_millisecond(from.as_millisecond() + 60_000).unwrap();
            let c = charge(Period { from, to }, 2, 250, carry);
            carry = c.carry;
            sum += c.amount;
            ms += c.gpu_millis;
        }
        assert_eq!(ms, 61 * 60_000 * 2);
        assert_eq!(sum, 508, "rounded once, not 61 times (61 × round(8.33) would be 488)");
        assert_eq!(charge(Period { from: start, to: start }, 2, 250, 0), Charge::default());
    }

    mod properties {
        use std::collections::BTreeMap;

        use jiff::SignedDuration;
        use proptest::prelude::*;

        use super::*;
        use crate::billing::ledger::{Ledger, Usage};

        /// What Stripe keeps of a record and `find_usage` reads back: its period as the metadata
        /// strings hold it.
        fn as_stored(u: &Usage) -> Usage {
            let back = |t| alcove_clock::parse(&alcove_clock::format_millis(t)).unwrap();
            Usage { from: back(u.from), to: back(u.to), ..u.clone() }
        }

        proptest! {
            /// However the gateway's token totals arrive (in whatever increments), the token
            /// records charge the exact total, rounded down once.
            #[test]
            fn token_records_sum_to_the_exact_total(
                increments in proptest::collection::vec((0i64..1_000_000, 0i64..1_000_000), 0..30),
                input in 0i64..=10_000_000,
                output in 0i64..=10_000_000,
            ) {
                let price = crate::config::TokenPrice { input, output };
                let (mut carry, mut charged, mut micro) = (0i64, 0i64, 0i128);
                for &(p, c) in &increments {
                    let (amount, left) = token_charge(p, c, price, carry);
                    prop_assert!(amount >= 0 && (0..1_000_000).contains(&left));
                    (charged, carry) = (charged + amount, left);
                    micro += p as i128 * input as i128 + c as i128 * output as i128;
                }
                prop_assert_eq!(charged as i128, micro / 1_000_000);
            }

            /// `billing::report_inner`'s loop over the pure parts (`due`, `charge`, the ledger,
            /// Stripe's idempotency keys, the adoption of records a crash left unrecorded), run
            /// over reconciles at arbitrary instants (to the nanosecond), with a crash between
            /// creating a record and recording it in the ledger wherever the input says. The
            /// records Stripe ends with cover the run to the millisecond, are charged the exact
            /// total rounded down once, and are what the ledger says was billed.
            #[test]
            fn records_sum_to_the_run_whatever_the_crash_points(
                start_ns in 1_700_000_000_000_000_000i64..1_800_000_000_000_000_000i64,
                interval_ms in 1_000u64..=120_000,
                gpus in 1i32..=8,
                per_gpu_hour in 0i64..=100_000,
                passes in proptest::collection::vec((0u64..=400_000_000_000, any::<bool>()), 1..40),
                ends_at in any::<prop::sample::Index>(),
            ) {
                let run_start = Timestamp::from_nanosecond(start_ns as i128).unwrap();
                let interval = Duration::from_millis(interval_ms);
                let mut stripe: BTreeMap<String, Usage> = BTreeMap::new();
                let mut ledger = Ledger::default();
                let mut checked = false;
                let mut now = run_start;
                let ends_at = ends_at.index(passes.len());
                let mut end = None;
                // The reconciles the input asks for, then a few more, crash-free, after the end.
                let tail = std::iter::repeat_n((1_000_000, false), 8);
                for (k, (advance_ns, crash)) in passes.iter().copied().chain(tail).enumerate() {
                    now = now.checked_add(SignedDuration::from_nanos(advance_ns as i64)).unwrap();
                    if k == ends_at {
                        end = Some(now);
                    }
                    let through = ledger.through("u");
                    let Some(period) = due(run_start, through, now, end, interval) else {
                        continue;
                    };
                    if !checked {
                        checked = true;
                        let mut found: Vec<Usage> = stripe.values().map(as_stored).collect();
                        found.retain(|u| adoptable(u.from, period.from));
                        found.sort_by_key(|u| u.from);
                        if !found.is_empty() {
                            for u in found {
                                ledger.record("u", "t/chat", &u);
                            }
                            continue;
                        }
                    }
                    let c = charge(period, gpus, per_gpu_hour, ledger.carry("u"));
                    let (from, to) = (period.from, period.to);
                    let (gpu_millis, amount, carry) = (c.gpu_millis, c.amount, c.carry);
                    let usage = Usage { from, to, gpu_millis, amount, carry };
                    // Stripe refuses a key reused with other parameters: a retried record must
                    // be the same record.
                    let kept = stripe.entry(record_key("u", from)).or_insert_with(|| usage.clone());
                    prop_assert_eq!(&*kept, &usage, "a key reused for another record");
                    if crash {
                        checked = false;
                        continue;
                    }
                    ledger.record("u", "t/chat", &usage);
                }
                let end = end.unwrap();
                let rest = due(run_start, ledger.through("u"), now, Some(end), interval);
                prop_assert!(rest.is_none(), "not all reported: {rest:?}");
                let used = (end.as_millisecond() - run_start.as_millisecond()) * gpus as i64;
                let millis: i64 = stripe.values().map(|u| u.gpu_millis).sum();
                let amount: i64 = stripe.values().map(|u| u.amount).sum();
                prop_assert_eq!(millis, used);
                prop_assert_eq!(amount as i128, per_gpu_hour as i128 * used as i128 / MS_PER_HOUR);
                prop_assert_eq!(ledger.billed, amount);
            }
        }
    }

    #[test]
    fn time_left_rounds_up() {
        assert_eq!(time_left(100, 360), Some(Duration::from_secs(1000)));
        assert_eq!(time_left(-5, 360), Some(Duration::ZERO));
        assert_eq!(time_left(100, 0), None);
    }
}
