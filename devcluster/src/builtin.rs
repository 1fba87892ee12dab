//! Built-in kinds: decoding through the k8s-openapi types (so wrong types are refused and unknown
//! fields found, as kube-apiserver's decoder does), defaulting, and validation.

use std::borrow::Cow;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::error::FieldError;
use crate::meta::{self, At};

/// Decodes `obj` as the typed built-in and encodes it back: type errors become `Err`, fields the
/// type does not know are returned as dotted paths (and are gone from the result).
pub fn normalize(group: &str, kind: &str, obj: &Value) -> Result<(Value, Vec<String>), String> {
    use k8s_openapi::api::*;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
    macro_rules! typed {
        ($( ($g:literal, $k:literal, $t:ty) ),* $(,)?) => {
            match (group, kind) {
                $( ($g, $k) => roundtrip::<$t>(obj), )*
                _ => Ok((obj.clone(), Vec::new())),
            }
        };
    }
    typed!(
        ("", "Namespace", core::v1::Namespace),
        ("", "Node", core::v1::Node),
        ("", "Pod", core::v1::Pod),
        ("", "Service", core::v1::Service),
        ("", "Endpoints", core::v1::Endpoints),
        ("", "ConfigMap", core::v1::ConfigMap),
        ("", "Secret", core::v1::Secret),
        ("", "PersistentVolumeClaim", core::v1::PersistentVolumeClaim),
        ("", "PersistentVolume", core::v1::PersistentVolume),
        ("", "ServiceAccount", core::v1::ServiceAccount),
        ("", "ResourceQuota", core::v1::ResourceQuota),
        ("", "LimitRange", core::v1::LimitRange),
        ("", "Event", core::v1::Event),
        ("events.k8s.io", "Event", events::v1::Event),
        ("discovery.k8s.io", "EndpointSlice", discovery::v1::EndpointSlice),
        ("networking.k8s.io", "NetworkPolicy", networking::v1::NetworkPolicy),
        ("networking.k8s.io", "Ingress", networking::v1::Ingress),
        ("rbac.authorization.k8s.io", "Role", rbac::v1::Role),
        ("rbac.authorization.k8s.io", "RoleBinding", rbac::v1::RoleBinding),
        ("rbac.authorization.k8s.io", "ClusterRole", rbac::v1::ClusterRole),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding", rbac::v1::ClusterRoleBinding),
        ("coordination.k8s.io", "Lease", coordination::v1::Lease),
        ("batch", "Job", batch::v1::Job),
        ("apps", "Deployment", apps::v1::Deployment),
        ("apps", "ReplicaSet", apps::v1::ReplicaSet),
        ("apps", "StatefulSet", apps::v1::StatefulSet),
        ("policy", "PodDisruptionBudget", policy::v1::PodDisruptionBudget),
        ("storage.k8s.io", "StorageClass", storage::v1::StorageClass),
        ("apiextensions.k8s.io", "CustomResourceDefinition", apiext::CustomResourceDefinition),
        (
            "authorization.k8s.io",
            "SelfSubjectAccessReview",
            authorization::v1::SelfSubjectAccessReview
        ),
        ("authorization.k8s.io", "SubjectAccessReview", authorization::v1::SubjectAccessReview),
        (
            "authorization.k8s.io",
            "SelfSubjectRulesReview",
            authorization::v1::SelfSubjectRulesReview
        ),
        ("authentication.k8s.io", "TokenReview", authentication::v1::TokenReview),
        ("authentication.k8s.io", "SelfSubjectReview", authentication::v1::SelfSubjectReview),
    )
}

fn roundtrip<T: DeserializeOwned + Serialize>(obj: &Value) -> Result<(Value, Vec<String>), String> {
    // Only kinds that hold resource quantities; elsewhere (CRD schemas' `default`, …) numbers
    // are numbers. The others are decoded from `obj` as it is: every write of a built-in comes
    // through here, and its two copies of the object were about a quarter of the cost.
    let kind = obj["kind"].as_str().unwrap_or_default();
    let mut input = Cow::Borrowed(obj);
    if matches!(
        kind,
        "Pod"
            | "LimitRange"
            | "ResourceQuota"
            | "PersistentVolumeClaim"
            | "PersistentVolume"
            | "Node"
            | "Deployment"
            | "ReplicaSet"
            | "StatefulSet"
            | "Job"
    ) {
        stringify_quantities(input.to_mut(), false);
    }
    let typed = T::deserialize(&*input).map_err(|e| e.to_string())?;
    let out = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut unknown = Vec::new();
    find_unknown(&input, &out, "", &mut unknown);
    Ok((out, unknown))
}

/// Quantities may be written as JSON numbers (`nvidia.com/gpu: 1`); the typed form wants strings.
fn stringify_quantities(v: &mut Value, in_quantity_map: bool) {
    const QUANTITY_MAPS: &[&str] = &[
        "limits",
        "requests",
        "hard",
        "used",
        "capacity",
        "allocatable",
        "max",
        "min",
        "default",
        "defaultRequest",
        "maxLimitRequestRatio",
    ];
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                if in_quantity_map && let Value::Number(n) = child {
                    *child = Value::String(n.to_string());
                    continue;
                }
                let next = QUANTITY_MAPS.contains(&k.as_str());
                if k == "sizeLimit"
                    && let Value::Number(n) = child
                {
                    *child = Value::String(n.to_string());
                    continue;
                }
                stringify_quantities(child, next && child.is_object());
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| stringify_quantities(x, false)),
        _ => {}
    }
}

fn find_unknown(input: &Value, output: &Value, path: &str, unknown: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                if v.is_null() {
                    continue;
                }
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match o.get(k) {
                    Some(ov) => find_unknown(v, ov, &p, unknown),
                    None => unknown.push(p),
                }
            }
        }
        (Value::Array(i), Value::Array(o)) if i.len() == o.len() => {
            for (iv, ov) in i.iter().zip(o) {
                find_unknown(iv, ov, path, unknown);
            }
        }
        _ => {}
    }
}

/// Cluster IPs are handed out from 10.96.0.0/12 like a default kube-apiserver: the lowest free
/// one (10.96.0.1 goes to the `kubernetes` Service, created first). `taken` holds the offsets in
/// the range (`cluster_ip_offset`) of the IPs in use. None when the range is full.
pub fn allocate_cluster_ip(taken: &std::collections::BTreeSet<u32>) -> Option<String> {
    let mut free = 1u32;
    for &t in taken.range(1..) {
        if t > free {
            break;
        }
        free = t + 1;
    }
    (free < (1 << 20) - 1).then(|| cluster_ip(free))
}

fn cluster_ip(n: u32) -> String {
    format!("10.{}.{}.{}", 96 + (n >> 16), (n >> 8) & 0xff, n & 0xff)
}

/// Where an IP lies in the service range, if it does.
pub fn cluster_ip_offset(ip: &str) -> Option<u32> {
    let octets: Vec<u32> = ip.split('.').map(|o| o.parse().ok()).collect::<Option<_>>()?;
    match octets[..] {
        [10, b, c, d] if (96..112).contains(&b) && c < 256 && d < 256 => {
            Some(((b - 96) << 16) | (c << 8) | d)
        }
        _ => None,
    }
}

fn default_probe(probe: &mut Value) {
    for (k, v) in [
        ("timeoutSeconds", 1),
        ("periodSeconds", 10),
        ("successThreshold", 1),
        ("failureThreshold", 3),
    ] {
        if probe.get(k).is_none() {
            probe[k] = v.into();
        }
    }
    if let Some(h) = probe.get_mut("httpGet") {
        if h.get("scheme").is_none() {
            h["scheme"] = "HTTP".into();
        }
        if h.get("path").is_none() {
            h["path"] = "/".into();
        }
    }
}

/// Pod spec defaults as the apiserver's defaulting functions set them.
pub fn default_pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    for (k, v) in [
        ("restartPolicy", json!("Always")),
        ("dnsPolicy", json!("ClusterFirst")),
        ("schedulerName", json!("default-scheduler")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("securityContext", json!({})),
        ("enableServiceLinks", json!(true)),
    ] {
        if spec.get(k).is_none() {
            spec[k] = v;
        }
    }
    if spec.get("serviceAccountName").is_none() {
        spec["serviceAccountName"] =
            spec.get("serviceAccount").cloned().unwrap_or_else(|| "default".into());
    }
    for list in ["containers", "initContainers"] {
        for c in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
            if c.get("terminationMessagePath").is_none() {
                c["terminationMessagePath"] = "/dev/termination-log".into();
            }
            if c.get("terminationMessagePolicy").is_none() {
                c["terminationMessagePolicy"] = "File".into();
            }
            if c.get("imagePullPolicy").is_none() {
                let image = c["image"].as_str().unwrap_or_default();
                let tag = image.rsplit('/').next().unwrap_or(image);
                let latest = !tag.contains(':') || tag.ends_with(":latest");
                c["imagePullPolicy"] =
                    if latest && !image.contains('@') { "Always" } else { "IfNotPresent" }.into();
            }
            if c.get("resources").is_none() {
                c["resources"] = json!({});
            }
            for p in c.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
                if p.get("protocol").is_none() {
                    p["protocol"] = "TCP".into();
                }
            }
            for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
                if let Some(pr) = c.get_mut(probe) {
                    default_probe(pr);
                }
            }
        }
    }
    for v in spec.get_mut("volumes").and_then(Value::as_array_mut).into_iter().flatten() {
        for src in ["configMap", "secret"] {
            if let Some(s) = v.get_mut(src)
                && s.get("defaultMode").is_none()
            {
                s["defaultMode"] = 420.into();
            }
        }
    }
}

/// Defaults for built-in kinds on create (and on update where the apiserver defaults too).
pub fn apply_defaults(group: &str, kind: &str, obj: &mut Value, creating: bool) {
    // A Secret's `stringData` is write-only: kube-apiserver folds it into `data` (base64, its
    // keys winning) and never stores it.
    if (group, kind) == ("", "Secret")
        && let Some(Value::Object(strings)) =
            obj.as_object_mut().and_then(|o| o.remove("stringData"))
    {
        use base64::Engine;
        if !obj["data"].is_object() {
            obj["data"] = json!({});
        }
        for (k, v) in strings {
            let text = v.as_str().unwrap_or_default();
            obj["data"][k] = base64::engine::general_purpose::STANDARD.encode(text).into();
        }
    }
    match (group, kind) {
        ("", "Pod") => {
            if let Some(spec) = obj.get_mut("spec") {
                default_pod_spec(spec);
                let tolerations =
                    spec.get("tolerations").and_then(Value::as_array).cloned().unwrap_or_default();
                let mut t = tolerations.clone();
                for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
                    if !tolerations.iter().any(|x| x["key"] == key) {
                        t.push(
                            json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}),
                        );
                    }
                }
                spec["tolerations"] = Value::Array(t);
                if spec.get("priority").is_none() {
                    spec["priority"] = 0.into();
                }
            }
            if creating {
                obj["status"] = json!({"phase": "Pending", "qosClass": qos_class(&obj["spec"])});
            }
        }
        ("", "Namespace") => {
            let name = meta::name(obj).to_string();
            meta::set_label(obj, "kubernetes.io/metadata.name", &name);
            if creating {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
                obj["status"] = json!({"phase": "Active"});
            }
        }
        ("", "Service") => {
            let spec = &mut obj["spec"];
            if !spec.is_object() {
                *spec = json!({});
            }
            for (k, v) in [
                ("type", json!("ClusterIP")),
                ("sessionAffinity", json!("None")),
                ("ipFamilies", json!(["IPv4"])),
                ("ipFamilyPolicy", json!("SingleStack")),
                ("internalTrafficPolicy", json!("Cluster")),
            ] {
                if spec.get(k).is_none() {
                    spec[k] = v;
                }
            }
            for p in spec.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
                if p.get("protocol").is_none() {
                    p["protocol"] = "TCP".into();
                }
                if p.get("targetPort").is_none() {
                    p["targetPort"] = p["port"].clone();
                }
            }
            if creating && obj.get("status").is_none() {
                obj["status"] = json!({"loadBalancer": {}});
            }
        }
        ("", "Secret") if obj["type"].as_str().is_none_or(str::is_empty) => {
            obj["type"] = "Opaque".into();
        }
        ("", "PersistentVolumeClaim") => {
            let spec = &mut obj["spec"];
            if spec.get("volumeMode").is_none() {
                spec["volumeMode"] = "Filesystem".into();
            }
            if creating {
                obj["status"] = json!({"phase": "Pending"});
            }
        }
        ("", "PersistentVolume") => {
            let spec = &mut obj["spec"];
            if spec.get("persistentVolumeReclaimPolicy").is_none() {
                spec["persistentVolumeReclaimPolicy"] = "Retain".into();
            }
            if spec.get("volumeMode").is_none() {
                spec["volumeMode"] = "Filesystem".into();
            }
            if creating {
                obj["status"] = json!({"phase": "Pending"});
            }
        }
        ("batch", "Job") => {
            let uid = meta::uid(obj).to_string();
            let name = meta::name(obj).to_string();
            let spec = &mut obj["spec"];
            for (k, v) in [
                ("completions", json!(1)),
                ("parallelism", json!(1)),
                ("backoffLimit", json!(6)),
                ("completionMode", json!("NonIndexed")),
                ("suspend", json!(false)),
                ("podReplacementPolicy", json!("TerminatingOrFailed")),
            ] {
                if spec.get(k).is_none() {
                    spec[k] = v;
                }
            }
            if creating && spec.get("selector").is_none() {
                spec["selector"] =
                    json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
                let tmeta = &mut spec["template"]["metadata"];
                if !tmeta.is_object() {
                    *tmeta = json!({});
                }
                for (k, v) in [
                    ("batch.kubernetes.io/controller-uid", uid.as_str()),
                    ("controller-uid", uid.as_str()),
                    ("batch.kubernetes.io/job-name", name.as_str()),
                    ("job-name", name.as_str()),
                ] {
                    tmeta["labels"][k] = v.into();
                }
            }
            if let Some(ps) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
                default_pod_spec(ps);
            }
            if creating {
                obj["status"] = json!({});
            }
        }
        ("apps", "Deployment") | ("apps", "ReplicaSet") | ("apps", "StatefulSet") => {
            let spec = &mut obj["spec"];
            if spec.get("replicas").is_none() {
                spec["replicas"] = 1.into();
            }
            if kind == "Deployment" {
                for (k, v) in [
                    ("revisionHistoryLimit", json!(10)),
                    ("progressDeadlineSeconds", json!(600)),
                    (
                        "strategy",
                        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
                    ),
                ] {
                    if spec.get(k).is_none() {
                        spec[k] = v;
                    }
                }
            }
            if let Some(ps) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
                default_pod_spec(ps);
            }
            if creating {
                obj["status"] = json!({});
            }
        }
        ("storage.k8s.io", "StorageClass") => {
            if obj.get("reclaimPolicy").is_none() {
                obj["reclaimPolicy"] = "Delete".into();
            }
            if obj.get("volumeBindingMode").is_none() {
                obj["volumeBindingMode"] = "Immediate".into();
            }
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") if creating => {
            obj["status"] = json!({});
        }
        _ => {}
    }
}

/// QoS class from requests and limits (Guaranteed / Burstable / BestEffort).
pub fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> =
        spec["containers"].as_array().map(|a| a.iter().collect()).unwrap_or_default();
    let any = containers.iter().any(|c| {
        c.at("/resources/requests").and_then(Value::as_object).is_some_and(|m| !m.is_empty())
            || c.at("/resources/limits").and_then(Value::as_object).is_some_and(|m| !m.is_empty())
    });
    if !any {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        let limits = c.at("/resources/limits").and_then(Value::as_object);
        let requests = c.at("/resources/requests").and_then(Value::as_object);
        ["cpu", "memory"].iter().all(|r| {
            let l = limits.and_then(|m| m.get(*r));
            l.is_some() && requests.and_then(|m| m.get(*r)).is_none_or(|q| Some(q) == l)
        })
    });
    if guaranteed { "Guaranteed" } else { "Burstable" }
}

/// How a kind's names are validated.
#[derive(Clone, Copy, PartialEq)]
enum NameRule {
    Subdomain,
    Label,
    /// RBAC objects: any path segment (`system:discovery`).
    PathSegment,
}

fn validate_metadata(obj: &Value, rule: NameRule, errors: &mut Vec<FieldError>) {
    let name = meta::name(obj);
    let gen_name = obj.at("/metadata/generateName").and_then(Value::as_str).unwrap_or_default();
    let name_is_label = rule == NameRule::Label;
    if name.is_empty() && gen_name.is_empty() {
        errors.push(FieldError::required("metadata.name", "name or generateName is required"));
    } else if rule == NameRule::PathSegment {
        if name == "." || name == ".." || name.contains('/') || name.contains('%') {
            errors.push(FieldError::invalid(
                "metadata.name",
                &Value::from(name),
                "may not be '.' or '..' and may not contain '/' or '%'",
            ));
        }
    } else if !name.is_empty() {
        let ok = if name_is_label {
            meta::is_dns1123_label(name)
        } else {
            meta::is_dns1123_subdomain(name)
        };
        if !ok {
            let detail = if name_is_label {
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
            } else {
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
            };
            errors.push(FieldError::invalid("metadata.name", &Value::from(name), detail));
        }
    }
    if let Some(labels) = meta::labels(obj) {
        for (k, v) in labels {
            if !meta::is_qualified_name(k) {
                errors.push(FieldError::invalid("metadata.labels", &Value::from(k.as_str()), "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
            }
            let v = v.as_str().unwrap_or_default();
            if !meta::is_label_value(v) {
                errors.push(FieldError::invalid("metadata.labels", &Value::from(v), "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
            }
        }
    }
    if let Some(ann) = obj.at("/metadata/annotations").and_then(Value::as_object) {
        let total: usize = ann.iter().map(|(k, v)| k.len() + v.as_str().map_or(0, str::len)).sum();
        if total > 256 * 1024 {
            errors.push(FieldError::too_long("metadata.annotations", 256 * 1024));
        }
        for k in ann.keys() {
            if !meta::is_qualified_name(&k.to_lowercase()) {
                errors.push(FieldError::invalid(
                    "metadata.annotations",
                    &Value::from(k.as_str()),
                    "name part must consist of alphanumeric characters, '-', '_' or '.'",
                ));
            }
        }
    }
    for (i, f) in meta::finalizers(obj).iter().enumerate() {
        if !meta::is_qualified_name(f) {
            errors.push(FieldError::invalid(
                format!("metadata.finalizers[{i}]"),
                &Value::from(f.as_str()),
                "name part must consist of alphanumeric characters, '-', '_' or '.'",
            ));
        }
    }
}

fn validate_pod_spec(spec: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let containers = spec["containers"].as_array().cloned().unwrap_or_default();
    if containers.is_empty() {
        errors.push(FieldError::required(format!("{path}.containers"), ""));
    }
    let volumes: Vec<&str> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for (i, v) in volumes.iter().enumerate() {
        if volumes[..i].contains(v) {
            errors
                .push(FieldError::duplicate(format!("{path}.volumes[{i}].name"), &Value::from(*v)));
        }
    }
    let mut names: Vec<String> = Vec::new();
    for (list, items) in [
        ("containers", containers),
        ("initContainers", spec["initContainers"].as_array().cloned().unwrap_or_default()),
    ] {
        for (i, c) in items.iter().enumerate() {
            let p = format!("{path}.{list}[{i}]");
            let name = c["name"].as_str().unwrap_or_default();
            if name.is_empty() {
                errors.push(FieldError::required(format!("{p}.name"), ""));
            } else if names.iter().any(|n| n == name) {
                errors.push(FieldError::duplicate(format!("{p}.name"), &Value::from(name)));
            } else if !meta::is_dns1123_label(name) {
                errors.push(FieldError::invalid(
                    format!("{p}.name"),
                    &Value::from(name),
                    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'",
                ));
            }
            names.push(name.to_string());
            if c["image"].as_str().unwrap_or_default().is_empty() {
                errors.push(FieldError::required(format!("{p}.image"), ""));
            }
            for (j, port) in c["ports"].as_array().into_iter().flatten().enumerate() {
                let n = port["containerPort"].as_i64().unwrap_or(0);
                if !(1..=65535).contains(&n) {
                    errors.push(FieldError::invalid(
                        format!("{p}.ports[{j}].containerPort"),
                        &port["containerPort"],
                        "must be between 1 and 65535, inclusive",
                    ));
                }
            }
            for (j, m) in c["volumeMounts"].as_array().into_iter().flatten().enumerate() {
                let vn = m["name"].as_str().unwrap_or_default();
                if !volumes.contains(&vn) {
                    errors.push(FieldError::not_found(
                        format!("{p}.volumeMounts[{j}].name"),
                        &Value::from(vn),
                    ));
                }
                if m["mountPath"].as_str().unwrap_or_default().is_empty() {
                    errors
                        .push(FieldError::required(format!("{p}.volumeMounts[{j}].mountPath"), ""));
                }
            }
        }
    }
}

/// Validation of built-in kinds (the subset of kube-apiserver's rules this server enforces).
pub fn validate(group: &str, kind: &str, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let rule = match (group, kind) {
        ("", "Namespace") | ("", "Service") => NameRule::Label,
        ("rbac.authorization.k8s.io", _) => NameRule::PathSegment,
        _ => NameRule::Subdomain,
    };
    validate_metadata(obj, rule, &mut errors);
    match (group, kind) {
        ("", "Pod") => {
            validate_pod_spec(&obj["spec"], "spec", &mut errors);
            if let Some(old) = old {
                let mut a = old["spec"].clone();
                let mut b = obj["spec"].clone();
                // Only images, activeDeadlineSeconds and added tolerations may change.
                for s in [&mut a, &mut b] {
                    for c in s["containers"].as_array_mut().into_iter().flatten() {
                        c.as_object_mut().map(|m| m.remove("image"));
                    }
                    if let Some(m) = s.as_object_mut() {
                        m.remove("activeDeadlineSeconds");
                        m.remove("tolerations");
                    }
                }
                if a != b {
                    errors.push(FieldError::forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"));
                }
            }
        }
        ("", "Service") => {
            let ty = obj.at("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP");
            let ports =
                obj.at("/spec/ports").and_then(Value::as_array).cloned().unwrap_or_default();
            if ports.is_empty()
                && ty != "ExternalName"
                && obj.at("/spec/clusterIP").and_then(Value::as_str) != Some("None")
            {
                errors.push(FieldError::required("spec.ports", ""));
            }
            for (i, p) in ports.iter().enumerate() {
                let n = p["port"].as_i64().unwrap_or(0);
                if !(1..=65535).contains(&n) {
                    errors.push(FieldError::invalid(
                        format!("spec.ports[{i}].port"),
                        &p["port"],
                        "must be between 1 and 65535, inclusive",
                    ));
                }
            }
            if let Some(old) = old {
                let (a, b) = (old.at("/spec/clusterIP"), obj.at("/spec/clusterIP"));
                if a.is_some() && b.is_some() && a != b {
                    errors.push(FieldError::invalid(
                        "spec.clusterIPs[0]",
                        b.unwrap_or(&Value::Null),
                        "may not change once set",
                    ));
                }
            }
        }
        ("", "ConfigMap") | ("", "Secret") => {
            for field in ["data", "binaryData", "stringData"] {
                for k in obj[field].as_object().into_iter().flatten().map(|(k, _)| k) {
                    let ok = !k.is_empty()
                        && k.len() <= 253
                        && k.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
                    if !ok {
                        errors.push(FieldError::invalid(format!("{field}[{k}]"), &Value::from(k.as_str()), "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"));
                    }
                }
            }
            if let Some(old) = old
                && old["immutable"] == Value::Bool(true)
                && (old["data"] != obj["data"] || old["binaryData"] != obj["binaryData"])
            {
                errors.push(FieldError::forbidden(
                    "data",
                    "field is immutable when `immutable` is set",
                ));
            }
        }
        ("", "PersistentVolumeClaim") => {
            if obj.at("/spec/accessModes").and_then(Value::as_array).is_none_or(Vec::is_empty) {
                errors.push(FieldError::required("spec.accessModes", ""));
            }
            if obj.at("/spec/resources/requests/storage").is_none() {
                errors.push(FieldError::required("spec.resources[storage]", ""));
            }
            if let Some(old) = old {
                let strip = |v: &Value| {
                    let mut s = v["spec"].clone();
                    s.as_object_mut().map(|m| m.remove("resources"));
                    s
                };
                // The binder sets volumeName on a pending claim; everything else is immutable.
                let (mut a, mut b) = (strip(old), strip(obj));
                if a.get("volumeName").is_none() {
                    a.as_object_mut().map(|m| m.remove("volumeName"));
                    b.as_object_mut().map(|m| m.remove("volumeName"));
                }
                if a != b {
                    errors.push(FieldError::forbidden("spec", "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims"));
                }
            }
        }
        ("batch", "Job") => {
            let tpl = &obj["spec"]["template"];
            validate_pod_spec(&tpl["spec"], "spec.template.spec", &mut errors);
            let rp = tpl.at("/spec/restartPolicy").and_then(Value::as_str).unwrap_or_default();
            if !matches!(rp, "Never" | "OnFailure") {
                errors.push(FieldError::not_supported(
                    "spec.template.spec.restartPolicy",
                    &Value::from(rp),
                    &["OnFailure".into(), "Never".into()],
                ));
            }
            if let Some(old) = old
                && old["spec"]["template"] != obj["spec"]["template"]
            {
                errors.push(FieldError::invalid(
                    "spec.template",
                    &Value::String("object".into()),
                    "field is immutable",
                ));
            }
        }
        ("apps", "Deployment") | ("apps", "ReplicaSet") | ("apps", "StatefulSet") => {
            validate_pod_spec(&obj["spec"]["template"]["spec"], "spec.template.spec", &mut errors);
            if obj.at("/spec/selector").is_none() {
                errors.push(FieldError::required("spec.selector", ""));
            }
        }
        ("rbac.authorization.k8s.io", "RoleBinding")
        | ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            let rr = &obj["roleRef"];
            if rr["name"].as_str().unwrap_or_default().is_empty() {
                errors.push(FieldError::required("roleRef.name", ""));
            }
            let allowed: &[&str] =
                if kind == "RoleBinding" { &["Role", "ClusterRole"] } else { &["ClusterRole"] };
            if !allowed.contains(&rr["kind"].as_str().unwrap_or_default()) {
                errors.push(FieldError::not_supported(
                    "roleRef.kind",
                    &rr["kind"],
                    &allowed.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                ));
            }
            if let Some(old) = old
                && old["roleRef"] != obj["roleRef"]
            {
                errors.push(FieldError::invalid(
                    "roleRef",
                    &Value::String("object".into()),
                    "cannot change roleRef",
                ));
            }
            for (i, s) in obj["subjects"].as_array().into_iter().flatten().enumerate() {
                if !matches!(s["kind"].as_str(), Some("User" | "Group" | "ServiceAccount")) {
                    errors.push(FieldError::not_supported(
                        format!("subjects[{i}].kind"),
                        &s["kind"],
                        &["ServiceAccount".into(), "User".into(), "Group".into()],
                    ));
                }
            }
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            errors.extend(crate::schema::validate_crd(obj))
        }
        _ => {}
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ips_lowest_free_in_the_range() {
        let taken: std::collections::BTreeSet<u32> = [1, 2, 4].into_iter().collect();
        assert_eq!(allocate_cluster_ip(&taken).as_deref(), Some("10.96.0.3"));
        assert_eq!(allocate_cluster_ip(&Default::default()).as_deref(), Some("10.96.0.1"));
        assert_eq!(cluster_ip_offset("10.96.1.2"), Some(258));
        assert_eq!(cluster_ip_offset("10.111.255.254"), Some((1 << 20) - 2));
        assert_eq!(cluster_ip(258), "10.96.1.2");
        for outside in ["10.112.0.1", "10.95.0.1", "192.168.0.1", "10.96.0", "10.96.0.300", "x"] {
            assert_eq!(cluster_ip_offset(outside), None, "{outside}");
        }
        let full: std::collections::BTreeSet<u32> = (1..(1 << 20) - 1).collect();
        assert_eq!(allocate_cluster_ip(&full), None);
    }

    #[test]
    fn typed_decoding_finds_unknown_fields_and_type_errors() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i", "bogus": 1}], "nope": true}});
        let (_, unknown) = normalize("", "Pod", &pod).unwrap();
        assert_eq!(unknown, vec!["spec.containers.bogus".to_string(), "spec.nope".to_string()]);
        let bad = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "ports": [{"containerPort": "x"}]}]}});
        assert!(normalize("", "Pod", &bad).is_err());
    }

    #[test]
    fn pod_defaults_and_validation() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}});
        apply_defaults("", "Pod", &mut pod, true);
        assert_eq!(pod["spec"]["restartPolicy"], "Always");
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(pod["status"]["phase"], "Pending");
        assert!(validate("", "Pod", &pod, None).is_empty());
        let bad = json!({"metadata": {"name": "Bad_Name"}, "spec": {"containers": []}});
        let errs: Vec<String> =
            validate("", "Pod", &bad, None).iter().map(ToString::to_string).collect();
        assert!(
            errs.iter().any(|e| e.starts_with("metadata.name: Invalid value: \"Bad_Name\"")),
            "{errs:?}"
        );
        assert!(errs.contains(&"spec.containers: Required value".to_string()), "{errs:?}");
    }
}
