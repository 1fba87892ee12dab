//! A tenant's data report, what a data subject may ask for ("access the data we hold about
//! you"): each volume with its data class, size, where it lives and its retention timer. Pure:
//! `alcove data-report` reads the objects as the operator, the dashboard as the tenant's owner,
//! and both render these facts (with the encryption key and erasure receipts from the Tenant).

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::ResourceExt;

use crate::{ANNOTATION_MODEL_URI, ANNOTATION_RETAIN_UNTIL, LABEL_DATA_CLASS};

/// The annotation naming the retention rule that set a released volume's deadline, e.g.
/// `conversationHistory=7d`.
pub const ANNOTATION_RULE: &str = "alcove.dev/retention-rule";

/// One volume of the tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    pub name: String,
    /// Its `alcove.dev/data-class` (volumes without one are account data).
    pub data_class: String,
    /// The size it asked for, e.g. `1Gi`.
    pub size: String,
    /// The PersistentVolume it is bound to, or `(unbound)`.
    pub bound_to: String,
    /// The nodes of the pods that mount it now.
    pub nodes: Vec<String>,
    pub timer: Timer,
}

/// How long a volume is kept.
#[derive(Debug, Clone, PartialEq)]
pub enum Timer {
    /// Released to retention: erased at this instant, by this rule.
    ErasedAt { at: String, rule: String },
    /// Kept while its owner exists (an instance, a knowledge base).
    KeptWhile { kind: String, name: String },
    /// A model cache: kept while an instance of the tenant uses the model it holds.
    WhileModelUsed { uri: String },
    /// Kept until the tenant itself is erased.
    UntilTenantErased,
}

impl Timer {
    pub fn words(&self) -> String {
        match self {
            Timer::ErasedAt { at, rule } => format!("released: erased at {at} ({rule})"),
            Timer::KeptWhile { kind, name } => format!("kept while {kind} {name} exists"),
            Timer::WhileModelUsed { uri } => {
                format!("model cache of {uri}: kept while an instance uses it")
            }
            Timer::UntilTenantErased => "kept until the tenant is erased".into(),
        }
    }
}

/// The volumes, by name, with the nodes of the pods that mount each.
pub fn volumes(pvcs: &[PersistentVolumeClaim], pods: &[Pod]) -> Vec<Volume> {
    let mut out: Vec<Volume> = pvcs
        .iter()
        .map(|pvc| {
            let name = pvc.name_any();
            let spec = pvc.spec.as_ref();
            let nodes = pods
                .iter()
                .filter(|p| {
                    p.spec.as_ref().is_some_and(|s| {
                        s.volumes.iter().flatten().any(|v| {
                            v.persistent_volume_claim.as_ref().is_some_and(|c| c.claim_name == name)
                        })
                    })
                })
                .filter_map(|p| p.spec.as_ref()?.node_name.clone())
                .collect();
            let timer = match pvc.annotations().get(ANNOTATION_RETAIN_UNTIL) {
                Some(at) => Timer::ErasedAt {
                    at: at.clone(),
                    rule: pvc.annotations().get(ANNOTATION_RULE).cloned().unwrap_or_default(),
                },
                None => match pvc.metadata.owner_references.as_ref().and_then(|o| o.first()) {
                    Some(o) => Timer::KeptWhile { kind: o.kind.clone(), name: o.name.clone() },
                    None => match pvc.annotations().get(ANNOTATION_MODEL_URI) {
                        Some(uri) => Timer::WhileModelUsed { uri: uri.clone() },
                        None => Timer::UntilTenantErased,
                    },
                },
            };
            Volume {
                data_class: pvc
                    .labels()
                    .get(LABEL_DATA_CLASS)
                    .cloned()
                    .unwrap_or_else(|| "accountData".into()),
                size: spec
                    .and_then(|s| s.resources.as_ref()?.requests.as_ref()?.get("storage"))
                    .map(|q| q.0.clone())
                    .unwrap_or_default(),
                bound_to: spec
                    .and_then(|s| s.volume_name.clone())
                    .unwrap_or_else(|| "(unbound)".into()),
                nodes,
                timer,
                name,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_volume_says_its_class_place_and_timer() {
        let pvcs: Vec<PersistentVolumeClaim> = serde_json::from_value(serde_json::json!([
            {"metadata": {"name": "chat-history", "labels": {"alcove.dev/data-class": "conversationHistory"},
                          "ownerReferences": [{"apiVersion": "alcove.dev/v1alpha1", "kind": "InferenceInstance", "name": "chat", "uid": "u"}]},
             "spec": {"resources": {"requests": {"storage": "1Gi"}}, "volumeName": "pv-1"}},
            {"metadata": {"name": "old-history", "labels": {"alcove.dev/data-class": "conversationHistory"},
                          "annotations": {"alcove.dev/retain-until": "2026-12-09T00:00:00Z", "alcove.dev/retention-rule": "conversationHistory=7d"}},
             "spec": {}},
            {"metadata": {"name": "misc"}, "spec": {}},
            {"metadata": {"name": "model-cache-1", "labels": {"alcove.dev/data-class": "modelCache"},
                          "annotations": {"alcove.dev/model-uri": "hf://acme/tiny"}}, "spec": {}}
        ]))
        .unwrap();
        let pods: Vec<Pod> = serde_json::from_value(serde_json::json!([
            {"metadata": {"name": "chat"}, "spec": {"nodeName": "gpu-1", "containers": [],
              "volumes": [{"name": "h", "persistentVolumeClaim": {"claimName": "chat-history"}}]}}
        ]))
        .unwrap();
        let v = volumes(&pvcs, &pods);
        assert_eq!(
            v.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
            ["chat-history", "misc", "model-cache-1", "old-history"]
        );
        assert_eq!(
            v[2].timer.words(),
            "model cache of hf://acme/tiny: kept while an instance uses it"
        );
        assert_eq!(v[0].nodes, ["gpu-1"]);
        assert_eq!((v[0].size.as_str(), v[0].bound_to.as_str()), ("1Gi", "pv-1"));
        assert_eq!(v[0].timer.words(), "kept while InferenceInstance chat exists");
        assert_eq!(
            (v[1].data_class.as_str(), &v[1].timer),
            ("accountData", &Timer::UntilTenantErased)
        );
        assert_eq!(
            v[3].timer.words(),
            "released: erased at 2026-12-09T00:00:00Z (conversationHistory=7d)"
        );
        assert_eq!(v[3].bound_to, "(unbound)");
    }
}
