//! Tier and retention policy: the product's promises as numbers, in one place.
//!
//! The schema's CEL rules (in `tenant.rs`) encode the same limits; `tests/policy.rs` evaluates those
//! rules at the boundaries below so the two cannot drift apart.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Service tier of a tenant. Decides placement, storage and retention floors.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Shared, time-sliced GPU pool; no knowledge-base storage.
    Free,
    /// Shared GPU pool with knowledge bases.
    Basic,
    /// Nodes dedicated to the tenant (label and taint `alcove.dev/tenant=<name>`).
    Pro,
    /// Nodes the customer brings, chosen by `spec.placement.nodeSelector`.
    Enterprise,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Free, Tier::Basic, Tier::Pro, Tier::Enterprise];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Basic => "basic",
            Tier::Pro => "pro",
            Tier::Enterprise => "enterprise",
        }
    }

    pub fn is_paid(self) -> bool {
        self != Tier::Free
    }
}

/// Classes of data with their own retention rule.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub enum DataClass {
    /// An instance's conversation-history volume, after the instance is destroyed.
    ConversationHistory,
    /// A knowledge base's volume, after the KnowledgeBase is deleted.
    KnowledgeBase,
    /// Documents staged for an indexing job, after the job ends.
    StagedDocuments,
    /// Model caches on GPU infrastructure, after the last instance using them is destroyed.
    ModelCache,
    /// Everything else of a tenant, after the Tenant is deleted.
    AccountData,
    /// Billing records: kept for years, never erased by retention.
    BillingRecords,
}

impl DataClass {
    pub const ALL: [DataClass; 6] = [
        DataClass::ConversationHistory,
        DataClass::KnowledgeBase,
        DataClass::StagedDocuments,
        DataClass::ModelCache,
        DataClass::AccountData,
        DataClass::BillingRecords,
    ];

    /// The label value (`alcove.dev/data-class`) and the field name in `spec.retention`.
    pub fn as_str(self) -> &'static str {
        match self {
            DataClass::ConversationHistory => "conversationHistory",
            DataClass::KnowledgeBase => "knowledgeBase",
            DataClass::StagedDocuments => "stagedDocuments",
            DataClass::ModelCache => "modelCache",
            DataClass::AccountData => "accountData",
            DataClass::BillingRecords => "billingRecords",
        }
    }

    pub fn parse(s: &str) -> Option<DataClass> {
        DataClass::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The promised window when the tenant's spec says nothing.
    pub fn default_window(self) -> Window {
        match self {
            DataClass::ConversationHistory => Window::days(7),
            DataClass::KnowledgeBase => Window::days(7),
            DataClass::StagedDocuments => Window::hours(1),
            DataClass::ModelCache => Window::hours(24),
            DataClass::AccountData => Window::days(30),
            DataClass::BillingRecords => Window::days(BILLING_RECORDS_DAYS),
        }
    }

    /// The longest window a spec may ask for: the privacy promise. `None`: no upper bound
    /// (billing records may be kept longer than the law requires).
    pub fn max_window(self) -> Option<Window> {
        match self {
            DataClass::BillingRecords => None,
            other => Some(other.default_window()),
        }
    }

    /// The shortest window the law allows for this tier, where one exists.
    ///
    /// - Billing records: 7 years on every tier (tax record-keeping).
    /// - Account data on paid tiers: 7 days, the period the terms of service give a paying
    ///   customer to dispute an account deletion before it becomes irreversible.
    pub fn legal_minimum(self, tier: Tier) -> Option<Window> {
        match self {
            DataClass::BillingRecords => Some(Window::days(BILLING_RECORDS_DAYS)),
            DataClass::AccountData if tier.is_paid() => {
                Some(Window::days(PAID_ACCOUNT_DATA_MIN_DAYS))
            }
            _ => None,
        }
    }

    /// Whether retention ever erases data of this class.
    pub fn erasable(self) -> bool {
        self != DataClass::BillingRecords
    }
}

/// Billing records are kept 7 years (365 × 7 days).
pub const BILLING_RECORDS_DAYS: u64 = 2555;
/// Minimum account-data window on paid tiers.
pub const PAID_ACCOUNT_DATA_MIN_DAYS: u64 = 7;

/// A retention window, held in minutes (the finest unit the API accepts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Window {
    pub minutes: u64,
}

impl Window {
    pub const fn minutes(m: u64) -> Window {
        Window { minutes: m }
    }
    pub const fn hours(h: u64) -> Window {
        Window { minutes: h * 60 }
    }
    pub const fn days(d: u64) -> Window {
        Window { minutes: d * 1440 }
    }

    pub fn as_secs(self) -> u64 {
        self.minutes * 60
    }

    /// Parses the API's duration form: a positive integer of at most six digits followed by `m`,
    /// `h` or `d` (`90m`, `24h`, `30d`), exactly what the schema's pattern ([`DURATION_PATTERN`])
    /// admits. The bound matters where the schema was not applied (an object stored before it):
    /// the longest window, 999999 days, is still a date every timestamp type can reach.
    pub fn parse(s: &str) -> Option<Window> {
        let unit = s.chars().last()?;
        let digits = &s[..s.len() - unit.len_utf8()];
        if digits.is_empty()
            || digits.len() > 6
            || digits.starts_with('0')
            || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let n: u64 = digits.parse().ok()?;
        match unit {
            'm' => Some(Window::minutes(n)),
            'h' => Some(Window::hours(n)),
            'd' => Some(Window::days(n)),
            _ => None,
        }
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.minutes.is_multiple_of(1440) {
            write!(f, "{}d", self.minutes / 1440)
        } else if self.minutes.is_multiple_of(60) {
            write!(f, "{}h", self.minutes / 60)
        } else {
            write!(f, "{}m", self.minutes)
        }
    }
}

/// The regex every duration field in the API matches.
pub const DURATION_PATTERN: &str = r"^[1-9][0-9]{0,5}[mhd]$";

/// A CEL expression turning the duration string `x` into minutes, for rules comparing windows.
/// Uses `substring` from the Kubernetes CEL strings library.
pub fn cel_minutes(x: &str) -> String {
    format!(
        "(int({x}.substring(0, size({x}) - 1)) * ({x}.endsWith('d') ? 1440 : ({x}.endsWith('h') ? 60 : 1)))"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_windows() {
        assert_eq!(Window::parse("90m"), Some(Window::minutes(90)));
        assert_eq!(Window::parse("24h"), Some(Window::days(1)));
        assert_eq!(Window::parse("30d").unwrap().as_secs(), 30 * 86_400);
        for bad in ["", "d", "0d", "07d", "1w", "-1d", "1.5h", "ü"] {
            assert_eq!(Window::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Window::hours(48).to_string(), "2d");
        assert_eq!(Window::minutes(90).to_string(), "90m");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// `DURATION_PATTERN` (`^[1-9][0-9]{0,5}[mhd]$`), spelled out by hand.
        fn matches_pattern(s: &str) -> bool {
            let b = s.as_bytes();
            (2..=7).contains(&b.len())
                && (b'1'..=b'9').contains(&b[0])
                && b[1..b.len() - 1].iter().all(u8::is_ascii_digit)
                && matches!(b[b.len() - 1], b'm' | b'h' | b'd')
        }

        proptest! {
            /// Anything a client can type: the parser accepts exactly what the schema does.
            #[test]
            fn parse_accepts_exactly_the_schema_pattern(s in "\\PC{0,9}|[0-9]{0,25}[mhdw]?") {
                prop_assert_eq!(Window::parse(&s).is_some(), matches_pattern(&s), "{:?}", s);
            }

            #[test]
            fn every_window_prints_as_what_it_parses_from(n in 1u64..1_000_000, unit in 0usize..3) {
                let text = format!("{n}{}", ["m", "h", "d"][unit]);
                let w = Window::parse(&text).unwrap();
                prop_assert_eq!(w.as_secs(), n * [60, 3600, 86_400][unit]);
                let printed = w.to_string();
                prop_assert_eq!(Window::parse(&printed), Some(w), "{}", printed);
            }
        }
    }

    #[test]
    fn minimums_never_exceed_maximums() {
        for class in DataClass::ALL {
            for tier in [Tier::Free, Tier::Basic, Tier::Pro, Tier::Enterprise] {
                if let (Some(min), Some(max)) = (class.legal_minimum(tier), class.max_window()) {
                    assert!(min <= max, "{class:?} {tier:?}");
                }
                if let Some(min) = class.legal_minimum(tier) {
                    assert!(min <= class.default_window(), "{class:?} default below legal minimum");
                }
            }
        }
        assert!(!DataClass::BillingRecords.erasable());
    }
}
