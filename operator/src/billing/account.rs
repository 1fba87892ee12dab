//! A tenant's billing standing, pure: the balance mirrored into its status, the `Billing`
//! condition, when credit runs out and when its instances are suspended.

use std::time::Duration;

use alcove_crds::{BillingStatus, Condition, Tenant, condition};
use jiff::Timestamp;

use super::ledger::Ledger;
use super::meter;
use crate::conditions;

/// Why billing cannot run for a tenant (each a `Billing=False` reason).
#[derive(Debug, Clone, PartialEq)]
pub enum Standing {
    /// The operator has no Stripe key.
    Disabled,
    /// The Tenant has no `spec.billing`.
    NotCharged,
    /// Stripe refused or failed (its words).
    StripeError(String),
    /// The account exists; the balance decides.
    Account,
}

/// A running instance as the balance sees it.
#[derive(Debug, Clone)]
pub struct Run {
    pub uid: String,
    pub started_at: Timestamp,
    pub gpus: i32,
    /// None: no price for its product in the tenant's currency (not charged, and said so).
    pub per_gpu_hour: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub status: Option<BillingStatus>,
    pub condition: Condition,
    /// When to look again (credit running out, the grace ending).
    pub wake: Option<Duration>,
    pub low: bool,
    pub exhausted: bool,
}

pub fn grace(tenant: &Tenant) -> Duration {
    let text =
        tenant.spec.billing.as_ref().map(|b| b.suspend_grace_period.as_str()).unwrap_or("15m");
    alcove_crds::Window::parse(text)
        .map(|w| Duration::from_secs(w.as_secs()))
        .unwrap_or(Duration::from_secs(900))
}

/// `12.34 usd` (two-decimal currencies; Stripe's zero-decimal ones are rare for GPU credit).
pub fn display(amount: i64, currency: &str) -> String {
    let sign = if amount < 0 { "-" } else { "" };
    format!("{sign}{}.{:02} {currency}", amount.abs() / 100, amount.abs() % 100)
}

pub fn verdict(
    tenant: &Tenant,
    standing: &Standing,
    ledger: Option<&Ledger>,
    runs: &[Run],
    tokens_unbilled: i64,
    now: Timestamp,
) -> Verdict {
    let prev_status = tenant.status.clone().unwrap_or_default();
    let prev = prev_status.billing.clone().unwrap_or_default();
    let generation = tenant.metadata.generation;
    let c = |ok: bool, reason: &str, message: &str| {
        conditions::condition(
            &prev_status.conditions,
            condition::BILLING,
            ok,
            reason,
            message,
            generation,
            now,
        )
    };
    let plain =
        |condition| Verdict { status: None, condition, wake: None, low: false, exhausted: false };
    let spec = match (standing, tenant.spec.billing.as_ref()) {
        (Standing::Disabled, _) => {
            return plain(c(
                false,
                alcove_crds::reason::DISABLED,
                "billing is disabled: the operator has no Stripe API key; usage is metered (status.gpuSeconds of each instance) but nobody is charged",
            ));
        }
        (Standing::NotCharged, _) | (_, None) => {
            return plain(c(
                false,
                alcove_crds::reason::NOT_CHARGED,
                "spec.billing is not set: usage is metered but nobody is charged",
            ));
        }
        (Standing::StripeError(e), _) => {
            let mut v = plain(c(
                false,
                alcove_crds::reason::STRIPE_ERROR,
                &format!("the Stripe customer could not be set up: {e}; retrying"),
            ));
            v.status = prev_status.billing.clone();
            return v;
        }
        (Standing::Account, Some(spec)) => spec,
    };
    let ledger = ledger.cloned().unwrap_or_default();
    let currency = spec.currency.clone();
    // Tokens the gateway counted and billing has not yet reported count like GPU time.
    let mut unbilled = tokens_unbilled.max(0);
    let mut per_hour = 0;
    for r in runs {
        let Some(price) = r.per_gpu_hour else { continue };
        if let Some(p) =
            meter::due(r.started_at, ledger.through(&r.uid), now, Some(now), Duration::from_secs(1))
        {
            unbilled += meter::charge(p, r.gpus, price, ledger.carry(&r.uid)).amount;
        }
        per_hour += price * r.gpus as i64;
    }
    let balance = ledger.balance() - unbilled;
    let low = balance < spec.low_balance_threshold;
    let exhausted = balance <= 0;
    let exhausted_at = if exhausted {
        prev.exhausted_at.clone().and_then(|t| t.parse::<Timestamp>().ok()).unwrap_or(now)
    } else {
        now
    };
    let suspend_at = exhausted_at.checked_add(grace(tenant)).unwrap_or(exhausted_at);
    let shown = display(balance, &currency);
    let (condition, wake) = if exhausted {
        let message = if now >= suspend_at {
            format!(
                "credit exhausted at {}: instances are suspended until a top-up (balance {shown})",
                alcove_clock::format(exhausted_at)
            )
        } else {
            format!(
                "credit exhausted at {}: instances are suspended at {} unless credit is topped up (balance {shown})",
                alcove_clock::format(exhausted_at),
                alcove_clock::format(suspend_at)
            )
        };
        let wake = (now < suspend_at).then(|| suspend_at.duration_since(now).unsigned_abs());
        (c(false, alcove_crds::reason::CREDIT_EXHAUSTED, &message), wake)
    } else if low {
        (
            c(
                true,
                alcove_crds::reason::LOW_BALANCE,
                &format!(
                    "balance {shown} is below the low-balance threshold {}",
                    display(spec.low_balance_threshold, &currency)
                ),
            ),
            meter::time_left(balance, per_hour),
        )
    } else {
        let until = meter::time_left(balance - spec.low_balance_threshold, per_hour);
        (
            c(
                true,
                alcove_crds::reason::ACTIVE,
                &format!(
                    "customer {}, balance {shown}",
                    ledger.customer_id.clone().unwrap_or_default()
                ),
            ),
            until,
        )
    };
    let status = BillingStatus {
        customer_id: ledger.customer_id.clone(),
        currency: Some(currency.clone()),
        balance,
        credited: ledger.credited,
        billed: ledger.billed,
        unbilled,
        balance_display: Some(shown),
        exhausted_at: exhausted.then(|| alcove_clock::format(exhausted_at)),
        suspend_at: exhausted.then(|| alcove_clock::format(suspend_at)),
    };
    Verdict { status: Some(status), condition, wake, low, exhausted }
}

/// Why a tenant's instances must not run now (credit exhausted past the grace), if so.
pub fn suspended(tenant: &Tenant, now: Timestamp) -> Option<String> {
    let s = tenant.status.as_ref()?;
    let cond = s.conditions.iter().find(|c| {
        c.type_ == condition::BILLING && c.reason == alcove_crds::reason::CREDIT_EXHAUSTED
    })?;
    let at: Timestamp = s.billing.as_ref()?.suspend_at.as_deref()?.parse().ok()?;
    (now >= at).then(|| format!("suspended for lack of credit: {}", cond.message))
}

/// When a tenant's instances are to be suspended, if that is still ahead.
pub fn suspends_in(tenant: &Tenant, now: Timestamp) -> Option<Duration> {
    let at: Timestamp =
        tenant.status.as_ref()?.billing.as_ref()?.suspend_at.as_deref()?.parse().ok()?;
    (at > now).then(|| at.duration_since(now).unsigned_abs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tenant(billing: serde_json::Value) -> Tenant {
        serde_json::from_value(json!({
            "apiVersion": "alcove.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": "acme", "uid": "t1", "generation": 1},
            "spec": {"displayName": "Acme", "tier": "basic", "region": "tw-taipei-1", "billing": billing},
        }))
        .unwrap()
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn balance_counts_unreported_usage_and_credit_runs_out_into_a_grace() {
        let mut t = tenant(
            json!({"currency": "usd", "lowBalanceThreshold": 100, "suspendGracePeriod": "10m"}),
        );
        let mut ledger = Ledger { customer_id: Some("cus_1".into()), ..Default::default() };
        ledger.credit("pi_1", 1000);
        // 1 GPU at 360 cents/hour = 0.1 cent/s, running 10:00:00, nothing reported yet.
        let runs = [Run {
            uid: "u1".into(),
            started_at: at("2026-11-22T10:00:00Z"),
            gpus: 1,
            per_gpu_hour: Some(360),
        }];
        let v =
            verdict(&t, &Standing::Account, Some(&ledger), &runs, 0, at("2026-11-22T10:50:00Z"));
        let s = v.status.clone().unwrap();
        assert_eq!((s.balance, s.unbilled, s.credited), (700, 300, 1000));
        assert_eq!(s.balance_display.as_deref(), Some("7.00 usd"));
        assert_eq!((v.condition.status.as_str(), v.condition.reason.as_str()), ("True", "Active"));
        assert_eq!(
            v.wake,
            Some(Duration::from_secs(6000)),
            "when the balance reaches the threshold"
        );
        // Below the threshold: still running, a warning.
        let v =
            verdict(&t, &Standing::Account, Some(&ledger), &runs, 0, at("2026-11-22T12:31:00Z"));
        assert_eq!((v.condition.reason.as_str(), v.low, v.exhausted), ("LowBalance", true, false));
        // Exhausted at 12:46:40 (1000 s of credit); the reconcile sees it at 12:47:00.
        let v =
            verdict(&t, &Standing::Account, Some(&ledger), &runs, 0, at("2026-11-22T12:47:00Z"));
        assert_eq!(
            (v.condition.status.as_str(), v.condition.reason.as_str()),
            ("False", "CreditExhausted")
        );
        let s = v.status.clone().unwrap();
        assert_eq!(s.suspend_at.as_deref(), Some("2026-11-22T12:57:00Z"));
        assert_eq!(v.wake, Some(Duration::from_secs(600)));
        t.status = Some(alcove_crds::TenantStatus {
            billing: Some(s),
            conditions: vec![v.condition.clone()],
            ..Default::default()
        });
        assert_eq!(suspended(&t, at("2026-11-22T12:56:59Z")), None, "within the grace");
        assert!(
            suspended(&t, at("2026-11-22T12:57:00Z"))
                .unwrap()
                .contains("credit exhausted at 2026-11-22T12:47:00Z")
        );
        // Suspended at 12:57: the run's usage is reported; exhaustion keeps its instant.
        let usage = super::super::ledger::Usage {
            from: at("2026-11-22T10:00:00Z"),
            to: at("2026-11-22T12:57:00Z"),
            gpu_millis: 10_620_000,
            amount: 1062,
            carry: 0,
        };
        ledger.record("u1", "tenant-acme/chat", &usage);
        let later =
            verdict(&t, &Standing::Account, Some(&ledger), &[], 0, at("2026-11-22T13:30:00Z"));
        assert_eq!(later.status.unwrap().exhausted_at.as_deref(), Some("2026-11-22T12:47:00Z"));
        // A top-up lifts it.
        ledger.credit("pi_2", 5000);
        let v = verdict(&t, &Standing::Account, Some(&ledger), &[], 0, at("2026-11-22T13:30:00Z"));
        assert_eq!(v.condition.reason, "Active");
        assert_eq!(v.status.unwrap().suspend_at, None);
        // Tokens alone use credit up: unbilled token usage counts in the balance.
        let tokens = ledger.balance() + 1;
        let v =
            verdict(&t, &Standing::Account, Some(&ledger), &[], tokens, at("2026-11-22T13:30:00Z"));
        assert!(v.exhausted, "{:?}", v.status);
        assert_eq!(v.status.unwrap().unbilled, tokens);
    }

    #[test]
    fn disabled_and_unbilled_tenants_say_so() {
        let t = tenant(json!({}));
        let v = verdict(&t, &Standing::Disabled, None, &[], 0, at("2026-11-22T10:00:00Z"));
        assert_eq!(
            (v.condition.status.as_str(), v.condition.reason.as_str()),
            ("False", "Disabled")
        );
        assert!(v.condition.message.contains("no Stripe API key"));
        let mut t = t;
        t.spec.billing = None;
        let v = verdict(&t, &Standing::Account, None, &[], 0, at("2026-11-22T10:00:00Z"));
        assert_eq!(v.condition.reason, "NotCharged");
        assert_eq!(display(-1234, "usd"), "-12.34 usd");
    }
}
