//! API discovery: legacy (`/api`, `/apis`, per group-version resource lists) and aggregated
//! (`apidiscovery.k8s.io/v2`), generated from the resource registry.

use serde_json::{Value, json};

use crate::resources::{Registry, ResourceInfo};

fn subresource_verbs(sub: &str) -> Vec<&'static str> {
    match sub {
        "status" | "scale" => vec!["get", "patch", "update"],
        "log" => vec!["get"],
        "proxy" => vec!["create", "delete", "get", "patch", "update"],
        "binding" | "eviction" | "token" => vec!["create"],
        "finalize" => vec!["update"],
        _ => vec!["get"],
    }
}

fn subresource_kind(info: &ResourceInfo, sub: &str) -> (String, String, String) {
    match sub {
        "scale" => ("autoscaling".into(), "v1".into(), "Scale".into()),
        "binding" => ("".into(), "v1".into(), "Binding".into()),
        "eviction" => ("policy".into(), "v1".into(), "Eviction".into()),
        "token" => ("authentication.k8s.io".into(), "v1".into(), "TokenRequest".into()),
        "log" | "proxy" => ("".into(), "v1".into(), String::new()),
        _ => (info.group.clone(), info.version.clone(), info.kind.clone()),
    }
}

/// `/api`.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_json(name: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({"name": name, "versions": vs, "preferredVersion": vs.first().cloned().unwrap_or_default()})
}

/// `/apis`.
pub fn api_group_list(reg: &Registry) -> Value {
    let groups: Vec<Value> = reg
        .groups()
        .iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, vs)| group_json(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`.
pub fn api_group(reg: &Registry, group: &str) -> Option<Value> {
    let (g, vs) = reg.groups().into_iter().find(|(g, _)| g == group && !g.is_empty())?;
    let mut v = group_json(&g, &vs);
    v["kind"] = "APIGroup".into();
    v["apiVersion"] = "v1".into();
    Some(v)
}

/// `/api/v1` or `/apis/<group>/<version>`.
pub fn resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let infos = reg.resources_in(group, version);
    if infos.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for i in &infos {
        let mut r = json!({
            "name": i.plural,
            "singularName": i.singular,
            "namespaced": i.namespaced,
            "kind": i.kind,
            "verbs": i.verbs,
        });
        if !i.short_names.is_empty() {
            r["shortNames"] = json!(i.short_names);
        }
        if !i.categories.is_empty() {
            r["categories"] = json!(i.categories);
        }
        resources.push(r);
        for sub in &i.subresources {
            let (g, v, k) = subresource_kind(i, sub);
            let mut s = json!({"name": format!("{}/{sub}", i.plural), "singularName": "", "namespaced": i.namespaced, "kind": k, "verbs": subresource_verbs(sub)});
            if sub == &"scale" || sub == &"eviction" || sub == &"token" {
                s["group"] = g.into();
                s["version"] = v.into();
            }
            resources.push(s);
        }
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

/// The media type of aggregated discovery responses.
pub const AGGREGATED_V2: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Aggregated discovery for `/api` (core only) or `/apis` (every named group).
pub fn aggregated(reg: &Registry, core: bool) -> Value {
    let mut items = Vec::new();
    for (group, versions) in reg.groups() {
        if group.is_empty() != core {
            continue;
        }
        let mut vs = Vec::new();
        for version in &versions {
            let resources: Vec<Value> = reg
                .resources_in(&group, version)
                .iter()
                .map(|i| {
                    let mut r = json!({
                        "resource": i.plural,
                        "responseKind": {"group": i.group, "version": i.version, "kind": i.kind},
                        "scope": if i.namespaced { "Namespaced" } else { "Cluster" },
                        "singularResource": i.singular,
                        "verbs": i.verbs,
                    });
                    if !i.short_names.is_empty() {
                        r["shortNames"] = json!(i.short_names);
                    }
                    if !i.categories.is_empty() {
                        r["categories"] = json!(i.categories);
                    }
                    let subs: Vec<Value> = i
                        .subresources
                        .iter()
                        .map(|sub| {
                            let (g, v, k) = subresource_kind(i, sub);
                            let mut s =
                                json!({"subresource": sub, "verbs": subresource_verbs(sub)});
                            if !k.is_empty() {
                                s["responseKind"] = json!({"group": g, "version": v, "kind": k});
                            }
                            s
                        })
                        .collect();
                    if !subs.is_empty() {
                        r["subresources"] = Value::Array(subs);
                    }
                    r
                })
                .collect();
            vs.push(json!({"version": version, "resources": resources, "freshness": "Current"}));
        }
        items.push(json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": vs}));
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}
