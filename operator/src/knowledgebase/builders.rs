//! KnowledgeBase → index PVC, indexing Job, inline-documents ConfigMap, egress NetworkPolicy for
//! URL sources; and the KB's status from what was observed. Pure functions, no I/O.
//!
//! The index lives in `<kb>-index` (directory `index/`), written by one Job per source version
//! (`<kb>-index-<hash>`) that runs `alcove-inference index`. The Job reports its summary as its
//! termination message, so the operator never reads the tenant's volume or the job's logs.

use std::collections::BTreeMap;

use alcove_crds::{
    DataClass, KnowledgeBase, KnowledgeBasePhase, KnowledgeBaseStatus, LABEL_DATA_CLASS,
    LABEL_KNOWLEDGE_BASE, ResolvedPlacement, condition,
};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, PersistentVolumeClaim, PodSpec, PodTemplateSpec, ResourceRequirements,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use serde::Deserialize;
use serde_json::json;
use sha2::Digest;

use crate::config::{Config, TierConfig};
use crate::instance::builders::{claim, model_volume};
use crate::names::{COMPONENT_LABEL, INDEX_DIR};
use crate::objects::{
    config_map_volume, mount, pvc_volume, quantities, restricted_container_security,
    restricted_pod_security, secret_volume, string_map,
};

/// On the indexing Job: the source hash it indexes.
pub const SOURCE_HASH_LABEL: &str = "alcove.dev/source-hash";
const SOURCES_DIR: &str = "/sources";
const VOLUME_DIR: &str = "/kb";
const EMBEDDING_DIR: &str = "/embedding-model";

pub fn pvc_name(kb: &str) -> String {
    format!("{kb}-index")
}

pub fn inline_config_map_name(kb: &str) -> String {
    format!("{kb}-inline-documents")
}

pub fn network_policy_name(kb: &str) -> String {
    format!("{kb}-indexer-egress")
}

/// One Job per version of the sources, so a change never races a running index of the old ones.
pub fn job_name(kb: &str, hash: &str) -> String {
    format!("{kb}-index-{}", &hash[..hash.len().min(10)])
}

pub fn labels(kb: &KnowledgeBase) -> BTreeMap<String, String> {
    child_meta(kb, "").labels.unwrap_or_default()
}

fn child_meta(kb: &KnowledgeBase, name: &str) -> ObjectMeta {
    crate::tenant::builders::owned_meta(kb, name, LABEL_KNOWLEDGE_BASE)
}

/// The index volume: the KB's size or the tier's, in the tier's storage class. ReadWriteMany:
/// the indexing Job writes it while instances on other nodes read it.
pub fn pvc(kb: &KnowledgeBase, tier: &TierConfig) -> PersistentVolumeClaim {
    let mut meta = child_meta(kb, &pvc_name(&kb.name_any()));
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(LABEL_DATA_CLASS.into(), DataClass::KnowledgeBase.as_str().into());
    let size = kb.spec.storage.clone().unwrap_or_else(|| tier.knowledge_base_size.clone());
    claim(meta, "ReadWriteMany", &size, &tier.storage_class)
}

/// The inline documents, one key per source, when there are any.
pub fn inline_config_map(kb: &KnowledgeBase) -> Option<ConfigMap> {
    let data: BTreeMap<String, String> =
        kb.spec.sources.iter().filter_map(|s| Some((s.name.clone(), s.inline.clone()?))).collect();
    if data.is_empty() {
        return None;
    }
    Some(ConfigMap {
        metadata: child_meta(kb, &inline_config_map_name(&kb.name_any())),
        data: Some(data),
        ..Default::default()
    })
}

/// Egress for the indexing pod to its URL sources, when it has any (the tenant namespace denies
/// all other egress); see `objects::egress_policy`.
pub fn network_policy(kb: &KnowledgeBase) -> Option<NetworkPolicy> {
    let name = kb.name_any();
    crate::objects::egress_policy(
        child_meta(kb, &network_policy_name(&name)),
        string_map([(LABEL_KNOWLEDGE_BASE, name.as_str()), (COMPONENT_LABEL, "indexer")]),
        kb.spec.sources.iter().filter_map(|s| s.url.as_deref()),
    )
}

/// Hash of everything an index is built from: the sources as written, the contents of the
/// ConfigMap and Secret keys they name (`contents`: source name → key → value), the embedding
/// model and the chunking. A different hash means a new indexing Job.
pub fn source_hash(
    kb: &KnowledgeBase,
    contents: &BTreeMap<String, BTreeMap<String, String>>,
) -> String {
    let mut h = sha2::Sha256::new();
    let spec = json!({"sources": kb.spec.sources, "embeddingModel": kb.spec.embedding_model, "chunking": kb.spec.chunking});
    h.update(spec.to_string().as_bytes());
    for (source, keys) in contents {
        for (k, v) in keys {
            for part in [source.as_bytes(), k.as_bytes(), v.as_bytes()] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part);
            }
        }
    }
    crate::hash::hex(&h.finalize()[..10])
}

/// The indexing Job for sources with hash `hash`. `Err` names the spec field it cannot serve.
pub fn job(
    kb: &KnowledgeBase,
    config: &Config,
    placement: &ResolvedPlacement,
    hash: &str,
) -> Result<Job, String> {
    let name = kb.name_any();
    let (embedding_volume, embedding_path) = model_volume(
        "embedding-model",
        EMBEDDING_DIR,
        &kb.spec.embedding_model.source,
        kb.spec.embedding_model.path.as_deref(),
        "spec.embeddingModel",
        config,
    )?;
    let mut args: Vec<String> = vec![
        "index".into(),
        "--embedding-model".into(),
        embedding_path,
        "--out".into(),
        format!("{VOLUME_DIR}/{INDEX_DIR}"),
        "--name".into(),
        name.clone(),
        format!("--chunk-chars={}", kb.spec.chunking.size),
        format!("--overlap-chars={}", kb.spec.chunking.overlap),
        "--summary-file".into(),
        "/dev/termination-log".into(),
        "--log-format".into(),
        "json".into(),
    ];
    let mut volumes = vec![embedding_volume, pvc_volume("index", &pvc_name(&name), false)];
    let mut mounts =
        vec![mount("embedding-model", EMBEDDING_DIR, true), mount("index", VOLUME_DIR, false)];
    // Each ConfigMap, Secret or inline source is a directory under /sources named after the
    // source, so documents are reported as `<source>/<key>`.
    let items = |keys: &[String]| {
        crate::objects::items(&keys.iter().map(|k| (k.as_str(), k.as_str())).collect::<Vec<_>>())
    };
    for s in &kb.spec.sources {
        let volume = format!("source-{}", s.name);
        let v = if let Some(cm) = &s.config_map {
            config_map_volume(&volume, &cm.name, 0o444, items(&cm.keys))
        } else if let Some(secret) = &s.secret {
            secret_volume(&volume, &secret.name, 0o440, items(&secret.keys))
        } else if s.inline.is_some() {
            let inline = crate::objects::items(&[(s.name.as_str(), "inline")]);
            config_map_volume(&volume, &inline_config_map_name(&name), 0o444, inline)
        } else if let Some(url) = &s.url {
            args.extend(["--url".into(), format!("{}={url}", s.name)]);
            continue;
        } else {
            return Err(format!("spec.sources[name={}] sets no source", s.name));
        };
        let dir = format!("{SOURCES_DIR}/{}", s.name);
        args.extend(["--docs".into(), format!("{}={dir}", s.name)]);
        volumes.push(v);
        mounts.push(mount(&volume, &dir, true));
    }
    let mut pod_labels = labels(kb);
    pod_labels.insert(COMPONENT_LABEL.into(), "indexer".into());
    let mut job_labels = labels(kb);
    job_labels.insert(SOURCE_HASH_LABEL.into(), hash.into());
    let mut meta = child_meta(kb, &job_name(&name, hash));
    meta.labels = Some(job_labels);
    let indexer = Container {
        name: "index".into(),
        image: Some(config.inference_image.clone()),
        command: Some(vec!["/usr/local/bin/alcove-inference".into()]),
        args: Some(args),
        resources: Some(ResourceRequirements {
            requests: Some(quantities([("cpu", "500m"), ("memory", "1Gi")])),
            limits: Some(quantities([("cpu", "2"), ("memory", "4Gi")])),
            claims: None,
        }),
        security_context: Some(restricted_container_security()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    Ok(Job {
        metadata: meta,
        spec: Some(JobSpec {
            backoff_limit: Some(2),
            active_deadline_seconds: Some(3600),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(pod_labels), ..Default::default() }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    node_selector: Some(placement.node_selector.clone()),
                    tolerations: Some(placement.tolerations.clone()),
                    security_context: Some(restricted_pod_security()),
                    containers: vec![indexer],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    })
}

/// The summary `alcove-inference index` writes as its termination message.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IndexSummary {
    pub documents: i32,
    pub chunks: i32,
    pub indexed_at: i64,
}

/// What became of the Job for the current sources.
#[derive(Debug, Clone, PartialEq)]
pub enum JobView {
    Running,
    Succeeded(IndexSummary),
    /// Failed, with the job's reason and the container's last words.
    Failed(String),
}

/// What the controller saw, for the status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    pub hash: Option<String>,
    pub job: Option<JobView>,
    /// Never served (free tier, unsupported source): reason and message.
    pub refused: Option<(String, String)>,
    /// A ConfigMap or Secret named by a source is missing (its message).
    pub missing_source: Option<String>,
    /// The tenant's quota refused the volume or the job (its message).
    pub quota_refusal: Option<String>,
}

/// The status a knowledge base should have.
pub fn desired_status(
    kb: &KnowledgeBase,
    obs: &Observation,
    now: jiff::Timestamp,
) -> KnowledgeBaseStatus {
    let prev = kb.status.clone().unwrap_or_default();
    let generation = kb.metadata.generation;
    let c = |type_: &str, ok: bool, reason: &str, message: &str| {
        crate::conditions::condition(&prev.conditions, type_, ok, reason, message, generation, now)
    };
    let mut next = KnowledgeBaseStatus {
        observed_generation: generation,
        volume: prev.volume.clone(),
        ..prev.clone()
    };
    if obs.refused.is_none() {
        next.volume = Some(pvc_name(&kb.name_any()));
    }
    let has_index = |s: &KnowledgeBaseStatus| s.indexed_at.is_some();
    let (indexed, phase) = if let Some((reason, message)) = &obs.refused {
        (c(condition::INDEXED, false, reason, message), KnowledgeBasePhase::Failed)
    } else if let Some(m) = &obs.missing_source {
        (c(condition::INDEXED, false, "SourceMissing", m), KnowledgeBasePhase::Pending)
    } else if let Some(q) = &obs.quota_refusal {
        (
            c(
                condition::INDEXED,
                false,
                alcove_crds::reason::QUOTA_EXCEEDED,
                &format!("the tenant's quota has no room: {q}"),
            ),
            KnowledgeBasePhase::Pending,
        )
    } else {
        match &obs.job {
            Some(JobView::Succeeded(s)) => {
                next.documents = s.documents;
                next.chunks = s.chunks;
                next.indexed_at =
                    jiff::Timestamp::from_second(s.indexed_at).ok().map(|t| t.to_string());
                next.source_hash = obs.hash.clone();
                let msg = format!(
                    "{} documents in {} chunks, sources {}",
                    s.documents,
                    s.chunks,
                    obs.hash.as_deref().unwrap_or_default()
                );
                (c(condition::INDEXED, true, "Indexed", &msg), KnowledgeBasePhase::Ready)
            }
            Some(JobView::Failed(why)) => {
                (c(condition::INDEXED, false, "IndexFailed", why), KnowledgeBasePhase::Failed)
            }
            Some(JobView::Running) | None
                if prev.source_hash.is_some()
                    && prev.source_hash == obs.hash
                    && has_index(&prev) =>
            {
                let msg = format!(
                    "{} documents in {} chunks, sources {}",
                    prev.documents,
                    prev.chunks,
                    obs.hash.as_deref().unwrap_or_default()
                );
                (c(condition::INDEXED, true, "Indexed", &msg), KnowledgeBasePhase::Ready)
            }
            _ => (
                c(condition::INDEXED, false, "Indexing", "indexing the current sources"),
                KnowledgeBasePhase::Indexing,
            ),
        }
    };
    // Ready: an index instances can use, even while a newer one is being built.
    let ready = if let Some((reason, message)) = &obs.refused {
        c(condition::READY, false, reason, message)
    } else if has_index(&next) {
        let msg = if phase == KnowledgeBasePhase::Ready {
            "instances can use the index".to_string()
        } else {
            "instances use the previous index until the new one is written".to_string()
        };
        c(condition::READY, true, "IndexAvailable", &msg)
    } else {
        c(condition::READY, false, "NotIndexed", "no index yet")
    };
    next.phase = Some(phase);
    next.conditions = vec![indexed, ready];
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn kb(spec: Value) -> KnowledgeBase {
        serde_json::from_value(json!({
            "apiVersion": "alcove.dev/v1alpha1", "kind": "KnowledgeBase",
            "metadata": {"name": "handbook", "namespace": "tenant-acme", "uid": "uid-kb", "generation": 1},
            "spec": spec,
        }))
        .unwrap()
    }

    fn spec() -> Value {
        json!({
            "sources": [
                {"name": "policies", "configMap": {"name": "hr-docs"}},
                {"name": "keys", "secret": {"name": "private-docs", "keys": ["a.md"]}},
                {"name": "note", "inline": "Our office opens at nine."},
                {"name": "web", "url": "http://127.0.0.1:8123/guide.md"},
            ],
            "embeddingModel": {"source": {"platform": "minilm"}, "path": "all-MiniLM-L6-v2"},
        })
    }

    fn placement() -> ResolvedPlacement {
        ResolvedPlacement {
            node_selector: [(
                "topology.kubernetes.io/region".to_string(),
                "tw-taipei-1".to_string(),
            )]
            .into(),
            tolerations: vec![],
        }
    }

    #[test]
    fn job_mounts_every_source_under_its_name_and_passes_pod_security_restricted() {
        let j = serde_json::to_value(
            job(&kb(spec()), &Config::for_tests(), &placement(), "0123456789").unwrap(),
        )
        .unwrap();
        assert_eq!(j["metadata"]["name"], "handbook-index-0123456789");
        let pod = &j["spec"]["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["nodeSelector"]["topology.kubernetes.io/region"], "tw-taipei-1");
        let c = &pod["containers"][0];
        assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
        let args: Vec<&str> =
            c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert!(args.windows(2).any(|w| w == ["--docs", "policies=/sources/policies"]), "{args:?}");
        assert!(args.windows(2).any(|w| w == ["--docs", "note=/sources/note"]), "{args:?}");
        assert!(
            args.windows(2).any(|w| w == ["--url", "web=http://127.0.0.1:8123/guide.md"]),
            "{args:?}"
        );
        assert!(args.windows(2).any(|w| w == ["--out", "/kb/index"]));
        assert!(
            args.windows(2)
                .any(|w| w == ["--embedding-model", "/embedding-model/all-MiniLM-L6-v2"])
        );
        let vols = pod["volumes"].as_array().unwrap();
        let vol = |n: &str| vols.iter().find(|v| v["name"] == n).unwrap().clone();
        assert_eq!(vol("source-policies")["configMap"]["name"], "hr-docs");
        assert_eq!(vol("source-keys")["secret"]["items"], json!([{"key": "a.md", "path": "a.md"}]));
        assert_eq!(vol("source-note")["configMap"]["name"], "handbook-inline-documents");
        let mounts = c["volumeMounts"].as_array().unwrap();
        assert!(
            mounts.iter().any(|m| m["mountPath"] == "/sources/policies" && m["readOnly"] == true)
        );
        // No secret in env or args.
        assert!(c.get("env").is_none());
    }

    #[test]
    fn the_hash_follows_contents_and_spec() {
        let k = kb(spec());
        let mut contents = BTreeMap::new();
        contents.insert(
            "policies".to_string(),
            BTreeMap::from([("a.md".to_string(), "one".to_string())]),
        );
        let h1 = source_hash(&k, &contents);
        assert_eq!(h1, source_hash(&k, &contents));
        contents.get_mut("policies").unwrap().insert("a.md".into(), "two".into());
        assert_ne!(h1, source_hash(&k, &contents));
        let mut k2 = k.clone();
        k2.spec.chunking.size = 400;
        assert_ne!(source_hash(&k, &contents), source_hash(&k2, &contents));
    }

    #[test]
    fn egress_is_opened_only_for_url_sources() {
        let np = serde_json::to_value(network_policy(&kb(spec())).unwrap()).unwrap();
        assert_eq!(np["spec"]["egress"][0]["to"][0]["ipBlock"]["cidr"], "127.0.0.1/32");
        assert_eq!(np["spec"]["egress"][0]["ports"][0]["port"], 8123);
        let mut s = spec();
        s["sources"] = json!([{"name": "web", "url": "https://docs.example.com/guide"}]);
        let np = serde_json::to_value(network_policy(&kb(s)).unwrap()).unwrap();
        assert_eq!(np["spec"]["egress"][0]["ports"][0]["port"], 443);
        assert!(
            np["spec"]["egress"][0]["to"][0]["ipBlock"]["except"]
                .as_array()
                .unwrap()
                .contains(&json!("10.0.0.0/8"))
        );
        let mut s = spec();
        s["sources"] = json!([{"name": "note", "inline": "x"}]);
        assert!(network_policy(&kb(s)).is_none());
    }

    #[test]
    fn status_follows_the_job_and_keeps_the_previous_index_while_reindexing() {
        let now: jiff::Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        let mut k = kb(spec());
        let running = Observation {
            hash: Some("h1".into()),
            job: Some(JobView::Running),
            ..Default::default()
        };
        let s = desired_status(&k, &running, now);
        assert_eq!(s.phase, Some(KnowledgeBasePhase::Indexing));
        assert!(!crate::conditions::is_true(&s.conditions, condition::READY));
        let done = Observation {
            hash: Some("h1".into()),
            job: Some(JobView::Succeeded(IndexSummary {
                documents: 3,
                chunks: 7,
                indexed_at: 1_795_000_000,
            })),
            ..Default::default()
        };
        let s = desired_status(&k, &done, now);
        assert_eq!(
            (s.phase, s.documents, s.chunks, s.source_hash.as_deref()),
            (Some(KnowledgeBasePhase::Ready), 3, 7, Some("h1"))
        );
        assert!(
            crate::conditions::is_true(&s.conditions, condition::INDEXED)
                && crate::conditions::is_true(&s.conditions, condition::READY)
        );
        k.status = Some(s);
        // The finished job is gone: still Ready.
        let gone = Observation { hash: Some("h1".into()), ..Default::default() };
        assert_eq!(desired_status(&k, &gone, now).phase, Some(KnowledgeBasePhase::Ready));
        // New sources: indexing, the old index still serves.
        let s = desired_status(
            &k,
            &Observation {
                hash: Some("h2".into()),
                job: Some(JobView::Running),
                ..Default::default()
            },
            now,
        );
        assert_eq!(s.phase, Some(KnowledgeBasePhase::Indexing));
        assert!(
            crate::conditions::is_true(&s.conditions, condition::READY)
                && !crate::conditions::is_true(&s.conditions, condition::INDEXED)
        );
        // Refused: Failed, with the reason on both conditions.
        let s = desired_status(
            &k,
            &Observation {
                refused: Some(("TierHasNoKnowledgeBases".into(), "free tier".into())),
                ..Default::default()
            },
            now,
        );
        assert_eq!(s.phase, Some(KnowledgeBasePhase::Failed));
        assert!(
            s.conditions
                .iter()
                .all(|c| c.reason == "TierHasNoKnowledgeBases" && c.status == "False")
        );
    }
}
