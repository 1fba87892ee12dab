//! How lists and maps merge, per field: the information kube-apiserver takes from its OpenAPI
//! (`x-kubernetes-list-type`, `x-kubernetes-list-map-keys`, `x-kubernetes-patch-merge-key`).
//! Built-in kinds use a table of the merge keys Kubernetes declares; custom resources use their
//! CRD schema (metadata always uses the built-in rules).

use serde_json::Value;

/// How a list merges.
#[derive(Clone, Debug, PartialEq)]
pub enum ListKind {
    /// Replaced as a whole.
    Atomic,
    /// A set of scalars.
    Set,
    /// Items identified by these key fields.
    Map(Vec<String>),
}

/// Merge information for one object: built-in rules or a CRD schema.
#[derive(Clone, Copy)]
pub enum TypeInfo<'a> {
    Builtin { kind: &'a str },
    Custom { schema: &'a Value },
}

impl TypeInfo<'_> {
    /// `path` is the chain of field names from the root (list indices omitted).
    pub fn list_kind(&self, path: &[&str]) -> ListKind {
        if path.first() == Some(&"metadata") {
            return builtin_list_kind("", path);
        }
        match self {
            TypeInfo::Builtin { kind } => builtin_list_kind(kind, path),
            TypeInfo::Custom { schema } => match schema_at(schema, path) {
                Some(s) => match s["x-kubernetes-list-type"].as_str() {
                    Some("set") => ListKind::Set,
                    Some("map") => ListKind::Map(
                        s["x-kubernetes-list-map-keys"]
                            .as_array()
                            .map(|a| {
                                a.iter().filter_map(|k| k.as_str().map(str::to_string)).collect()
                            })
                            .unwrap_or_default(),
                    ),
                    _ => ListKind::Atomic,
                },
                None => ListKind::Atomic,
            },
        }
    }

    /// Whether a map is replaced as a whole (`x-kubernetes-map-type: atomic`).
    pub fn map_is_atomic(&self, path: &[&str]) -> bool {
        match self {
            TypeInfo::Custom { schema } if path.first() != Some(&"metadata") => {
                schema_at(schema, path).is_some_and(|s| s["x-kubernetes-map-type"] == "atomic")
            }
            // Built-in atomic maps: label selectors' matchLabels are granular; the few atomic
            // structs (e.g. `resources.claims`) do not matter for the objects this server holds.
            _ => false,
        }
    }

    /// Whether strategic merge patch applies (built-ins only, as in kube-apiserver).
    pub fn supports_strategic_merge(&self) -> bool {
        matches!(self, TypeInfo::Builtin { .. })
    }
}

fn schema_at<'s>(schema: &'s Value, path: &[&str]) -> Option<&'s Value> {
    let mut s = schema;
    for seg in path {
        // Descend through list items first: paths omit indices.
        while s["type"] == "array" {
            s = s.get("items")?;
        }
        s = match s.get("properties").and_then(|p| p.get(*seg)) {
            Some(next) => next,
            None => s.get("additionalProperties").filter(|a| a.is_object())?,
        };
    }
    Some(s)
}

fn builtin_list_kind(kind: &str, path: &[&str]) -> ListKind {
    let last = path.last().copied().unwrap_or_default();
    let parent = if path.len() >= 2 { path[path.len() - 2] } else { "" };
    let keys = |k: &[&str]| ListKind::Map(k.iter().map(|s| s.to_string()).collect());
    match last {
        "finalizers" if parent == "metadata" => ListKind::Set,
        "ownerReferences" => keys(&["uid"]),
        "containers" | "initContainers" | "ephemeralContainers" => keys(&["name"]),
        "env" => keys(&["name"]),
        "ports" if matches!(parent, "containers" | "initContainers" | "ephemeralContainers") => {
            keys(&["containerPort", "protocol"])
        }
        "ports" if kind == "Service" && path == ["spec", "ports"] => keys(&["port", "protocol"]),
        "volumes" => keys(&["name"]),
        "volumeMounts" => keys(&["mountPath"]),
        "volumeDevices" => keys(&["devicePath"]),
        "imagePullSecrets" => keys(&["name"]),
        "conditions" => keys(&["type"]),
        "hostAliases" => keys(&["ip"]),
        "topologySpreadConstraints" => keys(&["topologyKey", "whenUnsatisfiable"]),
        "resourceClaims" => keys(&["name"]),
        "podIPs" | "hostIPs" => keys(&["ip"]),
        "secrets" if kind == "ServiceAccount" => keys(&["name"]),
        "addresses" if kind == "Node" => keys(&["type"]),
        _ => ListKind::Atomic,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builtin_keys() {
        let t = TypeInfo::Builtin { kind: "Pod" };
        assert_eq!(t.list_kind(&["spec", "containers"]), ListKind::Map(vec!["name".into()]));
        assert_eq!(
            t.list_kind(&["spec", "containers", "ports"]),
            ListKind::Map(vec!["containerPort".into(), "protocol".into()])
        );
        assert_eq!(t.list_kind(&["spec", "tolerations"]), ListKind::Atomic);
        assert_eq!(t.list_kind(&["metadata", "finalizers"]), ListKind::Set);
        let s = TypeInfo::Builtin { kind: "Service" };
        assert_eq!(
            s.list_kind(&["spec", "ports"]),
            ListKind::Map(vec!["port".into(), "protocol".into()])
        );
    }

    #[test]
    fn custom_schema() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "sources": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                "items": {"type": "object", "properties": {"tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}}}}},
            "args": {"type": "array", "items": {"type": "string"}},
        }}}});
        let t = TypeInfo::Custom { schema: &schema };
        assert_eq!(t.list_kind(&["spec", "sources"]), ListKind::Map(vec!["name".into()]));
        assert_eq!(t.list_kind(&["spec", "sources", "tags"]), ListKind::Set);
        assert_eq!(t.list_kind(&["spec", "args"]), ListKind::Atomic);
        assert_eq!(
            t.list_kind(&["metadata", "ownerReferences"]),
            ListKind::Map(vec!["uid".into()])
        );
    }
}
