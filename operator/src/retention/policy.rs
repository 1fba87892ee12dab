//! Retention decisions, as pure functions: the window of a data class for a tenant, the marks a
//! released volume carries, whether it is due, and the receipt of an erasure.

use alcove_crds::{
    ANNOTATION_RETAIN_UNTIL, DataClass, ErasureRecord, LABEL_DATA_CLASS, LABEL_TENANT, Tenant,
    Window,
};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::ResourceExt;
use serde_json::{Value, json};

/// On a released volume: `true` (the selector the retention controller and reports use).
pub const LABEL_RELEASED: &str = "alcove.dev/released";
/// On a released volume: the rule its deadline came from, e.g. `conversationHistory=7d`.
pub use alcove_crds::report::ANNOTATION_RULE;

/// The tenant's window for `class`: its spec's (the schema keeps it within the promise and above
/// any legal minimum), else `default` (the platform's configured default for the class).
pub fn window(tenant: Option<&Tenant>, class: DataClass, default: Window) -> Window {
    let field = tenant.and_then(|t| t.spec.retention.as_ref()?.get(class));
    field.and_then(Window::parse).unwrap_or(default)
}

/// The end of `w` from `from`, rounded up to the whole second: deadlines are stored at whole
/// seconds ([`alcove_clock::format`]), and one rounded down would erase up to a second early.
pub fn deadline(from: Timestamp, w: Window) -> Timestamp {
    let end = alcove_clock::later(from, w.as_secs());
    let up = jiff::TimestampRound::new().smallest(jiff::Unit::Second).mode(jiff::RoundMode::Ceil);
    end.round(up).unwrap_or(end)
}

pub fn rule(class: DataClass, w: Window) -> String {
    format!("{}={w}", class.as_str())
}

/// The merge patch releasing a volume to retention: no owner any more (so nothing deletes it
/// with its owner), labelled with tenant and data class, annotated with its deadline and rule.
pub fn release_patch(tenant: &str, class: DataClass, w: Window, now: Timestamp) -> Value {
    json!({"metadata": {
        "ownerReferences": null,
        "labels": {LABEL_TENANT: tenant, LABEL_DATA_CLASS: class.as_str(), LABEL_RELEASED: "true"},
        "annotations": {ANNOTATION_RETAIN_UNTIL: alcove_clock::format(deadline(now, w)), ANNOTATION_RULE: rule(class, w)},
    }})
}

/// The merge patch taking a released volume back (its owner was re-created in the window).
pub fn reclaim_patch(
    owner: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
) -> Value {
    json!({"metadata": {
        "ownerReferences": [owner],
        "labels": {LABEL_RELEASED: null},
        "annotations": {ANNOTATION_RETAIN_UNTIL: null, ANNOTATION_RULE: null},
    }})
}

/// The merge patch taking back a released volume that has no owner (a shared model cache).
pub fn keep_patch() -> Value {
    json!({"metadata": {
        "labels": {LABEL_RELEASED: null},
        "annotations": {ANNOTATION_RETAIN_UNTIL: null, ANNOTATION_RULE: null},
    }})
}

pub fn is_released(pvc: &PersistentVolumeClaim) -> bool {
    pvc.labels().get(LABEL_RELEASED).map(String::as_str) == Some("true")
}

/// What retention does with a volume now.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Not released: not retention's business.
    NotReleased,
    /// Released; erase at this instant.
    KeepUntil(Timestamp),
    /// Due, but the tenant is under legal hold.
    Held,
    Erase {
        deadline: Timestamp,
    },
}

pub fn verdict(pvc: &PersistentVolumeClaim, now: Timestamp, legal_hold: bool) -> Verdict {
    if !is_released(pvc) {
        return Verdict::NotReleased;
    }
    // A released volume without a readable deadline is erased now rather than kept forever:
    // keeping data past its promise is the failure retention exists to prevent.
    let deadline = pvc
        .annotations()
        .get(ANNOTATION_RETAIN_UNTIL)
        .and_then(|s| alcove_clock::parse(s))
        .unwrap_or(now);
    if legal_hold {
        Verdict::Held
    } else if now < deadline {
        Verdict::KeepUntil(deadline)
    } else {
        Verdict::Erase { deadline }
    }
}

pub fn receipt(
    what: String,
    class: &str,
    deadline: Timestamp,
    erased_at: Timestamp,
    rule: String,
) -> ErasureRecord {
    ErasureRecord {
        what,
        data_class: class.into(),
        deadline: alcove_clock::format(deadline),
        erased_at: alcove_clock::format(erased_at),
        rule,
    }
}

/// The `alcove.dev/data-class` of the receipts ConfigMaps.
pub const RECEIPTS_CLASS: &str = "erasureReceipts";

/// The ConfigMap (in the operator's namespace) holding a tenant's erasure receipts; it outlives
/// the tenant namespace.
pub fn receipts_name(tenant: &str) -> String {
    format!("alcove-erasures-{tenant}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn tenant(retention: Value) -> Tenant {
        serde_json::from_value(
            json!({"apiVersion": "alcove.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": "acme"},
            "spec": {"displayName": "ACME", "tier": "basic", "region": "tw-taipei-1", "retention": retention}}),
        )
        .unwrap()
    }

    #[test]
    fn windows_come_from_the_spec_or_the_promise() {
        assert_eq!(window(None, DataClass::ConversationHistory, Window::days(7)), Window::days(7));
        assert_eq!(window(None, DataClass::ConversationHistory, Window::days(3)), Window::days(3));
        let t = tenant(json!({"conversationHistory": "2d"}));
        assert_eq!(
            window(Some(&t), DataClass::ConversationHistory, Window::days(7)),
            Window::days(2)
        );
        assert_eq!(window(Some(&t), DataClass::KnowledgeBase, Window::days(7)), Window::days(7));
        assert_eq!(window(Some(&t), DataClass::AccountData, Window::days(30)), Window::days(30));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn released(patch: &Value) -> PersistentVolumeClaim {
            serde_json::from_value(json!({"metadata": {
                "labels": patch["metadata"]["labels"],
                "annotations": patch["metadata"]["annotations"],
            }}))
            .unwrap()
        }

        proptest! {
            /// Released at any instant (to the nanosecond, up to the year 7000, so that the
            /// longest window still ends before the year 9999 that timestamps reach) with any
            /// window the API admits, and looked at any time after: a volume is erased neither
            /// before its window has passed, as read back from the annotation it carries, nor
            /// later than a second after it.
            #[test]
            fn a_released_volume_is_erased_neither_early_nor_late(
                released_at_ns in 0i128..=158_000_000_000_000_000_000i128,
                n in 1u64..1_000_000,
                unit in 0usize..3,
                looked_after_ms in 0u64..=u64::MAX / 2,
            ) {
                let now = Timestamp::from_nanosecond(released_at_ns).unwrap();
                let w = Window::parse(&format!("{n}{}", ["m", "h", "d"][unit])).unwrap();
                let pvc = released(&release_patch("acme", DataClass::KnowledgeBase, w, now));
                let promised =
                    now.checked_add(jiff::SignedDuration::from_secs(w.as_secs() as i64)).unwrap();
                let seen = now
                    .checked_add(jiff::SignedDuration::from_millis(looked_after_ms as i64))
                    .unwrap_or(Timestamp::MAX);
                match verdict(&pvc, seen, false) {
                    Verdict::Erase { deadline } => {
                        prop_assert!(seen >= promised, "erased at {seen}, kept until {promised}");
                        prop_assert!(deadline >= promised);
                    }
                    Verdict::KeepUntil(deadline) => {
                        prop_assert!(seen < deadline);
                        let late = deadline.duration_since(promised);
                        prop_assert!(late < jiff::SignedDuration::from_secs(1), "{late:?} late");
                    }
                    other => prop_assert!(false, "{other:?}"),
                }
            }
        }
    }

    #[test]
    fn a_released_volume_is_kept_until_its_deadline_and_held_under_legal_hold() {
        let patch = release_patch(
            "acme",
            DataClass::ConversationHistory,
            Window::days(7),
            ts("2026-11-22T10:00:00Z"),
        );
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({"metadata": {"name": "chat-history", "labels": patch["metadata"]["labels"], "annotations": patch["metadata"]["annotations"]}})).unwrap();
        assert_eq!(pvc.annotations()[ANNOTATION_RETAIN_UNTIL], "2026-11-29T10:00:00Z");
        assert_eq!(pvc.annotations()[ANNOTATION_RULE], "conversationHistory=7d");
        assert_eq!(patch["metadata"]["ownerReferences"], Value::Null);
        let deadline = ts("2026-11-29T10:00:00Z");
        assert_eq!(verdict(&pvc, ts("2026-11-29T09:59:59Z"), false), Verdict::KeepUntil(deadline));
        assert_eq!(verdict(&pvc, deadline, false), Verdict::Erase { deadline });
        assert_eq!(verdict(&pvc, ts("2026-12-01T00:00:00Z"), true), Verdict::Held);
        let unreleased = PersistentVolumeClaim::default();
        assert_eq!(verdict(&unreleased, deadline, false), Verdict::NotReleased);
    }
}
