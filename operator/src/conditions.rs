//! Conditions (`metav1.Condition`), pure: how one is made, and the one rule for when its
//! transition time moves.

use alcove_crds::{
    Condition, InferenceInstanceStatus, KnowledgeBaseStatus, TenantStatus, condition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// A status with `metav1.Condition`s.
pub trait Conditioned {
    fn conditions(&self) -> &[Condition];
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
}

macro_rules! conditioned {
    ($($t:ty),*) => {$(
        impl Conditioned for $t {
            fn conditions(&self) -> &[Condition] {
                &self.conditions
            }
            fn conditions_mut(&mut self) -> &mut Vec<Condition> {
                &mut self.conditions
            }
        }
    )*};
}
conditioned!(TenantStatus, InferenceInstanceStatus, KnowledgeBaseStatus);

/// The one place that decides whether a condition changed (metav1.Condition semantics): a
/// condition whose type had the same status in `previous` keeps that transition time; reason,
/// message and generation may change without it.
pub fn settle(previous: &[Condition], conditions: &mut [Condition]) {
    for c in conditions {
        if let Some(p) = previous.iter().find(|p| p.type_ == c.type_ && p.status == c.status) {
            c.last_transition_time = p.last_transition_time.clone();
        }
    }
}

/// A condition, keeping `lastTransitionTime` from `previous` when the status did not change.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: jiff::Timestamp,
) -> Condition {
    let mut c = Condition {
        type_: type_.into(),
        status: if ok { condition::TRUE } else { condition::FALSE }.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: Time(now.round(jiff::Unit::Second).unwrap_or(now)),
    };
    settle(previous, std::slice::from_mut(&mut c));
    c
}

/// Whether a condition of this type is True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions.iter().any(|c| c.type_ == type_ && c.status == alcove_crds::condition::TRUE)
}

/// Whether `type_` just changed status (for Events on transitions only).
pub fn transitioned(previous: &[Condition], now: &Condition) -> bool {
    !previous
        .iter()
        .any(|c| c.type_ == now.type_ && c.status == now.status && c.reason == now.reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn transition_time_moves_only_with_the_status() {
        let first = condition(
            &[],
            "Billing",
            false,
            "Disabled",
            "no key",
            Some(1),
            at("2026-11-22T10:00:00Z"),
        );
        let prev = vec![first.clone()];
        let same = condition(
            &prev,
            "Billing",
            false,
            "NoPrice",
            "another reason",
            Some(2),
            at("2026-11-22T11:00:00Z"),
        );
        assert_eq!(
            same.last_transition_time, first.last_transition_time,
            "reason and message changed, status did not"
        );
        let flipped = condition(
            &prev,
            "Billing",
            true,
            "Metered",
            "billed",
            Some(2),
            at("2026-11-22T11:00:00Z"),
        );
        assert_eq!(flipped.last_transition_time.0, at("2026-11-22T11:00:00Z"));
        // A builder that lost the previous condition is corrected by `settle` (the writer's step).
        let mut lost = vec![condition(
            &[],
            "Billing",
            false,
            "Disabled",
            "no key",
            Some(1),
            at("2026-11-22T12:00:00Z"),
        )];
        settle(&prev, &mut lost);
        assert_eq!(lost[0].last_transition_time, first.last_transition_time);
    }
}
