//! The three non-apply patch types: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and
//! strategic merge patch (built-in kinds; directives as apimachinery's `strategicpatch`).

use crate::meta::At;
use serde_json::{Map, Value};

use crate::typeinfo::{ListKind, TypeInfo};

/// RFC 7386.
pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    match patch {
        Value::Object(p) => {
            let mut out = match target {
                Value::Object(t) => t.clone(),
                _ => Map::new(),
            };
            for (k, v) in p {
                if v.is_null() {
                    out.remove(k);
                } else {
                    let merged = merge_patch(out.get(k).unwrap_or(&Value::Null), v);
                    out.insert(k.clone(), merged);
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path.strip_prefix('/').ok_or_else(|| format!("invalid JSON pointer {path:?}"))?;
    Ok(rest.split('/').map(unescape).collect())
}

fn parent_mut<'a>(doc: &'a mut Value, tokens: &[String]) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for t in tokens {
        cur = match cur {
            Value::Object(m) => m
                .get_mut(t)
                .ok_or_else(|| format!("doc is missing path: \"/{}\"", tokens.join("/")))?,
            Value::Array(a) => {
                let i: usize = t.parse().map_err(|_| format!("invalid array index {t:?}"))?;
                a.get_mut(i)
                    .ok_or_else(|| format!("doc is missing path: \"/{}\"", tokens.join("/")))?
            }
            _ => return Err(format!("doc is missing path: \"/{}\"", tokens.join("/"))),
        };
    }
    Ok(cur)
}

fn pointer_get<'a>(doc: &'a Value, path: &str) -> Result<&'a Value, String> {
    doc.at(path).ok_or_else(|| format!("doc is missing path: {path:?}"))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let tokens = split_pointer(path)?;
    let Some((last, init)) = tokens.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent_mut(doc, init)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
                return Ok(());
            }
            let i: usize = last.parse().map_err(|_| format!("invalid array index {last:?}"))?;
            if i > a.len() {
                return Err(format!("add operation does not apply: doc is missing key: {path}"));
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err(format!("add operation does not apply: doc is missing path: {path}")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let tokens = split_pointer(path)?;
    let (last, init) = tokens.split_last().ok_or("cannot remove the whole document")?;
    match parent_mut(doc, init)? {
        Value::Object(m) => m.remove(last).ok_or_else(|| {
            format!("remove operation does not apply: doc is missing path: \"{path}\"")
        }),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| format!("invalid array index {last:?}"))?;
            if i >= a.len() {
                return Err(format!(
                    "remove operation does not apply: doc is missing path: \"{path}\""
                ));
            }
            Ok(a.remove(i))
        }
        _ => Err(format!("remove operation does not apply: doc is missing path: \"{path}\"")),
    }
}

/// RFC 6902.
pub fn json_patch(target: &Value, ops: &Value) -> Result<Value, String> {
    let ops = ops.as_array().ok_or("json patch must be a list of operations")?;
    let mut doc = target.clone();
    for op in ops {
        let path = op["path"].as_str().ok_or("json patch operation is missing \"path\"")?;
        match op["op"].as_str() {
            Some("add") => {
                add(&mut doc, path, op.get("value").cloned().ok_or("add operation needs a value")?)?
            }
            Some("remove") => {
                remove(&mut doc, path)?;
            }
            Some("replace") => {
                pointer_get(&doc, path).map_err(|_| {
                    format!("replace operation does not apply: doc is missing key: {path}")
                })?;
                remove(&mut doc, path)?;
                add(
                    &mut doc,
                    path,
                    op.get("value").cloned().ok_or("replace operation needs a value")?,
                )?;
            }
            Some("move") => {
                let from = op["from"].as_str().ok_or("move operation needs \"from\"")?;
                let v = remove(&mut doc, from)?;
                add(&mut doc, path, v)?;
            }
            Some("copy") => {
                let from = op["from"].as_str().ok_or("copy operation needs \"from\"")?;
                let v = pointer_get(&doc, from)?.clone();
                add(&mut doc, path, v)?;
            }
            Some("test") => {
                let actual = pointer_get(&doc, path)?;
                if Some(actual) != op.get("value") {
                    return Err(format!("testing value {path} failed: test failed"));
                }
            }
            other => return Err(format!("Unexpected kind: {}", other.unwrap_or("<missing>"))),
        }
    }
    Ok(doc)
}

/// Strategic merge patch for built-in kinds.
pub fn strategic_merge_patch(
    target: &Value,
    patch: &Value,
    ti: &TypeInfo,
) -> Result<Value, String> {
    smp(target, patch, ti, &mut Vec::new())
}

fn smp(
    target: &Value,
    patch: &Value,
    ti: &TypeInfo,
    names: &mut Vec<String>,
) -> Result<Value, String> {
    let Value::Object(p) = patch else { return Ok(patch.clone()) };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut out = p.clone();
        out.remove("$patch");
        return Ok(Value::Object(out));
    }
    if p.get("$patch").and_then(Value::as_str) == Some("delete") {
        return Ok(Value::Null);
    }
    let mut out = match target {
        Value::Object(t) => t.clone(),
        _ => Map::new(),
    };
    if let Some(retain) = p.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(del)) = (out.get_mut(field), v.as_array()) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        // Other directives ($setElementOrder is applied after the merge below).
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            out.remove(k);
            continue;
        }
        names.push(k.clone());
        let merged = match (out.get(k), v) {
            (Some(cur @ Value::Object(_)), Value::Object(_)) => smp(cur, v, ti, names)?,
            (cur, Value::Array(items)) => {
                let names_ref: Vec<&str> = names.iter().map(String::as_str).collect();
                merge_list(
                    cur.and_then(Value::as_array),
                    items,
                    &ti.list_kind(&names_ref),
                    ti,
                    names,
                )?
            }
            (_, Value::Object(_)) => smp(&Value::Null, v, ti, names)?,
            _ => v.clone(),
        };
        names.pop();
        if merged.is_null() {
            out.remove(k);
        } else {
            out.insert(k.clone(), merged);
        }
    }
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$setElementOrder/")
            && let (Some(Value::Array(list)), Some(order)) = (out.get_mut(field), v.as_array())
        {
            names.push(field.to_string());
            let names_ref: Vec<&str> = names.iter().map(String::as_str).collect();
            let kind = ti.list_kind(&names_ref);
            names.pop();
            reorder(list, order, &kind);
        }
    }
    Ok(Value::Object(out))
}

fn key_of(item: &Value, keys: &[String]) -> Vec<Value> {
    keys.iter().map(|k| item.get(k).cloned().unwrap_or(Value::Null)).collect()
}

fn merge_list(
    current: Option<&Vec<Value>>,
    patch: &[Value],
    kind: &ListKind,
    ti: &TypeInfo,
    names: &mut Vec<String>,
) -> Result<Value, String> {
    let current = current.cloned().unwrap_or_default();
    match kind {
        ListKind::Atomic => {
            if patch.iter().any(|i| i.get("$patch").is_some()) {
                return Err("$patch directive on a list that does not merge".into());
            }
            Ok(Value::Array(patch.to_vec()))
        }
        ListKind::Set => {
            let mut out = current;
            for item in patch {
                if !out.contains(item) {
                    out.push(item.clone());
                }
            }
            Ok(Value::Array(out))
        }
        ListKind::Map(keys) => {
            let mut out = current;
            if patch.iter().any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace")) {
                return Ok(Value::Array(
                    patch.iter().filter(|i| i.get("$patch").is_none()).cloned().collect(),
                ));
            }
            for item in patch {
                let k = key_of(item, keys);
                let pos = out.iter().position(|o| key_of(o, keys) == k);
                match (item.get("$patch").and_then(Value::as_str), pos) {
                    (Some("delete"), Some(i)) => {
                        out.remove(i);
                    }
                    (Some("delete"), None) => {}
                    (_, Some(i)) => out[i] = smp(&out[i], item, ti, names)?,
                    (_, None) => out.push(smp(&Value::Null, item, ti, names)?),
                }
            }
            Ok(Value::Array(out))
        }
    }
}

fn reorder(list: &mut [Value], order: &[Value], kind: &ListKind) {
    let position = |item: &Value| -> usize {
        order
            .iter()
            .position(|o| match kind {
                ListKind::Map(keys) => key_of(o, keys) == key_of(item, keys),
                _ => o == item,
            })
            .unwrap_or(usize::MAX)
    };
    list.sort_by_key(|item| position(item));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386() {
        let t = json!({"a": 1, "b": {"c": 2, "d": 3}});
        assert_eq!(
            merge_patch(&t, &json!({"a": null, "b": {"c": 5}})),
            json!({"b": {"c": 5, "d": 3}})
        );
    }

    #[test]
    fn json_patch_ops() {
        let t = json!({"a": [1, 2], "b": "x"});
        let p = json!([
            {"op": "add", "path": "/a/-", "value": 3},
            {"op": "replace", "path": "/b", "value": "y"},
            {"op": "test", "path": "/b", "value": "y"},
            {"op": "remove", "path": "/a/0"},
        ]);
        assert_eq!(json_patch(&t, &p).unwrap(), json!({"a": [2, 3], "b": "y"}));
        assert!(json_patch(&t, &json!([{"op": "remove", "path": "/zz"}])).is_err());
        assert!(json_patch(&t, &json!([{"op": "test", "path": "/b", "value": "q"}])).is_err());
    }

    #[test]
    fn strategic_merge_keys_and_directives() {
        let ti = TypeInfo::Builtin { kind: "Pod" };
        let t = json!({"metadata": {"finalizers": ["a"]}, "spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}], "tolerations": [{"key": "k"}]}});
        let p = json!({"metadata": {"finalizers": ["b"]}, "spec": {"containers": [{"name": "b", "image": "z"}, {"name": "a", "$patch": "delete"}], "tolerations": [{"key": "n"}]}});
        let out = strategic_merge_patch(&t, &p, &ti).unwrap();
        assert_eq!(out["spec"]["containers"], json!([{"name": "b", "image": "z"}]));
        assert_eq!(out["spec"]["tolerations"], json!([{"key": "n"}]));
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
        let del = strategic_merge_patch(
            &out,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
            &ti,
        )
        .unwrap();
        assert_eq!(del["metadata"]["finalizers"], json!(["b"]));
    }
}
