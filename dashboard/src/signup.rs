//! Self sign-up (off unless the platform sets a tier and region): what a new account is, and the
//! name its Tenant gets. Pure: the request path checks the code and the limits, and creates it.

use alcove_crds::Tier;
use serde_json::{Value, json};

/// New accounts one client address may make per day.
pub const PER_CLIENT_PER_DAY: usize = 3;

/// The label on Tenants made by sign-up (how a platform team finds them).
pub const LABEL: &str = "alcove.dev/signup";

/// What the platform gives each new account.
#[derive(Debug, Clone)]
pub struct Signup {
    pub tier: Tier,
    pub region: String,
    /// Billed in this currency (a Stripe customer is made); none: usage is recorded only.
    pub currency: Option<String>,
    /// New accounts the whole dashboard makes per hour, at most.
    pub per_hour: usize,
}

impl Signup {
    /// The settings, refused in words when they cannot make a working account: sign-up tenants
    /// share the pool, so `pro` (dedicated nodes) and `enterprise` (the customer's nodes) need a
    /// platform team first.
    pub fn new(
        tier: &str,
        region: &str,
        currency: Option<&str>,
        per_hour: usize,
    ) -> Result<Signup, String> {
        let tier = match tier {
            "free" => Tier::Free,
            "basic" => Tier::Basic,
            other => {
                return Err(format!(
                    "--signup-tier {other:?}: sign-up makes free or basic tenants (pro and enterprise need nodes a platform team sets up)"
                ));
            }
        };
        let region_ok = region.len() >= 4
            && region.split('-').count() == 3
            && region.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !region_ok {
            return Err(format!("--signup-region {region:?} is not a region like tw-taipei-1"));
        }
        let currency = currency.filter(|c| !c.is_empty()).map(str::to_ascii_lowercase);
        if let Some(c) = &currency
            && !(c.len() == 3 && c.chars().all(|ch| ch.is_ascii_lowercase()))
        {
            return Err(format!("--signup-currency {c:?} is not a currency code like usd"));
        }
        if per_hour == 0 {
            return Err("--signups-per-hour must be at least 1".into());
        }
        Ok(Signup { tier, region: region.to_string(), currency, per_hour })
    }

    /// The Tenant of a new account: `email` its only owner.
    pub fn tenant(&self, name: &str, display_name: &str, email: &str) -> Value {
        let mut spec = json!({
            "displayName": display_name,
            "tier": self.tier.as_str(),
            "region": self.region,
            "owners": [{"kind": "User", "name": email}],
        });
        if let Some(c) = &self.currency {
            spec["billing"] = json!({"customer": "create", "currency": c});
        }
        json!({
            "apiVersion": alcove_crds::API_VERSION,
            "kind": "Tenant",
            "metadata": {"name": name, "labels": {LABEL: "dashboard"}},
            "spec": spec,
        })
    }
}

/// A Tenant name from the account's name and a random suffix: `acme-bakery-3f2a9c`. Letters
/// and digits of the name, at most 24 of them with dashes, so the namespace name stays short.
pub fn tenant_name(display_name: &str, suffix: &str) -> String {
    let mut slug = String::new();
    for c in display_name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            slug.push(c);
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
        if slug.len() >= 24 {
            break;
        }
    }
    let slug = slug.trim_end_matches('-');
    match slug.chars().next() {
        Some(c) if c.is_ascii_lowercase() => format!("{slug}-{suffix}"),
        Some(_) => format!("t-{slug}-{suffix}"),
        None => format!("account-{suffix}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_object_names_from_the_account_name() {
        assert_eq!(tenant_name("Acme Bakery!", "3f2a9c"), "acme-bakery-3f2a9c");
        assert_eq!(tenant_name("  Ünïcode  ", "3f2a9c"), "n-code-3f2a9c");
        assert_eq!(tenant_name("42 Labs", "00aa11"), "t-42-labs-00aa11");
        assert_eq!(tenant_name("日本", "00aa11"), "account-00aa11");
        let long = tenant_name(&"very long name ".repeat(10), "00aa11");
        assert!(long.len() <= 24 + 7, "{long}");
        for n in [long, tenant_name("--x--", "0")] {
            assert!(crate::forms::name_error(&n).is_none(), "{n}");
        }
    }

    #[test]
    fn the_settings_make_only_accounts_that_can_run() {
        let s = Signup::new("basic", "tw-taipei-1", Some("USD"), 20).unwrap();
        let t = s.tenant("acme-3f2a9c", "Acme", "ada@acme.example");
        assert_eq!(t["metadata"]["labels"][LABEL], "dashboard");
        assert_eq!(
            t["spec"],
            json!({"displayName": "Acme", "tier": "basic", "region": "tw-taipei-1",
                   "owners": [{"kind": "User", "name": "ada@acme.example"}],
                   "billing": {"customer": "create", "currency": "usd"}})
        );
        let t: alcove_crds::tenant::Tenant = serde_json::from_value(t).unwrap();
        assert_eq!(t.spec.tier, Tier::Basic);
        let free = Signup::new("free", "tw-taipei-1", None, 1).unwrap();
        assert!(free.tenant("a-1", "A", "a@b.example")["spec"].get("billing").is_none());
        assert!(Signup::new("pro", "tw-taipei-1", None, 1).unwrap_err().contains("free or basic"));
        assert!(Signup::new("free", "Taipei", None, 1).unwrap_err().contains("tw-taipei-1"));
        assert!(Signup::new("free", "tw-taipei-1", Some("dollars"), 1).is_err());
        assert!(Signup::new("free", "tw-taipei-1", None, 0).is_err());
    }
}
