//! A tenant's billing ledger: the ConfigMap `billing-<tenant>` in the operator's namespace
//! (data class `billingRecords`: retention never erases it, and it outlives the tenant).
//!
//! It holds what Stripe's objects alone cannot answer cheaply: which payments were credited,
//! how far each instance is billed, and the totals. Every change is a read-modify-write guarded
//! by the resourceVersion, so concurrent writers (the controllers, webhook deliveries on any
//! replica) never lose each other's changes, and each change is keyed (payment id, record
//! start), so applying one twice changes nothing. This module is the data and its rules, pure;
//! `store` reads and writes it.

use std::collections::BTreeMap;

use alcove_crds::Tenant;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

pub const DATA_KEY: &str = "ledger.json";
/// The `alcove.dev/data-class` of ledgers.
pub const CLASS: &str = "billingRecords";

pub fn name(tenant: &str) -> String {
    format!("billing-{tenant}")
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Ledger {
    pub tenant: String,
    pub tenant_uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// Total credited by payments (minor units).
    #[serde(default)]
    pub credited: i64,
    /// The PaymentIntents credited, each once.
    #[serde(default)]
    pub payments: Vec<String>,
    /// Total reported to Stripe as usage (minor units).
    #[serde(default)]
    pub billed: i64,
    /// Per instance (by UID): how far it is billed.
    #[serde(default)]
    pub meters: BTreeMap<String, Meter>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Meter {
    /// `namespace/name`, for people.
    pub instance: String,
    /// Usage up to this instant is reported (RFC 3339, milliseconds).
    pub billed_through: String,
    pub gpu_millis: i64,
    /// Minor units reported for this instance.
    pub billed: i64,
    /// Rounding remainder carried into the next record (see `meter::Charge`).
    pub carry: i64,
    /// The instance was destroyed and its final record made.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub closed: bool,
    /// The gateway's prompt-token total this instance is billed through.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub prompt_tokens: i64,
    /// The gateway's completion-token total this instance is billed through.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub completion_tokens: i64,
    /// Token charges' remainder, in millionths of a minor unit (see `meter::token_charge`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub token_carry: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// One token record: the gateway's totals it bills through, and its amount.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenUsage {
    pub prompt_through: i64,
    pub completion_through: i64,
    pub amount: i64,
    pub carry: i64,
}

/// One usage record as it is (or will be) in Stripe.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub from: jiff::Timestamp,
    pub to: jiff::Timestamp,
    pub gpu_millis: i64,
    pub amount: i64,
    pub carry: i64,
}

impl Ledger {
    pub fn new(tenant: &Tenant) -> Ledger {
        Ledger {
            tenant: tenant.name_any(),
            tenant_uid: tenant.uid().unwrap_or_default(),
            ..Default::default()
        }
    }

    /// Credits a payment once. Returns whether it was new.
    pub fn credit(&mut self, payment: &str, amount: i64) -> bool {
        if self.payments.iter().any(|p| p == payment) {
            return false;
        }
        self.payments.push(payment.to_string());
        self.credited += amount;
        true
    }

    /// Records a usage record of an instance unless it (or a later one) is already recorded.
    pub fn record(&mut self, uid: &str, instance: &str, u: &Usage) -> bool {
        let through = self.through(uid);
        if through.is_some_and(|t| u.from < t) {
            return false;
        }
        let m = self
            .meters
            .entry(uid.to_string())
            .or_insert_with(|| Meter { instance: instance.to_string(), ..Default::default() });
        m.billed_through = alcove_clock::format_millis(u.to);
        m.gpu_millis += u.gpu_millis;
        m.billed += u.amount;
        m.carry = u.carry;
        self.billed += u.amount;
        true
    }

    /// Records a token record unless it (or a later one) is already recorded.
    pub fn record_tokens(&mut self, uid: &str, instance: &str, t: &TokenUsage) -> bool {
        let (p, c) = self.tokens(uid);
        if t.prompt_through <= p && t.completion_through <= c {
            return false;
        }
        let m = self
            .meters
            .entry(uid.to_string())
            .or_insert_with(|| Meter { instance: instance.to_string(), ..Default::default() });
        m.prompt_tokens = t.prompt_through.max(p);
        m.completion_tokens = t.completion_through.max(c);
        m.billed += t.amount;
        m.token_carry = t.carry;
        self.billed += t.amount;
        true
    }

    /// The gateway totals (prompt, completion) an instance is billed through.
    pub fn tokens(&self, uid: &str) -> (i64, i64) {
        self.meters.get(uid).map_or((0, 0), |m| (m.prompt_tokens, m.completion_tokens))
    }

    pub fn token_carry(&self, uid: &str) -> i64 {
        self.meters.get(uid).map_or(0, |m| m.token_carry)
    }

    pub fn through(&self, uid: &str) -> Option<jiff::Timestamp> {
        self.meters.get(uid).and_then(|m| m.billed_through.parse().ok())
    }

    pub fn carry(&self, uid: &str) -> i64 {
        self.meters.get(uid).map_or(0, |m| m.carry)
    }

    /// Marks an instance's meter closed (destroyed, final record made).
    pub fn close(&mut self, uid: &str, instance: &str) -> bool {
        let m = self
            .meters
            .entry(uid.to_string())
            .or_insert_with(|| Meter { instance: instance.to_string(), ..Default::default() });
        !std::mem::replace(&mut m.closed, true)
    }

    /// Forgets the meters of destroyed instances that no longer exist (their totals stay).
    pub fn prune(&mut self, exists: impl Fn(&str) -> bool) -> bool {
        let before = self.meters.len();
        self.meters.retain(|uid, m| !m.closed || exists(uid));
        before != self.meters.len()
    }

    /// Credit minus usage reported.
    pub fn balance(&self) -> i64 {
        self.credited - self.billed
    }
}

/// The ledger in a ConfigMap (from a cache or the API).
pub fn parse(cm: &ConfigMap) -> Option<Ledger> {
    cm.data.as_ref()?.get(DATA_KEY).and_then(|t| serde_json::from_str(t).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn payments_and_records_apply_once() {
        let mut l = Ledger::default();
        assert!(l.credit("pi_1", 500));
        assert!(!l.credit("pi_1", 500), "a replayed payment");
        let first = Usage {
            from: at("2026-11-22T10:00:00Z"),
            to: at("2026-11-22T10:01:00Z"),
            gpu_millis: 60_000,
            amount: 4,
            carry: 600_000,
        };
        assert!(l.record("u1", "t/chat", &first));
        assert!(!l.record("u1", "t/chat", &first), "the same record again");
        assert_eq!(l.through("u1"), Some(at("2026-11-22T10:01:00Z")));
        assert_eq!(l.carry("u1"), 600_000);
        let later = Usage {
            from: at("2026-11-22T11:00:00Z"),
            to: at("2026-11-22T11:00:30Z"),
            gpu_millis: 30_000,
            amount: 2,
            carry: 0,
        };
        assert!(l.record("u1", "t/chat", &later), "a new run after a gap");
        assert_eq!((l.credited, l.billed, l.balance()), (500, 6, 494));
        assert!(l.close("u1", "t/chat"));
        assert!(!l.close("u1", "t/chat"));
        assert!(!l.prune(|_| true), "a destroyed instance still finishing keeps its meter");
        assert!(l.prune(|_| false));
        assert_eq!(l.billed, 6, "totals outlive meters");
    }

    #[test]
    fn token_records_apply_once_and_in_order() {
        let mut l = Ledger::default();
        let t = |p, c, amount| TokenUsage {
            prompt_through: p,
            completion_through: c,
            amount,
            carry: 7,
        };
        assert!(l.record_tokens("u1", "t/chat", &t(100, 50, 3)));
        assert!(!l.record_tokens("u1", "t/chat", &t(100, 50, 3)), "the same record again");
        assert!(!l.record_tokens("u1", "t/chat", &t(90, 40, 2)), "an older record");
        assert!(l.record_tokens("u1", "t/chat", &t(100, 80, 1)));
        assert_eq!((l.tokens("u1"), l.token_carry("u1"), l.billed), ((100, 80), 7, 4));
        assert_eq!(l.tokens("u2"), (0, 0));
    }
}
