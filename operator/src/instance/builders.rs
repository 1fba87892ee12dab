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
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::config::{Config, TierConfig};
use crate::names::{COMPONENT_LABEL, INDEX_DIR, INSTANCE_PORT, KEY_SECRET};

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
/// The server's user and group (the image's numeric non-root user).
pub const RUN_AS: i64 = 65532;

const MODEL_DIR: &str = "/models";
const API_KEY_DIR: &str = "/etc/alcove/api-key";
const TENANT_KEY_DIR: &str = "/etc/alcove/tenant-key";
const PROMPT_DIR: &str = "/etc/alcove/prompt";
const HISTORY_DIR: &str = "/var/lib/alcove/history";
const EMBEDDING_DIR: &str = "/embedding-model";
const KB_DIR: &str = "/kb";

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

fn from_json<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("builders produce valid objects")
}

/// The API key Secret: `key` is 32 random bytes as hex, made for rotation request `rotation`.
pub fn api_key_secret(i: &InferenceInstance, key: &[u8; 32], rotation: &str) -> Secret {
    use base64::Engine;
    let mut meta = child_meta(i, &api_key_secret_name(&i.name_any()));
    meta.annotations = Some([(KEY_ROTATION.to_string(), rotation.to_string())].into());
    let text = crate::hash::hex(key);
    from_json(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": meta,
        "data": {API_KEY_FIELD: base64::engine::general_purpose::STANDARD.encode(text)},
    }))
}

/// The rotation a Secret's key answers (`""`: the key made at creation).
pub fn key_rotation_of(secret: &Secret) -> String {
    secret.annotations().get(KEY_ROTATION).cloned().unwrap_or_default()
}

/// The rotation an instance asks for (`""`: none).
pub fn requested_rotation(i: &InferenceInstance) -> String {
    i.annotations().get(alcove_crds::ANNOTATION_ROTATE_API_KEY).cloned().unwrap_or_default()
}

/// The system prompt's ConfigMap, when the instance has one.
pub fn system_prompt(i: &InferenceInstance) -> Option<ConfigMap> {
    let prompt = i.spec.system_prompt.as_ref().filter(|p| !p.trim().is_empty())?;
    Some(from_json(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": child_meta(i, &prompt_config_map_name(&i.name_any())),
        "data": {PROMPT_FIELD: prompt},
    })))
}

/// The conversation-history volume, in the tier's storage class.
pub fn history_pvc(i: &InferenceInstance, tier: &TierConfig) -> PersistentVolumeClaim {
    let mut meta = child_meta(i, &history_pvc_name(&i.name_any()));
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(LABEL_DATA_CLASS.into(), DataClass::ConversationHistory.as_str().into());
    let mut spec = json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": tier.history_size}}});
    if !tier.storage_class.is_empty() {
        spec["storageClassName"] = json!(tier.storage_class);
    }
    from_json(
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": spec}),
    )
}

pub fn service(i: &InferenceInstance) -> Service {
    from_json(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": child_meta(i, &i.name_any()),
        "spec": {
            "type": "ClusterIP",
            "selector": {LABEL_INSTANCE: i.name_any(), COMPONENT_LABEL: "inference"},
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }))
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
) -> Result<(Value, String), String> {
    let path = path.unwrap_or_default().trim_end_matches('/');
    let in_volume = if path.is_empty() { dir.to_string() } else { format!("{dir}/{path}") };
    if let Some(name) = &source.platform {
        let pm = &config.platform_models;
        return Ok((
            json!({"name": volume, "csi": {"driver": pm.csi_driver, "readOnly": true, "volumeAttributes": {pm.attribute.as_str(): name}}}),
            in_volume,
        ));
    }
    if let Some(pvc) = &source.pvc {
        return Ok((
            json!({"name": volume, "persistentVolumeClaim": {"claimName": pvc.claim_name, "readOnly": true}}),
            in_volume,
        ));
    }
    if source.uri.is_some() {
        return Err(format!(
            "{field}.source.uri is not supported by this operator version; use {field}.source.platform or {field}.source.pvc"
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
}

/// The server pod. `Err` names the spec field this operator cannot serve.
pub fn pod(i: &InferenceInstance, config: &Config, inputs: &PodInputs) -> Result<Pod, String> {
    let name = i.name_any();
    let (model_vol, model_path) = model_volume(
        "model",
        MODEL_DIR,
        &i.spec.model.source,
        i.spec.model.path.as_deref(),
        "spec.model",
        config,
    )?;
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
        json!({"name": "model", "mountPath": MODEL_DIR, "readOnly": true}),
        json!({"name": "api-key", "mountPath": API_KEY_DIR, "readOnly": true}),
        json!({"name": "tenant-key", "mountPath": TENANT_KEY_DIR, "readOnly": true}),
        json!({"name": "history", "mountPath": HISTORY_DIR}),
    ];
    // Secret files are root-owned; 0440 with the pod's fsGroup lets the server (and only it) read them.
    let mut volumes = vec![
        model_vol,
        json!({"name": "api-key", "secret": {"secretName": api_key_secret_name(&name), "defaultMode": 0o440, "items": [{"key": API_KEY_FIELD, "path": API_KEY_FIELD}]}}),
        json!({"name": "tenant-key", "secret": {"secretName": KEY_SECRET, "defaultMode": 0o440, "items": [{"key": "key", "path": "key"}]}}),
        json!({"name": "history", "persistentVolumeClaim": {"claimName": history_pvc_name(&name)}}),
    ];
    if system_prompt(i).is_some() {
        args.extend(["--system-prompt-file".into(), format!("{PROMPT_DIR}/{PROMPT_FIELD}")]);
        mounts.push(json!({"name": "system-prompt", "mountPath": PROMPT_DIR, "readOnly": true}));
        volumes.push(json!({"name": "system-prompt", "configMap": {"name": prompt_config_map_name(&name), "defaultMode": 0o444}}));
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
        mounts
            .push(json!({"name": "embedding-model", "mountPath": EMBEDDING_DIR, "readOnly": true}));
        args.extend(["--embedding-model".into(), path]);
        for kb in inputs.knowledge_bases {
            let volume = format!("kb-{}", kb.name);
            volumes.push(json!({"name": volume, "persistentVolumeClaim": {"claimName": kb.claim, "readOnly": true}}));
            mounts.push(json!({"name": volume, "mountPath": format!("{KB_DIR}/{}", kb.name), "readOnly": true}));
            args.extend(["--kb".into(), format!("{KB_DIR}/{}/{}", kb.name, INDEX_DIR)]);
        }
        let top_k = inputs.knowledge_bases.iter().map(|k| k.top_k).max().unwrap_or(4);
        args.push(format!("--kb-top-k={top_k}"));
    }

    let (gpu_name, gpus) = gpu_resource(i);
    let res = i.spec.resources.clone().unwrap_or_default();
    let mut amounts = json!({gpu_name.as_str(): gpus.to_string(), "cpu": res.cpu.unwrap_or_else(|| "4".into()), "memory": res.memory.unwrap_or_else(|| "16Gi".into())});
    // Guaranteed QoS: requests equal limits, so the instance is the last to be evicted.
    let resources = json!({"limits": amounts.take(), "requests": null});
    let mut resources = resources;
    resources["requests"] = resources["limits"].clone();

    let mut node_selector = inputs.placement.node_selector.clone();
    if let Some(product) = &i.spec.gpu.product {
        node_selector.insert("nvidia.com/gpu.product".into(), product.clone());
    }
    let mut tolerations = serde_json::to_value(&inputs.placement.tolerations).unwrap_or(json!([]));
    if let Some(list) = tolerations.as_array_mut() {
        list.push(json!({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}));
    }

    let mut pod_labels = labels(i);
    pod_labels.insert(COMPONENT_LABEL.into(), "inference".into());
    let mut meta = child_meta(i, &name);
    meta.labels = Some(pod_labels);
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": meta,
        "spec": {
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "restartPolicy": "Always",
            // Destroy means now: the server finishes within a second of SIGTERM.
            "terminationGracePeriodSeconds": 2,
            "nodeSelector": node_selector,
            "tolerations": tolerations,
            "securityContext": restricted_pod_security(),
            "containers": [{
                "name": "server",
                "image": config.inference_image,
                "command": ["/usr/local/bin/alcove-inference"],
                "args": args,
                "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                "ports": [{"name": "http", "containerPort": INSTANCE_PORT, "protocol": "TCP"}],
                "resources": resources,
                // /healthz answers while the model loads; /readyz once it is loaded.
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10, "failureThreshold": 6},
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 1, "failureThreshold": 3},
                "securityContext": restricted_container_security(),
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "volumeMounts": mounts,
            }],
            "volumes": volumes,
        },
    });
    let hash = crate::hash::config_hash(&json!({"pod": pod, "keyRotation": inputs.key_rotation}));
    pod["metadata"]["annotations"] = json!({POD_HASH: hash});
    Ok(from_json(pod))
}

/// The pod security context every pod the operator makes has (Pod Security `restricted`): the
/// image's numeric non-root user, fsGroup for the secret files, the runtime's seccomp profile.
pub fn restricted_pod_security() -> Value {
    json!({"runAsNonRoot": true, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS, "seccompProfile": {"type": "RuntimeDefault"}})
}

/// The container security context for Pod Security `restricted`, with a read-only root.
pub fn restricted_container_security() -> Value {
    json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]}})
}

/// The hash a live pod was built with.
pub fn pod_hash(pod: &Pod) -> Option<&str> {
    pod.metadata.annotations.as_ref()?.get(POD_HASH).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alcove_crds::Tenant;

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
                &PodInputs { placement: &p, key_rotation: rotation, knowledge_bases: &[] },
            )
            .unwrap(),
        )
        .unwrap()
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

    #[test]
    fn uri_sources_are_refused_by_name() {
        let mut i = instance("instance-gguf.yaml");
        i.spec.model.source =
            serde_json::from_value(json!({"uri": "https://example.com/m.gguf"})).unwrap();
        let p = placement();
        let err = pod(
            &i,
            &Config::for_tests(),
            &PodInputs { placement: &p, key_rotation: "", knowledge_bases: &[] },
        )
        .unwrap_err();
        assert!(err.contains("spec.model.source.uri"), "{err}");
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
                &PodInputs { placement: &p, key_rotation: "", knowledge_bases: &mounts },
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
            &PodInputs { placement: &p, key_rotation: "", knowledge_bases: &both },
        )
        .unwrap_err();
        assert!(err.contains("different embedding models"), "{err}");
    }
}
