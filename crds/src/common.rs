//! Names and small types shared by the three kinds.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

pub const GROUP: &str = "alcove.dev";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "alcove.dev/v1alpha1";

/// Every child object carries the tenant it belongs to, so one label selector finds all of a
/// tenant's objects (and retention can find released volumes after their owner is gone).
pub const LABEL_TENANT: &str = "alcove.dev/tenant";
/// Children of an InferenceInstance.
pub const LABEL_INSTANCE: &str = "alcove.dev/instance";
/// Children of a KnowledgeBase.
pub const LABEL_KNOWLEDGE_BASE: &str = "alcove.dev/knowledge-base";
/// Which retention rule governs a volume (see `policy::DataClass`).
pub const LABEL_DATA_CLASS: &str = "alcove.dev/data-class";
/// RFC 3339 deadline after which retention erases a released volume.
pub const ANNOTATION_RETAIN_UNTIL: &str = "alcove.dev/retain-until";
/// On a model-cache volume: the `spec.model.source.uri` it holds.
pub const ANNOTATION_MODEL_URI: &str = "alcove.dev/model-uri";
/// Setting this annotation on an InferenceInstance to a new value rotates its API key.
pub const ANNOTATION_ROTATE_API_KEY: &str = "alcove.dev/rotate-api-key";
/// The only field manager the operator writes with (server-side apply).
pub const FIELD_MANAGER: &str = "alcove-operator";

/// Condition types used across the kinds.
pub mod condition {
    pub const READY: &str = "Ready";
    pub const QUOTA_APPLIED: &str = "QuotaApplied";
    pub const ISOLATION_APPLIED: &str = "IsolationApplied";
    pub const SCHEDULED: &str = "Scheduled";
    pub const QUOTA_AVAILABLE: &str = "QuotaAvailable";
    pub const BILLING: &str = "Billing";
    pub const INDEXED: &str = "Indexed";
    /// `status` values of a condition.
    pub const TRUE: &str = "True";
    pub const FALSE: &str = "False";
}

/// Condition reasons the operator sets that code (the operator's, the tests') branches on or
/// waits for; the others are free text for people.
pub mod reason {
    /// Tenant `Billing`: credit is used up; the instances are suspended after the grace.
    pub const CREDIT_EXHAUSTED: &str = "CreditExhausted";
    /// Tenant `Billing`: balance under the low-balance threshold.
    pub const LOW_BALANCE: &str = "LowBalance";
    /// Tenant `Billing`: the account is in good standing.
    pub const ACTIVE: &str = "Active";
    /// `Billing`: no Stripe key, nobody is charged.
    pub const DISABLED: &str = "Disabled";
    /// `Billing`: the tenant has no `spec.billing`.
    pub const NOT_CHARGED: &str = "NotCharged";
    /// Tenant `Billing`: the Stripe customer could not be set up.
    pub const STRIPE_ERROR: &str = "StripeError";
    /// Instance `Billing`: GPU time is reported to Stripe.
    pub const METERED: &str = "Metered";
    /// Instance `Ready`: suspended by `spec.state`.
    pub const SUSPENDED: &str = "Suspended";
    /// Instance `Ready` and knowledge base `Indexed`: the tenant declares sensitive data
    /// without a consent record for it.
    pub const CONSENT_REQUIRED: &str = "ConsentRequired";
    /// Stopped for want of requests (`spec.idleTimeout`).
    pub const IDLE: &str = "Idle";
    /// Instance `Scheduled`: no node fits (the scheduler's reason).
    pub const UNSCHEDULABLE: &str = "Unschedulable";
    /// Instance or knowledge base: the tenant's quota has no room.
    pub const QUOTA_EXCEEDED: &str = "QuotaExceeded";
    /// Instance or knowledge base: the spec cannot be served.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Instance `Ready`: the model could not be fetched from `spec.model.source.uri` and
    /// retrying cannot help (not found, refused credentials, a wrong digest, too large).
    pub const MODEL_FETCH_FAILED: &str = "ModelFetchFailed";
}

/// Where model weights come from. Exactly one of the fields is set (enforced by the schema).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSource {
    /// URI fetched into the tenant's model cache by an init step before the server starts:
    /// `https://…/file.gguf` or `http://…` (one GGUF file), `s3://bucket/key.gguf` or
    /// `s3://bucket/prefix/` (the platform's S3-compatible store), or `hf://org/repo[@revision]`
    /// (a model hub). From a directory (a prefix, a repository): the one GGUF file, or a
    /// safetensors model with its config and tokenizer. Instances of the same source share one
    /// download.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^(https?|s3|hf)://[^\s]+$"))]
    pub uri: Option<String>,
    /// A Secret in the same namespace with the credentials for `uri`: key `header` (one
    /// `Name: value` header line sent to the URI's host, e.g. `Authorization: Bearer …`),
    /// `token` (the model hub's access token), or `accessKeyId` and `secretAccessKey` (and
    /// `sessionToken`) for S3. Mounted only into the fetch step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub credentials_secret: Option<String>,
    /// A PersistentVolumeClaim in the same namespace that already holds the model; mounted
    /// read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcModelSource>,
    /// The name of a model the platform provides read-only on its GPU nodes (see the operator's
    /// `platformModels` configuration), e.g. `tiny-llama`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub platform: Option<String>,
}

/// A model held on a PersistentVolumeClaim.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcModelSource {
    /// Name of the PersistentVolumeClaim, in the same namespace as the referring object.
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
}

impl ModelSource {
    /// How many of the alternatives are set; the schema insists on exactly one.
    pub fn count_set(&self) -> usize {
        [self.uri.is_some(), self.pvc.is_some(), self.platform.is_some()]
            .into_iter()
            .filter(|set| *set)
            .count()
    }
}

/// The CEL rule enforcing "exactly one source", shared by every struct embedding a ModelSource.
pub const EXACTLY_ONE_MODEL_SOURCE: &str =
    "[has(self.uri), has(self.pvc), has(self.platform)].filter(x, x).size() == 1";

/// What the gateway publishes about each instance it serves, for the operator: a ConfigMap
/// `usage-<instance uid>` in the gateway's (and operator's) namespace, written at most once a
/// minute per instance while it is used, and at once when a request wakes an idle instance.
pub mod gateway_usage {
    /// Label on every usage ConfigMap (value `gateway`).
    pub const LABEL: &str = "alcove.dev/usage";
    pub const FIELD_MANAGER: &str = "alcove-gateway";
    pub const TENANT: &str = "tenant";
    pub const NAMESPACE: &str = "namespace";
    pub const INSTANCE: &str = "instance";
    pub const INSTANCE_UID: &str = "instanceUid";
    /// Totals over the instance's life, from the usage store (decimal integers).
    pub const REQUESTS: &str = "requests";
    pub const PROMPT_TOKENS: &str = "promptTokens";
    pub const COMPLETION_TOKENS: &str = "completionTokens";
    /// The last request's time (RFC 3339, milliseconds).
    pub const LAST_REQUEST_AT: &str = "lastRequestAt";
    /// A request waits for this instance, seen idle since this `status.idleSince`: that idling
    /// ends. (The instance's own value, not a time of the gateway's: no clock skew matters.)
    pub const WAKE_FOR_IDLE_SINCE: &str = "wakeForIdleSince";
    /// `"true"`: the instance is being deleted and these totals are the last.
    pub const LAST_WORD: &str = "lastWord";

    pub fn name(instance_uid: &str) -> String {
        format!("usage-{instance_uid}")
    }
}
