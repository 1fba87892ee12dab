//! `KnowledgeBase`: a tenant's documents, indexed into vectors on the tenant's own volume.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, ModelSource};

/// Desired state of a knowledge base: documents indexed for retrieval by the tenant's instances.
/// The index lives on a volume in the tenant namespace; a removed document's chunks are removed
/// from it. Written by people and GitOps only, never by the operator.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "alcove.dev",
    version = "v1alpha1",
    kind = "KnowledgeBase",
    plural = "knowledgebases",
    singular = "knowledgebase",
    shortname = "kb",
    category = "alcove",
    namespaced,
    status = "KnowledgeBaseStatus",
    derive = "PartialEq",
    doc = "Tenant documents indexed into vectors on the tenant's own volume, for retrieval by its instances.",
    printcolumn(name = "Documents", type_ = "integer", json_path = ".status.documents"),
    printcolumn(name = "Chunks", type_ = "integer", json_path = ".status.chunks"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Indexed", type_ = "date", json_path = ".status.indexedAt"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(
    validation = Rule::new("self.chunking.overlap < self.chunking.size").message("spec.chunking.overlap must be smaller than spec.chunking.size"),
)]
#[serde(rename_all = "camelCase")]
pub struct KnowledgeBaseSpec {
    /// Where the documents come from. Each source has a unique `name`.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub sources: Vec<DocumentSource>,

    /// Sentence-embedding model (BERT family, safetensors) used to index and to query.
    pub embedding_model: EmbeddingModel,

    /// How documents are cut into chunks before embedding.
    #[serde(default)]
    pub chunking: Chunking,

    /// Size of the index volume, as a Kubernetes quantity. Defaults to the tier's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"), length(max = 16))]
    pub storage: Option<String>,

    /// How many chunks an instance adds to a prompt per question.
    #[serde(default = "default_top_k")]
    #[schemars(range(min = 1, max = 20))]
    pub top_k: i32,
}

fn default_top_k() -> i32 {
    4
}

/// One document source: exactly one of `configMap`, `secret`, `inline`, `url`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("[has(self.configMap), has(self.secret), has(self.inline), has(self.url)].filter(x, x).size() == 1").message("spec.sources[] must set exactly one of configMap, secret, inline, url"),
)]
#[serde(rename_all = "camelCase")]
pub struct DocumentSource {
    /// Identifies the source; documents are reported as `<source>/<key>`.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Every key (or the listed keys) of a ConfigMap in the same namespace, one document per key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<KeysRef>,
    /// Every key (or the listed keys) of a Secret in the same namespace, one document per key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<KeysRef>,
    /// A document written in the spec itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 65536))]
    pub inline: Option<String>,
    /// An HTTP(S) URL the indexing job fetches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^\s]+$"))]
    pub url: Option<String>,
}

/// Keys of a ConfigMap or Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeysRef {
    /// Name of the ConfigMap or Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Keys to index; all keys when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
}

/// The embedding model.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddingModel {
    /// Where the weights come from: exactly one of `pvc`, `platform` (an embedding model is
    /// mounted from a volume; `uri` is for an instance's chat model).
    #[x_kube(validation = Rule::new("!has(self.uri) && [has(self.pvc), has(self.platform)].filter(x, x).size() == 1").message("spec.embeddingModel.source must set exactly one of pvc, platform (an embedding model is mounted from a volume, not fetched from a uri)"))]
    pub source: ModelSource,
    /// Directory of the model inside the source volume. Relative, without `..`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^[^/]"))]
    #[x_kube(validation = Rule::new("!self.split('/').exists(s, s == '..')").message("spec.embeddingModel.path must not contain '..'"))]
    pub path: Option<String>,
}

/// Chunking parameters, in characters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Chunking {
    /// Target chunk size in characters.
    #[serde(default = "default_chunk_size")]
    #[schemars(range(min = 64, max = 8192))]
    pub size: i32,
    /// Characters shared by consecutive chunks.
    #[serde(default = "default_overlap")]
    #[schemars(range(min = 0, max = 4096))]
    pub overlap: i32,
}

impl Default for Chunking {
    fn default() -> Self {
        Chunking { size: default_chunk_size(), overlap: default_overlap() }
    }
}

fn default_chunk_size() -> i32 {
    800
}
fn default_overlap() -> i32 {
    100
}

/// Observed state of a knowledge base, written by the operator only.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KnowledgeBaseStatus {
    /// `Pending`, `Indexing`, `Ready` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<KnowledgeBasePhase>,
    /// Documents in the current index.
    #[serde(default)]
    pub documents: i32,
    /// Chunks in the current index.
    #[serde(default)]
    pub chunks: i32,
    /// When the current index was written (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indexed_at: Option<String>,
    /// Hash of the sources the current index was built from; a change re-indexes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_hash: Option<String>,
    /// The PersistentVolumeClaim holding the index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// `Indexed`, `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Lifecycle phase of a knowledge base.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum KnowledgeBasePhase {
    Pending,
    Indexing,
    Ready,
    Failed,
}
