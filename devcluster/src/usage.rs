//! What each object consumes of a namespace's ResourceQuotas (kube-apiserver's quota evaluators).
//! The store keeps running totals per namespace from these, so admission never rescans a
//! namespace on each write.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::meta::{self, At};
use crate::quantity::Quantity;
use crate::resources::GroupResource;

fn is_terminal(pod: &Value) -> bool {
    matches!(pod.at("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"))
}

fn sum_container(pod: &Value, kind: &str) -> BTreeMap<String, Quantity> {
    let mut total: BTreeMap<String, Quantity> = BTreeMap::new();
    for c in pod.at("/spec/containers").and_then(Value::as_array).into_iter().flatten() {
        for (res, q) in c["resources"][kind].as_object().into_iter().flatten() {
            if let Some(q) = Quantity::from_value(q) {
                *total.entry(res.clone()).or_default() =
                    total.get(res).copied().unwrap_or_default() + q;
            }
        }
    }
    // Init containers run one at a time: the pod needs the largest of them.
    for c in pod.at("/spec/initContainers").and_then(Value::as_array).into_iter().flatten() {
        for (res, q) in c["resources"][kind].as_object().into_iter().flatten() {
            if let Some(q) = Quantity::from_value(q) {
                let cur = total.get(res).copied().unwrap_or_default();
                if q > cur {
                    total.insert(res.clone(), q);
                }
            }
        }
    }
    total
}

/// The quota resources a pod consumes.
pub fn pod_usage(pod: &Value) -> BTreeMap<String, Quantity> {
    let mut u = BTreeMap::new();
    if is_terminal(pod) {
        return u;
    }
    u.insert("pods".into(), Quantity::whole(1));
    u.insert("count/pods".into(), Quantity::whole(1));
    for (res, q) in sum_container(pod, "requests") {
        u.insert(format!("requests.{res}"), q);
        if res == "cpu" || res == "memory" {
            u.insert(res.clone(), q);
        }
    }
    for (res, q) in sum_container(pod, "limits") {
        u.insert(format!("limits.{res}"), q);
        // Extended resources (GPUs) are quota'd by their request, which equals the limit.
        if res.contains('/') && !u.contains_key(&format!("requests.{res}")) {
            u.insert(format!("requests.{res}"), q);
        }
    }
    u
}

fn pvc_usage(pvc: &Value) -> BTreeMap<String, Quantity> {
    let mut u = BTreeMap::new();
    u.insert("persistentvolumeclaims".into(), Quantity::whole(1));
    u.insert("count/persistentvolumeclaims".into(), Quantity::whole(1));
    if let Some(q) = pvc.at("/spec/resources/requests/storage").and_then(Quantity::from_value) {
        u.insert("requests.storage".into(), q);
        if let Some(class) = pvc.at("/spec/storageClassName").and_then(Value::as_str) {
            u.insert(format!("{class}.storageclass.storage.k8s.io/requests.storage"), q);
            u.insert(
                format!("{class}.storageclass.storage.k8s.io/persistentvolumeclaims"),
                Quantity::whole(1),
            );
        }
    }
    u
}

fn count_key(gr: &GroupResource) -> String {
    if gr.group.is_empty() {
        format!("count/{}", gr.resource)
    } else {
        format!("count/{}.{}", gr.resource, gr.group)
    }
}

/// What one object of a collection consumes.
pub fn usage_of(gr: &GroupResource, obj: &Value) -> BTreeMap<String, Quantity> {
    let mut u = match (gr.group.as_str(), gr.resource.as_str()) {
        ("", "pods") => pod_usage(obj),
        ("", "persistentvolumeclaims") => pvc_usage(obj),
        _ => BTreeMap::new(),
    };
    u.insert(count_key(gr), Quantity::whole(1));
    // Legacy object-count names.
    if gr.group.is_empty()
        && matches!(
            gr.resource.as_str(),
            "services" | "secrets" | "configmaps" | "resourcequotas" | "replicationcontrollers"
        )
    {
        u.insert(gr.resource.clone(), Quantity::whole(1));
    }
    u
}

/// What an object counts for in its namespace's quotas: pods being deleted count for nothing
/// (they free their share at once, as kube-apiserver's evaluator treats them).
pub fn quota_usage(gr: &GroupResource, obj: &Value) -> BTreeMap<String, Quantity> {
    if gr.group.is_empty() && gr.resource == "pods" && meta::is_deleting(obj) {
        return BTreeMap::new();
    }
    usage_of(gr, obj)
}
