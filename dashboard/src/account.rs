//! "Delete your account": what it erases, when, and what is kept (the page says it before the
//! code is asked for), and whether the account is kept in a GitOps repository, where deleting
//! it here would be undone by the next sync.

use alcove_crds::policy::DataClass;
use alcove_crds::tenant::Tenant;
use jiff::Timestamp;

/// Labels and annotations the GitOps tools put on what they apply, and their field managers.
const GITOPS: &[(&str, &str)] = &[
    ("argocd.argoproj.io/tracking-id", "Argo CD"),
    ("argocd.argoproj.io/instance", "Argo CD"),
    ("kustomize.toolkit.fluxcd.io/name", "Flux"),
    ("helm.toolkit.fluxcd.io/name", "Flux"),
];
const GITOPS_MANAGERS: &[(&str, &str)] = &[
    ("argocd-controller", "Argo CD"),
    ("argocd-application-controller", "Argo CD"),
    ("kustomize-controller", "Flux"),
    ("helm-controller", "Flux"),
];

/// The GitOps tool that keeps this Tenant, if one does.
pub fn gitops_manager(t: &Tenant) -> Option<&'static str> {
    let m = &t.metadata;
    let marked = |k: &str| {
        m.labels.as_ref().is_some_and(|l| l.contains_key(k))
            || m.annotations.as_ref().is_some_and(|a| a.contains_key(k))
    };
    if let Some((_, tool)) = GITOPS.iter().find(|(k, _)| marked(k)) {
        return Some(tool);
    }
    let managers = m.managed_fields.iter().flatten().filter_map(|f| f.manager.as_deref());
    for manager in managers {
        if let Some((_, tool)) = GITOPS_MANAGERS.iter().find(|(k, _)| *k == manager) {
            return Some(tool);
        }
    }
    None
}

/// Whether a GitOps tool's field manager owns `spec.<field>` (its next sync would undo a change).
pub fn gitops_owns(t: &Tenant, field: &str) -> bool {
    t.metadata.managed_fields.iter().flatten().any(|f| {
        let gitops =
            f.manager.as_deref().is_some_and(|m| GITOPS_MANAGERS.iter().any(|(k, _)| *k == m));
        gitops
            && f.fields_v1
                .as_ref()
                .and_then(|v| v.0.get("f:spec"))
                .is_some_and(|spec| spec.get(format!("f:{field}")).is_some())
    })
}

/// When an account deleted at `now` is erased: its account-data window (the tenant's, or the
/// platform's promise), unless a legal hold pauses it.
pub fn erase_by(t: &Tenant, now: Timestamp) -> Timestamp {
    let w = window(t, DataClass::AccountData);
    now.checked_add(jiff::SignedDuration::from_secs(w.as_secs() as i64)).unwrap_or(now)
}

/// A window in words: `7 years`, `30 days`, `12 hours`, `90 minutes`.
fn words(w: alcove_crds::policy::Window) -> String {
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    let days = w.minutes / 1440;
    match w.minutes {
        0 => plural(0, "minute"),
        m if m.is_multiple_of(1440) && days.is_multiple_of(365) => plural(days / 365, "year"),
        m if m.is_multiple_of(1440) => plural(days, "day"),
        m if m.is_multiple_of(60) => plural(m / 60, "hour"),
        m => plural(m, "minute"),
    }
}

/// How long billing records are kept, in words (`7 years`): the notices and the page say it.
pub fn billing_kept_for(t: &Tenant) -> String {
    words(window(t, DataClass::BillingRecords))
}

/// How long `t` keeps `class`: its own window, or the platform's promise.
fn window(t: &Tenant, class: DataClass) -> alcove_crds::policy::Window {
    t.spec
        .retention
        .as_ref()
        .and_then(|r| r.get(class))
        .and_then(alcove_crds::policy::Window::parse)
        .unwrap_or_else(|| class.default_window())
}

/// What deleting the account does, step by step, for the confirmation page.
pub fn deletion_facts(t: &Tenant, now: Timestamp) -> Vec<(String, String)> {
    let when = crate::views::utc_minute(erase_by(t, now));
    let erased = if t.spec.legal_hold {
        "A legal hold is on this account: nothing is erased while it lasts. When it is lifted, \
         the volumes (conversation history, knowledge-base indexes), the encryption key and the \
         account itself are erased, each with a receipt mailed to you."
            .to_string()
    } else {
        format!(
            "By {when} (your account-data window: {}): the volumes (conversation history, \
             knowledge-base indexes), the encryption key, so nothing left anywhere can be read, \
             and the account itself. Each erasure gets a receipt; we mail you the receipts when \
             it is done.",
            words(window(t, DataClass::AccountData))
        )
    };
    vec![
        (
            "At once".into(),
            "Every instance stops and is destroyed, and billing stops. Knowledge bases are \
             deleted. Until the erasure you can still sign in and follow it on Your data."
                .into(),
        ),
        ("Erased".into(), erased),
        (
            "Kept".into(),
            format!(
                "Billing records (payments and usage charges) for {}, because accounting law \
                 requires it; they hold no prompts or documents. The erasure receipts, which prove \
                 what was erased and when.",
                billing_kept_for(t)
            ),
        ),
        (
            "Before you go".into(),
            "Download your data first (Your data, Export): after the erasure nothing can be \
             recovered."
                .into(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(extra: serde_json::Value) -> Tenant {
        let mut v = serde_json::json!({
            "apiVersion": "alcove.dev/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "acme"},
            "spec": {"displayName": "Acme", "tier": "basic", "region": "r",
                     "owners": [{"kind": "User", "name": "ada@acme.example"}]}
        });
        json_merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn json_merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    json_merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    #[test]
    fn gitops_kept_accounts_are_recognised() {
        assert_eq!(gitops_manager(&tenant(serde_json::json!({}))), None);
        let argo = tenant(
            serde_json::json!({"metadata": {"annotations": {"argocd.argoproj.io/tracking-id": "platform:alcove.dev/Tenant:/acme"}}}),
        );
        assert_eq!(gitops_manager(&argo), Some("Argo CD"));
        let flux = tenant(
            serde_json::json!({"metadata": {"labels": {"kustomize.toolkit.fluxcd.io/name": "tenants"}}}),
        );
        assert_eq!(gitops_manager(&flux), Some("Flux"));
        let applied = tenant(
            serde_json::json!({"metadata": {"managedFields": [{"manager": "kustomize-controller", "operation": "Apply"}]}}),
        );
        assert_eq!(gitops_manager(&applied), Some("Flux"));
        let kubectl = tenant(
            serde_json::json!({"metadata": {"managedFields": [{"manager": "kubectl", "operation": "Apply"}]}}),
        );
        assert_eq!(gitops_manager(&kubectl), None);
        // A GitOps manifest that names the display name keeps it; the contact it does not name
        // is the customer's to change.
        let fields = serde_json::json!({"f:spec": {"f:displayName": {}, "f:tier": {}}});
        let synced = tenant(
            serde_json::json!({"metadata": {"managedFields": [{"manager": "argocd-controller", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": fields}]}}),
        );
        assert!(gitops_owns(&synced, "displayName"));
        assert!(!gitops_owns(&synced, "contactEmail"));
        let by_hand = tenant(
            serde_json::json!({"metadata": {"managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": fields}]}}),
        );
        assert!(!gitops_owns(&by_hand, "displayName"));
    }

    #[test]
    fn the_page_says_what_is_erased_when_and_what_is_kept() {
        let now: Timestamp = "2026-12-01T10:00:00Z".parse().unwrap();
        let t = tenant(serde_json::json!({"spec": {"retention": {"accountData": "14d"}}}));
        assert_eq!(erase_by(&t, now).to_string(), "2026-12-15T10:00:00Z");
        let facts = deletion_facts(&t, now);
        let erased = &facts.iter().find(|(k, _)| k == "Erased").unwrap().1;
        assert!(
            erased.contains("By 2026-12-15 10:00 UTC (your account-data window: 14 days)"),
            "{erased}"
        );
        let kept = &facts.iter().find(|(k, _)| k == "Kept").unwrap().1;
        assert!(
            kept.starts_with("Billing records (payments and usage charges) for 7 years,"),
            "{kept}"
        );
        assert_eq!(words(alcove_crds::Window::hours(1)), "1 hour");
        assert_eq!(words(alcove_crds::Window::minutes(90)), "90 minutes");
        // The platform's promise when the tenant says nothing; a legal hold pauses it.
        let plain = tenant(serde_json::json!({}));
        assert_eq!(erase_by(&plain, now).to_string(), "2026-12-31T10:00:00Z");
        let held = tenant(serde_json::json!({"spec": {"legalHold": true}}));
        let erased = &deletion_facts(&held, now)[1].1;
        assert!(erased.starts_with("A legal hold is on this account"), "{erased}");
    }
}
