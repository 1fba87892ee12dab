//! Accessors for object metadata on untyped JSON objects, and small shared helpers.

use serde_json::{Map, Value, json};

/// `Value::pointer` (RFC 6901) without its allocations: serde_json unescapes every token with two
/// `replace` calls, and lookups like `/metadata/name` were a tenth of devcluster's CPU under the
/// operator benchmark. Pointers with escapes (`~0`, `~1`) still go through serde_json.
pub trait At {
    fn at(&self, pointer: &str) -> Option<&Value>;
}

impl At for Value {
    fn at(&self, pointer: &str) -> Option<&Value> {
        if pointer.contains('~') {
            return self.pointer(pointer);
        }
        if pointer.is_empty() {
            return Some(self);
        }
        pointer.strip_prefix('/')?.split('/').try_fold(self, |v, token| match v {
            Value::Object(m) => m.get(token),
            // As serde_json: no sign, and no leading zero except for `0` itself.
            Value::Array(a)
                if !(token.starts_with('+') || token.len() > 1 && token.starts_with('0')) =>
            {
                token.parse::<usize>().ok().and_then(|i| a.get(i))
            }
            _ => None,
        })
    }
}

pub fn name(obj: &Value) -> &str {
    obj.at("/metadata/name").and_then(Value::as_str).unwrap_or_default()
}

pub fn namespace(obj: &Value) -> &str {
    obj.at("/metadata/namespace").and_then(Value::as_str).unwrap_or_default()
}

pub fn uid(obj: &Value) -> &str {
    obj.at("/metadata/uid").and_then(Value::as_str).unwrap_or_default()
}

pub fn resource_version(obj: &Value) -> &str {
    obj.at("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or_default()
}

pub fn generation(obj: &Value) -> i64 {
    obj.at("/metadata/generation").and_then(Value::as_i64).unwrap_or(0)
}

pub fn deletion_timestamp(obj: &Value) -> Option<&str> {
    obj.at("/metadata/deletionTimestamp").and_then(Value::as_str)
}

pub fn is_deleting(obj: &Value) -> bool {
    deletion_timestamp(obj).is_some()
}

pub fn labels(obj: &Value) -> Option<&Map<String, Value>> {
    obj.at("/metadata/labels").and_then(Value::as_object)
}

pub fn label<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    labels(obj).and_then(|l| l.get(key)).and_then(Value::as_str)
}

pub fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.at("/metadata/annotations").and_then(|a| a.get(key)).and_then(Value::as_str)
}

pub fn finalizers(obj: &Value) -> Vec<String> {
    obj.at("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|f| f.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

pub fn set_finalizers(obj: &mut Value, finalizers: &[String]) {
    let meta = metadata_mut(obj);
    if finalizers.is_empty() {
        meta.remove("finalizers");
    } else {
        meta.insert("finalizers".into(), json!(finalizers));
    }
}

pub fn owner_references(obj: &Value) -> Vec<&Value> {
    obj.at("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

pub fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    let map = obj.as_object_mut().expect("object");
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    meta.as_object_mut().expect("metadata object")
}

/// Sets (or clears, with `None`) one metadata field.
pub fn set_meta(obj: &mut Value, key: &str, value: Option<Value>) {
    let meta = metadata_mut(obj);
    match value {
        Some(v) => {
            meta.insert(key.into(), v);
        }
        None => {
            meta.remove(key);
        }
    }
}

pub fn set_label(obj: &mut Value, key: &str, value: &str) {
    let meta = metadata_mut(obj);
    let labels = meta.entry("labels").or_insert_with(|| json!({}));
    labels[key] = value.into();
}

pub fn set_annotation(obj: &mut Value, key: &str, value: &str) {
    let meta = metadata_mut(obj);
    let a = meta.entry("annotations").or_insert_with(|| json!({}));
    a[key] = value.into();
}

/// Current time as Kubernetes writes `metav1.Time` (RFC 3339, whole seconds, UTC).
pub fn now_rfc3339() -> String {
    format_time(jiff::Timestamp::now())
}

pub fn format_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub fn parse_time(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

/// A random RFC 4122 UUID, as uids are.
pub fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// `generateName` suffix: 5 characters from the alphabet apimachinery uses.
pub fn random_suffix(n: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).expect("randomness");
    bytes.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

/// Human-readable age as kubectl prints it (`ConvertToHumanReadableDateType`).
pub fn human_age(since: &str) -> String {
    let Some(t) = parse_time(since) else { return "<invalid>".into() };
    let secs = (jiff::Timestamp::now().as_second() - t.as_second()).max(0);
    human_duration(secs)
}

/// apimachinery's `duration.HumanDuration`.
pub fn human_duration(secs: i64) -> String {
    let d = secs;
    if d < 0 {
        return "<invalid>".into();
    }
    if d < 60 * 2 {
        return format!("{d}s");
    }
    let minutes = d / 60;
    if minutes < 10 {
        let s = d % 60;
        return if s == 0 { format!("{minutes}m") } else { format!("{minutes}m{s}s") };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = d / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 { format!("{hours}h") } else { format!("{hours}h{m}m") };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 { format!("{}d", hours / 24) } else { format!("{}d{h}h", hours / 24) };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let days = (hours / 24) % 365;
        return if days == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{days}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// DNS-1123 subdomain (most object names).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// DNS-1123 label (namespaces, services).
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Label keys: optional DNS-subdomain prefix and a name of ≤ 63 characters.
pub fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix
        && !is_dns1123_subdomain(p)
    {
        return false;
    }
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

pub fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric())
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_like_apimachinery() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(3600), "60m");
        assert_eq!(human_duration(4 * 3600 + 60), "4h1m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400), "3d");
        assert_eq!(human_duration(30 * 86400), "30d");
    }

    #[test]
    fn names() {
        assert!(is_dns1123_subdomain("tenants.alcove.dev"));
        assert!(!is_dns1123_subdomain("Bad"));
        assert!(is_dns1123_label("tenant-acme"));
        assert!(!is_dns1123_label("a.b"));
        assert!(is_qualified_name("alcove.dev/tenant"));
        assert!(!is_qualified_name("-x"));
        assert!(is_label_value(""));
        assert!(!is_label_value("a b"));
    }

    #[test]
    fn at_finds_what_serde_json_pointer_finds() {
        let v = json!({"metadata": {"name": "n", "a/b": 1, "m~n": 2, "": 3},
            "list": [{"x": 0}, {"x": 1}], "10": "key"});
        for p in [
            "",
            "/",
            "/metadata",
            "/metadata/name",
            "/metadata/missing",
            "/metadata/a~1b",
            "/metadata/m~0n",
            "/metadata/",
            "/list/0/x",
            "/list/1/x",
            "/list/2",
            "/list/01",
            "/list/+1",
            "/list/-1",
            "/list/x",
            "/10",
            "metadata",
            "/metadata/name/deeper",
        ] {
            assert_eq!(v.at(p), v.pointer(p), "{p:?}");
        }
    }
}
