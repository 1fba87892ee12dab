//! Mail to a tenant's owners when its standing changes: credit low, credit used up (with the time
//! instances stop), instances suspended, credit restored (suspended instances resume), and the
//! tenant's deletion scheduled (with when its data is erased and what is kept), and, when the
//! Tenant is gone, the erasure receipts.
//!
//! The standing is read from the Tenant's status (the operator's billing verdict and its erase
//! instant), which the dashboard already watches. One event sends one mail, across replicas and
//! restarts: the last standing each tenant was told about is kept in the shared store, and only
//! the replica whose conditional update moves it sends the mail. A tenant first seen (a new one,
//! or a dashboard meeting an old one) is recorded without a mail, except for a deletion.

use std::sync::Arc;
use std::time::Duration;

use alcove_crds::tenant::{OwnerKind, Tenant};
use jiff::Timestamp;
use kube::ResourceExt;

use crate::money::{POINT, format};

/// Where a tenant stands, as far as its owners are told.
#[derive(Debug, Clone, PartialEq)]
pub enum Standing {
    Healthy,
    Low,
    /// Credit used up; instances stop at this instant unless credit arrives.
    Exhausted {
        suspend_at: Timestamp,
    },
    /// Credit used up and the grace ended: instances are suspended.
    Suspended {
        since: Timestamp,
    },
    /// Deleted; its data is erased at this instant.
    Deleting {
        erase_after: Timestamp,
    },
}

impl Standing {
    /// The stored form: an episode's instant is part of it, so a later episode of the same kind
    /// is a new event.
    pub fn key(&self) -> String {
        match self {
            Standing::Healthy => "healthy".into(),
            Standing::Low => "low".into(),
            Standing::Exhausted { suspend_at } => format!("exhausted@{suspend_at}"),
            Standing::Suspended { since } => format!("suspended@{since}"),
            Standing::Deleting { erase_after } => format!("deleting@{erase_after}"),
        }
    }

    fn kind(key: &str) -> &str {
        key.split('@').next().unwrap_or_default()
    }
}

/// The tenant's standing at `now`, if there is one to tell: a tenant without billing has none
/// until it is deleted; a deleted one has one once the operator set its erase instant.
pub fn standing(t: &Tenant, now: Timestamp) -> Option<Standing> {
    let status = t.status.as_ref();
    if t.metadata.deletion_timestamp.is_some() {
        let erase_after = status?.erase_after.as_deref()?.parse().ok()?;
        return Some(Standing::Deleting { erase_after });
    }
    let spec = t.spec.billing.as_ref()?;
    let b = status?.billing.as_ref()?;
    // No Stripe customer yet: the account is being set up, there is nothing to tell.
    b.customer_id.as_ref()?;
    if b.balance <= 0 {
        let suspend_at: Timestamp = b.suspend_at.as_deref()?.parse().ok()?;
        return Some(if now >= suspend_at {
            Standing::Suspended { since: suspend_at }
        } else {
            Standing::Exhausted { suspend_at }
        });
    }
    Some(if b.balance < spec.low_balance_threshold { Standing::Low } else { Standing::Healthy })
}

/// A message to a tenant's owners.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub subject: String,
    pub body: String,
}

fn when(t: Timestamp) -> String {
    crate::views::utc_minute(t)
}

/// Paragraphs broken into lines of at most `width` characters (at spaces), so the message goes
/// out as plain 7-bit text that every mail reader shows as written.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    for line in text.split('\n') {
        let mut len = 0;
        for (i, word) in line.split(' ').enumerate() {
            if i > 0 && len + 1 + word.len() > width {
                out.push('\n');
                len = 0;
            } else if i > 0 {
                out.push(' ');
                len += 1;
            }
            out.push_str(word);
            len += word.len();
        }
        out.push('\n');
    }
    out.truncate(out.trim_end_matches('\n').len());
    out.push('\n');
    out
}

/// What to tell the owners when the standing moves from `before` (a stored key; `None`: first
/// sight) to `now`; `None` when the move is not news (e.g. low back to healthy).
pub fn notice(
    t: &Tenant,
    before: Option<&str>,
    now: &Standing,
    public_url: &str,
) -> Option<Notice> {
    let name = t.name_any();
    let display = &t.spec.display_name;
    let billing_page = format!("{}/t/{name}/billing", public_url.trim_end_matches('/'));
    let b = t.status.as_ref().and_then(|s| s.billing.clone()).unwrap_or_default();
    let currency = t.spec.billing.as_ref().map(|s| s.currency.clone()).unwrap_or_default();
    let balance = format(b.balance, &currency, POINT);
    let was = before.map(Standing::kind);
    let n = |subject: String, body: String| Some(Notice { subject, body: wrap(&body, 72) });
    match (was, now) {
        (_, Standing::Deleting { erase_after }) if was != Some("deleting") => n(
            format!("Alcove: {display} is being deleted"),
            format!(
                "The tenant {display} ({name}) was deleted. Its instances and knowledge bases are \
                 stopped now, and billing for them has stopped.\n\nEverything else it holds \
                 (volumes, conversation history, uploaded documents, its encryption key) is \
                 erased by {}. A receipt of each erasure is kept.\n\nBilling records (payments \
                 and usage charges) are kept for {}, as the law requires of accounting \
                 records; they hold no prompts or documents.\n",
                when(*erase_after),
                crate::account::billing_kept_for(t)
            ),
        ),
        (None, _) => None,
        (Some("healthy"), Standing::Low) => n(
            format!("Alcove: credit is low for {display}"),
            format!(
                "The prepaid credit of {display} ({name}) is {balance}, under your low-balance \
                 threshold of {}.\n\nTop up to keep your instances running: {billing_page}\n",
                format(
                    t.spec.billing.as_ref().map(|s| s.low_balance_threshold).unwrap_or(0),
                    &currency,
                    POINT
                )
            ),
        ),
        (Some("healthy" | "low"), Standing::Exhausted { suspend_at }) => n(
            format!(
                "Alcove: credit used up for {display}; instances stop at {}",
                when(*suspend_at)
            ),
            format!(
                "The prepaid credit of {display} ({name}) is used up ({balance}).\n\nRunning \
                 instances are suspended at {} unless credit is added. Suspended instances keep \
                 their data and keys and resume after a top-up.\n\nTop up: {billing_page}\n",
                when(*suspend_at)
            ),
        ),
        (Some(k), Standing::Suspended { since }) if k != "suspended" => n(
            format!("Alcove: instances of {display} are suspended"),
            format!(
                "The credit of {display} ({name}) ran out and its grace period ended at {}: its \
                 running instances are suspended, and GPU billing with them. Their data and keys \
                 are kept.\n\nA top-up resumes them: {billing_page}\n",
                when(*since)
            ),
        ),
        (Some("exhausted" | "suspended"), Standing::Healthy | Standing::Low) => n(
            format!("Alcove: credit restored for {display}"),
            format!(
                "The prepaid credit of {display} ({name}) is {balance} again. Instances suspended \
                 for lack of credit resume now.\n\nBilling: {billing_page}\n"
            ),
        ),
        _ => None,
    }
}

/// The owners' mail when a deleted Tenant is gone for good: each erasure receipt from its final
/// status, and what is kept. `None` for a Tenant that went without the operator's erasure (no
/// erase instant): nothing can be promised about it.
pub fn erased(t: &Tenant) -> Option<Notice> {
    let status = t.status.as_ref()?;
    status.erase_after.as_ref()?;
    let (name, display) = (t.name_any(), &t.spec.display_name);
    let mut body = format!(
        "The tenant {display} ({name}) is erased. These are the receipts of what was erased, \
         when, and by which rule:\n\n"
    );
    for r in &status.erasure {
        body.push_str(&format!(
            "- {}: erased {} (deadline {}, rule {})\n",
            r.what, r.erased_at, r.deadline, r.rule
        ));
    }
    if status.erasure.is_empty() {
        body.push_str("- nothing was left to erase\n");
    }
    let kept = crate::account::billing_kept_for(t);
    body.push_str(&format!(
        "\nKept: billing records (payments and usage charges) for {kept}, as the law requires \
         of accounting records (they hold no prompts or documents), and these receipts, which \
         prove the erasure.\n"
    ));
    Some(Notice { subject: format!("Alcove: {display} is erased"), body: wrap(&body, 72) })
}

/// The addresses a tenant's notices go to: its `User` owners.
pub fn recipients(t: &Tenant) -> Vec<String> {
    if let Some(contact) = &t.spec.contact_email {
        return vec![contact.clone()];
    }
    t.spec.owners.iter().filter(|o| o.kind == OwnerKind::User).map(|o| o.name.clone()).collect()
}

/// Watches the Tenant cache every two seconds and mails what changed, once.
pub async fn run(
    cluster: crate::cluster::Cluster,
    store: crate::store::Store,
    mailer: Arc<crate::mail::Mailer>,
    clock: Arc<dyn alcove_clock::Clock>,
    public_url: String,
) {
    let mut gone = cluster.gone();
    cluster.ready().await;
    // What this replica last saw, so an unchanged tenant costs no store query.
    let mut seen: std::collections::HashMap<String, String> = Default::default();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            t = gone.recv() => {
                if let Ok(t) = t {
                    tell_erased(&store, &mailer, &t, clock.now()).await;
                }
                continue;
            }
        }
        let now = clock.now();
        for t in cluster.all_tenants() {
            let (Some(uid), Some(s)) = (t.uid(), standing(&t, now)) else { continue };
            let key = s.key();
            if seen.get(&uid) == Some(&key) {
                continue;
            }
            let moved = match store.move_standing(&uid, &key, now.as_millisecond()).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "recording a tenant's standing");
                    continue;
                }
            };
            seen.insert(uid, key);
            let Some(before) = moved else { continue };
            let Some(n) = notice(&t, before.as_deref(), &s, &public_url) else { continue };
            mail_owners(&mailer, &t, &n).await;
        }
    }
}

/// Mails the erasure receipts once: the replica whose conditional update moves the standing to
/// `erased` sends them.
async fn tell_erased(
    store: &crate::store::Store,
    mailer: &crate::mail::Mailer,
    t: &Tenant,
    now: Timestamp,
) {
    let (Some(uid), Some(n)) = (t.uid(), erased(t)) else { return };
    match store.move_standing(&uid, "erased", now.as_millisecond()).await {
        Ok(Some(_)) => {}
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "recording a tenant's erasure");
            return;
        }
    }
    mail_owners(mailer, t, &n).await;
}

/// Sends notice `n` to the tenant's recipients.
async fn mail_owners(mailer: &crate::mail::Mailer, t: &Tenant, n: &Notice) {
    for to in recipients(t) {
        if let Err(e) = mailer.send(&to, &n.subject, &n.body).await {
            tracing::warn!(tenant = %t.name_any(), error = %e, "a notice could not be mailed");
        }
    }
    tracing::info!(tenant = %t.name_any(), notice = %n.subject, "owners notified");
}

#[cfg(test)]
mod tests {
    use super::*;
    use alcove_crds::tenant::{BillingStatus, TenantStatus};

    fn tenant(balance: i64, suspend_at: Option<&str>) -> Tenant {
        let mut t: Tenant = serde_json::from_value(serde_json::json!({
            "apiVersion": "alcove.dev/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "acme", "uid": "u1"},
            "spec": {"displayName": "Acme", "tier": "basic", "region": "r",
                     "owners": [{"kind": "User", "name": "ada@acme.example"}, {"kind": "Group", "name": "ops"}],
                     "billing": {"customer": "create", "currency": "usd", "lowBalanceThreshold": 1000, "suspendGracePeriod": "1h"}}
        }))
        .unwrap();
        t.status = Some(TenantStatus {
            billing: Some(BillingStatus {
                customer_id: Some("cus_1".into()),
                balance,
                suspend_at: suspend_at.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        });
        t
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn the_standing_follows_the_billing_verdict_and_the_clock() {
        let now = at("2026-12-01T10:00:00Z");
        assert_eq!(standing(&tenant(5000, None), now), Some(Standing::Healthy));
        assert_eq!(standing(&tenant(999, None), now), Some(Standing::Low));
        let t = tenant(0, Some("2026-12-01T11:00:00Z"));
        assert_eq!(
            standing(&t, now),
            Some(Standing::Exhausted { suspend_at: at("2026-12-01T11:00:00Z") })
        );
        assert_eq!(
            standing(&t, at("2026-12-01T11:00:00Z")),
            Some(Standing::Suspended { since: at("2026-12-01T11:00:00Z") })
        );
        let mut unbilled = tenant(5000, None);
        unbilled.spec.billing = None;
        assert_eq!(standing(&unbilled, now), None, "nothing to tell a tenant nobody charges");
        let mut deleted = tenant(5000, None);
        deleted.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
        assert_eq!(standing(&deleted, now), None, "not before the operator set the erase instant");
        deleted.status.as_mut().unwrap().erase_after = Some("2026-12-31T10:00:00Z".into());
        assert_eq!(
            standing(&deleted, now),
            Some(Standing::Deleting { erase_after: at("2026-12-31T10:00:00Z") })
        );
    }

    #[test]
    fn each_change_worth_telling_is_one_notice() {
        let url = "https://dash.example/";
        let low = tenant(999, None);
        let n = notice(&low, Some("healthy"), &Standing::Low, url).unwrap();
        assert_eq!(n.subject, "Alcove: credit is low for Acme");
        assert!(n.body.contains("9.99 USD") && n.body.contains("10.00 USD"), "{}", n.body);
        assert!(n.body.contains("https://dash.example/t/acme/billing"), "{}", n.body);
        let ex = Standing::Exhausted { suspend_at: at("2026-12-01T11:00:00Z") };
        let n = notice(&tenant(0, None), Some("low"), &ex, url).unwrap();
        assert!(n.subject.contains("instances stop at 2026-12-01 11:00 UTC"), "{}", n.subject);
        let sus = Standing::Suspended { since: at("2026-12-01T11:00:00Z") };
        assert!(
            notice(&tenant(0, None), Some(&ex.key()), &sus, url)
                .unwrap()
                .subject
                .contains("suspended")
        );
        assert!(
            notice(&tenant(0, None), Some("low"), &sus, url).is_some(),
            "a missed exhaustion still tells the suspension"
        );
        let back = notice(&tenant(2500, None), Some(&sus.key()), &Standing::Healthy, url).unwrap();
        assert_eq!(back.subject, "Alcove: credit restored for Acme");
        assert!(back.body.contains("25.00 USD"));
        // Not news: first sight, recovery from low, the same standing again.
        assert_eq!(notice(&low, None, &Standing::Low, url), None);
        assert_eq!(notice(&low, Some("low"), &Standing::Healthy, url), None);
        assert_eq!(notice(&low, Some("exhausted@x"), &ex, url), None);
        let del = Standing::Deleting { erase_after: at("2026-12-31T10:00:00Z") };
        let n = notice(&low, None, &del, url).unwrap();
        let flat = n.body.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            flat.contains("erased by 2026-12-31 10:00 UTC") && flat.contains("kept for 7 years"),
            "{flat}"
        );
        assert_eq!(notice(&low, Some(&del.key()), &del, url), None);
        assert_eq!(recipients(&low), vec!["ada@acme.example".to_string()], "users, not groups");
        let mut contact = low.clone();
        contact.spec.contact_email = Some("billing@acme.example".into());
        assert_eq!(recipients(&contact), vec!["billing@acme.example".to_string()], "the contact");
        assert!(n.body.lines().all(|l| l.len() <= 72), "{}", n.body);
        assert_eq!(wrap("aa bb cc\n\ndd", 5), "aa bb\ncc\n\ndd\n");
    }

    #[test]
    fn the_erased_mail_carries_every_receipt_and_what_is_kept() {
        let mut t = tenant(0, None);
        assert_eq!(erased(&t), None, "gone without the operator's erasure: no promise");
        let status = t.status.as_mut().unwrap();
        status.erase_after = Some("2026-12-31T10:00:00Z".into());
        status.erasure =
            ["PersistentVolumeClaim tenant-acme/history-chat", "Namespace tenant-acme"]
                .map(|what| alcove_crds::ErasureRecord {
                    what: what.into(),
                    data_class: "accountData".into(),
                    deadline: "2026-12-31T10:00:00Z".into(),
                    erased_at: "2026-12-31T10:00:01Z".into(),
                    rule: "accountData=30d".into(),
                })
                .to_vec();
        let n = erased(&t).unwrap();
        assert_eq!(n.subject, "Alcove: Acme is erased");
        let flat = n.body.split_whitespace().collect::<Vec<_>>().join(" ");
        for fact in [
            "- PersistentVolumeClaim tenant-acme/history-chat: erased 2026-12-31T10:00:01Z (deadline 2026-12-31T10:00:00Z, rule accountData=30d)",
            "- Namespace tenant-acme: erased",
            "billing records (payments and usage charges) for 7 years",
        ] {
            assert!(flat.contains(fact), "{fact}: {flat}");
        }
        assert!(n.body.lines().all(|l| l.len() <= 72), "{}", n.body);
    }
}
