//! `InferenceInstance`: a dedicated GPU pod serving a model behind its own API key.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, ModelSource};

/// Desired state of an inference instance: a GPU pod running `alcove-inference`, with an
/// OpenAI-compatible API behind its own key. Deleting the instance destroys the pod at once and
/// stops billing. Written by people and GitOps only, never by the operator.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "alcove.dev",
    version = "v1alpha1",
    kind = "InferenceInstance",
    plural = "inferenceinstances",
    singular = "inferenceinstance",
    shortname = "inst",
    category = "alcove",
    namespaced,
    status = "InferenceInstanceStatus",
    derive = "PartialEq",
    doc = "A dedicated GPU inference server with an OpenAI-compatible API and its own API key.",
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.model.format"),
    printcolumn(name = "GPUs", type_ = "integer", json_path = ".spec.gpu.count"),
    printcolumn(name = "State", type_ = "string", json_path = ".spec.state"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint"),
    printcolumn(name = "Node", type_ = "string", json_path = ".status.node", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(
    validation = Rule::new("self.limits.maxTokens <= self.limits.contextLength").message("spec.limits.maxTokens must not exceed spec.limits.contextLength"),
)]
#[serde(rename_all = "camelCase")]
pub struct InferenceInstanceSpec {
    /// The model to serve.
    pub model: ModelSpec,

    /// GPUs for the instance's pod (exclusive to it).
    #[serde(default)]
    pub gpu: GpuSpec,

    /// System prompt prepended to every chat. Stored in a ConfigMap in the tenant namespace;
    /// never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32768))]
    pub system_prompt: Option<String>,

    /// KnowledgeBases (in the same namespace) used for retrieval.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub knowledge_bases: Vec<KnowledgeBaseRef>,

    /// `Running` serves; `Suspended` deletes the pod (billing stops) and keeps volumes and key.
    #[serde(default)]
    pub state: InstanceState,

    /// Stop the pod after this long without a request through the gateway (e.g. `15m`): phase
    /// `Idle`, GPU billing stops, volumes and key are kept, and the next request wakes it. Unset:
    /// the pod runs until suspended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[1-9][0-9]{0,5}[mhd]$"), length(max = 7))]
    pub idle_timeout: Option<String>,

    /// Token limits the server enforces.
    #[serde(default)]
    pub limits: Limits,

    /// CPU and memory for the server container (GPUs come from `gpu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ComputeResources>,
}

/// The model an instance serves.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.format != 'gguf' || has(self.source.uri) || (has(self.path) && self.path.endsWith('.gguf'))").message("spec.model.path must name the .gguf file when spec.model.format is gguf and the source is a volume"),
    validation = Rule::new("!has(self.sha256) || has(self.source.uri)").message("spec.model.sha256 checks a download: it needs spec.model.source.uri"),
    validation = Rule::new("!has(self.source.credentialsSecret) || has(self.source.uri)").message("spec.model.source.credentialsSecret is for spec.model.source.uri"),
)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// `safetensors`: a directory with config.json, tokenizer.json and *.safetensors.
    /// `gguf`: a single quantized GGUF file.
    pub format: ModelFormat,
    /// Where the weights come from: exactly one of `uri`, `pvc`, `platform`.
    #[x_kube(validation = Rule::new("[has(self.uri), has(self.pvc), has(self.platform)].filter(x, x).size() == 1").message("spec.model.source must set exactly one of uri, pvc, platform"))]
    pub source: ModelSource,
    /// Path inside the source volume: the model directory (safetensors) or the .gguf file.
    /// Relative, without `..`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^[^/]"))]
    #[x_kube(validation = Rule::new("!self.split('/').exists(s, s == '..')").message("spec.model.path must not contain '..'"))]
    pub path: Option<String>,
    /// SHA-256 (64 hex digits) of the weights file fetched from `source.uri` (the `.gguf` file,
    /// or the one `.safetensors` file). A download with another digest fails the instance with
    /// both digests and is never served. Unset: the hub's digests are checked, or the server's
    /// ETag is recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Fa-f0-9]{64}$"))]
    pub sha256: Option<String>,
    /// The model name clients pass as `model` in API requests. Defaults to the instance name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$"))]
    pub served_name: Option<String>,
}

/// On-disk model format.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    Safetensors,
    Gguf,
}

impl ModelFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelFormat::Safetensors => "safetensors",
            ModelFormat::Gguf => "gguf",
        }
    }
}

/// GPU request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("!has(self.migProfile) || self.count == 1").message("spec.gpu.count must be 1 when spec.gpu.migProfile is set (a MIG slice is one device)"),
)]
#[serde(rename_all = "camelCase")]
pub struct GpuSpec {
    /// Number of GPUs, 1 to 8, all on one node.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 8))]
    pub count: i32,
    /// GPU product as labelled on nodes (`nvidia.com/gpu.product`), e.g. `NVIDIA-H100-80GB-HBM3`.
    /// Absent: any product.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
    )]
    pub product: Option<String>,
    /// A MIG profile such as `1g.10gb`: the instance gets that slice (`nvidia.com/mig-<profile>`)
    /// instead of a whole GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[1-7]g\.[0-9]{1,3}gb$"))]
    pub mig_profile: Option<String>,
}

impl Default for GpuSpec {
    fn default() -> Self {
        GpuSpec { count: 1, product: None, mig_profile: None }
    }
}

fn one() -> i32 {
    1
}

/// Reference to a KnowledgeBase.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KnowledgeBaseRef {
    /// Name of the KnowledgeBase.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the KnowledgeBase. Only the instance's own namespace is allowed; any other is
    /// refused by the operator (a tenant's documents never cross namespaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// Desired run state.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum InstanceState {
    #[default]
    Running,
    Suspended,
}

/// Token limits.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Most tokens one request may generate.
    #[serde(default = "default_max_tokens")]
    #[schemars(range(min = 1, max = 32768))]
    pub max_tokens: i32,
    /// Context window (prompt plus completion) in tokens; capped by the model's own.
    #[serde(default = "default_context")]
    #[schemars(range(min = 128, max = 131072))]
    pub context_length: i32,
    /// Requests per minute the gateway lets through with this instance's key; the tier's default
    /// from the operator configuration when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub requests_per_minute: Option<i32>,
    /// Prompt plus completion tokens per minute the gateway lets through with this instance's key;
    /// the tier's default from the operator configuration when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000000))]
    pub tokens_per_minute: Option<i64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_tokens: default_max_tokens(),
            context_length: default_context(),
            requests_per_minute: None,
            tokens_per_minute: None,
        }
    }
}

fn default_max_tokens() -> i32 {
    512
}
fn default_context() -> i32 {
    4096
}

/// CPU and memory requests (also used as limits).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComputeResources {
    /// CPU, as a Kubernetes quantity (`4`, `500m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?m?$"), length(max = 16))]
    pub cpu: Option<String>,
    /// Memory, as a Kubernetes quantity (`16Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"), length(max = 16))]
    pub memory: Option<String>,
}

/// Observed state of an instance, written by the operator only.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferenceInstanceStatus {
    /// `Pending`, `Downloading`, `Provisioning`, `Ready`, `Suspended`, `Idle`, `Failed` or
    /// `Terminating`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<InstancePhase>,
    /// Why the instance is in its phase, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// In-cluster URL of the OpenAI-compatible API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Name of the Secret (key `api-key`) holding the instance's API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret: Option<String>,
    /// SHA-256 of the API key, as hex: what the gateway compares a presented key against, so it
    /// never needs the key itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_hash: Option<String>,
    /// The rate limits in force at the gateway: `spec.limits`, or the tier's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<RateLimits>,
    /// `Ready`, `Scheduled`, `QuotaAvailable`, `Billing`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The node the pod runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// When the instance went idle (RFC 3339): no request for `spec.idleTimeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since: Option<String>,
    /// When the current run's pod became Ready (RFC 3339); billing starts here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// Usage up to this instant has been reported to billing (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billed_through: Option<String>,
    /// GPU-seconds accumulated over the instance's life.
    #[serde(default)]
    pub gpu_seconds: i64,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The model-cache volume (PersistentVolumeClaim) holding a model fetched from
    /// `spec.model.source.uri`; instances of the same source share it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_cache: Option<String>,
    /// While the model downloads (phase `Downloading`): how far it got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download: Option<DownloadStatus>,
}

/// Progress of a model download, updated every few seconds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DownloadStatus {
    /// The URI being fetched.
    pub uri: String,
    pub bytes_done: i64,
    /// Total bytes, when the source says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<i64>,
    pub bytes_per_second: i64,
    /// The revision being fetched: the hub's commit, or a digest of the ETag or of `sha256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// `true` while another instance downloads the same source and this one waits for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub waiting: bool,
}

/// Requests and tokens per minute allowed through the gateway.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimits {
    pub requests_per_minute: i64,
    pub tokens_per_minute: i64,
}

/// Lifecycle phase of an instance.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum InstancePhase {
    Pending,
    /// The pod is placed and its model is being fetched from `spec.model.source.uri`.
    Downloading,
    Provisioning,
    Ready,
    Suspended,
    /// Stopped for want of requests (`spec.idleTimeout`); a request through the gateway wakes it.
    Idle,
    Failed,
    Terminating,
}
