//! OpenAPI v3 per group-version, enough for `kubectl explain` and for kubectl's check that the
//! server does field validation (the `fieldValidation` parameter on PATCH operations).
//! Built-in schemas come from the k8s-openapi types; custom resources from their CRDs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use serde_json::{Map, Value, json};
use sha2::Digest;

use crate::resources::{Registry, ResourceInfo};

struct Builtins {
    /// (group, kind) → component name.
    names: BTreeMap<(String, String), String>,
    components: Map<String, Value>,
}

fn builtins() -> &'static Builtins {
    static B: OnceLock<Builtins> = OnceLock::new();
    B.get_or_init(|| {
        use k8s_openapi::api::*;
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
        let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
        let mut names = BTreeMap::new();
        macro_rules! add {
            ($( ($g:literal, $k:literal, $t:ty) ),* $(,)?) => {
                $(
                    let r = generator.subschema_for::<$t>();
                    let name = r.get("$ref").and_then(Value::as_str).unwrap_or_default().rsplit('/').next().unwrap_or_default().to_string();
                    names.insert(($g.to_string(), $k.to_string()), name);
                )*
            };
        }
        add!(
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
            ("authorization.k8s.io", "SelfSubjectAccessReview", authorization::v1::SelfSubjectAccessReview),
            ("authorization.k8s.io", "SubjectAccessReview", authorization::v1::SubjectAccessReview),
            ("authorization.k8s.io", "SelfSubjectRulesReview", authorization::v1::SelfSubjectRulesReview),
            ("authentication.k8s.io", "TokenReview", authentication::v1::TokenReview),
            ("authentication.k8s.io", "SelfSubjectReview", authentication::v1::SelfSubjectReview),
        );
        let components = generator.take_definitions(true);
        Builtins { names, components }
    })
}

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// Adds `name` and every component it references to `out`.
fn collect(name: &str, all: &Map<String, Value>, out: &mut Map<String, Value>) {
    if out.contains_key(name) {
        return;
    }
    let Some(schema) = all.get(name) else { return };
    out.insert(name.to_string(), schema.clone());
    let mut refs = BTreeSet::new();
    find_refs(schema, &mut refs);
    for r in refs {
        collect(&r, all, out);
    }
}

fn find_refs(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str)
                && let Some(name) = r.strip_prefix("#/components/schemas/")
            {
                out.insert(name.to_string());
            }
            m.values().for_each(|x| find_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| find_refs(x, out)),
        _ => {}
    }
}

/// Component name of a custom resource kind, like kube-apiserver's (`dev.alcove.v1alpha1.Tenant`).
fn crd_component_name(info: &ResourceInfo) -> String {
    let reversed: Vec<&str> = info.group.split('.').rev().collect();
    format!("{}.{}.{}", reversed.join("."), info.version, info.kind)
}

fn gvk(info: &ResourceInfo) -> Value {
    json!({"group": info.group, "version": info.version, "kind": info.kind})
}

fn query_param(name: &str, description: &str, ty: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": ty, "uniqueItems": true}})
}

fn operation(info: &ResourceInfo, action: &str, component: &str, sub: &str) -> Value {
    let schema_ref = json!({"$ref": format!("#/components/schemas/{component}")});
    let mut op = json!({
        "operationId": format!("{action}{}{}", info.kind, if sub.is_empty() { String::new() } else { format!("{}{}", sub[..1].to_uppercase(), &sub[1..]) }),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(info),
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": schema_ref}}}},
    });
    let mut params = Vec::new();
    match action {
        "patch" => {
            params.push(query_param(
                "dryRun",
                "When present, indicates that modifications should not be persisted.",
                "string",
            ));
            params.push(query_param(
                "fieldManager",
                "fieldManager is a name associated with the actor or entity that is making these changes.",
                "string",
            ));
            params.push(query_param("fieldValidation", "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: Ignore, Warn (default), Strict.", "string"));
            params.push(query_param(
                "force",
                "Force is going to \"force\" Apply requests.",
                "boolean",
            ));
            // Strategic merge patch is served for built-ins, but not advertised here: kubectl
            // then computes it from its compiled-in types, which carry the patch strategies.
            op["requestBody"] = json!({"content": {
                "application/json-patch+json": {"schema": {"type": "object"}},
                "application/merge-patch+json": {"schema": {"type": "object"}},
                "application/apply-patch+yaml": {"schema": {"type": "object"}},
            }, "required": true});
        }
        "put" | "post" => {
            params.push(query_param(
                "dryRun",
                "When present, indicates that modifications should not be persisted.",
                "string",
            ));
            params.push(query_param(
                "fieldManager",
                "fieldManager is a name associated with the actor or entity that is making these changes.",
                "string",
            ));
            params.push(query_param("fieldValidation", "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields.", "string"));
            op["requestBody"] =
                json!({"content": {"application/json": {"schema": schema_ref}}, "required": true});
        }
        "list" | "watch" => {
            for p in [
                "labelSelector",
                "fieldSelector",
                "continue",
                "resourceVersion",
                "resourceVersionMatch",
            ] {
                params.push(query_param(p, "", "string"));
            }
            params.push(query_param("limit", "", "integer"));
            params.push(query_param("watch", "", "boolean"));
            params.push(query_param("allowWatchBookmarks", "", "boolean"));
            params.push(query_param("sendInitialEvents", "", "boolean"));
        }
        _ => {}
    }
    op["parameters"] = Value::Array(params);
    op
}

fn paths_for(info: &ResourceInfo, component: &str, paths: &mut Map<String, Value>) {
    let prefix = if info.group.is_empty() {
        format!("/api/{}", info.version)
    } else {
        format!("/apis/{}/{}", info.group, info.version)
    };
    let (collection, item) = if info.namespaced {
        (
            format!("{prefix}/namespaces/{{namespace}}/{}", info.plural),
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", info.plural),
        )
    } else {
        (format!("{prefix}/{}", info.plural), format!("{prefix}/{}/{{name}}", info.plural))
    };
    if info.virtual_only {
        paths.insert(collection, json!({"post": operation(info, "post", component, "")}));
        return;
    }
    paths.insert(
        collection,
        json!({
            "get": operation(info, "list", component, ""),
            "post": operation(info, "post", component, ""),
            "delete": operation(info, "deletecollection", component, ""),
        }),
    );
    if info.namespaced {
        paths.insert(
            format!("{prefix}/{}", info.plural),
            json!({"get": operation(info, "list", component, "")}),
        );
    }
    paths.insert(
        item.clone(),
        json!({
            "get": operation(info, "get", component, ""),
            "put": operation(info, "put", component, ""),
            "patch": operation(info, "patch", component, ""),
            "delete": operation(info, "delete", component, ""),
        }),
    );
    if info.has_status() {
        paths.insert(
            format!("{item}/status"),
            json!({
                "get": operation(info, "get", component, "status"),
                "put": operation(info, "put", component, "status"),
                "patch": operation(info, "patch", component, "status"),
            }),
        );
    }
}

/// The custom resource's schema as a component: its CRD schema with metadata as ObjectMeta.
fn crd_component(info: &ResourceInfo) -> Value {
    let crd = info.crd.as_ref().expect("custom resource");
    let mut schema = crd.schema.clone();
    if !schema.is_object() {
        schema = json!({"type": "object"});
    }
    let props =
        schema.as_object_mut().expect("object").entry("properties").or_insert_with(|| json!({}));
    props["apiVersion"] = json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources"});
    props["kind"] = json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"});
    props["metadata"] = json!({"allOf": [{"$ref": format!("#/components/schemas/{OBJECT_META}")}], "description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"});
    schema["x-kubernetes-group-version-kind"] = json!([gvk(info)]);
    schema
}

/// The OpenAPI v3 document of one group-version.
pub fn group_version_document(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let infos = reg.resources_in(group, version);
    if infos.is_empty() {
        return None;
    }
    let b = builtins();
    let mut components = Map::new();
    let mut paths = Map::new();
    for info in &infos {
        let component = if info.is_custom() {
            let name = crd_component_name(info);
            components.insert(name.clone(), crd_component(info));
            collect(OBJECT_META, &b.components, &mut components);
            name
        } else {
            let Some(name) = b.names.get(&(info.group.clone(), info.kind.clone())) else {
                continue;
            };
            collect(name, &b.components, &mut components);
            if let Some(schema) = components.get_mut(name) {
                schema["x-kubernetes-group-version-kind"] = json!([gvk(info)]);
            }
            name.clone()
        };
        paths_for(info, &component, &mut paths);
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": crate::config::SERVER_VERSION},
        "paths": paths,
        "components": {"schemas": components},
    }))
}

/// `/openapi/v3`: where each group-version's document lives, with a content hash.
pub fn root(reg: &Registry) -> Value {
    let mut paths = Map::new();
    for (group, versions) in reg.groups() {
        for version in versions {
            let key = if group.is_empty() {
                format!("api/{version}")
            } else {
                format!("apis/{group}/{version}")
            };
            // The hash only has to change when the document does: fingerprint what it is made of.
            let mut fingerprint = String::new();
            for info in reg.resources_in(&group, &version) {
                fingerprint.push_str(&info.plural);
                if let Some(crd) = &info.crd {
                    fingerprint.push_str(&crd.schema.to_string());
                    fingerprint.push_str(&format!("{:?}", info.subresources));
                }
            }
            let digest = sha2::Sha256::digest(fingerprint.as_bytes());
            let hash: String = digest.iter().map(|b| format!("{b:02X}")).collect();
            paths.insert(
                key.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={hash}")}),
            );
        }
    }
    json!({"paths": paths})
}
