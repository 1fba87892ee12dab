//! `events.k8s.io/v1` Events are stored as core `v1` Events, as in kube-apiserver; these convert
//! between the two shapes.

use serde_json::{Map, Value};

const RENAMES: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
    ("reportingController", "reportingComponent"),
];

fn rename(obj: &Value, forward: bool, api_version: &str) -> Value {
    let Some(map) = obj.as_object() else { return obj.clone() };
    let mut out = Map::new();
    for (k, v) in map {
        let key = RENAMES
            .iter()
            .find(|(a, b)| if forward { a == k } else { b == k })
            .map(|(a, b)| if forward { *b } else { *a })
            .unwrap_or(k.as_str());
        out.insert(key.to_string(), v.clone());
    }
    out.insert("apiVersion".into(), api_version.into());
    Value::Object(out)
}

/// events.k8s.io/v1 → core v1 (storage form).
pub fn to_core(obj: &Value) -> Value {
    let mut v = rename(obj, true, "v1");
    // Core events need a source; the new API's reporting controller is it.
    if v.get("source").is_none()
        && let Some(c) = v.get("reportingComponent").cloned()
    {
        v["source"] = serde_json::json!({"component": c});
    }
    v
}

/// core v1 (storage form) → events.k8s.io/v1.
pub fn from_core(obj: &Value) -> Value {
    rename(obj, false, "events.k8s.io/v1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip() {
        let e = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "regarding": {"name": "x"}, "note": "hi", "reason": "R", "reportingController": "alcove"});
        let core = to_core(&e);
        assert_eq!(core["involvedObject"]["name"], "x");
        assert_eq!(core["message"], "hi");
        assert_eq!(core["apiVersion"], "v1");
        let back = from_core(&core);
        assert_eq!(back["note"], "hi");
        assert_eq!(back["regarding"]["name"], "x");
    }
}
