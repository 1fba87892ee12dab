//! Admission: namespace lifecycle, LimitRange defaults and bounds, ResourceQuota, and Pod
//! Security (baseline and restricted), with kube-apiserver's refusal messages.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::error::{ApiError, Qualified};
use crate::meta::{self, At};
use crate::quantity::Quantity;
use crate::resources::{GroupResource, ResourceInfo};
use crate::state::State;
use crate::usage::usage_of;

/// New objects may only go into namespaces that exist and are not being deleted.
pub fn namespace_lifecycle(
    st: &State,
    info: &ResourceInfo,
    namespace: &str,
    name: &str,
) -> Result<(), ApiError> {
    if !info.namespaced || namespace.is_empty() {
        return Ok(());
    }
    match st.get(&GroupResource::core("namespaces"), "", namespace) {
        None => {
            Err(ApiError::not_found(Qualified { group: "", resource: "namespaces" }, namespace))
        }
        Some(ns)
            if meta::is_deleting(&ns)
                || ns.at("/status/phase").and_then(Value::as_str) == Some("Terminating") =>
        {
            let mut e = ApiError::forbidden(
                format!(
                    "{} \"{}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                    Qualified { group: &info.group, resource: &info.plural },
                    name
                ),
                &info.group,
                &info.plural,
                name,
            );
            if let Some(d) = e.details.as_mut() {
                d["causes"] = json!([{"reason": "NamespaceTerminating", "message": format!("namespace {namespace} is being terminated"), "field": "metadata.namespace"}]);
            }
            Err(e)
        }
        Some(_) => Ok(()),
    }
}

/// Applies LimitRange container defaults to a pod and checks its min/max bounds.
pub fn limit_ranges(st: &State, namespace: &str, pod: &mut Value) -> Result<(), String> {
    let ranges = st.list(&GroupResource::core("limitranges"), Some(namespace));
    for lr in &ranges {
        for limit in lr.at("/spec/limits").and_then(Value::as_array).into_iter().flatten() {
            if limit["type"] != "Container" {
                continue;
            }
            for c in pod
                .pointer_mut("/spec/containers")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if !c["resources"].is_object() {
                    c["resources"] = json!({});
                }
                for (from, to) in [("default", "limits"), ("defaultRequest", "requests")] {
                    for (res, q) in limit[from].as_object().into_iter().flatten() {
                        let r = &mut c["resources"];
                        if r[to].get(res).is_none() {
                            if !r[to].is_object() {
                                r[to] = json!({});
                            }
                            r[to][res] = q.clone();
                        }
                    }
                }
                // A limit without a request requests the limit.
                if let Some(limits) = c["resources"]["limits"].as_object().cloned() {
                    for (res, q) in limits {
                        if c["resources"]["requests"].get(&res).is_none() {
                            if !c["resources"]["requests"].is_object() {
                                c["resources"]["requests"] = json!({});
                            }
                            c["resources"]["requests"][&res] = q;
                        }
                    }
                }
                let name = c["name"].as_str().unwrap_or_default().to_string();
                for (res, max) in limit["max"].as_object().into_iter().flatten() {
                    let want = c["resources"]["limits"].get(res).and_then(Quantity::from_value);
                    if let (Some(w), Some(m)) = (want, Quantity::from_value(max))
                        && w > m
                    {
                        return Err(format!(
                            "maximum {res} usage per Container is {m}, but limit is {w}"
                        ));
                    }
                    if want.is_none() {
                        return Err(format!(
                            "maximum {res} usage per Container is {max}.  No limit is specified",
                            max = Quantity::from_value(max).unwrap_or_default()
                        ));
                    }
                    let _ = &name;
                }
                for (res, min) in limit["min"].as_object().into_iter().flatten() {
                    let want = c["resources"]["requests"].get(res).and_then(Quantity::from_value);
                    if let (Some(w), Some(m)) = (want, Quantity::from_value(min))
                        && w < m
                    {
                        return Err(format!(
                            "minimum {res} usage per Container is {m}, but request is {w}"
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Current usage of everything a quota tracks in its namespace, from the store's running totals.
pub fn quota_used(
    st: &State,
    namespace: &str,
    hard: &serde_json::Map<String, Value>,
) -> BTreeMap<String, Quantity> {
    let totals = st.usage(namespace);
    hard.keys()
        .map(|k| (k.clone(), totals.and_then(|t| t.get(k)).copied().unwrap_or_default()))
        .collect()
}

/// (resource, requested, used, limit) of a quota the request would exceed.
type Over = (String, Quantity, Quantity, Quantity);

/// Refuses a new object that would take a namespace over one of its ResourceQuotas.
pub fn resource_quota(st: &State, info: &ResourceInfo, obj: &Value) -> Result<(), ApiError> {
    let namespace = meta::namespace(obj);
    if namespace.is_empty() {
        return Ok(());
    }
    let gr = info.storage_resource();
    let requested = usage_of(&gr, obj);
    let name = meta::name(obj);
    let forbidden = |msg: String| {
        ApiError::forbidden(
            format!(
                "{} \"{name}\" is forbidden: {msg}",
                Qualified { group: &gr.group, resource: &gr.resource }
            ),
            &gr.group,
            &gr.resource,
            name,
        )
    };
    for quota in st.list(&GroupResource::core("resourcequotas"), Some(namespace)) {
        let Some(hard) = quota.at("/spec/hard").and_then(Value::as_object) else { continue };
        let qname = meta::name(&quota);
        // A pod must say how much it uses of every compute resource the quota limits.
        if gr.resource == "pods" && gr.group.is_empty() {
            let mut missing: Vec<String> = hard
                .keys()
                .filter(|k| {
                    matches!(
                        k.as_str(),
                        "requests.cpu"
                            | "requests.memory"
                            | "limits.cpu"
                            | "limits.memory"
                            | "cpu"
                            | "memory"
                    ) && !requested.contains_key(*k)
                })
                .cloned()
                .collect();
            if !missing.is_empty() {
                missing.sort();
                let containers: Vec<&str> = obj
                    .at("/spec/containers")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["name"].as_str())
                    .collect();
                return Err(forbidden(format!(
                    "failed quota: {qname}: must specify {} for: {}",
                    missing.join(","),
                    containers.join(",")
                )));
            }
        }
        // A quota that limits nothing this object uses has nothing to say (and costs nothing).
        if !requested.keys().any(|k| hard.contains_key(k)) {
            continue;
        }
        let used = quota_used(st, namespace, hard);
        let mut over: Vec<Over> = Vec::new();
        for (k, limit) in hard {
            let Some(req) = requested.get(k) else { continue };
            let Some(limit) = Quantity::from_value(limit) else { continue };
            let now = used.get(k).copied().unwrap_or_default();
            if now + *req > limit {
                over.push((k.clone(), *req, now, limit));
            }
        }
        if !over.is_empty() {
            let list = |pick: fn(&Over) -> Quantity| {
                over.iter().map(|o| format!("{}={}", o.0, pick(o))).collect::<Vec<_>>().join(",")
            };
            return Err(forbidden(format!(
                "exceeded quota: {qname}, requested: {}, used: {}, limited: {}",
                list(|o| o.1),
                list(|o| o.2),
                list(|o| o.3)
            )));
        }
    }
    Ok(())
}

fn join_quote(items: &[String]) -> String {
    format!("\"{}\"", items.join("\", \""))
}

fn pluralize<'a>(singular: &'a str, plural: &'a str, n: usize) -> &'a str {
    if n == 1 { singular } else { plural }
}

fn containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().into_iter().flatten())
        .collect()
}

fn cname(c: &Value) -> String {
    c["name"].as_str().unwrap_or_default().to_string()
}

/// Pod Security Standards checks for a pod spec at a level; returns `reason (detail)` strings in
/// the order kube-apiserver prints them (by check id).
pub fn pod_security_violations(level: &str, spec: &Value) -> Vec<String> {
    if level == "privileged" {
        return Vec::new();
    }
    let restricted = level == "restricted";
    let psc = &spec["securityContext"];
    let cs = containers(spec);
    let mut out: Vec<(&str, String, String)> = Vec::new();
    let mut push =
        |id: &'static str, reason: String, detail: String| out.push((id, reason, detail));

    if restricted {
        let bad: Vec<String> = cs
            .iter()
            .filter(|c| {
                c.at("/securityContext/allowPrivilegeEscalation") != Some(&Value::Bool(false))
            })
            .map(|c| cname(c))
            .collect();
        if !bad.is_empty() {
            push(
                "allowPrivilegeEscalation",
                "allowPrivilegeEscalation != false".into(),
                format!(
                    "{} {} must set securityContext.allowPrivilegeEscalation=false",
                    pluralize("container", "containers", bad.len()),
                    join_quote(&bad)
                ),
            );
        }
    }
    // Baseline capabilities.
    const BASELINE_CAPS: &[&str] = &[
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    ];
    let mut bad_c = Vec::new();
    let mut bad_caps: Vec<String> = Vec::new();
    for c in &cs {
        for cap in c
            .at("/securityContext/capabilities/add")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let cap = cap.as_str().unwrap_or_default();
            if !BASELINE_CAPS.contains(&cap) {
                if !bad_c.contains(&cname(c)) {
                    bad_c.push(cname(c));
                }
                if !bad_caps.contains(&cap.to_string()) {
                    bad_caps.push(cap.to_string());
                }
            }
        }
    }
    if !bad_c.is_empty() {
        bad_caps.sort();
        push(
            "capabilities_baseline",
            "non-default capabilities".into(),
            format!(
                "{} {} must not include {} in securityContext.capabilities.add",
                pluralize("container", "containers", bad_c.len()),
                join_quote(&bad_c),
                join_quote(&bad_caps)
            ),
        );
    }
    if restricted {
        let mut missing_drop = Vec::new();
        let mut adding = Vec::new();
        let mut forbidden_caps: Vec<String> = Vec::new();
        for c in &cs {
            let caps = c.at("/securityContext/capabilities");
            let drops = caps
                .and_then(|x| x["drop"].as_array())
                .is_some_and(|d| d.iter().any(|x| x == "ALL"));
            if !drops {
                missing_drop.push(cname(c));
            }
            let mut added_bad = false;
            for cap in caps.and_then(|x| x["add"].as_array()).into_iter().flatten() {
                if cap != "NET_BIND_SERVICE" {
                    added_bad = true;
                    let s = cap.as_str().unwrap_or_default().to_string();
                    if !forbidden_caps.contains(&s) {
                        forbidden_caps.push(s);
                    }
                }
            }
            if added_bad {
                adding.push(cname(c));
            }
        }
        let mut details = Vec::new();
        if !missing_drop.is_empty() {
            details.push(format!(
                "{} {} must set securityContext.capabilities.drop=[\"ALL\"]",
                pluralize("container", "containers", missing_drop.len()),
                join_quote(&missing_drop)
            ));
        }
        if !adding.is_empty() {
            forbidden_caps.sort();
            details.push(format!(
                "{} {} must not include {} in securityContext.capabilities.add",
                pluralize("container", "containers", adding.len()),
                join_quote(&adding),
                join_quote(&forbidden_caps)
            ));
        }
        if !details.is_empty() {
            push("capabilities_restricted", "unrestricted capabilities".into(), details.join("; "));
        }
    }
    let mut host = Vec::new();
    for (k, label) in [
        ("hostNetwork", "hostNetwork=true"),
        ("hostPID", "hostPID=true"),
        ("hostIPC", "hostIPC=true"),
    ] {
        if spec[k] == Value::Bool(true) {
            host.push(label.to_string());
        }
    }
    if !host.is_empty() {
        push("hostNamespaces", "host namespaces".into(), host.join(", "));
    }
    let host_paths: Vec<String> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v.get("hostPath").is_some())
        .map(|v| v["name"].as_str().unwrap_or_default().to_string())
        .collect();
    if !host_paths.is_empty() {
        push(
            "hostPathVolumes",
            "hostPath volumes".into(),
            format!(
                "{} {}",
                pluralize("volume", "volumes", host_paths.len()),
                join_quote(&host_paths)
            ),
        );
    }
    let mut port_containers = Vec::new();
    let mut ports = Vec::new();
    for c in &cs {
        for p in c["ports"].as_array().into_iter().flatten() {
            if let Some(hp) = p["hostPort"].as_i64().filter(|n| *n != 0) {
                if !port_containers.contains(&cname(c)) {
                    port_containers.push(cname(c));
                }
                ports.push(hp.to_string());
            }
        }
    }
    if !port_containers.is_empty() {
        push(
            "hostPorts",
            "hostPort".into(),
            format!(
                "{} {} {} {} {}",
                pluralize("container", "containers", port_containers.len()),
                join_quote(&port_containers),
                pluralize("uses", "use", port_containers.len()),
                pluralize("hostPort", "hostPorts", ports.len()),
                ports.join(", ")
            ),
        );
    }
    let privileged: Vec<String> = cs
        .iter()
        .filter(|c| c.at("/securityContext/privileged") == Some(&Value::Bool(true)))
        .map(|c| cname(c))
        .collect();
    if !privileged.is_empty() {
        push(
            "privileged",
            "privileged".into(),
            format!(
                "{} {} must not set securityContext.privileged=true",
                pluralize("container", "containers", privileged.len()),
                join_quote(&privileged)
            ),
        );
    }
    if restricted {
        const ALLOWED: &[&str] = &[
            "configMap",
            "csi",
            "downwardAPI",
            "emptyDir",
            "ephemeral",
            "persistentVolumeClaim",
            "projected",
            "secret",
        ];
        let mut bad_vols = Vec::new();
        let mut bad_types: Vec<String> = Vec::new();
        for v in spec["volumes"].as_array().into_iter().flatten() {
            if let Some(ty) = v.as_object().and_then(|m| m.keys().find(|k| *k != "name"))
                && !ALLOWED.contains(&ty.as_str())
            {
                bad_vols.push(v["name"].as_str().unwrap_or_default().to_string());
                if !bad_types.contains(ty) {
                    bad_types.push(ty.clone());
                }
            }
        }
        if !bad_vols.is_empty() {
            bad_types.sort();
            push(
                "restrictedVolumes",
                "restricted volume types".into(),
                format!(
                    "{} {} {} {} {}",
                    pluralize("volume", "volumes", bad_vols.len()),
                    join_quote(&bad_vols),
                    pluralize("uses", "use", bad_vols.len()),
                    pluralize("restricted volume type", "restricted volume types", bad_types.len()),
                    join_quote(&bad_types)
                ),
            );
        }
        // runAsNonRoot
        let mut bad_setters = Vec::new();
        let pod_nonroot = psc["runAsNonRoot"] == Value::Bool(true);
        if psc["runAsNonRoot"] == Value::Bool(false) {
            bad_setters.push("pod".to_string());
        }
        let mut explicit = Vec::new();
        let mut implicit = Vec::new();
        for c in &cs {
            match c.at("/securityContext/runAsNonRoot") {
                Some(Value::Bool(false)) => explicit.push(cname(c)),
                Some(Value::Bool(true)) => {}
                _ => {
                    if !pod_nonroot {
                        implicit.push(cname(c));
                    }
                }
            }
        }
        if !explicit.is_empty() {
            bad_setters.push(format!(
                "{} {}",
                pluralize("container", "containers", explicit.len()),
                join_quote(&explicit)
            ));
        }
        if !bad_setters.is_empty() {
            push(
                "runAsNonRoot",
                "runAsNonRoot != true".into(),
                format!(
                    "{} must not set securityContext.runAsNonRoot=false",
                    bad_setters.join(" and ")
                ),
            );
        } else if !implicit.is_empty() {
            push(
                "runAsNonRoot",
                "runAsNonRoot != true".into(),
                format!(
                    "pod or {} {} must set securityContext.runAsNonRoot=true",
                    pluralize("container", "containers", implicit.len()),
                    join_quote(&implicit)
                ),
            );
        }
        // runAsUser=0
        let mut root = Vec::new();
        if psc["runAsUser"] == json!(0) {
            root.push("pod".to_string());
        }
        let rc: Vec<String> = cs
            .iter()
            .filter(|c| c.at("/securityContext/runAsUser") == Some(&json!(0)))
            .map(|c| cname(c))
            .collect();
        if !rc.is_empty() {
            root.push(format!(
                "{} {}",
                pluralize("container", "containers", rc.len()),
                join_quote(&rc)
            ));
        }
        if !root.is_empty() {
            push(
                "runAsUser",
                "runAsUser=0".into(),
                format!("{} must not set runAsUser=0", root.join(" and ")),
            );
        }
    }
    // seccomp: baseline forbids Unconfined; restricted requires RuntimeDefault or Localhost.
    let valid = |t: &Value| matches!(t.as_str(), Some("RuntimeDefault" | "Localhost"));
    let pod_type = psc.at("/seccompProfile/type");
    if restricted {
        let mut setters = Vec::new();
        let mut bad_values: Vec<String> = Vec::new();
        let pod_set = pod_type.is_some_and(valid);
        if let Some(t) = pod_type.filter(|t| !valid(t)) {
            setters.push("pod".to_string());
            bad_values.push(t.as_str().unwrap_or_default().into());
        }
        let mut explicit = Vec::new();
        let mut implicit = Vec::new();
        for c in &cs {
            match c.at("/securityContext/seccompProfile/type") {
                Some(t) if !valid(t) => {
                    explicit.push(cname(c));
                    let s = t.as_str().unwrap_or_default().to_string();
                    if !bad_values.contains(&s) {
                        bad_values.push(s);
                    }
                }
                Some(_) => {}
                None => {
                    if !pod_set {
                        implicit.push(cname(c));
                    }
                }
            }
        }
        if !explicit.is_empty() {
            setters.push(format!(
                "{} {}",
                pluralize("container", "containers", explicit.len()),
                join_quote(&explicit)
            ));
        }
        if !setters.is_empty() {
            bad_values.sort();
            push(
                "seccompProfile_restricted",
                "seccompProfile".into(),
                format!(
                    "{} must not set securityContext.seccompProfile.type to {}",
                    setters.join(" and "),
                    join_quote(&bad_values)
                ),
            );
        } else if !implicit.is_empty() {
            push(
                "seccompProfile_restricted",
                "seccompProfile".into(),
                format!(
                    "pod or {} {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
                    pluralize("container", "containers", implicit.len()),
                    join_quote(&implicit)
                ),
            );
        }
    } else {
        let mut setters = Vec::new();
        if pod_type == Some(&json!("Unconfined")) {
            setters.push("pod".to_string());
        }
        let bad: Vec<String> = cs
            .iter()
            .filter(|c| c.at("/securityContext/seccompProfile/type") == Some(&json!("Unconfined")))
            .map(|c| cname(c))
            .collect();
        if !bad.is_empty() {
            setters.push(format!(
                "{} {}",
                pluralize("container", "containers", bad.len()),
                join_quote(&bad)
            ));
        }
        if !setters.is_empty() {
            push(
                "seccompProfile_baseline",
                "seccompProfile".into(),
                format!(
                    "{} must not set securityContext.seccompProfile.type to \"Unconfined\"",
                    setters.join(" and ")
                ),
            );
        }
    }
    out.sort_by(|a, b| a.0.cmp(b.0));
    out.into_iter()
        .map(
            |(_, reason, detail)| {
                if detail.is_empty() { reason } else { format!("{reason} ({detail})") }
            },
        )
        .collect()
}

/// The enforce (or warn) level a namespace sets for pods, if any.
pub fn namespace_psa_level(st: &State, namespace: &str, mode: &str) -> Option<String> {
    let ns = st.get(&GroupResource::core("namespaces"), "", namespace)?;
    meta::label(&ns, &format!("pod-security.kubernetes.io/{mode}")).map(str::to_string)
}

/// The pod template a workload carries, if it is one.
pub fn pod_template_spec<'a>(group: &str, kind: &str, obj: &'a Value) -> Option<&'a Value> {
    match (group, kind) {
        ("", "Pod") => obj.get("spec"),
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") | ("batch", "Job") => {
            obj.at("/spec/template/spec")
        }
        _ => None,
    }
}

/// Pod Security admission: pods violating the namespace's `enforce` level are refused;
/// workloads whose template would violate it get a warning, as kube-apiserver does.
pub fn pod_security(st: &State, info: &ResourceInfo, obj: &Value) -> Result<Vec<String>, ApiError> {
    let namespace = meta::namespace(obj);
    let Some(spec) = pod_template_spec(&info.group, &info.kind, obj) else { return Ok(Vec::new()) };
    let mut warnings = Vec::new();
    if let Some(level) = namespace_psa_level(st, namespace, "enforce") {
        let v = pod_security_violations(&level, spec);
        if !v.is_empty() {
            let msg = format!("violates PodSecurity \"{level}:latest\": {}", v.join(", "));
            if info.kind == "Pod" {
                let name = meta::name(obj);
                return Err(ApiError::forbidden(
                    format!("pods \"{name}\" is forbidden: {msg}"),
                    "",
                    "pods",
                    name,
                ));
            }
            warnings.push(format!("would {msg}"));
        }
    }
    if let Some(level) = namespace_psa_level(st, namespace, "warn") {
        let v = pod_security_violations(&level, spec);
        if !v.is_empty() && warnings.is_empty() {
            warnings
                .push(format!("would violate PodSecurity \"{level}:latest\": {}", v.join(", ")));
        }
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::pod_usage;

    #[test]
    fn restricted_messages_match_pod_security_admission() {
        let spec = json!({"containers": [{"name": "c", "image": "x"}]});
        let v = pod_security_violations("restricted", &spec);
        assert_eq!(
            v.join(", "),
            "allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"c\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
        );
        let good = json!({"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "image": "x", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}],
            "volumes": [{"name": "d", "emptyDir": {}}]});
        assert!(pod_security_violations("restricted", &good).is_empty());
        let hostpath = json!({"containers": [{"name": "c"}], "volumes": [{"name": "h", "hostPath": {"path": "/"}}]});
        assert_eq!(
            pod_security_violations("baseline", &hostpath),
            vec!["hostPath volumes (volume \"h\")".to_string()]
        );
    }

    #[test]
    fn pod_usage_counts_gpus() {
        let pod = json!({"spec": {"containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "2"}, "requests": {"cpu": "500m"}}}]}});
        let u = pod_usage(&pod);
        assert_eq!(u["requests.nvidia.com/gpu"], Quantity::whole(2));
        assert_eq!(u["requests.cpu"], Quantity(500));
        assert_eq!(u["pods"], Quantity::whole(1));
    }
}
