//! The examples under `examples/` checked against the types and the generated schemas:
//! good examples round-trip and validate, bad ones are refused on the field they name,
//! illegal ones pass the schema (the operator refuses them later).
//!
//! Structural rules are checked with a JSON-schema validator, CEL rules with kube-cel (a real CEL
//! engine with the Kubernetes extension library), so both halves of the schema are exercised.

use std::path::{Path, PathBuf};

use alcove_crds::{InferenceInstance, KnowledgeBase, Tenant, crds};
use serde_json::Value;

fn examples(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no examples in {}", root.display());
    files
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

/// `# key: value` header lines of an example.
fn header(path: &Path, key: &str) -> Option<String> {
    let prefix = format!("# {key}: ");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
}

fn schema_for(kind: &str) -> Value {
    let crd = crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD {kind}"));
    let schema = crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap();
    serde_json::to_value(schema).unwrap()
}

fn is_alcove(doc: &Value) -> bool {
    doc["apiVersion"] == "alcove.dev/v1alpha1"
}

/// One refusal: the field path (dotted, `[i]` for items, empty for the root) and a message.
#[derive(Debug)]
struct Refusal {
    field: String,
    message: String,
    /// Refused by a CEL rule (whose message is ours), not by a structural rule.
    cel: bool,
}

fn structural_refusals(schema: &Value, doc: &Value) -> Vec<Refusal> {
    let validator =
        jsonschema::validator_for(schema).expect("generated schema is valid JSON Schema");
    let mut out: Vec<Refusal> = validator
        .iter_errors(doc)
        .map(|e| {
            let pointer = e.instance_path().to_string();
            let mut field = String::new();
            for seg in pointer.split('/').skip(1) {
                if seg.parse::<usize>().is_ok() {
                    field.push_str(&format!("[{seg}]"));
                } else {
                    if !field.is_empty() {
                        field.push('.');
                    }
                    field.push_str(seg);
                }
            }
            // A missing required property is reported on its parent; name the property itself.
            if let Some(missing) = e.to_string().strip_suffix(" is a required property") {
                let name = missing.trim_matches('"');
                field = if field.is_empty() { name.to_string() } else { format!("{field}.{name}") };
            }
            Refusal { field, message: e.to_string(), cel: false }
        })
        .collect();
    list_map_duplicates(schema, doc, "", &mut out);
    out
}

/// `x-kubernetes-list-type: map` lists may not repeat a key: a Kubernetes rule that JSON Schema
/// cannot express.
fn list_map_duplicates(schema: &Value, doc: &Value, path: &str, out: &mut Vec<Refusal>) {
    match doc {
        Value::Object(map) => {
            for (k, v) in map {
                if let Some(sub) = schema.get("properties").and_then(|p| p.get(k)) {
                    let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                    list_map_duplicates(sub, v, &p, out);
                }
            }
        }
        Value::Array(items) => {
            if schema.get("x-kubernetes-list-type") == Some(&Value::from("map")) {
                let keys: Vec<String> = schema["x-kubernetes-list-map-keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k.as_str().unwrap().to_string())
                    .collect();
                let mut seen = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let key: Vec<&Value> = keys.iter().map(|k| &item[k]).collect();
                    if seen.contains(&key) {
                        out.push(Refusal {
                            field: format!("{path}[{i}]"),
                            message: "Duplicate value".into(),
                            cel: false,
                        });
                    }
                    seen.push(key);
                }
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    list_map_duplicates(item_schema, item, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

fn cel_refusals(schema: &Value, doc: &Value) -> Vec<Refusal> {
    match kube_cel::Validator::new().validate(schema, doc, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .into_vec()
            .into_iter()
            .map(|e| Refusal { field: e.field_path.clone(), message: e.message.clone(), cel: true })
            .collect(),
    }
}

fn refusals(doc: &Value) -> Vec<Refusal> {
    let schema = schema_for(doc["kind"].as_str().unwrap());
    let mut all = structural_refusals(&schema, doc);
    // The API server evaluates CEL only on structurally valid objects.
    if all.is_empty() {
        all.extend(cel_refusals(&schema, doc));
    }
    all
}

/// Every leaf of `original` is present, unchanged, in `round_tripped` (defaults may add fields;
/// nothing the author wrote may be dropped or altered).
fn assert_preserved(original: &Value, round_tripped: &Value, path: &str) {
    match original {
        Value::Object(map) => {
            for (k, v) in map {
                let other = round_tripped
                    .get(k)
                    .unwrap_or_else(|| panic!("{path}.{k} was dropped by the round trip"));
                assert_preserved(v, other, &format!("{path}.{k}"));
            }
        }
        Value::Array(items) => {
            let others =
                round_tripped.as_array().unwrap_or_else(|| panic!("{path} is no longer a list"));
            assert_eq!(items.len(), others.len(), "{path}");
            for (i, (a, b)) in items.iter().zip(others).enumerate() {
                assert_preserved(a, b, &format!("{path}[{i}]"));
            }
        }
        leaf => assert_eq!(leaf, round_tripped, "{path} changed in the round trip"),
    }
}

fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug>(
    doc: &Value,
) {
    let typed: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{e}: {doc}"));
    let back = serde_json::to_value(&typed).unwrap();
    assert_preserved(doc, &back, "");
    let again: T = serde_json::from_value(back).unwrap();
    assert_eq!(typed, again);
}

#[test]
fn good_examples_round_trip_and_validate() {
    let mut kinds = std::collections::BTreeSet::new();
    for path in examples("good") {
        for doc in documents(&path).iter().filter(|d| is_alcove(d)) {
            match doc["kind"].as_str().unwrap() {
                "Tenant" => round_trip::<Tenant>(doc),
                "InferenceInstance" => round_trip::<InferenceInstance>(doc),
                "KnowledgeBase" => round_trip::<KnowledgeBase>(doc),
                other => panic!("{}: unexpected kind {other}", path.display()),
            }
            let refused = refusals(doc);
            assert!(refused.is_empty(), "{} refused: {refused:?}", path.display());
            kinds.insert(doc["kind"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(kinds.len(), 3, "good examples cover every kind: {kinds:?}");
}

#[test]
fn good_examples_cover_every_tier_and_model_format() {
    let docs: Vec<Value> = examples("good").iter().flat_map(|p| documents(p)).collect();
    for tier in ["free", "basic", "pro", "enterprise"] {
        assert!(
            docs.iter().any(|d| d["kind"] == "Tenant" && d["spec"]["tier"] == tier),
            "no {tier} tenant"
        );
    }
    for format in ["safetensors", "gguf"] {
        assert!(
            docs.iter().any(|d| d["kind"] == "InferenceInstance" && d["spec"]["model"]["format"] == format),
            "no {format} instance"
        );
    }
}

#[test]
fn bad_examples_are_refused_on_the_field_they_name() {
    for path in examples("bad") {
        let docs = documents(&path);
        assert_eq!(docs.len(), 1, "{}: a bad example is one object", path.display());
        let field = header(&path, "field")
            .unwrap_or_else(|| panic!("{}: no '# field:' line", path.display()));
        assert!(header(&path, "violates").is_some(), "{}: no '# violates:' line", path.display());
        let field = if field == "<root>" { String::new() } else { field };
        let refused = refusals(&docs[0]);
        assert!(!refused.is_empty(), "{} was accepted", path.display());
        assert!(
            refused.iter().any(|r| r.field == field),
            "{}: refused, but not on {field:?}: {refused:?}",
            path.display()
        );
        // CEL refusals carry the rule's own message; it must be the one the example expects.
        let expect = header(&path, "expect").unwrap();
        if let Some(cel) = refused.iter().find(|r| r.field == field && r.cel) {
            assert!(
                cel.message.contains(&expect),
                "{}: expected {expect:?}, got {cel:?}",
                path.display()
            );
        }
    }
}

#[test]
fn illegal_examples_pass_the_schema() {
    for path in examples("illegal") {
        assert!(header(&path, "reason").is_some(), "{}: no '# reason:' line", path.display());
        for doc in documents(&path) {
            let refused = refusals(&doc);
            assert!(
                refused.is_empty(),
                "{}: the schema refuses it ({refused:?}); it belongs in bad/",
                path.display()
            );
        }
    }
}

#[test]
fn cel_rules_are_in_the_generated_yaml() {
    let all: String = alcove_crds::crd_manifests().into_iter().map(|m| m.yaml).collect();
    for needle in [
        "x-kubernetes-validations",
        "spec.region is immutable",
        "rule: self == oldSelf",
        "spec.model.source must set exactly one of uri, pvc, platform",
        "the free tier has no knowledge-base storage",
        "spec.retention.billingRecords must be at least 2555d",
        "x-kubernetes-list-type: map",
    ] {
        assert!(all.contains(needle), "generated CRDs lack {needle:?}");
    }
}

#[test]
fn region_is_immutable_once_set() {
    let schema = schema_for("Tenant");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/good/tenant-basic.yaml");
    let old = documents(&path).remove(0);
    let mut moved = old.clone();
    moved["spec"]["region"] = "jp-tokyo-1".into();
    let errors =
        kube_cel::Validator::new().validate(&schema, &moved, Some(&old)).unwrap_err().into_vec();
    assert!(
        errors.iter().any(|e| e.field_path == "spec.region" && e.message.contains("immutable")),
        "{errors:?}"
    );
    assert!(kube_cel::Validator::new().validate(&schema, &old, Some(&old)).is_ok());
}
