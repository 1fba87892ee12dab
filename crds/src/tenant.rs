//! `Tenant`: a customer of the platform, turned into an isolated namespace.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::Condition;
use crate::policy::Tier;

/// Desired state of a tenant. The operator gives it a namespace `tenant-<name>` with quota,
/// default-deny network policy, RBAC for its owners, an encryption key, placement rules for its
/// tier and region, and a billing account. Written by people and GitOps only, never by the operator.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "alcove.dev",
    version = "v1alpha1",
    kind = "Tenant",
    plural = "tenants",
    singular = "tenant",
    shortname = "tn",
    category = "alcove",
    status = "TenantStatus",
    derive = "PartialEq",
    doc = "A tenant of the platform: an isolated namespace with quota, policies, RBAC, an encryption key, placement and billing.",
    printcolumn(name = "Tier", type_ = "string", json_path = ".spec.tier"),
    printcolumn(name = "Region", type_ = "string", json_path = ".spec.region"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Instances", type_ = "integer", json_path = ".status.instances"),
    printcolumn(name = "GPUs", type_ = "integer", json_path = ".status.gpusInUse"),
    printcolumn(name = "Credit", type_ = "string", json_path = ".status.billing.balanceDisplay"),
    printcolumn(name = "Namespace", type_ = "string", json_path = ".status.namespace", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 56").message("metadata.name must be at most 56 characters: the tenant namespace tenant-<name> is limited to 63"),
)]
#[x_kube(
    validation = Rule::new("self.tier != 'free' || !has(self.quota) || !has(self.quota.maxKnowledgeBases) || self.quota.maxKnowledgeBases == 0").message("spec.quota.maxKnowledgeBases must be 0 when spec.tier is free: the free tier has no knowledge-base storage"),
    validation = Rule::new("self.tier == 'enterprise' || !has(self.placement)").message("spec.placement may only be set when spec.tier is enterprise (other tiers are placed by the platform)"),
    validation = Rule::new("self.tier != 'enterprise' || (has(self.placement) && size(self.placement.nodeSelector) > 0)").message("spec.placement.nodeSelector is required when spec.tier is enterprise: it names the nodes the customer brings"),
    validation = Rule::new(format!("!has(self.retention) || !has(self.retention.accountData) || self.tier == 'free' || {} >= 10080", window_minutes("self.retention.accountData"))).message("spec.retention.accountData must be at least 7d on paid tiers (the legal minimum for disputing an account deletion)"),
)]
#[serde(rename_all = "camelCase")]
pub struct TenantSpec {
    /// Human-readable name shown in the dashboard.
    #[schemars(length(min = 1, max = 128))]
    pub display_name: String,

    /// Where notices about this tenant go (credit, suspension, deletion, erasure). Absent: every
    /// `User` owner. Owners may change it in the dashboard once the new address proves itself
    /// with a code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 254), regex(pattern = r"^[^@\s]+@[^@\s]+$"))]
    pub contact_email: Option<String>,

    /// Service tier: `free` and `basic` share a GPU pool, `pro` gets nodes dedicated to the
    /// tenant, `enterprise` runs on nodes the customer brings (see `placement`).
    pub tier: Tier,

    /// Data-residency region, e.g. `tw-taipei-1`. Only nodes labelled
    /// `topology.kubernetes.io/region=<region>` are ever used. Immutable once set.
    #[schemars(length(min = 4, max = 63), regex(pattern = r"^[a-z]{2}-[a-z0-9]+-[0-9]+$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.region is immutable: a tenant's data never moves to another region"))]
    pub region: String,

    /// Resource limits enforced with a ResourceQuota in the tenant namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<TenantQuota>,

    /// Users and groups given tenant-admin rights in the tenant namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub owners: Vec<Owner>,

    /// Billing account and credit policy. Absent: usage is recorded but nobody is charged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing: Option<BillingSpec>,

    /// Retention windows per data class. A window may be shortened (never lengthened past the
    /// product's promise) and never below a legal minimum. Absent fields take the tier's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionSpec>,

    /// While true, retention erases nothing of this tenant; lifting it resumes the timers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub legal_hold: bool,

    /// Enterprise tier only: the customer's own nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementSpec>,

    /// Sensitive categories of data this tenant's instances and knowledge bases will process
    /// (`medical`, `financial`, `criminalRecord`). Each needs the customer's explicit written
    /// consent first: until `consents` holds a reference for every one, the operator creates
    /// no instance pod and indexes no knowledge base of this tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    #[x_kube(validation = Rule::new("self.all(c, self.exists_one(d, d == c))").message("spec.sensitiveData lists each category once"))]
    pub sensitive_data: Vec<SensitiveCategory>,

    /// The platform's records of the customer's explicit written consent, one per sensitive
    /// category (where the signed document is kept). Written by the platform team, never by
    /// the customer or the operator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    #[x_kube(validation = Rule::new("self.all(c, self.exists_one(d, d.category == c.category))").message("spec.consents has one record per category"))]
    pub consents: Vec<Consent>,
}

/// A category of sensitive data that needs explicit written consent before it is processed.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum SensitiveCategory {
    Medical,
    Financial,
    CriminalRecord,
}

impl SensitiveCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            SensitiveCategory::Medical => "medical",
            SensitiveCategory::Financial => "financial",
            SensitiveCategory::CriminalRecord => "criminalRecord",
        }
    }

    /// For people: "criminal-record".
    pub fn words(self) -> &'static str {
        match self {
            SensitiveCategory::Medical => "medical",
            SensitiveCategory::Financial => "financial",
            SensitiveCategory::CriminalRecord => "criminal-record",
        }
    }
}

/// A record of explicit written consent for one sensitive category.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Consent {
    pub category: SensitiveCategory,
    /// Where the signed consent is kept: a document id, a contract number, a ticket.
    #[schemars(length(min = 1, max = 253))]
    pub reference: String,
}

impl RetentionSpec {
    /// The window this spec asks for `class`, as written (e.g. `3d`), if it names one.
    pub fn get(&self, class: crate::policy::DataClass) -> Option<&str> {
        use crate::policy::DataClass;
        match class {
            DataClass::ConversationHistory => self.conversation_history.as_deref(),
            DataClass::KnowledgeBase => self.knowledge_base.as_deref(),
            DataClass::StagedDocuments => self.staged_documents.as_deref(),
            DataClass::ModelCache => self.model_cache.as_deref(),
            DataClass::AccountData => self.account_data.as_deref(),
            DataClass::BillingRecords => self.billing_records.as_deref(),
        }
    }
}

/// The sensitive categories a tenant declares without a consent record, in order; empty when
/// everything declared is consented to.
pub fn missing_consents(spec: &TenantSpec) -> Vec<SensitiveCategory> {
    let mut missing: Vec<SensitiveCategory> = spec
        .sensitive_data
        .iter()
        .copied()
        .filter(|c| {
            !spec.consents.iter().any(|k| k.category == *c && !k.reference.trim().is_empty())
        })
        .collect();
    missing.sort();
    missing.dedup();
    missing
}

/// Why a tenant's instances and knowledge bases wait, in words (see [`missing_consents`]).
pub fn consent_refusal(tenant: &str, spec: &TenantSpec) -> Option<String> {
    let missing = missing_consents(spec);
    if missing.is_empty() {
        return None;
    }
    let names: Vec<&str> = missing.iter().map(|c| c.as_str()).collect();
    Some(format!(
        "tenant {tenant} declares {} data in spec.sensitiveData without a consent record in spec.consents: nothing is started until the platform records the customer's explicit written consent for each",
        names.join(", ")
    ))
}

/// Limits for the tenant namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantQuota {
    /// Most GPUs the tenant's instances may request in total.
    #[serde(default = "default_max_gpus")]
    #[schemars(range(min = 0, max = 256))]
    pub max_gpus: i32,
    /// Most InferenceInstances the tenant may run at once.
    #[serde(default = "default_max_instances")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_instances: i32,
    /// Most persistent storage (history, knowledge bases), as a Kubernetes quantity, e.g. `100Gi`.
    #[serde(default = "default_max_storage")]
    #[schemars(
        regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"),
        length(max = 32)
    )]
    pub max_storage: String,
    /// Most KnowledgeBases the tenant may create. Must be 0 on the free tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_knowledge_bases: Option<i32>,
}

/// A retention window (`90m`, `24h`, `30d`, as `Window` parses it) in minutes, as CEL over the
/// string at `path`.
fn window_minutes(path: &str) -> String {
    format!(
        "(int({path}.substring(0, size({path}) - 1)) * ({path}.endsWith('d') ? 1440 : ({path}.endsWith('h') ? 60 : 1)))"
    )
}

/// The rule bounding one retention window: `op` is `<=` for a promise's maximum, `>=` for a
/// legal minimum.
fn window_rule(op: &str, minutes: u64, message: &str) -> kube::core::Rule {
    kube::core::Rule::new(format!("{} {op} {minutes}", window_minutes("self"))).message(message)
}

fn default_max_gpus() -> i32 {
    1
}
fn default_max_instances() -> i32 {
    2
}
fn default_max_storage() -> String {
    "20Gi".into()
}

/// A user or group given tenant-admin rights.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    /// `User` or `Group`, as in an RBAC subject.
    pub kind: OwnerKind,
    /// The user or group name as the cluster's authenticator reports it.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Kind of an owner subject.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum OwnerKind {
    User,
    Group,
}

/// The namespace a tenant's objects live in: `tenant-<name>`.
pub fn namespace_of(tenant: &str) -> String {
    format!("tenant-{tenant}")
}

/// The group whose members administer a tenant (besides `spec.owners`); the dashboard
/// impersonates it for the tenant's owners.
pub fn admin_group(tenant: &str) -> String {
    format!("alcove:tenant:{tenant}")
}

impl OwnerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OwnerKind::User => "User",
            OwnerKind::Group => "Group",
        }
    }
}

/// How the tenant pays.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BillingSpec {
    /// `create` to have the operator create a Stripe Customer, or the id of an existing one
    /// (`cus_...`). Immutable once set.
    #[serde(default = "default_customer")]
    #[schemars(regex(pattern = r"^(create|cus_[A-Za-z0-9]{1,64})$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.billing.customer is immutable: the billing account of a tenant never changes"))]
    pub customer: String,
    /// ISO 4217 currency, lower case (`usd`, `eur`, `twd`).
    #[serde(default = "default_currency")]
    #[schemars(regex(pattern = r"^[a-z]{3}$"))]
    pub currency: String,
    /// Credit (in the currency's minor unit, e.g. cents) below which a low-balance Event and
    /// metric are raised.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub low_balance_threshold: i64,
    /// How long instances keep running after credit reaches zero before they are suspended,
    /// e.g. `15m`.
    #[serde(default = "default_grace")]
    #[schemars(regex(pattern = r"^[1-9][0-9]{0,5}[mhd]$"), length(max = 7))]
    pub suspend_grace_period: String,
}

fn default_customer() -> String {
    "create".into()
}
fn default_currency() -> String {
    "usd".into()
}
fn default_grace() -> String {
    "15m".into()
}

/// Retention windows, each a duration like `90m`, `24h` or `30d`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// How long an instance's conversation history is kept after the instance is destroyed.
    /// Default and maximum `7d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[1-9][0-9]{0,5}[mhd]$"), length(max = 7))]
    #[x_kube(validation = window_rule("<=", 10080, "spec.retention.conversationHistory may not exceed 7d (the product's promise)"))]
    pub conversation_history: Option<String>,
    /// How long a knowledge base's volume is kept after the KnowledgeBase is deleted.
    /// Default and maximum `7d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[1-9][0-9]{0,5}[mhd]$"), length(max = 7))]
    #[x_kube(validation = window_rule("<=", 10080, "spec.retention.knowledgeBase may not exceed 7d (the product's promise)"))]
    pub knowledge_base: Option<String>,
    /// How long documents staged for an indexing job are kept after the job ends.
    /// Default and maximum `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[1-9][0-9]{0,5}[mhd]$"), length(max = 7))]
    #[x_kube(validation = window_rule("<=", 60, "spec.retention.stagedDocuments may not exceed 1h (the product's promise)"))]
    pub staged_documents: Option<String>,
    /// How long model caches are kept after the last instance using them is destroyed.
    /// Default and maximum `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[1-9][0-9]{0,5}[mhd]$"), length(max = 7))]
    #[x_kube(validation = window_rule("<=", 1440, "spec.retention.modelCache may not exceed 24h (the product's promise)"))]
    pub model_cache: Option<String>,
    /// How long the tenant's remaining data is kept after the Tenant is deleted (the erase
    /// window). Default and maximum `30d`; at least `7d` on paid tiers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[1-9][0-9]{0,5}[mhd]$"), length(max = 7))]
    #[x_kube(validation = window_rule("<=", 43200, "spec.retention.accountData may not exceed 30d (the product's promise)"))]
    pub account_data: Option<String>,
    /// How long billing records are kept. At least `2555d` (7 years, the legal minimum);
    /// retention never erases them before that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[1-9][0-9]{0,5}[mhd]$"), length(max = 7))]
    #[x_kube(validation = window_rule(">=", 3679200, "spec.retention.billingRecords must be at least 2555d (7 years, the legal minimum)"))]
    pub billing_records: Option<String>,
}

/// Where an enterprise tenant's instances run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlacementSpec {
    /// Labels selecting the customer's nodes. Always combined with the region label.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations for taints on the customer's nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

/// Observed state of a tenant, written by the operator only.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// The tenant namespace, `tenant-<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `Pending`, `Ready`, `Degraded`, `Terminating` or `Erasing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<TenantPhase>,
    /// `Ready`, `QuotaApplied`, `IsolationApplied`, `Billing`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Node selector and tolerations every instance of the tenant gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<ResolvedPlacement>,
    /// InferenceInstances in the tenant namespace.
    #[serde(default)]
    pub instances: i32,
    /// GPUs held by the tenant's running instances.
    #[serde(default)]
    pub gpus_in_use: i32,
    /// Mirror of the billing account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing: Option<BillingStatus>,
    /// Erasures performed for this tenant (the durable receipts live in the operator namespace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub erasure: Vec<ErasureRecord>,
    /// When the tenant's data is erased, once the Tenant has been deleted (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erase_after: Option<String>,
    /// The key the tenant's conversation history is encrypted with: its Secret and when it was
    /// made (the key itself is never in the status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_key: Option<EncryptionKey>,
}

/// Where a tenant's encryption key is and how old it is.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionKey {
    /// The Secret in the tenant namespace that holds it.
    pub secret: String,
    /// When it was made (RFC 3339).
    pub created_at: String,
}

/// Lifecycle phase of a tenant.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TenantPhase {
    Pending,
    Ready,
    Degraded,
    Terminating,
    Erasing,
}

/// The placement the operator derived from tier, region and spec.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedPlacement {
    /// Node selector every instance pod of the tenant gets (always includes the region).
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations every instance pod of the tenant gets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

/// Billing account state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BillingStatus {
    /// The Stripe Customer id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// Currency of the amounts below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// Credit in minor units: prepaid credit minus usage billed and not yet billed.
    #[serde(default)]
    pub balance: i64,
    /// Top-ups received (minor units), each Stripe payment counted once.
    #[serde(default)]
    pub credited: i64,
    /// Usage reported to Stripe as invoice items (minor units).
    #[serde(default)]
    pub billed: i64,
    /// Usage (minor units) of running instances not yet reported to Stripe.
    #[serde(default)]
    pub unbilled: i64,
    /// The balance formatted for people, e.g. `12.34 usd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance_display: Option<String>,
    /// When credit reached zero (RFC 3339); instances are suspended a grace period later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exhausted_at: Option<String>,
    /// When the instances are (or were) suspended for lack of credit (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend_at: Option<String>,
}

/// One erasure performed by retention.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErasureRecord {
    /// What was erased, e.g. `PersistentVolumeClaim tenant-acme/history-chat`.
    pub what: String,
    /// The data class of what was erased.
    pub data_class: String,
    /// The deadline it was erased by (RFC 3339).
    pub deadline: String,
    /// When it was erased (RFC 3339).
    pub erased_at: String,
    /// The rule that decided the deadline, e.g. `conversationHistory=7d`.
    pub rule: String,
}

#[cfg(test)]
mod consent_tests {
    use super::*;

    fn spec(yaml: &str) -> TenantSpec {
        serde_saphyr::from_str(&format!("displayName: A\ntier: basic\nregion: tw-taipei-1\n{yaml}"))
            .unwrap()
    }

    #[test]
    fn every_declared_category_needs_its_own_consent_record() {
        assert!(missing_consents(&spec("")).is_empty(), "nothing declared, nothing needed");
        let s = spec(
            "sensitiveData: [medical, criminalRecord]\nconsents: [{category: medical, reference: DPA-2026-17}]\n",
        );
        assert_eq!(missing_consents(&s), vec![SensitiveCategory::CriminalRecord]);
        let why = consent_refusal("acme", &s).unwrap();
        assert!(
            why.contains("declares criminalRecord data") && why.contains("spec.consents"),
            "{why}"
        );
        let blank =
            spec("sensitiveData: [financial]\nconsents: [{category: financial, reference: ' '}]\n");
        assert_eq!(
            missing_consents(&blank),
            vec![SensitiveCategory::Financial],
            "a blank reference is none"
        );
        let all = spec(
            "sensitiveData: [financial]\nconsents: [{category: financial, reference: C-1}, {category: medical, reference: C-2}]\n",
        );
        assert_eq!(
            consent_refusal("acme", &all),
            None,
            "consent beyond what is declared is harmless"
        );
    }
}
