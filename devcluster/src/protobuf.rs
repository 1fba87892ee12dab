//! Decoding of `application/vnd.kubernetes.protobuf` request bodies. kubectl's typed clients
//! (create namespace/configmap/secret/serviceaccount/role/rolebinding, `auth can-i`,
//! `auth whoami`, `create token`) always send protobuf for built-in kinds. This decodes the
//! `k8s\0` envelope and those kinds (field numbers from k8s.io/api's generated.proto) into the
//! JSON form the rest of the server works with. Other kinds are refused with 415.

use base64::Engine;
use serde_json::{Map, Value, json};

#[derive(Clone, Copy)]
enum Ty {
    Str,
    Int,
    Bool,
    Msg(&'static [Field]),
    MapStr,
    MapBytes,
    /// `metav1.Time`: seconds and nanos.
    Time,
    /// `FieldsV1`: raw JSON bytes.
    RawJson,
}

#[derive(Clone, Copy)]
struct Field {
    num: u64,
    name: &'static str,
    ty: Ty,
    repeated: bool,
}

const fn f(num: u64, name: &'static str, ty: Ty) -> Field {
    Field { num, name, ty, repeated: false }
}
const fn r(num: u64, name: &'static str, ty: Ty) -> Field {
    Field { num, name, ty, repeated: true }
}

const OWNER_REF: &[Field] = &[
    f(5, "apiVersion", Ty::Str),
    f(1, "kind", Ty::Str),
    f(3, "name", Ty::Str),
    f(4, "uid", Ty::Str),
    f(6, "controller", Ty::Bool),
    f(7, "blockOwnerDeletion", Ty::Bool),
];
const MANAGED: &[Field] = &[
    f(1, "manager", Ty::Str),
    f(2, "operation", Ty::Str),
    f(3, "apiVersion", Ty::Str),
    f(4, "time", Ty::Time),
    f(6, "fieldsType", Ty::Str),
    f(7, "fieldsV1", Ty::RawJson),
    f(8, "subresource", Ty::Str),
];
const OBJECT_META: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "generateName", Ty::Str),
    f(3, "namespace", Ty::Str),
    f(4, "selfLink", Ty::Str),
    f(5, "uid", Ty::Str),
    f(6, "resourceVersion", Ty::Str),
    f(7, "generation", Ty::Int),
    f(8, "creationTimestamp", Ty::Time),
    f(9, "deletionTimestamp", Ty::Time),
    f(10, "deletionGracePeriodSeconds", Ty::Int),
    f(11, "labels", Ty::MapStr),
    f(12, "annotations", Ty::MapStr),
    r(13, "ownerReferences", Ty::Msg(OWNER_REF)),
    r(14, "finalizers", Ty::Str),
    r(17, "managedFields", Ty::Msg(MANAGED)),
];
const RESOURCE_ATTRS: &[Field] = &[
    f(1, "namespace", Ty::Str),
    f(2, "verb", Ty::Str),
    f(3, "group", Ty::Str),
    f(4, "version", Ty::Str),
    f(5, "resource", Ty::Str),
    f(6, "subresource", Ty::Str),
    f(7, "name", Ty::Str),
];
const NON_RESOURCE_ATTRS: &[Field] = &[f(1, "path", Ty::Str), f(2, "verb", Ty::Str)];
const SSAR_SPEC: &[Field] = &[
    f(1, "resourceAttributes", Ty::Msg(RESOURCE_ATTRS)),
    f(2, "nonResourceAttributes", Ty::Msg(NON_RESOURCE_ATTRS)),
];
const SAR_SPEC: &[Field] = &[
    f(1, "resourceAttributes", Ty::Msg(RESOURCE_ATTRS)),
    f(2, "nonResourceAttributes", Ty::Msg(NON_RESOURCE_ATTRS)),
    f(3, "user", Ty::Str),
    r(4, "groups", Ty::Str),
    f(6, "uid", Ty::Str),
];
const SSRR_SPEC: &[Field] = &[f(1, "namespace", Ty::Str)];
const BOUND_REF: &[Field] = &[
    f(1, "kind", Ty::Str),
    f(2, "apiVersion", Ty::Str),
    f(3, "name", Ty::Str),
    f(4, "uid", Ty::Str),
];
const TOKEN_REQUEST_SPEC: &[Field] = &[
    r(1, "audiences", Ty::Str),
    f(4, "expirationSeconds", Ty::Int),
    f(3, "boundObjectRef", Ty::Msg(BOUND_REF)),
];
const TOKEN_REVIEW_SPEC: &[Field] = &[f(1, "token", Ty::Str), r(2, "audiences", Ty::Str)];
const NAMESPACE_SPEC: &[Field] = &[r(1, "finalizers", Ty::Str)];
const OBJECT_REF: &[Field] = &[
    f(1, "kind", Ty::Str),
    f(2, "namespace", Ty::Str),
    f(3, "name", Ty::Str),
    f(4, "uid", Ty::Str),
    f(5, "apiVersion", Ty::Str),
    f(6, "resourceVersion", Ty::Str),
    f(7, "fieldPath", Ty::Str),
];
const LOCAL_REF: &[Field] = &[f(1, "name", Ty::Str)];
const POLICY_RULE: &[Field] = &[
    r(1, "verbs", Ty::Str),
    r(2, "apiGroups", Ty::Str),
    r(3, "resources", Ty::Str),
    r(4, "resourceNames", Ty::Str),
    r(5, "nonResourceURLs", Ty::Str),
];
const SUBJECT: &[Field] = &[
    f(1, "kind", Ty::Str),
    f(2, "apiGroup", Ty::Str),
    f(3, "name", Ty::Str),
    f(4, "namespace", Ty::Str),
];
const ROLE_REF: &[Field] =
    &[f(1, "apiGroup", Ty::Str), f(2, "kind", Ty::Str), f(3, "name", Ty::Str)];
const REQUIREMENT: &[Field] =
    &[f(1, "key", Ty::Str), f(2, "operator", Ty::Str), r(3, "values", Ty::Str)];
const LABEL_SELECTOR: &[Field] =
    &[f(1, "matchLabels", Ty::MapStr), r(2, "matchExpressions", Ty::Msg(REQUIREMENT))];
const AGGREGATION: &[Field] = &[r(1, "clusterRoleSelectors", Ty::Msg(LABEL_SELECTOR))];

const fn meta() -> Field {
    f(1, "metadata", Ty::Msg(OBJECT_META))
}

const S_SELFSUBJECTACCESSREVIEW: &[Field] = &[meta(), f(2, "spec", Ty::Msg(SSAR_SPEC))];
const S_SUBJECTACCESSREVIEW: &[Field] = &[meta(), f(2, "spec", Ty::Msg(SAR_SPEC))];
const S_SELFSUBJECTRULESREVIEW: &[Field] = &[meta(), f(2, "spec", Ty::Msg(SSRR_SPEC))];
const S_SELFSUBJECTREVIEW: &[Field] = &[meta()];
const S_TOKENREQUEST: &[Field] = &[meta(), f(2, "spec", Ty::Msg(TOKEN_REQUEST_SPEC))];
const S_TOKENREVIEW: &[Field] = &[meta(), f(2, "spec", Ty::Msg(TOKEN_REVIEW_SPEC))];
const S_NAMESPACE: &[Field] = &[meta(), f(2, "spec", Ty::Msg(NAMESPACE_SPEC))];
const S_CONFIGMAP: &[Field] = &[
    meta(),
    f(4, "immutable", Ty::Bool),
    f(2, "data", Ty::MapStr),
    f(3, "binaryData", Ty::MapBytes),
];
const S_SECRET: &[Field] = &[
    meta(),
    f(5, "immutable", Ty::Bool),
    f(2, "data", Ty::MapBytes),
    f(4, "stringData", Ty::MapStr),
    f(3, "type", Ty::Str),
];
const S_SERVICEACCOUNT: &[Field] = &[
    meta(),
    r(2, "secrets", Ty::Msg(OBJECT_REF)),
    r(3, "imagePullSecrets", Ty::Msg(LOCAL_REF)),
    f(4, "automountServiceAccountToken", Ty::Bool),
];
const S_ROLE: &[Field] = &[meta(), r(2, "rules", Ty::Msg(POLICY_RULE))];
const S_CLUSTERROLE: &[Field] =
    &[meta(), r(2, "rules", Ty::Msg(POLICY_RULE)), f(3, "aggregationRule", Ty::Msg(AGGREGATION))];
const S_BINDING: &[Field] =
    &[meta(), r(2, "subjects", Ty::Msg(SUBJECT)), f(3, "roleRef", Ty::Msg(ROLE_REF))];

fn schema_for(api_version: &str, kind: &str) -> Option<&'static [Field]> {
    Some(match (api_version, kind) {
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => S_SELFSUBJECTACCESSREVIEW,
        ("authorization.k8s.io/v1", "SubjectAccessReview") => S_SUBJECTACCESSREVIEW,
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => S_SELFSUBJECTRULESREVIEW,
        ("authentication.k8s.io/v1", "SelfSubjectReview") => S_SELFSUBJECTREVIEW,
        ("authentication.k8s.io/v1", "TokenRequest") => S_TOKENREQUEST,
        ("authentication.k8s.io/v1", "TokenReview") => S_TOKENREVIEW,
        ("v1", "Namespace") => S_NAMESPACE,
        ("v1", "ConfigMap") => S_CONFIGMAP,
        ("v1", "Secret") => S_SECRET,
        ("v1", "ServiceAccount") => S_SERVICEACCOUNT,
        ("rbac.authorization.k8s.io/v1", "Role") => S_ROLE,
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => S_CLUSTERROLE,
        ("rbac.authorization.k8s.io/v1", "RoleBinding")
        | ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => S_BINDING,
        _ => return None,
    })
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            out |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err("varint too long".into())
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.varint()? as usize;
        let end =
            self.pos.checked_add(len).filter(|e| *e <= self.buf.len()).ok_or("truncated field")?;
        let b = &self.buf[self.pos..end];
        self.pos = end;
        Ok(b)
    }

    /// (field number, wire type) pairs with their payloads.
    fn fields(mut self) -> Result<Vec<(u64, Payload<'a>)>, String> {
        let mut out = Vec::new();
        while self.pos < self.buf.len() {
            let key = self.varint()?;
            let (num, wire) = (key >> 3, key & 7);
            let payload = match wire {
                0 => Payload::Varint(self.varint()?),
                2 => Payload::Bytes(self.bytes()?),
                1 => {
                    self.pos += 8;
                    Payload::Skip
                }
                5 => {
                    self.pos += 4;
                    Payload::Skip
                }
                other => return Err(format!("unsupported wire type {other}")),
            };
            out.push((num, payload));
        }
        Ok(out)
    }
}

enum Payload<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Skip,
}

fn decode_message(buf: &[u8], schema: &[Field]) -> Result<Value, String> {
    let mut out = Map::new();
    for (num, payload) in (Reader { buf, pos: 0 }).fields()? {
        let Some(field) = schema.iter().find(|f| f.num == num) else { continue };
        let value = match (field.ty, &payload) {
            (Ty::Str, Payload::Bytes(b)) => Value::String(String::from_utf8_lossy(b).into_owned()),
            (Ty::Int, Payload::Varint(v)) => Value::from(*v as i64),
            (Ty::Bool, Payload::Varint(v)) => Value::Bool(*v != 0),
            (Ty::Msg(s), Payload::Bytes(b)) => decode_message(b, s)?,
            (Ty::RawJson, Payload::Bytes(b)) => {
                let inner = (Reader { buf: b, pos: 0 }).fields()?;
                let raw = inner.iter().find_map(|(n, p)| match (n, p) {
                    (1, Payload::Bytes(r)) => Some(*r),
                    _ => None,
                });
                raw.and_then(|r| serde_json::from_slice(r).ok()).unwrap_or_else(|| json!({}))
            }
            (Ty::Time, Payload::Bytes(b)) => {
                let inner = (Reader { buf: b, pos: 0 }).fields()?;
                let secs = inner
                    .iter()
                    .find_map(|(n, p)| match (n, p) {
                        (1, Payload::Varint(v)) => Some(*v as i64),
                        _ => None,
                    })
                    .unwrap_or(0);
                let t = jiff::Timestamp::from_second(secs).map_err(|e| e.to_string())?;
                Value::String(crate::meta::format_time(t))
            }
            (Ty::MapStr | Ty::MapBytes, Payload::Bytes(b)) => {
                let entry = (Reader { buf: b, pos: 0 }).fields()?;
                let mut key = String::new();
                let mut val = Value::String(String::new());
                for (n, p) in entry {
                    if let Payload::Bytes(x) = p {
                        match n {
                            1 => key = String::from_utf8_lossy(x).into_owned(),
                            2 if matches!(field.ty, Ty::MapBytes) => {
                                val = Value::String(
                                    base64::engine::general_purpose::STANDARD.encode(x),
                                )
                            }
                            2 => val = Value::String(String::from_utf8_lossy(x).into_owned()),
                            _ => {}
                        }
                    }
                }
                let m = out.entry(field.name).or_insert_with(|| json!({}));
                m[key.as_str()] = val;
                continue;
            }
            _ => return Err(format!("field {} has an unexpected wire type", field.name)),
        };
        if field.repeated {
            out.entry(field.name)
                .or_insert_with(|| json!([]))
                .as_array_mut()
                .expect("array")
                .push(value);
        } else {
            out.insert(field.name.to_string(), value);
        }
    }
    Ok(Value::Object(out))
}

/// Decodes a protobuf request body (`k8s\0` + runtime.Unknown) into JSON.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let inner = body.strip_prefix(b"k8s\0").ok_or("protobuf body lacks the k8s magic prefix")?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    for (num, payload) in (Reader { buf: inner, pos: 0 }).fields()? {
        match (num, payload) {
            (1, Payload::Bytes(tm)) => {
                for (n, p) in (Reader { buf: tm, pos: 0 }).fields()? {
                    if let Payload::Bytes(s) = p {
                        match n {
                            1 => api_version = String::from_utf8_lossy(s).into_owned(),
                            2 => kind = String::from_utf8_lossy(s).into_owned(),
                            _ => {}
                        }
                    }
                }
            }
            (2, Payload::Bytes(r)) => raw = r,
            _ => {}
        }
    }
    let schema = schema_for(&api_version, &kind).ok_or_else(|| {
        format!("this server decodes protobuf only for a few kinds, not {api_version} {kind}; send application/json")
    })?;
    let mut obj = decode_message(raw, schema)?;
    obj["apiVersion"] = api_version.into();
    obj["kind"] = kind.into();
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn bytes_field(num: u64, b: &[u8], out: &mut Vec<u8>) {
        varint(num << 3 | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }

    #[test]
    fn decodes_an_access_review() {
        let mut attrs = Vec::new();
        bytes_field(1, b"tenant-a", &mut attrs);
        bytes_field(2, b"create", &mut attrs);
        bytes_field(3, b"alcove.dev", &mut attrs);
        bytes_field(5, b"inferenceinstances", &mut attrs);
        let mut spec = Vec::new();
        bytes_field(1, &attrs, &mut spec);
        let mut raw = Vec::new();
        bytes_field(2, &spec, &mut raw);
        let mut tm = Vec::new();
        bytes_field(1, b"authorization.k8s.io/v1", &mut tm);
        bytes_field(2, b"SelfSubjectAccessReview", &mut tm);
        let mut body = b"k8s\0".to_vec();
        bytes_field(1, &tm, &mut body);
        bytes_field(2, &raw, &mut body);
        let v = decode(&body).unwrap();
        assert_eq!(v["kind"], "SelfSubjectAccessReview");
        assert_eq!(v["spec"]["resourceAttributes"]["resource"], "inferenceinstances");
        assert_eq!(v["spec"]["resourceAttributes"]["namespace"], "tenant-a");
    }
}
