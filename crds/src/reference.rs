//! Renders `docs/api.md` from the generated CRD schemas, so the reference cannot drift from the
//! types (the drift test compares it like the manifests).

use serde_json::Value;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

const INTRO: &str = "\
# Alcove API reference (`alcove.dev/v1alpha1`)

Generated from the Rust types by `cargo run -p alcove-crds --bin crdgen`; do not edit by hand.
`kubectl explain <kind>.spec` shows the same descriptions on a cluster.

Every rule below is enforced by the API server when an object is applied: ranges, patterns and
enums by the structural schema, the rest by CEL (`x-kubernetes-validations`), each with a message
naming the field. The operator writes only `status` and never `spec`.

Design notes, where this API refines the architecture sketch:

- **Model sources** are one struct with exactly one of `uri`, `pvc`, `platform` set (a CEL rule),
  rather than a string with a scheme, so each alternative is typed and documented.
- **Durations** (`90m`, `24h`, `30d`) are strings with a pattern; day units keep retention windows
  readable. CEL rules compare them in minutes.
- **Retention windows** may only be shortened: each data class's maximum is the product's promise,
  and some classes have a legal minimum (billing records 7 years; account data 7 days on paid
  tiers). See `crds/src/policy.rs`.
- **Free tier** has no knowledge-base storage: `quota.maxKnowledgeBases` must be 0 (CEL), and the
  operator refuses a KnowledgeBase in a free tenant's namespace.
- **Knowledge-base references** carry an optional `namespace` only so that a cross-namespace
  reference is visible and refused by the operator (Ready=False, an Event) instead of being
  silently resolved in the instance's namespace.
";

/// The whole reference document.
pub fn api_reference_markdown(crds: &[CustomResourceDefinition]) -> String {
    let mut out = String::from(INTRO);
    for crd in crds {
        let names = &crd.spec.names;
        let version = &crd.spec.versions[0];
        out.push_str(&format!("\n## {}\n\n", names.kind));
        out.push_str(&format!(
            "- scope: {}; plural `{}`; short names {}; categories {}\n",
            crd.spec.scope,
            names.plural,
            names
                .short_names
                .iter()
                .flatten()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", "),
            names
                .categories
                .iter()
                .flatten()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", "),
        ));
        let columns: Vec<String> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| format!("{} (`{}`)", c.name, c.json_path))
            .collect();
        out.push_str(&format!("- printer columns: {}\n", columns.join(", ")));
        let schema = serde_json::to_value(
            version.schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap(),
        )
        .expect("schema serializes");
        if let Some(desc) = schema.get("description").and_then(Value::as_str) {
            out.push_str(&format!("\n{}\n", one_line(desc)));
        }
        let root_rules = rules(&schema);
        if !root_rules.is_empty() {
            out.push_str(&format!("\nObject rules: {}\n", root_rules.join("; ")));
        }
        for section in ["spec", "status"] {
            let Some(sub) = schema.pointer(&format!("/properties/{section}")) else { continue };
            out.push_str(&format!("\n### {} `{section}`\n\n", names.kind));
            if let Some(desc) = sub.get("description").and_then(Value::as_str) {
                out.push_str(&format!("{}\n\n", one_line(desc)));
            }
            let object_rules = rules(sub);
            if !object_rules.is_empty() {
                out.push_str(&format!("Rules on `{section}`: {}\n\n", object_rules.join("; ")));
            }
            out.push_str("| field | type | required | default | validation | description |\n");
            out.push_str("|---|---|---|---|---|---|\n");
            walk(sub, section, &mut out);
        }
    }
    out
}

fn walk(schema: &Value, path: &str, out: &mut String) {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(props) = schema.get("properties").and_then(Value::as_object) else { return };
    for (name, field) in props {
        let field_path = format!("{path}.{name}");
        let (shown, inner) = match field.get("items") {
            Some(items) => (format!("{field_path}[]"), items),
            None => (field_path.clone(), field),
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {} |\n",
            field_path,
            type_of(field),
            if required.contains(&name.as_str()) { "yes" } else { "" },
            field.get("default").map(|d| format!("`{d}`")).unwrap_or_default(),
            constraints(field).join("; "),
            one_line(field.get("description").and_then(Value::as_str).unwrap_or(""))
                .replace('|', "\\|"),
        ));
        // Kubernetes' own types (tolerations, conditions) are documented upstream; stop there.
        if !is_upstream(inner) {
            walk(inner, &shown, out);
        }
    }
}

fn is_upstream(schema: &Value) -> bool {
    let props = schema.get("properties").and_then(Value::as_object);
    props.is_some_and(|p| {
        p.contains_key("tolerationSeconds") || p.contains_key("lastTransitionTime")
    })
}

fn type_of(schema: &Value) -> String {
    let ty = schema.get("type").and_then(Value::as_str).unwrap_or("any");
    match ty {
        "array" => format!("[]{}", schema.get("items").map(type_of).unwrap_or_default()),
        "object" if schema.get("additionalProperties").is_some() => "map[string]string".into(),
        _ => ty.to_string(),
    }
}

fn constraints(schema: &Value) -> Vec<String> {
    let mut c = Vec::new();
    let num = |k: &str| schema.get(k).and_then(Value::as_f64).map(|v| v.to_string());
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        c.push(format!(
            "one of {}",
            e.iter()
                .map(|v| format!("`{}`", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(v) = num("minimum") {
        c.push(format!("≥ {v}"));
    }
    if let Some(v) = num("maximum") {
        c.push(format!("≤ {v}"));
    }
    if let Some(v) = num("minLength") {
        c.push(format!("length ≥ {v}"));
    }
    if let Some(v) = num("maxLength") {
        c.push(format!("length ≤ {v}"));
    }
    if let Some(v) = num("minItems") {
        c.push(format!("items ≥ {v}"));
    }
    if let Some(v) = num("maxItems") {
        c.push(format!("items ≤ {v}"));
    }
    if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
        c.push(format!("pattern `{}`", p.replace('|', "\\|")));
    }
    if let Some(keys) = schema.get("x-kubernetes-list-map-keys").and_then(Value::as_array) {
        c.push(format!(
            "unique by {}",
            keys.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")
        ));
    }
    c.extend(rules(schema));
    c
}

fn rules(schema: &Value) -> Vec<String> {
    schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .map(|rules| {
            rules
                .iter()
                .map(|r| r.get("message").and_then(Value::as_str).unwrap_or("").replace('|', "\\|"))
                .collect()
        })
        .unwrap_or_default()
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
