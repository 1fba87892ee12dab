//! InferenceInstance → Pod, Service, API-key Secret, history PVC, system-prompt ConfigMap.
//! Pure functions, no I/O.
//!
//! The instance runs as a bare Pod the operator owns, not a one-replica StatefulSet: destroying an
//! instance must stop its process (and its billing) within a second, and a StatefulSet would put
//! its own controller and its own deletion ordering between our decision and the kubelet. The
//! things a StatefulSet would add — a stable name, a stable volume, re-creation after a node loss —
//! the operator provides directly (fixed names, a PVC it creates, re-creating a missing pod).

use std::collections::BTreeMap;

use alcove_crds::{
    DataClass, InferenceInstance, KnowledgeBase, LABEL_DATA_CLASS, LABEL_INSTANCE, ModelFormat,
    ModelSource, ResolvedPlacement,
};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    CSIVolumeSource, ConfigMap, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, Pod, PodSpec, Probe,
    ResourceRequirements, Secret, Service, ServicePort, ServiceSpec, Toleration, Volume,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use sha2::Digest;

use crate::config::{Config, TierConfig};
use crate::names::{COMPONENT_LABEL, INDEX_DIR, INSTANCE_PORT, KEY_SECRET};
use crate::objects::{
    config_map_volume, items, mount, pvc_volume, quantities, restricted_container_security,
    restricted_pod_security, secret_volume, string_map,
};

/// The Service's port (the pod serves on `INSTANCE_PORT`).
pub const SERVICE_PORT: i32 = 80;
/// Key of the API key inside its Secret.
pub const API_KEY_FIELD: &str = "api-key";
/// Key of the system prompt inside its ConfigMap.
pub const PROMPT_FIELD: &str = "system-prompt";
/// On the pod: hash of everything it was built from; a different hash means re-create it.
pub const POD_HASH: &str = "alcove.dev/pod-hash";
/// On the API-key Secret: the `alcove.dev/rotate-api-key` value its key was made for.
pub const KEY_ROTATION: &str = "alcove.dev/key-rotation";
/// On the API-key Secret: the SHA-256 of its key (published in the status anyway), so the
/// operator's cache of Secrets holds their metadata only, never the keys.
pub const KEY_HASH: &str = "alcove.dev/api-key-sha256";

const MODEL_DIR: &str = "/models";
const API_KEY_DIR: &str = "/etc/alcove/api-key";
const TENANT_KEY_DIR: &str = "/etc/alcove/tenant-key";
const PROMPT_DIR: &str = "/etc/alcove/prompt";
const HISTORY_DIR: &str = "/var/lib/alcove/history";
const EMBEDDING_DIR: &str = "/embedding-model";
const KB_DIR: &str = "/kb";
const MODEL_CREDENTIALS_DIR: &str = "/etc/alcove/model-credentials";
/// The pod's init container that fills the model cache from `spec.model.source.uri`.
pub const FETCH_CONTAINER: &str = "fetch";
/// The environment variable `alcove-inference fetch` reads extra CA certificates from.
const FETCH_CA_ENV: &str = "ALCOVE_FETCH_EXTRA_CA";

/// The Secret holding an instance's API key (key `api-key`).
pub fn api_key_secret_name(instance: &str) -> String {
    format!("{instance}-api-key")
}

pub fn prompt_config_map_name(instance: &str) -> String {
    format!("{instance}-system-prompt")
}

pub fn history_pvc_name(instance: &str) -> String {
    format!("{instance}-history")
}

/// The model-cache volume of an instance whose model comes from a URI: one per source (URI,
/// format, path and digest), so the tenant's instances of the same model share one download.
pub fn model_cache_claim_name(i: &InferenceInstance) -> Option<String> {
    let m = &i.spec.model;
    let uri = m.source.uri.as_ref()?;
    let key = serde_json::json!({"uri": uri, "format": m.format.as_str(), "path": m.path, "sha256": m.sha256.as_ref().map(|s| s.to_ascii_lowercase())});
    Some(format!("model-cache-{}", &crate::hash::config_hash(&key)[..12]))
}

/// The model-cache volume: in the tier's storage class and size, counted against the tenant's
/// storage quota, labelled `modelCache` for retention. It has no owner: it outlives any one
/// instance, and is released to retention when the last instance using it goes.
pub fn model_cache_pvc(i: &InferenceInstance, tier: &TierConfig) -> Option<PersistentVolumeClaim> {
    let name = model_cache_claim_name(i)?;
    let mut meta = child_meta(i, &name);
    meta.owner_references = None;
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    labels.remove(LABEL_INSTANCE);
    labels.insert(LABEL_DATA_CLASS.into(), DataClass::ModelCache.as_str().into());
    meta.annotations = Some(
        [(
            alcove_crds::ANNOTATION_MODEL_URI.to_string(),
            i.spec.model.source.uri.clone().unwrap_or_default(),
        )]
        .into(),
    );
    // Shared by instances that may run on different nodes: ReadWriteMany, like the KB index.
    Some(claim(meta, "ReadWriteMany", &tier.model_cache_size, &tier.storage_class))
}

pub fn model_egress_name(instance: &str) -> String {
    format!("{instance}-model-egress")
}

/// Egress for the pod's fetch step to its model source (the hub's endpoint for `hf://`, the
/// store's for `s3://`).
pub fn model_egress(
    i: &InferenceInstance,
    config: &Config,
) -> Option<k8s_openapi::api::networking::v1::NetworkPolicy> {
    let uri = i.spec.model.source.uri.as_deref()?;
    let target =
        if uri.starts_with("hf://") { config.model_sources.hub_endpoint.as_str() } else { uri };
    let name = i.name_any();
    crate::objects::egress_policy(
        child_meta(i, &model_egress_name(&name)),
        string_map([(LABEL_INSTANCE, name.as_str()), (COMPONENT_LABEL, "inference")]),
        [target],
    )
}

/// The init container filling the model cache: it mounts the cache read-write (the server gets
/// it read-only) and, alone, the source's credentials.
fn fetch_container(i: &InferenceInstance, config: &Config, max_bytes: Option<u64>) -> Container {
    let m = &i.spec.model;
    let mut args: Vec<String> = vec![
        "fetch".into(),
        "--uri".into(),
        m.source.uri.clone().unwrap_or_default(),
        "--cache".into(),
        MODEL_DIR.into(),
        "--format".into(),
        m.format.as_str().into(),
        "--hub-endpoint".into(),
        config.model_sources.hub_endpoint.clone(),
        "--s3-endpoint".into(),
        config.model_sources.s3.endpoint.clone(),
        "--s3-region".into(),
        config.model_sources.s3.region.clone(),
        "--termination-log".into(),
        "/dev/termination-log".into(),
        "--log-format".into(),
        "json".into(),
    ];
    if let Some(p) = &m.path {
        args.extend(["--path".into(), p.clone()]);
    }
    if let Some(sha) = &m.sha256 {
        args.extend(["--sha256".into(), sha.to_ascii_lowercase()]);
    }
    if let Some(max) = max_bytes {
        args.push(format!("--max-bytes={max}"));
    }
    if config.model_sources.allow_private_addresses {
        args.push("--allow-private-addresses".into());
    }
    if config.model_sources.s3.path_style {
        args.push("--s3-path-style".into());
    }
    let mut mounts = vec![mount("model", MODEL_DIR, false)];
    if m.source.credentials_secret.is_some() {
        args.extend(["--credentials".into(), MODEL_CREDENTIALS_DIR.into()]);
        mounts.push(mount("model-credentials", MODEL_CREDENTIALS_DIR, true));
    }
    let env = (!config.model_sources.ca_certificates.trim().is_empty()).then(|| {
        vec![EnvVar {
            name: FETCH_CA_ENV.into(),
            value: Some(config.model_sources.ca_certificates.clone()),
            value_from: None,
        }]
    });
    let amounts = quantities([("cpu", "1"), ("memory", "512Mi")]);
    Container {
        name: FETCH_CONTAINER.into(),
        image: Some(config.inference_image.clone()),
        command: Some(vec!["/usr/local/bin/alcove-inference".into()]),
        args: Some(args),
        env,
        resources: Some(ResourceRequirements {
            limits: Some(amounts.clone()),
            requests: Some(amounts),
            claims: None,
        }),
        security_context: Some(restricted_container_security()),
        volume_mounts: Some(mounts),
        ..Default::default()
    }
}

/// The name clients put in `model`.
pub fn served_name(i: &InferenceInstance) -> String {
    i.spec.model.served_name.clone().unwrap_or_else(|| i.name_any())
}

/// The in-cluster base URL of the OpenAI-compatible API.
pub fn endpoint(i: &InferenceInstance) -> String {
    format!("http://{}.{}.svc.cluster.local/v1", i.name_any(), i.namespace().unwrap_or_default())
}

/// Labels every child carries: managed-by, the tenant and the instance.
pub fn labels(i: &InferenceInstance) -> BTreeMap<String, String> {
    child_meta(i, "").labels.unwrap_or_default()
}

pub fn child_meta(i: &InferenceInstance, name: &str) -> ObjectMeta {
    crate::tenant::builders::owned_meta(i, name, LABEL_INSTANCE)
}

/// The API key Secret: `key` is 32 random bytes as hex, made for rotation request `rotation`.
pub fn api_key_secret(i: &InferenceInstance, key: &[u8; 32], rotation: &str) -> Secret {
    let mut meta = child_meta(i, &api_key_secret_name(&i.name_any()));
    let text = crate::hash::hex(key);
    meta.annotations = Some(
        [
            (KEY_ROTATION.to_string(), rotation.to_string()),
            (KEY_HASH.to_string(), crate::hash::hex(&sha2::Sha256::digest(text.as_bytes()))),
        ]
        .into(),
    );
    Secret {
        metadata: meta,
        type_: Some("Opaque".into()),
        data: Some([(API_KEY_FIELD.to_string(), ByteString(text.into_bytes()))].into()),
        ..Default::default()
    }
}

/// SHA-256 of the Secret's key, as hex: what the instance status publishes for the gateway.
pub fn api_key_hash(secret: &Secret) -> Option<String> {
    let key = secret.data.as_ref()?.get(API_KEY_FIELD)?;
    Some(crate::hash::hex(&sha2::Sha256::digest(&key.0)))
}

/// The key's hash as noted on its Secret (`KEY_HASH`); a key made by an operator before it
/// noted hashes has none, and is read from the API server instead.
pub fn noted_key_hash(secret: &impl ResourceExt) -> Option<String> {
    secret.annotations().get(KEY_HASH).cloned()
}

/// The rotation a Secret's key answers (`""`: the key made at creation).
pub fn key_rotation_of(secret: &impl ResourceExt) -> String {
    secret.annotations().get(KEY_ROTATION).cloned().unwrap_or_default()
}

/// The rotation an instance asks for (`""`: none).
pub fn requested_rotation(i: &InferenceInstance) -> String {
    i.annotations().get(alcove_crds::ANNOTATION_ROTATE_API_KEY).cloned().unwrap_or_default()
}

/// The system prompt's ConfigMap, when the instance has one.
pub fn system_prompt(i: &InferenceInstance) -> Option<ConfigMap> {
    let prompt = i.spec.system_prompt.as_ref().filter(|p| !p.trim().is_empty())?;
    Some(ConfigMap {
        metadata: child_meta(i, &prompt_config_map_name(&i.name_any())),
        data: Some(string_map([(PROMPT_FIELD, prompt.as_str())])),
        ..Default::default()
    })
}

/// The conversation-history volume, in the tier's storage class.
pub fn history_pvc(i: &InferenceInstance, tier: &TierConfig) -> PersistentVolumeClaim {
    let mut meta = child_meta(i, &history_pvc_name(&i.name_any()));
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(LABEL_DATA_CLASS.into(), DataClass::ConversationHistory.as_str().into());
    claim(meta, "ReadWriteOnce", &tier.history_size, &tier.storage_class)
}

/// A claim of `size` with one access mode, in `storage_class` (`""`: the cluster's default).
pub fn claim(
    metadata: ObjectMeta,
    access_mode: &str,
    size: &str,
    storage_class: &str,
) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec![access_mode.into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(quantities([("storage", size)])),
                limits: None,
            }),
            storage_class_name: Some(storage_class.to_string()).filter(|c| !c.is_empty()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn service(i: &InferenceInstance) -> Service {
    let name = i.name_any();
    Service {
        metadata: child_meta(i, &name),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(string_map([
                (LABEL_INSTANCE, name.as_str()),
                (COMPONENT_LABEL, "inference"),
            ])),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: SERVICE_PORT,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The extended resource and count an instance's GPUs take: whole GPUs, or one MIG slice.
pub fn gpu_resource(i: &InferenceInstance) -> (String, i32) {
    match &i.spec.gpu.mig_profile {
        Some(profile) => (format!("nvidia.com/mig-{profile}"), 1),
        None => ("nvidia.com/gpu".into(), i.spec.gpu.count),
    }
}

/// A model source as a read-only volume named `volume` mounted at `dir`, and the model's path in
/// the container. `field` (e.g. `spec.model`) names the spec field in errors.
pub fn model_volume(
    volume: &str,
    dir: &str,
    source: &ModelSource,
    path: Option<&str>,
    field: &str,
    config: &Config,
) -> Result<(Volume, String), String> {
    let path = path.unwrap_or_default().trim_end_matches('/');
    let in_volume = if path.is_empty() { dir.to_string() } else { format!("{dir}/{path}") };
    if let Some(name) = &source.platform {
        let pm = &config.platform_models;
        let csi = CSIVolumeSource {
            driver: pm.csi_driver.clone(),
            read_only: Some(true),
            volume_attributes: Some(string_map([(pm.attribute.as_str(), name.as_str())])),
            ..Default::default()
        };
        return Ok((
            Volume { name: volume.into(), csi: Some(csi), ..Default::default() },
            in_volume,
        ));
    }
    if let Some(pvc) = &source.pvc {
        return Ok((pvc_volume(volume, &pvc.claim_name, true), in_volume));
    }
    if source.uri.is_some() {
        return Err(format!(
            "{field}.source.uri: an embedding model is mounted from a volume; use {field}.source.platform or {field}.source.pvc"
        ));
    }
    Err(format!("{field}.source names no model"))
}

/// A knowledge base an instance mounts: its index volume and the embedding model it was built with.
#[derive(Debug, Clone, PartialEq)]
pub struct KbMount {
    pub name: String,
    pub claim: String,
    pub embedding: alcove_crds::EmbeddingModel,
    pub top_k: i32,
}

/// Why an instance's knowledge bases cannot be mounted.
#[derive(Debug, PartialEq)]
pub enum KbProblem {
    /// Never: another namespace's knowledge base (the field and why).
    Refused(String),
    /// Not yet: missing, or not indexed yet.
    Waiting(String),
}

/// Resolves `spec.knowledgeBases` with `lookup(namespace, name)`. A reference to another namespace
/// is refused even when that knowledge base exists: a tenant's documents never cross namespaces.
pub fn resolve_knowledge_bases(
    i: &InferenceInstance,
    lookup: impl Fn(&str, &str) -> Option<std::sync::Arc<KnowledgeBase>>,
) -> Result<Vec<KbMount>, KbProblem> {
    let ns = i.namespace().unwrap_or_default();
    let mut mounts = Vec::new();
    for (ix, r) in i.spec.knowledge_bases.iter().enumerate() {
        if let Some(other) = r.namespace.as_deref().filter(|n| *n != ns) {
            return Err(KbProblem::Refused(format!(
                "spec.knowledgeBases[{ix}].namespace: knowledge base {other}/{} is in another namespace; an instance may only use knowledge bases of its own namespace ({ns})",
                r.name
            )));
        }
        let Some(kb) = lookup(&ns, &r.name) else {
            return Err(KbProblem::Waiting(format!(
                "knowledge base {} (spec.knowledgeBases[{ix}]) does not exist",
                r.name
            )));
        };
        let status = kb.status.clone().unwrap_or_default();
        let (Some(_), Some(claim)) = (status.indexed_at, status.volume) else {
            return Err(KbProblem::Waiting(format!(
                "knowledge base {} is not indexed yet",
                r.name
            )));
        };
        mounts.push(KbMount {
            name: r.name.clone(),
            claim,
            embedding: kb.spec.embedding_model.clone(),
            top_k: kb.spec.top_k,
        });
    }
    Ok(mounts)
}

/// What the pod is built from besides the instance and the configuration.
pub struct PodInputs<'a> {
    pub placement: &'a ResolvedPlacement,
    /// The rotation the API-key Secret's key answers: a rotation re-creates the pod, so the old
    /// key stops working at once rather than when the kubelet next refreshes the volume.
    pub key_rotation: &'a str,
    /// The knowledge bases in `spec.knowledgeBases`, resolved (same namespace, indexed).
    pub knowledge_bases: &'a [KbMount],
    /// The size of the model-cache volume (a model larger is refused before it downloads).
    pub model_cache_size: &'a str,
}

/// The server pod. `Err` names the spec field this operator cannot serve.
pub fn pod(i: &InferenceInstance, config: &Config, inputs: &PodInputs) -> Result<Pod, String> {
    let name = i.name_any();
    // A URI's model is fetched into its cache volume by an init container; the server loads the
    // link `fetch` publishes once the download is complete and verified.
    let (model_vol, model_path, fetch) = match model_cache_claim_name(i) {
        Some(cache) => {
            if i.spec.model.format == ModelFormat::Safetensors
                && !i
                    .spec
                    .model
                    .source
                    .uri
                    .as_deref()
                    .is_some_and(|u| u.starts_with("hf://") || u.starts_with("s3://"))
            {
                return Err("spec.model.source.uri: a safetensors model is a directory (config.json, tokenizer.json, weights), which hf://org/repo or s3://bucket/prefix/ names; an https:// URI fetches one GGUF file (spec.model.format gguf)".into());
            }
            let link = match i.spec.model.format {
                ModelFormat::Gguf => "model.gguf",
                ModelFormat::Safetensors => "model",
            };
            (
                pvc_volume("model", &cache, false),
                format!("{MODEL_DIR}/current/{link}"),
                Some(fetch_container(
                    i,
                    config,
                    crate::objects::storage_bytes(inputs.model_cache_size),
                )),
            )
        }
        None => {
            let (v, p) = model_volume(
                "model",
                MODEL_DIR,
                &i.spec.model.source,
                i.spec.model.path.as_deref(),
                "spec.model",
                config,
            )?;
            (v, p, None)
        }
    };
    if i.spec.model.format == ModelFormat::Gguf && !model_path.ends_with(".gguf") {
        return Err("spec.model.path must name the .gguf file for a gguf model".into());
    }
    let port = INSTANCE_PORT.to_string();
    let mut args: Vec<String> = [
        "serve",
        "--model",
        &model_path,
        "--model-id",
        &served_name(i),
        "--host",
        "$(POD_IP)",
        "--port",
        &port,
        "--api-key-file",
        &format!("{API_KEY_DIR}/{API_KEY_FIELD}"),
        "--history",
        HISTORY_DIR,
        "--history-key-file",
        &format!("{TENANT_KEY_DIR}/key"),
        "--log-format",
        "json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--max-tokens={}", i.spec.limits.max_tokens));
    args.push(format!("--context-length={}", i.spec.limits.context_length));
    let mut mounts = vec![
        mount("model", MODEL_DIR, true),
        mount("api-key", API_KEY_DIR, true),
        mount("tenant-key", TENANT_KEY_DIR, true),
        mount("history", HISTORY_DIR, false),
    ];
    // Secret files are root-owned; 0440 with the pod's fsGroup lets the server (and only it) read them.
    let mut volumes = vec![
        model_vol,
        secret_volume(
            "api-key",
            &api_key_secret_name(&name),
            0o440,
            items(&[(API_KEY_FIELD, API_KEY_FIELD)]),
        ),
        secret_volume("tenant-key", KEY_SECRET, 0o440, items(&[("key", "key")])),
        pvc_volume("history", &history_pvc_name(&name), false),
    ];
    if let Some(secret) = &i.spec.model.source.credentials_secret {
        volumes.push(secret_volume("model-credentials", secret, 0o440, None));
    }
    if system_prompt(i).is_some() {
        args.extend(["--system-prompt-file".into(), format!("{PROMPT_DIR}/{PROMPT_FIELD}")]);
        mounts.push(mount("system-prompt", PROMPT_DIR, true));
        volumes.push(config_map_volume(
            "system-prompt",
            &prompt_config_map_name(&name),
            0o444,
            None,
        ));
    }
    // Knowledge bases: each index volume read-only, and the one embedding model they share.
    if let Some(first) = inputs.knowledge_bases.first() {
        if let Some(other) = inputs.knowledge_bases.iter().find(|k| k.embedding != first.embedding)
        {
            return Err(format!(
                "spec.knowledgeBases: {} and {} were indexed with different embedding models; one instance serves one",
                first.name, other.name
            ));
        }
        let (volume, path) = model_volume(
            "embedding-model",
            EMBEDDING_DIR,
            &first.embedding.source,
            first.embedding.path.as_deref(),
            "knowledge base embeddingModel",
            config,
        )?;
        volumes.push(volume);
        mounts.push(mount("embedding-model", EMBEDDING_DIR, true));
        args.extend(["--embedding-model".into(), path]);
        for kb in inputs.knowledge_bases {
            let volume = format!("kb-{}", kb.name);
            volumes.push(pvc_volume(&volume, &kb.claim, true));
            mounts.push(mount(&volume, &format!("{KB_DIR}/{}", kb.name), true));
            args.extend(["--kb".into(), format!("{KB_DIR}/{}/{}", kb.name, INDEX_DIR)]);
        }
        let top_k = inputs.knowledge_bases.iter().map(|k| k.top_k).max().unwrap_or(4);
        args.push(format!("--kb-top-k={top_k}"));
    }

    let (gpu_name, gpus) = gpu_resource(i);
    let res = i.spec.resources.clone().unwrap_or_default();
    let gpus = gpus.to_string();
    let cpu = res.cpu.unwrap_or_else(|| "4".into());
    let memory = res.memory.unwrap_or_else(|| "16Gi".into());
    let amounts =
        quantities([(gpu_name.as_str(), gpus.as_str()), ("cpu", &cpu), ("memory", &memory)]);
    // Guaranteed QoS: requests equal limits, so the instance is the last to be evicted.
    let resources = ResourceRequirements {
        limits: Some(amounts.clone()),
        requests: Some(amounts),
        claims: None,
    };

    let mut node_selector = inputs.placement.node_selector.clone();
    if let Some(product) = &i.spec.gpu.product {
        node_selector.insert("nvidia.com/gpu.product".into(), product.clone());
    }
    let mut tolerations = inputs.placement.tolerations.clone();
    tolerations.push(Toleration {
        key: Some("nvidia.com/gpu".into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    });

    let mut pod_labels = labels(i);
    pod_labels.insert(COMPONENT_LABEL.into(), "inference".into());
    let mut meta = child_meta(i, &name);
    meta.labels = Some(pod_labels);
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Default::default()
    };
    let server = Container {
        name: "server".into(),
        image: Some(config.inference_image.clone()),
        command: Some(vec!["/usr/local/bin/alcove-inference".into()]),
        args: Some(args),
        env: Some(vec![EnvVar {
            name: "POD_IP".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "status.podIP".into(),
                    api_version: None,
                }),
                ..Default::default()
            }),
            value: None,
        }]),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: INSTANCE_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        resources: Some(resources),
        // /healthz answers while the model loads; /readyz once it is loaded.
        liveness_probe: Some(probe("/healthz", 10, 6)),
        readiness_probe: Some(probe("/readyz", 1, 3)),
        security_context: Some(restricted_container_security()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    let mut pod = Pod {
        metadata: meta,
        spec: Some(PodSpec {
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            restart_policy: Some("Always".into()),
            // Destroy means now: the server finishes within a second of SIGTERM.
            termination_grace_period_seconds: Some(2),
            node_selector: Some(node_selector),
            tolerations: Some(tolerations),
            security_context: Some(restricted_pod_security()),
            init_containers: fetch.map(|f| vec![f]),
            containers: vec![server],
            volumes: Some(volumes),
            ..Default::default()
        }),
        status: None,
    };
    // The hash covers the object as serialized, so it does not change across operator versions
    // unless the pod does (a new hash re-creates every instance's pod).
    let hash = crate::hash::config_hash(
        &serde_json::json!({"pod": pod, "keyRotation": inputs.key_rotation}),
    );
    pod.metadata.annotations = Some([(POD_HASH.to_string(), hash)].into());
    Ok(pod)
}

/// The hash a live pod was built with.
pub fn pod_hash(pod: &Pod) -> Option<&str> {
    pod.metadata.annotations.as_ref()?.get(POD_HASH).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alcove_crds::Tenant;
    use serde_json::{Value, json};

    fn instance(file: &str) -> InferenceInstance {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/good").join(file);
        let mut i: InferenceInstance =
            serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        i.metadata.uid = Some("uid-i".into());
        i
    }

    fn placement() -> ResolvedPlacement {
        let t: Tenant = serde_saphyr::from_str(
            &std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../examples/good/tenant-basic.yaml"),
            )
            .unwrap(),
        )
        .unwrap();
        crate::tenant::builders::placement(&t, &Config::for_tests())
    }

    fn build(i: &InferenceInstance, rotation: &str) -> Value {
        let p = placement();
        serde_json::to_value(
            pod(
                i,
                &Config::for_tests(),
                &PodInputs {
                    placement: &p,
                    key_rotation: rotation,
                    knowledge_bases: &[],
                    model_cache_size: "1Gi",
                },
            )
            .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn the_published_key_hash_is_the_sha256_of_the_key_clients_send() {
        let i = instance("instance-safetensors.yaml");
        let secret = api_key_secret(&i, &[7u8; 32], "");
        let sent = "07".repeat(32);
        let expected = crate::hash::hex(&sha2::Sha256::digest(sent.as_bytes()));
        assert_eq!(api_key_hash(&secret).as_deref(), Some(expected.as_str()));
        assert_eq!(noted_key_hash(&secret).as_deref(), Some(expected.as_str()), "noted on it");
        let other = api_key_secret(&i, &[8u8; 32], "");
        assert_ne!(api_key_hash(&other), api_key_hash(&secret));
        assert_eq!(api_key_hash(&Secret::default()), None, "no key, no hash");
    }

    #[test]
    fn pod_passes_pod_security_restricted_and_mounts_no_secret_in_env_or_args() {
        let p = build(&instance("instance-safetensors.yaml"), "");
        let spec = &p["spec"];
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
        assert_eq!(spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
        let c = &spec["containers"][0];
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
        let args: Vec<&str> =
            c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert!(args.windows(2).any(|w| w == ["--api-key-file", "/etc/alcove/api-key/api-key"]));
        assert!(args.windows(2).any(|w| w == ["--history-key-file", "/etc/alcove/tenant-key/key"]));
        assert!(
            args.windows(2)
                .any(|w| w == ["--system-prompt-file", "/etc/alcove/prompt/system-prompt"])
        );
        assert!(args.contains(&"--max-tokens=256") && args.contains(&"--context-length=2048"));
        let env = c["env"].as_array().unwrap();
        assert!(
            env.iter().all(|e| e.get("valueFrom").and_then(|v| v.get("secretKeyRef")).is_none()),
            "no secret in env"
        );
        assert_eq!(env.len(), 1, "only POD_IP");
        let volumes = spec["volumes"].as_array().unwrap();
        let model = volumes.iter().find(|v| v["name"] == "model").unwrap();
        assert_eq!(model["csi"]["driver"], "models.alcove.dev");
        assert_eq!(model["csi"]["readOnly"], true);
        assert_eq!(model["csi"]["volumeAttributes"]["model"], "default");
        let mounts = c["volumeMounts"].as_array().unwrap();
        assert!(
            mounts.iter().filter(|m| m["name"] != "history").all(|m| m["readOnly"] == true),
            "only history is writable"
        );
    }

    #[test]
    fn pod_asks_for_the_gpus_in_the_tenants_region() {
        let i = instance("instance-safetensors.yaml");
        let p = build(&i, "");
        let c = &p["spec"]["containers"][0];
        assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "1");
        assert_eq!(c["resources"]["requests"], c["resources"]["limits"]);
        assert_eq!(p["spec"]["nodeSelector"]["nvidia.com/gpu.product"], "NVIDIA-H100-80GB-HBM3");
        assert_eq!(p["spec"]["nodeSelector"]["topology.kubernetes.io/region"], "tw-taipei-1");
        assert_eq!(p["spec"]["nodeSelector"]["alcove.dev/pool"], "shared");
        assert!(
            p["spec"]["tolerations"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["key"] == "nvidia.com/gpu")
        );
        assert!(p["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap() <= 2);

        let mut mig = i.clone();
        mig.spec.gpu.mig_profile = Some("1g.10gb".into());
        let p = build(&mig, "");
        assert_eq!(
            p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/mig-1g.10gb"],
            "1"
        );
        assert!(p["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu").is_none());
    }

    #[test]
    fn gguf_serves_the_named_file_and_pvc_sources_mount_read_only() {
        let i = instance("instance-gguf.yaml");
        let p = build(&i, "");
        let args = p["spec"]["containers"][0]["args"].as_array().unwrap();
        let model = args.iter().position(|a| a == "--model").unwrap();
        assert_eq!(args[model + 1], "/models/model.gguf");
        let mut on_pvc = i.clone();
        on_pvc.spec.model.source =
            serde_json::from_value(json!({"pvc": {"claimName": "weights"}})).unwrap();
        let p = build(&on_pvc, "");
        let v = p["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "model")
            .unwrap()
            .clone();
        assert_eq!(v["persistentVolumeClaim"], json!({"claimName": "weights", "readOnly": true}));
    }

    #[test]
    fn the_pod_hash_follows_spec_and_key_rotation_only() {
        let i = instance("instance-safetensors.yaml");
        let h = |i: &InferenceInstance, r: &str| {
            build(i, r)["metadata"]["annotations"][POD_HASH].as_str().unwrap().to_string()
        };
        assert_eq!(h(&i, ""), h(&i, ""));
        assert_ne!(h(&i, ""), h(&i, "2026-11-22"), "a rotation re-creates the pod");
        let mut more = i.clone();
        more.spec.limits.max_tokens = 64;
        assert_ne!(h(&i, ""), h(&more, ""));
        let mut prompt = i.clone();
        prompt.spec.system_prompt = Some("Something else.".into());
        assert_eq!(
            h(&i, ""),
            h(&prompt, ""),
            "a new prompt reaches the running server through its volume"
        );
    }

    #[test]
    fn an_operator_upgrade_keeps_the_pod_hash_of_an_unchanged_instance() {
        // A new hash re-creates every running instance's pod when the operator is upgraded. If a
        // change to the pod is meant, update the value and say so in the release notes.
        let pod = build(&instance("instance-safetensors.yaml"), "");
        assert_eq!(pod["metadata"]["annotations"][POD_HASH], "da23dc3da67102d59017cebe");
    }

    #[test]
    fn the_api_key_is_64_hex_characters_made_for_a_rotation() {
        let s = api_key_secret(&instance("instance-safetensors.yaml"), &[0xab; 32], "r1");
        let data = s.data.unwrap();
        let text = String::from_utf8(data[API_KEY_FIELD].0.clone()).unwrap();
        assert_eq!(text, "ab".repeat(32));
        assert_eq!(
            key_rotation_of(&Secret { metadata: s.metadata.clone(), ..Default::default() }),
            "r1"
        );
    }

    fn kb(name: &str, ns: &str, indexed: bool) -> KnowledgeBase {
        let mut kb: KnowledgeBase = serde_json::from_value(json!({
            "apiVersion": "alcove.dev/v1alpha1", "kind": "KnowledgeBase",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"sources": [{"name": "docs", "inline": "x"}], "embeddingModel": {"source": {"platform": "minilm"}}, "topK": 3},
        }))
        .unwrap();
        if indexed {
            kb.status = Some(alcove_crds::KnowledgeBaseStatus {
                indexed_at: Some("2026-11-22T10:00:00Z".into()),
                volume: Some(format!("{name}-index")),
                ..Default::default()
            });
        }
        kb
    }

    #[test]
    fn knowledge_bases_resolve_in_the_own_namespace_only() {
        let mut i = instance("instance-gguf.yaml");
        let ns = i.namespace().unwrap();
        let kbs = [
            kb("handbook", &ns, true),
            kb("fresh", &ns, false),
            kb("theirs", "tenant-other", true),
        ];
        let lookup = |n: &str, name: &str| {
            kbs.iter()
                .find(|k| k.namespace().as_deref() == Some(n) && k.name_any() == name)
                .cloned()
                .map(std::sync::Arc::new)
        };
        i.spec.knowledge_bases = serde_json::from_value(json!([{"name": "handbook"}])).unwrap();
        let mounts = resolve_knowledge_bases(&i, lookup).unwrap();
        assert_eq!(mounts[0].claim, "handbook-index");
        // Another namespace: refused by name, even when the knowledge base exists there.
        i.spec.knowledge_bases =
            serde_json::from_value(json!([{"name": "theirs", "namespace": "tenant-other"}]))
                .unwrap();
        match resolve_knowledge_bases(&i, lookup) {
            Err(KbProblem::Refused(why)) => {
                assert!(
                    why.contains("spec.knowledgeBases[0].namespace")
                        && why.contains("tenant-other"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
        // Not indexed yet, or missing: wait.
        i.spec.knowledge_bases = serde_json::from_value(json!([{"name": "fresh"}])).unwrap();
        assert!(matches!(resolve_knowledge_bases(&i, lookup), Err(KbProblem::Waiting(_))));
        i.spec.knowledge_bases = serde_json::from_value(json!([{"name": "nope"}])).unwrap();
        assert!(
            matches!(resolve_knowledge_bases(&i, lookup), Err(KbProblem::Waiting(w)) if w.contains("nope"))
        );
    }

    #[test]
    fn knowledge_bases_are_mounted_read_only_with_their_embedding_model() {
        let mut i = instance("instance-gguf.yaml");
        let ns = i.namespace().unwrap();
        let k = kb("handbook", &ns, true);
        i.spec.knowledge_bases = serde_json::from_value(json!([{"name": "handbook"}])).unwrap();
        let mounts =
            resolve_knowledge_bases(&i, |_, _| Some(std::sync::Arc::new(k.clone()))).unwrap();
        let p = placement();
        let built = serde_json::to_value(
            pod(
                &i,
                &Config::for_tests(),
                &PodInputs {
                    placement: &p,
                    key_rotation: "",
                    knowledge_bases: &mounts,
                    model_cache_size: "1Gi",
                },
            )
            .unwrap(),
        )
        .unwrap();
        let c = &built["spec"]["containers"][0];
        let args: Vec<&str> =
            c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert!(args.windows(2).any(|w| w == ["--kb", "/kb/handbook/index"]), "{args:?}");
        assert!(
            args.windows(2).any(|w| w == ["--embedding-model", "/embedding-model"]),
            "{args:?}"
        );
        assert!(args.contains(&"--kb-top-k=3"));
        let vol = built["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "kb-handbook")
            .unwrap();
        assert_eq!(
            vol["persistentVolumeClaim"],
            json!({"claimName": "handbook-index", "readOnly": true})
        );
        let mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "kb-handbook")
            .unwrap();
        assert_eq!(mount["readOnly"], true);
        // Two embedding models cannot be served by one instance.
        let mut other = mounts[0].clone();
        other.name = "other".into();
        other.embedding.path = Some("elsewhere".into());
        let both = [mounts[0].clone(), other];
        let err = pod(
            &i,
            &Config::for_tests(),
            &PodInputs {
                placement: &p,
                key_rotation: "",
                knowledge_bases: &both,
                model_cache_size: "1Gi",
            },
        )
        .unwrap_err();
        assert!(err.contains("different embedding models"), "{err}");
    }

    #[test]
    fn a_uri_model_is_fetched_by_an_init_container_into_a_shared_cache() {
        let mut i = instance("instance-gguf.yaml");
        i.spec.model.source = alcove_crds::ModelSource {
            uri: Some("https://models.example/tiny.gguf".into()),
            credentials_secret: Some("model-token".into()),
            ..Default::default()
        };
        i.spec.model.path = None;
        i.spec.model.sha256 = Some("AB".repeat(32));
        let p = build(&i, "");
        let spec = &p["spec"];
        let fetch = &spec["initContainers"][0];
        assert_eq!(fetch["name"], FETCH_CONTAINER);
        let args: Vec<&str> =
            fetch["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert!(args.windows(2).any(|w| w == ["--uri", "https://models.example/tiny.gguf"]));
        assert!(args.windows(2).any(|w| w == ["--sha256", &"ab".repeat(32)]));
        assert!(args.contains(&"--max-bytes=1073741824"), "{args:?}");
        assert!(!args.contains(&"--allow-private-addresses"), "private addresses: off by default");
        let claim = model_cache_claim_name(&i).unwrap();
        let volume = |name: &str| {
            spec["volumes"].as_array().unwrap().iter().find(|v| v["name"] == name).cloned()
        };
        assert_eq!(volume("model").unwrap()["persistentVolumeClaim"]["claimName"], claim.as_str());
        let server = &spec["containers"][0];
        let mount = |c: &Value, name: &str| {
            c["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == name).cloned()
        };
        assert_eq!(mount(server, "model").unwrap()["readOnly"], true, "the server only reads it");
        assert!(mount(fetch, "model").unwrap().get("readOnly").is_none());
        assert!(mount(fetch, "model-credentials").is_some());
        assert!(mount(server, "model-credentials").is_none(), "credentials reach the fetch only");
        let sargs: Vec<&str> =
            server["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert!(sargs.windows(2).any(|w| w == ["--model", "/models/current/model.gguf"]));

        // The same source shares the cache; another digest does not.
        let mut twin = instance("instance-gguf.yaml");
        twin.metadata.name = Some("twin".into());
        twin.spec.model = i.spec.model.clone();
        assert_eq!(model_cache_claim_name(&twin), Some(claim.clone()));
        twin.spec.model.sha256 = Some("cd".repeat(32));
        assert_ne!(model_cache_claim_name(&twin), Some(claim));
        let pvc = serde_json::to_value(
            model_cache_pvc(&i, &Config::for_tests().tier(alcove_crds::Tier::Basic)).unwrap(),
        )
        .unwrap();
        assert!(pvc["metadata"]["ownerReferences"].is_null(), "no one instance owns it");
        assert_eq!(pvc["metadata"]["labels"]["alcove.dev/data-class"], "modelCache");
        assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "20Gi");
        let np = serde_json::to_value(model_egress(&i, &Config::for_tests()).unwrap()).unwrap();
        assert_eq!(np["spec"]["egress"][0]["ports"][0]["port"], 443);

        // A safetensors directory cannot come from one https:// file.
        i.spec.model.format = ModelFormat::Safetensors;
        let p = placement();
        let err = pod(
            &i,
            &Config::for_tests(),
            &PodInputs {
                placement: &p,
                key_rotation: "",
                knowledge_bases: &[],
                model_cache_size: "1Gi",
            },
        )
        .unwrap_err();
        assert!(err.contains("hf://org/repo"), "{err}");
    }
}
