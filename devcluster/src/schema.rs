//! CRD structural schemas: pruning, defaulting, OpenAPI validation with kube-openapi's messages,
//! and CEL (`x-kubernetes-validations`) through kube-cel.

use crate::meta::At;
use std::collections::BTreeMap;
use std::sync::Mutex;

use regex::Regex;
use serde_json::{Map, Value};

use crate::error::FieldError;

/// One additional printer column of a CRD version.
#[derive(Clone, Debug)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// A served version of a CRD: its schema and how kubectl prints it.
pub struct CrdVersionSchema {
    pub group: String,
    pub kind: String,
    pub version: String,
    pub storage: bool,
    pub schema: Value,
    pub printer_columns: Vec<PrinterColumn>,
    cel: Option<kube_cel::CompiledSchema>,
}

impl std::fmt::Debug for CrdVersionSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrdVersionSchema")
            .field("kind", &self.kind)
            .field("version", &self.version)
            .finish()
    }
}

impl CrdVersionSchema {
    pub fn from_crd_version(group: &str, kind: &str, v: &Value) -> CrdVersionSchema {
        let schema = v.at("/schema/openAPIV3Schema").cloned().unwrap_or_else(
            || serde_json::json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        );
        let printer_columns = v["additionalPrinterColumns"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| PrinterColumn {
                name: c["name"].as_str().unwrap_or_default().into(),
                type_: c["type"].as_str().unwrap_or("string").into(),
                format: c["format"].as_str().unwrap_or_default().into(),
                description: c["description"].as_str().unwrap_or_default().into(),
                priority: c["priority"].as_i64().unwrap_or(0),
                json_path: c["jsonPath"].as_str().unwrap_or_default().into(),
            })
            .collect();
        let cel = has_cel(&schema).then(|| kube_cel::compile_schema(&schema));
        CrdVersionSchema {
            group: group.into(),
            kind: kind.into(),
            version: v["name"].as_str().unwrap_or_default().into(),
            storage: v["storage"].as_bool().unwrap_or(false),
            schema,
            printer_columns,
            cel,
        }
    }

    /// Prunes unknown fields (returned as dotted paths), removes nulls of non-nullable fields,
    /// and applies schema defaults. Mutates `obj` in place, as the apiserver does on decode.
    pub fn prune_and_default(&self, obj: &mut Value, defaults: bool) -> Vec<String> {
        let mut unknown = Vec::new();
        if let Value::Object(map) = obj {
            for (k, v) in map.iter_mut() {
                if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(sub) = self.schema.at(&format!("/properties/{k}")) {
                    prune(sub, v, k, &mut unknown);
                }
            }
            let top: Vec<String> = map
                .keys()
                .filter(|k| {
                    !matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
                        && self.schema.at(&format!("/properties/{k}")).is_none()
                })
                .cloned()
                .collect();
            if self.schema["x-kubernetes-preserve-unknown-fields"] != Value::Bool(true) {
                for k in top {
                    map.remove(&k);
                    unknown.push(k);
                }
            }
        }
        if defaults {
            default_value(&self.schema, obj, true);
        }
        unknown
    }

    /// Structural validation, then CEL rules (CEL only runs on structurally valid objects).
    pub fn validate(&self, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Value::Object(map) = obj {
            let required = strings(&self.schema["required"]);
            for r in &required {
                if !map.contains_key(r) {
                    errors.push(FieldError::required(r.clone(), ""));
                }
            }
            for (k, v) in map {
                if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(sub) = self.schema.at(&format!("/properties/{k}")) {
                    validate(sub, v, k, &mut errors);
                }
            }
        }
        if errors.is_empty()
            && let Some(compiled) = &self.cel
        {
            errors.extend(cel_errors(compiled, &self.schema, obj, old));
        }
        errors
    }
}

fn has_cel(schema: &Value) -> bool {
    match schema {
        Value::Object(m) => m.contains_key("x-kubernetes-validations") || m.values().any(has_cel),
        Value::Array(a) => a.iter().any(has_cel),
        _ => false,
    }
}

/// Evaluating CEL needs a validator with every Kubernetes extension registered; building one is
/// costly, so one is shared.
fn validator() -> &'static Mutex<kube_cel::Validator> {
    static V: std::sync::OnceLock<Mutex<kube_cel::Validator>> = std::sync::OnceLock::new();
    V.get_or_init(|| Mutex::new(kube_cel::Validator::new()))
}

fn cel_errors(
    compiled: &kube_cel::CompiledSchema,
    schema: &Value,
    obj: &Value,
    old: Option<&Value>,
) -> Vec<FieldError> {
    let result =
        validator().lock().unwrap_or_else(|p| p.into_inner()).validate_compiled(compiled, obj, old);
    let Err(errs) = result else { return Vec::new() };
    errs.into_vec()
        .into_iter()
        .map(|e| {
            let path =
                if e.field_path.is_empty() { "<nil>".to_string() } else { e.field_path.clone() };
            let type_name = type_at(schema, &e.field_path);
            let message = match e.kind {
                kube_cel::ErrorKind::ValidationFailure => e.message.clone(),
                _ => format!("rule {:?} could not be evaluated: {}", e.rule, e.message),
            };
            FieldError::invalid(path, &Value::String(type_name), message)
        })
        .collect()
}

/// The schema `type` at a dotted path (for CEL error values, which print the type name).
fn type_at(schema: &Value, path: &str) -> String {
    let mut s = schema;
    for seg in path.split('.').filter(|s| !s.is_empty()) {
        let name = seg.split('[').next().unwrap_or(seg);
        if let Some(next) = s.at(&format!("/properties/{name}")) {
            s = next;
        } else if let Some(next) = s.get("additionalProperties") {
            s = next;
        }
        if seg.contains('[')
            && let Some(items) = s.get("items")
        {
            s = items;
        }
    }
    s["type"].as_str().unwrap_or("object").to_string()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn preserves_unknown(schema: &Value) -> bool {
    schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true)
}

fn is_embedded(schema: &Value) -> bool {
    schema["x-kubernetes-embedded-resource"] == Value::Bool(true)
}

fn prune(schema: &Value, value: &mut Value, path: &str, unknown: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                let keep_meta = is_embedded(schema);
                let mut drop = Vec::new();
                for (k, v) in map.iter_mut() {
                    if let Some(sub) = props.get(k) {
                        if v.is_null() && sub["nullable"] != Value::Bool(true) {
                            drop.push(k.clone());
                            continue;
                        }
                        prune(sub, v, &format!("{path}.{k}"), unknown);
                    } else if !(preserves_unknown(schema)
                        || keep_meta && matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
                    {
                        unknown.push(format!("{path}.{k}"));
                        drop.push(k.clone());
                    }
                }
                for k in drop {
                    map.remove(&k);
                }
            } else if let Some(additional) =
                schema.get("additionalProperties").filter(|a| a.is_object())
            {
                for (k, v) in map.iter_mut() {
                    prune(additional, v, &format!("{path}.{k}"), unknown);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(item_schema, item, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

/// Applies `default`s for absent properties of present objects, recursively.
pub fn default_value(schema: &Value, value: &mut Value, root: bool) {
    match value {
        Value::Object(map) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, sub) in props {
                    if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                        continue;
                    }
                    if !map.contains_key(k)
                        && let Some(d) = sub.get("default")
                    {
                        map.insert(k.clone(), d.clone());
                    }
                    if let Some(v) = map.get_mut(k) {
                        default_value(sub, v, false);
                    }
                }
            } else if let Some(additional) =
                schema.get("additionalProperties").filter(|a| a.is_object())
            {
                for v in map.values_mut() {
                    default_value(additional, v, false);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for item in items {
                    default_value(item_schema, item, false);
                }
            }
        }
        _ => {}
    }
}

fn go_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 { format!("{}", n as i64) } else { format!("{n}") }
}

fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn regex_cache(pattern: &str) -> Option<Regex> {
    static CACHE: std::sync::OnceLock<Mutex<BTreeMap<String, Option<Regex>>>> =
        std::sync::OnceLock::new();
    let mut cache =
        CACHE.get_or_init(|| Mutex::new(BTreeMap::new())).lock().unwrap_or_else(|p| p.into_inner());
    cache.entry(pattern.to_string()).or_insert_with(|| Regex::new(pattern).ok()).clone()
}

/// OpenAPI v3 validation of one value with kube-openapi's messages.
pub fn validate(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    if value.is_null() {
        if schema["nullable"] != Value::Bool(true) {
            // Non-nullable nulls are pruned before validation; nothing to check.
        }
        return;
    }
    let int_or_string = schema["x-kubernetes-int-or-string"] == Value::Bool(true);
    if let Some(ty) = schema["type"].as_str() {
        let actual = json_type_name(value);
        let ok = match ty {
            "number" => matches!(actual, "number" | "integer"),
            "integer" => actual == "integer" || value.as_f64().is_some_and(|f| f.fract() == 0.0),
            other => other == actual,
        };
        if !ok {
            errors.push(FieldError::type_invalid(
                path,
                value,
                format!("{path} in body must be of type {ty}: \"{actual}\""),
            ));
            return;
        }
    } else if int_or_string && !(value.is_string() || value.is_i64() || value.is_u64()) {
        errors.push(FieldError::type_invalid(
            path,
            value,
            format!(
                "{path} in body must be of type integer or string: \"{}\"",
                json_type_name(value)
            ),
        ));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        let names: Vec<String> = allowed
            .iter()
            .map(|a| a.as_str().map(str::to_string).unwrap_or_else(|| a.to_string()))
            .collect();
        errors.push(FieldError::not_supported(path, value, &names));
    }
    match value {
        Value::String(s) => {
            let len = s.chars().count();
            if let Some(max) = schema["maxLength"].as_u64()
                && len as u64 > max
            {
                errors.push(FieldError::too_long(path, max as usize));
            }
            if let Some(min) = schema["minLength"].as_u64()
                && (len as u64) < min
            {
                errors.push(FieldError::invalid(
                    path,
                    value,
                    format!("{path} in body should be at least {min} chars long"),
                ));
            }
            if let Some(p) = schema["pattern"].as_str()
                && let Some(re) = regex_cache(p)
                && !re.is_match(s)
            {
                errors.push(FieldError::invalid(
                    path,
                    value,
                    format!("{path} in body should match '{p}'"),
                ));
            }
        }
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(0.0);
            let exclusive_max = schema["exclusiveMaximum"] == Value::Bool(true);
            let exclusive_min = schema["exclusiveMinimum"] == Value::Bool(true);
            if let Some(max) = schema["maximum"].as_f64()
                && (f > max || (exclusive_max && f == max))
            {
                let rel = if exclusive_max { "less than" } else { "less than or equal to" };
                errors.push(FieldError::invalid(
                    path,
                    value,
                    format!("{path} in body should be {rel} {}", go_number(max)),
                ));
            }
            if let Some(min) = schema["minimum"].as_f64()
                && (f < min || (exclusive_min && f == min))
            {
                let rel = if exclusive_min { "greater than" } else { "greater than or equal to" };
                errors.push(FieldError::invalid(
                    path,
                    value,
                    format!("{path} in body should be {rel} {}", go_number(min)),
                ));
            }
            if let Some(m) = schema["multipleOf"].as_f64()
                && m > 0.0
                && (f / m).fract() != 0.0
            {
                errors.push(FieldError::invalid(
                    path,
                    value,
                    format!("{path} in body should be a multiple of {}", go_number(m)),
                ));
            }
        }
        Value::Array(items) => {
            if let Some(max) = schema["maxItems"].as_u64()
                && items.len() as u64 > max
            {
                errors.push(FieldError::too_many(path, items.len(), max as usize));
            }
            if let Some(min) = schema["minItems"].as_u64()
                && (items.len() as u64) < min
            {
                errors.push(FieldError::invalid(
                    path,
                    &Value::from(items.len()),
                    format!("{path} in body should have at least {min} items"),
                ));
            }
            match schema["x-kubernetes-list-type"].as_str() {
                Some("set") => {
                    for (i, item) in items.iter().enumerate() {
                        if items[..i].contains(item) {
                            errors.push(FieldError::duplicate(format!("{path}[{i}]"), item));
                        }
                    }
                }
                Some("map") => {
                    let keys = strings(&schema["x-kubernetes-list-map-keys"]);
                    let key_of = |item: &Value| -> Vec<Value> {
                        keys.iter().map(|k| item[k].clone()).collect()
                    };
                    for (i, item) in items.iter().enumerate() {
                        let k = key_of(item);
                        if items[..i].iter().any(|other| key_of(other) == k) {
                            let shown: Map<String, Value> = keys
                                .iter()
                                .map(|name| (name.clone(), item[name].clone()))
                                .collect();
                            errors.push(FieldError {
                                kind: crate::error::FieldErrorKind::Duplicate,
                                field: format!("{path}[{i}]"),
                                value: Some(format!(
                                    "map[string]interface {{}}{}",
                                    Value::Object(shown)
                                )),
                                detail: String::new(),
                            });
                        }
                    }
                }
                _ => {}
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate(item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        Value::Object(map) => {
            for r in strings(&schema["required"]) {
                if !map.contains_key(&r) {
                    errors.push(FieldError::required(format!("{path}.{r}"), ""));
                }
            }
            if let Some(max) = schema["maxProperties"].as_u64()
                && map.len() as u64 > max
            {
                errors.push(FieldError::too_many(path, map.len(), max as usize));
            }
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, v) in map {
                    if let Some(sub) = props.get(k) {
                        validate(sub, v, &format!("{path}.{k}"), errors);
                    }
                }
            } else if let Some(additional) =
                schema.get("additionalProperties").filter(|a| a.is_object())
            {
                for (k, v) in map {
                    validate(additional, v, &format!("{path}.{k}"), errors);
                }
            }
        }
        _ => {}
    }
}

/// Checks a CRD's own spec the way apiextensions does for the fields this server relies on.
pub fn validate_crd(crd: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let plural = spec.at("/names/plural").and_then(Value::as_str).unwrap_or_default();
    let name = crd.at("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    if group.is_empty() {
        errors.push(FieldError::required("spec.group", ""));
    } else if !group.contains('.') {
        errors.push(FieldError::invalid(
            "spec.group",
            &Value::from(group),
            "should be a domain with at least one dot",
        ));
    }
    if plural.is_empty() {
        errors.push(FieldError::required("spec.names.plural", ""));
    }
    if spec.at("/names/kind").and_then(Value::as_str).unwrap_or_default().is_empty() {
        errors.push(FieldError::required("spec.names.kind", ""));
    }
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        errors.push(FieldError::invalid(
            "metadata.name",
            &Value::from(name),
            "must be spec.names.plural+\".\"+spec.group".to_string(),
        ));
    }
    if !matches!(spec["scope"].as_str(), Some("Namespaced" | "Cluster")) {
        errors.push(FieldError::not_supported(
            "spec.scope",
            &spec["scope"],
            &["Cluster".to_string(), "Namespaced".to_string()],
        ));
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        errors.push(FieldError::invalid(
            "spec.versions",
            &Value::from(0),
            "must have exactly one version marked as storage version",
        ));
    } else if versions.iter().filter(|v| v["storage"] == Value::Bool(true)).count() != 1 {
        errors.push(FieldError::invalid(
            "spec.versions",
            &Value::from(versions.len()),
            "must have exactly one version marked as storage version",
        ));
    }
    for (i, v) in versions.iter().enumerate() {
        if let Some(schema) = v.at("/schema/openAPIV3Schema") {
            for rule_err in compile_rules(schema) {
                errors.push(FieldError::invalid(
                    format!("spec.validation.openAPIV3Schema.x-kubernetes-validations[{i}].rule"),
                    &Value::from(rule_err.0),
                    format!("compilation failed: {}", rule_err.1),
                ));
            }
        }
    }
    errors
}

fn compile_rules(schema: &Value) -> Vec<(String, String)> {
    let compiled = kube_cel::compile_schema(schema);
    compiled.compilation_errors().into_iter().map(|e| (format!("{e:?}"), e.to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn structural_messages_match_kube_openapi() {
        let schema = json!({"type": "object", "properties": {
            "count": {"type": "integer", "minimum": 1, "maximum": 8},
            "tier": {"type": "string", "enum": ["free", "pro"]},
            "region": {"type": "string", "pattern": "^[a-z]+-[0-9]$", "maxLength": 10},
            "items": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        }, "required": ["tier"]});
        let mut errors = Vec::new();
        validate(
            &schema,
            &json!({"count": 9, "tier": "gold", "region": "Taipei", "items": []}),
            "spec",
            &mut errors,
        );
        let rendered: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(
            rendered.contains(
                &"spec.count: Invalid value: 9: spec.count in body should be less than or equal to 8".to_string()
            ),
            "{rendered:?}"
        );
        assert!(
            rendered.contains(
                &"spec.tier: Unsupported value: \"gold\": supported values: \"free\", \"pro\""
                    .to_string()
            ),
            "{rendered:?}"
        );
        assert!(
            rendered.contains(
                &"spec.region: Invalid value: \"Taipei\": spec.region in body should match '^[a-z]+-[0-9]$'"
                    .to_string()
            ),
            "{rendered:?}"
        );
        assert!(
            rendered.contains(
                &"spec.items: Invalid value: 0: spec.items in body should have at least 1 items"
                    .to_string()
            ),
            "{rendered:?}"
        );
        let mut errors = Vec::new();
        validate(&schema, &json!({"count": "two"}), "spec", &mut errors);
        let rendered: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(rendered.contains(&"spec.tier: Required value".to_string()), "{rendered:?}");
        assert!(
            rendered.contains(
                &"spec.count: Invalid value: \"two\": spec.count in body must be of type integer: \"string\""
                    .to_string()
            ),
            "{rendered:?}"
        );
    }

    #[test]
    fn prunes_unknown_and_defaults() {
        let v = json!({"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
        "type": "object", "properties": {"spec": {"type": "object", "properties": {
            "a": {"type": "integer", "default": 3},
            "b": {"type": "object", "default": {}, "properties": {"c": {"type": "string", "default": "x"}}},
        }}}}}});
        let s = CrdVersionSchema::from_crd_version("g.io", "K", &v);
        let mut obj = json!({"apiVersion": "g.io/v1", "kind": "K", "metadata": {"name": "n"}, "spec": {"z": 1}, "extra": true});
        let unknown = s.prune_and_default(&mut obj, true);
        assert_eq!(unknown, vec!["spec.z".to_string(), "extra".to_string()]);
        assert_eq!(obj["spec"], json!({"a": 3, "b": {"c": "x"}}));
        assert_eq!(obj["metadata"]["name"], "n");
    }
}
