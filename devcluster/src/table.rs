//! Server-side printing (`meta.k8s.io/v1` Table), which `kubectl get` asks for: CRD printer
//! columns through a JSONPath subset, and printers for the built-in kinds shaped like
//! kube-apiserver's.

use serde_json::{Value, json};

use crate::meta::{self, At};
use crate::resources::ResourceInfo;

/// Evaluates the JSONPath subset printer columns use: `.a.b`, `[n]`, `[*]`, `['k']`, and
/// `[?(@.k=="v")]` filters. Returns every match.
pub fn jsonpath<'a>(obj: &'a Value, path: &str) -> Vec<&'a Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    let path = path.strip_prefix('$').unwrap_or(path);
    let mut current: Vec<&Value> = vec![obj];
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'.' => {
                i += 1;
                let start = i;
                while i < bytes.len() && bytes[i] != b'.' && bytes[i] != b'[' {
                    i += 1;
                }
                let key = &path[start..i];
                if key.is_empty() {
                    continue;
                }
                current = current.into_iter().filter_map(|v| v.get(key)).collect();
            }
            b'[' => {
                let Some(end) = find_bracket_end(path, i) else { return Vec::new() };
                let inner = &path[i + 1..end];
                i = end + 1;
                current = apply_bracket(current, inner);
            }
            _ => {
                // A leading name without a dot.
                let start = i;
                while i < bytes.len() && bytes[i] != b'.' && bytes[i] != b'[' {
                    i += 1;
                }
                let key = &path[start..i];
                current = current.into_iter().filter_map(|v| v.get(key)).collect();
            }
        }
    }
    current
}

fn find_bracket_end(path: &str, open: usize) -> Option<usize> {
    let mut depth = 0;
    let mut quote: Option<char> = None;
    for (j, c) in path[open..].char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[') => depth += 1,
            (None, ']') => {
                depth -= 1;
                if depth == 0 {
                    return Some(open + j);
                }
            }
            _ => {}
        }
    }
    None
}

fn apply_bracket<'a>(current: Vec<&'a Value>, inner: &str) -> Vec<&'a Value> {
    let inner = inner.trim();
    if inner == "*" {
        return current
            .into_iter()
            .flat_map(|v| match v {
                Value::Array(a) => a.iter().collect::<Vec<_>>(),
                Value::Object(m) => m.values().collect(),
                _ => Vec::new(),
            })
            .collect();
    }
    if let Some(filter) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')')) {
        let (lhs, op, rhs) = if let Some((l, r)) = filter.split_once("==") {
            (l, "==", r)
        } else if let Some((l, r)) = filter.split_once("!=") {
            (l, "!=", r)
        } else {
            (filter, "exists", "")
        };
        let key_path = lhs.trim().trim_start_matches('@');
        let want = rhs.trim().trim_matches(|c| c == '"' || c == '\'');
        return current
            .into_iter()
            .flat_map(|v| v.as_array().map(|a| a.iter().collect::<Vec<_>>()).unwrap_or_default())
            .filter(|item| {
                let got = jsonpath(item, key_path);
                match op {
                    "exists" => !got.is_empty(),
                    _ => {
                        let eq = got.first().is_some_and(|g| match g {
                            Value::String(s) => s == want,
                            other => *other == want,
                        });
                        if op == "==" { eq } else { !eq }
                    }
                }
            })
            .collect();
    }
    if let Some(key) = inner
        .strip_prefix('\'')
        .and_then(|k| k.strip_suffix('\''))
        .or_else(|| inner.strip_prefix('"').and_then(|k| k.strip_suffix('"')))
    {
        return current.into_iter().filter_map(|v| v.get(key)).collect();
    }
    if let Ok(n) = inner.parse::<i64>() {
        return current
            .into_iter()
            .filter_map(|v| {
                let a = v.as_array()?;
                let idx = if n < 0 { a.len() as i64 + n } else { n };
                a.get(idx as usize)
            })
            .collect();
    }
    Vec::new()
}

struct Column {
    name: &'static str,
    ty: &'static str,
    priority: i64,
}

const fn col(name: &'static str) -> Column {
    Column { name, ty: "string", priority: 0 }
}
const fn wide(name: &'static str) -> Column {
    Column { name, ty: "string", priority: 1 }
}
const fn int(name: &'static str) -> Column {
    Column { name, ty: "integer", priority: 0 }
}

fn definitions(cols: &[Column]) -> Vec<Value> {
    cols.iter()
        .map(|c| {
            let format = if c.name == "Name" { "name" } else { "" };
            json!({"name": c.name, "type": c.ty, "format": format, "description": "", "priority": c.priority})
        })
        .collect()
}

fn age(obj: &Value) -> Value {
    obj.at("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .map(meta::human_age)
        .unwrap_or_else(|| "<unknown>".into())
        .into()
}

fn s<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.at(pointer).and_then(Value::as_str).unwrap_or_default()
}

fn none_if_empty(v: String) -> Value {
    if v.is_empty() { "<none>".into() } else { v.into() }
}

fn pod_status(pod: &Value) -> String {
    let mut reason = s(pod, "/status/phase").to_string();
    if !s(pod, "/status/reason").is_empty() {
        reason = s(pod, "/status/reason").to_string();
    }
    for c in pod.at("/status/initContainerStatuses").and_then(Value::as_array).into_iter().flatten()
    {
        if let Some(w) = c.at("/state/waiting/reason").and_then(Value::as_str)
            && w != "PodInitializing"
        {
            reason = format!("Init:{w}");
        }
    }
    for c in pod.at("/status/containerStatuses").and_then(Value::as_array).into_iter().flatten() {
        if let Some(w) = c.at("/state/waiting/reason").and_then(Value::as_str) {
            reason = w.to_string();
        } else if let Some(t) = c.at("/state/terminated") {
            reason = t["reason"].as_str().map(str::to_string).unwrap_or_else(|| match t["signal"]
                .as_i64()
            {
                Some(sig) if sig != 0 => format!("Signal:{sig}"),
                _ => format!("ExitCode:{}", t["exitCode"].as_i64().unwrap_or(0)),
            });
        }
    }
    if meta::is_deleting(pod) {
        reason = "Terminating".into();
    }
    reason
}

fn ports_string(svc: &Value) -> String {
    let ports: Vec<String> = svc
        .at("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_i64() {
                Some(np) => format!("{}:{np}/{proto}", p["port"]),
                None => format!("{}/{proto}", p["port"]),
            }
        })
        .collect();
    ports.join(",")
}

fn access_modes(v: &Value) -> String {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn condition_status<'a>(obj: &'a Value, ty: &str) -> Option<&'a str> {
    obj.at("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"] == ty)
        .and_then(|c| c["status"].as_str())
}

fn count_map(v: &Value) -> i64 {
    v.as_object().map_or(0, |m| m.len() as i64)
}

/// Columns and cells for a built-in kind.
fn builtin_row(kind: &str, group: &str, obj: &Value) -> (Vec<Column>, Vec<Value>) {
    let name: Value = meta::name(obj).into();
    match (group, kind) {
        ("", "Pod") => {
            let statuses: Vec<&Value> = obj
                .at("/status/containerStatuses")
                .and_then(Value::as_array)
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            let total = obj.at("/spec/containers").and_then(Value::as_array).map_or(0, Vec::len);
            let ready = statuses.iter().filter(|c| c["ready"] == true).count();
            let restarts: i64 =
                statuses.iter().map(|c| c["restartCount"].as_i64().unwrap_or(0)).sum();
            (
                vec![
                    col("Name"),
                    col("Ready"),
                    col("Status"),
                    int("Restarts"),
                    col("Age"),
                    wide("IP"),
                    wide("Node"),
                    wide("Nominated Node"),
                    wide("Readiness Gates"),
                ],
                vec![
                    name,
                    format!("{ready}/{total}").into(),
                    pod_status(obj).into(),
                    restarts.into(),
                    age(obj),
                    none_if_empty(s(obj, "/status/podIP").into()),
                    none_if_empty(s(obj, "/spec/nodeName").into()),
                    "<none>".into(),
                    "<none>".into(),
                ],
            )
        }
        ("", "Service") => {
            let external = obj
                .at("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
                .and_then(|i| i["ip"].as_str())
                .unwrap_or("<none>");
            let selector: Vec<String> = obj
                .at("/spec/selector")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            (
                vec![
                    col("Name"),
                    col("Type"),
                    col("Cluster-IP"),
                    col("External-IP"),
                    col("Port(s)"),
                    col("Age"),
                    wide("Selector"),
                ],
                vec![
                    name,
                    s(obj, "/spec/type").into(),
                    s(obj, "/spec/clusterIP").into(),
                    external.into(),
                    none_if_empty(ports_string(obj)),
                    age(obj),
                    none_if_empty(selector.join(",")),
                ],
            )
        }
        ("", "Namespace") => (
            vec![col("Name"), col("Status"), col("Age")],
            vec![name, s(obj, "/status/phase").into(), age(obj)],
        ),
        ("", "Node") => {
            let ready = match condition_status(obj, "Ready") {
                Some("True") => "Ready",
                Some(_) => "NotReady",
                None => "Unknown",
            };
            let status = if obj.at("/spec/unschedulable") == Some(&Value::Bool(true)) {
                format!("{ready},SchedulingDisabled")
            } else {
                ready.into()
            };
            let roles: Vec<&str> = meta::labels(obj)
                .into_iter()
                .flatten()
                .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
                .collect();
            (
                vec![col("Name"), col("Status"), col("Roles"), col("Age"), col("Version")],
                vec![
                    name,
                    status.into(),
                    none_if_empty(roles.join(",")),
                    age(obj),
                    s(obj, "/status/nodeInfo/kubeletVersion").into(),
                ],
            )
        }
        ("", "ConfigMap") => (
            vec![col("Name"), int("Data"), col("Age")],
            vec![name, (count_map(&obj["data"]) + count_map(&obj["binaryData"])).into(), age(obj)],
        ),
        ("", "Secret") => (
            vec![col("Name"), col("Type"), int("Data"), col("Age")],
            vec![name, s(obj, "/type").into(), count_map(&obj["data"]).into(), age(obj)],
        ),
        ("", "PersistentVolumeClaim") => (
            vec![
                col("Name"),
                col("Status"),
                col("Volume"),
                col("Capacity"),
                col("Access Modes"),
                col("StorageClass"),
                col("VolumeAttributesClass"),
                col("Age"),
                wide("VolumeMode"),
            ],
            vec![
                name,
                s(obj, "/status/phase").into(),
                s(obj, "/spec/volumeName").into(),
                s(obj, "/status/capacity/storage").into(),
                access_modes(&obj["status"]["accessModes"]).into(),
                s(obj, "/spec/storageClassName").into(),
                "<unset>".into(),
                age(obj),
                s(obj, "/spec/volumeMode").into(),
            ],
        ),
        ("", "PersistentVolume") => {
            let claim = obj
                .at("/spec/claimRef")
                .map(|c| format!("{}/{}", s(c, "/namespace"), s(c, "/name")))
                .unwrap_or_default();
            (
                vec![
                    col("Name"),
                    col("Capacity"),
                    col("Access Modes"),
                    col("Reclaim Policy"),
                    col("Status"),
                    col("Claim"),
                    col("StorageClass"),
                    col("VolumeAttributesClass"),
                    col("Reason"),
                    col("Age"),
                ],
                vec![
                    name,
                    s(obj, "/spec/capacity/storage").into(),
                    access_modes(&obj["spec"]["accessModes"]).into(),
                    s(obj, "/spec/persistentVolumeReclaimPolicy").into(),
                    s(obj, "/status/phase").into(),
                    claim.into(),
                    s(obj, "/spec/storageClassName").into(),
                    "<unset>".into(),
                    s(obj, "/status/reason").into(),
                    age(obj),
                ],
            )
        }
        ("", "ServiceAccount") => (
            vec![col("Name"), int("Secrets"), col("Age")],
            vec![name, obj["secrets"].as_array().map_or(0, Vec::len).into(), age(obj)],
        ),
        ("", "ResourceQuota") => {
            let hard = obj
                .at("/status/hard")
                .or_else(|| obj.at("/spec/hard"))
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let used =
                obj.at("/status/used").and_then(Value::as_object).cloned().unwrap_or_default();
            let fmt = |pred: &dyn Fn(&str) -> bool| -> String {
                hard.iter()
                    .filter(|(k, _)| pred(k))
                    .map(|(k, v)| {
                        format!(
                            "{k}: {}/{}",
                            used.get(k).and_then(Value::as_str).unwrap_or("0"),
                            v.as_str().unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            (
                vec![col("Name"), col("Age"), col("Request"), col("Limit")],
                vec![
                    name,
                    age(obj),
                    fmt(&|k| !k.starts_with("limits.")).into(),
                    fmt(&|k| k.starts_with("limits.")).into(),
                ],
            )
        }
        ("", "Event") | ("events.k8s.io", "Event") => {
            let last = obj["lastTimestamp"]
                .as_str()
                .or_else(|| obj["eventTime"].as_str())
                .or_else(|| obj["deprecatedLastTimestamp"].as_str())
                .map(meta::human_age)
                .unwrap_or_else(|| age(obj).as_str().unwrap_or_default().to_string());
            let involved = obj
                .get("involvedObject")
                .or_else(|| obj.get("regarding"))
                .cloned()
                .unwrap_or_default();
            let object =
                format!("{}/{}", s(&involved, "/kind").to_lowercase(), s(&involved, "/name"));
            let message =
                obj["message"].as_str().or_else(|| obj["note"].as_str()).unwrap_or_default();
            (
                vec![col("Last Seen"), col("Type"), col("Reason"), col("Object"), col("Message")],
                vec![
                    last.into(),
                    s(obj, "/type").into(),
                    s(obj, "/reason").into(),
                    object.into(),
                    message.into(),
                ],
            )
        }
        ("", "Endpoints") => {
            let eps: Vec<String> = obj["subsets"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|ss| {
                    let ports: Vec<i64> = ss["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|p| p["port"].as_i64())
                        .collect();
                    ss["addresses"].as_array().into_iter().flatten().flat_map(move |a| {
                        let ip = a["ip"].as_str().unwrap_or_default().to_string();
                        ports.clone().into_iter().map(move |p| format!("{ip}:{p}"))
                    })
                })
                .collect();
            (
                vec![col("Name"), col("Endpoints"), col("Age")],
                vec![name, none_if_empty(eps.join(",")), age(obj)],
            )
        }
        ("batch", "Job") => {
            let status = if condition_status(obj, "Complete") == Some("True") {
                "Complete"
            } else if condition_status(obj, "Failed") == Some("True") {
                "Failed"
            } else if meta::is_deleting(obj) {
                "Terminating"
            } else {
                "Running"
            };
            let completions = format!(
                "{}/{}",
                obj.at("/status/succeeded").and_then(Value::as_i64).unwrap_or(0),
                obj.at("/spec/completions").and_then(Value::as_i64).unwrap_or(1)
            );
            let duration = match (
                obj.at("/status/startTime").and_then(Value::as_str).and_then(meta::parse_time),
                obj.at("/status/completionTime").and_then(Value::as_str).and_then(meta::parse_time),
            ) {
                (Some(a), Some(b)) => meta::human_duration(b.as_second() - a.as_second()),
                (Some(a), None) => {
                    meta::human_duration(jiff::Timestamp::now().as_second() - a.as_second())
                }
                _ => String::new(),
            };
            (
                vec![col("Name"), col("Status"), col("Completions"), col("Duration"), col("Age")],
                vec![name, status.into(), completions.into(), duration.into(), age(obj)],
            )
        }
        ("apps", "Deployment") => {
            let i = |p: &str| obj.at(p).and_then(Value::as_i64).unwrap_or(0);
            (
                vec![col("Name"), col("Ready"), int("Up-to-date"), int("Available"), col("Age")],
                vec![
                    name,
                    format!("{}/{}", i("/status/readyReplicas"), i("/spec/replicas")).into(),
                    i("/status/updatedReplicas").into(),
                    i("/status/availableReplicas").into(),
                    age(obj),
                ],
            )
        }
        ("apps", "ReplicaSet") => {
            let i = |p: &str| obj.at(p).and_then(Value::as_i64).unwrap_or(0);
            (
                vec![col("Name"), int("Desired"), int("Current"), int("Ready"), col("Age")],
                vec![
                    name,
                    i("/spec/replicas").into(),
                    i("/status/replicas").into(),
                    i("/status/readyReplicas").into(),
                    age(obj),
                ],
            )
        }
        ("apps", "StatefulSet") => {
            let i = |p: &str| obj.at(p).and_then(Value::as_i64).unwrap_or(0);
            (
                vec![col("Name"), col("Ready"), col("Age")],
                vec![
                    name,
                    format!("{}/{}", i("/status/readyReplicas"), i("/spec/replicas")).into(),
                    age(obj),
                ],
            )
        }
        ("coordination.k8s.io", "Lease") => (
            vec![col("Name"), col("Holder"), col("Age")],
            vec![name, s(obj, "/spec/holderIdentity").into(), age(obj)],
        ),
        ("rbac.authorization.k8s.io", "RoleBinding")
        | ("rbac.authorization.k8s.io", "ClusterRoleBinding") => (
            vec![col("Name"), col("Role"), col("Age")],
            vec![
                name,
                format!("{}/{}", s(obj, "/roleRef/kind"), s(obj, "/roleRef/name")).into(),
                age(obj),
            ],
        ),
        ("networking.k8s.io", "NetworkPolicy") => {
            let sel: Vec<String> = obj
                .at("/spec/podSelector/matchLabels")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            (
                vec![col("Name"), col("Pod-Selector"), col("Age")],
                vec![
                    name,
                    if sel.is_empty() { "<none>".into() } else { sel.join(",").into() },
                    age(obj),
                ],
            )
        }
        ("storage.k8s.io", "StorageClass") => {
            let default = meta::annotation(obj, "storageclass.kubernetes.io/is-default-class")
                == Some("true");
            let shown = if default {
                format!("{} (default)", meta::name(obj))
            } else {
                meta::name(obj).to_string()
            };
            (
                vec![
                    col("Name"),
                    col("Provisioner"),
                    col("ReclaimPolicy"),
                    col("VolumeBindingMode"),
                    col("AllowVolumeExpansion"),
                    col("Age"),
                ],
                vec![
                    shown.into(),
                    s(obj, "/provisioner").into(),
                    s(obj, "/reclaimPolicy").into(),
                    s(obj, "/volumeBindingMode").into(),
                    obj["allowVolumeExpansion"].as_bool().unwrap_or(false).into(),
                    age(obj),
                ],
            )
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition")
        | ("rbac.authorization.k8s.io", "Role")
        | ("rbac.authorization.k8s.io", "ClusterRole")
        | ("", "LimitRange") => (
            vec![col("Name"), col("Created At")],
            vec![name, s(obj, "/metadata/creationTimestamp").into()],
        ),
        _ => (vec![col("Name"), col("Age")], vec![name, age(obj)]),
    }
}

fn crd_cell(ty: &str, value: Option<&Value>) -> Value {
    let Some(v) = value else { return Value::Null };
    match ty {
        "integer" => v
            .as_i64()
            .map(Value::from)
            .or_else(|| v.as_f64().map(|f| Value::from(f as i64)))
            .unwrap_or(Value::Null),
        "number" => v.as_f64().map(Value::from).unwrap_or(Value::Null),
        "boolean" => v.as_bool().map(Value::from).unwrap_or(Value::Null),
        "date" => v
            .as_str()
            .map(|t| {
                Value::from(if meta::parse_time(t).is_some() {
                    meta::human_age(t)
                } else {
                    "<invalid>".into()
                })
            })
            .unwrap_or(Value::Null),
        _ => match v {
            Value::String(s) => s.clone().into(),
            other => other.to_string().into(),
        },
    }
}

/// Column definitions and one row for an object of this resource.
fn row(info: &ResourceInfo, obj: &Value) -> (Vec<Value>, Vec<Value>) {
    if let Some(crd) = &info.crd {
        let mut defs = vec![
            json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names", "priority": 0}),
        ];
        let mut cells = vec![Value::from(meta::name(obj))];
        if crd.printer_columns.is_empty() {
            defs.push(json!({"name": "Age", "type": "date", "format": "", "description": "", "priority": 0}));
            cells.push(age(obj));
        }
        for c in &crd.printer_columns {
            defs.push(json!({"name": c.name, "type": c.type_, "format": c.format, "description": c.description, "priority": c.priority}));
            cells.push(crd_cell(&c.type_, jsonpath(obj, &c.json_path).first().copied()));
        }
        return (defs, cells);
    }
    let (cols, cells) = builtin_row(&info.kind, &info.group, obj);
    (definitions(&cols), cells)
}

/// How much of each object a Table row carries (`includeObject`).
#[derive(Clone, Copy, PartialEq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(s: Option<&str>) -> IncludeObject {
        match s {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

pub fn partial_metadata(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({}))})
}

/// A Table of `objects` (already in the served shape).
pub fn table(
    info: &ResourceInfo,
    objects: &[Value],
    rv: &str,
    cont: Option<&str>,
    include: IncludeObject,
    with_headers: bool,
) -> Value {
    let mut defs = None;
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let (d, cells) = row(info, o);
            defs.get_or_insert(d);
            let mut r = json!({"cells": cells});
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => r["object"] = partial_metadata(o),
                IncludeObject::Object => r["object"] = o.clone(),
            }
            r
        })
        .collect();
    let defs = defs.unwrap_or_else(|| row(info, &json!({"metadata": {"name": ""}})).0);
    let mut t = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv}, "rows": rows});
    if with_headers {
        t["columnDefinitions"] = Value::Array(defs);
    } else {
        t["columnDefinitions"] = Value::Null;
    }
    if let Some(c) = cont {
        t["metadata"]["continue"] = c.into();
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonpath_subset() {
        let obj = json!({"spec": {"tier": "pro", "items": [{"n": 1}, {"n": 2}]}, "status": {"conditions": [{"type": "Scheduled", "status": "True"}, {"type": "Ready", "status": "False"}]}});
        assert_eq!(jsonpath(&obj, ".spec.tier"), vec![&json!("pro")]);
        assert_eq!(
            jsonpath(&obj, ".status.conditions[?(@.type==\"Ready\")].status"),
            vec![&json!("False")]
        );
        assert_eq!(jsonpath(&obj, ".spec.items[1].n"), vec![&json!(2)]);
        assert_eq!(jsonpath(&obj, ".spec.items[*].n").len(), 2);
        assert!(jsonpath(&obj, ".spec.missing").is_empty());
    }
}
